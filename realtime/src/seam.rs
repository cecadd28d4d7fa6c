//! The seam between the gateway and the realtime transports.
//!
//! A transport sees a [`Request`] (head, peer, a body it reads at its own pace) and answers with
//! one of three shapes of [`Response`]: a complete response, a stream of body chunks (long-poll
//! held answers, Server-Sent Events), or an upgrade to a raw byte stream (WebSocket). The gateway
//! owns the connection: it feeds the body in, writes what comes out, and drops the transport's
//! future the moment the client goes away, so a held request never outlives its client.
//!
//! Nothing here knows about pingora; a test can drive a service with plain values.

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;

use bytes::{Bytes, BytesMut};
use tokio::sync::mpsc;

/// A byte stream both ways: what an upgraded connection is to a transport.
pub trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static {}

impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static> Io for T {}

/// The client's side of an upgraded connection, after the `101` has been written. Boxed so the
/// gateway can hand over the client's own connection (TLS or plain), taken out of its HTTP
/// server once the `101` is out, and a test a `tokio::io::duplex` end: the transports write
/// straight into whatever it is.
pub type Upgraded = Box<dyn Io>;

/// tungstenite allocates its read buffer up front (128 KiB by default) and keeps it for the
/// connection's life, zero-filled on the first read, so it is resident for every idle
/// WebSocket. Messages larger than this are still read whole: it is the size of one read, not
/// a limit. 1 KiB holds a typical Socket.IO or pub/sub message in one read; a larger one takes
/// several, which over TLS are copies out of rustls' buffer (rustls reads the socket in 4 KiB
/// steps whatever this is). It was 4 KiB: 3 KiB of each idle connection (heaptrack, 3,000
/// idle Socket.IO connections over TLS, BENCHMARKS.md).
pub const WS_READ_BUFFER: usize = 1024;

/// How every server-side WebSocket of the realtime services starts: reads of
/// [`WS_READ_BUFFER`], and both of tungstenite's buffers given back while the connection waits
/// for its peer (the read buffer when a read finds nothing and no frame is partly read, the
/// write buffer once written out: vendor/tungstenite.patch.md), so an idle connection holds
/// neither.
pub fn ws_config() -> tokio_tungstenite::tungstenite::protocol::WebSocketConfig {
    tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
        .read_buffer_size(WS_READ_BUFFER)
        .release_buffers_when_idle(true)
}

pub type BoxFuture = Pin<Box<dyn Future<Output = ()> + Send + 'static>>;

/// The chunks of a streamed answer ([`Response::Stream`]).
pub type BodyStream = Pin<Box<dyn futures_util::Stream<Item = Bytes> + Send + 'static>>;

/// A streamed answer's chunks fed by a task through a channel: the stream ends when every
/// sender is dropped, and dropping the stream (the client went away) makes `send` fail, so
/// the producer stops.
pub fn channel_body(rx: mpsc::Receiver<Bytes>) -> BodyStream {
    Box::pin(futures_util::stream::unfold(rx, |mut rx| async move {
        let chunk = rx.recv().await?;
        Some((chunk, rx))
    }))
}

/// Runs on the upgraded stream once the gateway has switched protocols.
pub type OnUpgrade = Box<dyn FnOnce(Upgraded) -> BoxFuture + Send + 'static>;

pub struct Request {
    pub head: http::request::Parts,
    /// The client's address as the gateway saw it (not a forwarded header).
    pub peer: Option<SocketAddr>,
    /// The client's address for per-client limits when it differs from `peer`: the address a
    /// trusted proxy forwarded (`X-Forwarded-For` from a configured proxy, as nginx's
    /// `real_ip`). `None`: the peer's. See [`Request::client_ip`].
    pub client: Option<IpAddr>,
    /// The gateway's address the client connected to (its listener): what the app is told
    /// about the request (`X-Forwarded-Port`) when a transport asks it about the client.
    pub local: Option<SocketAddr>,
    /// Whether the client connection is TLS.
    pub secure: bool,
    pub body: Body,
}

impl Request {
    /// A request with an empty body, for tests and for transports that build sub-requests.
    pub fn new(head: http::request::Parts) -> Request {
        Request {
            head,
            peer: None,
            client: None,
            local: None,
            secure: false,
            body: Body::empty(),
        }
    }

