//! The stub application: one dispatcher that matches paths by hand.
//!
//! A single fallback handler (instead of a router plus middleware layers)
//! keeps the `/ping` hot path to a few comparisons and lets us decide in one
//! place which requests are logged, which take a worker slot, and that every
//! response carries `X-Backend-Id`.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::ws::{close_code, CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{ConnectInfo, FromRequestParts, Request, State};
use axum::http::header::{
    ALLOW, CACHE_CONTROL, CONTENT_LENGTH, CONTENT_TYPE, SEC_WEBSOCKET_PROTOCOL, UPGRADE,
};
use axum::http::request::Parts;
use axum::http::{HeaderName, HeaderValue, Method, StatusCode, Version};
use axum::response::{IntoResponse, Response};
use axum::Router;
use futures_util::{stream, StreamExt};
use sha1::Digest as _;
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};

use crate::reqlog::{HeaderListJson, HeadersJson, RequestLog};

/// Largest body `/bytes/N` will produce.
pub const MAX_BYTES: u64 = 100 * 1024 * 1024;
/// Longest `/sleep/MS` and `/stream` interval, in milliseconds.
pub const MAX_SLEEP_MS: u64 = 600_000;
/// Most ticks `/stream` will send; keeps a typo from streaming for days.
pub const MAX_TICKS: u64 = 1_000_000;

static X_BACKEND_ID: HeaderName = HeaderName::from_static("x-backend-id");
static TEXT_PLAIN: HeaderValue = HeaderValue::from_static("text/plain");

/// Largest body `/body/N` will produce (it is built in memory).
pub const MAX_TEXT_BODY: u64 = 16 * 1024 * 1024;
/// Frame size of a `/body/N?framing=chunked` answer.
const TEXT_FRAME: usize = 4096;

/// Largest request body the stub reads rather than counts: `/publish-demo`'s optional
/// `{"text": ...}` and the authorization callbacks' payloads (413 above).
pub const MAX_KEPT_BODY: usize = 64 * 1024;

/// Where the gateway's publish API is by default (the shipped admin listener).
pub const DEFAULT_PUBLISH_URL: &str = "http://127.0.0.1:9090/publish";

/// Period of the `/bytes` pattern: byte `i` is `i % 251`.
const PATTERN_PERIOD: usize = 251;
/// A whole number of periods, so every chunk cut from the start of
/// `PATTERN` continues the sequence exactly where the previous one ended.
const PATTERN_LEN: usize = PATTERN_PERIOD * 256;
static PATTERN: [u8; PATTERN_LEN] = pattern();

const fn pattern() -> [u8; PATTERN_LEN] {
    let mut bytes = [0u8; PATTERN_LEN];
    let mut i = 0;
    while i < PATTERN_LEN {
        bytes[i] = (i % PATTERN_PERIOD) as u8;
        i += 1;
    }
    bytes
}

/// Startup options that shape the application.
#[derive(Debug, Clone)]
pub struct Config {
    /// Name reported in `X-Backend-Id` and `/echo`.
    pub id: String,
    /// Concurrent request limit (worker slots); `None` means unlimited.
    pub workers: Option<usize>,
    /// Suppress the per-request stderr line (for benchmarks).
    pub quiet: bool,
    /// The gateway's publish API, called by `POST /publish-demo`.
    pub publish_url: String,
}

/// Shared state; cloned per request, so it is a single `Arc`.
#[derive(Clone)]
struct AppState(Arc<Shared>);

struct Shared {
    id: String,
    id_header: HeaderValue,
    workers: Option<Arc<Semaphore>>,
    quiet: bool,
    log: RequestLog,
    publish_url: String,
    /// Announcements published through `/publish-demo` so far.
    published: AtomicU64,
    /// Flips to `true` on SIGTERM/SIGINT; WebSocket sessions watch it to
    /// say goodbye, and `main` waits until every clone is dropped.
    shutdown: watch::Receiver<bool>,
}

