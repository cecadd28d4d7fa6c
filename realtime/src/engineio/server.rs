//! The Engine.IO v4 server as a [`Service`]: handshakes, long-polling, WebSocket and the upgrade
//! between them, with the reference server's (npm `engine.io` 6.6) observable behaviour.
//!
//! Each new connection is handed to a [`ConnHandler`] as a [`super::Conn`]; from then on the
//! layer above only sees messages, whatever transport carries them. The server is mounted on a
//! route by whoever owns the HTTP side (the gateway's router): it does not look at the path.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use bytes::Bytes;
use http::{header, HeaderValue, Method, StatusCode};
use rand::RngCore;

use super::config::{CorsConfig, CorsOrigin, HandshakeRequest};
use super::polling::{self, error_response};
use super::session::{Registry, Session};
use super::task::SessionTask;
use super::websocket;
use super::{
    conn, verify_request, CloseReason, ConnHandler, EngineConfig, EngineError, Handshake,
    HandshakeInfo, Packet, Transport,
};
use crate::seam::{websocket_accept, Request, Response, Service};
use crate::sync::lock;

/// Random bytes in a sid: 128 bits cannot be guessed or enumerated, which matters because the
/// sid is the only credential of a polling session (node uses 15 bytes).
const SID_BYTES: usize = 16;

/// The Engine.IO server. Cheap to share: clone the `Arc` it is usually kept in.
pub struct EngineServer {
    inner: Arc<Inner>,
}

struct Inner {
    config: Arc<EngineConfig>,
    handler: Arc<dyn ConnHandler>,
    registry: Arc<Registry>,
    shutting_down: AtomicBool,
}

impl EngineServer {
    pub fn new(config: EngineConfig, handler: Arc<dyn ConnHandler>) -> EngineServer {
        EngineServer {
            inner: Arc::new(Inner {
                config: Arc::new(config),
                handler,
                registry: Arc::default(),
                shutting_down: AtomicBool::new(false),
            }),
        }
    }

    pub fn config(&self) -> &EngineConfig {
        &self.inner.config
    }

    /// Sessions currently open (or finishing an orderly close).
    pub fn session_count(&self) -> usize {
        lock(&self.inner.registry).len()
    }

    /// Closes every session with [`CloseReason::ServerShutdown`] (a pending poll gets `close`,
    /// a WebSocket the close code 1001) and refuses new handshakes with `503` from now on, so
    /// that nothing new starts while the process drains.
    pub fn shutdown(&self) {
        self.inner.shutting_down.store(true, Ordering::SeqCst);
        let sessions: Vec<Arc<Session>> = lock(&self.inner.registry).values().cloned().collect();
        for session in sessions {
            session.close(CloseReason::ServerShutdown);
        }
    }

    #[cfg(test)]
    pub(super) fn session(&self, sid: &str) -> Option<Arc<Session>> {
        self.inner.session(sid)
    }
}

#[async_trait::async_trait]
impl Service for EngineServer {
    async fn call(&self, req: Request) -> Response {
        let Some(cors) = &self.inner.config.cors else {
            return self.inner.handle(req).await;
        };
        // node runs the `cors` middleware before anything else: every OPTIONS is a preflight.
        if req.head.method == Method::OPTIONS {
            let mut resp = http::Response::new(Bytes::new());
            *resp.status_mut() = StatusCode::NO_CONTENT;
            cors_headers(cors, &req, true, resp.headers_mut());
            return Response::Full(resp);
        }
        let mut headers = http::HeaderMap::new();
        cors_headers(cors, &req, false, &mut headers);
        let mut resp = self.inner.handle(req).await;
        if let Response::Full(resp) = &mut resp {
            for (name, value) in &headers {
                resp.headers_mut().append(name, value.clone());
            }
        }
        resp
    }
}

impl Inner {
    /// The session of a sid, unless it is gone or past its heartbeat deadline.
    fn session(&self, sid: &str) -> Option<Arc<Session>> {
        let session = lock(&self.registry).get(sid).cloned()?;
        (!session.expire_if_due()).then_some(session)
    }

