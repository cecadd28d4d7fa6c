//! The response finisher: every answer on a route to the app passes through here on its way to
//! the client, whoever made it: the app (pingora's proxy path, the relay, the tunnel's refusal
//! of an upgrade), php-fpm, a static file, a file the app named with `X-Accel-Redirect` or
//! `X-Sendfile`, and the gateway's own error answers. [`Finish::head`] applies, in this order:
//!
//! 1. from the app: its hop-by-hop fields and nginx's `X-Accel-*` / `X-Sendfile` controls go
//!    (`forwarding::response`);
//! 2. `Strict-Transport-Security`, over TLS only (RFC 6797 §8.1: a browser ignores it over
//!    plain HTTP, and nginx's documentation warns against sending it there), on every status,
//!    the gateway's own errors included, as nginx's `add_header ... always` that HSTS guides
//!    recommend: the app's own error pages carry it, so the gateway's do too, and a browser
//!    whose first visit ends in an error is still told;
//! 3. the compression decision ([`compression::decide`] / [`compression::apply`]);
//! 4. the body's framing on HTTP/1.x ([`frame`]).
//!
//! So a new rule for the answers' headers is a change in [`Finish::head`] alone. The realtime
//! services write their own answers through the seam and are not finished here.

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, StatusCode, Version};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::proxy::Session;
use pingora::{Error, ErrorType, Result};

use crate::accel::{Directive, Internal};
use crate::compression::{self, Encoder, Settings};
use crate::failure::{Fault, Place};
use crate::static_files::{self, Plan, StaticFiles, StaticResponse};

/// Static files are sent in pieces of this size: large enough for few syscalls, small enough
/// that a thousand concurrent downloads stay within tens of MiB.
const STATIC_CHUNK: usize = 64 * 1024;

/// How relaying the app's (or php-fpm's) answer ended.
pub enum Answer {
    /// The answer was relayed to the client.
    Sent,
    /// The app answered with `X-Accel-Redirect` or `X-Sendfile` (this head; its body is not
    /// wanted): the caller serves the file ([`Finish::named_file`]). Nothing was sent to the
    /// client yet.
    NamesAFile(Box<ResponseHeader>),
}

/// What the finisher knows about a request's answers.
#[derive(Clone, Copy, Default)]
pub struct Finish<'a> {
    /// `Strict-Transport-Security`, when it is on and the request came over TLS.
    pub hsts: Option<&'a HeaderValue>,
    /// The route's compression settings (`None`: off for this route).
    pub compression: Option<&'a Settings>,
}

/// Where an answer's head comes from.
#[derive(Clone, Copy)]
pub enum Origin<'a> {
    /// The app or php-fpm.
    App,
    /// A file the gateway serves. On a 304 for the identity file: the `Content-Type` and
    /// `Content-Length` its 200 would carry, so the 304 gets the same `Vary` and (weak) ETag as
    /// the 200 it stands for.
    File(Option<&'a (HeaderValue, u64)>),
}