/// Builds the application. `shutdown` should flip to `true` when the process
/// starts shutting down.
pub fn router(config: Config, shutdown: watch::Receiver<bool>) -> anyhow::Result<Router> {
    let id_header = HeaderValue::from_str(&config.id)
        .map_err(|_| anyhow::anyhow!("--id {:?} is not a valid header value", config.id))?;
    let shared = Shared {
        id: config.id,
        id_header,
        workers: config.workers.map(|n| Arc::new(Semaphore::new(n))),
        quiet: config.quiet,
        log: RequestLog::new(),
        publish_url: config.publish_url,
        published: AtomicU64::new(0),
        shutdown,
    };
    Ok(Router::new()
        .fallback(handle)
        .with_state(AppState(Arc::new(shared))))
}

/// Entry point for every request: record it, dispatch it, stamp the
/// backend id on the response and log one line.
async fn handle(State(app): State<AppState>, req: Request) -> Response {
    let started = Instant::now();
    let peer = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(addr)| *addr);
    // Both clones are cheap: standard methods are inline and a parsed URI
    // shares the connection's read buffer.
    let method = req.method().clone();
    let uri = req.uri().clone();

    let mut response = match uri.path() {
        // Exempt from the history (it would only record itself) and from
        // worker slots (tests must be able to inspect a saturated backend).
        "/__log" => request_log(&app, &method),
        path => {
            app.0.log.record(&method, &uri, req.headers(), peer);
            if path == "/ping" {
                // Exempt from worker slots: a liveness probe must not queue
                // behind slow requests.
                ping(&method)
            } else {
                with_worker_slot(&app, req, peer).await
            }
        }
    };

    response
        .headers_mut()
        .insert(X_BACKEND_ID.clone(), app.0.id_header.clone());
    if !app.0.quiet {
        tracing::info!(
            "{} {} {} {}us",
            method,
            uri.path(),
            response.status().as_u16(),
            started.elapsed().as_micros()
        );
    }
    response
}

/// Takes a worker slot, reads the whole request body while holding it (so a
/// slow upload occupies a worker, like Puma or php-fpm), then routes.
async fn with_worker_slot(app: &AppState, req: Request, peer: Option<SocketAddr>) -> Response {
    let permit = match &app.0.workers {
        Some(slots) => match slots.clone().acquire_owned().await {
            Ok(permit) => Some(permit),
            // Only possible if the semaphore were closed, which we never do.
            Err(_) => return text(StatusCode::SERVICE_UNAVAILABLE, "no worker slots\n"),
        },
        None => None,
    };

    let (mut parts, body) = req.into_parts();
    let mut body = body.into_data_stream();
    let mut body_len: u64 = 0;
    // Only these look at what was sent; everything else counts it.
    let keep_body = matches!(
        parts.uri.path(),
        "/publish-demo" | "/realtime/auth" | "/broadcasting/auth" | "/realtime/events"
    );
    let mut kept = Vec::new();
    // `/echo` reports a digest, so a test can tell the body arrived intact.
    let mut digest = sha1::Sha1::new();
    while let Some(chunk) = body.next().await {
        match chunk {
            Ok(chunk) => {
                body_len += chunk.len() as u64;
                digest.update(&chunk);
                if keep_body && kept.len() + chunk.len() <= MAX_KEPT_BODY {
                    kept.extend_from_slice(&chunk);
                } else if keep_body {
                    return text(StatusCode::PAYLOAD_TOO_LARGE, "body too large\n");
                }
            }
            Err(err) => {
                return text(
                    StatusCode::BAD_REQUEST,
                    format!("error reading request body: {err}\n"),
                )
            }
        }
    }

    let uri = parts.uri.clone();
    let path = uri.path();
    if path == "/echo" || path.starts_with("/echo/") {
        let sha1 = digest
            .finalize()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>();
        echo(app, &parts, (body_len, &sha1), peer)
    } else if let Some(n) = path.strip_prefix("/bytes/") {
        bytes(n, uri.query().unwrap_or(""), permit)
    } else if let Some(n) = path.strip_prefix("/body/") {
        text_body(n, &uri)
    } else if let Some(code) = path.strip_prefix("/status/") {
        status(code)
    } else if let Some(ms) = path.strip_prefix("/sleep/") {
        sleep(ms).await
    } else if path == "/stream" {
        ticks(uri.query().unwrap_or(""), permit)
    } else if path == "/accel" {
        accel(&uri)
    } else if path == "/publish-demo" {
        publish_demo(app, &parts.method, &kept).await
    } else if path == "/realtime/auth" || path == "/broadcasting/auth" {
        authorize(&parts, &kept).await
    } else if path == "/realtime/events" {
        events(&parts, &kept).await
    } else if path == "/cable" {
        // The slot is released once the handshake answer is produced: like
        // Action Cable's hijacked sockets, an open WebSocket holds no worker.
        cable(app, &mut parts).await
    } else {
        text(StatusCode::NOT_FOUND, format!("not found: {path}\n"))
    }
}

