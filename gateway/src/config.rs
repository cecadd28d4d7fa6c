//! `gateway.yaml`: plain serde structs, every default in [`defaults`], and one validation pass
//! that reports every problem with its path (`routes[2].upstream: no upstream named "ap"`).
//!
//! Loading never panics and never hands pingora a file it would panic on: certificate and key
//! files are parsed here, so `gateway check` and `gateway run` fail with the same clear message.

use serde::Deserialize;
use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

/// Every default lives here, each with the reason for its value.
pub mod defaults {
    /// Where the development certificate is generated and kept between starts.
    pub const STATE_DIR: &str = ".state";
    /// nginx's `large_client_header_buffers` allows 4 x 8 KiB; HAProxy's `tune.bufsize` is 16 KiB.
    /// 32 KiB total leaves room for big cookies while keeping a hostile client's cost small.
    pub const MAX_HEADER_BYTES: usize = 32 * 1024;
    /// nginx `client_max_body_size` is 1 MiB, which breaks ordinary uploads in Rails/Laravel apps;
    /// 10 MiB matches what most of those deployments set it to.
    pub const MAX_BODY_BYTES: u64 = 10 * 1024 * 1024;
    /// nginx `client_header_timeout` is 60 s per read; ours is a total deadline for the whole
    /// header block (slow-header clients defeat a per-read timeout), and 20 s is plenty for a
    /// real client on a bad network.
    pub const HEADER_TIMEOUT_MS: u64 = 20_000;
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
    pub const CLIENT_BODY_TIMEOUT_MS: u64 = 60_000;
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
    /// Below the state directory, so one setting says where the gateway writes.
    pub const TEMP_SUBDIR: &str = "tmp";
    /// nginx `keepalive_requests` default (1000 since 1.19.10): bounds per-connection memory.
    pub const KEEPALIVE_REQUESTS: u32 = 1000;
    /// nginx `keepalive_timeout` is 75 s, pingora's 60 s: keep pingora's.
    pub const KEEPALIVE_TIMEOUT_S: u64 = 60;
    /// nginx `send_timeout`: a client that takes none of a pending answer for 60 s is gone
    /// (pingora has no write timeout at all, so a client that never reads would hold its
    /// connection, its answer and, unbuffered, the app's worker forever).
    pub const SEND_TIMEOUT_MS: u64 = 60_000;
    /// Streams one HTTP/2 connection may have open at once. nginx allows 128
    /// (`http2_max_concurrent_streams`), HAProxy and pingora 100; but each stream here can hold
    /// an app connection and a compressor (about 2.3 MiB with brotli) until `send_timeout_ms`
    /// when the client reads nothing, so 100 streams let one connection pin some 230 MiB.
    /// 32 still loads a page's assets in parallel (more wait in the browser's queue) and
    /// cuts that to about 75 MiB.
    pub const H2_MAX_CONCURRENT_STREAMS: u32 = 32;
    /// nginx `proxy_connect_timeout` is 60 s, far too long to fail over; HAProxy users commonly
    /// set `timeout connect 5s`. A local app that does not accept in 3 s is down.
    pub const CONNECT_TIMEOUT_MS: u64 = 3_000;
    /// nginx `proxy_read_timeout` default: the app may take this long between two reads.
    pub const READ_TIMEOUT_MS: u64 = 60_000;
    /// HAProxy's `inter 2s`, `rise 2`, `fall 3` defaults.
    pub const HEALTH_INTERVAL_MS: u64 = 2_000;
    pub const HEALTH_RISE: u32 = 2;
    pub const HEALTH_FALL: u32 = 3;
    /// A health probe that takes longer than this counts as failed.
    pub const HEALTH_TIMEOUT_MS: u64 = 1_000;
    /// A year (31,536,000 s): the minimum the HSTS preload list accepts, and what Mozilla's
    /// server-side TLS guidelines recommend; HSTS is off unless `tls.hsts` is set.
    pub const HSTS_MAX_AGE: u64 = 31_536_000;
    /// pingora's graceful shutdown sleeps this long before stopping; 300 s is pingora's default
    /// and far too long for a front door restarted by a deploy script.
    pub const GRACE_PERIOD_S: u64 = 5;
    /// Tunnelled WebSocket to the app: how long the app has to answer the upgrade.
    pub const UPGRADE_TIMEOUT_MS: u64 = 10_000;
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
    /// Long-poll publish body: Centrifugo's 64 KiB message limit, as our /ws endpoints;
    /// nchan inherits nginx's 1 MiB `client_max_body_size`, too much for anonymous publishers.
    pub const LONGPOLL_MAX_MESSAGE: usize = realtime::longpoll::DEFAULT_MAX_MESSAGE;
    /// pubsub.v1 subscriptions per connection (Socket.IO's `client_rooms` allow 64 too).
    pub const WS_MAX_SUBSCRIPTIONS: usize = realtime::websocket::DEFAULT_MAX_SUBSCRIPTIONS;
    /// Engine.IO sessions at once, in all and per client address. Node has no cap.
    pub const SIO_MAX_SESSIONS: usize = realtime::engineio::DEFAULT_MAX_SESSIONS;
    pub const SIO_MAX_SESSIONS_PER_CLIENT: usize =
        realtime::engineio::DEFAULT_MAX_SESSIONS_PER_CLIENT;
    /// Relayed events per socket: 50/s, bursts of 100 (node has no limit; see
    /// `realtime::socketio::RelayRate`).
    pub const SIO_RELAY_PER_SECOND: u32 = realtime::socketio::DEFAULT_RELAY_PER_SECOND;
    pub const SIO_RELAY_BURST: u32 = realtime::socketio::DEFAULT_RELAY_BURST;
    /// nchan and most Comet servers answer an idle poll after about 30 s.
    pub const LONGPOLL_WAIT_MS: u64 = 30_000;
    /// Under the 60 s idle timeouts of common proxies.
    pub const SSE_HEARTBEAT_MS: u64 = 15_000;
    pub const SSE_RETRY_MS: u64 = 2_000;
    /// tungstenite's own limit (64 MiB) is an upload limit; chat lines and events are small.
    pub const WS_MAX_MESSAGE: usize = 64 * 1024;
    /// Socket.IO's heartbeat: a ping every 25 s, 20 s to answer.
    pub const WS_PING_INTERVAL_MS: u64 = 25_000;
    pub const WS_PING_TIMEOUT_MS: u64 = 20_000;
    pub const WS_QUEUE: usize = 256;
    /// The reference Socket.IO server's (engine.io 6.6 / socket.io 4.8) defaults, so existing
    /// clients see the timings they were tuned for.
    pub const SIO_PING_INTERVAL_MS: u64 = 25_000;
    pub const SIO_PING_TIMEOUT_MS: u64 = 20_000;
    pub const SIO_MAX_PAYLOAD: u64 = 1_000_000;
    pub const SIO_CONNECT_TIMEOUT_MS: u64 = 45_000;
    pub const SIO_RECOVERY_MS: u64 = 120_000;
    /// nginx's `gzip_min_length` is 20 bytes, where gzip's own 18 bytes of framing eat most
    /// of any gain; 256 (the h5bp nginx configuration's value) skips bodies that barely shrink
    /// and costs nothing worth saving: they fit in one packet either way.
    pub const COMPRESSION_MIN_LENGTH: u64 = 256;
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
    /// brotli first: it is smaller at the same cost, so it wins a tie.
    pub fn compression_algorithms() -> Vec<String> {
        vec!["br".to_string(), "gzip".to_string()]
    }
    /// nginx compresses only `text/html` by default, which every deployment extends; this is
    /// the usual extension (h5bp's list, trimmed of types that are compressed already, such as
    /// woff2 fonts and images other than SVG and icons).
    pub fn compression_types() -> Vec<String> {
        [
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
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    }
    pub fn index() -> Vec<String> {
        vec!["index.html".to_string()]
    }
    pub fn yes() -> bool {
        true
    }
}

#[derive(Debug, Clone, Deserialize)]
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
    /// Worker threads of the HTTPS service (pingora `threads`). Default: one per core.
    #[serde(default)]
    pub threads: Option<usize>,
    /// Seconds to let in-flight requests finish on SIGTERM.
    #[serde(default = "grace_default")]
    pub grace_period_s: u64,
}

fn grace_default() -> u64 {
    defaults::GRACE_PERIOD_S
}

