//! Engine.IO v4 on the wire, as pure functions with the reference server's (npm `engine.io`
//! 6.6) behaviour: packets, polling payloads, the `open` handshake, and the validation of a
//! request's query with the error answers it gets. Nothing here does I/O or holds a session,
//! so every format is tested byte for byte; the transports and sessions beside this module
//! use them, never the other way round.

mod handshake;
mod packet;
mod payload;
mod request;
mod sid;

pub use handshake::Handshake;
pub use packet::{DecodeError, Packet, WsFrame, PROBE};
pub use payload::{decode_payload, encode_payload, encode_payload_capped};
pub use request::{query_sid, verify_request, EngineError, EngineRequest, Transport};
pub use sid::{node_tag, sid_owner, tagged_sid, NODE_TAG_LEN};
