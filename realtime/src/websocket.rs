//! Raw WebSocket endpoints (`/ws`), for clients that do not speak Socket.IO.
//!
//! The subprotocol the client asks for picks the behaviour:
//! - `beej-chat-protocol`: a chat room of JSON messages `{"type": T, "payload": {...}}`
//!   (`chat-join`, `chat-message`, and `chat-leave` sent by the server when a client goes).
//! - `pubsub.v1` ([`PUBSUB`]): subscribe to hub topics with an optional resume position,
//!   publish, and receive messages with topic, seq and epoch, or a reset when a gap cannot be
//!   filled. The message shapes are [`PubSubIn`] and [`PubSubOut`].
//! - none (when the endpoint allows it): one broadcast room where every client hears of each
//!   arrival and departure by id and receives every message as `<id>: <text>`.
//!
//! Every endpoint checks `Origin` before the `101` (cross-site WebSocket hijacking), bounds
//! message size (close 1009) and each client's queue (a slow reader is closed with 1013 and
//! counted by the hub), pings idle clients, and closes with 1001 when the gateway shuts down.
//! A pub/sub client may not use reserved topics (`sio:`, `ws:`), overlong names, more than
//! [`WsConfig::max_subscriptions`] subscriptions, or more new topics than its address's budget
//! ([`crate::topics`]), nor subscribe to a private topic without the app's word or publish
//! where the policy does not let clients ([`crate::access`]): each refusal is an `error` frame
//! and the connection goes on. So is a publish the hub could not take (in a fleet, while Redis
//! is unreachable), with the publish's `id`; messages a fleet lost to this node are a `reset`
//! frame. A chat or broadcast-room message that cannot be published closes the connection with
//! 1013 and the reason. With a connect callback, the upgrade itself is asked about first
//! (401/403 before the 101), and a pub/sub client starts subscribed to the rooms the app named.
//! On an endpoint whose `events` name them, a pub/sub client's `event` messages go to the app,
//! whose answer acks, emits, subscribes, unsubscribes or closes (module `app_events`).
//!
//! A pub/sub subscription to a presence topic makes the connection one of the topic's tabs
//! ([`crate::access::presence`]), as the member the app's answer (or the connect answer)
//! names, until it unsubscribes or goes: after `subscribed` and what it resumes comes
//! `{"op":"members","topic","members":[{"user_id","user_info"},...]}`, then the news as
//! ordinary messages, `{"op":"message","event":"presence:joining"|"presence:leaving","data":
//! <member>,...}` (not its own).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::stream::FusedStream;
use futures_util::{SinkExt, StreamExt};
use http::StatusCode;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio::io::AsyncReadExt;
use tokio::sync::mpsc::UnboundedReceiver;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role};
use tokio_tungstenite::tungstenite::{Error as WsError, Message as WsMessage};
use tokio_tungstenite::WebSocketStream;

use crate::access::presence::{self, members_json, Stay};
use crate::access::{self, Access, ClientInfo, Identity, Who};
use crate::app_events::EventRoute;
use crate::hub::{self, Hub, JoinOutcome, Position, Subscriber};
use crate::seam::{websocket_accept, Request, Response, Service, Upgraded};

mod app_events;
use app_events::{Answered, ToApp};

/// Prefix of the hub topics of the endpoints' chat and broadcast rooms (`ws:<path>:chat`):
/// reserved ([`crate::topics`]), so only the endpoint itself reaches them.
pub const TOPIC_PREFIX: &str = crate::topics::WEBSOCKET_PREFIX;

/// This transport's name in authorization log lines.
const TRANSPORT: &str = "websocket";

pub const CHAT: &str = "beej-chat-protocol";
pub const PUBSUB: &str = "pubsub.v1";

/// Messages above this close the connection with 1009. tungstenite's default (64 MiB) is an
/// upload limit, not a chat limit; 64 KiB is generous for chat lines and pub/sub events.
pub const DEFAULT_MAX_MESSAGE: usize = 64 * 1024;
/// Socket.IO's heartbeat values: a ping every 25 s, and 20 s to answer it.
pub const DEFAULT_PING_INTERVAL: Duration = Duration::from_secs(25);
pub const DEFAULT_PING_TIMEOUT: Duration = Duration::from_secs(20);
/// Messages waiting for one slow reader before it is closed with 1013.
pub const DEFAULT_QUEUE: usize = 256;
/// Topics one pub/sub connection may be subscribed to at once: Socket.IO's built-in
/// `client_rooms` allow 64 rooms per socket, and a page needs a handful.
pub const DEFAULT_MAX_SUBSCRIPTIONS: usize = 64;

