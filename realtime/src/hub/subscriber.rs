//! Subscribers: one bounded queue per connection, attachable to many topics.

use std::collections::{HashSet, VecDeque};
use std::fmt;
use std::sync::{Arc, Mutex};

use thiserror::Error;
use tokio::sync::Notify;

use super::message::{Message, SubscriberId};
use super::position::Position;
use super::signal::Signal;
use super::{HubError, Inner};
use crate::sync::lock;

/// Why a subscriber was closed by the hub. Transports map it to their own
/// close (e.g. WebSocket 1008/1013 for `SlowConsumer`, 1001 for `Shutdown`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum CloseReason {
    /// Its queue was full when a live message arrived: it could not keep up.
    /// The client should reconnect and resume from its last position.
    SlowConsumer,
    /// [`Hub::shutdown`](super::Hub::shutdown) was called.
    Shutdown,
}

impl fmt::Display for CloseReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            CloseReason::SlowConsumer => "slow consumer",
            CloseReason::Shutdown => "shutdown",
        })
    }
}

/// A message taken by [`Subscriber::try_recv_joined`].
#[derive(Debug)]
pub struct Queued {
    pub msg: Arc<Message>,
    /// The subscriber was still in the message's topic.
    pub joined: bool,
    /// The queue was empty after it: a push from then on raises the wake-up again.
    pub last: bool,
}

/// The final thing a subscriber's receiver yields (and keeps yielding).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Error)]
#[error("subscriber closed: {reason}")]
pub struct Closed {
    /// Why.
    pub reason: CloseReason,
}

/// Result of [`Subscriber::join`]. In every case the subscriber is registered
/// and receives, through its queue, every message after
/// [`JoinOutcome::position`] — no gap, no duplicate with the replay.
#[derive(Debug)]
pub enum JoinOutcome {
    /// Joined without a resume position: live messages after `position`.
    Fresh {
        /// The topic's current position (seq of its newest message).
        position: Position,
    },
    /// Resumed: `replay` holds every message after `since`, in order (empty
    /// if `since` was current). Deliver it before anything `recv` yields.
    Resumed {
        /// The missed messages, oldest first.
        replay: Vec<Arc<Message>>,
        /// The topic's current position (the last replayed message, if any).
        position: Position,
    },
    /// `since` cannot be served (evicted, other epoch, or never reached):
    /// the client must be told that it missed an unknown number of messages
    /// and now stands at `current`.
    Reset {
        /// The topic's current position; live messages follow it.
        current: Position,
    },
}

impl JoinOutcome {
    /// The position live delivery continues from.
    pub fn position(&self) -> Position {
        match self {
            JoinOutcome::Fresh { position } | JoinOutcome::Resumed { position, .. } => *position,
            JoinOutcome::Reset { current } => *current,
        }
    }

    /// The replay (empty unless `Resumed`).
    pub fn replay(&self) -> &[Arc<Message>] {
        match self {
            JoinOutcome::Resumed { replay, .. } => replay,
            _ => &[],
        }
    }

    /// Whether the client must be told to reset.
    pub fn is_reset(&self) -> bool {
        matches!(self, JoinOutcome::Reset { .. })
    }
}

pub(super) enum Life {
    Open,
    Closed(CloseReason),
    /// The handle is gone; nobody can observe this state.
    Dropped,
}

pub(super) struct SubState {
    queue: VecDeque<Arc<Message>>,
    pub(super) life: Life,
    /// Topics this subscriber is registered in; the source of truth for
    /// detaching, mutated only under (topic lock →) this lock.
    pub(super) topics: HashSet<Arc<str>>,
}

/// The part of a subscriber that topics hold (one `Arc` per topic joined).
pub(super) struct SubShared {
    pub(super) id: SubscriberId,
    capacity: usize,
    pub(super) state: Mutex<SubState>,
    /// Woken when the queue becomes non-empty or the subscriber closes.
    wakes: Wakes,
}

/// Whom a subscriber wakes.
pub(super) enum Wakes {
    /// Its own `Notify`, which [`Subscriber::recv`] waits on.
    Own(Notify),
    /// The signal shared by the subscribers of one connection
    /// ([`super::Hub::subscribe_waking`]), so that a push to any of them wakes the one task
    /// that reads them all, once.
    Shared(Arc<Signal>),
}

