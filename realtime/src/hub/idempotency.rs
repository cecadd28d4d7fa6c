//! Memory of recent idempotency keys for `Hub::publish_idempotent`.
//!
//! Bound: at most `capacity` keys in total (split evenly over the shards,
//! each holding `ceil(capacity / shards)`),
//! each key at most [`MAX_KEY_LEN`] bytes, so memory stays under roughly
//! `capacity × (MAX_KEY_LEN + topic name + 100)` bytes. Window: a key is
//! recognised for `ttl` after its first publish, unless `capacity` newer keys
//! in its shard push it out first (oldest first). A retry outside that window
//! publishes again.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::future::{BoxFuture, Shared};

use super::position::Position;
use super::HubError;

/// Longest accepted idempotency key, in bytes.
pub const MAX_KEY_LEN: usize = 256;

/// A fleet publish in flight, awaited by its caller and by any retry with its key.
pub(super) type InFlight = Shared<BoxFuture<'static, Result<Position, HubError>>>;

/// What a key's publish came to.
pub(super) enum Outcome {
    /// Published at this position.
    Done(Position),
    /// Sent to the fleet; Redis has not answered yet (or had, when last looked at).
    Sent(InFlight),
}

pub(super) struct Entry {
    pub(super) topic: Arc<str>,
    pub(super) outcome: Outcome,
    stamp: u64,
}

/// One shard; the hub holds its lock across check + publish + insert so that
/// two concurrent publishes with one key produce one message.
#[derive(Default)]
pub(super) struct IdemShard {
    map: HashMap<Arc<str>, Entry>,
    /// Insertion order: (key, stamp, inserted at). Stamps let a stale order
    /// entry never remove a newer map entry for the same key.
    order: VecDeque<(Arc<str>, u64, Instant)>,
    next_stamp: u64,
}

impl IdemShard {
    /// Forgets keys older than `ttl` and beyond `capacity`.
    pub(super) fn purge(&mut self, now: Instant, ttl: Duration, capacity: usize) {
        while let Some((key, stamp, at)) = self.order.front() {
            let expired = now.saturating_duration_since(*at) >= ttl;
            if !expired && self.order.len() <= capacity {
                break;
            }
            if self.map.get(key).is_some_and(|e| e.stamp == *stamp) {
                self.map.remove(key);
            }
            self.order.pop_front();
        }
    }

    pub(super) fn get(&self, key: &str) -> Option<&Entry> {
        self.map.get(key)
    }

    pub(super) fn insert(&mut self, key: &str, topic: Arc<str>, outcome: Outcome, now: Instant) {
        let key: Arc<str> = Arc::from(key);
        let stamp = self.next_stamp;
        self.next_stamp += 1;
        self.order.push_back((Arc::clone(&key), stamp, now));
        self.map.insert(
            key,
            Entry {
                topic,
                outcome,
                stamp,
            },
        );
    }

    /// Forgets `key` (a publish that failed: a retry publishes again). Its order record
    /// expires like any other and never removes a newer entry (stamps differ).
    pub(super) fn remove(&mut self, key: &str) {
        self.map.remove(key);
    }

    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.map.len()
    }
}
