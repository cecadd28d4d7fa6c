//! The app exchange for a request whose body the gateway holds whole ([`buffering::Body`]), or
//! whose answer it reads ahead: the HTTP [`Exchange`] of the attempt loop
//! ([`crate::attempt`]) sends the request with `Content-Length`, then the answer is relayed,
//! either streamed or through a [`buffering::Fifo`] that reads the app as fast as it writes,
//! after the finisher ([`crate::finish`]) has seen its head.
//!
//! This does not go through pingora's proxy loop because pingora 0.9 opens the upstream
//! connection before it reads the body (so a slow upload would hold an app worker the whole
//! time), and a body read earlier reaches the upstream only when it fits pingora's 64 KiB retry
//! buffer. The pieces are pingora's all the same: its connector (and connection pool) and its
//! HTTP/1.1 client session; the app is asked only once the body is complete.
//!
//! Holding the body makes a retry on another server safe for any method, as long as the app
//! cannot have started on the request (the attempt loop's rule): a connect failure, or a kept
//! connection that the app had closed (it fails on the first write, or, for idempotent
//! methods, answers nothing at all).

use pingora::connectors::http::v1::Connector;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::HttpPeer;
use pingora::protocols::http::v1::client::HttpSession as Upstream;
use pingora::proxy::Session;
use pingora::{ErrorType, Result};

use crate::accel::Internal;
use crate::addr::{Addr, HTTP_IDLE_TIMEOUT};
use crate::attempt::{Attempt, Exchange, InFlight, Loop, To};
use crate::buffering::{self, Body, Feeder, Fifo};
use crate::failure::{Failure, Fault};
use crate::finish::{Answer, Finish, Origin, Out};

pub struct Call<'a> {
    pub connector: &'a Connector,
    /// The request with the forwarding headers applied.
    pub req: RequestHeader,
    /// `None`: the request has no body.
    pub body: Option<&'a Body>,
    pub buffering: Option<buffering::ResponseBuffering>,
    /// Where `X-Accel-Redirect` / `X-Sendfile` answers are served from.
    pub internal: &'a Internal,
    pub finish: Finish<'a>,
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

/// An answered attempt: the app's connection with the answer's head read, its peer (to keep the
/// connection), and whether it may be kept (the request was fully sent).
pub struct Answered {
    up: Box<Upstream>,
    peer: HttpPeer,
    keep: bool,
}

/// HTTP/1.1 through pingora's connector, with the body held whole.
struct Held<'a> {
    connector: &'a Connector,
    req: &'a RequestHeader,
    body: Option<&'a Body>,
    idempotent: bool,
}

impl Exchange for Held<'_> {
    type Conn = Answered;

    async fn attempt(&mut self, to: To<'_>, reuse: bool) -> Attempt<Answered> {
        let peer = match to.addr.http_peer(to.timeouts) {
            Ok(p) => p,
            Err(e) => return Attempt::NotSent(Failure::from_error(to.addr, &e)),
        };
        let (mut up, reused) = match self.connector.get_http_session(&peer).await {
            Ok(s) => s,
            Err(e) => return Attempt::NotSent(Failure::from_error(to.addr, &e)),
        };
        up.read_timeout = Some(to.timeouts.read);
        up.write_timeout = Some(to.timeouts.read);
        let stale_possible = reused && reuse;
        match send(
            up,
            self.req,
            self.body,
            stale_possible,
            self.idempotent,
            to.addr,
        )
        .await
        {
            Attempt::Answered((up, keep)) => Attempt::Answered(Answered { up, peer, keep }),
            Attempt::Stale => Attempt::Stale,
            Attempt::NotSent(f) => Attempt::NotSent(f),
            Attempt::Failed(f) => Attempt::Failed(f),
        }
    }
}

/// Send the request on `up` and read the answer's head. `reused`: a kept connection that may
/// turn out closed by the app. Answered: the connection, and whether it may be kept (`false`
/// when the request was not fully sent).
async fn send(
    mut up: Upstream,
    req: &RequestHeader,
    body: Option<&Body>,
    reused: bool,
    idempotent: bool,
    addr: &Addr,
) -> Attempt<(Box<Upstream>, bool)> {
    let fail = |e: &pingora::Error| Attempt::Failed(Failure::from_error(addr, e).into());
    if let Err(e) = up.write_request_header(Box::new(req.clone())).await {
        return if reused {
            Attempt::Stale
        } else {
            Attempt::NotSent(Failure::from_error(addr, &e))
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
                // The gateway's own temporary file: its fault, not the app's.
                Err(e) => {
                    return Attempt::Failed(Fault::Internal(format!(
                        "reading the held body back: {e}"
                    )))
                }
            };
            if let Err(e) = up.write_body(&chunk).await {
                if reused && first {
                    return Attempt::Stale;
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
                    return fail(&write_error);
                }
                let nothing = matches!(
                    e.etype(),
                    ErrorType::ConnectionClosed | ErrorType::ConnectError | ErrorType::ReadError
                );
                return if reused && idempotent && nothing {
                    Attempt::Stale
                } else {
                    fail(&e)
                };
            }
        }
        match up.get_status().map(|s| s.as_u16()) {
            // Interim answers (100 Continue, 103 Early Hints) are not relayed: the body was
            // already taken from the client.
            Some(100..=199) => continue,
            Some(_) => return Attempt::Answered((Box::new(up), cut_short.is_none())),
            None => {
                return Attempt::Failed(
                    Failure::BadAnswer(addr.to_string(), "no status".into()).into(),
                )
            }
        }
    }
}

