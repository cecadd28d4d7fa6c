//! A total deadline for receiving a request's headers (nginx `client_header_timeout`, answered
//! with 408), which pingora does not have: its 60 s timeout applies to each read, so a client
//! sending one byte every 59 s holds a connection forever (slowloris).
//!
//! The deadline wraps the client stream below pingora, on every listener (the HTTPS front door,
//! the plain-HTTP redirect and the admin listener). It does not guess where a header block ends
//! from the bytes: pingora's parser skips blank lines before a request line and accepts bare-LF
//! line ends, and a byte pattern that disagrees with it either ends the deadline too early (a
//! `\r\n\r\n` sent first) or never (a request ending in `\n\n`). It follows the parser instead:
//!
//! - a request starts when pingora asks for one ([`PerRequest`] sees every `process_new_http`);
//!   the deadline is armed when the connection is accepted (nginx: `client_header_timeout`
//!   also covers the wait for the first request) and, on a kept-alive connection, at the first
//!   byte of the next request (the idle time in between is `keepalive_timeout_s`);
//! - it ends when the app's first hook runs, which pingora calls only once the parser has the
//!   whole head ([`head_parsed`], called by every app behind this wrapper), or at the latest
//!   when anything is written to the client (an error pingora answers itself);
//! - when it passes, a `408` is written only if part of a head had arrived and nothing has been
//!   written for this request; then the connection is closed. An answer already under way
//!   (a stream, a WebSocket) is never touched: its reads are not under the deadline.
//!
//! HTTP/2 (its own framing and flow control) is passed through untouched.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use async_trait::async_trait;
use pingora::apps::{HttpServerApp, HttpServerOptions, ReusedHttpStream, ServerApp};
use pingora::protocols::http::v2::server::H2Options;
use pingora::protocols::http::ServerSession;
use pingora::protocols::raw_connect::ProxyDigest;
use pingora::protocols::tls::TlsRef;
use pingora::protocols::{GetProxyDigest, GetSocketDigest, GetTimingDigest, IO};
use pingora::protocols::{Peek, Shutdown, Ssl, Stream, UniqueID, UniqueIDType, ALPN};
use pingora::protocols::{SocketDigest, TimingDigest};
use pingora::server::ShutdownWatch;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

const TIMEOUT_RESPONSE: &[u8] = b"HTTP/1.1 408 Request Timeout\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: 61\r\nConnection: close\r\n\r\n408 Request Timeout: the request headers took too long to arrive\n";

/// Wraps a server app so every accepted HTTP/1 connection gets the header deadline. The app
/// is an HTTP app wrapped in [`PerRequest`] (so the deadline re-arms per request), directly
/// ([`HeaderDeadline::new`]) or under something that takes HTTP/2 connections first
/// (`h2_guard::H2Guard` on the front door).
pub struct HeaderDeadline<S> {
    pub inner: Arc<S>,
    pub timeout: Duration,
}

impl<A> HeaderDeadline<PerRequest<A>> {
    pub fn new(app: A, timeout: Duration) -> HeaderDeadline<PerRequest<A>> {
        HeaderDeadline {
            inner: Arc::new(PerRequest::new(app)),
            timeout,
        }
    }
}

#[async_trait]
impl<S: ServerApp + Send + Sync + 'static> ServerApp for HeaderDeadline<S> {
    async fn process_new(
        self: &Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        let h2 = matches!(stream.selected_alpn_proto(), Some(ALPN::H2));
        let wrapped: Stream = if h2 {
            stream
        } else {
            wrap(stream, self.timeout)
        };
        self.inner.process_new(wrapped, shutdown).await
    }

    async fn cleanup(&self) {
        self.inner.cleanup().await
    }
}

/// The app, told each time pingora starts reading a new request on a connection. pingora's
/// own keep-alive loop (the `ServerApp` it implements for every `HttpServerApp`) runs around it.
pub struct PerRequest<A>(Arc<A>);

impl<A> PerRequest<A> {
    pub fn new(app: A) -> PerRequest<A> {
        PerRequest(Arc::new(app))
    }
}

