//! Upgraded connections leave pingora: once a realtime service has answered `101`, the client's
//! own connection (TLS or plain) is taken out of pingora's HTTP session and given to the
//! service, which then reads and writes it directly from one task of its own.
//!
//! Why: left inside pingora, an upgraded connection keeps pingora's whole per-request
//! machinery alive for as long as the WebSocket is open (its connection task and request
//! future, the session and its 64 KiB body-read buffer, the header deadline wrapper), and every
//! delivery crosses an in-memory pipe and a pump task to reach the socket: three task wake-ups
//! and three copies per message. Handed off, pingora's task ends at once and a delivery is one
//! write into the TLS stream.
//!
//! How, with pingora 0.9.1's public API (it has no hook for it): the `101` is written through
//! pingora (so its `Date`, framing and upgraded-mode switch stay pingora's), then the session's
//! HTTP/1 stream is swapped for a [`StandIn`] with keep-alive off and the real one is taken
//! with `into_inner` ([`take`]). pingora then logs the request (the gateway's `logging` skips
//! handed-off requests: the stand-in has no request head) and finishes on the stand-in: its
//! connection task ends. Bytes the client sent behind its upgrade request, which pingora had
//! already read, come out of the stream first ([`Conn`]).
//!
//! What pingora did for the connection, [`Conn`] now does: the write deadline (`send_timeout`,
//! armed only while a write waits, so an idle connection has no timer), the bytes and
//! WebSocket frames each way for the log line ([`Tally`]), the end of the session (its log
//! line, its gauges: [`OnEnd`]), and the TLS `close_notify` and FIN at the end, which pingora
//! sent when it finished the session and tungstenite never does.
//!
//! HTTP/2 streams cannot leave: they share one connection. pingora 0.9.1 has no WebSocket
//! over HTTP/2 (RFC 8441), so every upgrade arrives on HTTP/1.1 and can.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use futures_util::FutureExt;
use pingora::apps::{HttpPersistentSettings, HttpServerApp, ReusedHttpStream};
use pingora::protocols::http::ServerSession;
use pingora::protocols::raw_connect::ProxyDigest;
use pingora::protocols::{
    GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, SocketDigest, Ssl, Stream,
    TimingDigest, UniqueID, UniqueIDType,
};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::time::Sleep;

use crate::ws_frames::Frames;

/// How long the closing `close_notify` and FIN may take once the service is done: a client
/// that reads nothing must not keep the closing task (and its file) alive.
const CLOSE_GRACE: Duration = Duration::from_secs(1);

/// Most bytes taken from pingora's buffers at the hand-off. What a client sent behind its
/// upgrade request is small (a first frame or two); past this the rest stays in the stream.
const MAX_EARLY: usize = 64 * 1024;

/// What pingora's session keeps once the real stream is taken: reads end at once, writes are
/// dropped. Zero-sized, so boxing it allocates nothing.
#[derive(Debug)]
pub struct StandIn;

