//! The app's upstream pools: server selection (round robin, least connections, consistent
//! hashing on the client address) and active health checks with rise/fall thresholds.
//!
//! Selection is ours rather than pingora-load-balancing's because that crate has no
//! least-connections policy and its hashing needs a rebuild on every health change; a pool here
//! is a handful of servers, so a scan over them per request is cheaper than any index.

use std::hash::{Hash, Hasher};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::config::{Balance, HealthCheck, Protocol, Upstream};

/// Where a server listens: TCP, or (FastCGI pools only) a Unix socket.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Addr {
    Tcp(SocketAddr),
    Unix(PathBuf),
}

impl Addr {
    /// `host:port` or `unix:/path`.
    pub fn parse(s: &str) -> Option<Addr> {
        match s.strip_prefix("unix:") {
            Some(p) if p.starts_with('/') => Some(Addr::Unix(PathBuf::from(p))),
            Some(_) => None,
            None => s.parse().ok().map(Addr::Tcp),
        }
    }

    /// The TCP address; HTTP pools only have these (validation refuses Unix sockets there).
    pub fn inet(&self) -> Option<SocketAddr> {
        match self {
            Addr::Tcp(a) => Some(*a),
            Addr::Unix(_) => None,
        }
    }
}

impl std::fmt::Display for Addr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Addr::Tcp(a) => write!(f, "{a}"),
            Addr::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

/// One server of a pool, with the state the selection and the health checker share.
#[derive(Debug)]
pub struct Server {
    pub addr: Addr,
    healthy: AtomicBool,
    /// Requests in flight, for `least_conn`.
    active: AtomicUsize,
    /// Consecutive check results in the direction opposite to the current state.
    streak: AtomicU32,
}

impl Server {
    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }
}

#[derive(Debug)]
pub struct Pool {
    pub name: String,
    pub servers: Vec<Server>,
    pub balance: Balance,
    pub connect_timeout: Duration,
    pub read_timeout: Duration,
    pub health: Option<HealthCheck>,
    /// Set for `protocol: fastcgi` pools: the script rules and the idle connections.
    pub fastcgi: Option<crate::fastcgi::Backend>,
    next: AtomicUsize,
}

/// Keeps a server's in-flight count while a request uses it; dropping it releases the slot.
#[derive(Debug)]
pub struct InFlight {
    pool: Arc<Pool>,
    index: usize,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.pool.servers[self.index]
            .active
            .fetch_sub(1, Ordering::Relaxed);
    }
}

impl Pool {
    pub fn from_config(name: &str, cfg: &Upstream) -> Pool {
        Pool {
            name: name.to_string(),
            servers: cfg
                .servers
                .iter()
                .filter_map(|s| Addr::parse(s))
                .map(|addr| Server {
                    addr,
                    // Servers start up so the gateway serves at once; the first failed checks
                    // (or a failed connect, which is retried elsewhere) take a dead one out.
                    healthy: AtomicBool::new(true),
                    active: AtomicUsize::new(0),
                    streak: AtomicU32::new(0),
                })
                .collect(),
            balance: cfg.balance,
            connect_timeout: Duration::from_millis(cfg.connect_timeout_ms),
            read_timeout: Duration::from_millis(cfg.read_timeout_ms),
            health: cfg.health_check.clone(),
            fastcgi: match (cfg.protocol, &cfg.fastcgi) {
                (Protocol::Fastcgi, Some(f)) => {
                    Some(crate::fastcgi::Backend::new(f, cfg.servers.len()))
                }
                _ => None,
            },
            next: AtomicUsize::new(0),
        }
    }

    /// Choose a healthy server not in `exclude` (the ones this request already failed on).
    pub fn select(&self, client: Option<IpAddr>, exclude: &[usize]) -> Option<usize> {
        let usable = |i: usize| self.servers[i].is_healthy() && !exclude.contains(&i);
        let n = self.servers.len();
        match self.balance {
            Balance::RoundRobin => {
                let start = self.next.fetch_add(1, Ordering::Relaxed);
                (0..n).map(|k| (start + k) % n).find(|i| usable(*i))
            }
            Balance::LeastConn => {
                // Ties are broken round-robin so equal servers share the load.
                let start = self.next.fetch_add(1, Ordering::Relaxed);
                (0..n)
                    .map(|k| (start + k) % n)
                    .filter(|i| usable(*i))
                    .min_by_key(|i| self.servers[*i].active.load(Ordering::Relaxed))
            }
            Balance::IpHash => {
                // Rendezvous hashing: each client goes to the usable server with the highest
                // score, so removing a server moves only the clients that were on it.
                let ip = client.unwrap_or(IpAddr::from([0, 0, 0, 0]));
                (0..n)
                    .filter(|i| usable(*i))
                    .max_by_key(|i| score(ip, &self.servers[*i].addr))
            }
        }
    }

    pub fn begin(self: &Arc<Self>, index: usize) -> InFlight {
        self.servers[index].active.fetch_add(1, Ordering::Relaxed);
        InFlight {
            pool: self.clone(),
            index,
        }
    }

    pub fn healthy_count(&self) -> usize {
        self.servers.iter().filter(|s| s.is_healthy()).count()
    }

