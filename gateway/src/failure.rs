//! Everything that can end a request before the answer it wanted reached the client, by kind,
//! and what each becomes: one status, one reason told to the client and one log line per kind,
//! whichever path the request took (pingora's proxy path, the relay, FastCGI, the WebSocket
//! tunnel, a held body). The paths classify what went wrong into these types; nothing else maps
//! a fault to a status.
//!
//! The statuses are nginx's: a server that refuses or resets the connection, or answers
//! garbage, is a 502; one that does not accept the connection in time ("upstream timed out while
//! connecting") or stays silent past `read_timeout_ms` is a 504; no server left to ask is a 503.
//! A fault of the client (its body too large, too slow, broken, or the client gone) is a
//! different kind from a fault of the app, with its own statuses (413, 408, 400, none).

use std::fmt;
use std::net::IpAddr;

use pingora::{Error, ErrorSource, ErrorType};

use crate::addr::Addr;

/// Why the app could not be asked or did not answer properly. Addresses are as logs show them.
#[derive(Debug)]
pub enum Failure {
    /// No server is marked up, or every one was tried already: 503.
    NoHealthyServer,
    /// The server did not accept the connection within `connect_timeout_ms`: 504.
    ConnectTimeout(String),
    /// The connection was refused, reset or could not be made: 502.
    Connect(String, String),
    /// The app stayed silent past `read_timeout_ms` (or did not take the request): 504.
    Timeout(String),
    /// The app's answer was broken, or the connection ended in the middle of the exchange: 502.
    BadAnswer(String, String),
}

impl Failure {
    pub fn status(&self) -> u16 {
        match self {
            Failure::NoHealthyServer => 503,
            Failure::ConnectTimeout(_) | Failure::Timeout(_) => 504,
            Failure::Connect(..) | Failure::BadAnswer(..) => 502,
        }
    }

    /// What the client is told: the address and the OS error are for the log only.
    pub fn public_reason(&self) -> &'static str {
        match self.status() {
            503 => "no healthy app server",
            504 => "the app did not answer in time",
            _ => "the app did not answer properly",
        }
    }

    /// A failed connect to `addr` (the OS error; a timeout is [`Failure::ConnectTimeout`]).
    pub fn connect(addr: &Addr, e: &std::io::Error) -> Failure {
        Failure::Connect(addr.to_string(), e.to_string())
    }

    /// A pingora error from talking to `addr`, by its type: connecting, then the exchange.
    pub fn from_error(addr: &dyn fmt::Display, e: &Error) -> Failure {
        match e.etype() {
            ErrorType::ConnectTimedout | ErrorType::TLSHandshakeTimedout => {
                Failure::ConnectTimeout(addr.to_string())
            }
            ErrorType::ReadTimedout | ErrorType::WriteTimedout => {
                Failure::Timeout(addr.to_string())
            }
            ErrorType::ConnectRefused
            | ErrorType::ConnectNoRoute
            | ErrorType::ConnectError
            | ErrorType::ConnectProxyFailure
            | ErrorType::TLSHandshakeFailure
            | ErrorType::HandshakeError
            | ErrorType::InvalidCert
            | ErrorType::BindError
            | ErrorType::SocketError => Failure::Connect(addr.to_string(), e.to_string()),
            _ => Failure::BadAnswer(addr.to_string(), e.to_string()),
        }
    }

    /// The failure as a pingora error from the app's side, for a failure in the middle of an
    /// answer whose head is already sent: [`Fault::from_error`] reads it back as the same kind.
    pub fn into_error(self) -> Box<Error> {
        let kind = match self {
            Failure::NoHealthyServer => ErrorType::HTTPStatus(503),
            Failure::ConnectTimeout(_) => ErrorType::ConnectTimedout,
            Failure::Timeout(_) => ErrorType::ReadTimedout,
            Failure::Connect(..) => ErrorType::ConnectError,
            Failure::BadAnswer(..) => ErrorType::ReadError,
        };
        Error::explain(kind, self.to_string()).into_up()
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::NoHealthyServer => f.write_str("no healthy server"),
            Failure::ConnectTimeout(a) => write!(f, "{a} did not accept the connection in time"),
            Failure::Connect(a, e) => write!(f, "cannot reach {a}: {e}"),
            Failure::Timeout(a) => write!(f, "{a} did not answer in time"),
            Failure::BadAnswer(a, e) => write!(f, "{a} answered badly: {e}"),
        }
    }
}

