//! One client's presence in one namespace: events in both directions,
//! acknowledgements, rooms, and the single ordered path every outgoing
//! packet of the socket takes. The socket's state, and what it reaches of
//! its namespace and connection, are in `state`; nothing here names the
//! namespace or server modules.

use std::collections::BTreeSet;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tokio::sync::oneshot;

use super::codec::{Outgoing, SioMessage, SioPacket, RESERVED_EVENTS};
use super::error::{AckError, EmitError, RoomError};
use super::event::{Args, DisconnectReason, Event};
use super::recovery::{Decision, Tracker};
use super::rooms::room_topic;
use super::state::{AckSender, Handlers, Outbox, Phase, Socket, SocketInner};
use crate::access::{self, presence, Access, Grant, Refusal, Who};
use crate::engineio::{CloseReason, HandshakeInfo};
use crate::hub::{HubError, JoinOutcome, Message, Position, Subscriber, SubscriberId};
use crate::sync::lock;

/// Event name given to hub messages published without one (a raw pub/sub
/// publish): the name Socket.IO clients conventionally listen to.
pub const DEFAULT_EVENT: &str = "message";

/// Packets a socket may queue while its connect handler runs (they go out
/// right after the CONNECT reply). A handler that emits more than this is
/// treated like a client that does not read: the connection is closed.
pub const MAX_PRECONNECT_PACKETS: usize = 1024;

impl AckSender {
    /// Sends `3<nsp,><id>[args…]` (`6…` with binaries).
    pub fn send(self, args: impl Into<Args>) -> Result<(), EmitError> {
        let args = args.into();
        let out = Outgoing::ack(
            &self.socket.inner.ns.path,
            self.id,
            args.values,
            args.binaries,
        );
        self.socket.inner.write(out)
    }

    /// The ack id the client chose.
    pub fn id(&self) -> u64 {
        self.id
    }
}

impl SocketInner {
    fn subscriber(&self) -> Option<Arc<Subscriber>> {
        lock(&self.sub).clone()
    }

    /// Writes one packet: queued while connecting, sent when connected.
    pub(super) fn write(&self, out: Outgoing) -> Result<(), EmitError> {
        let mut outbox = lock(&self.outbox);
        self.write_locked(&mut outbox, out)
    }

    fn write_locked(&self, outbox: &mut Outbox, out: Outgoing) -> Result<(), EmitError> {
        match outbox.phase {
            Phase::Connecting => {
                if outbox.pending.len() >= MAX_PRECONNECT_PACKETS {
                    self.conn.slow_consumer();
                    return Err(EmitError::SlowConsumer);
                }
                outbox.pending.push(out);
                Ok(())
            }
            Phase::Connected => self.conn.write(out),
            Phase::Closed => Err(EmitError::Disconnected),
        }
    }

    /// Sends the CONNECT reply, then what the connect handler queued; in a fleet, writes the
    /// session record of this new life of the session (its rooms are all joined now, the
    /// connect handler's included, whose positions are settled first).
    pub(super) fn finish_connect(self: &Arc<Self>) -> Result<(), EmitError> {
        self.send_connect_reply()?;
        self.update_fleet_record(true);
        Ok(())
    }

