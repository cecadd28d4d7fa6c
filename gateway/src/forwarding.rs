//! What the app learns about the client and the request's framing: `X-Forwarded-*`,
//! `X-Real-IP`, no hop-by-hop headers, no upgrade but WebSocket, no transfer coding but chunked.
//!
//! Forwarding headers are one family (see [`FORWARDING`]): from a peer that is not one of
//! `proxy.trusted_proxies`, every member is dropped and the gateway's own `X-Forwarded-For`,
//! `X-Real-IP`, `X-Forwarded-Proto`, `X-Forwarded-Host` and `X-Forwarded-Port` are set; from a
//! trusted proxy they are believed and extended. The same rule runs on every path to the app
//! (pingora's proxy, the relay, FastCGI, the WebSocket tunnel), so a client cannot tell the app
//! it is someone else, somewhere else, or asked for another URL.

use std::net::IpAddr;

use http::HeaderName;
use pingora::http::{CaseHeaderName, RequestHeader, ResponseHeader};

use crate::settings::Cidr;

/// RFC 9110 §7.6.1 connection-specific headers, plus the non-standard ones nginx also drops,
/// and `HTTP2-Settings` (RFC 7540 §3.2.1: connection-specific, only meaningful with an h2c
/// upgrade, which is never passed on). `Transfer-Encoding` is left to pingora, which reframes
/// bodies itself.
/// Names, not strings: every request and every answer is looked up for each of them, and a
/// lookup by string parses the name first.
static HOP_BY_HOP: [HeaderName; 7] = [
    http::header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    http::header::TE,
    http::header::TRAILER,
    http::header::UPGRADE,
    HeaderName::from_static("http2-settings"),
];

/// Whether `name` (lowercase) is one of [`HOP_BY_HOP`].
fn is_hop_by_hop(name: &str) -> bool {
    HOP_BY_HOP.iter().any(|h| h.as_str() == name)
}

/// Every header a proxy uses to tell the app about the client or the original request, as
/// frameworks read them: RFC 7239 `Forwarded` (Rack, Spring), `X-Forwarded-*` (Rack reads
/// -Ssl/-Scheme, Symfony and Laravel -Port/-Prefix, Werkzeug -Prefix), the client-address
/// headers of CDNs and load balancers (`X-Real-IP`, `Client-IP` which Rack reads,
/// `True-Client-IP`, `CF-Connecting-IP`, ...), IIS's URL overrides (`X-Original-URL`,
/// `X-Rewrite-URL`, read by older Symfony and Zend) and the HTTPS flags (`Front-End-Https`,
/// `X-Url-Scheme`). Matched with `_` read as `-`: Puma, PHP and CGI fold both to the same
/// variable, so `X_Forwarded_Port` is the same attack.
const FORWARDING: &[&str] = &[
    "forwarded",
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "x-forwarded-port",
    "x-forwarded-prefix",
    "x-forwarded-ssl",
    "x-forwarded-scheme",
    "x-forwarded-server",
    "x-forwarded-protocol",
    "x-forwarded-uri",
    "x-forwarded-path",
    "x-forwarded-by",
    "x-original-forwarded-for",
    "x-real-ip",
    "client-ip",
    "true-client-ip",
    "x-client-ip",
    "x-cluster-client-ip",
    "cf-connecting-ip",
    "fastly-client-ip",
    "x-original-url",
    "x-original-uri",
    "x-original-host",
    "x-rewrite-url",
    "x-host",
    "front-end-https",
    "x-url-scheme",
];

/// Whether `name` (lowercase, as `http` stores it) is a forwarding header in any spelling.
pub fn is_forwarding(name: &str) -> bool {
    let mut folded = [0u8; 32];
    let bytes = name.as_bytes();
    if bytes.len() > folded.len() {
        return false;
    }
    for (f, b) in folded.iter_mut().zip(bytes) {
        *f = if *b == b'_' {
            b'-'
        } else {
            b.to_ascii_lowercase()
        };
    }
    let folded = &folded[..bytes.len()];
    FORWARDING.iter().any(|f| f.as_bytes() == folded)
}

/// Fields meant for every recipient, which a `Connection` option must not remove (RFC 9110
/// §7.6.1: "a sender MUST NOT send a connection option corresponding to a field that is
/// intended for all recipients"). A client that lists `Host`, its credentials or the body's
/// framing there is not being hop-by-hop, it is deleting what the app relies on; like nginx
/// and HAProxy (which never remove fields named in `Connection`) the gateway keeps them.
/// Forwarding headers are the gateway's to manage (above), never the client's to delete.
fn end_to_end(name: &str) -> bool {
    const FIELDS: &[&str] = &[
        "host",
        "transfer-encoding",
        "authorization",
        "cookie",
        "origin",
        "referer",
        "user-agent",
        "cache-control",
        "pragma",
        "range",
        "expect",
        "date",
        "via",
        "x-requested-with",
        "x-csrf-token",
    ];
    FIELDS.contains(&name)
        || ["content-", "accept", "if-", "sec-"]
            .iter()
            .any(|p| name.starts_with(p))
        || is_forwarding(name)
}

pub struct Client<'a> {
    pub ip: Option<IpAddr>,
    pub tls: bool,
    /// The port of the listener the client connected to (`X-Forwarded-Port`).
    pub port: Option<u16>,
    pub trusted: &'a [Cidr],
}

