//! Packets with binary attachments: reassembly on input, kind switching on
//! output, and the per-connection decoder that ties text and binary frames.

use bytes::Bytes;
use serde_json::Value;

use super::packet::{encode_parts, SioError, SioKind, SioPacket, DEFAULT_MAX_ATTACHMENTS};

/// A complete Socket.IO packet with its binary attachments.
///
/// Binaries are kept beside the JSON rather than spliced into it: JSON has no
/// binary type, and leaving the `{"_placeholder":true,"num":i}` objects in
/// `packet.data` lets a relay forward both untouched. `binaries[i]` is the
/// attachment that placeholder `i` stands for.
///
/// As in socket.io-parser, a decoded message's kind is `Event` or `Ack` even
/// when it arrived as `BinaryEvent`/`BinaryAck`: whether it has binaries is
/// `!binaries.is_empty()`, and `packet.attachments` is not used.
#[derive(Debug, Clone, PartialEq)]
pub struct SioMessage {
    pub packet: SioPacket,
    pub binaries: Vec<Bytes>,
}

impl From<SioPacket> for SioMessage {
    fn from(packet: SioPacket) -> SioMessage {
        SioMessage {
            packet,
            binaries: Vec::new(),
        }
    }
}

impl SioMessage {
    /// The text frame to send first; `binaries` follow it, one binary frame
    /// (or `b`+base64 polling packet) each.
    ///
    /// An event or ack with binaries goes out as `BinaryEvent`/`BinaryAck`
    /// (`2`→`5`, `3`→`6`) with their count; without, as `Event`/`Ack`. Only
    /// events and acks can carry binaries: the reference never extracts them
    /// from other kinds, so binaries on those are a caller bug and are not
    /// announced.
    pub fn encode(&self) -> String {
        let n = self.binaries.len();
        let kind = match (self.packet.kind, n) {
            (SioKind::Event | SioKind::BinaryEvent, 0) => SioKind::Event,
            (SioKind::Event | SioKind::BinaryEvent, _) => SioKind::BinaryEvent,
            (SioKind::Ack | SioKind::BinaryAck, 0) => SioKind::Ack,
            (SioKind::Ack | SioKind::BinaryAck, _) => SioKind::BinaryAck,
            (kind, _) => {
                debug_assert_eq!(n, 0, "{kind:?} cannot carry binary attachments");
                kind
            }
        };
        let p = &self.packet;
        encode_parts(kind, n, &p.nsp, p.id, p.data.as_ref())
    }
}

/// The placeholder object standing for attachment `num`, as it appears in the JSON of a packet
/// with binaries.
pub fn placeholder(num: usize) -> Value {
    let mut map = serde_json::Map::new();
    map.insert("_placeholder".into(), Value::Bool(true));
    map.insert("num".into(), Value::from(num));
    Value::Object(map)
}

/// Collects the binary frames announced by a `BinaryEvent`/`BinaryAck` header.
///
/// The header's placeholders are checked when it arrives, not after the last
/// attachment as in node: a bad header is refused before any binary is
/// buffered, and a header announcing 0 attachments cannot smuggle a dangling
/// placeholder through (node passes that one on unchecked).
#[derive(Debug)]
pub struct BinaryReassembler {
    packet: SioPacket,
    expected: usize,
    binaries: Vec<Bytes>,
}

/// The state after a header or an attachment.
#[derive(Debug)]
pub enum Reassembly {
    Pending(BinaryReassembler),
    Complete(SioMessage),
}

impl BinaryReassembler {
    /// Starts on a decoded header. A packet of a non-binary kind is complete
    /// as it is (its placeholder-like objects are plain JSON, as in node).
    ///
    /// Fails with [`SioError::InvalidPlaceholder`] when an object with
    /// `"_placeholder":true` has a `num` that is not an integer below the
    /// announced count.
    pub fn start(header: SioPacket) -> Result<Reassembly, SioError> {
        let mut packet = header;
        let kind = match packet.kind {
            SioKind::BinaryEvent => SioKind::Event,
            SioKind::BinaryAck => SioKind::Ack,
            _ => return Ok(Reassembly::Complete(packet.into())),
        };
        let expected = packet.attachments;
        if let Some(data) = &packet.data {
            check_placeholders(data, expected)?;
        }
        packet.kind = kind;
        packet.attachments = 0;
        let pending = BinaryReassembler {
            packet,
            expected,
            binaries: Vec::new(),
        };
        Ok(pending.step())
    }

    /// Adds the next attachment.
    pub fn push(mut self, binary: Bytes) -> Reassembly {
        self.binaries.push(binary);
        self.step()
    }

