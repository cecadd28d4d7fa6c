//! Attacks with request headers (issue 15): what a client may tell the app about itself, which
//! fields it may strip, and bodies framed with codings the gateway does not decode.
//!
//! Each test sends the raw bytes an attacker would, checks the answer, checks what the app
//! (backend-stub's request log, or php-fpm's `$_SERVER`) received, then checks that a fresh
//! request still works.

use std::net::SocketAddr;
use std::time::Duration;

use e2e::{client, client_builder, tls_connect, Gateway, PhpFpm, Scratch, Stub};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn config(app: &Stub, extra: &str) -> String {
    format!(
        r#"
listen: {{https: "{{https}}"}}
tls: {{state_dir: state}}
upstreams: {{app: {{servers: ["{}"]}}}}
{extra}
routes:
  - {{path: /cable, upstream: app, websocket: true}}
  - {{path: /, upstream: app}}
"#,
        app.addr
    )
}

/// Every forwarding header a framework or library is known to read, spelled as a client would
/// forge it. Rack trusts `Forwarded` from a loopback proxy; Laravel and Symfony read
/// `X-Forwarded-Prefix` / `-Port` behind a trusted proxy; IIS-era code reads `X-Original-URL`.
const FORGED: &[(&str, &str)] = &[
    ("Forwarded", "for=6.6.6.6;proto=http;host=evil.example"),
    ("X-Forwarded-For", "6.6.6.6"),
    ("X-Forwarded-Proto", "http"),
    ("X-Forwarded-Host", "evil.example"),
    ("X-Forwarded-Port", "80"),
    ("X-Forwarded-Prefix", "/evil"),
    ("X-Forwarded-Ssl", "off"),
    ("X-Forwarded-Scheme", "http"),
    ("X-Forwarded-Server", "evil.example"),
    ("X-Real-IP", "6.6.6.6"),
    ("Client-IP", "6.6.6.6"),
    ("True-Client-IP", "6.6.6.6"),
    ("X-Client-IP", "6.6.6.6"),
    ("X-Cluster-Client-IP", "6.6.6.6"),
    ("X-Original-URL", "/admin"),
    ("X-Rewrite-URL", "/admin"),
    ("Front-End-Https", "off"),
    ("X-Url-Scheme", "http"),
    // The same names with underscores: Puma and other servers fold `_` and `-` together.
    ("X_Forwarded_Port", "80"),
    ("X_Forwarded_Prefix", "/evil"),
];

fn forged_headers() -> String {
    FORGED
        .iter()
        .map(|(k, v)| format!("{k}: {v}\r\n"))
        .collect()
}

/// What the gateway itself says about a client on 127.0.0.1 over TLS on `port`; every other
/// forwarding header must be gone.
fn assert_only_the_gateways_word(headers: &Value, port: u16, context: &str) {
    let own = [
        ("x-forwarded-for", "127.0.0.1".to_string()),
        ("x-real-ip", "127.0.0.1".to_string()),
        ("x-forwarded-proto", "https".to_string()),
        ("x-forwarded-host", format!("localhost:{port}")),
        ("x-forwarded-port", port.to_string()),
    ];
    for (name, value) in &own {
        assert_eq!(
            headers[name].as_str(),
            Some(value.as_str()),
            "{context}: {name} should be the gateway's own value; the app got {headers}"
        );
    }
    for (name, _) in FORGED {
        let name = name.to_ascii_lowercase();
        if own.iter().any(|(n, _)| *n == name) {
            continue;
        }
        assert!(
            headers.get(&name).is_none(),
            "{context}: a client's {name} reached the app: {headers}"
        );
    }
}

/// Send `request` on a fresh TLS connection; everything the gateway answered, and whether it
/// closed the connection within `wait`.
async fn exchange(addr: SocketAddr, request: &[u8], wait: Duration) -> (String, bool) {
    let mut tls = tls_connect(addr).await;
    tls.write_all(request).await.expect("write");
    let mut out = Vec::new();
    let closed = matches!(
        tokio::time::timeout(wait, tls.read_to_end(&mut out)).await,
        Ok(Ok(_)) | Ok(Err(_))
    );
    (String::from_utf8_lossy(&out).into_owned(), closed)
}

/// Read one answer's head (up to the blank line) from a connection left open.
async fn read_head(tls: &mut e2e::TlsClient) -> String {
    let mut got = Vec::new();
    let mut byte = [0u8; 1];
    while !got.ends_with(b"\r\n\r\n") {
        let n = tokio::time::timeout(Duration::from_secs(10), tls.read(&mut byte))
            .await
            .expect("an answer in time")
            .expect("read");
        assert!(
            n > 0,
            "closed before the head ended: {:?}",
            String::from_utf8_lossy(&got)
        );
        got.push(byte[0]);
    }
    String::from_utf8_lossy(&got).into_owned()
}

