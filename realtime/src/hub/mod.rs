//! The hub: topics with sequence numbers and bounded history, shared by every
//! realtime transport (Socket.IO rooms, raw WebSocket pub/sub, long-poll, SSE)
//! and the HTTP publish API.
//!
//! # The promise
//!
//! A client that comes back with its last [`Position`] gets every later
//! message exactly once, in order; when that is impossible (evicted from
//! history, or the topic's [`Epoch`] changed) it gets an explicit
//! [`JoinOutcome::Reset`] — never a silent gap.
//!
//! # How
//!
//! Each topic is one mutex around (epoch, seq, history, subscribers).
//! [`Hub::publish`] assigns the next seq, records the message in history and
//! `try_send`s an `Arc` of it to every subscriber queue, all under that lock;
//! [`Subscriber::join`] computes the replay from history and registers the
//! subscriber under the same lock. So a message is either in the replay or in
//! the queue, never both, never neither.
//!
//! Nothing blocks or awaits under a lock, so the hub works from any number of
//! tokio runtimes (or plain threads) at once. Lock order, to rule out
//! deadlock: idempotency shard → topic-map shard → topic → subscriber; the
//! subscriber registry is only taken alone. A subscriber's topics are
//! detached one topic lock at a time, never nested.
//!
//! Memory is bounded everywhere: history per topic (count and bytes), queue
//! per subscriber (a full queue disconnects the subscriber instead of
//! growing), topics per hub and per subscriber, idempotency keys.
//!
//! Topic names are opaque strings chosen by callers (e.g. `sio:/chat:room1`). The hub only
//! tells the reserved namespaces ([`crate::topics`]) apart, to keep a share of
//! [`HubConfig::max_topics`] for them; transports vet client-chosen names with
//! [`Hub::admit_client_topic`] before subscribing or publishing.
//!
//! # In a fleet
//!
//! A hub made with [`Hub::in_fleet`] shares its topics with other nodes through a [`Fleet`]
//! (the Redis backplane, [`crate::cluster`]): every publish goes to the fleet, which gives it
//! the topic's fleet-wide position, and comes back to each node's hub in position order
//! ([`Hub::fleet_deliver`]), where it is recorded and fanned out exactly as a local publish
//! is. The transports publish with [`Hub::send`] (and its siblings), which on a single node is
//! the synchronous local publish and in a fleet resolves once Redis has answered, and join
//! with [`Subscriber::join_async`], which in a fleet also serves a resume position the local
//! history cannot serve from the fleet's. On a single node none of this costs anything: the
//! fan-out path is the same code, with no lock, allocation or await more.

mod fleet;
mod idempotency;
mod message;
mod position;
mod signal;
mod subscriber;
mod topic;

#[cfg(test)]
mod tests;

use std::collections::hash_map::RandomState;
use std::collections::{HashMap, HashSet};
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};

use crate::sync::{lock, read, try_lock, write};
use std::time::{Duration, Instant};

use serde_json::Value;
use thiserror::Error;
use tokio::sync::Notify;

pub use crate::topics::TopicError;
pub use fleet::{Fleet, FleetDelivery, FleetMessage, FleetResume, Publishing, WeakHub};
pub use idempotency::MAX_KEY_LEN as MAX_IDEMPOTENCY_KEY_LEN;
pub use message::{Message, MessageId, Payload, SubscriberId};
pub use position::{Epoch, Position, PositionParseError};
pub use signal::Signal;
pub use subscriber::{CloseReason, Closed, JoinOutcome, Queued, Subscriber};

use idempotency::{IdemShard, Outcome};
use subscriber::{Push, SubShared, Wakes};
use topic::{Origin, ResetReason, Topic, TopicState};

/// Shards of the topic map and the idempotency store: lookups from many
/// cores then rarely touch the same lock.
const SHARDS: usize = 32;