    /// In a fleet, settles the socket's positions and writes its record, on its own task.
    fn update_fleet_record(self: &Arc<Self>, takeover: bool) {
        if lock(&self.outbox).tracker.incarnation().is_none() {
            return;
        }
        let inner = Arc::clone(self);
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                inner.settle_in_fleet().await;
                inner.save_fleet_record(takeover);
            });
        }
    }

    fn send_connect_reply(&self) -> Result<(), EmitError> {
        let mut data = serde_json::Map::new();
        data.insert("sid".into(), Value::from(&*self.id));
        if let Some(pid) = &self.pid {
            data.insert("pid".into(), Value::from(&**pid));
        }
        let reply = Outgoing::packet(SioPacket::connect(
            self.ns.path.as_str(),
            Some(Value::Object(data)),
        ));
        let mut outbox = lock(&self.outbox);
        if outbox.phase != Phase::Connecting {
            return Err(EmitError::Disconnected);
        }
        // Connected (and counted, under the outbox lock like the decrement
        // in `shut`) before the reply is out, so whoever sees the reply sees
        // the socket connected. If the write fails the connection is
        // closing, and its teardown ends the socket as a connected one.
        outbox.phase = Phase::Connected;
        self.ns
            .stats
            .sockets
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.conn.write(reply)?;
        for out in std::mem::take(&mut outbox.pending) {
            self.conn.write(out)?;
        }
        Ok(())
    }

    /// Delivers one hub message from a topic the socket is in (live or
    /// replayed), unless the tracker says it was handled already.
    pub(super) fn deliver_locked(&self, outbox: &mut Outbox, msg: &Message) {
        if outbox.phase == Phase::Closed {
            return;
        }
        let name = if msg.event().is_empty() {
            DEFAULT_EVENT
        } else {
            msg.event()
        };
        let deliverable = !RESERVED_EVENTS.contains(&name) && !self.left_out_of(msg);
        let Decision::Deliver { offset } = outbox.tracker.decide(msg, deliverable) else {
            return;
        };
        let head = self.ns.event_head(msg, name);
        let attachments = msg.attachments().to_vec();
        let fleet = offset.and_then(|count| outbox.tracker.fleet_offset(count));
        let out = match &fleet {
            Some(fleet) => Outgoing::event_from_head(&head, Some(fleet), attachments),
            None => Outgoing::event_from_head(&head, offset, attachments),
        };
        // A failure closes the connection (slow consumer) or means it is
        // closed already; the teardown that follows handles both.
        let _ = self.write_locked(outbox, out);
    }

    /// Whether `msg` leaves this socket out: it is in one of the rooms the payload names
    /// ([`crate::hub::Payload::except`]). The message still counts as seen (its position
    /// advances like a reserved event's), it is just not sent.
    fn left_out_of(&self, msg: &Message) -> bool {
        let except = &msg.payload.except;
        if except.is_empty() {
            return false;
        }
        if except.iter().any(|room| **room == *self.id) {
            return true;
        }
        let rooms = lock(&self.rooms);
        except.iter().any(|room| rooms.contains(room))
    }

    /// Delivers up to `budget` messages the hub queued for the socket; false when more are
    /// left. Called by the connection's task when the hub wakes it
    /// ([`super::state::ConnShared::deliver_queued`]).
    pub(super) fn deliver_queued(&self, budget: usize) -> bool {
        let Some(sub) = self.subscriber() else {
            return true;
        };
        for _ in 0..budget {
            // Whether the socket is still in the message's topic is read under the outbox lock,
            // which `leave` holds while it leaves: nothing of a room left is sent after.
            let outbox = lock(&self.outbox);
            match sub.try_recv_joined() {
                Ok(Some(queued)) => {
                    self.deliver_live(outbox, &queued.msg, queued.joined);
                    if queued.last {
                        return true;
                    }
                }
                Ok(None) => return true,
                Err(closed) => {
                    drop(outbox);
                    // The hub dropped this subscriber: its queue filled up (or the hub shut
                    // down). The socket cannot be kept consistent without it, so the
                    // connection goes.
                    match closed.reason {
                        crate::hub::CloseReason::SlowConsumer => self.conn.slow_consumer(),
                        _ => self.conn.sender.close(CloseReason::ServerShutdown),
                    }
                    return true;
                }
            }
        }
        sub.queued() == 0
    }

    /// A live message from the socket's hub queue, taken under `outbox`; `joined`: the
    /// socket was still in its topic then (one queued before a leave is no longer for it).
    fn deliver_live(
        &self,
        mut outbox: std::sync::MutexGuard<'_, Outbox>,
        msg: &Message,
        joined: bool,
    ) {
        let changed = {
            if joined {
                if msg.is_reset() {
                    outbox.tracker.reset(Arc::clone(&msg.topic), msg.position());
                } else {
                    self.deliver_locked(&mut outbox, msg);
                }
            }
            let changed = outbox.tracker.take_changed();
            drop(outbox);
            changed
        };
        if changed {
            // A topic's epoch changed (the fleet lost its history): the record says so.
            self.save_fleet_record(false);
        }
    }

    /// In a fleet, replaces the positions of topics this socket joined before the node knew
    /// where the fleet stands in them (stand-ins, [`crate::hub::Hub::locate`]) by the fleet's,
    /// so that its offsets and its session record name positions every node knows.
    pub(super) async fn settle_in_fleet(&self) {
        let topics = {
            let outbox = lock(&self.outbox);
            if outbox.tracker.incarnation().is_none() {
                return;
            }
            outbox.tracker.topics()
        };
        for (topic, _) in &topics {
            if let Err(e) = self.ns.hub.locate(topic).await {
                tracing::debug!(topic = %topic, error = %e, "socket.io: where the fleet stands in a topic is unknown; a recovery on another node will not cross it");
            }
        }
        let hub = &self.ns.hub;
        lock(&self.outbox)
            .tracker
            .resolve(|topic, p| hub.placed(topic, p));
    }

    /// In a fleet, writes the session record other nodes recover from ([`super::fleet_recovery`]):
    /// the socket's rooms, and its topics with their epochs as its offsets name them.
    /// `takeover`: this is a new life of the session (see
    /// [`SessionStore::save`](super::fleet_recovery::SessionStore::save)).
    pub(super) fn save_fleet_record(&self, takeover: bool) {
        let Some(recovery) = &self.ns.options.recovery else {
            return;
        };
        let (Some(store), Some(pid)) = (&recovery.fleet, &self.pid) else {
            return;
        };
        let (topics, incarnation) = {
            let mut outbox = lock(&self.outbox);
            if outbox.phase == Phase::Closed {
                return;
            }
            outbox.tracker.take_changed();
            (outbox.tracker.topics(), outbox.tracker.incarnation())
        };
        let Some(incarnation) = incarnation else {
            return;
        };
        let record = super::fleet_recovery::SessionRecord {
            sid: self.id.to_string(),
            nsp: self.ns.path.clone(),
            rooms: lock(&self.rooms).iter().cloned().collect(),
            topics,
            incarnation,
        };
        store.0.save(pid, record, takeover);
    }

    /// Ends the socket once: stops delivery, leaves every topic, drops
    /// pending acks. Returns the tracker and rooms if it was connected.
    pub(super) fn shut(&self, notify_client: bool) -> Option<(Tracker, Vec<String>)> {
        let tracker = {
            let mut outbox = lock(&self.outbox);
            let was = outbox.phase;
            if was == Phase::Closed {
                return None;
            }
            if notify_client && was == Phase::Connected {
                let _ = self.conn.write(Outgoing::packet(SioPacket::disconnect(
                    self.ns.path.as_str(),
                )));
            }
            outbox.phase = Phase::Closed;
            outbox.pending.clear();
            if was == Phase::Connected {
                self.ns
                    .stats
                    .sockets
                    .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
            }
            let tracker = std::mem::replace(&mut outbox.tracker, Tracker::new(None));
            (was == Phase::Connected).then_some(tracker)
        };
        if let Some(sub) = lock(&self.sub).take() {
            // Detach now rather than when a delivery under way drops its clone.
            for topic in sub.topics() {
                sub.leave(&topic);
            }
        }
        if self.ns.options.recovery.is_none() {
            // Nobody can ever be in this socket's own room again.
            self.ns
                .hub
                .drop_if_unused(&super::rooms::room_topic(&self.ns.path, &self.id));
        }
        lock(&self.acks).waiting.clear();
        let rooms: Vec<String> = lock(&self.rooms).iter().cloned().collect();
        tracker.map(|t| (t, rooms))
    }
}