fn text(status: StatusCode, body: impl Into<Body>) -> Response {
    (status, [(CONTENT_TYPE, TEXT_PLAIN.clone())], body.into()).into_response()
}

fn bad_request(message: String) -> Response {
    text(StatusCode::BAD_REQUEST, message + "\n")
}

fn method_not_allowed(allow: &'static str) -> Response {
    let mut response = text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
    response
        .headers_mut()
        .insert(ALLOW, HeaderValue::from_static(allow));
    response
}

/// `GET /ping`: the benchmark target, so it allocates nothing of its own.
fn ping(method: &Method) -> Response {
    if method == Method::GET || method == Method::HEAD {
        text(StatusCode::OK, "PONG. EOM.")
    } else {
        method_not_allowed("GET, HEAD")
    }
}

/// JSON shape of `/echo`.
#[derive(serde::Serialize)]
struct EchoJson<'a> {
    id: &'a str,
    method: &'a str,
    path: &'a str,
    query: &'a str,
    headers: HeadersJson<'a>,
    header_list: HeaderListJson<'a>,
    body_len: u64,
    /// SHA-1 of the body, lower-case hex.
    body_sha1: &'a str,
    peer: Option<SocketAddr>,
    version: &'static str,
}

fn echo(
    app: &AppState,
    parts: &Parts,
    (body_len, body_sha1): (u64, &str),
    peer: Option<SocketAddr>,
) -> Response {
    let view = EchoJson {
        id: &app.0.id,
        method: parts.method.as_str(),
        path: parts.uri.path(),
        query: parts.uri.query().unwrap_or(""),
        headers: HeadersJson(&parts.headers),
        header_list: HeaderListJson(&parts.headers),
        body_len,
        body_sha1,
        peer,
        version: version_str(parts.version),
    };
    json(serde_json::to_vec(&view))
}

fn json(body: serde_json::Result<Vec<u8>>) -> Response {
    match body {
        Ok(body) => (
            StatusCode::OK,
            [(CONTENT_TYPE, HeaderValue::from_static("application/json"))],
            body,
        )
            .into_response(),
        Err(err) => text(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot serialise: {err}\n"),
        ),
    }
}

fn version_str(version: Version) -> &'static str {
    match version {
        Version::HTTP_09 => "HTTP/0.9",
        Version::HTTP_10 => "HTTP/1.0",
        Version::HTTP_11 => "HTTP/1.1",
        Version::HTTP_2 => "HTTP/2.0",
        Version::HTTP_3 => "HTTP/3.0",
        _ => "unknown",
    }
}

