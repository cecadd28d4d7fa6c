//! Socket.IO v5 packet codec (the default parser, npm `socket.io-parser` 4.2),
//! carried in Engine.IO `message` packets.
//!
//! Input: feed each Engine.IO text message to [`SioDecoder::decode_text`] and
//! each binary message to [`SioDecoder::decode_binary`]; a complete
//! [`SioMessage`] comes out once its attachments are in. Output: send
//! [`SioMessage::encode`] as a text message, then each of its `binaries`.
//!
//! On top of the codec, [`SocketIo`] is the server (node's `socket.io` 4.8
//! behaviour): it implements [`ConnHandler`](crate::engineio::ConnHandler),
//! multiplexes namespaces over each Engine.IO connection, offers node's
//! connection state recovery ([`RecoveryOptions`]) and built-in behaviours
//! ([`NamespaceBehaviour`]; the official test-suite's reference server,
//! `install_conformance`, behind the `conformance` feature).
//!
//! # Rooms are hub topics
//!
//! Room `r` of namespace `/chat` is topic `sio:/chat:r` ([`room_topic`]);
//! every socket of `/chat` also listens to `sio:/chat` ([`namespace_topic`])
//! and to the room named by its own id. Whatever publishes to those topics
//! (the app's publish API, another transport) reaches the sockets as an
//! event, mapped from the hub [`Payload`](crate::hub::Payload) as:
//!
//! * event name = `payload.event` (`"message"` when empty; a reserved name
//!   such as `connect` is not delivered);
//! * arguments = the elements of `payload.data` when it is a JSON array,
//!   else `payload.data` as the single argument (`null` included);
//! * binary arguments = `payload.attachments`, referenced from the data by
//!   `{"_placeholder":true,"num":i}` objects.
//!
//! Broadcasts from this library publish the same way (data = the argument
//! array), so every subscriber of a topic sees one shape. One broadcast to
//! several rooms shares a [`MessageId`](crate::hub::MessageId) and reaches a
//! socket in several of them once.
//!
//! Abuse limits: the attachment count is capped by the decoder
//! ([`DEFAULT_MAX_ATTACHMENTS`]), JSON nesting by serde_json's recursion limit
//! (128), and frame sizes by the transport before anything reaches here.

mod behaviour;
mod binary;
#[cfg(any(test, feature = "conformance"))]
mod conformance;
mod namespace;
mod options;
mod packet;
mod recovery;
mod rooms;
mod server;
mod socket;

#[cfg(test)]
mod server_tests;

pub use behaviour::{
    attach, install_behaviour, NamespaceBehaviour, RelayBucket, RelayRate, DEFAULT_RELAY_BURST,
    DEFAULT_RELAY_PER_SECOND, MAX_CLIENT_ROOMS, MAX_ROOM_NAME_LEN,
};
pub use binary::{BinaryReassembler, Reassembly, SioDecoder, SioMessage};
#[cfg(any(test, feature = "conformance"))]
pub use conformance::{conformance_options, install_conformance, CONFORMANCE_CONNECT_TIMEOUT};
pub use namespace::{BroadcastOperator, ConnectError, ConnectFuture, Namespace};
pub use options::{
    RecoveryOptions, SocketIoOptions, DEFAULT_CONNECT_TIMEOUT, DEFAULT_MAX_DISCONNECTION_DURATION,
    DEFAULT_MAX_PENDING_ACKS, DEFAULT_MAX_SESSIONS, DEFAULT_TRACKED_EVENTS,
};
pub use packet::{SioError, SioKind, SioPacket, DEFAULT_MAX_ATTACHMENTS, RESERVED_EVENTS};
pub use recovery::DEDUPE_WINDOW;
pub use rooms::{generate_id, looks_like_id, namespace_topic, room_topic, ID_LEN, TOPIC_PREFIX};
pub use server::{SocketIo, SocketIoStats};
pub use socket::{
    placeholder, AckError, AckSender, Args, DisconnectReason, EmitError, Event, RoomError, Socket,
    DEFAULT_EVENT, MAX_PRECONNECT_PACKETS,
};

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
