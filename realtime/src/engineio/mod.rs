//! Engine.IO v4. The `codec` module holds the wire formats: packets, polling
//! payloads, the `open` handshake and request validation, as pure functions
//! with the reference server's (npm `engine.io` 6.6) wire behaviour; it
//! imports nothing else of the crate. Beside it, the transports and sessions.
//!
//! Transports own the I/O: a WebSocket feeds each frame to
//! [`Packet::decode_text`] / [`Packet::decode_binary`] and sends
//! [`Packet::into_ws_frame`]; polling decodes POST bodies with
//! [`decode_payload`] and answers GETs with [`encode_payload`]. Sizes are
//! bounded by the caller (`maxHttpBufferSize`) before anything is decoded.
//!
//! [`EngineServer`] puts them to work: a [`crate::seam::Service`] that runs
//! handshakes, long-polling, WebSocket and the upgrade between them, and
//! hands each connection to a [`ConnHandler`] as a [`Conn`].

mod codec;
mod config;
pub mod conn;
mod parts;
mod polling;
mod server;
mod session;
mod task;
#[cfg(test)]
mod tests;
mod websocket;

pub use codec::{
    decode_payload, encode_payload, encode_payload_capped, node_tag, query_sid, sid_owner,
    tagged_sid, verify_request, DecodeError, EngineError, EngineRequest, Handshake, Packet,
    Transport, WsFrame, NODE_TAG_LEN, PROBE,
};
pub use config::{
    AllowRequest, CorsConfig, CorsOrigin, EngineConfig, HandshakeRequest, DEFAULT_CORS_METHODS,
    DEFAULT_IN_QUEUE, DEFAULT_MAX_PAYLOAD, DEFAULT_MAX_SESSIONS, DEFAULT_MAX_SESSIONS_PER_CLIENT,
    DEFAULT_OUT_QUEUE, DEFAULT_PING_INTERVAL, DEFAULT_PING_TIMEOUT, DEFAULT_UPGRADE_TIMEOUT,
};
pub use conn::{
    CloseReason, Conn, ConnFuture, ConnHandler, ConnSender, ConnWork, Frame, HandshakeInfo,
    Incoming, SendError,
};
pub use server::EngineServer;
