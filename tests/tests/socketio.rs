//! Socket.IO through the real gateway over TLS, driven by the official `socket.io-client`
//! (npm, pinned by tests/package-lock.json) in all three transport modes.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use e2e::{client, workspace_root, Gateway};
use serde_json::{json, Value};

const MODES: [&str; 3] = ["polling", "websocket", "upgrade"];

/// No `client_dir`: the gateway serves the socket.io-client built into it, and the official
/// client the scenarios load from npm is the same release.
fn config() -> String {
    r#"
listen: {https: "{https}", admin: "{admin}"}
tls: {state_dir: state}
realtime:
  socketio:
    allowed_origins: ["https://good.example"]
    recovery: {max_disconnection_ms: 60000}
    namespaces:
      "/": {relay: true, history: 50, client_rooms: true}
      "/other": {relay: true}
  # The rooms scenario relays into rooms r1 and r2; the policy is tested in authz.rs.
  policy: {client_publish: ["r1", "r2"]}
routes:
  - {path: /socket.io/, realtime: socketio}
"#
    .to_string()
}

/// Run one scenario of tests/js/socketio.mjs against `gw`; the JSON it printed.
fn scenario(gw: &Gateway, name: &str, mode: &str) -> Value {
    let out = Command::new("node")
        .arg(workspace_root().join("tests/js/socketio.mjs"))
        .args([name, &gw.https(""), mode])
        .env("ADMIN_URL", gw.admin(""))
        .output()
        .expect("run node (tests/setup.sh installs it)");
    e2e::node_result(out, &format!("{name}/{mode}"))
}

/// The first argument of each received event. With connection state recovery on, the server
/// appends the event's offset as a last argument (as the reference server does); that is
/// checked in the recovery test, not here.
fn firsts(v: &Value) -> Vec<Value> {
    v.as_array()
        .map(|a| a.iter().map(|e| e[0].clone()).collect())
        .unwrap_or_default()
}

fn want_transport(mode: &str) -> &'static str {
    if mode == "polling" {
        "polling"
    } else {
        "websocket"
    }
}

#[test]
fn two_clients_relay_with_the_sender_excluded_and_an_acked_seq() {
    for mode in MODES {
        let gw = Gateway::start(&config());
        let v = scenario(&gw, "relay", mode);
        assert_eq!(v["transportA"], want_transport(mode), "{mode}: {v}");
        assert_eq!(
            firsts(&v["bGot"]),
            [json!({"text": "hi", "n": 1})],
            "{mode}: {v}"
        );
        assert_eq!(
            v["aGot"],
            json!([]),
            "{mode}: the sender got its own message"
        );
        assert_eq!(v["ack"]["seq"], 1, "{mode}: {v}");
        assert_ne!(v["aId"], v["bId"]);
    }
}

#[test]
fn a_late_joiner_sees_the_history() {
    for mode in MODES {
        let gw = Gateway::start(&config());
        let v = scenario(&gw, "history", mode);
        assert_eq!(
            firsts(&v["got"]),
            [json!({"n": 1}), json!({"n": 2}), json!({"n": 3})],
            "{mode}: {v}"
        );
    }
}

#[test]
fn clients_join_and_leave_rooms_and_relay_stays_in_them() {
    for mode in MODES {
        let gw = Gateway::start(&config());
        let v = scenario(&gw, "rooms", mode);
        assert_eq!(v["joinA"]["ok"], true, "{mode}: {v}");
        assert_eq!(v["leave"]["ok"], true, "{mode}: {v}");
        assert_eq!(firsts(&v["cGot"]), [json!("to r1")], "{mode}: {v}");
        assert_eq!(v["bGot"], json!([]), "{mode}: r2 heard r1: {v}");
    }
}

#[test]
fn binary_payloads_arrive_intact() {
    for mode in MODES {
        let gw = Gateway::start(&config());
        let v = scenario(&gw, "binary", mode);
        assert_eq!(v["bytes"], json!([0, 1, 2, 253, 254, 255]), "{mode}: {v}");
        assert_eq!(v["second"], "second", "{mode}: {v}");
        assert_eq!(v["name"], "x.bin");
    }
}

#[test]
fn two_namespaces_share_one_connection_and_unknown_ones_are_refused() {
    for mode in MODES {
        let gw = Gateway::start(&config());
        let v = scenario(&gw, "namespaces", mode);
        assert_eq!(v["sameEngine"], true);
        assert_eq!(firsts(&v["peerGot"]), [json!("in other")], "{mode}: {v}");
        assert_eq!(v["unknownError"], "Invalid namespace", "{mode}: {v}");
    }
}

