//! Ten thousand messages across a fleet of three gateways on one redis-server (real binaries,
//! free ports), checked for loss, duplicates and order: publishers on all three nodes (the
//! publish API on two of them, pubsub.v1 on the second, Socket.IO relays from the official
//! client on the third), subscribers on every node on every transport (SSE, pubsub.v1,
//! long-poll with `since`, and the official socket.io-client over WebSocket, polling and an
//! upgraded connection). Every subscriber must get every message of its topic exactly once, in
//! one order for the whole fleet: the same (epoch, seq) sequence on every node, seq 1 to the
//! last with no gap, and each publisher's answer naming the place its message has there.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use e2e::fleet::{
    pubsub, wait_cluster_ok, wait_subscribers, ws_next, ws_send, ws_subscribe, Sse, Ws,
};
use e2e::redis::RedisServer;
use e2e::{client_builder, workspace_root, Gateway};
use serde_json::{json, Value};

/// The two topics (and Socket.IO rooms of the main namespace: a room's topic is its name).
const TOPICS: [&str; 2] = ["fleet-x", "fleet-y"];

/// Messages per topic from the publish API on node a, in batches of [`BATCH`].
const API_A: usize = 1500;
/// Messages per topic from one pubsub.v1 connection to node b, [`WINDOW`] of them unanswered
/// at most.
const PUBSUB_B: usize = 1500;
/// Messages per topic relayed by one Socket.IO client on node c.
const RELAY_C: usize = 1000;
/// Publishers per topic on node c that use the publish API one message per request (each
/// waits for the answer before the next; they go side by side), and messages from each.
const API_C: [&str; 4] = ["c0", "c1", "c2", "c3"];
const API_C_EACH: usize = 250;

/// Each publisher of a topic and how many messages it sends: 5,000 per topic, 10,000 in all.
const PUBLISHERS: [(&str, usize); 7] = [
    ("a", API_A),
    ("b", PUBSUB_B),
    ("cs", RELAY_C),
    (API_C[0], API_C_EACH),
    (API_C[1], API_C_EACH),
    (API_C[2], API_C_EACH),
    (API_C[3], API_C_EACH),
];
const PER_TOPIC: usize = API_A + PUBSUB_B + RELAY_C + API_C.len() * API_C_EACH;

/// Messages per publish API request on node a.
const BATCH: usize = 50;

/// pubsub.v1 publish requests sent ahead of their answers.
const WINDOW: usize = 64;

/// How long the readers wait for the last message.
const READ_FOR: Duration = Duration::from_secs(100);

/// Messages a subscriber may have waiting on a node (`realtime.hub.subscriber_queue`, and
/// `queue` of `/ws`): the whole run. The defaults (1024 and 256) close a reader that falls
/// that far behind as a slow consumer, which on a loaded 2-core machine a descheduled reader
/// (the test's, or a node's writer) can; that bound has tests of its own, this one counts
/// what the fleet delivers.
const QUEUE: usize = 2 * PER_TOPIC;

/// Node `node` of the fleet on `redis`: [`e2e::fleet::node_config`] with room for the whole
/// history of a topic and [`QUEUE`].
fn node_config(redis: &RedisServer, node: &str) -> String {
    let base = e2e::fleet::node_config(&redis.url(), node, PER_TOPIC);
    let hub = format!("  hub: {{history: {PER_TOPIC}}}\n");
    assert!(base.contains(&hub), "{base}");
    base.replacen(
        &hub,
        &format!(
            "  hub: {{history: {PER_TOPIC}, subscriber_queue: {QUEUE}}}\n  websocket: {{/ws: {{queue: {QUEUE}}}}}\n"
        ),
        1,
    )
}

/// The one HTTP client of the publishers and readers: its connections are kept (a TLS
/// handshake per long-poll would cost more than the poll), and an SSE stream may last longer
/// than the harness's usual 30 s.
fn http() -> reqwest::Client {
    client_builder()
        .timeout(READ_FOR + Duration::from_secs(30))
        .build()
        .expect("reqwest client")
}

/// The message a publisher sends: `<topic>/<publisher>/<n>`.
fn tag(topic: &str, publisher: &str, n: usize) -> String {
    format!("{topic}/{publisher}/{n}")
}

/// The tag a transport shows for a message's data: the string itself, or the first argument
/// of a relay (whose data is its argument list). Text that is not JSON is the tag as it is.
fn tag_of_value(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Array(a) => a.first().map(tag_of_value).unwrap_or_default(),
        other => other.to_string(),
    }
}

