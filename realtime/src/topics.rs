//! Which topic names a client may use, and how fast one client may create topics.
//!
//! Every transport a browser can reach (SSE, long-poll, `/ws` pub/sub) names hub topics freely,
//! and the app's publish API names them too. Two things must not be reachable that way:
//!
//! * the topics a transport keeps for itself ([`RESERVED_PREFIXES`]): Socket.IO's namespace
//!   topics and the room named by each socket's id (`sio:`, see
//!   [`crate::socketio::room_topic`]), and the rooms of the raw WebSocket endpoints (`ws:`).
//!   Reading them would show another socket's private events live and from history; writing
//!   them would forge its events. Only their owner reaches them, through its own code paths.
//! * unbounded topic creation: a topic lives for the hub's `idle_topic_ttl` after its last use,
//!   so a client that names a new topic per request would fill the hub. [`ClientTopics`] is a
//!   token bucket of new topics per client address; the hub also keeps a share of its topics
//!   for the reserved namespaces (`HubConfig::max_open_topics`), so whatever clients create,
//!   a new Socket.IO connection still gets its room.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::Instant;

use http::StatusCode;

/// Socket.IO's topics ([`crate::socketio::TOPIC_PREFIX`]): its namespaces, rooms and each
/// socket's own room. Defined here, where reservation is decided, so that this module imports
/// no transport while every transport asks it what is reserved.
pub const SOCKETIO_PREFIX: &str = "sio:";

/// The raw WebSocket endpoints' chat and broadcast rooms ([`crate::websocket::TOPIC_PREFIX`]).
pub const WEBSOCKET_PREFIX: &str = "ws:";

/// Prefixes of the topics that belong to one transport.
pub const RESERVED_PREFIXES: &[&str] = &[SOCKETIO_PREFIX, WEBSOCKET_PREFIX];

/// Longest topic name a client or the app may use, in bytes. Centrifugo's `channel_max_length`
/// default: names end up in logs, headers (`X-Topic`), SSE ids and every message.
pub const DEFAULT_MAX_TOPIC_LEN: usize = 255;

/// New topics one client address may create per minute (also the burst). A page subscribes to
/// a handful of topics, so 600 lets an office of a few hundred users behind one NAT address
/// load the page at once, while a script creating thousands per second is stopped after the
/// first 600 and then held to 10 per second. Existing topics are never counted.
pub const DEFAULT_NEW_TOPICS_PER_MINUTE: u32 = 600;

/// Client addresses tracked at most; beyond it, idle (full) buckets are forgotten first, and if
/// every bucket is in use the new address is not limited (the hub's `max_open_topics` still is).
const MAX_TRACKED_CLIENTS: usize = 100_000;

/// The reserved prefix `topic` starts with, if any.
pub fn reserved_prefix(topic: &str) -> Option<&'static str> {
    RESERVED_PREFIXES
        .iter()
        .copied()
        .find(|p| topic.starts_with(p))
}

/// Whether `topic` belongs to a transport's reserved namespace.
pub fn is_reserved(topic: &str) -> bool {
    reserved_prefix(topic).is_some()
}

/// Why a client (or the app) may not use a topic name, or not create one now.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TopicError {
    #[error("topic must not be empty")]
    Empty,
    #[error("topic name is {len} bytes long; the limit is {max}")]
    TooLong { len: usize, max: usize },
    #[error("topic {topic:?} is reserved: topics starting with {prefix:?} belong to {owner} and cannot be used here")]
    Reserved {
        topic: String,
        prefix: &'static str,
        owner: &'static str,
    },
    #[error("too many new topics from this client (limit {per_minute} per minute); retry later or reuse a topic")]
    RateLimited { per_minute: u32 },
}

impl TopicError {
    /// The HTTP status that answers it: 403 for a reserved name (it exists, it is not yours),
    /// 429 for the rate, 400 for a malformed name.
    pub fn status(&self) -> StatusCode {
        match self {
            TopicError::Empty | TopicError::TooLong { .. } => StatusCode::BAD_REQUEST,
            TopicError::Reserved { .. } => StatusCode::FORBIDDEN,
            TopicError::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
        }
    }
}

/// A topic name a client or the app may use: not empty, at most `max_len` bytes, not reserved.
/// A topic with a CR or LF is fine: every transport frames names safely.
pub fn check_name(topic: &str, max_len: usize) -> Result<(), TopicError> {
    if topic.is_empty() {
        return Err(TopicError::Empty);
    }
    if topic.len() > max_len {
        return Err(TopicError::TooLong {
            len: topic.len(),
            max: max_len,
        });
    }
    if let Some(prefix) = reserved_prefix(topic) {
        let owner = if prefix == SOCKETIO_PREFIX {
            "Socket.IO (the app reaches its rooms with POST /emit)"
        } else {
            "the WebSocket endpoints' rooms"
        };
        // Logged short: the name is the client's and may be long.
        let shown: String = topic.chars().take(64).collect();
        return Err(TopicError::Reserved {
            topic: shown,
            prefix,
            owner,
        });
    }
    Ok(())
}

