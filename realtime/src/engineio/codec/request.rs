//! Validation of an incoming Engine.IO HTTP request (polling or WebSocket
//! upgrade) and the error responses the reference server sends.

use http::{Method, StatusCode};
use thiserror::Error;

/// The reference server's request errors; codes and messages are part of the
/// protocol (clients and test suites read them).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum EngineError {
    #[error("Transport unknown")]
    UnknownTransport,
    #[error("Session ID unknown")]
    UnknownSid,
    #[error("Bad handshake method")]
    BadHandshakeMethod,
    #[error("Bad request")]
    BadRequest,
    /// Refused by the handshake hook; the message replaces `Forbidden` in the
    /// body, as `allowRequest`'s callback message does.
    #[error("{}", .0.as_deref().unwrap_or("Forbidden"))]
    Forbidden(Option<String>),
    #[error("Unsupported protocol version")]
    UnsupportedProtocolVersion,
    /// Over [`EngineConfig::max_sessions_per_client`](crate::engineio::EngineConfig::max_sessions_per_client)
    /// (`per_client`) or [`EngineConfig::max_sessions`](crate::engineio::EngineConfig::max_sessions). Not a
    /// reference-server error (node has no cap): answered `429` / `503` with `Retry-After`, so
    /// clients and operators see overload rather than a malformed request, with the JSON body
    /// of every Engine.IO error (code 4, "the server refuses this handshake", as `allowRequest`).
    #[error("{message}")]
    TooManySessions { per_client: bool, message: String },
}

impl EngineError {
    pub fn code(&self) -> u8 {
        match self {
            EngineError::UnknownTransport => 0,
            EngineError::UnknownSid => 1,
            EngineError::BadHandshakeMethod => 2,
            EngineError::BadRequest => 3,
            EngineError::Forbidden(_) => 4,
            EngineError::UnsupportedProtocolVersion => 5,
            EngineError::TooManySessions { .. } => 4,
        }
    }

    pub fn message(&self) -> &str {
        match self {
            EngineError::UnknownTransport => "Transport unknown",
            EngineError::UnknownSid => "Session ID unknown",
            EngineError::BadHandshakeMethod => "Bad handshake method",
            EngineError::BadRequest => "Bad request",
            EngineError::Forbidden(message) => message.as_deref().unwrap_or("Forbidden"),
            EngineError::UnsupportedProtocolVersion => "Unsupported protocol version",
            EngineError::TooManySessions { message, .. } => message,
        }
    }

    /// Status of the JSON error response on plain HTTP. A refused WebSocket
    /// upgrade is always a bare `400 Bad Request` with [`Self::message`] as a
    /// `text/html` body, whatever the code: that is what node writes on the
    /// raw socket.
    pub fn http_status(&self) -> StatusCode {
        match self {
            EngineError::Forbidden(_) => StatusCode::FORBIDDEN,
            EngineError::TooManySessions {
                per_client: true, ..
            } => StatusCode::TOO_MANY_REQUESTS,
            EngineError::TooManySessions {
                per_client: false, ..
            } => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::BAD_REQUEST,
        }
    }

    /// `{"code":N,"message":"…"}` with N a JSON number, served as
    /// `application/json`. (socketioxide sends N as a string; node does not.)
    pub fn json_body(&self) -> String {
        format!(
            "{{\"code\":{},\"message\":{}}}",
            self.code(),
            serde_json::Value::from(self.message())
        )
    }
}

/// The transports this server speaks. WebTransport is left out, as it is off
/// by default in the reference.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Transport {
    Polling,
    WebSocket,
}

impl Transport {
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Polling => "polling",
            Transport::WebSocket => "websocket",
        }
    }

    fn from_query(name: &str) -> Option<Transport> {
        match name {
            "polling" => Some(Transport::Polling),
            "websocket" => Some(Transport::WebSocket),
            _ => None,
        }
    }
}

/// A request that passed [`verify_request`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EngineRequest {
    pub transport: Transport,
    /// `None` for a handshake.
    pub sid: Option<String>,
    /// JSONP callback index (digits of `j`) when the client asked for JSONP
    /// polling; node switches to JSONP whenever `j` is present.
    pub jsonp: Option<String>,
}

impl EngineRequest {
    pub fn is_handshake(&self) -> bool {
        self.sid.is_none()
    }
}

