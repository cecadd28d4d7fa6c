//! One path per concern: a request reaches the app through pingora's proxy path (body-less
//! requests), the relay (held bodies, buffered answers), FastCGI (php-fpm) or the WebSocket
//! tunnel. The same fault must give the same status and the same log line on each, the same
//! retry rule must hold on each, and every answer must pass the same finisher (HSTS over TLS
//! only, framing, `Vary`).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use e2e::raw::over_tcp;
use e2e::{client_builder, eventually, free_port, Gateway, Scratch, Stub};

const HANDSHAKE: &str = "GET /cable HTTP/1.1\r\nHost: localhost\r\nConnection: Upgrade\r\n\
                         Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\
                         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n";

/// Send `request` on a new TLS connection and read one answer: its head, and its body when it
/// says its length (the connection may stay open), else until the gateway closes it. `None`
/// when nothing complete came within `wait`.
async fn ask(addr: SocketAddr, request: &str, wait: Duration) -> Option<e2e::raw::Response> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tls = e2e::tls_connect(addr).await;
    tls.write_all(request.as_bytes()).await.expect("write");
    let mut got = Vec::new();
    let complete = |got: &[u8]| {
        let a = e2e::raw::Answer {
            bytes: got.to_vec(),
            closed: false,
            elapsed: Duration::ZERO,
        };
        a.responses().into_iter().next().filter(|r| {
            r.header("content-length")
                .and_then(|l| l.parse::<usize>().ok())
                .is_some_and(|l| r.body.len() >= l)
        })
    };
    let _ = tokio::time::timeout(wait, async {
        let mut buf = [0u8; 4096];
        loop {
            match tls.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
            if complete(&got).is_some() {
                return;
            }
        }
    })
    .await;
    let a = e2e::raw::Answer {
        bytes: got,
        closed: true,
        elapsed: Duration::ZERO,
    };
    a.responses().into_iter().next()
}

/// A port whose accept queue is full: the kernel drops new SYNs, so a connect hangs until the
/// connector gives up, as with a server that does not accept in time. Keep the returned
/// values alive for as long as the port must stay stuck.
async fn unaccepting() -> (
    SocketAddr,
    tokio::net::TcpListener,
    Vec<tokio::net::TcpStream>,
) {
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket
        .bind("127.0.0.1:0".parse().expect("addr"))
        .expect("bind");
    let listener = socket.listen(0).expect("listen");
    let addr = listener.local_addr().expect("addr");
    let mut queued = Vec::new();
    loop {
        let connect = tokio::net::TcpStream::connect(addr);
        match tokio::time::timeout(Duration::from_millis(300), connect).await {
            Ok(Ok(s)) => queued.push(s),
            Ok(Err(e)) => panic!("connect to the stuck port: {e}"),
            // The queue is full: this connect hung.
            Err(_) => break,
        }
        assert!(queued.len() < 64, "the accept queue never filled");
    }
    (addr, listener, queued)
}

/// An app that accepts connections and reads requests but never answers.
async fn silent() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let mut open = Vec::new();
        while let Ok((s, _)) = listener.accept().await {
            // Held, never answered (the kernel takes what the gateway writes).
            open.push(s);
        }
    });
    addr
}

/// A document root with a front controller, so FastCGI asks php-fpm (or tries to).
fn php_root() -> Scratch {
    let root = Scratch::new("paths-php");
    std::fs::write(root.path().join("index.php"), "<?php echo 'hi';").expect("write");
    root
}

