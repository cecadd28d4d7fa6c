//! A fleet of gateways speaks socket.io's own Redis protocol (the classic
//! `@socket.io/redis-adapter` 8.x one) and Laravel's broadcaster, with no code of ours on the
//! other side: `@socket.io/redis-emitter`, a Node socket.io 4.8 server with
//! `@socket.io/redis-adapter` 8.3, the Ruby/PHP emitters' bytes published with `redis-cli`, and
//! Laravel's `PUBLISH` read by laravel-echo clients. Real binaries on a real `redis-server`; the
//! JavaScript side is `tests/js/adapter.mjs`.

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use e2e::fleet::{wait_cluster_ok, wait_subscribers, Sse};
use e2e::redis::RedisServer;
use e2e::{workspace_root, Gateway};
use serde_json::{json, Value};

/// A node of the fleet on `redis_url` with Socket.IO on `/` (`main`: what the main namespace
/// does) and `/admin`, SSE, and Laravel's broadcaster on channel `orders` and the `news-*` ones
/// (Laravel's default key prefix). The adapter protocol is on by default.
fn node_config(redis_url: &str, node: &str, main: &str) -> String {
    format!(
        r#"
listen: {{https: "{{https}}", admin: "{{admin}}"}}
tls: {{state_dir: state}}
cluster:
  redis: "{redis_url}"
  node_id: "{node}"
  laravel: {{channels: [orders, "news-*"]}}
realtime:
  sse: {{heartbeat_ms: 1000}}
  socketio:
    namespaces:
      "/": {{{main}}}
      "/admin": {{}}
  policy: {{client_publish: ["*"]}}
routes:
  - {{path: /events, realtime: sse}}
  - {{path: /socket.io/, realtime: socketio}}
"#
    )
}

/// The main namespace relays and lets clients join rooms.
const RELAY: &str = "relay: true, client_rooms: true";

/// The main namespace speaks Laravel Echo's protocol.
const ECHO: &str = "echo: true";

/// Two nodes, `a` and `b`, once both say `cluster: ok`.
async fn fleet(redis: &RedisServer, main: &str) -> Vec<Gateway> {
    let gws: Vec<Gateway> = ["a", "b"]
        .iter()
        .map(|n| Gateway::start(&node_config(&redis.url(), n, main)))
        .collect();
    wait_cluster_ok(&[&gws[0], &gws[1]]).await;
    gws
}

fn script_args(scenario: &str, redis: &RedisServer, mode: &str, gws: &[Gateway]) -> Vec<String> {
    let mut args = vec![
        workspace_root()
            .join("tests/js/adapter.mjs")
            .display()
            .to_string(),
        scenario.to_string(),
        redis.url(),
        mode.to_string(),
    ];
    args.extend(gws.iter().map(|g| g.https("")));
    args.push("--".into());
    args.extend(gws.iter().map(|g| g.admin("")));
    args
}

/// Runs a scenario of tests/js/adapter.mjs to its end; the JSON it printed.
fn scenario(name: &str, redis: &RedisServer, mode: &str, gws: &[Gateway]) -> Value {
    let out = Command::new("node")
        .args(script_args(name, redis, mode, gws))
        .output()
        .expect("run node (tests/setup.sh installs it)");
    e2e::node_result(out, &format!("{name}/{mode}"))
}

