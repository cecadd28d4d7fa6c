//! The Socket.IO server: per Engine.IO connection, a future (polled by the
//! Engine.IO session's task) that decodes packets, multiplexes namespaces and
//! enforces the protocol's state rules, and one that delivers what the hub
//! queued for the connection's sockets.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::pin::Pin;

use crate::engineio::Incoming;
use std::sync::atomic::Ordering;
use std::sync::{Arc, RwLock};

use serde_json::Value;
use thiserror::Error;

use super::codec::{Outgoing, SioDecoder, SioError, SioKind, SioMessage, SioPacket};
use super::error::ConnectError;
use super::event::DisconnectReason;
use super::namespace::Namespace;
use super::options::SocketIoOptions;
use super::peers::{PeerSlot, Peers, Selection};
use super::rooms::{normalize_nsp, room_of};
use super::state::{ConnShared, ConnectFuture, ConnectHandler, Socket, SocketList};
use super::stats::SocketIoStats;
use crate::access::{self, Access};
use crate::engineio::{CloseReason, Conn, ConnHandler, ConnWork, Frame};
use crate::hub::{Hub, Payload};
use crate::sync::{read, write};

/// Why a connection was closed as broken.
#[derive(Debug, Error)]
enum ProtocolError {
    #[error(transparent)]
    Codec(#[from] SioError),
    /// Node's "invalid state": a CONNECT for a namespace already joined, or
    /// anything else for a namespace not joined.
    #[error("invalid state: {kind:?} packet for namespace {nsp}")]
    InvalidState { kind: SioKind, nsp: String },
}

pub(super) struct IoInner {
    hub: Hub,
    options: Arc<SocketIoOptions>,
    stats: Arc<SocketIoStats>,
    access: Access,
    namespaces: RwLock<HashMap<String, Namespace>>,
    /// The other servers of the namespaces ([`SocketIo::set_peers`]).
    peers: PeerSlot,
}

/// The Socket.IO server: namespaces over one hub. Hand it to the Engine.IO
/// server as its [`ConnHandler`]. Cheap to clone.
///
/// ```no_run
/// use realtime::hub::Hub;
/// use realtime::socketio::{Args, SocketIo, SocketIoOptions};
///
/// let io = SocketIo::new(Hub::default(), SocketIoOptions::default());
/// io.namespace("/chat", |socket| async move {
///     socket.join("lobby").ok();
///     socket.on("say", |socket, event, ack| {
///         let _ = socket.to("lobby").emit("said", event.args);
///         if let Some(ack) = ack {
///             let _ = ack.send(Args::new().arg("ok"));
///         }
///     });
///     Ok(())
/// });
/// ```
#[derive(Clone)]
pub struct SocketIo {
    pub(super) inner: Arc<IoInner>,
}

impl fmt::Debug for SocketIo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SocketIo")
            .field("options", &self.inner.options)
            .finish_non_exhaustive()
    }
}

impl SocketIo {
    /// A server whose clients may join any room and relay into it ([`Access::open`]): the
    /// application's connect handlers decide who gets in.
    pub fn new(hub: Hub, options: SocketIoOptions) -> SocketIo {
        SocketIo::with_access(hub, options, Access::open())
    }

    /// A server that asks `access` about every CONNECT (the app's connect callback, with the
    /// CONNECT's `auth` payload; a refusal is a CONNECT_ERROR with the app's reason), and
    /// whose built-in behaviours ([`crate::socketio::NamespaceBehaviour`]) ask it about each
    /// room a client joins or relays into.
    pub fn with_access(hub: Hub, options: SocketIoOptions, access: Access) -> SocketIo {
        SocketIo {
            inner: Arc::new(IoInner {
                hub,
                options: Arc::new(options),
                stats: Arc::default(),
                access,
                namespaces: RwLock::default(),
                peers: PeerSlot::default(),
            }),
        }
    }

    /// Who may connect, join and relay.
    pub fn access(&self) -> &Access {
        &self.inner.access
    }

    pub fn hub(&self) -> &Hub {
        &self.inner.hub
    }

    pub fn options(&self) -> &SocketIoOptions {
        &self.inner.options
    }

