//! `pubsub.v1` `event` messages to the app ([`crate::app_events`]), on an endpoint whose
//! `events` name them: each is posted in a task of its own, and the connection's loop does
//! what the answer says when it comes back (leave, join, emit, ack, disconnect).
//!
//! | the client sends | the server answers |
//! |---|---|
//! | `{"op":"event","event":"say","data":...,"id":7}` (`data`, `id` optional) | `{"op":"ack","id":7,"data":<the app's ack, or null>}`, or `{"op":"error","message","id":7}` |
//! | | an emit to the sender: `{"op":"event","event","data"}`; to topics: their `message` frames |
//!
//! Without an `id` no `ack` comes (errors still do). Topics the app joins are subscribed to as
//! the connect answer's rooms are (no further question to the app), with `subscribed` frames;
//! topics it leaves are answered `unsubscribed`; its emits to topics are publishes (not the
//! policy's `client_publish`: the app's word), leaving the sender out with `except_sender`.
//! `disconnect` closes with 1000 `disconnected by the app` once the frames before it are out.

use serde_json::Value;
use tokio::sync::mpsc::UnboundedSender;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message as WsMessage;

use super::{Connection, End, Mode, PubSubIn, PubSubOut, WsEndpoint, TOPIC_PREFIX};
use crate::app_events::{Answer, EventRequest, EventRoute, Failure, InFlight, Origin, Target};
use crate::hub;

/// One connection's events to the app: posted in tasks of their own, their answers applied by
/// the connection's loop as they come back.
pub(super) struct ToApp {
    route: EventRoute,
    in_flight: InFlight,
    answered: UnboundedSender<Answered>,
    /// The endpoint's route path, as the app is told.
    endpoint: String,
}

/// The app's answer (or why there is none) to the event that gave `id`.
pub(super) struct Answered {
    id: Option<Value>,
    result: Result<Answer, Failure>,
}

impl WsEndpoint {
    /// A `pubsub.v1` connection's route to the app, when the endpoint sends events there.
    pub(super) fn to_app(&self, mode: Mode, answered: UnboundedSender<Answered>) -> Option<ToApp> {
        let route = self
            .config
            .events
            .clone()
            .filter(|_| mode == Mode::PubSub)?;
        Some(ToApp {
            route,
            in_flight: InFlight::default(),
            answered,
            endpoint: self
                .name
                .strip_prefix(TOPIC_PREFIX)
                .unwrap_or(&self.name)
                .to_string(),
        })
    }
}

impl Connection {
    /// Posts an `event` to the app in a task of its own (its answer comes back to the loop), or
    /// says at once why not: no events here, or too many waiting.
    pub(super) fn event_to_app(
        &self,
        event: String,
        data: Value,
        id: Option<Value>,
    ) -> Vec<WsMessage> {
        let Some(to_app) = self
            .to_app
            .as_ref()
            .filter(|t| t.route.names.matches(&event))
        else {
            let shown: String = event.chars().take(64).collect();
            let message = format!("event {shown:?} is not sent to the app on this endpoint");
            return vec![PubSubOut::Error { message, id }.text()];
        };
        let args: Vec<Value> = Some(data).filter(|d| !d.is_null()).into_iter().collect();
        let mut rooms: Vec<String> = self.sub.topics().iter().map(|t| t.to_string()).collect();
        rooms.sort();
        let request = EventRequest {
            origin: Origin::WebSocket {
                endpoint: &to_app.endpoint,
            },
            event: &event,
            args: &args,
            ack: id.is_some(),
            socket_id: &self.id,
            identity: &self.identity,
            rooms: &rooms,
        };
        let info = || self.info.clone().unwrap_or_default();
        match to_app.route.app.ask(&to_app.in_flight, info, &request) {
            Ok(asking) => {
                let answered = to_app.answered.clone();
                tokio::spawn(async move {
                    let result = asking.await;
                    let _ = answered.send(Answered { id, result });
                });
                Vec::new()
            }
            Err(failure) => vec![PubSubOut::Error {
                message: failure.error,
                id,
            }
            .text()],
        }
    }

    /// Does what the app answered to an event (leave, join, emit, ack, disconnect): the frames
    /// for the client, and the end of the connection when the app disconnects it.
    pub(super) async fn answered(&self, done: Answered) -> (Vec<WsMessage>, Option<End>) {
        let answer = match done.result {
            Ok(answer) => answer,
            Err(failure) => {
                let message = failure.error;
                return (
                    vec![PubSubOut::Error {
                        message,
                        id: done.id,
                    }
                    .text()],
                    None,
                );
            }
        };
        let mut out = Vec::new();
        for topic in answer.leave {
            out.extend(self.pubsub(PubSubIn::Unsubscribe { topic }, false).await);
        }
        for topic in answer.join {
            let request = PubSubIn::Subscribe { topic, since: None };
            out.extend(self.pubsub(request, true).await);
        }
        for e in answer.emit {
            let topics = match e.to {
                Target::Sender => {
                    out.push(
                        PubSubOut::Event {
                            event: e.event,
                            data: e.data,
                        }
                        .text(),
                    );
                    continue;
                }
                Target::Rooms(topics) => topics,
            };
            let topics: Vec<String> = topics
                .into_iter()
                .filter(|t| match self.hub.check_topic_name(t) {
                    Ok(()) => true,
                    Err(why) => {
                        tracing::warn!(endpoint = %self.room, topic = %t, error = %why, "app event: the app's emit not sent there");
                        false
                    }
                })
                .collect();
            let origin = e.except_sender.then(|| self.sub.id());
            let payload = hub::Payload::new(e.event, e.data);
            if let Err(why) = self.hub.send_many(&topics, payload, origin).await {
                tracing::warn!(endpoint = %self.room, error = %why, "app event: the app's emit not sent");
            }
        }
        if let Some(id) = done.id {
            let data = answer.ack.unwrap_or(Value::Null);
            out.push(PubSubOut::Ack { id, data }.text());
        }
        let end = answer
            .disconnect
            .then(|| End::Close(CloseCode::Normal, "disconnected by the app".into()));
        (out, end)
    }
}
