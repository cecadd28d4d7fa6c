//! Where an app server listens (TCP or a Unix socket), and a connection to it: what the pools'
//! health checks, the relay's and pingora's HTTP peers, FastCGI and the WebSocket tunnel all
//! connect with, so a Unix socket works the same on every path.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use pingora::upstreams::peer::{HttpPeer, HttpUpstreamRequestPolicy};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Kept HTTP connections to the app are closed before a typical app server's own keep-alive
/// timeout (Puma: 20 s), so a request is never written to a connection it is closing.
pub const HTTP_IDLE_TIMEOUT: Duration = Duration::from_secs(15);

/// Where a server listens, parsed once with the settings (TCP, or a Unix socket).
pub use crate::settings::Addr;

/// Whether each worker thread keeps its own kept-alive app connections: set once at start with
/// `work_stealing: false`, when every worker thread is a runtime of its own and a connection's
/// readiness is reported by the runtime that opened it. A connection opened on one thread and
/// reused by a request on another would then cost a wake-up of the first thread for every read
/// (nginx keeps an `upstream keepalive` cache per worker for the same reason). With one shared
/// runtime (work stealing, the default) tasks move between threads anyway: one pool.
static PER_THREAD_POOLS: AtomicBool = AtomicBool::new(false);

/// Keep app connections per worker thread from now on (see [`PER_THREAD_POOLS`]).
pub fn keep_connections_per_thread(on: bool) {
    PER_THREAD_POOLS.store(on, Ordering::Relaxed);
}

/// The key that keeps this thread's kept-alive connections apart from other threads': 0 (one
/// pool) unless [`keep_connections_per_thread`], else a number given to each thread at its
/// first use.
pub(crate) fn pool_group() -> u64 {
    thread_group(PER_THREAD_POOLS.load(Ordering::Relaxed))
}

/// This thread's number if `per_thread`, else 0.
fn thread_group(per_thread: bool) -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    thread_local! {
        static GROUP: u64 = NEXT.fetch_add(1, Ordering::Relaxed);
    }
    if per_thread {
        GROUP.with(|g| *g)
    } else {
        0
    }
}

/// A pool's timeouts, for one attempt on one of its servers.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    pub connect: Duration,
    /// Also the write timeout: an app that takes neither the request nor gives an answer for
    /// this long is as silent as one that does not answer.
    pub read: Duration,
}

impl Addr {
    /// The pingora peer for an HTTP/1.1 connection to this server, with the pool's timeouts:
    /// the one place both pingora's proxy path and the relay get their peers from.
    pub fn http_peer(&self, t: Timeouts) -> pingora::Result<HttpPeer> {
        let mut peer = match self {
            Addr::Tcp(addr) => HttpPeer::new(*addr, false, String::new()),
            Addr::Unix(path) => match path.to_str() {
                Some(path) => HttpPeer::new_uds(path, false, String::new())?,
                None => {
                    return pingora::Error::e_explain(
                        pingora::ErrorType::ConnectError,
                        "socket path is not UTF-8",
                    )
                }
            },
        };
        peer.options.connection_timeout = Some(t.connect);
        peer.options.total_connection_timeout = Some(t.connect);
        peer.options.read_timeout = Some(t.read);
        peer.options.write_timeout = Some(t.read);
        peer.options.idle_timeout = Some(HTTP_IDLE_TIMEOUT);
        // Part of the pool's key for a kept connection: the same server, this thread's.
        peer.group_key = pool_group();
        // `Connection`-listed fields are removed by `forwarding::request`, which keeps Host and
        // the other end-to-end fields as FastCGI and the tunnel do; pingora's own pass would
        // strip Cookie or Authorization and answer 400 to `Connection: Host`.
        peer.options.http_upstream_request_policy = HttpUpstreamRequestPolicy {
            strip_connection_nominated: false,
            ..HttpUpstreamRequestPolicy::standard()
        };
        Ok(peer)
    }

    /// Open a connection (health checks, FastCGI, the WebSocket tunnel).
    pub async fn connect(&self) -> std::io::Result<Stream> {
        Ok(match self {
            Addr::Tcp(a) => {
                let s = tokio::net::TcpStream::connect(a).await?;
                let _ = s.set_nodelay(true);
                Stream::Tcp(s)
            }
            Addr::Unix(p) => Stream::Unix(tokio::net::UnixStream::connect(p).await?),
        })
    }
}

/// A connection to a server, whichever kind of socket it is.
#[derive(Debug)]
pub enum Stream {
    Tcp(tokio::net::TcpStream),
    Unix(tokio::net::UnixStream),
}

impl Stream {
    /// A kept connection is only usable if the server has neither closed it nor written to it.
    pub fn still_open(&self) -> bool {
        let mut b = [0u8; 1];
        let r = match self {
            Stream::Tcp(s) => s.try_read(&mut b),
            Stream::Unix(s) => s.try_read(&mut b),
        };
        matches!(r, Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Unix(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Unix(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_flush(cx),
            Stream::Unix(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Unix(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    #[test]
    fn peers_carry_the_pools_timeouts() {
        let t = Timeouts {
            connect: Duration::from_millis(250),
            read: Duration::from_millis(900),
        };
        for addr in [
            Addr::Tcp(([127, 0, 0, 1], 3000).into()),
            Addr::Unix(PathBuf::from("/run/app/puma.sock")),
        ] {
            let peer = addr.http_peer(t).unwrap();
            assert_eq!(peer.options.connection_timeout, Some(t.connect));
            assert_eq!(peer.options.total_connection_timeout, Some(t.connect));
            assert_eq!(peer.options.read_timeout, Some(t.read));
            assert_eq!(peer.options.write_timeout, Some(t.read));
            assert_eq!(peer.options.idle_timeout, Some(HTTP_IDLE_TIMEOUT));
            assert!(
                !peer
                    .options
                    .http_upstream_request_policy
                    .strip_connection_nominated
            );
        }
    }

    /// With a runtime per worker thread, a kept app connection is reused by the thread that
    /// opened it: the pool's key differs per thread (pingora's `reuse_hash` covers
    /// `group_key`); with one shared runtime, every thread shares one pool.
    #[test]
    fn each_worker_thread_keeps_its_own_app_connections_without_work_stealing() {
        use pingora::upstreams::peer::Peer;
        fn key(per_thread: bool) -> (u64, u64) {
            let t = Timeouts {
                connect: Duration::from_secs(1),
                read: Duration::from_secs(1),
            };
            let mut peer = Addr::Tcp(([127, 0, 0, 1], 3000).into())
                .http_peer(t)
                .unwrap();
            peer.group_key = thread_group(per_thread);
            (peer.group_key, peer.reuse_hash())
        }
        // The peers every path takes carry this thread's key for the setting in force.
        let any = Addr::Tcp(([127, 0, 0, 1], 3000).into());
        let t = Timeouts {
            connect: Duration::from_secs(1),
            read: Duration::from_secs(1),
        };
        assert_eq!(any.http_peer(t).unwrap().group_key, pool_group());

        let here = key(true);
        let there = std::thread::spawn(|| key(true)).join().unwrap();
        assert_ne!(here.0, 0);
        assert_ne!(there.0, 0);
        assert_ne!(here, there, "two threads share a pool");
        assert_eq!(key(true), here, "one thread's key changed");

        let here = key(false);
        let there = std::thread::spawn(|| key(false)).join().unwrap();
        assert_eq!(here, there, "with work stealing the threads share one pool");
        assert_eq!(here.0, 0);
    }
}