#[derive(Debug, Clone)]
pub struct WsConfig {
    /// Subprotocols this endpoint speaks (a subset of [`CHAT`], [`PUBSUB`]).
    pub protocols: Vec<String>,
    /// Whether a client that asks for no subprotocol joins the broadcast room.
    pub allow_plain: bool,
    /// Accepted `Origin` values (`*` for any). Empty: only same-origin requests (the Origin's
    /// host equals the Host header) and clients that send no Origin (non-browsers).
    pub allowed_origins: Vec<String>,
    pub max_message: usize,
    pub ping_interval: Duration,
    pub ping_timeout: Duration,
    pub queue: usize,
    /// See [`DEFAULT_MAX_SUBSCRIPTIONS`].
    pub max_subscriptions: usize,
    /// `pubsub.v1` `event` messages posted to the app ([`crate::app_events`]): the names
    /// this endpoint sends, and the app's route. `None`: every `event` is refused.
    pub events: Option<EventRoute>,
}

impl Default for WsConfig {
    fn default() -> Self {
        WsConfig {
            protocols: vec![CHAT.to_string(), PUBSUB.to_string()],
            allow_plain: true,
            allowed_origins: Vec::new(),
            max_message: DEFAULT_MAX_MESSAGE,
            ping_interval: DEFAULT_PING_INTERVAL,
            ping_timeout: DEFAULT_PING_TIMEOUT,
            queue: DEFAULT_QUEUE,
            max_subscriptions: DEFAULT_MAX_SUBSCRIPTIONS,
            events: None,
        }
    }
}

/// One endpoint (one route).
pub struct WsEndpoint {
    hub: Hub,
    config: Arc<WsConfig>,
    /// Prefix of the hub topics of this endpoint's chat and broadcast rooms, so two endpoints
    /// never share a room by accident.
    name: Arc<str>,
    /// Who may connect, and subscribe and publish to which `pubsub.v1` topic
    /// ([`crate::access`]).
    access: Access,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Chat,
    PubSub,
    Plain,
}

/// What a pub/sub client sends.
#[derive(Debug, Deserialize, PartialEq)]
#[serde(tag = "op", rename_all = "lowercase", deny_unknown_fields)]
pub enum PubSubIn {
    Subscribe {
        topic: String,
        #[serde(default)]
        since: Option<String>,
    },
    Unsubscribe {
        topic: String,
    },
    Publish {
        topic: String,
        #[serde(default)]
        event: Option<String>,
        #[serde(default)]
        data: Value,
        /// Echoed in the `published` answer, so a client can match answers to requests.
        #[serde(default)]
        id: Option<Value>,
    },
    /// An event for the app ([`crate::app_events`]): `data` is its one argument (none when
    /// absent or null); with an `id`, the app's acknowledgement comes back as an `ack`.
    Event {
        event: String,
        #[serde(default)]
        data: Value,
        #[serde(default)]
        id: Option<Value>,
    },
}

/// What a pub/sub client receives.
#[derive(Debug, Serialize, PartialEq)]
#[serde(tag = "op", rename_all = "lowercase")]
pub enum PubSubOut {
    Subscribed {
        topic: String,
        position: String,
    },
    /// The resume position could not be served: messages were missed; live delivery goes on
    /// from `position`.
    Reset {
        topic: String,
        since: Option<String>,
        position: String,
    },
    Unsubscribed {
        topic: String,
    },
    /// A presence topic's members, once the subscription's replay is out.
    Members {
        topic: String,
        members: Value,
    },
    Message {
        topic: String,
        event: String,
        data: Value,
        seq: u64,
        epoch: String,
        position: String,
    },
    Published {
        topic: String,
        seq: u64,
        epoch: String,
        position: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<Value>,
    },
    Error {
        message: String,
        /// The `id` of the publish or event this answers, when it was one that gave an id.
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<Value>,
    },
    /// The app's acknowledgement of the `event` with this `id` (`null` when it named none).
    Ack {
        id: Value,
        data: Value,
    },
    /// An event the app sent to this connection alone.
    Event {
        event: String,
        data: Value,
    },
}

