//! Socket.IO v5 on the wire (the default parser, npm `socket.io-parser` 4.2), as pure
//! functions: one packet's text form ([`packet`]), packets with binary attachments and the
//! per-connection decoder ([`binary`]), and what the server writes ([`outgoing`]). Nothing here
//! does I/O or knows a socket; the server, namespaces and sockets beside this module use it,
//! never the other way round.

mod binary;
mod outgoing;
mod packet;

pub use binary::{placeholder, BinaryReassembler, Reassembly, SioDecoder, SioMessage};
pub(crate) use outgoing::{event_head, Outgoing};
pub use packet::{SioError, SioKind, SioPacket, DEFAULT_MAX_ATTACHMENTS, RESERVED_EVENTS};

#[cfg(test)]
mod tests {
    //! The note's vectors as they appear inside Engine.IO packets.

    use super::*;
    use crate::engineio::Packet;
    use bytes::Bytes;
    use serde_json::json;

    fn through_engineio(wire: &str) -> Result<Option<SioMessage>, SioError> {
        let Ok(Packet::Message(text)) = Packet::decode_text(wire) else {
            panic!("{wire} is not an Engine.IO message");
        };
        SioDecoder::default().decode_text(&text)
    }

    #[test]
    fn engineio_wrapped_vectors() {
        let ok = [
            ("40", SioPacket::connect("/", None)),
            ("40/random", SioPacket::connect("/random", None)),
            ("41/admin,", SioPacket::disconnect("/admin")),
            (
                "42[\"foo\",1]",
                SioPacket::event("/", json!(["foo", 1]), None),
            ),
            (
                "42/admin,13[\"foo\"]",
                SioPacket::event("/admin", json!(["foo"]), Some(13)),
            ),
            ("43456[1,\"2\"]", SioPacket::ack("/", json!([1, "2"]), 456)),
            (
                "44/random,{\"message\":\"Invalid namespace\"}",
                SioPacket::connect_error("/random", json!({"message": "Invalid namespace"})),
            ),
        ];
        for (wire, packet) in ok {
            assert_eq!(
                through_engineio(wire),
                Ok(Some(packet.clone().into())),
                "{wire}"
            );
            let out = Packet::Message(SioMessage::from(packet).encode()).encode_text();
            if wire != "40/random" {
                assert_eq!(out, wire);
            }
        }
        for (wire, error) in [
            ("4abc", SioError::UnknownType),
            ("42{}", SioError::InvalidPayload),
            ("42abc[\"foo\"]", SioError::InvalidPayload),
            ("42[\"disconnect\"]", SioError::InvalidPayload),
        ] {
            assert_eq!(through_engineio(wire), Err(error), "{wire}");
        }
    }

    #[test]
    fn binary_event_over_engineio() {
        let mut d = SioDecoder::default();
        let frames = [
            Packet::decode_text(
                "452-[\"message\",{\"_placeholder\":true,\"num\":0},{\"_placeholder\":true,\"num\":1}]",
            )
            .unwrap(),
            Packet::decode_binary(Bytes::from_static(&[1, 2, 3])),
            Packet::decode_text("bBAU=").unwrap(),
        ];
        let mut out = None;
        for frame in frames {
            out = match frame {
                Packet::Message(t) => d.decode_text(&t).unwrap(),
                Packet::MessageBinary(b) => d.decode_binary(b).unwrap(),
                other => panic!("{other:?}"),
            };
        }
        let msg = out.unwrap();
        assert_eq!(
            msg.binaries,
            [Bytes::from_static(&[1, 2, 3]), Bytes::from_static(&[4, 5])]
        );
        assert_eq!(msg.packet.kind, SioKind::Event);
    }
}