    /// The address per-client limits count against: [`Request::client`], else the peer's.
    pub fn client_ip(&self) -> Option<IpAddr> {
        self.client.or(self.peer.map(|p| p.ip()))
    }

    pub fn query(&self) -> &str {
        self.head.uri.query().unwrap_or("")
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.head.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// True for an HTTP/1.1 `Upgrade: websocket` request.
    pub fn is_websocket_upgrade(&self) -> bool {
        self.header("upgrade")
            .is_some_and(|v| v.eq_ignore_ascii_case("websocket"))
    }
}

/// `headers` in a buffer of their own, for a session that keeps them (a handshake's headers,
/// which the app is shown later). The values of a request's headers are slices of the one
/// buffer the gateway read the whole head into: kept as they are, they would keep that buffer
/// (4 KiB) alive for as long as the connection lasts. The values are copied into one buffer
/// together, each a slice of it, where a buffer each was an allocation per header kept for the
/// connection's life.
pub fn detached_headers(headers: &http::HeaderMap) -> http::HeaderMap {
    let total = headers.values().map(|v| v.len()).sum();
    let mut values = BytesMut::with_capacity(total);
    for value in headers.values() {
        values.extend_from_slice(value.as_bytes());
    }
    let mut values = values.freeze();
    let mut out = http::HeaderMap::with_capacity(headers.len());
    for (name, value) in headers {
        let bytes = values.split_to(value.len());
        // The bytes of a valid value, so valid: the original is kept if that ever failed.
        let mut copy =
            http::HeaderValue::from_maybe_shared(bytes).unwrap_or_else(|_| value.clone());
        copy.set_sensitive(value.is_sensitive());
        out.append(name.clone(), copy);
    }
    out
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BodyError {
    #[error("request body larger than {limit} bytes")]
    TooLarge { limit: usize },
    #[error("client went away while sending the body: {0}")]
    Aborted(String),
}

/// The request body, delivered chunk by chunk as the client sends it.
pub struct Body {
    rx: Option<mpsc::Receiver<Result<Bytes, BodyError>>>,
}

impl Body {
    pub fn empty() -> Body {
        Body { rx: None }
    }

    /// A body fed by the gateway; it closes the sender at the end of the body.
    pub fn channel(capacity: usize) -> (mpsc::Sender<Result<Bytes, BodyError>>, Body) {
        let (tx, rx) = mpsc::channel(capacity);
        (tx, Body { rx: Some(rx) })
    }

    pub fn from_bytes(bytes: Bytes) -> Body {
        let (tx, body) = Body::channel(1);
        // Capacity 1 and a fresh channel: this cannot fail.
        let _ = tx.try_send(Ok(bytes));
        body
    }

    pub async fn chunk(&mut self) -> Option<Result<Bytes, BodyError>> {
        match &mut self.rx {
            Some(rx) => rx.recv().await,
            None => None,
        }
    }

    /// The whole body, refused as soon as it passes `limit` bytes (not after buffering it all).
    pub async fn collect(mut self, limit: usize) -> Result<Bytes, BodyError> {
        let mut buf = BytesMut::new();
        while let Some(chunk) = self.chunk().await {
            let chunk = chunk?;
            if buf.len() + chunk.len() > limit {
                return Err(BodyError::TooLarge { limit });
            }
            buf.extend_from_slice(&chunk);
        }
        Ok(buf.freeze())
    }
}

pub enum Response {
    Full(http::Response<Bytes>),
    /// Header now, body chunks as the stream yields them, until it ends. The stream is polled
    /// by whatever writes the connection, and dropped when the client goes away: a producer
    /// with no task of its own wakes only that writer, and stops with its client.
    Stream {
        head: http::response::Parts,
        body: BodyStream,
    },
    /// `head` must be a `101 Switching Protocols`; `on_upgrade` then owns the connection.
    Upgrade {
        head: http::response::Parts,
        on_upgrade: OnUpgrade,
    },
}

impl Response {
    pub fn full(status: http::StatusCode, content_type: &str, body: impl Into<Bytes>) -> Response {
        let mut r = http::Response::new(body.into());
        *r.status_mut() = status;
        if let Ok(v) = http::HeaderValue::from_str(content_type) {
            r.headers_mut().insert(http::header::CONTENT_TYPE, v);
        }
        Response::Full(r)
    }

    pub fn text(status: http::StatusCode, body: impl Into<Bytes>) -> Response {
        Response::full(status, "text/plain; charset=utf-8", body)
    }

    pub fn status(&self) -> http::StatusCode {
        match self {
            Response::Full(r) => r.status(),
            Response::Stream { head, .. } | Response::Upgrade { head, .. } => head.status,
        }
    }
}

/// A realtime service mounted on a route.
#[async_trait::async_trait]
pub trait Service: Send + Sync + 'static {
    async fn call(&self, req: Request) -> Response;
}

/// Why a WebSocket handshake was refused: becomes a plain-text `400` with the reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refusal(pub &'static str);

impl From<Refusal> for Response {
    fn from(r: Refusal) -> Response {
        Response::text(http::StatusCode::BAD_REQUEST, format!("{}\n", r.0))
    }
}

/// The `101` answer to a WebSocket upgrade request, or why it is not a valid RFC 6455
/// handshake.
pub fn websocket_accept(
    req: &Request,
    protocol: Option<&str>,
) -> Result<http::response::Parts, Refusal> {
    if req.head.method != http::Method::GET || !req.is_websocket_upgrade() {
        return Err(Refusal("WebSocket upgrade expected"));
    }
    if req.header("sec-websocket-version") != Some("13") {
        return Err(Refusal("Sec-WebSocket-Version 13 expected"));
    }
    let Some(key) = req.header("sec-websocket-key") else {
        return Err(Refusal("Sec-WebSocket-Key missing"));
    };
    let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
    let mut b = http::Response::builder()
        .status(http::StatusCode::SWITCHING_PROTOCOLS)
        .header(http::header::UPGRADE, "websocket")
        .header(http::header::CONNECTION, "Upgrade")
        .header(http::header::SEC_WEBSOCKET_ACCEPT, accept);
    if let Some(p) = protocol {
        b = b.header(http::header::SEC_WEBSOCKET_PROTOCOL, p);
    }
    b.body(())
        .map(|r| r.into_parts().0)
        .map_err(|_| Refusal("invalid WebSocket handshake"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detached_headers_point_into_no_buffer_of_the_request() {
        // As the gateway's HTTP/1 parser builds them: every value a slice of the head.
        let head =
            Bytes::from_static(b"cookie: a=1\r\nuser-agent: UA\r\nx-custom: 1\r\nx-custom: 2\r\n");
        let slice = |needle: &[u8]| {
            let at = head
                .windows(needle.len())
                .position(|w| w == needle)
                .expect("in the head");
            http::HeaderValue::from_maybe_shared(head.slice(at..at + needle.len())).expect("value")
        };
        let mut headers = http::HeaderMap::new();
        let mut cookie = slice(b"a=1");
        cookie.set_sensitive(true);
        headers.insert(http::header::COOKIE, cookie);
        headers.insert(http::header::USER_AGENT, slice(b"UA"));
        headers.append("x-custom", slice(b"1"));
        headers.append("x-custom", slice(b"2"));
        let inside = |v: &http::HeaderValue| {
            let p = v.as_bytes().as_ptr() as usize;
            let start = head.as_ptr() as usize;
            (start..start + head.len()).contains(&p)
        };
        assert!(headers.values().all(inside), "the fixture shares the head");

        let kept = detached_headers(&headers);
        assert_eq!(kept, headers);
        assert!(
            !kept.values().any(inside),
            "a kept value still points into the head"
        );
        assert!(kept[http::header::COOKIE].is_sensitive());
        let customs: Vec<_> = kept.get_all("x-custom").iter().collect();
        assert_eq!(customs, ["1", "2"]);
        // One buffer for all of them: each value starts where the one before it ends.
        let spans: Vec<(usize, usize)> = kept
            .values()
            .map(|v| (v.as_bytes().as_ptr() as usize, v.len()))
            .collect();
        assert!(
            spans.windows(2).all(|w| w[0].0 + w[0].1 == w[1].0),
            "the kept values are not one buffer: {spans:?}"
        );
    }
}
