//! `gateway.yaml` as it is written: plain serde structs that refuse unknown keys, and every
//! default in [`defaults`]. Nothing here is checked or interpreted: [`crate::settings`] builds
//! a file into typed settings in one pass that reports every problem with its place.
//!
//! A key whose default is "off", empty or absent takes its type's own (`false`, `[]`, no
//! value); every other key is an `Option` here, and the settings builder puts the default from
//! [`defaults`] in its place, so each default is written once. This module imports nothing
//! else of the crate.

use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::PathBuf;

/// Every default lives here, each with the reason for its value.
pub mod defaults {
    use std::time::Duration;

    use super::{AccessLogFormat, Balance, Protocol};

    /// Where the development certificate is generated and kept between starts.
    pub const STATE_DIR: &str = ".state";
    /// Below the state directory, so one setting says where the gateway writes.
    pub const TEMP_SUBDIR: &str = "tmp";
    /// In the state directory too (nginx writes `/run/nginx.pid`, which needs root): two
    /// gateways with their own state directories never share one.
    pub const PID_FILE: &str = "gateway.pid";
    /// pingora's graceful shutdown sleeps this long before stopping; 300 s is pingora's default
    /// and far too long for a front door restarted by a deploy script.
    pub const GRACE_PERIOD: Duration = Duration::from_secs(5);
    /// Each thread a runtime of its own, nginx's worker-per-core shape (pingora's default is
    /// one multi-threaded runtime whose idle workers steal queued tasks from busy ones): a
    /// connection stays on the thread it was spawned on, with its own kept-alive app
    /// connections, and no worker is woken to steal. Measured here: 13-17% less CPU per small
    /// proxied request than stealing and 19% less per PHP request, Socket.IO deliveries within
    /// the noise of either, long-poll fan-out 7% more CPU per delivery (a publish signals the
    /// other thread's runtime for each of its polls) (BENCHMARKS.md, "Issue 17, the night's
    /// cuts"). `true` suits a few long, busy connections that would otherwise share one
    /// thread, or a node that mostly fans out long-polls.
    pub const WORK_STEALING: bool = false;
    /// A year (31,536,000 s): the minimum the HSTS preload list accepts, and what Mozilla's
    /// server-side TLS guidelines recommend; HSTS is off unless `tls.hsts` is set.
    pub const HSTS_MAX_AGE: u64 = 31_536_000;

    /// nginx's `large_client_header_buffers` allows 4 x 8 KiB; HAProxy's `tune.bufsize` is 16 KiB.
    /// 32 KiB total leaves room for big cookies while keeping a hostile client's cost small.
    pub const MAX_HEADER_BYTES: usize = 32 * 1024;
    /// nginx `client_max_body_size` is 1 MiB, which breaks ordinary uploads in Rails/Laravel apps;
    /// 10 MiB matches what most of those deployments set it to.
    pub const MAX_BODY_BYTES: u64 = 10 * 1024 * 1024;
    /// nginx `client_header_timeout` is 60 s per read; ours is a total deadline for the whole
    /// header block (slow-header clients defeat a per-read timeout), and 20 s is plenty for a
    /// real client on a bad network.
    pub const HEADER_TIMEOUT: Duration = Duration::from_millis(20_000);
    /// nginx `client_body_buffer_size` is 8 or 16 KiB (two pages), so most JSON and form posts
    /// touch the disk there. 64 KiB keeps nearly all of them in memory (it is also pingora's
    /// own retry buffer), and a body only takes memory as fast as it arrives: 1,000 uploads in
    /// flight cost at most 64 MiB before the rest spills to temporary files.
    pub const CLIENT_BODY_BUFFER_BYTES: usize = 64 * 1024;
    /// nginx `client_body_timeout` is 60 s between two reads, so a client sending a byte every
    /// 59 s keeps a connection forever. Ours is the window a minimum rate is measured over:
    /// every 60 s window (the first is a grace period) must bring [`CLIENT_BODY_MIN_RATE`]
    /// bytes a second on average, so a large upload on a slow link still finishes while a
    /// trickle is cut off. Apache mod_reqtimeout's `MinRate` instead grants one more second
    /// per `MinRate` bytes, which lets 10 MiB sent at once buy hours of silence.
    pub const CLIENT_BODY_TIMEOUT: Duration = Duration::from_millis(60_000);
    /// Apache mod_reqtimeout's `MinRate=500` (4 kbit/s, below any real link): 30,000 bytes per
    /// 60 s window.
    pub const CLIENT_BODY_MIN_RATE: u64 = 500;
    /// nginx `proxy_buffers` is 8 x 4/8 KiB plus `proxy_buffer_size`; a typical HTML page or
    /// JSON answer is larger than that and would go through a temporary file. 256 KiB keeps
    /// most answers in memory; larger ones spill.
    pub const RESPONSE_BUFFER_BYTES: usize = 256 * 1024;
    /// nginx `proxy_max_temp_file_size` (1 GiB): past this much unsent answer on disk, the app
    /// is read only as fast as the client takes it.
    pub const RESPONSE_TEMP_FILE_BYTES: u64 = 1024 * 1024 * 1024;
    /// nginx `keepalive_requests` default (1000 since 1.19.10): bounds per-connection memory.
    pub const KEEPALIVE_REQUESTS: u32 = 1000;
    /// nginx `keepalive_timeout` is 75 s, pingora's 60 s: keep pingora's.
    pub const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(60);
    /// nginx `send_timeout`: a client that takes none of a pending answer for 60 s is gone
    /// (pingora has no write timeout at all, so a client that never reads would hold its
    /// connection, its answer and, unbuffered, the app's worker forever).
    pub const SEND_TIMEOUT: Duration = Duration::from_millis(60_000);
    /// Streams one HTTP/2 connection may have open at once. nginx allows 128
    /// (`http2_max_concurrent_streams`), HAProxy and pingora 100; but each stream here can hold
    /// an app connection and a compressor (about 2.3 MiB with brotli) until `send_timeout_ms`
    /// when the client reads nothing, so 100 streams let one connection pin some 230 MiB.
    /// 32 still loads a page's assets in parallel (more wait in the browser's queue) and
    /// cuts that to about 75 MiB.
    pub const H2_MAX_CONCURRENT_STREAMS: u32 = 32;

