//! `ws-load`: WebSocket passthrough load client for the benchmarks (bench/ws_passthrough.sh).
//!
//! `ws-load burst`: N sessions, C at a time. Each session connects (TCP, TLS for wss, WebSocket
//! handshake), sends one text message, expects the same text back, closes and waits for the
//! server's close. A session is LOST when it fails to connect, gets no echo within the timeout,
//! gets a wrong echo, or is closed before its echo; a session that got its echo but whose closing
//! handshake did not complete is counted apart (`close_unclean`), it is not lost.
//!
//! `ws-load idle`: open K sessions, check each echoes, hold them all idle (no frame either way)
//! for D seconds while watching for the server closing them, then check each still echoes.
//!
//! The server certificate is NOT verified (benchmarks use a throwaway self-signed one).
//! The last stdout line is one JSON object with every figure (the scripts parse it).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use futures_util::{SinkExt, StreamExt};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, SignatureScheme};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpSocket, TcpStream};
use tokio_rustls::TlsConnector;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

#[derive(Parser)]
#[command(name = "ws-load", about = "WebSocket passthrough load client")]
struct Cli {
    /// ws://HOST:PORT/PATH or wss://HOST:PORT/PATH (HOST must be an IP address; SNI is `localhost`).
    #[arg(long, global = true, default_value = "wss://127.0.0.1:8443/cable")]
    url: String,
    /// Name printed in the results.
    #[arg(long, global = true, default_value = "target")]
    label: String,
    /// Per-step timeout (connect, TLS, handshake, echo, close), milliseconds.
    #[arg(long, global = true, default_value_t = 5000)]
    timeout_ms: u64,
    /// Size of each message, bytes.
    #[arg(long, global = true, default_value_t = 64)]
    message_bytes: usize,
    /// Disable TLS session resumption (every session does a full handshake).
    #[arg(long, global = true)]
    no_resume: bool,
    /// Spread connections over this many loopback source addresses (127.0.0.1, .2, ...).
    #[arg(long, global = true, default_value_t = 1)]
    sources: u8,
    #[command(subcommand)]
    mode: Mode,
}

#[derive(Subcommand)]
enum Mode {
    /// N sessions at concurrency C: connect, one echo, close.
    Burst {
        #[arg(long, default_value_t = 10_000)]
        sessions: usize,
        #[arg(long, default_value_t = 50)]
        concurrency: usize,
        /// Hard limit for the whole run, seconds: sessions not started by then are reported.
        #[arg(long, default_value_t = 300)]
        max_secs: u64,
    },
    /// Hold K sessions idle for D seconds, then check each still echoes.
    Idle {
        #[arg(long, default_value_t = 20)]
        sessions: usize,
        #[arg(long, default_value_t = 300)]
        idle_secs: u64,
    },
}

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

/// Where and how to connect.
struct Target {
    addr: SocketAddr,
    tls: Option<TlsConnector>,
    url: String,
    step: Duration,
    sources: u8,
    next_source: AtomicUsize,
}

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}
type Ws = WebSocketStream<Box<dyn Io>>;

/// Why a session was lost (or, for `CloseUnclean`, not quite clean).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Fail {
    Connect,
    Tls,
    Handshake,
    EchoTimeout,
    ClosedEarly,
    WrongEcho,
    CloseUnclean,
}

impl Fail {
    fn name(self) -> &'static str {
        match self {
            Fail::Connect => "connect",
            Fail::Tls => "tls",
            Fail::Handshake => "handshake",
            Fail::EchoTimeout => "echo_timeout",
            Fail::ClosedEarly => "closed_early",
            Fail::WrongEcho => "wrong_echo",
            Fail::CloseUnclean => "close_unclean",
        }
    }
}