/// Checks a request in the reference server's order, so that a request with
/// several faults gets the same error code as from node:
///
/// 1. `transport` missing or not in `transports` → 0
/// 2. with a non-empty `sid`: unknown → 1; a plain request (not an upgrade)
///    on another transport than the session's → 3. `EIO` is not looked at.
/// 3. without: not GET → 2; `transport=websocket` without upgrade → 3;
///    `allow_handshake` refusing → its error (normally 4); `EIO` not exactly
///    `4` → 5.
///
/// `query` is the URL query without `?`, decoded like WHATWG
/// `URLSearchParams` (last duplicate wins, as `Object.fromEntries` does).
/// `session_transport` maps a sid to the transport its session currently
/// uses. An upgrade request that names `transport=polling` passes here, as in
/// node; the caller must refuse it (node closes such a WebSocket at once).
/// Node's check of the `Origin` header for invalid characters (→ 3) is left to
/// the HTTP layer, whose header types cannot hold such characters.
pub fn verify_request(
    method: &Method,
    query: &str,
    is_upgrade: bool,
    transports: &[Transport],
    session_transport: impl FnOnce(&str) -> Option<Transport>,
    allow_handshake: impl FnOnce() -> Result<(), EngineError>,
) -> Result<EngineRequest, EngineError> {
    let params = QueryParams::parse(query);

    let transport = params
        .transport
        .as_deref()
        .and_then(Transport::from_query)
        .filter(|t| transports.contains(t))
        .ok_or(EngineError::UnknownTransport)?;
    let jsonp = params
        .j
        .map(|j| j.chars().filter(char::is_ascii_digit).collect());

    // node tests `if (sid)`: an empty sid is a handshake.
    if let Some(sid) = params.sid.filter(|s| !s.is_empty()) {
        let current = session_transport(&sid).ok_or(EngineError::UnknownSid)?;
        if !is_upgrade && current != transport {
            return Err(EngineError::BadRequest);
        }
        return Ok(EngineRequest {
            transport,
            sid: Some(sid),
            jsonp,
        });
    }

    if method != Method::GET {
        return Err(EngineError::BadHandshakeMethod);
    }
    if transport == Transport::WebSocket && !is_upgrade {
        return Err(EngineError::BadRequest);
    }
    allow_handshake()?;
    if params.eio.as_deref() != Some("4") {
        return Err(EngineError::UnsupportedProtocolVersion);
    }
    Ok(EngineRequest {
        transport,
        sid: None,
        jsonp,
    })
}

/// The `sid` a request's query names (form-decoded as [`verify_request`] reads it), if any and
/// not empty: what a node of a fleet looks at to find the session's owner before anything else.
pub fn query_sid(query: &str) -> Option<String> {
    QueryParams::parse(query).sid.filter(|s| !s.is_empty())
}

/// The query parameters Engine.IO reads; `t` (cache buster) is ignored.
#[derive(Debug, Default)]
struct QueryParams {
    eio: Option<String>,
    transport: Option<String>,
    sid: Option<String>,
    j: Option<String>,
}

impl QueryParams {
    fn parse(query: &str) -> QueryParams {
        let mut params = QueryParams::default();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            let slot = match form_decode(name).as_str() {
                "EIO" => &mut params.eio,
                "transport" => &mut params.transport,
                "sid" => &mut params.sid,
                "j" => &mut params.j,
                _ => continue,
            };
            *slot = Some(form_decode(value));
        }
        params
    }
}

