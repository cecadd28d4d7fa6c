//! `X-Accel-Redirect` (nginx) and `X-Sendfile` (Apache mod_xsendfile, lighttpd): the app checks
//! who may download what, then answers with a header naming a file instead of sending the
//! bytes itself, and the gateway serves the file (Range, ETag, HEAD) from an internal location.
//!
//! * `X-Accel-Redirect: /protected/report.txt` names a URL under `internal_locations[].path`;
//!   it is percent-decoded once (Rack and Symfony encode it) and mapped onto that location's
//!   `root`. `X-Sendfile: /srv/app/storage/report.txt` names a file by its absolute path,
//!   which must lie in some location's `root`.
//! * A value with a `.` or `..` segment, an encoded `/` or `\`, a NUL, a bad escape, or one
//!   under no location is refused; so is a file that is missing, a directory, hidden
//!   (`.name`), or a symlink out of the root (the static file planner's own rules). Every
//!   refusal is a 404 with a log line naming the header, its value and the reason: nginx
//!   answers an unsafe `X-Accel-Redirect` with 404 ("unsafe URI ... was detected") and so
//!   does mod_xsendfile for a path outside `XSendFilePath`, and a 404 tells a prober nothing
//!   about what exists. (A file that cannot be read is a 500, a failed `If-Match` a 412.)
//! * The status comes from the file (200, 206, 304, 416), never from the app, as in nginx.
//!   The app's own headers are kept (`Content-Type`, `Content-Disposition`, `Cache-Control`,
//!   `Set-Cookie`, and unlike nginx also the rest, such as `Content-Security-Policy`), except
//!   those that described its dropped body (`Content-Length`, `ETag`, ...), which the file's
//!   replace. With no `Content-Type` from the app, the file's type is guessed from its name.
//! * Requests from outside never reach an internal location: [`Internal::hides`] is checked
//!   before routing, on the decoded path.
//!
//! Nothing here talks to pingora's session: the finisher (`finish::Finish::named_file`) writes
//! the answer, for HTTP and FastCGI upstreams alike.

use std::path::{Component, Path};

use http::header::{HeaderMap, HeaderName};
use http::{HeaderValue, Method, StatusCode};
use percent_encoding::{percent_decode_str, utf8_percent_encode, NON_ALPHANUMERIC};
use pingora::http::ResponseHeader;

use crate::forwarding::Added;
use crate::settings::InternalLocation;
use crate::static_files::{Plan, StaticError, StaticFiles, StaticOptions, StaticResponse};

/// What Rack::Sendfile and Symfony read to learn that the proxy serves `X-Accel-Redirect`, and
/// under which roots (nginx setups send them with `proxy_set_header`).
const X_SENDFILE_TYPE: Added = Added::new("x-sendfile-type", "X-Sendfile-Type");
const X_ACCEL_MAPPING: Added = Added::new("x-accel-mapping", "X-Accel-Mapping");

pub const X_ACCEL_REDIRECT: &str = "x-accel-redirect";
pub const X_SENDFILE: &str = "x-sendfile";

/// How much of a refused header value is put in the log line.
const LOGGED_VALUE: usize = 200;

/// App headers that described the app's own body, which is dropped; the file's replace them.
/// (The `X-Accel-*` and `X-Sendfile` controls are taken off every answer from the app by the
/// finisher, before this merge.)
const REPLACED: &[&str] = &[
    "content-length",
    "content-encoding",
    "content-range",
    "transfer-encoding",
    "accept-ranges",
    "etag",
    "last-modified",
];

/// Only meaningful next to a body: not sent with a 304 or a 416.
const ABOUT_THE_BODY: &[&str] = &["content-type", "content-disposition", "content-language"];

struct Location {
    /// `internal_locations[i]`, for log lines.
    name: String,
    /// The path's segments: `/protected/` is `["protected"]`.
    segments: Vec<String>,
    /// The root's components as configured (made absolute) and canonicalised: `X-Sendfile`
    /// may name a file through either.
    roots: Vec<Vec<String>>,
    files: StaticFiles,
}

