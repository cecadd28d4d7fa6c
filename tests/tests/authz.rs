//! The app decides who hears what (issue 12): the topic policy and the authorization callbacks
//! to the app, on every transport, against backend-stub's Laravel-style answers (and php-fpm's,
//! for a FastCGI pool). Real clients: the official socket.io-client (Node), tokio-tungstenite
//! for `/ws` pubsub.v1, reqwest for SSE and long-poll, a browser's own `EventSource` in
//! headless Chromium (tests/js/sse_browser.mjs) for SSE, and the `curl` binary for long-poll.
//!
//! backend-stub's users: a `user=<name>` cookie or `Authorization: Bearer <name>` (or, for the
//! connect callback, `auth: {token: <name>}`); `banned-*` is refused, `slow` answered after
//! 20 s; `private-user.<name>` is its owner's, `presence-*` anyone's (see backend-stub's
//! `auth` module).

use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use e2e::{
    client, eventually, free_port, insecure_tls, workspace_root, Gateway, PhpFpm, Scratch, Stub,
};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Every transport, the Laravel policy with `chat-*` open to clients, and both callbacks to
/// `app`, which has 1.5 s to answer.
fn config(app: &str, auth_extra: &str) -> String {
    format!(
        r#"
listen: {{https: "{{https}}", admin: "{{admin}}"}}
tls: {{state_dir: state}}
upstreams: {{app: {{servers: ["{app}"]}}}}
realtime:
  hub: {{history: 20}}
  longpoll: {{wait_ms: 1500}}
  sse: {{heartbeat_ms: 1000}}
  socketio:
    namespaces:
      "/": {{relay: true, history: 10, client_rooms: true}}
  policy: {{private: ["private-*", "presence-*"], client_publish: ["chat-*"]}}
  auth: {{upstream: app, connect: /realtime/auth, timeout_ms: 1500{auth_extra}}}
routes:
  - {{path: /socket.io/, realtime: socketio}}
  - {{path: /ws, realtime: websocket}}
  - {{path: /s, realtime: longpoll}}
  - {{path: /p, realtime: longpoll}}
  - {{path: /events, realtime: sse}}
"#
    )
}

/// Run one scenario of tests/js/authz.mjs; the JSON it printed.
fn scenario(gw: &Gateway, name: &str, mode: &str, env: &[(&str, &str)]) -> Value {
    let out = Command::new("node")
        .arg(workspace_root().join("tests/js/authz.mjs"))
        .args([name, &gw.https(""), mode])
        .env("ADMIN_URL", gw.admin(""))
        .envs(env.iter().copied())
        .output()
        .expect("run node (tests/setup.sh installs it)");
    e2e::node_result(out, &format!("{name}/{mode}"))
}

/// The app publishes (the admin listener's publish API); the position it got.
async fn publish(gw: &Gateway, topic: &str, event: &str, data: Value) -> String {
    let v: Value = client()
        .post(gw.admin("/publish"))
        .json(&json!({"topic": topic, "event": event, "data": data}))
        .send()
        .await
        .expect("publish")
        .json()
        .await
        .expect("json");
    v["position"].as_str().expect("position").to_string()
}

/// The resume position before everything of the topic `position` is in.
fn start_of(position: &str) -> String {
    let epoch = position.split(':').next().expect("epoch");
    format!("{epoch}:0")
}

/// A `/ws` pubsub.v1 connection carrying `cookie`, or the status it was refused with.
async fn pubsub(gw: &Gateway, cookie: Option<&str>) -> Result<Ws, u16> {
    let url = format!("wss://127.0.0.1:{}/ws", gw.ports.https);
    let mut req = url.into_client_request().expect("request");
    req.headers_mut().insert(
        "sec-websocket-protocol",
        "pubsub.v1".parse().expect("value"),
    );
    if let Some(c) = cookie {
        req.headers_mut()
            .insert("cookie", c.parse().expect("cookie value"));
    }
    let connector = tokio_tungstenite::Connector::Rustls(insecure_tls());
    match tokio_tungstenite::connect_async_tls_with_config(req, None, false, Some(connector)).await
    {
        Ok((ws, _)) => Ok(ws),
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => Err(resp.status().as_u16()),
        Err(e) => panic!("websocket: {e}"),
    }
}

async fn send(ws: &mut Ws, v: Value) {
    ws.send(Message::text(v.to_string())).await.expect("send");
}

