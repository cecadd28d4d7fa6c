//! FastCGI upstreams: the gateway in front of a real php-fpm (Debian's `php-fpm` package), on a
//! Unix socket, over TLS, with a Laravel-style front controller.

use e2e::{client, eventually, Gateway, PhpFpm, Scratch};
use std::time::Duration;

const FRONT_CONTROLLER: &str = r#"<?php
$path = parse_url($_SERVER['REQUEST_URI'], PHP_URL_PATH);
switch ($path) {
case '/hello':
    header('Content-Type: text/plain');
    echo "Hello from PHP";
    break;
case '/params':
    header('Content-Type: application/json');
    echo json_encode($_SERVER);
    break;
case '/upload':
    $body = file_get_contents('php://input');
    header('Content-Type: application/json');
    echo json_encode(['bytes' => strlen($body), 'md5' => md5($body)]);
    break;
case '/created':
    header('Status: 201 Created');
    setcookie('a', '1');
    setcookie('b', '2');
    echo "created";
    break;
case '/slow':
    sleep(3);
    echo "late";
    break;
case '/pieces':
    header('Content-Type: text/plain');
    while (ob_get_level()) {
        ob_end_flush();
    }
    echo "first piece\n";
    flush();
    usleep(100000);
    echo "second piece\n";
    break;
case '/pid':
    echo getmypid();
    break;
case '/nap':
    usleep(200000);
    echo "rested";
    break;
case '/stderr':
    error_log("note from php for the gateway log");
    echo "logged";
    break;
default:
    header('Content-Type: text/plain');
    echo "front controller: $path";
}
"#;

struct Site {
    gw: Gateway,
    fpm: PhpFpm,
    _root: Scratch,
}

/// php-fpm, a document root with a front controller, a direct script, a static file and an
/// "uploaded" image with PHP in it, and the gateway in front (health checks optional).
fn site(health_check: &str) -> Site {
    site_with(health_check, "")
}

fn site_with(health_check: &str, fpm_extra: &str) -> Site {
    let fpm = PhpFpm::start(&format!(
        "php_admin_value[post_max_size] = 64M\nphp_admin_value[upload_max_filesize] = 64M\n{fpm_extra}"
    ));
    let root = Scratch::new("php-public");
    let r = root.path();
    std::fs::write(r.join("index.php"), FRONT_CONTROLLER).expect("write");
    std::fs::write(r.join("direct.php"), "<?php echo 'direct script ran';").expect("write");
    std::fs::write(r.join("style.css"), "body{}\n").expect("write");
    std::fs::create_dir_all(r.join("uploads")).expect("dir");
    std::fs::write(r.join("uploads/evil.jpg"), "<?php echo 'EXECUTED'; ?>\n").expect("write");
    let gw = Gateway::start(&format!(
        r#"
listen: {{https: "{{https}}"}}
tls: {{state_dir: state}}
upstreams:
  php:
    protocol: fastcgi
    servers: ["{server}"]
    fastcgi: {{root: {root}}}
    read_timeout_ms: 20000
    {health_check}
  php_impatient:
    protocol: fastcgi
    servers: ["{server}"]
    fastcgi: {{root: {root}, index: index.php, front_controller: /index.php}}
    read_timeout_ms: 1000
routes:
  - path: /slow
    upstream: php_impatient
  - path: /streamed/
    upstream: php
    request_buffering: false
  - path: /
    static: {{root: {root}}}
    upstream: php
"#,
        server = fpm.server(),
        root = r.display(),
    ));
    Site {
        gw,
        fpm,
        _root: root,
    }
}

#[tokio::test]
async fn pretty_urls_reach_the_front_controller() {
    let s = site("");
    let c = client();
    let r = c.get(s.gw.https("/hello")).send().await.expect("get");
    assert_eq!(r.status(), 200);
    assert!(r.headers()["content-type"]
        .to_str()
        .unwrap_or("")
        .starts_with("text/plain"));
    assert_eq!(r.text().await.expect("body"), "Hello from PHP");

    let r = c
        .get(s.gw.https("/blog/2024/hello-world?page=2"))
        .send()
        .await
        .expect("get");
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.text().await.expect("body"),
        "front controller: /blog/2024/hello-world"
    );

    let r = c.get(s.gw.https("/direct.php")).send().await.expect("get");
    assert_eq!(r.text().await.expect("body"), "direct script ran");

    // HTTP/1.1 (the default client speaks HTTP/2), and HEAD.
    let h1 = e2e::client_builder().http1_only().build().expect("client");
    let r = h1.get(s.gw.https("/params")).send().await.expect("get");
    assert_eq!(r.version(), reqwest::Version::HTTP_11);
    let v: serde_json::Value = r.json().await.expect("json");
    assert_eq!(v["SERVER_PROTOCOL"], "HTTP/1.1");
    let r = h1.head(s.gw.https("/hello")).send().await.expect("head");
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.expect("body"), "");
    let r = h1.get(s.gw.https("/hello")).send().await.expect("get");
    assert_eq!(r.text().await.expect("body"), "Hello from PHP");
    assert!(
        s.fpm.access_log().contains("GET /hello 200"),
        "{}",
        s.fpm.access_log()
    );
}

