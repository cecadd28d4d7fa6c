//! FastCGI upstreams (php-fpm), answered from `request_filter` like the WebSocket tunnel.
//!
//! What nginx does with `fastcgi_params`, `fastcgi_pass` and the usual Laravel location
//! (`try_files $uri $uri/ /index.php?$query_string`, `location ~ \.php$`), in one place:
//!
//! * a request whose path ends in `.php` runs that script when the file exists under the
//!   root, and is a 404 without touching php-fpm otherwise; the path is never split into
//!   script + `PATH_INFO`, so `/uploads/evil.jpg/x.php` runs nothing (the `cgi.fix_pathinfo`
//!   hole); the route's static files never serve a `.php` path (see [`is_php_path`]);
//! * `/dir/` runs `dir/<index>` when it exists;
//! * anything else runs the front controller, with `REQUEST_URI` as the client sent it.
//!
//! The codec is ours rather than the `fastcgi-client` crate's (0.12): that crate reports a
//! connection closed before `FCGI_END_REQUEST` as a normal end of the response stream (a
//! php-fpm worker killed mid-answer would look like a complete, truncated answer), takes
//! parameters as UTF-8 strings only (header values are bytes), and needs the request body as
//! a `futures-io` reader. The protocol is small: the codec below is pure functions with
//! byte-exact tests.
//!
//! The request body is streamed to php-fpm as it arrives when its length is known; a body of
//! unknown length (chunked, HTTP/2 without `Content-Length`) is read first, up to
//! `limits.max_body_bytes`, because PHP reads exactly `CONTENT_LENGTH` bytes of input (nginx
//! buffers such bodies too). The response is streamed back as php-fpm writes it.
//!
//! Connections are opened with `FCGI_KEEP_CONN` and kept for the next request after a clean
//! `FCGI_END_REQUEST` (a few per server, for a short idle time: each idle connection holds a
//! php-fpm worker). One that php-fpm closed meanwhile is noticed before use and replaced.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::protocols::http::HttpTask;
use pingora::proxy::Session;
use pingora::{ErrorType, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::addr::{Addr, Stream};
use crate::attempt::{Attempt, Exchange, InFlight, Loop, To};
use crate::buffering::{Feeder, Fifo};
use crate::failure::{ClientFailure, Failure, Fault};
use crate::finish::{Answer, Finish, Origin, Out};

// ---------------------------------------------------------------------------------------------
// The codec (FastCGI 1.0 specification, sections 3 and 5).

const VERSION_1: u8 = 1;
const BEGIN_REQUEST: u8 = 1;
const END_REQUEST: u8 = 3;
const PARAMS: u8 = 4;
const STDIN: u8 = 5;
const STDOUT: u8 = 6;
const STDERR: u8 = 7;
const RESPONDER: u16 = 1;
const FLAG_KEEP_CONN: u8 = 1;
/// One request per connection at a time, as nginx does: the id is always 1.
const REQUEST_ID: u16 = 1;
/// A record's content is at most 65535 bytes.
const MAX_CONTENT: usize = 65535;

/// Append one record (header, content, padding to a multiple of 8 as nginx does).
fn record(out: &mut Vec<u8>, kind: u8, content: &[u8]) {
    debug_assert!(content.len() <= MAX_CONTENT);
    let len = content.len() as u16;
    let padding = (8 - content.len() % 8) % 8;
    out.extend_from_slice(&[VERSION_1, kind]);
    out.extend_from_slice(&REQUEST_ID.to_be_bytes());
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(&[padding as u8, 0]);
    out.extend_from_slice(content);
    out.extend_from_slice(&[0u8; 8][..padding]);
}

/// `FCGI_BEGIN_REQUEST` for a responder.
pub fn begin_request(out: &mut Vec<u8>, keep_conn: bool) {
    let mut body = [0u8; 8];
    body[..2].copy_from_slice(&RESPONDER.to_be_bytes());
    body[2] = if keep_conn { FLAG_KEEP_CONN } else { 0 };
    record(out, BEGIN_REQUEST, &body);
}

/// Where `FCGI_KEEP_CONN` sits in records that start with [`begin_request`]'s: after the
/// 8-byte header and the 2-byte role.
const KEEP_CONN_AT: usize = 10;

/// Sets `FCGI_KEEP_CONN` in records made by [`begin_request`] and what follows it, for the
/// connection they are about to be sent on.
pub fn set_keep_conn(records: &mut [u8], keep_conn: bool) {
    if let Some(flags) = records.get_mut(KEEP_CONN_AT) {
        *flags = if keep_conn { FLAG_KEEP_CONN } else { 0 };
    }
}

fn nv_length(out: &mut Vec<u8>, n: usize) {
    if n < 128 {
        out.push(n as u8);
    } else {
        out.extend_from_slice(&((n as u32) | 0x8000_0000).to_be_bytes());
    }
}

/// The parameters as `FCGI_PARAMS` records, then the empty record that ends them.
pub fn params(out: &mut Vec<u8>, params: &Params) {
    for chunk in params.stream.chunks(MAX_CONTENT) {
        record(out, PARAMS, chunk);
    }
    record(out, PARAMS, &[]);
}

/// The name-value pairs of a request, encoded as they are added into the one byte stream that
/// `FCGI_PARAMS` records carry (each pair: the name's length, the value's length, the name, the
/// value). Why not a list of pairs: about 20 parameters and one per header name made a
/// `String` and a `Vec` each (108 allocations for a browser's request, measured), then were
/// copied into this stream anyway.
#[derive(Debug, Default)]
pub struct Params {
    stream: Vec<u8>,
}

/// Most bytes a value written through [`Params::add_display`] takes (an IPv6 address is at most
/// 39 bytes, a `u64` 20).
const DISPLAY_MAX: usize = 64;

impl Params {
    /// Room for a typical request's parameters (nginx's `fastcgi_params` and a browser's
    /// headers come to about 1 KiB).
    fn new() -> Params {
        Params {
            stream: Vec::with_capacity(1024),
        }
    }

    pub fn add(&mut self, name: &[u8], value: &[u8]) {
        self.lengths(name.len(), value.len());
        self.stream.extend_from_slice(name);
        self.stream.extend_from_slice(value);
    }

    /// A value written by its `Display` (a port, an address, a length), without a `String`.
    fn add_display(&mut self, name: &[u8], value: impl std::fmt::Display) {
        use std::io::Write as _;
        let mut buf = [0u8; DISPLAY_MAX];
        let mut cursor = &mut buf[..];
        // Every value given here fits; one that did not would be cut, never overflow.
        let _ = write!(cursor, "{value}");
        let len = DISPLAY_MAX - cursor.len();
        self.add(name, &buf[..len]);
    }

    /// `HTTP_` and the header's name in capitals with `-` as `_`, its values joined by `sep`
    /// (CGI/1.1 §4.1.18: one meta-variable per header name).
    fn add_header(
        &mut self,
        name: &str,
        values: http::header::GetAll<'_, http::HeaderValue>,
        sep: &[u8],
    ) {
        let (count, bytes) = values
            .iter()
            .fold((0usize, 0usize), |(n, len), v| (n + 1, len + v.len()));
        let len = bytes + sep.len() * count.saturating_sub(1);
        self.lengths(5 + name.len(), len);
        self.stream.extend_from_slice(b"HTTP_");
        self.stream.extend(name.bytes().map(|b| match b {
            b'-' => b'_',
            b => b.to_ascii_uppercase(),
        }));
        for (k, v) in values.iter().enumerate() {
            if k > 0 {
                self.stream.extend_from_slice(sep);
            }
            self.stream.extend_from_slice(v.as_bytes());
        }
    }

    fn lengths(&mut self, name: usize, value: usize) {
        nv_length(&mut self.stream, name);
        nv_length(&mut self.stream, value);
    }

    /// The pairs back, in order (for tests: the wire form is what is kept).
    #[cfg(test)]
    pub fn pairs(&self) -> Vec<(String, Vec<u8>)> {
        fn length(s: &[u8], at: &mut usize) -> usize {
            if s[*at] < 128 {
                *at += 1;
                s[*at - 1] as usize
            } else {
                let n = u32::from_be_bytes([s[*at], s[*at + 1], s[*at + 2], s[*at + 3]]);
                *at += 4;
                (n & 0x7fff_ffff) as usize
            }
        }
        let s = &self.stream;
        let mut at = 0;
        let mut out = Vec::new();
        while at < s.len() {
            let n = length(s, &mut at);
            let v = length(s, &mut at);
            let name = String::from_utf8_lossy(&s[at..at + n]).into_owned();
            out.push((name, s[at + n..at + n + v].to_vec()));
            at += n + v;
        }
        out
    }
}

/// Request body bytes as `FCGI_STDIN` records; an empty `data` is the end of the body.
pub fn stdin(out: &mut Vec<u8>, data: &[u8]) {
    if data.is_empty() {
        record(out, STDIN, &[]);
    }
    for chunk in data.chunks(MAX_CONTENT) {
        record(out, STDIN, chunk);
    }
}

/// A record from php-fpm.
#[derive(Debug, PartialEq, Eq)]
pub enum Record {
    Stdout(Bytes),
    Stderr(Bytes),
    /// `FCGI_END_REQUEST`: `protocol_status` 0 is `FCGI_REQUEST_COMPLETE`.
    End {
        app_status: u32,
        protocol_status: u8,
    },
}

/// Splits php-fpm's byte stream into records.
pub struct Decoder {
    buf: BytesMut,
    /// Room offered to the next read: [`FIRST_READ`], doubled at each read up to
    /// [`READ_CHUNK`].
    room: usize,
}

/// Room for the first read of an answer: most PHP answers (head, a page, the end record)
/// arrive in one read of this, and 8 KiB is still one of the allocator's small sizes. 64 KiB
/// up front was a large allocation on every request (jemalloc's extent bookkeeping: about 3%
/// of the gateway's CPU per PHP request, profiled). nginx reads the head into
/// `fastcgi_buffer_size`, one page (4 or 8 KiB).
const FIRST_READ: usize = 8 * 1024;

impl Default for Decoder {
    fn default() -> Decoder {
        Decoder {
            buf: BytesMut::new(),
            room: FIRST_READ,
        }
    }
}

impl Decoder {
    pub fn push(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// Where the I/O shell reads php-fpm's bytes to, with room for the next read: no copy,
    /// and nothing zeroed up front (a zeroed 64 KiB buffer per request cost a page-fault
    /// round trip to the kernel each time). The room starts at [`FIRST_READ`] and doubles at
    /// each read, up to [`READ_CHUNK`]: a large answer soon reads in large steps.
    pub fn spare(&mut self) -> &mut BytesMut {
        let room = self.room;
        self.room = (room * 2).min(READ_CHUNK);
        self.buf.reserve(room);
        &mut self.buf
    }

    /// The next complete record, `Ok(None)` when more bytes are needed.
    pub fn next_record(&mut self) -> std::result::Result<Option<Record>, String> {
        loop {
            if self.buf.len() < 8 {
                return Ok(None);
            }
            let h = &self.buf[..8];
            if h[0] != VERSION_1 {
                return Err(format!("unknown FastCGI version {}", h[0]));
            }
            let kind = h[1];
            let id = u16::from_be_bytes([h[2], h[3]]);
            let len = u16::from_be_bytes([h[4], h[5]]) as usize;
            let padding = h[6] as usize;
            if self.buf.len() < 8 + len + padding {
                return Ok(None);
            }
            self.buf.advance(8);
            let content = self.buf.split_to(len).freeze();
            self.buf.advance(padding);
            if id != REQUEST_ID {
                return Err(format!("record for unknown request id {id}"));
            }
            return match kind {
                STDOUT => Ok(Some(Record::Stdout(content))),
                STDERR => Ok(Some(Record::Stderr(content))),
                END_REQUEST if content.len() >= 5 => Ok(Some(Record::End {
                    app_status: u32::from_be_bytes([
                        content[0], content[1], content[2], content[3],
                    ]),
                    protocol_status: content[4],
                })),
                END_REQUEST => Err("short FCGI_END_REQUEST".into()),
                // Management records (FCGI_GET_VALUES_RESULT, FCGI_UNKNOWN_TYPE) are not ours.
                _ => continue,
            };
        }
    }

    /// Bytes received after the last complete record.
    pub fn pending(&self) -> usize {
        self.buf.len()
    }
}

/// The CGI response head php-fpm writes on stdout: `Status:` and the other header lines,
/// up to the first empty line. `Ok(None)` while incomplete; on success also how many bytes
/// of `buf` the head took.
pub fn parse_head(buf: &[u8]) -> std::result::Result<Option<(ResponseHeader, usize)>, String> {
    // The head ends at the first empty line ("\r\n\r\n" or "\n\n").
    let mut end = None;
    let mut line_start = 0;
    for (i, b) in buf.iter().enumerate() {
        if *b == b'\n' {
            let line = &buf[line_start..i];
            if line.is_empty() || line == b"\r" {
                end = Some((line_start, i + 1));
                break;
            }
            line_start = i + 1;
        }
    }
    let Some((head_end, consumed)) = end else {
        return Ok(None);
    };
    let mut status: Option<u16> = None;
    let mut headers: Vec<(&[u8], &[u8])> = Vec::new();
    for line in buf[..head_end].split(|b| *b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            continue;
        }
        let colon = line.iter().position(|b| *b == b':').ok_or_else(|| {
            format!(
                "header line without ':': {:?}",
                String::from_utf8_lossy(line)
            )
        })?;
        let name = &line[..colon];
        let value = line[colon + 1..].trim_ascii();
        if name.eq_ignore_ascii_case(b"status") {
            let code = std::str::from_utf8(value)
                .ok()
                .and_then(|v| v.split_whitespace().next())
                .and_then(|c| c.parse::<u16>().ok())
                .filter(|c| (100..1000).contains(c))
                .ok_or_else(|| format!("bad Status: {:?}", String::from_utf8_lossy(value)))?;
            status = Some(code);
        } else {
            headers.push((name, value));
        }
    }
    // CGI 1.1 §6.2.3: a Location without a Status is a redirect.
    let status = status.unwrap_or_else(|| {
        if headers
            .iter()
            .any(|(n, _)| n.eq_ignore_ascii_case(b"location"))
        {
            302
        } else {
            200
        }
    });
    let mut head = ResponseHeader::build(status, Some(headers.len())).map_err(|e| e.to_string())?;
    for (name, value) in headers {
        let name = http::HeaderName::from_bytes(name).map_err(|e| e.to_string())?;
        let value = http::HeaderValue::from_bytes(value).map_err(|e| e.to_string())?;
        head.append_header(name, value).map_err(|e| e.to_string())?;
    }
    Ok(Some((head, consumed)))
}

// ---------------------------------------------------------------------------------------------
// Which script runs.

/// Whether a request path (as received, percent-encoded) names a PHP script. Such paths are
/// never served as static files on a FastCGI route: that would publish the source.
pub fn is_php_path(raw_path: &str) -> bool {
    let decoded = percent_encoding::percent_decode_str(raw_path).decode_utf8_lossy();
    let last = decoded.rsplit('/').next().unwrap_or("");
    last.to_ascii_lowercase().ends_with(".php")
}

/// The script a request runs.
#[derive(Debug, PartialEq, Eq)]
pub enum Script {
    Run {
        /// `SCRIPT_NAME` and `DOCUMENT_URI`, e.g. `/index.php`.
        name: String,
        /// `SCRIPT_FILENAME`: root + name.
        filename: PathBuf,
    },
    /// A `.php` path with no such file (or outside the root): 404, php-fpm is not asked.
    Missing,
    /// Not a usable path (bad escapes, NUL, `..` after decoding): 400.
    BadPath,
}

/// nginx's `try_files $uri $uri/ <front>` with `index <index>` and `location ~ \.php$`, for
/// the percent-encoded request path. Touches the file system (a few stat/realpath calls); it
/// runs inline on the request's task, which measured cheaper than two hand-offs to the
/// blocking pool (BENCHMARKS.md, PHP).
pub fn resolve(root: &Path, index: &str, front: &str, raw_path: &str) -> Script {
    let Ok(decoded) = percent_encoding::percent_decode_str(raw_path).decode_utf8() else {
        return Script::BadPath;
    };
    if !decoded.starts_with('/') || decoded.contains(['\0', '\\']) {
        return Script::BadPath;
    }
    let mut segments = Vec::new();
    for s in decoded.split('/') {
        match s {
            "" | "." => {}
            ".." => return Script::BadPath,
            s => segments.push(s),
        }
    }
    let hidden = segments.iter().any(|s| s.starts_with('.'));
    let front_controller = || Script::Run {
        name: front.to_string(),
        filename: root.join(front.trim_start_matches('/')),
    };
    // A `stat` first answers "no such file" in one syscall; only a file that exists is
    // canonicalised (every component read) to refuse a symlink out of the root.
    let under_root = |p: &Path| {
        std::fs::metadata(p).is_ok_and(|m| m.is_file())
            && std::fs::canonicalize(p).is_ok_and(|c| c.starts_with(root))
    };
    if is_php_path(raw_path) {
        let name = format!("/{}", segments.join("/"));
        // Exactly `.php` (not `.PHP`): php-fpm's `security.limit_extensions` default.
        if hidden || !name.ends_with(".php") {
            return Script::Missing;
        }
        let filename = root.join(&name[1..]);
        return if under_root(&filename) {
            Script::Run { name, filename }
        } else {
            Script::Missing
        };
    }
    if !hidden && decoded.ends_with('/') {
        let mut name = format!("/{}", segments.join("/"));
        if !name.ends_with('/') {
            name.push('/');
        }
        name.push_str(index);
        let filename = root.join(&name[1..]);
        if under_root(&filename) {
            return Script::Run { name, filename };
        }
    }
    front_controller()
}

// ---------------------------------------------------------------------------------------------
// The parameters.

/// What the parameters are made of, gathered from the session.
pub struct RequestInfo<'a> {
    /// After [`crate::forwarding::request`]: hop-by-hop headers gone, `X-Forwarded-*` and
    /// `X-Real-IP` set.
    pub req: &'a RequestHeader,
    pub script: (&'a str, &'a Path),
    pub document_root: &'a Path,
    pub tls: bool,
    pub peer: Option<SocketAddr>,
    pub server: Option<SocketAddr>,
    /// `CONTENT_LENGTH`; `None` sends it empty (no body).
    pub content_length: Option<u64>,
}

