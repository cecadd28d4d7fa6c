//! A total deadline for receiving a request's headers (nginx `client_header_timeout`, answered
//! with 408), which pingora does not have: its 60 s timeout applies to each read, so a client
//! sending one byte every 59 s holds a connection forever (slowloris).
//!
//! The deadline wraps the client stream below pingora: it starts at the first byte of a request,
//! ends at the blank line that closes the header block, and re-arms for the next request on a
//! keep-alive connection. HTTP/2 (its own framing and flow control) and upgraded connections
//! (after a `101`) are passed through untouched.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use async_trait::async_trait;
use pingora::apps::ServerApp;
use pingora::protocols::raw_connect::ProxyDigest;
use pingora::protocols::tls::TlsRef;
use pingora::protocols::{GetProxyDigest, GetSocketDigest, GetTimingDigest};
use pingora::protocols::{Peek, Shutdown, Ssl, Stream, UniqueID, UniqueIDType, ALPN};
use pingora::protocols::{SocketDigest, TimingDigest};
use pingora::server::ShutdownWatch;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Sleep;

const TIMEOUT_RESPONSE: &[u8] = b"HTTP/1.1 408 Request Timeout\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: 61\r\nConnection: close\r\n\r\n408 Request Timeout: the request headers took too long to arrive\n";

/// Wraps a server app so every accepted connection gets the header deadline.
pub struct HeaderDeadline<A> {
    pub inner: Arc<A>,
    pub timeout: Duration,
}

#[async_trait]
impl<A: ServerApp + Send + Sync + 'static> ServerApp for HeaderDeadline<A> {
    async fn process_new(
        self: &Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        let h2 = matches!(stream.selected_alpn_proto(), Some(ALPN::H2));
        let wrapped: Stream = if h2 {
            stream
        } else {
            Box::new(Deadlined::new(stream, self.timeout))
        };
        self.inner.process_new(wrapped, shutdown).await
    }

    async fn cleanup(&self) {
        self.inner.cleanup().await
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Between requests: the keep-alive timeout is pingora's business.
    Idle,
    /// Inside a header block; `matched` counts how much of `\r\n\r\n` was just seen.
    Headers { matched: u8 },
    /// Body and response: no deadline.
    Body,
    /// After a 101: not HTTP any more.
    Upgraded,
    /// The deadline passed and the 408 was sent.
    Expired,
}

#[derive(Debug)]
pub struct Deadlined {
    inner: Stream,
    timeout: Duration,
    phase: Phase,
    timer: Option<Pin<Box<Sleep>>>,
}

impl Deadlined {
    fn new(inner: Stream, timeout: Duration) -> Deadlined {
        Deadlined {
            inner,
            timeout,
            phase: Phase::Idle,
            timer: None,
        }
    }

    /// Advance the state machine over bytes the client sent.
    fn scan(&mut self, bytes: &[u8]) {
        const END: &[u8; 4] = b"\r\n\r\n";
        for &b in bytes {
            match self.phase {
                Phase::Idle => {
                    self.phase = Phase::Headers { matched: 0 };
                    self.timer = Some(Box::pin(tokio::time::sleep(self.timeout)));
                    self.step(b, END);
                }
                Phase::Headers { .. } => self.step(b, END),
                Phase::Body | Phase::Upgraded | Phase::Expired => return,
            }
        }
    }

    fn step(&mut self, b: u8, end: &[u8; 4]) {
        let Phase::Headers { matched } = self.phase else {
            return;
        };
        let m = matched as usize;
        let next = if b == end[m] {
            m + 1
        } else if b == b'\r' {
            1
        } else {
            0
        };
        if next == 4 {
            self.phase = Phase::Body;
            self.timer = None;
        } else {
            self.phase = Phase::Headers {
                matched: next as u8,
            };
        }
    }
}

impl AsyncRead for Deadlined {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        if this.phase == Phase::Expired {
            return Poll::Ready(Err(std::io::ErrorKind::TimedOut.into()));
        }
        if let (Phase::Headers { .. }, Some(timer)) = (this.phase, this.timer.as_mut()) {
            if timer.as_mut().poll(cx).is_ready() {
                this.phase = Phase::Expired;
                this.timer = None;
                // Best effort: the client is slow by definition, so never wait on it.
                let _ = Pin::new(&mut this.inner).poll_write(cx, TIMEOUT_RESPONSE);
                let _ = Pin::new(&mut this.inner).poll_flush(cx);
                tracing::warn!("request headers not received within the deadline: 408");
                return Poll::Ready(Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "request headers not received within the deadline",
                )));
            }
        }
        let before = buf.filled().len();
        let r = Pin::new(&mut this.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = r {
            let filled = buf.filled()[before..].to_vec();
            this.scan(&filled);
            // A fresh timer must be polled once to register its wake-up.
            if let (Phase::Headers { .. }, Some(timer)) = (this.phase, this.timer.as_mut()) {
                let _ = timer.as_mut().poll(cx);
            }
        }
        r
    }
}

