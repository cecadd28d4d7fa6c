//! No sticky sessions: an Engine.IO request that reaches a node other than the one that owns
//! its session is forwarded to the owner over the nodes' private network.
//!
//! A node of a fleet names itself in every sid it makes (`<tag>.<random>`,
//! [`realtime::engineio::node_tag`]) and advertises the address of its internal listener in
//! Redis under that tag ([`realtime::cluster::directory`]). On the public side, [`Forwarder`]
//! wraps the Socket.IO service: a request whose sid names another node is sent there (a
//! polling `GET` or `POST` as one HTTP/1.1 exchange, a WebSocket upgrade as a byte tunnel once
//! the owner has answered `101`); anything else (a handshake, this node's sessions, the client
//! library's files) goes to the local service as before. A sid of a node that is not in Redis
//! (never was, or stopped, or died more than a TTL ago) or that does not answer gets the local
//! service's own answer, Engine.IO's `400 {"code":1,"message":"Session ID unknown"}`, at once:
//! the client starts a new session, as with any lost session.
//!
//! On the owner, [`Internal`] serves the internal listener: only requests that carry the
//! fleet's secret ([`SECRET_HEADER`], compared in constant time), only on [`INTERNAL_PATH`],
//! and only for existing sessions (a forwarded request always names one), to the same
//! Socket.IO service the public routes use. The client's address travels as the forwarding
//! headers the app would get (`X-Forwarded-For`, `X-Real-IP`, [`crate::forwarding::request`]);
//! the owner counts per-client limits against `X-Real-IP`, which it believes because the
//! secret says the request comes from the fleet.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::HttpPeer;
use pingora::proxy::{ProxyHttp, Session};
use pingora::{Error, ErrorType, Result};
use realtime::cluster::directory::Directory;
use realtime::seam::{Body, Request, Response, Service};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::buffering::BodyLimits;
use crate::settings::Secret;

/// Where forwarded Engine.IO requests go on the internal listener (the public path does not
/// matter to the owner: the Socket.IO service does not look at it). No route of the public
/// listener is ever this: a request there from outside is not forwarded anywhere.
pub const INTERNAL_PATH: &str = "/_fleet/engine.io/";

/// The header that carries the fleet's secret on every forwarded request.
pub const SECRET_HEADER: &str = "x-fleet-secret";

/// The owner is on the nodes' own network: a connection takes milliseconds, and one that
/// takes a second is to a node that is gone (the client is then told at once).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// An upgrade is answered as soon as the owner reads it.
const UPGRADE_ANSWER_TIMEOUT: Duration = Duration::from_secs(10);

/// How the public side reaches the other nodes.
pub struct Forwarder {
    /// The Socket.IO service of this node.
    inner: Arc<dyn Service>,
    /// This node's tag: its sids are served here.
    own_tag: String,
    directory: Arc<Directory>,
    secret: Secret,
    /// The longest the owner may hold a poll (Engine.IO answers it at the next ping at the
    /// latest: `ping_interval`, plus `ping_timeout` of slack).
    hold: Duration,
}

impl Forwarder {
    pub fn new(
        inner: Arc<dyn Service>,
        own_tag: String,
        directory: Arc<Directory>,
        secret: Secret,
        hold: Duration,
    ) -> Forwarder {
        Forwarder {
            inner,
            own_tag,
            directory,
            secret,
            hold,
        }
    }

