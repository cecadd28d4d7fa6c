//! Raw HTTP/1 exchanges for the attack suite (`tests/tests/attacks_*.rs`): send exact bytes
//! over TLS or plain TCP, read whatever comes back until the gateway closes the connection or
//! a deadline passes, and split the answer into responses. Plus the questions every attack
//! test asks the app afterwards (did backend-stub's `/__log` see this path?).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::Stub;

/// Everything the gateway sent back for one raw exchange.
#[derive(Debug, Clone)]
pub struct Answer {
    pub bytes: Vec<u8>,
    /// The gateway closed the connection (EOF or reset) before the deadline.
    pub closed: bool,
    /// How long until the close, or until the deadline.
    pub elapsed: Duration,
}

/// One response found in an [`Answer`].
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    /// The head (status line and header lines), without the blank line.
    pub head: String,
    pub body: Vec<u8>,
}

impl Response {
    pub fn body_text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// A header's value (first one, case-insensitive name).
    pub fn header(&self, name: &str) -> Option<String> {
        self.head.lines().skip(1).find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_string())
        })
    }
}

impl Answer {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.bytes).into_owned()
    }

    /// The responses, in order, framed by `Content-Length` (or chunked, or to the end).
    /// Stops at the first thing that is not a response head.
    pub fn responses(&self) -> Vec<Response> {
        let mut out = Vec::new();
        let mut rest: &[u8] = &self.bytes;
        while let Some(end) = find(rest, b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&rest[..end]).into_owned();
            let Some(status) = head
                .strip_prefix("HTTP/1.")
                .and_then(|s| s.get(2..5))
                .and_then(|s| s.parse::<u16>().ok())
            else {
                break;
            };
            rest = &rest[end + 4..];
            let mut r = Response {
                status,
                head,
                body: Vec::new(),
            };
            let no_body = status < 200 || status == 204 || status == 304;
            if no_body {
            } else if let Some(len) = r.header("content-length").and_then(|v| v.parse().ok()) {
                let len: usize = len;
                let take = len.min(rest.len());
                r.body = rest[..take].to_vec();
                rest = &rest[take..];
            } else if r
                .header("transfer-encoding")
                .is_some_and(|v| v.eq_ignore_ascii_case("chunked"))
            {
                let (body, used) = dechunk(rest);
                r.body = body;
                rest = &rest[used..];
            } else {
                r.body = rest.to_vec();
                rest = &[];
            }
            out.push(r);
        }
        out
    }

    /// The status codes of every response, in order.
    pub fn statuses(&self) -> Vec<u16> {
        self.responses().iter().map(|r| r.status).collect()
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Decode a chunked body; returns the body and how many bytes it took (all of `buf` when
/// it is cut short).
fn dechunk(buf: &[u8]) -> (Vec<u8>, usize) {
    let mut body = Vec::new();
    let mut at = 0;
    loop {
        let Some(eol) = find(&buf[at..], b"\r\n") else {
            return (body, buf.len());
        };
        let line = String::from_utf8_lossy(&buf[at..at + eol]).into_owned();
        let size = usize::from_str_radix(line.split(';').next().unwrap_or("").trim(), 16);
        at += eol + 2;
        match size {
            Ok(0) => {
                // Trailers (none expected), then the blank line.
                let end = find(&buf[at..], b"\r\n").map_or(buf.len(), |e| at + e + 2);
                return (body, end);
            }
            Ok(n) if at + n + 2 <= buf.len() => {
                body.extend_from_slice(&buf[at..at + n]);
                at += n + 2;
            }
            _ => return (body, buf.len()),
        }
    }
}

/// Write `bytes`, then read until the peer closes or `wait` has passed since the write.
pub async fn exchange<S>(stream: &mut S, bytes: &[u8], wait: Duration) -> Answer
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let start = Instant::now();
    // The gateway may answer and close before reading everything (a 400 on the head): a
    // failed write is then part of the story, not an error of the test.
    let _ = stream.write_all(bytes).await;
    let _ = stream.flush().await;
    read_until_close(stream, wait, start).await
}

/// Read until the peer closes or `wait` has passed since `start`.
pub async fn read_until_close<S>(stream: &mut S, wait: Duration, start: Instant) -> Answer
where
    S: AsyncRead + Unpin,
{
    let mut bytes = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    let closed = loop {
        let left = wait.saturating_sub(start.elapsed());
        match tokio::time::timeout(left, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break true,
            Ok(Ok(n)) => bytes.extend_from_slice(&buf[..n]),
            Err(_) => break false,
        }
    };
    Answer {
        bytes,
        closed,
        elapsed: start.elapsed(),
    }
}

/// [`exchange`] on a new TLS connection (SNI `localhost`, no ALPN: HTTP/1.1).
pub async fn over_tls(addr: SocketAddr, bytes: &[u8], wait: Duration) -> Answer {
    let mut tls = crate::tls_connect(addr).await;
    exchange(&mut tls, bytes, wait).await
}

/// [`exchange`] on a new plain TCP connection.
pub async fn over_tcp(addr: SocketAddr, bytes: &[u8], wait: Duration) -> Answer {
    let mut tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    exchange(&mut tcp, bytes, wait).await
}

/// How many requests for exactly `path` the app received.
pub async fn app_count(app: &Stub, path: &str) -> usize {
    app.paths().await.iter().filter(|p| *p == path).count()
}

/// The app's log entries (backend-stub `/__log`) for exactly `path`.
pub async fn app_requests(app: &Stub, path: &str) -> Vec<serde_json::Value> {
    app.received()
        .await
        .into_iter()
        .filter(|r| r["path"] == path)
        .collect()
}

/// Forget what the app received so far (`DELETE /__log`).
pub async fn app_forget(app: &Stub) {
    let url = format!("http://{}/__log", app.addr);
    let r = reqwest::Client::new()
        .delete(&url)
        .send()
        .await
        .expect("DELETE /__log");
    assert!(r.status().is_success(), "DELETE /__log: {}", r.status());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn responses_are_split_by_their_framing() {
        let a = Answer {
            bytes: b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhiHTTP/1.1 404 Not Found\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\nHTTP/1.1 400 Bad Request\r\n\r\nrest".to_vec(),
            closed: true,
            elapsed: Duration::ZERO,
        };
        let r = a.responses();
        assert_eq!(a.statuses(), [200, 404, 400]);
        assert_eq!(r[0].body, b"hi");
        assert_eq!(r[1].body, b"abc");
        assert_eq!(r[2].body, b"rest");
        assert_eq!(r[0].header("CONTENT-LENGTH").as_deref(), Some("2"));
    }

    #[test]
    fn nothing_or_garbage_is_no_response() {
        for bytes in [&b""[..], b"garbage\r\n\r\n", b"HTTP/1.1 200 OK\r\n"] {
            let a = Answer {
                bytes: bytes.to_vec(),
                closed: true,
                elapsed: Duration::ZERO,
            };
            assert!(a.statuses().is_empty(), "{bytes:?}");
        }
    }
}
