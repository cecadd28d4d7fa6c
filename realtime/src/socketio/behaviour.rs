//! Built-in namespace behaviours, so a gateway can serve Socket.IO apps
//! with no server code: chosen per namespace in configuration, built only
//! on the public library API.
//!
//! # Wire contract
//!
//! * `relay`: every event a client sends (other than `join`/`leave` when
//!   `client_rooms` is on) is broadcast, same name and arguments (binary
//!   included), to the other sockets of the sender's rooms, never back to
//!   the sender. Without client rooms, or while the sender has joined none,
//!   that is the whole namespace. If the client asked for an
//!   acknowledgement it gets `[{"seq":N}]`, N being the relayed message's
//!   sequence number in its hub topic (the namespace topic, or the single
//!   room); relayed to several rooms, `[{"seq":N,"rooms":{"a":N,"b":M}}]`
//!   with N the first room's (rooms in sorted order). A failed relay acks
//!   `[{"error":"…"}]`.
//! * `history: N`: a socket that connects first gets the last N events of
//!   the namespace topic (what was relayed or published namespace-wide),
//!   then live ones; a client room joined with `join` likewise replays its
//!   last N. From the hub's history, so it is bounded by the hub's limits.
//! * `client_rooms`: `42["join","room"]` / `42["leave","room"]` (with an
//!   ack id to get the answer) make the socket join or leave `room`; the ack
//!   is `[{"ok":true,"room":"room"}]` or `[{"ok":false,"room":…,"error":"…"}]`.
//!   Refused: a non-string or empty name, one longer than
//!   [`MAX_ROOM_NAME_LEN`] bytes, one shaped like a socket id (it could be
//!   another socket's private room), and joins beyond [`MAX_CLIENT_ROOMS`].
//! * Anything published to a room's topic (the app's publish API, another
//!   transport) reaches the room's sockets as an event in any case.

use std::collections::BTreeSet;
use std::future::ready;
use std::time::Duration;

use serde_json::{json, Map, Value};

use super::namespace::Namespace;
use super::options::SocketIoOptions;
use super::rooms::{looks_like_id, TOPIC_PREFIX};
use super::server::SocketIo;
use super::socket::{AckSender, Args, Event, Socket};

/// Rooms a client may join through `join`: enough for any chat UI, small
/// enough that one client cannot make the hub track thousands of topics.
pub const MAX_CLIENT_ROOMS: usize = 64;

/// Longest room name a client may choose, in bytes: room names end up in
/// topic names, logs and every relayed message's routing.
pub const MAX_ROOM_NAME_LEN: usize = 128;

/// What a namespace does on its own. All off by default (the namespace then
/// accepts connections and delivers what the app publishes to its rooms).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NamespaceBehaviour {
    /// Broadcast client events to the other sockets.
    pub relay: bool,
    /// Events replayed to a socket when it connects (or joins a room).
    pub history: usize,
    /// Let clients `join`/`leave` rooms.
    pub client_rooms: bool,
}

/// Registers namespace `path` with `behaviour` (replacing the connect
/// handler of an existing one).
pub fn install_behaviour(io: &SocketIo, path: &str, behaviour: NamespaceBehaviour) -> Namespace {
    let ns = io.namespace(path, move |socket| {
        attach(&socket, behaviour);
        ready(Ok(()))
    });
    ns.set_connect_history(behaviour.history);
    ns
}

/// Installs `behaviour`'s handlers on one socket (for apps that mix it
/// with their own connect logic).
pub fn attach(socket: &Socket, behaviour: NamespaceBehaviour) {
    if behaviour.client_rooms {
        let history = behaviour.history;
        socket.on("join", move |socket, event, ack| {
            let answer = client_join(socket, &event, history);
            reply(ack, answer);
        });
        socket.on("leave", |socket, event, ack| {
            let answer = match room_arg(&event) {
                Ok(room) => {
                    socket.leave(room);
                    json!({"ok": true, "room": room})
                }
                Err(error) => refusal(&event, error),
            };
            reply(ack, answer);
        });
    }
    if behaviour.relay {
        let client_rooms = behaviour.client_rooms;
        socket.on_fallback(move |socket, event, ack| relay(socket, event, ack, client_rooms));
    }
}

fn reply(ack: Option<AckSender>, answer: Value) {
    if let Some(ack) = ack {
        let _ = ack.send(Args::from(vec![answer]));
    }
}