    /// Sends `req` to the node at `address`. When that node cannot be reached, or goes away
    /// with the request, the answer is the local service's to the same request without its
    /// body: for a sid nobody serves, Engine.IO's "Session ID unknown" with the headers (CORS)
    /// every answer of the service has.
    async fn forward(&self, tag: &str, address: &str, req: Request) -> Response {
        let upgrade = req.is_websocket_upgrade();
        let Request {
            head,
            peer,
            client,
            local,
            secure,
            body,
        } = req;
        let unknown = || {
            self.inner.call(Request {
                head: head.clone(),
                peer,
                client,
                local,
                secure,
                body: Body::empty(),
            })
        };
        let connecting = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(address));
        let mut stream = match connecting.await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                tracing::info!(node = tag, address, error = %e, "fleet: the node that owns this session cannot be reached; the session is unknown");
                self.directory.forget(tag);
                return unknown().await;
            }
            Err(_) => {
                tracing::info!(node = tag, address, "fleet: the node that owns this session did not accept a connection in time; the session is unknown");
                self.directory.forget(tag);
                return unknown().await;
            }
        };
        let _ = stream.set_nodelay(true);
        // The client as this node made it out (behind a trusted balancer, the address it
        // forwarded): the owner is told that one, and nothing the client said of itself.
        let from = Client {
            ip: client.or(peer.map(|p| p.ip())),
            tls: secure,
            port: local.map(|l| l.port()),
        };
        let mut out = forwarded_head(&head, &from, upgrade, address, &self.secret);
        // A poll's body is small (Engine.IO's `maxPayload`, and the front door's body limit
        // before that): read whole, it goes out with its length.
        let body = match upgrade {
            true => Bytes::new(),
            false => match body.collect(usize::MAX).await {
                Ok(b) => b,
                Err(e) => {
                    tracing::debug!(error = %e, "fleet: the client's body did not arrive whole");
                    return Response::text(http::StatusCode::BAD_REQUEST, "incomplete body\n");
                }
            },
        };
        if !upgrade {
            let _ = out.insert_header(http::header::CONTENT_LENGTH, body.len().to_string());
        }
        let mut wire = crate::tunnel::serialize(&out);
        wire.extend_from_slice(&body);
        let wait = match upgrade {
            true => UPGRADE_ANSWER_TIMEOUT,
            false => self.hold,
        };
        let exchange = async {
            stream.write_all(&wire).await.map_err(|e| e.to_string())?;
            let (resp, leftover) = crate::tunnel::read_head(&mut stream).await?;
            if upgrade && resp.status == http::StatusCode::SWITCHING_PROTOCOLS {
                return Ok((resp, leftover));
            }
            let body = read_body(&mut stream, &resp, leftover).await?;
            Ok::<_, String>((resp, body))
        };
        let (resp, rest) = match tokio::time::timeout(wait, exchange).await {
            Ok(Ok(answer)) => answer,
            Ok(Err(why)) => {
                // The owner went away with the request (it died, or dropped the session's
                // connection): the session is gone with it.
                tracing::info!(node = tag, address, error = %why, "fleet: the node that owns this session did not answer; the session is unknown");
                return unknown().await;
            }
            Err(_) => {
                tracing::warn!(node = tag, address, waited = ?wait, "fleet: the node that owns this session did not answer in time");
                return Response::text(
                    http::StatusCode::GATEWAY_TIMEOUT,
                    "the node that owns this session did not answer in time\n",
                );
            }
        };
        if upgrade && resp.status == http::StatusCode::SWITCHING_PROTOCOLS {
            return Response::Upgrade {
                head: http::response::Parts::from(resp),
                on_upgrade: Box::new(move |mut client| {
                    Box::pin(async move {
                        // Frames the owner sent right behind its 101.
                        if !rest.is_empty() && client.write_all(&rest).await.is_err() {
                            return;
                        }
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut stream).await;
                    })
                }),
            };
        }
        full(resp, rest)
    }
}

#[async_trait]
impl Service for Forwarder {
    async fn call(&self, req: Request) -> Response {
        let Some(sid) = realtime::engineio::query_sid(req.query()) else {
            return self.inner.call(req).await;
        };
        let Some(tag) = realtime::engineio::sid_owner(&sid).filter(|t| *t != self.own_tag) else {
            return self.inner.call(req).await;
        };
        let address = match self.directory.address_of(tag).await {
            Ok(Some(address)) => address,
            Ok(None) => {
                tracing::debug!(node = tag, "fleet: a sid of a node the fleet does not know");
                return self.inner.call(req).await;
            }
            Err(e) => {
                tracing::warn!(node = tag, error = %e, "fleet: where the node that owns this session is cannot be read; the session is unknown");
                return self.inner.call(req).await;
            }
        };
        self.forward(tag, &address, req).await
    }
}

/// Who a forwarded request is from, as the node it reached made out.
pub struct Client {
    /// The client's address (behind a trusted balancer, the one it forwarded).
    pub ip: Option<IpAddr>,
    /// Whether it came over TLS.
    pub tls: bool,
    /// The port of the public listener it reached.
    pub port: Option<u16>,
}

