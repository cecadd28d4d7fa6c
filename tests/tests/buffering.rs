//! Request and response buffering: an app with two workers (Puma threads, Unicorn or php-fpm
//! children) must not be taken down by clients that upload or read slowly. The gateway holds
//! an upload until it is complete, and reads the app's answer ahead of a client that takes it
//! slowly, so the app's workers only ever wait on the gateway, which is fast.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use e2e::{client, client_builder, eventually, raw_tls, Gateway, Stub};
use sha1::{Digest, Sha1};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;

/// The timing tests share two cores: one at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn config(app: &Stub, limits: &str, route: &str) -> String {
    format!(
        r#"
listen: {{https: "{{https}}"}}
tls: {{state_dir: state}}
limits: {{{limits}}}
upstreams: {{app: {{servers: ["{}"], read_timeout_ms: 20000}}}}
routes:
  - {{path: /, upstream: app{route}}}
"#,
        app.addr
    )
}

type Tls = e2e::TlsClient;

async fn connect(gw: &Gateway) -> Tls {
    e2e::tls_connect(gw.https_addr()).await
}

fn pattern(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i * 7 % 251) as u8).collect()
}

fn sha1_hex(data: &[u8]) -> String {
    Sha1::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

async fn posts_seen(app: &Stub) -> usize {
    app.received()
        .await
        .iter()
        .filter(|r| r["method"] == "POST")
        .count()
}

/// `n` clients that each announce a 1000-byte upload and send it 5 bytes every half second
/// (what `slowhttptest -B` does), until `stop` flips. Returns once all have sent their headers.
async fn slow_uploaders(
    gw: &Gateway,
    n: usize,
) -> (watch::Sender<bool>, Vec<tokio::task::JoinHandle<()>>) {
    let (stop_tx, stop_rx) = watch::channel(false);
    let started = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..n {
        let addr = gw.https_addr();
        let started = started.clone();
        let mut stop = stop_rx.clone();
        tasks.push(tokio::spawn(async move {
            let mut tls = e2e::tls_connect(addr).await;
            tls.write_all(
                b"POST /echo/upload HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/octet-stream\r\nContent-Length: 1000\r\n\r\n",
            )
            .await
            .expect("headers");
            started.fetch_add(1, Ordering::Relaxed);
            loop {
                tokio::select! {
                    _ = stop.changed() => return,
                    _ = tokio::time::sleep(Duration::from_millis(500)) => {
                        if tls.write_all(b"xxxxx").await.is_err() {
                            return;
                        }
                    }
                }
            }
        }));
    }
    let all = eventually(Duration::from_secs(20), || {
        let started = started.clone();
        async move { started.load(Ordering::Relaxed) == n }
    })
    .await;
    assert!(
        all,
        "only {} of {n} slow clients got going",
        started.load(Ordering::Relaxed)
    );
    (stop_tx, tasks)
}

/// A normal request that needs an app worker (`/echo` takes one; `/ping` does not).
async fn normal_request(gw: &Gateway, wait: Duration) -> Option<Duration> {
    let t = Instant::now();
    let r = client()
        .get(gw.https("/echo/normal"))
        .timeout(wait)
        .send()
        .await
        .ok()?;
    (r.status() == 200).then(|| t.elapsed())
}

#[tokio::test]
async fn two_hundred_slow_uploads_do_not_starve_an_app_with_two_workers() {
    let _serial = SERIAL.lock().await;
    let app = Stub::start_with("app", &["--workers", "2"]);
    // A patient body deadline, so the slow clients are still there while we look.
    let gw = Gateway::start(&config(&app, "client_body_timeout_ms: 60000", ""));

    let (stop, tasks) = slow_uploaders(&gw, 200).await;
    tokio::time::sleep(Duration::from_millis(500)).await;

    let mut times = Vec::new();
    for _ in 0..10 {
        times.push(normal_request(&gw, Duration::from_secs(5)).await);
    }
    let fast = times
        .iter()
        .filter(|t| t.is_some_and(|t| t < Duration::from_secs(1)))
        .count();
    eprintln!("normal requests during 200 slow uploads: {times:?}");
    assert!(
        fast >= 9,
        "normal requests during 200 slow uploads: {times:?}"
    );
    assert_eq!(
        posts_seen(&app).await,
        0,
        "the app was handed an upload that had not finished arriving"
    );

    let _ = stop.send(true);
    for t in tasks {
        let _ = t.await;
    }
}

/// The same attack with buffering off: the proof that the protection above is real.
#[tokio::test]
async fn without_request_buffering_the_same_slow_uploads_starve_the_app() {
    let _serial = SERIAL.lock().await;
    let app = Stub::start_with("app", &["--workers", "2"]);
    let gw = Gateway::start(&config(&app, "", ", request_buffering: false"));

    let (stop, tasks) = slow_uploaders(&gw, 200).await;
    // The uploads reach the app as soon as their headers do, and take both workers.
    assert!(
        eventually(Duration::from_secs(10), || async {
            posts_seen(&app).await >= 2
        })
        .await,
        "the unbuffered uploads never reached the app"
    );

    let answered = normal_request(&gw, Duration::from_secs(3)).await;
    assert_eq!(
        answered, None,
        "a normal request was answered while slow uploads held both workers"
    );

    let _ = stop.send(true);
    for t in tasks {
        let _ = t.await;
    }
}

#[tokio::test]
async fn a_body_over_the_limit_is_refused_and_never_reaches_the_app() {
    let app = Stub::start("app");
    let gw = Gateway::start(&config(&app, "max_body_bytes: 100000", ""));

    // Chunked: no length up front, so it is counted as it is held.
    let mut req =
        b"POST /echo/chunked HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    for _ in 0..15 {
        req.extend_from_slice(b"2710\r\n");
        req.extend_from_slice(&[b'x'; 10_000]);
        req.extend_from_slice(b"\r\n");
    }
    req.extend_from_slice(b"0\r\n\r\n");
    let out = raw_tls(gw.https_addr(), &req, Duration::from_secs(5)).await;
    assert!(out.starts_with("HTTP/1.1 413"), "{out}");

    // Announced: refused before any of it is read.
    let out = raw_tls(
        gw.https_addr(),
        b"POST /echo/announced HTTP/1.1\r\nHost: x\r\nContent-Length: 100001\r\n\r\n",
        Duration::from_secs(5),
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 413"), "{out}");

    // HTTP/2 without a length, from a real client.
    let chunks = (0..15).map(|_| Ok::<_, std::io::Error>(vec![b'y'; 10_000]));
    let r = client()
        .post(gw.https("/echo/h2"))
        .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
            chunks,
        )))
        .send()
        .await;
    if let Ok(r) = r {
        assert_eq!(r.status(), 413);
    }

    assert_eq!(
        posts_seen(&app).await,
        0,
        "an oversized body reached the app"
    );
    let ok = client()
        .post(gw.https("/echo/small"))
        .body(vec![1u8; 99_000])
        .send()
        .await
        .expect("post");
    assert_eq!(ok.status(), 200);
}

