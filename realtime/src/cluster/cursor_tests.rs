//! The cursor against a model of one Redis topic: publishes from this node and others, lost
//! pub/sub (link down), duplicated echoes, replies in any order, epochs lost, history trimmed,
//! backfills answered late or failing.

use std::collections::{HashSet, VecDeque};
use std::time::{Duration, Instant};

use proptest::prelude::*;

use super::cursor::{Cursor, Fetched, Source, Step};
use crate::hub::{Epoch, Position};

const GRACE: Duration = Duration::from_millis(200);

fn pos(epoch: u64, seq: u64) -> Position {
    Position::new(Epoch::from_raw(epoch), seq)
}

/// Runs `f` on a fresh output buffer and returns what the cursor asked for.
fn steps<T: Clone>(f: impl FnOnce(&mut Vec<Step<T>>)) -> Vec<Step<T>> {
    let mut out = Vec::new();
    f(&mut out);
    out
}

fn deliver(epoch: u64, seq: u64, item: &'static str) -> Step<&'static str> {
    Step::Deliver {
        position: pos(epoch, seq),
        item,
    }
}

#[test]
fn the_first_echo_starts_the_cursor_and_the_next_ones_follow() {
    let t = Instant::now();
    let mut c = Cursor::new();
    let out = steps(|o| c.on_frame(t, Source::Echo, pos(1, 57), "a", o));
    assert_eq!(out, vec![deliver(1, 57, "a")]);
    let out = steps(|o| c.on_frame(t, Source::Echo, pos(1, 58), "b", o));
    assert_eq!(out, vec![deliver(1, 58, "b")]);
    assert_eq!(c.position(), Some(pos(1, 58)));
}

#[test]
fn own_reply_then_its_echo_delivers_once() {
    let t = Instant::now();
    let mut c = Cursor::starting_at(pos(1, 4));
    let out = steps(|o| c.on_frame(t, Source::Reply, pos(1, 5), "mine", o));
    assert_eq!(out, vec![deliver(1, 5, "mine")]);
    let out = steps(|o| c.on_frame(t, Source::Echo, pos(1, 5), "mine", o));
    assert!(out.is_empty(), "the echo is a duplicate: {out:?}");
}

#[test]
fn a_reply_that_overtakes_an_earlier_echo_waits_for_it() {
    let t = Instant::now();
    let mut c = Cursor::starting_at(pos(1, 4));
    let out = steps(|o| c.on_frame(t, Source::Reply, pos(1, 6), "mine", o));
    assert!(out.is_empty(), "held, no fetch: {out:?}");
    assert_eq!(c.held(), 1);
    let out = steps(|o| c.on_frame(t, Source::Echo, pos(1, 5), "theirs", o));
    assert_eq!(out, vec![deliver(1, 5, "theirs"), deliver(1, 6, "mine")]);
    let out = steps(|o| c.on_frame(t, Source::Echo, pos(1, 6), "mine", o));
    assert!(out.is_empty());
}

#[test]
fn an_echo_ahead_proves_a_gap_and_the_backfill_fills_it() {
    let t = Instant::now();
    let mut c = Cursor::starting_at(pos(1, 4));
    let out = steps(|o| c.on_frame(t, Source::Echo, pos(1, 7), "g", o));
    assert_eq!(out, vec![Step::Fetch { since: pos(1, 4) }]);
    let fetched = Fetched {
        since: pos(1, 4),
        head: pos(1, 7),
        frames: vec![(pos(1, 5), "e"), (pos(1, 6), "f"), (pos(1, 7), "g")],
    };
    let out = steps(|o| c.on_fetched(t, fetched, o));
    assert_eq!(
        out,
        vec![deliver(1, 5, "e"), deliver(1, 6, "f"), deliver(1, 7, "g")]
    );
}

#[test]
fn a_gap_the_history_no_longer_covers_is_a_reset_then_what_is_left() {
    let t = Instant::now();
    let mut c = Cursor::starting_at(pos(1, 4));
    let out = steps(|o| c.on_frame(t, Source::Echo, pos(1, 9), "i", o));
    assert_eq!(out, vec![Step::Fetch { since: pos(1, 4) }]);
    // History keeps 2: 8 and 9.
    let fetched = Fetched {
        since: pos(1, 4),
        head: pos(1, 9),
        frames: vec![(pos(1, 8), "h"), (pos(1, 9), "i")],
    };
    let out = steps(|o| c.on_fetched(t, fetched, o));
    assert_eq!(
        out,
        vec![
            Step::Reset { to: pos(1, 7) },
            deliver(1, 8, "h"),
            deliver(1, 9, "i")
        ]
    );
}

#[test]
fn a_new_epoch_on_the_echo_stream_is_a_reset_and_late_old_frames_are_dropped() {
    let t = Instant::now();
    let mut c = Cursor::starting_at(pos(1, 4));
    let out = steps(|o| c.on_frame(t, Source::Echo, pos(2, 1), "new", o));
    assert_eq!(
        out,
        vec![Step::Reset { to: pos(2, 0) }, deliver(2, 1, "new")]
    );
    let out = steps(|o| c.on_frame(t, Source::Reply, pos(1, 5), "late", o));
    assert!(out.is_empty(), "a late reply of the old epoch: {out:?}");
    assert_eq!(c.held(), 0);
}

#[test]
fn a_reply_of_an_unconfirmed_epoch_waits_for_the_stream_or_the_grace() {
    let t = Instant::now();
    let mut c = Cursor::starting_at(pos(1, 4));
    let out = steps(|o| c.on_frame(t, Source::Reply, pos(2, 2), "mine", o));
    assert!(out.is_empty());
    let out = steps(|o| c.on_tick(t + GRACE / 2, GRACE, o));
    assert!(out.is_empty(), "still within the grace: {out:?}");
    let out = steps(|o| c.on_tick(t + GRACE, GRACE, o));
    assert_eq!(out, vec![Step::Fetch { since: pos(1, 4) }]);
    let fetched = Fetched {
        since: pos(1, 4),
        head: pos(2, 2),
        frames: vec![(pos(2, 1), "x"), (pos(2, 2), "mine")],
    };
    let out = steps(|o| c.on_fetched(t + GRACE, fetched, o));
    assert_eq!(
        out,
        vec![
            Step::Reset { to: pos(2, 0) },
            deliver(2, 1, "x"),
            deliver(2, 2, "mine")
        ]
    );
}

#[test]
fn after_a_reconnect_the_cursor_reads_what_it_missed() {
    let t = Instant::now();
    let mut c: Cursor<&str> = Cursor::starting_at(pos(1, 4));
    let out = steps(|o| c.on_resubscribed(o));
    assert_eq!(out, vec![Step::Fetch { since: pos(1, 4) }]);
    // Nothing was published meanwhile.
    let fetched = Fetched {
        since: pos(1, 4),
        head: pos(1, 4),
        frames: vec![],
    };
    let out = steps(|o| c.on_fetched(t, fetched, o));
    assert!(out.is_empty());
    // Redis lost everything: the read created a new epoch.
    let out = steps(|o| c.on_resubscribed(o));
    assert_eq!(out, vec![Step::Fetch { since: pos(1, 4) }]);
    let fetched = Fetched {
        since: pos(1, 4),
        head: pos(3, 0),
        frames: vec![],
    };
    let out = steps(|o| c.on_fetched(t, fetched, o));
    assert_eq!(out, vec![Step::Reset { to: pos(3, 0) }]);
}

#[test]
fn held_frames_are_bounded() {
    let t = Instant::now();
    let mut c = Cursor::starting_at(pos(1, 0));
    let mut out = Vec::new();
    for seq in 2..(super::cursor::MAX_HELD as u64 + 3) {
        c.on_frame(t, Source::Reply, pos(1, seq), seq, &mut out);
    }
    assert!(c.held() <= super::cursor::MAX_HELD);
    assert_eq!(out[0], Step::Reset { to: pos(1, 1) });
    assert!(matches!(out[1], Step::Deliver { position, .. } if position == pos(1, 2)));
}

// ---- The property: any interleaving, each position at most once, in order, resets for gaps.

#[derive(Clone, Debug)]
enum Op {
    /// A publish by this node (`own`) or another.
    Publish { own: bool },
    /// Redis lost the topic (restart without persistence, or expiry): a new epoch.
    NewEpoch,
    /// The pub/sub link drops (echoes are lost until it is back).
    LinkDown,
    /// The link is back and resubscribed.
    LinkUp,
    /// The next echo arrives (twice if `dup`).
    Echo { dup: bool },
    /// One of the outstanding replies arrives.
    Reply { pick: usize },
    /// Time passes.
    Tick { ms: u64 },
    /// The outstanding backfill is answered from Redis as it is now.
    FetchDone,
    /// The outstanding backfill fails.
    FetchFail,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => any::<bool>().prop_map(|own| Op::Publish { own }),
        1 => Just(Op::NewEpoch),
        1 => Just(Op::LinkDown),
        1 => Just(Op::LinkUp),
        6 => any::<bool>().prop_map(|dup| Op::Echo { dup }),
        3 => any::<usize>().prop_map(|pick| Op::Reply { pick }),
        2 => (0u64..400).prop_map(|ms| Op::Tick { ms }),
        2 => Just(Op::FetchDone),
        1 => Just(Op::FetchFail),
    ]
}

