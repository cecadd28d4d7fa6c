//! Namespaces: the connect handler, the local room registry, recovery
//! sessions, and broadcasts.

use std::collections::BTreeSet;
use std::fmt;
use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tokio::time::Instant;

use super::codec::{event_head, Outgoing, RESERVED_EVENTS};
use super::error::{AckError, EmitError, RoomError};
use super::event::{Args, DisconnectReason};
use super::fleet_recovery::{fingerprint, offset_count, FleetOffset, FleetSessions, SessionRecord};
use super::options::SocketIoOptions;
use super::peers::{PeerSlot, PeersError, Selection};
use super::recovery::{ResumePlan, Tracker};
use super::rooms::{generate_id, room_topic};
use super::state::{ConnShared, ConnectHandler, Identity, NsInner, Socket, SocketInner};
use super::stats::SocketIoStats;
use crate::access::{self, Access};
use crate::engineio::CloseReason;
use crate::hub::{Hub, JoinOutcome, Payload, Position, Publishing, Subscriber, SubscriberId};
use crate::sync::lock;

/// A namespace. Cheap to clone; every clone is the same namespace.
#[derive(Clone)]
pub struct Namespace {
    pub(super) inner: Arc<NsInner>,
}

impl fmt::Debug for Namespace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Namespace")
            .field("path", &self.inner.path)
            .finish_non_exhaustive()
    }
}

impl Namespace {
    pub(super) fn new(
        path: String,
        hub: Hub,
        options: Arc<SocketIoOptions>,
        stats: Arc<SocketIoStats>,
        access: Access,
        peers: PeerSlot,
        on_connect: ConnectHandler,
    ) -> Namespace {
        Namespace {
            inner: Arc::new(NsInner::new(
                path, hub, options, stats, access, peers, on_connect,
            )),
        }
    }

    pub(super) fn set_handler(&self, handler: ConnectHandler) {
        self.inner.set_connect_handler(handler);
    }

    /// The path (`/`, `/chat`).
    pub fn path(&self) -> &str {
        &self.inner.path
    }

    /// The hub topic every socket of the namespace listens to: a publish to
    /// it reaches them all.
    pub fn topic(&self) -> &str {
        &self.inner.topic
    }

    /// The hub topic of `room` in this namespace.
    pub fn room_topic(&self, room: &str) -> String {
        room_topic(&self.inner.path, room)
    }

    /// The hub the namespace's rooms live in.
    pub fn hub(&self) -> &Hub {
        &self.inner.hub
    }

    /// Each new (not recovered) socket first gets up to `last` of the most
    /// recent messages of the namespace topic from the hub's history, before
    /// live ones. 0 (the default) turns it off.
    pub fn set_connect_history(&self, last: usize) {
        self.inner.connect_history.store(last, Ordering::Relaxed);
    }

    /// Deliver what is published to the namespace's rooms in laravel-echo-server's shape,
    /// `(event, channel, data)` (see [`NamespaceBehaviour::echo`](crate::socketio::NamespaceBehaviour::echo)).
    pub fn set_echo(&self, on: bool) {
        self.inner.echo.store(on, Ordering::Relaxed);
    }

    /// A broadcast to the whole namespace.
    pub fn broadcast(&self) -> BroadcastOperator {
        BroadcastOperator::new(Arc::clone(&self.inner))
    }

    /// A broadcast to `room` (add more with [`BroadcastOperator::to`]).
    pub fn to(&self, room: impl Into<String>) -> BroadcastOperator {
        self.broadcast().to(room)
    }

    /// A broadcast to the namespace except `room`.
    pub fn except(&self, room: impl Into<String>) -> BroadcastOperator {
        self.broadcast().except(room)
    }

    /// Sends `name` to every socket of the namespace (one hub publish; see
    /// [`BroadcastOperator::emit`]).
    pub fn emit(&self, name: &str, args: impl Into<Args>) -> Emitting {
        self.broadcast().emit(name, args)
    }

    /// The connected sockets of this namespace on this node.
    pub fn sockets(&self) -> Vec<Socket> {
        lock(&self.inner.registry)
            .sockets
            .values()
            .filter(|s| s.connected())
            .cloned()
            .collect()
    }

    /// The socket with id `id`, if connected to this node.
    pub fn socket(&self, id: &str) -> Option<Socket> {
        lock(&self.inner.registry)
            .sockets
            .get(id)
            .filter(|s| s.connected())
            .cloned()
    }

