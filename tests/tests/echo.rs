//! A Laravel front end moves from laravel-echo-server to the gateway by changing Echo's `host`
//! (issue 12): npm `laravel-echo` 2.5.0 with socket.io-client (tests/js/echo.mjs) against a
//! gateway whose main namespace speaks Echo's protocol (`echo: true`), backend-stub answering
//! `/realtime/auth` and `/broadcasting/auth` as a Laravel app would. And presence on the other
//! transports: SSE and `/ws` pubsub.v1 share the members with Echo's clients.
//!
//! backend-stub's users: a `user=<name>` cookie (or `Authorization: Bearer <name>`);
//! `private-user.<name>` is its owner's, `private-chat.*` any user's, `presence-*` any user's
//! but guests' (`guest*`), with `{user_id: name, user_info: {name}}` (see its `auth` module).

use std::process::Command;
use std::time::Duration;

use e2e::{client, insecure_tls, workspace_root, Gateway, Stub};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// What a laravel-echo-server deployment becomes: Socket.IO's main namespace speaking Echo, the
/// app asked who connects and who may have which channel; SSE and `/ws` beside it.
fn config(app: &str) -> String {
    format!(
        r#"
listen: {{https: "{{https}}", admin: "{{admin}}"}}
tls: {{state_dir: state}}
upstreams: {{app: {{servers: ["{app}"]}}}}
realtime:
  sse: {{heartbeat_ms: 1000}}
  socketio:
    namespaces:
      "/": {{echo: true}}
  auth: {{upstream: app, connect: /realtime/auth, timeout_ms: 3000}}
routes:
  - {{path: /socket.io/, realtime: socketio}}
  - {{path: /ws, realtime: websocket}}
  - {{path: /events, realtime: sse}}
"#
    )
}

/// Runs one scenario of tests/js/echo.mjs; the JSON it printed.
fn scenario(gw: &Gateway, name: &str, mode: &str) -> Value {
    let out = Command::new("node")
        .arg(workspace_root().join("tests/js/echo.mjs"))
        .args([name, &gw.https(""), mode])
        .env("ADMIN_URL", gw.admin(""))
        .output()
        .expect("run node (tests/setup.sh installs it)");
    e2e::node_result(out, &format!("{name}/{mode}"))
}

fn started() -> (Stub, Gateway) {
    let app = Stub::start("app");
    let gw = Gateway::start(&config(&app.addr.to_string()));
    (app, gw)
}

/// The callbacks the app received at `path` (its `/__log`).
async fn callbacks(app: &Stub, path: &str) -> Vec<Value> {
    app.received()
        .await
        .into_iter()
        .filter(|r| r["path"] == path)
        .collect()
}

#[test]
fn echo_listens_on_public_channels_in_laravels_event_names() {
    let (app, gw) = started();
    for mode in ["polling", "websocket", "upgrade"] {
        let v = scenario(&gw, "public", mode);
        // `.listen('OrderShipped')` hears `App\Events\OrderShipped`, `.listen('.status.changed')`
        // the name as published; another channel's event and what follows the leave, nothing.
        assert_eq!(v["shipped"], json!([{"order": 1}]), "{mode}: {v}");
        assert_eq!(
            v["status"],
            json!([{"order": 1, "status": "shipped"}]),
            "{mode}: {v}"
        );
    }
    // Public channels are nobody's to authorize.
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    assert!(rt
        .block_on(callbacks(&app, "/broadcasting/auth"))
        .is_empty());
}

#[test]
fn echo_private_channels_are_the_apps_to_grant_and_a_refused_user_hears_nothing() {
    let (app, gw) = started();
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    // Said in Bob's channel before anyone listened.
    rt.block_on(publish(
        &gw,
        "private-user.bob",
        "note",
        json!("old for bob"),
    ));
    for mode in ["polling", "websocket"] {
        let v = scenario(&gw, "private", mode);
        assert_eq!(v["annGot"], json!([["own", "for ann"]]), "{mode}: {v}");
        assert_eq!(v["bobGot"], json!(["for bob"]), "{mode}: {v}");
        // laravel-echo-server's refusal: the channel and the app's status.
        assert_eq!(
            v["annErrors"],
            json!([["private-user.bob", 403]]),
            "{mode}: {v}"
        );
        assert_eq!(v["bobSubscribers"], 1, "only Bob is in his channel: {v}");
    }
    let line = "broadcasting/auth channel=private-user.bob socket_id=";
    assert!(app.proc.logs().contains(line), "the app was asked");
}

