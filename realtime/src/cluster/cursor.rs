//! One node's view of one fleet topic: which (epoch, seq) it has delivered, and what to do
//! with each frame that arrives. Pure state machine: no I/O, no clock (time comes in as
//! `now`), so every ordering can be tested.
//!
//! # Inputs
//!
//! Frames reach a node by three ways, with different guarantees:
//!
//! * [`Source::Echo`]: the pub/sub message. One connection, so echoes arrive in the order the
//!   Lua script ran: an echo that is ahead of the next expected seq proves that the frames in
//!   between were lost (pub/sub is fire-and-forget across a reconnect), so a backfill is asked
//!   for at once.
//! * [`Source::Reply`]: this node's own publish, from the script's reply on another
//!   connection. It may overtake echoes of earlier publishes by other nodes, so it only waits
//!   (held) until the echoes before it are in; it never proves a gap and never starts a new
//!   epoch by itself (a late reply of an old epoch must not reset a newer one).
//! * a backfill ([`Cursor::on_fetched`]): what the history held after a position, read
//!   atomically with the topic's head.
//!
//! Whatever the interleaving, the output is: each position delivered at most once, strictly in
//! seq order within an epoch, and every position that is passed over is inside a
//! [`Step::Reset`] (the property test in this file checks exactly that).
//!
//! # Epochs are ordered
//!
//! A fleet epoch starts with the Redis server's clock (see [`super::script`]), so a later
//! incarnation of a topic has a greater epoch: a frame of an older epoch than the cursor's is
//! late (its messages are inside the reset that began the newer one) and is dropped, whichever
//! way it came. Without that order a backfill that revealed a new epoch could not be told from
//! echoes of an older one still in flight.
//!
//! # Waiting is bounded
//!
//! A held frame older than the grace period (its echo predecessors never came: the pub/sub
//! link stalled) makes [`Cursor::on_tick`] ask for a backfill; at most [`MAX_HELD`] frames are
//! held, past that the cursor declares a reset and moves on.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::hub::Position;

/// Frames held per topic (waiting for their predecessors) before the cursor gives up waiting
/// and declares a reset. A backfill answers long before that in any healthy fleet.
pub const MAX_HELD: usize = 4096;

/// Where a frame came from (see the module documentation).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// The ordered pub/sub stream.
    Echo,
    /// This node's own publish (the script's reply).
    Reply,
}

/// What the cursor asks its owner to do, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step<T> {
    /// Deliver this message: it is the next one.
    Deliver {
        /// Its position.
        position: Position,
        /// The message.
        item: T,
    },
    /// Every message after the previous position up to and including `to` is skipped (lost
    /// from pub/sub and from history, or another epoch began); delivery continues after `to`.
    Reset {
        /// The position delivery continues from.
        to: Position,
    },
    /// Read the topic's history after `since` and hand the result to [`Cursor::on_fetched`]
    /// (or report failure with [`Cursor::on_fetch_failed`]). At most one is outstanding.
    Fetch {
        /// The position to read after.
        since: Position,
    },
}

/// What a history read found (see [`crate::cluster::history`]), as the cursor needs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fetched<T> {
    /// The position the read was for.
    pub since: Position,
    /// The topic's head when read.
    pub head: Position,
    /// Frames after `since` (or, when `since` is not covered, every retained frame), oldest
    /// first, contiguous and ending at `head`.
    pub frames: Vec<(Position, T)>,
}

#[derive(Clone, Debug)]
struct Held<T> {
    item: T,
    since: Instant,
}

/// One topic's delivery state on one node.
#[derive(Clone, Debug)]
pub struct Cursor<T> {
    /// Last position delivered (or started from); `None` before the first frame.
    at: Option<Position>,
    /// Where the cursor started (the position just before its first delivery).
    started: Option<Position>,
    /// Frames of the current epoch after `at`, waiting for their predecessors.
    pending: BTreeMap<u64, Held<T>>,
    /// Replies of an epoch not confirmed by the ordered stream yet (or before the first
    /// frame): (epoch, seq) -> frame.
    foreign: BTreeMap<(u64, u64), (Position, Held<T>)>,
    fetching: bool,
}

impl<T> Default for Cursor<T> {
    fn default() -> Self {
        Cursor {
            at: None,
            started: None,
            pending: BTreeMap::new(),
            foreign: BTreeMap::new(),
            fetching: false,
        }
    }
}

impl<T: Clone> Cursor<T> {
    /// A cursor that has seen nothing: the first echo starts it.
    pub fn new() -> Self {
        Cursor::default()
    }