impl Client<'_> {
    pub(crate) fn peer_trusted(&self) -> bool {
        self.ip
            .is_some_and(|ip| self.trusted.iter().any(|c| c.contains(ip)))
    }
}

/// The request's `X-Request-Id`: the one a trusted proxy sent (so one id follows the request
/// through every hop), or a new one: 32 hex digits of randomness, as nginx's `$request_id`.
/// A client that is not a trusted proxy cannot choose the id the app and the logs see; nor
/// can a proxy send one that is empty, longer than [`MAX_REQUEST_ID`] or not plain visible
/// ASCII (it would forge a log field).
pub fn request_id(client: &Client<'_>, headers: &http::HeaderMap) -> http::HeaderValue {
    if client.peer_trusted() {
        if let Some(id) = headers
            .get(&X_REQUEST_ID.name)
            .filter(|v| usable_request_id(v.as_bytes()))
        {
            // A copy: the id lives as long as its request, minutes for a held poll, and a
            // slice of the client's head would keep the whole buffer the head was read into.
            return shared_value(Small::<MAX_REQUEST_ID>::of(id.as_bytes()))
                .unwrap_or_else(|| id.clone());
        }
    }
    new_request_id(fastrand::u128(..))
}

/// Up to `N` bytes of a header value the gateway makes, kept inline.
struct Small<const N: usize> {
    bytes: [u8; N],
    len: usize,
}

impl<const N: usize> Small<N> {
    /// `bytes`, cut at `N` (every caller's value is shorter).
    fn of(bytes: &[u8]) -> Small<N> {
        let len = bytes.len().min(N);
        let mut small = Small { bytes: [0; N], len };
        small.bytes[..len].copy_from_slice(&bytes[..len]);
        small
    }
}

impl<const N: usize> AsRef<[u8]> for Small<N> {
    fn as_ref(&self) -> &[u8] {
        &self.bytes[..self.len]
    }
}

/// A header value in one allocation that holds its bytes and its reference count, so the
/// copies the request makes of it (the app's request, the answer, the log) share it without
/// another: a value made from a slice is promoted to shared storage, a second allocation, on its
/// first clone. `None`: not a valid header value.
fn shared_value<T: AsRef<[u8]> + Send + 'static>(bytes: T) -> Option<http::HeaderValue> {
    http::HeaderValue::from_maybe_shared(bytes::Bytes::from_owner(bytes)).ok()
}

/// The longest `X-Request-Id` kept from a trusted proxy (a UUID is 36, AWS's trace ids 40).
pub const MAX_REQUEST_ID: usize = 128;

fn usable_request_id(id: &[u8]) -> bool {
    !id.is_empty()
        && id.len() <= MAX_REQUEST_ID
        && id
            .iter()
            .all(|b| b.is_ascii_graphic() && *b != b'"' && *b != b'\\')
}

/// `n` as 32 lower-case hex digits.
fn new_request_id(n: u128) -> http::HeaderValue {
    let mut hex = [0u8; 32];
    for (i, d) in hex.iter_mut().enumerate() {
        let nibble = (n >> (124 - 4 * i)) & 0xf;
        *d = b"0123456789abcdef"[nibble as usize];
    }
    shared_value(hex).expect("hex digits are a valid header value")
}

/// The client's address for per-client limits of the realtime services: the peer, or, when
/// the peer is a trusted proxy, the rightmost `X-Forwarded-For` address that is not one of our
/// trusted proxies (nginx `real_ip_recursive on`, the same address `X-Real-IP` carries to the
/// app). An entry that is not an address stops the walk at the proxy, so a malformed header
/// counts against the proxy rather than against nobody.
pub fn real_client(client: &Client<'_>, headers: &http::HeaderMap) -> Option<IpAddr> {
    if !client.peer_trusted() {
        return client.ip;
    }
    let forwarded: Vec<&str> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect();
    for entry in forwarded.iter().rev() {
        match entry.parse::<IpAddr>() {
            Ok(ip) if client.trusted.iter().any(|c| c.contains(ip)) => continue,
            Ok(ip) => return Some(ip),
            Err(_) => break,
        }
    }
    client.ip
}

/// Names listed in `Connection` are hop-by-hop too (RFC 9110 §7.6.1), except end-to-end
/// fields (see [`end_to_end`]).
fn connection_listed(value: Option<&http::HeaderValue>) -> Vec<String> {
    value
        .and_then(|v| v.to_str().ok())
        .map(|v| {
            v.split(',')
                .map(|t| t.trim().to_ascii_lowercase())
                .filter(|t| !t.is_empty() && !end_to_end(t))
                .collect()
        })
        .unwrap_or_default()
}

/// Comma-separated tokens of every line of `name`, trimmed and lowercased.
fn tokens(req: &RequestHeader, name: &str) -> Vec<String> {
    req.headers
        .get_all(name)
        .iter()
        .flat_map(|v| {
            String::from_utf8_lossy(v.as_bytes())
                .split(',')
                .map(|t| t.trim().to_ascii_lowercase())
                .filter(|t| !t.is_empty())
                .collect::<Vec<_>>()
        })
        .collect()
}

