//! The one pass from the file to the settings: defaults put in, paths resolved, strings parsed,
//! every problem reported with its place. Sections are built in the file's order, so the
//! report reads top to bottom.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use http::HeaderValue;

use super::values::MAX_UNIX_PATH;
use super::*;
use crate::config::{self, defaults};

/// The problems found so far.
#[derive(Default)]
struct Report(Vec<Problem>);

impl Report {
    fn bad(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.0.push(Problem {
            path: path.into(),
            message: message.into(),
        });
    }
}

fn resolve(base: &Path, p: PathBuf) -> PathBuf {
    if p.is_relative() {
        base.join(p)
    } else {
        p
    }
}

fn ms(v: Option<u64>, default: Duration) -> Duration {
    v.map(Duration::from_millis).unwrap_or(default)
}

fn strings(v: Option<Vec<String>>, default: &[&str]) -> Vec<String> {
    v.unwrap_or_else(|| default.iter().map(|s| s.to_string()).collect())
}

pub(super) fn build(c: Config, base: &Path) -> Result<Settings, Vec<Problem>> {
    let mut r = Report::default();
    let source = std::sync::Arc::new(c.clone());

    let listen = listen(&c.listen, &mut r);
    let tls = tls(c.tls, listen.https.is_some(), base, &mut r);
    let proxy = proxy(c.proxy, &tls.state_dir, base, &mut r);
    let pid_file = match &c.pid_file {
        Some(path) => resolve(base, path.clone()),
        None => tls.state_dir.join(defaults::PID_FILE),
    };

    if let Some(admin) = listen.admin {
        if !admin.ip().is_loopback() && c.realtime.publish.token.is_none() {
            r.bad(
                "realtime.publish.token",
                format!("required when listen.admin ({admin}) is not a loopback address: the publish API would be open to anyone"),
            );
        }
    }
    let hub = hub(&c.realtime.hub, &mut r);
    let longpoll = longpoll(&c.realtime.longpoll, &mut r);
    let sse = sse(&c.realtime.sse, &mut r);
    let mut websockets = BTreeMap::new();
    for (path, ws) in &c.realtime.websocket {
        let at = format!("realtime.websocket.{path}");
        let mounted = c
            .routes
            .iter()
            .any(|rt| rt.path == *path && rt.realtime == Some(RealtimeKind::Websocket));
        if !mounted {
            r.bad(
                at.clone(),
                format!(
                    "no route with path {path:?} and `realtime: websocket` uses these settings"
                ),
            );
        }
        websockets.insert(path.clone(), websocket(ws, &at, &mut r));
    }
    let socketio = socketio(c.realtime.socketio, base, &mut r);
    let policy = policy(&c.realtime.policy, &mut r);
    let compression = compression(c.compression, &mut r);
    let limits = limits(&c.limits, &mut r);
    let cluster = c.cluster.map(|cl| cluster(cl, &listen, base, &mut r));

    let mut upstreams = BTreeMap::new();
    for (name, u) in c.upstreams {
        let pool = upstream(&name, u, base, &mut r);
        upstreams.insert(name, pool);
    }

    // Where files are public: an internal root inside one of these would be too.
    let public: Vec<(String, PathBuf)> = c
        .routes
        .iter()
        .enumerate()
        .filter_map(|(i, rt)| {
            let s = rt.static_files.as_ref()?;
            Some((
                format!("routes[{i}].static.root"),
                resolve(base, s.root.clone()).canonicalize().ok()?,
            ))
        })
        .chain(upstreams.iter().filter_map(|(name, u)| match &u.protocol {
            Protocol::FastCgi(f) => Some((
                format!("upstreams.{name}.fastcgi.root"),
                f.root.canonicalize().ok()?,
            )),
            Protocol::Http => None,
        }))
        .collect();
    let internal_locations =
        internal_locations(c.internal_locations, &c.routes, &public, base, &mut r);
    let auth = c.realtime.auth.map(|a| auth(a, &upstreams, &mut r));
    explain_policy(&policy, auth.as_ref(), &c.routes, &mut r);
    let events = c
        .realtime
        .events
        .map(|e| events(e, &upstreams, &c.routes, &mut r));
    if events.is_none() {
        need_events(&socketio, &websockets, &mut r);
    }

    let routes = routes(c.routes, &upstreams, &websockets, base, &mut r);
    let access_log = access_log(&c.access_log, base, &mut r);

    let threads = c.threads.unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(2)
    });
    let work_stealing = c.work_stealing.unwrap_or(defaults::WORK_STEALING);
    let grace_period = c
        .grace_period_s
        .map(Duration::from_secs)
        .unwrap_or(defaults::GRACE_PERIOD);

    if !r.0.is_empty() {
        return Err(r.0);
    }
    Ok(Settings {
        listen,
        tls,
        proxy,
        limits,
        upstreams,
        routes,
        realtime: Realtime {
            hub,
            longpoll,
            sse,
            publish: Publish {
                token: c.realtime.publish.token,
            },
            socketio,
            policy,
            auth,
            events,
        },
        internal_locations,
        compression,
        cluster,
        threads,
        work_stealing,
        grace_period,
        access_log,
        pid_file,
        source,
    })
}

/// Longest `cluster.node_id` and `cluster.key_prefix`: the node id travels in every message
/// published, the prefix in every key and channel name.
const MAX_CLUSTER_NAME: usize = 128;

