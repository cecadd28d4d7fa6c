//! The HTTPS front door: pingora's `ProxyHttp`. It applies the limits, asks the [`crate::router`]
//! and dispatches to the route's target: static files, a realtime service, or an upstream pool
//! by its protocol (HTTP: pingora's proxy path, the relay or the WebSocket tunnel; FastCGI).
//! What the targets share lives elsewhere, once: server picking and retries in
//! [`crate::attempt`], what a fault becomes in [`crate::failure`], and what every answer passes
//! through on its way out in [`crate::finish`].
//!
//! A reload ([`crate::reload`]) builds a new [`Serving`] and swaps it into [`Current`]: each
//! request takes the one in force when it starts ([`Gateway::new_ctx`]) and keeps it to the
//! end, so a request, an upload or a WebSocket that began under the old routes finishes on
//! them while the next request on the same connection gets the new ones.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use http::HeaderValue;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::HttpPeer;
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::{Error, ErrorType, Result};

use crate::accel::Internal;
use crate::access_log::{AccessLog, Entry, RequestLine};
use crate::addr::Addr;
use crate::attempt::{InFlight, Loop, Picked, Tries};
use crate::buffering::{self, Body, BodyLimits};
use crate::compression::Settings;
use crate::failure::{ClientFailure, Failure, Fault, Place};
use crate::finish::{Answer, Finish, Origin, Out};
use crate::metrics::{Metrics, Open};
use crate::router::{Router, Target};
use crate::settings::{Cidr, Limits};
use crate::upstream::{Pool, Protocol};
use crate::ws_frames::Frames;
use crate::{fastcgi, forwarding, relay, seam, tunnel};

/// The configuration in force: swapped whole by a reload, read once per request.
pub type Current = arc_swap::ArcSwap<Serving>;

/// The front door: pingora's `ProxyHttp`, serving each request with the [`Serving`] in force
/// when it arrived.
pub struct Gateway {
    pub current: Arc<Current>,
    /// Set once the process is going away: answers then close their connection.
    pub draining: crate::draining::Draining,
}

/// What one configuration serves with: its routes and pools, limits and headers. Built at start
/// and again by each reload; the parts that outlive a configuration (metrics, the access log,
/// the connector, the temp directory) are shared between generations.
pub struct Serving {
    pub router: Router,
    /// This configuration's per-route metrics ([`Metrics::routes`]).
    pub routes: crate::metrics::RouteTable,
    pub limits: Limits,
    pub trusted: Vec<Cidr>,
    /// The `Strict-Transport-Security` value, when HSTS is on (sent over TLS only).
    pub hsts: Option<HeaderValue>,
    /// Where `X-Accel-Redirect` / `X-Sendfile` answers are served from.
    pub internal: Internal,
    /// Where held bodies spill to disk.
    pub temp_dir: Arc<std::path::PathBuf>,
    /// Connections to the app for requests whose body is held (see [`relay`]).
    pub connector: Arc<pingora::connectors::http::v1::Connector>,
    /// Counted in [`Gateway::logging`], the one hook every request ends in.
    pub metrics: Arc<Metrics>,
    /// `None` when `access_log.path` is `off`.
    pub access_log: Option<Arc<AccessLog>>,
    /// Per-client limits' state ([`crate::client_limits`]).
    pub client_limits: Arc<crate::client_limits::ClientLimits>,
    /// Where a held long-poll's connection comes back to pingora once answered.
    pub reentry: Arc<crate::handoff::Reentry>,
}

/// Per-request state: the configuration the request is served with, and the rest.
pub struct Ctx {
    /// Taken from [`Current`] as the request starts. Apart from [`Req`] so a hook can lend
    /// it and the state together (one reference count per request, not one per hook: the
    /// count is shared by every worker thread).
    serving: Arc<Serving>,
    req: Req,
}

/// What a request's hooks learn and decide as it goes.
#[derive(Default)]
pub struct Req {
    route: Option<Arc<str>>,
    /// The route's place in the configuration, for the metrics.
    route_index: Option<usize>,
    /// `X-Request-Id`, decided as the request arrives ([`forwarding::request_id`]).
    request_id: Option<HeaderValue>,
    pool: Option<Arc<Pool>>,
    client: Option<IpAddr>,
    tls: bool,
    /// The port of the listener the request came in on (`X-Forwarded-Port`).
    port: Option<u16>,
    /// What pingora's proxy path used up of the retry rule ([`crate::attempt`]).
    tries: Tries,
    /// The server the request is (or was last) on.
    current: Option<usize>,
    in_flight: Option<InFlight>,
    body_bytes: u64,
    started: Option<Instant>,
    /// When pingora's proxy path first asked for a server, and how long the app then took to
    /// start answering (the other paths report it from the attempt loop, [`Picked`]).
    upstream_started: Option<Instant>,
    upstream_time: Option<Duration>,
    /// Set when the request was answered here (static file, realtime, error) so the access
    /// log can name it.
    served_by: &'static str,
    /// The app named a file and it was answered from here: the app's body is dropped.
    accel: bool,
    /// The route's compression settings (`None`: off for this route).
    compression: Option<Arc<Settings>>,
    /// How the proxied answer's body goes out (compressed or not).
    out: Out,
    /// A fault classified where it happened on pingora's proxy path, for `fail_to_proxy`
    /// (which pingora hands only an error).
    fault: Option<Fault>,
    /// An upgraded session's WebSocket frames (tunnel, realtime), for its log line.
    frames: Option<Box<Frames>>,
    /// This request's slot of `limits.per_client_connections`, freed when it ends.
    _in_progress: Option<crate::client_limits::InProgress>,
    /// Its connection left pingora ([`crate::handoff`]): the rest of its state went with it.
    handed_off: bool,
}