    /// Sessions kept for recovery right now.
    pub fn kept_sessions(&self) -> usize {
        lock(&self.inner.sessions).len()
    }
}

impl NsInner {
    /// A new socket for a CONNECT: the recovered session when the auth
    /// payload names one that can be served, else a fresh one. The socket is
    /// registered and reading the hub, still connecting (its packets wait
    /// for [`SocketInner::finish_connect`]). `user` is who the app said the
    /// client is; the rooms it named are joined.
    pub(super) async fn create_socket(
        self: &Arc<Self>,
        conn: &Arc<ConnShared>,
        auth: Value,
        user: access::Identity,
    ) -> Result<Socket, RoomError> {
        let rooms = user.rooms.clone();
        let socket = match self.recover(conn, &auth, user.clone()).await? {
            Some(socket) => socket,
            None => self.fresh_socket(conn, auth, user)?,
        };
        for room in &rooms {
            if let Err(e) = socket.join(room) {
                tracing::warn!(nsp = %self.path, room = %room, error = %e, "socket.io: a room the app granted at connect could not be joined");
            }
        }
        socket.inner.settle_in_fleet().await;
        self.register(&socket);
        Ok(socket)
    }

    fn fresh_socket(
        self: &Arc<Self>,
        conn: &Arc<ConnShared>,
        auth: Value,
        user: access::Identity,
    ) -> Result<Socket, RoomError> {
        let id: Arc<str> = Arc::from(generate_id());
        let pid = self
            .options
            .recovery
            .as_ref()
            .map(|_| Arc::from(generate_id()));
        let sub = Arc::new(self.hub.subscribe_waking(Arc::clone(&conn.wake))?);
        let mut tracker = Tracker::new(self.options.recovery.as_ref().map(|r| r.tracked_events));
        if self.fleet_sessions().is_some() {
            tracker = tracker.in_fleet();
        }
        tracker.add_origin(sub.id());
        let who = Identity {
            id: Arc::clone(&id),
            pid,
            auth,
            recovered: false,
            user,
        };
        let socket = Socket::from_inner(SocketInner::new(
            who,
            Arc::clone(self),
            Arc::clone(conn),
            sub,
            tracker,
        ));
        let joined = socket
            .inner
            .join_topic(&self.topic, self.connect_history.load(Ordering::Relaxed))
            .and_then(|_| socket.join(&id));
        if let Err(e) = joined {
            socket.inner.shut(false);
            return Err(e);
        }
        Ok(socket)
    }

    /// Where the fleet keeps its sessions, when recovery spans the fleet.
    fn fleet_sessions(&self) -> Option<&FleetSessions> {
        self.options.recovery.as_ref()?.fleet.as_ref()
    }

    /// The session a CONNECT names, recovered: from this node's memory, or in a fleet from
    /// the record the node that last served it left in the store ([`super::fleet_recovery`]). The
    /// record's incarnation says which: this node's own session when it is the one this node
    /// keeps, else another node's (or a later life of it) that only the record describes.
    /// `Ok(None)`: nothing to recover (the caller then makes a fresh socket).
    async fn recover(
        self: &Arc<Self>,
        conn: &Arc<ConnShared>,
        auth: &Value,
        user: access::Identity,
    ) -> Result<Option<Socket>, RoomError> {
        let pid = auth.get("pid").and_then(Value::as_str);
        if let (Some(_), Some(pid)) = (&self.options.recovery, pid) {
            self.take_over(pid);
        }
        let (Some(fleet), Some(pid)) = (self.fleet_sessions(), pid) else {
            return self.try_recover(conn, auth, user);
        };
        let record = fleet.0.load(pid).await;
        let here = lock(&self.sessions).incarnation(pid);
        match record {
            Some(record) if here != Some(record.incarnation) => {
                self.recover_from_fleet(conn, auth, user, pid, record).await
            }
            // This node's own session: its delivery log serves the resume, from this node's
            // history, or else from the fleet's (which reaches back further than a process
            // that started a moment ago: the new one of an upgrade).
            Some(record) => match self.restore_local(conn, auth, user.clone())? {
                Restored::Socket(socket) => Ok(Some(socket)),
                Restored::Nothing | Restored::Failed(_) => {
                    self.recover_from_fleet(conn, auth, user, pid, record).await
                }
            },
            None => self.try_recover(conn, auth, user),
        }
    }