impl Target {
    fn new(cli: &Cli) -> anyhow::Result<Target> {
        let (tls, rest) = if let Some(r) = cli.url.strip_prefix("wss://") {
            (true, r)
        } else if let Some(r) = cli.url.strip_prefix("ws://") {
            (false, r)
        } else {
            bail!("--url must start with ws:// or wss://");
        };
        let hostport = rest.split('/').next().unwrap_or(rest);
        let addr: SocketAddr = hostport
            .parse()
            .with_context(|| format!("{hostport}: expected IP:PORT"))?;
        let tls = if tls {
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let mut config = ClientConfig::builder_with_provider(provider.clone())
                .with_safe_default_protocol_versions()?
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(NoVerify(provider)))
                .with_no_client_auth();
            // A WebSocket needs HTTP/1.1 (no extended CONNECT over h2 here).
            config.alpn_protocols = vec![b"http/1.1".to_vec()];
            if cli.no_resume {
                config.resumption = rustls::client::Resumption::disabled();
            }
            Some(TlsConnector::from(Arc::new(config)))
        } else {
            None
        };
        Ok(Target {
            addr,
            tls,
            url: cli.url.clone(),
            step: Duration::from_millis(cli.timeout_ms),
            sources: cli.sources.max(1),
            next_source: AtomicUsize::new(0),
        })
    }

    async fn tcp(&self) -> std::io::Result<TcpStream> {
        let socket = if self.addr.is_ipv4() {
            TcpSocket::new_v4()?
        } else {
            TcpSocket::new_v6()?
        };
        if self.sources > 1 && self.addr.is_ipv4() {
            let n = self.next_source.fetch_add(1, Ordering::Relaxed) % self.sources as usize;
            let src = std::net::Ipv4Addr::new(127, 0, 0, 1 + n as u8);
            socket.bind(SocketAddr::new(src.into(), 0))?;
        }
        let s = socket.connect(self.addr).await?;
        s.set_nodelay(true)?;
        Ok(s)
    }

    async fn open(&self) -> Result<Ws, Fail> {
        let tcp = tokio::time::timeout(self.step, self.tcp())
            .await
            .map_err(|_| Fail::Connect)?
            .map_err(|_| Fail::Connect)?;
        let io: Box<dyn Io> = match &self.tls {
            Some(connector) => {
                let name = ServerName::try_from("localhost").expect("valid name");
                let s = tokio::time::timeout(self.step, connector.connect(name, tcp))
                    .await
                    .map_err(|_| Fail::Tls)?
                    .map_err(|_| Fail::Tls)?;
                Box::new(s)
            }
            None => Box::new(tcp),
        };
        let mut req = self
            .url
            .as_str()
            .into_client_request()
            .map_err(|_| Fail::Handshake)?;
        // The certificate is for localhost; the Host header says so too.
        req.headers_mut().insert(
            "host",
            format!("localhost:{}", self.addr.port()).parse().unwrap(),
        );
        let (ws, resp) = tokio::time::timeout(self.step, tokio_tungstenite::client_async(req, io))
            .await
            .map_err(|_| Fail::Handshake)?
            .map_err(|_| Fail::Handshake)?;
        if resp.status() != 101 {
            return Err(Fail::Handshake);
        }
        Ok(ws)
    }
}

/// Send `text` and wait for the same text back.
async fn echo(ws: &mut Ws, text: &str, step: Duration) -> Result<(), Fail> {
    tokio::time::timeout(step, ws.send(Message::text(text)))
        .await
        .map_err(|_| Fail::EchoTimeout)?
        .map_err(|_| Fail::ClosedEarly)?;
    let deadline = tokio::time::Instant::now() + step;
    loop {
        match tokio::time::timeout_at(deadline, ws.next()).await {
            Err(_) => return Err(Fail::EchoTimeout),
            Ok(None) | Ok(Some(Err(_))) | Ok(Some(Ok(Message::Close(_)))) => {
                return Err(Fail::ClosedEarly)
            }
            Ok(Some(Ok(Message::Text(t)))) if t.as_str() == text => return Ok(()),
            Ok(Some(Ok(Message::Text(_)))) | Ok(Some(Ok(Message::Binary(_)))) => {
                return Err(Fail::WrongEcho)
            }
            Ok(Some(Ok(_))) => continue, // ping/pong
        }
    }
}

