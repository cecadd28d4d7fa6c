//! The Redis shell around the pure parts: one command connection (the scripts) and one pub/sub
//! connection (`PSUBSCRIBE` of every topic's channel), kept up by a supervisor task that
//! reconnects with backoff and, after each (re)subscription, has every followed topic read what
//! it may have missed. Every decision (ordering, dedupe, gaps, resets) is the [`Cursor`]'s.
//!
//! The same two connections serve the fleet's other Redis traffic (socket.io's adapter
//! protocol, Laravel's broadcaster): a [`Listener`] gets the messages of the channels and
//! patterns it asked for ([`Backplane::listen`], subscribed again on every reconnect), and
//! sends its own commands on the command connection ([`Backplane::command`],
//! [`Backplane::commands`]).
//!
//! Publishing while Redis is unreachable fails at once with [`BackplaneError::Unavailable`]:
//! the caller answers 503, nothing is accepted and dropped.
//!
//! A node follows only the topics it has local subscribers for ([`Backplane::follow`]): frames
//! of other topics are read off the subscription and dropped, so its memory grows with its own
//! topics, not the fleet's.
//!
//! Publishes are sent in the order [`Backplane::submit`] is called, by one writer task that
//! pipelines what is waiting into one round trip (so a busy node pays one round trip per batch,
//! not per publish, and one sender's messages keep their order: Redis runs the scripts in the
//! order they arrive on the connection).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures_util::StreamExt;
use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, ErrorKind, RedisError, ServerErrorKind, Value};
use thiserror::Error;
use tokio::sync::{mpsc, oneshot, watch, Notify};

use super::cursor::{Cursor, Source, Step};
use super::frame::{self, Body};
use super::history::{self, RawRead, Resume};
use super::keys::Keys;
use super::script::{self, Lua};
use crate::hub::{Epoch, MessageId, Payload, Position};
use crate::sync::lock;

/// Settings of one node's backplane.
#[derive(Clone)]
pub struct BackplaneConfig {
    /// `redis://[user[:password]@]host[:port][/db]` or `rediss://...` (TLS).
    pub url: String,
    /// PEM root certificates to trust for `rediss://` instead of the system's (a private CA).
    pub tls_root_pem: Option<Vec<u8>>,
    /// Key and channel prefix ([`super::keys`]).
    pub key_prefix: String,
    /// This node's id, written into every frame it publishes.
    pub node_id: String,
    /// Frames kept per topic (the hub's `history_len`).
    pub history_len: usize,
    /// Bytes kept per topic (the hub's `history_max_bytes`).
    pub history_max_bytes: usize,
    /// An idle topic's keys expire after this (0: never). Default: the hub's idle topic TTL.
    pub history_ttl: Duration,
    /// How long a frame may wait for its predecessors before the history is read.
    pub gap_grace: Duration,
    /// Connecting (TCP, TLS, AUTH, SELECT) may take this long.
    pub connect_timeout: Duration,
    /// A command may take this long; a publish that times out fails (its outcome unknown to
    /// the caller, its frame still ordered for every node if it ran).
    pub response_timeout: Duration,
    /// First reconnect delay; doubles up to `backoff_max`, with jitter.
    pub backoff_min: Duration,
    /// Longest reconnect delay.
    pub backoff_max: Duration,
    /// The pub/sub link is pinged this often, so a silent loss is noticed.
    pub ping_interval: Duration,
}

impl BackplaneConfig {
    /// Defaults matching the hub's ([`crate::hub::HubConfig`]) for `url`.
    pub fn new(url: impl Into<String>, node_id: impl Into<String>) -> Self {
        let hub = crate::hub::HubConfig::default();
        BackplaneConfig {
            url: url.into(),
            tls_root_pem: None,
            key_prefix: super::keys::DEFAULT_PREFIX.to_string(),
            node_id: node_id.into(),
            history_len: hub.history_len,
            history_max_bytes: hub.history_max_bytes,
            history_ttl: hub.idle_topic_ttl,
            gap_grace: Duration::from_millis(200),
            connect_timeout: Duration::from_secs(2),
            response_timeout: Duration::from_secs(2),
            backoff_min: Duration::from_millis(50),
            backoff_max: Duration::from_secs(5),
            ping_interval: Duration::from_secs(1),
        }
    }
}

impl std::fmt::Debug for BackplaneConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BackplaneConfig")
            .field("url", &redact(&self.url))
            .field("key_prefix", &self.key_prefix)
            .field("node_id", &self.node_id)
            .finish_non_exhaustive()
    }
}

/// `url` with its password replaced by `***`, for logs and errors.
pub fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let (auth_end, tail) = match rest.find(['/', '?', '#']) {
        Some(i) => (i, &rest[i..]),
        None => (rest.len(), ""),
    };
    let authority = &rest[..auth_end];
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split_once(':').map_or(userinfo, |(u, _)| u);
            let user = if userinfo.contains(':') {
                format!("{user}:***")
            } else {
                "***".to_string()
            };
            format!("{scheme}://{user}@{host}{tail}")
        }
        None => url.to_string(),
    }
}

/// Checks a Redis URL (and the PEM roots to trust for `rediss://`, if any) the way
/// [`Backplane::start`] does, without connecting: for `gateway check`.
pub fn check_url(url: &str, tls_root_pem: Option<&[u8]>) -> Result<(), BackplaneError> {
    client(url, tls_root_pem).map(|_| ())
}

/// The client for `url`: `redis://` or `rediss://` only (a Unix socket would tie every node to
/// one machine). Errors name the URL with its password redacted; redis-rs's own messages never
/// repeat the URL.
fn client(url: &str, tls_root_pem: Option<&[u8]>) -> Result<redis::Client, BackplaneError> {
    let bad = |reason: String| BackplaneError::Url {
        url: redact(url),
        reason,
    };
    if !(url.starts_with("redis://") || url.starts_with("rediss://")) {
        return Err(bad("only redis:// and rediss:// are supported".into()));
    }
    let client = match tls_root_pem {
        Some(_) if !url.starts_with("rediss://") => {
            return Err(bad(
                "certificates to trust are only used with rediss://".into()
            ))
        }
        Some(pem) => redis::Client::build_with_tls(
            url,
            redis::TlsCertificates {
                client_tls: None,
                root_cert: Some(pem.to_vec()),
            },
        ),
        None => redis::Client::open(url),
    }
    .map_err(|e| bad(e.to_string()))?;
    if !matches!(
        client.get_connection_info().addr(),
        redis::ConnectionAddr::Tcp(..) | redis::ConnectionAddr::TcpTls { .. }
    ) {
        return Err(bad("only redis:// and rediss:// are supported".into()));
    }
    Ok(client)
}

