//! What a socket has delivered, so that a multi-room broadcast arrives once
//! and a client that lost its transport can be given exactly what it missed.
//!
//! # Offsets
//!
//! With recovery on, every event a socket receives through the hub (room
//! broadcasts, app publishes, and `socket.emit`, which then goes through the
//! socket's own room) carries an offset as its last argument: the decimal
//! count of such events sent to this socket so far (`"1"`, `"2"`, …). The
//! client echoes the last one it processed when it reconnects
//! (`40{"pid":…,"offset":"17"}`).
//!
//! The offset alone names no hub position: a socket listens to several
//! topics (its own room, the namespace, each joined room), each with its own
//! sequence numbers. So each socket keeps a bounded log of the hub messages
//! it processed, in processing order, each with its topic position, its
//! [`MessageId`] and what became of it: sent as event number `c`, skipped
//! as a duplicate of event `j` (the same broadcast reached it through
//! another room first), or skipped for good (its own relay, a room it had
//! left, a reserved event name).
//!
//! On reconnect with offset `k`, an entry counts as received if it was sent
//! as event `c ≤ k`, or is a duplicate of event `j ≤ k`, or was skipped for
//! good. Everything from the first entry that is not received onward is
//! replayed: for each topic, the resume point is just before its first such
//! entry (or its last processed position when it has none), and
//! [`Subscriber::join`](crate::hub::Subscriber::join) with that position
//! returns the topic's missed messages from history, including those
//! published while the client was away. The per-topic replays are merged in
//! the order the socket originally processed them (then by [`MessageId`]
//! for messages it never saw), and go through the same filters again:
//! duplicates of received events are recognised by the dedupe window, whose
//! entries for events after `k` are forgotten first.
//!
//! Recovery is refused (the client gets a new session, as node does when its
//! packet store no longer holds the offset) when `k` was never sent, when
//! the log no longer holds an event after `k` (it holds
//! [`RecoveryOptions::tracked_events`](super::RecoveryOptions::tracked_events)
//! entries), or when a topic's history no longer reaches back to the resume
//! point (the hub answers `Reset`).
//!
//! Offsets keep growing across recoveries, so an old offset never names a
//! new event.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;

use tokio::time::Instant;

use super::fleet_recovery::{fingerprint, FleetOffset, MAX_OFFSET_TOPICS};
use crate::hub::{Epoch, Message, MessageId, Position, SubscriberId};

/// Message ids a socket remembers to deliver a broadcast it receives
/// through several rooms once. The copies of one broadcast are published
/// back to back ([`Hub::publish_many`](crate::hub::Hub::publish_many)), so
/// they reach the socket's queue within a few messages of each other; the
/// window only has to outlast the socket's queue (1024 by default).
pub const DEDUPE_WINDOW: usize = 1024;

/// Subscriber ids a session remembers as "itself" across recoveries: a
/// relay published by the previous incarnation may still sit in a replay.
/// Older incarnations' messages are all behind the resume points.
const ORIGINS_KEPT: usize = 4;

/// How the id map hashes a [`MessageId`]: one multiplication. The ids are the server's own
/// (a per-process random half and a counter, or a fleet's sequence numbers), never a client's,
/// so nobody can choose them to collide; SipHash, the map's default, took about an eighth of a
/// firehose's CPU (three hashes per delivery: the look-up, the insert, the eviction).
#[derive(Clone, Copy, Debug, Default)]
struct IdHash;

impl std::hash::BuildHasher for IdHash {
    type Hasher = IdHasher;

    fn build_hasher(&self) -> IdHasher {
        IdHasher(0)
    }
}

/// [`IdHash`]'s hasher.
#[derive(Clone, Copy, Debug)]
struct IdHasher(u64);

/// The odd constant of Fibonacci hashing (2^64 / the golden ratio).
const ID_MIX: u64 = 0x9E37_79B9_7F4A_7C15;

impl std::hash::Hasher for IdHasher {
    fn write_u128(&mut self, n: u128) {
        let folded = (n as u64) ^ ((n >> 64) as u64);
        self.0 = (self.0 ^ folded).wrapping_mul(ID_MIX);
    }

