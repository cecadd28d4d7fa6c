//! Events to the app: what clients send on the namespaces and endpoints that name their events
//! (Socket.IO events, `/ws` `pubsub.v1` `event` messages) is posted to the app as JSON, with who
//! the client is by the connect callback, and the app's JSON answer says what happens next:
//! acknowledge, emit to rooms or back to the sender, join or leave rooms, disconnect the sender.
//! So realtime logic lives in a Rails or Laravel controller, with no Node server beside the app
//! (what Centrifugo's RPC and publish proxies, and a socket.io app's event handlers, do).
//!
//! # The request
//!
//! `POST <realtime.events.path>` (`/realtime/events`), `Content-Type: application/json`, with the
//! same credential and forwarding headers as the authorization callbacks
//! ([`crate::access::CREDENTIAL_HEADERS`], `Host`, `X-Forwarded-*`, `X-Request-Id`), and the body
//! [`EventRequest::body`]:
//!
//! ```json
//! {"transport": "socketio", "namespace": "/", "event": "say", "args": ["hi"], "ack": true,
//!  "socket_id": "Xk3...", "user": {"id": 42, "info": {"name": "Ann"}}, "rooms": ["lobby"]}
//! ```
//!
//! `endpoint` (the route's path, `/ws`) stands in place of `namespace` for a `/ws` event, whose
//! `data` is the one argument. `user` is `null` for an anonymous client. `rooms` are the
//! socket's rooms (its own id's room left out), or the topics the `/ws` connection is
//! subscribed to. A binary Socket.IO argument arrives as `{"base64": "..."}` in its place.
//!
//! # The answer
//!
//! 2xx with a JSON object (every key optional; an empty body or `null` is an empty answer):
//!
//! ```json
//! {"ack": {"ok": true},
//!  "emit": [{"to": ["lobby"], "event": "said", "data": {"text": "hi"}, "except_sender": true},
//!           {"to": "sender", "event": "welcome", "data": "hello"}],
//!  "join": ["lobby"], "leave": ["hall"], "disconnect": false}
//! ```
//!
//! `data` and `ack` follow the publish API's rule: an array is the argument list, anything else
//! the one argument. `to` is `"sender"`, one room, or a list of rooms (a room named `sender` is
//! `["sender"]`). An unknown key, a missing `to` or `event`, an empty room name, or more than
//! [`MAX_EMITS`] emits or [`MAX_ROOMS`] rooms in one list make the whole answer unusable:
//! nothing of it is done, and the client's ack gets the error. The steps run in the order
//! leave, join, emit, ack, disconnect, so a room joined is one the emits reach.
//!
//! Any other answer is an error for the client ([`Failure`], `{"error": "...", "status": N}`
//! as the Socket.IO ack, an `error` frame on `/ws`), and a log line: 4xx is the app's refusal
//! (its `message` as the reason), 5xx and redirects the app failing, and so are no answer
//! within the timeout (504) and an app that cannot be reached (502, 503).
//!
//! # Bounds
//!
//! At most `max_in_flight` events of one connection wait for the app at once
//! ([`AppEvents::ask`]); the next one is refused at once with status 429, never queued. An
//! event's answer waits at most `timeout`. Events of one connection are posted concurrently,
//! and their answers applied as they come: a client that needs them in order waits for each
//! ack.
//!
//! This module is the transport-neutral part: the request's body, the answer's meaning (pure
//! functions), and the bound. The host posts ([`EventPoster`]); each transport applies answers
//! (`socketio::app_events`, `websocket`).

use std::collections::BTreeSet;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde_json::{json, Value};

use crate::access::{ClientInfo, Identity};
use crate::socketio::RESERVED_EVENTS;

/// Where the app's controller is, beside the connect callback's `/realtime/auth`.
pub const DEFAULT_PATH: &str = "/realtime/events";

/// How long a client waits for the app's answer before its ack is an error: the connect
/// callback's bound, for the same reason (a cold PHP worker fits, an app that needs longer is
/// down for a client waiting on an ack). Centrifugo's RPC proxy waits 1 s.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_millis(5_000);

