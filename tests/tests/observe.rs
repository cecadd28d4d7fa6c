//! What an operator sees: Prometheus metrics at the admin listener's `/metrics` that move with
//! real traffic, access log lines that log tools read (goaccess, from Debian) and that
//! `SIGUSR1` moves to a new file after logrotate's rename, `X-Request-Id` from the client to
//! the app and the log, and TLS handshakes abandoned by health checks counted without an
//! ERROR line.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use e2e::{client, client_builder, eventually, free_port, websocket, Gateway, Stub};
use futures_util::{SinkExt, StreamExt};

fn config(stub: &Stub, extra: &str) -> String {
    let dead = format!("127.0.0.1:{}", free_port());
    format!(
        r#"
listen: {{https: "{{https}}", admin: "{{admin}}"}}
tls: {{state_dir: state}}
upstreams:
  app:
    servers: ["{app}"]
  dead:
    servers: ["{dead}"]
    connect_timeout_ms: 500
realtime:
  sse: {{heartbeat_ms: 1000}}
routes:
  - {{path: /events, realtime: sse}}
  - {{path: /ws, realtime: websocket}}
  - {{path: /dead, upstream: dead}}
  - {{path: /socket.io/, realtime: socketio}}
  - {{path: /, upstream: app}}
{extra}
"#,
        app = stub.addr
    )
}

/// The samples of `/metrics`, parsed by a Prometheus text parser.
async fn scrape(gw: &Gateway) -> prometheus_parse::Scrape {
    let r = reqwest::get(gw.admin("/metrics")).await.expect("/metrics");
    assert_eq!(r.status(), 200);
    let content_type = r.headers()["content-type"]
        .to_str()
        .expect("ascii")
        .to_string();
    assert!(
        content_type.starts_with("text/plain; version=0.0.4"),
        "{content_type}"
    );
    let text = r.text().await.expect("body");
    let lines = text.lines().map(|l| Ok(l.to_string()));
    prometheus_parse::Scrape::parse(lines).expect("the Prometheus text format")
}

/// The value of the sample `name` whose labels include `labels` (0 when there is none: a
/// counter that has not moved may be absent).
fn value(s: &prometheus_parse::Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    let found: Vec<f64> = s
        .samples
        .iter()
        .filter(|m| m.metric == name)
        .filter(|m| labels.iter().all(|(k, v)| m.labels.get(k) == Some(*v)))
        .map(|m| match &m.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => *v,
            prometheus_parse::Value::Histogram(buckets) => {
                buckets.iter().map(|b| b.count).fold(0.0, f64::max)
            }
            prometheus_parse::Value::Summary(_) => f64::NAN,
        })
        .collect();
    assert!(found.len() <= 1, "{name} {labels:?}: {found:?}");
    found.first().copied().unwrap_or(0.0)
}

async fn open_gauge(gw: &Gateway, kind: &str) -> f64 {
    value(
        &scrape(gw).await,
        "gateway_open_connections",
        &[("kind", kind)],
    )
}

/// Wait until the gauge of `kind` reads `want`.
async fn gauge_reaches(gw: &Gateway, kind: &str, want: f64) -> bool {
    eventually(Duration::from_secs(10), || async {
        open_gauge(gw, kind).await == want
    })
    .await
}

/// A connection that opens and closes without a byte: a TCP health check.
fn tcp_check(addr: SocketAddr) {
    drop(std::net::TcpStream::connect(addr).expect("connect"));
}

