//! Events to the app (issue 12): realtime logic in the app's controller, no Node. Client
//! events go to backend-stub's `/realtime/events` (see its `events` module) with who the client
//! is by the connect callback (the `user=<name>` cookie), and the gateway does what the app
//! answers. Real clients: the official socket.io-client (Node, tests/js/app_events.mjs) and
//! tokio-tungstenite for `/ws` pubsub.v1.

use std::process::Command;
use std::time::{Duration, Instant};

use e2e::{client, free_port, insecure_tls, workspace_root, Gateway, Stub};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Socket.IO's `/` sends the stub's events to the app (beside `join`/`leave`), `/rpc` every
/// event; `/ws` every pubsub.v1 event, `/quiet` none; the rest is the app's. The connect
/// callback goes to `app`, the events to `events` (the same app, or nothing listening), with
/// 1.5 s to answer and 2 at once per connection.
fn config(app: &str, events: &str) -> String {
    format!(
        r#"
listen: {{https: "{{https}}", admin: "{{admin}}"}}
tls: {{state_dir: state}}
upstreams:
  app: {{servers: ["{app}"]}}
  events: {{servers: ["{events}"]}}
realtime:
  socketio:
    namespaces:
      "/": {{client_rooms: true, events: [echo, whoami, say, enter, exit, reply, bye, slow, fail, refuse, garbage, dance]}}
      "/rpc": {{events: ["*"]}}
  websocket:
    /ws: {{protocols: [pubsub.v1], events: ["*"]}}
    /quiet: {{protocols: [pubsub.v1]}}
  auth: {{upstream: app, connect: /realtime/auth, timeout_ms: 1500}}
  events: {{upstream: events, timeout_ms: 1500, max_in_flight: 2}}
routes:
  - {{path: /socket.io/, realtime: socketio}}
  - {{path: /ws, realtime: websocket}}
  - {{path: /quiet, realtime: websocket}}
  - {{path: /, upstream: app}}
"#
    )
}

fn start() -> (Stub, Gateway) {
    let app = Stub::start("app");
    let addr = app.addr.to_string();
    let gw = Gateway::start(&config(&addr, &addr));
    (app, gw)
}

/// Run one scenario of tests/js/app_events.mjs; the JSON it printed.
fn scenario(gw: &Gateway, name: &str, mode: &str) -> Value {
    let out = Command::new("node")
        .arg(workspace_root().join("tests/js/app_events.mjs"))
        .args([name, &gw.https(""), mode])
        .env("ADMIN_URL", gw.admin(""))
        .output()
        .expect("run node (tests/setup.sh installs it)");
    e2e::node_result(out, &format!("{name}/{mode}"))
}

/// The events the app received (its `/__log`).
async fn posted(app: &Stub) -> Vec<Value> {
    app.received()
        .await
        .into_iter()
        .filter(|r| r["path"] == "/realtime/events")
        .collect()
}

/// A `/ws` pubsub.v1 connection signed in as `user`.
async fn pubsub(gw: &Gateway, path: &str, user: &str) -> Ws {
    let url = format!("wss://127.0.0.1:{}{path}", gw.ports.https);
    let mut req = url.into_client_request().expect("request");
    let h = req.headers_mut();
    h.insert(
        "sec-websocket-protocol",
        "pubsub.v1".parse().expect("value"),
    );
    h.insert(
        "cookie",
        format!("user={user}").parse().expect("cookie value"),
    );
    let connector = tokio_tungstenite::Connector::Rustls(insecure_tls());
    let (mut ws, _) =
        tokio_tungstenite::connect_async_tls_with_config(req, None, false, Some(connector))
            .await
            .expect("upgrade");
    // The connect answer's own room comes first.
    assert_eq!(
        frame(&mut ws).await,
        json!({"op": "subscribed", "topic": format!("private-user.{user}"), "position": frame_position()}),
    );
    ws
}

/// Matches any position in [`frame`]'s answer (it is replaced before comparing).
fn frame_position() -> Value {
    json!("<position>")
}

async fn send(ws: &mut Ws, v: Value) {
    ws.send(Message::text(v.to_string())).await.expect("send");
}

/// The next JSON frame (within 10 s), its `position` replaced by a marker.
async fn frame(ws: &mut Ws) -> Value {
    next(ws, Duration::from_secs(10))
        .await
        .expect("a frame within 10 s")
}

async fn next(ws: &mut Ws, wait: Duration) -> Option<Value> {
    loop {
        match tokio::time::timeout(wait, ws.next()).await {
            Ok(Some(Ok(Message::Text(t)))) => {
                let mut v: Value = serde_json::from_str(&t).expect("json");
                if v.get("position").is_some() {
                    v["position"] = frame_position();
                }
                return Some(v);
            }
            Ok(Some(Ok(Message::Ping(_) | Message::Pong(_)))) => continue,
            Err(_) => return None,
            other => panic!("expected a text message, got {other:?}"),
        }
    }
}