/// nginx's `fastcgi_params` plus `SCRIPT_FILENAME` and `PATH_INFO`, and `HTTP_*` for each
/// header.
pub fn build_params(i: &RequestInfo<'_>) -> Params {
    let req = i.req;
    let header = |name: &str| req.headers.get(name).map(|v| v.as_bytes()).unwrap_or(b"");
    let target = req.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    let host: Option<&[u8]> = req
        .headers
        .get("host")
        .map(|v| v.as_bytes())
        .or_else(|| req.uri.authority().map(|a| a.as_str().as_bytes()));
    let server_name: Option<&str> = host
        .and_then(|h| std::str::from_utf8(h).ok())
        .map(|h| match h.strip_prefix('[') {
            Some(v6) => v6.split(']').next().unwrap_or(v6),
            None => h.rsplit_once(':').map(|(n, _)| n).unwrap_or(h),
        });
    let remote = req
        .headers
        .get("x-real-ip")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<IpAddr>().ok())
        .or(i.peer.map(|p| p.ip()));
    let protocol: &[u8] = match req.version {
        http::Version::HTTP_10 => b"HTTP/1.0",
        http::Version::HTTP_2 => b"HTTP/2.0",
        _ => b"HTTP/1.1",
    };
    let mut p = Params::new();
    p.add(
        b"SCRIPT_FILENAME",
        i.script.1.as_os_str().as_encoded_bytes(),
    );
    p.add(b"QUERY_STRING", req.uri.query().unwrap_or("").as_bytes());
    p.add(b"REQUEST_METHOD", req.method.as_str().as_bytes());
    p.add(b"CONTENT_TYPE", header("content-type"));
    match i.content_length {
        Some(n) => p.add_display(b"CONTENT_LENGTH", n),
        None => p.add(b"CONTENT_LENGTH", b""),
    }
    p.add(b"SCRIPT_NAME", i.script.0.as_bytes());
    p.add(b"PATH_INFO", b"");
    p.add(b"REQUEST_URI", target.as_bytes());
    p.add(b"DOCUMENT_URI", i.script.0.as_bytes());
    p.add(
        b"DOCUMENT_ROOT",
        i.document_root.as_os_str().as_encoded_bytes(),
    );
    p.add(b"SERVER_PROTOCOL", protocol);
    p.add(b"REQUEST_SCHEME", if i.tls { b"https" } else { b"http" });
    p.add(b"GATEWAY_INTERFACE", b"CGI/1.1");
    p.add(
        b"SERVER_SOFTWARE",
        concat!("gateway/", env!("CARGO_PKG_VERSION")).as_bytes(),
    );
    match remote {
        Some(a) => p.add_display(b"REMOTE_ADDR", a),
        None => p.add(b"REMOTE_ADDR", b""),
    }
    match i.peer {
        Some(a) => p.add_display(b"REMOTE_PORT", a.port()),
        None => p.add(b"REMOTE_PORT", b""),
    }
    match i.server {
        Some(a) => {
            p.add_display(b"SERVER_ADDR", a.ip());
            p.add_display(b"SERVER_PORT", a.port());
        }
        None => {
            p.add(b"SERVER_ADDR", b"");
            p.add(b"SERVER_PORT", b"");
        }
    }
    match (server_name, i.server) {
        (Some(name), _) => p.add(b"SERVER_NAME", name.as_bytes()),
        (None, Some(a)) => p.add_display(b"SERVER_NAME", a.ip()),
        (None, None) => p.add(b"SERVER_NAME", b""),
    }
    // PHP built with --enable-force-cgi-redirect wants it (nginx's fastcgi_params).
    p.add(b"REDIRECT_STATUS", b"200");
    if i.tls {
        p.add(b"HTTPS", b"on");
    }
    if req.headers.get("host").is_none() {
        if let Some(host) = host {
            p.add(b"HTTP_HOST", host);
        }
    }
    for name in req.headers.keys() {
        let n = name.as_str();
        // nginx ignores names with underscores (`underscores_in_headers off`): `X_Real_IP`
        // would otherwise land on HTTP_X_REAL_IP next to the real one. `Proxy` is httpoxy.
        if n.contains('_') || n == "proxy" {
            continue;
        }
        let sep: &[u8] = if n == "cookie" { b"; " } else { b", " };
        p.add_header(n, req.headers.get_all(name), sep);
    }
    p
}

