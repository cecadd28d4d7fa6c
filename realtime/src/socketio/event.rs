//! What a socket's handlers are given: an event from the client with its arguments, and why
//! the socket left its namespace.

use std::fmt;

use bytes::Bytes;
use serde_json::Value;

use super::codec::placeholder;
use crate::engineio::CloseReason;

/// Event or acknowledgement arguments: JSON values plus binary attachments.
///
/// Binaries stay beside the JSON: each `{"_placeholder":true,"num":i}`
/// object in `values` stands for `binaries[i]`, exactly as on the wire, so
/// a relay forwards both untouched. Build binary arguments with
/// [`Args::binary`], which appends a placeholder and its attachment.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Args {
    pub values: Vec<Value>,
    pub binaries: Vec<Bytes>,
}

impl Args {
    /// No arguments.
    pub fn new() -> Args {
        Args::default()
    }

    /// Appends a JSON argument.
    pub fn arg(mut self, value: impl Into<Value>) -> Args {
        self.values.push(value.into());
        self
    }

    /// Appends a binary argument (a placeholder in `values`, the bytes in
    /// `binaries`).
    pub fn binary(mut self, bytes: impl Into<Bytes>) -> Args {
        self.values.push(placeholder(self.binaries.len()));
        self.binaries.push(bytes.into());
        self
    }
}

impl From<Vec<Value>> for Args {
    fn from(values: Vec<Value>) -> Args {
        Args {
            values,
            binaries: Vec::new(),
        }
    }
}

/// A JSON array is the argument list; any other value is one argument.
impl From<Value> for Args {
    fn from(value: Value) -> Args {
        match value {
            Value::Array(values) => Args::from(values),
            other => Args::from(vec![other]),
        }
    }
}

impl From<()> for Args {
    fn from(_: ()) -> Args {
        Args::default()
    }
}

/// An event received from the client.
#[derive(Clone, Debug, PartialEq)]
pub struct Event {
    /// The event name. A numeric name (`42[42,"x"]`, legal on the wire) is
    /// given as its JSON text (`"42"`).
    pub name: String,
    pub args: Args,
}

/// Why a socket left its namespace, with node's reason strings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DisconnectReason {
    /// The client sent DISCONNECT for this namespace.
    ClientNamespaceDisconnect,
    /// [`Socket::disconnect`](super::Socket::disconnect) was called.
    ServerNamespaceDisconnect,
    /// The whole connection ended.
    Connection(CloseReason),
}

impl DisconnectReason {
    pub fn as_str(&self) -> &str {
        match self {
            DisconnectReason::ClientNamespaceDisconnect => "client namespace disconnect",
            DisconnectReason::ServerNamespaceDisconnect => "server namespace disconnect",
            DisconnectReason::Connection(reason) => reason.as_str(),
        }
    }

    /// Whether the session is kept for recovery: node's
    /// `RECOVERABLE_DISCONNECT_REASONS` (the transport went away, not the
    /// client or server by intent), plus a slow consumer, which is exactly
    /// the client that recovery exists for.
    pub fn is_recoverable(&self) -> bool {
        match self {
            DisconnectReason::Connection(reason) => !matches!(reason, CloseReason::ParseError(_)),
            _ => false,
        }
    }
}

impl fmt::Display for DisconnectReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