#[test]
fn the_apps_answer_is_the_clients_ack_and_the_app_knows_who_sent_it() {
    let (app, gw) = start();
    for mode in ["polling", "websocket"] {
        let v = scenario(&gw, "ack", mode);
        // Every argument there and back; a binary one as base64.
        assert_eq!(
            v["echoed"],
            json!([1, "two", {"three": [3]}]),
            "{mode}: {v}"
        );
        assert_eq!(
            v["binary"],
            json!(["file", {"base64": "AQID"}]),
            "{mode}: {v}"
        );
        assert_eq!(v["entered"], json!([{"joined": "hall"}]), "{mode}: {v}");
        // Who she is by the connect callback (her cookie), her socket and her rooms.
        assert_eq!(
            v["whoami"],
            json!({
                "user": {"id": "ann", "info": {"name": "ann"}},
                "socket_id": v["id"],
                "rooms": ["hall", "private-user.ann"],
                "transport": "socketio",
                "place": "/",
                "cookie": "user=ann",
            }),
            "{mode}: {v}"
        );
        assert_eq!(v["anything"], "via /rpc", "{mode}: {v}");
        assert_eq!(v["rpcWhoami"]["place"], "/rpc", "{mode}: {v}");
        assert_eq!(v["rpcWhoami"]["socket_id"], v["rpcId"], "{mode}: {v}");
    }
    // Posted as JSON with the client's credentials and the forwarding headers, as the
    // authorization callbacks are.
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let asked = rt.block_on(posted(&app));
    let whoami = asked
        .iter()
        .find(|r| r["headers"]["cookie"] == "user=ann")
        .unwrap_or_else(|| panic!("no event with ann's cookie: {asked:#?}"));
    let h = &whoami["headers"];
    assert_eq!(whoami["method"], "POST");
    assert_eq!(h["content-type"], "application/json", "{h}");
    assert_eq!(h["accept"], "application/json", "{h}");
    assert_eq!(h["x-forwarded-proto"], "https", "{h}");
    assert_eq!(h["x-forwarded-for"], "127.0.0.1", "{h}");
    assert_eq!(h["host"], format!("127.0.0.1:{}", gw.ports.https), "{h}");
    assert!(h["x-request-id"].is_string(), "{h}");
}

#[test]
fn the_app_joins_clients_to_rooms_emits_to_them_and_replies_to_the_sender() {
    let (_app, gw) = start();
    for mode in ["polling", "websocket"] {
        let v = scenario(&gw, "rooms", mode);
        assert_eq!(v["bobEnter"], json!({"joined": "lobby"}), "{mode}: {v}");
        assert_eq!(v["said"], json!({"ok": true}), "{mode}: {v}");
        // Bob hears Ann in the room the app put him in, once; Ann, left out, nothing.
        assert_eq!(
            v["bobSaid"],
            json!([{"from": "ann", "text": "hi bob"}]),
            "{mode}: {v}"
        );
        assert_eq!(v["annSaid"], json!([]), "{mode}: {v}");
        // Joined by the app, Bob hears what the app publishes to the room too.
        assert_eq!(v["bobNews"], json!(["from the app"]), "{mode}: {v}");
        // The reply goes to Ann alone.
        assert_eq!(v["replied"], json!({"ok": true}), "{mode}: {v}");
        assert_eq!(v["annReply"], json!([{"for": "ann"}]), "{mode}: {v}");
        assert_eq!(v["bobReply"], json!([]), "{mode}: {v}");
        // Taken out by the app, Bob hears nothing more ("gone?" never reached him).
        assert_eq!(v["bobExit"], json!({"left": "lobby"}), "{mode}: {v}");
    }
}

#[test]
fn the_app_disconnects_the_sender_after_its_ack() {
    let (_app, gw) = start();
    for mode in ["polling", "websocket"] {
        let v = scenario(&gw, "disconnect", mode);
        assert_eq!(v["ack"], json!({"bye": true}), "{mode}: {v}");
        assert_eq!(v["reason"], "io server disconnect", "{mode}: {v}");
        assert_eq!(v["connected"], false, "{mode}: {v}");
    }
}

