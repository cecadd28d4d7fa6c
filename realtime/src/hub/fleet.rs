//! A hub as one node of a fleet: the seam to the fleet ([`Fleet`], which the Redis backplane
//! implements in [`crate::cluster`]), what the fleet hands the hub ([`FleetDelivery`]),
//! publishing through it ([`Hub::send`] and its siblings, answering a [`Publishing`]), and
//! joins that may need the fleet's history ([`Subscriber::join_async`]).
//!
//! # Positions
//!
//! In a fleet a topic's (epoch, seq) is the fleet's: Redis numbers every publish of every
//! node, and each node's hub records the topic's messages at those positions, in order, from
//! [`Hub::fleet_deliver`] (its own publishes from Redis's reply, the others' from the pub/sub
//! echo). The local hub keeps its role: the history that serves most resumes, and the fan-out
//! to the node's subscribers.
//!
//! A topic made on a node before the node knows the fleet's position of it (a Socket.IO room
//! joined in a synchronous handler, or any topic while Redis is unreachable) stands at a
//! stand-in position (0 of a random epoch) until the fleet's first delivery places it. If that
//! delivery says nothing can have been missed, a client holding the stand-in resumes from the
//! place it turned out to be; otherwise the topic's subscribers get a live reset.
//!
//! # Locks
//!
//! The fleet calls [`Hub::fleet_deliver`] and the `create` callback of [`Fleet::follow`] under
//! its delivery lock, which comes before every lock of the hub: the hub never calls the fleet
//! while it holds a lock of its own.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, OnceLock, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures_util::future::{BoxFuture, FutureExt};

use super::idempotency::Outcome;
use super::message::{Message, MessageId, Payload, SubscriberId};
use super::position::Position;
use super::subscriber::{JoinOutcome, Subscriber};
use super::topic::{Origin, TopicState};
use super::{FanOut, Hub, HubError, Inner, Published};
use crate::sync::lock;

/// How long a join waits for this node to deliver up to the position a client resumes from
/// (the client read it on a node that is ahead: its own publish, answered before the echo
/// reached this one). Past it, the join answers with what the node has, a reset.
const CATCH_UP: Duration = Duration::from_secs(2);
/// How often a waiting join looks again.
const CATCH_UP_POLL: Duration = Duration::from_millis(5);

/// The fleet a hub is a node of. All its methods return at once; the I/O is in the futures.
pub trait Fleet: Send + Sync + 'static {
    /// Sends one publish to the fleet now: a node's publishes are numbered in the order of
    /// these calls. Fails at once, sending nothing, when the fleet cannot be reached. The
    /// returned future resolves to the position; dropping it does not cancel the publish.
    fn publish(
        &self,
        topic: &str,
        id: MessageId,
        payload: Arc<Payload>,
        origin: Option<SubscriberId>,
    ) -> Result<BoxFuture<'static, Result<Position, HubError>>, HubError>;

    /// Follows `topic` (its messages are delivered to the hub from now on) and calls `create`,
    /// under the delivery lock, with where delivery stands (`None`: not known yet).
    fn follow(&self, topic: &str, create: &mut dyn FnMut(Option<Position>));

    /// Stops following `topic` if `gone()` (asked under the delivery lock) says so.
    fn unfollow(&self, topic: &str, gone: &dyn Fn() -> bool);

    /// When the followed `topic`'s position is not known yet, what reads it (the hub is told
    /// through [`FleetDelivery::Start`]); `None` when it is known.
    fn locate(&self, topic: &str) -> Option<BoxFuture<'static, Result<(), HubError>>>;

    /// The fleet's messages of `topic` after `since`, from its history.
    fn resume(
        &self,
        topic: &str,
        since: Position,
    ) -> BoxFuture<'static, Result<FleetResume, HubError>>;
}

/// One message as the fleet delivers it.
#[derive(Clone, Debug)]
pub struct FleetMessage {
    /// Its fleet position.
    pub position: Position,
    /// The broadcast's id.
    pub id: MessageId,
    /// The content.
    pub payload: Arc<Payload>,
    /// The local subscriber that sent it (only for this node's own publishes).
    pub origin: Option<SubscriberId>,
    /// Whether another node published it.
    pub remote: bool,
}

/// What the fleet hands the hub for one topic, in order.
#[derive(Clone, Debug)]
pub enum FleetDelivery {
    /// The first delivery for the topic: what follows comes after `at`. `clean`: nothing
    /// published since the topic was followed can have been missed.
    Start {
        /// Where delivery starts from.
        at: Position,
        /// Whether nothing can have been missed.
        clean: bool,
    },
    /// The topic's next message.
    Message(FleetMessage),
    /// What came after the last delivery up to `to` is lost to this node.
    Reset {
        /// Where delivery continues from.
        to: Position,
    },
}

