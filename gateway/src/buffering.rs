//! Bodies held by the gateway on behalf of the app: a request body read whole before the app
//! sees the request (nginx `proxy_request_buffering`), and an answer read from the app faster
//! than a slow client takes it (nginx `proxy_buffering`). Both live in memory up to a limit and
//! in an unnamed temporary file beyond it.
//!
//! The files are made with `O_TMPFILE` (`tempfile::tempfile_in`): mode 0600, no name in the
//! directory, gone when the last descriptor closes, so a crash leaves nothing behind and no
//! other process can open one by name. File reads and writes are positional (`pread`/`pwrite`)
//! and run on tokio's blocking pool.

use std::collections::VecDeque;
use std::fs::File;
use std::io;
use std::os::unix::fs::{DirBuilderExt, FileExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use pingora::proxy::Session;
use tokio::time::Instant;

use crate::failure::ClientFailure;

/// Pieces read back from a temporary file: the size of the chunks the app and clients get.
const FILE_CHUNK: usize = 64 * 1024;

/// Create the spill directory (0700: the bodies are the clients' private data).
pub fn prepare_dir(dir: &Path) -> io::Result<PathBuf> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    // Fail at start, not at the first large upload, when the directory is not usable.
    drop(tempfile::tempfile_in(dir)?);
    Ok(dir.to_path_buf())
}

/// The temporary file a body spills to, made on first use.
async fn spill_file(file: &mut Option<Arc<File>>, dir: &Arc<PathBuf>) -> io::Result<Arc<File>> {
    if let Some(f) = file {
        return Ok(f.clone());
    }
    let f = new_file(dir).await?;
    *file = Some(f.clone());
    Ok(f)
}

async fn new_file(dir: &Arc<PathBuf>) -> io::Result<Arc<File>> {
    let dir = dir.clone();
    blocking(move || tempfile::tempfile_in(dir.as_path()).map(Arc::new)).await
}

async fn write_at(file: &Arc<File>, data: Bytes, pos: u64) -> io::Result<()> {
    let file = file.clone();
    blocking(move || file.write_all_at(&data, pos)).await
}

async fn read_at(file: &Arc<File>, pos: u64, len: usize) -> io::Result<Bytes> {
    let file = file.clone();
    blocking(move || {
        let mut buf = BytesMut::zeroed(len);
        file.read_exact_at(&mut buf, pos)?;
        Ok(buf.freeze())
    })
    .await
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> io::Result<T> + Send + 'static,
) -> io::Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| io::Error::other(e.to_string()))?
}

// ---------------------------------------------------------------------------------------------
// Request bodies.

/// A request body held whole: the first `memory` bytes in memory, the rest in a temporary file.
pub struct Body {
    mem: Vec<Bytes>,
    mem_len: usize,
    memory: usize,
    file: Option<Arc<File>>,
    file_len: u64,
    dir: Arc<PathBuf>,
}

impl Body {
    pub fn new(memory: usize, dir: Arc<PathBuf>) -> Body {
        Body {
            mem: Vec::new(),
            mem_len: 0,
            memory,
            file: None,
            file_len: 0,
            dir,
        }
    }

    pub async fn push(&mut self, chunk: Bytes) -> io::Result<()> {
        if chunk.is_empty() {
            return Ok(());
        }
        if self.file.is_none() && self.mem_len + chunk.len() <= self.memory {
            self.mem_len += chunk.len();
            self.mem.push(chunk);
            return Ok(());
        }
        let file = spill_file(&mut self.file, &self.dir).await?;
        let n = chunk.len() as u64;
        write_at(&file, chunk, self.file_len).await?;
        self.file_len += n;
        Ok(())
    }

    pub fn len(&self) -> u64 {
        self.mem_len as u64 + self.file_len
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether part of it went to disk.
    pub fn spilled(&self) -> bool {
        self.file.is_some()
    }

    /// The body from its first byte; can be started again (a request sent a second time).
    pub fn replay(&self) -> Replay<'_> {
        Replay {
            body: self,
            next_mem: 0,
            file_pos: 0,
        }
    }
}