/// What a request's end needs of its state: its log line's fields, its metrics' labels and its
/// per-client slot ([`Serving::ended`]). A connection that left pingora keeps this until it
/// ends, where it kept the whole [`Req`] (compression and retry state, faults, frames).
#[derive(Default)]
struct Ending {
    route: Option<Arc<str>>,
    route_index: Option<usize>,
    request_id: Option<HeaderValue>,
    pool: Option<Arc<Pool>>,
    current: Option<usize>,
    client: Option<IpAddr>,
    tls: bool,
    served_by: &'static str,
    started: Option<Instant>,
    upstream_time: Option<Duration>,
    /// Freed when the request ends.
    _in_progress: Option<crate::client_limits::InProgress>,
}

impl Req {
    /// What the request's end needs, taken out of it.
    fn ending(&mut self) -> Ending {
        Ending {
            route: self.route.take(),
            route_index: self.route_index,
            request_id: self.request_id.take(),
            pool: self.pool.take(),
            current: self.current,
            client: self.client,
            tls: self.tls,
            served_by: self.served_by,
            started: self.started,
            upstream_time: self.upstream_time,
            _in_progress: self._in_progress.take(),
        }
    }

    /// Its connection leaves pingora: the rest of its state goes with it ([`Ending`]).
    fn leave(&mut self) -> Ending {
        self.handed_off = true;
        self.ending()
    }

    fn upstream_name(&self) -> &str {
        self.pool.as_ref().map(|p| p.name.as_str()).unwrap_or("-")
    }

    fn server(&self) -> Option<&Addr> {
        let (pool, i) = (self.pool.as_ref()?, self.current?);
        pool.servers.get(i).map(|s| &s.addr)
    }

    /// Where this request is, for a fault's log line.
    fn place(&self) -> Place<'_> {
        Place {
            client: self.client,
            route: self.route.as_deref().unwrap_or("-"),
            by: self.served_by,
            upstream: self.upstream_name(),
            server: self.server(),
            request_id: self.request_id.as_ref(),
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

fn header_bytes(req: &RequestHeader) -> usize {
    let line = req.method.as_str().len() + uri_len(&req.uri) + 12;
    line + req
        .headers
        .iter()
        .map(|(k, v)| k.as_str().len() + v.len() + 4)
        .sum::<usize>()
}

/// The length of `uri` as written (`Display`), without writing it: this runs on every request.
fn uri_len(uri: &http::Uri) -> usize {
    uri.scheme_str().map_or(0, |s| s.len() + 3)
        + uri.authority().map_or(0, |a| a.as_str().len())
        + uri.path().len()
        + uri.query().map_or(0, |q| q.len() + 1)
}

/// The request's host for routing, lowercase; copied only when it is not already.
fn host_of(req: &RequestHeader) -> Option<std::borrow::Cow<'_, str>> {
    let raw = req
        .headers
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| req.uri.host())?;
    let host = match raw.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(v6),
        None => raw.rsplit_once(':').map(|(h, _)| h).unwrap_or(raw),
    };
    Some(match host.bytes().any(|b| b.is_ascii_uppercase()) {
        true => host.to_ascii_lowercase().into(),
        false => host.into(),
    })
}

impl Serving {
    fn body_limits(&self) -> BodyLimits {
        BodyLimits::from_limits(&self.limits)
    }

    /// The finisher for a request's answers: HSTS over TLS only, the route's compression.
    fn finish<'a>(&'a self, tls: bool, compression: Option<&'a Settings>) -> Finish<'a> {
        Finish {
            hsts: self.hsts.as_ref().filter(|_| tls),
            compression,
        }
    }

    /// End the request with `fault`: its log line and its answer. Boxed, as every path off
    /// the common one is (see [`Gateway::request_filter`]).
    async fn fail(&self, session: &mut Session, ctx: &Req, fault: &Fault) -> Result<()> {
        Box::pin(
            self.finish(ctx.tls, None)
                .fail(session, fault, &ctx.place()),
        )
        .await
    }

