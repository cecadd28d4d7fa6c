//! How a namespace that speaks Laravel Echo's protocol ([`crate::socketio::NamespaceBehaviour::echo`])
//! delivers what is published to a room: as laravel-echo-server did, `io.to(channel).emit(event,
//! channel, data)`, so Echo's socket.io connector, which hands an event to a channel's listeners
//! only when its first argument is the channel's name, gets it.
//!
//! A room's messages come from two kinds of publisher:
//!
//! * those that send the app's data as it is (`POST /publish` with `{"topic": "orders", "event":
//!   "App\\Events\\OrderShipped", "data": {...}}`, a whisper, the presence news, an SSE-side
//!   app): delivered as `(event, channel, data)`, the data whole;
//! * those that send Echo's arguments already, `[channel, data]` (Laravel's `redis` broadcaster
//!   as laravel-echo-server relayed it, a socket.io emitter's `io.to(channel).emit(event,
//!   channel, data)`): delivered as they are, not wrapped twice.
//!
//! Pure: the arguments from the channel and the published data.

use std::borrow::Cow;

use serde_json::Value;

/// The event's arguments for `channel`: `data` when it is already `[channel, x]`, else
/// `[channel, data]`.
pub(super) fn args<'a>(channel: &str, data: &'a Value) -> Cow<'a, [Value]> {
    match data {
        Value::Array(items)
            if items.len() == 2 && items[0].as_str().is_some_and(|c| c == channel) =>
        {
            Cow::Borrowed(items.as_slice())
        }
        other => Cow::Owned(vec![Value::from(channel), other.clone()]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_apps_data_gets_the_channel_in_front() {
        let data = json!({"order": 1});
        assert_eq!(
            args("orders", &data).into_owned(),
            [json!("orders"), json!({"order": 1})]
        );
        // Whole, whatever it is: Echo hands its listener one value.
        for data in [
            json!([1, 2]),
            json!("text"),
            Value::Null,
            json!(["other", 1]),
        ] {
            assert_eq!(
                args("orders", &data).into_owned(),
                [json!("orders"), data.clone()]
            );
        }
    }

    #[test]
    fn echo_arguments_are_delivered_as_they_are() {
        let data = json!(["private-user.1", {"n": 1}]);
        assert!(matches!(args("private-user.1", &data), Cow::Borrowed(_)));
        assert_eq!(
            args("private-user.1", &data).into_owned(),
            [json!("private-user.1"), json!({"n": 1})]
        );
        // Three arguments are not Echo's shape: wrapped.
        let three = json!(["c", 1, 2]);
        assert_eq!(args("c", &three).into_owned(), [json!("c"), three.clone()]);
    }
}
