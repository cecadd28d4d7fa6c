//! On-the-fly response compression, as nginx's `gzip` and `brotli` filters do it: gzip or
//! brotli, chosen from the client's `Accept-Encoding` (q-values honoured), for configured
//! media types above a minimum length, with `Vary: Accept-Encoding` and a weakened ETag.
//!
//! Used for proxied app responses, FastCGI responses and static files without a precompressed
//! sibling; never for the realtime services (their answers are written by the seam and do not
//! pass through here) nor for anything that must reach the client byte for byte or event by
//! event: `text/event-stream`, ranges, bodies that already carry a `Content-Encoding`, and
//! `Cache-Control: no-transform` (RFC 9111 §5.2.2.6).
//!
//! Why not pingora's own `ResponseCompressionCtx` (pingora-core 0.9,
//! `protocols/http/compression`): it ignores q-values (`br;q=0, gzip` would get brotli, and
//! `gzip;q=0` would still get gzip), picks the first listed coding rather than the best one,
//! has a hard-coded type list and a 20-byte minimum, does not look at `no-transform`, and its
//! brotli compressor ends a body with a flush rather than a finish. So the decisions are made
//! here, as pure functions with tests, and the encoders are flate2 (zlib-ng, already linked by
//! pingora) and the `brotli` crate (the version pingora already links, so one copy in the
//! binary).
//!
//! Bodies are compressed as they pass: nothing is buffered beyond the encoders' own state,
//! which is bounded per stream (measured with a counting allocator by `bench --bin
//! compress-cost`: gzip about 380 KiB, brotli level 5 with a 256 KiB window 1.1 to 2.8 MiB,
//! most of it brotli's hash table).

use std::io::Write;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, StatusCode, Version};
use pingora::http::{RequestHeader, ResponseHeader};

/// brotli's window (`lgwin`): 2^18 = 256 KiB. brotli's default of 22 (4 MiB) cost 9.3 MiB per
/// stream in measurements (against 1.9 MiB) and compressed JavaScript and HTML no better than
/// 18 at on-the-fly levels.
const BROTLI_WINDOW_BITS: u32 = 18;
/// Size of brotli's output staging buffer (the crate's own examples use 4 KiB).
const BROTLI_BUFFER: usize = 4096;

/// What the configuration says, ready for per-response decisions (built, with every coding and
/// type parsed, by [`crate::settings`]).
pub use crate::settings::Compression as Settings;
pub use crate::settings::{Coding, TypePattern};

impl Settings {
    /// Whether a `Content-Type` value is one we compress. `text/event-stream` never is, whatever
    /// the list says: compressing it would hold events back in the encoder.
    pub fn compressible_type(&self, content_type: &str) -> bool {
        let essence = content_type.split(';').next().unwrap_or("").trim();
        let Some((main, sub)) = essence.split_once('/') else {
            return false;
        };
        // Runs on every answer: copied only when not already lower case.
        let (main, sub) = (lower(main.trim()), lower(sub.trim()));
        if main == "text" && sub == "event-stream" {
            return false;
        }
        self.types.iter().any(|t| t.matches(&main, &sub))
    }
}

/// `s` in lower case, copied only when it is not already.
fn lower(s: &str) -> std::borrow::Cow<'_, str> {
    match s.bytes().any(|b| b.is_ascii_uppercase()) {
        true => s.to_ascii_lowercase().into(),
        false => s.into(),
    }
}

// ---------------------------------------------------------------------------------------------
// Accept-Encoding.

/// The weight in thousandths (0..=1000) that `Accept-Encoding` gives `coding`; 0 means
/// refused. A coding not listed takes the weight of `*` if present, else it is refused;
/// `x-gzip` counts as `gzip` (RFC 9110 §8.4.1.3). A missing header refuses every coding:
/// RFC 9110 would allow any, but nginx sends identity then, and clients such as plain curl
/// could not read anything else.
pub fn quality(headers: &HeaderMap, coding: &str) -> u16 {
    weight(headers, coding).unwrap_or(0)
}