/// Every internal location, built once at start.
pub struct Internal {
    locations: Vec<Location>,
    /// `X-Accel-Mapping` for the app: `<root>/=<path>` per location and root spelling.
    mapping: Option<http::HeaderValue>,
    /// The app's paths only the gateway itself asks (the events to the app), by segments:
    /// hidden from outside as the locations are.
    callbacks: Vec<Vec<String>>,
}

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("internal_locations[{index}].root: {source}")]
    Root { index: usize, source: StaticError },
}

/// A path's segments: `/protected/` is `["protected"]`.
fn segments_of(path: &str) -> Vec<String> {
    path.split('/')
        .filter(|s| !s.is_empty())
        .map(String::from)
        .collect()
}

/// What the app's answer asks for.
#[derive(Debug, PartialEq, Eq)]
pub enum Directive {
    /// Serve this file: `path` is percent-encoded and relative to the location's root.
    Serve {
        location: usize,
        path: String,
        header: &'static str,
        value: String,
    },
    /// The header names nothing the gateway may serve.
    Refuse {
        header: &'static str,
        value: String,
        reason: &'static str,
    },
}

impl Internal {
    pub fn from_config(locations: &[InternalLocation]) -> Result<Internal, BuildError> {
        let mut out = Vec::new();
        for (index, loc) in locations.iter().enumerate() {
            let files = StaticFiles::new(StaticOptions {
                root: loc.root.clone(),
                // A directory is never a file to hand out, and never listed.
                index: Vec::new(),
                cache_control: None,
                precompressed: false,
            })
            .map_err(|source| BuildError::Root { index, source })?;
            let configured = std::path::absolute(&loc.root).unwrap_or_else(|_| loc.root.clone());
            let mut roots = vec![components(&configured)];
            let canonical = components(files.root());
            if canonical != roots[0] {
                roots.push(canonical);
            }
            out.push(Location {
                name: format!("internal_locations[{index}]"),
                segments: segments_of(&loc.path),
                roots,
                files,
            });
        }
        let mapping = out
            .iter()
            .zip(locations)
            .flat_map(|(l, c)| {
                l.roots
                    .iter()
                    .map(move |r| format!("/{}/={}", r.join("/"), c.path))
            })
            .collect::<Vec<_>>()
            .join(", ");
        Ok(Internal {
            locations: out,
            mapping: http::HeaderValue::from_str(&mapping)
                .ok()
                .filter(|_| !mapping.is_empty()),
            callbacks: Vec::new(),
        })
    }

    /// Hides `path` (and below) from outside too: a route of the app only the gateway may
    /// request. The events to the app name their sender in the body (`user`), which the app
    /// believes because only the gateway can send it there.
    pub fn hiding(mut self, path: Option<&str>) -> Internal {
        if let Some(path) = path {
            self.callbacks.push(segments_of(path));
        }
        self
    }

    /// Tell the app how to ask (nginx setups do it with `proxy_set_header`): Rack::Sendfile
    /// (Rails) and Symfony's BinaryFileResponse (Laravel) read `X-Sendfile-Type` and
    /// `X-Accel-Mapping` from the request, and answer with `X-Accel-Redirect` for files under
    /// a mapped root (other files are sent as before). A client's own values are always
    /// dropped: a forged mapping would let it choose which internal file the app names.
    pub fn tell_the_app(&self, req: &mut pingora::http::RequestHeader) {
        match &self.mapping {
            Some(m) => {
                X_SENDFILE_TYPE.set(req, HeaderValue::from_static("X-Accel-Redirect"));
                X_ACCEL_MAPPING.set(req, m.clone());
            }
            None => {
                req.remove_header(&X_SENDFILE_TYPE.name);
                req.remove_header(&X_ACCEL_MAPPING.name);
            }
        }
    }

    /// A request from outside for `path` (as routed: dot segments resolved, still
    /// percent-encoded) falls under an internal location and must be answered 404.
    /// Decoded here, so `/prot%65cted/x` and `/%2Fprotected/x` are hidden as well.
    pub fn hides(&self, path: &str) -> bool {
        if self.locations.is_empty() && self.callbacks.is_empty() {
            return false;
        }
        let decoded = percent_decode_str(path).decode_utf8_lossy();
        let mut segments: Vec<&str> = Vec::new();
        for seg in decoded.split(['/', '\\']) {
            match seg {
                "" | "." => {}
                ".." => {
                    segments.pop();
                }
                s => segments.push(s),
            }
        }
        let under = |hidden: &Vec<String>| {
            segments.len() >= hidden.len() && segments.iter().zip(hidden).all(|(a, b)| a == b)
        };
        self.locations.iter().any(|l| under(&l.segments)) || self.callbacks.iter().any(under)
    }

