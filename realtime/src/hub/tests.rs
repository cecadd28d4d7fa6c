//! Unit tests for the hub.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde_json::json;

use super::*;

fn hub_with(f: impl FnOnce(&mut HubConfig)) -> Hub {
    let mut config = HubConfig::default();
    f(&mut config);
    Hub::new(config)
}

fn seqs(msgs: &[Arc<Message>]) -> Vec<u64> {
    msgs.iter().map(|m| m.seq).collect()
}

fn drain(sub: &Subscriber) -> Vec<Arc<Message>> {
    let mut out = Vec::new();
    while let Some(m) = sub.try_recv().expect("open") {
        out.push(m);
    }
    out
}

// ---- Position ------------------------------------------------------------

#[test]
fn position_text_is_byte_exact_and_roundtrips() {
    let p = Position::new(Epoch::from_raw(0xdead_beef), 42);
    assert_eq!(p.to_string(), "00000000deadbeef:42");
    assert_eq!("00000000deadbeef:42".parse::<Position>(), Ok(p));

    let max = Position::new(Epoch::from_raw(u64::MAX), u64::MAX);
    let text = max.to_string();
    assert_eq!(text, "ffffffffffffffff:18446744073709551615");
    assert_eq!(text.len(), Position::MAX_TEXT_LEN);
    assert_eq!(text.parse::<Position>(), Ok(max));

    let zero = Position::new(Epoch::from_raw(0), 0);
    assert_eq!(zero.to_string(), "0000000000000000:0");
    assert_eq!("0000000000000000:0".parse::<Position>(), Ok(zero));

    for _ in 0..100 {
        let p = Position::new(Epoch::random(), rand::random());
        assert_eq!(p.to_string().parse::<Position>(), Ok(p));
    }
    assert_eq!(
        format!("{:?}", Epoch::from_raw(1)),
        "Epoch(0000000000000001)"
    );
}

#[test]
fn position_parse_rejects_non_canonical_text() {
    use PositionParseError::*;
    let cases: &[(&str, PositionParseError)] = &[
        ("", MissingSeparator),
        ("00000000deadbeef", MissingSeparator),
        ("00000000deadbeef-1", MissingSeparator),
        (":1", InvalidEpoch),
        ("deadbeef:1", InvalidEpoch),
        ("00000000DEADBEEF:1", InvalidEpoch),
        ("000000000deadbeef:1", InvalidEpoch),
        ("00000000deadbeeg:1", InvalidEpoch),
        ("+0000000deadbeef:1", InvalidEpoch),
        (" 0000000deadbeef:1", InvalidEpoch),
        ("00000000deadbeef:", InvalidSeq),
        ("00000000deadbeef:01", InvalidSeq),
        ("00000000deadbeef:00", InvalidSeq),
        ("00000000deadbeef:+1", InvalidSeq),
        ("00000000deadbeef:-1", InvalidSeq),
        ("00000000deadbeef: 1", InvalidSeq),
        ("00000000deadbeef:1 ", InvalidSeq),
        ("00000000deadbeef:1:2", InvalidSeq),
        ("00000000deadbeef:1.0", InvalidSeq),
        ("00000000deadbeef:18446744073709551616", InvalidSeq),
    ];
    for (text, err) in cases {
        assert_eq!(text.parse::<Position>(), Err(*err), "{text:?}");
    }
    assert_eq!(
        MissingSeparator.to_string(),
        "position must be `<epoch>:<seq>`"
    );
}

// ---- Sequencing and history ----------------------------------------------

#[test]
fn seq_is_contiguous_from_one_per_topic() {
    let hub = Hub::default();
    let a: Vec<Position> = (0..5)
        .map(|i| hub.publish("a", "ev", json!(i), None).unwrap())
        .collect();
    assert_eq!(a.iter().map(|p| p.seq).collect::<Vec<_>>(), [1, 2, 3, 4, 5]);
    assert!(a.iter().all(|p| p.epoch == a[0].epoch));

    let b = hub.publish("b", "", json!(null), None).unwrap();
    assert_eq!(b.seq, 1);
    assert_ne!(b.epoch, a[0].epoch, "each topic creation draws its epoch");

    let info = hub.topic_info("a").unwrap();
    assert_eq!(info.position, a[4]);
    assert_eq!(info.subscribers, 0);
    assert_eq!(info.retained, 5);
    assert_eq!(hub.topic_info("nope"), None);
    assert_eq!(hub.stats().snapshot().published, 6);
    assert_eq!(hub.stats().snapshot().topics, 2);
}

#[test]
fn message_carries_payload_origin_and_ids() {
    let hub = Hub::default();
    let sub = hub.subscribe().unwrap();
    sub.join("t", None).unwrap();
    let payload = Payload::new("chat", json!(["hi", {"n": 1}]))
        .with_attachments(vec![Bytes::from_static(b"\x00\x01")]);
    let pos = hub.publish_payload("t", payload, Some(sub.id())).unwrap();
    let m = sub.try_recv().unwrap().unwrap();
    assert_eq!(m.position(), pos);
    assert_eq!(&*m.topic, "t");
    assert_eq!(m.event(), "chat");
    assert_eq!(m.data(), &json!(["hi", {"n": 1}]));
    assert_eq!(m.attachments(), &[Bytes::from_static(b"\x00\x01")]);
    assert!(m.is_from(sub.id()));
    assert!(!m.remote);

    hub.publish("t", "x", json!(1), None).unwrap();
    let m2 = sub.try_recv().unwrap().unwrap();
    assert!(!m2.is_from(sub.id()));
    assert_ne!(m.id, m2.id);
}