/// One pool of each protocol on `server`, and a route for each path to it: `/php/` FastCGI,
/// `/buffered/` the relay (answers read ahead), `/cable` the tunnel, anything else pingora's
/// proxy path for body-less requests and the relay for held bodies.
fn every_path(server: &str, root: &Scratch, pool: &str) -> Gateway {
    Gateway::start(&format!(
        r#"
listen: {{https: "{{https}}"}}
tls: {{state_dir: state}}
upstreams:
  app: {{servers: ["{server}"], {pool}}}
  php: {{protocol: fastcgi, servers: ["{server}"], fastcgi: {{root: {root}}}, {pool}}}
routes:
  - {{path: /php/, upstream: php}}
  - {{path: /buffered/, upstream: app, response_buffering: true}}
  - {{path: /cable, upstream: app, websocket: true}}
  - {{path: /, upstream: app}}
"#,
        root = root.path().display()
    ))
}

/// The request of each path, as raw HTTP/1.1: (what serves it, request bytes).
fn requests() -> Vec<(&'static str, String)> {
    vec![
        (
            "upstream",
            "GET /plain HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n".into(),
        ),
        (
            "upstream",
            "POST /held HTTP/1.1\r\nHost: localhost\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello"
                .into(),
        ),
        (
            "upstream",
            "GET /buffered/x HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n".into(),
        ),
        (
            "fastcgi",
            "GET /php/x HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n".into(),
        ),
        ("tunnel", HANDSHAKE.into()),
    ]
}

/// The gateway's log line for a failed request served `by`, with `status`, naming `server`.
fn failure_line(gw: &Gateway, by: &str, status: u16, server: &str) -> Option<String> {
    gw.proc
        .logs()
        .lines()
        .find(|l| {
            l.contains("upstream failed")
                && l.contains(&format!("by=\"{by}\""))
                && l.contains(&format!("status={status} "))
                && l.contains(&format!("server={server} "))
        })
        .map(String::from)
}

#[tokio::test]
async fn a_server_that_does_not_accept_in_time_is_a_504_on_every_path() {
    // nginx: "upstream timed out while connecting" is a 504, whatever the protocol.
    let (stuck, _listener, _queued) = unaccepting().await;
    let root = php_root();
    let gw = every_path(&stuck.to_string(), &root, "connect_timeout_ms: 400");
    let problems = expect_on_every_path(&gw, 504, "the app did not answer in time", 5).await;
    let problems = problems.into_iter().chain(expect_lines(
        &gw,
        &["upstream", "fastcgi", "tunnel"],
        504,
        &stuck.to_string(),
        "did not accept the connection in time",
    ));
    let problems: Vec<String> = problems.collect();
    assert!(
        problems.is_empty(),
        "{problems:#?}
{}",
        gw.proc.logs()
    );
}

/// Send each path's request; what differs from `status` with `reason` within `within_s`.
async fn expect_on_every_path(
    gw: &Gateway,
    status: u16,
    reason: &str,
    within_s: u64,
) -> Vec<String> {
    let mut problems = Vec::new();
    for (by, request) in requests() {
        let started = Instant::now();
        let answer = ask(gw.https_addr(), &request, Duration::from_secs(15)).await;
        let took = started.elapsed();
        let Some(r) = answer else {
            problems.push(format!("{by} {}: no answer", first_line(&request)));
            continue;
        };
        let phrase = http::StatusCode::from_u16(status)
            .ok()
            .and_then(|s| s.canonical_reason())
            .unwrap_or("");
        let want = format!("{status} {phrase}: {reason}\n");
        if r.status != status || r.body_text() != want {
            problems.push(format!(
                "{by} {}: {} {:?}",
                first_line(&request),
                r.status,
                r.body_text()
            ));
        }
        if took > Duration::from_secs(within_s) {
            problems.push(format!("{by} {}: took {took:?}", first_line(&request)));
        }
    }
    problems
}

fn first_line(request: &str) -> &str {
    request.lines().next().unwrap_or("")
}

/// The paths `by` that have no failure log line with `status`, naming `server`, saying `what`.
fn expect_lines(gw: &Gateway, by: &[&str], status: u16, server: &str, what: &str) -> Vec<String> {
    by.iter()
        .filter(|by| !failure_line(gw, by, status, server).is_some_and(|l| l.contains(what)))
        .map(|by| {
            format!(
                "{by}: no \"upstream failed\" line with status={status}, server={server}, {what:?}"
            )
        })
        .collect()
}

