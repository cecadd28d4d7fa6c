//! `seam-test`: a diagnostic service that uses every shape of exchange the seam offers, so the
//! gateway's adapter is proven end to end before any real transport relies on it.
//!
//! Under its route: `…/echo` (the body read in full), `…/hold?ms=N` (a held answer),
//! `…/stream?n=N&interval_ms=M` (a streamed answer), `…/ws` (a WebSocket echo on an upgraded
//! stream) and `…/stats` (how many held requests are waiting, and how many were abandoned by
//! their client, which proves the gateway drops a transport's future when the client leaves).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use http::StatusCode;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::WebSocketStream;

use crate::seam::{websocket_accept, Request, Response, Service};

/// Bodies above this are refused: the echo is a diagnostic, not an upload sink.
const MAX_ECHO_BODY: usize = 1024 * 1024;

#[derive(Default)]
struct Counters {
    held_now: AtomicU64,
    held_abandoned: AtomicU64,
    held_completed: AtomicU64,
}

#[derive(Default)]
pub struct SeamTest {
    counters: Arc<Counters>,
}

/// Counts a held request as waiting; if dropped before completing, the client left.
struct Held {
    counters: Arc<Counters>,
    done: bool,
}

impl Drop for Held {
    fn drop(&mut self) {
        self.counters.held_now.fetch_sub(1, Ordering::SeqCst);
        let c = if self.done {
            &self.counters.held_completed
        } else {
            &self.counters.held_abandoned
        };
        c.fetch_add(1, Ordering::SeqCst);
    }
}

fn param(query: &str, name: &str) -> Option<u64> {
    query
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == name)
        .and_then(|(_, v)| v.parse().ok())
}

#[async_trait::async_trait]
impl Service for SeamTest {
    async fn call(&self, req: Request) -> Response {
        let path = req.head.uri.path().to_string();
        let last = path.rsplit('/').next().unwrap_or("");
        let query = req.query().to_string();
        match last {
            "echo" => {
                let method = req.head.method.to_string();
                let peer = req.peer.map(|p| p.to_string()).unwrap_or_default();
                let secure = req.secure;
                match req.body.collect(MAX_ECHO_BODY).await {
                    Ok(body) => Response::full(
                        StatusCode::OK,
                        "application/json",
                        serde_json::json!({
                            "method": method, "path": path, "query": query,
                            "body_len": body.len(), "peer": peer, "secure": secure,
                        })
                        .to_string(),
                    ),
                    Err(e) => Response::text(StatusCode::PAYLOAD_TOO_LARGE, format!("{e}\n")),
                }
            }
            "hold" => {
                let ms = param(&query, "ms").unwrap_or(1000).min(600_000);
                self.counters.held_now.fetch_add(1, Ordering::SeqCst);
                let mut held = Held {
                    counters: self.counters.clone(),
                    done: false,
                };
                tokio::time::sleep(Duration::from_millis(ms)).await;
                held.done = true;
                Response::text(StatusCode::OK, format!("held {ms}\n"))
            }
            "stream" => {
                let n = param(&query, "n").unwrap_or(5).min(10_000);
                let every = Duration::from_millis(param(&query, "interval_ms").unwrap_or(100));
                let (tx, rx) = tokio::sync::mpsc::channel(4);
                tokio::spawn(async move {
                    for i in 1..=n {
                        if tx.send(format!("chunk {i}\n").into()).await.is_err() {
                            return;
                        }
                        tokio::time::sleep(every).await;
                    }
                });
                let head = http::Response::builder()
                    .header(http::header::CONTENT_TYPE, "text/plain; charset=utf-8")
                    .header(http::header::CACHE_CONTROL, "no-store")
                    .body(())
                    .map(|r| r.into_parts().0);
                match head {
                    Ok(head) => Response::Stream {
                        head,
                        body: crate::seam::channel_body(rx),
                    },
                    Err(_) => Response::text(StatusCode::INTERNAL_SERVER_ERROR, "no head\n"),
                }
            }
            "ws" => match websocket_accept(&req, None) {
                Ok(head) => Response::Upgrade {
                    head,
                    on_upgrade: Box::new(|io| {
                        Box::pin(async move {
                            let mut ws =
                                WebSocketStream::from_raw_socket(io, Role::Server, None).await;
                            while let Some(Ok(msg)) = ws.next().await {
                                if msg.is_text() || msg.is_binary() {
                                    if ws.send(msg).await.is_err() {
                                        return;
                                    }
                                } else if msg.is_close() {
                                    return;
                                }
                            }
                        })
                    }),
                },
                Err(refusal) => refusal.into(),
            },
            "stats" => Response::full(
                StatusCode::OK,
                "application/json",
                serde_json::json!({
                    "held_now": self.counters.held_now.load(Ordering::SeqCst),
                    "held_abandoned": self.counters.held_abandoned.load(Ordering::SeqCst),
                    "held_completed": self.counters.held_completed.load(Ordering::SeqCst),
                })
                .to_string(),
            ),
            _ => Response::text(
                StatusCode::NOT_FOUND,
                format!("no such diagnostic: {path}\n"),
            ),
        }
    }
}

