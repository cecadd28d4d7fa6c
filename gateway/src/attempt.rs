//! The one upstream attempt loop: pick a server, connect, send the request, classify what went
//! wrong, and go to another server by one rule. The relay, FastCGI and the WebSocket tunnel run
//! it with their own way of connecting and sending (an [`Exchange`]); pingora's proxy path,
//! which pingora drives, follows the same rule through [`Tries`] from its `upstream_peer`,
//! `fail_to_connect` and `error_while_proxy` hooks.
//!
//! The rule: a request goes to another server only when nothing of it can have reached the app
//! (the connect failed or timed out, or the request head could not be written to a new
//! connection) and a server is left that is up and not yet tried by this request; a kept
//! connection that the app had closed meanwhile (it fails on the first write, or, for a request
//! that may be sent twice, answers nothing at all) is not the server's fault and the request is
//! sent again, at most [`STALE_RETRIES`] times. Anything else is final: the app may have
//! started on the request.

use std::future::Future;
use std::net::IpAddr;
use std::sync::Arc;

use crate::addr::{Addr, Timeouts};
use crate::failure::{Failure, Fault};
use crate::upstream::Pool;

/// Keeps a server's in-flight count (`least_conn`) while the request uses it.
pub use crate::upstream::InFlight;

/// Kept connections found closed by the app that a request may meet before it must use a new
/// connection (after an app restart, every kept connection is stale at once, but they are
/// noticed before use and dropped; these are the ones closed just as they were picked).
pub const STALE_RETRIES: usize = 2;

/// The server an attempt goes to.
pub struct To<'a> {
    /// Its place in the pool (for per-server state such as FastCGI's kept connections).
    pub index: usize,
    pub addr: &'a Addr,
    pub timeouts: Timeouts,
}

/// How one attempt on one server ended.
pub enum Attempt<C> {
    /// The app answered (at least the start of it): what the protocol needs to go on.
    Answered(C),
    /// A kept connection that the app had closed: nothing reached it.
    Stale,
    /// Nothing of the request reached the app: the connect failed or timed out, or the head
    /// could not be written to a new connection.
    NotSent(Failure),
    /// The app may have started on the request, or the client failed: final.
    Failed(Fault),
}

/// One protocol's way to use a server: connect (or take a kept connection when `reuse`), send
/// the request, and wait for the answer to start.
pub trait Exchange {
    /// What an attempt that got an answer hands on (the connection, the answer read so far).
    type Conn: Send;
    fn attempt(
        &mut self,
        to: To<'_>,
        reuse: bool,
    ) -> impl Future<Output = Attempt<Self::Conn>> + Send;
}

/// What a request has used up: the servers it could not reach and the stale kept connections
/// it met. The retry rule lives here, for the loop and for pingora's hooks alike.
#[derive(Debug, Default)]
pub struct Tries {
    tried: Vec<usize>,
    stale: usize,
}

impl Tries {
    /// The servers this request failed to reach: the next pick skips them.
    pub fn tried(&self) -> &[usize] {
        &self.tried
    }

    /// Whether the next attempt may use a kept connection (and so meet a stale one).
    pub fn reuse(&self) -> bool {
        self.stale < STALE_RETRIES
    }

    /// Nothing of the request reached server `index`: logs the attempt and says whether the
    /// request goes to another server.
    pub fn not_sent(&mut self, pool: &Pool, index: usize, failure: &Failure, route: &str) -> bool {
        let server = &pool.servers[index].addr;
        tracing::warn!(route, upstream = pool.name.as_str(), server = %server, error = %failure, "connect failed");
        self.tried.push(index);
        pool.usable_left(&self.tried)
    }

    /// A kept connection to server `index` turned out closed: whether the request is sent
    /// again.
    pub fn stale(&mut self, pool: &Pool, index: usize) -> bool {
        if !self.reuse() {
            return false;
        }
        self.stale += 1;
        tracing::debug!(upstream = pool.name.as_str(), server = %pool.servers[index].addr, "a kept connection was closed by the app; sending again");
        true
    }
}

/// The attempt loop for one request to one pool.
pub struct Loop<'a> {
    pub pool: &'a Arc<Pool>,
    pub client: Option<IpAddr>,
    /// The route, for the log lines of failed attempts.
    pub route: &'a str,
    /// What the request's own log line and metrics need to know of the attempts.
    pub picked: &'a mut Picked,
}

/// The server a request went to last, and how long the app took to start answering.
#[derive(Debug, Default, Clone, Copy)]
pub struct Picked {
    pub server: Option<usize>,
    /// From the first attempt to the app's answer head, connects and retries included
    /// (nginx's `$upstream_header_time` over all attempts).
    pub answered_in: Option<std::time::Duration>,
}

/// An attempt that got an answer.
pub struct Won<'a, C> {
    pub conn: C,
    /// The server's place in the pool.
    pub server: usize,
    pub addr: &'a Addr,
    pub in_flight: InFlight,
}

impl<'a> Loop<'a> {
    /// The pool's name, for the protocol's own log lines.
    pub fn upstream(&self) -> &'a str {
        self.pool.name.as_str()
    }

    /// The pool's timeouts, for reading the rest of an answer.
    pub fn timeouts(&self) -> Timeouts {
        self.pool.timeouts()
    }

    /// Run attempts until one gets an answer or the rule says stop.
    pub async fn run<E: Exchange>(self, exchange: &mut E) -> Result<Won<'a, E::Conn>, Fault> {
        let pool: &'a Arc<Pool> = self.pool;
        let mut tries = Tries::default();
        let started = std::time::Instant::now();
        loop {
            let Some(i) = pool.select(self.client, tries.tried()) else {
                return Err(Failure::NoHealthyServer.into());
            };
            self.picked.server = Some(i);
            let in_flight = pool.begin(i);
            let addr = &pool.servers[i].addr;
            let to = To {
                index: i,
                addr,
                timeouts: pool.timeouts(),
            };
            match exchange.attempt(to, tries.reuse()).await {
                Attempt::Answered(conn) => {
                    self.picked.answered_in = Some(started.elapsed());
                    return Ok(Won {
                        conn,
                        server: i,
                        addr,
                        in_flight,
                    });
                }
                Attempt::Stale => {
                    if !tries.stale(pool, i) {
                        // An exchange only reports a stale connection while reuse is allowed.
                        return Err(Failure::BadAnswer(
                            addr.to_string(),
                            "a kept connection was closed".into(),
                        )
                        .into());
                    }
                }
                Attempt::NotSent(failure) => {
                    if !tries.not_sent(pool, i, &failure, self.route) {
                        return Err(failure.into());
                    }
                }
                Attempt::Failed(fault) => return Err(fault),
            }
        }
    }
}
