//! What one client may take, and all of them: nginx's `limit_req` and `limit_conn`, realtime
//! connects per second, and a cap on open connections. Each limit answers at its number and
//! not before, names itself in the answer, keeps the app from seeing what it refused, and
//! leaves other clients alone.

use std::time::Duration;

use e2e::{client, websocket, Gateway, Stub};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn config(app: &Stub, limits: &str) -> String {
    format!(
        r#"
listen: {{https: "{{https}}", admin: "{{admin}}"}}
tls: {{state_dir: state}}
proxy: {{trusted_proxies: [127.0.0.2]}}
limits: {limits}
realtime:
  longpoll: {{wait_ms: 100}}
upstreams: {{app: {{servers: ["{app}"]}}}}
routes:
  - {{path: /events, realtime: sse}}
  - {{path: /s, realtime: longpoll}}
  - {{path: /ws, realtime: websocket}}
  - {{path: /, upstream: app}}
"#,
        app = app.addr
    )
}

/// An HTTP/1 request on a connection of its own from 127.0.0.1: (status, head).
async fn get(gw: &Gateway, path: &str, extra: &str) -> (u16, String) {
    let mut tls = e2e::tls_connect(gw.https_addr()).await;
    tls.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n{extra}Connection: close\r\n\r\n")
            .as_bytes(),
    )
    .await
    .expect("write");
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), tls.read_to_end(&mut out)).await;
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let head = text.split("\r\n\r\n").next().unwrap_or("").to_string();
    (status, head)
}

async fn app_requests(app: &Stub, path: &str) -> usize {
    app.paths().await.iter().filter(|p| *p == path).count()
}

#[tokio::test]
async fn a_client_over_its_request_rate_gets_429_with_retry_after_and_others_do_not() {
    let app = Stub::start("app");
    let gw = Gateway::start(&config(
        &app,
        "{per_client_rate: {per_second: 1, burst: 5}}",
    ));
    for i in 0..5 {
        assert_eq!(
            get(&gw, "/status/204", "").await.0,
            204,
            "request {i} of the burst"
        );
    }
    let (status, head) = get(&gw, "/status/204", "").await;
    assert_eq!(status, 429, "{head}");
    assert!(
        head.to_ascii_lowercase().contains("retry-after: 1"),
        "{head}"
    );
    assert_eq!(
        app_requests(&app, "/status/204").await,
        5,
        "the app never saw the 6th"
    );
    // Requests through the trusted proxy are counted by the client it forwarded.
    let through_proxy = tokio::net::TcpSocket::new_v4().expect("socket");
    through_proxy
        .bind("127.0.0.2:0".parse().expect("addr"))
        .expect("bind 127.0.0.2");
    let tcp = through_proxy
        .connect(gw.https_addr())
        .await
        .expect("connect");
    let mut tls = e2e::tls_connector()
        .connect(
            rustls::pki_types::ServerName::try_from("localhost").expect("name"),
            tcp,
        )
        .await
        .expect("tls");
    tls.write_all(b"GET /status/204 HTTP/1.1\r\nHost: localhost\r\nX-Forwarded-For: 203.0.113.9\r\nConnection: close\r\n\r\n")
        .await
        .expect("write");
    let mut out = Vec::new();
    tls.read_to_end(&mut out).await.expect("read");
    assert!(
        String::from_utf8_lossy(&out).starts_with("HTTP/1.1 204"),
        "another client behind the proxy: {}",
        String::from_utf8_lossy(&out)
    );
    // A second later the first client has one token again.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(get(&gw, "/status/204", "").await.0, 204);
    assert_eq!(get(&gw, "/status/204", "").await.0, 429);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn requests_in_progress_per_client_are_capped_at_the_configured_number() {
    let app = Stub::start("app");
    let gw = Gateway::start(&config(&app, "{per_client_connections: 3}"));
    let slow: Vec<_> = (0..3)
        .map(|_| {
            let url = gw.https("/sleep/1500");
            tokio::spawn(async move {
                e2e::client_builder()
                    .http1_only()
                    .build()
                    .expect("client")
                    .get(url)
                    .send()
                    .await
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (status, head) = get(&gw, "/status/204", "").await;
    assert_eq!(status, 503, "the 4th request in progress: {head}");
    assert!(head.to_ascii_lowercase().contains("retry-after"), "{head}");
    for s in slow {
        assert_eq!(s.await.expect("join").expect("slow").status(), 200);
    }
    assert_eq!(
        get(&gw, "/status/204", "").await.0,
        204,
        "the slots are free again"
    );
}

#[tokio::test]
async fn realtime_connects_are_rate_limited_per_client_but_polls_are_not() {
    let app = Stub::start("app");
    let gw = Gateway::start(&config(
        &app,
        "{per_client_realtime_connects: {per_second: 0.5, burst: 2}}",
    ));
    let c = client();
    let first = c
        .get(gw.https("/events?topic=a"))
        .send()
        .await
        .expect("sse");
    let second = c
        .get(gw.https("/events?topic=b"))
        .send()
        .await
        .expect("sse");
    assert_eq!(
        (first.status().as_u16(), second.status().as_u16()),
        (200, 200)
    );
    let third = c
        .get(gw.https("/events?topic=c"))
        .send()
        .await
        .expect("sse");
    assert_eq!(third.status(), 429);
    assert_eq!(third.headers()["retry-after"], "2");
    let url = format!("wss://127.0.0.1:{}/ws", gw.ports.https);
    let refused = websocket(&url, None)
        .await
        .expect_err("a WebSocket over the rate");
    assert!(refused.to_string().contains("429"), "{refused}");
    // Long-polls and ordinary requests are not connects.
    for _ in 0..5 {
        let poll = c.get(gw.https("/s?t=a")).send().await.expect("poll");
        assert_eq!(poll.status(), 204);
    }
    assert_eq!(get(&gw, "/status/204", "").await.0, 204);
}

#[tokio::test]
async fn past_the_open_connection_cap_requests_get_503_and_not_before() {
    let app = Stub::start("app");
    let gw = Gateway::start(&config(&app, "{max_connections: 3}"));
    // Three kept-alive connections: at the cap, each still served.
    let mut open = Vec::new();
    for _ in 0..3 {
        let mut tls = e2e::tls_connect(gw.https_addr()).await;
        tls.write_all(b"GET /status/204 HTTP/1.1\r\nHost: localhost\r\n\r\n")
            .await
            .expect("write");
        let mut buf = [0u8; 1024];
        let n = tls.read(&mut buf).await.expect("read");
        assert!(
            buf[..n].starts_with(b"HTTP/1.1 204"),
            "{}",
            String::from_utf8_lossy(&buf[..n])
        );
        open.push(tls);
    }
    let (status, head) = get(&gw, "/status/204", "").await;
    assert_eq!(status, 503, "a 4th connection: {head}");
    // One goes; a new one is served again.
    open.pop();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(get(&gw, "/status/204", "").await.0, 204);
}