/// One topic in Redis, the links to one node, and what that node's owner has seen.
struct Model {
    history_len: usize,
    epoch: u64,
    seq: u64,
    /// Every message ever published: position -> id.
    all: std::collections::HashMap<Position, u64>,
    history: VecDeque<(Position, u64)>,
    next_id: u64,
    echoes: VecDeque<(Position, u64)>,
    replies: Vec<(Position, u64)>,
    link_up: bool,
    fetch: Option<Position>,
    now: Instant,
    // The owner's view.
    current: Option<Position>,
    delivered: HashSet<Position>,
}

impl Model {
    fn new(history_len: usize) -> Self {
        Model {
            history_len,
            epoch: 1,
            seq: 0,
            all: Default::default(),
            history: VecDeque::new(),
            next_id: 1,
            echoes: VecDeque::new(),
            replies: Vec::new(),
            link_up: true,
            fetch: None,
            now: Instant::now(),
            current: None,
            delivered: HashSet::new(),
        }
    }

    fn head(&self) -> Position {
        pos(self.epoch, self.seq)
    }

    /// What the read script answers: frames after `since` when its epoch is current (from the
    /// oldest retained when `since` is older), else every retained frame.
    fn read(&self, since: Position) -> Fetched<u64> {
        let frames = self
            .history
            .iter()
            .filter(|(p, _)| since.epoch != p.epoch || p.seq > since.seq)
            .copied()
            .collect();
        Fetched {
            since,
            head: self.head(),
            frames,
        }
    }