impl Socket {
    /// The socket id: a fresh random id (never the Engine.IO sid), kept
    /// across a recovery. The socket is in a room of that name.
    pub fn id(&self) -> &str {
        &self.inner.id
    }

    /// The private session id sent with the CONNECT reply when recovery is
    /// on; whoever knows it can take the session over, so never share it.
    pub fn pid(&self) -> Option<&str> {
        self.inner.pid.as_deref()
    }

    /// The namespace path (`/`, `/chat`).
    pub fn nsp(&self) -> &str {
        &self.inner.ns.path
    }

    /// The CONNECT packet's payload (`{}` when it had none), node's
    /// `socket.handshake.auth`. With recovery it includes `pid`/`offset`.
    pub fn auth(&self) -> &Value {
        static EMPTY: std::sync::LazyLock<Value> =
            std::sync::LazyLock::new(|| Value::Object(serde_json::Map::new()));
        self.inner.auth.as_deref().unwrap_or(&EMPTY)
    }

    /// The Engine.IO handshake request (headers, query, peer).
    pub fn handshake(&self) -> &HandshakeInfo {
        &self.inner.conn.info
    }

    /// What the app is told about the client when asked about it: the
    /// Engine.IO handshake's head and addresses.
    pub fn client_info(&self) -> access::ClientInfo {
        self.inner.conn.client_info()
    }