fn tag_of_text(text: &str) -> String {
    serde_json::from_str::<Value>(text)
        .map(|v| tag_of_value(&v))
        .unwrap_or_else(|_| text.to_string())
}

/// What one subscriber saw of one topic: (position, tag) in the order received.
type Seen = Vec<(String, String)>;

/// Reads an SSE stream until `n` events came or the time is up; resets are kept (as
/// `reset`-tagged entries) so that the check sees them.
async fn read_sse(mut sse: Sse, n: usize) -> Seen {
    sse.read_until(n, READ_FOR).await;
    sse.events
        .iter()
        .map(|e| {
            let t = if e.event == "reset" {
                format!("reset {}", e.data)
            } else {
                tag_of_text(&e.data)
            };
            (e.id.clone().unwrap_or_default(), t)
        })
        .collect()
}

/// Reads a pubsub.v1 connection subscribed to every topic until each has `n` messages (or
/// nothing came for 10 s): per topic, (position, tag). A close frame is kept, under topic
/// `closed`, so that the check says why the messages stopped.
async fn read_pubsub(mut ws: Ws, n: usize) -> BTreeMap<String, Seen> {
    use futures_util::StreamExt;
    use tokio_tungstenite::tungstenite::Message;

    let mut seen: BTreeMap<String, Seen> = BTreeMap::new();
    let deadline = Instant::now() + READ_FOR;
    while seen.values().map(Vec::len).sum::<usize>() < n * TOPICS.len() && Instant::now() < deadline
    {
        let m: Value = match tokio::time::timeout(Duration::from_secs(10), ws.next()).await {
            Ok(Some(Ok(Message::Text(t)))) => serde_json::from_str(t.as_str()).unwrap_or_default(),
            Ok(Some(Ok(Message::Ping(_) | Message::Pong(_)))) => continue,
            Ok(Some(Ok(Message::Close(why)))) => {
                seen.entry("closed".into())
                    .or_default()
                    .push((String::new(), format!("{why:?}")));
                break;
            }
            _ => break,
        };
        let topic = m["topic"].as_str().unwrap_or_default().to_string();
        let entry = match m["op"].as_str() {
            Some("message") => (
                m["position"].as_str().unwrap_or_default().to_string(),
                tag_of_value(&m["data"]),
            ),
            _ => (String::new(), format!("unexpected frame {m}")),
        };
        seen.entry(topic).or_default().push(entry);
    }
    seen
}

/// Long-polls `topic` on `gw` (`GET /s?t=topic&since=...`) from `since` until `n` messages
/// came (or the time is up).
async fn read_longpoll(
    http: &reqwest::Client,
    gw: &Gateway,
    topic: &str,
    since: String,
    n: usize,
) -> Seen {
    let mut since = since;
    let mut got = Vec::new();
    let deadline = Instant::now() + READ_FOR;
    while got.len() < n && Instant::now() < deadline {
        let r = http
            .get(gw.https(&format!("/s?t={topic}&since={since}")))
            .send()
            .await
            .expect("long-poll");
        let status = r.status().as_u16();
        let body = r.text().await.expect("long-poll body");
        match status {
            200 => {
                for (pos, text) in realtime::longpoll::decode_batch(&body).expect("a batch") {
                    since = pos.to_string();
                    got.push((since.clone(), tag_of_text(&text)));
                }
            }
            204 => {}
            other => {
                got.push((String::new(), format!("long-poll answered {other}: {body}")));
                break;
            }
        }
    }
    got
}

/// `POST /publish` of `messages` (one object, or an array when `batch`) on `gw`: each
/// message's (tag, seq) as the answer gives them.
async fn publish(
    http: &reqwest::Client,
    gw: &Gateway,
    topic: &str,
    tags: Vec<String>,
    batch: bool,
) -> Vec<(String, u64)> {
    let items: Vec<Value> = tags
        .iter()
        .map(|t| json!({"topic": topic, "event": "m", "data": t}))
        .collect();
    let body = if batch {
        Value::Array(items)
    } else {
        items.into_iter().next().unwrap_or(Value::Null)
    };
    let r = http
        .post(gw.admin("/publish"))
        .json(&body)
        .send()
        .await
        .expect("publish");
    let status = r.status().as_u16();
    let v: Value = r.json().await.unwrap_or(Value::Null);
    assert_eq!(status, 200, "publish on {topic}: {v}");
    let answers = match v {
        Value::Array(a) => a,
        one => vec![one],
    };
    assert_eq!(answers.len(), tags.len(), "one answer per message");
    tags.into_iter()
        .zip(answers)
        .map(|(t, a)| (t, a["seq"].as_u64().unwrap_or(0)))
        .collect()
}

