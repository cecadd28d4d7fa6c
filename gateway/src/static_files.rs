//! Static file serving that replaces nginx's `root` + `try_files $uri $uri/ @backend`.
//!
//! The module is split into a planner ([`StaticFiles::plan`]) and a reader
//! ([`read_chunks`]) and knows nothing about pingora, so that every nginx-parity
//! and security rule can be unit-tested against a temporary directory tree and
//! the gateway stays the only place that talks to the proxy framework.
//!
//! Security model, in the order the rules are applied:
//!
//! * The request path is percent-decoded exactly once and then normalised, so
//!   `%2e%2e` and `%2f` cannot smuggle `..` or extra segments past the check;
//!   malformed escapes, NUL bytes, non-UTF-8 and backslashes are refused with
//!   400 because no legitimate static URL contains them and other layers (the
//!   backend behind the fall-through, Windows tooling) may read them differently.
//! * A path that climbs above the root is a 400, like nginx, rather than a
//!   fall-through: it is an attack or a broken client, never a backend route.
//! * Dot segments (`/.env`, `/.git/config`) are treated as absent because nginx
//!   sites almost always carry `location ~ /\.(?!well-known) { deny all; }`;
//!   `.well-known` stays reachable for ACME challenges and similar.
//! * Every candidate is canonicalised and must still lie under the canonical
//!   root, so a symlink pointing outside is never served (it falls through).
//! * Only regular files are served: opening a FIFO would block a worker and a
//!   device could leak data, and directories are never listed, so a request can
//!   never make us read a huge directory.
//!
//! The tree is assumed not to be writable by attackers while requests are
//! served: the planner checks the path and the reader opens it later, so a
//! concurrent symlink swap between the two is not defended against (that would
//! need `openat2(RESOLVE_BENEATH)`).

use std::ffi::OsString;
use std::fmt;
use std::fs::Metadata;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, StatusCode};
use percent_encoding::{percent_decode_str, utf8_percent_encode, AsciiSet, CONTROLS};
use tokio::io::{AsyncReadExt, AsyncSeekExt};

use crate::compression::{self, Coding};

/// Value for the `Allow` header of a 405 [`Plan::Reject`]: RFC 9110 requires
/// it and the planner cannot attach headers to a rejection.
pub const ALLOW: &str = "GET, HEAD";

/// Configuration for one static root.
#[derive(Debug, Clone)]
pub struct StaticOptions {
    /// Directory to serve; canonicalised once so later prefix checks compare
    /// like with like even when the configured path goes through symlinks.
    pub root: PathBuf,
    /// Index file names tried in order for a directory (nginx `index`): plain file names,
    /// as the settings builder checked them.
    pub index: Vec<String>,
    /// Sent verbatim on every file response (200, 206, 304) when set.
    pub cache_control: Option<HeaderValue>,
    /// Serve `file.br` / `file.gz` siblings when the client accepts them
    /// (nginx `brotli_static` / `gzip_static`).
    pub precompressed: bool,
}

impl StaticOptions {
    /// The configuration's index default, no Cache-Control, no precompressed siblings (a
    /// route's `static:` block turns `precompressed` on unless told otherwise: see
    /// `settings::defaults::STATIC_PRECOMPRESSED`).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self {
            root: root.into(),
            index: crate::settings::defaults::STATIC_INDEX
                .iter()
                .map(|s| s.to_string())
                .collect(),
            cache_control: None,
            precompressed: false,
        }
    }
}

/// Why a static root cannot be used; only raised at construction so that a
/// misconfiguration stops startup instead of turning into per-request 404s.
#[derive(Debug, thiserror::Error)]
pub enum StaticError {
    #[error("static root {} does not exist", path.display())]
    RootMissing { path: PathBuf },
    #[error("static root {} is not a directory", path.display())]
    RootNotDir { path: PathBuf },
    #[error("cannot use static root {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// What the gateway should do with a request.
#[derive(Debug)]
pub enum Plan {
    /// No servable file here: fall through to the next target (nginx
    /// `try_files` semantics).
    NotFound,
    /// Answer with this status and no body; `reason` is for the log only.
    /// A 405 must carry `Allow: `[`ALLOW`].
    Reject {
        status: StatusCode,
        reason: &'static str,
    },
    Serve(StaticResponse),
}

/// A complete response head plus where its body comes from.
///
/// `Content-Length` is present on every status except 304, where RFC 9110
/// only allows it if it equals the 200's length and nginx omits it.
#[derive(Debug)]
pub struct StaticResponse {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Body,
    /// On a 304 for the identity file: the `Content-Type` and `Content-Length` its 200 would
    /// carry, so that on-the-fly compression can give the 304 the same `Vary` and (weak) ETag
    /// as the 200 it stands for.
    pub not_modified_identity: Option<(HeaderValue, u64)>,
}

/// Where the response bytes come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Body {
    /// No bytes: HEAD, 301, 304, 416 and zero-length files.
    Empty,
    /// `len` bytes of the canonical file `path` starting at `offset`; read it
    /// with [`read_chunks`]. `len` always equals the `Content-Length` sent.
    File {
        path: PathBuf,
        offset: u64,
        len: u64,
    },
}

impl Body {
    /// Opens the reader for a file body; `None` for [`Body::Empty`].
    pub async fn reader(&self, chunk: usize) -> io::Result<Option<FileChunks>> {
        match self {
            Body::Empty => Ok(None),
            Body::File { path, offset, len } => {
                read_chunks(path, *offset, *len, chunk).await.map(Some)
            }
        }
    }
}

/// Sequential reader over a byte range of one file.
pub struct FileChunks {
    file: tokio::fs::File,
    remaining: u64,
    chunk: usize,
}

impl fmt::Debug for FileChunks {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FileChunks")
            .field("remaining", &self.remaining)
            .field("chunk", &self.chunk)
            .finish()
    }
}

/// Opens `path` for streaming `len` bytes from `offset` in chunks of at most
/// `chunk` bytes (0 is treated as 1).
///
/// The file is re-checked to be a regular file after opening because the
/// plan was made earlier and a FIFO swapped in meanwhile would block forever.
pub async fn read_chunks(
    path: &Path,
    offset: u64,
    len: u64,
    chunk: usize,
) -> io::Result<FileChunks> {
    let mut file = tokio::fs::File::open(path).await?;
    if !file.metadata().await?.is_file() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "static body is no longer a regular file",
        ));
    }
    if offset > 0 {
        file.seek(io::SeekFrom::Start(offset)).await?;
    }
    Ok(FileChunks {
        file,
        remaining: len,
        chunk: chunk.max(1),
    })
}

impl FileChunks {
    /// Next chunk, or `None` once `len` bytes were produced.
    ///
    /// A file that shrank since planning yields `UnexpectedEof` rather than a
    /// short body: Content-Length was already promised, so the gateway must
    /// abort the connection instead of finishing the response normally.
    pub async fn next(&mut self) -> io::Result<Option<Bytes>> {
        if self.remaining == 0 {
            return Ok(None);
        }
        let want = usize::try_from(self.remaining).map_or(self.chunk, |r| r.min(self.chunk));
        let mut buf = BytesMut::zeroed(want);
        let mut filled = 0;
        while filled < want {
            let n = self.file.read(&mut buf[filled..]).await?;
            if n == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "static file shrank while it was being served",
                ));
            }
            filled += n;
        }
        self.remaining -= want as u64;
        Ok(Some(buf.freeze()))
    }

    /// Lets the gateway log how much of a promised body was never sent when
    /// it has to abort.
    pub fn remaining(&self) -> u64 {
        self.remaining
    }
}

/// Planner for one static root; cheap to clone and share between workers.
#[derive(Debug, Clone)]
pub struct StaticFiles {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    root: PathBuf,
    index: Vec<String>,
    cache_control: Option<HeaderValue>,
    precompressed: bool,
}