/// Runs a scenario that says `ready` once its clients are in place, calls `publish` with what
/// it said, lets it go on, and returns what it printed at the end.
fn scenario_with(
    name: &str,
    redis: &RedisServer,
    gws: &[Gateway],
    publish: impl FnOnce(&Value),
) -> Value {
    let mut node = Command::new("node")
        .args(script_args(name, redis, "websocket", gws))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run node");
    let mut lines = BufReader::new(node.stdout.take().expect("stdout")).lines();
    let first = lines.next().expect("a line").expect("utf-8");
    let said: Value = serde_json::from_str(&first).expect("json");
    assert!(said.get("ready").is_some(), "{name}: {said}");
    publish(&said["ready"]);
    writeln!(node.stdin.as_mut().expect("stdin"), "go").expect("tell node");
    let last = lines.last().expect("a result").expect("utf-8");
    let out = node.wait_with_output().expect("node ends");
    let v: Value = serde_json::from_str(&last).unwrap_or_else(|_| panic!("{name}: {last}"));
    assert!(
        out.status.success() && v.get("error").is_none(),
        "{name}: {v}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    v
}

/// What each named client received of one event: the arguments of each delivery.
fn got(v: &Value, step: &str, client: &str) -> Vec<Value> {
    v[step][client]
        .as_array()
        .unwrap_or_else(|| panic!("{step}.{client}: {v}"))
        .clone()
}

fn bytes(hex: &str) -> Vec<u8> {
    let hex: String = hex.split_whitespace().collect();
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).expect("hex"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_redis_emitter_reaches_the_sockets_of_every_node() {
    let redis = RedisServer::start();
    let gws = fleet(&redis, RELAY).await;
    for mode in ["websocket", "polling"] {
        let v = scenario("emitter", &redis, mode, &gws);
        // To all: every socket of `/` on both nodes, once; not the other namespace.
        for c in ["a1", "b1", "a2", "b2"] {
            assert_eq!(got(&v, "all", c), [json!([1, "two"])], "{mode} {c}: {v}");
        }
        assert!(got(&v, "all", "adm").is_empty(), "{mode}: {v}");
        // One room: r1's sockets (a1 on a, b1 on b).
        for (c, n) in [("a1", 1), ("b1", 1), ("a2", 0), ("b2", 0)] {
            assert_eq!(got(&v, "oneRoom", c).len(), n, "{mode} {c}: {v}");
        }
        // Several rooms: b1 is in both, and gets it once.
        for (c, n) in [("a1", 1), ("b1", 1), ("a2", 1), ("b2", 0)] {
            assert_eq!(got(&v, "rooms", c).len(), n, "{mode} {c}: {v}");
        }
        assert_eq!(got(&v, "rooms", "b1"), [json!([{"n": 1}])]);
        // Except r1.
        for (c, n) in [("a1", 0), ("b1", 0), ("a2", 1), ("b2", 1)] {
            assert_eq!(got(&v, "except", c).len(), n, "{mode} {c}: {v}");
        }
        // Another namespace: only its socket.
        assert_eq!(got(&v, "admin", "adm"), [json!([3])], "{mode}: {v}");
        for c in ["a1", "b1", "a2", "b2"] {
            assert!(got(&v, "admin", c).is_empty(), "{mode} {c}: {v}");
        }
        // Binary arguments arrive as binary, nested ones too.
        for c in ["a1", "b1", "a2", "b2"] {
            assert_eq!(
                got(&v, "binary", c),
                [json!([{"bin": [1, 2, 3]}, {"nested": {"bin": [255]}}])],
                "{mode} {c}: {v}"
            );
        }
        // socketsJoin: r2's sockets (b1, a2) joined r3.
        for (c, n) in [("a1", 0), ("b1", 1), ("a2", 1), ("b2", 0)] {
            assert_eq!(got(&v, "joined", c).len(), n, "{mode} {c}: {v}");
        }
        // socketsLeave: r1's sockets left it; nobody hears r1 any more.
        for c in ["a1", "b1", "a2", "b2"] {
            assert!(got(&v, "afterLeave", c).is_empty(), "{mode} {c}: {v}");
        }
        // serverSideEmit is for servers, never for clients.
        for c in ["a1", "b1", "a2", "b2", "adm"] {
            assert!(got(&v, "serverSide", c).is_empty(), "{mode} {c}: {v}");
        }
        // disconnectSockets(true) of r2: b1 and a2 are told (on a poll too: the DISCONNECT
        // packet comes before the engine's close, never in the same payload), and stay away;
        // the others stay.
        for (c, reasons, connected) in [
            ("b1", json!(["io server disconnect"]), false),
            ("a2", json!(["io server disconnect"]), false),
            ("a1", json!([]), true),
            ("b2", json!([]), true),
            ("adm", json!([]), true),
        ] {
            assert_eq!(v["reasons"][c], reasons, "{mode} {c}: {v}");
            assert_eq!(v["connected"][c], connected, "{mode} {c}: {v}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_socketio_server_with_the_redis_adapter_is_a_peer_of_the_fleet() {
    let redis = RedisServer::start();
    let gws = fleet(&redis, RELAY).await;
    let v = scenario("peer", &redis, "websocket", &gws);
    let id = |c: &str| v["ids"][c].as_str().expect("an id").to_string();

    // Node's broadcasts reach the gateways' sockets: a room, everyone (binary too), except.
    for (c, n) in [("g1", 1), ("g2", 0), ("n1", 1), ("n2", 0)] {
        assert_eq!(got(&v, "nodeRoom", c).len(), n, "nodeRoom {c}: {v}");
    }
    for c in ["g1", "g2", "n1", "n2"] {
        assert_eq!(got(&v, "nodeAll", c), [json!([{"bin": [7]}])], "{c}: {v}");
    }
    for (c, n) in [("g1", 0), ("g2", 1), ("n1", 0), ("n2", 1)] {
        assert_eq!(got(&v, "nodeExcept", c).len(), n, "nodeExcept {c}: {v}");
    }

    // The gateways' relays reach Node's sockets: g1's into room r reaches n1 (not the sender,
    // not n2); g2's to the whole namespace reaches g1 (the other node, through the hub, once)
    // and both of Node's.
    for (c, n) in [("g1", 0), ("g2", 0), ("n1", 1), ("n2", 0)] {
        assert_eq!(got(&v, "relayRoom", c).len(), n, "relayRoom {c}: {v}");
    }
    assert_eq!(got(&v, "relayRoom", "n1"), [json!([{"from": "g1"}])]);
    assert!(v["relayAck"]["seq"].as_u64().is_some(), "{v}");
    for (c, n) in [("g1", 1), ("g2", 0), ("n1", 1), ("n2", 1)] {
        assert_eq!(got(&v, "relayAll", c).len(), n, "relayAll {c}: {v}");
    }

    // Node's fetchSockets() has the gateways' sockets, with their rooms and handshake.
    let fetched = v["nodeFetch"].as_array().expect("sockets");
    let mut ids: Vec<String> = fetched
        .iter()
        .map(|f| f["id"].as_str().unwrap_or("").to_string())
        .collect();
    ids.sort();
    let mut want: Vec<String> = ["g1", "g2", "n1", "n2"].iter().map(|c| id(c)).collect();
    want.sort();
    assert_eq!(ids, want, "{v}");
    let g1 = fetched
        .iter()
        .find(|f| f["id"] == id("g1"))
        .expect("g1 fetched");
    let rooms: Vec<&str> = g1["rooms"]
        .as_array()
        .expect("rooms")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(
        rooms.contains(&"r") && rooms.contains(&id("g1").as_str()),
        "{g1}"
    );
    assert_eq!(g1["address"], "127.0.0.1", "{g1}");
    assert_eq!(g1["query"]["name"], "g1", "{g1}");
    let mut in_r: Vec<String> = v["nodeFetchRoom"]
        .as_array()
        .expect("ids")
        .iter()
        .map(|i| i.as_str().unwrap_or("").to_string())
        .collect();
    in_r.sort();
    let mut want_r = vec![id("g1"), id("n1")];
    want_r.sort();
    assert_eq!(in_r, want_r, "{v}");
    // allRooms: the gateways' rooms too (r, and each socket's own).
    let node_rooms = v["nodeRooms"].as_array().expect("rooms");
    for room in ["r".to_string(), id("g1"), id("g2"), id("n1")] {
        assert!(node_rooms.contains(&json!(room)), "{room}: {v}");
    }
    // Node's socketsJoin: r's sockets on every server joined from-node.
    for (c, n) in [("g1", 1), ("g2", 0), ("n1", 1), ("n2", 0)] {
        assert_eq!(got(&v, "nodeJoined", c).len(), n, "nodeJoined {c}: {v}");
    }

    // The gateway's GET /sockets, GET /rooms and POST /sockets/join see and reach Node's.
    assert_eq!(v["gwFetch"]["status"], 200, "{v}");
    let mut gw_ids: Vec<String> = v["gwFetch"]["body"]["sockets"]
        .as_array()
        .expect("sockets")
        .iter()
        .map(|s| s["id"].as_str().unwrap_or("").to_string())
        .collect();
    gw_ids.sort();
    assert_eq!(gw_ids, want, "every server's sockets: {v}");
    let n1 = v["gwFetch"]["body"]["sockets"]
        .as_array()
        .expect("sockets")
        .iter()
        .find(|s| s["id"] == id("n1"))
        .expect("n1")
        .clone();
    assert!(n1["rooms"].as_array().expect("rooms").contains(&json!("r")));
    assert_eq!(n1["handshake"]["query"]["name"], "n1", "{n1}");
    let mut gw_r: Vec<String> = v["gwFetchRoom"]["body"]["sockets"]
        .as_array()
        .expect("sockets")
        .iter()
        .map(|s| s["id"].as_str().unwrap_or("").to_string())
        .collect();
    gw_r.sort();
    assert_eq!(gw_r, want_r, "{v}");
    let gw_rooms = v["gwRooms"]["body"]["rooms"].as_array().expect("rooms");
    for room in ["r".to_string(), "from-node".into(), id("n1"), id("n2")] {
        assert!(gw_rooms.contains(&json!(room)), "{room}: {v}");
    }
    assert_eq!(v["gwJoin"]["status"], 200, "{v}");
    for (c, n) in [("g1", 1), ("g2", 0), ("n1", 1), ("n2", 0)] {
        assert_eq!(got(&v, "gwJoined", c).len(), n, "gwJoined {c}: {v}");
    }

    // Broadcast with acks, both ways: Node's emitWithAck collects the gateways' sockets' acks,
    // the gateway's /emit collects Node's (whose ids the adapter does not carry).
    assert_eq!(
        v["nodeAcks"],
        json!(["g1:1", "g2:1", "n1:1", "n2:1"]),
        "{v}"
    );
    let emit = &v["gwAcks"]["body"];
    assert_eq!(v["gwAcks"]["status"], 200, "{v}");
    assert_eq!(emit["sockets"], 4, "{emit}");
    assert_eq!(emit["failed"], json!([]), "{emit}");
    assert!(emit.get("incomplete").is_none(), "{emit}");
    let mut acks: Vec<(Value, String)> = emit["acks"]
        .as_array()
        .expect("acks")
        .iter()
        .map(|a| {
            (
                a["socket"].clone(),
                a["args"][0].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    acks.sort_by(|x, y| x.1.cmp(&y.1));
    assert_eq!(
        acks,
        [
            (json!(id("g1")), "g1:2".to_string()),
            (Value::Null, "g2:2".to_string()),
            (Value::Null, "n1:2".to_string()),
            (Value::Null, "n2:2".to_string()),
        ],
        "{emit}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_apps_publishes_reach_a_node_peers_sockets_and_its_server_side_questions_are_answered()
{
    let redis = RedisServer::start();
    let gws = fleet(&redis, RELAY).await;
    let v = scenario("app", &redis, "websocket", &gws);
    assert_eq!(v["published"], json!([200, 200]), "{v}");
    // The publish API's messages to topic news, from either gateway, reach room news on every
    // server: g1 on the first gateway, n1 on the Node peer, once each and in order; n2, in no
    // room, gets neither, nor the message to topic other.
    let notes = json!([[{"n": 1}], [{"n": 2}]]);
    assert_eq!(v["notes"]["g1"], notes, "{v}");
    assert_eq!(v["notes"]["n1"], notes, "{v}");
    assert_eq!(v["notes"]["n2"], json!([]), "{v}");
    // /emit on the second gateway: room news's sockets on every server acknowledge.
    let emit = &v["emit"]["body"];
    assert_eq!(v["emit"]["status"], 200, "{v}");
    assert_eq!(emit["sockets"], 2, "{emit}");
    let mut acks: Vec<&str> = emit["acks"]
        .as_array()
        .expect("acks")
        .iter()
        .filter_map(|a| a["args"][0].as_str())
        .collect();
    acks.sort_unstable();
    assert_eq!(acks, ["g1:7", "n1:7"], "{emit}");
    // A Node peer's serverSideEmitWithAck gets an answer from every other server: the other
    // Node peer's, and an empty one from each gateway (which has no server-side handlers),
    // at once rather than after the adapter's 5 s timeout.
    let side = &v["serverSide"];
    assert!(side.get("error").is_none(), "{side}");
    assert_eq!(
        side["answers"],
        json!(["<undefined>", "<undefined>", "listener:5"]),
        "{side}"
    );
    assert!(side["ms"].as_u64().is_some_and(|ms| ms < 4000), "{side}");
}

/// The PHP emitter's `->to('r1')->to('r2')->emit('multi', 'x')`: `[uid, packet, opts]` with
/// both rooms, `flags` an empty PHP array (a MessagePack array), published once per room.
const PHP_MULTI_ROOM: &str = "93 a7 656d6974746572 83 a4 74797065 02 a4 64617461 92 a5 6d756c7469 \
     a1 78 a3 6e7370 a1 2f 82 a5 726f6f6d73 92 a2 7231 a2 7232 a5 666c616773 90";

/// The Ruby/PHP emitters' binary emit: packet type 5 (binary event), the argument as bin.
const PHP_BINARY: &str = "93 a7 656d6974746572 83 a4 74797065 05 a4 64617461 92 a3 626966 \
     c4 03 010203 a3 6e7370 a1 2f 82 a5 726f6f6d73 90 a5 666c616773 90";

/// An emit to all with `flags: []` and no `except`.
const PHP_FLAGS: &str = "93 a7 656d6974746572 83 a4 74797065 02 a4 64617461 92 a7 666c6167676564 \
     01 a3 6e7370 a1 2f 82 a5 726f6f6d73 90 a5 666c616773 90";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ruby_and_php_emitters_quirks_are_tolerated() {
    let redis = RedisServer::start();
    let gws = fleet(&redis, RELAY).await;
    let v = scenario_with("quirks", &redis, &gws, |_| {
        redis.publish_raw("socket.io#/#r1#", &bytes(PHP_MULTI_ROOM));
        redis.publish_raw("socket.io#/#r2#", &bytes(PHP_MULTI_ROOM));
        redis.publish_raw("socket.io#/#", &bytes(PHP_BINARY));
        redis.publish_raw("socket.io#/#", &bytes(PHP_FLAGS));
    });
    // Published once per room: c1, in both rooms, gets it once; c2 once; c3 (in neither) not.
    assert_eq!(got(&v, "multi", "c1"), [json!(["x"])], "{v}");
    assert_eq!(got(&v, "multi", "c2"), [json!(["x"])], "{v}");
    assert!(got(&v, "multi", "c3").is_empty(), "{v}");
    // Type 5 is re-encoded as an event with its attachment; nobody's parser broke.
    for c in ["c1", "c2", "c3"] {
        assert_eq!(
            got(&v, "binary", c),
            [json!([{"bin": [1, 2, 3]}])],
            "{c}: {v}"
        );
        assert_eq!(got(&v, "flags", c), [json!([1])], "{c}: {v}");
    }
    assert_eq!(v["alive"], json!([true, true, true]), "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn laravel_broadcasts_reach_echo_clients_and_the_topic_once_but_not_the_sender() {
    let redis = RedisServer::start();
    // What a laravel-echo-server deployment becomes: the main namespace speaks Echo's protocol.
    let gws = fleet(&redis, ECHO).await;
    let mut sse = Sse::open(&gws[0], "orders", None).await;
    let order =
        |socket: &str| format!(r#"{{"event":"OrderShipped","data":{{"id":1}},"socket":{socket}}}"#);
    let v = scenario_with("laravel", &redis, &gws, |ready| {
        let x = ready["x"].as_str().expect("x's socket id");
        // Echo's subscriptions have no answer: wait until both nodes have them (a: e1 and the
        // SSE stream; b: e2 and x).
        tokio::task::block_in_place(|| {
            tokio::runtime::Handle::current().block_on(async {
                for gw in &gws {
                    wait_subscribers(gw, "orders", 2).await;
                    wait_subscribers(gw, "news-eu", 1).await;
                }
            })
        });
        let to_others = order(&format!("\"{x}\""));
        // The same broadcast twice (two orders shipped alike): two deliveries, not one.
        redis.publish_raw("laravel_database_orders", to_others.as_bytes());
        redis.publish_raw("laravel_database_orders", to_others.as_bytes());
        redis.publish_raw(
            "laravel_database_news-eu",
            br#"{"event":"OrderShipped","data":{"id":2},"socket":null}"#,
        );
        // Neither listed nor under Laravel's prefix: not delivered.
        redis.publish_raw("laravel_database_secret", order("null").as_bytes());
        redis.publish_raw("orders", order("null").as_bytes());
    });
    let orders = json!(["orders", {"id": 1}]);
    let news = json!(["news-eu", {"id": 2}]);
    for c in ["e1", "e2"] {
        assert_eq!(
            v["got"][c],
            json!([orders, orders, news]),
            "{c}, on {}: {v}",
            if c == "e1" { "a" } else { "b" }
        );
    }
    assert_eq!(v["got"]["x"], json!([news]), "toOthers() leaves x out: {v}");
    // The topic of the channel's name gets both, once each, on every transport.
    sse.read_until(2, Duration::from_secs(10)).await;
    sse.read_until(3, Duration::from_millis(500)).await;
    let events: Vec<(String, String)> = sse
        .events
        .iter()
        .map(|e| (e.event.clone(), e.data.clone()))
        .collect();
    // (SSE names events by their topic; the data is the payload's.)
    let data = json!(["orders", {"id": 1}]).to_string();
    assert_eq!(
        events,
        [
            ("orders".to_string(), data.clone()),
            ("orders".to_string(), data)
        ],
        "{:?}",
        sse.events
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_side_emits_reach_the_applications_handler_and_its_answers_go_back() {
    use realtime::cluster::{AdapterConfig, AdapterNode, BackplaneConfig};
    use realtime::socketio::{SocketIo, SocketIoOptions};

    let redis = RedisServer::start();
    // An application on the realtime library: one node of a fleet, with a server-side handler.
    let (hub, backplane) = realtime::cluster::node::start(
        realtime::hub::HubConfig::default(),
        BackplaneConfig::new(redis.url(), "app-1"),
    )
    .expect("starts");
    assert!(backplane.wait_up(Duration::from_secs(10)).await);
    let io = SocketIo::new(hub, SocketIoOptions::default());
    io.namespace("/", |_| std::future::ready(Ok(())));
    let node = AdapterNode::start(&io, &backplane, AdapterConfig::new("socket.io", "app-1"))
        .expect("the server had no peers");
    let heard: Arc<Mutex<Vec<Vec<Value>>>> = Arc::default();
    let h = Arc::clone(&heard);
    node.on_server_side_emit("/", move |args, ack| {
        let question = args.first() == Some(&json!("question"));
        h.lock().unwrap_or_else(|p| p.into_inner()).push(args);
        // Only questions are answered; another event's ack is let go unanswered.
        if let (Some(ack), true) = (ack, question) {
            ack.send(json!({"answer": 42}));
        }
    });
    let v = tokio::task::spawn_blocking(move || {
        let out = Command::new("node")
            .arg(workspace_root().join("tests/js/adapter.mjs"))
            .args(["serverside", &redis.url(), "websocket", "none"])
            .output()
            .expect("run node");
        (e2e::node_result(out, "serverside"), redis)
    })
    .await
    .expect("node ran")
    .0;
    // Node's serverSideEmitWithAck got this server's answer (the only other server).
    assert_eq!(v["answers"], json!([{"answer": 42}]), "{v}");
    // An ack the handler let go is an empty answer (node's `cb()`), sent at once: the Node
    // peer's call does not fail at its timeout.
    assert_eq!(v["unanswered"], json!(["<undefined>"]), "{v}");
    assert!(v["ms"].as_u64().is_some_and(|ms| ms < 4000), "{v}");
    let heard = heard.lock().unwrap_or_else(|p| p.into_inner()).clone();
    assert_eq!(
        heard,
        [
            vec![json!("ping"), json!(1), json!("two")],
            vec![json!("question"), json!(5)],
            vec![json!("unanswered"), json!(6)]
        ]
    );
    backplane.shutdown();
}
