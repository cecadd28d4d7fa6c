//! What the server writes: one packet as the frames it goes out as, and event packets written
//! straight from borrowed parts, so a broadcast fanned out to many sockets never clones its
//! payload's JSON and is serialized once (the shared head), each recipient only appending its
//! own offset.

use bytes::Bytes;
use serde_json::Value;

use super::binary::SioMessage;
use super::packet::{encode_parts, SioKind, SioPacket};

/// One encoded packet: the text message, then its binary messages.
#[derive(Debug)]
pub(crate) struct Outgoing {
    pub(crate) text: String,
    pub(crate) binaries: Vec<Bytes>,
}

impl Outgoing {
    pub(crate) fn packet(packet: SioPacket) -> Outgoing {
        Outgoing {
            text: SioMessage::from(packet).encode(),
            binaries: Vec::new(),
        }
    }

    /// An EVENT (BINARY_EVENT with binaries), written straight from borrowed
    /// parts so fan-out never clones a payload's JSON.
    pub(crate) fn event(
        nsp: &str,
        name: &str,
        args: &[Value],
        offset: Option<u64>,
        id: Option<u64>,
        binaries: Vec<Bytes>,
    ) -> Outgoing {
        let head = event_head(nsp, name, args, id, binaries.len());
        Outgoing::event_from_head(&head, offset, binaries)
    }

    /// The event an [`event_head`] starts, with the offset as last argument if any, and the
    /// `binaries` its head announced.
    pub(crate) fn event_from_head(
        head: &str,
        offset: Option<impl std::fmt::Display>,
        binaries: Vec<Bytes>,
    ) -> Outgoing {
        Outgoing {
            text: close_event(head, offset),
            binaries,
        }
    }

    /// An ACK (BINARY_ACK with binaries) answering ack id `id`.
    pub(crate) fn ack(nsp: &str, id: u64, values: Vec<Value>, binaries: Vec<Bytes>) -> Outgoing {
        let msg = SioMessage {
            packet: SioPacket::ack(nsp, Value::Array(values), id),
            binaries,
        };
        Outgoing {
            text: msg.encode(),
            binaries: msg.binaries,
        }
    }
}

/// An event packet's text up to, not including, the closing `]` of its
/// arguments: the part every recipient of a broadcast shares (each may
/// append its own offset).
pub(crate) fn event_head(
    nsp: &str,
    name: &str,
    args: &[Value],
    id: Option<u64>,
    attachments: usize,
) -> String {
    let kind = if attachments == 0 {
        SioKind::Event
    } else {
        SioKind::BinaryEvent
    };
    let mut text = encode_parts(kind, attachments, nsp, id, None).into_bytes();
    text.push(b'[');
    // Writing JSON values to a Vec cannot fail.
    let _ = serde_json::to_writer(&mut text, name);
    for arg in args {
        text.push(b',');
        let _ = serde_json::to_writer(&mut text, arg);
    }
    // serde_json writes UTF-8, and so does everything around it.
    String::from_utf8(text).unwrap_or_default()
}

/// Completes an [`event_head`], with the offset as last argument if any.
///
/// Without an offset the text is made with room for exactly one byte more: the `4` Engine.IO
/// puts in front on a WebSocket ([`crate::engineio::Packet::into_ws_frame`]), in place, which
/// leaves the frame's buffer full, so it becomes the WebSocket message's bytes without an
/// allocation of its own.
fn close_event(head: &str, offset: Option<impl std::fmt::Display>) -> String {
    let room = if offset.is_some() { 24 } else { 1 };
    let mut text = String::with_capacity(head.len() + 1 + room);
    text.push_str(head);
    if let Some(offset) = offset {
        // Writing to a String cannot fail.
        let _ = std::fmt::Write::write_fmt(&mut text, format_args!(",\"{offset}\""));
    }
    text.push(']');
    text
}

#[cfg(test)]
mod tests {
    use super::super::binary::placeholder;
    use super::*;
    use serde_json::json;

    fn text(out: &Outgoing) -> &str {
        &out.text
    }

    /// Socket.IO packets as they travel inside an Engine.IO `message` (its `4` is not part of
    /// them).
    #[test]
    fn an_event_without_offset_leaves_room_for_engine_io_s_4_and_no_more() {
        let out = Outgoing::event("/", "hi", &[json!(1)], None, None, vec![]);
        assert_eq!(out.text, r#"2["hi",1]"#);
        assert_eq!(out.text.capacity(), out.text.len() + 1);
        let head = event_head("/", "hi", &[], None, 0);
        let out = Outgoing::event_from_head(&head, None::<u64>, vec![]);
        assert_eq!(out.text.capacity(), out.text.len() + 1);
    }

    #[test]
    fn events_are_byte_exact() {
        let args = [json!(1), json!("x")];
        let cases = [
            (
                Outgoing::event("/", "hi", &args, None, None, vec![]),
                r#"2["hi",1,"x"]"#,
            ),
            (
                Outgoing::event("/chat", "hi", &args, Some(7), None, vec![]),
                r#"2/chat,["hi",1,"x","7"]"#,
            ),
            (
                Outgoing::event("/chat", "hi", &[], None, Some(3), vec![]),
                r#"2/chat,3["hi"]"#,
            ),
            (
                Outgoing::event(
                    "/chat",
                    "blob",
                    &[placeholder(0)],
                    Some(12),
                    None,
                    vec![Bytes::from_static(&[1, 2])],
                ),
                r#"51-/chat,["blob",{"_placeholder":true,"num":0},"12"]"#,
            ),
        ];
        for (out, wire) in &cases {
            assert_eq!(text(out), *wire);
        }
        assert_eq!(cases[3].0.binaries, [Bytes::from_static(&[1, 2])]);
    }

    /// Fan-out's head-then-offset path writes what the general encoder writes.
    #[test]
    fn a_closed_head_is_the_encoded_packet() {
        let args = [json!({"a": [1, null]}), json!("é\"")];
        let head = event_head("/x", "ev", &args, None, 0);
        let out = Outgoing::event_from_head(&head, None::<u64>, Vec::new());
        let packet = SioPacket::event("/x", json!(["ev", {"a": [1, null]}, "é\""]), None);
        assert_eq!(out.text, SioMessage::from(packet).encode());
    }

    #[test]
    fn acks_and_control_packets_are_byte_exact() {
        assert_eq!(
            Outgoing::ack("/", 5, vec![json!("ok")], vec![]).text,
            r#"35["ok"]"#
        );
        let binary = Outgoing::ack(
            "/chat",
            5,
            vec![placeholder(0)],
            vec![Bytes::from_static(b"z")],
        );
        assert_eq!(binary.text, r#"61-/chat,5[{"_placeholder":true,"num":0}]"#);
        assert_eq!(binary.binaries, [Bytes::from_static(b"z")]);
        assert_eq!(
            Outgoing::packet(SioPacket::disconnect("/chat")).text,
            "1/chat,"
        );
    }
}