    /// Who the app's connect callback said the client is (anonymous without
    /// one).
    pub fn user(&self) -> &access::Identity {
        static ANONYMOUS: access::Identity = access::Identity {
            user_id: None,
            user_info: Value::Null,
            rooms: Vec::new(),
        };
        self.inner.user.as_deref().unwrap_or(&ANONYMOUS)
    }

    /// Who may join which room and relay into it.
    pub fn access(&self) -> &Access {
        &self.inner.ns.access
    }

    /// Whether this socket may join `room` by what is known without asking
    /// the app: yes for a public room or one the app granted at connect, no
    /// for a private room with no app to ask. `None`: ask with
    /// [`Socket::ask_to_join`].
    pub fn may_join_now(&self, room: &str) -> Option<Result<Grant, Refusal>> {
        self.inner.ns.access.decide_now(&self.who(), room)
    }

    /// The app's word on this socket joining `room` (Laravel's
    /// `/broadcasting/auth` with the room as `channel_name` and the socket id
    /// as `socket_id`), or the policy's when it need not be asked.
    pub fn ask_to_join(
        &self,
        room: &str,
    ) -> impl Future<Output = Result<Grant, Refusal>> + Send + 'static {
        self.ask_to_join_with(room, http::HeaderMap::new())
    }

    /// [`Socket::ask_to_join`] with the credentials of `credentials` in
    /// place of the handshake's ([`ClientInfo::with_credentials`]): Laravel
    /// Echo's `auth: {headers}` for one channel.
    ///
    /// [`ClientInfo::with_credentials`]: crate::access::ClientInfo::with_credentials
    pub fn ask_to_join_with(
        &self,
        room: &str,
        credentials: http::HeaderMap,
    ) -> impl Future<Output = Result<Grant, Refusal>> + Send + 'static {
        let socket = self.clone();
        let room = room.to_owned();
        async move {
            let inner = &socket.inner;
            let client = || inner.conn.client_info().with_credentials(&credentials);
            inner
                .ns
                .access
                .subscribe(&socket.who(), client, &room)
                .await
        }
    }

    fn who(&self) -> Who<'_> {
        Who {
            identity: self.user(),
            socket_id: &self.inner.id,
            client_ip: self.inner.conn.info.client,
            transport: "socketio",
        }
    }

    /// Keeps the app's grant for `room` (a presence answer's member) for as
    /// long as the socket is in the room.
    pub fn keep_grant(&self, room: &str, grant: Grant) {
        if grant.member.is_some() {
            lock(&self.inner.grants).insert(room.to_owned(), grant);
        }
    }

    /// The app's grant for `room`, when it named a member.
    pub fn grant(&self, room: &str) -> Option<Grant> {
        lock(&self.inner.grants).get(room).cloned()
    }

    /// Whether this socket resumed a previous session (same id, its rooms
    /// back, missed events replayed). The client sees `socket.recovered`.
    pub fn recovered(&self) -> bool {
        self.inner.recovered
    }

    /// Whether the socket is connected (false while its connect handler
    /// runs and after it is gone).
    pub fn connected(&self) -> bool {
        lock(&self.inner.outbox).phase == Phase::Connected
    }

    /// The hub subscriber id this socket publishes as (its relays carry it
    /// as origin so they skip the sender).
    pub fn subscriber_id(&self) -> SubscriberId {
        self.inner.sub_id
    }

    /// Handles event `name` (replacing an earlier handler). Handlers run in
    /// the connection's task, one event at a time in arrival order, so they
    /// must not block: spawn a task for slow work (the [`AckSender`] and
    /// the socket can be moved into it).
    pub fn on<F>(&self, name: impl Into<String>, handler: F)
    where
        F: Fn(&Socket, Event, Option<AckSender>) + Send + Sync + 'static,
    {
        lock(&self.inner.handlers)
            .events
            .insert(name.into(), Arc::new(handler));
    }

    /// Handles every event that has no handler of its own (node's `onAny`
    /// differs: it sees all events). Events with no handler at all are
    /// dropped, unacknowledged, as in node.
    pub fn on_fallback<F>(&self, handler: F)
    where
        F: Fn(&Socket, Event, Option<AckSender>) + Send + Sync + 'static,
    {
        lock(&self.inner.handlers).fallback = Some(Arc::new(handler));
    }

    /// Called once when the socket leaves the namespace, whatever the reason
    /// (not when its connect handler refused it).
    pub fn on_disconnect<F>(&self, handler: F)
    where
        F: Fn(&Socket, &DisconnectReason) + Send + Sync + 'static,
    {
        lock(&self.inner.handlers)
            .disconnect
            .push(Arc::new(handler));
    }

    /// Sends event `name` to this client.
    ///
    /// With recovery on it goes through the socket's own room (as node does)
    /// so it gets an offset and is replayed if the client misses it; it is
    /// then delivered by the connection's task, shortly after this returns.
    pub fn emit(&self, name: &str, args: impl Into<Args>) -> Result<(), EmitError> {
        check_name(name)?;
        let args = args.into();
        if self.inner.ns.options.recovery.is_some() {
            let topic = room_topic(&self.inner.ns.path, &self.inner.id);
            let payload = crate::hub::Payload::new(name, Value::Array(args.values))
                .with_attachments(args.binaries);
            // Sent when this returns; in a fleet, a failure Redis reports later is logged
            // (nobody waits for it here).
            let sending = self.inner.ns.hub.send(&topic, payload, None);
            if let Some(Err(e)) = futures_util::FutureExt::now_or_never(sending) {
                return Err(e.into());
            }
            return Ok(());
        }
        let out = Outgoing::event(
            &self.inner.ns.path,
            name,
            &args.values,
            None,
            None,
            args.binaries,
        );
        self.inner.write(out)
    }

    /// Sends event `name` asking for an acknowledgement, and resolves with
    /// the client's answer, or an error after `timeout` or on disconnect.
    /// The packet is written before this returns; the future only waits.
    /// Such events carry no offset and are not replayed (as in node).
    pub fn emit_with_ack(
        &self,
        name: &str,
        args: impl Into<Args>,
        timeout: Duration,
    ) -> impl Future<Output = Result<Args, AckError>> + Send + 'static {
        let sent = self.send_with_ack(name, args.into());
        let socket = self.clone();
        async move {
            let (id, rx) = sent?;
            match tokio::time::timeout(timeout, rx).await {
                Ok(Ok(args)) => Ok(args),
                Ok(Err(_)) => Err(AckError::Disconnected),
                Err(_) => {
                    lock(&socket.inner.acks).waiting.remove(&id);
                    Err(AckError::Timeout(timeout))
                }
            }
        }
    }

    fn send_with_ack(
        &self,
        name: &str,
        args: Args,
    ) -> Result<(u64, oneshot::Receiver<Args>), AckError> {
        check_name(name)?;
        let (tx, rx) = oneshot::channel();
        let id = {
            let mut acks = lock(&self.inner.acks);
            let limit = self.inner.ns.options.max_pending_acks;
            if acks.waiting.len() >= limit {
                return Err(EmitError::TooManyPendingAcks { limit }.into());
            }
            let id = acks.next_id;
            acks.next_id += 1;
            acks.waiting.insert(id, tx);
            id
        };
        let out = Outgoing::event(
            &self.inner.ns.path,
            name,
            &args.values,
            None,
            Some(id),
            args.binaries,
        );
        if let Err(e) = self.inner.write(out) {
            lock(&self.inner.acks).waiting.remove(&id);
            return Err(e.into());
        }
        Ok((id, rx))
    }

    /// Joins `room` (no-op if already in it). Messages published to the room
    /// from now on reach this socket.
    pub fn join(&self, room: &str) -> Result<(), RoomError> {
        self.join_with_history(room, 0).map(|_| ())
    }

    /// Joins `room` and first delivers up to `last` of its most recent
    /// messages from the hub's history (fewer if history holds fewer), then
    /// live ones, with no gap or duplicate in between. Returns how many
    /// history messages were taken (before the socket's filters). No-op
    /// returning 0 if the socket is already in the room.
    pub fn join_with_history(&self, room: &str, last: usize) -> Result<usize, RoomError> {
        let topic = room_topic(&self.inner.ns.path, room);
        let replayed = self.inner.join_topic(&topic, last)?;
        let new = lock(&self.inner.rooms).insert(room.to_owned());
        self.inner.ns.registry_join(room, &self.inner.id);
        if new && self.connected() {
            // In a fleet: the room's position as the fleet knows it, then the record.
            self.inner.update_fleet_record(false);
        }
        Ok(replayed)
    }

    /// Leaves `room`; returns whether the socket was in it.
    pub fn leave(&self, room: &str) -> bool {
        let topic = room_topic(&self.inner.ns.path, room);
        if let Some(sub) = self.inner.subscriber() {
            // Under the outbox lock, so the tracker and the hub agree.
            let mut outbox = lock(&self.inner.outbox);
            sub.leave(&topic);
            outbox.tracker.forget(&topic);
        }
        let was_in = lock(&self.inner.rooms).remove(room);
        lock(&self.inner.grants).remove(room);
        self.inner.ns.registry_leave(room, &self.inner.id);
        if was_in {
            self.inner.save_fleet_record(false);
        }
        was_in
    }

    /// The rooms the socket is in, its own id included.
    pub fn rooms(&self) -> BTreeSet<String> {
        lock(&self.inner.rooms).clone()
    }

    /// Leaves the namespace: sends `1<nsp>` to the client, which does not
    /// reconnect by itself (reason `io server disconnect`). The Engine.IO
    /// connection and other namespaces stay.
    pub fn disconnect(&self) {
        self.close(DisconnectReason::ServerNamespaceDisconnect, true);
    }

    /// [`disconnect`](Self::disconnect), then closes the whole connection
    /// (node's `socket.disconnect(true)`).
    pub fn disconnect_and_close(&self) {
        self.disconnect();
        self.inner.conn.sender.close(CloseReason::ServerClose);
    }

    /// Ends the socket: unregisters it, keeps its session if the reason
    /// allows recovery, runs the disconnect handlers.
    pub(super) fn close(&self, reason: DisconnectReason, notify_client: bool) {
        let Some((tracker, rooms)) = self.inner.shut(notify_client) else {
            // Refused, or closed already: no disconnect handlers, but drop
            // what a refused connect handler registered (it may hold clones
            // of this socket).
            self.inner.ns.unregister(self);
            self.inner.conn.forget(self);
            *lock(&self.inner.handlers) = Handlers::default();
            return;
        };
        self.inner.ns.unregister(self);
        self.inner.conn.forget(self);
        self.inner
            .close_fleet_record(tracker.incarnation(), reason.is_recoverable());
        if reason.is_recoverable() {
            if let Some(pid) = &self.inner.pid {
                self.inner.ns.keep_session(
                    Arc::clone(&self.inner.id),
                    Arc::clone(pid),
                    rooms,
                    tracker,
                );
            }
        }
        let handlers = std::mem::take(&mut lock(&self.inner.handlers).disconnect);
        for handler in handlers {
            handler(self, &reason);
        }
        // Nothing can call them any more; free what they capture.
        *lock(&self.inner.handlers) = Handlers::default();
    }

    /// An EVENT from the client.
    pub(super) fn on_event(&self, msg: SioMessage) {
        let SioMessage { packet, binaries } = msg;
        let mut values = match packet.data {
            Some(Value::Array(values)) => values,
            // The decoder only passes events with a non-empty array.
            _ => return,
        };
        let name = match values.remove(0) {
            Value::String(s) => s,
            other => other.to_string(),
        };
        let handler = {
            let handlers = lock(&self.inner.handlers);
            handlers
                .events
                .get(&name)
                .or(handlers.fallback.as_ref())
                .cloned()
        };
        let Some(handler) = handler else { return };
        let ack = packet.id.map(|id| AckSender {
            socket: self.clone(),
            id,
        });
        handler(
            self,
            Event {
                name,
                args: Args { values, binaries },
            },
            ack,
        );
    }

    /// An ACK from the client; unknown ids are ignored, as in node.
    pub(super) fn on_ack(&self, msg: SioMessage) {
        let Some(id) = msg.packet.id else { return };
        let Some(tx) = lock(&self.inner.acks).waiting.remove(&id) else {
            return;
        };
        let values = match msg.packet.data {
            Some(Value::Array(values)) => values,
            _ => Vec::new(),
        };
        let _ = tx.send(Args {
            values,
            binaries: msg.binaries,
        });
    }
}