/// Hub limits. Every field has a default suited to a single gateway node.
#[derive(Clone, Debug)]
pub struct HubConfig {
    /// Messages kept per topic for resumption. Default 1000: at a busy
    /// room's 10 msg/s that covers ~100 s of disconnection (a network switch,
    /// a laptop lid, a redeploy), while a room's history stays around 1 MB
    /// for typical sub-KB messages. Beyond it clients get a Reset.
    pub history_len: usize,
    /// Approximate bytes kept per topic ([`Payload::approx_size`]); the
    /// history is trimmed to whichever of the two bounds is tighter.
    /// Default 1 MiB, so a few huge messages cannot pin a large history.
    pub history_max_bytes: usize,
    /// Live messages a subscriber may have queued before it counts as a
    /// slow consumer and is closed. Default 1024: absorbs bursts of a
    /// second or more while costing at most 8 KiB of pointers per connection
    /// (messages themselves are shared with history).
    pub queue_capacity: usize,
    /// Topics that may exist at once; creating one more fails with
    /// [`HubError::TooManyTopics`]. Default 100 000. Worst-case history
    /// memory is `max_topics × history_max_bytes`, but idle topics are
    /// swept and most topics hold far less.
    pub max_topics: usize,
    /// Topics outside the reserved namespaces ([`crate::topics::RESERVED_PREFIXES`]) that may
    /// exist at once: everything clients and the app name. Default 50 000, half of
    /// `max_topics`: the other half is kept for the transports' own topics, so topics created
    /// by clients can never stop a new Socket.IO connection from getting its room.
    pub max_open_topics: usize,
    /// Longest topic name a client or the app may use ([`Hub::admit_client_topic`],
    /// [`Hub::check_topic_name`]). Default [`crate::topics::DEFAULT_MAX_TOPIC_LEN`].
    pub max_topic_len: usize,
    /// New topics one client address may create per minute ([`Hub::admit_client_topic`]; 0:
    /// no limit). Default [`crate::topics::DEFAULT_NEW_TOPICS_PER_MINUTE`].
    pub new_topics_per_client_per_minute: u32,
    /// Topics one subscriber may be in at once. Default 1024.
    pub max_topics_per_subscriber: usize,
    /// A topic without subscribers and without publishes, joins or leaves
    /// for this long is dropped by [`Hub::sweep`] (its next incarnation gets
    /// a new epoch). Default 10 minutes: long enough for reconnecting clients
    /// of a quiet room to resume.
    pub idle_topic_ttl: Duration,
    /// Idempotency keys remembered at most (over all topics, rounded up to a
    /// multiple of the 32 shards; 0 disables the memory). Default 100 000.
    pub idempotency_capacity: usize,
    /// How long an idempotency key is remembered at most. Default 10 minutes,
    /// comfortably more than any sane client retry schedule.
    pub idempotency_ttl: Duration,
}

impl Default for HubConfig {
    fn default() -> Self {
        HubConfig {
            history_len: 1000,
            history_max_bytes: 1 << 20,
            queue_capacity: 1024,
            max_topics: 100_000,
            max_open_topics: 50_000,
            max_topic_len: crate::topics::DEFAULT_MAX_TOPIC_LEN,
            new_topics_per_client_per_minute: crate::topics::DEFAULT_NEW_TOPICS_PER_MINUTE,
            max_topics_per_subscriber: 1024,
            idle_topic_ttl: Duration::from_secs(600),
            idempotency_capacity: 100_000,
            idempotency_ttl: Duration::from_secs(600),
        }
    }
}

/// Why a hub operation failed.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum HubError {
    /// [`Hub::shutdown`] was called.
    #[error("the realtime hub is shut down")]
    ShutDown,
    /// Creating the topic would exceed [`HubConfig::max_topics`].
    #[error("too many topics (limit {limit})")]
    TooManyTopics {
        /// The configured limit.
        limit: usize,
    },
    /// Joining would exceed [`HubConfig::max_topics_per_subscriber`].
    #[error("subscriber is in too many topics (limit {limit})")]
    TooManyJoins {
        /// The configured limit.
        limit: usize,
    },
    /// The subscriber is already in the topic.
    #[error("subscriber already joined topic `{topic}`")]
    AlreadyJoined {
        /// The topic.
        topic: String,
    },
    /// The hub closed the subscriber (slow consumer, shutdown).
    #[error("subscriber is closed: {reason}")]
    SubscriberClosed {
        /// Why it was closed.
        reason: CloseReason,
    },
    /// The idempotency key is longer than [`MAX_IDEMPOTENCY_KEY_LEN`].
    #[error("idempotency key longer than {max} bytes")]
    KeyTooLong {
        /// The limit.
        max: usize,
    },
    /// The idempotency key was used, within its window, for another topic.
    #[error("idempotency key already used for topic `{topic}`")]
    KeyConflict {
        /// The topic it was first used for.
        topic: String,
    },
    /// A synchronous publish on a hub in a fleet: the position is the fleet's, known only
    /// once Redis answers. Use [`Hub::send`] and its siblings.
    #[error("this hub is in a fleet: publish with Hub::send")]
    InFleet,
    /// The fleet's Redis cannot be reached now: nothing was published.
    #[error("the cluster is unavailable: {reason}")]
    FleetUnavailable {
        /// Why (the last connection error, or a full publish queue).
        reason: String,
    },
    /// Redis failed or did not answer the publish in time. It may have been published all the
    /// same (every node then delivers it in order); a retry with an idempotency key is safe.
    #[error("the cluster publish failed: {reason}")]
    FleetFailed {
        /// Redis's answer, or the timeout.
        reason: String,
    },
}

impl HubError {
    /// Whether the fleet, not the request, is the problem (an HTTP answer would be 503).
    pub fn is_unavailable(&self) -> bool {
        matches!(
            self,
            HubError::ShutDown | HubError::FleetUnavailable { .. } | HubError::FleetFailed { .. }
        )
    }
}

