//! In-process tests: the real router served on a random loopback port and
//! driven with hand-written HTTP/1.1 over a plain `TcpStream`, so what is
//! checked is what goes over the wire (framing, headers, keep-alive).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::sync::watch;

use crate::app::{router, Config};

/// Serves a fresh stub (its own request log) and returns its address.
async fn spawn(workers: Option<usize>) -> SocketAddr {
    spawn_with(workers, crate::app::DEFAULT_PUBLISH_URL).await
}

async fn spawn_with(workers: Option<usize>, publish_url: &str) -> SocketAddr {
    let (tx, rx) = watch::channel(false);
    let config = Config {
        id: "stub-test".to_owned(),
        workers,
        quiet: true,
        publish_url: publish_url.to_owned(),
    };
    let app = router(config, rx).expect("valid config");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("local addr");
    tokio::spawn(async move {
        // Keep the shutdown sender alive for as long as the server runs.
        let _tx = tx;
        axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .await
    });
    addr
}

struct Resp {
    status: u16,
    /// Lowercased names; repeated headers keep the last value.
    headers: HashMap<String, String>,
    body: Vec<u8>,
}

impl Resp {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(String::as_str)
    }

    fn text(&self) -> &str {
        std::str::from_utf8(&self.body).expect("utf-8 body")
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("json body")
    }
}

type Conn = BufReader<TcpStream>;

async fn connect(addr: SocketAddr) -> Conn {
    BufReader::new(TcpStream::connect(addr).await.expect("connect"))
}

async fn send(conn: &mut Conn, raw: &[u8]) {
    conn.get_mut().write_all(raw).await.expect("write");
}

async fn read_line(conn: &mut Conn) -> String {
    let mut line = String::new();
    conn.read_line(&mut line).await.expect("read line");
    line.trim_end_matches(['\r', '\n']).to_owned()
}

async fn read_head(conn: &mut Conn) -> (u16, HashMap<String, String>) {
    let status_line = read_line(conn).await;
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
    let mut headers = HashMap::new();
    loop {
        let line = read_line(conn).await;
        if line.is_empty() {
            break;
        }
        let (name, value) = line.split_once(':').expect("header line");
        headers.insert(name.to_ascii_lowercase(), value.trim().to_owned());
    }
    (status, headers)
}

/// Reads one chunk of a chunked body; `None` at the terminating chunk.
async fn read_chunk(conn: &mut Conn) -> Option<Vec<u8>> {
    let size = usize::from_str_radix(&read_line(conn).await, 16).expect("chunk size");
    let mut data = vec![0; size + 2];
    conn.read_exact(&mut data).await.expect("chunk data");
    data.truncate(size);
    (size > 0).then_some(data)
}

/// Reads one whole response, leaving the connection ready for the next.
async fn read_response(conn: &mut Conn) -> Resp {
    let (status, headers) = read_head(conn).await;
    let mut body = Vec::new();
    if let Some(len) = headers.get("content-length") {
        body.resize(len.parse().expect("content-length"), 0);
        conn.read_exact(&mut body).await.expect("body");
    } else if headers.get("transfer-encoding").map(String::as_str) == Some("chunked") {
        while let Some(chunk) = read_chunk(conn).await {
            body.extend_from_slice(&chunk);
        }
    }
    Resp {
        status,
        headers,
        body,
    }
}

async fn get(addr: SocketAddr, target: &str) -> Resp {
    request(addr, "GET", target, "").await
}

async fn request(addr: SocketAddr, method: &str, target: &str, extra: &str) -> Resp {
    let mut conn = connect(addr).await;
    let raw = format!("{method} {target} HTTP/1.1\r\nHost: stub\r\n{extra}\r\n");
    send(&mut conn, raw.as_bytes()).await;
    read_response(&mut conn).await
}

#[tokio::test]
async fn ping_with_keep_alive() {
    let addr = spawn(None).await;
    let mut conn = connect(addr).await;
    for _ in 0..3 {
        send(&mut conn, b"GET /ping HTTP/1.1\r\nHost: stub\r\n\r\n").await;
        let resp = read_response(&mut conn).await;
        assert_eq!(resp.status, 200);
        assert_eq!(resp.text(), "PONG. EOM.");
        assert_eq!(resp.header("content-type"), Some("text/plain"));
        assert_eq!(resp.header("x-backend-id"), Some("stub-test"));
    }
}