async fn logged(app: &Stub, path: &str) -> Vec<Value> {
    app.received()
        .await
        .into_iter()
        .filter(|r| r["path"] == path)
        .collect()
}

async fn a_fresh_request_works(gw: &Gateway) {
    let r = client().get(gw.https("/ping")).send().await.expect("get");
    assert_eq!(r.status(), 200, "a fresh request after the attack");
}

#[tokio::test]
async fn forged_forwarding_headers_never_reach_the_app_on_any_path() {
    let app = Stub::start("app");
    let gw = Gateway::start(&config(&app, ""));
    let port = gw.ports.https;
    let forged = forged_headers();

    // Body-less GET: pingora's proxy path.
    let get = format!(
        "GET /echo/get HTTP/1.1\r\nHost: localhost:{port}\r\n{forged}Connection: close\r\n\r\n"
    );
    let (answer, _) = exchange(gw.https_addr(), get.as_bytes(), Duration::from_secs(10)).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");

    // POST with a body: held whole, then sent by the relay.
    let post = format!(
        "POST /echo/post HTTP/1.1\r\nHost: localhost:{port}\r\n{forged}Content-Length: 5\r\nConnection: close\r\n\r\nhello"
    );
    let (answer, _) = exchange(gw.https_addr(), post.as_bytes(), Duration::from_secs(10)).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");

    // A WebSocket handshake: the gateway's own tunnel to the app.
    let mut tls = tls_connect(gw.https_addr()).await;
    let upgrade = format!(
        "GET /cable HTTP/1.1\r\nHost: localhost:{port}\r\n{forged}Connection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    );
    tls.write_all(upgrade.as_bytes()).await.expect("write");
    let head = read_head(&mut tls).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    drop(tls);

    for path in ["/echo/get", "/echo/post", "/cable"] {
        let seen = logged(&app, path).await;
        assert_eq!(seen.len(), 1, "{path}: {seen:?}");
        assert_only_the_gateways_word(&seen[0]["headers"], port, path);
    }
    a_fresh_request_works(&gw).await;
}

#[tokio::test]
async fn forged_forwarding_headers_never_reach_php() {
    let fpm = PhpFpm::start("");
    let root = Scratch::new("php-forwarding");
    std::fs::write(
        root.path().join("index.php"),
        "<?php header('Content-Type: application/json'); echo json_encode($_SERVER);",
    )
    .expect("write");
    let gw = Gateway::start(&format!(
        r#"
listen: {{https: "{{https}}"}}
tls: {{state_dir: state}}
upstreams:
  php: {{protocol: fastcgi, servers: ["{}"], fastcgi: {{root: {}}}}}
routes:
  - {{path: /, upstream: php}}
"#,
        fpm.server(),
        root.path().display()
    ));
    let port = gw.ports.https;
    let request = format!(
        "GET /index.php HTTP/1.1\r\nHost: localhost:{port}\r\n{}Connection: close\r\n\r\n",
        forged_headers()
    );
    let (answer, _) = exchange(gw.https_addr(), request.as_bytes(), Duration::from_secs(10)).await;
    let body = answer.split("\r\n\r\n").nth(1).unwrap_or_default();
    // The answer may be chunked: the JSON object is between the first `{` and the last `}`.
    let json = &body[body.find('{').unwrap_or(0)..=body.rfind('}').unwrap_or(0)];
    let server: Value = serde_json::from_str(json).unwrap_or_else(|e| panic!("{e}: {answer}"));
    // What php-fpm's `$_SERVER` says, as the HTTP_* parameters of the same headers.
    let mut as_headers = serde_json::Map::new();
    for (k, v) in server.as_object().expect("object") {
        if let Some(name) = k.strip_prefix("HTTP_") {
            as_headers.insert(name.to_ascii_lowercase().replace('_', "-"), v.clone());
        }
    }
    assert_only_the_gateways_word(&Value::Object(as_headers), port, "php-fpm");
    assert_eq!(server["REMOTE_ADDR"], "127.0.0.1");
    assert_eq!(server["HTTPS"], "on");

    let r = client()
        .get(gw.https("/index.php"))
        .send()
        .await
        .expect("get");
    assert_eq!(r.status(), 200, "a fresh request after the attack");
}

#[tokio::test]
async fn a_trusted_proxy_is_still_believed() {
    // The load balancer in front (here: the test, on loopback) says who the client is.
    let app = Stub::start("app");
    let gw = Gateway::start(&config(&app, "proxy: {trusted_proxies: [127.0.0.1/32]}"));
    let r = client_builder()
        .http1_only()
        .build()
        .expect("client")
        .get(gw.https("/echo/trusted"))
        .header("x-forwarded-for", "198.51.100.7")
        .header("x-forwarded-proto", "https")
        .header("x-forwarded-port", "443")
        .header("x-forwarded-prefix", "/shop")
        .header("forwarded", "for=198.51.100.7;proto=https")
        .send()
        .await
        .expect("get");
    assert_eq!(r.status(), 200);
    let seen = logged(&app, "/echo/trusted").await;
    let h = &seen[0]["headers"];
    assert_eq!(h["x-forwarded-for"], "198.51.100.7, 127.0.0.1");
    assert_eq!(h["x-real-ip"], "198.51.100.7");
    assert_eq!(h["x-forwarded-port"], "443");
    assert_eq!(h["x-forwarded-prefix"], "/shop");
    assert_eq!(
        h["forwarded"],
        "for=198.51.100.7;proto=https, for=127.0.0.1"
    );
}

#[tokio::test]
async fn connection_header_cannot_strip_host_or_other_end_to_end_fields() {
    let app = Stub::start("app");
    let gw = Gateway::start(&config(&app, ""));
    let port = gw.ports.https;
    // RFC 9110 §7.6.1 lets a sender name hop-by-hop fields in Connection; naming Host (or the
    // client's credentials) there would make the gateway delete them on the app's behalf.
    // Both ways to the app: pingora's proxy (GET) and the relay (POST, body held).
    for (method, body) in [("GET", ""), ("POST", "hello")] {
        let path = format!("/echo/conn-{method}");
        let request = format!(
            "{method} {path} HTTP/1.1\r\nHost: shop.example:{port}\r\nCookie: session=1\r\n\
             Authorization: Bearer t\r\nX-Private: secret\r\nContent-Length: {}\r\n\
             Connection: Host, Cookie, Authorization, Content-Length, X-Forwarded-For, X-Private, close\r\n\r\n{body}",
            body.len()
        );
        let (answer, _) =
            exchange(gw.https_addr(), request.as_bytes(), Duration::from_secs(10)).await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{method}: {answer}");
        let seen = logged(&app, &path).await;
        assert_eq!(seen.len(), 1, "{method}: {seen:?}");
        let h = &seen[0]["headers"];
        assert_eq!(
            h["host"],
            format!("shop.example:{port}"),
            "{method}: the app lost Host: {h}"
        );
        assert_eq!(h["cookie"], "session=1", "{method}: {h}");
        assert_eq!(h["authorization"], "Bearer t", "{method}: {h}");
        assert_eq!(h["x-forwarded-for"], "127.0.0.1", "{method}: {h}");
        // A real hop-by-hop extension field is still removed.
        assert!(h.get("x-private").is_none(), "{method}: {h}");
        assert!(h.get("connection").is_none(), "{method}: {h}");
    }
    a_fresh_request_works(&gw).await;
}

#[tokio::test]
async fn transfer_codings_other_than_chunked_are_refused_with_501() {
    let app = Stub::start("app");
    let gw = Gateway::start(&config(&app, ""));
    let body = "5\r\nhello\r\n0\r\n\r\n";
    // Chunked last but with other codings: the gateway's 501 (nginx's answer). Chunked not
    // last: pingora's own 400 before any routing (RFC 9112 §6.3: the length cannot be
    // determined, "MUST respond with 400 and close").
    for (n, (te, status)) in [
        ("Transfer-Encoding: gzip, chunked", 501),
        ("Transfer-Encoding: chunked, chunked", 501),
        (
            "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked",
            501,
        ),
        ("Transfer-Encoding: identity", 400),
        ("Transfer-Encoding: gzip", 400),
        ("Transfer-Encoding: chunked, identity", 400),
    ]
    .iter()
    .enumerate()
    {
        let path = format!("/echo/te{n}");
        let request = format!("POST {path} HTTP/1.1\r\nHost: localhost\r\n{te}\r\n\r\n{body}");
        let (answer, closed) =
            exchange(gw.https_addr(), request.as_bytes(), Duration::from_secs(10)).await;
        assert!(
            answer.starts_with(&format!("HTTP/1.1 {status}")),
            "{te:?}: {answer}"
        );
        assert!(closed, "{te:?}: the connection must be closed");
        assert!(
            answer.matches("HTTP/1.1").count() == 1,
            "{te:?}: the body must not be read as another request: {answer}"
        );
        assert!(
            logged(&app, &path).await.is_empty(),
            "{te:?}: the app saw it"
        );
    }
    // Plain chunked still works, as does a fresh request.
    let request = format!(
        "POST /echo/chunked HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: Chunked\r\nConnection: close\r\n\r\n{body}"
    );
    let (answer, _) = exchange(gw.https_addr(), request.as_bytes(), Duration::from_secs(10)).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    a_fresh_request_works(&gw).await;
}
