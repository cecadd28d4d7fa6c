//! One Engine.IO packet and its two wire forms (text and WebSocket binary frame).

use base64::alphabet;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, STANDARD};
use base64::engine::DecodePaddingMode;
use base64::Engine as _;
use bytes::Bytes;
use thiserror::Error;

/// Payload of the upgrade probe (`2probe` from the client, `3probe` back).
pub const PROBE: &str = "probe";

/// Node decodes `b…` with `Buffer.from(s, "base64")`, which does not insist on
/// padding; clients always pad, but a strict decoder would reject input the
/// reference accepts for no safety gain.
const LENIENT_BASE64: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new()
        .with_decode_padding_mode(DecodePaddingMode::Indifferent)
        .with_decode_allow_trailing_bits(true),
);

/// An Engine.IO v4 packet.
///
/// Payloads the protocol does not use (`1foo`, `5x`, `6x`) are accepted and
/// dropped on decode, as engine.io does: only `open`, `ping`, `pong` and
/// `message` carry data anyone reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Packet {
    /// `0` + handshake JSON (see [`super::Handshake`]).
    Open(String),
    /// `1`.
    Close,
    /// `2`, or `2probe` during an upgrade. `Some("")` encodes like `None`.
    Ping(Option<String>),
    /// `3`, or `3probe` during an upgrade. `Some("")` encodes like `None`.
    Pong(Option<String>),
    /// `4` + text.
    Message(String),
    /// Raw binary frame on WebSocket, `b` + base64 on polling.
    MessageBinary(Bytes),
    /// `5`.
    Upgrade,
    /// `6`.
    Noop,
}

/// What to put on a WebSocket: the reference sends binary messages as binary
/// frames with no type byte, everything else as text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WsFrame {
    Text(String),
    Binary(Bytes),
}

/// Why a text packet could not be decoded; engine.io closes the session with
/// `parse error` on any of these.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum DecodeError {
    #[error("empty packet")]
    Empty,
    #[error("unknown packet type {0:?}")]
    UnknownType(char),
    #[error("invalid base64 in binary packet")]
    InvalidBase64,
    #[error("payload is not valid UTF-8")]
    InvalidUtf8,
}

impl Packet {
    /// Decodes a WebSocket text frame or one element of a polling payload.
    ///
    /// `b…` is accepted here too: engine.io's `decodePacket` does not know
    /// which transport a string came from.
    pub fn decode_text(s: &str) -> Result<Packet, DecodeError> {
        let mut chars = s.chars();
        let kind = chars.next().ok_or(DecodeError::Empty)?;
        let rest = chars.as_str();
        Ok(match kind {
            '0' => Packet::Open(rest.to_owned()),
            '1' => Packet::Close,
            '2' => Packet::Ping(non_empty(rest)),
            '3' => Packet::Pong(non_empty(rest)),
            '4' => Packet::Message(rest.to_owned()),
            '5' => Packet::Upgrade,
            '6' => Packet::Noop,
            'b' => Packet::MessageBinary(Bytes::from(
                LENIENT_BASE64
                    .decode(rest)
                    .map_err(|_| DecodeError::InvalidBase64)?,
            )),
            other => return Err(DecodeError::UnknownType(other)),
        })
    }

    /// Decodes a WebSocket binary frame: always a binary message, there is no
    /// type byte to read.
    pub fn decode_binary(frame: Bytes) -> Packet {
        Packet::MessageBinary(frame)
    }

    /// Text form, with binary as `b` + base64: what polling sends, and also a
    /// frame any WebSocket peer accepts.
    pub fn encode_text(&self) -> String {
        let mut out = String::with_capacity(self.encoded_len());
        self.encode_text_into(&mut out);
        out
    }

