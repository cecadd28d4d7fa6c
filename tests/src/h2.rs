//! HTTP/2 over TLS for the attack tests: a raw connection (ALPN `h2`) to write frames byte by
//! byte, a frame reader, a tiny HPACK encoder (literal fields, no Huffman, no indexing: what a
//! hand-written attack sends), and a real client (the `h2` crate) for exchanges whose answer
//! must be decoded.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::TlsClient;

/// The client connection preface (RFC 9113 section 3.4).
pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

pub const DATA: u8 = 0x0;
pub const HEADERS: u8 = 0x1;
pub const RST_STREAM: u8 = 0x3;
pub const SETTINGS: u8 = 0x4;
pub const PING: u8 = 0x6;
pub const GOAWAY: u8 = 0x7;
pub const WINDOW_UPDATE: u8 = 0x8;
pub const CONTINUATION: u8 = 0x9;

pub const END_STREAM: u8 = 0x1;
pub const ACK: u8 = 0x1;
pub const END_HEADERS: u8 = 0x4;

/// SETTINGS_INITIAL_WINDOW_SIZE.
pub const INITIAL_WINDOW_SIZE: u16 = 0x4;

/// A TLS connection that negotiated `h2` by ALPN (panics if the server chose otherwise).
pub async fn connect(addr: SocketAddr) -> TlsClient {
    let mut config = (*crate::insecure_tls()).clone();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let tls = connector
        .connect(
            rustls::pki_types::ServerName::try_from("localhost").expect("name"),
            tcp,
        )
        .await
        .expect("tls handshake");
    assert_eq!(
        tls.get_ref().1.alpn_protocol(),
        Some(&b"h2"[..]),
        "the gateway must offer h2 by ALPN"
    );
    tls.into()
}