/// Why a backplane operation failed.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum BackplaneError {
    /// The URL is not a Redis URL this build can use.
    #[error("invalid redis url {url}: {reason}")]
    Url {
        /// The URL, password redacted.
        url: String,
        /// Why.
        reason: String,
    },
    /// Redis cannot be reached now; the operation was not done.
    #[error("redis is unavailable: {reason}")]
    Unavailable {
        /// The last connection error.
        reason: String,
    },
    /// Redis answered with an error, or did not answer in time (a publish may then have been
    /// done: its frame reaches every node in order all the same).
    #[error("redis command failed: {0}")]
    Command(String),
    /// Redis answered something the scripts never return.
    #[error("unexpected answer from redis: {0}")]
    Protocol(String),
    /// More publishes wait for Redis than [`PUBLISH_QUEUE`]: Redis (or the link to it) does not
    /// keep up; this one was not sent.
    #[error("too many publishes are waiting for redis ({PUBLISH_QUEUE})")]
    Busy,
    /// [`Backplane::shutdown`] was called.
    #[error("the cluster backplane is shut down")]
    ShutDown,
    /// [`Backplane::submit_once`]: another node of the fleet published this message; this
    /// one published nothing.
    #[error("another node published this message")]
    PublishedElsewhere,
}

/// Publishes that may wait for the writer at once; past it [`Backplane::submit`] answers
/// [`BackplaneError::Busy`] rather than let memory grow while Redis is slow. At a 100 us round
/// trip and [`MAX_PIPELINE`] per trip this is well over a second of a saturated node's output.
pub const PUBLISH_QUEUE: usize = 16 * 1024;

/// Publishes sent in one pipelined round trip at most: large enough that a busy node pays one
/// round trip for many publishes, small enough that one batch's answer is a few hundred KiB.
pub const MAX_PIPELINE: usize = 256;

/// What the backplane hands its owner for one topic, in order.
#[derive(Clone, Debug, PartialEq)]
pub enum Delivery {
    /// The first delivery for a followed topic: this node delivers what comes after `at`, in
    /// order. `clean`: the topic was followed while the link was up and no reconnect happened
    /// before this start, so nothing published since the follow was missed; otherwise some may
    /// have been (the owner treats the start as a reset for whoever was already listening).
    Start {
        /// The position delivery continues after.
        at: Position,
        /// Whether nothing since the follow can have been missed.
        clean: bool,
    },
    /// The topic's next message.
    Message {
        /// Its fleet-wide position.
        position: Position,
        /// The message.
        body: Arc<Body>,
    },
    /// Everything up to `to` that was not delivered is lost to this node (declared, never
    /// silent); delivery continues after `to`.
    Reset {
        /// Where delivery continues from.
        to: Position,
    },
}

/// The owner of the deliveries (the hub, later; a recorder in tests). Called with the topic's
/// state locked, hence in order: it must not block and must not call back into the backplane.
pub trait Sink: Send + Sync + 'static {
    /// One delivery for `topic`.
    fn deliver(&self, topic: &str, delivery: Delivery);
}

/// Redis channels and patterns a [`Listener`] wants, subscribed on the pub/sub link beside the
/// hub's topics (and again after every reconnect).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Subscriptions {
    /// `SUBSCRIBE`d: counted by `PUBSUB NUMSUB` (socket.io's adapter counts its servers so).
    pub channels: Vec<String>,
    /// `PSUBSCRIBE`d (glob patterns, escaped by their owner).
    pub patterns: Vec<String>,
}

/// The owner of messages on [`Subscriptions`] of its own (socket.io's adapter protocol,
/// Laravel's broadcaster): called on the pub/sub link's task, in the order Redis sent them, for
/// each message on one of its channels or patterns. It must not block.
pub trait Listener: Send + Sync + 'static {
    /// One message published on `channel`.
    fn on_message(&self, channel: &[u8], payload: &[u8]);
}

/// The state of the link to Redis.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Link {
    /// Never connected yet.
    Connecting,
    /// Both connections are up and subscribed.
    Up,
    /// Lost or never reached; reconnecting with backoff.
    Down {
        /// Why.
        reason: String,
    },
}

/// Counters of one backplane, for health pages and tests.
#[derive(Debug, Default)]
pub struct BackplaneStats {
    /// Times both links were (re)established and subscribed.
    pub connects: AtomicU64,
    /// History reads made to fill a gap or to catch up after a reconnect.
    pub backfills: AtomicU64,
    /// Pub/sub messages on our channels that were not frames (ignored).
    pub bad_frames: AtomicU64,
}

struct Shared {
    /// Where the backplane's tasks run (backfills included, whoever triggers them).
    runtime: tokio::runtime::Handle,
    /// The writer's queue.
    queue: mpsc::Sender<Submitted>,
    config: BackplaneConfig,
    stats: BackplaneStats,
    keys: Keys,
    client: redis::Client,
    sink: Arc<dyn Sink>,
    publish: Lua,
    publish_once: Lua,
    read: Lua,
    /// What else the pub/sub link serves ([`Backplane::listen`]); only ever appended to.
    listeners: Mutex<Vec<(Subscriptions, Arc<dyn Listener>)>>,
    /// Wakes the pub/sub task when a listener was added while the link was up.
    new_listener: Notify,
    node: Arc<str>,
    /// The command connection while the link is up.
    conn: Mutex<Option<MultiplexedConnection>>,
    link: watch::Sender<Link>,
    cursors: Mutex<Cursors>,
    /// Wakes the supervisor when a command saw the connection die.
    broken: Notify,
    shut_down: AtomicBool,
    stop: Notify,
}