    fn write(&mut self, bytes: &[u8]) {
        // Not what a `MessageId` writes; correct for anything else all the same.
        for &b in bytes {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(ID_MIX);
        }
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

/// What became of one processed hub message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Status {
    /// Sent as event number `c` (its offset).
    Sent(u64),
    /// A second copy of the broadcast first sent as event `j`.
    Dup(u64),
    /// Never to be sent to this socket, whatever happens.
    Skipped,
}

impl Status {
    fn received_by(self, offset: u64) -> bool {
        match self {
            Status::Sent(c) | Status::Dup(c) => c <= offset,
            Status::Skipped => true,
        }
    }
}

#[derive(Debug)]
struct LogEntry {
    topic: Arc<str>,
    position: Position,
    id: MessageId,
    status: Status,
}

#[derive(Debug)]
struct DeliveryLog {
    /// Offset of the newest sent event (0 before the first).
    sent: u64,
    /// Oldest offset still servable: every entry after that event is held.
    floor: u64,
    cap: usize,
    entries: VecDeque<LogEntry>,
}

impl DeliveryLog {
    fn push(&mut self, entry: LogEntry) {
        self.entries.push_back(entry);
        while self.entries.len() > self.cap {
            if let Some(old) = self.entries.pop_front() {
                // Skips are received whatever the offset; only an evicted
                // sent event raises the floor.
                if let Status::Sent(c) = old.status {
                    self.floor = self.floor.max(c);
                }
            }
        }
    }
}

/// What to do with one hub message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Decision {
    Skip,
    /// Send it, with this offset appended when recovery is on.
    Deliver {
        offset: Option<u64>,
    },
}

/// A socket's last position in each topic it listens to, sorted by topic: a vector searched in
/// halves, where a `BTreeMap` took a node of 11 entries (about 360 bytes) for the one or two
/// topics most sockets have (their own room and their namespace's), for the socket's life.
#[derive(Debug, Clone, Default)]
struct Positions(Vec<(Arc<str>, Position)>);

impl Positions {
    fn find(&self, topic: &str) -> Result<usize, usize> {
        self.0.binary_search_by(|(t, _)| (**t).cmp(topic))
    }

    fn get(&self, topic: &str) -> Option<&Position> {
        self.find(topic).ok().map(|i| &self.0[i].1)
    }

    fn get_mut(&mut self, topic: &str) -> Option<&mut Position> {
        self.find(topic).ok().map(|i| &mut self.0[i].1)
    }

    /// Places `topic` at `position`; the position it had, if any.
    fn insert(&mut self, topic: Arc<str>, position: Position) -> Option<Position> {
        match self.find(&topic) {
            Ok(i) => Some(std::mem::replace(&mut self.0[i].1, position)),
            Err(i) => {
                self.0.insert(i, (topic, position));
                None
            }
        }
    }

    fn remove(&mut self, topic: &str) -> Option<Position> {
        let i = self.find(topic).ok()?;
        Some(self.0.remove(i).1)
    }

    fn retain(&mut self, mut keep: impl FnMut(&Arc<str>, &mut Position) -> bool) {
        self.0.retain_mut(|(t, p)| keep(t, p));
    }

    fn len(&self) -> usize {
        self.0.len()
    }

    fn iter(&self) -> impl Iterator<Item = (&Arc<str>, &Position)> {
        self.0.iter().map(|(t, p)| (t, p))
    }

    fn values(&self) -> impl Iterator<Item = &Position> {
        self.0.iter().map(|(_, p)| p)
    }
}

/// A socket's delivery bookkeeping; lives in the socket's outbox lock while
/// it is connected and in its [`Session`] while it is away.
#[derive(Debug)]
pub(crate) struct Tracker {
    /// Last processed position per joined topic: anything at or before it is
    /// stale (queued before a replay that already covered it). Sorted, as a
    /// fleet offset lists the topics ([`super::fleet_recovery`]).
    positions: Positions,
    /// The last [`DEDUPE_WINDOW`] ids delivered, with the offset each went out with (0 without
    /// recovery), oldest first.
    recent: VecDeque<(MessageId, u64)>,
    /// `recent` by id, made only once a copy of a delivered message can come again
    /// (`may_repeat`): a socket that only ever had one topic never looks an id up, and a
    /// firehose spent a fifth of its CPU hashing ids into this map (and kept a map of 2,048
    /// buckets per socket).
    recent_offsets: Option<HashMap<MessageId, u64, IdHash>>,
    /// Whether a message already delivered can come again under the same id: true once a
    /// second topic was placed (a broadcast to several rooms shares one id across their
    /// topics), or an id was reported seen on another node. A socket in one topic gets each
    /// id once from it, and a repeat within that topic is stale by its position.
    may_repeat: bool,
    /// Whether a topic was ever placed: the next new one makes `may_repeat` true.
    placed_any: bool,
    /// The socket's own subscriber ids, the newest last ([`ORIGINS_KEPT`] at most): held in
    /// place, as every delivery reads them, where a `VecDeque`'s buffer was one more cold
    /// cache line per delivery in a quiet room.
    origins: [Option<SubscriberId>; ORIGINS_KEPT],
    /// With recovery on. Boxed, as `fleet`: every socket's tracker is inline in its state,
    /// and most have neither (56 and 40 bytes inline).
    log: Option<Box<DeliveryLog>>,
    /// In a fleet, what another node needs to recover the session.
    fleet: Option<Box<FleetMark>>,
}

