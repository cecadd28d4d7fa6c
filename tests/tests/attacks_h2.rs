//! HTTP/2 attacks on the front door (issue 15). Each case: open an HTTP/2 connection over TLS
//! (ALPN h2), send the frames an attacker would, check how the gateway answers or closes, check
//! the app did not pay for it (backend-stub's `/__log`), then check a fresh request still works.
//! Frames are written by hand (`e2e::h2`); answers that must be decoded go through the `h2`
//! crate's client.

use std::time::{Duration, Instant};

use e2e::h2 as raw;
use e2e::h2::Read;
use e2e::{client, Gateway, Stub};

/// A gateway in front of `app` with short deadlines, so each case runs in seconds.
fn gateway(app: &Stub, limits: &str) -> Gateway {
    Gateway::start(&format!(
        r#"
listen: {{https: "{{https}}"}}
tls: {{state_dir: state}}
limits: {{{limits}}}
upstreams: {{app: {{servers: ["{}"]}}}}
realtime: {{policy: {{client_publish: [news]}}}}
routes:
  - {{path: /p, realtime: longpoll}}
  - {{path: /, upstream: app}}
"#,
        app.addr
    ))
}

/// A fresh HTTP/2 request still gets its answer.
async fn still_works(gw: &Gateway) {
    let mut h2 = raw::client(gw.https_addr()).await;
    let req = raw::request("GET", "/ping").body(()).expect("request");
    let (resp, _) = h2.send_request(req, true).expect("send");
    let resp = tokio::time::timeout(Duration::from_secs(10), resp)
        .await
        .expect("a fresh request is answered in time")
        .expect("answer");
    assert_eq!(resp.status(), 200, "a fresh HTTP/2 request must still work");
    let r = client().get(gw.https("/ping")).send().await.expect("get");
    assert_eq!(r.status(), 200, "a fresh request must still work");
}

async fn app_saw(app: &Stub, path: &str) -> usize {
    app.paths().await.iter().filter(|p| *p == path).count()
}

