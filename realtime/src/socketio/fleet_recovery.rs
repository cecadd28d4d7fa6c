//! Connection state recovery across a fleet: a client whose node died (or whose balancer sent
//! it elsewhere) resumes its session on another node.
//!
//! A node keeps in-memory what recovery needs on that node (`recovery`'s delivery log); another
//! node can only read what is in Redis, and a node that is killed writes nothing on its way
//! out. So, in a fleet:
//!
//! * each socket's **session record** ([`SessionRecord`]: socket id, rooms, and for each of its
//!   topics the epoch it is in) is written to a [`SessionStore`] (Redis) when the socket
//!   connects and again whenever its topics change, and kept alive by its node for as long as
//!   the socket is connected; after a disconnection (or the node's death) it lives for the
//!   namespace's `max_disconnection_duration`;
//! * each event's **offset** says, besides the count the local log uses, where the socket stood
//!   in every one of its topics once it had this event ([`FleetOffset`]:
//!   `<count>~<fingerprint>~<seq>.<seq>...`, the seqs in the topics' sorted order). The client
//!   hands its last offset back when it reconnects; with the record, any node knows exactly
//!   which messages of each topic the client had processed, and replays the rest from the
//!   fleet's history. The fingerprint ([`fingerprint`]) names the topics and their epochs the
//!   seqs belong to: an offset from before a change the record does not show yet (a join
//!   whose record write had not landed when the node died) matches no record, and the client
//!   gets a new session, never a wrong replay.
//!
//! Records are versioned by an **incarnation**, a random id per socket: the node that recovers
//! a session writes its own, and the old node's late writes (it noticed the dead transport
//! after the client had moved on) no longer touch the record.

use std::fmt;

use futures_util::future::BoxFuture;
use serde::{Deserialize, Serialize};

use crate::hub::Epoch;

/// One socket's session as any node of the fleet can read it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionRecord {
    /// The socket id (kept across a recovery).
    pub sid: String,
    /// The namespace.
    pub nsp: String,
    /// The rooms, the socket's own included.
    pub rooms: Vec<String>,
    /// Each topic the socket listens to, with the epoch its positions are in, sorted by topic.
    pub topics: Vec<(String, Epoch)>,
    /// Which life of the session wrote this ([`SessionStore`]).
    pub incarnation: u64,
}

/// The record's JSON in Redis.
#[derive(Serialize, Deserialize)]
struct Stored {
    sid: String,
    nsp: String,
    rooms: Vec<String>,
    topics: Vec<(String, String)>,
}

impl SessionRecord {
    /// The record's state as stored (the incarnation is stored beside it, for the store's
    /// conditional writes).
    pub fn encode_state(&self) -> String {
        let stored = Stored {
            sid: self.sid.clone(),
            nsp: self.nsp.clone(),
            rooms: self.rooms.clone(),
            topics: self
                .topics
                .iter()
                .map(|(t, e)| (t.clone(), e.to_string()))
                .collect(),
        };
        serde_json::to_string(&stored).unwrap_or_default()
    }

    /// A record from its stored state and incarnation; `None` for anything else.
    pub fn decode(state: &[u8], incarnation: u64) -> Option<SessionRecord> {
        let stored: Stored = serde_json::from_slice(state).ok()?;
        let topics = stored
            .topics
            .into_iter()
            .map(|(t, e)| Some((t, e.parse().ok()?)))
            .collect::<Option<Vec<_>>>()?;
        Some(SessionRecord {
            sid: stored.sid,
            nsp: stored.nsp,
            rooms: stored.rooms,
            topics,
            incarnation,
        })
    }
}

/// Where the fleet keeps its sessions (Redis, [`crate::cluster::sessions`]), for the
/// namespace's `max_disconnection_duration` after a socket disconnected. Writes are handed over
/// without waiting and done in the order they were made.
pub trait SessionStore: Send + Sync + 'static {
    /// Writes `record` for the session `pid`, kept alive while its socket is connected.
    /// `takeover`: a new life of the session (a new socket, or one recovered here), written
    /// whatever incarnation the record had; otherwise only over the same incarnation.
    fn save(&self, pid: &str, record: SessionRecord, takeover: bool);
    /// The socket of that incarnation disconnected and may come back: the record lives the
    /// whole `max_disconnection_duration` from now, no longer refreshed.
    fn release(&self, pid: &str, incarnation: u64);
    /// The socket of that incarnation is gone for good: the record goes.
    fn remove(&self, pid: &str, incarnation: u64);
    /// The record of `pid`, if there is one (`None` too when the store cannot be read).
    fn load(&self, pid: &str) -> BoxFuture<'static, Option<SessionRecord>>;
}

/// The store as [`super::RecoveryOptions`] holds it (compared by identity).
#[derive(Clone)]
pub struct FleetSessions(pub std::sync::Arc<dyn SessionStore>);

impl fmt::Debug for FleetSessions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("FleetSessions")
    }
}

impl PartialEq for FleetSessions {
    fn eq(&self, other: &Self) -> bool {
        std::sync::Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for FleetSessions {}

/// Characters of a fingerprint.
const FINGERPRINT_LEN: usize = 6;

/// Names a socket's topics and their epochs in a few characters (36 bits of FNV-1a over them,
/// URL-safe base64): what an offset's seqs are positions in.
pub fn fingerprint<'a>(topics: impl IntoIterator<Item = (&'a str, Epoch)>) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut hash = 0xcbf2_9ce4_8422_2325_u64;
    let mut eat = |bytes: &[u8]| {
        for b in bytes {
            hash = (hash ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3);
        }
    };
    for (topic, epoch) in topics {
        eat(topic.as_bytes());
        eat(&[0]);
        eat(&epoch.raw().to_be_bytes());
    }
    (0..FINGERPRINT_LEN)
        .map(|i| ALPHABET[((hash >> (6 * i)) & 63) as usize] as char)
        .collect()
}

