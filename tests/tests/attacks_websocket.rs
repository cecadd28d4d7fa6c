//! Attacks on the WebSocket endpoints (issue 15): an oversized message on `/ws`, an upgrade to
//! something other than WebSocket through the app's `/cable` tunnel, and what the tunnel tells a
//! client when the app is down.

use std::net::SocketAddr;
use std::time::Duration;

use e2e::{client, free_port, tls_connect, websocket, Gateway, Stub};
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;

/// Send `request` on a fresh TLS connection; the gateway's answer: its head and, when it
/// says its length, its body (the connection may be kept open), else everything until it
/// closed the connection or `wait` passed.
async fn exchange(addr: SocketAddr, request: &[u8], wait: Duration) -> String {
    let mut tls = tls_connect(addr).await;
    tls.write_all(request).await.expect("write");
    let mut out = Vec::new();
    let _ = tokio::time::timeout(wait, async {
        let mut buf = [0u8; 4096];
        loop {
            match tls.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
            let text = String::from_utf8_lossy(&out);
            let Some((head, body)) = text.split_once("\r\n\r\n") else {
                continue;
            };
            let length = head.lines().find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case("content-length")
                    .then(|| v.trim().parse::<usize>().ok())
                    .flatten()
            });
            if length.is_some_and(|len| body.len() >= len) {
                return;
            }
        }
    })
    .await;
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test]
async fn an_oversized_message_is_closed_with_1009_in_every_mode() {
    let gw = Gateway::start(
        r#"
listen: {https: "{https}"}
tls: {state_dir: state}
realtime:
  websocket:
    /ws: {protocols: [beej-chat-protocol, pubsub.v1], allow_plain: true, max_message_bytes: 65536}
routes:
  - {path: /ws, realtime: websocket}
"#,
    );
    let url = format!("wss://127.0.0.1:{}/ws", gw.ports.https);
    for protocol in [Some("beej-chat-protocol"), Some("pubsub.v1"), None] {
        let (mut ws, _) = websocket(&url, protocol).await.expect("upgrade");
        // 100 kB, above the 64 KiB limit, as one message.
        let big = "x".repeat(100_000);
        // The gateway may stop reading part-way: a failed send is not the test's concern.
        let _ = ws.send(Message::text(big)).await;
        let close = loop {
            match tokio::time::timeout(Duration::from_secs(10), ws.next()).await {
                Ok(Some(Ok(Message::Close(frame)))) => break frame,
                Ok(Some(Ok(_))) => continue,
                other => panic!(
                    "{protocol:?}: expected a close frame 1009, got {other:?} (1006: the TCP \
                     connection was dropped without a close frame)"
                ),
            }
        };
        let frame = close.unwrap_or_else(|| panic!("{protocol:?}: a close frame without a code"));
        assert_eq!(frame.code, CloseCode::Size, "{protocol:?}: {frame:?}");
        assert!(
            frame.reason.contains("65536"),
            "{protocol:?}: the reason names the limit: {frame:?}"
        );
    }
    // A fresh connection still works.
    let (mut ws, _) = websocket(&url, None).await.expect("upgrade");
    ws.send(Message::text("hello")).await.expect("send");
}

fn cable_config(app: &str) -> String {
    format!(
        r#"
listen: {{https: "{{https}}"}}
tls: {{state_dir: state}}
upstreams: {{app: {{servers: ["{app}"], connect_timeout_ms: 2000}}}}
routes:
  - {{path: /cable, upstream: app, websocket: true}}
  - {{path: /, upstream: app}}
"#
    )
}

