//! The HTTPS front door: pingora's `ProxyHttp`, with the data flowing one way:
//! limits -> router -> target (static files | realtime service | upstream pool).

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::HttpPeer;
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::upstreams::peer::HttpUpstreamRequestPolicy;
use pingora::{Error, ErrorSource, ErrorType, Result};

use crate::accel::{self, Directive, Internal};
use crate::buffering::{self, Body, BodyLimits};
use crate::compression::{self, Encoder, Settings};
use crate::router::{Router, Target};
use crate::settings::{Cidr, Limits};
use crate::static_files::{self, Plan};
use crate::upstream::{InFlight, Pool};
use crate::{fastcgi, forwarding, relay, seam, tunnel};

/// Static files are sent in pieces of this size: large enough for few syscalls, small enough
/// that a thousand concurrent downloads stay within tens of MiB.
const STATIC_CHUNK: usize = 64 * 1024;

pub struct Gateway {
    pub router: Router,
    pub limits: Limits,
    pub trusted: Vec<Cidr>,
    /// The `Strict-Transport-Security` value, when HSTS is on.
    pub hsts: Option<String>,
    /// Where `X-Accel-Redirect` / `X-Sendfile` answers are served from.
    pub internal: Internal,
    /// Where held bodies spill to disk.
    pub temp_dir: Arc<std::path::PathBuf>,
    /// Connections to the app for requests whose body is held (see [`relay`]).
    pub connector: pingora::connectors::http::v1::Connector,
}

/// Per-request state.
#[derive(Default)]
pub struct Ctx {
    route: Option<Arc<str>>,
    pool: Option<Arc<Pool>>,
    client: Option<IpAddr>,
    tls: bool,
    /// The port of the listener the request came in on (`X-Forwarded-Port`).
    port: Option<u16>,
    /// Servers this request failed to connect to: a retry goes elsewhere.
    tried: Vec<usize>,
    current: Option<usize>,
    in_flight: Option<InFlight>,
    body_bytes: u64,
    started: Option<Instant>,
    /// Set when the request was answered here (static file, realtime, error) so the access
    /// log can name it.
    served_by: &'static str,
    /// The app named a file and it was answered from here: the app's body is dropped.
    accel: bool,
    /// The route's compression settings (`None`: off for this route).
    compression: Option<Arc<Settings>>,
    /// The proxied answer's body is being compressed.
    encoder: Option<Encoder>,
}

impl Ctx {
    fn upstream_name(&self) -> &str {
        self.pool.as_ref().map(|p| p.name.as_str()).unwrap_or("-")
    }
    fn server(&self) -> String {
        match (&self.pool, self.current) {
            (Some(p), Some(i)) => p.servers[i].addr.to_string(),
            _ => "-".into(),
        }
    }
}

/// The configured connection timeouts, applied to every request (pingora's own are fixed: 60 s
/// keep-alive and no write timeout).
fn connection_limits(session: &mut Session, limits: &Limits) {
    // pingora turns keep-alive off for `Connection: close` and while shutting down: keep that.
    // 0 means off, as in nginx (pingora would read it as "forever").
    if session.get_keepalive().is_some() {
        session.set_keepalive(limits.keepalive_timeout.map(|idle| idle.as_secs()));
    }
    session.set_write_timeout(Some(limits.send_timeout));
}

/// A short, plain answer with a reason, for every error the gateway produces itself.
pub async fn respond(session: &mut Session, status: u16, reason: &str) -> Result<()> {
    let phrase = http::StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("Error");
    let body = Bytes::from(format!("{status} {phrase}: {reason}\n"));
    let mut head = ResponseHeader::build(status, Some(3))?;
    head.insert_header("content-type", "text/plain; charset=utf-8")?;
    head.insert_header("content-length", body.len().to_string())?;
    head.insert_header("cache-control", "no-store")?;
    if status >= 400 && session.req_header().method != http::Method::HEAD {
        // An error in the middle of a request whose body we did not read: do not reuse.
        if !session.is_body_done() {
            session.set_keepalive(None);
        }
    }
    let head_only = session.req_header().method == http::Method::HEAD;
    session
        .write_response_header(Box::new(head), head_only)
        .await?;
    if !head_only {
        session.write_response_body(Some(body), true).await?;
    }
    if session.is_http2() && status != 408 && !session.is_body_done() {
        // The answer went out before the client finished sending (a 413 on Content-Length):
        // h2 then resets the stream with NO_ERROR, which RFC 9113 section 8.1 allows, but
        // curl (7.88) drops the answer on it and reports no status at all. So the rest of the
        // body is read and dropped for a while, as nginx's lingering close does on HTTP/1.1,
        // and the stream ends cleanly when the client finishes within it. Not after a 408:
        // that client is too slow already.
        let _ = tokio::time::timeout(seam::LINGER, session.drain_request_body()).await;
    }
    Ok(())
}

