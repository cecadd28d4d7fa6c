//! A connection accepted by one worker thread's runtime and run on another's moves its socket
//! to the runtime that runs it (the pingora-core patch of vendor/accept-runtime.patch.md).
//! With a runtime per thread (`work_stealing: false`, the default), pingora accepts on one
//! runtime and runs each connection on a random thread's; a socket stays registered with the
//! runtime that accepted it, so every read and write readiness of the connection woke the
//! accepting thread, which then signalled the connection's thread through its event fd.
//!
//! Shown here with the accepting runtime gone: the socket then works only if the runtime that
//! serves it is the one it is registered with.

use std::io::{Read, Write};

use pingora::protocols::l4::stream::Stream;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

#[test]
fn an_accepted_socket_is_served_by_the_runtime_it_was_moved_to() {
    // The accepting runtime.
    let accepting = runtime();
    let (mut stream, mut client) = accepting.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let client =
            std::net::TcpStream::connect(listener.local_addr().expect("addr")).expect("connect");
        let (accepted, _) = listener.accept().await.expect("accept");
        (Stream::from(accepted), client)
    });
    drop(accepting);

    // The runtime that runs the connection.
    let serving = runtime();
    client.write_all(b"ping").expect("client writes");
    serving.block_on(async {
        stream
            .register_with_this_runtime()
            .expect("the socket moves to this runtime");
        let mut got = [0u8; 4];
        stream
            .read_exact(&mut got)
            .await
            .expect("read on the new runtime");
        assert_eq!(&got, b"ping");
        stream.write_all(b"pong").await.expect("write");
        stream.flush().await.expect("flush");
    });
    let mut got = [0u8; 4];
    client.read_exact(&mut got).expect("client reads");
    assert_eq!(&got, b"pong");
}
