//! An HTTP app on a Unix socket, as Puma runs with `bind "unix:///run/app/puma.sock"`: proxied,
//! health-checked and tunnelled like a TCP one, and a clear 502 when the socket is not there.

use std::time::Duration;

use e2e::{client, eventually, websocket, Gateway, Scratch, UnixStub};
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;

/// The gateway with a health-checked pool on `socket`, written the way Puma prints it
/// (`unix:///...`), and an unchecked one on the same socket for `/direct`.
fn gateway(socket: &std::path::Path) -> Gateway {
    Gateway::start(&format!(
        r#"
listen: {{https: "{{https}}", admin: "{{admin}}"}}
tls: {{state_dir: state}}
upstreams:
  puma:
    servers: ["unix://{socket}"]
    health_check: {{path: /ping, interval_ms: 200, timeout_ms: 500, rise: 2, fall: 2}}
    connect_timeout_ms: 1000
  direct:
    servers: ["unix:{socket}"]
routes:
  - {{path: /direct, upstream: direct}}
  - {{path: /, upstream: puma}}
"#,
        socket = socket.display()
    ))
}

async fn healthy(gw: &Gateway) -> serde_json::Value {
    reqwest::get(gw.admin("/healthz"))
        .await
        .expect("healthz")
        .json::<serde_json::Value>()
        .await
        .expect("json")["upstreams"]["puma"]
        .clone()
}

#[tokio::test]
async fn an_app_on_a_unix_socket_is_proxied_like_puma() {
    let dir = Scratch::new("uds");
    let socket = dir.path().join("puma.sock");
    let _app = UnixStub::start("puma", &socket);
    let gw = gateway(&socket);
    let c = client();

    let echo: serde_json::Value = c
        .get(gw.https("/echo/orders?page=2"))
        .send()
        .await
        .expect("get")
        .json()
        .await
        .expect("json");
    assert_eq!(echo["id"], "puma");
    assert_eq!(echo["method"], "GET");
    assert_eq!(echo["path"], "/echo/orders");
    assert_eq!(echo["query"], "page=2");
    assert_eq!(echo["headers"]["x-forwarded-proto"], "https");
    assert_eq!(echo["headers"]["x-forwarded-for"], "127.0.0.1");

    let form = "order[item]=book&order[qty]=2".repeat(1000);
    let echo: serde_json::Value = c
        .post(gw.https("/echo/orders"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form.clone())
        .send()
        .await
        .expect("post")
        .json()
        .await
        .expect("json");
    assert_eq!(echo["method"], "POST");
    assert_eq!(echo["body_len"], form.len());

    // A big streamed answer, and several requests on the kept connections.
    for _ in 0..5 {
        let r = c.get(gw.https("/bytes/300000")).send().await.expect("get");
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["x-backend-id"], "puma");
        assert_eq!(r.bytes().await.expect("body").len(), 300_000);
    }

    // The health check speaks HTTP over the socket too, and names it.
    let h = healthy(&gw).await;
    assert_eq!(h["healthy"], 1, "{h}");
    assert_eq!(
        h["servers"][0]["address"],
        format!("unix:{}", socket.display())
    );

    // The app's WebSocket (Action Cable on Puma) is tunnelled over the socket.
    let (mut ws, resp) = websocket(&format!("wss://127.0.0.1:{}/cable", gw.ports.https), None)
        .await
        .expect("upgrade");
    assert_eq!(resp.headers()["x-backend-id"], "puma");
    ws.send(Message::text("hello over a unix socket"))
        .await
        .expect("send");
    match tokio::time::timeout(Duration::from_secs(5), ws.next()).await {
        Ok(Some(Ok(Message::Text(t)))) => assert_eq!(t.as_str(), "hello over a unix socket"),
        other => panic!("no echo: {other:?}"),
    }
    ws.close(None).await.expect("close");
}

#[tokio::test]
async fn a_missing_socket_is_a_502_then_the_server_is_taken_out_and_put_back() {
    let dir = Scratch::new("uds-missing");
    let socket = dir.path().join("puma.sock");
    let gw = gateway(&socket);
    let c = client();

    // Puma is not running: no socket file at all. Without health checks, every request
    // tries and gets a 502.
    for _ in 0..3 {
        let r = c.get(gw.https("/direct")).send().await.expect("get");
        assert_eq!(r.status(), 502);
        assert_eq!(
            r.text().await.expect("body"),
            "502 Bad Gateway: the app did not answer properly\n"
        );
    }
    let logs = gw.proc.logs();
    assert!(
        logs.contains(&format!("unix:{}", socket.display())),
        "the log names the socket: {logs}"
    );
    let out = eventually(Duration::from_secs(5), || async {
        healthy(&gw).await["healthy"] == 0
    })
    .await;
    assert!(out, "a missing socket is still marked healthy");
    let r = c.get(gw.https("/ping")).send().await.expect("get");
    assert_eq!(r.status(), 503);

    // Puma starts: the socket appears, the checks pass, requests flow.
    let _app = UnixStub::start("puma", &socket);
    let back = eventually(Duration::from_secs(5), || async {
        healthy(&gw).await["healthy"] == 1
    })
    .await;
    assert!(back, "the server did not come back once its socket existed");
    let r = c.get(gw.https("/ping")).send().await.expect("get");
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.expect("body"), "PONG. EOM.");
    let r = c.get(gw.https("/direct")).send().await.expect("get");
    assert_eq!(
        r.headers()["x-backend-id"],
        "puma",
        "the unchecked pool reaches it too"
    );
}