#[tokio::test]
async fn php_sees_the_fastcgi_params() {
    let s = site("");
    let r = client()
        .post(s.gw.https("/params?x=1&y=two"))
        .header("content-type", "application/x-www-form-urlencoded")
        .header("x-custom-header", "custom value")
        .header("cookie", "session=abc")
        .body("a=b")
        .send()
        .await
        .expect("post");
    assert_eq!(r.status(), 200);
    let protocol = match r.version() {
        reqwest::Version::HTTP_2 => "HTTP/2.0",
        _ => "HTTP/1.1",
    };
    let v: serde_json::Value = r.json().await.expect("json");
    let root = std::fs::canonicalize(s._root.path()).expect("root");
    let root = root.display().to_string();
    let want = [
        ("SCRIPT_FILENAME", format!("{root}/index.php")),
        ("SCRIPT_NAME", "/index.php".to_string()),
        ("PATH_INFO", String::new()),
        ("QUERY_STRING", "x=1&y=two".into()),
        ("REQUEST_METHOD", "POST".into()),
        ("CONTENT_TYPE", "application/x-www-form-urlencoded".into()),
        ("CONTENT_LENGTH", "3".into()),
        ("REQUEST_URI", "/params?x=1&y=two".into()),
        ("DOCUMENT_URI", "/index.php".into()),
        ("DOCUMENT_ROOT", root.clone()),
        ("SERVER_PROTOCOL", protocol.into()),
        ("REQUEST_SCHEME", "https".into()),
        ("HTTPS", "on".into()),
        ("GATEWAY_INTERFACE", "CGI/1.1".into()),
        ("REMOTE_ADDR", "127.0.0.1".into()),
        ("SERVER_ADDR", "127.0.0.1".into()),
        ("SERVER_PORT", s.gw.ports.https.to_string()),
        ("SERVER_NAME", "127.0.0.1".into()),
        ("HTTP_X_CUSTOM_HEADER", "custom value".into()),
        ("HTTP_COOKIE", "session=abc".into()),
        ("HTTP_HOST", format!("127.0.0.1:{}", s.gw.ports.https)),
        ("HTTP_X_FORWARDED_PROTO", "https".into()),
        ("HTTP_X_FORWARDED_FOR", "127.0.0.1".into()),
    ];
    for (k, want) in want {
        assert_eq!(v[k].as_str(), Some(want.as_str()), "{k} in {v:#}");
    }
    assert!(v["SERVER_SOFTWARE"]
        .as_str()
        .is_some_and(|s| s.starts_with("gateway/")));
    let port: u16 = v["REMOTE_PORT"]
        .as_str()
        .and_then(|p| p.parse().ok())
        .expect("REMOTE_PORT");
    assert!(port > 0);
}

#[tokio::test]
async fn static_files_and_missing_scripts_never_reach_php_fpm() {
    let s = site("");
    let c = client();
    let r = c.get(s.gw.https("/style.css")).send().await.expect("get");
    assert_eq!(r.status(), 200);
    assert!(r.headers().contains_key("etag"), "served as a static file");
    assert_eq!(r.text().await.expect("body"), "body{}\n");

    let r = c.get(s.gw.https("/missing.php")).send().await.expect("get");
    assert_eq!(r.status(), 404);

    // The cgi.fix_pathinfo hole: nothing may run the "image".
    for path in ["/uploads/evil.jpg/x.php", "/uploads/evil.jpg%2Fx.php"] {
        let r = c.get(s.gw.https(path)).send().await.expect("get");
        assert_eq!(r.status(), 404, "{path}");
        assert!(!r.text().await.expect("body").contains("EXECUTED"));
    }
    // PHP source is never served as a file.
    let r = c.get(s.gw.https("/index.php")).send().await.expect("get");
    let body = r.text().await.expect("body");
    assert!(!body.contains("<?php"), "source served: {body}");
    let r = c
        .get(s.gw.https("/direct.ph%70"))
        .send()
        .await
        .expect("get");
    assert_eq!(r.text().await.expect("body"), "direct script ran");

    let log = s.fpm.access_log();
    for p in ["style.css", "missing.php", "evil.jpg"] {
        assert!(!log.contains(p), "php-fpm saw {p}:\n{log}");
    }
}

#[tokio::test]
async fn status_header_and_repeated_cookies_arrive() {
    let s = site("");
    let r = client()
        .get(s.gw.https("/created"))
        .send()
        .await
        .expect("get");
    assert_eq!(r.status(), 201);
    let cookies: Vec<_> = r
        .headers()
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().expect("ascii").to_string())
        .collect();
    assert_eq!(cookies, ["a=1", "b=2"]);
    assert!(!r.headers().contains_key("status"));
    assert_eq!(r.text().await.expect("body"), "created");
}