/// Hub-wide counters, as plain atomics (read them with `Relaxed` loads or
/// [`HubStats::snapshot`]).
#[derive(Debug, Default)]
pub struct HubStats {
    /// Topics that exist now.
    pub topics: AtomicU64,
    /// Of those, topics outside the reserved namespaces.
    pub open_topics: AtomicU64,
    /// Subscribers that exist now (open or closed, until dropped).
    pub subscribers: AtomicU64,
    /// Messages recorded (one per topic per publish, injected ones included).
    pub published: AtomicU64,
    /// Live messages enqueued to subscribers.
    pub delivered: AtomicU64,
    /// Messages handed out in join replays.
    pub replayed: AtomicU64,
    /// Joins answered with a Reset.
    pub resets: AtomicU64,
    /// Of those: part of the gap had left the history.
    pub resets_evicted: AtomicU64,
    /// Of those: the position was of another incarnation of the topic.
    pub resets_epoch: AtomicU64,
    /// Of those: a position the topic never reached.
    pub resets_ahead: AtomicU64,
    /// Subscribers closed because their queue was full.
    pub slow_consumer_disconnects: AtomicU64,
    /// Topics dropped by [`Hub::sweep`].
    pub topics_swept: AtomicU64,
    /// Idempotent publishes answered from memory.
    pub idempotent_hits: AtomicU64,
    /// Live resets sent to a topic's subscribers (a fleet could not deliver some messages).
    pub live_resets: AtomicU64,
}

/// A copy of [`HubStats`] at one moment (fields read one by one).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[allow(missing_docs)]
pub struct HubStatsSnapshot {
    pub topics: u64,
    pub open_topics: u64,
    pub subscribers: u64,
    pub published: u64,
    pub delivered: u64,
    pub replayed: u64,
    pub resets: u64,
    pub resets_evicted: u64,
    pub resets_epoch: u64,
    pub resets_ahead: u64,
    pub slow_consumer_disconnects: u64,
    pub topics_swept: u64,
    pub idempotent_hits: u64,
    pub live_resets: u64,
}

impl HubStats {
    /// Reads every counter.
    pub fn snapshot(&self) -> HubStatsSnapshot {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        HubStatsSnapshot {
            topics: get(&self.topics),
            open_topics: get(&self.open_topics),
            subscribers: get(&self.subscribers),
            published: get(&self.published),
            delivered: get(&self.delivered),
            replayed: get(&self.replayed),
            resets: get(&self.resets),
            resets_evicted: get(&self.resets_evicted),
            resets_epoch: get(&self.resets_epoch),
            resets_ahead: get(&self.resets_ahead),
            slow_consumer_disconnects: get(&self.slow_consumer_disconnects),
            topics_swept: get(&self.topics_swept),
            idempotent_hits: get(&self.idempotent_hits),
            live_resets: get(&self.live_resets),
        }
    }
}

/// State of one topic, from [`Hub::topic_info`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TopicInfo {
    /// Subscribers registered.
    pub subscribers: usize,
    /// Current position (seq of the newest message).
    pub position: Position,
    /// Messages in history.
    pub retained: usize,
}

/// Result of [`Hub::publish_idempotent`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Published {
    /// Where the message is (the original one's, for a duplicate).
    pub position: Position,
    /// True if the key was seen before and nothing was published.
    pub duplicate: bool,
}

/// The hub. Cheap to clone (one `Arc`); every clone is the same hub.
#[derive(Clone)]
pub struct Hub {
    inner: Arc<Inner>,
}

/// One shard of the topic map.
type TopicMap = HashMap<Arc<str>, Arc<Topic>>;

/// What fanning messages out into one topic came to, settled once its lock is released.
#[derive(Default)]
struct FanOut {
    published: u64,
    delivered: u64,
    slow: Vec<(SubscriberId, HashSet<Arc<str>>)>,
}

pub(crate) struct Inner {
    config: HubConfig,
    /// The fleet this hub is a node of; `None` on a single node.
    fleet: Option<Arc<dyn Fleet>>,
    hasher: RandomState,
    topics: Box<[RwLock<TopicMap>]>,
    idempotency: Box<[Mutex<IdemShard>]>,
    /// Every live subscriber, so shutdown can reach those in no topic.
    registry: Mutex<HashMap<SubscriberId, Arc<SubShared>>>,
    shut_down: AtomicBool,
    stats: HubStats,
    client_topics: crate::topics::ClientTopics,
}

impl std::fmt::Debug for Hub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hub")
            .field("config", &self.inner.config)
            .field("stats", &self.inner.stats.snapshot())
            .finish_non_exhaustive()
    }
}

impl Default for Hub {
    fn default() -> Self {
        Hub::new(HubConfig::default())
    }
}

impl Hub {
    /// A single-node hub.
    pub fn new(config: HubConfig) -> Self {
        Hub {
            inner: Arc::new(Inner::new(config, None)),
        }
    }

    /// A hub that is one node of a fleet: `start` gets a handle to the hub (to deliver the
    /// fleet's messages to, [`Hub::fleet_deliver`]) and returns the fleet.
    pub fn in_fleet<E>(
        config: HubConfig,
        start: impl FnOnce(WeakHub) -> Result<Arc<dyn Fleet>, E>,
    ) -> Result<Self, E> {
        let mut failed = None;
        let inner = Arc::new_cyclic(|weak| {
            let fleet = match start(WeakHub(weak.clone())) {
                Ok(f) => Some(f),
                Err(e) => {
                    failed = Some(e);
                    None
                }
            };
            Inner::new(config, fleet)
        });
        match failed {
            Some(e) => Err(e),
            None => Ok(Hub { inner }),
        }
    }