// ---------------------------------------------------------------------------------------------
// Connections.

/// Idle connections kept per server. Each one holds a php-fpm worker while it waits, so few.
const MAX_IDLE: usize = 8;
/// An idle connection older than this is closed rather than reused (and frees its worker).
const IDLE_TIMEOUT: Duration = Duration::from_secs(10);
/// The CGI response head must fit in this (nginx `fastcgi_buffer_size` is 4-8 KiB).
const MAX_HEAD: usize = 64 * 1024;
const READ_CHUNK: usize = 64 * 1024;

struct Idle {
    io: Stream,
    since: Instant,
    /// The worker thread that kept it ([`crate::addr::pool_group`]: 0 with one shared
    /// runtime): taken by that thread first, whose runtime reports its readiness.
    group: u64,
}

/// A FastCGI pool's script rules and idle connections (one list per server).
pub struct Backend {
    /// Canonical, so a script's canonical path can be checked against it.
    pub root: PathBuf,
    pub index: String,
    pub front_controller: String,
    idle: Vec<Mutex<Vec<Idle>>>,
    /// Per server: requests sent on a new connection and not answered yet. php-fpm workers
    /// serve one connection at a time and stay with a kept connection, so while a new one
    /// waits in php-fpm's accept queue, finished connections are closed instead of kept:
    /// that frees a worker for it (a burst above `pm.max_children` would otherwise wait for
    /// the idle timeout).
    waiting: Vec<AtomicUsize>,
}

/// Counts a request in [`Backend::waiting`] until php-fpm starts answering it.
struct Waiting<'a>(Option<&'a AtomicUsize>);

impl<'a> Waiting<'a> {
    fn new(counter: Option<&'a AtomicUsize>) -> Self {
        if let Some(c) = counter {
            c.fetch_add(1, Ordering::Relaxed);
        }
        Waiting(counter)
    }
    fn done(&mut self) {
        if let Some(c) = self.0.take() {
            c.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.done();
    }
}

impl std::fmt::Debug for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Backend")
            .field("root", &self.root)
            .field("index", &self.index)
            .field("front_controller", &self.front_controller)
            .finish()
    }
}

impl Backend {
    pub fn new(cfg: &crate::settings::FastCgi, servers: usize) -> Backend {
        Backend {
            root: std::fs::canonicalize(&cfg.root).unwrap_or_else(|_| cfg.root.clone()),
            index: cfg.index.clone(),
            front_controller: cfg.front_controller.clone(),
            idle: (0..servers).map(|_| Mutex::new(Vec::new())).collect(),
            waiting: (0..servers).map(|_| AtomicUsize::new(0)).collect(),
        }
    }

    /// The most recently kept live connection, this thread's own first: each one holds a
    /// php-fpm worker, so another thread's is taken rather than a new one opened.
    fn take_idle(&self, server: usize) -> Option<Stream> {
        let mut list = self
            .idle
            .get(server)?
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let group = crate::addr::pool_group();
        while !list.is_empty() {
            let at = list
                .iter()
                .rposition(|c| c.group == group)
                .unwrap_or(list.len() - 1);
            let c = list.remove(at);
            if c.since.elapsed() < IDLE_TIMEOUT && c.io.still_open() {
                return Some(c.io);
            }
            tracing::debug!(server, "fastcgi: an idle connection was closed or expired");
        }
        None
    }

    /// Close the connections idle for longer than [`IDLE_TIMEOUT`], freeing their workers.
    fn prune(&self, server: usize) {
        if let Some(list) = self.idle.get(server) {
            let mut list = list.lock().unwrap_or_else(|e| e.into_inner());
            list.retain(|c| c.since.elapsed() < IDLE_TIMEOUT);
        }
    }