#[derive(Default)]
struct Cursors {
    /// The followed topics.
    by_topic: HashMap<Arc<str>, Followed>,
    /// Topics whose cursor holds frames (the only ones a tick must look at).
    waiting: HashSet<Arc<str>>,
}

struct Followed {
    cursor: Cursor<Arc<Body>>,
    /// See [`Delivery::Start`]: followed while the link was up, and no reconnect since.
    clean: bool,
}

/// One publish waiting for the writer.
struct Submitted {
    topic: Arc<str>,
    /// The frame body, encoded by the caller.
    encoded: Vec<u8>,
    /// The same, decoded, for this node's own delivery from the script's reply.
    body: Arc<Body>,
    /// [`Backplane::submit_once`]'s claim key and its time to live in ms.
    claim: Option<(String, u128)>,
    reply: oneshot::Sender<Result<Position, BackplaneError>>,
}

impl Submitted {
    fn answer(self, result: Result<Position, BackplaneError>) {
        if let Err(Err(e)) = self.reply.send(result) {
            // Nobody waits for this publish (its caller did not keep the ticket): the failure
            // is said here, since it cannot be said to anyone else.
            tracing::warn!(topic = %self.topic, error = %e, "cluster: a publish failed and its caller did not wait for the outcome");
        }
    }
}

/// A submitted publish: resolves to its fleet position once Redis has answered. Dropping it
/// does not cancel the publish.
#[derive(Debug)]
pub struct Pending(oneshot::Receiver<Result<Position, BackplaneError>>);

impl Future for Pending {
    type Output = Result<Position, BackplaneError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.0)
            .poll(cx)
            .map(|r| r.unwrap_or(Err(BackplaneError::ShutDown)))
    }
}

/// One node's connection to the fleet's Redis. Cheap to clone.
#[derive(Clone)]
pub struct Backplane {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Backplane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Backplane")
            .field("config", &self.shared.config)
            .field("link", &*self.shared.link.borrow())
            .finish()
    }
}

