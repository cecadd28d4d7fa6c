//! Socket.IO as the gateway mounts it: the realtime crate's Engine.IO server and Socket.IO layer
//! configured from `realtime.socketio`, plus the client library (`socket.io.js` and friends)
//! served from socket.io-client's `dist/`, as the Node server's `serveClient` does.

use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use http::StatusCode;
use realtime::app_events::{EventNames, EventRoute};
use realtime::engineio::{CorsConfig, CorsOrigin, EngineConfig, EngineServer};
use realtime::hub::Hub;
use realtime::seam::{Request, Response, Service};
use realtime::socketio::{
    install_behaviour, NamespaceBehaviour, RecoveryOptions, RelayRate, SocketIo, SocketIoOptions,
};

use crate::settings;

/// The socket.io-client release embedded in the binary (gateway/assets/socket.io-client/,
/// the npm package's `dist/`, MIT). The e2e tests load the same version (tests/package-lock.json):
/// a unit test below keeps the two in step.
pub const CLIENT_VERSION: &str = "4.8.4";

const JS: &str = "application/javascript; charset=utf-8";
const MAP: &str = "application/json";

/// One file of the client library: its name under `/socket.io/`, type and embedded bytes.
struct ClientFile {
    name: &'static str,
    content_type: &'static str,
    bytes: &'static [u8],
}

macro_rules! client_file {
    ($name:literal, $ty:expr) => {
        ClientFile {
            name: $name,
            content_type: $ty,
            bytes: include_bytes!(concat!("../assets/socket.io-client/", $name)),
        }
    };
}

/// The files of socket.io-client's `dist/` that a page may load (what Node's `serveClient` serves).
const CLIENT_FILES: &[ClientFile] = &[
    client_file!("socket.io.js", JS),
    client_file!("socket.io.js.map", MAP),
    client_file!("socket.io.min.js", JS),
    client_file!("socket.io.min.js.map", MAP),
    client_file!("socket.io.esm.min.js", JS),
    client_file!("socket.io.esm.min.js.map", MAP),
    client_file!("socket.io.msgpack.min.js", JS),
    client_file!("socket.io.msgpack.min.js.map", MAP),
];

/// The client library changes only when the gateway is upgraded, and its URL carries no version:
/// a day keeps pages from fetching it again while an upgrade still reaches every browser by the
/// next day; the ETag turns each later check into a 304. (Node's `serveClient` sends an ETag and
/// `max-age=0`, so every page load costs a round trip.)
const CLIENT_CACHE_CONTROL: &str = "public, max-age=86400";

pub struct SocketIoService {
    /// Kept beside the engine for the admin listener's `POST /emit`.
    io: SocketIo,
    engine: EngineServer,
    /// `realtime.socketio.client_dir`: serve the client library from there instead of the
    /// embedded copy (another version, or a custom build).
    client_dir: Option<PathBuf>,
}

/// What a node of a fleet adds to its Socket.IO service (nothing on a single node).
#[derive(Default)]
pub struct InFleet {
    /// This node's tag in its sids, when the fleet forwards requests to the session's owner
    /// ([`crate::fleet_forward`]).
    pub sid_tag: Option<String>,
    /// Where sessions are kept for recovery on any node (recovery on).
    pub sessions: Option<realtime::socketio::FleetSessions>,
}

