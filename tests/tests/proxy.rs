//! The app behind the gateway: balancing, failover, health checks, forwarded headers, errors,
//! streaming, as a Rails or Laravel operator would check them.

use std::time::Duration;

use e2e::{client, client_builder, eventually, Gateway, Stub};

fn config(stubs: &[&Stub], balance: &str, extra: &str) -> String {
    let servers: Vec<String> = stubs.iter().map(|s| s.addr.to_string()).collect();
    format!(
        r#"
listen: {{https: "{{https}}", admin: "{{admin}}"}}
tls: {{state_dir: state}}
upstreams:
  app:
    servers: [{}]
    balance: {balance}
    health_check: {{path: /ping, interval_ms: 200, timeout_ms: 500, rise: 2, fall: 2}}
    connect_timeout_ms: 1000
    read_timeout_ms: 1500
{extra}
routes:
  - {{path: /, upstream: app}}
"#,
        servers.join(", ")
    )
}

async fn backend_id(resp: reqwest::Response) -> String {
    assert_eq!(resp.status(), 200, "{:?}", resp.text().await);
    resp.headers()["x-backend-id"]
        .to_str()
        .expect("id")
        .to_string()
}

#[tokio::test]
async fn round_robin_alternates_between_app_servers() {
    let a = Stub::start("a");
    let b = Stub::start("b");
    let gw = Gateway::start(&config(&[&a, &b], "round_robin", ""));
    let c = client();
    let mut ids = Vec::new();
    for _ in 0..6 {
        ids.push(backend_id(c.get(gw.https("/ping")).send().await.expect("get")).await);
    }
    for pair in ids.windows(2) {
        assert_ne!(pair[0], pair[1], "round robin must alternate: {ids:?}");
    }
}

#[tokio::test]
async fn ip_hash_keeps_each_client_on_one_server() {
    let a = Stub::start("a");
    let b = Stub::start("b");
    let c3 = Stub::start("c");
    let gw = Gateway::start(&config(&[&a, &b, &c3], "ip_hash", ""));
    let mut seen = std::collections::BTreeSet::new();
    // Different client addresses: 127.0.0.x are all local on Linux.
    for last in 2..=21u8 {
        let c = client_builder()
            .local_address(std::net::IpAddr::from([127, 0, 0, last]))
            .build()
            .expect("client");
        let first = backend_id(c.get(gw.https("/ping")).send().await.expect("get")).await;
        for _ in 0..4 {
            let again = backend_id(c.get(gw.https("/ping")).send().await.expect("get")).await;
            assert_eq!(again, first, "client 127.0.0.{last} moved");
        }
        seen.insert(first);
    }
    assert!(seen.len() >= 2, "20 clients all on one server: {seen:?}");
}

#[tokio::test]
async fn least_conn_spreads_slow_requests_that_round_robin_would_stack() {
    // Alternate one slow request (in flight for a while) and one quick one. Round robin puts
    // every slow request on the same server; least_conn sends each slow one to the server
    // with fewer requests in flight.
    let a = Stub::start("a");
    let b = Stub::start("b");
    let gw = Gateway::start(&config(&[&a, &b], "least_conn", ""));
    let c = client();
    let mut slow = Vec::new();
    for _ in 0..6 {
        let (c2, url) = (c.clone(), gw.https("/sleep/1000"));
        slow.push(tokio::spawn(async move { c2.get(url).send().await }));
        tokio::time::sleep(Duration::from_millis(100)).await;
        backend_id(c.get(gw.https("/ping")).send().await.expect("get")).await;
    }
    let mut ids = Vec::new();
    for s in slow {
        let r = s.await.expect("join").expect("slow request");
        ids.push(backend_id(r).await);
    }
    let on_a = ids.iter().filter(|i| *i == "a").count();
    assert!(
        (2..=4).contains(&on_a),
        "slow requests piled up on one server: {ids:?}"
    );
}

#[tokio::test]
async fn the_app_sees_who_the_client_is_and_no_hop_by_hop_headers() {
    let a = Stub::start("a");
    let gw = Gateway::start(&config(&[&a], "round_robin", ""));
    // Connection-level headers are an HTTP/1.1 matter (HTTP/2 forbids them outright).
    let h1 = client_builder().http1_only().build().expect("client");
    let echo: serde_json::Value = h1
        .get(gw.https("/echo/x?q=1"))
        .header("host", "shop.example")
        .header("x-forwarded-for", "6.6.6.6")
        .header("x-forwarded-proto", "http")
        .header("connection", "keep-alive, x-private")
        .header("x-private", "secret")
        .header("keep-alive", "timeout=5")
        .send()
        .await
        .expect("get")
        .json()
        .await
        .expect("json");
    let h = &echo["headers"];
    assert_eq!(echo["path"], "/echo/x");
    assert_eq!(echo["query"], "q=1");
    assert_eq!(h["host"], "shop.example", "Host is preserved");
    assert_eq!(
        h["x-forwarded-for"], "127.0.0.1",
        "an untrusted client's X-Forwarded-For is replaced"
    );
    assert_eq!(h["x-real-ip"], "127.0.0.1");
    assert_eq!(h["x-forwarded-proto"], "https");
    assert_eq!(h["x-forwarded-host"], "shop.example");
    assert!(
        h.get("x-private").is_none(),
        "Connection-listed header leaked"
    );
    assert!(h.get("keep-alive").is_none(), "Keep-Alive leaked");
}

