//! The reference server of the official socket.io-protocol test-suite (its `test-suite/`
//! folder), for `examples/conformance.rs` and the crate's own tests: behind the `conformance`
//! feature, not part of the library's API otherwise.

use std::future::ready;
use std::time::Duration;

use super::event::Args;
use super::options::SocketIoOptions;
use super::server::SocketIo;

/// `connectTimeout` the official test-suite expects (it waits for the
/// server to close a silent connection).
pub const CONFORMANCE_CONNECT_TIMEOUT: Duration = Duration::from_millis(1000);

/// Options for the official socket.io-protocol test-suite: recovery off
/// (its `pid` and offsets would fail 7 of its checks), connectTimeout 1 s.
pub fn conformance_options() -> SocketIoOptions {
    SocketIoOptions {
        connect_timeout: CONFORMANCE_CONNECT_TIMEOUT,
        recovery: None,
        ..SocketIoOptions::default()
    }
}

/// See [`install_conformance`]: keeps `auth` out of the CONNECT reply's TCP segment.
const CONFORMANCE_AUTH_DELAY: Duration = Duration::from_millis(10);

/// The reference server of the socket.io-protocol test-suite: namespaces
/// `/` and `/custom`; on connect, emit `auth` with the CONNECT payload;
/// answer `message` with `message-back` (same arguments); acknowledge
/// `message-with-ack` with its arguments.
pub fn install_conformance(io: &SocketIo) {
    for path in ["/", "/custom"] {
        io.namespace(path, |socket| {
            // The suite reads one WebSocket message per `await` and attaches its next listener
            // only afterwards, so `auth` must not reach it in the same TCP segment as the
            // CONNECT reply (node's separate socket writes happen to avoid that). A few ms
            // later it is a separate write; the order is unchanged.
            let s = socket.clone();
            tokio::spawn(async move {
                tokio::time::sleep(CONFORMANCE_AUTH_DELAY).await;
                let _ = s.emit("auth", Args::from(vec![s.auth().clone()]));
            });
            socket.on("message", |socket, event, _| {
                let _ = socket.emit("message-back", event.args);
            });
            socket.on("message-with-ack", |_, event, ack| {
                if let Some(ack) = ack {
                    let _ = ack.send(event.args);
                }
            });
            ready(Ok(()))
        });
    }
}
