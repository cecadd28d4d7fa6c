//! The errors of the Socket.IO API: a connect handler's refusal, and why an emit, an
//! acknowledgement or a join failed.

use std::time::Duration;

use serde_json::Value;
use thiserror::Error;

use crate::hub::HubError;

/// A connect handler's refusal, sent to the client as
/// `4<nsp,>{"message":…,"data":…}` (node's `next(err)` in a middleware,
/// with `err.data`). The client gets a `connect_error` with them.
#[derive(Debug, Clone, PartialEq, Error)]
#[error("{message}")]
pub struct ConnectError {
    pub message: String,
    pub data: Option<Value>,
}

impl ConnectError {
    pub fn new(message: impl Into<String>) -> ConnectError {
        ConnectError {
            message: message.into(),
            data: None,
        }
    }

    pub fn with_data(mut self, data: Value) -> ConnectError {
        self.data = Some(data);
        self
    }

    /// The CONNECT_ERROR payload: `message` first, `data` only when set
    /// (node's JSON drops an undefined `data`).
    pub fn to_json(&self) -> Value {
        let mut map = serde_json::Map::new();
        map.insert("message".into(), Value::from(self.message.as_str()));
        if let Some(data) = &self.data {
            map.insert("data".into(), data.clone());
        }
        Value::Object(map)
    }
}

/// Why an emit failed.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum EmitError {
    /// The name is one the client reserves for its own events (`connect`,
    /// `disconnect`, …): the client would mistake it for a state change.
    #[error("`{0}` is a reserved event name")]
    ReservedEvent(String),
    /// The socket is disconnected.
    #[error("socket disconnected")]
    Disconnected,
    /// The client's outgoing queue was full: the connection is now closed
    /// as a slow consumer.
    #[error("client does not keep up; connection closed")]
    SlowConsumer,
    /// Too many acknowledgements are awaited already.
    #[error("too many pending acknowledgements (limit {limit})")]
    TooManyPendingAcks { limit: usize },
    /// The hub refused the publish.
    #[error(transparent)]
    Hub(#[from] HubError),
}

/// Why [`Socket::emit_with_ack`](super::Socket::emit_with_ack) got no acknowledgement.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum AckError {
    #[error("no acknowledgement within {0:?}")]
    Timeout(Duration),
    #[error("socket disconnected before acknowledging")]
    Disconnected,
    #[error(transparent)]
    Emit(#[from] EmitError),
}

/// Why a join failed.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum RoomError {
    #[error("socket disconnected")]
    Disconnected,
    #[error(transparent)]
    Hub(#[from] HubError),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_error_json_keeps_node_key_order() {
        let e = ConnectError::new("Not authorized").with_data(serde_json::json!({"code": 7}));
        assert_eq!(
            e.to_json().to_string(),
            r#"{"message":"Not authorized","data":{"code":7}}"#
        );
        assert_eq!(
            ConnectError::new("x").to_json().to_string(),
            r#"{"message":"x"}"#
        );
    }
}
