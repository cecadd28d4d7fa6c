//! The `open` packet's JSON.

use serde::{Deserialize, Serialize};

use super::packet::Packet;

/// Body of the `open` packet.
///
/// Field order is the serialization order and matches the reference server;
/// clients and the official test suite check for exactly these keys, so no
/// other field may be added here.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Handshake {
    pub sid: String,
    /// `["websocket"]` for a polling session, `[]` for one opened over WebSocket.
    pub upgrades: Vec<String>,
    /// Milliseconds.
    pub ping_interval: u64,
    /// Milliseconds.
    pub ping_timeout: u64,
    /// Bytes; the client caps its polling batches to it.
    pub max_payload: u64,
}

impl Handshake {
    pub fn to_json(&self) -> String {
        // A struct of strings and integers has no way to fail serialization.
        serde_json::to_string(self).expect("handshake serializes")
    }

    pub fn to_packet(&self) -> Packet {
        Packet::Open(self.to_json())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node_defaults(sid: &str, upgrades: &[&str]) -> Handshake {
        Handshake {
            sid: sid.into(),
            upgrades: upgrades.iter().map(|s| s.to_string()).collect(),
            ping_interval: 25_000,
            ping_timeout: 20_000,
            max_payload: 1_000_000,
        }
    }

    #[test]
    fn open_packet_is_byte_exact() {
        assert_eq!(
            node_defaults("lv_VI97HAXpY6yYWAAAC", &["websocket"])
                .to_packet()
                .encode_text(),
            "0{\"sid\":\"lv_VI97HAXpY6yYWAAAC\",\"upgrades\":[\"websocket\"],\
             \"pingInterval\":25000,\"pingTimeout\":20000,\"maxPayload\":1000000}"
        );
    }

    #[test]
    fn websocket_session_has_no_upgrades() {
        assert_eq!(
            node_defaults("a", &[]).to_json(),
            "{\"sid\":\"a\",\"upgrades\":[],\"pingInterval\":25000,\
             \"pingTimeout\":20000,\"maxPayload\":1000000}"
        );
    }

    #[test]
    fn sid_is_escaped() {
        let json = node_defaults("a\"b", &[]).to_json();
        assert!(json.starts_with("{\"sid\":\"a\\\"b\","), "{json}");
    }

    #[test]
    fn has_exactly_the_five_keys() {
        let json = node_defaults("x", &["websocket"]).to_json();
        let value: serde_json::Value = serde_json::from_str(&json).unwrap();
        let mut keys: Vec<_> = value.as_object().unwrap().keys().cloned().collect();
        keys.sort();
        assert_eq!(
            keys,
            [
                "maxPayload",
                "pingInterval",
                "pingTimeout",
                "sid",
                "upgrades"
            ]
        );
        let back: Handshake = serde_json::from_str(&json).unwrap();
        assert_eq!(back, node_defaults("x", &["websocket"]));
    }
}
