//! The text form of one Socket.IO v5 packet:
//! `<type>[<#attachments>-][<nsp>,][<ack id>][<JSON payload>]`.

use std::fmt::Write as _;

use serde_json::Value;
use thiserror::Error;

/// Event names the reference refuses on input: they would collide with the
/// events its own sockets and EventEmitter raise.
pub const RESERVED_EVENTS: [&str; 6] = [
    "connect",
    "connect_error",
    "disconnect",
    "disconnecting",
    "newListener",
    "removeListener",
];

/// socket.io-parser's default `maxAttachments`.
pub const DEFAULT_MAX_ATTACHMENTS: usize = 10;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SioKind {
    Connect,
    Disconnect,
    Event,
    Ack,
    ConnectError,
    BinaryEvent,
    BinaryAck,
}

impl SioKind {
    /// Whether the wire form carries an attachment count.
    pub fn is_binary(self) -> bool {
        matches!(self, SioKind::BinaryEvent | SioKind::BinaryAck)
    }

    fn from_digit(b: u8) -> Option<SioKind> {
        Some(match b {
            b'0' => SioKind::Connect,
            b'1' => SioKind::Disconnect,
            b'2' => SioKind::Event,
            b'3' => SioKind::Ack,
            b'4' => SioKind::ConnectError,
            b'5' => SioKind::BinaryEvent,
            b'6' => SioKind::BinaryAck,
            _ => return None,
        })
    }

    fn digit(self) -> char {
        match self {
            SioKind::Connect => '0',
            SioKind::Disconnect => '1',
            SioKind::Event => '2',
            SioKind::Ack => '3',
            SioKind::ConnectError => '4',
            SioKind::BinaryEvent => '5',
            SioKind::BinaryAck => '6',
        }
    }
}

/// One Socket.IO packet as it is written in a text frame.
///
/// Binary attachments are not part of it: for `BinaryEvent`/`BinaryAck`,
/// `data` holds `{"_placeholder":true,"num":i}` objects and `attachments` says
/// how many binary frames follow (see [`super::SioMessage`] for the packet
/// with its attachments). For every other kind `attachments` is 0 and ignored.
#[derive(Debug, Clone, PartialEq)]
pub struct SioPacket {
    pub kind: SioKind,
    /// `/` when the wire omits it; an empty string encodes like `/`.
    pub nsp: String,
    pub id: Option<u64>,
    pub data: Option<Value>,
    pub attachments: usize,
}

/// Why a packet or attachment sequence is refused; the reference closes the
/// whole connection on any of these.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum SioError {
    #[error("empty packet")]
    Empty,
    #[error("unknown packet type")]
    UnknownType,
    #[error("illegal attachments")]
    IllegalAttachments,
    #[error("too many attachments")]
    TooManyAttachments,
    #[error("invalid ack id")]
    InvalidAckId,
    #[error("invalid payload")]
    InvalidPayload,
    #[error("attachment placeholder out of range")]
    InvalidPlaceholder,
    #[error("got plaintext data when reconstructing a packet")]
    UnexpectedText,
    #[error("got binary data when not reconstructing a packet")]
    UnexpectedBinary,
}

impl SioPacket {
    pub fn connect(nsp: impl Into<String>, data: Option<Value>) -> SioPacket {
        SioPacket::new(SioKind::Connect, nsp, None, data)
    }

    pub fn disconnect(nsp: impl Into<String>) -> SioPacket {
        SioPacket::new(SioKind::Disconnect, nsp, None, None)
    }

    /// `args` is the JSON array `[name, ...args]`.
    pub fn event(nsp: impl Into<String>, args: Value, id: Option<u64>) -> SioPacket {
        SioPacket::new(SioKind::Event, nsp, id, Some(args))
    }

    /// `args` is the JSON array of the acknowledgement's arguments.
    pub fn ack(nsp: impl Into<String>, args: Value, id: u64) -> SioPacket {
        SioPacket::new(SioKind::Ack, nsp, Some(id), Some(args))
    }

