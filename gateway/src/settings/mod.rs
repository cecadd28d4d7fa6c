//! Typed settings: what the gateway runs on. A [`Config`] (the file as written) is built into
//! [`Settings`] in one pass ([`Settings::build`]) that puts in the defaults, resolves relative
//! paths against the file's folder, parses every address, block, coding and type, loads the
//! certificates, and reports every problem with its place (`routes[2].upstream: no upstream
//! named "ap"`). Runtime modules take only these types, so nothing is parsed twice and nothing
//! that fails to parse is dropped on the way.
//!
//! Building never panics and never hands pingora a file it would panic on, so `gateway check`
//! and `gateway run` fail with the same clear message.

mod build;
pub mod certs;
mod values;

#[cfg(test)]
mod readme;
#[cfg(test)]
pub(crate) mod tests;

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use http::HeaderValue;
use rustls::sign::CertifiedKey;

use crate::config::Config;
pub use crate::config::{defaults, AccessLogFormat, Balance, RealtimeKind};
pub use certs::{load_pair, TlsError};
pub use values::{is_plain_file_name, Addr, AddrError, Cidr, Coding, ServerName, TypePattern};

/// Everything the gateway runs on, checked and typed.
#[derive(Debug, Clone)]
pub struct Settings {
    pub listen: Listen,
    pub tls: Tls,
    pub proxy: Proxy,
    pub limits: Limits,
    pub upstreams: BTreeMap<String, Upstream>,
    pub routes: Vec<Route>,
    pub realtime: Realtime,
    pub internal_locations: Vec<InternalLocation>,
    /// `None` when compression is off.
    pub compression: Option<Compression>,
    /// `None`: a single node.
    pub cluster: Option<Cluster>,
    /// Worker threads of the HTTPS service.
    pub threads: usize,
    /// Whether those threads share one work-stealing runtime.
    pub work_stealing: bool,
    /// How long in-flight requests may take to finish on SIGTERM.
    pub grace_period: Duration,
    pub access_log: AccessLogSettings,
    /// Where the process id is written while serving ([`crate::reload`] reads it).
    pub pid_file: PathBuf,
    /// The file as written, which a reload compares section by section with the one in force
    /// (what changed, what only a restart applies, which pools are unchanged and kept).
    pub source: Arc<Config>,
}

/// Where and how the access log is written.
#[derive(Debug, Clone)]
pub struct AccessLogSettings {
    pub target: LogTarget,
    pub format: AccessLogFormat,
    pub queue_lines: usize,
}

/// Where access log lines go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogTarget {
    Off,
    Stdout,
    Stderr,
    /// Appended to; reopened on `SIGUSR1`.
    File(PathBuf),
}

/// This node's place in a fleet of gateways on one Redis.
#[derive(Debug, Clone)]
pub struct Cluster {
    /// Checked by the backplane's own URL parser; printed redacted.
    pub redis: RedisUrl,
    /// PEM certificates to trust for `rediss://` instead of the system's roots.
    pub tls_ca: Option<Vec<u8>>,
    pub node_id: String,
    pub key_prefix: String,
    /// Speak socket.io's Redis adapter protocol.
    pub socketio_adapter: bool,
    /// Laravel's `redis` broadcaster, when configured.
    pub laravel: Option<realtime::cluster::LaravelConfig>,
    /// Forwarding of Engine.IO requests to the node that owns the session: `None` without
    /// `internal_listen`.
    pub internal: Option<Internal>,
}

/// This node's internal listener, for the Engine.IO requests other nodes forward to it.
#[derive(Debug, Clone)]
pub struct Internal {
    pub listen: SocketAddr,
    /// `host:port` other nodes connect to.
    pub advertise: String,
    pub secret: Secret,
}

/// The fleet's shared secret: never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(secret: String) -> Secret {
        Secret(secret)
    }

    /// The secret itself, to send or to compare with.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// A Redis URL: it may hold a password, so `Debug` and `Display` redact it; [`RedisUrl::expose`]
/// is for the connection only.
#[derive(Clone, PartialEq, Eq)]
pub struct RedisUrl(String);

impl RedisUrl {
    pub fn new(url: String) -> RedisUrl {
        RedisUrl(url)
    }

    /// The URL with its password, to connect with.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for RedisUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&realtime::cluster::backplane::redact(&self.0))
    }
}

impl fmt::Debug for RedisUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RedisUrl({self})")
    }
}

#[derive(Debug, Clone)]
pub struct Listen {
    pub https: Option<SocketAddr>,
    pub http: Option<SocketAddr>,
    pub admin: Option<SocketAddr>,
}

#[derive(Debug, Clone)]
pub struct Tls {
    /// Loaded chains; the first is the default. Empty: the development certificate.
    pub certificates: Vec<Certificate>,
    pub state_dir: PathBuf,
    pub hsts: Option<Hsts>,
}

#[derive(Debug, Clone)]
pub struct Certificate {
    /// The chain's file, for log lines.
    pub cert: PathBuf,
    pub key: Arc<CertifiedKey>,
    pub server_names: Vec<ServerName>,
}

