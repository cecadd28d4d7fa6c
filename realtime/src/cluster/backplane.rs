//! The Redis shell around the pure parts: one command connection (the scripts) and one pub/sub
//! connection (`PSUBSCRIBE` of every topic's channel), kept up by a supervisor task that
//! reconnects with backoff and, after each (re)subscription, has every followed topic read what
//! it may have missed. Every decision (ordering, dedupe, gaps, resets) is the [`Cursor`]'s.
//!
//! Publishing while Redis is unreachable fails at once with [`BackplaneError::Unavailable`]:
//! the caller answers 503, nothing is accepted and dropped.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, ErrorKind, RedisError, ServerErrorKind, Value};
use thiserror::Error;
use tokio::sync::{watch, Notify};

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
    /// [`Backplane::shutdown`] was called.
    #[error("the cluster backplane is shut down")]
    ShutDown,
}

/// What the backplane hands its owner for one topic, in order.
#[derive(Clone, Debug, PartialEq)]
pub enum Delivery {
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
    config: BackplaneConfig,
    stats: BackplaneStats,
    keys: Keys,
    client: redis::Client,
    sink: Arc<dyn Sink>,
    publish: Lua,
    read: Lua,
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
    by_topic: HashMap<Arc<str>, Cursor<Arc<Body>>>,
    /// Topics whose cursor holds frames (the only ones a tick must look at).
    waiting: HashSet<Arc<str>>,
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
    /// away; see [`Backplane::link`]). Must be called within a tokio runtime.
    pub fn start(config: BackplaneConfig, sink: Arc<dyn Sink>) -> Result<Self, BackplaneError> {
        let client = client(&config.url, config.tls_root_pem.as_deref())?;
        let (link, _) = watch::channel(Link::Connecting);
        let shared = Arc::new(Shared {
            keys: Keys::new(&config.key_prefix),
            node: Arc::from(config.node_id.as_str()),
            client,
            sink,
            publish: Lua::new(script::PUBLISH),
            read: Lua::new(script::READ),
            conn: Mutex::new(None),
            link,
            cursors: Mutex::default(),
            broken: Notify::new(),
            shut_down: AtomicBool::new(false),
            stop: Notify::new(),
            stats: BackplaneStats::default(),
            config,
        });
        tokio::spawn(supervise(Arc::clone(&shared)));
        Ok(Backplane { shared })
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
    /// delivers it to its [`Sink`] in position order, once.
    pub async fn publish(
        &self,
        topic: &str,
        id: MessageId,
        payload: Arc<Payload>,
    ) -> Result<Position, BackplaneError> {
        let s = &*self.shared;
        let body = frame::encode_body(&s.node, id, &payload);
        let c = &s.config;
        let reply = s
            .run(
                &s.publish,
                &[s.keys.meta(topic), s.keys.log(topic)],
                &[
                    s.keys.channel(topic).into_bytes(),
                    Epoch::random().to_string().into_bytes(),
                    body,
                    c.history_len.to_string().into_bytes(),
                    c.history_max_bytes.to_string().into_bytes(),
                    c.history_ttl.as_millis().to_string().into_bytes(),
                ],
            )
            .await?;
        let position = parse_publish_reply(&reply)?;
        let body = Arc::new(Body {
            node: Arc::clone(&s.node),
            id,
            payload,
        });
        self.shared.on_frame(topic, Source::Reply, position, body);
        Ok(position)
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

    /// Where this node's delivery of `topic` stands (`None`: nothing seen yet).
    pub fn delivered(&self, topic: &str) -> Option<Position> {
        lock(&self.shared.cursors)
            .by_topic
            .get(topic)
            .and_then(|c| c.position())
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
        result.map_err(|e| {
            if is_link_error(&e) && !e.is_timeout() {
                // The supervisor reconnects; until then publishes fail fast.
                *lock(&self.conn) = None;
                self.broken.notify_one();
                BackplaneError::Unavailable {
                    reason: e.to_string(),
                }
            } else {
                BackplaneError::Command(e.to_string())
            }
        })
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

    /// Feeds one frame to its topic's cursor and carries out what it asks.
    fn on_frame(
        self: &Arc<Self>,
        topic: &str,
        source: Source,
        position: Position,
        body: Arc<Body>,
    ) {
        let mut steps = Vec::new();
        let mut cursors = lock(&self.cursors);
        let cursors = &mut *cursors;
        let key: Arc<str> = match cursors.by_topic.get_key_value(topic) {
            Some((k, _)) => Arc::clone(k),
            None => Arc::from(topic),
        };
        let cursor = cursors.by_topic.entry(Arc::clone(&key)).or_default();
        cursor.on_frame(Instant::now(), source, position, body, &mut steps);
        let held = cursor.held() > 0;
        self.apply(&key, steps, held, cursors);
    }

    /// Hands deliveries to the sink (under the cursors' lock, so in order) and starts fetches.
    fn apply(
        self: &Arc<Self>,
        topic: &Arc<str>,
        steps: Vec<Step<Arc<Body>>>,
        held: bool,
        cursors: &mut Cursors,
    ) {
        if held {
            cursors.waiting.insert(Arc::clone(topic));
        } else {
            cursors.waiting.remove(topic);
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
                    tokio::spawn(fetch(Arc::clone(self), Arc::clone(topic), since));
                }
            }
        }
    }

    fn tick(self: &Arc<Self>) {
        let now = Instant::now();
        let mut cursors = lock(&self.cursors);
        let cursors = &mut *cursors;
        let waiting: Vec<Arc<str>> = cursors.waiting.iter().cloned().collect();
        for topic in waiting {
            let mut steps = Vec::new();
            let Some(cursor) = cursors.by_topic.get_mut(&topic) else {
                cursors.waiting.remove(&topic);
                continue;
            };
            cursor.on_tick(now, self.config.gap_grace, &mut steps);
            let held = cursor.held() > 0;
            self.apply(&topic, steps, held, cursors);
        }
    }

    /// After a (re)subscription: every followed topic reads what it may have missed.
    fn resync(self: &Arc<Self>) {
        let mut cursors = lock(&self.cursors);
        let cursors = &mut *cursors;
        let topics: Vec<Arc<str>> = cursors.by_topic.keys().cloned().collect();
        for topic in topics {
            let mut steps = Vec::new();
            let Some(cursor) = cursors.by_topic.get_mut(&topic) else {
                continue;
            };
            cursor.on_resubscribed(&mut steps);
            let held = cursor.held() > 0;
            self.apply(&topic, steps, held, cursors);
        }
    }
}

/// Reads the history a cursor asked for and hands it back.
async fn fetch(shared: Arc<Shared>, topic: Arc<str>, since: Position) {
    shared.stats.backfills.fetch_add(1, Ordering::Relaxed);
    let read = shared.read_history(&topic, Some(since), "backfill").await;
    let mut cursors = lock(&shared.cursors);
    let cursors = &mut *cursors;
    let Some(cursor) = cursors.by_topic.get_mut(&topic) else {
        return;
    };
    let mut steps = Vec::new();
    match read {
        Ok(read) => cursor.on_fetched(Instant::now(), history::backfill(since, &read), &mut steps),
        Err(e) => {
            tracing::warn!(topic = %topic, error = %e, "cluster backfill failed; retrying later");
            cursor.on_fetch_failed();
        }
    }
    let held = cursor.held() > 0;
    shared.apply(&topic, steps, held, cursors);
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
            Ok(pubsub) => {
                shared.link.send_replace(Link::Up);
                tracing::info!(url = %redact(&c.url), "cluster: connected to redis");
                backoff = c.backoff_min;
                shared.stats.connects.fetch_add(1, Ordering::Relaxed);
                shared.resync();
                let reason = serve(&shared, pubsub).await;
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
async fn establish(shared: &Shared) -> Result<redis::aio::PubSub, String> {
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
    let mut pubsub = tokio::time::timeout(c.connect_timeout, shared.client.get_async_pubsub())
        .await
        .map_err(|_| "timed out connecting the pub/sub link".to_string())?
        .map_err(|e| e.to_string())?;
    tokio::time::timeout(c.response_timeout, pubsub.psubscribe(shared.keys.pattern()))
        .await
        .map_err(|_| "timed out subscribing".to_string())?
        .map_err(|e| e.to_string())?;
    Ok(pubsub)
}

/// Reads the pub/sub link until it fails; returns why.
async fn serve(shared: &Arc<Shared>, pubsub: redis::aio::PubSub) -> String {
    let c = &shared.config;
    let (mut sink, mut stream) = pubsub.split();
    let mut tick = tokio::time::interval(c.gap_grace.max(Duration::from_millis(10)) / 4);
    let mut ping = tokio::time::interval(c.ping_interval);
    loop {
        tokio::select! {
            msg = stream.next() => {
                let Some(msg) = msg else {
                    return "the pub/sub connection closed".into();
                };
                let channel: Vec<u8> = msg.get_channel().unwrap_or_default();
                let Some(topic) = shared.keys.topic_of(&channel) else { continue };
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
