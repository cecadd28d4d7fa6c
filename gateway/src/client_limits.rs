//! What one client may take (nginx `limit_conn` and `limit_req`), and what all of them may
//! (a cap on open connections that answers 503 instead of letting the process run out of
//! descriptors or memory).
//!
//! A client is its address, or the address its trusted proxy forwarded
//! ([`crate::forwarding::real_client`]), so clients behind a load balancer are told apart.
//!
//! * **Requests in progress per client** (`limits.per_client_connections`): counted from the
//!   head to the end of the answer, so a WebSocket, an SSE stream or a held poll counts for as
//!   long as it lasts, and an idle kept-alive connection does not: nginx's `limit_conn`, which
//!   counts connections "that have a request being processed". Over it: 503.
//! * **Request rate per client** (`limits.per_client_rate`): a token bucket of `burst` tokens
//!   refilled at `per_second` (nginx `limit_req rate=... burst=... nodelay`). Over it: 429 with
//!   `Retry-After`, the seconds until a token is back.
//! * **Realtime connects per client** (`limits.per_client_realtime_connects`): the same bucket
//!   for requests that open a realtime session (a WebSocket upgrade, an SSE stream, a
//!   Socket.IO handshake), so a reconnect loop cannot hammer the hub, while the polls and
//!   publishes of sessions already open do not count.
//!
//! The per-client state is kept in one locked map (one lookup per request when a per-client
//! limit is on, nothing at all when none is); an entry goes when its client has nothing in
//! progress and full buckets, checked as the map grows.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use crate::settings::{Limits, Rate, RealtimeKind};

/// Why a request was refused here.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Refusal {
    #[error("too many requests in progress from this client (limit {0})")]
    InProgress(u32),
    #[error("too many requests from this client: retry in {} s", retry_after(*.0))]
    Rate(Duration),
    #[error("too many realtime connects from this client: retry in {} s", retry_after(*.0))]
    RealtimeConnects(Duration),
    #[error("the gateway is at its limit of {0} open connections")]
    Full(u64),
}

impl Refusal {
    /// nginx answers `limit_conn` with 503 and `limit_req` with 503 by default; 429 is what
    /// the rate refusals mean (RFC 6585), and what clients' retry logic looks for.
    pub fn status(&self) -> u16 {
        match self {
            Refusal::InProgress(_) | Refusal::Full(_) => 503,
            Refusal::Rate(_) | Refusal::RealtimeConnects(_) => 429,
        }
    }

    /// `Retry-After` in whole seconds, rounded up (at least 1).
    pub fn retry_after(&self) -> Option<u64> {
        match self {
            Refusal::Rate(wait) | Refusal::RealtimeConnects(wait) => Some(retry_after(*wait)),
            Refusal::InProgress(_) | Refusal::Full(_) => Some(1),
        }
    }
}

fn retry_after(wait: Duration) -> u64 {
    wait.as_secs() + u64::from(wait.subsec_nanos() > 0).max(u64::from(wait.is_zero()))
}

/// A token bucket: `burst` tokens, refilled at `per_second`.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn full(rate: &Rate, now: Instant) -> Bucket {
        Bucket {
            tokens: f64::from(rate.burst),
            at: now,
        }
    }

    fn refill(&mut self, rate: &Rate, now: Instant) {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * rate.per_second).min(f64::from(rate.burst));
        self.at = now;
    }

    /// Take a token, or say how long until one is back.
    fn take(&mut self, rate: &Rate, now: Instant) -> Result<(), Duration> {
        self.refill(rate, now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64(
                (1.0 - self.tokens) / rate.per_second,
            ))
        }
    }

    fn is_full(&mut self, rate: &Rate, now: Instant) -> bool {
        self.refill(rate, now);
        self.tokens >= f64::from(rate.burst)
    }
}

#[derive(Debug)]
struct Client {
    in_progress: u32,
    requests: Option<Bucket>,
    connects: Option<Bucket>,
}

impl Client {
    fn new() -> Client {
        Client {
            in_progress: 0,
            requests: None,
            connects: None,
        }
    }
}