/// A WebSocket handshake (RFC 6455 §4.1): HTTP/1.1, `Upgrade: websocket` and nothing else,
/// `Connection` naming `upgrade`. Only these are tunnelled or served as WebSockets.
pub fn is_websocket_upgrade(req: &RequestHeader) -> bool {
    req.version == http::Version::HTTP_11
        && tokens(req, "upgrade") == ["websocket"]
        && tokens(req, "connection").iter().any(|t| t == "upgrade")
}

/// Any other `Upgrade` (`h2c`, a TLS upgrade, `websocket` without `Connection: upgrade`) is
/// taken off the request, which then goes on as the ordinary HTTP/1.1 request it also is: a
/// server may always ignore `Upgrade` (RFC 9110 §7.8) and the client carries on in HTTP/1.1.
/// An `h2c` upgrade passed through would hand the client a raw HTTP/2 connection to the app,
/// past every rule the gateway applies per request. nginx does the same unless told to pass
/// `Upgrade` (it is hop-by-hop); refusing with an error instead would break clients (curl
/// `--http2` on plain HTTP) that are entitled to the fallback. Returns whether one was dropped.
pub fn drop_foreign_upgrade(req: &mut RequestHeader) -> bool {
    if !req.headers.contains_key(http::header::UPGRADE) || is_websocket_upgrade(req) {
        return false;
    }
    req.remove_header(&http::header::UPGRADE);
    req.remove_header("http2-settings");
    true
}

/// The request's transfer coding when it is anything but a single `chunked`: `gzip, chunked`,
/// `chunked, chunked`, `identity`, or two header lines. pingora would decode the chunked part
/// and silently drop the rest (or, for `identity`, read no body at all and take the body for
/// the next request), so such a request is answered 501 and the connection closed (RFC 9112
/// §6.1; nginx answers 501 "unknown transfer-encoding" to the same set).
pub fn unsupported_transfer_coding(req: &RequestHeader) -> Option<String> {
    let lines: Vec<&http::HeaderValue> = req
        .headers
        .get_all(http::header::TRANSFER_ENCODING)
        .iter()
        .collect();
    match lines.as_slice() {
        [] => None,
        [one] if one.as_bytes().trim_ascii().eq_ignore_ascii_case(b"chunked") => None,
        _ => Some(
            lines
                .iter()
                .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
                .collect::<Vec<_>>()
                .join(", "),
        ),
    }
}

/// Why a request head must not reach the app, if it must not: an HTTP/1.1 request without
/// exactly one valid `Host` (RFC 9112 §3.2: "MUST respond with a 400"; nginx answers 400 to
/// `Host: x evil`, `x/evil`, `x, y` and an empty one), where one layer's idea of the host would
/// differ from another's. HTTP/2 requests carry `:authority` instead.
pub fn malformed_head(req: &RequestHeader) -> Option<&'static str> {
    if req.version != http::Version::HTTP_11 {
        return None;
    }
    let mut hosts = req.headers.get_all(http::header::HOST).iter();
    match (hosts.next(), hosts.next()) {
        (None, _) => Some("missing Host header"),
        (Some(_), Some(_)) => Some("more than one Host header"),
        (Some(h), None) if !is_host(h.as_bytes()) => Some("invalid Host header"),
        _ => None,
    }
}

/// The host of an authority (`Host` value): RFC 9110 §7.2 / RFC 3986 §3.2.2 `uri-host [ ":"
/// port ]`, where uri-host is an IP literal in brackets (returned with them), or a reg-name
/// (unreserved, percent-encoded and sub-delims characters). `None` when it is not one. The
/// front door's Host check and the admin listener's both read a Host with this.
pub fn authority_host(v: &str) -> Option<&str> {
    let (host, port) = if v.starts_with('[') {
        let end = v.find(']')?;
        (&v[..=end], &v[end + 1..])
    } else {
        match v.rfind(':') {
            Some(colon) => (&v[..colon], &v[colon..]),
            None => (v, ""),
        }
    };
    let port_ok = match port.strip_prefix(':') {
        None => port.is_empty(),
        Some(digits) => digits.len() <= 5 && digits.bytes().all(|b| b.is_ascii_digit()),
    };
    let host_ok = match host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        Some(inner) => {
            !inner.is_empty()
                && inner
                    .bytes()
                    .all(|b| b.is_ascii_hexdigit() || matches!(b, b':' | b'.'))
        }
        None => {
            !host.is_empty()
                && host
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-._~%!$&'()*+,;=".contains(&b))
        }
    };
    (host_ok && port_ok).then_some(host)
}

fn is_host(v: &[u8]) -> bool {
    std::str::from_utf8(v).is_ok_and(|v| authority_host(v).is_some())
}

/// Header values made recently on this thread, by key: a value the requests of a connection
/// (or of a listener) repeat is made once and cloned after (a reference count), not written
/// and allocated again per request. At most `N` are kept, the newest first; a key not among
/// them costs what it would without the cache.
struct Recent<K, const N: usize>(std::cell::RefCell<Vec<(K, http::HeaderValue)>>);

impl<K: PartialEq + Copy, const N: usize> Recent<K, N> {
    const fn new() -> Self {
        Recent(std::cell::RefCell::new(Vec::new()))
    }

    fn get(&self, key: K, make: impl FnOnce(K) -> http::HeaderValue) -> http::HeaderValue {
        let mut recent = self.0.borrow_mut();
        if let Some(at) = recent.iter().position(|(seen, _)| *seen == key) {
            let value = recent[at].1.clone();
            if at > 0 {
                let hit = recent.remove(at);
                recent.insert(0, hit);
            }
            return value;
        }
        let value = make(key);
        recent.truncate(N.saturating_sub(1));
        recent.insert(0, (key, value.clone()));
        value
    }
}