    /// Attachments still expected (at least 1 while pending).
    pub fn remaining(&self) -> usize {
        self.expected - self.binaries.len()
    }

    fn step(self) -> Reassembly {
        if self.binaries.len() < self.expected {
            return Reassembly::Pending(self);
        }
        Reassembly::Complete(SioMessage {
            packet: self.packet,
            binaries: self.binaries,
        })
    }
}

/// Walks with an explicit stack: decoded JSON is at most 128 deep, but a
/// header built by hand has no such bound.
fn check_placeholders(data: &Value, count: usize) -> Result<(), SioError> {
    let mut stack = vec![data];
    while let Some(value) = stack.pop() {
        match value {
            Value::Object(map) if map.get("_placeholder") == Some(&Value::Bool(true)) => {
                // JS indexes with any number: 1.0 is 1, 0.5 is nothing.
                let num = map.get("num").and_then(Value::as_f64);
                let valid = num.is_some_and(|n| n.fract() == 0.0 && n >= 0.0 && n < count as f64);
                if !valid {
                    return Err(SioError::InvalidPlaceholder);
                }
            }
            Value::Object(map) => stack.extend(map.values()),
            Value::Array(items) => stack.extend(items),
            _ => {}
        }
    }
    Ok(())
}

/// Per-connection decoder: text frames carry packets, binary frames the
/// attachments of the last binary header. Any error means the connection
/// should be closed; the decoder is reset so it never wedges.
#[derive(Debug)]
pub struct SioDecoder {
    max_attachments: usize,
    pending: Option<BinaryReassembler>,
}

impl Default for SioDecoder {
    fn default() -> SioDecoder {
        SioDecoder::new(DEFAULT_MAX_ATTACHMENTS)
    }
}

impl SioDecoder {
    pub fn new(max_attachments: usize) -> SioDecoder {
        SioDecoder {
            max_attachments,
            pending: None,
        }
    }

    /// `Ok(None)` while attachments are awaited.
    pub fn decode_text(&mut self, text: &str) -> Result<Option<SioMessage>, SioError> {
        if self.pending.take().is_some() {
            return Err(SioError::UnexpectedText);
        }
        let header = SioPacket::decode(text, self.max_attachments)?;
        Ok(self.advance(BinaryReassembler::start(header)?))
    }

    /// `Ok(None)` while more attachments are awaited.
    pub fn decode_binary(&mut self, binary: Bytes) -> Result<Option<SioMessage>, SioError> {
        let pending = self.pending.take().ok_or(SioError::UnexpectedBinary)?;
        Ok(self.advance(pending.push(binary)))
    }