/// One frame: 9-byte header (24-bit length, type, flags, 31-bit stream id) and its payload.
pub fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    assert!(len < 1 << 24, "frame payload too long");
    let mut out = Vec::with_capacity(9 + payload.len());
    out.extend_from_slice(&len.to_be_bytes()[1..]);
    out.push(kind);
    out.push(flags);
    out.extend_from_slice(&(stream & 0x7fff_ffff).to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// A SETTINGS frame with these parameters.
pub fn settings(params: &[(u16, u32)]) -> Vec<u8> {
    let mut payload = Vec::new();
    for (id, value) in params {
        payload.extend_from_slice(&id.to_be_bytes());
        payload.extend_from_slice(&value.to_be_bytes());
    }
    frame(SETTINGS, 0, 0, &payload)
}

/// The preface and an empty SETTINGS frame: what every client sends first.
pub fn opening() -> Vec<u8> {
    let mut out = PREFACE.to_vec();
    out.extend_from_slice(&settings(&[]));
    out
}

/// HPACK integer with an `n`-bit prefix, the prefix's high bits set to `first`.
fn hpack_int(out: &mut Vec<u8>, first: u8, n: u8, mut value: usize) {
    let max = (1usize << n) - 1;
    if value < max {
        out.push(first | value as u8);
        return;
    }
    out.push(first | max as u8);
    value -= max;
    while value >= 128 {
        out.push((value % 128 + 128) as u8);
        value /= 128;
    }
    out.push(value as u8);
}

/// HPACK "literal header field without indexing, new name", no Huffman (RFC 7541 6.2.2).
pub fn literal(out: &mut Vec<u8>, name: &str, value: &str) {
    out.push(0x00);
    hpack_int(out, 0, 7, name.len());
    out.extend_from_slice(name.as_bytes());
    hpack_int(out, 0, 7, value.len());
    out.extend_from_slice(value.as_bytes());
}

/// The header block of a request: pseudo-headers then `extra`, every field a literal.
pub fn request_block(method: &str, path: &str, extra: &[(&str, &str)]) -> Vec<u8> {
    let mut out = Vec::new();
    literal(&mut out, ":method", method);
    literal(&mut out, ":scheme", "https");
    literal(&mut out, ":authority", "localhost");
    literal(&mut out, ":path", path);
    for (k, v) in extra {
        literal(&mut out, k, v);
    }
    out
}

/// A complete GET (HEADERS with END_HEADERS and END_STREAM) on `stream`.
pub fn get(stream: u32, path: &str) -> Vec<u8> {
    frame(
        HEADERS,
        END_HEADERS | END_STREAM,
        stream,
        &request_block("GET", path, &[]),
    )
}

#[derive(Debug, Clone)]
pub struct Frame {
    pub kind: u8,
    pub flags: u8,
    pub stream: u32,
    pub payload: Vec<u8>,
}

impl Frame {
    /// The error code of a GOAWAY or RST_STREAM frame.
    pub fn error_code(&self) -> Option<u32> {
        let at = match self.kind {
            GOAWAY => 4,
            RST_STREAM => 0,
            _ => return None,
        };
        let b = self.payload.get(at..at + 4)?;
        Some(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
}

/// What reading the connection ended with.
#[derive(Debug)]
pub enum Read {
    Frame(Frame),
    /// The server closed the connection (EOF or reset).
    Closed,
    /// Nothing within the wait.
    Silent,
}

/// Read one frame, waiting at most `wait`.
pub async fn read_frame(tls: &mut TlsClient, wait: Duration) -> Read {
    let read = async {
        let mut head = [0u8; 9];
        tls.read_exact(&mut head).await?;
        let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
        let mut payload = vec![0u8; len];
        tls.read_exact(&mut payload).await?;
        Ok::<_, std::io::Error>(Frame {
            kind: head[3],
            flags: head[4],
            stream: u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff,
            payload,
        })
    };
    match tokio::time::timeout(wait, read).await {
        Err(_) => Read::Silent,
        Ok(Err(_)) => Read::Closed,
        Ok(Ok(f)) => Read::Frame(f),
    }
}

/// Read frames until the server closes the connection or sends GOAWAY, for at most `wait`;
/// returns the frames seen and how it ended (`None`: still open at the deadline).
pub async fn read_until_closed(tls: &mut TlsClient, wait: Duration) -> (Vec<Frame>, Option<Read>) {
    let deadline = tokio::time::Instant::now() + wait;
    let mut seen = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        if left.is_zero() {
            return (seen, None);
        }
        match read_frame(tls, left).await {
            Read::Frame(f) if f.kind == GOAWAY => {
                seen.push(f.clone());
                return (seen, Some(Read::Frame(f)));
            }
            Read::Frame(f) => seen.push(f),
            Read::Closed => return (seen, Some(Read::Closed)),
            Read::Silent => return (seen, None),
        }
    }
}

/// Write bytes; `false` if the server has already closed the connection.
pub async fn send(tls: &mut TlsClient, bytes: &[u8]) -> bool {
    tls.write_all(bytes).await.is_ok() && tls.flush().await.is_ok()
}

/// A real HTTP/2 client (the `h2` crate) on a fresh connection, its connection driven by a
/// task of its own. `setup` adjusts the client's settings (window sizes and the like).
pub async fn client_with(
    addr: SocketAddr,
    setup: impl FnOnce(&mut ::h2::client::Builder),
) -> ::h2::client::SendRequest<bytes::Bytes> {
    let tls = connect(addr).await;
    let mut builder = ::h2::client::Builder::new();
    setup(&mut builder);
    let (send, conn) = builder.handshake(tls).await.expect("h2 handshake");
    tokio::spawn(async move {
        let _ = conn.await;
    });
    send.ready().await.expect("h2 ready")
}

pub async fn client(addr: SocketAddr) -> ::h2::client::SendRequest<bytes::Bytes> {
    client_with(addr, |_| {}).await
}

/// A request for `path` on the gateway (`:authority` localhost).
pub fn request(method: &str, path: &str) -> http::request::Builder {
    http::Request::builder()
        .method(method)
        .uri(format!("https://localhost{path}"))
}

/// Read a whole answer body (releasing flow control as it goes), at most `wait`.
pub async fn body_of(
    resp: http::Response<::h2::RecvStream>,
    wait: Duration,
) -> Result<(http::StatusCode, Vec<u8>), String> {
    let status = resp.status();
    let mut body = resp.into_body();
    let mut out = Vec::new();
    let read = async {
        while let Some(chunk) = body.data().await {
            let chunk = chunk.map_err(|e| e.to_string())?;
            let _ = body.flow_control().release_capacity(chunk.len());
            out.extend_from_slice(&chunk);
        }
        Ok::<_, String>(())
    };
    match tokio::time::timeout(wait, read).await {
        Err(_) => Err("body not complete in time".into()),
        Ok(Err(e)) => Err(e),
        Ok(Ok(())) => Ok((status, out)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_header_is_length_type_flags_stream() {
        assert_eq!(
            frame(PING, ACK, 0, &[1, 2, 3, 4, 5, 6, 7, 8]),
            [0, 0, 8, 6, 1, 0, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8]
        );
        assert_eq!(frame(HEADERS, 5, 3, &[])[5..9], [0, 0, 0, 3]);
    }

    #[test]
    fn hpack_literal_matches_rfc7541_c_2_2() {
        // C.2.2: ":path: /sample/path" as a literal without indexing (indexed name 4 there;
        // here the name is literal, so check the integer and string encodings instead).
        let mut out = Vec::new();
        literal(&mut out, "a", "bc");
        assert_eq!(out, [0x00, 1, b'a', 2, b'b', b'c']);
        let mut big = Vec::new();
        hpack_int(&mut big, 0, 5, 1337);
        assert_eq!(big, [31, 154, 10]); // RFC 7541 C.1.2
    }
}
