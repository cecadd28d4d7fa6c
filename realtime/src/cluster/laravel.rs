//! Laravel's `redis` broadcaster: `PUBLISH <channel> {"event": ..., "data": {...}, "socket": ...}`
//! once per channel (`Illuminate\Broadcasting\Broadcasters\RedisBroadcaster`, which takes
//! `socket` out of the payload and `json_encode`s the three keys). Recent Laravel versions put
//! the Redis connection's key prefix (e.g. `laravel_database_`) in front of the channel name.
//! What laravel-echo-server did with it, and what a node does ([`super::laravel_node`]): emit
//! `(event, channel, data)` to the sockets in the room named after the channel, except the
//! socket whose id is `socket` (`toOthers()`).
//!
//! Every node of a fleet receives each broadcast (they all subscribe) and exactly one may
//! publish it to the hub. They agree on a name for it, [`digest`] and [`Occurrences`]: the same
//! message twice within [`Occurrences`]'s window is its first and its second copy on every node
//! that received both, so a repeated broadcast is not taken for a duplicate.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use serde_json::Value as Json;
use sha1::{Digest, Sha1};
use thiserror::Error;

use crate::hub::Payload;

/// Why a message is not a Laravel broadcast.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum LaravelError {
    /// Not JSON.
    #[error("not JSON: {0}")]
    Json(String),
    /// JSON of another shape.
    #[error("not a Laravel broadcast: {0}")]
    Shape(&'static str),
}

/// One broadcast, for one channel.
#[derive(Clone, Debug, PartialEq)]
pub struct LaravelBroadcast {
    /// The channel, key prefix removed (`orders`, `private-user.1`, `presence-room.1`).
    pub channel: String,
    /// The event name as Laravel sent it (`App\Events\OrderShipped`, or `broadcastAs()`).
    pub event: String,
    /// The event's data.
    pub data: Json,
    /// The sender's socket id (`toOthers()`): every socket on the channel but this one.
    pub except_socket: Option<String>,
}

impl LaravelBroadcast {
    /// The payload Laravel Echo's socket.io connector expects: event `event` with the
    /// arguments `(channel, data)`, leaving out the sender's socket (its id is its own room).
    pub fn to_payload(&self) -> Payload {
        Payload::new(
            self.event.clone(),
            Json::Array(vec![Json::from(self.channel.as_str()), self.data.clone()]),
        )
        .with_except(self.except_socket.iter().cloned().collect())
    }
}

/// What names one message published on `channel` the same on every node: the SHA-1 of the
/// channel and the message, in hex.
pub fn digest(channel: &[u8], message: &[u8]) -> String {
    let mut h = Sha1::new();
    h.update((channel.len() as u64).to_be_bytes());
    h.update(channel);
    h.update(message);
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// Counts the copies of each message (by [`digest`]) a node receives: the n-th copy within
/// `window` of the one before it is copy n, on every node that received them all. Memory is
/// bounded by what arrives within a window.
#[derive(Debug)]
pub struct Occurrences {
    window: Duration,
    seen: HashMap<String, (u64, Instant)>,
    /// When the map is next swept of what is older than the window.
    sweep_at: Option<Instant>,
}

impl Occurrences {
    /// Counting copies that come within `window` of each other.
    pub fn new(window: Duration) -> Self {
        Occurrences {
            window,
            seen: HashMap::new(),
            sweep_at: None,
        }
    }

    /// Which copy of `digest`, received at `now`, this is (1 for the first).
    pub fn next(&mut self, digest: &str, now: Instant) -> u64 {
        if self.sweep_at.is_none_or(|at| now >= at) {
            let window = self.window;
            self.seen
                .retain(|_, (_, at)| now.saturating_duration_since(*at) < window);
            self.sweep_at = Some(now + window);
        }
        let window = self.window;
        let entry = self.seen.entry(digest.to_string()).or_insert((0, now));
        if now.saturating_duration_since(entry.1) >= window {
            entry.0 = 0;
        }
        entry.0 += 1;
        entry.1 = now;
        entry.0
    }

    /// Messages remembered now.
    pub fn len(&self) -> usize {
        self.seen.len()
    }

    /// Whether none is remembered.
    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }
}

/// A channel of `cluster.laravel.channels`: a name, or a prefix written with a trailing `*`.
/// `None` when it is empty or has a `*` elsewhere.
pub fn channel_spec(spec: &str) -> Option<ChannelSpec<'_>> {
    match spec.strip_suffix('*') {
        Some(stem) if !stem.contains('*') => Some(ChannelSpec::Prefix(stem)),
        None if !spec.is_empty() && !spec.contains('*') => Some(ChannelSpec::Exact(spec)),
        _ => None,
    }
}

