//! The bytes of one hub message in Redis: what is published on the topic's channel and kept in
//! its history list (the same bytes for both, so one decoder serves live delivery, backfill and
//! resume).
//!
//! ```text
//! hub1 <epoch>:<seq>\n<body>
//! ```
//!
//! The header is text because the publish script writes it (only the script knows the seq);
//! `<epoch>:<seq>` is exactly [`Position`]'s canonical text. The body is written by the
//! publishing node before the script runs: a MessagePack array
//! `[node, id, event, data, attachments]` — the node id (text), the [`MessageId`] (16 bytes,
//! big-endian), the event name, the JSON data as JSON text (parsed once by the receiver, with
//! serde_json's nesting limit), and the binary attachments — followed, when a local subscriber
//! sent it, by a sixth element: that subscriber's id on the publishing node (an unsigned
//! integer). Only the publishing node can tell whose it is (subscriber ids are per process),
//! and it needs to: a Socket.IO relay must not come back to its sender, whichever way
//! (reply, echo, history) it reaches the sender's node. A payload that leaves Socket.IO rooms
//! out ([`Payload::except`]) has a seventh element, the array of those rooms, and then a sixth
//! one in any case (nil when no local subscriber sent it).

use std::sync::Arc;

use bytes::Bytes;
use rmpv::Value;
use thiserror::Error;

use crate::hub::{MessageId, Payload, Position};

/// What every frame starts with; a later format would change it.
pub const MAGIC: &[u8] = b"hub1 ";

/// Deepest MessagePack nesting accepted in a body (the body is flat; this only refuses
/// hostile input before it costs stack).
const MAX_DEPTH: usize = 8;

/// A decoded frame body.
#[derive(Clone, Debug, PartialEq)]
pub struct Body {
    /// The node that published it.
    pub node: Arc<str>,
    /// The broadcast's id (shared by the per-topic copies of one multi-topic publish).
    pub id: MessageId,
    /// The content.
    pub payload: Arc<Payload>,
    /// The publishing node's subscriber that sent it (see the module documentation).
    pub origin: Option<u64>,
}

/// Why bytes are not a frame.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum FrameError {
    /// Not `hub1 `.
    #[error("not a hub frame (bad magic)")]
    Magic,
    /// No header line, or not a canonical position, or seq 0.
    #[error("bad frame header")]
    Header,
    /// The body is not the expected MessagePack array.
    #[error("bad frame body: {0}")]
    Body(&'static str),
    /// The data is not JSON.
    #[error("bad frame data: {0}")]
    Data(String),
}

/// The body bytes for `payload` (the script prefixes the header).
pub fn encode_body(node: &str, id: MessageId, payload: &Payload, origin: Option<u64>) -> Vec<u8> {
    let mut items = vec![
        Value::from(node),
        Value::Binary(id.raw().to_be_bytes().to_vec()),
        Value::from(payload.event.as_str()),
        Value::from(payload.data.to_string()),
        Value::Array(
            payload
                .attachments
                .iter()
                .map(|a| Value::Binary(a.to_vec()))
                .collect(),
        ),
    ];
    if origin.is_some() || !payload.except.is_empty() {
        items.push(origin.map_or(Value::Nil, Value::from));
    }
    if !payload.except.is_empty() {
        items.push(Value::Array(
            payload
                .except
                .iter()
                .map(|r| Value::from(r.as_str()))
                .collect(),
        ));
    }
    let value = Value::Array(items);
    let mut out = Vec::with_capacity(64 + payload.event.len());
    // Writing to a Vec cannot fail.
    let _ = rmpv::encode::write_value(&mut out, &value);
    out
}

/// The header the script writes for `position`.
pub fn header(position: Position) -> String {
    format!("hub1 {position}\n")
}

/// A whole frame (what the script stores and publishes), for tests and tools.
pub fn encode_frame(position: Position, body: &[u8]) -> Vec<u8> {
    let mut out = header(position).into_bytes();
    out.extend_from_slice(body);
    out
}

