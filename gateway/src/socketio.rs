//! Socket.IO as the gateway mounts it: the realtime crate's Engine.IO server and Socket.IO layer
//! configured from `realtime.socketio`, plus the client library (`socket.io.js` and friends)
//! served from socket.io-client's `dist/`, as the Node server's `serveClient` does.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use http::StatusCode;
use realtime::engineio::{CorsConfig, CorsOrigin, EngineConfig, EngineServer};
use realtime::hub::Hub;
use realtime::seam::{Request, Response, Service};
use realtime::socketio::{
    install_behaviour, NamespaceBehaviour, RecoveryOptions, SocketIo, SocketIoOptions,
};

use crate::config::SocketIoSettings;

/// The files of socket.io-client's `dist/` that a page may load, with their types.
const CLIENT_FILES: &[(&str, &str)] = &[
    ("socket.io.js", "application/javascript; charset=utf-8"),
    ("socket.io.js.map", "application/json"),
    ("socket.io.min.js", "application/javascript; charset=utf-8"),
    ("socket.io.min.js.map", "application/json"),
    (
        "socket.io.esm.min.js",
        "application/javascript; charset=utf-8",
    ),
    ("socket.io.esm.min.js.map", "application/json"),
    (
        "socket.io.msgpack.min.js",
        "application/javascript; charset=utf-8",
    ),
    ("socket.io.msgpack.min.js.map", "application/json"),
];

/// The client library changes only with a deploy: let browsers keep it for an hour.
const CLIENT_CACHE_CONTROL: &str = "public, max-age=3600";

pub struct SocketIoService {
    /// Kept beside the engine for the admin listener's `POST /emit`.
    io: SocketIo,
    engine: EngineServer,
    client_dir: PathBuf,
}

/// Build the Socket.IO service on `hub` from its settings.
pub fn build(hub: Hub, s: &SocketIoSettings) -> SocketIoService {
    let options = SocketIoOptions {
        connect_timeout: Duration::from_millis(s.connect_timeout_ms),
        recovery: s.recovery.as_ref().map(|r| RecoveryOptions {
            max_disconnection_duration: Duration::from_millis(r.max_disconnection_ms),
            ..RecoveryOptions::default()
        }),
        ..SocketIoOptions::default()
    };
    let io = SocketIo::new(hub, options);
    for (path, ns) in &s.namespaces {
        install_behaviour(
            &io,
            path,
            NamespaceBehaviour {
                relay: ns.relay,
                history: ns.history,
                client_rooms: ns.client_rooms,
            },
        );
    }
    let origins = s.allowed_origins.clone();
    let cors = (!origins.is_empty()).then(|| CorsConfig {
        origin: CorsOrigin::List(origins.clone()),
        credentials: true,
        ..CorsConfig::any()
    });
    let allow_request: Option<realtime::engineio::AllowRequest> = if origins.is_empty() {
        None
    } else {
        Some(Arc::new(
            move |h: &realtime::engineio::HandshakeRequest<'_>| {
                match h.header("origin") {
                    // Not a browser (curl, a server-side client): no cross-site risk to check.
                    None => Ok(()),
                    Some(o) if origins.iter().any(|a| a == o || a == "*") => Ok(()),
                    Some(o) => {
                        tracing::warn!(origin = %o, "socket.io handshake refused: origin not allowed");
                        Err("Origin not allowed".to_string())
                    }
                }
            },
        ))
    };
    let config = EngineConfig {
        ping_interval: Duration::from_millis(s.ping_interval_ms),
        ping_timeout: Duration::from_millis(s.ping_timeout_ms),
        max_payload: s.max_payload_bytes as usize,
        cors,
        allow_request,
        ..EngineConfig::default()
    };
    SocketIoService {
        engine: EngineServer::new(config, Arc::new(io.clone())),
        io,
        client_dir: s.client_dir.clone(),
    }
}

impl SocketIoService {
    pub fn io(&self) -> &SocketIo {
        &self.io
    }

    async fn client_file(&self, name: &str, content_type: &str) -> Response {
        let path = self.client_dir.join(name);
        match tokio::fs::read(&path).await {
            Ok(bytes) => {
                let mut r = http::Response::new(bytes::Bytes::from(bytes));
                let h = r.headers_mut();
                if let Ok(v) = http::HeaderValue::from_str(content_type) {
                    h.insert(http::header::CONTENT_TYPE, v);
                }
                h.insert(
                    http::header::CACHE_CONTROL,
                    http::HeaderValue::from_static(CLIENT_CACHE_CONTROL),
                );
                Response::Full(r)
            }
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "socket.io client library not found");
                Response::text(
                    StatusCode::NOT_FOUND,
                    format!(
                        "{name} is not installed at {}: run `npm ci` in tests/ (tests/setup.sh does), or set realtime.socketio.client_dir\n",
                        self.client_dir.display()
                    ),
                )
            }
        }
    }
}

#[async_trait::async_trait]
impl Service for SocketIoService {
    async fn call(&self, req: Request) -> Response {
        let last = req.head.uri.path().rsplit('/').next().unwrap_or("");
        if let Some((name, ty)) = CLIENT_FILES.iter().find(|(n, _)| *n == last) {
            if req.head.method == http::Method::GET || req.head.method == http::Method::HEAD {
                return self.client_file(name, ty).await;
            }
        }
        self.engine.call(req).await
    }
}
