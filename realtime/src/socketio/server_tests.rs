//! The server driven through in-memory Engine.IO connections, asserting the
//! exact frames a client would see. Text frames are shown with the
//! Engine.IO `4` (message) prefix, as on a WebSocket.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use serde_json::{json, Value};
use tokio::sync::mpsc;

use super::*;
use crate::engineio::conn::{pair, ConnTransport};
use crate::engineio::{
    CloseReason, ConnHandler, EngineConfig, EngineServer, Frame, HandshakeInfo, Transport,
};
use crate::hub::{Hub, HubConfig, Payload};
use crate::seam::Service;

const WAIT: Duration = Duration::from_secs(5);

fn info() -> HandshakeInfo {
    HandshakeInfo {
        headers: http::HeaderMap::new(),
        query: "EIO=4&transport=websocket&room=blue".into(),
        peer: None,
        client: None,
        local: None,
        authority: None,
        secure: false,
        transport: Transport::WebSocket,
    }
}

#[derive(Debug, PartialEq)]
enum Wire {
    Text(String),
    Bin(Vec<u8>),
}

struct Client {
    t: ConnTransport,
}

impl Client {
    fn open(io: &SocketIo) -> Client {
        Client::open_with(io, 256)
    }

    fn open_with(io: &SocketIo, out_capacity: usize) -> Client {
        let (conn, t) = pair(Arc::from("engine-sid"), info(), out_capacity, 64);
        let work = io.on_connection(conn);
        // One task, as the session's runs them.
        tokio::spawn(async move {
            let outgoing = async {
                if let Some(outgoing) = work.outgoing {
                    outgoing.await;
                }
            };
            futures_util::future::join(work.incoming, outgoing).await;
        });
        Client { t }
    }

    /// Sends an Engine.IO message written as on the wire (`4…`).
    async fn send(&self, wire: &str) {
        let text = wire.strip_prefix('4').expect("an Engine.IO message");
        self.t
            .incoming
            .send(Frame::Text(text.to_owned()))
            .await
            .expect("connection open");
    }

    async fn send_bin(&self, bytes: &[u8]) {
        self.t
            .incoming
            .send(Frame::Binary(Bytes::copy_from_slice(bytes)))
            .await
            .expect("connection open");
    }

    async fn recv(&mut self) -> Wire {
        match tokio::time::timeout(WAIT, self.t.outgoing.recv()).await {
            Ok(Some(Frame::Text(t))) => Wire::Text(format!("4{t}")),
            Ok(Some(Frame::Binary(b))) => Wire::Bin(b.to_vec()),
            Ok(None) => panic!("outgoing queue closed"),
            Err(_) => panic!("nothing received within {WAIT:?}"),
        }
    }

    async fn text(&mut self) -> String {
        match self.recv().await {
            Wire::Text(t) => t,
            other => panic!("expected text, got {other:?}"),
        }
    }

    async fn expect(&mut self, wire: &str) {
        assert_eq!(self.text().await, wire);
    }

    async fn expect_bin(&mut self, bytes: &[u8]) {
        assert_eq!(self.recv().await, Wire::Bin(bytes.to_vec()));
    }

    /// Asserts that nothing more is sent for a while.
    async fn quiet(&mut self) {
        tokio::time::sleep(Duration::from_millis(50)).await;
        if let Ok(frame) = self.t.outgoing.try_recv() {
            panic!("unexpected frame {frame:?}");
        }
    }

    async fn closed(&self) -> CloseReason {
        tokio::time::timeout(WAIT, self.t.sender.closed())
            .await
            .expect("connection closed in time")
    }

    /// Sends a CONNECT (`40…`) and returns the reply's JSON; panics on
    /// anything but a CONNECT reply for `nsp`.
    async fn connect(&mut self, connect: &str) -> Value {
        self.send(connect).await;
        let reply = self.text().await;
        let nsp_part = connect[2..].split(['{']).next().unwrap_or("");
        let nsp_part = if nsp_part.is_empty() || nsp_part.ends_with(',') {
            nsp_part.to_owned()
        } else {
            format!("{nsp_part},")
        };
        let prefix = format!("40{nsp_part}");
        let json = reply
            .strip_prefix(&prefix)
            .unwrap_or_else(|| panic!("expected a CONNECT reply, got {reply}"));
        serde_json::from_str(json).expect("JSON")
    }
}

fn sid(reply: &Value) -> String {
    reply["sid"].as_str().expect("sid").to_owned()
}

fn conformance() -> SocketIo {
    let io = SocketIo::new(Hub::default(), conformance_options());
    install_conformance(&io);
    io
}

/// A namespace whose connect handler hands each socket to the test.
fn capture(io: &SocketIo, path: &str) -> mpsc::UnboundedReceiver<Socket> {
    let (tx, rx) = mpsc::unbounded_channel();
    io.namespace(path, move |socket| {
        let _ = tx.send(socket);
        std::future::ready(Ok(()))
    });
    rx
}

async fn next_socket(rx: &mut mpsc::UnboundedReceiver<Socket>) -> Socket {
    tokio::time::timeout(WAIT, rx.recv())
        .await
        .expect("a socket in time")
        .expect("namespace alive")
}