impl PubSubOut {
    fn text(&self) -> WsMessage {
        WsMessage::text(serde_json::to_string(self).unwrap_or_default())
    }
}

/// Why a chat message closes the connection (1007).
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum ChatError {
    #[error("not JSON: {0}")]
    NotJson(String),
    #[error("missing field: {0}")]
    Missing(&'static str),
}

/// What a chat message asks for; pure, so the protocol rules are tested without a socket.
#[derive(Debug, PartialEq, Eq)]
pub enum ChatAction {
    /// Broadcast this (already trimmed) message.
    Broadcast {
        kind: &'static str,
        payload: Value,
        username: String,
    },
    /// Nothing to send (an empty message, dropped).
    Drop,
    /// An unknown type, logged and ignored.
    Unknown(String),
}

pub fn chat_action(text: &str) -> Result<ChatAction, ChatError> {
    let v: Value = serde_json::from_str(text).map_err(|e| ChatError::NotJson(e.to_string()))?;
    let kind = v
        .get("type")
        .and_then(Value::as_str)
        .ok_or(ChatError::Missing("type"))?;
    let field = |name: &'static str| {
        v.get("payload")
            .and_then(|p| p.get(name))
            .and_then(Value::as_str)
            .map(|s| s.trim().to_string())
            .ok_or(ChatError::Missing(name))
    };
    match kind {
        "chat-join" => {
            let username = field("username")?;
            Ok(ChatAction::Broadcast {
                kind: "chat-join",
                payload: json!({ "username": username }),
                username,
            })
        }
        "chat-message" => {
            let username = field("username")?;
            let message = field("message")?;
            if message.is_empty() {
                return Ok(ChatAction::Drop);
            }
            Ok(ChatAction::Broadcast {
                kind: "chat-message",
                payload: json!({ "username": username, "message": message }),
                username,
            })
        }
        other => Ok(ChatAction::Unknown(other.to_string())),
    }
}

/// The longest close reason: a control frame carries at most 125 bytes (RFC 6455 §5.5), two
/// of them the code. A longer reason makes the whole frame a protocol error for the client.
const MAX_CLOSE_REASON: usize = 123;

/// A close frame; its reason cut to [`MAX_CLOSE_REASON`] bytes at a character boundary (a
/// serde error naming every request the client could have sent runs longer).
fn close(code: CloseCode, reason: &str) -> WsMessage {
    let mut end = reason.len().min(MAX_CLOSE_REASON);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    WsMessage::Close(Some(CloseFrame {
        code,
        reason: reason[..end].to_string().into(),
    }))
}

fn origin_allowed(config: &WsConfig, req: &Request) -> Result<(), String> {
    let Some(origin) = req.header("origin") else {
        return Ok(());
    };
    if config
        .allowed_origins
        .iter()
        .any(|o| o == "*" || o == origin)
    {
        return Ok(());
    }
    if config.allowed_origins.is_empty() {
        let origin_host = origin.split_once("://").map(|(_, h)| h).unwrap_or(origin);
        if req
            .header("host")
            .is_some_and(|h| h.eq_ignore_ascii_case(origin_host))
        {
            return Ok(());
        }
    }
    Err(origin.to_string())
}

impl WsEndpoint {
    /// `name` becomes the prefix of the endpoint's room topics, in the reserved `ws:` namespace
    /// (prepended when missing).
    pub fn new(hub: Hub, name: &str, config: WsConfig, access: Access) -> WsEndpoint {
        let name = if name.starts_with(TOPIC_PREFIX) {
            name.to_string()
        } else {
            format!("{TOPIC_PREFIX}{name}")
        };
        WsEndpoint {
            hub,
            config: Arc::new(config),
            name: Arc::from(name),
            access,
        }
    }