#[test]
fn echo_presence_tells_each_user_once_however_many_tabs_it_has() {
    let (_app, gw) = started();
    for mode in ["polling", "websocket"] {
        let v = scenario(&gw, "presence", mode);
        let log = &v["log"];
        // Ann's two tabs each see the list, Bob arrive once, and the room's messages.
        for tab in ["ann1", "ann2"] {
            assert_eq!(
                log[tab],
                json!([
                    ["here", ["ann"]],
                    ["joining", "bob"],
                    ["chat", "hello room"]
                ]),
                "{mode} {tab}: {v}"
            );
        }
        // Bob sees both users listed once, and Ann leave once: when her last tab went.
        assert_eq!(
            log["bob"],
            json!([
                ["here", ["ann", "bob"]],
                ["chat", "hello room"],
                ["leaving", "ann"]
            ]),
            "{mode}: {v}"
        );
        // The guest is refused and learns nothing: no list, no message, no news.
        assert_eq!(log["guest"], json!([]), "{mode}: {v}");
        assert_eq!(
            v["guestErrors"],
            json!([["presence-room.1", 403]]),
            "{mode}: {v}"
        );
        // The admin API counted two members in three tabs, then Bob alone.
        assert_eq!(
            v["during"],
            json!({"topic": "presence-room.1", "count": 2, "connections": 3, "members": [
                {"user_id": "ann", "user_info": {"name": "ann"}},
                {"user_id": "bob", "user_info": {"name": "bob"}},
            ]}),
            "{mode}: {v}"
        );
        assert_eq!(v["after"]["count"], 1, "{mode}: {v}");
        assert_eq!(v["after"]["connections"], 1, "{mode}: {v}");
    }
}

