//! The app's side of the two callbacks, as pure functions: what is sent, and what its answers
//! mean.
//!
//! * Connect: `POST <auth.connect>` with the client's credentials and, for a Socket.IO
//!   CONNECT, its `auth` payload as the JSON body. 2xx admits the client and may say who it
//!   is and which rooms it joins at once: `{"user_id": 42, "user_info": {...}, "rooms":
//!   ["private-user.42"]}` (each field optional; an empty body is an anonymous client). 401 and
//!   403 refuse it, with the app's reason.
//! * Subscribe: Laravel's own contract, so an unchanged Laravel app answers it: `POST
//!   /broadcasting/auth` with the form `channel_name=...&socket_id=...` (what Laravel Echo
//!   sends). 2xx allows; Laravel answers `true` for a private channel and `{"channel_data":
//!   {"user_id": 1, "user_info": {...}}}` for a presence channel (Pusher-style apps send
//!   `channel_data` as a JSON string, also understood). 401 and 403 refuse (Laravel's
//!   `AccessDeniedHttpException`), with the app's reason.
//!
//! Any other status (a redirect to a login page, a 404 for a missing route, a 500) is the app
//! failing to answer, not an answer: the client is refused all the same, and the log says why.

use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use serde_json::Value;

use super::{Grant, Identity, Member, Refusal};

/// Rooms one connect answer may name. The app is trusted, but a bug that returns a user's
/// whole history of rooms should be a clear error, not thousands of hub topics.
pub const MAX_GRANTED_ROOMS: usize = 256;

/// Longest reason taken from an app's refusal (it is shown to the client and logged).
pub const MAX_REASON_CHARS: usize = 200;

/// `application/x-www-form-urlencoded` keeps these as they are (the WHATWG URL standard's
/// form set: alphanumerics and `*-._`); everything else is percent-encoded, a space included.
const FORM: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'*')
    .remove(b'-')
    .remove(b'.')
    .remove(b'_');

/// The subscribe callback's body, as Laravel Echo's `auth` request sends it.
pub fn subscribe_form(channel: &str, socket_id: &str) -> String {
    format!(
        "channel_name={}&socket_id={}",
        utf8_percent_encode(channel, FORM),
        utf8_percent_encode(socket_id, FORM)
    )
}

/// What the connect callback's answer means.
pub fn connect_answer(status: u16, body: &[u8]) -> Result<Identity, Refusal> {
    let value = match judge(status, body)? {
        None => return Ok(Identity::default()),
        Some(v) => v,
    };
    match value {
        Value::Bool(true) | Value::Null => Ok(Identity::default()),
        Value::Bool(false) => Err(Refusal::denied(403, "refused by the app")),
        Value::Object(map) => {
            let user_id = match map.get("user_id") {
                None | Some(Value::Null) => None,
                Some(id @ (Value::String(_) | Value::Number(_))) => Some(id.clone()),
                Some(_) => return Err(bad("`user_id` must be a string or a number")),
            };
            let user_info = map.get("user_info").cloned().unwrap_or(Value::Null);
            let rooms = match map.get("rooms") {
                None | Some(Value::Null) => Vec::new(),
                Some(Value::Array(rooms)) => {
                    if rooms.len() > MAX_GRANTED_ROOMS {
                        return Err(bad(&format!(
                            "`rooms` names {} rooms; at most {MAX_GRANTED_ROOMS}",
                            rooms.len()
                        )));
                    }
                    let mut names = Vec::with_capacity(rooms.len());
                    for room in rooms {
                        match room {
                            Value::String(s) if !s.is_empty() => names.push(s.clone()),
                            _ => return Err(bad("`rooms` must be a list of non-empty strings")),
                        }
                    }
                    names
                }
                Some(_) => return Err(bad("`rooms` must be a list of non-empty strings")),
            };
            Ok(Identity {
                user_id,
                user_info,
                rooms,
            })
        }
        _ => Err(bad("expected a JSON object with user_id, user_info, rooms")),
    }
}