impl AsyncRead for StandIn {
    fn poll_read(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        _: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for StandIn {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Poll::Ready(Ok(data.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[async_trait]
impl Shutdown for StandIn {
    async fn shutdown(&mut self) {}
}

impl UniqueID for StandIn {
    fn id(&self) -> UniqueIDType {
        -1
    }
}

impl Ssl for StandIn {}

impl GetTimingDigest for StandIn {
    fn get_timing_digest(&self) -> Vec<Option<TimingDigest>> {
        Vec::new()
    }
}

impl GetProxyDigest for StandIn {
    fn get_proxy_digest(&self) -> Option<Arc<ProxyDigest>> {
        None
    }
}

impl GetSocketDigest for StandIn {
    fn get_socket_digest(&self) -> Option<Arc<SocketDigest>> {
        None
    }
}

impl Peek for StandIn {}

/// A client connection taken out of pingora, with what pingora had already read of it.
pub struct Leaving {
    stream: Stream,
    early: Bytes,
}

impl std::fmt::Debug for Leaving {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Leaving")
            .field("early", &self.early.len())
            .finish_non_exhaustive()
    }
}

/// Take the client's connection out of an HTTP/1 session whose answer head is written (a
/// `101`). `None` for an HTTP/2 stream, which shares its connection and cannot leave. The
/// session is left with a [`StandIn`] and keep-alive off: pingora finishes it without a
/// write and ends its connection task.
pub fn take(downstream: &mut ServerSession) -> Option<Leaving> {
    downstream.as_http1()?;
    // What came with the head or behind it (a client that did not wait for the 101): pingora
    // hands it out first without touching the socket. A read that would wait has consumed
    // nothing (the bytes stay in the stream's buffers, which travel with it).
    let mut early = BytesMut::new();
    while early.len() < MAX_EARLY {
        match downstream.read_request_body().now_or_never() {
            Some(Ok(Some(bytes))) => early.extend_from_slice(&bytes),
            _ => break,
        }
    }
    let mut stand_in = ServerSession::new_http1(Box::new(StandIn));
    stand_in.set_keepalive(None);
    match std::mem::replace(downstream, stand_in) {
        ServerSession::H1(h1) => Some(Leaving {
            stream: crate::header_deadline::unwrap(h1.into_inner()),
            early: early.freeze(),
        }),
        other => {
            // Checked above; put it back rather than lose the client.
            *downstream = other;
            None
        }
    }
}

/// Take the whole HTTP/1 session out of `downstream` (a held long-poll: its answer is still to
/// come, and pingora's own writer will write it), leaving the same stand-in as [`take`].
/// `None` (and `downstream` untouched) for an HTTP/2 stream, which cannot leave.
pub fn take_session(downstream: &mut ServerSession) -> Option<ServerSession> {
    downstream.as_http1()?;
    let mut stand_in = ServerSession::new_http1(Box::new(StandIn));
    stand_in.set_keepalive(None);
    Some(std::mem::replace(downstream, stand_in))
}

/// Serves the rest of a kept-alive connection that left pingora for a while: a connection
/// comes back through here, the way pingora's own keep-alive loop gives its HTTP app each
/// next request.
type Reenter = Box<dyn Fn(Reused) -> Pin<Box<dyn Future<Output = ()> + Send>> + Send + Sync>;

/// Where a connection comes back to pingora once what held it outside is done (a held
/// long-poll, answered): pingora's HTTP app, with the listener's shutdown signal. Offered by
/// [`crate::h2_guard::H2Guard`] on its first HTTP/1 connection ([`Reentry::offer`]); until then
/// nothing is held outside.
#[derive(Default)]
pub struct Reentry(std::sync::OnceLock<Reenter>);

impl Reentry {
    /// Remember `app` (the listener's HTTP app) and `shutdown` for connections coming back.
    /// Only the first offer counts: every connection of the listener offers the same.
    pub fn offer<A: HttpServerApp + Send + Sync + 'static>(
        &self,
        app: &Arc<A>,
        shutdown: &pingora::server::ShutdownWatch,
    ) {
        if self.0.get().is_some() {
            return;
        }
        let (app, shutdown) = (app.clone(), shutdown.clone());
        let _ = self.0.set(Box::new(move |reused| {
            let (app, shutdown) = (app.clone(), shutdown.clone());
            Box::pin(async move { keep_serving(&app, reused, &shutdown).await })
        }));
    }

    /// Whether a connection can come back (the listener has offered its app).
    pub fn ready(&self) -> bool {
        self.0.get().is_some()
    }

    /// Serve `reused` (a connection whose last answer is written and which may be kept alive,
    /// with what its session carries over: [`reusable`]) from its next request on, as pingora
    /// serves any kept-alive connection. Closed if nothing was offered.
    pub async fn serve(&self, reused: Reused) {
        if let Some(reenter) = self.0.get() {
            reenter(reused).await;
        }
    }
}

/// A connection whose held answer is written, on its way back to pingora ([`reusable`]).
pub struct Reused {
    stream: ReusedHttpStream,
    /// The connection's keep-alive timeout as its session had it, in pingora's terms
    /// (`ServerSession::get_keepalive`): `None` off, `Some(0)` no limit, else seconds.
    keepalive: Option<u64>,
}

impl Reused {
    /// The stream and what its next session carries over.
    pub fn consume(self) -> (Stream, Option<HttpPersistentSettings>) {
        self.stream.consume()
    }
}

/// The connection of `session`, whose answer is written, as pingora's keep-alive loop carries
/// it to the next request: with what the session had left of the connection's keep-alive
/// (`keepalive_requests`: the requests it may still serve, its idle timeout). `None` when the
/// connection may not be reused. Taken apart, as before this, the connection came back as a
/// new one: its count of requests started again at every held poll, so a client polling in a
/// loop was never held to `keepalive_requests`.
///
/// pingora's `finish` future is boxed: at 4.5 KiB it was most of the size of every held poll's
/// future (5.8 KiB in all), which is copied whole into the box of each held poll's turn.
pub async fn reusable(session: ServerSession) -> Option<Reused> {
    let settings = HttpPersistentSettings::for_session(&session);
    let keepalive = session.get_keepalive();
    let reusable = Box::pin(session.finish()).await.ok()??;
    Some(Reused {
        stream: ReusedHttpStream::from_reusable_stream(reusable, settings),
        keepalive,
    })
}

/// pingora's keep-alive loop over an HTTP/1 connection (what its `ServerApp::process_new` runs
/// once it has found a connection to be HTTP/1): each next request gets a session carrying the
/// previous one's settings (one reuse fewer), until the app does not give the connection back.
///
/// Unlike pingora's loop, the wait for the next request's first bytes is this function's own
/// ([`next_request`]), and pingora's request future (11.6 KiB: every path of pingora-proxy's
/// request handling) is made and boxed only once they are here. Made up front, as before,
/// it waited in every connection between a held answer and the client's next poll: in a
/// fan-out, thousands at once per thread, on memory the allocator kept handing back to the
/// system and faulting in again: 1.3-1.5 page faults per long-poll delivery, 72% of them in
/// the copy into that box (0.01-0.04 since).
async fn keep_serving<A: HttpServerApp + Send + Sync + 'static>(
    app: &Arc<A>,
    first: Reused,
    shutdown: &pingora::server::ShutdownWatch,
) {
    let keepalive = first.keepalive;
    let mut next = Some(first.stream);
    while let Some((mut stream, settings)) = next.map(ReusedHttpStream::consume) {
        let ahead = next_request(&mut stream, keepalive, shutdown).await;
        let mut session = ServerSession::new_http1(stream);
        if let Some(settings) = settings {
            settings.apply_to_session(&mut session);
        }
        match ahead {
            Ahead::Bytes(bytes) => session.set_pipelined_prefix(bytes),
            Ahead::Closed => return,
            Ahead::Unread => {}
        }
        next = Box::pin(app.process_new_http(session, shutdown)).await;
    }
}

/// How the wait for a kept-alive connection's next request ended.
#[derive(Debug)]
enum Ahead {
    /// Its first bytes, for pingora to parse as if it had read them (its pipelined prefix:
    /// pingora carries one over only for sessions with pipelining on, which the gateway never
    /// turns on, so this is the only one).
    Bytes(BytesMut),
    /// The client closed, the read failed, or the keep-alive timeout passed: the connection
    /// ends, as pingora ends it in each of those cases.
    Closed,
    /// Nothing read: the server is shutting down, or keep-alive is off. pingora's own read
    /// takes over, with its own handling of both.
    Unread,
}

/// pingora's first read of the next request on a kept-alive connection
/// (`HttpSession::read_request`: a read into a buffer of its initial header size, bounded by
/// the keep-alive timeout, given up at shutdown), done before pingora's request future exists.
async fn next_request(
    stream: &mut Stream,
    keepalive: Option<u64>,
    shutdown: &pingora::server::ShutdownWatch,
) -> Ahead {
    use tokio::io::AsyncReadExt;
    /// pingora's `INIT_HEADER_BUF_SIZE`: the buffer it would have read the head into.
    const HEAD_BUFFER: usize = 4096;
    let Some(keepalive) = keepalive else {
        return Ahead::Unread;
    };
    let mut watch = shutdown.clone();
    if *watch.borrow_and_update() {
        return Ahead::Unread;
    }
    let mut buf = BytesMut::with_capacity(HEAD_BUFFER);
    let read = async {
        match keepalive {
            0 => stream.read_buf(&mut buf).await.ok(),
            secs => pingora::time::timeout(Duration::from_secs(secs), stream.read_buf(&mut buf))
                .await
                .ok()
                .and_then(Result::ok),
        }
    };
    tokio::select! {
        biased;
        read = read => match read {
            Some(n) if n > 0 => Ahead::Bytes(buf),
            _ => Ahead::Closed,
        },
        _ = watch.changed() => Ahead::Unread,
    }
}

/// What a held connection does next, as one future: wait for its answer, write it, and serve
/// the connection on ([`Reentry::serve`]).
pub type Turn = Pin<Box<dyn Future<Output = ()> + Send>>;

tokio::task_local! {
    /// The next held turn of the connection this task is serving, parked by [`run_held`].
    static NEXT_TURN: std::cell::Cell<Option<Turn>>;
}

/// Run a held connection's `turn` in the task that is serving the connection already, when
/// there is one (its previous held answer brought it back to pingora, which read this poll
/// from inside that task: [`in_turns`]), in a task of its own otherwise. A client polling in a
/// loop is then served by one task from poll to poll, where each held poll spawned a task
/// before: measured on the long-poll fan-out, the spawn, the task list's lock at its start and
/// end, and moving the whole future into the new task were about 5% of the gateway's CPU.
pub fn run_held(turn: Turn) {
    let mut turn = Some(turn);
    let _ = NEXT_TURN.try_with(|next| {
        // One held request per turn: a connection that is held leaves pingora, so nothing
        // else can be read from it in the same turn. Were one parked already, the newcomer
        // gets a task of its own rather than replace it.
        if let Some(parked) = next.take() {
            next.set(Some(parked));
        } else {
            next.set(turn.take());
        }
    });
    if let Some(turn) = turn {
        drop(tokio::spawn(in_turns(turn)));
    }
}

/// Run `turn`, then every turn parked meanwhile by [`run_held`], one after the other.
async fn in_turns(mut turn: Turn) {
    loop {
        let served = async move {
            turn.await;
            NEXT_TURN.with(|next| next.take())
        };
        match NEXT_TURN.scope(std::cell::Cell::new(None), served).await {
            Some(next) => turn = next,
            None => return,
        }
    }
}

impl Leaving {
    /// The connection as the service will use it. `send_timeout`: how long a write may wait
    /// for the client to take bytes (nginx `send_timeout`); `on_end` runs when the service
    /// lets go of it.
    pub fn into_conn(self, send_timeout: Duration, on_end: Option<OnEnd>) -> Conn {
        Conn {
            stream: Some(self.stream),
            early: self.early,
            send_timeout,
            stalled: None,
            shut_down: false,
            write_buffer: true,
            tally: Tally::default(),
            on_end,
        }
    }

    /// Whether the connection is TLS.
    pub fn is_tls(&self) -> bool {
        self.stream.get_ssl_digest().is_some()
    }
}

/// What passed on a handed-off connection, for its log line.
#[derive(Debug, Default)]
pub struct Tally {
    /// Bytes written to the client.
    pub sent: u64,
    /// Bytes read from the client (the early ones included).
    pub received: u64,
    /// The WebSocket frames each way.
    pub frames: Box<Frames>,
}

impl Tally {
    fn received(&mut self, bytes: &[u8]) {
        self.received += bytes.len() as u64;
        self.frames.client_sent(bytes);
    }

    fn sent(&mut self, bytes: &[u8]) {
        self.sent += bytes.len() as u64;
        self.frames.sent_to_client(bytes);
    }
}

/// Run once when the service lets go of the connection: count and log the session, free what
/// it held (its gauges, its per-client slot).
pub type OnEnd = Box<dyn FnOnce(Tally) + Send>;

/// A handed-off client connection: the service reads and writes the client's (TLS) stream
/// through it. Dropping it ends the session ([`OnEnd`]) and closes the connection cleanly.
pub struct Conn {
    stream: Option<Stream>,
    early: Bytes,
    send_timeout: Duration,
    /// Armed when a write has to wait for the client, dropped as soon as one goes through: an
    /// idle connection, or one whose client keeps up, has no timer.
    stalled: Option<Pin<Box<Sleep>>>,
    shut_down: bool,
    /// pingora's L4 write buffer and its digests are still there: given back at the first
    /// flush that empties the buffer ([`release_left_behind`]).
    write_buffer: bool,
    tally: Tally,
    on_end: Option<OnEnd>,
}

impl Conn {
    /// A write is waiting for the client: past `send_timeout` without progress it fails.
    fn stall<T>(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<T>> {
        let timeout = self.send_timeout;
        let timer = self
            .stalled
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        match timer.as_mut().poll(cx) {
            Poll::Ready(()) => {
                tracing::info!(
                    ms = timeout.as_millis() as u64,
                    "client took nothing within send_timeout: upgraded connection closed"
                );
                Poll::Ready(Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "the client took nothing within send_timeout",
                )))
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

fn closed() -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::NotConnected, "connection closed")
}

impl AsyncRead for Conn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        if !this.early.is_empty() {
            let n = this.early.len().min(buf.remaining());
            let chunk = this.early.split_to(n);
            buf.put_slice(&chunk);
            this.tally.received(&chunk);
            return Poll::Ready(Ok(()));
        }
        let Some(stream) = this.stream.as_mut() else {
            return Poll::Ready(Ok(()));
        };
        let before = buf.filled().len();
        let r = Pin::new(stream).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = r {
            this.tally.received(&buf.filled()[before..]);
        }
        r
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = &mut *self;
        let Some(stream) = this.stream.as_mut() else {
            return Poll::Ready(Err(closed()));
        };
        match Pin::new(stream).poll_write(cx, data) {
            Poll::Ready(Ok(n)) => {
                this.stalled = None;
                this.tally.sent(&data[..n]);
                Poll::Ready(Ok(n))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => this.stall(cx),
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        let Some(stream) = this.stream.as_mut() else {
            return Poll::Ready(Err(closed()));
        };
        match Pin::new(stream).poll_flush(cx) {
            Poll::Ready(r) => {
                this.stalled = None;
                if r.is_ok() && this.write_buffer {
                    this.write_buffer = false;
                    this.stream = this.stream.take().map(release_left_behind);
                }
                Poll::Ready(r)
            }
            Poll::Pending => this.stall(cx),
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        let Some(stream) = this.stream.as_mut() else {
            return Poll::Ready(Ok(()));
        };
        match Pin::new(stream).poll_shutdown(cx) {
            Poll::Ready(r) => {
                this.stalled = None;
                this.shut_down = true;
                Poll::Ready(r)
            }
            Poll::Pending => this.stall(cx),
        }
    }
}

/// Give back what pingora kept under a connection that left it and that nothing reads any
/// more, all allocated when the connection was accepted and kept for its life:
/// - its L4 write buffer (1,460 bytes): the service gathers its own writes (a WebSocket's
///   frames, an event stream's chunks) into one write each, which the TLS layer encrypts and
///   sends in one system call, so the buffer only batched what was batched already;
/// - its socket's and its TLS session's digests (addresses, cipher, about 550 bytes): read by
///   pingora's HTTP session, which is gone; what the log line needs was taken before.
///
/// Called once the buffer is flushed empty (the `101` or the stream's head went through it);
/// a stream that is neither plain TCP nor TLS over it (a test's pipe) is left as it is.
fn release_left_behind(stream: Stream) -> Stream {
    use pingora::protocols::l4::stream::Stream as L4;
    use pingora::protocols::tls::TlsStream;
    use pingora::protocols::IO;
    let release = |l4: &mut L4| {
        l4.release_write_buffer();
        l4.release_socket_digest();
    };
    if (*stream).as_any().is::<L4>() {
        if let Ok(mut l4) = IO::into_any(stream).downcast::<L4>() {
            release(&mut l4);
            return l4;
        }
        unreachable!("the stream was checked to be an L4 stream");
    }
    if (*stream).as_any().is::<TlsStream<L4>>() {
        if let Ok(mut tls) = IO::into_any(stream).downcast::<TlsStream<L4>>() {
            tls.release_digest();
            if let Some(l4) = tls.transport_mut() {
                release(l4);
            }
            return tls;
        }
        unreachable!("the stream was checked to be a TLS stream");
    }
    stream
}

/// Most bytes of queued chunks gathered into one write (one TLS record holds 16 KiB).
const BATCH_BYTES: usize = 16 * 1024;

/// The end of a chunked body (RFC 9112 §7.1): a chunk of size 0, no trailers.
pub const LAST_CHUNK: &[u8] = b"0\r\n\r\n";

/// Append `data` to `out` as one chunk of a chunked body (RFC 9112 §7.1): its size in hex,
/// CRLF, the data, CRLF. Empty data appends nothing: a chunk of size 0 would end the body.
pub fn frame_chunk(data: &[u8], out: &mut BytesMut) {
    if data.is_empty() {
        return;
    }
    use std::fmt::Write as _;
    // Writing into a `BytesMut` cannot fail.
    let _ = write!(out, "{:x}\r\n", data.len());
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
}

/// Send a streamed answer's body (Server-Sent Events) on a connection that left pingora, its
/// head already written: chunked, until the service ends it (then the last chunk) or the
/// client goes away. Chunks that queued up meanwhile go out in one write. The client's side is
/// only watched for its end, which stops the stream at once (its receiver is dropped, so the
/// service's producer stops at its next send), as pingora's `read_body_or_idle` did; anything
/// it sends (nothing, from an event source) is dropped, and the connection is not reused.
pub async fn send_chunked(mut conn: Conn, mut body: realtime::seam::BodyStream) {
    use futures_util::StreamExt;
    use tokio::io::AsyncReadExt;
    // The head may still sit in a buffer below: the client learns at once that the stream is
    // open (an EventSource fires `open` on the head).
    if conn.flush().await.is_err() {
        return;
    }
    let mut probe = [0u8; 64];
    loop {
        tokio::select! {
            chunk = body.next() => {
                let Some(first) = chunk else {
                    let _ = conn.write_all(LAST_CHUNK).await;
                    let _ = conn.flush().await;
                    return;
                };
                let mut out = BytesMut::with_capacity(first.len() + 16);
                frame_chunk(&first, &mut out);
                // What is ready now goes in the same write; a chunk that is not is left where
                // it is (polling a stream's `next` does not lose what it has started). A
                // stream is not polled again once it has ended.
                let mut ended = false;
                while out.len() < BATCH_BYTES {
                    match body.next().now_or_never() {
                        Some(Some(more)) => frame_chunk(&more, &mut out),
                        Some(None) => {
                            out.extend_from_slice(LAST_CHUNK);
                            ended = true;
                            break;
                        }
                        None => break,
                    }
                }
                if !out.is_empty()
                    && (conn.write_all(&out).await.is_err() || conn.flush().await.is_err())
                {
                    return;
                }
                if ended {
                    return;
                }
            }
            read = conn.read(&mut probe) => match read {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            },
        }
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        if let Some(end) = self.on_end.take() {
            end(std::mem::take(&mut self.tally));
        }
        let Some(mut stream) = self.stream.take() else {
            return;
        };
        if self.shut_down {
            return;
        }
        // TLS `close_notify`, then FIN: a clean end the client can tell from a cut. Outside a
        // runtime (a test's), the socket just closes.
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                let _ =
                    tokio::time::timeout(CLOSE_GRACE, AsyncWriteExt::shutdown(&mut stream)).await;
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pingora::http::ResponseHeader;
    use tokio::io::{AsyncReadExt, DuplexStream};

    /// An HTTP/1 server session over one end of an in-memory pipe, its request head read; the
    /// other end is the client, which sent `sent`.
    async fn session(sent: &[u8]) -> (ServerSession, DuplexStream) {
        let (mut client, server) = tokio::io::duplex(64 * 1024);
        client.write_all(sent).await.expect("client writes");
        let mut session = ServerSession::new_http1(Box::new(server));
        assert!(session.read_request().await.expect("head"));
        (session, client)
    }

    const UPGRADE: &[u8] =
        b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n";

    /// The server end of an in-memory pipe as a pingora stream, and the client end.
    fn pipe() -> (Stream, DuplexStream) {
        let (client, server) = tokio::io::duplex(64 * 1024);
        (Box::new(server), client)
    }

    #[tokio::test]
    async fn the_next_requests_first_bytes_become_the_head_pingora_parses() {
        let (mut stream, mut client) = pipe();
        let (_tx, shutdown) = tokio::sync::watch::channel(false);
        client
            .write_all(b"GET /s?t=news HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .expect("client writes");
        let Ahead::Bytes(bytes) = next_request(&mut stream, Some(60), &shutdown).await else {
            panic!("the bytes that came were not read");
        };
        // pingora parses them as the request, without reading the stream again.
        let mut session = ServerSession::new_http1(stream);
        session.set_pipelined_prefix(bytes);
        assert!(session.read_request().await.expect("head"));
        assert_eq!(session.req_header().uri.path(), "/s");
        assert_eq!(session.req_header().uri.query(), Some("t=news"));
    }

    #[tokio::test]
    async fn a_client_that_closes_instead_of_asking_again_ends_the_connection() {
        let (mut stream, client) = pipe();
        let (_tx, shutdown) = tokio::sync::watch::channel(false);
        drop(client);
        assert!(matches!(
            next_request(&mut stream, Some(60), &shutdown).await,
            Ahead::Closed
        ));
    }

    #[tokio::test]
    async fn an_idle_connection_ends_at_its_keepalive_timeout() {
        let (mut stream, _client) = pipe();
        let (_tx, shutdown) = tokio::sync::watch::channel(false);
        let started = std::time::Instant::now();
        assert!(matches!(
            next_request(&mut stream, Some(1), &shutdown).await,
            Ahead::Closed
        ));
        assert!(started.elapsed() >= Duration::from_millis(900));
    }

    #[tokio::test]
    async fn at_shutdown_or_without_keepalive_the_wait_is_left_to_pingora_with_nothing_read() {
        let (mut stream, mut client) = pipe();
        let (tx, shutdown) = tokio::sync::watch::channel(false);
        let wait = tokio::spawn(async move {
            let ahead = next_request(&mut stream, Some(60), &shutdown).await;
            (ahead, stream)
        });
        tokio::task::yield_now().await;
        tx.send(true).expect("watched");
        let (ahead, mut stream) = wait.await.expect("no panic");
        assert!(matches!(ahead, Ahead::Unread), "{ahead:?}");
        // Keep-alive off: nothing is read either; what comes later is still the stream's.
        client
            .write_all(b"GET / HTTP/1.1\r\n\r\n")
            .await
            .expect("write");
        let (_tx, shutdown) = tokio::sync::watch::channel(false);
        assert!(matches!(
            next_request(&mut stream, None, &shutdown).await,
            Ahead::Unread
        ));
        let mut got = [0u8; 3];
        stream.read_exact(&mut got).await.expect("read");
        assert_eq!(&got, b"GET");
    }

    async fn switch(session: &mut ServerSession) {
        let mut head = ResponseHeader::build(101, None).expect("head");
        head.insert_header("upgrade", "websocket").expect("upgrade");
        head.insert_header("connection", "Upgrade").expect("conn");
        session
            .write_response_header(Box::new(head))
            .await
            .expect("101 written");
    }

    async fn read_head(client: &mut DuplexStream) -> String {
        let mut got = Vec::new();
        while !got.ends_with(b"\r\n\r\n") {
            let mut b = [0u8; 1];
            client.read_exact(&mut b).await.expect("head byte");
            got.push(b[0]);
        }
        String::from_utf8(got).expect("utf-8")
    }

    #[tokio::test]
    async fn a_connection_that_left_gives_back_its_write_buffer_and_digest_once_flushed() {
        use pingora::listeners::L4BufferSettings;
        use pingora::protocols::l4::stream::Stream as L4;
        use pingora::protocols::GetSocketDigest;
        use pingora::protocols::SocketDigest;
        use std::os::fd::AsRawFd;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let mut client = tokio::net::TcpStream::connect(listener.local_addr().expect("addr"))
            .await
            .expect("connect");
        let (server, _) = listener.accept().await.expect("accept");
        // As the gateway's listeners make them: no read buffer, pingora's write buffer.
        let fd = server.as_raw_fd();
        let mut l4 = L4::from(server);
        l4.set_buffer(L4BufferSettings::default().read(0));
        l4.set_socket_digest(SocketDigest::from_raw_fd(fd));
        assert_eq!(l4.buffers().write_capacity(), 1460);
        client.write_all(UPGRADE).await.expect("request");
        let mut session = ServerSession::new_http1(Box::new(l4));
        assert!(session.read_request().await.expect("head"));
        switch(&mut session).await;
        let mut conn = take(&mut session)
            .expect("HTTP/1 leaves")
            .into_conn(Duration::from_secs(5), None);
        conn.write_all(b"first frame").await.expect("write");
        conn.flush().await.expect("flush");

        let stream = conn.stream.as_ref().expect("open");
        let l4 = (**stream)
            .as_any()
            .downcast_ref::<L4>()
            .expect("the L4 stream itself");
        assert_eq!(l4.buffers().write_capacity(), 0, "write buffer given back");
        assert!(l4.get_socket_digest().is_none(), "digest given back");
        // Nothing was lost or reordered on the way.
        let mut got = vec![0u8; 4096];
        let mut n = 0;
        while !got[..n].ends_with(b"first frame") {
            n += client.read(&mut got[n..]).await.expect("read");
        }
        assert!(got[..n].starts_with(b"HTTP/1.1 101"));
        // Writes go on, straight to the socket.
        conn.write_all(b"second").await.expect("write");
        conn.flush().await.expect("flush");
        let mut second = [0u8; 6];
        client.read_exact(&mut second).await.expect("read");
        assert_eq!(&second, b"second");
    }

    #[tokio::test]
    async fn bytes_sent_behind_the_upgrade_request_come_out_first() {
        let mut sent = UPGRADE.to_vec();
        sent.extend_from_slice(b"EARLY");
        let (mut session, mut client) = session(&sent).await;
        switch(&mut session).await;
        assert!(read_head(&mut client).await.starts_with("HTTP/1.1 101"));
        let leaving = take(&mut session).expect("an HTTP/1 session leaves");
        let mut conn = leaving.into_conn(Duration::from_secs(5), None);
        client.write_all(b" LATER").await.expect("client writes");
        let mut got = [0u8; 11];
        conn.read_exact(&mut got).await.expect("read");
        assert_eq!(&got, b"EARLY LATER");
        conn.write_all(b"back").await.expect("write");
        let mut back = [0u8; 4];
        client.read_exact(&mut back).await.expect("client reads");
        assert_eq!(&back, b"back");
        assert_eq!((conn.tally.received, conn.tally.sent), (11, 4));
    }

    #[tokio::test]
    async fn the_stand_in_finishes_without_writing_or_keeping_the_connection() {
        let (mut session, mut client) = session(UPGRADE).await;
        switch(&mut session).await;
        read_head(&mut client).await;
        let leaving = take(&mut session).expect("leaves");
        // What pingora does after the hook: finish the session, reuse the stream if it can.
        assert!(session.finish().await.expect("finish").is_none());
        // Nothing was written to the client by the finish, and the connection is still open.
        let mut conn = leaving.into_conn(Duration::from_secs(5), None);
        conn.write_all(b"still here").await.expect("write");
        let mut got = [0u8; 10];
        client.read_exact(&mut got).await.expect("client reads");
        assert_eq!(&got, b"still here");
    }

    #[tokio::test]
    async fn the_header_deadline_wrapper_is_left_behind() {
        let (mut client, server) = tokio::io::duplex(4096);
        client.write_all(UPGRADE).await.expect("write");
        let stream: Stream = crate::header_deadline::wrap(Box::new(server), Duration::from_secs(5));
        let mut session = ServerSession::new_http1(stream);
        session.read_request().await.expect("head");
        switch(&mut session).await;
        let leaving = take(&mut session).expect("leaves");
        assert!(leaving.stream.as_any().is::<DuplexStream>());
    }

    /// A turn that notes the task it runs in, then (when given one) hands `then` to
    /// [`run_held`], as a held poll read inside a turn does.
    fn noting(
        seen: tokio::sync::mpsc::UnboundedSender<tokio::task::Id>,
        then: Option<Turn>,
    ) -> Turn {
        Box::pin(async move {
            let _ = seen.send(tokio::task::id());
            // As the next poll arrives later: the turn is still running when it is held.
            tokio::task::yield_now().await;
            if let Some(then) = then {
                run_held(then);
            }
        })
    }

    #[tokio::test]
    async fn a_poll_held_inside_a_turn_runs_in_the_same_task_after_it() {
        let (seen, mut ids) = tokio::sync::mpsc::unbounded_channel();
        let third = noting(seen.clone(), None);
        let second = noting(seen.clone(), Some(third));
        let first = noting(seen.clone(), Some(second));
        drop(seen);
        let here = tokio::task::try_id();
        run_held(first);
        let mut got = Vec::new();
        while let Some(id) = ids.recv().await {
            got.push(id);
        }
        assert_eq!(got.len(), 3, "every turn ran");
        assert!(got.iter().all(|id| *id == got[0]), "one task: {got:?}");
        assert_ne!(Some(got[0]), here, "outside a turn, a task of its own");
    }

    #[tokio::test]
    async fn a_second_poll_parked_in_one_turn_gets_a_task_of_its_own() {
        let (seen, mut ids) = tokio::sync::mpsc::unbounded_channel();
        let (a, b) = (noting(seen.clone(), None), noting(seen.clone(), None));
        let first: Turn = {
            let seen = seen.clone();
            Box::pin(async move {
                let _ = seen.send(tokio::task::id());
                run_held(a);
                run_held(b);
            })
        };
        drop(seen);
        run_held(first);
        let mut got = Vec::new();
        while let Some(id) = ids.recv().await {
            got.push(id);
        }
        assert_eq!(got.len(), 3, "neither parked turn was lost: {got:?}");
        assert_eq!(
            got[0], got[1],
            "the first parked runs after the turn, in its task"
        );
        assert_ne!(got[0], got[2], "the second runs in a task of its own");
    }

    #[test]
    fn chunks_are_framed_as_rfc_9112_says() {
        let mut out = BytesMut::new();
        frame_chunk(b"data: 1\n\n", &mut out);
        frame_chunk(b"", &mut out);
        frame_chunk(&[b'x'; 26], &mut out);
        let mut want = b"9\r\ndata: 1\n\n\r\n1a\r\n".to_vec();
        want.extend_from_slice(&[b'x'; 26]);
        want.extend_from_slice(b"\r\n");
        assert_eq!(&out[..], &want[..]);
        assert_eq!(LAST_CHUNK, b"0\r\n\r\n");
    }

    #[tokio::test]
    async fn a_stream_that_left_is_sent_chunked_and_ended_with_the_last_chunk() {
        let (mut client, server) = tokio::io::duplex(4096);
        let conn = Leaving {
            stream: Box::new(server),
            early: Bytes::new(),
        }
        .into_conn(Duration::from_secs(5), None);
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let task = tokio::spawn(send_chunked(conn, realtime::seam::channel_body(rx)));
        tx.send(Bytes::from_static(b"data: a\n\n"))
            .await
            .expect("send");
        tx.send(Bytes::from_static(b"data: bc\n\n"))
            .await
            .expect("send");
        drop(tx);
        task.await.expect("sender");
        let mut got = Vec::new();
        client.read_to_end(&mut got).await.expect("read");
        assert_eq!(
            got,
            b"9\r\ndata: a\n\n\r\na\r\ndata: bc\n\n\r\n0\r\n\r\n".to_vec()
        );
    }

    #[tokio::test]
    async fn a_stream_ends_as_soon_as_its_client_goes_away() {
        let (client, server) = tokio::io::duplex(4096);
        let conn = Leaving {
            stream: Box::new(server),
            early: Bytes::new(),
        }
        .into_conn(Duration::from_secs(5), None);
        let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(4);
        let task = tokio::spawn(send_chunked(conn, realtime::seam::channel_body(rx)));
        drop(client);
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("the stream ended with its client")
            .expect("sender");
        assert!(tx.is_closed(), "the producer is told");
    }

    #[tokio::test(start_paused = true)]
    async fn a_write_the_client_does_not_take_fails_after_send_timeout() {
        let (client, server) = tokio::io::duplex(16);
        let leaving = Leaving {
            stream: Box::new(server),
            early: Bytes::new(),
        };
        let mut conn = leaving.into_conn(Duration::from_secs(3), None);
        let started = tokio::time::Instant::now();
        let err = conn
            .write_all(&[0u8; 1024])
            .await
            .expect_err("the client reads nothing");
        assert_eq!(err.kind(), std::io::ErrorKind::TimedOut);
        assert_eq!(started.elapsed(), Duration::from_secs(3));
        drop(client);
    }

    #[tokio::test]
    async fn dropping_the_connection_ends_the_session_and_closes_it() {
        let (mut client, server) = tokio::io::duplex(4096);
        let (tx, rx) = tokio::sync::oneshot::channel();
        let leaving = Leaving {
            stream: Box::new(server),
            early: Bytes::from_static(b"\x81\x80abcd"),
        };
        let on_end: OnEnd = Box::new(move |tally| {
            let _ = tx.send(tally);
        });
        let mut conn = leaving.into_conn(Duration::from_secs(5), Some(on_end));
        let mut frame = [0u8; 6];
        conn.read_exact(&mut frame).await.expect("early bytes");
        // A server Close frame, 1000.
        conn.write_all(b"\x88\x02\x03\xe8").await.expect("write");
        drop(conn);
        let tally = rx.await.expect("on_end ran");
        assert_eq!((tally.received, tally.sent), (6, 4));
        assert_eq!(tally.frames.from_client.messages, 1);
        assert_eq!(tally.frames.close.as_ref().and_then(|c| c.code), Some(1000));
        // Then the client reads what was written, and the end of the stream.
        let mut got = Vec::new();
        client.read_to_end(&mut got).await.expect("EOF");
        assert_eq!(got, b"\x88\x02\x03\xe8");
    }
}
