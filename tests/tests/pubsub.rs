//! Long-poll, Server-Sent Events and the app's publish API: one hub, no silent loss.

use std::time::Duration;

use e2e::fleet::subscribers;
use e2e::{client, eventually, Gateway};
use serde_json::{json, Value};

const CONFIG: &str = r#"
listen: {https: "{https}", admin: "{admin}"}
tls: {state_dir: state}
realtime:
  hub: {history: 20}
  longpoll: {wait_ms: 1500}
  sse: {heartbeat_ms: 1000}
  # These tests publish from clients to any topic (POST /p); the policy is tested in authz.rs.
  policy: {client_publish: ["*"]}
routes:
  - {path: /s, realtime: longpoll}
  - {path: /p, realtime: longpoll}
  - {path: /events, realtime: sse}
"#;

async fn publish(gw: &Gateway, topic: &str, data: Value) -> Value {
    client()
        .post(gw.admin("/publish"))
        .json(&json!({"topic": topic, "event": "note", "data": data}))
        .send()
        .await
        .expect("publish")
        .json()
        .await
        .expect("json")
}

async fn wait_subscribers(gw: &Gateway, topic: &str, n: u64) -> bool {
    eventually(Duration::from_secs(5), || async {
        subscribers(gw, topic).await == n
    })
    .await
}

/// Parse `text/event-stream` text into (id, event, data) triples; comments are skipped.
fn sse_events(text: &str) -> Vec<(Option<String>, String, String)> {
    text.split("\n\n")
        .filter(|block| !block.trim().is_empty())
        .filter_map(|block| {
            let (mut id, mut event, mut data) = (None, String::new(), Vec::new());
            for line in block.lines() {
                if let Some(v) = line.strip_prefix("id: ") {
                    id = Some(v.to_string());
                } else if let Some(v) = line.strip_prefix("event: ") {
                    event = v.to_string();
                } else if let Some(v) = line.strip_prefix("data: ") {
                    data.push(v.to_string());
                }
            }
            (!event.is_empty()).then(|| (id, event, data.join("\n")))
        })
        .collect()
}

/// Read an SSE stream until `count` events arrived (or 5 s passed).
async fn read_events(
    resp: &mut reqwest::Response,
    count: usize,
) -> Vec<(Option<String>, String, String)> {
    let mut text = String::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while sse_events(&text).len() < count {
        match tokio::time::timeout_at(deadline, resp.chunk()).await {
            Ok(Ok(Some(c))) => text.push_str(&String::from_utf8_lossy(&c)),
            _ => break,
        }
    }
    sse_events(&text)
}

#[tokio::test]
async fn a_held_poll_is_woken_by_a_publish_from_another_connection() {
    let gw = Gateway::start(CONFIG);
    let c = client();
    let poll = tokio::spawn({
        let (c, url) = (c.clone(), gw.https("/s?t=room1"));
        async move { c.get(url).send().await }
    });
    assert!(
        wait_subscribers(&gw, "room1", 1).await,
        "the poll never waited"
    );
    let r = c
        .post(gw.https("/p?t=room1"))
        .body("hello wörld")
        .send()
        .await
        .expect("publish");
    assert_eq!(r.status(), 200);
    let r = poll.await.expect("join").expect("poll");
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "text/plain; charset=utf-8");
    assert_eq!(r.headers()["x-seq"], "1");
    assert!(r.headers().contains_key("x-position"));
    assert_eq!(r.text().await.expect("body"), "hello wörld");
}

#[tokio::test]
async fn an_idle_poll_gets_204_and_a_poller_that_leaves_is_removed_at_once() {
    let gw = Gateway::start(CONFIG);
    let c = client();
    let started = std::time::Instant::now();
    let r = c.get(gw.https("/s?t=quiet")).send().await.expect("poll");
    assert_eq!(r.status(), 204);
    assert!(started.elapsed() >= Duration::from_millis(1400));

    let gone = tokio::spawn({
        let (c, url) = (
            e2e::client_builder().http1_only().build().expect("client"),
            gw.https("/s?t=leaving"),
        );
        async move { c.get(url).send().await }
    });
    assert!(wait_subscribers(&gw, "leaving", 1).await);
    gone.abort();
    // Removed as soon as the client hangs up, not when the 1.5 s wait would have ended.
    let removed_at = std::time::Instant::now();
    assert!(
        wait_subscribers(&gw, "leaving", 0).await,
        "a dead poller stayed"
    );
    assert!(removed_at.elapsed() < Duration::from_millis(1000));
}

