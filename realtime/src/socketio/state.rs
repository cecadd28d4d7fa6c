//! The state of a connection, its namespaces and their sockets, which point at one another: a
//! socket holds its namespace and its connection, and both hold their sockets. The types are
//! defined here together, with the operations that touch only their own fields, so that the
//! modules with the behaviour depend one way: `server` (connections) -> `namespace` ->
//! `socket` -> this module, never back.

use std::borrow::Cow;
use std::collections::{BTreeSet, HashMap, HashSet};
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use serde_json::Value;
use tokio::sync::oneshot;
use tokio::time::Instant;

use super::codec::{event_head, Outgoing};
use super::echo_shape;
use super::error::{ConnectError, EmitError};
use super::event::{Args, DisconnectReason, Event};
use super::options::SocketIoOptions;
use super::peers::{PeerSlot, Peers};
use super::recovery::{Session, Sessions, Tracker};
use super::rooms::{namespace_topic, room_of};
use super::stats::SocketIoStats;
use crate::access::{self, Access, ClientInfo, Grant};
use crate::engineio::{CloseReason, ConnSender, Frame, HandshakeInfo, SendError};
use crate::hub::{Hub, Message, Signal, Subscriber, SubscriberId};
use crate::sync::lock;

// --- Sockets ---

/// A map most sockets never fill (event handlers of their own, acks waiting, the app's
/// grants): empty, it is one pointer, where a `HashMap` is 48 bytes inline in every socket.
// The box is the point: a `HashMap`'s own fields (48 bytes) are what an empty one costs.
#[allow(clippy::box_collection)]
pub(super) struct Sparse<K, V>(Option<Box<HashMap<K, V>>>);

impl<K, V> Default for Sparse<K, V> {
    fn default() -> Self {
        Sparse(None)
    }
}

impl<K: std::hash::Hash + Eq, V> Sparse<K, V> {
    pub(super) fn get<Q>(&self, key: &Q) -> Option<&V>
    where
        K: std::borrow::Borrow<Q>,
        Q: std::hash::Hash + Eq + ?Sized,
    {
        self.0.as_ref()?.get(key)
    }

    pub(super) fn insert(&mut self, key: K, value: V) -> Option<V> {
        self.0.get_or_insert_with(Box::default).insert(key, value)
    }

    /// Removes `key`'s entry; the map goes once it is empty.
    pub(super) fn remove<Q>(&mut self, key: &Q) -> Option<V>
    where
        K: std::borrow::Borrow<Q>,
        Q: std::hash::Hash + Eq + ?Sized,
    {
        let map = self.0.as_mut()?;
        let removed = map.remove(key);
        if map.is_empty() {
            self.0 = None;
        }
        removed
    }

    pub(super) fn len(&self) -> usize {
        self.0.as_ref().map_or(0, |map| map.len())
    }

    pub(super) fn clear(&mut self) {
        self.0 = None;
    }
}

pub(super) type EventHandler = Arc<dyn Fn(&Socket, Event, Option<AckSender>) + Send + Sync>;
pub(super) type DisconnectHandler = Arc<dyn Fn(&Socket, &DisconnectReason) + Send + Sync>;

#[derive(Default)]
pub(super) struct Handlers {
    pub(super) events: Sparse<String, EventHandler>,
    pub(super) fallback: Option<EventHandler>,
    pub(super) disconnect: Vec<DisconnectHandler>,
}

