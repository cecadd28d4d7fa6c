//! WebSocket passthrough to the app (Action Cable, Laravel Reverb). Only WebSocket handshakes
//! come here: any other `Upgrade` (`h2c` above all) is taken off the request before routing
//! (`forwarding::drop_foreign_upgrade`), so no client gets a raw connection of another protocol
//! to the app. A failure is told to the client in general words (the failure table,
//! [`crate::failure`]); the app's address and the OS error go to the log only.
//!
//! pingora 0.9.1's own upstream-upgrade path loses about 1% of sessions right after the 101
//! (pingora issue #946) and applies its 60 s read timeout to idle upgraded connections. So the
//! gateway tunnels upgrades itself: it sends the upgrade request to the app on a fresh
//! connection (the attempt loop's [`Exchange`]: server picking and retries as on every path),
//! waits for the app's answer, relays it, and on a 101 pumps bytes both ways until either side
//! closes, with no read timeout.

use std::time::Duration;

use bytes::Bytes;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::proxy::Session;
use pingora::Result;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};

use crate::addr::Stream;
use crate::attempt::{Attempt, Exchange, Loop, To};
use crate::failure::{Failure, Fault};
use crate::finish::{Finish, Origin};
use crate::ws_frames::Frames;

/// The app's response head to an upgrade must fit in this (nginx `proxy_buffer_size`-like).
const MAX_RESPONSE_HEAD: usize = 16 * 1024;
/// The most the app has to answer the upgrade request: the pool's `read_timeout_ms` when it is
/// shorter (as on every path to the app), else this (nginx waits `proxy_read_timeout`, 60 s by
/// default; an app that takes more than 10 s to accept a WebSocket is broken, and the client
/// waits).
const UPGRADE_ANSWER_TIMEOUT: Duration =
    Duration::from_millis(crate::config::defaults::UPGRADE_TIMEOUT_MS);

/// A WebSocket handshake on a new connection: its head, and the app's answer's head.
struct Upgrade<'a> {
    head: &'a [u8],
}

impl Exchange for Upgrade<'_> {
    /// The connection, the app's answer's head, and the bytes that came after it.
    type Conn = (Stream, ResponseHeader, Bytes);

    async fn attempt(&mut self, to: To<'_>, _reuse: bool) -> Attempt<Self::Conn> {
        let mut upstream = match tokio::time::timeout(to.timeouts.connect, to.addr.connect()).await
        {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => return Attempt::NotSent(Failure::connect(to.addr, &e)),
            Err(_) => return Attempt::NotSent(Failure::ConnectTimeout(to.addr.to_string())),
        };
        // Until the whole head is written, the app cannot have started on the upgrade.
        if let Err(e) = upstream.write_all(self.head).await {
            return Attempt::NotSent(Failure::connect(to.addr, &e));
        }
        let wait = to.timeouts.read.min(UPGRADE_ANSWER_TIMEOUT);
        match tokio::time::timeout(wait, read_head(&mut upstream)).await {
            Err(_) => Attempt::Failed(Failure::Timeout(to.addr.to_string()).into()),
            Ok(Err(why)) => Attempt::Failed(Failure::BadAnswer(to.addr.to_string(), why).into()),
            Ok(Ok((resp, leftover))) => Attempt::Answered((upstream, resp, leftover)),
        }
    }
}

/// Open the tunnel and run it to the end. `req` already carries the forwarding headers.
/// `Ok(Err(_))`: nothing was sent to the client yet, and the caller answers with the fault's
/// status. The session's frames are read into `frames` for its log line.
pub async fn run(
    session: &mut Session,
    attempts: Loop<'_>,
    req: &RequestHeader,
    finish: Finish<'_>,
    frames: &mut Frames,
) -> Result<std::result::Result<(), Fault>> {
    let head = serialize(req);
    let won = match attempts.run(&mut Upgrade { head: &head }).await {
        Ok(won) => won,
        Err(fault) => return Ok(Err(fault)),
    };
    let (mut upstream, mut resp, leftover) = won.conn;
    // An open tunnel counts as in flight for `least_conn` until it closes, as nginx counts an
    // upgraded connection as active.
    let _in_flight = won.in_flight;

    if resp.status != http::StatusCode::SWITCHING_PROTOCOLS {
        // The app refused the upgrade (e.g. 403 from Action Cable's origin check): relay its
        // answer, finished like every other (not compressed: it is relayed byte for byte up to
        // its length), and close.
        session.set_keepalive(None);
        let length: Option<usize> = resp
            .headers
            .get("content-length")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok());
        let finish = Finish {
            compression: None,
            ..finish
        };
        finish.head(
            session.req_header(),
            session.is_http2(),
            &mut resp,
            Origin::App,
            false,
        )?;
        session.write_response_header(Box::new(resp), false).await?;
        let mut sent = leftover.len();
        session.write_response_body(Some(leftover), false).await?;
        let mut buf = vec![0u8; 16 * 1024];
        while length.is_none_or(|l| sent < l) {
            match upstream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    sent += n;
                    session
                        .write_response_body(Some(Bytes::copy_from_slice(&buf[..n])), false)
                        .await?;
                }
            }
        }
        session.write_response_body(None, true).await?;
        return Ok(Ok(()));
    }

    session.set_read_timeout(None);
    session
        .as_downstream_mut()
        .write_response_header(Box::new(resp))
        .await?;
    if !leftover.is_empty() {
        frames.sent_to_client(&leftover);
        session
            .as_downstream_mut()
            .write_response_body(leftover, false)
            .await?;
    }
    crate::seam::pump(session, upstream, frames).await?;
    Ok(Ok(()))
}

pub(crate) fn serialize(req: &RequestHeader) -> Vec<u8> {
    let mut out = Vec::with_capacity(512);
    out.extend_from_slice(req.method.as_str().as_bytes());
    out.push(b' ');
    let target = req.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    for (name, value) in req.headers.iter() {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out
}

/// Read the app's response head; returns it and any bytes that followed it.
pub(crate) async fn read_head(
    upstream: &mut (impl AsyncRead + Unpin),
) -> std::result::Result<(ResponseHeader, Bytes), String> {
    let mut buf: Vec<u8> = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    loop {
        let n = upstream.read(&mut chunk).await.map_err(|e| e.to_string())?;
        if n == 0 {
            return Err("the app closed the connection before answering".into());
        }
        buf.extend_from_slice(&chunk[..n]);
        let mut headers = [httparse::EMPTY_HEADER; 96];
        let mut parsed = httparse::Response::new(&mut headers);
        match parsed.parse(&buf) {
            Ok(httparse::Status::Complete(len)) => {
                let code = parsed.code.ok_or("no status code")?;
                let mut resp = ResponseHeader::build(code, Some(parsed.headers.len()))
                    .map_err(|e| e.to_string())?;
                for h in parsed.headers.iter() {
                    resp.append_header(h.name.to_string(), h.value)
                        .map_err(|e| e.to_string())?;
                }
                return Ok((resp, Bytes::copy_from_slice(&buf[len..])));
            }
            Ok(httparse::Status::Partial) if buf.len() < MAX_RESPONSE_HEAD => continue,
            Ok(httparse::Status::Partial) => return Err("response head too large".into()),
            Err(e) => return Err(format!("invalid response: {e}")),
        }
    }
}
