//! Laravel Echo's protocol, as laravel-echo-server spoke it to Echo's socket.io connector (npm
//! `laravel-echo`), on a namespace with [`NamespaceBehaviour::echo`](super::NamespaceBehaviour::echo): a Laravel front end moves
//! from laravel-echo-server to the gateway by changing its `host` only.
//!
//! | the client emits | the server |
//! |---|---|
//! | `subscribe` `{channel, auth: {headers}}` | puts the socket in room `channel`; a channel the policy makes private (`private-*`, `presence-*`) only with the app's word, asked with the credentials of `auth.headers` (`Authorization`, `X-CSRF-TOKEN`, `X-XSRF-TOKEN`, `Cookie`) in place of the handshake's; refused: `subscription_error` `(channel, status)` and nothing of the channel |
//! | `unsubscribe` `{channel}` | takes it out |
//! | `client event` `{channel, event: "client-…", data}` | a whisper: `(event, channel, data)` to the channel's other sockets, never back to the sender; only `client-*` events, only on private and presence channels, only from a socket in the channel |
//!
//! In a presence channel the socket is one of the channel's tabs, as the member the app's
//! `channel_data` names (else the connect answer's user): it gets `presence:subscribed`
//! `(channel, [{user_id, user_info}, …])`, the others `presence:joining` `(channel, member)`
//! when a user's first tab arrives, everyone `presence:leaving` `(channel, member)` when its
//! last one goes ([`crate::access::presence`]).
//!
//! What is published to a channel reaches its sockets as `(event, channel, data)`, which is
//! what Echo's `.listen()` hands on (`echo_shape`): the app's `POST /publish` with Laravel's
//! event name (`App\Events\OrderShipped`, or `broadcastAs()`'s name), a whisper, the presence
//! news.
//!
//! Unlike the generic `join`, a channel replays no history on subscribe (laravel-echo-server
//! had none, and an Echo app would take an old event for a new one). Malformed events are
//! ignored, as laravel-echo-server ignored them; whispers over the namespace's relay rate
//! disconnect the sender, as relays do.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use serde_json::{Map, Value};

use super::client_rooms::{
    check_room_name, enter_room, leave_room, room_for_one_more, NotJoined, MAX_PENDING_JOINS,
};
use super::event::{Args, Event};
use super::state::{AckSender, Socket};
use crate::access::presence::{members_json, SUBSCRIBED};
use crate::access::{Grant, CREDENTIAL_HEADERS};
use crate::hub::Payload;

/// What a refused subscription is told: laravel-echo-server's event, `(channel, status)`.
pub const SUBSCRIPTION_ERROR: &str = "subscription_error";

/// Only events with this prefix are whispered (Pusher's and Laravel's client events).
pub const WHISPER_PREFIX: &str = "client-";

/// A `subscribe` or `unsubscribe`: the channel, and for a subscribe the credentials Echo's
/// `auth.headers` named.
#[derive(Debug, PartialEq)]
pub(super) struct Subscription {
    pub channel: String,
    pub credentials: http::HeaderMap,
}

/// A `client event`.
#[derive(Debug, PartialEq)]
pub(super) struct Whisper {
    pub channel: String,
    pub event: String,
    pub data: Value,
}

/// The first argument as an object; laravel-echo-server also took one sent as JSON text.
fn object(args: &[Value]) -> Option<Map<String, Value>> {
    match args.first()? {
        Value::Object(map) => Some(map.clone()),
        Value::String(text) => match serde_json::from_str(text) {
            Ok(Value::Object(map)) => Some(map),
            _ => None,
        },
        _ => None,
    }
}

impl Subscription {
    pub(super) fn parse(args: &[Value]) -> Result<Subscription, &'static str> {
        let map = object(args).ok_or("expected {channel, auth}")?;
        let channel = match map.get("channel") {
            Some(Value::String(c)) => c.clone(),
            _ => return Err("channel must be a string"),
        };
        let mut credentials = http::HeaderMap::new();
        let headers = map
            .get("auth")
            .and_then(|a| a.get("headers"))
            .and_then(Value::as_object);
        for (name, value) in headers.into_iter().flatten() {
            let lower = name.to_ascii_lowercase();
            let Some(known) = CREDENTIAL_HEADERS.iter().find(|h| **h == lower) else {
                continue;
            };
            let value = value
                .as_str()
                .and_then(|v| http::HeaderValue::from_str(v).ok());
            if let Some(value) = value {
                credentials.append(http::HeaderName::from_static(known), value);
            }
        }
        Ok(Subscription {
            channel,
            credentials,
        })
    }
}