    pub fn stats(&self) -> &SocketIoStats {
        &self.inner.stats
    }

    /// Registers namespace `path` (`chat` means `/chat`) with its connect
    /// handler, or replaces the handler of an existing one.
    ///
    /// The handler runs for every CONNECT to the namespace, before the
    /// client is answered: it sees the auth payload ([`Socket::auth`]) and
    /// the handshake, registers event handlers, may join rooms and emit
    /// (those packets follow the CONNECT reply), and returns `Err` to refuse
    /// the client with a CONNECT_ERROR. While it runs, the connection's other
    /// packets wait, so it must not wait for this client (no
    /// `emit_with_ack` awaited inside).
    pub fn namespace<F, Fut>(&self, path: &str, on_connect: F) -> Namespace
    where
        F: Fn(Socket) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), ConnectError>> + Send + 'static,
    {
        let handler: ConnectHandler =
            Arc::new(move |socket| -> ConnectFuture { Box::pin(on_connect(socket)) });
        let path = normalize_nsp(path);
        let mut map = write(&self.inner.namespaces);
        if let Some(ns) = map.get(&path) {
            ns.set_handler(handler);
            return ns.clone();
        }
        let ns = Namespace::new(
            path.clone(),
            self.inner.hub.clone(),
            Arc::clone(&self.inner.options),
            Arc::clone(&self.inner.stats),
            self.inner.access.clone(),
            Arc::clone(&self.inner.peers),
            handler,
        );
        map.insert(path, ns.clone());
        ns
    }

    /// Shares the namespaces with other servers ([`Peers`]: socket.io's Redis adapter, through
    /// [`crate::cluster::adapter_node`]): broadcasts reach their sockets too, and acks,
    /// `fetch_sockets`, `all_rooms`, `sockets_join`, ... cover theirs. Once; false if peers
    /// were set already.
    pub fn set_peers(&self, peers: Arc<dyn Peers>) -> bool {
        self.inner.peers.set(peers).is_ok()
    }

    /// Whether other servers share the namespaces ([`SocketIo::set_peers`]).
    pub fn has_peers(&self) -> bool {
        self.inner.peers.get().is_some()
    }

    /// A message the hub took for `topic` from outside Socket.IO (the app's publish API)
    /// reaches this fleet's sockets in the rooms whose topic it is, through the hub; this hands
    /// it to the peers for theirs, as a broadcast of the namespace: to every socket for the
    /// namespace's topic, to the room's for a room's. A topic that is neither (a topic of
    /// another transport only) is not sent. Socket.IO's own broadcasts hand themselves over
    /// ([`super::BroadcastOperator::emit`]); this is for the others, once per message, by the
    /// node that took it.
    pub fn publish_to_peers(&self, topic: &str, payload: &Payload) {
        let Some(peers) = self.inner.peers.get() else {
            return;
        };
        for (path, ns) in read(&self.inner.namespaces).iter() {
            let to = if topic == ns.topic() {
                Selection::default()
            } else if let Some(room) = room_of(path, topic) {
                Selection {
                    rooms: vec![room.to_string()],
                    except: Vec::new(),
                }
            } else {
                continue;
            };
            peers.broadcast(path, &to, payload);
        }
    }

    /// The paths of the registered namespaces.
    pub fn namespace_paths(&self) -> Vec<String> {
        read(&self.inner.namespaces).keys().cloned().collect()
    }

    /// The namespace at `path`, if registered.
    pub fn of(&self, path: &str) -> Option<Namespace> {
        self.inner.namespace(&normalize_nsp(path))
    }
}

impl IoInner {
    fn namespace(&self, path: &str) -> Option<Namespace> {
        read(&self.namespaces).get(path).cloned()
    }
}

impl ConnHandler for SocketIo {
    fn on_connection(&self, conn: Conn) -> ConnWork {
        let shared = Arc::new(ConnShared::new(
            conn.sender.clone(),
            Arc::clone(&conn.info),
            Arc::clone(&self.inner.stats),
        ));
        ConnWork {
            incoming: Box::pin(run_connection(
                Arc::clone(&self.inner),
                conn.incoming,
                Arc::clone(&shared),
            )),
            outgoing: Some(Box::pin(deliver(shared))),
        }
    }
}