pub struct Replay<'a> {
    body: &'a Body,
    next_mem: usize,
    file_pos: u64,
}

impl Replay<'_> {
    pub async fn next(&mut self) -> io::Result<Option<Bytes>> {
        if let Some(b) = self.body.mem.get(self.next_mem) {
            self.next_mem += 1;
            return Ok(Some(b.clone()));
        }
        let Some(file) = &self.body.file else {
            return Ok(None);
        };
        let left = self.body.file_len - self.file_pos;
        if left == 0 {
            return Ok(None);
        }
        let n = left.min(FILE_CHUNK as u64) as usize;
        let chunk = read_at(file, self.file_pos, n).await?;
        self.file_pos += n as u64;
        Ok(Some(chunk))
    }
}

/// How a request body is read.
#[derive(Debug, Clone)]
pub struct BodyLimits {
    pub max_bytes: u64,
    pub memory: usize,
    /// The window the rate is measured over; also the grace period at the start.
    pub timeout: Duration,
    /// Bytes per second the body must average over every window (0: at least one byte per
    /// window, nginx's `client_body_timeout` between two reads).
    pub min_rate: u64,
}

impl BodyLimits {
    /// The configured request body limits, the same on the front door and the admin listener.
    pub fn from_limits(l: &crate::settings::Limits) -> BodyLimits {
        BodyLimits {
            max_bytes: l.max_body_bytes,
            memory: l.client_body_buffer_bytes,
            timeout: l.client_body_timeout,
            min_rate: l.client_body_min_rate,
        }
    }
}

/// Arrivals are grouped into this many slots per window, so the clock's memory is bounded
/// however many reads a body takes.
const SLOTS_PER_WINDOW: u32 = 16;

/// A true minimum rate for a request body: in every `timeout`-long window (the first one is
/// the grace period) at least `min_rate x timeout` bytes must arrive (at least one byte).
/// Bytes count only while they are in the window, so a fast start banks nothing: whatever
/// arrived, a client that stops sending is cut off one window after its last bytes.
///
/// nginx's `client_body_timeout` (60 s between two reads) lets a byte every 59 s hold a
/// connection forever; Apache mod_reqtimeout's `MinRate` (one more second per `MinRate` bytes,
/// this gateway's first rule) lets 10 MiB sent in a second buy hours of silence. This is
/// HAProxy-style "at least so much per period", measured over a sliding window.
#[derive(Debug)]
pub struct BodyClock {
    start: Instant,
    window: Duration,
    slot: Duration,
    need: u64,
    /// Arrivals still in the window, oldest first: (slot opened, last arrival, bytes). A slot's
    /// bytes leave the window one window after its last arrival (lenient by at most one slot).
    slots: VecDeque<(Instant, Instant, u64)>,
    in_window: u64,
}

impl BodyClock {
    pub fn new(start: Instant, limits: &BodyLimits) -> BodyClock {
        let window = limits.timeout.max(Duration::from_millis(1));
        let need =
            u64::try_from(u128::from(limits.min_rate).saturating_mul(window.as_millis()) / 1000)
                .unwrap_or(u64::MAX)
                .max(1);
        BodyClock {
            start,
            window,
            slot: window / SLOTS_PER_WINDOW,
            need,
            slots: VecDeque::new(),
            in_window: 0,
        }
    }

    /// `n` bytes arrived at `now` (never earlier than the previous call).
    pub fn record(&mut self, now: Instant, n: u64) {
        while let Some(&(_, last, bytes)) = self.slots.front() {
            if last + self.window > now {
                break;
            }
            self.in_window -= bytes;
            self.slots.pop_front();
        }
        if n == 0 {
            return;
        }
        self.in_window = self.in_window.saturating_add(n);
        match self.slots.back_mut() {
            Some((opened, last, bytes)) if now < *opened + self.slot => {
                *last = now;
                *bytes = bytes.saturating_add(n);
            }
            _ => self.slots.push_back((now, now, n)),
        }
    }