    /// `None` when the app's answer names no file (neither header is present).
    pub fn directive(&self, app: &ResponseHeader) -> Option<Directive> {
        let (header, values) = [X_ACCEL_REDIRECT, X_SENDFILE]
            .into_iter()
            .map(|h| (h, app.headers.get_all(h)))
            .find(|(_, v)| v.iter().next().is_some())?;
        let mut values = values.iter();
        let raw = values.next()?.as_bytes();
        let mut shown = String::from_utf8_lossy(raw).into_owned();
        if shown.len() > LOGGED_VALUE {
            let mut end = LOGGED_VALUE;
            while !shown.is_char_boundary(end) {
                end -= 1;
            }
            shown.truncate(end);
            shown.push_str("...");
        }
        let refuse = |reason| Directive::Refuse {
            header,
            value: shown.clone(),
            reason,
        };
        if values.next().is_some() {
            return Some(refuse("the header is repeated"));
        }
        let found = if header == X_ACCEL_REDIRECT {
            parse_accel_uri(raw).and_then(|segs| self.by_url(&segs))
        } else {
            parse_sendfile_path(raw).and_then(|segs| self.by_file(&segs))
        };
        Some(match found {
            Ok((location, path)) => Directive::Serve {
                location,
                path,
                header,
                value: shown,
            },
            Err(reason) => refuse(reason),
        })
    }

    /// The location's name in the configuration (`internal_locations[0]`).
    pub fn name(&self, location: usize) -> &str {
        self.locations
            .get(location)
            .map(|l| l.name.as_str())
            .unwrap_or("-")
    }

    /// What to answer for the file. Ranges and validators are the client's; anything but
    /// HEAD is planned as a GET (nginx's static module serves a POST's redirect as well).
    pub async fn plan(
        &self,
        location: usize,
        path: &str,
        method: &Method,
        headers: &HeaderMap,
    ) -> Plan {
        let Some(loc) = self.locations.get(location) else {
            return Plan::NotFound;
        };
        let method = if method == Method::HEAD {
            Method::HEAD
        } else {
            Method::GET
        };
        loc.files.plan(&method, path, headers).await
    }

    fn by_url(&self, segments: &[String]) -> Result<(usize, String), &'static str> {
        self.locations
            .iter()
            .enumerate()
            .find(|(_, l)| segments.starts_with(&l.segments))
            .map(|(i, l)| (i, &segments[l.segments.len()..]))
            .ok_or("not under any internal location")
            .and_then(|(i, rest)| Ok((i, relative(rest)?)))
    }

    fn by_file(&self, segments: &[String]) -> Result<(usize, String), &'static str> {
        self.locations
            .iter()
            .enumerate()
            .find_map(|(i, l)| {
                l.roots
                    .iter()
                    .find(|r| segments.starts_with(r))
                    .map(|r| (i, &segments[r.len()..]))
            })
            .ok_or("not inside the root of any internal location")
            .and_then(|(i, rest)| Ok((i, relative(rest)?)))
    }
}

/// `/a/b` with every segment encoded, for the static file planner (which decodes it once).
fn relative(rest: &[String]) -> Result<String, &'static str> {
    if rest.is_empty() {
        return Err("names the location itself, not a file in it");
    }
    Ok(rest
        .iter()
        .map(|s| format!("/{}", utf8_percent_encode(s, NON_ALPHANUMERIC)))
        .collect())
}

fn components(path: &Path) -> Vec<String> {
    path.components()
        .filter_map(|c| match c {
            Component::Normal(s) => Some(s.to_string_lossy().into_owned()),
            _ => None,
        })
        .collect()
}