impl Backplane {
    /// Checks the URL and starts connecting in the background (a node serves while Redis is
    /// away; see [`Backplane::link`]). Must be called within a tokio runtime: the backplane's
    /// tasks run on it for as long as it lives.
    pub fn start(config: BackplaneConfig, sink: Arc<dyn Sink>) -> Result<Self, BackplaneError> {
        let client = client(&config.url, config.tls_root_pem.as_deref())?;
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| {
            BackplaneError::Command("the backplane must be started within a tokio runtime".into())
        })?;
        let (link, _) = watch::channel(Link::Connecting);
        let (queue, submitted) = mpsc::channel(PUBLISH_QUEUE);
        let shared = Arc::new(Shared {
            runtime,
            queue,
            keys: Keys::new(&config.key_prefix),
            node: Arc::from(config.node_id.as_str()),
            client,
            sink,
            publish: Lua::new(script::PUBLISH),
            publish_once: Lua::new(script::PUBLISH_ONCE),
            read: Lua::new(script::READ),
            listeners: Mutex::default(),
            new_listener: Notify::new(),
            conn: Mutex::new(None),
            link,
            cursors: Mutex::default(),
            broken: Notify::new(),
            shut_down: AtomicBool::new(false),
            stop: Notify::new(),
            stats: BackplaneStats::default(),
            config,
        });
        shared.runtime.spawn(supervise(Arc::clone(&shared)));
        shared.runtime.spawn(write(Arc::clone(&shared), submitted));
        Ok(Backplane { shared })
    }

    /// This node's id.
    pub fn node_id(&self) -> &str {
        &self.shared.node
    }

    /// Follows `topic`: its frames reach the [`Sink`] from now on (a frame of a topic nobody
    /// follows is dropped). `with` runs under the delivery lock, so nothing is delivered for
    /// the topic before it returns, with where delivery stands (`None`: nothing delivered or
    /// read yet; the first [`Delivery::Start`] will say). Following twice is following once.
    pub fn follow(&self, topic: &str, with: &mut dyn FnMut(Option<Position>)) {
        let clean = *self.shared.link.borrow() == Link::Up;
        let mut cursors = lock(&self.shared.cursors);
        let at = match cursors.by_topic.get(topic) {
            Some(f) => f.cursor.position(),
            None => {
                cursors.by_topic.insert(
                    Arc::from(topic),
                    Followed {
                        cursor: Cursor::new(),
                        clean,
                    },
                );
                None
            }
        };
        with(at);
    }

    /// Stops following `topic` if `gone()`, asked under the delivery lock, says so (the owner
    /// checks that it did not take the topic up again meanwhile).
    pub fn unfollow(&self, topic: &str, gone: &dyn Fn() -> bool) {
        let mut cursors = lock(&self.shared.cursors);
        if cursors.by_topic.contains_key(topic) && gone() {
            cursors.by_topic.remove(topic);
            cursors.waiting.remove(topic);
        }
    }

    /// Whether `topic` is followed.
    pub fn follows(&self, topic: &str) -> bool {
        lock(&self.shared.cursors).by_topic.contains_key(topic)
    }

    /// Makes sure this node knows where the followed `topic` stands: when nothing has been
    /// delivered for it yet, reads its head in Redis and starts there ([`Delivery::Start`]).
    /// Nothing to do (no round trip) once delivery has started.
    pub async fn locate(&self, topic: &str) -> Result<(), BackplaneError> {
        if self.located(topic) {
            return Ok(());
        }
        let head = self.shared.read_history(topic, None, "resume").await?.head;
        let mut cursors = lock(&self.shared.cursors);
        let key = match cursors.by_topic.get_key_value(topic) {
            Some((k, _)) => Arc::clone(k),
            None => return Ok(()),
        };
        self.shared
            .step(&mut cursors, &key, |c, out| c.start_at(head, out));
        Ok(())
    }

    /// Whether delivery of `topic` has started here (or it is not followed: nothing to locate).
    pub fn located(&self, topic: &str) -> bool {
        lock(&self.shared.cursors)
            .by_topic
            .get(topic)
            .is_none_or(|f| f.cursor.position().is_some())
    }

    /// The link's state now.
    pub fn link(&self) -> Link {
        self.shared.link.borrow().clone()
    }

    /// Waits until the link is up (or `timeout` passes); true if it is.
    pub async fn wait_up(&self, timeout: Duration) -> bool {
        let mut rx = self.shared.link.subscribe();
        tokio::time::timeout(timeout, rx.wait_for(|l| *l == Link::Up))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// Publishes `payload` to `topic` for the whole fleet: one script run assigns its position,
    /// records it in the topic's history and publishes it. Every node (this one included)
    /// delivers it to its [`Sink`] in position order, once. See [`Backplane::submit`].
    pub async fn publish(
        &self,
        topic: &str,
        id: MessageId,
        payload: Arc<Payload>,
    ) -> Result<Position, BackplaneError> {
        self.submit(topic, id, payload, None)?.await
    }

    /// Hands a publish to the writer now, and returns what resolves to its position. Publishes
    /// reach Redis in the order of the calls; this node delivers its own publish from the
    /// script's reply, without waiting for the pub/sub echo. `origin`: the local subscriber
    /// that sent it ([`Body::origin`]).
    ///
    /// Fails at once, sending nothing, while the link is not up ([`BackplaneError::Unavailable`])
    /// or when too many publishes wait already ([`BackplaneError::Busy`]).
    pub fn submit(
        &self,
        topic: &str,
        id: MessageId,
        payload: Arc<Payload>,
        origin: Option<u64>,
    ) -> Result<Pending, BackplaneError> {
        self.enqueue(topic, id, payload, origin, None)
    }

    /// [`Backplane::submit`] for a message that every node of the fleet receives and only one
    /// may publish: the first node to run it with `claim` (a key from
    /// [`super::keys::Keys::claim`], kept `claim_ttl`) publishes, the others get
    /// [`BackplaneError::PublishedElsewhere`] ([`script::PUBLISH_ONCE`]).
    pub fn submit_once(
        &self,
        claim: String,
        claim_ttl: Duration,
        topic: &str,
        id: MessageId,
        payload: Arc<Payload>,
    ) -> Result<Pending, BackplaneError> {
        self.enqueue(
            topic,
            id,
            payload,
            None,
            Some((claim, claim_ttl.as_millis().max(1))),
        )
    }

    fn enqueue(
        &self,
        topic: &str,
        id: MessageId,
        payload: Arc<Payload>,
        origin: Option<u64>,
        claim: Option<(String, u128)>,
    ) -> Result<Pending, BackplaneError> {
        let s = &*self.shared;
        if s.shut_down.load(Ordering::Acquire) {
            return Err(BackplaneError::ShutDown);
        }
        if *s.link.borrow() != Link::Up {
            return Err(s.unavailable());
        }
        let encoded = frame::encode_body(&s.node, id, &payload, origin);
        let (reply, answer) = oneshot::channel();
        let item = Submitted {
            topic: Arc::from(topic),
            encoded,
            body: Arc::new(Body {
                node: Arc::clone(&s.node),
                id,
                payload,
                origin,
            }),
            claim,
            reply,
        };
        match s.queue.try_send(item) {
            Ok(()) => Ok(Pending(answer)),
            Err(mpsc::error::TrySendError::Full(_)) => Err(BackplaneError::Busy),
            Err(mpsc::error::TrySendError::Closed(_)) => Err(BackplaneError::ShutDown),
        }
    }

    /// What a client resuming `topic` from `since` gets, from the fleet's history.
    pub async fn resume(&self, topic: &str, since: Position) -> Result<Resume, BackplaneError> {
        let read = self
            .shared
            .read_history(topic, Some(since), "resume")
            .await?;
        Ok(history::resume(since, &read))
    }

    /// The topic's current position (the topic is created, with a new epoch, if Redis has no
    /// trace of it).
    pub async fn head(&self, topic: &str) -> Result<Position, BackplaneError> {
        Ok(self.shared.read_history(topic, None, "resume").await?.head)
    }

    /// The counters.
    pub fn stats(&self) -> &BackplaneStats {
        &self.shared.stats
    }

    /// Serves `listener` from the pub/sub link: `subscriptions` are subscribed now if the link
    /// is up, and on every (re)connection. A message reaches the listener whose channel or
    /// pattern it came through.
    pub fn listen(&self, subscriptions: Subscriptions, listener: Arc<dyn Listener>) {
        lock(&self.shared.listeners).push((subscriptions, listener));
        self.shared.new_listener.notify_one();
    }

    /// Runs one command on the command connection (`PUBLISH`, `PUBSUB NUMSUB`): for the
    /// listeners' own traffic. Fails at once while the link is down.
    pub async fn command(&self, cmd: &redis::Cmd) -> Result<Value, BackplaneError> {
        let s = &*self.shared;
        if s.shut_down.load(Ordering::Acquire) {
            return Err(BackplaneError::ShutDown);
        }
        let Some(mut conn) = lock(&s.conn).clone() else {
            return Err(s.unavailable());
        };
        cmd.query_async(&mut conn).await.map_err(|e| s.failed(e))
    }

    /// Runs commands as one pipelined round trip, in order (see [`Backplane::command`]).
    pub async fn commands(&self, pipe: &redis::Pipeline) -> Result<Vec<Value>, BackplaneError> {
        let s = &*self.shared;
        if s.shut_down.load(Ordering::Acquire) {
            return Err(BackplaneError::ShutDown);
        }
        let Some(mut conn) = lock(&s.conn).clone() else {
            return Err(s.unavailable());
        };
        pipe.query_async(&mut conn).await.map_err(|e| s.failed(e))
    }

    /// Where this node's delivery of `topic` stands (`None`: nothing seen yet).
    pub fn delivered(&self, topic: &str) -> Option<Position> {
        lock(&self.shared.cursors)
            .by_topic
            .get(topic)
            .and_then(|f| f.cursor.position())
    }

    /// Runs `lua` on the command connection (`EVALSHA`, else `EVAL`), as the hub's own scripts
    /// run: for the fleet's other records in Redis (node addresses, Socket.IO sessions), which
    /// share the link, its reconnects and its failures.
    pub(crate) async fn script(
        &self,
        lua: &Lua,
        keys: &[String],
        args: &[Vec<u8>],
    ) -> Result<Value, BackplaneError> {
        self.shared.run(lua, keys, args).await
    }

    /// The key prefix's names ([`Keys`]).
    pub(crate) fn keys(&self) -> &Keys {
        &self.shared.keys
    }

    /// Stops the supervisor and refuses further operations.
    pub fn shutdown(&self) {
        self.shared.shut_down.store(true, Ordering::Release);
        self.shared.stop.notify_waiters();
        *lock(&self.shared.conn) = None;
    }
}

