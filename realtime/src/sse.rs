//! Server-Sent Events: `GET …?topic=a&topic=b` streams every message of those topics as
//! `text/event-stream`, each event with its topic as `event:` and its position as `id:`.
//!
//! Browsers resend the last `id` they saw as `Last-Event-ID` when they reconnect (a query
//! parameter `lastEventId` works too, for clients that cannot set headers), and the stream
//! resumes exactly after it. With one topic the id is the position, `<epoch>:<seq>`; with
//! several it must carry every topic's position, so it is [`encode_ids`]' list of
//! `<topic>@<epoch>:<seq>`. When a position cannot be served an `event: reset` says so, with
//! the position the stream continues from: never a silent gap. In a fleet a resume position
//! this node's history cannot serve is served from the fleet's (Redis), and messages the node
//! lost while it was cut off from Redis are an `event: reset` in the live stream.
//!
//! Reserved topics (`sio:`, `ws:`) are refused with 403, overlong names with 400 and new
//! topics beyond the client's budget with 429 ([`crate::topics`]); a topic the policy makes
//! private needs the app's word, and with a connect callback every stream needs it too
//! ([`crate::access`]): 401/403 with the app's reason. Data lines are split on CR,
//! LF and CRLF alike ([`encode_event`]), so a published message cannot add fields.
//!
//! A stream is one tab of each presence topic it follows ([`crate::access::presence`]), as the
//! member the app's answer (or the connect answer) names, for as long as it is open. It gets
//! the topic's members once what it resumes is replayed, as `event: presence:subscribed` with
//! `data: {"topic", "members": [{"user_id", "user_info"}, ...]}`, then the news as
//! `event: presence:joining` / `presence:leaving` with `data: {"topic", "member"}` (and an
//! `id:` like any message); not its own.

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use http::StatusCode;
use percent_encoding::{percent_decode_str, utf8_percent_encode, AsciiSet, CONTROLS};

use crate::access::presence::{self, members_json};
use crate::access::{self, Access, ClientInfo};
use crate::hub::{Hub, JoinOutcome, Message, Position};
use crate::seam::{Request, Response, Service};
use crate::{query, text};

/// Comment lines keep proxies and browsers from timing the stream out; 15 s is what most SSE
/// servers use, well under common 60 s idle timeouts.
pub const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(15);
/// The `retry:` hint: how long a browser waits before reconnecting (its default is ~3 s).
pub const DEFAULT_RETRY: Duration = Duration::from_secs(2);
/// Topics one stream may follow.
pub const MAX_TOPICS: usize = 32;

#[derive(Debug, Clone)]
pub struct SseConfig {
    pub heartbeat: Duration,
    pub retry: Duration,
}

impl Default for SseConfig {
    fn default() -> Self {
        SseConfig {
            heartbeat: DEFAULT_HEARTBEAT,
            retry: DEFAULT_RETRY,
        }
    }
}

pub struct Sse {
    hub: Hub,
    config: SseConfig,
    /// Who may follow which topic ([`crate::access`]).
    access: Access,
}

/// This transport's name in authorization log lines.
const TRANSPORT: &str = "sse";

/// Characters that would break the id list: its separators, and `%` itself.
const ID_SET: &AsciiSet = &CONTROLS.add(b',').add(b'@').add(b'%').add(b' ');

/// The event id for a set of topic positions.
pub fn encode_ids(positions: &BTreeMap<String, Position>) -> String {
    if positions.len() == 1 {
        if let Some(p) = positions.values().next() {
            return p.to_string();
        }
    }
    positions
        .iter()
        .map(|(t, p)| format!("{}@{p}", utf8_percent_encode(t, ID_SET)))
        .collect::<Vec<_>>()
        .join(",")
}

