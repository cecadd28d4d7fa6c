//! The adapter between a pingora session and a realtime service (`realtime::seam`).
//!
//! The service sees only plain values; this module feeds it the request body (from its own
//! task when there is one, inline otherwise), writes whatever shape of answer it returns, and
//! cancels it as soon as the client goes away, so a held long-poll or a dead SSE stream is
//! freed at once. An upgrade (`101`), and a streamed answer over HTTP/1.1, take the client's
//! connection out of pingora once the head is written ([`crate::handoff`]): the caller starts
//! what runs on it ([`Served::Left`]).
//!
//! The body is read under the same limits as a held body on the other routes ([`BodyClock`]:
//! at least `client_body_min_rate` bytes per second over every `client_body_timeout_ms`
//! window, then 408; `max_body_bytes`, then 413), on HTTP/1.1 and HTTP/2 alike: pingora has no
//! read timeout at all for an HTTP/2 body, so a stalled one would otherwise hold its stream and
//! the service's task forever.

use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use futures_util::StreamExt;
use http::HeaderValue;
use pingora::http::ResponseHeader;
use pingora::protocols::http::ServerSession;
use pingora::proxy::Session;
use pingora::{Error, ErrorType, Result};
use realtime::seam::{Body, BodyError, BodyStream, OnUpgrade, Request, Response, Service};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;

use crate::access_log::RequestLine;
use crate::buffering::{BodyClock, BodyLimits};
use crate::failure::ClientFailure;
use crate::handoff::{self, Leaving, OnEnd};
use crate::ws_frames::Frames;

/// How many body chunks may wait for a service that reads slowly; the client is then
/// back-pressured by TCP rather than buffered here.
const BODY_CHUNKS_IN_FLIGHT: usize = 4;

/// How long an unread request body is drained after an early answer (nginx
/// `lingering_timeout` is 5 s between reads; this bounds the whole drain).
pub(crate) const LINGER: std::time::Duration = std::time::Duration::from_secs(5);

/// Aborts the service's task when the exchange ends early (client gone, write failed).
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// How a realtime exchange ended for the connection.
#[must_use = "a connection that left must be started, or its client is left hanging"]
pub enum Served {
    /// The answer is written; pingora carries on with the connection.
    Answered,
    /// The answer goes on for as long as the client stays (an upgrade, an HTTP/1 event
    /// stream): its head is written, the client's connection has left pingora ([`handoff`])
    /// and is the caller's to [`Handover::start`].
    Left(Box<Handover>),
    /// The service holds its answer (a long-poll waiting for a message): the whole HTTP/1
    /// session has left pingora to wait outside it ([`Held`]), and is the caller's to
    /// [`Held::answer`].
    Held(Box<Held>),
}

/// A bodiless request whose service is holding its answer, with its HTTP/1 session taken out
/// of pingora ([`handoff::take_session`]): while it waits, the connection holds only the
/// session and the service's future, not pingora's connection task and request machinery.
/// The answer is written through the same session (pingora's writer), after which the
/// connection goes back to pingora ([`handoff::Reentry`]) when it may be kept alive.
pub struct Held {
    session: ServerSession,
    call: Call,
    hsts: Option<HeaderValue>,
}

/// A held request's end, for whoever logs it and serves the connection on.
pub struct HeldEnd {
    /// The answer's status; 0 when the client left first.
    pub status: u16,
    pub sent: u64,
    pub line: RequestLine,
    pub then: AfterHeld,
}

/// What becomes of the connection after a held answer.
pub enum AfterHeld {
    /// Closed: the client left, the answer failed, or the connection may not be kept alive.
    Closed,
    /// Kept alive: serve its next request ([`handoff::Reentry::serve`]).
    KeptAlive(handoff::Reused),
    /// The answer turned out to be a stream (an event stream whose subscription waited on the
    /// app): it goes on outside pingora as [`Served::Left`] does.
    Left(Box<Handover>),
}

/// The service's future for one request, owning what it needs.
type Call = std::pin::Pin<Box<dyn std::future::Future<Output = Response> + Send>>;