fn parse_publish_reply(v: &Value) -> Result<Position, BackplaneError> {
    let bad = || BackplaneError::Protocol(format!("publish script returned {v:?}"));
    let Value::Array(items) = v else {
        return Err(bad());
    };
    match items.as_slice() {
        [Value::BulkString(epoch), Value::Int(seq)] => {
            let epoch: Epoch = std::str::from_utf8(epoch)
                .ok()
                .and_then(|e| e.parse().ok())
                .ok_or_else(bad)?;
            let seq = u64::try_from(*seq)
                .ok()
                .filter(|s| *s > 0)
                .ok_or_else(bad)?;
            Ok(Position::new(epoch, seq))
        }
        _ => Err(bad()),
    }
}

fn parse_read_reply(v: &Value) -> Result<RawRead, BackplaneError> {
    let bad = || BackplaneError::Protocol(format!("read script returned {v:?}"));
    let Value::Array(items) = v else {
        return Err(bad());
    };
    match items.as_slice() {
        [Value::BulkString(epoch), Value::Int(seq), Value::Array(frames)] => {
            let epoch: Epoch = std::str::from_utf8(epoch)
                .ok()
                .and_then(|e| e.parse().ok())
                .ok_or_else(bad)?;
            let seq = u64::try_from(*seq).map_err(|_| bad())?;
            let frames = frames
                .iter()
                .map(|f| match f {
                    Value::BulkString(b) => Ok(b.clone()),
                    _ => Err(bad()),
                })
                .collect::<Result<_, _>>()?;
            Ok(RawRead {
                head: Position::new(epoch, seq),
                frames,
            })
        }
        _ => Err(bad()),
    }
}

/// Whether an error means the connection is gone (rather than a refused command).
fn is_link_error(e: &RedisError) -> bool {
    e.is_io_error() || e.is_connection_dropped() || e.is_connection_refusal() || e.is_timeout()
}

impl Shared {
    fn unavailable(&self) -> BackplaneError {
        match &*self.link.borrow() {
            Link::Down { reason } => BackplaneError::Unavailable {
                reason: reason.clone(),
            },
            Link::Connecting => BackplaneError::Unavailable {
                reason: "not connected yet".into(),
            },
            Link::Up => BackplaneError::Unavailable {
                reason: "reconnecting".into(),
            },
        }
    }

    /// Runs a script: `EVALSHA`, and `EVAL` when Redis does not know it (`NOSCRIPT`).
    async fn run(
        &self,
        lua: &Lua,
        keys: &[String],
        args: &[Vec<u8>],
    ) -> Result<Value, BackplaneError> {
        if self.shut_down.load(Ordering::Acquire) {
            return Err(BackplaneError::ShutDown);
        }
        let Some(mut conn) = lock(&self.conn).clone() else {
            return Err(self.unavailable());
        };
        let invoke = |cmd: &str, head: &str| {
            let mut c = redis::cmd(cmd);
            c.arg(head).arg(keys.len()).arg(keys).arg(args);
            c
        };
        let mut result = invoke("EVALSHA", &lua.sha)
            .query_async::<Value>(&mut conn)
            .await;
        if matches!(&result, Err(e) if e.kind() == ErrorKind::Server(ServerErrorKind::NoScript)) {
            result = invoke("EVAL", lua.source)
                .query_async::<Value>(&mut conn)
                .await;
        }
        result.map_err(|e| self.failed(e))
    }

    /// What a failed command means: a dead connection makes the supervisor reconnect (and
    /// publishes fail fast until then); anything else is this command's failure.
    fn failed(&self, e: RedisError) -> BackplaneError {
        if is_link_error(&e) && !e.is_timeout() {
            *lock(&self.conn) = None;
            self.broken.notify_one();
            BackplaneError::Unavailable {
                reason: e.to_string(),
            }
        } else {
            BackplaneError::Command(e.to_string())
        }
    }

    /// Runs one batch of publishes as one pipelined round trip, in order, and answers each.
    async fn publish_batch(self: &Arc<Self>, batch: Vec<Submitted>) {
        if self.shut_down.load(Ordering::Acquire) {
            batch
                .into_iter()
                .for_each(|b| b.answer(Err(BackplaneError::ShutDown)));
            return;
        }
        let Some(mut conn) = lock(&self.conn).clone() else {
            let e = self.unavailable();
            batch.into_iter().for_each(|b| b.answer(Err(e.clone())));
            return;
        };
        let mut retry = Vec::new();
        match self.pipeline(&mut conn, &batch, false).await {
            Err(e) => batch.into_iter().for_each(|b| b.answer(Err(e.clone()))),
            Ok(replies) => {
                for (item, reply) in batch.into_iter().zip(replies) {
                    match reply {
                        // Redis lost its script cache (`SCRIPT FLUSH`; a restart drops the
                        // connection, and `establish` loads the scripts again): the script did
                        // not run, send it whole. Should another node load it meanwhile, a
                        // later publish of this batch may have run before this one.
                        Value::ServerError(e) if e.kind() == Some(ServerErrorKind::NoScript) => {
                            retry.push(item)
                        }
                        reply => self.published(item, &reply),
                    }
                }
            }
        }
        if retry.is_empty() {
            return;
        }
        match self.pipeline(&mut conn, &retry, true).await {
            Err(e) => retry.into_iter().for_each(|b| b.answer(Err(e.clone()))),
            Ok(replies) => {
                for (item, reply) in retry.into_iter().zip(replies) {
                    self.published(item, &reply);
                }
            }
        }
    }

