//! The access log: one line per request, in nginx's `combined` format or as JSON, to stdout,
//! stderr or a file that `SIGUSR1` reopens (logrotate's `postrotate` step, as nginx's
//! `USR1`).
//!
//! Writing never holds a request up: the thread that served a request formats its line at
//! once into a buffer of its own (as nginx's `access_log ... buffer=` does per worker), and one
//! writer thread takes every buffer's lines and writes them in one batch, every
//! [`FLUSH_EVERY`] or as soon as a buffer is half full. Logging a line wakes nobody (a wake-up
//! per request cost a context switch and a `write` per request: 1.45x the CPU per small
//! request in bench/http.sh). When a buffer is full (the disk or the pipe behind stdout is
//! stalled), the line is dropped and counted (`gateway_access_log_dropped_total`) rather than
//! making the request wait. Lines of different threads are in the file in batches, each
//! thread's in order. The formats are pure functions ([`combined`], [`json`]) with byte-exact
//! tests.
//!
//! A WebSocket, an SSE stream or a held long-poll is one request: its line is written once,
//! when it ends, with its duration and the bytes each way.

use std::cell::RefCell;
use std::fmt::Write as _;
use std::io::Write as _;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::{HeaderValue, Method, Uri, Version};
use pingora::http::RequestHeader;
use prometheus_client::metrics::counter::Counter;

use crate::settings::{AccessLogFormat, AccessLogSettings, LogTarget};
use crate::upstream::Pool;
use crate::ws_frames::Frames;

/// What one request leaves in the log. Cheap to build on the request path: the method, URI
/// and header values are reference-counted clones.
#[derive(Debug, Clone)]
pub struct Entry {
    /// When the request ended (nginx's `$time_local` is the time its line is written).
    pub time: SystemTime,
    pub client: Option<IpAddr>,
    pub method: Method,
    pub uri: Uri,
    pub version: Version,
    pub host: Option<HeaderValue>,
    /// 0: no answer was written (the client left first); logged as nginx's 499.
    pub status: u16,
    /// Body bytes sent to the client (nginx `$body_bytes_sent`).
    pub bytes_sent: u64,
    /// Body bytes read from the client (for an upgraded connection: everything it sent).
    pub bytes_received: u64,
    pub referer: Option<HeaderValue>,
    pub user_agent: Option<HeaderValue>,
    pub request_id: Option<HeaderValue>,
    /// `routes[i]`, or none when no route matched.
    pub route: Option<Arc<str>>,
    /// What answered (`upstream`, `fastcgi`, `tunnel`, `static`, `realtime`, ...).
    pub by: &'static str,
    /// The pool and the server of it that answered.
    pub upstream: Option<(Arc<Pool>, Option<usize>)>,
    /// Head of the request to the end of the answer (for a WebSocket: until it closed).
    pub duration: Duration,
    /// From the first attempt on the pool to the app's answer head.
    pub upstream_duration: Option<Duration>,
    pub tls: bool,
    /// An upgraded session's WebSocket frames: messages each way and how it closed.
    pub websocket: Option<Box<Frames>>,
}

/// What a log line says of the request itself, taken from its head.
pub struct RequestLine {
    pub method: Method,
    pub uri: Uri,
    pub version: Version,
    pub host: Option<HeaderValue>,
    pub referer: Option<HeaderValue>,
    pub user_agent: Option<HeaderValue>,
}

impl RequestLine {
    /// The line of `req`, sharing its buffers (the line is written as the request ends).
    pub fn of(req: &RequestHeader) -> RequestLine {
        let header = |name: http::header::HeaderName| req.headers.get(name).cloned();
        RequestLine {
            method: req.method.clone(),
            uri: req.uri.clone(),
            version: req.version,
            host: header(http::header::HOST),
            referer: header(http::header::REFERER),
            user_agent: header(http::header::USER_AGENT),
        }
    }

    /// A request nothing is known of (never logged in practice: every session that leaves
    /// pingora takes its line along).
    pub fn unknown() -> RequestLine {
        RequestLine {
            method: Method::GET,
            uri: Uri::from_static("/"),
            version: Version::HTTP_11,
            host: None,
            referer: None,
            user_agent: None,
        }
    }