/// `POST /publish-demo`: the app publishing to the browser, as a Rails or
/// Laravel controller would: one POST to the gateway's publish API with
/// `{"topic":"announcements","event":"announcement","data":{"text","from"}}`.
/// The text is the request's `{"text": ...}` if it sent one. Answers 202 with
/// the publish API's JSON, or 502 `{"error": ...}` if the gateway refused or
/// could not be reached.
async fn publish_demo(app: &AppState, method: &Method, body: &[u8]) -> Response {
    if method != Method::POST {
        return method_not_allowed("POST");
    }
    let n = app.0.published.fetch_add(1, Ordering::Relaxed) + 1;
    let asked = serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v.get("text").and_then(|t| t.as_str()).map(str::to_owned))
        .map(|t| t.trim().to_owned())
        .filter(|t| !t.is_empty());
    let text = asked.unwrap_or_else(|| format!("Hello from the app ({}, #{n})", app.0.id));
    let message = serde_json::json!({
        "topic": "announcements",
        "event": "announcement",
        "data": {"text": text, "from": app.0.id},
    });
    let error =
        match crate::publish::post_json(&app.0.publish_url, message.to_string().as_bytes()).await {
            Ok((status, answer)) if (200..300).contains(&status) => {
                return (
                    StatusCode::ACCEPTED,
                    [(CONTENT_TYPE, HeaderValue::from_static("application/json"))],
                    answer,
                )
                    .into_response();
            }
            Ok((status, answer)) => format!(
                "the publish API answered {status}: {}",
                String::from_utf8_lossy(&answer).trim()
            ),
            Err(err) => err,
        };
    tracing::warn!("publish-demo failed: {error}");
    let body = serde_json::json!({ "error": error }).to_string();
    (
        StatusCode::BAD_GATEWAY,
        [(CONTENT_TYPE, HeaderValue::from_static("application/json"))],
        body,
    )
        .into_response()
}

/// `POST /realtime/auth` and `POST /broadcasting/auth`: the app's side of the gateway's
/// authorization callbacks (see `auth`).
async fn authorize(parts: &Parts, body: &[u8]) -> Response {
    if parts.method != Method::POST {
        return method_not_allowed("POST");
    }
    let answer = if parts.uri.path() == "/realtime/auth" {
        let answer = crate::auth::connect(&parts.headers, body);
        tracing::info!("realtime/auth: {}", answer.status.as_u16());
        answer
    } else {
        let (answer, channel, socket_id) = crate::auth::channel(&parts.headers, body);
        tracing::info!(
            "broadcasting/auth channel={channel} socket_id={socket_id}: {}",
            answer.status.as_u16()
        );
        answer
    };
    json_answer(answer).await
}

/// An answer to the gateway's callbacks, after its delay.
async fn json_answer(answer: crate::auth::Answer) -> Response {
    if let Some(delay) = answer.delay {
        tokio::time::sleep(delay).await;
    }
    (
        answer.status,
        [(CONTENT_TYPE, HeaderValue::from_static("application/json"))],
        answer.body,
    )
        .into_response()
}

/// `POST /realtime/events`: the app's side of the gateway's events (see `events`).
async fn events(parts: &Parts, body: &[u8]) -> Response {
    if parts.method != Method::POST {
        return method_not_allowed("POST");
    }
    let (answer, event) = crate::events::answer(&parts.headers, body);
    tracing::info!("realtime/events event={event}: {}", answer.status.as_u16());
    json_answer(answer).await
}

/// The body of `/accel`: a front server that honours `X-Accel-Redirect` must never show it.
pub const ACCEL_BODY: &str = "THE APP'S OWN BODY: A FRONT SERVER MUST NEVER SEND THIS\n";

/// `/accel?x-accel-redirect=/protected/a.txt&content-disposition=...`: an app handing a
/// download to its front server, as Rails' `send_file` or Laravel's `download` do behind
/// nginx. Every query pair becomes a response header (the value URL-decoded once, so a test
/// can send any raw value, `%2e%2e` included); the answer also sets a cookie and
/// `Cache-Control: private` (unless the query gives them), and carries [`ACCEL_BODY`].
fn accel(uri: &axum::http::Uri) -> Response {
    let pairs = match axum::extract::Query::<Vec<(String, String)>>::try_from_uri(uri) {
        Ok(q) => q.0,
        Err(err) => return bad_request(format!("bad query: {err}")),
    };
    let mut response = text(StatusCode::OK, ACCEL_BODY);
    let headers = response.headers_mut();
    headers.insert(
        axum::http::header::SET_COOKIE,
        HeaderValue::from_static("download=granted; Path=/; HttpOnly"),
    );
    headers.insert(
        CACHE_CONTROL,
        HeaderValue::from_static("private, max-age=60"),
    );
    let mut seen: Vec<HeaderName> = Vec::new();
    for (name, value) in pairs {
        let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_bytes(value.as_bytes()),
        ) else {
            return bad_request(format!("not a header: {name}: {value:?}"));
        };
        // The first value given replaces the default; later ones are appended.
        if !seen.contains(&name) {
            headers.remove(&name);
            seen.push(name.clone());
        }
        headers.append(name, value);
    }
    response
}