/// The next JSON frame, or `None` when nothing comes within `wait`.
async fn next_json(ws: &mut Ws, wait: Duration) -> Option<Value> {
    loop {
        match tokio::time::timeout(wait, ws.next()).await {
            Ok(Some(Ok(Message::Text(t)))) => return Some(serde_json::from_str(&t).expect("json")),
            Ok(Some(Ok(Message::Ping(_) | Message::Pong(_)))) => continue,
            Err(_) => return None,
            other => panic!("expected a text message, got {other:?}"),
        }
    }
}

async fn frame(ws: &mut Ws) -> Value {
    next_json(ws, Duration::from_secs(10))
        .await
        .expect("a frame within 10 s")
}

/// A GET with a cookie (or none): status and, for a finished answer, its body.
async fn get(url: &str, cookie: Option<&str>) -> (u16, String) {
    let mut req = client().get(url);
    if let Some(c) = cookie {
        req = req.header("cookie", c);
    }
    let r = req.send().await.expect("get");
    let status = r.status().as_u16();
    (status, r.text().await.unwrap_or_default())
}

/// The start of an SSE stream with a cookie: its status and what it sent until `needle`
/// appeared (or 10 s passed).
async fn sse_until(url: &str, cookie: &str, needle: &str) -> (u16, String) {
    let r = client()
        .get(url)
        .header("cookie", cookie)
        .send()
        .await
        .expect("sse");
    let status = r.status().as_u16();
    if status != 200 {
        return (status, r.text().await.unwrap_or_default());
    }
    let mut body = r.bytes_stream();
    let mut seen = String::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !seen.contains(needle) {
        match tokio::time::timeout_at(deadline, body.next()).await {
            Ok(Some(Ok(chunk))) => seen.push_str(&String::from_utf8_lossy(&chunk)),
            _ => break,
        }
    }
    (status, seen)
}

/// What the stub logged, and the callbacks it received (its `/__log`).
async fn callbacks(app: &Stub, path: &str) -> Vec<Value> {
    app.received()
        .await
        .into_iter()
        .filter(|r| r["path"] == path)
        .collect()
}