    /// The line of `req` in buffers of its own, for a session that outlives the request (an
    /// upgraded connection): a shared value would pin the whole buffer pingora read the head
    /// into, for as long as the session lasts.
    pub fn detached(req: &RequestHeader) -> RequestLine {
        let header = |name: http::header::HeaderName| {
            req.headers
                .get(name)
                .and_then(|v| HeaderValue::from_bytes(v.as_bytes()).ok())
        };
        RequestLine {
            method: req.method.clone(),
            uri: Uri::try_from(req.uri.to_string()).unwrap_or_else(|_| req.uri.clone()),
            version: req.version,
            host: header(http::header::HOST),
            referer: header(http::header::REFERER),
            user_agent: header(http::header::USER_AGENT),
        }
    }
}

/// nginx logs a request whose client left before the answer as 499.
const CLIENT_CLOSED: u16 = 499;

impl Entry {
    fn status(&self) -> u16 {
        if self.status == 0 {
            CLIENT_CLOSED
        } else {
            self.status
        }
    }

    fn protocol(&self) -> &'static str {
        match self.version {
            Version::HTTP_09 => "HTTP/0.9",
            Version::HTTP_10 => "HTTP/1.0",
            Version::HTTP_2 => "HTTP/2.0",
            Version::HTTP_3 => "HTTP/3.0",
            _ => "HTTP/1.1",
        }
    }

    fn target(&self) -> &str {
        self.uri.path_and_query().map_or("/", |p| p.as_str())
    }
}

/// Write `bytes` as nginx's default log escaping does: `"`, `\` and bytes outside printable
/// ASCII as `\xHH`, so a header cannot end its field or forge a line.
///
/// The bytes between two escapes are copied as one run: most fields (a user agent, a URL)
/// have no byte to escape and are one copy.
fn escaped(out: &mut String, bytes: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let mut rest = bytes;
    loop {
        let at = rest
            .iter()
            .position(|&b| needs_escape(b))
            .unwrap_or(rest.len());
        let (run, tail) = rest.split_at(at);
        // Printable ASCII only (`needs_escape` stops at everything else): valid UTF-8.
        if let Ok(run) = std::str::from_utf8(run) {
            out.push_str(run);
        }
        let Some((&b, tail)) = tail.split_first() else {
            return;
        };
        out.push_str("\\x");
        out.push(char::from(HEX[usize::from(b >> 4)]));
        out.push(char::from(HEX[usize::from(b & 0xf)]));
        rest = tail;
    }
}

/// What nginx's default log escaping writes as `\xHH`: `"`, `\` and bytes outside printable
/// ASCII.
fn needs_escape(b: u8) -> bool {
    b == b'"' || b == b'\\' || !(0x20..0x7f).contains(&b)
}

fn header_or_dash(out: &mut String, v: &Option<HeaderValue>) {
    match v {
        Some(v) if !v.is_empty() => escaped(out, v.as_bytes()),
        _ => out.push('-'),
    }
}

const MONTHS: [&str; 12] = [
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
];

/// Calendar date and time of day (UTC) of `t`: (year, month 1-12, day, hour, min, sec, ms).
fn civil(t: SystemTime) -> (i64, u32, u32, u32, u32, u32, u32) {
    let since = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs() as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400) as u32);
    // Howard Hinnant's days-to-civil algorithm.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (
        year,
        month,
        day,
        rem / 3600,
        rem / 60 % 60,
        rem % 60,
        since.subsec_millis(),
    )
}

/// nginx's `$time_local`, in UTC: `10/Oct/2000:13:55:36 +0000`. Made once per second per
/// thread, as nginx caches its time strings: a busy thread's lines share their second.
fn time_local(out: &mut String, t: SystemTime) {
    thread_local! {
        static STAMP: RefCell<(u64, String)> = const { RefCell::new((u64::MAX, String::new())) };
    }
    let second = t.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
    let cached = STAMP.try_with(|stamp| {
        let mut stamp = stamp.borrow_mut();
        if stamp.0 != second {
            stamp.1.clear();
            format_time_local(&mut stamp.1, t);
            stamp.0 = second;
        }
        out.push_str(&stamp.1);
    });
    if cached.is_err() {
        format_time_local(out, t);
    }
}

fn format_time_local(out: &mut String, t: SystemTime) {
    let (y, mo, d, h, mi, s, _) = civil(t);
    let month = MONTHS[(mo as usize).saturating_sub(1) % 12];
    let _ = write!(out, "{d:02}/{month}/{y}:{h:02}:{mi:02}:{s:02} +0000");
}

/// `n` in decimal, without `core::fmt`.
fn decimal(out: &mut String, n: impl itoa::Integer) {
    out.push_str(itoa::Buffer::new().format(n));
}