/// An `X-Accel-Redirect` value: an absolute URL path, percent-decoded once; a `?query` is
/// ignored (it means nothing to a file). Stricter than nginx, which decodes `%2F` into a
/// separator: an app never needs to encode one.
pub fn parse_accel_uri(raw: &[u8]) -> Result<Vec<String>, &'static str> {
    let value = std::str::from_utf8(raw).map_err(|_| "not ASCII")?.trim();
    if value.starts_with('@') {
        return Err("named locations (@name) are not supported");
    }
    let path = value.split_once('?').map_or(value, |(p, _)| p);
    if !path.starts_with('/') {
        return Err("not an absolute path");
    }
    let bytes = path.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let byte = bytes
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or("malformed percent-encoding")?;
            match byte {
                b'/' | b'\\' => return Err("an encoded slash or backslash"),
                0 => return Err("a NUL byte"),
                _ => {}
            }
            i += 3;
        } else {
            i += 1;
        }
    }
    let decoded = percent_decode_str(path)
        .decode_utf8()
        .map_err(|_| "not UTF-8 once decoded")?;
    plain_segments(&decoded)
}

/// An `X-Sendfile` value: an absolute file path, taken literally (no decoding).
pub fn parse_sendfile_path(raw: &[u8]) -> Result<Vec<String>, &'static str> {
    let path = std::str::from_utf8(raw).map_err(|_| "not UTF-8")?;
    if !path.starts_with('/') {
        return Err("not an absolute file path");
    }
    plain_segments(path)
}

/// The segments of a path that must not move: any `.` or `..` is refused rather than
/// resolved, since an app has no reason to send one.
fn plain_segments(path: &str) -> Result<Vec<String>, &'static str> {
    if path.contains('\0') {
        return Err("a NUL byte");
    }
    if path.contains('\\') {
        return Err("a backslash");
    }
    if path.chars().any(char::is_control) {
        return Err("a control character");
    }
    let mut out = Vec::new();
    for seg in path.split('/') {
        match seg {
            "" => {}
            "." | ".." => return Err("a . or .. segment"),
            s => out.push(s.to_string()),
        }
    }
    Ok(out)
}

/// The answer's head: the file's status and headers, with the app's headers merged in.
pub fn response_head(
    app: &ResponseHeader,
    file: &StaticResponse,
) -> pingora::Result<ResponseHeader> {
    let mut head =
        ResponseHeader::build(file.status, Some(file.headers.len() + app.headers.len()))?;
    let with_body = matches!(file.status, StatusCode::OK | StatusCode::PARTIAL_CONTENT);
    let mut names: Vec<&HeaderName> = Vec::new();
    for name in app.headers.keys() {
        let n = name.as_str();
        if REPLACED.contains(&n) || (!with_body && ABOUT_THE_BODY.contains(&n)) {
            continue;
        }
        names.push(name);
    }
    for (name, value) in file.headers.iter() {
        // The app's Content-Type wins over the guessed one, as in nginx.
        if !names.contains(&name) {
            head.append_header(name.clone(), value.clone())?;
        }
    }
    for name in names {
        for value in app.headers.get_all(name) {
            head.append_header(name.clone(), value.clone())?;
        }
    }
    Ok(head)
}

