//! This node as one server among those that speak socket.io's Redis adapter protocol
//! ([`super::adapter`]): Node servers with `@socket.io/redis-adapter` 8.x, the emitters
//! (`@socket.io/redis-emitter`, the Ruby and PHP ones) and the fleet's other nodes. The I/O
//! shell around the codec, on the backplane's Redis links ([`Backplane::listen`],
//! [`Backplane::commands`]); the Socket.IO server's [`Peers`].
//!
//! Like a Node peer, for each namespace of the server, it `PSUBSCRIBE`s `P#nsp#*` and
//! `SUBSCRIBE`s `P-request#nsp#`, `P-response#nsp#` and its own response channel (so `PUBSUB
//! NUMSUB` counts it among the servers), and:
//!
//! * delivers what the others broadcast to this node's sockets ([`adapter::target`] decides
//!   which; written directly, [`BroadcastOperator::local`]);
//! * answers their requests from this node's sockets: `fetchSockets`, `allRooms`, `sockets`,
//!   `socketsJoin`, `socketsLeave`, `disconnectSockets`, broadcasts with acks (a count, then
//!   each socket's ack), and `serverSideEmit` to the handlers the application registered
//!   ([`AdapterNode::on_server_side_emit`]). A `serverSideEmitWithAck` always gets this
//!   node's answer: the handler's, or an empty one (node's `cb()`) when there is no handler
//!   (the gateway registers none) or it lets the ack go unanswered ([`ServerSideAck`]). A
//!   Node server without a listener stays silent instead, and the asker's whole call fails
//!   at its timeout, every other server's answer lost with it;
//! * publishes this node's broadcasts for them, and asks them what needs every server's
//!   sockets ([`Peers`]), waiting for as many answers as `PUBSUB NUMSUB` counts other servers,
//!   for [`AdapterConfig::request_timeout`] at most.
//!
//! What it publishes goes out in the order it is handed over, one pipelined round trip per
//! batch; while Redis is unreachable it is dropped (a broadcast was refused by the hub already
//! then) and requests fail at once.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use futures_util::future::{BoxFuture, FutureExt};
use redis::Value;
use serde_json::Value as Json;
use tokio::sync::{mpsc, oneshot};

use super::adapter::{
    self, AckGathering, Broadcast, Channel, Channels, Flags, Gathering, Opts, Request, Response,
    Selector,
};
use super::backplane::{Backplane, BackplaneError, Listener, Subscriptions};
use crate::hub::Payload;
use crate::socketio::{
    Args, BroadcastOperator, PeerAcks, Peers, PeersError, Selection, SocketInfo, SocketIo,
};
use crate::sync::lock;

/// How long a request waits for the other servers by default: node's adapter's
/// `requestsTimeout`.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// How long this node waits for its sockets' acks to another server's broadcast when the
/// request names no timeout.
const DEFAULT_ACK_TIMEOUT: Duration = Duration::from_secs(5);

/// The longest a peer may make this node wait for its sockets' acks.
const MAX_ACK_TIMEOUT: Duration = Duration::from_secs(60);

/// Publishes that may wait for the writer; past it they are dropped (and logged): Redis does
/// not keep up.
const OUT_QUEUE: usize = 16 * 1024;

/// Publishes sent in one pipelined round trip at most.
const MAX_BATCH: usize = 256;

/// Settings of the adapter protocol.
#[derive(Clone, Debug)]
pub struct AdapterConfig {
    /// The channels' prefix: `@socket.io/redis-adapter`'s `key` (`socket.io` by default).
    pub key_prefix: String,
    /// This node's uid in the protocol ([`adapter::node_uid`] of the node id).
    pub uid: String,
    /// How long a request waits for the other servers.
    pub request_timeout: Duration,
}

impl AdapterConfig {
    /// The defaults for node `node_id` under `key_prefix`.
    pub fn new(key_prefix: &str, node_id: &str) -> Self {
        AdapterConfig {
            key_prefix: key_prefix.to_string(),
            uid: adapter::node_uid(node_id),
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
        }
    }
}

