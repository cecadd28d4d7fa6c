//! An operator changes `gateway.yaml` and runs `gateway reload` (or sends SIGHUP): the new
//! routes, servers and certificates answer the next request, a broken file changes nothing and
//! says why, and nobody connected notices: Socket.IO sessions on both transports, `/ws`, SSE
//! streams, held long-polls, app WebSocket tunnels and an upload in progress all go on.

use std::process::Command;
use std::time::Duration;

use e2e::fleet::subscribers;
use e2e::sessions::Sessions;
use e2e::{client, eventually, websocket, Gateway, Stub};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;

/// Sessions of each kind open while the configuration is reloaded.
const SESSIONS: usize = 500;

fn config(app: &Stub, extra_upstreams: &str, extra_routes: &str) -> String {
    format!(
        r#"
listen: {{https: "{{https}}", admin: "{{admin}}"}}
tls: {{state_dir: state}}
realtime:
  longpoll: {{wait_ms: 120000}}
  sse: {{heartbeat_ms: 5000}}
  socketio:
    # Every test client comes from 127.0.0.1.
    max_sessions_per_client: 5000
    namespaces:
      "/": {{client_rooms: true}}
upstreams:
  app:
    servers: ["{app}"]
{extra_upstreams}
routes:
  - {{path: /socket.io/, realtime: socketio}}
  - {{path: /ws, realtime: websocket}}
  - {{path: /events, realtime: sse}}
  - {{path: /s, realtime: longpoll}}
  - {{path: /cable, upstream: app, websocket: true}}
  - {{path: /echo, upstream: app}}
{extra_routes}
"#,
        app = app.addr
    )
}

/// Write a new configuration file for `gw` (placeholders filled as at start).
fn rewrite(gw: &Gateway, yaml: &str) {
    std::fs::write(
        gw.dir.path().join("gateway.yaml"),
        e2e::fill(yaml, &gw.ports),
    )
    .expect("write config");
}