/// `/bytes/N`: N bytes of the `i % 251` pattern, streamed from a static
/// buffer so even 100 MiB costs no allocation. The worker slot is held
/// until the last byte has been handed to the connection, as a Puma worker
/// writing to a slow client would be. `?content_type=T` replaces the
/// `application/octet-stream` type and `?x_accel_buffering=V` adds that
/// header (what an app sends to keep its answer out of proxy buffers).
fn bytes(n: &str, query: &str, permit: Option<OwnedSemaphorePermit>) -> Response {
    let len: u64 = match n.parse() {
        Ok(len) if len <= MAX_BYTES => len,
        Ok(_) => return bad_request(format!("at most {MAX_BYTES} bytes")),
        Err(_) => return bad_request(format!("invalid byte count: {n:?}")),
    };
    let mut content_type = HeaderValue::from_static("application/octet-stream");
    let mut accel = None;
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let value = match HeaderValue::from_str(&value.replace("%2F", "/").replace("%2f", "/")) {
            Ok(v) => v,
            Err(_) => return bad_request(format!("{key}: not a header value: {value:?}")),
        };
        match key {
            "content_type" => content_type = value,
            "x_accel_buffering" => accel = Some(value),
            _ => {}
        }
    }
    let chunks = stream::unfold((len, permit), |(remaining, permit)| async move {
        if remaining == 0 {
            return None;
        }
        let take = remaining.min(PATTERN_LEN as u64) as usize;
        let chunk = Bytes::from_static(&PATTERN[..take]);
        Some((
            Ok::<_, Infallible>(chunk),
            (remaining - take as u64, permit),
        ))
    });
    // A streamed body has no size hint, so state the length explicitly;
    // hyper then frames with Content-Length instead of chunked encoding.
    let mut response = (
        StatusCode::OK,
        [
            (CONTENT_TYPE, content_type),
            (CONTENT_LENGTH, HeaderValue::from(len)),
        ],
        Body::from_stream(chunks),
    )
        .into_response();
    if let Some(v) = accel {
        response
            .headers_mut()
            .insert(HeaderName::from_static("x-accel-buffering"), v);
    }
    response
}

/// The body of `/body/N`: numbered lines of text (compressible, but not a single repeated
/// byte), cut to exactly `len` bytes.
pub fn text_of(len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 64);
    let mut line = 0u64;
    while out.len() < len {
        line += 1;
        out.extend_from_slice(
            format!(
                "{line:06} the quick brown fox jumps over the lazy dog {}\n",
                line * 7919 % 1000
            )
            .as_bytes(),
        );
    }
    out.truncate(len);
    out
}