/// Events of one connection waiting for the app at once: each holds a worker of the app's
/// pool, so one client cannot take them all, while a page sends a few at once (the same bound
/// as joins waiting for the app, `socketio::MAX_PENDING_JOINS`).
pub const DEFAULT_MAX_IN_FLIGHT: usize = 8;

/// Emits one answer may ask for.
pub const MAX_EMITS: usize = 64;

/// Rooms one list of an answer (`to`, `join`, `leave`) may name: a client is in at most 64
/// rooms it chose (`socketio::MAX_CLIENT_ROOMS`, `/ws`'s `max_subscriptions`).
pub const MAX_ROOMS: usize = 64;

/// In a list of event names: every event.
pub const ALL: &str = "*";

/// Which client events go to the app.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum EventNames {
    /// None (the default).
    #[default]
    None,
    /// Every event nothing else handles.
    All,
    /// These.
    Only(BTreeSet<String>),
}

impl EventNames {
    /// From a configured list: [`ALL`] anywhere is every event; an empty list is none.
    pub fn new<I, S>(names: I) -> EventNames
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let names: BTreeSet<String> = names.into_iter().map(Into::into).collect();
        if names.contains(ALL) {
            EventNames::All
        } else if names.is_empty() {
            EventNames::None
        } else {
            EventNames::Only(names)
        }
    }

    pub fn matches(&self, name: &str) -> bool {
        match self {
            EventNames::None => false,
            EventNames::All => true,
            EventNames::Only(names) => names.contains(name),
        }
    }

    pub fn is_none(&self) -> bool {
        *self == EventNames::None
    }
}

/// Where a client event comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin<'a> {
    SocketIo {
        namespace: &'a str,
    },
    /// A `/ws` endpoint, by its route's path.
    WebSocket {
        endpoint: &'a str,
    },
}

impl Origin<'_> {
    pub fn transport(&self) -> &'static str {
        match self {
            Origin::SocketIo { .. } => "socketio",
            Origin::WebSocket { .. } => "websocket",
        }
    }

    /// The namespace or the endpoint.
    pub fn place(&self) -> &str {
        match self {
            Origin::SocketIo { namespace } => namespace,
            Origin::WebSocket { endpoint } => endpoint,
        }
    }
}

/// What the app is told about one client event.
#[derive(Debug, Clone, Copy)]
pub struct EventRequest<'a> {
    pub origin: Origin<'a>,
    pub event: &'a str,
    pub args: &'a [Value],
    /// Whether the client waits for an acknowledgement.
    pub ack: bool,
    pub socket_id: &'a str,
    /// Who the connect callback said the client is.
    pub identity: &'a Identity,
    pub rooms: &'a [String],
}

impl EventRequest<'_> {
    /// The JSON body posted to the app, keys in the documented order.
    pub fn body(&self) -> Vec<u8> {
        let place = match self.origin {
            Origin::SocketIo { .. } => "namespace",
            Origin::WebSocket { .. } => "endpoint",
        };
        let user = match &self.identity.user_id {
            Some(id) => json!({"id": id, "info": self.identity.user_info}),
            None => Value::Null,
        };
        let mut body = serde_json::Map::new();
        body.insert("transport".into(), self.origin.transport().into());
        body.insert(place.into(), self.origin.place().into());
        body.insert("event".into(), self.event.into());
        body.insert("args".into(), Value::from(self.args.to_vec()));
        body.insert("ack".into(), self.ack.into());
        body.insert("socket_id".into(), self.socket_id.into());
        body.insert("user".into(), user);
        body.insert("rooms".into(), Value::from(self.rooms.to_vec()));
        Value::Object(body).to_string().into_bytes()
    }
}

/// What the app's answer asks for.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Answer {
    /// The acknowledgement (an array is its argument list); `None`: the app named none, and a
    /// client waiting for one gets an empty one.
    pub ack: Option<Value>,
    pub emit: Vec<Emit>,
    pub join: Vec<String>,
    pub leave: Vec<String>,
    pub disconnect: bool,
}