#[derive(Default)]
pub(super) struct Acks {
    pub(super) next_id: u64,
    pub(super) waiting: Sparse<u64, oneshot::Sender<Args>>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Phase {
    /// The connect handler runs; packets wait in `pending`.
    Connecting,
    Connected,
    Closed,
}

/// The socket's single outgoing path and its delivery bookkeeping, under one
/// lock: whoever holds it (the connection's delivery, an emit, a join with replay)
/// writes complete packets in an order the tracker agrees with.
pub(super) struct Outbox {
    pub(super) phase: Phase,
    pub(super) pending: Vec<Outgoing>,
    pub(super) tracker: Tracker,
}

/// Who a new socket is: fresh ids, or a recovered session's.
pub(super) struct Identity {
    pub(super) id: Arc<str>,
    pub(super) pid: Option<Arc<str>>,
    pub(super) auth: Value,
    pub(super) recovered: bool,
    /// Who the app's connect callback said the client is.
    pub(super) user: access::Identity,
}

pub(super) struct SocketInner {
    pub(super) id: Arc<str>,
    pub(super) pid: Option<Arc<str>>,
    pub(super) ns: Arc<NsInner>,
    pub(super) conn: Arc<ConnShared>,
    /// The CONNECT's payload; `None` for `{}` (most sockets': the 72 bytes of a `Value` kept
    /// inline in every socket only for them).
    pub(super) auth: Option<Box<Value>>,
    pub(super) recovered: bool,
    /// `None` for an anonymous client (every client without a connect callback): an identity
    /// is 168 bytes.
    pub(super) user: Option<Box<access::Identity>>,
    /// The app's word on each room that needed it (a presence answer names the member).
    pub(super) grants: Mutex<Sparse<String, Grant>>,
    pub(super) sub_id: SubscriberId,
    pub(super) sub: Mutex<Option<Arc<Subscriber>>>,
    pub(super) outbox: Mutex<Outbox>,
    pub(super) handlers: Mutex<Handlers>,
    pub(super) acks: Mutex<Acks>,
    pub(super) rooms: Mutex<BTreeSet<String>>,
}

impl SocketInner {
    pub(super) fn new(
        who: Identity,
        ns: Arc<NsInner>,
        conn: Arc<ConnShared>,
        sub: Arc<Subscriber>,
        tracker: Tracker,
    ) -> SocketInner {
        SocketInner {
            id: who.id,
            pid: who.pid,
            ns,
            conn,
            auth: (!matches!(&who.auth, Value::Object(map) if map.is_empty()))
                .then(|| Box::new(who.auth)),
            recovered: who.recovered,
            user: (who.user != access::Identity::default()).then(|| Box::new(who.user)),
            grants: Mutex::default(),
            sub_id: sub.id(),
            sub: Mutex::new(Some(sub)),
            outbox: Mutex::new(Outbox {
                phase: Phase::Connecting,
                pending: Vec::new(),
                tracker,
            }),
            handlers: Mutex::default(),
            acks: Mutex::default(),
            rooms: Mutex::default(),
        }
    }
}

// Its methods are in the `socket` module, and those that reach the whole namespace
// (`namespace`, `broadcast`, `to`) in `namespace`.
/// A client's socket in one namespace. Cheap to clone; every clone is the
/// same socket. Methods never block: emits and joins are non-blocking hub or
/// queue operations, so they can be called from event handlers.
#[derive(Clone)]
pub struct Socket {
    pub(super) inner: Arc<SocketInner>,
}

impl Socket {
    pub(super) fn from_inner(inner: SocketInner) -> Socket {
        Socket {
            inner: Arc::new(inner),
        }
    }

    /// Whether `self` and `other` are the same socket (clones of one).
    pub(super) fn same(&self, other: &Socket) -> bool {
        Arc::ptr_eq(&self.inner, &other.inner)
    }
}

impl fmt::Debug for Socket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Socket")
            .field("id", &self.inner.id)
            .field("nsp", &self.inner.ns.path)
            .finish_non_exhaustive()
    }
}

/// Answers one client event that asked for an acknowledgement. Sending
/// consumes it (a second answer is impossible, as in node); dropping it
/// sends nothing. It can be moved into a spawned task.
pub struct AckSender {
    pub(super) socket: Socket,
    pub(super) id: u64,
}

impl fmt::Debug for AckSender {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AckSender").field("id", &self.id).finish()
    }
}

// --- Namespaces ---

/// What a connect handler returns.
pub type ConnectFuture = Pin<Box<dyn Future<Output = Result<(), ConnectError>> + Send>>;

pub(super) type ConnectHandler = Arc<dyn Fn(Socket) -> ConnectFuture + Send + Sync>;