/// An address as a header value, written without an intermediate `String`. The last one made
/// on this thread is kept: a keep-alive connection's requests come from one address, and
/// mostly run on one thread, so most requests reuse the value of the one before (no
/// allocation); another address costs what it would without the cache.
fn ip_value(ip: IpAddr) -> http::HeaderValue {
    thread_local! {
        static LAST: Recent<IpAddr, 1> = const { Recent::new() };
    }
    LAST.with(|last| last.get(ip, write_ip))
}

/// A listener's port as a header value (`X-Forwarded-Port`). A gateway has a few listeners,
/// and every request of one repeats its port: each thread keeps the values of the last four
/// ports it wrote, so a request allocates none (`HeaderValue::from(u16)` allocates every time).
fn port_value(port: u16) -> http::HeaderValue {
    thread_local! {
        static PORTS: Recent<u16, 4> = const { Recent::new() };
    }
    PORTS.with(|ports| ports.get(port, http::HeaderValue::from))
}

fn write_ip(ip: IpAddr) -> http::HeaderValue {
    use std::io::Write as _;
    // The longest address, `ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255`, is 45 bytes.
    let mut w = std::io::Cursor::new([0u8; 48]);
    let _ = write!(w, "{ip}");
    let len = w.position() as usize;
    shared_value(Small::<48>::of(&w.get_ref()[..len])).expect("an address is a valid header value")
}

/// An address as a `Forwarded` node (RFC 7239 §6: IPv6 in quotes and brackets).
fn forwarded_node(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => format!("\"[{v6}]\""),
    }
}

/// A header the gateway writes on requests to the app: parsed once, spelled as nginx setups
/// spell it (`proxy_set_header X-Forwarded-For ...`), and added without allocating for its
/// name (see vendor/pingora-http.patch.md).
pub struct Added {
    pub(crate) name: HeaderName,
    case: CaseHeaderName,
}

impl Added {
    /// `lower` and `case` are the same name; `lower` in lower case, as [`HeaderName`] keeps it.
    pub(crate) const fn new(lower: &'static str, case: &'static str) -> Added {
        Added {
            name: HeaderName::from_static(lower),
            case: CaseHeaderName::from_static(case),
        }
    }

    /// Sets the header on `req`, replacing whatever was under its name.
    pub fn set(&self, req: &mut RequestHeader, value: http::HeaderValue) {
        let _ = req.insert_header_with_case(self.name.clone(), self.case.clone(), value);
    }
}

pub const X_FORWARDED_FOR: Added = Added::new("x-forwarded-for", "X-Forwarded-For");
pub const X_REAL_IP: Added = Added::new("x-real-ip", "X-Real-IP");
pub const X_FORWARDED_PROTO: Added = Added::new("x-forwarded-proto", "X-Forwarded-Proto");
pub const X_FORWARDED_PORT: Added = Added::new("x-forwarded-port", "X-Forwarded-Port");
pub const X_FORWARDED_HOST: Added = Added::new("x-forwarded-host", "X-Forwarded-Host");
pub const X_REQUEST_ID: Added = Added::new("x-request-id", "X-Request-Id");

/// The headers a request to the app gets on its way: `Connection` for a tunnel, the five of
/// [`request`], the request id and the two of `accel::Internal::tell_the_app`. pingora's
/// copy of the client's head for the app is made with room for them
/// (`upstream_request_headers_added`), and every path reserves it before adding them, so
/// neither header map grows once per header (nor at all on pingora's proxy path).
pub const ADDED_AT_MOST: usize = 9;