#[tokio::test]
async fn echo_reports_request() {
    let addr = spawn(None).await;
    let resp = request(
        addr,
        "POST",
        "/echo/a/b?a=1&b=2",
        "X-Rep: one\r\nX-Other: z\r\nX-Rep: two\r\nContent-Length: 5\r\n\r\nhello",
    )
    .await;
    assert_eq!(resp.status, 200);
    assert_eq!(resp.header("content-type"), Some("application/json"));
    assert_eq!(resp.header("x-backend-id"), Some("stub-test"));
    let json = resp.json();
    assert_eq!(json["id"], "stub-test");
    assert_eq!(json["method"], "POST");
    assert_eq!(json["path"], "/echo/a/b");
    assert_eq!(json["query"], "a=1&b=2");
    assert_eq!(json["headers"]["x-rep"], "one, two");
    assert_eq!(json["headers"]["host"], "stub");
    assert_eq!(json["body_len"], 5);
    // sha1("hello")
    assert_eq!(
        json["body_sha1"],
        "aaf4c61ddcc5e8a2dabede0f3b482cd9aea9434d"
    );
    assert_eq!(json["version"], "HTTP/1.1");
    assert!(json["peer"]
        .as_str()
        .expect("peer")
        .starts_with("127.0.0.1:"));
    let list = json["header_list"].as_array().expect("header_list");
    let reps: Vec<&Value> = list.iter().filter(|pair| pair[0] == "x-rep").collect();
    assert_eq!(reps.len(), 2);
    assert_eq!(reps[0][1], "one");
    assert_eq!(reps[1][1], "two");

    let bare = get(addr, "/echo").await.json();
    assert_eq!(bare["path"], "/echo");
    assert_eq!(bare["query"], "");
    assert_eq!(bare["body_len"], 0);

    let chunked = request(
        addr,
        "PUT",
        "/echo/up",
        "Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n4\r\ndefg\r\n0\r\n\r\n",
    )
    .await
    .json();
    assert_eq!(chunked["body_len"], 7);
    assert_eq!(get(addr, "/echoes").await.status, 404);
}

#[tokio::test]
async fn accel_answers_with_the_headers_the_query_names() {
    let addr = spawn(None).await;
    let resp = get(
        addr,
        "/accel?x-accel-redirect=/protected/%252e%252e/secret&content-type=application/pdf&content-disposition=attachment%3B%20filename%3D%22r.pdf%22",
    )
    .await;
    assert_eq!(resp.status, 200);
    assert_eq!(
        resp.header("x-accel-redirect"),
        Some("/protected/%2e%2e/secret"),
        "decoded once, so any raw value can be sent"
    );
    assert_eq!(resp.header("content-type"), Some("application/pdf"));
    assert_eq!(
        resp.header("content-disposition"),
        Some("attachment; filename=\"r.pdf\"")
    );
    assert_eq!(resp.header("cache-control"), Some("private, max-age=60"));
    assert!(resp.header("set-cookie").is_some());
    assert_eq!(resp.text(), crate::app::ACCEL_BODY);
    assert_eq!(get(addr, "/accel?x-bad%0A=1").await.status, 400);
}

