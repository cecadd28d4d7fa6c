use super::*;
use proptest::prelude::*;

fn ann() -> Identity {
    Identity {
        user_id: Some(json!(42)),
        user_info: json!({"name": "Ann"}),
        rooms: vec!["private-user.42".into()],
    }
}

#[test]
fn the_request_body_is_the_documented_json_byte_for_byte() {
    let identity = ann();
    let rooms = vec!["lobby".to_string(), "private-user.42".to_string()];
    let args = [json!("hi"), json!({"n": 1})];
    let r = EventRequest {
        origin: Origin::SocketIo { namespace: "/chat" },
        event: "say",
        args: &args,
        ack: true,
        socket_id: "Xk3abc",
        identity: &identity,
        rooms: &rooms,
    };
    assert_eq!(
        String::from_utf8(r.body()).expect("utf-8"),
        r#"{"transport":"socketio","namespace":"/chat","event":"say","args":["hi",{"n":1}],"ack":true,"socket_id":"Xk3abc","user":{"id":42,"info":{"name":"Ann"}},"rooms":["lobby","private-user.42"]}"#
    );
    let anonymous = Identity::default();
    let ws = EventRequest {
        origin: Origin::WebSocket { endpoint: "/ws" },
        event: "ping",
        args: &[],
        ack: false,
        socket_id: "1f",
        identity: &anonymous,
        rooms: &[],
    };
    assert_eq!(
        String::from_utf8(ws.body()).expect("utf-8"),
        r#"{"transport":"websocket","endpoint":"/ws","event":"ping","args":[],"ack":false,"socket_id":"1f","user":null,"rooms":[]}"#
    );
    // A user without info is still named.
    let bare = Identity {
        user_id: Some(json!("u-1")),
        ..Identity::default()
    };
    let v: Value = serde_json::from_slice(
        &EventRequest {
            identity: &bare,
            ..ws
        }
        .body(),
    )
    .expect("json");
    assert_eq!(v["user"], json!({"id": "u-1", "info": null}));
}

#[test]
fn event_names_are_a_list_or_everything() {
    let only = EventNames::new(["say", "typing"]);
    assert!(only.matches("say") && only.matches("typing"));
    assert!(!only.matches("join"));
    let all = EventNames::new(["say", "*"]);
    assert_eq!(all, EventNames::All);
    assert!(all.matches("anything"));
    let none = EventNames::new(Vec::<String>::new());
    assert!(none.is_none() && !none.matches("say"));
}

#[test]
fn full_answers_decode_into_their_steps() {
    let body = br#"{
        "ack": {"ok": true},
        "emit": [
            {"to": ["lobby", "hall"], "event": "said", "data": {"text": "hi"}, "except_sender": true},
            {"to": "sender", "event": "welcome", "data": ["a", "b"]},
            {"to": "lobby", "event": "bare"},
            {"to": ["sender"], "event": "to-a-room-named-sender", "data": 1}
        ],
        "join": ["lobby"],
        "leave": ["hall"],
        "disconnect": true
    }"#;
    assert_eq!(
        answer(200, body),
        Ok(Answer {
            ack: Some(json!({"ok": true})),
            emit: vec![
                Emit {
                    to: Target::Rooms(vec!["lobby".into(), "hall".into()]),
                    event: "said".into(),
                    data: json!({"text": "hi"}),
                    except_sender: true,
                },
                Emit {
                    to: Target::Sender,
                    event: "welcome".into(),
                    data: json!(["a", "b"]),
                    except_sender: false,
                },
                Emit {
                    to: Target::Rooms(vec!["lobby".into()]),
                    event: "bare".into(),
                    data: Value::Null,
                    except_sender: false,
                },
                Emit {
                    to: Target::Rooms(vec!["sender".into()]),
                    event: "to-a-room-named-sender".into(),
                    data: json!(1),
                    except_sender: false,
                },
            ],
            join: vec!["lobby".into()],
            leave: vec!["hall".into()],
            disconnect: true,
        })
    );
}

#[test]
fn empty_answers_do_nothing_and_acks_take_any_value() {
    for (status, body) in [
        (200, &b""[..]),
        (204, b"  \n"),
        (200, b"null"),
        (200, b"{}"),
        (
            201,
            br#"{"ack": null, "emit": [], "join": [], "disconnect": false}"#,
        ),
    ] {
        assert_eq!(
            answer(status, body),
            Ok(Answer::default()),
            "{status} {body:?}"
        );
    }
    for ack in [
        json!([]),
        json!([1, "two"]),
        json!("ok"),
        json!(0),
        json!(false),
    ] {
        let body = json!({ "ack": ack }).to_string();
        assert_eq!(
            answer(200, body.as_bytes()).map(|a| a.ack),
            Ok(Some(ack.clone())),
            "{ack}"
        );
    }
}