#[tokio::test]
async fn an_h2c_upgrade_is_not_tunnelled_to_the_app() {
    let app = Stub::start("app");
    let gw = Gateway::start(&cable_config(&app.addr.to_string()));
    // RFC 7540 §3.2: a client asks to switch the connection to cleartext HTTP/2. Tunnelled, it
    // would talk HTTP/2 straight to the app, past every rule the gateway applies per request.
    let cases = [
        "Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n",
        // WebSocket named without `Connection: upgrade` is not an upgrade request either.
        "Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n",
        // Two protocols offered: the gateway only tunnels WebSocket alone.
        "Connection: Upgrade\r\nUpgrade: h2c, websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n",
    ];
    for (n, upgrade) in cases.iter().enumerate() {
        let path = format!("/cable?case={n}");
        let request = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n{upgrade}\r\n");
        let answer = exchange(gw.https_addr(), request.as_bytes(), Duration::from_secs(5)).await;
        assert!(answer.starts_with("HTTP/1.1 "), "{upgrade:?}: {answer}");
        assert!(
            !answer.starts_with("HTTP/1.1 101"),
            "{upgrade:?}: switched protocols: {answer}"
        );
        let seen: Vec<_> = app
            .received()
            .await
            .into_iter()
            .filter(|r| r["query"] == format!("case={n}"))
            .collect();
        // Sent on as a plain request (the client carries on in HTTP/1.1, RFC 9110 §7.8).
        assert_eq!(seen.len(), 1, "{upgrade:?}: {seen:?}");
        let h = &seen[0]["headers"];
        for name in ["upgrade", "http2-settings", "connection"] {
            assert!(
                h.get(name).is_none(),
                "{upgrade:?}: the app saw {name}: {h}"
            );
        }
    }
    // A real WebSocket handshake (any letter case) is still tunnelled.
    let request = "GET /cable HTTP/1.1\r\nHost: localhost\r\nConnection: keep-alive, Upgrade\r\n\
                   Upgrade: WebSocket\r\nSec-WebSocket-Version: 13\r\n\
                   Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n";
    let answer = exchange(gw.https_addr(), request.as_bytes(), Duration::from_secs(2)).await;
    assert!(answer.starts_with("HTTP/1.1 101"), "{answer}");
    let r = client().get(gw.https("/ping")).send().await.expect("get");
    assert_eq!(r.status(), 200);
}

const HANDSHAKE: &str = "GET /cable HTTP/1.1\r\nHost: localhost\r\nConnection: Upgrade\r\n\
                         Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\
                         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n";

fn assert_generic(answer: &str, status: &str, app: &str) {
    assert!(
        answer.starts_with(&format!("HTTP/1.1 {status}")),
        "{answer}"
    );
    let body = answer.split("\r\n\r\n").nth(1).unwrap_or_default();
    for secret in [app, "127.0.0.1", "refused", "os error", "invalid response"] {
        assert!(
            !body
                .to_ascii_lowercase()
                .contains(&secret.to_ascii_lowercase()),
            "the client was told {secret:?}: {answer}"
        );
    }
}

#[tokio::test]
async fn the_cable_tunnel_does_not_tell_clients_the_apps_address_or_os_error() {
    // Nothing listens on the app's port.
    let app = format!("127.0.0.1:{}", free_port());
    let gw = Gateway::start(&cable_config(&app));
    let answer = exchange(
        gw.https_addr(),
        HANDSHAKE.as_bytes(),
        Duration::from_secs(10),
    )
    .await;
    assert_generic(&answer, "502", &app);
    // The same as every other route says.
    let plain = exchange(
        gw.https_addr(),
        b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
        Duration::from_secs(10),
    )
    .await;
    assert_generic(&plain, "502", &app);
    // The operator's log has the detail.
    let logs = gw.proc.logs();
    assert!(
        logs.contains(&app) && logs.to_ascii_lowercase().contains("refused"),
        "the gateway log should name the server and the error:\n{logs}"
    );
}

#[tokio::test]
async fn the_cable_tunnel_does_not_repeat_a_broken_apps_answer() {
    // An "app" that answers a WebSocket handshake with garbage.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let app = listener.local_addr().expect("addr").to_string();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf).await;
                let _ = s.write_all(b"SSH-2.0-OpenSSH_9.2 \x01\x02\r\n\r\n").await;
            });
        }
    });
    let gw = Gateway::start(&cable_config(&app));
    let answer = exchange(
        gw.https_addr(),
        HANDSHAKE.as_bytes(),
        Duration::from_secs(10),
    )
    .await;
    assert_generic(&answer, "502", &app);
    // The detail is in the one failure line every path writes.
    assert!(
        gw.proc.logs().lines().any(|l| l.contains("upstream failed")
            && l.contains("by=\"tunnel\"")
            && l.contains("invalid response")),
        "{}",
        gw.proc.logs()
    );
}
