//! Hostile and broken requests. Every case has the same shape: send the raw bytes, check the
//! status, check the app never saw it, then check that a fresh request still works.

use std::time::Duration;

use e2e::{client, raw_tls, Gateway, Scratch, Stub};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn guarded(app: &Stub) -> Gateway {
    Gateway::start(&format!(
        r#"
listen: {{https: "{{https}}"}}
tls: {{state_dir: state}}
limits: {{max_header_bytes: 4096, max_body_bytes: 1000, keepalive_requests: 3}}
upstreams: {{app: {{servers: ["{}"]}}}}
routes: [{{path: /, upstream: app}}]
"#,
        app.addr
    ))
}

async fn still_works(gw: &Gateway) {
    let r = client().get(gw.https("/ping")).send().await.expect("get");
    assert_eq!(r.status(), 200, "a fresh request must still work");
}

async fn app_saw(app: &Stub, path: &str) -> bool {
    app.paths().await.iter().any(|p| p == path)
}

#[tokio::test]
async fn oversized_headers_get_431() {
    let app = Stub::start("app");
    let gw = guarded(&app);
    let big = "a".repeat(5000);
    let req = format!("GET /big HTTP/1.1\r\nHost: x\r\nCookie: {big}\r\nConnection: close\r\n\r\n");
    let out = raw_tls(gw.https_addr(), req.as_bytes(), Duration::from_secs(5)).await;
    assert!(out.starts_with("HTTP/1.1 431"), "{out}");
    assert!(!app_saw(&app, "/big").await);
    still_works(&gw).await;
}

#[tokio::test]
async fn oversized_bodies_get_413() {
    let app = Stub::start("app");
    let gw = guarded(&app);
    let req =
        "POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\nConnection: close\r\n\r\n";
    let out = raw_tls(gw.https_addr(), req.as_bytes(), Duration::from_secs(5)).await;
    assert!(out.starts_with("HTTP/1.1 413"), "{out}");
    assert!(!app_saw(&app, "/upload").await);

    // Chunked: no length up front, so the limit is enforced while the body streams.
    let mut chunked =
        b"POST /chunked HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
            .to_vec();
    for _ in 0..5 {
        chunked.extend_from_slice(b"190\r\n");
        chunked.extend_from_slice(&[b'x'; 400]);
        chunked.extend_from_slice(b"\r\n");
    }
    chunked.extend_from_slice(b"0\r\n\r\n");
    let out = raw_tls(gw.https_addr(), &chunked, Duration::from_secs(5)).await;
    assert!(out.starts_with("HTTP/1.1 413"), "{out}");
    still_works(&gw).await;
}

#[tokio::test]
async fn paths_that_climb_above_the_root_get_400() {
    let app = Stub::start("app");
    let gw = guarded(&app);
    for path in ["/../etc/passwd", "/a/%2e%2e/%2e%2e/etc/passwd"] {
        let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        let out = raw_tls(gw.https_addr(), req.as_bytes(), Duration::from_secs(5)).await;
        assert!(out.starts_with("HTTP/1.1 400"), "{path}: {out}");
    }
    assert!(app.paths().await.is_empty(), "the app saw a climbing path");
    still_works(&gw).await;
}

#[tokio::test]
async fn garbage_instead_of_http_gets_400_and_nothing_reaches_the_app() {
    let app = Stub::start("app");
    let gw = guarded(&app);
    for junk in [
        &b"\x16\x03\x01garbage\r\n\r\n"[..],
        b"GET / HTTP/9.9\r\n\r\n",
        b"GET /x HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 7\r\n\r\nhello",
    ] {
        let out = raw_tls(gw.https_addr(), junk, Duration::from_secs(5)).await;
        assert!(
            out.is_empty() || out.starts_with("HTTP/1.1 400"),
            "{:?}: {out}",
            String::from_utf8_lossy(junk)
        );
    }
    assert!(
        app.paths().await.is_empty(),
        "the app saw a malformed request"
    );
    still_works(&gw).await;
}