    /// Keep a connection for the next request, unless a request is waiting for a worker.
    fn put_idle(&self, server: usize, io: Stream) {
        if self
            .waiting
            .get(server)
            .is_some_and(|w| w.load(Ordering::Relaxed) > 0)
        {
            return;
        }
        if let Some(list) = self.idle.get(server) {
            let mut list = list.lock().unwrap_or_else(|e| e.into_inner());
            list.retain(|c| c.since.elapsed() < IDLE_TIMEOUT);
            if list.len() < MAX_IDLE {
                list.push(Idle {
                    io,
                    since: Instant::now(),
                    group: crate::addr::pool_group(),
                });
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// One exchange.

/// What [`serve`] needs besides the session and the attempt loop.
pub struct Call<'a> {
    /// The pool's script rules and kept connections.
    pub backend: &'a Arc<Backend>,
    /// The request with forwarding headers applied.
    pub req: &'a RequestHeader,
    pub tls: bool,
    pub max_body: u64,
    /// The body, when the gateway already holds it whole (request buffering).
    pub body: Option<&'a crate::buffering::Body>,
    pub finish: Finish<'a>,
    /// Read php-fpm's answer as fast as it comes and feed the client from memory or a
    /// temporary file (`None`: stream it at the client's pace).
    pub buffering: Option<crate::buffering::ResponseBuffering>,
}

/// How the request body reaches php-fpm.
enum PhpBody<'a> {
    /// In the records written with the parameters already (none, or read whole here).
    Sent,
    /// Held whole by the gateway (request buffering).
    Held(&'a crate::buffering::Body),
    /// Streamed from the client as it arrives: this many bytes (`Content-Length`).
    Streamed(u64),
}

/// The FastCGI [`Exchange`]: a kept or new connection, the request's records, and the first
/// bytes of php-fpm's answer.
struct Php<'a, 's> {
    /// The client's session, for a body streamed from it (`None`: the gateway's own question,
    /// whose body is in `records`).
    session: Option<&'s mut Session>,
    backend: &'a Backend,
    /// `FCGI_BEGIN_REQUEST` and the parameters (and a body read whole here); its
    /// `FCGI_KEEP_CONN` flag is set for each attempt's connection.
    records: Vec<u8>,
    body: PhpBody<'a>,
    max_body: u64,
    /// A request that may be sent twice: one that a kept connection answered with nothing at
    /// all went nowhere, and is sent again.
    idempotent: bool,
}

/// php-fpm started answering: the connection and what it sent so far.
struct Started {
    io: Stream,
    decoder: Decoder,
    /// php-fpm was asked to keep the connection open after this request: it may be kept.
    keep_conn: bool,
}

impl Exchange for Php<'_, '_> {
    type Conn = Started;

    async fn attempt(&mut self, to: To<'_>, reuse: bool) -> Attempt<Started> {
        let timeout = to.timeouts.read;
        let addr = to.addr;
        // A body streamed from the client cannot be sent twice, so it never goes on a kept
        // connection that may turn out closed (a worker that reached `pm.max_requests`).
        let streams = matches!(self.body, PhpBody::Streamed(n) if n > 0);
        let kept = if reuse && !streams {
            self.backend.take_idle(to.index)
        } else {
            None
        };
        let reused = kept.is_some();
        let mut io = match kept {
            Some(io) => io,
            None => match tokio::time::timeout(to.timeouts.connect, addr.connect()).await {
                Ok(Ok(io)) => io,
                Ok(Err(e)) => return Attempt::NotSent(Failure::connect(addr, &e)),
                Err(_) => return Attempt::NotSent(Failure::ConnectTimeout(addr.to_string())),
            },
        };
        // While requests wait for a worker the connection will be closed at the end (see
        // `Backend::waiting`), so php-fpm is told so and closes it itself right after its
        // answer: the worker goes straight back to `accept` instead of sleeping on a
        // connection the gateway then closes (a wake-up and a context switch more per
        // request for php-fpm under load). nginx without `fastcgi_keep_conn` never asks.
        let keep_conn = self
            .backend
            .waiting
            .get(to.index)
            .is_some_and(|w| w.load(Ordering::Relaxed) == 0);
        set_keep_conn(&mut self.records, keep_conn);
        match tokio::time::timeout(timeout, io.write_all(&self.records)).await {
            Ok(Ok(())) => {}
            _ if reused => return Attempt::Stale,
            Ok(Err(e)) => return Attempt::NotSent(Failure::connect(addr, &e)),
            Err(_) => return Attempt::NotSent(Failure::Timeout(addr.to_string())),
        }
        if reused {
            tracing::debug!(server = %addr, "fastcgi: reusing a connection");
        }
        let mut waiting = Waiting::new((!reused).then(|| &self.backend.waiting[to.index]));
        if let Err(fault) = self.send_body(&mut io, addr, timeout).await {
            return Attempt::Failed(fault);
        }
        if !keep_conn {
            finish_sending(&mut io).await;
        }
        let mut decoder = Decoder::default();
        let read = io.read_buf(decoder.spare());
        match tokio::time::timeout(timeout, read).await {
            Ok(Ok(0)) | Ok(Err(_)) if reused && self.idempotent => Attempt::Stale,
            Ok(Ok(0)) => Attempt::Failed(
                Failure::BadAnswer(
                    addr.to_string(),
                    "closed the connection before answering".into(),
                )
                .into(),
            ),
            Ok(Ok(_)) => {
                waiting.done();
                Attempt::Answered(Started {
                    io,
                    decoder,
                    keep_conn,
                })
            }
            Ok(Err(e)) => {
                Attempt::Failed(Failure::BadAnswer(addr.to_string(), e.to_string()).into())
            }
            Err(_) => Attempt::Failed(Failure::Timeout(addr.to_string()).into()),
        }
    }
}

impl Php<'_, '_> {
    /// The rest of the request body, as `FCGI_STDIN` records ending with the empty one.
    async fn send_body(
        &mut self,
        io: &mut Stream,
        addr: &Addr,
        timeout: Duration,
    ) -> std::result::Result<(), Fault> {
        let mut out = Vec::new();
        match self.body {
            PhpBody::Sent => return Ok(()),
            PhpBody::Held(body) => {
                let mut replay = body.replay();
                out.reserve(MAX_CONTENT + 64);
                loop {
                    let chunk = match replay.next().await {
                        Ok(Some(c)) => c,
                        Ok(None) => break,
                        // The gateway's own temporary file: its fault, not php-fpm's.
                        Err(e) => {
                            return Err(Fault::Internal(format!("reading the held body back: {e}")))
                        }
                    };
                    out.clear();
                    stdin(&mut out, &chunk);
                    write(io, &out, addr, timeout).await?;
                }
            }
            PhpBody::Streamed(expected) => {
                let Some(session) = self.session.as_deref_mut() else {
                    return Err(Fault::Internal("a streamed body without a client".into()));
                };
                let mut sent = 0u64;
                out.reserve(READ_CHUNK + 64);
                loop {
                    let chunk = match session.read_request_body().await {
                        Ok(Some(chunk)) => chunk,
                        Ok(None) => break,
                        Err(e) => return Err(ClientFailure::from_error(&e.into_down()).into()),
                    };
                    sent += chunk.len() as u64;
                    if sent > expected || sent > self.max_body {
                        return Err(ClientFailure::TooLarge(self.max_body).into());
                    }
                    out.clear();
                    stdin(&mut out, &chunk);
                    write(io, &out, addr, timeout).await?;
                }
                if sent < expected {
                    return Err(ClientFailure::Client(
                        ErrorType::ConnectionClosed,
                        format!("the client's body ended after {sent} of {expected} bytes"),
                    )
                    .into());
                }
            }
        }
        out.clear();
        stdin(&mut out, &[]);
        write(io, &out, addr, timeout).await
    }
}

/// The whole request is written on a connection php-fpm will close after its answer: the
/// gateway's side is shut for writing now, so php-fpm sees the end of the connection as soon
/// as it has read the request.
///
/// Why: after its answer, php-fpm `shutdown`s such a connection and reads it to its end before
/// it takes the next connection (`fcgi_close`: "read any remaining data"). Left open, that
/// read slept until the gateway had read the answer and closed the connection: a sleep and a
/// wake-up per request for the worker, often two (reading the answer frees the worker's send
/// buffer, which wakes its `recv` for nothing first), and the worker waited for the gateway's
/// turn to come. Shut, the read finds the end at once. nginx does not do this.
/// Measured with `perf record -e sched:sched_switch` on the workers under bench/php.sh's load,
/// per request: sleeps in `recvfrom` 0.04 and 0.08 in two runs (1.26 and 1.37 for the build
/// before, 1.13 behind nginx), all the workers' context switches 0.57 and 0.72 (1.96 and 1.89
/// before, 1.45 behind nginx). The answer is still read in full: only the gateway's sending
/// side is shut.
///
/// This fits php-fpm, which reads a request's records and nothing more until the script has
/// answered. A FastCGI server that takes the end of its input as the end of the connection
/// would cut its answer (Go's `net/http/fcgi` closes the connection when a read finds the end,
/// whatever its handler is still writing); this pool only runs `.php` scripts found under
/// `fastcgi.root`, that is php-fpm.
async fn finish_sending(io: &mut Stream) {
    // A failure here is a connection php-fpm has closed already: the read of its answer that
    // follows reports it (and a kept connection found closed is retried, as before).
    if let Err(e) = io.shutdown().await {
        tracing::debug!(error = %e, "fastcgi: shutting down the sending side failed");
    }
}

/// Write request records to php-fpm, which has started on the request by now.
async fn write(
    io: &mut Stream,
    bytes: &[u8],
    addr: &Addr,
    timeout: Duration,
) -> std::result::Result<(), Fault> {
    match tokio::time::timeout(timeout, io.write_all(bytes)).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(Failure::BadAnswer(addr.to_string(), e.to_string()).into()),
        Err(_) => Err(Failure::Timeout(addr.to_string()).into()),
    }
}

/// What PHP wrote to stderr, a log line per line.
fn log_stderr(upstream: &str, addr: &Addr, path: &http::Uri, text: &[u8]) {
    for line in String::from_utf8_lossy(text)
        .lines()
        .filter(|l| !l.trim().is_empty())
    {
        tracing::warn!(upstream, server = %addr, path = %path, "php: {line}");
    }
}

/// The script a path runs (inline, like the static lookup: a `realpath` or two on a local
/// filesystem costs less than a hop to the blocking pool and back), or the refusal: 404 when
/// none exists, 400 when the path cannot name one.
fn script(backend: &Backend, path: &str) -> std::result::Result<(String, PathBuf), Fault> {
    match resolve(
        &backend.root,
        &backend.index,
        &backend.front_controller,
        path,
    ) {
        Script::Run { name, filename } => Ok((name, filename)),
        Script::Missing => Err(Fault::Refused {
            status: 404,
            reason: "no such file",
            detail: "no PHP script for the path".into(),
        }),
        Script::BadPath => Err(Fault::Refused {
            status: 400,
            reason: "bad path",
            detail: "the path cannot name a PHP script".into(),
        }),
    }
}

/// `FCGI_BEGIN_REQUEST`, the parameters, and a body that is already whole (`None`: it follows
/// separately).
fn request_records(params: &Params, body: Option<&[u8]>) -> Vec<u8> {
    // Room for all of it: each record adds an 8-byte header and at most 7 bytes of padding.
    let framed = |n: usize| n + 16 * (2 + n / MAX_CONTENT);
    let mut records =
        Vec::with_capacity(16 + framed(params.stream.len()) + body.map_or(0, |b| framed(b.len())));
    begin_request(&mut records, true);
    self::params(&mut records, params);
    if let Some(body) = body {
        stdin(&mut records, body);
        if !body.is_empty() {
            stdin(&mut records, &[]);
        }
    }
    records
}

/// The gateway's own question to php-fpm (a realtime service's authorization callback), as a
/// request whose body is whole.
pub struct Question<'a> {
    pub backend: &'a Arc<Backend>,
    /// The request with forwarding headers applied.
    pub req: &'a RequestHeader,
    pub body: &'a [u8],
    /// The client's connection, as PHP is told about it (`HTTPS`, `REMOTE_PORT`,
    /// `SERVER_ADDR`, `SERVER_PORT`).
    pub tls: bool,
    pub peer: Option<SocketAddr>,
    pub server: Option<SocketAddr>,
}

/// Ask php-fpm through `attempts` (the same servers, retries and failure table as a client's
/// request) and read the whole answer into memory, at most `limit` bytes of body; what PHP
/// writes to stderr is logged.
pub async fn ask(
    attempts: Loop<'_>,
    q: Question<'_>,
    limit: usize,
) -> std::result::Result<(ResponseHeader, Bytes), Fault> {
    let upstream = attempts.upstream();
    let timeout = attempts.timeouts().read;
    let (name, filename) = script(q.backend, q.req.uri.path())?;
    let params = build_params(&RequestInfo {
        req: q.req,
        script: (&name, &filename),
        document_root: &q.backend.root,
        tls: q.tls,
        peer: q.peer,
        server: q.server,
        content_length: (!q.body.is_empty()).then_some(q.body.len() as u64),
    });
    let mut exchange = Php {
        session: None,
        backend: q.backend,
        records: request_records(&params, Some(q.body)),
        body: PhpBody::Sent,
        max_body: q.body.len() as u64,
        idempotent: q.req.method.is_idempotent(),
    };
    let won = attempts.run(&mut exchange).await?;
    let (i, addr) = (won.server, won.addr);
    let Started {
        mut io,
        mut decoder,
        keep_conn,
    } = won.conn;
    let bad = |why: String| Fault::from(Failure::BadAnswer(addr.to_string(), why));
    let mut stdout: Vec<u8> = Vec::new();
    loop {
        while let Some(record) = decoder.next_record().map_err(bad)? {
            match record {
                Record::Stderr(text) => log_stderr(upstream, addr, &q.req.uri, &text),
                Record::Stdout(data) => {
                    if stdout.len() + data.len() > MAX_HEAD + limit {
                        return Err(bad(format!("answer larger than {limit} bytes")));
                    }
                    stdout.extend_from_slice(&data);
                }
                Record::End {
                    app_status,
                    protocol_status,
                } => {
                    let Some((head, used)) = parse_head(&stdout).map_err(bad)? else {
                        return Err(bad(format!(
                            "ended (status {protocol_status}, app status {app_status}) without a response head"
                        )));
                    };
                    let server = Server {
                        backend: q.backend,
                        index: i,
                        upstream,
                        addr,
                    };
                    server.release(io, keep_conn, protocol_status, &decoder);
                    return Ok((head, Bytes::copy_from_slice(&stdout[used..])));
                }
            }
        }
        let read = io.read_buf(decoder.spare());
        match tokio::time::timeout(timeout, read).await {
            Ok(Ok(0)) => {
                return Err(bad(
                    "closed the connection before the end of the answer".into()
                ))
            }
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(bad(e.to_string())),
            Err(_) => return Err(Failure::Timeout(addr.to_string()).into()),
        }
    }
}

/// Answer the request through php-fpm, on the server `attempts` finds. `Ok(Err(_))` when
/// nothing was sent to the client yet and the caller should answer with the fault's status.
pub async fn serve(
    session: &mut Session,
    attempts: Loop<'_>,
    call: Call<'_>,
) -> Result<std::result::Result<Answer, Fault>> {
    let backend = call.backend;
    let upstream = attempts.upstream();
    let timeout = attempts.timeouts().read;

    let (name, filename) = match script(backend, call.req.uri.path()) {
        Ok(found) => found,
        Err(fault) => return Ok(Err(fault)),
    };

    // A body of unknown length is read whole first: PHP reads exactly CONTENT_LENGTH bytes.
    let declared: Option<u64> = call
        .req
        .headers
        .get("content-length")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok());
    let held = call.body;
    let mut buffered: Option<Vec<u8>> = None;
    if declared.is_none() && held.is_none() {
        let mut body = Vec::new();
        loop {
            match session.read_request_body().await {
                Ok(Some(chunk)) => {
                    if (body.len() + chunk.len()) as u64 > call.max_body {
                        return Ok(Err(ClientFailure::TooLarge(call.max_body).into()));
                    }
                    body.extend_from_slice(&chunk);
                }
                Ok(None) => break,
                Err(e) => return Ok(Err(ClientFailure::from_error(&e.into_down()).into())),
            }
        }
        buffered = Some(body);
    }
    let content_length = match (&buffered, declared) {
        _ if held.is_some() => held.map(|b| b.len()).filter(|n| *n > 0),
        (_, Some(n)) => Some(n),
        (Some(b), None) if !b.is_empty() => Some(b.len() as u64),
        _ => None,
    };

