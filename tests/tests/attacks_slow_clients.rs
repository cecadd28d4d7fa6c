//! Slow clients (slowloris and its cousins): a client that sends its request a few bytes at a
//! time must not hold a connection (or a temporary file) past the configured deadlines, on any
//! listener. Every case has the same shape: send the raw bytes, check the connection is cut
//! (408 or a close) in time, check the app never saw the request, then check that a fresh
//! request still works.

use std::time::{Duration, Instant};

use e2e::{client, Gateway, Stub};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// The timing tests share two cores: one at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The header deadline in these tests, and how late a cut may come on a loaded machine.
const HEADER_TIMEOUT_MS: u64 = 1000;
const CUT_BY: Duration = Duration::from_secs(5);

/// All three listeners, a short header deadline, an SSE route and the app behind the rest.
fn gateway(app: &Stub, limits: &str) -> Gateway {
    Gateway::start(&format!(
        r#"
listen: {{https: "{{https}}", http: "{{http}}", admin: "{{admin}}"}}
tls: {{state_dir: state}}
limits: {{header_timeout_ms: {HEADER_TIMEOUT_MS}{limits}}}
realtime: {{sse: {{heartbeat_ms: 1000}}}}
upstreams: {{app: {{servers: ["{}"]}}}}
routes:
  - {{path: /events, realtime: sse}}
  - {{path: /, upstream: app}}
"#,
        app.addr
    ))
}

async fn app_saw(app: &Stub, path: &str) -> bool {
    app.paths().await.iter().any(|p| p.starts_with(path))
}

async fn still_works(gw: &Gateway) {
    let r = client().get(gw.https("/ping")).send().await.expect("get");
    assert_eq!(r.status(), 200, "a fresh request must still work");
}

/// What a slowloris sees: `first`, then one more header line every 200 ms (each write is
/// quick, so no per-read timeout ever fires), until the gateway closes the connection or
/// `give_up` passes. Returns what the gateway answered, how long it took, and whether the
/// connection was closed.
async fn dribble<S: AsyncRead + AsyncWrite + Unpin>(
    mut conn: S,
    first: &[u8],
    give_up: Duration,
) -> (String, Duration, bool) {
    let started = Instant::now();
    let mut got = Vec::new();
    let mut closed = false;
    if conn.write_all(first).await.is_err() {
        return (String::new(), started.elapsed(), true);
    }
    while started.elapsed() < give_up {
        let mut buf = [0u8; 1024];
        match tokio::time::timeout(Duration::from_millis(200), conn.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => {
                closed = true;
                break;
            }
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
            Err(_) => {}
        }
        if conn.write_all(b"X-A: b\r\n").await.is_err() {
            closed = true;
            break;
        }
    }
    (
        String::from_utf8_lossy(&got).into_owned(),
        started.elapsed(),
        closed,
    )
}

/// The slowloris was cut by the header deadline: a 408 (nothing else), in time.
fn assert_cut(listener: &str, (answer, took, closed): &(String, Duration, bool)) {
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 408"),
        "{listener}: {answer:?}"
    );
    assert!(
        *closed || answer.starts_with("HTTP/1.1 408"),
        "{listener}: the slow client was still connected after {took:?}"
    );
    assert!(*took < CUT_BY, "{listener}: cut after {took:?}");
}

/// Cut in time, and with a 408 (part of a head had arrived).
fn assert_408(listener: &str, cut: &(String, Duration, bool)) {
    assert_cut(listener, cut);
    assert!(cut.0.starts_with("HTTP/1.1 408"), "{listener}: {:?}", cut.0);
}

async fn tcp(port: u16) -> tokio::net::TcpStream {
    tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect")
}

const SLOW_HEAD: &[u8] = b"GET /slow HTTP/1.1\r\nHost: localhost\r\n";

/// pingora's parser skips blank lines before a request line (RFC 9112 section 2.2); the
/// deadline took `\r\n\r\n` for the end of a header block and never ran for what followed.
#[tokio::test]
async fn blank_lines_before_the_request_line_do_not_lift_the_header_deadline() {
    let _one = SERIAL.lock().await;
    let app = Stub::start("app");
    let gw = gateway(&app, "");
    for prefix in [&b"\r\n\r\n"[..], b"\n\n", b"\r\n\n\r\n"] {
        let mut first = prefix.to_vec();
        first.extend_from_slice(SLOW_HEAD);
        let conn = e2e::tls_connect(gw.https_addr()).await;
        let cut = dribble(conn, &first, Duration::from_secs(8)).await;
        assert_408(&format!("https after {prefix:?}"), &cut);
    }
    assert!(!app_saw(&app, "/slow").await, "the app saw a slow request");
    still_works(&gw).await;
}