#[test]
fn history_is_bounded_and_evicts_oldest() {
    let hub = hub_with(|c| c.history_len = 3);
    let mut last = None;
    for i in 1..=5 {
        last = Some(hub.publish("t", "e", json!(i), None).unwrap());
    }
    let last = last.unwrap();
    assert_eq!(hub.topic_info("t").unwrap().retained, 3);

    // Seqs 3..=5 are retained: resuming after 2 is exact.
    let s = hub.subscribe().unwrap();
    let out = s.join("t", Some(Position::new(last.epoch, 2))).unwrap();
    assert_eq!(seqs(out.replay()), [3, 4, 5]);
    assert_eq!(out.replay()[0].data(), &json!(3));
    assert_eq!(out.position(), last);

    // Resuming after 1 needs seq 2, which was evicted.
    for since in [0, 1] {
        let s = hub.subscribe().unwrap();
        let out = s.join("t", Some(Position::new(last.epoch, since))).unwrap();
        assert!(out.is_reset(), "since {since}");
        assert_eq!(out.position(), last);
    }
    let stats = hub.stats().snapshot();
    assert_eq!((stats.resets, stats.resets_evicted), (2, 2));
}

#[test]
fn history_byte_bound_evicts_big_messages() {
    let hub = hub_with(|c| c.history_max_bytes = 4096);
    let big = "x".repeat(3000);
    hub.publish("t", "e", json!(big), None).unwrap();
    let p2 = hub.publish("t", "e", json!(big), None).unwrap();
    assert_eq!(hub.topic_info("t").unwrap().retained, 1);
    let huge = "y".repeat(10_000);
    let p3 = hub.publish("t", "e", json!(huge), None).unwrap();
    assert_eq!(hub.topic_info("t").unwrap().retained, 0);

    let s = hub.subscribe().unwrap();
    assert!(s.join("t", Some(p2)).unwrap().is_reset());
    let s = hub.subscribe().unwrap();
    let out = s.join("t", Some(p3)).unwrap();
    assert!(!out.is_reset());
    assert!(out.replay().is_empty());
}

#[test]
fn zero_history_still_sequences() {
    let hub = hub_with(|c| c.history_len = 0);
    let p1 = hub.publish("t", "e", json!(1), None).unwrap();
    let p2 = hub.publish("t", "e", json!(2), None).unwrap();
    assert_eq!((p1.seq, p2.seq), (1, 2));
    let s = hub.subscribe().unwrap();
    assert!(s.join("t", Some(p1)).unwrap().is_reset());
    let s = hub.subscribe().unwrap();
    assert!(!s.join("t", Some(p2)).unwrap().is_reset());
}

// ---- Join / resume -------------------------------------------------------