/// What a server-side emit handler gets to answer with, when the sender waits for answers
/// (node's `io.serverSideEmitWithAck`): one value, once. Dropped without an answer, it sends
/// an empty one (node's `cb()`): the sender waits for one answer from every server, and a
/// server that stays silent makes its whole call fail at its timeout (`timeout reached`),
/// the other servers' answers with it.
pub struct ServerSideAck {
    /// `None` once answered.
    to: Option<AckTo>,
}

/// Where a server-side emit's answer goes.
struct AckTo {
    node: Weak<Inner>,
    nsp: String,
    request_id: String,
}

impl ServerSideAck {
    fn new(node: &Arc<Inner>, nsp: &str, request_id: String) -> Self {
        ServerSideAck {
            to: Some(AckTo {
                node: Arc::downgrade(node),
                nsp: nsp.to_string(),
                request_id,
            }),
        }
    }

    /// Sends the answer.
    pub fn send(mut self, data: Json) {
        self.answer(Some(data));
    }

    fn answer(&mut self, data: Option<Json>) {
        let Some(to) = self.to.take() else {
            return;
        };
        if let Some(node) = to.node.upgrade() {
            let response = Response::ServerSideEmitAck {
                request_id: to.request_id,
                data,
            };
            node.respond(&to.nsp, &response);
        }
    }
}

impl Drop for ServerSideAck {
    fn drop(&mut self) {
        self.answer(None);
    }
}

/// Handles another server's `serverSideEmit(event, ...args)`: the arguments, event first, and
/// the means to answer when the sender waits for answers.
pub type ServerSideHandler = Arc<dyn Fn(Vec<Json>, Option<ServerSideAck>) + Send + Sync>;

/// A request this node sent, waiting for the other servers' answers.
enum Waiting {
    Gather(Gathering, Option<oneshot::Sender<Gathering>>),
    Acks(AckGathering, Option<oneshot::Sender<AckGathering>>),
}

struct Inner {
    io: SocketIo,
    backplane: Backplane,
    channels: Channels,
    config: AdapterConfig,
    out: mpsc::Sender<(String, Vec<u8>)>,
    waiting: Mutex<HashMap<String, Waiting>>,
    server_side: Mutex<HashMap<String, ServerSideHandler>>,
}

/// This node in the adapter protocol. Cheap to clone.
#[derive(Clone)]
pub struct AdapterNode {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for AdapterNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdapterNode")
            .field("uid", &self.inner.config.uid)
            .field("key_prefix", &self.inner.config.key_prefix)
            .finish()
    }
}

impl AdapterNode {
    /// Makes `io` a server of the adapter protocol on `backplane`'s Redis, for the namespaces
    /// registered now. Must be called within a tokio runtime (its writer runs there); returns
    /// `None` if `io` has peers already.
    pub fn start(io: &SocketIo, backplane: &Backplane, config: AdapterConfig) -> Option<Self> {
        let (out, queue) = mpsc::channel(OUT_QUEUE);
        let inner = Arc::new(Inner {
            io: io.clone(),
            backplane: backplane.clone(),
            channels: Channels::new(&config.key_prefix),
            config,
            out,
            waiting: Mutex::default(),
            server_side: Mutex::default(),
        });
        let peers = Arc::new(PeersOf(Arc::downgrade(&inner)));
        if !io.set_peers(peers) {
            return None;
        }
        tokio::spawn(write(backplane.clone(), queue));
        let c = &inner.channels;
        let mut subscriptions = Subscriptions::default();
        for nsp in io.namespace_paths() {
            subscriptions.patterns.push(c.broadcast_pattern(&nsp));
            subscriptions.channels.push(c.request(&nsp));
            subscriptions.channels.push(c.response(&nsp));
            subscriptions
                .channels
                .push(c.response_to(&nsp, &inner.config.uid));
        }
        backplane.listen(subscriptions, Arc::new(OnRedis(Arc::downgrade(&inner))));
        Some(AdapterNode { inner })
    }

    /// This node's uid in the protocol.
    pub fn uid(&self) -> &str {
        &self.inner.config.uid
    }

    /// Handles the `serverSideEmit`s other servers (or an emitter) send to namespace `nsp`
    /// (replacing an earlier handler). Called on the Redis reading task: it must not block.
    /// Without a handler, a sender that waits for answers gets an empty one from this node.
    pub fn on_server_side_emit<F>(&self, nsp: &str, handler: F)
    where
        F: Fn(Vec<Json>, Option<ServerSideAck>) + Send + Sync + 'static,
    {
        lock(&self.inner.server_side).insert(nsp.to_string(), Arc::new(handler));
    }
}