    /// An app server speaks HTTP unless the pool says FastCGI.
    pub const PROTOCOL: Protocol = Protocol::Http;
    /// Round robin spreads requests evenly without any state about the servers; `least_conn`
    /// and `ip_hash` are for apps with uneven requests or per-process sessions.
    pub const BALANCE: Balance = Balance::RoundRobin;
    /// nginx `proxy_connect_timeout` is 60 s, far too long to fail over; HAProxy users commonly
    /// set `timeout connect 5s`. A local app that does not accept in 3 s is down.
    pub const CONNECT_TIMEOUT: Duration = Duration::from_millis(3_000);
    /// nginx `proxy_read_timeout` default: the app may take this long between two reads.
    pub const READ_TIMEOUT: Duration = Duration::from_millis(60_000);
    /// HAProxy's `inter 2s`, `rise 2`, `fall 3` defaults.
    pub const HEALTH_INTERVAL: Duration = Duration::from_millis(2_000);
    pub const HEALTH_RISE: u32 = 2;
    pub const HEALTH_FALL: u32 = 3;
    /// A health probe that takes longer than this counts as failed.
    pub const HEALTH_TIMEOUT: Duration = Duration::from_millis(1_000);
    /// nginx's `index index.php` and `try_files ... /index.php?$query_string`, as Laravel's and
    /// Symfony's documentation configure them.
    pub const FASTCGI_INDEX: &str = "index.php";
    pub const FASTCGI_FRONT_CONTROLLER: &str = "/index.php";

    /// nginx's own `index` default.
    pub const STATIC_INDEX: &[&str] = &["index.html"];
    /// Serving `file.br` / `file.gz` costs one `stat` per request and only applies when those
    /// files exist, which a build step creates on purpose.
    pub const STATIC_PRECOMPRESSED: bool = true;
    /// Upgrades on an app route go to the app: Action Cable and Laravel Reverb need nothing else.
    pub const ROUTE_WEBSOCKET: bool = true;
    /// A slow upload then holds no app worker: Puma, Unicorn and php-fpm have a few each, and
    /// the realtime services read their own bodies (a WebSocket upgrade has none to buffer).
    pub const ROUTE_REQUEST_BUFFERING: bool = true;

    /// Tunnelled WebSocket to the app: how long the app has to answer the upgrade.
    pub const UPGRADE_TIMEOUT_MS: u64 = 10_000;

    /// On, as nginx's `access_log` is; on stdout, where a service manager (systemd's journal,
    /// Docker) collects it, since the gateway has no log directory of its own.
    pub const ACCESS_LOG_PATH: &str = "stdout";
    /// nginx's default format, which every log tool reads.
    pub const ACCESS_LOG_FORMAT: AccessLogFormat = AccessLogFormat::Combined;
    /// Lines wait in their thread's buffer while the disk or the pipe is slow: 8192 lines per
    /// thread is about half a second at the HTTPS benchmark's request rate, and at most about
    /// 1.2 MiB of text per thread (a buffer grows only as far as lines wait); a longer stall
    /// drops lines (counted) rather than holding requests up.
    pub const ACCESS_LOG_QUEUE_LINES: usize = 8192;

    /// The hub's own defaults (see `realtime::hub::HubConfig` for the reasoning).
    pub const HUB_HISTORY: usize = 1000;
    pub const HUB_SUBSCRIBER_QUEUE: usize = 1024;
    /// Topics at once (the hub's default, 100 000), of which at most half (`max_open_topics`)
    /// outside the reserved `sio:`/`ws:` namespaces: the other half is kept for Socket.IO's own
    /// rooms, so clients creating topics cannot stop new Socket.IO connections. nchan and
    /// Centrifugo have no global cap at all; ours bounds memory and needs the reservation.
    pub const HUB_MAX_TOPICS: usize = 100_000;
    /// Centrifugo's `channel_max_length`.
    pub const HUB_MAX_TOPIC_LENGTH: usize = realtime::topics::DEFAULT_MAX_TOPIC_LEN;
    /// New topics one client address may create per minute (the burst too); see
    /// `realtime::topics::DEFAULT_NEW_TOPICS_PER_MINUTE`. Neither nchan nor Centrifugo limit
    /// this; they do not keep a topic's history for minutes after its last use as we do.
    pub const HUB_NEW_TOPICS_PER_CLIENT_PER_MINUTE: u32 =
        realtime::topics::DEFAULT_NEW_TOPICS_PER_MINUTE;
    /// nchan and most Comet servers answer an idle poll after about 30 s.
    pub const LONGPOLL_WAIT: Duration = realtime::longpoll::DEFAULT_WAIT;
    /// Long-poll publish body: Centrifugo's 64 KiB message limit, as our /ws endpoints;
    /// nchan inherits nginx's 1 MiB `client_max_body_size`, too much for anonymous publishers.
    pub const LONGPOLL_MAX_MESSAGE: usize = realtime::longpoll::DEFAULT_MAX_MESSAGE;
    /// Under the 60 s idle timeouts of common proxies.
    pub const SSE_HEARTBEAT: Duration = realtime::sse::DEFAULT_HEARTBEAT;
    pub const SSE_RETRY: Duration = realtime::sse::DEFAULT_RETRY;

