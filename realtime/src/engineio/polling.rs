//! HTTP long-polling: the `GET` that waits for packets and the `POST` that brings them.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderValue, StatusCode};
use tokio::time::{sleep_until, Instant};

use super::session::{Claim, Inbound, PollAnswer, Session};
use super::{decode_payload, CloseReason, EngineError};
use crate::seam::{BodyError, Request, Response};

/// While an upgrade is under way a poll is ended with `noop` after at most this long, so that
/// the client pauses polling and sends `5` promptly (node's `check` timer, 100 ms).
pub(super) const UPGRADE_NOOP_INTERVAL: Duration = Duration::from_millis(100);

/// node: polling answers are text, and explicitly UTF-8 for pages that are not.
const PAYLOAD_CONTENT_TYPE: &str = "text/plain; charset=UTF-8";
/// node answers POSTs as `text/html` to avoid a download dialog on some user agents (GH-43).
const POST_CONTENT_TYPE: &str = "text/html";

/// A held poll: answered with whatever is queued for the client, as soon as there is some.
pub(super) async fn get(session: Arc<Session>, req: &Request) -> Response {
    match session.claim_get() {
        Claim::Claimed => {}
        Claim::Overlap => {
            // node: the session dies and the pending poll is answered `close`.
            session.close(CloseReason::TransportError("overlap from client".into()));
            return empty(StatusCode::BAD_REQUEST);
        }
        Claim::Gone => return error_response(&EngineError::UnknownSid),
    }
    // Frees the slot even when the gateway drops this future (client gone); whatever was
    // queued stays queued for the next poll.
    let _slot = Slot(&session, Session::release_get);
    let mut seen: u64;
    let mut rx = session.outgoing.lock().await;
    let mut queue_open = true;
    let mut noop_at: Option<Instant> = None;
    loop {
        seen = session.changes_now();
        let noop_due = noop_at.is_some_and(|at| at <= Instant::now());
        if let Some(answer) = session.take_for_poll(&mut rx, noop_due) {
            return match answer {
                PollAnswer::Payload(body) => payload_response(req, body),
                PollAnswer::Gone => error_response(&EngineError::UnknownSid),
                PollAnswer::Upgraded => error_response(&EngineError::BadRequest),
            };
        }
        noop_at = session.next_noop_tick(UPGRADE_NOOP_INTERVAL);
        tokio::select! {
            () = session.changed(&mut seen) => {}
            frame = rx.recv(), if queue_open => match frame {
                Some(frame) => session.push_message(frame),
                None => queue_open = false,
            },
            () = sleep_until(noop_at.unwrap_or_else(Instant::now)), if noop_at.is_some() => {}
        }
    }
}

/// Packets from the client. The body is refused as soon as it passes `maxPayload`.
pub(super) async fn post(session: Arc<Session>, req: Request) -> Response {
    match session.claim_post() {
        Claim::Claimed => {}
        Claim::Overlap => {
            session.close(CloseReason::TransportError(
                "data request overlap from client".into(),
            ));
            return empty(StatusCode::BAD_REQUEST);
        }
        Claim::Gone => return error_response(&EngineError::UnknownSid),
    }
    let _slot = Slot(&session, Session::release_post);
    // EIO 4 sends binary as base64 text only; node closes on a binary body.
    if req.header("content-type") == Some("application/octet-stream") {
        session.close(CloseReason::TransportError("invalid content".into()));
        return empty(StatusCode::BAD_REQUEST);
    }
    let user_agent = req.header("user-agent").map(str::to_owned);
    let body = tokio::select! {
        body = req.body.collect(session.config.max_payload) => body,
        // Closed meanwhile (a second POST, a ping timeout): node destroys this request.
        () = session.wait_closed() => return empty(StatusCode::BAD_REQUEST),
    };
    let body = match body {
        Ok(body) => body,
        Err(BodyError::TooLarge { .. }) => {
            // node answers 413 and keeps the session. The rest of the body is not read, so
            // the connection cannot be reused.
            let mut resp = bare(StatusCode::PAYLOAD_TOO_LARGE);
            resp.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
            return Response::Full(resp);
        }
        Err(BodyError::Aborted(_)) => {
            session.close(CloseReason::TransportError(
                "data request connection closed prematurely".into(),
            ));
            return empty(StatusCode::BAD_REQUEST);
        }
    };
    let packets = match decode_payload(&body) {
        Ok(packets) => packets,
        Err(e) => {
            session.close(CloseReason::ParseError(e.to_string()));
            return empty(StatusCode::BAD_REQUEST);
        }
    };
    for packet in packets {
        match session.on_packet(packet) {
            Inbound::Deliver(frame) => {
                if !session.deliver(frame).await {
                    break;
                }
            }
            Inbound::Ignore => {}
            Inbound::Stop => break,
        }
    }
    let mut resp = http::Response::new(Bytes::from_static(b"ok"));
    let headers = resp.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(POST_CONTENT_TYPE),
    );
    common_headers(headers, user_agent.as_deref());
    Response::Full(resp)
}

/// Runs `release` on the session when dropped: the request's slot is free again.
struct Slot<'a>(&'a Session, fn(&Session));

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        (self.1)(self.0);
    }
}

/// `200` with a polling payload (also the handshake's `open`).
pub(super) fn payload_response(req: &Request, body: String) -> Response {
    let mut resp = http::Response::new(Bytes::from(body));
    let headers = resp.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(PAYLOAD_CONTENT_TYPE),
    );
    common_headers(headers, req.header("user-agent"));
    Response::Full(resp)
}

/// The headers node's polling transport puts on every answer.
fn common_headers(headers: &mut http::HeaderMap, user_agent: Option<&str>) {
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    // node: prevents XSS warnings on old Internet Explorer.
    if user_agent.is_some_and(|ua| ua.contains(";MSIE") || ua.contains("Trident/")) {
        headers.insert("x-xss-protection", HeaderValue::from_static("0"));
    }
}

/// A bare status, as node's `res.writeHead(n).end()`.
pub(super) fn empty(status: StatusCode) -> Response {
    Response::Full(bare(status))
}

fn bare(status: StatusCode) -> http::Response<Bytes> {
    let mut resp = http::Response::new(Bytes::new());
    *resp.status_mut() = status;
    resp
}

/// node's `abortRequest`: `{"code":N,"message":"…"}` as JSON.
pub(super) fn error_response(error: &EngineError) -> Response {
    let mut resp = Response::full(error.http_status(), "application/json", error.json_body());
    if let (EngineError::TooManySessions { .. }, Response::Full(r)) = (error, &mut resp) {
        // Sessions end within a heartbeat (45 s at node's timings); a client that retries
        // sooner than this only meets the cap again.
        r.headers_mut().insert(
            http::header::RETRY_AFTER,
            http::HeaderValue::from_static(SESSION_RETRY_AFTER),
        );
    }
    resp
}

/// `Retry-After` of a handshake refused by a session cap, in seconds.
pub(super) const SESSION_RETRY_AFTER: &str = "10";
