//! The app's publish API: one HTTP call from PHP or Ruby puts a message into the hub, and every
//! transport delivers it (Socket.IO rooms of that name as event `event`, `/ws` pub/sub
//! subscribers, SSE streams, long-polls).
//!
//! `POST /publish` with `{"topic": "...", "event": "...", "data": ...}` (or an array of them)
//! answers `{"topic", "seq", "epoch", "position"}` once the message is in the hub. With
//! socket.io's Redis adapter on, the other servers of the adapter (Node servers with
//! `@socket.io/redis-adapter`) get it too, for their sockets in the room of that name
//! ([`SocketIo::publish_to_peers`]). An
//! `Idempotency-Key` header makes a retried publish count once. `GET /topics/<topic>` tells
//! subscribers and position; `GET /topics/<topic>/members`, for a presence topic, its members
//! (one per user, [`crate::access::presence`]): `{"topic", "count", "connections", "members":
//! [{"user_id", "user_info"}, ...]}`. A topic whose name ends in `/members` is asked about
//! with the slash escaped (`%2F`).
//!
//! `POST /emit` with `{"namespace": "/", "room": "...", "event": "...", "data": ..., "timeout_ms":
//! N}` sends a Socket.IO event to the sockets of a room (or a whole namespace) asking each for an
//! acknowledgement, and answers with what each socket acknowledged once all have answered or the
//! timeout has passed: node's `io.to(room).timeout(N).emitWithAck(...)` for an app that is not
//! written in JavaScript. Such events bypass the hub (see
//! [`BroadcastOperator::emit_with_ack`](crate::socketio::BroadcastOperator::emit_with_ack)).
//! With socket.io's Redis adapter on (a fleet), the sockets of every server answer; a peer's
//! socket is listed with `"socket": null` (the adapter does not say which it was).
//!
//! Node's server-side API for the sockets of every server, the same way:
//! `GET /sockets?namespace=/&room=..&except=..` (`fetchSockets()`: `{"sockets": [{"id",
//! "rooms", "handshake", "data"}]}`), `GET /rooms?namespace=/` (`allRooms()`), and `POST
//! /sockets/join` `{"namespace", "rooms", "except", "join": [...]}`, `POST /sockets/leave`
//! (`"leave": [...]`) and `POST /sockets/disconnect` (`"close": bool`): `socketsJoin()`,
//! `socketsLeave()`, `disconnectSockets()` of the sockets in any of `rooms` (all when empty)
//! and none of `except`.

use http::StatusCode;
use serde::Deserialize;
use serde_json::{json, Value};

use std::time::Duration;

use base64::Engine as _;

use crate::access::presence::{self, members_json, Presence};
use crate::hub::{Hub, HubError, Payload, Position, Published, Publishing};
use crate::seam::{BodyError, Request, Response, Service};
use crate::socketio::{
    AckError, Args, BroadcastOperator, Namespace, PeersError, SocketIo, RESERVED_EVENTS,
};

/// A publish request larger than this is refused with 413 (nginx's `client_max_body_size`
/// default); a message that big belongs in the app's storage, with a link in the message.
pub const DEFAULT_MAX_BODY: usize = 1024 * 1024;
/// Messages one batch may carry.
pub const MAX_BATCH: usize = 1000;
/// The event name when a publish does not give one.
pub const DEFAULT_EVENT: &str = "message";
/// The longest an `/emit` may wait for acknowledgements: the request holds an app worker for
/// that long, and a minute is already beyond any proxy's default read timeout in front of it.
pub const MAX_EMIT_TIMEOUT_MS: u64 = 60_000;

pub struct PublishApi {
    hub: Hub,
    /// Required as `Authorization: Bearer <token>` when set.
    token: Option<String>,
    max_body: usize,
    /// Where `/emit` sends its events; `None` when Socket.IO is not enabled.
    socketio: Option<SocketIo>,
    /// The members of the presence topics, which the transports keep.
    presence: Presence,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Emit {
    #[serde(default = "root_namespace")]
    namespace: String,
    /// The whole namespace when absent.
    #[serde(default)]
    room: Option<String>,
    event: String,
    #[serde(default)]
    data: Value,
    timeout_ms: u64,
}

fn root_namespace() -> String {
    "/".to_string()
}

/// `POST /sockets/join`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SocketsJoin {
    #[serde(default = "root_namespace")]
    namespace: String,
    #[serde(default)]
    rooms: Vec<String>,
    #[serde(default)]
    except: Vec<String>,
    join: Vec<String>,
}

