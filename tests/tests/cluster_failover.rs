//! A node killed (or stopped) under its clients, behind a round-robin balancer (nginx): its Socket.IO
//! clients reconnect through the balancer to the other node and resume their sessions
//! (`socket.recovered === true`, every event they missed once and in order, from the fleet's
//! history in Redis), and an SSE client resumes on the other node from its `Last-Event-ID`.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use e2e::balancer::Balancer;
use e2e::fleet::{balanced_nodes, wait_forwarding, Sse};
use e2e::redis::RedisServer;
use e2e::{client, workspace_root};
use realtime::engineio::node_tag;
use serde_json::{json, Value};

/// Events published before the kill, and in all.
const BEFORE: usize = 10;
const ALL: usize = 40;

async fn publish(url: String, n: usize) {
    let r = client()
        .post(url)
        .json(&json!({"topic": "news", "event": "note", "data": {"n": n}}))
        .send()
        .await
        .expect("publish");
    assert_eq!(r.status(), 200, "{:?}", r.text().await);
}

fn numbers(sse: &Sse) -> Vec<u64> {
    sse.messages()
        .iter()
        .map(|e| {
            let v: Value = serde_json::from_str(&e.data).expect("json data");
            v["n"].as_u64().expect("n")
        })
        .collect()
}

/// How node a goes away.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Ends {
    /// SIGKILL: nothing written on the way out.
    Killed,
    /// SIGTERM: a graceful stop (its sessions closed as the server shuts down).
    Stopped,
}

/// A fleet of two behind nginx, `target` clients (at least) in `mode` on node a, then a ends.
fn end_a_node_under(mode: &str, target: usize, ends: Ends) {
    let started = Instant::now();
    let redis = RedisServer::start();
    let mut nodes = balanced_nodes(&redis, 2, 1000);
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(wait_forwarding(&nodes));
    // Weighted round-robin, no affinity: nine requests in ten go to a, the node killed.
    let lb = Balancer::round_robin(&[(nodes[0].http_addr(), 9), (nodes[1].http_addr(), 1)]);
    let publish_on_b = nodes[1].gw.admin("/publish");

    let mut clients = Command::new("node")
        .arg(workspace_root().join("tests/js/cluster.mjs"))
        .args(["killed", mode, &lb.url()])
        .args([
            target.to_string(),
            node_tag("a"),
            BEFORE.to_string(),
            ALL.to_string(),
        ])
        .stdout(Stdio::piped())
        .spawn()
        .expect("node");
    let mut lines = BufReader::new(clients.stdout.take().expect("stdout")).lines();
    let mut line = || {
        let l = lines.next().expect("a line").expect("utf-8");
        serde_json::from_str::<Value>(&l).unwrap_or_else(|_| panic!("not JSON: {l}"))
    };
    let ready = line();
    assert_eq!(ready["ready"], true, "{ready}");
    println!("{ready} after {:?}", started.elapsed());

    // An SSE reader on a, directly.
    let sse_url = |base: String| format!("{base}/events?topic=news");
    let mut sse = runtime.block_on(Sse::open_url(&sse_url(nodes[0].gw.http("")), None));
    runtime.block_on(async {
        for n in 1..=BEFORE {
            publish(publish_on_b.clone(), n).await;
        }
        sse.read_until(BEFORE, Duration::from_secs(10)).await;
    });
    let had = line();
    assert_eq!(had["had"], BEFORE, "{had}");
    assert_eq!(numbers(&sse), (1..=BEFORE as u64).collect::<Vec<_>>());
    let last_id = sse.events[BEFORE - 1].id.clone().expect("an id");
    drop(sse);

    // Node a ends; the events go on.
    match ends {
        Ends::Killed => nodes[0].gw.proc.kill(),
        Ends::Stopped => nodes[0].gw.proc.signal(15),
    }
    let killed_at = Instant::now();
    runtime.block_on(async {
        for n in BEFORE + 1..=ALL {
            publish(publish_on_b.clone(), n).await;
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    });

    // The SSE reader comes back through the balancer with its Last-Event-ID: b serves it.
    let mut sse = runtime.block_on(Sse::open_url(&sse_url(lb.url()), Some(&last_id)));
    runtime.block_on(sse.read_until(ALL - BEFORE, Duration::from_secs(10)));
    assert_eq!(
        numbers(&sse),
        (BEFORE as u64 + 1..=ALL as u64).collect::<Vec<_>>(),
        "{:?}",
        sse.events
    );

    let result = line();
    let status = clients.wait().expect("node exits");
    assert!(
        status.success() && result.get("error").is_none(),
        "{result}"
    );
    println!(
        "{mode}, {ends:?}: {} clients, {} on the killed node; all settled {:?} after the kill; test {:?}: {result}",
        result["clients"],
        result["killed"],
        killed_at.elapsed(),
        started.elapsed()
    );
    let killed = result["killed"].as_u64().expect("killed");
    assert!(killed >= target as u64, "{result}");
    assert_eq!(result["recovered"], killed, "every one recovered: {result}");
    assert_eq!(
        result["exact"], killed,
        "every event once, in order: {result}"
    );
    assert_eq!(result["movedTo"], json!([node_tag("b")]), "{result}");
    assert_eq!(result["othersExact"], result["others"], "{result}");
    if mode == "websocket" {
        // Their WebSockets went to b directly: nothing of a was on their way.
        assert_eq!(result["othersReconnected"], 0, "{result}");
    }
}

/// 500 WebSocket clients on the killed node (more come through the balancer: they connect in
/// batches until 500 are there), then, on a new fleet, 100 clients of the client's default
/// mode (a polling handshake, then the upgrade, each request balanced round-robin: forwarded
/// to the owner when it lands on the other node), then 50 on a node stopped gracefully. One
/// after the other: each is a whole fleet.
#[test]
fn a_killed_or_stopped_nodes_clients_resume_on_the_other_node_through_the_balancer() {
    end_a_node_under("websocket", 500, Ends::Killed);
    end_a_node_under("upgrade", 100, Ends::Killed);
    end_a_node_under("upgrade", 50, Ends::Stopped);
}
