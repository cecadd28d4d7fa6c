//! `gateway probe <https-url>`: an end-to-end check an operator runs against any deployment.
//!
//! It walks the path a real user takes, one step at a time, and stops at the first failure
//! with a sentence saying what broke: the app answers `/ping`, the app's WebSocket echoes, an
//! idle WebSocket survives five seconds (a misconfigured proxy's idle timeout bites there),
//! and Socket.IO's handshake, polling and upgrade work.

use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

/// Each network step gets this long before it counts as failed.
const STEP_TIMEOUT: Duration = Duration::from_secs(10);
/// Long enough for a short idle timeout in a proxy on the way to close a quiet WebSocket.
const IDLE_WAIT: Duration = Duration::from_secs(5);

pub struct Options {
    pub url: String,
    pub insecure: bool,
    /// The app's WebSocket path (Action Cable's `/cable` by default).
    pub ws_path: String,
    pub socketio_path: String,
    pub idle: Duration,
}

impl Options {
    pub fn new(url: String) -> Options {
        Options {
            url,
            insecure: false,
            ws_path: "/cable".into(),
            socketio_path: "/socket.io/".into(),
            idle: IDLE_WAIT,
        }
    }
}

struct Target {
    host: String,
    port: u16,
    tls: Arc<rustls::ClientConfig>,
}

type Failure = String;

/// Run every step, printing as it goes. `Ok(())` means "It worked."
pub async fn run(opts: &Options) -> Result<(), Failure> {
    let target = target(opts)?;
    step("GET /ping answers \"PONG. EOM.\"", ping(&target)).await?;
    step(
        &format!("WebSocket {} echoes a..e", opts.ws_path),
        websocket(&target, opts),
    )
    .await?;
    step(
        "Socket.IO handshake, polling and upgrade",
        socketio(&target, &opts.socketio_path),
    )
    .await?;
    Ok(())
}

async fn step<F: std::future::Future<Output = Result<String, Failure>>>(
    name: &str,
    f: F,
) -> Result<(), Failure> {
    println!("- {name} ...");
    match f.await {
        Ok(detail) => {
            println!("  ok: {detail}");
            Ok(())
        }
        Err(why) => {
            println!("  FAILED: {why}");
            Err(format!("{name}: {why}"))
        }
    }
}

fn target(opts: &Options) -> Result<Target, Failure> {
    let rest = opts
        .url
        .strip_prefix("https://")
        .ok_or_else(|| format!("{:?} is not an https:// URL", opts.url))?;
    let authority = rest.split('/').next().unwrap_or(rest);
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(']') || h.starts_with('[') => (
            h.trim_matches(['[', ']']).to_string(),
            p.parse()
                .map_err(|_| format!("invalid port in {:?}", opts.url))?,
        ),
        _ => (authority.to_string(), 443),
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    let config = if opts.insecure {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerify))
            .with_no_client_auth()
    } else {
        let mut roots = rustls::RootCertStore::empty();
        for cert in pingora::tls::load_native_certs().unwrap_or_default() {
            let _ = roots.add(cert);
        }
        builder.with_root_certificates(roots).with_no_client_auth()
    };
    Ok(Target {
        host,
        port,
        tls: Arc::new(config),
    })
}

async fn connect(t: &Target) -> Result<tokio_rustls::client::TlsStream<TcpStream>, Failure> {
    let tcp = tokio::time::timeout(STEP_TIMEOUT, TcpStream::connect((t.host.as_str(), t.port)))
        .await
        .map_err(|_| format!("connecting to {}:{} timed out", t.host, t.port))?
        .map_err(|e| format!("cannot connect to {}:{}: {e}", t.host, t.port))?;
    let name = ServerName::try_from(t.host.clone()).map_err(|e| e.to_string())?;
    tokio::time::timeout(
        STEP_TIMEOUT,
        tokio_rustls::TlsConnector::from(t.tls.clone()).connect(name, tcp),
    )
    .await
    .map_err(|_| "TLS handshake timed out".to_string())?
    .map_err(|e| {
        format!(
            "TLS handshake failed: {e} (a self-signed or development certificate needs --insecure)"
        )
    })
}