#[test]
fn join_in_window_replays_exactly_then_goes_live() {
    let hub = Hub::default();
    let p1 = hub.publish("t", "e", json!(1), None).unwrap();
    hub.publish("t", "e", json!(2), None).unwrap();
    let p3 = hub.publish("t", "e", json!(3), None).unwrap();

    let s = hub.subscribe().unwrap();
    match s.join("t", Some(p1)).unwrap() {
        JoinOutcome::Resumed { replay, position } => {
            assert_eq!(seqs(&replay), [2, 3]);
            assert_eq!(position, p3);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(s.queued(), 0, "replay is not also queued");
    hub.publish("t", "e", json!(4), None).unwrap();
    assert_eq!(seqs(&drain(&s)), [4]);
    assert_eq!(hub.stats().snapshot().replayed, 2);
    assert_eq!(hub.topic_info("t").unwrap().subscribers, 1);
}

#[test]
fn join_at_current_position_replays_nothing() {
    let hub = Hub::default();
    let p = hub.publish("t", "e", json!(1), None).unwrap();
    let s = hub.subscribe().unwrap();
    let out = s.join("t", Some(p)).unwrap();
    assert!(
        matches!(out, JoinOutcome::Resumed { ref replay, position } if replay.is_empty() && position == p)
    );
}

#[test]
fn join_from_seq_zero_replays_everything_retained() {
    let hub = Hub::default();
    let s0 = hub.subscribe().unwrap();
    let start = s0.join("t", None).unwrap().position();
    assert_eq!(start.seq, 0);
    hub.publish("t", "e", json!(1), None).unwrap();
    hub.publish("t", "e", json!(2), None).unwrap();
    let s = hub.subscribe().unwrap();
    assert_eq!(seqs(s.join("t", Some(start)).unwrap().replay()), [1, 2]);
}

#[test]
fn fresh_join_gets_live_only() {
    let hub = Hub::default();
    let p = hub.publish("t", "e", json!(1), None).unwrap();
    let s = hub.subscribe().unwrap();
    let out = s.join("t", None).unwrap();
    assert!(matches!(out, JoinOutcome::Fresh { position } if position == p));
    hub.publish("t", "e", json!(2), None).unwrap();
    assert_eq!(seqs(&drain(&s)), [2]);
}

#[test]
fn join_with_wrong_epoch_resets_and_stays_subscribed() {
    let hub = Hub::default();
    let p = hub.publish("t", "e", json!(1), None).unwrap();
    let other = Epoch::from_raw(p.epoch.raw() ^ 1);
    let s = hub.subscribe().unwrap();
    match s.join("t", Some(Position::new(other, 1))).unwrap() {
        JoinOutcome::Reset { current } => assert_eq!(current, p),
        other => panic!("{other:?}"),
    }
    hub.publish("t", "e", json!(2), None).unwrap();
    assert_eq!(seqs(&drain(&s)), [2]);
    let stats = hub.stats().snapshot();
    assert_eq!((stats.resets, stats.resets_epoch), (1, 1));
}

#[test]
fn join_with_future_seq_resets() {
    let hub = Hub::default();
    let p = hub.publish("t", "e", json!(1), None).unwrap();
    let s = hub.subscribe().unwrap();
    let out = s.join("t", Some(Position::new(p.epoch, 2))).unwrap();
    assert!(matches!(out, JoinOutcome::Reset { current } if current == p));
    let stats = hub.stats().snapshot();
    assert_eq!((stats.resets, stats.resets_ahead), (1, 1));
}

#[test]
fn join_new_topic_with_since_resets_to_its_start() {
    let hub = Hub::default();
    let s = hub.subscribe().unwrap();
    let out = s
        .join("new", Some(Position::new(Epoch::from_raw(7), 3)))
        .unwrap();
    let current = out.position();
    assert!(out.is_reset());
    assert_eq!(current.seq, 0);
    assert_eq!(hub.topic_info("new").unwrap().position, current);
}

#[test]
fn join_twice_and_leave() {
    let hub = Hub::default();
    let s = hub.subscribe().unwrap();
    s.join("t", None).unwrap();
    assert_eq!(
        s.join("t", None).unwrap_err(),
        HubError::AlreadyJoined { topic: "t".into() }
    );
    assert!(s.is_joined("t"));
    assert_eq!(s.topics(), vec![Arc::<str>::from("t")]);
    assert!(s.leave("t"));
    assert!(!s.leave("t"));
    assert!(!s.leave("never"));
    assert!(!s.is_joined("t"));
    assert_eq!(hub.topic_info("t").unwrap().subscribers, 0);
    hub.publish("t", "e", json!(1), None).unwrap();
    assert!(drain(&s).is_empty());
    s.join("t", None).unwrap();
    hub.publish("t", "e", json!(2), None).unwrap();
    assert_eq!(seqs(&drain(&s)), [2]);
}

#[test]
fn topic_and_join_limits() {
    let hub = hub_with(|c| {
        c.max_topics = 2;
        c.max_topics_per_subscriber = 1;
    });
    hub.publish("a", "e", json!(1), None).unwrap();
    hub.publish("b", "e", json!(1), None).unwrap();
    assert_eq!(
        hub.publish("c", "e", json!(1), None),
        Err(HubError::TooManyTopics { limit: 2 })
    );
    assert_eq!(hub.stats().snapshot().topics, 2);
    let s = hub.subscribe().unwrap();
    s.join("a", None).unwrap();
    assert_eq!(
        s.join("b", None).unwrap_err(),
        HubError::TooManyJoins { limit: 1 }
    );
    assert!(!s.is_joined("b"));
    assert_eq!(hub.topic_info("b").unwrap().subscribers, 0);
    assert_eq!(
        s.join("zzz", None).unwrap_err(),
        HubError::TooManyJoins { limit: 1 }
    );
    assert_eq!(hub.topic_info("zzz"), None, "refused joins create nothing");
}

// ---- Concurrency ---------------------------------------------------------

/// Fails the test instead of hanging the whole test run if `f` stalls.
async fn within<F: std::future::Future>(f: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(60), f)
        .await
        .expect("stalled for 60 s")
}

/// Receives until `last` and checks that seqs run exactly `from+1..=last`;
/// returns how many came live (through the queue).
async fn expect_contiguous(sub: &Subscriber, replay: &[Arc<Message>], from: u64, last: u64) -> u64 {
    let mut next = from + 1;
    for m in replay {
        assert_eq!(m.seq, next, "replay");
        next += 1;
    }
    let mut live = 0;
    while next <= last {
        let m = sub.recv().await.expect("not closed");
        assert_eq!(m.seq, next, "live");
        next += 1;
        live += 1;
    }
    assert_eq!(sub.queued(), 0, "nothing after the last message");
    live
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stress_resume_under_concurrent_publishing_is_exactly_once_in_order() {
    const N: u64 = 20_000;
    const JOINERS: u64 = 8;
    let hub = hub_with(|c| {
        c.history_len = N as usize;
        c.history_max_bytes = usize::MAX;
        c.queue_capacity = N as usize;
    });
    let first = hub.publish("t", "e", json!(1), None).unwrap();
    let epoch = first.epoch;
    let joined = Arc::new(AtomicU64::new(0));

    let publisher = {
        let hub = hub.clone();
        let joined = Arc::clone(&joined);
        tokio::spawn(async move {
            for i in 2..=N {
                hub.publish("t", "e", json!(i), None).unwrap();
                if i % 64 == 0 {
                    tokio::task::yield_now().await;
                }
                // Keep publishing only once joiner k has joined, so every
                // joiner joins mid-stream and gets replay *and* live messages.
                if i > 500 && (i - 500) % (N / 10) == 0 {
                    let k = ((i - 500) / (N / 10)).min(JOINERS);
                    while joined.load(Ordering::SeqCst) < k {
                        tokio::task::yield_now().await;
                    }
                }
            }
        })
    };

    let mut joiners = Vec::new();
    for j in 0..JOINERS {
        let hub = hub.clone();
        let joined = Arc::clone(&joined);
        joiners.push(tokio::spawn(async move {
            // Join at different moments, resuming from a recent position.
            let target = (j + 1) * N / 10;
            loop {
                let cur = hub.topic_info("t").unwrap().position.seq;
                if cur >= target {
                    break;
                }
                tokio::task::yield_now().await;
            }
            let sub = hub.subscribe().unwrap();
            let since = if j % 4 == 3 {
                None
            } else {
                Some(Position::new(epoch, target - j * 100))
            };
            let out = sub.join("t", since).unwrap();
            joined.fetch_add(1, Ordering::SeqCst);
            assert!(!out.is_reset());
            let from = match since {
                Some(p) => {
                    assert!(out.replay().len() >= (j * 100) as usize);
                    p.seq
                }
                None => out.position().seq,
            };
            let live = expect_contiguous(&sub, out.replay(), from, N).await;
            assert!(live > 0, "joined mid-stream");
        }));
    }
    within(publisher).await.unwrap();
    for j in joiners {
        within(j).await.unwrap();
    }
    let stats = hub.stats().snapshot();
    assert_eq!(stats.published, N);
    assert_eq!(stats.slow_consumer_disconnects, 0);
}

#[test]
fn stress_across_runtimes_with_concurrent_publishers() {
    const PER: u64 = 5_000;
    const PUBLISHERS: u64 = 3;
    let hub = hub_with(|c| c.queue_capacity = (PER * PUBLISHERS) as usize);
    let sub = hub.subscribe().unwrap();
    sub.join("t", None).unwrap();

    let handles: Vec<_> = (0..PUBLISHERS)
        .map(|p| {
            let hub = hub.clone();
            std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .build()
                    .unwrap();
                rt.block_on(async move {
                    for i in 0..PER {
                        hub.publish("t", "e", json!([p, i]), None).unwrap();
                        if i % 100 == 0 {
                            tokio::task::yield_now().await;
                        }
                    }
                });
            })
        })
        .collect();

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut next_per_publisher = [0u64; PUBLISHERS as usize];
        for seq in 1..=PER * PUBLISHERS {
            let m = tokio::time::timeout(Duration::from_secs(30), sub.recv())
                .await
                .expect("no stall")
                .expect("open");
            assert_eq!(m.seq, seq);
            let p = m.data()[0].as_u64().unwrap() as usize;
            let i = m.data()[1].as_u64().unwrap();
            assert_eq!(i, next_per_publisher[p], "publisher order kept");
            next_per_publisher[p] += 1;
        }
    });
    for h in handles {
        h.join().unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sweeping_concurrently_never_drops_a_topic_with_subscribers() {
    const N: u64 = 5_000;
    let hub = hub_with(|c| {
        c.idle_topic_ttl = Duration::ZERO;
        c.queue_capacity = N as usize;
    });
    let sub = hub.subscribe().unwrap();
    let start = sub.join("t", None).unwrap().position();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sweeps = Arc::new(AtomicU64::new(0));
    let sweeper = {
        let hub = hub.clone();
        let stop = Arc::clone(&stop);
        let sweeps = Arc::clone(&sweeps);
        std::thread::spawn(move || {
            let mut swept = 0;
            while !stop.load(Ordering::Relaxed) {
                // Other topics come and go; "t" must stay.
                hub.publish("churn", "e", json!(0), None).unwrap();
                hub.publish("idle", "e", json!(0), None).unwrap();
                swept += hub.sweep(Instant::now() + Duration::from_secs(1));
                sweeps.fetch_add(1, Ordering::Relaxed);
            }
            swept
        })
    };
    // Joins racing the sweeps: once joined, the incarnation joined into must
    // be the one that receives the next publish, with no gap.
    let churner = {
        let hub = hub.clone();
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || {
            let mut rounds = 0u64;
            while !stop.load(Ordering::Relaxed) || rounds < 100 {
                let s = hub.subscribe().unwrap();
                let joined = s.join("churn", None).unwrap().position();
                let mine = hub.publish("churn", "mine", json!(rounds), None).unwrap();
                assert_eq!(mine.epoch, joined.epoch, "topic swept under a subscriber");
                let got = drain(&s);
                assert!(!got.is_empty());
                for (k, m) in got.iter().enumerate() {
                    assert_eq!(
                        m.position(),
                        Position::new(joined.epoch, joined.seq + 1 + k as u64)
                    );
                }
                assert!(got.iter().any(|m| m.position() == mine));
                rounds += 1;
            }
            rounds
        })
    };
    let publisher = {
        let hub = hub.clone();
        let sweeps = Arc::clone(&sweeps);
        tokio::spawn(async move {
            for i in 1..=N {
                let p = hub.publish("t", "e", json!(i), None).unwrap();
                assert_eq!(p.epoch, start.epoch);
                if i % 50 == 0 {
                    tokio::task::yield_now().await;
                }
                if i == N / 2 {
                    // Make sure sweeps really overlap the publishing.
                    while sweeps.load(Ordering::Relaxed) < 20 {
                        tokio::task::yield_now().await;
                    }
                }
            }
        })
    };
    within(expect_contiguous(&sub, &[], 0, N)).await;
    within(publisher).await.unwrap();
    stop.store(true, Ordering::Relaxed);
    let swept = sweeper.join().unwrap();
    assert!(churner.join().unwrap() >= 100);
    assert!(swept >= 20, "idle topics were swept");
    assert_eq!(hub.topic_info("t").unwrap().position.epoch, start.epoch);
}