/// One event the app sends.
#[derive(Debug, Clone, PartialEq)]
pub struct Emit {
    pub to: Target,
    pub event: String,
    /// An array is the argument list, anything else the one argument.
    pub data: Value,
    /// Leave the sender out, though it is in a room named (Laravel's `toOthers()`, node's
    /// `socket.to(room)`).
    pub except_sender: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// The client that sent the event, only.
    Sender,
    /// Everyone in these rooms (Socket.IO rooms of the event's namespace, or hub topics).
    Rooms(Vec<String>),
}

/// Why a client event has no answer from the app: what its ack (or `/ws` error frame) says.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{error}")]
pub struct Failure {
    /// The app's own status for a 4xx or 5xx; 502, 503, 504 for an app that could not be
    /// asked or did not answer usably; 429 for a connection over its in-flight bound.
    pub status: u16,
    pub error: String,
    pub kind: FailureKind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// A 4xx: the app's own "no" (a validation error, a refusal).
    Refused,
    /// The app failing: 5xx, a redirect, an unusable answer, no answer in time, unreachable.
    Failed,
    /// The connection's events waiting for the app are at the bound: not posted.
    Busy,
}

impl Failure {
    pub fn failed(status: u16, error: impl Into<String>) -> Failure {
        Failure {
            status,
            error: error.into(),
            kind: FailureKind::Failed,
        }
    }

    /// What a client's ack gets: `{"error": "...", "status": N}`.
    pub fn to_json(&self) -> Value {
        json!({"error": self.error, "status": self.status})
    }
}

/// The keys of an answer, and of one of its emits.
const ANSWER_KEYS: [&str; 5] = ["ack", "emit", "join", "leave", "disconnect"];
const EMIT_KEYS: [&str; 4] = ["to", "event", "data", "except_sender"];

/// The word for the sender in `to`.
const SENDER: &str = "sender";

/// What the app's answer to an event means: its status first, then its JSON.
pub fn answer(status: u16, body: &[u8]) -> Result<Answer, Failure> {
    match status {
        200..=299 => {}
        400..=499 => {
            return Err(Failure {
                status,
                error: crate::access::answer::reason(status, body),
                kind: FailureKind::Refused,
            })
        }
        500..=599 => {
            return Err(Failure::failed(
                status,
                format!("the app failed to handle the event ({status})"),
            ))
        }
        _ => {
            return Err(Failure::failed(
                502,
                format!("the app answered {status} to the event"),
            ))
        }
    }
    if body.trim_ascii().is_empty() {
        return Ok(Answer::default());
    }
    let value: Value = serde_json::from_slice(body).map_err(|_| unusable("not JSON".into()))?;
    let mut map = match value {
        Value::Null => return Ok(Answer::default()),
        Value::Object(map) => map,
        _ => {
            return Err(unusable(
                "expected a JSON object with ack, emit, join, leave, disconnect".into(),
            ))
        }
    };
    known_keys(&map, "", &ANSWER_KEYS)?;
    let join = rooms("join", map.remove("join"))?;
    let leave = rooms("leave", map.remove("leave"))?;
    let disconnect = match map.remove("disconnect") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => b,
        Some(_) => return Err(unusable("`disconnect` must be true or false".into())),
    };
    let list = match map.remove("emit") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(list)) => list,
        Some(_) => return Err(unusable("`emit` must be a list".into())),
    };
    if list.len() > MAX_EMITS {
        return Err(unusable(format!(
            "`emit` has {} entries; at most {MAX_EMITS}",
            list.len()
        )));
    }
    let emit = list
        .into_iter()
        .enumerate()
        .map(|(i, e)| one_emit(i, e))
        .collect::<Result<_, _>>()?;
    Ok(Answer {
        ack: map.remove("ack").filter(|a| !a.is_null()),
        emit,
        join,
        leave,
        disconnect,
    })
}

