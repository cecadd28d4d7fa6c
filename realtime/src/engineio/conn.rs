//! One Engine.IO connection as the layer above (Socket.IO, or a raw echo) sees it: a stream of
//! incoming messages and a handle to send messages or close, whatever the transport underneath
//! (polling, WebSocket, or polling upgraded to WebSocket mid-way).

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::pin::pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use tokio::sync::Notify;

use crate::sync::{lock, SetOnce};

use super::Transport;

/// An Engine.IO `message` payload: text, or binary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    Text(String),
    Binary(Bytes),
}

/// Why a connection ended: the reasons the reference server reports to `close` listeners.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CloseReason {
    /// The client sent a `close` packet.
    ClientClose,
    /// The transport went away (socket closed, poll not renewed in time).
    TransportClose,
    /// The transport failed (write error, protocol error on the wire).
    TransportError(String),
    /// No `pong` within `pingTimeout`.
    PingTimeout,
    /// The layer above closed it (`ConnSender::close`).
    ServerClose,
    /// The server is shutting down.
    ServerShutdown,
    /// The client did not read its messages fast enough and the outgoing queue filled up.
    SlowConsumer,
    /// The client broke the protocol (bad packet, second concurrent poll, ...).
    ParseError(String),
}

impl CloseReason {
    /// The reason string the reference server uses (`socket.conn.on("close", reason)`).
    pub fn as_str(&self) -> &str {
        match self {
            CloseReason::ClientClose => "forced close",
            CloseReason::TransportClose => "transport close",
            CloseReason::TransportError(_) => "transport error",
            CloseReason::PingTimeout => "ping timeout",
            CloseReason::ServerClose => "forced server close",
            CloseReason::ServerShutdown => "server shutting down",
            CloseReason::SlowConsumer => "slow consumer",
            CloseReason::ParseError(_) => "parse error",
        }
    }
}

/// What the handshake request looked like, for authentication and logging by the layer above.
#[derive(Debug, Clone)]
pub struct HandshakeInfo {
    pub headers: http::HeaderMap,
    /// The raw query string of the handshake request.
    pub query: String,
    pub peer: Option<SocketAddr>,
    /// The address per-client limits count against ([`crate::seam::Request::client_ip`]):
    /// the peer's, or the one a trusted proxy forwarded.
    pub client: Option<std::net::IpAddr>,
    /// The gateway's address the client connected to ([`crate::seam::Request::local`]).
    pub local: Option<SocketAddr>,
    /// The handshake's `:authority` (an HTTP/2 request carries no `Host`).
    pub authority: Option<String>,
    pub secure: bool,
    /// The transport the connection was opened with.
    pub transport: Transport,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SendError {
    #[error("connection closed")]
    Closed,
    #[error("outgoing queue full")]
    Full,
}

/// Shared state between the connection's sender handles and its transport task.
#[derive(Debug)]
struct Shared {
    /// Why the connection closed, once it has: its flag is read at every message queued.
    close: SetOnce<CloseReason>,
    /// The messages waiting to be written.
    out: Bounded,
}

/// A connection's queue of messages, one each way: one lock and one buffer, where tokio's
/// bounded channel took a semaphore permit, a slot in a linked block and a waker of its own
/// for every message (each a cache line of the connection's that a quiet room finds cold), and
/// kept about 1.5 KiB per connection and direction (its cache-padded state and a first block
/// of 32 slots) while the queue was empty. An empty queue here allocates nothing.
#[derive(Debug)]
struct Bounded {
    queue: Mutex<Queue>,
    /// At most this many messages wait.
    capacity: usize,
    /// Woken when a full queue gives room.
    room: Notify,
}

#[derive(Debug)]
struct Queue {
    frames: VecDeque<Frame>,
    /// The transport's, while it waits for a message.
    waker: Option<Waker>,
    /// Sender handles alive: the receiver sees the end once none is left.
    senders: usize,
    /// Whether the receiver is alive: a sender sees the end once it is gone.
    receiver: bool,
}

impl Bounded {
    fn new(capacity: usize) -> Bounded {
        Bounded {
            queue: Mutex::new(Queue {
                frames: VecDeque::new(),
                waker: None,
                senders: 1,
                receiver: true,
            }),
            capacity: capacity.max(1),
            room: Notify::new(),
        }
    }

