//! Comet long-poll pub/sub over plain HTTP(S): `GET …/s?t=<topic>` is held until the next
//! message on the topic; `POST …/p?t=<topic>` publishes the request body.
//!
//! A poll that carries the position it has seen (`since=<epoch>:<seq>`) gets every message
//! after it at once, framed by [`encode_batch`], so a client polling in a loop misses nothing
//! published between two polls; when that position cannot be served (evicted from history, or
//! a new epoch after a restart) it gets `409` with the current position: the reset signal. A
//! waiting poll that learns that messages were lost (a live reset, in a fleet) gets the same
//! `409`. A poll without `since` gets the next message as a plain body (the nchan-style shape).
//!
//! In a fleet a publish answers once Redis has numbered it, and `503` with the reason while
//! Redis cannot be reached (the message is not taken: it would reach no other node).
//!
//! A waiting poll is a hub subscriber owned by the request's future: when the client goes
//! away the gateway drops the future, and the subscriber is detached at once.
//!
//! Both ask [`crate::access`] first: the connect callback (when there is one) on every request,
//! the app's word for a private topic before anything of it is read, and the policy before a
//! client publishes (only the app publishes unless the policy opens a topic to clients).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderName, HeaderValue, StatusCode};

use crate::access::{self, Access, ClientInfo};
use crate::hub::{Hub, JoinOutcome, Message, Payload, Position};
use crate::seam::{Request, Response, Service};
use crate::{query, text};

/// nchan and most Comet servers answer an idle poll after about 30 s, safely under the 60 s
/// idle timeouts of proxies and load balancers a poll may cross.
pub const DEFAULT_WAIT: Duration = Duration::from_secs(30);
/// A publish body larger than this is refused with 413: long-poll messages are notifications,
/// not uploads, and anyone may publish here. 64 KiB, as Centrifugo's
/// `websocket_message_size_limit` and our own `/ws` endpoints; nchan is bounded only by nginx's
/// `client_max_body_size` (1 MiB), which let one anonymous POST pin a 1 MiB history entry
/// (the hub's whole per-topic history budget). The app's publish API keeps 1 MiB.
pub const DEFAULT_MAX_MESSAGE: usize = 64 * 1024;
/// Messages one batch answer carries at most; the client polls again (with the last position)
/// for the rest, so a long absence cannot produce an unbounded response.
pub const MAX_BATCH: usize = 1000;

/// This transport's name in authorization log lines.
const TRANSPORT: &str = "longpoll";

#[derive(Debug, Clone)]
pub struct LongPollConfig {
    pub wait: Duration,
    pub max_message: usize,
}

impl Default for LongPollConfig {
    fn default() -> Self {
        LongPollConfig {
            wait: DEFAULT_WAIT,
            max_message: DEFAULT_MAX_MESSAGE,
        }
    }
}

pub struct LongPoll {
    hub: Hub,
    config: LongPollConfig,
    /// Who may poll and publish which topic ([`crate::access`]).
    access: Access,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FramingError {
    #[error("line {0}: expected `<epoch>:<seq> <length>`")]
    Header(usize),
    #[error("line {0}: invalid position")]
    Position(usize),
    #[error("body shorter than its announced length")]
    Truncated,
}

/// A batch: for each message, a header line `<epoch>:<seq> <byte length>\n`, then the body and
/// a `\n`. Length-prefixed so bodies may contain anything, newlines included.
pub fn encode_batch(messages: &[(Position, String)]) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    for (pos, body) in messages {
        // Writing into a `String` cannot fail.
        let _ = writeln!(out, "{pos} {}", body.len());
        out.push_str(body);
        out.push('\n');
    }
    out
}

/// The inverse of [`encode_batch`], for clients and tests.
pub fn decode_batch(mut s: &str) -> Result<Vec<(Position, String)>, FramingError> {
    let mut out = Vec::new();
    let mut line = 1;
    while !s.is_empty() {
        let (head, rest) = s.split_once('\n').ok_or(FramingError::Header(line))?;
        let (pos, len) = head.split_once(' ').ok_or(FramingError::Header(line))?;
        let pos: Position = pos.parse().map_err(|_| FramingError::Position(line))?;
        let len: usize = len.parse().map_err(|_| FramingError::Header(line))?;
        if rest.len() < len + 1 || !rest.is_char_boundary(len) || &rest[len..len + 1] != "\n" {
            return Err(FramingError::Truncated);
        }
        out.push((pos, rest[..len].to_string()));
        line += 1 + rest[..len].matches('\n').count() + 1;
        s = &rest[len + 1..];
    }
    Ok(out)
}

/// `X-Position`, and its two halves `X-Epoch` and `X-Seq`: on every answer with a position.
const X_POSITION: HeaderName = HeaderName::from_static("x-position");
const X_EPOCH: HeaderName = HeaderName::from_static("x-epoch");
const X_SEQ: HeaderName = HeaderName::from_static("x-seq");
const X_TOPIC: HeaderName = HeaderName::from_static("x-topic");