/// Local membership, for `except` and for listing sockets: which sockets of
/// this node are in which room (node's in-memory adapter).
#[derive(Default)]
pub(super) struct Registry {
    pub(super) sockets: HashMap<Arc<str>, Socket>,
    pub(super) rooms: HashMap<String, HashSet<Arc<str>>>,
    /// The connected socket of each private id (recovery on), for a client that comes back
    /// while its old connection still looks alive here ([`NsInner::take_over`]).
    pub(super) by_pid: HashMap<Arc<str>, Arc<str>>,
}

pub(super) struct NsInner {
    pub(super) path: String,
    /// Every socket of the namespace is in this topic.
    pub(super) topic: Arc<str>,
    pub(super) hub: Hub,
    pub(super) options: Arc<SocketIoOptions>,
    pub(super) stats: Arc<SocketIoStats>,
    /// Who may join which room and relay into it ([`crate::access`]).
    pub(super) access: Access,
    /// The other servers of the namespace, once the server has them ([`super::peers`]).
    peers: PeerSlot,
    on_connect: Mutex<ConnectHandler>,
    pub(super) connect_history: AtomicUsize,
    /// Rooms deliver in laravel-echo-server's shape, `(event, channel, data)`
    /// ([`echo_shape`]).
    pub(super) echo: AtomicBool,
    pub(super) registry: Mutex<Registry>,
    pub(super) sessions: Mutex<Sessions>,
}

impl NsInner {
    pub(super) fn new(
        path: String,
        hub: Hub,
        options: Arc<SocketIoOptions>,
        stats: Arc<SocketIoStats>,
        access: Access,
        peers: PeerSlot,
        on_connect: ConnectHandler,
    ) -> NsInner {
        NsInner {
            topic: Arc::from(namespace_topic(&path)),
            path,
            hub,
            options,
            stats,
            access,
            peers,
            on_connect: Mutex::new(on_connect),
            connect_history: AtomicUsize::new(0),
            echo: AtomicBool::new(false),
            registry: Mutex::default(),
            sessions: Mutex::default(),
        }
    }

    /// The shared part of the event packet for hub message `msg` (see [`event_head`]):
    /// encoded once per message, by the first socket that delivers it, and read by every
    /// other socket it reaches ([`Message::encoded`]), as node encodes a broadcast once. The
    /// message keeps it: no lock and no reference count shared by the sockets of a fan-out,
    /// which deliver from every thread at once. In a namespace that speaks Echo, a room's head
    /// also names the room (the message's topic).
    pub(super) fn event_head<'m>(&self, msg: &'m Message, name: &str) -> Cow<'m, str> {
        let echo = self.echo.load(Ordering::Relaxed);
        let encode = || {
            let channel = if echo {
                room_of(&self.path, &msg.topic)
            } else {
                None
            };
            let attachments = msg.attachments().len();
            match (channel, msg.data()) {
                (Some(channel), data) => event_head(
                    &self.path,
                    name,
                    &echo_shape::args(channel, data),
                    None,
                    attachments,
                ),
                (None, Value::Array(args)) => event_head(&self.path, name, args, None, attachments),
                (None, one) => event_head(
                    &self.path,
                    name,
                    std::slice::from_ref(one),
                    None,
                    attachments,
                ),
            }
        };
        match msg.encoded((&self.path, echo), encode) {
            Some(head) => Cow::Borrowed(head),
            // Encoded for another namespace, or before Echo was switched: not shared.
            None => Cow::Owned(encode()),
        }
    }

    /// The other servers of the namespace, if the server has any.
    pub(super) fn peers(&self) -> Option<&Arc<dyn Peers>> {
        self.peers.get()
    }

    pub(super) fn connect_handler(&self) -> ConnectHandler {
        Arc::clone(&lock(&self.on_connect))
    }

    pub(super) fn set_connect_handler(&self, handler: ConnectHandler) {
        *lock(&self.on_connect) = handler;
    }

    pub(super) fn registry_join(&self, room: &str, sid: &Arc<str>) {
        lock(&self.registry)
            .rooms
            .entry(room.to_owned())
            .or_default()
            .insert(Arc::clone(sid));
    }

    pub(super) fn registry_leave(&self, room: &str, sid: &str) {
        let mut reg = lock(&self.registry);
        if let Some(members) = reg.rooms.get_mut(room) {
            members.remove(sid);
            if members.is_empty() {
                reg.rooms.remove(room);
            }
        }
    }

    pub(super) fn register(&self, socket: &Socket) {
        let mut reg = lock(&self.registry);
        if let Some(pid) = &socket.inner.pid {
            reg.by_pid
                .insert(Arc::clone(pid), Arc::clone(&socket.inner.id));
        }
        reg.sockets
            .insert(Arc::clone(&socket.inner.id), socket.clone());
    }

    pub(super) fn unregister(&self, socket: &Socket) {
        let id = &*socket.inner.id;
        let rooms = lock(&socket.inner.rooms).clone();
        let mut reg = lock(&self.registry);
        let is_this = reg.sockets.get(id).is_some_and(|s| s.same(socket));
        if !is_this {
            return;
        }
        reg.sockets.remove(id);
        if let Some(pid) = &socket.inner.pid {
            if reg.by_pid.get(pid).is_some_and(|sid| &**sid == id) {
                reg.by_pid.remove(pid);
            }
        }
        for room in rooms {
            if let Some(members) = reg.rooms.get_mut(&room) {
                members.remove(id);
                if members.is_empty() {
                    reg.rooms.remove(&room);
                }
            }
        }
    }

    pub(super) fn keep_session(
        &self,
        sid: Arc<str>,
        pid: Arc<str>,
        rooms: Vec<String>,
        tracker: Tracker,
    ) {
        let Some(opts) = &self.options.recovery else {
            return;
        };
        let session = Session {
            sid,
            pid,
            rooms,
            tracker,
            since: Instant::now(),
        };
        lock(&self.sessions).insert(session, opts.max_sessions, opts.max_disconnection_duration);
        self.stats.sessions_kept.fetch_add(1, Ordering::Relaxed);
    }
}