pub(super) enum Push {
    Delivered,
    /// Queue was full: the subscriber is now closed as a slow consumer and
    /// these are the topics it must still be detached from.
    Full(HashSet<Arc<str>>),
    /// Already closed or dropped: just forget it.
    Gone,
}

impl SubShared {
    pub(super) fn new(capacity: usize, wakes: Wakes) -> Self {
        SubShared {
            id: SubscriberId::next(),
            capacity: capacity.max(1),
            state: Mutex::new(SubState {
                queue: VecDeque::new(),
                life: Life::Open,
                topics: HashSet::new(),
            }),
            wakes,
        }
    }

    pub(super) fn is_open(&self) -> bool {
        matches!(lock(&self.state).life, Life::Open)
    }

    /// Non-blocking enqueue of a live message (called under a topic lock).
    pub(super) fn try_push(&self, msg: &Arc<Message>) -> Push {
        let mut st = lock(&self.state);
        if !matches!(st.life, Life::Open) {
            return Push::Gone;
        }
        if st.queue.len() >= self.capacity {
            st.life = Life::Closed(CloseReason::SlowConsumer);
            let dropped = std::mem::take(&mut st.queue);
            let topics = std::mem::take(&mut st.topics);
            drop(st);
            drop(dropped);
            self.wake();
            return Push::Full(topics);
        }
        let was_empty = st.queue.is_empty();
        st.queue.push_back(Arc::clone(msg));
        drop(st);
        // The receiver only sleeps after seeing an empty queue, so only the
        // empty → non-empty transition needs a wake-up.
        if was_empty {
            match &self.wakes {
                Wakes::Own(notify) => notify.notify_one(),
                Wakes::Shared(signal) => signal.raise(),
            }
        }
        Push::Delivered
    }

    /// Closes an open subscriber, discarding its queue (the client resumes
    /// from its own position). Returns the topics to detach from, or `None`
    /// if it was not open.
    pub(super) fn close(&self, reason: CloseReason) -> Option<HashSet<Arc<str>>> {
        let mut st = lock(&self.state);
        if !matches!(st.life, Life::Open) {
            return None;
        }
        st.life = Life::Closed(reason);
        let dropped = std::mem::take(&mut st.queue);
        let topics = std::mem::take(&mut st.topics);
        drop(st);
        drop(dropped);
        self.wake();
        Some(topics)
    }

    fn mark_dropped(&self) -> HashSet<Arc<str>> {
        let mut st = lock(&self.state);
        st.life = Life::Dropped;
        st.queue.clear();
        std::mem::take(&mut st.topics)
    }

    fn wake(&self) {
        match &self.wakes {
            Wakes::Own(notify) => {
                notify.notify_waiters();
                // Also leave a permit for a receiver that is between its check and
                // its wait.
                notify.notify_one();
            }
            Wakes::Shared(signal) => signal.raise(),
        }
    }
}

/// One connection's view of the hub: a bounded queue attached to any number
/// of topics.
///
/// Methods take `&self`, so a transport may share it (`Arc<Subscriber>`)
/// between a reader and a writer task; it is meant to have one receiving
/// task. Dropping it detaches it from every topic.
pub struct Subscriber {
    pub(super) shared: Arc<SubShared>,
    pub(super) hub: Arc<Inner>,
}

impl Subscriber {
    /// This subscriber's id (compare with [`Message::origin`]).
    pub fn id(&self) -> SubscriberId {
        self.shared.id
    }

    /// Queue capacity: this many undelivered live messages are tolerated;
    /// one more closes the subscriber as a slow consumer.
    pub fn capacity(&self) -> usize {
        self.shared.capacity
    }