/// Positions from a `Last-Event-ID` for the requested `topics`. A bare position applies to a
/// single-topic stream; unknown or malformed parts are ignored (the topic then starts live).
pub fn decode_ids(id: &str, topics: &[String]) -> BTreeMap<String, Position> {
    let mut out = BTreeMap::new();
    let id = id.trim();
    if !id.contains('@') {
        if let (Ok(p), [only]) = (id.parse::<Position>(), topics) {
            out.insert(only.clone(), p);
        }
        return out;
    }
    for part in id.split(',') {
        let Some((t, p)) = part.rsplit_once('@') else {
            continue;
        };
        let t = percent_decode_str(t).decode_utf8_lossy().into_owned();
        if let (true, Ok(p)) = (topics.contains(&t), p.parse::<Position>()) {
            out.insert(t, p);
        }
    }
    out
}

/// The lines of `s` as an EventSource parser sees them: CRLF, a lone CR and a lone LF each end
/// a line (WHATWG HTML, "Interpreting an event stream"). Splitting on `\n` alone let a CR
/// inside a published message start a new field (`id:`, `event:`, `retry:`) in every
/// subscriber's stream.
pub fn event_lines(s: &str) -> impl Iterator<Item = &str> {
    let mut rest = Some(s);
    std::iter::from_fn(move || {
        let s = rest?;
        match s.find(['\r', '\n']) {
            None => {
                rest = None;
                Some(s)
            }
            Some(i) => {
                let skip = if s[i..].starts_with("\r\n") { 2 } else { 1 };
                rest = Some(&s[i + skip..]);
                Some(&s[..i])
            }
        }
    })
}

/// One event in wire form. Every line of `data` (CR, LF and CRLF all end a line, as they do
/// for EventSource) becomes its own `data:` line, so no payload can add a field or end the
/// event early; the browser joins the lines with `\n`. The event name and id cannot contain a
/// line end either.
pub fn encode_event(id: Option<&str>, event: &str, data: &str) -> String {
    let mut out = String::with_capacity(data.len() + event.len() + 32);
    if let Some(id) = id {
        out.push_str("id: ");
        out.push_str(&id.replace(['\n', '\r'], " "));
        out.push('\n');
    }
    out.push_str("event: ");
    out.push_str(&event.replace(['\n', '\r'], " "));
    out.push('\n');
    for line in event_lines(data) {
        out.push_str("data: ");
        out.push_str(line);
        out.push('\n');
    }
    out.push('\n');
    out
}

/// `event: reset` for `topic`: messages after `since` are lost; the stream continues after
/// `position`. No `id:`, so the browser's `Last-Event-ID` stays the last message's.
fn reset_event(topic: &str, since: Option<Position>, position: Position) -> String {
    let data = serde_json::json!({
        "topic": topic,
        "since": since.map(|p| p.to_string()),
        "position": position.to_string(),
    });
    encode_event(None, "reset", &data.to_string())
}

/// One stream's events, produced as the connection's writer asks for them: no task or
/// channel of its own, so a message wakes only the task that writes it out. Dropped with the
/// stream (the client went away): its subscription and its presence go at once.
struct Events {
    sub: crate::hub::Subscriber,
    /// The position of each topic, for the `id:` of the next event.
    positions: BTreeMap<String, Position>,
    /// Member of its presence topics until the stream ends, however it ends.
    _stays: Vec<presence::Stay>,
    /// What goes first: `retry:`, resets, the replay, the member lists.
    first: Option<String>,
    /// Started after the first chunk, so it does not tick at once.
    tick: Option<tokio::time::Interval>,
    heartbeat: Duration,
    /// The hub closed the subscription and its `close` event went out.
    ended: bool,
}

impl Events {
    /// The next chunk of the stream; `None` once it has ended.
    async fn next(&mut self) -> Option<Bytes> {
        if let Some(first) = self.first.take() {
            return Some(Bytes::from(first));
        }
        if self.ended {
            return None;
        }
        let heartbeat = self.heartbeat;
        let tick = self.tick.get_or_insert_with(|| {
            tokio::time::interval_at(tokio::time::Instant::now() + heartbeat, heartbeat)
        });
        let tab = self.sub.id();
        loop {
            let chunk = tokio::select! {
                m = self.sub.recv() => match m {
                    Ok(m) => emit(&mut self.positions, tab, &m),
                    Err(closed) => {
                        self.ended = true;
                        let data = serde_json::json!({"reason": closed.reason.to_string()});
                        encode_event(None, "close", &data.to_string())
                    }
                },
                _ = tick.tick() => ": keep-alive\n\n".to_string(),
            };
            if !chunk.is_empty() {
                return Some(Bytes::from(chunk));
            }
        }
    }
}

