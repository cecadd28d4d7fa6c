//! Byte-exact vectors for the adapter codec.
//!
//! Provenance: every `EMIT*`/`EMITTER_*`/`NODE_*` constant is what the real npm packages
//! published, captured with a `PSUBSCRIBE *` client (node `redis` 4.7.1, buffer mode) on Debian's
//! redis-server 7.0.15: `@socket.io/redis-emitter` 5.1.0 (`EMIT*`, `EMITTER_*`), and two
//! socket.io 4.8.4 servers with `@socket.io/redis-adapter` 8.3.0 (notepack.io 3.0.1) in one Redis
//! with one socket.io-client 4.8.4 connected to the second (`NODE_*`); the calls are named in
//! each constant's comment. The Ruby/PHP emitters cannot be installed here (their registries are
//! out of reach): their vectors are built by hand from the PHP emitter's source
//! (`kev-ac/socket.io-php-emitter`, `src/SocketIO/Emitter.php`: `msgpack_pack([uid, packet,
//! ['rooms' => ..., 'flags' => []]])`, published once per room) and marked as such.

use super::*;
use serde_json::json;

fn bytes(parts: &[&str]) -> Vec<u8> {
    let s: String = parts.concat();
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
        .collect()
}

fn channels() -> Channels {
    Channels::new("socket.io")
}

fn broadcast(v: (&str, &[&str])) -> (Channel, Broadcast) {
    let channel = channels().parse(v.0.as_bytes()).expect("our channel");
    (channel, decode_broadcast(&bytes(v.1)).expect("decodes"))
}

fn rooms(r: &[&str]) -> Vec<String> {
    r.iter().map(|s| s.to_string()).collect()
}

/// `emitter: emit to all` on `socket.io#/#`.
const EMIT_ALL: (&str, &[&str]) = (
    "socket.io#/#",
    &[
        "93a7656d697474657283a47479706502a46461746193a568656c6c6fa5776f72",
        "6c6401a36e7370a12f83a5726f6f6d7390a5666c61677380a665786365707490",
    ],
);

/// `emitter: one room` on `socket.io#/#r1#`.
const EMIT_ROOM: (&str, &[&str]) = (
    "socket.io#/#r1#",
    &[
        "93a7656d697474657283a47479706502a46461746192a96e6f64652d726f6f6d",
        "a5746f207231a36e7370a12f83a5726f6f6d7391a27231a5666c61677380a665",
        "786365707490",
    ],
);

/// `emitter: several rooms` on `socket.io#/#`.
const EMIT_ROOMS: (&str, &[&str]) = (
    "socket.io#/#",
    &[
        "93a7656d697474657283a47479706502a46461746192a56d756c746981a16101",
        "a36e7370a12f83a5726f6f6d7392a27231a27232a5666c61677380a665786365",
        "707490",
    ],
);

/// `emitter: except` on `socket.io#/#`.
const EMIT_EXCEPT: (&str, &[&str]) = (
    "socket.io#/#",
    &[
        "93a7656d697474657283a47479706502a46461746192a26578c3a36e7370a12f",
        "83a5726f6f6d7390a5666c61677380a665786365707491a27233",
    ],
);

/// `emitter: room and except` on `socket.io#/#r1#`.
const EMIT_ROOM_EXCEPT: (&str, &[&str]) = (
    "socket.io#/#r1#",
    &[
        "93a7656d697474657283a47479706502a46461746192a27278c0a36e7370a12f",
        "83a5726f6f6d7391a27231a5666c61677380a665786365707491a27232",
    ],
);

/// `emitter: other namespace` on `socket.io#/admin#`.
const EMIT_NSP: (&str, &[&str]) = (
    "socket.io#/admin#",
    &[
        "93a7656d697474657283a47479706502a46461746193a361646dcb3ff8000000",
        "000000fda36e7370a62f61646d696e83a5726f6f6d7390a5666c61677380a665",
        "786365707490",
    ],
);