async fn eventually(mut check: impl FnMut() -> bool) {
    for _ in 0..500 {
        if check() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("condition not reached");
}

// ---- connect / namespaces ----

#[tokio::test]
async fn connect_to_the_main_namespace_with_and_without_auth() {
    let io = conformance();
    let mut c = Client::open(&io);
    let reply = c.connect("40").await;
    let keys: Vec<&String> = reply.as_object().unwrap().keys().collect();
    assert_eq!(keys, ["sid"]);
    let id = sid(&reply);
    assert_eq!(id.len(), ID_LEN);
    assert_ne!(id, "engine-sid");
    c.expect(r#"42["auth",{}]"#).await;

    let mut c = Client::open(&io);
    c.connect(r#"40{"token":"123"}"#).await;
    c.expect(r#"42["auth",{"token":"123"}]"#).await;
}

#[tokio::test]
async fn connect_to_a_custom_namespace() {
    let io = conformance();
    let mut c = Client::open(&io);
    let reply = c.connect("40/custom,").await;
    assert_eq!(reply.as_object().unwrap().len(), 1);
    c.expect(r#"42/custom,["auth",{}]"#).await;

    let mut c = Client::open(&io);
    c.connect(r#"40/custom,{"token":"abc"}"#).await;
    c.expect(r#"42/custom,["auth",{"token":"abc"}]"#).await;
}

#[tokio::test]
async fn unknown_namespace_is_refused_but_the_connection_stays() {
    let io = conformance();
    let mut c = Client::open(&io);
    c.send("40/random").await;
    c.expect(r#"44/random,{"message":"Invalid namespace"}"#)
        .await;
    assert!(!c.t.sender.is_closed());
    c.connect("40").await;
    c.expect(r#"42["auth",{}]"#).await;
    assert_eq!(io.stats().invalid_namespaces.load(Ordering::Relaxed), 1);
}

#[tokio::test]
async fn connect_handler_can_refuse_with_message_and_data() {
    let io = SocketIo::new(Hub::default(), SocketIoOptions::default());
    io.namespace("/private", |socket| async move {
        let query_ok = socket.handshake().query.contains("room=blue");
        match socket.auth().get("token").and_then(Value::as_str) {
            Some("secret") if query_ok => Ok(()),
            _ => Err(ConnectError::new("Not authorized").with_data(json!({"code": 7}))),
        }
    });
    let mut c = Client::open(&io);
    c.send(r#"40/private,{"token":"nope"}"#).await;
    c.expect(r#"44/private,{"message":"Not authorized","data":{"code":7}}"#)
        .await;
    assert!(!c.t.sender.is_closed());
    // refused is not joined: a retry is a CONNECT again, not a second one
    c.connect(r#"40/private,{"token":"secret"}"#).await;
    assert_eq!(io.stats().rejected.load(Ordering::Relaxed), 1);
    assert_eq!(io.stats().sockets.load(Ordering::Relaxed), 1);
}

#[tokio::test]
async fn namespaces_are_multiplexed_and_left_one_by_one() {
    let io = conformance();
    let mut c = Client::open(&io);
    let main = sid(&c.connect("40").await);
    c.expect(r#"42["auth",{}]"#).await;
    let custom = sid(&c.connect("40/custom").await);
    c.expect(r#"42/custom,["auth",{}]"#).await;
    assert_ne!(main, custom);

    c.send(r#"42/custom,["message","to custom"]"#).await;
    c.expect(r#"42/custom,["message-back","to custom"]"#).await;
    c.send("41/custom").await;
    c.send(r#"42["message","message to main namespace"]"#).await;
    c.expect(r#"42["message-back","message to main namespace"]"#)
        .await;
    // /custom is left: an event for it is a protocol violation
    c.send(r#"42/custom,["message","x"]"#).await;
    assert!(matches!(c.closed().await, CloseReason::ParseError(_)));
}

/// Tasks alive on the test's runtime (the test's own included).
fn alive_tasks() -> usize {
    tokio::runtime::Handle::current()
        .metrics()
        .num_alive_tasks()
}

#[tokio::test]
async fn a_connection_in_two_namespaces_is_served_by_one_task_that_delivers_both() {
    let io = SocketIo::new(Hub::default(), SocketIoOptions::default());
    let mut main = capture(&io, "/");
    let mut chat = capture(&io, "/chat");
    let before = alive_tasks();
    let mut c = Client::open(&io);
    c.connect("40").await;
    c.connect("40/chat").await;
    let (main, chat) = (next_socket(&mut main).await, next_socket(&mut chat).await);
    assert_eq!(
        alive_tasks() - before,
        1,
        "the connection's packets and both sockets' hub messages: one task"
    );
    // A burst to both namespaces, queued while the connection's task waits, goes out in order
    // per socket.
    let hub = io.hub().clone();
    for i in 0..3 {
        hub.publish(&room_topic("/", main.id()), "m", json!(i), None)
            .unwrap();
        hub.publish(&room_topic("/chat", chat.id()), "c", json!(i), None)
            .unwrap();
    }
    let mut got = Vec::new();
    for _ in 0..6 {
        got.push(c.text().await);
    }
    let of = |prefix: &str| -> Vec<String> {
        got.iter()
            .filter(|t| t.starts_with(prefix))
            .cloned()
            .collect()
    };
    assert_eq!(of("42["), [r#"42["m",0]"#, r#"42["m",1]"#, r#"42["m",2]"#]);
    assert_eq!(
        of("42/chat,"),
        [
            r#"42/chat,["c",0]"#,
            r#"42/chat,["c",1]"#,
            r#"42/chat,["c",2]"#
        ]
    );
}

/// The deliveries' future ends with the connection (it does not wait on the close itself: the
/// packets' future tells it, once the sockets are gone), so the connection's task ends.
#[tokio::test]
async fn a_closed_connections_task_ends_with_its_deliveries() {
    let io = SocketIo::new(Hub::default(), SocketIoOptions::default());
    let mut main = capture(&io, "/");
    let before = alive_tasks();
    let mut c = Client::open(&io);
    c.connect("40").await;
    let socket = next_socket(&mut main).await;
    io.hub()
        .publish(&room_topic("/", socket.id()), "m", json!(1), None)
        .unwrap();
    c.expect(r#"42["m",1]"#).await;
    assert_eq!(alive_tasks() - before, 1);
    c.t.sender.close(CloseReason::TransportClose);
    tokio::time::timeout(WAIT, async {
        while alive_tasks() > before {
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("the connection's task ended");
    assert!(!socket.connected());
}

#[tokio::test]
async fn a_backlog_larger_than_the_delivery_budget_all_goes_out_in_order() {
    let io = SocketIo::new(Hub::default(), SocketIoOptions::default());
    let mut main = capture(&io, "/");
    let mut c = Client::open_with(&io, 4096);
    c.connect("40").await;
    let socket = next_socket(&mut main).await;
    let n = 3 * super::state::DELIVERY_BUDGET + 7;
    for i in 0..n {
        io.hub()
            .publish(&room_topic("/", socket.id()), "m", json!(i), None)
            .unwrap();
    }
    for i in 0..n {
        assert_eq!(c.text().await, format!(r#"42["m",{i}]"#));
    }
    // and the connection still answers its client afterwards
    c.send(r#"42["nothing",1]"#).await;
    c.quiet().await;
}

/// A request to an Engine.IO server, as the gateway hands it over.
fn engine_request(
    method: http::Method,
    query: &str,
    body: &str,
    upgrade: bool,
) -> crate::seam::Request {
    let mut builder = http::Request::builder()
        .method(method)
        .uri(format!("/socket.io/?{query}"));
    if upgrade {
        builder = builder
            .header("upgrade", "websocket")
            .header("connection", "Upgrade")
            .header("sec-websocket-version", "13")
            .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==");
    }
    let (head, ()) = builder.body(()).expect("valid request").into_parts();
    let mut req = crate::seam::Request::new(head);
    req.body = crate::seam::Body::from_bytes(Bytes::from(body.to_owned()));
    req
}

async fn engine_text(
    engine: &EngineServer,
    method: http::Method,
    query: &str,
    body: &str,
) -> String {
    match engine
        .call(engine_request(method, query, body, false))
        .await
    {
        crate::seam::Response::Full(resp) => {
            String::from_utf8(resp.into_body().to_vec()).expect("utf-8 body")
        }
        _ => panic!("expected a full response"),
    }
}

type EngineWs = tokio_tungstenite::WebSocketStream<tokio::io::DuplexStream>;

/// A WebSocket to `engine`, its server side run in a task of its own as the gateway runs it.
async fn engine_ws(engine: &EngineServer, query: &str) -> EngineWs {
    let crate::seam::Response::Upgrade { on_upgrade, .. } = engine
        .call(engine_request(http::Method::GET, query, "", true))
        .await
    else {
        panic!("expected an upgrade");
    };
    let (client, server) = tokio::io::duplex(64 * 1024);
    tokio::spawn(on_upgrade(Box::new(server)));
    tokio_tungstenite::WebSocketStream::from_raw_socket(
        client,
        tokio_tungstenite::tungstenite::protocol::Role::Client,
        None,
    )
    .await
}

async fn ws_text(ws: &mut EngineWs) -> String {
    use futures_util::StreamExt;
    loop {
        match tokio::time::timeout(WAIT, ws.next()).await {
            Ok(Some(Ok(tokio_tungstenite::tungstenite::Message::Text(t)))) => return t.to_string(),
            Ok(Some(Ok(_))) => continue,
            other => panic!("no text frame: {other:?}"),
        }
    }
}

async fn ws_send(ws: &mut EngineWs, text: &str) {
    use futures_util::SinkExt;
    ws.send(tokio_tungstenite::tungstenite::Message::text(text))
        .await
        .expect("sent");
}

#[tokio::test]
async fn an_engine_io_session_is_one_task_on_websocket_on_polling_and_once_upgraded() {
    let io = SocketIo::new(Hub::default(), SocketIoOptions::default());
    let mut main = capture(&io, "/");
    let engine = EngineServer::new(EngineConfig::default(), Arc::new(io.clone()));
    let hub = io.hub().clone();
    let base = alive_tasks();

    // On a WebSocket: the connection's task (the gateway's, here the test's spawn) is all.
    let mut ws = engine_ws(&engine, "EIO=4&transport=websocket").await;
    assert!(ws_text(&mut ws).await.starts_with("0{"));
    ws_send(&mut ws, "40").await;
    assert!(ws_text(&mut ws).await.starts_with("40{"));
    let socket = next_socket(&mut main).await;
    eventually(|| alive_tasks() - base == 1).await;
    hub.publish(&room_topic("/", socket.id()), "hi", json!(1), None)
        .unwrap();
    assert_eq!(ws_text(&mut ws).await, r#"42["hi",1]"#);
    drop(ws);
    eventually(|| alive_tasks() == base).await;

    // On polling: the session's task; each request runs in its caller's.
    let open = engine_text(&engine, http::Method::GET, "EIO=4&transport=polling", "").await;
    let open: Value = serde_json::from_str(&open[1..]).expect("open packet");
    let sid = open["sid"].as_str().expect("sid").to_owned();
    let polling = format!("EIO=4&transport=polling&sid={sid}");
    assert_eq!(
        engine_text(&engine, http::Method::POST, &polling, "40").await,
        "ok"
    );
    assert!(engine_text(&engine, http::Method::GET, &polling, "")
        .await
        .starts_with("40{"));
    let socket = next_socket(&mut main).await;
    assert_eq!(alive_tasks() - base, 1);

    // Upgraded: the WebSocket is handed to the session's task; the upgrade's own task ends.
    let mut ws = engine_ws(&engine, &format!("EIO=4&transport=websocket&sid={sid}")).await;
    ws_send(&mut ws, "2probe").await;
    assert_eq!(ws_text(&mut ws).await, "3probe");
    ws_send(&mut ws, "5").await;
    eventually(|| alive_tasks() - base == 1).await;
    hub.publish(&room_topic("/", socket.id()), "up", json!(2), None)
        .unwrap();
    assert_eq!(ws_text(&mut ws).await, r#"42["up",2]"#);
    assert_eq!(alive_tasks() - base, 1);
    drop(ws);
    eventually(|| alive_tasks() == base).await;
}

// ---- events and acks ----

#[tokio::test]
async fn plain_event_round_trip() {
    let io = conformance();
    let mut c = Client::open(&io);
    c.connect("40").await;
    c.expect(r#"42["auth",{}]"#).await;
    c.send(r#"42["message",1,"2",{"3":[true]}]"#).await;
    c.expect(r#"42["message-back",1,"2",{"3":[true]}]"#).await;
}

#[tokio::test]
async fn binary_event_round_trip() {
    let io = conformance();
    let mut c = Client::open(&io);
    c.connect("40").await;
    c.expect(r#"42["auth",{}]"#).await;
    c.send(r#"452-["message",{"_placeholder":true,"num":0},{"_placeholder":true,"num":1}]"#)
        .await;
    c.send_bin(&[1, 2, 3]).await;
    c.send_bin(&[4, 5, 6]).await;
    c.expect(r#"452-["message-back",{"_placeholder":true,"num":0},{"_placeholder":true,"num":1}]"#)
        .await;
    c.expect_bin(&[1, 2, 3]).await;
    c.expect_bin(&[4, 5, 6]).await;
}

#[tokio::test]
async fn client_acks_plain_and_binary() {
    let io = conformance();
    let mut c = Client::open(&io);
    c.connect("40").await;
    c.expect(r#"42["auth",{}]"#).await;
    c.send(r#"42456["message-with-ack",1,"2",{"3":[false]}]"#)
        .await;
    c.expect(r#"43456[1,"2",{"3":[false]}]"#).await;
    c.send(r#"452-789["message-with-ack",{"_placeholder":true,"num":0},{"_placeholder":true,"num":1}]"#)
        .await;
    c.send_bin(&[1, 2, 3]).await;
    c.send_bin(&[4, 5, 6]).await;
    c.expect(r#"462-789[{"_placeholder":true,"num":0},{"_placeholder":true,"num":1}]"#)
        .await;
    c.expect_bin(&[1, 2, 3]).await;
    c.expect_bin(&[4, 5, 6]).await;
}

#[tokio::test]
async fn server_acks_resolve_time_out_and_fail_on_disconnect() {
    let io = SocketIo::new(Hub::default(), SocketIoOptions::default());
    let mut sockets = capture(&io, "/");
    let mut c = Client::open(&io);
    c.connect("40").await;
    let socket = next_socket(&mut sockets).await;

    let answer = socket.emit_with_ack("ping", json!([1]), WAIT);
    c.expect(r#"420["ping",1]"#).await;
    c.send(r#"430["pong",{"a":true}]"#).await;
    assert_eq!(answer.await, Ok(Args::from(json!(["pong", {"a": true}]))));

    // binary answer, and binary arguments out
    let answer = socket.emit_with_ack("file", Args::new().arg("x").binary(&b"\x09"[..]), WAIT);
    c.expect(r#"451-1["file","x",{"_placeholder":true,"num":0}]"#)
        .await;
    c.expect_bin(&[9]).await;
    c.send(r#"461-1[{"_placeholder":true,"num":0}]"#).await;
    c.send_bin(&[7, 7]).await;
    let got = answer.await.unwrap();
    assert_eq!(got.values, [placeholder(0)]);
    assert_eq!(got.binaries, [Bytes::from_static(&[7, 7])]);

    // an unknown ack id is ignored
    c.send(r#"4399[]"#).await;

    let answer = socket.emit_with_ack("late", (), Duration::from_millis(20));
    c.expect(r#"422["late"]"#).await;
    assert_eq!(
        answer.await,
        Err(AckError::Timeout(Duration::from_millis(20)))
    );

    let answer = socket.emit_with_ack("never", (), WAIT);
    c.expect(r#"423["never"]"#).await;
    socket.disconnect();
    c.expect("41").await;
    assert_eq!(answer.await, Err(AckError::Disconnected));
    assert_eq!(socket.emit("after", ()), Err(EmitError::Disconnected));
}

#[tokio::test]
async fn reserved_names_cannot_be_emitted() {
    let io = SocketIo::new(Hub::default(), SocketIoOptions::default());
    let mut sockets = capture(&io, "/");
    let mut c = Client::open(&io);
    c.connect("40").await;
    let socket = next_socket(&mut sockets).await;
    assert_eq!(
        socket.emit("disconnect", ()),
        Err(EmitError::ReservedEvent("disconnect".into()))
    );
    assert!(socket.namespace().emit("connect", ()).await.is_err());
    c.quiet().await;
}

// ---- protocol violations and lifecycle ----

#[tokio::test]
async fn invalid_packets_close_the_connection() {
    let io = conformance();
    for bad in [
        "4abc",
        "42{}",
        r#"42abc["message-with-ack",1]"#,
        r#"42["disconnect"]"#,
    ] {
        let mut c = Client::open(&io);
        c.connect("40").await;
        c.expect(r#"42["auth",{}]"#).await;
        c.send(bad).await;
        assert!(
            matches!(c.closed().await, CloseReason::ParseError(_)),
            "{bad}"
        );
    }
    // before any CONNECT too, and a binary frame nobody announced
    let c = Client::open(&io);
    c.send("4abc").await;
    assert!(matches!(c.closed().await, CloseReason::ParseError(_)));
    let c = Client::open(&io);
    c.send_bin(&[1]).await;
    assert!(matches!(c.closed().await, CloseReason::ParseError(_)));
    assert_eq!(io.stats().protocol_errors.load(Ordering::Relaxed), 6);
}

#[tokio::test]
async fn a_packet_before_connect_closes_the_connection() {
    let io = conformance();
    let c = Client::open(&io);
    c.send(r#"42["message",1]"#).await;
    assert!(matches!(c.closed().await, CloseReason::ParseError(_)));
}

#[tokio::test]
async fn second_connect_to_a_joined_namespace_closes_the_connection() {
    let io = conformance();
    let mut c = Client::open(&io);
    c.connect("40").await;
    c.expect(r#"42["auth",{}]"#).await;
    c.send("40").await;
    assert!(matches!(c.closed().await, CloseReason::ParseError(_)));
}

#[tokio::test]
async fn client_disconnect_leaves_the_namespace_only() {
    let io = SocketIo::new(Hub::default(), SocketIoOptions::default());
    let reasons = Arc::new(Mutex::new(Vec::new()));
    let seen = Arc::clone(&reasons);
    io.namespace("/", move |socket| {
        let seen = Arc::clone(&seen);
        socket.on_disconnect(move |_, reason| seen.lock().unwrap().push(reason.to_string()));
        std::future::ready(Ok(()))
    });
    let mut c = Client::open(&io);
    c.connect("40").await;
    c.send("41").await;
    eventually(|| reasons.lock().unwrap().len() == 1).await;
    assert_eq!(reasons.lock().unwrap()[0], "client namespace disconnect");
    assert!(!c.t.sender.is_closed());
    c.quiet().await;
    // and may join again
    c.connect("40").await;
    drop(c);
    eventually(|| reasons.lock().unwrap().len() == 2).await;
    assert_eq!(reasons.lock().unwrap()[1], "transport close");
    eventually(|| io.stats().connections.load(Ordering::Relaxed) == 0).await;
    assert_eq!(io.stats().sockets.load(Ordering::Relaxed), 0);
}

#[tokio::test]
async fn server_disconnect_sends_disconnect_for_the_namespace() {
    let io = SocketIo::new(Hub::default(), SocketIoOptions::default());
    let mut main = capture(&io, "/");
    let mut admin = capture(&io, "/admin");
    let mut c = Client::open(&io);
    c.connect("40").await;
    c.connect("40/admin,").await;
    let main_socket = next_socket(&mut main).await;
    let admin_socket = next_socket(&mut admin).await;
    admin_socket.disconnect();
    c.expect("41/admin,").await;
    assert!(!c.t.sender.is_closed());
    assert!(io.of("/admin").unwrap().sockets().is_empty());
    main_socket.disconnect_and_close();
    c.expect("41").await;
    assert_eq!(c.closed().await, CloseReason::ServerClose);
}

/// Real (short) time: the crate's tokio has no `test-util` to pause it.
#[tokio::test]
async fn connect_timeout_closes_a_silent_connection() {
    assert_eq!(
        SocketIoOptions::default().connect_timeout,
        Duration::from_millis(45_000)
    );
    let timeout = Duration::from_millis(200);
    let io = SocketIo::new(
        Hub::default(),
        SocketIoOptions {
            connect_timeout: timeout,
            ..SocketIoOptions::default()
        },
    );
    capture(&io, "/");
    let start = tokio::time::Instant::now();
    let silent = Client::open(&io);
    let mut joined = Client::open(&io);
    joined.connect("40").await;
    assert_eq!(silent.closed().await, CloseReason::ServerClose);
    let waited = start.elapsed();
    assert!(waited >= timeout && waited < timeout * 5, "{waited:?}");
    tokio::time::sleep(timeout * 2).await;
    assert!(!joined.t.sender.is_closed());
    assert_eq!(io.stats().connect_timeouts.load(Ordering::Relaxed), 1);

    // the conformance setting (the suite waits for this close)
    let io = conformance();
    let start = tokio::time::Instant::now();
    let silent = Client::open(&io);
    silent.closed().await;
    assert!(start.elapsed() >= CONFORMANCE_CONNECT_TIMEOUT);
}

#[tokio::test]
async fn a_client_that_does_not_read_is_closed_as_slow_consumer() {
    let io = SocketIo::new(Hub::default(), SocketIoOptions::default());
    let mut sockets = capture(&io, "/");
    let mut c = Client::open_with(&io, 4);
    c.connect("40").await;
    let socket = next_socket(&mut sockets).await;
    let mut failed = None;
    for i in 0..10 {
        if let Err(e) = socket.emit("tick", json!([i])) {
            failed = Some(e);
            break;
        }
    }
    assert_eq!(failed, Some(EmitError::SlowConsumer));
    assert_eq!(c.closed().await, CloseReason::SlowConsumer);
    assert_eq!(io.stats().slow_consumers.load(Ordering::Relaxed), 1);

    // the same through the hub (room broadcasts are delivered by a reader)
    let mut c = Client::open_with(&io, 4);
    c.connect("40").await;
    let _socket = next_socket(&mut sockets).await;
    let ns = io.of("/").unwrap();
    for i in 0..10 {
        ns.emit("tick", json!([i])).await.unwrap();
    }
    assert_eq!(c.closed().await, CloseReason::SlowConsumer);
    assert_eq!(io.stats().slow_consumers.load(Ordering::Relaxed), 2);
}

// ---- rooms and broadcasts ----

/// Three clients in `/`: A in rooms r1 and r2, B in r1, C in none.
async fn three_clients(io: &SocketIo) -> ([Client; 3], [Socket; 3]) {
    let mut rx = capture(io, "/");
    let mut clients = Vec::new();
    let mut sockets = Vec::new();
    for _ in 0..3 {
        let mut c = Client::open(io);
        c.connect("40").await;
        clients.push(c);
        sockets.push(next_socket(&mut rx).await);
    }
    sockets[0].join("r1").unwrap();
    sockets[0].join("r2").unwrap();
    sockets[1].join("r1").unwrap();
    let clients: [Client; 3] = clients.try_into().unwrap_or_else(|_| unreachable!());
    let sockets: [Socket; 3] = sockets.try_into().unwrap_or_else(|_| unreachable!());
    (clients, sockets)
}

#[tokio::test]
async fn broadcasts_to_rooms_once_except_and_without_the_sender() {
    let io = SocketIo::new(Hub::default(), SocketIoOptions::default());
    let ([mut a, mut b, mut c], [sa, sb, sc]) = three_clients(&io).await;
    let ns = io.of("/").unwrap();
    assert_eq!(sa.rooms().into_iter().collect::<Vec<_>>(), {
        let mut v = vec!["r1".to_owned(), "r2".to_owned(), sa.id().to_owned()];
        v.sort();
        v
    });

    // union, and A (in both) gets it once
    let positions = ns.to("r1").to("r2").emit("ev", json!([1])).await.unwrap();
    assert_eq!(positions.len(), 2);
    a.expect(r#"42["ev",1]"#).await;
    b.expect(r#"42["ev",1]"#).await;
    c.quiet().await;
    a.quiet().await;

    // except
    ns.to("r1")
        .except("r2")
        .emit("ev", json!([2]))
        .await
        .unwrap();
    b.expect(r#"42["ev",2]"#).await;
    ns.except("r1").emit("ev", json!([3])).await.unwrap();
    c.expect(r#"42["ev",3]"#).await;
    a.quiet().await;
    b.quiet().await;

    // the sender is left out
    sa.broadcast().emit("ev", json!([4])).await.unwrap();
    b.expect(r#"42["ev",4]"#).await;
    c.expect(r#"42["ev",4]"#).await;
    sa.to("r1").emit("ev", json!([5])).await.unwrap();
    b.expect(r#"42["ev",5]"#).await;
    sb.to("r1")
        .except("r2")
        .emit("ev", json!([6]))
        .await
        .unwrap();
    a.quiet().await;
    b.quiet().await;
    c.quiet().await;

    // each socket is in the room named by its id
    ns.to(sc.id()).emit("ev", json!([7])).await.unwrap();
    c.expect(r#"42["ev",7]"#).await;
    assert_eq!(ns.to("r1").sockets().len(), 2);

    // leave
    assert!(sa.leave("r1"));
    assert!(!sa.leave("r1"));
    ns.to("r1").emit("ev", json!([8])).await.unwrap();
    b.expect(r#"42["ev",8]"#).await;
    a.quiet().await;
}

#[tokio::test]
async fn app_publishes_to_a_room_topic_reach_its_sockets() {
    let io = SocketIo::new(Hub::default(), SocketIoOptions::default());
    let ([mut a, mut b, mut c], _) = three_clients(&io).await;
    let hub = io.hub().clone();
    let topic = room_topic("/", "r1");
    assert_eq!(topic, "r1", "rooms of the main namespace are plain topics");

    hub.publish(&topic, "news", json!({"a": 1}), None).unwrap();
    a.expect(r#"42["news",{"a":1}]"#).await;
    b.expect(r#"42["news",{"a":1}]"#).await;
    hub.publish(&topic, "pair", json!([1, "two"]), None)
        .unwrap();
    a.expect(r#"42["pair",1,"two"]"#).await;
    b.expect(r#"42["pair",1,"two"]"#).await;
    // no event name: "message"; a reserved one is not delivered
    hub.publish(&topic, "", json!("hi"), None).unwrap();
    hub.publish(&topic, "disconnect", json!(null), None)
        .unwrap();
    a.expect(r#"42["message","hi"]"#).await;
    b.expect(r#"42["message","hi"]"#).await;
    // binary attachments
    let payload = Payload::new("blob", json!([placeholder(0)]))
        .with_attachments(vec![Bytes::from_static(&[0xff])]);
    hub.publish_payload(&topic, payload, None).unwrap();
    a.expect(r#"451-["blob",{"_placeholder":true,"num":0}]"#)
        .await;
    a.expect_bin(&[0xff]).await;
    b.expect(r#"451-["blob",{"_placeholder":true,"num":0}]"#)
        .await;
    b.expect_bin(&[0xff]).await;
    c.quiet().await;
    // the namespace topic reaches everyone
    hub.publish(&namespace_topic("/"), "all", json!(null), None)
        .unwrap();
    for client in [&mut a, &mut b, &mut c] {
        client.expect(r#"42["all",null]"#).await;
    }
}

#[tokio::test]
async fn a_payload_leaving_rooms_out_skips_their_sockets_and_moves_on() {
    let io = SocketIo::new(Hub::default(), SocketIoOptions::default());
    let ([mut a, mut b, mut c], [sa, _, _]) = three_clients(&io).await;
    let hub = io.hub().clone();
    // Laravel's toOthers(): everyone on the topic but the sender, named by its id.
    let payload =
        Payload::new("shipped", json!(["r1", {"id": 1}])).with_except(vec![sa.id().to_owned()]);
    hub.publish_payload("r1", payload, None).unwrap();
    b.expect(r#"42["shipped","r1",{"id":1}]"#).await;
    a.quiet().await;
    // A room of the socket's own: r2 (a is in it), on the namespace topic.
    let payload = Payload::new("all-but-r2", json!([])).with_except(vec!["r2".into()]);
    hub.publish_payload(&namespace_topic("/"), payload, None)
        .unwrap();
    b.expect(r#"42["all-but-r2"]"#).await;
    c.expect(r#"42["all-but-r2"]"#).await;
    a.quiet().await;
    // What follows reaches a as before.
    hub.publish("r1", "next", json!([1]), None).unwrap();
    a.expect(r#"42["next",1]"#).await;
    b.expect(r#"42["next",1]"#).await;
}

#[tokio::test]
async fn local_operations_on_this_servers_sockets() {
    let io = SocketIo::new(Hub::default(), SocketIoOptions::default());
    let ([mut a, mut b, mut c], [sa, sb, sc]) = three_clients(&io).await;
    let ns = io.of("/").unwrap();
    // A local emit is written to the sockets directly: no hub position, no topic created.
    let positions = ns
        .to("r1")
        .except("r2")
        .local()
        .emit("direct", Args::new().arg("x").binary(&b"\x01"[..]))
        .await
        .unwrap();
    assert!(positions.is_empty());
    b.expect(r#"451-["direct","x",{"_placeholder":true,"num":0}]"#)
        .await;
    b.expect_bin(&[1]).await;
    a.quiet().await;
    c.quiet().await;
    // fetchSockets, socketsJoin, socketsLeave, allRooms, on this server (no peers).
    let fetched = ns.to("r1").fetch_sockets().await.unwrap();
    let mut ids: Vec<&str> = fetched.iter().map(|s| s.id.as_str()).collect();
    ids.sort();
    let mut want = vec![sa.id(), sb.id()];
    want.sort();
    assert_eq!(ids, want);
    let info = fetched.iter().find(|s| s.id == sa.id()).unwrap();
    assert!(info.rooms.contains(&"r2".to_owned()));
    assert_eq!(info.handshake["query"]["room"], "blue");
    assert_eq!(info.data, json!({}));
    ns.to("r2").sockets_join(&["r3".to_owned()]);
    ns.broadcast().sockets_join(&["everyone".to_owned()]);
    ns.to("r1").sockets_leave(&["r1".to_owned()]);
    let rooms = ns.all_rooms().await.unwrap();
    assert!(rooms.contains("r3") && rooms.contains("everyone") && !rooms.contains("r1"));
    assert!(rooms.contains(sc.id()));
    assert_eq!(ns.to("everyone").sockets().len(), 3);
    // disconnectSockets: the selected ones leave the namespace.
    ns.to("r3").disconnect_sockets(false);
    a.expect("41").await;
    eventually(|| ns.sockets().len() == 2).await;
    // Acks without peers: this server's sockets only, by id.
    let answers = ns
        .to("everyone")
        .emit_with_ack("ask", (), Duration::from_millis(50));
    let answers = answers.await;
    assert!(answers.incomplete.is_none());
    assert_eq!(answers.answers.len(), 2);
    assert!(answers
        .answers
        .iter()
        .all(|x| x.socket.is_some() && x.answer.is_err()));
    b.text().await;
    c.text().await;
}

#[tokio::test]
async fn custom_namespace_events_carry_the_namespace() {
    let io = SocketIo::new(Hub::default(), SocketIoOptions::default());
    let mut rx = capture(&io, "/chat");
    let mut c = Client::open(&io);
    c.connect("40/chat,").await;
    let socket = next_socket(&mut rx).await;
    socket.emit("hello", json!(["w"])).unwrap();
    c.expect(r#"42/chat,["hello","w"]"#).await;
    io.hub()
        .publish(&room_topic("/chat", socket.id()), "direct", json!(1), None)
        .unwrap();
    c.expect(r#"42/chat,["direct",1]"#).await;

    // rooms are per namespace
    let mut main_rx = capture(&io, "/");
    c.connect("40").await;
    let main = next_socket(&mut main_rx).await;
    main.join("r").unwrap();
    socket.join("r").unwrap();
    io.of("/")
        .unwrap()
        .to("r")
        .emit("x", json!([1]))
        .await
        .unwrap();
    c.expect(r#"42["x",1]"#).await;
    io.of("/chat")
        .unwrap()
        .to("r")
        .emit("x", json!([2]))
        .await
        .unwrap();
    c.expect(r#"42/chat,["x",2]"#).await;
    c.quiet().await;
}

#[tokio::test]
async fn numeric_event_names_reach_handlers_as_text() {
    let io = SocketIo::new(Hub::default(), SocketIoOptions::default());
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = Arc::clone(&seen);
    io.namespace("/", move |socket| {
        let log = Arc::clone(&log);
        socket.on_fallback(move |_, event, _| log.lock().unwrap().push(event));
        std::future::ready(Ok(()))
    });
    let mut c = Client::open(&io);
    c.connect("40").await;
    c.send(r#"42[42,"x"]"#).await;
    eventually(|| seen.lock().unwrap().len() == 1).await;
    assert_eq!(
        seen.lock().unwrap()[0],
        Event {
            name: "42".into(),
            args: Args::from(json!(["x"])),
        }
    );
}

// ---- behaviours ----

fn behaviour_io(b: NamespaceBehaviour) -> SocketIo {
    let io = SocketIo::new(Hub::default(), SocketIoOptions::default());
    install_behaviour(&io, "/", b);
    io
}

#[tokio::test]
async fn relay_broadcasts_to_others_and_acks_the_seq() {
    let io = behaviour_io(NamespaceBehaviour {
        relay: true,
        ..Default::default()
    });
    let mut a = Client::open(&io);
    let mut b = Client::open(&io);
    let mut c = Client::open(&io);
    for client in [&mut a, &mut b, &mut c] {
        client.connect("40").await;
    }
    a.send(r#"421["chat","hi"]"#).await;
    a.expect(r#"431[{"seq":1}]"#).await;
    b.expect(r#"42["chat","hi"]"#).await;
    c.expect(r#"42["chat","hi"]"#).await;
    b.send(r#"42["chat","yo"]"#).await;
    a.expect(r#"42["chat","yo"]"#).await;
    c.expect(r#"42["chat","yo"]"#).await;
    c.send(r#"4255["chat","again"]"#).await;
    c.expect(r#"4355[{"seq":3}]"#).await;
    a.expect(r#"42["chat","again"]"#).await;
    b.expect(r#"42["chat","again"]"#).await;
    // binary is relayed as is
    a.send(r#"451-["file",{"_placeholder":true,"num":0}]"#)
        .await;
    a.send_bin(&[1, 2]).await;
    b.expect(r#"451-["file",{"_placeholder":true,"num":0}]"#)
        .await;
    b.expect_bin(&[1, 2]).await;
    a.quiet().await;
    // join/leave are plain events without client rooms
    a.send(r#"42["join","r"]"#).await;
    b.expect(r#"42["join","r"]"#).await;
}

#[tokio::test]
async fn history_is_replayed_to_a_late_joiner_before_live_events() {
    let io = behaviour_io(NamespaceBehaviour {
        relay: true,
        history: 2,
        client_rooms: false,
        ..NamespaceBehaviour::default()
    });
    let mut a = Client::open(&io);
    a.connect("40").await;
    for i in 1..=3 {
        a.send(&format!(r#"42["chat",{i}]"#)).await;
    }
    // wait until the three are in the hub
    eventually(|| {
        io.hub()
            .topic_info(&namespace_topic("/"))
            .is_some_and(|t| t.position.seq == 3)
    })
    .await;
    let mut late = Client::open(&io);
    late.connect("40").await;
    late.expect(r#"42["chat",2]"#).await;
    late.expect(r#"42["chat",3]"#).await;
    a.send(r#"42["chat",4]"#).await;
    late.expect(r#"42["chat",4]"#).await;
    late.quiet().await;
    a.quiet().await;
}

#[tokio::test]
async fn client_rooms_join_leave_and_scope_the_relay() {
    let io = behaviour_io(NamespaceBehaviour {
        relay: true,
        history: 1,
        client_rooms: true,
        ..NamespaceBehaviour::default()
    });
    let mut a = Client::open(&io);
    let mut b = Client::open(&io);
    let mut c = Client::open(&io);
    for client in [&mut a, &mut b, &mut c] {
        client.connect("40").await;
    }
    a.send(r#"421["join","room1"]"#).await;
    a.expect(r#"431[{"ok":true,"room":"room1"}]"#).await;
    b.send(r#"422["join","room1"]"#).await;
    b.expect(r#"432[{"ok":true,"room":"room1"}]"#).await;

    a.send(r#"423["chat","in room1"]"#).await;
    a.expect(r#"433[{"seq":1}]"#).await;
    b.expect(r#"42["chat","in room1"]"#).await;
    c.quiet().await;

    // a late room joiner gets the room's history (1)
    c.send(r#"42["join","room1"]"#).await;
    c.expect(r#"42["chat","in room1"]"#).await;

    // several rooms: once per socket, seqs per room
    a.send(r#"424["join","room2"]"#).await;
    a.expect(r#"434[{"ok":true,"room":"room2"}]"#).await;
    a.send(r#"425["chat","both"]"#).await;
    a.expect(r#"435[{"seq":2,"rooms":{"room1":2,"room2":1}}]"#)
        .await;
    b.expect(r#"42["chat","both"]"#).await;
    c.expect(r#"42["chat","both"]"#).await;
    b.quiet().await;

    // leave
    b.send(r#"426["leave","room1"]"#).await;
    b.expect(r#"436[{"ok":true,"room":"room1"}]"#).await;
    // b is in no client room now: its relay goes namespace-wide
    b.send(r#"42["chat","from b"]"#).await;
    a.expect(r#"42["chat","from b"]"#).await;
    c.expect(r#"42["chat","from b"]"#).await;

    // refusals
    a.send(r#"427["join",5]"#).await;
    a.expect(r#"437[{"ok":false,"error":"room name must be a string"}]"#)
        .await;
    a.send(r#"428["join","AAAAAAAAAAAAAAAAAAAA"]"#).await;
    a.expect(r#"438[{"ok":false,"room":"AAAAAAAAAAAAAAAAAAAA","error":"reserved room name"}]"#)
        .await;
    a.send(r#"429["join",""]"#).await;
    a.expect(r#"439[{"ok":false,"room":"","error":"empty room name"}]"#)
        .await;
}

// ---- the app's word: connect, private rooms, relay ----

/// The app's side of the callbacks, in process: `token: ann` is Ann (put in
/// `private-ann` at once), anything else is refused with the app's reason;
/// of the private rooms only `private-ok` (naming a member) and `presence-ok`
/// (naming none) are granted.
#[derive(Default)]
struct App {
    payloads: Mutex<Vec<Value>>,
    asked_rooms: Mutex<Vec<(String, String)>>,
}

#[async_trait::async_trait]
impl crate::access::Authorizer for App {
    fn checks_connect(&self) -> bool {
        true
    }
    async fn connect(
        &self,
        _client: &crate::access::ClientInfo,
        auth: Option<&Value>,
    ) -> Result<crate::access::Identity, crate::access::Refusal> {
        let auth = auth.cloned().unwrap_or(Value::Null);
        self.payloads.lock().expect("lock").push(auth.clone());
        match auth["token"].as_str() {
            Some("ann") => Ok(crate::access::Identity {
                user_id: Some(json!(7)),
                user_info: json!({"name": "Ann"}),
                rooms: vec!["private-ann".into()],
            }),
            _ => Err(crate::access::Refusal::denied(403, "who are you?")),
        }
    }
    async fn subscribe(
        &self,
        _client: &crate::access::ClientInfo,
        identity: &crate::access::Identity,
        socket_id: &str,
        topic: &str,
    ) -> Result<crate::access::Grant, crate::access::Refusal> {
        assert_eq!(identity.user_id, Some(json!(7)));
        self.asked_rooms
            .lock()
            .expect("lock")
            .push((topic.to_owned(), socket_id.to_owned()));
        match topic {
            "private-ok" => Ok(crate::access::Grant {
                member: Some(crate::access::Member {
                    user_id: json!(7),
                    user_info: json!({"name": "Ann"}),
                }),
            }),
            "presence-ok" => Ok(crate::access::Grant::default()),
            _ => Err(crate::access::Refusal::denied(403, "not your room")),
        }
    }
}

fn guarded_io(app: Arc<App>, hub: Hub) -> (SocketIo, mpsc::UnboundedReceiver<Socket>) {
    let policy = crate::access::Policy {
        client_publish: vec![crate::access::Pattern::new("open-*").expect("pattern")],
        ..crate::access::Policy::default()
    };
    let io = SocketIo::with_access(
        hub,
        SocketIoOptions::default(),
        crate::access::Access::new(policy, Some(app)),
    );
    let behaviour = NamespaceBehaviour {
        relay: true,
        history: 10,
        client_rooms: true,
        ..NamespaceBehaviour::default()
    };
    let (tx, rx) = mpsc::unbounded_channel();
    io.namespace("/", move |socket| {
        crate::socketio::attach(&socket, &behaviour);
        let _ = tx.send(socket);
        std::future::ready(Ok(()))
    })
    .set_connect_history(10);
    (io, rx)
}

#[tokio::test]
async fn the_app_refuses_a_connect_with_its_reason_and_never_sees_the_session_secret() {
    let app = Arc::new(App::default());
    let (io, _sockets) = guarded_io(app.clone(), Hub::default());
    let mut c = Client::open(&io);
    c.send(r#"40{"token":"eve","pid":"secret","offset":"3"}"#)
        .await;
    c.expect(r#"44{"message":"who are you?","data":{"status":403}}"#)
        .await;
    // The connection stays, and a later CONNECT with the right token gets in.
    let reply = c.connect(r#"40{"token":"ann"}"#).await;
    assert!(reply["sid"].is_string(), "{reply}");
    let seen = app.payloads.lock().expect("lock").clone();
    assert_eq!(seen, [json!({"token": "eve"}), json!({"token": "ann"})]);
}

#[tokio::test]
async fn private_rooms_need_the_apps_word_and_a_refused_socket_hears_nothing_of_them() {
    let app = Arc::new(App::default());
    let hub = Hub::default();
    let (io, mut sockets) = guarded_io(app.clone(), hub.clone());
    // Something was said in the private room before anyone joined.
    hub.publish("private-bob", "secret", json!("old"), None)
        .expect("publish");
    hub.publish("private-ok", "hello", json!("old"), None)
        .expect("publish");
    let mut ann = Client::open(&io);
    ann.connect(r#"40{"token":"ann"}"#).await;
    let socket = next_socket(&mut sockets).await;
    assert_eq!(socket.user().user_id, Some(json!(7)));
    // The room the app named at connect is joined without asking again.
    assert!(socket.rooms().contains("private-ann"));

    ann.send(r#"421["join","private-bob"]"#).await;
    ann.expect(r#"431[{"ok":false,"room":"private-bob","error":"not your room"}]"#)
        .await;
    hub.publish("private-bob", "secret", json!("new"), None)
        .expect("publish");
    ann.quiet().await;

    ann.send(r#"422["join","private-ok"]"#).await;
    ann.expect(r#"42["hello","old"]"#).await;
    ann.expect(r#"432[{"ok":true,"room":"private-ok"}]"#).await;
    assert_eq!(
        socket
            .grant("private-ok")
            .and_then(|g| g.member)
            .map(|m| m.user_info),
        Some(json!({"name": "Ann"}))
    );
    let sid = socket.id().to_owned();
    assert_eq!(
        *app.asked_rooms.lock().expect("lock"),
        [
            ("private-bob".to_owned(), sid.clone()),
            ("private-ok".to_owned(), sid)
        ]
    );
    // Public rooms are joined without the app.
    ann.send(r#"423["join","news"]"#).await;
    ann.expect(r#"433[{"ok":true,"room":"news"}]"#).await;
    assert_eq!(app.asked_rooms.lock().expect("lock").len(), 2);
}

#[tokio::test]
async fn clients_relay_only_into_rooms_the_policy_opens_to_them() {
    let app = Arc::new(App::default());
    let hub = Hub::default();
    let (io, _sockets) = guarded_io(app, hub.clone());
    let mut ann = Client::open(&io);
    let mut ann2 = Client::open(&io);
    ann.connect(r#"40{"token":"ann"}"#).await;
    ann2.connect(r#"40{"token":"ann"}"#).await;
    // Both are in `private-ann` (from the app), which is not open to clients: the relay goes
    // to the namespace's sockets, never to the private room's topic.
    ann.send(r#"421["chat","hi"]"#).await;
    ann.expect(r#"431[{"seq":1}]"#).await;
    ann2.expect(r#"42["chat","hi"]"#).await;
    assert!(hub
        .topic_info("private-ann")
        .is_none_or(|t| t.position.seq == 0));
    assert_eq!(
        hub.topic_info(&namespace_topic("/"))
            .map(|t| t.position.seq),
        Some(1)
    );
    // In a room open to clients, the relay goes there (and only there).
    ann.send(r#"422["join","open-1"]"#).await;
    ann.expect(r#"432[{"ok":true,"room":"open-1"}]"#).await;
    ann.send(r#"423["chat","in open-1"]"#).await;
    ann.expect(r#"433[{"seq":1}]"#).await;
    assert_eq!(hub.topic_info("open-1").map(|t| t.position.seq), Some(1));
    ann2.quiet().await;
}

// ---- connection state recovery ----

fn recovery_io(hub: Hub) -> (SocketIo, mpsc::UnboundedReceiver<Socket>) {
    let io = SocketIo::new(hub, SocketIoOptions::with_recovery());
    let (tx, rx) = mpsc::unbounded_channel();
    io.namespace("/", move |socket| {
        if !socket.recovered() {
            socket.join("r").expect("join");
        }
        let _ = tx.send(socket);
        std::future::ready(Ok(()))
    });
    (io, rx)
}

#[tokio::test]
async fn recovery_restores_sid_rooms_and_missed_events_in_order() {
    let hub = Hub::default();
    let (io, mut rx) = recovery_io(hub.clone());
    let mut c = Client::open(&io);
    let reply = c.connect("40").await;
    let keys: Vec<&String> = reply.as_object().unwrap().keys().collect();
    assert_eq!(keys, ["sid", "pid"]);
    let (id, pid) = (sid(&reply), reply["pid"].as_str().unwrap().to_owned());
    let socket = next_socket(&mut rx).await;
    assert!(!socket.recovered());

    let room = room_topic("/", "r");
    hub.publish(&room, "ev", json!([1]), None).unwrap();
    socket.emit("direct", json!(["d"])).unwrap();
    hub.publish(&room, "ev", json!([2]), None).unwrap();
    c.expect(r#"42["ev",1,"1"]"#).await;
    c.expect(r#"42["direct","d","2"]"#).await;
    // "3" was written but the client never processed it
    c.expect(r#"42["ev",2,"3"]"#).await;

    c.t.sender.close(CloseReason::TransportClose);
    let ns = io.of("/").unwrap();
    eventually(|| ns.kept_sessions() == 1).await;
    hub.publish(&room, "ev", json!([3]), None).unwrap();
    ns.emit("all", json!([4])).await.unwrap();

    let mut c = Client::open(&io);
    let reply = c
        .connect(&format!(r#"40{{"pid":"{pid}","offset":"2"}}"#))
        .await;
    assert_eq!(reply, json!({"sid": id, "pid": pid}));
    c.expect(r#"42["ev",2,"4"]"#).await;
    c.expect(r#"42["ev",3,"5"]"#).await;
    c.expect(r#"42["all",4,"6"]"#).await;
    c.quiet().await;

    let socket = next_socket(&mut rx).await;
    assert!(socket.recovered());
    assert_eq!(socket.id(), id);
    assert!(socket.rooms().contains("r"));
    hub.publish(&room, "ev", json!([5]), None).unwrap();
    c.expect(r#"42["ev",5,"7"]"#).await;
    assert_eq!(io.stats().recovered.load(Ordering::Relaxed), 1);

    // a session is used once: a second recovery finds nothing kept
    c.t.sender.close(CloseReason::PingTimeout);
    eventually(|| ns.kept_sessions() == 1).await;
    let mut c = Client::open(&io);
    let again = c
        .connect(&format!(r#"40{{"pid":"{pid}","offset":"7"}}"#))
        .await;
    assert_eq!(sid(&again), id);
    assert_eq!(ns.kept_sessions(), 0);
}

/// The client comes back on a new connection while its old one still looks alive here (its
/// poll went to another process during an upgrade, its network changed before the ping
/// timeout): node would refuse to recover a connected session; the stale socket is taken over
/// instead, and the client gets everything after its offset, once.
#[tokio::test]
async fn a_client_back_while_its_old_socket_looks_connected_takes_its_session_over() {
    let hub = Hub::default();
    let (io, mut rx) = recovery_io(hub.clone());
    let ns = io.of("/").unwrap();
    let mut old = Client::open(&io);
    let reply = old.connect("40").await;
    let (id, pid) = (sid(&reply), reply["pid"].as_str().unwrap().to_owned());
    let first = next_socket(&mut rx).await;
    let room = room_topic("/", "r");
    hub.publish(&room, "ev", json!([1]), None).unwrap();
    old.expect(r#"42["ev",1,"1"]"#).await;
    // Written to the old connection, never read by the client.
    hub.publish(&room, "ev", json!([2]), None).unwrap();
    old.expect(r#"42["ev",2,"2"]"#).await;

    let mut c = Client::open(&io);
    let reply = c
        .connect(&format!(r#"40{{"pid":"{pid}","offset":"1"}}"#))
        .await;
    assert_eq!(reply, json!({"sid": id, "pid": pid}));
    c.expect(r#"42["ev",2,"3"]"#).await;
    c.quiet().await;
    let socket = next_socket(&mut rx).await;
    assert!(socket.recovered());
    assert!(socket.rooms().contains("r"));
    assert!(!first.connected());
    // The old connection, with no namespace left on it, is closed rather than kept until its
    // ping timeout.
    assert_eq!(
        old.t.sender.close_reason(),
        Some(CloseReason::TransportClose)
    );
    assert_eq!(io.stats().takeovers.load(Ordering::Relaxed), 1);
    assert_eq!(ns.kept_sessions(), 0);
    // One socket of that id, on the new connection only.
    hub.publish(&room, "ev", json!([3]), None).unwrap();
    c.expect(r#"42["ev",3,"4"]"#).await;
    old.quiet().await;
    assert_eq!(ns.sockets().len(), 1);
    // A wrong private id takes nothing over.
    let mut stranger = Client::open(&io);
    let reply = stranger.connect(r#"40{"pid":"guess","offset":"1"}"#).await;
    assert_ne!(sid(&reply), id);
    assert!(socket.connected());
}

#[tokio::test]
async fn unservable_recoveries_get_a_new_session() {
    let hub = Hub::new(HubConfig {
        history_len: 2,
        ..HubConfig::default()
    });
    let (io, _rx) = recovery_io(hub.clone());
    let ns = io.of("/").unwrap();

    // unknown pid
    let mut c = Client::open(&io);
    let reply = c.connect(r#"40{"pid":"nope","offset":"1"}"#).await;
    assert_ne!(reply["pid"], "nope");

    // offset evicted from the room's history
    let mut c = Client::open(&io);
    let reply = c.connect("40").await;
    let (id, pid) = (sid(&reply), reply["pid"].as_str().unwrap().to_owned());
    let room = room_topic("/", "r");
    hub.publish(&room, "ev", json!(1), None).unwrap();
    c.expect(r#"42["ev",1,"1"]"#).await;
    c.t.sender.close(CloseReason::TransportClose);
    eventually(|| ns.kept_sessions() == 1).await;
    for i in 2..=4 {
        hub.publish(&room, "ev", json!(i), None).unwrap();
    }
    let mut c = Client::open(&io);
    let reply = c
        .connect(&format!(r#"40{{"pid":"{pid}","offset":"1"}}"#))
        .await;
    assert_ne!(sid(&reply), id);
    assert_ne!(reply["pid"], pid.as_str());

    // a garbage offset
    let reply = {
        let mut c = Client::open(&io);
        let first = c.connect("40").await;
        c.t.sender.close(CloseReason::TransportClose);
        eventually(|| ns.kept_sessions() == 1).await;
        let mut c = Client::open(&io);
        let pid = first["pid"].as_str().unwrap();
        (
            sid(&first),
            c.connect(&format!(r#"40{{"pid":"{pid}","offset":"Q80WZks"}}"#))
                .await,
        )
    };
    assert_ne!(reply.0, sid(&reply.1));

    // not kept after a deliberate disconnect
    let mut c = Client::open(&io);
    let first = c.connect("40").await;
    c.send("41").await;
    c.quiet().await;
    let pid = first["pid"].as_str().unwrap();
    let reply = c.connect(&format!(r#"40{{"pid":"{pid}"}}"#)).await;
    assert_ne!(sid(&reply), sid(&first));
    assert!(io.stats().recovery_failures.load(Ordering::Relaxed) >= 4);
}

#[tokio::test]
async fn sessions_expire_after_the_max_disconnection_duration() {
    assert_eq!(
        RecoveryOptions::default().max_disconnection_duration,
        Duration::from_millis(120_000)
    );
    let ttl = Duration::from_millis(300);
    let io = SocketIo::new(
        Hub::default(),
        SocketIoOptions {
            recovery: Some(RecoveryOptions {
                max_disconnection_duration: ttl,
                ..RecoveryOptions::default()
            }),
            ..SocketIoOptions::default()
        },
    );
    capture(&io, "/");
    let ns = io.of("/").unwrap();
    let mut c = Client::open(&io);
    let first = c.connect("40").await;
    c.t.sender.close(CloseReason::TransportClose);
    eventually(|| ns.kept_sessions() == 1).await;
    tokio::time::sleep(ttl + Duration::from_millis(50)).await;
    let pid = first["pid"].as_str().unwrap();
    let mut c = Client::open(&io);
    // no event was ever received: no offset, which means offset 0
    let reply = c.connect(&format!(r#"40{{"pid":"{pid}"}}"#)).await;
    assert_ne!(sid(&reply), sid(&first));

    let mut c = Client::open(&io);
    let first = c.connect("40").await;
    c.t.sender.close(CloseReason::TransportClose);
    let pid = first["pid"].as_str().unwrap().to_owned();
    tokio::time::sleep(ttl / 3).await;
    let mut c = Client::open(&io);
    let reply = c.connect(&format!(r#"40{{"pid":"{pid}"}}"#)).await;
    assert_eq!(sid(&reply), sid(&first));
    assert_eq!(reply["pid"], pid.as_str());
}

#[tokio::test]
async fn recovery_replays_a_relay_to_others_but_not_the_sender() {
    let hub = Hub::default();
    let io = SocketIo::new(hub.clone(), SocketIoOptions::with_recovery());
    install_behaviour(
        &io,
        "/",
        NamespaceBehaviour {
            relay: true,
            ..Default::default()
        },
    );
    let mut a = Client::open(&io);
    let mut b = Client::open(&io);
    a.connect("40").await;
    let b_first = b.connect("40").await;
    a.send(r#"42["chat",1]"#).await;
    b.expect(r#"42["chat",1,"1"]"#).await;
    b.t.sender.close(CloseReason::TransportClose);
    let ns = io.of("/").unwrap();
    eventually(|| ns.kept_sessions() == 1).await;
    a.send(r#"421["chat",2]"#).await;
    a.expect(r#"431[{"seq":2}]"#).await;
    let pid = b_first["pid"].as_str().unwrap();
    let mut b = Client::open(&io);
    let reply = b
        .connect(&format!(r#"40{{"pid":"{pid}","offset":"1"}}"#))
        .await;
    assert_eq!(reply["sid"], b_first["sid"]);
    b.expect(r#"42["chat",2,"2"]"#).await;
    // and b's own relays still skip b after its recovery
    b.send(r#"42["chat",3]"#).await;
    a.expect(r#"42["chat",3,"1"]"#).await;
    b.quiet().await;
}

#[tokio::test]
async fn a_socket_over_its_relay_rate_is_disconnected_not_its_peers() {
    let io = behaviour_io(NamespaceBehaviour {
        relay: true,
        relay_rate: super::RelayRate {
            per_second: 1,
            burst: 3,
        },
        ..NamespaceBehaviour::default()
    });
    let mut a = Client::open(&io);
    let mut b = Client::open(&io);
    for client in [&mut a, &mut b] {
        client.connect("40").await;
    }
    for i in 1..=3 {
        a.send(&format!(r#"42["chat",{i}]"#)).await;
    }
    a.send(r#"421["chat",4]"#).await;
    for i in 1..=3 {
        b.expect(&format!(r#"42["chat",{i}]"#)).await;
    }
    // The fourth is over the burst: the sender is told why and disconnected.
    a.expect(r#"431[{"error":"relay rate exceeded (1 events/s, burst 3): disconnected"}]"#)
        .await;
    a.expect("41").await;
    b.quiet().await;
    // The peer is still connected and still relays to newcomers.
    let mut c = Client::open(&io);
    c.connect("40").await;
    b.send(r#"42["chat","still here"]"#).await;
    c.expect(r#"42["chat","still here"]"#).await;
}

// ---------------------------------------------------------------------------------------------
// Recovery across a fleet: two servers on one hub stand for two nodes, a store in memory for
// the fleet's Redis (the e2e tests run the real one).

/// The fleet's sessions in memory, with the store's rule: a write that is not a takeover only
/// lands over its own incarnation.
#[derive(Default)]
struct MemoryStore(Mutex<std::collections::HashMap<String, SessionRecord>>);

impl MemoryStore {
    fn get(&self, pid: &str) -> Option<SessionRecord> {
        self.0.lock().unwrap().get(pid).cloned()
    }
}

impl SessionStore for MemoryStore {
    fn save(&self, pid: &str, record: SessionRecord, takeover: bool) {
        let mut map = self.0.lock().unwrap();
        let ours = map
            .get(pid)
            .is_none_or(|r| r.incarnation == record.incarnation);
        if takeover || ours {
            map.insert(pid.to_owned(), record);
        }
    }

    fn release(&self, _pid: &str, _incarnation: u64) {}

    fn remove(&self, pid: &str, incarnation: u64) {
        let mut map = self.0.lock().unwrap();
        if map.get(pid).is_some_and(|r| r.incarnation == incarnation) {
            map.remove(pid);
        }
    }

    fn load(&self, pid: &str) -> futures_util::future::BoxFuture<'static, Option<SessionRecord>> {
        let record = self.get(pid);
        Box::pin(async move { record })
    }
}

/// A node of the fleet: recovery kept in `store`, every new socket in room `r`.
fn fleet_io(hub: Hub, store: &Arc<MemoryStore>) -> (SocketIo, mpsc::UnboundedReceiver<Socket>) {
    let sessions: Arc<dyn SessionStore> = store.clone();
    let options = SocketIoOptions {
        recovery: Some(RecoveryOptions {
            fleet: Some(FleetSessions(sessions)),
            ..RecoveryOptions::default()
        }),
        ..SocketIoOptions::default()
    };
    let io = SocketIo::new(hub, options);
    let (tx, rx) = mpsc::unbounded_channel();
    io.namespace("/", move |socket| {
        if !socket.recovered() {
            socket.join("r").expect("join");
        }
        let _ = tx.send(socket);
        std::future::ready(Ok(()))
    });
    (io, rx)
}

/// An event's arguments and its offset (the last one).
fn offset_of(event: &str) -> String {
    let v: Value = serde_json::from_str(event.strip_prefix("42").expect("an event")).unwrap();
    v.as_array()
        .unwrap()
        .last()
        .unwrap()
        .as_str()
        .unwrap()
        .to_owned()
}

#[tokio::test]
async fn a_session_recovers_on_another_node_from_the_fleet_record() {
    let hub = Hub::default();
    let store = Arc::new(MemoryStore::default());
    let (a, mut rx_a) = fleet_io(hub.clone(), &store);
    let (b, mut rx_b) = fleet_io(hub.clone(), &store);
    let mut c = Client::open(&a);
    let reply = c.connect("40").await;
    let (id, pid) = (sid(&reply), reply["pid"].as_str().unwrap().to_owned());
    next_socket(&mut rx_a).await;
    // The record: its rooms, and its topics sorted (room `r` of `/` is topic `r`).
    let own = room_topic("/", &id);
    let record = store.get(&pid).expect("written at connect");
    assert_eq!(record.sid, id);
    assert_eq!(record.nsp, "/");
    let mut rooms = record.rooms.clone();
    rooms.sort();
    let mut want = vec![id.clone(), "r".to_owned()];
    want.sort();
    assert_eq!(rooms, want);
    let named: Vec<&str> = record.topics.iter().map(|(t, _)| t.as_str()).collect();
    assert_eq!(named, ["r", "sio:/", own.as_str()]);
    let fp = fingerprint(record.topics.iter().map(|(t, e)| (t.as_str(), *e)));

    // Each event's offset: the count, the topics' fingerprint, the seq reached in each.
    hub.publish("r", "ev", json!([1]), None).unwrap();
    c.expect(&format!(r#"42["ev",1,"1~{fp}~1.0.0"]"#)).await;
    // One broadcast to the room and the namespace: one event (the second copy a duplicate).
    hub.publish_many(["r", "sio:/"], Payload::new("both", json!([2])), None)
        .unwrap();
    c.expect(&format!(r#"42["both",2,"2~{fp}~2.0.0"]"#)).await;
    hub.publish("r", "ev", json!([3]), None).unwrap();
    // Sent, but the client never processed it: its node died.
    c.expect(&format!(r#"42["ev",3,"3~{fp}~3.1.0"]"#)).await;
    drop(a);
    c.t.sender.close(CloseReason::TransportClose);
    hub.publish("r", "ev", json!([4]), None).unwrap();
    let ns = b.of("/").unwrap();
    ns.emit("all", json!([5])).await.unwrap();

    // The client comes back on b with the last offset it processed.
    let mut c = Client::open(&b);
    let reply = c
        .connect(&format!(r#"40{{"pid":"{pid}","offset":"2~{fp}~2.0.0"}}"#))
        .await;
    assert_eq!(reply, json!({"sid": id, "pid": pid}));
    // What followed, once (the namespace's copy of "both" it had through the room), in
    // order, numbered on from its count.
    c.expect(&format!(r#"42["ev",3,"3~{fp}~3.1.0"]"#)).await;
    let ev4 = c.text().await;
    assert_eq!(ev4, format!(r#"42["ev",4,"4~{fp}~4.1.0"]"#));
    c.expect(&format!(r#"42["all",5,"5~{fp}~4.2.0"]"#)).await;
    c.quiet().await;
    let socket = next_socket(&mut rx_b).await;
    assert!(socket.recovered());
    assert_eq!(socket.id(), id);
    assert!(socket.rooms().contains("r"));
    assert_eq!(b.stats().recovered.load(Ordering::Relaxed), 1);
    // b wrote its own life of the session; live events go on.
    eventually(|| {
        store
            .get(&pid)
            .is_some_and(|r| r.incarnation != record.incarnation)
    })
    .await;
    hub.publish("r", "ev", json!([6]), None).unwrap();
    c.expect(&format!(r#"42["ev",6,"6~{fp}~5.2.0"]"#)).await;

    // Back on b itself: its own session, from its memory (the record is its own).
    c.t.sender.close(CloseReason::TransportClose);
    eventually(|| ns.kept_sessions() == 1).await;
    let mut c = Client::open(&b);
    let reply = c
        .connect(&format!(
            r#"40{{"pid":"{pid}","offset":"{}"}}"#,
            offset_of(&ev4)
        ))
        .await;
    assert_eq!(sid(&reply), id);
    // (Numbered on from the last count this node sent, as any recovery here.)
    c.expect(&format!(r#"42["all",5,"7~{fp}~4.2.0"]"#)).await;
    c.expect(&format!(r#"42["ev",6,"8~{fp}~5.2.0"]"#)).await;
    assert_eq!(b.stats().recovered.load(Ordering::Relaxed), 2);
}

#[tokio::test]
async fn an_offset_the_record_does_not_describe_gets_a_new_session() {
    let hub = Hub::default();
    let store = Arc::new(MemoryStore::default());
    let (a, _rx_a) = fleet_io(hub.clone(), &store);
    let (b, _rx_b) = fleet_io(hub.clone(), &store);
    let mut c = Client::open(&a);
    let reply = c.connect("40").await;
    let (id, pid) = (sid(&reply), reply["pid"].as_str().unwrap().to_owned());
    eventually(|| store.get(&pid).is_some()).await;
    hub.publish("r", "ev", json!([1]), None).unwrap();
    let offset = offset_of(&c.text().await);
    c.t.sender.close(CloseReason::TransportClose);
    drop(a);
    let (count, rest) = offset.split_once('~').unwrap();
    let (fp, seqs) = rest.split_once('~').unwrap();
    for bad in [
        // another fingerprint: topics or epochs the record does not have
        format!("{count}~AAAAAA~{seqs}"),
        // a seq too few or too many
        format!("{count}~{fp}~1.0"),
        format!("{count}~{fp}~{seqs}.0"),
        // the count alone: the other node has no log to read it in
        count.to_owned(),
    ] {
        let mut c = Client::open(&b);
        let reply = c
            .connect(&format!(r#"40{{"pid":"{pid}","offset":"{bad}"}}"#))
            .await;
        assert_ne!(sid(&reply), id, "{bad}");
    }
    // The good one still works (failed tries do not spend the record).
    let mut c = Client::open(&b);
    let reply = c
        .connect(&format!(r#"40{{"pid":"{pid}","offset":"{offset}"}}"#))
        .await;
    assert_eq!(sid(&reply), id);
}

/// A fleet of one node that places every topic at seq 5 of its epoch when asked where it
/// stands (as Redis would a topic with five messages before), and numbers publishes after it.
struct PlacingFleet {
    hub: crate::hub::WeakHub,
    located: Mutex<std::collections::HashSet<String>>,
    seqs: Mutex<std::collections::HashMap<String, u64>>,
}

const FLEET_EPOCH: crate::hub::Epoch = crate::hub::Epoch::from_raw(42);

impl crate::hub::Fleet for PlacingFleet {
    fn publish(
        &self,
        topic: &str,
        id: crate::hub::MessageId,
        payload: Arc<Payload>,
        origin: Option<crate::hub::SubscriberId>,
    ) -> Result<
        futures_util::future::BoxFuture<
            'static,
            Result<crate::hub::Position, crate::hub::HubError>,
        >,
        crate::hub::HubError,
    > {
        let seq = {
            let mut seqs = self.seqs.lock().unwrap();
            let seq = seqs.entry(topic.to_owned()).or_insert(5);
            *seq += 1;
            *seq
        };
        let position = crate::hub::Position::new(FLEET_EPOCH, seq);
        if let Some(hub) = self.hub.upgrade() {
            let message = crate::hub::FleetMessage {
                position,
                id,
                payload,
                origin,
                remote: false,
            };
            hub.fleet_deliver(topic, crate::hub::FleetDelivery::Message(message));
        }
        Ok(Box::pin(async move { Ok(position) }))
    }

    fn follow(&self, _topic: &str, create: &mut dyn FnMut(Option<crate::hub::Position>)) {
        create(None);
    }

    fn unfollow(&self, _topic: &str, _gone: &dyn Fn() -> bool) {}

    fn locate(
        &self,
        topic: &str,
    ) -> Option<futures_util::future::BoxFuture<'static, Result<(), crate::hub::HubError>>> {
        if !self.located.lock().unwrap().insert(topic.to_owned()) {
            return None;
        }
        if let Some(hub) = self.hub.upgrade() {
            let at = crate::hub::Position::new(FLEET_EPOCH, 5);
            hub.fleet_deliver(topic, crate::hub::FleetDelivery::Start { at, clean: true });
        }
        Some(Box::pin(async { Ok(()) }))
    }

    fn resume(
        &self,
        _topic: &str,
        _since: crate::hub::Position,
    ) -> futures_util::future::BoxFuture<
        'static,
        Result<crate::hub::FleetResume, crate::hub::HubError>,
    > {
        let current = crate::hub::Position::new(FLEET_EPOCH, 5);
        Box::pin(async move { Ok(crate::hub::FleetResume::Reset { current }) })
    }
}

/// Topics joined before the node knew where the fleet stands in them (the connect handler's
/// synchronous joins) are settled to the fleet's positions before the session record is
/// written: the record and every offset name positions another node can resume from.
#[tokio::test]
async fn a_socket_in_a_fleet_names_fleet_positions_in_its_record_and_offsets() {
    let hub = Hub::in_fleet(HubConfig::default(), |weak| {
        Ok::<Arc<dyn crate::hub::Fleet>, ()>(Arc::new(PlacingFleet {
            hub: weak,
            located: Mutex::default(),
            seqs: Mutex::default(),
        }))
    })
    .expect("a hub in a fleet");
    let store = Arc::new(MemoryStore::default());
    let (io, _rx) = fleet_io(hub.clone(), &store);
    let mut c = Client::open(&io);
    let reply = c.connect("40").await;
    let pid = reply["pid"].as_str().unwrap().to_owned();
    eventually(|| {
        store
            .get(&pid)
            .is_some_and(|r| r.topics.len() == 3 && r.topics.iter().all(|(_, e)| *e == FLEET_EPOCH))
    })
    .await;
    let record = store.get(&pid).unwrap();
    let fp = fingerprint(record.topics.iter().map(|(t, e)| (t.as_str(), *e)));
    hub.send("r", Payload::new("ev", json!([1])), None)
        .await
        .unwrap();
    c.expect(&format!(r#"42["ev",1,"1~{fp}~6.5.5"]"#)).await;
}

// ---- Laravel Echo (laravel-echo-server's protocol) ----

/// A Laravel app's `/broadcasting/auth`, in process: the user is the
/// `Authorization: Bearer <name>` the channel's request carries (Echo's
/// `auth.headers`); `private-user.<name>` is its owner's, `private-chat.*`
/// and `presence-*` any user's (presence as `{user_id: name, user_info:
/// {name}}`), everything else refused.
#[derive(Default)]
struct EchoApp {
    asked: Mutex<Vec<(String, Option<String>)>>,
}

#[async_trait::async_trait]
impl crate::access::Authorizer for EchoApp {
    fn checks_connect(&self) -> bool {
        false
    }
    async fn connect(
        &self,
        _client: &crate::access::ClientInfo,
        _auth: Option<&Value>,
    ) -> Result<crate::access::Identity, crate::access::Refusal> {
        Ok(crate::access::Identity::default())
    }
    async fn subscribe(
        &self,
        client: &crate::access::ClientInfo,
        _identity: &crate::access::Identity,
        _socket_id: &str,
        topic: &str,
    ) -> Result<crate::access::Grant, crate::access::Refusal> {
        let auth = client
            .headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        self.asked
            .lock()
            .expect("lock")
            .push((topic.to_owned(), auth.clone()));
        let user = auth.as_deref().and_then(|a| a.strip_prefix("Bearer "));
        let refused = || crate::access::Refusal::denied(403, "This action is unauthorized.");
        match user {
            None => Err(crate::access::Refusal::denied(401, "Unauthenticated.")),
            Some(user) if topic.starts_with("presence-") => Ok(crate::access::Grant {
                member: Some(crate::access::Member {
                    user_id: json!(user),
                    user_info: json!({ "name": user }),
                }),
            }),
            Some(user) if topic == format!("private-user.{user}") => Ok(Default::default()),
            Some(_) if topic.starts_with("private-chat.") => Ok(Default::default()),
            Some(_) => Err(refused()),
        }
    }
}

fn echo_io(app: Arc<EchoApp>, hub: Hub) -> SocketIo {
    let io = SocketIo::with_access(
        hub,
        SocketIoOptions::default(),
        crate::access::Access::new(crate::access::Policy::default(), Some(app)),
    );
    install_behaviour(
        &io,
        "/",
        NamespaceBehaviour {
            echo: true,
            ..NamespaceBehaviour::default()
        },
    );
    io
}

/// What Echo's `subscribe` sends, as `user` (no `auth` for nobody).
fn subscribe(channel: &str, user: Option<&str>) -> String {
    let auth = match user {
        Some(u) => json!({"headers": {"Authorization": format!("Bearer {u}")}}),
        None => json!({}),
    };
    format!(
        "42{}",
        json!(["subscribe", {"channel": channel, "auth": auth}])
    )
}

#[tokio::test]
async fn echo_hears_app_publishes_as_channel_and_data() {
    let hub = Hub::default();
    let io = echo_io(Arc::new(EchoApp::default()), hub.clone());
    let mut c = Client::open(&io);
    c.connect("40").await;
    c.send(&subscribe("orders", None)).await;
    let ns = io.of("/").unwrap();
    eventually(|| ns.to("orders").sockets().len() == 1).await;
    // `POST /publish` with Laravel's event name: Echo's `.listen('OrderShipped')`.
    hub.publish(
        "orders",
        "App\\Events\\OrderShipped",
        json!({"id": 1}),
        None,
    )
    .unwrap();
    c.expect(r#"42["App\\Events\\OrderShipped","orders",{"id":1}]"#)
        .await;
    // Laravel's broadcaster as laravel-echo-server relayed it: not wrapped twice.
    hub.publish("orders", "status", json!(["orders", {"ok": true}]), None)
        .unwrap();
    c.expect(r#"42["status","orders",{"ok":true}]"#).await;
    // The namespace topic is no channel: as it is.
    hub.publish(&namespace_topic("/"), "all", json!(1), None)
        .unwrap();
    c.expect(r#"42["all",1]"#).await;
    // Unsubscribed: nothing more.
    c.send(r#"42["unsubscribe",{"channel":"orders","auth":{}}]"#)
        .await;
    eventually(|| ns.to("orders").sockets().is_empty()).await;
    hub.publish("orders", "late", json!(1), None).unwrap();
    c.quiet().await;
}

#[tokio::test]
async fn echo_private_channels_take_the_auth_headers_and_a_refusal_hears_nothing() {
    let app = Arc::new(EchoApp::default());
    let hub = Hub::default();
    let io = echo_io(app.clone(), hub.clone());
    hub.publish("private-user.bob", "secret", json!("old"), None)
        .unwrap();
    let mut ann = Client::open(&io);
    ann.connect("40").await;
    ann.send(&subscribe("private-user.bob", Some("ann"))).await;
    ann.expect(r#"42["subscription_error","private-user.bob",403]"#)
        .await;
    ann.send(&subscribe("private-user.bob", None)).await;
    ann.expect(r#"42["subscription_error","private-user.bob",401]"#)
        .await;
    hub.publish("private-user.bob", "secret", json!("new"), None)
        .unwrap();
    ann.quiet().await;
    // Her own channel, with her token; the subscribe replays no history.
    ann.send(&subscribe("private-user.ann", Some("ann"))).await;
    let ns = io.of("/").unwrap();
    eventually(|| ns.to("private-user.ann").sockets().len() == 1).await;
    hub.publish("private-user.ann", "note", json!("hi"), None)
        .unwrap();
    ann.expect(r#"42["note","private-user.ann","hi"]"#).await;
    assert_eq!(
        *app.asked.lock().expect("lock"),
        [
            ("private-user.bob".to_owned(), Some("Bearer ann".to_owned())),
            ("private-user.bob".to_owned(), None),
            ("private-user.ann".to_owned(), Some("Bearer ann".to_owned())),
        ]
    );
    // Names a client may not use are refused before anyone is asked.
    ann.send(&subscribe("sio:/", Some("ann"))).await;
    ann.expect(r#"42["subscription_error","sio:/",400]"#).await;
    assert_eq!(app.asked.lock().expect("lock").len(), 3);
}

#[tokio::test]
async fn echo_presence_announces_each_user_once_across_tabs() {
    let hub = Hub::default();
    let io = echo_io(Arc::new(EchoApp::default()), hub.clone());
    let presence = io.access().presence().clone();
    let room = "presence-room.1";
    let ann_member = r#"{"user_id":"ann","user_info":{"name":"ann"}}"#;
    let bob_member = r#"{"user_id":"bob","user_info":{"name":"bob"}}"#;

    let mut ann1 = Client::open(&io);
    ann1.connect("40").await;
    ann1.send(&subscribe(room, Some("ann"))).await;
    ann1.expect(&format!(
        r#"42["presence:subscribed","{room}",[{ann_member}]]"#
    ))
    .await;

    // Ann's second tab: the list, and nobody is told of a new member.
    let mut ann2 = Client::open(&io);
    ann2.connect("40").await;
    ann2.send(&subscribe(room, Some("ann"))).await;
    ann2.expect(&format!(
        r#"42["presence:subscribed","{room}",[{ann_member}]]"#
    ))
    .await;
    ann1.quiet().await;
    assert_eq!(presence.count(room), (1, 2));

    // Bob arrives: both of Ann's tabs hear it once.
    let mut bob = Client::open(&io);
    bob.connect("40").await;
    bob.send(&subscribe(room, Some("bob"))).await;
    bob.expect(&format!(
        r#"42["presence:subscribed","{room}",[{ann_member},{bob_member}]]"#
    ))
    .await;
    for tab in [&mut ann1, &mut ann2] {
        tab.expect(&format!(r#"42["presence:joining","{room}",{bob_member}]"#))
            .await;
    }
    bob.quiet().await;

    // Ann's first tab goes: nobody hears of it; her last tab goes: Bob does.
    ann1.send("41").await;
    eventually(|| presence.count(room) == (2, 2)).await;
    bob.quiet().await;
    ann2.send(r#"42["unsubscribe",{"channel":"presence-room.1"}]"#)
        .await;
    bob.expect(&format!(r#"42["presence:leaving","{room}",{ann_member}]"#))
        .await;
    ann2.quiet().await;
    // Bob's connection drops: the room is empty.
    bob.t.sender.close(CloseReason::TransportClose);
    eventually(|| presence.count(room) == (0, 0)).await;
    assert!(presence.list(room).is_empty());
}

#[tokio::test]
async fn echo_whispers_reach_the_others_in_private_channels_only() {
    let hub = Hub::default();
    let io = echo_io(Arc::new(EchoApp::default()), hub.clone());
    let ns = io.of("/").unwrap();
    let mut ann = Client::open(&io);
    let mut bob = Client::open(&io);
    let mut cy = Client::open(&io);
    for c in [&mut ann, &mut bob, &mut cy] {
        c.connect("40").await;
    }
    ann.send(&subscribe("private-chat.1", Some("ann"))).await;
    bob.send(&subscribe("private-chat.1", Some("bob"))).await;
    eventually(|| ns.to("private-chat.1").sockets().len() == 2).await;
    let whisper = |channel: &str, event: &str| {
        format!(
            "42{}",
            json!(["client event", {"channel": channel, "event": event, "data": {"typing": true}}])
        )
    };
    ann.send(&whisper("private-chat.1", "client-typing")).await;
    bob.expect(r#"42["client-typing","private-chat.1",{"typing":true}]"#)
        .await;
    ann.quiet().await;
    // Not a client event, not in the channel, not a private channel: nothing.
    ann.send(&whisper("private-chat.1", "App\\Events\\Paid"))
        .await;
    cy.send(&whisper("private-chat.1", "client-typing")).await;
    ann.send(&subscribe("lobby", None)).await;
    cy.send(&subscribe("lobby", None)).await;
    eventually(|| ns.to("lobby").sockets().len() == 2).await;
    ann.send(&whisper("lobby", "client-typing")).await;
    bob.quiet().await;
    cy.quiet().await;
    assert_eq!(
        hub.topic_info("private-chat.1").map(|t| t.position.seq),
        Some(1)
    );
    assert!(hub.topic_info("lobby").is_none_or(|t| t.position.seq == 0));
}

#[tokio::test]
async fn a_generic_join_of_a_presence_room_lists_its_members_and_tells_the_room_once() {
    let app = Arc::new(App::default());
    let hub = Hub::default();
    let (io, _sockets) = guarded_io(app, hub.clone());
    let watcher = hub.subscribe().unwrap();
    watcher.join("presence-ok", None).unwrap();
    // The app grants the room without naming a member: Ann is who the connect answer said.
    let ann = r#"{"user_id":7,"user_info":{"name":"Ann"}}"#;
    let mut tab1 = Client::open(&io);
    let mut tab2 = Client::open(&io);
    tab1.connect(r#"40{"token":"ann"}"#).await;
    tab2.connect(r#"40{"token":"ann"}"#).await;
    tab1.send(r#"421["join","presence-ok"]"#).await;
    tab1.expect(&format!(
        r#"431[{{"ok":true,"room":"presence-ok","members":[{ann}]}}]"#
    ))
    .await;
    let news = watcher.try_recv().unwrap().expect("joining");
    assert_eq!(news.event(), "presence:joining");
    assert_eq!(news.data().to_string(), ann);
    tab2.send(r#"421["join","presence-ok"]"#).await;
    tab2.expect(&format!(
        r#"431[{{"ok":true,"room":"presence-ok","members":[{ann}]}}]"#
    ))
    .await;
    tab2.send(r#"422["leave","presence-ok"]"#).await;
    tab2.expect(r#"432[{"ok":true,"room":"presence-ok"}]"#)
        .await;
    assert!(watcher.try_recv().unwrap().is_none(), "still one tab in");
    tab1.t.sender.close(CloseReason::TransportClose);
    let presence = io.access().presence().clone();
    eventually(|| presence.count("presence-ok") == (0, 0)).await;
    let news = watcher.try_recv().unwrap().expect("leaving");
    assert_eq!(news.event(), "presence:leaving");
}

/// The connection's packets future is boxed for the connection's life, at its largest state's
/// size: a CONNECT's (the app's check, the socket's creation, its handler) is boxed apart, so
/// an idle connection does not keep room for one (3.9 KiB in a debug build before).
#[tokio::test]
async fn an_idle_connections_packets_future_is_small() {
    let io = SocketIo::new(Hub::default(), SocketIoOptions::default());
    let (conn, _t) = pair(Arc::from("engine-sid"), info(), 8, 8);
    let shared = Arc::new(super::state::ConnShared::new(
        conn.sender.clone(),
        Arc::clone(&conn.info),
        Arc::default(),
    ));
    let packets = super::server::run_connection(Arc::clone(&io.inner), conn.incoming, shared);
    let size = std::mem::size_of_val(&packets);
    assert!(size <= 1024, "{size} bytes");
}

/// A connection's future (the loop over its packets) is allocated for its life at its largest
/// state's size: 976 bytes while it laid out the decoded packet, its dispatch and the connect
/// timer in itself, 488 since.
#[test]
fn a_connections_packet_loop_stays_small() {
    fn future_size<A, B, C, F>(_: fn(A, B, C) -> F) -> usize {
        std::mem::size_of::<F>()
    }
    let size = future_size(super::server::run_connection);
    assert!(size <= 512, "a connection's packet loop is {size} bytes");
}

/// A socket's state is one allocation for its life: 864 bytes while it kept an identity, a
/// CONNECT payload, three maps and the recovery and fleet bookkeeping inline, whether the
/// socket had them or not (an anonymous socket without handlers, acks or recovery has none).
#[test]
fn a_sockets_state_stays_small() {
    let size = std::mem::size_of::<super::state::SocketInner>();
    assert!(size <= 448, "a socket's state is {size} bytes");
}
