//! Prometheus metrics, served as text at `GET /metrics` on the admin listener.
//!
//! Encoding is [`prometheus_client`]'s, the Prometheus project's own Rust client: it writes the
//! text format (names, `HELP`/`TYPE`, label escaping) the way Prometheus reads it, and its
//! counters and gauges are a shared atomic each. What a request costs is decided here, not by
//! the crate: every label set a request can land in is resolved when the server is built (per
//! route: the status class and whether the route's pool answered; per connection kind), so a
//! request does a handful of atomic additions and nothing else: no map lookup, no lock, no
//! allocation, no formatting. The crate's histogram takes a lock per observation, so the
//! latency histograms are [`Histogram`], atomics per bucket. What other parts already count
//! (the hub, Socket.IO, the pools' health and in-flight requests, TLS handshake failures) is
//! read when Prometheus scrapes, by `Scraped`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, MetricEncoder};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::{MetricType, TypedMetric};
use prometheus_client::registry::Registry;

use crate::settings::{RealtimeKind, Settings, Target};
use crate::upstream::Pool;

/// The `Content-Type` of what [`Metrics::encode`] writes (the Prometheus text format 0.0.4).
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// Status classes, as the `status` label spells them; the last is a request that got no
/// answer (the client left first), which nginx logs as 499.
const CLASSES: [&str; 6] = ["1xx", "2xx", "3xx", "4xx", "5xx", "none"];

/// Where a status falls in `CLASSES` (the `status` label).
pub fn class_index(status: u16) -> usize {
    match status {
        100..=599 => usize::from(status / 100 - 1),
        _ => CLASSES.len() - 1,
    }
}

/// Upper bounds of the latency buckets, in seconds: from a static file or a cached answer
/// (milliseconds) to the app's `read_timeout_ms` (60 s by default); a held long-poll or a
/// WebSocket lands in `+Inf`, which is what it is.
const BUCKETS: [f64; 14] = [
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

/// A latency histogram of atomics: one counter per bucket and a sum in microseconds (the
/// count is the buckets' total). Observing is two relaxed atomic additions (prometheus-client's
/// own histogram locks a mutex).
#[derive(Debug, Clone, Default)]
pub struct Histogram(Arc<HistogramInner>);

#[derive(Debug, Default)]
struct HistogramInner {
    /// Not cumulative: `buckets[i]` counts observations in `(BUCKETS[i-1], BUCKETS[i]]`;
    /// the last one is above every bound.
    buckets: [AtomicU64; BUCKETS.len() + 1],
    sum_micros: AtomicU64,
}

impl Histogram {
    pub fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        let i = BUCKETS
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(BUCKETS.len());
        let inner = &self.0;
        inner.buckets[i].fetch_add(1, Ordering::Relaxed);
        let micros = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        inner.sum_micros.fetch_add(micros, Ordering::Relaxed);
    }

    /// The buckets with their upper bounds, each counting its own observations only (the
    /// encoder adds them up, as for prometheus-client's own histogram).
    fn buckets(&self) -> Vec<(f64, u64)> {
        BUCKETS
            .iter()
            .chain([f64::INFINITY].iter())
            .zip(&self.0.buckets)
            .map(|(bound, n)| (*bound, n.load(Ordering::Relaxed)))
            .collect()
    }
}

