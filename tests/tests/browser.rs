//! The demo page (public/) in headless Chromium, driven by playwright-core (tests/js/browser.mjs)
//! through the real gateway over HTTPS, with two backend-stubs behind it as the app: two people
//! chat over Socket.IO (WebSocket and forced long-polling), the raw WebSocket chat protocol and
//! SSE; a late joiner is replayed the history; the app publishes to the `announcements` room;
//! people sign in and out of the "Who is here" presence list.
//!
//! Needs `/usr/bin/chromium` and `tests/node_modules` (tests/setup.sh installs both). The
//! screenshot goes to `target/e2e/screenshots/chat.png` (or `$SCREENSHOT`).

use std::process::Command;
use std::time::Duration;

use e2e::{eventually, workspace_root, Gateway, Stub};
use serde_json::Value;

fn config(app: &[std::net::SocketAddr]) -> String {
    let servers: Vec<String> = app.iter().map(|a| a.to_string()).collect();
    format!(
        r#"
listen: {{https: "{{https}}", admin: "{{admin}}"}}
tls: {{state_dir: state}}
upstreams:
  app:
    servers: [{servers}]
    balance: round_robin
    health_check: {{path: /ping, interval_ms: 500, timeout_ms: 1000, rise: 2, fall: 3}}
realtime:
  websocket:
    /ws:
      protocols: [beej-chat-protocol, pubsub.v1]
      allow_plain: true
      allowed_origins: ["https://{{https}}"]
  socketio:
    allowed_origins: ["https://{{https}}"]
    recovery: {{max_disconnection_ms: 120000}}
    namespaces:
      "/": {{relay: true, history: 50, client_rooms: true}}
  # As gateway.yaml: the demo's clients publish to chat-sse and nowhere else.
  policy: {{private: ["private-*", "presence-*"], client_publish: ["chat-sse"]}}
  auth: {{upstream: app, subscribe: /broadcasting/auth}}
routes:
  - {{path: /socket.io/, realtime: socketio}}
  - {{path: /ws, realtime: websocket}}
  - {{path: /s, realtime: longpoll}}
  - {{path: /p, realtime: longpoll}}
  - {{path: /events, realtime: sse}}
  - path: /
    static: {{root: "{{public}}", index: [index.html]}}
    upstream: app
"#,
        servers = servers.join(", "),
    )
}