#[tokio::test]
async fn metrics_parse_and_move_with_real_traffic() {
    let stub = Stub::start("a");
    let mut gw = Gateway::start(&config(&stub, "access_log: {path: off}"));
    let c = client();
    let before = scrape(&gw).await;
    let requests = |s: &prometheus_parse::Scrape, route: &str, status: &str, upstream: &str| {
        value(
            s,
            "gateway_requests_total",
            &[("route", route), ("status", status), ("upstream", upstream)],
        )
    };

    // Requests by route, status class and upstream, and their latencies.
    for _ in 0..3 {
        let r = c.get(gw.https("/ping")).send().await.expect("get");
        assert_eq!(r.status(), 200);
    }
    let r = c.get(gw.https("/missing-page")).send().await.expect("get");
    assert_eq!(r.status(), 404);
    // An upstream failure: nothing listens on the dead pool's port.
    let r = c.get(gw.https("/dead")).send().await.expect("get");
    assert_eq!(r.status(), 502);
    // Health checks and scanners that close during the TLS handshake.
    for _ in 0..3 {
        tcp_check(gw.https_addr());
    }

    let after = eventually(Duration::from_secs(5), || async {
        let s = scrape(&gw).await;
        value(
            &s,
            "gateway_tls_handshake_failures_total",
            &[("reason", "closed")],
        ) >= value(
            &before,
            "gateway_tls_handshake_failures_total",
            &[("reason", "closed")],
        ) + 3.0
    })
    .await;
    assert!(after, "three abandoned handshakes are counted as closed");
    let s = scrape(&gw).await;
    let moved = |route: &str, status: &str, upstream: &str| {
        requests(&s, route, status, upstream) - requests(&before, route, status, upstream)
    };
    assert_eq!(moved("routes[4]", "2xx", "app"), 3.0);
    assert_eq!(moved("routes[4]", "4xx", "app"), 1.0);
    assert_eq!(moved("routes[2]", "5xx", "dead"), 1.0);
    assert_eq!(moved("routes[4]", "5xx", "app"), 0.0);
    assert_eq!(
        value(
            &s,
            "gateway_request_duration_seconds_count",
            &[("route", "routes[4]")]
        ),
        4.0
    );
    assert_eq!(
        value(
            &s,
            "gateway_upstream_header_duration_seconds_count",
            &[("upstream", "app")]
        ),
        4.0
    );
    // One client, one kept connection (the health-check-like connects never finished one).
    assert!(value(&s, "gateway_tls_handshakes_total", &[("version", "1.3")]) >= 1.0);
    assert_eq!(
        value(
            &s,
            "gateway_upstream_server_up",
            &[("upstream", "app"), ("server", &stub.addr.to_string())]
        ),
        1.0
    );
    assert_eq!(
        value(
            &s,
            "gateway_upstream_server_in_flight",
            &[("upstream", "app")]
        ),
        0.0
    );
    assert_eq!(
        value(&s, "gateway_config_reloads_total", &[("result", "ok")]),
        0.0
    );
    assert_eq!(
        value(
            &s,
            "gateway_build",
            &[("version", env!("CARGO_PKG_VERSION"))]
        ),
        1.0
    );
    assert_eq!(
        value(
            &s,
            "gateway_route",
            &[
                ("route", "routes[0]"),
                ("path", "/events"),
                ("target", "sse")
            ]
        ),
        1.0
    );

    // Open connections by kind go up while a stream or a WebSocket is open, and back down.
    assert_eq!(open_gauge(&gw, "sse").await, 0.0);
    let stream = client_builder()
        .http1_only()
        .build()
        .expect("client")
        .get(gw.https("/events?topic=news"))
        .send()
        .await
        .expect("sse");
    assert_eq!(stream.status(), 200);
    assert!(
        gauge_reaches(&gw, "sse", 1.0).await,
        "the SSE stream is counted"
    );
    assert!(open_gauge(&gw, "http1").await >= 1.0);
    drop(stream);
    assert!(
        gauge_reaches(&gw, "sse", 0.0).await,
        "the closed SSE stream is no longer counted"
    );

    let url = format!("wss://127.0.0.1:{}/ws", gw.ports.https);
    let (mut ws, _) = websocket(&url, Some("pubsub.v1")).await.expect("ws");
    assert!(
        gauge_reaches(&gw, "ws", 1.0).await,
        "the WebSocket is counted"
    );
    ws.send(tokio_tungstenite::tungstenite::Message::Close(None))
        .await
        .expect("close");
    while let Some(Ok(_)) = ws.next().await {}
    assert!(
        gauge_reaches(&gw, "ws", 0.0).await,
        "the closed WebSocket is no longer counted"
    );
    // The hub saw the subscriber come and go.
    let s = scrape(&gw).await;
    assert_eq!(value(&s, "gateway_hub_subscribers", &[]), 0.0);
    assert_eq!(
        value(
            &s,
            "gateway_hub_drops_total",
            &[("reason", "slow_consumer")]
        ),
        0.0
    );

    // The example Grafana dashboard is valid JSON, and every metric it queries is served.
    let dashboard = e2e::workspace_root().join("examples/grafana-dashboard.json");
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dashboard).expect("dashboard"))
            .expect("the dashboard is JSON");
    let text = reqwest::get(gw.admin("/metrics"))
        .await
        .expect("/metrics")
        .text()
        .await
        .expect("body");
    let mut queried = 0;
    for panel in dashboard["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"].as_str().expect("expr");
            for name in expr
                .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .filter(|w| w.starts_with("gateway_"))
            {
                queried += 1;
                assert!(
                    text.lines().any(|l| l.starts_with(name)),
                    "the dashboard queries {name}, which /metrics does not have"
                );
            }
        }
    }
    assert!(queried > 20, "{queried}");

    // A logrotate SIGUSR1 to a gateway whose access log is off does not end it (the
    // signal's default action would).
    gw.proc.signal(10);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(gw.proc.exited().is_none(), "SIGUSR1 ended the gateway");
    let r = c.get(gw.https("/ping")).send().await.expect("get");
    assert_eq!(r.status(), 200);

    // Noise is not an error: no ERROR line for the abandoned handshakes (pingora wrote one
    // for each), while the real fault (the dead pool) is still in the log.
    let logs = gw.proc.logs();
    assert!(
        !logs
            .lines()
            .any(|l| l.contains("ERROR") && l.to_lowercase().contains("handshake")),
        "no ERROR line for a handshake:\n{logs}"
    );
    assert!(logs.contains("upstream failed"), "{logs}");
}