/// A duration in seconds with millisecond resolution (`0.012`), truncated as nginx's
/// `$request_time` is and as the JSON line's `request_time` is.
fn seconds_ms(out: &mut String, d: Duration) {
    let ms = d.as_millis();
    decimal(out, ms / 1000);
    let frac = (ms % 1000) as u16;
    out.push('.');
    if frac < 100 {
        out.push('0');
    }
    if frac < 10 {
        out.push('0');
    }
    decimal(out, frac);
}

/// ISO 8601 with milliseconds, UTC (nginx's `$time_iso8601` plus the milliseconds).
fn time_iso(t: SystemTime) -> String {
    let (y, mo, d, h, mi, s, ms) = civil(t);
    format!("{y}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}.{ms:03}Z")
}

/// One line in nginx's `combined` format, followed by nginx's `$request_id` in quotes and
/// `$request_time` (seconds, millisecond resolution), as many nginx setups extend it: tools
/// that read `combined` (goaccess `--log-format=COMBINED`, awstats, fail2ban) stop at the
/// user agent.
///
/// `$remote_addr - $remote_user [$time_local] "$request" $status $body_bytes_sent
/// "$http_referer" "$http_user_agent" "$request_id" $request_time`
pub fn combined(e: &Entry, out: &mut String) {
    match e.client {
        Some(IpAddr::V4(ip)) => {
            let [a, b, c, d] = ip.octets();
            decimal(out, a);
            for octet in [b, c, d] {
                out.push('.');
                decimal(out, octet);
            }
        }
        Some(ip) => {
            let _ = write!(out, "{ip}");
        }
        None => out.push('-'),
    }
    out.push_str(" - - [");
    time_local(out, e.time);
    out.push_str("] \"");
    escaped(out, e.method.as_str().as_bytes());
    out.push(' ');
    escaped(out, e.target().as_bytes());
    out.push(' ');
    out.push_str(e.protocol());
    out.push_str("\" ");
    decimal(out, e.status());
    out.push(' ');
    decimal(out, e.bytes_sent);
    out.push_str(" \"");
    header_or_dash(out, &e.referer);
    out.push_str("\" \"");
    header_or_dash(out, &e.user_agent);
    out.push_str("\" \"");
    header_or_dash(out, &e.request_id);
    out.push_str("\" ");
    seconds_ms(out, e.duration);
    out.push('\n');
}

/// A header value as JSON text (not UTF-8: lossily).
fn text(v: &Option<HeaderValue>) -> serde_json::Value {
    match v {
        Some(v) => String::from_utf8_lossy(v.as_bytes()).into_owned().into(),
        None => serde_json::Value::Null,
    }
}

/// One line of JSON: everything the combined line has, and what answered.
pub fn json(e: &Entry, out: &mut String) {
    let (upstream, server) = match &e.upstream {
        Some((pool, server)) => (
            serde_json::Value::from(pool.name.as_str()),
            server
                .and_then(|i| pool.servers.get(i))
                .map_or(serde_json::Value::Null, |s| s.addr.to_string().into()),
        ),
        None => (serde_json::Value::Null, serde_json::Value::Null),
    };
    let line = serde_json::json!({
        "time": time_iso(e.time),
        "remote_addr": e.client.map(|ip| ip.to_string()),
        "request_id": text(&e.request_id),
        "method": e.method.as_str(),
        "uri": e.target(),
        "protocol": e.protocol(),
        "host": text(&e.host),
        "status": e.status(),
        "body_bytes_sent": e.bytes_sent,
        "request_length": e.bytes_received,
        "request_time": round_ms(e.duration),
        "upstream_header_time": e.upstream_duration.map(round_ms),
        "http_referer": text(&e.referer),
        "http_user_agent": text(&e.user_agent),
        "route": e.route.as_deref(),
        "served_by": e.by,
        "upstream": upstream,
        "upstream_addr": server,
        "tls": e.tls,
        "websocket": e.websocket.as_deref().map(|f| serde_json::json!({
            "messages_in": f.from_client.messages,
            "messages_out": f.to_client.messages,
            "close_code": f.close.as_ref().and_then(|c| c.code),
            "close_reason": f.close.as_ref().map(|c| c.reason.as_str()),
            "closed_by": f.close.as_ref().map(|c| if c.by_client { "client" } else { "server" }),
        })),
    });
    let _ = write!(out, "{line}");
    out.push('\n');
}

fn round_ms(d: Duration) -> f64 {
    d.as_millis() as f64 / 1000.0
}

