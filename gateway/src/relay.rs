//! The app exchange for a request whose body the gateway holds whole ([`buffering::Body`]):
//! pick a server, send the request with `Content-Length`, relay the answer, either streamed or
//! through a [`buffering::Fifo`] that reads the app as fast as it writes.
//!
//! This does not go through pingora's proxy loop because pingora 0.9 opens the upstream
//! connection before it reads the body (so a slow upload would hold an app worker the whole
//! time), and a body read earlier reaches the upstream only when it fits pingora's 64 KiB retry
//! buffer. The pieces are pingora's all the same: its connector (and connection pool) and its
//! HTTP/1.1 client session; the app is asked only once the body is complete.
//!
//! Holding the body makes a retry on another server safe for any method, as long as the app
//! cannot have started on the request: a connect failure, or a kept connection that the app had
//! closed (it fails on the first write, or, for idempotent methods, answers nothing at all).

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use pingora::connectors::http::v1::Connector;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::HttpPeer;
use pingora::protocols::http::v1::client::HttpSession as Upstream;
use pingora::proxy::Session;
use pingora::{Error, ErrorType, Result};

use crate::accel::Internal;
use crate::buffering::{self, Body, Feeder, Fifo};
use crate::compression::{self, Encoder, Settings};
use crate::upstream::{InFlight, Pool};

/// Keep-alive connections to the app are closed before a typical app server's own keep-alive
/// timeout (Puma: 20 s), so a request is never written to a connection it is closing.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(15);

/// Attempts on kept connections that turn out closed, before a new connection is required.
const STALE_RETRIES: usize = 2;

/// Why the app was not asked or did not answer; nothing was sent to the client yet.
pub use crate::upstream::Failure;

/// Response buffering settings, when the route has it on.
/// How [`forward`] ended when the app answered.
pub enum Answer {
    /// The answer was relayed to the client.
    Sent,
    /// The app answered with `X-Accel-Redirect` or `X-Sendfile` (this head; its body is not
    /// wanted, and the app connection is closed rather than drained): the caller serves the
    /// file. Nothing was sent to the client yet.
    NamesAFile(Box<ResponseHeader>),
}

pub struct Call<'a> {
    pub pool: &'a Arc<Pool>,
    pub connector: &'a Connector,
    /// The request with the forwarding headers applied.
    pub req: RequestHeader,
    /// `None`: the request has no body.
    pub body: Option<&'a Body>,
    pub client: Option<IpAddr>,
    pub hsts: Option<&'a str>,
    pub buffering: Option<buffering::ResponseBuffering>,
    /// Where `X-Accel-Redirect` / `X-Sendfile` answers are served from.
    pub internal: &'a Internal,
    /// The route's compression settings (`None`: off).
    pub compression: Option<&'a Settings>,
    /// The server that answered, for the access log.
    pub server: &'a mut Option<usize>,
}

/// The request as the app gets it: HTTP/1.1, a `Host`, and the held body's exact length in
/// place of whatever framing the client used (chunked, HTTP/2 frames, `Expect`).
pub fn upstream_request(mut req: RequestHeader, body_len: Option<u64>) -> Result<RequestHeader> {
    req.set_version(http::Version::HTTP_11);
    if !req.headers.contains_key(http::header::HOST) {
        let host = req
            .uri
            .authority()
            .map(|a| a.as_str().to_string())
            .unwrap_or_default();
        req.insert_header(http::header::HOST, host)?;
    }
    req.remove_header(&http::header::TRANSFER_ENCODING);
    req.remove_header(&http::header::EXPECT);
    req.remove_header(&http::header::CONTENT_LENGTH);
    if let Some(n) = body_len {
        req.insert_header(http::header::CONTENT_LENGTH, n.to_string())?;
    }
    Ok(req)
}

/// What happened on one connection.
enum Sent {
    /// The answer's head arrived; `false`: the connection must not be kept (the request was
    /// not fully sent).
    Answered(Box<Upstream>, bool),
    /// A kept connection that the app had already closed: nothing reached it.
    Stale,
    Failed(Failure),
}