/// One access log line in the combined format, split into its fields.
#[derive(Debug)]
struct Combined {
    addr: String,
    time: String,
    request: String,
    status: u16,
    bytes: u64,
    referer: String,
    agent: String,
    request_id: String,
}

/// Read a combined line as log tools do: `addr - user [time] "request" status bytes
/// "referer" "agent"`, then our `"request id" seconds`.
fn parse_combined(line: &str) -> Option<Combined> {
    let (addr, rest) = line.split_once(" - - [")?;
    let (time, rest) = rest.split_once("] \"")?;
    let (request, rest) = rest.split_once("\" ")?;
    let (status, rest) = rest.split_once(' ')?;
    let (bytes, rest) = rest.split_once(" \"")?;
    let (referer, rest) = rest.split_once("\" \"")?;
    let (agent, rest) = rest.split_once("\" \"")?;
    let (request_id, seconds) = rest.split_once("\" ")?;
    seconds.parse::<f64>().ok()?;
    Some(Combined {
        addr: addr.to_string(),
        time: time.to_string(),
        request: request.to_string(),
        status: status.parse().ok()?,
        bytes: bytes.parse().ok()?,
        referer: referer.to_string(),
        agent: agent.to_string(),
        request_id: request_id.to_string(),
    })
}

async fn lines_of(path: &std::path::Path, at_least: usize) -> Vec<String> {
    let mut lines = Vec::new();
    eventually(Duration::from_secs(5), || {
        lines = std::fs::read_to_string(path)
            .unwrap_or_default()
            .lines()
            .map(String::from)
            .collect();
        let n = lines.len();
        async move { n >= at_least }
    })
    .await;
    lines
}