/// `protocol-suites`: what the official protocol test suites (socketio/engine.io-protocol and
/// socketio/socket.io-protocol, folder `test-suite/`) expect on `http://localhost:3000`, so
/// they can be run against a real deployment of the transports (the gateway mounts it on a
/// route; `examples/conformance.rs` serves it alone): a raw Engine.IO echo at `/engine.io/`,
/// and Socket.IO at `/socket.io/` with the suite's reference namespaces
/// ([`crate::socketio::install_conformance`]); pingInterval 300 ms, pingTimeout 200 ms,
/// maxPayload 1e6, CORS `*`.
#[cfg(feature = "conformance")]
pub struct ProtocolSuites {
    engine: Arc<crate::engineio::EngineServer>,
    socketio: Arc<crate::engineio::EngineServer>,
}

#[cfg(feature = "conformance")]
impl ProtocolSuites {
    /// The suites' fixed settings.
    const PING_INTERVAL: Duration = Duration::from_millis(300);
    const PING_TIMEOUT: Duration = Duration::from_millis(200);
    const MAX_PAYLOAD: usize = 1_000_000;
    /// node's default `path`s, which the suites use.
    pub const ENGINE_PATH: &'static str = "/engine.io/";
    pub const SOCKETIO_PATH: &'static str = "/socket.io/";

    pub fn new() -> ProtocolSuites {
        use crate::engineio::{CorsConfig, EngineConfig, EngineServer};
        use crate::socketio::{conformance_options, install_conformance, SocketIo};
        let config = EngineConfig {
            ping_interval: Self::PING_INTERVAL,
            ping_timeout: Self::PING_TIMEOUT,
            max_payload: Self::MAX_PAYLOAD,
            cors: Some(CorsConfig::any()),
            ..EngineConfig::default()
        };
        let engine = Arc::new(EngineServer::new(config.clone(), Arc::new(EngineEcho)));
        let io = SocketIo::new(crate::hub::Hub::default(), conformance_options());
        install_conformance(&io);
        let socketio = Arc::new(EngineServer::new(config, Arc::new(io)));
        ProtocolSuites { engine, socketio }
    }
}

#[cfg(feature = "conformance")]
impl Default for ProtocolSuites {
    fn default() -> ProtocolSuites {
        ProtocolSuites::new()
    }
}

#[cfg(feature = "conformance")]
#[async_trait::async_trait]
impl Service for ProtocolSuites {
    async fn call(&self, req: Request) -> Response {
        let path = req.head.uri.path();
        if path.starts_with(Self::SOCKETIO_PATH) {
            self.socketio.call(req).await
        } else if path.starts_with(Self::ENGINE_PATH) {
            self.engine.call(req).await
        } else {
            Response::text(StatusCode::NOT_FOUND, "not a path of the protocol suites\n")
        }
    }
}

/// The engine.io-protocol suite's server: every message straight back.
#[cfg(feature = "conformance")]
struct EngineEcho;

#[cfg(feature = "conformance")]
impl crate::engineio::ConnHandler for EngineEcho {
    fn on_connection(&self, mut conn: crate::engineio::Conn) -> crate::engineio::ConnWork {
        crate::engineio::ConnWork::one(Box::pin(async move {
            while let Some(frame) = conn.incoming.recv().await {
                if conn.sender.send(frame).await.is_err() {
                    break;
                }
            }
        }))
    }
}