#[derive(Debug, Clone)]
pub struct Hsts {
    pub max_age: u64,
    pub include_subdomains: bool,
}

impl Hsts {
    /// The `Strict-Transport-Security` value.
    /// The `Strict-Transport-Security` value, built once at start rather than per answer.
    pub fn header_value(&self) -> http::HeaderValue {
        let mut v = format!("max-age={}", self.max_age);
        if self.include_subdomains {
            v.push_str("; includeSubDomains");
        }
        http::HeaderValue::try_from(v).expect("digits and a token are always a valid header value")
    }
}

#[derive(Debug, Clone)]
pub struct Proxy {
    pub trusted_proxies: Vec<Cidr>,
    /// Where buffered bodies spill to disk.
    pub temp_dir: PathBuf,
}

#[derive(Debug, Clone)]
pub struct Limits {
    pub max_header_bytes: usize,
    pub max_body_bytes: u64,
    pub header_timeout: Duration,
    pub keepalive_requests: u32,
    /// Idle time between requests; `None`: keep-alive off.
    pub keepalive_timeout: Option<Duration>,
    pub send_timeout: Duration,
    pub client_body_buffer_bytes: usize,
    pub client_body_timeout: Duration,
    pub client_body_min_rate: u64,
    pub response_buffer_bytes: usize,
    pub response_temp_file_bytes: u64,
    pub h2_max_concurrent_streams: u32,
    /// See [`crate::client_limits`]; `None`: no such limit.
    pub max_connections: Option<u64>,
    pub per_client_connections: Option<u32>,
    pub per_client_rate: Option<Rate>,
    pub per_client_realtime_connects: Option<Rate>,
}

/// An upstream pool: its servers, parsed, and how to talk to them.
impl Limits {
    /// Whether a per-client limit counts every request (not only realtime connects).
    pub fn per_client(&self) -> bool {
        self.per_client_connections.is_some() || self.per_client_rate.is_some()
    }
}

/// A token bucket's refill rate and size.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate {
    pub per_second: f64,
    pub burst: u32,
}

#[derive(Debug, Clone)]
pub struct Upstream {
    pub servers: Vec<Addr>,
    pub protocol: Protocol,
    pub balance: Balance,
    pub health_check: Option<HealthCheck>,
    pub connect_timeout: Duration,
    pub read_timeout: Duration,
}

/// How the gateway talks to a pool, with what that protocol needs.
#[derive(Debug, Clone)]
pub enum Protocol {
    Http,
    FastCgi(FastCgi),
}

/// The PHP side of a FastCGI pool.
#[derive(Debug, Clone)]
pub struct FastCgi {
    pub root: PathBuf,
    /// A plain file name ending in `.php`.
    pub index: String,
    /// A path like `/index.php`.
    pub front_controller: String,
}

#[derive(Debug, Clone)]
pub struct HealthCheck {
    /// `GET` this path; `None`: a connect is the check.
    pub path: Option<String>,
    pub interval: Duration,
    pub timeout: Duration,
    pub rise: u32,
    pub fall: u32,
}

#[derive(Debug, Clone)]
pub struct Route {
    /// A prefix starting with `/`.
    pub path: String,
    /// Lower case.
    pub host: Option<String>,
    pub target: Target,
}

#[derive(Debug, Clone)]
pub enum Target {
    /// Static files, the app, or both (files first).
    App(App),
    /// An in-process realtime service.
    Realtime(Endpoint),
}

#[derive(Debug, Clone)]
pub struct App {
    pub files: Option<StaticFiles>,
    /// The name of a pool in [`Settings::upstreams`].
    pub upstream: Option<String>,
    pub websocket: bool,
    /// On-the-fly compression, when it is on globally.
    pub compression: bool,
    pub request_buffering: bool,
    pub response_buffering: bool,
}

#[derive(Debug, Clone)]
pub struct StaticFiles {
    pub root: PathBuf,
    /// Plain file names.
    pub index: Vec<String>,
    pub cache_control: Option<HeaderValue>,
    pub precompressed: bool,
}

/// A realtime service a route mounts, with its settings.
#[derive(Debug, Clone)]
pub enum Endpoint {
    SeamTest,
    Longpoll,
    Sse,
    Websocket(WebSocket),
    Socketio,
    ProtocolSuites,
}