/// One HTTP/1.1 request with `Connection: close`; returns status and body.
async fn http(t: &Target, method: &str, path: &str, body: &str) -> Result<(u16, String), Failure> {
    let mut s = connect(t).await?;
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {}:{}\r\nUser-Agent: gateway-probe\r\nContent-Type: text/plain;charset=UTF-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        t.host,
        t.port,
        body.len()
    );
    s.write_all(req.as_bytes())
        .await
        .map_err(|e| format!("sending the request failed: {e}"))?;
    let mut raw = Vec::new();
    tokio::time::timeout(STEP_TIMEOUT, s.read_to_end(&mut raw))
        .await
        .map_err(|_| format!("no complete answer to {method} {path}"))?
        .or_else(|e| {
            // Servers often close TLS without close_notify after Connection: close.
            if raw.is_empty() {
                Err(format!("reading the answer failed: {e}"))
            } else {
                Ok(0)
            }
        })?;
    parse_answer(&raw)
}

/// Status and body (de-chunked, then decoded as UTF-8 with replacement) of one raw HTTP/1.1
/// answer. Works on bytes: chunk sizes count bytes, and a server's odd bytes must give a
/// readable failure, not a panic on a cut inside a character.
fn parse_answer(raw: &[u8]) -> Result<(u16, String), Failure> {
    let Some(end) = raw.windows(4).position(|w| w == b"\r\n\r\n") else {
        let start = String::from_utf8_lossy(&raw[..raw.len().min(80)]);
        return Err(format!("not an HTTP answer: {start:?}"));
    };
    let head = String::from_utf8_lossy(&raw[..end]);
    let body = &raw[end + 4..];
    let status: u16 = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("no status line in {head:?}"))?;
    let chunked = head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked");
    let body = if chunked {
        dechunk(body)
    } else {
        body.to_vec()
    };
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

fn dechunk(mut s: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(eol) = s.windows(2).position(|w| w == b"\r\n") {
        let size = std::str::from_utf8(&s[..eol]).unwrap_or("").trim();
        let size = size.split(';').next().unwrap_or("");
        let rest = &s[eol + 2..];
        let Ok(n) = usize::from_str_radix(size, 16) else {
            break;
        };
        if n == 0 || rest.len() < n {
            break;
        }
        out.extend_from_slice(&rest[..n]);
        s = rest[n..].strip_prefix(b"\r\n").unwrap_or(&rest[n..]);
    }
    out
}

async fn ping(t: &Target) -> Result<String, Failure> {
    let (status, body) = http(t, "GET", "/ping", "").await?;
    match (status, body.as_str()) {
        (200, "PONG. EOM.") => Ok("PONG. EOM.".into()),
        (502..=504, _) => Err(format!(
            "the gateway answered {status}: the app behind it is down or not answering ({})",
            body.trim()
        )),
        _ => Err(format!(
            "expected 200 \"PONG. EOM.\", got {status} {:?}",
            body.trim()
        )),
    }
}

async fn ws_connect(
    t: &Target,
    path: &str,
) -> Result<tokio_tungstenite::WebSocketStream<tokio_rustls::client::TlsStream<TcpStream>>, Failure>
{
    let stream = connect(t).await?;
    let url = format!("wss://{}:{}{path}", t.host, t.port);
    let (ws, _) = tokio::time::timeout(
        STEP_TIMEOUT,
        tokio_tungstenite::client_async(url.as_str(), stream),
    )
    .await
    .map_err(|_| format!("the WebSocket upgrade on {path} timed out"))?
    .map_err(|e| format!("the WebSocket upgrade on {path} failed: {e}"))?;
    Ok(ws)
}

async fn expect_echo<S>(ws: &mut S, text: &str) -> Result<(), Failure>
where
    S: StreamExt<Item = Result<Message, tokio_tungstenite::tungstenite::Error>>
        + SinkExt<Message>
        + Unpin,
    <S as futures_util::Sink<Message>>::Error: std::fmt::Display,
{
    ws.send(Message::text(text))
        .await
        .map_err(|e| format!("sending {text:?} failed: {e}"))?;
    loop {
        match tokio::time::timeout(STEP_TIMEOUT, ws.next()).await {
            Err(_) => return Err(format!("no echo of {text:?}")),
            Ok(None) => return Err(format!("the connection closed before echoing {text:?}")),
            Ok(Some(Err(e))) => return Err(format!("the connection failed: {e}")),
            Ok(Some(Ok(Message::Text(t)))) if t.as_str() == text => return Ok(()),
            Ok(Some(Ok(Message::Text(t)))) => {
                return Err(format!("expected the echo {text:?}, got {:?}", t.as_str()))
            }
            Ok(Some(Ok(Message::Close(f)))) => {
                return Err(format!("the server closed the connection: {f:?}"))
            }
            Ok(Some(Ok(_))) => continue,
        }
    }
}

