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
use pingora::{Error, ErrorSource, ErrorType, Result};

use crate::buffering::{self, Body, BodyLimits};
use crate::config::{Cidr, Limits};
use crate::router::{Router, Target};
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
    /// Servers this request failed to connect to: a retry goes elsewhere.
    tried: Vec<usize>,
    current: Option<usize>,
    in_flight: Option<InFlight>,
    body_bytes: u64,
    started: Option<Instant>,
    /// Set when the request was answered here (static file, realtime, error) so the access
    /// log can name it.
    served_by: &'static str,
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
        BodyLimits {
            max_bytes: self.limits.max_body_bytes,
            memory: self.limits.client_body_buffer_bytes,
            timeout: Duration::from_millis(self.limits.client_body_timeout_ms),
            min_rate: self.limits.client_body_min_rate,
        }
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
                if status > 0 {
                    tracing::warn!(client = ?ctx.client, route = ctx.route.as_deref().unwrap_or("-"), path = %session.req_header().uri, status, error = %failure, "request body not accepted");
                    respond(session, status, failure.public_reason()).await?;
                } else {
                    // A client that left in the middle of its upload: nothing to answer, and
                    // not worth a warning each (a slow-upload attack ends with hundreds).
                    tracing::info!(client = ?ctx.client, route = ctx.route.as_deref().unwrap_or("-"), path = %session.req_header().uri, error = %failure, "client left during its upload");
                    session.set_keepalive(None);
                }
                Ok(None)
            }
        }
    }

    fn client(&self, ctx: &Ctx) -> forwarding::Client<'_> {
        forwarding::Client {
            ip: ctx.client,
            tls: ctx.tls,
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
                if let Some(h) = &self.hsts {
                    head.insert_header("strict-transport-security", h.as_str())?;
                }
                match resp.body {
                    static_files::Body::Empty => {
                        session.write_response_header(Box::new(head), true).await?;
                    }
                    static_files::Body::File { path, offset, len } => {
                        session.write_response_header(Box::new(head), false).await?;
                        let mut reader =
                            static_files::read_chunks(&path, offset, len, STATIC_CHUNK)
                                .await
                                .map_err(|e| {
                                    Error::explain(ErrorType::FileReadError, e.to_string())
                                })?;
                        loop {
                            match reader.next().await {
                                Ok(Some(chunk)) => {
                                    session.write_response_body(Some(chunk), false).await?
                                }
                                Ok(None) => break,
                                Err(e) => {
                                    return Error::e_explain(
                                        ErrorType::FileReadError,
                                        e.to_string(),
                                    )
                                }
                            }
                        }
                        session.write_response_body(None, true).await?;
                    }
                }
                Ok(true)
            }
        }
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

    async fn request_filter(&self, session: &mut Session, ctx: &mut Ctx) -> Result<bool> {
        ctx.client = session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map(|a| a.ip());
        ctx.tls = seam::is_tls(session);

        let req = session.req_header();
        if header_bytes(req) > self.limits.max_header_bytes {
            ctx.served_by = "limit";
            tracing::warn!(client = ?ctx.client, limit = self.limits.max_header_bytes, "request headers too large");
            respond(session, 431, "request headers too large").await?;
            return Ok(true);
        }
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
                seam::serve(session, service.clone()).await?;
                Ok(true)
            }
            Target::App {
                files,
                pool,
                websocket,
                request_buffering,
                response_buffering,
            } => {
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
                            server: &mut server,
                        },
                    )
                    .await;
                    ctx.current = server;
                    if let Err(failure) = outcome? {
                        let status = failure.status();
                        tracing::warn!(route = ctx.route.as_deref().unwrap_or("-"), upstream = %pool.name, server = %ctx.server(), path = %req.uri, status, error = %failure.describe(), "fastcgi request failed");
                        respond(session, status, failure.public_reason()).await?;
                    }
                    return Ok(true);
                }
                if session.is_upgrade_req() {
                    if !*websocket {
                        ctx.served_by = "router";
                        respond(session, 403, "upgrades are not allowed on this route").await?;
                        return Ok(true);
                    }
                    ctx.served_by = "tunnel";
                    let mut req = session.req_header().clone();
                    forwarding::request(&mut req, &self.client(ctx), true);
                    if let Err(failure) = tunnel::run(session, pool, ctx.client, &req).await? {
                        let status = failure.status();
                        tracing::warn!(route = ctx.route.as_deref().unwrap_or("-"), upstream = %pool.name, status, error = %failure.describe(), "websocket tunnel failed");
                        respond(session, status, &failure.describe()).await?;
                    }
                    return Ok(true);
                }
                if held.is_some() || *response_buffering {
                    let mut req = session.req_header().clone();
                    forwarding::request(&mut req, &self.client(ctx), false);
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
                            buffering: response_buffering.then(|| relay::ResponseBuffering {
                                memory: self.limits.response_buffer_bytes,
                                max_file: self.limits.response_temp_file_bytes,
                                dir: self.temp_dir.clone(),
                            }),
                            server: &mut server,
                        },
                    )
                    .await;
                    ctx.current = server;
                    if let Err(failure) = outcome? {
                        let status = failure.status();
                        tracing::warn!(route = ctx.route.as_deref().unwrap_or("-"), upstream = %pool.name, server = %ctx.server(), path = %session.req_header().uri, status, error = %failure.describe(), "proxy error");
                        respond(session, status, failure.public_reason()).await?;
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
        let Some(addr) = pool.servers[i].addr.inet() else {
            return Error::e_explain(ErrorType::HTTPStatus(502), "not a TCP server");
        };
        let mut peer = HttpPeer::new(addr, false, String::new());
        peer.options.connection_timeout = Some(pool.connect_timeout);
        peer.options.total_connection_timeout = Some(pool.connect_timeout);
        peer.options.read_timeout = Some(pool.read_timeout);
        peer.options.write_timeout = Some(pool.read_timeout);
        peer.options.idle_timeout = Some(relay::IDLE_TIMEOUT);
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
        _session: &mut Session,
        upstream_request: &mut RequestHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        forwarding::request(upstream_request, &self.client(ctx), false);
        Ok(())
    }

    async fn response_filter(
        &self,
        _session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        forwarding::response(upstream_response);
        if ctx.tls {
            if let Some(h) = &self.hsts {
                upstream_response.insert_header("strict-transport-security", h.as_str())?;
            }
        }
        Ok(())
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