    /// A client coming back with the private id of a socket still connected here: that
    /// socket's transport is gone without this node having noticed yet (a poll answered by
    /// another process during an upgrade, a mobile network that changed, a half-open TCP
    /// connection before the ping timeout). Node refuses to recover such a session, and the
    /// client starts over; here the stale socket is closed as if its transport had closed
    /// (`transport close`), which keeps its session, so that the recovery that follows
    /// restores it. Only the client holds the private id: it is never sent to anyone else.
    fn take_over(&self, pid: &str) {
        let stale = {
            let reg = lock(&self.registry);
            reg.by_pid
                .get(pid)
                .and_then(|sid| reg.sockets.get(sid))
                .cloned()
        };
        if let Some(stale) = stale {
            tracing::debug!(nsp = %self.path, sid = %stale.id(), "socket.io: a client came back with the private id of a socket still connected; that socket's session is taken over");
            self.stats.takeovers.fetch_add(1, Ordering::Relaxed);
            stale.close(
                DisconnectReason::Connection(CloseReason::TransportClose),
                false,
            );
            // Its connection serves nobody now, unless another namespace is joined on it.
            stale
                .inner
                .conn
                .close_if_unused(CloseReason::TransportClose);
        }
    }

    /// Node's `restoreSession` from another node's record: the offset the client sent back
    /// says where it stood in each of the record's topics; each topic is joined from there
    /// (the fleet's history serves what this node's does not), and what follows is replayed.
    /// Refused (`Ok(None)`, a new session) when the offset does not describe the record's
    /// topics and epochs, or a topic's history no longer reaches back to it.
    async fn recover_from_fleet(
        self: &Arc<Self>,
        conn: &Arc<ConnShared>,
        auth: &Value,
        user: access::Identity,
        pid: &str,
        record: SessionRecord,
    ) -> Result<Option<Socket>, RoomError> {
        let Some(opts) = &self.options.recovery else {
            return Ok(None);
        };
        let failed = |why: &str| {
            self.stats.recovery_failures.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(nsp = %self.path, sid = %record.sid, why, "socket.io: a session of another node not recovered; the client gets a new one");
            Ok(None)
        };
        let offset = auth
            .get("offset")
            .and_then(Value::as_str)
            .and_then(FleetOffset::parse);
        let Some(offset) = offset else {
            return failed("no fleet offset");
        };
        let taken = lock(&self.registry)
            .sockets
            .contains_key(record.sid.as_str());
        if record.nsp != self.path || taken {
            return failed("another namespace, or the socket is connected here");
        }
        // The record's topics are the namespace's and its rooms', and the offset's seqs are
        // positions in exactly those epochs.
        let mut topics: Vec<String> = std::iter::once(self.topic.to_string())
            .chain(record.rooms.iter().map(|r| room_topic(&self.path, r)))
            .collect();
        topics.sort();
        topics.dedup();
        let named = record.topics.iter().map(|(t, _)| t);
        let described = record.topics.iter().map(|(t, e)| (t.as_str(), *e));
        if !topics.iter().eq(named)
            || offset.seqs.len() != topics.len()
            || fingerprint(described) != offset.fingerprint
        {
            return failed("the offset does not describe the record's topics");
        }
        let sub = Arc::new(self.hub.subscribe_waking(Arc::clone(&conn.wake))?);
        let mut tracker = Tracker::new(Some(opts.tracked_events)).in_fleet();
        tracker.resumed_at(offset.count);
        tracker.add_origin(sub.id());
        let mut replays = Vec::with_capacity(topics.len());
        for ((topic, epoch), seq) in record.topics.iter().zip(&offset.seqs) {
            let since = Position::new(*epoch, *seq);
            let Some(messages) = resume_topic(&sub, topic, since).await else {
                // Dropping the subscriber leaves what it joined.
                return failed("a topic's history no longer reaches back to the offset");
            };
            let (had, missed): (Vec<_>, Vec<_>) = messages
                .into_iter()
                .partition(|m| m.epoch == since.epoch && m.seq <= since.seq);
            for m in had {
                tracker.seen(m.id);
            }
            tracker.set_position(Arc::from(topic.as_str()), since);
            replays.push(missed);
        }
        let who = Identity {
            id: Arc::from(record.sid.as_str()),
            pid: Some(Arc::from(pid)),
            auth: auth.clone(),
            recovered: true,
            user,
        };
        let socket = Socket::from_inner(SocketInner::new(
            who,
            Arc::clone(self),
            Arc::clone(conn),
            sub,
            tracker,
        ));
        {
            let mut outbox = lock(&socket.inner.outbox);
            for msg in ResumePlan::without_order().merge(replays) {
                socket.inner.deliver_locked(&mut outbox, &msg);
            }
        }
        for room in record.rooms {
            self.registry_join(&room, &socket.inner.id);
            lock(&socket.inner.rooms).insert(room);
        }
        Ok(Some(socket))
    }

