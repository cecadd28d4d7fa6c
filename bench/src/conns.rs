//! `rt-load conns`: as many idle realtime connections as the machine allows (bench/connections.sh).
//!
//! Opens connections of one KIND to one gateway, over TLS with `--tls`, from the loopback source
//! addresses of `--sources`, up to cumulative totals (`--steps`), and keeps every one alive the
//! way its client would:
//! * `sio-ws`: Socket.IO over WebSocket, connected to "/", pings `2` answered `3`;
//! * `sio-polling`: Socket.IO over Engine.IO long-polling, one GET always held; a ping in an
//!   answer is answered by a POST `3` on the same connection, then the next GET (one descriptor
//!   per client, where a browser would use two);
//! * `ws`: `/ws` with subprotocol `pubsub.v1`, subscribed to `--topic` (WebSocket pings are
//!   answered by the WebSocket library);
//! * `sse`: `GET /events?topic=<topic>`, the stream held;
//! * `longpoll`: `GET /s?t=<topic>`, re-polled with `since=<X-Position>` after each answer, so
//!   nothing published between two polls is missed.
//!
//! A fixed `Host: localhost` and no `Origin` are sent, like a native client.
//!
//! The totals are shared by `--workers` processes (a process may open only so many files): each
//! opens its share (`share`) and they meet at barrier files in `--sync-dir`. Worker 0 is the
//! coordinator: at each step it reads the server's memory (Rss, Pss from /proc) and CPU
//! (utime+stime, descendants included) while every worker opens its share (connects/s, CPU per
//! connect) and then while all connections sit idle for `--hold-secs` (CPU per connection per
//! minute), and the server's own count of open connections of the kind (the admin listener's
//! `gateway_open_connections`). After the last step it makes ONE publish that every
//! connection hears (the admin listener's `POST /publish` to the topic; Socket.IO: `POST /emit`
//! to the whole namespace, which every socket acknowledges) carrying its send time (wall clock,
//! microseconds: the workers are other processes), and every worker records when each of its
//! connections received it. The coordinator merges them: latency p50/p90/p99/max and
//! lost = expected (connections alive at the publish) - got. Its last stdout line is one JSON
//! object with every figure; the other workers print their own counts.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context};
use clap::ValueEnum;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_rustls::TlsConnector;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;

use super::{
    error_kinds, pct, server_mem, server_ticks, tls_connector, Conn, Head, Io, Net, SioTarget,
    CLK_TCK,
};

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq, Debug)]
pub enum ConnKind {
    SioWs,
    SioPolling,
    Ws,
    Sse,
    Longpoll,
}

impl ConnKind {
    fn name(self) -> &'static str {
        match self {
            ConnKind::SioWs => "sio-ws",
            ConnKind::SioPolling => "sio-polling",
            ConnKind::Ws => "ws",
            ConnKind::Sse => "sse",
            ConnKind::Longpoll => "longpoll",
        }
    }

    /// The `kind` label of the gateway's `gateway_open_connections` for these connections.
    fn metric_kind(self) -> &'static str {
        match self {
            ConnKind::SioWs => "socketio_websocket",
            ConnKind::SioPolling => "socketio_polling",
            ConnKind::Ws => "ws",
            ConnKind::Sse => "sse",
            ConnKind::Longpoll => "longpoll",
        }
    }
}

#[derive(clap::Args)]
pub struct ConnsArgs {
    #[arg(long, value_enum)]
    kind: ConnKind,
    /// IP:PORT of the gateway's listener (paths /socket.io/, /ws, /events, /s).
    #[arg(long)]
    addr: SocketAddr,
    /// Speak TLS to `addr`; the admin listener stays plain HTTP.
    #[arg(long)]
    tls: bool,
    /// IP:PORT of the gateway's admin listener (the publish, the server's connection count).
    #[arg(long)]
    admin: SocketAddr,
    /// The hub topic of `ws`, `sse` and `longpoll` (Socket.IO: the whole namespace "/").
    #[arg(long, default_value = "conns")]
    topic: String,
    /// Cumulative totals over all workers at which the server is measured.
    #[arg(long, value_delimiter = ',', required = true)]
    steps: Vec<usize>,
    /// Seconds every connection sits idle after each step, before memory is read.
    #[arg(long, default_value_t = 30)]
    hold_secs: u64,
    /// This process's index among `--workers` (0 coordinates).
    #[arg(long, default_value_t = 0)]
    worker: usize,
    #[arg(long, default_value_t = 1)]
    workers: usize,
    /// Where the workers meet (barrier files); a temporary one for a single process.
    #[arg(long)]
    sync_dir: Option<PathBuf>,
    /// Hard limit for opening one step's connections (all workers), seconds.
    #[arg(long, default_value_t = 300)]
    step_secs: u64,
    /// How long the connections have to receive the publish, seconds.
    #[arg(long, default_value_t = 60)]
    publish_wait_secs: u64,
}

// ---------------------------------------------------------------------------------------------
// pure parts

/// Connections worker `i` of `n` holds when the total is `total`: an even split, the first
/// `total % n` workers one more.
fn share(total: usize, i: usize, n: usize) -> usize {
    let n = n.max(1);
    total / n + usize::from(i < total % n)
}

/// The send time a publish carries (`"sent_us":<digits>`), wherever the transport put the
/// message's data.
fn sent_us(text: &str) -> Option<u64> {
    const KEY: &str = "\"sent_us\":";
    let rest = &text[text.find(KEY)? + KEY.len()..];
    let rest = rest.trim_start();
    let end = rest
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(rest.len());
    rest[..end].parse().ok()
}

/// The ack id of a Socket.IO EVENT on namespace "/" that asks for one (`42<id>[...]`).
fn sio_ack_id(packet: &str) -> Option<&str> {
    let rest = packet.strip_prefix("42")?;
    let end = rest.find('[')?;
    let id = &rest[..end];
    (!id.is_empty() && id.bytes().all(|b| b.is_ascii_digit())).then_some(id)
}

/// The Engine.IO packets of a polling answer (v4: separated by the record separator 0x1e).
fn eio_packets(body: &str) -> impl Iterator<Item = &str> {
    body.split('\u{1e}').filter(|p| !p.is_empty())
}

/// The session id of an Engine.IO OPEN packet (`0{"sid":"...",...}`).
fn eio_sid(packet: &str) -> Option<String> {
    let v: Value = serde_json::from_str(packet.strip_prefix('0')?).ok()?;
    v["sid"].as_str().map(str::to_string)
}

/// The value of `gateway_open_connections{kind="<kind>"}` in the Prometheus text.
fn open_connections(metrics: &str, kind: &str) -> Option<u64> {
    let label = format!("kind=\"{kind}\"");
    metrics
        .lines()
        .filter(|l| l.starts_with("gateway_open_connections{") && l.contains(&label))
        .find_map(|l| l.split_whitespace().last()?.parse::<f64>().ok())
        .map(|v| v as u64)
}