impl StaticFiles {
    /// Checks the root once so that request handling never meets a missing one (index names
    /// and the header value arrive checked from the settings).
    pub fn new(opts: StaticOptions) -> Result<Self, StaticError> {
        let root = match std::fs::canonicalize(&opts.root) {
            Ok(root) => root,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(StaticError::RootMissing { path: opts.root })
            }
            Err(source) => {
                return Err(StaticError::Io {
                    path: opts.root,
                    source,
                })
            }
        };
        match std::fs::metadata(&root) {
            Ok(meta) if meta.is_dir() => {}
            Ok(_) => return Err(StaticError::RootNotDir { path: opts.root }),
            Err(source) => {
                return Err(StaticError::Io {
                    path: opts.root,
                    source,
                })
            }
        }
        Ok(Self {
            inner: Arc::new(Inner {
                root,
                index: opts.index,
                cache_control: opts.cache_control,
                precompressed: opts.precompressed,
            }),
        })
    }

    /// Exposed for startup logs: the canonical form may differ from the
    /// configured path, and it is the prefix every served file must have.
    pub fn root(&self) -> &Path {
        &self.inner.root
    }

    /// Decides what to answer.
    ///
    /// `path` is the raw request target as received (percent-encoded). A
    /// `?query` suffix is accepted and only used to keep the query in a
    /// directory redirect, as nginx does, so the gateway may pass either
    /// `uri.path()` or `uri.path_and_query()`.
    ///
    /// The lookups (a `realpath` and a `stat` or two) run inline, as nginx runs them: on a
    /// local filesystem they take microseconds, less than a hop to the blocking pool and back.
    pub async fn plan(&self, method: &Method, path: &str, headers: &HeaderMap) -> Plan {
        let (raw_path, query) = match path.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (path, None),
        };
        // Not a path (`*`, authority-form): no file can match, let the next
        // target decide.
        if !raw_path.starts_with('/') {
            return Plan::NotFound;
        }
        let req = match parse_path(raw_path) {
            Ok(req) => req,
            Err(reason) => {
                return Plan::Reject {
                    status: StatusCode::BAD_REQUEST,
                    reason,
                }
            }
        };
        if req.segments.iter().any(|s| is_hidden(s)) {
            tracing::debug!(path = raw_path, "static: hidden path treated as absent");
            return Plan::NotFound;
        }

        let found = find(&self.inner, &req.segments, req.trailing_slash);
        if matches!(found, Lookup::NotFound) {
            return Plan::NotFound;
        }
        // Checked only once something servable exists, so that e.g. a POST
        // to an API route still falls through to the backend.
        if method != Method::GET && method != Method::HEAD {
            return Plan::Reject {
                status: StatusCode::METHOD_NOT_ALLOWED,
                reason: "only GET and HEAD are allowed on static files",
            };
        }
        match found {
            Lookup::NotFound => Plan::NotFound,
            Lookup::Redirect => redirect(&req.segments, query),
            Lookup::File(file) => self.respond(method, headers, file),
        }
    }

    fn respond(&self, method: &Method, headers: &HeaderMap, file: FoundFile) -> Plan {
        let is_head = method == Method::HEAD;
        // RFC 9110 defines Range for GET only, so HEAD always describes the
        // full 200 (nginx would answer HEAD with 206).
        let range = if method == Method::GET {
            headers.get(header::RANGE)
        } else {
            None
        };
        let has_sibling = file.br.is_some() || file.gz.is_some();

        // Ranges are always served from the identity file: byte offsets into
        // a compressed variant would only be valid for that exact encoding.
        let encoded = if range.is_none() {
            choose_encoding(headers, file.br.as_ref(), file.gz.as_ref())
        } else {
            None
        };
        let (selected, encoding) = match encoded {
            Some((cand, enc)) => (cand, Some(enc)),
            None => (&file.identity, None),
        };

        let etag = selected.etag();
        let last_modified = selected
            .mtime
            .map(|secs| httpdate::fmt_http_date(from_secs(secs)));

        // Fields that RFC 9110 §15.4.5 wants repeated on a 304.
        let mut validators = HeaderMap::new();
        if let Some(etag) = &etag {
            insert_str(&mut validators, header::ETAG, &format!("\"{etag}\""));
        }
        if let Some(lm) = &last_modified {
            insert_str(&mut validators, header::LAST_MODIFIED, lm);
        }
        if let Some(cc) = &self.inner.cache_control {
            validators.insert(header::CACHE_CONTROL, cc.clone());
        }
        if has_sibling {
            validators.insert(header::VARY, HeaderValue::from_static("Accept-Encoding"));
        }

        match preconditions(headers, etag.as_deref(), selected.mtime) {
            Precondition::Failed => {
                return Plan::Reject {
                    status: StatusCode::PRECONDITION_FAILED,
                    reason: "precondition failed",
                }
            }
            Precondition::NotModified => {
                return Plan::Serve(StaticResponse {
                    status: StatusCode::NOT_MODIFIED,
                    headers: validators,
                    body: Body::Empty,
                    not_modified_identity: encoding
                        .is_none()
                        .then(|| (content_type(&file.logical), selected.size)),
                })
            }
            Precondition::Proceed => {}
        }

        let mut headers_out = validators;
        headers_out.insert(header::CONTENT_TYPE, content_type(&file.logical));
        headers_out.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
        if let Some(enc) = encoding {
            headers_out.insert(header::CONTENT_ENCODING, HeaderValue::from_static(enc));
        }

        let size = selected.size;
        let outcome = match range {
            Some(value) if if_range_allows(headers, etag.as_deref(), selected.mtime) => value
                .to_str()
                .map_or(RangeOutcome::Full, |v| parse_range(v, size)),
            _ => RangeOutcome::Full,
        };

        let (status, offset, len) = match outcome {
            RangeOutcome::Full => (StatusCode::OK, 0, size),
            RangeOutcome::Partial { start, end } => {
                insert_str(
                    &mut headers_out,
                    header::CONTENT_RANGE,
                    &format!("bytes {start}-{end}/{size}"),
                );
                (StatusCode::PARTIAL_CONTENT, start, end - start + 1)
            }
            RangeOutcome::Unsatisfiable => {
                let mut h = HeaderMap::new();
                insert_str(&mut h, header::CONTENT_RANGE, &format!("bytes */{size}"));
                h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
                h.insert(header::CONTENT_LENGTH, HeaderValue::from(0u64));
                return Plan::Serve(StaticResponse {
                    status: StatusCode::RANGE_NOT_SATISFIABLE,
                    headers: h,
                    body: Body::Empty,
                    not_modified_identity: None,
                });
            }
        };
        headers_out.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
        let body = if is_head || len == 0 {
            Body::Empty
        } else {
            Body::File {
                path: selected.path.clone(),
                offset,
                len,
            }
        };
        Plan::Serve(StaticResponse {
            status,
            headers: headers_out,
            body,
            not_modified_identity: None,
        })
    }
}

/// The decoded, normalised request path.
#[derive(Debug, PartialEq, Eq)]
struct RequestPath {
    segments: Vec<String>,
    /// The client asked for a directory (`/dir/`, `/dir/.`): nginx then only
    /// looks for an index and never serves a file of that name.
    trailing_slash: bool,
}

/// Decodes once, then resolves `.`/`..` like nginx does, so every encoded
/// form of a traversal is judged after decoding.
fn parse_path(raw: &str) -> Result<RequestPath, &'static str> {
    let bytes = raw.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let valid = bytes.get(i + 1).is_some_and(u8::is_ascii_hexdigit)
                && bytes.get(i + 2).is_some_and(u8::is_ascii_hexdigit);
            if !valid {
                return Err("invalid percent-encoding in path");
            }
            i += 3;
        } else {
            i += 1;
        }
    }
    let decoded: Vec<u8> = percent_decode_str(raw).collect();
    if decoded.contains(&0) {
        return Err("NUL byte in path");
    }
    let decoded = String::from_utf8(decoded).map_err(|_| "path is not valid UTF-8")?;
    if decoded.contains('\\') {
        return Err("backslash in path");
    }
    let mut segments: Vec<String> = Vec::new();
    let mut trailing_slash = false;
    for seg in decoded.split('/') {
        trailing_slash = matches!(seg, "" | "." | "..");
        match seg {
            "" | "." => {}
            ".." => {
                if segments.pop().is_none() {
                    return Err("path climbs above the root");
                }
            }
            _ => segments.push(seg.to_owned()),
        }
    }
    Ok(RequestPath {
        segments,
        trailing_slash,
    })
}

fn is_hidden(segment: &str) -> bool {
    segment.starts_with('.') && segment != ".well-known"
}

/// Characters escaped when a decoded segment is put back into a Location.
const SEGMENT: &AsciiSet = &CONTROLS
    .add(b' ')
    .add(b'"')
    .add(b'#')
    .add(b'%')
    .add(b'/')
    .add(b'<')
    .add(b'>')
    .add(b'?')
    .add(b'\\')
    .add(b'^')
    .add(b'`')
    .add(b'{')
    .add(b'|')
    .add(b'}');

/// Location is rebuilt from the normalised segments rather than the raw path
/// so that `//evil.example` (which normalises to a local directory) cannot
/// become a protocol-relative open redirect.
fn redirect(segments: &[String], query: Option<&str>) -> Plan {
    let mut location = String::new();
    for seg in segments {
        location.push('/');
        location.extend(utf8_percent_encode(seg, SEGMENT));
    }
    location.push('/');
    let with_query = match query {
        Some(q) if !q.is_empty() => HeaderValue::from_str(&format!("{location}?{q}")).ok(),
        _ => None,
    };
    let value = match with_query.map_or_else(|| HeaderValue::from_str(&location), Ok) {
        Ok(v) => v,
        Err(_) => {
            return Plan::Reject {
                status: StatusCode::BAD_REQUEST,
                reason: "redirect location is not a valid header value",
            }
        }
    };
    let mut headers = HeaderMap::new();
    headers.insert(header::LOCATION, value);
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(0u64));
    Plan::Serve(StaticResponse {
        status: StatusCode::MOVED_PERMANENTLY,
        headers,
        body: Body::Empty,
        not_modified_identity: None,
    })
}