/// What the fleet's history holds for a resuming client.
#[derive(Clone, Debug)]
pub enum FleetResume {
    /// Every message after the position asked for, oldest first, up to `head`.
    Replay {
        /// The messages.
        messages: Vec<FleetMessage>,
        /// The topic's position when read.
        head: Position,
    },
    /// The position cannot be served.
    Reset {
        /// The topic's position when read.
        current: Position,
    },
}

/// A handle on a hub that does not keep it alive (the fleet's, to deliver to).
#[derive(Clone)]
pub struct WeakHub(pub(super) Weak<Inner>);

impl WeakHub {
    /// The hub, while it exists.
    pub fn upgrade(&self) -> Option<Hub> {
        self.0.upgrade().map(|inner| Hub { inner })
    }
}

impl std::fmt::Debug for WeakHub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WeakHub")
    }
}

/// A publish under way: already sent (on a single node, already done) when the call that
/// returned it returned, so dropping it cancels nothing. Await it for the outcome.
pub struct Publishing<T> {
    state: State<T>,
}

enum State<T> {
    Done(Option<Result<T, HubError>>),
    Sent(BoxFuture<'static, Result<T, HubError>>),
}

impl<T> Publishing<T> {
    pub(crate) fn done(result: Result<T, HubError>) -> Self {
        Publishing {
            state: State::Done(Some(result)),
        }
    }

    pub(crate) fn sent(f: impl Future<Output = Result<T, HubError>> + Send + 'static) -> Self {
        Publishing {
            state: State::Sent(f.boxed()),
        }
    }

    /// Whether it failed without being sent (refused at once: a bad topic, the fleet
    /// unreachable). A caller sending several messages stops there, as a single node's
    /// synchronous publishes would.
    pub fn failed_at_once(&self) -> bool {
        matches!(self.state, State::Done(Some(Err(_))))
    }
}

// `T` is only ever moved out of an `Option`, never pinned.
impl<T> Unpin for Publishing<T> {}

impl<T> Future for Publishing<T> {
    type Output = Result<T, HubError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match &mut self.get_mut().state {
            State::Done(result) => Poll::Ready(result.take().unwrap_or(Err(HubError::ShutDown))),
            State::Sent(f) => f.as_mut().poll(cx),
        }
    }
}

impl<T> std::fmt::Debug for Publishing<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self.state {
            State::Done(_) => "Publishing(done)",
            State::Sent(_) => "Publishing(sent)",
        })
    }
}

impl Hub {
    /// Publishes `payload` to `topic`, on a single node as [`Hub::publish_payload`] does (done
    /// when this returns), in a fleet through it: sent when this returns (a node's publishes
    /// keep the order of these calls), done when Redis has answered with the fleet position.
    /// While the fleet is unreachable it fails at once with [`HubError::FleetUnavailable`]:
    /// nothing is accepted that would not reach the other nodes.
    pub fn send(
        &self,
        topic: &str,
        payload: Payload,
        origin: Option<SubscriberId>,
    ) -> Publishing<Position> {
        let Some(fleet) = &self.inner.fleet else {
            return Publishing::done(self.publish_payload(topic, payload, origin));
        };
        if let Err(e) = self.inner.check_open() {
            return Publishing::done(Err(e));
        }
        match fleet.publish(topic, MessageId::generate(), Arc::new(payload), origin) {
            Ok(sent) => Publishing::sent(sent),
            Err(e) => Publishing::done(Err(e)),
        }
    }