/// `Some(weight)` when `coding` is listed, or covered by `*`.
fn weight(headers: &HeaderMap, coding: &str) -> Option<u16> {
    let mut explicit: Option<u16> = None;
    let mut star: Option<u16> = None;
    for value in headers.get_all(header::ACCEPT_ENCODING) {
        let Ok(value) = value.to_str() else { continue };
        for item in value.split(',') {
            let mut parts = item.split(';');
            let name = parts.next().unwrap_or("").trim();
            if name.is_empty() {
                continue;
            }
            let mut q = 1000;
            for param in parts {
                if let Some((k, v)) = param.split_once('=') {
                    if k.trim().eq_ignore_ascii_case("q") {
                        // An unreadable weight is taken as a refusal: identity is always a
                        // safe answer.
                        q = parse_q(v.trim()).unwrap_or(0);
                    }
                }
            }
            let slot = if name.eq_ignore_ascii_case(coding)
                || (coding == "gzip" && name.eq_ignore_ascii_case("x-gzip"))
            {
                &mut explicit
            } else if name == "*" {
                &mut star
            } else {
                continue;
            };
            *slot = Some(slot.map_or(q, |old| old.max(q)));
        }
    }
    explicit.or(star)
}

fn parse_q(v: &str) -> Option<u16> {
    let q: f32 = v.parse().ok()?;
    if !q.is_finite() || !(0.0..=1.0).contains(&q) {
        return None;
    }
    // Bounded to 0..=1000 by the check above.
    Some((q * 1000.0).round() as u16)
}

/// The coding to use among `offered`, or `None` for identity.
///
/// The highest weight wins; ties go to the earlier entry of `offered` (brotli before gzip by
/// default: smaller output). Identity competes only when the client names it (or `*`): then
/// `gzip;q=0.5, identity` gets identity, while a plain `gzip;q=0.5` still gets gzip, and an
/// equal weight goes to the compressed coding.
pub fn negotiate(headers: &HeaderMap, offered: &[Coding]) -> Option<Coding> {
    let mut best: Option<(Coding, u16)> = None;
    for c in offered {
        let q = quality(headers, c.token());
        if q > 0 && best.is_none_or(|(_, b)| q > b) {
            best = Some((*c, q));
        }
    }
    let (coding, q) = best?;
    match weight(headers, "identity") {
        Some(identity) if identity > q => None,
        _ => Some(coding),
    }
}

// ---------------------------------------------------------------------------------------------
// Whether to compress one response.

/// The request facts the decision needs.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    pub method: &'a Method,
    pub version: Version,
    pub headers: &'a HeaderMap,
}