    /// When the body is too slow if nothing more arrives: the first moment after the grace
    /// period at which the last window holds fewer than the bytes needed (in the past when
    /// that moment has already come).
    pub fn deadline(&self) -> Instant {
        let grace = self.start + self.window;
        let mut left = self.in_window;
        if left < self.need {
            return grace;
        }
        for &(_, last, bytes) in &self.slots {
            left -= bytes;
            if left < self.need {
                return grace.max(last + self.window);
            }
        }
        grace
    }
}

/// Whether the request announces a body (`Content-Length` above 0, any `Transfer-Encoding`, or
/// an HTTP/2 stream still open after the headers).
pub fn has_body(session: &mut Session) -> bool {
    !session.is_body_empty()
}

/// Read the whole request body. `Expect: 100-continue` is answered first, since the client
/// waits for it before sending and the app will not be asked.
pub async fn read_body(
    session: &mut Session,
    limits: &BodyLimits,
    dir: &Arc<PathBuf>,
) -> Result<Body, ClientFailure> {
    let mut clock = BodyClock::new(Instant::now(), limits);
    let mut body = Body::new(limits.memory, dir.clone());
    let expects_continue = session
        .req_header()
        .headers
        .get(http::header::EXPECT)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    if expects_continue && !session.is_body_done() {
        session
            .write_continue_response()
            .await
            .map_err(|e| ClientFailure::from_error(&e))?;
    }
    loop {
        let chunk =
            match tokio::time::timeout_at(clock.deadline(), session.read_request_body()).await {
                Err(_) => {
                    return Err(ClientFailure::Timeout {
                        received: body.len(),
                    })
                }
                Ok(Err(e)) => return Err(ClientFailure::from_error(&e)),
                Ok(Ok(None)) => return Ok(body),
                Ok(Ok(Some(chunk))) => chunk,
            };
        clock.record(Instant::now(), chunk.len() as u64);
        if body.len() + chunk.len() as u64 > limits.max_bytes {
            return Err(ClientFailure::TooLarge(limits.max_bytes));
        }
        body.push(chunk).await.map_err(ClientFailure::Disk)?;
    }
}

// ---------------------------------------------------------------------------------------------
// Response bodies.

/// First in, first out: what the app sent and the client has not taken yet. New data goes to
/// memory until `memory` is reached, then to the file until the file has been read to its end
/// (so the order is kept: memory holds the older part, the file the newer).
pub struct Fifo {
    mem: VecDeque<Bytes>,
    mem_len: usize,
    memory: usize,
    file: Option<Arc<File>>,
    read_pos: u64,
    write_pos: u64,
    max_file: u64,
    dir: Arc<PathBuf>,
    /// Most bytes ever waiting on disk at once, for the log.
    pub peak_on_disk: u64,
}

impl Fifo {
    pub fn new(memory: usize, max_file: u64, dir: Arc<PathBuf>) -> Fifo {
        Fifo {
            mem: VecDeque::new(),
            mem_len: 0,
            memory,
            file: None,
            read_pos: 0,
            write_pos: 0,
            max_file,
            dir,
            peak_on_disk: 0,
        }
    }

    fn on_disk(&self) -> u64 {
        self.write_pos - self.read_pos
    }