/// Whether a request to a realtime route of `kind` opens a session: a WebSocket upgrade (`/ws`,
/// or Socket.IO straight onto a WebSocket), an SSE stream, a Socket.IO handshake (no `sid`
/// yet). The polls and upgrades of a session already open, long-polls and publishes do not.
pub fn opens_realtime_session(
    kind: RealtimeKind,
    method: &http::Method,
    upgrade: bool,
    query: Option<&str>,
) -> bool {
    match kind {
        RealtimeKind::Websocket => upgrade,
        RealtimeKind::Sse => method == http::Method::GET,
        RealtimeKind::Socketio => {
            method == http::Method::GET
                && !query
                    .unwrap_or("")
                    .split('&')
                    .any(|pair| pair.starts_with("sid="))
        }
        RealtimeKind::Longpoll | RealtimeKind::SeamTest | RealtimeKind::ProtocolSuites => false,
    }
}

/// Above this many clients in the map, idle ones are swept before a new one is added.
const SWEEP_ABOVE: usize = 4096;

/// Every client's state; shared by every configuration a reload puts in force (the counts
/// of requests in progress must outlive a reload).
#[derive(Debug, Default)]
pub struct ClientLimits {
    clients: Mutex<HashMap<IpAddr, Client>>,
    sweep_at: std::sync::atomic::AtomicUsize,
}

/// Holds a client's slot of `per_client_connections` until the request ends.
#[derive(Debug)]
pub struct InProgress {
    limits: Arc<ClientLimits>,
    ip: IpAddr,
}

impl Drop for InProgress {
    fn drop(&mut self) {
        let mut clients = self
            .limits
            .clients
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(c) = clients.get_mut(&self.ip) {
            c.in_progress = c.in_progress.saturating_sub(1);
        }
    }
}

/// What a request is, for the limits.
#[derive(Debug, Clone, Copy)]
pub struct Request {
    /// Only looked at when a per-client limit is on ([`Limits::per_client`]).
    pub client: Option<IpAddr>,
    /// Client connections open now, the front door's (HTTP/1 and HTTP/2).
    pub open_connections: u64,
}

impl ClientLimits {
    /// Admit a request under `limits` (every request, as it arrives), or say why not. The
    /// guard, when a per-client count is on, must live as long as the request.
    pub fn admit(
        self: &Arc<Self>,
        limits: &Limits,
        req: Request,
        now: Instant,
    ) -> Result<Option<InProgress>, Refusal> {
        if let Some(max) = limits.max_connections {
            if req.open_connections > max {
                return Err(Refusal::Full(max));
            }
        }
        let Some(ip) = req.client.filter(|_| limits.per_client()) else {
            return Ok(None);
        };
        let mut clients = self.lock(limits, now);
        let c = clients.entry(ip).or_insert_with(Client::new);
        if let Some(max) = limits.per_client_connections {
            if c.in_progress >= max {
                return Err(Refusal::InProgress(max));
            }
        }
        if let Some(rate) = &limits.per_client_rate {
            c.requests
                .get_or_insert_with(|| Bucket::full(rate, now))
                .take(rate, now)
                .map_err(Refusal::Rate)?;
        }
        if limits.per_client_connections.is_none() {
            return Ok(None);
        }
        c.in_progress += 1;
        Ok(Some(InProgress {
            limits: self.clone(),
            ip,
        }))
    }

    /// Admit a request that opens a realtime session ([`opens_realtime_session`]).
    pub fn realtime_connect(
        &self,
        limits: &Limits,
        client: Option<IpAddr>,
        now: Instant,
    ) -> Result<(), Refusal> {
        let (Some(rate), Some(ip)) = (&limits.per_client_realtime_connects, client) else {
            return Ok(());
        };
        let mut clients = self.lock(limits, now);
        clients
            .entry(ip)
            .or_insert_with(Client::new)
            .connects
            .get_or_insert_with(|| Bucket::full(rate, now))
            .take(rate, now)
            .map_err(Refusal::RealtimeConnects)
    }