/// The front door's handle on the log.
///
/// Each thread that logs formats its lines at once into a buffer of its own (a request keeps
/// nothing of itself for the log past its end), and the writer thread takes every buffer's
/// lines at its turn and writes them in one batch. Before, a request's [`Entry`] went to the
/// writer through a queue and was formatted there: its reference-counted clones kept the
/// request's 4 KiB head buffer alive for up to [`FLUSH_EVERY`] (thousands of them at the
/// benchmark's rate) and freed it on the writer's thread, which cost the worker threads more
/// than the formatting itself (issue 17: 2.6 us of a small request's 32 with the log on).
pub struct AccessLog {
    shared: Arc<Shared>,
    format: AccessLogFormat,
    dropped: Counter,
    /// Lines one thread's buffer may hold before the writer has taken them; past it lines are
    /// dropped and counted (`access_log.queue_lines`).
    bound: usize,
    /// Past how many lines in a buffer the writer is woken before its next turn (half the
    /// bound, so a burst is written before it can overflow).
    wake_at: usize,
    writer: std::thread::Thread,
}

/// What the logging threads and the writer share.
#[derive(Default)]
struct Shared {
    /// Every thread's buffer (a thread registers its own at its first line).
    buffers: Mutex<Vec<Arc<Mutex<Lines>>>>,
    /// `SIGUSR1` arrived: reopen the file after writing what is buffered.
    reopen: AtomicBool,
    /// The gateway dropped its handle: write what is buffered and end.
    closed: AtomicBool,
}

/// One thread's formatted lines, waiting for the writer.
#[derive(Default)]
struct Lines {
    text: String,
    count: usize,
}

/// A thread's buffer in one log, and the log it is in.
type Registered = (Weak<Shared>, Arc<Mutex<Lines>>);

thread_local! {
    /// This thread's buffer in each live log (one in the gateway; tests make several).
    static MINE: RefCell<Vec<Registered>> = const { RefCell::new(Vec::new()) };
}

/// How often the writer thread writes what was logged: lines reach the file within this, in
/// one `write` per batch. nginx writes each line at once unless `access_log ... buffer=`
/// is set, and then every `flush=` (commonly 1-5 s); a tenth of a second keeps `tail -f`
/// live while a busy gateway writes ten times a second, not once per request.
pub const FLUSH_EVERY: Duration = Duration::from_millis(100);

#[derive(Debug, thiserror::Error)]
pub enum AccessLogError {
    #[error("access_log.path {}: {source}", .path.display())]
    Open {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("access log: cannot start its writer thread: {0}")]
    Thread(std::io::Error),
    #[error("access log: cannot watch SIGUSR1: {0}")]
    Signal(std::io::Error),
}

/// Where lines go: stdout, stderr or a file (`path`, reopened on `SIGUSR1`), through a buffer.
struct Sink {
    path: Option<PathBuf>,
    out: std::io::BufWriter<Box<dyn std::io::Write + Send>>,
}

/// The writer's buffer: one large write per batch (nginx's `buffer=` is 64k as well).
const WRITE_BUFFER: usize = 64 * 1024;

fn open(
    path: &PathBuf,
) -> Result<std::io::BufWriter<Box<dyn std::io::Write + Send>>, AccessLogError> {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map(|f| std::io::BufWriter::with_capacity(WRITE_BUFFER, Box::new(f) as Box<_>))
        .map_err(|source| AccessLogError::Open {
            path: path.clone(),
            source,
        })
}

impl Sink {
    fn new(target: &LogTarget) -> Result<Option<Sink>, AccessLogError> {
        let stream =
            |w: Box<dyn std::io::Write + Send>| std::io::BufWriter::with_capacity(WRITE_BUFFER, w);
        Ok(Some(match target {
            LogTarget::Off => return Ok(None),
            LogTarget::Stdout => Sink {
                path: None,
                out: stream(Box::new(std::io::stdout())),
            },
            LogTarget::Stderr => Sink {
                path: None,
                out: stream(Box::new(std::io::stderr())),
            },
            LogTarget::File(path) => Sink {
                path: Some(path.clone()),
                out: open(path)?,
            },
        }))
    }

    fn write(&mut self, bytes: &[u8]) {
        if let Err(e) = self.out.write_all(bytes) {
            tracing::warn!(error = %e, "access log: write failed");
        }
    }

    fn flush(&mut self) {
        if let Err(e) = self.out.flush() {
            tracing::warn!(error = %e, "access log: flush failed");
        }
    }