    fn choose(&self, req: &Request) -> Result<(Mode, Option<String>), Box<Response>> {
        let offered: Vec<String> = req
            .head
            .headers
            .get_all("sec-websocket-protocol")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(|p| p.trim().to_string())
            .filter(|p| !p.is_empty())
            .collect();
        if offered.is_empty() {
            if self.config.allow_plain {
                return Ok((Mode::Plain, None));
            }
            return Err(Box::new(Response::text(
                StatusCode::BAD_REQUEST,
                format!(
                    "a subprotocol is required: {}\n",
                    self.config.protocols.join(", ")
                ),
            )));
        }
        for p in &offered {
            if self.config.protocols.iter().any(|k| k == p) {
                let mode = if p == CHAT { Mode::Chat } else { Mode::PubSub };
                return Ok((mode, Some(p.clone())));
            }
        }
        tracing::warn!(endpoint = %self.name, offered = %offered.join(", "), "websocket refused: Unknown protocol");
        Err(Box::new(Response::text(
            StatusCode::BAD_REQUEST,
            "Unknown protocol\n",
        )))
    }
}

#[async_trait::async_trait]
impl Service for WsEndpoint {
    async fn call(&self, req: Request) -> Response {
        if let Err(origin) = origin_allowed(&self.config, &req) {
            tracing::warn!(endpoint = %self.name, origin = %origin, "websocket refused: origin not allowed");
            return Response::text(
                StatusCode::FORBIDDEN,
                format!("origin not allowed: {origin}\n"),
            );
        }
        let (mode, protocol) = match self.choose(&req) {
            Ok(m) => m,
            Err(resp) => return *resp,
        };
        let head = match websocket_accept(&req, protocol.as_deref()) {
            Ok(h) => h,
            Err(refusal) => return refusal.into(),
        };
        // The app's word before the 101: a refused client gets 401/403 with the app's reason
        // and never an open connection.
        let identity = match self.access.connect_request(&req, TRANSPORT).await {
            Ok(identity) => identity,
            Err(refusal) => return refusal.response(),
        };
        let sub = match self.hub.subscribe_with_capacity(self.config.queue) {
            Ok(s) => s,
            Err(e) => return Response::text(StatusCode::SERVICE_UNAVAILABLE, format!("{e}\n")),
        };
        let (answered, answers) = tokio::sync::mpsc::unbounded_channel();
        let conn = Connection {
            hub: self.hub.clone(),
            config: self.config.clone(),
            room: format!(
                "{}:{}",
                self.name,
                if mode == Mode::Chat { "chat" } else { "plain" }
            ),
            id: format!("{:x}", sub.id().raw()),
            sub,
            mode,
            client: req.client_ip(),
            access: self.access.clone(),
            // Kept for the app's questions about later subscriptions.
            info: (mode == Mode::PubSub).then(|| ClientInfo::kept(&req)),
            identity,
            stays: Mutex::default(),
            to_app: self.to_app(mode, answered),
        };
        // Join the room before the 101 goes out: a client that sees its connection open must
        // already hear everything said in the room from then on.
        if conn.mode != Mode::PubSub {
            if let Err(e) = conn.sub.join(&conn.room, None) {
                return Response::text(StatusCode::SERVICE_UNAVAILABLE, format!("{e}\n"));
            }
        }
        Response::Upgrade {
            head,
            on_upgrade: Box::new(move |io| Box::pin(conn.run(io, answers))),
        }
    }
}

struct Connection {
    hub: Hub,
    config: Arc<WsConfig>,
    room: String,
    id: String,
    sub: Subscriber,
    mode: Mode,
    /// The client's address, for its new-topic budget.
    client: Option<std::net::IpAddr>,
    access: Access,
    /// The upgrade request as the app is told about it (`pubsub.v1` only).
    info: Option<ClientInfo>,
    /// Who the app said the client is; its rooms are subscribed to at once (`pubsub.v1`).
    identity: Identity,
    /// The presence topics the connection is a member of, until it unsubscribes or goes.
    stays: Mutex<HashMap<String, Stay>>,
    /// Events to the app (`pubsub.v1` on an endpoint that names some).
    to_app: Option<ToApp>,
}

/// How a connection ended, for the close frame.
enum End {
    Close(CloseCode, String),
    Gone,
}