impl Held {
    /// Wait for the answer (or for the client to leave), and write it. The session is worked
    /// on where it lies, in the box it waited in, and moved only to be finished: moved into
    /// this future at its start, it was one more copy of the session per poll and one more
    /// session's size in the future of every held poll's turn, which is copied whole into its
    /// box each time (issue 17's profile: `memmove` was 8% of a long-poll delivery's CPU).
    pub async fn answer(mut self: Box<Self>) -> HeldEnd {
        let Held {
            session,
            call,
            hsts,
        } = &mut *self;
        let response = tokio::select! {
            r = &mut *call => Some(r),
            idle = session.read_body_or_idle(true) => match idle {
                Err(_) => None,
                Ok(_) => Some(call.await),
            },
        };
        let line = RequestLine::of(session.req_header());
        let Some(response) = response else {
            // The client hung up: dropping the future cancelled the service's wait.
            return HeldEnd {
                status: 0,
                sent: 0,
                line,
                then: AfterHeld::Closed,
            };
        };
        // The next request on this connection gets its own header deadline, as pingora's
        // `logging` hook arranges for every other request.
        crate::header_deadline::request_done(session);
        let written = respond(session, response, false, false, hsts.as_ref()).await;
        let status = session.response_written().map_or(0, |r| r.status.as_u16());
        let sent = session.body_bytes_sent() as u64;
        let then = match written {
            Ok(Served::Left(handover)) => AfterHeld::Left(handover),
            Ok(_) => match handoff::reusable(self.session).await {
                Some(reused) => AfterHeld::KeptAlive(reused),
                None => AfterHeld::Closed,
            },
            Err(e) => {
                tracing::debug!(error = %e, "held realtime answer not written");
                AfterHeld::Closed
            }
        };
        HeldEnd {
            status,
            sent,
            line,
            then,
        }
    }
}

/// A connection taken out of pingora, with what runs on it and what its log line says of it.
pub struct Handover {
    leaving: Leaving,
    then: Then,
    /// The answer's status (`101`, or the stream's).
    pub status: u16,
    /// The request, in buffers of its own (pingora's session no longer has it), for whoever
    /// logs the session.
    pub line: Option<RequestLine>,
}

/// What runs on a connection that left.
enum Then {
    /// The service's WebSocket (or other upgraded protocol).
    Upgrade(OnUpgrade),
    /// The rest of a streamed answer, chunked.
    Stream(BodyStream),
}

impl Handover {
    /// Whether the connection switched protocols (its WebSocket frames are worth logging).
    pub fn is_upgrade(&self) -> bool {
        matches!(self.then, Then::Upgrade(_))
    }

    /// Run it on the connection in a task of its own. `send_timeout`: how long a write may wait
    /// for the client (nginx `send_timeout`, as on every other answer); `on_end` runs when the
    /// connection is let go (its log line, its gauges).
    pub fn start(self, send_timeout: Duration, on_end: Option<OnEnd>) {
        let conn = self.leaving.into_conn(send_timeout, on_end);
        match self.then {
            Then::Upgrade(on_upgrade) => drop(tokio::spawn(on_upgrade(Box::new(conn)))),
            Then::Stream(body) => drop(tokio::spawn(handoff::send_chunked(conn, body))),
        }
    }
}

/// Take the client's connection out of `session`, whose answer head is written.
fn leave(session: &mut ServerSession, then: Then) -> Result<Served> {
    let status = session
        .response_written()
        .map(|r| r.status.as_u16())
        .unwrap_or(0);
    let line = RequestLine::detached(session.req_header());
    match handoff::take(session) {
        Some(leaving) => Ok(Served::Left(Box::new(Handover {
            leaving,
            then,
            status,
            line: Some(line),
        }))),
        None => Error::e_explain(
            ErrorType::InternalError,
            "a connection that is not HTTP/1 cannot be handed over",
        ),
    }
}

