//! The app's side of the gateway's authorization callbacks, answered the way a Laravel app
//! answers them, for the tests and the demo:
//!
//! * `POST /realtime/auth` (the connect callback): who the client is, from `Authorization:
//!   Bearer <name>`, else the JSON body's `token` (a Socket.IO CONNECT's `auth: {token}`), else
//!   the cookie `user=<name>`. 200 `{"user_id", "user_info": {"name"}, "rooms":
//!   ["private-user.<name>"]}`; 401 `{"message": "not logged in"}` without a user; 403
//!   `{"message": "user <name> is banned"}` for names starting with `banned`.
//! * `POST /broadcasting/auth` (Laravel's channel authorization, form `channel_name`,
//!   `socket_id`): the user from the `Authorization` header or the cookie only (as Laravel's
//!   session guard; Laravel Echo's `auth.headers` reach it as these headers); 401
//!   `{"message": "Unauthenticated."}` without one; `private-user.<name>` is its owner's only
//!   (200 `true`, else 403 `{"message": "This action is unauthorized."}`); `private-chat.*`
//!   (a conversation, where whispers go) admits any user; every `presence-*` channel admits any
//!   user but guests (names starting with `guest`, refused) with `{"channel_data": {"user_id",
//!   "user_info": {"name"}}}`; any other `private-*` channel is refused.
//!
//! The user `slow` gets its answer only after [`SLOW`], for the tests of an app that does not
//! answer in time.

use std::time::Duration;

use axum::http::{header, HeaderMap, StatusCode};
use percent_encoding::percent_decode_str;
use serde_json::{json, Value};

/// How long the user `slow` waits for an answer: longer than any callback timeout a test
/// sets, shorter than a test.
pub const SLOW: Duration = Duration::from_secs(20);

/// Longest user name taken from a request.
const MAX_NAME: usize = 32;

#[derive(Debug, PartialEq)]
pub struct Answer {
    pub status: StatusCode,
    pub body: String,
    /// Wait this long before answering.
    pub delay: Option<Duration>,
}

fn answer(status: StatusCode, body: Value, user: Option<&str>) -> Answer {
    Answer {
        status,
        body: body.to_string(),
        delay: (user == Some("slow")).then_some(SLOW),
    }
}

/// A user name as the stub accepts it: letters, digits, `-`, `_`.
fn name(raw: &str) -> Option<String> {
    let raw = raw.trim();
    let ok = !raw.is_empty()
        && raw.len() <= MAX_NAME
        && raw
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    ok.then(|| raw.to_string())
}

/// The user a request carries in its headers: `Authorization: Bearer <name>`, else the
/// cookie `user=<name>`.
pub fn header_user(headers: &HeaderMap) -> Option<String> {
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .and_then(name);
    bearer.or_else(|| {
        headers
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .filter_map(|pair| pair.trim().split_once('='))
            .find(|(k, _)| *k == "user")
            .and_then(|(_, v)| name(v))
    })
}

/// `POST /realtime/auth`.
pub fn connect(headers: &HeaderMap, body: &[u8]) -> Answer {
    let payload: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let user = header_user(headers).or_else(|| payload["token"].as_str().and_then(name));
    let Some(user) = user else {
        return answer(
            StatusCode::UNAUTHORIZED,
            json!({"message": "not logged in"}),
            None,
        );
    };
    if user.starts_with("banned") {
        return answer(
            StatusCode::FORBIDDEN,
            json!({"message": format!("user {user} is banned")}),
            Some(&user),
        );
    }
    answer(
        StatusCode::OK,
        json!({
            "user_id": user,
            "user_info": {"name": user},
            "rooms": [format!("private-user.{user}")],
        }),
        Some(&user),
    )
}

/// The fields of an `application/x-www-form-urlencoded` body, or of a JSON object (Laravel
/// reads both).
pub fn fields(body: &[u8]) -> Vec<(String, String)> {
    if let Ok(Value::Object(map)) = serde_json::from_slice::<Value>(body) {
        return map
            .into_iter()
            .map(|(k, v)| (k, v.as_str().map_or_else(|| v.to_string(), str::to_string)))
            .collect();
    }
    let decode = |s: &str| {
        percent_decode_str(&s.replace('+', " "))
            .decode_utf8_lossy()
            .into_owned()
    };
    String::from_utf8_lossy(body)
        .split('&')
        .filter(|kv| !kv.is_empty())
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (decode(k), decode(v))
        })
        .collect()
}

