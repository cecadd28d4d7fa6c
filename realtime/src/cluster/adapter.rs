//! socket.io's classic Redis adapter protocol (`@socket.io/redis-adapter` 8.x `createAdapter`,
//! `@socket.io/redis-emitter` 5.x, and the Ruby/PHP emitters): channel names, the MessagePack
//! broadcast `[uid, packet, opts]`, the requests and responses between nodes, and the rule for
//! which broadcasts a node delivers. Pure functions; the bytes in the tests were captured from
//! the real packages (see the tests' module comment).
//!
//! Channels, for prefix `P` (default `socket.io`) and namespace `nsp`:
//! `P#nsp#` (to all, or to several rooms), `P#nsp#room#` (to exactly one room), `P-request#nsp#`
//! (requests, JSON; MessagePack for broadcast-with-ack), `P-response#nsp#` and
//! `P-response#nsp#uid#` (responses, JSON; MessagePack for broadcast acks).

use rmpv::Value as Mp;
use serde_json::{Map, Value as Json};
use thiserror::Error;

use crate::hub::Payload;

/// The uid `@socket.io/redis-emitter` (and the Ruby/PHP emitters) put in their messages.
pub const EMITTER_UID: &str = "emitter";

/// What the uid of each node of a fleet of gateways starts with ([`node_uid`]). Node's adapter
/// makes 6 alphanumeric characters and the emitters say `emitter`, so no peer's uid starts so.
pub const FLEET_UID_PREFIX: &str = "gateway:";

/// The adapter uid of the fleet's node `node_id`: one per node, and recognizably one of the
/// fleet's ([`from_fleet`]). A `#` would end the uid in a response channel's name, so it is
/// replaced.
pub fn node_uid(node_id: &str) -> String {
    format!("{FLEET_UID_PREFIX}{}", node_id.replace('#', "_"))
}

/// Whether `uid` is a node of this fleet of gateways (which share the hub too).
pub fn from_fleet(uid: &str) -> bool {
    uid.starts_with(FLEET_UID_PREFIX)
}

/// Deepest MessagePack nesting accepted (serde_json's own limit for JSON).
const MAX_DEPTH: usize = 128;

/// Why bytes are not an adapter message.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum AdapterError {
    /// Not MessagePack, or trailing bytes.
    #[error("not a MessagePack message")]
    MsgPack,
    /// Not JSON.
    #[error("not a JSON request: {0}")]
    Json(String),
    /// Valid encoding, wrong shape.
    #[error("unexpected adapter message shape: {0}")]
    Shape(&'static str),
}

// ---- Channels

/// What a channel is, relative to one prefix.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Channel {
    /// `P#nsp#` (`room: None`) or `P#nsp#room#`.
    Broadcast {
        /// Namespace.
        nsp: String,
        /// The one room of a single-room broadcast.
        room: Option<String>,
    },
    /// `P-request#nsp#`.
    Request {
        /// Namespace.
        nsp: String,
    },
    /// `P-response#nsp#` or `P-response#nsp#uid#`.
    Response {
        /// Namespace.
        nsp: String,
        /// The requester, when the response is addressed.
        uid: Option<String>,
    },
}

/// Channel names under one prefix.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Channels {
    prefix: String,
}

impl Channels {
    /// Names under `prefix` (`socket.io` by default).
    pub fn new(prefix: &str) -> Self {
        Channels {
            prefix: prefix.to_string(),
        }
    }

    /// `P#nsp#`.
    pub fn broadcast(&self, nsp: &str) -> String {
        format!("{}#{nsp}#", self.prefix)
    }

    /// `P#nsp#room#`.
    pub fn room(&self, nsp: &str, room: &str) -> String {
        format!("{}#{nsp}#{room}#", self.prefix)
    }

    /// `P-request#nsp#`.
    pub fn request(&self, nsp: &str) -> String {
        format!("{}-request#{nsp}#", self.prefix)
    }

    /// `P-response#nsp#`.
    pub fn response(&self, nsp: &str) -> String {
        format!("{}-response#{nsp}#", self.prefix)
    }

    /// `P-response#nsp#uid#`.
    pub fn response_to(&self, nsp: &str, uid: &str) -> String {
        format!("{}-response#{nsp}#{uid}#", self.prefix)
    }

    /// The pattern a node `PSUBSCRIBE`s for `nsp`'s broadcasts (glob characters escaped).
    pub fn broadcast_pattern(&self, nsp: &str) -> String {
        let mut p = super::keys::glob_escape(&self.broadcast(nsp));
        p.push('*');
        p
    }