/// One servable regular file, as found on disk.
#[derive(Debug, Clone)]
struct Candidate {
    path: PathBuf,
    size: u64,
    mtime: Option<u64>,
}

impl Candidate {
    fn from_meta(path: PathBuf, meta: &Metadata) -> Self {
        let mtime = meta
            .modified()
            .ok()
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map(|d| d.as_secs());
        Self {
            path,
            size: meta.len(),
            mtime,
        }
    }

    /// nginx's `"<mtime hex>-<size hex>"`, without the quotes, so caches that
    /// already hold nginx-issued tags keep revalidating successfully.
    fn etag(&self) -> Option<String> {
        self.mtime.map(|m| format!("{m:x}-{:x}", self.size))
    }
}

#[derive(Debug)]
struct FoundFile {
    /// Path as named by the request (or index), used for the Content-Type so
    /// a symlink to an extension-less blob still gets the requested type.
    logical: PathBuf,
    identity: Candidate,
    br: Option<Candidate>,
    gz: Option<Candidate>,
}

#[derive(Debug)]
enum Lookup {
    NotFound,
    Redirect,
    File(FoundFile),
}

fn find(inner: &Inner, segments: &[String], trailing_slash: bool) -> Lookup {
    let mut logical = inner.root.clone();
    logical.extend(segments);
    let Some((canon, meta)) = resolve(&inner.root, &logical) else {
        return Lookup::NotFound;
    };
    if meta.is_dir() {
        let index = inner.index.iter().find_map(|name| {
            let candidate = logical.join(name);
            match resolve(&inner.root, &candidate) {
                Some((canon, meta)) if meta.is_file() => Some((candidate, canon, meta)),
                _ => None,
            }
        });
        return match index {
            None => Lookup::NotFound,
            Some(_) if !trailing_slash => Lookup::Redirect,
            Some((logical, canon, meta)) => Lookup::File(found_file(inner, logical, canon, &meta)),
        };
    }
    if !meta.is_file() || trailing_slash {
        return Lookup::NotFound;
    }
    Lookup::File(found_file(inner, logical, canon, &meta))
}

fn found_file(inner: &Inner, logical: PathBuf, canon: PathBuf, meta: &Metadata) -> FoundFile {
    let sibling = |ext: &str| -> Option<Candidate> {
        if !inner.precompressed {
            return None;
        }
        let mut name = OsString::from(logical.as_os_str());
        name.push(ext);
        match resolve(&inner.root, Path::new(&name)) {
            Some((canon, meta)) if meta.is_file() => Some(Candidate::from_meta(canon, &meta)),
            _ => None,
        }
    };
    let br = sibling(".br");
    let gz = sibling(".gz");
    FoundFile {
        identity: Candidate::from_meta(canon, meta),
        br,
        gz,
        logical,
    }
}

/// Canonicalises `path` and returns it with its metadata only if it still
/// lies under `root`; anything unreadable counts as absent so the request
/// falls through, as `try_files` does.
///
/// A `stat` comes first: most lookups on an app's route are for a file that is not there
/// (every URL of a front controller), and it answers those in one syscall where
/// `realpath` reads every component of the path (six `readlink`s per PHP request under
/// examples/php). What exists is then canonicalised, so a symlink out of the root is
/// still refused; the `stat` followed the same links, so its metadata is the target's.
fn resolve(root: &Path, path: &Path) -> Option<(PathBuf, Metadata)> {
    let meta = match std::fs::metadata(path) {
        Ok(meta) => meta,
        Err(e) => {
            log_fs_error(path, &e);
            return None;
        }
    };
    let canon = match std::fs::canonicalize(path) {
        Ok(c) => c,
        Err(e) => {
            log_fs_error(path, &e);
            return None;
        }
    };
    if !canon.starts_with(root) {
        tracing::warn!(
            path = %path.display(),
            target = %canon.display(),
            "static: symlink resolves outside the root, not serving it"
        );
        return None;
    }
    Some((canon, meta))
}

fn log_fs_error(path: &Path, e: &io::Error) {
    match e.kind() {
        io::ErrorKind::NotFound | io::ErrorKind::NotADirectory => {}
        io::ErrorKind::PermissionDenied => {
            tracing::warn!(path = %path.display(), error = %e, "static: permission denied");
        }
        _ => tracing::debug!(path = %path.display(), error = %e, "static: lookup failed"),
    }
}

fn from_secs(secs: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(secs)
}

fn insert_str(headers: &mut HeaderMap, name: HeaderName, value: &str) {
    if let Ok(v) = HeaderValue::from_str(value) {
        headers.insert(name, v);
    }
}

/// Types nginx's `charset_types` would label, plus every `text/*`, so
/// browsers never have to sniff the encoding of text we serve.
fn content_type(logical: &Path) -> HeaderValue {
    let Some(mime) = mime_guess::from_path(logical).first_raw() else {
        return HeaderValue::from_static("application/octet-stream");
    };
    let wants_charset = mime.starts_with("text/")
        || matches!(
            mime,
            "application/javascript"
                | "application/xml"
                | "application/rss+xml"
                | "application/atom+xml"
        );
    if wants_charset {
        HeaderValue::from_str(&format!("{mime}; charset=utf-8"))
            .unwrap_or_else(|_| HeaderValue::from_static("application/octet-stream"))
    } else {
        HeaderValue::from_static(mime)
    }
}

/// The precompressed sibling the client weights highest (see
/// [`compression::negotiate`]: `q`-values, `*`, `identity`; brotli wins ties because it is
/// the smaller encoding). No `Accept-Encoding` gets the identity file, as with nginx's
/// gzip_static.
fn choose_encoding<'a>(
    headers: &HeaderMap,
    br: Option<&'a Candidate>,
    gz: Option<&'a Candidate>,
) -> Option<(&'a Candidate, &'static str)> {
    let mut offered = Vec::with_capacity(2);
    if br.is_some() {
        offered.push(Coding::Brotli);
    }
    if gz.is_some() {
        offered.push(Coding::Gzip);
    }
    let coding = compression::negotiate(headers, &offered)?;
    let candidate = match coding {
        Coding::Brotli => br?,
        Coding::Gzip => gz?,
    };
    Some((candidate, coding.token()))
}

#[derive(Debug, PartialEq, Eq)]
enum Precondition {
    Proceed,
    NotModified,
    Failed,
}

/// RFC 9110 §13.2.2 order. If-Modified-Since is honoured when the file is
/// not newer than the date (nginx `if_modified_since before`), not only on an
/// exact match (nginx's default `exact`), since caches legitimately send
/// other dates they saw.
fn preconditions(headers: &HeaderMap, etag: Option<&str>, mtime: Option<u64>) -> Precondition {
    if let Some(list) = etag_list(headers, header::IF_MATCH) {
        let ok = match list {
            EtagList::Any => true,
            EtagList::Tags(tags) => tags.iter().any(|(weak, t)| !weak && Some(*t) == etag),
        };
        if !ok {
            return Precondition::Failed;
        }
    } else if let (Some(since), Some(m)) = (http_date(headers, header::IF_UNMODIFIED_SINCE), mtime)
    {
        if m > since {
            return Precondition::Failed;
        }
    }
    if let Some(list) = etag_list(headers, header::IF_NONE_MATCH) {
        let matched = match list {
            EtagList::Any => true,
            EtagList::Tags(tags) => tags.iter().any(|(_, t)| Some(*t) == etag),
        };
        return if matched {
            Precondition::NotModified
        } else {
            Precondition::Proceed
        };
    }
    if let (Some(since), Some(m)) = (http_date(headers, header::IF_MODIFIED_SINCE), mtime) {
        if m <= since {
            return Precondition::NotModified;
        }
    }
    Precondition::Proceed
}

/// If-Range needs a strong match (RFC 9110 §13.1.5): a weak tag or a date
/// other than the exact Last-Modified means the client's partial copy may be
/// stale, so it gets the whole file instead.
fn if_range_allows(headers: &HeaderMap, etag: Option<&str>, mtime: Option<u64>) -> bool {
    let Some(value) = headers.get(header::IF_RANGE) else {
        return true;
    };
    let Ok(value) = value.to_str() else {
        return false;
    };
    let value = value.trim();
    if value.starts_with('"') || value.starts_with("W/") {
        let mut tags = Vec::new();
        return parse_tags(value, &mut tags)
            && matches!(tags.as_slice(), [(false, t)] if Some(*t) == etag);
    }
    match (httpdate::parse_http_date(value), mtime) {
        (Ok(date), Some(m)) => secs(date) == Some(m),
        _ => false,
    }
}