    /// Open the file's path again (logrotate renamed it): new lines go to a new file. If it
    /// cannot be opened, lines keep going to the old one.
    fn reopen(&mut self) {
        self.flush();
        let Some(path) = &self.path else {
            return;
        };
        match open(path) {
            Ok(new) => {
                self.out = new;
                tracing::info!(path = %path.display(), "access log reopened");
            }
            Err(e) => {
                tracing::error!(error = %e, "access log: reopen failed; still writing to the old file")
            }
        }
    }
}

/// A lock that a panic elsewhere does not poison for good: the data is text and a count,
/// consistent between any two statements.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl AccessLog {
    /// Start the writer and the `SIGUSR1` watcher; `None` when the log is off. `dropped`
    /// counts lines the writer could not take in time.
    ///
    /// `SIGUSR1` is handled whatever the target (a reopen of stdout does nothing; with the
    /// log off it is ignored): its default action ends the process, and a logrotate
    /// configuration copied from another host must not stop the gateway. The handler is
    /// registered now, before anything listens.
    pub fn start(
        settings: &AccessLogSettings,
        dropped: Counter,
    ) -> Result<Option<Arc<AccessLog>>, AccessLogError> {
        let Some(sink) = Sink::new(&settings.target)? else {
            let ignored = Arc::new(AtomicBool::new(false));
            signal_hook::flag::register(signal_hook::consts::SIGUSR1, ignored)
                .map_err(AccessLogError::Signal)?;
            return Ok(None);
        };
        let log = Arc::new(AccessLog::with_writer(settings, dropped, sink)?);
        let wake = log.writer.clone();
        let shared = Arc::downgrade(&log.shared);
        let mut signals = signal_hook::iterator::Signals::new([signal_hook::consts::SIGUSR1])
            .map_err(AccessLogError::Signal)?;
        std::thread::Builder::new()
            .name("access-log-usr1".into())
            .spawn(move || {
                for _ in signals.forever() {
                    let Some(shared) = shared.upgrade() else {
                        return;
                    };
                    // After the lines already logged: the writer writes them to the old file
                    // first.
                    shared.reopen.store(true, Ordering::Release);
                    wake.unpark();
                }
            })
            .map_err(AccessLogError::Thread)?;
        Ok(Some(log))
    }

    /// The log and its writer thread, writing to `sink`.
    fn with_writer(
        settings: &AccessLogSettings,
        dropped: Counter,
        sink: Sink,
    ) -> Result<AccessLog, AccessLogError> {
        let shared = Arc::new(Shared::default());
        let theirs = Arc::clone(&shared);
        let writer = std::thread::Builder::new()
            .name("access-log".into())
            .spawn(move || write_lines(&theirs, sink))
            .map_err(AccessLogError::Thread)?;
        Ok(AccessLog {
            shared,
            format: settings.format,
            dropped,
            bound: settings.queue_lines.max(1),
            wake_at: (settings.queue_lines / 2).max(1),
            writer: writer.thread().clone(),
        })
    }

    /// The log with no writer thread: the tests take the writer's turns.
    #[cfg(test)]
    fn without_writer(settings: &AccessLogSettings, dropped: Counter) -> AccessLog {
        AccessLog {
            shared: Arc::new(Shared::default()),
            format: settings.format,
            dropped,
            bound: settings.queue_lines.max(1),
            wake_at: (settings.queue_lines / 2).max(1),
            writer: std::thread::current(),
        }
    }

    /// Log a request's line: formatted now, into this thread's buffer; never waits for the
    /// writer.
    pub fn log(&self, entry: Entry) {
        let logged = MINE.try_with(|mine| {
            let mut mine = mine.borrow_mut();
            let at = match mine
                .iter()
                .position(|(log, _)| std::ptr::eq(log.as_ptr(), Arc::as_ptr(&self.shared)))
            {
                Some(at) => at,
                None => {
                    // This thread's first line in this log (and a chance to forget the
                    // buffers of logs that are gone).
                    mine.retain(|(log, _)| log.strong_count() > 0);
                    let buffer = Arc::new(Mutex::new(Lines::default()));
                    lock(&self.shared.buffers).push(Arc::clone(&buffer));
                    mine.push((Arc::downgrade(&self.shared), buffer));
                    mine.len() - 1
                }
            };
            self.append(&mine[at].1, &entry);
        });
        if logged.is_err() {
            // The thread is ending and its buffers are gone: the line is lost, and counted.
            self.dropped.inc();
        }
    }

    fn append(&self, buffer: &Mutex<Lines>, entry: &Entry) {
        let mut lines = lock(buffer);
        if lines.count >= self.bound {
            self.dropped.inc();
            return;
        }
        match self.format {
            AccessLogFormat::Combined => combined(entry, &mut lines.text),
            AccessLogFormat::Json => json(entry, &mut lines.text),
        }
        lines.count += 1;
        if lines.count == self.wake_at {
            self.writer.unpark();
        }
    }
}