    /// What `channel` is. The namespace ends at the first `#` after the prefix (namespaces
    /// are paths); a room may contain `#`.
    pub fn parse(&self, channel: &[u8]) -> Option<Channel> {
        let channel = std::str::from_utf8(channel).ok()?;
        let rest = channel.strip_prefix(self.prefix.as_str())?;
        let (kind, rest) = if let Some(r) = rest.strip_prefix("-request#") {
            (1, r)
        } else if let Some(r) = rest.strip_prefix("-response#") {
            (2, r)
        } else {
            (0, rest.strip_prefix('#')?)
        };
        let (nsp, tail) = rest.split_once('#')?;
        let nsp = nsp.to_string();
        let named = |tail: &str| -> Option<Option<String>> {
            if tail.is_empty() {
                Some(None)
            } else {
                tail.strip_suffix('#').map(|t| Some(t.to_string()))
            }
        };
        Some(match kind {
            0 => Channel::Broadcast {
                nsp,
                room: named(tail)?,
            },
            1 if tail.is_empty() => Channel::Request { nsp },
            2 => Channel::Response {
                nsp,
                uid: named(tail)?,
            },
            _ => return None,
        })
    }
}

// ---- Broadcasts

/// The Socket.IO packet inside an adapter message (`{type, data, nsp, id?}`).
#[derive(Clone, Debug, PartialEq)]
pub struct Packet {
    /// 2 (event); 5 (binary event) from the Ruby/PHP emitters.
    pub kind: u64,
    /// `[event, ...args]`, binary arguments as MessagePack bin.
    pub data: Vec<Mp>,
    /// Namespace (`/` when absent).
    pub nsp: String,
}

/// Broadcast flags (`opts.flags`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Flags {
    /// `volatile`.
    pub volatile: bool,
    /// `compress`, when given.
    pub compress: Option<bool>,
    /// `local`: the sender's node only (a receiving node ignores nothing for it: the sender
    /// does not publish such broadcasts).
    pub local: bool,
    /// `timeout` in ms (broadcast with acks).
    pub timeout: Option<u64>,
}

/// Broadcast options (`opts`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Opts {
    /// Target rooms (empty: the whole namespace).
    pub rooms: Vec<String>,
    /// Rooms whose sockets are left out.
    pub except: Vec<String>,
    /// Flags.
    pub flags: Flags,
}

/// A broadcast message `[uid, packet, opts]`.
#[derive(Clone, Debug, PartialEq)]
pub struct Broadcast {
    /// The sending node (or `emitter`).
    pub uid: String,
    /// The packet.
    pub packet: Packet,
    /// The options.
    pub opts: Opts,
}

fn map_get<'a>(map: &'a [(Mp, Mp)], key: &str) -> Option<&'a Mp> {
    map.iter()
        .find(|(k, _)| k.as_str() == Some(key))
        .map(|(_, v)| v)
}

fn strings(v: Option<&Mp>) -> Result<Vec<String>, AdapterError> {
    match v {
        None | Some(Mp::Nil) => Ok(Vec::new()),
        Some(Mp::Array(items)) => items
            .iter()
            .map(|i| match i {
                Mp::String(s) => s
                    .as_str()
                    .map(str::to_string)
                    .ok_or(AdapterError::Shape("room is not UTF-8")),
                // Node rooms may be numbers (`socket.join(1)`); they travel as numbers.
                Mp::Integer(n) => Ok(n.to_string()),
                _ => Err(AdapterError::Shape("room")),
            })
            .collect(),
        Some(_) => Err(AdapterError::Shape("rooms")),
    }
}

fn decode_packet(v: &Mp) -> Result<Packet, AdapterError> {
    let Mp::Map(map) = v else {
        return Err(AdapterError::Shape("packet"));
    };
    let kind = map_get(map, "type")
        .and_then(Mp::as_u64)
        .ok_or(AdapterError::Shape("packet type"))?;
    let data = match map_get(map, "data") {
        Some(Mp::Array(items)) => items.clone(),
        _ => return Err(AdapterError::Shape("packet data")),
    };
    let nsp = match map_get(map, "nsp") {
        None | Some(Mp::Nil) => "/".to_string(),
        Some(n) => n
            .as_str()
            .ok_or(AdapterError::Shape("packet nsp"))?
            .to_string(),
    };
    Ok(Packet { kind, data, nsp })
}

fn decode_opts(v: &Mp) -> Result<Opts, AdapterError> {
    let Mp::Map(map) = v else {
        return Err(AdapterError::Shape("opts"));
    };
    let mut flags = Flags::default();
    match map_get(map, "flags") {
        // The PHP emitter packs an empty PHP array, which is a MessagePack array.
        None | Some(Mp::Nil) | Some(Mp::Array(_)) => {}
        Some(Mp::Map(f)) => {
            flags.volatile = map_get(f, "volatile").and_then(Mp::as_bool) == Some(true);
            flags.compress = map_get(f, "compress").and_then(Mp::as_bool);
            flags.local = map_get(f, "local").and_then(Mp::as_bool) == Some(true);
            flags.timeout = map_get(f, "timeout").and_then(Mp::as_u64);
        }
        Some(_) => return Err(AdapterError::Shape("flags")),
    }
    Ok(Opts {
        rooms: strings(map_get(map, "rooms"))?,
        except: strings(map_get(map, "except"))?,
        flags,
    })
}