    /// Whether this hub is a node of a fleet.
    pub fn in_a_fleet(&self) -> bool {
        self.inner.fleet.is_some()
    }
}

impl Inner {
    fn new(config: HubConfig, fleet: Option<Arc<dyn Fleet>>) -> Inner {
        Inner {
            fleet,
            hasher: RandomState::new(),
            topics: (0..SHARDS).map(|_| RwLock::default()).collect(),
            idempotency: (0..SHARDS).map(|_| Mutex::default()).collect(),
            registry: Mutex::default(),
            shut_down: AtomicBool::new(false),
            stats: HubStats::default(),
            client_topics: crate::topics::ClientTopics::new(
                config.new_topics_per_client_per_minute,
            ),
            config,
        }
    }
}

impl Hub {
    /// The configuration.
    pub fn config(&self) -> &HubConfig {
        &self.inner.config
    }

    /// The counters.
    pub fn stats(&self) -> &HubStats {
        &self.inner.stats
    }

    /// Checks a topic name the app gives (publish API): not empty, not longer than
    /// [`HubConfig::max_topic_len`], not in a reserved namespace.
    pub fn check_topic_name(&self, topic: &str) -> Result<(), TopicError> {
        crate::topics::check_name(topic, self.inner.config.max_topic_len)
    }

    /// Checks a topic a client names before it subscribes or publishes to it: the name as
    /// [`Hub::check_topic_name`], and, when the topic does not exist yet, one token of the
    /// client's new-topic budget ([`HubConfig::new_topics_per_client_per_minute`]). Every
    /// refusal is logged here, once for every transport.
    pub fn admit_client_topic(
        &self,
        client: Option<std::net::IpAddr>,
        topic: &str,
    ) -> Result<(), TopicError> {
        let checked = self
            .check_topic_name(topic)
            .and_then(|()| self.admit_new_topic(client, topic));
        if let Err(e) = &checked {
            let shown: String = topic.chars().take(64).collect();
            tracing::warn!(client = ?client, topic = %shown, error = %e, "realtime topic refused");
        }
        checked
    }

    /// One token of `client`'s new-topic budget when `topic` does not exist yet (a client's
    /// action is about to create it); nothing when it exists. For topics whose name the caller
    /// has already vetted, e.g. a Socket.IO room a client joins.
    pub fn admit_new_topic(
        &self,
        client: Option<std::net::IpAddr>,
        topic: &str,
    ) -> Result<(), TopicError> {
        if self.inner.lookup(topic).is_some() {
            return Ok(());
        }
        self.inner.client_topics.take(client, Instant::now())
    }

    /// A new subscriber with the configured queue capacity, in no topic yet.
    pub fn subscribe(&self) -> Result<Subscriber, HubError> {
        self.subscribe_with_capacity(self.inner.config.queue_capacity)
    }

    /// A new subscriber with its own queue capacity (at least 1), e.g. a
    /// small one for a single long-poll request.
    pub fn subscribe_with_capacity(&self, capacity: usize) -> Result<Subscriber, HubError> {
        self.new_subscriber(capacity, Wakes::Own(Notify::new()))
    }

    /// A new subscriber (default capacity) that raises `wake` instead of waking a `Notify` of
    /// its own when a message arrives for it or it closes: a connection with a subscriber per
    /// namespace waits on that one [`Signal`] and drains every subscriber that has something
    /// with [`Subscriber::try_recv`], so a push wakes its task once whichever subscriber it
    /// went to. `wake` is raised once per empty-to-non-empty change of a queue (it stays
    /// raised when nobody waits), so whoever waits must drain each queue empty (or raise it
    /// again) before waiting.
    pub fn subscribe_waking(&self, wake: Arc<Signal>) -> Result<Subscriber, HubError> {
        self.new_subscriber(self.inner.config.queue_capacity, Wakes::Shared(wake))
    }

    fn new_subscriber(&self, capacity: usize, wakes: Wakes) -> Result<Subscriber, HubError> {
        let shared = Arc::new(SubShared::new(capacity, wakes));
        let mut registry = lock(&self.inner.registry);
        // Checked under the registry lock, which shutdown also takes, so no
        // subscriber escapes shutdown.
        if self.inner.shut_down.load(Ordering::Acquire) {
            return Err(HubError::ShutDown);
        }
        registry.insert(shared.id, Arc::clone(&shared));
        drop(registry);
        self.inner.stats.subscribers.fetch_add(1, Ordering::Relaxed);
        Ok(Subscriber {
            shared,
            hub: Arc::clone(&self.inner),
        })
    }

    /// Publishes an event without attachments; see [`Hub::publish_payload`].
    pub fn publish(
        &self,
        topic: &str,
        event: impl Into<String>,
        data: Value,
        origin: Option<SubscriberId>,
    ) -> Result<Position, HubError> {
        self.publish_payload(topic, Payload::new(event, data), origin)
    }

