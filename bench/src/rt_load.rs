//! `rt-load`: the realtime fan-out load client of bench/socketio.sh and bench/pubsub.sh.
//!
//! * `sio-fanout`: C Socket.IO receivers and one publisher on namespace "/", spoken directly
//!   over WebSocket (`?EIO=4&transport=websocket`, `40` -> `40{...}`, pings `2` answered `3`).
//!   The publisher emits `42["chat",k,send_us,"pad"]` for k = 0..M; the server relays each to
//!   every other socket. At most `window` events are outstanding (sent but not yet received by
//!   every receiver), so a server is driven at its pace, not buried. Figures: deliveries/s =
//!   deliveries / (first send -> last receipt), latency p50/p99 (send -> receipt), missing and
//!   duplicate deliveries, receivers closed during the run, server CPU per delivery. With
//!   `--rate N` the publisher sends N events per second, evenly spaced, whatever is outstanding
//!   (a quiet room: what one delivery costs when nothing else is going on).
//! * `sio-idle`: open N Socket.IO connections (WebSocket, connected to "/"), hold them idle
//!   (pings answered), and read the server's memory before and after: (after - before) / N,
//!   for each N of `--steps` (cumulative: 1000 then 9000 more for 10000), and the connects/s
//!   reached while opening each step's connections.
//! * `hub-fanout`: S long-poll or SSE subscribers on one topic of the gateway or of nchan, one
//!   HTTP publisher publishing K messages ("k send_us pad"), at most `window` messages ahead of
//!   the slowest subscriber. Long-poll subscribers poll again with their position (gateway:
//!   `since=<X-Position>`; nchan: `If-Modified-Since` / `If-None-Match`), so nothing published
//!   between two polls is lost. Plain HTTP, or HTTPS with `--tls`. Also the server's memory per
//!   held subscriber.
//! * `conns`: as many idle connections of one kind (Socket.IO over WebSocket or polling, `/ws`,
//!   SSE, long-poll) as the machine allows, spread over several processes, with the server's
//!   memory, connects/s and CPU at each step, then one publish to all of them (src/conns.rs).
//!
//! Server CPU is utime+stime of `--pids` and all their descendants from /proc (read by this
//! process at the exact edges of the measured window); memory is the sum of their Rss and Pss
//! (`/proc/PID/smaps_rollup`). Connections come from 127.0.0.2, .3, ... (`--sources`) so that
//! 10,000 connections per run, run after run, never run out of ephemeral ports.
//! The server certificate is NOT verified (benchmarks use a throwaway self-signed one).
//! The last stdout line is one JSON object with every figure (the scripts parse it).

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use clap::{Parser, Subcommand, ValueEnum};
use futures_util::{SinkExt, StreamExt};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, SignatureScheme};
use serde_json::json;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::{watch, Notify, OwnedSemaphorePermit, Semaphore};
use tokio_rustls::TlsConnector;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

mod conns;

/// Linux's USER_HZ (sysconf(_SC_CLK_TCK)) on every x86-64 and arm64 kernel.
const CLK_TCK: f64 = 100.0;

#[derive(Parser)]
#[command(
    name = "rt-load",
    about = "Socket.IO / long-poll / SSE fan-out load client"
)]
struct Cli {
    /// Name printed in the results.
    #[arg(long, global = true, default_value = "target")]
    label: String,
    /// Server processes (comma-separated; descendants included) whose CPU and memory are read.
    #[arg(long, global = true, value_delimiter = ',')]
    pids: Vec<u32>,
    /// Spread connections over this many loopback source addresses (127.0.0.2, .3, ...).
    #[arg(long, global = true, default_value_t = 64)]
    sources: u32,
    /// Connections being opened at once.
    #[arg(long, global = true, default_value_t = 200)]
    connect_concurrency: usize,
    /// Per-step timeout (connect, TLS, handshake), milliseconds.
    #[arg(long, global = true, default_value_t = 10_000)]
    timeout_ms: u64,
    /// A window position that makes no progress for this long is given up (counted as a stall).
    #[arg(long, global = true, default_value_t = 10_000)]
    stall_ms: u64,
    #[command(subcommand)]
    mode: Mode,
}

#[derive(Subcommand)]
enum Mode {
    /// One publisher, C receivers, M events relayed by the server.
    SioFanout {
        /// ws://IP:PORT/socket.io/ or wss://IP:PORT/socket.io/ (the publisher's, and the
        /// receivers' unless `--receiver-urls`).
        #[arg(long)]
        url: String,
        /// Receivers connect to these in turn (receiver i to the (i mod n)-th): the nodes of a
        /// fleet, with the publisher on `--url`'s.
        #[arg(long, value_delimiter = ',')]
        receiver_urls: Vec<String>,
        #[arg(long, default_value_t = 1000)]
        clients: usize,
        #[arg(long, default_value_t = 2000)]
        events: usize,
        /// Events outstanding at most (sent, not yet received by every receiver).
        #[arg(long, default_value_t = 32)]
        window: usize,
        /// Events per second, evenly spaced, instead of as fast as `--window` allows.
        #[arg(long)]
        rate: Option<f64>,
        /// Padding string in each event, bytes.
        #[arg(long, default_value_t = 32)]
        payload_bytes: usize,
        /// Hard limit for the measured part, seconds.
        #[arg(long, default_value_t = 120)]
        max_secs: u64,
    },
    /// Memory per idle Socket.IO connection.
    SioIdle {
        #[arg(long)]
        url: String,
        /// Cumulative connection counts at which memory is read.
        #[arg(long, value_delimiter = ',', default_value = "1000,10000")]
        steps: Vec<usize>,
        /// Seconds held (idle) before memory is read at each step.
        #[arg(long, default_value_t = 10)]
        hold_secs: u64,
    },
    /// Long-poll / SSE fan-out on one topic.
    HubFanout {
        #[arg(long, value_enum)]
        server: HubServer,
        #[arg(long, value_enum)]
        kind: HubKind,
        /// IP:PORT of the HTTP listener (subscribe and publish).
        #[arg(long)]
        addr: SocketAddr,
        /// Speak TLS to `addr` (HTTPS); the gateway's admin listener stays plain HTTP.
        #[arg(long)]
        tls: bool,
        /// IP:PORT of the gateway's admin listener (subscriber count); gateway only.
        #[arg(long)]
        admin: Option<SocketAddr>,
        #[arg(long, default_value = "bench")]
        topic: String,
        #[arg(long, default_value_t = 10_000)]
        subs: usize,
        #[arg(long, default_value_t = 50)]
        messages: usize,
        /// Messages published ahead of the slowest subscriber at most (1 = lockstep).
        #[arg(long, default_value_t = 1)]
        window: usize,
        #[arg(long, default_value_t = 32)]
        payload_bytes: usize,
        /// Seconds held after every subscriber is registered, before memory is read.
        #[arg(long, default_value_t = 3)]
        hold_secs: u64,
        /// Hard limit for the measured part, seconds.
        #[arg(long, default_value_t = 180)]
        max_secs: u64,
    },
    /// As many idle connections of one kind as the machine allows, in steps, then one
    /// publish to all of them (bench/connections.sh; see src/conns.rs).
    Conns(conns::ConnsArgs),
    /// The Markdown report (stdout) and SVG plot of bench/connections.sh's raw results.
    ConnsReport(conns::ReportArgs),
}

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq, Debug)]
enum HubServer {
    Gateway,
    Nchan,
}

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq, Debug)]
enum HubKind {
    Longpoll,
    Sse,
}

