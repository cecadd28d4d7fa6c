//! `sioxide-server`: the Rust Socket.IO peer of bench/socketio.sh, the `socketioxide` crate on
//! axum/hyper, plain HTTP.
//!
//!   sioxide-server [--threads 2] PORT [HOST]
//!
//! Issue 16 measures the gateway against Node socket.io and against the strongest Rust
//! implementation, with the same load client in one run. The figures (CPU per delivery, latency,
//! memory per idle connection) only compare servers if every server does the same work, so this
//! one does what bench/node/server.js does, setting for setting:
//! - namespace "/", and every client event, whatever its name and arguments, is broadcast to all
//!   the other sockets of the namespace (Node: `socket.onAny((e, ...a) =>
//!   socket.broadcast.emit(e, ...a))`; here the fallback handler and `socket.broadcast()`);
//! - Engine.IO settings at Node's defaults: pingInterval 25 s, pingTimeout 20 s, upgradeTimeout
//!   10 s, connectTimeout 45 s, maxHttpBufferSize 1e6 bytes (also the WebSocket message limit in
//!   Node's `ws`; socketioxide's own defaults are 100 kB and 64 MiB), polling and WebSocket
//!   transports, path /socket.io, no client bundle served, no connection state recovery, any
//!   other path 404;
//! - Node queues outgoing packets without bound, socketioxide drops a packet when a socket's
//!   queue (128 by default) is full: the queue is raised to 1,024 so that a loss is never this
//!   setting's (the load client keeps at most `WINDOW` events outstanding; tokio's channel
//!   allocates its slots in blocks of 32 as they fill, so an idle socket does not pay for it).
//!
//! The runtime has `--threads` workers, the gateway's `threads` (GW_THREADS in the script), and
//! the gateway's allocator (jemalloc), so neither is a difference between the two.

use std::borrow::Cow;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use clap::Parser;
use serde::de::{Deserialize, Deserializer, SeqAccess, Visitor};
use serde::ser::{Serialize, SerializeTuple, Serializer};
use socketioxide::extract::{Data, Event, SocketRef};
use socketioxide::SocketIo;

#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Node's `maxHttpBufferSize` default (1e6 bytes).
const MAX_PAYLOAD: usize = 1_000_000;

#[derive(Parser)]
#[command(
    name = "sioxide-server",
    about = "socketioxide reference server for bench/socketio.sh"
)]
struct Args {
    /// Listen port (plain HTTP).
    port: u16,
    /// Listen address.
    #[arg(default_value = "127.0.0.1")]
    host: IpAddr,
    /// Tokio worker threads (the gateway's `threads`).
    #[arg(long, default_value_t = 2)]
    threads: usize,
}

/// All the arguments of one event, in order, relayed as they came: Node's `...args`.
///
/// socketioxide hands a handler either the first argument (any non-tuple type) or all of them
/// (a tuple-like type). This one is tuple-like both ways (`deserialize_tuple` /
/// `serialize_tuple`) with any length, so `["chat", 1, 2, "x"]` is relayed as
/// `["chat", 1, 2, "x"]`, not as `["chat", [1, 2, "x"]]` or `["chat", 1]`.
struct EventArgs(Vec<serde_json::Value>);

impl Serialize for EventArgs {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut t = s.serialize_tuple(self.0.len())?;
        for v in &self.0 {
            t.serialize_element(v)?;
        }
        t.end()
    }
}

impl<'de> Deserialize<'de> for EventArgs {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct All;
        impl<'de> Visitor<'de> for All {
            type Value = EventArgs;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("the arguments of an event")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<EventArgs, A::Error> {
                let mut v = Vec::with_capacity(seq.size_hint().unwrap_or(1));
                while let Some(x) = seq.next_element()? {
                    v.push(x);
                }
                Ok(EventArgs(v))
            }
        }
        // Any length: the deserializer reads the array to its end whatever `len` says.
        d.deserialize_tuple(usize::MAX, All)
    }
}

/// Every event of a socket goes to every other socket of the namespace.
async fn relay(socket: SocketRef, Event(event): Event, Data(args): Data<EventArgs>) {
    // A socket that closed meanwhile is not an error of the relay (Node ignores it too).
    let _ = socket.broadcast().emit(&*event, &args).await;
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.threads.max(1))
        .enable_all()
        .build()?;
    rt.block_on(serve(args))
}

async fn serve(args: Args) -> anyhow::Result<()> {
    let (layer, io) = SocketIo::builder()
        .req_path(Cow::Borrowed("/socket.io"))
        .ping_interval(Duration::from_secs(25))
        .ping_timeout(Duration::from_secs(20))
        .upgrade_timeout(Duration::from_secs(10))
        .connect_timeout(Duration::from_secs(45))
        .max_payload(MAX_PAYLOAD as u64)
        .ws_max_message_size(MAX_PAYLOAD)
        .ws_max_frame_size(MAX_PAYLOAD)
        .max_buffer_size(1024)
        .build_layer();
    io.ns("/", async |socket: SocketRef| socket.on_fallback(relay));
    // Any other path: 404, as Node's HTTP server answers. (The fallback comes first: a layer
    // wraps only what the router already has.)
    let app = axum::Router::new()
        .fallback(|| async { axum::http::StatusCode::NOT_FOUND })
        .layer(layer);
    let addr = SocketAddr::new(args.host, args.port);
    let listener = tokio::net::TcpListener::bind(addr).await?;
    println!("socketioxide on {addr} ({} threads)", args.threads);
    axum::serve(listener, app).await?;
    Ok(())
}