    let peer = session.client_addr().and_then(|a| a.as_inet()).copied();
    let server_addr = session.server_addr().and_then(|a| a.as_inet()).copied();
    let params = build_params(&RequestInfo {
        req: call.req,
        script: (&name, &filename),
        document_root: &backend.root,
        tls: call.tls,
        peer,
        server: server_addr,
        content_length,
    });
    let records = request_records(&params, buffered.as_deref());
    let body = match (&buffered, held) {
        (Some(_), _) => PhpBody::Sent,
        (None, Some(held)) => PhpBody::Held(held),
        (None, None) => PhpBody::Streamed(declared.unwrap_or(0)),
    };

    let mut exchange = Php {
        session: Some(&mut *session),
        backend,
        records,
        body,
        max_body: call.max_body,
        idempotent: call.req.method.is_idempotent(),
    };
    let won = match attempts.run(&mut exchange).await {
        Ok(won) => won,
        Err(fault) => return Ok(Err(fault)),
    };
    let (i, addr, in_flight) = (won.server, won.addr, won.in_flight);
    let server = Server {
        backend,
        index: i,
        upstream,
        addr,
    };
    let Started {
        mut io,
        mut decoder,
        keep_conn,
    } = won.conn;

    // Relay the answer.
    let head_only = call.req.method == http::Method::HEAD;
    let mut stdout_head: Vec<u8> = Vec::new();
    // Parsed: php-fpm's head is complete (what follows is body). Written: it went to the
    // client, so a failure from here on can only cut the answer; before, it is a 502.
    let mut head_parsed = false;
    let mut head_written = false;
    let mut out = Out::default();
    // What goes to the client from the records that arrived together (the head, the body
    // pieces, the end): written as one batch, so a small answer leaves in one write to the
    // client's connection instead of one per piece (three sends per PHP answer before).
    let mut outbox: Vec<HttpTask> = Vec::new();
    let bad = |why: String| Failure::BadAnswer(addr.to_string(), why);
    loop {
        loop {
            let record = match decoder.next_record() {
                Ok(Some(r)) => r,
                Ok(None) => break,
                Err(e) if !head_written => return Ok(Err(bad(e).into())),
                Err(e) => return Err(bad(e).into_error()),
            };
            match record {
                Record::Stderr(text) => log_stderr(upstream, addr, &call.req.uri, &text),
                Record::Stdout(data) if head_parsed => {
                    if !head_only && !data.is_empty() {
                        let data = out.encode(data)?;
                        if !data.is_empty() {
                            outbox.push(HttpTask::Body(Some(data), false));
                        }
                    }
                }
                Record::Stdout(data) => {
                    // The usual answer's head is whole in its first record: parsed there,
                    // and the body after it is a slice of the record, not a copy. A head
                    // split over records is gathered first.
                    let first = stdout_head.is_empty();
                    if !first {
                        stdout_head.extend_from_slice(&data);
                    }
                    let seen: &[u8] = if first { &data } else { &stdout_head };
                    let parsed = parse_head(seen);
                    if first && matches!(parsed, Ok(None)) {
                        stdout_head.extend_from_slice(&data);
                    }
                    match parsed {
                        Ok(None) if stdout_head.len() > MAX_HEAD => {
                            return Ok(Err(bad("response head too large".into()).into()))
                        }
                        Ok(None) => {}
                        Err(e) => return Ok(Err(bad(e).into())),
                        Ok(Some((head, _))) if crate::accel::names_a_file(&head) => {
                            // PHP's body is not wanted. The connection is kept when the
                            // end of the request came with the head (the usual case for a
                            // header-only answer); otherwise it is closed, which is what
                            // nginx does to the upstream after an X-Accel-Redirect.
                            let mut ended = None;
                            while let Ok(Some(r)) = decoder.next_record() {
                                match r {
                                    Record::End {
                                        protocol_status, ..
                                    } => {
                                        ended = Some(protocol_status);
                                        break;
                                    }
                                    Record::Stderr(text) => {
                                        log_stderr(upstream, addr, &call.req.uri, &text)
                                    }
                                    Record::Stdout(_) => {}
                                }
                            }
                            if let Some(protocol_status) = ended {
                                server.release(io, keep_conn, protocol_status, &decoder);
                            }
                            return Ok(Ok(Answer::NamesAFile(Box::new(head))));
                        }
                        Ok(Some((mut head, used))) => {
                            // Decided before the finisher takes the app's `X-Accel-Buffering`
                            // off.
                            let buffer = call.buffering.as_ref().filter(|_| {
                                !head_only && crate::buffering::response_may_buffer(&head)
                            });
                            out = call.finish.head(
                                call.req,
                                session.is_http2(),
                                &mut head,
                                Origin::App,
                                false,
                            )?;
                            outbox.push(HttpTask::Header(Box::new(head), head_only));
                            head_parsed = true;
                            let rest = if first {
                                data.slice(used..)
                            } else {
                                Bytes::copy_from_slice(&stdout_head[used..])
                            };
                            stdout_head = Vec::new();
                            if let Some(b) = buffer {
                                session
                                    .write_response_tasks(std::mem::take(&mut outbox))
                                    .await?;
                                let fifo = Fifo::new(b.memory, b.max_file, b.dir.clone());
                                let mut tail = Tail {
                                    feeder: Feeder::new(session, fifo),
                                    io,
                                    keep_conn,
                                    decoder,
                                    out,
                                    timeout,
                                    server,
                                    in_flight,
                                    path: &call.req.uri,
                                };
                                tail.push(rest).await?;
                                return tail.run().await.map(|()| Ok(Answer::Sent));
                            }
                            if !head_only && !rest.is_empty() {
                                let rest = out.encode(rest)?;
                                if !rest.is_empty() {
                                    outbox.push(HttpTask::Body(Some(rest), false));
                                }
                            }
                        }
                    }
                }
                Record::End {
                    app_status,
                    protocol_status,
                } => {
                    if !head_parsed {
                        return Ok(Err(bad(format!(
                            "ended (status {protocol_status}, app status {app_status}) without a response head"
                        ))
                        .into()));
                    }
                    // php-fpm is done before the client is written to: see `Server::release`.
                    server.release(io, keep_conn, protocol_status, &decoder);
                    drop(in_flight);
                    if !head_only {
                        outbox.push(HttpTask::Body(out.finish()?, true));
                    }
                    length_when_whole(&mut outbox);
                    session.write_response_tasks(outbox).await?;
                    return Ok(Ok(Answer::Sent));
                }
            }
        }
        // What php-fpm has sent so far reaches the client now (a PHP `flush()` is not
        // held back by the encoder); records that arrived together are one piece.
        let flushed = out.flush()?;
        if !flushed.is_empty() {
            outbox.push(HttpTask::Body(Some(flushed), false));
        }
        if !outbox.is_empty() {
            session
                .write_response_tasks(std::mem::take(&mut outbox))
                .await?;
            head_written = head_parsed;
        }
        let read = io.read_buf(decoder.spare());
        let failure = match tokio::time::timeout(timeout, read).await {
            Ok(Ok(0)) => bad("closed the connection before the end of the answer".into()),
            Ok(Ok(_)) => continue,
            Ok(Err(e)) => bad(e.to_string()),
            Err(_) => Failure::Timeout(addr.to_string()),
        };
        if head_written {
            return Err(failure.into_error());
        }
        return Ok(Err(failure.into()));
    }
}