// ---------------------------------------------------------------------------------------------
// /proc: server CPU and memory, client CPU

fn parse_stat(s: &str) -> Option<(u32, u64)> {
    // "pid (comm) state ppid ... utime(14) stime(15)": comm may hold spaces and parentheses.
    let rest = &s[s.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ppid = f.get(1)?.parse().ok()?;
    let ticks = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    Some((ppid, ticks))
}

/// The roots and all their descendants, with each one's utime+stime ticks.
fn proc_tree(roots: &[u32]) -> Vec<(u32, u64)> {
    let mut all: HashMap<u32, (u32, u64)> = HashMap::new();
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for e in dir.flatten() {
            let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            if let Ok(s) = std::fs::read_to_string(format!("/proc/{pid}/stat")) {
                if let Some(v) = parse_stat(&s) {
                    all.insert(pid, v);
                }
            }
        }
    }
    let mut set: Vec<u32> = roots
        .iter()
        .copied()
        .filter(|p| all.contains_key(p))
        .collect();
    let mut changed = true;
    while changed {
        changed = false;
        for (pid, (ppid, _)) in &all {
            if !set.contains(pid) && set.contains(ppid) {
                set.push(*pid);
                changed = true;
            }
        }
    }
    set.into_iter().map(|p| (p, all[&p].1)).collect()
}

fn server_ticks(roots: &[u32]) -> u64 {
    proc_tree(roots).iter().map(|(_, t)| t).sum()
}

fn self_ticks() -> u64 {
    std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|s| parse_stat(&s))
        .map_or(0, |(_, t)| t)
}

/// utime+stime of every process except the server tree and this one: what else ran.
struct Others(HashMap<u32, u64>);

impl Others {
    fn snapshot(server: &[u32]) -> Others {
        let mine: Vec<u32> = proc_tree(server).into_iter().map(|(p, _)| p).collect();
        let me = std::process::id();
        let mut m = HashMap::new();
        if let Ok(dir) = std::fs::read_dir("/proc") {
            for e in dir.flatten() {
                let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
                    continue;
                };
                if pid == me || mine.contains(&pid) {
                    continue;
                }
                if let Ok(s) = std::fs::read_to_string(format!("/proc/{pid}/stat")) {
                    if let Some((_, t)) = parse_stat(&s) {
                        m.insert(pid, t);
                    }
                }
            }
        }
        Others(m)
    }

    /// CPU seconds the others used since `self` (processes born meanwhile count whole;
    /// processes that ended meanwhile are missed).
    fn since(&self, server: &[u32]) -> f64 {
        let now = Others::snapshot(server);
        let ticks: u64 = now
            .0
            .iter()
            .map(|(pid, t)| t.saturating_sub(self.0.get(pid).copied().unwrap_or(0)))
            .sum();
        ticks as f64 / CLK_TCK
    }
}

/// (Rss, Pss) in KiB, summed over the tree.
fn server_mem(roots: &[u32]) -> (u64, u64) {
    let mut rss = 0;
    let mut pss = 0;
    for (pid, _) in proc_tree(roots) {
        if let Ok(s) = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")) {
            for line in s.lines() {
                let mut it = line.split_whitespace();
                match (it.next(), it.next().and_then(|v| v.parse::<u64>().ok())) {
                    (Some("Rss:"), Some(v)) => rss += v,
                    (Some("Pss:"), Some(v)) => pss += v,
                    _ => {}
                }
            }
        }
    }
    (rss, pss)
}

// ---------------------------------------------------------------------------------------------
// connections

/// Accepts any server certificate (benchmark only).
#[derive(Debug)]
struct NoVerify(Arc<CryptoProvider>);

impl ServerCertVerifier for NoVerify {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

struct Net {
    sources: u32,
    next: AtomicUsize,
    step: Duration,
}

impl Net {
    /// 127.0.0.2, 127.0.0.3, ... (then 127.0.1.1, ...): never 127.0.0.1, which other
    /// benchmarks use.
    fn source(&self) -> Ipv4Addr {
        let i = 1 + (self.next.fetch_add(1, Ordering::Relaxed) as u32 % self.sources.max(1));
        Ipv4Addr::new(127, 0, (i / 250) as u8, (1 + i % 250) as u8)
    }

    async fn connect(&self, addr: SocketAddr) -> anyhow::Result<TcpStream> {
        let sock = TcpSocket::new_v4()?;
        sock.bind(SocketAddr::new(self.source().into(), 0))?;
        let s = tokio::time::timeout(self.step, sock.connect(addr))
            .await
            .map_err(|_| anyhow!("connect timeout"))??;
        s.set_nodelay(true)?;
        Ok(s)
    }
}

/// TLS 1.2/1.3 by rustls (ring), certificate not verified, ALPN http/1.1 only.
fn tls_connector() -> TlsConnector {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(NoVerify(provider)))
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    TlsConnector::from(Arc::new(config))
}

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}
type Ws = WebSocketStream<Box<dyn Io>>;

struct SioTarget {
    addr: SocketAddr,
    tls: Option<TlsConnector>,
    ws_url: String,
}

impl SioTarget {
    fn new(url: &str) -> anyhow::Result<SioTarget> {
        let (tls, rest) = if let Some(r) = url.strip_prefix("wss://") {
            (true, r)
        } else if let Some(r) = url.strip_prefix("ws://") {
            (false, r)
        } else {
            bail!("--url must start with ws:// or wss://");
        };
        let (hostport, path) = rest.split_once('/').unwrap_or((rest, "socket.io/"));
        let addr: SocketAddr = hostport
            .parse()
            .with_context(|| format!("{hostport}: expected IP:PORT"))?;
        let tls = tls.then(tls_connector);
        let scheme = if tls.is_some() { "wss" } else { "ws" };
        let path = path.trim_end_matches('/');
        let ws_url = format!("{scheme}://{hostport}/{path}/?EIO=4&transport=websocket");
        Ok(SioTarget { addr, tls, ws_url })
    }

