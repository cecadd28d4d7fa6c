//! The app's side of the gateway's events to the app (`POST /realtime/events`), answered per
//! event name as a Rails or Laravel controller would, for the tests and the demo. The request
//! is `{"transport", "namespace" | "endpoint", "event", "args", "ack", "socket_id", "user":
//! {"id", "info"} | null, "rooms"}`; the answers:
//!
//! * `echo`: acks with the event's arguments (`{"ack": args}`).
//! * `whoami`: acks with what the app was told of the client: `{"user", "socket_id",
//!   "rooms", "transport", "place", "cookie"}` (`place`: the namespace or the endpoint,
//!   `cookie`: the request's `Cookie` header, as the gateway passed it on).
//! * `say` `{"room", "text"}`: emits `said` `{"from": <user id or null>, "text"}` to the room,
//!   the sender left out, and acks `{"ok": true}`.
//! * `enter` `<room>` / `exit` `<room>`: joins / leaves the room, acks `{"joined": room}` /
//!   `{"left": room}`.
//! * `reply` `<data>`: emits `reply` with the data to the sender alone, acks `{"ok": true}`.
//! * `bye`: acks `{"bye": true}` and disconnects the sender.
//! * `slow` `<ms>`: acks `"slow"` after that many milliseconds ([`SLOW`] without a number).
//! * `fail`: 500. `refuse`: 422 `{"message": "The text field is required."}`. `garbage`: 200
//!   with an answer the gateway cannot use.
//! * Any other event: 404 `{"message": "no handler for event <name>"}`.

use std::time::Duration;

use axum::http::{header, HeaderMap, StatusCode};
use serde_json::{json, Value};

use crate::auth::{Answer, SLOW};

/// Longest wait `slow` takes from its argument.
const MAX_SLOW: Duration = Duration::from_secs(60);

fn ok(body: Value) -> Answer {
    Answer {
        status: StatusCode::OK,
        body: body.to_string(),
        delay: None,
    }
}

/// `POST /realtime/events`: the answer, and the event's name (for the log line).
pub fn answer(headers: &HeaderMap, body: &[u8]) -> (Answer, String) {
    let request: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let event = request["event"].as_str().unwrap_or_default().to_string();
    let args = request["args"].as_array().cloned().unwrap_or_default();
    let first = args.first().cloned().unwrap_or(Value::Null);
    let answer = match event.as_str() {
        "echo" => ok(json!({ "ack": args })),
        "whoami" => {
            let cookie = headers
                .get_all(header::COOKIE)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .collect::<Vec<_>>()
                .join("; ");
            let place = request
                .get("namespace")
                .or_else(|| request.get("endpoint"))
                .cloned()
                .unwrap_or(Value::Null);
            ok(json!({"ack": {
                "user": request["user"],
                "socket_id": request["socket_id"],
                "rooms": request["rooms"],
                "transport": request["transport"],
                "place": place,
                "cookie": cookie,
            }}))
        }
        "say" => ok(json!({
            "emit": [{
                "to": [first["room"]],
                "event": "said",
                "data": {"from": request["user"]["id"], "text": first["text"]},
                "except_sender": true,
            }],
            "ack": {"ok": true},
        })),
        "enter" => ok(json!({"join": [first], "ack": {"joined": first}})),
        "exit" => ok(json!({"leave": [first], "ack": {"left": first}})),
        "reply" => ok(json!({
            "emit": [{"to": "sender", "event": "reply", "data": first}],
            "ack": {"ok": true},
        })),
        "bye" => ok(json!({"ack": {"bye": true}, "disconnect": true})),
        "slow" => Answer {
            delay: Some(
                first
                    .as_u64()
                    .map_or(SLOW, Duration::from_millis)
                    .min(MAX_SLOW),
            ),
            ..ok(json!({"ack": "slow"}))
        },
        "fail" => Answer {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            body: "<html>Whoops, something went wrong.</html>".into(),
            delay: None,
        },
        "refuse" => Answer {
            status: StatusCode::UNPROCESSABLE_ENTITY,
            body: json!({"message": "The text field is required."}).to_string(),
            delay: None,
        },
        "garbage" => ok(json!({"emits": [{"to": "sender", "event": "x"}]})),
        other => Answer {
            status: StatusCode::NOT_FOUND,
            body: json!({"message": format!("no handler for event {other}")}).to_string(),
            delay: None,
        },
    };
    (answer, event)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ask(body: Value) -> Answer {
        let mut headers = HeaderMap::new();
        headers.insert(header::COOKIE, "user=ann".parse().expect("value"));
        answer(&headers, body.to_string().as_bytes()).0
    }

    fn json_of(a: &Answer) -> Value {
        serde_json::from_str(&a.body).expect("json")
    }

    #[test]
    fn each_event_gets_its_answer() {
        let user = json!({"id": "ann", "info": {"name": "ann"}});
        let a = ask(json!({"event": "echo", "args": [1, "two"]}));
        assert_eq!(json_of(&a), json!({"ack": [1, "two"]}));
        let a = ask(
            json!({"event": "whoami", "args": [], "user": user, "socket_id": "s1",
            "rooms": ["r"], "transport": "socketio", "namespace": "/"}),
        );
        assert_eq!(
            json_of(&a),
            json!({"ack": {"user": user, "socket_id": "s1", "rooms": ["r"],
                "transport": "socketio", "place": "/", "cookie": "user=ann"}})
        );
        let a =
            ask(json!({"event": "say", "args": [{"room": "lobby", "text": "hi"}], "user": user}));
        assert_eq!(
            json_of(&a),
            json!({"emit": [{"to": ["lobby"], "event": "said", "data": {"from": "ann", "text": "hi"},
                "except_sender": true}], "ack": {"ok": true}})
        );
        let a = ask(json!({"event": "enter", "args": ["lobby"]}));
        assert_eq!(
            json_of(&a),
            json!({"join": ["lobby"], "ack": {"joined": "lobby"}})
        );
        let a = ask(json!({"event": "bye", "args": []}));
        assert_eq!(
            json_of(&a),
            json!({"ack": {"bye": true}, "disconnect": true})
        );
        let a = ask(json!({"event": "slow", "args": [300]}));
        assert_eq!(a.delay, Some(Duration::from_millis(300)));
        assert_eq!(ask(json!({"event": "slow"})).delay, Some(SLOW));
        assert_eq!(
            ask(json!({"event": "fail"})).status,
            StatusCode::INTERNAL_SERVER_ERROR
        );
        assert_eq!(
            ask(json!({"event": "refuse"})).status,
            StatusCode::UNPROCESSABLE_ENTITY
        );
        let a = ask(json!({"event": "dance"}));
        assert_eq!(
            (a.status, json_of(&a)),
            (
                StatusCode::NOT_FOUND,
                json!({"message": "no handler for event dance"})
            )
        );
        // Not JSON at all: no event, no handler.
        let (a, name) = answer(&HeaderMap::new(), b"nope");
        assert_eq!((a.status, name.as_str()), (StatusCode::NOT_FOUND, ""));
    }
}