/// `POST /sockets/leave`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SocketsLeave {
    #[serde(default = "root_namespace")]
    namespace: String,
    #[serde(default)]
    rooms: Vec<String>,
    #[serde(default)]
    except: Vec<String>,
    leave: Vec<String>,
}

/// `POST /sockets/disconnect`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SocketsDisconnect {
    #[serde(default = "root_namespace")]
    namespace: String,
    #[serde(default)]
    rooms: Vec<String>,
    #[serde(default)]
    except: Vec<String>,
    #[serde(default)]
    close: bool,
}

/// The body of a `/sockets/...` operation: which sockets (a namespace, rooms, rooms excepted)
/// and what to do with them.
trait SocketsOp: serde::de::DeserializeOwned {
    /// The body's shape, for the error that answers another one.
    const SHAPE: &'static str;
    /// (namespace, rooms, except).
    fn selection(&self) -> (&str, &[String], &[String]);
    /// Rooms the operation itself names (its field's name and them), checked like the selection's.
    fn rooms_named(&self) -> Option<(&'static str, &[String])> {
        None
    }
    fn apply(&self, op: &BroadcastOperator);
}

impl SocketsOp for SocketsJoin {
    const SHAPE: &'static str =
        r#"{"namespace": "/", "rooms": [...], "except": [...], "join": [...]}"#;
    fn selection(&self) -> (&str, &[String], &[String]) {
        (&self.namespace, &self.rooms, &self.except)
    }
    fn rooms_named(&self) -> Option<(&'static str, &[String])> {
        Some(("join", &self.join))
    }
    fn apply(&self, op: &BroadcastOperator) {
        op.sockets_join(&self.join);
    }
}

impl SocketsOp for SocketsLeave {
    const SHAPE: &'static str =
        r#"{"namespace": "/", "rooms": [...], "except": [...], "leave": [...]}"#;
    fn selection(&self) -> (&str, &[String], &[String]) {
        (&self.namespace, &self.rooms, &self.except)
    }
    fn rooms_named(&self) -> Option<(&'static str, &[String])> {
        Some(("leave", &self.leave))
    }
    fn apply(&self, op: &BroadcastOperator) {
        op.sockets_leave(&self.leave);
    }
}