#[tokio::test]
async fn an_app_silent_past_read_timeout_is_a_504_on_every_path() {
    let app = silent().await;
    let root = php_root();
    let gw = every_path(&app.to_string(), &root, "read_timeout_ms: 1000");
    // The pool's read timeout on the tunnel as well (its own 10 s bound is the most an
    // upgrade waits).
    let mut problems = expect_on_every_path(&gw, 504, "the app did not answer in time", 4).await;
    problems.extend(expect_lines(
        &gw,
        &["upstream", "fastcgi", "tunnel"],
        504,
        &app.to_string(),
        "did not answer in time",
    ));
    assert!(problems.is_empty(), "{problems:#?}\n{}", gw.proc.logs());
}

#[tokio::test]
async fn a_refused_connect_with_no_server_left_is_a_502_on_every_path() {
    // Two servers: `up` passes its health checks until it is killed, `down` never listens and
    // is marked down by the first check. A request that finds `up` refusing has no server
    // left to try: the refusal is the answer (502) on every path, not "no healthy server".
    let mut up = Stub::start("up");
    let down = format!("127.0.0.1:{}", free_port());
    let gw = Gateway::start(&format!(
        r#"
listen: {{https: "{{https}}", admin: "{{admin}}"}}
tls: {{state_dir: state}}
upstreams:
  app:
    servers: ["{up}", "{down}"]
    health_check: {{path: /ping, interval_ms: 10000, timeout_ms: 500, rise: 1, fall: 1}}
routes:
  - {{path: /cable, upstream: app, websocket: true}}
  - {{path: /, upstream: app}}
"#,
        up = up.addr
    ));
    let one_up = eventually(Duration::from_secs(5), || async {
        gw.healthy_servers("app").await == 1
    })
    .await;
    assert!(one_up, "the dead server was not marked down");
    up.proc.kill();
    // Before the next health check (10 s) notices.
    let mut problems = Vec::new();
    for (by, request) in requests()
        .into_iter()
        .filter(|(by, r)| *by != "fastcgi" && !r.contains("/buffered/"))
    {
        let r = ask(gw.https_addr(), &request, Duration::from_secs(5)).await;
        let got = r.as_ref().map(|r| (r.status, r.body_text()));
        if got
            != Some((
                502,
                "502 Bad Gateway: the app did not answer properly\n".into(),
            ))
        {
            problems.push(format!("{by} {}: {got:?}", first_line(&request)));
        }
    }
    problems.extend(expect_lines(
        &gw,
        &["upstream", "tunnel"],
        502,
        &up.addr.to_string(),
        "refused",
    ));
    assert!(problems.is_empty(), "{problems:#?}\n{}", gw.proc.logs());
}

fn hsts_config(listen: &str, app: &Stub, files: &Scratch) -> String {
    format!(
        r#"
listen: {listen}
tls: {{state_dir: state, hsts: {{max_age: 600}}}}
upstreams:
  app: {{servers: ["{app}"]}}
routes:
  - {{path: /held, upstream: app}}
  - {{path: /files/, static: {{root: {root}}}}}
  - {{path: /, static: {{root: {root}}}, upstream: app}}
"#,
        app = app.addr,
        root = files.path().display()
    )
}

