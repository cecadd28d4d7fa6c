//! HTTP long-polling payloads: several packets in one body.

use super::packet::{DecodeError, Packet};

/// Record separator between packets of a polling payload.
const SEPARATOR: char = '\u{1e}';

/// Joins packets into one polling body, as the reference server does for a GET
/// (it sends its whole write buffer at once).
pub fn encode_payload(packets: &[Packet]) -> String {
    encode_payload_capped(packets, usize::MAX).0
}

/// Joins as many leading packets as fit in `max_payload` bytes and returns the
/// body with the number of packets it holds.
///
/// A peer announces `maxPayload` in its handshake and answers a larger POST
/// with 413, so a sender must split its buffer; the first packet always goes
/// even when alone it is too big (as engine.io-client does), otherwise the
/// queue could never drain. The size counted is the exact encoded size, where
/// the client only estimates.
pub fn encode_payload_capped(packets: &[Packet], max_payload: usize) -> (String, usize) {
    let mut size = 0usize;
    let mut count = 0usize;
    for packet in packets {
        let next = size
            .saturating_add(usize::from(count > 0))
            .saturating_add(packet.encoded_len());
        if count > 0 && next > max_payload {
            break;
        }
        size = next;
        count += 1;
    }
    let mut out = String::with_capacity(size);
    for (i, packet) in packets[..count].iter().enumerate() {
        if i > 0 {
            out.push(SEPARATOR);
        }
        packet.encode_text_into(&mut out);
    }
    (out, count)
}

/// Decodes a POST body.
///
/// Any undecodable packet, including an empty body, fails the whole payload:
/// the reference closes the session with `parse error` then, so packets before
/// the bad one do not matter.
pub fn decode_payload(body: &[u8]) -> Result<Vec<Packet>, DecodeError> {
    let text = std::str::from_utf8(body).map_err(|_| DecodeError::InvalidUtf8)?;
    text.split(SEPARATOR).map(Packet::decode_text).collect()
}

#[cfg(test)]
mod tests {
    use super::super::packet::tests::arb_packet;
    use super::*;
    use bytes::Bytes;
    use proptest::prelude::*;

    const VERIFIED: &str = "4hello\u{1e}4wérld\u{1e}bAQID";

    fn verified_packets() -> Vec<Packet> {
        vec![
            Packet::Message("hello".into()),
            Packet::Message("wérld".into()),
            Packet::MessageBinary(Bytes::from_static(&[1, 2, 3])),
        ]
    }

    #[test]
    fn decodes_the_verified_body() {
        assert_eq!(decode_payload(VERIFIED.as_bytes()), Ok(verified_packets()));
    }

    #[test]
    fn encodes_the_verified_body() {
        assert_eq!(encode_payload(&verified_packets()), VERIFIED);
    }

    #[test]
    fn close_paired_with_noop() {
        assert_eq!(encode_payload(&[Packet::Noop, Packet::Close]), "6\u{1e}1");
        assert_eq!(
            decode_payload(b"6\x1e1"),
            Ok(vec![Packet::Noop, Packet::Close])
        );
    }

    #[test]
    fn single_packet_has_no_separator() {
        assert_eq!(encode_payload(&[Packet::Ping(None)]), "2");
        assert_eq!(encode_payload(&[]), "");
    }

    #[test]
    fn rejects_bad_bodies() {
        assert_eq!(decode_payload(b""), Err(DecodeError::Empty));
        assert_eq!(decode_payload(b"abc"), Err(DecodeError::UnknownType('a')));
        assert_eq!(decode_payload(b"4a\x1e"), Err(DecodeError::Empty));
        assert_eq!(decode_payload(b"4a\x1e\x1e4b"), Err(DecodeError::Empty));
        assert_eq!(
            decode_payload(b"4a\x1e9"),
            Err(DecodeError::UnknownType('9'))
        );
        assert_eq!(decode_payload(b"4\xff"), Err(DecodeError::InvalidUtf8));
        assert_eq!(decode_payload(b"b@@"), Err(DecodeError::InvalidBase64));
    }

    #[test]
    fn capped_payload_stops_before_the_limit() {
        let packets = verified_packets();
        // "4hello" = 6, +1+7 ("4wérld" is 7 bytes) = 14, +1+5 = 20
        assert_eq!(encode_payload_capped(&packets, 20), (VERIFIED.into(), 3));
        assert_eq!(
            encode_payload_capped(&packets, 19),
            ("4hello\u{1e}4wérld".into(), 2)
        );
        assert_eq!(encode_payload_capped(&packets, 14).1, 2);
        assert_eq!(encode_payload_capped(&packets, 13), ("4hello".into(), 1));
    }

    #[test]
    fn capped_payload_always_sends_the_first_packet() {
        let packets = verified_packets();
        assert_eq!(encode_payload_capped(&packets, 0), ("4hello".into(), 1));
        assert_eq!(encode_payload_capped(&[], 0), (String::new(), 0));
    }

    proptest! {
        #[test]
        fn decode_never_panics(body in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = decode_payload(&body);
        }

        #[test]
        fn decode_never_panics_on_text(s in "[0-6b\u{1e}a-zA-Z+/=é]{0,64}") {
            let _ = decode_payload(s.as_bytes());
        }

        #[test]
        fn payload_roundtrip(packets in proptest::collection::vec(arb_packet(), 1..8)) {
            let body = encode_payload(&packets);
            prop_assert_eq!(decode_payload(body.as_bytes()), Ok(packets));
        }

        #[test]
        fn capped_payload_is_a_prefix_within_the_limit(
            packets in proptest::collection::vec(arb_packet(), 0..8),
            max in 0usize..200,
        ) {
            let (body, n) = encode_payload_capped(&packets, max);
            prop_assert!(n <= packets.len());
            prop_assert_eq!(n == 0, packets.is_empty());
            prop_assert!(n == 1 || body.len() <= max);
            prop_assert_eq!(&body, &encode_payload(&packets[..n]));
            if n < packets.len() {
                // the next packet really did not fit
                let with_next = encode_payload(&packets[..=n]);
                prop_assert!(with_next.len() > max);
            }
        }
    }
}