#[test]
fn socketio_clients_are_admitted_or_refused_by_the_app_with_its_reason() {
    let app = Stub::start("app");
    let gw = Gateway::start(&config(&app.addr.to_string(), ""));
    for mode in ["polling", "websocket"] {
        let v = scenario(&gw, "connect", mode, &[]);
        assert_eq!(v["token"]["connected"], true, "{mode}: {v}");
        assert_eq!(v["token"]["transport"], mode, "{mode}: {v}");
        assert_eq!(v["cookie"]["connected"], true, "{mode}: {v}");
        assert_eq!(
            v["banned"]["refused"], "user banned-eve is banned",
            "{mode}: {v}"
        );
        assert_eq!(v["banned"]["data"], json!({"status": 403}), "{mode}: {v}");
        assert_eq!(v["nobody"]["refused"], "not logged in", "{mode}: {v}");
        assert_eq!(v["nobody"]["data"], json!({"status": 401}), "{mode}: {v}");
    }
    // The app was asked with the client's cookie and the gateway's forwarding headers.
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let asked = rt.block_on(callbacks(&app, "/realtime/auth"));
    let with_cookie = asked
        .iter()
        .find(|r| r["headers"]["cookie"] == "user=bob")
        .unwrap_or_else(|| panic!("no callback with bob's cookie: {asked:#?}"));
    let h = &with_cookie["headers"];
    assert_eq!(h["x-forwarded-proto"], "https", "{h}");
    assert_eq!(h["x-forwarded-for"], "127.0.0.1", "{h}");
    assert_eq!(h["x-forwarded-port"], gw.ports.https.to_string(), "{h}");
    assert_eq!(h["host"], format!("127.0.0.1:{}", gw.ports.https), "{h}");
    assert_eq!(h["content-type"], "application/json", "{h}");
    assert_eq!(with_cookie["method"], "POST");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_or_missing_app_is_a_clear_error_within_the_timeout() {
    let app = Stub::start("app");
    let gw = Gateway::start(&config(&app.addr.to_string(), ""));
    // Slow: the app answers after 20 s; the client hears within the 1.5 s timeout.
    let gw_ref = &gw;
    let slow = tokio::task::block_in_place(|| {
        scenario(gw_ref, "attempt", "websocket", &[("TOKEN", "slow")])
    });
    assert_eq!(
        slow["refused"], "authorization failed: the app did not answer within 1500 ms",
        "{slow}"
    );
    assert_eq!(slow["data"], json!({"status": 504}), "{slow}");
    assert!(slow["ms"].as_u64().is_some_and(|ms| ms < 5000), "{slow}");
    let started = Instant::now();
    let (status, body) = get(&gw.https("/events?topic=news"), Some("user=slow")).await;
    assert_eq!(status, 504, "{body}");
    assert!(body.contains("did not answer within 1500 ms"), "{body}");
    assert!(started.elapsed() < Duration::from_secs(5));

    // Down: nothing listens where the app should be.
    let nobody = format!("127.0.0.1:{}", free_port());
    let down = Gateway::start(&config(&nobody, ""));
    let down_ref = &down;
    let v = tokio::task::block_in_place(|| scenario(down_ref, "attempt", "polling", &[]));
    assert_eq!(
        v["refused"], "authorization failed: the app did not answer properly",
        "{v}"
    );
    assert_eq!(v["data"], json!({"status": 502}), "{v}");
    assert!(v["ms"].as_u64().is_some_and(|ms| ms < 5000), "{v}");
    for url in [down.https("/s?t=news"), down.https("/events?topic=news")] {
        let (status, body) = get(&url, Some("user=ann")).await;
        assert_eq!(status, 502, "{url}: {body}");
        assert!(body.contains("authorization failed"), "{url}: {body}");
    }
    assert_eq!(pubsub(&down, Some("user=ann")).await.err(), Some(502));
    // The fault is logged as every path to the app logs it.
    assert!(down.proc.logs().contains("upstream failed"));
}

#[tokio::test]
async fn the_connect_callback_guards_sse_long_poll_and_the_websocket_upgrade() {
    let app = Stub::start("app");
    let gw = Gateway::start(&config(&app.addr.to_string(), ""));
    for url in [gw.https("/events?topic=news"), gw.https("/s?t=news")] {
        let (status, body) = get(&url, None).await;
        assert_eq!((status, body.as_str()), (401, "not logged in\n"), "{url}");
        let (status, body) = get(&url, Some("user=banned-eve")).await;
        assert_eq!(
            (status, body.as_str()),
            (403, "user banned-eve is banned\n"),
            "{url}"
        );
    }
    assert_eq!(pubsub(&gw, None).await.err(), Some(401));
    assert_eq!(pubsub(&gw, Some("user=banned-eve")).await.err(), Some(403));
    // A signed-in client gets in, and pubsub.v1 starts subscribed to the rooms the app named.
    let mut ws = pubsub(&gw, Some("user=ann")).await.expect("ann connects");
    let first = frame(&mut ws).await;
    assert_eq!(first["op"], "subscribed", "{first}");
    assert_eq!(first["topic"], "private-user.ann", "{first}");
    let (status, _) = get(&gw.https("/s?t=news"), Some("user=ann")).await;
    assert_eq!(status, 204);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn private_channels_need_the_apps_word_and_a_refused_client_learns_nothing() {
    let app = Stub::start("app");
    let gw = Gateway::start(&config(&app.addr.to_string(), ""));
    let old = publish(&gw, "private-user.bob", "secret", json!("old for bob")).await;
    let since = start_of(&old);
    let lobby = publish(&gw, "presence-lobby", "hello", json!("old lobby")).await;

    // Socket.IO: joins go through the app; Ann hears nothing of Bob's channel.
    for mode in ["polling", "websocket"] {
        let gw_ref = &gw;
        let v = tokio::task::block_in_place(|| scenario(gw_ref, "private", mode, &[]));
        assert_eq!(
            v["annJoinBob"],
            json!({"ok": false, "room": "private-user.bob", "error": "This action is unauthorized."}),
            "{mode}: {v}"
        );
        assert_eq!(v["bobJoinBob"]["ok"], true, "{mode}: {v}");
        assert_eq!(v["annJoinPresence"]["ok"], true, "{mode}: {v}");
        // Each hears their own channel (joined from the connect answer), Ann nothing of Bob's.
        assert_eq!(v["annGot"], json!(["for ann"]), "{mode}: {v}");
        assert_eq!(v["bobGot"], json!(["new for bob"]), "{mode}: {v}");
        // The presence channel, joined with the app's word: its history, then live.
        let hello = v["annHello"].as_array().expect("annHello");
        assert_eq!(hello.first(), Some(&json!("old lobby")), "{mode}: {v}");
        assert_eq!(hello.last(), Some(&json!("lobby")), "{mode}: {v}");
        // Laravel's contract: the room as channel_name, the socket id as socket_id.
        let ann_id = v["annId"].as_str().expect("annId");
        let line = format!("broadcasting/auth channel=private-user.bob socket_id={ann_id}: 403");
        assert!(app.proc.logs().contains(&line), "{mode}: no {line:?}");
    }
    let asked = callbacks(&app, "/broadcasting/auth").await;
    assert!(
        asked.iter().all(
            |r| r["headers"]["content-type"] == "application/x-www-form-urlencoded"
                && r["headers"]["accept"] == "application/json"
        ),
        "{asked:#?}"
    );

    // /ws pubsub.v1.
    let mut ann = pubsub(&gw, Some("user=ann")).await.expect("ann");
    assert_eq!(frame(&mut ann).await["topic"], "private-user.ann");
    send(
        &mut ann,
        json!({"op": "subscribe", "topic": "private-user.bob", "since": since}),
    )
    .await;
    let refused = frame(&mut ann).await;
    assert_eq!(
        refused,
        json!({"op": "error", "message": "subscribe refused: This action is unauthorized."})
    );
    send(
        &mut ann,
        json!({"op": "subscribe", "topic": "presence-lobby", "since": start_of(&lobby)}),
    )
    .await;
    assert_eq!(frame(&mut ann).await["op"], "subscribed");
    assert_eq!(frame(&mut ann).await["data"], "old lobby");
    // Bob is in his channel from the connect answer, and hears what comes next.
    let mut bob = pubsub(&gw, Some("user=bob")).await.expect("bob");
    assert_eq!(frame(&mut bob).await["topic"], "private-user.bob");
    publish(&gw, "private-user.bob", "secret", json!("ws live")).await;
    let live = frame(&mut bob).await;
    assert_eq!(
        (live["op"].clone(), live["data"].clone()),
        (json!("message"), json!("ws live"))
    );
    // Ann hears the rest of the lobby's history, and nothing of Bob's channel.
    while let Some(v) = next_json(&mut ann, Duration::from_millis(500)).await {
        assert_eq!(v["topic"], "presence-lobby", "{v}");
    }

    // SSE: refused outright for Ann; Bob resumes the channel's history.
    let url = gw.https(&format!(
        "/events?topic=private-user.bob&lastEventId={since}"
    ));
    let (status, body) = sse_until(&url, "user=ann", "old for bob").await;
    assert_eq!(
        (status, body.as_str()),
        (403, "This action is unauthorized.\n")
    );
    let (status, body) = sse_until(&url, "user=bob", "old for bob").await;
    assert_eq!(status, 200);
    assert!(body.contains("data: old for bob"), "{body}");

    // Long-poll: the same.
    let url = gw.https(&format!("/s?t=private-user.bob&since={since}"));
    let (status, body) = get(&url, Some("user=ann")).await;
    assert_eq!(
        (status, body.as_str()),
        (403, "This action is unauthorized.\n")
    );
    let (status, body) = get(&url, Some("user=bob")).await;
    assert_eq!(status, 200);
    assert!(body.contains("old for bob"), "{body}");
    assert!(!body.is_empty());

    // Presence answers are allowed for any signed-in user; nobody else.
    let (status, _) = get(&gw.https("/s?t=presence-lobby"), Some("user=cy")).await;
    assert_eq!(status, 204);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_publish_only_where_the_policy_allows() {
    let app = Stub::start("app");
    let gw = Gateway::start(&config(&app.addr.to_string(), ""));
    let post = |topic: &str| {
        client()
            .post(gw.https(&format!("/p?t={topic}")))
            .header("cookie", "user=ann")
            .body("hello")
            .send()
    };
    let r = post("news").await.expect("post");
    assert_eq!(r.status(), 403);
    let body = r.text().await.expect("body");
    assert!(
        body.contains("clients may not publish to \"news\""),
        "{body}"
    );
    let r = post("chat-1").await.expect("post");
    assert_eq!(r.status(), 200, "{:?}", r.text().await);
    // The app still publishes anywhere.
    publish(&gw, "news", "headline", json!("from the app")).await;

    let mut ws = pubsub(&gw, Some("user=ann")).await.expect("ann");
    assert_eq!(frame(&mut ws).await["op"], "subscribed");
    send(
        &mut ws,
        json!({"op": "publish", "topic": "news", "data": 1}),
    )
    .await;
    let refused = frame(&mut ws).await;
    assert_eq!(refused["op"], "error", "{refused}");
    assert!(
        refused["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("publish refused: clients may not publish to \"news\"")),
        "{refused}"
    );
    send(
        &mut ws,
        json!({"op": "publish", "topic": "chat-1", "data": 2}),
    )
    .await;
    assert_eq!(frame(&mut ws).await["op"], "published");

    // Socket.IO: a relay reaches only rooms open to clients; `news` gets nothing from it.
    let gw_ref = &gw;
    let v = tokio::task::block_in_place(|| scenario(gw_ref, "publish", "websocket", &[]));
    assert_eq!(
        v["cyGot"],
        json!(["meant for news", "for chat-room"]),
        "{v}"
    );
    assert_eq!(v["news"]["seq"], 1, "only the app's headline: {v}");
    assert_eq!(v["chatRoom"]["seq"], 1, "{v}");
    assert_eq!(v["intoChat"]["seq"], 1, "{v}");
}

#[tokio::test]
async fn by_default_only_the_app_publishes_and_private_topics_are_refused() {
    // No policy, no callbacks: Laravel's defaults.
    let gw = Gateway::start(
        r#"
listen: {https: "{https}", admin: "{admin}"}
tls: {state_dir: state}
realtime: {longpoll: {wait_ms: 500}}
routes:
  - {path: /lp, realtime: longpoll}
  - {path: /ws, realtime: websocket}
  - {path: /events, realtime: sse}
"#,
    );
    let r = client()
        .post(gw.https("/lp/p?t=news"))
        .body("x")
        .send()
        .await
        .expect("post");
    assert_eq!(r.status(), 403);
    let mut ws = pubsub(&gw, None).await.expect("connects");
    send(
        &mut ws,
        json!({"op": "publish", "topic": "news", "data": 1}),
    )
    .await;
    assert_eq!(frame(&mut ws).await["op"], "error");
    send(&mut ws, json!({"op": "subscribe", "topic": "private-x"})).await;
    let refused = frame(&mut ws).await;
    assert!(
        refused["message"].as_str().is_some_and(|m| m
            .contains("topic \"private-x\" needs the app's authorization, and none is configured")),
        "{refused}"
    );
    send(&mut ws, json!({"op": "subscribe", "topic": "news"})).await;
    assert_eq!(frame(&mut ws).await["op"], "subscribed");
    let (status, _) = get(&gw.https("/events?topic=presence-x"), None).await;
    assert_eq!(status, 403);
    let (status, _) = get(&gw.https("/lp/s?t=news"), None).await;
    assert_eq!(status, 204);
}

#[tokio::test]
async fn answers_are_reused_per_session_for_the_configured_time() {
    let app = Stub::start("app");
    let gw = Gateway::start(&config(&app.addr.to_string(), ", cache_ms: 60000"));
    let position = publish(&gw, "presence-lobby", "hello", json!(1)).await;
    let url = gw.https(&format!(
        "/s?t=presence-lobby&since={}",
        start_of(&position)
    ));
    for cookie in ["user=ann", "user=ann", "user=ann", "user=bob"] {
        let (status, body) = get(&url, Some(cookie)).await;
        assert_eq!(status, 200, "{body}");
    }
    // Ann asked three times and the app answered once per question; Bob is another session.
    assert_eq!(callbacks(&app, "/realtime/auth").await.len(), 2);
    assert_eq!(callbacks(&app, "/broadcasting/auth").await.len(), 2);
}

/// A Laravel-ish front controller: the session is the `user` cookie, channels are checked as
/// `routes/channels.php` would (`private-user.{id}` is the user's own).
const PHP_APP: &str = r#"<?php
$path = parse_url($_SERVER['REQUEST_URI'], PHP_URL_PATH);
header('Content-Type: application/json');
$user = $_COOKIE['user'] ?? null;
if ($user === null) {
    http_response_code(401);
    echo json_encode(['message' => 'Unauthenticated.']);
    exit;
}
if ($path === '/realtime/auth') {
    $auth = json_decode(file_get_contents('php://input'), true);
    echo json_encode(['user_id' => $user, 'user_info' => ['via' => 'php', 'auth' => $auth]]);
} elseif ($path === '/broadcasting/auth') {
    $channel = $_POST['channel_name'] ?? '';
    if ($channel === "private-user.$user" && ($_POST['socket_id'] ?? '') !== '') {
        echo 'true';
    } else {
        http_response_code(403);
        echo json_encode(['message' => "php says no to $user on $channel"]);
    }
} else {
    http_response_code(404);
}
"#;

#[tokio::test]
async fn php_fpm_answers_the_callbacks_over_a_fastcgi_pool() {
    let fpm = PhpFpm::start("");
    let root = Scratch::new("php-authz");
    std::fs::write(root.path().join("index.php"), PHP_APP).expect("write");
    let gw = Gateway::start(&format!(
        r#"
listen: {{https: "{{https}}", admin: "{{admin}}"}}
tls: {{state_dir: state}}
upstreams:
  php: {{protocol: fastcgi, servers: ["{server}"], fastcgi: {{root: {root}}}}}
realtime:
  auth: {{upstream: php, connect: /realtime/auth, timeout_ms: 5000}}
routes:
  - {{path: /events, realtime: sse}}
  - {{path: /s, realtime: longpoll}}
  - {{path: /, upstream: php}}
"#,
        server = fpm.server(),
        root = root.path().display(),
    ));
    let (status, body) = get(&gw.https("/s?t=private-user.ann"), None).await;
    assert_eq!((status, body.as_str()), (401, "Unauthenticated.\n"));
    let (status, body) = get(&gw.https("/s?t=private-user.bob"), Some("user=ann")).await;
    assert_eq!(
        (status, body.as_str()),
        (403, "php says no to ann on private-user.bob\n")
    );
    let position = publish(&gw, "private-user.ann", "note", json!("for ann")).await;
    let url = gw.https(&format!(
        "/events?topic=private-user.ann&lastEventId={}",
        start_of(&position)
    ));
    let (status, body) = sse_until(&url, "user=ann", "for ann").await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("data: for ann"), "{body}");
    assert!(fpm.access_log().contains("POST /broadcasting/auth 200"));
}

/// The topic the browser and curl stories are about: Ann's own (backend-stub's
/// `private-user.<name>` is its owner's only).
const ANN: &str = "private-user.ann";

/// How many of the callbacks `asked` carried exactly `cookie` (`None`: no cookie at all).
/// How many connect and channel callbacks the app got with each cookie:
/// `(cookie, connects, channels)`.
async fn assert_asked(app: &Stub, expected: &[(Option<&str>, usize, usize)]) {
    let connects = callbacks(app, "/realtime/auth").await;
    let channels = callbacks(app, "/broadcasting/auth").await;
    for &(cookie, connect, channel) in expected {
        assert_eq!(
            carrying(&connects, cookie),
            connect,
            "{cookie:?}: {connects:#?}"
        );
        assert_eq!(
            carrying(&channels, cookie),
            channel,
            "{cookie:?}: {channels:#?}"
        );
    }
}

fn carrying(asked: &[Value], cookie: Option<&str>) -> usize {
    asked
        .iter()
        .filter(|r| r["headers"]["cookie"] == json!(cookie))
        .count()
}

/// Run tests/js/sse_browser.mjs (headless Chromium) against `gw`, its browsers asking for
/// `ANN`'s history from `since`; the JSON it printed.
fn sse_browsers(gw: &Gateway, since: &str) -> Value {
    let out = Command::new("node")
        .arg(workspace_root().join("tests/js/sse_browser.mjs"))
        .arg(gw.https(""))
        .env("ADMIN_URL", gw.admin(""))
        .env("SINCE", since)
        .output()
        .expect("run node (tests/setup.sh installs it)");
    e2e::node_result(out, "sse_browser")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browser_eventsource_hears_and_resumes_with_its_cookie_and_the_refused_hear_nothing() {
    let app = Stub::start("app");
    let gw = Gateway::start(&config(&app.addr.to_string(), ""));
    let before = publish(&gw, ANN, "note", json!("before anyone listened")).await;
    let gw_ref = &gw;
    let v = tokio::task::block_in_place(|| sse_browsers(gw_ref, &start_of(&before)));

    // Ann's browser sends her cookie itself and hears her topic's history, then what the app
    // publishes; her network drops, the app publishes meanwhile, and the browser reconnects on
    // its own with the Last-Event-ID it kept: she is replayed exactly what she missed.
    let ann = &v["ann"];
    let seen = ann["seen"].as_array().expect("seen");
    let kinds: Vec<&str> = seen.iter().filter_map(|e| e["type"].as_str()).collect();
    assert_eq!(
        kinds,
        ["open", ANN, ANN, "error", "open", ANN, ANN],
        "{ann:#}"
    );
    let heard: Vec<&Value> = seen.iter().filter(|e| e["type"] == ANN).collect();
    let data: Vec<&str> = heard.iter().filter_map(|e| e["data"].as_str()).collect();
    assert_eq!(
        data,
        [
            "before anyone listened",
            "first for ann",
            "while ann was away",
            "after the refusals"
        ],
        "{ann:#}"
    );
    assert_eq!(heard[0]["id"], before.as_str(), "{ann:#}");
    assert_eq!(ann["heardBeforeReconnect"], 2, "{ann:#}");
    assert_eq!(
        ann["requests"],
        json!([
            {"cookie": "user=ann", "lastEventId": null},
            {"cookie": "user=ann", "lastEventId": heard[1]["id"]},
        ]),
        "{ann:#}"
    );
    assert_eq!(ann["answers"], json!([200, 200]), "{ann:#}");
    assert_eq!(ann["readyState"], 1, "still open: {ann:#}");
    assert!(
        ann["connections"].as_u64().is_some_and(|n| n >= 2),
        "the drop was a real one: {ann:#}"
    );

    // The refused ask for the same stream and history: one refusal each, EventSource fires
    // `error` and ends (CLOSED, no retry), and nothing of the topic reaches them.
    for (name, cookie, status) in [
        ("eve", Some("user=banned-eve"), 403),
        ("nobody", None, 401),
        ("cy", Some("user=cy"), 403),
    ] {
        let r = &v["refused"][name];
        assert_eq!(
            r["seen"],
            json!([{"type": "error", "readyState": 2}]),
            "{name}: {r:#}"
        );
        assert_eq!(r["readyState"], 2, "{name}: {r:#}");
        assert_eq!(
            r["requests"],
            json!([{"cookie": cookie, "lastEventId": null}]),
            "{name}: {r:#}"
        );
        assert_eq!(r["answers"], json!([status]), "{name}: {r:#}");
    }

    // The app was asked about every stream with the browser's own cookie: Ann's two
    // connections (her connect answer names her channel among her rooms, so that is its word on
    // it), each refused browser once; Cy got past the connect callback and was refused the
    // channel; Eve and the cookieless browser never got that far.
    assert_asked(
        &app,
        &[
            (Some("user=ann"), 2, 0),
            (Some("user=banned-eve"), 1, 0),
            (None, 1, 0),
            (Some("user=cy"), 1, 1),
        ],
    )
    .await;
    let logs = app.proc.logs();
    let asked = |status: &str| {
        logs.lines()
            .filter(|l| l.contains(&format!("broadcasting/auth channel={ANN} socket_id=")))
            .filter(|l| l.contains(&format!(": {status}")))
            .count()
    };
    assert_eq!((asked("200"), asked("403")), (0, 1), "{logs}");
}

/// What `curl` got: the status, the response head and the body.
struct Curled {
    status: u16,
    head: String,
    body: String,
}

impl Curled {
    fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }
}

/// The real `curl` binary asking for `url`, sending `cookie` (if any) with `-b`; the status
/// comes last on stdout, after the head and the body.
fn curl(url: &str, cookie: Option<&str>) -> Command {
    let mut c = Command::new("curl");
    c.args(["--silent", "--show-error", "--insecure", "--include"])
        .args(["--max-time", "20", "--write-out", "\n%{http_code}"]);
    if let Some(cookie) = cookie {
        c.args(["-b", cookie]);
    }
    c.arg(url).stdout(Stdio::piped()).stderr(Stdio::piped());
    c
}

/// What a `curl` run printed, split into status, head and body; curl itself must have
/// succeeded (an HTTP refusal is still a success for it).
fn curled(out: std::io::Result<Output>) -> Curled {
    let out = out.expect("run curl (tests/setup.sh installs it)");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "curl failed: {}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (answer, status) = text.rsplit_once('\n').expect("the status line");
    let (head, body) = answer.split_once("\r\n\r\n").expect("a head");
    Curled {
        status: status.parse().expect("a status"),
        head: head.to_string(),
        body: body.to_string(),
    }
}

/// Run `curl` to the end, from an async test.
fn curl_now(url: &str, cookie: Option<&str>) -> Curled {
    tokio::task::block_in_place(|| curled(curl(url, cookie).output()))
}

/// A long-poll batch as (position, body) pairs.
fn batch(body: &str) -> Vec<(String, String)> {
    realtime::longpoll::decode_batch(body)
        .expect("batch framing")
        .into_iter()
        .map(|(p, b)| (p.to_string(), b))
        .collect()
}

/// Subscribers of `topic` the hub counts (the admin API's `GET /topics/<topic>`).
async fn subscribers(gw: &Gateway, topic: &str) -> u64 {
    let v: Value = client()
        .get(gw.admin(&format!("/topics/{topic}")))
        .send()
        .await
        .expect("topic info")
        .json()
        .await
        .expect("json");
    v["subscribers"].as_u64().unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_long_polls_with_an_accepted_cookie_and_a_refused_one_gets_only_the_apps_reason() {
    let app = Stub::start("app");
    // Polls held for 10 s: room, on a busy machine, between a poll arriving and the publish.
    let yaml = config(&app.addr.to_string(), "")
        .replace("longpoll: {wait_ms: 1500}", "longpoll: {wait_ms: 10000}");
    assert!(yaml.contains("wait_ms: 10000"), "{yaml}");
    let gw = Gateway::start(&yaml);
    let first = publish(&gw, ANN, "note", json!("before anyone polled")).await;
    let from_start = gw.https(&format!("/s?t={ANN}&since={}", start_of(&first)));

    // The refused ask for the topic's whole history: they get the app's reason and nothing of
    // the topic, not even its position.
    for (cookie, status, reason) in [
        (None, 401, "not logged in\n"),
        (Some("user=banned-eve"), 403, "user banned-eve is banned\n"),
        (Some("user=cy"), 403, "This action is unauthorized.\n"),
    ] {
        let r = curl_now(&from_start, cookie);
        assert_eq!((r.status, r.body.as_str()), (status, reason), "{cookie:?}");
        assert_eq!(r.header("x-position"), None, "{cookie:?}: {}", r.head);
    }

    // Ann, with her cookie, resumes from the start of the history: all of it, at once.
    let r = curl_now(&from_start, Some("user=ann"));
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        batch(&r.body),
        [(first.clone(), "before anyone polled".to_string())]
    );
    assert_eq!(r.header("x-position"), Some(first.as_str()), "{}", r.head);

    // She waits for what comes next (no `since`: the plain shape), and the app publishes it.
    let waiting = curl(&gw.https(&format!("/s?t={ANN}")), Some("user=ann"))
        .spawn()
        .expect("run curl (tests/setup.sh installs it)");
    let polling = eventually(Duration::from_secs(10), || async {
        subscribers(&gw, ANN).await == 1
    })
    .await;
    assert!(polling, "Ann's poll never reached the hub");
    let live = publish(&gw, ANN, "note", json!("live for ann")).await;
    let r = tokio::task::block_in_place(|| curled(waiting.wait_with_output()));
    assert_eq!((r.status, r.body.as_str()), (200, "live for ann"));
    assert_eq!(r.header("x-position"), Some(live.as_str()), "{}", r.head);

    // Away, she misses two; her next poll from where she was gets both, in order.
    let one = publish(&gw, ANN, "note", json!("missed one")).await;
    let two = publish(&gw, ANN, "note", json!("missed two")).await;
    let r = curl_now(
        &gw.https(&format!("/s?t={ANN}&since={live}")),
        Some("user=ann"),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        batch(&r.body),
        [
            (one, "missed one".to_string()),
            (two.clone(), "missed two".to_string())
        ]
    );
    assert_eq!(r.header("x-position"), Some(two.as_str()), "{}", r.head);

    // The app was asked about every poll with curl's cookie: Ann's three (her channel is among
    // the rooms of her connect answer), each refused one once; only Cy was asked about the
    // channel.
    assert_asked(
        &app,
        &[
            (Some("user=ann"), 3, 0),
            (Some("user=banned-eve"), 1, 0),
            (None, 1, 0),
            (Some("user=cy"), 1, 1),
        ],
    )
    .await;
}