/// What the subscribe callback's answer means.
pub fn subscribe_answer(status: u16, body: &[u8]) -> Result<Grant, Refusal> {
    let value = match judge(status, body)? {
        None => return Ok(Grant::default()),
        Some(v) => v,
    };
    match value {
        Value::Bool(true) | Value::Null => Ok(Grant::default()),
        Value::Bool(false) => Err(Refusal::denied(403, "refused by the app")),
        Value::Object(map) => {
            let data = match map.get("channel_data") {
                None | Some(Value::Null) => return Ok(Grant::default()),
                // Pusher's format: the channel data JSON-encoded once more.
                Some(Value::String(s)) => serde_json::from_str::<Value>(s)
                    .map_err(|_| bad("`channel_data` is a string but not JSON"))?,
                Some(v) => v.clone(),
            };
            let Value::Object(data) = data else {
                return Err(bad("`channel_data` must be an object"));
            };
            let user_id = match data.get("user_id") {
                Some(id @ (Value::String(_) | Value::Number(_))) => id.clone(),
                _ => return Err(bad("`channel_data.user_id` must be a string or a number")),
            };
            let user_info = data.get("user_info").cloned().unwrap_or(Value::Null);
            Ok(Grant {
                member: Some(Member { user_id, user_info }),
            })
        }
        _ => Err(bad("expected `true` or an object with channel_data")),
    }
}

/// The status decides first: `Ok(None)` for a 2xx without a body, `Ok(Some(json))` for one
/// with a body, the app's refusal for 401/403, a failure for anything else.
fn judge(status: u16, body: &[u8]) -> Result<Option<Value>, Refusal> {
    match status {
        200..=299 => {}
        401 | 403 => return Err(Refusal::denied(status, &reason(status, body))),
        _ => {
            return Err(Refusal::failed(
                502,
                format!("the app answered {status} to the authorization request"),
            ))
        }
    }
    if body.trim_ascii().is_empty() {
        return Ok(None);
    }
    serde_json::from_slice(body)
        .map(Some)
        .map_err(|_| bad("not JSON"))
}

fn bad(why: &str) -> Refusal {
    Refusal::failed(
        502,
        format!("the app's authorization answer is unusable: {why}"),
    )
}

