//! Request history for `/__log`, plus the JSON views of request headers
//! shared with `/echo`.
//!
//! Entries keep the request's own `Method`, `Uri` and `HeaderMap` (cheap,
//! mostly reference-counted clones) and are only turned into JSON when a test
//! asks for them, so recording stays off the hot path's critical cost.

use std::borrow::Cow;
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::http::{HeaderMap, HeaderValue, Method, Uri};
use serde::ser::{Serialize, Serializer};

/// How many requests `/__log` remembers; older ones are dropped first.
pub const LOG_CAPACITY: usize = 1000;

/// Bounded, oldest-first history of received requests.
pub struct RequestLog {
    entries: Mutex<VecDeque<Entry>>,
}

struct Entry {
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    peer: Option<SocketAddr>,
    at_ms: u64,
}

/// JSON shape of one `/__log` entry.
#[derive(serde::Serialize)]
struct EntryJson<'a> {
    method: &'a str,
    path: &'a str,
    query: &'a str,
    headers: HeadersJson<'a>,
    peer: Option<SocketAddr>,
    at_ms: u64,
}

impl RequestLog {
    pub fn new() -> Self {
        Self {
            entries: Mutex::new(VecDeque::with_capacity(LOG_CAPACITY)),
        }
    }

    /// Remembers a request as it arrives (before its body is read), so a
    /// request still waiting for a worker slot is already visible.
    pub fn record(
        &self,
        method: &Method,
        uri: &Uri,
        headers: &HeaderMap,
        peer: Option<SocketAddr>,
    ) {
        let entry = Entry {
            method: method.clone(),
            uri: uri.clone(),
            headers: headers.clone(),
            peer,
            at_ms: unix_ms(),
        };
        let mut entries = self.lock();
        if entries.len() == LOG_CAPACITY {
            entries.pop_front();
        }
        entries.push_back(entry);
    }

    pub fn clear(&self) {
        self.lock().clear();
    }

    /// Serialises the whole history as a JSON array, oldest first.
    pub fn to_json(&self) -> serde_json::Result<Vec<u8>> {
        let entries = self.lock();
        let view: Vec<EntryJson<'_>> = entries
            .iter()
            .map(|e| EntryJson {
                method: e.method.as_str(),
                path: e.uri.path(),
                query: e.uri.query().unwrap_or(""),
                headers: HeadersJson(&e.headers),
                peer: e.peer,
                at_ms: e.at_ms,
            })
            .collect();
        serde_json::to_vec(&view)
    }

    /// A panic while holding the lock cannot leave the deque inconsistent
    /// (every mutation is a single call), so a poisoned lock is still usable.
    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<Entry>> {
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Headers as a JSON object `{lowercase-name: value}`. A header that appears
/// several times becomes one value joined with `", "` in arrival order,
/// which is how a proxy is allowed to fold them. Names are in order of first
/// appearance.
pub struct HeadersJson<'a>(pub &'a HeaderMap);

impl Serialize for HeadersJson<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_map(self.0.keys().map(|name| {
            let mut values = self.0.get_all(name).iter();
            let first = values.next().map(lossy).unwrap_or_default();
            let joined = values.fold(first, |mut acc, v| {
                let acc_mut = acc.to_mut();
                acc_mut.push_str(", ");
                acc_mut.push_str(&lossy(v));
                acc
            });
            (name.as_str(), joined)
        }))
    }
}

/// Headers as a JSON array of `[name, value]` pairs, one per header line, so
/// tests can see repeated headers separately (e.g. two `X-Forwarded-For`
/// lines versus one folded line).
///
/// Limitation: hyper's `HeaderMap` lowercases names and groups lines by name
/// (in order of each name's first appearance), so two interleaved repeated
/// headers are not reported in exact wire order.
pub struct HeaderListJson<'a>(pub &'a HeaderMap);

impl Serialize for HeaderListJson<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(
            self.0
                .iter()
                .map(|(name, value)| (name.as_str(), lossy(value))),
        )
    }
}

/// Header values may be arbitrary bytes; JSON needs text, and tests only
/// ever send text, so invalid UTF-8 is replaced rather than rejected.
fn lossy(value: &HeaderValue) -> Cow<'_, str> {
    String::from_utf8_lossy(value.as_bytes())
}