/// Build the Socket.IO service on `hub` from its settings; `access` decides who connects and
/// which rooms a client joins or relays into; `to_app` is the route to the app of the events a
/// namespace names.
pub fn build(
    hub: Hub,
    s: &settings::SocketIo,
    access: realtime::access::Access,
    to_app: impl Fn(&EventNames) -> Option<EventRoute>,
    fleet: InFleet,
) -> SocketIoService {
    let InFleet { sid_tag, sessions } = fleet;
    let options = SocketIoOptions {
        connect_timeout: s.connect_timeout,
        recovery: s.recovery.as_ref().map(|r| RecoveryOptions {
            max_disconnection_duration: r.max_disconnection,
            fleet: sessions,
            ..RecoveryOptions::default()
        }),
        ..SocketIoOptions::default()
    };
    let io = SocketIo::with_access(hub, options, access);
    for (path, ns) in &s.namespaces {
        install_behaviour(
            &io,
            path,
            NamespaceBehaviour {
                relay: ns.relay,
                history: ns.history,
                client_rooms: ns.client_rooms,
                relay_rate: RelayRate {
                    per_second: ns.relay_rate.per_second,
                    burst: ns.relay_rate.burst,
                },
                echo: ns.echo,
                events: to_app(&ns.events),
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
        ping_interval: s.ping_interval,
        ping_timeout: s.ping_timeout,
        max_payload: s.max_payload_bytes,
        max_sessions: s.max_sessions,
        max_sessions_per_client: s.max_sessions_per_client,
        cors,
        allow_request,
        sid_tag,
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

    /// Close every Engine.IO session and refuse new ones: the process is draining.
    pub fn shutdown(&self) {
        self.engine.shutdown();
    }

    async fn client_file(&self, file: &ClientFile, if_none_match: Option<&[u8]>) -> Response {
        let Some(dir) = &self.client_dir else {
            let etag = embedded_etag(file);
            return client_answer(file, Bytes::from_static(file.bytes), &etag, if_none_match);
        };
        let path = dir.join(file.name);
        match tokio::fs::read(&path).await {
            Ok(bytes) => {
                let etag = format!("\"{:016x}\"", fnv1a(&bytes));
                client_answer(file, Bytes::from(bytes), &etag, if_none_match)
            }
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "socket.io client library not found in client_dir");
                Response::text(
                    StatusCode::NOT_FOUND,
                    format!(
                        "{} is not in realtime.socketio.client_dir ({}); remove the setting to serve the built-in socket.io-client {CLIENT_VERSION}\n",
                        file.name,
                        dir.display()
                    ),
                )
            }
        }
    }
}

/// The embedded files' ETag: the release and the file's length name its bytes exactly.
fn embedded_etag(file: &ClientFile) -> String {
    format!("\"socket.io-client-{CLIENT_VERSION}-{}\"", file.bytes.len())
}

/// FNV-1a over a file read from `client_dir`: an ETag that changes when the file does (no
/// cryptographic strength needed, and no hashing crate for it).
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// 200 with the file, or 304 when the client already holds this ETag (RFC 9110 §13.1.2; a
/// weak comparison, so `W/` forms and lists match as nginx's `if_none_match` does).
fn client_answer(
    file: &ClientFile,
    body: Bytes,
    etag: &str,
    if_none_match: Option<&[u8]>,
) -> Response {
    let fresh = if_none_match.is_some_and(|v| etag_matches(v, etag));
    let mut r = http::Response::new(if fresh { Bytes::new() } else { body });
    if fresh {
        *r.status_mut() = StatusCode::NOT_MODIFIED;
    }
    let h = r.headers_mut();
    h.insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static(file.content_type),
    );
    h.insert(
        http::header::CACHE_CONTROL,
        http::HeaderValue::from_static(CLIENT_CACHE_CONTROL),
    );
    if let Ok(v) = http::HeaderValue::from_str(etag) {
        h.insert(http::header::ETAG, v);
    }
    Response::Full(r)
}

fn etag_matches(if_none_match: &[u8], etag: &str) -> bool {
    let Ok(v) = std::str::from_utf8(if_none_match) else {
        return false;
    };
    let bare = |t: &str| t.trim().trim_start_matches("W/").to_string();
    v.trim() == "*" || v.split(',').any(|t| bare(t) == bare(etag))
}

#[async_trait::async_trait]
impl Service for SocketIoService {
    async fn call(&self, req: Request) -> Response {
        let last = req.head.uri.path().rsplit('/').next().unwrap_or("");
        if let Some(file) = CLIENT_FILES.iter().find(|f| f.name == last) {
            if req.head.method == http::Method::GET || req.head.method == http::Method::HEAD {
                let inm = req.head.headers.get(http::header::IF_NONE_MATCH);
                return self.client_file(file, inm.map(|v| v.as_bytes())).await;
            }
        }
        self.engine.call(req).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_embedded_client_is_the_version_the_tests_pin() {
        let lock = include_str!("../../tests/package-lock.json");
        let lock: serde_json::Value = serde_json::from_str(lock).expect("tests/package-lock.json");
        let pinned = &lock["packages"]["node_modules/socket.io-client"]["version"];
        assert_eq!(pinned.as_str(), Some(CLIENT_VERSION));
        let readme = include_str!("../assets/socket.io-client/README.md");
        assert!(readme.contains(&format!("socket.io-client {CLIENT_VERSION}")));
        let js = std::str::from_utf8(CLIENT_FILES[0].bytes).expect("socket.io.js is UTF-8");
        assert!(
            js.contains(&format!("Socket.IO v{CLIENT_VERSION}")),
            "socket.io.js banner"
        );
    }

    #[test]
    fn etags_compare_weakly_and_by_list() {
        let e = "\"socket.io-client-4.8.4-10\"";
        assert!(etag_matches(b"\"socket.io-client-4.8.4-10\"", e));
        assert!(etag_matches(b"W/\"socket.io-client-4.8.4-10\"", e));
        assert!(etag_matches(b"\"x\", \"socket.io-client-4.8.4-10\"", e));
        assert!(etag_matches(b"*", e));
        assert!(!etag_matches(b"\"socket.io-client-4.8.3-10\"", e));
        assert!(!etag_matches(&[0xff, 0xfe], e));
    }
}