fn header_bytes(req: &RequestHeader) -> usize {
    let line = req.method.as_str().len() + req.uri.to_string().len() + 12;
    line + req
        .headers
        .iter()
        .map(|(k, v)| k.as_str().len() + v.len() + 4)
        .sum::<usize>()
}

fn host_of(req: &RequestHeader) -> Option<String> {
    let raw = req
        .headers
        .get("host")
        .and_then(|h| h.to_str().ok())
        .or_else(|| req.uri.host())?;
    let host = match raw.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(v6),
        None => raw.rsplit_once(':').map(|(h, _)| h).unwrap_or(raw),
    };
    Some(host.to_ascii_lowercase())
}

impl Gateway {
    fn body_limits(&self) -> BodyLimits {
        BodyLimits::from_limits(&self.limits)
    }

    /// Read the whole request body, or answer why not (`None`).
    async fn hold_body(&self, session: &mut Session, ctx: &mut Ctx) -> Result<Option<Body>> {
        match buffering::read_body(session, &self.body_limits(), &self.temp_dir).await {
            Ok(body) => {
                ctx.body_bytes = body.len();
                if body.spilled() {
                    tracing::debug!(
                        route = ctx.route.as_deref().unwrap_or("-"),
                        bytes = body.len(),
                        "request body held in a temporary file"
                    );
                }
                Ok(Some(body))
            }
            Err(failure) => {
                let status = failure.status();
                ctx.served_by = "limit";
                // Whatever went wrong, where the next request would start is unknown (a broken
                // chunk, a body cut by a limit or a deadline): close after answering, as nginx
                // does. pingora counts a body that failed to parse as done, so `respond` alone
                // would keep the connection.
                session.set_keepalive(None);
                if status > 0 {
                    tracing::warn!(client = ?ctx.client, route = ctx.route.as_deref().unwrap_or("-"), path = %session.req_header().uri, status, error = %failure, "request body not accepted");
                    respond(session, status, failure.public_reason()).await?;
                } else {
                    // A client that left in the middle of its upload: nothing to answer, and
                    // not worth a warning each (a slow-upload attack ends with hundreds).
                    tracing::info!(client = ?ctx.client, route = ctx.route.as_deref().unwrap_or("-"), path = %session.req_header().uri, error = %failure, "client left during its upload");
                }
                Ok(None)
            }
        }
    }

    /// The limits of a route's answer buffering (`response_buffering: true`).
    fn response_buffering(&self) -> buffering::ResponseBuffering {
        buffering::ResponseBuffering {
            memory: self.limits.response_buffer_bytes,
            max_file: self.limits.response_temp_file_bytes,
            dir: self.temp_dir.clone(),
        }
    }

