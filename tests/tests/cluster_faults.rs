//! A fleet's faults with real processes: Redis unreachable when a gateway starts, Redis killed
//! and restarted under a stream of publishes, the nodes' subscriptions cut. Nothing is accepted
//! and dropped: a publish is delivered once, or refused with 503 and the reason, or lies inside
//! a reset every subscriber is told of.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use e2e::fleet::{
    health, node_config, nodes, publish_api, publish_longpoll, pubsub, socketio_scenario,
    wait_cluster_ok, wait_subscribers, ws_next, ws_send, ws_subscribe, Sse, SseEvent,
};
use e2e::redis::RedisServer;
use e2e::{eventually, Gateway};
use realtime::hub::Position;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_unreachable_at_start_the_node_serves_and_refuses_publishes_with_the_reason() {
    let mut redis = RedisServer::start_with(&["--requirepass", "s3cret"]);
    redis.kill();
    let url = format!("redis://:s3cret@127.0.0.1:{}/0", redis.port);
    let gw = Gateway::start(&node_config(&url, "lonely", 100));

    // It serves HTTP, and says why the cluster is degraded.
    let degraded = eventually(Duration::from_secs(10), || async {
        let h = health(&gw).await;
        h["cluster"]["reason"]
            .as_str()
            .is_some_and(|r| r.starts_with("redis unreachable: "))
    })
    .await;
    let h = health(&gw).await;
    assert!(degraded, "{h}");
    assert_eq!(h["status"], "degraded");
    assert_eq!(h["cluster"]["status"], "degraded");
    assert_eq!(h["cluster"]["node_id"], "lonely");
    assert_eq!(
        h["cluster"]["redis"],
        format!("redis://:***@127.0.0.1:{}/0", redis.port)
    );
    assert!(!h.to_string().contains("s3cret"), "{h}");

    // Subscribing works (local realtime)...
    let mut sse = Sse::open(&gw, "news", None).await;
    let mut ws = pubsub(&gw).await;
    assert_eq!(
        ws_subscribe(&mut ws, "other", None).await["op"],
        "subscribed"
    );
    wait_subscribers(&gw, "news", 1).await;
    // ... publishing through any API is refused, with the reason, not accepted and dropped.
    let (status, v) = publish_api(&gw, "news", json!("lost?")).await;
    assert_eq!(status, 503, "{v}");
    let why = v["error"].as_str().unwrap_or_default().to_string();
    assert!(why.starts_with("the cluster is unavailable: "), "{why}");
    let (status, body) = publish_longpoll(&gw, "news", "lost?").await;
    assert_eq!(status, 503);
    assert!(body.starts_with("the cluster is unavailable: "), "{body}");
    ws_send(
        &mut ws,
        json!({"op": "publish", "topic": "news", "data": "lost?", "id": 7}),
    )
    .await;
    let answer = ws_next(&mut ws, Duration::from_secs(5))
        .await
        .expect("an answer");
    assert_eq!(answer["op"], "error", "{answer}");
    assert_eq!(answer["id"], 7);
    assert!(
        answer["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("publish refused: the cluster is unavailable: ")),
        "{answer}"
    );
    // The connection goes on.
    assert_eq!(
        ws_subscribe(&mut ws, "third", None).await["op"],
        "subscribed"
    );
    let v = socketio_scenario("unavailable", "websocket", &[gw.https("")]);
    assert!(
        v["ack"]["error"]
            .as_str()
            .is_some_and(|e| e.starts_with("the cluster is unavailable: ")),
        "{v}"
    );

    // Redis comes: the node connects, publishes go through, and the stream opened during the
    // outage is told it may have missed messages (a reset) before the next one.
    redis.restart();
    wait_cluster_ok(&[&gw]).await;
    let (status, v) = publish_api(&gw, "news", json!("after")).await;
    assert_eq!(status, 200, "{v}");
    sse.read_until(2, Duration::from_secs(10)).await;
    let kinds: Vec<&str> = sse.events.iter().map(|e| e.event.as_str()).collect();
    assert_eq!(kinds, ["reset", "news"], "{:?}", sse.events);
    assert_eq!(sse.events[1].data, "after");
    assert!(
        !gw.proc.logs().contains("s3cret"),
        "the password is never logged"
    );
    assert!(gw.proc.logs().contains("redis://:***@"));
}

/// What one subscriber's stream accounts for: the messages delivered (position, data), and the
/// ranges declared lost by resets (from, to).
struct Accounted {
    delivered: Vec<(Position, String)>,
    lost: Vec<(Position, Position)>,
}

/// Walks one subscriber's events: messages must follow each other (same epoch, next seq);
/// a reset says what is lost (the rest of its epoch, and its own epoch up to its position).
fn account(events: &[SseEvent]) -> Accounted {
    let mut delivered: Vec<(Position, String)> = Vec::new();
    let mut lost = Vec::new();
    let mut current: Option<Position> = None;
    for e in events {
        if e.event == "reset" {
            let v: serde_json::Value = serde_json::from_str(&e.data).expect("reset json");
            let to: Position = v["position"]
                .as_str()
                .expect("position")
                .parse()
                .expect("pos");
            let from = current.unwrap_or(Position::new(to.epoch, 0));
            if let Some(cur) = current {
                if cur.epoch == to.epoch {
                    assert!(to.seq >= cur.seq, "a reset backwards: {cur} -> {to}");
                }
            }
            lost.push((from, to));
            current = Some(to);
            continue;
        }
        let p: Position = e.id.as_deref().expect("an id").parse().expect("pos");
        if let Some(cur) = current {
            assert_eq!(
                p.epoch, cur.epoch,
                "a new epoch without a reset: {cur} -> {p}"
            );
            assert_eq!(p.seq, cur.seq + 1, "out of order after {cur}: {p}");
        }
        assert!(
            !delivered.iter().any(|(q, _)| *q == p),
            "{p} delivered twice"
        );
        delivered.push((p, e.data.clone()));
        current = Some(p);
    }
    Accounted { delivered, lost }
}

/// Whether `p` lies inside one of the `lost` ranges (after `from` in its epoch, or up to `to`
/// in `to`'s).
fn inside(p: Position, lost: &[(Position, Position)]) -> bool {
    lost.iter().any(|(from, to)| {
        (p.epoch == from.epoch && p.seq > from.seq && (from.epoch != to.epoch || p.seq <= to.seq))
            || (p.epoch == to.epoch && p.seq <= to.seq)
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_killed_and_restarted_mid_stream_every_message_is_accounted_for() {
    const TOPIC: &str = "ticker";
    let mut redis = RedisServer::start();
    let gws = nodes(&redis, 2, 1000);
    let (a, b) = (&gws[0], &gws[1]);
    wait_cluster_ok(&[a, b]).await;
    let mut streams = [
        Sse::open(a, TOPIC, None).await,
        Sse::open(b, TOPIC, None).await,
    ];
    wait_subscribers(a, TOPIC, 1).await;
    wait_subscribers(b, TOPIC, 1).await;

    let publisher = async {
        let mut accepted: Vec<(Position, String)> = Vec::new();
        let mut refused: Vec<(String, String)> = Vec::new();
        for i in 0..400 {
            let data = format!("m{i}");
            // Alternately on both nodes.
            let gw = if i % 2 == 0 { a } else { b };
            let (status, v) = publish_api(gw, TOPIC, json!(data)).await;
            match status {
                200 => accepted.push((
                    v["position"]
                        .as_str()
                        .expect("position")
                        .parse()
                        .expect("pos"),
                    data,
                )),
                _ => {
                    assert_eq!(status, 503, "{v}");
                    refused.push((data, v["error"].as_str().unwrap_or_default().to_string()));
                }
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        (accepted, refused)
    };
    let outage = async {
        tokio::time::sleep(Duration::from_millis(700)).await;
        redis.kill();
        let noticed = eventually(Duration::from_secs(10), || async {
            health(a).await["cluster"]["status"] == "degraded"
        })
        .await;
        assert!(noticed, "{}", health(a).await);
        tokio::time::sleep(Duration::from_millis(500)).await;
        redis.restart();
        Instant::now()
    };
    let ((accepted, refused), back_at) = tokio::join!(publisher, outage);
    assert!(!refused.is_empty(), "some publishes met the outage");
    for (_, why) in &refused {
        assert!(
            why.starts_with("the cluster is unavailable: ")
                || why.starts_with("the cluster publish failed: "),
            "{why}"
        );
    }
    let last = accepted.last().expect("accepted publishes").0;
    let first = accepted[0].0;
    assert_ne!(
        first.epoch, last.epoch,
        "redis lost everything: the topic has a new epoch"
    );
    println!(
        "{} accepted, {} refused while redis was away; back in {:?}",
        accepted.len(),
        refused.len(),
        back_at.elapsed()
    );

    let refused: HashSet<&str> = refused.iter().map(|(d, _)| d.as_str()).collect();
    for (name, s) in ["a", "b"].iter().zip(streams.iter_mut()) {
        // Read until the last accepted publish is in.
        let last_id = last.to_string();
        let has_last = |s: &Sse| s.events.iter().any(|e| e.id.as_deref() == Some(&last_id));
        let deadline = Instant::now() + Duration::from_secs(20);
        while !has_last(s) && Instant::now() < deadline {
            let n = s.events.len() + 1;
            s.read_until(n, Duration::from_millis(500)).await;
        }
        assert!(has_last(s), "{name} never got {last}");
        let Accounted { delivered, lost } = account(&s.events);
        assert!(
            !lost.is_empty(),
            "{name}: the lost epoch is a declared reset"
        );
        for (p, data) in &accepted {
            let got = delivered.iter().find(|(q, _)| q == p);
            match got {
                Some((_, d)) => assert_eq!(d, data, "{name}: {p}"),
                None => assert!(inside(*p, &lost), "{name}: {p} ({data}) lost silently"),
            }
        }
        for (_, d) in &delivered {
            assert!(
                !refused.contains(d.as_str()),
                "{name}: a refused publish was delivered: {d}"
            );
        }
        let after: Vec<&(Position, String)> = delivered
            .iter()
            .filter(|(p, _)| p.epoch == last.epoch)
            .collect();
        assert!(
            !after.is_empty(),
            "{name}: delivery continues after the restart"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn lost_subscriptions_are_backfilled_from_history_without_a_reset() {
    const TOPIC: &str = "steady";
    let redis = RedisServer::start();
    let gws = nodes(&redis, 2, 1000);
    let (a, b) = (&gws[0], &gws[1]);
    wait_cluster_ok(&[a, b]).await;
    let mut streams = [
        Sse::open(a, TOPIC, None).await,
        Sse::open(b, TOPIC, None).await,
    ];
    wait_subscribers(a, TOPIC, 1).await;
    wait_subscribers(b, TOPIC, 1).await;
    let publisher = async {
        let mut accepted = Vec::new();
        for i in 0..200 {
            let gw = if i % 2 == 0 { a } else { b };
            let (status, v) = publish_api(gw, TOPIC, json!(format!("m{i}"))).await;
            if status == 200 {
                accepted.push(format!("m{i}"));
            } else {
                assert_eq!(status, 503, "{v}");
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        accepted
    };
    let cut = async {
        // Every node's subscription dies (Redis keeps its data): pub/sub messages published
        // until they are back are lost to them, and read back from the history.
        for _ in 0..3 {
            tokio::time::sleep(Duration::from_millis(250)).await;
            redis.cli(&["CLIENT", "KILL", "TYPE", "pubsub"]);
        }
    };
    let (accepted, ()) = tokio::join!(publisher, cut);
    for (name, s) in ["a", "b"].iter().zip(streams.iter_mut()) {
        s.read_until(accepted.len(), Duration::from_secs(20)).await;
        let Accounted { delivered, lost } = account(&s.events);
        assert!(lost.is_empty(), "{name}: history covers the gaps: {lost:?}");
        let data: Vec<&str> = delivered.iter().map(|(_, d)| d.as_str()).collect();
        let want: Vec<&str> = accepted.iter().map(String::as_str).collect();
        assert_eq!(data, want, "{name}: every message once, in order");
    }
    let backfills: u64 = [a, b]
        .iter()
        .map(|gw| async move {
            health(gw).await["cluster"]["backfills"]
                .as_u64()
                .unwrap_or(0)
        })
        .collect::<futures_util::future::JoinAll<_>>()
        .await
        .into_iter()
        .sum();
    assert!(backfills > 0, "the gaps were read back from history");
}