    /// A short answer of the gateway's own, for a request refused before any target.
    async fn refuse(
        &self,
        session: &mut Session,
        ctx: &Req,
        status: u16,
        reason: &str,
    ) -> Result<()> {
        Box::pin(self.finish(ctx.tls, None).error(session, status, reason)).await
    }

    /// A request over a per-client limit: its answer and log line.
    async fn limited(
        &self,
        session: &mut Session,
        ctx: &Req,
        refusal: &crate::client_limits::Refusal,
    ) -> Result<()> {
        Box::pin(
            self.finish(ctx.tls, None)
                .limited(session, refusal, &ctx.place()),
        )
        .await
    }

    /// A route to a realtime service (`Target::Realtime`): admitted by the per-client limits,
    /// counted, then served by the service.
    async fn realtime(
        self: &Arc<Self>,
        session: &mut Session,
        ctx: &mut Req,
        route: usize,
        service: &Arc<dyn realtime::seam::Service>,
        kind: crate::settings::RealtimeKind,
    ) -> Result<bool> {
        ctx.served_by = "realtime";
        let req = session.req_header();
        let opens = crate::client_limits::opens_realtime_session(
            kind,
            &req.method,
            session.is_upgrade_req(),
            req.uri.query(),
        );
        if opens {
            let client = self.real_client(session, ctx);
            let admitted =
                self.client_limits
                    .realtime_connect(&self.limits, client, Instant::now());
            if let Err(refusal) = admitted {
                self.limited(session, ctx, &refusal).await?;
                return Ok(true);
            }
        }
        let req = session.req_header();
        let route_gauge = self.routes.realtime_session(
            route,
            session.is_upgrade_req(),
            req.method == http::Method::GET,
        );
        // Per-client limits of the realtime services count the real client behind a
        // trusted proxy, not the proxy.
        let client = forwarding::real_client(&self.client(ctx), &req.headers);
        let limits = self.body_limits();
        let hsts = self.finish(ctx.tls, None).hsts;
        let may_hold = self.reentry.ready();
        let served = seam::serve(session, service.clone(), client, &limits, hsts, may_hold).await?;
        match served {
            seam::Served::Answered => {}
            seam::Served::Left(handover) => self.hand_off(handover, ctx.leave(), route_gauge),
            seam::Served::Held(held) => self.hold(held, ctx.leave(), route_gauge),
        }
        Ok(true)
    }

    /// A held answer (a long-poll) waits outside pingora ([`seam::Held`]): with the request's
    /// state, which is counted and logged once the answer is written, as
    /// [`Serving::hand_off`] does. A connection that may be kept alive then goes back to
    /// pingora for its next request; when that one is held too, the same task carries it
    /// ([`crate::handoff::run_held`]).
    fn hold(
        self: &Arc<Self>,
        held: Box<seam::Held>,
        req: Ending,
        route_gauge: Option<crate::metrics::OpenGuard>,
    ) {
        let serving = self.clone();
        crate::handoff::run_held(Box::pin(async move {
            // pingora's connection task, which counted the connection, has ended.
            let gauges = (serving.metrics.open(Open::Http1), route_gauge);
            let end = held.answer().await;
            let seam::HeldEnd {
                status,
                sent,
                line,
                then,
            } = end;
            let (open, route_gauge) = gauges;
            match then {
                seam::AfterHeld::Left(handover) => {
                    // Counted and logged when the stream ends, like any stream that left.
                    drop(open);
                    serving.hand_off(handover, req, route_gauge);
                }
                seam::AfterHeld::Closed => {
                    serving.ended(req, status, sent, 0, None, || line);
                }
                seam::AfterHeld::KeptAlive(reused) => {
                    serving.ended(req, status, sent, 0, None, || line);
                    drop(route_gauge);
                    // Back in pingora for its next request, counted as open meanwhile (as
                    // `H2Guard` counts every HTTP/1 connection); this configuration is not
                    // kept alive by it.
                    let reentry = serving.reentry.clone();
                    drop(serving);
                    reentry.serve(reused).await;
                    drop(open);
                }
            }
        }));
    }

    /// A realtime connection has left pingora (an upgrade, an HTTP/1 event stream): start
    /// what runs on it, with the request's state (its per-client slot, its gauges) moved
    /// along to be counted, logged and freed when it ends, as [`Serving::logging`] does for
    /// every other request.
    fn hand_off(
        self: &Arc<Self>,
        mut handover: Box<seam::Handover>,
        req: Ending,
        route_gauge: Option<crate::metrics::OpenGuard>,
    ) {
        // pingora's connection task, which counted the connection, ends now.
        let gauges = (self.metrics.open(Open::Http1), route_gauge);
        let serving = self.clone();
        let (status, upgrade, line) =
            (handover.status, handover.is_upgrade(), handover.line.take());
        let on_end: crate::handoff::OnEnd = Box::new(move |tally| {
            let _gauges = gauges;
            let frames = upgrade.then_some(tally.frames);
            let line = || line.unwrap_or_else(RequestLine::unknown);
            serving.ended(req, status, tally.sent, tally.received, frames, line);
        });
        handover.start(self.limits.send_timeout, Some(on_end));
    }