/// When a whole answer is in hand at once (its head has not gone out yet and its end is in
/// the same batch: most PHP answers, read in one piece), it goes out with its length rather
/// than chunked. pingora writes a head without a length, and then each chunk and the last
/// chunk, with a flush each (so a streamed answer is not held back): three writes to the
/// client per small answer, where this is one, and the client learns the size up front.
fn length_when_whole(outbox: &mut [HttpTask]) {
    let Some((HttpTask::Header(head, false), body)) = outbox.split_first_mut() else {
        return;
    };
    // `Transfer-Encoding: chunked` here is the finisher's framing for a body of unknown
    // length (`finish::frame`; a CGI answer's body is never chunk-encoded by PHP): the
    // length, now known, replaces it.
    if head.headers.contains_key(http::header::CONTENT_LENGTH)
        || head.status.is_informational()
        || matches!(head.status.as_u16(), 204 | 304)
    {
        return;
    }
    let length: usize = body
        .iter()
        .map(|task| match task {
            HttpTask::Body(Some(piece), _) => piece.len(),
            _ => 0,
        })
        .sum();
    match head.insert_header(http::header::CONTENT_LENGTH, length) {
        Ok(()) => {
            head.remove_header(&http::header::TRANSFER_ENCODING);
        }
        Err(e) => {
            tracing::debug!(error = %e, "fastcgi: the answer's length could not be set; sent as framed");
        }
    }
}

/// The rest of an answer that is buffered (`response_buffering`), from just after its head:
/// php-fpm is read as fast as it writes while the client is fed from memory or a temporary
/// file, so the worker is free for the next request as soon as PHP is done.
struct Tail<'a, 's> {
    feeder: Feeder<'s>,
    io: Stream,
    keep_conn: bool,
    decoder: Decoder,
    out: Out,
    timeout: Duration,
    server: Server<'a>,
    in_flight: InFlight,
    path: &'a http::Uri,
}

impl Tail<'_, '_> {
    async fn push(&mut self, data: Bytes) -> Result<()> {
        if data.is_empty() {
            return Ok(());
        }
        let data = self.out.encode(data)?;
        self.feeder.push(data).await
    }

    async fn run(mut self) -> Result<()> {
        loop {
            while let Some(record) = self
                .decoder
                .next_record()
                .map_err(|e| Failure::BadAnswer(self.server.addr.to_string(), e).into_error())?
            {
                match record {
                    Record::Stderr(text) => {
                        log_stderr(self.server.upstream, self.server.addr, self.path, &text)
                    }
                    Record::Stdout(data) => self.push(data).await?,
                    Record::End {
                        protocol_status, ..
                    } => return self.end(protocol_status).await,
                }
            }
            // What php-fpm sent so far is one piece, as on the streaming path.
            let flushed = self.out.flush()?;
            self.feeder.push(flushed).await?;
            let (io, decoder, timeout) = (&mut self.io, &mut self.decoder, self.timeout);
            // Lazy: the timeout starts when the read does, not while a full queue waits for
            // the client.
            let read =
                async move { tokio::time::timeout(timeout, io.read_buf(decoder.spare())).await };
            let failure = match self.feeder.read(read).await? {
                Ok(Ok(0)) => Failure::BadAnswer(
                    self.server.addr.to_string(),
                    "closed the connection before the end of the answer".into(),
                ),
                Ok(Ok(_)) => continue,
                Ok(Err(e)) => Failure::BadAnswer(self.server.addr.to_string(), e.to_string()),
                Err(_) => Failure::Timeout(self.server.addr.to_string()),
            };
            return Err(failure.into_error());
        }
    }