    /// Publishes to `topic` (creating it if needed) and returns the message's
    /// position once it is in history and in every subscriber's queue.
    ///
    /// Fan-out is a non-blocking enqueue of one `Arc` per subscriber; a
    /// subscriber whose queue is full is closed as a slow consumer instead.
    /// With no subscribers the message is still recorded, so a later join
    /// with `since` catches up.
    pub fn publish_payload(
        &self,
        topic: &str,
        payload: Payload,
        origin: Option<SubscriberId>,
    ) -> Result<Position, HubError> {
        let size = payload.approx_size();
        self.inner.publish(
            topic,
            &Arc::new(payload),
            size,
            MessageId::generate(),
            origin,
            true,
        )
    }

    /// Publishes one broadcast to several topics: each topic gets its own
    /// seq, all copies share one [`MessageId`] (and one payload allocation),
    /// so a subscriber in several of the topics can deliver it once.
    ///
    /// Topics are published one after another, not atomically. A topic
    /// listed twice is published once; the returned positions follow the
    /// input order (a repeated topic repeats its position).
    pub fn publish_many<I, S>(
        &self,
        topics: I,
        payload: Payload,
        origin: Option<SubscriberId>,
    ) -> Result<Vec<Position>, HubError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let topics: Vec<S> = topics.into_iter().collect();
        let size = payload.approx_size();
        let payload = Arc::new(payload);
        let id = MessageId::generate();
        let one_topic = topics.len() == 1;
        let mut done: HashMap<&str, Position> = HashMap::with_capacity(topics.len());
        let mut positions = Vec::with_capacity(topics.len());
        for topic in &topics {
            let topic = topic.as_ref();
            let position = match done.get(topic) {
                Some(p) => *p,
                None => {
                    let p = self
                        .inner
                        .publish(topic, &payload, size, id, origin, one_topic)?;
                    done.insert(topic, p);
                    p
                }
            };
            positions.push(position);
        }
        Ok(positions)
    }

    /// Publishes unless `key` was published before within the idempotency
    /// window (see [`HubConfig::idempotency_ttl`] and
    /// [`HubConfig::idempotency_capacity`]); then returns the original
    /// position with `duplicate: true` and publishes nothing. Concurrent
    /// calls with one key publish once. A key reused for another topic is a
    /// [`HubError::KeyConflict`]; the payload is not compared.
    pub fn publish_idempotent(
        &self,
        key: &str,
        topic: &str,
        payload: Payload,
        origin: Option<SubscriberId>,
    ) -> Result<Published, HubError> {
        let (outcome, duplicate) = self.remember(key, topic, || {
            self.publish_payload(topic, payload, origin)
                .map(Outcome::Done)
        })?;
        match outcome {
            Outcome::Done(position) => Ok(Published {
                position,
                duplicate,
            }),
            // Only fleet publishes are sent and answered later.
            Outcome::Sent(_) => Err(HubError::InFleet),
        }
    }

    /// The idempotency memory around a publish: what `key` came to if it was used within the
    /// window (with `true`: a duplicate, nothing published), else `publish()`'s outcome, now
    /// remembered. The key's shard stays locked across `publish`: that is what makes two
    /// racing retries publish once. A fleet publish that failed is forgotten, so that a retry
    /// publishes again.
    fn remember(
        &self,
        key: &str,
        topic: &str,
        publish: impl FnOnce() -> Result<Outcome, HubError>,
    ) -> Result<(Outcome, bool), HubError> {
        if key.len() > MAX_IDEMPOTENCY_KEY_LEN {
            return Err(HubError::KeyTooLong {
                max: MAX_IDEMPOTENCY_KEY_LEN,
            });
        }
        let inner = &*self.inner;
        let shard = &inner.idempotency[inner.shard_of(key)];
        let mut memory = lock(shard);
        let now = Instant::now();
        memory.purge(
            now,
            inner.config.idempotency_ttl,
            inner.idem_shard_capacity(),
        );
        if let Some(seen) = memory.get(key) {
            if &*seen.topic != topic {
                return Err(HubError::KeyConflict {
                    topic: seen.topic.to_string(),
                });
            }
            let outcome = match &seen.outcome {
                Outcome::Done(p) => Some(Outcome::Done(*p)),
                Outcome::Sent(sent) => match sent.peek() {
                    Some(Ok(p)) => Some(Outcome::Done(*p)),
                    Some(Err(_)) => None,
                    None => Some(Outcome::Sent(sent.clone())),
                },
            };
            match outcome {
                Some(outcome) => {
                    inner.stats.idempotent_hits.fetch_add(1, Ordering::Relaxed);
                    return Ok((outcome, true));
                }
                None => memory.remove(key),
            }
        }
        let outcome = publish()?;
        let kept = match &outcome {
            Outcome::Done(p) => Outcome::Done(*p),
            Outcome::Sent(sent) => Outcome::Sent(sent.clone()),
        };
        memory.insert(key, Arc::from(topic), kept, now);
        memory.purge(
            now,
            inner.config.idempotency_ttl,
            inner.idem_shard_capacity(),
        );
        Ok((outcome, false))
    }

    /// Drops `topic` now if nobody is subscribed to it, instead of waiting for [`Hub::sweep`].
    /// For topics that cannot matter once their subscriber is gone (a Socket.IO socket's own
    /// room when its session is not kept for recovery): without it, a busy site's connection
    /// churn would fill `max_topics` with dead rooms between two sweeps. Its history goes
    /// with it, and a later incarnation gets a new epoch, as after a sweep.
    pub fn drop_if_unused(&self, topic: &str) -> bool {
        let inner = &*self.inner;
        let mut map = write(&inner.topics[inner.shard_of(topic)]);
        let Some(t) = map.get(topic).cloned() else {
            return false;
        };
        let mut st = lock(&t.state);
        st.prune_closed();
        if st.dead || !st.subscribers.is_empty() {
            return false;
        }
        map.remove(topic);
        st.kill();
        inner.forget_topic(topic);
        drop(st);
        drop(map);
        inner.unfollow(topic);
        true
    }

    /// Subscribers and position of `topic`, if it exists (does not create it).
    pub fn topic_info(&self, topic: &str) -> Option<TopicInfo> {
        let t = self.inner.lookup(topic)?;
        let st = lock(&t.state);
        if st.dead {
            return None;
        }
        Some(TopicInfo {
            subscribers: st.subscribers.len(),
            position: st.position(),
            retained: st.retained(),
        })
    }

    /// Drops topics that have had no subscribers and no activity for
    /// [`HubConfig::idle_topic_ttl`] before `now`, and forgets expired
    /// idempotency keys. Returns the number of topics dropped. Run it
    /// periodically (e.g. every 30 s) with `Instant::now()`.
    pub fn sweep(&self, now: Instant) -> usize {
        let inner = &*self.inner;
        for shard in inner.idempotency.iter() {
            lock(shard).purge(
                now,
                inner.config.idempotency_ttl,
                inner.idem_shard_capacity(),
            );
        }
        let ttl = inner.config.idle_topic_ttl;
        let mut dropped = 0;
        let mut gone: Vec<Arc<str>> = Vec::new();
        for shard in inner.topics.iter() {
            // Find candidates under the read lock, skipping busy topics (a
            // topic whose lock is taken is not idle), so lookups in this shard
            // are blocked only while actual idle topics are removed.
            let candidates: Vec<Arc<Topic>> = read(shard)
                .values()
                .filter(|t| {
                    try_lock(&t.state).is_some_and(|mut st| {
                        st.prune_closed();
                        st.is_idle(now, ttl)
                    })
                })
                .cloned()
                .collect();
            if candidates.is_empty() {
                continue;
            }
            let mut map = write(shard);
            for t in candidates {
                let mut st = lock(&t.state);
                st.prune_closed();
                if st.dead || !st.is_idle(now, ttl) {
                    continue;
                }
                if map.get(&*t.name).is_some_and(|cur| Arc::ptr_eq(cur, &t)) {
                    map.remove(&*t.name);
                    st.kill();
                    if !crate::topics::is_reserved(&t.name) {
                        inner.stats.open_topics.fetch_sub(1, Ordering::Relaxed);
                    }
                    dropped += 1;
                    if inner.fleet.is_some() {
                        gone.push(Arc::clone(&t.name));
                    }
                }
            }
        }
        for name in gone {
            inner.unfollow(&name);
        }
        let dropped_u64 = dropped as u64;
        inner.stats.topics.fetch_sub(dropped_u64, Ordering::Relaxed);
        inner
            .stats
            .topics_swept
            .fetch_add(dropped_u64, Ordering::Relaxed);
        dropped
    }

    /// Closes every subscriber with [`CloseReason::Shutdown`] and refuses
    /// new subscribers, joins and publishes from now on. Idempotent.
    pub fn shutdown(&self) {
        let inner = &*self.inner;
        let subscribers: Vec<Arc<SubShared>> = {
            let registry = lock(&inner.registry);
            inner.shut_down.store(true, Ordering::Release);
            registry.values().cloned().collect()
        };
        for sub in subscribers {
            if let Some(topics) = sub.close(CloseReason::Shutdown) {
                inner.detach(sub.id, &topics, None);
            }
        }
    }

    /// Whether [`Hub::shutdown`] was called.
    pub fn is_shut_down(&self) -> bool {
        self.inner.shut_down.load(Ordering::Acquire)
    }
}

