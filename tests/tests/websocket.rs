//! WebSockets: tunnelled to the app (Action Cable style) and served in-process through the
//! realtime seam. Both must survive idleness past pingora's 60 s read timeout.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use e2e::{client, websocket, Gateway, Stub};
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;

fn config(app: &Stub) -> String {
    format!(
        r#"
listen: {{https: "{{https}}"}}
tls: {{state_dir: state}}
upstreams: {{app: {{servers: ["{}"]}}}}
routes:
  - {{path: /__seam/, realtime: seam-test}}
  - {{path: /cable, upstream: app}}
  - {{path: /nows, upstream: app, websocket: false}}
  - {{path: /, upstream: app}}
"#,
        app.addr
    )
}

async fn echo_once(url: &str, text: &str) -> Result<(), String> {
    let (mut ws, _) = websocket(url, None).await.map_err(|e| e.to_string())?;
    ws.send(Message::text(text))
        .await
        .map_err(|e| e.to_string())?;
    match tokio::time::timeout(Duration::from_secs(10), ws.next()).await {
        Ok(Some(Ok(Message::Text(t)))) if t.as_str() == text => {}
        other => return Err(format!("no echo: {other:?}")),
    }
    ws.close(None).await.map_err(|e| e.to_string())?;
    Ok(())
}

#[tokio::test]
async fn the_app_websocket_is_tunnelled_with_subprotocol_and_binary() {
    let app = Stub::start("app");
    let gw = Gateway::start(&config(&app));
    let url = format!("wss://127.0.0.1:{}/cable", gw.ports.https);
    let (mut ws, resp) = websocket(&url, Some("actioncable-v1-json"))
        .await
        .expect("upgrade");
    assert_eq!(resp.status(), 101);
    assert_eq!(
        resp.headers()["sec-websocket-protocol"],
        "actioncable-v1-json"
    );
    assert_eq!(resp.headers()["x-backend-id"], "app");
    ws.send(Message::binary(vec![0u8, 1, 2, 255]))
        .await
        .expect("send");
    match ws.next().await {
        Some(Ok(Message::Binary(b))) => assert_eq!(b.as_ref(), &[0u8, 1, 2, 255]),
        other => panic!("{other:?}"),
    }
    let big = "x".repeat(1 << 20);
    ws.send(Message::text(big.clone())).await.expect("send");
    match ws.next().await {
        Some(Ok(Message::Text(t))) => assert_eq!(t.len(), big.len()),
        other => panic!("{other:?}"),
    }
    ws.close(None).await.expect("close");
    // The app saw the upgrade with the forwarding headers.
    let log = app.received().await;
    let cable = log.iter().find(|r| r["path"] == "/cable").expect("logged");
    assert_eq!(cable["headers"]["x-forwarded-proto"], "https");
    assert_eq!(cable["headers"]["upgrade"], "websocket");
}