    /// The queue, locked, when its receiver is alive and it has room for `n` more messages.
    fn room_for(&self, n: usize) -> Result<MutexGuard<'_, Queue>, SendError> {
        let queue = lock(&self.queue);
        if !queue.receiver {
            return Err(SendError::Closed);
        }
        if queue.frames.len() + n > self.capacity {
            return Err(SendError::Full);
        }
        Ok(queue)
    }

    /// Messages were pushed on `queue`: its receiver is woken, if it waits.
    fn queued(&self, mut queue: MutexGuard<'_, Queue>) {
        let waker = queue.waker.take();
        drop(queue);
        if let Some(waker) = waker {
            waker.wake();
        }
    }

    /// Queue `frame` if there is room, with `open` checked first; gives it back otherwise.
    fn try_push(&self, frame: Frame, open: bool) -> Result<(), (SendError, Frame)> {
        if !open {
            return Err((SendError::Closed, frame));
        }
        match self.room_for(1) {
            Ok(mut queue) => {
                queue.frames.push_back(frame);
                self.queued(queue);
                Ok(())
            }
            Err(e) => Err((e, frame)),
        }
    }

    /// Queue `frame`, waiting for room while `open()` holds.
    async fn push(&self, frame: Frame, open: impl Fn() -> bool) -> Result<(), (SendError, Frame)> {
        let mut frame = frame;
        loop {
            // Listening before the attempt: room made in between is not missed.
            let mut room = pin!(self.room.notified());
            room.as_mut().enable();
            match self.try_push(frame, open()) {
                Err((SendError::Full, back)) => frame = back,
                done => return done,
            }
            room.await;
        }
    }

    fn pop(&self, queue: &mut Queue) -> Option<Frame> {
        let was_full = queue.frames.len() >= self.capacity;
        let frame = queue.frames.pop_front()?;
        if was_full {
            self.room.notify_waiters();
        }
        Some(frame)
    }

    /// The next message; `None` once the queue is empty and every sender is gone. When
    /// pending, `cx`'s waker is woken by the next message (or the last sender's end).
    fn poll_pop(&self, cx: &mut Context<'_>) -> Poll<Option<Frame>> {
        let mut queue = lock(&self.queue);
        if let Some(frame) = self.pop(&mut queue) {
            return Poll::Ready(Some(frame));
        }
        if queue.senders == 0 {
            return Poll::Ready(None);
        }
        match &mut queue.waker {
            Some(waker) if waker.will_wake(cx.waker()) => {}
            slot => *slot = Some(cx.waker().clone()),
        }
        Poll::Pending
    }

    /// Gives back the queue's buffer if it is empty. It grows with the messages queued and
    /// stays at its largest: on a connection that has gone quiet, room for messages that are
    /// not coming.
    fn release_if_empty(&self) {
        let mut queue = lock(&self.queue);
        if queue.frames.is_empty() && queue.frames.capacity() > 0 {
            queue.frames = VecDeque::new();
        }
    }

    fn sender_added(&self) {
        lock(&self.queue).senders += 1;
    }

    /// A sender is gone; the last one's end wakes the receiver (it sees the end).
    fn sender_dropped(&self) {
        let waker = {
            let mut queue = lock(&self.queue);
            queue.senders -= 1;
            if queue.senders > 0 {
                return;
            }
            queue.waker.take()
        };
        if let Some(waker) = waker {
            waker.wake();
        }
    }

    /// The receiver is gone: what waits is dropped, and senders waiting for room see the end.
    fn receiver_dropped(&self) {
        let mut queue = lock(&self.queue);
        queue.receiver = false;
        queue.frames.clear();
        drop(queue);
        self.room.notify_waiters();
    }
}

/// Sends to one connection. Cheap to clone; every clone talks to the same connection.
#[derive(Debug)]
pub struct ConnSender {
    shared: Arc<Shared>,
}

impl Clone for ConnSender {
    fn clone(&self) -> ConnSender {
        self.shared.out.sender_added();
        ConnSender {
            shared: Arc::clone(&self.shared),
        }
    }
}

impl Drop for ConnSender {
    fn drop(&mut self) {
        self.shared.out.sender_dropped();
    }
}

impl ConnSender {
    /// Queue a message without waiting. A full queue means the client is not keeping up;
    /// the caller decides (the Socket.IO layer closes the connection as a slow consumer).
    pub fn try_send(&self, frame: Frame) -> Result<(), SendError> {
        self.try_send_back(frame).map_err(|(e, _)| e)
    }

    /// Queue a message, waiting for room in the queue.
    pub async fn send(&self, frame: Frame) -> Result<(), SendError> {
        self.shared
            .out
            .push(frame, || !self.is_closed())
            .await
            .map_err(|(e, _)| e)
    }