/// Reads from `tls` until `n` whole responses have come (or `wait` passes).
async fn read_responses(
    tls: &mut e2e::TlsClient,
    bytes: &mut Vec<u8>,
    n: usize,
    wait: Duration,
) -> Vec<e2e::raw::Response> {
    use tokio::io::AsyncReadExt;
    let deadline = tokio::time::Instant::now() + wait;
    let mut buf = [0u8; 4096];
    loop {
        let answer = e2e::raw::Answer {
            bytes: bytes.clone(),
            closed: false,
            elapsed: Duration::ZERO,
        };
        let responses = answer.responses();
        if responses.len() >= n {
            return responses;
        }
        match tokio::time::timeout_at(deadline, tls.read(&mut buf)).await {
            Ok(Ok(read)) if read > 0 => bytes.extend_from_slice(&buf[..read]),
            _ => return responses,
        }
    }
}

#[tokio::test]
async fn a_connection_that_held_a_long_poll_serves_its_next_requests() {
    use tokio::io::AsyncWriteExt;
    // A held poll waits outside pingora's request loop and comes back to it once answered:
    // the client's connection goes on as any kept-alive one, poll after poll, and each poll is
    // logged with the status it got.
    let gw = Gateway::start(&CONFIG.replace(
        "tls: {state_dir: state}",
        "tls: {state_dir: state}\naccess_log: {path: access.log, format: json}",
    ));
    let mut tls = e2e::tls_connect(gw.https_addr()).await;
    let mut bytes = Vec::new();
    let poll = b"GET /s?t=again HTTP/1.1\r\nHost: localhost\r\n\r\n";
    for round in 1..=3u64 {
        tls.write_all(poll).await.expect("write");
        assert!(
            wait_subscribers(&gw, "again", 1).await,
            "poll {round} never waited"
        );
        publish(&gw, "again", json!({"round": round})).await;
        let responses =
            read_responses(&mut tls, &mut bytes, round as usize, Duration::from_secs(5)).await;
        let last = responses.last().expect("an answer");
        assert_eq!(
            responses.len() as u64,
            round,
            "{}",
            String::from_utf8_lossy(&bytes)
        );
        assert_eq!(last.status, 200, "{}", last.head);
        assert_eq!(
            last.header("x-seq"),
            Some(round.to_string()),
            "{}",
            last.head
        );
        assert_eq!(last.body_text(), json!({"round": round}).to_string());
    }
    // One that is not held (a publish on the same connection) still goes through pingora.
    tls.write_all(b"POST /p?t=again HTTP/1.1\r\nHost: localhost\r\nContent-Length: 2\r\n\r\nhi")
        .await
        .expect("write");
    let responses = read_responses(&mut tls, &mut bytes, 4, Duration::from_secs(5)).await;
    assert_eq!(responses.len(), 4, "{}", String::from_utf8_lossy(&bytes));
    assert_eq!(responses[3].status, 200, "{}", responses[3].head);

    // A poller that hangs up while held is gone at once, and logged without an answer.
    let mut leaving = e2e::tls_connect(gw.https_addr()).await;
    leaving
        .write_all(b"GET /s?t=gone HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .expect("write");
    assert!(wait_subscribers(&gw, "gone", 1).await);
    drop(leaving);
    assert!(
        wait_subscribers(&gw, "gone", 0).await,
        "a dead poller stayed"
    );

    let log = gw.dir.path().join("access.log");
    let logged = eventually(Duration::from_secs(5), || async {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        text.lines().filter(|l| l.contains("/s?t=again")).count() == 3
            && text.lines().any(|l| l.contains("/s?t=gone"))
    })
    .await;
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(logged, "{text}");
    for line in text.lines().filter(|l| l.contains("/s?t=again")) {
        let entry: Value = serde_json::from_str(line).expect("json line");
        assert_eq!(entry["status"], 200, "{line}");
    }
}

/// `keepalive_requests` holds on a connection whose polls are held: a held poll leaves
/// pingora and comes back once answered, and the connection's count of requests comes back
/// with it (it started again at every held poll, so a client polling in a loop was never
/// closed), as does its idle timeout.
#[tokio::test]
async fn a_connection_of_held_polls_serves_at_most_keepalive_requests() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let gw = Gateway::start(&CONFIG.replace(
        "tls: {state_dir: state}",
        "tls: {state_dir: state}\nlimits: {keepalive_requests: 3}",
    ));
    let mut tls = e2e::tls_connect(gw.https_addr()).await;
    let mut bytes = Vec::new();
    for round in 1..=3u64 {
        tls.write_all(b"GET /s?t=counted HTTP/1.1\r\nHost: localhost\r\n\r\n")
            .await
            .expect("write");
        assert!(
            wait_subscribers(&gw, "counted", 1).await,
            "poll {round} never waited"
        );
        publish(&gw, "counted", json!({"round": round})).await;
        let responses =
            read_responses(&mut tls, &mut bytes, round as usize, Duration::from_secs(5)).await;
        assert_eq!(
            responses.len() as u64,
            round,
            "{}",
            String::from_utf8_lossy(&bytes)
        );
        let last = responses.last().expect("an answer");
        assert_eq!(last.status, 200, "{}", last.head);
        assert_eq!(last.body_text(), json!({"round": round}).to_string());
        let closing = last
            .header("connection")
            .is_some_and(|v| v.eq_ignore_ascii_case("close"));
        assert_eq!(closing, round == 3, "answer {round}: {}", last.head);
    }
    // The third request was the connection's last: it is closed, not kept for a fourth.
    let mut rest = Vec::new();
    let ended = tokio::time::timeout(Duration::from_secs(5), tls.read_to_end(&mut rest)).await;
    assert!(
        ended.is_ok(),
        "the connection was kept after its last request"
    );
    assert!(rest.is_empty(), "{}", String::from_utf8_lossy(&rest));
}