/// Ask the app through `attempts` and relay its answer. `Ok(Err(_))`: nothing was sent to the
/// client yet, and the caller answers with the fault's status. `Err(_)`: the client connection
/// is broken, or the answer broke off after its head went out.
pub async fn forward(
    session: &mut Session,
    attempts: Loop<'_>,
    call: Call<'_>,
) -> Result<std::result::Result<Answer, Fault>> {
    let upstream = attempts.upstream();
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
    let mut exchange = Held {
        connector: call.connector,
        req: &req,
        body: call.body,
        idempotent,
    };
    let won = match attempts.run(&mut exchange).await {
        Ok(won) => won,
        Err(fault) => return Ok(Err(fault)),
    };
    let Answered { mut up, peer, keep } = won.conn;

    let Some(mut head) = up.resp_header().cloned() else {
        return Ok(Err(Failure::BadAnswer(
            won.addr.to_string(),
            "no response head".into(),
        )
        .into()));
    };
    if call.internal.directive(&head).is_some() {
        return Ok(Ok(Answer::NamesAFile(Box::new(head))));
    }
    // Decided before the finisher takes the app's `X-Accel-Buffering` off.
    let buffer = call
        .buffering
        .filter(|_| buffering::response_may_buffer(&head) && !head_only);
    let no_body = head_only || matches!(head.status.as_u16(), 204 | 304);
    let done = no_body || up.is_body_done();
    let mut out = call.finish.head(
        session.req_header(),
        session.is_http2(),
        &mut head,
        Origin::App,
        done,
    )?;
    session.write_response_header(Box::new(head), done).await?;
    let connector = call.connector;
    let kept = keep.then_some((connector, &peer));
    if done {
        release(kept, *up).await;
        return Ok(Ok(Answer::Sent));
    }

    match buffer {
        None => {
            loop {
                match up.read_body_bytes().await {
                    Ok(Some(chunk)) => {
                        let chunk = out.piece(Some(chunk), false)?;
                        if !chunk.is_empty() {
                            session.write_response_body(Some(chunk), false).await?
                        }
                    }
                    Ok(None) => break,
                    Err(e) => return Err(e.into_up()),
                }
            }
            let end = out.piece(None, true)?;
            session
                .write_response_body((!end.is_empty()).then_some(end), true)
                .await?;
            release(kept, *up).await;
        }
        Some(b) => {
            let fifo = Fifo::new(b.memory, b.max_file, b.dir);
            let peak = buffered(session, *up, fifo, kept, won.in_flight, out).await?;
            if peak > 0 {
                tracing::debug!(
                    upstream,
                    on_disk = peak,
                    "answer buffered through a temporary file"
                );
            }
        }
    }
    Ok(Ok(Answer::Sent))
}

/// The gateway's own question to the app (a realtime service's authorization callback): sent
/// through `attempts` like a client's request (the same servers, retries and failure table),
/// and the whole answer read into memory, at most `limit` bytes of body.
pub async fn ask(
    connector: &Connector,
    attempts: Loop<'_>,
    req: RequestHeader,
    body: Option<&Body>,
    limit: usize,
) -> std::result::Result<(ResponseHeader, bytes::Bytes), Fault> {
    let req = upstream_request(req, body.map(Body::len))
        .map_err(|e| Fault::Internal(format!("building the request: {e}")))?;
    let mut exchange = Held {
        connector,
        req: &req,
        body,
        idempotent: req.method.is_idempotent(),
    };
    let won = attempts.run(&mut exchange).await?;
    let Answered { mut up, peer, keep } = won.conn;
    let bad = |why: String| Fault::from(Failure::BadAnswer(won.addr.to_string(), why));
    let Some(head) = up.resp_header().cloned() else {
        return Err(bad("no response head".into()));
    };
    let mut answer = bytes::BytesMut::new();
    if !matches!(head.status.as_u16(), 204 | 304) {
        while !up.is_body_done() {
            match up.read_body_bytes().await {
                Ok(Some(chunk)) => {
                    if answer.len() + chunk.len() > limit {
                        return Err(bad(format!("answer larger than {limit} bytes")));
                    }
                    answer.extend_from_slice(&chunk);
                }
                Ok(None) => break,
                Err(e) => return Err(Failure::from_error(won.addr, &e).into()),
            }
        }
    }
    release(keep.then_some((connector, &peer)), *up).await;
    Ok((head, answer.freeze()))
}

/// Back to the pool for the next request, unless the exchange left it unusable (`None`: it is
/// closed).
async fn release(pool: Option<(&Connector, &HttpPeer)>, up: Upstream) {
    if let Some((connector, peer)) = pool {
        connector
            .release_http_session(up, peer, Some(HTTP_IDLE_TIMEOUT))
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
    mut out: Out,
) -> Result<u64> {
    let mut feeder = Feeder::new(session, fifo);
    loop {
        match feeder.read(up.read_body_bytes()).await? {
            Ok(Some(c)) => feeder.push(out.piece(Some(c), false)?).await?,
            Ok(None) => {}
            Err(e) => return Err(e.into_up()),
        }
        if up.is_body_done() {
            release(kept, up).await;
            drop(in_flight);
            feeder.push(out.piece(None, true)?).await?;
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