    /// Queues `frames` one after the other with nothing between them (a packet's text and
    /// its binary attachments), or none of them; as [`ConnSender::try_send`] otherwise.
    pub fn try_send_all<I>(&self, frames: I) -> Result<(), SendError>
    where
        I: IntoIterator<Item = Frame>,
        I::IntoIter: ExactSizeIterator,
    {
        let frames = frames.into_iter();
        let mut queue = self.room_for(frames.len())?;
        queue.frames.extend(frames);
        self.shared.out.queued(queue);
        Ok(())
    }

    /// [`ConnSender::try_send`], giving the message back when it was not queued.
    fn try_send_back(&self, frame: Frame) -> Result<(), (SendError, Frame)> {
        self.shared.out.try_push(frame, !self.is_closed())
    }

    /// The queue, locked, when it is open and has room for `n` more messages.
    fn room_for(&self, n: usize) -> Result<MutexGuard<'_, Queue>, SendError> {
        if self.is_closed() {
            return Err(SendError::Closed);
        }
        self.shared.out.room_for(n)
    }

    /// The outgoing queue gives back its buffer if it is empty: the session's heartbeat calls
    /// this at every ping, so a connection that went quiet keeps no room for messages, and one
    /// that is busy does not allocate it again at every message.
    pub fn release_idle(&self) {
        self.shared.out.release_if_empty();
    }

    /// Close the connection (the first reason given wins).
    pub fn close(&self, reason: CloseReason) {
        self.shared.close.set(reason);
    }

    pub fn is_closed(&self) -> bool {
        self.shared.close.is_set()
    }

    pub fn close_reason(&self) -> Option<CloseReason> {
        self.shared.close.get()
    }

    /// Resolves when the connection is closed, with the reason.
    pub async fn closed(&self) -> CloseReason {
        self.shared.close.wait().await
    }
}

/// Why [`OutQueue::try_recv`] found nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TryRecvError {
    Empty,
    /// Empty, and every sender is gone.
    Disconnected,
}

/// The receiving end of a connection's outgoing queue: the transport writing to the client.
#[derive(Debug)]
pub struct OutQueue {
    shared: Arc<Shared>,
}

impl OutQueue {
    /// The next message, without waiting.
    pub fn try_recv(&mut self) -> Result<Frame, TryRecvError> {
        let out = &self.shared.out;
        let mut queue = lock(&out.queue);
        out.pop(&mut queue).ok_or(if queue.senders == 0 {
            TryRecvError::Disconnected
        } else {
            TryRecvError::Empty
        })
    }

    /// The next message; `None` once the queue is empty and every sender is gone. When
    /// pending, `cx`'s waker is woken by the next message (or the last sender's end).
    pub fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Option<Frame>> {
        self.shared.out.poll_pop(cx)
    }

    /// The next message, waiting for one; `None` once every sender is gone.
    pub async fn recv(&mut self) -> Option<Frame> {
        std::future::poll_fn(|cx| self.poll_recv(cx)).await
    }

    pub fn is_empty(&self) -> bool {
        lock(&self.shared.out.queue).frames.is_empty()
    }
}

impl Drop for OutQueue {
    fn drop(&mut self) {
        self.shared.out.receiver_dropped();
    }
}

/// The client's messages towards the layer above, in order: the receiving end of the
/// connection's incoming queue. `None` once the queue is empty and the session let go of it
/// (the connection closed).
#[derive(Debug)]
pub struct Incoming {
    shared: Arc<Bounded>,
}

impl Incoming {
    /// The next message, waiting for one. Cancel-safe: a message is taken only when returned.
    pub async fn recv(&mut self) -> Option<Frame> {
        std::future::poll_fn(|cx| self.shared.poll_pop(cx)).await
    }
}

impl Drop for Incoming {
    fn drop(&mut self) {
        self.shared.receiver_dropped();
    }
}

/// Where the session puts the client's messages for the layer above. Cheap to clone.
#[derive(Debug)]
pub struct IncomingSender {
    shared: Arc<Bounded>,
}

impl Clone for IncomingSender {
    fn clone(&self) -> IncomingSender {
        self.shared.sender_added();
        IncomingSender {
            shared: Arc::clone(&self.shared),
        }
    }
}

impl Drop for IncomingSender {
    fn drop(&mut self) {
        self.shared.sender_dropped();
    }
}