/// A socket's part in recovery across the fleet ([`super::fleet_recovery`]).
#[derive(Debug)]
struct FleetMark {
    /// Which life of the session this is.
    incarnation: u64,
    /// The topics or their epochs changed since the session record was last written.
    changed: bool,
    /// The fingerprint of the topics and epochs in `positions`, while they stay as they are.
    fingerprint: Option<String>,
}

/// Where to resume each topic, and the original order of what follows.
#[derive(Debug)]
pub(crate) struct ResumePlan {
    pub(crate) since: Vec<(Arc<str>, Position)>,
    order: HashMap<MessageId, usize>,
}

impl Tracker {
    /// `tracked`: the log capacity when recovery is on.
    pub(crate) fn new(tracked: Option<usize>) -> Tracker {
        Tracker {
            positions: Positions::default(),
            recent: VecDeque::new(),
            recent_offsets: None,
            may_repeat: false,
            placed_any: false,
            origins: [None; ORIGINS_KEPT],
            log: tracked.map(|cap| {
                Box::new(DeliveryLog {
                    sent: 0,
                    floor: 0,
                    cap: cap.max(1),
                    entries: VecDeque::new(),
                })
            }),
            fleet: None,
        }
    }

    /// A new life of a session in a fleet: its events carry fleet offsets and its record is
    /// written under a fresh incarnation.
    pub(crate) fn in_fleet(mut self) -> Tracker {
        self.fleet = Some(Box::new(FleetMark {
            incarnation: rand::random(),
            changed: true,
            fingerprint: None,
        }));
        self
    }

    /// The incarnation of a session in a fleet.
    pub(crate) fn incarnation(&self) -> Option<u64> {
        self.fleet.as_ref().map(|f| f.incarnation)
    }

    /// Whether the session record needs writing again (and from now on, not until the next
    /// change).
    pub(crate) fn take_changed(&mut self) -> bool {
        self.fleet
            .as_mut()
            .is_some_and(|f| std::mem::replace(&mut f.changed, false))
    }

    /// The socket's topics and the epochs its positions are in, sorted: the session record's.
    pub(crate) fn topics(&self) -> Vec<(String, Epoch)> {
        self.positions
            .iter()
            .map(|(t, p)| (t.to_string(), p.epoch))
            .collect()
    }

    /// A session resumed from another node's record: its events are numbered after `count`,
    /// the last the client had, and nothing before it can be served here.
    pub(crate) fn resumed_at(&mut self, count: u64) {
        if let Some(log) = self.log.as_mut() {
            log.sent = count;
            log.floor = count;
        }
    }

    /// Message `id` reached the client before (on another node): a copy of it from another
    /// topic is a duplicate.
    pub(crate) fn seen(&mut self, id: MessageId) {
        self.may_repeat = true;
        self.remember(id, 0);
    }

    /// The fleet offset of event `count`: where the socket stands in each topic now. `None`
    /// outside a fleet, and for a socket in more than [`MAX_OFFSET_TOPICS`] topics.
    pub(crate) fn fleet_offset(&mut self, count: u64) -> Option<FleetOffset> {
        let mark = self.fleet.as_mut()?;
        if self.positions.len() > MAX_OFFSET_TOPICS {
            return None;
        }
        let positions = &self.positions;
        let fingerprint = mark
            .fingerprint
            .get_or_insert_with(|| fingerprint(positions.iter().map(|(t, p)| (&**t, p.epoch))))
            .clone();
        Some(FleetOffset {
            count,
            fingerprint,
            seqs: self.positions.values().map(|p| p.seq).collect(),
        })
    }

    /// Replaces each position by what `placed` says it is (a stand-in by the fleet position
    /// the topic was placed at, [`crate::hub::Hub::placed`]).
    pub(crate) fn resolve(&mut self, placed: impl Fn(&str, Position) -> Position) {
        let moved: Vec<(Arc<str>, Position)> = self
            .positions
            .iter()
            .filter_map(|(t, p)| {
                let q = placed(t, *p);
                (q != *p).then(|| (Arc::clone(t), q))
            })
            .collect();
        for (topic, position) in moved {
            self.place(topic, position);
        }
    }

    /// Records where the socket stands in `topic`; a topic or an epoch the fleet offsets do
    /// not name yet changes the session record.
    fn place(&mut self, topic: Arc<str>, position: Position) {
        // A topic already placed is updated in place: inserting would clone the topic's `Arc`
        // (shared by every socket a broadcast reaches) only to drop the clone again.
        if let Some(p) = self.positions.get_mut(&topic) {
            let before = std::mem::replace(p, position);
            if before.epoch != position.epoch {
                self.fleet_changed();
            }
            return;
        }
        self.positions.insert(topic, position);
        self.may_repeat |= self.placed_any;
        self.placed_any = true;
        self.fleet_changed();
    }