    fn check(&mut self, out: Vec<Step<u64>>) -> Result<(), TestCaseError> {
        for step in out {
            match step {
                Step::Deliver { position, item } => {
                    if let Some(cur) = self.current {
                        prop_assert_eq!(position.epoch, cur.epoch, "delivered across epochs");
                        prop_assert_eq!(position.seq, cur.seq + 1, "delivered out of order");
                    }
                    prop_assert_eq!(self.all.get(&position), Some(&item), "wrong message");
                    prop_assert!(self.delivered.insert(position), "delivered twice");
                    self.current = Some(position);
                }
                Step::Reset { to } => {
                    if let Some(cur) = self.current {
                        if to.epoch == cur.epoch {
                            prop_assert!(to.seq > cur.seq, "reset backwards {cur:?} -> {to:?}");
                        } else {
                            prop_assert!(
                                to.epoch.raw() > cur.epoch.raw(),
                                "reset back to an old epoch"
                            );
                        }
                    }
                    self.current = Some(to);
                }
                Step::Fetch { since } => {
                    prop_assert!(self.fetch.is_none(), "two fetches at once");
                    self.fetch = Some(since);
                }
            }
        }
        Ok(())
    }

    fn apply(&mut self, c: &mut Cursor<u64>, op: Op) -> Result<(), TestCaseError> {
        let mut out = Vec::new();
        match op {
            Op::Publish { own } => {
                self.seq += 1;
                let p = self.head();
                let id = self.next_id;
                self.next_id += 1;
                self.all.insert(p, id);
                self.history.push_back((p, id));
                while self.history.len() > self.history_len {
                    self.history.pop_front();
                }
                if self.link_up {
                    self.echoes.push_back((p, id));
                }
                if own {
                    self.replies.push((p, id));
                }
            }
            Op::NewEpoch => {
                self.epoch += 1;
                self.seq = 0;
                self.history.clear();
            }
            Op::LinkDown => {
                self.link_up = false;
                self.echoes.clear();
            }
            Op::LinkUp => {
                if !self.link_up {
                    self.link_up = true;
                    // A reconnect also loses whatever backfill was in flight.
                    self.fetch = None;
                    c.on_resubscribed(&mut out);
                }
            }
            Op::Echo { dup } => {
                if let Some((p, id)) = self.echoes.pop_front() {
                    c.on_frame(self.now, Source::Echo, p, id, &mut out);
                    if dup {
                        c.on_frame(self.now, Source::Echo, p, id, &mut out);
                    }
                }
            }
            Op::Reply { pick } => {
                if !self.replies.is_empty() {
                    let (p, id) = self.replies.remove(pick % self.replies.len());
                    c.on_frame(self.now, Source::Reply, p, id, &mut out);
                }
            }
            Op::Tick { ms } => {
                self.now += Duration::from_millis(ms);
                c.on_tick(self.now, GRACE, &mut out);
            }
            Op::FetchDone => {
                if let Some(since) = self.fetch.take() {
                    let read = self.read(since);
                    c.on_fetched(self.now, read, &mut out);
                }
            }
            Op::FetchFail => {
                if self.fetch.take().is_some() {
                    c.on_fetch_failed();
                }
            }
        }
        self.check(out)
    }