/// Run `service` for the request in `session`; returns when the answer is written, or as soon
/// as an upgraded connection has left pingora ([`Served::Left`]). `client` is the address
/// per-client limits count against when it is not the peer's (one a trusted proxy forwarded,
/// [`crate::forwarding::real_client`]); `limits` bound the request body as on every other
/// route.
pub async fn serve(
    session: &mut Session,
    service: Arc<dyn Service>,
    client: Option<std::net::IpAddr>,
    limits: &BodyLimits,
    hsts: Option<&HeaderValue>,
    may_hold: bool,
) -> Result<Served> {
    let upgrade = session.is_upgrade_req();
    if may_hold && !upgrade && session.is_body_done() {
        // A poll that waits keeps its head for minutes: in a copy of the head's size, not in
        // the 4 KiB buffer it was read into (the service's copy below shares it).
        if let ServerSession::H1(h1) = session.as_downstream_mut() {
            h1.shrink_head_buffer();
        }
    }
    let head = session.req_header().as_owned_parts();
    let peer = session.client_addr().and_then(|a| a.as_inet()).copied();
    let local = session.server_addr().and_then(|a| a.as_inet()).copied();
    let secure = is_tls(session);
    if !upgrade && session.is_body_done() {
        // A bodiless request (every long-poll, every SSE subscription) runs right here: no
        // task to spawn and wake on another thread, no body channel. Measured on held
        // long-polls, the spawn made the gateway switch threads 27x as often as nchan.
        let req = Request {
            head,
            peer,
            client,
            local,
            secure,
            body: Body::empty(),
        };
        let mut call: Call = Box::pin(async move { service.call(req).await });
        // Most answers are ready at once (a poll with messages waiting, an event stream's
        // head): written right here. One that will wait (a held long-poll) waits outside
        // pingora, when it can come back ([`Held`]).
        if let std::task::Poll::Ready(response) = futures_util::poll!(&mut call) {
            return respond(session.as_downstream_mut(), response, false, false, hsts).await;
        }
        if may_hold {
            if let Some(held) = handoff::take_session(session.as_downstream_mut()) {
                return Ok(Served::Held(Box::new(Held {
                    session: held,
                    call,
                    hsts: hsts.cloned(),
                })));
            }
        }
        let response = tokio::select! {
            r = &mut call => r,
            idle = session.read_body_or_idle(true) => match idle {
                // The client hung up while the service was still deciding: dropping the
                // future cancels it.
                Err(_) => return Ok(Served::Answered),
                // Pipelined bytes, not a hang-up: stop watching and just wait.
                Ok(_) => call.await,
            },
        };
        return respond(session.as_downstream_mut(), response, false, false, hsts).await;
    }
    let (tx, body) = if upgrade {
        // After the headers of an upgrade request come the upgraded protocol's bytes, not a
        // body: nothing may read them before the 101 is written.
        (None, Body::empty())
    } else {
        let (tx, body) = Body::channel(BODY_CHUNKS_IN_FLIGHT);
        (Some(tx), body)
    };
    let req = Request {
        head,
        peer,
        client,
        local,
        secure,
        body,
    };
    let mut task = AbortOnDrop(tokio::spawn(async move { service.call(req).await }));
    let mut tx = tx;
    let mut watching_client = !upgrade;
    let mut body_finished = upgrade || session.is_body_done();
    // The body's minimum rate is measured from here, as on every other route; time spent
    // waiting for the service to take a chunk is the service's, not the client's: the clock
    // runs on a time that stands still meanwhile (`now - paused`).
    let mut clock = BodyClock::new(Instant::now(), limits);
    let mut paused = std::time::Duration::ZERO;
    let mut received = 0u64;

    let response = loop {
        if let Some(sender) = tx.clone() {
            let deadline = clock.deadline() + paused;
            tokio::select! {
                r = &mut task.0 => break r,
                chunk = tokio::time::timeout_at(deadline, session.read_request_body()) => match chunk {
                    Err(_) => {
                        // `task` is aborted on return: the service stops waiting for the body.
                        tracing::warn!(received, "realtime request body incomplete at the deadline: 408");
                        body_refused(session, hsts, ClientFailure::Timeout { received }).await?;
                        return Ok(Served::Answered);
                    }
                    Ok(Ok(Some(bytes))) => {
                        received += bytes.len() as u64;
                        clock.record(Instant::now() - paused, bytes.len() as u64);
                        if received > limits.max_bytes {
                            tracing::warn!(limit = limits.max_bytes, "realtime request body too large: 413");
                            body_refused(session, hsts, ClientFailure::TooLarge(limits.max_bytes)).await?;
                            return Ok(Served::Answered);
                        }
                        // A service that dropped its body no longer wants it: stop feeding.
                        let waiting = Instant::now();
                        if sender.send(Ok(bytes)).await.is_err() {
                            tx = None;
                        }
                        paused += waiting.elapsed();
                    }
                    Ok(Ok(None)) => {
                        tx = None;
                        body_finished = true;
                    }
                    Ok(Err(e)) => {
                        let _ = sender.send(Err(BodyError::Aborted(e.to_string()))).await;
                        return Err(e);
                    }
                },
            }
        } else if watching_client && body_finished {
            // Only once the body is read: an idle probe would otherwise eat body bytes.
            tokio::select! {
                r = &mut task.0 => break r,
                idle = session.read_body_or_idle(true) => match idle {
                    // The client hung up while the service was still deciding: cancel it.
                    Err(_) => return Ok(Served::Answered),
                    // Pipelined bytes, not a hang-up: stop watching and just wait.
                    Ok(_) => watching_client = false,
                },
            }
        } else {
            break (&mut task.0).await;
        }
    };
    // The service answered before the client finished sending its body (a 413, a 401): the
    // connection cannot be reused, and the rest of the body must still be read, or a client
    // that sends the whole body before reading never sees the answer (nginx's lingering close).
    let unread_body = !body_finished;
    if unread_body {
        session.set_keepalive(None);
    }
    let response = response.map_err(|e| {
        Error::explain(
            ErrorType::InternalError,
            format!("realtime service failed: {e}"),
        )
    })?;
    respond(
        session.as_downstream_mut(),
        response,
        upgrade,
        unread_body,
        hsts,
    )
    .await
}