impl Finish<'_> {
    /// Finish an answer's head just before it is written; `ends` when no body follows the
    /// head whatever it says (the app's answer already ended). Returns how its body goes out.
    pub fn head(
        &self,
        req: &RequestHeader,
        http2: bool,
        resp: &mut ResponseHeader,
        origin: Origin<'_>,
        ends: bool,
    ) -> Result<Out> {
        if let Origin::App = origin {
            crate::forwarding::response(resp);
        }
        stamp(self.hsts, resp)?;
        let mut out = Out(None);
        if let Some(settings) = self.compression {
            match origin {
                Origin::File(Some((content_type, len))) => {
                    let mut full = HeaderMap::new();
                    full.insert(header::CONTENT_TYPE, content_type.clone());
                    full.insert(header::CONTENT_LENGTH, (*len).into());
                    let d = compression::decide(settings, req.into(), StatusCode::OK, &full);
                    compression::apply_not_modified(d, resp)?;
                }
                _ => {
                    let d = compression::decide(settings, req.into(), resp.status, &resp.headers);
                    out.0 = compression::apply(settings, d, resp)?.map(Box::new);
                }
            }
        }
        frame(req, http2, resp, ends)?;
        Ok(out)
    }

    /// An answer of the gateway's own: a short plain text with the reason.
    pub async fn error(&self, session: &mut Session, status: u16, reason: &str) -> Result<()> {
        respond(session, self.hsts, status, reason, None).await
    }

    /// A request refused by a limit: its log line and its answer, with `Retry-After`.
    pub async fn limited(
        &self,
        session: &mut Session,
        refusal: &crate::client_limits::Refusal,
        at: &Place<'_>,
    ) -> Result<()> {
        tracing::warn!(client = ?at.client, route = at.route, status = refusal.status(), reason = %refusal, "request refused by a limit");
        respond(
            session,
            self.hsts,
            refusal.status(),
            &refusal.to_string(),
            refusal.retry_after(),
        )
        .await
    }

    /// The one way a fault ends a request: its log line, then its answer (none when the client
    /// is gone, or when part of an answer went out already). A fault of the client's leaves
    /// the connection unusable (where its next request starts is unknown).
    pub async fn fail(&self, session: &mut Session, fault: &Fault, at: &Place<'_>) -> Result<()> {
        fault.log(at, &session.req_header().uri);
        if let Fault::Client(_) = fault {
            session.set_keepalive(None);
        }
        let status = fault.status();
        if status > 0 && session.response_written().is_none() {
            self.error(session, status, fault.public_reason()).await?;
        }
        Ok(())
    }

    /// Answer from a route's static files when one is there: `Ok(false)` when the request
    /// falls through to the app.
    pub async fn static_file(
        &self,
        session: &mut Session,
        files: &StaticFiles,
        at: &Place<'_>,
    ) -> Result<bool> {
        let req = session.req_header();
        // Only GET and HEAD look for files: other methods go to the app, which may well
        // accept a POST to a path that also has a static file (nginx would answer 405).
        if req.method != Method::GET && req.method != Method::HEAD {
            return Ok(false);
        }
        let path = req.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
        let plan = files.plan(&req.method, path, &req.headers).await;
        match plan {
            Plan::NotFound => Ok(false),
            Plan::Reject { status, reason } => {
                let fault = Fault::Refused {
                    status: status.as_u16(),
                    reason,
                    detail: format!("static file: {reason}"),
                };
                self.fail(session, &fault, at).await?;
                Ok(true)
            }
            Plan::Serve(resp) => {
                self.file(session, resp, None).await?;
                Ok(true)
            }
        }
    }

    /// The app answered with `X-Accel-Redirect` or `X-Sendfile` (`app` is its head; its body
    /// is not wanted): answer with that file, or a 404 when the header names nothing servable.
    pub async fn named_file(
        &self,
        session: &mut Session,
        internal: &Internal,
        app: ResponseHeader,
        directive: Directive,
        at: &Place<'_>,
    ) -> Result<()> {
        let (route, upstream) = (at.route, at.upstream);
        let (location, path, header, value) = match directive {
            Directive::Refuse {
                header,
                value,
                reason,
            } => {
                tracing::warn!(route, upstream, header, value = %value, reason, "the app's file redirect was refused");
                return self.error(session, 404, "no such file").await;
            }
            Directive::Serve {
                location,
                path,
                header,
                value,
            } => (location, path, header, value),
        };
        let req = session.req_header();
        let plan = internal
            .plan(location, &path, &req.method, &req.headers)
            .await;
        let (status, reason) = match plan {
            Plan::Serve(resp) => return self.file(session, resp, Some(app)).await,
            Plan::NotFound => (
                404,
                "no such file (missing, a directory, hidden, or a symlink out of the root)",
            ),
            // A failed If-Match / If-Unmodified-Since is the client's answer to give.
            Plan::Reject { status, reason } if status == StatusCode::PRECONDITION_FAILED => {
                return self.error(session, status.as_u16(), reason).await;
            }
            Plan::Reject { status, reason } if status.is_server_error() => (500, reason),
            Plan::Reject { reason, .. } => (404, reason),
        };
        tracing::warn!(route, upstream, header, value = %value, location = internal.name(location), status, reason, "the app's file redirect names nothing to serve");
        let public = if status == 404 {
            "no such file"
        } else {
            "cannot read the file"
        };
        self.error(session, status, public).await
    }

    /// A file answer planned by [`static_files`]; with `app`, the head of the app's answer that
    /// named it, whose headers are merged in ([`crate::accel::response_head`]).
    async fn file(
        &self,
        session: &mut Session,
        resp: StaticResponse,
        app: Option<ResponseHeader>,
    ) -> Result<()> {
        let mut head = match app {
            Some(mut app) => {
                crate::forwarding::response(&mut app);
                crate::accel::response_head(&app, &resp)?
            }
            None => {
                let mut head = ResponseHeader::build(resp.status, Some(resp.headers.len() + 2))?;
                for (k, v) in resp.headers.iter() {
                    head.append_header(k.clone(), v.clone())?;
                }
                head
            }
        };
        let empty = matches!(resp.body, static_files::Body::Empty);
        // A precompressed sibling already carries its Content-Encoding, so only the identity
        // file is ever compressed here.
        let out = self.head(
            session.req_header(),
            session.is_http2(),
            &mut head,
            Origin::File(resp.not_modified_identity.as_ref()),
            empty,
        )?;
        write_file(session, head, resp.body, out).await
    }
}