    /// Apply one check result with HAProxy's rise/fall rule.
    fn record(&self, index: usize, ok: bool, rise: u32, fall: u32) {
        let s = &self.servers[index];
        let healthy = s.is_healthy();
        if ok == healthy {
            s.streak.store(0, Ordering::Relaxed);
            return;
        }
        let streak = s.streak.fetch_add(1, Ordering::Relaxed) + 1;
        let needed = if healthy { fall } else { rise };
        if streak >= needed {
            s.healthy.store(ok, Ordering::Relaxed);
            s.streak.store(0, Ordering::Relaxed);
            if ok {
                tracing::warn!(upstream = %self.name, server = %s.addr, "server is up again");
            } else {
                tracing::warn!(upstream = %self.name, server = %s.addr, "server is down: failed {fall} health check(s)");
            }
        }
    }

    /// Run the active health checks until `shutdown` resolves.
    pub async fn check_forever(self: Arc<Self>, mut shutdown: tokio::sync::watch::Receiver<bool>) {
        let Some(hc) = self.health.clone() else {
            return;
        };
        let mut tick = tokio::time::interval(Duration::from_millis(hc.interval_ms));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = shutdown.changed() => return,
            }
            let checks = self.servers.iter().enumerate().map(|(i, s)| {
                let hc = &hc;
                async move {
                    let ok = tokio::time::timeout(
                        Duration::from_millis(hc.timeout_ms),
                        probe(&s.addr, hc.path.as_deref()),
                    )
                    .await
                    .unwrap_or(false);
                    (i, ok)
                }
            });
            for (i, ok) in futures_util::future::join_all(checks).await {
                self.record(i, ok, hc.rise, hc.fall);
            }
        }
    }
}

fn score(ip: IpAddr, server: &Addr) -> u64 {
    // SipHash with fixed keys: the same client maps to the same server across restarts.
    let mut h = std::collections::hash_map::DefaultHasher::new();
    ip.hash(&mut h);
    server.hash(&mut h);
    h.finish()
}

/// One health probe: a TCP connect, or `GET path` answered with 2xx/3xx.
async fn probe(addr: &Addr, path: Option<&str>) -> bool {
    let addr = match addr {
        Addr::Tcp(a) => *a,
        Addr::Unix(p) => return tokio::net::UnixStream::connect(p).await.is_ok(),
    };
    let Ok(mut stream) = tokio::net::TcpStream::connect(addr).await else {
        return false;
    };
    let Some(path) = path else {
        return true;
    };
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: gateway-health-check\r\nConnection: close\r\n\r\n"
    );
    if stream.write_all(req.as_bytes()).await.is_err() {
        return false;
    }
    let mut buf = [0u8; 16];
    let mut got = 0;
    while got < 12 {
        match stream.read(&mut buf[got..]).await {
            Ok(0) | Err(_) => return false,
            Ok(n) => got += n,
        }
    }
    // "HTTP/1.1 2xx" or "HTTP/1.1 3xx"
    buf.starts_with(b"HTTP/1.") && matches!(buf[9], b'2' | b'3')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(balance: Balance, n: usize) -> Arc<Pool> {
        let cfg = Upstream {
            servers: (0..n).map(|i| format!("127.0.0.1:{}", 3000 + i)).collect(),
            protocol: Protocol::Http,
            fastcgi: None,
            balance,
            health_check: None,
            connect_timeout_ms: 1,
            read_timeout_ms: 1,
        };
        Arc::new(Pool::from_config("app", &cfg))
    }

    #[test]
    fn round_robin_alternates_and_skips_excluded_and_down() {
        let p = pool(Balance::RoundRobin, 3);
        let picks: Vec<_> = (0..6).map(|_| p.select(None, &[]).unwrap()).collect();
        assert_eq!(picks, [0, 1, 2, 0, 1, 2]);
        assert_ne!(p.select(None, &[0, 1]), Some(0));
        p.servers[2].healthy.store(false, Ordering::Relaxed);
        assert_eq!(p.select(None, &[0, 1]), None);
    }

    #[test]
    fn least_conn_prefers_idle_servers() {
        let p = pool(Balance::LeastConn, 2);
        let busy = p.begin(0);
        assert_eq!(p.select(None, &[]), Some(1));
        assert_eq!(p.select(None, &[]), Some(1));
        drop(busy);
        let picks: Vec<_> = (0..2).map(|_| p.select(None, &[]).unwrap()).collect();
        assert!(picks.contains(&0));
    }

    #[test]
    fn ip_hash_is_sticky_and_only_moves_clients_of_a_removed_server() {
        let p = pool(Balance::IpHash, 4);
        let ips: Vec<IpAddr> = (1..=200u8).map(|i| IpAddr::from([10, 0, 0, i])).collect();
        let before: Vec<_> = ips
            .iter()
            .map(|ip| p.select(Some(*ip), &[]).unwrap())
            .collect();
        let again: Vec<_> = ips
            .iter()
            .map(|ip| p.select(Some(*ip), &[]).unwrap())
            .collect();
        assert_eq!(before, again);
        assert!((0..4).all(|s| before.contains(&s)), "spreads over servers");
        p.servers[1].healthy.store(false, Ordering::Relaxed);
        for (ip, was) in ips.iter().zip(&before) {
            let now = p.select(Some(*ip), &[]).unwrap();
            if *was != 1 {
                assert_eq!(now, *was, "a client not on the removed server moved");
            }
        }
    }

    #[test]
    fn rise_and_fall_thresholds() {
        let p = pool(Balance::RoundRobin, 1);
        p.record(0, false, 2, 3);
        p.record(0, false, 2, 3);
        assert!(p.servers[0].is_healthy());
        p.record(0, false, 2, 3);
        assert!(!p.servers[0].is_healthy());
        p.record(0, true, 2, 3);
        assert!(!p.servers[0].is_healthy());
        p.record(0, true, 2, 3);
        assert!(p.servers[0].is_healthy());
    }
}