impl<'a> From<&'a RequestHeader> for Request<'a> {
    fn from(r: &'a RequestHeader) -> Self {
        Request {
            method: &r.method,
            version: r.version,
            headers: &r.headers,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Not a candidate (type, status, size, already encoded, no-transform): sent as it is,
    /// without `Vary`, since no client would get anything else.
    Untouched,
    /// A candidate, but this request gets identity (no acceptable coding, HEAD, a range,
    /// HTTP/1.0, the client's own `no-transform`): only `Vary: Accept-Encoding`, so caches keep the variants apart (nginx
    /// `gzip_vary on`).
    Identity,
    Compress(Coding),
}

/// nginx's gzip filter only compresses 200, 403 and 404; other statuses are rare, small
/// (redirects) or must not be touched (206, 204, 304).
fn compressible_status(status: StatusCode) -> bool {
    matches!(status.as_u16(), 200 | 403 | 404)
}

fn has_token(headers: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    headers.get_all(name).iter().any(|v| {
        v.to_str().is_ok_and(|v| {
            v.split(',').any(|t| {
                t.split('=')
                    .next()
                    .is_some_and(|t| t.trim().eq_ignore_ascii_case(token))
            })
        })
    })
}

/// Decides for a response about to be sent. Response facts first (they make a response a
/// candidate for every client or for none), then request facts (they only pick the variant).
pub fn decide(
    settings: &Settings,
    req: Request<'_>,
    status: StatusCode,
    resp: &HeaderMap,
) -> Decision {
    if !compressible_status(status) || settings.codings.is_empty() {
        return Decision::Untouched;
    }
    let encoded = resp
        .get(header::CONTENT_ENCODING)
        .is_some_and(|v| !v.as_bytes().trim_ascii().eq_ignore_ascii_case(b"identity"));
    if encoded
        || resp.contains_key(header::CONTENT_RANGE)
        || has_token(resp, header::CACHE_CONTROL, "no-transform")
    {
        return Decision::Untouched;
    }
    let typed = resp
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|t| settings.compressible_type(t));
    if !typed {
        return Decision::Untouched;
    }
    let length = resp
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    // An empty body has nothing to gain, and pingora ends it with the header.
    if length.is_some_and(|n| n == 0 || n < settings.min_length) {
        return Decision::Untouched;
    }

    // A HEAD answer has no body to compress; a range is about the identity bytes (and the
    // gateway never turns a 200 into a 206 itself); HTTP/1.0 has no chunked framing for a
    // body whose length is no longer known (nginx `gzip_http_version 1.1`).
    // A client's own `Cache-Control: no-transform` asks for the content unchanged too.
    if req.method == Method::HEAD
        || req.headers.contains_key(header::RANGE)
        || req.version < Version::HTTP_11
        || has_token(req.headers, header::CACHE_CONTROL, "no-transform")
    {
        return Decision::Identity;
    }
    match negotiate(req.headers, &settings.codings) {
        Some(c) => Decision::Compress(c),
        None => Decision::Identity,
    }
}

/// Adds `Accept-Encoding` to `Vary` unless it is already there (or `Vary: *`), keeping one
/// `Vary` line.
pub fn add_vary(resp: &mut ResponseHeader) -> pingora::Result<()> {
    let existing: Vec<String> = resp
        .headers
        .get_all(header::VARY)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().to_string())
        .filter(|t| !t.is_empty())
        .collect();
    if existing
        .iter()
        .any(|t| t == "*" || t.eq_ignore_ascii_case("accept-encoding"))
    {
        return Ok(());
    }
    let mut value = existing.join(", ");
    if !value.is_empty() {
        value.push_str(", ");
    }
    value.push_str("Accept-Encoding");
    resp.insert_header(header::VARY, value)
}

/// A strong ETag becomes weak (`"x"` -> `W/"x"`): the compressed bytes are not the ones the
/// tag was made for, but the content is the same, so conditional requests still work (RFC
/// 9110 §8.8.1). A malformed tag (not quoted) is dropped, as nginx does.
pub fn weaken_etag(resp: &mut ResponseHeader) -> pingora::Result<()> {
    let Some(etag) = resp.headers.get(header::ETAG) else {
        return Ok(());
    };
    let bytes = etag.as_bytes();
    if bytes.starts_with(b"W/") {
        return Ok(());
    }
    if bytes.starts_with(b"\"") {
        let mut weak = Vec::with_capacity(bytes.len() + 2);
        weak.extend_from_slice(b"W/");
        weak.extend_from_slice(bytes);
        match HeaderValue::from_bytes(&weak) {
            Ok(v) => resp.insert_header(header::ETAG, v)?,
            Err(_) => {
                resp.remove_header(&header::ETAG);
            }
        }
    } else {
        resp.remove_header(&header::ETAG);
    }
    Ok(())
}