/// Write a file answer: its head, then its bytes in chunks, compressed on the way when `out`
/// says so (a file is read as fast as the client takes it: no flush per chunk, the encoder
/// emits full blocks).
async fn write_file(
    session: &mut Session,
    head: ResponseHeader,
    body: static_files::Body,
    mut out: Out,
) -> Result<()> {
    match body {
        static_files::Body::Empty => match out.finish()? {
            None => session.write_response_header(Box::new(head), true).await?,
            Some(end) => {
                session.write_response_header(Box::new(head), false).await?;
                session.write_response_body(Some(end), true).await?;
            }
        },
        static_files::Body::File { path, offset, len } => {
            session.write_response_header(Box::new(head), false).await?;
            let mut reader = static_files::read_chunks(&path, offset, len, STATIC_CHUNK)
                .await
                .map_err(|e| Error::explain(ErrorType::FileReadError, e.to_string()))?;
            loop {
                match reader.next().await {
                    Ok(Some(chunk)) => {
                        let chunk = out.encode(chunk)?;
                        if !chunk.is_empty() {
                            session.write_response_body(Some(chunk), false).await?
                        }
                    }
                    Ok(None) => break,
                    Err(e) => return Error::e_explain(ErrorType::FileReadError, e.to_string()),
                }
            }
            session.write_response_body(out.finish()?, true).await?;
        }
    }
    Ok(())
}

/// How an answer's body goes out: as it comes, or through the encoder the finisher chose.
/// Boxed: every proxied request carries one in its context, which pingora moves with the
/// request's future, and most answers are not compressed.
#[derive(Default)]
pub struct Out(Option<Box<Encoder>>);

impl Out {
    pub fn compressing(&self) -> bool {
        self.0.is_some()
    }

    /// One piece read from the app, flushed whole to the client (a streaming app is not held
    /// back by the encoder); `end` with the last. Empty when there is nothing to send yet.
    pub fn piece(&mut self, data: Option<Bytes>, end: bool) -> Result<Bytes> {
        match self.0.as_mut() {
            Some(e) => e.piece(data.as_deref(), end).map_err(compression::error),
            None => Ok(data.unwrap_or_default()),
        }
    }

    /// Body bytes, compressed without a flush (what comes together goes out together).
    pub fn encode(&mut self, data: Bytes) -> Result<Bytes> {
        match self.0.as_mut() {
            Some(e) => e.encode(&data).map_err(compression::error),
            None => Ok(data),
        }
    }

    /// What the encoder holds, decodable by the client now (nothing when not compressing).
    pub fn flush(&mut self) -> Result<Bytes> {
        match self.0.as_mut() {
            Some(e) => e.flush().map_err(compression::error),
            None => Ok(Bytes::new()),
        }
    }

    /// The end of a compressed body (`None` when not compressing).
    pub fn finish(&mut self) -> Result<Option<Bytes>> {
        match self.0.as_mut() {
            Some(e) => e.finish().map(Some).map_err(compression::error),
            None => Ok(None),
        }
    }
}