fn cluster(c: config::Cluster, listen: &Listen, base: &Path, r: &mut Report) -> Cluster {
    let tls_ca = c.tls_ca.and_then(|path| {
        let path = resolve(base, path);
        match std::fs::read(&path) {
            Ok(pem) => Some(pem),
            Err(e) => {
                r.bad(
                    "cluster.tls_ca",
                    format!("cannot read {}: {e}", path.display()),
                );
                None
            }
        }
    });
    if let Err(e) = realtime::cluster::backplane::check_url(&c.redis, tls_ca.as_deref()) {
        r.bad("cluster.redis", e.to_string());
    }
    let name = |key: &str, value: &str, r: &mut Report| {
        if value.is_empty() || value.len() > MAX_CLUSTER_NAME {
            r.bad(
                format!("cluster.{key}"),
                format!("must be 1 to {MAX_CLUSTER_NAME} bytes long"),
            );
        } else if value
            .chars()
            .any(|ch| ch.is_whitespace() || ch.is_control())
        {
            r.bad(
                format!("cluster.{key}"),
                format!("{value:?} has white space or control characters"),
            );
        }
    };
    let node_id = c.node_id.unwrap_or_else(defaults::cluster_node_id);
    name("node_id", &node_id, r);
    let key_prefix = c
        .key_prefix
        .unwrap_or_else(|| defaults::CLUSTER_KEY_PREFIX.to_string());
    name("key_prefix", &key_prefix, r);
    let internal_listen = c
        .internal_listen
        .and_then(|v| match v.parse::<SocketAddr>() {
            Ok(a) => {
                let taken = [
                    ("https", listen.https),
                    ("http", listen.http),
                    ("admin", listen.admin),
                ]
                .into_iter()
                .find(|(_, l)| *l == Some(a));
                if let Some((other, _)) = taken {
                    r.bad(
                        "cluster.internal_listen",
                        format!("{a} is already used by listen.{other}"),
                    );
                }
                Some(a)
            }
            Err(_) => {
                r.bad(
                    "cluster.internal_listen",
                    format!("{v:?} is not an address like 10.0.0.5:7070"),
                );
                None
            }
        });
    let laravel = c.laravel.map(|l| laravel(l, r));
    let internal = internal(internal_listen, c.advertise, c.secret, r);
    Cluster {
        redis: RedisUrl::new(c.redis),
        tls_ca,
        node_id,
        key_prefix,
        internal,
        socketio_adapter: c.socketio_adapter.unwrap_or(true),
        laravel,
    }
}

/// `cluster.laravel`: at least one channel, each a name or a prefix ending in `*`.
fn laravel(l: config::Laravel, r: &mut Report) -> realtime::cluster::LaravelConfig {
    if l.channels.is_empty() {
        r.bad(
            "cluster.laravel.channels",
            "list at least one channel (a name, or a prefix ending in *: private-*)",
        );
    }
    for (i, c) in l.channels.iter().enumerate() {
        if realtime::cluster::laravel::channel_spec(c).is_none() {
            r.bad(
                format!("cluster.laravel.channels[{i}]"),
                format!("{c:?} is neither a channel name nor a prefix ending in * (a * may only end it)"),
            );
        } else if c.len() > MAX_CLUSTER_NAME
            || c.chars().any(|ch| ch.is_whitespace() || ch.is_control())
        {
            r.bad(
                format!("cluster.laravel.channels[{i}]"),
                format!("{c:?} must be 1 to {MAX_CLUSTER_NAME} bytes without white space"),
            );
        }
    }
    let prefix = l
        .prefix
        .unwrap_or_else(|| defaults::LARAVEL_PREFIX.to_string());
    if prefix.len() > MAX_CLUSTER_NAME
        || prefix
            .chars()
            .any(|ch| ch.is_whitespace() || ch.is_control())
    {
        r.bad(
            "cluster.laravel.prefix",
            format!("{prefix:?} must be at most {MAX_CLUSTER_NAME} bytes without white space"),
        );
    }
    realtime::cluster::LaravelConfig {
        channels: l.channels,
        prefix,
    }
}

/// Shortest `cluster.secret`: 16 characters are ~96 bits from a password generator, beyond
/// guessing over the network.
const MIN_SECRET_LEN: usize = 16;
/// Longest: it travels in a header of every forwarded request.
const MAX_SECRET_LEN: usize = 1024;

/// The internal listener: `internal_listen`, where other nodes reach it (`advertise`) and the
/// fleet's `secret`, each checked with the others.
fn internal(
    listen: Option<SocketAddr>,
    advertise: Option<String>,
    secret: Option<String>,
    r: &mut Report,
) -> Option<Internal> {
    let Some(listen) = listen else {
        for (key, set) in [
            ("advertise", advertise.is_some()),
            ("secret", secret.is_some()),
        ] {
            if set {
                r.bad(
                    format!("cluster.{key}"),
                    "is only used with cluster.internal_listen",
                );
            }
        }
        return None;
    };
    let secret = match secret {
        None => {
            r.bad(
                "cluster.secret",
                "required with cluster.internal_listen: the same on every node, it is how a node knows a forwarded request comes from the fleet",
            );
            None
        }
        Some(s) if s.len() < MIN_SECRET_LEN || s.len() > MAX_SECRET_LEN => {
            r.bad(
                "cluster.secret",
                format!("must be {MIN_SECRET_LEN} to {MAX_SECRET_LEN} characters long"),
            );
            None
        }
        Some(s) if !s.bytes().all(|b| b.is_ascii_graphic()) => {
            r.bad(
                "cluster.secret",
                "must be printable ASCII without spaces (it is sent in a header)",
            );
            None
        }
        Some(s) => Some(Secret::new(s)),
    };
    let advertise = match advertise {
        Some(a) => match host_port(&a) {
            true => Some(a),
            false => {
                r.bad(
                    "cluster.advertise",
                    format!("{a:?} is not host:port, like 10.0.0.5:7070 or gw-1.internal:7070"),
                );
                None
            }
        },
        None if listen.ip().is_unspecified() => {
            r.bad(
                "cluster.advertise",
                format!("required when cluster.internal_listen is {listen}: the address other nodes reach this one at"),
            );
            None
        }
        None => Some(listen.to_string()),
    };
    Some(Internal {
        listen,
        advertise: advertise?,
        secret: secret?,
    })
}

/// `host:port` with a port and a host that is a name or an address (IPv6 in brackets).
fn host_port(v: &str) -> bool {
    let Some((host, port)) = v.rsplit_once(':') else {
        return false;
    };
    let port_ok = port.parse::<u16>().is_ok_and(|p| p > 0);
    let host_ok = match host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        Some(v6) => v6.parse::<std::net::Ipv6Addr>().is_ok(),
        None => {
            !host.is_empty()
                && host
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-' || b == b'_')
        }
    };
    port_ok && host_ok
}

fn listen(l: &config::Listen, r: &mut Report) -> Listen {
    if l.https.is_none() && l.http.is_none() {
        r.bad("listen", "at least one of `https` or `http` is required");
    }
    let mut seen: Vec<(SocketAddr, &str)> = Vec::new();
    let mut parsed = [None; 3];
    for (slot, (name, v)) in
        parsed
            .iter_mut()
            .zip([("https", &l.https), ("http", &l.http), ("admin", &l.admin)])
    {
        let Some(v) = v else { continue };
        match v.parse::<SocketAddr>() {
            Ok(a) => {
                if let Some((_, other)) = seen.iter().find(|(b, _)| *b == a) {
                    r.bad(
                        format!("listen.{name}"),
                        format!("{a} is already used by listen.{other}"),
                    );
                }
                seen.push((a, name));
                *slot = Some(a);
            }
            Err(_) => r.bad(
                format!("listen.{name}"),
                format!("{v:?} is not an address like 127.0.0.1:8443"),
            ),
        }
    }
    let [https, http, admin] = parsed;
    Listen { https, http, admin }
}