#[tokio::test]
async fn a_10_mib_upload_arrives_intact() {
    let s = site("");
    let body: Vec<u8> = (0..10 * 1024 * 1024u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let c = client();
    let r = c
        .post(s.gw.https("/upload"))
        .header("content-type", "application/octet-stream")
        .body(body.clone())
        .send()
        .await
        .expect("post");
    assert_eq!(r.status(), 200);
    let v: serde_json::Value = r.json().await.expect("json");
    assert_eq!(v["bytes"], body.len());
    assert_eq!(v["md5"], format!("{:032x}", md5(&body)));

    // Chunked (no Content-Length): read whole, then sent with its length.
    let stream = futures_util::stream::iter(
        body.chunks(100_000)
            .map(|c| Ok::<_, std::io::Error>(bytes::Bytes::copy_from_slice(c)))
            .collect::<Vec<_>>(),
    );
    let r = c
        .post(s.gw.https("/upload"))
        .body(reqwest::Body::wrap_stream(stream))
        .send()
        .await
        .expect("post chunked");
    assert_eq!(r.status(), 200);
    let v: serde_json::Value = r.json().await.expect("json");
    assert_eq!(v["bytes"], body.len());
}

#[tokio::test]
async fn connections_to_php_fpm_are_reused() {
    let s = site("");
    let c = client();
    // php-fpm's idle workers take turns accepting new connections, so sequential requests
    // on new connections land on different workers; on a kept connection, on the same one.
    let mut pids = std::collections::BTreeSet::new();
    for _ in 0..12 {
        let r = c.get(s.gw.https("/pid")).send().await.expect("get");
        pids.insert(r.text().await.expect("body"));
    }
    assert_eq!(pids.len(), 1, "workers: {pids:?}");
}

#[tokio::test]
async fn answers_without_a_length_keep_the_http_1_1_connection() {
    // PHP sends no Content-Length for an `echo`. Over HTTP/1.1 the gateway must frame the body
    // itself so that the same connection serves the next request: browsers and wrk rely on
    // it, and a close-delimited body under `Connection: keep-alive` costs a new TLS handshake
    // per request (wrk counts every one as a read error). An answer that PHP flushes in
    // pieces goes out chunked, as nginx does, each piece when it comes.
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let s = site("");
    let mut tls = e2e::tls_connect(s.gw.https_addr()).await;
    for round in 1..=3 {
        for (path, whole) in [("/hello", true), ("/pieces", false)] {
            tls.write_all(format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n").as_bytes())
                .await
                .unwrap_or_else(|e| {
                    panic!("round {round} {path}: the connection was not kept: {e}")
                });
            // One answer: up to its length or its last chunk, or whatever came before the
            // gateway closed.
            let mut answer = Vec::new();
            let mut buf = [0u8; 4096];
            let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
            let complete = |a: &[u8]| {
                let text = String::from_utf8_lossy(a).to_ascii_lowercase();
                let Some((head, body)) = text.split_once("\r\n\r\n") else {
                    return false;
                };
                match head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length: "))
                    .and_then(|n| n.trim().parse::<usize>().ok())
                {
                    Some(n) => body.len() >= n,
                    None => body.ends_with("0\r\n\r\n"),
                }
            };
            while !complete(&answer) {
                match tokio::time::timeout_at(deadline, tls.read(&mut buf)).await {
                    Ok(Ok(n)) if n > 0 => answer.extend_from_slice(&buf[..n]),
                    _ => break,
                }
            }
            let answer = String::from_utf8_lossy(&answer).to_ascii_lowercase();
            let at = format!("round {round} {path}: {answer}");
            assert!(answer.starts_with("http/1.1 200"), "{at}");
            if whole {
                // With its length when php-fpm's end came in the same read as the rest
                // (usual under load), chunked when it came just after.
                assert!(
                    answer.contains("\r\ncontent-length: 14\r\n")
                        || answer.contains("\r\ntransfer-encoding: chunked\r\n"),
                    "{at}"
                );
                assert!(
                    answer.contains("\r\n\r\nhello from php")
                        || answer.contains("\r\nhello from php\r\n0\r\n\r\n"),
                    "{at}"
                );
            } else {
                assert!(
                    answer.contains("\r\ntransfer-encoding: chunked\r\n"),
                    "{at}"
                );
                assert!(answer.contains("first piece"), "{at}");
                assert!(answer.contains("second piece"), "{at}");
                assert!(answer.ends_with("0\r\n\r\n"), "{at}");
            }
        }
    }
}

#[tokio::test]
async fn connections_closed_by_php_fpm_are_replaced() {
    // Each worker exits after one request, closing the kept connection behind it.
    let s = site_with("", "pm.max_requests = 1\n");
    let c = client();
    for i in 0..15 {
        let r = c.get(s.gw.https("/hello")).send().await.expect("get");
        assert_eq!(r.status(), 200, "request {i}");
        assert_eq!(r.text().await.expect("body"), "Hello from PHP");
    }
}

#[tokio::test]
async fn a_burst_above_max_children_is_served_without_waiting_for_idle_timeouts() {
    // Two workers, eight concurrent requests: kept connections must not hold the workers
    // the queued connections need.
    let s = site_with("", "pm.max_children = 2\n");
    let c = client();
    let started = std::time::Instant::now();
    let all = (0..8).map(|_| {
        let c = c.clone();
        let url = s.gw.https("/nap");
        async move {
            let r = c.get(url).send().await.expect("get");
            (r.status(), r.text().await.expect("body"))
        }
    });
    for (status, body) in futures_util::future::join_all(all).await {
        assert_eq!(status, 200);
        assert_eq!(body, "rested");
    }
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn php_fpm_down_is_502_and_unhealthy_is_503() {
    let mut s = site("");
    s.fpm.stop();
    let r = client()
        .get(s.gw.https("/hello"))
        .send()
        .await
        .expect("get");
    assert_eq!(r.status(), 502);

    let mut s = site("health_check: {interval_ms: 100, timeout_ms: 500, rise: 1, fall: 1}");
    s.fpm.stop();
    let c = client();
    let url = s.gw.https("/hello");
    assert!(
        eventually(Duration::from_secs(10), || async {
            c.get(&url)
                .send()
                .await
                .map(|r| r.status() == 503)
                .unwrap_or(false)
        })
        .await,
        "no 503 once php-fpm failed its health checks"
    );
}

#[tokio::test]
async fn websocket_upgrades_are_refused_on_a_fastcgi_route() {
    let s = site("");
    let url = format!("wss://127.0.0.1:{}/chat", s.gw.ports.https);
    match e2e::websocket(&url, None).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => assert_eq!(r.status(), 501),
        other => panic!("expected a 501, got {:?}", other.map(|(_, r)| r.status())),
    }
    let r = client()
        .get(s.gw.https("/hello"))
        .send()
        .await
        .expect("get");
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn a_slow_script_is_504() {
    let s = site("");
    let started = std::time::Instant::now();
    let r = client().get(s.gw.https("/slow")).send().await.expect("get");
    assert_eq!(r.status(), 504);
    assert!(started.elapsed() < Duration::from_millis(2900));
}

#[tokio::test]
async fn php_stderr_is_logged() {
    let s = site("");
    let r = client()
        .get(s.gw.https("/stderr"))
        .send()
        .await
        .expect("get");
    assert_eq!(r.text().await.expect("body"), "logged");
    assert!(
        eventually(Duration::from_secs(5), || async {
            s.gw.proc
                .logs()
                .contains("note from php for the gateway log")
        })
        .await,
        "gateway log:\n{}",
        s.gw.proc.logs()
    );
}

/// MD5 (RFC 1321), so the test needs no extra crate.
fn md5(data: &[u8]) -> u128 {
    const S: [u32; 64] = [
        7, 12, 17, 22, 7, 12, 17, 22, 7, 12, 17, 22, 7, 12, 17, 22, 5, 9, 14, 20, 5, 9, 14, 20, 5,
        9, 14, 20, 5, 9, 14, 20, 4, 11, 16, 23, 4, 11, 16, 23, 4, 11, 16, 23, 4, 11, 16, 23, 6, 10,
        15, 21, 6, 10, 15, 21, 6, 10, 15, 21, 6, 10, 15, 21,
    ];
    let k: Vec<u32> = (0..64)
        .map(|i| ((i as f64 + 1.0).sin().abs() * 4_294_967_296.0) as u32)
        .collect();
    let mut msg = data.to_vec();
    msg.push(0x80);
    while msg.len() % 64 != 56 {
        msg.push(0);
    }
    msg.extend_from_slice(&((data.len() as u64).wrapping_mul(8)).to_le_bytes());
    let (mut a0, mut b0, mut c0, mut d0) =
        (0x67452301u32, 0xefcdab89u32, 0x98badcfeu32, 0x10325476u32);
    for chunk in msg.chunks(64) {
        let m: Vec<u32> = chunk
            .chunks(4)
            .map(|w| u32::from_le_bytes([w[0], w[1], w[2], w[3]]))
            .collect();
        let (mut a, mut b, mut c, mut d) = (a0, b0, c0, d0);
        for i in 0..64 {
            let (f, g) = match i / 16 {
                0 => ((b & c) | (!b & d), i),
                1 => ((d & b) | (!d & c), (5 * i + 1) % 16),
                2 => (b ^ c ^ d, (3 * i + 5) % 16),
                _ => (c ^ (b | !d), (7 * i) % 16),
            };
            let f = f.wrapping_add(a).wrapping_add(k[i]).wrapping_add(m[g]);
            a = d;
            d = c;
            c = b;
            b = b.wrapping_add(f.rotate_left(S[i]));
        }
        a0 = a0.wrapping_add(a);
        b0 = b0.wrapping_add(b);
        c0 = c0.wrapping_add(c);
        d0 = d0.wrapping_add(d);
    }
    let mut out = [0u8; 16];
    out[..4].copy_from_slice(&a0.to_le_bytes());
    out[4..8].copy_from_slice(&b0.to_le_bytes());
    out[8..12].copy_from_slice(&c0.to_le_bytes());
    out[12..].copy_from_slice(&d0.to_le_bytes());
    u128::from_be_bytes(out)
}

#[test]
fn md5_matches_rfc_1321() {
    assert_eq!(
        format!("{:032x}", md5(b"")),
        "d41d8cd98f00b204e9800998ecf8427e"
    );
    assert_eq!(
        format!(
            "{:032x}",
            md5(b"The quick brown fox jumps over the lazy dog")
        ),
        "9e107d9d372bb6826bd81d3542a419d6"
    );
}

/// 48 MiB: more than the socket buffers between php-fpm, the gateway and the client hold, so an
/// unbuffered answer keeps PHP's worker writing until the client reads.
const LARGE_MIB: usize = 48;

const BIG_ANSWERS: &str = r#"<?php
$path = parse_url($_SERVER['REQUEST_URI'], PHP_URL_PATH);
if (str_ends_with($path, '/large')) {
    header('Content-Type: application/octet-stream');
    $mib = str_repeat('x', 1 << 20);
    for ($i = 0; $i < LARGE_MIB; $i++) { echo $mib; }
} elseif (str_ends_with($path, '/pattern')) {
    header('Content-Type: application/octet-stream');
    $n = (int) $_GET['n'];
    $out = '';
    for ($i = 0; $i < $n; $i++) { $out .= chr($i % 251); }
    echo $out;
} else {
    echo "hello";
}
"#;

/// php-fpm with ONE worker behind two routes to the same pool: `/buffered/` with response
/// buffering, `/` without.
fn one_worker_site() -> (Gateway, PhpFpm, Scratch) {
    let fpm = PhpFpm::start("pm.max_children = 1");
    let root = Scratch::new("php-one-worker");
    let script = BIG_ANSWERS.replace("LARGE_MIB", &LARGE_MIB.to_string());
    std::fs::write(root.path().join("index.php"), script).expect("write");
    let gw = Gateway::start(&format!(
        r#"
listen: {{https: "{{https}}"}}
tls: {{state_dir: state}}
limits: {{response_buffer_bytes: 65536}}
upstreams:
  php:
    protocol: fastcgi
    servers: ["{server}"]
    fastcgi: {{root: {root}}}
routes:
  - {{path: /buffered/, upstream: php, response_buffering: true}}
  - {{path: /, upstream: php}}
"#,
        server = fpm.server(),
        root = root.path().display(),
    ));
    (gw, fpm, root)
}

/// A client asks for `path` and reads only the first 64 KiB of the answer. Returns the head it
/// got and whether another request was answered within 3 s meanwhile.
async fn another_request_while_a_client_reads_slowly(gw: &Gateway, path: &str) -> (String, bool) {
    let (slow, head) = e2e::slow_reader(gw.https_addr(), path).await;
    let answered = tokio::time::timeout(
        Duration::from_secs(3),
        client().get(gw.https("/hello")).send(),
    )
    .await
    .is_ok_and(|r| r.is_ok_and(|r| r.status() == 200));
    drop(slow);
    (head, answered)
}

#[tokio::test]
async fn response_buffering_frees_the_only_php_worker_from_a_slow_reader() {
    let (gw, _fpm, _root) = one_worker_site();
    let (head, answered) =
        another_request_while_a_client_reads_slowly(&gw, "/buffered/large").await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        answered,
        "php-fpm's only worker was still busy feeding a slow client through a buffering route"
    );

    // The same answer unbuffered keeps the worker writing for as long as the client dawdles.
    let (gw, _fpm, _root) = one_worker_site();
    let (head, answered) = another_request_while_a_client_reads_slowly(&gw, "/large").await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        !answered,
        "without response buffering the slow reader should hold the only worker"
    );

    // A buffered answer larger than its memory part (64 KiB here) arrives whole, as PHP wrote it.
    let n = 3_000_000;
    let body = client()
        .get(gw.https(&format!("/buffered/pattern?n={n}")))
        .send()
        .await
        .expect("get")
        .bytes()
        .await
        .expect("body");
    assert_eq!(body.len(), n);
    assert!(body.iter().enumerate().all(|(i, &b)| b == (i % 251) as u8));
}

/// examples/php as README describes it, in front of a real php-fpm: `/params/<anything>` is
/// PHP's `$_SERVER` as JSON, `POST /upload` with a raw body answers its size and MD5, and
/// `robots.txt` is a static file that PHP never sees.
#[tokio::test]
async fn the_php_example_answers_its_documented_contract() {
    let example = e2e::workspace_root().join("examples/php");
    let fpm = PhpFpm::start("php_admin_value[post_max_size] = 64M\n");
    let gw = Gateway::start(&format!(
        r#"
listen: {{https: "{{https}}"}}
tls: {{state_dir: state}}
upstreams:
  php:
    protocol: fastcgi
    servers: ["{server}"]
    fastcgi: {{root: {root}/public, index: index.php, front_controller: /index.php}}
routes:
  - path: /
    static: {{root: {root}/public}}
    upstream: php
"#,
        server = fpm.server(),
        root = example.display(),
    ));
    let c = client();
    let r = c
        .get(gw.https("/params/a/b%20c?x=1"))
        .send()
        .await
        .expect("get");
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "application/json");
    let v: serde_json::Value = r.json().await.expect("$_SERVER as JSON");
    assert_eq!(v["REQUEST_URI"], "/params/a/b%20c?x=1");
    assert_eq!(v["QUERY_STRING"], "x=1");
    assert_eq!(v["REQUEST_METHOD"], "GET");

    let body: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
    let r = c
        .post(gw.https("/upload"))
        .header("content-type", "application/octet-stream")
        .body(body.clone())
        .send()
        .await
        .expect("post");
    assert_eq!(r.status(), 200);
    let v: serde_json::Value = r.json().await.expect("json");
    assert_eq!(v["bytes"], body.len());
    assert_eq!(v["md5"], format!("{:032x}", md5(&body)));

    let r = c.get(gw.https("/robots.txt")).send().await.expect("get");
    assert_eq!(r.status(), 200);
    let expected = std::fs::read_to_string(example.join("public/robots.txt")).expect("robots");
    assert_eq!(r.text().await.expect("body"), expected);
    let log = fpm.access_log();
    assert!(log.contains("GET /params/a/b%20c?x=1 200"), "{log}");
    assert!(log.contains("POST /upload 200"), "{log}");
    assert!(!log.contains("robots"), "{log}");
}