#[tokio::test]
async fn a_body_that_stops_arriving_gets_408_and_a_steady_slow_one_gets_through() {
    let app = Stub::start("app");
    let gw = Gateway::start(&config(
        &app,
        "client_body_timeout_ms: 1000, client_body_min_rate: 500",
        "",
    ));

    let started = Instant::now();
    let out = raw_tls(
        gw.https_addr(),
        b"POST /echo/stalled HTTP/1.1\r\nHost: x\r\nContent-Length: 10000\r\n\r\nonly the start",
        Duration::from_secs(6),
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 408"), "{out}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "cut after {:?}",
        started.elapsed()
    );
    assert_eq!(
        posts_seen(&app).await,
        0,
        "an incomplete body reached the app"
    );

    // 2,000 bytes a second for 3 s: longer than the 1 s window, but every window holds more
    // than the 500 bytes the minimum rate needs.
    let mut tls = connect(&gw).await;
    tls.write_all(b"POST /echo/steady HTTP/1.1\r\nHost: x\r\nContent-Length: 6000\r\n\r\n")
        .await
        .expect("headers");
    for _ in 0..30 {
        tls.write_all(&[b'z'; 200]).await.expect("body");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut buf = vec![0u8; 16 * 1024];
    let n = tokio::time::timeout(Duration::from_secs(5), tls.read(&mut buf))
        .await
        .expect("an answer")
        .expect("read");
    let text = String::from_utf8_lossy(&buf[..n]);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.contains("\"body_len\":6000"), "{text}");
}