    /// A cursor that starts after `at` (e.g. the local hub's position when it begins to follow
    /// the fleet's topic).
    pub fn starting_at(at: Position) -> Self {
        Cursor {
            at: Some(at),
            started: Some(at),
            ..Cursor::default()
        }
    }

    /// The last position delivered or reset to.
    pub fn position(&self) -> Option<Position> {
        self.at
    }

    /// Where the cursor started: everything after it, and nothing before, goes through its
    /// steps. `None` before it started.
    pub fn started_at(&self) -> Option<Position> {
        self.started
    }

    /// The topic's head as read from Redis: a cursor that has not started yet starts there
    /// (replies it holds of that epoch after the head wait for their predecessors like any
    /// frame); one that has started ignores it (the stream is ahead of or at the read, or a
    /// backfill is settling it).
    pub fn start_at(&mut self, head: Position, out: &mut Vec<Step<T>>) {
        if self.at.is_some() {
            return;
        }
        self.begin(head);
        self.drain(out);
        self.bound(out);
    }

    /// The first position: the cursor delivers what follows `at`.
    fn begin(&mut self, at: Position) {
        self.at = Some(at);
        self.started = Some(at);
        self.adopt_foreign(at);
    }

    /// Frames waiting for their predecessors.
    pub fn held(&self) -> usize {
        self.pending.len() + self.foreign.len()
    }

    /// Whether a backfill is outstanding.
    pub fn is_fetching(&self) -> bool {
        self.fetching
    }

    /// A frame arrived.
    pub fn on_frame(
        &mut self,
        now: Instant,
        source: Source,
        position: Position,
        item: T,
        out: &mut Vec<Step<T>>,
    ) {
        if self
            .at
            .is_some_and(|at| position.epoch.raw() < at.epoch.raw())
        {
            return;
        }
        let held = Held { item, since: now };
        let at = match self.at {
            Some(at) if at.epoch == position.epoch => at,
            _ if source == Source::Reply => {
                // Before the ordered stream confirms this epoch, a reply only waits.
                self.hold_foreign(position, held, out);
                return;
            }
            previous => {
                // The first frame, or the ordered stream moved to another epoch (the old one
                // is over): start just before it.
                let start = Position::new(position.epoch, position.seq.saturating_sub(1));
                if previous.is_some() {
                    self.switch_epoch(start, out);
                } else {
                    self.begin(start);
                }
                start
            }
        };
        if position.seq <= at.seq {
            return;
        }
        self.pending.entry(position.seq).or_insert(held);
        let gap = position.seq > at.seq + 1;
        self.drain(out);
        if gap && source == Source::Echo {
            self.request_fetch(out);
        }
        self.bound(out);
    }

    /// Time passed: frames held longer than `grace` make the cursor ask for a backfill.
    pub fn on_tick(&mut self, now: Instant, grace: Duration, out: &mut Vec<Step<T>>) {
        if self.fetching {
            return;
        }
        let oldest = self
            .pending
            .values()
            .chain(self.foreign.values().map(|(_, h)| h))
            .map(|h| h.since)
            .min();
        if oldest.is_some_and(|t| now.saturating_duration_since(t) >= grace) {
            self.request_fetch(out);
        }
    }

    /// After a reconnect: pub/sub messages may have been lost, so read what happened since the
    /// last delivered position.
    pub fn on_resubscribed(&mut self, out: &mut Vec<Step<T>>) {
        self.fetching = false;
        if self.at.is_some() || !self.foreign.is_empty() {
            self.request_fetch(out);
        }
    }

    /// The outstanding backfill failed (Redis unreachable): a later tick or resubscription
    /// asks again.
    pub fn on_fetch_failed(&mut self) {
        self.fetching = false;
    }