impl Inner {
    fn shard_of(&self, name: &str) -> usize {
        (self.hasher.hash_one(name) % SHARDS as u64) as usize
    }

    fn idem_shard_capacity(&self) -> usize {
        self.config.idempotency_capacity.div_ceil(SHARDS)
    }

    fn check_open(&self) -> Result<(), HubError> {
        if self.shut_down.load(Ordering::Acquire) {
            Err(HubError::ShutDown)
        } else {
            Ok(())
        }
    }

    /// Counts a removed topic out of the stats that bound creation.
    fn forget_topic(&self, name: &str) {
        self.stats.topics.fetch_sub(1, Ordering::Relaxed);
        if !crate::topics::is_reserved(name) {
            self.stats.open_topics.fetch_sub(1, Ordering::Relaxed);
        }
    }

    fn lookup(&self, name: &str) -> Option<Arc<Topic>> {
        read(&self.topics[self.shard_of(name)]).get(name).cloned()
    }

    /// In a fleet: stops following `name` unless it is here again. Called with no hub lock
    /// held (the fleet takes its delivery lock, which comes before the hub's).
    fn unfollow(&self, name: &str) {
        if let Some(fleet) = &self.fleet {
            fleet.unfollow(name, &|| self.lookup(name).is_none());
        }
    }