/// The values of `X-Position` (`<epoch>:<seq>`), `X-Epoch` and `X-Seq`, as three views of one
/// buffer the position is written into once. Every delivered poll carries them: written as
/// three strings, each copied again into a value of its own, they were 2.1% of the gateway's
/// CPU per long-poll delivery (issue 17's profile).
fn position_values(pos: Position) -> Option<[HeaderValue; 3]> {
    let text = Bytes::from(pos.to_string());
    let colon = text.iter().position(|&b| b == b':')?;
    let value = |b: Bytes| HeaderValue::from_maybe_shared(b).ok();
    Some([
        value(text.slice(..colon))?,
        value(text.slice(colon + 1..))?,
        value(text)?,
    ])
}

fn with_position(mut resp: Response, topic: &str, pos: Position) -> Response {
    if let Response::Full(r) = &mut resp {
        let h = r.headers_mut();
        if let Some([epoch, seq, position]) = position_values(pos) {
            h.insert(X_POSITION, position);
            h.insert(X_EPOCH, epoch);
            h.insert(X_SEQ, seq);
        }
        if let Ok(t) = HeaderValue::from_str(topic) {
            h.insert(X_TOPIC, t);
        }
        h.insert(
            http::header::CACHE_CONTROL,
            HeaderValue::from_static("no-store"),
        );
    }
    resp
}

/// `409` with the position the client continues from: messages after `since` are lost to it.
fn reset(topic: &str, since: Option<Position>, current: Position) -> Response {
    with_position(
        Response::text(
            StatusCode::CONFLICT,
            format!(
                "reset: messages after {} are no longer available; continue from {current}\n",
                since.map(|p| p.to_string()).unwrap_or_default()
            ),
        ),
        topic,
        current,
    )
}

fn entry(m: &Message) -> (Position, String) {
    (m.position(), text::body(m))
}

impl LongPoll {
    pub fn new(hub: Hub, config: LongPollConfig, access: Access) -> LongPoll {
        LongPoll {
            hub,
            config,
            access,
        }
    }

    async fn subscribe(&self, req: &Request) -> Response {
        let q = req.query();
        let Some(topic) = query::get(q, "t").filter(|t| !t.is_empty()) else {
            return Response::text(StatusCode::BAD_REQUEST, "missing topic: use ?t=<topic>\n");
        };
        // The app's word on the client, then on the topic, before anything of it is read: a
        // refused poll learns nothing (no position, no history, no message).
        let admitted = match self.access.admit_request(req, TRANSPORT).await {
            Ok(admitted) => admitted,
            Err(refusal) => return refusal.response(),
        };
        let who = admitted.who();
        let client = || ClientInfo::from_request(req);
        if let Err(refused) =
            access::admit_subscription(&self.hub, &self.access, &who, client, &topic).await
        {
            return refused.response();
        }
        let since = match query::get(q, "since") {
            None => None,
            Some(s) => match s.parse::<Position>() {
                Ok(p) => Some(p),
                Err(e) => {
                    return Response::text(
                        StatusCode::BAD_REQUEST,
                        format!("invalid since={s:?}: {e}\n"),
                    )
                }
            },
        };
        let sub = match self.hub.subscribe() {
            Ok(s) => s,
            Err(e) => return Response::text(StatusCode::SERVICE_UNAVAILABLE, format!("{e}\n")),
        };
        let joined = match sub.join_async(&topic, since).await {
            Ok(j) => j,
            Err(e) => return Response::text(StatusCode::SERVICE_UNAVAILABLE, format!("{e}\n")),
        };
        let batch = since.is_some();
        match joined {
            JoinOutcome::Reset { current } => {
                tracing::info!(topic = %topic, since = ?since.map(|p| p.to_string()), current = %current, "long-poll reset");
                return reset(&topic, since, current);
            }
            JoinOutcome::Resumed { replay, .. } if !replay.is_empty() => {
                let items: Vec<_> = replay.iter().take(MAX_BATCH).map(|m| entry(m)).collect();
                let last = items.last().map(|(p, _)| *p);
                let resp = Response::text(StatusCode::OK, encode_batch(&items));
                return match last {
                    Some(p) => with_position(resp, &topic, p),
                    None => resp,
                };
            }
            _ => {}
        }
        let current = joined.position();
        let first = match tokio::time::timeout(self.config.wait, sub.recv()).await {
            Err(_) => {
                return with_position(
                    Response::text(StatusCode::NO_CONTENT, Bytes::new()),
                    &topic,
                    current,
                )
            }
            Ok(Err(closed)) => {
                return Response::text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("subscription closed: {}\n", closed.reason),
                )
            }
            // Messages were lost to this node (a fleet's Redis lost them, or they could not be
            // read back after a lost link): the same answer as a resume that cannot be served.
            Ok(Ok(m)) if m.is_reset() => return reset(&topic, m.reset_from, m.position()),
            Ok(Ok(m)) => m,
        };
        if !batch {
            let pos = first.position();
            return with_position(
                Response::text(StatusCode::OK, text::body(&first)),
                &topic,
                pos,
            );
        }
        // Everything else already queued goes in the same answer, up to a reset: the next poll
        // (from the last position) gets the reset.
        let mut items = vec![entry(&first)];
        while items.len() < MAX_BATCH {
            match sub.try_recv() {
                Ok(Some(m)) if !m.is_reset() => items.push(entry(&m)),
                _ => break,
            }
        }
        let last = items.last().map(|(p, _)| *p).unwrap_or(current);
        with_position(
            Response::text(StatusCode::OK, encode_batch(&items)),
            &topic,
            last,
        )
    }

    async fn publish(&self, req: Request) -> Response {
        let Some(topic) = query::get(req.query(), "t").filter(|t| !t.is_empty()) else {
            return Response::text(StatusCode::BAD_REQUEST, "missing topic: use ?t=<topic>\n");
        };
        // Clients publish only where the policy opens a topic to them; the app, through its
        // publish API, anywhere.
        if let Err(refused) =
            access::admit_publish(&self.hub, &self.access, req.client_ip(), &topic)
        {
            return refused.response();
        }
        if let Err(refusal) = self.access.connect_request(&req, TRANSPORT).await {
            return refusal.response();
        }
        let body = match req.body.collect(self.config.max_message).await {
            Ok(b) => b,
            Err(e) => {
                tracing::info!(topic = %topic, error = %e, "long-poll publish refused");
                return Response::text(StatusCode::PAYLOAD_TOO_LARGE, format!("{e}\n"));
            }
        };
        let Ok(text) = String::from_utf8(body.to_vec()) else {
            return Response::text(StatusCode::BAD_REQUEST, "the message must be UTF-8 text\n");
        };
        let payload = Payload::new("message", serde_json::Value::String(text));
        match self.hub.send(&topic, payload, None).await {
            Ok(pos) => with_position(
                Response::text(StatusCode::OK, format!("published {pos}\n")),
                &topic,
                pos,
            ),
            Err(e) => {
                tracing::warn!(topic = %topic, error = %e, "long-poll publish: not published");
                Response::text(StatusCode::SERVICE_UNAVAILABLE, format!("{e}\n"))
            }
        }
    }
}

