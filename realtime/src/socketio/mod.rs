//! Socket.IO v5: the packet codec (module `codec`: the default parser, npm
//! `socket.io-parser` 4.2, as pure functions importing nothing else of the
//! crate), carried in Engine.IO `message` packets, and the server on top.
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
//! # Layers
//!
//! Each module depends only on those below it (`tests/module_graph.rs` checks
//! it from the source):
//!
//! * `behaviour`, `conformance`: built on the public API only; `echo`
//!   (Laravel Echo's protocol) and `app_events` (events to the app) below
//!   `behaviour`, and `client_rooms` (the rooms clients choose, and
//!   presence) below them;
//! * `server`: [`SocketIo`] and one future per connection (polled by the
//!   Engine.IO session's task), which decodes packets and dispatches them to
//!   namespaces and sockets, and delivers what the hub queued for them;
//! * `namespace`: [`Namespace`], socket creation and recovery, broadcasts;
//! * `socket`: one socket's events, acks, rooms and ordered delivery;
//! * `state`: the connection, namespace and socket state they share, which
//!   point at one another, so they are defined together here;
//! * `fleet_ops`: what needs every server's sockets (node's `fetchSockets`,
//!   `socketsJoin`, `allRooms`, ...), on `namespace` and the peers;
//! * `fleet_recovery`: connection state recovery on another node of the fleet;
//! * `options`, `stats`, `error`, `event`, `rooms`, `recovery`, `echo_shape`,
//!   `peers`: plain types and bookkeeping;
//! * `codec`: the wire formats.
//!
//! Messages flow one way through them: client events come in through
//! `server` to a socket's handlers, which publish to the hub; what the hub
//! queues for a socket goes out through its connection's future, woken once
//! for all of the connection's sockets.
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
//! # Other servers
//!
//! A server may share its namespaces with others through socket.io's Redis adapter protocol
//! ([`SocketIo::set_peers`], done by [`crate::cluster::adapter_node`]): broadcasts are handed to
//! them as well, and acks, [`BroadcastOperator::fetch_sockets`],
//! [`BroadcastOperator::sockets_join`], [`Namespace::all_rooms`], ... cover their sockets.
//! [`BroadcastOperator::local`] keeps an operation to this server (what a node does with what
//! another server sent).
//!
//! Abuse limits: the attachment count is capped by the decoder
//! ([`DEFAULT_MAX_ATTACHMENTS`]), JSON nesting by serde_json's recursion limit
//! (128), and frame sizes by the transport before anything reaches here.

mod app_events;
mod behaviour;
mod client_rooms;
mod codec;
#[cfg(any(test, feature = "conformance"))]
mod conformance;
mod echo;
mod echo_shape;
mod error;
mod event;
mod fleet_ops;
mod fleet_recovery;
mod namespace;
mod options;
mod peers;
mod recovery;
mod rooms;
mod server;
mod socket;
mod state;
mod stats;

#[cfg(test)]
mod server_tests;

pub use behaviour::{
    attach, install_behaviour, NamespaceBehaviour, RelayBucket, RelayRate, DEFAULT_RELAY_BURST,
    DEFAULT_RELAY_PER_SECOND, MAX_CLIENT_ROOMS, MAX_ROOM_NAME_LEN,
};
pub use codec::{
    placeholder, BinaryReassembler, Reassembly, SioDecoder, SioError, SioKind, SioMessage,
    SioPacket, DEFAULT_MAX_ATTACHMENTS, RESERVED_EVENTS,
};
#[cfg(any(test, feature = "conformance"))]
pub use conformance::{conformance_options, install_conformance, CONFORMANCE_CONNECT_TIMEOUT};
pub use error::{AckError, ConnectError, EmitError, RoomError};
pub use event::{Args, DisconnectReason, Event};
pub use fleet_recovery::{
    fingerprint, offset_count, FleetOffset, FleetSessions, SessionRecord, SessionStore,
    MAX_OFFSET_TOPICS,
};
pub use namespace::{AckAnswers, BroadcastOperator, Emitting, Namespace, SocketAck};
pub use options::{
    RecoveryOptions, SocketIoOptions, DEFAULT_CONNECT_TIMEOUT, DEFAULT_MAX_DISCONNECTION_DURATION,
    DEFAULT_MAX_PENDING_ACKS, DEFAULT_MAX_SESSIONS, DEFAULT_TRACKED_EVENTS,
};
pub use peers::{PeerAcks, Peers, PeersError, Selection, SocketInfo};
pub use recovery::DEDUPE_WINDOW;
pub use rooms::{generate_id, looks_like_id, namespace_topic, room_topic, ID_LEN, TOPIC_PREFIX};
pub use server::SocketIo;
pub use socket::{DEFAULT_EVENT, MAX_PRECONNECT_PACKETS};
pub use state::{AckSender, ConnectFuture, Socket};
pub use stats::SocketIoStats;