/// See [`channel_spec`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChannelSpec<'a> {
    /// One channel.
    Exact(&'a str),
    /// Every channel starting so (`private-*`: `private-`; `*`: every channel).
    Prefix(&'a str),
}

/// Whether `channel` (prefix already removed) is one of `listen`: exact names, or prefixes
/// written with a trailing `*` (`private-*`).
pub fn listens_to(listen: &[String], channel: &str) -> bool {
    listen.iter().any(|l| match channel_spec(l) {
        Some(ChannelSpec::Exact(name)) => name == channel,
        Some(ChannelSpec::Prefix(prefix)) => channel.starts_with(prefix),
        None => false,
    })
}

/// Decodes a message published on `channel`, removing `key_prefix` from the channel's name
/// when it starts with it.
pub fn decode(
    channel: &[u8],
    message: &[u8],
    key_prefix: &str,
) -> Result<LaravelBroadcast, LaravelError> {
    let channel = std::str::from_utf8(channel).map_err(|_| LaravelError::Shape("channel"))?;
    let channel = channel.strip_prefix(key_prefix).unwrap_or(channel);
    let v: Json = serde_json::from_slice(message).map_err(|e| LaravelError::Json(e.to_string()))?;
    let Json::Object(mut m) = v else {
        return Err(LaravelError::Shape("not an object"));
    };
    let event = match m.remove("event") {
        Some(Json::String(e)) => e,
        _ => return Err(LaravelError::Shape("event")),
    };
    let except_socket = match m.remove("socket") {
        None | Some(Json::Null) => None,
        Some(Json::String(s)) if s.is_empty() => None,
        Some(Json::String(s)) => Some(s),
        Some(_) => return Err(LaravelError::Shape("socket")),
    };
    Ok(LaravelBroadcast {
        channel: channel.to_string(),
        event,
        data: m.remove("data").unwrap_or(Json::Null),
        except_socket,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// PHP 8's `json_encode(['event' => 'App\Events\OrderShipped', 'data' => [...], 'socket' =>
    /// '1234.5678'])`, as RedisBroadcaster calls it (escaped slashes and non-ASCII included),
    /// produced by the php-cli on this machine.
    const ORDER_SHIPPED: &str = r#"{"event":"App\\Events\\OrderShipped","data":{"order":{"id":1,"url":"https:\/\/shop.test\/o\/1","name":"Cr\u00e8me"}},"socket":"1234.5678"}"#;

    #[test]
    fn a_prefixed_private_channel_with_to_others() {
        let b = decode(
            b"laravel_database_private-orders.1",
            ORDER_SHIPPED.as_bytes(),
            "laravel_database_",
        )
        .expect("decodes");
        assert_eq!(b.channel, "private-orders.1");
        assert_eq!(b.event, "App\\Events\\OrderShipped");
        assert_eq!(
            b.data,
            json!({"order": {"id": 1, "url": "https://shop.test/o/1", "name": "Crème"}})
        );
        assert_eq!(b.except_socket.as_deref(), Some("1234.5678"));
        let p = b.to_payload();
        assert_eq!(p.event, "App\\Events\\OrderShipped");
        assert_eq!(p.data[0], json!("private-orders.1"));
    }

    #[test]
    fn unprefixed_and_without_socket() {
        let b = decode(
            b"orders",
            br#"{"event":"status","data":{"ok":true},"socket":null}"#,
            "laravel_database_",
        )
        .expect("decodes");
        assert_eq!((b.channel.as_str(), b.except_socket), ("orders", None));
    }

    #[test]
    fn listening_by_name_or_prefix() {
        let listen = vec!["orders".to_string(), "private-*".to_string()];
        assert!(listens_to(&listen, "orders"));
        assert!(listens_to(&listen, "private-user.1"));
        assert!(!listens_to(&listen, "orders2"));
        assert!(!listens_to(&listen, "presence-room.1"));
    }

    #[test]
    fn the_sender_is_left_out_by_its_own_room() {
        let b = decode(b"orders", ORDER_SHIPPED.as_bytes(), "").expect("decodes");
        assert_eq!(b.to_payload().except, vec!["1234.5678".to_string()]);
        let b = decode(b"orders", br#"{"event":"e","data":1,"socket":null}"#, "").expect("ok");
        assert!(b.to_payload().except.is_empty());
    }

    #[test]
    fn every_node_names_the_nth_copy_of_a_message_alike() {
        let d = digest(b"orders", ORDER_SHIPPED.as_bytes());
        assert_eq!(d.len(), 40);
        assert_eq!(d, digest(b"orders", ORDER_SHIPPED.as_bytes()));
        assert_ne!(d, digest(b"orders2", ORDER_SHIPPED.as_bytes()));
        // The channel's length is part of it: "ab" + "c..." is not "a" + "bc...".
        assert_ne!(digest(b"ab", b"c"), digest(b"a", b"bc"));
        let w = Duration::from_secs(30);
        let t0 = Instant::now();
        let mut node = Occurrences::new(w);
        assert_eq!(node.next(&d, t0), 1);
        assert_eq!(
            node.next(&d, t0 + Duration::from_secs(1)),
            2,
            "the same broadcast again"
        );
        assert_eq!(node.next("other", t0 + Duration::from_secs(2)), 1);
        // A window after the last copy, it is a first copy again; the sweep forgets the rest.
        let later = t0 + Duration::from_secs(2) + w;
        assert_eq!(node.next(&d, later), 1);
        assert_eq!(node.len(), 1, "{node:?}");
    }

    #[test]
    fn channels_are_names_or_prefixes() {
        assert_eq!(channel_spec("orders"), Some(ChannelSpec::Exact("orders")));
        assert_eq!(
            channel_spec("private-*"),
            Some(ChannelSpec::Prefix("private-"))
        );
        assert_eq!(channel_spec("*"), Some(ChannelSpec::Prefix("")));
        for bad in ["", "a*b", "**", "a*b*"] {
            assert_eq!(channel_spec(bad), None, "{bad}");
        }
    }

    #[test]
    fn odd_input_is_an_error() {
        for bad in [
            &b""[..],
            b"[]",
            b"{}",
            br#"{"event":1}"#,
            br#"{"event":"e","socket":5}"#,
            b"\xff",
        ] {
            assert!(decode(b"c", bad, "").is_err(), "{bad:?}");
        }
        assert!(decode(b"\xff", br#"{"event":"e"}"#, "").is_err());
    }
}
