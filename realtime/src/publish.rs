//! The app's publish API: one HTTP call from PHP or Ruby puts a message into the hub, and every
//! transport delivers it (Socket.IO rooms of that name as event `event`, `/ws` pub/sub
//! subscribers, SSE streams, long-polls).
//!
//! `POST /publish` with `{"topic": "...", "event": "...", "data": ...}` (or an array of them)
//! answers `{"topic", "seq", "epoch", "position"}` once the message is in the hub. An
//! `Idempotency-Key` header makes a retried publish count once. `GET /topics/<topic>` tells
//! subscribers and position.

use http::StatusCode;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::hub::{Hub, Payload};
use crate::seam::{BodyError, Request, Response, Service};

/// A publish request larger than this is refused with 413 (nginx's `client_max_body_size`
/// default); a message that big belongs in the app's storage, with a link in the message.
pub const DEFAULT_MAX_BODY: usize = 1024 * 1024;
/// Messages one batch may carry.
pub const MAX_BATCH: usize = 1000;
/// The event name when a publish does not give one.
pub const DEFAULT_EVENT: &str = "message";

pub struct PublishApi {
    hub: Hub,
    /// Required as `Authorization: Bearer <token>` when set.
    token: Option<String>,
    max_body: usize,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Publish {
    topic: String,
    #[serde(default)]
    event: Option<String>,
    #[serde(default)]
    data: Value,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Body {
    One(Publish),
    Many(Vec<Publish>),
}

fn json_response(status: StatusCode, value: Value) -> Response {
    Response::full(status, "application/json", value.to_string())
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    json_response(status, json!({ "error": message.into() }))
}

/// Constant-time comparison, so the token cannot be guessed byte by byte from timings.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl PublishApi {
    pub fn new(hub: Hub, token: Option<String>) -> PublishApi {
        PublishApi {
            hub,
            token,
            max_body: DEFAULT_MAX_BODY,
        }
    }

    fn authorized(&self, req: &Request) -> bool {
        let Some(token) = &self.token else {
            return true;
        };
        req.header("authorization")
            .and_then(|v| v.strip_prefix("Bearer "))
            .is_some_and(|given| same(given.trim().as_bytes(), token.as_bytes()))
    }

    async fn publish(&self, req: Request) -> Response {
        let key = req.header("idempotency-key").map(str::to_string);
        let body = match req.body.collect(self.max_body).await {
            Ok(b) => b,
            Err(BodyError::TooLarge { limit }) => {
                return error(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    format!("request body larger than {limit} bytes"),
                )
            }
            Err(e) => return error(StatusCode::BAD_REQUEST, e.to_string()),
        };
        let parsed: Body = match serde_json::from_slice(&body) {
            Ok(b) => b,
            Err(e) => {
                return error(
                    StatusCode::BAD_REQUEST,
                    format!(
                        "invalid JSON: {e} (expected {{\"topic\": \"...\", \"event\": \"...\", \"data\": ...}} or an array of them)"
                    ),
                )
            }
        };
        let (items, batch) = match parsed {
            Body::One(p) => (vec![p], false),
            Body::Many(v) => (v, true),
        };
        if items.len() > MAX_BATCH {
            return error(
                StatusCode::BAD_REQUEST,
                format!("at most {MAX_BATCH} messages per batch"),
            );
        }
        // Validate everything before publishing anything: a batch is all or nothing.
        for (i, p) in items.iter().enumerate() {
            if p.topic.is_empty() {
                let at = if batch {
                    format!("[{i}].")
                } else {
                    String::new()
                };
                return error(
                    StatusCode::BAD_REQUEST,
                    format!("{at}topic: must not be empty"),
                );
            }
        }
        let mut results = Vec::with_capacity(items.len());
        for (i, p) in items.into_iter().enumerate() {
            let event = p.event.unwrap_or_else(|| DEFAULT_EVENT.to_string());
            let payload = Payload::new(event, p.data);
            let outcome = match &key {
                Some(k) => {
                    let k = if batch { format!("{k}#{i}") } else { k.clone() };
                    self.hub
                        .publish_idempotent(&k, &p.topic, payload, None)
                        .map(|r| (r.position, r.duplicate))
                }
                None => self
                    .hub
                    .publish_payload(&p.topic, payload, None)
                    .map(|pos| (pos, false)),
            };
            match outcome {
                Ok((pos, duplicate)) => {
                    let mut r = json!({
                        "topic": p.topic,
                        "seq": pos.seq,
                        "epoch": pos.epoch.to_string(),
                        "position": pos.to_string(),
                    });
                    if duplicate {
                        r["duplicate"] = Value::Bool(true);
                    }
                    results.push(r);
                }
                Err(e) => {
                    let status = match e {
                        crate::hub::HubError::KeyTooLong { .. }
                        | crate::hub::HubError::KeyConflict { .. } => StatusCode::BAD_REQUEST,
                        _ => StatusCode::SERVICE_UNAVAILABLE,
                    };
                    return error(status, e.to_string());
                }
            }
        }
        if batch {
            json_response(StatusCode::OK, Value::Array(results))
        } else {
            json_response(StatusCode::OK, results.remove(0))
        }
    }

    fn topic(&self, name: &str) -> Response {
        match self.hub.topic_info(name) {
            Some(info) => json_response(
                StatusCode::OK,
                json!({
                    "topic": name,
                    "subscribers": info.subscribers,
                    "seq": info.position.seq,
                    "epoch": info.position.epoch.to_string(),
                    "position": info.position.to_string(),
                    "retained": info.retained,
                }),
            ),
            None => error(StatusCode::NOT_FOUND, format!("no such topic: {name}")),
        }
    }
}

#[async_trait::async_trait]
impl Service for PublishApi {
    async fn call(&self, req: Request) -> Response {
        if !self.authorized(&req) {
            if let Response::Full(mut r) =
                error(StatusCode::UNAUTHORIZED, "a valid bearer token is required")
            {
                r.headers_mut().insert(
                    http::header::WWW_AUTHENTICATE,
                    http::HeaderValue::from_static("Bearer"),
                );
                return Response::Full(r);
            }
        }
        let path = req.head.uri.path().to_string();
        if path == "/publish" {
            return match req.head.method {
                http::Method::POST => self.publish(req).await,
                _ => error(StatusCode::METHOD_NOT_ALLOWED, "use POST /publish"),
            };
        }
        if let Some(name) = path.strip_prefix("/topics/") {
            let name = percent_encoding::percent_decode_str(name)
                .decode_utf8_lossy()
                .into_owned();
            return match req.head.method {
                http::Method::GET => self.topic(&name),
                _ => error(StatusCode::METHOD_NOT_ALLOWED, "use GET /topics/<topic>"),
            };
        }
        error(StatusCode::NOT_FOUND, format!("no such endpoint: {path}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::seam::Body as SeamBody;
    use bytes::Bytes;

    fn request(method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> Request {
        let mut b = http::Request::builder().method(method).uri(path);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        let (head, ()) = b.body(()).expect("request").into_parts();
        let mut r = Request::new(head);
        r.body = SeamBody::from_bytes(Bytes::from(body.to_string()));
        r
    }

    async fn call(api: &PublishApi, r: Request) -> (StatusCode, Value) {
        match api.call(r).await {
            Response::Full(resp) => (
                resp.status(),
                serde_json::from_slice(resp.body()).expect("json body"),
            ),
            _ => panic!("a full response"),
        }
    }

    #[tokio::test]
    async fn publish_reports_the_position_and_retries_count_once() {
        let hub = Hub::default();
        let api = PublishApi::new(hub.clone(), None);
        let body = r#"{"topic":"news","event":"headline","data":{"t":"hi"}}"#;
        let (s, v) = call(&api, request("POST", "/publish", &[], body)).await;
        assert_eq!(s, 200, "{v}");
        assert_eq!(v["seq"], 1);
        let key = [("idempotency-key", "abc")];
        let (_, first) = call(&api, request("POST", "/publish", &key, body)).await;
        let (_, again) = call(&api, request("POST", "/publish", &key, body)).await;
        assert_eq!(first["seq"], 2);
        assert_eq!(again["seq"], 2);
        assert_eq!(again["duplicate"], true);
        let (s, info) = call(&api, request("GET", "/topics/news", &[], "")).await;
        assert_eq!(s, 200);
        assert_eq!(info["seq"], 2);
    }

    #[tokio::test]
    async fn batches_are_validated_before_anything_is_published() {
        let hub = Hub::default();
        let api = PublishApi::new(hub.clone(), None);
        let (s, v) = call(
            &api,
            request(
                "POST",
                "/publish",
                &[],
                r#"[{"topic":"a","data":1},{"topic":"","data":2}]"#,
            ),
        )
        .await;
        assert_eq!(s, 400);
        assert_eq!(v["error"], "[1].topic: must not be empty");
        assert!(hub.topic_info("a").is_none(), "half a batch was published");
        let (s, v) = call(
            &api,
            request(
                "POST",
                "/publish",
                &[],
                r#"[{"topic":"a","data":1},{"topic":"b"}]"#,
            ),
        )
        .await;
        assert_eq!(s, 200);
        assert_eq!(v.as_array().map(|a| a.len()), Some(2));
    }

    #[tokio::test]
    async fn bad_input_gets_clear_errors() {
        let api = PublishApi::new(Hub::default(), Some("s3cret".into()));
        let auth = [("authorization", "Bearer s3cret")];
        let (s, v) = call(&api, request("POST", "/publish", &[], "{}")).await;
        assert_eq!(s, 401, "{v}");
        let (s, _) = call(
            &api,
            request(
                "POST",
                "/publish",
                &[("authorization", "Bearer nope")],
                "{}",
            ),
        )
        .await;
        assert_eq!(s, 401);
        let (s, v) = call(&api, request("POST", "/publish", &auth, "{nope")).await;
        assert_eq!(s, 400);
        assert!(
            v["error"]
                .as_str()
                .unwrap_or("")
                .starts_with("invalid JSON"),
            "{v}"
        );
        let (s, _) = call(
            &api,
            request("POST", "/publish", &auth, r#"{"topic":"a","x":1}"#),
        )
        .await;
        assert_eq!(s, 400, "unknown fields are refused");
        let big = format!(
            r#"{{"topic":"a","data":"{}"}}"#,
            "x".repeat(DEFAULT_MAX_BODY)
        );
        let (s, _) = call(&api, request("POST", "/publish", &auth, &big)).await;
        assert_eq!(s, 413);
        let (s, _) = call(&api, request("GET", "/publish", &auth, "")).await;
        assert_eq!(s, 405);
        let (s, _) = call(&api, request("GET", "/topics/none", &auth, "")).await;
        assert_eq!(s, 404);
    }
}
