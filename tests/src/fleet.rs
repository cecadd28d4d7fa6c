//! Several gateways on one Redis, and the real clients the fleet tests listen with: SSE streams
//! (reqwest), long-polls, `pubsub.v1` WebSockets (tokio-tungstenite) and the official
//! socket.io-client (node, `tests/js/cluster.mjs`).

use std::process::Command;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use realtime::hub::Position;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

use crate::redis::RedisServer;
use crate::{client, eventually, websocket, workspace_root, Gateway};

/// A gateway that is node `node` of the fleet on `redis_url`, with every realtime transport
/// mounted: long-poll (`/s`, `/p`), SSE (`/events`), `/ws` and Socket.IO (relay and client
/// rooms on `/`). `history` is the hub's (and so Redis's) per-topic history.
pub fn node_config(redis_url: &str, node: &str, history: usize) -> String {
    format!(
        r#"
listen: {{https: "{{https}}", admin: "{{admin}}"}}
tls: {{state_dir: state}}
cluster: {{redis: "{redis_url}", node_id: "{node}"}}
realtime:
  hub: {{history: {history}}}
  longpoll: {{wait_ms: 1500}}
  sse: {{heartbeat_ms: 1000}}
  socketio:
    namespaces:
      "/": {{relay: true, client_rooms: true, relay_rate: {{per_second: 1000, burst: 1000}}}}
  # The fleet's tests publish from clients (POST /p, pubsub.v1, relays into rooms) to any
  # topic; the policy is tested in authz.rs.
  policy: {{client_publish: ["*"]}}
routes:
  - {{path: /s, realtime: longpoll}}
  - {{path: /p, realtime: longpoll}}
  - {{path: /events, realtime: sse}}
  - {{path: /ws, realtime: websocket}}
  - {{path: /socket.io/, realtime: socketio}}
"#
    )
}

/// The fleet's shared secret in the tests (`cluster.secret`).
pub const SECRET: &str = "test-fleet-secret-0123456789";

/// A node of a fleet behind a balancer: plain HTTP (the balancer in front is trusted for the
/// client's address), the internal listener on loopback port `internal` with [`SECRET`],
/// Socket.IO with connection state recovery (`recovery_ms`), the same transports as
/// [`node_config`], and no per-address session cap (every test client is 127.0.0.1).
pub fn balanced_node_config(redis_url: &str, node: &str, internal: u16, history: usize) -> String {
    format!(
        r#"
listen: {{http: "{{http}}", admin: "{{admin}}"}}
proxy: {{trusted_proxies: [127.0.0.1/32]}}
cluster: {{redis: "{redis_url}", node_id: "{node}", internal_listen: "127.0.0.1:{internal}", secret: "{SECRET}"}}
realtime:
  hub: {{history: {history}}}
  longpoll: {{wait_ms: 1500}}
  sse: {{heartbeat_ms: 1000}}
  socketio:
    max_sessions_per_client: 10000
    recovery: {{max_disconnection_ms: 60000}}
    namespaces:
      "/": {{relay: true, client_rooms: true, relay_rate: {{per_second: 1000, burst: 1000}}}}
  policy: {{client_publish: ["*"]}}
routes:
  - {{path: /s, realtime: longpoll}}
  - {{path: /p, realtime: longpoll}}
  - {{path: /events, realtime: sse}}
  - {{path: /ws, realtime: websocket}}
  - {{path: /socket.io/, realtime: socketio}}
"#
    )
}

/// A gateway of a fleet behind a balancer, and its internal listener's port.
pub struct Node {
    pub gw: Gateway,
    pub internal: u16,
}

impl Node {
    /// `127.0.0.1:<http port>`, what the balancer sends requests to.
    pub fn http_addr(&self) -> std::net::SocketAddr {
        ([127, 0, 0, 1], self.gw.ports.http).into()
    }
}

/// `n` nodes of a fleet on `redis` that forward Engine.IO requests to each other, named `a`,
/// `b`, ... ([`balanced_node_config`]).
pub fn balanced_nodes(redis: &RedisServer, n: usize, history: usize) -> Vec<Node> {
    (0..n)
        .map(|i| {
            let name = ((b'a' + i as u8) as char).to_string();
            let internal = crate::free_port();
            let gw = Gateway::start(&balanced_node_config(
                &redis.url(),
                &name,
                internal,
                history,
            ));
            Node { gw, internal }
        })
        .collect()
}

