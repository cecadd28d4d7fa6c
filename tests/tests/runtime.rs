//! The runtime's shape (`threads`, `work_stealing`): whether each thread has a runtime of its
//! own (nginx's one worker per core, the default) or the threads share one that steals work
//! (pingora's default), an operator gets the same gateway: the app behind it, keep-alive, the
//! realtime services and a clean stop.

use std::time::Duration;

use e2e::fleet::{publish_api, pubsub, ws_next, ws_subscribe};
use e2e::{client_builder, Gateway, Stub};
use serde_json::json;

fn config(app: &Stub, work_stealing: bool) -> String {
    format!(
        r#"
listen: {{https: "{{https}}", admin: "{{admin}}"}}
tls: {{state_dir: state}}
threads: 2
work_stealing: {work_stealing}
upstreams:
  app: {{servers: ["{}"]}}
routes:
  - {{path: /ws, realtime: websocket}}
  - {{path: /, upstream: app}}
"#,
        app.addr
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_runtime_per_thread_serves_the_app_and_the_realtime_services() {
    serves_the_app_and_the_realtime_services(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_shared_work_stealing_runtime_serves_the_app_and_the_realtime_services() {
    serves_the_app_and_the_realtime_services(true).await;
}

async fn serves_the_app_and_the_realtime_services(work_stealing: bool) {
    let app = Stub::start("app");
    let mut gw = Gateway::start(&config(&app, work_stealing));

    // Many clients at once, each on its own kept-alive connection: whichever thread took a
    // connection serves all of its requests.
    let clients: Vec<_> = (0..32)
        .map(|_| {
            let c = client_builder().build().expect("client");
            let url = gw.https("/ping");
            tokio::spawn(async move {
                let mut statuses = Vec::new();
                for _ in 0..5 {
                    let r = c.get(&url).send().await.expect("get");
                    statuses.push(r.status().as_u16());
                    r.bytes().await.expect("body");
                }
                statuses
            })
        })
        .collect();
    for c in clients {
        assert_eq!(c.await.expect("client"), [200; 5]);
    }

    // A realtime session on one thread hears a publish taken on another.
    let mut ws = pubsub(&gw).await;
    let answer = ws_subscribe(&mut ws, "news", None).await;
    assert_eq!(answer["op"], "subscribed", "{answer}");
    let (status, body) = publish_api(&gw, "news", json!({"hello": "threads"})).await;
    assert_eq!(status, 200, "{body}");
    let msg = ws_next(&mut ws, Duration::from_secs(5))
        .await
        .expect("the published message");
    assert_eq!(msg["data"], json!({"hello": "threads"}), "{msg}");

    // A stop is as clean as with one shared runtime.
    gw.proc.signal(15); // SIGTERM
    let status = gw
        .proc
        .wait_exit(Duration::from_secs(10))
        .expect("exits within the grace period");
    assert!(status.success(), "{status:?}\n{}", gw.proc.logs());
}
