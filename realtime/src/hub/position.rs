//! Positions in a topic's stream, and their canonical text form.
//!
//! A position is what a client hands back when it reconnects ("I have seen
//! everything up to here"). It travels through SSE `id:` fields, query strings
//! and JSON, so it has exactly one text spelling, `<epoch>:<seq>`, and the
//! parser accepts only that spelling: two ids that mean the same position are
//! byte-identical, which keeps `Last-Event-ID` comparisons and logs honest.

use std::fmt;
use std::str::FromStr;

use thiserror::Error;

/// Identity of one incarnation of a topic's history.
///
/// Sequence numbers only mean something within an epoch: when history is lost
/// (process restart, or an idle topic dropped by [`Hub::sweep`](super::Hub::sweep)
/// and later recreated) the topic gets a fresh random epoch, so a client
/// resuming from an old position is told to reset instead of silently missing
/// messages. 64 random bits make an accidental match negligible.
///
/// Text form: exactly 16 lowercase hex digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Epoch(u64);

impl Epoch {
    /// A fresh random epoch (used whenever a topic is created).
    pub fn random() -> Self {
        Epoch(rand::random())
    }

    /// An epoch from its raw value (for a bus or tests that carry epochs).
    pub const fn from_raw(raw: u64) -> Self {
        Epoch(raw)
    }

    /// The raw value.
    pub const fn raw(self) -> u64 {
        self.0
    }
}

impl fmt::Display for Epoch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

impl fmt::Debug for Epoch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Epoch({self})")
    }
}

impl FromStr for Epoch {
    type Err = PositionParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let canonical = s.len() == 16 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
        if !canonical {
            return Err(PositionParseError::InvalidEpoch);
        }
        u64::from_str_radix(s, 16)
            .map(Epoch)
            .map_err(|_| PositionParseError::InvalidEpoch)
    }
}

/// A point in a topic's stream: "every message of `epoch` up to and including
/// `seq` has been seen". `seq == 0` is the point before the first message.
///
/// Text form (SSE event ids, resume tokens): `<epoch>:<seq>`, e.g.
/// `00000000deadbeef:42`, where seq is decimal without sign or leading zeros.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Position {
    /// The history incarnation the sequence number belongs to.
    pub epoch: Epoch,
    /// Sequence number of the last message covered (contiguous from 1).
    pub seq: u64,
}

impl Position {
    /// Longest canonical text form: 16 hex digits, `:`, 20 decimal digits.
    /// Transports may reject longer input (e.g. a `Last-Event-ID` header)
    /// before parsing.
    pub const MAX_TEXT_LEN: usize = 16 + 1 + 20;

    /// A position from its parts.
    pub const fn new(epoch: Epoch, seq: u64) -> Self {
        Position { epoch, seq }
    }
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.epoch, self.seq)
    }
}

impl FromStr for Position {
    type Err = PositionParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (epoch, seq) = s
            .split_once(':')
            .ok_or(PositionParseError::MissingSeparator)?;
        let epoch: Epoch = epoch.parse()?;
        // `u64::from_str` would also take `+5` and `007`; only the canonical
        // spelling is accepted so that equal positions have equal text.
        let canonical = !seq.is_empty()
            && seq.bytes().all(|b| b.is_ascii_digit())
            && (seq.len() == 1 || !seq.starts_with('0'));
        if !canonical {
            return Err(PositionParseError::InvalidSeq);
        }
        let seq = seq.parse().map_err(|_| PositionParseError::InvalidSeq)?;
        Ok(Position { epoch, seq })
    }
}

/// Why a text position was rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum PositionParseError {
    /// No `:` between epoch and seq.
    #[error("position must be `<epoch>:<seq>`")]
    MissingSeparator,
    /// The epoch is not exactly 16 lowercase hex digits.
    #[error("position epoch must be 16 lowercase hex digits")]
    InvalidEpoch,
    /// The seq is not a canonical decimal u64 (no sign, no leading zeros).
    #[error("position seq must be a decimal u64 without sign or leading zeros")]
    InvalidSeq,
}