fn read_msgpack(bytes: &[u8]) -> Result<Mp, AdapterError> {
    let mut reader = bytes;
    let v = rmpv::decode::read_value_with_max_depth(&mut reader, MAX_DEPTH)
        .map_err(|_| AdapterError::MsgPack)?;
    if !reader.is_empty() {
        return Err(AdapterError::MsgPack);
    }
    Ok(v)
}

fn write_msgpack(v: &Mp) -> Vec<u8> {
    let mut out = Vec::new();
    // Writing to a Vec cannot fail.
    let _ = rmpv::encode::write_value(&mut out, v);
    out
}

/// Decodes a broadcast message.
pub fn decode_broadcast(bytes: &[u8]) -> Result<Broadcast, AdapterError> {
    let Mp::Array(items) = read_msgpack(bytes)? else {
        return Err(AdapterError::Shape("not an array"));
    };
    let [uid, packet, opts] =
        <[Mp; 3]>::try_from(items).map_err(|_| AdapterError::Shape("not [uid, packet, opts]"))?;
    let uid = uid.as_str().ok_or(AdapterError::Shape("uid"))?.to_string();
    Ok(Broadcast {
        uid,
        packet: decode_packet(&packet)?,
        opts: decode_opts(&opts)?,
    })
}

fn s(v: &str) -> Mp {
    Mp::from(v)
}

fn string_array(v: &[String]) -> Mp {
    Mp::Array(v.iter().map(|r| s(r)).collect())
}

fn packet_value(p: &Packet) -> Mp {
    Mp::Map(vec![
        (s("type"), Mp::from(p.kind)),
        (s("data"), Mp::Array(p.data.clone())),
        (s("nsp"), s(&p.nsp)),
    ])
}

fn flags_value(f: &Flags) -> Mp {
    let mut m = Vec::new();
    if f.volatile {
        m.push((s("volatile"), Mp::Boolean(true)));
    }
    if let Some(c) = f.compress {
        m.push((s("compress"), Mp::Boolean(c)));
    }
    if f.local {
        m.push((s("local"), Mp::Boolean(true)));
    }
    if let Some(t) = f.timeout {
        m.push((s("timeout"), Mp::from(t)));
    }
    Mp::Map(m)
}

fn opts_value(o: &Opts) -> Mp {
    // The adapter's own order (`rooms, except, flags`), not the emitter's.
    Mp::Map(vec![
        (s("rooms"), string_array(&o.rooms)),
        (s("except"), string_array(&o.except)),
        (s("flags"), flags_value(&o.flags)),
    ])
}

/// Encodes a broadcast as a Node `@socket.io/redis-adapter` 8.3 peer does (byte for byte).
pub fn encode_broadcast(b: &Broadcast) -> Vec<u8> {
    write_msgpack(&Mp::Array(vec![
        s(&b.uid),
        packet_value(&b.packet),
        opts_value(&b.opts),
    ]))
}

/// The channel a peer publishes a broadcast on: the room's for exactly one room, else the
/// namespace's.
pub fn broadcast_channel(channels: &Channels, nsp: &str, opts: &Opts) -> String {
    match opts.rooms.as_slice() {
        [room] => channels.room(nsp, room),
        _ => channels.broadcast(nsp),
    }
}

/// Whom a received broadcast is for on this node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    /// Rooms (empty: every socket of the namespace); a socket in several gets it once.
    pub rooms: Vec<String>,
    /// Rooms whose sockets are left out.
    pub except: Vec<String>,
}

/// Whether this node (`own_uid`, serving namespace `nsp`) delivers `b`, received on `channel`,
/// and to whom.
///
/// Ignored: its own messages, other namespaces, a room channel that does not match the
/// message's rooms, and — the Ruby/PHP emitters publish a multi-room emit once per room with
/// the full room list — every copy but the one on the channel of `opts.rooms[0]`, so that a
/// socket in several of the rooms gets it once.
///
/// Also ignored: another node of this fleet's broadcast without `except` rooms. The fleet's
/// nodes share the hub, which delivers such a broadcast to every node's sockets already (in
/// order, with history); its adapter copy is for the other servers. A broadcast with `except`
/// rooms reaches only the sender's own sockets through the hub (they are picked from the
/// sender's room registry), so every other node delivers it from the adapter copy. A fleet
/// node leaves the sender socket out of `except` (it is none of the others' sockets), so
/// `except` is not empty only when the broadcast itself left rooms out.
pub fn target(channel: &Channel, b: &Broadcast, own_uid: &str) -> Option<Target> {
    let Channel::Broadcast { nsp, room } = channel else {
        return None;
    };
    if b.uid == own_uid || b.packet.nsp != *nsp {
        return None;
    }
    if from_fleet(&b.uid) && b.opts.except.is_empty() {
        return None;
    }
    if let Some(room) = room {
        match b.opts.rooms.first() {
            Some(first) if first == room => {}
            // Single-room channel whose message names no rooms: to that room.
            None => {
                return Some(Target {
                    rooms: vec![room.clone()],
                    except: b.opts.except.clone(),
                })
            }
            Some(_) => return None,
        }
    }
    Some(Target {
        rooms: b.opts.rooms.clone(),
        except: b.opts.except.clone(),
    })
}

