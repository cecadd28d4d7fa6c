//! The raw WebSocket endpoint: the chat protocol, pub/sub with resume, the broadcast room, and
//! every way a client can be refused or closed.

use std::time::Duration;

use e2e::{client, websocket, Gateway};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;

const CONFIG: &str = r#"
listen: {https: "{https}", admin: "{admin}"}
tls: {state_dir: state}
realtime:
  hub: {history: 10}
  websocket:
    /ws: {allowed_origins: ["https://good.example"], max_message_bytes: 1024}
  # pubsub.v1 clients publish to `prices` here; the policy is tested in authz.rs.
  policy: {client_publish: [prices]}
routes:
  - {path: /ws, realtime: websocket}
"#;

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn connect(gw: &Gateway, protocol: Option<&str>) -> Ws {
    let url = format!("wss://127.0.0.1:{}/ws", gw.ports.https);
    websocket(&url, protocol).await.expect("upgrade").0
}

async fn next_text(ws: &mut Ws) -> String {
    loop {
        match tokio::time::timeout(Duration::from_secs(5), ws.next()).await {
            Ok(Some(Ok(Message::Text(t)))) => return t.to_string(),
            Ok(Some(Ok(Message::Ping(_) | Message::Pong(_)))) => continue,
            other => panic!("expected a text message, got {other:?}"),
        }
    }
}

async fn next_json(ws: &mut Ws) -> Value {
    serde_json::from_str(&next_text(ws).await).expect("json")
}

async fn close_code(ws: &mut Ws) -> (CloseCode, String) {
    loop {
        match tokio::time::timeout(Duration::from_secs(5), ws.next()).await {
            Ok(Some(Ok(Message::Close(Some(f))))) => return (f.code, f.reason.to_string()),
            Ok(Some(Ok(_))) => continue,
            other => panic!("expected a close frame, got {other:?}"),
        }
    }
}

fn send_json(v: Value) -> Message {
    Message::text(v.to_string())
}

#[tokio::test]
async fn three_clients_chat_with_trimming_dropping_and_leave_on_close() {
    let gw = Gateway::start(CONFIG);
    let chat = Some("beej-chat-protocol");
    let (mut a, mut b, mut c) = (
        connect(&gw, chat).await,
        connect(&gw, chat).await,
        connect(&gw, chat).await,
    );
    a.send(send_json(
        json!({"type": "chat-join", "payload": {"username": "  ann  "}}),
    ))
    .await
    .expect("send");
    for ws in [&mut a, &mut b, &mut c] {
        assert_eq!(
            next_json(ws).await,
            json!({"type": "chat-join", "payload": {"username": "ann"}})
        );
    }
    // An empty message is dropped; the next one arrives trimmed, and nothing in between.
    a.send(send_json(
        json!({"type": "chat-message", "payload": {"username": "ann", "message": "   "}}),
    ))
    .await
    .expect("send");
    a.send(send_json(
        json!({"type": "chat-message", "payload": {"username": " ann", "message": " hi all "}}),
    ))
    .await
    .expect("send");
    for ws in [&mut a, &mut b, &mut c] {
        assert_eq!(
            next_json(ws).await,
            json!({"type": "chat-message", "payload": {"username": "ann", "message": "hi all"}})
        );
    }
    // Unknown types are ignored, not fatal.
    b.send(send_json(json!({"type": "typing", "payload": {}})))
        .await
        .expect("send");
    a.close(None).await.expect("close");
    for ws in [&mut b, &mut c] {
        assert_eq!(
            next_json(ws).await,
            json!({"type": "chat-leave", "payload": {"username": "ann"}})
        );
    }
}

#[tokio::test]
async fn bad_chat_json_closes_with_1007_and_oversized_messages_with_1009() {
    let gw = Gateway::start(CONFIG);
    let mut ws = connect(&gw, Some("beej-chat-protocol")).await;
    ws.send(Message::text("not json")).await.expect("send");
    let (code, reason) = close_code(&mut ws).await;
    assert_eq!(code, CloseCode::Invalid, "{reason}");
    assert!(!reason.is_empty());

    let mut ws = connect(&gw, Some("beej-chat-protocol")).await;
    ws.send(send_json(
        json!({"type": "chat-message", "payload": {"username": "x"}}),
    ))
    .await
    .expect("send");
    assert_eq!(close_code(&mut ws).await.0, CloseCode::Invalid);

    let mut ws = connect(&gw, Some("beej-chat-protocol")).await;
    ws.send(Message::text("x".repeat(5000)))
        .await
        .expect("send");
    assert_eq!(close_code(&mut ws).await.0, CloseCode::Size);

    // Everyone else is fine.
    let mut ok = connect(&gw, Some("beej-chat-protocol")).await;
    ok.send(send_json(
        json!({"type": "chat-join", "payload": {"username": "z"}}),
    ))
    .await
    .expect("send");
    assert_eq!(next_json(&mut ok).await["type"], "chat-join");
}

