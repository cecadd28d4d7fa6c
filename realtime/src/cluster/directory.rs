//! Where each node of the fleet takes forwarded requests: a node advertises the address other
//! nodes reach its internal listener at, under its sid tag ([`crate::engineio::node_tag`]),
//! and a node that gets a request for a session another node owns looks the owner up here.
//!
//! The record is `P:node:<tag>` = `{"node": <node_id>, "address": "host:port"}`, written with
//! a TTL ([`RECORD_TTL`]) and refreshed well within it ([`ADVERTISE_EVERY`]) for as long as
//! the node runs: a node that dies stops being found within the TTL, and one shut down
//! properly withdraws its record at once. Lookups are kept for [`FRESH_FOR`] so a busy node
//! asks Redis about an owner once in a while, not per request; while Redis cannot be reached
//! the last answer is used, so forwarding outlives a Redis restart.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use redis::Value;
use serde::{Deserialize, Serialize};

use super::backplane::{Backplane, BackplaneError};
use super::script::Lua;
use crate::sync::lock;

/// How long a node's record outlives its last refresh.
pub const RECORD_TTL: Duration = Duration::from_secs(15);
/// How often a node writes its record again: three times per TTL, so two missed refreshes (a
/// Redis restart, a slow link) do not make it vanish.
pub const ADVERTISE_EVERY: Duration = Duration::from_secs(5);
/// How long a looked-up address is used before Redis is asked again.
pub const FRESH_FOR: Duration = Duration::from_secs(5);
/// The first retry of a failed write; doubled up to [`ADVERTISE_EVERY`].
const RETRY_FIRST: Duration = Duration::from_millis(100);

/// `SET` the record with its TTL in milliseconds.
const ADVERTISE: &str = "redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2]) return 1";
/// The record, or false.
const LOOKUP: &str = "return redis.call('GET', KEYS[1])";
/// Deletes the record if it is still this node's (a restarted node with the same id may have
/// written its own meanwhile).
const WITHDRAW: &str = concat!(
    "if redis.call('GET', KEYS[1]) == ARGV[1] then ",
    "return redis.call('DEL', KEYS[1]) end return 0"
);

/// One node's record.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRecord {
    /// The node's id (`cluster.node_id`), for the operator reading Redis.
    pub node: String,
    /// `host:port` of its internal listener, as other nodes reach it.
    pub address: String,
}

impl NodeRecord {
    /// The record's bytes in Redis.
    pub fn encode(&self) -> String {
        serde_json::json!({"node": self.node, "address": self.address}).to_string()
    }

    /// A record read from Redis; `None` for anything else.
    pub fn decode(bytes: &[u8]) -> Option<NodeRecord> {
        serde_json::from_slice(bytes)
            .ok()
            .filter(|r: &NodeRecord| !r.address.is_empty())
    }
}

/// A lookup kept: the address (or that there is none) and when it was read.
struct Known {
    address: Option<String>,
    at: Instant,
}

/// The fleet's node addresses, as one node sees them. Cheap to share in an `Arc`.
pub struct Directory {
    backplane: Backplane,
    /// Whether this node's own record was written at the last attempt.
    advertised: AtomicBool,
    advertise: Lua,
    lookup: Lua,
    withdraw: Lua,
    known: Mutex<HashMap<String, Known>>,
}

impl Directory {
    pub fn new(backplane: Backplane) -> Directory {
        Directory {
            backplane,
            advertised: AtomicBool::new(false),
            advertise: Lua::new(ADVERTISE),
            lookup: Lua::new(LOOKUP),
            withdraw: Lua::new(WITHDRAW),
            known: Mutex::default(),
        }
    }