/// `/body/N?type=T&header=Name:%20Value&framing=chunked`: N bytes of [`text_of`] with the
/// given `Content-Type` (default `text/plain; charset=utf-8`) and extra headers (repeatable:
/// `Cache-Control: no-transform`, `Content-Encoding: gzip`, `ETag: "v1"`, ...), framed with
/// `Content-Length` or, with `framing=chunked`, streamed in 4 KiB frames of unknown length.
/// What a proxy in front may or may not compress.
fn text_body(n: &str, uri: &axum::http::Uri) -> Response {
    let len: u64 = match n.parse() {
        Ok(len) if len <= MAX_TEXT_BODY => len,
        Ok(_) => return bad_request(format!("at most {MAX_TEXT_BODY} bytes")),
        Err(_) => return bad_request(format!("invalid byte count: {n:?}")),
    };
    let query = match axum::extract::Query::<Vec<(String, String)>>::try_from_uri(uri) {
        Ok(axum::extract::Query(q)) => q,
        Err(e) => return bad_request(format!("bad query: {e}")),
    };
    let mut content_type = HeaderValue::from_static("text/plain; charset=utf-8");
    let mut extra = Vec::new();
    let mut chunked = false;
    for (key, value) in query {
        match key.as_str() {
            "type" => match HeaderValue::from_str(&value) {
                Ok(v) => content_type = v,
                Err(_) => return bad_request(format!("invalid type: {value:?}")),
            },
            "header" => {
                let parsed = value.split_once(':').and_then(|(k, v)| {
                    Some((
                        HeaderName::from_bytes(k.trim().as_bytes()).ok()?,
                        HeaderValue::from_str(v.trim()).ok()?,
                    ))
                });
                match parsed {
                    Some(pair) => extra.push(pair),
                    None => {
                        return bad_request(format!("header must be Name: Value, got {value:?}"))
                    }
                }
            }
            "framing" => match value.as_str() {
                "length" => chunked = false,
                "chunked" => chunked = true,
                _ => {
                    return bad_request(format!("framing must be length or chunked, got {value:?}"))
                }
            },
            _ => {}
        }
    }
    // Bounded by MAX_TEXT_BODY above.
    let body = Bytes::from(text_of(len as usize));
    let mut response = if chunked {
        let frames: Vec<Result<Bytes, Infallible>> = (0..body.len())
            .step_by(TEXT_FRAME)
            .map(|at| Ok(body.slice(at..(at + TEXT_FRAME).min(body.len()))))
            .collect();
        Body::from_stream(stream::iter(frames)).into_response()
    } else {
        body.into_response()
    };
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, content_type);
    for (name, value) in extra {
        headers.append(name, value);
    }
    response
}

/// `/status/N`: any final status 200..=599, body `status N\n` (empty for
/// 204 and 304).
fn status(code: &str) -> Response {
    match code.parse::<u16>() {
        // 204 and 304 must not carry a body (or, for 204, a Content-Length
        // that would promise one), so those two answer empty.
        Ok(n @ (204 | 304)) => match StatusCode::from_u16(n) {
            Ok(status) => status.into_response(),
            Err(_) => bad_request(format!("invalid status: {code:?}")),
        },
        Ok(n @ 200..=599) => match StatusCode::from_u16(n) {
            Ok(status) => text(status, format!("status {n}\n")),
            Err(_) => bad_request(format!("invalid status: {code:?}")),
        },
        _ => bad_request(format!(
            "invalid status: {code:?} (want 200..=599; 1xx is not a final status)"
        )),
    }
}

/// `/sleep/MS`: a slow backend. Holds its worker slot while sleeping.
async fn sleep(ms: &str) -> Response {
    match ms.parse::<u64>() {
        Ok(ms) if ms <= MAX_SLEEP_MS => {
            tokio::time::sleep(Duration::from_millis(ms)).await;
            text(StatusCode::OK, format!("slept {ms}\n"))
        }
        Ok(_) => bad_request(format!("at most {MAX_SLEEP_MS} ms")),
        Err(_) => bad_request(format!("invalid milliseconds: {ms:?}")),
    }
}

/// Parameters of `/stream`.
struct TickParams {
    n: u64,
    interval: Duration,
    sse: bool,
}

fn parse_tick_params(query: &str) -> Result<TickParams, String> {
    let mut params = TickParams {
        n: 5,
        interval: Duration::from_millis(100),
        sse: true,
    };
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        match key {
            "n" => match value.parse() {
                Ok(n) if n <= MAX_TICKS => params.n = n,
                _ => return Err(format!("n must be 0..={MAX_TICKS}, got {value:?}")),
            },
            "interval_ms" => match value.parse() {
                Ok(ms) if ms <= MAX_SLEEP_MS => params.interval = Duration::from_millis(ms),
                _ => {
                    return Err(format!(
                        "interval_ms must be 0..={MAX_SLEEP_MS}, got {value:?}"
                    ))
                }
            },
            "format" => match value {
                "sse" => params.sse = true,
                "chunked" => params.sse = false,
                _ => return Err(format!("format must be sse or chunked, got {value:?}")),
            },
            _ => {}
        }
    }
    Ok(params)
}