#[tokio::test]
async fn a_trusted_proxy_chain_is_kept() {
    let a = Stub::start("a");
    let gw = Gateway::start(&config(
        &[&a],
        "round_robin",
        "proxy: {trusted_proxies: [127.0.0.0/8]}",
    ));
    let echo: serde_json::Value = client()
        .get(gw.https("/echo"))
        .header("x-forwarded-for", "198.51.100.7")
        .header("x-forwarded-proto", "https")
        .send()
        .await
        .expect("get")
        .json()
        .await
        .expect("json");
    assert_eq!(
        echo["headers"]["x-forwarded-for"],
        "198.51.100.7, 127.0.0.1"
    );
    assert_eq!(echo["headers"]["x-real-ip"], "198.51.100.7");
}

#[tokio::test]
async fn a_dead_server_costs_no_client_errors_and_is_taken_out() {
    let a = Stub::start("a");
    let mut b = Stub::start("b");
    let gw = Gateway::start(&config(&[&a, &b], "round_robin", ""));
    let c = client();
    b.proc.kill();
    // Every request succeeds: a refused connect is retried on the other server.
    for i in 0..20 {
        let r = c.get(gw.https("/ping")).send().await.expect("get");
        assert_eq!(r.status(), 200, "request {i} failed after a backend died");
        assert_eq!(r.text().await.expect("body"), "PONG. EOM.");
    }
    // And the health check takes it out.
    let out = eventually(Duration::from_secs(5), || async {
        gw.healthy_servers("app").await == 1
    })
    .await;
    assert!(out, "the dead server is still marked healthy");
    // Back on the same port: it is put back after `rise` good checks.
    let _b2 = Stub::start_on("b", b.addr, &[]);
    let back = eventually(Duration::from_secs(5), || async {
        gw.healthy_servers("app").await == 2
    })
    .await;
    assert!(back, "the revived server was not put back");
}

#[tokio::test]
async fn no_server_left_is_a_clear_503_and_a_silent_app_a_504() {
    let mut a = Stub::start("a");
    let gw = Gateway::start(&config(&[&a], "round_robin", ""));
    let c = client();

    let r = c.get(gw.https("/sleep/5000")).send().await.expect("get");
    assert_eq!(r.status(), 504);
    assert!(r
        .text()
        .await
        .expect("body")
        .contains("did not answer in time"));

    a.proc.kill();
    let r = c.get(gw.https("/ping")).send().await.expect("get");
    assert!(
        r.status() == 502 || r.status() == 503,
        "first failure: {}",
        r.status()
    );
    let down = eventually(Duration::from_secs(5), || async {
        c.get(gw.https("/ping"))
            .send()
            .await
            .map(|r| r.status() == 503)
            .unwrap_or(false)
    })
    .await;
    assert!(down, "no 503 once every server is down");
    let r = c.get(gw.https("/ping")).send().await.expect("get");
    assert_eq!(
        r.text().await.expect("body"),
        "503 Service Unavailable: no healthy app server\n"
    );
    assert!(
        gw.proc.logs().contains("upstream=\"app\""),
        "the error log line names the upstream"
    );
}

#[tokio::test]
async fn app_error_statuses_pass_through_untouched() {
    let a = Stub::start("a");
    let gw = Gateway::start(&config(&[&a], "round_robin", ""));
    let c = client();
    for code in [201u16, 404, 418, 500, 503] {
        let r = c
            .get(gw.https(&format!("/status/{code}")))
            .send()
            .await
            .expect("get");
        assert_eq!(r.status().as_u16(), code);
        assert_eq!(r.headers()["x-backend-id"], "a");
    }
}

#[tokio::test]
async fn streaming_responses_are_not_buffered() {
    let a = Stub::start("a");
    let gw = Gateway::start(&config(&[&a], "round_robin", ""));
    for format in ["sse", "chunked"] {
        let started = std::time::Instant::now();
        let mut r = client()
            .get(gw.https(&format!("/stream?n=4&interval_ms=400&format={format}")))
            .send()
            .await
            .expect("get");
        let first = r.chunk().await.expect("read").expect("a first chunk");
        let first_at = started.elapsed();
        assert!(String::from_utf8_lossy(&first).contains("tick 1"));
        let mut rest = Vec::new();
        while let Some(c) = r.chunk().await.expect("read") {
            rest.extend_from_slice(&c);
        }
        let total = started.elapsed();
        assert!(
            String::from_utf8_lossy(&rest).contains("tick 4"),
            "{format}: stream incomplete"
        );
        // The first tick arrived long before the stream ended: nothing held it back.
        assert!(
            first_at + Duration::from_millis(800) < total,
            "{format}: first chunk after {first_at:?}, stream done after {total:?}"
        );
    }
}

#[tokio::test]
async fn a_post_that_fails_after_being_sent_is_not_replayed() {
    let a = Stub::start("a");
    let gw = Gateway::start(&config(&[&a], "round_robin", ""));
    // /sleep beyond the read timeout: the POST reached the app; the gateway answers 504 and
    // must not send it again.
    let r = client()
        .post(gw.https("/sleep/3000"))
        .body("order=1")
        .send()
        .await
        .expect("post");
    assert_eq!(r.status(), 504);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let posts = a
        .received()
        .await
        .iter()
        .filter(|r| r["method"] == "POST")
        .count();
    assert_eq!(posts, 1, "a non-idempotent request was retried");
}