    /// The outstanding backfill's result.
    pub fn on_fetched(&mut self, now: Instant, fetched: Fetched<T>, out: &mut Vec<Step<T>>) {
        self.fetching = false;
        let Fetched {
            since,
            head,
            frames,
        } = fetched;
        if self.at.is_some_and(|at| head.epoch.raw() < at.epoch.raw()) {
            // Read before the cursor moved on to a newer epoch.
            return;
        }
        let at = match self.at {
            Some(at) => at,
            None => {
                // Only replies were waiting: start where the earliest of them needs it.
                self.begin(since);
                since
            }
        };
        if at.epoch != head.epoch {
            let start = frames
                .first()
                .map(|(p, _)| Position::new(head.epoch, p.seq.saturating_sub(1)))
                .unwrap_or(head);
            self.switch_epoch(start, out);
        } else {
            let first = frames.first().map(|(p, _)| p.seq).unwrap_or(head.seq + 1);
            if first > at.seq + 1 {
                // The history no longer reaches back to what was missed.
                self.skip_to(Position::new(head.epoch, first - 1), out);
            }
        }
        for (position, item) in frames {
            let Some(at) = self.at else { break };
            if position.epoch != at.epoch || position.seq <= at.seq {
                continue;
            }
            self.pending
                .entry(position.seq)
                .or_insert(Held { item, since: now });
        }
        self.drain(out);
        // Replies still waiting of an epoch before the head's are late; those of a later one
        // (begun after the read) wait for their echo.
        let keep = head.epoch.raw().saturating_add(1);
        self.foreign = self.foreign.split_off(&(keep, 0));
        // The read saw the head: anything held past it is a later publish whose echo will
        // come. A gap left below the head would be a broken read; skip it honestly.
        if let Some(at) = self.at {
            if at.epoch == head.epoch && at.seq < head.seq {
                self.skip_to(head, out);
                self.drain(out);
            }
        }
        self.bound(out);
    }

    fn hold_foreign(&mut self, position: Position, held: Held<T>, out: &mut Vec<Step<T>>) {
        self.foreign
            .entry((position.epoch.raw(), position.seq))
            .or_insert((position, held));
        self.bound(out);
    }

    /// Moves waiting replies of the now-current epoch into `pending`; drops those it has passed
    /// and those of older epochs.
    fn adopt_foreign(&mut self, at: Position) {
        let later = self
            .foreign
            .split_off(&(at.epoch.raw().saturating_add(1), 0));
        let mine = std::mem::replace(&mut self.foreign, later);
        for ((epoch, _), (position, held)) in mine {
            if epoch == at.epoch.raw() && position.seq > at.seq {
                self.pending.entry(position.seq).or_insert(held);
            }
        }
    }

    /// A new epoch begins at `to`: the old one's waiting frames are covered by the reset.
    fn switch_epoch(&mut self, to: Position, out: &mut Vec<Step<T>>) {
        self.pending.clear();
        self.at = Some(to);
        out.push(Step::Reset { to });
        self.adopt_foreign(to);
    }

    /// Skips forward within the epoch to `to` (declared as a reset).
    fn skip_to(&mut self, to: Position, out: &mut Vec<Step<T>>) {
        self.at = Some(to);
        self.pending = self.pending.split_off(&(to.seq + 1));
        out.push(Step::Reset { to });
    }

    fn drain(&mut self, out: &mut Vec<Step<T>>) {
        let Some(mut at) = self.at else { return };
        while let Some(entry) = self.pending.first_entry() {
            if *entry.key() <= at.seq {
                entry.remove();
                continue;
            }
            if *entry.key() != at.seq + 1 {
                break;
            }
            let held = entry.remove();
            at.seq += 1;
            out.push(Step::Deliver {
                position: at,
                item: held.item,
            });
        }
        self.at = Some(at);
    }

    fn request_fetch(&mut self, out: &mut Vec<Step<T>>) {
        if self.fetching {
            return;
        }
        let since = match self.at {
            Some(at) => at,
            // Only replies are waiting: read from just before the earliest one.
            None => match self.foreign.values().next() {
                Some((p, _)) => Position::new(p.epoch, p.seq.saturating_sub(1)),
                None => return,
            },
        };
        self.fetching = true;
        out.push(Step::Fetch { since });
    }

    /// Keeps the held frames under [`MAX_HELD`] by giving up on the oldest wait.
    fn bound(&mut self, out: &mut Vec<Step<T>>) {
        while self.pending.len() > MAX_HELD {
            let Some((&first, _)) = self.pending.first_key_value() else {
                break;
            };
            let Some(at) = self.at else { break };
            self.skip_to(Position::new(at.epoch, first.saturating_sub(1)), out);
            self.drain(out);
        }
        if self.foreign.len() > MAX_HELD {
            // Replies of an epoch the ordered stream never confirmed: a backfill settles them.
            self.request_fetch(out);
        }
        while self.foreign.len() > 2 * MAX_HELD {
            // Unreachable while Redis answers (a backfill would have confirmed or retired the
            // epoch); the bound only keeps memory finite when it does not. The dropped reply's
            // publisher got its position, and its echo or history is still in Redis.
            self.foreign.pop_first();
        }
    }
}