#[async_trait]
impl<A: HttpServerApp + Send + Sync + 'static> HttpServerApp for PerRequest<A> {
    async fn process_new_http(
        self: &Arc<Self>,
        session: ServerSession,
        shutdown: &ShutdownWatch,
    ) -> Option<ReusedHttpStream> {
        if let Some(d) = deadlined(session.stream()) {
            d.next_request();
        }
        self.0.process_new_http(session, shutdown).await
    }

    fn h2_options(&self) -> Option<H2Options> {
        self.0.h2_options()
    }

    fn server_options(&self) -> Option<&HttpServerOptions> {
        self.0.server_options()
    }

    async fn http_cleanup(&self) {
        self.0.http_cleanup().await
    }

    async fn process_custom_session(
        self: Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        self.0
            .clone()
            .process_custom_session(stream, shutdown)
            .await
    }
}

/// The request is over (called from the app's `logging` hook, the last one pingora calls
/// before it reuses the connection): the next bytes start the next request's deadline. The
/// front door uses this instead of [`PerRequest`], which costs a boxed future and two moves of
/// the session per request.
pub fn request_done(session: &ServerSession) {
    if let Some(d) = deadlined(session.stream()) {
        d.next_request();
    }
}

/// The parser has the whole request head: the header deadline of this request is over. Every
/// app behind [`HeaderDeadline`] calls this first thing in its first hook (a slow request
/// body is not a slow header block).
pub fn head_parsed(session: &ServerSession) {
    if let Some(d) = deadlined(session.stream()) {
        d.head_parsed();
    }
}

/// `stream` with the deadline around it: what [`HeaderDeadline`] does to each HTTP/1
/// connection.
pub fn wrap(stream: Stream, timeout: Duration) -> Stream {
    Box::new(Deadlined::new(stream, timeout))
}

/// The stream under the deadline, for a connection that leaves pingora
/// ([`crate::handoff`]): its head was parsed long ago, so the wrapper has nothing left to do
/// but cost a check on every read.
pub fn unwrap(stream: Stream) -> Stream {
    if !(*stream).as_any().is::<Deadlined>() {
        return stream;
    }
    match IO::into_any(stream).downcast::<Deadlined>() {
        Ok(d) => d.inner,
        // Checked just above: a `Box<dyn Any>` could not be made a stream again.
        Err(_) => unreachable!("the stream was checked to be Deadlined"),
    }
}

fn deadlined(stream: Option<&Stream>) -> Option<&Deadlined> {
    // `as_any` on the boxed trait object itself, not on the `Box` (which is an `IO` too).
    let io: &dyn IO = &**stream?;
    io.as_any().downcast_ref::<Deadlined>()
}

/// Where a connection is, as far as the deadline is concerned. Changed by the reads and writes
/// and by the two hooks above (through `&Deadlined`, from the connection's own task).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
enum Phase {
    /// Between requests: the keep-alive timeout is pingora's business.
    Idle = 0,
    /// A head is awaited or arriving: the deadline runs.
    Headers = 1,
    /// The head is parsed (or an answer is going out): body, answer, upgrade; no deadline.
    Request = 2,
    /// The deadline passed: every read fails.
    Expired = 3,
}

impl Phase {
    fn from_u8(v: u8) -> Phase {
        match v {
            0 => Phase::Idle,
            1 => Phase::Headers,
            2 => Phase::Request,
            _ => Phase::Expired,
        }
    }
}

#[derive(Debug)]
pub struct Deadlined {
    inner: Stream,
    timeout: Duration,
    phase: AtomicU8,
    /// Whether any byte of the current head arrived (a connection that never sent one is
    /// closed without a 408, as nginx does).
    received: bool,
    /// When the current head must have arrived (`None`: no deadline runs).
    deadline: Option<Instant>,
    /// The runtime's timer for `deadline`, made only when a read has to wait for more of a
    /// head: a head that arrives whole (the usual case) never costs one.
    timer: Option<Pin<Box<Sleep>>>,
}

impl Deadlined {
    /// A fresh connection: the deadline runs from the accept.
    fn new(inner: Stream, timeout: Duration) -> Deadlined {
        Deadlined {
            inner,
            timeout,
            phase: AtomicU8::new(Phase::Headers as u8),
            received: false,
            deadline: Some(Instant::now() + timeout),
            timer: None,
        }
    }

    fn phase(&self) -> Phase {
        Phase::from_u8(self.phase.load(Ordering::Relaxed))
    }

    fn set(&self, phase: Phase) {
        self.phase.store(phase as u8, Ordering::Relaxed);
    }