    fn fleet_changed(&mut self) {
        if let Some(mark) = self.fleet.as_mut() {
            mark.changed = true;
            mark.fingerprint = None;
        }
    }

    /// Messages published by `id` are this socket's own and never come back
    /// to it (a relay's "excluding the sender").
    pub(crate) fn add_origin(&mut self, id: SubscriberId) {
        self.origins.rotate_left(1);
        self.origins[ORIGINS_KEPT - 1] = Some(id);
    }

    /// The socket's topic is now at `position` as far as it is concerned.
    pub(crate) fn set_position(&mut self, topic: Arc<str>, position: Position) {
        self.place(topic, position);
    }

    /// The socket left `topic`.
    pub(crate) fn forget(&mut self, topic: &str) {
        if self.positions.remove(topic).is_some() {
            self.fleet_changed();
        }
    }

    /// Messages of `topic` up to `to` were lost to this socket (a live reset: the fleet could
    /// not deliver them). Socket.IO has no way to tell the client, so no recovery may cross
    /// this point: a client that comes back with an offset from before it gets a new session
    /// (`recovered: false`), which is how Socket.IO says "you may have missed events".
    pub(crate) fn reset(&mut self, topic: Arc<str>, to: Position) {
        self.place(topic, to);
        if let Some(log) = self.log.as_mut() {
            log.floor = log.sent + 1;
        }
    }

    /// Decides on the next message from a joined topic (replay or live, in
    /// per-topic order). `deliverable` is false for payloads that can never
    /// be sent (a reserved event name).
    pub(crate) fn decide(&mut self, msg: &Message, deliverable: bool) -> Decision {
        match self.positions.get_mut(&msg.topic) {
            Some(p) if p.epoch == msg.epoch && msg.seq <= p.seq => return Decision::Skip,
            Some(p) if p.epoch == msg.epoch => *p = msg.position(),
            _ => self.place(Arc::clone(&msg.topic), msg.position()),
        }
        let own = msg.origin.is_some() && self.origins.contains(&msg.origin);
        let (status, decision) = if own || !deliverable {
            (Status::Skipped, Decision::Skip)
        } else if let Some(first) = self.delivered_before(msg) {
            (Status::Dup(first), Decision::Skip)
        } else {
            let offset = self.log.as_mut().map(|log| {
                log.sent += 1;
                log.sent
            });
            // A message of one topic can come again only from that topic, where it is stale
            // by its position: its id is not kept (nor looked up, above).
            if !msg.one_topic {
                self.remember(msg.id, offset.unwrap_or(0));
            }
            (
                Status::Sent(offset.unwrap_or(0)),
                Decision::Deliver { offset },
            )
        };
        if let Some(log) = self.log.as_mut() {
            log.push(LogEntry {
                topic: Arc::clone(&msg.topic),
                position: msg.position(),
                id: msg.id,
                status,
            });
        }
        decision
    }

    /// The offset `msg`'s id went out with, if it was delivered within the window and a copy
    /// of it can come again at all (`may_repeat`, and `msg` is not of one topic only).
    fn delivered_before(&mut self, msg: &Message) -> Option<u64> {
        if !self.may_repeat || msg.one_topic {
            return None;
        }
        let id = msg.id;
        let recent = &self.recent;
        self.recent_offsets
            .get_or_insert_with(|| {
                let mut map = HashMap::with_capacity_and_hasher(recent.len(), IdHash);
                map.extend(recent.iter().copied());
                map
            })
            .get(&id)
            .copied()
    }

    fn remember(&mut self, id: MessageId, offset: u64) {
        self.recent.push_back((id, offset));
        if let Some(map) = self.recent_offsets.as_mut() {
            map.insert(id, offset);
        }
        while self.recent.len() > DEDUPE_WINDOW {
            if let Some((old, _)) = self.recent.pop_front() {
                if let Some(map) = self.recent_offsets.as_mut() {
                    map.remove(&old);
                }
            }
        }
    }

