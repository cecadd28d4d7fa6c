//! Attacks on the realtime transports found by probing the demo (issue 15): each test is one
//! attacker's story against a gateway mounted like the shipped `gateway.yaml` (Socket.IO with
//! relay, history and client rooms; `/ws` pub/sub; long-poll `/s` and `/p`; SSE `/events`; the
//! admin publish API), then a check that honest clients still get through.

use std::time::Duration;

use e2e::{client, client_builder, eventually, websocket, Gateway};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

/// The demo's realtime section, defaults everywhere else.
const CONFIG: &str = r#"
listen: {https: "{https}", admin: "{admin}"}
tls: {state_dir: state}
realtime:
  socketio:
    namespaces:
      "/": {relay: true, history: 50, client_rooms: true}
  # Open to clients, so each attack meets the defence it is about (names, budgets, sizes);
  # the policy's own refusals are tested in authz.rs.
  policy: {client_publish: ["*"]}
routes:
  - {path: /socket.io/, realtime: socketio}
  - {path: /ws, realtime: websocket}
  - {path: /s, realtime: longpoll}
  - {path: /p, realtime: longpoll}
  - {path: /events, realtime: sse}
"#;

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

// ---- Engine.IO / Socket.IO over polling, by hand -----------------------------------------

fn eio_url(gw: &Gateway, query: &str) -> String {
    gw.https(&format!("/socket.io/?EIO=4&transport=polling{query}"))
}

/// A polling handshake: the status and body.
async fn eio_handshake(c: &reqwest::Client, gw: &Gateway) -> (u16, String) {
    let r = c.get(eio_url(gw, "")).send().await.expect("handshake");
    let status = r.status().as_u16();
    (status, r.text().await.expect("body"))
}

fn sid_of(open: &str) -> String {
    let v: Value =
        serde_json::from_str(open.strip_prefix('0').expect("open packet")).expect("json");
    v["sid"].as_str().expect("sid").to_string()
}

async fn eio_post(gw: &Gateway, sid: &str, body: String) -> (u16, String) {
    let r = client()
        .post(eio_url(gw, &format!("&sid={sid}")))
        .body(body)
        .send()
        .await
        .expect("post");
    let status = r.status().as_u16();
    (status, r.text().await.expect("body"))
}

/// One poll: the Engine.IO packets it carried (the payload is split on `\x1e`). Pings are
/// answered so the session stays up.
async fn eio_poll(gw: &Gateway, sid: &str) -> (u16, Vec<String>) {
    let r = client()
        .get(eio_url(gw, &format!("&sid={sid}")))
        .send()
        .await
        .expect("poll");
    let status = r.status().as_u16();
    let body = r.text().await.expect("body");
    let packets: Vec<String> = body.split('\x1e').map(str::to_string).collect();
    if packets.iter().any(|p| p == "2") {
        eio_post(gw, sid, "3".into()).await;
    }
    (status, packets)
}

/// A Socket.IO client on `/` over polling: (Engine.IO sid, socket id).
async fn sio_connect(gw: &Gateway) -> (String, String) {
    let (status, open) = eio_handshake(&client(), gw).await;
    assert_eq!(status, 200, "{open}");
    let sid = sid_of(&open);
    assert_eq!(eio_post(gw, &sid, "40".into()).await, (200, "ok".into()));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while tokio::time::Instant::now() < deadline {
        let (status, packets) = eio_poll(gw, &sid).await;
        assert_eq!(status, 200, "{packets:?}");
        if let Some(p) = packets.iter().find(|p| p.starts_with("40{")) {
            let v: Value = serde_json::from_str(&p[2..]).expect("connect json");
            return (sid, v["sid"].as_str().expect("socket id").to_string());
        }
    }
    panic!("no CONNECT reply");
}

/// Polls until a packet contains `needle` (or 15 s pass); every packet seen on the way.
async fn poll_until(gw: &Gateway, sid: &str, needle: &str) -> Vec<String> {
    let mut seen = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while tokio::time::Instant::now() < deadline {
        let (status, packets) = eio_poll(gw, sid).await;
        if status != 200 {
            seen.push(format!("HTTP {status}: {packets:?}"));
            return seen;
        }
        let done = packets.iter().any(|p| p.contains(needle));
        seen.extend(packets);
        if done {
            return seen;
        }
    }
    seen
}

// ---- /ws pub/sub -----------------------------------------------------------------------

