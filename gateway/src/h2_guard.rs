//! HTTP/2 client connections: pingora's accept loop for h2, with the limits pingora lacks.
//!
//! pingora 0.9.1 waits for the client's connection preface without a deadline (a TLS client
//! that negotiates `h2` and sends nothing holds its connection forever) and its only idle hook,
//! `HttpServerOptions::h2_idle_timeout`, drops the socket without a GOAWAY. So h2 connections
//! are accepted here instead, with pingora's own pieces (`server::handshake`,
//! `HttpSession::from_h2_conn`, `ServerSession::new_http2` and the proxy app's
//! `process_new_http` per stream), and:
//!
//! - the preface must arrive within `limits.header_timeout_ms` (nginx applies
//!   `client_header_timeout` to it since 1.19.7), else the connection is closed;
//! - with no stream open for `limits.keepalive_timeout_s`, the connection gets a GOAWAY
//!   (NO_ERROR, last stream id) and is closed, as nginx does with `keepalive_timeout` for h2
//!   since 1.19.7 (before the first request the wait is `header_timeout_ms`; with keep-alive
//!   off the GOAWAY follows the first request);
//! - after `limits.keepalive_requests` streams the connection gets a graceful GOAWAY (nginx
//!   applies `keepalive_requests` to h2 since 1.19.7; pingora only counts HTTP/1 requests), so
//!   per-connection state is freed now and then as on HTTP/1.1;
//! - the h2 settings bound what one connection can hold (see [`H2Limits::options`]).
//!
//! pingora's loop is kept otherwise: shutdown sends a graceful GOAWAY and keeps serving the
//! streams already open, and a connection that sends 32 malformed requests is closed
//! (pingora's `MAX_MALFORMED_STREAMS_PER_CONN`). HTTP/1.1 connections go to the app as they are.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pingora::apps::{HttpServerApp, ServerApp};
use pingora::protocols::http::v2::server::{self, H2Accept, H2Options, HttpSession};
use pingora::protocols::http::ServerSession;
use pingora::protocols::Digest;
use pingora::protocols::{Stream, ALPN};
use pingora::server::ShutdownWatch;
use tokio::sync::Notify;

use crate::settings::Limits;

/// pingora's per-connection budget of rejected (malformed) requests.
const MAX_MALFORMED_STREAMS: usize = 32;
/// How long the final GOAWAY may take to reach a client before the socket is dropped anyway
/// (a client that reads nothing would otherwise hold it).
const GOAWAY_FLUSH: Duration = Duration::from_secs(1);
/// What h2 may buffer per stream for a client that does not take it (h2's default is 400 KiB).
/// pingora writes answers in pieces of at most 64 KiB, and one piece in flight per stream
/// keeps a fast client's socket full while a client that reads nothing pins 64 KiB, not 400.
const SEND_BUFFER_BYTES: usize = 64 * 1024;
/// h2 counts 32 bytes per field on top of name and value, we count 4 (`: ` and CRLF); the
/// pseudo-headers are 4 more fields. This many fields of difference are allowed for
/// (pingora's HTTP/1 parser takes at most 256 headers).
const FIELD_ALLOWANCE: usize = (256 + 4) * 28;

/// The HTTP/2 limits, from the configured ones.
#[derive(Debug, Clone)]
pub struct H2Limits {
    /// Time from the TLS handshake to the client's preface, and to its first request.
    pub preface: Duration,
    /// Time with no open stream before GOAWAY (`None`: right after a request, keep-alive off).
    pub idle: Option<Duration>,
    pub max_concurrent_streams: u32,
    /// Streams served before the connection is told to go away.
    pub max_requests: u32,
    /// h2's `SETTINGS_MAX_HEADER_LIST_SIZE`: above our own limit (see [`header_list_limit`]).
    pub max_header_list: u32,
}

impl H2Limits {
    pub fn from_limits(limits: &Limits) -> H2Limits {
        H2Limits {
            preface: limits.header_timeout,
            idle: limits.keepalive_timeout,
            max_concurrent_streams: limits.h2_max_concurrent_streams,
            max_requests: limits.keepalive_requests,
            max_header_list: header_list_limit(limits.max_header_bytes),
        }
    }