    fn client(&self, ctx: &Ctx) -> forwarding::Client<'_> {
        forwarding::Client {
            ip: ctx.client,
            tls: ctx.tls,
            port: ctx.port,
            trusted: &self.trusted,
        }
    }

    async fn serve_static(
        &self,
        session: &mut Session,
        files: &static_files::StaticFiles,
        ctx: &mut Ctx,
    ) -> Result<bool> {
        let req = session.req_header();
        let method = req.method.clone();
        if method != http::Method::GET && method != http::Method::HEAD {
            return Ok(false);
        }
        // Only GET and HEAD look for files: other methods go to the app, which may well
        // accept a POST to a path that also has a static file (nginx would answer 405).
        let path = req
            .uri
            .path_and_query()
            .map(|p| p.as_str())
            .unwrap_or("/")
            .to_string();
        let plan = files.plan(&method, &path, &req.headers).await;
        match plan {
            Plan::NotFound => Ok(false),
            Plan::Reject { status, reason } => {
                tracing::warn!(route = ctx.route.as_deref().unwrap_or("-"), path = %path, status = status.as_u16(), reason, "static request refused");
                ctx.served_by = "static";
                respond(session, status.as_u16(), reason).await?;
                Ok(true)
            }
            Plan::Serve(resp) => {
                ctx.served_by = "static";
                let mut head = ResponseHeader::build(resp.status, Some(resp.headers.len() + 2))?;
                for (k, v) in resp.headers.iter() {
                    head.append_header(k.clone(), v.clone())?;
                }
                // A precompressed sibling already carries its Content-Encoding, so only the
                // identity file is ever compressed here.
                let mut encoder = None;
                if let Some(settings) = &ctx.compression {
                    let req = compression::Request::from(session.req_header());
                    match &resp.not_modified_identity {
                        Some((content_type, len)) => {
                            let mut full = http::HeaderMap::new();
                            full.insert(http::header::CONTENT_TYPE, content_type.clone());
                            full.insert(http::header::CONTENT_LENGTH, (*len).into());
                            let d = compression::decide(settings, req, http::StatusCode::OK, &full);
                            compression::apply_not_modified(d, &mut head)?;
                        }
                        None => {
                            let d = compression::decide(settings, req, resp.status, &head.headers);
                            encoder = compression::apply(settings, d, &mut head)?;
                        }
                    }
                }
                self.send_file(session, head, resp.body, encoder).await?;
                Ok(true)
            }
        }
    }

    /// Write a file answer planned by [`static_files`]: its head, then its bytes in chunks.
    /// Writes a file answer; with `encoder`, compressed on the way (a file is read as fast as
    /// the client takes it: no flush per chunk, the encoder emits full blocks).
    async fn send_file(
        &self,
        session: &mut Session,
        mut head: ResponseHeader,
        body: static_files::Body,
        mut encoder: Option<Encoder>,
    ) -> Result<()> {
        if let Some(h) = &self.hsts {
            head.insert_header("strict-transport-security", h.as_str())?;
        }
        match body {
            static_files::Body::Empty => match encoder.as_mut() {
                None => session.write_response_header(Box::new(head), true).await?,
                Some(e) => {
                    let end = e.finish().map_err(compression::error)?;
                    session.write_response_header(Box::new(head), false).await?;
                    session.write_response_body(Some(end), true).await?;
                }
            },
            static_files::Body::File { path, offset, len } => {
                session.write_response_header(Box::new(head), false).await?;
                let mut reader = static_files::read_chunks(&path, offset, len, STATIC_CHUNK)
                    .await
                    .map_err(|e| Error::explain(ErrorType::FileReadError, e.to_string()))?;
                loop {
                    match reader.next().await {
                        Ok(Some(chunk)) => {
                            let out = match encoder.as_mut() {
                                Some(e) => e.encode(&chunk).map_err(compression::error)?,
                                None => chunk,
                            };
                            if !out.is_empty() {
                                session.write_response_body(Some(out), false).await?
                            }
                        }
                        Ok(None) => break,
                        Err(e) => return Error::e_explain(ErrorType::FileReadError, e.to_string()),
                    }
                }
                let end = match encoder.as_mut() {
                    Some(e) => Some(e.finish().map_err(compression::error)?),
                    None => None,
                };
                session.write_response_body(end, true).await?;
            }
        }
        Ok(())
    }

    /// The app answered with `X-Accel-Redirect` or `X-Sendfile`: answer with that file (or
    /// a 404 when the header names nothing servable) instead of the app's body.
    async fn serve_accel(
        &self,
        session: &mut Session,
        app: &ResponseHeader,
        directive: Directive,
        ctx: &mut Ctx,
    ) -> Result<()> {
        ctx.served_by = "accel";
        ctx.accel = true;
        let route = ctx.route.clone();
        let route = route.as_deref().unwrap_or("-");
        let upstream = ctx.upstream_name().to_string();
        let (location, path, header, value) = match directive {
            Directive::Refuse {
                header,
                value,
                reason,
            } => {
                tracing::warn!(route, upstream = %upstream, header, value = %value, reason, "the app's file redirect was refused");
                return respond(session, 404, "no such file").await;
            }
            Directive::Serve {
                location,
                path,
                header,
                value,
            } => (location, path, header, value),
        };
        let req = session.req_header();
        let plan = self
            .internal
            .plan(location, &path, &req.method, &req.headers)
            .await;
        let (status, reason) = match plan {
            Plan::Serve(resp) => {
                let mut app = app.clone();
                forwarding::response(&mut app);
                let head = accel::response_head(&app, &resp)?;
                return self.send_file(session, head, resp.body, None).await;
            }
            Plan::NotFound => (
                404,
                "no such file (missing, a directory, hidden, or a symlink out of the root)",
            ),
            // A failed If-Match / If-Unmodified-Since is the client's answer to give.
            Plan::Reject { status, reason } if status == http::StatusCode::PRECONDITION_FAILED => {
                return respond(session, status.as_u16(), reason).await;
            }
            Plan::Reject { status, reason } if status.is_server_error() => (500, reason),
            Plan::Reject { reason, .. } => (404, reason),
        };
        tracing::warn!(route, upstream = %upstream, header, value = %value, location = self.internal.name(location), status, reason, "the app's file redirect names nothing to serve");
        respond(
            session,
            status,
            if status == 404 {
                "no such file"
            } else {
                "cannot read the file"
            },
        )
        .await
    }
}