fn tls(t: config::Tls, https: bool, base: &Path, r: &mut Report) -> Tls {
    let configured = !t.certificates.is_empty();
    let mut certificates = Vec::new();
    for (i, c) in t.certificates.into_iter().enumerate() {
        let at = format!("tls.certificates[{i}]");
        let cert = resolve(base, c.cert);
        let key = match load_pair(&cert, &resolve(base, c.key)) {
            Ok(k) => Some(Arc::new(k)),
            Err(e) => {
                r.bad(at.clone(), e.to_string());
                None
            }
        };
        let mut server_names = Vec::new();
        for (j, n) in c.server_names.iter().enumerate() {
            match ServerName::parse(n) {
                Some(name) => server_names.push(name),
                None => r.bad(
                    format!("{at}.server_names[{j}]"),
                    format!("{n:?} is not a host name"),
                ),
            }
        }
        if let Some(key) = key {
            certificates.push(Certificate {
                cert,
                key,
                server_names,
            });
        }
    }
    if !https && configured {
        r.bad(
            "tls.certificates",
            "certificates are configured but listen.https is not set",
        );
    }
    Tls {
        certificates,
        // The default is relative to the working directory, not to the file.
        state_dir: t
            .state_dir
            .map(|d| resolve(base, d))
            .unwrap_or_else(|| PathBuf::from(defaults::STATE_DIR)),
        hsts: t.hsts.map(|h| Hsts {
            max_age: h.max_age.unwrap_or(defaults::HSTS_MAX_AGE),
            include_subdomains: h.include_subdomains,
        }),
    }
}

fn proxy(p: config::Proxy, state_dir: &Path, base: &Path, r: &mut Report) -> Proxy {
    let mut trusted_proxies = Vec::new();
    for (i, s) in p.trusted_proxies.iter().enumerate() {
        match Cidr::parse(s) {
            Some(c) => trusted_proxies.push(c),
            None => r.bad(
                format!("proxy.trusted_proxies[{i}]"),
                format!("{s:?} is not an address or CIDR block"),
            ),
        }
    }
    Proxy {
        trusted_proxies,
        temp_dir: p
            .temp_dir
            .map(|d| resolve(base, d))
            .unwrap_or_else(|| state_dir.join(defaults::TEMP_SUBDIR)),
    }
}

fn access_log(a: &config::AccessLog, base: &Path, r: &mut Report) -> AccessLogSettings {
    let path = a.path.as_deref().unwrap_or(defaults::ACCESS_LOG_PATH);
    let target = match path {
        "off" => LogTarget::Off,
        "stdout" => LogTarget::Stdout,
        "stderr" => LogTarget::Stderr,
        file => {
            let file = resolve(base, PathBuf::from(file));
            match file.parent() {
                Some(dir) if !dir.as_os_str().is_empty() && !dir.is_dir() => r.bad(
                    "access_log.path",
                    format!("{}: no such directory", dir.display()),
                ),
                _ => {}
            }
            LogTarget::File(file)
        }
    };
    let queue_lines = a.queue_lines.unwrap_or(defaults::ACCESS_LOG_QUEUE_LINES);
    if queue_lines == 0 {
        r.bad("access_log.queue_lines", "must be at least 1");
    }
    AccessLogSettings {
        target,
        format: a.format.unwrap_or(defaults::ACCESS_LOG_FORMAT),
        queue_lines,
    }
}

fn hub(h: &config::HubSettings, r: &mut Report) -> Hub {
    let hub = Hub {
        history: h.history.unwrap_or(defaults::HUB_HISTORY),
        subscriber_queue: h.subscriber_queue.unwrap_or(defaults::HUB_SUBSCRIBER_QUEUE),
        max_topics: h.max_topics.unwrap_or(defaults::HUB_MAX_TOPICS),
        max_open_topics: 0,
        max_topic_length: h.max_topic_length.unwrap_or(defaults::HUB_MAX_TOPIC_LENGTH),
        new_topics_per_client_per_minute: h
            .new_topics_per_client_per_minute
            .unwrap_or(defaults::HUB_NEW_TOPICS_PER_CLIENT_PER_MINUTE),
    };
    if hub.history == 0 {
        r.bad("realtime.hub.history", "must be at least 1");
    }
    if hub.subscriber_queue == 0 {
        r.bad("realtime.hub.subscriber_queue", "must be at least 1");
    }
    if hub.max_topics < 2 {
        r.bad("realtime.hub.max_topics", "must be at least 2");
    }
    if h.max_open_topics
        .is_some_and(|open| open == 0 || open >= hub.max_topics)
    {
        r.bad(
            "realtime.hub.max_open_topics",
            format!(
                "must be at least 1 and less than realtime.hub.max_topics ({}): the rest is kept for Socket.IO's own rooms",
                hub.max_topics
            ),
        );
    }
    if hub.max_topic_length < 16 {
        r.bad("realtime.hub.max_topic_length", "must be at least 16");
    }
    Hub {
        // Half: the other half is kept for Socket.IO's rooms (see `defaults::HUB_MAX_TOPICS`).
        max_open_topics: h.max_open_topics.unwrap_or(hub.max_topics / 2),
        ..hub
    }
}

fn longpoll(l: &config::LongPollSettings, r: &mut Report) -> LongPoll {
    let lp = LongPoll {
        wait: ms(l.wait_ms, defaults::LONGPOLL_WAIT),
        max_message_bytes: l
            .max_message_bytes
            .unwrap_or(defaults::LONGPOLL_MAX_MESSAGE),
    };
    if lp.max_message_bytes < 16 {
        r.bad("realtime.longpoll.max_message_bytes", "must be at least 16");
    }
    if lp.wait.is_zero() {
        r.bad("realtime.longpoll.wait_ms", "must be greater than 0");
    }
    lp
}

fn sse(s: &config::SseSettings, r: &mut Report) -> Sse {
    let sse = Sse {
        heartbeat: ms(s.heartbeat_ms, defaults::SSE_HEARTBEAT),
        retry: ms(s.retry_ms, defaults::SSE_RETRY),
    };
    if sse.heartbeat < Duration::from_millis(1000) {
        r.bad("realtime.sse.heartbeat_ms", "must be at least 1000");
    }
    sse
}