    fn advance(&mut self, step: Reassembly) -> Option<SioMessage> {
        match step {
            Reassembly::Pending(r) => {
                self.pending = Some(r);
                None
            }
            Reassembly::Complete(message) => Some(message),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::packet::tests::{arb_ack_args, arb_event_args, arb_nsp};
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn b(s: &'static [u8]) -> Bytes {
        Bytes::from_static(s)
    }

    const TWO: &str =
        "52-[\"message\",{\"_placeholder\":true,\"num\":0},{\"_placeholder\":true,\"num\":1}]";

    #[test]
    fn reassembles_a_binary_event() {
        let mut d = SioDecoder::default();
        assert_eq!(d.decode_text(TWO), Ok(None));
        assert_eq!(d.decode_binary(b(b"\x01\x02")), Ok(None));
        let msg = d.decode_binary(b(b"\x03")).unwrap().unwrap();
        assert_eq!(msg.packet.kind, SioKind::Event);
        assert_eq!(msg.packet.attachments, 0);
        assert_eq!(
            msg.packet.data,
            Some(
                json!(["message", {"_placeholder": true, "num": 0}, {"_placeholder": true, "num": 1}])
            )
        );
        assert_eq!(msg.binaries, vec![b(b"\x01\x02"), b(b"\x03")]);
        assert_eq!(msg.encode(), TWO);
        // and the decoder is ready for the next packet
        assert!(d.decode_text("2[\"next\"]").unwrap().is_some());
    }

    #[test]
    fn reassembles_a_binary_ack() {
        let mut d = SioDecoder::default();
        let wire = "62-789[{\"_placeholder\":true,\"num\":0},{\"_placeholder\":true,\"num\":1}]";
        assert_eq!(d.decode_text(wire), Ok(None));
        assert_eq!(d.decode_binary(b(b"a")), Ok(None));
        let msg = d.decode_binary(b(b"b")).unwrap().unwrap();
        assert_eq!(msg.packet.kind, SioKind::Ack);
        assert_eq!(msg.packet.id, Some(789));
        assert_eq!(msg.encode(), wire);
    }

    #[test]
    fn zero_attachments_complete_at_once() {
        let mut d = SioDecoder::default();
        let msg = d.decode_text("50-[\"a\"]").unwrap().unwrap();
        assert_eq!(msg, SioPacket::event("/", json!(["a"]), None).into());
        assert_eq!(msg.encode(), "2[\"a\"]");
    }

    #[test]
    fn plain_packets_pass_through() {
        let mut d = SioDecoder::default();
        let msg = d.decode_text("2/admin,13[\"foo\"]").unwrap().unwrap();
        assert_eq!(
            msg,
            SioPacket::event("/admin", json!(["foo"]), Some(13)).into()
        );
        // placeholder-looking JSON in a non-binary packet is just JSON
        let msg = d
            .decode_text("2[\"a\",{\"_placeholder\":true,\"num\":5}]")
            .unwrap();
        assert!(msg.is_some());
    }

    #[test]
    fn text_while_attachments_are_missing() {
        let mut d = SioDecoder::default();
        d.decode_text(TWO).unwrap();
        d.decode_binary(b(b"x")).unwrap();
        assert_eq!(d.decode_text("2[\"a\"]"), Err(SioError::UnexpectedText));
        // reset: the next text is read normally
        assert!(d.decode_text("2[\"a\"]").unwrap().is_some());
    }

    #[test]
    fn binary_without_a_header_or_beyond_the_count() {
        let mut d = SioDecoder::default();
        assert_eq!(d.decode_binary(b(b"x")), Err(SioError::UnexpectedBinary));
        d.decode_text("51-[\"a\",{\"_placeholder\":true,\"num\":0}]")
            .unwrap();
        assert!(d.decode_binary(b(b"x")).unwrap().is_some());
        assert_eq!(
            d.decode_binary(b(b"extra")),
            Err(SioError::UnexpectedBinary)
        );
    }

    #[test]
    fn placeholder_out_of_range() {
        let mut d = SioDecoder::default();
        for wire in [
            "51-[\"a\",{\"_placeholder\":true,\"num\":1}]",
            "51-[\"a\",{\"_placeholder\":true,\"num\":-1}]",
            "51-[\"a\",{\"_placeholder\":true,\"num\":0.5}]",
            "51-[\"a\",{\"_placeholder\":true,\"num\":\"0\"}]",
            "51-[\"a\",{\"_placeholder\":true}]",
            "50-[\"a\",{\"_placeholder\":true,\"num\":0}]",
            "61-[{\"x\":[{\"_placeholder\":true,\"num\":3}]}]",
        ] {
            assert_eq!(
                d.decode_text(wire),
                Err(SioError::InvalidPlaceholder),
                "{wire}"
            );
        }
    }

    #[test]
    fn placeholder_shapes_node_accepts() {
        let mut d = SioDecoder::default();
        for wire in [
            // an integral float indexes like an integer in JS
            "51-[\"a\",{\"_placeholder\":true,\"num\":0.0}]",
            // not a placeholder unless `_placeholder` is exactly true
            "51-[\"a\",{\"_placeholder\":1,\"num\":9},{\"_placeholder\":true,\"num\":0}]",
            // nested anywhere
            "51-[\"a\",{\"deep\":[[{\"_placeholder\":true,\"num\":0}]]}]",
            // an attachment nobody points at is tolerated, as in node
            "51-[\"a\"]",
        ] {
            assert_eq!(d.decode_text(wire), Ok(None), "{wire}");
            assert!(d.decode_binary(b(b"x")).unwrap().is_some());
        }
    }

    #[test]
    fn attachment_cap_is_configurable() {
        let mut d = SioDecoder::new(1);
        assert_eq!(
            d.decode_text("52-[\"a\"]"),
            Err(SioError::TooManyAttachments)
        );
        assert_eq!(
            SioDecoder::default().decode_text("511-[\"a\"]"),
            Err(SioError::TooManyAttachments)
        );
    }

    #[test]
    fn encoder_switches_kinds() {
        let args = json!(["upload", {"_placeholder": true, "num": 0}]);
        let mut msg = SioMessage {
            packet: SioPacket::event("/files", args.clone(), Some(4)),
            binaries: vec![b(b"data")],
        };
        assert_eq!(
            msg.encode(),
            "51-/files,4[\"upload\",{\"_placeholder\":true,\"num\":0}]"
        );
        msg.packet.kind = SioKind::Ack;
        assert_eq!(
            msg.encode(),
            "61-/files,4[\"upload\",{\"_placeholder\":true,\"num\":0}]"
        );
        msg.binaries.clear();
        assert_eq!(
            msg.encode(),
            "3/files,4[\"upload\",{\"_placeholder\":true,\"num\":0}]"
        );
        msg.packet.kind = SioKind::BinaryEvent;
        assert_eq!(
            msg.encode(),
            "2/files,4[\"upload\",{\"_placeholder\":true,\"num\":0}]"
        );
    }

    #[test]
    fn plain_messages_encode_like_packets() {
        let p = SioPacket::connect("/", Some(json!({"sid": "x"})));
        assert_eq!(SioMessage::from(p.clone()).encode(), p.encode());
        assert_eq!(
            SioMessage::from(SioPacket::disconnect("/a")).encode(),
            "1/a,"
        );
    }

    #[test]
    fn reassembler_used_directly() {
        let header = SioPacket::decode(TWO, 10).unwrap();
        let Reassembly::Pending(r) = BinaryReassembler::start(header).unwrap() else {
            panic!("two attachments expected")
        };
        assert_eq!(r.remaining(), 2);
        let Reassembly::Pending(r) = r.push(b(b"1")) else {
            panic!()
        };
        assert_eq!(r.remaining(), 1);
        let Reassembly::Complete(msg) = r.push(b(b"2")) else {
            panic!()
        };
        assert_eq!(msg.binaries.len(), 2);
    }

    #[test]
    fn deep_hand_built_header_does_not_overflow() {
        let mut v = json!({"_placeholder": true, "num": 0});
        for _ in 0..100_000 {
            v = Value::Array(vec![v]);
        }
        let header = SioPacket {
            kind: SioKind::BinaryAck,
            nsp: "/".into(),
            id: Some(1),
            data: Some(v),
            attachments: 1,
        };
        let Reassembly::Pending(r) = BinaryReassembler::start(header).unwrap() else {
            panic!()
        };
        let Reassembly::Complete(mut msg) = r.push(b(b"x")) else {
            panic!()
        };
        // serde_json drops values recursively; unwind the nesting by hand.
        let mut data = msg.packet.data.take();
        while let Some(Value::Array(mut items)) = data {
            data = items.pop();
        }
    }

    /// Args with `n` placeholders scattered in and `n` binaries.
    fn arb_binary_message() -> impl Strategy<Value = SioMessage> {
        let kind_args = prop_oneof![
            arb_event_args().prop_map(|a| (SioKind::Event, a)),
            arb_ack_args().prop_map(|a| (SioKind::Ack, a)),
        ];
        (
            kind_args,
            arb_nsp(),
            proptest::option::of(any::<u64>()),
            proptest::collection::vec(
                proptest::collection::vec(any::<u8>(), 0..16),
                0..=DEFAULT_MAX_ATTACHMENTS,
            ),
        )
            .prop_map(|((kind, mut args), nsp, id, bins)| {
                let items = args.as_array_mut().unwrap();
                for i in 0..bins.len() {
                    items.push(json!({"_placeholder": true, "num": i}));
                }
                SioMessage {
                    packet: SioPacket {
                        kind,
                        nsp,
                        id,
                        data: Some(args),
                        attachments: 0,
                    },
                    binaries: bins.into_iter().map(Bytes::from).collect(),
                }
            })
    }

    #[derive(Debug, Clone)]
    enum Frame {
        Text(String),
        Binary(Vec<u8>),
    }

    fn arb_frame() -> impl Strategy<Value = Frame> {
        prop_oneof![
            "[0-6][0-9\\-/,a-z\\[\\]{}\":_]{0,24}".prop_map(Frame::Text),
            Just(Frame::Text(TWO.into())),
            Just(Frame::Text(
                "51-[\"a\",{\"_placeholder\":true,\"num\":0}]".into()
            )),
            any::<String>().prop_map(Frame::Text),
            proptest::collection::vec(any::<u8>(), 0..8).prop_map(Frame::Binary),
        ]
    }

    proptest! {
        #[test]
        fn message_roundtrip(msg in arb_binary_message()) {
            let mut d = SioDecoder::default();
            let mut out = d.decode_text(&msg.encode()).unwrap();
            for bin in &msg.binaries {
                prop_assert!(out.is_none());
                out = d.decode_binary(bin.clone()).unwrap();
            }
            prop_assert_eq!(out, Some(msg));
        }

        #[test]
        fn decoder_never_panics_on_any_frame_sequence(frames in proptest::collection::vec(arb_frame(), 0..12)) {
            let mut d = SioDecoder::new(3);
            for frame in frames {
                let _ = match frame {
                    Frame::Text(t) => d.decode_text(&t),
                    Frame::Binary(b) => d.decode_binary(Bytes::from(b)),
                };
            }
        }
    }
}
