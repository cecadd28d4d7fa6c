//! Bad Engine.IO / Socket.IO input through the gateway: each gets the reference server's answer,
//! and a normal client connects right after.

use std::time::Duration;

use e2e::{client, Gateway};
use serde_json::{json, Value};

const CONFIG: &str = r#"
listen: {https: "{https}"}
tls: {state_dir: state}
realtime:
  socketio:
    max_payload_bytes: 200000
    namespaces: {"/": {relay: true}}
routes:
  - {path: /socket.io/, realtime: socketio}
"#;

fn url(gw: &Gateway, query: &str) -> String {
    gw.https(&format!("/socket.io/?EIO=4&{query}"))
}

/// A polling handshake; the new session id.
async fn handshake(gw: &Gateway) -> String {
    let r = client()
        .get(url(gw, "transport=polling"))
        .send()
        .await
        .expect("handshake");
    assert_eq!(r.status(), 200);
    let body = r.text().await.expect("body");
    let open: Value =
        serde_json::from_str(body.strip_prefix('0').expect("open packet")).expect("open json");
    let keys: Vec<&str> = open
        .as_object()
        .expect("object")
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(
        keys,
        [
            "sid",
            "upgrades",
            "pingInterval",
            "pingTimeout",
            "maxPayload"
        ]
    );
    open["sid"].as_str().expect("sid").to_string()
}

async fn still_healthy(gw: &Gateway) {
    let sid = handshake(gw).await;
    let r = client()
        .post(url(gw, &format!("transport=polling&sid={sid}")))
        .body("40")
        .send()
        .await
        .expect("connect");
    assert_eq!(r.text().await.expect("body"), "ok");
    let r = client()
        .get(url(gw, &format!("transport=polling&sid={sid}")))
        .send()
        .await
        .expect("poll");
    let body = r.text().await.expect("body");
    assert!(body.starts_with("40{\"sid\":"), "{body}");
}

async fn error_of(r: reqwest::Response) -> (u16, Value) {
    let status = r.status().as_u16();
    let body = r.text().await.expect("body");
    (
        status,
        serde_json::from_str(&body).unwrap_or(Value::String(body)),
    )
}

#[tokio::test]
async fn bad_requests_get_the_reference_error_codes() {
    let gw = Gateway::start(CONFIG);
    let c = client();
    for (query, method, want) in [
        (
            "transport=polling&sid=nope",
            "GET",
            json!({"code": 1, "message": "Session ID unknown"}),
        ),
        (
            "transport=abc",
            "GET",
            json!({"code": 0, "message": "Transport unknown"}),
        ),
        (
            "transport=polling",
            "POST",
            json!({"code": 2, "message": "Bad handshake method"}),
        ),
        (
            "transport=websocket",
            "GET",
            json!({"code": 3, "message": "Bad request"}),
        ),
    ] {
        let r = c
            .request(method.parse().expect("method"), url(&gw, query))
            .send()
            .await
            .expect("request");
        let (status, body) = error_of(r).await;
        assert_eq!((status, &body), (400, &want), "{method} {query}");
    }
    let r = c
        .get(gw.https("/socket.io/?EIO=3&transport=polling"))
        .send()
        .await
        .expect("request");
    assert_eq!(
        error_of(r).await,
        (
            400,
            json!({"code": 5, "message": "Unsupported protocol version"})
        )
    );
    still_healthy(&gw).await;
}

#[tokio::test]
async fn a_post_over_the_limit_is_413() {
    let gw = Gateway::start(CONFIG);
    let sid = handshake(&gw).await;
    let r = client()
        .post(url(&gw, &format!("transport=polling&sid={sid}")))
        .body(format!("4{}", "x".repeat(300_000)))
        .send()
        .await
        .expect("post");
    assert_eq!(r.status(), 413);
    still_healthy(&gw).await;
}

#[tokio::test]
async fn a_second_concurrent_poll_closes_the_session() {
    let gw = Gateway::start(CONFIG);
    let sid = handshake(&gw).await;
    let first = tokio::spawn({
        let u = url(&gw, &format!("transport=polling&sid={sid}"));
        async move { client().get(u).send().await }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let second = client()
        .get(url(&gw, &format!("transport=polling&sid={sid}")))
        .send()
        .await
        .expect("second poll");
    assert_eq!(second.status(), 400);
    let first = first.await.expect("join").expect("first poll");
    assert_eq!(
        first.text().await.expect("body"),
        "1",
        "the first poll is told to close"
    );
    let r = client()
        .get(url(&gw, &format!("transport=polling&sid={sid}")))
        .send()
        .await
        .expect("poll");
    assert_eq!(error_of(r).await.1["code"], 1, "the session is gone");
    still_healthy(&gw).await;
}

#[tokio::test]
async fn malformed_packets_deep_json_and_attachment_floods_close_the_connection() {
    let gw = Gateway::start(CONFIG);
    let deep = format!("42{}", "[".repeat(100_000));
    for payload in [
        "abc".to_string(),
        "40\u{1e}4abc".to_string(),
        "40\u{1e}42{}".to_string(),
        "40\u{1e}40".to_string(),
        format!("40\u{1e}{deep}"),
        "40\u{1e}4599999999-[\"x\",{\"_placeholder\":true,\"num\":0}]".to_string(),
    ] {
        let sid = handshake(&gw).await;
        let post = url(&gw, &format!("transport=polling&sid={sid}"));
        let _ = client().post(&post).body(payload.clone()).send().await;
        // The session is closed: either now, or the next poll says so.
        let closed = e2e::eventually(Duration::from_secs(3), || async {
            let r = client().get(&post).send().await.expect("poll");
            let status = r.status().as_u16();
            let body = r.text().await.unwrap_or_default();
            status == 400 || body.ends_with('1')
        })
        .await;
        assert!(
            closed,
            "session survived {:?}",
            &payload[..payload.len().min(40)]
        );
    }
    still_healthy(&gw).await;
}