    /// TCP (+TLS), WebSocket, Engine.IO open, Socket.IO CONNECT to "/".
    async fn connect(&self, net: &Net) -> anyhow::Result<Ws> {
        let tcp = net.connect(self.addr).await.context("connect")?;
        let io: Box<dyn Io> = match &self.tls {
            Some(tls) => {
                let name = ServerName::try_from("localhost")?;
                Box::new(
                    tokio::time::timeout(net.step, tls.connect(name, tcp))
                        .await
                        .map_err(|_| anyhow!("tls timeout"))?
                        .context("tls")?,
                )
            }
            None => Box::new(tcp),
        };
        // Small buffers: 10,000 connections in one client process.
        let config = WebSocketConfig::default()
            .read_buffer_size(4096)
            .write_buffer_size(0);
        let (mut ws, _) = tokio::time::timeout(
            net.step,
            tokio_tungstenite::client_async_with_config(self.ws_url.as_str(), io, Some(config)),
        )
        .await
        .map_err(|_| anyhow!("websocket handshake timeout"))?
        .context("websocket handshake")?;
        let deadline = Instant::now() + net.step;
        let mut sent_connect = false;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let msg = tokio::time::timeout(left, ws.next())
                .await
                .map_err(|_| anyhow!("socket.io connect timeout"))?
                .ok_or_else(|| anyhow!("closed during socket.io connect"))??;
            let Message::Text(t) = msg else { continue };
            let t = t.as_str();
            if t.starts_with('0') && !sent_connect {
                ws.send(Message::text("40")).await?;
                sent_connect = true;
            } else if t == "2" {
                ws.send(Message::text("3")).await?;
            } else if t.starts_with("40") {
                return Ok(ws);
            } else if t.starts_with("44") {
                bail!("connect refused: {t}");
            }
        }
    }
}

fn pct(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return -1.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i] as f64 / 1000.0
}

fn now_us(base: Instant) -> u64 {
    base.elapsed().as_micros() as u64
}

/// `k send_us` at the start of a text: the numbers of one message.
fn two_numbers(s: &str) -> Option<(usize, u64)> {
    let s = s.trim_start();
    let end = s.find(|c: char| !c.is_ascii_digit())?;
    let k = s[..end].parse().ok()?;
    let rest = s[end + 1..].trim_start();
    let end2 = rest
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(rest.len());
    let ts = rest[..end2].parse().ok()?;
    Some((k, ts))
}

/// What every receiver / subscriber shares: per-message delivery counts and the clock.
struct Tally {
    base: Instant,
    counts: Vec<AtomicU32>,
    receivers: u32,
    progress: Notify,
    delivered: AtomicU64,
    duplicates: AtomicU64,
    out_of_range: AtomicU64,
    last_recv_us: AtomicU64,
}

impl Tally {
    fn new(messages: usize, receivers: usize) -> Arc<Tally> {
        Arc::new(Tally {
            base: Instant::now(),
            counts: (0..messages).map(|_| AtomicU32::new(0)).collect(),
            receivers: receivers as u32,
            progress: Notify::new(),
            delivered: AtomicU64::new(0),
            duplicates: AtomicU64::new(0),
            out_of_range: AtomicU64::new(0),
            last_recv_us: AtomicU64::new(0),
        })
    }

    /// A receipt of message k sent at `ts`; `seen` is the receiver's own record.
    fn receive(&self, k: usize, ts: u64, seen: &mut [bool], lat: &mut Vec<u32>) {
        let now = now_us(self.base);
        if k >= seen.len() {
            self.out_of_range.fetch_add(1, Ordering::Relaxed);
            return;
        }
        if seen[k] {
            self.duplicates.fetch_add(1, Ordering::Relaxed);
            return;
        }
        seen[k] = true;
        lat.push(now.saturating_sub(ts).min(u32::MAX as u64) as u32);
        self.delivered.fetch_add(1, Ordering::Relaxed);
        self.last_recv_us.fetch_max(now, Ordering::Relaxed);
        if self.counts[k].fetch_add(1, Ordering::AcqRel) + 1 == self.receivers {
            self.progress.notify_one();
        }
    }