    /// `data` is `{"message":…}` (+ `"data"`), or a plain string from v4 peers.
    pub fn connect_error(nsp: impl Into<String>, data: Value) -> SioPacket {
        SioPacket::new(SioKind::ConnectError, nsp, None, Some(data))
    }

    fn new(
        kind: SioKind,
        nsp: impl Into<String>,
        id: Option<u64>,
        data: Option<Value>,
    ) -> SioPacket {
        SioPacket {
            kind,
            nsp: nsp.into(),
            id,
            data,
            attachments: 0,
        }
    }

    /// Decodes one text frame with socket.io-parser 4.2's rules.
    ///
    /// Where the reference leans on JavaScript's loose `Number()` coercion
    /// this is stricter, so nothing a real client sends is refused but
    /// oddities are: the attachment count must be 1+ ASCII digits (node also
    /// takes `5-`, ` 2-` or `0x2-`), the type a digit 0–6 (node reads an empty
    /// string as CONNECT), and a whitespace where an ack id may stand is an
    /// error (node reads it as ack id 0). JSON nesting deeper than 128 and
    /// ack ids beyond `u64` are refused too.
    pub fn decode(text: &str, max_attachments: usize) -> Result<SioPacket, SioError> {
        let bytes = text.as_bytes();
        let kind = SioKind::from_digit(*bytes.first().ok_or(SioError::Empty)?)
            .ok_or(SioError::UnknownType)?;
        // Every delimiter below is ASCII, so byte offsets are char boundaries.
        let mut i = 1;

        let mut attachments = 0;
        if kind.is_binary() {
            let dash = bytes[i..]
                .iter()
                .position(|&b| b == b'-')
                .ok_or(SioError::IllegalAttachments)?;
            let digits = &text[i..i + dash];
            if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
                return Err(SioError::IllegalAttachments);
            }
            // Too many digits for usize is too many attachments, as in node.
            attachments = digits.parse().unwrap_or(usize::MAX);
            if attachments > max_attachments {
                return Err(SioError::TooManyAttachments);
            }
            i += dash + 1;
        }

        let mut nsp = String::from("/");
        if bytes.get(i) == Some(&b'/') {
            // Runs to the comma or to the end: `40/random` is valid.
            let len = bytes[i..]
                .iter()
                .position(|&b| b == b',')
                .unwrap_or(bytes.len() - i);
            nsp = text[i..i + len].to_owned();
            i = (i + len + 1).min(bytes.len());
        }

        let mut id = None;
        let digits = bytes[i..].iter().take_while(|b| b.is_ascii_digit()).count();
        if digits > 0 {
            id = Some(
                text[i..i + digits]
                    .parse()
                    .map_err(|_| SioError::InvalidAckId)?,
            );
            i += digits;
        }

        let mut data = None;
        if i < bytes.len() {
            let json = &text[i..];
            if json.starts_with([' ', '\t', '\n', '\r']) {
                return Err(SioError::InvalidPayload);
            }
            let value: Value = serde_json::from_str(json).map_err(|_| SioError::InvalidPayload)?;
            if !payload_is_valid(kind, &value) {
                return Err(SioError::InvalidPayload);
            }
            data = Some(value);
        }

        Ok(SioPacket {
            kind,
            nsp,
            id,
            data,
            attachments,
        })
    }

    /// Text frame for this packet exactly as given (kind and attachment count
    /// included); to send a packet with binaries use
    /// [`super::SioMessage::encode`], which picks the kind.
    pub fn encode(&self) -> String {
        encode_parts(
            self.kind,
            self.attachments,
            &self.nsp,
            self.id,
            self.data.as_ref(),
        )
    }
}

