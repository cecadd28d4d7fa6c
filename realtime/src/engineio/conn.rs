//! One Engine.IO connection as the layer above (Socket.IO, or a raw echo) sees it: a stream of
//! incoming messages and a handle to send messages or close, whatever the transport underneath
//! (polling, WebSocket, or polling upgraded to WebSocket mid-way).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::{mpsc, watch};

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
    close: watch::Sender<Option<CloseReason>>,
    /// Whether `close` holds a reason: read at every message queued, where reading the watch
    /// takes its lock.
    closed: AtomicBool,
}

/// Sends to one connection. Cheap to clone; every clone talks to the same connection.
#[derive(Debug, Clone)]
pub struct ConnSender {
    tx: mpsc::Sender<Frame>,
    shared: Arc<Shared>,
}

impl ConnSender {
    /// Queue a message without waiting. A full queue means the client is not keeping up;
    /// the caller decides (the Socket.IO layer closes the connection as a slow consumer).
    pub fn try_send(&self, frame: Frame) -> Result<(), SendError> {
        if self.is_closed() {
            return Err(SendError::Closed);
        }
        self.tx.try_send(frame).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => SendError::Full,
            mpsc::error::TrySendError::Closed(_) => SendError::Closed,
        })
    }

    /// Queue a message, waiting for room in the queue.
    pub async fn send(&self, frame: Frame) -> Result<(), SendError> {
        if self.is_closed() {
            return Err(SendError::Closed);
        }
        self.tx.send(frame).await.map_err(|_| SendError::Closed)
    }

    /// Close the connection (the first reason given wins).
    pub fn close(&self, reason: CloseReason) {
        self.shared.close.send_if_modified(|r| {
            if r.is_none() {
                *r = Some(reason);
                // Under the watch's lock: whoever sees the flag sees the reason.
                self.shared.closed.store(true, Ordering::Release);
                true
            } else {
                false
            }
        });
    }

    pub fn is_closed(&self) -> bool {
        self.shared.closed.load(Ordering::Acquire)
    }

    pub fn close_reason(&self) -> Option<CloseReason> {
        self.shared.close.borrow().clone()
    }

    /// Resolves when the connection is closed, with the reason.
    pub async fn closed(&self) -> CloseReason {
        let mut rx = self.shared.close.subscribe();
        loop {
            if let Some(r) = rx.borrow_and_update().clone() {
                return r;
            }
            if rx.changed().await.is_err() {
                return CloseReason::TransportClose;
            }
        }
    }
}

/// The connection as handed to the layer above.
pub struct Conn {
    pub sid: Arc<str>,
    pub info: Arc<HandshakeInfo>,
    /// Messages from the client, in order. `None` once the connection is closed.
    pub incoming: mpsc::Receiver<Frame>,
    pub sender: ConnSender,
}

/// The transport side of a connection: what the Engine.IO server keeps.
pub struct ConnTransport {
    /// Messages from the layer above, to be written to the client.
    pub outgoing: mpsc::Receiver<Frame>,
    /// Where to put messages received from the client.
    pub incoming: mpsc::Sender<Frame>,
    pub sender: ConnSender,
}

/// Make both ends of a connection. `out_capacity` bounds the messages waiting to be written to
/// a client; `in_capacity` bounds those waiting for the layer above.
pub fn pair(
    sid: Arc<str>,
    info: HandshakeInfo,
    out_capacity: usize,
    in_capacity: usize,
) -> (Conn, ConnTransport) {
    let (out_tx, out_rx) = mpsc::channel(out_capacity.max(1));
    let (in_tx, in_rx) = mpsc::channel(in_capacity.max(1));
    let (close, _) = watch::channel(None);
    let sender = ConnSender {
        tx: out_tx,
        shared: Arc::new(Shared {
            close,
            closed: AtomicBool::new(false),
        }),
    };
    (
        Conn {
            sid,
            info: Arc::new(info),
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
}