    /// Sends the publish script for each of `batch` (`EVALSHA`, or `EVAL` with `whole`) in one
    /// pipeline; one reply per publish, errors included.
    async fn pipeline(
        &self,
        conn: &mut MultiplexedConnection,
        batch: &[Submitted],
        whole: bool,
    ) -> Result<Vec<Value>, BackplaneError> {
        let c = &self.config;
        let (max_len, max_bytes, ttl) = (
            c.history_len.to_string(),
            c.history_max_bytes.to_string(),
            c.history_ttl.as_millis().to_string(),
        );
        let mut pipe = redis::pipe();
        pipe.ignore_errors();
        for item in batch {
            let topic = &*item.topic;
            let lua = match item.claim {
                Some(_) => &self.publish_once,
                None => &self.publish,
            };
            let cmd = pipe
                .cmd(if whole { "EVAL" } else { "EVALSHA" })
                .arg(if whole { lua.source } else { &lua.sha })
                .arg(if item.claim.is_some() { 3 } else { 2 })
                .arg(self.keys.meta(topic))
                .arg(self.keys.log(topic));
            if let Some((key, _)) = &item.claim {
                cmd.arg(key);
            }
            cmd.arg(self.keys.channel(topic))
                .arg(Epoch::random().to_string())
                .arg(&item.encoded)
                .arg(&max_len)
                .arg(&max_bytes)
                .arg(&ttl);
            if let Some((_, claim_ttl)) = &item.claim {
                cmd.arg(claim_ttl.to_string());
            }
        }
        let replies: Vec<Value> = pipe.query_async(conn).await.map_err(|e| self.failed(e))?;
        if replies.len() != batch.len() {
            return Err(BackplaneError::Protocol(format!(
                "{} replies to {} publishes",
                replies.len(),
                batch.len()
            )));
        }
        Ok(replies)
    }

    /// One publish's reply: its position to the caller, its delivery to this node's cursor.
    fn published(self: &Arc<Self>, item: Submitted, reply: &Value) {
        let position = match reply {
            Value::ServerError(e) => Err(BackplaneError::Command(e.to_string())),
            Value::Nil if item.claim.is_some() => Err(BackplaneError::PublishedElsewhere),
            reply => parse_publish_reply(reply),
        };
        if let Ok(position) = position {
            self.on_frame(&item.topic, Source::Reply, position, Arc::clone(&item.body));
        }
        item.answer(position);
    }

    async fn read_history(
        &self,
        topic: &str,
        since: Option<Position>,
        mode: &str,
    ) -> Result<RawRead, BackplaneError> {
        let (epoch, seq) = match since {
            Some(p) => (p.epoch.to_string(), p.seq.to_string()),
            None => (String::new(), "0".to_string()),
        };
        let reply = self
            .run(
                &self.read,
                &[self.keys.meta(topic), self.keys.log(topic)],
                &[
                    Epoch::random().to_string().into_bytes(),
                    epoch.into_bytes(),
                    seq.into_bytes(),
                    mode.as_bytes().to_vec(),
                    self.config.history_ttl.as_millis().to_string().into_bytes(),
                ],
            )
            .await?;
        parse_read_reply(&reply)
    }

    /// Feeds one frame to its topic's cursor and carries out what it asks (nothing for a topic
    /// this node does not follow).
    fn on_frame(
        self: &Arc<Self>,
        topic: &str,
        source: Source,
        position: Position,
        body: Arc<Body>,
    ) {
        let mut cursors = lock(&self.cursors);
        let key = match cursors.by_topic.get_key_value(topic) {
            Some((k, _)) => Arc::clone(k),
            None => return,
        };
        self.step(&mut cursors, &key, |c, out| {
            c.on_frame(Instant::now(), source, position, body, out)
        });
    }

    /// Runs `f` on `topic`'s cursor and carries out the steps it produced: a
    /// [`Delivery::Start`] first if the cursor just started, deliveries to the sink (under the
    /// cursors' lock, so in order), fetches spawned.
    fn step(
        self: &Arc<Self>,
        cursors: &mut Cursors,
        topic: &Arc<str>,
        f: impl FnOnce(&mut Cursor<Arc<Body>>, &mut Vec<Step<Arc<Body>>>),
    ) {
        let Some(followed) = cursors.by_topic.get_mut(topic) else {
            return;
        };
        let was_started = followed.cursor.position().is_some();
        let mut steps = Vec::new();
        f(&mut followed.cursor, &mut steps);
        let start = match (was_started, followed.cursor.started_at()) {
            (false, Some(at)) => Some((at, followed.clean)),
            _ => None,
        };
        let held = followed.cursor.held() > 0;
        if held {
            cursors.waiting.insert(Arc::clone(topic));
        } else {
            cursors.waiting.remove(topic);
        }
        if let Some((at, clean)) = start {
            self.sink.deliver(topic, Delivery::Start { at, clean });
        }
        for step in steps {
            match step {
                Step::Deliver { position, item } => self.sink.deliver(
                    topic,
                    Delivery::Message {
                        position,
                        body: item,
                    },
                ),
                Step::Reset { to } => self.sink.deliver(topic, Delivery::Reset { to }),
                Step::Fetch { since } => {
                    self.runtime
                        .spawn(fetch(Arc::clone(self), Arc::clone(topic), since));
                }
            }
        }
    }

    fn tick(self: &Arc<Self>) {
        let now = Instant::now();
        let grace = self.config.gap_grace;
        let mut cursors = lock(&self.cursors);
        let waiting: Vec<Arc<str>> = cursors.waiting.iter().cloned().collect();
        for topic in waiting {
            if !cursors.by_topic.contains_key(&topic) {
                cursors.waiting.remove(&topic);
                continue;
            }
            self.step(&mut cursors, &topic, |c, out| c.on_tick(now, grace, out));
        }
    }