    /// [`Hub::publish_many`] through the fleet when there is one (see [`Hub::send`]).
    pub fn send_many<I, S>(
        &self,
        topics: I,
        payload: Payload,
        origin: Option<SubscriberId>,
    ) -> Publishing<Vec<Position>>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let Some(fleet) = &self.inner.fleet else {
            return Publishing::done(self.publish_many(topics, payload, origin));
        };
        if let Err(e) = self.inner.check_open() {
            return Publishing::done(Err(e));
        }
        let payload = Arc::new(payload);
        let id = MessageId::generate();
        let mut index: HashMap<String, usize> = HashMap::new();
        let mut sent = Vec::new();
        let mut order = Vec::new();
        for topic in topics {
            let topic = topic.as_ref();
            let i = match index.get(topic) {
                Some(i) => *i,
                None => match fleet.publish(topic, id, Arc::clone(&payload), origin) {
                    Ok(f) => {
                        sent.push(f);
                        index.insert(topic.to_string(), sent.len() - 1);
                        sent.len() - 1
                    }
                    Err(e) => return Publishing::done(Err(e)),
                },
            };
            order.push(i);
        }
        Publishing::sent(async move {
            let positions = futures_util::future::try_join_all(sent).await?;
            Ok(order
                .into_iter()
                .filter_map(|i| positions.get(i).copied())
                .collect())
        })
    }

    /// [`Hub::publish_idempotent`] through the fleet when there is one (see [`Hub::send`]).
    /// The memory of keys is this node's: a retry that reaches another node publishes again.
    pub fn send_idempotent(
        &self,
        key: &str,
        topic: &str,
        payload: Payload,
        origin: Option<SubscriberId>,
    ) -> Publishing<Published> {
        let Some(fleet) = &self.inner.fleet else {
            return Publishing::done(self.publish_idempotent(key, topic, payload, origin));
        };
        if let Err(e) = self.inner.check_open() {
            return Publishing::done(Err(e));
        }
        let remembered = self.remember(key, topic, || {
            let sent = fleet.publish(topic, MessageId::generate(), Arc::new(payload), origin)?;
            Ok(Outcome::Sent(sent.shared()))
        });
        match remembered {
            Err(e) => Publishing::done(Err(e)),
            Ok((Outcome::Done(position), duplicate)) => Publishing::done(Ok(Published {
                position,
                duplicate,
            })),
            Ok((Outcome::Sent(sent), duplicate)) => Publishing::sent(async move {
                sent.await.map(|position| Published {
                    position,
                    duplicate,
                })
            }),
        }
    }

    /// In a fleet, makes sure this node knows where the existing `topic` stands in the fleet
    /// (one read in Redis the first time; nothing once known, nor on a single node). A topic
    /// joined before that stood at a stand-in position ([`Hub::placed`] says where it was
    /// placed).
    pub async fn locate(&self, topic: &str) -> Result<(), HubError> {
        let Some(fleet) = &self.inner.fleet else {
            return Ok(());
        };
        if self.inner.lookup(topic).is_none() {
            return Ok(());
        }
        match fleet.locate(topic) {
            Some(locating) => locating.await,
            None => Ok(()),
        }
    }

    /// `position` in `topic` as the fleet knows it: the stand-in position a subscriber was
    /// given before the fleet placed the topic reads as the position it was placed at; any
    /// other position is itself.
    pub fn placed(&self, topic: &str, position: Position) -> Position {
        match self.inner.lookup(topic) {
            Some(t) => lock(&t.state).placed(position),
            None => position,
        }
    }

    /// A handle the fleet keeps to deliver to, without keeping the hub alive.
    pub fn downgrade(&self) -> WeakHub {
        WeakHub(Arc::downgrade(&self.inner))
    }

    /// The fleet's delivery for `topic` (the fleet calls this, in order per topic, under its
    /// delivery lock). Messages are recorded and fanned out like local publishes; a topic this
    /// node does not have is skipped (it is not followed for long).
    pub fn fleet_deliver(&self, topic: &str, delivery: FleetDelivery) {
        let inner = &*self.inner;
        if inner.fleet.is_none() {
            return;
        }
        let Some(t) = inner.lookup(topic) else {
            return;
        };
        let mut st = lock(&t.state);
        if st.dead {
            return;
        }
        let mut out = FanOut::default();
        match delivery {
            FleetDelivery::Start { at, clean } => {
                if st.origin == Origin::Unplaced {
                    let stand_in = st.position();
                    if clean {
                        st.jump(at);
                        st.alias = Some((stand_in, at));
                    } else {
                        inner.live_reset(&t.name, &mut st, at, &mut out);
                    }
                    st.origin = Origin::Fleet;
                } else if st.position() != at {
                    inner.live_reset(&t.name, &mut st, at, &mut out);
                }
            }
            FleetDelivery::Reset { to } => {
                inner.live_reset(&t.name, &mut st, to, &mut out);
                st.origin = Origin::Fleet;
            }
            FleetDelivery::Message(m) => {
                if st.origin == Origin::Unplaced {
                    // A message with no start before it: nothing says what came before it.
                    inner.live_reset(&t.name, &mut st, before(m.position), &mut out);
                    st.origin = Origin::Fleet;
                }
                match place(st.position(), m.position) {
                    Place::Skip => {}
                    Place::Next => inner.append_fleet(&t.name, &mut st, m, &mut out),
                    Place::After(to) => {
                        inner.live_reset(&t.name, &mut st, to, &mut out);
                        inner.append_fleet(&t.name, &mut st, m, &mut out);
                    }
                }
            }
        }
        drop(st);
        inner.finish(&t.name, out);
    }
}