fn one_emit(i: usize, value: Value) -> Result<Emit, Failure> {
    let Value::Object(mut e) = value else {
        return Err(unusable(format!("`emit[{i}]` must be an object")));
    };
    known_keys(&e, &format!("emit[{i}]."), &EMIT_KEYS)?;
    let event = match e.remove("event") {
        Some(Value::String(event))
            if !event.is_empty() && !RESERVED_EVENTS.contains(&event.as_str()) =>
        {
            event
        }
        Some(Value::String(event)) => {
            return Err(unusable(format!(
                "`emit[{i}].event` {event:?} is empty or reserved"
            )))
        }
        Some(_) => return Err(unusable(format!("`emit[{i}].event` must be a string"))),
        None => return Err(unusable(format!("`emit[{i}].event` is missing"))),
    };
    let except_sender = match e.remove("except_sender") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => b,
        Some(_) => {
            return Err(unusable(format!(
                "`emit[{i}].except_sender` must be true or false"
            )))
        }
    };
    let at = format!("emit[{i}].to");
    let to = match e.remove("to") {
        Some(Value::String(s)) if s == SENDER => Target::Sender,
        Some(Value::String(room)) => Target::Rooms(rooms(&at, Some(Value::from(vec![room])))?),
        Some(list @ Value::Array(_)) => Target::Rooms(rooms(&at, Some(list))?),
        Some(_) => {
            return Err(unusable(format!(
                "`{at}` must be \"sender\", a room or a list of rooms"
            )))
        }
        None => return Err(unusable(format!("`{at}` is missing"))),
    };
    match &to {
        Target::Rooms(list) if list.is_empty() => {
            return Err(unusable(format!("`{at}` names no room")))
        }
        Target::Sender if except_sender => {
            return Err(unusable(format!(
                "`emit[{i}]` is to the sender and except the sender"
            )))
        }
        _ => {}
    }
    Ok(Emit {
        to,
        event,
        data: e.remove("data").unwrap_or(Value::Null),
        except_sender,
    })
}

/// An unknown key is a mistake of the app's (`"emits"`), better told than ignored.
fn known_keys(
    map: &serde_json::Map<String, Value>,
    at: &str,
    known: &[&str],
) -> Result<(), Failure> {
    match map.keys().find(|k| !known.contains(&k.as_str())) {
        Some(key) => Err(unusable(format!(
            "unknown key `{at}{}` (known: {})",
            key.chars().take(64).collect::<String>(),
            known.join(", ")
        ))),
        None => Ok(()),
    }
}

/// A list of room names: absent or null is none.
fn rooms(at: &str, value: Option<Value>) -> Result<Vec<String>, Failure> {
    let list = match value {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Array(list)) => list,
        Some(_) => return Err(unusable(format!("`{at}` must be a list of room names"))),
    };
    if list.len() > MAX_ROOMS {
        return Err(unusable(format!(
            "`{at}` names {} rooms; at most {MAX_ROOMS}",
            list.len()
        )));
    }
    list.into_iter()
        .map(|room| match room {
            Value::String(room) if !room.is_empty() => Ok(room),
            Value::String(_) => Err(unusable(format!("`{at}` names an empty room"))),
            _ => Err(unusable(format!("`{at}` must be a list of room names"))),
        })
        .collect()
}

fn unusable(why: String) -> Failure {
    Failure::failed(502, format!("the app's answer is unusable: {why}"))
}

/// The host's way of posting an event to the app.
#[async_trait::async_trait]
pub trait EventPoster: Send + Sync + 'static {
    /// Posts `body` (JSON) to the app as a request of `client`: the app's status and body, or
    /// why it could not be asked (a [`FailureKind::Failed`]).
    async fn post(&self, client: &ClientInfo, body: Bytes) -> Result<(u16, Bytes), Failure>;
}

/// The app's events route, with its bounds. Cheap to clone.
#[derive(Clone)]
pub struct AppEvents {
    inner: Arc<Inner>,
}

struct Inner {
    poster: Arc<dyn EventPoster>,
    /// The app's path, for the log.
    path: String,
    timeout: Duration,
    max_in_flight: usize,
}

impl std::fmt::Debug for AppEvents {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppEvents")
            .field("path", &self.inner.path)
            .field("timeout", &self.inner.timeout)
            .field("max_in_flight", &self.inner.max_in_flight)
            .finish_non_exhaustive()
    }
}

/// One connection's events waiting for the app.
#[derive(Debug, Clone, Default)]
pub struct InFlight(Arc<AtomicUsize>);