    /// Both subprotocols the endpoints speak.
    pub const WS_PROTOCOLS: &[&str] = &[realtime::websocket::CHAT, realtime::websocket::PUBSUB];
    /// A client that names no subprotocol (the simplest page script) still gets a room.
    pub const WS_ALLOW_PLAIN: bool = true;
    /// tungstenite's own limit (64 MiB) is an upload limit; chat lines and events are small.
    pub const WS_MAX_MESSAGE: usize = realtime::websocket::DEFAULT_MAX_MESSAGE;
    /// Socket.IO's heartbeat: a ping every 25 s, 20 s to answer.
    pub const WS_PING_INTERVAL: Duration = realtime::websocket::DEFAULT_PING_INTERVAL;
    pub const WS_PING_TIMEOUT: Duration = realtime::websocket::DEFAULT_PING_TIMEOUT;
    pub const WS_QUEUE: usize = realtime::websocket::DEFAULT_QUEUE;
    /// pubsub.v1 subscriptions per connection (Socket.IO's `client_rooms` allow 64 too).
    pub const WS_MAX_SUBSCRIPTIONS: usize = realtime::websocket::DEFAULT_MAX_SUBSCRIPTIONS;

    /// Laravel's naming: `private-*` and `presence-*` channels are authorized by the app's
    /// `/broadcasting/auth`, every other name is public, as an unchanged Laravel app expects.
    pub const POLICY_PRIVATE: &[&str] = realtime::access::DEFAULT_PRIVATE;
    /// Laravel's `Broadcast::routes()` registers this path: an unchanged app answers it.
    pub const AUTH_SUBSCRIBE_PATH: &str = "/broadcasting/auth";
    /// How long a client waits for the app's word before it is refused with a clear error. An
    /// app that needs longer than this to check a session is down for the client's purposes
    /// (a connect or a join the client is waiting on); Centrifugo's connect proxy waits 1 s,
    /// laravel-echo-server had no bound at all. 5 s leaves room for a cold PHP worker.
    pub const AUTH_TIMEOUT: Duration = Duration::from_millis(5_000);
    /// Beside the connect callback's `/realtime/auth` in the app's routes.
    pub const EVENTS_PATH: &str = realtime::app_events::DEFAULT_PATH;
    /// A client waiting for an ack waits as long as for a connect (see `AUTH_TIMEOUT`);
    /// Centrifugo's RPC proxy waits 1 s.
    pub const EVENTS_TIMEOUT: Duration = realtime::app_events::DEFAULT_TIMEOUT;
    /// Each event waiting holds a worker of the app's pool (php-fpm and Puma have a few
    /// each): 8 lets a page send a handful at once and no client take them all; the same as
    /// the joins one socket may have waiting for the app.
    pub const EVENTS_MAX_IN_FLIGHT: usize = realtime::app_events::DEFAULT_MAX_IN_FLIGHT;
    /// Off: an answer is asked for every time, so a logout or a revoked membership takes
    /// effect at once. A long-poll client with a connect callback asks on every poll: turn it
    /// on (a minute is common) when the app's load matters more.
    pub const AUTH_CACHE: Duration = Duration::ZERO;

    /// The reference Socket.IO server's (engine.io 6.6 / socket.io 4.8) defaults, so existing
    /// clients see the timings they were tuned for.
    pub const SIO_PING_INTERVAL: Duration = realtime::engineio::DEFAULT_PING_INTERVAL;
    pub const SIO_PING_TIMEOUT: Duration = realtime::engineio::DEFAULT_PING_TIMEOUT;
    pub const SIO_MAX_PAYLOAD: usize = realtime::engineio::DEFAULT_MAX_PAYLOAD;
    pub const SIO_CONNECT_TIMEOUT: Duration = realtime::socketio::DEFAULT_CONNECT_TIMEOUT;
    pub const SIO_RECOVERY: Duration = realtime::socketio::DEFAULT_MAX_DISCONNECTION_DURATION;
    /// Engine.IO sessions at once, in all and per client address. Node has no cap.
    pub const SIO_MAX_SESSIONS: usize = realtime::engineio::DEFAULT_MAX_SESSIONS;
    pub const SIO_MAX_SESSIONS_PER_CLIENT: usize =
        realtime::engineio::DEFAULT_MAX_SESSIONS_PER_CLIENT;
    /// The main namespace, with no behaviour: node's server accepts `/` and nothing else
    /// unless the app defines more.
    pub const SIO_NAMESPACES: &[&str] = &["/"];
    /// Relayed events per socket: 50/s, bursts of 100 (node has no limit; see
    /// `realtime::socketio::RelayRate`).
    pub const SIO_RELAY_PER_SECOND: u32 = realtime::socketio::DEFAULT_RELAY_PER_SECOND;
    pub const SIO_RELAY_BURST: u32 = realtime::socketio::DEFAULT_RELAY_BURST;