/// `emitter: binary args` on `socket.io#/#`.
const EMIT_BINARY: (&str, &[&str]) = (
    "socket.io#/#",
    &[
        "93a7656d697474657283a47479706502a46461746193a362696ec40301020381",
        "a66e6573746564c401ffa36e7370a12f83a5726f6f6d7390a5666c61677380a6",
        "65786365707490",
    ],
);

/// `emitter: volatile compress` on `socket.io#/#`.
const EMIT_FLAGS: (&str, &[&str]) = (
    "socket.io#/#",
    &[
        "93a7656d697474657283a47479706502a46461746192a3766f6ca178a36e7370",
        "a12f83a5726f6f6d7390a5666c61677382a8766f6c6174696c65c3a8636f6d70",
        "72657373c2a665786365707490",
    ],
);

/// `emitter: socketsJoin` on `socket.io-request#/#`.
const EMITTER_JOIN: (&str, &[&str]) = (
    "socket.io-request#/#",
    &[
        "7b2274797065223a322c226f707473223a7b22726f6f6d73223a5b227231225d",
        "2c22657863657074223a5b5d7d2c22726f6f6d73223a5b227232225d7d",
    ],
);

/// `emitter: socketsJoin many` on `socket.io-request#/#`.
const EMITTER_JOIN_MANY: (&str, &[&str]) = (
    "socket.io-request#/#",
    &[
        "7b2274797065223a322c226f707473223a7b22726f6f6d73223a5b227231225d",
        "2c22657863657074223a5b227233225d7d2c22726f6f6d73223a5b227234222c",
        "227235225d7d",
    ],
);

/// `emitter: socketsLeave` on `socket.io-request#/#`.
const EMITTER_LEAVE: (&str, &[&str]) = (
    "socket.io-request#/#",
    &[
        "7b2274797065223a332c226f707473223a7b22726f6f6d73223a5b227231225d",
        "2c22657863657074223a5b5d7d2c22726f6f6d73223a5b227232225d7d",
    ],
);

/// `emitter: disconnectSockets` on `socket.io-request#/#`.
const EMITTER_DISCONNECT: (&str, &[&str]) = (
    "socket.io-request#/#",
    &[
        "7b2274797065223a342c226f707473223a7b22726f6f6d73223a5b227231225d",
        "2c22657863657074223a5b5d7d2c22636c6f7365223a747275657d",
    ],
);

/// `emitter: disconnectSockets default` on `socket.io-request#/#`.
const EMITTER_DISCONNECT_ALL: (&str, &[&str]) = (
    "socket.io-request#/#",
    &[
        "7b2274797065223a342c226f707473223a7b22726f6f6d73223a5b5d2c226578",
        "63657074223a5b5d7d2c22636c6f7365223a66616c73657d",
    ],
);

/// `emitter: serverSideEmit` on `socket.io-request#/#`.
const EMITTER_SERVER_SIDE_EMIT: (&str, &[&str]) = (
    "socket.io-request#/#",
    &[
        "7b22756964223a22656d6974746572222c2274797065223a362c226461746122",
        "3a5b2270696e67222c312c2274776f225d7d",
    ],
);

/// `adapter: io.emit` on `socket.io#/#`.
const NODE_EMIT_ALL: (&str, &[&str]) = (
    "socket.io#/#",
    &[
        "93a656556b62474883a47479706502a46461746192a966726f6d2d6e6f64652a",
        "a36e7370a12f83a5726f6f6d7390a665786365707490a5666c61677380",
    ],
);

/// `adapter: io.to(room).emit` on `socket.io#/#room-a#`.
const NODE_EMIT_ROOM: (&str, &[&str]) = (
    "socket.io#/#room-a#",
    &[
        "93a656556b62474883a47479706502a46461746192a7726f6f6d2d6576a161a3",
        "6e7370a12f83a5726f6f6d7391a6726f6f6d2d61a665786365707490a5666c61",
        "677380",
    ],
);

/// `adapter: io.to(rooms).except.emit` on `socket.io#/#`.
const NODE_EMIT_ROOMS_EXCEPT: (&str, &[&str]) = (
    "socket.io#/#",
    &[
        "93a656556b62474883a47479706502a46461746191a8726f6f6d732d6576a36e",
        "7370a12f83a5726f6f6d7392a6726f6f6d2d61a6726f6f6d2d62a66578636570",
        "7491a6726f6f6d2d63a5666c61677380",
    ],
);

