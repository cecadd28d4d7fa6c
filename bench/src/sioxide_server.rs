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
//!   other path 404, a listen backlog of 511;
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
use tokio::net::TcpSocket;

#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Node's `maxHttpBufferSize` default (1e6 bytes).
const MAX_PAYLOAD: usize = 1_000_000;

/// Node's `server.listen` backlog (511). `TcpListener::bind` listens with 128 here, fewer than
/// the load client's 200 connects in flight: the accept queue overflowed and the dropped SYNs
/// came back a second later, so connects/s measured the backlog, not the server.
const LISTEN_BACKLOG: u32 = 511;

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
    let addr = SocketAddr::new(args.host, args.port);
    let socket = match addr {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    let listener = socket.listen(LISTEN_BACKLOG)?;
    println!("socketioxide on {addr} ({} threads)", args.threads);
    axum::serve(listener, app()).await?;
    Ok(())
}

/// The HTTP app: Socket.IO on /socket.io, 404 elsewhere.
fn app() -> axum::Router {
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
    axum::Router::new()
        .fallback(|| async { axum::http::StatusCode::NOT_FOUND })
        .layer(layer)
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::{SinkExt, StreamExt};
    use tokio::net::TcpStream;
    use tokio_tungstenite::tungstenite::Message;
    use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

    type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

    /// The next text frame other than a ping (answered), within 5 s.
    async fn next_text(ws: &mut Ws) -> String {
        loop {
            let m = tokio::time::timeout(Duration::from_secs(5), ws.next())
                .await
                .expect("a frame within 5 s")
                .expect("open")
                .expect("a frame");
            match m {
                Message::Text(t) if t.as_str() == "2" => {
                    ws.send(Message::text("3")).await.expect("pong");
                }
                Message::Text(t) => return t.as_str().to_owned(),
                _ => {}
            }
        }
    }

    /// A WebSocket client connected to namespace "/".
    async fn join(addr: SocketAddr) -> Ws {
        let url = format!("ws://{addr}/socket.io/?EIO=4&transport=websocket");
        let (mut ws, _) = tokio_tungstenite::connect_async(url).await.expect("ws");
        let open = next_text(&mut ws).await;
        assert!(open.starts_with("0{"), "{open}");
        ws.send(Message::text("40")).await.expect("send");
        let connected = next_text(&mut ws).await;
        assert!(connected.starts_with("40{"), "{connected}");
        ws
    }

    /// What the load client sends comes out at the other sockets byte for byte, every argument
    /// in place (the Node server's `socket.broadcast.emit(event, ...args)`), and never at the
    /// sender.
    #[tokio::test]
    async fn relays_every_argument_to_the_other_sockets_only() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app()).await });
        let mut a = join(addr).await;
        let mut b = join(addr).await;
        let chat = r#"42["chat",7,123456,"xxxx"]"#;
        a.send(Message::text(chat)).await.unwrap();
        assert_eq!(next_text(&mut b).await, chat);
        // Had `a` been sent its own event, it would come before this one.
        b.send(Message::text(r#"42["other",{"k":[1,"2"]}]"#))
            .await
            .unwrap();
        assert_eq!(next_text(&mut a).await, r#"42["other",{"k":[1,"2"]}]"#);
    }

    #[tokio::test]
    async fn other_paths_are_not_found() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app()).await });
        let mut s = TcpStream::connect(addr).await.unwrap();
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        s.write_all(b"GET /x HTTP/1.1\r\nhost: a\r\nconnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut head = String::new();
        s.read_to_string(&mut head).await.unwrap();
        assert!(head.starts_with("HTTP/1.1 404"), "{head}");
    }
}