#[test]
fn a_foreign_origin_gets_connect_error() {
    for mode in MODES {
        let gw = Gateway::start(&config());
        let v = scenario(&gw, "origin", mode);
        assert_eq!(v["refused"], true, "{mode}: {v}");
        assert!(
            !v["message"].as_str().unwrap_or("").is_empty(),
            "{mode}: {v}"
        );
    }
}

#[test]
fn a_dropped_transport_recovers_its_state_and_missed_events() {
    for mode in MODES {
        let gw = Gateway::start(&config());
        let v = scenario(&gw, "recovery", mode);
        assert_eq!(v["recovered"], true, "{mode}: {v}");
        assert_eq!(v["sameId"], true, "{mode}: {v}");
        assert_eq!(
            firsts(&v["bGot"]),
            [json!("before"), json!("missed 1"), json!("missed 2")],
            "{mode}: {v}"
        );
        // Each event carried its offset, which the client sent back to resume.
        assert!(v["bGot"][0][1].is_string(), "{mode}: no offset: {v}");
    }
}

#[test]
fn the_app_asks_a_room_for_acknowledgements_and_gets_each_answer() {
    for mode in MODES {
        let gw = Gateway::start(&config());
        let v = scenario(&gw, "serverAck", mode);
        assert_eq!(v["status"], 200, "{mode}: {v}");
        let answer = &v["answer"];
        // Both sockets of the room were asked; c, outside it, was not.
        assert_eq!(answer["sockets"], 2, "{mode}: {v}");
        assert_eq!(
            answer["acks"],
            json!([{"socket": v["aId"], "args": [{"who": "a", "got": {"order": 42}}]}]),
            "{mode}: {v}"
        );
        assert_eq!(
            answer["failed"],
            json!([{"socket": v["bId"], "error": "timeout"}]),
            "{mode}: {v}"
        );
        assert_eq!(v["aGot"], json!([{"order": 42}]), "{mode}: {v}");
        assert_eq!(firsts(&v["bGot"]), [json!({"order": 42})], "{mode}: {v}");
        assert_eq!(v["cGot"], json!([]), "{mode}: {v}");
    }
}