/// Splits a frame into its position and its still-encoded body.
pub fn split(frame: &[u8]) -> Result<(Position, &[u8]), FrameError> {
    let rest = frame.strip_prefix(MAGIC).ok_or(FrameError::Magic)?;
    let nl = rest
        .iter()
        .take(Position::MAX_TEXT_LEN + 1)
        .position(|&b| b == b'\n')
        .ok_or(FrameError::Header)?;
    let text = std::str::from_utf8(&rest[..nl]).map_err(|_| FrameError::Header)?;
    let position: Position = text.parse().map_err(|_| FrameError::Header)?;
    if position.seq == 0 {
        return Err(FrameError::Header);
    }
    Ok((position, &rest[nl + 1..]))
}

/// Decodes a body.
pub fn decode_body(body: &[u8]) -> Result<Body, FrameError> {
    let mut reader = body;
    let value = rmpv::decode::read_value_with_max_depth(&mut reader, MAX_DEPTH)
        .map_err(|_| FrameError::Body("not MessagePack"))?;
    if !reader.is_empty() {
        return Err(FrameError::Body("trailing bytes"));
    }
    let Value::Array(items) = value else {
        return Err(FrameError::Body("not an array"));
    };
    if !(5..=7).contains(&items.len()) {
        return Err(FrameError::Body("not five to seven elements"));
    }
    let mut items = items;
    let except = match items.len() {
        7 => match items.pop() {
            Some(Value::Array(rooms)) => rooms
                .into_iter()
                .map(|r| match r {
                    Value::String(s) => s.into_str().ok_or(FrameError::Body("except")),
                    _ => Err(FrameError::Body("except")),
                })
                .collect::<Result<Vec<_>, _>>()?,
            _ => return Err(FrameError::Body("except")),
        },
        _ => Vec::new(),
    };
    let origin = match items.len() {
        6 => match items.pop() {
            Some(Value::Nil) if !except.is_empty() => None,
            Some(o) => Some(o.as_u64().ok_or(FrameError::Body("origin"))?),
            None => None,
        },
        _ => None,
    };
    let [node, id, event, data, attachments] =
        <[Value; 5]>::try_from(items).map_err(|_| FrameError::Body("not five elements"))?;
    let node = node.as_str().ok_or(FrameError::Body("node"))?;
    let id: [u8; 16] = id
        .as_slice()
        .and_then(|b| b.try_into().ok())
        .ok_or(FrameError::Body("id"))?;
    let event = event.as_str().ok_or(FrameError::Body("event"))?;
    let data = data.as_str().ok_or(FrameError::Body("data"))?;
    let data = serde_json::from_str(data).map_err(|e| FrameError::Data(e.to_string()))?;
    let Value::Array(attachments) = attachments else {
        return Err(FrameError::Body("attachments"));
    };
    let attachments = attachments
        .into_iter()
        .map(|a| match a {
            Value::Binary(b) => Ok(Bytes::from(b)),
            _ => Err(FrameError::Body("attachment")),
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Body {
        node: Arc::from(node),
        id: MessageId::from_raw(u128::from_be_bytes(id)),
        payload: Arc::new(Payload {
            event: event.to_string(),
            data,
            attachments,
            except,
        }),
        origin,
    })
}

/// Decodes a whole frame.
pub fn decode(frame: &[u8]) -> Result<(Position, Body), FrameError> {
    let (position, body) = split(frame)?;
    Ok((position, decode_body(body)?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hub::Epoch;
    use serde_json::json;

    fn hex(s: &str) -> Vec<u8> {
        let s: String = s.split_whitespace().collect();
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
            .collect()
    }

    #[test]
    fn byte_exact_frame() {
        let payload = Payload::new("ev", json!({"a":1}))
            .with_attachments(vec![Bytes::from_static(b"\x01\x02")]);
        let body = encode_body("n1", MessageId::from_raw(0x0102), &payload, None);
        let position = Position::new(Epoch::from_raw(0xdead_beef), 42);
        let frame = encode_frame(position, &body);
        let expected = [
            b"hub1 00000000deadbeef:42\n".to_vec(),
            hex("95 a2 6e31 c4 10 00000000000000000000000000000102 a2 6576 a7 7b2261223a317d 91 c4 02 0102"),
        ]
        .concat();
        assert_eq!(frame, expected);
        let (p, b) = decode(&frame).expect("decodes");
        assert_eq!(p, position);
        assert_eq!(&*b.node, "n1");
        assert_eq!(b.id, MessageId::from_raw(0x0102));
        assert_eq!(*b.payload, payload);
        assert_eq!(b.origin, None);
        // With its sender: a sixth element, the subscriber id as a MessagePack integer.
        let body = encode_body("n1", MessageId::from_raw(0x0102), &payload, Some(300));
        let sent = encode_frame(position, &body);
        let mut want = expected.clone();
        want[b"hub1 00000000deadbeef:42\n".len()] = 0x96;
        want.extend_from_slice(&hex("cd 012c"));
        assert_eq!(sent, want);
        assert_eq!(decode(&sent).expect("decodes").1.origin, Some(300));
        // Leaving rooms out: a seventh element, the rooms, after the origin or nil.
        let except = payload.clone().with_except(vec!["sock1".into()]);
        let body = encode_body("n1", MessageId::from_raw(0x0102), &except, None);
        let sent = encode_frame(position, &body);
        let mut want = expected.clone();
        want[b"hub1 00000000deadbeef:42\n".len()] = 0x97;
        want.extend_from_slice(&hex("c0 91 a5 736f636b31"));
        assert_eq!(sent, want);
        let (_, b) = decode(&sent).expect("decodes");
        assert_eq!((b.origin, &*b.payload), (None, &except));
        let body = encode_body("n1", MessageId::from_raw(0x0102), &except, Some(300));
        let (_, b) = decode(&encode_frame(position, &body)).expect("decodes");
        assert_eq!((b.origin, &*b.payload), (Some(300), &except));
    }

    #[test]
    fn odd_input_is_an_error_not_a_panic() {
        let good = encode_frame(
            Position::new(Epoch::from_raw(1), 1),
            &encode_body(
                "n",
                MessageId::from_raw(1),
                &Payload::new("", json!(null)),
                Some(1),
            ),
        );
        for bad in [
            &b""[..],
            b"hub1 ",
            b"hub2 0000000000000001:1\n",
            b"hub1 0000000000000001:0\n\x95",
            b"hub1 0000000000000001:01\n",
            b"hub1 0000000000000001:1",
            b"hub1 0000000000000001:1\n",
            b"hub1 0000000000000001:1\n\x93\x01\x02\x03",
            // A sixth element that is not a subscriber id.
            b"hub1 0000000000000001:1\n\x96\xa1n\xc4\x10\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\x01\xa0\xa4null\x90\xa1x",
            // A nil origin without rooms to leave out; rooms that are not strings.
            b"hub1 0000000000000001:1\n\x96\xa1n\xc4\x10\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\x01\xa0\xa4null\x90\xc0",
            b"hub1 0000000000000001:1\n\x97\xa1n\xc4\x10\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\x01\xa0\xa4null\x90\xc0\x91\x01",
            b"hub1 0000000000000001:1\n\x97\xa1n\xc4\x10\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\x01\xa0\xa4null\x90\xc0\xa1x",
            b"hub1 0000000000000001:1\n\xdd\xff\xff\xff\xff",
        ] {
            assert!(decode(bad).is_err(), "{bad:?}");
        }
        for cut in 0..good.len() {
            assert!(decode(&good[..cut]).is_err(), "cut at {cut}");
        }
        let mut trailing = good.clone();
        trailing.push(0);
        assert_eq!(decode(&trailing), Err(FrameError::Body("trailing bytes")));
        // Deep nesting is refused before it costs stack.
        let mut deep = header(Position::new(Epoch::from_raw(1), 1)).into_bytes();
        deep.extend(std::iter::repeat_n(0x91u8, 100_000));
        assert!(decode(&deep).is_err());
    }
}