// ---- MessagePack arguments <-> hub payloads

/// The hub payload of a broadcast packet: event = `data[0]`, data = the other arguments as a
/// JSON array, binary arguments (MessagePack bin, or ext from the PHP emitter's type-5 hack)
/// as attachments referenced by placeholders — the shape Socket.IO rooms read
/// ([`crate::socketio`]). A type-5 packet becomes an ordinary event with attachments.
pub fn to_payload(p: &Packet) -> Result<Payload, AdapterError> {
    let Some((event, args)) = p.data.split_first() else {
        return Err(AdapterError::Shape("no event name"));
    };
    let event = event
        .as_str()
        .ok_or(AdapterError::Shape("event name"))?
        .to_string();
    let mut attachments = Vec::new();
    let args = args
        .iter()
        .map(|a| to_json(a, &mut attachments))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Payload::new(event, Json::Array(args)).with_attachments(attachments))
}

fn to_json(v: &Mp, attachments: &mut Vec<bytes::Bytes>) -> Result<Json, AdapterError> {
    Ok(match v {
        Mp::Nil => Json::Null,
        Mp::Boolean(b) => Json::Bool(*b),
        Mp::Integer(i) => match (i.as_u64(), i.as_i64()) {
            (Some(u), _) => Json::from(u),
            (_, Some(n)) => Json::from(n),
            _ => return Err(AdapterError::Shape("integer")),
        },
        Mp::F32(f) => serde_json::Number::from_f64(f64::from(*f)).map_or(Json::Null, Json::Number),
        Mp::F64(f) => serde_json::Number::from_f64(*f).map_or(Json::Null, Json::Number),
        Mp::String(s) => Json::String(
            s.as_str()
                .ok_or(AdapterError::Shape("string is not UTF-8"))?
                .to_string(),
        ),
        Mp::Binary(b) | Mp::Ext(_, b) => {
            attachments.push(bytes::Bytes::copy_from_slice(b));
            crate::socketio::placeholder(attachments.len() - 1)
        }
        Mp::Array(items) => Json::Array(
            items
                .iter()
                .map(|i| to_json(i, attachments))
                .collect::<Result<_, _>>()?,
        ),
        Mp::Map(entries) => {
            let mut m = Map::with_capacity(entries.len());
            for (k, v) in entries {
                let k = match k {
                    Mp::String(s) => s
                        .as_str()
                        .ok_or(AdapterError::Shape("key is not UTF-8"))?
                        .to_string(),
                    Mp::Integer(i) => i.to_string(),
                    _ => return Err(AdapterError::Shape("map key")),
                };
                m.insert(k, to_json(v, attachments)?);
            }
            Json::Object(m)
        }
    })
}

/// The packet a peer broadcasts for a hub payload (the inverse of [`to_payload`]):
/// placeholders become MessagePack bin again. Numbers are written as notepack.io does
/// (integers in the smallest form, other numbers as float 64).
pub fn from_payload(nsp: &str, payload: &Payload) -> Packet {
    let mut data = Vec::with_capacity(1 + payload.data.as_array().map_or(1, Vec::len));
    data.push(s(&payload.event));
    match &payload.data {
        Json::Array(args) => data.extend(args.iter().map(|a| from_json(a, &payload.attachments))),
        other => data.push(from_json(other, &payload.attachments)),
    }
    Packet {
        kind: 2,
        data,
        nsp: nsp.to_string(),
    }
}

/// One acknowledgement argument as a peer sends it in a broadcast ack (the inverse of
/// [`ack_arg`]): placeholders into `attachments` become MessagePack bin.
pub fn to_msgpack(value: &Json, attachments: &[bytes::Bytes]) -> Mp {
    from_json(value, attachments)
}

/// A peer's acknowledgement argument (a broadcast ack's `packet`) as JSON, its binaries as
/// attachments referenced by placeholders.
pub fn ack_arg(packet: &Mp) -> Result<(Json, Vec<bytes::Bytes>), AdapterError> {
    let mut attachments = Vec::new();
    let value = to_json(packet, &mut attachments)?;
    Ok((value, attachments))
}