#[async_trait]
impl ProxyHttp for Gateway {
    type CTX = Ctx;

    fn new_ctx(&self) -> Ctx {
        Ctx {
            started: Some(Instant::now()),
            served_by: "upstream",
            ..Ctx::default()
        }
    }

    async fn early_request_filter(&self, session: &mut Session, _ctx: &mut Ctx) -> Result<()> {
        // The first hook pingora calls once its parser has the whole head.
        crate::header_deadline::head_parsed(session);
        Ok(())
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut Ctx) -> Result<bool> {
        connection_limits(session, &self.limits);
        ctx.client = session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map(|a| a.ip());
        ctx.tls = seam::is_tls(session);
        ctx.port = session
            .server_addr()
            .and_then(|a| a.as_inet())
            .map(|a| a.port());

        let req = session.req_header();
        if header_bytes(req) > self.limits.max_header_bytes {
            ctx.served_by = "limit";
            tracing::warn!(client = ?ctx.client, limit = self.limits.max_header_bytes, "request headers too large");
            respond(session, 431, "request headers too large").await?;
            return Ok(true);
        }
        if let Some(te) = forwarding::unsupported_transfer_coding(req) {
            // The body cannot be delimited as the client meant it: answer, then close
            // (nginx: 501 "unknown transfer-encoding").
            ctx.served_by = "limit";
            tracing::warn!(client = ?ctx.client, transfer_encoding = %te, "transfer coding not supported");
            session.set_keepalive(None);
            respond(session, 501, "transfer coding not supported (only chunked)").await?;
            return Ok(true);
        }
        if let Some(problem) = forwarding::malformed_head(req) {
            ctx.served_by = "limit";
            tracing::warn!(client = ?ctx.client, problem, "malformed request head");
            session.set_keepalive(None);
            respond(session, 400, problem).await?;
            return Ok(true);
        }
        if forwarding::drop_foreign_upgrade(session.req_header_mut()) {
            tracing::info!(client = ?ctx.client, path = %session.req_header().uri.path(), "upgrade to something other than websocket: served as a plain request");
        }
        let req = session.req_header();
        if let Some(len) = req
            .headers
            .get("content-length")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
        {
            if len > self.limits.max_body_bytes {
                ctx.served_by = "limit";
                tracing::warn!(client = ?ctx.client, length = len, limit = self.limits.max_body_bytes, "request body too large");
                respond(session, 413, "request body too large").await?;
                return Ok(true);
            }
        }
        let Some(path) = crate::router::normalize(req.uri.path()) else {
            ctx.served_by = "router";
            tracing::warn!(client = ?ctx.client, path = %req.uri.path(), "path climbs above the root");
            respond(session, 400, "bad path").await?;
            return Ok(true);
        };
        if self.internal.hides(&path) {
            // Only the app hands these files out (X-Accel-Redirect), whatever route matches.
            ctx.served_by = "router";
            tracing::warn!(client = ?ctx.client, path = %req.uri.path(), "request from outside for an internal location");
            respond(session, 404, "no route for this path").await?;
            return Ok(true);
        }
        let host = host_of(req);
        let Some(route) = self.router.find(host.as_deref(), &path) else {
            ctx.served_by = "router";
            respond(session, 404, "no route for this path").await?;
            return Ok(true);
        };
        ctx.route = Some(Arc::from(route.name.as_str()));

        match &route.target {
            Target::Realtime(service) => {
                ctx.served_by = "realtime";
                // Per-client limits of the realtime services count the real client behind a
                // trusted proxy, not the proxy.
                let client = forwarding::real_client(&self.client(ctx), &req.headers);
                seam::serve(session, service.clone(), client, &self.body_limits()).await?;
                Ok(true)
            }
            Target::App {
                files,
                pool,
                websocket,
                compression,
                request_buffering,
                response_buffering,
            } => {
                ctx.compression = compression.clone();
                let fastcgi = pool.as_ref().is_some_and(|p| p.fastcgi.is_some());
                if let Some(files) = files {
                    // PHP source is never a static file when php-fpm is behind.
                    let php = fastcgi && fastcgi::is_php_path(session.req_header().uri.path());
                    if !php && self.serve_static(session, files, ctx).await? {
                        return Ok(true);
                    }
                }
                let Some(pool) = pool else {
                    ctx.served_by = "static";
                    respond(session, 404, "no such file").await?;
                    return Ok(true);
                };
                ctx.pool = Some(pool.clone());
                let upgrade = session.is_upgrade_req();
                // The body is read whole before the app is asked, so a slow upload costs the
                // gateway a little memory or disk instead of an app worker.
                let mut held = None;
                if *request_buffering && !upgrade && buffering::has_body(session) {
                    match self.hold_body(session, ctx).await? {
                        Some(body) => held = Some(body),
                        None => return Ok(true),
                    }
                }
                if fastcgi {
                    ctx.served_by = "fastcgi";
                    if session.is_upgrade_req() {
                        // FastCGI has no upgrades (nginx would drop `Upgrade` and run PHP, whose
                        // answer no WebSocket client can use): say so plainly.
                        tracing::warn!(route = ctx.route.as_deref().unwrap_or("-"), upstream = %pool.name, "upgrade request on a FastCGI route");
                        respond(
                            session,
                            501,
                            "upgrades are not supported by a FastCGI upstream",
                        )
                        .await?;
                        return Ok(true);
                    }
                    let mut req = session.req_header().clone();
                    forwarding::request(&mut req, &self.client(ctx), false);
                    self.internal.tell_the_app(&mut req);
                    let mut server = None;
                    let outcome = fastcgi::serve(
                        session,
                        fastcgi::Call {
                            pool,
                            req: &req,
                            client: ctx.client,
                            tls: ctx.tls,
                            max_body: self.limits.max_body_bytes,
                            body: held.as_ref(),
                            hsts: self.hsts.as_deref().filter(|_| ctx.tls),
                            compression: ctx.compression.as_deref(),
                            buffering: response_buffering.then(|| self.response_buffering()),
                            server: &mut server,
                        },
                    )
                    .await;
                    ctx.current = server;
                    match outcome? {
                        Ok(fastcgi::Answer::Sent) => {}
                        Ok(fastcgi::Answer::NamesAFile(app)) => {
                            if let Some(d) = self.internal.directive(&app) {
                                self.serve_accel(session, &app, d, ctx).await?;
                            }
                        }
                        Err(failure) => {
                            let status = failure.status();
                            tracing::warn!(route = ctx.route.as_deref().unwrap_or("-"), upstream = %pool.name, server = %ctx.server(), path = %req.uri, status, error = %failure.describe(), "fastcgi request failed");
                            respond(session, status, failure.public_reason()).await?;
                        }
                    }
                    return Ok(true);
                }
                // Only a WebSocket handshake is still an upgrade here (`drop_foreign_upgrade`).
                if session.is_upgrade_req() {
                    if !*websocket {
                        ctx.served_by = "router";
                        respond(session, 403, "upgrades are not allowed on this route").await?;
                        return Ok(true);
                    }
                    ctx.served_by = "tunnel";
                    let mut req = session.req_header().clone();
                    forwarding::request(&mut req, &self.client(ctx), true);
                    self.internal.tell_the_app(&mut req);
                    if let Err(failure) = tunnel::run(session, pool, ctx.client, &req).await? {
                        let status = failure.status();
                        tracing::warn!(route = ctx.route.as_deref().unwrap_or("-"), upstream = %pool.name, status, error = %failure.describe(), "websocket tunnel failed");
                        // The address and the OS error are for the log, as on every route.
                        respond(session, status, failure.public_reason()).await?;
                    }
                    return Ok(true);
                }
                if held.is_some() || *response_buffering {
                    let mut req = session.req_header().clone();
                    forwarding::request(&mut req, &self.client(ctx), false);
                    self.internal.tell_the_app(&mut req);
                    let mut server = None;
                    let outcome = relay::forward(
                        session,
                        relay::Call {
                            pool,
                            connector: &self.connector,
                            req,
                            body: held.as_ref(),
                            client: ctx.client,
                            hsts: self.hsts.as_deref().filter(|_| ctx.tls),
                            buffering: response_buffering.then(|| self.response_buffering()),
                            internal: &self.internal,
                            compression: ctx.compression.as_deref(),
                            server: &mut server,
                        },
                    )
                    .await;
                    ctx.current = server;
                    match outcome? {
                        Ok(relay::Answer::Sent) => {}
                        Ok(relay::Answer::NamesAFile(app)) => {
                            if let Some(d) = self.internal.directive(&app) {
                                self.serve_accel(session, &app, d, ctx).await?;
                            }
                        }
                        Err(failure) => {
                            let status = failure.status();
                            tracing::warn!(route = ctx.route.as_deref().unwrap_or("-"), upstream = %pool.name, server = %ctx.server(), path = %session.req_header().uri, status, error = %failure.describe(), "proxy error");
                            respond(session, status, failure.public_reason()).await?;
                        }
                    }
                    return Ok(true);
                }
                Ok(false)
            }
        }
    }