    /// Read the whole request body, or answer why not (`None`).
    async fn hold_body(&self, session: &mut Session, ctx: &mut Req) -> Result<Option<Body>> {
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
                ctx.served_by = "limit";
                // Whatever went wrong, where the next request would start is unknown (a broken
                // chunk, a body cut by a limit or a deadline): the connection is closed after
                // the answer, as nginx does (pingora counts a body that failed to parse as
                // done, so the answer alone would keep it).
                self.fail(session, ctx, &failure.into()).await?;
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

    /// The client the limits count: the address a trusted proxy forwarded, or the peer's.
    fn real_client(&self, session: &Session, ctx: &Req) -> Option<IpAddr> {
        forwarding::real_client(&self.client(ctx), &session.req_header().headers)
    }

    fn client(&self, ctx: &Req) -> forwarding::Client<'_> {
        forwarding::Client {
            ip: ctx.client,
            tls: ctx.tls,
            port: ctx.port,
            trusted: &self.trusted,
        }
    }

    /// What the app learns about the client and how to hand out files: the one rewrite of a
    /// request to the app, on every path. `upgrade`: a WebSocket handshake for the tunnel.
    fn tell_the_app(&self, req: &mut RequestHeader, ctx: &Req, upgrade: bool) {
        req.reserve(forwarding::ADDED_AT_MOST);
        forwarding::request(req, &self.client(ctx), upgrade);
        self.internal.tell_the_app(req);
        if let Some(id) = &ctx.request_id {
            forwarding::X_REQUEST_ID.set(req, id.clone());
        }
    }

    /// The app's answer named a file (`X-Accel-Redirect` / `X-Sendfile`): serve it instead.
    async fn named_file(
        &self,
        session: &mut Session,
        ctx: &mut Req,
        app: ResponseHeader,
    ) -> Result<()> {
        let Some(directive) = self.internal.directive(&app) else {
            return Ok(());
        };
        ctx.served_by = "accel";
        ctx.accel = true;
        self.finish(ctx.tls, ctx.compression.as_deref())
            .named_file(session, &self.internal, app, directive, &ctx.place())
            .await
    }

    /// A route's upstream pool: dispatch by its protocol. `Ok(false)`: pingora's proxy path
    /// takes the request (HTTP, no upgrade, no body to hold, answer not buffered); every other
    /// case is served here, by [`Serving::serve_pool`].
    async fn to_pool(
        &self,
        session: &mut Session,
        ctx: &mut Req,
        pool: &Arc<Pool>,
        websocket: bool,
        request_buffering: bool,
        response_buffering: bool,
    ) -> Result<bool> {
        ctx.pool = Some(pool.clone());
        let upgrade = session.is_upgrade_req();
        let hold = request_buffering && !upgrade && buffering::has_body(session);
        if matches!(pool.protocol, Protocol::Http) && !upgrade && !hold && !response_buffering {
            return Ok(false);
        }
        let serve = self.serve_pool(session, ctx, pool, websocket, hold, response_buffering);
        Box::pin(serve).await
    }