impl Whisper {
    pub(super) fn parse(args: &[Value]) -> Result<Whisper, &'static str> {
        let mut map = object(args).ok_or("expected {channel, event, data}")?;
        let (Some(Value::String(channel)), Some(Value::String(event))) =
            (map.remove("channel"), map.remove("event"))
        else {
            return Err("channel and event must be strings");
        };
        if !event.starts_with(WHISPER_PREFIX) {
            return Err("only client-* events are whispered");
        }
        Ok(Whisper {
            channel,
            event,
            data: map.remove("data").unwrap_or(Value::Null),
        })
    }
}

/// Installs Echo's events on `socket`. `over_rate` takes one whisper from the socket's relay
/// budget, and says (having dealt with the socket) when it is over.
pub(super) fn attach(
    socket: &Socket,
    over_rate: impl Fn(&Socket, &mut Option<AckSender>) -> bool + Send + Sync + 'static,
) {
    let pending = Arc::new(AtomicUsize::new(0));
    socket.on("subscribe", move |socket, event, _ack| {
        subscribe(socket, &event, &pending);
    });
    socket.on("unsubscribe", |socket, event, _ack| {
        match Subscription::parse(&event.args.values) {
            // A name a client may not name is none of its channels (its own room included).
            Ok(s) if check_room_name(&s.channel).is_ok() => {
                leave_room(socket, &s.channel);
            }
            Ok(_) => {}
            Err(why) => ignored(socket, "unsubscribe", why),
        }
    });
    socket.on("client event", move |socket, event, mut ack| {
        if over_rate(socket, &mut ack) {
            return;
        }
        match Whisper::parse(&event.args.values) {
            Ok(w) => whisper(socket, w),
            Err(why) => ignored(socket, "client event", why),
        }
    });
}

fn ignored(socket: &Socket, what: &'static str, why: &str) {
    tracing::debug!(socket = %socket.id(), what, why, "echo: event ignored");
}

fn subscribe(socket: &Socket, event: &Event, pending: &Arc<AtomicUsize>) {
    let sub = match Subscription::parse(&event.args.values) {
        Ok(s) => s,
        Err(why) => return ignored(socket, "subscribe", why),
    };
    let channel = sub.channel;
    if let Err(why) = check_room_name(&channel) {
        return refused(socket, &channel, 400, why);
    }
    if !room_for_one_more(socket, &channel) {
        return refused(socket, &channel, 429, "too many channels");
    }
    if let Some(answer) = socket.may_join_now(&channel) {
        return match answer {
            Ok(grant) => enter(socket, &channel, grant),
            Err(r) => refused(socket, &channel, r.status().as_u16(), &r.to_string()),
        };
    }
    if pending.fetch_add(1, Ordering::AcqRel) >= MAX_PENDING_JOINS {
        pending.fetch_sub(1, Ordering::AcqRel);
        return refused(
            socket,
            &channel,
            429,
            "too many subscriptions waiting for the app",
        );
    }
    let asked = socket.ask_to_join_with(&channel, sub.credentials);
    let (socket, pending) = (socket.clone(), Arc::clone(pending));
    tokio::spawn(async move {
        let answer = asked.await;
        pending.fetch_sub(1, Ordering::AcqRel);
        match answer {
            Ok(grant) => enter(&socket, &channel, grant),
            Err(r) => refused(&socket, &channel, r.status().as_u16(), &r.to_string()),
        }
    });
}