/// One raw WebSocket endpoint's settings, reported under `at`.
fn websocket(ws: &config::WsSettings, at: &str, r: &mut Report) -> WebSocket {
    let protocols = strings(ws.protocols.clone(), defaults::WS_PROTOCOLS);
    for (i, p) in protocols.iter().enumerate() {
        if p != realtime::websocket::CHAT && p != realtime::websocket::PUBSUB {
            r.bad(
                format!("{at}.protocols[{i}]"),
                format!("unknown subprotocol {p:?} (known: beej-chat-protocol, pubsub.v1)"),
            );
        }
    }
    let ws = WebSocket {
        protocols,
        allow_plain: ws.allow_plain.unwrap_or(defaults::WS_ALLOW_PLAIN),
        allowed_origins: ws.allowed_origins.clone(),
        max_message_bytes: ws.max_message_bytes.unwrap_or(defaults::WS_MAX_MESSAGE),
        ping_interval: ms(ws.ping_interval_ms, defaults::WS_PING_INTERVAL),
        ping_timeout: ms(ws.ping_timeout_ms, defaults::WS_PING_TIMEOUT),
        queue: ws.queue.unwrap_or(defaults::WS_QUEUE),
        max_subscriptions: ws
            .max_subscriptions
            .unwrap_or(defaults::WS_MAX_SUBSCRIPTIONS),
        events: event_names(&ws.events, &format!("{at}.events"), &[], r),
    };
    if !ws.events.is_none()
        && !ws
            .protocols
            .iter()
            .any(|p| p == realtime::websocket::PUBSUB)
    {
        r.bad(
            format!("{at}.events"),
            "events come as pubsub.v1 `event` messages, and this endpoint does not offer pubsub.v1",
        );
    }
    if ws.max_message_bytes < 16 {
        r.bad(format!("{at}.max_message_bytes"), "must be at least 16");
    }
    if ws.queue == 0 {
        r.bad(format!("{at}.queue"), "must be at least 1");
    }
    if ws.max_subscriptions == 0 {
        r.bad(format!("{at}.max_subscriptions"), "must be at least 1");
    }
    let floor = Duration::from_millis(100);
    if ws.ping_interval < floor || ws.ping_timeout < floor {
        r.bad(
            at,
            "ping_interval_ms and ping_timeout_ms must be at least 100",
        );
    }
    ws
}

fn socketio(s: config::SocketIoSettings, base: &Path, r: &mut Report) -> SocketIo {
    let file_namespaces = s.namespaces.unwrap_or_else(|| {
        defaults::SIO_NAMESPACES
            .iter()
            .map(|n| (n.to_string(), config::NamespaceSettings::default()))
            .collect()
    });
    let mut namespaces = BTreeMap::new();
    for (name, ns) in file_namespaces {
        if !name.starts_with('/') {
            r.bad(
                format!("realtime.socketio.namespaces.{name}"),
                "a namespace starts with /",
            );
        }
        let relay_rate = RelayRate {
            per_second: ns
                .relay_rate
                .per_second
                .unwrap_or(defaults::SIO_RELAY_PER_SECOND),
            burst: ns.relay_rate.burst.unwrap_or(defaults::SIO_RELAY_BURST),
        };
        if relay_rate.per_second == 0 || relay_rate.burst == 0 {
            r.bad(
                format!("realtime.socketio.namespaces.{name}.relay_rate"),
                "per_second and burst must be at least 1",
            );
        }
        // Events other behaviours of the namespace handle, which cannot go to the app too.
        let mut taken: Vec<&str> = Vec::new();
        if ns.client_rooms {
            taken.extend(["join", "leave"]);
        }
        if ns.echo {
            taken.extend(["subscribe", "unsubscribe", "client event"]);
        }
        let at = format!("realtime.socketio.namespaces.{name}.events");
        let events = event_names(&ns.events, &at, &taken, r);
        if ns.relay && events == realtime::app_events::EventNames::All {
            r.bad(
                at,
                "\"*\" sends every event to the app, so `relay` would get none: name the events for the app, or turn relay off",
            );
        }
        namespaces.insert(
            name,
            Namespace {
                relay: ns.relay,
                history: ns.history,
                client_rooms: ns.client_rooms,
                relay_rate,
                echo: ns.echo,
                events,
            },
        );
    }
    let sio = SocketIo {
        ping_interval: ms(s.ping_interval_ms, defaults::SIO_PING_INTERVAL),
        ping_timeout: ms(s.ping_timeout_ms, defaults::SIO_PING_TIMEOUT),
        // Past `usize` (32-bit targets) is as good as no limit.
        max_payload_bytes: s
            .max_payload_bytes
            .map(|b| usize::try_from(b).unwrap_or(usize::MAX))
            .unwrap_or(defaults::SIO_MAX_PAYLOAD),
        connect_timeout: ms(s.connect_timeout_ms, defaults::SIO_CONNECT_TIMEOUT),
        max_sessions: s.max_sessions.unwrap_or(defaults::SIO_MAX_SESSIONS),
        max_sessions_per_client: s
            .max_sessions_per_client
            .unwrap_or(defaults::SIO_MAX_SESSIONS_PER_CLIENT),
        allowed_origins: s.allowed_origins,
        recovery: s.recovery.map(|rc| Recovery {
            max_disconnection: ms(rc.max_disconnection_ms, defaults::SIO_RECOVERY),
        }),
        client_dir: s.client_dir.map(|d| resolve(base, d)),
        namespaces,
    };
    let floor = Duration::from_millis(100);
    if sio.ping_interval < floor || sio.ping_timeout < floor {
        r.bad(
            "realtime.socketio",
            "ping_interval_ms and ping_timeout_ms must be at least 100",
        );
    }
    if sio.max_payload_bytes < 1024 {
        r.bad(
            "realtime.socketio.max_payload_bytes",
            "must be at least 1024",
        );
    }
    sio
}

fn patterns(list: &[String], at: &str, r: &mut Report) -> Vec<realtime::access::Pattern> {
    let mut out = Vec::new();
    for (i, p) in list.iter().enumerate() {
        match realtime::access::Pattern::new(p) {
            Ok(p) => out.push(p),
            Err(e) => r.bad(format!("{at}[{i}]"), e.to_string()),
        }
    }
    out
}

fn policy(p: &config::PolicySettings, r: &mut Report) -> realtime::access::Policy {
    let private = p
        .private
        .clone()
        .unwrap_or_else(|| strings(None, defaults::POLICY_PRIVATE));
    realtime::access::Policy {
        private: patterns(&private, "realtime.policy.private", r),
        client_publish: patterns(&p.client_publish, "realtime.policy.client_publish", r),
    }
}