/// Rewrites the header for `decision` and returns the encoder for the body, if any.
///
/// When compressing: `Content-Encoding` is set, `Content-Length` (no longer known) and
/// `Accept-Ranges` (ranges are not offered on the compressed form) go, as do digests of the
/// identity bytes, and HTTP/1.1 gets chunked framing (pingora drops `Transfer-Encoding` on
/// HTTP/2 itself).
pub fn apply(
    settings: &Settings,
    decision: Decision,
    resp: &mut ResponseHeader,
) -> pingora::Result<Option<Encoder>> {
    match decision {
        Decision::Untouched => Ok(None),
        Decision::Identity => {
            add_vary(resp)?;
            Ok(None)
        }
        Decision::Compress(coding) => {
            add_vary(resp)?;
            weaken_etag(resp)?;
            resp.remove_header(&header::CONTENT_LENGTH);
            resp.remove_header(&header::ACCEPT_RANGES);
            resp.remove_header("content-md5");
            resp.remove_header("content-digest");
            resp.insert_header(header::CONTENT_ENCODING, coding.token())?;
            resp.insert_header(header::TRANSFER_ENCODING, "chunked")?;
            Ok(Some(Encoder::new(coding, settings)))
        }
    }
}

/// For a 304 about a representation that would have been compressed for this request: the
/// same `Vary` and the same (weak) ETag as the 200 would carry (RFC 9110 §15.4.5).
pub fn apply_not_modified(decision: Decision, resp: &mut ResponseHeader) -> pingora::Result<()> {
    match decision {
        Decision::Untouched => Ok(()),
        Decision::Identity => add_vary(resp),
        Decision::Compress(_) => {
            add_vary(resp)?;
            weaken_etag(resp)
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The encoders.

enum State {
    Gzip(flate2::write::GzEncoder<Vec<u8>>),
    Brotli(Box<brotli::CompressorWriter<Vec<u8>>>),
    Finished,
}

/// One response body's compressor. Output is handed back as it is produced, so memory stays
/// at the encoder's own state whatever the body's size.
pub struct Encoder {
    state: State,
    /// Input was written since the last flush.
    unflushed: bool,
}

impl Encoder {
    pub fn new(coding: Coding, settings: &Settings) -> Encoder {
        let state = match coding {
            Coding::Gzip => State::Gzip(flate2::write::GzEncoder::new(
                Vec::new(),
                flate2::Compression::new(settings.gzip_level.min(9)),
            )),
            Coding::Brotli => State::Brotli(Box::new(brotli::CompressorWriter::new(
                Vec::new(),
                BROTLI_BUFFER,
                settings.brotli_level.min(11),
                BROTLI_WINDOW_BITS,
            ))),
        };
        Encoder {
            state,
            unflushed: false,
        }
    }

    /// Compresses `data`; returns whatever compressed bytes are ready (possibly none: the
    /// encoder keeps a block's worth before emitting it).
    pub fn encode(&mut self, data: &[u8]) -> std::io::Result<Bytes> {
        if data.is_empty() {
            return Ok(Bytes::new());
        }
        self.unflushed = true;
        match &mut self.state {
            State::Gzip(e) => {
                e.write_all(data)?;
                Ok(std::mem::take(e.get_mut()).into())
            }
            State::Brotli(e) => {
                e.write_all(data)?;
                Ok(std::mem::take(e.get_mut()).into())
            }
            State::Finished => Err(finished()),
        }
    }

    /// Everything written so far, decodable by the client now (a zlib sync flush, a brotli
    /// flush). Used at each piece of a body that arrives over time, so a slowly produced
    /// answer reaches the client as it is produced, as nginx does with `proxy_buffering off`;
    /// the cost is a few bytes per flush.
    pub fn flush(&mut self) -> std::io::Result<Bytes> {
        if !self.unflushed {
            return Ok(Bytes::new());
        }
        self.unflushed = false;
        match &mut self.state {
            State::Gzip(e) => {
                e.flush()?;
                Ok(std::mem::take(e.get_mut()).into())
            }
            State::Brotli(e) => {
                e.flush()?;
                Ok(std::mem::take(e.get_mut()).into())
            }
            State::Finished => Err(finished()),
        }
    }

    /// The end of the stream (gzip trailer, brotli last block). Call once.
    pub fn finish(&mut self) -> std::io::Result<Bytes> {
        match std::mem::replace(&mut self.state, State::Finished) {
            State::Gzip(mut e) => {
                e.try_finish()?;
                Ok(std::mem::take(e.get_mut()).into())
            }
            // `into_inner` writes the final block (into a Vec, which cannot fail).
            State::Brotli(e) => Ok(e.into_inner().into()),
            State::Finished => Err(finished()),
        }
    }

    /// `encode` + `flush`, or `encode` + `finish` at the end: one piece of a streamed body.
    pub fn piece(&mut self, data: Option<&[u8]>, end: bool) -> std::io::Result<Bytes> {
        let mut out = self.encode(data.unwrap_or_default())?;
        let tail = if end { self.finish()? } else { self.flush()? };
        if out.is_empty() {
            return Ok(tail);
        }
        if !tail.is_empty() {
            let mut joined = Vec::with_capacity(out.len() + tail.len());
            joined.extend_from_slice(&out);
            joined.extend_from_slice(&tail);
            out = joined.into();
        }
        Ok(out)
    }
}

/// An encoder failure as a pingora error (writing into memory cannot fail, so this is only
/// reached by a bug such as a second `finish`).
pub fn error(e: std::io::Error) -> Box<pingora::Error> {
    pingora::Error::explain(
        pingora::ErrorType::InternalError,
        format!("response compression: {e}"),
    )
}

fn finished() -> std::io::Error {
    std::io::Error::other("compressed stream already finished")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn settings() -> Settings {
        crate::settings::tests::minimal()
            .compression
            .expect("enabled by default")
    }

    fn ae(v: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::ACCEPT_ENCODING, HeaderValue::from_str(v).unwrap());
        h
    }

    const BOTH: &[Coding] = &[Coding::Brotli, Coding::Gzip];

    #[test]
    fn negotiation_follows_q_values() {
        use Coding::*;
        let cases: &[(&str, Option<Coding>)] = &[
            ("gzip, deflate, br", Some(Brotli)),
            ("gzip, deflate, br, zstd", Some(Brotli)),
            ("gzip", Some(Gzip)),
            ("x-gzip", Some(Gzip)),
            ("GZIP", Some(Gzip)),
            ("br;q=0, gzip", Some(Gzip)),
            ("br; q=0.0, gzip;q=0.1", Some(Gzip)),
            ("gzip;q=0.5, br;q=0.4", Some(Gzip)),
            // Ties go to brotli.
            ("gzip;q=0.5, br;q=0.5", Some(Brotli)),
            ("gzip, br", Some(Brotli)),
            ("gzip;q=0", None),
            ("gzip;q=0, br;q=0", None),
            ("*", Some(Brotli)),
            ("*;q=0.5, br;q=0", Some(Gzip)),
            ("*;q=0", None),
            ("identity", None),
            ("deflate", None),
            ("", None),
            // Unreadable or out-of-range weights refuse.
            ("br;q=2, gzip;q=abc", None),
            // Identity named with a higher weight wins; equal weight goes to compression.
            ("gzip;q=0.5, identity", None),
            ("gzip;q=0.5, identity;q=0.5", Some(Gzip)),
            ("gzip;q=1.0, identity; q=0.5, *;q=0", Some(Gzip)),
            ("gzip;q=0.5", Some(Gzip)),
            ("identity;q=0, gzip;q=0.1", Some(Gzip)),
            ("*;q=0.8, gzip;q=0.3", Some(Brotli)),
        ];
        for (header, want) in cases {
            assert_eq!(negotiate(&ae(header), BOTH), *want, "{header:?}");
        }
        assert_eq!(negotiate(&HeaderMap::new(), BOTH), None, "no header");
        // Only what is offered, and the offer order breaks ties.
        assert_eq!(negotiate(&ae("br, gzip"), &[Coding::Gzip]), Some(Gzip));
        assert_eq!(negotiate(&ae("br"), &[Coding::Gzip]), None);
        assert_eq!(
            negotiate(&ae("br, gzip"), &[Coding::Gzip, Coding::Brotli]),
            Some(Gzip)
        );
        // Several header lines are one list.
        let mut h = ae("br;q=0");
        h.append(header::ACCEPT_ENCODING, HeaderValue::from_static("gzip"));
        assert_eq!(negotiate(&h, BOTH), Some(Gzip));
    }

    #[test]
    fn types_match_with_parameters_and_wildcards() {
        let s = settings();
        for t in [
            "text/html",
            "text/html; charset=utf-8",
            "TEXT/HTML;charset=UTF-8",
            " text/css ",
            "text/plain",
            "text/javascript",
            "application/javascript; charset=utf-8",
            "application/json",
            "application/ld+json",
            "image/svg+xml",
            "application/xml",
        ] {
            assert!(s.compressible_type(t), "{t}");
        }
        for t in [
            "text/event-stream",
            "text/event-stream; charset=utf-8",
            "image/png",
            "application/octet-stream",
            "application/zip",
            "font/woff2",
            "",
            "html",
        ] {
            assert!(!s.compressible_type(t), "{t}");
        }
        let custom = Settings {
            types: vec![TypePattern::parse("application/*").unwrap()],
            ..settings()
        };
        assert!(custom.compressible_type("application/x-anything"));
        assert!(!custom.compressible_type("text/html"));
    }

    fn resp(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                header::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    fn decide_for(
        method: &str,
        version: Version,
        req: &[(&str, &str)],
        status: u16,
        r: &[(&str, &str)],
    ) -> Decision {
        let s = settings();
        let method = Method::from_bytes(method.as_bytes()).unwrap();
        let req = resp(req);
        decide(
            &s,
            Request {
                method: &method,
                version,
                headers: &req,
            },
            StatusCode::from_u16(status).unwrap(),
            &resp(r),
        )
    }

    #[test]
    fn eligibility() {
        use Decision::*;
        let v11 = Version::HTTP_11;
        let gzip = &[("accept-encoding", "gzip")][..];
        let html = &[("content-type", "text/html"), ("content-length", "5000")][..];
        assert_eq!(
            decide_for("GET", v11, gzip, 200, html),
            Compress(Coding::Gzip)
        );
        assert_eq!(
            decide_for("GET", Version::HTTP_2, gzip, 200, html),
            Compress(Coding::Gzip)
        );
        assert_eq!(
            decide_for("GET", v11, gzip, 404, html),
            Compress(Coding::Gzip)
        );
        // Unknown length (chunked, streamed): compressed whatever its size.
        assert_eq!(
            decide_for("GET", v11, gzip, 200, &[("content-type", "text/plain")]),
            Compress(Coding::Gzip)
        );
        // At the minimum length: compressed; below: untouched.
        assert_eq!(
            decide_for(
                "GET",
                v11,
                gzip,
                200,
                &[("content-type", "text/plain"), ("content-length", "256")]
            ),
            Compress(Coding::Gzip)
        );
        assert_eq!(
            decide_for(
                "GET",
                v11,
                gzip,
                200,
                &[("content-type", "text/plain"), ("content-length", "255")]
            ),
            Untouched
        );
        for status in [206, 204, 304, 301, 500, 101] {
            assert_eq!(
                decide_for("GET", v11, gzip, status, html),
                Untouched,
                "{status}"
            );
        }
        for extra in [
            ("content-encoding", "gzip"),
            ("content-encoding", "br"),
            ("cache-control", "public, no-transform"),
            ("cache-control", "No-Transform"),
            ("content-range", "bytes 0-9/5000"),
        ] {
            let mut h = html.to_vec();
            h.push(extra);
            assert_eq!(
                decide_for("GET", v11, gzip, 200, &h),
                Untouched,
                "{extra:?}"
            );
        }
        // `Content-Encoding: identity` is no encoding.
        let mut h = html.to_vec();
        h.push(("content-encoding", "identity"));
        assert_eq!(
            decide_for("GET", v11, gzip, 200, &h),
            Compress(Coding::Gzip)
        );
        for t in ["text/event-stream", "image/png"] {
            assert_eq!(
                decide_for("GET", v11, gzip, 200, &[("content-type", t)]),
                Untouched,
                "{t}"
            );
        }
        assert_eq!(
            decide_for("GET", v11, gzip, 200, &[("content-length", "5000")]),
            Untouched,
            "no content type"
        );
        // Candidates that this request gets as identity.
        assert_eq!(decide_for("HEAD", v11, gzip, 200, html), Identity);
        assert_eq!(
            decide_for(
                "GET",
                v11,
                &[("accept-encoding", "gzip"), ("range", "bytes=0-9")],
                200,
                html
            ),
            Identity
        );
        assert_eq!(
            decide_for("GET", Version::HTTP_10, gzip, 200, html),
            Identity
        );
        assert_eq!(
            decide_for(
                "GET",
                v11,
                &[
                    ("accept-encoding", "gzip"),
                    ("cache-control", "no-transform")
                ],
                200,
                html
            ),
            Identity
        );
        assert_eq!(decide_for("GET", v11, &[], 200, html), Identity);
        assert_eq!(
            decide_for("GET", v11, &[("accept-encoding", "gzip;q=0")], 200, html),
            Identity
        );
        // Nothing offered: nothing varies.
        let s = Settings {
            codings: vec![],
            ..settings()
        };
        let h = resp(html);
        let r = resp(gzip);
        let d = decide(
            &s,
            Request {
                method: &Method::GET,
                version: v11,
                headers: &r,
            },
            StatusCode::OK,
            &h,
        );
        assert_eq!(d, Untouched);
    }

    fn header(pairs: &[(&str, &str)]) -> ResponseHeader {
        let mut h = ResponseHeader::build(200, None).unwrap();
        for (k, v) in pairs {
            h.append_header(k.to_string(), *v).unwrap();
        }
        h
    }

    fn get<'a>(h: &'a ResponseHeader, name: &str) -> Option<&'a str> {
        h.headers.get(name).and_then(|v| v.to_str().ok())
    }

    #[test]
    fn headers_when_compressing() {
        let s = settings();
        let mut h = header(&[
            ("content-type", "text/html"),
            ("content-length", "5000"),
            ("accept-ranges", "bytes"),
            ("etag", "\"abc\""),
            ("vary", "Origin"),
        ]);
        let enc = apply(&s, Decision::Compress(Coding::Brotli), &mut h).unwrap();
        assert!(enc.is_some());
        assert_eq!(get(&h, "content-encoding"), Some("br"));
        assert_eq!(get(&h, "content-length"), None);
        assert_eq!(get(&h, "accept-ranges"), None);
        assert_eq!(get(&h, "transfer-encoding"), Some("chunked"));
        assert_eq!(get(&h, "etag"), Some("W/\"abc\""));
        assert_eq!(get(&h, "vary"), Some("Origin, Accept-Encoding"));
        assert_eq!(h.headers.get_all("vary").iter().count(), 1);

        // Already weak stays; malformed goes; Vary already listing it is left alone.
        let mut h = header(&[("etag", "W/\"abc\""), ("vary", "accept-encoding")]);
        apply(&s, Decision::Compress(Coding::Gzip), &mut h).unwrap();
        assert_eq!(get(&h, "etag"), Some("W/\"abc\""));
        assert_eq!(get(&h, "vary"), Some("accept-encoding"));
        let mut h = header(&[("etag", "abc"), ("vary", "*")]);
        apply(&s, Decision::Compress(Coding::Gzip), &mut h).unwrap();
        assert_eq!(get(&h, "etag"), None);
        assert_eq!(get(&h, "vary"), Some("*"));
    }

    #[test]
    fn headers_when_not_compressing() {
        let s = settings();
        let mut h = header(&[("content-length", "5000"), ("etag", "\"abc\"")]);
        assert!(apply(&s, Decision::Identity, &mut h).unwrap().is_none());
        assert_eq!(get(&h, "vary"), Some("Accept-Encoding"));
        assert_eq!(get(&h, "etag"), Some("\"abc\""));
        assert_eq!(get(&h, "content-length"), Some("5000"));
        let mut h = header(&[("content-length", "5000"), ("etag", "\"abc\"")]);
        assert!(apply(&s, Decision::Untouched, &mut h).unwrap().is_none());
        assert_eq!(get(&h, "vary"), None);

        let mut h = ResponseHeader::build(304, None).unwrap();
        h.insert_header("etag", "\"abc\"").unwrap();
        apply_not_modified(Decision::Compress(Coding::Gzip), &mut h).unwrap();
        assert_eq!(get(&h, "etag"), Some("W/\"abc\""));
        assert_eq!(get(&h, "vary"), Some("Accept-Encoding"));
    }

    /// Input that compresses well but not trivially.
    fn text(n: usize) -> Vec<u8> {
        let mut v = Vec::new();
        let mut i = 0u64;
        while v.len() < n {
            v.extend_from_slice(
                format!(
                    "<li data-id=\"{i}\">item {} of the list</li>\n",
                    i * 7919 % 1000
                )
                .as_bytes(),
            );
            i += 1;
        }
        v.truncate(n);
        v
    }

    fn decode(coding: Coding, data: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        match coding {
            Coding::Gzip => {
                flate2::read::GzDecoder::new(data)
                    .read_to_end(&mut out)
                    .expect("valid gzip");
            }
            Coding::Brotli => {
                brotli::Decompressor::new(data, 4096)
                    .read_to_end(&mut out)
                    .expect("valid brotli");
            }
        }
        out
    }

    #[test]
    fn round_trip_in_pieces() {
        let s = settings();
        let input = text(300_000);
        for coding in [Coding::Gzip, Coding::Brotli] {
            for flush in [false, true] {
                let mut e = Encoder::new(coding, &s);
                let mut out = Vec::new();
                for chunk in input.chunks(7000) {
                    out.extend_from_slice(&e.encode(chunk).unwrap());
                    if flush {
                        out.extend_from_slice(&e.flush().unwrap());
                    }
                }
                out.extend_from_slice(&e.finish().unwrap());
                assert!(out.len() < input.len() / 4, "{coding:?}: {}", out.len());
                assert_eq!(decode(coding, &out), input, "{coding:?} flush={flush}");
                assert!(e.finish().is_err(), "finishing twice is an error");
                assert!(e.encode(b"x").is_err());
            }
        }
    }

    #[test]
    fn a_flushed_piece_is_decodable_before_the_end() {
        let s = settings();
        for coding in [Coding::Gzip, Coding::Brotli] {
            let mut e = Encoder::new(coding, &s);
            let first = e.piece(Some(b"tick 1\n"), false).unwrap();
            assert!(!first.is_empty(), "{coding:?}");
            // A streaming decoder sees the whole first piece before the stream ends.
            let seen = match coding {
                Coding::Gzip => {
                    let mut d = flate2::write::GzDecoder::new(Vec::new());
                    d.write_all(&first).unwrap();
                    d.flush().unwrap();
                    d.get_ref().clone()
                }
                Coding::Brotli => {
                    let mut d = brotli::DecompressorWriter::new(Vec::new(), 4096);
                    d.write_all(&first).unwrap();
                    d.flush().unwrap();
                    d.get_ref().clone()
                }
            };
            assert_eq!(seen, b"tick 1\n", "{coding:?}");
            let rest = e.piece(Some(b"tick 2\n"), true).unwrap();
            let mut all = first.to_vec();
            all.extend_from_slice(&rest);
            assert_eq!(decode(coding, &all), b"tick 1\ntick 2\n", "{coding:?}");
            // Nothing new, nothing to flush.
            let mut e = Encoder::new(coding, &s);
            assert!(e.flush().unwrap().is_empty());
            let end = e.piece(None, true).unwrap();
            assert_eq!(decode(coding, &end), b"", "{coding:?} empty body");
        }
    }
}