async fn send(
    mut up: Upstream,
    req: &RequestHeader,
    body: Option<&Body>,
    reused: bool,
    idempotent: bool,
    addr: &str,
) -> Sent {
    let fail = |e: Box<Error>| match e.etype() {
        ErrorType::ReadTimedout | ErrorType::WriteTimedout => Failure::Timeout(addr.to_string()),
        _ => Failure::BadAnswer(addr.to_string(), e.to_string()),
    };
    if let Err(e) = up.write_request_header(Box::new(req.clone())).await {
        return if reused {
            Sent::Stale
        } else {
            Sent::Failed(fail(e))
        };
    }
    // An app may answer before it has read the whole body (a 413 of its own) and close: that
    // answer is still relayed, on a connection that is not kept.
    let mut cut_short = None;
    if let Some(body) = body.filter(|b| !b.is_empty()) {
        let mut first = true;
        let mut replay = body.replay();
        loop {
            let chunk = match replay.next().await {
                Ok(Some(c)) => c,
                Ok(None) => break,
                Err(e) => {
                    return Sent::Failed(Failure::BadAnswer(
                        addr.to_string(),
                        format!("reading the held body back: {e}"),
                    ))
                }
            };
            if let Err(e) = up.write_body(&chunk).await {
                if reused && first {
                    return Sent::Stale;
                }
                cut_short = Some(e);
                break;
            }
            first = false;
        }
    }
    if cut_short.is_none() {
        if let Err(e) = up.finish_body().await {
            cut_short = Some(e);
        }
    }
    loop {
        match up.read_response().await {
            Ok(_) => {}
            Err(e) => {
                if let Some(write_error) = cut_short {
                    return Sent::Failed(fail(write_error));
                }
                let nothing = matches!(
                    e.etype(),
                    ErrorType::ConnectionClosed | ErrorType::ConnectError | ErrorType::ReadError
                );
                return if reused && idempotent && nothing {
                    Sent::Stale
                } else {
                    Sent::Failed(fail(e))
                };
            }
        }
        match up.get_status().map(|s| s.as_u16()) {
            // Interim answers (100 Continue, 103 Early Hints) are not relayed: the body was
            // already taken from the client.
            Some(100..=199) => continue,
            Some(_) => return Sent::Answered(Box::new(up), cut_short.is_none()),
            None => return Sent::Failed(Failure::BadAnswer(addr.to_string(), "no status".into())),
        }
    }
}

/// Ask the app and relay its answer. `Ok(Err(_))`: nothing was sent to the client yet, and the
/// caller answers with the failure's status. `Err(_)`: the client connection is broken.
pub async fn forward(
    session: &mut Session,
    call: Call<'_>,
) -> Result<std::result::Result<Answer, Failure>> {
    let pool = call.pool;
    let body_len = match call.body {
        Some(b) => Some(b.len()),
        // A body-less request that still said `Content-Length: 0` keeps saying it.
        None => call
            .req
            .headers
            .contains_key(http::header::CONTENT_LENGTH)
            .then_some(0),
    };
    let idempotent = call.req.method.is_idempotent();
    let head_only = call.req.method == http::Method::HEAD;
    let req = upstream_request(call.req, body_len)?;

    let mut tried = Vec::new();
    let mut stale = 0;
    let (mut up, i, peer, in_flight, keep) = loop {
        let Some(i) = pool.select(call.client, &tried) else {
            return Ok(Err(Failure::NoHealthyServer));
        };
        let addr = &pool.servers[i].addr;
        let Ok(mut peer) = addr.http_peer() else {
            return Ok(Err(Failure::Connect(
                addr.to_string(),
                "socket path is not UTF-8".into(),
            )));
        };
        peer.options.connection_timeout = Some(pool.connect_timeout);
        peer.options.total_connection_timeout = Some(pool.connect_timeout);
        peer.options.read_timeout = Some(pool.read_timeout);
        peer.options.write_timeout = Some(pool.read_timeout);
        peer.options.idle_timeout = Some(IDLE_TIMEOUT);
        let (mut up, reused) = match call.connector.get_http_session(&peer).await {
            Ok(s) => s,
            Err(e) => {
                let failure = match e.etype() {
                    ErrorType::ConnectTimedout => Failure::Timeout(addr.to_string()),
                    _ => Failure::Connect(addr.to_string(), e.to_string()),
                };
                tracing::warn!(upstream = %pool.name, server = %addr, error = %e, "connect failed");
                tried.push(i);
                if pool.select(call.client, &tried).is_none() {
                    return Ok(Err(failure));
                }
                continue;
            }
        };
        up.read_timeout = Some(pool.read_timeout);
        up.write_timeout = Some(pool.read_timeout);
        *call.server = Some(i);
        let in_flight = pool.begin(i);
        let reused = reused && stale < STALE_RETRIES;
        match send(up, &req, call.body, reused, idempotent, &addr.to_string()).await {
            Sent::Answered(up, keep) => break (*up, i, peer, in_flight, keep),
            Sent::Stale => {
                tracing::debug!(upstream = %pool.name, server = %addr, "a kept connection was closed by the app; sending again");
                stale += 1;
            }
            Sent::Failed(f) => return Ok(Err(f)),
        }
    };

    let Some(mut head) = up.resp_header().cloned() else {
        return Ok(Err(Failure::BadAnswer(
            pool.servers[i].addr.to_string(),
            "no response head".into(),
        )));
    };
    if call.internal.directive(&head).is_some() {
        return Ok(Ok(Answer::NamesAFile(Box::new(head))));
    }
    // Decided before the forwarding rules strip the app's `X-Accel-Buffering`.
    let buffer = call
        .buffering
        .filter(|_| buffering::response_may_buffer(&head) && !head_only);
    crate::forwarding::response(&mut head);
    if let Some(h) = call.hsts {
        head.insert_header("strict-transport-security", h)?;
    }
    head.remove_header("x-accel-buffering");
    let no_body = head_only || matches!(head.status.as_u16(), 204 | 304);
    let done = no_body || up.is_body_done();
    if !no_body
        && !done
        && !head.headers.contains_key(http::header::CONTENT_LENGTH)
        && !head.headers.contains_key(http::header::TRANSFER_ENCODING)
    {
        // A close-delimited answer (HTTP/1.0 style) is re-framed so the client connection can
        // be kept, as pingora's proxy does.
        head.set_version(http::Version::HTTP_11);
        head.insert_header(http::header::TRANSFER_ENCODING, "chunked")?;
    }
    let mut encoder: Option<Encoder> = None;
    if let (Some(settings), false) = (call.compression, no_body || done) {
        let d = compression::decide(
            settings,
            session.req_header().into(),
            head.status,
            &head.headers,
        );
        encoder = compression::apply(settings, d, &mut head)?;
    }
    session.write_response_header(Box::new(head), done).await?;
    let connector = call.connector;
    let kept = keep.then_some((connector, &peer));
    if done {
        release(kept, up).await;
        return Ok(Ok(Answer::Sent));
    }

    match buffer {
        None => {
            loop {
                match up.read_body_bytes().await {
                    Ok(Some(chunk)) => {
                        let out = encoded(&mut encoder, Some(chunk), false)?;
                        if !out.is_empty() {
                            session.write_response_body(Some(out), false).await?
                        }
                    }
                    Ok(None) => break,
                    Err(e) => return Err(e.into_up()),
                }
            }
            let end = encoded(&mut encoder, None, true)?;
            session
                .write_response_body((!end.is_empty()).then_some(end), true)
                .await?;
            release(kept, up).await;
        }
        Some(b) => {
            let fifo = Fifo::new(b.memory, b.max_file, b.dir);
            let peak = buffered(session, up, fifo, kept, in_flight, encoder).await?;
            if peak > 0 {
                tracing::debug!(upstream = %pool.name, on_disk = peak, "answer buffered through a temporary file");
            }
        }
    }
    Ok(Ok(Answer::Sent))
}