/// A request whose lines end in a bare LF (which pingora accepts) is answered, and its answer,
/// a stream lasting well past the header deadline, is never interrupted by a 408.
#[tokio::test]
async fn a_bare_lf_request_is_answered_and_its_stream_gets_no_408() {
    let _one = SERIAL.lock().await;
    let app = Stub::start("app");
    let gw = gateway(&app, "");
    let mut conn = e2e::tls_connect(gw.https_addr()).await;
    conn.write_all(b"GET /events?topic=lf HTTP/1.1\nHost: localhost\n\n")
        .await
        .expect("write");
    let started = Instant::now();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    // Three header deadlines long.
    while started.elapsed() < Duration::from_millis(3 * HEADER_TIMEOUT_MS) {
        match tokio::time::timeout(Duration::from_millis(500), conn.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
            Err(_) => {}
        }
    }
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.contains("text/event-stream"), "not the stream: {text}");
    assert!(
        !text.contains("408"),
        "a 408 landed in the middle of the answer: {text}"
    );
    assert!(
        started.elapsed() >= Duration::from_millis(3 * HEADER_TIMEOUT_MS),
        "the stream was cut after {:?}: {text}",
        started.elapsed()
    );

    // A bare-LF request on a kept-alive connection to the app: answered, then the connection
    // stays usable (the next request's deadline starts with its own first byte).
    let mut conn = e2e::tls_connect(gw.https_addr()).await;
    for _ in 0..2 {
        conn.write_all(b"GET /ping HTTP/1.1\nHost: localhost\n\n")
            .await
            .expect("write");
        let n = tokio::time::timeout(Duration::from_secs(5), conn.read(&mut buf))
            .await
            .expect("an answer")
            .expect("read");
        let text = String::from_utf8_lossy(&buf[..n]);
        assert!(text.contains("PONG. EOM."), "{text}");
        tokio::time::sleep(Duration::from_millis(HEADER_TIMEOUT_MS + 500)).await;
    }
    still_works(&gw).await;
}