/// `n` gateways on `redis`, named `a`, `b`, ...
pub fn nodes(redis: &RedisServer, n: usize, history: usize) -> Vec<Gateway> {
    (0..n)
        .map(|i| {
            let name = ((b'a' + i as u8) as char).to_string();
            Gateway::start(&node_config(&redis.url(), &name, history))
        })
        .collect()
}

/// `/healthz` of a node, as JSON.
pub async fn health(gw: &Gateway) -> Value {
    client()
        .get(gw.admin("/healthz"))
        .send()
        .await
        .expect("healthz")
        .json()
        .await
        .expect("healthz json")
}

/// Waits until every node says `cluster: ok`.
pub async fn wait_cluster_ok(gws: &[&Gateway]) {
    for gw in gws {
        let ok = eventually(Duration::from_secs(20), || async {
            health(gw).await["cluster"]["status"] == "ok"
        })
        .await;
        assert!(ok, "cluster not ok: {}", health(gw).await);
    }
}

/// Waits until every node says `cluster: ok` and has its internal address in Redis.
pub async fn wait_forwarding(nodes: &[Node]) {
    let gws: Vec<&Gateway> = nodes.iter().map(|n| &n.gw).collect();
    wait_cluster_ok(&gws).await;
    for gw in gws {
        let ok = eventually(Duration::from_secs(20), || async {
            health(gw).await["cluster"]["internal"]["advertised"] == true
        })
        .await;
        assert!(ok, "internal address not advertised: {}", health(gw).await);
    }
}

/// Subscribers of `topic` on this node (0 when the node does not have the topic).
pub async fn subscribers(gw: &Gateway, topic: &str) -> u64 {
    let r = client()
        .get(gw.admin(&format!("/topics/{topic}")))
        .send()
        .await
        .expect("topic");
    if r.status() == 404 {
        return 0;
    }
    let v: Value = r.json().await.expect("json");
    v["subscribers"].as_u64().unwrap_or(0)
}

/// Waits until `topic` has at least `n` subscribers on this node.
pub async fn wait_subscribers(gw: &Gateway, topic: &str, n: u64) {
    let ok = eventually(Duration::from_secs(10), || async {
        subscribers(gw, topic).await >= n
    })
    .await;
    assert!(ok, "{topic}: fewer than {n} subscribers");
}

/// `POST /publish` on the admin listener: the status and the JSON answer.
pub async fn publish_api(gw: &Gateway, topic: &str, data: Value) -> (u16, Value) {
    let r = client()
        .post(gw.admin("/publish"))
        .json(&json!({"topic": topic, "data": data}))
        .send()
        .await
        .expect("publish");
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

/// `POST /p?t=topic`: the status and the body.
pub async fn publish_longpoll(gw: &Gateway, topic: &str, text: &str) -> (u16, String) {
    let r = client()
        .post(gw.https(&format!("/p?t={topic}")))
        .body(text.to_string())
        .send()
        .await
        .expect("long-poll publish");
    let status = r.status().as_u16();
    (status, r.text().await.unwrap_or_default())
}

/// One event of an SSE stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SseEvent {
    pub id: Option<String>,
    pub event: String,
    pub data: String,
}

/// An open SSE stream and what has been read of it.
pub struct Sse {
    resp: reqwest::Response,
    buf: String,
    pub events: Vec<SseEvent>,
}

impl Sse {
    /// `GET /events?topic=...` on `gw`, resuming from `last_event_id` if given; returns once
    /// the answer's head is in (the subscription is made before the head is sent).
    pub async fn open(gw: &Gateway, topic: &str, last_event_id: Option<&str>) -> Sse {
        Sse::open_url(&gw.https(&format!("/events?topic={topic}")), last_event_id).await
    }

    /// [`Sse::open`] on any URL (a node's plain listener, a balancer in front of the fleet).
    pub async fn open_url(url: &str, last_event_id: Option<&str>) -> Sse {
        Sse::open_with(&client(), url, last_event_id).await
    }

    /// [`Sse::open_url`] with `client` (whose timeout bounds the whole stream: [`client`]'s is
    /// 30 s).
    pub async fn open_with(
        client: &reqwest::Client,
        url: &str,
        last_event_id: Option<&str>,
    ) -> Sse {
        let mut req = client.get(url);
        if let Some(id) = last_event_id {
            req = req.header("last-event-id", id);
        }
        let resp = req.send().await.expect("sse");
        assert_eq!(resp.status(), 200);
        Sse {
            resp,
            buf: String::new(),
            events: Vec::new(),
        }
    }