#[tokio::test]
async fn long_poll_requests_are_checked() {
    let gw = Gateway::start(CONFIG);
    let c = client();
    for (method, path, status) in [
        ("GET", "/s", 400),
        ("POST", "/p", 400),
        ("GET", "/s?t=x&since=garbage", 400),
        ("GET", "/s/other", 404),
        ("GET", "/p?t=x", 405),
    ] {
        let r = c
            .request(method.parse().expect("method"), gw.https(path))
            .send()
            .await
            .expect("request");
        assert_eq!(r.status().as_u16(), status, "{method} {path}");
        assert!(
            !r.text().await.expect("body").is_empty(),
            "{path}: no reason given"
        );
    }
    let r = c
        .post(gw.https("/p?t=x"))
        .body(vec![0xff, 0xfe])
        .send()
        .await
        .expect("post");
    assert_eq!(r.status(), 400, "non-UTF-8 body");
}

/// A client polling in a loop with `since` sees every message exactly once, in order, even
/// those published while it was between two polls.
#[tokio::test]
async fn polling_with_since_misses_nothing_and_gets_a_reset_beyond_history() {
    let gw = Gateway::start(CONFIG);
    let c = client();
    let first = publish(&gw, "feed", json!("m1")).await;
    let mut since = first["position"].as_str().expect("position").to_string();
    let mut seen = vec!["m1".to_string()];
    let publisher = tokio::spawn({
        let gw_admin = gw.admin("/publish");
        async move {
            for i in 2..=15 {
                client()
                    .post(&gw_admin)
                    .json(&json!({"topic": "feed", "data": format!("m{i}")}))
                    .send()
                    .await
                    .expect("publish");
                tokio::time::sleep(Duration::from_millis(30)).await;
            }
        }
    });
    while seen.len() < 15 {
        let r = c
            .get(gw.https(&format!("/s?t=feed&since={since}")))
            .send()
            .await
            .expect("poll");
        if r.status() == 204 {
            continue;
        }
        assert_eq!(r.status(), 200);
        let body = r.text().await.expect("body");
        let batch = realtime::longpoll::decode_batch(&body).expect("framing");
        for (pos, text) in batch {
            since = pos.to_string();
            seen.push(text);
        }
        // Dawdle between polls so messages pile up and arrive as batches.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    publisher.await.expect("publisher");
    let want: Vec<String> = (1..=15).map(|i| format!("m{i}")).collect();
    assert_eq!(seen, want, "missing, duplicated or out of order");

    // 30 more: the history of 20 no longer holds what follows m15.
    for i in 16..=45 {
        publish(&gw, "feed", json!(format!("m{i}"))).await;
    }
    let r = c
        .get(gw.https(&format!("/s?t=feed&since={since}")))
        .send()
        .await
        .expect("poll");
    assert_eq!(r.status(), 409, "a gap must be announced");
    assert!(r.headers()["x-position"]
        .to_str()
        .expect("pos")
        .ends_with(":45"));
}

/// On HTTP/1.1 an event stream leaves pingora once its head is out (the gateway writes its
/// chunks on the client's own connection); on HTTP/2 it stays a stream of pingora's. The story
/// is the same on both.
#[tokio::test]
async fn sse_streams_resumes_from_last_event_id_and_signals_a_reset() {
    let gw = Gateway::start(CONFIG);
    let http1 = e2e::client_builder().http1_only().build().expect("client");
    sse_resume_story(&gw, &http1, "news1", reqwest::Version::HTTP_11).await;
    sse_resume_story(&gw, &client(), "news2", reqwest::Version::HTTP_2).await;
}

async fn sse_resume_story(
    gw: &Gateway,
    c: &reqwest::Client,
    topic: &str,
    version: reqwest::Version,
) {
    let mut stream = c
        .get(gw.https(&format!("/events?topic={topic}")))
        .send()
        .await
        .expect("sse");
    assert_eq!(stream.version(), version);
    if version == reqwest::Version::HTTP_11 {
        // The connection is the stream's now, and ends with it.
        assert_eq!(stream.headers()["connection"], "close");
    }
    assert_eq!(
        stream.headers()["content-type"],
        "text/event-stream; charset=utf-8"
    );
    assert!(stream.headers().get("content-encoding").is_none());
    assert!(wait_subscribers(gw, topic, 1).await);
    for i in 1..=3 {
        publish(gw, topic, json!(format!("n{i}"))).await;
    }
    let events = read_events(&mut stream, 3).await;
    assert_eq!(
        events.iter().map(|e| e.2.as_str()).collect::<Vec<_>>(),
        ["n1", "n2", "n3"]
    );
    assert!(events.iter().all(|e| e.1 == topic));
    let second_id = events[1].0.clone().expect("id");
    assert!(second_id.ends_with(":2"), "{second_id}");
    drop(stream);
    // The client went away: its subscription goes at once, not at the next heartbeat.
    assert!(
        wait_subscribers(gw, topic, 0).await,
        "the stream outlived its client"
    );

    publish(gw, topic, json!("n4")).await;
    let mut resumed = c
        .get(gw.https(&format!("/events?topic={topic}")))
        .header("last-event-id", &second_id)
        .send()
        .await
        .expect("sse");
    let events = read_events(&mut resumed, 2).await;
    assert_eq!(
        events.iter().map(|e| e.2.as_str()).collect::<Vec<_>>(),
        ["n3", "n4"],
        "resume must give exactly what followed the last id"
    );

    let epoch = second_id.split(':').next().expect("epoch");
    let mut stale = c
        .get(gw.https(&format!(
            "/events?topic={topic}&lastEventId={}:1",
            "f".repeat(epoch.len())
        )))
        .send()
        .await
        .expect("sse");
    let events = read_events(&mut stale, 1).await;
    assert_eq!(events[0].1, "reset", "{events:?}");
    assert!(events[0].2.contains("\"position\""));
}

#[tokio::test]
async fn one_publish_reaches_a_long_poll_and_two_sse_streams_at_once() {
    let gw = Gateway::start(CONFIG);
    let c = client();
    let poll = tokio::spawn({
        let (c, url) = (c.clone(), gw.https("/s?t=all"));
        async move { c.get(url).send().await }
    });
    let mut one = c
        .get(gw.https("/events?topic=all"))
        .send()
        .await
        .expect("sse");
    let mut two = c
        .get(gw.https("/events?topic=all&topic=other"))
        .send()
        .await
        .expect("sse");
    assert!(wait_subscribers(&gw, "all", 3).await);
    let r = publish(&gw, "all", json!({"hello": "everyone"})).await;
    assert_eq!(r["seq"], 1);
    let body = poll
        .await
        .expect("join")
        .expect("poll")
        .text()
        .await
        .expect("body");
    assert_eq!(body, r#"{"hello":"everyone"}"#);
    assert_eq!(
        read_events(&mut one, 1).await[0].2,
        r#"{"hello":"everyone"}"#
    );
    let e = read_events(&mut two, 1).await;
    assert_eq!(e[0].1, "all");
    assert!(e[0].0.as_deref().unwrap_or("").starts_with("all@"), "{e:?}");
}

#[tokio::test]
async fn the_publish_api_counts_a_retry_once_and_explains_errors() {
    let gw = Gateway::start(CONFIG);
    let c = client();
    let send = |key: Option<&'static str>, body: &'static str| {
        let mut r = c
            .post(gw.admin("/publish"))
            .header("content-type", "application/json")
            .body(body);
        if let Some(k) = key {
            r = r.header("idempotency-key", k);
        }
        r.send()
    };
    let body = r#"{"topic":"orders","event":"created","data":{"id":7}}"#;
    let a: Value = send(Some("order-7"), body)
        .await
        .expect("p")
        .json()
        .await
        .expect("j");
    let b: Value = send(Some("order-7"), body)
        .await
        .expect("p")
        .json()
        .await
        .expect("j");
    assert_eq!(a["seq"], 1);
    assert_eq!(b["seq"], 1);
    assert_eq!(b["duplicate"], true);
    let info: Value = c
        .get(gw.admin("/topics/orders"))
        .send()
        .await
        .expect("t")
        .json()
        .await
        .expect("j");
    assert_eq!(info["seq"], 1, "the retry was published twice");

    let r = send(None, "{not json").await.expect("p");
    assert_eq!(r.status(), 400);
    let v: Value = r.json().await.expect("j");
    assert!(
        v["error"].as_str().unwrap_or("").contains("invalid JSON"),
        "{v}"
    );
    let r = c
        .post(gw.admin("/publish"))
        .header("content-type", "application/json")
        .body(vec![b'x'; 2 * 1024 * 1024])
        .send()
        .await
        .expect("p");
    assert_eq!(r.status(), 413);
    // And it still works.
    let ok: Value = send(None, body).await.expect("p").json().await.expect("j");
    assert_eq!(ok["seq"], 2);
}

#[tokio::test]
async fn a_token_protects_the_publish_api() {
    let gw =
        Gateway::start(&CONFIG.replace("realtime:\n", "realtime:\n  publish: {token: s3cret}\n"));
    let c = client();
    let r = c
        .post(gw.admin("/publish"))
        .json(&json!({"topic": "t", "data": 1}))
        .send()
        .await
        .expect("p");
    assert_eq!(r.status(), 401);
    assert_eq!(r.headers()["www-authenticate"], "Bearer");
    let r = c
        .post(gw.admin("/publish"))
        .bearer_auth("s3cret")
        .json(&json!({"topic": "t", "data": 1}))
        .send()
        .await
        .expect("p");
    assert_eq!(r.status(), 200);
}
