//! The server driven through the seam with plain values (no network), on paused tokio time:
//! every row of the reference table, the heartbeat, the upgrade, closes, shutdown and leaks.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{HeaderMap, Method, StatusCode};
use tokio::io::DuplexStream;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use super::*;
use crate::seam::{Body, Request, Response, Service};

type ClientWs = WebSocketStream<DuplexStream>;

const PING_INTERVAL: Duration = DEFAULT_PING_INTERVAL;
const PING_TIMEOUT: Duration = DEFAULT_PING_TIMEOUT;
/// Longer than any reaction the server has to a packet, shorter than any of its timers.
const SHORT: Duration = Duration::from_millis(10);

/// Hands every new connection to the test.
struct Collect(mpsc::UnboundedSender<Conn>);

impl ConnHandler for Collect {
    fn on_connection(&self, conn: Conn) -> ConnWork {
        let _ = self.0.send(conn);
        ConnWork::one(Box::pin(std::future::ready(())))
    }
}

struct Harness {
    server: Arc<EngineServer>,
    conns: mpsc::UnboundedReceiver<Conn>,
}

fn request(method: Method, query: &str, body: Body) -> Request {
    let (head, ()) = http::Request::builder()
        .method(method)
        .uri(format!("/engine.io/?{query}"))
        .body(())
        .expect("valid request")
        .into_parts();
    Request {
        head,
        peer: None,
        client: None,
        local: None,
        secure: false,
        body,
    }
}

fn ws_request(query: &str) -> Request {
    let mut req = request(Method::GET, query, Body::empty());
    let headers = &mut req.head.headers;
    headers.insert("upgrade", "websocket".parse().unwrap());
    headers.insert("connection", "Upgrade".parse().unwrap());
    headers.insert("sec-websocket-version", "13".parse().unwrap());
    headers.insert(
        "sec-websocket-key",
        "dGhlIHNhbXBsZSBub25jZQ==".parse().unwrap(),
    );
    req
}

fn polling(sid: &str) -> String {
    format!("EIO=4&transport=polling&sid={sid}")
}

struct Full {
    status: StatusCode,
    headers: HeaderMap,
    body: String,
}

fn full(resp: Response) -> Full {
    match resp {
        Response::Full(r) => {
            let (parts, body) = r.into_parts();
            Full {
                status: parts.status,
                headers: parts.headers,
                body: String::from_utf8(body.to_vec()).expect("utf-8 body"),
            }
        }
        _ => panic!("expected a full response"),
    }
}

fn error_code(f: &Full) -> u64 {
    assert_eq!(f.headers["content-type"], "application/json");
    let v: serde_json::Value = serde_json::from_str(&f.body).expect("json error body");
    v["code"].as_u64().expect("numeric code")
}

/// Lets every spawned task run until it waits.
async fn settle() {
    for _ in 0..20 {
        tokio::task::yield_now().await;
    }
}

impl Harness {
    fn new(config: EngineConfig) -> Harness {
        let (tx, conns) = mpsc::unbounded_channel();
        Harness {
            server: Arc::new(EngineServer::new(config, Arc::new(Collect(tx)))),
            conns,
        }
    }

    fn default() -> Harness {
        Harness::new(EngineConfig::default())
    }

    async fn call(&self, req: Request) -> Response {
        self.server.call(req).await
    }

    async fn get(&self, sid: &str) -> Full {
        full(
            self.call(request(Method::GET, &polling(sid), Body::empty()))
                .await,
        )
    }

    /// A poll left waiting in its own task, as the gateway runs it.
    fn spawn_get(&self, sid: &str) -> JoinHandle<Full> {
        let server = self.server.clone();
        let req = request(Method::GET, &polling(sid), Body::empty());
        tokio::spawn(async move { full(server.call(req).await) })
    }

    async fn post(&self, sid: &str, body: &str) -> Full {
        let body = Body::from_bytes(Bytes::from(body.to_owned()));
        full(self.call(request(Method::POST, &polling(sid), body)).await)
    }

    async fn open_polling(&mut self) -> (String, Conn) {
        let f = full(
            self.call(request(
                Method::GET,
                "EIO=4&transport=polling",
                Body::empty(),
            ))
            .await,
        );
        assert_eq!(f.status, StatusCode::OK, "{}", f.body);
        let open: Handshake = serde_json::from_str(&f.body[1..]).expect("open packet");
        let conn = self.conns.try_recv().expect("connection handed over");
        assert_eq!(&*conn.sid, open.sid);
        (open.sid, conn)
    }

    async fn websocket(&self, query: &str) -> ClientWs {
        let Response::Upgrade { head, on_upgrade } = self.call(ws_request(query)).await else {
            panic!("expected an upgrade");
        };
        assert_eq!(head.status, StatusCode::SWITCHING_PROTOCOLS);
        let (client, server) = tokio::io::duplex(64 * 1024);
        tokio::spawn(on_upgrade(Box::new(server)));
        WebSocketStream::from_raw_socket(client, Role::Client, None).await
    }

    async fn open_websocket(&mut self) -> (ClientWs, String, Conn) {
        let mut ws = self.websocket("EIO=4&transport=websocket").await;
        let open = next_text(&mut ws).await;
        let open: Handshake = serde_json::from_str(&open[1..]).expect("open packet");
        assert!(open.upgrades.is_empty());
        let conn = self.conns.recv().await.expect("connection handed over");
        assert_eq!(&*conn.sid, open.sid);
        (ws, open.sid, conn)
    }
}

async fn next_msg(ws: &mut ClientWs) -> Message {
    match tokio::time::timeout(Duration::from_secs(120), ws.next()).await {
        Ok(Some(Ok(msg))) => msg,
        other => panic!("no message: {other:?}"),
    }
}

async fn next_text(ws: &mut ClientWs) -> String {
    match next_msg(ws).await {
        Message::Text(t) => t.to_string(),
        other => panic!("expected text, got {other:?}"),
    }
}

/// Reads until the server's close frame and returns its code.
async fn close_code(ws: &mut ClientWs) -> Option<CloseCode> {
    loop {
        match tokio::time::timeout(Duration::from_secs(120), ws.next()).await {
            Ok(Some(Ok(Message::Close(frame)))) => return frame.map(|f| f.code),
            Ok(Some(Ok(_))) => continue,
            other => panic!("no close frame: {other:?}"),
        }
    }
}

async fn send_text(ws: &mut ClientWs, text: &str) {
    ws.send(Message::text(text)).await.expect("sent");
}

// ---------------------------------------------------------------------------------------------
// Handshake and request errors

