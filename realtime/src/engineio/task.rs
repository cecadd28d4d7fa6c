//! The one task of an Engine.IO session: the heartbeat, the layer above's future and the
//! WebSocket carrying the session, polled together (see the `session` module's doc).

use std::future::Future;
use std::pin::pin;
use std::sync::Arc;
use std::task::Poll;

use tokio::sync::oneshot;

use super::conn::ConnFuture;
use super::session::{Session, Ws};
use super::websocket;

/// Everything a session runs, in one task: see the module's doc.
pub(super) struct SessionTask {
    session: Arc<Session>,
    handler: ConnFuture,
    /// A polling session's: the WebSocket it may upgrade to.
    upgrade: Option<oneshot::Receiver<Ws>>,
}

impl SessionTask {
    /// The session's task for `handler` (the layer above's future). A polling session that
    /// may upgrade gets its hand-over point now, before its handshake is answered.
    pub(super) fn new(session: Arc<Session>, handler: ConnFuture) -> SessionTask {
        let upgrade = session.upgrade_point();
        SessionTask {
            session,
            handler,
            upgrade,
        }
    }

    /// Runs the session until it is closed and the layer above's future has ended: `ws` for a
    /// session opened on a WebSocket, else the WebSocket an upgrade hands over, if any.
    ///
    /// The three parts are polled in a fixed order at each wake-up: the layer above first
    /// (what the hub queued for it goes into the outgoing queue), then the WebSocket (which
    /// writes all of it with one flush), then the heartbeat. A part that ends is dropped at
    /// once (the WebSocket's connection closes then, not when the others end).
    pub(super) async fn run(self, ws: Option<Ws>) {
        let SessionTask {
            session,
            handler,
            upgrade,
        } = self;
        let transport = async {
            let ws = match (ws, upgrade) {
                (Some(ws), _) => ws,
                (None, Some(upgrade)) => match upgrade.await {
                    Ok(ws) => ws,
                    Err(_) => return,
                },
                (None, None) => return,
            };
            websocket::run(&session, ws).await;
        };
        let mut handler = Some(handler);
        let mut transport = pin!(Some(transport));
        let mut heartbeat = pin!(Some(session.drive()));
        std::future::poll_fn(|cx| {
            if let Some(h) = handler.as_mut() {
                if h.as_mut().poll(cx).is_ready() {
                    handler = None;
                }
            }
            if let Some(t) = transport.as_mut().as_pin_mut() {
                if t.poll(cx).is_ready() {
                    transport.set(None);
                }
            }
            if let Some(h) = heartbeat.as_mut().as_pin_mut() {
                if h.poll(cx).is_ready() {
                    heartbeat.set(None);
                }
            }
            if handler.is_none() && transport.is_none() && heartbeat.is_none() {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        })
        .await;
    }
}