    /// Node's `restoreSession`: `Ok(None)` when there is nothing to recover
    /// (the caller then makes a fresh socket).
    fn try_recover(
        self: &Arc<Self>,
        conn: &Arc<ConnShared>,
        auth: &Value,
        user: access::Identity,
    ) -> Result<Option<Socket>, RoomError> {
        match self.restore_local(conn, auth, user)? {
            Restored::Socket(socket) => Ok(Some(socket)),
            Restored::Nothing => Ok(None),
            Restored::Failed(why) => {
                self.stats.recovery_failures.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(nsp = %self.path, why, "socket.io: a session not recovered; the client gets a new one");
                Ok(None)
            }
        }
    }

    /// [`Self::try_recover`] without the failure's count and log (a fleet may still serve it).
    fn restore_local(
        self: &Arc<Self>,
        conn: &Arc<ConnShared>,
        auth: &Value,
        user: access::Identity,
    ) -> Result<Restored, RoomError> {
        let Some(opts) = &self.options.recovery else {
            return Ok(Restored::Nothing);
        };
        let Some(pid) = auth.get("pid").and_then(Value::as_str) else {
            return Ok(Restored::Nothing);
        };
        let failed = |why: &'static str| Ok(Restored::Failed(why));
        // Node requires the offset; a client that never received an event
        // has none to send, and "nothing received" is offset 0.
        let offset = match auth.get("offset") {
            None => Some(0),
            Some(Value::String(s)) => parse_offset(s),
            Some(_) => None,
        };
        let session =
            lock(&self.sessions).take(pid, Instant::now(), opts.max_disconnection_duration);
        let Some(mut session) = session else {
            return failed("no session kept for this private id (unknown, expired or used)");
        };
        let Some(offset) = offset else {
            return failed("an offset that is not this node's");
        };
        if lock(&self.registry).sockets.contains_key(&session.sid) {
            return failed("the socket is connected");
        }
        let mut topics: Vec<Arc<str>> = vec![Arc::clone(&self.topic)];
        topics.extend(
            session
                .rooms
                .iter()
                .map(|room| Arc::from(room_topic(&self.path, room))),
        );
        let Some(plan) = session.tracker.resume(&topics, offset) else {
            return failed("the offset is not in the session's delivery log");
        };
        let sub = Arc::new(self.hub.subscribe_waking(Arc::clone(&conn.wake))?);
        session.tracker.add_origin(sub.id());
        let who = Identity {
            id: session.sid,
            pid: Some(session.pid),
            auth: auth.clone(),
            recovered: true,
            user,
        };
        let socket = Socket::from_inner(SocketInner::new(
            who,
            Arc::clone(self),
            Arc::clone(conn),
            Arc::clone(&sub),
            session.tracker,
        ));
        {
            let mut outbox = lock(&socket.inner.outbox);
            let mut replays = Vec::with_capacity(plan.since.len());
            for (topic, since) in &plan.since {
                match sub.join(topic, Some(*since)) {
                    Ok(JoinOutcome::Resumed { replay, .. }) => replays.push(replay),
                    // History no longer reaches back: not recoverable.
                    Ok(_) | Err(_) => {
                        drop(outbox);
                        socket.inner.shut(false);
                        return failed("a topic's history no longer reaches back to the offset");
                    }
                }
            }
            for msg in plan.merge(replays) {
                socket.inner.deliver_locked(&mut outbox, &msg);
            }
        }
        for room in session.rooms {
            self.registry_join(&room, &socket.inner.id);
            lock(&socket.inner.rooms).insert(room);
        }
        Ok(Restored::Socket(socket))
    }
}