// --- Connections ---

/// How many hub messages of one socket a connection's task delivers before it looks at its
/// other work (the client's packets, the close).
pub(super) const DELIVERY_BUDGET: usize = 256;

/// The connection as its sockets see it: the sender (which queues the frames of one packet,
/// text then binaries, together, never interleaved with another packet's), and its socket in
/// each namespace joined.
pub(super) struct ConnShared {
    pub(super) sender: ConnSender,
    pub(super) info: Arc<HandshakeInfo>,
    /// What the hub subscribers of the connection's sockets wake ([`Hub::subscribe_waking`]):
    /// the connection's task waits on it and delivers whatever any of them queued
    /// ([`ConnShared::deliver_queued`]), so a fan-out wakes the connection once, not once per
    /// socket or per message.
    pub(super) wake: Arc<Signal>,
    /// Set once the connection is closed and its sockets are gone ([`ConnShared::end`]).
    ended: AtomicBool,
    sockets: Mutex<HashMap<String, Socket>>,
    /// Bumped at every change of `sockets`, under its lock ([`ConnShared::deliver_queued`]).
    generation: AtomicU64,
    stats: Arc<SocketIoStats>,
}

/// The connection's sockets as its deliveries last read them ([`ConnShared::deliver_queued`]):
/// kept by the deliveries' future between wake-ups, read again when the list changed.
#[derive(Default)]
pub(super) struct SocketList {
    generation: u64,
    sockets: Vec<Socket>,
}

impl ConnShared {
    pub(super) fn new(
        sender: ConnSender,
        info: Arc<HandshakeInfo>,
        stats: Arc<SocketIoStats>,
    ) -> ConnShared {
        ConnShared {
            sender,
            info,
            wake: Arc::default(),
            ended: AtomicBool::new(false),
            sockets: Mutex::default(),
            generation: AtomicU64::new(0),
            stats,
        }
    }

    /// Queues a packet without waiting. A full queue means the client does
    /// not read: the connection is closed as a slow consumer rather than
    /// buffered without bound.
    pub(super) fn write(&self, out: Outgoing) -> Result<(), EmitError> {
        let text = Frame::Text(out.text);
        // A packet's frames go in together (the queue's one lock), so no other packet's come
        // between its text and its attachments.
        let queued = if out.binaries.is_empty() {
            self.sender.try_send(text)
        } else {
            let frames: Vec<Frame> = std::iter::once(text)
                .chain(out.binaries.into_iter().map(Frame::Binary))
                .collect();
            self.sender.try_send_all(frames)
        };
        match queued {
            Ok(()) => Ok(()),
            Err(SendError::Full) => {
                self.slow_consumer();
                Err(EmitError::SlowConsumer)
            }
            Err(SendError::Closed) => Err(EmitError::Disconnected),
        }
    }