impl AsyncWrite for Deadlined {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = &mut *self;
        if this.phase != Phase::Upgraded {
            if data.starts_with(b"HTTP/1.1 101") || data.starts_with(b"HTTP/1.0 101") {
                this.phase = Phase::Upgraded;
                this.timer = None;
            } else if this.phase == Phase::Body && !is_interim(data) {
                // A response is going out: the next bytes from the client start a new request
                // (not after a `100 Continue`, which asks for this request's body).
                this.phase = Phase::Idle;
            }
        }
        Pin::new(&mut this.inner).poll_write(cx, data)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        if let Some(first) = bufs.iter().find(|b| !b.is_empty()) {
            if self.phase != Phase::Upgraded && first.starts_with(b"HTTP/1.1 101") {
                self.phase = Phase::Upgraded;
                self.timer = None;
            } else if self.phase == Phase::Body && !is_interim(first) {
                self.phase = Phase::Idle;
            }
        }
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// A 1xx answer other than 101 (`100 Continue`, `103 Early Hints`): more follows for the
/// same request.
fn is_interim(data: &[u8]) -> bool {
    data.len() >= 12
        && (data.starts_with(b"HTTP/1.1 1") || data.starts_with(b"HTTP/1.0 1"))
        && &data[9..12] != b"101"
}

#[async_trait]
impl Shutdown for Deadlined {
    async fn shutdown(&mut self) {
        self.inner.shutdown().await
    }
}

impl UniqueID for Deadlined {
    fn id(&self) -> UniqueIDType {
        self.inner.id()
    }
}

impl Ssl for Deadlined {
    fn get_ssl(&self) -> Option<&TlsRef> {
        self.inner.get_ssl()
    }
    fn get_ssl_digest(&self) -> Option<Arc<pingora::protocols::tls::SslDigest>> {
        self.inner.get_ssl_digest()
    }
    fn selected_alpn_proto(&self) -> Option<ALPN> {
        self.inner.selected_alpn_proto()
    }
}

impl GetTimingDigest for Deadlined {
    fn get_timing_digest(&self) -> Vec<Option<TimingDigest>> {
        self.inner.get_timing_digest()
    }
    fn get_read_pending_time(&self) -> Duration {
        self.inner.get_read_pending_time()
    }
    fn get_write_pending_time(&self) -> Duration {
        self.inner.get_write_pending_time()
    }
}

impl GetProxyDigest for Deadlined {
    fn get_proxy_digest(&self) -> Option<Arc<ProxyDigest>> {
        self.inner.get_proxy_digest()
    }
    fn set_proxy_digest(&mut self, digest: ProxyDigest) {
        self.inner.set_proxy_digest(digest)
    }
}

impl GetSocketDigest for Deadlined {
    fn get_socket_digest(&self) -> Option<Arc<SocketDigest>> {
        self.inner.get_socket_digest()
    }
    fn set_socket_digest(&mut self, digest: SocketDigest) {
        self.inner.set_socket_digest(digest)
    }
}

#[async_trait]
impl Peek for Deadlined {
    async fn try_peek(&mut self, buf: &mut [u8]) -> std::io::Result<bool> {
        self.inner.try_peek(buf).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn machine() -> Deadlined {
        Deadlined {
            inner: Box::new(tokio_test_stream()),
            timeout: Duration::from_secs(1),
            phase: Phase::Idle,
            timer: None,
        }
    }

    fn tokio_test_stream() -> pingora::protocols::l4::stream::Stream {
        let std = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = std.local_addr().expect("addr");
        let client = std::net::TcpStream::connect(addr).expect("connect");
        client.set_nonblocking(true).expect("nonblocking");
        let tokio = tokio::net::TcpStream::from_std(client).expect("tokio stream");
        tokio.into()
    }

    #[tokio::test]
    async fn the_header_block_ends_at_the_blank_line_even_across_reads() {
        let mut m = machine();
        m.scan(b"GET / HTTP/1.1\r\nHost: x\r");
        assert!(matches!(m.phase, Phase::Headers { .. }));
        assert!(m.timer.is_some());
        m.scan(b"\n\r");
        assert!(matches!(m.phase, Phase::Headers { .. }));
        m.scan(b"\nbody");
        assert_eq!(m.phase, Phase::Body);
        assert!(m.timer.is_none());
    }

    #[test]
    fn only_informational_answers_other_than_101_are_interim() {
        assert!(is_interim(b"HTTP/1.1 100 Continue\r\n\r\n"));
        assert!(is_interim(b"HTTP/1.1 103 Early Hints\r\n"));
        assert!(!is_interim(b"HTTP/1.1 101 Switching Protocols\r\n"));
        assert!(!is_interim(b"HTTP/1.1 200 OK\r\n"));
        assert!(!is_interim(b"HTTP/1.1 1"));
    }

    #[tokio::test]
    async fn a_lone_lf_or_cr_does_not_end_the_block() {
        let mut m = machine();
        m.scan(b"GET / HTTP/1.1\r\n\n\r\r\n");
        assert!(matches!(m.phase, Phase::Headers { .. }));
        m.scan(b"\r\n");
        assert_eq!(m.phase, Phase::Body);
    }
}