    /// php-fpm is done: its connection is kept or closed now (see [`Server::release`]), then the
    /// client gets the rest.
    async fn end(self, protocol_status: u8) -> Result<()> {
        let Tail {
            mut feeder,
            io,
            keep_conn,
            decoder,
            mut out,
            server,
            in_flight,
            ..
        } = self;
        server.release(io, keep_conn, protocol_status, &decoder);
        drop(in_flight);
        if let Some(end) = out.finish()? {
            feeder.push(end).await?;
        }
        let peak = feeder.finish().await?;
        if peak > 0 {
            tracing::debug!(
                upstream = server.upstream,
                on_disk = peak,
                "answer buffered through a temporary file"
            );
        }
        Ok(())
    }
}

/// The php-fpm server an exchange won: what [`Server::release`] needs besides the connection.
#[derive(Clone, Copy)]
struct Server<'a> {
    backend: &'a Arc<Backend>,
    index: usize,
    upstream: &'a str,
    addr: &'a Addr,
}

impl Server<'_> {
    /// php-fpm has sent `FCGI_END_REQUEST`: its connection is kept for the next request (when the
    /// request ended cleanly and php-fpm was asked to keep it) or closed, right away and before
    /// anything more is written to the client.
    ///
    /// Why before: a php-fpm worker that was not asked to keep the connection `shutdown`s it and
    /// then sleeps in `recv` until the gateway closes it, and only then takes the next connection.
    /// Reading its answer frees the worker's send buffer, and that wakes its `recv` too (write
    /// space and data share the socket's wait queue): closed at once, the worker wakes once and
    /// finds the end; closed after the answer was encrypted and written to the client, the worker
    /// woke, found nothing, slept again and was woken a second time, and stayed held for the
    /// client's write. Measured with `perf record -e sched:sched_switch` on the workers under
    /// bench/php.sh's load, sleeps in `recvfrom` per request: 1.48 and 1.72 in two runs before,
    /// 1.35 and 1.29 after, 1.37 behind nginx, which closes as soon as it has read
    /// `FCGI_END_REQUEST`. A kept connection is back in the idle list sooner, too.
    fn release(&self, io: Stream, keep_conn: bool, protocol_status: u8, decoder: &Decoder) {
        if protocol_status == 0 && decoder.pending() == 0 {
            keep(self.backend, self.index, io, keep_conn);
        } else {
            tracing::debug!(upstream = self.upstream, server = %self.addr, protocol_status, pending = decoder.pending(), "fastcgi: connection not kept");
        }
    }
}