    /// Writes this node's record under `tag` now and every [`ADVERTISE_EVERY`] until `stop`
    /// resolves, then withdraws it. A failed write (Redis not reached yet, or lost) is tried
    /// again soon, backing off up to the refresh period.
    pub async fn advertise(
        &self,
        tag: &str,
        record: NodeRecord,
        stop: impl std::future::Future<Output = ()>,
    ) {
        let key = self.backplane.keys().node(tag);
        let value = record.encode();
        let ttl = RECORD_TTL.as_millis().to_string();
        tokio::pin!(stop);
        let mut retry = RETRY_FIRST;
        loop {
            let args = [value.clone().into_bytes(), ttl.clone().into_bytes()];
            let written = self
                .backplane
                .script(&self.advertise, std::slice::from_ref(&key), &args)
                .await;
            let was = self.advertised.swap(written.is_ok(), Ordering::Relaxed);
            let next = match written {
                Ok(_) => {
                    if !was {
                        tracing::info!(tag, address = %record.address, "cluster: this node's internal address is advertised");
                    }
                    retry = RETRY_FIRST;
                    ADVERTISE_EVERY
                }
                Err(e) => {
                    if was {
                        tracing::warn!(tag, error = %e, "cluster: cannot advertise this node's internal address; requests other nodes forward here fail while it is missing");
                    }
                    let wait = retry;
                    retry = (retry * 2).min(ADVERTISE_EVERY);
                    wait
                }
            };
            tokio::select! {
                _ = &mut stop => break,
                _ = tokio::time::sleep(next) => {}
            }
        }
        self.advertised.store(false, Ordering::Relaxed);
        let args = [value.into_bytes()];
        if let Err(e) = self.backplane.script(&self.withdraw, &[key], &args).await {
            tracing::info!(tag, error = %e, "cluster: this node's internal address was not withdrawn; it expires by itself");
        }
    }

    /// Whether this node's record was written at the last attempt (for `/healthz`).
    pub fn advertised(&self) -> bool {
        self.advertised.load(Ordering::Relaxed)
    }

    /// The address of the node tagged `tag`, or `None` when no node has that tag (never had,
    /// or stopped, or died more than [`RECORD_TTL`] ago). While Redis cannot answer, the last
    /// address read is used; with none, the error.
    pub async fn address_of(&self, tag: &str) -> Result<Option<String>, BackplaneError> {
        let now = Instant::now();
        let stale = {
            let known = lock(&self.known);
            match known.get(tag) {
                Some(k) if now.duration_since(k.at) < FRESH_FOR => return Ok(k.address.clone()),
                Some(k) => k.address.clone(),
                None => None,
            }
        };
        let key = self.backplane.keys().node(tag);
        match self.backplane.script(&self.lookup, &[key], &[]).await {
            Ok(value) => {
                let address = match value {
                    Value::BulkString(bytes) => NodeRecord::decode(&bytes).map(|r| r.address),
                    _ => None,
                };
                let mut known = lock(&self.known);
                // A tag is a node of the fleet; the map holds one entry per node ever asked
                // about, but a flood of made-up tags must not grow it: unknown tags are not
                // remembered.
                match &address {
                    Some(_) => {
                        known.insert(
                            tag.to_string(),
                            Known {
                                address: address.clone(),
                                at: now,
                            },
                        );
                    }
                    None => {
                        known.remove(tag);
                    }
                }
                Ok(address)
            }
            Err(e) => match stale {
                Some(address) => Ok(Some(address)),
                None => Err(e),
            },
        }
    }

    /// Forgets what was read about `tag` (its node did not answer at that address): the next
    /// request asks Redis again.
    pub fn forget(&self, tag: &str) {
        lock(&self.known).remove(tag);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_record_is_json_with_its_id_and_address() {
        let r = NodeRecord {
            node: "gw-1".into(),
            address: "10.0.0.5:7070".into(),
        };
        assert_eq!(r.encode(), r#"{"node":"gw-1","address":"10.0.0.5:7070"}"#);
        assert_eq!(NodeRecord::decode(r.encode().as_bytes()), Some(r));
        for bad in [
            &b""[..],
            b"{}",
            b"10.0.0.5:7070",
            br#"{"node":"a","address":""}"#,
        ] {
            assert_eq!(NodeRecord::decode(bad), None, "{bad:?}");
        }
    }
}
