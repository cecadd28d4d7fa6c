//! Server options, with the reference server's (npm `socket.io` 4.8) defaults
//! where it has one, and a stated bound where it has none.

use std::time::Duration;

use super::codec::DEFAULT_MAX_ATTACHMENTS;

/// `connectTimeout`: a connection that has joined no namespace this long
/// after it opened is closed (node's default). It frees Engine.IO sessions
/// opened by clients that never speak Socket.IO.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_millis(45_000);

/// `connectionStateRecovery.maxDisconnectionDuration`: how long a dropped
/// socket's session (id, rooms, missed events) is kept for it to come back
/// (node's default, two minutes: a network switch, a tunnel, a laptop lid).
pub const DEFAULT_MAX_DISCONNECTION_DURATION: Duration = Duration::from_millis(120_000);

/// Events a socket remembers having sent, to tell which ones a returning
/// client missed (see [`RecoveryOptions::tracked_events`]). Node keeps every
/// packet for `maxDisconnectionDuration`; we only need those that may have
/// been in flight when the transport died: the Engine.IO queue (1024 by
/// default) is the worst case, a handful is typical. 1024 entries are ~64 KiB
/// per busy socket; beyond that the client gets a fresh session, never a
/// silent gap.
pub const DEFAULT_TRACKED_EVENTS: usize = 1024;

/// Sessions kept at once for recovery per namespace; the oldest is dropped
/// first. Bounds the memory a mass disconnection (a load balancer restart)
/// can pin: 100 000 sessions of a few KiB each.
pub const DEFAULT_MAX_SESSIONS: usize = 100_000;

/// Acknowledgements a socket may wait for at once ([`Socket::emit_with_ack`](super::Socket::emit_with_ack)).
/// Node has no bound; a client that never acks would otherwise grow the
/// table until its connection dies.
pub const DEFAULT_MAX_PENDING_ACKS: usize = 1024;

/// Connection state recovery (node ≥ 4.6 `connectionStateRecovery`).
///
/// The CONNECT reply carries a private session id (`pid`), and every event
/// a socket gets through the hub (room and namespace broadcasts, app
/// publishes, and [`Socket::emit`](super::Socket::emit), which then goes
/// through the socket's own room) carries an offset as its last argument:
/// the decimal count of such events sent to the socket (`"1"`, `"2"`, …;
/// never reused). Events with an ack request carry none, as in node.
///
/// When the transport drops (not on a deliberate disconnect), the session
/// (id, rooms, delivery log) is kept for `max_disconnection_duration`. A
/// CONNECT with `{"pid":…,"offset":…}` within that time gets the same `sid`
/// and `pid` back (which is what makes the client's `socket.recovered`
/// true), its rooms, and every event it missed, in order, from the hub
/// history of each of its topics: the delivery log maps the offset to a
/// resume position per topic. An offset that cannot be served (older than
/// the log, or history evicted) yields a new session, never a gap.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecoveryOptions {
    /// How long a session is kept after its transport dropped.
    pub max_disconnection_duration: Duration,
    /// Events remembered per socket to compute what a returning client
    /// missed; an offset older than that is served as a new session.
    pub tracked_events: usize,
    /// Sessions kept per namespace at once.
    pub max_sessions: usize,
    /// In a fleet: where sessions are kept for the other nodes, so a client whose node died
    /// (or whose balancer sent it elsewhere) recovers on any node ([`super::fleet_recovery`]). `None`:
    /// recovery is this node's alone.
    pub fleet: Option<super::FleetSessions>,
}

impl Default for RecoveryOptions {
    fn default() -> Self {
        RecoveryOptions {
            max_disconnection_duration: DEFAULT_MAX_DISCONNECTION_DURATION,
            tracked_events: DEFAULT_TRACKED_EVENTS,
            max_sessions: DEFAULT_MAX_SESSIONS,
            fleet: None,
        }
    }
}

/// Socket.IO server options.
///
/// Node's `skipMiddlewares` has no counterpart: the connect handler runs on
/// every connection and can check [`Socket::recovered`](super::Socket::recovered)
/// itself, because it is also where event handlers are registered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SocketIoOptions {
    /// See [`DEFAULT_CONNECT_TIMEOUT`].
    pub connect_timeout: Duration,
    /// `None` (node's default): no `pid`, no offsets, a dropped socket is gone.
    pub recovery: Option<RecoveryOptions>,
    /// `maxAttachments` of the parser: binary attachments one packet may
    /// announce (node's default 10).
    pub max_attachments: usize,
    /// See [`DEFAULT_MAX_PENDING_ACKS`].
    pub max_pending_acks: usize,
}

impl Default for SocketIoOptions {
    fn default() -> Self {
        SocketIoOptions {
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            recovery: None,
            max_attachments: DEFAULT_MAX_ATTACHMENTS,
            max_pending_acks: DEFAULT_MAX_PENDING_ACKS,
        }
    }
}

impl SocketIoOptions {
    /// Defaults with connection state recovery on (node's defaults for it).
    pub fn with_recovery() -> Self {
        SocketIoOptions {
            recovery: Some(RecoveryOptions::default()),
            ..SocketIoOptions::default()
        }
    }
}