/// Why a client's request could not be taken: its body, or the client itself.
#[derive(Debug)]
pub enum ClientFailure {
    /// More than `max_body_bytes` (413).
    TooLarge(u64),
    /// The body's deadline passed (408).
    Timeout { received: u64 },
    /// pingora's error on the client connection (its type and text): too slow (408), gone
    /// (nothing to answer), or a broken body (400).
    Client(ErrorType, String),
    /// The held body could not be written to its temporary file (500).
    Disk(std::io::Error),
}

impl ClientFailure {
    /// pingora's error on the client connection.
    pub fn from_error(e: &Error) -> ClientFailure {
        ClientFailure::Client(e.etype().clone(), e.to_string())
    }

    pub fn status(&self) -> u16 {
        match self {
            ClientFailure::TooLarge(_) => 413,
            ClientFailure::Timeout { .. } => 408,
            ClientFailure::Client(kind, _) => match kind {
                ErrorType::ReadTimedout => 408,
                // Nobody left to answer.
                ErrorType::ReadError
                | ErrorType::WriteError
                | ErrorType::WriteTimedout
                | ErrorType::ConnectionClosed => 0,
                _ => 400,
            },
            ClientFailure::Disk(_) => 500,
        }
    }

    pub fn public_reason(&self) -> &'static str {
        match self.status() {
            413 => "request body too large",
            408 => "request body took too long to arrive",
            500 => "the request body could not be stored",
            _ => "bad request body",
        }
    }
}

impl fmt::Display for ClientFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClientFailure::TooLarge(n) => write!(f, "request body over {n} bytes"),
            ClientFailure::Timeout { received } => write!(
                f,
                "request body incomplete at the deadline ({received} bytes received)"
            ),
            ClientFailure::Client(_, e) => f.write_str(e),
            ClientFailure::Disk(e) => {
                write!(f, "writing the request body to a temporary file: {e}")
            }
        }
    }
}

/// Any fault that ends a request with an answer of the gateway's own (or with none).
#[derive(Debug)]
pub enum Fault {
    /// The app's side: 502, 503, 504.
    App(Failure),
    /// The client's side: 413, 408, 400, 500 (its body could not be stored), or no answer.
    Client(ClientFailure),
    /// Refused by a rule before the app was asked (FastCGI: no script for the path is a 404, a
    /// path that cannot name one a 400), or an error pingora raised with a status of its own.
    Refused {
        status: u16,
        reason: &'static str,
        detail: String,
    },
    /// The gateway's own trouble (a file that cannot be read, a bug): 500.
    Internal(String),
}

impl From<Failure> for Fault {
    fn from(f: Failure) -> Fault {
        Fault::App(f)
    }
}

impl From<ClientFailure> for Fault {
    fn from(f: ClientFailure) -> Fault {
        Fault::Client(f)
    }
}

impl Fault {
    /// What a pingora error means, by where it came from; `server` is the app server the
    /// request was on, if any (for the log). The one reading of pingora's errors: pingora's
    /// proxy path ends in it, and so does every other path's error that is not classified
    /// where it happened.
    pub fn from_error(e: &Error, server: Option<&Addr>) -> Fault {
        let shown: &dyn fmt::Display = match server {
            Some(a) => a,
            None => &"-",
        };
        match (e.etype(), e.esource()) {
            (ErrorType::HTTPStatus(503), ErrorSource::Upstream) => {
                Fault::App(Failure::NoHealthyServer)
            }
            (ErrorType::HTTPStatus(status), _) => Fault::Refused {
                status: *status,
                reason: "request failed",
                detail: e.to_string(),
            },
            (_, ErrorSource::Upstream) => Fault::App(Failure::from_error(shown, e)),
            (_, ErrorSource::Downstream) => Fault::Client(ClientFailure::from_error(e)),
            _ => Fault::Internal(e.to_string()),
        }
    }

    /// The status of the answer (0: the client is gone, nothing is answered).
    pub fn status(&self) -> u16 {
        match self {
            Fault::App(f) => f.status(),
            Fault::Client(f) => f.status(),
            Fault::Refused { status, .. } => *status,
            Fault::Internal(_) => 500,
        }
    }