/// `POST /broadcasting/auth`: the answer, and the channel and socket id it was about.
pub fn channel(headers: &HeaderMap, body: &[u8]) -> (Answer, String, String) {
    let fields = fields(body);
    let field = |k: &str| {
        fields
            .iter()
            .find(|(name, _)| name == k)
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    };
    let (channel, socket_id) = (field("channel_name"), field("socket_id"));
    let user = header_user(headers);
    let refused = || json!({"message": "This action is unauthorized."});
    let answer = match &user {
        None => answer(
            StatusCode::UNAUTHORIZED,
            json!({"message": "Unauthenticated."}),
            None,
        ),
        Some(user) if channel.starts_with("presence-") && user.starts_with("guest") => {
            answer(StatusCode::FORBIDDEN, refused(), Some(user))
        }
        Some(user) if channel.starts_with("presence-") => answer(
            StatusCode::OK,
            json!({"channel_data": {"user_id": user, "user_info": {"name": user}}}),
            Some(user),
        ),
        Some(user) if channel == format!("private-user.{user}") => {
            answer(StatusCode::OK, json!(true), Some(user))
        }
        Some(user) if channel.starts_with("private-chat.") => {
            answer(StatusCode::OK, json!(true), Some(user))
        }
        Some(user) => answer(StatusCode::FORBIDDEN, refused(), Some(user)),
    };
    (answer, channel, socket_id)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                axum::http::HeaderName::from_bytes(k.as_bytes()).expect("name"),
                v.parse().expect("value"),
            );
        }
        h
    }

    #[test]
    fn users_come_from_the_bearer_token_the_payload_or_the_cookie() {
        assert_eq!(
            header_user(&headers(&[("authorization", "Bearer ann")])),
            Some("ann".into())
        );
        assert_eq!(
            header_user(&headers(&[("cookie", "a=1; user=bob; b=2")])),
            Some("bob".into())
        );
        assert_eq!(header_user(&headers(&[("cookie", "user=<script>")])), None);
        let a = connect(&HeaderMap::new(), br#"{"token": "cy"}"#);
        assert_eq!(a.status, StatusCode::OK);
        let v: Value = serde_json::from_str(&a.body).expect("json");
        assert_eq!(
            v,
            json!({"user_id": "cy", "user_info": {"name": "cy"}, "rooms": ["private-user.cy"]})
        );
        let a = connect(&HeaderMap::new(), b"{}");
        assert_eq!(
            (a.status, a.body.as_str()),
            (StatusCode::UNAUTHORIZED, r#"{"message":"not logged in"}"#)
        );
        let a = connect(&headers(&[("cookie", "user=banned-eve")]), b"");
        assert_eq!(
            (a.status, a.body.as_str()),
            (
                StatusCode::FORBIDDEN,
                r#"{"message":"user banned-eve is banned"}"#
            )
        );
        assert_eq!(
            connect(&HeaderMap::new(), br#"{"token":"slow"}"#).delay,
            Some(SLOW)
        );
    }

    #[test]
    fn channels_are_authorized_as_laravel_would() {
        let ann = headers(&[("cookie", "user=ann")]);
        let (a, name, socket) = channel(&ann, b"channel_name=private-user.ann&socket_id=s1");
        assert_eq!((a.status, a.body.as_str()), (StatusCode::OK, "true"));
        assert_eq!((name.as_str(), socket.as_str()), ("private-user.ann", "s1"));
        let (a, ..) = channel(&ann, b"channel_name=private-user.bob&socket_id=s1");
        assert_eq!(
            (a.status, a.body.as_str()),
            (
                StatusCode::FORBIDDEN,
                r#"{"message":"This action is unauthorized."}"#
            )
        );
        let (a, name, _) = channel(&ann, b"channel_name=presence-room%201&socket_id=s1");
        assert_eq!(name, "presence-room 1");
        assert_eq!(
            serde_json::from_str::<Value>(&a.body).expect("json"),
            json!({"channel_data": {"user_id": "ann", "user_info": {"name": "ann"}}})
        );
        let (a, ..) = channel(&HeaderMap::new(), b"channel_name=presence-x");
        assert_eq!(a.status, StatusCode::UNAUTHORIZED);
        // Echo's `auth.headers` arrive as the request's own headers.
        let bob = headers(&[("authorization", "Bearer bob")]);
        let (a, ..) = channel(&bob, b"channel_name=private-chat.7&socket_id=s2");
        assert_eq!((a.status, a.body.as_str()), (StatusCode::OK, "true"));
        let (a, ..) = channel(&bob, b"channel_name=private-team.7&socket_id=s2");
        assert_eq!(a.status, StatusCode::FORBIDDEN);
        let guest = headers(&[("cookie", "user=guest-gil")]);
        let (a, ..) = channel(&guest, b"channel_name=presence-room.1&socket_id=s3");
        assert_eq!(a.status, StatusCode::FORBIDDEN);
        let (a, ..) = channel(
            &ann,
            br#"{"channel_name": "private-user.ann", "socket_id": "s"}"#,
        );
        assert_eq!(a.status, StatusCode::OK);
    }
}
