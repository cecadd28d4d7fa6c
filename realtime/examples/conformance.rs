//! The conformance server for the official protocol test suites (socketio/engine.io-protocol
//! and socketio/socket.io-protocol, folder `test-suite/`), which expect exactly this setup on
//! `http://localhost:3000`: a raw Engine.IO echo at `/engine.io/`, and Socket.IO at
//! `/socket.io/` with namespaces `/` and `/custom` (emit `auth` with the handshake auth on
//! connect, answer `message` with `message-back`, ack `message-with-ack` with the same args);
//! pingInterval 300 ms, pingTimeout 200 ms, maxPayload 1e6, connectTimeout 1000 ms, CORS `*`,
//! recovery off. Everything comes from the library API (`realtime::diag::ProtocolSuites`, which
//! the gateway also mounts on a route: `realtime: protocol-suites`).
//!
//! ```text
//! cargo run -p realtime --features conformance --example conformance [port]
//! ```
//!
//! The HTTP/1.1 side is a minimal hyper shell that turns each exchange into a
//! `realtime::seam::Request` and writes back whichever `Response` shape comes out, as the
//! gateway does; it listens on loopback only.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame as BodyFrame, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use realtime::diag::ProtocolSuites;
use realtime::seam::{Body, BodyError, Request, Response, Service};
use tokio::net::TcpListener;

/// The test suite's fixed URL.
const DEFAULT_PORT: u16 = 3000;
/// Request body chunks buffered towards the engine, as the gateway's seam does.
const BODY_CHUNKS_IN_FLIGHT: usize = 4;
/// The in-memory pipe between an upgraded connection and the engine (as the gateway's).
const UPGRADE_PIPE_BYTES: usize = 64 * 1024;

type OutBody = UnsyncBoxBody<Bytes, Infallible>;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let port = match std::env::args().nth(1) {
        Some(arg) => arg.parse()?,
        None => DEFAULT_PORT,
    };
    let suites = Arc::new(ProtocolSuites::new());
    let listener = TcpListener::bind(("127.0.0.1", port)).await?;
    println!(
        "conformance server on http://localhost:{port}{} and {}",
        ProtocolSuites::ENGINE_PATH,
        ProtocolSuites::SOCKETIO_PATH
    );
    loop {
        let (stream, peer) = listener.accept().await?;
        let suites = suites.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req: hyper::Request<Incoming>| {
                exchange(suites.clone(), peer, req)
            });
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .with_upgrades()
                .await;
        });
    }
}

/// One HTTP exchange through the seam. hyper drops this future when the client goes away,
/// as the gateway does.
async fn exchange(
    engine: Arc<ProtocolSuites>,
    peer: SocketAddr,
    mut req: hyper::Request<Incoming>,
) -> Result<hyper::Response<OutBody>, Infallible> {
    let upgrade = req
        .headers()
        .get(http::header::UPGRADE)
        .is_some()
        .then(|| hyper::upgrade::on(&mut req));
    let (head, incoming) = req.into_parts();
    let body = if upgrade.is_some() {
        Body::empty()
    } else {
        let (tx, body) = Body::channel(BODY_CHUNKS_IN_FLIGHT);
        tokio::spawn(feed_body(incoming, tx));
        body
    };
    let seam_req = Request {
        head,
        peer: Some(peer),
        client: None,
        local: None,
        secure: false,
        body,
    };
    Ok(match engine.call(seam_req).await {
        Response::Full(resp) => resp.map(|b| Full::new(b).boxed_unsync()),
        Response::Stream { head, body } => {
            use futures_util::StreamExt;
            let chunks = body.map(|chunk| Ok::<_, Infallible>(BodyFrame::data(chunk)));
            hyper::Response::from_parts(head, StreamBody::new(chunks).boxed_unsync())
        }
        Response::Upgrade { head, on_upgrade } => {
            let Some(upgrade) = upgrade else {
                return Ok(full(http::StatusCode::INTERNAL_SERVER_ERROR, Bytes::new()));
            };
            tokio::spawn(async move {
                let Ok(upgraded) = upgrade.await else {
                    return;
                };
                let (mut ours, theirs) = tokio::io::duplex(UPGRADE_PIPE_BYTES);
                let service = tokio::spawn(on_upgrade(Box::new(theirs)));
                let mut client = TokioIo::new(upgraded);
                let _ = tokio::io::copy_bidirectional(&mut client, &mut ours).await;
                service.abort();
            });
            hyper::Response::from_parts(head, Full::new(Bytes::new()).boxed_unsync())
        }
    })
}

/// Moves the request body into the seam's channel until the engine stops wanting it.
async fn feed_body(
    mut incoming: Incoming,
    tx: tokio::sync::mpsc::Sender<Result<Bytes, BodyError>>,
) {
    while let Some(frame) = incoming.frame().await {
        match frame {
            Ok(frame) => {
                if let Ok(data) = frame.into_data() {
                    if tx.send(Ok(data)).await.is_err() {
                        return;
                    }
                }
            }
            Err(e) => {
                let _ = tx.send(Err(BodyError::Aborted(e.to_string()))).await;
                return;
            }
        }
    }
}

fn full(status: http::StatusCode, body: Bytes) -> hyper::Response<OutBody> {
    let mut resp = hyper::Response::new(Full::new(body).boxed_unsync());
    *resp.status_mut() = status;
    resp
}