/// The count of an offset, the part this node's delivery log numbers (a fleet offset carries
/// more after it).
/// What a recovery from this node's memory came to.
enum Restored {
    Socket(Socket),
    /// Recovery is off, or the CONNECT names no session.
    Nothing,
    /// Named but not recoverable here, and why.
    Failed(&'static str),
}

fn parse_offset(s: &str) -> Option<u64> {
    offset_count(s)
}

/// Messages of history a recovery from another node reads before where the client stood, so
/// that a copy of a broadcast it already had through another room is known for a duplicate:
/// the copies of one broadcast are published back to back, a handful of messages apart at
/// most.
const SEEN_BEFORE: u64 = 16;

/// Joins `topic` for a socket that had processed it up to `since`: the history from a little
/// before `since` ([`SEEN_BEFORE`]; from `since` itself when the history no longer reaches
/// that far), or `None` when not even `since` can be served.
async fn resume_topic(
    sub: &Subscriber,
    topic: &str,
    since: Position,
) -> Option<Vec<Arc<crate::hub::Message>>> {
    let wider = Position::new(since.epoch, since.seq.saturating_sub(SEEN_BEFORE));
    match sub.join_async(topic, Some(wider)).await {
        Ok(JoinOutcome::Resumed { replay, .. }) => return Some(replay),
        Ok(_) if wider != since => {
            sub.leave(topic);
        }
        _ => return None,
    }
    match sub.join_async(topic, Some(since)).await {
        Ok(JoinOutcome::Resumed { replay, .. }) => Some(replay),
        _ => None,
    }
}

/// What a socket does with its whole namespace.
impl Socket {
    /// The namespace.
    pub fn namespace(&self) -> Namespace {
        Namespace {
            inner: Arc::clone(&self.inner.ns),
        }
    }

    /// A broadcast to the namespace that excludes this socket (node's
    /// `socket.broadcast`).
    pub fn broadcast(&self) -> BroadcastOperator {
        BroadcastOperator::new(Arc::clone(&self.inner.ns)).sender(self)
    }

    /// A broadcast to `room` that excludes this socket (node's `socket.to`).
    pub fn to(&self, room: impl Into<String>) -> BroadcastOperator {
        self.broadcast().to(room)
    }
}

/// A broadcast under way ([`BroadcastOperator::emit`]): resolves to the hub positions of its
/// copies, or why it was not sent.
#[derive(Debug)]
pub struct Emitting(EmitState);

#[derive(Debug)]
enum EmitState {
    Refused(Option<EmitError>),
    Sent(Publishing<Vec<Position>>),
}

impl Emitting {
    fn refused(e: EmitError) -> Emitting {
        Emitting(EmitState::Refused(Some(e)))
    }

    fn sent(p: Publishing<Vec<Position>>) -> Emitting {
        Emitting(EmitState::Sent(p))
    }
}

impl Future for Emitting {
    type Output = Result<Vec<Position>, EmitError>;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        match &mut self.0 {
            EmitState::Refused(e) => {
                std::task::Poll::Ready(Err(e.take().unwrap_or(EmitError::Disconnected)))
            }
            EmitState::Sent(p) => std::pin::Pin::new(p).poll(cx).map_err(EmitError::from),
        }
    }
}

/// A broadcast being built: `to` rooms (union; none = the whole namespace),
/// minus `except` rooms, minus the sender for a socket's broadcast.
///
/// Without `except`, it is one hub publish per target topic (the
/// namespace topic, or each room's topic) sharing one message id, so a
/// socket in several target rooms gets it once, and anything else
/// subscribed to those topics (other transports, a bus) gets it too. With
/// `except`, the recipients are computed from this node's room registry and
/// the message is published to each recipient's own room (node's in-memory
/// adapter does the same walk); other transports then do not see it.
///
/// With [peers](super::Peers) (other servers sharing the namespace through socket.io's Redis
/// adapter), a broadcast is also handed to them for their sockets, and the operations that
/// need every server's sockets ask them too; [`BroadcastOperator::local`] keeps it to this
/// server.
#[derive(Clone)]
pub struct BroadcastOperator {
    pub(super) ns: Arc<NsInner>,
    rooms: BTreeSet<String>,
    except: BTreeSet<String>,
    sender: Option<(SubscriberId, Arc<str>)>,
    /// Node's `local` flag: this server's sockets only.
    pub(super) local: bool,
}

impl fmt::Debug for BroadcastOperator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BroadcastOperator")
            .field("nsp", &self.ns.path)
            .field("rooms", &self.rooms)
            .field("except", &self.except)
            .field("sender", &self.sender.as_ref().map(|s| &s.1))
            .field("local", &self.local)
            .finish()
    }
}

