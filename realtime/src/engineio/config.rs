//! Server options, with the reference server's (npm `engine.io` 6.6) defaults.

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use super::Transport;

/// `pingInterval`: how often the server pings. Node's default; a client derives its own
/// liveness timeout (`pingInterval + pingTimeout`) from the handshake, so both ends agree.
pub const DEFAULT_PING_INTERVAL: Duration = Duration::from_millis(25_000);
/// `pingTimeout`: how long a `pong` may take before the session is dropped (node's default).
pub const DEFAULT_PING_TIMEOUT: Duration = Duration::from_millis(20_000);
/// `upgradeTimeout`: how long a probe WebSocket may stay unfinished (no `5`) before it is
/// closed and the session stays on polling (node's default).
pub const DEFAULT_UPGRADE_TIMEOUT: Duration = Duration::from_millis(10_000);
/// `maxHttpBufferSize`: largest POST body and WebSocket message accepted, in bytes; announced
/// to the client as `maxPayload` so it splits its batches below it (node's default, 1e6).
pub const DEFAULT_MAX_PAYLOAD: usize = 1_000_000;
/// Messages queued for one client before `ConnSender::try_send` reports `Full`: enough to absorb
/// a burst of broadcasts during one polling round trip, small enough that a client that stopped
/// reading costs a bounded amount of memory (node has no bound at all).
pub const DEFAULT_OUT_QUEUE: usize = 1024;
/// Messages received from one client and not yet taken by the layer above. When it is full the
/// transport stops reading (the POST is answered later, the WebSocket is not read), so a client
/// cannot make the server buffer without bound.
pub const DEFAULT_IN_QUEUE: usize = 128;

/// Engine.IO sessions one client address (IPv6: its /64) may hold at once. Node has no cap; a
/// browser holds one per tab (socket.io multiplexes namespaces), so 256 covers an office
/// behind one NAT address, while a script's flood of handshakes stops there.
pub const DEFAULT_MAX_SESSIONS_PER_CLIENT: usize = 256;
/// Engine.IO sessions the server holds at once: each costs a task and two bounded
/// queues, and each Socket.IO socket a reserved hub topic (the hub keeps 50 000 for them).
pub const DEFAULT_MAX_SESSIONS: usize = 50_000;

/// The methods the npm `cors` package allows by default in a preflight answer.
pub const DEFAULT_CORS_METHODS: &str = "GET,HEAD,PUT,PATCH,POST,DELETE";

/// What a handshake request looked like, for [`EngineConfig::allow_request`].
#[derive(Debug, Clone, Copy)]
pub struct HandshakeRequest<'a> {
    pub head: &'a http::request::Parts,
    pub peer: Option<SocketAddr>,
    pub secure: bool,
    pub transport: Transport,
}

impl HandshakeRequest<'_> {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.head.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// `allowRequest`: decides on every handshake (polling `GET` without `sid`, or a WebSocket
/// opened directly), never on later requests of a session. `Err(message)` refuses it with `403`
/// and `{"code":4,"message":message}` (`Forbidden` when the message is empty).
pub type AllowRequest = Arc<dyn Fn(&HandshakeRequest<'_>) -> Result<(), String> + Send + Sync>;

/// Which `Origin`s get an `Access-Control-Allow-Origin`, as the npm `cors` package's `origin`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CorsOrigin {
    /// `*`: any page may poll, but browsers then refuse credentials.
    Any,
    /// This exact value, whatever the request's origin.
    Exact(String),
    /// The request's own origin when it is in the list; no header otherwise.
    List(Vec<String>),
    /// The request's own origin, whatever it is (`origin: true`).
    Mirror,
}

/// Cross-origin polling (`cors` option). WebSockets are not subject to CORS: check `Origin` in
/// [`EngineConfig::allow_request`] to restrict them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CorsConfig {
    pub origin: CorsOrigin,
    /// `Access-Control-Allow-Credentials: true` (needs an explicit origin to be usable).
    pub credentials: bool,
    /// `Access-Control-Allow-Methods` on preflight answers.
    pub methods: String,
    /// `Access-Control-Allow-Headers` on preflight answers; `None` mirrors the request's
    /// `Access-Control-Request-Headers`, as `cors` does.
    pub allowed_headers: Option<String>,
    /// `Access-Control-Expose-Headers`.
    pub exposed_headers: Option<String>,
    /// `Access-Control-Max-Age` on preflight answers.
    pub max_age: Option<Duration>,
}