impl IncomingSender {
    /// Queue a message without waiting; given back when the queue is full or the layer above
    /// is gone.
    pub fn try_send(&self, frame: Frame) -> Result<(), (SendError, Frame)> {
        self.shared.try_push(frame, true)
    }

    /// Queue a message, waiting for room; `Err` when the layer above is gone.
    pub async fn send(&self, frame: Frame) -> Result<(), SendError> {
        self.shared.push(frame, || true).await.map_err(|(e, _)| e)
    }

    /// Whether the layer above dropped its end ([`Incoming`]).
    pub fn is_closed(&self) -> bool {
        !lock(&self.shared.queue).receiver
    }
}

/// The connection as handed to the layer above.
pub struct Conn {
    pub sid: Arc<str>,
    pub info: Arc<HandshakeInfo>,
    /// Messages from the client, in order. `None` once the connection is closed.
    pub incoming: Incoming,
    pub sender: ConnSender,
}

/// The transport side of a connection: what the Engine.IO server keeps.
pub struct ConnTransport {
    /// Messages from the layer above, to be written to the client.
    pub outgoing: OutQueue,
    /// Where to put messages received from the client.
    pub incoming: IncomingSender,
    pub sender: ConnSender,
}

/// Make both ends of a connection. `out_capacity` bounds the messages waiting to be written to
/// a client; `in_capacity` bounds those waiting for the layer above.
pub fn pair(
    sid: Arc<str>,
    info: impl Into<Arc<HandshakeInfo>>,
    out_capacity: usize,
    in_capacity: usize,
) -> (Conn, ConnTransport) {
    let inbound = Arc::new(Bounded::new(in_capacity));
    let (in_tx, in_rx) = (
        IncomingSender {
            shared: Arc::clone(&inbound),
        },
        Incoming { shared: inbound },
    );
    let shared = Arc::new(Shared {
        close: SetOnce::default(),
        out: Bounded::new(out_capacity),
    });
    let out_rx = OutQueue {
        shared: Arc::clone(&shared),
    };
    let sender = ConnSender { shared };
    (
        Conn {
            sid,
            info: info.into(),
            incoming: in_rx,
            sender: sender.clone(),
        },
        ConnTransport {
            outgoing: out_rx,
            incoming: in_tx,
            sender,
        },
    )
}

/// What the layer above runs for one connection: typically a loop over `incoming`.
pub type ConnFuture = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + 'static>>;

/// What the layer above runs for one connection, in at most two futures that the session's
/// task polls apart, each only when something woke it.
pub struct ConnWork {
    /// Serves what the client sends: typically a loop over [`Conn::incoming`].
    pub incoming: ConnFuture,
    /// Sends what comes from elsewhere (a hub's messages), apart from `incoming` so that a
    /// delivery's wake-up does not poll the client's side (its queue, its close watch): a
    /// delivery is the common wake-up of an idle client.
    pub outgoing: Option<ConnFuture>,
}

impl ConnWork {
    /// Work that is all in one future.
    pub fn one(incoming: ConnFuture) -> ConnWork {
        ConnWork {
            incoming,
            outgoing: None,
        }
    }
}