/// `adapter: fetchSockets` on `socket.io-request#/#`.
const NODE_FETCH: (&str, &[&str]) = (
    "socket.io-request#/#",
    &[
        "7b22756964223a2256556b624748222c22726571756573744964223a226e6f66",
        "484834222c2274797065223a352c226f707473223a7b22726f6f6d73223a5b5d",
        "2c22657863657074223a5b5d7d7d",
    ],
);

/// `adapter: allRooms` on `socket.io-request#/#`.
const NODE_ALL_ROOMS: (&str, &[&str]) = (
    "socket.io-request#/#",
    &[
        "7b22756964223a2256556b624748222c22726571756573744964223a22565038",
        "637264222c2274797065223a317d",
    ],
);

/// `adapter: allRooms` on `socket.io-response#/#`.
const NODE_ALL_ROOMS_RESPONSE: (&str, &[&str]) = (
    "socket.io-response#/#",
    &[
        "7b22726571756573744964223a22565038637264222c22726f6f6d73223a5b22",
        "4a36413975665a554744696a4855755f41414141222c22726f6f6d2d61225d7d",
    ],
);

/// `adapter: socketsJoin` on `socket.io-request#/#`.
const NODE_JOIN: (&str, &[&str]) = (
    "socket.io-request#/#",
    &[
        "7b22756964223a2256556b624748222c2274797065223a322c226f707473223a",
        "7b22726f6f6d73223a5b22726f6f6d2d61225d2c22657863657074223a5b5d7d",
        "2c22726f6f6d73223a5b22726f6f6d2d7a225d7d",
    ],
);

/// `adapter: serverSideEmit` on `socket.io-request#/#`.
const NODE_SERVER_SIDE_EMIT: (&str, &[&str]) = (
    "socket.io-request#/#",
    &[
        "7b22756964223a2256556b624748222c2274797065223a362c2264617461223a",
        "5b2268656c6c6f2d7065657273222c375d7d",
    ],
);

/// `adapter: broadcast with ack` on `socket.io-request#/#`.
const NODE_BROADCAST_ACK: (&str, &[&str]) = (
    "socket.io-request#/#",
    &[
        "85a3756964a656556b624748a9726571756573744964a6584d4c675272a47479",
        "706507a67061636b657483a47479706502a46461746192aa61636b2d706c6561",
        "736501a36e7370a12fa46f70747383a5726f6f6d7390a665786365707490a566",
        "6c61677381a774696d656f7574cd03e8",
    ],
);

/// `adapter: broadcast with ack` on `socket.io-response#/#`.
const NODE_BROADCAST_ACK_RESPONSE: (&str, &[&str]) = (
    "socket.io-response#/#",
    &[
        "7b2274797065223a382c22726571756573744964223a22584d4c675272222c22",
        "636c69656e74436f756e74223a317d",
    ],
);

/// `adapter: broadcast with ack` on `socket.io-response#/#`.
const NODE_BROADCAST_ACK_RESPONSE_2: (&str, &[&str]) = (
    "socket.io-response#/#",
    &[
        "83a47479706509a9726571756573744964a6584d4c675272a67061636b6574a4",
        "706f6e67",
    ],
);

/// Node's answers to a `serverSideEmitWithAck`: a listener's `cb("x")`, and its `cb()` (no
/// argument: JSON leaves `data` out).
const NODE_SERVER_SIDE_ACK: (&str, &[&str]) = (
    "socket.io-response#/#",
    &["7b2274797065223a362c22726571756573744964223a22546f4d474c4b222c2264617461223a2278227d"],
);
const NODE_SERVER_SIDE_EMPTY_ACK: (&str, &[&str]) = (
    "socket.io-response#/#",
    &["7b2274797065223a362c22726571756573744964223a22546f4d474c4b227d"],
);