/// Answer a realtime request whose body was refused, with the status and reason every path
/// gives that fault ([`crate::failure`]).
async fn body_refused(
    session: &mut Session,
    hsts: Option<&HeaderValue>,
    failure: ClientFailure,
) -> Result<()> {
    let fault = crate::failure::Fault::from(failure);
    crate::finish::respond(session, hsts, fault.status(), fault.public_reason(), None).await
}

/// Write the service's answer, whatever its shape. `unread_body`: the client is still sending
/// a body nobody will read (drained briefly after the answer, never reused).
async fn respond(
    session: &mut ServerSession,
    response: Response,
    upgrade: bool,
    unread_body: bool,
    hsts: Option<&HeaderValue>,
) -> Result<Served> {
    match response {
        Response::Full(resp) => {
            let (parts, body) = resp.into_parts();
            let mut head = ResponseHeader::from(parts);
            head.insert_header("content-length", body.len().to_string())?;
            crate::finish::stamp(hsts, &mut head)?;
            session.write_response_header(Box::new(head)).await?;
            session.write_response_body(body, true).await?;
            if unread_body {
                let _ = tokio::time::timeout(LINGER, session.drain_request_body()).await;
            }
            Ok(Served::Answered)
        }
        Response::Stream { head, mut body } => {
            let mut head = ResponseHeader::from(head);
            crate::finish::stamp(hsts, &mut head)?;
            // On HTTP/1.1 a stream (SSE) leaves pingora once its head is out, as an upgrade does:
            // it then holds only what it uses. The connection is not reused after it (what is
            // left of it is ours), so the head says so. HTTP/2 streams share their connection
            // and stay.
            let chunked = !session.is_http2() && head.headers.get("content-length").is_none();
            if chunked {
                // Without it an HTTP/1.1 stream is close-delimited and the connection is lost.
                head.insert_header("transfer-encoding", "chunked")?;
            }
            // What leaves is written chunked ([`handoff::send_chunked`]); a stream of a known
            // length is pingora's to frame.
            let leaves = chunked && !unread_body;
            if leaves {
                session.set_keepalive(None);
            }
            session.write_response_header(Box::new(head)).await?;
            if leaves && session.as_http1().is_some() {
                return leave(session, Then::Stream(body));
            }
            let mut client_open = true;
            loop {
                tokio::select! {
                    chunk = body.next() => match chunk {
                        Some(bytes) => session.write_response_body(bytes, false).await?,
                        None => break,
                    },
                    gone = session.read_body_or_idle(true), if client_open => {
                        if gone.is_err() {
                            // Dropping `body` tells the producer at its next send.
                            return Ok(Served::Answered);
                        }
                        client_open = false;
                    }
                }
            }
            session
                .write_response_body(bytes::Bytes::new(), true)
                .await?;
            Ok(Served::Answered)
        }
        Response::Upgrade { head, on_upgrade } => {
            if !upgrade {
                return Error::e_explain(
                    ErrorType::InternalError,
                    "realtime service answered 101 to a request that is not an upgrade",
                );
            }
            let head = ResponseHeader::from(head);
            // An upgraded connection is idle for as long as its users are: pingora's 60 s
            // per-read timeout would kill every quiet WebSocket.
            session.set_read_timeout(None);
            session.write_response_header(Box::new(head)).await?;
            // The client's connection leaves pingora: the service writes straight into it.
            leave(session, Then::Upgrade(on_upgrade))
        }
    }
}