/// The layer above an Engine.IO server: told of each new connection, it owns it from then on.
///
/// It answers with the futures that serve the connection rather than spawning them: the
/// session's own task polls them beside the heartbeat and, on a WebSocket, the socket's reads
/// and writes, so a connection is one task, and a message the layer above queues is written
/// by the task that queued it, in the same wake-up. The futures should end once the connection
/// is closed ([`ConnSender::closed`], or `incoming` ending); the session's task ends with them.
pub trait ConnHandler: Send + Sync + 'static {
    fn on_connection(&self, conn: Conn) -> ConnWork;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info() -> HandshakeInfo {
        HandshakeInfo {
            headers: http::HeaderMap::new(),
            query: String::new(),
            peer: None,
            client: None,
            local: None,
            authority: None,
            secure: false,
            transport: Transport::Polling,
        }
    }

    #[tokio::test]
    async fn first_close_reason_wins_and_sends_stop() {
        let (conn, mut transport) = pair("s".into(), info(), 2, 2);
        conn.sender
            .try_send(Frame::Text("a".into()))
            .expect("queued");
        assert_eq!(
            transport.outgoing.recv().await,
            Some(Frame::Text("a".into()))
        );
        conn.sender.close(CloseReason::PingTimeout);
        conn.sender.close(CloseReason::ServerClose);
        assert_eq!(conn.sender.closed().await, CloseReason::PingTimeout);
        assert_eq!(
            transport.sender.try_send(Frame::Text("b".into())),
            Err(SendError::Closed)
        );
    }

    #[tokio::test]
    async fn an_idle_queue_gives_back_its_buffer_and_queues_on() {
        let (conn, mut transport) = pair("s".into(), info(), 8, 1);
        let capacity = |sender: &ConnSender| lock(&sender.shared.out.queue).frames.capacity();
        for text in ["a", "b"] {
            conn.sender
                .try_send(Frame::Text(text.into()))
                .expect("queued");
        }
        // Not while a message waits.
        conn.sender.release_idle();
        assert!(capacity(&conn.sender) > 0);
        for text in ["a", "b"] {
            assert_eq!(
                transport.outgoing.recv().await,
                Some(Frame::Text(text.into()))
            );
        }
        assert!(capacity(&conn.sender) > 0, "kept while busy");
        conn.sender.release_idle();
        assert_eq!(capacity(&conn.sender), 0);
        conn.sender
            .try_send(Frame::Text("c".into()))
            .expect("queued");
        assert_eq!(
            transport.outgoing.recv().await,
            Some(Frame::Text("c".into()))
        );
    }

    #[tokio::test]
    async fn a_full_queue_is_reported_not_grown() {
        let (conn, _transport) = pair("s".into(), info(), 1, 1);
        conn.sender
            .try_send(Frame::Text("a".into()))
            .expect("queued");
        assert_eq!(
            conn.sender.try_send(Frame::Text("b".into())),
            Err(SendError::Full)
        );
    }

    #[tokio::test]
    async fn send_waits_for_room_and_gets_it_when_a_message_is_taken() {
        let (conn, mut transport) = pair("s".into(), info(), 1, 1);
        conn.sender
            .send(Frame::Text("a".into()))
            .await
            .expect("room");
        let sender = conn.sender.clone();
        let waiting = tokio::spawn(async move { sender.send(Frame::Text("b".into())).await });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished(), "the queue is full: the send waits");
        assert_eq!(
            transport.outgoing.recv().await,
            Some(Frame::Text("a".into()))
        );
        assert_eq!(waiting.await.expect("no panic"), Ok(()));
        assert_eq!(
            transport.outgoing.recv().await,
            Some(Frame::Text("b".into()))
        );
    }

    #[tokio::test]
    async fn the_queue_ends_with_its_last_sender_and_sends_end_with_the_receiver() {
        let (conn, mut transport) = pair("s".into(), info(), 4, 1);
        conn.sender
            .try_send(Frame::Text("a".into()))
            .expect("queued");
        let sender = transport.sender.clone();
        drop(conn);
        drop(std::mem::replace(&mut transport.sender, sender));
        assert_eq!(transport.outgoing.try_recv(), Ok(Frame::Text("a".into())));
        assert_eq!(transport.outgoing.try_recv(), Err(TryRecvError::Empty));
        let ConnTransport {
            mut outgoing,
            sender,
            ..
        } = transport;
        let last = tokio::spawn(async move {
            tokio::task::yield_now().await;
            drop(sender);
        });
        assert_eq!(
            outgoing.recv().await,
            None,
            "woken by the last sender's end"
        );
        last.await.expect("no panic");
        assert_eq!(outgoing.try_recv(), Err(TryRecvError::Disconnected));

        let (conn, transport) = pair("s".into(), info(), 4, 1);
        drop(transport);
        assert_eq!(
            conn.sender.try_send(Frame::Text("a".into())),
            Err(SendError::Closed)
        );
        assert_eq!(
            conn.sender.send(Frame::Text("a".into())).await,
            Err(SendError::Closed)
        );
    }

    #[test]
    fn a_packet_s_frames_are_queued_together_or_not_at_all() {
        let (conn, mut transport) = pair("s".into(), info(), 3, 1);
        conn.sender
            .try_send(Frame::Text("a".into()))
            .expect("queued");
        let bin = Frame::Binary(Bytes::from_static(b"1"));
        assert_eq!(
            conn.sender
                .try_send_all([Frame::Text("b".into()), bin.clone(), bin.clone()]),
            Err(SendError::Full),
            "three do not fit in the two places left"
        );
        assert_eq!(
            conn.sender
                .try_send_all([Frame::Text("b".into()), bin.clone()]),
            Ok(())
        );
        let got: Vec<Frame> = std::iter::from_fn(|| transport.outgoing.try_recv().ok()).collect();
        assert_eq!(got, [Frame::Text("a".into()), Frame::Text("b".into()), bin]);
    }
}