    /// The prefix of every Redis key and channel of the fleet: socket.io's redis adapter's own
    /// default (`@socket.io/redis-adapter`, `@socket.io/redis-emitter`), so that a Node server
    /// or an emitter pointed at the same Redis meets the gateways without configuration.
    pub const CLUSTER_KEY_PREFIX: &str = realtime::cluster::keys::DEFAULT_PREFIX;
    /// Laravel's default Redis key prefix (`Str::slug(APP_NAME).'_database_'` for the default
    /// `APP_NAME`, Laravel).
    pub const LARAVEL_PREFIX: &str = "laravel_database_";

    /// `<hostname>:<pid>`: unique among the processes of a fleet, and what an operator
    /// recognises in logs and in Redis (`CLIENT LIST`, message frames). The host name is the
    /// kernel's (`/proc/sys/kernel/hostname`), else `$HOSTNAME`, else `gateway`.
    pub fn cluster_node_id() -> String {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .ok()
            .or_else(|| std::env::var("HOSTNAME").ok())
            .map(|h| h.trim().to_string())
            .filter(|h| !h.is_empty() && !h.chars().any(|c| c.is_whitespace() || c.is_control()))
            .unwrap_or_else(|| "gateway".to_string());
        format!("{host}:{}", std::process::id())
    }

    /// Compression is what nginx deployments turn on first; an app that compresses itself
    /// turns it off per route.
    pub const COMPRESSION_ENABLED: bool = true;
    /// brotli first: it is smaller at the same cost, so it wins a tie.
    pub const COMPRESSION_ALGORITHMS: &[&str] = &["br", "gzip"];
    /// nginx's `gzip_comp_level` is 1; measured with `bench --bin compress-cost` (see
    /// BENCHMARKS.md), 5 makes JavaScript and HTML 25-33 % smaller than 1 at about a third of
    /// its speed (~80-150 MB/s a core), and 6-9 gain under 2 % more for up to 4x the CPU.
    pub const GZIP_LEVEL: u32 = 5;
    /// The nginx brotli module's `brotli_comp_level` is 6. With the `brotli` crate, level 4
    /// compressed JavaScript no better than gzip 5 for up to twice its CPU; 5 is the lowest
    /// level that beats gzip 5 (4-11 % smaller, 2-3x its CPU, 1.1-2.8 MiB per stream against
    /// gzip's 0.4), and 6 adds under 2 % for 15-20 % more CPU and 1 MiB more. Files served
    /// often are better precompressed (`file.br` at 11).
    pub const BROTLI_LEVEL: u32 = 5;
    /// nginx's `gzip_min_length` is 20 bytes, where gzip's own 18 bytes of framing eat most
    /// of any gain; 256 (the h5bp nginx configuration's value) skips bodies that barely shrink
    /// and costs nothing worth saving: they fit in one packet either way.
    pub const COMPRESSION_MIN_LENGTH: u64 = 256;
    /// nginx compresses only `text/html` by default, which every deployment extends; this is
    /// the usual extension (h5bp's list, trimmed of types that are compressed already, such as
    /// woff2 fonts and images other than SVG and icons).
    pub const COMPRESSION_TYPES: &[&str] = &[
        "text/*",
        "application/javascript",
        "application/x-javascript",
        "application/json",
        "application/ld+json",
        "application/manifest+json",
        "application/geo+json",
        "application/problem+json",
        "application/xml",
        "application/xhtml+xml",
        "application/rss+xml",
        "application/atom+xml",
        "application/wasm",
        "application/vnd.ms-fontobject",
        "font/ttf",
        "font/otf",
        "image/svg+xml",
        "image/x-icon",
        "image/vnd.microsoft.icon",
        "image/bmp",
    ];
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub listen: Listen,
    #[serde(default)]
    pub tls: Tls,
    #[serde(default)]
    pub proxy: Proxy,
    #[serde(default)]
    pub limits: Limits,
    #[serde(default)]
    pub upstreams: BTreeMap<String, Upstream>,
    #[serde(default)]
    pub routes: Vec<Route>,
    /// Settings of the in-process realtime services and their shared hub.
    #[serde(default)]
    pub realtime: Realtime,
    /// Directories served only when the app says so (`X-Accel-Redirect` / `X-Sendfile`), and
    /// never to a request from outside (nginx `location /protected/ { internal; }`).
    #[serde(default)]
    pub internal_locations: Vec<InternalLocation>,
    /// On-the-fly gzip / brotli of answers from the app and from static files.
    #[serde(default)]
    pub compression: Compression,
    /// Several gateways sharing one realtime through Redis. Absent: a single node, no Redis.
    pub cluster: Option<Cluster>,
    /// Worker threads of the HTTPS service (pingora `threads`). Absent: one per core.
    pub threads: Option<usize>,
    /// Whether the HTTPS service's threads share one work-stealing runtime (pingora
    /// `work_stealing`). Absent: [`defaults::WORK_STEALING`].
    pub work_stealing: Option<bool>,
    /// Seconds to let in-flight requests finish on SIGTERM.
    pub grace_period_s: Option<u64>,
    /// Where the running gateway writes its process id, for `gateway reload` (nginx `pid`).
    pub pid_file: Option<PathBuf>,
    /// One line per request (nginx `access_log`).
    #[serde(default)]
    pub access_log: AccessLog,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccessLog {
    /// `stdout`, `stderr`, `off`, or a file (appended to; reopened on `SIGUSR1`).
    pub path: Option<String>,
    pub format: Option<AccessLogFormat>,
    /// Lines that may wait for the writer, per worker thread; past it lines are dropped and
    /// counted.
    pub queue_lines: Option<usize>,
}

/// How an access log line is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AccessLogFormat {
    /// nginx's `combined`, then `"$request_id" $request_time`.
    Combined,
    /// One JSON object per line, with what answered and the upstream times.
    Json,
}

