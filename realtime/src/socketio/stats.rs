//! The Socket.IO server's counters.

use std::sync::atomic::AtomicU64;

/// Counters, as plain atomics (`Relaxed` loads).
#[derive(Debug, Default)]
pub struct SocketIoStats {
    /// Engine.IO connections being served now.
    pub connections: AtomicU64,
    /// Sockets connected now (over all namespaces).
    pub sockets: AtomicU64,
    /// Connections closed because their outgoing queue was full, or the hub
    /// dropped one of their sockets as a slow consumer.
    pub slow_consumers: AtomicU64,
    /// Connections closed for a protocol violation (undecodable packet,
    /// packet for a namespace not joined, second CONNECT).
    pub protocol_errors: AtomicU64,
    /// Connections closed because no namespace was joined in time.
    pub connect_timeouts: AtomicU64,
    /// CONNECTs to a namespace that does not exist.
    pub invalid_namespaces: AtomicU64,
    /// CONNECTs refused by a connect handler.
    pub rejected: AtomicU64,
    /// Sockets that resumed their session.
    pub recovered: AtomicU64,
    /// CONNECTs naming a session that could not be resumed (unknown,
    /// expired, offset not servable); they got a new session.
    pub recovery_failures: AtomicU64,
    /// Sessions stored for recovery after a transport loss.
    pub sessions_kept: AtomicU64,
    /// Connected sockets whose client came back on another connection with their private id:
    /// closed as a transport loss so that the client resumes their session.
    pub takeovers: AtomicU64,
}
