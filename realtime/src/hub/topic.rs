//! One topic: its sequence counter, bounded history and subscriber set, all
//! behind one mutex so that publish (assign seq, record, fan out) and join
//! (compute replay, register) are atomic with respect to each other.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::message::{Message, SubscriberId};
use super::position::{Epoch, Position};
use super::subscriber::{JoinOutcome, SubShared};

/// Why a resume position cannot be served (counted by reason in `HubStats`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum ResetReason {
    /// It can be served.
    Servable,
    /// Of another incarnation of the topic.
    Epoch,
    /// Beyond the topic's newest message.
    Ahead,
    /// Part of the gap has left the history.
    Evicted,
}

pub(super) struct Topic {
    pub(super) name: Arc<str>,
    pub(super) state: Mutex<TopicState>,
}

/// Where a topic's positions come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Origin {
    /// A single node: this hub numbers the topic's messages.
    Local,
    /// A hub in a fleet: the position is the fleet's, and the messages come in order from it.
    Fleet,
    /// A hub in a fleet that did not know the fleet's position of the topic when the topic was
    /// made here: its position is a local stand-in (a random epoch at 0) until the fleet's
    /// first delivery says where it stands. Nothing can be published under the stand-in (in a
    /// fleet every publish goes through it).
    Unplaced,
}

impl Topic {
    /// A new topic: at `at` when given (the fleet's position), else at 0 of a new epoch.
    pub(super) fn new(name: &str, now: Instant, origin: Origin, at: Option<Position>) -> Self {
        let at = at.unwrap_or(Position::new(Epoch::random(), 0));
        Topic {
            name: Arc::from(name),
            state: Mutex::new(TopicState {
                epoch: at.epoch,
                seq: at.seq,
                history: VecDeque::new(),
                history_bytes: 0,
                subscribers: HashMap::new(),
                last_activity: now,
                dead: false,
                origin,
                alias: None,
            }),
        }
    }
}

pub(super) struct TopicState {
    pub(super) epoch: Epoch,
    /// Seq of the newest message (0 before the first).
    pub(super) seq: u64,
    /// The newest messages, oldest first, contiguous and ending at `seq`.
    history: VecDeque<Arc<Message>>,
    history_bytes: usize,
    pub(super) subscribers: HashMap<SubscriberId, Arc<SubShared>>,
    pub(super) last_activity: Instant,
    /// Set by sweep when the topic leaves the map: whoever still holds the
    /// `Arc<Topic>` must look the name up again rather than publish into (or
    /// join) an orphan.
    pub(super) dead: bool,
    pub(super) origin: Origin,
    /// The stand-in position an [`Origin::Unplaced`] topic handed out, and the fleet position
    /// it turned out to be: a client resuming from the first resumes from the second.
    pub(super) alias: Option<(Position, Position)>,
}

impl TopicState {
    pub(super) fn position(&self) -> Position {
        Position::new(self.epoch, self.seq)
    }

    pub(super) fn retained(&self) -> usize {
        self.history.len()
    }

    /// Appends `msg` (which must carry seq `self.seq`) and evicts from the
    /// front until both bounds hold. A message bigger than `max_bytes` is
    /// evicted at once: a resume across it then gets an explicit Reset.
    pub(super) fn record(&mut self, msg: Arc<Message>, max_len: usize, max_bytes: usize) {
        self.history_bytes += msg.size;
        self.history.push_back(msg);
        while self.history.len() > max_len || self.history_bytes > max_bytes {
            match self.history.pop_front() {
                Some(old) => self.history_bytes -= old.size,
                None => break,
            }
        }
    }

    /// What a subscriber joining now from `since` needs. Must be called under
    /// the topic lock, together with registering the subscriber, so that the
    /// replay ends exactly where live delivery begins.
    pub(super) fn resume(&self, since: Option<Position>) -> JoinOutcome {
        let current = self.position();
        let Some(since) = since else {
            return JoinOutcome::Fresh { position: current };
        };
        let since = self.placed(since);
        if self.reset_reason(since) != ResetReason::Servable {
            return JoinOutcome::Reset { current };
        }
        let missing = self.seq - since.seq;
        let start = self.history.len() - missing as usize;
        JoinOutcome::Resumed {
            replay: self.history.range(start..).cloned().collect(),
            position: current,
        }
    }

    /// `since` as this topic knows it: the stand-in position a client was given before the
    /// fleet placed the topic reads as the position it was placed at.
    pub(super) fn placed(&self, since: Position) -> Position {
        match self.alias {
            Some((stand_in, placed)) if since == stand_in => placed,
            _ => since,
        }
    }

    /// Why a resume from `since` cannot be served ([`ResetReason::Servable`]: it can).
    pub(super) fn reset_reason(&self, since: Position) -> ResetReason {
        let since = self.placed(since);
        if since.epoch != self.epoch {
            // Another incarnation.
            ResetReason::Epoch
        } else if since.seq > self.seq {
            // A position this one never reached.
            ResetReason::Ahead
        } else if self.seq - since.seq > self.history.len() as u64 {
            // Part of the gap has been evicted.
            ResetReason::Evicted
        } else {
            ResetReason::Servable
        }
    }

    /// Drops subscribers that closed without detaching yet (a slow consumer
    /// is removed from other topics lazily or by its own detach pass).
    pub(super) fn prune_closed(&mut self) {
        self.subscribers.retain(|_, s| s.is_open());
    }

    pub(super) fn is_idle(&self, now: Instant, ttl: Duration) -> bool {
        self.subscribers.is_empty() && now.saturating_duration_since(self.last_activity) >= ttl
    }

    /// Moves the topic to `to` (the fleet's position), forgetting a history that no longer
    /// leads up to it.
    pub(super) fn jump(&mut self, to: Position) {
        self.epoch = to.epoch;
        self.seq = to.seq;
        self.history = VecDeque::new();
        self.history_bytes = 0;
        self.alias = None;
    }

    /// Marks the topic dropped and frees its history.
    pub(super) fn kill(&mut self) {
        self.dead = true;
        self.history = VecDeque::new();
        self.history_bytes = 0;
    }
}