/// The event for `m` on the stream of tab `tab`, whose topics are at `positions` (empty:
/// nothing to send, the tab's own presence news).
fn emit(
    positions: &mut BTreeMap<String, Position>,
    tab: crate::hub::SubscriberId,
    m: &Message,
) -> String {
    positions.insert(m.topic.to_string(), m.position());
    if m.is_reset() {
        // Messages were lost to this node (see `Message::reset_from`): said as a reset on
        // resume is, and the stream goes on from the new position.
        return reset_event(&m.topic, m.reset_from, m.position());
    }
    let id = encode_ids(positions);
    if presence::is_presence_event(m.event()) {
        if presence::is_own_news(m, tab) {
            return String::new();
        }
        let data = serde_json::json!({"topic": &*m.topic, "member": m.data()});
        return encode_event(Some(&id), m.event(), &data.to_string());
    }
    encode_event(Some(&id), &m.topic, &text::body(m))
}

impl Sse {
    pub fn new(hub: Hub, config: SseConfig, access: Access) -> Sse {
        Sse {
            hub,
            config,
            access,
        }
    }
}

#[async_trait::async_trait]
impl Service for Sse {
    async fn call(&self, req: Request) -> Response {
        if req.head.method != http::Method::GET {
            return Response::text(StatusCode::METHOD_NOT_ALLOWED, "use GET\n");
        }
        let mut topics = query::all(req.query(), "topic");
        topics.retain(|t| !t.is_empty());
        topics.sort();
        topics.dedup();
        if topics.is_empty() {
            return Response::text(
                StatusCode::BAD_REQUEST,
                "missing topic: use ?topic=<name> (repeat for several)\n",
            );
        }
        if topics.len() > MAX_TOPICS {
            return Response::text(
                StatusCode::BAD_REQUEST,
                format!("at most {MAX_TOPICS} topics per stream\n"),
            );
        }
        // The app's word on the client, then on each topic; reserved (another transport's),
        // too long, or one new topic too many: the whole stream is refused before anything is
        // subscribed, so a refused client learns nothing of any topic it named.
        let admitted = match self.access.admit_request(&req, TRANSPORT).await {
            Ok(admitted) => admitted,
            Err(refusal) => return refusal.response(),
        };
        let who = admitted.who();
        let mut grants = Vec::with_capacity(topics.len());
        for t in &topics {
            let client = || ClientInfo::from_request(&req);
            match access::admit_subscription(&self.hub, &self.access, &who, client, t).await {
                Ok(grant) => grants.push(grant),
                Err(refused) => return refused.response(),
            }
        }
        let last_id = req
            .header("last-event-id")
            .map(str::to_string)
            .or_else(|| query::get(req.query(), "lastEventId"));
        let since = last_id
            .as_deref()
            .map(|id| decode_ids(id, &topics))
            .unwrap_or_default();

        let sub = match self.hub.subscribe() {
            Ok(s) => s,
            Err(e) => return Response::text(StatusCode::SERVICE_UNAVAILABLE, format!("{e}\n")),
        };
        let mut positions = BTreeMap::new();
        let mut first = format!("retry: {}\n\n", self.config.retry.as_millis());
        let mut replay: Vec<std::sync::Arc<Message>> = Vec::new();
        for t in &topics {
            match sub.join_async(t, since.get(t).copied()).await {
                Ok(JoinOutcome::Reset { current }) => {
                    positions.insert(t.clone(), current);
                    first.push_str(&reset_event(t, since.get(t).copied(), current));
                }
                Ok(joined) => {
                    positions.insert(t.clone(), joined.position());
                    replay.extend(joined.replay().iter().cloned());
                    if let JoinOutcome::Resumed { replay, .. } = &joined {
                        if let Some(m) = replay.first() {
                            // Replayed events must carry the positions as they were then.
                            positions.insert(t.clone(), Position::new(m.epoch, m.seq - 1));
                        }
                    }
                }
                Err(e) => return Response::text(StatusCode::SERVICE_UNAVAILABLE, format!("{e}\n")),
            }
        }
        // The stream is one tab of each presence topic; the member lists follow the replay, so
        // nothing older than a list comes after it.
        let presence = self.access.presence();
        let mut lists = String::new();
        let mut stays = Vec::new();
        for (t, grant) in topics.iter().zip(&grants) {
            if !presence::is_presence(t) {
                continue;
            }
            let member = grant.member_for(&admitted.identity);
            let listed = presence.enter(&self.hub, t, sub.id(), member.as_ref(), |members| {
                let data = serde_json::json!({"topic": t, "members": members_json(members)});
                lists.push_str(&encode_event(None, presence::SUBSCRIBED, &data.to_string()));
                Ok::<(), std::convert::Infallible>(())
            });
            if listed.is_ok() && member.is_some() {
                stays.push(presence.stay(&self.hub, t, sub.id()));
            }
        }
        let mut events = Events {
            sub,
            positions,
            _stays: stays,
            first: None,
            tick: None,
            heartbeat: self.config.heartbeat,
            ended: false,
        };
        let tab = events.sub.id();
        for m in &replay {
            first.push_str(&emit(&mut events.positions, tab, m));
        }
        first.push_str(&lists);
        events.first = Some(first);
        let head = http::Response::builder()
            .status(StatusCode::OK)
            .header("content-type", "text/event-stream; charset=utf-8")
            .header("cache-control", "no-cache, no-transform")
            // nginx in front of us (or as a peer) must not buffer the stream.
            .header("x-accel-buffering", "no")
            .body(())
            .map(|r| r.into_parts().0);
        match head {
            Ok(head) => Response::Stream {
                head,
                body: Box::pin(futures_util::stream::unfold(
                    events,
                    |mut events| async move {
                        let chunk = events.next().await?;
                        Some((chunk, events))
                    },
                )),
            },
            Err(_) => Response::text(StatusCode::INTERNAL_SERVER_ERROR, "no head\n"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stream is produced as its writer asks (no task of its own): the `retry:` first, then
    /// each message, a heartbeat when nothing happened for `heartbeat`, and dropping it
    /// (the client went away) unsubscribes at once.
    #[tokio::test(start_paused = true)]
    async fn a_stream_yields_messages_and_heartbeats_and_unsubscribes_when_dropped() {
        use futures_util::StreamExt;
        let hub = Hub::default();
        let sse = Sse::new(
            hub.clone(),
            SseConfig {
                heartbeat: Duration::from_secs(15),
                retry: Duration::from_secs(2),
            },
            Access::open(),
        );
        let head = http::Request::get("/events?topic=news")
            .body(())
            .expect("request")
            .into_parts()
            .0;
        let Response::Stream { head, mut body } = sse.call(Request::new(head)).await else {
            panic!("a stream");
        };
        assert_eq!(head.status, StatusCode::OK);
        assert_eq!(body.next().await.expect("first"), "retry: 2000\n\n");
        assert_eq!(hub.topic_info("news").map(|i| i.subscribers), Some(1));

        hub.publish("news", "", serde_json::json!("hello"), None)
            .expect("publish");
        let event = body.next().await.expect("event");
        let event = std::str::from_utf8(&event).expect("utf-8");
        assert!(
            event.starts_with("id: ") && event.ends_with("data: hello\n\n"),
            "{event:?}"
        );

        let started = tokio::time::Instant::now();
        assert_eq!(body.next().await.expect("heartbeat"), ": keep-alive\n\n");
        assert_eq!(started.elapsed(), Duration::from_secs(15));

        drop(body);
        assert_eq!(hub.topic_info("news").map(|i| i.subscribers), Some(0));
    }

    fn pos(s: &str) -> Position {
        s.parse().expect("position")
    }

    #[test]
    fn events_are_framed_line_by_line() {
        assert_eq!(
            encode_event(Some("00000000000000ab:3"), "news", "a\nb"),
            "id: 00000000000000ab:3\nevent: news\ndata: a\ndata: b\n\n"
        );
        assert_eq!(
            encode_event(None, "reset", "{}"),
            "event: reset\ndata: {}\n\n"
        );
    }

    #[test]
    fn a_carriage_return_in_data_is_a_line_end_not_a_new_field() {
        // The attack: a publisher's CR would have EventSource read `id:`, `event:` and
        // `retry:` fields of the attacker's choosing.
        assert_eq!(
            encode_event(Some("0:1"), "chat", "hi\rid: 9\revent: reset\rretry: 86400000"),
            "id: 0:1\nevent: chat\ndata: hi\ndata: id: 9\ndata: event: reset\ndata: retry: 86400000\n\n"
        );
        assert_eq!(
            encode_event(None, "e", "a\r\nb\n\rc\r\r"),
            "event: e\ndata: a\ndata: b\ndata: \ndata: c\ndata: \ndata: \n\n"
        );
        assert_eq!(encode_event(None, "e", ""), "event: e\ndata: \n\n");
        assert_eq!(
            encode_event(Some("1\r2"), "a\rb\nc", "x"),
            "id: 1 2\nevent: a b c\ndata: x\n\n"
        );
    }

    #[test]
    fn event_lines_split_like_eventsource() {
        let v: Vec<&str> = event_lines("a\r\nb\rc\nd").collect();
        assert_eq!(v, ["a", "b", "c", "d"]);
        let v: Vec<&str> = event_lines("\r\n").collect();
        assert_eq!(v, ["", ""]);
        let v: Vec<&str> = event_lines("").collect();
        assert_eq!(v, [""]);
    }

    /// Splits a wire event the way EventSource does and checks that it is one event whose
    /// fields are exactly the ones we wrote: id/event first, then only `data:` lines.
    fn check_wire(wire: &str, id: Option<&str>, data: &str) {
        let body = wire
            .strip_suffix("\n\n")
            .expect("an event ends with a blank line");
        let lines: Vec<&str> = event_lines(body).collect();
        let mut i = 0;
        if id.is_some() {
            assert!(lines[i].starts_with("id: "), "{wire:?}");
            i += 1;
        }
        assert!(lines[i].starts_with("event: "), "{wire:?}");
        i += 1;
        let mut got = Vec::new();
        for line in &lines[i..] {
            let Some(d) = line.strip_prefix("data: ") else {
                panic!("line {line:?} of {wire:?} is not a data line");
            };
            got.push(d);
        }
        // What the browser hands to `onmessage`: the data lines joined with LF.
        let want: Vec<&str> = event_lines(data).collect();
        assert_eq!(got, want, "{wire:?}");
    }

    proptest::proptest! {
        #[test]
        fn no_payload_can_add_a_field_or_end_the_event(
            data in "(\\PC|[\r\n]|\r\n|id: |event: |retry: |\r\r|\n\n)*",
            event in "\\PC{0,8}[\r\n]?\\PC{0,8}",
            with_id in proptest::bool::ANY,
        ) {
            let id = with_id.then_some("00000000000000ab:3");
            let wire = encode_event(id, &event, &data);
            check_wire(&wire, id, &data);
        }
    }

    #[test]
    fn ids_roundtrip_for_one_and_many_topics() {
        let p = pos("00000000000000ab:3");
        let q = pos("00000000000000cd:9");
        let one: BTreeMap<_, _> = [("a".to_string(), p)].into();
        assert_eq!(encode_ids(&one), "00000000000000ab:3");
        assert_eq!(decode_ids("00000000000000ab:3", &["a".to_string()]), one);
        let many: BTreeMap<_, _> = [("a,b".to_string(), p), ("c@d".to_string(), q)].into();
        let id = encode_ids(&many);
        assert_eq!(id, "a%2Cb@00000000000000ab:3,c%40d@00000000000000cd:9");
        assert_eq!(
            decode_ids(&id, &["a,b".to_string(), "c@d".to_string()]),
            many
        );
        // Unknown topics and junk are ignored rather than refused.
        assert!(decode_ids("zz@1:1,junk", &["a".to_string()]).is_empty());
        assert!(decode_ids("00000000000000ab:3", &["a".into(), "b".into()]).is_empty());
    }
}