impl Drop for AccessLog {
    /// The writer writes what is buffered and ends.
    fn drop(&mut self) {
        self.shared.closed.store(true, Ordering::Release);
        self.writer.unpark();
    }
}

/// The writer thread: every [`FLUSH_EVERY`] (or when woken by a filling buffer, `SIGUSR1` or
/// the end), take every thread's lines and write them, then flush: a batch costs one write.
/// Ends, flushed, when the gateway drops its handle.
fn write_lines(shared: &Shared, mut sink: Sink) {
    // The text handed back to a logging thread in place of the one taken: buffers swap, so
    // no turn allocates once they have grown to a turn's lines.
    let mut spare = String::new();
    loop {
        std::thread::park_timeout(FLUSH_EVERY);
        let closed = shared.closed.load(Ordering::Acquire);
        let reopen = shared.reopen.swap(false, Ordering::AcqRel);
        write_turn(shared, &mut sink, &mut spare);
        if reopen {
            sink.reopen();
        }
        if closed {
            return;
        }
    }
}

/// One turn of the writer: take every thread's lines, write them, flush.
fn write_turn(shared: &Shared, sink: &mut Sink, spare: &mut String) {
    let buffers = {
        let mut all = lock(&shared.buffers);
        let buffers = all.clone();
        // A buffer only the list holds (here: and `buffers`) belongs to a thread that ended:
        // written below for the last time.
        all.retain(|b| Arc::strong_count(b) > 2);
        buffers
    };
    for buffer in &buffers {
        let taken = {
            let mut lines = lock(buffer);
            lines.count = 0;
            std::mem::replace(&mut lines.text, std::mem::take(spare))
        };
        sink.write(taken.as_bytes());
        *spare = taken;
        spare.clear();
    }
    sink.flush();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry() -> Entry {
        Entry {
            // 2000-10-10 13:55:36.250 UTC
            time: UNIX_EPOCH + Duration::from_millis(971_186_136_250),
            client: Some("203.0.113.9".parse().unwrap()),
            method: Method::GET,
            uri: "/apache_pb.gif?x=1".parse().unwrap(),
            version: Version::HTTP_11,
            host: Some(HeaderValue::from_static("example.com")),
            status: 200,
            bytes_sent: 2326,
            bytes_received: 0,
            referer: Some(HeaderValue::from_static(
                "http://www.example.com/start.html",
            )),
            user_agent: Some(HeaderValue::from_static(
                "Mozilla/4.08 [en] (Win98; I ;Nav)",
            )),
            request_id: Some(HeaderValue::from_static("0123456789abcdef0123456789abcdef")),
            route: Some(Arc::from("routes[2]")),
            by: "upstream",
            upstream: None,
            duration: Duration::from_micros(12_345),
            upstream_duration: Some(Duration::from_millis(10)),
            tls: true,
            websocket: None,
        }
    }

    #[test]
    fn combined_is_nginxs_line() {
        let mut out = String::new();
        combined(&entry(), &mut out);
        assert_eq!(
            out,
            "203.0.113.9 - - [10/Oct/2000:13:55:36 +0000] \"GET /apache_pb.gif?x=1 HTTP/1.1\" 200 2326 \"http://www.example.com/start.html\" \"Mozilla/4.08 [en] (Win98; I ;Nav)\" \"0123456789abcdef0123456789abcdef\" 0.012\n"
        );
    }

    #[test]
    fn combined_escapes_what_could_forge_a_field_or_a_line() {
        let mut e = entry();
        e.user_agent = Some(HeaderValue::from_bytes(b"a\"b\\c\xff\t").unwrap());
        e.referer = None;
        e.status = 0;
        e.client = None;
        e.version = Version::HTTP_2;
        let mut out = String::new();
        combined(&e, &mut out);
        assert_eq!(
            out,
            "- - - [10/Oct/2000:13:55:36 +0000] \"GET /apache_pb.gif?x=1 HTTP/2.0\" 499 2326 \"-\" \"a\\x22b\\x5Cc\\xFF\\x09\" \"0123456789abcdef0123456789abcdef\" 0.012\n"
        );
    }

    #[test]
    fn json_has_every_field() {
        let mut out = String::new();
        json(&entry(), &mut out);
        assert!(out.ends_with('\n'));
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["time"], "2000-10-10T13:55:36.250Z");
        assert_eq!(v["remote_addr"], "203.0.113.9");
        assert_eq!(v["request_id"], "0123456789abcdef0123456789abcdef");
        assert_eq!(v["uri"], "/apache_pb.gif?x=1");
        assert_eq!(v["status"], 200);
        assert_eq!(v["body_bytes_sent"], 2326);
        assert_eq!(v["request_time"], 0.012);
        assert_eq!(v["upstream_header_time"], 0.01);
        assert_eq!(v["route"], "routes[2]");
        assert_eq!(v["served_by"], "upstream");
        assert_eq!(v["upstream"], serde_json::Value::Null);
    }

    fn settings(target: LogTarget, queue_lines: usize) -> AccessLogSettings {
        AccessLogSettings {
            target,
            format: AccessLogFormat::Combined,
            queue_lines,
        }
    }

    /// `entry()` with `i` as its request id.
    fn numbered(i: usize) -> Entry {
        let mut e = entry();
        e.request_id = Some(HeaderValue::from_str(&format!("{i:032}")).unwrap());
        e
    }

    /// The request ids of a file's lines, checking that each line is whole.
    fn ids_in(path: &std::path::Path) -> Vec<usize> {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        text.lines()
            .map(|l| {
                assert!(
                    l.starts_with("203.0.113.9 - - [10/Oct/2000:13:55:36 +0000] \"GET "),
                    "{l}"
                );
                assert!(l.ends_with("\" 0.012"), "{l}");
                let id = l.rsplit('"').nth(1).unwrap();
                id.parse().unwrap()
            })
            .collect()
    }

    #[test]
    fn lines_of_many_threads_arrive_whole_even_after_the_threads_and_the_log_are_gone() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("access.log");
        let target = LogTarget::File(path.clone());
        let sink = Sink::new(&target).unwrap().unwrap();
        let log = Arc::new(
            AccessLog::with_writer(&settings(target, 8192), Counter::default(), sink).unwrap(),
        );
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let log = Arc::clone(&log);
                std::thread::spawn(move || {
                    for i in 0..500 {
                        log.log(numbered(t * 1000 + i));
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        // The threads have ended and the gateway lets go of the log: the writer still writes
        // every line they logged.
        drop(log);
        let mut ids = Vec::new();
        for _ in 0..100 {
            ids = ids_in(&path);
            if ids.len() >= 2000 {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        ids.sort_unstable();
        let expected: Vec<usize> = (0..4)
            .flat_map(|t| (0..500).map(move |i| t * 1000 + i))
            .collect();
        assert_eq!(ids, expected);
    }

    #[test]
    fn a_full_buffer_drops_and_counts_lines_until_the_writer_takes_them() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("access.log");
        let target = LogTarget::File(path.clone());
        let dropped = Counter::default();
        let log = AccessLog::without_writer(&settings(target.clone(), 4), dropped.clone());
        for i in 0..10 {
            log.log(numbered(i));
        }
        assert_eq!(dropped.get(), 6, "lines past the bound are counted");
        let mut sink = Sink::new(&target).unwrap().unwrap();
        let mut spare = String::new();
        write_turn(&log.shared, &mut sink, &mut spare);
        assert_eq!(ids_in(&path), [0, 1, 2, 3]);
        // Taken: the buffer has room again.
        for i in 10..12 {
            log.log(numbered(i));
        }
        assert_eq!(dropped.get(), 6);
        write_turn(&log.shared, &mut sink, &mut spare);
        assert_eq!(ids_in(&path), [0, 1, 2, 3, 10, 11]);
    }

    #[test]
    fn request_times_are_milliseconds_truncated() {
        let at = |d: Duration| {
            let mut out = String::new();
            seconds_ms(&mut out, d);
            out
        };
        assert_eq!(at(Duration::ZERO), "0.000");
        assert_eq!(at(Duration::from_micros(999)), "0.000");
        assert_eq!(at(Duration::from_micros(12_999)), "0.012");
        assert_eq!(at(Duration::from_millis(1_005)), "1.005");
        assert_eq!(at(Duration::from_millis(60_250)), "60.250");
        assert_eq!(at(Duration::from_secs(86_400)), "86400.000");
    }

    #[test]
    fn the_cached_time_of_a_second_is_the_time_of_that_second() {
        let at = |secs: u64, ms: u64| {
            let mut out = String::new();
            time_local(
                &mut out,
                UNIX_EPOCH + Duration::from_secs(secs) + Duration::from_millis(ms),
            );
            out
        };
        assert_eq!(at(971_186_136, 0), "10/Oct/2000:13:55:36 +0000");
        assert_eq!(at(971_186_136, 999), "10/Oct/2000:13:55:36 +0000");
        assert_eq!(at(971_186_137, 1), "10/Oct/2000:13:55:37 +0000");
        assert_eq!(at(0, 0), "01/Jan/1970:00:00:00 +0000");
        assert_eq!(at(971_186_137, 500), "10/Oct/2000:13:55:37 +0000");
    }

    #[test]
    fn client_addresses_as_nginx_writes_them() {
        for (ip, text) in [
            ("0.0.0.0", "0.0.0.0"),
            ("203.0.113.9", "203.0.113.9"),
            ("255.255.255.255", "255.255.255.255"),
            ("2001:db8::1", "2001:db8::1"),
            ("::ffff:192.0.2.1", "::ffff:192.0.2.1"),
        ] {
            let mut e = entry();
            e.client = Some(ip.parse().unwrap());
            let mut out = String::new();
            combined(&e, &mut out);
            assert!(out.starts_with(&format!("{text} - - [")), "{out}");
        }
    }

    proptest::proptest! {
        /// Escaping in runs writes what escaping byte by byte with `core::fmt` wrote.
        #[test]
        fn escaped_runs_read_as_byte_by_byte_escaping(
            bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..64),
            plain in "[ -~]{0,40}",
        ) {
            for input in [bytes.as_slice(), plain.as_bytes()] {
                let mut expected = String::new();
                for &b in input {
                    if b == b'"' || b == b'\\' || !(0x20..0x7f).contains(&b) {
                        let _ = write!(expected, "\\x{b:02X}");
                    } else {
                        expected.push(char::from(b));
                    }
                }
                let mut out = String::from("before ");
                escaped(&mut out, input);
                proptest::prop_assert_eq!(out, format!("before {expected}"));
            }
        }
    }

    proptest::proptest! {
        /// The hand-made fields read as `core::fmt` would write them.
        #[test]
        fn combined_numbers_read_as_fmt_writes_them(
            v4 in proptest::prelude::any::<[u8; 4]>(),
            v6 in proptest::prelude::any::<[u16; 8]>(),
            six in proptest::prelude::any::<bool>(),
            status in 100u16..1000,
            sent in proptest::prelude::any::<u64>(),
            micros in 0u64..10_000_000_000,
            secs in 0u64..8_000_000_000,
        ) {
            let mut e = entry();
            let ip: IpAddr = if six { std::net::Ipv6Addr::from(v6).into() } else { std::net::Ipv4Addr::from(v4).into() };
            e.client = Some(ip);
            e.status = status;
            e.bytes_sent = sent;
            e.duration = Duration::from_micros(micros);
            e.time = UNIX_EPOCH + Duration::from_secs(secs);
            let mut out = String::new();
            combined(&e, &mut out);
            let (y, mo, d, h, mi, s, _) = civil(e.time);
            let ms = micros / 1000;
            let expected = format!(
                "{ip} - - [{d:02}/{}/{y}:{h:02}:{mi:02}:{s:02} +0000] \"GET /apache_pb.gif?x=1 HTTP/1.1\" {status} {sent} \"http://www.example.com/start.html\" \"Mozilla/4.08 [en] (Win98; I ;Nav)\" \"0123456789abcdef0123456789abcdef\" {}.{:03}\n",
                MONTHS[mo as usize - 1],
                ms / 1000,
                ms % 1000,
            );
            proptest::prop_assert_eq!(out, expected);
        }
    }

    #[test]
    fn dates_across_the_calendar() {
        let at = |secs: u64| civil(UNIX_EPOCH + Duration::from_secs(secs));
        assert_eq!(at(0), (1970, 1, 1, 0, 0, 0, 0));
        // 2000-02-29 23:59:59 (a leap day of a century leap year).
        assert_eq!(at(951_868_799), (2000, 2, 29, 23, 59, 59, 0));
        // 2024-12-31 12:00:00
        assert_eq!(at(1_735_646_400), (2024, 12, 31, 12, 0, 0, 0));
        // 2100-03-01 00:00:00 (2100 is not a leap year).
        assert_eq!(at(4_107_542_400), (2100, 3, 1, 0, 0, 0, 0));
    }
}