/// `application/x-www-form-urlencoded` decoding as WHATWG specifies it: `+` is
/// a space, a `%` not followed by two hex digits stays literal, bad UTF-8
/// becomes U+FFFD.
fn form_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = bytes
                    .get(i + 1..i + 3)
                    .and_then(|h| std::str::from_utf8(h).ok())
                    .filter(|h| h.bytes().all(|b| b.is_ascii_hexdigit()))
                    .and_then(|h| u8::from_str_radix(h, 16).ok());
                match hex {
                    Some(b) => {
                        out.push(b);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const BOTH: &[Transport] = &[Transport::Polling, Transport::WebSocket];

    /// No session known, handshakes allowed.
    fn check(method: Method, query: &str, upgrade: bool) -> Result<EngineRequest, EngineError> {
        verify_request(&method, query, upgrade, BOTH, |_| None, || Ok(()))
    }

    /// One session "abc" currently on `current`.
    fn check_session(
        method: Method,
        query: &str,
        upgrade: bool,
        current: Transport,
    ) -> Result<EngineRequest, EngineError> {
        verify_request(
            &method,
            query,
            upgrade,
            BOTH,
            |sid| (sid == "abc").then_some(current),
            || Ok(()),
        )
    }

    #[test]
    fn error_codes_messages_and_statuses() {
        let all = [
            (EngineError::UnknownTransport, 0, "Transport unknown", 400),
            (EngineError::UnknownSid, 1, "Session ID unknown", 400),
            (
                EngineError::BadHandshakeMethod,
                2,
                "Bad handshake method",
                400,
            ),
            (EngineError::BadRequest, 3, "Bad request", 400),
            (EngineError::Forbidden(None), 4, "Forbidden", 403),
            (
                EngineError::UnsupportedProtocolVersion,
                5,
                "Unsupported protocol version",
                400,
            ),
        ];
        for (error, code, message, status) in all {
            assert_eq!(error.code(), code);
            assert_eq!(error.message(), message);
            assert_eq!(error.to_string(), message);
            assert_eq!(error.http_status().as_u16(), status);
            assert_eq!(
                error.json_body(),
                format!("{{\"code\":{code},\"message\":\"{message}\"}}")
            );
        }
    }

    #[test]
    fn json_bodies_are_byte_exact() {
        assert_eq!(
            EngineError::UnknownTransport.json_body(),
            r#"{"code":0,"message":"Transport unknown"}"#
        );
        assert_eq!(
            EngineError::BadRequest.json_body(),
            r#"{"code":3,"message":"Bad request"}"#
        );
        assert_eq!(
            EngineError::Forbidden(Some("no \"token\"".into())).json_body(),
            r#"{"code":4,"message":"no \"token\""}"#
        );
    }

    #[test]
    fn polling_handshake() {
        assert_eq!(
            check(Method::GET, "EIO=4&transport=polling&t=N8hyd6w", false),
            Ok(EngineRequest {
                transport: Transport::Polling,
                sid: None,
                jsonp: None
            })
        );
    }

    #[test]
    fn websocket_handshake_needs_an_upgrade() {
        let ok = check(Method::GET, "EIO=4&transport=websocket", true).unwrap();
        assert_eq!(ok.transport, Transport::WebSocket);
        assert!(ok.is_handshake());
        assert_eq!(
            check(Method::GET, "EIO=4&transport=websocket", false),
            Err(EngineError::BadRequest)
        );
    }

    #[test]
    fn unknown_transport() {
        for q in [
            "EIO=4",
            "EIO=4&transport=abc",
            "EIO=4&transport=webtransport",
            "",
        ] {
            assert_eq!(
                check(Method::GET, q, false),
                Err(EngineError::UnknownTransport),
                "{q}"
            );
        }
        let only_ws = verify_request(
            &Method::GET,
            "EIO=4&transport=polling",
            false,
            &[Transport::WebSocket],
            |_| None,
            || Ok(()),
        );
        assert_eq!(only_ws, Err(EngineError::UnknownTransport));
    }

    #[test]
    fn unknown_sid_on_get_and_post() {
        for m in [Method::GET, Method::POST] {
            assert_eq!(
                check_session(
                    m,
                    "EIO=4&transport=polling&sid=nope",
                    false,
                    Transport::Polling
                ),
                Err(EngineError::UnknownSid)
            );
        }
    }

    #[test]
    fn known_sid() {
        let ok = check_session(
            Method::POST,
            "EIO=4&transport=polling&sid=abc",
            false,
            Transport::Polling,
        );
        assert_eq!(ok.unwrap().sid.as_deref(), Some("abc"));
    }

    #[test]
    fn polling_after_upgrade_is_a_transport_mismatch() {
        assert_eq!(
            check_session(
                Method::GET,
                "EIO=4&transport=polling&sid=abc",
                false,
                Transport::WebSocket
            ),
            Err(EngineError::BadRequest)
        );
    }

    #[test]
    fn upgrade_from_polling_is_allowed() {
        let ok = check_session(
            Method::GET,
            "EIO=4&transport=websocket&sid=abc",
            true,
            Transport::Polling,
        );
        assert_eq!(ok.unwrap().transport, Transport::WebSocket);
    }

    #[test]
    fn handshake_must_be_get() {
        for m in [Method::POST, Method::PUT, Method::OPTIONS] {
            assert_eq!(
                check(m, "EIO=4&transport=polling", false),
                Err(EngineError::BadHandshakeMethod)
            );
        }
    }

    #[test]
    fn unsupported_protocol_versions() {
        for q in [
            "transport=polling",
            "EIO=abc&transport=polling",
            "EIO=3&transport=polling",
            "EIO=4.0&transport=polling",
        ] {
            assert_eq!(
                check(Method::GET, q, false),
                Err(EngineError::UnsupportedProtocolVersion),
                "{q}"
            );
        }
    }

    #[test]
    fn forbidden_with_default_and_custom_message() {
        let refused = |message: Option<&str>| {
            verify_request(
                &Method::GET,
                "EIO=4&transport=polling",
                false,
                BOTH,
                |_| None,
                || Err(EngineError::Forbidden(message.map(String::from))),
            )
        };
        let default = refused(None).unwrap_err();
        assert_eq!(default.json_body(), r#"{"code":4,"message":"Forbidden"}"#);
        assert_eq!(default.http_status(), StatusCode::FORBIDDEN);
        assert_eq!(
            refused(Some("bad origin")).unwrap_err().message(),
            "bad origin"
        );
    }

    #[test]
    fn hook_only_runs_for_handshakes() {
        let r = verify_request(
            &Method::GET,
            "EIO=4&transport=polling&sid=abc",
            false,
            BOTH,
            |_| Some(Transport::Polling),
            || panic!("allowRequest is for handshakes only"),
        );
        assert!(r.is_ok());
    }

    #[test]
    fn order_of_checks() {
        // transport before method and version
        assert_eq!(
            check(Method::POST, "transport=abc", false),
            Err(EngineError::UnknownTransport)
        );
        // sid before version: EIO is not checked on existing sessions
        assert_eq!(
            check_session(
                Method::GET,
                "EIO=3&transport=polling&sid=nope",
                false,
                Transport::Polling
            ),
            Err(EngineError::UnknownSid)
        );
        assert!(check_session(
            Method::GET,
            "transport=polling&sid=abc",
            false,
            Transport::Polling
        )
        .is_ok());
        // method before version
        assert_eq!(
            check(Method::POST, "transport=polling", false),
            Err(EngineError::BadHandshakeMethod)
        );
        // websocket-without-upgrade before version
        assert_eq!(
            check(Method::GET, "transport=websocket", false),
            Err(EngineError::BadRequest)
        );
        // hook before version
        let r = verify_request(
            &Method::GET,
            "EIO=3&transport=polling",
            false,
            BOTH,
            |_| None,
            || Err(EngineError::Forbidden(None)),
        );
        assert_eq!(r, Err(EngineError::Forbidden(None)));
    }

    #[test]
    fn empty_sid_is_a_handshake() {
        assert!(check(Method::GET, "EIO=4&transport=polling&sid=", false)
            .unwrap()
            .is_handshake());
    }

    #[test]
    fn the_sid_of_a_query_is_read_as_verify_request_reads_it() {
        assert_eq!(
            query_sid("EIO=4&transport=polling&sid=MyeAGyE3.AAEC").as_deref(),
            Some("MyeAGyE3.AAEC")
        );
        assert_eq!(query_sid("sid=a%2Eb&sid=c%2Ed").as_deref(), Some("c.d"));
        assert_eq!(query_sid("EIO=4&transport=polling&sid="), None);
        assert_eq!(query_sid("EIO=4&transport=polling"), None);
        assert_eq!(query_sid(""), None);
    }

    #[test]
    fn query_decoding_follows_url_search_params() {
        assert!(check(Method::GET, "EIO=%34&transport=poll%69ng", false).is_ok());
        // last duplicate wins
        assert!(check(Method::GET, "EIO=4&transport=abc&transport=polling", false).is_ok());
        assert_eq!(
            check(Method::GET, "EIO=4&transport=polling&transport=abc", false),
            Err(EngineError::UnknownTransport)
        );
        assert_eq!(form_decode("a+b%20c%zz%4"), "a b c%zz%4");
        assert_eq!(form_decode("%E2%82%AC%FF"), "€\u{fffd}");
        let sid = check_session(
            Method::GET,
            "transport=polling&&sid=a%62c&",
            false,
            Transport::Polling,
        );
        assert_eq!(sid.unwrap().sid.as_deref(), Some("abc"));
    }

    #[test]
    fn jsonp_index_keeps_digits_only() {
        let r = check(Method::GET, "EIO=4&transport=polling&j=0", false).unwrap();
        assert_eq!(r.jsonp.as_deref(), Some("0"));
        let r = check(Method::GET, "EIO=4&transport=polling&j=a1);b2", false).unwrap();
        assert_eq!(r.jsonp.as_deref(), Some("12"));
        let r = check(Method::GET, "EIO=4&transport=polling&j", false).unwrap();
        assert_eq!(r.jsonp.as_deref(), Some(""));
    }

    proptest! {
        #[test]
        fn verify_never_panics(query in any::<String>(), upgrade in any::<bool>(), post in any::<bool>()) {
            let method = if post { Method::POST } else { Method::GET };
            let _ = verify_request(&method, &query, upgrade, BOTH, |s| (s.len() % 2 == 0).then_some(Transport::Polling), || Ok(()));
        }

        #[test]
        fn verify_never_panics_on_query_like_input(query in "[A-Za-z=&%0-9+]{0,40}") {
            let _ = check(Method::GET, &query, false);
        }
    }
}