async fn websocket(t: &Target, opts: &Options) -> Result<String, Failure> {
    let mut ws = ws_connect(t, &opts.ws_path).await?;
    for m in ["a", "b", "c", "d", "e"] {
        expect_echo(&mut ws, m).await?;
    }
    println!("  five echoes; now idle for {} s", opts.idle.as_secs());
    tokio::time::sleep(opts.idle).await;
    expect_echo(&mut ws, "still there").await.map_err(|e| {
        format!(
            "after {} s idle: {e} (an idle timeout on the way?)",
            opts.idle.as_secs()
        )
    })?;
    let _ = ws.close(None).await;
    Ok(format!(
        "6 echoes, alive after {} s idle",
        opts.idle.as_secs()
    ))
}

async fn socketio(t: &Target, base: &str) -> Result<String, Failure> {
    let q = |rest: &str| format!("{base}?EIO=4&transport={rest}");
    let (status, body) = http(t, "GET", &q("polling"), "").await?;
    if status != 200 || !body.starts_with("0{") {
        return Err(format!(
            "handshake: expected an open packet, got {status} {:?}",
            body.trim()
        ));
    }
    let open: serde_json::Value = serde_json::from_str(&body[1..])
        .map_err(|e| format!("handshake: invalid open packet: {e}"))?;
    let sid = open["sid"]
        .as_str()
        .ok_or("handshake: no sid in the open packet")?
        .to_string();
    let (status, body) = http(t, "POST", &q(&format!("polling&sid={sid}")), "40").await?;
    if status != 200 || body != "ok" {
        return Err(format!(
            "polling POST: expected 200 ok, got {status} {:?}",
            body.trim()
        ));
    }
    let (status, body) = http(t, "GET", &q(&format!("polling&sid={sid}")), "").await?;
    if status != 200 || !body.starts_with("40") {
        return Err(format!(
            "polling GET: expected the CONNECT answer, got {status} {:?}",
            body.trim()
        ));
    }
    let mut ws = ws_connect(t, &q(&format!("websocket&sid={sid}"))).await?;
    ws.send(Message::text("2probe"))
        .await
        .map_err(|e| format!("upgrade: {e}"))?;
    match tokio::time::timeout(STEP_TIMEOUT, ws.next()).await {
        Ok(Some(Ok(Message::Text(t)))) if t.as_str() == "3probe" => {}
        other => return Err(format!("upgrade: expected 3probe, got {other:?}")),
    }
    ws.send(Message::text("5"))
        .await
        .map_err(|e| format!("upgrade: {e}"))?;
    let _ = ws.close(None).await;
    Ok(format!("session {sid} upgraded to WebSocket"))
}

#[derive(Debug)]
struct NoVerify;

impl rustls::client::danger::ServerCertVerifier for NoVerify {
    fn verify_server_cert(
        &self,
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &[rustls::pki_types::CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }
    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        rustls::crypto::ring::default_provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_parsed_byte_exactly() {
        let (status, body) =
            parse_answer(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok").expect("ok");
        assert_eq!((status, body.as_str()), (200, "ok"));
        let chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2;x=y\r\nab\r\n1\r\nc\r\n0\r\n\r\n";
        assert_eq!(parse_answer(chunked).expect("chunked").1, "abc");
    }

    /// Both used to panic: a cut at byte 80 inside a two-byte character, and a one-byte chunk
    /// holding half of one (chunk sizes count bytes, the old code counted in decoded text).
    #[test]
    fn odd_bytes_give_a_failure_or_replacement_not_a_panic() {
        let mut junk = b"x".to_vec();
        junk.extend("é".repeat(60).as_bytes());
        let e = parse_answer(&junk).expect_err("no header block");
        assert!(e.starts_with("not an HTTP answer: \"xé"), "{e}");
        let half = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1\r\n\xc3\r\n1\r\n\xa9\r\n0\r\n\r\n";
        assert_eq!(parse_answer(half).expect("chunked").1, "é");
        assert!(parse_answer(b"garbage\r\n\r\n").is_err());
    }
}