impl CorsConfig {
    /// `cors: { origin: "*" }`.
    pub fn any() -> CorsConfig {
        CorsConfig {
            origin: CorsOrigin::Any,
            credentials: false,
            methods: DEFAULT_CORS_METHODS.to_owned(),
            allowed_headers: None,
            exposed_headers: None,
            max_age: None,
        }
    }
}

/// Engine.IO server options (the subset of node's that this server implements).
#[derive(Clone)]
pub struct EngineConfig {
    pub ping_interval: Duration,
    pub ping_timeout: Duration,
    pub upgrade_timeout: Duration,
    /// `maxHttpBufferSize`, in bytes.
    pub max_payload: usize,
    /// Transports accepted, for handshakes and upgrades alike.
    pub transports: Vec<Transport>,
    /// Whether a polling session may move to WebSocket (announced in `upgrades`).
    pub allow_upgrades: bool,
    /// `None`: no CORS headers at all, as node since 3.0.
    pub cors: Option<CorsConfig>,
    pub allow_request: Option<AllowRequest>,
    /// Bound of the queue towards each client, in messages (see [`DEFAULT_OUT_QUEUE`]).
    pub out_queue: usize,
    /// Bound of the queue from each client, in messages (see [`DEFAULT_IN_QUEUE`]).
    pub in_queue: usize,
    /// Sessions at once, all clients together; 0: no cap (see [`DEFAULT_MAX_SESSIONS`]).
    pub max_sessions: usize,
    /// Sessions at once per client address; 0: no cap (see
    /// [`DEFAULT_MAX_SESSIONS_PER_CLIENT`]).
    pub max_sessions_per_client: usize,
    /// This node's tag in a fleet ([`super::node_tag`]): every sid starts with it, so that any
    /// node can tell which one owns a session ([`super::sid_owner`]). `None` on a single node.
    pub sid_tag: Option<String>,
}

impl Default for EngineConfig {
    fn default() -> EngineConfig {
        EngineConfig {
            ping_interval: DEFAULT_PING_INTERVAL,
            ping_timeout: DEFAULT_PING_TIMEOUT,
            upgrade_timeout: DEFAULT_UPGRADE_TIMEOUT,
            max_payload: DEFAULT_MAX_PAYLOAD,
            transports: vec![Transport::Polling, Transport::WebSocket],
            allow_upgrades: true,
            cors: None,
            allow_request: None,
            out_queue: DEFAULT_OUT_QUEUE,
            in_queue: DEFAULT_IN_QUEUE,
            max_sessions: DEFAULT_MAX_SESSIONS,
            max_sessions_per_client: DEFAULT_MAX_SESSIONS_PER_CLIENT,
            sid_tag: None,
        }
    }
}

impl fmt::Debug for EngineConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EngineConfig")
            .field("ping_interval", &self.ping_interval)
            .field("ping_timeout", &self.ping_timeout)
            .field("upgrade_timeout", &self.upgrade_timeout)
            .field("max_payload", &self.max_payload)
            .field("transports", &self.transports)
            .field("allow_upgrades", &self.allow_upgrades)
            .field("cors", &self.cors)
            .field("allow_request", &self.allow_request.as_ref().map(|_| ".."))
            .field("out_queue", &self.out_queue)
            .field("in_queue", &self.in_queue)
            .field("max_sessions", &self.max_sessions)
            .field("max_sessions_per_client", &self.max_sessions_per_client)
            .field("sid_tag", &self.sid_tag)
            .finish()
    }
}

impl EngineConfig {
    /// The `upgrades` announced in a polling handshake.
    pub(super) fn polling_upgrades(&self) -> Vec<String> {
        if self.allow_upgrades && self.transports.contains(&Transport::WebSocket) {
            vec![Transport::WebSocket.as_str().to_owned()]
        } else {
            Vec::new()
        }
    }
}