    /// pingora's defaults (`default_h2_options`) with our limits.
    pub fn options(&self) -> H2Options {
        let mut options = server::default_h2_options();
        options
            .max_concurrent_streams(self.max_concurrent_streams)
            .max_header_list_size(self.max_header_list)
            .max_send_buffer_size(SEND_BUFFER_BYTES);
        options
    }

    /// How long the connection may sit with no stream open.
    fn idle_wait(&self, served: bool) -> Duration {
        match (served, self.idle) {
            (false, _) => self.preface,
            (true, Some(idle)) => idle,
            (true, None) => Duration::ZERO,
        }
    }
}

/// h2 refuses a header block over `SETTINGS_MAX_HEADER_LIST_SIZE` itself, with a bare 431 (no
/// body, nothing logged), and closes the connection above four times that. Set it to twice our
/// own limit plus what h2 counts per field more than we do, so every block our limit accepts
/// passes h2, and a block up to twice our limit gets the gateway's own 431 (with a reason, in
/// the log), as on HTTP/1.1. Never below pingora's 64 KiB default.
pub fn header_list_limit(max_header_bytes: usize) -> u32 {
    let limit = max_header_bytes
        .saturating_mul(2)
        .saturating_add(FIELD_ALLOWANCE)
        .max(64 * 1024);
    u32::try_from(limit).unwrap_or(u32::MAX)
}

/// Wraps the proxy app: h2 connections are accepted here, the others go to `inner`. Every
/// front-door connection passes here once, after its TLS handshake: it is counted here, by
/// protocol and TLS version.
pub struct H2Guard<A> {
    pub inner: Arc<A>,
    /// Offered `inner`, for HTTP/1 connections that leave pingora for a while (a held
    /// long-poll) and come back ([`crate::handoff::Reentry`]): they come back here, past the
    /// handshake count, still inside their header deadline wrapper.
    pub reentry: Arc<crate::handoff::Reentry>,
    pub limits: H2Limits,
    pub metrics: Arc<crate::metrics::Metrics>,
}

#[async_trait]
impl<A: HttpServerApp + Send + Sync + 'static> ServerApp for H2Guard<A> {
    async fn process_new(
        self: &Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        if let Some(tls) = stream.get_ssl_digest() {
            self.metrics.tls_handshake(&tls.version);
        }
        if !matches!(stream.selected_alpn_proto(), Some(ALPN::H2)) {
            self.reentry.offer(&self.inner, shutdown);
            let _open = self.metrics.open(crate::metrics::Open::Http1);
            return ServerApp::process_new(&self.inner, stream, shutdown).await;
        }
        let _open = self.metrics.open(crate::metrics::Open::Http2);
        // Boxed: this future's state would otherwise be as large as the whole h2 accept loop
        // for every HTTP/1 connection too (3.6 KiB more per idle Socket.IO connection).
        Box::pin(self.serve(stream, shutdown)).await;
        None
    }

    async fn cleanup(&self) {
        ServerApp::cleanup(self.inner.as_ref()).await
    }
}