/// A straight line through (x, y) by least squares: (intercept, slope). None below two
/// distinct x.
fn fit_line(points: &[(f64, f64)]) -> Option<(f64, f64)> {
    if points.len() < 2 {
        return None;
    }
    let n = points.len() as f64;
    let mx = points.iter().map(|p| p.0).sum::<f64>() / n;
    let my = points.iter().map(|p| p.1).sum::<f64>() / n;
    let sxx: f64 = points.iter().map(|p| (p.0 - mx) * (p.0 - mx)).sum();
    if sxx <= 0.0 {
        return None;
    }
    let sxy: f64 = points.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum();
    let slope = sxy / sxx;
    Some((my - slope * mx, slope))
}

fn wall_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

// ---------------------------------------------------------------------------------------------
// what one worker's connections share

#[derive(Default)]
struct Held {
    opened: AtomicUsize,
    failed: AtomicUsize,
    closed: AtomicUsize,
    reconnects: AtomicU64,
    got: AtomicUsize,
    duplicates: AtomicU64,
    /// Microseconds from the publish's send time to each connection's receipt.
    lat_us: Mutex<Vec<u32>>,
    errors: Mutex<Vec<String>>,
}

impl Held {
    /// A message that may be the publish; `seen` is the connection's own record.
    fn message(&self, text: &str, seen: &mut bool) {
        let Some(sent) = sent_us(text) else { return };
        if *seen {
            self.duplicates.fetch_add(1, Ordering::Relaxed);
            return;
        }
        *seen = true;
        let lat = wall_us().saturating_sub(sent).min(u32::MAX as u64) as u32;
        if let Ok(mut l) = self.lat_us.lock() {
            l.push(lat);
        }
        self.got.fetch_add(1, Ordering::Relaxed);
    }

    fn error(&self, e: impl std::fmt::Display) {
        if let Ok(mut v) = self.errors.lock() {
            if v.len() < 10_000 {
                v.push(e.to_string());
            }
        }
    }

    fn alive(&self) -> usize {
        self.opened
            .load(Ordering::Relaxed)
            .saturating_sub(self.closed.load(Ordering::Relaxed))
    }
}

struct Target {
    kind: ConnKind,
    addr: SocketAddr,
    tls: Option<TlsConnector>,
    topic: String,
    sio: Option<SioTarget>,
}

/// One connection's life: open it (the permit paces opening), count it, keep it alive until
/// the process ends. Everything that goes wrong is counted, nothing panics.
async fn hold(t: Arc<Target>, net: Arc<Net>, held: Arc<Held>, permit: OwnedSemaphorePermit) {
    let res = match t.kind {
        ConnKind::SioWs => hold_sio_ws(&t, &net, &held, permit).await,
        ConnKind::SioPolling => hold_sio_polling(&t, &net, &held, permit).await,
        ConnKind::Ws => hold_ws(&t, &net, &held, permit).await,
        ConnKind::Sse => hold_sse(&t, &net, &held, permit).await,
        ConnKind::Longpoll => hold_longpoll(&t, &net, &held, permit).await,
    };
    match res {
        // Opened, then lost.
        Ok(()) => {
            held.closed.fetch_add(1, Ordering::Relaxed);
        }
        Err(e) => {
            held.failed.fetch_add(1, Ordering::Relaxed);
            held.error(format!("{e:#}"));
        }
    }
}

/// Counts the connection as opened and lets the next one start.
fn opened(held: &Held, permit: OwnedSemaphorePermit) {
    held.opened.fetch_add(1, Ordering::Relaxed);
    drop(permit);
}

async fn hold_sio_ws(
    t: &Target,
    net: &Net,
    held: &Held,
    permit: OwnedSemaphorePermit,
) -> anyhow::Result<()> {
    let sio = t
        .sio
        .as_ref()
        .ok_or_else(|| anyhow!("no Socket.IO target"))?;
    let mut ws = sio.connect(net).await?;
    opened(held, permit);
    let mut seen = false;
    while let Some(Ok(m)) = ws.next().await {
        let Message::Text(text) = m else { continue };
        let text = text.as_str();
        if text == "2" {
            if ws.send(Message::text("3")).await.is_err() {
                break;
            }
        } else if text.starts_with("42") {
            held.message(text, &mut seen);
            if let Some(id) = sio_ack_id(text) {
                if ws.send(Message::text(format!("43{id}[]"))).await.is_err() {
                    break;
                }
            }
        } else if text.starts_with('1') {
            break;
        }
    }
    Ok(())
}

/// Requests one after the other on one keep-alive connection, reopened when the server
/// closes it (counted as a reconnect).
struct Poller<'a> {
    t: &'a Target,
    net: &'a Net,
    held: &'a Held,
    conn: Option<Conn>,
}

impl Poller<'_> {
    async fn send(&mut self, req: &str) -> anyhow::Result<()> {
        if self.conn.is_none() {
            self.conn = Some(Conn::open(self.net, self.t.addr, self.t.tls.as_ref()).await?);
        }
        let c = self.conn.as_mut().ok_or_else(|| anyhow!("no connection"))?;
        c.send(req.as_bytes()).await?;
        Ok(())
    }

    async fn recv(&mut self) -> anyhow::Result<(Head, Vec<u8>)> {
        let c = self.conn.as_mut().ok_or_else(|| anyhow!("no connection"))?;
        let head = c.head().await?;
        let body = c.body(&head).await?;
        if head.close {
            self.conn = None;
        }
        Ok((head, body))
    }

    /// One request and its answer; a reused connection the server has closed meanwhile is
    /// reopened once.
    async fn request(&mut self, req: &str) -> anyhow::Result<(Head, Vec<u8>)> {
        let reused = self.conn.is_some();
        let first = async {
            self.send(req).await?;
            self.recv().await
        }
        .await;
        match first {
            Ok(x) => Ok(x),
            Err(_) if reused => {
                self.conn = None;
                self.held.reconnects.fetch_add(1, Ordering::Relaxed);
                self.send(req).await?;
                self.recv().await
            }
            Err(e) => Err(e),
        }
    }
}

fn get(path: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n")
}