#[tokio::test]
async fn large_and_chunked_uploads_arrive_intact_with_a_content_length() {
    let app = Stub::start("app");
    let gw = Gateway::start(&config(&app, "client_body_buffer_bytes: 65536", ""));

    // 6 MiB: nearly all of it held in a temporary file.
    let big = pattern(6 * 1024 * 1024);
    let r = client()
        .put(gw.https("/echo/big"))
        .body(big.clone())
        .send()
        .await
        .expect("put");
    assert_eq!(r.status(), 200);
    let echo: serde_json::Value = r.json().await.expect("json");
    assert_eq!(echo["body_len"], big.len());
    assert_eq!(echo["body_sha1"], sha1_hex(&big));
    assert_eq!(echo["headers"]["content-length"], big.len().to_string());
    // Held requests carry the same forwarding headers as streamed ones.
    assert_eq!(echo["headers"]["x-forwarded-proto"], "https");
    assert_eq!(echo["headers"]["x-real-ip"], "127.0.0.1");

    // Chunked over HTTP/1.1 and a length-less HTTP/2 stream: the app gets a Content-Length,
    // as nginx gives it, and no chunked framing.
    let body = pattern(300_000);
    for (name, c) in [
        (
            "h1-chunked",
            client_builder().http1_only().build().expect("client"),
        ),
        ("h2-stream", client()),
    ] {
        let pieces: Vec<Result<Vec<u8>, std::io::Error>> =
            body.chunks(7_000).map(|c| Ok(c.to_vec())).collect();
        let r = c
            .post(gw.https(&format!("/echo/{name}")))
            .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
                pieces,
            )))
            .send()
            .await
            .expect("post");
        assert_eq!(r.status(), 200, "{name}");
        let echo: serde_json::Value = r.json().await.expect("json");
        assert_eq!(echo["body_sha1"], sha1_hex(&body), "{name}");
        assert_eq!(echo["headers"]["content-length"], "300000", "{name}");
        assert!(
            echo["headers"].get("transfer-encoding").is_none(),
            "{name}: {}",
            echo["headers"]
        );
    }

    // Spilled bodies leave nothing behind in the temporary directory.
    let tmp = gw.dir.path().join("state/tmp");
    assert!(tmp.is_dir(), "{} was not created", tmp.display());
    let left: Vec<_> = std::fs::read_dir(&tmp).expect("read tmp").collect();
    assert!(left.is_empty(), "files left in {}: {left:?}", tmp.display());
}

/// `Expect: 100-continue`: the gateway says "go on" itself, since the app is asked only once the
/// body is complete.
#[tokio::test]
async fn expect_100_continue_is_answered_by_the_gateway() {
    let app = Stub::start("app");
    let gw = Gateway::start(&config(&app, "", ""));
    let mut tls = connect(&gw).await;
    tls.write_all(
        b"POST /echo/expect HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n",
    )
    .await
    .expect("headers");
    let mut buf = vec![0u8; 16 * 1024];
    let n = tokio::time::timeout(Duration::from_secs(3), tls.read(&mut buf))
        .await
        .expect("100 Continue in time")
        .expect("read");
    let interim = String::from_utf8_lossy(&buf[..n]).to_string();
    assert!(interim.starts_with("HTTP/1.1 100"), "{interim}");
    tls.write_all(b"hello").await.expect("body");
    let n = tokio::time::timeout(Duration::from_secs(3), tls.read(&mut buf))
        .await
        .expect("answer in time")
        .expect("read");
    let text = String::from_utf8_lossy(&buf[..n]);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.contains("\"body_len\":5"), "{text}");
    assert!(
        !text.contains("\"expect\""),
        "the app was sent Expect: {text}"
    );
}

/// 48 MiB: more than the loopback socket buffers between the app, the gateway and the client
/// hold, so an unbuffered answer keeps the app's worker writing until the client reads.
const LARGE: usize = 48 * 1024 * 1024;

/// With one app worker: a client asks for `path` and reads only its first 64 KiB. Returns the
/// head it got and whether a second request was answered within 3 s meanwhile.
async fn second_request_while_a_client_reads_slowly(route: &str, path: &str) -> (String, bool) {
    let app = Stub::start_with("app", &["--workers", "1"]);
    let gw = Gateway::start(&config(&app, "", route));
    let (slow, head) = e2e::slow_reader(gw.https_addr(), path).await;
    let answered = normal_request(&gw, Duration::from_secs(3)).await.is_some();
    drop(slow);
    (head, answered)
}