    /// Bytes waiting to be sent.
    pub fn len(&self) -> u64 {
        self.mem_len as u64 + self.on_disk()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// No room for more: read the app only as fast as the client reads.
    pub fn is_full(&self) -> bool {
        self.mem_len >= self.memory && self.on_disk() >= self.max_file
    }

    pub async fn push(&mut self, chunk: Bytes) -> io::Result<()> {
        if chunk.is_empty() {
            return Ok(());
        }
        if self.on_disk() == 0 && self.mem_len + chunk.len() <= self.memory {
            self.mem_len += chunk.len();
            self.mem.push_back(chunk);
            return Ok(());
        }
        let file = spill_file(&mut self.file, &self.dir).await?;
        let n = chunk.len() as u64;
        write_at(&file, chunk, self.write_pos).await?;
        self.write_pos += n;
        self.peak_on_disk = self.peak_on_disk.max(self.on_disk());
        Ok(())
    }

    pub async fn pop(&mut self) -> io::Result<Option<Bytes>> {
        if let Some(b) = self.mem.pop_front() {
            self.mem_len -= b.len();
            return Ok(Some(b));
        }
        let Some(file) = &self.file else {
            return Ok(None);
        };
        let left = self.on_disk();
        if left == 0 {
            return Ok(None);
        }
        let n = left.min(FILE_CHUNK as u64) as usize;
        let chunk = read_at(file, self.read_pos, n).await?;
        self.read_pos += n as u64;
        if self.read_pos == self.write_pos {
            // Drained: the file is written from its start again, and new data goes to memory.
            self.read_pos = 0;
            self.write_pos = 0;
        }
        Ok(Some(chunk))
    }
}

/// Where and how much of an answer a route with `response_buffering` may hold.
pub struct ResponseBuffering {
    pub memory: usize,
    pub max_file: u64,
    pub dir: Arc<PathBuf>,
}

type Write<'s> = std::pin::Pin<
    Box<dyn std::future::Future<Output = (&'s mut Session, pingora::Result<()>)> + Send + 's>,
>;

fn write(session: &mut Session, chunk: Bytes) -> Write<'_> {
    Box::pin(async move {
        let r = session.write_response_body(Some(chunk), false).await;
        (session, r)
    })
}

/// Feeds a client from a [`Fifo`] while its owner reads the app's answer into it as fast as the
/// app writes: the app's connection (and worker) is free as soon as its answer is in, however
/// slowly the client reads. The answer's head must already be sent.
pub struct Feeder<'s> {
    fifo: Fifo,
    /// The client session: here while no write is in progress, lent to `writing` otherwise.
    idle: Option<&'s mut Session>,
    writing: Option<Write<'s>>,
}