fn placeholder_num(m: &Map<String, Json>) -> Option<usize> {
    if m.len() == 2 && m.get("_placeholder") == Some(&Json::Bool(true)) {
        m.get("num")?.as_u64().map(|n| n as usize)
    } else {
        None
    }
}

fn from_json(v: &Json, attachments: &[bytes::Bytes]) -> Mp {
    match v {
        Json::Null => Mp::Nil,
        Json::Bool(b) => Mp::Boolean(*b),
        Json::Number(n) => match (n.as_u64(), n.as_i64(), n.as_f64()) {
            (Some(u), _, _) => Mp::from(u),
            (_, Some(i), _) => Mp::from(i),
            (_, _, Some(f)) => Mp::F64(f),
            _ => Mp::Nil,
        },
        Json::String(s) => Mp::from(s.as_str()),
        Json::Array(items) => Mp::Array(items.iter().map(|i| from_json(i, attachments)).collect()),
        Json::Object(m) => match placeholder_num(m).and_then(|n| attachments.get(n)) {
            Some(bin) => Mp::Binary(bin.to_vec()),
            None => Mp::Map(
                m.iter()
                    .map(|(k, v)| (s(k), from_json(v, attachments)))
                    .collect(),
            ),
        },
    }
}

// ---- Requests and responses

/// `opts` of a request: `{rooms, except}`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Selector {
    /// Rooms (empty: all sockets).
    pub rooms: Vec<String>,
    /// Rooms left out.
    pub except: Vec<String>,
}

/// A request on `P-request#nsp#`.
#[derive(Clone, Debug, PartialEq)]
pub enum Request {
    /// 0 SOCKETS (legacy): ids of the sockets in `rooms`.
    Sockets {
        /// Requester.
        uid: Option<String>,
        /// Correlation id.
        request_id: String,
        /// Rooms.
        rooms: Vec<String>,
    },
    /// 1 ALL_ROOMS.
    AllRooms {
        /// Requester.
        uid: Option<String>,
        /// Correlation id.
        request_id: String,
    },
    /// 2 REMOTE_JOIN (`socketsJoin`): the selected sockets join `rooms`.
    Join {
        /// Requester (`None` from the emitter).
        uid: Option<String>,
        /// Which sockets.
        opts: Selector,
        /// Rooms to join.
        rooms: Vec<String>,
    },
    /// 3 REMOTE_LEAVE (`socketsLeave`).
    Leave {
        /// Requester.
        uid: Option<String>,
        /// Which sockets.
        opts: Selector,
        /// Rooms to leave.
        rooms: Vec<String>,
    },
    /// 4 REMOTE_DISCONNECT (`disconnectSockets`).
    Disconnect {
        /// Requester.
        uid: Option<String>,
        /// Which sockets.
        opts: Selector,
        /// Close the underlying connection too.
        close: bool,
    },
    /// 5 REMOTE_FETCH (`fetchSockets`).
    Fetch {
        /// Requester.
        uid: Option<String>,
        /// Correlation id.
        request_id: String,
        /// Which sockets.
        opts: Selector,
    },
    /// 6 SERVER_SIDE_EMIT: `[event, ...args]` for the servers themselves.
    ServerSideEmit {
        /// Requester.
        uid: Option<String>,
        /// Present when the sender waits for acks.
        request_id: Option<String>,
        /// `[event, ...args]`.
        data: Vec<Json>,
    },
    /// 7 BROADCAST (with acks; MessagePack).
    Broadcast {
        /// Requester.
        uid: Option<String>,
        /// Correlation id.
        request_id: String,
        /// The packet.
        packet: Packet,
        /// Options (flags carry the timeout).
        opts: Opts,
    },
}

fn json_strings(v: Option<&Json>) -> Result<Vec<String>, AdapterError> {
    match v {
        None | Some(Json::Null) => Ok(Vec::new()),
        Some(Json::Array(items)) => items
            .iter()
            .map(|i| match i {
                Json::String(s) => Ok(s.clone()),
                Json::Number(n) => Ok(n.to_string()),
                _ => Err(AdapterError::Shape("room")),
            })
            .collect(),
        Some(_) => Err(AdapterError::Shape("rooms")),
    }
}

fn json_selector(v: Option<&Json>) -> Result<Selector, AdapterError> {
    match v {
        None | Some(Json::Null) => Ok(Selector::default()),
        Some(Json::Object(m)) => Ok(Selector {
            rooms: json_strings(m.get("rooms"))?,
            except: json_strings(m.get("except"))?,
        }),
        Some(_) => Err(AdapterError::Shape("opts")),
    }
}

