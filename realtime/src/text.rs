//! How a hub message reads on the text-only transports (long-poll, SSE, raw WebSocket): a
//! string payload is sent as it is (what `POST /p` and most app publishes carry); any other
//! JSON value is sent as its JSON text.

use crate::hub::Message;

pub fn body(msg: &Message) -> String {
    match msg.data() {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}