/// The head of a forwarded request: the client's, rewritten as for the app
/// ([`crate::forwarding::request`]: hop-by-hop headers gone, whatever the client said of
/// itself dropped, `X-Forwarded-For` and `X-Real-IP` naming `client`), aimed at
/// [`INTERNAL_PATH`] with the client's query, the fleet's secret, and `Connection: close` (one
/// exchange per connection; `Connection: upgrade` for a WebSocket).
pub fn forwarded_head(
    head: &http::request::Parts,
    client: &Client,
    upgrade: bool,
    address: &str,
    secret: &Secret,
) -> RequestHeader {
    let mut out = RequestHeader::from(head.clone());
    // The client's address is settled already: as seen from here it is the peer, and no proxy
    // in front is trusted to say otherwise.
    let from = crate::forwarding::Client {
        ip: client.ip,
        tls: client.tls,
        port: client.port,
        trusted: &[],
    };
    crate::forwarding::request(&mut out, &from, upgrade);
    let target = match head.uri.query() {
        Some(q) => format!("{INTERNAL_PATH}?{q}"),
        None => INTERNAL_PATH.to_string(),
    };
    if let Ok(uri) = target.parse::<http::Uri>() {
        out.set_uri(uri);
    }
    out.set_version(http::Version::HTTP_11);
    if !out.headers.contains_key(http::header::HOST) {
        let _ = out.insert_header(http::header::HOST, address);
    }
    // The body goes with its length; pingora's reframing does not run on this path.
    out.remove_header(&http::header::TRANSFER_ENCODING);
    if !upgrade {
        let _ = out.insert_header(http::header::CONNECTION, "close");
    }
    let _ = out.insert_header(SECRET_HEADER, secret.expose());
    out
}

/// The body of the owner's answer: `Content-Length` bytes (the Socket.IO service always sends
/// one), or up to the end of the connection without it.
async fn read_body(
    stream: &mut TcpStream,
    resp: &ResponseHeader,
    leftover: Bytes,
) -> std::result::Result<Bytes, String> {
    let length: Option<usize> = resp
        .headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok());
    let mut body = BytesMut::from(&leftover[..]);
    loop {
        if length.is_some_and(|l| body.len() >= l) {
            break;
        }
        let n = stream
            .read_buf(&mut body)
            .await
            .map_err(|e| e.to_string())?;
        if n == 0 {
            match length {
                Some(l) => {
                    return Err(format!(
                        "{} of {l} bytes, then the connection closed",
                        body.len()
                    ))
                }
                None => break,
            }
        }
    }
    if let Some(l) = length {
        body.truncate(l);
    }
    Ok(body.freeze())
}

/// The owner's answer as the client gets it: its status and headers but the hop-by-hop
/// ones (the seam writes its own framing).
fn full(resp: ResponseHeader, body: Bytes) -> Response {
    let mut parts = http::response::Parts::from(resp);
    for name in [
        http::header::CONNECTION,
        http::header::TRANSFER_ENCODING,
        http::header::CONTENT_LENGTH,
        http::HeaderName::from_static("keep-alive"),
    ] {
        parts.headers.remove(name);
    }
    Response::Full(http::Response::from_parts(parts, body))
}

/// Whether `given` is the fleet's secret. Both sides are hashed first, so the comparison
/// takes as long whatever the lengths and wherever they differ: the time a refusal takes says
/// nothing about the secret.
pub fn secret_matches(given: &[u8], secret: &Secret) -> bool {
    let a = ring::digest::digest(&ring::digest::SHA256, given);
    let b = ring::digest::digest(&ring::digest::SHA256, secret.expose().as_bytes());
    let differ = a
        .as_ref()
        .iter()
        .zip(b.as_ref())
        .fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(differ) == 0
}

/// The internal listener: the fleet's own nodes forward the requests of the sessions this
/// node owns here.
pub struct Internal {
    /// The Socket.IO service the public routes use (`None`: no route mounts one, and nothing
    /// is ever forwarded here).
    pub service: Option<Arc<dyn Service>>,
    pub secret: Secret,
    /// The front door's body limits.
    pub body: BodyLimits,
    /// The front door's `limits.send_timeout_ms`, for upgraded connections.
    pub send_timeout: Duration,
}

/// Why the internal listener refused a request, before serving anything.
#[derive(Debug, PartialEq, Eq)]
pub enum Refused {
    /// No secret, or not the fleet's: not a node of this fleet.
    Secret,
    /// Not [`INTERNAL_PATH`], or no Socket.IO service here.
    Path,
    /// Not a request of an existing session (a handshake is never forwarded).
    NoSession,
}