#[tokio::test]
async fn response_buffering_frees_the_app_worker_from_a_slow_reader() {
    let _serial = SERIAL.lock().await;
    let path = format!("/bytes/{LARGE}");

    let (head, answered) =
        second_request_while_a_client_reads_slowly(", response_buffering: true", &path).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        answered,
        "the app's only worker was still busy feeding a slow client through a buffering route"
    );

    let (_, answered) = second_request_while_a_client_reads_slowly("", &path).await;
    assert!(
        !answered,
        "without response buffering the slow reader should hold the app's only worker"
    );

    // A buffered answer larger than the memory part arrives whole.
    let app = Stub::start("app");
    let gw = Gateway::start(&config(
        &app,
        "response_buffer_bytes: 65536",
        ", response_buffering: true",
    ));
    let body = client()
        .get(gw.https("/bytes/3000000"))
        .send()
        .await
        .expect("get")
        .bytes()
        .await
        .expect("body");
    assert_eq!(body.len(), 3_000_000);
    assert!(body.iter().enumerate().all(|(i, &b)| b == (i % 251) as u8));
}

#[tokio::test]
async fn event_streams_and_x_accel_buffering_no_are_never_buffered() {
    let _serial = SERIAL.lock().await;
    let buffered = ", response_buffering: true";

    let (head, answered) = second_request_while_a_client_reads_slowly(
        buffered,
        &format!("/bytes/{LARGE}?x_accel_buffering=no"),
    )
    .await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        !head.to_ascii_lowercase().contains("x-accel-buffering"),
        "the app's X-Accel-Buffering reached the client: {head}"
    );
    assert!(
        !answered,
        "an answer marked X-Accel-Buffering: no was buffered"
    );

    let (head, answered) = second_request_while_a_client_reads_slowly(
        buffered,
        &format!("/bytes/{LARGE}?content_type=text%2Fevent-stream"),
    )
    .await;
    assert!(head.contains("text/event-stream"), "{head}");
    assert!(!answered, "a text/event-stream answer was buffered");

    // And events on a buffering route still arrive as they are sent.
    let app = Stub::start("app");
    let gw = Gateway::start(&config(&app, "", buffered));
    let started = Instant::now();
    let mut r = client()
        .get(gw.https("/stream?n=4&interval_ms=400&format=sse"))
        .send()
        .await
        .expect("get");
    let first = r.chunk().await.expect("read").expect("a first event");
    let first_at = started.elapsed();
    assert!(String::from_utf8_lossy(&first).contains("tick 1"));
    while r.chunk().await.expect("read").is_some() {}
    assert!(
        first_at + Duration::from_millis(800) < started.elapsed(),
        "first event after {first_at:?}, stream done after {:?}",
        started.elapsed()
    );
}

/// A held body can be sent again: an upload whose first server refuses the connection goes to
/// the next one, whatever its method (pingora alone retries only what it has not streamed).
#[tokio::test]
async fn a_held_upload_goes_to_another_server_when_a_connect_fails() {
    let live = Stub::start("live");
    let dead = format!("127.0.0.1:{}", e2e::free_port());
    let gw = Gateway::start(&format!(
        r#"
listen: {{https: "{{https}}"}}
tls: {{state_dir: state}}
upstreams: {{app: {{servers: ["{dead}", "{}"], connect_timeout_ms: 1000}}}}
routes: [{{path: /, upstream: app}}]
"#,
        live.addr
    ));
    let body = pattern(200_000);
    for _ in 0..4 {
        let r = client()
            .post(gw.https("/echo/retry"))
            .body(body.clone())
            .send()
            .await
            .expect("post");
        assert_eq!(r.status(), 200);
        let echo: serde_json::Value = r.json().await.expect("json");
        assert_eq!(echo["id"], "live");
        assert_eq!(echo["body_sha1"], sha1_hex(&body));
    }
    assert_eq!(posts_seen(&live).await, 4);
    assert!(
        gw.proc.logs().contains("connect failed"),
        "no request met the dead server first"
    );
}