fn http_date(headers: &HeaderMap, name: HeaderName) -> Option<u64> {
    let value = headers.get(name)?.to_str().ok()?;
    secs(httpdate::parse_http_date(value.trim()).ok()?)
}

fn secs(t: SystemTime) -> Option<u64> {
    t.duration_since(UNIX_EPOCH).ok().map(|d| d.as_secs())
}

enum EtagList<'a> {
    Any,
    /// `(weak, opaque tag without quotes)`.
    Tags(Vec<(bool, &'a str)>),
}

/// All values of an If-Match / If-None-Match header; `None` when absent or
/// malformed, so a garbled header is ignored rather than guessed at.
fn etag_list(headers: &HeaderMap, name: HeaderName) -> Option<EtagList<'_>> {
    let mut tags = Vec::new();
    let mut seen = false;
    for value in headers.get_all(name) {
        seen = true;
        let value = value.to_str().ok()?;
        if value.trim() == "*" {
            return Some(EtagList::Any);
        }
        if !parse_tags(value, &mut tags) {
            return None;
        }
    }
    seen.then_some(EtagList::Tags(tags))
}

/// Parses a comma-separated entity-tag list by hand because a quoted tag may
/// itself contain commas.
fn parse_tags<'a>(s: &'a str, out: &mut Vec<(bool, &'a str)>) -> bool {
    let mut rest = s;
    loop {
        rest = rest.trim_start_matches([' ', '\t', ',']);
        if rest.is_empty() {
            return true;
        }
        let weak = match rest.strip_prefix("W/") {
            Some(r) => {
                rest = r;
                true
            }
            None => false,
        };
        let Some(r) = rest.strip_prefix('"') else {
            return false;
        };
        let Some(end) = r.find('"') else {
            return false;
        };
        out.push((weak, &r[..end]));
        rest = &r[end + 1..];
        if !(rest.is_empty() || rest.starts_with([' ', '\t', ','])) {
            return false;
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
enum RangeOutcome {
    Full,
    Partial { start: u64, end: u64 },
    Unsatisfiable,
}

#[derive(Debug, Clone, Copy)]
enum RangeSpec {
    From(u64, Option<u64>),
    Suffix(u64),
}

/// Single byte ranges only. A multi-range request is answered with the one
/// satisfiable range if only one is, 416 if none is, and the full 200
/// otherwise, instead of nginx's multipart/byteranges: RFC 9110 lets a server
/// ignore Range, and multipart bodies are rarely wanted and easy to abuse.
/// A syntactically invalid header or a unit other than `bytes` is ignored.
fn parse_range(value: &str, size: u64) -> RangeOutcome {
    let Some((unit, set)) = value.trim().split_once('=') else {
        return RangeOutcome::Full;
    };
    if !unit.trim().eq_ignore_ascii_case("bytes") {
        return RangeOutcome::Full;
    }
    let mut specs = Vec::new();
    for part in set.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        match parse_spec(part) {
            Some(spec) => specs.push(spec),
            None => return RangeOutcome::Full,
        }
    }
    if specs.is_empty() {
        return RangeOutcome::Full;
    }
    let satisfiable: Vec<(u64, u64)> = specs
        .iter()
        .filter_map(|spec| match *spec {
            RangeSpec::From(first, last) if first < size => {
                Some((first, last.map_or(size - 1, |l| l.min(size - 1))))
            }
            RangeSpec::Suffix(n) if n > 0 && size > 0 => Some((size - n.min(size), size - 1)),
            _ => None,
        })
        .collect();
    match satisfiable.as_slice() {
        [] => RangeOutcome::Unsatisfiable,
        [(start, end)] => RangeOutcome::Partial {
            start: *start,
            end: *end,
        },
        _ => RangeOutcome::Full,
    }
}

fn parse_spec(part: &str) -> Option<RangeSpec> {
    let (first, last) = part.split_once('-')?;
    let (first, last) = (first.trim(), last.trim());
    if first.is_empty() {
        return Some(RangeSpec::Suffix(parse_digits(last)?));
    }
    let first = parse_digits(first)?;
    if last.is_empty() {
        return Some(RangeSpec::From(first, None));
    }
    let last = parse_digits(last)?;
    (last >= first).then_some(RangeSpec::From(first, Some(last)))
}

/// Saturates instead of failing on overflow: a huge position is simply past
/// the end of any file, which the satisfiability check handles.
fn parse_digits(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(s.bytes().fold(0u64, |acc, b| {
        acc.saturating_mul(10).saturating_add(u64::from(b - b'0'))
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    /// Fixed mtime so ETag / Last-Modified values can be compared byte for byte.
    const MTIME: u64 = 1_700_000_000; // 0x6553f100
    const LAST_MODIFIED: &str = "Tue, 14 Nov 2023 22:13:20 GMT";
    const HELLO_ETAG: &str = "\"6553f100-c\"";

    /// Minimal temp dir so the tests need no extra dev-dependency.
    struct TempTree {
        path: PathBuf,
    }

    impl TempTree {
        fn new() -> Self {
            static COUNTER: AtomicU32 = AtomicU32::new(0);
            let n = COUNTER.fetch_add(1, Ordering::Relaxed);
            let nanos = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.subsec_nanos())
                .unwrap_or(0);
            let path = std::env::temp_dir().join(format!(
                "static-files-test-{}-{n}-{nanos}",
                std::process::id()
            ));
            std::fs::create_dir_all(&path).expect("create temp dir");
            Self { path }
        }
    }

    impl Drop for TempTree {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }

    fn write_at(path: &Path, contents: &[u8], mtime: u64) {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).expect("create parent");
        }
        std::fs::write(path, contents).expect("write file");
        std::fs::File::options()
            .write(true)
            .open(path)
            .expect("open for mtime")
            .set_modified(from_secs(mtime))
            .expect("set mtime");
    }

    fn symlink(target: &str, link: &Path) {
        std::os::unix::fs::symlink(target, link).expect("symlink");
    }

    /// The tree every test serves from; `www` is the root, `outside` is a
    /// sibling that must never be reachable.
    fn tree() -> TempTree {
        let t = TempTree::new();
        let www = t.path.join("www");
        let w = |rel: &str, contents: &str| write_at(&www.join(rel), contents.as_bytes(), MTIME);
        w("hello.txt", "hello world\n");
        w("index.html", "<h1>root</h1>");
        w("page.html", "<p>page</p>");
        w("style.css", "body{}");
        w("style.css.gz", "GZ");
        w("app.js", "console.log(1);\n");
        write_at(&www.join("app.js.br"), b"BR!", MTIME + 1);
        w("app.js.gz", "GZIP");
        w("module.mjs", "export {}");
        w("feed.xml", "<rss/>");
        w("image.png", "png");
        w("data.json", "{}");
        w("blob.qqqunknown", "???");
        w("README", "readme");
        w("empty.txt", "");
        w("dir/index.html", "dir index");
        w("dir/.hidden", "hidden");
        w("dir/sub/file.txt", "sub file");
        w("evil.com/index.html", "evil");
        w("a b/index.html", "space");
        w("café.txt", "coffee");
        w(".env", "SECRET=1");
        w(".git/config", "[core]");
        w(".well-known/acme-challenge/token", "tok");
        std::fs::create_dir_all(www.join("emptydir")).expect("emptydir");
        std::fs::create_dir_all(www.join("idxdir/index.html")).expect("idxdir");
        write_at(&t.path.join("outside/secret.txt"), b"secret", MTIME);
        symlink("../outside/secret.txt", &www.join("link_out"));
        symlink("../outside", &www.join("linkdir_out"));
        symlink("hello.txt", &www.join("link_in"));
        symlink("hello.txt", &www.join("alias.css"));
        std::fs::create_dir_all(www.join("index_out")).expect("index_out");
        symlink(
            "../../outside/secret.txt",
            &www.join("index_out/index.html"),
        );
        t
    }

    fn opts(t: &TempTree) -> StaticOptions {
        StaticOptions::new(t.path.join("www"))
    }

    fn files(t: &TempTree) -> StaticFiles {
        StaticFiles::new(opts(t)).expect("static files")
    }

    fn precompressed(t: &TempTree) -> StaticFiles {
        let mut o = opts(t);
        o.precompressed = true;
        StaticFiles::new(o).expect("static files")
    }

    fn hdrs(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (k, v) in pairs {
            map.append(
                HeaderName::from_bytes(k.as_bytes()).expect("name"),
                HeaderValue::from_str(v).expect("value"),
            );
        }
        map
    }

    async fn req(sf: &StaticFiles, method: Method, path: &str, pairs: &[(&str, &str)]) -> Plan {
        sf.plan(&method, path, &hdrs(pairs)).await
    }

    async fn get(sf: &StaticFiles, path: &str, pairs: &[(&str, &str)]) -> Plan {
        req(sf, Method::GET, path, pairs).await
    }

    #[track_caller]
    fn served(plan: Plan) -> StaticResponse {
        match plan {
            Plan::Serve(r) => r,
            other => panic!("expected Serve, got {other:?}"),
        }
    }

    #[track_caller]
    fn not_found(plan: Plan) {
        assert!(
            matches!(plan, Plan::NotFound),
            "expected NotFound, got {plan:?}"
        );
    }

    #[track_caller]
    fn rejected(plan: Plan, want: StatusCode) {
        match plan {
            Plan::Reject { status, .. } => assert_eq!(status, want),
            other => panic!("expected Reject {want}, got {other:?}"),
        }
    }

    fn h<'a>(r: &'a StaticResponse, name: &str) -> Option<&'a str> {
        r.headers
            .get(name)
            .map(|v| v.to_str().expect("ascii header"))
    }

    fn file_body(sf: &StaticFiles, rel: &str, offset: u64, len: u64) -> Body {
        Body::File {
            path: sf.root().join(rel),
            offset,
            len,
        }
    }

    // ---- construction ----

    #[test]
    fn new_rejects_missing_root() {
        let t = TempTree::new();
        let err = StaticFiles::new(StaticOptions::new(t.path.join("nope"))).expect_err("missing");
        assert!(matches!(err, StaticError::RootMissing { .. }), "{err:?}");
    }

    #[test]
    fn new_rejects_file_root() {
        let t = TempTree::new();
        write_at(&t.path.join("f"), b"x", MTIME);
        let err = StaticFiles::new(StaticOptions::new(t.path.join("f"))).expect_err("file");
        assert!(matches!(err, StaticError::RootNotDir { .. }), "{err:?}");
    }

    #[tokio::test]
    async fn root_is_canonicalized_through_symlink() {
        let t = tree();
        symlink("www", &t.path.join("rootlink"));
        let sf = StaticFiles::new(StaticOptions::new(t.path.join("rootlink"))).expect("new");
        let canon = std::fs::canonicalize(t.path.join("www")).expect("canon");
        assert_eq!(sf.root(), canon.as_path());
        let r = served(get(&sf, "/hello.txt", &[]).await);
        assert_eq!(r.body, file_body(&sf, "hello.txt", 0, 12));
    }

    // ---- plain responses ----

    #[tokio::test]
    async fn full_response_headers_are_exact() {
        let t = tree();
        let sf = files(&t);
        let r = served(get(&sf, "/hello.txt", &[]).await);
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(h(&r, "content-type"), Some("text/plain; charset=utf-8"));
        assert_eq!(h(&r, "content-length"), Some("12"));
        assert_eq!(h(&r, "etag"), Some(HELLO_ETAG));
        assert_eq!(h(&r, "last-modified"), Some(LAST_MODIFIED));
        assert_eq!(h(&r, "accept-ranges"), Some("bytes"));
        assert_eq!(h(&r, "cache-control"), None);
        assert_eq!(h(&r, "vary"), None);
        assert_eq!(h(&r, "content-encoding"), None);
        assert_eq!(r.headers.len(), 5);
        assert_eq!(r.body, file_body(&sf, "hello.txt", 0, 12));
    }

    #[tokio::test]
    async fn head_has_get_headers_and_no_body() {
        let t = tree();
        let sf = files(&t);
        let g = served(get(&sf, "/hello.txt", &[]).await);
        let r = served(req(&sf, Method::HEAD, "/hello.txt", &[]).await);
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(r.headers, g.headers);
        assert_eq!(r.body, Body::Empty);
    }

    #[tokio::test]
    async fn content_types() {
        let t = tree();
        let sf = files(&t);
        let cases = [
            ("/page.html", "text/html; charset=utf-8"),
            ("/hello.txt", "text/plain; charset=utf-8"),
            ("/style.css", "text/css; charset=utf-8"),
            ("/app.js", "text/javascript; charset=utf-8"),
            ("/module.mjs", "application/javascript; charset=utf-8"),
            ("/feed.xml", "text/xml; charset=utf-8"),
            ("/data.json", "application/json"),
            ("/image.png", "image/png"),
            ("/blob.qqqunknown", "application/octet-stream"),
            ("/README", "application/octet-stream"),
            // Type follows the requested name, not the symlink target.
            ("/alias.css", "text/css; charset=utf-8"),
        ];
        for (path, want) in cases {
            let r = served(get(&sf, path, &[]).await);
            assert_eq!(h(&r, "content-type"), Some(want), "{path}");
        }
    }

    #[tokio::test]
    async fn cache_control_from_options() {
        let t = tree();
        let mut o = opts(&t);
        o.cache_control = Some(HeaderValue::from_static("public, max-age=3600"));
        let sf = StaticFiles::new(o).expect("new");
        let r = served(get(&sf, "/hello.txt", &[]).await);
        assert_eq!(h(&r, "cache-control"), Some("public, max-age=3600"));
        let r = served(get(&sf, "/hello.txt", &[("if-none-match", HELLO_ETAG)]).await);
        assert_eq!(r.status, StatusCode::NOT_MODIFIED);
        assert_eq!(h(&r, "cache-control"), Some("public, max-age=3600"));
        let r = served(get(&sf, "/hello.txt", &[("range", "bytes=0-1")]).await);
        assert_eq!(h(&r, "cache-control"), Some("public, max-age=3600"));
    }

    #[tokio::test]
    async fn empty_file_has_zero_length_and_no_body() {
        let t = tree();
        let sf = files(&t);
        let r = served(get(&sf, "/empty.txt", &[]).await);
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(h(&r, "content-length"), Some("0"));
        assert_eq!(h(&r, "etag"), Some("\"6553f100-0\""));
        assert_eq!(r.body, Body::Empty);
    }

    #[tokio::test]
    async fn percent_encoded_names_are_decoded() {
        let t = tree();
        let sf = files(&t);
        let r = served(get(&sf, "/caf%C3%A9.txt", &[]).await);
        assert_eq!(r.body, file_body(&sf, "café.txt", 0, 6));
        let r = served(get(&sf, "/a%20b/", &[]).await);
        assert_eq!(r.body, file_body(&sf, "a b/index.html", 0, 5));
        let r = served(get(&sf, "/hello.txt?v=3", &[]).await);
        assert_eq!(r.status, StatusCode::OK);
    }

    #[tokio::test]
    async fn missing_file_falls_through() {
        let t = tree();
        let sf = files(&t);
        not_found(get(&sf, "/nope.txt", &[]).await);
        not_found(get(&sf, "/nope/deeper.txt", &[]).await);
        not_found(get(&sf, "/hello.txt/x", &[]).await);
        // Not origin-form: there is no file to look for.
        not_found(get(&sf, "*", &[]).await);
        not_found(get(&sf, "", &[]).await);
    }

    #[tokio::test]
    async fn file_with_trailing_slash_falls_through() {
        let t = tree();
        let sf = files(&t);
        not_found(get(&sf, "/hello.txt/", &[]).await);
        not_found(get(&sf, "/hello.txt/.", &[]).await);
    }

    #[tokio::test]
    async fn methods_other_than_get_head() {
        let t = tree();
        let sf = files(&t);
        rejected(
            req(&sf, Method::POST, "/hello.txt", &[]).await,
            StatusCode::METHOD_NOT_ALLOWED,
        );
        rejected(
            req(&sf, Method::DELETE, "/", &[]).await,
            StatusCode::METHOD_NOT_ALLOWED,
        );
        rejected(
            req(&sf, Method::PUT, "/dir", &[]).await,
            StatusCode::METHOD_NOT_ALLOWED,
        );
        // Nothing static here: the backend must still get the POST.
        not_found(req(&sf, Method::POST, "/api/login", &[]).await);
        not_found(req(&sf, Method::POST, "/emptydir/", &[]).await);
        not_found(req(&sf, Method::POST, "/.env", &[]).await);
        // Malformed paths are refused whatever the method.
        rejected(
            req(&sf, Method::POST, "/%00", &[]).await,
            StatusCode::BAD_REQUEST,
        );
    }

    // ---- directories ----

    #[tokio::test]
    async fn directory_index() {
        let t = tree();
        let sf = files(&t);
        let r = served(get(&sf, "/", &[]).await);
        assert_eq!(r.body, file_body(&sf, "index.html", 0, 13));
        assert_eq!(h(&r, "content-type"), Some("text/html; charset=utf-8"));
        let r = served(get(&sf, "/dir/", &[]).await);
        assert_eq!(r.body, file_body(&sf, "dir/index.html", 0, 9));
        assert_eq!(h(&r, "etag"), Some("\"6553f100-9\""));
        let r = served(get(&sf, "/dir/.", &[]).await);
        assert_eq!(r.body, file_body(&sf, "dir/index.html", 0, 9));
    }

    #[tokio::test]
    async fn custom_index_list_is_tried_in_order() {
        let t = tree();
        let mut o = opts(&t);
        o.index = vec!["missing.htm".into(), "file.txt".into()];
        let sf = StaticFiles::new(o).expect("new");
        let r = served(get(&sf, "/dir/sub/", &[]).await);
        assert_eq!(r.body, file_body(&sf, "dir/sub/file.txt", 0, 8));
        assert_eq!(h(&r, "content-type"), Some("text/plain; charset=utf-8"));
        let mut o = opts(&t);
        o.index = vec![];
        let sf = StaticFiles::new(o).expect("new");
        not_found(get(&sf, "/dir/", &[]).await);
        not_found(get(&sf, "/dir", &[]).await);
    }

    #[tokio::test]
    async fn directory_without_slash_redirects() {
        let t = tree();
        let sf = files(&t);
        let r = served(get(&sf, "/dir", &[]).await);
        assert_eq!(r.status, StatusCode::MOVED_PERMANENTLY);
        assert_eq!(h(&r, "location"), Some("/dir/"));
        assert_eq!(h(&r, "content-length"), Some("0"));
        assert_eq!(r.body, Body::Empty);
        let r = served(get(&sf, "/dir?x=1&y=2", &[]).await);
        assert_eq!(h(&r, "location"), Some("/dir/?x=1&y=2"));
        let r = served(get(&sf, "/a%20b", &[]).await);
        assert_eq!(h(&r, "location"), Some("/a%20b/"));
        let r = served(req(&sf, Method::HEAD, "/dir", &[]).await);
        assert_eq!(r.status, StatusCode::MOVED_PERMANENTLY);
    }

    #[tokio::test]
    async fn redirect_is_never_protocol_relative() {
        let t = tree();
        let sf = files(&t);
        let r = served(get(&sf, "//evil.com", &[]).await);
        assert_eq!(h(&r, "location"), Some("/evil.com/"));
        let r = served(get(&sf, "/%2fevil.com", &[]).await);
        assert_eq!(h(&r, "location"), Some("/evil.com/"));
        let r = served(get(&sf, "/./evil.com", &[]).await);
        assert_eq!(h(&r, "location"), Some("/evil.com/"));
    }

    #[tokio::test]
    async fn directory_without_index_falls_through() {
        let t = tree();
        let sf = files(&t);
        not_found(get(&sf, "/dir/sub/", &[]).await);
        not_found(get(&sf, "/dir/sub", &[]).await);
        not_found(get(&sf, "/emptydir/", &[]).await);
        not_found(get(&sf, "/emptydir", &[]).await);
        // An "index.html" that is itself a directory is not an index.
        not_found(get(&sf, "/idxdir/", &[]).await);
        not_found(get(&sf, "/idxdir", &[]).await);
    }

    // ---- conditional requests ----

    #[tokio::test]
    async fn if_none_match() {
        let t = tree();
        let sf = files(&t);
        for inm in [
            HELLO_ETAG,
            "\"other\", \"6553f100-c\"",
            "W/\"6553f100-c\"",
            "*",
            "\"a,b\", W/\"6553f100-c\"",
        ] {
            let r = served(get(&sf, "/hello.txt", &[("if-none-match", inm)]).await);
            assert_eq!(r.status, StatusCode::NOT_MODIFIED, "{inm}");
            assert_eq!(h(&r, "etag"), Some(HELLO_ETAG));
            assert_eq!(h(&r, "last-modified"), Some(LAST_MODIFIED));
            assert_eq!(h(&r, "content-length"), None);
            assert_eq!(h(&r, "content-type"), None);
            assert_eq!(r.body, Body::Empty);
            // What the 200 would have been, for on-the-fly compression to mark the 304 alike.
            assert_eq!(
                r.not_modified_identity,
                Some((HeaderValue::from_static("text/plain; charset=utf-8"), 12)),
                "{inm}"
            );
        }
        // Split across several header lines.
        let r = served(
            get(
                &sf,
                "/hello.txt",
                &[("if-none-match", "\"x\""), ("if-none-match", HELLO_ETAG)],
            )
            .await,
        );
        assert_eq!(r.status, StatusCode::NOT_MODIFIED);
        for inm in [
            "\"6553f100-d\"",
            "\"other\"",
            "6553f100-c",
            "\"unterminated",
        ] {
            let r = served(get(&sf, "/hello.txt", &[("if-none-match", inm)]).await);
            assert_eq!(r.status, StatusCode::OK, "{inm}");
        }
        let r = served(
            req(
                &sf,
                Method::HEAD,
                "/hello.txt",
                &[("if-none-match", HELLO_ETAG)],
            )
            .await,
        );
        assert_eq!(r.status, StatusCode::NOT_MODIFIED);
    }

    #[tokio::test]
    async fn if_modified_since() {
        let t = tree();
        let sf = files(&t);
        for ims in [LAST_MODIFIED, "Wed, 15 Nov 2023 00:00:00 GMT"] {
            let r = served(get(&sf, "/hello.txt", &[("if-modified-since", ims)]).await);
            assert_eq!(r.status, StatusCode::NOT_MODIFIED, "{ims}");
            assert_eq!(h(&r, "etag"), Some(HELLO_ETAG));
        }
        for ims in ["Tue, 14 Nov 2023 22:13:19 GMT", "not a date"] {
            let r = served(get(&sf, "/hello.txt", &[("if-modified-since", ims)]).await);
            assert_eq!(r.status, StatusCode::OK, "{ims}");
        }
    }

    #[tokio::test]
    async fn if_none_match_takes_precedence_over_if_modified_since() {
        let t = tree();
        let sf = files(&t);
        let r = served(
            get(
                &sf,
                "/hello.txt",
                &[
                    ("if-none-match", "\"stale\""),
                    ("if-modified-since", LAST_MODIFIED),
                ],
            )
            .await,
        );
        assert_eq!(r.status, StatusCode::OK);
        let r = served(
            get(
                &sf,
                "/hello.txt",
                &[
                    ("if-none-match", HELLO_ETAG),
                    ("if-modified-since", "Tue, 14 Nov 2000 22:13:19 GMT"),
                ],
            )
            .await,
        );
        assert_eq!(r.status, StatusCode::NOT_MODIFIED);
    }

    #[tokio::test]
    async fn if_match_and_if_unmodified_since() {
        let t = tree();
        let sf = files(&t);
        for ok in [HELLO_ETAG, "*", "\"x\", \"6553f100-c\""] {
            let r = served(get(&sf, "/hello.txt", &[("if-match", ok)]).await);
            assert_eq!(r.status, StatusCode::OK, "{ok}");
        }
        for bad in ["\"x\"", "W/\"6553f100-c\""] {
            rejected(
                get(&sf, "/hello.txt", &[("if-match", bad)]).await,
                StatusCode::PRECONDITION_FAILED,
            );
        }
        rejected(
            get(
                &sf,
                "/hello.txt",
                &[("if-unmodified-since", "Tue, 14 Nov 2023 22:13:19 GMT")],
            )
            .await,
            StatusCode::PRECONDITION_FAILED,
        );
        let r = served(get(&sf, "/hello.txt", &[("if-unmodified-since", LAST_MODIFIED)]).await);
        assert_eq!(r.status, StatusCode::OK);
    }

    // ---- ranges ----

    #[tokio::test]
    async fn single_ranges() {
        let t = tree();
        let sf = files(&t);
        let cases = [
            ("bytes=0-4", 0, 4),
            ("bytes=6-", 6, 11),
            ("bytes=-3", 9, 11),
            ("bytes=-100", 0, 11),
            ("bytes=5-100", 5, 11),
            ("bytes=11-11", 11, 11),
            ("BYTES = 1-2", 1, 2),
            ("bytes=0-4, ", 0, 4),
            ("bytes=0-1, 50-60", 0, 1),
            ("bytes=0-99999999999999999999999", 0, 11),
        ];
        for (range, start, end) in cases {
            let r = served(get(&sf, "/hello.txt", &[("range", range)]).await);
            assert_eq!(r.status, StatusCode::PARTIAL_CONTENT, "{range}");
            let want = format!("bytes {start}-{end}/12");
            assert_eq!(h(&r, "content-range"), Some(want.as_str()), "{range}");
            let len = end - start + 1;
            assert_eq!(
                h(&r, "content-length"),
                Some(len.to_string().as_str()),
                "{range}"
            );
            assert_eq!(h(&r, "etag"), Some(HELLO_ETAG));
            assert_eq!(h(&r, "accept-ranges"), Some("bytes"));
            assert_eq!(h(&r, "content-type"), Some("text/plain; charset=utf-8"));
            assert_eq!(r.body, file_body(&sf, "hello.txt", start, len), "{range}");
        }
    }

    #[tokio::test]
    async fn unsatisfiable_ranges() {
        let t = tree();
        let sf = files(&t);
        for range in [
            "bytes=12-",
            "bytes=12-20",
            "bytes=-0",
            "bytes=100-,200-300",
            "bytes=99999999999999999999999-",
        ] {
            let r = served(get(&sf, "/hello.txt", &[("range", range)]).await);
            assert_eq!(r.status, StatusCode::RANGE_NOT_SATISFIABLE, "{range}");
            assert_eq!(h(&r, "content-range"), Some("bytes */12"));
            assert_eq!(h(&r, "content-length"), Some("0"));
            assert_eq!(r.body, Body::Empty);
        }
        let r = served(get(&sf, "/empty.txt", &[("range", "bytes=0-")]).await);
        assert_eq!(r.status, StatusCode::RANGE_NOT_SATISFIABLE);
        assert_eq!(h(&r, "content-range"), Some("bytes */0"));
    }

    #[tokio::test]
    async fn ignored_ranges_serve_full_file() {
        let t = tree();
        let sf = files(&t);
        for range in [
            "bytes=0-1,3-4", // several satisfiable ranges: no multipart
            "bytes=-1,0-0",
            "bytes=abc",
            "bytes=5-1",
            "bytes=1-2-3",
            "bytes=",
            "items=0-1",
            "0-1",
            "bytes=+1-2",
        ] {
            let r = served(get(&sf, "/hello.txt", &[("range", range)]).await);
            assert_eq!(r.status, StatusCode::OK, "{range}");
            assert_eq!(h(&r, "content-range"), None);
            assert_eq!(h(&r, "content-length"), Some("12"));
            assert_eq!(r.body, file_body(&sf, "hello.txt", 0, 12));
        }
        // Range is defined for GET only.
        let r = served(req(&sf, Method::HEAD, "/hello.txt", &[("range", "bytes=0-1")]).await);
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(h(&r, "content-length"), Some("12"));
    }

    #[tokio::test]
    async fn if_range() {
        let t = tree();
        let sf = files(&t);
        for (if_range, partial) in [
            (HELLO_ETAG, true),
            (LAST_MODIFIED, true),
            ("\"stale\"", false),
            ("W/\"6553f100-c\"", false),
            ("Tue, 14 Nov 2023 22:13:21 GMT", false),
            ("garbage", false),
        ] {
            let r = served(
                get(
                    &sf,
                    "/hello.txt",
                    &[("range", "bytes=0-4"), ("if-range", if_range)],
                )
                .await,
            );
            if partial {
                assert_eq!(r.status, StatusCode::PARTIAL_CONTENT, "{if_range}");
                assert_eq!(h(&r, "content-range"), Some("bytes 0-4/12"));
            } else {
                assert_eq!(r.status, StatusCode::OK, "{if_range}");
                assert_eq!(h(&r, "content-length"), Some("12"));
                assert_eq!(h(&r, "content-range"), None);
            }
        }
    }

    // ---- precompressed siblings ----

    #[tokio::test]
    async fn precompressed_selection() {
        let t = tree();
        let sf = precompressed(&t);
        let cases = [
            ("gzip, deflate, br", Some("br")),
            ("br", Some("br")),
            ("gzip", Some("gzip")),
            ("x-gzip", Some("gzip")),
            ("GZIP", Some("gzip")),
            ("br;q=0, gzip", Some("gzip")),
            ("br; q=0.0, gzip;q=0.1", Some("gzip")),
            ("gzip;q=0.5, br;q=0.4", Some("gzip")),
            ("gzip;q=0.5, br;q=0.5", Some("br")),
            ("*", Some("br")),
            ("*;q=0.5, br;q=0", Some("gzip")),
            ("*;q=0", None),
            ("identity", None),
            ("deflate", None),
            ("br;q=2", None),
            ("br;q=abc", None),
            ("", None),
        ];
        for (ae, want) in cases {
            let r = served(get(&sf, "/app.js", &[("accept-encoding", ae)]).await);
            assert_eq!(r.status, StatusCode::OK, "{ae}");
            assert_eq!(h(&r, "content-encoding"), want, "{ae}");
            assert_eq!(h(&r, "vary"), Some("Accept-Encoding"), "{ae}");
            assert_eq!(
                h(&r, "content-type"),
                Some("text/javascript; charset=utf-8"),
                "{ae}"
            );
            let (rel, etag, len) = match want {
                Some("br") => ("app.js.br", "\"6553f101-3\"", 3),
                Some("gzip") => ("app.js.gz", "\"6553f100-4\"", 4),
                _ => ("app.js", "\"6553f100-10\"", 16),
            };
            assert_eq!(h(&r, "etag"), Some(etag), "{ae}");
            assert_eq!(
                h(&r, "content-length"),
                Some(len.to_string().as_str()),
                "{ae}"
            );
            assert_eq!(r.body, file_body(&sf, rel, 0, len), "{ae}");
        }
        // No Accept-Encoding at all: identity, still varying.
        let r = served(get(&sf, "/app.js", &[]).await);
        assert_eq!(h(&r, "content-encoding"), None);
        assert_eq!(h(&r, "vary"), Some("Accept-Encoding"));
        let r = served(
            get(
                &sf,
                "/app.js",
                &[("accept-encoding", "br;q=0"), ("accept-encoding", "gzip")],
            )
            .await,
        );
        assert_eq!(h(&r, "content-encoding"), Some("gzip"));
    }

    #[tokio::test]
    async fn precompressed_only_gz_and_none() {
        let t = tree();
        let sf = precompressed(&t);
        let r = served(get(&sf, "/style.css", &[("accept-encoding", "br")]).await);
        assert_eq!(h(&r, "content-encoding"), None);
        assert_eq!(h(&r, "vary"), Some("Accept-Encoding"));
        assert_eq!(r.body, file_body(&sf, "style.css", 0, 6));
        let r = served(get(&sf, "/style.css", &[("accept-encoding", "br, gzip")]).await);
        assert_eq!(h(&r, "content-encoding"), Some("gzip"));
        assert_eq!(h(&r, "content-type"), Some("text/css; charset=utf-8"));
        assert_eq!(r.body, file_body(&sf, "style.css.gz", 0, 2));
        // No sibling: no Vary.
        let r = served(get(&sf, "/hello.txt", &[("accept-encoding", "br, gzip")]).await);
        assert_eq!(h(&r, "content-encoding"), None);
        assert_eq!(h(&r, "vary"), None);
    }

    #[tokio::test]
    async fn precompressed_disabled_ignores_siblings() {
        let t = tree();
        let sf = files(&t);
        let r = served(get(&sf, "/app.js", &[("accept-encoding", "br, gzip")]).await);
        assert_eq!(h(&r, "content-encoding"), None);
        assert_eq!(h(&r, "vary"), None);
        assert_eq!(r.body, file_body(&sf, "app.js", 0, 16));
    }

    #[tokio::test]
    async fn precompressed_head_conditional_and_range() {
        let t = tree();
        let sf = precompressed(&t);
        let ae = ("accept-encoding", "br");
        let r = served(req(&sf, Method::HEAD, "/app.js", &[ae]).await);
        assert_eq!(h(&r, "content-encoding"), Some("br"));
        assert_eq!(h(&r, "content-length"), Some("3"));
        assert_eq!(r.body, Body::Empty);
        let r = served(get(&sf, "/app.js", &[ae, ("if-none-match", "\"6553f101-3\"")]).await);
        assert_eq!(r.status, StatusCode::NOT_MODIFIED);
        assert_eq!(h(&r, "etag"), Some("\"6553f101-3\""));
        assert_eq!(h(&r, "vary"), Some("Accept-Encoding"));
        assert_eq!(r.not_modified_identity, None, "a precompressed variant");
        // The identity tag does not validate the brotli variant.
        let r = served(get(&sf, "/app.js", &[ae, ("if-none-match", "\"6553f100-10\"")]).await);
        assert_eq!(r.status, StatusCode::OK);
        // Ranges always come from the identity file.
        let r = served(get(&sf, "/app.js", &[ae, ("range", "bytes=0-6")]).await);
        assert_eq!(r.status, StatusCode::PARTIAL_CONTENT);
        assert_eq!(h(&r, "content-encoding"), None);
        assert_eq!(h(&r, "content-range"), Some("bytes 0-6/16"));
        assert_eq!(h(&r, "etag"), Some("\"6553f100-10\""));
        assert_eq!(h(&r, "vary"), Some("Accept-Encoding"));
        assert_eq!(r.body, file_body(&sf, "app.js", 0, 7));
        // Even an ignored Range keeps the identity file, so If-Range tags
        // always refer to the identity representation.
        let r = served(get(&sf, "/app.js", &[ae, ("range", "bytes=0-1,4-5")]).await);
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(h(&r, "content-encoding"), None);
        // Directory index gets siblings too.
        write_at(&t.path.join("www/dir/index.html.gz"), b"gzidx", MTIME);
        let r = served(get(&sf, "/dir/", &[("accept-encoding", "gzip")]).await);
        assert_eq!(h(&r, "content-encoding"), Some("gzip"));
        assert_eq!(h(&r, "content-type"), Some("text/html; charset=utf-8"));
        assert_eq!(r.body, file_body(&sf, "dir/index.html.gz", 0, 5));
    }

    #[tokio::test]
    async fn precompressed_sibling_symlinked_outside_is_ignored() {
        let t = tree();
        let sf = precompressed(&t);
        symlink("../outside/secret.txt", &t.path.join("www/hello.txt.gz"));
        let r = served(get(&sf, "/hello.txt", &[("accept-encoding", "gzip")]).await);
        assert_eq!(h(&r, "content-encoding"), None);
        assert_eq!(h(&r, "vary"), None);
        assert_eq!(r.body, file_body(&sf, "hello.txt", 0, 12));
    }

    // ---- security ----

    #[tokio::test]
    async fn dot_dot_that_climbs_is_rejected() {
        let t = tree();
        let sf = files(&t);
        for path in [
            "/../outside/secret.txt",
            "/..",
            "/dir/../../outside/secret.txt",
            "/%2e%2e/outside/secret.txt",
            "/%2E%2E/outside/secret.txt",
            "/.%2e/outside/secret.txt",
            "/%2e./outside/secret.txt",
            "/dir/..%2f..%2foutside%2fsecret.txt",
            "/dir%2f..%2f..%2foutside/secret.txt",
            "/%2f..%2foutside/secret.txt",
            "/./../outside/secret.txt",
            "/dir/sub/../../../outside/secret.txt",
        ] {
            rejected(get(&sf, path, &[]).await, StatusCode::BAD_REQUEST);
        }
    }

    #[tokio::test]
    async fn dot_dot_that_stays_inside_is_resolved() {
        let t = tree();
        let sf = files(&t);
        for path in [
            "/dir/../hello.txt",
            "/dir/%2e%2e/hello.txt",
            "/dir/sub/..%2f..%2fhello.txt",
            "/./hello.txt",
            "//hello.txt",
        ] {
            let r = served(get(&sf, path, &[]).await);
            assert_eq!(r.body, file_body(&sf, "hello.txt", 0, 12), "{path}");
        }
    }

    #[tokio::test]
    async fn backslashes_are_rejected() {
        let t = tree();
        let sf = files(&t);
        for path in [
            "/..\\outside\\secret.txt",
            "/%5c..%5coutside%5csecret.txt",
            "/dir\\index.html",
            "/%5C",
        ] {
            rejected(get(&sf, path, &[]).await, StatusCode::BAD_REQUEST);
        }
    }

    #[tokio::test]
    async fn nul_and_bad_encoding_are_rejected() {
        let t = tree();
        let sf = files(&t);
        for path in [
            "/%00",
            "/hello.txt%00.html",
            "/hello.txt%00",
            "/hello%zz.txt",
            "/hello.txt%",
            "/hello.txt%4",
            "/%g0",
            "/%ff",
            "/caf%C3.txt",
        ] {
            rejected(get(&sf, path, &[]).await, StatusCode::BAD_REQUEST);
        }
    }

    #[tokio::test]
    async fn symlinks_outside_root_are_never_served() {
        let t = tree();
        let sf = files(&t);
        not_found(get(&sf, "/link_out", &[]).await);
        not_found(get(&sf, "/linkdir_out/secret.txt", &[]).await);
        not_found(get(&sf, "/linkdir_out/", &[]).await);
        // An index that escapes is no index at all.
        not_found(get(&sf, "/index_out/", &[]).await);
        not_found(get(&sf, "/index_out", &[]).await);
        // Symlinks inside the root are fine and the canonical file is served.
        let r = served(get(&sf, "/link_in", &[]).await);
        assert_eq!(r.body, file_body(&sf, "hello.txt", 0, 12));
        assert_eq!(h(&r, "etag"), Some(HELLO_ETAG));
    }

    #[tokio::test]
    async fn hidden_files_are_absent() {
        let t = tree();
        let sf = files(&t);
        for path in [
            "/.env",
            "/.git/config",
            "/.git/",
            "/.git",
            "/dir/.hidden",
            "/%2eenv",
            "/%2Egit/config",
            "/dir/../.env",
            "/.well-known/../.env",
        ] {
            not_found(get(&sf, path, &[]).await);
        }
        let r = served(get(&sf, "/.well-known/acme-challenge/token", &[]).await);
        assert_eq!(
            r.body,
            file_body(&sf, ".well-known/acme-challenge/token", 0, 3)
        );
    }

    #[tokio::test]
    async fn non_regular_files_are_absent() {
        let t = tree();
        let sf = files(&t);
        let _listener =
            std::os::unix::net::UnixListener::bind(t.path.join("www/sock")).expect("bind socket");
        not_found(get(&sf, "/sock", &[]).await);
        let fifo = t.path.join("www/fifo");
        let made = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .is_ok_and(|s| s.success());
        if made {
            not_found(get(&sf, "/fifo", &[]).await);
        }
        symlink("/dev/null", &t.path.join("www/devnull"));
        not_found(get(&sf, "/devnull", &[]).await);
        // A symlink loop is an unreadable path, not an error page.
        symlink("loop", &t.path.join("www/loop"));
        not_found(get(&sf, "/loop", &[]).await);
        not_found(get(&sf, "/loop/", &[]).await);
    }

    #[test]
    fn parse_path_normalises() {
        let p = parse_path("/a//b/./c/../d/").expect("ok");
        assert_eq!(p.segments, ["a", "b", "d"]);
        assert!(p.trailing_slash);
        let p = parse_path("/a/b").expect("ok");
        assert!(!p.trailing_slash);
        let p = parse_path("/a/b/..").expect("ok");
        assert_eq!(p.segments, ["a"]);
        assert!(p.trailing_slash);
        let p = parse_path("/").expect("ok");
        assert!(p.segments.is_empty());
        assert!(p.trailing_slash);
    }

    // ---- reader ----

    #[tokio::test]
    async fn read_chunks_streams_the_range() {
        let t = tree();
        let path = t.path.join("www/hello.txt");
        let mut r = read_chunks(&path, 0, 12, 5).await.expect("open");
        let mut got = Vec::new();
        while let Some(chunk) = r.next().await.expect("read") {
            assert!(chunk.len() <= 5);
            got.push(chunk);
        }
        assert_eq!(got, [&b"hello"[..], b" worl", b"d\n"]);
        assert_eq!(r.remaining(), 0);
        assert!(r.next().await.expect("eof").is_none());

        let mut r = read_chunks(&path, 6, 5, 64 * 1024).await.expect("open");
        assert_eq!(
            r.next().await.expect("read").as_deref(),
            Some(&b"world"[..])
        );
        assert!(r.next().await.expect("eof").is_none());

        // chunk 0 must not spin forever.
        let mut r = read_chunks(&path, 0, 2, 0).await.expect("open");
        assert_eq!(r.next().await.expect("read").as_deref(), Some(&b"h"[..]));
        assert_eq!(r.next().await.expect("read").as_deref(), Some(&b"e"[..]));
        assert!(r.next().await.expect("eof").is_none());
    }

    #[tokio::test]
    async fn read_chunks_errors_when_file_shrank() {
        let t = tree();
        let path = t.path.join("www/hello.txt");
        let mut r = read_chunks(&path, 0, 20, 8).await.expect("open");
        assert_eq!(
            r.next().await.expect("read").as_deref(),
            Some(&b"hello wo"[..])
        );
        let err = r.next().await.expect_err("short file");
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
    }

    #[tokio::test]
    async fn read_chunks_refuses_non_regular_and_missing() {
        let t = tree();
        assert!(read_chunks(&t.path.join("www/dir"), 0, 1, 8).await.is_err());
        assert!(read_chunks(&t.path.join("www/nope"), 0, 1, 8)
            .await
            .is_err());
    }

    #[tokio::test]
    async fn plan_body_round_trips_through_reader() {
        let t = tree();
        let sf = files(&t);
        let r = served(get(&sf, "/hello.txt", &[("range", "bytes=-6")]).await);
        let mut reader = r.body.reader(4).await.expect("open").expect("file body");
        let mut got = Vec::new();
        while let Some(chunk) = reader.next().await.expect("read") {
            got.extend_from_slice(&chunk);
        }
        assert_eq!(got, b"world\n");
        assert!(Body::Empty.reader(4).await.expect("empty").is_none());
    }
}
