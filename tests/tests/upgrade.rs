//! Deploying a new binary (`gateway upgrade`) and stopping (`SIGTERM`): the listening sockets
//! pass to the new process with no request refused or lost, HTTP requests in flight finish,
//! and realtime clients are told to come back (WebSocket close 1001, Socket.IO reconnects,
//! SSE ends after its `retry:`) instead of being cut.

use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use e2e::fleet::subscribers;
use e2e::sessions::Sessions;
use e2e::{client, eventually, websocket, Gateway, Stub};
use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;

fn config(app: &Stub) -> String {
    format!(
        r#"
listen: {{https: "{{https}}", admin: "{{admin}}"}}
tls: {{state_dir: state}}
grace_period_s: 3
realtime:
  sse: {{heartbeat_ms: 5000, retry_ms: 500}}
  socketio:
    max_sessions_per_client: 5000
    namespaces:
      "/": {{client_rooms: true}}
upstreams:
  app:
    servers: ["{app}"]
routes:
  - {{path: /socket.io/, realtime: socketio}}
  - {{path: /ws, realtime: websocket}}
  - {{path: /events, realtime: sse}}
  - {{path: /, upstream: app}}
"#,
        app = app.addr
    )
}

/// The close frame `ws` gets next (pings and other messages skipped).
async fn close_code<S>(ws: &mut S) -> Option<CloseCode>
where
    S: futures_util::Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin,
{
    loop {
        match tokio::time::timeout(Duration::from_secs(10), ws.next()).await {
            Ok(Some(Ok(Message::Close(frame)))) => return frame.map(|f| f.code),
            Ok(Some(Ok(_))) => continue,
            _ => return None,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_finishes_requests_in_flight_and_tells_realtime_clients_to_come_back() {
    let app = Stub::start("app");
    let mut gw = Gateway::start(&config(&app));
    let base = format!("wss://127.0.0.1:{}", gw.ports.https);

    // A `/ws` subscriber, a Socket.IO session on a WebSocket, an SSE stream, and a slow
    // request to the app.
    let (mut ws, _) = websocket(&format!("{base}/ws"), Some("pubsub.v1"))
        .await
        .expect("ws");
    ws.send(Message::text(
        json!({"op": "subscribe", "topic": "t"}).to_string(),
    ))
    .await
    .expect("subscribe");
    let (mut eio, _) = websocket(
        &format!("{base}/socket.io/?EIO=4&transport=websocket"),
        None,
    )
    .await
    .expect("engine.io");
    let open = eio.next().await.expect("open").expect("frame");
    assert!(open.to_text().expect("text").starts_with('0'), "{open:?}");
    eio.send(Message::text("40")).await.expect("connect");
    let connected = eio.next().await.expect("connect").expect("frame");
    assert!(
        connected.to_text().expect("text").starts_with("40"),
        "{connected:?}"
    );
    let mut sse = client()
        .get(gw.https("/events?topic=t"))
        .send()
        .await
        .expect("sse");
    let first = sse.chunk().await.expect("chunk").expect("bytes");
    assert!(
        String::from_utf8_lossy(&first).contains("retry: 500"),
        "{first:?}"
    );
    let slow = tokio::spawn({
        let url = gw.https("/sleep/1500");
        async move { client().get(url).send().await }
    });
    // A kept-alive HTTP/1 connection, idle when the stop comes.
    let kept = e2e::client_builder().http1_only().build().expect("client");
    let first = kept.get(gw.https("/echo")).send().await.expect("request");
    assert_eq!(first.headers()["connection"], "keep-alive");
    tokio::time::sleep(Duration::from_millis(300)).await;

    let stopped = Instant::now();
    gw.proc.signal(15);
    // The next request on it, sent after the listeners stopped, is answered (not cut with the
    // idle connections), and told the connection ends.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let next = kept
        .get(gw.https("/echo"))
        .send()
        .await
        .expect("a request on a kept-alive connection is answered during the stop");
    assert_eq!(next.status(), 200);
    assert_eq!(next.headers()["connection"], "close");
    assert_eq!(
        close_code(&mut ws).await,
        Some(CloseCode::Away),
        "/ws is closed with 1001"
    );
    assert_eq!(
        close_code(&mut eio).await,
        Some(CloseCode::Away),
        "the Engine.IO WebSocket is closed with 1001, which Socket.IO clients reconnect after"
    );
    let rest = tokio::time::timeout(Duration::from_secs(5), async {
        while let Ok(Some(_)) = sse.chunk().await {}
    })
    .await;
    assert!(rest.is_ok(), "the SSE stream ends");
    let slow = slow
        .await
        .expect("join")
        .expect("the slow request finished");
    assert_eq!(slow.status(), 200);
    let status = gw
        .proc
        .wait_exit(Duration::from_secs(15))
        .expect("the gateway exits");
    assert!(status.success(), "{status:?}");
    assert!(
        stopped.elapsed() < Duration::from_secs(12),
        "{:?}",
        stopped.elapsed()
    );
}

/// HTTP requests sent all through an upgrade by four workers: two on kept-alive connections,
/// two on a new connection per request.
struct HttpLoad {
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicUsize>,
    failures: Arc<std::sync::Mutex<Vec<String>>>,
    workers: Vec<tokio::task::JoinHandle<()>>,
}

impl HttpLoad {
    fn start(gw: &Gateway) -> HttpLoad {
        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicUsize::new(0));
        let failures = Arc::new(std::sync::Mutex::new(Vec::new()));
        let workers = (0..4)
            .map(|i| {
                let (stop, sent, failures) = (stop.clone(), sent.clone(), failures.clone());
                let url = gw.https("/echo");
                tokio::spawn(async move {
                    let keep_alive = client();
                    while !stop.load(Ordering::Relaxed) {
                        let c = if i % 2 == 0 {
                            keep_alive.clone()
                        } else {
                            e2e::client_builder()
                                .http1_only()
                                .pool_max_idle_per_host(0)
                                .build()
                                .expect("client")
                        };
                        sent.fetch_add(1, Ordering::Relaxed);
                        match c.get(&url).send().await {
                            Ok(r) if r.status() == 200 => {}
                            other => failures.lock().expect("lock").push(format!("{other:?}")),
                        }
                    }
                })
            })
            .collect();
        HttpLoad {
            stop,
            sent,
            failures,
            workers,
        }
    }

    /// Stops the workers and asserts that every request was answered 200.
    async fn stop_and_check(self, upgrade_log: &str) {
        self.stop.store(true, Ordering::Relaxed);
        for w in self.workers {
            w.await.expect("load worker");
        }
        let sent = self.sent.load(Ordering::Relaxed);
        let failures = self.failures.lock().expect("lock");
        assert!(sent > 50, "{sent} requests sent");
        assert!(
            failures.is_empty(),
            "{} of {sent} requests failed: {:?}\n{upgrade_log}",
            failures.len(),
            failures.iter().take(5).collect::<Vec<_>>(),
        );
    }
}

/// Kills the new process an upgrade started (the test harness only knows the old one).
struct Started(u32);

impl Drop for Started {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-9", &self.0.to_string()])
            .status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_upgrade_under_load_refuses_no_request_and_socketio_clients_come_back() {
    const SOCKETS: usize = 50;
    let app = Stub::start("app");
    let mut gw = Gateway::start(&config(&app));
    let old_pid = gw.proc.pid();

    let sessions = Sessions::start(&gw.https(""), SOCKETS, "news", "1", "websocket,polling").await;

    // Requests all through the upgrade: on kept-alive connections and on new ones.
    let load = HttpLoad::start(&gw);
    tokio::time::sleep(Duration::from_millis(500)).await;

    let log = std::fs::File::create(gw.dir.path().join("upgrade.log")).expect("log");
    let out = Command::new(e2e::binary("gateway"))
        .args(["upgrade", "--config", "gateway.yaml"])
        .current_dir(gw.dir.path())
        .stdout(log.try_clone().expect("log"))
        .stderr(log)
        .status()
        .expect("gateway upgrade");
    let upgrade_log =
        || std::fs::read_to_string(gw.dir.path().join("upgrade.log")).unwrap_or_default();
    assert!(out.success(), "{}", upgrade_log());
    let pid_file = gw.dir.path().join("state/gateway.pid");
    let new_pid: u32 = std::fs::read_to_string(&pid_file)
        .expect("pid file")
        .trim()
        .parse()
        .expect("a pid");
    let _new = Started(new_pid);
    assert_ne!(new_pid, old_pid);
    assert!(
        upgrade_log().contains(&format!("upgraded: process {new_pid} serves")),
        "{}",
        upgrade_log()
    );

    // The old process drains and exits; requests go on against the new one meanwhile.
    let exited = gw.proc.wait_exit(Duration::from_secs(20));
    assert!(
        exited.is_some_and(|s| s.success()),
        "old process: {exited:?}"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    load.stop_and_check(&upgrade_log()).await;

    // Every Socket.IO client was told to come back, came back to the new process, and hears
    // what is published there.
    assert!(
        eventually(Duration::from_secs(30), || async {
            subscribers(&gw, "news").await as usize >= 2 * SOCKETS
        })
        .await,
        "subscribers on the new process: {}",
        subscribers(&gw, "news").await
    );
    let r = client()
        .post(gw.admin("/publish"))
        .json(&json!({"topic": "news", "event": "note", "data": 0}))
        .send()
        .await
        .expect("publish");
    assert_eq!(r.status(), 200);
    let v = sessions.report().await;
    for mode in ["websocket", "polling"] {
        assert_eq!(v[mode]["got"], SOCKETS, "{mode}: {v}");
        assert!(
            v[mode]["disconnects"].as_u64() >= Some(SOCKETS as u64),
            "{mode}: every session was told to come back: {v}"
        );
    }
}

#[tokio::test]
async fn reload_after_installing_a_new_binary_upgrades_to_it() {
    // The gateway runs from an installed copy, as from /usr/local/bin.
    let app = Stub::start("app");
    let dir = e2e::Scratch::new("installed");
    let installed = dir.path().join("gateway");
    std::fs::copy(e2e::binary("gateway"), &installed).expect("install");
    let ports = e2e::Ports::new();
    std::fs::write(
        dir.path().join("gateway.yaml"),
        e2e::fill(&config(&app), &ports),
    )
    .expect("config");
    let mut old = e2e::Proc::spawn(
        "gateway (installed)",
        &installed,
        &["run", "--config", "gateway.yaml"],
        dir.path(),
    );
    old.wait_for_port(([127, 0, 0, 1], ports.https).into());
    let pid_file = dir.path().join("state/gateway.pid");
    assert!(
        eventually(Duration::from_secs(5), || async { pid_file.exists() }).await,
        "pid file"
    );

    // The same file reloaded: a reload, the process stays.
    let reload = || {
        let log = dir.path().join("reload.log");
        let f = std::fs::File::create(&log).expect("log");
        let ok = Command::new(&installed)
            .args(["reload", "--config", "gateway.yaml"])
            .current_dir(dir.path())
            .stdout(f.try_clone().expect("log"))
            .stderr(f)
            .status()
            .expect("gateway reload")
            .success();
        (ok, std::fs::read_to_string(log).unwrap_or_default())
    };
    let (ok, out) = reload();
    assert!(ok && out.starts_with("reloaded"), "{out}");

    // A new version is installed the way package managers do it (a new file renamed over the
    // old one): the same command now upgrades to it.
    let staged = dir.path().join("gateway.new");
    std::fs::copy(e2e::binary("gateway"), &staged).expect("stage");
    std::fs::rename(&staged, &installed).expect("install");
    let (ok, out) = reload();
    assert!(
        ok && out.contains("upgrading") && out.contains("upgraded: process"),
        "{out}\n{}",
        old.logs()
    );
    let new_pid: u32 = std::fs::read_to_string(&pid_file)
        .expect("pid")
        .trim()
        .parse()
        .expect("pid");
    let _new = Started(new_pid);
    assert_ne!(new_pid, old.pid());
    assert!(
        old.wait_exit(Duration::from_secs(20)).is_some(),
        "the old process exits"
    );
    let r = client()
        .get(format!("https://127.0.0.1:{}/echo", ports.https))
        .send()
        .await
        .expect("the new process serves");
    assert_eq!(r.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_upgrade_under_load_with_the_history_in_redis_refuses_no_request_and_every_socketio_client_resumes(
) {
    const SOCKETS: usize = 50;
    let redis = e2e::redis::RedisServer::start();
    let app = Stub::start("app");
    // A fleet of one: the topics' history and the Socket.IO sessions are in Redis, where the
    // new process finds them.
    let yaml = config(&app)
        .replace(
            "grace_period_s: 3\n",
            &format!(
                "grace_period_s: 3\ncluster: {{redis: \"redis://127.0.0.1:{}/0\"}}\n",
                redis.port
            ),
        )
        .replace(
            "    max_sessions_per_client: 5000\n",
            "    max_sessions_per_client: 5000\n    recovery: {max_disconnection_ms: 60000}\n",
        );
    let mut gw = Gateway::start(&yaml);
    let mut sessions =
        Sessions::start(&gw.https(""), SOCKETS, "news", "stdin", "websocket,polling").await;

    // The app publishes numbered notes every 50 ms through the whole upgrade.
    let stop = Arc::new(AtomicBool::new(false));
    let count = Arc::new(AtomicUsize::new(0));
    let publisher = tokio::spawn({
        let (stop, count, url) = (stop.clone(), count.clone(), gw.admin("/publish"));
        async move {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let sent = client()
                    .post(&url)
                    .json(&json!({"topic": "news", "event": "note", "data": n}))
                    .send()
                    .await;
                // A publish the hand-over interrupted is sent again with the same number.
                if sent.is_ok_and(|r| r.status() == 200) {
                    n += 1;
                    count.store(n as usize, Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            n
        }
    });
    let load = HttpLoad::start(&gw);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = count.load(Ordering::Relaxed);
    let log = std::fs::File::create(gw.dir.path().join("upgrade.log")).expect("log");
    let ok = Command::new(e2e::binary("gateway"))
        .args(["upgrade", "--config", "gateway.yaml"])
        .current_dir(gw.dir.path())
        .stdout(log.try_clone().expect("log"))
        .stderr(log)
        .status()
        .expect("gateway upgrade")
        .success();
    let upgrade_log =
        || std::fs::read_to_string(gw.dir.path().join("upgrade.log")).unwrap_or_default();
    assert!(ok, "{}", upgrade_log());
    let new_pid: u32 = std::fs::read_to_string(gw.dir.path().join("state/gateway.pid"))
        .expect("pid")
        .trim()
        .parse()
        .expect("pid");
    let _new = Started(new_pid);
    assert!(
        gw.proc.wait_exit(Duration::from_secs(20)).is_some(),
        "the old process drains and exits"
    );
    let during = count.load(Ordering::Relaxed) - before;
    tokio::time::sleep(Duration::from_secs(2)).await;
    load.stop_and_check(&upgrade_log()).await;
    stop.store(true, Ordering::Relaxed);
    let published = publisher.await.expect("publisher");
    sessions.tell_notes(published);
    let v = sessions.report().await;
    assert!(during >= 10, "{during} notes published during the upgrade");
    // On both transports. A polling client may be sent back more than once: for 5 s both
    // processes accept, and a poll of a session the new process holds can reach the old one;
    // it comes back again with its session's pid and takes that session over.
    for mode in ["websocket", "polling"] {
        assert_eq!(
            v[mode]["got"], SOCKETS,
            "{mode}: every session got all {published} notes once, in order: {v}"
        );
        assert_eq!(v[mode]["wrong"], 0, "{mode}: {v}");
        assert_eq!(v[mode]["fresh"], 0, "{mode}: {v}\n{}", upgrade_log());
        assert_eq!(
            v[mode]["recovered"],
            SOCKETS,
            "{mode}: {v}\n{}",
            upgrade_log()
        );
    }
}