#[tokio::test]
async fn a_thousand_tunnelled_sessions_lose_none() {
    let app = Stub::start_with("app", &["--quiet"]);
    let gw = Gateway::start(&config(&app));
    let url = Arc::new(format!("wss://127.0.0.1:{}/cable", gw.ports.https));
    let lost = Arc::new(AtomicUsize::new(0));
    let next = Arc::new(AtomicUsize::new(0));
    const SESSIONS: usize = 1000;
    const CONCURRENCY: usize = 50;
    let workers: Vec<_> = (0..CONCURRENCY)
        .map(|_| {
            let (url, lost, next) = (url.clone(), lost.clone(), next.clone());
            tokio::spawn(async move {
                while next.fetch_add(1, Ordering::Relaxed) < SESSIONS {
                    if let Err(e) = echo_once(&url, "hello").await {
                        eprintln!("lost session: {e}");
                        lost.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    for w in workers {
        w.await.expect("worker");
    }
    assert_eq!(lost.load(Ordering::Relaxed), 0, "sessions lost");
}

#[tokio::test]
async fn a_refused_upgrade_is_relayed_and_a_dead_app_is_a_502() {
    let mut app = Stub::start("app");
    let gw = Gateway::start(&config(&app));
    // The app refuses upgrades it does not speak (404 for an unknown path).
    let err = websocket(&format!("wss://127.0.0.1:{}/nope", gw.ports.https), None)
        .await
        .expect_err("no upgrade");
    assert!(err.to_string().contains("404"), "{err}");
    // Routes that do not allow upgrades say so.
    let err = websocket(&format!("wss://127.0.0.1:{}/nows", gw.ports.https), None)
        .await
        .expect_err("no upgrade");
    assert!(err.to_string().contains("403"), "{err}");
    app.proc.kill();
    let err = websocket(&format!("wss://127.0.0.1:{}/cable", gw.ports.https), None)
        .await
        .expect_err("app down");
    assert!(err.to_string().contains("502"), "{err}");
}

/// pingora's per-read timeout is 60 s; an idle WebSocket must outlive it.
#[tokio::test]
async fn idle_websockets_outlive_the_60_second_read_timeout() {
    let app = Stub::start("app");
    let gw = Gateway::start(&config(&app));
    let mut sockets = Vec::new();
    for path in ["/cable", "/__seam/ws"] {
        let url = format!("wss://127.0.0.1:{}{path}", gw.ports.https);
        let (ws, _) = websocket(&url, None).await.expect("upgrade");
        sockets.push((path, ws));
    }
    tokio::time::sleep(Duration::from_secs(70)).await;
    for (path, ws) in sockets.iter_mut() {
        ws.send(Message::text("still here"))
            .await
            .unwrap_or_else(|e| panic!("{path}: {e}"));
        match tokio::time::timeout(Duration::from_secs(5), ws.next()).await {
            Ok(Some(Ok(Message::Text(t)))) => assert_eq!(t.as_str(), "still here"),
            other => panic!("{path} died while idle: {other:?}"),
        }
    }
}

#[tokio::test]
async fn the_seam_serves_full_held_streamed_and_upgraded_exchanges() {
    let app = Stub::start("app");
    let gw = Gateway::start(&config(&app));
    let c = client();

    // Full, with the request body read by the service.
    let echo: serde_json::Value = c
        .post(gw.https("/__seam/echo?x=1"))
        .body(vec![7u8; 70_000])
        .send()
        .await
        .expect("post")
        .json()
        .await
        .expect("json");
    assert_eq!(echo["body_len"], 70_000);
    assert_eq!(echo["query"], "x=1");
    assert_eq!(echo["secure"], true);

    // Streamed: chunks arrive as they are produced.
    let mut r = c
        .get(gw.https("/__seam/stream?n=3&interval_ms=300"))
        .send()
        .await
        .expect("get");
    let started = std::time::Instant::now();
    let first = r.chunk().await.expect("read").expect("chunk");
    assert_eq!(first.as_ref(), b"chunk 1\n");
    assert!(started.elapsed() < Duration::from_millis(250));
    let mut rest = Vec::new();
    while let Some(c) = r.chunk().await.expect("read") {
        rest.extend_from_slice(&c);
    }
    assert_eq!(rest, b"chunk 2\nchunk 3\n");

    // Held, answered when ready.
    let r = c
        .get(gw.https("/__seam/hold?ms=300"))
        .send()
        .await
        .expect("get");
    assert_eq!(r.text().await.expect("body"), "held 300\n");

    // Held, abandoned by its client: the service's future is dropped at once.
    let (c2, url) = (
        e2e::client_builder().http1_only().build().expect("client"),
        gw.https("/__seam/hold?ms=60000"),
    );
    let waiting = tokio::spawn(async move { c2.get(url).send().await });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let stats: serde_json::Value = c
        .get(gw.https("/__seam/stats"))
        .send()
        .await
        .expect("stats")
        .json()
        .await
        .expect("json");
    assert_eq!(stats["held_now"], 1);
    waiting.abort();
    let freed = e2e::eventually(Duration::from_secs(3), || async {
        let s: serde_json::Value = c
            .get(gw.https("/__seam/stats"))
            .send()
            .await
            .expect("stats")
            .json()
            .await
            .expect("json");
        s["held_now"] == 0 && s["held_abandoned"] == 1
    })
    .await;
    assert!(freed, "the held request outlived its client");

    // Upgraded.
    echo_once(
        &format!("wss://127.0.0.1:{}/__seam/ws", gw.ports.https),
        "ping",
    )
    .await
    .expect("seam websocket");
}

/// A realtime WebSocket is served outside pingora's HTTP session once it is upgraded: the
/// write deadline it had there (`send_timeout_ms`, nginx's `send_timeout`) still holds. A
/// client that sends and stops reading is cut off, and the connection's task and file with it.
#[tokio::test]
async fn a_realtime_websocket_that_stops_reading_is_cut_off_after_send_timeout() {
    let app = Stub::start("app");
    let gw = Gateway::start(&config(&app).replace(
        "tls: {state_dir: state}",
        "tls: {state_dir: state}\nlimits: {send_timeout_ms: 1000}",
    ));
    let url = format!("wss://127.0.0.1:{}/__seam/ws", gw.ports.https);
    let (mut ws, _) = websocket(&url, None).await.expect("upgrade");
    // The echo service sends every message back; this client never reads, so the echoes fill
    // the socket buffers, the service's write waits, and then this client's own sends wait.
    let message = Message::binary(vec![7u8; 64 * 1024]);
    let mut sent = 0;
    while sent < 2_000 {
        match tokio::time::timeout(Duration::from_secs(2), ws.send(message.clone())).await {
            Ok(Ok(())) => sent += 1,
            _ => break,
        }
    }
    assert!(
        sent < 2_000,
        "the gateway kept reading a client that reads nothing"
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    // Reading now gets what was already on its way, then the end of the connection.
    let mut echoed = 0;
    let ended = tokio::time::timeout(Duration::from_secs(20), async {
        while let Some(Ok(m)) = ws.next().await {
            if m.is_binary() {
                echoed += 1;
            }
        }
    })
    .await;
    assert!(
        ended.is_ok(),
        "the stalled WebSocket was never closed ({echoed} of {sent} echoes read)"
    );
    assert!(echoed < sent, "the stalled client got every echo ({sent})");
    echo_once(&url, "fresh")
        .await
        .expect("a fresh WebSocket works");
}

/// The gateway ends a realtime WebSocket's TLS connection cleanly (`close_notify`, then FIN),
/// as it does every other: a client can tell the end of the session from a cut connection.
#[tokio::test]
async fn a_realtime_websocket_ends_with_a_tls_close_notify() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let app = Stub::start("app");
    let gw = Gateway::start(&config(&app));
    let mut tls = e2e::tls_connect(gw.https_addr()).await;
    tls.write_all(
        b"GET /__seam/ws HTTP/1.1\r\nHost: localhost\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
          Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
    )
    .await
    .expect("handshake");
    // A masked Close frame (1000) right behind it: the echo service stops at once.
    tls.write_all(b"\x88\x82abcd\x62\x8a")
        .await
        .expect("close frame");
    let mut got = Vec::new();
    let end = tokio::time::timeout(Duration::from_secs(10), tls.read_to_end(&mut got))
        .await
        .expect("the gateway closes the connection");
    let head = String::from_utf8_lossy(&got);
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    // rustls reports a close without `close_notify` as an unexpected EOF.
    assert!(end.is_ok(), "not a clean TLS close: {end:?}");
}