async fn pubsub(gw: &Gateway) -> Ws {
    let url = format!("wss://127.0.0.1:{}/ws", gw.ports.https);
    websocket(&url, Some("pubsub.v1")).await.expect("upgrade").0
}

async fn next_json(ws: &mut Ws) -> Value {
    loop {
        match tokio::time::timeout(Duration::from_secs(10), ws.next()).await {
            Ok(Some(Ok(Message::Text(t)))) => return serde_json::from_str(&t).expect("json"),
            Ok(Some(Ok(Message::Ping(_) | Message::Pong(_)))) => continue,
            other => panic!("expected a text message, got {other:?}"),
        }
    }
}

async fn send(ws: &mut Ws, v: Value) {
    ws.send(Message::text(v.to_string())).await.expect("send");
}

// ---- SSE, as EventSource reads it ------------------------------------------------------

/// What EventSource makes of a stream: CR, LF and CRLF all end a line; a blank line
/// dispatches. Returns the dispatched events as (event, data, last id) and every `retry:`.
fn eventsource_parse(text: &str) -> (Vec<(String, String, String)>, Vec<String>) {
    let (mut events, mut retries) = (Vec::new(), Vec::new());
    let (mut event, mut data, mut id): (String, Vec<String>, String) = Default::default();
    let normalized = text.replace("\r\n", "\n").replace('\r', "\n");
    for line in normalized.split('\n') {
        if line.is_empty() {
            if !data.is_empty() {
                let name = if event.is_empty() {
                    "message".into()
                } else {
                    event.clone()
                };
                events.push((name, data.join("\n"), id.clone()));
            }
            event.clear();
            data.clear();
            continue;
        }
        if line.starts_with(':') {
            continue;
        }
        let (field, value) = line.split_once(':').unwrap_or((line, ""));
        let value = value.strip_prefix(' ').unwrap_or(value).to_string();
        match field {
            "event" => event = value,
            "data" => data.push(value),
            "id" => id = value,
            "retry" => retries.push(value),
            _ => {}
        }
    }
    (events, retries)
}

async fn read_until(resp: &mut reqwest::Response, needle: &str) -> String {
    let mut text = String::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !text.contains(needle) {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match tokio::time::timeout(left, resp.chunk()).await {
            Ok(Ok(Some(c))) => text.push_str(&String::from_utf8_lossy(&c)),
            _ => break,
        }
    }
    text
}

// ---- 1. Socket.IO's topics are not open to other transports -----------------------------

