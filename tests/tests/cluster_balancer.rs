//! No sticky sessions: two gateway processes on one redis-server that forward each other the
//! Engine.IO requests of the sessions they own (`cluster.internal_listen`), first driven by
//! hand (a session opened on one node, used through the other, polling and WebSocket), then
//! behind a real round-robin balancer (nginx, no affinity) with the official socket.io-client
//! in each transport mode; and what the internal listener refuses.

use std::time::{Duration, Instant};

use e2e::balancer::Balancer;
use e2e::fleet::{balanced_nodes, socketio_scenario, wait_forwarding, Node, SECRET};
use e2e::redis::RedisServer;
use e2e::{client, websocket};
use futures_util::{SinkExt, StreamExt};
use realtime::engineio::{node_tag, sid_owner, tagged_sid};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

/// `GET` (or `POST` with `body`) of the Engine.IO polling transport on `node`'s public
/// listener: status and body.
async fn poll(node: &Node, sid: &str, body: Option<&str>) -> (u16, String) {
    let url = node
        .gw
        .http(&format!("/socket.io/?EIO=4&transport=polling&sid={sid}"));
    let req = match body {
        Some(b) => client().post(url).body(b.to_string()),
        None => client().get(url),
    };
    let r = req.send().await.expect("poll");
    (r.status().as_u16(), r.text().await.unwrap_or_default())
}

/// A polling handshake on `node`: the sid.
async fn open(node: &Node) -> String {
    let r = client()
        .get(node.gw.http("/socket.io/?EIO=4&transport=polling"))
        .send()
        .await
        .expect("handshake");
    assert_eq!(r.status(), 200);
    let body = r.text().await.expect("body");
    let v: Value =
        serde_json::from_str(body.strip_prefix('0').expect("open packet")).expect("json");
    v["sid"].as_str().expect("sid").to_string()
}

/// `POST /publish` of `event` with `data` to `topic` on `node`'s admin listener.
async fn publish(node: &Node, topic: &str, event: &str, data: Value) {
    let r = client()
        .post(node.gw.admin("/publish"))
        .json(&json!({"topic": topic, "event": event, "data": data}))
        .send()
        .await
        .expect("publish");
    assert_eq!(r.status(), 200, "{:?}", r.text().await);
}