#[tokio::test]
async fn unknown_protocols_get_400_and_foreign_origins_403_before_any_upgrade() {
    let gw = Gateway::start(CONFIG);
    let url = format!("wss://127.0.0.1:{}/ws", gw.ports.https);
    let err = websocket(&url, Some("mqtt, stomp"))
        .await
        .expect_err("refused");
    assert!(err.to_string().contains("400"), "{err}");

    let raw = e2e::raw_tls(
        gw.https_addr(),
        b"GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nOrigin: https://evil.example\r\n\r\n",
        Duration::from_secs(3),
    )
    .await;
    assert!(raw.starts_with("HTTP/1.1 403"), "{raw}");
    let logs = gw.proc.logs();
    assert!(
        logs.contains("https://evil.example"),
        "the refusal names the origin"
    );
    assert!(
        logs.contains("mqtt, stomp"),
        "the refusal names the protocols"
    );

    let raw = e2e::raw_tls(
        gw.https_addr(),
        b"GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nOrigin: https://good.example\r\n\r\n",
        Duration::from_secs(1),
    )
    .await;
    assert!(raw.starts_with("HTTP/1.1 101"), "{raw}");
}

#[tokio::test]
async fn without_a_subprotocol_everyone_shares_one_broadcast_room() {
    let gw = Gateway::start(CONFIG);
    let mut a = connect(&gw, None).await;
    let hello = next_text(&mut a).await;
    assert!(hello.ends_with(" connected"), "{hello}");
    let a_id = hello.trim_end_matches(" connected").to_string();
    let mut b = connect(&gw, None).await;
    let b_hello = next_text(&mut a).await;
    assert_eq!(next_text(&mut b).await, b_hello);
    let b_id = b_hello.trim_end_matches(" connected").to_string();
    b.send(Message::text("hello")).await.expect("send");
    assert_eq!(next_text(&mut a).await, format!("{b_id}: hello"));
    assert_eq!(next_text(&mut b).await, format!("{b_id}: hello"));
    b.close(None).await.expect("close");
    assert_eq!(next_text(&mut a).await, format!("{b_id} disconnected"));
    assert_ne!(a_id, b_id);
}

#[tokio::test]
async fn pubsub_resumes_exactly_and_resets_beyond_history() {
    let gw = Gateway::start(CONFIG);
    let mut ws = connect(&gw, Some("pubsub.v1")).await;
    ws.send(send_json(json!({"op": "subscribe", "topic": "prices"})))
        .await
        .expect("send");
    assert_eq!(next_json(&mut ws).await["op"], "subscribed");
    // The app publishes; the subscriber hears it with its position.
    let mut positions = Vec::new();
    for i in 1..=3 {
        client()
            .post(gw.admin("/publish"))
            .json(&json!({"topic": "prices", "event": "tick", "data": i}))
            .send()
            .await
            .expect("publish");
        let m = next_json(&mut ws).await;
        assert_eq!(m["op"], "message");
        assert_eq!(m["event"], "tick");
        assert_eq!(m["data"], i);
        assert_eq!(m["seq"], i);
        positions.push(m["position"].as_str().expect("position").to_string());
    }
    ws.close(None).await.expect("close");

    // Published while away: 4..6, then resume from 1 gets 2..6 exactly once, in order.
    let mut publisher = connect(&gw, Some("pubsub.v1")).await;
    for i in 4..=6 {
        publisher
            .send(send_json(
                json!({"op": "publish", "topic": "prices", "data": i, "id": i}),
            ))
            .await
            .expect("send");
        let ack = next_json(&mut publisher).await;
        assert_eq!(ack["op"], "published");
        assert_eq!(ack["id"], i);
        assert_eq!(ack["seq"], i);
    }
    let mut back = connect(&gw, Some("pubsub.v1")).await;
    back.send(send_json(
        json!({"op": "subscribe", "topic": "prices", "since": positions[0]}),
    ))
    .await
    .expect("send");
    assert_eq!(next_json(&mut back).await["op"], "subscribed");
    let got: Vec<Value> = {
        let mut v = Vec::new();
        for _ in 0..5 {
            v.push(next_json(&mut back).await["data"].clone());
        }
        v
    };
    assert_eq!(got, [json!(2), json!(3), json!(4), json!(5), json!(6)]);

    // Beyond the history of 10: a reset, then live delivery goes on.
    for i in 7..=30 {
        publisher
            .send(send_json(
                json!({"op": "publish", "topic": "prices", "data": i}),
            ))
            .await
            .expect("send");
        next_json(&mut publisher).await;
    }
    let mut late = connect(&gw, Some("pubsub.v1")).await;
    late.send(send_json(
        json!({"op": "subscribe", "topic": "prices", "since": positions[0]}),
    ))
    .await
    .expect("send");
    let reset = next_json(&mut late).await;
    assert_eq!(reset["op"], "reset");
    assert!(reset["position"].as_str().expect("pos").ends_with(":30"));
    // Bad requests close with 1007.
    late.send(Message::text("{\"op\":\"dance\"}"))
        .await
        .expect("send");
    assert_eq!(close_code(&mut late).await.0, CloseCode::Invalid);
}