/// Puts the socket in `channel`; in a presence channel it gets the member list first.
fn enter(socket: &Socket, channel: &str, grant: Grant) {
    let entered = enter_room(socket, channel, 0, grant, |members| match members {
        Some(members) => socket
            .emit(
                SUBSCRIBED,
                Args::new().arg(channel).arg(members_json(members)),
            )
            .map_err(|e| NotJoined::gone(e.to_string())),
        None => Ok(()),
    });
    if let Err(e) = entered {
        refused(socket, channel, e.status, &e.reason);
    }
}

/// laravel-echo-server's answer to a refused subscription: `subscription_error` with the
/// channel and the status (the app's, or the gateway's for its own limits). The reason is
/// logged where the refusal was decided.
fn refused(socket: &Socket, channel: &str, status: u16, why: &str) {
    tracing::debug!(socket = %socket.id(), channel = %channel, status, why, "echo: subscription refused");
    let _ = socket.emit(
        SUBSCRIPTION_ERROR,
        Args::new().arg(channel).arg(Value::from(status)),
    );
}

/// A whisper: to the channel's other sockets (and the topic's other subscribers), on a
/// private or presence channel the sender is in.
fn whisper(socket: &Socket, w: Whisper) {
    let private = socket.access().policy().needs_app(&w.channel);
    let inside = check_room_name(&w.channel).is_ok() && socket.rooms().contains(&w.channel);
    if !private || !inside {
        let why = if private {
            "not in the channel"
        } else {
            "whispers go on private and presence channels only"
        };
        return ignored(socket, "client event", why);
    }
    let ns = socket.namespace();
    let topic = ns.room_topic(&w.channel);
    let sending = ns.hub().send(
        &topic,
        Payload::new(w.event, w.data),
        Some(socket.subscriber_id()),
    );
    if let Some(Err(e)) = futures_util::FutureExt::now_or_never(sending) {
        tracing::warn!(socket = %socket.id(), channel = %w.channel, error = %e, "echo: whisper not sent");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn subscriptions_take_the_channel_and_only_credential_headers() {
        let s = Subscription::parse(&[json!({
            "channel": "private-user.1",
            "auth": {"headers": {
                "Authorization": "Bearer t",
                "X-CSRF-TOKEN": "c",
                "X-Forwarded-For": "6.6.6.6",
                "Host": "evil.example",
                "cookie": 5,
                "x-xsrf-token": "bad\nvalue",
            }},
        })])
        .expect("parses");
        assert_eq!(s.channel, "private-user.1");
        let names: Vec<&str> = s.credentials.keys().map(|k| k.as_str()).collect();
        assert_eq!(names, ["authorization", "x-csrf-token"]);
        assert_eq!(s.credentials["authorization"], "Bearer t");
        // What Echo sends without `auth`, and laravel-echo-server's JSON text.
        let plain = Subscription::parse(&[json!({"channel": "orders", "auth": {}})]);
        assert_eq!(plain.map(|s| s.credentials.len()), Ok(0));
        let text = Subscription::parse(&[json!(r#"{"channel":"orders"}"#)]);
        assert_eq!(text.map(|s| s.channel), Ok("orders".to_string()));
        for bad in [json!({}), json!({"channel": 1}), json!("nope"), json!([1])] {
            assert!(
                Subscription::parse(std::slice::from_ref(&bad)).is_err(),
                "{bad}"
            );
        }
        assert!(Subscription::parse(&[]).is_err());
    }

    #[test]
    fn whispers_are_client_events_with_a_channel() {
        assert_eq!(
            Whisper::parse(&[
                json!({"channel": "private-chat.1", "event": "client-typing", "data": {"who": 1}})
            ]),
            Ok(Whisper {
                channel: "private-chat.1".into(),
                event: "client-typing".into(),
                data: json!({"who": 1}),
            })
        );
        assert_eq!(
            Whisper::parse(&[json!({"channel": "c", "event": "client-x"})]).map(|w| w.data),
            Ok(Value::Null)
        );
        assert!(Whisper::parse(&[json!({"channel": "c", "event": "App\\Events\\Paid"})]).is_err());
        assert!(Whisper::parse(&[json!({"event": "client-x"})]).is_err());
        assert!(Whisper::parse(&[json!(42)]).is_err());
    }
}
