//! TLS handshakes that end before they complete: counted by reason, and logged at the level
//! the reason deserves, instead of pingora's ERROR line for each.
//!
//! pingora's accept loop (`pingora_core::services::listening`, 0.9.1) runs the TLS handshake
//! itself and logs every failure with `error!("Downstream handshake error from {addr}: {e}")`
//! (or `"Downstream handshake timeout"`); the app never sees the connection. A TCP health
//! check of a load balancer, a port scanner, or a browser that gives up on a slow network
//! closes during the handshake, and each was an ERROR line, drowning the real faults. So the
//! subscriber set up in `main` keeps that module's lines from the log output
//! ([`SILENCED`]) and hands them to [`HandshakeNoise`] instead, which sorts each by its
//! reason ([`Reason::of`]), counts it (`gateway_tls_handshake_failures_total{reason}`), and
//! logs it again under the target `gateway::tls`: at debug when the peer closed or went
//! silent (noise), at info when it spoke something other than TLS (plain HTTP to the HTTPS
//! port: a misconfigured client or a scanner), at warn for a TLS failure (no shared version
//! or cipher, an alert: a real client that cannot connect). The module's other lines (a failed
//! `accept()`, shutdown) are logged again at their own level.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::{Context, Layer};

/// The module whose lines are taken over (its `log` records arrive as tracing events with
/// this target).
pub const TARGET: &str = "pingora_core::services::listening";

/// The filter directive that keeps [`TARGET`] out of the log output.
pub const SILENCED: &str = "pingora_core::services::listening=off";

/// Why a handshake did not complete.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// The peer closed or reset the connection (a TCP health check, a scanner).
    Closed,
    /// The peer sent nothing for pingora's 60 s.
    Timeout,
    /// The peer spoke something other than TLS (plain HTTP to the HTTPS port).
    NotTls,
    /// A TLS failure: no shared version or cipher, a bad message, an alert from the client.
    Error,
}

impl Reason {
    /// The reason in pingora's message (`"Downstream handshake error from 1.2.3.4:5: ..."`);
    /// `None` for a message that is not about a handshake.
    pub fn of(message: &str) -> Option<Reason> {
        if message.starts_with("Downstream handshake timeout") {
            return Some(Reason::Timeout);
        }
        if !message.starts_with("Downstream handshake error") {
            return None;
        }
        let m = message.to_ascii_lowercase();
        let closed = [
            "eof",
            "connection reset",
            "broken pipe",
            "os error 104",
            "os error 32",
            "connection closed",
        ];
        if closed.iter().any(|c| m.contains(c)) {
            return Some(Reason::Closed);
        }
        // rustls: "received corrupt message of type InvalidContentType" (the first bytes
        // are not a TLS record: `GET / HTTP/1.1`).
        if m.contains("invalidcontenttype") || m.contains("invalid content type") {
            return Some(Reason::NotTls);
        }
        Some(Reason::Error)
    }

    fn index(self) -> usize {
        self as usize
    }
}

static FAILURES: [AtomicU64; 4] = [
    AtomicU64::new(0),
    AtomicU64::new(0),
    AtomicU64::new(0),
    AtomicU64::new(0),
];

/// Failed handshakes so far: (closed, timeout, not TLS, error). A process has one accept
/// loop per listener and one log, so the counts are process-wide.
pub fn handshake_failures() -> (u64, u64, u64, u64) {
    let get = |r: Reason| FAILURES[r.index()].load(Ordering::Relaxed);
    (
        get(Reason::Closed),
        get(Reason::Timeout),
        get(Reason::NotTls),
        get(Reason::Error),
    )
}

/// The layer that takes over [`TARGET`]'s lines (see the module doc).
pub struct HandshakeNoise;

/// Whether the filter lets `meta` through to [`HandshakeNoise`]: [`TARGET`]'s records, and
/// the callsites every `log` record is dispatched through (whose own target is `log`: the
/// record's real one is checked when it is dispatched, and again in `on_event`).
pub fn wanted(meta: &tracing::Metadata<'_>) -> bool {
    // Above [`MAX_LEVEL`] never: the filter promises that much to the subscriber (and a debug
    // build checks it), and `RUST_LOG=debug` brings the `log` bridge's debug lines here.
    MAX_LEVEL >= *meta.level() && (meta.target() == TARGET || meta.target() == "log")
}