/// The server's [`Peers`]: holds the node weakly (the node holds the server).
struct PeersOf(Weak<Inner>);

/// Routes the backplane's messages on the adapter's channels to the node.
struct OnRedis(Weak<Inner>);

impl Listener for OnRedis {
    fn on_message(&self, channel: &[u8], payload: &[u8]) {
        let Some(node) = self.0.upgrade() else {
            return;
        };
        match node.channels.parse(channel) {
            Some(ch @ Channel::Broadcast { .. }) => node.on_broadcast(&ch, payload),
            Some(Channel::Request { nsp }) => node.on_request(&nsp, payload),
            Some(Channel::Response { .. }) => node.on_response(payload),
            None => {}
        }
    }
}

fn selector_of(s: &Selection) -> Selector {
    Selector {
        rooms: s.rooms.clone(),
        except: s.except.clone(),
    }
}

/// A hub payload's arguments as Socket.IO arguments (the payload's data is their array).
fn args_of(payload: Payload) -> Args {
    let values = match payload.data {
        Json::Array(values) => values,
        other => vec![other],
    };
    Args {
        values,
        binaries: payload.attachments,
    }
}

/// A random request id, as node's adapter makes them (it only has to be unique among the
/// requests waiting).
fn request_id() -> String {
    format!("{:016x}", rand::random::<u64>())
}

impl Inner {
    /// The operator for the sockets `selection` names in `nsp`, this node's only.
    fn local(&self, nsp: &str, selection: &Selector) -> Option<BroadcastOperator> {
        Some(
            self.io
                .of(nsp)?
                .broadcast()
                .local()
                .to_rooms(selection.rooms.iter().cloned())
                .except_rooms(selection.except.iter().cloned()),
        )
    }