fn post(path: &str, body: &str) -> String {
    format!(
        "POST {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: text/plain;charset=UTF-8\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
}

async fn hold_sio_polling(
    t: &Target,
    net: &Net,
    held: &Held,
    permit: OwnedSemaphorePermit,
) -> anyhow::Result<()> {
    const BASE: &str = "/socket.io/?EIO=4&transport=polling";
    let mut p = Poller {
        t,
        net,
        held,
        conn: None,
    };
    // Handshake, CONNECT to "/", and its answer, within the per-step timeout.
    let sid = tokio::time::timeout(net.step, async {
        let (head, body) = p.request(&get(BASE)).await.context("handshake")?;
        let body = String::from_utf8_lossy(&body);
        if head.status != 200 {
            bail!("handshake: status {} {body}", head.status);
        }
        let sid = eio_packets(&body)
            .find_map(eio_sid)
            .ok_or_else(|| anyhow!("handshake: no sid in {body:?}"))?;
        let url = format!("{BASE}&sid={sid}");
        let (head, body) = p.request(&post(&url, "40")).await.context("connect")?;
        if head.status != 200 {
            bail!(
                "connect: status {} {}",
                head.status,
                String::from_utf8_lossy(&body)
            );
        }
        for _ in 0..10 {
            let (head, body) = p.request(&get(&url)).await.context("connect poll")?;
            let body = String::from_utf8_lossy(&body);
            if head.status != 200 {
                bail!("connect poll: status {} {body}", head.status);
            }
            for packet in eio_packets(&body) {
                if packet == "2" {
                    p.request(&post(&url, "3")).await?;
                } else if packet.starts_with("40") {
                    return Ok(url);
                } else if packet.starts_with("44") {
                    bail!("connect refused: {packet}");
                }
            }
        }
        bail!("no CONNECT answer in 10 polls")
    })
    .await
    .map_err(|_| anyhow!("socket.io polling connect timeout"))??;
    opened(held, permit);
    let url = sid;
    let mut seen = false;
    loop {
        let Ok((head, body)) = p.request(&get(&url)).await else {
            return Ok(());
        };
        if head.status != 200 {
            held.error(format!("poll: status {}", head.status));
            return Ok(());
        }
        let body = String::from_utf8_lossy(&body);
        for packet in eio_packets(&body) {
            if packet == "2" {
                if p.request(&post(&url, "3")).await.is_err() {
                    return Ok(());
                }
            } else if packet.starts_with("42") {
                held.message(packet, &mut seen);
                if let Some(id) = sio_ack_id(packet) {
                    if p.request(&post(&url, &format!("43{id}[]"))).await.is_err() {
                        return Ok(());
                    }
                }
            } else if packet.starts_with('1') {
                return Ok(());
            }
        }
    }
}

async fn hold_ws(
    t: &Target,
    net: &Net,
    held: &Held,
    permit: OwnedSemaphorePermit,
) -> anyhow::Result<()> {
    let mut ws = tokio::time::timeout(net.step, async {
        let tcp = net.connect(t.addr).await.context("connect")?;
        let io: Box<dyn Io> = match &t.tls {
            Some(tls) => {
                let name = rustls::pki_types::ServerName::try_from("localhost")?;
                Box::new(tls.connect(name, tcp).await.context("tls")?)
            }
            None => Box::new(tcp),
        };
        let scheme = if t.tls.is_some() { "wss" } else { "ws" };
        let mut req = format!("{scheme}://localhost/ws").into_client_request()?;
        req.headers_mut().insert(
            "sec-websocket-protocol",
            HeaderValue::from_static("pubsub.v1"),
        );
        // Small buffers: thousands of connections in one client process.
        let config = WebSocketConfig::default()
            .read_buffer_size(4096)
            .write_buffer_size(0);
        let (mut ws, _) = tokio_tungstenite::client_async_with_config(req, io, Some(config))
            .await
            .context("websocket handshake")?;
        let sub = json!({"op": "subscribe", "topic": t.topic}).to_string();
        ws.send(Message::text(sub)).await?;
        while let Some(m) = ws.next().await {
            if let Message::Text(text) = m? {
                let text = text.as_str();
                if text.contains("\"op\":\"subscribed\"") {
                    return Ok(ws);
                }
                if text.contains("\"op\":\"error\"") {
                    bail!("subscribe refused: {text}");
                }
            }
        }
        bail!("closed before subscribed")
    })
    .await
    .map_err(|_| anyhow!("ws subscribe timeout"))??;
    opened(held, permit);
    let mut seen = false;
    // Reading also answers the server's pings (the library queues the pong and sends it).
    while let Some(Ok(m)) = ws.next().await {
        if let Message::Text(text) = m {
            held.message(text.as_str(), &mut seen);
        }
    }
    Ok(())
}

async fn hold_sse(
    t: &Target,
    net: &Net,
    held: &Held,
    permit: OwnedSemaphorePermit,
) -> anyhow::Result<()> {
    let (mut c, head) = tokio::time::timeout(net.step, async {
        let mut c = Conn::open(net, t.addr, t.tls.as_ref()).await?;
        let req = format!(
            "GET /events?topic={} HTTP/1.1\r\nHost: localhost\r\nAccept: text/event-stream\r\n\r\n",
            t.topic
        );
        c.send(req.as_bytes()).await?;
        let head = c.head().await?;
        if head.status != 200 {
            bail!("status {}", head.status);
        }
        anyhow::Ok((c, head))
    })
    .await
    .map_err(|_| anyhow!("sse open timeout"))??;
    opened(held, permit);
    let mut seen = false;
    let mut line: Vec<u8> = Vec::new();
    loop {
        let data = if head.chunked {
            match c.chunk().await {
                Ok(d) if !d.is_empty() => d,
                _ => return Ok(()),
            }
        } else {
            match c.raw().await {
                Ok(d) => d,
                Err(_) => return Ok(()),
            }
        };
        for &b in &data {
            if b == b'\n' {
                if line.starts_with(b"data:") {
                    held.message(&String::from_utf8_lossy(&line), &mut seen);
                }
                line.clear();
            } else if b != b'\r' && line.len() < 65_536 {
                line.push(b);
            }
        }
    }
}

async fn hold_longpoll(
    t: &Target,
    net: &Net,
    held: &Held,
    permit: OwnedSemaphorePermit,
) -> anyhow::Result<()> {
    let mut p = Poller {
        t,
        net,
        held,
        conn: None,
    };
    // The first poll waits for the next message; the server holds it (the coordinator reads
    // the server's count of held polls to know they are all in).
    tokio::time::timeout(net.step, p.send(&get(&format!("/s?t={}", t.topic))))
        .await
        .map_err(|_| anyhow!("long-poll open timeout"))??;
    opened(held, permit);
    let mut seen = false;
    let mut answer = p.recv().await;
    let mut errors_in_a_row = 0;
    loop {
        let since = match answer {
            Ok((head, body)) => {
                match head.status {
                    200 => held.message(&String::from_utf8_lossy(&body), &mut seen),
                    204 | 409 => {}
                    s => {
                        held.error(format!("poll: status {s}"));
                        errors_in_a_row += 1;
                    }
                }
                head.get("x-position").map(str::to_string)
            }
            Err(_) => return Ok(()),
        };
        if errors_in_a_row > 10 {
            return Ok(());
        }
        let path = match since {
            Some(pos) => format!("/s?t={}&since={pos}", t.topic),
            None => format!("/s?t={}", t.topic),
        };
        answer = p.request(&get(&path)).await;
    }
}

// ---------------------------------------------------------------------------------------------
// the workers' meeting point

/// Barrier files: `<name>-<worker>` JSON written whole (rename), read by polling.
struct Meet {
    dir: PathBuf,
    own: bool,
    worker: usize,
    workers: usize,
}

impl Meet {
    fn new(dir: Option<&Path>, worker: usize, workers: usize) -> anyhow::Result<Meet> {
        let (dir, own) = match dir {
            Some(d) => (d.to_path_buf(), false),
            None => {
                if workers > 1 {
                    bail!("--sync-dir is required with --workers > 1");
                }
                let d = std::env::temp_dir().join(format!("rt-load-conns-{}", std::process::id()));
                (d, true)
            }
        };
        std::fs::create_dir_all(&dir).with_context(|| format!("{}", dir.display()))?;
        Ok(Meet {
            dir,
            own,
            worker,
            workers,
        })
    }

    fn post(&self, name: &str, v: &Value) -> anyhow::Result<()> {
        let path = self.dir.join(format!("{name}-{}", self.worker));
        let tmp = self.dir.join(format!(".{name}-{}.tmp", self.worker));
        std::fs::write(&tmp, v.to_string())?;
        std::fs::rename(&tmp, &path)?;
        Ok(())
    }

    fn read(&self, name: &str, worker: usize) -> Option<Value> {
        let s = std::fs::read_to_string(self.dir.join(format!("{name}-{worker}"))).ok()?;
        serde_json::from_str(&s).ok()
    }

    /// Every worker's `name` file, waiting until all are there or `deadline` (the missing
    /// ones are left out).
    async fn all(&self, name: &str, deadline: Instant) -> Vec<Value> {
        loop {
            let got: Vec<Value> = (0..self.workers)
                .filter_map(|w| self.read(name, w))
                .collect();
            if got.len() == self.workers || Instant::now() >= deadline {
                return got;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The coordinator's `name` file, or None at `deadline`.
    async fn coordinator(&self, name: &str, deadline: Instant) -> Option<Value> {
        loop {
            if let Some(v) = self.read(name, 0) {
                return Some(v);
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Meet {
    fn drop(&mut self) {
        if self.own {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// the admin listener

/// One request to the admin listener (plain HTTP, `Connection: close`): status and body.
async fn admin_request(
    net: &Net,
    admin: SocketAddr,
    method: &str,
    path: &str,
    body: &str,
) -> anyhow::Result<(u16, Vec<u8>)> {
    let mut c = Conn::open(net, admin, None).await?;
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    c.send(req.as_bytes()).await?;
    let head = c.head().await?;
    let body = c.body(&head).await?;
    Ok((head.status, body))
}

async fn server_open(net: &Net, admin: SocketAddr, kind: ConnKind) -> Option<u64> {
    let (status, body) = admin_request(net, admin, "GET", "/metrics", "")
        .await
        .ok()?;
    if status != 200 {
        return None;
    }
    open_connections(&String::from_utf8_lossy(&body), kind.metric_kind())
}

/// The one publish every connection hears, stamped with its send time.
async fn publish(net: &Net, a: &ConnsArgs) -> Value {
    let sent = wall_us();
    let (path, body) = match a.kind {
        ConnKind::SioWs | ConnKind::SioPolling => (
            "/emit",
            json!({"event": "conns", "data": {"sent_us": sent},
                   "timeout_ms": (a.publish_wait_secs * 1000).clamp(1000, 60_000)}),
        ),
        _ => (
            "/publish",
            json!({"topic": a.topic, "event": "conns", "data": {"sent_us": sent}}),
        ),
    };
    let t = Instant::now();
    let res = admin_request(net, a.admin, "POST", path, &body.to_string()).await;
    let ms = t.elapsed().as_secs_f64() * 1000.0;
    match res {
        Ok((status, body)) => {
            let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
            let mut out = json!({"path": path, "status": status, "sent_us": sent, "answer_ms": ms});
            if path == "/emit" {
                out["emit_sockets"] = v["sockets"].clone();
                out["emit_acks"] = json!(v["acks"].as_array().map_or(0, Vec::len));
                out["emit_failed"] = json!(v["failed"].as_array().map_or(0, Vec::len));
            } else {
                out["answer"] = v;
            }
            out
        }
        Err(e) => {
            json!({"path": path, "error": format!("{e:#}"), "sent_us": sent, "answer_ms": ms})
        }
    }
}

// ---------------------------------------------------------------------------------------------
// the run

fn num(v: &Value, k: &str) -> f64 {
    v[k].as_f64().unwrap_or(0.0)
}

pub async fn conns(
    label: &str,
    pids: &[u32],
    net: Arc<Net>,
    conc: usize,
    a: &ConnsArgs,
) -> anyhow::Result<Value> {
    if a.worker >= a.workers {
        bail!("--worker must be below --workers");
    }
    let coordinator = a.worker == 0;
    let meet = Meet::new(a.sync_dir.as_deref(), a.worker, a.workers)?;
    let sio = match a.kind {
        ConnKind::SioWs => {
            let scheme = if a.tls { "wss" } else { "ws" };
            Some(SioTarget::new(&format!(
                "{scheme}://{}/socket.io/",
                a.addr
            ))?)
        }
        _ => None,
    };
    let target = Arc::new(Target {
        kind: a.kind,
        addr: a.addr,
        tls: a.tls.then(tls_connector),
        topic: a.topic.clone(),
        sio,
    });
    let held = Arc::new(Held::default());
    let sem = Arc::new(Semaphore::new(conc.max(1)));
    // Every wait is bounded: a worker that never comes is left out, one that waits for a
    // coordinator that never comes gives up.
    let barrier_wait = Duration::from_secs(a.step_secs + a.hold_secs + 120);

    let (rss0, pss0) = if coordinator {
        tokio::time::sleep(Duration::from_secs(1)).await;
        server_mem(pids)
    } else {
        (0, 0)
    };
    meet.post("ready-0", &json!({}))?;
    if coordinator {
        let up = meet
            .all("ready-0", Instant::now() + Duration::from_secs(60))
            .await;
        if up.len() < a.workers {
            bail!("only {} of {} workers started", up.len(), a.workers);
        }
    }

    let mut steps_out = Vec::new();
    let mut aborted = None;
    for (s, &total) in a.steps.iter().enumerate() {
        // The step starts when the coordinator says so (its server figures start there).
        let go = format!("go-{s}");
        let (t_step, ticks0) = if coordinator {
            let t = (Instant::now(), server_ticks(pids));
            meet.post(&go, &json!({}))?;
            t
        } else {
            if meet
                .coordinator(&go, Instant::now() + barrier_wait)
                .await
                .is_none()
            {
                aborted = Some(format!("no {go} from the coordinator"));
                break;
            }
            (Instant::now(), 0)
        };
        let mine = share(total, a.worker, a.workers);
        let before = held.opened.load(Ordering::Relaxed) + held.failed.load(Ordering::Relaxed);
        let more = mine.saturating_sub(before);
        let deadline = t_step + Duration::from_secs(a.step_secs);
        for _ in 0..more {
            let permit = tokio::select! {
                p = sem.clone().acquire_owned() => p?,
                _ = tokio::time::sleep_until(deadline.into()) => break,
            };
            tokio::spawn(hold(target.clone(), net.clone(), held.clone(), permit));
        }
        while held.opened.load(Ordering::Relaxed) + held.failed.load(Ordering::Relaxed)
            < before + more
            && Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let open_secs = t_step.elapsed().as_secs_f64();
        let opened_n = held.opened.load(Ordering::Relaxed);
        meet.post(
            &format!("ready-{}", s + 1),
            &json!({"opened": opened_n, "failed": held.failed.load(Ordering::Relaxed),
                    "alive": held.alive(), "open_secs": open_secs}),
        )?;
        if !coordinator {
            continue;
        }
        // The coordinator: every worker's share opened (or its time up), then the server's
        // own count of the kind, then the idle hold.
        let ready = meet
            .all(
                &format!("ready-{}", s + 1),
                deadline + Duration::from_secs(5),
            )
            .await;
        let sum = |k: &str| ready.iter().map(|v| num(v, k)).sum::<f64>() as u64;
        let (opened_all, failed_all, alive_all) = (sum("opened"), sum("failed"), sum("alive"));
        let t_counted = Instant::now();
        let mut counted = server_open(&net, a.admin, a.kind).await;
        while counted.is_some_and(|c| c < alive_all)
            && t_counted.elapsed() < Duration::from_secs(10)
        {
            tokio::time::sleep(Duration::from_millis(200)).await;
            counted = server_open(&net, a.admin, a.kind).await;
        }
        let open_secs = t_step.elapsed().as_secs_f64();
        let ticks1 = server_ticks(pids);
        tokio::time::sleep(Duration::from_secs(a.hold_secs)).await;
        let ticks2 = server_ticks(pids);
        let (rss, pss) = server_mem(pids);
        let counted_after_hold = server_open(&net, a.admin, a.kind).await;
        let new_conns = opened_all.saturating_sub(
            steps_out
                .last()
                .map_or(0, |v: &Value| v["opened"].as_u64().unwrap_or(0)),
        );
        let open_cpu_s = (ticks1 - ticks0) as f64 / CLK_TCK;
        let idle_cpu_s = (ticks2 - ticks1) as f64 / CLK_TCK;
        let per = |m: u64, m0: u64| (m as f64 - m0 as f64) / alive_all.max(1) as f64;
        let mut st = json!({
            "n": total, "opened": opened_all, "failed": failed_all, "alive": alive_all,
            "workers_ready": ready.len(), "server_open": counted,
            "server_open_after_hold": counted_after_hold,
            "new": new_conns, "open_secs": open_secs,
            "connects_per_s": if open_secs > 0.0 { new_conns as f64 / open_secs } else { 0.0 },
        });
        let more = json!({
            "open_cpu_s": open_cpu_s,
            "open_cpu_us_per_conn": if new_conns > 0 { open_cpu_s * 1e6 / new_conns as f64 } else { -1.0 },
            "hold_secs": a.hold_secs, "idle_cpu_s": idle_cpu_s,
            "idle_cpu_us_per_conn_min": if alive_all > 0 && a.hold_secs > 0 {
                idle_cpu_s * 1e6 * 60.0 / a.hold_secs as f64 / alive_all as f64
            } else { -1.0 },
            "idle_cpu_pct": if a.hold_secs > 0 { idle_cpu_s * 100.0 / a.hold_secs as f64 } else { -1.0 },
            "rss_kib": rss, "pss_kib": pss,
            "rss_per_conn_kib": per(rss, rss0), "pss_per_conn_kib": per(pss, pss0),
        });
        if let (Some(o), Some(m)) = (st.as_object_mut(), more.as_object()) {
            o.extend(m.clone());
        }
        steps_out.push(st);
    }

    // The publish: the coordinator posts `go-publish` and publishes; every worker waits (bounded)
    // until each of its connections has it.
    let mut published = Value::Null;
    let alive_at_publish;
    if coordinator {
        meet.post("go-publish", &json!({}))?;
        alive_at_publish = held.alive();
        if aborted.is_none() {
            published = publish(&net, a).await;
        }
    } else {
        if aborted.is_none()
            && meet
                .coordinator("go-publish", Instant::now() + barrier_wait)
                .await
                .is_none()
        {
            aborted = Some("no go-publish from the coordinator".into());
        }
        alive_at_publish = held.alive();
    }
    let until = Instant::now() + Duration::from_secs(a.publish_wait_secs);
    if aborted.is_none() {
        while held.got.load(Ordering::Relaxed) < alive_at_publish && Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let lat: Vec<u32> = held.lat_us.lock().map(|l| l.clone()).unwrap_or_default();
    let errors = held.errors.lock().map(|e| e.clone()).unwrap_or_default();
    let mine = json!({
        "worker": a.worker, "opened": held.opened.load(Ordering::Relaxed),
        "failed": held.failed.load(Ordering::Relaxed), "closed": held.closed.load(Ordering::Relaxed),
        "reconnects": held.reconnects.load(Ordering::Relaxed),
        "alive_at_publish": alive_at_publish, "got": held.got.load(Ordering::Relaxed),
        "duplicates": held.duplicates.load(Ordering::Relaxed), "errors": error_kinds(&errors),
        "aborted": aborted,
    });
    let mut done = mine.clone();
    done["lat_us"] = json!(lat);
    meet.post("done", &done)?;
    if !coordinator {
        // Stay connected until the coordinator has everyone's receipts: a worker that leaves
        // early would load the server with closes while the others still receive.
        let _ = meet
            .coordinator("end", until + Duration::from_secs(30))
            .await;
        let mut out = mine;
        out["label"] = json!(label);
        out["mode"] = json!("conns-worker");
        out["kind"] = json!(a.kind.name());
        return Ok(out);
    }

    let dones = meet.all("done", until + Duration::from_secs(30)).await;
    meet.post("end", &json!({}))?;
    let mut all_lat: Vec<u32> = Vec::new();
    let mut errors: HashMap<String, u64> = HashMap::new();
    let mut totals: HashMap<&str, u64> = HashMap::new();
    for d in &dones {
        if let Some(l) = d["lat_us"].as_array() {
            all_lat.extend(l.iter().filter_map(|v| v.as_u64()).map(|v| v as u32));
        }
        for k in [
            "opened",
            "failed",
            "closed",
            "reconnects",
            "alive_at_publish",
            "got",
            "duplicates",
        ] {
            *totals.entry(k).or_default() += d[k].as_u64().unwrap_or(0);
        }
        if let Some(m) = d["errors"].as_object() {
            for (k, v) in m {
                *errors.entry(k.clone()).or_default() += v.as_u64().unwrap_or(0);
            }
        }
    }
    all_lat.sort_unstable();
    let expected = totals["alive_at_publish"];
    let got = totals["got"];
    let publish_out = json!({
        "workers_done": dones.len(), "expected": expected, "got": got,
        "lost": expected.saturating_sub(got), "duplicates": totals["duplicates"],
        "lat_ms_p50": pct(&all_lat, 0.50), "lat_ms_p90": pct(&all_lat, 0.90),
        "lat_ms_p99": pct(&all_lat, 0.99), "lat_ms_max": pct(&all_lat, 1.0),
        "request": published,
    });
    // RSS as a straight line over the steps (with one step: through the empty server's): its
    // slope is the memory per connection, and the projection to 100k and 1M connections.
    let mut points: Vec<(f64, f64)> = steps_out
        .iter()
        .map(|s| (num(s, "alive"), num(s, "rss_kib")))
        .collect();
    if points.len() < 2 {
        points.push((0.0, rss0 as f64));
    }
    let fit = fit_line(&points).map(|(b, m)| {
        json!({"points": points.len(), "intercept_kib": b, "kib_per_conn": m,
               "rss_gib_at_100k": (b + m * 1e5) / 1048576.0, "rss_gib_at_1m": (b + m * 1e6) / 1048576.0})
    });
    let mut out = json!({
        "label": label, "mode": "conns", "kind": a.kind.name(), "tls": a.tls,
        "workers": a.workers, "steps_asked": a.steps, "hold_secs": a.hold_secs,
        "rss0_kib": rss0, "pss0_kib": pss0, "steps": steps_out,
    });
    out["totals"] = json!(totals);
    out["publish"] = publish_out;
    out["fit"] = fit.unwrap_or(Value::Null);
    out["errors"] = json!(errors);
    out["aborted"] = json!(aborted);
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// the report: Markdown tables and an SVG plot from the coordinators' JSON lines

#[derive(clap::Args)]
pub struct ReportArgs {
    /// The raw results (one JSON object per line; `"mode":"conns"` lines are read).
    #[arg(long)]
    raw: PathBuf,
    /// Where the SVG plot (RSS vs connections, one line per kind) is written.
    #[arg(long)]
    svg: PathBuf,
}

/// Whole numbers and numbers >= 100 without decimals, others to 3 significant digits (as
/// bench/lib.sh's `fmt`); "-" for a missing one.
fn fmt_num(v: Option<f64>) -> String {
    match v {
        None => "-".into(),
        Some(v) if !v.is_finite() => "-".into(),
        Some(v) if v.abs() >= 100.0 || v.fract() == 0.0 => format!("{v:.0}"),
        Some(v) => {
            let digits = (2 - v.abs().log10().floor() as i32).max(0) as usize;
            format!("{v:.digits$}")
        }
    }
}

fn f(v: &Value, k: &str) -> Option<f64> {
    v.get(k)?.as_f64()
}

/// A round axis end above `max` (1, 2, 2.5 or 5 times a power of ten).
fn nice_ceil(max: f64) -> f64 {
    if max <= 0.0 || !max.is_finite() {
        return 1.0;
    }
    let p = 10f64.powf(max.log10().floor());
    [1.0, 2.0, 2.5, 5.0, 10.0]
        .iter()
        .map(|m| m * p)
        .find(|v| *v >= max)
        .unwrap_or(10.0 * p)
}

/// One run's line in the plot: the kind, (connections, RSS MiB) from the empty server on, and
/// the fitted line (intercept KiB, KiB per connection).
struct Series {
    kind: String,
    pts: Vec<(f64, f64)>,
    fit: Option<(f64, f64)>,
}

/// RSS (MiB) against open connections, one polyline per run (from the empty server), with
/// the fitted straight line dashed.
fn svg_plot(runs: &[&Value]) -> String {
    const COLORS: [&str; 6] = [
        "#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b",
    ];
    let (w, h, l, r, t, b) = (720.0, 420.0, 70.0, 170.0, 30.0, 50.0);
    let series: Vec<Series> = runs
        .iter()
        .map(|run| {
            let mut pts = vec![(0.0, f(run, "rss0_kib").unwrap_or(0.0) / 1024.0)];
            if let Some(steps) = run["steps"].as_array() {
                for s in steps {
                    if let (Some(n), Some(rss)) = (f(s, "alive"), f(s, "rss_kib")) {
                        pts.push((n, rss / 1024.0));
                    }
                }
            }
            let fit = run["fit"].as_object().and_then(|o| {
                Some((
                    o.get("intercept_kib")?.as_f64()?,
                    o.get("kib_per_conn")?.as_f64()?,
                ))
            });
            Series {
                kind: run["kind"].as_str().unwrap_or("?").to_string(),
                pts,
                fit,
            }
        })
        .collect();
    let xmax = nice_ceil(
        series
            .iter()
            .flat_map(|s| s.pts.iter().map(|p| p.0))
            .fold(0.0, f64::max),
    );
    let ymax = nice_ceil(
        series
            .iter()
            .flat_map(|s| s.pts.iter().map(|p| p.1))
            .fold(0.0, f64::max),
    );
    let x = |v: f64| l + v / xmax * (w - l - r);
    let y = |v: f64| h - b - v / ymax * (h - t - b);
    let mut o = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" font-family=\"sans-serif\" font-size=\"12\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <text x=\"{}\" y=\"18\" text-anchor=\"middle\" font-size=\"14\">Gateway RSS vs open idle connections (TLS)</text>\n",
        (l + w - r) / 2.0
    );
    for i in 0..=5 {
        let (xv, yv) = (xmax * i as f64 / 5.0, ymax * i as f64 / 5.0);
        o.push_str(&format!(
            "<line x1=\"{0:.1}\" y1=\"{1:.1}\" x2=\"{0:.1}\" y2=\"{2:.1}\" stroke=\"#ddd\"/>\n\
             <text x=\"{0:.1}\" y=\"{3:.1}\" text-anchor=\"middle\">{4}</text>\n\
             <line x1=\"{5:.1}\" y1=\"{6:.1}\" x2=\"{7:.1}\" y2=\"{6:.1}\" stroke=\"#ddd\"/>\n\
             <text x=\"{8:.1}\" y=\"{9:.1}\" text-anchor=\"end\">{10}</text>\n",
            x(xv),
            t,
            h - b,
            h - b + 16.0,
            fmt_num(Some(xv)),
            l,
            y(yv),
            w - r,
            l - 6.0,
            y(yv) + 4.0,
            fmt_num(Some(yv)),
        ));
    }
    o.push_str(&format!(
        "<line x1=\"{l}\" y1=\"{0}\" x2=\"{1}\" y2=\"{0}\" stroke=\"black\"/>\n\
         <line x1=\"{l}\" y1=\"{t}\" x2=\"{l}\" y2=\"{0}\" stroke=\"black\"/>\n\
         <text x=\"{2}\" y=\"{3}\" text-anchor=\"middle\">open connections</text>\n\
         <text x=\"16\" y=\"{4}\" text-anchor=\"middle\" transform=\"rotate(-90 16 {4})\">RSS MiB</text>\n",
        h - b, w - r, (l + w - r) / 2.0, h - 10.0, (t + h - b) / 2.0
    ));
    for (i, Series { kind, pts, fit }) in series.iter().enumerate() {
        let c = COLORS[i % COLORS.len()];
        let line: Vec<String> = pts
            .iter()
            .map(|p| format!("{:.1},{:.1}", x(p.0), y(p.1)))
            .collect();
        o.push_str(&format!(
            "<polyline fill=\"none\" stroke=\"{c}\" stroke-width=\"2\" points=\"{}\"/>\n",
            line.join(" ")
        ));
        for p in pts {
            o.push_str(&format!(
                "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"3\" fill=\"{c}\"/>\n",
                x(p.0),
                y(p.1)
            ));
        }
        if let Some((b0, m)) = fit {
            let xe = pts.iter().map(|p| p.0).fold(0.0, f64::max);
            o.push_str(&format!(
                "<line x1=\"{:.1}\" y1=\"{:.1}\" x2=\"{:.1}\" y2=\"{:.1}\" stroke=\"{c}\" stroke-dasharray=\"4 3\"/>\n",
                x(0.0), y(b0 / 1024.0), x(xe), y((b0 + m * xe) / 1024.0)
            ));
        }
        let ly = t + 20.0 + 18.0 * i as f64;
        o.push_str(&format!(
            "<line x1=\"{0}\" y1=\"{1:.1}\" x2=\"{2}\" y2=\"{1:.1}\" stroke=\"{c}\" stroke-width=\"2\"/>\n\
             <text x=\"{3}\" y=\"{4:.1}\">{kind}</text>\n",
            w - r + 15.0, ly, w - r + 40.0, w - r + 46.0, ly + 4.0
        ));
    }
    o.push_str(&format!(
        "<text x=\"{}\" y=\"{:.1}\" font-size=\"10\">dashed: straight-line fit</text>\n</svg>\n",
        w - r + 15.0,
        t + 30.0 + 18.0 * series.len() as f64
    ));
    o
}

/// The Markdown report of the `"mode":"conns"` lines of `raw`: a summary table, then per kind
/// the steps, the publish and the projection. Also the SVG.
fn report(raw: &str, svg_name: &str) -> (String, String) {
    let runs: Vec<Value> = raw
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["mode"] == "conns")
        .collect();
    let refs: Vec<&Value> = runs.iter().collect();
    let mut md = String::new();
    md.push_str("| kind | most connections held | RSS MiB there | KiB/conn (fitted) | RSS at 100k (projected) | RSS at 1M (projected) | connects/s (last step) | connects failed | publish: lost of expected | latency p50 / p99 / max ms |\n");
    md.push_str("|---|---:|---:|---:|---:|---:|---:|---:|---|---|\n");
    for run in &runs {
        let steps = run["steps"].as_array().cloned().unwrap_or_default();
        let last = steps.last().cloned().unwrap_or(Value::Null);
        let p = &run["publish"];
        let gib = |k: &str| {
            run["fit"][k]
                .as_f64()
                .map_or("-".to_string(), |v| format!("{} GiB", fmt_num(Some(v))))
        };
        md.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} of {} | {} / {} / {} |\n",
            run["kind"].as_str().unwrap_or("?"),
            fmt_num(f(&last, "alive")),
            fmt_num(f(&last, "rss_kib").map(|v| v / 1024.0)),
            fmt_num(run["fit"]["kib_per_conn"].as_f64()),
            gib("rss_gib_at_100k"),
            gib("rss_gib_at_1m"),
            fmt_num(f(&last, "connects_per_s")),
            fmt_num(f(&run["totals"], "failed")),
            fmt_num(f(p, "lost")),
            fmt_num(f(p, "expected")),
            fmt_num(f(p, "lat_ms_p50")),
            fmt_num(f(p, "lat_ms_p99")),
            fmt_num(f(p, "lat_ms_max")),
        ));
    }
    md.push_str(&format!("\n![RSS vs connections]({svg_name})\n"));
    for run in &runs {
        let kind = run["kind"].as_str().unwrap_or("?");
        md.push_str(&format!(
            "\n#### {kind}\n\nEmpty server: RSS {} MiB, PSS {} MiB; {} client processes; held idle {} s at each step.\n\n",
            fmt_num(f(run, "rss0_kib").map(|v| v / 1024.0)),
            fmt_num(f(run, "pss0_kib").map(|v| v / 1024.0)),
            fmt_num(f(run, "workers")),
            fmt_num(f(run, "hold_secs")),
        ));
        md.push_str("| N asked | open (client) | open (server's count: after opening / after the hold) | failed | RSS MiB | KiB/conn RSS | KiB/conn PSS | connects/s | server CPU per connect us | idle server CPU us per conn per minute | idle server CPU % of a core |\n");
        md.push_str("|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|\n");
        for s in run["steps"].as_array().into_iter().flatten() {
            md.push_str(&format!(
                "| {} | {} | {} / {} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
                fmt_num(f(s, "n")),
                fmt_num(f(s, "alive")),
                fmt_num(f(s, "server_open")),
                fmt_num(f(s, "server_open_after_hold")),
                fmt_num(f(s, "failed")),
                fmt_num(f(s, "rss_kib").map(|v| v / 1024.0)),
                fmt_num(f(s, "rss_per_conn_kib")),
                fmt_num(f(s, "pss_per_conn_kib")),
                fmt_num(f(s, "connects_per_s")),
                fmt_num(f(s, "open_cpu_us_per_conn")),
                fmt_num(f(s, "idle_cpu_us_per_conn_min")),
                fmt_num(f(s, "idle_cpu_pct")),
            ));
        }
        let p = &run["publish"];
        let req = &p["request"];
        let answer = if req["path"] == "/emit" {
            format!(
                "`POST /emit` answered {} in {} ms: {} sockets, {} acks, {} failed",
                req["status"],
                fmt_num(f(req, "answer_ms")),
                fmt_num(f(req, "emit_sockets")),
                fmt_num(f(req, "emit_acks")),
                fmt_num(f(req, "emit_failed"))
            )
        } else if req.get("error").is_some() {
            format!(
                "`{}` failed: {}",
                req["path"].as_str().unwrap_or("?"),
                req["error"]
            )
        } else {
            format!(
                "`POST {}` answered {} in {} ms",
                req["path"].as_str().unwrap_or("?"),
                req["status"],
                fmt_num(f(req, "answer_ms"))
            )
        };
        md.push_str(&format!(
            "\nOne publish to all: expected {} (open at the publish), got {}, **lost {}**, duplicates {}; latency p50 {} ms, p90 {} ms, p99 {} ms, max {} ms; {answer}.\n",
            fmt_num(f(p, "expected")), fmt_num(f(p, "got")), fmt_num(f(p, "lost")),
            fmt_num(f(p, "duplicates")), fmt_num(f(p, "lat_ms_p50")), fmt_num(f(p, "lat_ms_p90")),
            fmt_num(f(p, "lat_ms_p99")), fmt_num(f(p, "lat_ms_max")),
        ));
        let fit = &run["fit"];
        if fit.is_object() {
            md.push_str(&format!(
                "Straight line through the {} points: RSS = {} MiB + {} KiB x N; projected {} GiB at 100,000 connections, {} GiB at 1,000,000.\n",
                fmt_num(f(fit, "points")),
                fmt_num(f(fit, "intercept_kib").map(|v| v / 1024.0)),
                fmt_num(f(fit, "kib_per_conn")),
                fmt_num(f(fit, "rss_gib_at_100k")),
                fmt_num(f(fit, "rss_gib_at_1m")),
            ));
        }
        let t = &run["totals"];
        md.push_str(&format!(
            "Client side: opened {}, failed {}, closed {}, reconnects {}; errors: {}{}.\n",
            fmt_num(f(t, "opened")),
            fmt_num(f(t, "failed")),
            fmt_num(f(t, "closed")),
            fmt_num(f(t, "reconnects")),
            run["errors"],
            run["aborted"]
                .as_str()
                .map_or(String::new(), |a| format!("; ABORTED: {a}")),
        ));
    }
    (md, svg_plot(&refs))
}

pub fn write_report(a: &ReportArgs) -> anyhow::Result<String> {
    let raw = std::fs::read_to_string(&a.raw).with_context(|| format!("{}", a.raw.display()))?;
    let name = a
        .svg
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let (md, svg) = report(&raw, &name);
    std::fs::write(&a.svg, svg).with_context(|| format!("{}", a.svg.display()))?;
    Ok(md)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_add_up_to_the_total() {
        for (total, n) in [(0, 3), (1, 3), (10_000, 3), (19_800, 2), (7, 1)] {
            let parts: Vec<usize> = (0..n).map(|i| share(total, i, n)).collect();
            assert_eq!(parts.iter().sum::<usize>(), total);
            assert!(parts.iter().max().unwrap() - parts.iter().min().unwrap() <= 1);
        }
        assert_eq!(share(5, 0, 2), 3);
        assert_eq!(share(5, 1, 2), 2);
    }

    #[test]
    fn the_send_time_is_found_in_every_transport() {
        // Socket.IO event with an ack id, /ws pubsub.v1, SSE data line, long-poll batch.
        assert_eq!(
            sent_us(r#"4217["conns",{"sent_us":1733370000123456}]"#),
            Some(1_733_370_000_123_456)
        );
        assert_eq!(
            sent_us(
                r#"{"op":"message","topic":"conns","event":"conns","data":{"sent_us":42},"seq":1}"#
            ),
            Some(42)
        );
        assert_eq!(sent_us(r#"data: {"sent_us":7}"#), Some(7));
        assert_eq!(
            sent_us("00000000000000ab:3 15\n{\"sent_us\": 99}\n"),
            Some(99)
        );
        assert_eq!(sent_us(r#"{"sent_us":"x"}"#), None);
        assert_eq!(sent_us("2"), None);
        assert_eq!(sent_us(""), None);
    }

    #[test]
    fn ack_ids_of_socketio_events() {
        assert_eq!(sio_ack_id(r#"4217["conns",{}]"#), Some("17"));
        assert_eq!(sio_ack_id(r#"42["chat",1]"#), None);
        assert_eq!(sio_ack_id(r#"42/admin,3["x"]"#), None);
        assert_eq!(sio_ack_id("40"), None);
        assert_eq!(sio_ack_id("42"), None);
    }

    #[test]
    fn polling_payloads_split_and_open_packets_parse() {
        let body = "2\u{1e}42[\"a\"]\u{1e}\u{1e}6";
        assert_eq!(
            eio_packets(body).collect::<Vec<_>>(),
            ["2", "42[\"a\"]", "6"]
        );
        assert_eq!(
            eio_sid(r#"0{"sid":"Xk3-a_","upgrades":["websocket"],"pingInterval":25000}"#),
            Some("Xk3-a_".to_string())
        );
        assert_eq!(eio_sid("0{bad"), None);
        assert_eq!(eio_sid(r#"40{"sid":"a"}"#), None);
    }

    #[test]
    fn the_servers_count_is_read_from_its_metrics() {
        let m = "# HELP gateway_open_connections Open client connections\n\
                 # TYPE gateway_open_connections gauge\n\
                 gateway_open_connections{kind=\"http1\"} 12\n\
                 gateway_open_connections{kind=\"socketio_websocket\"} 19800\n\
                 gateway_open_connections_x{kind=\"sse\"} 5\n";
        assert_eq!(open_connections(m, "socketio_websocket"), Some(19_800));
        assert_eq!(open_connections(m, "http1"), Some(12));
        assert_eq!(open_connections(m, "sse"), None);
        assert_eq!(open_connections("", "ws"), None);
    }

    #[test]
    fn numbers_are_formatted_like_the_other_reports() {
        assert_eq!(fmt_num(Some(19_800.4)), "19800");
        assert_eq!(fmt_num(Some(97.34)), "97.3");
        assert_eq!(fmt_num(Some(5.678)), "5.68");
        assert_eq!(fmt_num(Some(0.01234)), "0.0123");
        assert_eq!(fmt_num(Some(0.0)), "0");
        assert_eq!(fmt_num(Some(3.0)), "3");
        assert_eq!(fmt_num(None), "-");
        assert_eq!(fmt_num(Some(f64::NAN)), "-");
        assert_eq!(nice_ceil(19_800.0), 20_000.0);
        assert_eq!(nice_ceil(1_001.0), 2_000.0);
        assert_eq!(nice_ceil(2_100.0), 2_500.0);
        assert_eq!(nice_ceil(0.0), 1.0);
    }

    #[test]
    fn the_report_has_a_row_per_step_and_a_line_per_kind() {
        let run = json!({"mode": "conns", "kind": "sse", "workers": 2, "hold_secs": 1,
            "rss0_kib": 10240, "pss0_kib": 9000,
            "steps": [{"n": 200, "alive": 200, "rss_kib": 20480, "connects_per_s": 900.0},
                      {"n": 500, "alive": 500, "rss_kib": 40960, "connects_per_s": 1000.0}],
            "publish": {"expected": 500, "got": 500, "lost": 0, "lat_ms_p50": 1.5,
                        "request": {"path": "/publish", "status": 200, "answer_ms": 2.0}},
            "fit": {"points": 2, "intercept_kib": 6826.7, "kib_per_conn": 68.27,
                    "rss_gib_at_100k": 6.52, "rss_gib_at_1m": 65.1},
            "totals": {"opened": 500, "failed": 0}, "errors": {}, "aborted": null});
        let raw = format!("{run}\n{{\"mode\":\"conns-worker\"}}\nnot json\n");
        let (md, svg) = report(&raw, "plot.svg");
        assert!(
            md.contains("| sse | 500 | 40 | 68.3 | 6.52 GiB | 65.1 GiB | 1000 | 0 | 0 of 500 |"),
            "{md}"
        );
        assert!(md.contains("| 200 | 200 |"), "{md}");
        assert!(md.contains("| 500 | 500 |"), "{md}");
        assert!(md.contains("![RSS vs connections](plot.svg)"));
        assert!(md.contains("**lost 0**"));
        assert_eq!(svg.matches("<polyline").count(), 1);
        assert_eq!(svg.matches("<circle").count(), 3);
        assert!(svg.contains(">sse</text>"));
        assert!(svg.trim_end().ends_with("</svg>"));
    }

    #[test]
    fn a_line_fits_exact_points_and_needs_two_xs() {
        let (b, m) = fit_line(&[(0.0, 100.0), (1000.0, 200.0), (2000.0, 300.0)]).unwrap();
        assert!((b - 100.0).abs() < 1e-9 && (m - 0.1).abs() < 1e-12);
        assert_eq!(fit_line(&[(5.0, 1.0)]), None);
        assert_eq!(fit_line(&[(5.0, 1.0), (5.0, 2.0)]), None);
        assert_eq!(fit_line(&[]), None);
    }
}
