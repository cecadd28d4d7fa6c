//! What flows through the hub: payloads, messages and the ids that name them.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use serde_json::Value;

use super::position::{Epoch, Position};

/// Identifies one subscriber (one connection's queue) within this process.
///
/// Carried as [`Message::origin`] so a transport can leave the sender out of
/// its own relay (Socket.IO `socket.to(room).emit`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SubscriberId(u64);

impl SubscriberId {
    pub(super) fn next() -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        SubscriberId(NEXT.fetch_add(1, Ordering::Relaxed))
    }

    /// The raw value (for logs and transport-side maps).
    pub const fn raw(self) -> u64 {
        self.0
    }

    /// A subscriber id from its raw value: a fleet message carries its sender's id back to
    /// the node that published it ([`crate::cluster::frame`]).
    pub const fn from_raw(raw: u64) -> Self {
        SubscriberId(raw)
    }
}

impl fmt::Display for SubscriberId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Names one broadcast, however many topics it was published to.
///
/// [`Hub::publish_many`](super::Hub::publish_many) gives every per-topic copy
/// the same id, so a subscriber that is in several of those topics (a socket
/// in two rooms of one `to(a).to(b).emit`) can deliver it once. The high 64
/// bits are random per process and the low 64 bits a counter, so ids are
/// unique in the process and, practically, across the nodes a future bus
/// connects.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct MessageId(u128);

impl MessageId {
    /// A new id, never returned before in this process.
    pub fn generate() -> Self {
        static NONCE: OnceLock<u64> = OnceLock::new();
        static COUNTER: AtomicU64 = AtomicU64::new(1);
        let nonce = *NONCE.get_or_init(rand::random);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        MessageId(((nonce as u128) << 64) | n as u128)
    }

    /// An id from its raw value (for a bus carrying ids between nodes).
    pub const fn from_raw(raw: u128) -> Self {
        MessageId(raw)
    }

    /// The raw value.
    pub const fn raw(self) -> u128 {
        self.0
    }
}

impl fmt::Display for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:032x}", self.0)
    }
}

/// What a publisher says: an event name, JSON data and binary attachments.
///
/// Why `serde_json::Value` + `Vec<Bytes>` rather than one encoded `Bytes`:
/// every transport frames messages differently (a Socket.IO packet with
/// attachment placeholders, an SSE `data:` line, a JSON WebSocket frame, a
/// long-poll body), so each needs the structure; a pre-encoded blob would force
/// them all to re-parse. Socket.IO's JSON args map to `data` (usually an
/// array) and its binary parts to `attachments`; text-only transports put a
/// string in `data` and leave `attachments` empty. `Bytes` attachments are
/// shared, never copied, by fan-out.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Payload {
    /// Event name; may be empty when the transport has none.
    pub event: String,
    /// JSON data.
    pub data: Value,
    /// Binary attachments, in order (Socket.IO placeholders index into them).
    pub attachments: Vec<Bytes>,
    /// Socket.IO rooms whose sockets leave this message out (a socket's own id is one): how a
    /// sender that is not on this node says "everyone on the topic but that socket" (Laravel's
    /// `toOthers()`), since only the node that has the socket can tell it apart. Other
    /// transports have no rooms and deliver it as usual. Usually empty.
    pub except: Vec<String>,
}

impl Payload {
    /// A payload without attachments.
    pub fn new(event: impl Into<String>, data: Value) -> Self {
        Payload {
            event: event.into(),
            data,
            attachments: Vec::new(),
            except: Vec::new(),
        }
    }

    /// Adds binary attachments.
    pub fn with_attachments(mut self, attachments: Vec<Bytes>) -> Self {
        self.attachments = attachments;
        self
    }

    /// Leaves out the Socket.IO sockets in `rooms` ([`Payload::except`]).
    pub fn with_except(mut self, rooms: Vec<String>) -> Self {
        self.except = rooms;
        self
    }

    /// Approximate heap footprint in bytes, used to bound history memory.
    ///
    /// Walks the JSON with an explicit stack (values built in code can be
    /// nested deeper than the parser's recursion limit).
    pub fn approx_size(&self) -> usize {
        const NODE: usize = std::mem::size_of::<Value>();
        let mut size = std::mem::size_of::<Payload>() + self.event.len();
        size += self.attachments.iter().map(|b| b.len() + 32).sum::<usize>();
        size += self.except.iter().map(|r| r.len() + 24).sum::<usize>();
        let mut stack = vec![&self.data];
        while let Some(v) = stack.pop() {
            size += NODE;
            match v {
                Value::Null | Value::Bool(_) | Value::Number(_) => {}
                Value::String(s) => size += s.len(),
                Value::Array(items) => stack.extend(items.iter()),
                Value::Object(map) => {
                    for (k, v) in map {
                        size += k.len() + 32;
                        stack.push(v);
                    }
                }
            }
        }
        size
    }
}