#[tokio::test(start_paused = true)]
async fn polling_handshake_is_node_exact() {
    let mut h = Harness::default();
    let f = full(
        h.call(request(
            Method::GET,
            "EIO=4&transport=polling&t=abc",
            Body::empty(),
        ))
        .await,
    );
    assert_eq!(f.status, StatusCode::OK);
    assert_eq!(f.headers["content-type"], "text/plain; charset=UTF-8");
    assert_eq!(f.headers["cache-control"], "no-store");
    assert!(f.headers.get("access-control-allow-origin").is_none());
    assert!(f.body.starts_with('0'));
    let v: serde_json::Value = serde_json::from_str(&f.body[1..]).unwrap();
    let mut keys: Vec<_> = v.as_object().unwrap().keys().cloned().collect();
    keys.sort();
    assert_eq!(
        keys,
        [
            "maxPayload",
            "pingInterval",
            "pingTimeout",
            "sid",
            "upgrades"
        ]
    );
    assert_eq!(v["upgrades"], serde_json::json!(["websocket"]));
    assert_eq!(v["pingInterval"], 25000);
    assert_eq!(v["pingTimeout"], 20000);
    assert_eq!(v["maxPayload"], 1_000_000);
    let sid = v["sid"].as_str().unwrap();
    assert!(sid.len() >= 20, "{sid}");
    assert!(sid
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
    let conn = h.conns.try_recv().unwrap();
    assert_eq!(&*conn.sid, sid);
    assert_eq!(conn.info.transport, Transport::Polling);
    assert_eq!(conn.info.query, "EIO=4&transport=polling&t=abc");
    // sids are distinct
    let (other, _c) = h.open_polling().await;
    assert_ne!(other, sid);
    assert_eq!(h.server.session_count(), 2);
}

/// In a fleet every sid names its node, and the session works under it like any other.
#[tokio::test(start_paused = true)]
async fn a_fleet_node_tags_its_sids() {
    let tag = node_tag("gw-a");
    let mut h = Harness::new(EngineConfig {
        sid_tag: Some(tag.clone()),
        ..EngineConfig::default()
    });
    let (sid, _conn) = h.open_polling().await;
    assert_eq!(sid_owner(&sid), Some(tag.as_str()), "{sid}");
    assert_eq!(sid.len(), NODE_TAG_LEN + 1 + 22, "{sid}");
    assert_eq!(h.post(&sid, "4hi").await.body, "ok");
    // Another node's sid is unknown here, as any unknown sid.
    let theirs = tagged_sid(&node_tag("gw-b"), &sid[NODE_TAG_LEN + 1..]);
    let f = h.get(&theirs).await;
    assert_eq!(f.status, StatusCode::BAD_REQUEST);
    assert_eq!(f.body, r#"{"code":1,"message":"Session ID unknown"}"#);
}

#[tokio::test(start_paused = true)]
async fn upgrades_follow_the_config() {
    let mut h = Harness::new(EngineConfig {
        allow_upgrades: false,
        ..EngineConfig::default()
    });
    let f = full(
        h.call(request(
            Method::GET,
            "EIO=4&transport=polling",
            Body::empty(),
        ))
        .await,
    );
    let open: Handshake = serde_json::from_str(&f.body[1..]).unwrap();
    assert!(open.upgrades.is_empty());
    // and a probe is refused
    let mut ws = h
        .websocket(&format!("EIO=4&transport=websocket&sid={}", open.sid))
        .await;
    assert_eq!(close_code(&mut ws).await, None);
    let _ = h.conns.try_recv();
}

#[tokio::test(start_paused = true)]
async fn bad_requests_get_node_codes() {
    let h = Harness::default();
    let cases = [
        (Method::GET, "transport=polling", 5),
        (Method::GET, "EIO=abc&transport=polling", 5),
        (Method::GET, "EIO=3&transport=polling", 5),
        (Method::GET, "EIO=4", 0),
        (Method::GET, "EIO=4&transport=abc", 0),
        (Method::POST, "EIO=4&transport=polling", 2),
        (Method::PUT, "EIO=4&transport=polling", 2),
        (Method::OPTIONS, "EIO=4&transport=polling", 2),
        (Method::GET, "EIO=4&transport=websocket", 3),
        (Method::GET, "EIO=4&transport=polling&sid=nope", 1),
        (Method::POST, "EIO=4&transport=polling&sid=nope", 1),
        (Method::GET, "EIO=4&transport=polling&j=0", 3),
    ];
    for (method, query, code) in cases {
        let f = full(h.call(request(method.clone(), query, Body::empty())).await);
        assert_eq!(f.status, StatusCode::BAD_REQUEST, "{method} {query}");
        assert_eq!(error_code(&f), code, "{method} {query}: {}", f.body);
    }
    let f = full(h.call(request(Method::GET, "EIO=4", Body::empty())).await);
    assert_eq!(f.body, r#"{"code":0,"message":"Transport unknown"}"#);
    assert_eq!(h.server.session_count(), 0);
}

#[tokio::test(start_paused = true)]
async fn other_methods_on_a_session_get_500() {
    let mut h = Harness::default();
    let (sid, _conn) = h.open_polling().await;
    let f = full(
        h.call(request(Method::PUT, &polling(&sid), Body::empty()))
            .await,
    );
    assert_eq!(f.status, StatusCode::INTERNAL_SERVER_ERROR);
}

#[tokio::test(start_paused = true)]
async fn refused_websocket_handshakes_are_bare_400s() {
    let h = Harness::default();
    for (query, message) in [
        ("transport=websocket", "Unsupported protocol version"),
        ("EIO=4&transport=abc", "Transport unknown"),
        ("EIO=4&transport=websocket&sid=nope", "Session ID unknown"),
    ] {
        let f = full(h.call(ws_request(query)).await);
        assert_eq!(f.status, StatusCode::BAD_REQUEST, "{query}");
        assert_eq!(f.headers["content-type"], "text/html");
        assert_eq!(f.body, message);
    }
}

#[tokio::test(start_paused = true)]
async fn allow_request_refuses_handshakes_only() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    let allow: AllowRequest = Arc::new(move |req: &HandshakeRequest<'_>| {
        log.lock().unwrap().push(req.transport);
        match req.header("x-token") {
            Some("good") => Ok(()),
            Some(_) => Err("bad token".to_owned()),
            None => Err(String::new()),
        }
    });
    let mut h = Harness::new(EngineConfig {
        allow_request: Some(allow),
        ..EngineConfig::default()
    });
    let f = full(
        h.call(request(
            Method::GET,
            "EIO=4&transport=polling",
            Body::empty(),
        ))
        .await,
    );
    assert_eq!(f.status, StatusCode::FORBIDDEN);
    assert_eq!(f.body, r#"{"code":4,"message":"Forbidden"}"#);
    let mut req = request(Method::GET, "EIO=4&transport=polling", Body::empty());
    req.head.headers.insert("x-token", "nope".parse().unwrap());
    let f = full(h.call(req).await);
    assert_eq!(f.status, StatusCode::FORBIDDEN);
    assert_eq!(f.body, r#"{"code":4,"message":"bad token"}"#);
    // WebSocket handshake: 403 with the message
    let f = full(h.call(ws_request("EIO=4&transport=websocket")).await);
    assert_eq!(f.status, StatusCode::FORBIDDEN);
    assert_eq!(f.body, "Forbidden");
    // allowed, and not asked again for the session's later requests
    let mut req = request(Method::GET, "EIO=4&transport=polling", Body::empty());
    req.head.headers.insert("x-token", "good".parse().unwrap());
    let f = full(h.call(req).await);
    assert_eq!(f.status, StatusCode::OK);
    let sid: Handshake = serde_json::from_str(&f.body[1..]).unwrap();
    let _conn = h.conns.try_recv().unwrap();
    assert_eq!(h.post(&sid.sid, "4x").await.status, StatusCode::OK);
    assert_eq!(
        *seen.lock().unwrap(),
        [
            Transport::Polling,
            Transport::Polling,
            Transport::WebSocket,
            Transport::Polling
        ]
    );
}

// ---------------------------------------------------------------------------------------------
// Polling

#[tokio::test(start_paused = true)]
async fn post_delivers_and_get_returns_queued_messages() {
    let mut h = Harness::default();
    let (sid, mut conn) = h.open_polling().await;
    let f = h.post(&sid, "4hello\u{1e}4wérld\u{1e}bAQID").await;
    assert_eq!(f.status, StatusCode::OK);
    assert_eq!(f.body, "ok");
    assert_eq!(f.headers["content-type"], "text/html");
    assert_eq!(f.headers["cache-control"], "no-store");
    assert_eq!(
        conn.incoming.recv().await,
        Some(Frame::Text("hello".into()))
    );
    assert_eq!(
        conn.incoming.recv().await,
        Some(Frame::Text("wérld".into()))
    );
    assert_eq!(
        conn.incoming.recv().await,
        Some(Frame::Binary(Bytes::from_static(&[1, 2, 3])))
    );
    conn.sender.try_send(Frame::Text("hello".into())).unwrap();
    conn.sender
        .try_send(Frame::Binary(Bytes::from_static(&[1, 2, 3, 4])))
        .unwrap();
    let f = h.get(&sid).await;
    assert_eq!(f.status, StatusCode::OK);
    assert_eq!(f.headers["content-type"], "text/plain; charset=UTF-8");
    assert_eq!(f.headers["cache-control"], "no-store");
    assert_eq!(f.body, "4hello\u{1e}bAQIDBA==");
}

#[tokio::test(start_paused = true)]
async fn get_is_held_until_a_message_comes() {
    let mut h = Harness::default();
    let (sid, conn) = h.open_polling().await;
    let pending = h.spawn_get(&sid);
    settle().await;
    assert!(!pending.is_finished());
    conn.sender.try_send(Frame::Text("late".into())).unwrap();
    let f = pending.await.unwrap();
    assert_eq!(f.body, "4late");
}

#[tokio::test(start_paused = true)]
async fn get_answers_within_max_payload() {
    let mut h = Harness::new(EngineConfig {
        max_payload: 10,
        ..EngineConfig::default()
    });
    let (sid, conn) = h.open_polling().await;
    for m in ["aaaa", "bbbb", "cccc"] {
        conn.sender.try_send(Frame::Text(m.into())).unwrap();
    }
    // "4aaaa" + sep + "4bbbb" = 11 > 10
    assert_eq!(h.get(&sid).await.body, "4aaaa");
    assert_eq!(h.get(&sid).await.body, "4bbbb");
    assert_eq!(h.get(&sid).await.body, "4cccc");
}

#[tokio::test(start_paused = true)]
async fn abandoned_get_loses_nothing() {
    let mut h = Harness::default();
    let (sid, conn) = h.open_polling().await;
    // A poll the client left while it waited: the gateway drops the task.
    let pending = h.spawn_get(&sid);
    settle().await;
    pending.abort();
    assert!(pending.await.is_err_and(|e| e.is_cancelled()));
    conn.sender.try_send(Frame::Text("one".into())).unwrap();
    // A poll dropped before it ever ran.
    let never = h.call(request(Method::GET, &polling(&sid), Body::empty()));
    drop(never);
    conn.sender.try_send(Frame::Text("two".into())).unwrap();
    // A poll dropped after it pulled a message into the session, before answering.
    {
        let session = h.server.session(&sid).unwrap();
        let mut rx = session.outgoing.lock().await;
        let frame = rx.recv().await.unwrap();
        session.push_message(frame);
    }
    // The slot was freed (no overlap), and both messages are still there, in order.
    let f = h.get(&sid).await;
    assert_eq!(f.status, StatusCode::OK);
    assert_eq!(f.body, "4one\u{1e}4two");
}

#[tokio::test(start_paused = true)]
async fn oversized_post_is_413_and_the_session_stays() {
    let mut h = Harness::new(EngineConfig {
        max_payload: 8,
        ..EngineConfig::default()
    });
    let (sid, mut conn) = h.open_polling().await;
    let f = h.post(&sid, "4123456789").await;
    assert_eq!(f.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(f.headers["connection"], "close");
    // The limit applies while reading: the rest of a long body is never waited for.
    let (tx, body) = Body::channel(4);
    tx.send(Ok(Bytes::from_static(b"4aaaa"))).await.unwrap();
    tx.send(Ok(Bytes::from_static(b"aaaa"))).await.unwrap();
    let f = full(h.call(request(Method::POST, &polling(&sid), body)).await);
    assert_eq!(f.status, StatusCode::PAYLOAD_TOO_LARGE);
    drop(tx);
    assert!(!conn.sender.is_closed());
    assert_eq!(h.post(&sid, "4ok").await.status, StatusCode::OK);
    assert_eq!(conn.incoming.recv().await, Some(Frame::Text("ok".into())));
}

#[tokio::test(start_paused = true)]
async fn second_concurrent_get_closes_the_session() {
    let mut h = Harness::default();
    let (sid, mut conn) = h.open_polling().await;
    let first = h.spawn_get(&sid);
    settle().await;
    let second = h.get(&sid).await;
    assert_eq!(second.status, StatusCode::BAD_REQUEST);
    assert_eq!(second.body, "");
    let first = first.await.unwrap();
    assert_eq!(first.status, StatusCode::OK);
    assert_eq!(first.body, "1");
    assert_eq!(
        conn.sender.closed().await,
        CloseReason::TransportError("overlap from client".into())
    );
    assert_eq!(conn.incoming.recv().await, None);
    assert_eq!(error_code(&h.get(&sid).await), 1);
    assert_eq!(h.server.session_count(), 0);
}

#[tokio::test(start_paused = true)]
async fn second_concurrent_post_closes_the_session() {
    let mut h = Harness::default();
    let (sid, conn) = h.open_polling().await;
    let (tx, body) = Body::channel(4);
    tx.send(Ok(Bytes::from_static(b"4part"))).await.unwrap();
    let server = h.server.clone();
    let req = request(Method::POST, &polling(&sid), body);
    let first = tokio::spawn(async move { full(server.call(req).await) });
    settle().await;
    assert_eq!(h.post(&sid, "4x").await.status, StatusCode::BAD_REQUEST);
    // The first one is aborted.
    assert_eq!(first.await.unwrap().status, StatusCode::BAD_REQUEST);
    assert!(matches!(
        conn.sender.closed().await,
        CloseReason::TransportError(_)
    ));
    assert_eq!(error_code(&h.get(&sid).await), 1);
    drop(tx);
}

#[tokio::test(start_paused = true)]
async fn undecodable_post_closes_the_session() {
    for body in ["abc", "", "4a\u{1e}", "b!!"] {
        let mut h = Harness::default();
        let (sid, conn) = h.open_polling().await;
        let f = h.post(&sid, body).await;
        assert_eq!(f.status, StatusCode::BAD_REQUEST, "{body:?}");
        assert!(matches!(
            conn.sender.closed().await,
            CloseReason::ParseError(_)
        ));
        assert_eq!(h.get(&sid).await.status, StatusCode::BAD_REQUEST);
    }
}

#[tokio::test(start_paused = true)]
async fn binary_post_body_closes_the_session() {
    let mut h = Harness::default();
    let (sid, conn) = h.open_polling().await;
    let mut req = request(
        Method::POST,
        &polling(&sid),
        Body::from_bytes(Bytes::from_static(b"4x")),
    );
    req.head
        .headers
        .insert("content-type", "application/octet-stream".parse().unwrap());
    assert_eq!(full(h.call(req).await).status, StatusCode::BAD_REQUEST);
    assert!(conn.sender.is_closed());
}

#[tokio::test(start_paused = true)]
async fn ping_from_the_client_is_a_protocol_error() {
    let mut h = Harness::default();
    let (sid, conn) = h.open_polling().await;
    assert_eq!(h.post(&sid, "2").await.status, StatusCode::OK);
    assert_eq!(
        conn.sender.close_reason(),
        Some(CloseReason::TransportError(
            "invalid heartbeat direction".into()
        ))
    );
}

#[tokio::test(start_paused = true)]
async fn incoming_queue_back_pressures_the_post() {
    let mut h = Harness::new(EngineConfig {
        in_queue: 1,
        ..EngineConfig::default()
    });
    let (sid, mut conn) = h.open_polling().await;
    let server = h.server.clone();
    let req = request(
        Method::POST,
        &polling(&sid),
        Body::from_bytes(Bytes::from_static(b"4a\x1e4b\x1e4c")),
    );
    let post = tokio::spawn(async move { full(server.call(req).await) });
    settle().await;
    assert!(
        !post.is_finished(),
        "answered before the messages were taken"
    );
    for m in ["a", "b", "c"] {
        assert_eq!(conn.incoming.recv().await, Some(Frame::Text(m.into())));
    }
    assert_eq!(post.await.unwrap().body, "ok");
}

#[tokio::test(start_paused = true)]
async fn outgoing_queue_is_bounded() {
    let mut h = Harness::new(EngineConfig {
        out_queue: 3,
        ..EngineConfig::default()
    });
    let (sid, conn) = h.open_polling().await;
    for i in 0..3 {
        conn.sender.try_send(Frame::Text(i.to_string())).unwrap();
    }
    assert_eq!(
        conn.sender.try_send(Frame::Text("x".into())),
        Err(SendError::Full)
    );
    assert_eq!(h.get(&sid).await.body, "40\u{1e}41\u{1e}42");
    assert!(conn.sender.try_send(Frame::Text("x".into())).is_ok());
}

// ---------------------------------------------------------------------------------------------
// Heartbeat

#[tokio::test(start_paused = true)]
async fn polling_heartbeat() {
    let mut h = Harness::default();
    let (sid, conn) = h.open_polling().await;
    let start = tokio::time::Instant::now();
    for round in 0..3u32 {
        let f = h.get(&sid).await;
        assert_eq!(f.body, "2");
        // one interval after the handshake, then one after each pong
        let expected = PING_INTERVAL * (round + 1);
        assert!(start.elapsed() >= expected && start.elapsed() < expected + SHORT);
        assert_eq!(h.post(&sid, "3").await.status, StatusCode::OK);
    }
    assert!(!conn.sender.is_closed());
}

#[tokio::test(start_paused = true)]
async fn polling_ping_timeout() {
    let mut h = Harness::default();
    let (sid, conn) = h.open_polling().await;
    let start = tokio::time::Instant::now();
    assert_eq!(h.get(&sid).await.body, "2");
    // no pong: a poll waits, then gets `close`
    let f = h.get(&sid).await;
    assert_eq!(f.body, "1");
    assert_eq!(start.elapsed(), PING_INTERVAL + PING_TIMEOUT);
    assert_eq!(conn.sender.closed().await, CloseReason::PingTimeout);
    assert_eq!(h.server.session_count(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_client_that_stops_polling_is_a_transport_close() {
    let mut h = Harness::default();
    let (sid, mut conn) = h.open_polling().await;
    let start = tokio::time::Instant::now();
    assert_eq!(conn.sender.closed().await, CloseReason::TransportClose);
    assert_eq!(start.elapsed(), PING_INTERVAL + PING_TIMEOUT);
    assert_eq!(conn.incoming.recv().await, None);
    assert_eq!(h.get(&sid).await.status, StatusCode::BAD_REQUEST);
    assert_eq!(h.server.session_count(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_late_request_never_finds_an_expired_session() {
    let mut h = Harness::default();
    let (sid, _conn) = h.open_polling().await;
    // Jump past the deadline without letting the heartbeat task run first.
    let session = h.server.session(&sid).unwrap();
    tokio::time::advance(PING_INTERVAL).await;
    settle().await;
    drop(session);
    tokio::time::advance(PING_TIMEOUT).await;
    assert_eq!(error_code(&h.get(&sid).await), 1);
}

#[tokio::test(start_paused = true)]
async fn other_packets_push_the_ping_timeout_back() {
    let mut h = Harness::default();
    let (sid, conn) = h.open_polling().await;
    assert_eq!(h.get(&sid).await.body, "2");
    tokio::time::sleep(PING_TIMEOUT - Duration::from_secs(1)).await;
    assert_eq!(h.post(&sid, "4busy").await.status, StatusCode::OK);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(!conn.sender.is_closed(), "a busy client is alive");
    tokio::time::sleep(PING_TIMEOUT).await;
    assert_eq!(conn.sender.close_reason(), Some(CloseReason::PingTimeout));
}

#[tokio::test(start_paused = true)]
async fn websocket_heartbeat_and_timeout() {
    let mut h = Harness::default();
    let (mut ws, _sid, conn) = h.open_websocket().await;
    for _ in 0..3 {
        assert_eq!(next_text(&mut ws).await, "2");
        send_text(&mut ws, "3").await;
    }
    let start = tokio::time::Instant::now();
    assert_eq!(next_text(&mut ws).await, "2");
    assert_eq!(close_code(&mut ws).await, Some(CloseCode::Normal));
    assert_eq!(start.elapsed(), PING_INTERVAL + PING_TIMEOUT);
    assert_eq!(conn.sender.closed().await, CloseReason::PingTimeout);
}

// ---------------------------------------------------------------------------------------------
// WebSocket

#[tokio::test(start_paused = true)]
async fn websocket_session_carries_text_and_binary() {
    let mut h = Harness::default();
    let (mut ws, sid, mut conn) = h.open_websocket().await;
    assert_eq!(conn.info.transport, Transport::WebSocket);
    send_text(&mut ws, "4hello").await;
    ws.send(Message::binary(vec![1u8, 2, 3])).await.unwrap();
    assert_eq!(
        conn.incoming.recv().await,
        Some(Frame::Text("hello".into()))
    );
    assert_eq!(
        conn.incoming.recv().await,
        Some(Frame::Binary(Bytes::from_static(&[1, 2, 3])))
    );
    conn.sender.try_send(Frame::Text("back".into())).unwrap();
    conn.sender
        .try_send(Frame::Binary(Bytes::from_static(&[9])))
        .unwrap();
    assert_eq!(next_text(&mut ws).await, "4back");
    assert_eq!(next_msg(&mut ws).await, Message::binary(vec![9u8]));
    // polling requests for a WebSocket session are a transport mismatch
    assert_eq!(error_code(&h.get(&sid).await), 3);
    assert_eq!(error_code(&h.post(&sid, "4x").await), 3);
}

/// The server's end of a WebSocket, recording the size of each write the transport makes and
/// counting the times its reads are polled.
struct CountingIo {
    inner: DuplexStream,
    writes: Arc<Mutex<Vec<usize>>>,
    reads: Arc<std::sync::atomic::AtomicUsize>,
}

/// A WebSocket session opened over a [`CountingIo`], its handshake read: the client's end,
/// the connection handed to the layer above, and the server end's write sizes and read count.
struct Counted {
    ws: ClientWs,
    conn: Conn,
    writes: Arc<Mutex<Vec<usize>>>,
    reads: Arc<std::sync::atomic::AtomicUsize>,
}

impl Harness {
    async fn open_counted_websocket(&mut self) -> Counted {
        let Response::Upgrade { on_upgrade, .. } =
            self.call(ws_request("EIO=4&transport=websocket")).await
        else {
            panic!("expected an upgrade");
        };
        let (client, server) = tokio::io::duplex(1 << 20);
        let (writes, reads) = (Arc::default(), Arc::default());
        let io = CountingIo {
            inner: server,
            writes: Arc::clone(&writes),
            reads: Arc::clone(&reads),
        };
        tokio::spawn(on_upgrade(Box::new(io)));
        let mut ws = WebSocketStream::from_raw_socket(client, Role::Client, None).await;
        assert!(next_text(&mut ws).await.starts_with("0{"));
        let conn = self.conns.recv().await.expect("connection handed over");
        Counted {
            ws,
            conn,
            writes,
            reads,
        }
    }
}

impl tokio::io::AsyncRead for CountingIo {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        self.reads
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        std::pin::Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for CountingIo {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let written = std::pin::Pin::new(&mut self.inner).poll_write(cx, buf);
        if let std::task::Poll::Ready(Ok(n)) = &written {
            self.writes.lock().unwrap().push(*n);
        }
        written
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[tokio::test(start_paused = true)]
async fn queued_messages_go_out_in_one_write_and_no_write_exceeds_a_tls_record() {
    let mut h = Harness::default();
    let Counted {
        mut ws,
        conn,
        writes,
        ..
    } = h.open_counted_websocket().await;
    settle().await;
    writes.lock().unwrap().clear();

    // A burst queued while the session's task waits: one write.
    for i in 0..20 {
        conn.sender.try_send(Frame::Text(format!("m{i}"))).unwrap();
    }
    for i in 0..20 {
        assert_eq!(next_text(&mut ws).await, format!("4m{i}"));
    }
    // Frames of 2 header bytes and "4m0".."4m19".
    let burst = 10 * (2 + 3) + 10 * (2 + 4);
    assert_eq!(*writes.lock().unwrap(), [burst], "one write for the burst");
    writes.lock().unwrap().clear();

    // A burst larger than a TLS record's 16 KiB of plaintext: written in pieces of at most a
    // record and a frame, not in one buffer as large as the burst (which tungstenite keeps).
    let big = "x".repeat(1000);
    for _ in 0..64 {
        conn.sender.try_send(Frame::Text(big.clone())).unwrap();
    }
    for _ in 0..64 {
        assert_eq!(next_text(&mut ws).await.len(), 1001);
    }
    let sizes = writes.lock().unwrap().clone();
    assert!(
        sizes.iter().all(|n| *n <= 16 * 1024 + 1010),
        "writes of {sizes:?}"
    );
    assert!(sizes.len() <= 5, "writes of {sizes:?}");
}

#[tokio::test(start_paused = true)]
async fn websocket_message_over_max_payload_is_1009() {
    let mut h = Harness::new(EngineConfig {
        max_payload: 16,
        ..EngineConfig::default()
    });
    let (mut ws, _sid, conn) = h.open_websocket().await;
    send_text(&mut ws, "4this is longer than sixteen bytes").await;
    assert_eq!(close_code(&mut ws).await, Some(CloseCode::Size));
    assert!(matches!(
        conn.sender.closed().await,
        CloseReason::TransportError(_)
    ));
}

#[tokio::test(start_paused = true)]
async fn websocket_protocol_error_closes() {
    let mut h = Harness::default();
    let (mut ws, _sid, conn) = h.open_websocket().await;
    send_text(&mut ws, "abc").await;
    assert_eq!(close_code(&mut ws).await, Some(CloseCode::Protocol));
    assert!(matches!(
        conn.sender.closed().await,
        CloseReason::ParseError(_)
    ));
    assert_eq!(h.server.session_count(), 0);
}

#[tokio::test(start_paused = true)]
async fn websocket_client_close_packet() {
    let mut h = Harness::default();
    let (mut ws, _sid, mut conn) = h.open_websocket().await;
    send_text(&mut ws, "1").await;
    assert_eq!(close_code(&mut ws).await, Some(CloseCode::Normal));
    assert_eq!(conn.sender.closed().await, CloseReason::ClientClose);
    assert_eq!(conn.incoming.recv().await, None);
}

#[tokio::test(start_paused = true)]
async fn websocket_gone_is_a_transport_close() {
    let mut h = Harness::default();
    let (ws, _sid, conn) = h.open_websocket().await;
    drop(ws);
    assert_eq!(conn.sender.closed().await, CloseReason::TransportClose);
    assert_eq!(h.server.session_count(), 0);
}

#[tokio::test(start_paused = true)]
async fn upgrade_request_for_polling_transport_is_closed() {
    let h = Harness::default();
    let mut ws = h.websocket("EIO=4&transport=polling").await;
    assert_eq!(close_code(&mut ws).await, None);
    assert_eq!(h.server.session_count(), 0);
}

// ---------------------------------------------------------------------------------------------
// Upgrade

#[tokio::test(start_paused = true)]
async fn upgrade_sequence() {
    let mut h = Harness::default();
    let (sid, mut conn) = h.open_polling().await;
    let pending = h.spawn_get(&sid);
    settle().await;
    let mut ws = h
        .websocket(&format!("EIO=4&transport=websocket&sid={sid}"))
        .await;
    send_text(&mut ws, "2probe").await;
    assert_eq!(next_text(&mut ws).await, "3probe");
    // the pending poll is ended with a noop, at node's 100 ms tick
    let start = tokio::time::Instant::now();
    assert_eq!(pending.await.unwrap().body, "6");
    assert!(start.elapsed() <= Duration::from_millis(100));
    // and so is any further poll while the upgrade is under way
    assert_eq!(h.get(&sid).await.body, "6");
    // messages queued meanwhile wait for the WebSocket
    conn.sender.try_send(Frame::Text("a".into())).unwrap();
    conn.sender.try_send(Frame::Text("b".into())).unwrap();
    send_text(&mut ws, "5").await;
    assert_eq!(next_text(&mut ws).await, "4a");
    assert_eq!(next_text(&mut ws).await, "4b");
    send_text(&mut ws, "4up").await;
    assert_eq!(conn.incoming.recv().await, Some(Frame::Text("up".into())));
    // polling is over for this sid
    assert_eq!(error_code(&h.get(&sid).await), 3);
    assert_eq!(error_code(&h.post(&sid, "4x").await), 3);
    // a second WebSocket for it is closed at once
    let mut second = h
        .websocket(&format!("EIO=4&transport=websocket&sid={sid}"))
        .await;
    assert_eq!(close_code(&mut second).await, None);
    // the first one still works, heartbeat included
    assert_eq!(next_text(&mut ws).await, "2");
    send_text(&mut ws, "3").await;
    conn.sender.try_send(Frame::Text("c".into())).unwrap();
    assert_eq!(next_text(&mut ws).await, "4c");
    assert!(!conn.sender.is_closed());
}

#[tokio::test(start_paused = true)]
async fn poll_waiting_when_the_upgrade_completes_is_a_mismatch() {
    let mut h = Harness::default();
    let (sid, _conn) = h.open_polling().await;
    let mut ws = h
        .websocket(&format!("EIO=4&transport=websocket&sid={sid}"))
        .await;
    // A poll sent alongside the probe, by a client that does not pause polling.
    let pending = h.spawn_get(&sid);
    settle().await;
    send_text(&mut ws, "2probe").await;
    send_text(&mut ws, "5").await;
    assert_eq!(next_text(&mut ws).await, "3probe");
    let f = pending.await.unwrap();
    assert_eq!(error_code(&f), 3);
}

#[tokio::test(start_paused = true)]
async fn second_probe_while_upgrading_is_closed() {
    let mut h = Harness::default();
    let (sid, _conn) = h.open_polling().await;
    let query = format!("EIO=4&transport=websocket&sid={sid}");
    let mut first = h.websocket(&query).await;
    let mut second = h.websocket(&query).await;
    assert_eq!(close_code(&mut second).await, None);
    send_text(&mut first, "2probe").await;
    assert_eq!(next_text(&mut first).await, "3probe");
}

/// The official suite's "ignores WebSocket connection with same sid after upgrade", with the
/// second WebSocket arriving while the first one's probe is under way: refusing the second
/// dropped a `Probe` made for it anyway (`then_some` builds its value first), and that drop
/// aborted the first one's upgrade, so its `5` was refused and the session lost.
#[tokio::test(start_paused = true)]
async fn a_second_websocket_during_the_probe_does_not_abort_the_upgrade() {
    let mut h = Harness::default();
    let (sid, conn) = h.open_polling().await;
    let query = format!("EIO=4&transport=websocket&sid={sid}");
    let mut first = h.websocket(&query).await;
    send_text(&mut first, "2probe").await;
    assert_eq!(next_text(&mut first).await, "3probe");
    let mut second = h.websocket(&query).await;
    assert_eq!(close_code(&mut second).await, None);
    send_text(&mut first, "5").await;
    conn.sender.try_send(Frame::Text("a".into())).unwrap();
    assert_eq!(next_text(&mut first).await, "4a");
    send_text(&mut first, "4hello").await;
    let mut incoming = conn.incoming;
    assert_eq!(incoming.recv().await, Some(Frame::Text("hello".into())));
}

#[tokio::test(start_paused = true)]
async fn unfinished_probe_times_out_and_polling_goes_on() {
    let mut h = Harness::default();
    let (sid, conn) = h.open_polling().await;
    let mut ws = h
        .websocket(&format!("EIO=4&transport=websocket&sid={sid}"))
        .await;
    let start = tokio::time::Instant::now();
    send_text(&mut ws, "2probe").await;
    assert_eq!(next_text(&mut ws).await, "3probe");
    assert_eq!(close_code(&mut ws).await, None);
    assert_eq!(start.elapsed(), DEFAULT_UPGRADE_TIMEOUT);
    // still a polling session, and upgradable again
    conn.sender.try_send(Frame::Text("still".into())).unwrap();
    assert_eq!(h.get(&sid).await.body, "4still");
    let mut again = h
        .websocket(&format!("EIO=4&transport=websocket&sid={sid}"))
        .await;
    send_text(&mut again, "2probe").await;
    assert_eq!(next_text(&mut again).await, "3probe");
    send_text(&mut again, "5").await;
    conn.sender.try_send(Frame::Text("ws".into())).unwrap();
    assert_eq!(next_text(&mut again).await, "4ws");
}

#[tokio::test(start_paused = true)]
async fn bad_packet_on_the_probe_closes_only_the_probe() {
    let mut h = Harness::default();
    let (sid, conn) = h.open_polling().await;
    let mut ws = h
        .websocket(&format!("EIO=4&transport=websocket&sid={sid}"))
        .await;
    send_text(&mut ws, "4too early").await;
    assert_eq!(close_code(&mut ws).await, None);
    settle().await;
    assert!(!conn.sender.is_closed());
    conn.sender.try_send(Frame::Text("x".into())).unwrap();
    assert_eq!(h.get(&sid).await.body, "4x");
}

// ---------------------------------------------------------------------------------------------
// Close

#[tokio::test(start_paused = true)]
async fn client_close_over_polling_ends_the_pending_poll_with_noop() {
    let mut h = Harness::default();
    let (sid, mut conn) = h.open_polling().await;
    let pending = h.spawn_get(&sid);
    settle().await;
    assert_eq!(h.post(&sid, "1").await.body, "ok");
    assert_eq!(pending.await.unwrap().body, "6");
    assert_eq!(conn.sender.closed().await, CloseReason::ClientClose);
    assert_eq!(conn.incoming.recv().await, None);
    assert_eq!(error_code(&h.get(&sid).await), 1);
    assert_eq!(h.server.session_count(), 0);
}

#[tokio::test(start_paused = true)]
async fn client_close_overtaking_its_poll_still_answers_it() {
    let mut h = Harness::default();
    let (sid, conn) = h.open_polling().await;
    assert_eq!(h.post(&sid, "1").await.body, "ok");
    assert_eq!(conn.sender.close_reason(), Some(CloseReason::ClientClose));
    // the poll sent alongside arrives just after: noop, then the sid is gone
    assert_eq!(h.get(&sid).await.body, "6");
    assert_eq!(error_code(&h.get(&sid).await), 1);
    assert_eq!(h.server.session_count(), 0);
    // with no poll at all, the sid is forgotten after the linger
    let (sid, _conn) = h.open_polling().await;
    assert_eq!(h.post(&sid, "1").await.body, "ok");
    assert_eq!(error_code(&h.post(&sid, "4x").await), 1);
    tokio::time::sleep(session_linger()).await;
    settle().await;
    assert_eq!(h.server.session_count(), 0);
    assert_eq!(error_code(&h.get(&sid).await), 1);
}

fn session_linger() -> Duration {
    super::session::CLIENT_CLOSE_LINGER
}

#[tokio::test(start_paused = true)]
async fn server_close_over_polling_flushes_then_closes() {
    let mut h = Harness::default();
    let (sid, mut conn) = h.open_polling().await;
    conn.sender.try_send(Frame::Text("bye".into())).unwrap();
    conn.sender.close(CloseReason::ServerClose);
    assert_eq!(conn.sender.closed().await, CloseReason::ServerClose);
    assert_eq!(conn.incoming.recv().await, None);
    settle().await;
    // The `close` in a poll of its own, after the last message.
    assert_eq!(h.get(&sid).await.body, "4bye");
    assert_eq!(h.get(&sid).await.body, "1");
    assert_eq!(error_code(&h.get(&sid).await), 1);
    assert_eq!(h.server.session_count(), 0);
}

#[tokio::test(start_paused = true)]
async fn server_close_answers_a_pending_poll_at_once() {
    let mut h = Harness::default();
    let (sid, conn) = h.open_polling().await;
    let pending = h.spawn_get(&sid);
    settle().await;
    conn.sender.close(CloseReason::ServerClose);
    assert_eq!(pending.await.unwrap().body, "1");
    assert_eq!(h.server.session_count(), 0);
}

#[tokio::test(start_paused = true)]
async fn server_close_of_an_absent_polling_client_gives_up_after_a_while() {
    let mut h = Harness::default();
    let (sid, _conn) = h.open_polling().await;
    _conn.sender.close(CloseReason::ServerClose);
    settle().await;
    assert_eq!(h.server.session_count(), 1);
    tokio::time::sleep(super::session::DRAIN_TIMEOUT).await;
    settle().await;
    assert_eq!(h.server.session_count(), 0);
    assert_eq!(error_code(&h.get(&sid).await), 1);
}

#[tokio::test(start_paused = true)]
async fn server_close_over_websocket_flushes_then_closes() {
    let mut h = Harness::default();
    let (mut ws, _sid, conn) = h.open_websocket().await;
    conn.sender.try_send(Frame::Text("bye".into())).unwrap();
    conn.sender.close(CloseReason::ServerClose);
    assert_eq!(next_text(&mut ws).await, "4bye");
    assert_eq!(close_code(&mut ws).await, Some(CloseCode::Normal));
    settle().await;
    assert_eq!(h.server.session_count(), 0);
}

#[tokio::test(start_paused = true)]
async fn shutdown_closes_everything() {
    let mut h = Harness::default();
    let (sid, polling_conn) = h.open_polling().await;
    let (mut ws, _ws_sid, ws_conn) = h.open_websocket().await;
    let pending = h.spawn_get(&sid);
    settle().await;
    h.server.shutdown();
    assert_eq!(pending.await.unwrap().body, "1");
    assert_eq!(close_code(&mut ws).await, Some(CloseCode::Away));
    assert_eq!(
        polling_conn.sender.closed().await,
        CloseReason::ServerShutdown
    );
    assert_eq!(ws_conn.sender.closed().await, CloseReason::ServerShutdown);
    assert_eq!(h.server.session_count(), 0);
    let f = full(
        h.call(request(
            Method::GET,
            "EIO=4&transport=polling",
            Body::empty(),
        ))
        .await,
    );
    assert_eq!(f.status, StatusCode::SERVICE_UNAVAILABLE);
}

#[tokio::test(start_paused = true)]
async fn no_session_outlives_its_close() {
    let mut h = Harness::default();
    let mut weak = Vec::new();
    for i in 0..100 {
        let (sid, conn) = h.open_polling().await;
        weak.push(Arc::downgrade(&h.server.session(&sid).unwrap()));
        match i % 4 {
            0 => assert_eq!(h.post(&sid, "1").await.body, "ok"),
            1 => conn.sender.close(CloseReason::ServerClose),
            2 => assert_eq!(h.post(&sid, "abc").await.status, StatusCode::BAD_REQUEST),
            _ => {
                let pending = h.spawn_get(&sid);
                settle().await;
                pending.abort();
            }
        }
        drop(conn);
        let (mut ws, sid, conn) = h.open_websocket().await;
        weak.push(Arc::downgrade(&h.server.session(&sid).unwrap()));
        if i % 2 == 0 {
            send_text(&mut ws, "1").await;
        } else {
            drop(ws);
        }
        drop(conn);
    }
    // the longest any of them lingers: a client gone while polling, whose `Conn` was dropped
    // (closed at the first ping, then drained in vain)
    tokio::time::sleep(PING_INTERVAL + super::session::DRAIN_TIMEOUT + SHORT).await;
    settle().await;
    assert_eq!(h.server.session_count(), 0);
    assert!(
        weak.iter().all(|w| w.upgrade().is_none()),
        "a session is still referenced"
    );
}

// ---------------------------------------------------------------------------------------------
// CORS

#[tokio::test(start_paused = true)]
async fn cors_any() {
    let mut h = Harness::new(EngineConfig {
        cors: Some(CorsConfig::any()),
        ..EngineConfig::default()
    });
    let mut req = request(Method::OPTIONS, "EIO=4&transport=polling", Body::empty());
    req.head
        .headers
        .insert("origin", "https://app.example".parse().unwrap());
    req.head.headers.insert(
        "access-control-request-headers",
        "content-type".parse().unwrap(),
    );
    let f = full(h.call(req).await);
    assert_eq!(f.status, StatusCode::NO_CONTENT);
    assert_eq!(f.headers["access-control-allow-origin"], "*");
    assert_eq!(
        f.headers["access-control-allow-methods"],
        "GET,HEAD,PUT,PATCH,POST,DELETE"
    );
    assert_eq!(f.headers["access-control-allow-headers"], "content-type");
    // every answer carries the origin header, errors included
    let (sid, _conn) = h.open_polling().await;
    let f = h.post(&sid, "4x").await;
    assert_eq!(f.headers["access-control-allow-origin"], "*");
    let f = full(h.call(request(Method::GET, "EIO=4", Body::empty())).await);
    assert_eq!(f.headers["access-control-allow-origin"], "*");
}

#[tokio::test(start_paused = true)]
async fn cors_list_with_credentials() {
    let h = Harness::new(EngineConfig {
        cors: Some(CorsConfig {
            origin: CorsOrigin::List(vec!["https://ok.example".into()]),
            credentials: true,
            ..CorsConfig::any()
        }),
        ..EngineConfig::default()
    });
    for (origin, allowed) in [
        ("https://ok.example", true),
        ("https://evil.example", false),
    ] {
        let mut req = request(Method::GET, "EIO=4", Body::empty());
        req.head.headers.insert("origin", origin.parse().unwrap());
        let f = full(h.call(req).await);
        assert_eq!(f.headers["vary"], "Origin");
        assert_eq!(f.headers["access-control-allow-credentials"], "true");
        assert_eq!(
            f.headers
                .get("access-control-allow-origin")
                .map(|v| v.to_str().unwrap()),
            allowed.then_some(origin)
        );
    }
}

#[tokio::test(start_paused = true)]
async fn a_dropped_conn_closes_its_session() {
    let mut h = Harness::default();
    let (mut ws, _sid, conn) = h.open_websocket().await;
    let sender = conn.sender.clone();
    drop(conn);
    // noticed at the next heartbeat, then closed as by the layer above
    assert_eq!(close_code(&mut ws).await, Some(CloseCode::Normal));
    assert_eq!(sender.close_reason(), Some(CloseReason::ServerClose));
    settle().await;
    assert_eq!(h.server.session_count(), 0);
}

#[tokio::test(start_paused = true)]
async fn slow_consumer_is_closed_at_once_with_1013() {
    let mut h = Harness::default();
    let (mut ws, _sid, conn) = h.open_websocket().await;
    conn.sender.close(CloseReason::SlowConsumer);
    assert_eq!(close_code(&mut ws).await, Some(CloseCode::Again));
    let (sid, conn) = h.open_polling().await;
    conn.sender.try_send(Frame::Text("dropped".into())).unwrap();
    conn.sender.close(CloseReason::SlowConsumer);
    settle().await;
    assert_eq!(error_code(&h.get(&sid).await), 1);
    assert_eq!(h.server.session_count(), 0);
}

#[tokio::test(start_paused = true)]
async fn server_close_drain_spanning_several_polls_sends_one_close() {
    let mut h = Harness::new(EngineConfig {
        max_payload: 10,
        ..EngineConfig::default()
    });
    let (sid, conn) = h.open_polling().await;
    for m in ["aaaa", "bbbb", "cccc"] {
        conn.sender.try_send(Frame::Text(m.into())).unwrap();
    }
    conn.sender.close(CloseReason::ServerClose);
    settle().await;
    assert_eq!(h.get(&sid).await.body, "4aaaa");
    assert_eq!(h.get(&sid).await.body, "4bbbb");
    assert_eq!(h.get(&sid).await.body, "4cccc");
    assert_eq!(h.get(&sid).await.body, "1");
    assert_eq!(error_code(&h.get(&sid).await), 1);
}

/// Socket.IO's `disconnect(true)`: the `DISCONNECT` packet is queued, then the connection is
/// closed. The client must read the packet before the `close`, so they never share a payload
/// (socket.io-client handles a decoded packet a tick later than the engine's `close`).
#[tokio::test(start_paused = true)]
async fn a_pending_poll_gets_the_last_message_and_the_next_one_the_close() {
    let mut h = Harness::default();
    let (sid, conn) = h.open_polling().await;
    // A poll already waiting when the layer above closes.
    let pending = h.spawn_get(&sid);
    settle().await;
    conn.sender.try_send(Frame::Text("41".into())).unwrap();
    conn.sender.close(CloseReason::ServerClose);
    assert_eq!(pending.await.unwrap().body, "441");
    assert_eq!(h.get(&sid).await.body, "1");
    assert_eq!(error_code(&h.get(&sid).await), 1);
    assert_eq!(h.server.session_count(), 0);
}

fn from(mut req: Request, ip: &str) -> Request {
    req.peer = Some(std::net::SocketAddr::new(ip.parse().expect("ip"), 40000));
    req
}

#[tokio::test(start_paused = true)]
async fn handshakes_over_the_session_caps_are_refused_with_a_readable_error() {
    let h = Harness::new(EngineConfig {
        max_sessions: 5,
        max_sessions_per_client: 3,
        ..EngineConfig::default()
    });
    let handshake = |ip: &str| {
        from(
            request(Method::GET, "EIO=4&transport=polling", Body::empty()),
            ip,
        )
    };
    for _ in 0..3 {
        assert_eq!(full(h.call(handshake("10.0.0.1")).await).status, 200);
    }
    // The fourth from the same address: 429, Engine.IO's JSON error, Retry-After.
    let f = full(h.call(handshake("10.0.0.1")).await);
    assert_eq!(f.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(error_code(&f), 4);
    assert!(
        f.body
            .contains("Too many sessions from this client address (limit 3)"),
        "{}",
        f.body
    );
    assert_eq!(f.headers["retry-after"], "10");
    // The same /64 counts as the same client.
    let v6 = |n: u8| format!("2001:db8::{n}");
    assert_eq!(full(h.call(handshake(&v6(1))).await).status, 200);
    assert_eq!(full(h.call(handshake(&v6(2))).await).status, 200);
    // Five in all: the next one, from anyone, meets the server's cap (503).
    let f = full(h.call(handshake("10.0.0.9")).await);
    assert_eq!(f.status, StatusCode::SERVICE_UNAVAILABLE, "{}", f.body);
    assert!(
        f.body
            .contains("Too many sessions on this server (limit 5)"),
        "{}",
        f.body
    );
    // A direct WebSocket handshake is refused before the 101 as well.
    let f = full(
        h.call(from(ws_request("EIO=4&transport=websocket"), "10.0.0.9"))
            .await,
    );
    assert_eq!(f.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(h.server.session_count(), 5);
    // Requests of existing sessions are not handshakes: never refused by the caps.
    h.server.shutdown();
}

#[tokio::test(start_paused = true)]
async fn writing_messages_does_not_poll_the_websockets_reads() {
    let mut h = Harness::default();
    let Counted {
        mut ws,
        mut conn,
        reads,
        ..
    } = h.open_counted_websocket().await;
    settle().await;
    let before = reads.load(std::sync::atomic::Ordering::Relaxed);
    // Messages written one at a time, each a wake-up of the session's task of its own.
    for i in 0..20 {
        conn.sender.try_send(Frame::Text(format!("m{i}"))).unwrap();
        assert_eq!(next_text(&mut ws).await, format!("4m{i}"));
    }
    assert_eq!(
        reads.load(std::sync::atomic::Ordering::Relaxed),
        before,
        "the reads were not polled"
    );
    // And the reads still work when the client writes.
    send_text(&mut ws, "4up").await;
    assert_eq!(conn.incoming.recv().await, Some(Frame::Text("up".into())));
}

/// A WebSocket session's one task is what an idle connection keeps: its future is allocated for
/// the connection's life at its largest state's size. The WebSocket stream (about 300 bytes)
/// was laid out in it four times (each async layer kept its own slot for it after passing it
/// on) and the handshake's details once more: 2,816 bytes in all; 1,728 with the stream boxed
/// and the details shared.
#[tokio::test]
async fn a_websocket_sessions_task_stays_small() {
    let h = Harness::default();
    let Response::Upgrade { on_upgrade, .. } =
        h.call(ws_request("EIO=4&transport=websocket")).await
    else {
        panic!("expected an upgrade");
    };
    let (_client, server) = tokio::io::duplex(1024);
    let task = on_upgrade(Box::new(server));
    let size = std::mem::size_of_val(&*task);
    assert!(
        size <= 2048,
        "a WebSocket session's task future is {size} bytes"
    );
}
