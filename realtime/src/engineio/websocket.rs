//! The WebSocket transport: one Engine.IO packet per frame, binary messages as binary frames.
//!
//! A session reaches it either directly (WebSocket handshake) or from polling through the
//! probe: `2probe`/`3probe`, then `5` hands the session over ([`upgrade`]).

use std::future::Future;
use std::pin::{pin, Pin};
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use tokio::time::{sleep_until, timeout, Instant};
use tokio_tungstenite::tungstenite::error::ProtocolError;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::WebSocketStream;

use super::parts::{poll_slot, Parts};
use super::session::{frame_packet, Inbound, Session};
use super::{CloseReason, Frame, Packet, WsFrame, PROBE};
use crate::seam::Upgraded;

/// After a close frame, how long the other side gets to finish the closing handshake before
/// the connection is dropped anyway: a peer that never answers must not pin the task.
const CLOSE_GRACE: Duration = Duration::from_secs(1);
/// Messages written between two flushes: batches a burst into few socket writes while
/// keeping the time before the first one reaches the client short.
const WRITE_BATCH: usize = 64;
/// How many bytes of frames tungstenite gathers before it writes them to the connection: the
/// plaintext of one TLS record, so a burst goes out in writes that each make one record (the
/// last one at the flush). tungstenite's default (128 KiB) wrote a whole burst at once, and
/// its buffer keeps the capacity of the largest burst for the connection's life.
const WRITE_BUFFER: usize = 16 * 1024;

pub(super) use super::session::Ws;

/// The WebSocket over an upgraded connection. Frames and messages above `maxPayload` are
/// refused by tungstenite before they are buffered (node's `ws` has the same limit).
pub(super) async fn accept(io: Upgraded, max_payload: usize) -> Ws {
    let config = crate::seam::ws_config()
        .write_buffer_size(WRITE_BUFFER)
        .max_message_size(Some(max_payload))
        .max_frame_size(Some(max_payload));
    Box::new(WebSocketStream::from_raw_socket(io, Role::Server, Some(config)).await)
}

/// Closes a WebSocket that was accepted but cannot be used (node accepts, then closes: an
/// upgrade for an upgraded sid, a probe while another is under way, `transport=polling`).
pub(super) async fn refuse(mut ws: Ws) {
    let _ = (*ws).close(None).await;
    let _ = timeout(CLOSE_GRACE, async {
        while let Some(Ok(_)) = ws.next().await {}
    })
    .await;
}

/// An upgrade reserved on a polling session, from the upgrade request on: a second
/// WebSocket, or a poll, sees the session as upgrading even before the first one has been
/// switched. Dropped without `5` (probe closed, or the switch never happened), it puts the
/// session back on plain polling.
pub(super) struct Probe(Arc<Session>);

impl Probe {
    pub(super) fn begin(session: Arc<Session>) -> Option<Probe> {
        // `then`, not `then_some`: a `Probe` made and dropped for a refused WebSocket would
        // abort the probe under way on another one (its `Drop` is `abort_probe`).
        (session.config.allow_upgrades && session.begin_probe()).then(|| Probe(session))
    }
}

impl Drop for Probe {
    fn drop(&mut self) {
        self.0.abort_probe();
    }
}

/// A probe WebSocket for a polling session: answers `2probe`, and on `5` carries the
/// session from then on. Anything else, or no `5` within `upgradeTimeout`, closes the probe
/// and the session stays on polling.
pub(super) async fn upgrade(probe: Probe, mut ws: Ws) {
    let session = probe.0.clone();
    let deadline = Instant::now() + session.config.upgrade_timeout;
    loop {
        let msg = tokio::select! {
            msg = ws.next() => msg,
            () = sleep_until(deadline) => break,
            () = session.wait_not_open() => break,
        };
        let packet = match msg {
            Some(Ok(Message::Text(text))) => Packet::decode_text(text.as_str()),
            // WebSocket-level ping/pong (tungstenite answers pings by itself).
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            _ => break,
        };
        match packet {
            Ok(Packet::Ping(Some(data))) if data == PROBE => {
                let pong = Packet::Pong(Some(PROBE.into())).encode_text();
                if ws.send(Message::text(pong)).await.is_err() {
                    break;
                }
                session.probe_answered();
            }
            // node upgrades on `5` even without a probe before it. The session's own task
            // carries it on this WebSocket from now on; this one ends.
            Ok(Packet::Upgrade) => {
                if session.complete_upgrade() {
                    drop(probe);
                    if let Some(back) = session.hand_over(ws) {
                        // The session closed meanwhile.
                        refuse(back).await;
                    }
                    return;
                }
                break;
            }
            _ => break,
        }
    }
    // Back to plain polling before the closing handshake, which may take a while.
    drop(probe);
    refuse(ws).await;
}

/// Closes the session when the WebSocket carrying it ends, including when the task running it
/// is dropped (the runtime shutting down).
struct CloseOnDrop<'a>(&'a Session);

impl Drop for CloseOnDrop<'_> {
    fn drop(&mut self) {
        self.0.close(CloseReason::TransportClose);
    }
}