/// A broken chunked body on a route that streams bodies to php-fpm is the client's fault: 400
/// and a closed connection, as on every other route (it was a 500: a server error any client
/// could trigger).
#[tokio::test]
async fn a_broken_chunked_body_streamed_to_php_is_a_400() {
    let s = site("");
    let attack = b"POST /streamed/upload HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\n0x5\r\nhello\r\n0\r\n\r\n";
    let a = e2e::raw::over_tls(s.gw.https_addr(), attack, Duration::from_secs(5)).await;
    assert_eq!(a.statuses(), [400], "{}", a.text());
    assert!(a.closed, "kept open after a broken body: {}", a.text());
    assert!(
        s.gw.proc
            .logs()
            .contains("status=400 error=Downstream InvalidChunk"),
        "{}",
        s.gw.proc.logs()
    );
    let r = client()
        .get(s.gw.https("/hello"))
        .send()
        .await
        .expect("get");
    assert_eq!(r.status(), 200);
}

/// A FastCGI server that answers each request with `answer` (raw bytes, one write) after
/// `delay`, and closes: for answers php-fpm never gives, and for what php-fpm does not show,
/// which only a stand-in can do. Returns its `servers:` entry and the `FCGI_BEGIN_REQUEST`
/// flags of the requests it got, in order.
async fn fake_fpm(
    dir: &std::path::Path,
    answer: Vec<u8>,
    delay: Duration,
) -> (String, std::sync::Arc<std::sync::Mutex<Vec<u8>>>) {
    use tokio::io::AsyncWriteExt;
    let socket = dir.join("fake-fpm.sock");
    let listener = tokio::net::UnixListener::bind(&socket).expect("bind the fake php-fpm");
    let flags = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let log = flags.clone();
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            let (answer, log) = (answer.clone(), log.clone());
            tokio::spawn(async move {
                let Some(got) = fcgi_request(&mut conn).await else {
                    return;
                };
                if let Some(&f) = got.get(10) {
                    log.lock().expect("the flags").push(f);
                }
                tokio::time::sleep(delay).await;
                let _ = conn.write_all(&answer).await;
            });
        }
    });
    (format!("unix:{}", socket.display()), flags)
}