    pub(super) fn slow_consumer(&self) {
        if !self.sender.is_closed() {
            self.stats.slow_consumers.fetch_add(1, Ordering::Relaxed);
            tracing::debug!("socket.io: closing a slow consumer");
        }
        self.sender.close(CloseReason::SlowConsumer);
    }

    /// What the app is told about the client: the Engine.IO handshake.
    pub(super) fn client_info(&self) -> ClientInfo {
        let info = &self.info;
        ClientInfo {
            headers: info.headers.clone(),
            authority: info.authority.clone(),
            peer: info.peer,
            local: info.local,
            secure: info.secure,
        }
    }

    /// The connection's socket in namespace `nsp`.
    pub(super) fn socket(&self, nsp: &str) -> Option<Socket> {
        lock(&self.sockets).get(nsp).cloned()
    }

    /// Adds the connection's socket in `nsp`. Its subscriber may have had messages queued
    /// (and the wake taken by a delivery that did not see the socket yet): the connection's
    /// task is woken to look.
    pub(super) fn insert(&self, nsp: String, socket: Socket) {
        let mut sockets = lock(&self.sockets);
        sockets.insert(nsp, socket);
        self.changed_sockets();
        drop(sockets);
        self.wake.raise();
    }

    /// The sockets changed (under their lock): the deliveries' copy of the list is stale.
    fn changed_sockets(&self) {
        self.generation.fetch_add(1, Ordering::Release);
    }

    /// Delivers what the hub queued for the connection's sockets, up to [`DELIVERY_BUDGET`]
    /// messages a socket; false when more is left (the caller comes back for it after the
    /// client's packets, so a firehose on one namespace does not starve them).
    pub(super) fn deliver_queued(&self, seen: &mut SocketList) -> bool {
        // The list as the deliveries last saw it, while it is the same: no lock, no map and
        // no reference count per wake-up (each a cache miss in a quiet room).
        if self.generation.load(Ordering::Acquire) != seen.generation {
            let sockets = lock(&self.sockets);
            seen.generation = self.generation.load(Ordering::Acquire);
            seen.sockets.clear();
            seen.sockets.extend(sockets.values().cloned());
        }
        let mut all = true;
        for socket in &seen.sockets {
            all &= socket.inner.deliver_queued(DELIVERY_BUDGET);
        }
        all
    }

    /// Drops `socket` from the connection's namespaces (if it is still the
    /// one there).
    pub(super) fn forget(&self, socket: &Socket) {
        let nsp = socket.inner.ns.path.as_str();
        let mut sockets = lock(&self.sockets);
        if sockets.get(nsp).is_some_and(|s| s.same(socket)) {
            sockets.remove(nsp);
            self.changed_sockets();
            drop(sockets);
            // The deliveries let go of their copy of it.
            self.wake.raise();
        }
    }

    /// Closes the connection when no namespace is joined on it any more (its last socket was
    /// taken over by a client that came back on another connection).
    pub(super) fn close_if_unused(&self, reason: CloseReason) {
        if lock(&self.sockets).is_empty() {
            self.sender.close(reason);
        }
    }

    /// The connection's teardown is over: its deliveries end too.
    pub(super) fn end(&self) {
        self.ended.store(true, Ordering::Release);
        self.wake.raise();
    }

    pub(super) fn ended(&self) -> bool {
        self.ended.load(Ordering::Acquire)
    }

    /// Takes every socket out, for the connection's teardown.
    pub(super) fn take_sockets(&self) -> Vec<Socket> {
        let mut sockets = lock(&self.sockets);
        let taken = sockets.drain().map(|(_, s)| s).collect();
        self.changed_sockets();
        drop(sockets);
        self.wake.raise();
        taken
    }
}