impl Config {
    /// Parse only: serde_yaml_ng's message already names the field path and line.
    pub fn parse(text: &str) -> Result<Config, String> {
        serde_yaml_ng::from_str(text).map_err(|e| e.to_string())
    }
}

/// One node of a fleet of gateways: the hub's topics are sequenced and kept in Redis, so a
/// publish on any node reaches the subscribers of every node, and a client resumes on any node.
#[derive(Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Cluster {
    /// `redis://[user[:password]@]host[:port][/db]`, or `rediss://` for TLS.
    pub redis: String,
    /// PEM file of the certificate authority that signed the Redis server's certificate
    /// (`rediss://` with a private CA). Absent: the system's trusted roots.
    pub tls_ca: Option<PathBuf>,
    /// This node's name in the fleet, written into every message it publishes. Absent:
    /// `<hostname>:<pid>`.
    pub node_id: Option<String>,
    /// The prefix of every Redis key and channel.
    pub key_prefix: Option<String>,
    /// Where this node takes the Engine.IO requests other nodes forward to it (the sessions
    /// it owns), e.g. `10.0.0.5:7070`. Absent: nothing is forwarded, sids name no node.
    pub internal_listen: Option<String>,
    /// `host:port` other nodes reach `internal_listen` at. Absent: `internal_listen` itself.
    pub advertise: Option<String>,
    /// Shared by every node of the fleet, sent with every forwarded request and checked by the
    /// internal listener: only the fleet's own nodes are served there.
    pub secret: Option<String>,
    /// Speak socket.io's Redis adapter protocol on `key_prefix`'s channels: emitters and Node
    /// servers with `@socket.io/redis-adapter` share the Socket.IO namespaces. Default: on.
    pub socketio_adapter: Option<bool>,
    /// Deliver Laravel's `redis` broadcaster's messages.
    pub laravel: Option<Laravel>,
}

/// Laravel's `redis` broadcaster (`BROADCAST_CONNECTION=redis`): what it publishes on these
/// channels reaches the Socket.IO room and the topic of the channel's name.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Laravel {
    /// Channels as Laravel names them (`orders`, `private-orders.1`, `presence-room.1`), or
    /// prefixes ending in `*` (`private-*`).
    pub channels: Vec<String>,
    /// Laravel's Redis key prefix (`database.redis.options.prefix`, `REDIS_PREFIX`), which its
    /// broadcaster puts in front of every channel name.
    pub prefix: Option<String>,
}