    /// The map, swept first when it has grown since the last sweep.
    fn lock(
        &self,
        limits: &Limits,
        now: Instant,
    ) -> std::sync::MutexGuard<'_, HashMap<IpAddr, Client>> {
        let mut clients = self.clients.lock().unwrap_or_else(PoisonError::into_inner);
        if clients.len() >= self.sweep_at.load(std::sync::atomic::Ordering::Relaxed) {
            sweep(&mut clients, limits, now);
            // Sweep again when the map has grown by half as much again.
            let next = (clients.len() + clients.len() / 2).max(SWEEP_ABOVE);
            self.sweep_at
                .store(next, std::sync::atomic::Ordering::Relaxed);
        }
        clients
    }

    #[cfg(test)]
    fn clients(&self) -> usize {
        self.clients
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }
}

/// Forget clients with nothing in progress and full buckets: they would start afresh anyway.
fn sweep(clients: &mut HashMap<IpAddr, Client>, limits: &Limits, now: Instant) {
    clients.retain(|_, c| {
        let requests_full = match (&mut c.requests, &limits.per_client_rate) {
            (Some(b), Some(rate)) => b.is_full(rate, now),
            _ => true,
        };
        let connects_full = match (&mut c.connects, &limits.per_client_realtime_connects) {
            (Some(b), Some(rate)) => b.is_full(rate, now),
            _ => true,
        };
        c.in_progress > 0 || !requests_full || !connects_full
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(f: impl FnOnce(&mut Limits)) -> Limits {
        let mut l = crate::settings::tests::minimal().limits;
        f(&mut l);
        l
    }

    fn req(ip: [u8; 4]) -> Request {
        Request {
            client: Some(IpAddr::from(ip)),
            open_connections: 1,
        }
    }

    #[test]
    fn the_nth_request_in_progress_is_refused_until_one_ends() {
        let l = limits(|l| l.per_client_connections = Some(2));
        let cl = Arc::new(ClientLimits::default());
        let now = Instant::now();
        let a = cl.admit(&l, req([10, 0, 0, 1]), now).expect("1st");
        let _b = cl.admit(&l, req([10, 0, 0, 1]), now).expect("2nd");
        let refused = cl.admit(&l, req([10, 0, 0, 1]), now).expect_err("3rd");
        assert_eq!(refused, Refusal::InProgress(2));
        assert_eq!(refused.status(), 503);
        // Another client is not affected.
        cl.admit(&l, req([10, 0, 0, 2]), now).expect("other client");
        drop(a);
        cl.admit(&l, req([10, 0, 0, 1]), now)
            .expect("a slot was freed");
    }

    #[test]
    fn the_rate_allows_the_burst_then_one_per_interval_and_says_when() {
        let l = limits(|l| {
            l.per_client_rate = Some(Rate {
                per_second: 2.0,
                burst: 3,
            })
        });
        let cl = Arc::new(ClientLimits::default());
        let t0 = Instant::now();
        for i in 0..3 {
            cl.admit(&l, req([10, 0, 0, 1]), t0)
                .unwrap_or_else(|e| panic!("request {i} of the burst: {e}"));
        }
        let refused = cl.admit(&l, req([10, 0, 0, 1]), t0).expect_err("4th");
        assert_eq!(refused, Refusal::Rate(Duration::from_millis(500)));
        assert_eq!((refused.status(), refused.retry_after()), (429, Some(1)));
        // Half a second later one token is back, and only one.
        let t1 = t0 + Duration::from_millis(500);
        cl.admit(&l, req([10, 0, 0, 1]), t1).expect("refilled");
        cl.admit(&l, req([10, 0, 0, 1]), t1).expect_err("only one");
    }

    #[test]
    fn realtime_connects_have_their_own_bucket_and_plain_requests_do_not_use_it() {
        let l = limits(|l| {
            l.per_client_realtime_connects = Some(Rate {
                per_second: 1.0,
                burst: 1,
            })
        });
        let cl = Arc::new(ClientLimits::default());
        let now = Instant::now();
        let ip = Some(IpAddr::from([10, 0, 0, 1]));
        cl.realtime_connect(&l, ip, now).expect("first connect");
        for _ in 0..10 {
            cl.admit(&l, req([10, 0, 0, 1]), now)
                .expect("plain requests");
        }
        assert_eq!(
            cl.realtime_connect(&l, ip, now)
                .expect_err("second connect"),
            Refusal::RealtimeConnects(Duration::from_secs(1))
        );
        let later = now + Duration::from_secs(1);
        cl.realtime_connect(&l, ip, later).expect("a second later");
    }

    #[test]
    fn sessions_are_opened_by_upgrades_streams_and_socketio_handshakes_only() {
        use http::Method;
        let get = Method::GET;
        let opens = |kind, method: &Method, upgrade, query| {
            opens_realtime_session(kind, method, upgrade, query)
        };
        assert!(opens(RealtimeKind::Websocket, &get, true, None));
        assert!(!opens(RealtimeKind::Websocket, &get, false, None));
        assert!(opens(RealtimeKind::Sse, &get, false, Some("topic=a")));
        assert!(!opens(RealtimeKind::Sse, &Method::POST, false, None));
        let handshake = Some("EIO=4&transport=polling&t=x");
        assert!(opens(RealtimeKind::Socketio, &get, false, handshake));
        assert!(opens(
            RealtimeKind::Socketio,
            &get,
            true,
            Some("EIO=4&transport=websocket")
        ));
        let poll = Some("EIO=4&transport=polling&sid=abc");
        assert!(!opens(RealtimeKind::Socketio, &get, false, poll));
        let upgrade = Some("EIO=4&transport=websocket&sid=abc");
        assert!(!opens(RealtimeKind::Socketio, &get, true, upgrade));
        assert!(!opens(RealtimeKind::Socketio, &Method::POST, false, poll));
        assert!(!opens(RealtimeKind::Longpoll, &get, false, Some("t=a")));
    }

    #[test]
    fn the_global_cap_answers_503_past_the_number_of_open_connections() {
        let l = limits(|l| l.max_connections = Some(100));
        let cl = Arc::new(ClientLimits::default());
        let at = |open| Request {
            open_connections: open,
            ..req([10, 0, 0, 1])
        };
        assert!(cl.admit(&l, at(100), Instant::now()).is_ok());
        let refused = cl.admit(&l, at(101), Instant::now()).expect_err("101st");
        assert_eq!((refused, 503), (Refusal::Full(100), 503));
    }

    #[test]
    fn no_limit_keeps_no_state() {
        let l = limits(|_| {});
        let cl = Arc::new(ClientLimits::default());
        for i in 0..100u8 {
            assert!(cl
                .admit(&l, req([10, 0, 0, i]), Instant::now())
                .expect("admitted")
                .is_none());
        }
        assert_eq!(cl.clients(), 0);
    }

    #[test]
    fn idle_clients_are_forgotten_as_the_map_grows() {
        let l = limits(|l| {
            l.per_client_rate = Some(Rate {
                per_second: 10.0,
                burst: 10,
            })
        });
        let cl = Arc::new(ClientLimits::default());
        let t0 = Instant::now();
        for i in 0..SWEEP_ABOVE as u32 {
            let ip = IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + i));
            cl.admit(
                &l,
                Request {
                    client: Some(ip),
                    ..req([0, 0, 0, 0])
                },
                t0,
            )
            .expect("admitted");
        }
        assert_eq!(cl.clients(), SWEEP_ABOVE);
        // A second later every bucket is full again: the next newcomer sweeps them away.
        cl.admit(&l, req([192, 168, 0, 1]), t0 + Duration::from_secs(1))
            .expect("admitted");
        assert_eq!(cl.clients(), 1);
    }

    #[test]
    fn retry_after_rounds_up_to_whole_seconds() {
        assert_eq!(retry_after(Duration::from_millis(1)), 1);
        assert_eq!(retry_after(Duration::from_secs(2)), 2);
        assert_eq!(retry_after(Duration::from_millis(2001)), 3);
        assert_eq!(retry_after(Duration::ZERO), 1);
    }
}