    /// pingora is about to read another request on this connection.
    fn next_request(&self) {
        if self.phase() == Phase::Request {
            self.set(Phase::Idle);
        }
    }

    fn head_parsed(&self) {
        if self.phase() != Phase::Expired {
            self.set(Phase::Request);
        }
    }

    /// Bytes of a request arrived.
    fn on_bytes(&mut self) {
        match self.phase() {
            Phase::Idle => {
                self.set(Phase::Headers);
                self.deadline = Some(Instant::now() + self.timeout);
                self.timer = None;
                self.received = true;
            }
            Phase::Headers => self.received = true,
            Phase::Request | Phase::Expired => {}
        }
    }

    /// Something is written to the client while a head is arriving: it answers that request,
    /// so its header phase is over (and a 408 would land in the middle of it). A write while
    /// idle is the end of the previous answer (pingora finishes a response after the
    /// `logging` hook, see [`request_done`]): it leaves the next request's deadline armed.
    fn on_write(&mut self) {
        if self.phase() == Phase::Headers {
            self.set(Phase::Request);
            self.deadline = None;
            self.timer = None;
        }
    }
}

impl AsyncRead for Deadlined {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        match this.phase() {
            Phase::Expired => return Poll::Ready(Err(std::io::ErrorKind::TimedOut.into())),
            Phase::Headers => {
                if let Some(deadline) = this.deadline {
                    let timer = this
                        .timer
                        .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
                    if timer.as_mut().poll(cx).is_ready() {
                        this.set(Phase::Expired);
                        this.deadline = None;
                        this.timer = None;
                        if this.received {
                            // Best effort: the client is slow by definition, so never wait on it.
                            let _ = Pin::new(&mut this.inner).poll_write(cx, TIMEOUT_RESPONSE);
                            let _ = Pin::new(&mut this.inner).poll_flush(cx);
                            tracing::warn!("request headers not received within the deadline: 408");
                        } else {
                            tracing::debug!("no request within the header deadline: closed");
                        }
                        return Poll::Ready(Err(std::io::Error::new(
                            std::io::ErrorKind::TimedOut,
                            "request headers not received within the deadline",
                        )));
                    }
                }
            }
            Phase::Idle | Phase::Request => {
                this.deadline = None;
                this.timer = None;
            }
        }
        let before = buf.filled().len();
        let r = Pin::new(&mut this.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = r {
            if buf.filled().len() > before {
                this.on_bytes();
            }
            // A deadline armed by these bytes gets its timer (made and registered) at the top
            // of the next read, which is the only way pingora waits for more of a head. A head
            // that arrives whole (the usual case) is parsed and ends the phase before that, so
            // it never touches the runtime's timer wheel: registering one per request woke
            // the other worker thread's parked driver (an eventfd write and a sched_yield per
            // request, 7% more CPU per proxied request in bench/http.sh).
        }
        r
    }
}