#[test]
fn a_slow_failing_or_refusing_app_is_an_error_ack_and_the_connection_goes_on() {
    let (_app, gw) = start();
    for mode in ["polling", "websocket"] {
        let v = scenario(&gw, "failures", mode);
        let slow = &v["slow"];
        assert_eq!(
            slow["ack"],
            json!({"error": "the app did not answer within 1500 ms", "status": 504}),
            "{mode}: {v}"
        );
        let ms = slow["ms"].as_u64().expect("ms");
        assert!((1400..4000).contains(&ms), "{mode}: {ms} ms");
        assert_eq!(
            v["fail"]["ack"],
            json!({"error": "the app failed to handle the event (500)", "status": 500}),
            "{mode}: {v}"
        );
        assert_eq!(
            v["refuse"]["ack"],
            json!({"error": "The text field is required.", "status": 422}),
            "{mode}: {v}"
        );
        assert_eq!(
            v["garbage"]["ack"],
            json!({"error": "the app's answer is unusable: unknown key `emits` (known: ack, emit, join, leave, disconnect)", "status": 502}),
            "{mode}: {v}"
        );
        assert_eq!(
            v["dance"]["ack"],
            json!({"error": "no handler for event dance", "status": 404}),
            "{mode}: {v}"
        );
        assert_eq!(v["after"]["ack"], "still here", "{mode}: {v}");
        assert_eq!(v["connected"], true, "{mode}: {v}");
    }
    // One log line per failure, naming the route, the event and the status.
    let logs = gw.proc.logs();
    for (event, status) in [
        ("slow", "504"),
        ("fail", "500"),
        ("garbage", "502"),
        ("refuse", "422"),
    ] {
        assert!(
            logs.lines().any(|l| l.contains("app event")
                && l.contains("route=/realtime/events")
                && l.contains(&format!("event={event}"))
                && l.contains(&format!("status={status}"))),
            "no log line for {event}:\n{logs}"
        );
    }
}

#[test]
fn a_connection_with_too_many_events_waiting_gets_an_error_ack_at_once() {
    let (_app, gw) = start();
    for mode in ["polling", "websocket"] {
        let v = scenario(&gw, "busy", mode);
        assert_eq!(
            v["refused"]["ack"],
            json!({"error": "too many events waiting for the app (at most 2 per connection)", "status": 429}),
            "{mode}: {v}"
        );
        assert!(
            v["refused"]["ms"].as_u64().is_some_and(|ms| ms < 500),
            "{mode}: {v}"
        );
        assert_eq!(v["slow"][0]["ack"], "slow", "{mode}: {v}");
        assert_eq!(v["slow"][1]["ack"], "slow", "{mode}: {v}");
        assert_eq!(v["after"]["ack"], "fourth", "{mode}: {v}");
    }
}

#[test]
fn an_app_that_cannot_be_reached_is_an_error_ack_not_a_broken_connection() {
    let app = Stub::start("app");
    let nobody = format!("127.0.0.1:{}", free_port());
    let gw = Gateway::start(&config(&app.addr.to_string(), &nobody));
    let v = scenario(&gw, "down", "websocket");
    let error = json!({"error": "the app could not be asked: the app did not answer properly", "status": 502});
    assert_eq!(v["first"]["ack"], error, "{v}");
    assert_eq!(v["second"]["ack"], error, "{v}");
    assert_eq!(v["connected"], true, "{v}");
    let logs = gw.proc.logs();
    assert!(
        logs.contains("upstream failed") && logs.contains("realtime.events"),
        "{logs}"
    );
}