#[tokio::test]
async fn recv_waits_for_the_next_message() {
    let hub = Hub::default();
    let sub = Arc::new(hub.subscribe().unwrap());
    sub.join("t", None).unwrap();
    let waiter = {
        let sub = Arc::clone(&sub);
        tokio::spawn(async move { sub.recv().await.map(|m| m.seq) })
    };
    tokio::task::yield_now().await;
    hub.publish("t", "e", json!(1), None).unwrap();
    assert_eq!(within(waiter).await.unwrap(), Ok(1));
}

#[test]
fn fan_out_to_many_subscribers_shares_one_message() {
    let hub = Hub::default();
    let subs: Vec<Subscriber> = (0..2000)
        .map(|_| {
            let s = hub.subscribe().unwrap();
            s.join("big", None).unwrap();
            s
        })
        .collect();
    for i in 0..10 {
        hub.publish("big", "e", json!(i), None).unwrap();
    }
    let first = drain(&subs[0]);
    for s in &subs[1..] {
        let got = drain(s);
        assert_eq!(seqs(&got), seqs(&first));
        assert!(Arc::ptr_eq(&got[9], &first[9]), "one allocation, shared");
    }
    assert_eq!(hub.stats().snapshot().delivered, 20_000);
    assert_eq!(hub.topic_info("big").unwrap().subscribers, 2000);
}