    /// What [`Serving::to_pool`] does not hand to pingora: FastCGI, the relay (a body held or
    /// an answer buffered) and the WebSocket tunnel, with what refuses them. `hold`: the
    /// request body is read whole first.
    async fn serve_pool(
        &self,
        session: &mut Session,
        ctx: &mut Req,
        pool: &Arc<Pool>,
        websocket: bool,
        hold: bool,
        response_buffering: bool,
    ) -> Result<bool> {
        let upgrade = session.is_upgrade_req();
        if let (Protocol::FastCgi(_), true) = (&pool.protocol, upgrade) {
            // FastCGI has no upgrades (nginx would drop `Upgrade` and run PHP, whose answer no
            // WebSocket client can use): say so plainly.
            ctx.served_by = "fastcgi";
            tracing::warn!(route = ctx.route.as_deref().unwrap_or("-"), upstream = %pool.name, "upgrade request on a FastCGI route");
            self.refuse(
                session,
                ctx,
                501,
                "upgrades are not supported by a FastCGI upstream",
            )
            .await?;
            return Ok(true);
        }
        // Only a WebSocket handshake is still an upgrade here (`drop_foreign_upgrade`).
        if upgrade && !websocket {
            ctx.served_by = "router";
            self.refuse(session, ctx, 403, "upgrades are not allowed on this route")
                .await?;
            return Ok(true);
        }
        // The body is read whole before the app is asked, so a slow upload costs the gateway a
        // little memory or disk instead of an app worker.
        let mut held = None;
        if hold {
            match self.hold_body(session, ctx).await? {
                Some(body) => held = Some(body),
                None => return Ok(true),
            }
        }

        let mut req = session.req_header().clone();
        self.tell_the_app(&mut req, ctx, upgrade);
        let finish = self.finish(ctx.tls, ctx.compression.as_deref());
        let buffering = response_buffering.then(|| self.response_buffering());
        let mut picked = Picked::default();
        let attempts = Loop {
            pool,
            client: ctx.client,
            route: ctx.route.as_deref().unwrap_or("-"),
            picked: &mut picked,
        };
        let outcome = match &pool.protocol {
            Protocol::FastCgi(backend) => {
                ctx.served_by = "fastcgi";
                let call = fastcgi::Call {
                    backend,
                    req: &req,
                    tls: ctx.tls,
                    max_body: self.limits.max_body_bytes,
                    body: held.as_ref(),
                    finish,
                    buffering,
                };
                fastcgi::serve(session, attempts, call).await
            }
            Protocol::Http if upgrade => {
                ctx.served_by = "tunnel";
                let _open = self.metrics.open(Open::Tunnel);
                let frames = ctx.frames.insert(Box::default());
                tunnel::run(session, attempts, &req, finish, frames)
                    .await
                    .map(|r| r.map(|()| Answer::Sent))
            }
            Protocol::Http => {
                let call = relay::Call {
                    connector: &self.connector,
                    req,
                    body: held.as_ref(),
                    buffering,
                    internal: &self.internal,
                    finish,
                };
                relay::forward(session, attempts, call).await
            }
        };
        ctx.current = picked.server;
        ctx.upstream_time = picked.answered_in;
        match outcome? {
            Ok(Answer::Sent) => {}
            Ok(Answer::NamesAFile(app)) => self.named_file(session, ctx, *app).await?,
            Err(fault) => self.fail(session, ctx, &fault).await?,
        }
        Ok(true)
    }
}

/// pingora's hooks that need the configuration, each run by [`Gateway`]'s with the
/// request's [`Serving`].
impl Serving {
    async fn request_filter(
        self: &Arc<Self>,
        session: &mut Session,
        ctx: &mut Req,
    ) -> Result<bool> {
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
        ctx.request_id = Some(forwarding::request_id(
            &self.client(ctx),
            &session.req_header().headers,
        ));

        // Limits come first: a client over its rate is refused before any work is done for it.
        let admitted = self.client_limits.admit(
            &self.limits,
            crate::client_limits::Request {
                client: if self.limits.per_client() {
                    self.real_client(session, ctx)
                } else {
                    None
                },
                open_connections: self.metrics.open_connections(),
            },
            Instant::now(),
        );
        match admitted {
            Ok(slot) => ctx._in_progress = slot,
            Err(refusal) => {
                ctx.served_by = "limit";
                self.limited(session, ctx, &refusal).await?;
                return Ok(true);
            }
        }

        let req = session.req_header();
        if header_bytes(req) > self.limits.max_header_bytes {
            ctx.served_by = "limit";
            tracing::warn!(client = ?ctx.client, limit = self.limits.max_header_bytes, "request headers too large");
            self.refuse(session, ctx, 431, "request headers too large")
                .await?;
            return Ok(true);
        }
        if let Some(te) = forwarding::unsupported_transfer_coding(req) {
            // The body cannot be delimited as the client meant it: answer, then close
            // (nginx: 501 "unknown transfer-encoding").
            ctx.served_by = "limit";
            tracing::warn!(client = ?ctx.client, transfer_encoding = %te, "transfer coding not supported");
            session.set_keepalive(None);
            self.refuse(
                session,
                ctx,
                501,
                "transfer coding not supported (only chunked)",
            )
            .await?;
            return Ok(true);
        }
        if let Some(problem) = forwarding::malformed_head(req) {
            ctx.served_by = "limit";
            tracing::warn!(client = ?ctx.client, problem, "malformed request head");
            session.set_keepalive(None);
            self.refuse(session, ctx, 400, problem).await?;
            return Ok(true);
        }
        if forwarding::drop_foreign_upgrade(session.req_header_mut()) {
            tracing::info!(client = ?ctx.client, path = %session.req_header().uri.path(), "upgrade to something other than websocket: served as a plain request");
        }
        let req = session.req_header();
        if let Some(len) = req
            .headers
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
        {
            if len > self.limits.max_body_bytes {
                ctx.served_by = "limit";
                let fault = ClientFailure::TooLarge(self.limits.max_body_bytes).into();
                self.fail(session, ctx, &fault).await?;
                return Ok(true);
            }
        }
        let Some(path) = crate::router::normalize(req.uri.path()) else {
            ctx.served_by = "router";
            tracing::warn!(client = ?ctx.client, path = %req.uri.path(), "path climbs above the root");
            self.refuse(session, ctx, 400, "bad path").await?;
            return Ok(true);
        };
        if self.internal.hides(&path) {
            // Only the app hands these files out (X-Accel-Redirect), whatever route matches.
            ctx.served_by = "router";
            tracing::warn!(client = ?ctx.client, path = %req.uri.path(), "request from outside for an internal location");
            self.refuse(session, ctx, 404, "no route for this path")
                .await?;
            return Ok(true);
        }
        let host = host_of(req);
        let Some(route) = self.router.find(host.as_deref(), &path) else {
            ctx.served_by = "router";
            self.refuse(session, ctx, 404, "no route for this path")
                .await?;
            return Ok(true);
        };
        ctx.route = Some(route.name.clone());
        ctx.route_index = Some(route.index);

        match &route.target {
            Target::Realtime(service, kind) => {
                Box::pin(self.realtime(session, ctx, route.index, service, *kind)).await
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
                if let Some(files) = files {
                    // PHP source is never a static file when php-fpm is behind.
                    let php = pool
                        .as_ref()
                        .is_some_and(|p| matches!(p.protocol, Protocol::FastCgi(_)))
                        && fastcgi::is_php_path(session.req_header().uri.path());
                    if !php {
                        ctx.served_by = "static";
                        let finish = self.finish(ctx.tls, ctx.compression.as_deref());
                        let place = ctx.place();
                        if Box::pin(finish.static_file(session, files, &place)).await? {
                            return Ok(true);
                        }
                        ctx.served_by = "upstream";
                    }
                }
                let Some(pool) = pool else {
                    ctx.served_by = "static";
                    self.refuse(session, ctx, 404, "no such file").await?;
                    return Ok(true);
                };
                self.to_pool(
                    session,
                    ctx,
                    pool,
                    *websocket,
                    *request_buffering,
                    *response_buffering,
                )
                .await
            }
        }
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream_request: &mut RequestHeader,
        ctx: &mut Req,
    ) -> Result<()> {
        // pingora's hop-by-hop pass has already taken `Connection` off; the fields it names
        // still go (those that may, see `forwarding`), as on every other path.
        if let Some(listed) = session.req_header().headers.get(http::header::CONNECTION) {
            upstream_request.insert_header(http::header::CONNECTION, listed.clone())?;
        }
        self.tell_the_app(upstream_request, ctx, false);
        Ok(())
    }