/// The position just before `p`.
fn before(p: Position) -> Position {
    Position::new(p.epoch, p.seq.saturating_sub(1))
}

fn message(topic: &Arc<str>, m: FleetMessage) -> Arc<Message> {
    Arc::new(Message {
        id: m.id,
        topic: Arc::clone(topic),
        epoch: m.position.epoch,
        seq: m.position.seq,
        size: m.payload.approx_size(),
        payload: m.payload,
        origin: m.origin,
        remote: m.remote,
        one_topic: false,
        reset_from: None,
        encoded: OnceLock::new(),
    })
}

/// Where a fleet message goes in a topic that stands at `current`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Place {
    /// Already there (a position at or before the topic's), or of an older epoch.
    Skip,
    /// The next one.
    Next,
    /// Past a gap, or in a later epoch: a reset to this position, then the message.
    After(Position),
}

fn place(current: Position, p: Position) -> Place {
    if p.epoch == current.epoch {
        if p.seq <= current.seq {
            Place::Skip
        } else if p.seq == current.seq + 1 {
            Place::Next
        } else {
            Place::After(before(p))
        }
    } else if p.epoch.raw() < current.epoch.raw() {
        // Fleet epochs grow with Redis's clock: this incarnation is over.
        Place::Skip
    } else {
        Place::After(before(p))
    }
}

impl Inner {
    /// Appends the fleet's next message: the topic moves to its position.
    fn append_fleet(
        &self,
        name: &Arc<str>,
        st: &mut TopicState,
        m: FleetMessage,
        out: &mut FanOut,
    ) {
        st.epoch = m.position.epoch;
        st.seq = m.position.seq;
        self.append(st, message(name, m), out);
    }

    /// Moves the topic to `to`, and tells its subscribers that what came between is lost.
    fn live_reset(&self, name: &Arc<str>, st: &mut TopicState, to: Position, out: &mut FanOut) {
        let from = st.position();
        st.jump(to);
        st.last_activity = Instant::now();
        self.stats
            .live_resets
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let notice = Arc::new(Message {
            id: MessageId::generate(),
            topic: Arc::clone(name),
            epoch: to.epoch,
            seq: to.seq,
            payload: Arc::new(Payload::default()),
            origin: None,
            remote: true,
            one_topic: false,
            reset_from: Some(from),
            size: 0,
            encoded: OnceLock::new(),
        });
        Self::fan_out(st, &notice, out);
    }

    /// Waits (a little) until this node has delivered up to `since`, when the topic stands
    /// behind it in the same epoch.
    async fn catch_up(&self, topic: &str, since: Position) {
        let deadline = Instant::now() + CATCH_UP;
        loop {
            let behind = self.lookup(topic).is_some_and(|t| {
                let st = lock(&t.state);
                st.origin == Origin::Fleet && st.epoch == since.epoch && st.seq < since.seq
            });
            if !behind || Instant::now() >= deadline {
                return;
            }
            tokio::time::sleep(CATCH_UP_POLL).await;
        }
    }
}

/// The replay of a subscriber registered at `current` that resumes from `since`, from what the
/// fleet's history held after `since` (read after the registration): exactly the messages up to
/// `current` (what follows is in the subscriber's queue), or `None` when they cannot be told.
fn align(
    topic: &Arc<str>,
    since: Position,
    current: Position,
    head: Position,
    messages: Vec<FleetMessage>,
) -> Option<Vec<Arc<Message>>> {
    if since.epoch != current.epoch
        || head.epoch != current.epoch
        || head.seq < current.seq
        || since.seq >= current.seq
    {
        return None;
    }
    let replay: Vec<Arc<Message>> = messages
        .into_iter()
        .take_while(|m| m.position.epoch == current.epoch && m.position.seq <= current.seq)
        .map(|m| message(topic, m))
        .collect();
    let contiguous = replay
        .iter()
        .zip(since.seq + 1..)
        .all(|(m, seq)| m.seq == seq);
    let complete = replay.last().is_some_and(|m| m.seq == current.seq);
    (contiguous && complete).then_some(replay)
}