impl SocketsOp for SocketsDisconnect {
    const SHAPE: &'static str =
        r#"{"namespace": "/", "rooms": [...], "except": [...], "close": false}"#;
    fn selection(&self) -> (&str, &[String], &[String]) {
        (&self.namespace, &self.rooms, &self.except)
    }
    fn apply(&self, op: &BroadcastOperator) {
        op.disconnect_sockets(self.close);
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Publish {
    topic: String,
    #[serde(default)]
    event: Option<String>,
    #[serde(default)]
    data: Value,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Body {
    One(Publish),
    Many(Vec<Publish>),
}

/// One message of a publish request, sent and not yet answered.
enum Sending {
    Plain(Publishing<Position>),
    Keyed(Publishing<Published>),
}

impl Sending {
    /// Whether it failed without being sent.
    fn failed_at_once(&self) -> bool {
        match self {
            Sending::Plain(s) => s.failed_at_once(),
            Sending::Keyed(s) => s.failed_at_once(),
        }
    }
}

fn json_response(status: StatusCode, value: Value) -> Response {
    Response::full(status, "application/json", value.to_string())
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    json_response(status, json!({ "error": message.into() }))
}

/// Constant-time comparison, so the token cannot be guessed byte by byte from timings.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl PublishApi {
    pub fn new(hub: Hub, token: Option<String>) -> PublishApi {
        PublishApi {
            hub,
            token,
            max_body: DEFAULT_MAX_BODY,
            socketio: None,
            presence: Presence::default(),
        }
    }

    /// Answers `GET /topics/<topic>/members` from `presence` (the transports' own, from their
    /// [`crate::access::Access`]).
    pub fn with_presence(mut self, presence: Presence) -> PublishApi {
        self.presence = presence;
        self
    }

    /// Enables `POST /emit` on `io`'s namespaces.
    pub fn with_socketio(mut self, io: SocketIo) -> PublishApi {
        self.socketio = Some(io);
        self
    }

    async fn read_json<T: serde::de::DeserializeOwned>(
        &self,
        req: Request,
        expected: &str,
    ) -> Result<T, Response> {
        let body = match req.body.collect(self.max_body).await {
            Ok(b) => b,
            Err(BodyError::TooLarge { limit }) => {
                return Err(error(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    format!("request body larger than {limit} bytes"),
                ))
            }
            Err(e) => return Err(error(StatusCode::BAD_REQUEST, e.to_string())),
        };
        serde_json::from_slice(&body).map_err(|e| {
            error(
                StatusCode::BAD_REQUEST,
                format!("invalid JSON: {e} (expected {expected})"),
            )
        })
    }

    /// The Socket.IO server, or why there is none.
    fn io(&self, path: &str) -> Result<&SocketIo, Refused> {
        self.socketio.as_ref().ok_or_else(|| {
            Refused(
                StatusCode::NOT_FOUND,
                format!("Socket.IO is not enabled: {path} needs a route with `realtime: socketio`"),
            )
        })
    }

    /// Namespace `path` of `io`, or a 404.
    fn namespace(io: &SocketIo, path: &str) -> Result<Namespace, Refused> {
        io.of(path)
            .ok_or_else(|| Refused(StatusCode::NOT_FOUND, format!("no such namespace: {path}")))
    }

    /// Checks room names (`field` names them in the error).
    fn check_rooms(&self, field: &str, rooms: &[String]) -> Result<(), Refused> {
        let max = self.hub.config().max_topic_len;
        match rooms.iter().find(|r| r.is_empty() || r.len() > max) {
            Some(_) => Err(Refused(
                StatusCode::BAD_REQUEST,
                format!("{field}: room names must be 1 to {max} bytes long"),
            )),
            None => Ok(()),
        }
    }

    /// The sockets in any of `rooms` (all when empty) and none of `except`, in `nsp`.
    fn select(
        &self,
        io: &SocketIo,
        nsp: &str,
        rooms: &[String],
        except: &[String],
    ) -> Result<BroadcastOperator, Refused> {
        self.check_rooms("rooms", rooms)?;
        self.check_rooms("except", except)?;
        Ok(Self::namespace(io, nsp)?
            .broadcast()
            .to_rooms(rooms.iter().cloned())
            .except_rooms(except.iter().cloned()))
    }

    /// `GET /sockets`: node's `fetchSockets()`.
    async fn fetch_sockets(&self, req: &Request) -> Response {
        let (io, query) = match self.io("/sockets") {
            Ok(io) => (io, req.head.uri.query().unwrap_or("")),
            Err(r) => return r.into(),
        };
        let nsp = crate::query::get(query, "namespace").unwrap_or_else(root_namespace);
        let rooms = crate::query::all(query, "room");
        let except = crate::query::all(query, "except");
        let op = match self.select(io, &nsp, &rooms, &except) {
            Ok(op) => op,
            Err(r) => return r.into(),
        };
        match op.fetch_sockets().await {
            Ok(sockets) => json_response(
                StatusCode::OK,
                json!({"sockets": sockets.iter().map(|s| s.to_json()).collect::<Vec<_>>()}),
            ),
            Err(e) => peers_error(e),
        }
    }

    /// `GET /rooms`: node's `allRooms()`.
    async fn all_rooms(&self, req: &Request) -> Response {
        let io = match self.io("/rooms") {
            Ok(io) => io,
            Err(r) => return r.into(),
        };
        let query = req.head.uri.query().unwrap_or("");
        let nsp = crate::query::get(query, "namespace").unwrap_or_else(root_namespace);
        let ns = match Self::namespace(io, &nsp) {
            Ok(ns) => ns,
            Err(r) => return r.into(),
        };
        match ns.all_rooms().await {
            Ok(rooms) => json_response(StatusCode::OK, json!({ "rooms": rooms })),
            Err(e) => peers_error(e),
        }
    }

    /// `POST /sockets/join`, `/sockets/leave`, `/sockets/disconnect`.
    async fn sockets(&self, req: Request, path: &str) -> Response {
        let io = match self.io(path) {
            Ok(io) => io,
            Err(r) => return r.into(),
        };
        match path {
            "/sockets/join" => self.sockets_op::<SocketsJoin>(io, req).await,
            "/sockets/leave" => self.sockets_op::<SocketsLeave>(io, req).await,
            _ => self.sockets_op::<SocketsDisconnect>(io, req).await,
        }
    }

    /// One of node's server-side operations on the sockets a selection names: the body read,
    /// the rooms it names checked, the operation applied.
    async fn sockets_op<B: SocketsOp>(&self, io: &SocketIo, req: Request) -> Response {
        let b: B = match self.read_json(req, B::SHAPE).await {
            Ok(b) => b,
            Err(r) => return r,
        };
        if let Some((field, rooms)) = b.rooms_named() {
            if let Err(r) = self.check_rooms(field, rooms) {
                return r.into();
            }
        }
        let (nsp, rooms, except) = b.selection();
        match self.select(io, nsp, rooms, except) {
            Ok(op) => {
                b.apply(&op);
                json_response(StatusCode::OK, json!({"ok": true}))
            }
            Err(r) => r.into(),
        }
    }

    async fn emit(&self, req: Request) -> Response {
        let io = match self.io("/emit") {
            Ok(io) => io,
            Err(r) => return r.into(),
        };
        let emit: Emit = match self
            .read_json(
                req,
                r#"{"namespace": "/", "room": "...", "event": "...", "data": ..., "timeout_ms": N}"#,
            )
            .await
        {
            Ok(e) => e,
            Err(response) => return response,
        };
        if emit.event.is_empty() || RESERVED_EVENTS.contains(&emit.event.as_str()) {
            return error(
                StatusCode::BAD_REQUEST,
                format!("event: {:?} is empty or reserved", emit.event),
            );
        }
        if emit.timeout_ms == 0 || emit.timeout_ms > MAX_EMIT_TIMEOUT_MS {
            return error(
                StatusCode::BAD_REQUEST,
                format!("timeout_ms: must be between 1 and {MAX_EMIT_TIMEOUT_MS}"),
            );
        }
        if let Some(room) = &emit.room {
            let max = self.hub.config().max_topic_len;
            if room.is_empty() || room.len() > max {
                return error(
                    StatusCode::BAD_REQUEST,
                    format!("room: must be 1 to {max} bytes long"),
                );
            }
        }
        let Some(ns) = io.of(&emit.namespace) else {
            return error(
                StatusCode::NOT_FOUND,
                format!("no such namespace: {}", emit.namespace),
            );
        };
        let target = match &emit.room {
            Some(room) => ns.to(room.clone()),
            None => ns.broadcast(),
        };
        let answers = target
            .emit_with_ack(
                &emit.event,
                Args::new().arg(emit.data),
                Duration::from_millis(emit.timeout_ms),
            )
            .await;
        let sockets = answers.answers.len();
        let mut acks = Vec::new();
        let mut failed = Vec::new();
        for answer in answers.answers {
            let socket = answer.socket.as_deref();
            match answer.answer {
                Ok(args) => acks.push(ack_json(socket, args)),
                Err(e) => {
                    let reason = match e {
                        AckError::Timeout(_) => "timeout".to_string(),
                        AckError::Disconnected => "disconnected".to_string(),
                        AckError::Emit(e) => e.to_string(),
                    };
                    failed.push(json!({"socket": socket, "error": reason}));
                }
            }
        }
        let mut v = json!({"sockets": sockets, "acks": acks, "failed": failed});
        if let Some(e) = answers.incomplete {
            v["incomplete"] = Value::from(e.to_string());
        }
        json_response(StatusCode::OK, v)
    }

    fn authorized(&self, req: &Request) -> bool {
        let Some(token) = &self.token else {
            return true;
        };
        req.header("authorization")
            .and_then(|v| v.strip_prefix("Bearer "))
            .is_some_and(|given| same(given.trim().as_bytes(), token.as_bytes()))
    }

    async fn publish(&self, req: Request) -> Response {
        let key = req.header("idempotency-key").map(str::to_string);
        let parsed: Body = match self
            .read_json(
                req,
                r#"{"topic": "...", "event": "...", "data": ...} or an array of them"#,
            )
            .await
        {
            Ok(b) => b,
            Err(response) => return response,
        };
        let (items, batch) = match parsed {
            Body::One(p) => (vec![p], false),
            Body::Many(v) => (v, true),
        };
        if items.len() > MAX_BATCH {
            return error(
                StatusCode::BAD_REQUEST,
                format!("at most {MAX_BATCH} messages per batch"),
            );
        }
        // Validate everything before publishing anything: a batch is all or nothing.
        // Topics in a reserved namespace are refused here too (403): the app is trusted, but a
        // raw publish to `sio:…` bypasses Socket.IO's own rules (reserved events, the socket's
        // private room), and `POST /emit` already reaches Socket.IO rooms the proper way.
        for (i, p) in items.iter().enumerate() {
            let at = if batch {
                format!("[{i}].")
            } else {
                String::new()
            };
            if p.topic.is_empty() {
                return error(
                    StatusCode::BAD_REQUEST,
                    format!("{at}topic: must not be empty"),
                );
            }
            if let Err(e) = self.hub.check_topic_name(&p.topic) {
                let shown: String = p.topic.chars().take(64).collect();
                tracing::warn!(topic = %shown, error = %e, "publish API: topic refused");
                return error(e.status(), format!("{at}topic: {e}"));
            }
        }
        // Every message is sent before any answer is awaited: in a fleet, a batch then costs
        // one round trip to Redis, not one per message, and keeps its order.
        // With socket.io's Redis adapter on, the other servers' sockets in the topic's room get
        // each message the fleet took (a copy kept for them until it is known to be taken).
        let peers = self.socketio.as_ref().filter(|io| io.has_peers());
        let mut sending = Vec::with_capacity(items.len());
        for (i, p) in items.into_iter().enumerate() {
            let event = p.event.unwrap_or_else(|| DEFAULT_EVENT.to_string());
            let payload = Payload::new(event, p.data);
            let for_peers = peers.map(|_| payload.clone());
            let sent = match &key {
                Some(k) => {
                    let k = if batch { format!("{k}#{i}") } else { k.clone() };
                    Sending::Keyed(self.hub.send_idempotent(&k, &p.topic, payload, None))
                }
                None => Sending::Plain(self.hub.send(&p.topic, payload, None)),
            };
            let failed = sent.failed_at_once();
            sending.push((p.topic, sent, for_peers));
            if failed {
                // Nothing after a refused message is sent (the publishes before it were).
                break;
            }
        }
        let mut results = Vec::with_capacity(sending.len());
        for (topic, sent, for_peers) in sending {
            let outcome = match sent {
                Sending::Keyed(s) => s.await.map(|r| (r.position, r.duplicate)),
                Sending::Plain(s) => s.await.map(|pos| (pos, false)),
            };
            match outcome {
                Ok((pos, duplicate)) => {
                    // A retry's duplicate was handed over the first time.
                    if let (Some(io), Some(payload), false) = (peers, &for_peers, duplicate) {
                        io.publish_to_peers(&topic, payload);
                    }
                    let mut r = json!({
                        "topic": topic,
                        "seq": pos.seq,
                        "epoch": pos.epoch.to_string(),
                        "position": pos.to_string(),
                    });
                    if duplicate {
                        r["duplicate"] = Value::Bool(true);
                    }
                    results.push(r);
                }
                Err(e) => {
                    let status = match e {
                        HubError::KeyTooLong { .. } | HubError::KeyConflict { .. } => {
                            StatusCode::BAD_REQUEST
                        }
                        _ => StatusCode::SERVICE_UNAVAILABLE,
                    };
                    if e.is_unavailable() {
                        tracing::warn!(topic = %topic, error = %e, "publish API: not published");
                    }
                    return error(status, e.to_string());
                }
            }
        }
        if batch {
            json_response(StatusCode::OK, Value::Array(results))
        } else {
            json_response(StatusCode::OK, results.remove(0))
        }
    }

    fn topic(&self, name: &str) -> Response {
        match self.hub.topic_info(name) {
            Some(info) => json_response(
                StatusCode::OK,
                json!({
                    "topic": name,
                    "subscribers": info.subscribers,
                    "seq": info.position.seq,
                    "epoch": info.position.epoch.to_string(),
                    "position": info.position.to_string(),
                    "retained": info.retained,
                }),
            ),
            None => error(StatusCode::NOT_FOUND, format!("no such topic: {name}")),
        }
    }

    fn members(&self, name: &str) -> Response {
        if !presence::is_presence(name) {
            return error(
                StatusCode::NOT_FOUND,
                format!(
                    "not a presence topic: {name} (their names start with {})",
                    crate::access::PRESENCE_PREFIX
                ),
            );
        }
        let members = self.presence.list(name);
        let (count, connections) = self.presence.count(name);
        json_response(
            StatusCode::OK,
            json!({
                "topic": name,
                "count": count,
                "connections": connections,
                "members": members_json(&members),
            }),
        )
    }
}

/// Why a request is refused: its status and message (the JSON error answer).
struct Refused(StatusCode, String);

impl From<Refused> for Response {
    fn from(r: Refused) -> Response {
        error(r.0, r.1)
    }
}

/// What a failed question to the other servers answers: 504 when one did not answer in time,
/// 503 when they cannot be reached.
fn peers_error(e: PeersError) -> Response {
    let status = match e {
        PeersError::Timeout { .. } => StatusCode::GATEWAY_TIMEOUT,
        PeersError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
    };
    error(status, e.to_string())
}

/// One socket's acknowledgement as JSON: its arguments, with binary ones (placeholders on the
/// wire) given base64-encoded in `binary`, indexed by the placeholders' `num`.
fn ack_json(socket: Option<&str>, args: Args) -> Value {
    let mut answer = json!({"socket": socket, "args": args.values});
    if !args.binaries.is_empty() {
        let engine = base64::engine::general_purpose::STANDARD;
        answer["binary"] = args
            .binaries
            .iter()
            .map(|b| Value::String(engine.encode(b)))
            .collect();
    }
    answer
}

#[async_trait::async_trait]
impl Service for PublishApi {
    async fn call(&self, req: Request) -> Response {
        if !self.authorized(&req) {
            if let Response::Full(mut r) =
                error(StatusCode::UNAUTHORIZED, "a valid bearer token is required")
            {
                r.headers_mut().insert(
                    http::header::WWW_AUTHENTICATE,
                    http::HeaderValue::from_static("Bearer"),
                );
                return Response::Full(r);
            }
        }
        let path = req.head.uri.path().to_string();
        if path == "/publish" {
            return match req.head.method {
                http::Method::POST => self.publish(req).await,
                _ => error(StatusCode::METHOD_NOT_ALLOWED, "use POST /publish"),
            };
        }
        if path == "/emit" {
            return match req.head.method {
                http::Method::POST => self.emit(req).await,
                _ => error(StatusCode::METHOD_NOT_ALLOWED, "use POST /emit"),
            };
        }
        match path.as_str() {
            "/sockets" | "/rooms" => {
                return match (req.head.method.clone(), path.as_str()) {
                    (http::Method::GET, "/sockets") => self.fetch_sockets(&req).await,
                    (http::Method::GET, _) => self.all_rooms(&req).await,
                    _ => error(StatusCode::METHOD_NOT_ALLOWED, format!("use GET {path}")),
                };
            }
            "/sockets/join" | "/sockets/leave" | "/sockets/disconnect" => {
                return match req.head.method {
                    http::Method::POST => self.sockets(req, &path).await,
                    _ => error(StatusCode::METHOD_NOT_ALLOWED, format!("use POST {path}")),
                };
            }
            _ => {}
        }
        if let Some(name) = path.strip_prefix("/topics/") {
            // Split before decoding: an escaped slash is part of the name.
            let (name, members) = match name.strip_suffix("/members") {
                Some(topic) => (topic, true),
                None => (name, false),
            };
            let name = percent_encoding::percent_decode_str(name)
                .decode_utf8_lossy()
                .into_owned();
            return match (req.head.method, members) {
                (http::Method::GET, false) => self.topic(&name),
                (http::Method::GET, true) => self.members(&name),
                _ => error(StatusCode::METHOD_NOT_ALLOWED, "use GET /topics/<topic>"),
            };
        }
        error(StatusCode::NOT_FOUND, format!("no such endpoint: {path}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::seam::Body as SeamBody;
    use bytes::Bytes;

    fn request(method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> Request {
        let mut b = http::Request::builder().method(method).uri(path);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        let (head, ()) = b.body(()).expect("request").into_parts();
        let mut r = Request::new(head);
        r.body = SeamBody::from_bytes(Bytes::from(body.to_string()));
        r
    }

    async fn call(api: &PublishApi, r: Request) -> (StatusCode, Value) {
        match api.call(r).await {
            Response::Full(resp) => (
                resp.status(),
                serde_json::from_slice(resp.body()).expect("json body"),
            ),
            _ => panic!("a full response"),
        }
    }

    #[tokio::test]
    async fn emit_without_socketio_is_a_clear_404() {
        let api = PublishApi::new(Hub::default(), None);
        let body = r#"{"event":"x","timeout_ms":100}"#;
        let (s, v) = call(&api, request("POST", "/emit", &[], body)).await;
        assert_eq!(s, 404, "{v}");
        assert!(v["error"].as_str().unwrap_or("").contains("not enabled"));
        let (s, _) = call(&api, request("GET", "/emit", &[], "")).await;
        assert_eq!(s, 405);
    }

    #[tokio::test]
    async fn emit_to_an_empty_room_answers_at_once() {
        let hub = Hub::default();
        let io = SocketIo::new(hub.clone(), Default::default());
        io.namespace("/", |_| std::future::ready(Ok(())));
        let api = PublishApi::new(hub, None).with_socketio(io);
        let body = r#"{"room":"nobody","event":"x","timeout_ms":60000}"#;
        let (s, v) = call(&api, request("POST", "/emit", &[], body)).await;
        assert_eq!(s, 200, "{v}");
        assert_eq!(v, json!({"sockets": 0, "acks": [], "failed": []}));
        let over = r#"{"event":"x","timeout_ms":60001}"#;
        let (s, v) = call(&api, request("POST", "/emit", &[], over)).await;
        assert_eq!(s, 400, "{v}");
    }

    #[tokio::test]
    async fn the_server_side_socket_api_answers_from_this_node_without_peers() {
        let api = PublishApi::new(Hub::default(), None);
        let (s, v) = call(&api, request("GET", "/sockets", &[], "")).await;
        assert_eq!(s, 404, "{v}");
        assert!(
            v["error"].as_str().unwrap_or("").contains("/sockets needs"),
            "{v}"
        );
        let hub = Hub::default();
        let io = SocketIo::new(hub.clone(), Default::default());
        io.namespace("/", |_| std::future::ready(Ok(())));
        let api = PublishApi::new(hub, None).with_socketio(io);
        let (s, v) = call(&api, request("GET", "/sockets?room=r1&except=r2", &[], "")).await;
        assert_eq!((s, v), (StatusCode::OK, json!({"sockets": []})));
        let (s, v) = call(&api, request("GET", "/rooms", &[], "")).await;
        assert_eq!((s, v), (StatusCode::OK, json!({"rooms": []})));
        let (s, v) = call(&api, request("GET", "/rooms?namespace=/nope", &[], "")).await;
        assert_eq!(s, 404, "{v}");
        let join = r#"{"rooms":["r1"],"join":["r2"]}"#;
        let (s, v) = call(&api, request("POST", "/sockets/join", &[], join)).await;
        assert_eq!((s, v), (StatusCode::OK, json!({"ok": true})));
        let (s, _) = call(
            &api,
            request("POST", "/sockets/leave", &[], r#"{"leave":["r2"]}"#),
        )
        .await;
        assert_eq!(s, 200);
        let (s, _) = call(
            &api,
            request("POST", "/sockets/disconnect", &[], r#"{"close":true}"#),
        )
        .await;
        assert_eq!(s, 200);
        // Each endpoint's own fields only; room names checked; the right method.
        let (s, _) = call(&api, request("POST", "/sockets/leave", &[], join)).await;
        assert_eq!(s, 400);
        let (s, v) = call(
            &api,
            request("POST", "/sockets/join", &[], r#"{"join":[""]}"#),
        )
        .await;
        assert_eq!(s, 400, "{v}");
        assert!(
            v["error"].as_str().unwrap_or("").starts_with("join: "),
            "{v}"
        );
        let (s, _) = call(&api, request("POST", "/sockets", &[], "{}")).await;
        assert_eq!(s, 405);
        let (s, _) = call(&api, request("GET", "/sockets/join", &[], "")).await;
        assert_eq!(s, 405);
    }

    #[tokio::test]
    async fn publish_reports_the_position_and_retries_count_once() {
        let hub = Hub::default();
        let api = PublishApi::new(hub.clone(), None);
        let body = r#"{"topic":"news","event":"headline","data":{"t":"hi"}}"#;
        let (s, v) = call(&api, request("POST", "/publish", &[], body)).await;
        assert_eq!(s, 200, "{v}");
        assert_eq!(v["seq"], 1);
        let key = [("idempotency-key", "abc")];
        let (_, first) = call(&api, request("POST", "/publish", &key, body)).await;
        let (_, again) = call(&api, request("POST", "/publish", &key, body)).await;
        assert_eq!(first["seq"], 2);
        assert_eq!(again["seq"], 2);
        assert_eq!(again["duplicate"], true);
        let (s, info) = call(&api, request("GET", "/topics/news", &[], "")).await;
        assert_eq!(s, 200);
        assert_eq!(info["seq"], 2);
    }

    #[tokio::test]
    async fn presence_members_are_listed_per_user() {
        let hub = Hub::default();
        let presence = Presence::default();
        let api = PublishApi::new(hub.clone(), None).with_presence(presence.clone());
        let (s, v) = call(
            &api,
            request("GET", "/topics/presence-room/members", &[], ""),
        )
        .await;
        assert_eq!(s, 200, "{v}");
        assert_eq!(
            v,
            json!({"topic": "presence-room", "count": 0, "connections": 0, "members": []})
        );
        let ann = crate::access::Member {
            user_id: json!(1),
            user_info: json!({"name": "Ann"}),
        };
        for tab in [hub.subscribe().expect("tab"), hub.subscribe().expect("tab")] {
            presence
                .enter(&hub, "presence-room", tab.id(), Some(&ann), |_| {
                    Ok::<(), ()>(())
                })
                .expect("entered");
        }
        let (_, v) = call(
            &api,
            request("GET", "/topics/presence-room/members", &[], ""),
        )
        .await;
        assert_eq!(
            v,
            json!({"topic": "presence-room", "count": 1, "connections": 2,
                   "members": [{"user_id": 1, "user_info": {"name": "Ann"}}]})
        );
        // The topic's own info is still there, escaped names too.
        let (s, v) = call(&api, request("GET", "/topics/presence-room", &[], "")).await;
        assert_eq!((s.as_u16(), v["seq"].clone()), (200, json!(1)), "{v}");
        let (s, v) = call(&api, request("GET", "/topics/news/members", &[], "")).await;
        assert_eq!(s, 404, "{v}");
        assert!(v["error"]
            .as_str()
            .unwrap_or("")
            .contains("not a presence topic"));
        let (s, _) = call(
            &api,
            request("GET", "/topics/presence-a%2Fmembers", &[], ""),
        )
        .await;
        assert_eq!(s, 404, "the topic presence-a/members does not exist");
        let (s, _) = call(
            &api,
            request("POST", "/topics/presence-room/members", &[], ""),
        )
        .await;
        assert_eq!(s, 405);
    }

    #[tokio::test]
    async fn batches_are_validated_before_anything_is_published() {
        let hub = Hub::default();
        let api = PublishApi::new(hub.clone(), None);
        let (s, v) = call(
            &api,
            request(
                "POST",
                "/publish",
                &[],
                r#"[{"topic":"a","data":1},{"topic":"","data":2}]"#,
            ),
        )
        .await;
        assert_eq!(s, 400);
        assert_eq!(v["error"], "[1].topic: must not be empty");
        assert!(hub.topic_info("a").is_none(), "half a batch was published");
        let (s, v) = call(
            &api,
            request(
                "POST",
                "/publish",
                &[],
                r#"[{"topic":"a","data":1},{"topic":"b"}]"#,
            ),
        )
        .await;
        assert_eq!(s, 200);
        assert_eq!(v.as_array().map(|a| a.len()), Some(2));
    }

    #[tokio::test]
    async fn bad_input_gets_clear_errors() {
        let api = PublishApi::new(Hub::default(), Some("s3cret".into()));
        let auth = [("authorization", "Bearer s3cret")];
        let (s, v) = call(&api, request("POST", "/publish", &[], "{}")).await;
        assert_eq!(s, 401, "{v}");
        let (s, _) = call(
            &api,
            request(
                "POST",
                "/publish",
                &[("authorization", "Bearer nope")],
                "{}",
            ),
        )
        .await;
        assert_eq!(s, 401);
        let (s, v) = call(&api, request("POST", "/publish", &auth, "{nope")).await;
        assert_eq!(s, 400);
        assert!(
            v["error"]
                .as_str()
                .unwrap_or("")
                .starts_with("invalid JSON"),
            "{v}"
        );
        let (s, _) = call(
            &api,
            request("POST", "/publish", &auth, r#"{"topic":"a","x":1}"#),
        )
        .await;
        assert_eq!(s, 400, "unknown fields are refused");
        let big = format!(
            r#"{{"topic":"a","data":"{}"}}"#,
            "x".repeat(DEFAULT_MAX_BODY)
        );
        let (s, _) = call(&api, request("POST", "/publish", &auth, &big)).await;
        assert_eq!(s, 413);
        let (s, _) = call(&api, request("GET", "/publish", &auth, "")).await;
        assert_eq!(s, 405);
        let (s, _) = call(&api, request("GET", "/topics/none", &auth, "")).await;
        assert_eq!(s, 404);
    }

    #[tokio::test]
    async fn reserved_and_overlong_topics_are_refused() {
        let hub = Hub::default();
        let api = PublishApi::new(hub.clone(), None);
        let (s, v) = call(
            &api,
            request("POST", "/publish", &[], r#"{"topic":"sio:/","data":1}"#),
        )
        .await;
        assert_eq!(s, 403, "{v}");
        assert!(
            v["error"].as_str().unwrap_or("").contains("POST /emit"),
            "{v}"
        );
        assert!(hub.topic_info("sio:/").is_none());
        let body = format!(r#"[{{"topic":"a"}},{{"topic":"{}"}}]"#, "x".repeat(256));
        let (s, v) = call(&api, request("POST", "/publish", &[], &body)).await;
        assert_eq!(s, 400, "{v}");
        assert!(
            v["error"].as_str().unwrap_or("").starts_with("[1].topic: "),
            "{v}"
        );
        assert!(hub.topic_info("a").is_none());
    }
}