impl BroadcastOperator {
    fn new(ns: Arc<NsInner>) -> BroadcastOperator {
        BroadcastOperator {
            ns,
            rooms: BTreeSet::new(),
            except: BTreeSet::new(),
            sender: None,
            local: false,
        }
    }

    /// This server's sockets only (node's `io.local`): [`BroadcastOperator::emit`] writes the
    /// event to each of them directly, not through the hub (which in a fleet reaches every
    /// node), so it gets no position, is not kept in history and other transports do not see
    /// it; the other operations leave the peers alone. What a node does with a broadcast
    /// another server sent through socket.io's Redis adapter.
    pub fn local(mut self) -> BroadcastOperator {
        self.local = true;
        self
    }

    /// The rooms and except rooms, as the peers take them (the sender, on this server, is
    /// none of theirs).
    pub(super) fn selection(&self) -> Selection {
        Selection {
            rooms: self.rooms.iter().cloned().collect(),
            except: self.except.iter().cloned().collect(),
        }
    }

    fn sender(mut self, socket: &Socket) -> BroadcastOperator {
        self.sender = Some((socket.subscriber_id(), Arc::clone(&socket.inner.id)));
        self
    }

    /// Adds a target room.
    pub fn to(mut self, room: impl Into<String>) -> BroadcastOperator {
        self.rooms.insert(room.into());
        self
    }