impl TypedMetric for Histogram {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for Histogram {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let buckets = self.buckets();
        // The count is the sum of the buckets read, so the two agree in one scrape.
        let count = buckets.iter().map(|b| b.1).sum();
        let sum = self.0.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        encoder
            .encode_histogram::<prometheus_client::encoding::NoLabelSet>(sum, count, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

type Labels = Vec<(&'static str, String)>;

/// What a request on one route moves, every label set resolved at start.
#[derive(Debug)]
pub struct RouteMetrics {
    /// `[answered by the route's pool][status class]`; without a pool both rows are the same
    /// label set (`upstream="-"`).
    requests: [[Counter; CLASSES.len()]; 2],
    duration: Histogram,
    /// The pool's histogram (shared by every route to it).
    upstream: Option<Histogram>,
    /// Open sessions of a realtime route: `[not an upgrade, upgrade]`.
    realtime: Option<[Option<Gauge>; 2]>,
}

/// Kinds of open client connections and sessions, as the `kind` label spells them.
#[derive(Debug, Clone, Copy)]
pub enum Open {
    Http1,
    Http2,
    /// A WebSocket tunnelled to the app.
    Tunnel,
    SocketioWebsocket,
    /// Held Socket.IO polling requests.
    SocketioPolling,
    /// A `realtime: websocket` endpoint.
    Ws,
    Sse,
    /// Held long-poll requests.
    Longpoll,
}

const OPEN_KINDS: [&str; 8] = [
    "http1",
    "http2",
    "tunnel",
    "socketio_websocket",
    "socketio_polling",
    "ws",
    "sse",
    "longpoll",
];

/// Counts one open connection or session of a kind until dropped.
#[derive(Debug)]
pub struct OpenGuard(Gauge);

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// TLS versions, as the `version` label spells them.
const TLS_VERSIONS: [&str; 3] = ["1.2", "1.3", "other"];

/// Every metric of the process. Built once with the server; shared by the front door, the
/// admin listener and the access log, and kept across reloads (each configuration gets its
/// per-route rows from [`Metrics::routes`]).
pub struct Metrics {
    registry: Registry,
    requests: Family<Labels, Counter>,
    durations: Family<Labels, Histogram>,
    upstream_durations: Family<Labels, Histogram>,
    route_info: Family<Labels, Gauge>,
    /// The pools of the configuration in force, read at scrape time.
    pools: Arc<arc_swap::ArcSwap<Vec<Arc<Pool>>>>,
    socketio: Arc<std::sync::OnceLock<realtime::socketio::SocketIo>>,
    open: [Gauge; OPEN_KINDS.len()],
    tls_handshakes: [Counter; TLS_VERSIONS.len()],
    /// Config reloads, by outcome ([`crate::reload`]).
    pub reloads_ok: Counter,
    pub reloads_failed: Counter,
    /// Access log lines dropped because the writer was behind (see [`crate::access_log`]).
    pub access_log_dropped: Counter,
}

/// One configuration's per-route metrics: by route index, one more at the end for requests
/// that matched no route. A reload builds a new table; the series it shares with the old one
/// (same route index, status, upstream) keep counting.
#[derive(Debug)]
pub struct RouteTable(Vec<RouteMetrics>);

impl RouteTable {
    /// The metrics of route `index` (`None`: the request matched no route).
    fn route(&self, index: Option<usize>) -> &RouteMetrics {
        let last = self.0.len() - 1;
        &self.0[index.map_or(last, |i| i.min(last))]
    }

    /// A request ended: count it and its latencies. `by_pool`: the route's pool was asked.
    pub fn request(
        &self,
        route: Option<usize>,
        status: u16,
        by_pool: bool,
        total: Duration,
        upstream: Option<Duration>,
    ) {
        let m = self.route(route);
        m.requests[usize::from(by_pool)][class_index(status)].inc();
        m.duration.observe(total);
        if let (Some(h), Some(d)) = (&m.upstream, upstream) {
            h.observe(d);
        }
    }

    /// A request on realtime route `route` that holds a connection open (an upgrade, a
    /// stream, a held poll): counted by its kind while it lasts. Only GETs and upgrades hold
    /// one; a publish is a short request like any other.
    pub fn realtime_session(&self, route: usize, upgrade: bool, get: bool) -> Option<OpenGuard> {
        if !upgrade && !get {
            return None;
        }
        let gauge = self.route(Some(route)).realtime.as_ref()?[usize::from(upgrade)].clone()?;
        gauge.inc();
        Some(OpenGuard(gauge))
    }
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Metrics {
    /// The process's metrics; the hub's counters are read at scrape time, as are Socket.IO's
    /// once a route mounts it ([`Metrics::set_socketio`]). Routes and pools come with each
    /// configuration ([`Metrics::routes`]).
    pub fn new(hub: realtime::hub::Hub) -> Metrics {
        let mut registry = Registry::default();

        let requests = Family::<Labels, Counter>::default();
        registry.register(
            "gateway_requests",
            "Requests answered by the front door, by route (routes[i] of the configuration, \
             or - when none matched), status class and upstream pool (- when no pool answered)",
            requests.clone(),
        );
        let durations = Family::<Labels, Histogram>::default();
        registry.register(
            "gateway_request_duration_seconds",
            "Time from the request's head to the end of its answer, by route (a WebSocket or \
             stream counts until it closes)",
            durations.clone(),
        );
        let upstream_durations = Family::<Labels, Histogram>::default();
        registry.register(
            "gateway_upstream_header_duration_seconds",
            "Time from the first attempt on the pool until the app's answer head arrived \
             (connects and retries included), by upstream pool",
            upstream_durations.clone(),
        );
        let open = Family::<Labels, Gauge>::default();
        registry.register(
            "gateway_open_connections",
            "Open client connections by kind: http1 and http2 connections to the front door, \
             and the sessions on them (app WebSocket tunnels, Socket.IO by transport, /ws \
             endpoints, SSE streams, held long-polls)",
            open.clone(),
        );
        let tls = Family::<Labels, Counter>::default();
        registry.register(
            "gateway_tls_handshakes",
            "Completed TLS handshakes on the front door, by protocol version",
            tls.clone(),
        );
        let reloads = Family::<Labels, Counter>::default();
        registry.register(
            "gateway_config_reloads",
            "Configuration reloads (SIGHUP, gateway reload) by result: ok, or failed (the \
             file did not pass and the old configuration kept serving)",
            reloads.clone(),
        );
        let dropped = Counter::default();
        registry.register(
            "gateway_access_log_dropped",
            "Access log lines dropped because the log writer was behind (the request was \
             not held up)",
            dropped.clone(),
        );
        let info = Family::<Labels, Gauge>::default();
        registry.register(
            "gateway_build",
            "The gateway's version and the pingora it is built on (value 1)",
            info.clone(),
        );
        info.get_or_create(&vec![
            ("version", env!("CARGO_PKG_VERSION").to_string()),
            ("pingora", PINGORA_VERSION.to_string()),
        ])
        .set(1);
        let route_info = Family::<Labels, Gauge>::default();
        registry.register(
            "gateway_route",
            "Each configured route's path, host and target, to join with the route label \
             (value 1)",
            route_info.clone(),
        );

        let open: [Gauge; OPEN_KINDS.len()] = std::array::from_fn(|i| {
            open.get_or_create(&vec![("kind", OPEN_KINDS[i].to_string())])
                .clone()
        });
        let tls_handshakes = std::array::from_fn(|i| {
            tls.get_or_create(&vec![("version", TLS_VERSIONS[i].to_string())])
                .clone()
        });
        let reloads_ok = reloads
            .get_or_create(&vec![("result", "ok".to_string())])
            .clone();
        let reloads_failed = reloads
            .get_or_create(&vec![("result", "failed".to_string())])
            .clone();
        let pools = Arc::new(arc_swap::ArcSwap::from_pointee(Vec::new()));
        let socketio = Arc::new(std::sync::OnceLock::new());
        registry.register_collector(Box::new(Scraped {
            pools: pools.clone(),
            hub,
            socketio: socketio.clone(),
        }));
        Metrics {
            registry,
            requests,
            durations,
            upstream_durations,
            route_info,
            pools,
            socketio,
            open,
            tls_handshakes,
            reloads_ok,
            reloads_failed,
            access_log_dropped: dropped,
        }
    }

    /// The per-route metrics of a configuration (at start and on each reload), and its pools
    /// for the scraped health and in-flight counts. `gateway_route` then describes these
    /// routes only.
    pub fn routes(&self, settings: &Settings, pools: Vec<Arc<Pool>>) -> RouteTable {
        self.pools.store(Arc::new(pools));
        self.route_info.clear();
        let pool_histograms: std::collections::BTreeMap<&str, Histogram> = settings
            .upstreams
            .keys()
            .map(|name| {
                let h = self
                    .upstream_durations
                    .get_or_create(&vec![("upstream", name.clone())])
                    .clone();
                (name.as_str(), h)
            })
            .collect();

        let mut routes = Vec::with_capacity(settings.routes.len() + 1);
        let described = settings.routes.iter().enumerate().map(|(i, r)| {
            let (pool, target) = match &r.target {
                Target::App(app) => (app.upstream.clone(), "app"),
                Target::Realtime(e) => (None, realtime_name(e.kind())),
            };
            let realtime = match &r.target {
                Target::Realtime(e) => Some(e.kind()),
                Target::App(_) => None,
            };
            self.route_info
                .get_or_create(&vec![
                    ("route", format!("routes[{i}]")),
                    ("path", r.path.clone()),
                    ("host", r.host.clone().unwrap_or_default()),
                    ("target", target.to_string()),
                ])
                .set(1);
            (format!("routes[{i}]"), pool, realtime)
        });
        for (name, pool, realtime) in described.chain([("-".to_string(), None, None)]) {
            let row = |upstream: &str| -> [Counter; CLASSES.len()] {
                std::array::from_fn(|c| {
                    self.requests
                        .get_or_create(&vec![
                            ("route", name.clone()),
                            ("status", CLASSES[c].to_string()),
                            ("upstream", upstream.to_string()),
                        ])
                        .clone()
                })
            };
            let none = row("-");
            let with_pool = match &pool {
                Some(p) => row(p),
                None => none.clone(),
            };
            let gauge = |kind: Open| Some(self.open[kind as usize].clone());
            routes.push(RouteMetrics {
                requests: [none, with_pool],
                duration: self
                    .durations
                    .get_or_create(&vec![("route", name.clone())])
                    .clone(),
                upstream: pool
                    .as_deref()
                    .and_then(|p| pool_histograms.get(p).cloned()),
                realtime: realtime.map(|kind| match kind {
                    RealtimeKind::Socketio => {
                        [gauge(Open::SocketioPolling), gauge(Open::SocketioWebsocket)]
                    }
                    RealtimeKind::Websocket => [None, gauge(Open::Ws)],
                    RealtimeKind::Sse => [gauge(Open::Sse), None],
                    RealtimeKind::Longpoll => [gauge(Open::Longpoll), None],
                    RealtimeKind::SeamTest | RealtimeKind::ProtocolSuites => [None, None],
                }),
            });
        }

        RouteTable(routes)
    }

    /// Export the Socket.IO server's counters (once: the server is built once).
    pub fn set_socketio(&self, io: Option<realtime::socketio::SocketIo>) {
        if let Some(io) = io {
            let _ = self.socketio.set(io);
        }
    }

    /// Client connections to the front door open now (HTTP/1 and HTTP/2).
    pub fn open_connections(&self) -> u64 {
        let count = |kind: Open| self.open[kind as usize].get().max(0) as u64;
        count(Open::Http1) + count(Open::Http2)
    }

    /// Count a connection or session of `kind` as open until the guard is dropped.
    pub fn open(&self, kind: Open) -> OpenGuard {
        let g = self.open[kind as usize].clone();
        g.inc();
        OpenGuard(g)
    }

    /// A TLS handshake completed with `version` (as rustls names it: `TLSv1_3`).
    pub fn tls_handshake(&self, version: &str) {
        let i = match version {
            "TLSv1_2" => 0,
            "TLSv1_3" => 1,
            _ => 2,
        };
        self.tls_handshakes[i].inc();
    }

    /// Everything, in the Prometheus text format.
    pub fn encode(&self) -> String {
        let mut out = String::with_capacity(16 * 1024);
        // Writing into a String cannot fail, and every metric here encodes.
        let _ = prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry);
        out
    }
}

/// The pingora version the workspace pins (`=0.9.1` in Cargo.toml).
const PINGORA_VERSION: &str = "0.9.1";

fn realtime_name(kind: RealtimeKind) -> &'static str {
    match kind {
        RealtimeKind::SeamTest => "seam-test",
        RealtimeKind::Longpoll => "longpoll",
        RealtimeKind::Sse => "sse",
        RealtimeKind::Websocket => "websocket",
        RealtimeKind::Socketio => "socketio",
        RealtimeKind::ProtocolSuites => "protocol-suites",
    }
}

/// What other parts count already, read at scrape time.
struct Scraped {
    pools: Arc<arc_swap::ArcSwap<Vec<Arc<Pool>>>>,
    hub: realtime::hub::Hub,
    socketio: Arc<std::sync::OnceLock<realtime::socketio::SocketIo>>,
}

impl std::fmt::Debug for Scraped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scraped").finish_non_exhaustive()
    }
}

/// One metric with labelled values.
fn family<M: EncodeMetric>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    kind: MetricType,
    values: impl IntoIterator<Item = (Labels, M)>,
) -> Result<(), std::fmt::Error> {
    let mut metric = encoder.encode_descriptor(name, help, None, kind)?;
    for (labels, value) in values {
        value.encode(metric.encode_family(&labels)?)?;
    }
    Ok(())
}