/// The data of every DATA frame on `stream`, as text.
fn body_text(frames: &[raw::Frame], stream: u32) -> String {
    let bytes: Vec<u8> = frames
        .iter()
        .filter(|f| f.kind == raw::DATA && f.stream == stream)
        .flat_map(|f| f.payload.clone())
        .collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

// ---------------------------------------------------------------------------------------------
// 1. Connections that never start, or sit idle.

/// A client negotiates h2 and then sends nothing, not even the preface: the connection is
/// closed after `header_timeout_ms`, as an HTTP/1.1 client that sends no headers gets its 408.
#[tokio::test]
async fn h2_connection_that_never_sends_its_preface_is_closed() {
    let app = Stub::start("app");
    let gw = gateway(&app, "header_timeout_ms: 1500");
    let mut tls = raw::connect(gw.https_addr()).await;
    let start = Instant::now();
    let (_, end) = raw::read_until_closed(&mut tls, Duration::from_secs(8)).await;
    assert!(
        matches!(end, Some(Read::Closed) | Some(Read::Frame(_))),
        "a connection without a preface is still open after {:?}",
        start.elapsed()
    );
    assert!(
        start.elapsed() >= Duration::from_millis(1000),
        "closed too early"
    );
    still_works(&gw).await;
}

/// After its request is answered the client keeps the connection and sends nothing: after
/// `keepalive_timeout_s` it gets a GOAWAY (NO_ERROR, last stream 1) and the connection closes,
/// as nginx does with `keepalive_timeout` for HTTP/2.
#[tokio::test]
async fn h2_connection_idle_after_a_request_gets_goaway() {
    let app = Stub::start("app");
    let gw = gateway(&app, "keepalive_timeout_s: 2");
    let mut tls = raw::connect(gw.https_addr()).await;
    let mut out = raw::opening();
    out.extend(raw::get(1, "/ping"));
    assert!(raw::send(&mut tls, &out).await);
    let start = Instant::now();
    let (frames, end) = raw::read_until_closed(&mut tls, Duration::from_secs(10)).await;
    assert!(
        body_text(&frames, 1).contains("PONG"),
        "the request is answered first: {frames:?}"
    );
    let Some(Read::Frame(goaway)) = end else {
        panic!("no GOAWAY after {:?} idle: {end:?}", start.elapsed());
    };
    assert_eq!(goaway.error_code(), Some(0), "GOAWAY with NO_ERROR");
    assert_eq!(goaway.payload[..4], [0, 0, 0, 1], "last stream id 1");
    assert!(
        start.elapsed() >= Duration::from_millis(1500),
        "GOAWAY too early"
    );
    assert!(
        matches!(
            raw::read_frame(&mut tls, Duration::from_secs(5)).await,
            Read::Closed
        ),
        "the connection closes after the GOAWAY"
    );
    assert_eq!(app_saw(&app, "/ping").await, 1);
    still_works(&gw).await;
}

/// A client sends the preface and the first part of a header block (HEADERS without
/// END_HEADERS), then nothing: no request ever starts, and the connection is closed within the
/// header deadline instead of being held open.
#[tokio::test]
async fn h2_unfinished_header_block_does_not_hold_the_connection() {
    let app = Stub::start("app");
    let gw = gateway(&app, "header_timeout_ms: 1500");
    let mut tls = raw::connect(gw.https_addr()).await;
    let mut out = raw::opening();
    out.extend(raw::frame(
        raw::HEADERS,
        0,
        1,
        &raw::request_block("GET", "/never", &[]),
    ));
    assert!(raw::send(&mut tls, &out).await);
    let (_, end) = raw::read_until_closed(&mut tls, Duration::from_secs(8)).await;
    assert!(
        end.is_some(),
        "an unfinished header block holds the connection"
    );
    assert_eq!(app_saw(&app, "/never").await, 0);
    still_works(&gw).await;
}

/// `keepalive_requests` bounds an HTTP/2 connection too (as nginx since 1.19.7): after the
/// third request the client is told to go away (a graceful GOAWAY, then the final one with last
/// stream 5 once it answers the PING), the three are answered, and a request on a new
/// connection works.
#[tokio::test]
async fn h2_connection_serves_at_most_keepalive_requests() {
    let app = Stub::start("app");
    let gw = gateway(&app, "keepalive_requests: 3");
    let mut tls = raw::connect(gw.https_addr()).await;
    assert!(raw::send(&mut tls, &raw::opening()).await);
    let mut goaways = Vec::new();
    let mut closed = false;
    for id in [1u32, 3, 5, 7, 9] {
        // A client stops opening streams once it is told to go away.
        if !goaways.is_empty() || !raw::send(&mut tls, &raw::get(id, "/ping")).await {
            break;
        }
        let until = Instant::now() + Duration::from_secs(2);
        while Instant::now() < until {
            match raw::read_frame(&mut tls, Duration::from_millis(500)).await {
                Read::Frame(f) if f.kind == raw::PING && f.flags & raw::ACK == 0 => {
                    let _ =
                        raw::send(&mut tls, &raw::frame(raw::PING, raw::ACK, 0, &f.payload)).await;
                }
                Read::Frame(f) if f.kind == raw::GOAWAY => goaways.push(f),
                Read::Frame(f) if f.stream == id && f.flags & raw::END_STREAM != 0 => break,
                Read::Frame(_) => {}
                Read::Closed => {
                    closed = true;
                    break;
                }
                Read::Silent => {}
            }
        }
    }
    // Answer the server's PING until it sends the final GOAWAY and closes.
    let until = Instant::now() + Duration::from_secs(5);
    while !closed && Instant::now() < until {
        match raw::read_frame(&mut tls, Duration::from_secs(1)).await {
            Read::Frame(f) if f.kind == raw::PING && f.flags & raw::ACK == 0 => {
                let _ = raw::send(&mut tls, &raw::frame(raw::PING, raw::ACK, 0, &f.payload)).await;
            }
            Read::Frame(f) if f.kind == raw::GOAWAY => goaways.push(f),
            Read::Frame(_) | Read::Silent => {}
            Read::Closed => closed = true,
        }
    }
    let last = goaways
        .last()
        .expect("a GOAWAY after keepalive_requests streams");
    assert_eq!(last.error_code(), Some(0), "GOAWAY with NO_ERROR");
    assert_eq!(
        last.payload[..4],
        [0, 0, 0, 5],
        "last stream id 5: {goaways:?}"
    );
    assert!(closed, "the connection closes once its streams are done");
    assert_eq!(app_saw(&app, "/ping").await, 3, "three requests served");
    still_works(&gw).await;
}

// ---------------------------------------------------------------------------------------------
// 2. A request body that stalls on a realtime route.

/// A publisher POSTs to the long-poll publish route over HTTP/2, announces 100 bytes, sends
/// 10 and stops: it gets a 408 after `client_body_timeout_ms`, as a held body on any other route
/// does, and its stream is freed.
#[tokio::test]
async fn h2_stalled_body_on_a_realtime_route_gets_408() {
    let app = Stub::start("app");
    let gw = gateway(
        &app,
        "client_body_timeout_ms: 1500, client_body_min_rate: 0",
    );
    let mut h2 = raw::client(gw.https_addr()).await;
    let req = raw::request("POST", "/p?t=news")
        .header("content-length", "100")
        .body(())
        .expect("request");
    let (resp, mut body) = h2.send_request(req, false).expect("send");
    body.send_data(bytes::Bytes::from_static(b"0123456789"), false)
        .expect("first bytes");
    let start = Instant::now();
    let resp = tokio::time::timeout(Duration::from_secs(10), resp)
        .await
        .expect("a stalled body is answered, not held forever")
        .expect("answer");
    assert_eq!(resp.status(), 408);
    assert!(
        start.elapsed() >= Duration::from_millis(1000),
        "408 too early"
    );
    drop(body);
    still_works(&gw).await;
}

/// The same stall over HTTP/1.1: 408 after the body deadline, not pingora's 60 s per read.
#[tokio::test]
async fn h1_stalled_body_on_a_realtime_route_gets_408() {
    let app = Stub::start("app");
    let gw = gateway(
        &app,
        "client_body_timeout_ms: 1500, client_body_min_rate: 0",
    );
    let out = e2e::raw_tls(
        gw.https_addr(),
        b"POST /p?t=news HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n0123456789",
        Duration::from_secs(10),
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 408"), "{out}");
    still_works(&gw).await;
}

// ---------------------------------------------------------------------------------------------
// 3. 413 and 431 over HTTP/2.

/// An upload over HTTP/2 announces more than `max_body_bytes`: it gets the 413 and may finish
/// sending (the body is read and dropped), so the stream ends without a reset; curl 7.88
/// discards an answer followed by RST_STREAM and showed no status at all.
#[tokio::test]
async fn h2_oversized_body_gets_413_without_a_reset() {
    let app = Stub::start("app");
    let gw = gateway(&app, "max_body_bytes: 1000");
    let mut h2 = raw::client(gw.https_addr()).await;
    let len = 300_000usize;
    let req = raw::request("POST", "/upload")
        .header("content-length", len.to_string())
        .body(())
        .expect("request");
    let (resp, mut body) = h2.send_request(req, false).expect("send");
    let upload = async {
        let mut left = len;
        while left > 0 {
            body.reserve_capacity(left.min(16_384));
            let n = match std::future::poll_fn(|cx| body.poll_capacity(cx)).await {
                Some(Ok(n)) => n,
                Some(Err(e)) => return Err(format!("reset after {} bytes: {e}", len - left)),
                None => return Err(format!("stream closed after {} bytes", len - left)),
            };
            let n = n.min(left);
            if n == 0 {
                continue;
            }
            left -= n;
            body.send_data(bytes::Bytes::from(vec![b'x'; n]), left == 0)
                .map_err(|e| format!("reset after {} bytes: {e}", len - left))?;
        }
        Ok(())
    };
    let sent = tokio::time::timeout(Duration::from_secs(15), upload)
        .await
        .expect("upload in time");
    assert_eq!(sent, Ok(()), "the client can finish its upload");
    let resp = tokio::time::timeout(Duration::from_secs(10), resp)
        .await
        .expect("answer in time")
        .expect("answer");
    let (status, text) = raw::body_of(resp, Duration::from_secs(10))
        .await
        .expect("answer body");
    assert_eq!(status, 413);
    assert!(
        String::from_utf8_lossy(&text).contains("request body too large"),
        "{text:?}"
    );
    assert_eq!(app_saw(&app, "/upload").await, 0);
    still_works(&gw).await;
}

/// A header block over `max_header_bytes` (70 KB, sent as HEADERS + CONTINUATION frames) gets
/// the gateway's own 431, with its reason, as on HTTP/1.1; before, h2's limit (64 KiB) came
/// first and answered a bare 431 the gateway never saw.
#[tokio::test]
async fn h2_oversized_header_block_gets_the_gateways_431() {
    let app = Stub::start("app");
    let gw = gateway(&app, "max_header_bytes: 40000");
    let mut tls = raw::connect(gw.https_addr()).await;
    let cookie = "a".repeat(70_000);
    let block = raw::request_block("GET", "/big", &[("cookie", &cookie)]);
    let mut out = raw::opening();
    let pieces: Vec<&[u8]> = block.chunks(16_000).collect();
    for (i, piece) in pieces.iter().enumerate() {
        let (kind, mut flags) = if i == 0 {
            (raw::HEADERS, raw::END_STREAM)
        } else {
            (raw::CONTINUATION, 0)
        };
        if i + 1 == pieces.len() {
            flags |= raw::END_HEADERS;
        }
        out.extend(raw::frame(kind, flags, 1, piece));
    }
    assert!(raw::send(&mut tls, &out).await);
    let mut frames = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        match raw::read_frame(&mut tls, Duration::from_secs(2)).await {
            Read::Frame(f) => {
                let done = f.stream == 1 && f.flags & raw::END_STREAM != 0;
                frames.push(f);
                if done {
                    break;
                }
            }
            _ => break,
        }
    }
    let text = body_text(&frames, 1);
    assert!(
        text.starts_with("431 Request Header Fields Too Large"),
        "no 431 from the gateway: {text:?} {frames:?}"
    );
    assert_eq!(app_saw(&app, "/big").await, 0);
    still_works(&gw).await;
}

// ---------------------------------------------------------------------------------------------
// 4. A client that reads nothing.

/// One connection opens 100 streams for a large compressible answer with a flow-control window
/// of 0, so nothing can be sent: each stream that starts holds an app request and a brotli
/// compressor. At most `h2_max_concurrent_streams` (32) start, the rest are refused, and after
/// `send_timeout_ms` the stuck ones are reset and the app's workers are free again.
#[tokio::test]
async fn h2_client_that_reads_nothing_pins_a_bounded_number_of_streams() {
    let app = Stub::start_with("app", &["--workers", "32"]);
    let gw = gateway(&app, "send_timeout_ms: 3000");
    let mut tls = raw::connect(gw.https_addr()).await;
    let mut out = raw::PREFACE.to_vec();
    out.extend(raw::settings(&[(raw::INITIAL_WINDOW_SIZE, 0)]));
    for i in 0..100u32 {
        out.extend(raw::frame(
            raw::HEADERS,
            raw::END_HEADERS | raw::END_STREAM,
            1 + 2 * i,
            &raw::request_block(
                "GET",
                "/bytes/1000000?content_type=text/plain",
                &[("accept-encoding", "br")],
            ),
        ));
    }
    assert!(raw::send(&mut tls, &out).await);
    let start = Instant::now();
    let mut refused = 0;
    let mut cancelled = 0;
    let mut answered = 0;
    while start.elapsed() < Duration::from_secs(20) && refused + cancelled < 100 {
        match raw::read_frame(&mut tls, Duration::from_secs(10)).await {
            Read::Frame(f) if f.kind == raw::RST_STREAM && f.error_code() == Some(7) => {
                refused += 1
            }
            Read::Frame(f) if f.kind == raw::RST_STREAM => cancelled += 1,
            Read::Frame(f) if f.kind == raw::HEADERS => answered += 1,
            Read::Frame(_) => {}
            _ => break,
        }
    }
    let requested = app_saw(&app, "/bytes/1000000").await;
    eprintln!(
        "stuck streams: {requested} reached the app, {refused} refused, {answered} answered, \
         {cancelled} reset after {:?}",
        start.elapsed()
    );
    assert!(
        requested <= 32,
        "{requested} stuck streams reached the app (at most 32 may)"
    );
    assert!(refused >= 68, "only {refused} of 100 streams refused");
    assert_eq!(
        cancelled, answered,
        "every started stream is reset after the send timeout"
    );
    let fresh = tokio::time::timeout(
        Duration::from_secs(10),
        client().get(gw.https("/bytes/10")).send(),
    )
    .await
    .expect("the app's workers are free again")
    .expect("get");
    assert_eq!(fresh.status(), 200);
    still_works(&gw).await;
}

// ---------------------------------------------------------------------------------------------
// 5. Floods that must already be bounded (regression tests).

/// CVE-2023-44487 (rapid reset): requests opened and cancelled at once, a thousand times on one
/// connection. The connection is closed (GOAWAY) and the app sees only a handful of them.
#[tokio::test]
async fn h2_rapid_reset_flood_is_cut_off() {
    let app = Stub::start("app");
    let gw = gateway(&app, "");
    let mut tls = raw::connect(gw.https_addr()).await;
    let mut out = raw::opening();
    for i in 0..1000u32 {
        let id = 1 + 2 * i;
        out.extend(raw::get(id, "/sleep/500"));
        out.extend(raw::frame(raw::RST_STREAM, 0, id, &8u32.to_be_bytes()));
    }
    let _ = raw::send(&mut tls, &out).await;
    let (_, end) = raw::read_until_closed(&mut tls, Duration::from_secs(15)).await;
    assert!(end.is_some(), "the rapid-reset connection is still open");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let seen = app_saw(&app, "/sleep/500").await;
    eprintln!("rapid reset: connection ended with {end:?}; the app saw {seen} of 1000");
    assert!(seen <= 100, "the app saw {seen} of the reset requests");
    still_works(&gw).await;
}

/// CONTINUATION flood: a header block that never ends (HEADERS without END_HEADERS, then
/// CONTINUATION frames forever). The connection is closed before the gateway buffers much.
#[tokio::test]
async fn h2_continuation_flood_is_cut_off() {
    let app = Stub::start("app");
    let gw = gateway(&app, "");
    let mut tls = raw::connect(gw.https_addr()).await;
    let mut out = raw::opening();
    out.extend(raw::frame(
        raw::HEADERS,
        raw::END_STREAM,
        1,
        &raw::request_block("GET", "/flood", &[]),
    ));
    let mut piece = Vec::new();
    raw::literal(&mut piece, "x-flood", &"z".repeat(1000));
    let mut open = raw::send(&mut tls, &out).await;
    let mut sent = 0;
    while open && sent < 10_000 {
        open = raw::send(&mut tls, &raw::frame(raw::CONTINUATION, 0, 1, &piece)).await;
        sent += 1;
    }
    let (_, end) = raw::read_until_closed(&mut tls, Duration::from_secs(10)).await;
    eprintln!("CONTINUATION flood: {sent} frames written, still open: {open}, then {end:?}");
    assert!(
        !open || end.is_some(),
        "{sent} CONTINUATION frames accepted and the connection is still open"
    );
    assert_eq!(app_saw(&app, "/flood").await, 0);
    still_works(&gw).await;
}

/// A client sends frames that each demand an answer (SETTINGS, PING), 50,000 of each, and reads
/// the answers: the gateway's memory does not grow with them, and the connection (which never
/// opens a stream) is closed when no request came within the header deadline instead of living
/// on the flood.
async fn control_frame_flood(frame: Vec<u8>) {
    let app = Stub::start("app");
    let gw = gateway(&app, "header_timeout_ms: 2000");
    let pid = gw.proc.pid();
    let before = rss_kib(pid);
    let tls = raw::connect(gw.https_addr()).await;
    let (mut rd, mut wr) = tokio::io::split(tls);
    let writer = tokio::spawn(async move {
        use tokio::io::AsyncWriteExt;
        if wr.write_all(&raw::opening()).await.is_err() {
            return;
        }
        let batch: Vec<u8> = (0..1000).flat_map(|_| frame.clone()).collect();
        for _ in 0..50 {
            if wr.write_all(&batch).await.is_err() {
                return;
            }
        }
        let _ = wr.flush().await;
    });
    let start = Instant::now();
    let mut buf = vec![0u8; 64 * 1024];
    let closed = loop {
        use tokio::io::AsyncReadExt;
        match tokio::time::timeout(Duration::from_secs(15), rd.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break true,
            Ok(Ok(_)) => {}
            Err(_) => break false,
        }
        if start.elapsed() > Duration::from_secs(30) {
            break false;
        }
    };
    writer.abort();
    let grew = rss_kib(pid).saturating_sub(before);
    eprintln!(
        "control frame flood: closed {closed} after {:?}, gateway grew by {grew} KiB",
        start.elapsed()
    );
    assert!(
        closed,
        "the flooding connection is still open after {:?}",
        start.elapsed()
    );
    assert!(grew < 64 * 1024, "the gateway grew by {grew} KiB");
    still_works(&gw).await;
}

#[tokio::test]
async fn h2_settings_flood_is_bounded() {
    control_frame_flood(raw::settings(&[(raw::INITIAL_WINDOW_SIZE, 65_535)])).await;
}

#[tokio::test]
async fn h2_ping_flood_is_bounded() {
    control_frame_flood(raw::frame(raw::PING, 0, 0, &[7; 8])).await;
}