/// `/stream`: `n` ticks, the first at once and then one per interval, each
/// yielded as its own body frame so hyper writes (and flushes) it as soon as
/// it exists. Holds the worker slot until the stream ends.
fn ticks(query: &str, permit: Option<OwnedSemaphorePermit>) -> Response {
    let TickParams { n, interval, sse } = match parse_tick_params(query) {
        Ok(params) => params,
        Err(message) => return bad_request(message),
    };
    let frames = stream::unfold((1u64, permit), move |(i, permit)| async move {
        if i > n {
            return None;
        }
        if i > 1 {
            tokio::time::sleep(interval).await;
        }
        let frame = if sse {
            format!("data: tick {i}\n\n")
        } else {
            format!("tick {i}\n")
        };
        Some((Ok::<_, Infallible>(Bytes::from(frame)), (i + 1, permit)))
    });
    let body = Body::from_stream(frames);
    if sse {
        (
            [
                (CONTENT_TYPE, HeaderValue::from_static("text/event-stream")),
                (CACHE_CONTROL, HeaderValue::from_static("no-cache")),
            ],
            body,
        )
            .into_response()
    } else {
        ([(CONTENT_TYPE, TEXT_PLAIN.clone())], body).into_response()
    }
}

/// `/cable`: WebSocket echo standing in for Action Cable.
async fn cable(app: &AppState, parts: &mut Parts) -> Response {
    // Action Cable clients offer e.g. `actioncable-v1-json,
    // actioncable-unsupported` and expect the first. axum only exposes the
    // offers as a sorted set, so read the header in order ourselves.
    let first_offer = parts
        .headers
        .get(SEC_WEBSOCKET_PROTOCOL)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(',').map(str::trim).find(|p| !p.is_empty()))
        .map(str::to_owned);

    let upgrade = match WebSocketUpgrade::from_request_parts(parts, &()).await {
        Ok(upgrade) => upgrade,
        Err(rejection) => {
            let mut response = text(
                StatusCode::UPGRADE_REQUIRED,
                format!("websocket upgrade required: {rejection}\n"),
            );
            response
                .headers_mut()
                .insert(UPGRADE, HeaderValue::from_static("websocket"));
            return response;
        }
    };
    let upgrade = match first_offer {
        Some(protocol) => upgrade.protocols([protocol]),
        None => upgrade,
    };
    let shutdown = app.0.shutdown.clone();
    upgrade.on_upgrade(move |socket| echo_socket(socket, shutdown))
}

/// Echoes text and binary messages. Pings are answered and the closing
/// handshake is completed by tungstenite itself, provided we keep reading:
/// after the client's Close we loop once more so the queued reply is flushed.
async fn echo_socket(mut socket: WebSocket, mut shutdown: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            message = socket.recv() => match message {
                Some(Ok(message @ (Message::Text(_) | Message::Binary(_)))) => {
                    if socket.send(message).await.is_err() {
                        return;
                    }
                }
                Some(Ok(_)) => {}
                Some(Err(_)) | None => return,
            },
            () = stopping(&mut shutdown) => {
                let goodbye = CloseFrame {
                    code: close_code::AWAY,
                    reason: "server shutting down".into(),
                };
                let _ = socket.send(Message::Close(Some(goodbye))).await;
                return;
            }
        }
    }
}

/// Resolves once shutdown has begun (or its sender is gone). Drops the
/// watch guard before returning, which keeps the session future `Send`.
async fn stopping(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stopping| *stopping).await;
}

/// `/__log`: GET the history, DELETE to clear it.
fn request_log(app: &AppState, method: &Method) -> Response {
    match *method {
        Method::GET => json(app.0.log.to_json()),
        Method::DELETE => {
            app.0.log.clear();
            StatusCode::NO_CONTENT.into_response()
        }
        _ => method_not_allowed("GET, DELETE"),
    }
}