/// The address a limit is kept for: IPv4 as is, IPv6 by its /64 (one host usually has a whole
/// /64, as the rate limiters of nginx users and Cloudflare assume). `None` (no peer known, e.g.
/// a test driving a service directly) is one shared client.
pub fn client_key(ip: Option<IpAddr>) -> Option<IpAddr> {
    ip.map(|ip| match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let bits = u128::from(v6) & !((1u128 << 64) - 1);
                IpAddr::V6(bits.into())
            }
        },
    })
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// Token buckets of new topics per client address.
#[derive(Debug)]
pub struct ClientTopics {
    per_minute: u32,
    buckets: std::sync::Mutex<HashMap<Option<IpAddr>, Bucket>>,
}

impl ClientTopics {
    /// `per_minute` new topics per client per minute (and as the burst); 0 turns the limit off.
    pub fn new(per_minute: u32) -> ClientTopics {
        ClientTopics {
            per_minute,
            buckets: std::sync::Mutex::default(),
        }
    }

    fn refill(&self, b: &mut Bucket, now: Instant) {
        let cap = f64::from(self.per_minute);
        let elapsed = now.saturating_duration_since(b.at).as_secs_f64();
        b.tokens = (b.tokens + elapsed * cap / 60.0).min(cap);
        b.at = now;
    }

    /// Takes one new-topic token for `client`, or says it has none left.
    pub fn take(&self, client: Option<IpAddr>, now: Instant) -> Result<(), TopicError> {
        if self.per_minute == 0 {
            return Ok(());
        }
        let key = client_key(client);
        let cap = f64::from(self.per_minute);
        let mut buckets = crate::sync::lock(&self.buckets);
        if !buckets.contains_key(&key) && buckets.len() >= MAX_TRACKED_CLIENTS {
            buckets.retain(|_, b| {
                self.refill(b, now);
                b.tokens < cap
            });
            if buckets.len() >= MAX_TRACKED_CLIENTS {
                return Ok(());
            }
        }
        let b = buckets.entry(key).or_insert(Bucket {
            tokens: cap,
            at: now,
        });
        self.refill(b, now);
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            Ok(())
        } else {
            Err(TopicError::RateLimited {
                per_minute: self.per_minute,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn reserved_names_are_refused_with_their_owner() {
        assert_eq!(check_name("news", 255), Ok(()));
        assert_eq!(check_name("", 255), Err(TopicError::Empty));
        let e = check_name("sio:/", 255).unwrap_err();
        assert_eq!(e.status(), StatusCode::FORBIDDEN);
        assert!(e.to_string().contains("belong to Socket.IO"), "{e}");
        assert!(check_name("sio:/chat:room", 255).is_err());
        assert!(check_name("ws:/ws:chat", 255).is_err());
        // Only the prefix is reserved.
        assert_eq!(check_name("sio", 255), Ok(()));
        assert_eq!(check_name("a sio:", 255), Ok(()));
    }

    #[test]
    fn long_names_are_refused() {
        assert_eq!(check_name(&"x".repeat(255), 255), Ok(()));
        assert_eq!(
            check_name(&"x".repeat(25_000), 255),
            Err(TopicError::TooLong {
                len: 25_000,
                max: 255
            })
        );
    }

    #[test]
    fn ipv6_clients_are_counted_by_their_slash_64() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:bbbb::2".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(client_key(Some(a)), client_key(Some(b)));
        assert_ne!(client_key(Some(a)), client_key(Some(c)));
        let mapped: IpAddr = "::ffff:10.0.0.1".parse().unwrap();
        assert_eq!(client_key(Some(mapped)), Some("10.0.0.1".parse().unwrap()));
    }

    #[test]
    fn the_bucket_allows_a_burst_then_its_rate() {
        let t = ClientTopics::new(60);
        let now = Instant::now();
        let me = Some("10.0.0.1".parse().unwrap());
        let other = Some("10.0.0.2".parse().unwrap());
        for _ in 0..60 {
            assert_eq!(t.take(me, now), Ok(()));
        }
        assert_eq!(
            t.take(me, now),
            Err(TopicError::RateLimited { per_minute: 60 })
        );
        // Someone else is not affected.
        assert_eq!(t.take(other, now), Ok(()));
        // One per second comes back.
        let later = now + Duration::from_millis(1000);
        assert_eq!(t.take(me, later), Ok(()));
        assert!(t.take(me, later).is_err());
        // Off.
        let off = ClientTopics::new(0);
        for _ in 0..1000 {
            assert_eq!(off.take(me, now), Ok(()));
        }
    }
}