/// Rewrite a request for the app. With `keep_upgrade` (a WebSocket handshake, see
/// [`is_websocket_upgrade`]), `Connection: upgrade` and `Upgrade` survive for the tunnel.
pub fn request(req: &mut RequestHeader, client: &Client<'_>, keep_upgrade: bool) {
    let listed = connection_listed(req.headers.get(http::header::CONNECTION));
    // Most requests carry none of these: look before removing (a removal also rewrites
    // pingora's case map), and never allocate a name per request.
    for name in &HOP_BY_HOP {
        if keep_upgrade && (name == http::header::UPGRADE || name == http::header::CONNECTION) {
            continue;
        }
        if req.headers.contains_key(name) {
            req.remove_header(name);
        }
    }
    for name in &listed {
        if keep_upgrade && (name == "upgrade" || name == "connection") {
            continue;
        }
        if req.headers.contains_key(name.as_str()) {
            req.remove_header(name.as_str());
        }
    }
    if keep_upgrade {
        let _ = req.insert_header(http::header::CONNECTION, "upgrade");
    }

    let trusted = client.peer_trusted();
    // Every request goes through here: the client's address is written once, without the
    // intermediate Strings, and shared by X-Forwarded-For and X-Real-IP when they agree.
    let peer = client
        .ip
        .map_or_else(|| http::HeaderValue::from_static(""), ip_value);
    let (xff, real_ip) = if trusted {
        let mut xff: Vec<&str> = req
            .headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .collect();
        xff.push(peer.to_str().unwrap_or_default());
        let xff = http::HeaderValue::from_str(&xff.join(", "));
        // The real client, by the same rule as the realtime services' per-client limits.
        let real_ip = real_client(client, &req.headers).map_or_else(|| peer.clone(), ip_value);
        (xff.ok(), real_ip)
    } else {
        // Whatever the client said about itself, in any spelling, is not passed on.
        let forged: Vec<http::HeaderName> = req
            .headers
            .keys()
            .filter(|n| is_forwarding(n.as_str()))
            .cloned()
            .collect();
        for name in forged {
            req.remove_header(&name);
        }
        // Not a trusted proxy: the peer is the client.
        (Some(peer.clone()), peer)
    };
    if let Some(xff) = xff {
        X_FORWARDED_FOR.set(req, xff);
    }
    X_REAL_IP.set(req, real_ip);
    // A trusted proxy's `Forwarded` gets this hop too, so it agrees with X-Forwarded-For.
    if let (true, Some(ip)) = (req.headers.contains_key(http::header::FORWARDED), client.ip) {
        let _ = req.append_header(
            http::header::FORWARDED,
            format!("for={}", forwarded_node(ip)),
        );
    }

    // What a trusted proxy said stands; otherwise (and when it said nothing) the gateway's.
    let keep = |req: &RequestHeader, name: &str| trusted && req.headers.get(name).is_some();
    if !keep(req, "x-forwarded-proto") {
        let proto = if client.tls { "https" } else { "http" };
        X_FORWARDED_PROTO.set(req, http::HeaderValue::from_static(proto));
    }
    // The listener's port, next to the scheme (nginx setups send `$server_port`): Symfony,
    // Laravel and Rack build absolute URLs from it behind a trusted proxy.
    if !keep(req, "x-forwarded-port") {
        match client.port {
            Some(port) => {
                X_FORWARDED_PORT.set(req, port_value(port));
            }
            None => {
                req.remove_header("x-forwarded-port");
            }
        }
    }
    if !keep(req, "x-forwarded-host") {
        match req
            .headers
            .get(http::header::HOST)
            .cloned()
            .or_else(|| req.uri.authority().and_then(|a| a.as_str().parse().ok()))
        {
            Some(host) => {
                X_FORWARDED_HOST.set(req, host);
            }
            None => {
                req.remove_header("x-forwarded-host");
            }
        }
    }
}

/// nginx's instructions from the app to the proxy (`proxy_hide_header` defaults, and the
/// `X-Sendfile` of Apache and lighttpd): never for the client. A file the app names is acted
/// upon before this (see `accel`).
static PROXY_CONTROL: [HeaderName; 6] = [
    HeaderName::from_static("x-accel-redirect"),
    HeaderName::from_static("x-sendfile"),
    HeaderName::from_static("x-accel-buffering"),
    HeaderName::from_static("x-accel-charset"),
    HeaderName::from_static("x-accel-expires"),
    HeaderName::from_static("x-accel-limit-rate"),
];