#[tokio::test]
async fn access_log_is_nginx_combined_goaccess_reads_it_and_sigusr1_reopens_it() {
    let stub = Stub::start("a");
    let mut gw = Gateway::start(&config(&stub, "access_log: {path: access.log}"));
    let log = gw.dir.path().join("access.log");
    let c = client();
    let r = c
        .get(gw.https("/ping?x=1"))
        .header("referer", "https://example.com/start")
        .header("user-agent", "Mozilla/5.0 (X11; Linux x86_64) \"quoted\"")
        .send()
        .await
        .expect("get");
    assert_eq!(r.status(), 200);
    let r = c.get(gw.https("/missing-page")).send().await.expect("get");
    assert_eq!(r.status(), 404);
    let r = c.get(gw.https("/dead")).send().await.expect("get");
    assert_eq!(r.status(), 502);

    let lines = lines_of(&log, 3).await;
    assert_eq!(lines.len(), 3, "{lines:?}");
    let parsed: Vec<Combined> = lines
        .iter()
        .map(|l| parse_combined(l).unwrap_or_else(|| panic!("not a combined line: {l}")))
        .collect();
    // A line is written when its request ends, and the next request may end first (an HTTP/2
    // stream's line can follow the next stream's): lines are found by their request.
    let first = parsed
        .iter()
        .find(|p| p.request.starts_with("GET /ping"))
        .unwrap_or_else(|| panic!("no /ping line: {lines:?}"));
    assert_eq!(first.addr, "127.0.0.1");
    assert!(first.time.ends_with(" +0000"), "{first:?}");
    assert!(
        first.request.starts_with("GET /ping?x=1 HTTP/"),
        "{first:?}"
    );
    assert_eq!(first.status, 200);
    assert!(first.bytes > 0);
    assert_eq!(first.referer, "https://example.com/start");
    assert_eq!(
        first.agent,
        "Mozilla/5.0 (X11; Linux x86_64) \\x22quoted\\x22"
    );
    assert_eq!(first.request_id.len(), 32);
    let mut statuses: Vec<(&str, u16)> = parsed
        .iter()
        .map(|p| (p.request.split(' ').nth(1).unwrap_or(""), p.status))
        .collect();
    statuses.sort();
    assert_eq!(
        statuses,
        [("/dead", 502), ("/missing-page", 404), ("/ping?x=1", 200)]
    );

    // goaccess (Debian's) reads the file as COMBINED: every line valid.
    let report = gw.dir.path().join("report.json");
    let out = std::process::Command::new("goaccess")
        .arg(&log)
        .args(["--log-format=COMBINED", "--no-global-config", "-o"])
        .arg(&report)
        .output()
        .expect("goaccess is installed (tests/setup.sh)");
    assert!(
        out.status.success(),
        "goaccess: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&report).expect("report")).expect("json");
    let general = &report["general"];
    assert_eq!(general["total_requests"], 3, "{general}");
    assert_eq!(general["valid_requests"], 3, "{general}");
    assert_eq!(general["failed_requests"], 0, "{general}");

    // logrotate: rename, then SIGUSR1; the next lines go to a new file of the old name.
    let rotated = gw.dir.path().join("access.log.1");
    std::fs::rename(&log, &rotated).expect("rename");
    gw.proc.signal(10); // SIGUSR1
    assert!(
        eventually(Duration::from_secs(5), || async { log.exists() }).await,
        "SIGUSR1 reopened the log: a new file exists"
    );
    let r = c
        .get(gw.https("/after-rotation"))
        .send()
        .await
        .expect("get");
    assert_eq!(r.status(), 404);
    let new_lines = lines_of(&log, 1).await;
    assert_eq!(new_lines.len(), 1, "{new_lines:?}");
    assert!(
        new_lines[0].contains("GET /after-rotation "),
        "{new_lines:?}"
    );
    let old = std::fs::read_to_string(&rotated).expect("rotated");
    assert_eq!(
        old.lines().count(),
        3,
        "the rotated file keeps its lines only"
    );
    assert!(
        gw.proc.exited().is_none(),
        "SIGUSR1 did not stop the gateway"
    );
}

#[tokio::test]
async fn json_log_and_x_request_id_from_client_to_app_and_log() {
    let stub = Stub::start("a");
    // The gateway trusts 127.0.0.2 (a load balancer in front) and no one else.
    let gw = Gateway::start(&config(
        &stub,
        "access_log: {path: access.json, format: json}\nproxy: {trusted_proxies: [127.0.0.2]}",
    ));
    let log = gw.dir.path().join("access.json");
    let echo = |r: reqwest::Response| async move {
        assert_eq!(r.status(), 200);
        let v: serde_json::Value = r.json().await.expect("echo json");
        v["headers"]["x-request-id"]
            .as_str()
            .expect("the app got an X-Request-Id")
            .to_string()
    };

    // No id: one is made up and sent to the app.
    let made = echo(client().get(gw.https("/echo")).send().await.expect("get")).await;
    assert_eq!(made.len(), 32);
    assert!(made.bytes().all(|b| b.is_ascii_hexdigit()), "{made}");
    // A client's own id is replaced: it could forge another request's.
    let replaced = echo(
        client()
            .get(gw.https("/echo"))
            .header("x-request-id", "forged-by-client")
            .send()
            .await
            .expect("get"),
    )
    .await;
    assert_ne!(replaced, "forged-by-client");
    // A trusted proxy's id is kept, so one id follows the request through every hop.
    let from_proxy = client_builder()
        .local_address(std::net::IpAddr::from([127, 0, 0, 2]))
        .build()
        .expect("client");
    let kept = echo(
        from_proxy
            .get(gw.https("/echo"))
            .header("x-request-id", "lb-7f3a-0001")
            .send()
            .await
            .expect("get"),
    )
    .await;
    assert_eq!(kept, "lb-7f3a-0001");

    // Each JSON line parses and names the id the app saw.
    let lines = lines_of(&log, 3).await;
    assert_eq!(lines.len(), 3, "{lines:?}");
    let entries: Vec<BTreeMap<String, serde_json::Value>> = lines
        .iter()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    // In any order: a line is written when its request ends, which the next one can overtake.
    let mut ids: Vec<&str> = entries
        .iter()
        .map(|e| e["request_id"].as_str().expect("request_id"))
        .collect();
    ids.sort_unstable();
    let mut expected = [made.as_str(), replaced.as_str(), "lb-7f3a-0001"];
    expected.sort_unstable();
    assert_eq!(ids, expected);
    let e = entries
        .iter()
        .find(|e| e["request_id"] == "lb-7f3a-0001")
        .expect("the proxied request's line");
    assert_eq!(e["remote_addr"], "127.0.0.2");
    assert_eq!(e["method"], "GET");
    assert_eq!(e["uri"], "/echo");
    assert_eq!(e["status"], 200);
    assert_eq!(e["route"], "routes[4]");
    assert_eq!(e["upstream"], "app");
    assert_eq!(e["upstream_addr"], stub.addr.to_string());
    assert_eq!(e["tls"], true);
    assert!(e["request_time"].as_f64().is_some());
    assert!(e["upstream_header_time"].as_f64().is_some());
    assert_eq!(e["websocket"], serde_json::Value::Null);

    // A WebSocket session is logged once, when it ends: its duration, bytes and messages each
    // way, and how it closed. Through the tunnel to the app (its echo) ...
    use tokio_tungstenite::tungstenite::protocol::{frame::coding::CloseCode, CloseFrame};
    use tokio_tungstenite::tungstenite::Message;
    let url = format!("wss://127.0.0.1:{}/cable", gw.ports.https);
    let (mut ws, _) = websocket(&url, None).await.expect("tunnel");
    for text in ["one", "two", "three"] {
        ws.send(Message::Text(text.into())).await.expect("send");
        let echoed = ws.next().await.expect("echo").expect("frame");
        assert_eq!(echoed, Message::Text(text.into()));
    }
    ws.close(Some(CloseFrame {
        code: CloseCode::Normal,
        reason: "done here".into(),
    }))
    .await
    .expect("close");
    while let Some(Ok(_)) = ws.next().await {}
    // ... and to the in-process /ws endpoint, closed by the client with 1001.
    let url = format!("wss://127.0.0.1:{}/ws", gw.ports.https);
    let (mut ws, _) = websocket(&url, Some("pubsub.v1")).await.expect("ws");
    ws.close(Some(CloseFrame {
        code: CloseCode::Away,
        reason: "".into(),
    }))
    .await
    .expect("close");
    while let Some(Ok(_)) = ws.next().await {}

    let lines = lines_of(&log, 5).await;
    let sessions: Vec<serde_json::Value> = lines[3..]
        .iter()
        .map(|l| serde_json::from_str(l).expect("json"))
        .collect();
    let tunnel = sessions
        .iter()
        .find(|e| e["uri"] == "/cable")
        .expect("the tunnel's line");
    assert_eq!(tunnel["status"], 101);
    assert_eq!(tunnel["served_by"], "tunnel");
    let w = &tunnel["websocket"];
    assert_eq!(
        (w["messages_in"].as_u64(), w["messages_out"].as_u64()),
        (Some(3), Some(3)),
        "{w}"
    );
    assert_eq!(w["close_code"], 1000, "{w}");
    assert_eq!(w["close_reason"], "done here", "{w}");
    assert_eq!(w["closed_by"], "client", "{w}");
    assert!(tunnel["body_bytes_sent"].as_u64() > Some(0));
    assert!(tunnel["request_length"].as_u64() > Some(0));
    let endpoint = sessions
        .iter()
        .find(|e| e["uri"] == "/ws")
        .expect("the /ws line");
    assert_eq!(endpoint["served_by"], "realtime");
    assert_eq!(endpoint["websocket"]["close_code"], 1001, "{endpoint}");
    assert_eq!(endpoint["websocket"]["closed_by"], "client", "{endpoint}");
}