    /// Lets everything arrive and every backfill answer, until nothing moves. A last
    /// resubscription makes a silent change (an epoch that expired without a publish since)
    /// observable, as a reconnect after a Redis restart does.
    fn settle(&mut self, c: &mut Cursor<u64>) -> Result<(), TestCaseError> {
        while !self.echoes.is_empty() {
            self.apply(c, Op::Echo { dup: false })?;
        }
        self.apply(c, Op::LinkDown)?;
        self.apply(c, Op::LinkUp)?;
        for _ in 0..64 {
            while !self.echoes.is_empty() {
                self.apply(c, Op::Echo { dup: false })?;
            }
            while !self.replies.is_empty() {
                self.apply(c, Op::Reply { pick: 0 })?;
            }
            self.apply(c, Op::FetchDone)?;
            self.apply(c, Op::Tick { ms: 1000 })?;
            if self.fetch.is_none() && c.held() == 0 {
                break;
            }
        }
        Ok(())
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn any_interleaving_delivers_each_position_once_in_order_with_resets_for_gaps(
        history_len in 1usize..6,
        ops in proptest::collection::vec(op(), 0..80),
    ) {
        let mut model = Model::new(history_len);
        let mut c: Cursor<u64> = Cursor::new();
        for op in ops {
            model.apply(&mut c, op)?;
        }
        model.settle(&mut c)?;
        prop_assert_eq!(c.held(), 0, "frames still held after settling");
        if let Some(cur) = model.current {
            // Caught up with Redis: everything up to the head is delivered or inside a reset.
            prop_assert_eq!(cur, model.head(), "not caught up");
        }
        // Every message of the final epoch after the cursor's start was delivered unless a
        // reset covered it: the per-step checks above guarantee that, because a delivery must
        // be exactly the next seq and only a reset may jump.
    }
}

#[test]
fn a_read_head_starts_a_cursor_that_has_not_started_and_nothing_else() {
    let mut c = Cursor::new();
    assert_eq!(c.started_at(), None);
    // A reply of this node waits; the head read says the topic stood at 4 before it.
    let out = steps(|o| c.on_frame(Instant::now(), Source::Reply, pos(1, 5), "mine", o));
    assert!(out.is_empty());
    let out = steps(|o| c.start_at(pos(1, 4), o));
    assert_eq!(out, vec![deliver(1, 5, "mine")]);
    assert_eq!(c.started_at(), Some(pos(1, 4)));
    assert_eq!(c.position(), Some(pos(1, 5)));
    // Started: a later (or older) head changes nothing.
    assert!(steps(|o| c.start_at(pos(1, 9), o)).is_empty());
    assert_eq!(c.position(), Some(pos(1, 5)));
    // The first echo starts a cursor just before itself.
    let mut c = Cursor::new();
    let out = steps(|o| c.on_frame(Instant::now(), Source::Echo, pos(2, 7), "x", o));
    assert_eq!(out, vec![deliver(2, 7, "x")]);
    assert_eq!(c.started_at(), Some(pos(2, 6)));
}