// ---- Slow consumers, drop, shutdown --------------------------------------

#[tokio::test]
async fn slow_consumer_is_closed_counted_and_detached_others_unaffected() {
    let hub = Hub::default();
    let slow = hub.subscribe_with_capacity(2).unwrap();
    let fine = hub.subscribe().unwrap();
    slow.join("a", None).unwrap();
    slow.join("b", None).unwrap();
    fine.join("a", None).unwrap();

    hub.publish("a", "e", json!(1), None).unwrap();
    hub.publish("a", "e", json!(2), None).unwrap();
    assert_eq!(slow.close_reason(), None);
    hub.publish("a", "e", json!(3), None).unwrap();

    let closed = Closed {
        reason: CloseReason::SlowConsumer,
    };
    assert_eq!(slow.close_reason(), Some(CloseReason::SlowConsumer));
    assert_eq!(slow.recv().await.unwrap_err(), closed);
    assert_eq!(slow.recv().await.unwrap_err(), closed, "stays closed");
    assert_eq!(slow.queued(), 0, "backlog freed");
    assert!(slow.topics().is_empty());
    assert_eq!(closed.to_string(), "subscriber closed: slow consumer");

    assert_eq!(seqs(&drain(&fine)), [1, 2, 3]);
    assert_eq!(hub.topic_info("a").unwrap().subscribers, 1);
    assert_eq!(hub.topic_info("b").unwrap().subscribers, 0);
    let stats = hub.stats().snapshot();
    assert_eq!(stats.slow_consumer_disconnects, 1);
    assert_eq!(stats.delivered, 5);
    assert_eq!(
        slow.join("c", None).unwrap_err(),
        HubError::SubscriberClosed {
            reason: CloseReason::SlowConsumer
        }
    );
    // Publishing on goes on normally.
    hub.publish("a", "e", json!(4), None).unwrap();
    hub.publish("b", "e", json!(1), None).unwrap();
    assert_eq!(seqs(&drain(&fine)), [4]);
    assert_eq!(hub.stats().snapshot().slow_consumer_disconnects, 1);
}