    async fn response_filter(
        &self,
        session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut Req,
    ) -> Result<()> {
        if crate::accel::names_a_file(upstream_response) {
            // The whole answer (the file, or a 404) is written here. pingora then finds a
            // response already sent and skips the app's head (H2 silently; H1 with a warning,
            // silenced in main.rs), and `response_body_filter` drops the app's body.
            let app = upstream_response.clone();
            return Box::pin(self.named_file(session, ctx, app)).await;
        }
        if let (None, Some(at)) = (ctx.upstream_time, ctx.upstream_started) {
            ctx.upstream_time = Some(at.elapsed());
        }
        // Called again for the final header after a 1xx, which decides afresh.
        let finish = self.finish(ctx.tls, ctx.compression.as_deref());
        ctx.out = finish.head(
            session.req_header(),
            session.is_http2(),
            upstream_response,
            Origin::App,
            false,
        )?;
        Ok(())
    }

    async fn fail_to_proxy(&self, session: &mut Session, e: &Error, ctx: &mut Req) -> FailToProxy {
        let fault = match ctx.fault.take() {
            Some(fault) => fault,
            None => Fault::from_error(e, ctx.server()),
        };
        let _ = self.fail(session, ctx, &fault).await;
        FailToProxy {
            error_code: fault.status(),
            can_reuse_downstream: false,
        }
    }

    async fn logging(&self, session: &mut Session, _e: Option<&Error>, ctx: &mut Req) {
        crate::header_deadline::request_done(session);
        if ctx.handed_off {
            // Its connection left pingora (the session holds a stand-in without a request
            // head): it is counted and logged when it ends ([`Serving::hand_off`]).
            return;
        }
        // Every request ends here, whatever answered it: the one place it is counted and
        // logged.
        let status = session
            .response_written()
            .map(|r| r.status.as_u16())
            .unwrap_or(0);
        let frames = ctx.frames.take().filter(|_| status == 101);
        let sent = session.body_bytes_sent() as u64;
        let received = session.body_bytes_read().max(ctx.body_bytes as usize) as u64;
        self.ended(ctx.ending(), status, sent, received, frames, || {
            RequestLine::of(session.req_header())
        });
    }