impl SocketInner {
    /// In a fleet, the session record outlives a socket that may come back (for
    /// `max_disconnection_duration`) and goes with one that will not.
    fn close_fleet_record(&self, incarnation: Option<u64>, recoverable: bool) {
        let Some(recovery) = &self.ns.options.recovery else {
            return;
        };
        let (Some(store), Some(pid), Some(incarnation)) = (&recovery.fleet, &self.pid, incarnation)
        else {
            return;
        };
        if recoverable {
            store.0.release(pid, incarnation);
        } else {
            store.0.remove(pid, incarnation);
        }
    }

    /// Joins `topic` with up to `last` history messages, delivered in order
    /// before anything live from it. Returns the history count.
    pub(super) fn join_topic(&self, topic: &str, last: usize) -> Result<usize, RoomError> {
        let sub = self.subscriber().ok_or(RoomError::Disconnected)?;
        let since = if last == 0 {
            None
        } else {
            self.ns.hub.topic_info(topic).map(|info| {
                let back = (last as u64).min(info.retained as u64);
                Position::new(info.position.epoch, info.position.seq - back)
            })
        };
        let mut outbox = lock(&self.outbox);
        if outbox.phase == Phase::Closed {
            return Err(RoomError::Disconnected);
        }
        let outcome = match sub.join(topic, since) {
            Ok(outcome) => outcome,
            Err(HubError::AlreadyJoined { .. }) => return Ok(0),
            Err(e) => return Err(e.into()),
        };
        let topic: Arc<str> = Arc::from(topic);
        match &outcome {
            JoinOutcome::Resumed { replay, .. } => {
                if let Some(since) = since {
                    outbox.tracker.set_position(Arc::clone(&topic), since);
                }
                // The room's messages, not its presence news: who is there now is what the
                // member list of the join says.
                for msg in replay
                    .iter()
                    .filter(|m| !presence::is_presence_event(m.event()))
                {
                    self.deliver_locked(&mut outbox, msg);
                }
            }
            JoinOutcome::Fresh { .. } | JoinOutcome::Reset { .. } => {}
        }
        outbox.tracker.set_position(topic, outcome.position());
        Ok(outcome.replay().len())
    }
}

fn check_name(name: &str) -> Result<(), EmitError> {
    if RESERVED_EVENTS.contains(&name) {
        return Err(EmitError::ReservedEvent(name.to_owned()));
    }
    Ok(())
}