impl Endpoint {
    pub fn kind(&self) -> RealtimeKind {
        match self {
            Endpoint::SeamTest => RealtimeKind::SeamTest,
            Endpoint::Longpoll => RealtimeKind::Longpoll,
            Endpoint::Sse => RealtimeKind::Sse,
            Endpoint::Websocket(_) => RealtimeKind::Websocket,
            Endpoint::Socketio => RealtimeKind::Socketio,
            Endpoint::ProtocolSuites => RealtimeKind::ProtocolSuites,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Realtime {
    pub hub: Hub,
    pub longpoll: LongPoll,
    pub sse: Sse,
    pub publish: Publish,
    pub socketio: SocketIo,
    pub policy: realtime::access::Policy,
    /// `None`: nobody to ask (no connect callback; private topics are refused).
    pub auth: Option<Auth>,
    /// `None`: client events never go to the app.
    pub events: Option<Events>,
}

/// Where client events go in the app (`realtime::app_events`).
#[derive(Debug, Clone)]
pub struct Events {
    /// The name of a pool in [`Settings::upstreams`].
    pub upstream: String,
    /// A path starting with `/`.
    pub path: String,
    pub timeout: Duration,
    /// At least 1.
    pub max_in_flight: usize,
}

/// The authorization callbacks to the app.
#[derive(Debug, Clone)]
pub struct Auth {
    /// The name of a pool in [`Settings::upstreams`].
    pub upstream: String,
    /// A path starting with `/`; `None`: no connect callback.
    pub connect: Option<String>,
    /// A path starting with `/`.
    pub subscribe: String,
    pub timeout: Duration,
    /// Zero: answers are not reused.
    pub cache: Duration,
}

#[derive(Debug, Clone)]
pub struct Hub {
    pub history: usize,
    pub subscriber_queue: usize,
    pub max_topics: usize,
    /// Below `max_topics`.
    pub max_open_topics: usize,
    pub max_topic_length: usize,
    pub new_topics_per_client_per_minute: u32,
}

#[derive(Debug, Clone)]
pub struct LongPoll {
    pub wait: Duration,
    pub max_message_bytes: usize,
}

#[derive(Debug, Clone)]
pub struct Sse {
    pub heartbeat: Duration,
    pub retry: Duration,
}

#[derive(Debug, Clone)]
pub struct Publish {
    pub token: Option<String>,
}

#[derive(Debug, Clone)]
pub struct WebSocket {
    /// Known subprotocols only.
    pub protocols: Vec<String>,
    pub allow_plain: bool,
    pub allowed_origins: Vec<String>,
    pub max_message_bytes: usize,
    pub ping_interval: Duration,
    pub ping_timeout: Duration,
    pub queue: usize,
    pub max_subscriptions: usize,
    /// `pubsub.v1` events posted to the app.
    pub events: realtime::app_events::EventNames,
}

#[derive(Debug, Clone)]
pub struct SocketIo {
    pub ping_interval: Duration,
    pub ping_timeout: Duration,
    pub max_payload_bytes: usize,
    pub connect_timeout: Duration,
    pub max_sessions: usize,
    pub max_sessions_per_client: usize,
    pub allowed_origins: Vec<String>,
    /// `None`: connection state recovery is off.
    pub recovery: Option<Recovery>,
    pub client_dir: Option<PathBuf>,
    /// Keyed by the namespace, which starts with `/`.
    pub namespaces: BTreeMap<String, Namespace>,
}

#[derive(Debug, Clone)]
pub struct Recovery {
    pub max_disconnection: Duration,
}

#[derive(Debug, Clone)]
pub struct Namespace {
    pub relay: bool,
    pub history: usize,
    pub client_rooms: bool,
    pub relay_rate: RelayRate,
    pub echo: bool,
    /// Client events posted to the app.
    pub events: realtime::app_events::EventNames,
}

#[derive(Debug, Clone, Copy)]
pub struct RelayRate {
    pub per_second: u32,
    pub burst: u32,
}

#[derive(Debug, Clone)]
pub struct InternalLocation {
    /// A prefix like `/protected/`.
    pub path: String,
    pub root: PathBuf,
}

/// On-the-fly compression, ready for per-response decisions.
#[derive(Debug, Clone)]
pub struct Compression {
    /// Codings offered, in the order that breaks ties between equally weighted ones.
    pub codings: Vec<Coding>,
    pub gzip_level: u32,
    pub brotli_level: u32,
    /// Bodies whose `Content-Length` is below this are sent as they are (nginx
    /// `gzip_min_length`). Bodies of unknown length are always compressed.
    pub min_length: u64,
    pub types: Vec<TypePattern>,
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

impl Settings {
    /// Read, parse and build a file. Relative paths in it are resolved against its folder,
    /// so `gateway run --config /etc/gw/gateway.yaml` works from any working directory.
    pub fn load(path: &Path) -> Result<Settings, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let config = Config::parse(&text).map_err(|message| ConfigError::Syntax {
            path: path.to_path_buf(),
            message,
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        Settings::build(config, base).map_err(|problems| ConfigError::Invalid {
            path: path.to_path_buf(),
            problems,
        })
    }

    /// Build a parsed file, with relative paths resolved against `base`: the settings, or
    /// every problem in the file, each with its location.
    pub fn build(config: Config, base: &Path) -> Result<Settings, Vec<Problem>> {
        build::build(config, base)
    }

    /// Where a new gateway (`gateway upgrade`) waits for the running one's listening sockets:
    /// in the state directory, beside the pid file's default.
    pub fn upgrade_sock(&self) -> PathBuf {
        self.tls.state_dir.join("upgrade.sock")
    }
}