impl Refused {
    fn answer(&self) -> (u16, &'static str) {
        match self {
            Refused::Secret => (403, "this listener serves the nodes of the fleet only"),
            Refused::Path => (404, "no such endpoint"),
            Refused::NoSession => (400, "forwarded requests name a session"),
        }
    }
}

impl Internal {
    /// The checks every request passes before it is served (see [`Refused`]).
    pub fn refusal(&self, req: &RequestHeader) -> Option<Refused> {
        let given = req
            .headers
            .get(SECRET_HEADER)
            .map(|v| v.as_bytes())
            .unwrap_or_default();
        if !secret_matches(given, &self.secret) {
            return Some(Refused::Secret);
        }
        if !req.uri.path().starts_with(INTERNAL_PATH) || self.service.is_none() {
            return Some(Refused::Path);
        }
        if realtime::engineio::query_sid(req.uri.query().unwrap_or("")).is_none() {
            return Some(Refused::NoSession);
        }
        None
    }
}

/// The client's address a node of the fleet forwarded (`X-Real-IP`, set by
/// [`forwarded_head`]).
fn forwarded_client(req: &RequestHeader) -> Option<IpAddr> {
    req.headers
        .get("x-real-ip")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok())
}

#[async_trait]
impl ProxyHttp for Internal {
    type CTX = ();

    fn new_ctx(&self) {}

    async fn early_request_filter(&self, session: &mut Session, _ctx: &mut ()) -> Result<()> {
        crate::header_deadline::head_parsed(session);
        Ok(())
    }

    async fn request_filter(&self, session: &mut Session, _ctx: &mut ()) -> Result<bool> {
        let refused = self.refusal(session.req_header());
        let service = match (refused, &self.service) {
            (None, Some(service)) => service.clone(),
            (refused, _) => {
                let refused = refused.unwrap_or(Refused::Path);
                let req = session.req_header();
                tracing::warn!(peer = ?session.client_addr(), method = %req.method, path = %req.uri.path(), reason = ?refused, "fleet: internal request refused");
                // Its body is not read: the connection is not reused.
                session.set_keepalive(None);
                let (status, text) = refused.answer();
                crate::finish::respond(session, None, status, text, None).await?;
                return Ok(true);
            }
        };
        let client = forwarded_client(session.req_header());
        session.req_header_mut().remove_header(SECRET_HEADER);
        let served = crate::seam::serve(session, service, client, &self.body, None, false).await?;
        if let crate::seam::Served::Left(handover) = served {
            // A forwarded WebSocket leaves pingora as a public one does; this listener keeps
            // no log or gauges of its own (the node that took the client does).
            handover.start(self.send_timeout, None);
        }
        Ok(true)
    }