/// A request's records as a FastCGI stand-in reads them: the gateway sends
/// `FCGI_BEGIN_REQUEST`, the parameters and an empty `FCGI_STDIN` in one write, and the end is
/// that empty `FCGI_STDIN` record (type 5, length 0). `None`: closed before the end.
async fn fcgi_request(conn: &mut tokio::net::UnixStream) -> Option<Vec<u8>> {
    use tokio::io::AsyncReadExt;
    let mut got = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    while !got.ends_with(&[1, 5, 0, 1, 0, 0, 0, 0]) {
        match conn.read(&mut buf).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
    Some(got)
}

/// The gateway in front of a FastCGI stand-in at `server`, every path to it, with a document
/// root holding an `index.php` (the stand-in never reads it).
fn fake_site(server: &str) -> (Gateway, Scratch) {
    let root = Scratch::new("fake-fpm-root");
    std::fs::write(root.path().join("index.php"), "<?php").expect("write");
    let gw = Gateway::start(&format!(
        r#"
listen: {{https: "{{https}}"}}
tls: {{state_dir: state}}
upstreams:
  php:
    protocol: fastcgi
    servers: ["{server}"]
    fastcgi: {{root: {root}}}
routes:
  - path: /
    upstream: php
"#,
        root = root.path().display(),
    ));
    (gw, root)
}

fn fcgi_record(kind: u8, content: &[u8]) -> Vec<u8> {
    let len = u16::try_from(content.len()).expect("a short record");
    let mut r = vec![1, kind, 0, 1];
    r.extend_from_slice(&len.to_be_bytes());
    r.extend_from_slice(&[0, 0]);
    r.extend_from_slice(content);
    r
}

#[tokio::test]
async fn a_broken_record_right_after_a_whole_head_is_a_502_not_a_cut_answer() {
    // What arrives in one read: a STDOUT record with the whole head and a body, then a
    // record of an unknown protocol version. Nothing of it has reached the client yet (the
    // records that arrive together go out together), so the client gets a clean 502 rather
    // than a 200 head on a connection that is then cut.
    let dir = Scratch::new("fake-fpm");
    let mut answer = fcgi_record(6, b"Content-Type: text/plain\r\n\r\nhalf an answer");
    answer.extend_from_slice(&[9, 6, 0, 1, 0, 0, 0, 0]);
    let (server, _) = fake_fpm(dir.path(), answer, Duration::ZERO).await;
    let (gw, _root) = fake_site(&server);
    for attempt in ["first", "second"] {
        let r = client()
            .get(gw.https(&format!("/{attempt}")))
            .send()
            .await
            .expect("an answer, not a cut connection");
        assert_eq!(r.status(), 502, "{attempt}");
        let body = r.text().await.expect("the 502's body");
        assert!(!body.contains("half an answer"), "{attempt}: {body}");
    }
    assert!(
        gw.proc.logs().contains("unknown FastCGI version 9"),
        "the gateway says what was wrong"
    );
}

#[tokio::test]
async fn an_answer_php_fpm_sends_whole_goes_out_with_its_length() {
    // The head, the body and the end of the request in one write, as php-fpm sends a small
    // answer under load: the gateway has it all before writing anything, so it sends it with
    // a Content-Length in one piece instead of chunked (three flushed writes), and the
    // connection serves the next request.
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = Scratch::new("fake-fpm");
    let mut answer = fcgi_record(6, b"Content-Type: text/plain\r\n\r\nall of it at once");
    answer.extend_from_slice(&fcgi_record(3, &[0, 0, 0, 0, 0, 0, 0, 0]));
    let (server, _) = fake_fpm(dir.path(), answer, Duration::ZERO).await;
    let (gw, _root) = fake_site(&server);
    let mut tls = e2e::tls_connect(gw.https_addr()).await;
    for round in 1..=2 {
        tls.write_all(b"GET /whole HTTP/1.1\r\nHost: localhost\r\n\r\n")
            .await
            .unwrap_or_else(|e| panic!("round {round}: the connection was not kept: {e}"));
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        while !got.ends_with(b"all of it at once") {
            match tokio::time::timeout(Duration::from_secs(10), tls.read(&mut buf)).await {
                Ok(Ok(n)) if n > 0 => got.extend_from_slice(&buf[..n]),
                other => panic!(
                    "round {round}: {other:?} after {:?}",
                    String::from_utf8_lossy(&got)
                ),
            }
        }
        let text = String::from_utf8_lossy(&got).to_ascii_lowercase();
        assert!(text.starts_with("http/1.1 200"), "round {round}: {text}");
        assert!(
            text.contains("\r\ncontent-length: 17\r\n"),
            "round {round}: {text}"
        );
        assert!(!text.contains("transfer-encoding"), "round {round}: {text}");
    }
}

#[tokio::test]
async fn while_requests_wait_php_fpm_is_told_not_to_keep_the_connection() {
    // A request sent while another waits for its answer is on a connection the gateway will
    // close at the end (to free the worker for waiting requests), so it asks php-fpm to close
    // it itself (no FCGI_KEEP_CONN): php-fpm's worker then goes straight back to accept.
    // Alone, a request asks to keep its connection, for the next one.
    let dir = Scratch::new("fake-fpm");
    let mut answer = fcgi_record(6, b"Content-Type: text/plain\r\n\r\nok");
    answer.extend_from_slice(&fcgi_record(3, &[0, 0, 0, 0, 0, 0, 0, 0]));
    let (server, flags) = fake_fpm(dir.path(), answer, Duration::from_millis(400)).await;
    let (gw, _root) = fake_site(&server);
    let first = tokio::spawn(client().get(gw.https("/first")).send());
    tokio::time::sleep(Duration::from_millis(150)).await;
    let second = client()
        .get(gw.https("/second"))
        .send()
        .await
        .expect("second");
    assert_eq!(second.status(), 200);
    assert_eq!(first.await.expect("task").expect("first").status(), 200);
    let third = client()
        .get(gw.https("/third"))
        .send()
        .await
        .expect("third");
    assert_eq!(third.status(), 200);
    assert_eq!(
        *flags.lock().expect("the flags"),
        [1, 0, 1],
        "FCGI_KEEP_CONN: alone, while one waits, alone again"
    );
}

/// A FastCGI stand-in whose connections the test takes one by one: bound at `dir`, with the
/// gateway in front of it.
fn fake_listener(dir: &Scratch) -> (tokio::net::UnixListener, Gateway, Scratch) {
    let socket = dir.path().join("fake-fpm.sock");
    let listener = tokio::net::UnixListener::bind(&socket).expect("bind the fake php-fpm");
    let (gw, root) = fake_site(&format!("unix:{}", socket.display()));
    (listener, gw, root)
}

/// The next connection from the gateway and the request on it.
async fn next_request(listener: &tokio::net::UnixListener) -> (tokio::net::UnixStream, Vec<u8>) {
    let (mut conn, _) = tokio::time::timeout(Duration::from_secs(10), listener.accept())
        .await
        .expect("the gateway connects in time")
        .expect("accept");
    let request = fcgi_request(&mut conn).await.expect("a whole request");
    (conn, request)
}

/// A whole answer with this body, in the records php-fpm writes at once.
fn fcgi_answer(body: &[u8]) -> Vec<u8> {
    let mut head = b"Content-Type: text/plain\r\n\r\n".to_vec();
    head.extend_from_slice(body);
    let mut a = fcgi_record(6, &head);
    a.extend_from_slice(&fcgi_record(3, &[0, 0, 0, 0, 0, 0, 0, 0]));
    a
}

/// Read stream 1's answer body on a raw HTTP/2 connection to its end.
async fn h2_body(h2: &mut e2e::TlsClient) -> Vec<u8> {
    use e2e::h2 as raw;
    let mut body = Vec::new();
    loop {
        match raw::read_frame(h2, Duration::from_secs(10)).await {
            raw::Read::Frame(f) if f.kind == raw::DATA && f.stream == 1 => {
                body.extend_from_slice(&f.payload);
                if f.flags & raw::END_STREAM != 0 {
                    return body;
                }
            }
            raw::Read::Frame(f) if f.kind == raw::RST_STREAM || f.kind == raw::GOAWAY => {
                panic!("the answer was cut: {f:?}")
            }
            raw::Read::Frame(_) => {}
            other => panic!("no whole answer: {other:?}, got {body:?}"),
        }
    }
}

#[tokio::test]
async fn a_kept_connection_serves_the_next_request_while_the_client_still_takes_the_answer() {
    // Once FCGI_END_REQUEST is read the gateway holds the whole answer, so php-fpm's
    // connection goes back to the idle list then, not after the client took the answer (a
    // worker on a kept connection is held until then). Here an HTTP/2 client that gives no
    // flow-control window holds the first answer's body back, and the next request is sent on
    // the same connection all the same (before: on a new one, the kept one still held).
    use e2e::h2 as raw;
    use tokio::io::AsyncWriteExt;
    let dir = Scratch::new("fake-fpm");
    let (listener, gw, _root) = fake_listener(&dir);

    let mut h2 = raw::connect(gw.https_addr()).await;
    let mut opening = raw::PREFACE.to_vec();
    opening.extend_from_slice(&raw::settings(&[(raw::INITIAL_WINDOW_SIZE, 0)]));
    opening.extend_from_slice(&raw::get(1, "/first"));
    assert!(raw::send(&mut h2, &opening).await, "the h2 request");
    let (mut conn, request) = next_request(&listener).await;
    assert_eq!(request.get(10), Some(&1), "FCGI_KEEP_CONN asked when alone");
    conn.write_all(&fcgi_answer(b"the first answer"))
        .await
        .expect("first answer");
    // The head has gone out: the gateway is done with php-fpm's answer, only the body waits.
    loop {
        match raw::read_frame(&mut h2, Duration::from_secs(10)).await {
            raw::Read::Frame(f) if f.kind == raw::HEADERS && f.stream == 1 => break,
            raw::Read::Frame(_) => {}
            other => panic!("no head: {other:?}"),
        }
    }

    let second = tokio::spawn(client().get(gw.https("/second")).send());
    tokio::select! {
        request = fcgi_request(&mut conn) => {
            assert!(request.is_some(), "the kept connection was closed");
            conn.write_all(&fcgi_answer(b"second")).await.expect("second answer");
        }
        accepted = listener.accept() => panic!(
            "the next request came on a new connection ({:?}): the kept one was held while \
             the client had no room for the first answer",
            accepted.map(|_| ())
        ),
        _ = tokio::time::sleep(Duration::from_secs(10)) => panic!("no second request"),
    }
    let second = second.await.expect("task").expect("second");
    assert_eq!(second.status(), 200);
    assert_eq!(second.text().await.expect("body"), "second");

    // The first client makes room and gets its whole answer.
    let mut more = raw::frame(raw::SETTINGS, raw::ACK, 0, &[]);
    more.extend_from_slice(&raw::frame(
        raw::WINDOW_UPDATE,
        0,
        1,
        &65_535u32.to_be_bytes(),
    ));
    assert!(raw::send(&mut h2, &more).await, "the window update");
    assert_eq!(h2_body(&mut h2).await, b"the first answer");
}

#[tokio::test]
async fn php_fpm_sees_the_end_of_a_connection_it_is_told_to_close_once_the_request_is_sent() {
    // php-fpm, told not to keep a connection, shuts it down after its answer and reads it to
    // its end before it takes the next connection. The gateway has nothing more to send once
    // the request is written, so it shuts its sending side then: php-fpm finds the end at once
    // instead of sleeping until the gateway has read the answer and closed the connection.
    // Here the stand-in checks for the end before it answers (before: it never came).
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = Scratch::new("fake-fpm");
    let (listener, gw, _root) = fake_listener(&dir);
    // A first request waits for its answer, so the second is on a connection php-fpm is told
    // to close (while_requests_wait_php_fpm_is_told_not_to_keep_the_connection).
    let first = tokio::spawn(client().get(gw.https("/first")).send());
    let (mut first_conn, request) = next_request(&listener).await;
    assert_eq!(request.get(10), Some(&1), "FCGI_KEEP_CONN asked when alone");
    let second = tokio::spawn(client().get(gw.https("/second")).send());
    let (mut conn, request) = next_request(&listener).await;
    assert_eq!(
        request.get(10),
        Some(&0),
        "FCGI_KEEP_CONN off while one waits"
    );

    let mut rest = [0u8; 64];
    let end = tokio::time::timeout(Duration::from_secs(10), conn.read(&mut rest)).await;
    assert!(
        matches!(end, Ok(Ok(0))),
        "php-fpm would wait for the end of the connection after its answer: {end:?}"
    );
    // The answer still goes through whole, and the first request's too.
    conn.write_all(&fcgi_answer(b"second"))
        .await
        .expect("second answer");
    conn.shutdown().await.expect("shutdown, as php-fpm does");
    first_conn
        .write_all(&fcgi_answer(b"first"))
        .await
        .expect("first answer");
    for (task, body) in [(second, "second"), (first, "first")] {
        let r = task.await.expect("task").expect(body);
        assert_eq!(r.status(), 200, "{body}");
        assert_eq!(r.text().await.expect("body"), body);
    }
}