/// The next text frame of a WebSocket, skipping Engine.IO pings.
async fn ws_text(ws: &mut e2e::fleet::Ws) -> String {
    loop {
        match tokio::time::timeout(Duration::from_secs(10), ws.next()).await {
            Ok(Some(Ok(Message::Text(t)))) if t.as_str() == "2" => {
                ws.send(Message::text("3")).await.expect("pong");
            }
            Ok(Some(Ok(Message::Text(t)))) => return t.to_string(),
            Ok(Some(Ok(_))) => continue,
            other => panic!("no text frame: {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_session_opened_on_one_node_is_served_through_the_other() {
    let redis = RedisServer::start();
    let nodes = balanced_nodes(&redis, 2, 100);
    let (a, b) = (&nodes[0], &nodes[1]);
    wait_forwarding(&nodes).await;

    // A polling session opened on a names a in its sid...
    let sid = open(a).await;
    assert_eq!(sid_owner(&sid), Some(node_tag("a").as_str()), "{sid}");
    // ... and is used through b: the Socket.IO CONNECT, its answer, a join with an ack.
    assert_eq!(poll(b, &sid, Some("40")).await, (200, "ok".to_string()));
    let (status, body) = poll(b, &sid, None).await;
    assert_eq!(status, 200);
    assert!(body.starts_with("40{\"sid\":"), "{body}");
    assert_eq!(
        poll(b, &sid, Some("420[\"join\",\"r\"]")).await,
        (200, "ok".to_string())
    );
    assert_eq!(
        poll(a, &sid, None).await,
        (200, "430[{\"ok\":true,\"room\":\"r\"}]".to_string())
    );
    // What the room hears, from either node, is read through b.
    publish(b, "r", "note", json!({"n": 1})).await;
    let (status, body) = poll(b, &sid, None).await;
    assert_eq!(status, 200);
    // Recovery is on: the event's offset is its last argument.
    assert!(body.starts_with("42[\"note\",{\"n\":1},\""), "{body}");

    // The upgrade to WebSocket, through b, is tunnelled to a.
    let url = format!(
        "ws://127.0.0.1:{}/socket.io/?EIO=4&transport=websocket&sid={sid}",
        b.gw.ports.http
    );
    let (mut ws, resp) = websocket(&url, None).await.expect("upgrade through b");
    assert_eq!(resp.status(), 101);
    ws.send(Message::text("2probe")).await.expect("probe");
    assert_eq!(ws_text(&mut ws).await, "3probe");
    ws.send(Message::text("5")).await.expect("upgrade");
    publish(a, "r", "note", json!({"n": 2})).await;
    let event = ws_text(&mut ws).await;
    assert!(event.starts_with("42[\"note\",{\"n\":2},\""), "{event}");
    ws.send(Message::text("421[\"leave\",\"r\"]"))
        .await
        .expect("leave");
    assert_eq!(ws_text(&mut ws).await, "431[{\"ok\":true,\"room\":\"r\"}]");
    // Polling is over for the session, wherever it is asked.
    let (status, body) = poll(b, &sid, None).await;
    assert_eq!(
        (status, body.as_str()),
        (400, r#"{"code":3,"message":"Bad request"}"#)
    );

    // A sid of a node the fleet does not know: Engine.IO's answer at once.
    let stranger = tagged_sid(&node_tag("zz"), "AAECAwQFBgcICQoLDA0ODw");
    let started = Instant::now();
    let (status, body) = poll(b, &stranger, None).await;
    assert_eq!(
        (status, body.as_str()),
        (400, r#"{"code":1,"message":"Session ID unknown"}"#)
    );
    assert!(started.elapsed() < Duration::from_secs(2));
    drop(ws);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_internal_listener_serves_the_fleet_only_and_the_public_one_never_serves_it() {
    let redis = RedisServer::start();
    let mut nodes = balanced_nodes(&redis, 2, 100);
    wait_forwarding(&nodes).await;
    let sid = open(&nodes[0]).await;
    let internal = |path: &str| format!("http://127.0.0.1:{}{path}", nodes[0].internal);
    let session = format!("/_fleet/engine.io/?EIO=4&transport=polling&sid={sid}");
    let get = |url: String, secret: Option<&str>| {
        let mut req = client().get(url);
        if let Some(s) = secret {
            req = req.header("x-fleet-secret", s);
        }
        async move {
            let r = req.send().await.expect("request");
            (r.status().as_u16(), r.text().await.unwrap_or_default())
        }
    };

    // Without the secret, or with another one: refused, whatever the path.
    for secret in [None, Some("not-the-fleet-secret-0000"), Some("")] {
        let (status, body) = get(internal(&session), secret).await;
        assert_eq!(status, 403, "{secret:?}: {body}");
        assert!(body.contains("nodes of the fleet only"), "{body}");
    }
    assert_eq!(get(internal("/healthz"), None).await.0, 403);
    // With it: the session's requests, and nothing else.
    let (status, _) = get(internal(&session), Some(SECRET)).await;
    assert_eq!(status, 200);
    assert_eq!(
        get(
            internal(&format!("/socket.io/?EIO=4&transport=polling&sid={sid}")),
            Some(SECRET)
        )
        .await
        .0,
        404
    );
    let (status, body) = get(
        internal("/_fleet/engine.io/?EIO=4&transport=polling"),
        Some(SECRET),
    )
    .await;
    assert_eq!(
        (status, body.contains("name a session")),
        (400, true),
        "{body}"
    );

    // The public listener has no such route, secret or not.
    let public = nodes[0].gw.http(&session);
    assert_eq!(get(public, Some(SECRET)).await.0, 404);

    // A node killed: its sessions are unknown at once through the other node.
    nodes[0].gw.proc.kill();
    let started = Instant::now();
    let (status, body) = poll(&nodes[1], &sid, None).await;
    assert_eq!(
        (status, body.as_str()),
        (400, r#"{"code":1,"message":"Session ID unknown"}"#)
    );
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
}

/// The official client through nginx balancing round-robin over both nodes: connect, join a
/// room with an ack, relays in both directions, a broadcast to the namespace.
#[test]
fn the_official_client_works_through_a_round_robin_balancer_in_every_transport_mode() {
    let redis = RedisServer::start();
    let nodes = balanced_nodes(&redis, 2, 100);
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(wait_forwarding(&nodes));
    let lb = Balancer::round_robin(&[(nodes[0].http_addr(), 1), (nodes[1].http_addr(), 1)]);
    let nodes_addr = [
        nodes[0].http_addr().to_string(),
        nodes[1].http_addr().to_string(),
    ];
    for mode in ["polling", "websocket", "upgrade"] {
        let v = socketio_scenario("balanced", mode, &[lb.url()]);
        let transport = if mode == "polling" {
            "polling"
        } else {
            "websocket"
        };
        assert_eq!(v["transport"], json!([transport, transport]), "{mode}: {v}");
        let n: Vec<i64> = (0..20).collect();
        let got = |who: &str| -> Vec<i64> {
            v["got"][who]
                .as_array()
                .expect("events")
                .iter()
                .map(|e| e["n"].as_i64().unwrap_or(-1))
                .collect()
        };
        assert_eq!(
            got("y"),
            n,
            "{mode}: y hears x's relays once, in order: {v}"
        );
        assert_eq!(got("x"), [100], "{mode}: x hears y's broadcast: {v}");
        let acks = v["acks"].as_array().expect("acks");
        assert_eq!(acks.len(), 20, "{mode}: {v}");
        assert!(
            acks.iter().all(|a| a["seq"].as_i64().is_some()),
            "{mode}: {v}"
        );

        // Round-robin with no affinity: the requests of one polling session went to both
        // nodes, and every one was answered 200 (forwarded to the owner when it landed on the
        // other node).
        if mode == "polling" {
            let log = lb.access_log();
            for sid in v["sids"].as_array().expect("sids") {
                let sid = sid.as_str().expect("sid");
                let lines: Vec<&str> = log.lines().filter(|l| l.contains(sid)).collect();
                assert!(lines.len() >= 4, "{sid}: {lines:?}");
                for addr in &nodes_addr {
                    assert!(
                        lines.iter().any(|l| l.ends_with(addr.as_str())),
                        "{sid} never reached {addr}: {lines:?}"
                    );
                }
                // (The poll pending when the client disconnected is cut: nginx logs a 499.)
                assert!(
                    lines
                        .iter()
                        .all(|l| l.contains(" 200 ") || l.contains(" 499 ")),
                    "{sid}: {lines:?}"
                );
                assert!(
                    lines.iter().filter(|l| l.contains(" 200 ")).count() >= lines.len() - 1,
                    "{sid}: {lines:?}"
                );
            }
        }
    }
}

/// A node stopped with SIGTERM takes its address out of Redis (the others stop forwarding to
/// it at once rather than when the record expires) and exits cleanly.
#[test]
fn a_stopped_node_withdraws_its_address_and_exits_cleanly() {
    let redis = RedisServer::start();
    let mut nodes = balanced_nodes(&redis, 2, 100);
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(wait_forwarding(&nodes));
    let key = format!("socket.io:node:{}", node_tag("a"));
    let record = redis.cli(&["GET", &key]);
    assert!(record.contains("\"node\":\"a\""), "{record}");
    let proc = &mut nodes[0].gw.proc;
    proc.signal(15);
    let status = proc.wait_exit(Duration::from_secs(30));
    assert!(status.is_some(), "still running 30 s after SIGTERM");
    assert_eq!(
        redis.cli(&["GET", &key]).trim(),
        "",
        "the address is withdrawn"
    );
    let logs = proc.logs();
    assert!(!logs.contains("panicked"), "{logs}");
    assert_eq!(status.and_then(|s| s.code()), Some(0), "{logs}");
}