/// An answer's framing on HTTP/1.x. One with neither `Content-Length` nor `Transfer-Encoding`
/// goes chunked to an HTTP/1.1 client, so its connection can be kept (PHP sends no length
/// unless the script sets one; an app may answer HTTP/1.0 style; nginx chunk-encodes both,
/// `chunked_transfer_encoding on`). An HTTP/1.0 client cannot read chunked (RFC 9112 §6.1: no
/// `Transfer-Encoding` in an answer to an HTTP/1.0 request), so it gets the body
/// close-delimited, as from nginx. HTTP/2 frames bodies itself; HEAD, 1xx, 204 and 304 answers
/// and answers that `ends` with their head have no body.
pub fn frame(
    req: &RequestHeader,
    http2: bool,
    resp: &mut ResponseHeader,
    ends: bool,
) -> Result<()> {
    if http2 {
        return Ok(());
    }
    if req.version < Version::HTTP_11 {
        if resp.headers.contains_key(header::TRANSFER_ENCODING) {
            resp.remove_header(&header::TRANSFER_ENCODING);
        }
        return Ok(());
    }
    let bodiless = resp.status.is_informational()
        || resp.status == StatusCode::NO_CONTENT
        || resp.status == StatusCode::NOT_MODIFIED;
    if !ends
        && !bodiless
        && req.method != Method::HEAD
        && !resp.headers.contains_key(header::CONTENT_LENGTH)
        && !resp.headers.contains_key(header::TRANSFER_ENCODING)
    {
        resp.set_version(Version::HTTP_11);
        resp.insert_header(header::TRANSFER_ENCODING, "chunked")?;
    }
    Ok(())
}

/// The headers every answer carries, whoever made it (the app, a file, the gateway's own
/// answer, a realtime service): `Strict-Transport-Security` when it is on and the request came
/// over TLS (nginx's `add_header ... always`).
pub fn stamp(hsts: Option<&HeaderValue>, resp: &mut ResponseHeader) -> Result<()> {
    if let Some(h) = hsts {
        resp.insert_header(header::STRICT_TRANSPORT_SECURITY, h.clone())?;
    }
    Ok(())
}

