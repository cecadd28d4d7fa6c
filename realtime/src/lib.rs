//! The realtime service: one hub of topics, and the transports that ride on it.
//!
//! Nothing here knows about pingora: the gateway adapts its sessions to [`seam`].

pub mod access;
pub mod app_events;
pub mod cluster;
pub mod diag;
pub mod engineio;
pub mod hub;
pub mod longpoll;
pub mod publish;
pub mod query;
pub mod seam;
pub mod socketio;
pub mod sse;
mod sync;
pub mod text;
pub mod topics;
pub mod websocket;