    async fn request_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        _end_of_stream: bool,
        ctx: &mut Ctx,
    ) -> Result<()> {
        // Chunked bodies have no length up front: count as they pass.
        if let Some(b) = body {
            ctx.body_bytes += b.len() as u64;
            if ctx.body_bytes > self.limits.max_body_bytes {
                return Error::e_explain(ErrorType::HTTPStatus(413), "request body too large");
            }
        }
        Ok(())
    }

    async fn upstream_peer(&self, _session: &mut Session, ctx: &mut Ctx) -> Result<Box<HttpPeer>> {
        let Some(pool) = ctx.pool.clone() else {
            return Error::e_explain(ErrorType::HTTPStatus(502), "no upstream for this route");
        };
        let Some(i) = pool.select(ctx.client, &ctx.tried) else {
            let why = if ctx.tried.is_empty() {
                "no healthy server"
            } else {
                "no healthy server left to retry on"
            };
            return Error::e_explain(ErrorType::HTTPStatus(503), why);
        };
        ctx.current = Some(i);
        ctx.in_flight = Some(pool.begin(i));
        let mut peer = pool.servers[i].addr.http_peer()?;
        peer.options.connection_timeout = Some(pool.connect_timeout);
        peer.options.total_connection_timeout = Some(pool.connect_timeout);
        peer.options.read_timeout = Some(pool.read_timeout);
        peer.options.write_timeout = Some(pool.read_timeout);
        peer.options.idle_timeout = Some(relay::IDLE_TIMEOUT);
        // `Connection`-listed fields are removed by `forwarding::request`, which keeps Host and
        // the other end-to-end fields as the relay, FastCGI and the tunnel do; pingora's own
        // pass would strip Cookie or Authorization and answer 400 to `Connection: Host`.
        peer.options.http_upstream_request_policy = HttpUpstreamRequestPolicy {
            strip_connection_nominated: false,
            ..HttpUpstreamRequestPolicy::standard()
        };
        Ok(Box::new(peer))
    }

    fn fail_to_connect(
        &self,
        _session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut Ctx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        if let (Some(pool), Some(i)) = (&ctx.pool, ctx.current) {
            tracing::warn!(route = ctx.route.as_deref().unwrap_or("-"), upstream = %pool.name, server = %pool.servers[i].addr, error = %e, "connect failed");
            ctx.tried.push(i);
            ctx.in_flight = None;
            // Nothing was sent yet, so any request may go to another server.
            if pool.select(ctx.client, &ctx.tried).is_some() {
                e.set_retry(true);
            }
        }
        e
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream_request: &mut RequestHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        // pingora's hop-by-hop pass has already taken `Connection` off; the fields it names
        // still go (those that may, see `forwarding`), as on every other path.
        if let Some(listed) = session.req_header().headers.get(http::header::CONNECTION) {
            upstream_request.insert_header(http::header::CONNECTION, listed.clone())?;
        }
        forwarding::request(upstream_request, &self.client(ctx), false);
        self.internal.tell_the_app(upstream_request);
        Ok(())
    }

    async fn response_filter(
        &self,
        session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        if let Some(directive) = self.internal.directive(upstream_response) {
            // The whole answer (the file, or a 404) is written here. pingora then finds a
            // response already sent and skips the app's head (H2 silently; H1 with a warning,
            // silenced in main.rs), and `response_body_filter` drops the app's body.
            return self
                .serve_accel(session, upstream_response, directive, ctx)
                .await;
        }
        forwarding::response(upstream_response);
        if ctx.tls {
            if let Some(h) = &self.hsts {
                upstream_response.insert_header("strict-transport-security", h.as_str())?;
            }
        }
        // Called again for the final header after a 1xx, which decides afresh.
        if let Some(settings) = &ctx.compression {
            let d = compression::decide(
                settings,
                session.req_header().into(),
                upstream_response.status,
                &upstream_response.headers,
            );
            ctx.encoder = compression::apply(settings, d, upstream_response)?;
        }
        Ok(())
    }

    fn response_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut Ctx,
    ) -> Result<Option<Duration>> {
        if ctx.accel {
            *body = None;
            return Ok(None);
        }
        // Each piece pingora read from the app is flushed to the client as it comes: an app
        // that streams (a progress page, a chunked export) is not held back by the encoder.
        if let Some(e) = ctx.encoder.as_mut() {
            let out = e
                .piece(body.as_deref(), end_of_stream)
                .map_err(compression::error)?;
            *body = (!out.is_empty() || end_of_stream).then_some(out);
            if end_of_stream {
                ctx.encoder = None;
            }
        }
        Ok(None)
    }

    async fn fail_to_proxy(&self, session: &mut Session, e: &Error, ctx: &mut Ctx) -> FailToProxy {
        let code = match e.etype() {
            ErrorType::HTTPStatus(code) => *code,
            ErrorType::ConnectTimedout => 504,
            ErrorType::ReadTimedout | ErrorType::WriteTimedout
                if e.esource() == &ErrorSource::Upstream =>
            {
                504
            }
            _ => match e.esource() {
                ErrorSource::Upstream => 502,
                ErrorSource::Downstream => match e.etype() {
                    ErrorType::ReadTimedout => 408,
                    ErrorType::WriteError | ErrorType::ReadError | ErrorType::ConnectionClosed => 0,
                    _ => 400,
                },
                ErrorSource::Internal | ErrorSource::Unset => 500,
            },
        };
        let reason = match code {
            502 => "the app did not answer properly",
            503 => "no healthy app server",
            504 => "the app did not answer in time",
            413 => "request body too large",
            408 => "request took too long to arrive",
            _ => "request failed",
        };
        tracing::warn!(
            route = ctx.route.as_deref().unwrap_or("-"),
            upstream = ctx.upstream_name(),
            server = %ctx.server(),
            status = code,
            error = %e,
            "proxy error"
        );
        if code > 0 && session.response_written().is_none() {
            let _ = respond(session, code, reason).await;
        }
        FailToProxy {
            error_code: code,
            can_reuse_downstream: false,
        }
    }

    async fn logging(&self, session: &mut Session, _e: Option<&Error>, ctx: &mut Ctx) {
        crate::header_deadline::request_done(session);
        if !tracing::enabled!(target: "access", tracing::Level::INFO) {
            return;
        }
        let status = session
            .response_written()
            .map(|r| r.status.as_u16())
            .unwrap_or(0);
        let req = session.req_header();
        tracing::info!(
            target: "access",
            client = ?ctx.client,
            method = %req.method,
            path = %req.uri,
            status,
            route = ctx.route.as_deref().unwrap_or("-"),
            by = ctx.served_by,
            upstream = ctx.upstream_name(),
            server = %ctx.server(),
            ms = ctx.started.map(|s| s.elapsed().as_millis() as u64).unwrap_or(0),
        );
    }
}