    /// Adds target rooms.
    pub fn to_rooms<I, S>(mut self, rooms: I) -> BroadcastOperator
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.rooms.extend(rooms.into_iter().map(Into::into));
        self
    }

    /// Excludes the sockets in `room`.
    pub fn except(mut self, room: impl Into<String>) -> BroadcastOperator {
        self.except.insert(room.into());
        self
    }

    /// Excludes the sockets in each of `rooms`.
    pub fn except_rooms<I, S>(mut self, rooms: I) -> BroadcastOperator
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.except.extend(rooms.into_iter().map(Into::into));
        self
    }

    /// Sends the event: sent when this returns (a socket's broadcasts keep their order), and
    /// the returned [`Emitting`] resolves to the hub position of each copy: one per target
    /// room in the rooms' sorted order, or one for the namespace topic; with `except`, one per
    /// recipient. On a single node it is resolved already; in a fleet once Redis has numbered
    /// the copies. Dropping it cancels nothing.
    pub fn emit(&self, name: &str, args: impl Into<Args>) -> Emitting {
        if RESERVED_EVENTS.contains(&name) {
            return Emitting::refused(EmitError::ReservedEvent(name.to_owned()));
        }
        let args = args.into();
        if self.local {
            return self.emit_here(name, args);
        }
        let payload = Payload::new(name, Value::Array(args.values)).with_attachments(args.binaries);
        let for_peers = self.ns.peers().map(|p| (Arc::clone(p), payload.clone()));
        let origin = self.sender.as_ref().map(|(id, _)| *id);
        let topics: Vec<String> = if !self.except.is_empty() {
            self.recipients()
                .iter()
                .map(|sid| room_topic(&self.ns.path, sid))
                .collect()
        } else if self.rooms.is_empty() {
            vec![self.ns.topic.to_string()]
        } else {
            self.rooms
                .iter()
                .map(|room| room_topic(&self.ns.path, room))
                .collect()
        };
        let sending = if topics.is_empty() {
            Publishing::done(Ok(Vec::new()))
        } else {
            self.ns.hub.send_many(topics, payload, origin)
        };
        // What the hub refused (the fleet unreachable) is not sent anywhere.
        if let (Some((peers, payload)), false) = (for_peers, sending.failed_at_once()) {
            peers.broadcast(&self.ns.path, &self.selection(), &payload);
        }
        Emitting::sent(sending)
    }

    /// [`BroadcastOperator::local`]'s emit: the event encoded once and written to each socket.
    fn emit_here(&self, name: &str, args: Args) -> Emitting {
        let head = event_head(&self.ns.path, name, &args.values, None, args.binaries.len());
        for socket in self.sockets() {
            let out = Outgoing::event_from_head(&head, None::<&str>, args.binaries.clone());
            // A failure closes that connection (slow consumer) or it is closed already.
            let _ = socket.inner.write(out);
        }
        Emitting::sent(Publishing::done(Ok(Vec::new())))
    }

    /// Sends the event to every socket the broadcast reaches, this server's and its peers',
    /// each asked for an acknowledgement (node's `io.to(room).timeout(t).emitWithAck(...)`),
    /// and resolves once all have answered or `timeout` has passed, with each socket's
    /// outcome.
    ///
    /// Unlike [`BroadcastOperator::emit`] this does not go through the hub: an ack is a
    /// conversation with one connected socket, so such events get no sequence number, are not
    /// kept in history and are not replayed on recovery (as in node), and other transports
    /// never see them.
    pub fn emit_with_ack(
        &self,
        name: &str,
        args: impl Into<Args>,
        timeout: Duration,
    ) -> impl Future<Output = AckAnswers> + Send + 'static {
        let args = args.into();
        let peers = match (self.local, self.ns.peers()) {
            (false, Some(peers)) => {
                let payload = Payload::new(name, Value::Array(args.values.clone()))
                    .with_attachments(args.binaries.clone());
                Some(peers.broadcast_with_ack(&self.ns.path, &self.selection(), &payload, timeout))
            }
            _ => None,
        };
        let waits: Vec<_> = self
            .sockets()
            .into_iter()
            .map(|socket| {
                let id = socket.id().to_string();
                let answer = socket.emit_with_ack(name, args.clone(), timeout);
                async move {
                    SocketAck {
                        socket: Some(id),
                        answer: answer.await,
                    }
                }
            })
            .collect();
        async move {
            let remote = async move {
                match peers {
                    Some(p) => Some(p.await),
                    None => None,
                }
            };
            let (mut answers, remote) =
                futures_util::future::join(futures_util::future::join_all(waits), remote).await;
            let mut incomplete = None;
            match remote {
                None => {}
                Some(Err(e)) => incomplete = Some(e),
                Some(Ok(acks)) => {
                    if acks.counted < acks.expected {
                        incomplete = Some(PeersError::Timeout {
                            answered: acks.counted,
                            expected: acks.expected,
                            timeout,
                        });
                    }
                    let missing = acks.sockets.saturating_sub(acks.answers.len());
                    answers.extend(acks.answers.into_iter().map(|a| SocketAck {
                        socket: None,
                        answer: Ok(a),
                    }));
                    answers.extend((0..missing).map(|_| SocketAck {
                        socket: None,
                        answer: Err(AckError::Timeout(timeout)),
                    }));
                }
            }
            AckAnswers {
                answers,
                incomplete,
            }
        }
    }

    /// The sockets of this node the broadcast would reach.
    pub fn sockets(&self) -> Vec<Socket> {
        let ids = self.recipients();
        let reg = lock(&self.ns.registry);
        ids.iter()
            .filter_map(|id| reg.sockets.get(id))
            .filter(|s| s.connected())
            .cloned()
            .collect()
    }

    fn recipients(&self) -> BTreeSet<Arc<str>> {
        let reg = lock(&self.ns.registry);
        let mut ids: BTreeSet<Arc<str>> = if self.rooms.is_empty() {
            reg.sockets.keys().cloned().collect()
        } else {
            self.rooms
                .iter()
                .filter_map(|room| reg.rooms.get(room))
                .flatten()
                .cloned()
                .collect()
        };
        for room in &self.except {
            if let Some(members) = reg.rooms.get(room) {
                for id in members {
                    ids.remove(id);
                }
            }
        }
        if let Some((_, sid)) = &self.sender {
            ids.remove(sid);
        }
        ids
    }
}

/// One socket's outcome in [`BroadcastOperator::emit_with_ack`].
#[derive(Debug)]
pub struct SocketAck {
    /// The socket's id; `None` for a peer's socket (socket.io's adapter does not say).
    pub socket: Option<String>,
    /// Its acknowledgement's arguments (a peer's socket: the first one only), or why none came.
    pub answer: Result<Args, AckError>,
}

/// What [`BroadcastOperator::emit_with_ack`] collected.
#[derive(Debug, Default)]
pub struct AckAnswers {
    /// One per socket the event was sent to.
    pub answers: Vec<SocketAck>,
    /// Why the peers' sockets may be missing from `answers` (a server did not say how many
    /// sockets it sent the event to, or could not be asked).
    pub incomplete: Option<PeersError>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_parse_strictly() {
        assert_eq!(parse_offset("0"), Some(0));
        assert_eq!(parse_offset("17"), Some(17));
        for bad in ["", "-1", "1.5", " 1", "Q80WZks", "99999999999999999999999"] {
            assert_eq!(parse_offset(bad), None, "{bad}");
        }
    }
}