    /// Wait until message k has reached every receiver, or `stall` passes. false on a stall.
    async fn wait_complete(&self, k: usize, stall: Duration, hard: Instant) -> bool {
        let deadline = (Instant::now() + stall).min(hard);
        loop {
            if self.counts[k].load(Ordering::Acquire) >= self.receivers {
                return true;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            let _ = tokio::time::timeout(left, self.progress.notified()).await;
        }
    }

    /// Wait until everything is delivered, or nothing progressed for `stall`, or `hard`.
    async fn drain(&self, stall: Duration, hard: Instant) {
        let expected = self.counts.len() as u64 * self.receivers as u64;
        let mut last = self.delivered.load(Ordering::Relaxed);
        let mut since = Instant::now();
        while self.delivered.load(Ordering::Relaxed) < expected && Instant::now() < hard {
            tokio::time::sleep(Duration::from_millis(20)).await;
            let d = self.delivered.load(Ordering::Relaxed);
            if d != last {
                last = d;
                since = Instant::now();
            } else if since.elapsed() >= stall {
                break;
            }
        }
    }
}

/// Open `n` connections with `f`, `conc` at a time; results in order of completion.
async fn open_many<T, F, Fut>(n: usize, conc: usize, f: F) -> Vec<anyhow::Result<T>>
where
    T: Send + 'static,
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<T>> + Send + 'static,
{
    let sem = Arc::new(Semaphore::new(conc.max(1)));
    let mut handles = Vec::with_capacity(n);
    for i in 0..n {
        let permit = sem.clone().acquire_owned().await.expect("semaphore");
        let fut = f(i);
        handles.push(tokio::spawn(async move {
            let r = fut.await;
            drop(permit);
            r
        }));
    }
    let mut out = Vec::with_capacity(n);
    for h in handles {
        out.push(h.await.unwrap_or_else(|e| Err(anyhow!("task: {e}"))));
    }
    out
}

fn error_kinds(errors: &[String]) -> serde_json::Value {
    let mut m: HashMap<String, usize> = HashMap::new();
    for e in errors {
        let key: String = e.chars().take(80).collect();
        *m.entry(key).or_default() += 1;
    }
    json!(m)
}

// ---------------------------------------------------------------------------------------------
// sio-fanout

// One measurement's knobs, passed as they come from the script; a struct would only rename them.
#[allow(clippy::too_many_arguments)]
async fn sio_fanout(
    cli: &Cli,
    net: Arc<Net>,
    url: &str,
    receiver_urls: &[String],
    clients: usize,
    events: usize,
    window: usize,
    rate: Option<f64>,
    payload_bytes: usize,
    max_secs: u64,
) -> anyhow::Result<serde_json::Value> {
    if rate.is_some_and(|r| !(r.is_finite() && r > 0.0)) {
        bail!("--rate must be a positive number of events per second");
    }
    let target = Arc::new(SioTarget::new(url)?);
    let receiver_targets: Vec<Arc<SioTarget>> = if receiver_urls.is_empty() {
        vec![target.clone()]
    } else {
        receiver_urls
            .iter()
            .map(|u| SioTarget::new(u).map(Arc::new))
            .collect::<anyhow::Result<_>>()?
    };
    let tally = Tally::new(events, clients);
    let (stop_tx, stop_rx) = watch::channel(false);
    let closed = Arc::new(AtomicUsize::new(0));
    let ready = Arc::new(AtomicUsize::new(0));

    let t_open = Instant::now();
    let opened = open_many(clients, cli.connect_concurrency, |i| {
        let target = receiver_targets[i % receiver_targets.len()].clone();
        let net = net.clone();
        async move { target.connect(&net).await }
    })
    .await;
    let mut receivers = Vec::with_capacity(clients);
    let mut connect_errors = Vec::new();
    for r in opened {
        match r {
            Ok(ws) => {
                let (tally, mut stop, closed) = (tally.clone(), stop_rx.clone(), closed.clone());
                ready.fetch_add(1, Ordering::Relaxed);
                receivers.push(tokio::spawn(async move {
                    let mut ws = ws;
                    let mut seen = vec![false; tally.counts.len()];
                    let mut lat = Vec::with_capacity(tally.counts.len());
                    loop {
                        tokio::select! {
                            m = ws.next() => match m {
                                Some(Ok(Message::Text(t))) => {
                                    let t = t.as_str();
                                    if t == "2" {
                                        if ws.send(Message::text("3")).await.is_err() {
                                            closed.fetch_add(1, Ordering::Relaxed);
                                            break;
                                        }
                                    } else if let Some(rest) = t.strip_prefix("42[\"chat\",") {
                                        match two_numbers(rest) {
                                            Some((k, ts)) => tally.receive(k, ts, &mut seen, &mut lat),
                                            None => { tally.out_of_range.fetch_add(1, Ordering::Relaxed); }
                                        }
                                    }
                                }
                                Some(Ok(_)) => {}
                                _ => { closed.fetch_add(1, Ordering::Relaxed); break; }
                            },
                            _ = stop.changed() => break,
                        }
                    }
                    lat
                }));
            }
            Err(e) => connect_errors.push(format!("{e:#}")),
        }
    }
    let open_secs = t_open.elapsed().as_secs_f64();
    let n_recv = receivers.len();
    if n_recv == 0 {
        bail!("no receiver connected: {:?}", connect_errors.first());
    }
    // A missing receiver would stall every window.
    if n_recv != clients {
        bail!(
            "{} of {clients} receivers failed to connect: {}",
            clients - n_recv,
            error_kinds(&connect_errors)
        );
    }

    let publisher = target.connect(&net).await.context("publisher")?;
    let (sink, mut stream) = publisher.split();
    let sink = Arc::new(tokio::sync::Mutex::new(sink));
    let pong_sink = sink.clone();
    let mut pstop = stop_rx.clone();
    let pub_reader = tokio::spawn(async move {
        let mut other = 0u64;
        loop {
            tokio::select! {
                m = stream.next() => match m {
                    Some(Ok(Message::Text(t))) if t.as_str() == "2" => {
                        let _ = pong_sink.lock().await.send(Message::text("3")).await;
                    }
                    Some(Ok(_)) => other += 1,
                    _ => break,
                },
                _ = pstop.changed() => break,
            }
        }
        other
    });
    // Every socket is in the namespace once its CONNECT is answered; let the server settle.
    tokio::time::sleep(Duration::from_millis(500)).await;

    let pad = "x".repeat(payload_bytes);
    let stall = Duration::from_millis(cli.stall_ms);
    let hard = Instant::now() + Duration::from_secs(max_secs);
    let o0 = Others::snapshot(&cli.pids);
    let s0 = server_ticks(&cli.pids);
    let c0 = self_ticks();
    let first_send = now_us(tally.base);
    let paced_from = tokio::time::Instant::now();
    let mut stalls = 0;
    let mut sent = 0;
    for k in 0..events {
        if Instant::now() >= hard {
            break;
        }
        if let Some(r) = rate {
            // Event k at k/rate s from the first: a late send does not shift the ones after it.
            tokio::time::sleep_until(paced_from + Duration::from_secs_f64(k as f64 / r)).await;
        } else if k >= window && !tally.wait_complete(k - window, stall, hard).await {
            stalls += 1;
        }
        let ts = now_us(tally.base);
        let text = format!("42[\"chat\",{k},{ts},\"{pad}\"]");
        if let Err(e) = sink.lock().await.send(Message::text(text)).await {
            connect_errors.push(format!("publisher send: {e}"));
            break;
        }
        sent += 1;
    }
    tally.drain(stall, hard).await;
    let s1 = server_ticks(&cli.pids);
    let c1 = self_ticks();
    let others_s = o0.since(&cli.pids);
    let last = tally.last_recv_us.load(Ordering::Relaxed);
    let _ = stop_tx.send(true);
    let mut lat: Vec<u32> = Vec::with_capacity(n_recv * events);
    for h in receivers {
        if let Ok(l) = h.await {
            lat.extend(l);
        }
    }
    let publisher_other = pub_reader.await.unwrap_or(0);
    lat.sort_unstable();
    let delivered = tally.delivered.load(Ordering::Relaxed);
    let expected = (n_recv * sent) as u64;
    let secs = last.saturating_sub(first_send) as f64 / 1e6;
    let server_s = (s1 - s0) as f64 / CLK_TCK;
    let client_s = (c1 - c0) as f64 / CLK_TCK;
    Ok(json!({
        "label": cli.label, "mode": "sio-fanout", "url": url, "receiver_urls": receiver_urls,
        "clients": n_recv, "events_sent": sent, "window": window, "rate": rate,
        "payload_bytes": payload_bytes,
        "open_secs": open_secs, "connect_failed": clients - n_recv,
        "expected": expected, "delivered": delivered, "missing": expected.saturating_sub(delivered),
        "duplicates": tally.duplicates.load(Ordering::Relaxed),
        "malformed": tally.out_of_range.load(Ordering::Relaxed),
        "receivers_closed": closed.load(Ordering::Relaxed), "stalls": stalls,
        "publisher_got": publisher_other,
        "secs": secs, "deliveries_per_s": if secs > 0.0 { delivered as f64 / secs } else { 0.0 },
        "lat_ms_p50": pct(&lat, 0.50), "lat_ms_p99": pct(&lat, 0.99), "lat_ms_max": pct(&lat, 1.0),
        "server_cpu_s": server_s, "client_cpu_s": client_s,
        "server_us_per_delivery": if delivered > 0 { server_s * 1e6 / delivered as f64 } else { -1.0 },
        "client_us_per_delivery": if delivered > 0 { client_s * 1e6 / delivered as f64 } else { -1.0 },
        "server_cpu_pct": if secs > 0.0 { server_s * 100.0 / secs } else { 0.0 },
        "client_cpu_pct": if secs > 0.0 { client_s * 100.0 / secs } else { 0.0 },
        "others_cpu_pct": if secs > 0.0 { others_s * 100.0 / secs } else { 0.0 },
        "errors": error_kinds(&connect_errors),
    }))
}

// ---------------------------------------------------------------------------------------------
// sio-idle

async fn sio_idle(
    cli: &Cli,
    net: Arc<Net>,
    url: &str,
    steps: &[usize],
    hold_secs: u64,
) -> anyhow::Result<serde_json::Value> {
    let target = Arc::new(SioTarget::new(url)?);
    let (stop_tx, stop_rx) = watch::channel(false);
    let closed = Arc::new(AtomicUsize::new(0));
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (rss0, pss0) = server_mem(&cli.pids);
    let mut holders = Vec::new();
    let mut errors = Vec::new();
    let mut out = Vec::new();
    let mut opened = 0usize;
    for &n in steps {
        let t = Instant::now();
        let more = n.saturating_sub(opened);
        let res = open_many(more, cli.connect_concurrency, |_| {
            let (target, net) = (target.clone(), net.clone());
            async move { target.connect(&net).await }
        })
        .await;
        opened = n;
        let before = holders.len();
        for r in res {
            match r {
                Ok(mut ws) => {
                    let (mut stop, closed) = (stop_rx.clone(), closed.clone());
                    holders.push(tokio::spawn(async move {
                        loop {
                            tokio::select! {
                                m = ws.next() => match m {
                                    Some(Ok(Message::Text(t))) if t.as_str() == "2" => {
                                        if ws.send(Message::text("3")).await.is_err() {
                                            closed.fetch_add(1, Ordering::Relaxed);
                                            break;
                                        }
                                    }
                                    Some(Ok(_)) => {}
                                    _ => { closed.fetch_add(1, Ordering::Relaxed); break; }
                                },
                                _ = stop.changed() => break,
                            }
                        }
                    }));
                }
                Err(e) => errors.push(format!("{e:#}")),
            }
        }
        let open_secs = t.elapsed().as_secs_f64();
        let made = holders.len() - before;
        tokio::time::sleep(Duration::from_secs(hold_secs)).await;
        let (rss, pss) = server_mem(&cli.pids);
        let alive = holders.len() - closed.load(Ordering::Relaxed);
        let per = |a: u64, b: u64| (a as f64 - b as f64) / (alive.max(1) as f64);
        out.push(json!({
            "n": n, "connected": holders.len(), "alive": alive, "failed": errors.len(),
            "open_secs": open_secs, "connects_per_s": made as f64 / open_secs.max(1e-9),
            "rss_kib": rss, "pss_kib": pss,
            "rss_per_conn_kib": per(rss, rss0), "pss_per_conn_kib": per(pss, pss0),
        }));
    }
    let _ = stop_tx.send(true);
    for h in holders {
        let _ = h.await;
    }
    Ok(json!({
        "label": cli.label, "mode": "sio-idle", "url": url, "hold_secs": hold_secs,
        "rss0_kib": rss0, "pss0_kib": pss0, "steps": out, "errors": error_kinds(&errors),
    }))
}

// ---------------------------------------------------------------------------------------------
// HTTP/1.1 over a TcpStream, just what long-poll and SSE need

struct Head {
    status: u16,
    headers: Vec<(String, String)>,
    content_length: Option<usize>,
    chunked: bool,
    close: bool,
}

impl Head {
    fn get(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

struct Conn {
    s: Box<dyn Io>,
    buf: Vec<u8>,
    pos: usize,
}

impl Conn {
    fn new(s: Box<dyn Io>) -> Conn {
        Conn {
            s,
            buf: Vec::with_capacity(2048),
            pos: 0,
        }
    }

    /// TCP, then TLS when `tls` is given.
    async fn open(net: &Net, addr: SocketAddr, tls: Option<&TlsConnector>) -> anyhow::Result<Conn> {
        let tcp = net.connect(addr).await?;
        let io: Box<dyn Io> = match tls {
            Some(tls) => Box::new(
                tokio::time::timeout(
                    net.step,
                    tls.connect(ServerName::try_from("localhost")?, tcp),
                )
                .await
                .map_err(|_| anyhow!("tls timeout"))?
                .context("tls")?,
            ),
            None => Box::new(tcp),
        };
        Ok(Conn::new(io))
    }

    /// Write a whole request (flushed: over TLS the record must leave now).
    async fn send(&mut self, b: &[u8]) -> std::io::Result<()> {
        self.s.write_all(b).await?;
        self.s.flush().await
    }

    fn avail(&self) -> &[u8] {
        &self.buf[self.pos..]
    }

    async fn fill(&mut self) -> anyhow::Result<()> {
        if self.pos == self.buf.len() {
            self.buf.clear();
            self.pos = 0;
        } else if self.pos > 16384 {
            self.buf.drain(..self.pos);
            self.pos = 0;
        }
        let len = self.buf.len();
        self.buf.resize(len + 4096, 0);
        let n = self.s.read(&mut self.buf[len..]).await;
        let n = match n {
            Ok(n) => n,
            Err(e) => {
                self.buf.truncate(len);
                return Err(e.into());
            }
        };
        self.buf.truncate(len + n);
        if n == 0 {
            bail!("connection closed");
        }
        Ok(())
    }

    async fn head(&mut self) -> anyhow::Result<Head> {
        loop {
            if let Some(i) = find(self.avail(), b"\r\n\r\n") {
                let text = String::from_utf8_lossy(&self.avail()[..i]).into_owned();
                self.pos += i + 4;
                let mut lines = text.split("\r\n");
                let status_line = lines.next().unwrap_or("");
                let status: u16 = status_line
                    .split(' ')
                    .nth(1)
                    .and_then(|s| s.parse().ok())
                    .ok_or_else(|| anyhow!("bad status line {status_line:?}"))?;
                let mut head = Head {
                    status,
                    headers: Vec::new(),
                    content_length: None,
                    chunked: false,
                    close: status_line.starts_with("HTTP/1.0"),
                };
                for l in lines {
                    if let Some((k, v)) = l.split_once(':') {
                        let k = k.trim().to_ascii_lowercase();
                        let v = v.trim().to_string();
                        match k.as_str() {
                            "content-length" => head.content_length = v.parse().ok(),
                            "transfer-encoding" => {
                                head.chunked = v.to_ascii_lowercase().contains("chunked")
                            }
                            "connection" => head.close = v.eq_ignore_ascii_case("close"),
                            _ => {}
                        }
                        head.headers.push((k, v));
                    }
                }
                return Ok(head);
            }
            self.fill().await?;
        }
    }

    /// One chunk of a chunked body (empty at the end).
    async fn chunk(&mut self) -> anyhow::Result<Vec<u8>> {
        let size = loop {
            if let Some(i) = find(self.avail(), b"\r\n") {
                let line = String::from_utf8_lossy(&self.avail()[..i]).into_owned();
                self.pos += i + 2;
                let hex = line.split(';').next().unwrap_or("").trim();
                break usize::from_str_radix(hex, 16)
                    .map_err(|_| anyhow!("bad chunk size {line:?}"))?;
            }
            self.fill().await?;
        };
        while self.avail().len() < size + 2 {
            self.fill().await?;
        }
        let data = self.avail()[..size].to_vec();
        self.pos += size + 2;
        Ok(data)
    }

    /// Some bytes of a body without framing (read until close).
    async fn raw(&mut self) -> anyhow::Result<Vec<u8>> {
        if self.avail().is_empty() {
            self.fill().await?;
        }
        let data = self.avail().to_vec();
        self.pos = self.buf.len();
        Ok(data)
    }

    async fn body(&mut self, head: &Head) -> anyhow::Result<Vec<u8>> {
        if head.chunked {
            let mut out = Vec::new();
            loop {
                let c = self.chunk().await?;
                if c.is_empty() {
                    return Ok(out);
                }
                out.extend_from_slice(&c);
            }
        }
        let n = head.content_length.unwrap_or(0);
        while self.avail().len() < n {
            self.fill().await?;
        }
        let data = self.avail()[..n].to_vec();
        self.pos += n;
        Ok(data)
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

// ---------------------------------------------------------------------------------------------
// hub-fanout

#[derive(Clone)]
struct HubTarget {
    server: HubServer,
    kind: HubKind,
    addr: SocketAddr,
    topic: String,
    /// Subscribers, the publisher and nchan's channel info over TLS (the admin stays plain).
    tls: Option<TlsConnector>,
}

impl HubTarget {
    async fn open(&self, net: &Net) -> anyhow::Result<Conn> {
        Conn::open(net, self.addr, self.tls.as_ref()).await
    }
}

impl HubTarget {
    fn subscribe_request(&self, since: &LpState) -> String {
        match (self.server, self.kind) {
            (HubServer::Gateway, HubKind::Longpoll) => match &since.position {
                Some(p) => format!(
                    "GET /s?t={}&since={p} HTTP/1.1\r\nHost: localhost\r\n\r\n",
                    self.topic
                ),
                None => format!("GET /s?t={} HTTP/1.1\r\nHost: localhost\r\n\r\n", self.topic),
            },
            (HubServer::Gateway, HubKind::Sse) => format!(
                "GET /events?topic={} HTTP/1.1\r\nHost: localhost\r\nAccept: text/event-stream\r\n\r\n",
                self.topic
            ),
            (HubServer::Nchan, HubKind::Longpoll) => {
                let mut r = format!("GET /lp/{} HTTP/1.1\r\nHost: localhost\r\n", self.topic);
                if let Some(lm) = &since.last_modified {
                    r.push_str(&format!("If-Modified-Since: {lm}\r\n"));
                }
                if let Some(e) = &since.etag {
                    r.push_str(&format!("If-None-Match: {e}\r\n"));
                }
                r.push_str("\r\n");
                r
            }
            (HubServer::Nchan, HubKind::Sse) => format!(
                "GET /ev/{} HTTP/1.1\r\nHost: localhost\r\nAccept: text/event-stream\r\n\r\n",
                self.topic
            ),
        }
    }

    fn publish_request(&self, body: &str) -> String {
        let path = match self.server {
            HubServer::Gateway => format!("/p?t={}", self.topic),
            HubServer::Nchan => format!("/pub/{}", self.topic),
        };
        format!(
            "POST {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
    }
}

#[derive(Default)]
struct LpState {
    position: Option<String>,
    last_modified: Option<String>,
    etag: Option<String>,
}

#[derive(Default)]
struct SubResult {
    lat: Vec<u32>,
    reconnects: u64,
    resets: u64,
    empty_polls: u64,
    errors: Vec<String>,
    requests: u64,
}

/// Messages in a long-poll answer: the gateway frames a `since` answer as
/// `<epoch>:<seq> <len>\n<body>\n`...; everything else is one message.
fn lp_messages(server: HubServer, batch: bool, body: &[u8]) -> Vec<String> {
    let s = String::from_utf8_lossy(body);
    if server == HubServer::Gateway && batch {
        let mut out = Vec::new();
        let mut rest: &str = &s;
        while let Some((head, after)) = rest.split_once('\n') {
            let len: usize = head
                .split_once(' ')
                .and_then(|(_, l)| l.parse().ok())
                .unwrap_or(0);
            if after.len() < len {
                break;
            }
            out.push(after[..len].to_string());
            rest = after.get(len + 1..).unwrap_or("");
        }
        out
    } else {
        vec![s.into_owned()]
    }
}

struct SubCtx {
    target: HubTarget,
    net: Arc<Net>,
    tally: Arc<Tally>,
    stop: watch::Receiver<bool>,
    registered: Arc<AtomicUsize>,
    done: Arc<AtomicUsize>,
    /// Released once the first request is written: paces the opening of subscribers.
    permit: Option<OwnedSemaphorePermit>,
}

async fn longpoll_subscriber(ctx: SubCtx) -> SubResult {
    let SubCtx {
        target,
        net,
        tally,
        mut stop,
        registered,
        done,
        mut permit,
    } = ctx;
    let messages = tally.counts.len();
    let mut seen = vec![false; messages];
    let mut r = SubResult {
        lat: Vec::with_capacity(messages),
        ..SubResult::default()
    };
    let mut st = LpState::default();
    let mut conn: Option<Conn> = None;
    let mut first = true;
    let mut got = 0usize;
    while got < messages && !*stop.borrow() {
        if conn.is_none() {
            if !first {
                r.reconnects += 1;
            }
            match target.open(&net).await {
                Ok(c) => conn = Some(c),
                Err(e) => {
                    r.errors.push(format!("connect: {e:#}"));
                    if r.errors.len() > 50 {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
            }
        }
        let c = conn.as_mut().expect("conn");
        let batch = st.position.is_some();
        let req = target.subscribe_request(&st);
        r.requests += 1;
        if let Err(e) = c.send(req.as_bytes()).await {
            r.errors.push(format!("write: {e}"));
            conn = None;
            continue;
        }
        if first {
            registered.fetch_add(1, Ordering::Relaxed);
            permit.take();
            first = false;
        }
        let step = async {
            let head = c.head().await?;
            let body = c.body(&head).await?;
            anyhow::Ok((head, body))
        };
        let res = tokio::select! {
            res = step => res,
            _ = stop.changed() => break,
        };
        let (head, body) = match res {
            Ok(x) => x,
            Err(e) => {
                r.errors.push(format!("{e:#}"));
                conn = None;
                if r.errors.len() > 50 {
                    break;
                }
                continue;
            }
        };
        if head.close {
            conn = None;
        }
        if let Some(p) = head.get("x-position") {
            st.position = Some(p.to_string());
        }
        if let Some(v) = head.get("last-modified") {
            st.last_modified = Some(v.to_string());
        }
        if let Some(v) = head.get("etag") {
            st.etag = Some(v.to_string());
        }
        match head.status {
            200 => {
                for m in lp_messages(target.server, batch, &body) {
                    match two_numbers(&m) {
                        Some((k, ts)) => {
                            tally.receive(k, ts, &mut seen, &mut r.lat);
                            if k + 1 == messages || k >= messages {
                                got = messages;
                            }
                        }
                        None => {
                            tally.out_of_range.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            }
            204 | 304 | 408 => r.empty_polls += 1,
            409 => r.resets += 1,
            s => {
                r.errors.push(format!("status {s}"));
                if r.errors.len() > 50 {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    done.fetch_add(1, Ordering::Relaxed);
    r
}

async fn sse_subscriber(ctx: SubCtx) -> SubResult {
    let SubCtx {
        target,
        net,
        tally,
        mut stop,
        registered,
        done,
        mut permit,
    } = ctx;
    let messages = tally.counts.len();
    let mut seen = vec![false; messages];
    let mut r = SubResult {
        lat: Vec::with_capacity(messages),
        ..SubResult::default()
    };
    let mut got_last = false;
    let mut first = true;
    let mut attempts = 0;
    while !got_last && !*stop.borrow() {
        attempts += 1;
        if attempts > 1 {
            // A stream that broke (or could not open): a new one, without Last-Event-ID, so
            // what was published meanwhile shows up as missing deliveries.
            r.reconnects += 1;
            if attempts > 20 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let mut c = match target.open(&net).await {
            Ok(c) => c,
            Err(e) => {
                r.errors.push(format!("connect: {e:#}"));
                continue;
            }
        };
        r.requests += 1;
        let req = target.subscribe_request(&LpState::default());
        if let Err(e) = c.send(req.as_bytes()).await {
            r.errors.push(format!("write: {e}"));
            continue;
        }
        if first {
            registered.fetch_add(1, Ordering::Relaxed);
            permit.take();
            first = false;
        }
        let stream = async {
            let head = c.head().await?;
            if head.status != 200 {
                bail!("status {}", head.status);
            }
            let mut line: Vec<u8> = Vec::new();
            loop {
                let data = if head.chunked {
                    let d = c.chunk().await?;
                    if d.is_empty() {
                        bail!("stream ended");
                    }
                    d
                } else {
                    c.raw().await?
                };
                for &b in &data {
                    if b == b'\n' {
                        if let Some(v) = line.strip_prefix(b"data:") {
                            let v = String::from_utf8_lossy(v);
                            match two_numbers(&v) {
                                Some((k, ts)) => {
                                    tally.receive(k, ts, &mut seen, &mut r.lat);
                                    if k + 1 >= messages {
                                        got_last = true;
                                    }
                                }
                                None => {
                                    tally.out_of_range.fetch_add(1, Ordering::Relaxed);
                                }
                            }
                        }
                        line.clear();
                    } else if b != b'\r' {
                        line.push(b);
                    }
                }
                if got_last {
                    return Ok(());
                }
            }
        };
        let res = tokio::select! {
            res = stream => res,
            _ = stop.changed() => break,
        };
        if let Err(e) = res {
            r.errors.push(format!("{e:#}"));
        }
    }
    done.fetch_add(1, Ordering::Relaxed);
    r
}

/// Subscribers the server counts on the topic (gateway: admin /topics; nchan: channel info).
async fn server_subscribers(
    target: &HubTarget,
    admin: Option<SocketAddr>,
    net: &Net,
) -> anyhow::Result<usize> {
    let (addr, tls, req) = match target.server {
        HubServer::Gateway => (
            admin.ok_or_else(|| anyhow!("--admin is required for the gateway"))?,
            None,
            format!(
                "GET /topics/{} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
                target.topic
            ),
        ),
        HubServer::Nchan => (
            target.addr,
            target.tls.as_ref(),
            format!(
                "GET /pub/{} HTTP/1.1\r\nHost: localhost\r\nAccept: text/json\r\nConnection: close\r\n\r\n",
                target.topic
            ),
        ),
    };
    let mut c = Conn::open(net, addr, tls).await?;
    c.send(req.as_bytes()).await?;
    let head = c.head().await?;
    let body = c.body(&head).await?;
    if head.status == 404 {
        return Ok(0);
    }
    let v: serde_json::Value = serde_json::from_slice(&body)
        .with_context(|| format!("status {}: {}", head.status, String::from_utf8_lossy(&body)))?;
    Ok(v["subscribers"].as_u64().unwrap_or(0) as usize)
}

#[allow(clippy::too_many_arguments)]
async fn hub_fanout(
    cli: &Cli,
    net: Arc<Net>,
    server: HubServer,
    kind: HubKind,
    addr: SocketAddr,
    tls: bool,
    admin: Option<SocketAddr>,
    topic: &str,
    subs: usize,
    messages: usize,
    window: usize,
    payload_bytes: usize,
    hold_secs: u64,
    max_secs: u64,
) -> anyhow::Result<serde_json::Value> {
    let target = HubTarget {
        server,
        kind,
        addr,
        topic: topic.to_string(),
        tls: tls.then(tls_connector),
    };
    let tally = Tally::new(messages, subs);
    let (stop_tx, stop_rx) = watch::channel(false);
    let registered = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicUsize::new(0));
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (rss0, pss0) = server_mem(&cli.pids);

    // Subscribers, opened `connect_concurrency` at a time (each counts itself once its first
    // request is written).
    let t_open = Instant::now();
    let sem = Arc::new(Semaphore::new(cli.connect_concurrency.max(1)));
    let mut handles = Vec::with_capacity(subs);
    for _ in 0..subs {
        let ctx = SubCtx {
            target: target.clone(),
            net: net.clone(),
            tally: tally.clone(),
            stop: stop_rx.clone(),
            registered: registered.clone(),
            done: done.clone(),
            permit: None,
        };
        let permit = sem.clone().acquire_owned().await.expect("semaphore");
        let ctx = SubCtx {
            permit: Some(permit),
            ..ctx
        };
        handles.push(tokio::spawn(async move {
            match kind {
                HubKind::Longpoll => longpoll_subscriber(ctx).await,
                HubKind::Sse => sse_subscriber(ctx).await,
            }
        }));
    }
    // Wait (bounded) until the server counts every subscriber.
    let t_reg = Instant::now();
    let mut counted = 0;
    while t_reg.elapsed() < Duration::from_secs(60) {
        counted = server_subscribers(&target, admin, &net).await.unwrap_or(0);
        if counted >= subs {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let open_secs = t_open.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs(hold_secs)).await;
    let (rss1, pss1) = server_mem(&cli.pids);
    let counted_after_hold = server_subscribers(&target, admin, &net).await.unwrap_or(0);

    // The publisher: one keep-alive connection, one POST at a time.
    let mut publisher = target.open(&net).await.context("publisher")?;
    let pad = "x".repeat(payload_bytes);
    let stall = Duration::from_millis(cli.stall_ms);
    let hard = Instant::now() + Duration::from_secs(max_secs);
    let mut publish_errors = Vec::new();
    let mut stalls = 0;
    let mut sent = 0;
    let o0 = Others::snapshot(&cli.pids);
    let s0 = server_ticks(&cli.pids);
    let c0 = self_ticks();
    let first_send = now_us(tally.base);
    for k in 0..messages {
        if Instant::now() >= hard {
            break;
        }
        if k >= window && !tally.wait_complete(k - window, stall, hard).await {
            stalls += 1;
        }
        let body = format!("{k} {} {pad}", now_us(tally.base));
        let req = target.publish_request(&body);
        let res = async {
            publisher.send(req.as_bytes()).await?;
            let head = publisher.head().await?;
            let _ = publisher.body(&head).await?;
            anyhow::Ok(head.status)
        }
        .await;
        match res {
            Ok(s) if (200..300).contains(&s) => sent += 1,
            Ok(s) => {
                publish_errors.push(format!("status {s}"));
                sent += 1;
            }
            Err(e) => {
                publish_errors.push(format!("{e:#}"));
                publisher = target.open(&net).await.context("publisher")?;
            }
        }
    }
    tally.drain(stall, hard).await;
    let s1 = server_ticks(&cli.pids);
    let c1 = self_ticks();
    let others_s = o0.since(&cli.pids);
    let last = tally.last_recv_us.load(Ordering::Relaxed);
    let _ = stop_tx.send(true);
    let mut lat = Vec::with_capacity(subs * messages);
    let mut reconnects = 0;
    let mut resets = 0;
    let mut empty_polls = 0;
    let mut requests = 0;
    let mut errors = Vec::new();
    for h in handles {
        if let Ok(r) = h.await {
            lat.extend(r.lat);
            reconnects += r.reconnects;
            resets += r.resets;
            empty_polls += r.empty_polls;
            requests += r.requests;
            errors.extend(r.errors);
        }
    }
    lat.sort_unstable();
    let delivered = tally.delivered.load(Ordering::Relaxed);
    let expected = (subs * sent) as u64;
    let secs = last.saturating_sub(first_send) as f64 / 1e6;
    let server_s = (s1 - s0) as f64 / CLK_TCK;
    let client_s = (c1 - c0) as f64 / CLK_TCK;
    let per = |a: u64, b: u64| (a as f64 - b as f64) / subs as f64;
    let mut out = json!({
        "label": cli.label, "mode": "hub-fanout", "server": format!("{server:?}"), "kind": format!("{kind:?}"),
        "subs": subs, "counted": counted, "counted_after_hold": counted_after_hold,
        "open_secs": open_secs, "messages_sent": sent, "window": window,
        "payload_bytes": payload_bytes,
        "expected": expected, "delivered": delivered, "missing": expected.saturating_sub(delivered),
        "duplicates": tally.duplicates.load(Ordering::Relaxed),
        "malformed": tally.out_of_range.load(Ordering::Relaxed),
        "stalls": stalls, "reconnects": reconnects, "resets": resets, "empty_polls": empty_polls,
        "requests": requests,
        "secs": secs, "deliveries_per_s": if secs > 0.0 { delivered as f64 / secs } else { 0.0 },
        "lat_ms_p50": pct(&lat, 0.50), "lat_ms_p99": pct(&lat, 0.99), "lat_ms_max": pct(&lat, 1.0),
        "server_cpu_s": server_s, "client_cpu_s": client_s,
        "server_us_per_delivery": if delivered > 0 { server_s * 1e6 / delivered as f64 } else { -1.0 },
        "client_us_per_delivery": if delivered > 0 { client_s * 1e6 / delivered as f64 } else { -1.0 },
        "server_cpu_pct": if secs > 0.0 { server_s * 100.0 / secs } else { 0.0 },
        "client_cpu_pct": if secs > 0.0 { client_s * 100.0 / secs } else { 0.0 },
        "others_cpu_pct": if secs > 0.0 { others_s * 100.0 / secs } else { 0.0 },
        "rss0_kib": rss0, "rss1_kib": rss1, "pss0_kib": pss0, "pss1_kib": pss1,
        "rss_per_sub_kib": per(rss1, rss0), "pss_per_sub_kib": per(pss1, pss0),
        "errors": error_kinds(&errors), "publish_errors": error_kinds(&publish_errors),
    });
    // Apart: one more key in the literal above exceeds json!'s macro recursion limit.
    out["tls"] = json!(tls);
    Ok(out)
}

// ---------------------------------------------------------------------------------------------

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // A report, not a measurement: Markdown on stdout, no runtime.
    if let Mode::ConnsReport(args) = &cli.mode {
        print!("{}", conns::write_report(args)?);
        return Ok(());
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let net = Arc::new(Net {
        sources: cli.sources,
        next: AtomicUsize::new(0),
        step: Duration::from_millis(cli.timeout_ms),
    });
    let out = rt.block_on(async {
        match &cli.mode {
            Mode::SioFanout {
                url,
                receiver_urls,
                clients,
                events,
                window,
                rate,
                payload_bytes,
                max_secs,
            } => {
                sio_fanout(
                    &cli,
                    net,
                    url,
                    receiver_urls,
                    *clients,
                    *events,
                    (*window).max(1),
                    *rate,
                    *payload_bytes,
                    *max_secs,
                )
                .await
            }
            Mode::SioIdle {
                url,
                steps,
                hold_secs,
            } => sio_idle(&cli, net, url, steps, *hold_secs).await,
            Mode::HubFanout {
                server,
                kind,
                addr,
                tls,
                admin,
                topic,
                subs,
                messages,
                window,
                payload_bytes,
                hold_secs,
                max_secs,
            } => {
                hub_fanout(
                    &cli,
                    net,
                    *server,
                    *kind,
                    *addr,
                    *tls,
                    *admin,
                    topic,
                    *subs,
                    *messages,
                    (*window).max(1),
                    *payload_bytes,
                    *hold_secs,
                    *max_secs,
                )
                .await
            }
            Mode::Conns(args) => {
                conns::conns(&cli.label, &cli.pids, net, cli.connect_concurrency, args).await
            }
            Mode::ConnsReport(_) => bail!("conns-report runs before the runtime starts"),
        }
    });
    // Thousands of connections: do not wait for every task's teardown.
    match out {
        Ok(v) => {
            println!("{v}");
            rt.shutdown_timeout(Duration::from_millis(100));
            Ok(())
        }
        Err(e) => {
            rt.shutdown_timeout(Duration::from_millis(100));
            Err(e)
        }
    }
}