#[tokio::test]
async fn listens_on_a_unix_socket() {
    let dir = std::env::temp_dir().join(format!("stub-uds-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let sock = dir.join("app.sock");
    let (tx, rx) = watch::channel(false);
    let config = Config {
        id: "uds".to_owned(),
        workers: None,
        quiet: true,
        publish_url: crate::app::DEFAULT_PUBLISH_URL.to_owned(),
    };
    let app = router(config, rx).expect("valid config");
    let listener = tokio::net::UnixListener::bind(&sock).expect("bind");
    tokio::spawn(async move {
        let _tx = tx;
        axum::serve(listener, app.into_make_service()).await
    });
    let mut conn = tokio::net::UnixStream::connect(&sock)
        .await
        .expect("connect");
    conn.write_all(b"GET /echo HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .expect("write");
    let mut out = String::new();
    conn.read_to_string(&mut out).await.expect("read");
    let _ = std::fs::remove_dir_all(&dir);
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    assert!(out.contains("\"peer\":null"), "{out}");
    assert!(out.contains("x-backend-id: uds"), "{out}");
}

#[tokio::test]
async fn bytes_pattern_and_limits() {
    let addr = spawn(None).await;
    // Longer than one internal chunk, so the pattern must continue across.
    let n = 200_000;
    let resp = get(addr, &format!("/bytes/{n}")).await;
    assert_eq!(resp.status, 200);
    assert_eq!(
        resp.header("content-type"),
        Some("application/octet-stream")
    );
    assert_eq!(resp.header("content-length"), Some("200000"));
    assert_eq!(resp.body.len(), n);
    assert!(resp
        .body
        .iter()
        .enumerate()
        .all(|(i, &b)| b == (i % 251) as u8));

    let typed = get(
        addr,
        "/bytes/10?content_type=text%2Fevent-stream&x_accel_buffering=no",
    )
    .await;
    assert_eq!(typed.header("content-type"), Some("text/event-stream"));
    assert_eq!(typed.header("x-accel-buffering"), Some("no"));
    assert_eq!(typed.body.len(), 10);

    let empty = get(addr, "/bytes/0").await;
    assert_eq!((empty.status, empty.body.len()), (200, 0));
    assert_eq!(get(addr, "/bytes/104857601").await.status, 400);
    assert_eq!(get(addr, "/bytes/lots").await.status, 400);
}

#[tokio::test]
async fn text_body_with_chosen_type_headers_and_framing() {
    let addr = spawn(None).await;
    let resp = get(addr, "/body/1000").await;
    assert_eq!(resp.status, 200);
    assert_eq!(
        resp.header("content-type"),
        Some("text/plain; charset=utf-8")
    );
    assert_eq!(resp.header("content-length"), Some("1000"));
    assert_eq!(resp.body, crate::app::text_of(1000));
    assert!(resp.text().starts_with("000001 the quick brown fox"));

    let resp = get(
        addr,
        "/body/10000?type=text/event-stream&header=Cache-Control:%20no-transform&header=ETag:%20%22v1%22&framing=chunked",
    )
    .await;
    assert_eq!(resp.status, 200);
    assert_eq!(resp.header("content-type"), Some("text/event-stream"));
    assert_eq!(resp.header("cache-control"), Some("no-transform"));
    assert_eq!(resp.header("etag"), Some("\"v1\""));
    assert_eq!(resp.header("transfer-encoding"), Some("chunked"));
    assert_eq!(resp.header("content-length"), None);
    assert_eq!(resp.body, crate::app::text_of(10000));

    // The stub does not encode: a Content-Encoding header is only a label.
    let resp = get(
        addr,
        "/body/300?header=Content-Encoding:gzip&type=image/png",
    )
    .await;
    assert_eq!(resp.header("content-encoding"), Some("gzip"));
    assert_eq!(resp.header("content-type"), Some("image/png"));
    assert_eq!(resp.body.len(), 300);

    assert_eq!(get(addr, "/body/0").await.body.len(), 0);
    for bad in [
        "/body/x",
        "/body/16777217",
        "/body/10?header=nocolon",
        "/body/10?framing=maybe",
    ] {
        assert_eq!(get(addr, bad).await.status, 400, "{bad}");
    }
}

#[tokio::test]
async fn status_codes() {
    let addr = spawn(None).await;
    let resp = get(addr, "/status/418").await;
    assert_eq!(resp.status, 418);
    assert_eq!(resp.text(), "status 418\n");
    assert_eq!(resp.header("x-backend-id"), Some("stub-test"));
    let resp = get(addr, "/status/503").await;
    assert_eq!((resp.status, resp.text()), (503, "status 503\n"));
    let resp = get(addr, "/status/204").await;
    assert_eq!(resp.status, 204);
    assert_eq!(resp.header("content-length"), None);
    for bad in ["100", "199", "600", "abc", ""] {
        assert_eq!(
            get(addr, &format!("/status/{bad}")).await.status,
            400,
            "{bad}"
        );
    }
}

#[tokio::test]
async fn sleep_and_not_found() {
    let addr = spawn(None).await;
    let started = Instant::now();
    let resp = get(addr, "/sleep/150").await;
    assert!(started.elapsed() >= Duration::from_millis(150));
    assert_eq!((resp.status, resp.text()), (200, "slept 150\n"));
    assert_eq!(get(addr, "/sleep/600001").await.status, 400);

    let resp = get(addr, "/no/such?x=1").await;
    assert_eq!(resp.status, 404);
    assert_eq!(resp.text(), "not found: /no/such\n");
    assert_eq!(resp.header("x-backend-id"), Some("stub-test"));
}

#[tokio::test]
async fn chunked_stream_is_not_buffered() {
    let addr = spawn(None).await;
    let mut conn = connect(addr).await;
    send(
        &mut conn,
        b"GET /stream?n=3&interval_ms=200&format=chunked HTTP/1.1\r\nHost: stub\r\n\r\n",
    )
    .await;
    let started = Instant::now();
    let (status, headers) = read_head(&mut conn).await;
    assert_eq!(status, 200);
    assert_eq!(headers["content-type"], "text/plain");
    assert_eq!(headers["transfer-encoding"], "chunked");
    let mut arrivals = Vec::new();
    while let Some(chunk) = read_chunk(&mut conn).await {
        arrivals.push((String::from_utf8(chunk).expect("utf-8"), started.elapsed()));
    }
    let lines: Vec<&str> = arrivals.iter().map(|(l, _)| l.as_str()).collect();
    assert_eq!(lines, ["tick 1\n", "tick 2\n", "tick 3\n"]);
    // The first tick must arrive well before the stream ends.
    assert!(arrivals[0].1 < Duration::from_millis(150), "{arrivals:?}");
    assert!(arrivals[2].1 >= Duration::from_millis(390), "{arrivals:?}");
}

#[tokio::test]
async fn sse_stream() {
    let addr = spawn(None).await;
    let resp = get(addr, "/stream?n=2&interval_ms=10").await;
    assert_eq!(resp.status, 200);
    assert_eq!(resp.header("content-type"), Some("text/event-stream"));
    assert_eq!(resp.header("cache-control"), Some("no-cache"));
    assert_eq!(resp.text(), "data: tick 1\n\ndata: tick 2\n\n");
    assert_eq!(get(addr, "/stream?format=xml").await.status, 400);
    assert_eq!(get(addr, "/stream?n=-1").await.status, 400);
}

#[tokio::test]
async fn request_log_records_and_clears() {
    let addr = spawn(None).await;
    get(addr, "/ping").await;
    request(addr, "GET", "/echo?q=1", "X-Test: yes\r\n").await;
    get(addr, "/__log").await;
    get(addr, "/missing").await;

    let resp = get(addr, "/__log").await;
    assert_eq!(resp.status, 200);
    assert_eq!(resp.header("x-backend-id"), Some("stub-test"));
    let log = resp.json();
    let entries = log.as_array().expect("array");
    let paths: Vec<&str> = entries.iter().filter_map(|e| e["path"].as_str()).collect();
    assert_eq!(paths, ["/ping", "/echo", "/missing"]);
    let echo = &entries[1];
    assert_eq!(echo["method"], "GET");
    assert_eq!(echo["query"], "q=1");
    assert_eq!(echo["headers"]["x-test"], "yes");
    assert!(echo["peer"]
        .as_str()
        .expect("peer")
        .starts_with("127.0.0.1:"));
    assert!(echo["at_ms"].as_u64().expect("at_ms") > 1_600_000_000_000);

    assert_eq!(request(addr, "DELETE", "/__log", "").await.status, 204);
    assert_eq!(get(addr, "/__log").await.json(), Value::Array(vec![]));
}

#[tokio::test]
async fn request_log_keeps_last_thousand() {
    let addr = spawn(None).await;
    let mut conn = connect(addr).await;
    for i in 0..1005 {
        let raw = format!("GET /status/200?i={i} HTTP/1.1\r\nHost: stub\r\n\r\n");
        send(&mut conn, raw.as_bytes()).await;
        read_response(&mut conn).await;
    }
    let log = get(addr, "/__log").await.json();
    let entries = log.as_array().expect("array");
    assert_eq!(entries.len(), 1000);
    assert_eq!(entries[0]["query"], "i=5");
    assert_eq!(entries[999]["query"], "i=1004");
}

/// With one worker, a slow upload occupies the slot: other requests queue
/// behind it, while `/ping` and `/__log` still answer.
#[tokio::test]
async fn workers_limit_concurrency() {
    let addr = spawn(Some(1)).await;
    let mut upload = connect(addr).await;
    send(
        &mut upload,
        b"POST /echo HTTP/1.1\r\nHost: stub\r\nContent-Length: 10\r\n\r\nhalf-",
    )
    .await;
    // Let the upload reach the server and take the slot.
    tokio::time::sleep(Duration::from_millis(100)).await;

    let queued = tokio::spawn(async move { get(addr, "/status/200").await.status });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !queued.is_finished(),
        "second request should wait for the slot"
    );
    assert_eq!(get(addr, "/ping").await.status, 200);
    assert_eq!(get(addr, "/__log").await.status, 200);

    send(&mut upload, b"done!").await;
    let echoed = read_response(&mut upload).await.json();
    assert_eq!(echoed["body_len"], 10);
    let status = tokio::time::timeout(Duration::from_secs(5), queued)
        .await
        .expect("queued request finishes once the slot is free")
        .expect("task");
    assert_eq!(status, 200);
}

/// Minimal masked client frame (payloads under 126 bytes).
fn client_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    assert!(payload.len() < 126);
    let mask = [0x11, 0x22, 0x33, 0x44];
    let mut frame = vec![0x80 | opcode, 0x80 | payload.len() as u8];
    frame.extend_from_slice(&mask);
    frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    frame
}

/// Reads one unmasked server frame (payloads under 126 bytes).
async fn server_frame(conn: &mut Conn) -> (u8, Vec<u8>) {
    let mut head = [0u8; 2];
    conn.read_exact(&mut head).await.expect("frame head");
    let len = (head[1] & 0x7f) as usize;
    assert!(len < 126, "unexpectedly long frame");
    let mut payload = vec![0; len];
    conn.read_exact(&mut payload).await.expect("frame payload");
    (head[0] & 0x0f, payload)
}

#[tokio::test]
async fn cable_echoes_websocket_messages() {
    let addr = spawn(Some(1)).await;
    let mut conn = connect(addr).await;
    send(
        &mut conn,
        b"GET /cable HTTP/1.1\r\nHost: stub\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
          Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
          Sec-WebSocket-Protocol: actioncable-v1-json, actioncable-unsupported\r\n\r\n",
    )
    .await;
    let (status, headers) = read_head(&mut conn).await;
    assert_eq!(status, 101);
    assert_eq!(
        headers["sec-websocket-accept"],
        "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
    );
    assert_eq!(headers["sec-websocket-protocol"], "actioncable-v1-json");
    assert_eq!(headers["x-backend-id"], "stub-test");

    // An open socket must not hold the only worker slot.
    assert_eq!(get(addr, "/status/200").await.status, 200);

    send(&mut conn, &client_frame(0x1, br#"{"command":"subscribe"}"#)).await;
    assert_eq!(
        server_frame(&mut conn).await,
        (0x1, br#"{"command":"subscribe"}"#.to_vec())
    );
    send(&mut conn, &client_frame(0x2, &[0, 1, 2, 255])).await;
    assert_eq!(server_frame(&mut conn).await, (0x2, vec![0, 1, 2, 255]));
    send(&mut conn, &client_frame(0x9, b"hb")).await;
    assert_eq!(server_frame(&mut conn).await, (0xA, b"hb".to_vec()));
    // Close with code 1000; the server must answer with a Close frame.
    send(&mut conn, &client_frame(0x8, &[0x03, 0xE8])).await;
    let (opcode, payload) = server_frame(&mut conn).await;
    assert_eq!(opcode, 0x8);
    assert_eq!(payload.get(..2), Some(&[0x03, 0xE8][..]));

    let plain = get(addr, "/cable").await;
    assert_eq!(plain.status, 426);
    assert_eq!(plain.header("x-backend-id"), Some("stub-test"));
}

/// A one-shot stand-in for the gateway's publish API: accepts one request,
/// hands it over, answers `status` with `body` (chunked, as a streaming
/// server might).
async fn fake_publish_api(
    status: &'static str,
    body: &'static str,
) -> (String, tokio::sync::oneshot::Receiver<String>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}/publish", listener.local_addr().expect("addr"));
    let (tx, rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.expect("accept");
        let mut conn = BufReader::new(tcp);
        let mut head = String::new();
        let mut length = 0usize;
        loop {
            let line = read_line(&mut conn).await;
            if line.is_empty() {
                break;
            }
            if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                length = v.trim().parse().expect("length");
            }
            head.push_str(&line);
            head.push('\n');
        }
        let mut body_in = vec![0; length];
        conn.read_exact(&mut body_in).await.expect("body");
        let _ = tx.send(format!("{head}\n{}", String::from_utf8_lossy(&body_in)));
        let answer = format!(
            "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{body}\r\n0\r\n\r\n",
            body.len()
        );
        conn.get_mut()
            .write_all(answer.as_bytes())
            .await
            .expect("answer");
    });
    (url, rx)
}

#[tokio::test]
async fn publish_demo_calls_the_publish_api() {
    let (url, seen) = fake_publish_api("200 OK", r#"{"topic":"announcements","seq":1}"#).await;
    let addr = spawn_with(None, &url).await;
    let body = r#"{"text":"  release at five "}"#;
    let resp = request(
        addr,
        "POST",
        "/publish-demo",
        &format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        ),
    )
    .await;
    assert_eq!(resp.status, 202, "{}", resp.text());
    assert_eq!(resp.header("content-type"), Some("application/json"));
    assert_eq!(resp.json()["seq"], 1);
    let seen = seen.await.expect("the publish API was called");
    assert!(seen.starts_with("POST /publish HTTP/1.1\n"), "{seen}");
    assert!(
        seen.to_ascii_lowercase()
            .contains("content-type: application/json"),
        "{seen}"
    );
    let sent: Value = serde_json::from_str(seen.split("\n\n").nth(1).expect("body")).expect("json");
    assert_eq!(
        sent,
        serde_json::json!({"topic": "announcements", "event": "announcement",
                           "data": {"text": "release at five", "from": "stub-test"}})
    );

    // No text asked for: the stub makes one up.
    let (url, seen) = fake_publish_api("200 OK", "{}").await;
    let addr = spawn_with(None, &url).await;
    assert_eq!(
        request(addr, "POST", "/publish-demo", "Content-Length: 0\r\n\r\n")
            .await
            .status,
        202
    );
    let seen = seen.await.expect("called");
    let sent: Value = serde_json::from_str(seen.split("\n\n").nth(1).expect("body")).expect("json");
    assert!(
        sent["data"]["text"]
            .as_str()
            .expect("text")
            .contains("stub-test"),
        "{sent}"
    );
}

#[tokio::test]
async fn publish_demo_reports_a_refusal_or_an_unreachable_gateway_as_502() {
    let (url, _seen) = fake_publish_api("401 Unauthorized", r#"{"error":"token"}"#).await;
    let addr = spawn_with(None, &url).await;
    let resp = request(addr, "POST", "/publish-demo", "Content-Length: 0\r\n\r\n").await;
    assert_eq!(resp.status, 502);
    let error = resp.json()["error"].as_str().expect("error").to_owned();
    assert!(error.contains("401") && error.contains("token"), "{error}");

    // Nothing listens there.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!("http://{}/publish", closed.local_addr().expect("addr"));
    drop(closed);
    let addr = spawn_with(None, &url).await;
    let resp = request(addr, "POST", "/publish-demo", "Content-Length: 0\r\n\r\n").await;
    assert_eq!(resp.status, 502);
    assert!(resp.json()["error"]
        .as_str()
        .expect("error")
        .contains("connect"));

    assert_eq!(get(addr, "/publish-demo").await.status, 405);
}