    fn shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::SeqCst)
    }

    async fn handle(self: &Arc<Inner>, req: Request) -> Response {
        let upgrade = req.is_websocket_upgrade();
        let verified = verify_request(
            &req.head.method,
            req.query(),
            upgrade,
            &self.config.transports,
            |sid| self.session(sid).and_then(|s| s.transport()),
            || self.allow(&req, upgrade),
        );
        let verified = match verified {
            Ok(verified) => verified,
            Err(e) if upgrade => return upgrade_refusal(&e),
            Err(e) => return error_response(&e),
        };
        // JSONP polling (`j`) is legacy (no v4 client uses it): refused rather than half-done.
        if verified.jsonp.is_some() && !upgrade {
            return error_response(&EngineError::BadRequest);
        }
        let Some(sid) = verified.sid else {
            if self.shutting_down() {
                return Response::text(StatusCode::SERVICE_UNAVAILABLE, "server shutting down\n");
            }
            return if upgrade {
                self.websocket_handshake(&req, verified.transport)
            } else {
                self.polling_handshake(&req)
            };
        };
        let Some(session) = self.session(&sid) else {
            return match upgrade {
                true => upgrade_refusal(&EngineError::UnknownSid),
                false => error_response(&EngineError::UnknownSid),
            };
        };
        if upgrade {
            return self.websocket_upgrade(&req, session, verified.transport);
        }
        match req.head.method {
            Method::GET => polling::get(session, &req).await,
            Method::POST => polling::post(session, req).await,
            // node's polling transport answers other methods with a bare 500.
            _ => polling::empty(StatusCode::INTERNAL_SERVER_ERROR),
        }
    }

    /// `allowRequest`, for handshakes only, after the session caps.
    fn allow(&self, req: &Request, upgrade: bool) -> Result<(), EngineError> {
        self.check_caps(req.client_ip())?;
        let Some(allow) = &self.config.allow_request else {
            return Ok(());
        };
        let handshake = HandshakeRequest {
            head: &req.head,
            peer: req.peer,
            secure: req.secure,
            transport: if upgrade {
                Transport::WebSocket
            } else {
                Transport::Polling
            },
        };
        allow(&handshake)
            .map_err(|message| EngineError::Forbidden(Some(message).filter(|m| !m.is_empty())))
    }

    /// [`EngineConfig::max_sessions`] and [`EngineConfig::max_sessions_per_client`]: node has
    /// neither, so 300 handshakes from one script were all kept (each a session, a heartbeat
    /// task and queues until its ping timeout). Checked before the `101` or the `open` packet;
    /// a WebSocket handshake creates its session after the switch, so a burst of parallel ones
    /// can pass the cap by the handful in flight.
    fn check_caps(&self, peer: Option<std::net::IpAddr>) -> Result<(), EngineError> {
        let client = crate::topics::client_key(peer);
        let (total, mine) = {
            let registry = lock(&self.registry);
            (registry.len(), registry.of_client(client))
        };
        let max = self.config.max_sessions;
        if max > 0 && total >= max {
            tracing::warn!(peer = ?peer, limit = max, "engine.io handshake refused: server session limit");
            return Err(EngineError::TooManySessions {
                per_client: false,
                message: format!("Too many sessions on this server (limit {max}); retry later"),
            });
        }
        let max = self.config.max_sessions_per_client;
        if max > 0 && mine >= max {
            tracing::warn!(peer = ?peer, limit = max, "engine.io handshake refused: too many sessions from this client address");
            return Err(EngineError::TooManySessions {
                per_client: true,
                message: format!(
                    "Too many sessions from this client address (limit {max}); close some or retry later"
                ),
            });
        }
        Ok(())
    }

    fn polling_handshake(self: &Arc<Inner>, req: &Request) -> Response {
        let (session, task) = self.create_session(handshake_info(req, Transport::Polling));
        tokio::spawn(task.run(None));
        let open = self.open_packet(&session.sid, self.config.polling_upgrades());
        polling::payload_response(req, open.encode_text())
    }

    fn websocket_handshake(self: &Arc<Inner>, req: &Request, transport: Transport) -> Response {
        let head = match websocket_accept(req, first_protocol(req)) {
            Ok(head) => head,
            Err(refusal) => return refusal.into(),
        };
        let max_payload = self.config.max_payload;
        if transport != Transport::WebSocket {
            // node: a transport that does not handle upgrades gets its WebSocket closed.
            return Response::Upgrade {
                head,
                on_upgrade: Box::new(move |io| {
                    Box::pin(async move {
                        websocket::refuse(websocket::accept(io, max_payload).await).await;
                    })
                }),
            };
        }
        let info = handshake_info(req, Transport::WebSocket);
        let inner = self.clone();
        Response::Upgrade {
            head,
            // The session exists only once the WebSocket does: a failed switch leaves nothing.
            on_upgrade: Box::new(move |io| {
                Box::pin(async move {
                    let ws = websocket::accept(io, max_payload).await;
                    if inner.shutting_down() {
                        return websocket::refuse(ws).await;
                    }
                    let (session, task) = inner.create_session(info);
                    session.push(inner.open_packet(&session.sid, Vec::new()));
                    // The connection's task becomes the session's: one task for all of it.
                    drop(session);
                    task.run(Some(ws)).await;
                })
            }),
        }
    }

    fn websocket_upgrade(
        &self,
        req: &Request,
        session: Arc<Session>,
        transport: Transport,
    ) -> Response {
        let head = match websocket_accept(req, first_protocol(req)) {
            Ok(head) => head,
            Err(refusal) => return refusal.into(),
        };
        let max_payload = self.config.max_payload;
        // Reserved now, before the 101 goes out and the client can send anything else.
        let probe = (transport == Transport::WebSocket)
            .then(|| websocket::Probe::begin(session))
            .flatten();
        Response::Upgrade {
            head,
            on_upgrade: Box::new(move |io| {
                Box::pin(async move {
                    let ws = websocket::accept(io, max_payload).await;
                    match probe {
                        Some(probe) => websocket::upgrade(probe, ws).await,
                        // node accepts, then closes: upgrading or upgraded already, upgrades
                        // off, or `transport=polling`.
                        None => websocket::refuse(ws).await,
                    }
                })
            }),
        }
    }

    /// Registers a new session and hands it to the layer above; returns it with its task,
    /// for the caller to run.
    fn create_session(self: &Arc<Inner>, info: Arc<HandshakeInfo>) -> (Arc<Session>, SessionTask) {
        let transport = info.transport;
        let mut registry = lock(&self.registry);
        let sid: Arc<str> = loop {
            let sid = new_sid(self.config.sid_tag.as_deref());
            if !registry.contains(sid.as_str()) {
                break sid.into();
            }
        };
        let client = crate::topics::client_key(info.client);
        let (conn, transport_side) = conn::pair(
            sid.clone(),
            info,
            self.config.out_queue,
            self.config.in_queue,
        );
        let session = Session::new(
            sid.clone(),
            self.config.clone(),
            transport,
            transport_side,
            Arc::downgrade(&self.registry),
            client,
        );
        registry.insert(session.clone());
        drop(registry);
        let task = SessionTask::new(session.clone(), self.handler.on_connection(conn));
        // A shutdown that ran between the check and the insert did not see this session.
        if self.shutting_down() {
            session.close(CloseReason::ServerShutdown);
        }
        (session, task)
    }

    fn open_packet(&self, sid: &str, upgrades: Vec<String>) -> Packet {
        Handshake {
            sid: sid.to_owned(),
            upgrades,
            ping_interval: millis(self.config.ping_interval),
            ping_timeout: millis(self.config.ping_timeout),
            max_payload: u64::try_from(self.config.max_payload).unwrap_or(u64::MAX),
        }
        .to_packet()
    }
}

