//! Attacks on the admin listener (issue 15). It publishes to every connected client with no
//! token on loopback, so it must not answer a web page the user happens to have open: neither a
//! cross-site "simple" POST (`text/plain`, no CORS preflight) nor a page on a rebinding domain
//! (`Host: evil.example`, resolved to 127.0.0.1).

use std::net::SocketAddr;
use std::time::Duration;

use e2e::{client, Gateway};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const CONFIG: &str = r#"
listen: {https: "{https}", admin: "{admin}"}
tls: {state_dir: state}
routes:
  - {path: /events, realtime: sse}
"#;

const MESSAGE: &str = r#"{"topic":"announcements","event":"announcement","data":{"text":"pwned"}}"#;

/// One plain-HTTP exchange with the admin listener: the status and the whole answer.
async fn admin(addr: SocketAddr, request: String) -> (u16, String) {
    let mut tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    tcp.write_all(request.as_bytes()).await.expect("write");
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), tcp.read_to_end(&mut out)).await;
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, text)
}

fn post(host: &str, extra: &str, body: &str) -> String {
    format!(
        "POST /publish HTTP/1.1\r\nHost: {host}\r\n{extra}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

fn addr(gw: &Gateway) -> SocketAddr {
    ([127, 0, 0, 1], gw.ports.admin).into()
}

async fn published(gw: &Gateway) -> u64 {
    let v: Value = client()
        .get(gw.admin("/healthz"))
        .send()
        .await
        .expect("healthz")
        .json()
        .await
        .expect("json");
    v["hub"]["published"].as_u64().expect("published count")
}

#[tokio::test]
async fn a_cross_site_simple_post_cannot_publish() {
    let gw = Gateway::start(CONFIG);
    let host = format!("127.0.0.1:{}", gw.ports.admin);
    // What `fetch(url, {method: "POST", mode: "no-cors", body})` or an HTML form sends: types
    // a browser posts cross-site without asking (no CORS preflight).
    for content_type in [
        "Content-Type: text/plain;charset=UTF-8\r\n",
        "Content-Type: application/x-www-form-urlencoded\r\n",
        "Content-Type: multipart/form-data; boundary=x\r\n",
        "",
    ] {
        let (status, answer) = admin(addr(&gw), post(&host, content_type, MESSAGE)).await;
        assert_eq!(status, 415, "{content_type:?}: {answer}");
    }
    // The same with the page's Origin and a JSON type (a browser would preflight this one;
    // the preflight gets nothing either).
    let (status, answer) = admin(
        addr(&gw),
        post(
            &host,
            "Origin: https://evil.example\r\nContent-Type: application/json\r\n",
            MESSAGE,
        ),
    )
    .await;
    assert_eq!(status, 403, "{answer}");
    let (status, answer) = admin(
        addr(&gw),
        format!(
            "OPTIONS /publish HTTP/1.1\r\nHost: {host}\r\nOrigin: https://evil.example\r\n\
             Access-Control-Request-Method: POST\r\nConnection: close\r\n\r\n"
        ),
    )
    .await;
    assert_eq!(status, 403, "{answer}");
    assert!(
        !answer.to_ascii_lowercase().contains("access-control-allow"),
        "{answer}"
    );
    let (status, answer) = admin(
        addr(&gw),
        post(
            &host,
            "Origin: null\r\nContent-Type: application/json\r\n",
            MESSAGE,
        ),
    )
    .await;
    assert_eq!(status, 403, "{answer}");
    assert_eq!(published(&gw).await, 0, "a cross-site request published");

    // The app's own call (JSON, no Origin) and the listener's own origin still work.
    let (status, answer) = admin(
        addr(&gw),
        post(
            &host,
            "Content-Type: application/json; charset=utf-8\r\n",
            MESSAGE,
        ),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    let own = format!("Origin: http://{host}\r\nContent-Type: application/json\r\n");
    let (status, answer) = admin(addr(&gw), post(&host, &own, MESSAGE)).await;
    assert_eq!(status, 200, "{answer}");
    let r = client()
        .post(gw.admin("/publish"))
        .json(&json!({"topic": "t", "data": 1}))
        .send()
        .await
        .expect("publish");
    assert_eq!(r.status(), 200);
    assert_eq!(published(&gw).await, 3);
}

#[tokio::test]
async fn a_dns_rebinding_page_is_refused() {
    let gw = Gateway::start(CONFIG);
    let port = gw.ports.admin;
    // evil.example now resolves to 127.0.0.1: the page is same-origin with itself, so the
    // browser sends its JSON without a preflight and with no foreign Origin on GETs.
    let evil = format!("evil.example:{port}");
    let (status, answer) = admin(
        addr(&gw),
        post(&evil, "Content-Type: application/json\r\n", MESSAGE),
    )
    .await;
    assert_eq!(status, 421, "{answer}");
    for path in ["/healthz", "/topics/announcements"] {
        let (status, answer) = admin(
            addr(&gw),
            format!("GET {path} HTTP/1.1\r\nHost: {evil}\r\nConnection: close\r\n\r\n"),
        )
        .await;
        assert_eq!(status, 421, "{path}: {answer}");
        assert!(
            !answer.contains("upstreams") && !answer.contains("subscribers"),
            "{answer}"
        );
    }
    assert_eq!(published(&gw).await, 0, "a rebinding page published");

    // Loopback names and addresses are fine.
    for host in [
        format!("127.0.0.1:{port}"),
        format!("localhost:{port}"),
        "localhost".to_string(),
        format!("[::1]:{port}"),
    ] {
        let (status, answer) = admin(
            addr(&gw),
            format!("GET /healthz HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"),
        )
        .await;
        assert_eq!(status, 200, "{host}: {answer}");
    }
}

#[tokio::test]
async fn the_demo_pages_app_panel_still_publishes_through_the_app() {
    // The demo page asks the app (`POST /publish-demo`, same origin as the page), and the app
    // calls the publish API as any backend does: JSON, by address, no Origin.
    let app_addr: SocketAddr = format!("127.0.0.1:{}", e2e::free_port())
        .parse()
        .expect("addr");
    let gw = Gateway::start(&format!(
        r#"
listen: {{https: "{{https}}", admin: "{{admin}}"}}
tls: {{state_dir: state}}
upstreams: {{app: {{servers: ["{app_addr}"]}}}}
routes:
  - {{path: /, upstream: app}}
"#
    ));
    let publish_url = gw.admin("/publish");
    let _app = e2e::Stub::start_on("app", app_addr, &["--publish-url", &publish_url]);
    let origin = format!("https://localhost:{}", gw.ports.https);
    let r = client()
        .post(gw.https("/publish-demo"))
        .header("origin", origin)
        .json(&json!({"text": "from the page"}))
        .send()
        .await
        .expect("publish-demo");
    assert_eq!(r.status(), 202, "{:?}", r.text().await);
    assert_eq!(published(&gw).await, 1);
}

#[tokio::test]
async fn a_publish_with_a_transfer_coding_other_than_chunked_is_refused() {
    let gw = Gateway::start(CONFIG);
    let host = format!("127.0.0.1:{}", gw.ports.admin);
    let chunk = format!("{:x}\r\n{MESSAGE}\r\n0\r\n\r\n", MESSAGE.len());
    let (status, answer) = admin(
        addr(&gw),
        format!(
            "POST /publish HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n\
             Transfer-Encoding: gzip, chunked\r\n\r\n{chunk}"
        ),
    )
    .await;
    assert_eq!(status, 501, "{answer}");
    assert_eq!(published(&gw).await, 0);
    let (status, answer) = admin(
        addr(&gw),
        format!(
            "POST /publish HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n\
             Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n{chunk}"
        ),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
}