#[test]
fn dropping_a_subscriber_detaches_it_everywhere() {
    let hub = Hub::default();
    let s = hub.subscribe().unwrap();
    for t in ["a", "b", "c"] {
        s.join(t, None).unwrap();
    }
    hub.publish("a", "e", json!(1), None).unwrap();
    let weak = Arc::downgrade(&s.shared);
    assert_eq!(hub.stats().snapshot().subscribers, 1);
    drop(s);
    assert!(weak.upgrade().is_none(), "no topic or registry keeps it");
    for t in ["a", "b", "c"] {
        assert_eq!(hub.topic_info(t).unwrap().subscribers, 0, "{t}");
    }
    assert_eq!(hub.stats().snapshot().subscribers, 0);
    assert!(lock(&hub.inner.registry).is_empty());
    // Dropping a slow-closed subscriber is just as clean.
    let s = hub.subscribe_with_capacity(1).unwrap();
    s.join("a", None).unwrap();
    hub.publish("a", "e", json!(2), None).unwrap();
    hub.publish("a", "e", json!(3), None).unwrap();
    let weak = Arc::downgrade(&s.shared);
    drop(s);
    assert!(weak.upgrade().is_none());
    assert_eq!(hub.stats().snapshot().subscribers, 0);
}

#[tokio::test]
async fn shutdown_closes_everyone_and_refuses_new_work() {
    let hub = Hub::default();
    let joined = Arc::new(hub.subscribe().unwrap());
    joined.join("t", None).unwrap();
    let idle = hub.subscribe().unwrap();
    hub.publish("t", "e", json!(1), None).unwrap();
    let waiter = {
        let idle_sub = hub.subscribe().unwrap();
        tokio::spawn(async move { idle_sub.recv().await })
    };
    tokio::task::yield_now().await;

    hub.shutdown();
    hub.shutdown();
    assert!(hub.is_shut_down());
    let closed = Closed {
        reason: CloseReason::Shutdown,
    };
    assert_eq!(joined.recv().await.unwrap_err(), closed);
    assert_eq!(idle.recv().await.unwrap_err(), closed);
    assert_eq!(within(waiter).await.unwrap().unwrap_err(), closed);
    assert_eq!(hub.topic_info("t").unwrap().subscribers, 0);
    assert_eq!(
        hub.publish("t", "e", json!(2), None),
        Err(HubError::ShutDown)
    );
    assert_eq!(hub.subscribe().unwrap_err(), HubError::ShutDown);
    assert_eq!(joined.join("u", None).unwrap_err(), HubError::ShutDown);
}

// ---- publish_many, idempotency, bus --------------------------------------

#[test]
fn publish_many_shares_one_message_id() {
    let hub = Hub::default();
    hub.publish("b", "e", json!(0), None).unwrap();
    let s = hub.subscribe().unwrap();
    s.join("a", None).unwrap();
    s.join("b", None).unwrap();
    let positions = hub
        .publish_many(["a", "b", "a"], Payload::new("e", json!("hi")), None)
        .unwrap();
    assert_eq!(
        positions.iter().map(|p| p.seq).collect::<Vec<_>>(),
        [1, 2, 1]
    );
    assert_eq!(positions[0], positions[2]);
    let got = drain(&s);
    assert_eq!(got.len(), 2, "a repeated topic is published once");
    assert_eq!(got[0].id, got[1].id);
    assert!(Arc::ptr_eq(&got[0].payload, &got[1].payload));
    assert_ne!(got[0].topic, got[1].topic);
}

#[test]
fn idempotent_publish_returns_the_original_position() {
    let hub = Hub::default();
    let s = hub.subscribe().unwrap();
    s.join("t", None).unwrap();
    let first = hub
        .publish_idempotent("k1", "t", Payload::new("e", json!(1)), None)
        .unwrap();
    assert!(!first.duplicate);
    let again = hub
        .publish_idempotent("k1", "t", Payload::new("e", json!(1)), None)
        .unwrap();
    assert_eq!(
        again,
        Published {
            position: first.position,
            duplicate: true
        }
    );
    let other = hub
        .publish_idempotent("k2", "t", Payload::new("e", json!(2)), None)
        .unwrap();
    assert_eq!(other.position.seq, 2);
    assert_eq!(seqs(&drain(&s)), [1, 2]);
    assert_eq!(
        hub.publish_idempotent("k1", "u", Payload::default(), None),
        Err(HubError::KeyConflict { topic: "t".into() })
    );
    let long = "k".repeat(MAX_IDEMPOTENCY_KEY_LEN + 1);
    assert_eq!(
        hub.publish_idempotent(&long, "t", Payload::default(), None),
        Err(HubError::KeyTooLong {
            max: MAX_IDEMPOTENCY_KEY_LEN
        })
    );
    assert_eq!(hub.stats().snapshot().idempotent_hits, 1);

    // The window: after the TTL the key is forgotten.
    hub.sweep(Instant::now() + hub.config().idempotency_ttl);
    let later = hub
        .publish_idempotent("k1", "t", Payload::new("e", json!(1)), None)
        .unwrap();
    assert!(!later.duplicate);
    assert_eq!(later.position.seq, 3);
}