/// A callback path: absolute, and a valid request target without a query.
fn callback_path(path: &str, at: &str, r: &mut Report) {
    let valid = path.starts_with('/')
        && !path.contains(['?', '#'])
        && path.parse::<http::uri::PathAndQuery>().is_ok();
    if !valid {
        r.bad(
            at,
            format!("{path:?} must be a path starting with / (no query)"),
        );
    }
}

/// `name` is a pool of `upstreams`.
fn known_upstream(name: &str, at: &str, upstreams: &BTreeMap<String, Upstream>, r: &mut Report) {
    if !upstreams.contains_key(name) {
        let known: Vec<_> = upstreams.keys().map(String::as_str).collect();
        r.bad(
            at,
            format!(
                "no upstream named {:?} (known: {})",
                name,
                if known.is_empty() {
                    "none".to_string()
                } else {
                    known.join(", ")
                }
            ),
        );
    }
}

fn auth(a: config::AuthSettings, upstreams: &BTreeMap<String, Upstream>, r: &mut Report) -> Auth {
    known_upstream(&a.upstream, "realtime.auth.upstream", upstreams, r);
    let subscribe = a
        .subscribe
        .unwrap_or_else(|| defaults::AUTH_SUBSCRIBE_PATH.to_string());
    callback_path(&subscribe, "realtime.auth.subscribe", r);
    if let Some(connect) = &a.connect {
        callback_path(connect, "realtime.auth.connect", r);
    }
    let timeout = ms(a.timeout_ms, defaults::AUTH_TIMEOUT);
    if timeout.is_zero() {
        r.bad(
            "realtime.auth.timeout_ms",
            "must be at least 1: a client must never wait for the app forever",
        );
    }
    Auth {
        upstream: a.upstream,
        connect: a.connect,
        subscribe,
        timeout,
        cache: ms(a.cache_ms, defaults::AUTH_CACHE),
    }
}

/// A list of event names for the app: `"*"`, or names a client can send that no other
/// behaviour of the place (`taken`) handles.
fn event_names(
    list: &[String],
    at: &str,
    taken: &[&str],
    r: &mut Report,
) -> realtime::app_events::EventNames {
    for (i, name) in list.iter().enumerate() {
        if name.is_empty() {
            r.bad(format!("{at}[{i}]"), "an event name is not empty");
        } else if realtime::socketio::RESERVED_EVENTS.contains(&name.as_str()) {
            r.bad(
                format!("{at}[{i}]"),
                format!("{name:?} is reserved by Socket.IO: no client sends it"),
            );
        } else if taken.contains(&name.as_str()) {
            r.bad(
                format!("{at}[{i}]"),
                format!("{name:?} is handled by the namespace itself (client_rooms, echo)"),
            );
        }
    }
    realtime::app_events::EventNames::new(list.iter().cloned())
}

fn events(
    e: config::EventsSettings,
    upstreams: &BTreeMap<String, Upstream>,
    routes: &[config::Route],
    r: &mut Report,
) -> Events {
    known_upstream(&e.upstream, "realtime.events.upstream", upstreams, r);
    let path = e.path.unwrap_or_else(|| defaults::EVENTS_PATH.to_string());
    callback_path(&path, "realtime.events.path", r);
    // Clients never reach the path or anything under it (see `accel::Internal::hiding`).
    let segments = |p: &str| -> Vec<String> {
        p.split('/')
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect()
    };
    let hidden = segments(&path);
    if hidden.is_empty() {
        r.bad(
            "realtime.events.path",
            "clients never reach this path or anything under it, and \"/\" is the whole site: name the app's route for the events",
        );
    } else {
        for (i, rt) in routes.iter().enumerate() {
            if segments(&rt.path).starts_with(&hidden) {
                r.bad(
                    format!("routes[{i}]"),
                    format!(
                        "{} is under realtime.events.path ({path}), which clients never reach",
                        rt.path
                    ),
                );
            }
        }
    }
    let timeout = ms(e.timeout_ms, defaults::EVENTS_TIMEOUT);
    if timeout.is_zero() {
        r.bad(
            "realtime.events.timeout_ms",
            "must be at least 1: a client must never wait for the app forever",
        );
    }
    let max_in_flight = e.max_in_flight.unwrap_or(defaults::EVENTS_MAX_IN_FLIGHT);
    if max_in_flight == 0 {
        r.bad(
            "realtime.events.max_in_flight",
            "must be at least 1: with 0 no event would ever reach the app",
        );
    }
    Events {
        upstream: e.upstream,
        path,
        timeout,
        max_in_flight,
    }
}

/// Without `realtime.events`, a namespace or endpoint that names events for the app names
/// events nothing would send.
fn need_events(sio: &SocketIo, websockets: &BTreeMap<String, WebSocket>, r: &mut Report) {
    let why = "names events for the app, and realtime.events (where they go) is not set";
    for (name, ns) in &sio.namespaces {
        if !ns.events.is_none() {
            r.bad(format!("realtime.socketio.namespaces.{name}.events"), why);
        }
    }
    for (path, ws) in websockets {
        if !ws.events.is_none() {
            r.bad(format!("realtime.websocket.{path}.events"), why);
        }
    }
}

/// What `gateway check` explains about the policy: a setting that leaves a mounted transport
/// unable to do anything is a problem, with what to change.
fn explain_policy(
    policy: &realtime::access::Policy,
    auth: Option<&Auth>,
    routes: &[config::Route],
    r: &mut Report,
) {
    let mounted = |kinds: &[RealtimeKind]| -> Vec<String> {
        routes
            .iter()
            .filter(|rt| rt.realtime.is_some_and(|k| kinds.contains(&k)))
            .map(|rt| rt.path.clone())
            .collect()
    };
    if policy.everything_private() && auth.is_none() {
        let subscribing = mounted(&[
            RealtimeKind::Sse,
            RealtimeKind::Longpoll,
            RealtimeKind::Websocket,
            RealtimeKind::Socketio,
        ]);
        if !subscribing.is_empty() {
            r.bad(
                "realtime.policy.private",
                format!(
                    "every topic needs the app's word and realtime.auth is not set, so no client can subscribe to anything (SSE, long-poll, pubsub.v1, Socket.IO rooms on {}): set realtime.auth, or make some topics public",
                    subscribing.join(", ")
                ),
            );
        }
    }
    if policy.client_publish.is_empty() {
        for (i, rt) in routes.iter().enumerate() {
            // The long-poll service publishes on `…/p` and waits on `…/s`: a route that only
            // reaches `…/p` can do nothing else.
            let last = rt.path.trim_end_matches('/').rsplit('/').next();
            if rt.realtime == Some(RealtimeKind::Longpoll) && last == Some("p") {
                r.bad(
                    format!("routes[{i}]"),
                    format!(
                        "{} only publishes (POST {}?t=<topic>), and realtime.policy.client_publish names no topic clients may publish to, so every request is refused: add the topics to client_publish, or remove the route",
                        rt.path, rt.path
                    ),
                );
            }
        }
    }
}