/// The most detailed level [`HandshakeNoise`] takes: the module's handshake lines are
/// errors, its other lines info at most. Given as the filter's hint, it keeps the whole
/// subscriber's hint at the log output's level (info by default), which is what the `log`
/// crate's max level is set from: without it, [`wanted`] (which must accept the `log`
/// bridge's shared target) would raise it to trace, and every `debug!`/`trace!` of pingora's
/// request path would be formatted and handed to this layer, only to be dropped.
pub const MAX_LEVEL: tracing::level_filters::LevelFilter =
    tracing::level_filters::LevelFilter::INFO;

/// Compares a `log` record's real target with [`TARGET`] without copying anything.
#[derive(Default)]
struct IsTarget(bool);

impl Visit for IsTarget {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "log.target" {
            self.0 = value == TARGET;
        }
    }

    fn record_debug(&mut self, _: &Field, _: &dyn std::fmt::Debug) {}
}

/// An event's message.
#[derive(Default)]
struct Message {
    text: String,
}

impl Visit for Message {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.text.push_str(value);
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            let _ = write!(self.text, "{value:?}");
        }
    }
}

impl<S: Subscriber> Layer<S> for HandshakeNoise {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        let meta = event.metadata();
        if meta.target() != TARGET {
            // A `log` record: its own target is a field.
            let mut is = IsTarget::default();
            event.record(&mut is);
            if !is.0 {
                return;
            }
        }
        let mut message = Message::default();
        event.record(&mut message);
        let message = message.text;
        match Reason::of(&message) {
            Some(reason) => {
                FAILURES[reason.index()].fetch_add(1, Ordering::Relaxed);
                let detail = message
                    .strip_prefix("Downstream handshake error from ")
                    .or_else(|| message.strip_prefix("Downstream handshake error: "))
                    .unwrap_or(&message);
                match reason {
                    Reason::Closed | Reason::Timeout => {
                        tracing::debug!(target: "gateway::tls", ?reason, detail, "TLS handshake not completed")
                    }
                    Reason::NotTls => {
                        tracing::info!(target: "gateway::tls", ?reason, detail, "TLS handshake failed: the client does not speak TLS")
                    }
                    Reason::Error => {
                        tracing::warn!(target: "gateway::tls", ?reason, detail, "TLS handshake failed")
                    }
                }
            }
            None => match *meta.level() {
                Level::ERROR => tracing::error!(target: "gateway::listener", "{message}"),
                Level::WARN => tracing::warn!(target: "gateway::listener", "{message}"),
                Level::INFO => tracing::info!(target: "gateway::listener", "{message}"),
                _ => tracing::debug!(target: "gateway::listener", "{message}"),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pingoras_handshake_lines_are_sorted_by_reason() {
        let line = |e: &str| format!("Downstream handshake error from 127.0.0.1:5555: {e}");
        assert_eq!(
            Reason::of(&line(
                " TLSHandshakeFailure context: TLS accept() failed: tls handshake eof"
            )),
            Some(Reason::Closed)
        );
        assert_eq!(
            Reason::of(&line(
                " TLSHandshakeFailure context: TLS accept() failed: Connection reset by peer (os error 104)"
            )),
            Some(Reason::Closed)
        );
        assert_eq!(
            Reason::of(&line(
                " TLSHandshakeFailure context: TLS accept() failed: received corrupt message of type InvalidContentType"
            )),
            Some(Reason::NotTls)
        );
        assert_eq!(
            Reason::of(&line(
                " TLSHandshakeFailure context: TLS accept() failed: peer is incompatible: NoCipherSuitesInCommon"
            )),
            Some(Reason::Error)
        );
        assert_eq!(
            Reason::of("Downstream handshake timeout"),
            Some(Reason::Timeout)
        );
        assert_eq!(Reason::of("Accept() failed Too many open files"), None);
        assert_eq!(Reason::of("Shutting down 0.0.0.0:443"), None);
    }
}