/// Send requests one after another on one TLS connection; count the answers before it closes.
#[tokio::test]
async fn a_connection_serves_at_most_keepalive_requests() {
    let app = Stub::start("app");
    let gw = guarded(&app);
    let mut tls = e2e::tls_connect(gw.https_addr()).await;
    let mut answered = 0;
    for _ in 0..5 {
        if tls
            .write_all(b"GET /ping HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .is_err()
        {
            break;
        }
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        let done = loop {
            match tokio::time::timeout(Duration::from_secs(3), tls.read(&mut chunk)).await {
                Ok(Ok(0)) | Ok(Err(_)) | Err(_) => break true,
                Ok(Ok(n)) => {
                    buf.extend_from_slice(&chunk[..n]);
                    if buf.ends_with(b"PONG. EOM.") {
                        break false;
                    }
                }
            }
        };
        if buf.ends_with(b"PONG. EOM.") {
            answered += 1;
        }
        if done {
            break;
        }
    }
    assert_eq!(answered, 3, "keepalive_requests: 3");
}

/// Slowloris: a header block dribbled in byte by byte must not hold a connection past the
/// total deadline, even though every single read is quick.
#[tokio::test]
async fn headers_that_arrive_too_slowly_get_408() {
    let app = Stub::start("app");
    let gw = Gateway::start(&format!(
        r#"
listen: {{https: "{{https}}"}}
tls: {{state_dir: state}}
limits: {{header_timeout_ms: 1000}}
upstreams: {{app: {{servers: ["{}"]}}}}
routes: [{{path: /, upstream: app}}]
"#,
        app.addr
    ));
    let connect = || e2e::tls_connect(gw.https_addr());
    let mut slow = connect().await;
    let started = std::time::Instant::now();
    slow.write_all(b"GET /slow HTTP/1.1\r\nHost: x\r\n")
        .await
        .expect("write");
    let mut got = Vec::new();
    for _ in 0..30 {
        if slow.write_all(b"X-A: b\r\n").await.is_err() {
            break;
        }
        let mut buf = [0u8; 1024];
        match tokio::time::timeout(Duration::from_millis(200), slow.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
            Err(_) => {}
        }
    }
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 408"), "{text:?}");
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "cut after {:?}",
        started.elapsed()
    );
    assert!(!app_saw(&app, "/slow").await);

    // The deadline covers a header block, not the idle time between keep-alive requests.
    let mut patient = connect().await;
    for _ in 0..2 {
        patient
            .write_all(b"GET /ping HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .expect("write");
        let mut buf = [0u8; 1024];
        let n = patient.read(&mut buf).await.expect("read");
        assert!(String::from_utf8_lossy(&buf[..n]).contains("PONG. EOM."));
        tokio::time::sleep(Duration::from_millis(1500)).await;
    }
    still_works(&gw).await;
}

#[tokio::test]
async fn idle_keepalive_connections_are_closed_after_the_configured_time() {
    let app = Stub::start("app");
    let gw = Gateway::start(&format!(
        r#"
listen: {{https: "{{https}}"}}
tls: {{state_dir: state}}
limits: {{keepalive_timeout_s: 1}}
upstreams: {{app: {{servers: ["{}"]}}}}
routes: [{{path: /, upstream: app}}]
"#,
        app.addr
    ));
    let mut conn = e2e::tls_connect(gw.https_addr()).await;
    conn.write_all(b"GET /ping HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("write");
    let mut buf = [0u8; 1024];
    let n = conn.read(&mut buf).await.expect("read");
    let head = String::from_utf8_lossy(&buf[..n]).into_owned();
    assert!(head.contains("PONG. EOM."), "{head}");
    assert!(
        !head.to_ascii_lowercase().contains("connection: close"),
        "{head}"
    );

    // Idle past the limit: the gateway hangs up (with pingora's fixed 60 s it would not).
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(8), conn.read_to_end(&mut rest)).await;
    assert!(
        closed.is_ok(),
        "the idle connection was still open after 8 s"
    );
    assert!(rest.is_empty(), "unexpected bytes: {rest:?}");
    still_works(&gw).await;
}

#[tokio::test]
async fn a_client_that_stops_reading_is_cut_off_after_send_timeout() {
    const BIG: usize = 48 * 1024 * 1024;
    let root = Scratch::new("send-timeout");
    std::fs::write(root.path().join("big.bin"), vec![7u8; BIG]).expect("write");
    let gw = Gateway::start(&format!(
        r#"
listen: {{https: "{{https}}"}}
tls: {{state_dir: state}}
limits: {{send_timeout_ms: 1000}}
routes: [{{path: /, static: {{root: {}}}}}]
"#,
        root.path().display()
    ));

    // The timeout is per write, not per answer: a client that keeps reading gets it all, even
    // when the whole download takes longer than the timeout.
    let r = client()
        .get(gw.https("/big.bin"))
        .send()
        .await
        .expect("get");
    assert_eq!(r.status(), 200);
    assert_eq!(r.bytes().await.expect("body").len(), BIG);

    // A client that asks and then reads nothing: once the socket buffers are full, the
    // gateway's writes wait, and after send_timeout_ms it closes the connection.
    let mut stalled = e2e::tls_connect(gw.https_addr()).await;
    stalled
        .write_all(b"GET /big.bin HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("write");
    tokio::time::sleep(Duration::from_secs(4)).await;
    let mut got = Vec::new();
    let ended = tokio::time::timeout(Duration::from_secs(20), stalled.read_to_end(&mut got)).await;
    assert!(ended.is_ok(), "the stalled connection was never closed");
    assert!(
        got.len() < BIG,
        "the stalled client still got the whole file ({} bytes)",
        got.len()
    );
    assert!(String::from_utf8_lossy(&got[..12.min(got.len())]).starts_with("HTTP/1.1 200"));
    still_works_static(&gw).await;
}

async fn still_works_static(gw: &Gateway) {
    let r = client()
        .get(gw.https("/missing"))
        .send()
        .await
        .expect("get");
    assert_eq!(r.status(), 404, "a fresh request must still be answered");
}