fn compression(c: config::Compression, r: &mut Report) -> Option<Compression> {
    let enabled = c.enabled.unwrap_or(defaults::COMPRESSION_ENABLED);
    let algorithms = strings(c.algorithms, defaults::COMPRESSION_ALGORITHMS);
    if enabled && algorithms.is_empty() {
        r.bad(
            "compression.algorithms",
            "needs at least one of br, gzip (or set `enabled: false`)",
        );
    }
    let mut codings = Vec::new();
    for (i, a) in algorithms.iter().enumerate() {
        match Coding::from_token(a) {
            None => r.bad(
                format!("compression.algorithms[{i}]"),
                format!("unknown algorithm {a:?} (known: br, gzip)"),
            ),
            Some(_) if algorithms[..i].contains(a) => r.bad(
                format!("compression.algorithms[{i}]"),
                format!("{a:?} is listed twice"),
            ),
            Some(coding) => codings.push(coding),
        }
    }
    let gzip_level = c.gzip_level.unwrap_or(defaults::GZIP_LEVEL);
    if !(1..=9).contains(&gzip_level) {
        r.bad(
            "compression.gzip_level",
            format!("{gzip_level} is not a gzip level (1-9)"),
        );
    }
    let brotli_level = c.brotli_level.unwrap_or(defaults::BROTLI_LEVEL);
    if !(1..=11).contains(&brotli_level) {
        r.bad(
            "compression.brotli_level",
            format!("{brotli_level} is not a brotli level (1-11)"),
        );
    }
    let type_list = strings(c.types, defaults::COMPRESSION_TYPES);
    if enabled && type_list.is_empty() {
        r.bad(
            "compression.types",
            "needs at least one media type (or set `enabled: false`)",
        );
    }
    let mut types = Vec::new();
    for (i, t) in type_list.iter().enumerate() {
        match TypePattern::parse(t) {
            Ok(t) => types.push(t),
            Err(e) => r.bad(format!("compression.types[{i}]"), e),
        }
    }
    enabled.then(|| Compression {
        codings,
        gzip_level,
        brotli_level,
        min_length: c.min_length.unwrap_or(defaults::COMPRESSION_MIN_LENGTH),
        types,
    })
}

/// A rate limit; its burst is one second's worth unless set.
fn rate_limit(rate: config::RateLimit, at: &str, r: &mut Report) -> Option<Rate> {
    if !(rate.per_second.is_finite() && rate.per_second > 0.0) {
        r.bad(
            format!("{at}.per_second"),
            "must be a number greater than 0",
        );
        return None;
    }
    let burst = rate
        .burst
        .unwrap_or_else(|| (rate.per_second.ceil() as u32).max(1));
    if burst == 0 {
        r.bad(
            format!("{at}.burst"),
            "must be at least 1 (a bucket of 0 admits nothing)",
        );
        return None;
    }
    Some(Rate {
        per_second: rate.per_second,
        burst,
    })
}

fn limits(l: &config::Limits, r: &mut Report) -> Limits {
    let keepalive_timeout = l
        .keepalive_timeout_s
        .map(Duration::from_secs)
        .unwrap_or(defaults::KEEPALIVE_TIMEOUT);
    let lim = Limits {
        max_header_bytes: l.max_header_bytes.unwrap_or(defaults::MAX_HEADER_BYTES),
        max_body_bytes: l.max_body_bytes.unwrap_or(defaults::MAX_BODY_BYTES),
        header_timeout: ms(l.header_timeout_ms, defaults::HEADER_TIMEOUT),
        keepalive_requests: l.keepalive_requests.unwrap_or(defaults::KEEPALIVE_REQUESTS),
        // 0 means off, as in nginx.
        keepalive_timeout: (!keepalive_timeout.is_zero()).then_some(keepalive_timeout),
        send_timeout: ms(l.send_timeout_ms, defaults::SEND_TIMEOUT),
        client_body_buffer_bytes: l
            .client_body_buffer_bytes
            .unwrap_or(defaults::CLIENT_BODY_BUFFER_BYTES),
        client_body_timeout: ms(l.client_body_timeout_ms, defaults::CLIENT_BODY_TIMEOUT),
        client_body_min_rate: l
            .client_body_min_rate
            .unwrap_or(defaults::CLIENT_BODY_MIN_RATE),
        response_buffer_bytes: l
            .response_buffer_bytes
            .unwrap_or(defaults::RESPONSE_BUFFER_BYTES),
        response_temp_file_bytes: l
            .response_temp_file_bytes
            .unwrap_or(defaults::RESPONSE_TEMP_FILE_BYTES),
        h2_max_concurrent_streams: l
            .h2_max_concurrent_streams
            .unwrap_or(defaults::H2_MAX_CONCURRENT_STREAMS),
        max_connections: l.max_connections,
        per_client_connections: l.per_client_connections,
        per_client_rate: l
            .per_client_rate
            .and_then(|rate| rate_limit(rate, "limits.per_client_rate", r)),
        per_client_realtime_connects: l
            .per_client_realtime_connects
            .and_then(|rate| rate_limit(rate, "limits.per_client_realtime_connects", r)),
    };
    if lim.max_connections == Some(0) {
        r.bad(
            "limits.max_connections",
            "must be at least 1 (leave it out for no cap)",
        );
    }
    if lim.per_client_connections == Some(0) {
        r.bad(
            "limits.per_client_connections",
            "must be at least 1 (leave it out for no limit)",
        );
    }
    if lim.max_header_bytes < 1024 {
        r.bad("limits.max_header_bytes", "must be at least 1024");
    }
    if lim.header_timeout.is_zero() {
        r.bad("limits.header_timeout_ms", "must be greater than 0");
    }
    if lim.send_timeout.is_zero() {
        r.bad("limits.send_timeout_ms", "must be greater than 0");
    }
    if lim.client_body_buffer_bytes < 1024 {
        r.bad("limits.client_body_buffer_bytes", "must be at least 1024");
    }
    if lim.client_body_timeout.is_zero() {
        r.bad("limits.client_body_timeout_ms", "must be greater than 0");
    }
    if lim.response_buffer_bytes < 1024 {
        r.bad("limits.response_buffer_bytes", "must be at least 1024");
    }
    if lim.keepalive_requests == 0 {
        r.bad("limits.keepalive_requests", "must be at least 1");
    }
    if lim.h2_max_concurrent_streams == 0 {
        r.bad("limits.h2_max_concurrent_streams", "must be at least 1");
    }
    lim
}