    /// Joins `topic` (creating it if needed), resuming after `since`.
    ///
    /// Atomically, under the topic's lock, computes what the subscriber missed
    /// and registers it for live messages, so the replay and the queue
    /// together hold every later message exactly once, in order. The caller
    /// must deliver [`JoinOutcome::replay`] (or a reset notice) before any
    /// message from this topic that [`recv`](Self::recv) yields afterwards;
    /// doing both from the task that called `join` guarantees that.
    ///
    /// Errors: [`HubError::AlreadyJoined`] (a second join could not honour a
    /// new `since` without duplicates; treat as a no-op if that fits),
    /// [`HubError::TooManyJoins`], [`HubError::TooManyTopics`],
    /// [`HubError::SubscriberClosed`], [`HubError::ShutDown`].
    pub fn join(&self, topic: &str, since: Option<Position>) -> Result<JoinOutcome, HubError> {
        self.hub.join(&self.shared, topic, since)
    }

    /// Leaves `topic`; returns whether the subscriber was in it. Messages
    /// already queued from it stay queued (check [`is_joined`](Self::is_joined)
    /// if that matters).
    pub fn leave(&self, topic: &str) -> bool {
        self.hub.leave(&self.shared, topic)
    }

    /// Whether the subscriber is currently in `topic`.
    pub fn is_joined(&self, topic: &str) -> bool {
        lock(&self.shared.state).topics.contains(topic)
    }

    /// The topics the subscriber is in (unordered).
    pub fn topics(&self) -> Vec<Arc<str>> {
        lock(&self.shared.state).topics.iter().cloned().collect()
    }

    /// Number of queued, not yet received messages.
    pub fn queued(&self) -> usize {
        lock(&self.shared.state).queue.len()
    }

    /// Why the hub closed this subscriber, if it did.
    pub fn close_reason(&self) -> Option<CloseReason> {
        match lock(&self.shared.state).life {
            Life::Closed(reason) => Some(reason),
            Life::Open | Life::Dropped => None,
        }
    }

    /// The next live message, waiting if there is none. Once the hub has
    /// closed the subscriber, returns `Err(Closed { reason })` (immediately,
    /// discarding anything still queued) and keeps returning it.
    ///
    /// Cancel-safe: a message is only taken from the queue when returned, so
    /// this can sit in a `select!` loop.
    pub async fn recv(&self) -> Result<Arc<Message>, Closed> {
        loop {
            if let Some(msg) = self.try_recv()? {
                return Ok(msg);
            }
            match &self.shared.wakes {
                Wakes::Own(notify) => notify.notified().await,
                Wakes::Shared(signal) => signal.raised().await,
            }
        }
    }

    /// [`try_recv`](Self::try_recv), whether the subscriber is still in the message's topic
    /// ([`is_joined`](Self::is_joined)) and whether it was the last one queued, under one
    /// lock: a transport that delivers only what is still joined asks both of every message,
    /// and one that drains the queue need not lock it again to find it empty. In one topic,
    /// the common case, the topic is compared without hashing it.
    pub fn try_recv_joined(&self) -> Result<Option<Queued>, Closed> {
        let mut st = lock(&self.shared.state);
        match st.life {
            Life::Open => Ok(st.queue.pop_front().map(|msg| {
                let joined = if st.topics.len() == 1 {
                    st.topics.iter().any(|t| **t == *msg.topic)
                } else {
                    st.topics.contains(&msg.topic)
                };
                Queued {
                    msg,
                    joined,
                    last: st.queue.is_empty(),
                }
            })),
            Life::Closed(reason) => Err(Closed { reason }),
            Life::Dropped => Err(Closed {
                reason: CloseReason::Shutdown,
            }),
        }
    }

    /// The next queued message without waiting (`Ok(None)` if the queue is
    /// empty); for draining a batch, e.g. into one long-poll response.
    pub fn try_recv(&self) -> Result<Option<Arc<Message>>, Closed> {
        let mut st = lock(&self.shared.state);
        match st.life {
            Life::Open => Ok(st.queue.pop_front()),
            Life::Closed(reason) => Err(Closed { reason }),
            // Unobservable: the handle is what drops.
            Life::Dropped => Err(Closed {
                reason: CloseReason::Shutdown,
            }),
        }
    }
}

impl fmt::Debug for Subscriber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Subscriber")
            .field("id", &self.shared.id)
            .field("capacity", &self.shared.capacity)
            .finish_non_exhaustive()
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        let topics = self.shared.mark_dropped();
        self.hub.detach(self.shared.id, &topics, None);
        self.hub.unregister(self.shared.id);
    }
}