impl Subscriber {
    /// [`Subscriber::join`], and in a fleet: first makes sure this node knows where the topic
    /// stands (a read in Redis the first time, so the position the join answers is the
    /// fleet's), waits a moment for this node to reach a `since` another node has delivered
    /// already, and serves a `since` the local history cannot serve from the fleet's history.
    /// What cannot be served either way is a [`JoinOutcome::Reset`], as on a single node.
    pub async fn join_async(
        &self,
        topic: &str,
        since: Option<Position>,
    ) -> Result<JoinOutcome, HubError> {
        let Some(fleet) = self.hub.fleet.clone() else {
            return self.join(topic, since);
        };
        self.hub.check_open()?;
        self.hub.topic_or_create(topic)?;
        if let Some(locating) = fleet.locate(topic) {
            if let Err(e) = locating.await {
                tracing::info!(topic = %topic, error = %e, "cluster: topic position unknown; joining at this node's");
            }
        }
        if let Some(since) = since {
            self.hub.catch_up(topic, since).await;
        }
        let outcome = self.join(topic, since)?;
        let (JoinOutcome::Reset { current }, Some(since)) = (&outcome, since) else {
            return Ok(outcome);
        };
        let current = *current;
        let name = self
            .hub
            .lookup(topic)
            .map(|t| Arc::clone(&t.name))
            .unwrap_or_else(|| Arc::from(topic));
        let replay = match fleet.resume(topic, since).await {
            Ok(FleetResume::Replay { messages, head }) => {
                align(&name, since, current, head, messages)
            }
            Ok(FleetResume::Reset { .. }) => None,
            Err(e) => {
                tracing::info!(topic = %topic, error = %e, "cluster: history unreadable; the resume is a reset");
                None
            }
        };
        let Some(replay) = replay else {
            return Ok(outcome);
        };
        let stats = &self.hub.stats;
        stats
            .resets
            .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        stats
            .replayed
            .fetch_add(replay.len() as u64, std::sync::atomic::Ordering::Relaxed);
        Ok(JoinOutcome::Resumed {
            replay,
            position: current,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hub::Epoch;
    use serde_json::json;

    fn pos(epoch: u64, seq: u64) -> Position {
        Position::new(Epoch::from_raw(epoch), seq)
    }

    #[test]
    fn a_fleet_message_goes_next_is_skipped_or_comes_after_a_reset() {
        let at = pos(5, 10);
        assert_eq!(place(at, pos(5, 11)), Place::Next);
        assert_eq!(place(at, pos(5, 10)), Place::Skip);
        assert_eq!(place(at, pos(5, 3)), Place::Skip);
        assert_eq!(place(at, pos(5, 13)), Place::After(pos(5, 12)));
        // A later incarnation of the topic starts after a reset; an older one is over.
        assert_eq!(place(at, pos(6, 1)), Place::After(pos(6, 0)));
        assert_eq!(place(at, pos(4, 99)), Place::Skip);
    }

    fn fleet_message(p: Position) -> FleetMessage {
        FleetMessage {
            position: p,
            id: MessageId::from_raw(u128::from(p.seq)),
            payload: Arc::new(Payload::new("e", json!(p.seq))),
            origin: None,
            remote: true,
        }
    }

    #[test]
    fn a_fleet_replay_is_cut_where_the_queue_begins() {
        let topic: Arc<str> = Arc::from("t");
        let read = |from: u64, to: u64| (from..=to).map(|s| fleet_message(pos(1, s))).collect();
        // Registered at 8, resuming from 3, history read at 10: 4..=8 replayed, 9 and 10 come
        // through the queue.
        let replay = align(&topic, pos(1, 3), pos(1, 8), pos(1, 10), read(4, 10)).expect("aligned");
        let seqs: Vec<u64> = replay.iter().map(|m| m.seq).collect();
        assert_eq!(seqs, [4, 5, 6, 7, 8]);
        assert!(replay.iter().all(|m| Arc::ptr_eq(&m.topic, &topic)));
        // A read that does not reach the registration, another epoch, a hole: no replay.
        assert!(align(&topic, pos(1, 3), pos(1, 8), pos(1, 7), read(4, 7)).is_none());
        assert!(align(&topic, pos(1, 3), pos(2, 8), pos(2, 10), read(4, 10)).is_none());
        let mut holed: Vec<FleetMessage> = read(4, 10);
        holed.remove(2);
        assert!(align(&topic, pos(1, 3), pos(1, 8), pos(1, 10), holed).is_none());
        // Nothing to replay is not a resume from the fleet (the local join answered already).
        assert!(align(&topic, pos(1, 8), pos(1, 8), pos(1, 10), read(9, 10)).is_none());
    }
}
