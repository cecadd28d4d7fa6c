//! One Engine.IO session, shared by the HTTP requests and the WebSocket that carry it.
//!
//! The session does no I/O of its own. Messages from the layer above stay in the bounded
//! `outgoing` queue until a transport is actually writing them: a long-poll takes them inside
//! the same poll that builds its response (so a poll abandoned by its client loses nothing), a
//! WebSocket writer takes them as it sends. Heartbeats, `noop`s and messages a poll could not
//! fit wait in `outbox`, which holds a handful of packets at most.
//!
//! One task per session (`task::SessionTask`) does everything that is the session's own: the
//! heartbeat and the orderly close ([`Session::drive`], a timer in tokio's shared wheel, not a
//! task of its own), the layer above's future ([`crate::engineio::ConnHandler`]), and the
//! WebSocket that carries the session, when one does: the one it was opened with, or the one a
//! polling session upgrades to, handed over by the upgrade request once the client sent `5`.
//! Polling requests are served by their own request's task.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::task::{Context, Poll, Waker};

use crate::sync::{lock, Changes};
use std::time::Duration;

use tokio::sync::{oneshot, Notify};
use tokio::time::{sleep_until, Instant};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use super::conn::{ConnTransport, IncomingSender, OutQueue, SendError};
use super::parts::KeptWaker;
use crate::seam::Upgraded;

/// A WebSocket carrying a session. Boxed: it is passed down through the session's task, whose
/// every async layer keeps a slot of the size of what it was passed for the connection's life
/// (about 300 bytes each, four times over, while the stream was passed by value).
pub(super) type Ws = Box<tokio_tungstenite::WebSocketStream<Upgraded>>;
use super::{
    encode_payload_capped, CloseReason, ConnSender, EngineConfig, Frame, Packet, Transport,
};

/// The sessions of one server, by sid.
pub(super) type Registry = Mutex<Sessions>;

/// Sessions by sid, and how many each client address holds (for
/// [`EngineConfig::max_sessions_per_client`]).
#[derive(Default)]
pub(super) struct Sessions {
    by_sid: HashMap<Arc<str>, Arc<Session>>,
    per_client: HashMap<Option<IpAddr>, usize>,
}

impl Sessions {
    pub(super) fn get(&self, sid: &str) -> Option<&Arc<Session>> {
        self.by_sid.get(sid)
    }

    pub(super) fn contains(&self, sid: &str) -> bool {
        self.by_sid.contains_key(sid)
    }

    pub(super) fn len(&self) -> usize {
        self.by_sid.len()
    }

    pub(super) fn values(&self) -> impl Iterator<Item = &Arc<Session>> {
        self.by_sid.values()
    }

    /// Sessions held by `client` (a key from [`crate::topics::client_key`]).
    pub(super) fn of_client(&self, client: Option<IpAddr>) -> usize {
        self.per_client.get(&client).copied().unwrap_or(0)
    }

    pub(super) fn insert(&mut self, session: Arc<Session>) {
        if let Some(old) = self.by_sid.insert(session.sid.clone(), session.clone()) {
            self.uncount(old.client);
        }
        *self.per_client.entry(session.client).or_default() += 1;
    }

    pub(super) fn remove(&mut self, sid: &str) -> Option<Arc<Session>> {
        let gone = self.by_sid.remove(sid)?;
        self.uncount(gone.client);
        Some(gone)
    }

    fn uncount(&mut self, client: Option<IpAddr>) {
        if let Some(n) = self.per_client.get_mut(&client) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.per_client.remove(&client);
            }
        }
    }
}

/// How long a session closed by the layer above waits for its client to collect what was
/// queued before the close (and the `close` packet itself): node's polling `closeTimeout`.
pub(super) const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the sid of a polling session closed by its client (`1` in a POST) stays known
/// when no poll was pending, so that the client's own poll, sent alongside the close on
/// another connection and overtaken by it, still gets its `noop` (as it would have, had it
/// arrived first) instead of an error. Any other request, or a second poll, gets `400`.
pub(super) const CLIENT_CLOSE_LINGER: Duration = Duration::from_secs(1);