    /// Hands `bytes` to the writer for `channel`.
    fn publish(&self, channel: String, bytes: Vec<u8>) {
        match self.out.try_send((channel, bytes)) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full((channel, _))) => {
                tracing::warn!(channel = %channel, "socket.io adapter: too many messages waiting for redis; one dropped");
            }
            // The writer is gone: the runtime is shutting down.
            Err(mpsc::error::TrySendError::Closed(_)) => {}
        }
    }

    fn respond(&self, nsp: &str, response: &Response) {
        self.publish(
            self.channels.response(nsp),
            adapter::encode_response(response),
        );
    }

    fn request(&self, nsp: &str, request: &Request) {
        self.publish(self.channels.request(nsp), adapter::encode_request(request));
    }

    fn on_broadcast(&self, channel: &Channel, bytes: &[u8]) {
        let b = match adapter::decode_broadcast(bytes) {
            Ok(b) => b,
            Err(e) => {
                tracing::debug!(error = %e, "socket.io adapter: undecodable broadcast ignored");
                return;
            }
        };
        let Some(target) = adapter::target(channel, &b, &self.config.uid) else {
            return;
        };
        // Events only (the Ruby/PHP emitters' binary ones are type 5).
        if !matches!(b.packet.kind, 2 | 5) {
            return;
        }
        let payload = match adapter::to_payload(&b.packet) {
            Ok(p) => p,
            Err(e) => {
                tracing::debug!(error = %e, "socket.io adapter: broadcast without an event ignored");
                return;
            }
        };
        let selection = Selector {
            rooms: target.rooms,
            except: target.except,
        };
        if let Some(op) = self.local(&b.packet.nsp, &selection) {
            let event = payload.event.clone();
            // The flags (`volatile`, `compress`) change nothing here: the event is written to
            // each socket's queue like any other. A local emit is done when it returns.
            drop(op.emit(&event, args_of(payload)));
        }
    }

    fn on_request(self: &Arc<Self>, nsp: &str, bytes: &[u8]) {
        let request = match adapter::decode_request(bytes) {
            Ok(r) => r,
            Err(e) => {
                tracing::debug!(error = %e, "socket.io adapter: undecodable request ignored");
                return;
            }
        };
        let uid = match &request {
            Request::Sockets { uid, .. }
            | Request::AllRooms { uid, .. }
            | Request::Join { uid, .. }
            | Request::Leave { uid, .. }
            | Request::Disconnect { uid, .. }
            | Request::Fetch { uid, .. }
            | Request::ServerSideEmit { uid, .. }
            | Request::Broadcast { uid, .. } => uid,
        };
        // This node's own requests: done here already when they were sent.
        if uid.as_deref() == Some(self.config.uid.as_str()) {
            return;
        }
        let Some(ns) = self.io.of(nsp) else {
            return;
        };
        match request {
            Request::Sockets {
                request_id, rooms, ..
            } => {
                let selection = Selector {
                    rooms,
                    except: vec![],
                };
                let sockets = self
                    .local(nsp, &selection)
                    .map(|op| op.sockets().iter().map(|s| Json::from(s.id())).collect())
                    .unwrap_or_default();
                self.respond(
                    nsp,
                    &Response::Sockets {
                        request_id,
                        sockets,
                    },
                );
            }
            Request::AllRooms { request_id, .. } => {
                let rooms = ns.rooms().into_iter().collect();
                self.respond(nsp, &Response::AllRooms { request_id, rooms });
            }
            Request::Fetch {
                request_id, opts, ..
            } => {
                let sockets = self
                    .local(nsp, &opts)
                    .map(|op| op.sockets().iter().map(|s| s.info().to_json()).collect())
                    .unwrap_or_default();
                self.respond(
                    nsp,
                    &Response::Sockets {
                        request_id,
                        sockets,
                    },
                );
            }
            Request::Join { opts, rooms, .. } => {
                if let Some(op) = self.local(nsp, &opts) {
                    op.sockets_join(&rooms);
                }
            }
            Request::Leave { opts, rooms, .. } => {
                if let Some(op) = self.local(nsp, &opts) {
                    op.sockets_leave(&rooms);
                }
            }
            Request::Disconnect { opts, close, .. } => {
                if let Some(op) = self.local(nsp, &opts) {
                    op.disconnect_sockets(close);
                }
            }
            Request::ServerSideEmit {
                request_id, data, ..
            } => {
                let handler = lock(&self.server_side).get(nsp).cloned();
                let ack = request_id.map(|request_id| ServerSideAck::new(self, nsp, request_id));
                // Without a handler the ack is dropped here: an empty answer.
                if let Some(handler) = handler {
                    handler(data, ack);
                }
            }
            Request::Broadcast {
                request_id,
                packet,
                opts,
                ..
            } => self.broadcast_with_ack(nsp, request_id, &packet, &opts),
        }
    }

    /// Another server's broadcast with acks: this node's sockets get the event, the sender
    /// gets their count at once, then each ack as it comes.
    fn broadcast_with_ack(
        self: &Arc<Self>,
        nsp: &str,
        request_id: String,
        packet: &adapter::Packet,
        opts: &Opts,
    ) {
        let selection = Selector {
            rooms: opts.rooms.clone(),
            except: opts.except.clone(),
        };
        let (Some(op), Ok(payload)) = (self.local(nsp, &selection), adapter::to_payload(packet))
        else {
            return;
        };
        let sockets = op.sockets();
        self.respond(
            nsp,
            &Response::BroadcastClientCount {
                request_id: request_id.clone(),
                client_count: sockets.len() as u64,
            },
        );
        let timeout = opts
            .flags
            .timeout
            .map_or(DEFAULT_ACK_TIMEOUT, Duration::from_millis)
            .min(MAX_ACK_TIMEOUT);
        let event = payload.event.clone();
        let args = args_of(payload);
        for socket in sockets {
            let answer = socket.emit_with_ack(&event, args.clone(), timeout);
            let (node, nsp, request_id) = (Arc::clone(self), nsp.to_string(), request_id.clone());
            tokio::spawn(async move {
                // No answer in time: nothing is sent, as in node (the sender's own timeout
                // counts it).
                if let Ok(args) = answer.await {
                    let first = args.values.first().cloned().unwrap_or(Json::Null);
                    let packet = adapter::to_msgpack(&first, &args.binaries);
                    node.respond(&nsp, &Response::BroadcastAck { request_id, packet });
                }
            });
        }
    }

    fn on_response(&self, bytes: &[u8]) {
        let Ok(response) = adapter::decode_response(bytes) else {
            return;
        };
        let id = adapter::response_id(&response).to_string();
        let mut waiting = lock(&self.waiting);
        let complete = match waiting.get_mut(&id) {
            None => return,
            Some(Waiting::Gather(g, _)) => {
                g.take(response);
                g.complete()
            }
            Some(Waiting::Acks(g, _)) => {
                g.take(response);
                g.complete()
            }
        };
        if complete {
            match waiting.remove(&id) {
                Some(Waiting::Gather(g, Some(tx))) => {
                    let _ = tx.send(g);
                }
                Some(Waiting::Acks(g, Some(tx))) => {
                    let _ = tx.send(g);
                }
                _ => {}
            }
        }
    }

    /// How many other servers serve `nsp`: `PUBSUB NUMSUB` of its request channel, less this
    /// node.
    async fn other_servers(&self, nsp: &str) -> Result<usize, PeersError> {
        let mut cmd = redis::cmd("PUBSUB");
        cmd.arg("NUMSUB").arg(self.channels.request(nsp));
        let reply = self.backplane.command(&cmd).await.map_err(unavailable)?;
        let count = match &reply {
            Value::Array(items) => match items.as_slice() {
                [_, Value::Int(n)] => usize::try_from(*n).ok(),
                _ => None,
            },
            _ => None,
        };
        let count = count.ok_or_else(|| {
            PeersError::Unavailable(format!("unexpected answer to PUBSUB NUMSUB: {reply:?}"))
        })?;
        Ok(count.saturating_sub(1))
    }

    /// Sends the request `make` builds with a fresh id and gathers the other servers'
    /// answers.
    async fn ask(
        &self,
        nsp: &str,
        make: impl FnOnce(String) -> Request,
    ) -> Result<Gathering, PeersError> {
        let expected = self.other_servers(nsp).await?;
        if expected == 0 {
            return Ok(Gathering::new(0));
        }
        let id = request_id();
        let (tx, rx) = oneshot::channel();
        lock(&self.waiting).insert(
            id.clone(),
            Waiting::Gather(Gathering::new(expected), Some(tx)),
        );
        self.request(nsp, &make(id.clone()));
        let timeout = self.config.request_timeout;
        if let Ok(Ok(g)) = tokio::time::timeout(timeout, rx).await {
            return Ok(g);
        }
        let answered = match lock(&self.waiting).remove(&id) {
            Some(Waiting::Gather(g, _)) => g.progress().0,
            _ => 0,
        };
        Err(PeersError::Timeout {
            answered,
            expected,
            timeout,
        })
    }

    async fn ask_acks(
        &self,
        nsp: &str,
        to: &Selection,
        payload: &Payload,
        timeout: Duration,
    ) -> Result<PeerAcks, PeersError> {
        let expected = self.other_servers(nsp).await?;
        if expected == 0 {
            return Ok(PeerAcks::default());
        }
        let id = request_id();
        let (tx, rx) = oneshot::channel();
        lock(&self.waiting).insert(
            id.clone(),
            Waiting::Acks(AckGathering::new(expected), Some(tx)),
        );
        let request = Request::Broadcast {
            uid: Some(self.config.uid.clone()),
            request_id: id.clone(),
            packet: adapter::from_payload(nsp, payload),
            opts: Opts {
                rooms: to.rooms.clone(),
                except: to.except.clone(),
                flags: Flags {
                    timeout: Some(timeout.as_millis().try_into().unwrap_or(u64::MAX)),
                    ..Flags::default()
                },
            },
        };
        self.request(nsp, &request);
        let gathered = match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(g)) => g,
            _ => match lock(&self.waiting).remove(&id) {
                Some(Waiting::Acks(g, _)) => g,
                _ => AckGathering::new(expected),
            },
        };
        let answers = gathered
            .acks
            .iter()
            .filter_map(|packet| match adapter::ack_arg(packet) {
                Ok((value, binaries)) => Some(Args {
                    values: vec![value],
                    binaries,
                }),
                Err(e) => {
                    tracing::debug!(error = %e, "socket.io adapter: undecodable ack ignored");
                    None
                }
            })
            .collect();
        let (counted, expected) = gathered.progress();
        Ok(PeerAcks {
            sockets: usize::try_from(gathered.clients).unwrap_or(usize::MAX),
            answers,
            counted,
            expected,
        })
    }
}