/// `gateway reload` in the gateway's directory: (exit code, stdout, stderr).
fn gateway_reload(gw: &Gateway) -> (i32, String, String) {
    let out = Command::new(e2e::binary("gateway"))
        .args(["reload", "--config", "gateway.yaml"])
        .current_dir(gw.dir.path())
        .output()
        .expect("gateway reload");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

async fn reload_status(gw: &Gateway) -> Value {
    client()
        .get(gw.admin("/reload"))
        .send()
        .await
        .expect("GET /reload")
        .json()
        .await
        .expect("json")
}

async fn publish(gw: &Gateway, topic: &str, data: Value) {
    let r = client()
        .post(gw.admin("/publish"))
        .json(&json!({"topic": topic, "event": "note", "data": data}))
        .send()
        .await
        .expect("publish");
    assert_eq!(r.status(), 200, "{:?}", r.text().await);
}

/// An HTTP/1 client: each held request keeps a connection of its own, as browsers' do.
fn http1() -> reqwest::Client {
    e2e::client_builder()
        .http1_only()
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(180))
        .build()
        .expect("client")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_reload_under_open_sessions_of_every_kind_adds_a_route_and_drops_nobody() {
    let app = Stub::start("app");
    let extra = Stub::start("extra");
    let gw = Gateway::start(&config(&app, "", ""));
    let c = client();
    let before = c.get(gw.https("/status/200")).send().await.expect("get");
    assert_eq!(before.status(), 404, "no route yet");

    // Socket.IO on websocket and on polling, in a node process of its own.
    let sessions = Sessions::start(&gw.https(""), SESSIONS, "news", "1", "websocket,polling").await;

    // `/ws` subscribers, SSE streams, held long-polls and app WebSocket tunnels.
    let ws_url = format!("wss://127.0.0.1:{}/ws", gw.ports.https);
    let mut ws = Vec::new();
    for _ in 0..SESSIONS {
        let (mut s, _) = websocket(&ws_url, Some("pubsub.v1")).await.expect("ws");
        s.send(Message::text(
            json!({"op": "subscribe", "topic": "news"}).to_string(),
        ))
        .await
        .expect("subscribe");
        ws.push(s);
    }
    let h1 = http1();
    let mut sse = Vec::new();
    for _ in 0..SESSIONS {
        let r = h1
            .get(gw.https("/events?topic=news"))
            .send()
            .await
            .expect("sse");
        assert_eq!(r.status(), 200);
        sse.push(r);
    }
    let polls: Vec<_> = (0..SESSIONS)
        .map(|_| {
            let (h1, url) = (h1.clone(), gw.https("/s?t=news"));
            tokio::spawn(async move { h1.get(url).send().await?.text().await })
        })
        .collect();
    let cable_url = format!("wss://127.0.0.1:{}/cable", gw.ports.https);
    let mut tunnels = Vec::new();
    for _ in 0..SESSIONS {
        tunnels.push(websocket(&cable_url, None).await.expect("tunnel").0);
    }
    // An upload in progress: half its body before the reload, half after.
    let body = vec![b'u'; 200_000];
    let mut upload = e2e::tls_connect(gw.https_addr()).await;
    upload
        .write_all(
            format!(
                "POST /echo HTTP/1.1\r\nHost: localhost\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            )
            .as_bytes(),
        )
        .await
        .expect("head");
    upload
        .write_all(&body[..100_000])
        .await
        .expect("first half");

    // /ws + SSE + long-poll on the topic, plus the Socket.IO room's own subscription.
    assert!(
        eventually(Duration::from_secs(30), || async {
            subscribers(&gw, "news").await as usize >= 3 * SESSIONS
        })
        .await,
        "subscribers: {}",
        subscribers(&gw, "news").await
    );

    // The operator adds a server pool and a route, and reloads.
    rewrite(
        &gw,
        &config(
            &app,
            &format!("  extra:\n    servers: [\"{}\"]", extra.addr),
            "  - {path: /status, upstream: extra}",
        ),
    );
    let (code, out, err) = gateway_reload(&gw);
    assert_eq!(code, 0, "stdout: {out}\nstderr: {err}");
    assert!(
        out.contains("reloaded: routes, upstreams.extra (added)"),
        "{out}"
    );

    // The new route answers, from the new pool.
    let after = c.get(gw.https("/status/200")).send().await.expect("get");
    assert_eq!(after.status(), 200);
    assert_eq!(after.headers()["x-backend-id"], "extra");

    // Everyone is still there: one publish reaches every subscriber of every kind.
    upload
        .write_all(&body[100_000..])
        .await
        .expect("second half");
    publish(&gw, "news", json!(0)).await;

    for (i, s) in ws.iter_mut().enumerate() {
        let mut heard = false;
        while let Ok(Some(Ok(m))) = tokio::time::timeout(Duration::from_secs(10), s.next()).await {
            if let Message::Text(t) = m {
                let v: Value = serde_json::from_str(&t).expect("json");
                if v["op"] == "message" {
                    assert_eq!(v["data"], json!(0), "ws {i}: {v}");
                    heard = true;
                    break;
                }
            }
        }
        assert!(heard, "/ws subscriber {i} heard nothing");
    }
    for (i, r) in sse.iter_mut().enumerate() {
        let mut text = String::new();
        while !text.contains("data: 0\n") {
            match tokio::time::timeout(Duration::from_secs(10), r.chunk()).await {
                Ok(Ok(Some(c))) => text.push_str(&String::from_utf8_lossy(&c)),
                other => panic!("SSE stream {i} ended or went quiet: {other:?} after {text:?}"),
            }
        }
    }
    for (i, p) in polls.into_iter().enumerate() {
        let body = p.await.expect("join").expect("poll answered");
        assert_eq!(body, "0", "long-poll {i}");
    }
    for (i, t) in tunnels.iter_mut().enumerate() {
        t.send(Message::text(format!("still here {i}")))
            .await
            .expect("send");
        let echo = loop {
            match tokio::time::timeout(Duration::from_secs(10), t.next()).await {
                Ok(Some(Ok(Message::Text(t)))) => break t.to_string(),
                Ok(Some(Ok(_))) => continue,
                other => panic!("tunnel {i}: {other:?}"),
            }
        };
        assert!(
            echo.contains(&format!("still here {i}")),
            "tunnel {i}: {echo}"
        );
    }
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(20), upload.read_to_end(&mut answer))
        .await
        .expect("upload answered in time")
        .expect("read");
    let answer = String::from_utf8_lossy(&answer);
    assert!(
        answer.starts_with("HTTP/1.1 200"),
        "{}",
        &answer[..answer.len().min(300)]
    );

    let v = sessions.report().await;
    for mode in ["websocket", "polling"] {
        assert_eq!(v[mode]["got"], SESSIONS, "{mode}: {v}");
        assert_eq!(v[mode]["disconnects"], 0, "{mode}: {v}");
    }

    let status = reload_status(&gw).await;
    assert_eq!(status["ok"], true, "{status}");
    assert_eq!(status["generation"], 1, "{status}");
}

#[tokio::test]
async fn a_broken_file_keeps_the_configuration_in_force_and_says_why() {
    let app = Stub::start("app");
    let gw = Gateway::start(&config(&app, "", ""));
    let broken = config(
        &app,
        "",
        "  - {path: /x, upstream: nowhere}\nlimits: {max_body_byte: 5}",
    );

    // `gateway reload` checks the file first: every problem with its place, exit 2, and the
    // running gateway is not asked.
    rewrite(&gw, &broken);
    let (code, out, err) = gateway_reload(&gw);
    assert_eq!(code, 2, "stdout: {out}\nstderr: {err}");
    assert!(
        err.contains("limits: unknown field `max_body_byte`"),
        "{err}"
    );
    assert_eq!(reload_status(&gw).await["generation"], 0);

    // A SIGHUP with a file that does not build: refused, logged, counted; the old routes
    // serve on.
    let unknown_pool = config(&app, "", "  - {path: /x, upstream: nowhere}");
    rewrite(&gw, &unknown_pool);
    gw.proc.signal(libc_sighup());
    assert!(
        eventually(Duration::from_secs(10), || async {
            reload_status(&gw).await["generation"] == 1
        })
        .await
    );
    let status = reload_status(&gw).await;
    assert_eq!(status["ok"], false, "{status}");
    let problems = status["problems"].to_string();
    assert!(
        problems.contains("routes[6]") && problems.contains("nowhere"),
        "{status}"
    );
    let r = client().get(gw.https("/echo")).send().await.expect("get");
    assert_eq!(r.status(), 200, "the old routes still serve");
    assert!(
        eventually(Duration::from_secs(5), || async {
            gw.proc.logs().contains("reload refused")
        })
        .await,
        "{}",
        gw.proc.logs()
    );
    let metrics = client()
        .get(gw.admin("/metrics"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    assert!(
        metrics.contains("gateway_config_reloads_total{result=\"failed\"} 1"),
        "{metrics}"
    );

    // Fixed, it goes in.
    rewrite(&gw, &config(&app, "", ""));
    let (code, out, _) = gateway_reload(&gw);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("reloaded"), "{out}");
}

#[tokio::test]
async fn a_removed_server_finishes_its_request_while_new_ones_go_to_its_replacement() {
    let old = Stub::start("old");
    let new = Stub::start("new");
    let gw = Gateway::start(&config(&old, "", "  - {path: /sleep, upstream: app}"));
    let slow = tokio::spawn({
        let url = gw.https("/sleep/1500");
        async move { client().get(url).send().await }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    rewrite(&gw, &config(&new, "", "  - {path: /sleep, upstream: app}"));
    let (code, out, err) = gateway_reload(&gw);
    assert_eq!(code, 0, "{out} {err}");
    assert!(out.contains("upstreams.app"), "{out}");
    let r = client().get(gw.https("/echo")).send().await.expect("get");
    assert_eq!(r.headers()["x-backend-id"], "new");
    let slow = slow
        .await
        .expect("join")
        .expect("the slow request finished");
    assert_eq!(slow.status(), 200);
    assert_eq!(slow.headers()["x-backend-id"], "old");
}

/// The app moves (`upstreams.app` now names another server): the authorization callbacks go
/// where the pages go, from the next subscribe on.
#[tokio::test]
async fn the_apps_callbacks_follow_its_pool_through_a_reload() {
    let old = Stub::start("old");
    let new = Stub::start("new");
    let with_auth = |app: &Stub| {
        config(app, "", "").replace(
            "realtime:\n",
            "realtime:\n  auth: {upstream: app, timeout_ms: 3000}\n",
        )
    };
    let gw = Gateway::start(&with_auth(&old));
    let subscribe = || async {
        let r = client()
            .get(gw.https("/events?topic=private-chat.1"))
            .header("cookie", "user=ann")
            .send()
            .await
            .expect("sse");
        r.status()
    };
    assert_eq!(subscribe().await, 200);
    assert_eq!(asked(&old).await, 1);

    rewrite(&gw, &with_auth(&new));
    let (code, out, err) = gateway_reload(&gw);
    assert_eq!(code, 0, "{out} {err}");
    assert!(out.contains("upstreams.app"), "{out}");
    assert_eq!(subscribe().await, 200);
    assert_eq!(asked(&new).await, 1, "the new server is asked");
    assert_eq!(asked(&old).await, 1, "the old one is not asked any more");
}

/// Who may publish from a client is decided per request: a reload that opens `chat-*` to
/// clients applies to the next publish, with no restart.
#[tokio::test]
async fn a_reload_opens_a_topic_to_client_publishing() {
    let app = Stub::start("app");
    let publishable = |patterns: &str| {
        config(&app, "", "  - {path: /p, realtime: longpoll}").replace(
            "realtime:\n",
            &format!("realtime:\n  policy: {{client_publish: [{patterns}]}}\n"),
        )
    };
    let gw = Gateway::start(&publishable("news-*"));
    let post = || async {
        let r = client()
            .post(gw.https("/p?t=chat-1"))
            .body("hello")
            .send()
            .await
            .expect("post");
        (r.status(), r.text().await.unwrap_or_default())
    };
    let (status, body) = post().await;
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("clients may not publish"), "{body}");

    rewrite(&gw, &publishable("news-*, chat-*"));
    let (code, out, err) = gateway_reload(&gw);
    assert_eq!(code, 0, "{out} {err}");
    assert!(out.contains("realtime.policy"), "{out}");
    assert!(!out.contains("restart"), "{out}");
    let (status, body) = post().await;
    assert_eq!(status, 200, "{body}");
}

/// How many channel callbacks (`POST /broadcasting/auth`) `app` answered.
async fn asked(app: &Stub) -> usize {
    app.received()
        .await
        .iter()
        .filter(|r| r["path"] == "/broadcasting/auth")
        .count()
}

/// SIGHUP's number (1 on every Unix).
fn libc_sighup() -> i32 {
    1
}

/// Write a fresh self-signed chain for `name` to `dir/site.pem` and `dir/site.key` (what a
/// certbot deploy does to the files the configuration names); its DER.
fn renew_certificate(dir: &std::path::Path, name: &str) -> Vec<u8> {
    let c = rcgen::generate_simple_self_signed(vec![name.to_string()]).expect("rcgen");
    std::fs::write(dir.join("site.key"), c.signing_key.serialize_pem()).expect("key");
    std::fs::write(dir.join("site.pem"), c.cert.pem()).expect("cert");
    c.cert.der().to_vec()
}

/// A TLS connection to the gateway as `localhost`, and the certificate it was served.
async fn handshake(gw: &Gateway) -> (e2e::TlsClient, Vec<u8>) {
    let tls = e2e::tls_connect(gw.https_addr()).await;
    let cert = tls.get_ref().1.peer_certificates().expect("a certificate")[0].to_vec();
    (tls, cert)
}

/// One keep-alive request on `tls`: the status line.
async fn get_on(tls: &mut e2e::TlsClient, path: &str) -> String {
    tls.write_all(format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n").as_bytes())
        .await
        .expect("write");
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(5), tls.read(&mut buf))
        .await
        .expect("an answer in time")
        .expect("read");
    String::from_utf8_lossy(&buf[..n])
        .lines()
        .next()
        .unwrap_or("")
        .to_string()
}

#[tokio::test]
async fn a_renewed_certificate_is_served_to_new_handshakes_while_old_connections_go_on() {
    let app = Stub::start("app");
    let certs = e2e::Scratch::new("certs");
    let first = renew_certificate(certs.path(), "localhost");
    let yaml = config(&app, "", "").replace(
        "tls: {state_dir: state}",
        &format!(
            "tls: {{state_dir: state, certificates: [{{cert: {d}/site.pem, key: {d}/site.key}}]}}",
            d = certs.path().display()
        ),
    );
    let gw = Gateway::start(&yaml);
    let (mut old, served) = handshake(&gw).await;
    assert_eq!(served, first);
    assert_eq!(get_on(&mut old, "/echo").await, "HTTP/1.1 200 OK");

    let renewed = renew_certificate(certs.path(), "localhost");
    let (code, out, err) = gateway_reload(&gw);
    assert_eq!(code, 0, "{out} {err}");
    let (mut new, served) = handshake(&gw).await;
    assert_eq!(
        served, renewed,
        "a new handshake gets the renewed certificate"
    );
    assert_eq!(get_on(&mut new, "/echo").await, "HTTP/1.1 200 OK");
    // The connection made before goes on, on the certificate it was made with.
    assert_eq!(get_on(&mut old, "/echo").await, "HTTP/1.1 200 OK");
    assert_eq!(
        old.get_ref().1.peer_certificates().expect("a certificate")[0].to_vec(),
        first
    );
}