#[derive(Debug, Clone, PartialEq, Eq)]
enum Phase {
    Open,
    /// Closed by the layer above: what it queued before is still delivered, then `close`.
    Draining(CloseReason),
    Closed(CloseReason),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Upgrade {
    /// On polling, no probe under way.
    None,
    /// A probe WebSocket is open; it has not sent `2probe` yet.
    Probing,
    /// `3probe` sent: polls are ended with `noop` so that the client pauses polling.
    Upgrading,
    /// On WebSocket (upgraded, or opened directly): no further upgrade.
    Done,
}

struct Heartbeat {
    /// When the client last sent any packet (node's `lastPacketTime`): a client busy sending
    /// is alive even if its pong is stuck behind its other traffic.
    last_packet: Instant,
    /// When the pong of the outstanding ping is due, counted from when the ping was
    /// scheduled (not from when a busy runtime got round to it); `None` when no ping waits.
    pong_due: Option<Instant>,
    /// Whether the last ping was handed to a transport. A ping nobody collected means the
    /// client stopped polling: that is a transport close, not a ping timeout.
    ping_delivered: bool,
}

impl Heartbeat {
    /// The moment the session is dead if nothing arrives: the pong's due time, pushed back
    /// while other packets keep arriving (node's `checkPingTimeout`).
    fn deadline(&self, timeout: Duration) -> Option<Instant> {
        self.pong_due.map(|due| due.max(self.last_packet + timeout))
    }
}

struct State {
    transport: Transport,
    upgrade: Upgrade,
    phase: Phase,
    outbox: VecDeque<Packet>,
    get_in_flight: bool,
    post_in_flight: bool,
    /// When `3probe` was sent: polls are ended with `noop` on every tick of the polling
    /// transport's `UPGRADE_NOOP_INTERVAL` from then on, as node's `check` timer does.
    upgrading_since: Option<Instant>,
    /// Closed by the client with no poll pending: the sid stays known until then for the
    /// overtaken poll (see [`CLIENT_CLOSE_LINGER`]).
    linger_until: Option<Instant>,
    /// WebSocket close code chosen by whoever closed, when the reason alone does not say.
    ws_close_code: Option<CloseCode>,
    heartbeat: Heartbeat,
}

/// What to do with a packet received from the client.
pub(super) enum Inbound {
    Deliver(Frame),
    Ignore,
    /// The session is closed; stop reading.
    Stop,
}

/// Outcome of trying to claim the session's single GET (or POST) slot.
pub(super) enum Claim {
    Claimed,
    /// Another request of that kind is in flight: the client broke the protocol.
    Overlap,
    Gone,
}

/// What a poll answers.
pub(super) enum PollAnswer {
    Payload(String),
    /// The session ended with nothing left for this client.
    Gone,
    /// The session moved to WebSocket while this poll waited: a poll from a client that did
    /// not pause polling before `5`, answered as a poll arriving after the upgrade is.
    Upgraded,
}

/// What a WebSocket writer does next.
pub(super) struct WsBatch {
    pub packets: Vec<Packet>,
    /// Send a close frame with this code after the packets, and stop.
    pub close: Option<CloseCode>,
    /// The close ends an orderly drain: the session is finished once it is written.
    pub drained: bool,
}

pub(super) struct Session {
    pub sid: Arc<str>,
    /// When the handshake happened: the first ping is due `pingInterval` after it.
    opened: Instant,
    pub config: Arc<EngineConfig>,
    sender: ConnSender,
    /// Towards the layer above; dropped at close so that its `Conn.incoming` ends.
    incoming: Mutex<Option<IncomingSender>>,
    /// Messages from the layer above. Held (async lock) by the one transport writing them.
    pub outgoing: tokio::sync::Mutex<OutQueue>,
    state: Mutex<State>,
    /// Bumped on every change a waiting transport may care about.
    changed: Changes,
    /// The WebSocket writer's wake-up on a change ([`Session::poll_ws_change`]): registered
    /// once and kept between messages, where waiting on `changed` registered a waiter anew
    /// (under a lock) at every message written.
    ws_writer: KeptWaker,
    pong: Notify,
    registry: Weak<Registry>,
    /// The client address the session counts against ([`crate::topics::client_key`]).
    pub(super) client: Option<IpAddr>,
    /// Where an upgrade hands its WebSocket to the session's task: a polling session's that
    /// may upgrade, until it does or closes (dropped at close, which ends the task's wait).
    upgrade_to: Mutex<Option<oneshot::Sender<Ws>>>,
}

impl Session {
    pub(super) fn new(
        sid: Arc<str>,
        config: Arc<EngineConfig>,
        transport: Transport,
        conn: ConnTransport,
        registry: Weak<Registry>,
        client: Option<IpAddr>,
    ) -> Arc<Session> {
        let ConnTransport {
            outgoing,
            incoming,
            sender,
        } = conn;
        Arc::new(Session {
            sid,
            opened: Instant::now(),
            config,
            sender,
            incoming: Mutex::new(Some(incoming)),
            outgoing: tokio::sync::Mutex::new(outgoing),
            state: Mutex::new(State {
                transport,
                upgrade: match transport {
                    Transport::Polling => Upgrade::None,
                    Transport::WebSocket => Upgrade::Done,
                },
                phase: Phase::Open,
                outbox: VecDeque::new(),
                get_in_flight: false,
                post_in_flight: false,
                upgrading_since: None,
                linger_until: None,
                ws_close_code: None,
                heartbeat: Heartbeat {
                    last_packet: Instant::now(),
                    pong_due: None,
                    ping_delivered: false,
                },
            }),
            changed: Changes::default(),
            ws_writer: KeptWaker::default(),
            pong: Notify::new(),
            registry,
            client,
            upgrade_to: Mutex::new(None),
        })
    }