/// Node a's publisher of `topic`: the publish API, [`BATCH`] messages per request.
async fn publish_api_batches(
    http: &reqwest::Client,
    gw: &Gateway,
    topic: &str,
) -> Vec<(String, u64)> {
    let mut out = Vec::new();
    for start in (0..API_A).step_by(BATCH) {
        let tags = (start..(start + BATCH).min(API_A))
            .map(|i| tag(topic, "a", i))
            .collect();
        out.extend(publish(http, gw, topic, tags, true).await);
    }
    out
}

/// One of node c's publishers of `topic`: the publish API, one message per request.
async fn publish_api_single(
    http: &reqwest::Client,
    gw: &Gateway,
    topic: &str,
    publisher: &str,
) -> Vec<(String, u64)> {
    let mut out = Vec::new();
    for i in 0..API_C_EACH {
        out.extend(publish(http, gw, topic, vec![tag(topic, publisher, i)], false).await);
    }
    out
}

/// Node b's publisher of `topic`: pubsub.v1 `publish` requests on one connection, up to
/// [`WINDOW`] sent ahead of their answers (which come in order).
async fn publish_pubsub(gw: &Gateway, topic: &str) -> Vec<(String, u64)> {
    let mut ws = pubsub(gw).await;
    let mut out = Vec::new();
    let mut sent = 0;
    while out.len() < PUBSUB_B {
        while sent < PUBSUB_B && sent - out.len() < WINDOW {
            let t = tag(topic, "b", sent);
            ws_send(
                &mut ws,
                json!({"op": "publish", "topic": topic, "event": "m", "data": t, "id": sent}),
            )
            .await;
            sent += 1;
        }
        let i = out.len();
        let ack = ws_next(&mut ws, Duration::from_secs(30))
            .await
            .expect("an answer");
        assert_eq!(ack["op"], "published", "{ack}");
        assert_eq!(ack["id"], i, "{ack}");
        out.push((tag(topic, "b", i), ack["seq"].as_u64().unwrap_or(0)));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ten_thousand_messages_from_three_nodes_reach_every_subscriber_once_in_one_order() {
    let started = Instant::now();
    let redis = RedisServer::start();
    let gws: Vec<Gateway> = ["a", "b", "c"]
        .iter()
        .map(|n| Gateway::start(&node_config(&redis, n)))
        .collect();
    let http = http();
    let (a, b, c) = (&gws[0], &gws[1], &gws[2]);
    wait_cluster_ok(&[a, b, c]).await;

    // On each node: one pubsub.v1 connection subscribed to both topics (which tells where the
    // topics stand: seq 0 of one epoch, the same on every node), and an SSE stream per topic.
    let mut start: BTreeMap<&str, String> = BTreeMap::new();
    let mut subs = Vec::new();
    for gw in &gws {
        let mut ws = pubsub(gw).await;
        for topic in TOPICS {
            let s = ws_subscribe(&mut ws, topic, None).await;
            assert_eq!(s["op"], "subscribed", "{s}");
            let at = s["position"].as_str().expect("position").to_string();
            assert!(at.ends_with(":0"), "{topic} is new: {at}");
            let first = start.entry(topic).or_insert_with(|| at.clone());
            assert_eq!(
                *first, at,
                "every node places {topic} at the fleet's position"
            );
        }
        subs.push(ws);
    }
    let mut sse = Vec::new();
    for gw in &gws {
        for topic in TOPICS {
            let url = gw.https(&format!("/events?topic={topic}"));
            sse.push(Sse::open_with(&http, &url, None).await);
        }
    }

    // The official client: a subscriber per node, two relaying publishers on node c.
    let mut node = Command::new("node")
        .arg(workspace_root().join("tests/js/cluster.mjs"))
        .args([
            "fleet",
            "websocket",
            &a.https(""),
            &b.https(""),
            &c.https(""),
        ])
        .args([RELAY_C.to_string(), PER_TOPIC.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run node (tests/setup.sh installs it)");
    let stdout = node.stdout.take().expect("stdout");
    let (ready, lines) = tokio::task::spawn_blocking(move || {
        let mut lines = BufReader::new(stdout).lines();
        let ready = lines.next();
        (ready, lines)
    })
    .await
    .expect("read node");
    let ready = ready.and_then(Result::ok).unwrap_or_default();
    assert!(ready.contains("ready"), "node: {ready}");
    // Everyone is in place: a and b have a pubsub.v1, an SSE and a Socket.IO subscriber of each
    // topic, c also the topic's relaying publisher.
    for (gw, n) in [(a, 3), (b, 3), (c, 4)] {
        for topic in TOPICS {
            wait_subscribers(gw, topic, n).await;
        }
    }
    let readers: Vec<_> = sse
        .into_iter()
        .map(|s| tokio::spawn(read_sse(s, PER_TOPIC)))
        .collect();
    let pubsub_readers: Vec<_> = subs
        .into_iter()
        .map(|ws| tokio::spawn(read_pubsub(ws, PER_TOPIC)))
        .collect();
    writeln!(node.stdin.as_mut().expect("stdin"), "go").expect("tell node");
    let socketio = tokio::task::spawn_blocking(move || {
        let last = lines.last().and_then(Result::ok).unwrap_or_default();
        let out = node.wait_with_output().expect("node ends");
        (last, out)
    });
    let published_at = Instant::now();

    // Every publisher at once, each keeping its own order; the long-pollers meanwhile.
    type Publisher<'a> =
        std::pin::Pin<Box<dyn std::future::Future<Output = Vec<(String, u64)>> + Send + 'a>>;
    let mut publishers: Vec<(&str, Publisher)> = Vec::new();
    for topic in TOPICS {
        publishers.push((topic, Box::pin(publish_api_batches(&http, a, topic))));
        publishers.push((topic, Box::pin(publish_pubsub(b, topic))));
        for p in API_C {
            publishers.push((topic, Box::pin(publish_api_single(&http, c, topic, p))));
        }
    }
    let (publisher_topics, publishers): (Vec<&str>, Vec<Publisher>) =
        publishers.into_iter().unzip();
    let publishers = futures_util::future::join_all(publishers);
    let pollers = futures_util::future::join_all(
        gws.iter()
            .flat_map(|gw| TOPICS.map(|t| (gw, t)))
            .map(|(gw, topic)| read_longpoll(&http, gw, topic, start[topic].clone(), PER_TOPIC)),
    );
    let (published, polled) = tokio::join!(publishers, pollers);
    let publish_time = published_at.elapsed();

    let (last, out) = socketio.await.expect("node ran");
    let v: Value = serde_json::from_str(&last).unwrap_or_else(|e| {
        let tail: String = last
            .chars()
            .rev()
            .take(300)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect();
        panic!(
            "node printed no result ({e}; {} bytes, ending {tail:?})\n{}",
            last.len(),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    assert!(
        out.status.success() && v.get("error").is_none(),
        "node: {v}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        v["transport"],
        json!(["websocket", "polling", "websocket"]),
        "{}",
        v["transport"]
    );

    // What each subscriber saw, per topic.
    let mut seen: BTreeMap<&str, Vec<(String, Seen)>> = BTreeMap::new();
    let nodes_topics: Vec<(&str, &str)> = ["a", "b", "c"]
        .iter()
        .flat_map(|n| TOPICS.map(|t| (*n, t)))
        .collect();
    for ((n, topic), r) in nodes_topics.iter().zip(readers) {
        let got = r.await.expect("sse reader");
        seen.entry(topic)
            .or_default()
            .push((format!("sse on {n}"), got));
    }
    for ((n, topic), got) in nodes_topics.iter().zip(polled) {
        seen.entry(topic)
            .or_default()
            .push((format!("long-poll on {n}"), got));
    }
    for (n, r) in ["a", "b", "c"].iter().zip(pubsub_readers) {
        let mut got = r.await.expect("pubsub reader");
        for topic in TOPICS {
            seen.entry(topic).or_default().push((
                format!("pubsub.v1 on {n}"),
                got.remove(topic).unwrap_or_default(),
            ));
        }
        assert!(got.is_empty(), "frames of no topic: {got:?}");
    }

    // The answers the publishers got, per topic: (tag, seq).
    let mut answers: BTreeMap<&str, Vec<(String, u64)>> = BTreeMap::new();
    for (topic, a) in publisher_topics.into_iter().zip(published) {
        answers.entry(topic).or_default().extend(a);
    }
    for topic in TOPICS {
        let relays = v["acks"][topic].as_array().expect("relay acks");
        assert_eq!(relays.len(), RELAY_C, "{topic}");
        for (i, seq) in relays.iter().enumerate() {
            let seq = seq
                .as_u64()
                .unwrap_or_else(|| panic!("relay {i} of {topic} acked {seq}"));
            answers
                .entry(topic)
                .or_default()
                .push((tag(topic, "cs", i), seq));
        }
    }

    for topic in TOPICS {
        let subscribers = &seen[topic];
        let epoch = start[topic].split(':').next().expect("epoch");
        let want_positions: Vec<String> = (1..=PER_TOPIC).map(|s| format!("{epoch}:{s}")).collect();
        // The fleet's order: the first subscriber's, checked first to be whole.
        let (first_name, first) = &subscribers[0];
        let positions: Vec<&str> = first.iter().map(|(p, _)| p.as_str()).collect();
        assert!(
            positions == want_positions,
            "{topic}, {first_name}: not seq 1..={PER_TOPIC} of epoch {epoch} once each: {} received, first differences: {:?}",
            first.len(),
            first
                .iter()
                .zip(&want_positions)
                .filter(|((p, _), w)| p != *w)
                .take(3)
                .collect::<Vec<_>>()
        );
        let order: Vec<&str> = first.iter().map(|(_, t)| t.as_str()).collect();
        // Every message once: the order holds exactly the tags published.
        let mut sorted = order.clone();
        sorted.sort_unstable();
        let mut want: Vec<String> = PUBLISHERS
            .iter()
            .flat_map(|(p, n)| (0..*n).map(move |i| tag(topic, p, i)))
            .collect();
        want.sort_unstable();
        assert!(
            sorted == want,
            "{topic}: the messages are not those published, once each"
        );
        // Each publisher's messages in the order it sent them.
        for (p, n) in PUBLISHERS {
            let prefix = format!("{topic}/{p}/");
            let mine: Vec<&str> = order
                .iter()
                .copied()
                .filter(|t| t.starts_with(&prefix))
                .collect();
            let want: Vec<String> = (0..n).map(|i| tag(topic, p, i)).collect();
            assert!(mine == want, "{topic}: publisher {p} out of order");
        }
        // Every publisher was told the seq its message has for every subscriber.
        let told = &answers[topic];
        assert_eq!(told.len(), PER_TOPIC, "{topic}");
        for (t, seq) in told {
            let at = usize::try_from(*seq).unwrap_or(0);
            assert!(
                at >= 1 && order.get(at - 1) == Some(&t.as_str()),
                "{topic}: {t} was answered seq {seq}, where subscribers have {:?}",
                at.checked_sub(1).and_then(|i| order.get(i))
            );
        }
        // Every other subscriber: the same positions with the same messages.
        for (name, got) in &subscribers[1..] {
            assert_eq!(got.len(), PER_TOPIC, "{topic}, {name}: count");
            if let Some(i) = got.iter().zip(first).position(|(x, y)| x != y) {
                panic!(
                    "{topic}, {name}: at #{i} has {:?} where {first_name} has {:?}",
                    got[i], first[i]
                );
            }
        }
        // The official client's sockets, one per node: the same messages in the same order.
        for (i, name) in [
            "socket.io (websocket) on a",
            "socket.io (polling) on b",
            "socket.io (upgraded) on c",
        ]
        .iter()
        .enumerate()
        {
            let prefix = format!("{topic}/");
            let got: Vec<String> = v["got"][i]
                .as_array()
                .expect("events")
                .iter()
                .map(tag_of_value)
                .filter(|t| t.starts_with(&prefix))
                .collect();
            assert_eq!(got.len(), PER_TOPIC, "{topic}, {name}: count");
            if let Some(j) = got.iter().zip(&order).position(|(x, y)| x != y) {
                panic!(
                    "{topic}, {name}: at #{j} has {} where {first_name} has {}",
                    got[j], order[j]
                );
            }
        }
    }
    let subscribers: usize = seen.values().map(Vec::len).sum::<usize>() + 2 * 3;
    println!(
        "{} messages from three nodes, {subscribers} subscriptions, one order; published and read in {:.1} s, {:.1} s in all",
        PER_TOPIC * TOPICS.len(),
        publish_time.as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
}