/// Carries `session` over `ws` until either ends (in the session's task).
///
/// The reads and the writes are polled apart, each only when woken ([`Parts`]): a message
/// to write does not poll the reads (down through the WebSocket, TLS and the socket's
/// readiness), nor a message read the writes.
pub(super) async fn run(session: &Session, ws: Ws) {
    let _close = CloseOnDrop(session);
    let (mut sink, mut stream) = ws.split();
    let mut writer = pin!(Some(write_loop(session, &mut sink)));
    let mut reader = pin!(Some(read_loop(session, &mut stream)));
    let mut parts = Parts::<2>::new();
    // Until one of them ends.
    std::future::poll_fn(|cx| {
        let mut ended = false;
        let _ = parts.poll(
            cx,
            |_| Poll::Ready(()),
            |part, cx| {
                let polled = match part {
                    0 => poll_slot(writer.as_mut(), cx),
                    _ => poll_slot(reader.as_mut(), cx),
                };
                ended |= polled.is_ready();
                polled
            },
        );
        if ended {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    })
    .await;
    // We sent a close frame: let the client's answer come in. Or the client is gone or broke
    // the protocol: the session is closed, write the frame.
    let rest: Option<Pin<&mut (dyn Future<Output = ()> + Send)>> =
        match (writer.as_mut().as_pin_mut(), reader.as_mut().as_pin_mut()) {
            (Some(writer), None) => Some(writer),
            (None, Some(reader)) => Some(reader),
            _ => None,
        };
    if let Some(rest) = rest {
        // Boxed: the task's future keeps its largest state for life, and this runs once.
        let _ = Box::pin(timeout(CLOSE_GRACE, rest)).await;
    }
}

async fn read_loop(session: &Session, stream: &mut SplitStream<Ws>) {
    while let Some(msg) = stream.next().await {
        let packet = match msg {
            Ok(Message::Text(text)) => match Packet::decode_text(text.as_str()) {
                Ok(packet) => packet,
                Err(e) => return session.close(CloseReason::ParseError(e.to_string())),
            },
            Ok(Message::Binary(bytes)) => Packet::decode_binary(bytes),
            Ok(Message::Close(_)) => break,
            Ok(_) => continue,
            // The peer vanished without a closing handshake: still just the transport gone.
            Err(WsError::Protocol(ProtocolError::ResetWithoutClosingHandshake))
            | Err(WsError::ConnectionClosed | WsError::AlreadyClosed) => break,
            Err(WsError::Capacity(e)) => {
                return session.close_with_code(
                    CloseReason::TransportError(e.to_string()),
                    Some(CloseCode::Size),
                );
            }
            Err(e) => return session.close(CloseReason::TransportError(e.to_string())),
        };
        match session.on_packet(packet) {
            Inbound::Deliver(frame) => {
                // Not delivered while draining: dropped, as node ignores a closing socket's input.
                if !session.deliver(frame).await && session.is_closed() {
                    return;
                }
            }
            Inbound::Ignore => {}
            Inbound::Stop => return,
        }
    }
    session.close(CloseReason::TransportClose);
}

/// What the WebSocket writer does next.
enum Next {
    /// The session changed: look at its state (control packets, a close).
    Changed,
    Frame(Frame),
    /// The layer above dropped its sender.
    QueueClosed,
}

async fn write_loop(session: &Session, sink: &mut SplitSink<Ws, Message>) {
    let mut seen = session.changes_now();
    let mut rx = session.outgoing.lock().await;
    let mut queue_open = true;
    let mut next = Next::Changed;
    let mut registered = None;
    loop {
        match next {
            Next::Changed => {
                seen = session.changes_now();
                let batch = session.take_for_ws(&mut rx);
                if !write_all(sink, batch.packets.into_iter()).await {
                    return session.close(CloseReason::TransportError("write error".into()));
                }
                if let Some(code) = batch.close {
                    let frame = CloseFrame {
                        code,
                        reason: "".into(),
                    };
                    // Boxed, as the close of `run`: once per connection.
                    let _ = Box::pin(sink.send(Message::Close(Some(frame)))).await;
                    if batch.drained {
                        session.ws_drained();
                    }
                    return;
                }
            }
            Next::Frame(frame) => {
                // The messages queued behind it go out in the same write, taken from the queue
                // as they are written: no list of them is made (a list kept between batches
                // stayed allocated on every idle connection).
                let mut first = Some(frame);
                let mut taken = 0;
                let batch = std::iter::from_fn(|| {
                    if taken == WRITE_BATCH {
                        return None;
                    }
                    taken += 1;
                    first.take().or_else(|| rx.try_recv().ok())
                });
                if !write_all(sink, batch.map(frame_packet)).await {
                    return session.close(CloseReason::TransportError("write error".into()));
                }
            }
            Next::QueueClosed => queue_open = false,
        }
        // A change first: it may be a close, after which nothing queued is sent.
        next = std::future::poll_fn(|cx| {
            if session.poll_ws_change(seen, &mut registered, cx).is_ready() {
                return Poll::Ready(Next::Changed);
            }
            if !queue_open {
                return Poll::Pending;
            }
            rx.poll_recv(cx).map(|frame| match frame {
                Some(frame) => Next::Frame(frame),
                None => Next::QueueClosed,
            })
        })
        .await;
    }
}

/// Writes packets as frames with one flush at the end; `false` when the connection failed.
async fn write_all(
    sink: &mut SplitSink<Ws, Message>,
    packets: impl Iterator<Item = Packet>,
) -> bool {
    let mut any = false;
    for packet in packets {
        any = true;
        let msg = match packet.into_ws_frame() {
            WsFrame::Text(text) => Message::text(text),
            WsFrame::Binary(bytes) => Message::binary(bytes),
        };
        if sink.feed(msg).await.is_err() {
            return false;
        }
    }
    !any || sink.flush().await.is_ok()
}