/// An event's offset in a fleet: the local log's count, the fingerprint of the socket's topics,
/// and the seq it had processed up to in each (in the topics' sorted order).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FleetOffset {
    pub count: u64,
    pub fingerprint: String,
    pub seqs: Vec<u64>,
}

/// Topics an offset describes at most: beyond it, the socket's events carry the count only, and
/// a recovery on another node is refused (a socket in hundreds of rooms would otherwise send
/// kilobytes with every event).
pub const MAX_OFFSET_TOPICS: usize = 32;

impl fmt::Display for FleetOffset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}~{}~", self.count, self.fingerprint)?;
        for (i, seq) in self.seqs.iter().enumerate() {
            if i > 0 {
                f.write_str(".")?;
            }
            write!(f, "{seq}")?;
        }
        Ok(())
    }
}

impl FleetOffset {
    /// An offset a client sent back; `None` unless it is exactly what [`fmt::Display`] writes.
    pub fn parse(s: &str) -> Option<FleetOffset> {
        let mut parts = s.split('~');
        let (count, fingerprint, seqs) = (parts.next()?, parts.next()?, parts.next()?);
        if parts.next().is_some() {
            return None;
        }
        let number = |n: &str| {
            (!n.is_empty() && n.len() <= 20 && n.bytes().all(|b| b.is_ascii_digit()))
                .then(|| n.parse::<u64>().ok())
                .flatten()
        };
        let fingerprint_ok = fingerprint.len() == FINGERPRINT_LEN
            && fingerprint
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !fingerprint_ok {
            return None;
        }
        let seqs = seqs.split('.').map(number).collect::<Option<Vec<u64>>>()?;
        if seqs.len() > MAX_OFFSET_TOPICS {
            return None;
        }
        Some(FleetOffset {
            count: number(count)?,
            fingerprint: fingerprint.to_string(),
            seqs,
        })
    }
}

/// The count an offset names, in either form (`17`, or a [`FleetOffset`]'s `17~...`).
pub fn offset_count(s: &str) -> Option<u64> {
    let count = s.split_once('~').map_or(s, |(c, _)| c);
    if count.is_empty() || count.len() > 20 || !count.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    count.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fleet_offset_is_the_count_the_fingerprint_and_a_seq_per_topic() {
        let o = FleetOffset {
            count: 17,
            fingerprint: "Ab3_e-".into(),
            seqs: vec![1234, 0, 5],
        };
        assert_eq!(o.to_string(), "17~Ab3_e-~1234.0.5");
        assert_eq!(FleetOffset::parse("17~Ab3_e-~1234.0.5"), Some(o));
        assert_eq!(offset_count("17~Ab3_e-~1234.0.5"), Some(17));
        assert_eq!(offset_count("17"), Some(17));
        for bad in [
            "",
            "17",
            "17~Ab3_e-",
            "17~Ab3_e-~",
            "17~Ab3_e-~1..2",
            "17~Ab3_e~1",
            "17~Ab3_e-x~1",
            "17~Ab3_e!~1",
            "x~Ab3_e-~1",
            "17~Ab3_e-~1~2",
            "17~Ab3_e-~-1",
            "17~Ab3_e-~99999999999999999999999",
        ] {
            assert_eq!(FleetOffset::parse(bad), None, "{bad:?}");
        }
        let many = format!("1~Ab3_e-~{}", vec!["1"; MAX_OFFSET_TOPICS + 1].join("."));
        assert_eq!(FleetOffset::parse(&many), None);
        for bad in ["", "~", "x~1", "1x", "-1"] {
            assert_eq!(offset_count(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn the_fingerprint_names_the_topics_and_their_epochs() {
        let e = |n| Epoch::from_raw(n);
        let fp = fingerprint([("news", e(1)), ("sio:/", e(2))]);
        assert_eq!(fp.len(), FINGERPRINT_LEN);
        assert_eq!(fp, fingerprint([("news", e(1)), ("sio:/", e(2))]));
        assert_ne!(fp, fingerprint([("news", e(1)), ("sio:/", e(3))]));
        assert_ne!(fp, fingerprint([("news", e(1))]));
        assert_ne!(fp, fingerprint([("new", e(1)), ("ssio:/", e(2))]));
        assert_ne!(fp, fingerprint([("sio:/", e(2)), ("news", e(1))]));
    }

    #[test]
    fn a_record_is_stored_as_json_beside_its_incarnation() {
        let r = SessionRecord {
            sid: "s1".into(),
            nsp: "/".into(),
            rooms: vec!["news".into(), "s1".into()],
            topics: vec![
                ("news".into(), Epoch::from_raw(1)),
                ("sio:/".into(), Epoch::from_raw(0xab)),
            ],
            incarnation: 7,
        };
        let state = r.encode_state();
        assert_eq!(
            state,
            r#"{"sid":"s1","nsp":"/","rooms":["news","s1"],"topics":[["news","0000000000000001"],["sio:/","00000000000000ab"]]}"#
        );
        assert_eq!(SessionRecord::decode(state.as_bytes(), 7), Some(r));
        assert_eq!(SessionRecord::decode(b"{}", 7), None);
        assert_eq!(
            SessionRecord::decode(
                br#"{"sid":"s1","nsp":"/","rooms":[],"topics":[["news","xyz"]]}"#,
                7
            ),
            None
        );
    }
}