    fn topic_or_create(&self, name: &str) -> Result<Arc<Topic>, HubError> {
        if let Some(t) = read(&self.topics[self.shard_of(name)]).get(name) {
            return Ok(Arc::clone(t));
        }
        let Some(fleet) = &self.fleet else {
            return self.create(name, Origin::Local, None);
        };
        // Followed first, and made under the fleet's delivery lock: the topic never exists here
        // without its messages coming, and it starts where the fleet's delivery stands.
        let mut made = None;
        fleet.follow(name, &mut |at| {
            made = Some(match at {
                Some(at) => self.create(name, Origin::Fleet, Some(at)),
                None => self.create(name, Origin::Unplaced, None),
            })
        });
        let made = made.unwrap_or(Err(HubError::ShutDown));
        if made.is_err() {
            self.unfollow(name);
        }
        made
    }

    fn create(
        &self,
        name: &str,
        origin: Origin,
        at: Option<Position>,
    ) -> Result<Arc<Topic>, HubError> {
        let shard = &self.topics[self.shard_of(name)];
        let mut map = write(shard);
        if let Some(t) = map.get(name) {
            return Ok(Arc::clone(t));
        }
        let limit = self.config.max_topics;
        if self.stats.topics.fetch_add(1, Ordering::Relaxed) >= limit as u64 {
            self.stats.topics.fetch_sub(1, Ordering::Relaxed);
            return Err(HubError::TooManyTopics { limit });
        }
        // Topics outside the reserved namespaces have their own, smaller budget, so the
        // reserved ones (each Socket.IO connection needs its room) always find room.
        if !crate::topics::is_reserved(name) {
            let open = self.config.max_open_topics.min(limit);
            if self.stats.open_topics.fetch_add(1, Ordering::Relaxed) >= open as u64 {
                self.stats.open_topics.fetch_sub(1, Ordering::Relaxed);
                self.stats.topics.fetch_sub(1, Ordering::Relaxed);
                return Err(HubError::TooManyTopics { limit: open });
            }
        }
        let t = Arc::new(Topic::new(name, Instant::now(), origin, at));
        map.insert(Arc::clone(&t.name), Arc::clone(&t));
        Ok(t)
    }

    /// The local publish: the next seq, recorded and fanned out. On a hub in a fleet only the
    /// fleet numbers messages ([`HubError::InFleet`]).
    fn publish(
        &self,
        name: &str,
        payload: &Arc<Payload>,
        size: usize,
        id: MessageId,
        origin: Option<SubscriberId>,
        one_topic: bool,
    ) -> Result<Position, HubError> {
        self.check_open()?;
        if self.fleet.is_some() {
            return Err(HubError::InFleet);
        }
        loop {
            let topic = self.topic_or_create(name)?;
            let mut st = lock(&topic.state);
            if st.dead {
                // Swept between lookup and lock: look it up again.
                continue;
            }
            st.seq += 1;
            let msg = Arc::new(Message {
                id,
                topic: Arc::clone(&topic.name),
                epoch: st.epoch,
                seq: st.seq,
                payload: Arc::clone(payload),
                origin,
                remote: false,
                one_topic,
                reset_from: None,
                size,
                encoded: OnceLock::new(),
            });
            let position = msg.position();
            let mut out = FanOut::default();
            self.append(&mut st, msg, &mut out);
            drop(st);
            self.finish(&topic.name, out);
            return Ok(position);
        }
    }

    /// Records `msg` (whose seq must be the topic's) and hands it to every subscriber, under
    /// the topic's lock; [`Inner::finish`] does the rest once the lock is released. The one
    /// path of every message into a topic, local or from the fleet.
    fn append(&self, st: &mut TopicState, msg: Arc<Message>, out: &mut FanOut) {
        st.record(
            Arc::clone(&msg),
            self.config.history_len,
            self.config.history_max_bytes,
        );
        st.last_activity = Instant::now();
        out.published += 1;
        Self::fan_out(st, &msg, out);
    }

    /// `try_send`s `msg` to every subscriber of the topic (under its lock); those whose queue
    /// is full are removed and collected.
    fn fan_out(st: &mut TopicState, msg: &Arc<Message>, out: &mut FanOut) {
        st.subscribers.retain(|&sid, sub| match sub.try_push(msg) {
            Push::Delivered => {
                out.delivered += 1;
                true
            }
            Push::Full(topics) => {
                out.slow.push((sid, topics));
                false
            }
            Push::Gone => false,
        });
    }