#[derive(Debug, Clone, Deserialize)]
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

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tls {
    /// Certificate chains; the first is the default for unknown or absent SNI. None configured:
    /// a development certificate for localhost is generated into `state_dir`.
    #[serde(default)]
    pub certificates: Vec<Certificate>,
    #[serde(default)]
    pub state_dir: Option<PathBuf>,
    #[serde(default)]
    pub hsts: Option<Hsts>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Certificate {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// SNI names this chain answers for (exact, or `*.example.com`). Empty: default only.
    #[serde(default)]
    pub server_names: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Hsts {
    #[serde(default = "hsts_age")]
    pub max_age: u64,
    #[serde(default)]
    pub include_subdomains: bool,
}

fn hsts_age() -> u64 {
    defaults::HSTS_MAX_AGE
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Proxy {
    /// Peers whose forwarding headers (`Forwarded`, `X-Forwarded-*`, `X-Real-IP`, ... see
    /// `forwarding::FORWARDING`) are believed (a load balancer in front). Everyone else's are
    /// dropped or replaced, so a client cannot forge its address, scheme, port or URL to the
    /// app. Addresses or CIDR blocks.
    #[serde(default)]
    pub trusted_proxies: Vec<String>,
    /// Where buffered request and response bodies spill to disk (nginx
    /// `client_body_temp_path` / `proxy_temp_path`). Default: `tmp/` in `tls.state_dir`.
    /// Files there have no name (they disappear when closed, even after a crash).
    #[serde(default)]
    pub temp_dir: Option<PathBuf>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    #[serde(default = "l_header_bytes")]
    pub max_header_bytes: usize,
    #[serde(default = "l_body_bytes")]
    pub max_body_bytes: u64,
    /// Total time to receive a request's head (408 after), on every listener; a new connection
    /// that sends nothing is closed after it too.
    #[serde(default = "l_header_timeout")]
    pub header_timeout_ms: u64,
    #[serde(default = "l_keepalive_requests")]
    pub keepalive_requests: u32,
    /// Idle time allowed between requests on a client connection; 0 turns keep-alive off.
    #[serde(default = "l_keepalive_timeout")]
    pub keepalive_timeout_s: u64,
    /// Longest a write to a client may wait for the client to take bytes; the connection is
    /// closed after it.
    #[serde(default = "l_send_timeout")]
    pub send_timeout_ms: u64,
    /// A buffered request body is kept in memory up to this, then in a temporary file.
    #[serde(default = "l_body_buffer")]
    pub client_body_buffer_bytes: usize,
    /// The window a buffered request body's rate is measured over, and the grace period at
    /// its start (408 when the last window holds too few bytes).
    #[serde(default = "l_body_timeout")]
    pub client_body_timeout_ms: u64,
    /// Bytes per second a buffered request body must average over every window (0: at least
    /// one byte per window).
    #[serde(default = "l_body_rate")]
    pub client_body_min_rate: u64,
    /// A buffered response is kept in memory up to this, then in a temporary file.
    #[serde(default = "l_response_buffer")]
    pub response_buffer_bytes: usize,
    /// Most unsent response kept on disk per request; past it the app is read only as fast as
    /// the client reads.
    #[serde(default = "l_response_temp")]
    pub response_temp_file_bytes: u64,
    /// Streams one HTTP/2 connection may have open at once (more are refused with
    /// REFUSED_STREAM, which clients retry).
    #[serde(default = "l_h2_streams")]
    pub h2_max_concurrent_streams: u32,
}

fn l_header_bytes() -> usize {
    defaults::MAX_HEADER_BYTES
}
fn l_body_bytes() -> u64 {
    defaults::MAX_BODY_BYTES
}
fn l_header_timeout() -> u64 {
    defaults::HEADER_TIMEOUT_MS
}
fn l_keepalive_requests() -> u32 {
    defaults::KEEPALIVE_REQUESTS
}
fn l_keepalive_timeout() -> u64 {
    defaults::KEEPALIVE_TIMEOUT_S
}
fn l_send_timeout() -> u64 {
    defaults::SEND_TIMEOUT_MS
}
fn l_body_buffer() -> usize {
    defaults::CLIENT_BODY_BUFFER_BYTES
}
fn l_body_timeout() -> u64 {
    defaults::CLIENT_BODY_TIMEOUT_MS
}
fn l_body_rate() -> u64 {
    defaults::CLIENT_BODY_MIN_RATE
}
fn l_response_buffer() -> usize {
    defaults::RESPONSE_BUFFER_BYTES
}
fn l_response_temp() -> u64 {
    defaults::RESPONSE_TEMP_FILE_BYTES
}
fn l_h2_streams() -> u32 {
    defaults::H2_MAX_CONCURRENT_STREAMS
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_header_bytes: l_header_bytes(),
            max_body_bytes: l_body_bytes(),
            header_timeout_ms: l_header_timeout(),
            keepalive_requests: l_keepalive_requests(),
            keepalive_timeout_s: l_keepalive_timeout(),
            send_timeout_ms: l_send_timeout(),
            client_body_buffer_bytes: l_body_buffer(),
            client_body_timeout_ms: l_body_timeout(),
            client_body_min_rate: l_body_rate(),
            response_buffer_bytes: l_response_buffer(),
            response_temp_file_bytes: l_response_temp(),
            h2_max_concurrent_streams: l_h2_streams(),
        }
    }
}

/// nginx's `gzip` + `brotli` modules, with the settings most deployments give them.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Compression {
    #[serde(default = "defaults::yes")]
    pub enabled: bool,
    /// Codings offered (`br`, `gzip`); the order breaks ties between equal client weights.
    #[serde(default = "defaults::compression_algorithms")]
    pub algorithms: Vec<String>,
    #[serde(default = "c_gzip_level")]
    pub gzip_level: u32,
    #[serde(default = "c_brotli_level")]
    pub brotli_level: u32,
    /// Answers with a smaller `Content-Length` are sent as they are.
    #[serde(default = "c_min_length")]
    pub min_length: u64,
    /// Media types compressed (`type/subtype` or `type/*`); replaces the default list.
    #[serde(default = "defaults::compression_types")]
    pub types: Vec<String>,
}

fn c_gzip_level() -> u32 {
    defaults::GZIP_LEVEL
}
fn c_brotli_level() -> u32 {
    defaults::BROTLI_LEVEL
}
fn c_min_length() -> u64 {
    defaults::COMPRESSION_MIN_LENGTH
}