fn unavailable(e: BackplaneError) -> PeersError {
    PeersError::Unavailable(e.to_string())
}

impl Peers for PeersOf {
    fn broadcast(&self, nsp: &str, to: &Selection, payload: &Payload) {
        let Some(node) = self.0.upgrade() else {
            return;
        };
        let opts = Opts {
            rooms: to.rooms.clone(),
            except: to.except.clone(),
            flags: Flags::default(),
        };
        let channel = adapter::broadcast_channel(&node.channels, nsp, &opts);
        let bytes = adapter::encode_broadcast(&Broadcast {
            uid: node.config.uid.clone(),
            packet: adapter::from_payload(nsp, payload),
            opts,
        });
        node.publish(channel, bytes);
    }

    fn broadcast_with_ack(
        &self,
        nsp: &str,
        to: &Selection,
        payload: &Payload,
        timeout: Duration,
    ) -> BoxFuture<'static, Result<PeerAcks, PeersError>> {
        let Some(node) = self.0.upgrade() else {
            return futures_util::future::ready(Ok(PeerAcks::default())).boxed();
        };
        let (nsp, to, payload) = (nsp.to_string(), to.clone(), payload.clone());
        async move { node.ask_acks(&nsp, &to, &payload, timeout).await }.boxed()
    }

    fn fetch_sockets(
        &self,
        nsp: &str,
        to: &Selection,
    ) -> BoxFuture<'static, Result<Vec<SocketInfo>, PeersError>> {
        let Some(node) = self.0.upgrade() else {
            return futures_util::future::ready(Ok(Vec::new())).boxed();
        };
        let (nsp, opts) = (nsp.to_string(), selector_of(to));
        async move {
            let uid = Some(node.config.uid.clone());
            let g = node
                .ask(&nsp, |request_id| Request::Fetch {
                    uid,
                    request_id,
                    opts,
                })
                .await?;
            Ok(g.sockets.iter().filter_map(SocketInfo::from_json).collect())
        }
        .boxed()
    }

    fn all_rooms(&self, nsp: &str) -> BoxFuture<'static, Result<Vec<String>, PeersError>> {
        let Some(node) = self.0.upgrade() else {
            return futures_util::future::ready(Ok(Vec::new())).boxed();
        };
        let nsp = nsp.to_string();
        async move {
            let uid = Some(node.config.uid.clone());
            let g = node
                .ask(&nsp, |request_id| Request::AllRooms { uid, request_id })
                .await?;
            Ok(g.rooms)
        }
        .boxed()
    }

    fn sockets_join(&self, nsp: &str, to: &Selection, rooms: &[String]) {
        if let Some(node) = self.0.upgrade() {
            let request = Request::Join {
                uid: Some(node.config.uid.clone()),
                opts: selector_of(to),
                rooms: rooms.to_vec(),
            };
            node.request(nsp, &request);
        }
    }

    fn sockets_leave(&self, nsp: &str, to: &Selection, rooms: &[String]) {
        if let Some(node) = self.0.upgrade() {
            let request = Request::Leave {
                uid: Some(node.config.uid.clone()),
                opts: selector_of(to),
                rooms: rooms.to_vec(),
            };
            node.request(nsp, &request);
        }
    }

    fn disconnect_sockets(&self, nsp: &str, to: &Selection, close: bool) {
        if let Some(node) = self.0.upgrade() {
            let request = Request::Disconnect {
                uid: Some(node.config.uid.clone()),
                opts: selector_of(to),
                close,
            };
            node.request(nsp, &request);
        }
    }
}

/// Publishes what the node hands over, in order, a batch per round trip; ends when the node
/// is gone.
async fn write(backplane: Backplane, mut queue: mpsc::Receiver<(String, Vec<u8>)>) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while queue.recv_many(&mut batch, MAX_BATCH).await > 0 {
        let mut pipe = redis::pipe();
        for (channel, bytes) in batch.drain(..) {
            pipe.cmd("PUBLISH").arg(channel).arg(bytes).ignore();
        }
        if let Err(e) = backplane.commands(&pipe).await {
            tracing::warn!(error = %e, "socket.io adapter: messages for the other servers not sent");
        }
    }
}