#[test]
fn refusals_failures_and_redirects_are_errors_with_a_status() {
    let refused = answer(422, br#"{"message": "The text field is required."}"#).unwrap_err();
    assert_eq!(
        refused,
        Failure {
            status: 422,
            error: "The text field is required.".into(),
            kind: FailureKind::Refused,
        }
    );
    assert_eq!(
        refused.to_json().to_string(),
        r#"{"error":"The text field is required.","status":422}"#
    );
    assert_eq!(
        answer(403, b"").unwrap_err().error,
        "not allowed",
        "a refusal without a reason"
    );
    let failed = answer(500, b"<html>Whoops</html>").unwrap_err();
    assert_eq!(
        (failed.status, failed.error.as_str(), failed.kind),
        (
            500,
            "the app failed to handle the event (500)",
            FailureKind::Failed
        )
    );
    let redirect = answer(302, b"").unwrap_err();
    assert_eq!(
        (redirect.status, redirect.error.as_str()),
        (502, "the app answered 302 to the event")
    );
}

#[test]
fn unusable_answers_are_refused_whole_with_the_reason() {
    let cases: &[(&[u8], &str)] = &[
        (b"<html>ok</html>", "not JSON"),
        (b"true", "expected a JSON object"),
        (b"[1]", "expected a JSON object"),
        (
            br#"{"acks": 1}"#,
            "unknown key `acks` (known: ack, emit, join, leave, disconnect)",
        ),
        (br#"{"emit": {"to": "a"}}"#, "`emit` must be a list"),
        (br#"{"emit": [1]}"#, "`emit[0]` must be an object"),
        (br#"{"emit": [{"event": "x"}]}"#, "`emit[0].to` is missing"),
        (
            br#"{"emit": [{"to": "sender"}]}"#,
            "`emit[0].event` is missing",
        ),
        (
            br#"{"emit": [{"to": "sender", "event": 5}]}"#,
            "`emit[0].event` must be a string",
        ),
        (
            br#"{"emit": [{"to": "sender", "event": "x", "room": "a"}]}"#,
            "unknown key `emit[0].room` (known: to, event, data, except_sender)",
        ),
        (
            br#"{"emit": [{"to": 5, "event": "x"}]}"#,
            "`emit[0].to` must be \"sender\", a room or a list of rooms",
        ),
        (
            br#"{"emit": [{"to": ["a", 1], "event": "x"}]}"#,
            "`emit[0].to` must be a list of room names",
        ),
        (
            br#"{"emit": [{"to": [], "event": "x"}]}"#,
            "`emit[0].to` names no room",
        ),
        (
            br#"{"emit": [{"to": [""], "event": "x"}]}"#,
            "`emit[0].to` names an empty room",
        ),
        (
            br#"{"emit": [{"to": "", "event": "x"}]}"#,
            "`emit[0].to` names an empty room",
        ),
        (
            br#"{"emit": [{"to": "sender", "event": ""}]}"#,
            "`emit[0].event` \"\" is empty or reserved",
        ),
        (
            br#"{"emit": [{"to": "a", "event": "ok"}, {"to": "a", "event": "disconnect"}]}"#,
            "`emit[1].event` \"disconnect\" is empty or reserved",
        ),
        (
            br#"{"emit": [{"to": "sender", "event": "x", "except_sender": true}]}"#,
            "`emit[0]` is to the sender and except the sender",
        ),
        (
            br#"{"emit": [{"to": "a", "event": "x", "except_sender": 1}]}"#,
            "`emit[0].except_sender` must be true or false",
        ),
        (
            br#"{"join": "lobby"}"#,
            "`join` must be a list of room names",
        ),
        (br#"{"join": [""]}"#, "`join` names an empty room"),
        (br#"{"leave": [1]}"#, "`leave` must be a list of room names"),
        (
            br#"{"disconnect": "yes"}"#,
            "`disconnect` must be true or false",
        ),
    ];
    for (body, why) in cases {
        let e = answer(200, body).unwrap_err();
        assert_eq!(e.status, 502, "{body:?}");
        assert_eq!(e.kind, FailureKind::Failed, "{body:?}");
        assert!(
            e.error.starts_with("the app's answer is unusable: ") && e.error.contains(why),
            "{}: {e}",
            String::from_utf8_lossy(body)
        );
    }
    let many: Vec<Value> = (0..=MAX_EMITS)
        .map(|i| json!({"to": "sender", "event": format!("e{i}")}))
        .collect();
    let e = answer(200, json!({ "emit": many }).to_string().as_bytes()).unwrap_err();
    assert!(e.error.contains("at most 64"), "{e}");
    let rooms: Vec<String> = (0..=MAX_ROOMS).map(|i| format!("r{i}")).collect();
    for key in ["join", "leave"] {
        let e = answer(200, json!({ key: rooms }).to_string().as_bytes()).unwrap_err();
        assert!(e.error.contains("65 rooms; at most 64"), "{e}");
    }
    let body = json!({"emit": [{"to": rooms, "event": "x"}]}).to_string();
    assert!(answer(200, body.as_bytes()).is_err());
}

/// JSON that often has the answer's own keys, so the decoder's deeper paths run.
fn arb_answer_json() -> impl Strategy<Value = Value> {
    let key = prop_oneof![
        Just("ack".to_string()),
        Just("emit".to_string()),
        Just("join".to_string()),
        Just("leave".to_string()),
        Just("disconnect".to_string()),
        Just("to".to_string()),
        Just("event".to_string()),
        Just("data".to_string()),
        Just("except_sender".to_string()),
        Just("sender".to_string()),
        any::<String>(),
    ];
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        Just(Value::from("sender")),
        Just(Value::from("")),
        Just(Value::from("disconnect")),
        any::<String>().prop_map(Value::from),
    ];
    leaf.prop_recursive(5, 64, 6, move |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::from),
            proptest::collection::vec((key.clone(), inner), 0..6)
                .prop_map(|kv| Value::Object(kv.into_iter().collect())),
        ]
    })
}

proptest! {
    #[test]
    fn the_answer_decoder_never_panics(value in arb_answer_json(), status in 100u16..600) {
        let body = value.to_string();
        if let Ok(a) = answer(status, body.as_bytes()) {
            // Whatever it accepts is within the bounds it promises.
            prop_assert!((200..300).contains(&status));
            prop_assert!(a.emit.len() <= MAX_EMITS);
            prop_assert!(a.join.len() <= MAX_ROOMS && a.leave.len() <= MAX_ROOMS);
            for e in &a.emit {
                prop_assert!(!e.event.is_empty());
                if let Target::Rooms(r) = &e.to {
                    prop_assert!(!r.is_empty() && r.len() <= MAX_ROOMS);
                }
            }
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic(body in proptest::collection::vec(any::<u8>(), 0..256)) {
        let _ = answer(200, &body);
        let _ = answer(403, &body);
    }
}

/// An app that answers each event after `delay` with `answer`, and counts the posts.
struct App {
    delay: Duration,
    answer: (u16, &'static str),
    posts: AtomicUsize,
}

#[async_trait::async_trait]
impl EventPoster for App {
    async fn post(&self, _: &ClientInfo, body: Bytes) -> Result<(u16, Bytes), Failure> {
        self.posts.fetch_add(1, Ordering::AcqRel);
        serde_json::from_slice::<Value>(&body).map_err(|e| Failure::failed(500, e.to_string()))?;
        tokio::time::sleep(self.delay).await;
        Ok((self.answer.0, Bytes::from_static(self.answer.1.as_bytes())))
    }
}

fn app(delay_ms: u64, answer: (u16, &'static str)) -> (Arc<App>, AppEvents) {
    let app = Arc::new(App {
        delay: Duration::from_millis(delay_ms),
        answer,
        posts: AtomicUsize::new(0),
    });
    let events = AppEvents::new(
        app.clone(),
        "/realtime/events",
        Duration::from_millis(1_000),
        2,
    );
    (app, events)
}

fn request<'a>(identity: &'a Identity) -> EventRequest<'a> {
    EventRequest {
        origin: Origin::SocketIo { namespace: "/" },
        event: "say",
        args: &[],
        ack: true,
        socket_id: "s1",
        identity,
        rooms: &[],
    }
}

#[tokio::test(start_paused = true)]
async fn an_answer_after_the_timeout_is_a_504() {
    let (_, events) = app(5_000, (200, r#"{"ack": 1}"#));
    let identity = Identity::default();
    let asking = events
        .ask(
            &InFlight::default(),
            ClientInfo::default,
            &request(&identity),
        )
        .expect("posted");
    let e = asking.await.unwrap_err();
    assert_eq!(
        (e.status, e.error.as_str()),
        (504, "the app did not answer within 1000 ms")
    );
}

#[tokio::test(start_paused = true)]
async fn a_connection_over_its_in_flight_bound_is_refused_at_once_until_an_answer_comes() {
    let (app, events) = app(100, (200, r#"{"ack": "done"}"#));
    let identity = Identity::default();
    let in_flight = InFlight::default();
    let first = events
        .ask(&in_flight, ClientInfo::default, &request(&identity))
        .expect("first");
    let second = events
        .ask(&in_flight, ClientInfo::default, &request(&identity))
        .expect("second");
    assert_eq!(in_flight.count(), 2);
    let mut built = false;
    let third = events.ask(
        &in_flight,
        || {
            built = true;
            ClientInfo::default()
        },
        &request(&identity),
    );
    let Err(busy) = third else {
        panic!("the third event was posted")
    };
    assert_eq!(
        busy,
        Failure {
            status: 429,
            error: "too many events waiting for the app (at most 2 per connection)".into(),
            kind: FailureKind::Busy,
        }
    );
    assert!(!built, "nothing is built for a refused event");
    // Another connection has its own bound.
    let other = events.ask(
        &InFlight::default(),
        ClientInfo::default,
        &request(&identity),
    );
    assert!(other.is_ok());
    drop(other);
    assert_eq!(first.await.map(|a| a.ack), Ok(Some(json!("done"))));
    assert_eq!(in_flight.count(), 1);
    // An abandoned event gives its place back too.
    drop(second);
    assert_eq!(in_flight.count(), 0);
    assert!(events
        .ask(&in_flight, ClientInfo::default, &request(&identity))
        .is_ok());
    assert_eq!(
        app.posts.load(Ordering::Acquire),
        1,
        "only the first was awaited"
    );
}