/// Each piece read from the app, compressed when the answer is (flushed per piece, as the
/// proxy does, so a streaming app is not held back by the encoder).
fn encoded(encoder: &mut Option<Encoder>, chunk: Option<Bytes>, end: bool) -> Result<Bytes> {
    match encoder.as_mut() {
        Some(e) => e.piece(chunk.as_deref(), end).map_err(compression::error),
        None => Ok(chunk.unwrap_or_default()),
    }
}

/// Back to the pool for the next request, unless the exchange left it unusable (`None`: it is
/// closed).
async fn release(pool: Option<(&Connector, &HttpPeer)>, up: Upstream) {
    if let Some((connector, peer)) = pool {
        connector
            .release_http_session(up, peer, Some(IDLE_TIMEOUT))
            .await;
    }
}

/// Read the app's answer into `fifo` as fast as it comes while the client is fed from the other
/// end; the app's connection is released (and its worker free) as soon as the answer is in, and
/// the server stops counting the request as in flight (`least_conn`). Returns the most bytes
/// that waited on disk.
async fn buffered(
    session: &mut Session,
    mut up: Upstream,
    fifo: Fifo,
    kept: Option<(&Connector, &HttpPeer)>,
    in_flight: InFlight,
    mut encoder: Option<Encoder>,
) -> Result<u64> {
    let mut feeder = Feeder::new(session, fifo);
    loop {
        match feeder.read(up.read_body_bytes()).await? {
            Ok(Some(c)) => feeder.push(encoded(&mut encoder, Some(c), false)?).await?,
            Ok(None) => {}
            Err(e) => return Err(e.into_up()),
        }
        if up.is_body_done() {
            release(kept, up).await;
            drop(in_flight);
            feeder.push(encoded(&mut encoder, None, true)?).await?;
            return feeder.finish().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_app_gets_the_held_length_and_no_client_framing() {
        let mut req = RequestHeader::build("POST", b"/upload", None).expect("req");
        req.insert_header("host", "example.com").expect("h");
        req.insert_header("transfer-encoding", "chunked")
            .expect("h");
        req.insert_header("expect", "100-continue").expect("h");
        let up = upstream_request(req, Some(12345)).expect("rewritten");
        assert_eq!(up.headers["content-length"], "12345");
        assert!(up.headers.get("transfer-encoding").is_none());
        assert!(up.headers.get("expect").is_none());
        assert_eq!(up.headers["host"], "example.com");
        assert_eq!(up.version, http::Version::HTTP_11);
    }

    #[test]
    fn an_http2_request_gets_a_host_from_its_authority() {
        let mut req = RequestHeader::build("GET", b"/x", None).expect("req");
        req.set_uri("https://example.com:8443/x".parse().expect("uri"));
        req.set_version(http::Version::HTTP_2);
        let up = upstream_request(req, None).expect("rewritten");
        assert_eq!(up.headers["host"], "example.com:8443");
        assert!(up.headers.get("content-length").is_none());
    }
}