    /// Frame for the WebSocket transport, where binary goes out raw. A message's text becomes
    /// the frame's in place (its `4` put in front, in the room the Socket.IO encoder leaves),
    /// where encoding it anew allocated and copied it once more per delivery.
    pub fn into_ws_frame(self) -> WsFrame {
        match self {
            Packet::MessageBinary(bytes) => WsFrame::Binary(bytes),
            Packet::Message(mut text) => {
                text.insert(0, '4');
                WsFrame::Text(text)
            }
            other => WsFrame::Text(other.encode_text()),
        }
    }

    pub(super) fn encode_text_into(&self, out: &mut String) {
        match self {
            Packet::Open(json) => {
                out.push('0');
                out.push_str(json);
            }
            Packet::Close => out.push('1'),
            Packet::Ping(data) => {
                out.push('2');
                out.push_str(data.as_deref().unwrap_or(""));
            }
            Packet::Pong(data) => {
                out.push('3');
                out.push_str(data.as_deref().unwrap_or(""));
            }
            Packet::Message(text) => {
                out.push('4');
                out.push_str(text);
            }
            Packet::MessageBinary(bytes) => {
                out.push('b');
                STANDARD.encode_string(bytes, out);
            }
            Packet::Upgrade => out.push('5'),
            Packet::Noop => out.push('6'),
        }
    }

    /// Byte length of [`Packet::encode_text`], without encoding.
    pub(crate) fn encoded_len(&self) -> usize {
        1 + match self {
            Packet::Open(s) | Packet::Message(s) => s.len(),
            Packet::Ping(d) | Packet::Pong(d) => d.as_deref().map_or(0, str::len),
            Packet::MessageBinary(b) => b.len().div_ceil(3) * 4,
            Packet::Close | Packet::Upgrade | Packet::Noop => 0,
        }
    }
}

