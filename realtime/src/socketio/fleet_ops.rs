//! What needs every server's sockets, this one's and its [peers'](super::peers): fetching
//! them, making them join or leave rooms, disconnecting them, listing the rooms. Node's
//! `fetchSockets()`, `socketsJoin()`, `socketsLeave()`, `disconnectSockets()` and `allRooms()`;
//! [`BroadcastOperator::local`] is node's `local` flag. Without peers (a single node) they are
//! about this server's sockets.
//!
//! Server-side operations: no policy is asked (the app, or another server, decides), as in
//! node.

use std::collections::BTreeSet;
use std::future::Future;
use std::sync::Arc;

use serde_json::{Map, Value};

use super::namespace::{BroadcastOperator, Namespace};
use super::peers::{Peers, PeersError, Selection, SocketInfo};
use super::state::Socket;
use crate::sync::lock;

/// Request headers a socket's description leaves out: credentials, which node's adapter would
/// hand to every server and to whoever reads Redis.
const HIDDEN_HEADERS: [&str; 3] = ["cookie", "authorization", "proxy-authorization"];

impl BroadcastOperator {
    /// The peers to ask too, with what to ask them about: none for a local operation.
    fn remote(&self) -> Option<(Arc<dyn Peers>, Selection)> {
        match (self.local, self.ns.peers()) {
            (false, Some(peers)) => Some((Arc::clone(peers), self.selection())),
            _ => None,
        }
    }

    /// The sockets this operator selects, on every server (node's `fetchSockets()`): this
    /// server's first. Fails when a peer did not answer in time.
    pub fn fetch_sockets(
        &self,
    ) -> impl Future<Output = Result<Vec<SocketInfo>, PeersError>> + Send + 'static {
        let here: Vec<SocketInfo> = self.sockets().iter().map(Socket::info).collect();
        let nsp = self.ns.path.clone();
        let remote = self
            .remote()
            .map(|(peers, selection)| peers.fetch_sockets(&nsp, &selection));
        async move {
            let mut all = here;
            if let Some(remote) = remote {
                all.extend(remote.await?);
            }
            Ok(all)
        }
    }

    /// The selected sockets join `rooms`, on every server (node's `socketsJoin()`).
    pub fn sockets_join(&self, rooms: &[String]) {
        for socket in self.sockets() {
            for room in rooms {
                if let Err(e) = socket.join(room) {
                    tracing::warn!(socket = %socket.id(), room = %room, error = %e, "socket.io: socketsJoin could not join a socket");
                }
            }
        }
        if let Some((peers, selection)) = self.remote() {
            peers.sockets_join(&self.ns.path, &selection, rooms);
        }
    }

    /// The selected sockets leave `rooms`, on every server (node's `socketsLeave()`).
    pub fn sockets_leave(&self, rooms: &[String]) {
        for socket in self.sockets() {
            for room in rooms {
                socket.leave(room);
            }
        }
        if let Some((peers, selection)) = self.remote() {
            peers.sockets_leave(&self.ns.path, &selection, rooms);
        }
    }

    /// The selected sockets leave the namespace, on every server (node's
    /// `disconnectSockets(close)`); with `close`, their whole connection is closed.
    pub fn disconnect_sockets(&self, close: bool) {
        for socket in self.sockets() {
            if close {
                socket.disconnect_and_close();
            } else {
                socket.disconnect();
            }
        }
        if let Some((peers, selection)) = self.remote() {
            peers.disconnect_sockets(&self.ns.path, &selection, close);
        }
    }
}

impl Namespace {
    /// This server's rooms of the namespace that have a socket in them (each socket's own id
    /// is one).
    pub fn rooms(&self) -> BTreeSet<String> {
        lock(&self.inner.registry).rooms.keys().cloned().collect()
    }

    /// The rooms of the namespace on every server (node's `allRooms()`).
    pub fn all_rooms(
        &self,
    ) -> impl Future<Output = Result<BTreeSet<String>, PeersError>> + Send + 'static {
        let here = self.rooms();
        let remote = self.inner.peers().map(|p| p.all_rooms(&self.inner.path));
        async move {
            let mut all = here;
            if let Some(remote) = remote {
                all.extend(remote.await?);
            }
            Ok(all)
        }
    }
}

impl Socket {
    /// This socket as node's `fetchSockets()` describes it: its id and rooms, the handshake
    /// (headers without credentials, address, `secure`, `xdomain`, query, and the CONNECT's
    /// auth payload without the recovery `pid` and `offset`), and as data who the app said
    /// the client is (`user_id`, `user_info`; `{}` when anonymous).
    pub fn info(&self) -> SocketInfo {
        let info = self.handshake();
        let mut headers = Map::new();
        for name in info.headers.keys() {
            if HIDDEN_HEADERS.contains(&name.as_str()) {
                continue;
            }
            let values: Vec<&str> = info
                .headers
                .get_all(name)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .collect();
            headers.insert(name.as_str().to_string(), Value::from(values.join(", ")));
        }
        let mut query = Map::new();
        for (k, v) in crate::query::pairs(&info.query) {
            query.entry(k).or_insert(Value::String(v));
        }
        let auth = match self.auth() {
            Value::Object(m) => Value::Object(
                m.iter()
                    .filter(|(k, _)| *k != "pid" && *k != "offset")
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect(),
            ),
            other => other.clone(),
        };
        let address = info
            .client
            .or(info.peer.map(|p| p.ip()))
            .map_or(Value::Null, |ip| Value::from(ip.to_string()));
        let mut handshake = Map::new();
        handshake.insert("headers".into(), Value::Object(headers));
        handshake.insert("address".into(), address);
        handshake.insert(
            "xdomain".into(),
            Value::Bool(info.headers.contains_key("origin")),
        );
        handshake.insert("secure".into(), Value::Bool(info.secure));
        handshake.insert("query".into(), Value::Object(query));
        handshake.insert("auth".into(), auth);
        let user = self.user();
        let mut data = Map::new();
        if let Some(id) = &user.user_id {
            data.insert("user_id".into(), id.clone());
            data.insert("user_info".into(), user.user_info.clone());
        }
        SocketInfo {
            id: self.id().to_string(),
            rooms: self.rooms().into_iter().collect(),
            handshake: Value::Object(handshake),
            data: Value::Object(data),
        }
    }
}
