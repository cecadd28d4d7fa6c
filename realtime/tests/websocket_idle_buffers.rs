//! A WebSocket waiting for its peer holds no read or write buffer (vendor/tungstenite.patch.md,
//! switched on by `realtime::seam::ws_config`, which every server-side WebSocket starts from).
//! tungstenite kept its read buffer (1 KiB here, `WS_READ_BUFFER`) from the start and its write
//! buffer at the largest batch of frames it wrote, both for the connection's life: on a
//! realtime server, whose connections mostly wait, memory on every one of them. A test binary
//! of its own: it counts the process's live heap with a global allocator.

use std::sync::atomic::Ordering;

use futures_util::{FutureExt, SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

mod support;
use support::counting_alloc::LIVE;

fn live() -> isize {
    LIVE.load(Ordering::SeqCst)
}

#[tokio::test(flavor = "current_thread")]
async fn a_websocket_waiting_for_its_peer_holds_no_read_or_write_buffer() {
    let (client, server) = tokio::io::duplex(64 * 1024);
    let config = realtime::seam::ws_config().write_buffer_size(16 * 1024);
    let mut client = WebSocketStream::from_raw_socket(client, Role::Client, None).await;
    let made = live();
    let mut server = WebSocketStream::from_raw_socket(server, Role::Server, Some(config)).await;
    let fresh = live() - made;
    assert!(
        fresh < realtime::seam::WS_READ_BUFFER as isize,
        "a new WebSocket holds {fresh} bytes: its read buffer up front"
    );

    // A message from the client is read; then the server looks for more, and finds nothing.
    client.send(Message::text("hello")).await.expect("sent");
    let got = server.next().await.expect("a message").expect("read");
    assert_eq!(got, Message::text("hello"));
    drop(got);
    let before = live();
    assert!(
        server.next().now_or_never().is_none(),
        "nothing more to read"
    );
    let waiting = live();
    assert!(
        waiting <= before,
        "waiting for the client took {} bytes more",
        waiting - before
    );
    assert!(
        waiting - made < realtime::seam::WS_READ_BUFFER as isize,
        "a WebSocket waiting for its peer holds {} bytes: its read buffer",
        waiting - made
    );

    // And it reads on when the client speaks again.
    client.send(Message::text("again")).await.expect("sent");
    let got = server.next().await.expect("a message").expect("read");
    assert_eq!(got, Message::text("again"));

    // A batch of frames written and flushed leaves no write buffer behind (written to a
    // socket that takes everything, so that no pipe keeps the bytes).
    let mut sink = WebSocketStream::from_raw_socket(Discard, Role::Server, Some(config)).await;
    let before = live();
    for i in 0..64 {
        sink.feed(Message::text(format!("event number {i} with some payload")))
            .await
            .expect("fed");
    }
    sink.flush().await.expect("flushed");
    let written = live();
    assert!(
        written <= before,
        "the write buffer ({} bytes) is kept after the flush",
        written - before
    );
    sink.send(Message::text("more")).await.expect("written on");
}

/// A socket that takes every byte written to it and never has anything to read.
struct Discard;

impl tokio::io::AsyncRead for Discard {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
        _: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Pending
    }
}

impl tokio::io::AsyncWrite for Discard {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::task::Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
}