fn upstream(name: &str, u: config::Upstream, base: &Path, r: &mut Report) -> Upstream {
    let at = format!("upstreams.{name}");
    if u.servers.is_empty() {
        r.bad(format!("{at}.servers"), "needs at least one server");
    }
    let fastcgi = u.protocol.unwrap_or(defaults::PROTOCOL) == config::Protocol::Fastcgi;
    let (example, port) = if fastcgi {
        ("unix:/run/php/php-fpm.sock", 9000)
    } else {
        ("unix:/run/app/puma.sock", 3000)
    };
    let mut servers = Vec::new();
    for (i, s) in u.servers.iter().enumerate() {
        match Addr::parse(s, base) {
            Ok(a) => servers.push(a),
            Err(AddrError::NoSocketPath) => r.bad(
                format!("{at}.servers[{i}]"),
                format!("{s:?}: a Unix socket needs a path, like {example}"),
            ),
            Err(AddrError::SocketPathTooLong(len)) => r.bad(
                format!("{at}.servers[{i}]"),
                format!("{s:?}: the path is {len} bytes long; a Unix socket address holds at most {MAX_UNIX_PATH}"),
            ),
            Err(AddrError::NotAnAddress) => r.bad(
                format!("{at}.servers[{i}]"),
                format!("{s:?} is not an address like 127.0.0.1:{port} or {example}"),
            ),
        }
    }
    let protocol = match (u.fastcgi, fastcgi) {
        (None, true) => {
            r.bad(
                format!("{at}.fastcgi"),
                "required with `protocol: fastcgi`: {root: /path/to/app/public}",
            );
            Protocol::Http
        }
        (Some(_), false) => {
            r.bad(
                format!("{at}.fastcgi"),
                "only used with `protocol: fastcgi`",
            );
            Protocol::Http
        }
        (Some(f), true) => Protocol::FastCgi(fastcgi_settings(f, &at, base, r)),
        (None, false) => Protocol::Http,
    };
    let health_check = u.health_check.map(|h| {
        let at = format!("{at}.health_check");
        if let Some(p) = &h.path {
            if fastcgi {
                r.bad(
                    format!("{at}.path"),
                    format!("{p:?}: a FastCGI pool is checked by connecting; remove `path`"),
                );
            }
            if !p.starts_with('/') {
                r.bad(format!("{at}.path"), format!("{p:?} must start with /"));
            }
        }
        let hc = HealthCheck {
            path: h.path,
            interval: ms(h.interval_ms, defaults::HEALTH_INTERVAL),
            timeout: ms(h.timeout_ms, defaults::HEALTH_TIMEOUT),
            rise: h.rise.unwrap_or(defaults::HEALTH_RISE),
            fall: h.fall.unwrap_or(defaults::HEALTH_FALL),
        };
        if hc.interval < Duration::from_millis(100) {
            r.bad(format!("{at}.interval_ms"), "must be at least 100");
        }
        if hc.timeout.is_zero() {
            r.bad(format!("{at}.timeout_ms"), "must be greater than 0");
        }
        if hc.rise == 0 {
            r.bad(format!("{at}.rise"), "must be at least 1");
        }
        if hc.fall == 0 {
            r.bad(format!("{at}.fall"), "must be at least 1");
        }
        hc
    });
    let connect_timeout = ms(u.connect_timeout_ms, defaults::CONNECT_TIMEOUT);
    if connect_timeout.is_zero() {
        r.bad(format!("{at}.connect_timeout_ms"), "must be greater than 0");
    }
    let read_timeout = ms(u.read_timeout_ms, defaults::READ_TIMEOUT);
    if read_timeout.is_zero() {
        r.bad(format!("{at}.read_timeout_ms"), "must be greater than 0");
    }
    Upstream {
        servers,
        protocol,
        balance: u.balance.unwrap_or(defaults::BALANCE),
        health_check,
        connect_timeout,
        read_timeout,
    }
}

fn fastcgi_settings(f: config::FastCgi, at: &str, base: &Path, r: &mut Report) -> FastCgi {
    let root = resolve(base, f.root);
    if !root.is_dir() {
        r.bad(
            format!("{at}.fastcgi.root"),
            format!("{} is not a directory", root.display()),
        );
    }
    let index = f
        .index
        .unwrap_or_else(|| defaults::FASTCGI_INDEX.to_string());
    if !is_plain_file_name(&index) || !index.ends_with(".php") {
        r.bad(
            format!("{at}.fastcgi.index"),
            format!("{index:?} must be a plain file name ending in .php"),
        );
    }
    let front_controller = f
        .front_controller
        .unwrap_or_else(|| defaults::FASTCGI_FRONT_CONTROLLER.to_string());
    let fc = &front_controller;
    if !fc.starts_with('/') || !fc.ends_with(".php") || fc.contains("/.") {
        r.bad(
            format!("{at}.fastcgi.front_controller"),
            format!("{fc:?} must be a path like /index.php"),
        );
    }
    FastCgi {
        root,
        index,
        front_controller,
    }
}

fn internal_locations(
    locations: Vec<config::InternalLocation>,
    routes: &[config::Route],
    public: &[(String, PathBuf)],
    base: &Path,
    r: &mut Report,
) -> Vec<InternalLocation> {
    let mut out: Vec<InternalLocation> = Vec::new();
    for (i, l) in locations.into_iter().enumerate() {
        let at = format!("internal_locations[{i}]");
        let p = &l.path;
        let plain = !p.contains(['%', '?', '#', '\\', '\0', ' '])
            && !p.contains("//")
            && !p.split('/').any(|s| s == "." || s == "..");
        if !p.starts_with('/') || !p.ends_with('/') || p == "/" {
            r.bad(
                format!("{at}.path"),
                format!("{p:?} must be a prefix like /protected/ (starting and ending with /, and not / alone)"),
            );
        } else if !plain {
            r.bad(
                format!("{at}.path"),
                format!("{p:?} must be a plain path: no . or .. segments, //, %, ?, #, spaces or backslashes"),
            );
        }
        for (j, other) in out.iter().enumerate() {
            if p.starts_with(&other.path) || other.path.starts_with(p.as_str()) {
                r.bad(
                    format!("{at}.path"),
                    format!(
                        "{p:?} overlaps internal_locations[{j}].path {:?}",
                        other.path
                    ),
                );
            }
        }
        let root = resolve(base, l.root);
        match root.canonicalize() {
            Ok(canonical) if canonical.is_dir() => {
                for (name, dir) in public {
                    if canonical.starts_with(dir) {
                        r.bad(
                            format!("{at}.root"),
                            format!(
                                "{} is inside {name} ({}), where its files are public; move it out",
                                root.display(),
                                dir.display()
                            ),
                        );
                    }
                }
            }
            _ => r.bad(
                format!("{at}.root"),
                format!("{} is not a directory", root.display()),
            ),
        }
        for (k, rt) in routes.iter().enumerate() {
            let under = rt.path.starts_with(p.as_str()) || rt.path == p.trim_end_matches('/');
            if under && p.len() > 1 {
                r.bad(
                    format!("routes[{k}].path"),
                    format!(
                        "{:?} is inside internal_locations[{i}].path {p:?}, which requests from outside never reach",
                        rt.path
                    ),
                );
            }
        }
        out.push(InternalLocation { path: l.path, root });
    }
    out
}