    /// A request is over: count it, and log it with its request `line` (asked for only when
    /// there is an access log).
    fn ended(
        &self,
        ctx: Ending,
        status: u16,
        bytes_sent: u64,
        bytes_received: u64,
        websocket: Option<Box<Frames>>,
        line: impl FnOnce() -> RequestLine,
    ) {
        let duration = ctx.started.map(|s| s.elapsed()).unwrap_or_default();
        let by_pool = ctx.current.is_some();
        self.routes.request(
            ctx.route_index,
            status,
            by_pool,
            duration,
            ctx.upstream_time,
        );
        let Some(log) = &self.access_log else {
            return;
        };
        let RequestLine {
            method,
            uri,
            version,
            host,
            referer,
            user_agent,
        } = line();
        log.log(Entry {
            time: std::time::SystemTime::now(),
            client: ctx.client,
            method,
            uri,
            version,
            host,
            status,
            bytes_sent,
            bytes_received,
            referer,
            user_agent,
            request_id: ctx.request_id,
            route: ctx.route,
            by: ctx.served_by,
            upstream: ctx.pool.map(|p| (p, ctx.current)),
            duration,
            upstream_duration: ctx.upstream_time,
            tls: ctx.tls,
            websocket,
        });
    }
}

#[async_trait]
impl ProxyHttp for Gateway {
    type CTX = Ctx;

    fn new_ctx(&self) -> Ctx {
        Ctx {
            serving: self.current.load_full(),
            req: Req {
                started: Some(Instant::now()),
                served_by: "upstream",
                ..Req::default()
            },
        }
    }

    /// No downstream modules. pingora's default adds its response compression module,
    /// disabled, which still costs every request a module context, its allocations and a
    /// call in each response filter; the gateway compresses with its own encoder
    /// (`compression`, which says why), so the module would never do anything here.
    fn init_downstream_modules(&self, _modules: &mut pingora::modules::http::HttpModules) {}

