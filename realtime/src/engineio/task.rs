//! The one task of an Engine.IO session: the heartbeat, the layer above's future and the
//! WebSocket carrying the session, polled together (see the `session` module's doc).

use std::pin::pin;
use std::sync::Arc;

use tokio::sync::oneshot;

use super::conn::ConnWork;
use super::parts::{poll_slot, Parts};
use super::session::{Session, Ws};
use super::websocket;

/// Everything a session runs, in one task: see the module's doc.
pub(super) struct SessionTask {
    session: Arc<Session>,
    handler: ConnWork,
    /// A polling session's: the WebSocket it may upgrade to.
    upgrade: Option<oneshot::Receiver<Ws>>,
}

impl SessionTask {
    /// The session's task for `handler` (the layer above's future). A polling session that
    /// may upgrade gets its hand-over point now, before its handshake is answered.
    pub(super) fn new(session: Arc<Session>, handler: ConnWork) -> SessionTask {
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
    /// The four parts are polled in a fixed order: the layer above's outgoing future first, at
    /// every wake-up and with the task's own waker (a hub delivery is the common wake-up: it
    /// wakes the task directly), then, each only when it was woken ([`Parts`]), the client's
    /// messages, the WebSocket (which writes what the first queued with one flush), the
    /// heartbeat. A part that ends
    /// is dropped at once (the WebSocket's connection closes then, not when the others end).
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
        let ConnWork { incoming, outgoing } = handler;
        let mut outgoing = pin!(outgoing);
        let mut incoming = pin!(Some(incoming));
        let mut transport = pin!(Some(transport));
        let mut heartbeat = pin!(Some(session.drive()));
        let mut parts = Parts::<3>::new();
        std::future::poll_fn(|cx| {
            parts.poll(
                cx,
                |cx| poll_slot(outgoing.as_mut(), cx),
                |part, cx| match part {
                    0 => poll_slot(incoming.as_mut(), cx),
                    1 => poll_slot(transport.as_mut(), cx),
                    _ => poll_slot(heartbeat.as_mut(), cx),
                },
            )
        })
        .await;
    }
}
