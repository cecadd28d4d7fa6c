//! What a history read means: the read script returns the topic's head and some frames; these
//! pure functions decide what a resuming client gets (the hub's promise: every message after
//! its position exactly once, or an explicit reset) and turn a read into a backfill.

use super::cursor::Fetched;
use super::frame::{self, Body, FrameError};
use crate::hub::Position;

/// A history read, frames still encoded: what the read script returned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RawRead {
    /// The topic's head (created if the topic was unknown).
    pub head: Position,
    /// The frames it returned, oldest first.
    pub frames: Vec<Vec<u8>>,
}

/// What a client resuming from a position gets.
#[derive(Clone, Debug, PartialEq)]
pub enum Resume {
    /// Every message after the position, oldest first (empty when it was current).
    Replay {
        /// The messages.
        frames: Vec<(Position, Body)>,
        /// The head they end at.
        head: Position,
    },
    /// The position cannot be served (other epoch, never reached, or no longer in history):
    /// the client missed an unknown number of messages and now stands at `current`.
    Reset {
        /// The head; live messages follow it.
        current: Position,
    },
}

/// Decodes every frame of a read, checking that they are contiguous and end at the head.
fn decode_run(read: &RawRead) -> Result<Vec<(Position, Body)>, FrameError> {
    let mut out = Vec::with_capacity(read.frames.len());
    for raw in &read.frames {
        let (position, body) = frame::decode(raw)?;
        if let Some((prev, _)) = out.last() {
            let prev: &Position = prev;
            if position.epoch != prev.epoch || position.seq != prev.seq + 1 {
                return Err(FrameError::Header);
            }
        }
        out.push((position, body));
    }
    if let Some((last, _)) = out.last() {
        if *last != read.head {
            return Err(FrameError::Header);
        }
    }
    Ok(out)
}

/// The answer for a client resuming from `since`, from a read made in resume mode.
///
/// A read that is not what the script promises (frames out of order, not ending at the head,
/// undecodable) is answered with a reset rather than a guess.
pub fn resume(since: Position, read: &RawRead) -> Resume {
    let head = read.head;
    let reset = Resume::Reset { current: head };
    if since.epoch != head.epoch || since.seq > head.seq {
        return reset;
    }
    if since.seq == head.seq {
        return Resume::Replay {
            frames: Vec::new(),
            head,
        };
    }
    let Ok(frames) = decode_run(read) else {
        return reset;
    };
    match frames.first() {
        Some((first, _)) if first.epoch == since.epoch && first.seq == since.seq + 1 => {
            Resume::Replay { frames, head }
        }
        _ => reset,
    }
}

/// A read made in backfill mode, as the cursor takes it. Frames that do not decode end the run
/// there (what follows them is left to the cursor's reset-to-head).
pub fn backfill(since: Position, read: &RawRead) -> Fetched<std::sync::Arc<Body>> {
    let frames = match decode_run(read) {
        Ok(frames) => frames,
        Err(_) => {
            let mut ok = Vec::new();
            for raw in &read.frames {
                match frame::decode(raw) {
                    Ok(f) => ok.push(f),
                    Err(_) => break,
                }
            }
            ok
        }
    };
    Fetched {
        since,
        head: read.head,
        frames: frames
            .into_iter()
            .map(|(p, b)| (p, std::sync::Arc::new(b)))
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hub::{Epoch, MessageId, Payload};
    use serde_json::json;

    fn pos(e: u64, s: u64) -> Position {
        Position::new(Epoch::from_raw(e), s)
    }

    fn raw(p: Position) -> Vec<u8> {
        let body = frame::encode_body(
            "n",
            MessageId::from_raw(p.seq as u128),
            &Payload::new("e", json!(p.seq)),
            None,
        );
        frame::encode_frame(p, &body)
    }

    /// A read of `head` returning the frames `seqs` (empty: `None`).
    fn read(head: Position, seqs: Option<std::ops::RangeInclusive<u64>>) -> RawRead {
        RawRead {
            head,
            frames: seqs
                .into_iter()
                .flatten()
                .map(|s| raw(pos(head.epoch.raw(), s)))
                .collect(),
        }
    }

    fn replayed(r: &Resume) -> Vec<u64> {
        match r {
            Resume::Replay { frames, .. } => frames.iter().map(|(p, _)| p.seq).collect(),
            Resume::Reset { .. } => panic!("reset: {r:?}"),
        }
    }

    #[test]
    fn covered_resume_replays_exactly_what_follows() {
        assert_eq!(
            replayed(&resume(pos(1, 3), &read(pos(1, 6), Some(4..=6)))),
            [4, 5, 6]
        );
        assert_eq!(
            replayed(&resume(pos(1, 6), &read(pos(1, 6), None))),
            [] as [u64; 0]
        );
    }

    #[test]
    fn anything_else_is_a_reset_to_the_head() {
        let reset = Resume::Reset { current: pos(1, 6) };
        // Trimmed: the history starts at 5.
        assert_eq!(resume(pos(1, 3), &read(pos(1, 6), Some(5..=6))), reset);
        // Another epoch, or a position never reached.
        assert_eq!(resume(pos(2, 3), &read(pos(1, 6), None)), reset);
        assert_eq!(resume(pos(1, 7), &read(pos(1, 6), None)), reset);
        // A read that breaks the script's promise.
        let mut holed = read(pos(1, 6), Some(4..=6));
        holed.frames.remove(1);
        assert_eq!(resume(pos(1, 3), &holed), reset);
        let mut garbage = read(pos(1, 6), Some(4..=6));
        garbage.frames[2] = b"nonsense".to_vec();
        assert_eq!(resume(pos(1, 3), &garbage), reset);
    }

    #[test]
    fn a_backfill_keeps_the_decodable_run() {
        let mut r = read(pos(1, 6), Some(3..=6));
        r.frames[2] = b"nonsense".to_vec();
        let f = backfill(pos(1, 2), &r);
        let seqs: Vec<u64> = f.frames.iter().map(|(p, _)| p.seq).collect();
        assert_eq!(seqs, [3, 4]);
        assert_eq!(f.head, pos(1, 6));
    }
}
