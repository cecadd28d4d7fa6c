//! Many nodes, one realtime: what the fleet shares through Redis.
//!
//! Three parts, each pure protocol code under a thin I/O shell, on one pair of Redis links
//! (the backplane's command and pub/sub connections):
//!
//! * **Fleet sequencing of hub topics** ([`Backplane`]). One atomic Redis step per publish
//!   (a Lua script, [`script::PUBLISH`]) gives a topic's message its fleet-wide (epoch, seq),
//!   appends it to the topic's capped history and publishes it; every node `PSUBSCRIBE`s and
//!   delivers each topic's messages in seq order exactly once ([`cursor::Cursor`]): its own
//!   publish's reply and the pub/sub echo are one delivery, a gap (pub/sub lost during a
//!   reconnect) is backfilled from the history in Redis or declared a reset when the history no
//!   longer covers it, and a changed epoch (Redis lost the topic) is a reset. A client resuming
//!   on any node reads the same history ([`Backplane::resume`]). Key and channel layout:
//!   [`keys`]; frame bytes: [`frame`].
//! * **socket.io's redis adapter protocol**: the codec ([`adapter`]) and this node as a server
//!   of it ([`adapter_node::AdapterNode`], the Socket.IO server's
//!   [`Peers`](crate::socketio::Peers)): what `@socket.io/redis-emitter`, Node servers with
//!   `@socket.io/redis-adapter` 8.x and the Ruby/PHP emitters publish reaches this node's
//!   sockets, their requests are answered from them, and this node's broadcasts and requests
//!   reach them. The fleet's own nodes speak it too, and skip each other's copies of what the
//!   hub delivers already ([`adapter::target`]).
//! * **Laravel's redis broadcaster**: the codec ([`laravel`]) and the shell
//!   ([`laravel_node`]) that publishes each broadcast once for the fleet
//!   ([`Backplane::submit_once`]) to the topic of the channel's Socket.IO room.
//!
//! Beside them, two small records the nodes keep for each other on the same link: where each
//! node takes the Engine.IO requests other nodes forward to it ([`directory`]), and the
//! Socket.IO sessions any node can recover ([`sessions`]).
//!
//! The hub is wired to the backplane by [`node::start`]: the hub hands every publish to
//! [`Backplane::submit`] and answers the caller with the fleet position (503 on
//! [`BackplaneError::Unavailable`]); the backplane's [`Sink`] is the hub, which records each
//! [`Delivery`] at its fleet position in the local topic and fans it out to local subscribers
//! (the local hub stays the fast path: a node's own publish is delivered from the script's
//! reply, not after a second round trip); a resume that the local history cannot serve asks
//! [`Backplane::resume`] (see [`crate::hub`]'s "In a fleet"). The adapter and Laravel shells
//! are [`Listener`]s of the backplane's pub/sub link ([`Backplane::listen`]): it subscribes their
//! channels again after every reconnect.

pub mod adapter;
pub mod adapter_node;
pub mod backplane;
pub mod cursor;
pub mod directory;
pub mod frame;
pub mod history;
pub mod keys;
pub mod laravel;
pub mod laravel_node;
pub mod node;
pub mod script;
pub mod sessions;

#[cfg(test)]
mod cursor_tests;

pub use adapter_node::{AdapterConfig, AdapterNode, ServerSideAck};
pub use backplane::{
    Backplane, BackplaneConfig, BackplaneError, BackplaneStats, Delivery, Link, Listener, Pending,
    Sink, Subscriptions,
};
pub use history::Resume;
pub use laravel_node::LaravelConfig;