/// Decodes a request: JSON when it starts with `{` (as the adapter tells them apart), else
/// MessagePack (broadcast with acks).
pub fn decode_request(bytes: &[u8]) -> Result<Request, AdapterError> {
    if bytes.first() != Some(&b'{') {
        return decode_msgpack_request(bytes);
    }
    let v: Json = serde_json::from_slice(bytes).map_err(|e| AdapterError::Json(e.to_string()))?;
    let Json::Object(m) = v else {
        return Err(AdapterError::Shape("request"));
    };
    let uid = m.get("uid").and_then(Json::as_str).map(str::to_string);
    let request_id = m
        .get("requestId")
        .and_then(Json::as_str)
        .map(str::to_string);
    let need_id = || request_id.clone().ok_or(AdapterError::Shape("requestId"));
    let kind = m
        .get("type")
        .and_then(Json::as_u64)
        .ok_or(AdapterError::Shape("type"))?;
    Ok(match kind {
        0 => Request::Sockets {
            uid,
            request_id: need_id()?,
            rooms: json_strings(m.get("rooms"))?,
        },
        1 => Request::AllRooms {
            uid,
            request_id: need_id()?,
        },
        2 | 3 => {
            let opts = json_selector(m.get("opts"))?;
            let rooms = json_strings(m.get("rooms"))?;
            if kind == 2 {
                Request::Join { uid, opts, rooms }
            } else {
                Request::Leave { uid, opts, rooms }
            }
        }
        4 => Request::Disconnect {
            uid,
            opts: json_selector(m.get("opts"))?,
            close: m.get("close").and_then(Json::as_bool).unwrap_or(false),
        },
        5 => Request::Fetch {
            uid,
            request_id: need_id()?,
            opts: json_selector(m.get("opts"))?,
        },
        6 => Request::ServerSideEmit {
            uid,
            request_id,
            data: match m.get("data") {
                Some(Json::Array(d)) if !d.is_empty() => d.clone(),
                _ => return Err(AdapterError::Shape("data")),
            },
        },
        _ => return Err(AdapterError::Shape("request type")),
    })
}

fn decode_msgpack_request(bytes: &[u8]) -> Result<Request, AdapterError> {
    let Mp::Map(m) = read_msgpack(bytes)? else {
        return Err(AdapterError::Shape("request"));
    };
    if map_get(&m, "type").and_then(Mp::as_u64) != Some(7) {
        return Err(AdapterError::Shape("request type"));
    }
    Ok(Request::Broadcast {
        uid: map_get(&m, "uid").and_then(Mp::as_str).map(str::to_string),
        request_id: map_get(&m, "requestId")
            .and_then(Mp::as_str)
            .ok_or(AdapterError::Shape("requestId"))?
            .to_string(),
        packet: decode_packet(map_get(&m, "packet").ok_or(AdapterError::Shape("packet"))?)?,
        opts: decode_opts(map_get(&m, "opts").ok_or(AdapterError::Shape("opts"))?)?,
    })
}

fn selector_json(s: &Selector) -> Json {
    let mut m = Map::new();
    m.insert("rooms".into(), Json::from(s.rooms.clone()));
    m.insert("except".into(), Json::from(s.except.clone()));
    Json::Object(m)
}

/// Encodes a request as a Node `@socket.io/redis-adapter` 8.3 peer does (byte for byte: key
/// order, JSON or MessagePack).
pub fn encode_request(r: &Request) -> Vec<u8> {
    let mut m = Map::new();
    let uid = |m: &mut Map<String, Json>, uid: &Option<String>| {
        if let Some(uid) = uid {
            m.insert("uid".into(), Json::from(uid.as_str()));
        }
    };
    match r {
        Request::Sockets {
            uid: u,
            request_id,
            rooms,
        } => {
            uid(&mut m, u);
            m.insert("requestId".into(), Json::from(request_id.as_str()));
            m.insert("type".into(), Json::from(0));
            m.insert("rooms".into(), Json::from(rooms.clone()));
        }
        Request::AllRooms { uid: u, request_id } => {
            uid(&mut m, u);
            m.insert("requestId".into(), Json::from(request_id.as_str()));
            m.insert("type".into(), Json::from(1));
        }
        Request::Join {
            uid: u,
            opts,
            rooms,
        }
        | Request::Leave {
            uid: u,
            opts,
            rooms,
        } => {
            uid(&mut m, u);
            let kind = if matches!(r, Request::Join { .. }) {
                2
            } else {
                3
            };
            m.insert("type".into(), Json::from(kind));
            m.insert("opts".into(), selector_json(opts));
            m.insert("rooms".into(), Json::from(rooms.clone()));
        }
        Request::Disconnect {
            uid: u,
            opts,
            close,
        } => {
            uid(&mut m, u);
            m.insert("type".into(), Json::from(4));
            m.insert("opts".into(), selector_json(opts));
            m.insert("close".into(), Json::from(*close));
        }
        Request::Fetch {
            uid: u,
            request_id,
            opts,
        } => {
            uid(&mut m, u);
            m.insert("requestId".into(), Json::from(request_id.as_str()));
            m.insert("type".into(), Json::from(5));
            m.insert("opts".into(), selector_json(opts));
        }
        Request::ServerSideEmit {
            uid: u,
            request_id,
            data,
        } => {
            uid(&mut m, u);
            if let Some(id) = request_id {
                m.insert("requestId".into(), Json::from(id.as_str()));
            }
            m.insert("type".into(), Json::from(6));
            m.insert("data".into(), Json::from(data.clone()));
        }
        Request::Broadcast {
            uid: u,
            request_id,
            packet,
            opts,
        } => {
            let mut items = Vec::with_capacity(5);
            if let Some(u) = u {
                items.push((s("uid"), s(u)));
            }
            items.push((s("requestId"), s(request_id)));
            items.push((s("type"), Mp::from(7)));
            items.push((s("packet"), packet_value(packet)));
            items.push((s("opts"), opts_value(opts)));
            return write_msgpack(&Mp::Map(items));
        }
    }
    Json::Object(m).to_string().into_bytes()
}

