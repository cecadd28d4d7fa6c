//! pingora's HTTP/1 proxy exchange as the gateway drives it (a route with `request_buffering:
//! false`, so request bodies stream through pingora's proxy path rather than the gateway's
//! relay): the two halves of each exchange pass the request body and the answer through a
//! queue in the request's own future (vendor/pingora-proxy.patch.md). Many keep-alive requests
//! with bodies both ways on one client connection, several such connections at once, an app
//! that answers before the upload ends, and one that dies in the middle of an answer.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use e2e::{Gateway, Stub, TlsClient};
use sha1::{Digest, Sha1};
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;

fn config(app: SocketAddr) -> String {
    format!(
        r#"
listen: {{https: "{{https}}"}}
tls: {{state_dir: state}}
upstreams:
  app:
    servers: ["{app}"]
    connect_timeout_ms: 1000
    read_timeout_ms: 10000
routes:
  - {{path: /, upstream: app, request_buffering: false}}
"#
    )
}

fn pattern(n: usize, seed: usize) -> Vec<u8> {
    (0..n).map(|i| ((i * 7 + seed) % 251) as u8).collect()
}

fn sha1_hex(data: &[u8]) -> String {
    Sha1::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// One answer read off a keep-alive connection.
struct Answer {
    status: u16,
    head: String,
    body: Vec<u8>,
}

/// Reads one HTTP/1.1 answer framed by Content-Length or chunked encoding, leaving the
/// connection positioned at the next answer.
async fn read_answer<R: AsyncBufRead + Unpin>(conn: &mut R) -> Answer {
    let mut head = String::new();
    loop {
        let mut line = String::new();
        let n = conn.read_line(&mut line).await.expect("read head");
        assert!(
            n > 0,
            "the connection closed before an answer; got {head:?}"
        );
        if line == "\r\n" {
            break;
        }
        head.push_str(&line);
    }
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {head:?}"));
    let lower = head.to_ascii_lowercase();
    let header = |name: &str| {
        lower.lines().find_map(|l| {
            l.strip_prefix(&format!("{name}:"))
                .map(|v| v.trim().to_string())
        })
    };
    let mut body = Vec::new();
    if let Some(len) = header("content-length") {
        let len: usize = len.parse().expect("content-length");
        body.resize(len, 0);
        conn.read_exact(&mut body).await.expect("read body");
    } else if header("transfer-encoding").is_some_and(|te| te.contains("chunked")) {
        loop {
            let mut size = String::new();
            conn.read_line(&mut size).await.expect("chunk size");
            let size = usize::from_str_radix(size.trim(), 16).expect("hex chunk size");
            let mut chunk = vec![0; size + 2];
            conn.read_exact(&mut chunk).await.expect("chunk");
            if size == 0 {
                break;
            }
            body.extend_from_slice(&chunk[..size]);
        }
    }
    Answer { status, head, body }
}

async fn connect(gw: &Gateway) -> BufReader<TlsClient> {
    BufReader::new(e2e::tls_connect(gw.https_addr()).await)
}

/// POSTs `body` to the stub's `/echo/...` on `conn` and checks that the app saw exactly it.
async fn echo_round(conn: &mut BufReader<TlsClient>, tag: &str, body: &[u8]) {
    let head = format!(
        "POST /echo/{tag} HTTP/1.1\r\nHost: localhost\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    conn.get_mut()
        .write_all(head.as_bytes())
        .await
        .expect("write head");
    conn.get_mut().write_all(body).await.expect("write body");
    let answer = read_answer(conn).await;
    assert_eq!(answer.status, 200, "{tag}: {}", answer.head);
    let json: serde_json::Value = serde_json::from_slice(&answer.body).expect("echo json");
    assert_eq!(json["path"], format!("/echo/{tag}"));
    assert_eq!(json["body_len"], body.len(), "{tag}");
    assert_eq!(json["body_sha1"], sha1_hex(body), "{tag}");
}

/// GETs `/bytes/n` on `conn`, with a request body when `upload` is not empty.
async fn bytes_round(conn: &mut BufReader<TlsClient>, n: usize, upload: &[u8]) {
    let method = if upload.is_empty() { "GET" } else { "POST" };
    let head = format!(
        "{method} /bytes/{n} HTTP/1.1\r\nHost: localhost\r\nContent-Length: {}\r\n\r\n",
        upload.len()
    );
    conn.get_mut()
        .write_all(head.as_bytes())
        .await
        .expect("write head");
    conn.get_mut().write_all(upload).await.expect("write body");
    let answer = read_answer(conn).await;
    assert_eq!(answer.status, 200, "/bytes/{n}: {}", answer.head);
    assert_eq!(answer.body.len(), n, "/bytes/{n}");
}

#[tokio::test]
async fn many_keep_alive_requests_with_bodies_both_ways_on_one_client_connection() {
    let app = Stub::start("a");
    let gw = Gateway::start(&config(app.addr));
    let mut conn = connect(&gw).await;
    let sizes = [0, 1, 1000, 70_000, 300_000, 2_000_000];
    let deadline = Duration::from_secs(60);
    tokio::time::timeout(deadline, async {
        for round in 0..5 {
            for (i, &size) in sizes.iter().enumerate() {
                echo_round(
                    &mut conn,
                    &format!("r{round}-{i}"),
                    &pattern(size, round + i),
                )
                .await;
                bytes_round(&mut conn, size, &[]).await;
                // Both ways in one exchange: the app reads the upload, then answers.
                bytes_round(&mut conn, sizes[sizes.len() - 1 - i], &pattern(size, i)).await;
            }
        }
    })
    .await
    .expect("90 exchanges on one connection within the deadline");
    let posts = app
        .received()
        .await
        .iter()
        .filter(|r| r["method"] == "POST")
        .count();
    assert_eq!(
        posts,
        5 * sizes.len() * 2 - 5,
        "every upload reached the app"
    );
}

#[tokio::test]
async fn parallel_keep_alive_connections_each_get_their_own_answers() {
    let app = Stub::start("a");
    let gw = Arc::new(Gateway::start(&config(app.addr)));
    let mut clients = Vec::new();
    for c in 0..8 {
        let gw = gw.clone();
        clients.push(tokio::spawn(async move {
            let mut conn = connect(&gw).await;
            for i in 0..25 {
                let size = (c * 25 + i) * 997 % 150_000;
                echo_round(&mut conn, &format!("c{c}-{i}"), &pattern(size, c * 100 + i)).await;
            }
        }));
    }
    let all = tokio::time::timeout(Duration::from_secs(60), async {
        for client in clients {
            client.await.expect("client task");
        }
    })
    .await;
    assert!(all.is_ok(), "8 connections x 25 exchanges within 60 s");
}

/// An HTTP/1.1 app on a raw socket: for each connection, `serve` gets the connection's number
/// (0 for the first that sends a request), the request head (up to its blank line) and the
/// stream.
async fn raw_app<F, Fut>(serve: F) -> SocketAddr
where
    F: Fn(usize, String, BufReader<tokio::net::TcpStream>) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let serve = Arc::new(serve);
    let count = Arc::new(AtomicUsize::new(0));
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let (serve, count) = (serve.clone(), count.clone());
            tokio::spawn(async move {
                let mut stream = BufReader::new(stream);
                let mut head = String::new();
                loop {
                    let mut line = String::new();
                    match stream.read_line(&mut line).await {
                        Ok(0) | Err(_) => return,
                        Ok(_) => {}
                    }
                    if line == "\r\n" {
                        break;
                    }
                    head.push_str(&line);
                }
                // Numbered by request heads, so a connection that never sends one (a health
                // check) does not count.
                let n = count.fetch_add(1, Ordering::SeqCst);
                serve(n, head, stream).await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn an_app_that_dies_in_the_middle_of_an_answer_cuts_only_that_answer() {
    // The first connection announces 100,000 bytes, sends 1,000 and closes; later ones answer
    // in full.
    let app = raw_app(|n, _head, mut stream| async move {
        let full = n > 0;
        let _ = stream
            .get_mut()
            .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n")
            .await;
        let _ = stream
            .get_mut()
            .write_all(&vec![b'x'; if full { 100_000 } else { 1_000 }])
            .await;
        if !full {
            return; // dropped: the app is gone mid-answer
        }
        let mut rest = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut rest)).await;
    })
    .await;
    let gw = Gateway::start(&config(app));

    let mut cut = e2e::tls_connect(gw.https_addr()).await;
    cut.write_all(b"GET /first HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .expect("request");
    let mut got = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), cut.read_to_end(&mut got)).await;
    assert!(
        read.is_ok(),
        "the gateway closes the client's connection once the app is gone"
    );
    let text = String::from_utf8_lossy(&got);
    let (head, body) = text.split_once("\r\n\r\n").expect("an answer head");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        body.len() < 100_000,
        "the cut answer is not passed off as whole ({} bytes)",
        body.len()
    );

    // The next client, and the next request on its connection, get whole answers.
    let mut conn = connect(&gw).await;
    for path in ["/second", "/third"] {
        conn.get_mut()
            .write_all(format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n").as_bytes())
            .await
            .expect("request");
        let answer = tokio::time::timeout(Duration::from_secs(10), read_answer(&mut conn))
            .await
            .expect("an answer");
        assert_eq!(answer.status, 200, "{path}");
        assert_eq!(answer.body.len(), 100_000, "{path}");
    }
}

#[tokio::test]
async fn an_answer_the_app_gives_before_the_upload_ends_reaches_the_client() {
    // The app refuses at once (413, `Connection: close`) and only then drains the upload, as an
    // app with its own size limit does.
    let app = raw_app(|_n, _head, mut stream| async move {
        let _ = stream
            .get_mut()
            .write_all(
                b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 9\r\nConnection: close\r\n\r\ntoo large",
            )
            .await;
        let mut sink = vec![0u8; 64 * 1024];
        let _ = tokio::time::timeout(Duration::from_secs(5), async {
            while let Ok(n) = stream.read(&mut sink).await {
                if n == 0 {
                    break;
                }
            }
        })
        .await;
    })
    .await;
    let gw = Gateway::start(&config(app));

    let mut conn = connect(&gw).await;
    let upload = pattern(4_000_000, 3);
    conn.get_mut()
        .write_all(
            format!(
                "POST /upload HTTP/1.1\r\nHost: localhost\r\nContent-Length: {}\r\n\r\n",
                upload.len()
            )
            .as_bytes(),
        )
        .await
        .expect("head");
    // Upload and read at once: the answer may come while the body is still going out.
    let (tls_read, mut tls_write) = tokio::io::split(conn.into_inner());
    let writer = tokio::spawn(async move {
        let _ = tls_write.write_all(&upload).await;
        tls_write
    });
    let mut reader = BufReader::new(tls_read);
    let mut status_line = String::new();
    tokio::time::timeout(Duration::from_secs(20), reader.read_line(&mut status_line))
        .await
        .expect("an answer within 20 s")
        .expect("read");
    assert!(
        status_line.starts_with("HTTP/1.1 413"),
        "the app's refusal reaches the client: {status_line:?}"
    );
    let mut rest = Vec::new();
    // The rest of the head, then the 9-byte body.
    loop {
        let mut line = String::new();
        tokio::time::timeout(Duration::from_secs(10), reader.read_line(&mut line))
            .await
            .expect("the head within 10 s")
            .expect("read");
        if line == "\r\n" || line.is_empty() {
            break;
        }
    }
    rest.resize(9, 0);
    tokio::time::timeout(Duration::from_secs(10), reader.read_exact(&mut rest))
        .await
        .expect("the body within 10 s")
        .expect("read");
    assert_eq!(rest, b"too large");
    writer.abort();
}