/// The reason in a refusal: its JSON `message` (Laravel's, and most frameworks') or `error`,
/// else its text when it is short plain text, else a plain statement of the status. Cut to
/// [`MAX_REASON_CHARS`] and to one line.
pub fn reason(status: u16, body: &[u8]) -> String {
    let from_json = serde_json::from_slice::<Value>(body).ok().and_then(|v| {
        ["message", "error"]
            .iter()
            .find_map(|k| v.get(k).and_then(Value::as_str).map(str::to_string))
    });
    let text = from_json.or_else(|| {
        std::str::from_utf8(body)
            .ok()
            .map(str::trim)
            .filter(|t| !t.is_empty() && !t.starts_with('<') && !t.starts_with('{'))
            .map(str::to_string)
    });
    let shown: String = text
        .as_deref()
        .map(|t| t.trim())
        .filter(|t| !t.is_empty())
        .unwrap_or(if status == 401 {
            "not authenticated"
        } else {
            "not allowed"
        })
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(MAX_REASON_CHARS)
        .collect();
    shown
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_subscribe_form_is_what_laravel_echo_sends() {
        assert_eq!(
            subscribe_form("private-user.42", "abc_DEF-1"),
            "channel_name=private-user.42&socket_id=abc_DEF-1"
        );
        assert_eq!(
            subscribe_form("presence-room 1&x=y", "s"),
            "channel_name=presence-room%201%26x%3Dy&socket_id=s"
        );
        assert_eq!(subscribe_form("é", ""), "channel_name=%C3%A9&socket_id=");
    }

    #[test]
    fn connect_answers() {
        assert_eq!(connect_answer(200, b""), Ok(Identity::default()));
        assert_eq!(connect_answer(204, b"  \n"), Ok(Identity::default()));
        assert_eq!(connect_answer(200, b"true"), Ok(Identity::default()));
        assert_eq!(
            connect_answer(
                200,
                br#"{"user_id": 42, "user_info": {"name": "Ann"}, "rooms": ["private-user.42", "team"]}"#
            ),
            Ok(Identity {
                user_id: Some(json!(42)),
                user_info: json!({"name": "Ann"}),
                rooms: vec!["private-user.42".into(), "team".into()],
            })
        );
        assert_eq!(
            connect_answer(200, br#"{"user_id": "u-1", "extra": 1}"#),
            Ok(Identity {
                user_id: Some(json!("u-1")),
                user_info: Value::Null,
                rooms: vec![],
            })
        );
        let refused = connect_answer(403, br#"{"message": "user banned"}"#).unwrap_err();
        assert_eq!(refused, Refusal::denied(403, "user banned"));
        assert_eq!(refused.status(), 403);
        assert_eq!(
            connect_answer(401, b"").unwrap_err(),
            Refusal::denied(401, "not authenticated")
        );
        assert_eq!(
            connect_answer(200, b"false").unwrap_err(),
            Refusal::denied(403, "refused by the app")
        );
    }

    #[test]
    fn unusable_connect_answers_are_failures_not_admissions() {
        for (status, body) in [
            (200, &b"<html>login</html>"[..]),
            (200, br#"{"user_id": {"a": 1}}"#),
            (200, br#"{"user_id": [1]}"#),
            (200, br#"{"rooms": "team"}"#),
            (200, br#"{"rooms": [1]}"#),
            (200, br#"{"rooms": [""]}"#),
            (200, b"42"),
            (200, b"[1,2]"),
            (302, b""),
            (404, b"not found"),
            (500, b"boom"),
        ] {
            let e = connect_answer(status, body).unwrap_err();
            assert!(
                matches!(e, Refusal::Failed { status: 502, .. }),
                "{status} {body:?}: {e:?}"
            );
        }
        let many: Vec<String> = (0..=MAX_GRANTED_ROOMS).map(|i| format!("r{i}")).collect();
        let body = json!({"rooms": many}).to_string();
        assert!(connect_answer(200, body.as_bytes()).is_err());
        let e = connect_answer(302, b"").unwrap_err();
        assert_eq!(
            e.to_string(),
            "the app answered 302 to the authorization request"
        );
    }

    #[test]
    fn laravel_subscribe_answers() {
        // A private channel: `true`.
        assert_eq!(subscribe_answer(200, b"true"), Ok(Grant::default()));
        assert_eq!(subscribe_answer(200, b""), Ok(Grant::default()));
        // A Pusher-style private answer: a signature, no member.
        assert_eq!(
            subscribe_answer(200, br#"{"auth": "key:sig"}"#),
            Ok(Grant::default())
        );
        // A presence channel: who the member is.
        let member = Some(Member {
            user_id: json!(1),
            user_info: json!({"name": "Ann"}),
        });
        assert_eq!(
            subscribe_answer(
                200,
                br#"{"channel_data": {"user_id": 1, "user_info": {"name": "Ann"}}}"#
            ),
            Ok(Grant {
                member: member.clone()
            })
        );
        // Pusher-style: channel_data JSON-encoded once more.
        assert_eq!(
            subscribe_answer(
                200,
                br#"{"auth": "k:s", "channel_data": "{\"user_id\":1,\"user_info\":{\"name\":\"Ann\"}}"}"#
            ),
            Ok(Grant { member })
        );
        assert_eq!(
            subscribe_answer(200, br#"{"channel_data": {"user_id": "a"}}"#),
            Ok(Grant {
                member: Some(Member {
                    user_id: json!("a"),
                    user_info: Value::Null
                })
            })
        );
        // Laravel's AccessDeniedHttpException, as JSON.
        assert_eq!(
            subscribe_answer(403, br#"{"message": "This action is unauthorized."}"#),
            Err(Refusal::denied(403, "This action is unauthorized."))
        );
        assert_eq!(
            subscribe_answer(200, b"false"),
            Err(Refusal::denied(403, "refused by the app"))
        );
    }

    #[test]
    fn unusable_subscribe_answers_are_failures() {
        for body in [
            &br#"{"channel_data": {"user_info": {}}}"#[..],
            br#"{"channel_data": {"user_id": null}}"#,
            br#"{"channel_data": "not json"}"#,
            br#"{"channel_data": [1]}"#,
            b"OK",
            b"\"yes\"",
        ] {
            let e = subscribe_answer(200, body).unwrap_err();
            assert!(
                matches!(e, Refusal::Failed { status: 502, .. }),
                "{body:?}: {e:?}"
            );
        }
        assert!(matches!(
            subscribe_answer(419, b"CSRF token mismatch."),
            Err(Refusal::Failed { status: 502, .. })
        ));
    }

    #[test]
    fn reasons_are_short_single_lines_from_json_or_text() {
        assert_eq!(reason(403, br#"{"error": "no"}"#), "no");
        assert_eq!(reason(403, b"Go away\r\nnow"), "Go away  now");
        assert_eq!(
            reason(403, b"<html><body>Forbidden</body></html>"),
            "not allowed"
        );
        assert_eq!(reason(401, br#"{"other": 1}"#), "not authenticated");
        assert_eq!(reason(403, &[0xff, 0xfe]), "not allowed");
        let long = "x".repeat(1000);
        assert_eq!(
            reason(403, long.as_bytes()).chars().count(),
            MAX_REASON_CHARS
        );
    }
}