impl Connection {
    async fn run(self, io: Upgraded, mut answers: UnboundedReceiver<Answered>) {
        let ws_config = crate::seam::ws_config()
            .max_message_size(Some(self.config.max_message))
            .max_frame_size(Some(self.config.max_message));
        let mut ws = WebSocketStream::from_raw_socket(io, Role::Server, Some(ws_config)).await;
        let mut username: Option<String> = None;

        // The rooms the app put the client in are subscribed to before anything else.
        if self.mode == Mode::PubSub {
            for topic in self.identity.rooms.clone() {
                let request = PubSubIn::Subscribe { topic, since: None };
                for answer in self.pubsub(request, false).await {
                    if ws.send(answer).await.is_err() {
                        return;
                    }
                }
            }
        }
        if self.mode == Mode::Plain {
            self.notice("text", json!(format!("{} connected", self.id)), None)
                .await;
        }

        let end = self.serve(&mut ws, &mut username, &mut answers).await;
        match self.mode {
            Mode::Chat => {
                if let Some(u) = username {
                    self.notice("chat-leave", json!({"username": u}), Some(self.sub.id()))
                        .await;
                }
            }
            Mode::Plain => {
                self.notice(
                    "text",
                    json!(format!("{} disconnected", self.id)),
                    Some(self.sub.id()),
                )
                .await;
            }
            Mode::PubSub => {}
        }
        if let End::Close(code, reason) = end {
            let _ = ws.send(close(code, &reason)).await;
            let _ = tokio::time::timeout(Duration::from_secs(2), async {
                if ws.is_terminated() {
                    // After a read error (a message over the limit is refused at its frame
                    // header) the stream is fused, and the rest of that message is still on
                    // its way: read and drop it raw until the client closes. Left unread it
                    // fills the pipe from the client, the gateway's pump waits on it and
                    // never passes the close frame on, and the client sees the TCP
                    // connection reset (1006) instead of 1009.
                    let mut sink = vec![0u8; 16 * 1024];
                    while matches!(ws.get_mut().read(&mut sink).await, Ok(n) if n > 0) {}
                } else {
                    while let Some(Ok(_)) = ws.next().await {}
                }
            })
            .await;
        }
    }

    /// A room notice (an arrival, a departure) nobody asked for: when it cannot be published
    /// (the fleet's Redis is unreachable) the room does not hear of it, and the log says so.
    async fn notice(&self, kind: &str, data: Value, origin: Option<hub::SubscriberId>) {
        if let Err(e) = self
            .hub
            .send(&self.room, hub::Payload::new(kind, data), origin)
            .await
        {
            tracing::warn!(room = %self.room, kind = %kind, error = %e, "websocket room notice not published");
        }
    }

    /// Publishes what the client said to its room; a failure closes the connection with 1013
    /// (try again later) and the reason, as a chat client has no other way to learn of it.
    async fn say(&self, kind: &str, data: Value) -> Result<(), End> {
        self.hub
            .send(
                &self.room,
                hub::Payload::new(kind, data),
                Some(self.sub.id()),
            )
            .await
            .map(|_| ())
            .map_err(|e| End::Close(CloseCode::Again, e.to_string()))
    }

