//! The events of a namespace that names them ([`NamespaceBehaviour::events`]) go to the app
//! ([`crate::app_events`]), and its answer is done here: leave and join rooms, emit, then the
//! ack, then the disconnect.
//!
//! * An event is posted in a task of its own: the socket's other events go on meanwhile, and at
//!   most `max_in_flight` of them wait for the app at once (the next one is acked at once with
//!   `{"error": ..., "status": 429}`).
//! * A client that asked for an ack always gets one: the app's `ack` (an array is the argument
//!   list), none (no arguments) when the app named none, or `{"error", "status"}` when there is
//!   no usable answer.
//! * A binary argument is posted as `{"base64": "<the bytes>"}` in its place (JSON has no
//!   bytes); the app's answer is JSON only.
//! * Rooms the app joins and leaves are rooms as the generic `join` has them (a name a client
//!   could choose, within [`MAX_CLIENT_ROOMS`](super::MAX_CLIENT_ROOMS)), joined with the app's
//!   word, so a private room needs no further question; a presence room makes the socket one
//!   of its tabs as the connect answer's user. Emits reach the namespace's rooms (a socket's id
//!   is its room, so the app can reach one socket), or the sender alone.
//! * A step that cannot be done (a room refused, an emit not sent) is logged; the others are
//!   done all the same.
//!
//! [`NamespaceBehaviour::events`]: super::NamespaceBehaviour::events

use std::sync::Arc;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use bytes::Bytes;
use serde_json::{json, Map, Value};

use super::client_rooms::{check_room_name, enter_room, leave_room, room_for_one_more};
use super::event::{Args, Event};
use super::state::{AckSender, Socket};
use crate::access::Grant;
use crate::app_events::{Answer, AppEvents, EventNames, EventRequest, InFlight, Origin, Target};

/// Sends the events `names` picks to `app` (`history`: what a room the app joins replays, the
/// namespace's `history`).
pub(super) fn attach(socket: &Socket, names: &EventNames, app: &AppEvents, history: usize) {
    let to_app = Arc::new(ToApp {
        app: app.clone(),
        in_flight: InFlight::default(),
        history,
    });
    match names {
        EventNames::None => {}
        EventNames::All => {
            socket.on_fallback(move |socket, event, ack| to_app.post(socket, event, ack));
        }
        EventNames::Only(names) => {
            for name in names {
                let to_app = Arc::clone(&to_app);
                socket.on(name.clone(), move |socket, event, ack| {
                    to_app.post(socket, event, ack)
                });
            }
        }
    }
}

/// One socket's route to the app.
struct ToApp {
    app: AppEvents,
    in_flight: InFlight,
    history: usize,
}

impl ToApp {
    fn post(&self, socket: &Socket, event: Event, ack: Option<AckSender>) {
        let args = with_binaries(event.args.values, &event.args.binaries);
        let own = socket.id();
        let rooms: Vec<String> = socket.rooms().into_iter().filter(|r| r != own).collect();
        let request = EventRequest {
            origin: Origin::SocketIo {
                namespace: socket.nsp(),
            },
            event: &event.name,
            args: &args,
            ack: ack.is_some(),
            socket_id: own,
            identity: socket.user(),
            rooms: &rooms,
        };
        let asking = match self
            .app
            .ask(&self.in_flight, || socket.client_info(), &request)
        {
            Ok(asking) => asking,
            Err(failure) => return reply(ack, Args::from(vec![failure.to_json()])),
        };
        let (socket, history) = (socket.clone(), self.history);
        tokio::spawn(async move {
            match asking.await {
                Ok(answer) => apply(&socket, answer, ack, history).await,
                Err(failure) => reply(ack, Args::from(vec![failure.to_json()])),
            }
        });
    }
}

fn reply(ack: Option<AckSender>, args: Args) {
    if let Some(ack) = ack {
        let _ = ack.send(args);
    }
}