impl InFlight {
    pub fn count(&self) -> usize {
        self.0.load(Ordering::Acquire)
    }
}

/// One place in [`InFlight`], given back when dropped (answered, failed, or abandoned).
struct Permit(Arc<AtomicUsize>);

impl Drop for Permit {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// An event on its way to the app: resolves to the app's answer, or why there is none (logged).
pub type Asking = Pin<Box<dyn Future<Output = Result<Answer, Failure>> + Send>>;

impl AppEvents {
    /// `path`: where `poster` posts, named in log lines.
    pub fn new(
        poster: Arc<dyn EventPoster>,
        path: impl Into<String>,
        timeout: Duration,
        max_in_flight: usize,
    ) -> AppEvents {
        AppEvents {
            inner: Arc::new(Inner {
                poster,
                path: path.into(),
                timeout,
                max_in_flight,
            }),
        }
    }

    pub fn timeout(&self) -> Duration {
        self.inner.timeout
    }

    pub fn max_in_flight(&self) -> usize {
        self.inner.max_in_flight
    }

    /// Posts one event of the connection whose waiting events are `in_flight`, or refuses it at
    /// once (429, logged) when `max_in_flight` of them wait already. `client` is built only for
    /// an event that is posted. The returned future holds the event's place until it resolves
    /// or is dropped.
    pub fn ask(
        &self,
        in_flight: &InFlight,
        client: impl FnOnce() -> ClientInfo,
        request: &EventRequest<'_>,
    ) -> Result<Asking, Failure> {
        let limit = self.inner.max_in_flight;
        let log = LogLine::new(&self.inner.path, request);
        if in_flight.0.fetch_add(1, Ordering::AcqRel) >= limit {
            in_flight.0.fetch_sub(1, Ordering::AcqRel);
            let failure = Failure {
                status: 429,
                error: format!(
                    "too many events waiting for the app (at most {limit} per connection)"
                ),
                kind: FailureKind::Busy,
            };
            log.failed(&failure);
            return Err(failure);
        }
        let permit = Permit(Arc::clone(&in_flight.0));
        let inner = Arc::clone(&self.inner);
        let client = client();
        let body = Bytes::from(request.body());
        Ok(Box::pin(async move {
            let _permit = permit;
            let posted =
                tokio::time::timeout(inner.timeout, inner.poster.post(&client, body)).await;
            let result = match posted {
                Ok(Ok((status, body))) => answer(status, &body),
                Ok(Err(failure)) => Err(failure),
                Err(_) => Err(Failure::failed(
                    504,
                    format!(
                        "the app did not answer within {} ms",
                        inner.timeout.as_millis()
                    ),
                )),
            };
            if let Err(failure) = &result {
                log.failed(failure);
            }
            result
        }))
    }
}

/// What a failure's log line names: the app's route, the transport and its place, the event
/// and the connection.
struct LogLine {
    path: String,
    transport: &'static str,
    place: String,
    event: String,
    socket: String,
}

impl LogLine {
    fn new(path: &str, r: &EventRequest<'_>) -> LogLine {
        let shown = |s: &str| s.chars().take(64).collect::<String>();
        LogLine {
            path: path.to_string(),
            transport: r.origin.transport(),
            place: shown(r.origin.place()),
            event: shown(r.event),
            socket: r.socket_id.to_string(),
        }
    }

    fn failed(&self, f: &Failure) {
        let LogLine {
            path,
            transport,
            place,
            event,
            socket,
        } = self;
        match f.kind {
            FailureKind::Refused => {
                tracing::info!(route = %path, transport, at = %place, event = %event, socket = %socket, status = f.status, reason = %f.error, "app event refused by the app")
            }
            FailureKind::Failed | FailureKind::Busy => {
                tracing::warn!(route = %path, transport, at = %place, event = %event, socket = %socket, status = f.status, error = %f.error, "app event failed")
            }
        }
    }
}

/// Which events of a namespace or endpoint go to the app, and the app's route.
#[derive(Debug, Clone)]
pub struct EventRoute {
    pub names: EventNames,
    pub app: AppEvents,
}

#[cfg(test)]
mod tests;