fn routes(
    routes: Vec<config::Route>,
    upstreams: &BTreeMap<String, Upstream>,
    websockets: &BTreeMap<String, WebSocket>,
    base: &Path,
    r: &mut Report,
) -> Vec<Route> {
    if routes.is_empty() {
        r.bad("routes", "at least one route is required");
    }
    let mut out = Vec::new();
    for (i, rt) in routes.into_iter().enumerate() {
        let at = format!("routes[{i}]");
        if !rt.path.starts_with('/') {
            r.bad(
                format!("{at}.path"),
                format!("{:?} must start with /", rt.path),
            );
        }
        let targets = [
            rt.upstream.is_some() || rt.static_files.is_some(),
            rt.realtime.is_some(),
        ];
        match targets.iter().filter(|t| **t).count() {
            0 => r.bad(
                at.clone(),
                "needs a target: `upstream`, `static` or `realtime`",
            ),
            1 => {}
            _ => r.bad(
                at.clone(),
                "`realtime` cannot be combined with `upstream` or `static`",
            ),
        }
        let pool = rt.upstream.as_ref().and_then(|u| upstreams.get(u));
        if let (Some(u), None) = (&rt.upstream, pool) {
            let known: Vec<_> = upstreams.keys().map(String::as_str).collect();
            r.bad(
                format!("{at}.upstream"),
                format!(
                    "no upstream named {u:?} (known: {})",
                    if known.is_empty() {
                        "none".to_string()
                    } else {
                        known.join(", ")
                    }
                ),
            );
        }
        let files = rt
            .static_files
            .map(|s| static_files(s, &format!("{at}.static"), base, r));
        if let (Some(s), Some(u)) = (&files, pool) {
            if matches!(u.protocol, Protocol::FastCgi(_)) {
                for (j, name) in s.index.iter().enumerate() {
                    if name.to_ascii_lowercase().ends_with(".php") {
                        r.bad(
                            format!("{at}.static.index[{j}]"),
                            format!("{name:?} would be served as source code: PHP index files belong in upstreams.{}.fastcgi.index", rt.upstream.as_deref().unwrap_or("")),
                        );
                    }
                }
            }
        }
        if rt.realtime.is_some() && rt.compression.is_some() {
            r.bad(
                format!("{at}.compression"),
                "realtime answers are never compressed; remove it",
            );
        }
        let request_buffering = rt
            .request_buffering
            .unwrap_or(defaults::ROUTE_REQUEST_BUFFERING);
        if rt.response_buffering && !request_buffering {
            r.bad(
                format!("{at}.response_buffering"),
                "needs `request_buffering: true` (an answer is only buffered for a request the gateway holds whole)",
            );
        }
        if rt.realtime.is_some() && (rt.response_buffering || rt.request_buffering.is_some()) {
            r.bad(
                at.clone(),
                "`request_buffering` and `response_buffering` only apply to `upstream` routes",
            );
        }
        if let Some(s) = &files {
            if !s.root.is_dir() {
                r.bad(
                    format!("{at}.static.root"),
                    format!("{} is not a directory", s.root.display()),
                );
            }
        }
        let target = match rt.realtime {
            Some(kind) => Target::Realtime(match kind {
                RealtimeKind::SeamTest => Endpoint::SeamTest,
                RealtimeKind::Longpoll => Endpoint::Longpoll,
                RealtimeKind::Sse => Endpoint::Sse,
                RealtimeKind::Socketio => Endpoint::Socketio,
                RealtimeKind::ProtocolSuites => {
                    if !cfg!(feature = "conformance") {
                        r.bad(
                            format!("{at}.realtime"),
                            "`protocol-suites` needs a gateway built with `--features conformance`",
                        );
                    }
                    Endpoint::ProtocolSuites
                }
                // A route with no `realtime.websocket` entry gets the defaults.
                RealtimeKind::Websocket => {
                    Endpoint::Websocket(websockets.get(&rt.path).cloned().unwrap_or_else(|| {
                        websocket(
                            &config::WsSettings::default(),
                            &format!("realtime.websocket.{}", rt.path),
                            r,
                        )
                    }))
                }
            }),
            None => Target::App(App {
                files,
                upstream: rt.upstream,
                websocket: rt.websocket.unwrap_or(defaults::ROUTE_WEBSOCKET),
                compression: rt.compression != Some(false),
                request_buffering,
                response_buffering: rt.response_buffering,
            }),
        };
        out.push(Route {
            path: rt.path,
            host: rt.host.map(|h| h.to_ascii_lowercase()),
            target,
        });
    }
    out
}

fn static_files(s: config::StaticFiles, at: &str, base: &Path, r: &mut Report) -> StaticFiles {
    let index = strings(s.index, defaults::STATIC_INDEX);
    for (j, name) in index.iter().enumerate() {
        if !is_plain_file_name(name) {
            r.bad(
                format!("{at}.index[{j}]"),
                format!("{name:?} must be a plain file name"),
            );
        }
    }
    let cache_control = s
        .cache_control
        .and_then(|v| match HeaderValue::from_str(&v) {
            Ok(h) => Some(h),
            Err(_) => {
                r.bad(
                    format!("{at}.cache_control"),
                    format!("{v:?} is not a valid header value"),
                );
                None
            }
        });
    StaticFiles {
        root: resolve(base, s.root),
        index,
        cache_control,
        precompressed: s.precompressed.unwrap_or(defaults::STATIC_PRECOMPRESSED),
    }
}