    /// After a (re)subscription: every followed topic reads what it may have missed; one
    /// that has not started yet can no longer start clean (frames may have been lost before
    /// its first).
    fn resync(self: &Arc<Self>) {
        let mut cursors = lock(&self.cursors);
        let topics: Vec<Arc<str>> = cursors.by_topic.keys().cloned().collect();
        for topic in topics {
            if let Some(f) = cursors.by_topic.get_mut(&topic) {
                if f.cursor.position().is_none() {
                    f.clean = false;
                }
            }
            self.step(&mut cursors, &topic, |c, out| c.on_resubscribed(out));
        }
    }
}

/// Reads the history a cursor asked for and hands it back.
async fn fetch(shared: Arc<Shared>, topic: Arc<str>, since: Position) {
    shared.stats.backfills.fetch_add(1, Ordering::Relaxed);
    let read = shared.read_history(&topic, Some(since), "backfill").await;
    let mut cursors = lock(&shared.cursors);
    match read {
        Ok(read) => {
            let fetched = history::backfill(since, &read);
            shared.step(&mut cursors, &topic, |c, out| {
                c.on_fetched(Instant::now(), fetched, out)
            });
        }
        Err(e) => {
            tracing::warn!(topic = %topic, error = %e, "cluster backfill failed; retrying later");
            if let Some(f) = cursors.by_topic.get_mut(&topic) {
                f.cursor.on_fetch_failed();
            }
        }
    }
}

/// Sends what is submitted, in order, a batch per round trip, until shutdown.
async fn write(shared: Arc<Shared>, mut submitted: mpsc::Receiver<Submitted>) {
    let mut batch = Vec::with_capacity(MAX_PIPELINE);
    loop {
        if shared.shut_down.load(Ordering::Acquire) {
            submitted.close();
        }
        tokio::select! {
            n = submitted.recv_many(&mut batch, MAX_PIPELINE) => {
                if n == 0 {
                    return;
                }
            }
            // Closed at the top of the loop; what was queued is answered `ShutDown`.
            _ = shared.stop.notified() => continue,
        }
        shared.publish_batch(std::mem::take(&mut batch)).await;
    }
}

/// Connects both links, subscribes, serves until the pub/sub link fails, and starts again
/// (at once the first time, then after a growing backoff); forever, until shutdown.
async fn supervise(shared: Arc<Shared>) {
    let c = &shared.config;
    let mut backoff = c.backoff_min;
    loop {
        if shared.shut_down.load(Ordering::Acquire) {
            return;
        }
        let reason = match establish(&shared).await {
            Ok(link) => {
                // Catch up before the link counts as up: a topic followed from then on starts
                // clean.
                shared.resync();
                shared.stats.connects.fetch_add(1, Ordering::Relaxed);
                shared.link.send_replace(Link::Up);
                tracing::info!(url = %redact(&c.url), node = %shared.node, "cluster: connected to redis");
                backoff = c.backoff_min;
                let reason = serve(&shared, link).await;
                if shared.shut_down.load(Ordering::Acquire) {
                    return;
                }
                tracing::warn!(url = %redact(&c.url), reason = %reason, "cluster: redis pub/sub link lost");
                shared.link.send_replace(Link::Down { reason });
                continue;
            }
            Err(reason) => reason,
        };
        if shared.shut_down.load(Ordering::Acquire) {
            return;
        }
        tracing::warn!(url = %redact(&c.url), reason = %reason, retry_in = ?backoff, "cluster: cannot reach redis");
        shared.link.send_replace(Link::Down { reason });
        // Jitter (up to +50 %) so that a fleet does not reconnect in lockstep.
        let jitter = backoff.mul_f64(rand::random::<f64>() * 0.5);
        tokio::select! {
            _ = tokio::time::sleep(backoff + jitter) => {}
            _ = shared.stop.notified() => return,
        }
        backoff = (backoff * 2).min(c.backoff_max);
    }
}

/// Makes sure the command link answers (keeping the one there is: publishes go on while only
/// the subscription is being re-established, and are backfilled to every node after it), then
/// opens and subscribes the pub/sub link.
async fn establish(shared: &Shared) -> Result<PubSubLink, String> {
    let c = &shared.config;
    let existing = lock(&shared.conn).clone();
    let alive = match existing {
        Some(mut conn) => matches!(
            tokio::time::timeout(
                c.response_timeout,
                redis::cmd("PING").query_async::<Value>(&mut conn)
            )
            .await,
            Ok(Ok(_))
        ),
        None => false,
    };
    if !alive {
        *lock(&shared.conn) = None;
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(c.connect_timeout))
            .set_response_timeout(Some(c.response_timeout));
        let conn = shared
            .client
            .get_multiplexed_async_connection_with_config(&config)
            .await
            .map_err(|e| e.to_string())?;
        *lock(&shared.conn) = Some(conn);
    }
    // The publish writer sends `EVALSHA` only: a new connection may be to a restarted server
    // with an empty script cache.
    let conn = lock(&shared.conn).clone();
    if let Some(mut conn) = conn {
        for lua in [&shared.publish, &shared.publish_once, &shared.read] {
            let loaded = tokio::time::timeout(
                c.response_timeout,
                redis::cmd("SCRIPT")
                    .arg("LOAD")
                    .arg(lua.source)
                    .query_async::<Value>(&mut conn),
            )
            .await;
            match loaded {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => return Err(format!("loading a script: {e}")),
                Err(_) => return Err("timed out loading a script".into()),
            }
        }
    }
    let mut pubsub = tokio::time::timeout(c.connect_timeout, shared.client.get_async_pubsub())
        .await
        .map_err(|_| "timed out connecting the pub/sub link".to_string())?
        .map_err(|e| e.to_string())?;
    tokio::time::timeout(c.response_timeout, pubsub.psubscribe(shared.keys.pattern()))
        .await
        .map_err(|_| "timed out subscribing".to_string())?
        .map_err(|e| e.to_string())?;
    let (mut sink, stream) = pubsub.split();
    let mut routes = Routes::default();
    routes.subscribe_new(shared, &mut sink).await?;
    Ok(PubSubLink {
        sink,
        stream,
        routes,
    })
}

/// A subscribed pub/sub link: the hub's pattern and the listeners' subscriptions so far.
struct PubSubLink {
    sink: redis::aio::PubSubSink,
    stream: redis::aio::PubSubStream,
    routes: Routes,
}