impl Default for Compression {
    fn default() -> Self {
        Compression {
            enabled: true,
            algorithms: defaults::compression_algorithms(),
            gzip_level: c_gzip_level(),
            brotli_level: c_brotli_level(),
            min_length: c_min_length(),
            types: defaults::compression_types(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Balance {
    #[default]
    RoundRobin,
    LeastConn,
    /// Consistent hashing on the client address: sticky sessions for apps that keep state in
    /// process memory.
    IpHash,
}

/// How the gateway talks to an upstream pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Protocol {
    /// HTTP/1.1 to `host:port` or Unix socket servers (Puma, Unicorn, Octane, ...).
    #[default]
    Http,
    /// FastCGI to php-fpm: `host:port` or `unix:/path/to/php-fpm.sock` servers.
    Fastcgi,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Upstream {
    /// `host:port`, or a Unix socket: `unix:/path/to/socket` (also Puma's `unix:///path`).
    pub servers: Vec<String>,
    #[serde(default)]
    pub protocol: Protocol,
    /// Where the PHP scripts are (required with `protocol: fastcgi`).
    #[serde(default)]
    pub fastcgi: Option<FastCgi>,
    #[serde(default)]
    pub balance: Balance,
    #[serde(default)]
    pub health_check: Option<HealthCheck>,
    #[serde(default = "u_connect")]
    pub connect_timeout_ms: u64,
    #[serde(default = "u_read")]
    pub read_timeout_ms: u64,
}

/// A directory the app hands files out of: it answers with `X-Accel-Redirect: <path>/<file>`
/// (or `X-Sendfile: <root>/<file>`) after checking permissions, and the gateway serves the file.
#[derive(Debug, Clone, Deserialize)]
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
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FastCgi {
    /// The document root as php-fpm sees it (`DOCUMENT_ROOT`, the start of `SCRIPT_FILENAME`).
    /// It must be readable here too: a script is only run when the file exists.
    pub root: PathBuf,
    /// Tried in a directory (`/admin/` runs `admin/index.php` if it exists).
    #[serde(default = "fcgi_index")]
    pub index: String,
    /// What runs when no file matches (Laravel's and Symfony's `/index.php`).
    #[serde(default = "fcgi_front")]
    pub front_controller: String,
}

fn fcgi_index() -> String {
    "index.php".to_string()
}
fn fcgi_front() -> String {
    "/index.php".to_string()
}

fn u_connect() -> u64 {
    defaults::CONNECT_TIMEOUT_MS
}
fn u_read() -> u64 {
    defaults::READ_TIMEOUT_MS
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthCheck {
    /// `GET` this path and expect 2xx/3xx; absent: a TCP connect is the check.
    #[serde(default)]
    pub path: Option<String>,
    #[serde(default = "h_interval")]
    pub interval_ms: u64,
    #[serde(default = "h_timeout")]
    pub timeout_ms: u64,
    #[serde(default = "h_rise")]
    pub rise: u32,
    #[serde(default = "h_fall")]
    pub fall: u32,
}

fn h_interval() -> u64 {
    defaults::HEALTH_INTERVAL_MS
}
fn h_timeout() -> u64 {
    defaults::HEALTH_TIMEOUT_MS
}
fn h_rise() -> u32 {
    defaults::HEALTH_RISE
}
fn h_fall() -> u32 {
    defaults::HEALTH_FALL
}

/// One routing rule. The first route whose `path` prefix (and `host`, if given) matches wins.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Route {
    pub path: String,
    #[serde(default)]
    pub host: Option<String>,
    /// Serve files from a directory first (nginx `try_files $uri $uri/ @upstream`).
    #[serde(default, rename = "static")]
    pub static_files: Option<StaticFiles>,
    /// Forward to this upstream pool (after static files, if both are set).
    #[serde(default)]
    pub upstream: Option<String>,
    /// Hand the request to an in-process realtime service.
    #[serde(default)]
    pub realtime: Option<RealtimeKind>,
    /// Tunnel WebSocket upgrades on this route to the upstream (Action Cable, Laravel Reverb).
    #[serde(default = "defaults::yes")]
    pub websocket: bool,
    /// `false` turns on-the-fly compression off for this route (an app that compresses
    /// itself, or streams that must not wait in an encoder). Default: the global setting.
    #[serde(default)]
    pub compression: Option<bool>,
    /// Read the whole request body before the app sees the request (nginx
    /// `proxy_request_buffering`), so a slow upload holds no app worker: Puma, Unicorn and
    /// php-fpm have a few each. Off streams the body to the app as it arrives. Default: on
    /// (see [`Route::request_buffering`]).
    #[serde(default, rename = "request_buffering")]
    pub request_buffering_set: Option<bool>,
    /// Read the app's answer as fast as it comes and feed the client from the gateway (nginx
    /// `proxy_buffering`), so a slow reader holds no app worker. Never for
    /// `text/event-stream` or when the app sends `X-Accel-Buffering: no`. Off by default: it
    /// costs the gateway memory and disk per slow reader, and most answers fit in the socket
    /// buffers anyway; turn it on for routes with large answers. Needs `request_buffering`.
    #[serde(default)]
    pub response_buffering: bool,
}

impl Route {
    /// On unless turned off: every app route benefits, and the realtime services read their
    /// own bodies (a WebSocket upgrade has none to buffer).
    pub fn request_buffering(&self) -> bool {
        self.request_buffering_set.unwrap_or(true)
    }
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
}

#[derive(Debug, Clone, Default, Deserialize)]
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
}

/// Socket.IO: Engine.IO timings (node's defaults), origins, recovery, and what each namespace
/// does without any app code.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SocketIoSettings {
    #[serde(default = "sio_ping_interval")]
    pub ping_interval_ms: u64,
    #[serde(default = "sio_ping_timeout")]
    pub ping_timeout_ms: u64,
    /// `maxHttpBufferSize`: the largest message or polling POST (413 above).
    #[serde(default = "sio_max_payload")]
    pub max_payload_bytes: u64,
    /// A connection that joins no namespace within this is closed.
    #[serde(default = "sio_connect_timeout")]
    pub connect_timeout_ms: u64,
    /// Engine.IO sessions at once, all clients together (503 above; 0: no cap).
    #[serde(default = "sio_max_sessions")]
    pub max_sessions: usize,
    /// Engine.IO sessions at once per client address (IPv6: per /64; 429 above; 0: no cap).
    #[serde(default = "sio_max_sessions_per_client")]
    pub max_sessions_per_client: usize,
    /// `Origin`s accepted on the handshake (403 otherwise) and answered with CORS headers.
    /// Empty: any origin is accepted and no CORS headers are sent (same-origin pages only).
    #[serde(default)]
    pub allowed_origins: Vec<String>,
    /// Connection state recovery: a client that lost its transport for less than this gets
    /// its id, rooms and missed events back. Absent: off.
    #[serde(default)]
    pub recovery: Option<RecoverySettings>,
    /// Serve `socket.io.js` and friends from this folder (a socket.io-client `dist/`) instead
    /// of the copy built into the binary. Absent: the built-in one.
    #[serde(default)]
    pub client_dir: Option<PathBuf>,
    /// Namespaces and their built-in behaviour; a client connecting to any other gets
    /// `Invalid namespace`.
    #[serde(default = "sio_namespaces")]
    pub namespaces: BTreeMap<String, NamespaceSettings>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecoverySettings {
    #[serde(default = "sio_recovery")]
    pub max_disconnection_ms: u64,
}

#[derive(Debug, Clone, Default, Deserialize)]
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
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RelayRateSettings {
    #[serde(default = "sio_relay_per_second")]
    pub per_second: u32,
    #[serde(default = "sio_relay_burst")]
    pub burst: u32,
}

impl Default for RelayRateSettings {
    fn default() -> Self {
        RelayRateSettings {
            per_second: sio_relay_per_second(),
            burst: sio_relay_burst(),
        }
    }
}

fn sio_relay_per_second() -> u32 {
    defaults::SIO_RELAY_PER_SECOND
}
fn sio_relay_burst() -> u32 {
    defaults::SIO_RELAY_BURST
}
fn sio_max_sessions() -> usize {
    defaults::SIO_MAX_SESSIONS
}
fn sio_max_sessions_per_client() -> usize {
    defaults::SIO_MAX_SESSIONS_PER_CLIENT
}

fn sio_ping_interval() -> u64 {
    defaults::SIO_PING_INTERVAL_MS
}
fn sio_ping_timeout() -> u64 {
    defaults::SIO_PING_TIMEOUT_MS
}
fn sio_max_payload() -> u64 {
    defaults::SIO_MAX_PAYLOAD
}
fn sio_connect_timeout() -> u64 {
    defaults::SIO_CONNECT_TIMEOUT_MS
}
fn sio_recovery() -> u64 {
    defaults::SIO_RECOVERY_MS
}
fn sio_namespaces() -> BTreeMap<String, NamespaceSettings> {
    BTreeMap::from([("/".to_string(), NamespaceSettings::default())])
}

impl Default for SocketIoSettings {
    fn default() -> Self {
        SocketIoSettings {
            ping_interval_ms: sio_ping_interval(),
            ping_timeout_ms: sio_ping_timeout(),
            max_payload_bytes: sio_max_payload(),
            connect_timeout_ms: sio_connect_timeout(),
            max_sessions: sio_max_sessions(),
            max_sessions_per_client: sio_max_sessions_per_client(),
            allowed_origins: Vec::new(),
            recovery: None,
            client_dir: None,
            namespaces: sio_namespaces(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WsSettings {
    /// Subprotocols offered: `beej-chat-protocol`, `pubsub.v1`.
    #[serde(default = "ws_protocols")]
    pub protocols: Vec<String>,
    /// A client that asks for no subprotocol joins the endpoint's broadcast room.
    #[serde(default = "defaults::yes")]
    pub allow_plain: bool,
    /// `Origin` values accepted (`*` for any); empty means same-origin only. Browsers send
    /// cookies with cross-site WebSocket requests, so this is the CSRF check of WebSockets.
    #[serde(default)]
    pub allowed_origins: Vec<String>,
    #[serde(default = "ws_max_message")]
    pub max_message_bytes: usize,
    #[serde(default = "ws_ping_interval")]
    pub ping_interval_ms: u64,
    #[serde(default = "ws_ping_timeout")]
    pub ping_timeout_ms: u64,
    /// Messages waiting for one client before it is closed as a slow reader (1013).
    #[serde(default = "ws_queue")]
    pub queue: usize,
    /// Topics one pubsub.v1 connection may be subscribed to at once.
    #[serde(default = "ws_max_subscriptions")]
    pub max_subscriptions: usize,
}

fn ws_max_subscriptions() -> usize {
    defaults::WS_MAX_SUBSCRIPTIONS
}

fn ws_protocols() -> Vec<String> {
    vec!["beej-chat-protocol".into(), "pubsub.v1".into()]
}
fn ws_max_message() -> usize {
    defaults::WS_MAX_MESSAGE
}
fn ws_ping_interval() -> u64 {
    defaults::WS_PING_INTERVAL_MS
}
fn ws_ping_timeout() -> u64 {
    defaults::WS_PING_TIMEOUT_MS
}
fn ws_queue() -> usize {
    defaults::WS_QUEUE
}

impl Default for WsSettings {
    fn default() -> Self {
        WsSettings {
            protocols: ws_protocols(),
            allow_plain: true,
            allowed_origins: Vec::new(),
            max_message_bytes: ws_max_message(),
            ping_interval_ms: ws_ping_interval(),
            ping_timeout_ms: ws_ping_timeout(),
            queue: ws_queue(),
            max_subscriptions: ws_max_subscriptions(),
        }
    }
}

/// The hub every realtime transport shares.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HubSettings {
    /// Messages kept per topic so reconnecting clients can resume without a gap.
    #[serde(default = "hub_history")]
    pub history: usize,
    /// Messages one subscriber may have waiting; a client that falls further behind is
    /// disconnected (and counted) instead of growing memory.
    #[serde(default = "hub_queue")]
    pub subscriber_queue: usize,
    /// Topics that may exist at once.
    #[serde(default = "hub_max_topics")]
    pub max_topics: usize,
    /// Of those, topics outside the reserved `sio:`/`ws:` namespaces (what clients and the app
    /// name); the rest is kept for Socket.IO's own rooms. Absent: half of `max_topics`.
    #[serde(default)]
    pub max_open_topics: Option<usize>,
    /// Longest topic name a client or the app may use, in bytes.
    #[serde(default = "hub_max_topic_length")]
    pub max_topic_length: usize,
    /// New topics one client address (IPv6: its /64) may create per minute, the burst too
    /// (429 / an error frame above; 0: no limit).
    #[serde(default = "hub_new_topics")]
    pub new_topics_per_client_per_minute: u32,
}

fn hub_max_topics() -> usize {
    defaults::HUB_MAX_TOPICS
}
fn hub_max_topic_length() -> usize {
    defaults::HUB_MAX_TOPIC_LENGTH
}
fn hub_new_topics() -> u32 {
    defaults::HUB_NEW_TOPICS_PER_CLIENT_PER_MINUTE
}

fn hub_history() -> usize {
    defaults::HUB_HISTORY
}
fn hub_queue() -> usize {
    defaults::HUB_SUBSCRIBER_QUEUE
}

impl HubSettings {
    /// `max_open_topics`, or half of `max_topics` when absent.
    pub fn open_topics(&self) -> usize {
        self.max_open_topics.unwrap_or(self.max_topics / 2)
    }
}

impl Default for HubSettings {
    fn default() -> Self {
        HubSettings {
            history: hub_history(),
            subscriber_queue: hub_queue(),
            max_topics: hub_max_topics(),
            max_open_topics: None,
            max_topic_length: hub_max_topic_length(),
            new_topics_per_client_per_minute: hub_new_topics(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LongPollSettings {
    /// How long a poll is held before a 204.
    #[serde(default = "lp_wait")]
    pub wait_ms: u64,
    /// Largest body `POST …/p` accepts (413 above).
    #[serde(default = "lp_max_message")]
    pub max_message_bytes: usize,
}

fn lp_max_message() -> usize {
    defaults::LONGPOLL_MAX_MESSAGE
}

fn lp_wait() -> u64 {
    defaults::LONGPOLL_WAIT_MS
}

impl Default for LongPollSettings {
    fn default() -> Self {
        LongPollSettings {
            wait_ms: lp_wait(),
            max_message_bytes: lp_max_message(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SseSettings {
    /// Interval of the comment lines that keep idle streams alive through proxies.
    #[serde(default = "sse_heartbeat")]
    pub heartbeat_ms: u64,
    /// The `retry:` hint sent to browsers.
    #[serde(default = "sse_retry")]
    pub retry_ms: u64,
}

fn sse_heartbeat() -> u64 {
    defaults::SSE_HEARTBEAT_MS
}
fn sse_retry() -> u64 {
    defaults::SSE_RETRY_MS
}

impl Default for SseSettings {
    fn default() -> Self {
        SseSettings {
            heartbeat_ms: sse_heartbeat(),
            retry_ms: sse_retry(),
        }
    }
}

/// The app's publish API on the admin listener (`POST /publish`, `GET /topics/<topic>`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PublishSettings {
    /// Required as `Authorization: Bearer <token>` when set; mandatory when the admin listener
    /// is not on a loopback address.
    #[serde(default)]
    pub token: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StaticFiles {
    pub root: PathBuf,
    #[serde(default = "defaults::index")]
    pub index: Vec<String>,
    #[serde(default)]
    pub cache_control: Option<String>,
    /// Serve `file.br` / `file.gz` next to `file` when the client accepts them.
    #[serde(default = "defaults::yes")]
    pub precompressed: bool,
}

/// One problem in a configuration file, with where it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub path: String,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Syntax { path: PathBuf, message: String },
    #[error("{} problem(s) in {}:\n{}", .problems.len(), .path.display(), list(.problems))]
    Invalid {
        path: PathBuf,
        problems: Vec<Problem>,
    },
}

fn list(problems: &[Problem]) -> String {
    problems
        .iter()
        .map(|p| format!("  {p}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The longest path a Unix socket address holds (`sun_path` is 108 bytes with the final NUL).
const MAX_UNIX_PATH: usize = 107;

/// The path of a `unix:` server: `unix:/run/app.sock`, or the URL form Puma prints,
/// `unix:///run/app.sock` (where `unix://tmp/app.sock` is relative, as Puma reads it).
/// `None` for a TCP address.
pub fn unix_socket_path(server: &str) -> Option<&str> {
    let rest = server.strip_prefix("unix:")?;
    Some(rest.strip_prefix("//").unwrap_or(rest))
}

/// A parsed CIDR block (`10.0.0.0/8`, `::1/128`, or a bare address).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

impl Cidr {
    pub fn parse(s: &str) -> Option<Cidr> {
        let (a, p) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = a.trim().parse().ok()?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match p {
            Some(p) => p.trim().parse::<u8>().ok().filter(|p| *p <= max)?,
            None => max,
        };
        Some(Cidr { addr, prefix })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
            v4 => v4,
        };
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

impl Config {
    /// Read, parse and validate a file. Relative paths in it are resolved against its folder,
    /// so `gateway run --config /etc/gw/gateway.yaml` works from any working directory.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let mut config = Config::parse(&text).map_err(|message| ConfigError::Syntax {
            path: path.to_path_buf(),
            message,
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        config.resolve_paths(base);
        let problems = config.validate();
        if problems.is_empty() {
            Ok(config)
        } else {
            Err(ConfigError::Invalid {
                path: path.to_path_buf(),
                problems,
            })
        }
    }

    /// Parse only: serde_yaml_ng's message already names the field path and line.
    pub fn parse(text: &str) -> Result<Config, String> {
        serde_yaml_ng::from_str(text).map_err(|e| e.to_string())
    }

    fn resolve_paths(&mut self, base: &Path) {
        let fix = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        for c in &mut self.tls.certificates {
            fix(&mut c.cert);
            fix(&mut c.key);
        }
        if let Some(d) = &mut self.tls.state_dir {
            fix(d);
        }
        if let Some(d) = &mut self.proxy.temp_dir {
            fix(d);
        }
        if let Some(d) = &mut self.realtime.socketio.client_dir {
            fix(d);
        }
        for r in &mut self.routes {
            if let Some(s) = &mut r.static_files {
                fix(&mut s.root);
            }
        }
        for u in self.upstreams.values_mut() {
            if let Some(f) = &mut u.fastcgi {
                fix(&mut f.root);
            }
            // Socket paths become absolute (the server connects to them from any directory),
            // and Puma's `unix:///path` becomes `unix:/path`.
            for s in &mut u.servers {
                if let Some(p) = unix_socket_path(s) {
                    let mut p = PathBuf::from(p);
                    if p.is_relative() && !p.as_os_str().is_empty() {
                        p = base.join(p);
                        if p.is_relative() {
                            if let Ok(cwd) = std::env::current_dir() {
                                p = cwd.join(p);
                            }
                        }
                    }
                    *s = format!("unix:{}", p.display());
                }
            }
        }
        for l in &mut self.internal_locations {
            fix(&mut l.root);
        }
    }

    pub fn state_dir(&self) -> PathBuf {
        self.tls
            .state_dir
            .clone()
            .unwrap_or_else(|| PathBuf::from(defaults::STATE_DIR))
    }

    /// Where buffered bodies spill to disk.
    pub fn temp_dir(&self) -> PathBuf {
        self.proxy
            .temp_dir
            .clone()
            .unwrap_or_else(|| self.state_dir().join(defaults::TEMP_SUBDIR))
    }

    pub fn trusted_proxies(&self) -> Vec<Cidr> {
        self.proxy
            .trusted_proxies
            .iter()
            .filter_map(|s| Cidr::parse(s))
            .collect()
    }

    /// Every problem in the file, each with its location. Empty means the file is good.
    pub fn validate(&self) -> Vec<Problem> {
        let mut out = Vec::new();
        let mut bad = |path: String, message: String| out.push(Problem { path, message });

        let l = &self.listen;
        if l.https.is_none() && l.http.is_none() {
            bad(
                "listen".into(),
                "at least one of `https` or `http` is required".into(),
            );
        }
        let mut seen: Vec<(SocketAddr, &str)> = Vec::new();
        for (name, v) in [("https", &l.https), ("http", &l.http), ("admin", &l.admin)] {
            let Some(v) = v else { continue };
            match v.parse::<SocketAddr>() {
                Ok(a) => {
                    if let Some((_, other)) = seen.iter().find(|(b, _)| *b == a) {
                        bad(
                            format!("listen.{name}"),
                            format!("{a} is already used by listen.{other}"),
                        );
                    }
                    seen.push((a, name));
                }
                Err(_) => bad(
                    format!("listen.{name}"),
                    format!("{v:?} is not an address like 127.0.0.1:8443"),
                ),
            }
        }

        for (i, c) in self.tls.certificates.iter().enumerate() {
            let at = format!("tls.certificates[{i}]");
            if let Err(e) = crate::tls::load_pair(&c.cert, &c.key) {
                bad(at.clone(), e.to_string());
            }
            for (j, n) in c.server_names.iter().enumerate() {
                if !is_server_name(n) {
                    bad(
                        format!("{at}.server_names[{j}]"),
                        format!("{n:?} is not a host name"),
                    );
                }
            }
        }
        if l.https.is_none() && !self.tls.certificates.is_empty() {
            bad(
                "tls.certificates".into(),
                "certificates are configured but listen.https is not set".into(),
            );
        }
        for (i, p) in self.proxy.trusted_proxies.iter().enumerate() {
            if Cidr::parse(p).is_none() {
                bad(
                    format!("proxy.trusted_proxies[{i}]"),
                    format!("{p:?} is not an address or CIDR block"),
                );
            }
        }

        if let Some(admin) = l.admin.as_ref().and_then(|a| a.parse::<SocketAddr>().ok()) {
            if !admin.ip().is_loopback() && self.realtime.publish.token.is_none() {
                bad(
                    "realtime.publish.token".into(),
                    format!("required when listen.admin ({admin}) is not a loopback address: the publish API would be open to anyone"),
                );
            }
        }
        if self.realtime.hub.history == 0 {
            bad("realtime.hub.history".into(), "must be at least 1".into());
        }
        if self.realtime.hub.subscriber_queue == 0 {
            bad(
                "realtime.hub.subscriber_queue".into(),
                "must be at least 1".into(),
            );
        }
        let hub = &self.realtime.hub;
        if hub.max_topics < 2 {
            bad(
                "realtime.hub.max_topics".into(),
                "must be at least 2".into(),
            );
        }
        if hub
            .max_open_topics
            .is_some_and(|open| open == 0 || open >= hub.max_topics)
        {
            bad(
                "realtime.hub.max_open_topics".into(),
                format!(
                    "must be at least 1 and less than realtime.hub.max_topics ({}): the rest is kept for Socket.IO's own rooms",
                    hub.max_topics
                ),
            );
        }
        if hub.max_topic_length < 16 {
            bad(
                "realtime.hub.max_topic_length".into(),
                "must be at least 16".into(),
            );
        }
        if self.realtime.longpoll.max_message_bytes < 16 {
            bad(
                "realtime.longpoll.max_message_bytes".into(),
                "must be at least 16".into(),
            );
        }
        if self.realtime.longpoll.wait_ms == 0 {
            bad(
                "realtime.longpoll.wait_ms".into(),
                "must be greater than 0".into(),
            );
        }
        if self.realtime.sse.heartbeat_ms < 1000 {
            bad(
                "realtime.sse.heartbeat_ms".into(),
                "must be at least 1000".into(),
            );
        }

        for (path, ws) in &self.realtime.websocket {
            let at = format!("realtime.websocket.{path}");
            let mounted = self
                .routes
                .iter()
                .any(|r| r.path == *path && r.realtime == Some(RealtimeKind::Websocket));
            if !mounted {
                bad(
                    at.clone(),
                    format!(
                        "no route with path {path:?} and `realtime: websocket` uses these settings"
                    ),
                );
            }
            for (i, p) in ws.protocols.iter().enumerate() {
                if p != "beej-chat-protocol" && p != "pubsub.v1" {
                    bad(
                        format!("{at}.protocols[{i}]"),
                        format!("unknown subprotocol {p:?} (known: beej-chat-protocol, pubsub.v1)"),
                    );
                }
            }
            if ws.max_message_bytes < 16 {
                bad(
                    format!("{at}.max_message_bytes"),
                    "must be at least 16".into(),
                );
            }
            if ws.queue == 0 {
                bad(format!("{at}.queue"), "must be at least 1".into());
            }
            if ws.max_subscriptions == 0 {
                bad(
                    format!("{at}.max_subscriptions"),
                    "must be at least 1".into(),
                );
            }
            if ws.ping_interval_ms < 100 || ws.ping_timeout_ms < 100 {
                bad(
                    at.clone(),
                    "ping_interval_ms and ping_timeout_ms must be at least 100".into(),
                );
            }
        }

        let sio = &self.realtime.socketio;
        for (name, ns) in &sio.namespaces {
            if !name.starts_with('/') {
                bad(
                    format!("realtime.socketio.namespaces.{name}"),
                    "a namespace starts with /".into(),
                );
            }
            if ns.relay_rate.per_second == 0 || ns.relay_rate.burst == 0 {
                bad(
                    format!("realtime.socketio.namespaces.{name}.relay_rate"),
                    "per_second and burst must be at least 1".into(),
                );
            }
        }
        if sio.ping_interval_ms < 100 || sio.ping_timeout_ms < 100 {
            bad(
                "realtime.socketio".into(),
                "ping_interval_ms and ping_timeout_ms must be at least 100".into(),
            );
        }
        if sio.max_payload_bytes < 1024 {
            bad(
                "realtime.socketio.max_payload_bytes".into(),
                "must be at least 1024".into(),
            );
        }

        let comp = &self.compression;
        if comp.enabled && comp.algorithms.is_empty() {
            bad(
                "compression.algorithms".into(),
                "needs at least one of br, gzip (or set `enabled: false`)".into(),
            );
        }
        for (i, a) in comp.algorithms.iter().enumerate() {
            if crate::compression::Coding::from_token(a).is_none() {
                bad(
                    format!("compression.algorithms[{i}]"),
                    format!("unknown algorithm {a:?} (known: br, gzip)"),
                );
            } else if comp.algorithms[..i].contains(a) {
                bad(
                    format!("compression.algorithms[{i}]"),
                    format!("{a:?} is listed twice"),
                );
            }
        }
        if !(1..=9).contains(&comp.gzip_level) {
            bad(
                "compression.gzip_level".into(),
                format!("{} is not a gzip level (1-9)", comp.gzip_level),
            );
        }
        if !(1..=11).contains(&comp.brotli_level) {
            bad(
                "compression.brotli_level".into(),
                format!("{} is not a brotli level (1-11)", comp.brotli_level),
            );
        }
        if comp.enabled && comp.types.is_empty() {
            bad(
                "compression.types".into(),
                "needs at least one media type (or set `enabled: false`)".into(),
            );
        }
        for (i, t) in comp.types.iter().enumerate() {
            if let Err(e) = crate::compression::TypePattern::parse(t) {
                bad(format!("compression.types[{i}]"), e);
            }
        }

        let lim = &self.limits;
        if lim.max_header_bytes < 1024 {
            bad(
                "limits.max_header_bytes".into(),
                "must be at least 1024".into(),
            );
        }
        if lim.header_timeout_ms == 0 {
            bad(
                "limits.header_timeout_ms".into(),
                "must be greater than 0".into(),
            );
        }
        if lim.send_timeout_ms == 0 {
            bad(
                "limits.send_timeout_ms".into(),
                "must be greater than 0".into(),
            );
        }
        if lim.client_body_buffer_bytes < 1024 {
            bad(
                "limits.client_body_buffer_bytes".into(),
                "must be at least 1024".into(),
            );
        }
        if lim.client_body_timeout_ms == 0 {
            bad(
                "limits.client_body_timeout_ms".into(),
                "must be greater than 0".into(),
            );
        }
        if lim.response_buffer_bytes < 1024 {
            bad(
                "limits.response_buffer_bytes".into(),
                "must be at least 1024".into(),
            );
        }
        if lim.keepalive_requests == 0 {
            bad(
                "limits.keepalive_requests".into(),
                "must be at least 1".into(),
            );
        }
        if lim.h2_max_concurrent_streams == 0 {
            bad(
                "limits.h2_max_concurrent_streams".into(),
                "must be at least 1".into(),
            );
        }

        for (name, u) in &self.upstreams {
            let at = format!("upstreams.{name}");
            if u.servers.is_empty() {
                bad(format!("{at}.servers"), "needs at least one server".into());
            }
            let fastcgi = u.protocol == Protocol::Fastcgi;
            let example = if fastcgi {
                "unix:/run/php/php-fpm.sock"
            } else {
                "unix:/run/app/puma.sock"
            };
            for (i, s) in u.servers.iter().enumerate() {
                match unix_socket_path(s) {
                    Some(p) if !p.starts_with('/') => bad(
                        format!("{at}.servers[{i}]"),
                        format!("{s:?}: a Unix socket needs a path, like {example}"),
                    ),
                    Some(p) if p.len() > MAX_UNIX_PATH => bad(
                        format!("{at}.servers[{i}]"),
                        format!(
                            "{s:?}: the path is {} bytes long; a Unix socket address holds at most {MAX_UNIX_PATH}",
                            p.len()
                        ),
                    ),
                    Some(_) => {}
                    None if s.parse::<SocketAddr>().is_err() => bad(
                        format!("{at}.servers[{i}]"),
                        if fastcgi {
                            format!("{s:?} is not an address like 127.0.0.1:9000 or {example}")
                        } else {
                            format!("{s:?} is not an address like 127.0.0.1:3000 or {example}")
                        },
                    ),
                    None => {}
                }
            }
            match (&u.fastcgi, fastcgi) {
                (None, true) => bad(
                    format!("{at}.fastcgi"),
                    "required with `protocol: fastcgi`: {root: /path/to/app/public}".into(),
                ),
                (Some(_), false) => bad(
                    format!("{at}.fastcgi"),
                    "only used with `protocol: fastcgi`".into(),
                ),
                (Some(f), true) => {
                    if !f.root.is_dir() {
                        bad(
                            format!("{at}.fastcgi.root"),
                            format!("{} is not a directory", f.root.display()),
                        );
                    }
                    let plain = !f.index.is_empty()
                        && !f.index.contains(['/', '\\', '\0'])
                        && f.index.ends_with(".php");
                    if !plain {
                        bad(
                            format!("{at}.fastcgi.index"),
                            format!("{:?} must be a plain file name ending in .php", f.index),
                        );
                    }
                    let fc = &f.front_controller;
                    if !fc.starts_with('/') || !fc.ends_with(".php") || fc.contains("/.") {
                        bad(
                            format!("{at}.fastcgi.front_controller"),
                            format!("{fc:?} must be a path like /index.php"),
                        );
                    }
                }
                (None, false) => {}
            }
            if fastcgi {
                if let Some(p) = u.health_check.as_ref().and_then(|h| h.path.as_ref()) {
                    bad(
                        format!("{at}.health_check.path"),
                        format!("{p:?}: a FastCGI pool is checked by connecting; remove `path`"),
                    );
                }
            }
            if u.connect_timeout_ms == 0 {
                bad(
                    format!("{at}.connect_timeout_ms"),
                    "must be greater than 0".into(),
                );
            }
            if u.read_timeout_ms == 0 {
                bad(
                    format!("{at}.read_timeout_ms"),
                    "must be greater than 0".into(),
                );
            }
            if let Some(h) = &u.health_check {
                let at = format!("{at}.health_check");
                if let Some(p) = &h.path {
                    if !p.starts_with('/') {
                        bad(format!("{at}.path"), format!("{p:?} must start with /"));
                    }
                }
                if h.interval_ms < 100 {
                    bad(format!("{at}.interval_ms"), "must be at least 100".into());
                }
                if h.timeout_ms == 0 {
                    bad(format!("{at}.timeout_ms"), "must be greater than 0".into());
                }
                if h.rise == 0 {
                    bad(format!("{at}.rise"), "must be at least 1".into());
                }
                if h.fall == 0 {
                    bad(format!("{at}.fall"), "must be at least 1".into());
                }
            }
        }

        // Where files are public: an internal root inside one of these would be too.
        let public: Vec<(String, PathBuf)> = self
            .routes
            .iter()
            .enumerate()
            .filter_map(|(i, r)| {
                let s = r.static_files.as_ref()?;
                Some((
                    format!("routes[{i}].static.root"),
                    s.root.canonicalize().ok()?,
                ))
            })
            .chain(self.upstreams.iter().filter_map(|(name, u)| {
                let f = u.fastcgi.as_ref()?;
                Some((
                    format!("upstreams.{name}.fastcgi.root"),
                    f.root.canonicalize().ok()?,
                ))
            }))
            .collect();
        for (i, l) in self.internal_locations.iter().enumerate() {
            let at = format!("internal_locations[{i}]");
            let p = &l.path;
            let plain = !p.contains(['%', '?', '#', '\\', '\0', ' '])
                && !p.contains("//")
                && !p.split('/').any(|s| s == "." || s == "..");
            if !p.starts_with('/') || !p.ends_with('/') || p == "/" {
                bad(
                    format!("{at}.path"),
                    format!("{p:?} must be a prefix like /protected/ (starting and ending with /, and not / alone)"),
                );
            } else if !plain {
                bad(
                    format!("{at}.path"),
                    format!("{p:?} must be a plain path: no . or .. segments, //, %, ?, #, spaces or backslashes"),
                );
            }
            for (j, other) in self.internal_locations[..i].iter().enumerate() {
                if p.starts_with(&other.path) || other.path.starts_with(p.as_str()) {
                    bad(
                        format!("{at}.path"),
                        format!(
                            "{p:?} overlaps internal_locations[{j}].path {:?}",
                            other.path
                        ),
                    );
                }
            }
            match l.root.canonicalize() {
                Ok(root) if root.is_dir() => {
                    for (name, dir) in &public {
                        if root.starts_with(dir) {
                            bad(
                                format!("{at}.root"),
                                format!(
                                    "{} is inside {name} ({}), where its files are public; move it out",
                                    l.root.display(),
                                    dir.display()
                                ),
                            );
                        }
                    }
                }
                _ => bad(
                    format!("{at}.root"),
                    format!("{} is not a directory", l.root.display()),
                ),
            }
            for (k, r) in self.routes.iter().enumerate() {
                let under = r.path.starts_with(p.as_str()) || r.path == p.trim_end_matches('/');
                if under && p.len() > 1 {
                    bad(
                        format!("routes[{k}].path"),
                        format!(
                            "{:?} is inside internal_locations[{i}].path {p:?}, which requests from outside never reach",
                            r.path
                        ),
                    );
                }
            }
        }

        if self.routes.is_empty() {
            bad("routes".into(), "at least one route is required".into());
        }
        for (i, r) in self.routes.iter().enumerate() {
            let at = format!("routes[{i}]");
            if !r.path.starts_with('/') {
                bad(
                    format!("{at}.path"),
                    format!("{:?} must start with /", r.path),
                );
            }
            let targets = [
                r.upstream.is_some() || r.static_files.is_some(),
                r.realtime.is_some(),
            ];
            match targets.iter().filter(|t| **t).count() {
                0 => bad(
                    at.clone(),
                    "needs a target: `upstream`, `static` or `realtime`".into(),
                ),
                1 => {}
                _ => bad(
                    at.clone(),
                    "`realtime` cannot be combined with `upstream` or `static`".into(),
                ),
            }
            if let Some(u) = &r.upstream {
                if !self.upstreams.contains_key(u) {
                    let known: Vec<_> = self.upstreams.keys().map(String::as_str).collect();
                    bad(
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
            }
            let behind = r.upstream.as_ref().and_then(|u| self.upstreams.get(u));
            if let (Some(s), Some(u)) = (&r.static_files, behind) {
                if u.protocol == Protocol::Fastcgi {
                    for (j, name) in s.index.iter().enumerate() {
                        if name.to_ascii_lowercase().ends_with(".php") {
                            bad(
                                format!("{at}.static.index[{j}]"),
                                format!("{name:?} would be served as source code: PHP index files belong in upstreams.{}.fastcgi.index", r.upstream.as_deref().unwrap_or("")),
                            );
                        }
                    }
                }
            }
            if r.realtime.is_some() && r.compression.is_some() {
                bad(
                    format!("{at}.compression"),
                    "realtime answers are never compressed; remove it".into(),
                );
            }
            if r.response_buffering && !r.request_buffering() {
                bad(
                    format!("{at}.response_buffering"),
                    "needs `request_buffering: true` (an answer is only buffered for a request the gateway holds whole)".into(),
                );
            }
            if r.realtime.is_some() && (r.response_buffering || r.request_buffering_set.is_some()) {
                bad(
                    at.clone(),
                    "`request_buffering` and `response_buffering` only apply to `upstream` routes"
                        .into(),
                );
            }
            if let Some(s) = &r.static_files {
                if !s.root.is_dir() {
                    bad(
                        format!("{at}.static.root"),
                        format!("{} is not a directory", s.root.display()),
                    );
                }
            }
        }
        out
    }
}

/// A certificate's server name: a DNS name (letters, digits, `-`, `_`; IDNs in their `xn--`
/// form, as SNI carries them), optionally a wildcard as the whole first label (`*.example.com`),
/// as nginx's `server_name` and rustls' SNI matching take them.
fn is_server_name(name: &str) -> bool {
    let rest = name.strip_prefix("*.").unwrap_or(name);
    !rest.is_empty()
        && name.len() <= 253
        && rest.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problems(yaml: &str) -> Vec<String> {
        let c = Config::parse(yaml).expect("parses");
        c.validate().iter().map(|p| p.to_string()).collect()
    }

    #[test]
    fn h2_max_concurrent_streams_defaults_to_32_and_zero_is_refused() {
        let c = Config::parse(
            "listen: {http: 127.0.0.1:8080}\nupstreams: {app: {servers: [127.0.0.1:3000]}}\nroutes: [{path: /, upstream: app}]\n",
        )
        .expect("parses");
        assert_eq!(c.limits.h2_max_concurrent_streams, 32);
        let p = problems(
            "listen: {http: 127.0.0.1:8080}\nlimits: {h2_max_concurrent_streams: 0}\nupstreams: {app: {servers: [127.0.0.1:3000]}}\nroutes: [{path: /, upstream: app}]\n",
        );
        assert_eq!(p, ["limits.h2_max_concurrent_streams: must be at least 1"]);
    }

    #[test]
    fn minimal_config_is_valid() {
        let p = problems(
            "listen: {http: 127.0.0.1:8080}\nupstreams: {app: {servers: [127.0.0.1:3000]}}\nroutes: [{path: /, upstream: app}]\n",
        );
        assert!(p.is_empty(), "{p:?}");
    }

    #[test]
    fn realtime_abuse_limits_have_defaults_and_are_checked_where_they_are() {
        let c = Config::parse(
            "listen: {http: 127.0.0.1:8080}\nroutes: [{path: /ws, realtime: websocket}]\n",
        )
        .expect("parses");
        assert_eq!(c.realtime.hub.max_topics, 100_000);
        assert_eq!(c.realtime.hub.open_topics(), 50_000);
        assert_eq!(c.realtime.hub.max_topic_length, 255);
        assert_eq!(c.realtime.hub.new_topics_per_client_per_minute, 600);
        assert_eq!(c.realtime.longpoll.max_message_bytes, 65_536);
        assert_eq!(c.realtime.socketio.max_sessions, 50_000);
        assert_eq!(c.realtime.socketio.max_sessions_per_client, 256);
        let ns = &c.realtime.socketio.namespaces["/"];
        assert_eq!((ns.relay_rate.per_second, ns.relay_rate.burst), (50, 100));
        let p = problems(
            r#"
listen: {http: 127.0.0.1:8080}
realtime:
  hub: {max_topics: 1000, max_open_topics: 1000, max_topic_length: 3}
  longpoll: {max_message_bytes: 1}
  websocket: {/ws: {max_subscriptions: 0}}
  socketio: {namespaces: {"/": {relay: true, relay_rate: {per_second: 0}}}}
routes: [{path: /ws, realtime: websocket}]
"#,
        );
        let want = [
            "realtime.hub.max_open_topics: must be at least 1 and less than realtime.hub.max_topics (1000): the rest is kept for Socket.IO's own rooms",
            "realtime.hub.max_topic_length: must be at least 16",
            "realtime.longpoll.max_message_bytes: must be at least 16",
            "realtime.websocket./ws.max_subscriptions: must be at least 1",
            "realtime.socketio.namespaces./.relay_rate: per_second and burst must be at least 1",
        ];
        for w in want {
            assert!(p.iter().any(|x| x == w), "missing {w:?} in {p:#?}");
        }
        assert_eq!(p.len(), want.len(), "{p:#?}");
        let e = Config::parse(
            "listen: {http: 127.0.0.1:8080}\nrealtime: {socketio: {namespaces: {\"/\": {relay_rate: {per_secnd: 1}}}}}\n",
        )
        .map(|_| ())
        .expect_err("unknown key");
        assert!(e.contains("unknown field `per_secnd`"), "{e}");
    }

    #[test]
    fn every_problem_is_reported_with_its_path() {
        let p = problems(
            r#"
listen: {https: "nope", http: 127.0.0.1:8080, admin: 127.0.0.1:8080}
proxy: {trusted_proxies: ["10.0.0.0/99"]}
upstreams:
  app: {servers: ["127.0.0.1"], health_check: {path: "ping", rise: 0}}
routes:
  - {path: /, upstream: app}
  - {path: /x, upstream: app}
  - {path: /y, upstream: ap}
  - {path: z}
"#,
        );
        let want = [
            "listen.https: \"nope\" is not an address like 127.0.0.1:8443",
            "listen.admin: 127.0.0.1:8080 is already used by listen.http",
            "proxy.trusted_proxies[0]: \"10.0.0.0/99\" is not an address or CIDR block",
            "upstreams.app.servers[0]: \"127.0.0.1\" is not an address like 127.0.0.1:3000 or unix:/run/app/puma.sock",
            "upstreams.app.health_check.path: \"ping\" must start with /",
            "upstreams.app.health_check.rise: must be at least 1",
            "routes[2].upstream: no upstream named \"ap\" (known: app)",
            "routes[3].path: \"z\" must start with /",
            "routes[3]: needs a target: `upstream`, `static` or `realtime`",
        ];
        for w in want {
            assert!(p.iter().any(|x| x == w), "missing {w:?} in {p:#?}");
        }
        assert_eq!(p.len(), want.len(), "{p:#?}");
    }

    #[test]
    fn server_names_are_dns_names_and_odd_ones_are_problems_not_panics() {
        for ok in [
            "example.com",
            "*.example.com",
            "localhost",
            "xn--bcher-kva.example",
            "a_b.example",
        ] {
            assert!(is_server_name(ok), "{ok}");
        }
        // "é..." starts with a two-byte character: slicing off one byte used to panic.
        for bad in [
            "",
            "é.example",
            "a b",
            "*",
            "*.",
            "a.*.b",
            "**.x",
            "a..b",
            ".a",
            "x*.a",
        ] {
            assert!(!is_server_name(bad), "{bad:?}");
        }
        let p = problems(
            "listen: {https: 127.0.0.1:8443}\ntls: {certificates: [{cert: /nonexistent.pem, key: /nonexistent.key, server_names: [\"é.example\"]}]}\nroutes: []\n",
        );
        assert!(
            p.iter()
                .any(|x| x
                    == "tls.certificates[0].server_names[0]: \"é.example\" is not a host name"),
            "{p:#?}"
        );
    }

    #[test]
    fn fastcgi_pools_are_validated() {
        let root = std::env::temp_dir();
        let ok = problems(&format!(
            "listen: {{http: 127.0.0.1:8080}}\nupstreams: {{php: {{protocol: fastcgi, servers: [unix:/run/php/php-fpm.sock, 127.0.0.1:9000], fastcgi: {{root: {}}}}}}}\nroutes: [{{path: /, upstream: php}}]\n",
            root.display()
        ));
        assert!(ok.is_empty(), "{ok:?}");
        let p = problems(&format!(
            r#"
listen: {{http: 127.0.0.1:8080}}
upstreams:
  php: {{protocol: fastcgi, servers: ["unix:run/x.sock", "nope"], health_check: {{path: /ping}}}}
  php2: {{protocol: fastcgi, servers: [127.0.0.1:9000], fastcgi: {{root: /no/such/dir, index: a/b.php, front_controller: index.php}}}}
  app: {{servers: ["unix:/tmp/puma.sock"], fastcgi: {{root: {root}}}}}
routes:
  - {{path: /, upstream: php2, static: {{root: {root}, index: [index.php]}}}}
"#,
            root = root.display()
        ));
        let want = [
            "upstreams.php.servers[0]: \"unix:run/x.sock\": a Unix socket needs a path, like unix:/run/php/php-fpm.sock",
            "upstreams.php.servers[1]: \"nope\" is not an address like 127.0.0.1:9000 or unix:/run/php/php-fpm.sock",
            "upstreams.php.fastcgi: required with `protocol: fastcgi`: {root: /path/to/app/public}",
            "upstreams.php.health_check.path: \"/ping\": a FastCGI pool is checked by connecting; remove `path`",
            "upstreams.php2.fastcgi.root: /no/such/dir is not a directory",
            "upstreams.php2.fastcgi.index: \"a/b.php\" must be a plain file name ending in .php",
            "upstreams.php2.fastcgi.front_controller: \"index.php\" must be a path like /index.php",
            "upstreams.app.fastcgi: only used with `protocol: fastcgi`",
            "routes[0].static.index[0]: \"index.php\" would be served as source code: PHP index files belong in upstreams.php2.fastcgi.index",
        ];
        for w in want {
            assert!(p.iter().any(|x| x == w), "missing {w:?} in {p:#?}");
        }
        assert_eq!(p.len(), want.len(), "{p:#?}");
        let e = Config::parse(
            "listen: {http: 127.0.0.1:8080}\nupstreams: {php: {protocol: fastcgi, servers: [], fastcgi: {root: /, frontcontroller: /i.php}}}\nroutes: []\n",
        )
        .unwrap_err();
        assert!(e.contains("unknown field `frontcontroller`"), "{e}");
    }

    #[test]
    fn http_pools_take_unix_sockets_in_both_spellings() {
        let long = format!("unix:/{}", "x".repeat(120));
        let p = problems(&format!(
            r#"
listen: {{http: 127.0.0.1:8080}}
upstreams:
  puma: {{servers: ["unix:/run/app/puma.sock", "unix:///run/app/puma2.sock", 127.0.0.1:3000], health_check: {{path: /up}}}}
  bad: {{servers: ["unix:", "unix://", "unix:puma.sock", "{long}"]}}
routes: [{{path: /, upstream: puma}}]
"#
        ));
        let want = [
            "upstreams.bad.servers[0]: \"unix:\": a Unix socket needs a path, like unix:/run/app/puma.sock",
            "upstreams.bad.servers[1]: \"unix://\": a Unix socket needs a path, like unix:/run/app/puma.sock",
            "upstreams.bad.servers[2]: \"unix:puma.sock\": a Unix socket needs a path, like unix:/run/app/puma.sock",
        ];
        for w in want {
            assert!(p.iter().any(|x| x == w), "missing {w:?} in {p:#?}");
        }
        assert!(
            p.iter().any(|x| x.starts_with("upstreams.bad.servers[3]")
                && x.ends_with(
                    "the path is 121 bytes long; a Unix socket address holds at most 107"
                )),
            "{p:#?}"
        );
        assert_eq!(p.len(), 4, "{p:#?}");
    }

    #[test]
    fn relative_unix_sockets_are_resolved_against_the_file() {
        let dir = std::env::temp_dir().join(format!("config-uds-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let file = dir.join("gateway.yaml");
        std::fs::write(
            &file,
            "listen: {http: 127.0.0.1:8080}\nupstreams: {app: {servers: [\"unix://tmp/puma.sock\", \"unix:///run/puma.sock\", \"unix:.run/x.sock\"]}}\nroutes: [{path: /, upstream: app}]\n",
        )
        .expect("write");
        let c = Config::load(&file).expect("loads");
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!(
            c.upstreams["app"].servers,
            [
                format!("unix:{}", dir.join("tmp/puma.sock").display()),
                "unix:/run/puma.sock".to_string(),
                format!("unix:{}", dir.join(".run/x.sock").display()),
            ]
        );
    }

    #[test]
    fn internal_locations_are_validated() {
        let base = std::env::temp_dir().join(format!("config-internal-{}", std::process::id()));
        for d in ["public/files", "private", "php/public"] {
            std::fs::create_dir_all(base.join(d)).expect("dir");
        }
        let b = base.display();
        let ok = problems(&format!(
            "listen: {{http: 127.0.0.1:8080}}\ninternal_locations: [{{path: /protected/, root: {b}/private}}]\nroutes: [{{path: /, static: {{root: {b}/public}}}}]\n"
        ));
        assert!(ok.is_empty(), "{ok:?}");
        let p = problems(&format!(
            r#"
listen: {{http: 127.0.0.1:8080}}
upstreams:
  php: {{protocol: fastcgi, servers: [127.0.0.1:9000], fastcgi: {{root: {b}/php/public}}}}
internal_locations:
  - {{path: /protected, root: {b}/private}}
  - {{path: /, root: {b}/private}}
  - {{path: /a/../b/, root: {b}/private}}
  - {{path: /files/, root: {b}/public/files}}
  - {{path: /files/more/, root: {b}/php/public}}
  - {{path: /gone/, root: {b}/nope}}
routes:
  - {{path: /gone/x, upstream: php}}
  - {{path: /, static: {{root: {b}/public}}}}
"#
        ));
        let _ = std::fs::remove_dir_all(&base);
        let want = [
            "internal_locations[0].path: \"/protected\" must be a prefix like /protected/ (starting and ending with /, and not / alone)".to_string(),
            "internal_locations[1].path: \"/\" must be a prefix like /protected/ (starting and ending with /, and not / alone)".to_string(),
            "internal_locations[2].path: \"/a/../b/\" must be a plain path: no . or .. segments, //, %, ?, #, spaces or backslashes".to_string(),
            format!("internal_locations[3].root: {b}/public/files is inside routes[1].static.root ({b}/public), where its files are public; move it out"),
            "internal_locations[4].path: \"/files/more/\" overlaps internal_locations[3].path \"/files/\"".to_string(),
            format!("internal_locations[4].root: {b}/php/public is inside upstreams.php.fastcgi.root ({b}/php/public), where its files are public; move it out"),
            format!("internal_locations[5].root: {b}/nope is not a directory"),
            "routes[0].path: \"/gone/x\" is inside internal_locations[5].path \"/gone/\", which requests from outside never reach".to_string(),
        ];
        for w in &want {
            assert!(p.iter().any(|x| x == w), "missing {w:?} in {p:#?}");
        }
        // `/` as a location also swallows every route.
        let extra: Vec<_> = p.iter().filter(|x| !want.contains(x)).collect();
        assert!(
            extra
                .iter()
                .all(|x| x.contains("internal_locations[1].path \"/\"")
                    || x.contains("overlaps internal_locations[1]")
                    || x.contains("overlaps internal_locations[0]")),
            "{extra:#?}"
        );
    }

    #[test]
    fn compression_is_on_by_default_and_validated() {
        let c = Config::parse(
            "listen: {http: 127.0.0.1:8080}\nupstreams: {app: {servers: [127.0.0.1:3000]}}\nroutes: [{path: /, upstream: app}]\n",
        )
        .expect("parses");
        assert!(c.compression.enabled);
        assert_eq!(c.compression.algorithms, ["br", "gzip"]);
        assert_eq!(c.compression.min_length, defaults::COMPRESSION_MIN_LENGTH);
        assert!(c.compression.types.iter().any(|t| t == "text/*"));
        assert_eq!(c.routes[0].compression, None);

        let p = problems(
            r#"
listen: {http: 127.0.0.1:8080}
compression:
  algorithms: [br, zstd, gzip, br]
  gzip_level: 0
  brotli_level: 12
  types: [text/html, "*/*", text/event-stream, "application/json; charset=utf-8"]
upstreams: {app: {servers: [127.0.0.1:3000]}}
routes:
  - {path: /events, realtime: sse, compression: false}
  - {path: /, upstream: app, compression: false}
"#,
        );
        let want = [
            "compression.algorithms[1]: unknown algorithm \"zstd\" (known: br, gzip)",
            "compression.algorithms[3]: \"br\" is listed twice",
            "compression.gzip_level: 0 is not a gzip level (1-9)",
            "compression.brotli_level: 12 is not a brotli level (1-11)",
            "compression.types[1]: \"*/*\" is not a media type like text/html or text/* (no parameters, no */*)",
            "compression.types[2]: text/event-stream is never compressed: each event must reach the client as it is sent",
            "compression.types[3]: \"application/json; charset=utf-8\" is not a media type like text/html or text/* (no parameters, no */*)",
            "routes[0].compression: realtime answers are never compressed; remove it",
        ];
        for w in want {
            assert!(p.iter().any(|x| x == w), "missing {w:?} in {p:#?}");
        }
        assert_eq!(p.len(), want.len(), "{p:#?}");
        let p = problems(
            "listen: {http: 127.0.0.1:8080}\ncompression: {algorithms: [], types: []}\nupstreams: {app: {servers: [127.0.0.1:3000]}}\nroutes: [{path: /, upstream: app}]\n",
        );
        assert_eq!(p.len(), 2, "{p:#?}");
        // Turned off, empty lists are fine.
        let p = problems(
            "listen: {http: 127.0.0.1:8080}\ncompression: {enabled: false, algorithms: [], types: []}\nupstreams: {app: {servers: [127.0.0.1:3000]}}\nroutes: [{path: /, upstream: app}]\n",
        );
        assert!(p.is_empty(), "{p:#?}");
        let e =
            Config::parse("listen: {http: 127.0.0.1:8080}\ncompression: {level: 3}\n").unwrap_err();
        assert!(e.contains("unknown field `level`"), "{e}");
    }

    #[test]
    fn buffering_options_are_validated() {
        let root = std::env::temp_dir();
        let c = Config::parse(
            "listen: {http: 127.0.0.1:8080}\nupstreams: {app: {servers: [127.0.0.1:3000]}}\nroutes: [{path: /, upstream: app}]\n",
        )
        .expect("parses");
        assert!(c.routes[0].request_buffering(), "on by default");
        assert!(!c.routes[0].response_buffering, "off by default");
        assert_eq!(c.temp_dir(), PathBuf::from(".state/tmp"));
        let p = problems(&format!(
            r#"
listen: {{http: 127.0.0.1:8080}}
limits: {{client_body_buffer_bytes: 10, client_body_timeout_ms: 0, response_buffer_bytes: 0, send_timeout_ms: 0}}
upstreams:
  app: {{servers: [127.0.0.1:3000]}}
  php: {{protocol: fastcgi, servers: [127.0.0.1:9000], fastcgi: {{root: {root}}}}}
routes:
  - {{path: /a, upstream: app, request_buffering: false, response_buffering: true}}
  - {{path: /p, upstream: php, response_buffering: true}}
  - {{path: /s, realtime: sse, request_buffering: true}}
  - {{path: /, upstream: app, request_buffering: false}}
"#,
            root = root.display()
        ));
        let want = [
            "limits.client_body_buffer_bytes: must be at least 1024",
            "limits.client_body_timeout_ms: must be greater than 0",
            "limits.response_buffer_bytes: must be at least 1024",
            "limits.send_timeout_ms: must be greater than 0",
            "routes[0].response_buffering: needs `request_buffering: true` (an answer is only buffered for a request the gateway holds whole)",
            "routes[2]: `request_buffering` and `response_buffering` only apply to `upstream` routes",
        ];
        for w in want {
            assert!(p.iter().any(|x| x == w), "missing {w:?} in {p:#?}");
        }
        assert_eq!(p.len(), want.len(), "{p:#?}");
    }

    #[test]
    fn unknown_fields_are_refused_with_their_location() {
        let e =
            Config::parse("listen: {http: 127.0.0.1:8080}\nroutes: [{path: /, upstrem: app}]\n")
                .unwrap_err();
        assert!(e.contains("unknown field `upstrem`"), "{e}");
        assert!(e.contains("routes[0]"), "{e}");
    }

    #[test]
    fn cidr_matching() {
        let c = Cidr::parse("10.1.0.0/16").unwrap();
        assert!(c.contains("10.1.200.3".parse().unwrap()));
        assert!(!c.contains("10.2.0.1".parse().unwrap()));
        assert!(Cidr::parse("127.0.0.1")
            .unwrap()
            .contains("::ffff:127.0.0.1".parse().unwrap()));
        assert!(Cidr::parse("::/0")
            .unwrap()
            .contains("::1".parse().unwrap()));
        assert!(Cidr::parse("0.0.0.0/0")
            .unwrap()
            .contains("8.8.8.8".parse().unwrap()));
        assert!(Cidr::parse("1.2.3.4/33").is_none());
    }
}
