//! Laravel's `redis` broadcaster: `PUBLISH <channel> {"event": ..., "data": {...}, "socket": ...}`
//! once per channel (`Illuminate\Broadcasting\Broadcasters\RedisBroadcaster`, which takes
//! `socket` out of the payload and `json_encode`s the three keys). Recent Laravel versions put
//! the Redis connection's key prefix (e.g. `laravel_database_`) in front of the channel name.
//! What laravel-echo-server did with it, and what a node will do: emit `(event, channel, data)`
//! to the sockets in the room named after the channel, except the socket whose id is `socket`
//! (`toOthers()`).

use serde_json::Value as Json;
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
    /// arguments `(channel, data)`.
    pub fn to_payload(&self) -> Payload {
        Payload::new(
            self.event.clone(),
            Json::Array(vec![Json::from(self.channel.as_str()), self.data.clone()]),
        )
    }
}

/// Whether `channel` (prefix already removed) is one of `listen`: exact names, or prefixes
/// written with a trailing `*` (`private-*`).
pub fn listens_to(listen: &[String], channel: &str) -> bool {
    listen.iter().any(|l| match l.strip_suffix('*') {
        Some(prefix) => channel.starts_with(prefix),
        None => l == channel,
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