    /// Prepares a resume from `offset` for a session in `topics`: returns
    /// where each topic resumes, and rewinds this tracker to that point (the
    /// log and dedupe window forget what the client did not receive). `None`
    /// if the offset cannot be served; the tracker is then unusable.
    pub(crate) fn resume(&mut self, topics: &[Arc<str>], offset: u64) -> Option<ResumePlan> {
        let log = self.log.as_mut()?;
        if offset > log.sent || offset < log.floor {
            return None;
        }
        let cut = log
            .entries
            .iter()
            .position(|e| !e.status.received_by(offset))
            .unwrap_or(log.entries.len());
        let mut first_unreceived: HashMap<&str, Position> = HashMap::new();
        let mut order = HashMap::new();
        for (i, e) in log.entries.iter().enumerate().skip(cut) {
            first_unreceived.entry(&e.topic).or_insert_with(|| {
                Position::new(e.position.epoch, e.position.seq.saturating_sub(1))
            });
            order.entry(e.id).or_insert(i);
        }
        let mut since = Vec::with_capacity(topics.len());
        for topic in topics {
            let p = match first_unreceived.get(&**topic) {
                Some(p) => *p,
                None => *self.positions.get(topic)?,
            };
            since.push((Arc::clone(topic), p));
        }
        log.entries.truncate(cut);
        let keep: HashSet<&Arc<str>> = topics.iter().collect();
        let before = self.positions.len();
        self.positions.retain(|t, _| keep.contains(t));
        if self.positions.len() != before {
            self.fleet_changed();
        }
        for (topic, p) in &since {
            self.place(Arc::clone(topic), *p);
        }
        self.recent.retain(|&(_, c)| c <= offset);
        // Made again from `recent` when next needed.
        self.recent_offsets = None;
        Some(ResumePlan { since, order })
    }
}

impl ResumePlan {
    /// A plan for per-topic replays read on another node, whose order of processing is not
    /// known here: they are merged by message id.
    pub(crate) fn without_order() -> ResumePlan {
        ResumePlan {
            since: Vec::new(),
            order: HashMap::new(),
        }
    }

    /// Merges per-topic replays (each in topic order) into one delivery
    /// order: what the socket had processed first comes first, then by
    /// message id (publish order on this node). Per-topic order is kept.
    pub(crate) fn merge(&self, replays: Vec<Vec<Arc<Message>>>) -> Vec<Arc<Message>> {
        let total = replays.iter().map(Vec::len).sum();
        let mut queues: Vec<VecDeque<Arc<Message>>> =
            replays.into_iter().map(VecDeque::from).collect();
        let key = |m: &Message| {
            (
                self.order.get(&m.id).copied().unwrap_or(usize::MAX),
                m.id.raw(),
            )
        };
        let mut out = Vec::with_capacity(total);
        loop {
            let next = queues
                .iter()
                .enumerate()
                .filter_map(|(i, q)| q.front().map(|m| (key(m), i)))
                .min();
            let Some((_, i)) = next else { break };
            if let Some(m) = queues[i].pop_front() {
                out.push(m);
            }
        }
        out
    }
}

/// A disconnected socket waiting for its client, keyed by its private id.
#[derive(Debug)]
pub(crate) struct Session {
    pub(crate) sid: Arc<str>,
    pub(crate) pid: Arc<str>,
    /// Rooms by name, the socket's own id included.
    pub(crate) rooms: Vec<String>,
    pub(crate) tracker: Tracker,
    pub(crate) since: Instant,
}

/// The sessions of one namespace, bounded in number and age.
#[derive(Debug, Default)]
pub(crate) struct Sessions {
    map: HashMap<Arc<str>, Session>,
    /// Insertion order (and so expiry order: the duration is fixed).
    order: VecDeque<(Instant, Arc<str>)>,
}

impl Sessions {
    pub(crate) fn insert(&mut self, session: Session, max: usize, ttl: std::time::Duration) {
        self.expire(session.since, ttl);
        while self.map.len() >= max.max(1) {
            let Some((_, pid)) = self.order.pop_front() else {
                break;
            };
            self.map.remove(&pid);
        }
        self.order
            .push_back((session.since, Arc::clone(&session.pid)));
        self.map.insert(Arc::clone(&session.pid), session);
    }

    /// Takes the session `pid` if it has not expired at `now`.
    pub(crate) fn take(
        &mut self,
        pid: &str,
        now: Instant,
        ttl: std::time::Duration,
    ) -> Option<Session> {
        self.expire(now, ttl);
        self.map.remove(pid)
    }

    pub(crate) fn len(&self) -> usize {
        self.map.len()
    }

    /// The incarnation of the session `pid` kept here, in a fleet.
    pub(crate) fn incarnation(&self, pid: &str) -> Option<u64> {
        self.map.get(pid)?.tracker.incarnation()
    }

