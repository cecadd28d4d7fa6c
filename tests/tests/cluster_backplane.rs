//! The cluster backplane (realtime::cluster) against a real redis-server: several nodes (one
//! `Backplane` each, in this process) on one Redis, publishing to shared topics.
//!
//! Every test checks each node's deliveries with the same rule: within an epoch, each message
//! is exactly the next seq; only a declared reset may jump (forward, or to a later epoch); no
//! position is delivered twice. Each node follows [`TOPIC`] (a node delivers only the topics
//! it follows).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use e2e::redis::RedisServer;
use realtime::cluster::{Backplane, BackplaneConfig, BackplaneError, Delivery, Link, Resume, Sink};
use realtime::hub::{MessageId, Payload, Position};
use serde_json::json;

const TOPIC: &str = "orders";

/// What one node's sink received, per topic.
#[derive(Default)]
struct Recorder {
    seen: Mutex<Vec<(String, Delivery)>>,
}

impl Sink for Recorder {
    fn deliver(&self, topic: &str, delivery: Delivery) {
        self.seen
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((topic.to_string(), delivery));
    }
}

impl Recorder {
    fn of(&self, topic: &str) -> Vec<Delivery> {
        self.seen
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter(|(t, _)| t == topic)
            .map(|(_, d)| d.clone())
            .collect()
    }

    /// Messages delivered (starts and resets not counted).
    fn messages(&self, topic: &str) -> usize {
        self.of(topic)
            .iter()
            .filter(|d| matches!(d, Delivery::Message { .. }))
            .count()
    }

    /// Positions delivered, checking the ordering rule on the way.
    fn checked(&self, topic: &str) -> Checked {
        let mut c = Checked::default();
        let mut current: Option<Position> = None;
        for d in self.of(topic) {
            match d {
                Delivery::Start { at, .. } => {
                    assert!(current.is_none(), "a start after deliveries: {at}");
                    current = Some(at);
                }
                Delivery::Message { position, body } => {
                    if let Some(cur) = current {
                        assert_eq!(position.epoch, cur.epoch, "across epochs without reset");
                        assert_eq!(position.seq, cur.seq + 1, "out of order after {cur}");
                    }
                    assert!(
                        !c.messages.iter().any(|(p, _)| *p == position),
                        "{position} delivered twice"
                    );
                    c.messages.push((position, body.payload.data.clone()));
                    current = Some(position);
                }
                Delivery::Reset { to } => {
                    if let Some(cur) = current {
                        if to.epoch == cur.epoch {
                            assert!(to.seq > cur.seq, "reset backwards: {cur} -> {to}");
                        } else {
                            assert!(to.epoch.raw() > cur.epoch.raw(), "reset to an older epoch");
                        }
                    }
                    c.resets.push(to);
                    current = Some(to);
                }
            }
        }
        c.current = current;
        c
    }
}

#[derive(Default, Debug)]
struct Checked {
    messages: Vec<(Position, serde_json::Value)>,
    resets: Vec<Position>,
    current: Option<Position>,
}

struct Node {
    backplane: Backplane,
    sink: Arc<Recorder>,
}

fn config(url: &str, node: &str) -> BackplaneConfig {
    let mut c = BackplaneConfig::new(url, node);
    c.backoff_min = Duration::from_millis(20);
    c.backoff_max = Duration::from_millis(200);
    c.ping_interval = Duration::from_millis(200);
    c.connect_timeout = Duration::from_millis(500);
    c.response_timeout = Duration::from_secs(1);
    c
}

async fn node_with(config: BackplaneConfig) -> Node {
    let sink = Arc::new(Recorder::default());
    let backplane = Backplane::start(config, sink.clone()).expect("valid config");
    assert!(
        backplane.wait_up(Duration::from_secs(10)).await,
        "not connected: {:?}",
        backplane.link()
    );
    backplane.follow(TOPIC, &mut |_| {});
    Node { backplane, sink }
}

async fn node(redis: &RedisServer, name: &str) -> Node {
    node_with(config(&redis.url(), name)).await
}

fn payload(n: u64) -> Arc<Payload> {
    Arc::new(Payload::new("msg", json!(n)))
}

async fn publish(node: &Node, topic: &str, n: u64) -> Result<Position, BackplaneError> {
    node.backplane
        .publish(topic, MessageId::generate(), payload(n))
        .await
}