    /// Reads until `n` events (resets included) have come in all, or `wait` passes.
    pub async fn read_until(&mut self, n: usize, wait: Duration) -> &[SseEvent] {
        let deadline = tokio::time::Instant::now() + wait;
        while self.events.len() < n {
            match tokio::time::timeout_at(deadline, self.resp.chunk()).await {
                Ok(Ok(Some(c))) => {
                    self.buf.push_str(&String::from_utf8_lossy(&c));
                    while let Some(end) = self.buf.find("\n\n") {
                        let block: String = self.buf.drain(..end + 2).collect();
                        if let Some(e) = parse_event(&block) {
                            self.events.push(e);
                        }
                    }
                }
                _ => break,
            }
        }
        &self.events
    }

    /// The messages (not resets) read so far.
    pub fn messages(&self) -> Vec<SseEvent> {
        self.events
            .iter()
            .filter(|e| e.event != "reset")
            .cloned()
            .collect()
    }
}

fn parse_event(block: &str) -> Option<SseEvent> {
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
    (!event.is_empty()).then(|| SseEvent {
        id,
        event,
        data: data.join("\n"),
    })
}

/// One long-poll answer: status, the `x-position` header, and the messages (a batch when the
/// poll gave `since`, else the one body).
pub struct Poll {
    pub status: u16,
    pub position: Option<String>,
    pub messages: Vec<(Position, String)>,
}

/// `GET /s?t=topic[&since=...]` on `gw`.
pub async fn long_poll(gw: &Gateway, topic: &str, since: Option<&str>) -> Poll {
    let url = match since {
        Some(s) => gw.https(&format!("/s?t={topic}&since={s}")),
        None => gw.https(&format!("/s?t={topic}")),
    };
    let r = client().get(url).send().await.expect("poll");
    let status = r.status().as_u16();
    let position = r
        .headers()
        .get("x-position")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let body = r.text().await.expect("body");
    let messages = match (status, since, &position) {
        (200, Some(_), _) => realtime::longpoll::decode_batch(&body).expect("a batch"),
        (200, None, Some(p)) => vec![(p.parse().expect("position"), body)],
        _ => Vec::new(),
    };
    Poll {
        status,
        position,
        messages,
    }
}

pub type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A `pubsub.v1` connection to `/ws` on `gw`.
pub async fn pubsub(gw: &Gateway) -> Ws {
    let url = format!("wss://127.0.0.1:{}/ws", gw.ports.https);
    websocket(&url, Some("pubsub.v1")).await.expect("upgrade").0
}

/// Sends one pub/sub request.
pub async fn ws_send(ws: &mut Ws, v: Value) {
    ws.send(Message::text(v.to_string())).await.expect("send");
}

/// The next JSON frame, within `wait`; `None` when nothing came.
pub async fn ws_next(ws: &mut Ws, wait: Duration) -> Option<Value> {
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        match tokio::time::timeout_at(deadline, ws.next()).await {
            Ok(Some(Ok(Message::Text(t)))) => return serde_json::from_str(t.as_str()).ok(),
            Ok(Some(Ok(Message::Ping(_) | Message::Pong(_)))) => continue,
            _ => return None,
        }
    }
}

/// Subscribes (`since` to resume) and returns the answer (`subscribed` or `reset`).
pub async fn ws_subscribe(ws: &mut Ws, topic: &str, since: Option<&str>) -> Value {
    let mut req = json!({"op": "subscribe", "topic": topic});
    if let Some(s) = since {
        req["since"] = json!(s);
    }
    ws_send(ws, req).await;
    ws_next(ws, Duration::from_secs(10))
        .await
        .expect("an answer to subscribe")
}

/// Runs a scenario of tests/js/cluster.mjs against `bases` in `mode`; the JSON it printed.
pub fn socketio_scenario(scenario: &str, mode: &str, bases: &[String]) -> Value {
    let out = Command::new("node")
        .arg(workspace_root().join("tests/js/cluster.mjs"))
        .args([scenario, mode])
        .args(bases)
        .output()
        .expect("run node (tests/setup.sh installs it)");
    crate::node_result(out, &format!("{scenario}/{mode}"))
}