/// A response on `P-response#nsp#` (or the requester's own response channel).
#[derive(Clone, Debug, PartialEq)]
pub enum Response {
    /// To SOCKETS (ids) and REMOTE_FETCH (socket objects `{id, handshake, rooms, data}`).
    Sockets {
        /// Correlation id.
        request_id: String,
        /// The sockets.
        sockets: Vec<Json>,
    },
    /// To ALL_ROOMS.
    AllRooms {
        /// Correlation id.
        request_id: String,
        /// Every room of this node's namespace.
        rooms: Vec<String>,
    },
    /// A server-side emit's ack (`{type: 6, requestId, data}`).
    ServerSideEmitAck {
        /// Correlation id.
        request_id: String,
        /// The ack's one argument; `None` for an ack with none (node's `cb()`, whose
        /// `undefined` JSON leaves out: `{type: 6, requestId}`).
        data: Option<Json>,
    },
    /// How many clients a broadcast with acks reached on this node (`{type: 8, ...}`).
    BroadcastClientCount {
        /// Correlation id.
        request_id: String,
        /// Clients that will ack.
        client_count: u64,
    },
    /// One client's ack to a broadcast (MessagePack `{type: 9, requestId, packet}`).
    BroadcastAck {
        /// Correlation id.
        request_id: String,
        /// The ack's argument.
        packet: Mp,
    },
}

/// Encodes a response as a Node peer does (byte for byte: key order and encoding).
pub fn encode_response(r: &Response) -> Vec<u8> {
    let mut m = Map::new();
    match r {
        Response::Sockets {
            request_id,
            sockets,
        } => {
            m.insert("requestId".into(), Json::from(request_id.as_str()));
            m.insert("sockets".into(), Json::Array(sockets.clone()));
        }
        Response::AllRooms { request_id, rooms } => {
            m.insert("requestId".into(), Json::from(request_id.as_str()));
            m.insert("rooms".into(), Json::from(rooms.clone()));
        }
        Response::ServerSideEmitAck { request_id, data } => {
            m.insert("type".into(), Json::from(6));
            m.insert("requestId".into(), Json::from(request_id.as_str()));
            if let Some(data) = data {
                m.insert("data".into(), data.clone());
            }
        }
        Response::BroadcastClientCount {
            request_id,
            client_count,
        } => {
            m.insert("type".into(), Json::from(8));
            m.insert("requestId".into(), Json::from(request_id.as_str()));
            m.insert("clientCount".into(), Json::from(*client_count));
        }
        Response::BroadcastAck { request_id, packet } => {
            return write_msgpack(&Mp::Map(vec![
                (s("type"), Mp::from(9)),
                (s("requestId"), s(request_id)),
                (s("packet"), packet.clone()),
            ]));
        }
    }
    Json::Object(m).to_string().into_bytes()
}