#[tokio::test]
async fn hsts_goes_with_every_answer_over_tls_and_never_over_plain_http() {
    let app = Stub::start("app");
    let files = Scratch::new("hsts-files");
    std::fs::write(files.path().join("page.html"), "<p>hi</p>").expect("write");
    let tls = Gateway::start(&hsts_config(r#"{https: "{https}"}"#, &app, &files));
    let plain = Gateway::start(&hsts_config(r#"{http: "{http}"}"#, &app, &files));
    let h1 = client_builder().http1_only().build().expect("client");
    // A static file, the app on pingora's path, a held upload through the relay, and the
    // gateway's own errors (no route, no such file).
    let cases = [
        ("GET", "/page.html", 200),
        ("GET", "/ping", 200),
        ("POST", "/held/echo", 404),
        ("GET", "/files/missing", 404),
    ];
    let mut problems = Vec::new();
    for (method, path, status) in cases {
        let method: http::Method = method.parse().expect("method");
        let body = if method == http::Method::POST {
            "x"
        } else {
            ""
        };
        for (over, url) in [("TLS", tls.https(path)), ("plain HTTP", plain.http(path))] {
            let r = h1
                .request(method.clone(), url)
                .body(body)
                .send()
                .await
                .expect("request");
            assert_eq!(r.status(), status, "{method} {path} over {over}");
            let hsts = r.headers().get("strict-transport-security");
            // RFC 6797 §8.1: a UA ignores it over plain HTTP; nginx's docs warn against
            // sending it there.
            let want = (over == "TLS").then_some("max-age=600");
            if hsts.map(|v| v.to_str().unwrap_or("?")) != want {
                problems.push(format!("{method} {path} over {over}: {hsts:?}"));
            }
        }
    }
    assert!(problems.is_empty(), "{problems:#?}");
}

/// A route to the app on pingora's path and the same app with its answers read ahead (the
/// relay) under the host `buffered.test`.
fn two_paths(app: &Stub) -> Gateway {
    Gateway::start(&format!(
        r#"
listen: {{http: "{{http}}"}}
upstreams:
  app: {{servers: ["{app}"]}}
routes:
  - {{host: buffered.test, path: /, upstream: app, response_buffering: true}}
  - {{path: /, upstream: app}}
"#,
        app = app.addr
    ))
}

#[tokio::test]
async fn an_http_1_0_client_never_gets_chunked_framing() {
    // RFC 9112 §6.1: no Transfer-Encoding in an answer to an HTTP/1.0 request; such a client
    // cannot read it. The answer is close-delimited instead, as nginx and FastCGI send it.
    let app = Stub::start("app");
    let gw = two_paths(&app);
    let addr: SocketAddr = ([127, 0, 0, 1], gw.ports.http).into();
    for host in ["localhost", "buffered.test"] {
        let request = format!(
            "GET /stream?n=3&interval_ms=10&format=chunked HTTP/1.0\r\nHost: {host}\r\n\r\n"
        );
        let a = over_tcp(addr, request.as_bytes(), Duration::from_secs(5)).await;
        let text = a.text();
        let (head, body) = text.split_once("\r\n\r\n").expect("an answer");
        assert!(head.starts_with("HTTP/1.1 200"), "{host}: {head}");
        assert!(
            !head.to_ascii_lowercase().contains("transfer-encoding"),
            "{host}: {head}"
        );
        assert_eq!(body, "tick 1\ntick 2\ntick 3\n", "{host}");
        assert!(
            a.closed,
            "{host}: a close-delimited answer ends with the connection"
        );
    }
}

#[tokio::test]
async fn a_head_request_is_told_what_varies_on_every_path() {
    // The head of a HEAD answer is the head a GET would get: `Vary: Accept-Encoding` for a
    // body that could have been compressed, on the relay as on pingora's path.
    let app = Stub::start("app");
    let gw = two_paths(&app);
    let c = client_builder().http1_only().build().expect("client");
    for host in ["localhost", "buffered.test"] {
        for method in [http::Method::GET, http::Method::HEAD] {
            let r = c
                .request(method.clone(), gw.http("/body/5000"))
                .header("host", host)
                .header("accept-encoding", "gzip")
                .send()
                .await
                .expect("request");
            assert_eq!(r.status(), 200);
            assert_eq!(
                r.headers().get("vary").map(|v| v.to_str().unwrap_or("")),
                Some("Accept-Encoding"),
                "{host} {method}"
            );
        }
    }
}