    /// After a fan-out, with the topic's lock released: counts, and detaches the slow
    /// consumers from their other topics.
    fn finish(&self, topic: &Arc<str>, out: FanOut) {
        self.stats
            .published
            .fetch_add(out.published, Ordering::Relaxed);
        self.stats
            .delivered
            .fetch_add(out.delivered, Ordering::Relaxed);
        if !out.slow.is_empty() {
            self.stats
                .slow_consumer_disconnects
                .fetch_add(out.slow.len() as u64, Ordering::Relaxed);
            for (sid, topics) in out.slow {
                self.detach(sid, &topics, Some(topic));
            }
        }
    }

    fn join(
        &self,
        sub: &Arc<SubShared>,
        name: &str,
        since: Option<Position>,
    ) -> Result<JoinOutcome, HubError> {
        self.check_open()?;
        // Cheap early answers, so a closed or full subscriber does not create
        // topics; the authoritative checks are repeated under the locks.
        {
            let ss = lock(&sub.state);
            if let subscriber::Life::Closed(reason) = ss.life {
                return Err(HubError::SubscriberClosed { reason });
            }
            if ss.topics.contains(name) {
                return Err(HubError::AlreadyJoined {
                    topic: name.to_owned(),
                });
            }
            let limit = self.config.max_topics_per_subscriber;
            if ss.topics.len() >= limit {
                return Err(HubError::TooManyJoins { limit });
            }
        }
        loop {
            let topic = self.topic_or_create(name)?;
            let mut st = lock(&topic.state);
            if st.dead {
                continue;
            }
            {
                let mut ss = lock(&sub.state);
                match ss.life {
                    subscriber::Life::Open => {}
                    subscriber::Life::Closed(reason) => {
                        return Err(HubError::SubscriberClosed { reason })
                    }
                    subscriber::Life::Dropped => {
                        return Err(HubError::SubscriberClosed {
                            reason: CloseReason::Shutdown,
                        })
                    }
                }
                if ss.topics.contains(name) {
                    return Err(HubError::AlreadyJoined {
                        topic: name.to_owned(),
                    });
                }
                let limit = self.config.max_topics_per_subscriber;
                if ss.topics.len() >= limit {
                    return Err(HubError::TooManyJoins { limit });
                }
                // Recorded under the subscriber lock together with the
                // open-check: a concurrent close either sees this topic and
                // detaches it, or happened first and we returned above.
                ss.topics.insert(Arc::clone(&topic.name));
            }
            let outcome = st.resume(since);
            let reset_reason = since
                .filter(|_| outcome.is_reset())
                .map(|s| st.reset_reason(s));
            st.subscribers.insert(sub.id, Arc::clone(sub));
            st.last_activity = Instant::now();
            drop(st);
            match &outcome {
                JoinOutcome::Resumed { replay, .. } => {
                    self.stats
                        .replayed
                        .fetch_add(replay.len() as u64, Ordering::Relaxed);
                }
                JoinOutcome::Reset { .. } => {
                    self.stats.resets.fetch_add(1, Ordering::Relaxed);
                    let by_reason = match reset_reason {
                        Some(ResetReason::Epoch) => &self.stats.resets_epoch,
                        Some(ResetReason::Ahead) => &self.stats.resets_ahead,
                        Some(ResetReason::Evicted | ResetReason::Servable) | None => {
                            &self.stats.resets_evicted
                        }
                    };
                    by_reason.fetch_add(1, Ordering::Relaxed);
                }
                JoinOutcome::Fresh { .. } => {}
            }
            return Ok(outcome);
        }
    }

    fn leave(&self, sub: &SubShared, name: &str) -> bool {
        // Topic lock first (same order as join) so a racing join and leave of
        // one subscriber leave the topic map and the subscriber's set agreeing.
        if let Some(topic) = self.lookup(name) {
            let mut st = lock(&topic.state);
            let was_in = lock(&sub.state).topics.remove(name);
            if was_in {
                st.subscribers.remove(&sub.id);
                st.last_activity = Instant::now();
            }
            return was_in;
        }
        // No such topic: at most a stale entry (the subscriber was pruned and
        // the topic swept).
        lock(&sub.state).topics.remove(name)
    }

    /// Removes subscriber `id` from `topics` (except `skip`), one topic lock
    /// at a time.
    fn detach(&self, id: SubscriberId, topics: &HashSet<Arc<str>>, skip: Option<&Arc<str>>) {
        let now = Instant::now();
        for name in topics {
            if skip.is_some_and(|s| s == name) {
                continue;
            }
            if let Some(topic) = self.lookup(name) {
                let mut st = lock(&topic.state);
                if st.subscribers.remove(&id).is_some() {
                    st.last_activity = now;
                }
            }
        }
    }

    fn unregister(&self, id: SubscriberId) {
        if lock(&self.registry).remove(&id).is_some() {
            self.stats.subscribers.fetch_sub(1, Ordering::Relaxed);
        }
    }
}