/// Decodes a response (JSON, or MessagePack for a broadcast ack).
pub fn decode_response(bytes: &[u8]) -> Result<Response, AdapterError> {
    if bytes.first() != Some(&b'{') {
        let Mp::Map(m) = read_msgpack(bytes)? else {
            return Err(AdapterError::Shape("response"));
        };
        if map_get(&m, "type").and_then(Mp::as_u64) != Some(9) {
            return Err(AdapterError::Shape("response type"));
        }
        return Ok(Response::BroadcastAck {
            request_id: map_get(&m, "requestId")
                .and_then(Mp::as_str)
                .ok_or(AdapterError::Shape("requestId"))?
                .to_string(),
            packet: map_get(&m, "packet").cloned().unwrap_or(Mp::Nil),
        });
    }
    let v: Json = serde_json::from_slice(bytes).map_err(|e| AdapterError::Json(e.to_string()))?;
    let Json::Object(m) = v else {
        return Err(AdapterError::Shape("response"));
    };
    let request_id = m
        .get("requestId")
        .and_then(Json::as_str)
        .ok_or(AdapterError::Shape("requestId"))?
        .to_string();
    Ok(match m.get("type").and_then(Json::as_u64) {
        Some(6) => Response::ServerSideEmitAck {
            request_id,
            data: m.get("data").cloned(),
        },
        Some(8) => Response::BroadcastClientCount {
            request_id,
            client_count: m
                .get("clientCount")
                .and_then(Json::as_u64)
                .ok_or(AdapterError::Shape("clientCount"))?,
        },
        _ => match (m.get("sockets"), m.get("rooms")) {
            (Some(Json::Array(s)), _) => Response::Sockets {
                request_id,
                sockets: s.clone(),
            },
            (_, Some(r)) => Response::AllRooms {
                request_id,
                rooms: json_strings(Some(r))?,
            },
            _ => return Err(AdapterError::Shape("response")),
        },
    })
}

// ---- Gathering the answers to a request

/// The answers to a `fetchSockets`, `allRooms` (or legacy `sockets`) request this node sent,
/// gathered as node's adapter does: every other server answers once (`PUBSUB NUMSUB` of the
/// request channel, less this node, says how many there are).
#[derive(Clone, Debug, PartialEq)]
pub struct Gathering {
    expected: usize,
    answered: usize,
    /// The sockets answered so far (`fetchSockets`, `sockets`).
    pub sockets: Vec<Json>,
    /// The rooms answered so far (`allRooms`).
    pub rooms: Vec<String>,
}

impl Gathering {
    /// Waiting for `expected` servers.
    pub fn new(expected: usize) -> Self {
        Gathering {
            expected,
            answered: 0,
            sockets: Vec::new(),
            rooms: Vec::new(),
        }
    }

    /// Takes one server's response to the request; a response of another kind counts as an
    /// answer without content, as in node's adapter.
    pub fn take(&mut self, r: Response) {
        self.answered += 1;
        match r {
            Response::Sockets { sockets, .. } => self.sockets.extend(sockets),
            Response::AllRooms { rooms, .. } => self.rooms.extend(rooms),
            _ => {}
        }
    }

    /// Whether every server has answered.
    pub fn complete(&self) -> bool {
        self.answered >= self.expected
    }

    /// (servers that answered, servers expected).
    pub fn progress(&self) -> (usize, usize) {
        (self.answered, self.expected)
    }
}

/// The answers to a broadcast with acks this node sent: each other server says how many of
/// its sockets it sent the event to (`BROADCAST_CLIENT_COUNT`), then each of those sockets'
/// ack comes (`BROADCAST_ACK`), in any order.
#[derive(Clone, Debug, PartialEq)]
pub struct AckGathering {
    expected_servers: usize,
    servers: usize,
    /// Sockets the servers that answered sent the event to.
    pub clients: u64,
    /// The acks' arguments so far.
    pub acks: Vec<Mp>,
}

impl AckGathering {
    /// Waiting for `expected_servers` servers.
    pub fn new(expected_servers: usize) -> Self {
        AckGathering {
            expected_servers,
            servers: 0,
            clients: 0,
            acks: Vec::new(),
        }
    }

    /// Takes one response to the broadcast.
    pub fn take(&mut self, r: Response) {
        match r {
            Response::BroadcastClientCount { client_count, .. } => {
                self.servers += 1;
                self.clients += client_count;
            }
            Response::BroadcastAck { packet, .. } => self.acks.push(packet),
            _ => {}
        }
    }

    /// Whether every server has said how many sockets it reached.
    pub fn counted(&self) -> bool {
        self.servers >= self.expected_servers
    }

    /// Whether every server has counted and every socket counted has acked.
    pub fn complete(&self) -> bool {
        self.counted() && self.acks.len() as u64 >= self.clients
    }

    /// (servers that counted, servers expected).
    pub fn progress(&self) -> (usize, usize) {
        (self.servers, self.expected_servers)
    }
}

/// The request id of a response, to find the request it answers.
pub fn response_id(r: &Response) -> &str {
    match r {
        Response::Sockets { request_id, .. }
        | Response::AllRooms { request_id, .. }
        | Response::ServerSideEmitAck { request_id, .. }
        | Response::BroadcastClientCount { request_id, .. }
        | Response::BroadcastAck { request_id, .. } => request_id,
    }
}

#[cfg(test)]
#[path = "adapter_tests.rs"]
mod tests;