impl<A: HttpServerApp + Send + Sync + 'static> H2Guard<A> {
    async fn serve(&self, stream: Stream, shutdown: &ShutdownWatch) {
        let digest = Arc::new(Digest {
            ssl_digest: stream.get_ssl_digest(),
            timing_digest: stream.get_timing_digest(),
            proxy_digest: stream.get_proxy_digest(),
            socket_digest: stream.get_socket_digest(),
        });
        let handshake = server::handshake(stream, Some(self.limits.options()));
        let mut conn = match tokio::time::timeout(self.limits.preface, handshake).await {
            Err(_) => {
                tracing::info!(
                    ms = self.limits.preface.as_millis() as u64,
                    "no HTTP/2 preface in time: connection closed"
                );
                return;
            }
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "HTTP/2 handshake failed");
                return;
            }
            Ok(Ok(conn)) => conn,
        };

        let active = Arc::new(Active::default());
        let mut shutdown = shutdown.clone();
        let mut shutting_down = false;
        let mut malformed = 0usize;
        let mut served = 0u32;
        loop {
            let next = if shutting_down {
                HttpSession::from_h2_conn(&mut conn, digest.clone()).await
            } else {
                tokio::select! {
                    // As pingora: the shutdown signal first, then new streams (cancel-safe).
                    biased;
                    _ = shutdown.changed() => {
                        conn.graceful_shutdown();
                        shutting_down = true;
                        continue;
                    }
                    next = HttpSession::from_h2_conn(&mut conn, digest.clone()) => next,
                    // Any new stream cancels this; it starts again when none is open.
                    _ = active.idle_for(self.limits.idle_wait(served > 0)) => {
                        tracing::debug!("idle HTTP/2 connection: GOAWAY");
                        conn.abrupt_shutdown(h2::Reason::NO_ERROR);
                        let closed = std::future::poll_fn(|cx| conn.poll_closed(cx));
                        let _ = tokio::time::timeout(GOAWAY_FLUSH, closed).await;
                        return;
                    }
                }
            };
            match next {
                Err(e) => {
                    // Clients often just close the socket: not worth more than debug.
                    tracing::debug!(error = %e, "HTTP/2 connection ended");
                    return;
                }
                Ok(None) => return,
                Ok(Some(H2Accept::Rejected)) => {
                    malformed += 1;
                    if malformed >= MAX_MALFORMED_STREAMS {
                        tracing::warn!(
                            malformed,
                            "HTTP/2 connection closed after malformed requests"
                        );
                        return;
                    }
                }
                Ok(Some(H2Accept::Session(session))) => {
                    served = served.saturating_add(1);
                    if served >= self.limits.max_requests && !shutting_down {
                        // The streams already open finish; new ones go to a new connection.
                        conn.graceful_shutdown();
                        shutting_down = true;
                    }
                    let guard = active.start();
                    let app = self.inner.clone();
                    let shutdown = shutdown.clone();
                    // pingora spawns on `pingora_runtime::current_handle()`, which is this
                    // runtime under work stealing (pingora's default and ours).
                    tokio::spawn(async move {
                        let _guard = guard;
                        app.process_new_http(ServerSession::new_http2(session), &shutdown)
                            .await;
                    });
                }
            }
        }
    }
}

/// Streams being served on one connection.
#[derive(Default)]
struct Active {
    count: AtomicUsize,
    idle: Notify,
}

impl Active {
    fn start(self: &Arc<Self>) -> StreamGuard {
        self.count.fetch_add(1, Ordering::AcqRel);
        StreamGuard(self.clone())
    }

    /// Completes once no stream has been open for `wait`.
    async fn idle_for(&self, wait: Duration) {
        loop {
            let notified = self.idle.notified();
            if self.count.load(Ordering::Acquire) == 0 {
                break;
            }
            notified.await;
        }
        tokio::time::sleep(wait).await;
    }
}

struct StreamGuard(Arc<Active>);

impl Drop for StreamGuard {
    fn drop(&mut self) {
        if self.0.count.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_header_list_limit_is_above_ours_and_never_below_pingoras() {
        assert_eq!(header_list_limit(1024), 64 * 1024);
        assert_eq!(
            header_list_limit(32 * 1024),
            64 * 1024 + FIELD_ALLOWANCE as u32
        );
        assert_eq!(header_list_limit(usize::MAX), u32::MAX);
    }

    #[test]
    fn idle_wait_before_the_first_request_is_the_preface_deadline() {
        let limits = H2Limits {
            preface: Duration::from_secs(20),
            idle: Some(Duration::from_secs(60)),
            max_concurrent_streams: 32,
            max_requests: 1000,
            max_header_list: 65536,
        };
        assert_eq!(limits.idle_wait(false), Duration::from_secs(20));
        assert_eq!(limits.idle_wait(true), Duration::from_secs(60));
        let off = H2Limits {
            idle: None,
            ..limits
        };
        assert_eq!(off.idle_wait(true), Duration::ZERO);
    }

    #[tokio::test]
    async fn idle_waits_for_the_last_stream_to_end() {
        let active = Arc::new(Active::default());
        let guard = active.start();
        let wait = active.idle_for(Duration::from_millis(10));
        tokio::pin!(wait);
        assert!(
            tokio::time::timeout(Duration::from_millis(50), &mut wait)
                .await
                .is_err(),
            "idle while a stream is open"
        );
        drop(guard);
        tokio::time::timeout(Duration::from_secs(1), wait)
            .await
            .expect("idle once the stream ended");
    }
}