/// The URL may hold a password: never printed.
impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("redis", &realtime::cluster::backplane::redact(&self.redis))
            .field("tls_ca", &self.tls_ca)
            .field("node_id", &self.node_id)
            .field("key_prefix", &self.key_prefix)
            .field("internal_listen", &self.internal_listen)
            .field("socketio_adapter", &self.socketio_adapter)
            .field("laravel", &self.laravel)
            .field("advertise", &self.advertise)
            .field("secret", &self.secret.as_ref().map(|_| "***"))
            .finish()
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Listen {
    /// The main listener, TLS-terminated.
    pub https: Option<String>,
    /// Plain HTTP. With `https` set it only redirects there (308); without, it serves the routes.
    pub http: Option<String>,
    /// Health (`/healthz`) and the app's publish API (`/publish`, `/emit`, `/topics/`).
    /// Keep it on loopback, or set `realtime.publish.token`.
    pub admin: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tls {
    /// Certificate chains; the first is the default for unknown or absent SNI. None configured:
    /// a development certificate for localhost is generated into `state_dir`.
    #[serde(default)]
    pub certificates: Vec<Certificate>,
    pub state_dir: Option<PathBuf>,
    pub hsts: Option<Hsts>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Certificate {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// SNI names this chain answers for (exact, or `*.example.com`). Empty: default only.
    #[serde(default)]
    pub server_names: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Hsts {
    pub max_age: Option<u64>,
    #[serde(default)]
    pub include_subdomains: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Proxy {
    /// Peers whose forwarding headers (`Forwarded`, `X-Forwarded-*`, `X-Real-IP`, ... see
    /// `forwarding::FORWARDING`) are believed (a load balancer in front). Everyone else's are
    /// dropped or replaced, so a client cannot forge its address, scheme, port or URL to the
    /// app. Addresses or CIDR blocks.
    #[serde(default)]
    pub trusted_proxies: Vec<String>,
    /// Where buffered request and response bodies spill to disk (nginx
    /// `client_body_temp_path` / `proxy_temp_path`). Absent: `tmp/` in `tls.state_dir`.
    /// Files there have no name (they disappear when closed, even after a crash).
    pub temp_dir: Option<PathBuf>,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    pub max_header_bytes: Option<usize>,
    pub max_body_bytes: Option<u64>,
    /// Total time to receive a request's head (408 after), on every listener; a new connection
    /// that sends nothing is closed after it too.
    pub header_timeout_ms: Option<u64>,
    pub keepalive_requests: Option<u32>,
    /// Idle time allowed between requests on a client connection; 0 turns keep-alive off.
    pub keepalive_timeout_s: Option<u64>,
    /// Longest a write to a client may wait for the client to take bytes; the connection is
    /// closed after it.
    pub send_timeout_ms: Option<u64>,
    /// A buffered request body is kept in memory up to this, then in a temporary file.
    pub client_body_buffer_bytes: Option<usize>,
    /// The window a buffered request body's rate is measured over, and the grace period at
    /// its start (408 when the last window holds too few bytes).
    pub client_body_timeout_ms: Option<u64>,
    /// Bytes per second a buffered request body must average over every window (0: at least
    /// one byte per window).
    pub client_body_min_rate: Option<u64>,
    /// A buffered response is kept in memory up to this, then in a temporary file.
    pub response_buffer_bytes: Option<usize>,
    /// Most unsent response kept on disk per request; past it the app is read only as fast as
    /// the client reads.
    pub response_temp_file_bytes: Option<u64>,
    /// Streams one HTTP/2 connection may have open at once (more are refused with
    /// REFUSED_STREAM, which clients retry).
    pub h2_max_concurrent_streams: Option<u32>,
    /// Cap on the front door's open connections; past it requests get 503. Absent: none.
    pub max_connections: Option<u64>,
    /// Requests in progress at once per client address (nginx `limit_conn`). Absent: none.
    pub per_client_connections: Option<u32>,
    /// Requests per second per client address (nginx `limit_req`). Absent: none.
    pub per_client_rate: Option<RateLimit>,
    /// Realtime sessions opened per second per client address. Absent: none.
    pub per_client_realtime_connects: Option<RateLimit>,
}

/// nginx's `gzip` + `brotli` modules, with the settings most deployments give them.
/// A token bucket: `burst` at once, refilled at `per_second`.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimit {
    pub per_second: f64,
    /// Absent: one second's worth (`per_second`, at least 1).
    pub burst: Option<u32>,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Compression {
    pub enabled: Option<bool>,
    /// Codings offered (`br`, `gzip`); the order breaks ties between equal client weights.
    pub algorithms: Option<Vec<String>>,
    pub gzip_level: Option<u32>,
    pub brotli_level: Option<u32>,
    /// Answers with a smaller `Content-Length` are sent as they are.
    pub min_length: Option<u64>,
    /// Media types compressed (`type/subtype` or `type/*`); replaces the default list.
    pub types: Option<Vec<String>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Balance {
    RoundRobin,
    LeastConn,
    /// Consistent hashing on the client address: sticky sessions for apps that keep state in
    /// process memory.
    IpHash,
}

/// How the gateway talks to an upstream pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Protocol {
    /// HTTP/1.1 to `host:port` or Unix socket servers (Puma, Unicorn, Octane, ...).
    Http,
    /// FastCGI to php-fpm: `host:port` or `unix:/path/to/php-fpm.sock` servers.
    Fastcgi,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Upstream {
    /// `host:port`, or a Unix socket: `unix:/path/to/socket` (also Puma's `unix:///path`).
    pub servers: Vec<String>,
    pub protocol: Option<Protocol>,
    /// Where the PHP scripts are (required with `protocol: fastcgi`).
    pub fastcgi: Option<FastCgi>,
    pub balance: Option<Balance>,
    pub health_check: Option<HealthCheck>,
    pub connect_timeout_ms: Option<u64>,
    pub read_timeout_ms: Option<u64>,
}

/// A directory the app hands files out of: it answers with `X-Accel-Redirect: <path>/<file>`
/// (or `X-Sendfile: <root>/<file>`) after checking permissions, and the gateway serves the file.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InternalLocation {
    /// The URL prefix the app's `X-Accel-Redirect` values start with, like `/protected/`.
    pub path: String,
    /// The directory behind it. It must not be inside a static or PHP document root, where
    /// its files would be public under another URL.
    pub root: PathBuf,
}

/// The PHP side of a FastCGI pool: nginx's `root`, `index` and
/// `try_files $uri $uri/ /index.php?$query_string`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FastCgi {
    /// The document root as php-fpm sees it (`DOCUMENT_ROOT`, the start of `SCRIPT_FILENAME`).
    /// It must be readable here too: a script is only run when the file exists.
    pub root: PathBuf,
    /// Tried in a directory (`/admin/` runs `admin/index.php` if it exists).
    pub index: Option<String>,
    /// What runs when no file matches (Laravel's and Symfony's `/index.php`).
    pub front_controller: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthCheck {
    /// `GET` this path and expect 2xx/3xx; absent: a TCP connect is the check.
    pub path: Option<String>,
    pub interval_ms: Option<u64>,
    pub timeout_ms: Option<u64>,
    pub rise: Option<u32>,
    pub fall: Option<u32>,
}

/// One routing rule. The first route whose `path` prefix (and `host`, if given) matches wins.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Route {
    pub path: String,
    pub host: Option<String>,
    /// Serve files from a directory first (nginx `try_files $uri $uri/ @upstream`).
    #[serde(rename = "static")]
    pub static_files: Option<StaticFiles>,
    /// Forward to this upstream pool (after static files, if both are set).
    pub upstream: Option<String>,
    /// Hand the request to an in-process realtime service.
    pub realtime: Option<RealtimeKind>,
    /// Tunnel WebSocket upgrades on this route to the upstream (Action Cable, Laravel Reverb).
    pub websocket: Option<bool>,
    /// `false` turns on-the-fly compression off for this route (an app that compresses
    /// itself, or streams that must not wait in an encoder). Absent: the global setting.
    pub compression: Option<bool>,
    /// Read the whole request body before the app sees the request (nginx
    /// `proxy_request_buffering`), so a slow upload holds no app worker. Off streams the body
    /// to the app as it arrives.
    pub request_buffering: Option<bool>,
    /// Read the app's answer as fast as it comes and feed the client from the gateway (nginx
    /// `proxy_buffering`), so a slow reader holds no app worker. Never for
    /// `text/event-stream` or when the app sends `X-Accel-Buffering: no`. Off by default: it
    /// costs the gateway memory and disk per slow reader, and most answers fit in the socket
    /// buffers anyway; turn it on for routes with large answers. Needs `request_buffering`.
    #[serde(default)]
    pub response_buffering: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RealtimeKind {
    /// A diagnostic service that exercises every shape of exchange the seam supports
    /// (full, held, streamed, upgraded). For tests and for checking a deployment.
    SeamTest,
    /// Comet long-poll pub/sub: `…/s?t=<topic>` waits, `…/p?t=<topic>` publishes.
    Longpoll,
    /// Server-Sent Events: `…?topic=a&topic=b`.
    Sse,
    /// A raw WebSocket endpoint (chat, pub/sub, or a broadcast room), configured under
    /// `realtime.websocket.<route path>`.
    Websocket,
    /// Socket.IO v4 (Engine.IO v4 polling, WebSocket and upgrade), configured under
    /// `realtime.socketio`.
    Socketio,
    /// What the official Engine.IO and Socket.IO protocol test suites expect (an Engine.IO
    /// echo at `/engine.io/`, their reference Socket.IO server at `/socket.io/`), for running
    /// them against the gateway itself. Only in a gateway built with the `conformance`
    /// feature.
    ProtocolSuites,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Realtime {
    #[serde(default)]
    pub hub: HubSettings,
    #[serde(default)]
    pub longpoll: LongPollSettings,
    #[serde(default)]
    pub sse: SseSettings,
    #[serde(default)]
    pub publish: PublishSettings,
    /// Raw WebSocket endpoints, keyed by the `path` of the route that mounts them. A route with
    /// `realtime: websocket` and no entry here gets the defaults.
    #[serde(default)]
    pub websocket: BTreeMap<String, WsSettings>,
    #[serde(default)]
    pub socketio: SocketIoSettings,
    /// Who may subscribe to which topic and who may publish from a client connection, on
    /// every transport.
    #[serde(default)]
    pub policy: PolicySettings,
    /// The app's word on connects and private subscriptions: callbacks over an upstream pool.
    /// Absent: no connect callback, and private topics are refused.
    pub auth: Option<AuthSettings>,
    /// Client events posted to the app (the namespaces' and endpoints' `events` name which).
    pub events: Option<EventsSettings>,
}

/// The topic policy. Patterns: `*` is any run of characters, everything else itself.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicySettings {
    /// Subscribing to a matching topic (a Socket.IO room of that name) needs the app's word;
    /// every other name is public to subscribe.
    pub private: Option<Vec<String>>,
    /// Topics a client connection may publish to (`POST /p`, a `pubsub.v1` publish, a
    /// Socket.IO relay into a room). Empty: only the app publishes.
    #[serde(default)]
    pub client_publish: Vec<String>,
}

/// The authorization callbacks to the app.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthSettings {
    /// The pool the callbacks go to: the one that serves the app's pages (HTTP or FastCGI),
    /// so they see the same sessions.
    pub upstream: String,
    /// The connect callback's path (`/realtime/auth`). Absent: no connect callback.
    pub connect: Option<String>,
    /// The subscribe callback's path, Laravel's contract (`channel_name`, `socket_id`).
    pub subscribe: Option<String>,
    /// How long the app may take to answer a callback.
    pub timeout_ms: Option<u64>,
    /// How long an answer (allowed or refused) is reused for the same credentials.
    pub cache_ms: Option<u64>,
}

/// Where client events go in the app, and the bounds on waiting for it.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventsSettings {
    /// The pool the events go to: the one that serves the app's pages (HTTP or FastCGI).
    pub upstream: String,
    /// The app's route for them.
    pub path: Option<String>,
    /// How long a client waits for the app's answer before its ack is an error.
    pub timeout_ms: Option<u64>,
    /// Events of one connection waiting for the app at once; the next one is refused.
    pub max_in_flight: Option<usize>,
}

/// Socket.IO: Engine.IO timings (node's defaults), origins, recovery, and what each namespace
/// does without any app code.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SocketIoSettings {
    pub ping_interval_ms: Option<u64>,
    pub ping_timeout_ms: Option<u64>,
    /// `maxHttpBufferSize`: the largest message or polling POST (413 above).
    pub max_payload_bytes: Option<u64>,
    /// A connection that joins no namespace within this is closed.
    pub connect_timeout_ms: Option<u64>,
    /// Engine.IO sessions at once, all clients together (503 above; 0: no cap).
    pub max_sessions: Option<usize>,
    /// Engine.IO sessions at once per client address (IPv6: per /64; 429 above; 0: no cap).
    pub max_sessions_per_client: Option<usize>,
    /// `Origin`s accepted on the handshake (403 otherwise) and answered with CORS headers.
    /// Empty: any origin is accepted and no CORS headers are sent (same-origin pages only).
    #[serde(default)]
    pub allowed_origins: Vec<String>,
    /// Connection state recovery: a client that lost its transport for less than this gets
    /// its id, rooms and missed events back. Absent: off.
    pub recovery: Option<RecoverySettings>,
    /// Serve `socket.io.js` and friends from this folder (a socket.io-client `dist/`) instead
    /// of the copy built into the binary. Absent: the built-in one.
    pub client_dir: Option<PathBuf>,
    /// Namespaces and their built-in behaviour; a client connecting to any other gets
    /// `Invalid namespace`.
    pub namespaces: Option<BTreeMap<String, NamespaceSettings>>,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecoverySettings {
    pub max_disconnection_ms: Option<u64>,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NamespaceSettings {
    /// Broadcast every client event to the other sockets of the sender's rooms.
    #[serde(default)]
    pub relay: bool,
    /// Replay the last N relayed events to a socket when it connects.
    #[serde(default)]
    pub history: usize,
    /// Clients may `join` / `leave` rooms by name.
    #[serde(default)]
    pub client_rooms: bool,
    /// How fast one socket may relay; a socket over it is disconnected.
    #[serde(default)]
    pub relay_rate: RelayRateSettings,
    /// Speak Laravel Echo's protocol (laravel-echo-server's): `subscribe`, whispers,
    /// presence, and rooms delivering `(event, channel, data)`.
    #[serde(default)]
    pub echo: bool,
    /// Client events posted to the app (`realtime.events`): names, or `"*"` for every event
    /// no other behaviour handles.
    #[serde(default)]
    pub events: Vec<String>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RelayRateSettings {
    pub per_second: Option<u32>,
    pub burst: Option<u32>,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WsSettings {
    /// Subprotocols offered: `beej-chat-protocol`, `pubsub.v1`.
    pub protocols: Option<Vec<String>>,
    /// A client that asks for no subprotocol joins the endpoint's broadcast room.
    pub allow_plain: Option<bool>,
    /// `Origin` values accepted (`*` for any); empty means same-origin only. Browsers send
    /// cookies with cross-site WebSocket requests, so this is the CSRF check of WebSockets.
    #[serde(default)]
    pub allowed_origins: Vec<String>,
    pub max_message_bytes: Option<usize>,
    pub ping_interval_ms: Option<u64>,
    pub ping_timeout_ms: Option<u64>,
    /// Messages waiting for one client before it is closed as a slow reader (1013).
    pub queue: Option<usize>,
    /// Topics one pubsub.v1 connection may be subscribed to at once.
    pub max_subscriptions: Option<usize>,
    /// pubsub.v1 `event` names posted to the app (`realtime.events`), or `"*"` for all.
    #[serde(default)]
    pub events: Vec<String>,
}

/// The hub every realtime transport shares.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HubSettings {
    /// Messages kept per topic so reconnecting clients can resume without a gap.
    pub history: Option<usize>,
    /// Messages one subscriber may have waiting; a client that falls further behind is
    /// disconnected (and counted) instead of growing memory.
    pub subscriber_queue: Option<usize>,
    /// Topics that may exist at once.
    pub max_topics: Option<usize>,
    /// Of those, topics outside the reserved `sio:`/`ws:` namespaces (what clients and the app
    /// name); the rest is kept for Socket.IO's own rooms. Absent: half of `max_topics`.
    pub max_open_topics: Option<usize>,
    /// Longest topic name a client or the app may use, in bytes.
    pub max_topic_length: Option<usize>,
    /// New topics one client address (IPv6: its /64) may create per minute, the burst too
    /// (429 / an error frame above; 0: no limit).
    pub new_topics_per_client_per_minute: Option<u32>,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LongPollSettings {
    /// How long a poll is held before a 204.
    pub wait_ms: Option<u64>,
    /// Largest body `POST …/p` accepts (413 above).
    pub max_message_bytes: Option<usize>,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SseSettings {
    /// Interval of the comment lines that keep idle streams alive through proxies.
    pub heartbeat_ms: Option<u64>,
    /// The `retry:` hint sent to browsers.
    pub retry_ms: Option<u64>,
}

/// The app's publish API on the admin listener (`POST /publish`, `GET /topics/<topic>`).
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PublishSettings {
    /// Required as `Authorization: Bearer <token>` when set; mandatory when the admin listener
    /// is not on a loopback address.
    pub token: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StaticFiles {
    pub root: PathBuf,
    pub index: Option<Vec<String>>,
    /// Sent as it is with every file answer.
    pub cache_control: Option<String>,
    /// Serve `file.br` / `file.gz` next to `file` when the client accepts them.
    pub precompressed: Option<bool>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_fields_are_refused_with_their_location() {
        let e =
            Config::parse("listen: {http: 127.0.0.1:8080}\nroutes: [{path: /, upstrem: app}]\n")
                .unwrap_err();
        assert!(e.contains("unknown field `upstrem`"), "{e}");
        assert!(e.contains("routes[0]"), "{e}");
        let e =
            Config::parse("listen: {http: 127.0.0.1:8080}\ncompression: {level: 3}\n").unwrap_err();
        assert!(e.contains("unknown field `level`"), "{e}");
        let e = Config::parse(
            "listen: {http: 127.0.0.1:8080}\nrealtime: {socketio: {namespaces: {\"/\": {relay_rate: {per_secnd: 1}}}}}\n",
        )
        .unwrap_err();
        assert!(e.contains("unknown field `per_secnd`"), "{e}");
        let e = Config::parse(
            "listen: {http: 127.0.0.1:8080}\nupstreams: {php: {protocol: fastcgi, servers: [], fastcgi: {root: /, frontcontroller: /i.php}}}\nroutes: []\n",
        )
        .unwrap_err();
        assert!(e.contains("unknown field `frontcontroller`"), "{e}");
    }

    #[test]
    fn an_absent_key_is_absent_not_a_default() {
        let c = Config::parse("listen: {http: 127.0.0.1:8080}\n").expect("parses");
        assert_eq!(c.limits.max_header_bytes, None);
        assert_eq!(c.compression.algorithms, None);
        assert_eq!(c.grace_period_s, None);
    }
}