fn millis(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// A fresh session id from the thread-local CSPRNG, URL-safe base64, after this node's tag in
/// a fleet.
fn new_sid(tag: Option<&str>) -> String {
    let mut bytes = [0u8; SID_BYTES];
    rand::rng().fill_bytes(&mut bytes);
    let random = URL_SAFE_NO_PAD.encode(bytes);
    match tag {
        Some(tag) => super::tagged_sid(tag, &random),
        None => random,
    }
}

/// Shared from the start: a WebSocket's task carries it until the session exists, and an
/// async block keeps the slot of what it carries for its whole life (8 bytes, not 232).
fn handshake_info(req: &Request, transport: Transport) -> Arc<HandshakeInfo> {
    Arc::new(HandshakeInfo {
        headers: crate::seam::detached_headers(&req.head.headers),
        query: req.query().to_owned(),
        peer: req.peer,
        client: req.client_ip(),
        local: req.local,
        authority: req.head.uri.authority().map(|a| a.as_str().to_string()),
        secure: req.secure,
        transport,
    })
}

/// node's `ws` accepts the first subprotocol a client offers; a browser that offered some
/// fails the connection when none is selected.
fn first_protocol(req: &Request) -> Option<&str> {
    req.header("sec-websocket-protocol")
        .and_then(|p| p.split(',').next())
        .map(str::trim)
        .filter(|p| !p.is_empty())
}

/// A refused WebSocket handshake: node writes a bare `400 Bad Request` with the message as
/// `text/html` and drops the connection; `allowRequest` refusals get `403` here.
fn upgrade_refusal(error: &EngineError) -> Response {
    let mut resp = http::Response::new(Bytes::from(error.message().to_owned()));
    *resp.status_mut() = error.http_status();
    let headers = resp.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/html"));
    headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
    Response::Full(resp)
}

/// The headers the npm `cors` package writes, for a preflight or for an actual request.
fn cors_headers(cors: &CorsConfig, req: &Request, preflight: bool, out: &mut http::HeaderMap) {
    let request_origin = req.header("origin");
    let vary_origin = || HeaderValue::from_static("Origin");
    let allow_origin = match &cors.origin {
        CorsOrigin::Any => Some("*"),
        CorsOrigin::Exact(origin) => {
            out.append(header::VARY, vary_origin());
            Some(origin.as_str())
        }
        CorsOrigin::List(allowed) => {
            out.append(header::VARY, vary_origin());
            request_origin.filter(|o| allowed.iter().any(|a| a.as_str() == *o))
        }
        CorsOrigin::Mirror => {
            out.append(header::VARY, vary_origin());
            request_origin
        }
    };
    let mut set = |name: http::HeaderName, value: &str| {
        if let Ok(value) = HeaderValue::from_str(value) {
            out.insert(name, value);
        }
    };
    if let Some(origin) = allow_origin {
        set(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
    }
    if cors.credentials {
        set(header::ACCESS_CONTROL_ALLOW_CREDENTIALS, "true");
    }
    if preflight {
        set(header::ACCESS_CONTROL_ALLOW_METHODS, &cors.methods);
        match &cors.allowed_headers {
            Some(allowed) => set(header::ACCESS_CONTROL_ALLOW_HEADERS, allowed),
            None => {
                if let Some(asked) = req.header("access-control-request-headers") {
                    set(header::ACCESS_CONTROL_ALLOW_HEADERS, asked);
                }
                out.append(
                    header::VARY,
                    HeaderValue::from_static("Access-Control-Request-Headers"),
                );
            }
        }
        if let Some(max_age) = cors.max_age {
            out.insert(header::ACCESS_CONTROL_MAX_AGE, max_age.as_secs().into());
        }
    }
    if let Some(exposed) = &cors.exposed_headers {
        if let Ok(value) = HeaderValue::from_str(exposed) {
            out.insert(header::ACCESS_CONTROL_EXPOSE_HEADERS, value);
        }
    }
}
