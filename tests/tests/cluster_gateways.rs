//! Two gateway processes on one redis-server (real binaries, free ports): what is published on
//! either node reaches the subscribers of both, on every transport, exactly once and in one
//! order; a client that read up to a position on one node resumes on the other with exactly
//! what followed.

use std::time::Duration;

use e2e::fleet::{
    long_poll, nodes, publish_api, publish_longpoll, pubsub, socketio_scenario, wait_cluster_ok,
    wait_subscribers, ws_next, ws_send, ws_subscribe, Sse, Ws,
};
use e2e::redis::RedisServer;
use e2e::Gateway;
use serde_json::{json, Value};

/// Reads a long-poll stream from `since` until `total` messages came (or a minute passed).
async fn poll_all(gw: &Gateway, topic: &str, since: String, total: usize) -> Vec<(String, String)> {
    let mut since = since;
    let mut got = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while got.len() < total && std::time::Instant::now() < deadline {
        let p = long_poll(gw, topic, Some(&since)).await;
        match p.status {
            200 => {
                for (pos, body) in p.messages {
                    since = pos.to_string();
                    got.push((pos.to_string(), body));
                }
            }
            204 => {}
            other => panic!("long-poll answered {other} after {since}"),
        }
    }
    got
}

/// The next `n` messages a pubsub.v1 subscriber receives, as (position, data).
async fn ws_messages(ws: &mut Ws, n: usize) -> Vec<(String, String)> {
    let mut got = Vec::new();
    while got.len() < n {
        let Some(m) = ws_next(ws, Duration::from_secs(20)).await else {
            break;
        };
        assert_eq!(m["op"], "message", "{m}");
        got.push((
            m["position"].as_str().unwrap_or_default().to_string(),
            m["data"].as_str().unwrap_or_default().to_string(),
        ));
    }
    got
}