impl<'s> Feeder<'s> {
    pub fn new(session: &'s mut Session, fifo: Fifo) -> Feeder<'s> {
        Feeder {
            fifo,
            idle: Some(session),
            writing: None,
        }
    }

    /// Queue a piece of the answer (to memory, or to the temporary file past the memory limit).
    pub async fn push(&mut self, chunk: Bytes) -> pingora::Result<()> {
        self.fifo.push(chunk).await.map_err(|e| {
            pingora::Error::explain(
                pingora::ErrorType::FileWriteError,
                format!("buffering the answer: {e}"),
            )
        })
    }

    /// Await `read` (a read from the app) while sending what is queued to the client; `read`
    /// waits while the queue is full, so the app is then read only as fast as the client reads.
    pub async fn read<F: std::future::Future>(&mut self, read: F) -> pingora::Result<F::Output> {
        tokio::pin!(read);
        loop {
            self.start_write().await?;
            let Feeder {
                fifo,
                idle,
                writing,
            } = self;
            let reading = !fifo.is_full();
            tokio::select! {
                r = &mut read, if reading => return Ok(r),
                (s, r) = async {
                    match writing.as_mut() {
                        Some(w) => w.await,
                        None => std::future::pending().await,
                    }
                }, if writing.is_some() => {
                    *writing = None;
                    r?;
                    *idle = Some(s);
                }
                // Unreachable (a full queue always has a write in progress); wait for the app
                // rather than spin.
                else => return Ok((&mut read).await),
            }
        }
    }

    /// The app is done: send the rest and end the answer. Returns the most bytes that waited
    /// on disk.
    pub async fn finish(mut self) -> pingora::Result<u64> {
        loop {
            if let Some(w) = self.writing.take() {
                let (s, r) = w.await;
                r?;
                self.idle = Some(s);
            }
            self.start_write().await?;
            if self.writing.is_none() {
                break;
            }
        }
        if let Some(s) = self.idle.take() {
            s.write_response_body(None, true).await?;
        }
        Ok(self.fifo.peak_on_disk)
    }

    /// Lend the idle session to a write of the next queued piece, if there is one.
    async fn start_write(&mut self) -> pingora::Result<()> {
        if self.writing.is_some() {
            return Ok(());
        }
        let Some(s) = self.idle.take() else {
            return Ok(());
        };
        match self.fifo.pop().await {
            Ok(Some(chunk)) => self.writing = Some(write(s, chunk)),
            Ok(None) => self.idle = Some(s),
            Err(e) => {
                return pingora::Error::e_explain(
                    pingora::ErrorType::FileReadError,
                    format!("reading a buffered answer back: {e}"),
                )
            }
        }
        Ok(())
    }
}

/// Whether an answer may be buffered: never a stream of events (each must reach the browser
/// when it is sent), and never when the app says so with `X-Accel-Buffering: no` (nginx's
/// convention, which Rails' and Laravel's streaming helpers send).
pub fn response_may_buffer(resp: &pingora::http::ResponseHeader) -> bool {
    let event_stream = resp
        .headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.split(';')
                .next()
                .is_some_and(|m| m.trim().eq_ignore_ascii_case("text/event-stream"))
        });
    let app_says_no = resp
        .headers
        .get_all("x-accel-buffering")
        .iter()
        .any(|v| v.as_bytes().eq_ignore_ascii_case(b"no"));
    !event_stream && !app_says_no
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir() -> Arc<PathBuf> {
        Arc::new(std::env::temp_dir())
    }

    fn pattern(n: usize, seed: u8) -> Bytes {
        Bytes::from(
            (0..n)
                .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
                .collect::<Vec<u8>>(),
        )
    }

    async fn collect(body: &Body) -> Vec<u8> {
        let mut out = Vec::new();
        let mut r = body.replay();
        while let Some(c) = r.next().await.expect("read") {
            out.extend_from_slice(&c);
        }
        out
    }

    #[tokio::test]
    async fn a_body_under_the_limit_stays_in_memory() {
        let mut b = Body::new(1024, dir());
        b.push(pattern(500, 1)).await.expect("push");
        b.push(pattern(524, 2)).await.expect("push");
        assert!(!b.spilled());
        assert_eq!(b.len(), 1024);
        let mut want = pattern(500, 1).to_vec();
        want.extend_from_slice(&pattern(524, 2));
        assert_eq!(collect(&b).await, want);
    }

    #[tokio::test]
    async fn a_large_body_spills_and_replays_intact_twice() {
        let mut b = Body::new(1000, dir());
        let mut want = Vec::new();
        for i in 0..50 {
            let c = pattern(7001, i);
            want.extend_from_slice(&c);
            b.push(c).await.expect("push");
        }
        assert!(b.spilled());
        assert_eq!(b.len(), want.len() as u64);
        assert_eq!(collect(&b).await, want);
        assert_eq!(
            collect(&b).await,
            want,
            "a second replay (a retry) sees the same bytes"
        );
    }

    #[tokio::test]
    async fn the_fifo_keeps_order_across_memory_and_disk() {
        let mut f = Fifo::new(10_000, u64::MAX, dir());
        let mut want = Vec::new();
        let mut got = Vec::new();
        // Interleave pushes and pops so data moves memory -> disk -> memory again.
        for round in 0..20u8 {
            for i in 0..5u8 {
                let c = pattern(3000 + usize::from(i) * 100, round.wrapping_add(i));
                want.extend_from_slice(&c);
                f.push(c).await.expect("push");
            }
            for _ in 0..(round % 4) {
                if let Some(c) = f.pop().await.expect("pop") {
                    got.extend_from_slice(&c);
                }
            }
        }
        assert!(f.peak_on_disk > 0, "the test should have used the file");
        while let Some(c) = f.pop().await.expect("pop") {
            got.extend_from_slice(&c);
        }
        assert!(f.is_empty());
        assert_eq!(got.len(), want.len());
        assert!(got == want, "bytes came out in another order");
    }

    #[tokio::test]
    async fn the_fifo_is_full_only_when_memory_and_file_are() {
        let mut f = Fifo::new(100, 1000, dir());
        f.push(pattern(100, 0)).await.expect("push");
        assert!(!f.is_full());
        f.push(pattern(999, 0)).await.expect("push");
        assert!(!f.is_full());
        f.push(pattern(1, 0)).await.expect("push");
        assert!(f.is_full());
        f.pop().await.expect("pop");
        assert!(!f.is_full());
    }

    fn limits(window_s: u64, min_rate: u64) -> BodyLimits {
        BodyLimits {
            max_bytes: u64::MAX,
            memory: 1024,
            timeout: Duration::from_secs(window_s),
            min_rate,
        }
    }

    fn secs(s: f64) -> Duration {
        Duration::from_secs_f64(s)
    }

    #[test]
    fn nothing_is_needed_during_the_grace_period_and_a_trickle_is_cut_after_it() {
        let start = Instant::now();
        let mut c = BodyClock::new(start, &limits(60, 500));
        assert_eq!(c.deadline(), start + secs(60.0));
        // 100 bytes a second is below 500: the window never holds the 30,000 needed.
        for s in 1..=59 {
            c.record(start + secs(f64::from(s)), 100);
        }
        assert_eq!(c.deadline(), start + secs(60.0));
    }

    #[test]
    fn a_fast_start_banks_nothing() {
        let start = Instant::now();
        let mut c = BodyClock::new(start, &limits(60, 500));
        // 10 MiB in the first second, then silence: cut one window after the last bytes, not
        // (as with one second per 500 bytes) 5.8 hours later.
        c.record(start + secs(0.5), 10 << 20);
        assert_eq!(c.deadline(), start + secs(60.5));
    }

    #[test]
    fn a_steady_upload_at_the_rate_keeps_going_and_a_stop_is_cut_a_window_later() {
        let start = Instant::now();
        let mut c = BodyClock::new(start, &limits(1, 500));
        let mut now = start;
        for _ in 0..100 {
            now += secs(0.1);
            c.record(now, 60);
            assert!(c.deadline() > now, "cut while sending 600 B/s at {now:?}");
        }
        // The window holds 600 bytes; the oldest slots leave it first.
        let d = c.deadline();
        assert!(d > now && d <= now + secs(1.0), "{:?}", d - now);
    }

    #[test]
    fn a_zero_rate_is_nginx_between_two_reads() {
        let start = Instant::now();
        let mut c = BodyClock::new(start, &limits(60, 0));
        c.record(start + secs(50.0), 1);
        assert_eq!(c.deadline(), start + secs(110.0));
        c.record(start + secs(109.0), 1);
        assert_eq!(c.deadline(), start + secs(169.0));
    }

    #[test]
    fn the_clock_keeps_a_bounded_number_of_slots() {
        let start = Instant::now();
        let mut c = BodyClock::new(start, &limits(1, 10));
        for i in 0..10_000u32 {
            c.record(start + Duration::from_micros(u64::from(i) * 997), 1);
        }
        assert!(
            c.slots.len() <= SLOTS_PER_WINDOW as usize + 1,
            "{}",
            c.slots.len()
        );
    }

    proptest::proptest! {
        /// Whatever arrived before, and however it was cut into reads, a client that stops is
        /// never granted more than one window after its last bytes, nor cut before the grace
        /// period ends.
        #[test]
        fn no_arrival_pattern_earns_more_than_one_window_of_silence(
            gaps in proptest::collection::vec((0u64..3_000, 0u64..100_000), 1..200),
            rate in 0u64..5_000,
        ) {
            let start = Instant::now();
            let window = Duration::from_secs(2);
            let mut c = BodyClock::new(start, &limits(2, rate));
            let mut now = start;
            for (gap_ms, n) in gaps {
                now += Duration::from_millis(gap_ms);
                c.record(now, n);
                let d = c.deadline();
                proptest::prop_assert!(d >= start + window);
                proptest::prop_assert!(d <= (start + window).max(now + window));
            }
        }
    }

    #[test]
    fn event_streams_and_x_accel_buffering_no_are_never_buffered() {
        use pingora::http::ResponseHeader;
        let mut r = ResponseHeader::build(200, None).expect("head");
        r.insert_header("content-type", "text/html").expect("h");
        assert!(response_may_buffer(&r));
        r.insert_header("content-type", "Text/Event-Stream; charset=utf-8")
            .expect("h");
        assert!(!response_may_buffer(&r));
        r.insert_header("content-type", "application/json")
            .expect("h");
        r.insert_header("x-accel-buffering", "no").expect("h");
        assert!(!response_may_buffer(&r));
        r.insert_header("x-accel-buffering", "yes").expect("h");
        assert!(response_may_buffer(&r));
    }
}