pub(super) fn encode_parts(
    kind: SioKind,
    attachments: usize,
    nsp: &str,
    id: Option<u64>,
    data: Option<&Value>,
) -> String {
    let mut out = String::new();
    out.push(kind.digit());
    // Writing to a String cannot fail.
    if kind.is_binary() {
        let _ = write!(out, "{attachments}-");
    }
    if !nsp.is_empty() && nsp != "/" {
        out.push_str(nsp);
        out.push(',');
    }
    if let Some(id) = id {
        let _ = write!(out, "{id}");
    }
    if let Some(data) = data {
        let _ = write!(out, "{data}");
    }
    out
}

/// socket.io-parser's `isPayloadValid`: the shapes the server code above can
/// rely on.
fn payload_is_valid(kind: SioKind, value: &Value) -> bool {
    match kind {
        SioKind::Connect => value.is_object(),
        SioKind::Disconnect => false,
        SioKind::Event | SioKind::BinaryEvent => match value.as_array().and_then(|a| a.first()) {
            Some(Value::Number(_)) => true,
            Some(Value::String(name)) => !RESERVED_EVENTS.contains(&name.as_str()),
            _ => false,
        },
        SioKind::Ack | SioKind::BinaryAck => value.is_array(),
        SioKind::ConnectError => value.is_string() || value.is_object(),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn decode(text: &str) -> Result<SioPacket, SioError> {
        SioPacket::decode(text, DEFAULT_MAX_ATTACHMENTS)
    }

    fn packet(kind: SioKind, nsp: &str, id: Option<u64>, data: Option<Value>) -> SioPacket {
        SioPacket {
            kind,
            nsp: nsp.into(),
            id,
            data,
            attachments: 0,
        }
    }

    /// Decodes `wire`, checks the result, and checks it encodes back to `wire`.
    fn vector(wire: &str, expected: SioPacket) {
        assert_eq!(decode(wire), Ok(expected.clone()), "{wire}");
        assert_eq!(expected.encode(), wire);
    }

    #[test]
    fn connect_vectors() {
        vector("0", packet(SioKind::Connect, "/", None, None));
        vector(
            "0/custom,{\"token\":\"123\"}",
            packet(
                SioKind::Connect,
                "/custom",
                None,
                Some(json!({"token": "123"})),
            ),
        );
        vector(
            "0{\"sid\":\"oSO0OpakMV_3jnilAAAA\"}",
            SioPacket::connect("/", Some(json!({"sid": "oSO0OpakMV_3jnilAAAA"}))),
        );
        vector("0/admin,", SioPacket::connect("/admin", None));
        vector("0{}", SioPacket::connect("/", Some(json!({}))));
    }

    #[test]
    fn namespace_without_comma_runs_to_the_end() {
        assert_eq!(decode("0/random"), Ok(SioPacket::connect("/random", None)));
        assert_eq!(
            decode("2/admin[\"x\"]"),
            Ok(packet(SioKind::Event, "/admin[\"x\"]", None, None))
        );
    }

    #[test]
    fn disconnect_vectors() {
        vector("1", SioPacket::disconnect("/"));
        vector("1/admin,", SioPacket::disconnect("/admin"));
    }

    #[test]
    fn event_vectors() {
        vector(
            "2[\"foo\",1]",
            SioPacket::event("/", json!(["foo", 1]), None),
        );
        vector(
            "2/admin,13[\"foo\"]",
            SioPacket::event("/admin", json!(["foo"]), Some(13)),
        );
        vector("2[42,\"x\"]", SioPacket::event("/", json!([42, "x"]), None));
        vector(
            "2[\"Connect\"]",
            SioPacket::event("/", json!(["Connect"]), None),
        );
    }

    #[test]
    fn ack_vectors() {
        vector("3456[1,\"2\"]", SioPacket::ack("/", json!([1, "2"]), 456));
        vector("3/admin,0[]", SioPacket::ack("/admin", json!([]), 0));
    }

    #[test]
    fn connect_error_vectors() {
        vector(
            "4/random,{\"message\":\"Invalid namespace\"}",
            SioPacket::connect_error("/random", json!({"message": "Invalid namespace"})),
        );
        // Keys keep their order (serde_json `preserve_order`), as in the reference server.
        vector(
            "4{\"message\":\"Not authorized\",\"data\":{\"code\":7}}",
            SioPacket::connect_error(
                "/",
                json!({"message": "Not authorized", "data": {"code": 7}}),
            ),
        );
        vector(
            "4\"v4 style\"",
            SioPacket::connect_error("/", json!("v4 style")),
        );
    }

    #[test]
    fn binary_headers() {
        let placeholders = json!([
            "message",
            {"_placeholder": true, "num": 0},
            {"_placeholder": true, "num": 1}
        ]);
        vector(
            "52-[\"message\",{\"_placeholder\":true,\"num\":0},{\"_placeholder\":true,\"num\":1}]",
            SioPacket {
                attachments: 2,
                ..packet(SioKind::BinaryEvent, "/", None, Some(placeholders))
            },
        );
        vector(
            "62-789[{\"_placeholder\":true,\"num\":0},{\"_placeholder\":true,\"num\":1}]",
            SioPacket {
                attachments: 2,
                ..packet(
                    SioKind::BinaryAck,
                    "/",
                    Some(789),
                    Some(
                        json!([{"_placeholder": true, "num": 0}, {"_placeholder": true, "num": 1}]),
                    ),
                )
            },
        );
        vector(
            "51-/admin,456[\"up\",{\"_placeholder\":true,\"num\":0}]",
            SioPacket {
                attachments: 1,
                ..packet(
                    SioKind::BinaryEvent,
                    "/admin",
                    Some(456),
                    Some(json!(["up", {"_placeholder": true, "num": 0}])),
                )
            },
        );
        vector(
            "50-[\"none\"]",
            packet(SioKind::BinaryEvent, "/", None, Some(json!(["none"]))),
        );
    }

    #[test]
    fn payload_is_optional_for_every_type_but_disconnect_refuses_one() {
        // The reference only validates a payload that is present.
        for wire in ["0", "2", "3", "4", "2/a,", "31", "51-"] {
            assert!(decode(wire).is_ok(), "{wire}");
        }
        assert_eq!(decode("1{}"), Err(SioError::InvalidPayload));
        assert_eq!(decode("1/admin,{}"), Err(SioError::InvalidPayload));
        assert_eq!(decode("1[]"), Err(SioError::InvalidPayload));
    }

    #[test]
    fn invalid_packets_from_the_note() {
        assert_eq!(decode("abc"), Err(SioError::UnknownType));
        assert_eq!(decode("2{}"), Err(SioError::InvalidPayload));
        assert_eq!(decode("2abc[\"foo\"]"), Err(SioError::InvalidPayload));
    }

    #[test]
    fn unknown_types() {
        assert_eq!(decode(""), Err(SioError::Empty));
        for wire in ["7", "9[]", "-1", " 2[\"a\"]", "é"] {
            assert_eq!(decode(wire), Err(SioError::UnknownType), "{wire}");
        }
    }

    #[test]
    fn reserved_event_names() {
        for name in RESERVED_EVENTS {
            let wire = format!("2[\"{name}\",1]");
            assert_eq!(decode(&wire), Err(SioError::InvalidPayload), "{wire}");
            let wire = format!("51-[\"{name}\",{{\"_placeholder\":true,\"num\":0}}]");
            assert_eq!(decode(&wire), Err(SioError::InvalidPayload), "{wire}");
        }
    }

    #[test]
    fn event_payload_rules() {
        for wire in [
            "2[]",
            "2[null]",
            "2[{}]",
            "2[[\"a\"]]",
            "2[true]",
            "2\"foo\"",
            "2null",
            "2{\"a\":1}",
        ] {
            assert_eq!(decode(wire), Err(SioError::InvalidPayload), "{wire}");
        }
        assert!(decode("2[1.5]").is_ok());
        assert!(decode("2[-3,{}]").is_ok());
    }

    #[test]
    fn other_payload_rules() {
        for wire in [
            "0[]", "0\"x\"", "0null", "3{}", "3\"x\"", "4[]", "4null", "41.5", "6-[]",
        ] {
            assert!(decode(wire).is_err(), "{wire}");
        }
        for wire in ["0{}", "01", "3[]", "4{}", "4\"\"", "60-[]"] {
            assert!(decode(wire).is_ok(), "{wire}");
        }
    }

    #[test]
    fn invalid_json() {
        for wire in [
            "2[\"a\"",
            "2[\"a\"]x",
            "2[\"a\"]]",
            "2['a']",
            "2[\"\\ud800\"]",
        ] {
            assert_eq!(decode(wire), Err(SioError::InvalidPayload), "{wire}");
        }
        // Trailing whitespace is fine for JSON.parse and for serde_json.
        assert!(decode("2[\"a\"] ").is_ok());
    }

    #[test]
    fn whitespace_where_an_ack_id_may_stand_is_refused() {
        for wire in ["2 [\"a\"]", "2/admin,\t[\"a\"]", "2\n[\"a\"]", "313 []"] {
            assert_eq!(decode(wire), Err(SioError::InvalidPayload), "{wire:?}");
        }
    }

    #[test]
    fn ack_ids() {
        assert_eq!(
            decode("218446744073709551615[\"a\"]").unwrap().id,
            Some(u64::MAX)
        );
        assert_eq!(
            decode("218446744073709551616[\"a\"]"),
            Err(SioError::InvalidAckId)
        );
        assert_eq!(decode("2007[\"a\"]").unwrap().id, Some(7));
        assert_eq!(decode("2/a,12").unwrap().id, Some(12));
    }

    #[test]
    fn attachment_counts() {
        assert_eq!(decode("510-[\"a\"]").unwrap().attachments, 10);
        assert_eq!(decode("511-[\"a\"]"), Err(SioError::TooManyAttachments));
        assert_eq!(
            decode("5999999999999999999999999999-[\"a\"]"),
            Err(SioError::TooManyAttachments)
        );
        assert_eq!(
            SioPacket::decode("53-[\"a\"]", 2),
            Err(SioError::TooManyAttachments)
        );
        assert_eq!(SioPacket::decode("50-[\"a\"]", 0).unwrap().attachments, 0);
        for wire in [
            "5-[\"a\"]",
            "5a-[\"a\"]",
            "52[\"a\"]",
            "5",
            "6 2-[]",
            "5+1-[\"a\"]",
            "50x2-[\"a\"]",
        ] {
            assert_eq!(decode(wire), Err(SioError::IllegalAttachments), "{wire}");
        }
    }

    #[test]
    fn non_binary_kinds_ignore_the_attachment_field() {
        let mut p = SioPacket::event("/", json!(["a"]), None);
        p.attachments = 3;
        assert_eq!(p.encode(), "2[\"a\"]");
    }

    #[test]
    fn empty_namespace_encodes_as_root() {
        assert_eq!(SioPacket::disconnect("").encode(), "1");
    }

    #[test]
    fn deep_json_is_refused_without_overflowing_the_stack() {
        let wire = format!("2{}", "[".repeat(100_000));
        assert_eq!(decode(&wire), Err(SioError::InvalidPayload));
        let closed = format!("2{}{}", "[".repeat(100_000), "]".repeat(100_000));
        assert_eq!(decode(&closed), Err(SioError::InvalidPayload));
        let objects = format!("0{}", "{\"a\":".repeat(100_000));
        assert_eq!(decode(&objects), Err(SioError::InvalidPayload));
        // Within serde_json's limit of 128 it is accepted.
        let ok = format!("3{}{}", "[".repeat(120), "]".repeat(120));
        assert!(decode(&ok).is_ok());
    }

    // ---- property tests ----

    /// JSON without floats: serde_json's default float parsing may be off by
    /// one ulp, which would make round-trips flaky for no protocol reason.
    pub(crate) fn arb_json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            any::<u64>().prop_map(Value::from),
            any::<String>().prop_map(Value::from),
        ];
        leaf.prop_recursive(4, 32, 6, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::from),
                proptest::collection::btree_map(any::<String>(), inner, 0..6)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    pub(crate) fn arb_nsp() -> impl Strategy<Value = String> {
        "/[^,]{0,10}"
    }

    pub(crate) fn arb_object() -> impl Strategy<Value = Value> {
        proptest::collection::btree_map(any::<String>(), arb_json(), 0..4)
            .prop_map(|m| Value::Object(m.into_iter().collect()))
    }

    /// `[name, ...args]` with a name the decoder accepts.
    pub(crate) fn arb_event_args() -> impl Strategy<Value = Value> {
        let name = prop_oneof![
            any::<String>()
                .prop_filter("reserved", |s| !RESERVED_EVENTS.contains(&s.as_str()))
                .prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
        ];
        (name, proptest::collection::vec(arb_json(), 0..4)).prop_map(|(name, mut rest)| {
            rest.insert(0, name);
            Value::Array(rest)
        })
    }

    pub(crate) fn arb_ack_args() -> impl Strategy<Value = Value> {
        proptest::collection::vec(arb_json(), 0..4).prop_map(Value::Array)
    }

    fn arb_valid_packet() -> impl Strategy<Value = SioPacket> {
        let kind_data = prop_oneof![
            proptest::option::of(arb_object()).prop_map(|d| (SioKind::Connect, d)),
            Just((SioKind::Disconnect, None)),
            proptest::option::of(arb_event_args()).prop_map(|d| (SioKind::Event, d)),
            proptest::option::of(arb_ack_args()).prop_map(|d| (SioKind::Ack, d)),
            proptest::option::of(prop_oneof![
                any::<String>().prop_map(Value::from),
                arb_object()
            ])
            .prop_map(|d| (SioKind::ConnectError, d)),
            proptest::option::of(arb_event_args()).prop_map(|d| (SioKind::BinaryEvent, d)),
            proptest::option::of(arb_ack_args()).prop_map(|d| (SioKind::BinaryAck, d)),
        ];
        (
            kind_data,
            arb_nsp(),
            proptest::option::of(any::<u64>()),
            0..=DEFAULT_MAX_ATTACHMENTS,
        )
            .prop_map(|((kind, data), nsp, id, attachments)| SioPacket {
                kind,
                nsp,
                id,
                data,
                attachments: if kind.is_binary() { attachments } else { 0 },
            })
    }

    proptest! {
        #[test]
        fn decode_never_panics(s in any::<String>()) {
            let _ = decode(&s);
        }

        #[test]
        fn decode_never_panics_on_packet_like_input(s in "[0-6][0-9/,\\-a-z\\[\\]{}\":_ ]{0,30}") {
            let _ = decode(&s);
        }

        #[test]
        fn decode_never_panics_on_mangled_valid_packets(
            p in arb_valid_packet(),
            cut in any::<proptest::sample::Index>(),
            junk in "[^\u{0}]{0,3}",
        ) {
            let wire = p.encode();
            let mut at = cut.index(wire.len() + 1);
            while !wire.is_char_boundary(at) {
                at -= 1;
            }
            let _ = decode(&wire[..at]);
            let _ = decode(&format!("{}{junk}{}", &wire[..at], &wire[at..]));
        }

        #[test]
        fn roundtrip(p in arb_valid_packet()) {
            prop_assert_eq!(decode(&p.encode()), Ok(p));
        }
    }
}