/// Drop hop-by-hop headers and nginx's proxy controls from the app's answer (except on a
/// 101, where the hop-by-hop headers are the point). Runs on every answer from the app (see
/// `finish`): it looks before removing and allocates nothing unless the app names a field in
/// `Connection` that it also sends.
pub fn response(resp: &mut ResponseHeader) {
    if resp.status == http::StatusCode::SWITCHING_PROTOCOLS {
        return;
    }
    // `Connection: keep-alive` names a field that goes anyway; other names are rare.
    let listed: Vec<http::HeaderName> = match resp
        .headers
        .get(http::header::CONNECTION)
        .and_then(|v| v.to_str().ok())
    {
        None => Vec::new(),
        Some(v) => v
            .split(',')
            .filter_map(|t| {
                let t = t.trim();
                resp.headers
                    .keys()
                    .find(|k| k.as_str().eq_ignore_ascii_case(t))
            })
            .filter(|k| !end_to_end(k.as_str()) && !is_hop_by_hop(k.as_str()))
            .cloned()
            .collect(),
    };
    for name in HOP_BY_HOP.iter().chain(&PROXY_CONTROL) {
        if resp.headers.contains_key(name) {
            resp.remove_header(name);
        }
    }
    for name in &listed {
        resp.remove_header(name);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(headers: &[(&str, &str)]) -> RequestHeader {
        let mut r = RequestHeader::build("GET", b"/x", None).unwrap();
        for (k, v) in headers {
            r.append_header(k.to_string(), *v).unwrap();
        }
        r
    }

    fn get<'a>(r: &'a RequestHeader, k: &str) -> Option<&'a str> {
        r.headers.get(k).and_then(|v| v.to_str().ok())
    }

    #[test]
    fn realtime_limits_count_the_forwarded_client_only_behind_a_trusted_proxy() {
        let trusted = [Cidr::parse("10.0.0.0/8").unwrap()];
        let mut h = http::HeaderMap::new();
        h.append("x-forwarded-for", "198.51.100.7, 10.0.0.9".parse().unwrap());
        let from = |ip: &str| Client {
            ip: Some(ip.parse().unwrap()),
            tls: false,
            port: None,
            trusted: &trusted,
        };
        assert_eq!(
            real_client(&from("10.0.0.1"), &h),
            Some("198.51.100.7".parse().unwrap())
        );
        // Anyone else's header is ignored.
        assert_eq!(
            real_client(&from("203.0.113.1"), &h),
            Some("203.0.113.1".parse().unwrap())
        );
        // Junk stops at the proxy.
        let mut junk = http::HeaderMap::new();
        junk.append("x-forwarded-for", "198.51.100.7, nonsense".parse().unwrap());
        assert_eq!(
            real_client(&from("10.0.0.1"), &junk),
            Some("10.0.0.1".parse().unwrap())
        );
        assert_eq!(
            real_client(&from("10.0.0.1"), &http::HeaderMap::new()),
            Some("10.0.0.1".parse().unwrap())
        );
    }

    #[test]
    fn untrusted_client_cannot_forge_its_address() {
        let trusted = [Cidr::parse("10.0.0.0/8").unwrap()];
        let mut r = req(&[
            ("host", "example.com"),
            ("x-forwarded-for", "1.2.3.4"),
            ("x-forwarded-proto", "http"),
            ("connection", "keep-alive, x-secret"),
            ("x-secret", "1"),
        ]);
        let c = Client {
            ip: Some("203.0.113.9".parse().unwrap()),
            tls: true,
            port: Some(8443),
            trusted: &trusted,
        };
        request(&mut r, &c, false);
        assert_eq!(get(&r, "x-forwarded-for"), Some("203.0.113.9"));
        assert_eq!(get(&r, "x-real-ip"), Some("203.0.113.9"));
        assert_eq!(get(&r, "x-forwarded-proto"), Some("https"));
        assert_eq!(get(&r, "x-forwarded-host"), Some("example.com"));
        assert_eq!(get(&r, "connection"), None);
        assert_eq!(get(&r, "x-secret"), None);
        assert_eq!(get(&r, "host"), Some("example.com"));
    }

    #[test]
    fn a_request_id_is_kept_from_a_trusted_proxy_only() {
        let trusted = [Cidr::parse("10.0.0.0/8").unwrap()];
        let client = |ip: &str| Client {
            ip: Some(ip.parse().unwrap()),
            tls: true,
            port: Some(443),
            trusted: &trusted,
        };
        let mut h = http::HeaderMap::new();
        h.insert("x-request-id", "abc-123".parse().unwrap());
        assert_eq!(request_id(&client("10.1.2.3"), &h), "abc-123");
        let made = request_id(&client("203.0.113.1"), &h);
        assert_ne!(made, "abc-123");
        assert_eq!(made.len(), 32);
        assert!(made.as_bytes().iter().all(|b| b.is_ascii_hexdigit()));
        for bad in ["", "a b", "a\"b", &"x".repeat(MAX_REQUEST_ID + 1)] {
            h.insert("x-request-id", bad.parse().unwrap());
            assert_eq!(request_id(&client("10.1.2.3"), &h).len(), 32, "{bad:?}");
        }
        assert_eq!(
            new_request_id(0x0123_4567_89ab_cdef_0011_2233_4455_6677),
            "0123456789abcdef0011223344556677"
        );
    }

    #[test]
    fn a_kept_request_id_is_a_copy_not_a_slice_of_the_clients_head() {
        let trusted = [Cidr::parse("10.0.0.0/8").unwrap()];
        let client = Client {
            ip: Some("10.1.2.3".parse().unwrap()),
            tls: true,
            port: Some(443),
            trusted: &trusted,
        };
        let head = bytes::Bytes::from_static(b"X-Request-Id: abc-123");
        let mut h = http::HeaderMap::new();
        h.insert(
            "x-request-id",
            http::HeaderValue::from_maybe_shared(head.slice(14..)).unwrap(),
        );
        let id = request_id(&client, &h);
        assert_eq!(id, "abc-123");
        let (p, base) = (id.as_bytes().as_ptr() as usize, head.as_ptr() as usize);
        assert!(
            !(base..base + head.len()).contains(&p),
            "the id points into the head"
        );
    }

    #[test]
    fn a_port_value_is_made_once_per_listener_port() {
        let first = port_value(8443);
        assert_eq!(first, "8443");
        // Four ports in turn (a gateway's listeners) are all kept: none is written again.
        let others: Vec<_> = [80, 443, 8080].into_iter().map(port_value).collect();
        assert_eq!(others, ["80", "443", "8080"]);
        for (port, before) in [8443, 80, 443, 8080]
            .into_iter()
            .zip([&first, &others[0], &others[1], &others[2]])
        {
            let again = port_value(port);
            assert_eq!(again, before);
            assert_eq!(
                again.as_bytes().as_ptr(),
                before.as_bytes().as_ptr(),
                "{port} not reused"
            );
        }
        // A fifth pushes out the one used longest ago (8443), which is then written anew.
        assert_eq!(port_value(9000), "9000");
        let anew = port_value(8443);
        assert_eq!(anew, "8443");
        assert_ne!(anew.as_bytes().as_ptr(), first.as_bytes().as_ptr());
        assert_eq!(port_value(0), "0");
        assert_eq!(port_value(65535), "65535");
    }

    #[test]
    fn an_address_value_is_made_once_per_address_in_a_row() {
        let a: IpAddr = "192.0.2.7".parse().unwrap();
        let b: IpAddr = "2001:db8::1".parse().unwrap();
        let first = ip_value(a);
        let again = ip_value(a);
        assert_eq!(first, "192.0.2.7");
        assert_eq!(again, "192.0.2.7");
        assert_eq!(
            first.as_bytes().as_ptr(),
            again.as_bytes().as_ptr(),
            "not reused"
        );
        assert_eq!(ip_value(b), "2001:db8::1");
        // One address is kept per thread: after another, it is written again.
        let third = ip_value(a);
        assert_eq!(third, "192.0.2.7");
        assert_ne!(third.as_bytes().as_ptr(), first.as_bytes().as_ptr());
        assert_eq!(
            write_ip(
                "ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255"
                    .parse()
                    .unwrap()
            ),
            "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"
        );
    }

    #[test]
    fn trusted_proxy_chain_is_appended_and_real_ip_found() {
        let trusted = [Cidr::parse("10.0.0.0/8").unwrap()];
        let mut r = req(&[("host", "h"), ("x-forwarded-for", "198.51.100.7, 10.0.0.3")]);
        let c = Client {
            ip: Some("10.0.0.2".parse().unwrap()),
            tls: false,
            port: Some(8443),
            trusted: &trusted,
        };
        request(&mut r, &c, false);
        assert_eq!(
            get(&r, "x-forwarded-for"),
            Some("198.51.100.7, 10.0.0.3, 10.0.0.2")
        );
        assert_eq!(get(&r, "x-real-ip"), Some("198.51.100.7"));
        assert_eq!(get(&r, "x-forwarded-proto"), Some("http"));
    }

    #[test]
    fn upgrade_headers_survive_for_the_tunnel() {
        let mut r = req(&[("connection", "Upgrade"), ("upgrade", "websocket")]);
        let c = Client {
            ip: None,
            tls: true,
            port: None,
            trusted: &[],
        };
        request(&mut r, &c, true);
        assert_eq!(get(&r, "upgrade"), Some("websocket"));
        assert_eq!(get(&r, "connection"), Some("upgrade"));
    }

    fn untrusted(ip: &str) -> Client<'static> {
        Client {
            ip: Some(ip.parse().unwrap()),
            tls: true,
            port: Some(8443),
            trusted: &[],
        }
    }

    #[test]
    fn every_forwarding_header_from_a_client_is_dropped_or_replaced() {
        let mut r = req(&[
            ("host", "shop.example"),
            ("forwarded", "for=6.6.6.6;proto=http"),
            ("x-forwarded-port", "80"),
            ("x-forwarded-prefix", "/evil"),
            ("x-forwarded-ssl", "off"),
            ("x-forwarded-scheme", "http"),
            ("x-forwarded-server", "evil"),
            ("client-ip", "6.6.6.6"),
            ("true-client-ip", "6.6.6.6"),
            ("x-client-ip", "6.6.6.6"),
            ("x-cluster-client-ip", "6.6.6.6"),
            ("x-original-url", "/admin"),
            ("x-rewrite-url", "/admin"),
            ("front-end-https", "off"),
            ("x-url-scheme", "http"),
            ("x_forwarded_prefix", "/evil"),
            ("x-app-header", "kept"),
        ]);
        request(&mut r, &untrusted("203.0.113.9"), false);
        let mut names: Vec<&str> = r.headers.keys().map(|n| n.as_str()).collect();
        names.sort_unstable();
        assert_eq!(
            names,
            [
                "host",
                "x-app-header",
                "x-forwarded-for",
                "x-forwarded-host",
                "x-forwarded-port",
                "x-forwarded-proto",
                "x-real-ip"
            ]
        );
        assert_eq!(get(&r, "x-forwarded-port"), Some("8443"));
        assert_eq!(get(&r, "x-forwarded-proto"), Some("https"));
    }

    #[test]
    fn the_added_headers_are_written_as_nginx_setups_spell_them_and_replace_the_clients() {
        let mut r = req(&[
            ("Host", "shop.example"),
            ("X-Forwarded-For", "6.6.6.6"),
            ("x-real-ip", "6.6.6.6"),
        ]);
        r.reserve(ADDED_AT_MOST);
        request(&mut r, &untrusted("203.0.113.9"), false);
        X_REQUEST_ID.set(&mut r, http::HeaderValue::from_static("abc"));
        let mut wire = Vec::new();
        r.header_to_h1_wire(&mut wire);
        let wire = String::from_utf8(wire).expect("ascii");
        let mut lines: Vec<&str> = wire.lines().collect();
        lines.sort_unstable();
        assert_eq!(
            lines,
            [
                "Host: shop.example",
                "X-Forwarded-For: 203.0.113.9",
                "X-Forwarded-Host: shop.example",
                "X-Forwarded-Port: 8443",
                "X-Forwarded-Proto: https",
                "X-Real-IP: 203.0.113.9",
                "X-Request-Id: abc",
            ]
        );
    }

    #[test]
    fn a_trusted_proxy_keeps_its_headers_and_forwarded_gets_this_hop() {
        let trusted = [Cidr::parse("10.0.0.0/8").unwrap()];
        let mut r = req(&[
            ("host", "h"),
            ("forwarded", "for=198.51.100.7;proto=https"),
            ("x-forwarded-port", "443"),
            ("x-forwarded-prefix", "/shop"),
        ]);
        let c = Client {
            ip: Some("10.0.0.2".parse().unwrap()),
            tls: false,
            port: Some(8080),
            trusted: &trusted,
        };
        request(&mut r, &c, false);
        let fwd: Vec<_> = r.headers.get_all("forwarded").iter().collect();
        assert_eq!(fwd, ["for=198.51.100.7;proto=https", "for=10.0.0.2"]);
        assert_eq!(get(&r, "x-forwarded-port"), Some("443"));
        assert_eq!(get(&r, "x-forwarded-prefix"), Some("/shop"));
        assert_eq!(forwarded_node("::1".parse().unwrap()), "\"[::1]\"");
    }

    #[test]
    fn forwarding_names_match_in_any_spelling() {
        for n in [
            "forwarded",
            "x_forwarded_port",
            "X-Real-IP",
            "true-client-ip",
        ] {
            assert!(is_forwarding(n), "{n}");
        }
        for n in [
            "x-forwarded",
            "host",
            "x-forwarded-for-a-very-long-name-indeed",
        ] {
            assert!(!is_forwarding(n), "{n}");
        }
    }

    #[test]
    fn connection_cannot_remove_end_to_end_fields() {
        let mut r = req(&[
            ("host", "shop.example"),
            ("cookie", "a=1"),
            ("authorization", "Bearer t"),
            ("content-length", "5"),
            ("x-private", "1"),
            (
                "connection",
                "Host, Cookie, Authorization, Content-Length, X-Forwarded-For, X-Private",
            ),
        ]);
        request(&mut r, &untrusted("203.0.113.9"), false);
        assert_eq!(get(&r, "host"), Some("shop.example"));
        assert_eq!(get(&r, "cookie"), Some("a=1"));
        assert_eq!(get(&r, "authorization"), Some("Bearer t"));
        assert_eq!(get(&r, "content-length"), Some("5"));
        assert_eq!(get(&r, "x-forwarded-for"), Some("203.0.113.9"));
        assert_eq!(get(&r, "x-private"), None);
    }

    #[test]
    fn only_websocket_is_an_upgrade() {
        let ws = |up: &str, conn: &str| {
            let mut r = req(&[("upgrade", up), ("connection", conn)]);
            let websocket = is_websocket_upgrade(&r);
            let dropped = drop_foreign_upgrade(&mut r);
            assert_eq!(websocket, !dropped, "{up} / {conn}");
            assert_eq!(r.headers.contains_key("upgrade"), websocket);
            websocket
        };
        assert!(ws("websocket", "Upgrade"));
        assert!(ws("WebSocket", "keep-alive, upgrade"));
        assert!(!ws("h2c", "Upgrade, HTTP2-Settings"));
        assert!(!ws("websocket", "keep-alive"));
        assert!(!ws("h2c, websocket", "upgrade"));
        assert!(!ws("TLS/1.2", "upgrade"));
        let mut r = req(&[("connection", "upgrade"), ("upgrade", "websocket")]);
        r.set_version(http::Version::HTTP_10);
        assert!(!is_websocket_upgrade(&r));
        let mut plain = req(&[("host", "h")]);
        assert!(!drop_foreign_upgrade(&mut plain));
    }

    #[test]
    fn only_a_single_chunked_transfer_coding_is_accepted() {
        assert_eq!(unsupported_transfer_coding(&req(&[])), None);
        assert_eq!(
            unsupported_transfer_coding(&req(&[("transfer-encoding", "Chunked")])),
            None
        );
        for te in ["gzip, chunked", "chunked, chunked", "identity", "gzip", ""] {
            assert_eq!(
                unsupported_transfer_coding(&req(&[("transfer-encoding", te)])).as_deref(),
                Some(te)
            );
        }
        let two = req(&[
            ("transfer-encoding", "chunked"),
            ("transfer-encoding", "chunked"),
        ]);
        assert_eq!(
            unsupported_transfer_coding(&two).as_deref(),
            Some("chunked, chunked")
        );
    }

    #[test]
    fn hosts_are_checked_as_rfc_3986_authorities() {
        for ok in [
            "example.com",
            "example.com:8443",
            "127.0.0.1:80",
            "[::1]:8443",
            "[::1]",
            "a_b-c.~x",
            "x,y",
        ] {
            assert!(is_host(ok.as_bytes()), "{ok}");
        }
        for bad in [
            "",
            "x evil",
            "x/evil",
            "x, evil.example",
            "x@evil",
            "x:8a",
            "x:123456",
            "x:80:80",
            "[::1",
            "[zz]",
            "[]",
            ":80",
            "x\\y",
        ] {
            assert!(!is_host(bad.as_bytes()), "{bad:?}");
        }
    }

    #[test]
    fn heads_without_one_valid_host_are_malformed() {
        let head = |target: &[u8], hosts: &[&str]| {
            let mut r = RequestHeader::build("GET", target, None).expect("head");
            for h in hosts {
                r.append_header("host", *h).expect("host");
            }
            r
        };
        assert_eq!(malformed_head(&head(b"/", &["example.com"])), None);
        assert_eq!(
            malformed_head(&head(b"/", &[])),
            Some("missing Host header")
        );
        assert_eq!(
            malformed_head(&head(b"/", &["a", "b"])),
            Some("more than one Host header")
        );
        assert_eq!(
            malformed_head(&head(b"/", &["x/evil"])),
            Some("invalid Host header")
        );
        assert_eq!(
            malformed_head(&head(b"/", &[""])),
            Some("invalid Host header")
        );
        let mut h2 = head(b"/", &[]);
        h2.set_version(http::Version::HTTP_2);
        assert_eq!(malformed_head(&h2), None);
    }
}