    async fn upstream_peer(&self, _session: &mut Session, _ctx: &mut ()) -> Result<Box<HttpPeer>> {
        Error::e_explain(
            ErrorType::InternalError,
            "the internal listener proxies nothing",
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(method: &str, uri: &str, headers: &[(&str, &str)]) -> http::request::Parts {
        let mut b = http::Request::builder().method(method).uri(uri);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).expect("request").into_parts().0
    }

    fn secret() -> Secret {
        Secret::new("fleet-secret-0123456789".into())
    }

    #[test]
    fn a_forwarded_poll_carries_the_client_the_secret_and_the_query_to_the_internal_path() {
        let head = parts(
            "POST",
            "/socket.io/?EIO=4&transport=polling&sid=MyeAGyE3.abc",
            &[
                ("host", "chat.example"),
                ("connection", "keep-alive"),
                ("keep-alive", "timeout=5"),
                ("x-forwarded-for", "203.0.113.7"),
                ("x-fleet-secret", "the client's guess"),
                ("content-type", "text/plain;charset=UTF-8"),
            ],
        );
        // Behind a trusted balancer at 10.0.0.2, which said the client is 203.0.113.7, on the
        // public listener's port 443.
        let client = Client {
            ip: Some("203.0.113.7".parse().expect("ip")),
            tls: true,
            port: Some(443),
        };
        let out = forwarded_head(&head, &client, false, "10.0.0.5:7070", &secret());
        let wire = String::from_utf8(crate::tunnel::serialize(&out)).expect("utf-8");
        let mut lines: Vec<&str> = wire.lines().collect();
        assert_eq!(
            lines.remove(0),
            "POST /_fleet/engine.io/?EIO=4&transport=polling&sid=MyeAGyE3.abc HTTP/1.1"
        );
        lines.sort();
        assert_eq!(
            lines,
            [
                "",
                "connection: close",
                "content-type: text/plain;charset=UTF-8",
                "host: chat.example",
                "x-fleet-secret: fleet-secret-0123456789",
                "x-forwarded-for: 203.0.113.7",
                "x-forwarded-host: chat.example",
                "x-forwarded-port: 443",
                "x-forwarded-proto: https",
                "x-real-ip: 203.0.113.7",
            ]
        );
    }

    #[test]
    fn a_forwarded_upgrade_keeps_its_handshake_and_names_the_client_itself() {
        let head = parts(
            "GET",
            "/socket.io/?EIO=4&transport=websocket&sid=MyeAGyE3.abc",
            &[
                ("upgrade", "websocket"),
                ("connection", "Upgrade"),
                ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
                ("sec-websocket-version", "13"),
                // What the client says of itself: not passed on.
                ("x-real-ip", "1.2.3.4"),
            ],
        );
        let client = Client {
            ip: Some("198.51.100.9".parse().expect("ip")),
            tls: false,
            port: Some(80),
        };
        let out = forwarded_head(&head, &client, true, "10.0.0.5:7070", &secret());
        let wire = String::from_utf8(crate::tunnel::serialize(&out)).expect("utf-8");
        let mut lines: Vec<&str> = wire.lines().collect();
        assert_eq!(
            lines.remove(0),
            "GET /_fleet/engine.io/?EIO=4&transport=websocket&sid=MyeAGyE3.abc HTTP/1.1"
        );
        lines.sort();
        assert_eq!(
            lines,
            [
                "",
                "connection: upgrade",
                "host: 10.0.0.5:7070",
                "sec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==",
                "sec-websocket-version: 13",
                "upgrade: websocket",
                "x-fleet-secret: fleet-secret-0123456789",
                "x-forwarded-for: 198.51.100.9",
                "x-forwarded-port: 80",
                "x-forwarded-proto: http",
                "x-real-ip: 198.51.100.9",
            ]
        );
    }

    #[test]
    fn only_the_fleet_secret_matches() {
        let s = secret();
        assert!(secret_matches(b"fleet-secret-0123456789", &s));
        for other in [
            &b""[..],
            b"fleet-secret-012345678",
            b"fleet-secret-01234567890",
            b"Fleet-secret-0123456789",
            b"fleet-secret-0123456789 ",
        ] {
            assert!(!secret_matches(other, &s), "{other:?}");
        }
    }

    #[test]
    fn the_internal_listener_refuses_before_it_serves() {
        let service: Arc<dyn Service> = Arc::new(realtime::diag::SeamTest::default());
        let internal = Internal {
            service: Some(service),
            secret: secret(),
            body: BodyLimits {
                max_bytes: 1024,
                memory: 1024,
                timeout: Duration::from_secs(1),
                min_rate: 0,
            },
            send_timeout: Duration::from_secs(60),
        };
        let req = |path: &str, secret: Option<&str>| {
            let mut r = RequestHeader::build("GET", path.as_bytes(), None).expect("req");
            if let Some(s) = secret {
                r.insert_header(SECRET_HEADER, s).expect("header");
            }
            r
        };
        let session = "/_fleet/engine.io/?EIO=4&transport=polling&sid=MyeAGyE3.abc";
        assert_eq!(
            internal.refusal(&req(session, Some("fleet-secret-0123456789"))),
            None
        );
        assert_eq!(internal.refusal(&req(session, None)), Some(Refused::Secret));
        assert_eq!(
            internal.refusal(&req(session, Some("x"))),
            Some(Refused::Secret)
        );
        assert_eq!(
            internal.refusal(&req(
                "/socket.io/?EIO=4&transport=polling&sid=MyeAGyE3.abc",
                Some("fleet-secret-0123456789")
            )),
            Some(Refused::Path)
        );
        assert_eq!(
            internal.refusal(&req(
                "/_fleet/engine.io/?EIO=4&transport=polling",
                Some("fleet-secret-0123456789")
            )),
            Some(Refused::NoSession)
        );
        let none = Internal {
            service: None,
            ..internal
        };
        assert_eq!(
            none.refusal(&req(session, Some("fleet-secret-0123456789"))),
            Some(Refused::Path)
        );
    }
}