#[tokio::test]
async fn shutdown_closes_websockets_with_1001() {
    let mut gw = Gateway::start(CONFIG);
    let mut ws = connect(&gw, Some("pubsub.v1")).await;
    ws.send(send_json(json!({"op": "subscribe", "topic": "t"})))
        .await
        .expect("send");
    next_json(&mut ws).await;
    gw.proc.signal(15);
    let (code, reason) = close_code(&mut ws).await;
    assert_eq!(code, CloseCode::Away, "{reason}");
    gw.proc.wait_exit(Duration::from_secs(15));
}

#[tokio::test]
async fn after_a_restart_every_transport_signals_a_reset() {
    let mut gw = Gateway::start(&format!(
        "{CONFIG}  - {{path: /s, realtime: longpoll}}\n  - {{path: /events, realtime: sse}}\n"
    ));
    let first: Value = client()
        .post(gw.admin("/publish"))
        .json(&json!({"topic": "news", "data": "before"}))
        .send()
        .await
        .expect("publish")
        .json()
        .await
        .expect("json");
    let old = first["position"].as_str().expect("position").to_string();
    gw.restart();
    client()
        .post(gw.admin("/publish"))
        .json(&json!({"topic": "news", "data": "after"}))
        .send()
        .await
        .expect("publish");

    let mut ws = connect(&gw, Some("pubsub.v1")).await;
    ws.send(send_json(
        json!({"op": "subscribe", "topic": "news", "since": old}),
    ))
    .await
    .expect("send");
    assert_eq!(next_json(&mut ws).await["op"], "reset", "websocket");

    let r = client()
        .get(gw.https(&format!("/s?t=news&since={old}")))
        .send()
        .await
        .expect("poll");
    assert_eq!(r.status(), 409, "long-poll");

    let mut sse = client()
        .get(gw.https("/events?topic=news"))
        .header("last-event-id", &old)
        .send()
        .await
        .expect("sse");
    let mut text = String::new();
    while !text.contains("event: reset") {
        match tokio::time::timeout(Duration::from_secs(5), sse.chunk()).await {
            Ok(Ok(Some(c))) => text.push_str(&String::from_utf8_lossy(&c)),
            other => panic!("no reset event on SSE: {other:?} after {text:?}"),
        }
    }
}

#[tokio::test]
async fn a_reader_that_falls_behind_is_closed_with_1013_and_counted() {
    let gw = Gateway::start(&CONFIG.replace(
        "max_message_bytes: 1024}",
        "max_message_bytes: 1024, queue: 16}",
    ));
    let mut slow = connect(&gw, Some("pubsub.v1")).await;
    slow.send(send_json(json!({"op": "subscribe", "topic": "flood"})))
        .await
        .expect("send");
    assert_eq!(next_json(&mut slow).await["op"], "subscribed");
    // Far more than socket buffers hold, while the client reads nothing.
    let batch: Vec<Value> = (0..1000)
        .map(|i| json!({"topic": "flood", "data": format!("{i:0>900}")}))
        .collect();
    for _ in 0..20 {
        let r = client()
            .post(gw.admin("/publish"))
            .json(&batch)
            .send()
            .await
            .expect("publish");
        assert_eq!(r.status(), 200);
    }
    // Now read: whatever was in flight, then the close.
    let code = loop {
        match tokio::time::timeout(Duration::from_secs(10), slow.next()).await {
            Ok(Some(Ok(Message::Close(Some(f))))) => break f.code,
            Ok(Some(Ok(_))) => continue,
            other => panic!("expected a close frame, got {other:?}"),
        }
    };
    assert_eq!(code, CloseCode::Again);
    let health: Value = client()
        .get(gw.admin("/healthz"))
        .send()
        .await
        .expect("healthz")
        .json()
        .await
        .expect("json");
    assert!(
        health["hub"]["slow_consumer_disconnects"]
            .as_u64()
            .unwrap_or(0)
            >= 1,
        "{health}"
    );
}
