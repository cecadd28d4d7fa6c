//! Keep-alive connections to the app: one upstream connection carries a client's sequential
//! requests, and one the app closes while it sits idle in the gateway's pool is neither reused
//! nor left half-open (the pool's checks and its sweep, vendor/keepalive-pool.patch.md).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use e2e::{client, eventually, Gateway, Stub};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

fn config(server: SocketAddr) -> String {
    format!(
        r#"
listen: {{https: "{{https}}", admin: "{{admin}}"}}
tls: {{state_dir: state}}
upstreams:
  app:
    servers: [{server}]
    connect_timeout_ms: 1000
    read_timeout_ms: 3000
routes:
  - {{path: /, upstream: app}}
"#
    )
}

/// The app's address for each request `/__log` lists whose path is `path`.
async fn peers_of(stub: &Stub, path: &str) -> Vec<String> {
    stub.received()
        .await
        .iter()
        .filter(|e| e["path"] == path)
        .map(|e| e["peer"].as_str().expect("peer").to_string())
        .collect()
}

#[tokio::test]
async fn sequential_requests_reach_the_app_over_one_upstream_connection() {
    let app = Stub::start("a");
    let gw = Gateway::start(&config(app.addr));
    let c = client();
    for i in 0..20 {
        let resp = c
            .get(gw.https(&format!("/echo/seq?i={i}")))
            .send()
            .await
            .expect("get");
        assert_eq!(resp.status(), 200, "request {i}");
        resp.bytes().await.expect("body");
    }
    let peers = peers_of(&app, "/echo/seq").await;
    assert_eq!(peers.len(), 20, "{peers:?}");
    assert!(
        peers.iter().all(|p| *p == peers[0]),
        "every request after the first reuses the first upstream connection: {peers:?}"
    );
}

/// An HTTP/1.1 app server that numbers its connections, answers every request with its
/// connection's number (`X-Conn`) and keeps the connection alive, but half-closes one that
/// stays idle for `idle` (as Node's `keepAliveTimeout` or Puma's `persistent_timeout` do),
/// then waits for the other side to close its end as well and notes how long that took.
struct IdleClosingApp {
    addr: SocketAddr,
    accepted: Arc<Mutex<usize>>,
    /// (connection number, time from our FIN to the gateway's close)
    closed_by_gateway: Arc<Mutex<Vec<(usize, Duration)>>>,
}

impl IdleClosingApp {
    async fn start(idle: Duration) -> IdleClosingApp {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let accepted = Arc::new(Mutex::new(0));
        let closed_by_gateway = Arc::new(Mutex::new(Vec::new()));
        let (count, closed) = (accepted.clone(), closed_by_gateway.clone());
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let n = {
                    let mut count = count.lock().expect("count");
                    *count += 1;
                    *count
                };
                tokio::spawn(serve(stream, n, idle, closed.clone()));
            }
        });
        IdleClosingApp {
            addr,
            accepted,
            closed_by_gateway,
        }
    }

    fn accepted(&self) -> usize {
        *self.accepted.lock().expect("count")
    }

    fn closed_by_gateway(&self) -> Vec<(usize, Duration)> {
        self.closed_by_gateway.lock().expect("closed").clone()
    }
}

async fn serve(
    mut stream: TcpStream,
    n: usize,
    idle: Duration,
    closed: Arc<Mutex<Vec<(usize, Duration)>>>,
) {
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout(idle, stream.read(&mut buf)).await {
            Err(_) => break,                  // idle: close our side below
            Ok(Ok(0)) | Ok(Err(_)) => return, // the gateway closed first
            Ok(Ok(read)) => head.extend_from_slice(&buf[..read]),
        }
        // GET requests only: a head ends the request
        while let Some(end) = head.windows(4).position(|w| w == b"\r\n\r\n") {
            head.drain(..end + 4);
            let answer = format!(
                "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-Conn: {n}\r\nConnection: keep-alive\r\n\r\nok"
            );
            if stream.write_all(answer.as_bytes()).await.is_err() {
                return;
            }
        }
    }
    if stream.shutdown().await.is_err() {
        return;
    }
    let fin = Instant::now();
    // Whatever still arrives is drained; EOF or a reset means the gateway closed its end.
    let gone = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    if gone.is_ok() {
        closed.lock().expect("closed").push((n, fin.elapsed()));
    }
}

async fn conn_of(resp: reqwest::Response) -> String {
    assert_eq!(resp.status(), 200);
    let conn = resp.headers()["x-conn"]
        .to_str()
        .expect("x-conn")
        .to_string();
    assert_eq!(resp.text().await.expect("body"), "ok");
    conn
}

#[tokio::test]
async fn a_connection_the_app_closed_while_idle_is_not_reused() {
    let app = IdleClosingApp::start(Duration::from_millis(300)).await;
    let gw = Gateway::start(&config(app.addr));
    let c = client();

    assert_eq!(
        conn_of(c.get(gw.https("/a")).send().await.expect("get")).await,
        "1"
    );
    assert_eq!(
        conn_of(c.get(gw.https("/b")).send().await.expect("get")).await,
        "1"
    );
    // The app closes connection 1 after 300 ms of idleness; the next request must not be
    // sent into it (that would fail or be retried), it goes over a new one.
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(
        conn_of(c.get(gw.https("/c")).send().await.expect("get")).await,
        "2"
    );
    assert_eq!(app.accepted(), 2);
    assert!(
        eventually(Duration::from_secs(5), || async {
            app.closed_by_gateway().iter().any(|(n, _)| *n == 1)
        })
        .await,
        "the gateway closed its end of connection 1: {:?}",
        app.closed_by_gateway()
    );
}

#[tokio::test]
async fn a_connection_the_app_closed_while_idle_is_closed_without_another_request() {
    let app = IdleClosingApp::start(Duration::from_millis(200)).await;
    let gw = Gateway::start(&config(app.addr));
    let c = client();

    assert_eq!(
        conn_of(c.get(gw.https("/a")).send().await.expect("get")).await,
        "1"
    );
    // No further request: the pool's sweep must close the gateway's end (no CLOSE_WAIT
    // socket left until the idle timeout), within its period of 1 s plus slack.
    assert!(
        eventually(Duration::from_secs(5), || async {
            !app.closed_by_gateway().is_empty()
        })
        .await,
        "the gateway never closed its end of the connection the app closed"
    );
    let closed = app.closed_by_gateway();
    assert_eq!(closed.len(), 1, "{closed:?}");
    assert!(closed[0].1 < Duration::from_secs(3), "{closed:?}");
}