pub fn is_tls(session: &Session) -> bool {
    session
        .digest()
        .and_then(|d| d.ssl_digest.as_ref())
        .is_some()
}

/// Move bytes both ways between an upgraded client connection and `io` until either side
/// closes: the WebSocket tunnel to the app. The WebSocket frames passing are read into
/// `frames` (messages, the close) for the session's log line.
pub async fn pump<S: AsyncRead + AsyncWrite>(
    session: &mut Session,
    io: S,
    frames: &mut Frames,
) -> Result<()> {
    let (mut rd, mut wr) = tokio::io::split(io);
    // Read into spare capacity and hand the filled part over without a copy; nothing is
    // zeroed up front, so an idle connection's buffer stays mostly untouched (not resident).
    let mut buf = BytesMut::new();
    let mut client_done = false;
    loop {
        tokio::select! {
            from_client = session.read_request_body(), if !client_done => match from_client {
                Ok(Some(bytes)) => {
                    frames.client_sent(&bytes);
                    if wr.write_all(&bytes).await.is_err() {
                        return Ok(());
                    }
                }
                // `read_request_body` keeps answering `None` after EOF: stop polling it.
                Ok(None) | Err(_) => {
                    client_done = true;
                    let _ = wr.shutdown().await;
                }
            },
            from_peer = read_some(&mut rd, &mut buf) => match from_peer {
                Ok(0) | Err(_) => return Ok(()),
                Ok(_) => {
                    let chunk = buf.split().freeze();
                    frames.sent_to_client(&chunk);
                    session
                        .as_downstream_mut()
                        .write_response_body(chunk, false)
                        .await?;
                }
            },
        }
    }
}

/// Most bytes one read from a realtime service (or the app's WebSocket) takes: a large message
/// goes out in pieces of this size, a small one as it is.
const PUMP_READ_BYTES: usize = 16 * 1024;