/// One message in one topic, shared (as `Arc<Message>`) by the topic's history
/// and every subscriber queue it was fanned out to: fan-out costs one `Arc`
/// clone per subscriber, never a copy of the payload.
#[derive(Debug)]
pub struct Message {
    /// Same for every copy of one broadcast (see [`MessageId`]).
    pub id: MessageId,
    /// The topic, exactly as the publisher named it.
    pub topic: Arc<str>,
    /// The topic incarnation `seq` belongs to.
    pub epoch: Epoch,
    /// Position in the topic, contiguous from 1 within `epoch`.
    pub seq: u64,
    /// The content, shared between the per-topic copies of a broadcast.
    pub payload: Arc<Payload>,
    /// The local subscriber that sent it, if any. The hub delivers to the
    /// origin like to anyone else (its position must advance, and a raw
    /// pub/sub client may want its echo); transports that relay "to others"
    /// skip messages where [`Message::is_from`] is true.
    pub origin: Option<SubscriberId>,
    /// True if another node of the fleet published it.
    pub remote: bool,
    /// Published on this node to this one topic only ([`Hub::publish_payload`], or
    /// [`Hub::publish_many`] with one topic): no other topic carries its id, so a subscriber
    /// in several topics cannot get it twice, and a transport that dedupes broadcasts by id
    /// need not look it up nor remember it. False whenever that is not known (a broadcast
    /// to several topics, whatever came through the fleet).
    ///
    /// [`Hub::publish_payload`]: super::Hub::publish_payload
    /// [`Hub::publish_many`]: super::Hub::publish_many
    pub one_topic: bool,
    /// `Some(from)`: not a message but a live reset. The topic went from `from` to this
    /// message's position and what was published in between will never reach this
    /// subscriber (the fleet lost it, or it could not be read back after a lost link).
    /// Transports tell their clients as they tell a reset on resume. Never in history or in
    /// a replay; only hubs in a fleet send them.
    pub reset_from: Option<Position>,
    pub(super) size: usize,
    /// A transport's encoding of the message, made by the first of its subscribers that
    /// delivers it and read by the others ([`Message::encoded`]).
    pub(super) encoded: OnceLock<Encoded>,
}

/// What [`Message::encoded`] keeps: `text`, made for `scope` (whose meaning is the
/// transport's: Socket.IO's is the namespace and whether it speaks Echo).
#[derive(Debug)]
pub(crate) struct Encoded {
    pub(crate) scope: (Box<str>, bool),
    pub(crate) text: Box<str>,
}

impl Message {
    /// The position this message occupies; a client that has processed it
    /// resumes from here.
    pub fn position(&self) -> Position {
        Position::new(self.epoch, self.seq)
    }

    /// Event name.
    pub fn event(&self) -> &str {
        &self.payload.event
    }

    /// JSON data.
    pub fn data(&self) -> &Value {
        &self.payload.data
    }

    /// Binary attachments.
    pub fn attachments(&self) -> &[Bytes] {
        &self.payload.attachments
    }

    /// Whether `id` published this message.
    pub fn is_from(&self, id: SubscriberId) -> bool {
        self.origin == Some(id)
    }

    /// The message encoded for `scope`: made by `encode` at the first call, then read by every
    /// later one (a fan-out's other subscribers, on any thread), without a lock or a
    /// reference count to share. A call for another scope than the first's gets `None`.
    pub(crate) fn encoded(
        &self,
        scope: (&str, bool),
        encode: impl FnOnce() -> String,
    ) -> Option<&str> {
        let kept = self.encoded.get_or_init(|| Encoded {
            scope: (scope.0.into(), scope.1),
            text: encode().into_boxed_str(),
        });
        (&*kept.scope.0 == scope.0 && kept.scope.1 == scope.1).then_some(&*kept.text)
    }

    /// Whether this is a live reset ([`Message::reset_from`]) rather than a message.
    pub fn is_reset(&self) -> bool {
        self.reset_from.is_some()
    }
}