/// Delivers what the hub queues for the connection's sockets, until the connection's packets
/// are done with ([`ConnShared::end`]): one wake-up for all of them, whichever namespaces a
/// fan-out reaches. It waits on that wake-up alone: the connection's close, a second thing to
/// poll at every delivery, reaches it through the end of `run_connection`.
async fn deliver(shared: Arc<ConnShared>) {
    let mut sockets = SocketList::default();
    loop {
        shared.wake.raised().await;
        if shared.ended() {
            return;
        }
        if !shared.deliver_queued(&mut sockets) {
            // More than the budget: the rest after the connection's other work.
            shared.wake.raise();
            tokio::task::yield_now().await;
        }
    }
}

/// Serves one connection's packets until it closes, then ends its sockets.
///
/// Its future is allocated for the connection's life at its largest state's size, so what only
/// some packets need stays out of it: a packet is decoded and dispatched by a plain function,
/// and only a CONNECT's work (the app's check, the socket's creation, its handler) is awaited,
/// boxed; the connect timer is boxed too and dropped at the first connect (976 bytes before,
/// with the decoded packet and the dispatch laid out in it).
pub(super) async fn run_connection(
    io: Arc<IoInner>,
    mut incoming: Incoming,
    shared: Arc<ConnShared>,
) {
    io.stats.connections.fetch_add(1, Ordering::Relaxed);
    let mut decoder = SioDecoder::new(io.options.max_attachments);
    // Node clears the timer at the first successful connect.
    let mut connect_timeout = Some(Box::pin(tokio::time::sleep(io.options.connect_timeout)));
    let reason = loop {
        let timeout = async {
            match connect_timeout.as_mut() {
                Some(sleep) => sleep.await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            biased;
            reason = shared.sender.closed() => break reason,
            () = timeout => {
                connect_timeout = None;
                io.stats.connect_timeouts.fetch_add(1, Ordering::Relaxed);
                shared.sender.close(CloseReason::ServerClose);
            }
            frame = incoming.recv() => {
                let Some(frame) = frame else {
                    shared.sender.close(CloseReason::TransportClose);
                    continue;
                };
                let result = match receive(&io, &shared, &mut decoder, frame) {
                    Ok(Some(connect)) => {
                        if connect.await {
                            connect_timeout = None;
                        }
                        Ok(())
                    }
                    Ok(None) => Ok(()),
                    Err(e) => Err(e),
                };
                if let Err(e) = result {
                    io.stats.protocol_errors.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!("socket.io: closing connection: {e}");
                    shared.sender.close(CloseReason::ParseError(e.to_string()));
                }
            }
        }
    };
    for socket in shared.take_sockets() {
        socket.close(DisconnectReason::Connection(reason.clone()), false);
    }
    shared.end();
    io.stats.connections.fetch_sub(1, Ordering::Relaxed);
}

/// A CONNECT's work, to be awaited: whether the socket is now connected.
type Connecting<'a> = Pin<Box<dyn Future<Output = bool> + Send + 'a>>;

/// Decodes one frame from the client and acts on the packet it completes, if any: every
/// packet but a CONNECT at once, a CONNECT as the work it returns.
fn receive<'a>(
    io: &'a Arc<IoInner>,
    shared: &'a Arc<ConnShared>,
    decoder: &mut SioDecoder,
    frame: Frame,
) -> Result<Option<Connecting<'a>>, ProtocolError> {
    let decoded = match frame {
        Frame::Text(text) => decoder.decode_text(&text),
        Frame::Binary(bytes) => decoder.decode_binary(bytes),
    };
    match decoded {
        Ok(Some(msg)) => dispatch(io, shared, msg),
        Ok(None) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

fn dispatch<'a>(
    io: &'a Arc<IoInner>,
    shared: &'a Arc<ConnShared>,
    msg: SioMessage,
) -> Result<Option<Connecting<'a>>, ProtocolError> {
    let socket = shared.socket(&msg.packet.nsp);
    match (msg.packet.kind, socket) {
        (SioKind::Connect, None) => {
            let SioPacket { nsp, data, .. } = msg.packet;
            Ok(Some(Box::pin(connect(io, shared, nsp, data))))
        }
        (SioKind::Event | SioKind::BinaryEvent, Some(socket)) => {
            socket.on_event(msg);
            Ok(None)
        }
        (SioKind::Ack | SioKind::BinaryAck, Some(socket)) => {
            socket.on_ack(msg);
            Ok(None)
        }
        (SioKind::Disconnect, Some(socket)) => {
            socket.close(DisconnectReason::ClientNamespaceDisconnect, false);
            Ok(None)
        }
        (kind, _) => Err(ProtocolError::InvalidState {
            kind,
            nsp: msg.packet.nsp,
        }),
    }
}