impl AsyncWrite for Deadlined {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.on_write();
        Pin::new(&mut self.inner).poll_write(cx, data)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        self.on_write();
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[async_trait]
impl Shutdown for Deadlined {
    async fn shutdown(&mut self) {
        self.inner.shutdown().await
    }
}

impl UniqueID for Deadlined {
    fn id(&self) -> UniqueIDType {
        self.inner.id()
    }
}

impl Ssl for Deadlined {
    fn get_ssl(&self) -> Option<&TlsRef> {
        self.inner.get_ssl()
    }
    fn get_ssl_digest(&self) -> Option<Arc<pingora::protocols::tls::SslDigest>> {
        self.inner.get_ssl_digest()
    }
    fn selected_alpn_proto(&self) -> Option<ALPN> {
        self.inner.selected_alpn_proto()
    }
}

impl GetTimingDigest for Deadlined {
    fn get_timing_digest(&self) -> Vec<Option<TimingDigest>> {
        self.inner.get_timing_digest()
    }
    fn get_read_pending_time(&self) -> Duration {
        self.inner.get_read_pending_time()
    }
    fn get_write_pending_time(&self) -> Duration {
        self.inner.get_write_pending_time()
    }
}

impl GetProxyDigest for Deadlined {
    fn get_proxy_digest(&self) -> Option<Arc<ProxyDigest>> {
        self.inner.get_proxy_digest()
    }
    fn set_proxy_digest(&mut self, digest: ProxyDigest) {
        self.inner.set_proxy_digest(digest)
    }
}

impl GetSocketDigest for Deadlined {
    fn get_socket_digest(&self) -> Option<Arc<SocketDigest>> {
        self.inner.get_socket_digest()
    }
    fn set_socket_digest(&mut self, digest: SocketDigest) {
        self.inner.set_socket_digest(digest)
    }
}

#[async_trait]
impl Peek for Deadlined {
    async fn try_peek(&mut self, buf: &mut [u8]) -> std::io::Result<bool> {
        self.inner.try_peek(buf).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

    /// A server session over one end of an in-memory pipe of `capacity` bytes (so each read
    /// gets at most that much), wrapped in the deadline; the other end is the client.
    fn session(timeout: Duration, capacity: usize) -> (ServerSession, DuplexStream) {
        let (client, server) = tokio::io::duplex(capacity);
        let stream: Stream = Box::new(Deadlined::new(Box::new(server), timeout));
        (ServerSession::new_http1(stream), client)
    }

    fn phase(s: &ServerSession) -> Phase {
        deadlined(s.stream()).expect("wrapped").phase()
    }

    const HOUR: Duration = Duration::from_secs(3600);

    #[tokio::test]
    async fn leading_blank_lines_do_not_end_the_deadline() {
        // RFC 9112 section 2.2: a server SHOULD ignore at least one empty line before the
        // request line; pingora (httparse) skips any number of them. They are the start of a
        // head, not the end of one.
        for blank in [&b"\r\n\r\n"[..], b"\n\n", b"\r\n\n\r\n"] {
            let (mut s, mut client) = session(Duration::from_millis(300), 4096);
            let write = tokio::spawn(async move {
                client.write_all(blank).await.expect("write");
                tokio::time::sleep(Duration::from_millis(100)).await;
                client
                    .write_all(b"GET /x HTTP/1.1\r\nHost: x\r\n")
                    .await
                    .expect("write");
                client
            });
            let err = s.read_request().await.expect_err("the deadline");
            assert!(err.to_string().contains("deadline"), "{blank:?}: {err}");
            drop(s);
            let mut client = write.await.expect("writer");
            let mut got = Vec::new();
            client.read_to_end(&mut got).await.expect("read");
            assert_eq!(got, TIMEOUT_RESPONSE, "{blank:?}");
        }
    }

    #[tokio::test]
    async fn the_app_hook_ends_the_deadline_once_the_parser_has_the_head() {
        let (mut s, mut client) = session(HOUR, 64);
        client
            .write_all(b"\r\nGET /x HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .expect("write");
        assert!(s.read_request().await.expect("parsed"));
        assert_eq!(s.req_header().uri.path(), "/x");
        assert_eq!(phase(&s), Phase::Headers, "only the app's hook ends it");
        head_parsed(&s);
        assert_eq!(phase(&s), Phase::Request);
    }

    #[tokio::test]
    async fn a_bare_lf_head_leaves_the_header_phase_and_its_answer_is_never_interrupted() {
        let (mut s, mut client) = session(Duration::from_millis(100), 4096);
        client
            .write_all(b"GET /events HTTP/1.1\nHost: x\n\n")
            .await
            .expect("write");
        assert!(s.read_request().await.expect("parsed"));
        head_parsed(&s);
        // A long answer: the client's reads and writes go on well past the header deadline.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let mut answer = pingora::http::ResponseHeader::build(200, None).expect("head");
        answer
            .insert_header("content-type", "text/event-stream")
            .expect("h");
        s.write_response_header(Box::new(answer))
            .await
            .expect("write");
        let idle = tokio::time::timeout(Duration::from_millis(300), s.read_body_or_idle(true));
        assert!(idle.await.is_err(), "the idle read must not fail");
        assert_eq!(phase(&s), Phase::Request);
        drop(s);
        let mut got = Vec::new();
        client.read_to_end(&mut got).await.expect("read");
        let text = String::from_utf8_lossy(&got);
        assert!(text.starts_with("HTTP/1.1 200"), "{text}");
        assert!(!text.contains("408"), "{text}");
    }

    #[tokio::test]
    async fn a_late_head_gets_exactly_the_408_and_the_read_fails() {
        let (mut s, mut client) = session(Duration::from_millis(100), 4096);
        client
            .write_all(b"GET /slow HTTP/1.1\r\nHost: x\r\n")
            .await
            .expect("write");
        let err = s.read_request().await.expect_err("deadline");
        assert!(err.to_string().contains("deadline"), "{err}");
        assert_eq!(phase(&s), Phase::Expired);
        drop(s);
        let mut got = Vec::new();
        client.read_to_end(&mut got).await.expect("read");
        assert_eq!(got, TIMEOUT_RESPONSE);
    }

    #[tokio::test]
    async fn a_connection_that_never_sends_is_closed_without_a_408() {
        let (mut s, mut client) = session(Duration::from_millis(100), 64);
        // pingora reads a failed first read as a client that left (`Ok(false)`).
        assert!(!matches!(s.read_request().await, Ok(true)));
        assert_eq!(phase(&s), Phase::Expired);
        drop(s);
        let mut got = Vec::new();
        client.read_to_end(&mut got).await.expect("read");
        assert!(got.is_empty(), "{got:?}");
    }

    #[tokio::test]
    async fn on_a_kept_alive_connection_the_deadline_starts_at_the_next_requests_first_byte() {
        let (client, server) = tokio::io::duplex(64);
        let mut d = Deadlined::new(Box::new(server), Duration::from_millis(100));
        let mut client = client;
        d.head_parsed();
        let _ = d.write(b"HTTP/1.1 200 OK\r\n\r\n").await.expect("write");
        d.next_request();
        assert_eq!(d.phase(), Phase::Idle);
        // Idle longer than the deadline: that is the keep-alive timeout's business.
        tokio::time::sleep(Duration::from_millis(250)).await;
        client.write_all(b"GET").await.expect("write");
        let mut buf = [0u8; 16];
        assert_eq!(d.read(&mut buf).await.expect("read"), 3);
        assert_eq!(d.phase(), Phase::Headers);
        let late = d.read(&mut buf).await.expect_err("the next head is late");
        assert_eq!(late.kind(), std::io::ErrorKind::TimedOut);
    }

    #[tokio::test]
    async fn a_response_written_before_the_hook_ends_the_header_phase() {
        // An error pingora answers itself (400 for a head it cannot parse) goes out before any
        // hook: no 408 may follow it.
        let (_client, server) = tokio::io::duplex(64);
        let mut d = Deadlined::new(Box::new(server), Duration::from_millis(50));
        let _ = d
            .write(b"HTTP/1.1 400 Bad Request\r\n\r\n")
            .await
            .expect("write");
        assert_eq!(d.phase(), Phase::Request);
        assert!(d.timer.is_none());
    }

    fn line_end() -> impl proptest::strategy::Strategy<Value = &'static str> {
        proptest::prop_oneof![
            proptest::strategy::Just("\r\n"),
            proptest::strategy::Just("\n")
        ]
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]
        /// However a head (leading blank lines, CRLF or bare-LF line ends) is cut into reads,
        /// the deadline runs from its first byte until the parser has all of it, and only
        /// the hook ends it.
        #[test]
        fn read_sizes_do_not_change_where_the_deadline_ends(
            blank in proptest::collection::vec(line_end(), 0..4),
            ends in proptest::collection::vec(line_end(), 4),
            capacity in 1usize..24,
        ) {
            let mut head = blank.concat();
            head.push_str("GET /p HTTP/1.1");
            head.push_str(ends[0]);
            head.push_str("Host: x");
            head.push_str(ends[1]);
            head.push_str("X-A: b");
            head.push_str(ends[2]);
            head.push_str(ends[3]);
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            let (path, before, after) = rt.block_on(async {
                let (mut s, mut client) = session(HOUR, capacity);
                let write = tokio::spawn(async move {
                    client.write_all(head.as_bytes()).await.expect("write");
                    client
                });
                let parsed = s.read_request().await.expect("parsed");
                assert!(parsed);
                let _client = write.await.expect("writer");
                let before = phase(&s);
                head_parsed(&s);
                (s.req_header().uri.path().to_string(), before, phase(&s))
            });
            proptest::prop_assert_eq!(path, "/p");
            proptest::prop_assert_eq!(before, Phase::Headers);
            proptest::prop_assert_eq!(after, Phase::Request);
        }
    }
}