    fn expire(&mut self, now: Instant, ttl: std::time::Duration) {
        while let Some((at, pid)) = self.order.front() {
            if now.saturating_duration_since(*at) < ttl {
                break;
            }
            // The map entry may be a newer session with the same pid (a
            // recovered socket dropped again): only remove what expired.
            if self.map.get(pid).is_some_and(|s| s.since == *at) {
                self.map.remove(pid);
            }
            self.order.pop_front();
        }
        // Entries whose session was taken leave stale order records; they
        // expire like the others, so the deque stays bounded by the rate of
        // disconnections times the ttl.
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hub::{Hub, HubConfig, Payload, Subscriber};
    use proptest::prelude::*;
    use serde_json::json;

    proptest! {
        /// The sorted vector of positions answers as the ordered map it replaced would, for
        /// any sequence of places, removals, lookups and retains, and lists topics in order.
        #[test]
        fn positions_behave_as_an_ordered_map(
            ops in proptest::collection::vec((0u8..4, 0u8..6, 0u64..50), 0..60)
        ) {
            let mut ours = Positions::default();
            let mut model = std::collections::BTreeMap::<Arc<str>, Position>::new();
            for (op, topic, seq) in ops {
                let topic: Arc<str> = Arc::from(format!("t{topic}"));
                let position = Position::new(Epoch::from_raw(1), seq);
                match op {
                    0 => prop_assert_eq!(
                        ours.insert(topic.clone(), position),
                        model.insert(topic, position)
                    ),
                    1 => prop_assert_eq!(ours.remove(&topic), model.remove(&topic)),
                    2 => {
                        if let (Some(p), Some(q)) = (ours.get_mut(&topic), model.get_mut(&topic)) {
                            p.seq += 1;
                            q.seq += 1;
                        }
                        prop_assert_eq!(ours.get(&topic), model.get(&topic));
                    }
                    _ => {
                        ours.retain(|_, p| p.seq % 3 != seq % 3);
                        model.retain(|_, p| p.seq % 3 != seq % 3);
                    }
                }
                prop_assert_eq!(ours.len(), model.len());
                let listed: Vec<_> = ours.iter().map(|(t, p)| (t.clone(), *p)).collect();
                let expected: Vec<_> = model.iter().map(|(t, p)| (t.clone(), *p)).collect();
                prop_assert_eq!(listed, expected);
            }
        }
    }

    /// A hub, a subscriber in topics `a` and `b`, and the tracker fed from
    /// their join positions.
    fn setup(tracked: usize) -> (Hub, Subscriber, Tracker) {
        let hub = Hub::new(HubConfig::default());
        let sub = hub.subscribe().unwrap();
        let mut t = Tracker::new(Some(tracked));
        for topic in ["a", "b"] {
            let out = sub.join(topic, None).unwrap();
            t.set_position(Arc::from(topic), out.position());
        }
        (hub, sub, t)
    }

    fn drain(sub: &Subscriber) -> Vec<Arc<Message>> {
        std::iter::from_fn(|| sub.try_recv().unwrap()).collect()
    }

    fn topics() -> Vec<Arc<str>> {
        vec![Arc::from("a"), Arc::from("b")]
    }

    #[test]
    fn dedupes_and_skips_stale() {
        let (hub, sub, mut t) = setup(16);
        hub.publish_many(["a", "b"], Payload::new("x", json!(1)), None)
            .unwrap();
        let got = drain(&sub);
        assert_eq!(got.len(), 2);
        assert_eq!(
            t.decide(&got[0], true),
            Decision::Deliver { offset: Some(1) }
        );
        assert_eq!(t.decide(&got[1], true), Decision::Skip);
        // the same message again (a replay overlapping the queue) is stale
        assert_eq!(t.decide(&got[0], true), Decision::Skip);
        hub.publish("b", "y", json!(2), None).unwrap();
        let got = drain(&sub);
        assert_eq!(
            t.decide(&got[0], true),
            Decision::Deliver { offset: Some(2) }
        );
    }

    #[test]
    fn a_socket_in_one_topic_looks_no_id_up() {
        let hub = Hub::new(HubConfig::default());
        let sub = hub.subscribe().unwrap();
        let mut t = Tracker::new(None);
        let out = sub.join("a", None).unwrap();
        t.set_position(Arc::from("a"), out.position());
        for i in 0..DEDUPE_WINDOW + 10 {
            hub.publish("a", "x", json!(i), None).unwrap();
            for m in drain(&sub) {
                assert_eq!(t.decide(&m, true), Decision::Deliver { offset: None });
            }
        }
        assert!(t.recent_offsets.is_none(), "no id map for one topic");
        assert!(t.recent.is_empty(), "no id kept of a message of one topic");
    }

    /// A broadcast delivered while the socket had one topic is still known by its id once a
    /// second topic replays it: the ids are kept even while nothing looks them up.
    #[test]
    fn a_copy_from_a_topic_joined_later_is_a_duplicate() {
        let hub = Hub::new(HubConfig::default());
        let sub = hub.subscribe().unwrap();
        let mut t = Tracker::new(Some(16));
        let out = sub.join("a", None).unwrap();
        t.set_position(Arc::from("a"), out.position());
        let other = hub.subscribe().unwrap();
        let since = other.join("b", None).unwrap().position();
        hub.publish_many(["a", "b"], Payload::new("x", json!(1)), None)
            .unwrap();
        let got = drain(&sub);
        assert_eq!(got.len(), 1, "only `a` is joined");
        assert_eq!(
            t.decide(&got[0], true),
            Decision::Deliver { offset: Some(1) }
        );
        assert!(t.recent_offsets.is_none());
        // Joining `b` from before the broadcast replays its copy.
        let out = sub.join("b", Some(since)).unwrap();
        t.set_position(Arc::from("b"), since);
        let replay = out.replay().to_vec();
        assert_eq!(replay.len(), 1);
        assert_eq!(replay[0].id, got[0].id);
        assert_eq!(t.decide(&replay[0], true), Decision::Skip);
    }

    /// Messages a fleet lost to this node cannot be told to a Socket.IO client: no recovery
    /// crosses the loss (the client gets a new session, `recovered: false`); one from an event
    /// sent after it does.
    #[test]
    fn no_recovery_crosses_a_live_reset() {
        let (hub, sub, mut t) = setup(16);
        hub.publish("a", "1", json!(null), None).unwrap(); // offset 1
        for m in drain(&sub) {
            t.decide(&m, true);
        }
        assert_eq!(t.log.as_ref().map(|l| l.sent), Some(1));
        // The fleet lost messages of `a` after 1: a live reset to 6.
        let at = hub.topic_info("a").unwrap().position;
        t.reset(Arc::from("a"), Position::new(at.epoch, 6));
        // A client that had everything sent before the loss still missed what it lost.
        assert!(t.resume(&topics(), 1).is_none());
        assert!(t.resume(&topics(), 0).is_none());
        // An event after the loss (offset 2): a client that got it resumes from there.
        hub.publish("b", "2", json!(null), None).unwrap();
        for m in drain(&sub) {
            assert_eq!(t.decide(&m, true), Decision::Deliver { offset: Some(2) });
        }
        let plan = t.resume(&topics(), 2).expect("resumable after the loss");
        let since: HashMap<_, _> = plan.since.iter().cloned().collect();
        assert_eq!(since[&Arc::<str>::from("a")], Position::new(at.epoch, 6));
    }

    #[test]
    fn own_messages_and_reserved_names_are_skipped() {
        let (hub, sub, mut t) = setup(16);
        t.add_origin(sub.id());
        hub.publish("a", "x", json!(1), Some(sub.id())).unwrap();
        hub.publish("a", "y", json!(2), None).unwrap();
        let got = drain(&sub);
        assert_eq!(t.decide(&got[0], true), Decision::Skip);
        assert_eq!(t.decide(&got[1], false), Decision::Skip);
    }

    /// A socket in two topics (its own room and its namespace, every Socket.IO socket) keeps
    /// and looks up only the ids of broadcasts to several topics: a chat room's messages,
    /// published to one topic, cost no map.
    #[test]
    fn only_a_broadcast_to_several_topics_is_kept_by_id() {
        let (hub, sub, mut t) = setup(64);
        for i in 0..10 {
            hub.publish("a", "x", json!(i), None).unwrap();
        }
        for (i, m) in drain(&sub).iter().enumerate() {
            assert_eq!(
                t.decide(m, true),
                Decision::Deliver {
                    offset: Some(i as u64 + 1)
                }
            );
        }
        assert!(t.recent.is_empty());
        assert!(t.recent_offsets.is_none());
        hub.publish_many(["a", "b"], Payload::new("y", json!(1)), None)
            .unwrap();
        let got = drain(&sub);
        assert_eq!(
            t.decide(&got[0], true),
            Decision::Deliver { offset: Some(11) }
        );
        assert_eq!(t.decide(&got[1], true), Decision::Skip, "its copy");
        assert_eq!(t.recent.len(), 1);
    }

    #[test]
    fn ids_hash_apart_in_the_map_s_bits() {
        use std::hash::BuildHasher;
        let nonce = 0x1234_5678_9abc_def0_u128 << 64;
        let hashes: HashSet<u64> = (0..100_000u128)
            .map(|n| IdHash.hash_one(MessageId::from_raw(nonce | n)))
            .collect();
        assert_eq!(hashes.len(), 100_000, "no two ids of a process collide");
        // The low bits pick the bucket and the top 7 the control byte: both vary.
        let low: HashSet<u64> = hashes.iter().take(4096).map(|h| h & 4095).collect();
        let top: HashSet<u64> = hashes.iter().take(4096).map(|h| h >> 57).collect();
        assert!(low.len() > 2500, "{} buckets of 4096", low.len());
        assert_eq!(top.len(), 128);
    }

    #[test]
    fn the_newest_origins_are_kept_and_the_oldest_forgotten() {
        let (hub, sub, mut t) = setup(16);
        let ids: Vec<SubscriberId> = (0..=ORIGINS_KEPT)
            .map(|_| hub.subscribe().unwrap().id())
            .collect();
        for id in &ids {
            t.add_origin(*id);
        }
        for id in &ids {
            hub.publish("a", "x", json!(1), Some(*id)).unwrap();
        }
        hub.publish("a", "x", json!(2), None).unwrap();
        let decided: Vec<Decision> = drain(&sub).iter().map(|m| t.decide(m, true)).collect();
        let mut want = vec![Decision::Deliver { offset: Some(1) }];
        want.extend([Decision::Skip; ORIGINS_KEPT]);
        want.push(Decision::Deliver { offset: Some(2) });
        assert_eq!(
            decided, want,
            "the first origin forgotten, the next four its own"
        );
    }

    #[test]
    fn resume_replays_what_was_not_received_in_order() {
        let (hub, sub, mut t) = setup(16);
        hub.publish("a", "1", json!(null), None).unwrap(); // offset 1
        hub.publish("b", "2", json!(null), None).unwrap(); // offset 2
        hub.publish_many(["a", "b"], Payload::new("3", json!(null)), None)
            .unwrap(); // offset 3 (+ a dup)
        hub.publish("b", "4", json!(null), None).unwrap(); // offset 4
        for m in drain(&sub) {
            t.decide(&m, true);
        }
        // the client saw up to offset 2; then more was published meanwhile
        hub.publish("a", "5", json!(null), None).unwrap();
        drop(sub);
        let plan = t.resume(&topics(), 2).unwrap();
        let since: HashMap<_, _> = plan.since.iter().cloned().collect();
        assert_eq!(since[&Arc::<str>::from("a")].seq, 1);
        assert_eq!(since[&Arc::<str>::from("b")].seq, 1);

        let sub = hub.subscribe().unwrap();
        let replays = plan
            .since
            .iter()
            .map(|(topic, p)| sub.join(topic, Some(*p)).unwrap().replay().to_vec())
            .collect();
        let delivered: Vec<(String, Decision)> = plan
            .merge(replays)
            .iter()
            .map(|m| (m.event().to_owned(), t.decide(m, true)))
            .collect();
        let sent: Vec<(String, Option<u64>)> = delivered
            .into_iter()
            .filter_map(|(e, d)| match d {
                Decision::Deliver { offset } => Some((e, offset)),
                Decision::Skip => None,
            })
            .collect();
        assert_eq!(
            sent,
            [
                ("3".to_owned(), Some(5)),
                ("4".to_owned(), Some(6)),
                ("5".to_owned(), Some(7)),
            ]
        );
    }

    #[test]
    fn a_duplicate_of_a_received_event_stays_skipped() {
        let (hub, sub, mut t) = setup(16);
        hub.publish_many(["a", "b"], Payload::new("x", json!(null)), None)
            .unwrap();
        hub.publish("b", "y", json!(null), None).unwrap();
        for m in drain(&sub) {
            t.decide(&m, true);
        }
        // offsets: x = 1 (its copy in b a dup), y = 2; the client saw x only
        let plan = t.resume(&topics(), 1).unwrap();
        let sub = hub.subscribe().unwrap();
        let replays = plan
            .since
            .iter()
            .map(|(topic, p)| sub.join(topic, Some(*p)).unwrap().replay().to_vec())
            .collect();
        let sent: Vec<String> = plan
            .merge(replays)
            .iter()
            .filter(|m| t.decide(m, true) != Decision::Skip)
            .map(|m| m.event().to_owned())
            .collect();
        assert_eq!(sent, ["y"]);
    }

    #[test]
    fn offsets_out_of_range_are_refused() {
        let (hub, sub, t) = setup(2);
        for i in 0..4 {
            hub.publish("a", "x", json!(i), None).unwrap();
        }
        let got = drain(&sub);
        let run = |offset| {
            let mut t2 = Tracker::new(Some(2));
            t2.positions = t.positions.clone();
            for m in &got {
                t2.decide(m, true);
            }
            t2.resume(&topics(), offset).is_some()
        };
        // the log holds the entries of offsets 3 and 4
        assert!(!run(1));
        assert!(run(2));
        assert!(run(4));
        assert!(!run(5));
    }

    #[test]
    fn sessions_expire_and_are_bounded() {
        let now = Instant::now();
        let ttl = std::time::Duration::from_secs(10);
        let mut s = Sessions::default();
        let session = |pid: &str, since| Session {
            sid: Arc::from("sid"),
            pid: Arc::from(pid),
            rooms: Vec::new(),
            tracker: Tracker::new(None),
            since,
        };
        s.insert(session("p1", now), 2, ttl);
        s.insert(session("p2", now), 2, ttl);
        s.insert(session("p3", now), 2, ttl);
        assert_eq!(s.len(), 2);
        assert!(s.take("p1", now, ttl).is_none());
        assert!(s.take("p2", now, ttl).is_some());
        assert!(s.take("p3", now + ttl, ttl).is_none());
    }
}