#[test]
fn idempotency_memory_is_bounded() {
    let hub = hub_with(|c| c.idempotency_capacity = 64);
    for i in 0..1000 {
        hub.publish_idempotent(&format!("key-{i}"), "t", Payload::default(), None)
            .unwrap();
    }
    let stored: usize = hub.inner.idempotency.iter().map(|s| lock(s).len()).sum();
    assert!(stored <= 64, "{stored}");
    // The newest key is still remembered.
    let dup = hub
        .publish_idempotent("key-999", "t", Payload::default(), None)
        .unwrap();
    assert!(dup.duplicate);

    let off = hub_with(|c| c.idempotency_capacity = 0);
    off.publish_idempotent("k", "t", Payload::default(), None)
        .unwrap();
    assert!(
        !off.publish_idempotent("k", "t", Payload::default(), None)
            .unwrap()
            .duplicate
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_idempotent_retries_publish_once() {
    let hub = Hub::default();
    let tasks: Vec<_> = (0..16)
        .map(|_| {
            let hub = hub.clone();
            tokio::spawn(async move {
                hub.publish_idempotent("same", "t", Payload::new("e", json!(1)), None)
                    .unwrap()
                    .position
            })
        })
        .collect();
    let mut positions = Vec::new();
    for t in tasks {
        positions.push(within(t).await.unwrap());
    }
    assert!(positions.iter().all(|p| *p == positions[0]));
    assert_eq!(hub.topic_info("t").unwrap().position.seq, 1);
}

/// On a single node the asynchronous publishes are the synchronous ones, done when the call
/// returns: the transports use them, and on one node they cost nothing more.
#[test]
fn on_a_single_node_send_is_done_when_it_returns() {
    use futures_util::FutureExt;
    let hub = Hub::default();
    let s = hub.subscribe().unwrap();
    s.join("t", None).unwrap();
    let p = hub
        .send("t", Payload::new("e", json!(1)), Some(s.id()))
        .now_or_never()
        .expect("done at once")
        .unwrap();
    assert_eq!(p.seq, 1);
    let ps = hub
        .send_many(["t", "u", "t"], Payload::new("e", json!(2)), None)
        .now_or_never()
        .expect("done at once")
        .unwrap();
    assert_eq!(ps.iter().map(|p| p.seq).collect::<Vec<_>>(), [2, 1, 2]);
    let first = hub
        .send_idempotent("k", "t", Payload::new("e", json!(3)), None)
        .now_or_never()
        .expect("done at once")
        .unwrap();
    let again = hub
        .send_idempotent("k", "t", Payload::new("e", json!(3)), None)
        .now_or_never()
        .expect("done at once")
        .unwrap();
    assert_eq!((first.position.seq, first.duplicate), (3, false));
    assert_eq!((again.position, again.duplicate), (first.position, true));
    let got = drain(&s);
    assert_eq!(seqs(&got), [1, 2, 3]);
    assert!(got.iter().all(|m| !m.remote && !m.is_reset()));
    assert_eq!(got[0].origin, Some(s.id()));
    assert!(!hub.in_a_fleet());
    assert_eq!(
        MessageId::from_raw(0xabc).to_string(),
        "00000000000000000000000000000abc"
    );
}

// ---- Idle sweep ----------------------------------------------------------

#[test]
fn sweep_drops_idle_topics_and_recreation_gets_a_new_epoch() {
    let ttl = Duration::from_secs(60);
    let hub = hub_with(|c| c.idle_topic_ttl = ttl);
    let old = hub.publish("t", "e", json!(1), None).unwrap();
    let s = hub.subscribe().unwrap();
    s.join("busy", None).unwrap();

    assert_eq!(hub.sweep(Instant::now()), 0, "not idle yet");
    let later = Instant::now() + ttl;
    assert_eq!(hub.sweep(later), 1, "only the unsubscribed topic");
    assert_eq!(hub.topic_info("t"), None);
    assert!(hub.topic_info("busy").is_some());
    let stats = hub.stats().snapshot();
    assert_eq!((stats.topics, stats.topics_swept), (1, 1));

    let new = hub.publish("t", "e", json!(1), None).unwrap();
    assert_eq!(new.seq, 1);
    assert_ne!(new.epoch, old.epoch);
    let r = hub.subscribe().unwrap();
    assert!(r.join("t", Some(old)).unwrap().is_reset());

    // Idleness counts from the last leave.
    assert!(s.leave("busy"));
    assert_eq!(hub.sweep(Instant::now()), 0);
    assert_eq!(hub.sweep(Instant::now() + ttl), 1);
    assert_eq!(hub.topic_info("busy"), None);
}

#[test]
fn sweep_prunes_closed_subscribers_left_behind() {
    let hub = hub_with(|c| c.idle_topic_ttl = Duration::ZERO);
    let s = hub.subscribe().unwrap();
    s.join("t", None).unwrap();
    // Close it the way a racing publisher elsewhere would, without detaching.
    let _ = s.shared.close(CloseReason::SlowConsumer);
    assert_eq!(hub.topic_info("t").unwrap().subscribers, 1);
    assert_eq!(hub.sweep(Instant::now()), 1);
}

#[test]
fn drop_if_unused_removes_only_topics_nobody_is_in() {
    let hub = Hub::default();
    let sub = hub.subscribe().expect("subscribe");
    sub.join("busy", None).expect("join");
    hub.publish("idle", "e", serde_json::json!(1), None)
        .expect("publish");
    assert!(!hub.drop_if_unused("busy"), "a subscribed topic stays");
    assert!(hub.drop_if_unused("idle"));
    assert!(hub.topic_info("idle").is_none());
    assert!(!hub.drop_if_unused("never-existed"));
    sub.leave("busy");
    assert!(hub.drop_if_unused("busy"));
    assert_eq!(hub.stats().snapshot().topics, 0);
}

// ---- Topics clients may use ------------------------------------------------

#[test]
fn open_topics_cannot_take_the_reserved_share() {
    let hub = hub_with(|c| {
        c.max_topics = 4;
        c.max_open_topics = 2;
    });
    hub.publish("a", "e", json!(1), None).expect("a");
    hub.publish("b", "e", json!(1), None).expect("b");
    assert_eq!(
        hub.publish("c", "e", json!(1), None),
        Err(HubError::TooManyTopics { limit: 2 })
    );
    // Socket.IO's own topics still find room.
    hub.publish("sio:/", "e", json!(1), None)
        .expect("reserved 1");
    hub.publish("sio:/:X", "e", json!(1), None)
        .expect("reserved 2");
    assert_eq!(
        hub.publish("sio:/:Y", "e", json!(1), None),
        Err(HubError::TooManyTopics { limit: 4 })
    );
    assert_eq!(hub.stats().snapshot().open_topics, 2);
    // A dropped open topic gives its place back.
    assert!(hub.drop_if_unused("a"));
    assert_eq!(hub.stats().snapshot().open_topics, 1);
    hub.publish("c", "e", json!(1), None).expect("c fits now");
    assert!(hub.drop_if_unused("sio:/:X"));
    assert_eq!(hub.stats().snapshot().open_topics, 2);
    assert_eq!(hub.stats().snapshot().topics, 3);
    // Sweeping counts them out too.
    let swept = hub.sweep(Instant::now() + Duration::from_secs(3600));
    assert_eq!(swept, 3);
    assert_eq!(hub.stats().snapshot().open_topics, 0);
    assert_eq!(hub.stats().snapshot().topics, 0);
}

#[test]
fn clients_are_held_to_names_and_a_new_topic_budget() {
    let hub = hub_with(|c| {
        c.new_topics_per_client_per_minute = 3;
        c.max_topic_len = 12;
    });
    let me = Some("192.0.2.1".parse().expect("ip"));
    assert!(matches!(
        hub.admit_client_topic(me, "sio:/"),
        Err(TopicError::Reserved { .. })
    ));
    assert!(matches!(
        hub.admit_client_topic(me, "ws:/ws:chat"),
        Err(TopicError::Reserved { .. })
    ));
    assert_eq!(
        hub.admit_client_topic(me, "0123456789abc"),
        Err(TopicError::TooLong { len: 13, max: 12 })
    );
    for t in ["t1", "t2", "t3"] {
        hub.admit_client_topic(me, t).expect("within budget");
        hub.publish(t, "e", json!(1), None).expect("publish");
    }
    assert_eq!(
        hub.admit_client_topic(me, "t4"),
        Err(TopicError::RateLimited { per_minute: 3 })
    );
    // Existing topics cost nothing.
    for _ in 0..10 {
        hub.admit_client_topic(me, "t1").expect("exists");
    }
    // The app's names are checked, never rate-limited.
    assert!(hub.check_topic_name("sio:/chat").is_err());
    assert_eq!(hub.check_topic_name("t4"), Ok(()));
}

#[test]
fn try_recv_joined_says_whether_the_topic_is_still_joined_and_the_queue_emptied() {
    let hub = Hub::default();
    let sub = hub.subscribe().unwrap();
    sub.join("a", None).unwrap();
    hub.publish("a", "e", json!(1), None).unwrap();
    let q = sub.try_recv_joined().unwrap().expect("queued");
    assert_eq!(
        (&*q.msg.topic, q.joined, q.last),
        ("a", true, true),
        "one topic"
    );
    sub.join("b", None).unwrap();
    hub.publish("a", "e", json!(2), None).unwrap();
    hub.publish("b", "e", json!(3), None).unwrap();
    sub.leave("a");
    let q = sub.try_recv_joined().unwrap().expect("queued");
    assert_eq!(
        (&*q.msg.topic, q.joined, q.last),
        ("a", false, false),
        "left after it was queued, one more behind it"
    );
    let q = sub.try_recv_joined().unwrap().expect("queued");
    assert_eq!(
        (&*q.msg.topic, q.joined, q.last),
        ("b", true, true),
        "the one topic left"
    );
    assert!(sub.try_recv_joined().unwrap().is_none());
}

#[test]
fn a_message_is_encoded_once_for_its_first_scope_only() {
    let hub = Hub::default();
    let sub = hub.subscribe().unwrap();
    sub.join("a", None).unwrap();
    hub.publish("a", "e", json!(1), None).unwrap();
    let msg = sub.try_recv().unwrap().expect("queued");
    let mut made = 0;
    let mut encode = |text: &str| {
        made += 1;
        text.to_owned()
    };
    assert_eq!(msg.encoded(("/", false), || encode("x")), Some("x"));
    assert_eq!(msg.encoded(("/", false), || encode("y")), Some("x"));
    assert_eq!(msg.encoded(("/", true), || encode("z")), None);
    assert_eq!(msg.encoded(("/chat", false), || encode("z")), None);
    assert_eq!(made, 1);
}