#[tokio::test]
async fn anonymous_sse_long_poll_and_pubsub_cannot_subscribe_to_socketio_topics() {
    let gw = Gateway::start(CONFIG);
    let (_sid, socket_id) = sio_connect(&gw).await;
    let c = client();
    // The namespace-wide topic and the socket's private room, by every reading transport.
    for url in [
        gw.https("/events?topic=sio:/"),
        gw.https(&format!("/events?topic=sio:/:{socket_id}")),
        gw.https("/events?topic=news&topic=ws:/ws:chat"),
        gw.https("/s?t=sio:/"),
        gw.https(&format!("/s?t=sio:/:{socket_id}&since=0000000000000000:0")),
    ] {
        let r = c.get(&url).send().await.expect("subscribe");
        assert_eq!(r.status(), 403, "{url}");
        let body = r.text().await.expect("body");
        assert!(body.contains("is reserved"), "{url}: {body}");
    }
    let mut ws = pubsub(&gw).await;
    send(&mut ws, json!({"op": "subscribe", "topic": "sio:/"})).await;
    let answer = next_json(&mut ws).await;
    assert_eq!(answer["op"], "error", "{answer}");
    let message = answer["message"].as_str().unwrap_or("");
    assert!(
        message.contains("subscribe refused") && message.contains("reserved"),
        "{answer}"
    );
    // The refusal is logged.
    assert!(
        eventually(Duration::from_secs(5), || async {
            gw.proc.logs().contains("realtime topic refused")
        })
        .await
    );
    // Honest subscriptions on the same connection and transports still work.
    send(&mut ws, json!({"op": "subscribe", "topic": "news"})).await;
    assert_eq!(next_json(&mut ws).await["op"], "subscribed");
    let r = c
        .get(gw.https("/events?topic=news"))
        .send()
        .await
        .expect("sse");
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn anonymous_clients_cannot_publish_into_socketio_rooms_or_a_sockets_private_room() {
    let gw = Gateway::start(CONFIG);
    let (victim_sid, victim_id) = sio_connect(&gw).await;
    let (sender_sid, _) = sio_connect(&gw).await;
    let c = client();
    // Into the namespace and into the victim's own room, by long-poll POST.
    for topic in ["sio:/".to_string(), format!("sio:/:{victim_id}")] {
        let r = c
            .post(gw.https(&format!("/p?t={topic}")))
            .body("forged")
            .send()
            .await
            .expect("publish");
        assert_eq!(r.status(), 403, "{topic}");
    }
    // The bare socket id is not the socket's room (it was, in `/`): publishing there is a
    // publish to an unrelated topic that no socket hears.
    let r = c
        .post(gw.https(&format!("/p?t={victim_id}")))
        .body("forged")
        .send()
        .await
        .expect("publish");
    assert_eq!(r.status(), 200);
    // By pub/sub.
    let mut ws = pubsub(&gw).await;
    send(
        &mut ws,
        json!({"op": "publish", "topic": "sio:/", "event": "chat", "data": "forged"}),
    )
    .await;
    let answer = next_json(&mut ws).await;
    assert_eq!(answer["op"], "error", "{answer}");
    assert!(
        answer["message"]
            .as_str()
            .unwrap_or("")
            .contains("publish refused"),
        "{answer}"
    );
    // By the app's publish API: refused too; /emit is the way to Socket.IO rooms.
    let r = c
        .post(gw.admin("/publish"))
        .json(&json!({"topic": "sio:/", "event": "chat", "data": "forged"}))
        .send()
        .await
        .expect("admin publish");
    assert_eq!(r.status(), 403);
    let v: Value = r.json().await.expect("json");
    assert!(
        v["error"].as_str().unwrap_or("").contains("POST /emit"),
        "{v}"
    );
    // A legitimate relay arrives; nothing forged came before it.
    let (status, _) = eio_post(&gw, &sender_sid, r#"42["chat","legit"]"#.into()).await;
    assert_eq!(status, 200);
    let seen = poll_until(&gw, &victim_sid, "legit").await;
    assert!(seen.iter().any(|p| p.contains("legit")), "{seen:?}");
    assert!(!seen.iter().any(|p| p.contains("forged")), "{seen:?}");
}

// ---- 2. Topic creation is bounded per client, and cannot starve Socket.IO ----------------

#[tokio::test]
async fn one_client_cannot_create_topics_without_limit_nor_huge_names_or_messages() {
    let gw = Gateway::start(CONFIG);
    let c = client();
    let mut ws = pubsub(&gw).await;
    // A 25,000-character topic name.
    send(
        &mut ws,
        json!({"op": "subscribe", "topic": "x".repeat(25_000)}),
    )
    .await;
    let answer = next_json(&mut ws).await;
    assert_eq!(answer["op"], "error", "{answer}");
    assert!(
        answer["message"]
            .as_str()
            .unwrap_or("")
            .contains("topic name is 25000 bytes long; the limit is 255"),
        "{answer}"
    );
    let r = c
        .post(gw.https(&format!("/p?t={}", "y".repeat(300))))
        .body("hi")
        .send()
        .await
        .expect("publish");
    assert_eq!(r.status(), 400);
    // A 900 kB message to a new topic.
    let r = c
        .post(gw.https("/p?t=big"))
        .body("z".repeat(900_000))
        .send()
        .await
        .expect("publish");
    assert_eq!(r.status(), 413);
    // Subscriptions per connection.
    for i in 0..64 {
        send(
            &mut ws,
            json!({"op": "subscribe", "topic": format!("sub{i}")}),
        )
        .await;
        assert_eq!(next_json(&mut ws).await["op"], "subscribed", "sub{i}");
    }
    send(&mut ws, json!({"op": "subscribe", "topic": "sub64"})).await;
    let answer = next_json(&mut ws).await;
    assert!(
        answer["message"]
            .as_str()
            .unwrap_or("")
            .contains("at most 64 subscriptions per connection"),
        "{answer}"
    );
    // A flood of publishes, each to a new topic, on one connection.
    const FLOOD: usize = 700;
    for i in 0..FLOOD {
        send(
            &mut ws,
            json!({"op": "publish", "topic": format!("flood{i}"), "data": i}),
        )
        .await;
    }
    let (mut published, mut refused) = (0, 0);
    for _ in 0..FLOOD {
        let a = next_json(&mut ws).await;
        match a["op"].as_str() {
            Some("published") => published += 1,
            Some("error") => {
                assert!(
                    a["message"]
                        .as_str()
                        .unwrap_or("")
                        .contains("too many new topics from this client"),
                    "{a}"
                );
                refused += 1;
            }
            _ => panic!("{a}"),
        }
    }
    assert!(
        published <= 600 && refused >= 100,
        "published {published}, refused {refused}"
    );
    // The same client on another transport is held to the same budget.
    let r = c
        .post(gw.https("/p?t=one-more"))
        .body("x")
        .send()
        .await
        .expect("publish");
    assert_eq!(r.status(), 429);
    assert!(r
        .text()
        .await
        .expect("body")
        .contains("too many new topics"));
    // Existing topics still work for it, and Socket.IO still connects.
    send(
        &mut ws,
        json!({"op": "publish", "topic": "flood0", "data": "again"}),
    )
    .await;
    assert_eq!(next_json(&mut ws).await["op"], "published");
    let r = c
        .post(gw.https("/p?t=sub0"))
        .body("x")
        .send()
        .await
        .expect("publish");
    assert_eq!(r.status(), 200);
    sio_connect(&gw).await;
}

#[tokio::test]
async fn topics_created_by_clients_cannot_starve_socketio_connections() {
    // A small hub, and no per-client budget, so one test client can fill every open topic.
    let gw = Gateway::start(&CONFIG.replace(
        "realtime:\n",
        "realtime:\n  hub: {max_topics: 60, max_open_topics: 30, new_topics_per_client_per_minute: 0}\n",
    ));
    let c = client();
    let mut refused = 0;
    for i in 0..40 {
        let r = c
            .post(gw.https(&format!("/p?t=fill{i}")))
            .body("x")
            .send()
            .await
            .expect("publish");
        if r.status() == 503 {
            refused += 1;
            assert!(r.text().await.expect("body").contains("too many topics"));
        } else {
            assert_eq!(r.status(), 200);
        }
    }
    assert_eq!(refused, 10, "the 30 open topics are full");
    // Every new Socket.IO connection needs a room topic of its own: they still get one.
    for _ in 0..5 {
        sio_connect(&gw).await;
    }
}

// ---- 3. SSE framing: a CR is a line end ----------------------------------------------------

#[tokio::test]
async fn a_carriage_return_in_a_published_message_cannot_inject_sse_fields() {
    let gw = Gateway::start(CONFIG);
    let c = client();
    let mut stream = c
        .get(gw.https("/events?topic=chat-sse"))
        .send()
        .await
        .expect("sse");
    assert_eq!(stream.status(), 200);
    let payload = "hi\rid: 999\revent: reset\rretry: 86400000\r\rdata: second";
    let r = c
        .post(gw.https("/p?t=chat-sse"))
        .body(payload)
        .send()
        .await
        .expect("publish");
    assert_eq!(r.status(), 200);
    let text = read_until(&mut stream, "second\n\n").await;
    let (events, retries) = eventsource_parse(&text);
    // One event, named after the topic, with the whole payload as its data.
    assert_eq!(retries, ["2000"], "{text:?}");
    assert_eq!(events.len(), 1, "{events:?}");
    let (event, data, id) = &events[0];
    assert_eq!(event, "chat-sse");
    assert_eq!(
        data,
        "hi\nid: 999\nevent: reset\nretry: 86400000\n\ndata: second"
    );
    assert!(
        id.ends_with(":1"),
        "the id is the position, not the publisher's: {id}"
    );
    // The stream goes on.
    c.post(gw.https("/p?t=chat-sse"))
        .body("next")
        .send()
        .await
        .expect("publish");
    let text = read_until(&mut stream, "next\n\n").await;
    assert!(text.contains("data: next\n"), "{text:?}");
}

// ---- 4. Relay flood: the flooder goes, not its peers ---------------------------------------

#[tokio::test]
async fn one_socket_relaying_3000_events_is_disconnected_and_its_peers_keep_receiving() {
    let gw = Gateway::start(CONFIG);
    let (peer_sid, _) = sio_connect(&gw).await;
    let (flood_sid, _) = sio_connect(&gw).await;
    let flood: Vec<String> = (0..3000).map(|i| format!(r#"42["chat",{i}]"#)).collect();
    let (status, body) = eio_post(&gw, &flood_sid, flood.join("\x1e")).await;
    assert_eq!((status, body.as_str()), (200, "ok"));
    // The peer gets the flooder's burst, stays connected, and hears a newcomer's relay.
    let (other_sid, _) = sio_connect(&gw).await;
    let (status, _) = eio_post(&gw, &other_sid, r#"42["chat","after the flood"]"#.into()).await;
    assert_eq!(status, 200);
    let seen = poll_until(&gw, &peer_sid, "after the flood").await;
    let tail = &seen[seen.len().saturating_sub(3)..];
    let dropped = seen
        .iter()
        .any(|p| p == "41" || p == "1" || p.starts_with("HTTP "));
    assert!(!dropped, "the peer was dropped: {tail:?}");
    assert!(
        seen.iter().any(|p| p.contains("after the flood")),
        "{tail:?}"
    );
    let relayed = seen
        .iter()
        .filter(|p| p.starts_with(r#"42["chat","#))
        .count();
    assert!((100..3000).contains(&relayed), "{relayed} relayed");
    // The flooder is the one disconnected from the namespace, and the gateway says why.
    let seen = poll_until(&gw, &flood_sid, "41").await;
    assert!(
        seen.iter().any(|p| p == "41"),
        "{:?}",
        &seen[seen.len().saturating_sub(3)..]
    );
    assert!(
        eventually(Duration::from_secs(5), || async {
            gw.proc.logs().contains("socket.io relay rate exceeded")
        })
        .await
    );
}

// ---- 5. Engine.IO handshake flood ----------------------------------------------------------

#[tokio::test]
async fn three_hundred_handshakes_from_one_address_are_capped() {
    let gw = Gateway::start(CONFIG);
    let c = client();
    let (mut kept, mut refused) = (Vec::new(), 0);
    for _ in 0..300 {
        let (status, body) = eio_handshake(&c, &gw).await;
        match status {
            200 => kept.push(sid_of(&body)),
            429 => {
                let v: Value = serde_json::from_str(&body).expect("json error");
                assert_eq!(v["code"], 4, "{v}");
                assert_eq!(
                    v["message"],
                    "Too many sessions from this client address (limit 256); close some or retry later"
                );
                refused += 1;
            }
            other => panic!("{other}: {body}"),
        }
    }
    assert_eq!((kept.len(), refused), (256, 44));
    assert!(gw
        .proc
        .logs()
        .contains("too many sessions from this client address"));
    // Another address is not affected (127.0.0.2 is loopback too).
    let other = client_builder()
        .local_address(std::net::IpAddr::from([127, 0, 0, 2]))
        .build()
        .expect("client");
    assert_eq!(eio_handshake(&other, &gw).await.0, 200);
    // A session that closes gives its place back.
    assert_eq!(eio_post(&gw, &kept[0], "1".into()).await.0, 200);
    assert!(
        eventually(Duration::from_secs(10), || async {
            eio_handshake(&c, &gw).await.0 == 200
        })
        .await
    );
}

#[tokio::test]
async fn behind_a_trusted_proxy_each_forwarded_client_has_its_own_session_cap() {
    // The gateway behind a load balancer (here: the test, from 127.0.0.1): the caps count the
    // client the proxy forwards, not the proxy, or one busy client would lock everyone out.
    let gw = Gateway::start(
        &CONFIG
            .replace(
                "realtime:\n  socketio:\n",
                "realtime:\n  socketio:\n    max_sessions_per_client: 2\n",
            )
            .replace("tls:", "proxy: {trusted_proxies: [127.0.0.1]}\ntls:"),
    );
    let c = client();
    let handshake = |xff: &'static str| {
        let c = c.clone();
        let url = eio_url(&gw, "");
        async move {
            c.get(url)
                .header("x-forwarded-for", xff)
                .send()
                .await
                .expect("handshake")
                .status()
                .as_u16()
        }
    };
    assert_eq!(handshake("198.51.100.1").await, 200);
    assert_eq!(handshake("198.51.100.1").await, 200);
    assert_eq!(handshake("198.51.100.1").await, 429);
    assert_eq!(handshake("198.51.100.2").await, 200);
    // A forwarded address from a client that is not a trusted proxy would be ignored; the
    // proxy's own requests (no header) count against the proxy.
    assert_eq!(eio_handshake(&c, &gw).await.0, 200);
}