/// Waits until `cond` holds (checked every 20 ms) or panics with `what`.
async fn eventually(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < timeout, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishes_from_two_nodes_reach_both_in_one_order_exactly_once() {
    let redis = RedisServer::start();
    let a = Arc::new(node(&redis, "a").await);
    let b = Arc::new(node(&redis, "b").await);
    const EACH: u64 = 200;
    let mut tasks = Vec::new();
    for (who, n) in [(a.clone(), 0u64), (b.clone(), 1_000_000)] {
        tasks.push(tokio::spawn(async move {
            let mut positions = Vec::new();
            for i in 0..EACH {
                positions.push(publish(&who, TOPIC, n + i).await.expect("publish"));
            }
            positions
        }));
    }
    let mut published = Vec::new();
    for t in tasks {
        published.extend(t.await.expect("publisher task"));
    }
    let total = 2 * EACH as usize;
    eventually(
        "both nodes have every message",
        Duration::from_secs(20),
        || a.sink.messages(TOPIC) >= total && b.sink.messages(TOPIC) >= total,
    )
    .await;
    let (ca, cb) = (a.sink.checked(TOPIC), b.sink.checked(TOPIC));
    assert!(
        ca.resets.is_empty() && cb.resets.is_empty(),
        "no reset: {:?} {:?}",
        ca.resets,
        cb.resets
    );
    assert_eq!(ca.messages.len(), total);
    assert_eq!(ca.messages, cb.messages, "one order for the whole fleet");
    let seqs: Vec<u64> = ca.messages.iter().map(|(p, _)| p.seq).collect();
    assert_eq!(seqs, (1..=total as u64).collect::<Vec<_>>());
    // Each publish's returned position holds its message, on both nodes.
    published.sort_by_key(|p| p.seq);
    assert_eq!(
        published,
        ca.messages.iter().map(|(p, _)| *p).collect::<Vec<_>>()
    );
    // Per publisher, its own messages are in its publishing order.
    let mine: Vec<u64> = ca
        .messages
        .iter()
        .filter_map(|(_, v)| v.as_u64())
        .filter(|v| *v < 1_000_000)
        .collect();
    assert_eq!(mine, (0..EACH).collect::<Vec<_>>());
    println!(
        "two nodes: {total} messages, identical order on both, backfills a={} b={}",
        a.backplane
            .stats()
            .backfills
            .load(std::sync::atomic::Ordering::Relaxed),
        b.backplane
            .stats()
            .backfills
            .load(std::sync::atomic::Ordering::Relaxed)
    );
}

/// A Redis where node "b" logs in as its own ACL user, so that a test can cut b off (kill its
/// connections and refuse its reconnects) while "a" goes on publishing.
fn redis_with_user_b() -> RedisServer {
    RedisServer::start_with(&["--user", "bob", "on", ">pw", "~*", "&*", "+@all"])
}

fn config_b(redis: &RedisServer) -> BackplaneConfig {
    config(&format!("redis://bob:pw@127.0.0.1:{}/0", redis.port), "b")
}

/// Cuts b off until [`let_b_back`].
async fn cut_b_off(redis: &RedisServer, b: &Node) {
    redis.cli(&["ACL", "SETUSER", "bob", "off"]);
    let killed: usize = redis
        .cli(&["CLIENT", "KILL", "USER", "bob"])
        .trim()
        .parse()
        .unwrap_or(0);
    assert!(
        killed >= 2,
        "b's command and pub/sub connections killed ({killed})"
    );
    eventually("b noticed", Duration::from_secs(5), || {
        matches!(b.backplane.link(), Link::Down { .. })
    })
    .await;
}

fn let_b_back(redis: &RedisServer) {
    redis.cli(&["ACL", "SETUSER", "bob", "on"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_missed_messages_backfills_them_from_history() {
    let redis = redis_with_user_b();
    let a = node(&redis, "a").await;
    let b = node_with(config_b(&redis)).await;
    for i in 1..=3 {
        publish(&a, TOPIC, i).await.expect("publish");
    }
    eventually("b has the first three", Duration::from_secs(10), || {
        b.sink.messages(TOPIC) == 3
    })
    .await;
    cut_b_off(&redis, &b).await;
    for i in 4..=20 {
        publish(&a, TOPIC, i)
            .await
            .expect("a publishes while b is away");
    }
    // b cannot publish meanwhile: refused with the reason, not accepted and dropped.
    let err = publish(&b, TOPIC, 999).await.expect_err("b is cut off");
    assert!(matches!(err, BackplaneError::Unavailable { .. }), "{err:?}");
    assert_eq!(b.sink.messages(TOPIC), 3, "b got nothing while away");
    let_b_back(&redis);
    eventually("b caught up", Duration::from_secs(10), || {
        b.backplane.delivered(TOPIC).map(|p| p.seq) == Some(20)
    })
    .await;
    let cb = b.sink.checked(TOPIC);
    assert!(
        cb.resets.is_empty(),
        "covered by history, no reset: {:?}",
        cb.resets
    );
    let values: Vec<u64> = cb.messages.iter().filter_map(|(_, v)| v.as_u64()).collect();
    assert_eq!(values, (1..=20).collect::<Vec<_>>());
    let stats = b.backplane.stats();
    assert!(
        stats.connects.load(std::sync::atomic::Ordering::Relaxed) >= 2,
        "b reconnected"
    );
    assert!(
        stats.backfills.load(std::sync::atomic::Ordering::Relaxed) >= 1,
        "b read history"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_trimmed_past_the_gap_is_a_declared_reset() {
    let redis = redis_with_user_b();
    let short = |mut c: BackplaneConfig| {
        c.history_len = 5;
        c
    };
    let a = node_with(short(config(&redis.url(), "a"))).await;
    let b = node_with(short(config_b(&redis))).await;
    for i in 1..=3 {
        publish(&a, TOPIC, i).await.expect("publish");
    }
    eventually("b has the first three", Duration::from_secs(10), || {
        b.sink.messages(TOPIC) == 3
    })
    .await;
    cut_b_off(&redis, &b).await;
    let mut last = None;
    for i in 4..=20 {
        last = Some(publish(&a, TOPIC, i).await.expect("publish"));
    }
    let last = last.expect("published");
    let_b_back(&redis);
    eventually("b caught up", Duration::from_secs(10), || {
        b.backplane.delivered(TOPIC) == Some(last)
    })
    .await;
    let cb = b.sink.checked(TOPIC);
    // History holds 16..=20: 4..=15 are declared lost, 16..=20 delivered.
    assert_eq!(cb.resets, vec![Position::new(last.epoch, 15)]);
    let values: Vec<u64> = cb.messages.iter().filter_map(|(_, v)| v.as_u64()).collect();
    assert_eq!(values, [1, 2, 3, 16, 17, 18, 19, 20]);
    // A client resuming from 10 gets a reset; from 17, exactly what follows.
    assert_eq!(
        b.backplane
            .resume(TOPIC, Position::new(last.epoch, 10))
            .await
            .expect("read"),
        Resume::Reset { current: last }
    );
    match b
        .backplane
        .resume(TOPIC, Position::new(last.epoch, 17))
        .await
        .expect("read")
    {
        Resume::Replay { frames, head } => {
            assert_eq!(head, last);
            let got: Vec<(u64, serde_json::Value)> = frames
                .iter()
                .map(|(p, b)| (p.seq, b.payload.data.clone()))
                .collect();
            assert_eq!(got, [(18, json!(18)), (19, json!(19)), (20, json!(20))]);
            assert!(frames.iter().all(|(_, b)| &*b.node == "a"));
        }
        other => panic!("expected a replay, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restarted_mid_stream_every_message_is_delivered_once_or_inside_a_reset() {
    let mut redis = RedisServer::start();
    let a = Arc::new(node(&redis, "a").await);
    let b = node(&redis, "b").await;
    // A publisher that keeps going through the outage, recording what Redis accepted.
    let publisher = {
        let a = a.clone();
        tokio::spawn(async move {
            let mut accepted: Vec<(u64, Position)> = Vec::new();
            let mut refused: Vec<BackplaneError> = Vec::new();
            for i in 0..400u64 {
                match publish(&a, TOPIC, i).await {
                    Ok(p) => accepted.push((i, p)),
                    Err(e) => refused.push(e),
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            (accepted, refused)
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    redis.kill();
    // While it is down, a publish fails at once with the reason, instead of being accepted.
    eventually("a noticed", Duration::from_secs(5), || {
        matches!(a.backplane.link(), Link::Down { .. })
    })
    .await;
    let started = Instant::now();
    match publish(&a, TOPIC, 9999).await {
        Err(e @ BackplaneError::Unavailable { .. }) => {
            assert!(e.to_string().starts_with("redis is unavailable: "), "{e}");
            println!("while redis is down: {e} (after {:?})", started.elapsed());
        }
        other => panic!("expected Unavailable, got {other:?}"),
    }
    assert!(started.elapsed() < Duration::from_millis(500), "fails fast");
    tokio::time::sleep(Duration::from_millis(300)).await;
    redis.restart();
    let (accepted, refused) = publisher.await.expect("publisher");
    assert!(!refused.is_empty(), "some publishes hit the outage");
    assert!(
        refused.iter().all(|e| matches!(
            e,
            BackplaneError::Unavailable { .. } | BackplaneError::Command(_)
        )),
        "{refused:?}"
    );
    let (first, last) = (accepted[0].1, accepted[accepted.len() - 1].1);
    assert_ne!(first.epoch, last.epoch, "redis lost the topic: a new epoch");
    for n in [&*a, &b] {
        eventually(
            "caught up with the last publish",
            Duration::from_secs(10),
            || n.backplane.delivered(TOPIC) == Some(last),
        )
        .await;
        let c = n.sink.checked(TOPIC);
        // Every accepted publish was delivered, or lies inside a declared reset: before the
        // reset's position in the old epoch (everything after the last delivered one), or up
        // to the reset's seq in the new one.
        let delivered: std::collections::HashMap<Position, serde_json::Value> =
            c.messages.iter().cloned().collect();
        let new_epoch_reset = c
            .resets
            .iter()
            .find(|r| r.epoch == last.epoch)
            .expect("a reset into the new epoch");
        for (i, p) in &accepted {
            match delivered.get(p) {
                Some(v) => assert_eq!(v, &json!(i), "message at {p}"),
                None => assert!(
                    p.epoch == first.epoch || p.seq <= new_epoch_reset.seq,
                    "{p} neither delivered nor inside a reset"
                ),
            }
        }
        println!(
            "restart: {} accepted, {} refused, {} delivered, resets {:?}",
            accepted.len(),
            refused.len(),
            c.messages.len(),
            c.resets
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn password_acl_user_and_database_from_the_url() {
    let redis = RedisServer::start_with(&[
        "--user", "default", "off", "--user", "alice", "on", ">s3cret", "~*", "&*", "+@all",
    ]);
    let url = format!("redis://alice:s3cret@127.0.0.1:{}/3", redis.port);
    let a = node_with(config(&url, "a")).await;
    let p = publish(&a, TOPIC, 1).await.expect("publish as alice");
    let keys = redis.cli(&[
        "--user", "alice", "--pass", "s3cret", "-n", "3", "KEYS", "*",
    ]);
    assert!(keys.contains("{socket.io:hub:orders}:meta"), "{keys}");
    assert!(keys.contains("{socket.io:hub:orders}:log"), "{keys}");
    let epoch = redis.cli(&[
        "--user",
        "alice",
        "--pass",
        "s3cret",
        "-n",
        "3",
        "HGET",
        "{socket.io:hub:orders}:meta",
        "epoch",
    ]);
    assert_eq!(epoch.trim(), p.epoch.to_string());

    // A wrong password: the node runs, the link says why, publishes fail with the reason.
    let bad = format!("redis://alice:wrong@127.0.0.1:{}/3", redis.port);
    let sink = Arc::new(Recorder::default());
    let b = Backplane::start(config(&bad, "b"), sink).expect("a valid url");
    let mut reason = String::new();
    eventually(
        "the link reports the refusal",
        Duration::from_secs(5),
        || {
            if let Link::Down { reason: r } = b.link() {
                reason = r;
                true
            } else {
                false
            }
        },
    )
    .await;
    assert!(
        reason
            .to_ascii_lowercase()
            .contains("authentication failed"),
        "{reason}"
    );
    let err = b
        .publish(TOPIC, MessageId::generate(), payload(1))
        .await
        .expect_err("not connected");
    assert!(matches!(err, BackplaneError::Unavailable { .. }), "{err:?}");
    assert!(
        !format!("{b:?}").contains("wrong"),
        "the password is not shown: {b:?}"
    );

    // A URL that is not a Redis URL is refused up front.
    let err = Backplane::start(
        config("http://127.0.0.1/", "c"),
        Arc::new(Recorder::default()),
    )
    .expect_err("not redis");
    assert!(matches!(err, BackplaneError::Url { .. }), "{err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rediss_with_a_private_ca() {
    let cert = rcgen::generate_simple_self_signed(vec!["127.0.0.1".into(), "localhost".into()])
        .expect("certificate");
    let cert_pem = cert.cert.pem();
    let redis = RedisServer::start_tls(&cert_pem, &cert.signing_key.serialize_pem());
    let mut c = config(&format!("rediss://127.0.0.1:{}/0", redis.port), "a");
    c.tls_root_pem = Some(cert_pem.clone().into_bytes());
    let a = node_with(c).await;
    let b = {
        let mut c = config(&format!("rediss://localhost:{}/0", redis.port), "b");
        c.tls_root_pem = Some(cert_pem.into_bytes());
        node_with(c).await
    };
    let p = publish(&a, TOPIC, 7).await.expect("publish over TLS");
    eventually("b got it over TLS", Duration::from_secs(10), || {
        b.backplane.delivered(TOPIC) == Some(p)
    })
    .await;
    assert_eq!(b.sink.checked(TOPIC).messages, vec![(p, json!(7))]);
}

/// Publishes submitted back to back (not one awaited before the next) go out in one pipeline
/// and are numbered in the order of the calls; a node delivers only what it follows, and
/// learns where a topic stands from Redis when it starts following it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submitted_publishes_keep_their_order_and_only_followed_topics_are_delivered() {
    let redis = RedisServer::start();
    let a = node(&redis, "a").await;
    let b = node(&redis, "b").await;
    const N: u64 = 500;
    let pending: Vec<_> = (0..N)
        .map(|i| {
            a.backplane
                .submit(TOPIC, MessageId::generate(), payload(i), None)
                .expect("submitted")
        })
        .collect();
    let mut positions = Vec::new();
    for p in pending {
        positions.push(p.await.expect("published"));
    }
    let seqs: Vec<u64> = positions.iter().map(|p| p.seq).collect();
    assert_eq!(seqs, (1..=N).collect::<Vec<_>>(), "the order of the calls");
    eventually("b has them", Duration::from_secs(10), || {
        b.sink.messages(TOPIC) == N as usize
    })
    .await;
    let values: Vec<u64> = b
        .sink
        .checked(TOPIC)
        .messages
        .iter()
        .filter_map(|(_, v)| v.as_u64())
        .collect();
    assert_eq!(values, (0..N).collect::<Vec<_>>());

    // "other" is followed by nobody on b: nothing of it is delivered there.
    for i in 0..3 {
        publish(&a, "other", i).await.expect("publish");
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(b.sink.of("other").is_empty());
    assert!(!b.backplane.follows("other"));
    // Following it: where it stands is read from Redis, clean (the link is up), then the next
    // message follows.
    let mut at = Some(Position::new(realtime::hub::Epoch::from_raw(0), 99));
    b.backplane.follow("other", &mut |p| at = p);
    assert_eq!(at, None, "nothing delivered yet");
    assert!(!b.backplane.located("other"));
    b.backplane.locate("other").await.expect("head read");
    assert!(b.backplane.located("other"));
    let p4 = publish(&a, "other", 3).await.expect("publish");
    eventually("b has the fourth", Duration::from_secs(5), || {
        b.sink.messages("other") == 1
    })
    .await;
    let seen = b.sink.of("other");
    assert_eq!(
        seen[0],
        Delivery::Start {
            at: Position::new(p4.epoch, 3),
            clean: true
        }
    );
    assert!(matches!(&seen[1], Delivery::Message { position, .. } if *position == p4));
    // Unfollowed (the owner says the topic is gone): nothing more.
    b.backplane.unfollow("other", &|| false);
    assert!(b.backplane.follows("other"), "not gone: kept");
    b.backplane.unfollow("other", &|| true);
    assert!(!b.backplane.follows("other"));
    publish(&a, "other", 4).await.expect("publish");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(b.sink.of("other").len(), 2);
}

/// A topic followed while the link is down cannot know what it missed until the link is back:
/// its start is not clean (the owner tells its listeners they may have missed messages).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_topic_followed_while_cut_off_does_not_start_clean() {
    let redis = redis_with_user_b();
    let a = node(&redis, "a").await;
    let b = node_with(config_b(&redis)).await;
    cut_b_off(&redis, &b).await;
    b.backplane.follow("late", &mut |_| {});
    for i in 0..3 {
        publish(&a, "late", i).await.expect("publish");
    }
    let_b_back(&redis);
    assert!(b.backplane.wait_up(Duration::from_secs(10)).await);
    let p = publish(&a, "late", 3).await.expect("publish");
    eventually("b has the new one", Duration::from_secs(5), || {
        b.sink.messages("late") == 1
    })
    .await;
    let seen = b.sink.of("late");
    assert_eq!(
        seen[0],
        Delivery::Start {
            at: Position::new(p.epoch, 3),
            clean: false
        }
    );
}