    async fn early_request_filter(&self, session: &mut Session, _ctx: &mut Ctx) -> Result<()> {
        // The first hook pingora calls once its parser has the whole head.
        crate::header_deadline::head_parsed(session);
        if self.draining.on() {
            // pingora then answers `Connection: close` and does not read another request.
            session.set_keepalive(None);
        }
        Ok(())
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut Ctx) -> Result<bool> {
        ctx.serving.request_filter(session, &mut ctx.req).await
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
            let max = ctx.serving.limits.max_body_bytes;
            let ctx = &mut ctx.req;
            ctx.body_bytes += b.len() as u64;
            if ctx.body_bytes > max {
                ctx.fault = Some(ClientFailure::TooLarge(max).into());
                return Error::e_explain(ErrorType::HTTPStatus(413), "request body too large");
            }
        }
        Ok(())
    }

    async fn upstream_peer(&self, _session: &mut Session, ctx: &mut Ctx) -> Result<Box<HttpPeer>> {
        let ctx = &mut ctx.req;
        let Some(pool) = ctx.pool.as_ref() else {
            return Error::e_explain(ErrorType::HTTPStatus(502), "no upstream for this route");
        };
        // The same pick as every other path's ([`crate::attempt::Loop`]).
        let Some(i) = pool.select(ctx.client, ctx.tries.tried()) else {
            ctx.fault = Some(Failure::NoHealthyServer.into());
            return Error::e_explain(ErrorType::HTTPStatus(503), "no healthy server");
        };
        ctx.current = Some(i);
        ctx.in_flight = Some(pool.begin(i));
        ctx.upstream_started.get_or_insert_with(Instant::now);
        let addr = &pool.servers[i].addr;
        match addr.http_peer(pool.timeouts()) {
            Ok(peer) => Ok(Box::new(peer)),
            Err(e) => {
                ctx.fault = Some(Failure::from_error(addr, &e).into());
                Err(e)
            }
        }
    }

    fn fail_to_connect(
        &self,
        _session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut Ctx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        let ctx = &mut ctx.req;
        if let (Some(pool), Some(i)) = (&ctx.pool, ctx.current) {
            ctx.in_flight = None;
            // Nothing was sent yet: the attempt loop's rule decides where the request goes.
            let failure = Failure::from_error(&pool.servers[i].addr, &e);
            let route = ctx.route.as_deref().unwrap_or("-");
            let retry = ctx.tries.not_sent(pool, i, &failure, route);
            e.set_retry(retry);
        }
        e
    }

    fn error_while_proxy(
        &self,
        peer: &HttpPeer,
        session: &mut Session,
        e: Box<Error>,
        ctx: &mut Ctx,
        client_reused: bool,
    ) -> Box<Error> {
        let ctx = &mut ctx.req;
        let mut e = e.more_context(format!("Peer: {peer}"));
        // pingora's own judgement of a kept connection that the app had closed: an error it
        // marks as such on a reused connection, for a request it can send again (idempotent,
        // its body still in the retry buffer). Whether it is sent again is the attempt loop's
        // rule, as on every path.
        e.retry.decide_reuse(client_reused);
        let again = session.req_header().method.is_idempotent()
            && !session.as_ref().retry_buffer_truncated();
        let stale = client_reused && again && e.retry();
        let retry = match (&ctx.pool, ctx.current) {
            (Some(pool), Some(i)) if stale => ctx.tries.stale(pool, i),
            _ => false,
        };
        e.set_retry(retry);
        e
    }

    /// The copy of the client's head pingora makes for the app has room for what
    /// [`Serving::tell_the_app`] adds, so adding it grows nothing (its `reserve` then finds the
    /// room there).
    fn upstream_request_headers_added(&self) -> usize {
        forwarding::ADDED_AT_MOST
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream_request: &mut RequestHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        let req = &mut ctx.req;
        ctx.serving
            .upstream_request_filter(session, upstream_request, req)
            .await
    }

    async fn response_filter(
        &self,
        session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        let req = &mut ctx.req;
        ctx.serving
            .response_filter(session, upstream_response, req)
            .await
    }

    fn response_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut Ctx,
    ) -> Result<Option<Duration>> {
        let ctx = &mut ctx.req;
        if ctx.accel {
            *body = None;
            return Ok(None);
        }
        // Each piece pingora read from the app is flushed to the client as it comes: an app
        // that streams (a progress page, a chunked export) is not held back by the encoder.
        if ctx.out.compressing() {
            let out = ctx.out.piece(body.take(), end_of_stream)?;
            *body = (!out.is_empty() || end_of_stream).then_some(out);
            if end_of_stream {
                ctx.out = Out::default();
            }
        }
        Ok(None)
    }

    async fn fail_to_proxy(&self, session: &mut Session, e: &Error, ctx: &mut Ctx) -> FailToProxy {
        ctx.serving.fail_to_proxy(session, e, &mut ctx.req).await
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut Ctx) {
        ctx.serving.logging(session, e, &mut ctx.req).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A connection that left pingora (a WebSocket, an event stream, a held long-poll) keeps
    /// what its end needs of its request's state until it ends: the whole `Req` before.
    #[test]
    fn a_connection_that_left_keeps_only_what_its_end_needs() {
        let mut req = Req {
            route: Some("live".into()),
            route_index: Some(3),
            client: Some(IpAddr::from([192, 0, 2, 7])),
            tls: true,
            served_by: "realtime",
            started: Some(Instant::now()),
            ..Req::default()
        };
        let end = req.leave();
        assert!(req.handed_off);
        assert_eq!(end.route.as_deref(), Some("live"));
        assert_eq!(end.route_index, Some(3));
        assert_eq!(end.client, Some(IpAddr::from([192, 0, 2, 7])));
        assert!(end.tls && end.started.is_some());
        assert_eq!(end.served_by, "realtime");
        // 200 of 352 bytes here.
        assert!(
            std::mem::size_of::<Ending>() * 3 / 2 <= std::mem::size_of::<Req>(),
            "what a connection keeps: {} of {} bytes",
            std::mem::size_of::<Ending>(),
            std::mem::size_of::<Req>()
        );
    }

    #[test]
    fn uri_len_is_the_length_of_the_written_uri() {
        for uri in [
            "/",
            "/a/b?x=1&y",
            "/?",
            "*",
            "http://example.com",
            "https://example.com:8443/p?q",
            "example.com:443",
            "http://user@h/%2e?",
        ] {
            let parsed: http::Uri = uri.parse().expect("a valid URI");
            assert_eq!(uri_len(&parsed), parsed.to_string().len(), "{uri}");
        }
    }

    /// The size of the future `hook` returns: what is moved into a fresh allocation each time
    /// pingora calls the hook (async_trait boxes every call).
    fn future_size<'a, B: 'a, Fut>(
        _: impl Fn(&'a Arc<Serving>, &'a mut Session, &'a mut B) -> Fut,
    ) -> usize {
        std::mem::size_of::<Fut>()
    }

    /// Every request runs these hooks, and each call moves its whole future (the largest state
    /// of any branch it may take) into a new allocation: the rare branches (static files,
    /// realtime, FastCGI, the relay, the tunnel, error answers) are boxed where they are
    /// taken, so a proxied request does not pay for them. Their futures were 13,640 and
    /// 4,432 bytes, a third of the gateway's memmove per request.
    #[test]
    fn the_per_request_hook_futures_stay_small() {
        let sizes = [
            (
                "request_filter",
                future_size(|s, session, ctx: &mut Req| s.request_filter(session, ctx)),
            ),
            (
                "response_filter",
                future_size(|s, session, ctx: &mut (ResponseHeader, Req)| {
                    s.response_filter(session, &mut ctx.0, &mut ctx.1)
                }),
            ),
            (
                "upstream_request_filter",
                future_size(|s, session, ctx: &mut (RequestHeader, Req)| {
                    s.upstream_request_filter(session, &mut ctx.0, &mut ctx.1)
                }),
            ),
            (
                "logging",
                future_size(|s, session, ctx: &mut Req| s.logging(session, None, ctx)),
            ),
        ];
        for (hook, size) in sizes {
            assert!(size <= 512, "{hook}'s future is {size} bytes");
        }
    }
}