/// `adapter: disconnectSockets` on `socket.io-request#/#`.
const NODE_DISCONNECT: (&str, &[&str]) = (
    "socket.io-request#/#",
    &[
        "7b22756964223a2256556b624748222c2274797065223a342c226f707473223a",
        "7b22726f6f6d73223a5b22726f6f6d2d61225d2c22657863657074223a5b5d7d",
        "2c22636c6f7365223a66616c73657d",
    ],
);

/// Built by hand (see the module comment): the PHP emitter's `->to('r1')->to('r2')->emit('multi',
/// 'x')`, published on `socket.io#/#r1#` AND on `socket.io#/#r2#` with the same bytes, `flags`
/// an empty array.
const PHP_MULTI_ROOM: &[&str] = &[
    "93",
    "a7656d6974746572", // "emitter"
    "83",
    "a474797065",
    "02",
    "a464617461",
    "92",
    "a56d756c7469",
    "a178",
    "a36e7370",
    "a12f",
    "82",
    "a5726f6f6d73",
    "92",
    "a27231",
    "a27232",
    "a5666c616773",
    "90",
];

/// Built by hand: the PHP/Ruby emitters' binary emit, packet type 5, the argument as bin.
const PHP_BINARY: &[&str] = &[
    "93",
    "a7656d6974746572",
    "83",
    "a474797065",
    "05",
    "a464617461",
    "92",
    "a3626966",
    "c403010203",
    "a36e7370",
    "a12f",
    "82",
    "a5726f6f6d73",
    "90",
    "a5666c616773",
    "90",
];

#[test]
fn channel_names() {
    let c = channels();
    assert_eq!(c.broadcast("/"), "socket.io#/#");
    assert_eq!(c.room("/admin", "r#1"), "socket.io#/admin#r#1#");
    assert_eq!(c.request("/"), "socket.io-request#/#");
    assert_eq!(c.response("/"), "socket.io-response#/#");
    assert_eq!(c.response_to("/", "abc"), "socket.io-response#/#abc#");
    assert_eq!(c.broadcast_pattern("/"), "socket.io#/#*");
    assert_eq!(Channels::new("a*").broadcast_pattern("/"), "a\\*#/#*");
    let parse = |s: &str| c.parse(s.as_bytes());
    assert_eq!(
        parse("socket.io#/#"),
        Some(Channel::Broadcast {
            nsp: "/".into(),
            room: None
        })
    );
    assert_eq!(
        parse("socket.io#/admin#r#1#"),
        Some(Channel::Broadcast {
            nsp: "/admin".into(),
            room: Some("r#1".into())
        })
    );
    assert_eq!(
        parse("socket.io-request#/#"),
        Some(Channel::Request { nsp: "/".into() })
    );
    assert_eq!(
        parse("socket.io-response#/#abc#"),
        Some(Channel::Response {
            nsp: "/".into(),
            uid: Some("abc".into())
        })
    );
    for other in [
        "socket.io#emitter",
        "socket.io#/#r1",
        "other#/#",
        "socket.io-request#/#x#",
        "socket.io:hub:t",
    ] {
        assert_eq!(parse(other), None, "{other}");
    }
}

