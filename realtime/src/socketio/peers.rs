//! The other servers that share this server's namespaces: Node servers with socket.io's Redis
//! adapter, the emitters, and the other nodes of a fleet, reached through Redis by
//! [`crate::cluster::adapter_node`], which implements [`Peers`].
//!
//! What goes through the peers is what node's adapter carries between servers: a broadcast
//! sent here is also handed to them (for their sockets; a fleet's own nodes get it from the hub
//! already), as is what the app publishes to a room's topic
//! ([`SocketIo::publish_to_peers`](super::SocketIo::publish_to_peers)), and the operations
//! that need every server's sockets (acks of a broadcast, `fetchSockets`, `allRooms`,
//! `socketsJoin`, `socketsLeave`, `disconnectSockets`) ask them too
//! ([`super::BroadcastOperator`], [`super::Namespace::all_rooms`]). Without peers (a single
//! node) those operations are about this server's sockets only.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use futures_util::future::BoxFuture;
use serde_json::{Map, Value};
use thiserror::Error;

use super::event::Args;
use crate::hub::Payload;

/// Which sockets: those in any of `rooms` (every socket of the namespace when it is empty),
/// minus those in any of `except`. Node's `io.in(rooms).except(rooms)`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Selection {
    /// Rooms whose sockets are selected; empty: all.
    pub rooms: Vec<String>,
    /// Rooms whose sockets are left out.
    pub except: Vec<String>,
}

/// One socket as `fetchSockets()` describes it, on whichever server it is (node's
/// `RemoteSocket`: `{id, handshake, rooms, data}`).
#[derive(Clone, Debug, PartialEq)]
pub struct SocketInfo {
    /// The socket id.
    pub id: String,
    /// Its rooms, its own id included.
    pub rooms: Vec<String>,
    /// What the server tells of the handshake (node: headers, address, query, auth, ...).
    pub handshake: Value,
    /// The app's data about the socket (node's `socket.data`).
    pub data: Value,
}

impl SocketInfo {
    /// The object node's adapter sends in a `fetchSockets` response.
    pub fn to_json(&self) -> Value {
        let mut m = Map::new();
        m.insert("id".into(), Value::from(self.id.as_str()));
        m.insert("handshake".into(), self.handshake.clone());
        m.insert("rooms".into(), Value::from(self.rooms.clone()));
        m.insert("data".into(), self.data.clone());
        Value::Object(m)
    }

    /// A socket of a `fetchSockets` response; `None` when it has no string `id`. Rooms that
    /// are numbers (node allows `socket.join(1)`) become their text.
    pub fn from_json(v: &Value) -> Option<SocketInfo> {
        let id = v.get("id")?.as_str()?.to_string();
        let rooms = match v.get("rooms") {
            Some(Value::Array(rooms)) => rooms
                .iter()
                .filter_map(|r| match r {
                    Value::String(s) => Some(s.clone()),
                    Value::Number(n) => Some(n.to_string()),
                    _ => None,
                })
                .collect(),
            _ => Vec::new(),
        };
        Some(SocketInfo {
            id,
            rooms,
            handshake: v.get("handshake").cloned().unwrap_or(Value::Null),
            data: v.get("data").cloned().unwrap_or(Value::Null),
        })
    }
}

/// What the peers' sockets answered to a broadcast that asked for acknowledgements.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PeerAcks {
    /// Sockets the peers sent it to (each peer says how many).
    pub sockets: usize,
    /// The answers that came in time: each socket's first ack argument (node's adapter carries
    /// no more, and no socket id).
    pub answers: Vec<Args>,
    /// Peers that said how many sockets they sent it to.
    pub counted: usize,
    /// Peers there are: those that did not count (`expected - counted`) had sockets nobody
    /// knows of.
    pub expected: usize,
}

/// Why the peers could not be asked, or did not all answer.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum PeersError {
    /// Some servers did not answer in time (node's adapter: "timeout reached while waiting
    /// for ... response").
    #[error("{answered} of {expected} other servers answered within {timeout:?}")]
    Timeout {
        /// Servers that answered.
        answered: usize,
        /// Servers there are besides this one.
        expected: usize,
        /// How long they were waited for.
        timeout: Duration,
    },
    /// The servers cannot be reached now (Redis is down).
    #[error("the other servers cannot be reached: {0}")]
    Unavailable(String),
}

/// The other servers of this server's namespaces ([`super::SocketIo::set_peers`]). Every
/// method returns at once; the answers come in the futures. Nothing here touches this
/// server's own sockets: the caller does that part.
pub trait Peers: Send + Sync + 'static {
    /// A broadcast of `nsp` was sent here: the peers deliver it to their sockets in `to`.
    fn broadcast(&self, nsp: &str, to: &Selection, payload: &Payload);

    /// Sends `payload` to the peers' sockets in `to`, each asked for an acknowledgement, and
    /// resolves with what came back within `timeout`.
    fn broadcast_with_ack(
        &self,
        nsp: &str,
        to: &Selection,
        payload: &Payload,
        timeout: Duration,
    ) -> BoxFuture<'static, Result<PeerAcks, PeersError>>;

    /// The peers' sockets in `to`.
    fn fetch_sockets(
        &self,
        nsp: &str,
        to: &Selection,
    ) -> BoxFuture<'static, Result<Vec<SocketInfo>, PeersError>>;

    /// The peers' rooms of `nsp`.
    fn all_rooms(&self, nsp: &str) -> BoxFuture<'static, Result<Vec<String>, PeersError>>;

    /// The peers' sockets in `to` join `rooms`.
    fn sockets_join(&self, nsp: &str, to: &Selection, rooms: &[String]);

    /// The peers' sockets in `to` leave `rooms`.
    fn sockets_leave(&self, nsp: &str, to: &Selection, rooms: &[String]);

    /// The peers' sockets in `to` are disconnected (`close`: their whole connection).
    fn disconnect_sockets(&self, nsp: &str, to: &Selection, close: bool);
}

/// Where a server keeps its peers once they are set: shared by its namespaces.
pub(super) type PeerSlot = Arc<OnceLock<Arc<dyn Peers>>>;