#[tokio::test]
async fn pubsub_v1_events_reach_the_app_and_its_answer_comes_back() {
    let (_app, gw) = start();
    let mut ann = pubsub(&gw, "/ws", "ann").await;
    let mut bob = pubsub(&gw, "/ws", "bob").await;

    // Who Ann is, by the connect callback; `data` is the one argument.
    send(&mut ann, json!({"op": "event", "event": "whoami", "id": 1})).await;
    let whoami = frame(&mut ann).await;
    assert_eq!(whoami["op"], "ack", "{whoami}");
    assert_eq!(whoami["id"], 1, "{whoami}");
    let data = &whoami["data"];
    assert_eq!(data["user"], json!({"id": "ann", "info": {"name": "ann"}}));
    assert_eq!(data["transport"], "websocket");
    assert_eq!(data["place"], "/ws");
    assert_eq!(data["rooms"], json!(["private-user.ann"]));
    assert!(data["socket_id"].as_str().is_some_and(|s| !s.is_empty()));
    send(
        &mut ann,
        json!({"op": "event", "event": "echo", "data": {"n": 1}, "id": "e"}),
    )
    .await;
    assert_eq!(
        frame(&mut ann).await,
        json!({"op": "ack", "id": "e", "data": [{"n": 1}]})
    );

    // The app subscribes Bob to `lobby`: then he hears what Ann says there, and she does not.
    send(
        &mut bob,
        json!({"op": "event", "event": "enter", "data": "lobby", "id": 2}),
    )
    .await;
    assert_eq!(
        frame(&mut bob).await,
        json!({"op": "subscribed", "topic": "lobby", "position": frame_position()})
    );
    assert_eq!(
        frame(&mut bob).await,
        json!({"op": "ack", "id": 2, "data": {"joined": "lobby"}})
    );
    send(
        &mut ann,
        json!({"op": "event", "event": "say", "data": {"room": "lobby", "text": "hi"}, "id": 3}),
    )
    .await;
    assert_eq!(
        frame(&mut ann).await,
        json!({"op": "ack", "id": 3, "data": {"ok": true}})
    );
    let heard = frame(&mut bob).await;
    assert_eq!(
        (
            &heard["op"],
            &heard["topic"],
            &heard["event"],
            &heard["data"]
        ),
        (
            &json!("message"),
            &json!("lobby"),
            &json!("said"),
            &json!({"from": "ann", "text": "hi"})
        ),
        "{heard}"
    );
    // The app's reply to the sender alone.
    send(
        &mut ann,
        json!({"op": "event", "event": "reply", "data": [1, 2]}),
    )
    .await;
    assert_eq!(
        frame(&mut ann).await,
        json!({"op": "event", "event": "reply", "data": [1, 2]})
    );
    // No id: no ack; nothing else for Ann, nothing for Bob.
    assert_eq!(next(&mut ann, Duration::from_millis(300)).await, None);
    assert_eq!(next(&mut bob, Duration::from_millis(300)).await, None);

    // The app takes Bob out.
    send(
        &mut bob,
        json!({"op": "event", "event": "exit", "data": "lobby", "id": 4}),
    )
    .await;
    assert_eq!(
        frame(&mut bob).await,
        json!({"op": "unsubscribed", "topic": "lobby"})
    );
    assert_eq!(frame(&mut bob).await["data"], json!({"left": "lobby"}));

    // Slow: an error frame within the timeout; the connection goes on.
    let started = Instant::now();
    send(&mut ann, json!({"op": "event", "event": "slow", "id": 5})).await;
    assert_eq!(
        frame(&mut ann).await,
        json!({"op": "error", "message": "the app did not answer within 1500 ms", "id": 5})
    );
    assert!(started.elapsed() < Duration::from_secs(4));
    // Two waiting: the third is refused at once.
    for id in [6, 7] {
        send(
            &mut ann,
            json!({"op": "event", "event": "slow", "data": 500, "id": id}),
        )
        .await;
    }
    send(&mut ann, json!({"op": "event", "event": "echo", "id": 8})).await;
    assert_eq!(
        frame(&mut ann).await,
        json!({"op": "error", "message": "too many events waiting for the app (at most 2 per connection)", "id": 8})
    );
    // Answered as they come, in either order.
    let mut acks = vec![frame(&mut ann).await, frame(&mut ann).await];
    acks.sort_by_key(|a| a["id"].as_u64());
    assert_eq!(
        acks,
        [6, 7].map(|id| json!({"op": "ack", "id": id, "data": "slow"}))
    );

    // The app disconnects Bob: his ack, then 1000.
    send(&mut bob, json!({"op": "event", "event": "bye", "id": 9})).await;
    assert_eq!(
        frame(&mut bob).await,
        json!({"op": "ack", "id": 9, "data": {"bye": true}})
    );
    match tokio::time::timeout(Duration::from_secs(5), bob.next()).await {
        Ok(Some(Ok(Message::Close(Some(f))))) => {
            assert_eq!(
                (f.code, f.reason.as_str()),
                (CloseCode::Normal, "disconnected by the app")
            )
        }
        other => panic!("expected a close frame, got {other:?}"),
    }

    // An endpoint that sends no events to the app says so.
    let mut quiet = pubsub(&gw, "/quiet", "cy").await;
    send(&mut quiet, json!({"op": "event", "event": "echo", "id": 1})).await;
    assert_eq!(
        frame(&mut quiet).await,
        json!({"op": "error", "message": "event \"echo\" is not sent to the app on this endpoint", "id": 1})
    );
}

#[tokio::test]
async fn nobody_but_the_gateway_posts_to_the_apps_events_route() {
    let (app, gw) = start();
    // A client that would speak for someone else (the app believes the `user` it is sent).
    let forged = json!({"transport": "socketio", "namespace": "/", "event": "say",
        "args": [{"room": "lobby", "text": "as bob"}], "ack": false, "socket_id": "x",
        "user": {"id": "bob", "info": {}}, "rooms": []});
    for path in [
        "/realtime/events",
        "/realtime/%65vents",
        "/x/../realtime/events/",
    ] {
        let r = client()
            .post(gw.https(path))
            .json(&forged)
            .send()
            .await
            .expect("post");
        assert_eq!(r.status(), 404, "{path}");
    }
    // The rest of the app is there, and the app never saw the forged event.
    let r = client().get(gw.https("/ping")).send().await.expect("get");
    assert_eq!(r.status(), 200);
    assert!(posted(&app).await.is_empty());
}