#[test]
fn emitter_broadcasts_decode_and_target() {
    let (ch, b) = broadcast(EMIT_ALL);
    assert_eq!(b.uid, EMITTER_UID);
    assert_eq!(
        b.packet,
        Packet {
            kind: 2,
            data: vec![Mp::from("hello"), Mp::from("world"), Mp::from(1)],
            nsp: "/".into()
        }
    );
    assert_eq!(b.opts, Opts::default());
    assert_eq!(
        target(&ch, &b, "node1"),
        Some(Target {
            rooms: vec![],
            except: vec![]
        })
    );
    let p = to_payload(&b.packet).expect("payload");
    assert_eq!((p.event.as_str(), &p.data), ("hello", &json!(["world", 1])));

    let (ch, b) = broadcast(EMIT_ROOM);
    assert_eq!(b.opts.rooms, rooms(&["r1"]));
    assert_eq!(
        target(&ch, &b, "node1"),
        Some(Target {
            rooms: rooms(&["r1"]),
            except: vec![]
        })
    );

    // Several rooms: one publish on the namespace channel, delivered once to the union.
    let (ch, b) = broadcast(EMIT_ROOMS);
    assert_eq!(
        ch,
        Channel::Broadcast {
            nsp: "/".into(),
            room: None
        }
    );
    assert_eq!(
        target(&ch, &b, "node1"),
        Some(Target {
            rooms: rooms(&["r1", "r2"]),
            except: vec![]
        })
    );
    assert_eq!(
        to_payload(&b.packet).expect("payload").data,
        json!([{"a": 1}])
    );

    let (ch, b) = broadcast(EMIT_EXCEPT);
    assert_eq!(
        target(&ch, &b, "n"),
        Some(Target {
            rooms: vec![],
            except: rooms(&["r3"])
        })
    );
    let (ch, b) = broadcast(EMIT_ROOM_EXCEPT);
    assert_eq!(
        target(&ch, &b, "n"),
        Some(Target {
            rooms: rooms(&["r1"]),
            except: rooms(&["r2"])
        })
    );

    // Another namespace: for that namespace's node only.
    let (ch, b) = broadcast(EMIT_NSP);
    assert_eq!(b.packet.nsp, "/admin");
    assert!(target(&ch, &b, "n").is_some());
    let p = to_payload(&b.packet).expect("payload");
    assert_eq!(p.data, json!([1.5, -3]));
    let elsewhere = Channel::Broadcast {
        nsp: "/".into(),
        room: None,
    };
    assert_eq!(target(&elsewhere, &b, "n"), None);

    let (_, b) = broadcast(EMIT_FLAGS);
    assert_eq!(
        b.opts.flags,
        Flags {
            volatile: true,
            compress: Some(false),
            ..Flags::default()
        }
    );
}

#[test]
fn binary_arguments_become_attachments_and_back() {
    let (_, b) = broadcast(EMIT_BINARY);
    let p = to_payload(&b.packet).expect("payload");
    assert_eq!(p.event, "bin");
    assert_eq!(
        p.data,
        json!([{"_placeholder": true, "num": 0}, {"nested": {"_placeholder": true, "num": 1}}])
    );
    assert_eq!(
        p.attachments,
        vec![
            bytes::Bytes::from_static(&[1, 2, 3]),
            bytes::Bytes::from_static(&[255])
        ]
    );
    assert_eq!(from_payload("/", &p), b.packet);
}

#[test]
fn node_peer_broadcasts_are_byte_exact_both_ways() {
    for v in [NODE_EMIT_ALL, NODE_EMIT_ROOM, NODE_EMIT_ROOMS_EXCEPT] {
        let (ch, b) = broadcast(v);
        assert_eq!(b.uid, "VUkbGH");
        assert_eq!(encode_broadcast(&b), bytes(v.1), "{}", v.0);
        assert_eq!(broadcast_channel(&channels(), "/", &b.opts), v.0);
        // What a node sends, it ignores when it comes back.
        assert_eq!(target(&ch, &b, "VUkbGH"), None);
        assert!(target(&ch, &b, "other").is_some());
    }
    // Built from a hub payload, the way this node would publish `io.emit("from-node", 42)`.
    let payload = Payload::new("from-node", json!([42]));
    let ours = Broadcast {
        uid: "VUkbGH".into(),
        packet: from_payload("/", &payload),
        opts: Opts::default(),
    };
    assert_eq!(encode_broadcast(&ours), bytes(NODE_EMIT_ALL.1));
}