/// Handles a CONNECT for a namespace this connection has not joined;
/// returns whether the socket is now connected.
async fn connect(
    io: &Arc<IoInner>,
    shared: &Arc<ConnShared>,
    nsp: String,
    auth: Option<Value>,
) -> bool {
    let refuse = |nsp: &str, error: &ConnectError| {
        let packet = SioPacket::connect_error(nsp, error.to_json());
        let _ = shared.write(Outgoing::packet(packet));
    };
    let Some(ns) = io.namespace(&nsp) else {
        io.stats.invalid_namespaces.fetch_add(1, Ordering::Relaxed);
        refuse(&nsp, &ConnectError::new("Invalid namespace"));
        return false;
    };
    let auth = auth.unwrap_or_else(|| Value::Object(serde_json::Map::new()));
    // The app's word first, with the connection's handshake and the CONNECT's payload; the
    // connection's other packets wait meanwhile (as they do for the connect handler), and a
    // connection that goes away stops the wait.
    let user = if io.access.checks_connect() {
        let client = shared.client_info();
        let payload = app_payload(&auth);
        let asked = io.access.connect(&client, Some(&payload), "socketio");
        let answer = tokio::select! {
            answer = asked => answer,
            _ = shared.sender.closed() => return false,
        };
        match answer {
            Ok(user) => user,
            Err(refusal) => {
                io.stats.rejected.fetch_add(1, Ordering::Relaxed);
                let error = ConnectError::new(refusal.to_string())
                    .with_data(serde_json::json!({"status": refusal.status().as_u16()}));
                refuse(&nsp, &error);
                return false;
            }
        }
    } else {
        access::Identity::default()
    };
    let socket = match ns.inner.create_socket(shared, auth, user).await {
        Ok(socket) => socket,
        Err(e) => {
            refuse(&nsp, &ConnectError::new(e.to_string()));
            return false;
        }
    };
    shared.insert(nsp.clone(), socket.clone());
    let handler = ns.inner.connect_handler();
    let outcome = tokio::select! {
        outcome = handler(socket.clone()) => Some(outcome),
        _ = shared.sender.closed() => None,
    };
    match outcome {
        Some(Ok(())) => {
            if socket.recovered() {
                io.stats.recovered.fetch_add(1, Ordering::Relaxed);
            }
            if socket.inner.finish_connect().is_err() {
                // The connection is closed (or closing as a slow consumer).
                let reason = shared
                    .sender
                    .close_reason()
                    .unwrap_or(CloseReason::ServerClose);
                socket.close(DisconnectReason::Connection(reason), false);
                return false;
            }
            true
        }
        Some(Err(error)) => {
            io.stats.rejected.fetch_add(1, Ordering::Relaxed);
            socket.close(DisconnectReason::ServerNamespaceDisconnect, false);
            refuse(&nsp, &error);
            false
        }
        // The connection went away meanwhile; the loop sees it next.
        None => {
            socket.close(
                DisconnectReason::Connection(CloseReason::TransportClose),
                false,
            );
            false
        }
    }
}

/// The CONNECT payload as the app gets it: without the `pid` and `offset` the client adds to
/// recover its session (the gateway's, and a secret: whoever has the `pid` can take the
/// session over).
fn app_payload(auth: &Value) -> Value {
    match auth {
        Value::Object(map) => Value::Object(
            map.iter()
                .filter(|(k, _)| *k != "pid" && *k != "offset")
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        ),
        other => other.clone(),
    }
}