/// Write a short, plain answer with a reason (`hsts`: the header to add, if any).
pub async fn respond(
    session: &mut Session,
    hsts: Option<&HeaderValue>,
    status: u16,
    reason: &str,
    retry_after: Option<u64>,
) -> Result<()> {
    let phrase = StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("Error");
    let body = Bytes::from(format!("{status} {phrase}: {reason}\n"));
    let mut head = ResponseHeader::build(status, Some(4))?;
    head.insert_header(header::CONTENT_TYPE, "text/plain; charset=utf-8")?;
    head.insert_header(header::CONTENT_LENGTH, body.len().to_string())?;
    head.insert_header(header::CACHE_CONTROL, "no-store")?;
    if let Some(seconds) = retry_after {
        head.insert_header(header::RETRY_AFTER, seconds.to_string())?;
    }
    stamp(hsts, &mut head)?;
    let head_only = session.req_header().method == Method::HEAD;
    if status >= 400 && !head_only && !session.is_body_done() {
        // An error in the middle of a request whose body we did not read: do not reuse.
        session.set_keepalive(None);
    }
    session
        .write_response_header(Box::new(head), head_only)
        .await?;
    if !head_only {
        session.write_response_body(Some(body), true).await?;
    }
    if session.is_http2() && status != 408 && !session.is_body_done() {
        // The answer went out before the client finished sending (a 413 on Content-Length):
        // h2 then resets the stream with NO_ERROR, which RFC 9113 section 8.1 allows, but
        // curl (7.88) drops the answer on it and reports no status at all. So the rest of the
        // body is read and dropped for a while, as nginx's lingering close does on HTTP/1.1,
        // and the stream ends cleanly when the client finishes within it. Not after a 408:
        // that client is too slow already.
        let _ = tokio::time::timeout(crate::seam::LINGER, session.drain_request_body()).await;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(head: &str) -> ResponseHeader {
        let mut lines = head.lines();
        let status: u16 = lines
            .next()
            .and_then(|l| l.parse().ok())
            .expect("a status first");
        let mut r = ResponseHeader::build(status, None).expect("head");
        for l in lines {
            let (k, v) = l.split_once(": ").expect("name: value");
            r.append_header(k.to_string(), v).expect("header");
        }
        r
    }

    fn request(method: &str, version: Version) -> RequestHeader {
        let mut r = RequestHeader::build(method, b"/", None).expect("req");
        r.set_version(version);
        r
    }

    fn framed(method: &str, version: Version, http2: bool, head: &str, ends: bool) -> String {
        let mut r = answer(head);
        frame(&request(method, version), http2, &mut r, ends).expect("frame");
        r.headers
            .get(header::TRANSFER_ENCODING)
            .map(|v| v.to_str().unwrap_or("?").to_string())
            .unwrap_or_default()
    }

    #[test]
    fn a_body_of_unknown_length_is_chunked_for_http_1_1_clients_only() {
        let v11 = Version::HTTP_11;
        let plain = "200\ncontent-type: text/plain";
        assert_eq!(framed("GET", v11, false, plain, false), "chunked");
        // HTTP/2 frames the body itself; HEAD has no body; nor has an answer that ended.
        assert_eq!(framed("GET", Version::HTTP_2, true, plain, false), "");
        assert_eq!(framed("HEAD", v11, false, plain, false), "");
        assert_eq!(framed("GET", v11, false, plain, true), "");
        // A length (or the app's own framing) is kept as it is.
        assert_eq!(
            framed("GET", v11, false, "200\ncontent-length: 5", false),
            ""
        );
        let own = "200\ntransfer-encoding: chunked";
        assert_eq!(framed("GET", v11, false, own, false), "chunked");
        // Answers that never have a body.
        for status in ["204", "304", "103"] {
            assert_eq!(framed("GET", v11, false, status, false), "", "{status}");
        }
    }

    #[test]
    fn an_http_1_0_client_never_gets_transfer_encoding() {
        let v10 = Version::HTTP_10;
        assert_eq!(
            framed("GET", v10, false, "200\ncontent-type: text/plain", false),
            ""
        );
        // pingora adds `chunked` to an answer of unknown length before the finisher runs.
        assert_eq!(
            framed("GET", v10, false, "200\ntransfer-encoding: chunked", false),
            ""
        );
    }

    #[test]
    fn the_finisher_applies_every_rule_once() {
        let hsts = HeaderValue::from_static("max-age=600");
        let settings = crate::settings::tests::minimal()
            .compression
            .expect("compression on by default");
        let f = Finish {
            hsts: Some(&hsts),
            compression: Some(&settings),
        };
        let mut req = request("GET", Version::HTTP_11);
        req.insert_header("accept-encoding", "gzip").expect("h");
        let mut resp = answer(
            "200\ncontent-type: text/html\nconnection: x-secret\nx-secret: 1\nx-accel-buffering: no\nx-accel-redirect: /a\nkeep-alive: timeout=5",
        );
        let out = f
            .head(&req, false, &mut resp, Origin::App, false)
            .expect("finished");
        let h = &resp.headers;
        for gone in [
            "connection",
            "x-secret",
            "x-accel-buffering",
            "x-accel-redirect",
            "keep-alive",
        ] {
            assert!(h.get(gone).is_none(), "{gone} reached the client");
        }
        assert_eq!(h["strict-transport-security"], "max-age=600");
        assert_eq!(h["content-encoding"], "gzip");
        assert_eq!(h["vary"], "Accept-Encoding");
        assert_eq!(h["transfer-encoding"], "chunked");
        assert!(out.compressing());

        // Over plain HTTP (no HSTS value), for an HTTP/1.0 client: nothing compressed, no
        // chunked framing, still the `Vary`.
        let f = Finish {
            hsts: None,
            compression: Some(&settings),
        };
        let mut req = request("GET", Version::HTTP_10);
        req.insert_header("accept-encoding", "gzip").expect("h");
        let mut resp = answer("200\ncontent-type: text/html");
        let out = f
            .head(&req, false, &mut resp, Origin::App, false)
            .expect("finished");
        assert!(resp.headers.get("strict-transport-security").is_none());
        assert!(resp.headers.get("transfer-encoding").is_none());
        assert_eq!(resp.headers["vary"], "Accept-Encoding");
        assert!(!out.compressing());
    }

    #[test]
    fn a_files_304_gets_the_vary_and_etag_of_the_200_it_stands_for() {
        let settings = crate::settings::tests::minimal()
            .compression
            .expect("compression on by default");
        let f = Finish {
            hsts: None,
            compression: Some(&settings),
        };
        let mut req = request("GET", Version::HTTP_11);
        req.insert_header("accept-encoding", "br").expect("h");
        let mut resp = answer("304\netag: \"abc\"");
        let identity = (HeaderValue::from_static("text/css"), 50_000u64);
        f.head(&req, false, &mut resp, Origin::File(Some(&identity)), true)
            .expect("finished");
        assert_eq!(resp.headers["vary"], "Accept-Encoding");
        assert_eq!(resp.headers["etag"], "W/\"abc\"");
    }
}