fn texts(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

fn count(list: &[String], text: &str) -> usize {
    list.iter().filter(|t| t.as_str() == text).count()
}

/// What every two-person conversation must show: each line once on each side, attributed
/// to its author, one's own lines marked as such, and the other's arrival announced.
fn assert_conversation(v: &Value, tag: &str) {
    let ann = format!("hello from Ann {tag}");
    let bob = format!("hi Ann, Bob here {tag}");
    for side in ["a", "b"] {
        let state = v[side]["state"].as_str().unwrap_or("");
        assert!(
            state == "connected" || state == "recovered",
            "{tag}: {side}: {v}"
        );
    }
    assert_eq!(v["bSawAnn"]["from"], format!("Ann-{tag}"), "{tag}: {v}");
    assert_eq!(v["bSawAnn"]["mine"], false, "{tag}: {v}");
    assert_eq!(v["aOwn"]["mine"], true, "{tag}: {v}");
    assert_eq!(v["aSawBob"]["from"], format!("Bob-{tag}"), "{tag}: {v}");
    let (a, b) = (texts(&v["aTexts"]), texts(&v["bTexts"]));
    assert_eq!(count(&a, &ann), 1, "{tag}: Ann's page: {a:?}");
    assert_eq!(count(&a, &bob), 1, "{tag}: Ann's page: {a:?}");
    assert_eq!(count(&b, &ann), 1, "{tag}: Bob's page: {b:?}");
    assert_eq!(count(&b, &bob), 1, "{tag}: Bob's page: {b:?}");
    let notices = texts(&v["aNotices"]);
    assert!(
        notices.iter().any(|n| n == &format!("Bob-{tag} joined")),
        "{tag}: {notices:?}"
    );
}

#[tokio::test]
async fn the_demo_page_chats_over_every_transport_and_shows_what_the_app_publishes() {
    // The app's servers are in the gateway's config and the gateway's admin port is in the
    // app's (`--publish-url`): pick the app's ports first, start the gateway, then the app.
    let addrs: Vec<std::net::SocketAddr> = (0..2)
        .map(|_| {
            format!("127.0.0.1:{}", e2e::free_port())
                .parse()
                .expect("addr")
        })
        .collect();
    let gw = Gateway::start(&config(&addrs));
    let publish_url = gw.admin("/publish");
    let _app = [
        Stub::start_on("app-1", addrs[0], &["--publish-url", &publish_url]),
        Stub::start_on("app-2", addrs[1], &["--publish-url", &publish_url]),
    ];
    let healthz = gw.admin("/healthz");
    let healthy = eventually(Duration::from_secs(15), || async {
        let Ok(r) = reqwest::get(&healthz).await else {
            return false;
        };
        r.json::<Value>()
            .await
            .ok()
            .and_then(|v| v["upstreams"]["app"]["healthy"].as_u64())
            == Some(2)
    })
    .await;
    assert!(healthy, "the app's servers never became healthy");

    let shot = std::env::var("SCREENSHOT")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|_| workspace_root().join("target/e2e/screenshots/chat.png"));
    let _ = std::fs::remove_file(&shot);

    let out = Command::new("node")
        .arg(workspace_root().join("tests/js/browser.mjs"))
        .arg(gw.https(""))
        .arg(&shot)
        .output()
        .expect("run node (tests/setup.sh installs it)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let last = stdout.lines().last().unwrap_or("");
    let v: Value = serde_json::from_str(last)
        .unwrap_or_else(|_| panic!("no JSON result\nstdout: {stdout}\nstderr: {stderr}"));
    assert!(
        out.status.success() && v.get("error").is_none(),
        "browser scenarios failed: {v:#}\nstderr: {stderr}"
    );

    // (a) Socket.IO over WebSocket (after the polling handshake's upgrade).
    let sw = &v["socketioWebsocket"];
    assert_conversation(sw, "ws");
    assert_eq!(sw["aTransport"], "websocket", "{sw}");
    assert_eq!(sw["bTransport"], "websocket", "{sw}");

    // (b) Socket.IO forced to long-polling: it never upgrades.
    let sp = &v["socketioPolling"];
    assert_conversation(sp, "poll");
    assert_eq!(sp["aTransport"], "polling", "{sp}");
    assert_eq!(sp["bTransport"], "polling", "{sp}");
    assert_eq!(sp["aEngine"], "polling", "{sp}");

    // (c) The raw WebSocket chat (beej-chat-protocol), with the server's chat-leave.
    let raw = &v["rawWebsocket"];
    assert_conversation(raw, "raw");
    assert!(
        raw["a"]["transport"]
            .as_str()
            .unwrap_or("")
            .contains("beej-chat-protocol"),
        "{raw}"
    );
    assert!(
        texts(&raw["aNoticesAfterLeave"])
            .iter()
            .any(|n| n == "Bob-raw left"),
        "{raw}"
    );

    // SSE down, POST /p up.
    assert_conversation(&v["sse"], "sse");

    // (d) The late joiner is replayed both lines and both arrivals, in order, none as its own,
    // and its own arrival comes after them.
    let late = &v["lateJoiner"];
    let seen = texts(&late["texts"]);
    let ann = seen.iter().position(|t| t == "hello from Ann ws");
    let bob = seen.iter().position(|t| t == "hi Ann, Bob here ws");
    assert!(
        matches!((ann, bob), (Some(a), Some(b)) if a < b),
        "history: {late}"
    );
    assert_eq!(late["mineCount"], 0, "{late}");
    let notices = texts(&late["notices"]);
    for who in ["Ann-ws joined", "Bob-ws joined"] {
        assert!(notices.iter().any(|n| n == who), "{who}: {notices:?}");
    }
    assert_eq!(late["lastNotice"], "Cy (you) joined", "{late}");

    // (e) The app's publish reached the room on every page, the newcomer by the room's history.
    let app = &v["appPublish"];
    let text = app["aText"].as_str().unwrap_or("");
    assert!(text.contains("asked the app to say hello"), "{app}");
    assert!(
        app["aMeta"].as_str().unwrap_or("").starts_with("from app-"),
        "{app}"
    );
    assert_eq!(app["bText"], text, "{app}");
    assert_eq!(app["lateText"], text, "{app}");
    assert!(
        app["status"]
            .as_str()
            .unwrap_or("")
            .contains("published it"),
        "{app}"
    );

    // (f) Who is here: the login switch and the presence list, each user once however many
    // tabs; a user who signs out is gone from the others' lists.
    let who = &v["whoIsHere"];
    for page in ["a1", "a2", "b"] {
        assert_eq!(
            who[page],
            serde_json::json!(["ann", "bob"]),
            "{page}: {who}"
        );
    }
    assert_eq!(who["state"], "connected", "{who}");
    assert_eq!(who["a1AfterBob"], serde_json::json!(["ann"]), "{who}");
    assert_eq!(
        who["bSignedOut"],
        serde_json::json!({"members": [], "state": "signed out"}),
        "{who}"
    );

    assert_eq!(v["consoleErrors"], serde_json::json!([]), "{v:#}");

    let size = std::fs::metadata(&shot)
        .unwrap_or_else(|e| panic!("no screenshot at {}: {e}", shot.display()))
        .len();
    assert!(
        size > 20_000,
        "screenshot {} is only {size} bytes",
        shot.display()
    );
}
