//! The app's upstream pools: server selection (round robin, least connections, consistent
//! hashing on the client address) and active health checks with rise/fall thresholds.
//!
//! Selection is ours rather than pingora-load-balancing's because that crate has no
//! least-connections policy and its hashing needs a rebuild on every health change; a pool here
//! is a handful of servers, so a scan over them per request is cheaper than any index.

use std::hash::{Hash, Hasher};
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::addr::{Addr, Timeouts};
use crate::fastcgi;
use crate::settings::{self, Balance, HealthCheck, Upstream};

/// How the gateway talks to a pool's servers, with what that protocol keeps per pool. Every
/// protocol gets server picking, retries ([`crate::attempt`]), the failure table
/// ([`crate::failure`]) and the response finisher ([`crate::finish`]) from the same code; a new
/// one is a variant here, built in [`Pool::from_config`], with an [`crate::attempt::Exchange`]
/// and its arm in `proxy::Gateway::to_pool`.
#[derive(Debug)]
pub enum Protocol {
    /// HTTP/1.1 (Puma, Unicorn, Octane, ...): pingora's proxy path, the relay, the tunnel.
    Http,
    /// FastCGI to php-fpm: the script rules and the kept connections.
    FastCgi(Arc<fastcgi::Backend>),
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

    /// Requests (and tunnels) on this server now.
    pub fn in_flight(&self) -> usize {
        self.active.load(Ordering::Relaxed)
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
    pub protocol: Protocol,
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
    /// One pool per configured upstream, by name: the routes and the realtime services'
    /// callbacks share them (and their health).
    pub fn all(
        upstreams: &std::collections::BTreeMap<String, Upstream>,
    ) -> std::collections::BTreeMap<String, Arc<Pool>> {
        upstreams
            .iter()
            .map(|(name, u)| (name.clone(), Arc::new(Pool::from_config(name, u))))
            .collect()
    }

    pub fn from_config(name: &str, cfg: &Upstream) -> Pool {
        Pool {
            name: name.to_string(),
            servers: cfg
                .servers
                .iter()
                .map(|addr| Server {
                    addr: addr.clone(),
                    // Servers start up so the gateway serves at once; the first failed checks
                    // (or a failed connect, which is retried elsewhere) take a dead one out.
                    healthy: AtomicBool::new(true),
                    active: AtomicUsize::new(0),
                    streak: AtomicU32::new(0),
                })
                .collect(),
            balance: cfg.balance,
            connect_timeout: cfg.connect_timeout,
            read_timeout: cfg.read_timeout,
            health: cfg.health_check.clone(),
            protocol: match &cfg.protocol {
                settings::Protocol::FastCgi(f) => {
                    Protocol::FastCgi(Arc::new(fastcgi::Backend::new(f, cfg.servers.len())))
                }
                settings::Protocol::Http => Protocol::Http,
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

    /// Whether a server is left that is up and not in `exclude`: the retry rule's second half
    /// (the first is [`crate::attempt`]'s). Does not move the round-robin turn.
    pub fn usable_left(&self, exclude: &[usize]) -> bool {
        self.servers
            .iter()
            .enumerate()
            .any(|(i, s)| s.is_healthy() && !exclude.contains(&i))
    }

    /// The timeouts of one attempt on a server of this pool.
    pub fn timeouts(&self) -> Timeouts {
        Timeouts {
            connect: self.connect_timeout,
            read: self.read_timeout,
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
        let mut tick = tokio::time::interval(hc.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = shutdown.changed() => return,
            }
            let checks = self.servers.iter().enumerate().map(|(i, s)| {
                let hc = &hc;
                async move {
                    let ok = tokio::time::timeout(hc.timeout, probe(&s.addr, hc.path.as_deref()))
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

/// One health probe: a connect, or `GET path` answered with 2xx/3xx.
async fn probe(addr: &Addr, path: Option<&str>) -> bool {
    let Ok(mut stream) = addr.connect().await else {
        return false;
    };
    let Some(path) = path else {
        return true;
    };
    // A Unix socket has no host name; app servers accept any Host on one.
    let host = match addr {
        Addr::Tcp(a) => a.to_string(),
        Addr::Unix(_) => "localhost".to_string(),
    };
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: gateway-health-check\r\nConnection: close\r\n\r\n"
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
            servers: (0..n)
                .map(|i| {
                    Addr::Tcp(std::net::SocketAddr::from((
                        [127, 0, 0, 1],
                        3000 + i as u16,
                    )))
                })
                .collect(),
            protocol: settings::Protocol::Http,
            balance,
            health_check: None,
            connect_timeout: Duration::from_millis(1),
            read_timeout: Duration::from_millis(1),
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

    #[tokio::test]
    async fn http_health_checks_work_over_a_unix_socket() {
        let dir = std::env::temp_dir().join(format!("probe-uds-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let sock = dir.join("app.sock");
        let addr = Addr::Unix(sock.clone());
        assert!(!probe(&addr, Some("/ping")).await, "no socket file yet");
        let listener = tokio::net::UnixListener::bind(&sock).unwrap();
        let server = tokio::spawn(async move {
            let mut seen = Vec::new();
            for answer in ["HTTP/1.1 200 OK\r\n\r\n", "HTTP/1.1 503 Busy\r\n\r\n"] {
                let (mut s, _) = listener.accept().await.unwrap();
                let mut buf = vec![0u8; 1024];
                let n = s.read(&mut buf).await.unwrap();
                seen.push(String::from_utf8_lossy(&buf[..n]).into_owned());
                s.write_all(answer.as_bytes()).await.unwrap();
            }
            seen
        });
        assert!(probe(&addr, Some("/ping")).await);
        assert!(
            !probe(&addr, Some("/ping")).await,
            "a 503 is a failed check"
        );
        let seen = server.await.unwrap();
        assert!(
            seen[0].starts_with("GET /ping HTTP/1.1\r\nHost: localhost\r\n"),
            "{seen:?}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn the_retry_rule_goes_elsewhere_only_while_a_usable_server_is_left() {
        use crate::attempt::{Tries, STALE_RETRIES};
        use crate::failure::Failure;
        let p = pool(Balance::RoundRobin, 3);
        p.servers[2].healthy.store(false, Ordering::Relaxed);
        let refused = Failure::Connect("127.0.0.1:3000".into(), "refused".into());
        let mut tries = Tries::default();
        let turn = p.next.load(Ordering::Relaxed);
        // Server 1 is left (2 is down): the request goes there.
        assert!(tries.not_sent(&p, 0, &refused, "routes[0]"));
        assert_eq!(
            p.next.load(Ordering::Relaxed),
            turn,
            "checking moved the turn"
        );
        assert_eq!(p.select(None, tries.tried()), Some(1));
        // Nothing usable is left: the failure is the answer.
        assert!(!tries.not_sent(&p, 1, &refused, "routes[0]"));
        assert_eq!(p.select(None, tries.tried()), None);

        // A kept connection found closed is sent again, a bounded number of times.
        let mut tries = Tries::default();
        for _ in 0..STALE_RETRIES {
            assert!(tries.reuse());
            assert!(tries.stale(&p, 0));
        }
        assert!(!tries.reuse(), "then only new connections");
        assert!(!tries.stale(&p, 0));
        assert!(
            tries.tried().is_empty(),
            "a stale connection is not the server's fault"
        );
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