#[async_trait::async_trait]
impl Service for LongPoll {
    async fn call(&self, req: Request) -> Response {
        let last = req.head.uri.path().rsplit('/').next().unwrap_or("");
        match (last, &req.head.method) {
            ("s", &http::Method::GET) => self.subscribe(&req).await,
            ("p", &http::Method::POST) => self.publish(req).await,
            ("s", _) | ("p", _) => Response::text(
                StatusCode::METHOD_NOT_ALLOWED,
                "use GET …/s?t=<topic> to wait and POST …/p?t=<topic> to publish\n",
            ),
            _ => Response::text(
                StatusCode::NOT_FOUND,
                format!("no such long-poll endpoint: {}\n", req.head.uri.path()),
            ),
        }
    }
}

impl std::fmt::Debug for LongPoll {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LongPoll")
            .field("config", &self.config)
            .finish()
    }
}

/// Shared so several routes (`/s` and `/p`) can mount one service.
pub type SharedLongPoll = Arc<LongPoll>;

#[cfg(test)]
mod tests {
    use super::*;

    fn pos(s: &str) -> Position {
        s.parse().expect("position")
    }

    #[test]
    fn batch_framing_is_exact_and_roundtrips() {
        let p1 = pos("00000000000000ab:1");
        let p2 = pos("00000000000000ab:2");
        let items = vec![(p1, "hello".to_string()), (p2, "two\nlines é".to_string())];
        let wire = encode_batch(&items);
        assert_eq!(wire, format!("{p1} 5\nhello\n{p2} 12\ntwo\nlines é\n"));
        assert_eq!(decode_batch(&wire), Ok(items));
        assert_eq!(decode_batch(""), Ok(vec![]));
    }

    #[test]
    fn broken_batches_are_errors() {
        assert_eq!(decode_batch("x"), Err(FramingError::Header(1)));
        assert_eq!(
            decode_batch("nope 3\nabc\n"),
            Err(FramingError::Position(1))
        );
        let p = pos("00000000000000ab:1");
        assert_eq!(
            decode_batch(&format!("{p} 9\nabc\n")),
            Err(FramingError::Truncated)
        );
        assert_eq!(
            decode_batch(&format!("{p} 2\nabc\n")),
            Err(FramingError::Truncated)
        );
    }

    #[test]
    fn an_answer_carries_its_position_and_its_two_halves() {
        let p = pos("00000000000000ab:42");
        let resp = with_position(Response::text(StatusCode::OK, "m"), "news", p);
        let Response::Full(r) = resp else {
            panic!("a full answer");
        };
        let h = r.headers();
        assert_eq!(h["x-position"], "00000000000000ab:42");
        assert_eq!(h["x-epoch"], "00000000000000ab");
        assert_eq!(h["x-seq"], "42");
        assert_eq!(h["x-topic"], "news");
        assert_eq!(h["cache-control"], "no-store");
        assert_eq!(
            h["x-position"].to_str().ok().map(|v| v.parse()),
            Some(Ok(p))
        );
    }
}