fn room_arg(event: &Event) -> Result<&str, &'static str> {
    match event.args.values.first() {
        Some(Value::String(room)) if room.is_empty() => Err("empty room name"),
        Some(Value::String(room)) if room.len() > MAX_ROOM_NAME_LEN => Err("room name too long"),
        Some(Value::String(room)) if looks_like_id(room) || room.starts_with(TOPIC_PREFIX) => {
            Err("reserved room name")
        }
        Some(Value::String(room)) => Ok(room),
        _ => Err("room name must be a string"),
    }
}

fn refusal(event: &Event, error: &str) -> Value {
    let mut map = Map::new();
    map.insert("ok".into(), Value::Bool(false));
    if let Some(room @ Value::String(_)) = event.args.values.first() {
        map.insert("room".into(), room.clone());
    }
    map.insert("error".into(), Value::from(error));
    Value::Object(map)
}

fn client_join(socket: &Socket, event: &Event, history: usize) -> Value {
    let room = match room_arg(event) {
        Ok(room) => room,
        Err(error) => return refusal(event, error),
    };
    let rooms = socket.rooms();
    // The socket's own room does not count against the limit.
    if !rooms.contains(room) && rooms.len() > MAX_CLIENT_ROOMS {
        return refusal(event, "too many rooms");
    }
    match socket.join_with_history(room, history) {
        Ok(_) => json!({"ok": true, "room": room}),
        Err(e) => refusal(event, &e.to_string()),
    }
}

fn relay(socket: &Socket, event: Event, ack: Option<AckSender>, client_rooms: bool) {
    let rooms: BTreeSet<String> = if client_rooms {
        let mut rooms = socket.rooms();
        rooms.remove(socket.id());
        rooms
    } else {
        BTreeSet::new()
    };
    let result = socket
        .broadcast()
        .to_rooms(rooms.iter().cloned())
        .emit(&event.name, event.args);
    let answer = match result {
        Ok(positions) => {
            let seq = positions.first().map_or(0, |p| p.seq);
            if rooms.len() > 1 {
                let per_room: Map<String, Value> = rooms
                    .iter()
                    .zip(&positions)
                    .map(|(room, p)| (room.clone(), Value::from(p.seq)))
                    .collect();
                json!({"seq": seq, "rooms": per_room})
            } else {
                json!({"seq": seq})
            }
        }
        Err(e) => json!({"error": e.to_string()}),
    };
    reply(ack, answer);
}

/// `connectTimeout` the official test-suite expects (it waits for the
/// server to close a silent connection).
pub const CONFORMANCE_CONNECT_TIMEOUT: Duration = Duration::from_millis(1000);

/// Options for the official socket.io-protocol test-suite: recovery off
/// (its `pid` and offsets would fail 7 of its checks), connectTimeout 1 s.
pub fn conformance_options() -> SocketIoOptions {
    SocketIoOptions {
        connect_timeout: CONFORMANCE_CONNECT_TIMEOUT,
        recovery: None,
        ..SocketIoOptions::default()
    }
}

/// See [`install_conformance`]: keeps `auth` out of the CONNECT reply's TCP segment.
const CONFORMANCE_AUTH_DELAY: Duration = Duration::from_millis(10);

/// The reference server of the socket.io-protocol test-suite: namespaces
/// `/` and `/custom`; on connect, emit `auth` with the CONNECT payload;
/// answer `message` with `message-back` (same arguments); acknowledge
/// `message-with-ack` with its arguments.
pub fn install_conformance(io: &SocketIo) {
    for path in ["/", "/custom"] {
        io.namespace(path, |socket| {
            // The suite reads one WebSocket message per `await` and attaches its next listener
            // only afterwards, so `auth` must not reach it in the same TCP segment as the
            // CONNECT reply (node's separate socket writes happen to avoid that). A few ms
            // later it is a separate write; the order is unchanged.
            let s = socket.clone();
            tokio::spawn(async move {
                tokio::time::sleep(CONFORMANCE_AUTH_DELAY).await;
                let _ = s.emit("auth", Args::from(vec![s.auth().clone()]));
            });
            socket.on("message", |socket, event, _| {
                let _ = socket.emit("message-back", event.args);
            });
            socket.on("message-with-ack", |_, event, ack| {
                if let Some(ack) = ack {
                    let _ = ack.send(event.args);
                }
            });
            ready(Ok(()))
        });
    }
}