#[test]
fn echo_whispers_reach_the_others_on_private_channels_only() {
    let (_app, gw) = started();
    for mode in ["polling", "websocket"] {
        let v = scenario(&gw, "whisper", mode);
        assert_eq!(
            v["bob"],
            json!([["chat.1", {"name": "ann"}]]),
            "{mode}: {v}"
        );
        assert_eq!(v["ann"], json!([]), "never back to the sender: {mode}: {v}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echo_auth_headers_go_to_the_app_with_the_session_cookie() {
    let (app, gw) = started();
    let gw_ref = &gw;
    let v = tokio::task::block_in_place(|| scenario(gw_ref, "headers", "websocket"));
    assert_eq!(v["errors"], json!([]), "{v}");
    let asked = callbacks(&app, "/broadcasting/auth").await;
    let dana = asked
        .iter()
        .find(|r| r["headers"]["authorization"] == "Bearer dana")
        .unwrap_or_else(|| panic!("no channel request with Dana's token: {asked:#?}"));
    let h = &dana["headers"];
    assert_eq!(h["x-csrf-token"], "csrf-1", "{h}");
    assert_eq!(h["cookie"], "user=dana", "{h}");
    assert_eq!(h["x-forwarded-for"], "127.0.0.1", "{h}");
    assert!(app
        .proc
        .logs()
        .contains("broadcasting/auth channel=private-chat.9 socket_id="));
}

/// The app publishes (the admin listener's publish API).
async fn publish(gw: &Gateway, topic: &str, event: &str, data: Value) {
    let r = client()
        .post(gw.admin("/publish"))
        .json(&json!({"topic": topic, "event": event, "data": data}))
        .send()
        .await
        .expect("publish");
    assert_eq!(r.status(), 200);
}

/// A `/ws` pubsub.v1 connection signed in as `user`.
async fn pubsub(gw: &Gateway, user: &str) -> Ws {
    let url = format!("wss://127.0.0.1:{}/ws", gw.ports.https);
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
    let (ws, _) =
        tokio_tungstenite::connect_async_tls_with_config(req, None, false, Some(connector))
            .await
            .expect("pubsub.v1 connects");
    ws
}

/// The next JSON frame of `ws` that is not about the connect answer's own channel.
async fn frame(ws: &mut Ws) -> Value {
    loop {
        let next = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("a frame within 10 s");
        match next {
            Some(Ok(Message::Text(t))) => {
                let v: Value = serde_json::from_str(&t).expect("json");
                if v["topic"]
                    .as_str()
                    .is_some_and(|t| t.starts_with("private-user."))
                {
                    continue;
                }
                return v;
            }
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            other => panic!("expected a text frame, got {other:?}"),
        }
    }
}

/// An SSE stream's events, read as they come.
struct Events {
    body: std::pin::Pin<Box<dyn futures_util::Stream<Item = reqwest::Result<bytes::Bytes>> + Send>>,
    seen: String,
}

impl Events {
    async fn open(gw: &Gateway, user: &str, topic: &str) -> Events {
        let r = client()
            .get(gw.https(&format!("/events?topic={topic}")))
            .header("cookie", format!("user={user}"))
            .send()
            .await
            .expect("sse");
        assert_eq!(r.status(), 200);
        Events {
            body: Box::pin(r.bytes_stream()),
            seen: String::new(),
        }
    }

    /// The next event named `event`: its data as JSON.
    async fn next(&mut self, event: &str) -> Value {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            while let Some(end) = self.seen.find("\n\n") {
                let block: String = self.seen.drain(..end + 2).collect();
                let name = block.lines().find_map(|l| l.strip_prefix("event: "));
                if name == Some(event) {
                    let data: Vec<&str> = block
                        .lines()
                        .filter_map(|l| l.strip_prefix("data: "))
                        .collect();
                    return serde_json::from_str(&data.join("\n")).expect("json data");
                }
            }
            match tokio::time::timeout_at(deadline, self.body.next()).await {
                Ok(Some(Ok(chunk))) => self.seen.push_str(&String::from_utf8_lossy(&chunk)),
                other => panic!("no {event} event: {other:?} after {:?}", self.seen),
            }
        }
    }
}

#[tokio::test]
async fn presence_is_shared_by_sse_and_pubsub_clients() {
    let (_app, gw) = started();
    // Cy follows the lobby over SSE: the list (just him), then the news.
    let mut cy = Events::open(&gw, "cy", "presence-lobby").await;
    let cy_member = json!({"user_id": "cy", "user_info": {"name": "cy"}});
    assert_eq!(
        cy.next("presence:subscribed").await,
        json!({"topic": "presence-lobby", "members": [cy_member]})
    );
    // Dee subscribes over /ws pubsub.v1: subscribed, then the members, Cy among them.
    let mut dee = pubsub(&gw, "dee").await;
    dee.send(Message::text(
        json!({"op": "subscribe", "topic": "presence-lobby"}).to_string(),
    ))
    .await
    .expect("send");
    assert_eq!(frame(&mut dee).await["op"], "subscribed");
    let dee_member = json!({"user_id": "dee", "user_info": {"name": "dee"}});
    assert_eq!(
        frame(&mut dee).await,
        json!({"op": "members", "topic": "presence-lobby", "members": [cy_member, dee_member]})
    );
    assert_eq!(
        cy.next("presence:joining").await,
        json!({"topic": "presence-lobby", "member": dee_member})
    );
    // A second SSE tab of Cy's tells nobody; the app's own messages reach everyone as before.
    let mut cy2 = Events::open(&gw, "cy", "presence-lobby").await;
    cy2.next("presence:subscribed").await;
    publish(&gw, "presence-lobby", "chat", json!("hi all")).await;
    let said = frame(&mut dee).await;
    assert_eq!(
        (said["event"].clone(), said["data"].clone()),
        (json!("chat"), json!("hi all"))
    );
    let members: Value = client()
        .get(gw.admin("/topics/presence-lobby/members"))
        .send()
        .await
        .expect("members")
        .json()
        .await
        .expect("json");
    assert_eq!(
        (members["count"].clone(), members["connections"].clone()),
        (json!(2), json!(3))
    );
    // Dee unsubscribes: Cy hears of it.
    dee.send(Message::text(
        json!({"op": "unsubscribe", "topic": "presence-lobby"}).to_string(),
    ))
    .await
    .expect("send");
    assert_eq!(
        cy.next("presence:leaving").await,
        json!({"topic": "presence-lobby", "member": dee_member})
    );
}