/// Whether an app's answer names a file (either header).
pub fn names_a_file(app: &ResponseHeader) -> bool {
    // Names, not strings: every answer from the app is asked (a lookup by string parses it).
    static NAMES: [http::HeaderName; 2] = [
        http::HeaderName::from_static(X_ACCEL_REDIRECT),
        http::HeaderName::from_static(X_SENDFILE),
    ];
    NAMES.iter().any(|name| app.headers.contains_key(name))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::static_files::Body;
    use http::header;
    use std::path::PathBuf;

    fn segs(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn accel_values_are_decoded_once_and_never_climb() {
        assert_eq!(
            parse_accel_uri(b"/protected/report.txt"),
            Ok(segs(&["protected", "report.txt"]))
        );
        assert_eq!(
            parse_accel_uri(b"/protected/My%20Report%3F.txt?dl=1"),
            Ok(segs(&["protected", "My Report?.txt"]))
        );
        assert_eq!(
            parse_accel_uri(b" /protected//a/b "),
            Ok(segs(&["protected", "a", "b"]))
        );
        // Double encoding stays literal: a file named "%2e%2e", not a parent directory.
        assert_eq!(
            parse_accel_uri(b"/protected/%252e%252e/secret"),
            Ok(segs(&["protected", "%2e%2e", "secret"]))
        );
        for (bad, why) in [
            (&b"/protected/../secret"[..], "a . or .. segment"),
            (b"/protected/./report.txt", "a . or .. segment"),
            (b"/protected/%2e%2e/secret", "a . or .. segment"),
            (b"/protected/%2E%2E/secret", "a . or .. segment"),
            (b"/protected/..", "a . or .. segment"),
            (b"/protected/..%2fsecret", "an encoded slash or backslash"),
            (b"/protected%2F..%2Fsecret", "an encoded slash or backslash"),
            (b"/protected/..%5csecret", "an encoded slash or backslash"),
            (b"/protected/a%00.txt", "a NUL byte"),
            (b"/protected/%zz", "malformed percent-encoding"),
            (b"/protected/%2", "malformed percent-encoding"),
            (b"/protected/%ff", "not UTF-8 once decoded"),
            (b"/protected/a\\..\\b", "a backslash"),
            (b"protected/report.txt", "not an absolute path"),
            (b"@files", "named locations (@name) are not supported"),
            (b"", "not an absolute path"),
        ] {
            assert_eq!(
                parse_accel_uri(bad),
                Err(why),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn sendfile_values_are_literal_absolute_paths() {
        assert_eq!(
            parse_sendfile_path(b"/srv/files/a%20b.txt"),
            Ok(segs(&["srv", "files", "a%20b.txt"]))
        );
        assert_eq!(
            parse_sendfile_path(b"/srv/files/../etc/passwd"),
            Err("a . or .. segment")
        );
        assert_eq!(
            parse_sendfile_path(b"files/report.txt"),
            Err("not an absolute file path")
        );
        assert_eq!(parse_sendfile_path(b"/srv/\xff.txt"), Err("not UTF-8"));
    }

    struct Tree(PathBuf);
    impl Drop for Tree {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn tree(tag: &str) -> (Tree, Internal) {
        let dir = std::env::temp_dir().join(format!("accel-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("files/sub")).expect("dir");
        std::fs::create_dir_all(dir.join("other")).expect("dir");
        std::fs::write(dir.join("files/report.txt"), "report").expect("write");
        std::fs::write(dir.join("files/sub/My Report.txt"), "mine").expect("write");
        std::fs::write(dir.join("secret.txt"), "secret").expect("write");
        std::os::unix::fs::symlink("../secret.txt", dir.join("files/escape.txt")).expect("link");
        let internal = Internal::from_config(&[
            InternalLocation {
                path: "/protected/".into(),
                root: dir.join("files"),
            },
            InternalLocation {
                path: "/other/stuff/".into(),
                root: dir.join("other"),
            },
        ])
        .expect("build");
        (Tree(dir), internal)
    }

    fn head(pairs: &[(&str, &[u8])]) -> ResponseHeader {
        let mut h = ResponseHeader::build(200, None).expect("head");
        for (k, v) in pairs {
            h.append_header(k.to_string(), *v).expect("header");
        }
        h
    }

    #[test]
    fn outside_requests_never_reach_an_internal_location() {
        let (_t, i) = tree("hides");
        for p in [
            "/protected/report.txt",
            "/protected/",
            "/protected",
            "/prot%65cted/report.txt",
            "/%2Fprotected/report.txt",
            "/protected%2Freport.txt",
            "/x/%2e%2e/protected/report.txt",
            "/other/stuff/a",
        ] {
            assert!(i.hides(p), "{p} should be hidden");
        }
        for p in [
            "/",
            "/protectedx",
            "/public/protected/x",
            "/other/a",
            "/other",
        ] {
            assert!(!i.hides(p), "{p} should not be hidden");
        }
        assert!(!Internal {
            locations: vec![],
            mapping: None,
            callbacks: Vec::new(),
        }
        .hides("/protected/x"));
    }

    #[test]
    fn the_apps_callback_routes_are_hidden_however_spelled() {
        let none = Internal {
            locations: vec![],
            mapping: None,
            callbacks: Vec::new(),
        };
        let i = none.hiding(Some("/realtime/events"));
        for p in [
            "/realtime/events",
            "/realtime/events/",
            "/realtime/events/x",
            "//realtime//events",
            "/realtime/%65vents",
            "/realtime%2Fevents",
            "/x/../realtime/events",
        ] {
            assert!(i.hides(p), "{p} should be hidden");
        }
        for p in ["/realtime", "/realtime/eventsx", "/realtime/auth", "/"] {
            assert!(!i.hides(p), "{p} should not be hidden");
        }
        assert!(!i.hiding(None).hides("/realtime/auth"));
    }

    #[test]
    fn directives_map_onto_a_location() {
        let (t, i) = tree("directive");
        assert_eq!(i.directive(&head(&[("content-type", b"text/plain")])), None);
        let serve = |location, path: &str, header, value: &str| Directive::Serve {
            location,
            path: path.into(),
            header,
            value: value.into(),
        };
        assert_eq!(
            i.directive(&head(&[("x-accel-redirect", b"/protected/report.txt")])),
            Some(serve(
                0,
                "/report%2Etxt",
                X_ACCEL_REDIRECT,
                "/protected/report.txt"
            ))
        );
        assert_eq!(
            i.directive(&head(&[("x-accel-redirect", b"/other/stuff/a/b")])),
            Some(serve(1, "/a/b", X_ACCEL_REDIRECT, "/other/stuff/a/b"))
        );
        let file = t.0.join("files/sub/My Report.txt");
        let file = file.to_str().expect("utf-8");
        assert_eq!(
            i.directive(&head(&[("x-sendfile", file.as_bytes())])),
            Some(serve(0, "/sub/My%20Report%2Etxt", X_SENDFILE, file))
        );
        let refused = |h: &[(&str, &[u8])]| match i.directive(&head(h)) {
            Some(Directive::Refuse { reason, .. }) => reason,
            other => panic!("expected a refusal, got {other:?}"),
        };
        assert_eq!(
            refused(&[("x-accel-redirect", b"/public/report.txt")]),
            "not under any internal location"
        );
        assert_eq!(
            refused(&[("x-accel-redirect", b"/protected/")]),
            "names the location itself, not a file in it"
        );
        assert_eq!(
            refused(&[("x-accel-redirect", b"/protected/../secret.txt")]),
            "a . or .. segment"
        );
        assert_eq!(
            refused(&[("x-sendfile", b"/etc/passwd")]),
            "not inside the root of any internal location"
        );
        let outside = t.0.join("secret.txt");
        assert_eq!(
            refused(&[("x-sendfile", outside.to_str().expect("utf-8").as_bytes())]),
            "not inside the root of any internal location"
        );
        assert_eq!(
            refused(&[
                ("x-accel-redirect", b"/protected/report.txt"),
                ("x-accel-redirect", b"/protected/other.txt")
            ]),
            "the header is repeated"
        );
        // X-Accel-Redirect wins when both are sent.
        assert!(matches!(
            i.directive(&head(&[
                ("x-sendfile", b"/etc/passwd"),
                ("x-accel-redirect", b"/protected/report.txt")
            ])),
            Some(Directive::Serve { location: 0, .. })
        ));
    }

    #[test]
    fn the_app_is_told_the_mapping_and_a_clients_is_dropped() {
        let (t, i) = tree("mapping");
        let mut req = pingora::http::RequestHeader::build("GET", b"/x", None).expect("req");
        req.insert_header("x-accel-mapping", "/=/protected/")
            .expect("h");
        req.insert_header("x-sendfile-type", "X-Sendfile")
            .expect("h");
        i.tell_the_app(&mut req);
        let mapping = req.headers["x-accel-mapping"].to_str().expect("ascii");
        // (Canonical spellings are added when the temporary folder goes through a symlink.)
        for (dir, path) in [("files", "/protected/"), ("other", "/other/stuff/")] {
            let root = std::path::absolute(t.0.join(dir)).expect("absolute");
            let pair = format!("{}/={path}", root.display());
            assert!(
                mapping.split(", ").any(|m| m == pair),
                "{pair} in {mapping}"
            );
        }
        assert!(
            mapping.split(", ").all(|m| m != "/=/protected/"),
            "{mapping}"
        );
        assert_eq!(req.headers["x-sendfile-type"], "X-Accel-Redirect");

        let none = Internal::from_config(&[]).expect("empty");
        none.tell_the_app(&mut req);
        assert!(req.headers.get("x-accel-mapping").is_none());
        assert!(req.headers.get("x-sendfile-type").is_none());
    }

    #[tokio::test]
    async fn the_planner_keeps_files_inside_the_root() {
        let (_t, i) = tree("plan");
        let get = |path: &'static str| {
            let i = &i;
            async move { i.plan(0, path, &Method::POST, &HeaderMap::new()).await }
        };
        match get("/report%2Etxt").await {
            Plan::Serve(r) => {
                assert_eq!(r.status, StatusCode::OK);
                assert!(matches!(r.body, Body::File { len: 6, .. }));
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(get("/escape%2Etxt").await, Plan::NotFound));
        assert!(matches!(get("/sub").await, Plan::NotFound));
        assert!(matches!(get("/missing").await, Plan::NotFound));
    }

    #[tokio::test]
    async fn the_apps_headers_are_merged_with_the_files() {
        let (_t, i) = tree("merge");
        let mut app = head(&[
            ("content-type", b"application/pdf"),
            ("content-disposition", b"attachment; filename=\"r.pdf\""),
            ("content-length", b"0"),
            ("etag", b"\"app\""),
            ("set-cookie", b"a=1"),
            ("set-cookie", b"b=2"),
            ("cache-control", b"private"),
            ("x-content-type-options", b"nosniff"),
            ("x-accel-redirect", b"/protected/report.txt"),
            ("x-accel-buffering", b"no"),
        ]);
        let Plan::Serve(file) = i
            .plan(0, "/report.txt", &Method::GET, &HeaderMap::new())
            .await
        else {
            panic!("no file")
        };
        // As the finisher does it: the app's controls go before the merge.
        crate::forwarding::response(&mut app);
        let h = response_head(&app, &file).expect("head");
        let get = |n: &str| -> Vec<&str> {
            h.headers
                .get_all(n)
                .iter()
                .map(|v| v.to_str().expect("ascii"))
                .collect()
        };
        assert_eq!(h.status, StatusCode::OK);
        assert_eq!(get("content-type"), ["application/pdf"]);
        assert_eq!(
            get("content-disposition"),
            ["attachment; filename=\"r.pdf\""]
        );
        assert_eq!(get("content-length"), ["6"]);
        assert_eq!(get("set-cookie"), ["a=1", "b=2"]);
        assert_eq!(get("cache-control"), ["private"]);
        assert_eq!(get("x-content-type-options"), ["nosniff"]);
        assert_eq!(get("accept-ranges"), ["bytes"]);
        assert_ne!(get("etag"), ["\"app\""]);
        assert_eq!(get("etag").len(), 1);
        assert!(get("x-accel-redirect").is_empty());
        assert!(get("x-accel-buffering").is_empty());

        // Without a Content-Type from the app, the file's name decides it.
        let Plan::Serve(file) = i
            .plan(0, "/report.txt", &Method::GET, &HeaderMap::new())
            .await
        else {
            panic!("no file")
        };
        let h = response_head(&head(&[]), &file).expect("head");
        assert_eq!(h.headers["content-type"], "text/plain; charset=utf-8");

        // A 304 repeats the validators and the caching headers, not the body's description.
        let etag = file.headers["etag"].to_str().expect("etag").to_string();
        let mut cond = HeaderMap::new();
        cond.insert(header::IF_NONE_MATCH, etag.parse().expect("value"));
        let Plan::Serve(not_modified) = i.plan(0, "/report.txt", &Method::GET, &cond).await else {
            panic!("no 304")
        };
        let h = response_head(&app, &not_modified).expect("head");
        assert_eq!(h.status, StatusCode::NOT_MODIFIED);
        assert!(h.headers.get("content-type").is_none());
        assert!(h.headers.get("content-disposition").is_none());
        assert!(h.headers.get("content-length").is_none());
        assert_eq!(h.headers["cache-control"], "private");
        assert_eq!(h.headers["etag"], etag.as_str());
    }
}