    fn state(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }

    /// The session's changes so far: what a waiter has seen when it looks at the session now.
    pub(super) fn changes_now(&self) -> u64 {
        self.changed.now()
    }

    /// Resolves at the first change after `seen` (moved to the count then).
    pub(super) async fn changed(&self, seen: &mut u64) {
        self.changed.changed(seen).await;
    }

    fn notify(&self) {
        self.changed.bump();
        self.ws_writer.wake();
    }

    /// Ready when the session changed since `seen`; pending otherwise, and the WebSocket writer
    /// polling it is woken at the next change. For the one writer of the session;
    /// `registered`: its copy of the waker it registered ([`KeptWaker::register`]).
    pub(super) fn poll_ws_change(
        &self,
        seen: u64,
        registered: &mut Option<Waker>,
        cx: &mut Context<'_>,
    ) -> Poll<()> {
        // Registered before looking: a change made in between is seen now or wakes the writer.
        self.ws_writer.register(registered, cx.waker());
        if self.changed.since(seen) {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }

    /// The transport requests must use, `None` once closed (the sid is then unknown).
    pub(super) fn transport(&self) -> Option<Transport> {
        let st = self.state();
        match st.phase {
            Phase::Closed(_) if st.linger_until.is_some() => Some(Transport::Polling),
            Phase::Closed(_) => None,
            _ => Some(st.transport),
        }
    }

    /// Closes the session if its pong is overdue, and says whether it did. The heartbeat
    /// does this too, but a timer may fire a little late: a request must never find alive a
    /// session that is past its deadline.
    pub(super) fn expire_if_due(&self) -> bool {
        let reason = {
            let st = self.state();
            match st.heartbeat.deadline(self.config.ping_timeout) {
                Some(deadline) if st.phase == Phase::Open && deadline <= Instant::now() => {
                    if st.heartbeat.ping_delivered {
                        CloseReason::PingTimeout
                    } else {
                        CloseReason::TransportClose
                    }
                }
                _ => return false,
            }
        };
        self.close(reason);
        true
    }

    pub(super) fn is_closed(&self) -> bool {
        matches!(self.state().phase, Phase::Closed(_))
    }

    /// Queues a packet for whichever transport writes next (the `open` of a WebSocket session).
    pub(super) fn push(&self, packet: Packet) {
        self.state().outbox.push_back(packet);
        self.notify();
    }

    /// Closes now, for a reason of the engine's own (ping timeout, protocol error, shutdown,
    /// client close...). Nothing queued is sent any more: a pending poll gets `close` (`noop`
    /// when the client itself closed, as node answers), a WebSocket gets a close frame.
    pub(super) fn close(&self, reason: CloseReason) {
        self.close_with_code(reason, None);
    }

    pub(super) fn close_with_code(&self, reason: CloseReason, code: Option<CloseCode>) {
        {
            let mut st = self.state();
            if matches!(st.phase, Phase::Closed(_)) {
                return;
            }
            st.phase = Phase::Closed(reason.clone());
            st.ws_close_code = code;
            st.outbox.clear();
            if st.transport == Transport::Polling {
                let client_close = reason == CloseReason::ClientClose;
                if st.get_in_flight {
                    st.outbox.push_back(if client_close {
                        Packet::Noop
                    } else {
                        Packet::Close
                    });
                } else if client_close {
                    st.outbox.push_back(Packet::Noop);
                    st.linger_until = Some(Instant::now() + CLIENT_CLOSE_LINGER);
                }
            }
        }
        self.finish(reason);
    }

    /// The last step of every close: the sid is forgotten (after the linger, if any), the
    /// layer above sees the end.
    fn finish(&self, reason: CloseReason) {
        lock(&self.incoming).take();
        lock(&self.upgrade_to).take();
        if self.state().linger_until.is_none() {
            self.unregister();
        }
        self.sender.close(reason);
        self.notify();
    }

    fn unregister(&self) {
        if let Some(registry) = self.registry.upgrade() {
            lock(&registry).remove(&self.sid);
        }
    }

    /// Ends a client-close linger: the overtaken poll came, or the time is up.
    fn end_linger(&self) {
        let lingering = self.state().linger_until.take().is_some();
        if lingering {
            self.unregister();
        }
    }

    /// The drain after a close by the layer above is over: the `close` went out.
    fn finish_drain(&self) {
        let reason = {
            let mut st = self.state();
            let Phase::Draining(reason) = st.phase.clone() else {
                return;
            };
            st.phase = Phase::Closed(reason.clone());
            reason
        };
        self.finish(reason);
    }

    /// Resolves once the session is closed for good.
    pub(super) async fn wait_closed(&self) {
        self.wait_until(|st| matches!(st.phase, Phase::Closed(_)))
            .await;
    }

    /// Resolves once the session is no longer open (draining or closed).
    pub(super) async fn wait_not_open(&self) {
        self.wait_until(|st| st.phase != Phase::Open).await;
    }

    async fn wait_until(&self, done: impl Fn(&State) -> bool) {
        let mut seen = self.changes_now();
        loop {
            if done(&self.state()) {
                return;
            }
            self.changed(&mut seen).await;
        }
    }

    pub(super) fn claim_get(&self) -> Claim {
        let mut st = self.state();
        if matches!(st.phase, Phase::Closed(_)) && st.linger_until.is_none() {
            Claim::Gone
        } else if st.get_in_flight {
            Claim::Overlap
        } else {
            st.get_in_flight = true;
            Claim::Claimed
        }
    }

    pub(super) fn release_get(&self) {
        self.state().get_in_flight = false;
    }

    pub(super) fn claim_post(&self) -> Claim {
        let mut st = self.state();
        if matches!(st.phase, Phase::Closed(_)) {
            Claim::Gone
        } else if st.post_in_flight {
            Claim::Overlap
        } else {
            st.post_in_flight = true;
            Claim::Claimed
        }
    }

    pub(super) fn release_post(&self) {
        self.state().post_in_flight = false;
    }

    /// A message a poll received from the queue while waiting; it goes out with the answer.
    pub(super) fn push_message(&self, frame: Frame) {
        self.state().outbox.push_back(frame_packet(frame));
    }

    /// While an upgrade is under way, the next tick at which a waiting poll gets `noop`.
    pub(super) fn next_noop_tick(&self, interval: Duration) -> Option<Instant> {
        let since = self.state().upgrading_since?;
        let now = Instant::now();
        let ticks = now.saturating_duration_since(since).as_nanos() / interval.as_nanos().max(1);
        let ticks = u32::try_from(ticks.saturating_add(1)).unwrap_or(u32::MAX);
        Some(since + interval.saturating_mul(ticks))
    }

    /// Builds a poll's answer from what is queued, or `None` when there is nothing to say yet.
    ///
    /// Called from the poll's own future, which returns the response in the same step: the
    /// packets leave the session only when the response is handed to the gateway.
    pub(super) fn take_for_poll(&self, rx: &mut OutQueue, noop_due: bool) -> Option<PollAnswer> {
        let max = self.config.max_payload;
        let mut st = self.state();
        match st.phase.clone() {
            Phase::Closed(_) if st.outbox.is_empty() => return Some(PollAnswer::Gone),
            Phase::Closed(_) => {}
            _ if st.transport != Transport::Polling => return Some(PollAnswer::Upgraded),
            Phase::Open => {
                pull(&mut st.outbox, rx, max);
                if st.outbox.is_empty() {
                    if noop_due && st.upgrade == Upgrade::Upgrading {
                        st.outbox.push_back(Packet::Noop);
                    } else {
                        return None;
                    }
                }
            }
            Phase::Draining(_) => {
                // The close goes last, in a poll of its own once everything queued before it
                // is out (node waits for its write buffer's `drain`, then sends `close` on the
                // next poll). Never in the same payload: socket.io-client handles a decoded
                // packet on the next tick but a `close` at once, so a `DISCONNECT` sharing a
                // payload with the `close` would be overtaken by it ("transport close" instead
                // of "io server disconnect").
                if pull(&mut st.outbox, rx, max) && st.outbox.is_empty() {
                    st.outbox.push_back(Packet::Close);
                }
            }
        }
        let (body, n) = encode_payload_capped(st.outbox.make_contiguous(), max);
        let mut sent_close = false;
        for packet in st.outbox.drain(..n).collect::<Vec<_>>() {
            match packet {
                Packet::Ping(_) => st.heartbeat.ping_delivered = true,
                Packet::Close => sent_close = true,
                _ => {}
            }
        }
        let drained = sent_close && matches!(st.phase, Phase::Draining(_));
        let lingered = st.linger_until.is_some();
        drop(st);
        if drained {
            self.finish_drain();
        }
        if lingered {
            self.end_linger();
        }
        Some(PollAnswer::Payload(body))
    }

    /// What a WebSocket writer sends next: queued control packets first, and everything left
    /// in the queue when the layer above closed.
    pub(super) fn take_for_ws(&self, rx: &mut OutQueue) -> WsBatch {
        let mut st = self.state();
        // The outbox's buffer goes with its packets: control packets are rare on a WebSocket
        // (a ping every interval), and a buffer kept stayed allocated on every idle connection.
        let mut packets: Vec<Packet> = std::mem::take(&mut st.outbox).into();
        if packets.iter().any(|p| matches!(p, Packet::Ping(_))) {
            st.heartbeat.ping_delivered = true;
        }
        let (close, drained) = match &st.phase {
            Phase::Open => (None, false),
            Phase::Draining(_) => {
                while let Ok(frame) = rx.try_recv() {
                    packets.push(frame_packet(frame));
                }
                (Some(CloseCode::Normal), true)
            }
            Phase::Closed(reason) => {
                packets.clear();
                (
                    Some(st.ws_close_code.unwrap_or(ws_close_code(reason))),
                    false,
                )
            }
        };
        WsBatch {
            packets,
            close,
            drained,
        }
    }

    /// The close frame of a drain was written.
    pub(super) fn ws_drained(&self) {
        self.finish_drain();
    }

    /// Books a packet from the client and says what to do with it.
    pub(super) fn on_packet(&self, packet: Packet) -> Inbound {
        {
            let mut st = self.state();
            match st.phase {
                Phase::Open => st.heartbeat.last_packet = Instant::now(),
                // Only the client's own close still matters while draining.
                Phase::Draining(_) if packet == Packet::Close => {
                    drop(st);
                    self.finish_drain();
                    return Inbound::Stop;
                }
                Phase::Draining(_) => return Inbound::Ignore,
                Phase::Closed(_) => return Inbound::Stop,
            }
        }
        match packet {
            Packet::Message(text) => Inbound::Deliver(Frame::Text(text)),
            Packet::MessageBinary(bytes) => Inbound::Deliver(Frame::Binary(bytes)),
            Packet::Pong(_) => {
                self.state().heartbeat.pong_due = None;
                self.pong.notify_one();
                Inbound::Ignore
            }
            Packet::Close => {
                self.close(CloseReason::ClientClose);
                Inbound::Stop
            }
            // In v4 only the server pings (a probe is only valid on a probe WebSocket).
            Packet::Ping(_) => {
                self.close_with_code(
                    CloseReason::TransportError("invalid heartbeat direction".into()),
                    Some(CloseCode::Protocol),
                );
                Inbound::Stop
            }
            // node ignores these on an established transport.
            Packet::Open(_) | Packet::Upgrade | Packet::Noop => Inbound::Ignore,
        }
    }

    /// Hands a message to the layer above, waiting for room in its queue (that wait is the
    /// back-pressure on the client). `false` when the session closed meanwhile.
    pub(super) async fn deliver(&self, frame: Frame) -> bool {
        let Some(tx) = lock(&self.incoming).clone() else {
            return false;
        };
        // The wait for room is boxed: the session's task holds its largest state for life, and
        // only a client that outruns the layer above waits here.
        let frame = match tx.try_send(frame) {
            Ok(()) => return true,
            Err((SendError::Closed, _)) => return false,
            Err((SendError::Full, frame)) => frame,
        };
        Box::pin(async move {
            tokio::select! {
                sent = tx.send(frame) => sent.is_ok(),
                () = self.wait_not_open() => false,
            }
        })
        .await
    }

    /// A probe WebSocket arrived; `false` if this session cannot upgrade now.
    pub(super) fn begin_probe(&self) -> bool {
        let mut st = self.state();
        if st.phase != Phase::Open
            || st.transport != Transport::Polling
            || st.upgrade != Upgrade::None
        {
            return false;
        }
        st.upgrade = Upgrade::Probing;
        true
    }

    /// `3probe` was sent: polls are now ended with `noop` so the client can pause polling.
    pub(super) fn probe_answered(&self) {
        {
            let mut st = self.state();
            if st.upgrade != Upgrade::Probing && st.upgrade != Upgrade::Upgrading {
                return;
            }
            st.upgrade = Upgrade::Upgrading;
            st.upgrading_since.get_or_insert_with(Instant::now);
        }
        self.notify();
    }

    /// `5` arrived on the probe: from now on the WebSocket carries the session.
    pub(super) fn complete_upgrade(&self) -> bool {
        {
            let mut st = self.state();
            if st.phase != Phase::Open
                || !matches!(st.upgrade, Upgrade::Probing | Upgrade::Upgrading)
            {
                return false;
            }
            st.transport = Transport::WebSocket;
            st.upgrade = Upgrade::Done;
            st.upgrading_since = None;
            // A noop meant for a poll has no business on the WebSocket.
            st.outbox.retain(|p| *p != Packet::Noop);
        }
        self.notify();
        true
    }

    /// Where a polling session that may upgrade receives its WebSocket
    /// ([`Session::hand_over`]); `None` for a session that cannot upgrade. Made before the
    /// handshake is answered, so that no upgrade can come before it.
    pub(super) fn upgrade_point(&self) -> Option<oneshot::Receiver<Ws>> {
        let polling = self.state().transport == Transport::Polling;
        (polling && self.config.allow_upgrades).then(|| {
            let (tx, rx) = oneshot::channel();
            *lock(&self.upgrade_to) = Some(tx);
            rx
        })
    }

    /// Hands the WebSocket of a completed upgrade to the session's task, which carries the
    /// session on it from now on; gives it back if the session is gone.
    pub(super) fn hand_over(&self, ws: Ws) -> Option<Ws> {
        match lock(&self.upgrade_to).take() {
            Some(tx) => tx.send(ws).err(),
            None => Some(ws),
        }
    }

    /// The probe WebSocket went away without completing the upgrade.
    pub(super) fn abort_probe(&self) {
        {
            let mut st = self.state();
            if !matches!(st.upgrade, Upgrade::Probing | Upgrade::Upgrading) {
                return;
            }
            st.upgrade = Upgrade::None;
            st.upgrading_since = None;
            st.outbox.retain(|p| *p != Packet::Noop);
        }
        self.notify();
    }

    /// The heartbeat, in the session's task: pings every `pingInterval`, closes when no pong
    /// comes within `pingTimeout`, and runs the orderly close when the layer above closes.
    /// Ends when the session is closed (and forgotten), so it never outlives it.
    pub(super) async fn drive(&self) {
        let interval = self.config.ping_interval;
        let timeout = self.config.ping_timeout;
        let mut next_ping = self.opened + interval;
        loop {
            tokio::select! {
                biased;
                reason = self.sender.closed() => return Box::pin(self.on_closed(reason)).await,
                // A pong nobody asked for still restarts the interval, as node's `refresh()`.
                () = self.pong.notified() => {
                    next_ping = Instant::now() + interval;
                    continue;
                }
                () = sleep_until(next_ping) => {}
            }
            // The layer above dropped its `Conn` without closing it: nobody will ever read
            // this session again, so it is closed as if the layer above had closed it.
            let abandoned = lock(&self.incoming)
                .as_ref()
                .is_some_and(|tx| tx.is_closed());
            if abandoned {
                self.sender.close(CloseReason::ServerClose);
                continue;
            }
            let open = {
                let mut st = self.state();
                if st.phase == Phase::Open {
                    st.outbox.push_back(Packet::Ping(None));
                    st.heartbeat.ping_delivered = false;
                    st.heartbeat.pong_due = Some(next_ping + timeout);
                }
                st.phase == Phase::Open
            };
            if !open {
                // Closing: the close signal follows the phase change at once.
                let reason = self.sender.closed().await;
                return Box::pin(self.on_closed(reason)).await;
            }
            self.sender.release_idle();
            self.notify();
            loop {
                let deadline = self.state().heartbeat.deadline(timeout);
                let Some(deadline) = deadline else {
                    // The pong came before we got here.
                    next_ping = Instant::now() + interval;
                    break;
                };
                tokio::select! {
                    biased;
                    reason = self.sender.closed() => return Box::pin(self.on_closed(reason)).await,
                    () = self.pong.notified() => {
                        next_ping = Instant::now() + interval;
                        break;
                    }
                    // Pushed back if other packets came meanwhile; closes otherwise.
                    () = sleep_until(deadline) => {
                        self.expire_if_due();
                    }
                }
            }
        }
    }

    /// The connection was closed: by the engine (nothing left to do but end a linger) or by
    /// the layer above (deliver what it queued before, then `close`, within
    /// [`DRAIN_TIMEOUT`]; at once for a slow consumer, whose queue is the problem, and for a
    /// shutdown).
    async fn on_closed(&self, reason: CloseReason) {
        if matches!(
            reason,
            CloseReason::SlowConsumer | CloseReason::ServerShutdown
        ) {
            self.close(reason.clone());
        }
        let linger = {
            let mut st = self.state();
            match st.phase {
                Phase::Open => {
                    st.phase = Phase::Draining(reason.clone());
                    // What the client sends from now on is dropped, as node does once `closing`.
                    lock(&self.incoming).take();
                    // A WebSocket is told to close once the drain is written: drop queued pings.
                    st.outbox
                        .retain(|p| matches!(p, Packet::Message(_) | Packet::MessageBinary(_)));
                    None
                }
                _ => match st.linger_until {
                    Some(until) => Some(until),
                    None => return,
                },
            }
        };
        if let Some(until) = linger {
            sleep_until(until).await;
            return self.end_linger();
        }
        self.notify();
        let wait = self.wait_closed();
        if tokio::time::timeout(DRAIN_TIMEOUT, wait).await.is_err() {
            self.close(reason);
        }
    }
}

/// Moves messages from the queue to `outbox` until about `max` bytes are waiting (a poll
/// answer is capped there anyway). True when the queue is empty.
fn pull(outbox: &mut VecDeque<Packet>, rx: &mut OutQueue, max: usize) -> bool {
    let mut size: usize = outbox.iter().map(|p| p.encoded_len() + 1).sum();
    while size <= max {
        match rx.try_recv() {
            Ok(frame) => {
                let packet = frame_packet(frame);
                size += packet.encoded_len() + 1;
                outbox.push_back(packet);
            }
            Err(_) => return true,
        }
    }
    rx.is_empty()
}

pub(super) fn frame_packet(frame: Frame) -> Packet {
    match frame {
        Frame::Text(text) => Packet::Message(text),
        Frame::Binary(bytes) => Packet::MessageBinary(bytes),
    }
}

/// The close code a WebSocket gets for a reason when nobody chose one.
fn ws_close_code(reason: &CloseReason) -> CloseCode {
    match reason {
        CloseReason::ServerShutdown => CloseCode::Away,
        CloseReason::ParseError(_) => CloseCode::Protocol,
        // 1013 "try again later", as the gateway's other WebSockets close slow readers.
        CloseReason::SlowConsumer => CloseCode::Again,
        _ => CloseCode::Normal,
    }
}