/// One read into `buf`'s spare capacity. `reserve` reuses the allocation once the previous
/// chunk has been written out and dropped.
async fn read_some<R: AsyncRead + Unpin>(rd: &mut R, buf: &mut BytesMut) -> std::io::Result<usize> {
    buf.reserve(PUMP_READ_BYTES);
    let mut limited = (&mut *rd).take(PUMP_READ_BYTES as u64);
    limited.read_buf(buf).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::protocol::Role;
    use tokio_tungstenite::tungstenite::Message;
    use tokio_tungstenite::WebSocketStream;

    fn limits() -> BodyLimits {
        BodyLimits {
            max_bytes: 1024,
            memory: 1024,
            timeout: Duration::from_secs(5),
            min_rate: 0,
        }
    }

    /// A proxy session over one end of an in-memory pipe, with `request`'s head read; the
    /// other end is the client.
    async fn session(request: &[u8]) -> (Session, tokio::io::DuplexStream) {
        let (mut client, server) = tokio::io::duplex(64 * 1024);
        client.write_all(request).await.expect("request");
        let mut session = Session::new_h1(Box::new(server));
        assert!(session
            .downstream_session
            .read_request()
            .await
            .expect("head"));
        (session, client)
    }

    /// What a connection that left pingora leaves behind: a stand-in that finishes without
    /// touching the client and is not kept alive.
    async fn stand_in_finishes(session: Session) {
        assert!(session
            .downstream_session
            .finish()
            .await
            .expect("finish")
            .is_none());
    }

    /// A streamed answer of a known length (not chunked).
    struct Sized;

    #[async_trait::async_trait]
    impl Service for Sized {
        async fn call(&self, _req: Request) -> Response {
            let head = http::Response::builder()
                .header("content-length", "5")
                .body(())
                .expect("head")
                .into_parts()
                .0;
            let (tx, rx) = tokio::sync::mpsc::channel(1);
            let _ = tx.try_send(bytes::Bytes::from_static(b"hello"));
            Response::Stream {
                head,
                body: realtime::seam::channel_body(rx),
            }
        }
    }

    #[tokio::test]
    async fn a_stream_of_a_known_length_is_framed_by_pingora_and_does_not_leave() {
        let (mut session, mut client) = session(b"GET /s HTTP/1.1\r\nHost: x\r\n\r\n").await;
        let served = serve(&mut session, Arc::new(Sized), None, &limits(), None, true)
            .await
            .expect("served");
        assert!(matches!(served, Served::Answered));
        drop(session);
        let mut got = Vec::new();
        client.read_to_end(&mut got).await.expect("read");
        let got = String::from_utf8(got).expect("utf-8");
        assert!(got.ends_with("\r\n\r\nhello"), "{got:?}");
        assert!(
            !got.to_ascii_lowercase().contains("transfer-encoding"),
            "{got:?}"
        );
    }

    /// A long-poll: answers when told to.
    struct Waits(std::sync::Mutex<Option<tokio::sync::oneshot::Receiver<&'static str>>>);

    #[async_trait::async_trait]
    impl Service for Waits {
        async fn call(&self, _req: Request) -> Response {
            let rx = self.0.lock().expect("lock").take().expect("one call");
            let text = rx.await.unwrap_or("gone");
            Response::text(http::StatusCode::OK, text.to_string())
        }
    }

    #[tokio::test]
    async fn a_held_answer_waits_outside_pingora_and_the_connection_is_kept_alive() {
        let (mut session, mut client) = session(b"GET /s HTTP/1.1\r\nHost: x\r\n\r\n").await;
        let (tx, rx) = tokio::sync::oneshot::channel();
        let service = Arc::new(Waits(std::sync::Mutex::new(Some(rx))));
        let served = serve(&mut session, service, None, &limits(), None, true)
            .await
            .expect("served");
        let Served::Held(held) = served else {
            panic!("a waiting answer was held inside pingora");
        };
        stand_in_finishes(session).await;

        let answer = tokio::spawn(held.answer());
        tx.send("news").expect("the held call waits");
        let end = answer.await.expect("answered");
        assert_eq!((end.status, end.line.uri.path()), (200, "/s"));
        let AfterHeld::KeptAlive(reused) = end.then else {
            panic!("the connection was not kept alive");
        };
        let (mut stream, _) = reused.consume();
        drop(stream.flush().await);
        let mut got = vec![0u8; 1024];
        let n = client.read(&mut got).await.expect("read");
        let got = String::from_utf8_lossy(&got[..n]).into_owned();
        assert!(got.starts_with("HTTP/1.1 200"), "{got:?}");
        assert!(got.ends_with("\r\n\r\nnews"), "{got:?}");
        // The same connection carries the next request, for whoever serves it next.
        client
            .write_all(b"GET /next HTTP/1.1\r\n\r\n")
            .await
            .expect("write");
        let mut next = [0u8; 9];
        stream.read_exact(&mut next).await.expect("read");
        assert_eq!(&next, b"GET /next");
    }

    /// A long-poll that notes where the bytes of its request's headers are.
    struct NotesHead(std::sync::Mutex<Vec<(usize, usize)>>);

    #[async_trait::async_trait]
    impl Service for NotesHead {
        async fn call(&self, req: Request) -> Response {
            let spans = req.head.headers.values().map(|v| span(v.as_bytes()));
            self.0.lock().expect("lock").extend(spans);
            std::future::pending().await
        }
    }

    fn span(bytes: &[u8]) -> (usize, usize) {
        let start = bytes.as_ptr() as usize;
        (start, start + bytes.len())
    }

    #[tokio::test]
    async fn a_held_poll_keeps_its_head_in_a_copy_of_the_heads_size_not_the_read_buffer() {
        let request = b"GET /s?t=news HTTP/1.1\r\nHost: x\r\nCookie: session=abc\r\n\r\n";
        let (mut session, _client) = session(request).await;
        let read_buffer = span(&session.downstream_session.to_h1_raw());
        let service = Arc::new(NotesHead(std::sync::Mutex::new(Vec::new())));
        let served = serve(&mut session, service.clone(), None, &limits(), None, true)
            .await
            .expect("served");
        let Served::Held(held) = served else {
            panic!("a waiting answer was held inside pingora");
        };
        let head = held.session.to_h1_raw();
        assert_eq!(&head[..], &request[..]);
        let copy = span(&head);
        assert_ne!(copy.0, read_buffer.0, "the head was not copied");
        let inside = |(start, end): (usize, usize)| start >= copy.0 && end <= copy.1;
        // What pingora keeps of the request, and what the service was given, point into the
        // copy: nothing of the held request keeps the read buffer alive.
        let kept: Vec<_> = held
            .session
            .req_header()
            .headers
            .values()
            .map(|v| span(v.as_bytes()))
            .collect();
        let given = service.0.lock().expect("lock").clone();
        assert_eq!((kept.len(), given.len()), (2, 2));
        assert!(kept.into_iter().chain(given).all(inside));
    }

    #[tokio::test]
    async fn an_answer_ready_at_once_is_written_in_place_and_one_not_allowed_to_leave_waits_inside()
    {
        let (tx, rx) = tokio::sync::oneshot::channel();
        tx.send("ready").expect("send");
        let (mut ready, _client) = session(b"GET /s HTTP/1.1\r\nHost: x\r\n\r\n").await;
        let service = Arc::new(Waits(std::sync::Mutex::new(Some(rx))));
        let served = serve(&mut ready, service, None, &limits(), None, true)
            .await
            .expect("served");
        assert!(matches!(served, Served::Answered));

        let (tx, rx) = tokio::sync::oneshot::channel();
        let (mut session, _client) = session(b"GET /s HTTP/1.1\r\nHost: x\r\n\r\n").await;
        let service = Arc::new(Waits(std::sync::Mutex::new(Some(rx))));
        let serving = tokio::spawn(async move {
            let served = serve(&mut session, service, None, &limits(), None, false).await;
            (served.map(|s| matches!(s, Served::Answered)), session)
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(
            !serving.is_finished(),
            "not allowed to leave: it waits inside"
        );
        tx.send("late").expect("send");
        let (answered, session) = serving.await.expect("joined");
        assert!(answered.expect("served"));
        assert_eq!(
            session.response_written().map(|r| r.status.as_u16()),
            Some(200)
        );
    }

    #[tokio::test]
    async fn serve_returns_as_soon_as_an_upgraded_connection_has_left() {
        let (mut session, mut client) = session(
            b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
              Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
        )
        .await;
        let service: Arc<dyn Service> = Arc::new(realtime::diag::SeamTest::default());

        // Before the hand-off, this returned only when the WebSocket closed.
        let served = tokio::time::timeout(
            Duration::from_secs(5),
            serve(&mut session, service, None, &limits(), None, true),
        )
        .await
        .expect("serve returns while the WebSocket is open")
        .expect("served");
        let Served::Left(handover) = served else {
            panic!("the upgrade was answered without handing the connection over");
        };
        stand_in_finishes(session).await;

        handover.start(Duration::from_secs(5), None);
        let mut head = Vec::new();
        while !head.ends_with(b"\r\n\r\n") {
            let mut b = [0u8; 1];
            client.read_exact(&mut b).await.expect("head");
            head.push(b[0]);
        }
        assert!(head.starts_with(b"HTTP/1.1 101"));
        let mut ws = WebSocketStream::from_raw_socket(client, Role::Client, None).await;
        ws.send(Message::text("over the handed-off connection"))
            .await
            .expect("send");
        let echo = tokio::time::timeout(Duration::from_secs(5), ws.next()).await;
        assert!(
            matches!(&echo, Ok(Some(Ok(Message::Text(t)))) if t.as_str() == "over the handed-off connection"),
            "{echo:?}"
        );
    }

    /// Every held poll's turn holds this future, and is copied whole into its box each time a
    /// poll is held: with pingora's `finish` future inline it was 5,800 bytes in a release
    /// build, 2,200 with that future boxed ([`handoff::reusable`]).
    #[test]
    fn a_held_polls_answer_future_stays_small() {
        fn future_size<F>(_: impl Fn(Box<Held>) -> F) -> usize {
            std::mem::size_of::<F>()
        }
        let size = future_size(|held| held.answer());
        assert!(size <= 3 * 1024, "Held::answer's future is {size} bytes");
    }
}