/// Slowloris on the HTTPS front door (HTTP/1.1): five connections dribbling header lines are
/// all cut with a 408 by the header deadline, while a normal request on a fresh connection is
/// answered.
#[tokio::test]
async fn slowloris_on_the_https_listener_is_cut_at_the_header_deadline() {
    let _one = SERIAL.lock().await;
    let app = Stub::start("app");
    let gw = gateway(&app, "");
    let addr = gw.https_addr();
    let slow: Vec<_> = (0..5)
        .map(|_| {
            tokio::spawn(async move {
                let conn = e2e::tls_connect(addr).await;
                dribble(conn, SLOW_HEAD, Duration::from_secs(8)).await
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    still_works(&gw).await;
    for s in slow {
        let cut = s.await.expect("slow client");
        assert_408("https", &cut);
    }
    assert!(!app_saw(&app, "/slow").await, "the app saw a slow request");
    still_works(&gw).await;
}

/// The deadline is re-armed for every request of a kept-alive connection: a client that got
/// one answer, waits, and then dribbles its next head is cut like a fresh one.
#[tokio::test]
async fn slowloris_after_an_answered_request_on_a_kept_alive_connection_is_cut() {
    let _one = SERIAL.lock().await;
    let app = Stub::start("app");
    let gw = gateway(&app, "");
    for path in ["/ping", "/echo/with-a-body"] {
        let mut conn = e2e::tls_connect(gw.https_addr()).await;
        let first = if path == "/ping" {
            "GET /ping HTTP/1.1\r\nHost: localhost\r\n\r\n".to_string()
        } else {
            format!("POST {path} HTTP/1.1\r\nHost: localhost\r\nContent-Length: 5\r\n\r\nhello")
        };
        conn.write_all(first.as_bytes()).await.expect("write");
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        let started = Instant::now();
        // The whole first answer (both end their body with a JSON or text line).
        while !(got.ends_with(b"EOM.") || got.ends_with(b"}")) && started.elapsed() < CUT_BY {
            match tokio::time::timeout(Duration::from_millis(500), conn.read(&mut buf)).await {
                Ok(Ok(n)) if n > 0 => got.extend_from_slice(&buf[..n]),
                Ok(_) => panic!(
                    "{path}: closed after the first answer: {:?}",
                    String::from_utf8_lossy(&got)
                ),
                Err(_) => {}
            }
        }
        assert!(
            got.starts_with(b"HTTP/1.1 200"),
            "{path}: {:?}",
            String::from_utf8_lossy(&got)
        );
        // Idle between requests is the keep-alive timeout's business, not the deadline's.
        tokio::time::sleep(Duration::from_millis(HEADER_TIMEOUT_MS + 500)).await;
        let cut = dribble(conn, SLOW_HEAD, Duration::from_secs(8)).await;
        assert_408(&format!("https after {path}"), &cut);
    }
    assert!(!app_saw(&app, "/slow").await, "the app saw a slow request");
    still_works(&gw).await;
}

/// Slowloris on the plain-HTTP listener that redirects to HTTPS: it had no header deadline at
/// all (pingora's 60 s per read only).
#[tokio::test]
async fn slowloris_on_the_http_redirect_listener_is_cut_at_the_header_deadline() {
    let _one = SERIAL.lock().await;
    let app = Stub::start("app");
    let gw = gateway(&app, "");
    let port = gw.ports.http;
    let slow: Vec<_> = (0..5)
        .map(|_| {
            tokio::spawn(async move {
                dribble(tcp(port).await, SLOW_HEAD, Duration::from_secs(8)).await
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let r = client().get(gw.http("/fresh")).send().await.expect("get");
    assert_eq!(r.status(), 308, "a fresh request is redirected");
    for s in slow {
        assert_cut("http", &s.await.expect("slow client"));
    }
    let r = client().get(gw.http("/fresh")).send().await.expect("get");
    assert_eq!(r.status(), 308);
}

/// Slowloris on the admin listener (health checks and the publish API): it had no header
/// deadline either.
#[tokio::test]
async fn slowloris_on_the_admin_listener_is_cut_at_the_header_deadline() {
    let _one = SERIAL.lock().await;
    let app = Stub::start("app");
    let gw = gateway(&app, "");
    let port = gw.ports.admin;
    let slow: Vec<_> = (0..5)
        .map(|_| {
            tokio::spawn(async move {
                dribble(tcp(port).await, SLOW_HEAD, Duration::from_secs(8)).await
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let r = client()
        .get(gw.admin("/healthz"))
        .send()
        .await
        .expect("get");
    assert_eq!(r.status(), 200, "health is still answered");
    for s in slow {
        assert_cut("admin", &s.await.expect("slow client"));
    }
    let r = client()
        .get(gw.admin("/healthz"))
        .send()
        .await
        .expect("get");
    assert_eq!(r.status(), 200);
}

/// A connection that opens and sends nothing is closed at the header deadline on every
/// listener, without an answer (nginx's `client_header_timeout` covers the wait for the first
/// request too; pingora alone waits 60 s).
#[tokio::test]
async fn a_connection_that_never_sends_a_request_is_closed_at_the_header_deadline() {
    let _one = SERIAL.lock().await;
    let app = Stub::start("app");
    let gw = gateway(&app, "");
    async fn wait_close<S: AsyncRead + Unpin>(mut conn: S, listener: &str) {
        let started = Instant::now();
        let mut got = Vec::new();
        let r = tokio::time::timeout(CUT_BY, conn.read_to_end(&mut got)).await;
        assert!(
            r.is_ok(),
            "{listener}: still open after {:?}",
            started.elapsed()
        );
        assert!(
            got.is_empty(),
            "{listener}: {:?}",
            String::from_utf8_lossy(&got)
        );
    }
    tokio::join!(
        async { wait_close(e2e::tls_connect(gw.https_addr()).await, "https").await },
        async { wait_close(tcp(gw.ports.http).await, "http").await },
        async { wait_close(tcp(gw.ports.admin).await, "admin").await },
    );
    still_works(&gw).await;
}

/// An upload that starts fast and then stops: the old rule (one more second per
/// `client_body_min_rate` bytes received) let 100 kB sent at once buy 200 s of silence while
/// the gateway held the connection and the temporary file. Now the body must keep arriving at
/// the minimum rate over every `client_body_timeout_ms` window.
#[tokio::test]
async fn a_fast_start_buys_no_time_for_an_upload_that_then_stalls() {
    let _one = SERIAL.lock().await;
    let app = Stub::start("app");
    let gw = gateway(
        &app,
        ", client_body_timeout_ms: 1000, client_body_min_rate: 500, client_body_buffer_bytes: 16384",
    );
    let mut conn = e2e::tls_connect(gw.https_addr()).await;
    conn.write_all(b"POST /upload HTTP/1.1\r\nHost: localhost\r\nContent-Length: 1000000\r\n\r\n")
        .await
        .expect("headers");
    conn.write_all(&vec![b'u'; 100_000]).await.expect("body");
    conn.flush().await.expect("flush");
    let stalled = Instant::now();
    let mut got = Vec::new();
    let _ = tokio::time::timeout(CUT_BY, conn.read_to_end(&mut got)).await;
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 408"), "{text:?}");
    assert!(
        stalled.elapsed() < Duration::from_secs(4),
        "cut after {:?}",
        stalled.elapsed()
    );
    assert!(
        !app_saw(&app, "/upload").await,
        "the app saw an incomplete body"
    );

    // An upload that keeps the rate (2,000 bytes a second for 3 s) still gets through.
    let mut conn = e2e::tls_connect(gw.https_addr()).await;
    conn.write_all(
        b"POST /echo/steady HTTP/1.1\r\nHost: localhost\r\nContent-Length: 6000\r\n\r\n",
    )
    .await
    .expect("headers");
    for _ in 0..30 {
        conn.write_all(&[b'z'; 200]).await.expect("body");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut buf = vec![0u8; 16 * 1024];
    let n = tokio::time::timeout(Duration::from_secs(5), conn.read(&mut buf))
        .await
        .expect("an answer")
        .expect("read");
    let text = String::from_utf8_lossy(&buf[..n]);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.contains("\"body_len\":6000"), "{text}");
    still_works(&gw).await;
}