    async fn serve(
        &self,
        ws: &mut WebSocketStream<Upgraded>,
        username: &mut Option<String>,
        answers: &mut UnboundedReceiver<Answered>,
    ) -> End {
        let mut ping = tokio::time::interval(self.config.ping_interval);
        ping.tick().await;
        let mut awaiting_pong: Option<tokio::time::Instant> = None;
        loop {
            let pong_deadline = async {
                match awaiting_pong {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                incoming = ws.next() => match incoming {
                    None | Some(Err(WsError::ConnectionClosed | WsError::AlreadyClosed)) => return End::Gone,
                    Some(Err(WsError::Capacity(e))) => {
                        tracing::info!(endpoint = %self.room, error = %e, "websocket message too big: 1009");
                        return End::Close(CloseCode::Size, format!("message too big (limit {} bytes)", self.config.max_message));
                    }
                    Some(Err(WsError::Utf8(_))) => return End::Close(CloseCode::Invalid, "invalid UTF-8".into()),
                    Some(Err(e)) => {
                        tracing::debug!(error = %e, "websocket protocol error");
                        return End::Close(CloseCode::Protocol, "protocol error".into());
                    }
                    Some(Ok(WsMessage::Close(_))) => return End::Gone,
                    Some(Ok(WsMessage::Pong(_))) => awaiting_pong = None,
                    Some(Ok(WsMessage::Ping(_) | WsMessage::Frame(_))) => {}
                    Some(Ok(WsMessage::Binary(_))) if self.mode != Mode::Plain => {
                        return End::Close(CloseCode::Unsupported, "text messages only".into());
                    }
                    Some(Ok(WsMessage::Binary(b))) => {
                        let text = String::from_utf8_lossy(&b).into_owned();
                        if let Err(end) = self.on_text(ws, &text, username).await {
                            return end;
                        }
                    }
                    Some(Ok(WsMessage::Text(t))) => {
                        if let Err(end) = self.on_text(ws, t.as_str(), username).await {
                            return end;
                        }
                    }
                },
                msg = self.sub.recv() => match msg {
                    Ok(m) => {
                        let Some(out) = self.render(&m) else { continue };
                        if ws.send(out).await.is_err() {
                            return End::Gone;
                        }
                    }
                    Err(closed) => return match closed.reason {
                        hub::CloseReason::SlowConsumer => End::Close(CloseCode::Again, "slow consumer: messages were not read fast enough".into()),
                        _ => End::Close(CloseCode::Away, "server shutting down".into()),
                    },
                },
                _ = ping.tick() => {
                    if awaiting_pong.is_none() {
                        awaiting_pong = Some(tokio::time::Instant::now() + self.config.ping_timeout);
                    }
                    if ws.send(WsMessage::Ping(Vec::new().into())).await.is_err() {
                        return End::Gone;
                    }
                }
                _ = pong_deadline => return End::Close(CloseCode::Policy, "ping timeout".into()),
                Some(done) = answers.recv(), if self.to_app.is_some() => {
                    let (frames, end) = self.answered(done).await;
                    for frame in frames {
                        if ws.send(frame).await.is_err() {
                            return End::Gone;
                        }
                    }
                    if let Some(end) = end {
                        return end;
                    }
                }
            }
        }
    }

    /// The frame for a message; `None` for a live reset in the rooms, which have no way to say
    /// it (a pub/sub client gets a `reset`).
    fn render(&self, m: &hub::Message) -> Option<WsMessage> {
        if m.is_reset() {
            return (self.mode == Mode::PubSub).then(|| {
                PubSubOut::Reset {
                    topic: m.topic.to_string(),
                    since: m.reset_from.map(|p| p.to_string()),
                    position: m.position().to_string(),
                }
                .text()
            });
        }
        Some(match self.mode {
            Mode::Chat => {
                WsMessage::text(json!({"type": m.event(), "payload": m.data()}).to_string())
            }
            Mode::Plain => WsMessage::text(crate::text::body(m)),
            Mode::PubSub if presence::is_own_news(m, self.sub.id()) => return None,
            Mode::PubSub => {
                let p = m.position();
                PubSubOut::Message {
                    topic: m.topic.to_string(),
                    event: m.event().to_string(),
                    data: m.data().clone(),
                    seq: p.seq,
                    epoch: p.epoch.to_string(),
                    position: p.to_string(),
                }
                .text()
            }
        })
    }

    async fn on_text(
        &self,
        ws: &mut WebSocketStream<Upgraded>,
        text: &str,
        username: &mut Option<String>,
    ) -> Result<(), End> {
        match self.mode {
            Mode::Plain => {
                self.say("text", json!(format!("{}: {text}", self.id)))
                    .await
            }
            Mode::Chat => match chat_action(text) {
                Ok(ChatAction::Broadcast {
                    kind,
                    payload,
                    username: u,
                }) => {
                    *username = Some(u);
                    self.say(kind, payload).await
                }
                Ok(ChatAction::Drop) => Ok(()),
                Ok(ChatAction::Unknown(kind)) => {
                    tracing::info!(endpoint = %self.room, kind = %kind, "chat: unknown message type ignored");
                    Ok(())
                }
                Err(e) => Err(End::Close(CloseCode::Invalid, e.to_string())),
            },
            Mode::PubSub => {
                let request: PubSubIn = serde_json::from_str(text)
                    .map_err(|e| End::Close(CloseCode::Invalid, format!("invalid request: {e}")))?;
                let answers = self.pubsub(request, false).await;
                for a in answers {
                    ws.send(a).await.map_err(|_| End::Gone)?;
                }
                Ok(())
            }
        }
    }

    /// The connection is one of presence topic `topic`'s tabs (when the app named a member):
    /// the member list, sent after the subscription's replay so nothing older follows it.
    fn arrive(&self, topic: &str, grant: &access::Grant) -> WsMessage {
        let presence = self.access.presence();
        let member = grant.member_for(&self.identity);
        let mut list = Value::Null;
        let _ = presence.enter(
            &self.hub,
            topic,
            self.sub.id(),
            member.as_ref(),
            |members| {
                list = members_json(members);
                Ok::<(), std::convert::Infallible>(())
            },
        );
        if member.is_some() {
            // Subscribed again: the stay it has already is the one (a second would leave on
            // its drop).
            let mut stays = crate::sync::lock(&self.stays);
            if let std::collections::hash_map::Entry::Vacant(v) = stays.entry(topic.to_string()) {
                v.insert(presence.stay(&self.hub, topic, self.sub.id()));
            }
        }
        PubSubOut::Members {
            topic: topic.to_string(),
            members: list,
        }
        .text()
    }

    /// `by_app`: a subscription the app's answer to an event asked for, granted as the connect
    /// answer's rooms are (the app's word is given).
    async fn pubsub(&self, request: PubSubIn, by_app: bool) -> Vec<WsMessage> {
        let refused = |message: String| vec![PubSubOut::Error { message, id: None }.text()];
        match request {
            PubSubIn::Subscribe { topic, since } => {
                let limit = self.config.max_subscriptions;
                let mine = self.sub.topics();
                if mine.len() >= limit && !mine.iter().any(|t| **t == *topic) {
                    tracing::warn!(client = ?self.client, limit, "pubsub subscribe refused: too many subscriptions");
                    return refused(format!(
                        "subscribe refused: at most {limit} subscriptions per connection"
                    ));
                }
                let parsed = match since.as_deref().map(str::parse::<Position>) {
                    Some(Err(e)) => return refused(format!("invalid since: {e}")),
                    Some(Ok(p)) => Some(p),
                    None => None,
                };
                // Reserved, too long, not allowed by the policy or the app, or one new topic
                // too many: an error frame (logged) and the connection goes on, as Centrifugo
                // answers a refused subscribe. Nothing of the topic is sent.
                let socket_id = self.id.as_str();
                let granted;
                let identity = if by_app {
                    granted = Identity {
                        rooms: vec![topic.clone()],
                        ..self.identity.clone()
                    };
                    &granted
                } else {
                    &self.identity
                };
                let who = Who {
                    identity,
                    socket_id,
                    client_ip: self.client,
                    transport: TRANSPORT,
                };
                let info = || self.info.clone().unwrap_or_default();
                let grant =
                    match access::admit_subscription(&self.hub, &self.access, &who, info, &topic)
                        .await
                    {
                        Ok(grant) => grant,
                        Err(e) => return refused(format!("subscribe refused: {e}")),
                    };
                let mut out = match self.sub.join_async(&topic, parsed).await {
                    Ok(JoinOutcome::Reset { current }) => vec![PubSubOut::Reset {
                        topic: topic.clone(),
                        since,
                        position: current.to_string(),
                    }
                    .text()],
                    Ok(joined) => {
                        let mut out = vec![PubSubOut::Subscribed {
                            topic: topic.clone(),
                            position: joined.position().to_string(),
                        }
                        .text()];
                        out.extend(joined.replay().iter().filter_map(|m| self.render(m)));
                        out
                    }
                    Err(e) => return refused(e.to_string()),
                };
                if presence::is_presence(&topic) {
                    out.push(self.arrive(&topic, &grant));
                }
                out
            }
            PubSubIn::Unsubscribe { topic } => {
                self.sub.leave(&topic);
                // Out of the members too (its departure announced when it was the user's last).
                crate::sync::lock(&self.stays).remove(&topic);
                vec![PubSubOut::Unsubscribed { topic }.text()]
            }
            PubSubIn::Publish {
                topic,
                event,
                data,
                id,
            } => {
                if let Err(e) = access::admit_publish(&self.hub, &self.access, self.client, &topic)
                {
                    return refused(format!("publish refused: {e}"));
                }
                let event = event.unwrap_or_else(|| "message".to_string());
                let payload = hub::Payload::new(event, data);
                match self.hub.send(&topic, payload, Some(self.sub.id())).await {
                    Ok(p) => vec![PubSubOut::Published {
                        topic,
                        seq: p.seq,
                        epoch: p.epoch.to_string(),
                        position: p.to_string(),
                        id,
                    }
                    .text()],
                    // Not published (the fleet's Redis is unreachable, say): an error frame
                    // with the request's id; the connection and its subscriptions go on.
                    Err(e) => {
                        tracing::warn!(topic = %topic, error = %e, "pubsub publish: not published");
                        vec![PubSubOut::Error {
                            message: format!("publish refused: {e}"),
                            id,
                        }
                        .text()]
                    }
                }
            }
            PubSubIn::Event { event, data, id } => self.event_to_app(event, data, id),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chat_messages_are_trimmed_and_empty_ones_dropped() {
        assert_eq!(
            chat_action(r#"{"type":"chat-join","payload":{"username":"  ann "}}"#),
            Ok(ChatAction::Broadcast {
                kind: "chat-join",
                payload: json!({"username": "ann"}),
                username: "ann".into()
            })
        );
        assert_eq!(
            chat_action(
                r#"{"type":"chat-message","payload":{"username":"ann","message":"  hi \n"}}"#
            ),
            Ok(ChatAction::Broadcast {
                kind: "chat-message",
                payload: json!({"username": "ann", "message": "hi"}),
                username: "ann".into()
            })
        );
        assert_eq!(
            chat_action(r#"{"type":"chat-message","payload":{"username":"ann","message":"   "}}"#),
            Ok(ChatAction::Drop)
        );
        assert_eq!(
            chat_action(r#"{"type":"typing","payload":{}}"#),
            Ok(ChatAction::Unknown("typing".into()))
        );
    }

    #[test]
    fn broken_chat_messages_are_errors() {
        assert!(matches!(chat_action("hello"), Err(ChatError::NotJson(_))));
        assert_eq!(
            chat_action(r#"{"payload":{}}"#),
            Err(ChatError::Missing("type"))
        );
        assert_eq!(
            chat_action(r#"{"type":"chat-message","payload":{"username":"a"}}"#),
            Err(ChatError::Missing("message"))
        );
        assert_eq!(
            chat_action(r#"{"type":"chat-join","payload":{"username":5}}"#),
            Err(ChatError::Missing("username"))
        );
    }

    #[test]
    fn close_reasons_fit_in_a_control_frame() {
        let reason = |m: WsMessage| match m {
            WsMessage::Close(Some(f)) => f.reason.to_string(),
            other => panic!("{other:?}"),
        };
        assert_eq!(reason(close(CloseCode::Invalid, "short")), "short");
        let long = "x".repeat(200);
        assert_eq!(reason(close(CloseCode::Invalid, &long)), "x".repeat(123));
        // Never half a character: 122 bytes of `x`, then a 2-byte `é` that would end at 124.
        let accented = format!("{}é", "x".repeat(122));
        assert_eq!(
            reason(close(CloseCode::Invalid, &accented)),
            "x".repeat(122)
        );
    }

    #[test]
    fn pubsub_messages_have_a_documented_shape() {
        let sub: PubSubIn =
            serde_json::from_str(r#"{"op":"subscribe","topic":"t","since":"00000000000000ab:3"}"#)
                .expect("parses");
        assert_eq!(
            sub,
            PubSubIn::Subscribe {
                topic: "t".into(),
                since: Some("00000000000000ab:3".into())
            }
        );
        assert!(serde_json::from_str::<PubSubIn>(r#"{"op":"dance"}"#).is_err());
        let out = serde_json::to_string(&PubSubOut::Message {
            topic: "t".into(),
            event: "e".into(),
            data: json!([1]),
            seq: 3,
            epoch: "00000000000000ab".into(),
            position: "00000000000000ab:3".into(),
        })
        .expect("serializes");
        assert_eq!(
            out,
            r#"{"op":"message","topic":"t","event":"e","data":[1],"seq":3,"epoch":"00000000000000ab","position":"00000000000000ab:3"}"#
        );
        let members = serde_json::to_string(&PubSubOut::Members {
            topic: "presence-room".into(),
            members: json!([{"user_id": 1, "user_info": {"name": "Ann"}}]),
        })
        .expect("serializes");
        assert_eq!(
            members,
            r#"{"op":"members","topic":"presence-room","members":[{"user_id":1,"user_info":{"name":"Ann"}}]}"#
        );
    }
}