#[tokio::test]
async fn emit_refuses_bad_requests_clearly() {
    let gw = Gateway::start(&config());
    let c = client();
    for (body, status, needle) in [
        (r#"{"event":"x","data":1}"#, 400, "timeout_ms"),
        (r#"{"event":"x","timeout_ms":0}"#, 400, "timeout_ms"),
        (r#"{"event":"connect","timeout_ms":100}"#, 400, "reserved"),
        (
            r#"{"namespace":"/nope","event":"x","timeout_ms":100}"#,
            404,
            "no such namespace",
        ),
        ("not json", 400, "invalid JSON"),
    ] {
        let r = c
            .post(gw.admin("/emit"))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .expect("admin reachable");
        assert_eq!(r.status().as_u16(), status, "{body}");
        let v: Value = r.json().await.expect("json error");
        assert!(
            v["error"].as_str().unwrap_or("").contains(needle),
            "{body}: {v}"
        );
    }
    // Nobody in the room: answered at once, nothing to wait for.
    let r = c
        .post(gw.admin("/emit"))
        .header("content-type", "application/json")
        .body(r#"{"room":"empty","event":"x","timeout_ms":60000}"#)
        .send()
        .await
        .expect("admin reachable");
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.expect("json");
    assert_eq!(v, json!({"sockets": 0, "acks": [], "failed": []}));
}

/// A gateway copied onto a server with no npm folder beside it (the test runs it from an empty
/// scratch folder) still serves the client library, byte for byte the npm release the tests
/// pin, with a day of caching and an ETag that turns a reload into a 304.
#[tokio::test]
async fn the_client_library_is_served_from_the_binary() {
    let gw = Gateway::start(&config());
    let c = client();
    let dist = workspace_root().join("tests/node_modules/socket.io-client/dist");
    for name in [
        "socket.io.js",
        "socket.io.min.js",
        "socket.io.min.js.map",
        "socket.io.esm.min.js",
    ] {
        let r = c
            .get(gw.https(&format!("/socket.io/{name}")))
            .send()
            .await
            .expect("get");
        assert_eq!(r.status(), 200, "{name}");
        let npm = std::fs::read(dist.join(name)).expect("npm ci in tests/ installs the client");
        assert_eq!(
            r.bytes().await.expect("body").as_ref(),
            npm.as_slice(),
            "{name}"
        );
    }
    let r = c
        .get(gw.https("/socket.io/socket.io.js"))
        .send()
        .await
        .expect("get");
    let header = |name: &str| {
        r.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string()
    };
    assert!(header("content-type").contains("javascript"));
    assert_eq!(header("cache-control"), "public, max-age=86400");
    let etag = header("etag");
    assert!(etag.starts_with("\"socket.io-client-4.8.4-"), "etag {etag}");
    let again = c
        .get(gw.https("/socket.io/socket.io.js"))
        .header("if-none-match", &etag)
        .send()
        .await
        .expect("get");
    assert_eq!(again.status(), 304);
    assert!(again.bytes().await.expect("body").is_empty());
}

/// `client_dir` still overrides the built-in copy (another version, a custom build).
#[tokio::test]
async fn client_dir_overrides_the_built_in_client() {
    let own = e2e::Scratch::new("client-dir");
    std::fs::write(own.path().join("socket.io.js"), "/* a custom build */").expect("write");
    let cfg = config().replace(
        "    namespaces:\n",
        &format!(
            "    client_dir: {}\n    namespaces:\n",
            own.path().display()
        ),
    );
    let gw = Gateway::start(&cfg);
    let c = client();
    let r = c
        .get(gw.https("/socket.io/socket.io.js"))
        .send()
        .await
        .expect("get");
    assert_eq!(r.status(), 200);
    assert!(r.headers().contains_key("etag"));
    assert_eq!(r.text().await.expect("body"), "/* a custom build */");
    let missing = c
        .get(gw.https("/socket.io/socket.io.min.js"))
        .send()
        .await
        .expect("get");
    assert_eq!(missing.status(), 404);
    assert!(missing.text().await.expect("body").contains("client_dir"));
}

/// One publish from the app reaches a Socket.IO room, a long-poll, an SSE stream and a raw
/// WebSocket pub/sub subscriber.
#[tokio::test]
async fn one_publish_reaches_all_four_transports() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;

    let cfg = config().replace(
        "routes:\n",
        "routes:\n  - {path: /s, realtime: longpoll}\n  - {path: /events, realtime: sse}\n  - {path: /ws, realtime: websocket}\n",
    );
    let gw = Gateway::start(&cfg);
    let c = client();

    let mut node = Command::new("node")
        .arg(workspace_root().join("tests/js/socketio.mjs"))
        .args(["listen", &gw.https(""), "websocket"])
        .env("ROOM", "news")
        .env("EVENT", "note")
        .stdout(Stdio::piped())
        .spawn()
        .expect("node");
    let mut lines = BufReader::new(node.stdout.take().expect("stdout")).lines();
    let ready = lines.next().expect("a line").expect("utf-8");
    assert!(ready.contains("ready"), "{ready}");

    let poll = tokio::spawn({
        let (c, url) = (c.clone(), gw.https("/s?t=news"));
        async move { c.get(url).send().await }
    });
    let mut sse = c
        .get(gw.https("/events?topic=news"))
        .send()
        .await
        .expect("sse");
    let url = format!("wss://127.0.0.1:{}/ws", gw.ports.https);
    let (mut ws, _) = e2e::websocket(&url, Some("pubsub.v1")).await.expect("ws");
    ws.send(Message::text(r#"{"op":"subscribe","topic":"news"}"#))
        .await
        .expect("send");
    ws.next().await.expect("subscribed").expect("frame");
    let ready = e2e::eventually(Duration::from_secs(5), || async {
        let v: Value = c
            .get(gw.admin("/topics/news"))
            .send()
            .await
            .expect("topic")
            .json()
            .await
            .unwrap_or(Value::Null);
        v["subscribers"] == 4
    })
    .await;
    assert!(ready, "not every transport subscribed");

    let r = c
        .post(gw.admin("/publish"))
        .json(&json!({"topic": "news", "event": "note", "data": {"headline": "hello"}}))
        .send()
        .await
        .expect("publish");
    assert_eq!(r.status(), 200);

    let sio = lines.next().expect("a result").expect("utf-8");
    let sio: Value = serde_json::from_str(&sio).expect("json");
    assert_eq!(sio["data"], json!({"headline": "hello"}), "socket.io");
    let _ = node.wait();
    let body = poll
        .await
        .expect("join")
        .expect("poll")
        .text()
        .await
        .expect("body");
    assert_eq!(body, r#"{"headline":"hello"}"#, "long-poll");
    let mut text = String::new();
    while !text.contains("headline") {
        let chunk = tokio::time::timeout(Duration::from_secs(5), sse.chunk())
            .await
            .expect("sse in time")
            .expect("sse")
            .expect("chunk");
        text.push_str(&String::from_utf8_lossy(&chunk));
    }
    let m = ws.next().await.expect("message").expect("frame");
    let m: Value = serde_json::from_str(m.to_text().expect("text")).expect("json");
    assert_eq!(m["data"], json!({"headline": "hello"}), "websocket");
}