fn non_empty(s: &str) -> Option<String> {
    (!s.is_empty()).then(|| s.to_owned())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn decodes_every_text_type() {
        let cases = [
            ("0{\"sid\":\"x\"}", Packet::Open("{\"sid\":\"x\"}".into())),
            ("1", Packet::Close),
            ("2", Packet::Ping(None)),
            ("3", Packet::Pong(None)),
            ("4hello", Packet::Message("hello".into())),
            ("4", Packet::Message(String::new())),
            ("5", Packet::Upgrade),
            ("6", Packet::Noop),
            (
                "bAQID",
                Packet::MessageBinary(Bytes::from_static(&[1, 2, 3])),
            ),
            ("b", Packet::MessageBinary(Bytes::new())),
        ];
        for (wire, packet) in cases {
            assert_eq!(Packet::decode_text(wire), Ok(packet), "{wire:?}");
        }
    }

    #[test]
    fn probe_packets() {
        assert_eq!(
            Packet::decode_text("2probe"),
            Ok(Packet::Ping(Some(PROBE.into())))
        );
        assert_eq!(Packet::Pong(Some(PROBE.into())).encode_text(), "3probe");
        assert_eq!(
            Packet::Ping(Some(PROBE.into())).into_ws_frame(),
            WsFrame::Text("2probe".into())
        );
        assert_eq!(
            Packet::decode_text("3probe").unwrap().encode_text(),
            "3probe"
        );
    }

    #[test]
    fn encodes_every_type() {
        let cases = [
            (Packet::Open("{}".into()), "0{}"),
            (Packet::Close, "1"),
            (Packet::Ping(None), "2"),
            (Packet::Pong(None), "3"),
            (Packet::Message("wérld".into()), "4wérld"),
            (
                Packet::MessageBinary(Bytes::from_static(&[1, 2, 3])),
                "bAQID",
            ),
            (Packet::MessageBinary(Bytes::from_static(&[1, 2])), "bAQI="),
            (Packet::Upgrade, "5"),
            (Packet::Noop, "6"),
        ];
        for (packet, wire) in cases {
            assert_eq!(packet.encode_text(), wire);
            assert_eq!(packet.encoded_len(), wire.len(), "{wire:?}");
        }
    }

    #[test]
    fn ws_frames_carry_binary_raw() {
        let bin = Bytes::from_static(&[0, 255, 4]);
        assert_eq!(
            Packet::MessageBinary(bin.clone()).into_ws_frame(),
            WsFrame::Binary(bin.clone())
        );
        assert_eq!(
            Packet::decode_binary(bin.clone()),
            Packet::MessageBinary(bin)
        );
        assert_eq!(
            Packet::Message("4".into()).into_ws_frame(),
            WsFrame::Text("44".into())
        );
    }

    #[test]
    fn a_message_becomes_its_frame_in_place() {
        let mut text = String::with_capacity(32);
        text.push_str(r#"2["chat","x"]"#);
        let at = text.as_ptr();
        match Packet::Message(text).into_ws_frame() {
            WsFrame::Text(frame) => {
                assert_eq!(frame, r#"42["chat","x"]"#);
                assert_eq!(frame.as_ptr(), at, "the message's own buffer, not a copy");
            }
            WsFrame::Binary(_) => panic!("a text message makes a text frame"),
        }
    }

    #[test]
    fn unused_payloads_are_dropped_like_the_reference() {
        assert_eq!(Packet::decode_text("1foo"), Ok(Packet::Close));
        assert_eq!(Packet::decode_text("5probe"), Ok(Packet::Upgrade));
        assert_eq!(Packet::decode_text("6x"), Ok(Packet::Noop));
    }

    #[test]
    fn base64_padding_is_optional() {
        assert_eq!(
            Packet::decode_text("bAQI"),
            Ok(Packet::MessageBinary(Bytes::from_static(&[1, 2])))
        );
    }

    #[test]
    fn rejects_bad_text() {
        assert_eq!(Packet::decode_text(""), Err(DecodeError::Empty));
        assert_eq!(Packet::decode_text("7"), Err(DecodeError::UnknownType('7')));
        assert_eq!(
            Packet::decode_text("abc"),
            Err(DecodeError::UnknownType('a'))
        );
        assert_eq!(
            Packet::decode_text("é4"),
            Err(DecodeError::UnknownType('é'))
        );
        assert_eq!(Packet::decode_text("b!!"), Err(DecodeError::InvalidBase64));
        assert_eq!(Packet::decode_text("bA"), Err(DecodeError::InvalidBase64));
    }

    pub(crate) fn arb_packet() -> impl Strategy<Value = Packet> {
        // \x1e is the polling separator: the reference does not escape it in
        // text, so it cannot appear in a payload that must round-trip.
        let text = "[^\u{1e}]{0,40}";
        let payload = proptest::option::of("[^\u{1e}]{1,20}");
        prop_oneof![
            text.prop_map(Packet::Open),
            Just(Packet::Close),
            payload.clone().prop_map(Packet::Ping),
            payload.prop_map(Packet::Pong),
            text.prop_map(Packet::Message),
            proptest::collection::vec(any::<u8>(), 0..64)
                .prop_map(|v| Packet::MessageBinary(Bytes::from(v))),
            Just(Packet::Upgrade),
            Just(Packet::Noop),
        ]
    }

    proptest! {
        #[test]
        fn decode_text_never_panics(s in any::<String>()) {
            let _ = Packet::decode_text(&s);
        }

        #[test]
        fn text_roundtrip(p in arb_packet()) {
            let wire = p.encode_text();
            prop_assert_eq!(wire.len(), p.encoded_len());
            prop_assert_eq!(Packet::decode_text(&wire), Ok(p));
        }

        #[test]
        fn ws_roundtrip(p in arb_packet()) {
            let back = match p.clone().into_ws_frame() {
                WsFrame::Text(t) => Packet::decode_text(&t).unwrap(),
                WsFrame::Binary(b) => Packet::decode_binary(b),
            };
            prop_assert_eq!(back, p);
        }
    }
}