/// Keep a connection whose request ended cleanly for the next request, if php-fpm was asked
/// to keep it (otherwise it closes it after its answer).
fn keep(backend: &Arc<Backend>, i: usize, io: Stream, keep_conn: bool) {
    if !keep_conn {
        return;
    }
    backend.put_idle(i, io);
    // Once traffic stops, nothing would take or prune the list: the timer frees the workers
    // those connections hold.
    let backend = backend.clone();
    tokio::spawn(async move {
        tokio::time::sleep(IDLE_TIMEOUT + Duration::from_millis(50)).await;
        backend.prune(i);
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A kept php-fpm connection goes back to the worker thread that kept it, whose runtime
    /// reports its readiness; another thread's is taken rather than a new one opened (each
    /// kept connection holds a php-fpm worker).
    #[tokio::test]
    async fn a_kept_connection_is_taken_by_its_own_thread_first() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let at = listener.local_addr().unwrap();
        let mine = tokio::net::TcpStream::connect(at).await.unwrap();
        let _mine_peer = listener.accept().await.unwrap();
        let theirs = tokio::net::TcpStream::connect(at).await.unwrap();
        let _theirs_peer = listener.accept().await.unwrap();
        let (mine_port, theirs_port) = (
            mine.local_addr().unwrap().port(),
            theirs.local_addr().unwrap().port(),
        );
        let cfg = crate::settings::FastCgi {
            root: PathBuf::from("/nonexistent"),
            index: "index.php".into(),
            front_controller: "/index.php".into(),
        };
        let backend = Backend::new(&cfg, 1);
        let here = crate::addr::pool_group();
        {
            let mut list = backend.idle[0].lock().unwrap();
            // This thread's kept first, another's after it (the most recent).
            list.push(Idle {
                io: Stream::Tcp(mine),
                since: Instant::now(),
                group: here,
            });
            list.push(Idle {
                io: Stream::Tcp(theirs),
                since: Instant::now(),
                group: here + 1,
            });
        }
        let port = |s: Option<Stream>| match s {
            Some(Stream::Tcp(s)) => s.local_addr().unwrap().port(),
            other => panic!("expected a kept TCP connection, got {other:?}"),
        };
        assert_eq!(port(backend.take_idle(0)), mine_port, "its own first");
        assert_eq!(port(backend.take_idle(0)), theirs_port, "then another's");
        assert!(backend.take_idle(0).is_none());
    }

    fn one_pair(name: &[u8], value: &[u8]) -> Params {
        let mut p = Params::default();
        p.add(name, value);
        p
    }

    #[test]
    fn keep_conn_is_set_per_connection_in_the_begin_request_record() {
        let mut records = request_records(&one_pair(b"A", b"bc"), Some(b""));
        let before = records.clone();
        set_keep_conn(&mut records, false);
        assert_eq!(
            records[..16],
            [1, 1, 0, 1, 0, 8, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0]
        );
        assert_eq!(records[16..], before[16..], "only the flag changes");
        set_keep_conn(&mut records, true);
        assert_eq!(records, before);
        set_keep_conn(&mut [0u8; 4], true); // too short to be records: left alone
    }

    #[test]
    fn records_are_byte_exact() {
        let mut out = Vec::new();
        begin_request(&mut out, true);
        assert_eq!(out, [1, 1, 0, 1, 0, 8, 0, 0, 0, 1, 1, 0, 0, 0, 0, 0]);

        let mut out = Vec::new();
        params(&mut out, &one_pair(b"A", b"bc"));
        // header, content "\x01\x02Abc" (5 bytes) padded to 8, then the empty PARAMS record.
        assert_eq!(
            out,
            [
                1, 4, 0, 1, 0, 5, 3, 0, 1, 2, b'A', b'b', b'c', 0, 0, 0, //
                1, 4, 0, 1, 0, 0, 0, 0
            ]
        );

        let mut out = Vec::new();
        stdin(&mut out, b"12345678");
        stdin(&mut out, b"");
        assert_eq!(
            out,
            [
                1, 5, 0, 1, 0, 8, 0, 0, b'1', b'2', b'3', b'4', b'5', b'6', b'7', b'8', 1, 5, 0, 1,
                0, 0, 0, 0
            ]
        );
    }

    proptest::proptest! {
        #[test]
        fn parameters_come_back_as_they_were_added(
            pairs in proptest::collection::vec(
                ("[A-Z_]{1,200}", proptest::collection::vec(proptest::num::u8::ANY, 0..300)),
                0..20,
            )
        ) {
            let mut p = Params::default();
            for (name, value) in &pairs {
                p.add(name.as_bytes(), value);
            }
            proptest::prop_assert_eq!(p.pairs(), pairs);
        }
    }

    #[test]
    fn long_names_and_values_use_four_byte_lengths() {
        let value = vec![b'x'; 200];
        let mut out = Vec::new();
        params(&mut out, &one_pair(b"N", &value));
        assert_eq!(&out[8..14], &[1, 0x80, 0, 0, 200, b'N']);
        assert_eq!(&out[14..214], &value[..]);
        let len = u16::from_be_bytes([out[4], out[5]]) as usize;
        assert_eq!(len, 1 + 4 + 1 + 200);
    }

    #[test]
    fn big_bodies_are_split_into_records_of_at_most_65535_bytes() {
        let body = vec![7u8; 70_000];
        let mut out = Vec::new();
        stdin(&mut out, &body);
        assert_eq!(&out[..8], &[1, 5, 0, 1, 0xff, 0xff, 1, 0]);
        let second = 8 + 65535 + 1;
        let rest = 70_000 - 65535;
        assert_eq!(
            &out[second..second + 8],
            &[
                1,
                5,
                0,
                1,
                (rest >> 8) as u8,
                rest as u8,
                ((8 - rest % 8) % 8) as u8,
                0
            ]
        );
    }

    #[test]
    fn an_answers_first_read_gets_a_small_buffer_and_later_reads_larger_ones() {
        let mut decoder = Decoder::default();
        let first = decoder.spare().capacity();
        assert!(
            (FIRST_READ..16 * 1024).contains(&first),
            "first read offered {first} bytes"
        );
        let rooms: Vec<usize> = (0..4)
            .map(|_| {
                let buf = decoder.spare();
                let room = buf.capacity() - buf.len();
                // As if the read had filled it.
                buf.resize(buf.capacity(), 0);
                room
            })
            .collect();
        assert!(rooms.windows(2).all(|w| w[1] >= w[0]), "{rooms:?}");
        assert!(rooms[3] >= READ_CHUNK, "{rooms:?}");
    }

    #[test]
    fn decoder_handles_split_input_padding_and_end() {
        let mut wire = Vec::new();
        record(&mut wire, STDOUT, b"Status: 201\r\n\r\nhi");
        record(&mut wire, STDERR, b"oops");
        record(&mut wire, END_REQUEST, &[0, 0, 0, 3, 0, 0, 0, 0]);
        let mut d = Decoder::default();
        let mut got = Vec::new();
        for b in &wire {
            d.push(&[*b]);
            while let Some(r) = d.next_record().expect("valid") {
                got.push(r);
            }
        }
        assert_eq!(
            got,
            [
                Record::Stdout(Bytes::from_static(b"Status: 201\r\n\r\nhi")),
                Record::Stderr(Bytes::from_static(b"oops")),
                Record::End {
                    app_status: 3,
                    protocol_status: 0
                },
            ]
        );
        assert_eq!(d.pending(), 0);
        let mut d = Decoder::default();
        d.push(&[2, 6, 0, 1, 0, 0, 0, 0]);
        assert!(d.next_record().is_err());
    }

    fn whole(status: u16, head_only: bool, te: bool, pieces: &[&'static [u8]]) -> ResponseHeader {
        let mut head = ResponseHeader::build(status, None).unwrap();
        if te {
            head.insert_header("transfer-encoding", "chunked").unwrap();
        }
        let mut outbox = vec![HttpTask::Header(Box::new(head), head_only)];
        for piece in pieces {
            outbox.push(HttpTask::Body(Some(Bytes::from_static(piece)), false));
        }
        outbox.push(HttpTask::Body(None, true));
        length_when_whole(&mut outbox);
        match outbox.swap_remove(0) {
            HttpTask::Header(head, _) => *head,
            _ => unreachable!(),
        }
    }

    #[test]
    fn a_whole_answer_goes_out_with_its_length_instead_of_chunked() {
        let head = whole(200, false, true, &[b"Hello ", b"from PHP"]);
        assert_eq!(head.headers["content-length"], "14");
        assert!(head.headers.get("transfer-encoding").is_none());
        // HTTP/1.0 and HTTP/2 answers have no chunked framing to replace.
        assert_eq!(
            whole(201, false, false, &[b"x"]).headers["content-length"],
            "1"
        );
        assert_eq!(whole(200, false, true, &[]).headers["content-length"], "0");
        // No body to measure: a HEAD answer, a 304, a 204.
        for head in [
            whole(200, true, true, &[b"x"]),
            whole(304, false, false, &[]),
            whole(204, false, false, &[]),
        ] {
            assert!(head.headers.get("content-length").is_none());
        }
    }

    #[test]
    fn an_answer_whose_head_went_out_is_left_as_framed() {
        let mut outbox = vec![
            HttpTask::Body(Some(Bytes::from_static(b"rest")), false),
            HttpTask::Body(None, true),
        ];
        length_when_whole(&mut outbox);
        assert_eq!(outbox.len(), 2);
        let mut head = ResponseHeader::build(200, None).unwrap();
        head.insert_header("content-length", "9").unwrap();
        let mut outbox = vec![
            HttpTask::Header(Box::new(head), false),
            HttpTask::Body(Some(Bytes::from_static(b"123456789")), true),
        ];
        length_when_whole(&mut outbox);
        let HttpTask::Header(head, _) = &outbox[0] else {
            unreachable!()
        };
        assert_eq!(
            head.headers["content-length"], "9",
            "the app's own length stays"
        );
    }

    #[test]
    fn head_status_and_repeated_headers() {
        let raw = b"Status: 201 Created\r\nSet-Cookie: a=1\r\nSet-Cookie: b=2\r\nContent-type: text/html\r\n\r\nbody";
        let (head, used) = parse_head(raw).expect("valid").expect("complete");
        assert_eq!(head.status.as_u16(), 201);
        let cookies: Vec<_> = head.headers.get_all("set-cookie").iter().collect();
        assert_eq!(cookies, ["a=1", "b=2"]);
        assert_eq!(&raw[used..], b"body");
        assert!(head.headers.get("status").is_none());

        let (head, used) = parse_head(b"Location: /x\n\nrest").unwrap().unwrap();
        assert_eq!(head.status.as_u16(), 302);
        assert_eq!(used, 14);
        assert!(parse_head(b"Content-Type: text/plain\r\n")
            .unwrap()
            .is_none());
        assert!(parse_head(b"Status: abc\r\n\r\n").is_err());
        assert!(parse_head(b"garbage\r\n\r\n").is_err());
        let (head, _) = parse_head(b"X-A: 1\r\n\r\n").unwrap().unwrap();
        assert_eq!(head.status.as_u16(), 200);
    }

    fn tree() -> PathBuf {
        let dir = std::env::temp_dir().join(format!("gw-fcgi-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("admin")).unwrap();
        std::fs::create_dir_all(dir.join("uploads")).unwrap();
        std::fs::write(dir.join("index.php"), "<?php").unwrap();
        std::fs::write(dir.join("info.php"), "<?php").unwrap();
        std::fs::write(dir.join("admin/index.php"), "<?php").unwrap();
        std::fs::write(dir.join("uploads/evil.jpg"), "<?php").unwrap();
        std::fs::canonicalize(dir).unwrap()
    }

    #[test]
    fn scripts_are_resolved_like_the_laravel_location() {
        let root = tree();
        let r = |p: &str| resolve(&root, "index.php", "/index.php", p);
        let front = Script::Run {
            name: "/index.php".into(),
            filename: root.join("index.php"),
        };
        assert_eq!(r("/hello"), front);
        assert_eq!(r("/"), front);
        assert_eq!(
            r("/info.php"),
            Script::Run {
                name: "/info.php".into(),
                filename: root.join("info.php")
            }
        );
        assert_eq!(
            r("/admin/"),
            Script::Run {
                name: "/admin/index.php".into(),
                filename: root.join("admin/index.php")
            }
        );
        assert_eq!(r("/missing.php"), Script::Missing);
        assert_eq!(r("/uploads/evil.jpg/x.php"), Script::Missing);
        assert_eq!(r("/uploads/evil.jpg%2Fx.php"), Script::Missing);
        assert_eq!(r("/info.PHP"), Script::Missing);
        assert_eq!(r("/a%2F..%2F..%2Fetc/passwd.php"), Script::BadPath);
        assert_eq!(r("/x%00.php"), Script::BadPath);
        assert_eq!(r("/.hidden.php"), Script::Missing);
        assert!(is_php_path("/a/b.php"));
        assert!(is_php_path("/a/b.ph%70"));
        assert!(is_php_path("/B.PHP"));
        assert!(!is_php_path("/b.php/x"));
        let _ = std::fs::remove_dir_all(&root);
    }

    #[test]
    fn params_follow_fastcgi_params() {
        let mut req = RequestHeader::build("POST", b"/p/q?x=1&y=2", None).unwrap();
        req.insert_header("host", "example.com:8443").unwrap();
        req.insert_header("content-type", "text/plain").unwrap();
        req.insert_header("x-real-ip", "203.0.113.5").unwrap();
        req.append_header("cookie", "a=1").unwrap();
        req.append_header("cookie", "b=2").unwrap();
        req.insert_header("x_real_ip", "6.6.6.6").unwrap();
        req.insert_header("proxy", "http://evil").unwrap();
        let root = PathBuf::from("/srv/app/public");
        let p = build_params(&RequestInfo {
            req: &req,
            script: ("/index.php", &root.join("index.php")),
            document_root: &root,
            tls: true,
            peer: Some("127.0.0.1:5555".parse().unwrap()),
            server: Some("127.0.0.1:8443".parse().unwrap()),
            content_length: Some(3),
        });
        let p = p.pairs();
        let get = |k: &str| {
            p.iter()
                .find(|(n, _)| n == k)
                .map(|(_, v)| String::from_utf8(v.clone()).unwrap())
        };
        assert_eq!(
            get("SCRIPT_FILENAME").as_deref(),
            Some("/srv/app/public/index.php")
        );
        assert_eq!(get("SCRIPT_NAME").as_deref(), Some("/index.php"));
        assert_eq!(get("REQUEST_URI").as_deref(), Some("/p/q?x=1&y=2"));
        assert_eq!(get("QUERY_STRING").as_deref(), Some("x=1&y=2"));
        assert_eq!(get("CONTENT_LENGTH").as_deref(), Some("3"));
        assert_eq!(get("HTTPS").as_deref(), Some("on"));
        assert_eq!(get("REMOTE_ADDR").as_deref(), Some("203.0.113.5"));
        assert_eq!(get("REMOTE_PORT").as_deref(), Some("5555"));
        assert_eq!(get("SERVER_NAME").as_deref(), Some("example.com"));
        assert_eq!(get("SERVER_PORT").as_deref(), Some("8443"));
        assert_eq!(get("HTTP_COOKIE").as_deref(), Some("a=1; b=2"));
        assert_eq!(get("HTTP_X_REAL_IP").as_deref(), Some("203.0.113.5"));
        assert_eq!(get("HTTP_PROXY"), None);
        assert_eq!(p.iter().filter(|(n, _)| n == "HTTP_X_REAL_IP").count(), 1);
    }
}