    /// What the client is told.
    pub fn public_reason(&self) -> &'static str {
        match self {
            Fault::App(f) => f.public_reason(),
            Fault::Client(f) => f.public_reason(),
            Fault::Refused { reason, .. } => reason,
            Fault::Internal(_) => "request failed",
        }
    }

    /// The one log line of a fault, the same on every path (`path`: the request's).
    pub fn log(&self, at: &Place<'_>, path: &http::Uri) {
        let status = self.status();
        let server = Shown(at.server);
        let (client, route, by, upstream) = (at.client, at.route, at.by, at.upstream);
        let request_id = at.request_id.and_then(|v| v.to_str().ok()).unwrap_or("-");
        match self {
            Fault::App(f) => {
                tracing::warn!(client = ?client, request_id, route, by, upstream, server = %server, path = %path, status, error = %f, "upstream failed")
            }
            // A client that left mid-upload or mid-answer: nothing to answer, and not worth a
            // warning each (a slow-upload attack ends with hundreds).
            Fault::Client(f) if status == 0 => {
                tracing::info!(client = ?client, request_id, route, by, path = %path, error = %f, "the client went away")
            }
            Fault::Client(f) => {
                tracing::warn!(client = ?client, request_id, route, by, path = %path, status, error = %f, "request not accepted")
            }
            Fault::Refused { detail, .. } => {
                tracing::warn!(client = ?client, request_id, route, by, upstream, path = %path, status, error = %detail, "request refused")
            }
            Fault::Internal(e) => {
                tracing::error!(client = ?client, request_id, route, by, upstream, server = %server, path = %path, status, error = %e, "request failed inside the gateway")
            }
        }
    }
}

/// Where a fault happened, for its log line.
pub struct Place<'a> {
    pub client: Option<IpAddr>,
    pub route: &'a str,
    /// What was answering: `upstream` (pingora's proxy path or the relay), `fastcgi`,
    /// `tunnel`, `static`, `accel`, `limit`, ...
    pub by: &'a str,
    pub upstream: &'a str,
    /// The server the request was on when it failed.
    pub server: Option<&'a Addr>,
    /// The request's `X-Request-Id`, which the access log and the app have too.
    pub request_id: Option<&'a http::HeaderValue>,
}

/// A server for a log field: its address, or `-`.
pub struct Shown<'a>(pub Option<&'a Addr>);

impl fmt::Display for Shown<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(a) => a.fmt(f),
            None => f.write_str("-"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr() -> Addr {
        Addr::Tcp("127.0.0.1:3000".parse().unwrap())
    }

    #[test]
    fn the_nginx_statuses_for_the_apps_faults() {
        let a = addr();
        let up = |t: ErrorType| Fault::from_error(&Error::explain(t, "x").into_up(), Some(&a));
        // nginx: "upstream timed out while connecting" and a silent app are 504s; a refused
        // or reset connection and a broken answer 502s; nothing to ask a 503.
        assert_eq!(up(ErrorType::ConnectTimedout).status(), 504);
        assert_eq!(up(ErrorType::ReadTimedout).status(), 504);
        assert_eq!(up(ErrorType::WriteTimedout).status(), 504);
        assert_eq!(up(ErrorType::ConnectRefused).status(), 502);
        assert_eq!(up(ErrorType::ConnectionClosed).status(), 502);
        assert_eq!(up(ErrorType::InvalidHTTPHeader).status(), 502);
        assert_eq!(up(ErrorType::HTTPStatus(503)).status(), 503);
        assert_eq!(
            Fault::from(Failure::NoHealthyServer).public_reason(),
            "no healthy app server"
        );
        let io = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        assert_eq!(Failure::connect(&a, &io).status(), 502);
    }

    #[test]
    fn a_failure_passed_through_a_pingora_error_keeps_its_kind() {
        let a = addr();
        for f in [
            Failure::ConnectTimeout(a.to_string()),
            Failure::Connect(a.to_string(), "refused".into()),
            Failure::Timeout(a.to_string()),
            Failure::BadAnswer(a.to_string(), "garbage".into()),
            Failure::NoHealthyServer,
        ] {
            let status = f.status();
            let back = Fault::from_error(&f.into_error(), Some(&a));
            assert!(matches!(back, Fault::App(_)), "{back:?}");
            assert_eq!(back.status(), status, "{back:?}");
        }
    }

    #[test]
    fn the_clients_faults_are_their_own_kind() {
        let down = |t: ErrorType| Fault::from_error(&Error::explain(t, "x").into_down(), None);
        assert_eq!(down(ErrorType::ReadTimedout).status(), 408);
        assert_eq!(down(ErrorType::ReadError).status(), 0);
        assert_eq!(down(ErrorType::WriteError).status(), 0);
        assert_eq!(down(ErrorType::ConnectionClosed).status(), 0);
        assert_eq!(down(ErrorType::InvalidHTTPHeader).status(), 400);
        let big = Fault::from(ClientFailure::TooLarge(10));
        assert_eq!(
            (big.status(), big.public_reason()),
            (413, "request body too large")
        );
        let slow = Fault::from(ClientFailure::Timeout { received: 3 });
        assert_eq!(
            (slow.status(), slow.public_reason()),
            (408, "request body took too long to arrive")
        );
        let internal = Fault::from_error(&Error::explain(ErrorType::FileReadError, "x"), None);
        assert_eq!(internal.status(), 500);
    }
}