/// Does what the app answered, in the documented order.
async fn apply(socket: &Socket, answer: Answer, ack: Option<AckSender>, history: usize) {
    let Answer {
        ack: acked,
        emit,
        join,
        leave,
        disconnect,
    } = answer;
    for room in &leave {
        match check_room_name(room) {
            Ok(()) => {
                leave_room(socket, room);
            }
            Err(why) => {
                tracing::warn!(socket = %socket.id(), nsp = %socket.nsp(), room = %room, error = %why, "app event: the app's leave not done");
            }
        }
    }
    for room in &join {
        let refused = check_room_name(room)
            .map_err(str::to_string)
            .and_then(|()| {
                room_for_one_more(socket, room)
                    .then_some(())
                    .ok_or_else(|| "too many rooms".to_string())
            })
            .and_then(|()| {
                enter_room(socket, room, history, Grant::default(), |_| Ok(()))
                    .map_err(|e| e.reason)
            });
        if let Err(why) = refused {
            tracing::warn!(socket = %socket.id(), nsp = %socket.nsp(), room = %room, error = %why, "app event: the app's join not done");
        }
    }
    for e in emit {
        let args = Args::from(e.data);
        let sent = match e.to {
            Target::Sender => socket.emit(&e.event, args),
            Target::Rooms(rooms) => {
                let to = if e.except_sender {
                    socket.broadcast()
                } else {
                    socket.namespace().broadcast()
                };
                to.to_rooms(rooms).emit(&e.event, args).await.map(|_| ())
            }
        };
        if let Err(why) = sent {
            tracing::warn!(socket = %socket.id(), nsp = %socket.nsp(), event = %e.event, error = %why, "app event: the app's emit not sent");
        }
    }
    reply(ack, acked.map(Args::from).unwrap_or_default());
    if disconnect {
        socket.disconnect();
    }
}

/// The arguments as the app gets them: each placeholder of a binary attachment replaced by
/// `{"base64": "<standard base64 of the bytes>"}`. A placeholder naming no attachment stays as
/// the client sent it.
pub(super) fn with_binaries(values: Vec<Value>, binaries: &[Bytes]) -> Vec<Value> {
    if binaries.is_empty() {
        return values;
    }
    values
        .into_iter()
        .map(|v| replace_placeholders(v, binaries))
        .collect()
}

fn replace_placeholders(value: Value, binaries: &[Bytes]) -> Value {
    match value {
        Value::Array(items) => Value::Array(
            items
                .into_iter()
                .map(|v| replace_placeholders(v, binaries))
                .collect(),
        ),
        Value::Object(map) => match attachment(&map, binaries) {
            Some(bytes) => json!({"base64": STANDARD.encode(bytes)}),
            None => Value::Object(
                map.into_iter()
                    .map(|(k, v)| (k, replace_placeholders(v, binaries)))
                    .collect::<Map<String, Value>>(),
            ),
        },
        other => other,
    }
}

/// The attachment `{"_placeholder": true, "num": i}` stands for.
fn attachment<'a>(map: &Map<String, Value>, binaries: &'a [Bytes]) -> Option<&'a Bytes> {
    if map.len() != 2 || map.get("_placeholder") != Some(&Value::Bool(true)) {
        return None;
    }
    let num = usize::try_from(map.get("num")?.as_u64()?).ok()?;
    binaries.get(num)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::socketio::placeholder;

    #[test]
    fn binary_arguments_reach_the_app_as_base64() {
        let values = vec![
            json!("text"),
            placeholder(0),
            json!({"file": placeholder(1), "name": "a.png", "list": [placeholder(0)]}),
            json!({"_placeholder": true, "num": 7}),
            json!({"_placeholder": true, "num": 0, "extra": 1}),
        ];
        let binaries = [
            Bytes::from_static(&[1, 2, 3]),
            Bytes::from_static(b"\xff\x00"),
        ];
        assert_eq!(
            Value::from(with_binaries(values, &binaries)).to_string(),
            r#"["text",{"base64":"AQID"},{"file":{"base64":"/wA="},"name":"a.png","list":[{"base64":"AQID"}]},{"_placeholder":true,"num":7},{"_placeholder":true,"num":0,"extra":1}]"#
        );
        // Without attachments nothing is looked at.
        let plain = vec![json!({"_placeholder": true, "num": 0})];
        assert_eq!(with_binaries(plain.clone(), &[]), plain);
    }
}