/// Where the pub/sub link's messages go besides the hub's topics: the [`Listener`] of each
/// channel and pattern subscribed on this link so far.
#[derive(Default)]
struct Routes {
    /// Listeners subscribed on this link (a prefix of `Shared::listeners`).
    subscribed: usize,
    channels: HashMap<Vec<u8>, Arc<dyn Listener>>,
    patterns: HashMap<Vec<u8>, Arc<dyn Listener>>,
}

impl Routes {
    /// Subscribes the listeners added since the last call, through `sink`.
    async fn subscribe_new(
        &mut self,
        shared: &Shared,
        sink: &mut redis::aio::PubSubSink,
    ) -> Result<(), String> {
        let new: Vec<(Subscriptions, Arc<dyn Listener>)> = {
            let listeners = lock(&shared.listeners);
            listeners
                .get(self.subscribed..)
                .unwrap_or_default()
                .to_vec()
        };
        let timeout = shared.config.response_timeout;
        for (subs, listener) in new {
            if !subs.channels.is_empty() {
                tokio::time::timeout(timeout, sink.subscribe(&subs.channels))
                    .await
                    .map_err(|_| "timed out subscribing".to_string())?
                    .map_err(|e| e.to_string())?;
            }
            if !subs.patterns.is_empty() {
                tokio::time::timeout(timeout, sink.psubscribe(&subs.patterns))
                    .await
                    .map_err(|_| "timed out subscribing".to_string())?
                    .map_err(|e| e.to_string())?;
            }
            for c in subs.channels {
                self.channels.insert(c.into_bytes(), Arc::clone(&listener));
            }
            for p in subs.patterns {
                self.patterns.insert(p.into_bytes(), Arc::clone(&listener));
            }
            self.subscribed += 1;
        }
        Ok(())
    }

    /// The listener of a message that came through `pattern` (a pattern subscription) or on
    /// `channel`.
    fn listener(&self, pattern: Option<&[u8]>, channel: &[u8]) -> Option<&Arc<dyn Listener>> {
        match pattern {
            Some(p) => self.patterns.get(p),
            None => self.channels.get(channel),
        }
    }
}

/// Reads the pub/sub link until it fails; returns why.
async fn serve(shared: &Arc<Shared>, link: PubSubLink) -> String {
    let c = &shared.config;
    let PubSubLink {
        mut sink,
        mut stream,
        mut routes,
    } = link;
    let mut tick = tokio::time::interval(c.gap_grace.max(Duration::from_millis(10)) / 4);
    let mut ping = tokio::time::interval(c.ping_interval);
    let hub_pattern = shared.keys.pattern().into_bytes();
    loop {
        tokio::select! {
            msg = stream.next() => {
                let Some(msg) = msg else {
                    return "the pub/sub connection closed".into();
                };
                let channel: Vec<u8> = msg.get_channel().unwrap_or_default();
                let pattern: Option<Vec<u8>> = msg.get_pattern().unwrap_or_default();
                if pattern.as_deref() != Some(hub_pattern.as_slice()) {
                    if let Some(listener) = routes.listener(pattern.as_deref(), &channel) {
                        listener.on_message(&channel, msg.get_payload_bytes());
                    }
                    continue;
                }
                let Some(topic) = shared.keys.topic_of(&channel) else { continue };
                // Every node hears every topic of the fleet: decode only what this one follows.
                if !lock(&shared.cursors).by_topic.contains_key(topic) {
                    continue;
                }
                match frame::decode(msg.get_payload_bytes()) {
                    Ok((position, body)) => {
                        shared.on_frame(topic, Source::Echo, position, Arc::new(body));
                    }
                    Err(e) => {
                        shared.stats.bad_frames.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(topic = %topic, error = %e, "cluster: undecodable frame ignored");
                    }
                }
            }
            _ = tick.tick() => shared.tick(),
            _ = ping.tick() => {
                match tokio::time::timeout(c.response_timeout, sink.ping::<Value>()).await {
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => return format!("ping failed: {e}"),
                    Err(_) => return "ping timed out".into(),
                }
            }
            _ = shared.new_listener.notified() => {
                if let Err(e) = routes.subscribe_new(shared, &mut sink).await {
                    return e;
                }
            }
            _ = shared.broken.notified() => return "a command found the connection closed".into(),
            _ = shared.stop.notified() => return "shut down".into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_redacted() {
        assert_eq!(
            redact("redis://127.0.0.1:6379/0"),
            "redis://127.0.0.1:6379/0"
        );
        assert_eq!(redact("redis://:pw@h/1"), "redis://:***@h/1");
        assert_eq!(
            redact("rediss://alice:s3:cr@t@h:6380/2"),
            "rediss://alice:***@h:6380/2"
        );
        assert_eq!(redact("redis://pw@h"), "redis://***@h");
        assert_eq!(redact("not a url"), "not a url");
    }

    #[test]
    fn script_replies_are_checked() {
        let ok = Value::Array(vec![
            Value::BulkString(b"00000000000000ff".to_vec()),
            Value::Int(3),
        ]);
        assert_eq!(
            parse_publish_reply(&ok),
            Ok(Position::new(Epoch::from_raw(255), 3))
        );
        for bad in [
            Value::Nil,
            Value::Array(vec![Value::BulkString(b"ff".to_vec()), Value::Int(3)]),
            Value::Array(vec![
                Value::BulkString(b"00000000000000ff".to_vec()),
                Value::Int(0),
            ]),
            Value::Array(vec![
                Value::BulkString(b"00000000000000ff".to_vec()),
                Value::Int(-1),
            ]),
        ] {
            assert!(parse_publish_reply(&bad).is_err(), "{bad:?}");
        }
        let read = Value::Array(vec![
            Value::BulkString(b"00000000000000ff".to_vec()),
            Value::Int(0),
            Value::Array(vec![]),
        ]);
        assert_eq!(
            parse_read_reply(&read),
            Ok(RawRead {
                head: Position::new(Epoch::from_raw(255), 0),
                frames: vec![]
            })
        );
        assert!(parse_read_reply(&Value::Array(vec![Value::Int(1)])).is_err());
    }
}