/// Close and wait for the server's close and the end of the stream.
async fn close(mut ws: Ws, step: Duration) -> Result<(), Fail> {
    let run = async {
        ws.close(None).await.map_err(|_| Fail::CloseUnclean)?;
        loop {
            match ws.next().await {
                None => return Ok(()),
                Some(Ok(_)) => continue,
                // tungstenite reports the end after a completed close as ConnectionClosed.
                Some(Err(tokio_tungstenite::tungstenite::Error::ConnectionClosed)) => return Ok(()),
                Some(Err(_)) => return Err(Fail::CloseUnclean),
            }
        }
    };
    tokio::time::timeout(step, run)
        .await
        .map_err(|_| Fail::CloseUnclean)?
}

fn message(i: usize, size: usize) -> String {
    let mut m = format!("session {i} ");
    while m.len() < size {
        m.push('x');
    }
    m
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn count_fails(fails: &[Fail]) -> serde_json::Map<String, serde_json::Value> {
    let mut m = serde_json::Map::new();
    for f in [
        Fail::Connect,
        Fail::Tls,
        Fail::Handshake,
        Fail::EchoTimeout,
        Fail::ClosedEarly,
        Fail::WrongEcho,
        Fail::CloseUnclean,
    ] {
        m.insert(
            f.name().into(),
            fails.iter().filter(|x| **x == f).count().into(),
        );
    }
    m
}

async fn burst(
    cli: &Cli,
    target: Arc<Target>,
    sessions: usize,
    concurrency: usize,
    max_secs: u64,
) -> serde_json::Value {
    let next = Arc::new(AtomicUsize::new(0));
    let results: Arc<Mutex<Vec<SessionResult>>> =
        Arc::new(Mutex::new(Vec::with_capacity(sessions)));
    let started = Instant::now();
    let hard = started + Duration::from_secs(max_secs);
    let size = cli.message_bytes;
    let workers: Vec<_> = (0..concurrency.max(1))
        .map(|_| {
            let (next, results, target) = (next.clone(), results.clone(), target.clone());
            tokio::spawn(async move {
                loop {
                    if Instant::now() > hard {
                        break;
                    }
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= sessions {
                        break;
                    }
                    let t0 = Instant::now();
                    let text = message(i, size);
                    let outcome = async {
                        let mut ws = target.open().await?;
                        echo(&mut ws, &text, target.step).await?;
                        Ok::<Ws, Fail>(ws)
                    }
                    .await;
                    let ms = t0.elapsed().as_secs_f64() * 1e3;
                    let (res, unclean) = match outcome {
                        Ok(ws) => (Ok(()), close(ws, target.step).await.err()),
                        Err(f) => (Err(f), None),
                    };
                    results.lock().unwrap().push((res, ms, unclean));
                }
            })
        })
        .collect();
    for w in workers {
        let _ = w.await;
    }
    let secs = started.elapsed().as_secs_f64();
    let results = results.lock().unwrap();
    let done = results.len();
    let fails: Vec<Fail> = results
        .iter()
        .filter_map(|(r, _, u)| r.err().or(*u))
        .collect();
    let lost = results.iter().filter(|(r, _, _)| r.is_err()).count();
    let mut ok_ms: Vec<f64> = results
        .iter()
        .filter(|(r, _, _)| r.is_ok())
        .map(|(_, ms, _)| *ms)
        .collect();
    ok_ms.sort_by(|a, b| a.partial_cmp(b).unwrap());
    serde_json::json!({
        "mode": "burst",
        "label": cli.label,
        "url": cli.url,
        "sessions": sessions,
        "concurrency": concurrency,
        "attempted": done,
        "not_started": sessions - done,
        "ok": done - lost,
        "lost": lost + (sessions - done),
        "failures": count_fails(&fails),
        "secs": (secs * 1000.0).round() / 1000.0,
        "sessions_per_s": ((done as f64 / secs) * 10.0).round() / 10.0,
        "open_echo_ms_p50": (percentile(&ok_ms, 50.0) * 1000.0).round() / 1000.0,
        "open_echo_ms_p99": (percentile(&ok_ms, 99.0) * 1000.0).round() / 1000.0,
    })
}

async fn idle(
    cli: &Cli,
    target: Arc<Target>,
    sessions: usize,
    idle_secs: u64,
) -> serde_json::Value {
    let started = Instant::now();
    let mut open = Vec::new();
    let mut open_fails = Vec::new();
    for i in 0..sessions {
        let text = message(i, cli.message_bytes);
        match target.open().await {
            Ok(mut ws) => match echo(&mut ws, &text, target.step).await {
                Ok(()) => open.push((i, ws)),
                Err(f) => open_fails.push(f),
            },
            Err(f) => open_fails.push(f),
        }
    }
    eprintln!(
        "[{}] {} sessions open and echoing ({} failed to open); idle for {idle_secs} s",
        cli.label,
        open.len(),
        open_fails.len()
    );
    let idle_start = Instant::now();
    let idle_for = Duration::from_secs(idle_secs);
    // Each session waits, reading, until the idle period ends or the server closes it.
    let step = target.step;
    let size = cli.message_bytes;
    let tasks: Vec<_> = open
        .into_iter()
        .map(|(i, mut ws)| {
            tokio::spawn(async move {
                let end = tokio::time::Instant::from_std(idle_start + idle_for);
                loop {
                    match tokio::time::timeout_at(end, ws.next()).await {
                        Err(_) => break, // idle period over, nothing happened
                        Ok(Some(Ok(Message::Ping(_)))) | Ok(Some(Ok(Message::Pong(_)))) => continue,
                        Ok(_) => {
                            // closed, errored or an unexpected message: dead.
                            return Err(idle_start.elapsed().as_secs_f64());
                        }
                    }
                }
                let text = message(i, size);
                match echo(&mut ws, &text, step).await {
                    Ok(()) => {
                        let _ = close(ws, step).await;
                        Ok(())
                    }
                    // Found dead when poked: it died silently; report the end of the idle time.
                    Err(_) => Err(idle_start.elapsed().as_secs_f64()),
                }
            })
        })
        .collect();
    // Progress every 30 s so a long idle run shows it is alive.
    let progress = {
        let label = cli.label.clone();
        tokio::spawn(async move {
            let mut t = tokio::time::interval(Duration::from_secs(30));
            t.tick().await;
            loop {
                t.tick().await;
                eprintln!(
                    "[{label}] idle {:.0} s / {idle_secs} s",
                    idle_start.elapsed().as_secs_f64()
                );
            }
        })
    };
    let mut alive = 0usize;
    let mut died_at: Vec<f64> = Vec::new();
    for t in tasks {
        match t.await {
            Ok(Ok(())) => alive += 1,
            Ok(Err(at)) => died_at.push((at * 10.0).round() / 10.0),
            Err(_) => died_at.push(f64::NAN),
        }
    }
    progress.abort();
    died_at.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    serde_json::json!({
        "mode": "idle",
        "label": cli.label,
        "url": cli.url,
        "sessions": sessions,
        "idle_secs": idle_secs,
        "open_failed": open_fails.len(),
        "open_failures": count_fails(&open_fails),
        "alive_after_idle": alive,
        "died": died_at.len(),
        "died_at_s": died_at,
        "secs": (started.elapsed().as_secs_f64() * 10.0).round() / 10.0,
    })
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let target = Arc::new(Target::new(&cli)?);
    let out = match cli.mode {
        Mode::Burst {
            sessions,
            concurrency,
            max_secs,
        } => burst(&cli, target, sessions, concurrency, max_secs).await,
        Mode::Idle {
            sessions,
            idle_secs,
        } => idle(&cli, target, sessions, idle_secs).await,
    };
    println!("{out}");
    Ok(())
}

/// One session's outcome, its duration in ms, and the failure of its idle check if any.
type SessionResult = (Result<(), Fail>, f64, Option<Fail>);
