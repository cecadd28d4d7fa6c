//! WebSocket passthrough to the app (Action Cable, Laravel Reverb). Only WebSocket handshakes
//! come here: any other `Upgrade` (`h2c` above all) is taken off the request before routing
//! (`forwarding::drop_foreign_upgrade`), so no client gets a raw connection of another protocol
//! to the app. A failure is told to the client in general words (`Failure::public_reason`);
//! the app's address and the OS error go to the log only.
//!
//! pingora 0.9.1's own upstream-upgrade path loses about 1% of sessions right after the 101
//! (pingora issue #946) and applies its 60 s read timeout to idle upgraded connections. So the
//! gateway tunnels upgrades itself: it sends the upgrade request to the app on a fresh
//! connection, waits for the app's answer, relays it, and on a 101 pumps bytes both ways until
//! either side closes, with no read timeout.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::proxy::Session;
use pingora::Result;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};

use crate::upstream::Pool;

/// The app's response head to an upgrade must fit in this (nginx `proxy_buffer_size`-like).
const MAX_RESPONSE_HEAD: usize = 16 * 1024;
/// How long the app has to answer the upgrade request (nginx uses `proxy_read_timeout`, 60 s;
/// an app that takes more than 10 s to accept a WebSocket is broken, and the client waits).
const UPGRADE_ANSWER_TIMEOUT: Duration =
    Duration::from_millis(crate::config::defaults::UPGRADE_TIMEOUT_MS);

pub use crate::upstream::Failure;

/// Open the tunnel and run it to the end. `req` already carries the forwarding headers.
pub async fn run(
    session: &mut Session,
    pool: &Arc<Pool>,
    client: Option<IpAddr>,
    req: &RequestHeader,
) -> Result<std::result::Result<(), Failure>> {
    let mut tried = Vec::new();
    let (mut upstream, addr) = loop {
        let Some(i) = pool.select(client, &tried) else {
            return Ok(Err(Failure::NoHealthyServer));
        };
        let addr = pool.servers[i].addr.clone();
        match tokio::time::timeout(pool.connect_timeout, addr.connect()).await {
            Ok(Ok(s)) => break (s, addr),
            Ok(Err(e)) => {
                tracing::warn!(upstream = %pool.name, server = %addr, error = %e, "websocket tunnel: connect failed, trying another server");
                tried.push(i);
                if tried.len() == pool.servers.len() {
                    return Ok(Err(Failure::Connect(addr.to_string(), e.to_string())));
                }
            }
            Err(_) => {
                tried.push(i);
                if tried.len() == pool.servers.len() {
                    return Ok(Err(Failure::Timeout(addr.to_string())));
                }
            }
        }
    };
    let head = serialize(req);
    if let Err(e) = upstream.write_all(&head).await {
        return Ok(Err(Failure::Connect(addr.to_string(), e.to_string())));
    }

    let (resp, leftover) =
        match tokio::time::timeout(UPGRADE_ANSWER_TIMEOUT, read_head(&mut upstream)).await {
            Err(_) => return Ok(Err(Failure::Timeout(addr.to_string()))),
            Ok(Err(why)) => return Ok(Err(Failure::BadAnswer(addr.to_string(), why))),
            Ok(Ok(r)) => r,
        };

    if resp.status != http::StatusCode::SWITCHING_PROTOCOLS {
        // The app refused the upgrade (e.g. 403 from Action Cable's origin check): relay its
        // answer as it is and close.
        session.set_keepalive(None);
        let length: Option<usize> = resp
            .headers
            .get("content-length")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok());
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
        session
            .as_downstream_mut()
            .write_response_body(leftover, false)
            .await?;
    }
    crate::seam::pump(session, upstream).await?;
    Ok(Ok(()))
}

fn serialize(req: &RequestHeader) -> Vec<u8> {
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
async fn read_head(
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
                crate::forwarding::response(&mut resp);
                return Ok((resp, Bytes::copy_from_slice(&buf[len..])));
            }
            Ok(httparse::Status::Partial) if buf.len() < MAX_RESPONSE_HEAD => continue,
            Ok(httparse::Status::Partial) => return Err("response head too large".into()),
            Err(e) => return Err(format!("invalid response: {e}")),
        }
    }
}