#[test]
fn requests_decode() {
    let req = |v: (&str, &[&str])| {
        assert!(matches!(
            channels().parse(v.0.as_bytes()),
            Some(Channel::Request { .. })
        ));
        decode_request(&bytes(v.1)).expect("decodes")
    };
    let sel = |r: &[&str], e: &[&str]| Selector {
        rooms: rooms(r),
        except: rooms(e),
    };
    assert_eq!(
        req(EMITTER_JOIN),
        Request::Join {
            uid: None,
            opts: sel(&["r1"], &[]),
            rooms: rooms(&["r2"])
        }
    );
    assert_eq!(
        req(EMITTER_JOIN_MANY),
        Request::Join {
            uid: None,
            opts: sel(&["r1"], &["r3"]),
            rooms: rooms(&["r4", "r5"])
        }
    );
    assert_eq!(
        req(EMITTER_LEAVE),
        Request::Leave {
            uid: None,
            opts: sel(&["r1"], &[]),
            rooms: rooms(&["r2"])
        }
    );
    assert_eq!(
        req(EMITTER_DISCONNECT),
        Request::Disconnect {
            uid: None,
            opts: sel(&["r1"], &[]),
            close: true
        }
    );
    assert_eq!(
        req(EMITTER_DISCONNECT_ALL),
        Request::Disconnect {
            uid: None,
            opts: sel(&[], &[]),
            close: false
        }
    );
    assert_eq!(
        req(EMITTER_SERVER_SIDE_EMIT),
        Request::ServerSideEmit {
            uid: Some("emitter".into()),
            request_id: None,
            data: vec![json!("ping"), json!(1), json!("two")]
        }
    );
    assert_eq!(
        req(NODE_FETCH),
        Request::Fetch {
            uid: Some("VUkbGH".into()),
            request_id: "nofHH4".into(),
            opts: sel(&[], &[])
        }
    );
    assert_eq!(
        req(NODE_ALL_ROOMS),
        Request::AllRooms {
            uid: Some("VUkbGH".into()),
            request_id: "VP8crd".into()
        }
    );
    assert_eq!(
        req(NODE_JOIN),
        Request::Join {
            uid: Some("VUkbGH".into()),
            opts: sel(&["room-a"], &[]),
            rooms: rooms(&["room-z"])
        }
    );
    assert_eq!(
        req(NODE_SERVER_SIDE_EMIT),
        Request::ServerSideEmit {
            uid: Some("VUkbGH".into()),
            request_id: None,
            data: vec![json!("hello-peers"), json!(7)]
        }
    );
    assert_eq!(
        req(NODE_DISCONNECT),
        Request::Disconnect {
            uid: Some("VUkbGH".into()),
            opts: sel(&["room-a"], &[]),
            close: false
        }
    );
    match req(NODE_BROADCAST_ACK) {
        Request::Broadcast {
            uid,
            request_id,
            packet,
            opts,
        } => {
            assert_eq!(
                (uid.as_deref(), request_id.as_str()),
                (Some("VUkbGH"), "XMLgRr")
            );
            assert_eq!(to_payload(&packet).expect("payload").data, json!([1]));
            assert_eq!(packet.data[0], Mp::from("ack-please"));
            assert_eq!(opts.flags.timeout, Some(1000));
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn server_side_acks_with_and_without_an_argument_are_byte_exact() {
    for (data, bytes_of) in [
        (Some(json!("x")), NODE_SERVER_SIDE_ACK.1),
        (None, NODE_SERVER_SIDE_EMPTY_ACK.1),
    ] {
        let r = Response::ServerSideEmitAck {
            request_id: "ToMGLK".into(),
            data,
        };
        assert_eq!(encode_response(&r), bytes(bytes_of));
        assert_eq!(decode_response(&bytes(bytes_of)), Ok(r));
    }
}

#[test]
fn responses_are_byte_exact() {
    let r = Response::AllRooms {
        request_id: "VP8crd".into(),
        rooms: rooms(&["J6A9ufZUGDijHUu_AAAA", "room-a"]),
    };
    assert_eq!(encode_response(&r), bytes(NODE_ALL_ROOMS_RESPONSE.1));
    assert_eq!(decode_response(&bytes(NODE_ALL_ROOMS_RESPONSE.1)), Ok(r));
    let r = Response::BroadcastClientCount {
        request_id: "XMLgRr".into(),
        client_count: 1,
    };
    assert_eq!(encode_response(&r), bytes(NODE_BROADCAST_ACK_RESPONSE.1));
    assert_eq!(
        decode_response(&bytes(NODE_BROADCAST_ACK_RESPONSE.1)),
        Ok(r)
    );
    let r = Response::BroadcastAck {
        request_id: "XMLgRr".into(),
        packet: Mp::from("pong"),
    };
    assert_eq!(encode_response(&r), bytes(NODE_BROADCAST_ACK_RESPONSE_2.1));
    assert_eq!(
        decode_response(&bytes(NODE_BROADCAST_ACK_RESPONSE_2.1)),
        Ok(r)
    );
    let sockets = Response::Sockets {
        request_id: "q".into(),
        sockets: vec![json!({"id": "x", "rooms": ["x"], "data": {}})],
    };
    assert_eq!(decode_response(&encode_response(&sockets)), Ok(sockets));
}

#[test]
fn php_and_ruby_quirks() {
    // One publish per room with the full list: only the copy on rooms[0]'s channel counts.
    let b = decode_broadcast(&bytes(PHP_MULTI_ROOM)).expect("flags: [] decodes");
    assert_eq!(b.opts.flags, Flags::default());
    let on = |room: &str| Channel::Broadcast {
        nsp: "/".into(),
        room: Some(room.into()),
    };
    assert_eq!(
        target(&on("r1"), &b, "n"),
        Some(Target {
            rooms: rooms(&["r1", "r2"]),
            except: vec![]
        })
    );
    assert_eq!(target(&on("r2"), &b, "n"), None);
    // Type 5 with binary: an ordinary event with an attachment (passing type 5 on would break
    // the client's parser).
    let b = decode_broadcast(&bytes(PHP_BINARY)).expect("decodes");
    assert_eq!(b.packet.kind, 5);
    let p = to_payload(&b.packet).expect("payload");
    assert_eq!(
        (p.event.as_str(), &p.data),
        ("bif", &json!([{"_placeholder": true, "num": 0}]))
    );
    assert_eq!(p.attachments, vec![bytes::Bytes::from_static(&[1, 2, 3])]);
    assert_eq!(from_payload("/", &p).kind, 2);
}

#[test]
fn odd_input_is_an_error_not_a_panic() {
    let good = bytes(EMIT_ALL.1);
    for cut in 0..good.len() {
        assert!(decode_broadcast(&good[..cut]).is_err(), "cut at {cut}");
    }
    for bad in [
        &b"\x90"[..],
        b"\x93\x01\x02\x03",
        b"\x93\xa1x\x80\x80",
        b"{",
        b"{\"type\":99}",
        b"\xc1",
    ] {
        assert!(decode_broadcast(bad).is_err());
        assert!(decode_request(bad).is_err());
        assert!(decode_response(bad).is_err());
    }
    let deep: Vec<u8> = std::iter::repeat_n(0x91u8, 100_000).collect();
    assert!(decode_broadcast(&deep).is_err());
    assert!(decode_request(&deep).is_err());
    // A packet without an event name cannot become a payload.
    let empty = Packet {
        kind: 2,
        data: vec![],
        nsp: "/".into(),
    };
    assert!(to_payload(&empty).is_err());
}

/// A fleet node sends its requests as a Node peer does: every request vector captured from
/// node re-encodes to the same bytes (the emitter's have no uid and another key order, and
/// are only decoded).
#[test]
fn requests_are_byte_exact_both_ways() {
    for v in [
        NODE_FETCH,
        NODE_ALL_ROOMS,
        NODE_JOIN,
        NODE_SERVER_SIDE_EMIT,
        NODE_DISCONNECT,
        NODE_BROADCAST_ACK,
    ] {
        let raw = bytes(v.1);
        let r = decode_request(&raw).expect("decodes");
        assert_eq!(encode_request(&r), raw, "{r:?}");
    }
    // What a fleet node adds: a leave like a join, a server-side emit waiting for acks.
    let leave = Request::Leave {
        uid: Some("gateway:a".into()),
        opts: Selector {
            rooms: rooms(&["r1"]),
            except: vec![],
        },
        rooms: rooms(&["r2"]),
    };
    assert_eq!(
        String::from_utf8(encode_request(&leave)).expect("utf-8"),
        r#"{"uid":"gateway:a","type":3,"opts":{"rooms":["r1"],"except":[]},"rooms":["r2"]}"#
    );
    assert_eq!(decode_request(&encode_request(&leave)), Ok(leave));
    let emit = Request::ServerSideEmit {
        uid: Some("gateway:a".into()),
        request_id: Some("q1".into()),
        data: vec![json!("hi")],
    };
    assert_eq!(decode_request(&encode_request(&emit)), Ok(emit));
}

#[test]
fn a_fleet_node_ignores_its_siblings_broadcasts_the_hub_delivers() {
    assert_eq!(node_uid("a:12"), "gateway:a:12");
    assert_eq!(
        node_uid("x#y"),
        "gateway:x_y",
        "a # would end the uid in a channel name"
    );
    assert!(from_fleet(&node_uid("b")));
    assert!(!from_fleet("VUkbGH") && !from_fleet(EMITTER_UID));
    let ch = Channel::Broadcast {
        nsp: "/".into(),
        room: Some("r1".into()),
    };
    let mut b = decode_broadcast(&bytes(EMIT_ROOM.1)).expect("decodes");
    b.uid = node_uid("b");
    // The hub carried it to every node already.
    assert_eq!(target(&ch, &b, &node_uid("a")), None);
    // Except rooms: only the sender's own sockets had it from the hub.
    b.opts.except = rooms(&["r2"]);
    assert_eq!(
        target(&ch, &b, &node_uid("a")),
        Some(Target {
            rooms: rooms(&["r1"]),
            except: rooms(&["r2"])
        })
    );
    assert_eq!(target(&ch, &b, &node_uid("b")), None, "its own");
}

#[test]
fn ack_arguments_travel_as_msgpack_with_their_binaries() {
    let value = json!({"ok": true, "file": {"_placeholder": true, "num": 0}, "n": [1, -2, 1.5]});
    let bin = vec![bytes::Bytes::from_static(b"\x00\xff")];
    let mp = to_msgpack(&value, &bin);
    assert_eq!(ack_arg(&mp), Ok((value, bin)));
    // Node's own ack of a broadcast, captured: the string "pong".
    let Response::BroadcastAck { packet, .. } =
        decode_response(&bytes(NODE_BROADCAST_ACK_RESPONSE_2.1)).expect("decodes")
    else {
        panic!("a broadcast ack");
    };
    assert_eq!(ack_arg(&packet), Ok((json!("pong"), vec![])));
}

#[test]
fn answers_are_gathered_until_every_other_server_answered() {
    let mut g = Gathering::new(2);
    assert!(!g.complete());
    g.take(decode_response(&bytes(NODE_ALL_ROOMS_RESPONSE.1)).expect("decodes"));
    assert_eq!((g.complete(), g.progress()), (false, (1, 2)));
    g.take(Response::Sockets {
        request_id: "VP8crd".into(),
        sockets: vec![json!({"id": "x"})],
    });
    assert!(g.complete());
    assert_eq!(g.rooms, rooms(&["J6A9ufZUGDijHUu_AAAA", "room-a"]));
    assert_eq!(g.sockets, vec![json!({"id": "x"})]);
    // Nobody else: complete at once.
    assert!(Gathering::new(0).complete());
}

#[test]
fn broadcast_acks_are_complete_when_every_server_counted_and_every_socket_acked() {
    let count = |n| Response::BroadcastClientCount {
        request_id: "XMLgRr".into(),
        client_count: n,
    };
    let ack = || decode_response(&bytes(NODE_BROADCAST_ACK_RESPONSE_2.1)).expect("decodes");
    let mut g = AckGathering::new(2);
    // An ack may come before its server's count.
    g.take(ack());
    g.take(count(1));
    assert!(!g.complete(), "one server has not counted");
    g.take(count(2));
    assert!(g.counted() && !g.complete());
    g.take(ack());
    assert!(!g.complete());
    g.take(ack());
    assert!(g.complete());
    assert_eq!((g.clients, g.acks.len()), (3, 3));
    assert_eq!(response_id(&count(0)), "XMLgRr");
    // Servers with no socket to ask: complete once they counted.
    let mut none = AckGathering::new(1);
    none.take(count(0));
    assert!(none.complete());
}
