//! How Socket.IO namespaces and rooms map onto hub topics, and the ids the
//! server hands out.
//!
//! A room is a hub topic, so anything that publishes to the topic (the app's
//! publish API, another transport, a bus from another node) reaches the
//! room's sockets as an event, and a socket that comes back after a network
//! drop can be replayed what it missed from the topic's history.
//!
//! | what | topic |
//! |---|---|
//! | room `r` of the main namespace `/` | `r`, the topic itself |
//! | room `r` of namespace `/chat` | `sio:/chat:r` |
//! | every socket of `/chat` | `sio:/chat` |
//! | the room named by a socket's id `X` | `sio:/chat:X` (`sio:/:X` in `/`) |
//!
//! Rooms of the main namespace are plain topics so that the app publishing to topic `news`
//! (with the publish API, a long-poll `POST`, a pub/sub WebSocket) reaches the sockets in room
//! `news`: one name for one audience on every transport. Topics starting with
//! [`TOPIC_PREFIX`] are reserved for the layer's own use: no other transport can subscribe or
//! publish to them ([`crate::topics`]), and clients cannot join such rooms. So a room of `/`
//! shaped like a socket id ([`looks_like_id`]: a socket's private room) or named with a
//! reserved prefix maps to a reserved topic too (`sio:/:X`), never to the bare name a
//! long-poll or SSE client could subscribe to.
//!
//! A `%` or `:` inside a namespace name is percent-escaped (`%25`, `%3A`),
//! so the first `:` after the namespace always separates it from the room:
//! `/a:b` + room `c` and `/a` + room `b:c` stay two topics. Room names are
//! taken verbatim.

use std::borrow::Cow;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use rand::RngCore;

/// Prefix of every topic the Socket.IO layer uses, so an operator can tell
/// them apart from other transports' topics (reserved by [`crate::topics`]).
pub const TOPIC_PREFIX: &str = crate::topics::SOCKETIO_PREFIX;

/// Random bytes in a socket id or session id: 15 bytes give node's 20
/// base64url characters (its `base64id`) and 120 bits, unguessable.
const ID_BYTES: usize = 15;

/// Length of a generated id in characters.
pub const ID_LEN: usize = 20;

/// The topic every socket of `nsp` is subscribed to: namespace-wide
/// broadcasts (`ns.emit`, relay without rooms) are published here once.
pub fn namespace_topic(nsp: &str) -> String {
    format!("{TOPIC_PREFIX}{}", escape_nsp(nsp))
}

/// The topic of room `room` in namespace `nsp`.
pub fn room_topic(nsp: &str, room: &str) -> String {
    if nsp == "/" && !looks_like_id(room) && !crate::topics::is_reserved(room) {
        return room.to_string();
    }
    format!("{TOPIC_PREFIX}{}:{room}", escape_nsp(nsp))
}

/// The room of namespace `nsp` whose topic is `topic`, for rooms a client can be in: `None` for
/// the namespace's topic, a socket's own room and reserved names ([`room_topic`] backwards).
pub(super) fn room_of<'a>(nsp: &str, topic: &'a str) -> Option<&'a str> {
    let room = if nsp == "/" && !crate::topics::is_reserved(topic) {
        topic
    } else {
        let prefix = format!("{TOPIC_PREFIX}{}:", escape_nsp(nsp));
        topic.strip_prefix(prefix.as_str())?
    };
    let clients = !looks_like_id(room) && !crate::topics::is_reserved(room);
    (clients && room_topic(nsp, room) == topic).then_some(room)
}

fn escape_nsp(nsp: &str) -> Cow<'_, str> {
    if !nsp.contains(['%', ':']) {
        return Cow::Borrowed(nsp);
    }
    let mut out = String::with_capacity(nsp.len() + 4);
    for c in nsp.chars() {
        match c {
            '%' => out.push_str("%25"),
            ':' => out.push_str("%3A"),
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

/// A fresh socket id or private session id: 20 base64url characters like
/// node's, never the Engine.IO sid (which would let anyone who sees a
/// socket id hijack its transport).
pub fn generate_id() -> String {
    let mut bytes = [0u8; ID_BYTES];
    rand::rng().fill_bytes(&mut bytes);
    URL_SAFE_NO_PAD.encode(bytes)
}

/// Whether `s` has the shape of a generated id. Client-chosen rooms of this
/// shape are refused: they could be another socket's private room.
pub fn looks_like_id(s: &str) -> bool {
    s.len() == ID_LEN
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Node's `io.of("chat")` means `/chat`.
pub(super) fn normalize_nsp(path: &str) -> String {
    if path.starts_with('/') {
        path.to_owned()
    } else {
        format!("/{path}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_names() {
        assert_eq!(namespace_topic("/"), "sio:/");
        assert_eq!(room_topic("/", "lobby"), "lobby");
        assert_eq!(room_topic("/chat", "a:b"), "sio:/chat:a:b");
        assert_ne!(room_topic("/a:b", "c"), room_topic("/a", "b:c"));
        assert_eq!(room_topic("/a:b%", "c"), "sio:/a%3Ab%25:c");
        assert_ne!(namespace_topic("/a"), room_topic("/", "a"));
        // A socket's private room and reserved names stay in the reserved namespace, in `/`
        // too: another transport must not read a socket's own events.
        let id = generate_id();
        assert_eq!(room_topic("/", &id), format!("sio:/:{id}"));
        assert_eq!(room_topic("/", "sio:/chat"), "sio:/:sio:/chat");
        assert_eq!(room_topic("/", "ws:/ws:chat"), "sio:/:ws:/ws:chat");
        assert_ne!(room_topic("/", &id), namespace_topic("/"));
        assert_ne!(room_topic("/", ":x"), room_topic("/:", "x"));
    }

    #[test]
    fn rooms_from_topics() {
        assert_eq!(room_of("/", "orders"), Some("orders"));
        assert_eq!(room_of("/chat", "sio:/chat:orders"), Some("orders"));
        assert_eq!(room_of("/a:b", &room_topic("/a:b", "c:d")), Some("c:d"));
        let id = generate_id();
        for (nsp, topic) in [
            ("/", namespace_topic("/")),
            ("/chat", namespace_topic("/chat")),
            ("/", room_topic("/", &id)),
            ("/chat", room_topic("/chat", &id)),
            ("/", room_topic("/", "ws:/ws:chat")),
            ("/chat", "orders".to_string()),
            ("/chat", "sio:/other:orders".to_string()),
        ] {
            assert_eq!(room_of(nsp, &topic), None, "{nsp} {topic}");
        }
    }

    #[test]
    fn ids() {
        let a = generate_id();
        assert_eq!(a.len(), ID_LEN);
        assert!(looks_like_id(&a));
        assert_ne!(a, generate_id());
        assert!(!looks_like_id("lobby"));
        assert!(!looks_like_id("aaaaaaaaaaaaaaaaaaa!"));
    }

    #[test]
    fn namespace_paths() {
        assert_eq!(normalize_nsp("chat"), "/chat");
        assert_eq!(normalize_nsp("/"), "/");
    }
}