fn one<M: EncodeMetric>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: M,
) -> Result<(), std::fmt::Error> {
    let kind = value.metric_type();
    value.encode(encoder.encode_descriptor(name, help, None, kind)?)
}

impl Collector for Scraped {
    fn encode(&self, mut e: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let pools = self.pools.load();
        let servers = || {
            pools.iter().flat_map(|p| {
                p.servers.iter().map(move |s| {
                    let labels = vec![("upstream", p.name.clone()), ("server", s.addr.to_string())];
                    (labels, s)
                })
            })
        };
        family(
            &mut e,
            "gateway_upstream_server_up",
            "Whether the health checks count the app server up (1) or down (0)",
            MetricType::Gauge,
            servers().map(|(l, s)| (l, ConstGauge::new(i64::from(s.is_healthy())))),
        )?;
        family(
            &mut e,
            "gateway_upstream_server_in_flight",
            "Requests (and WebSocket tunnels) on the app server now",
            MetricType::Gauge,
            servers().map(|(l, s)| (l, ConstGauge::new(s.in_flight() as i64))),
        )?;

        let (closed, timeout, not_tls, other) = crate::noise::handshake_failures();
        family(
            &mut e,
            "gateway_tls_handshake_failures",
            "TLS handshakes that did not complete, by reason: closed (the peer closed or reset \
             the connection during the handshake: TCP health checks, scanners), timeout, \
             not_tls (the peer spoke something else, e.g. plain HTTP), error (a TLS failure: \
             no shared version or cipher, an alert from the client)",
            MetricType::Counter,
            [
                ("closed", closed),
                ("timeout", timeout),
                ("not_tls", not_tls),
                ("error", other),
            ]
            .map(|(reason, n)| (vec![("reason", reason.to_string())], ConstCounter::new(n))),
        )?;

        let hub = self.hub.stats().snapshot();
        one(
            &mut e,
            "gateway_hub_publishes",
            "Messages published to the hub (one per topic per publish, from other nodes too)",
            ConstCounter::new(hub.published),
        )?;
        one(
            &mut e,
            "gateway_hub_deliveries",
            "Live messages queued to subscribers",
            ConstCounter::new(hub.delivered),
        )?;
        one(
            &mut e,
            "gateway_hub_replayed",
            "Messages handed out from history when a subscriber resumed",
            ConstCounter::new(hub.replayed),
        )?;
        family(
            &mut e,
            "gateway_hub_drops",
            "Subscribers dropped by the hub, by reason: slow_consumer (its queue was full \
             when a message arrived; it must reconnect and resume)",
            MetricType::Counter,
            [(
                vec![("reason", "slow_consumer".to_string())],
                ConstCounter::new(hub.slow_consumer_disconnects),
            )],
        )?;
        family(
            &mut e,
            "gateway_hub_resets",
            "Resumes the hub could not serve (the client is told it missed messages), by \
             reason: evicted (part of the gap left the history), epoch (another incarnation \
             of the topic), ahead (a position the topic never reached)",
            MetricType::Counter,
            [
                ("evicted", hub.resets_evicted),
                ("epoch", hub.resets_epoch),
                ("ahead", hub.resets_ahead),
            ]
            .map(|(reason, n)| (vec![("reason", reason.to_string())], ConstCounter::new(n))),
        )?;
        one(
            &mut e,
            "gateway_hub_topics",
            "Topics the hub holds now",
            ConstGauge::new(hub.topics as i64),
        )?;
        one(
            &mut e,
            "gateway_hub_subscribers",
            "Hub subscribers now (one per realtime connection or session)",
            ConstGauge::new(hub.subscribers as i64),
        )?;

        if let Some(io) = self.socketio.get() {
            let s = io.stats();
            let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
            one(
                &mut e,
                "gateway_socketio_sessions",
                "Engine.IO sessions served now (every transport)",
                ConstGauge::new(get(&s.connections) as i64),
            )?;
            one(
                &mut e,
                "gateway_socketio_sockets",
                "Socket.IO sockets connected now (over all namespaces)",
                ConstGauge::new(get(&s.sockets) as i64),
            )?;
            family(
                &mut e,
                "gateway_socketio_closed",
                "Socket.IO connections closed by the server, by reason",
                MetricType::Counter,
                [
                    ("slow_consumer", get(&s.slow_consumers)),
                    ("protocol_error", get(&s.protocol_errors)),
                    ("connect_timeout", get(&s.connect_timeouts)),
                ]
                .map(|(reason, n)| (vec![("reason", reason.to_string())], ConstCounter::new(n))),
            )?;
            one(
                &mut e,
                "gateway_socketio_recovered",
                "Socket.IO sockets that resumed their session (connection state recovery)",
                ConstCounter::new(get(&s.recovered)),
            )?;
            one(
                &mut e,
                "gateway_socketio_recovery_failures",
                "Socket.IO resumes that could not be served (a new session was given)",
                ConstCounter::new(get(&s.recovery_failures)),
            )?;
            one(
                &mut e,
                "gateway_socketio_session_takeovers",
                "Socket.IO sockets still connected whose client came back on a new connection and resumed them",
                ConstCounter::new(get(&s.takeovers)),
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_fall_in_their_class() {
        assert_eq!(CLASSES[class_index(101)], "1xx");
        assert_eq!(CLASSES[class_index(200)], "2xx");
        assert_eq!(CLASSES[class_index(308)], "3xx");
        assert_eq!(CLASSES[class_index(499)], "4xx");
        assert_eq!(CLASSES[class_index(504)], "5xx");
        assert_eq!(CLASSES[class_index(0)], "none");
        assert_eq!(CLASSES[class_index(600)], "none");
    }

    #[test]
    fn the_histogram_is_cumulative_and_its_count_is_the_inf_bucket() {
        let h = Histogram::default();
        h.observe(Duration::from_micros(500));
        h.observe(Duration::from_millis(3));
        h.observe(Duration::from_secs(120));
        let b = h.buckets();
        assert_eq!(b[0], (0.001, 1));
        assert_eq!(b[1], (0.005, 1));
        assert_eq!(b[BUCKETS.len() - 1], (60.0, 0));
        assert_eq!(b[BUCKETS.len()], (f64::INFINITY, 1));
        let mut registry = Registry::default();
        registry.register("t", "t", h);
        let mut out = String::new();
        prometheus_client::encoding::prometheus_text::encode(&mut out, &registry).unwrap();
        assert!(out.contains("t_bucket{le=\"0.005\"} 2\n"), "{out}");
        assert!(out.contains("t_bucket{le=\"60\"} 2\n"), "{out}");
        assert!(out.contains("t_bucket{le=\"+Inf\"} 3\n"), "{out}");
        assert!(out.contains("t_count 3\n"), "{out}");
        assert!(out.contains("t_sum 120.0035\n"), "{out}");
    }
}
