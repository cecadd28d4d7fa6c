//! The process is going away (`SIGTERM`, or the old process of an upgrade): HTTP/1 clients are
//! told so, and the connections they already have are not cut under a request.
//!
//! pingora stops accepting and, the same instant, drops every connection that is waiting for
//! its next request (`http_cleanup`). A client that had just sent one on such a connection (a
//! kept-alive connection, or one accepted a moment before) loses it: a request refused by a
//! graceful stop. So, from the moment the process knows it is going away:
//!
//! - every HTTP/1 answer says `Connection: close` ([`Draining::on`], checked by the front
//!   door for each request), so clients move to new connections, which the listeners (or the
//!   new process, which has them too) accept;
//! - once the listeners have stopped, the connections still open are served for [`LINGER`]
//!   more ([`Lingering`]) before pingora closes the idle ones: what was sent on them arrives
//!   and is answered, with `Connection: close`.
//!
//! nginx does the first (its `keepalive` ends at a graceful stop) and closes idle connections
//! at once; the second is ours, since a client may retry a request on a closed keep-alive
//! connection but a request is never refused on purpose here.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pingora::apps::ServerApp;
use pingora::protocols::Stream;
use pingora::server::ShutdownWatch;

/// How long the connections already open are still served once the listeners have stopped.
/// Long enough for a request in flight on loopback or a LAN to arrive, short against the
/// `grace_period_s` the requests then have to finish (3 s in the shipped config).
pub const LINGER: Duration = Duration::from_secs(1);

/// Whether the process is going away; shared by whoever learns it and the front door.
#[derive(Clone, Default, Debug)]
pub struct Draining(Arc<AtomicBool>);

impl Draining {
    /// The process is going away from now on.
    pub fn begin(&self) {
        self.0.store(true, Ordering::Relaxed);
    }

    /// Whether answers should close their connection.
    pub fn on(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

/// A server app whose cleanup (after its listeners stopped) waits [`LINGER`] first.
pub struct Lingering<S> {
    pub inner: Arc<S>,
    pub draining: Draining,
}

#[async_trait]
impl<S: ServerApp + Send + Sync + 'static> ServerApp for Lingering<S> {
    async fn process_new(
        self: &Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        self.inner.process_new(stream, shutdown).await
    }

    async fn cleanup(&self) {
        self.draining.begin();
        tokio::time::sleep(LINGER).await;
        self.inner.cleanup().await
    }
}
