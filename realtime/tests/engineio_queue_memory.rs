//! An Engine.IO connection's two message queues take almost nothing while they are empty,
//! which is what most connections' queues are most of the time: every idle connection of a
//! realtime server holds them. tokio's bounded channel, which carried the client's messages,
//! kept its cache-padded state and a first block of 32 message slots for an empty queue: both
//! ends of a connection held 2,328 bytes with it, 888 without; the close, a tokio watch
//! channel (a value behind a lock, a version and eight `Notify`s in an allocation of their
//! own), 304 more of them: 584 since it is a flag, a lock and one `Notify` inline (most of the
//! rest is the handshake's details). A test binary of its own: it counts the process's live
//! heap with a global allocator.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use realtime::engineio::conn::pair;
use realtime::engineio::HandshakeInfo;
use realtime::engineio::Transport;

mod support;
use support::counting_alloc::LIVE;

#[test]
fn both_ends_of_an_idle_connection_take_under_a_kilobyte() {
    let info = HandshakeInfo {
        headers: http::HeaderMap::new(),
        query: String::new(),
        peer: None,
        client: None,
        local: None,
        authority: None,
        secure: true,
        transport: Transport::WebSocket,
    };
    let sid: Arc<str> = Arc::from("sid");
    let before = LIVE.load(Ordering::SeqCst);
    // The Engine.IO defaults: 1,024 messages out, 128 in.
    let (conn, transport) = pair(sid, info, 1024, 128);
    let held = LIVE.load(Ordering::SeqCst) - before;
    drop((conn, transport));
    eprintln!("both ends of an idle connection: {held} bytes");
    assert!(held <= 640, "an idle connection's queues hold {held} bytes");
}