fn sse_messages(sse: &Sse) -> Vec<(String, String)> {
    sse.events
        .iter()
        .map(|e| {
            assert_ne!(e.event, "reset", "no reset expected: {e:?}");
            (e.id.clone().unwrap_or_default(), e.data.clone())
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_thousand_messages_from_both_nodes_reach_every_subscriber_on_both_in_one_order() {
    const TOPIC: &str = "fleet";
    const EACH: usize = 500;
    let redis = RedisServer::start();
    let gws = nodes(&redis, 2, 2000);
    let (a, b) = (&gws[0], &gws[1]);
    wait_cluster_ok(&[a, b]).await;

    // On each node: an SSE stream, a pubsub.v1 subscriber and a long-poller.
    let mut sse = [
        Sse::open(a, TOPIC, None).await,
        Sse::open(b, TOPIC, None).await,
    ];
    let mut subs = [pubsub(a).await, pubsub(b).await];
    let mut start = Vec::new();
    for ws in subs.iter_mut() {
        let s = ws_subscribe(ws, TOPIC, None).await;
        assert_eq!(s["op"], "subscribed", "{s}");
        start.push(s["position"].as_str().expect("position").to_string());
    }
    assert_eq!(
        start[0], start[1],
        "both nodes place the topic at the fleet's position"
    );
    assert!(start[0].ends_with(":0"), "{start:?}");
    wait_subscribers(a, TOPIC, 2).await;
    wait_subscribers(b, TOPIC, 2).await;

    // Both nodes publish at once: a through the publish API, b through /p and pubsub.v1 in turn.
    let publish_a = async {
        for i in 0..EACH {
            let (status, v) = publish_api(a, TOPIC, json!(format!("a-{i}"))).await;
            assert_eq!(status, 200, "{v}");
        }
    };
    let publish_b = async {
        let mut ws = pubsub(b).await;
        for i in 0..EACH {
            if i % 2 == 0 {
                let (status, body) = publish_longpoll(b, TOPIC, &format!("b-{i}")).await;
                assert_eq!(status, 200, "{body}");
            } else {
                ws_send(
                    &mut ws,
                    json!({"op": "publish", "topic": TOPIC, "data": format!("b-{i}"), "id": i}),
                )
                .await;
                let ack = ws_next(&mut ws, Duration::from_secs(10))
                    .await
                    .expect("an answer");
                assert_eq!(ack["op"], "published", "{ack}");
                assert_eq!(ack["id"], i);
            }
        }
    };
    let total = 2 * EACH;
    let (_, _, polled_a, polled_b) = tokio::join!(
        publish_a,
        publish_b,
        poll_all(a, TOPIC, start[0].clone(), total),
        poll_all(b, TOPIC, start[1].clone(), total),
    );

    let mut seen: Vec<(&str, Vec<(String, String)>)> =
        vec![("long-poll on a", polled_a), ("long-poll on b", polled_b)];
    for (name, s) in ["sse on a", "sse on b"].into_iter().zip(sse.iter_mut()) {
        s.read_until(total, Duration::from_secs(30)).await;
        seen.push((name, sse_messages(s)));
    }
    for (name, ws) in ["pubsub on a", "pubsub on b"]
        .into_iter()
        .zip(subs.iter_mut())
    {
        seen.push((name, ws_messages(ws, total).await));
    }
    let (first_name, first) = &seen[0];
    assert_eq!(first.len(), total, "{first_name}");
    let epoch = start[0].split(':').next().expect("epoch");
    let positions: Vec<String> = first.iter().map(|(p, _)| p.clone()).collect();
    let want: Vec<String> = (1..=total).map(|s| format!("{epoch}:{s}")).collect();
    assert_eq!(positions, want, "one epoch, every seq once, in order");
    for (name, got) in &seen[1..] {
        assert_eq!(got.len(), total, "{name}");
        assert!(got == first, "{name} saw another order than {first_name}");
    }
    // Each publisher's messages in its own order.
    for (who, n) in [("a", EACH), ("b", EACH)] {
        let mine: Vec<&str> = first
            .iter()
            .map(|(_, d)| d.as_str())
            .filter(|d| d.starts_with(&format!("{who}-")))
            .collect();
        let want: Vec<String> = (0..n).map(|i| format!("{who}-{i}")).collect();
        assert_eq!(mine, want, "{who}'s order");
    }
    // Both publishers' messages are interleaved: the two nodes published at the same time.
    let switches = first
        .windows(2)
        .filter(|w| w[0].1[..1] != w[1].1[..1])
        .count();
    println!("{total} messages from two nodes, one order on six subscribers; {switches} switches between publishers");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_client_resumes_on_the_other_node_with_exactly_what_followed() {
    const TOPIC: &str = "resume";
    let redis = RedisServer::start();
    let gws = nodes(&redis, 2, 100);
    let (a, b) = (&gws[0], &gws[1]);
    wait_cluster_ok(&[a, b]).await;

    // A reader on a reads four messages, then goes away.
    let mut on_a = Sse::open(a, TOPIC, None).await;
    wait_subscribers(a, TOPIC, 1).await;
    for i in 1..=10 {
        let (status, v) = publish_api(a, TOPIC, json!(format!("m{i}"))).await;
        assert_eq!(status, 200, "{v}");
    }
    on_a.read_until(4, Duration::from_secs(10)).await;
    let p = on_a.events[3].id.clone().expect("an id");
    assert_eq!(on_a.events[3].data, "m4");
    drop(on_a);
    // More is published, on b this time, while it is away.
    for i in 11..=16 {
        let (status, v) = publish_api(b, TOPIC, json!(format!("m{i}"))).await;
        assert_eq!(status, 200, "{v}");
    }
    let after_p: Vec<String> = (5..=16).map(|i| format!("m{i}")).collect();

    // SSE on b with Last-Event-ID: b has never had the topic; Redis's history serves it.
    let mut on_b = Sse::open(b, TOPIC, Some(&p)).await;
    on_b.read_until(12, Duration::from_secs(10)).await;
    let data: Vec<String> = on_b.events.iter().map(|e| e.data.clone()).collect();
    assert_eq!(
        data, after_p,
        "exactly what followed {p}: {:?}",
        on_b.events
    );
    assert!(on_b.events.iter().all(|e| e.event == TOPIC));
    // ... and live ones follow, without a gap.
    publish_api(a, TOPIC, json!("m17")).await;
    on_b.read_until(13, Duration::from_secs(10)).await;
    assert_eq!(on_b.events[12].data, "m17");

    // Long-poll with since on b.
    let poll = long_poll(b, TOPIC, Some(&p)).await;
    assert_eq!(poll.status, 200);
    let data: Vec<String> = poll.messages.iter().map(|(_, d)| d.clone()).collect();
    let mut want = after_p.clone();
    want.push("m17".into());
    assert_eq!(data, want);

    // pubsub.v1 with since, on a node-fresh connection to b.
    let mut ws = pubsub(b).await;
    let s = ws_subscribe(&mut ws, TOPIC, Some(&p)).await;
    assert_eq!(s["op"], "subscribed", "{s}");
    let mut got = Vec::new();
    for _ in 0..13 {
        let m = ws_next(&mut ws, Duration::from_secs(10))
            .await
            .expect("a message");
        got.push(m["data"].as_str().unwrap_or_default().to_string());
    }
    assert_eq!(got, want);

    // A position of another incarnation of the topic is an explicit reset on every transport.
    let stale = format!("{}:3", "f".repeat(16));
    let mut sse = Sse::open(b, TOPIC, Some(&stale)).await;
    sse.read_until(1, Duration::from_secs(10)).await;
    assert_eq!(sse.events[0].event, "reset", "{:?}", sse.events);
    assert_eq!(long_poll(b, TOPIC, Some(&stale)).await.status, 409);
    let mut ws = pubsub(a).await;
    assert_eq!(
        ws_subscribe(&mut ws, TOPIC, Some(&stale)).await["op"],
        "reset"
    );
}

#[test]
fn socketio_relays_reach_the_other_node_in_rooms_and_the_namespace() {
    let redis = RedisServer::start();
    let gws = nodes(&redis, 2, 100);
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(wait_cluster_ok(&[&gws[0], &gws[1]]));
    let bases = [gws[0].https(""), gws[1].https("")];
    for mode in ["polling", "websocket", "upgrade"] {
        let v = socketio_scenario("relay", mode, &bases);
        let from = |who: &str, of: &str| -> Vec<i64> {
            v["got"][who]
                .as_array()
                .expect("events")
                .iter()
                .filter(|e| e["from"] == of)
                .map(|e| e["n"].as_i64().unwrap_or(-1))
                .collect()
        };
        let all: Vec<i64> = (0..40).collect();
        // a (first node) and b (second node) hear each other's relays in room r, once, in order.
        assert_eq!(from("a", "b"), all, "{mode}: {v}");
        assert_eq!(from("b", "a"), all, "{mode}: {v}");
        assert!(
            from("a", "a").is_empty() && from("b", "b").is_empty(),
            "{mode}: the sender is excluded"
        );
        // c relays to the whole namespace (it is in no room): everyone else, on both nodes.
        for who in ["a", "b", "d"] {
            assert_eq!(from(who, "c"), [0], "{mode}: {who}: {v}");
        }
        assert!(
            v["got"]["c"].as_array().is_some_and(|e| e.is_empty()),
            "{mode}: {v}"
        );
        // d is in no room: room r's relays never reach it.
        assert!(
            from("d", "a").is_empty() && from("d", "b").is_empty(),
            "{mode}: {v}"
        );
        // The acks carry the fleet's seq of room r: a's and b's together are one run.
        let mut seqs: Vec<i64> = ["a", "b"]
            .iter()
            .flat_map(|w| {
                v["acks"][*w]
                    .as_array()
                    .expect("acks")
                    .iter()
                    .map(|a| a["seq"].as_i64().unwrap_or(-1))
                    .collect::<Vec<_>>()
            })
            .collect();
        for w in ["a", "b"] {
            let mine: Vec<i64> = v["acks"][w]
                .as_array()
                .expect("acks")
                .iter()
                .map(|a| a["seq"].as_i64().unwrap_or(-1))
                .collect();
            assert!(
                mine.windows(2).all(|p| p[0] < p[1]),
                "{mode}: {w}'s acks in order: {mine:?}"
            );
        }
        seqs.sort();
        let first = seqs[0];
        assert!(first >= 1, "{mode}: {seqs:?}");
        assert_eq!(seqs, (first..first + 80).collect::<Vec<_>>(), "{mode}");
        assert!(
            v["toAll"]["seq"].as_i64().is_some_and(|s| s >= 1),
            "{mode}: {v}"
        );
        let _: &Value = &v;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_app_publish_on_either_node_reaches_socketio_rooms_on_both() {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};

    let redis = RedisServer::start();
    let gws = nodes(&redis, 2, 100);
    let (a, b) = (&gws[0], &gws[1]);
    wait_cluster_ok(&[a, b]).await;
    let mut node = Command::new("node")
        .arg(e2e::workspace_root().join("tests/js/cluster.mjs"))
        .args(["listen", "websocket", &a.https(""), &b.https("")])
        .stdout(Stdio::piped())
        .spawn()
        .expect("node");
    let mut lines = BufReader::new(node.stdout.take().expect("stdout")).lines();
    let ready = lines.next().expect("a line").expect("utf-8");
    assert!(ready.contains("ready"), "{ready}");
    // Room "news" of the main namespace is topic "news": the publish API reaches it.
    for (gw, n) in [(a, 1), (b, 2)] {
        let r = e2e::client()
            .post(gw.admin("/publish"))
            .json(&json!({"topic": "news", "event": "note", "data": {"n": n}}))
            .send()
            .await
            .expect("publish");
        assert_eq!(r.status(), 200);
    }
    let last = lines.next().expect("a result").expect("utf-8");
    let status = node.wait().expect("node exits");
    let v: Value = serde_json::from_str(&last).expect("json");
    assert!(status.success() && v.get("error").is_none(), "{v}");
    for i in 0..2 {
        assert_eq!(v["got"][i], json!([{"n": 1}, {"n": 2}]), "client {i}: {v}");
    }
}
