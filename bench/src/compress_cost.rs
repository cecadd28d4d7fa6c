//! What on-the-fly compression costs per response: size, CPU time and peak memory of the
//! gateway's own encoders (`gateway::compression::Encoder`) at each level, on given files.
//!
//! `cargo run --release -p bench --bin compress-cost -- FILE...` (default: the demo's
//! `public/` files). Each body is fed in 16 KiB pieces, flushed after each piece as the
//! proxy does with the app's answers (`--no-flush`: as static files are read). Memory is the
//! peak of live heap bytes while one response is encoded, counted by a wrapping allocator.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use gateway::compression::{Coding, Encoder, Settings};

struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

fn grew(by: usize) {
    let now = LIVE.fetch_add(by, Ordering::Relaxed) + by;
    PEAK.fetch_max(now, Ordering::Relaxed);
}

// SAFETY: every call is forwarded to the system allocator unchanged; only sizes are counted.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        grew(layout.size());
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        grew(layout.size());
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new: usize) -> *mut u8 {
        if new > layout.size() {
            grew(new - layout.size());
        } else {
            LIVE.fetch_sub(layout.size() - new, Ordering::Relaxed);
        }
        unsafe { System.realloc(ptr, layout, new) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

const PIECE: usize = 16 * 1024;

/// One response: (compressed bytes, peak extra heap bytes).
fn encode(coding: Coding, settings: &Settings, body: &[u8], flush: bool) -> (usize, usize) {
    let base = LIVE.load(Ordering::Relaxed);
    PEAK.store(base, Ordering::Relaxed);
    let mut e = Encoder::new(coding, settings);
    let mut out = 0;
    for piece in body.chunks(PIECE) {
        out += e.encode(piece).map(|b| b.len()).unwrap_or(0);
        if flush {
            out += e.flush().map(|b| b.len()).unwrap_or(0);
        }
    }
    out += e.finish().map(|b| b.len()).unwrap_or(0);
    drop(e);
    (out, PEAK.load(Ordering::Relaxed).saturating_sub(base))
}

fn main() {
    let mut flush = true;
    let mut files = Vec::new();
    for arg in std::env::args().skip(1) {
        match arg.as_str() {
            "--no-flush" => flush = false,
            _ => files.push(arg),
        }
    }
    if files.is_empty() {
        files = ["public/index.html", "public/app.css", "public/app.js"]
            .iter()
            .map(|s| s.to_string())
            .collect();
    }
    println!(
        "pieces of {} KiB, {}",
        PIECE / 1024,
        if flush {
            "flushed after each (proxied answers)"
        } else {
            "not flushed (static files)"
        }
    );
    println!(
        "{:<40} {:>10} {:>9} {:>7} {:>10} {:>8} {:>9}",
        "file", "coding", "in", "ratio", "us/resp", "MB/s", "peak KiB"
    );
    for file in &files {
        let body = match std::fs::read(file) {
            Ok(b) => b,
            Err(e) => {
                eprintln!("{file}: {e}");
                std::process::exit(1);
            }
        };
        let runs = (2_000_000 / body.len().max(1)).clamp(5, 500);
        let levels = [
            (Coding::Gzip, 1),
            (Coding::Gzip, 5),
            (Coding::Gzip, 6),
            (Coding::Gzip, 9),
            (Coding::Brotli, 1),
            (Coding::Brotli, 4),
            (Coding::Brotli, 5),
            (Coding::Brotli, 6),
        ];
        for (coding, level) in levels {
            // The encoder reads only the level; the rest is for per-response decisions.
            let settings = Settings {
                codings: vec![coding],
                gzip_level: level,
                brotli_level: level,
                min_length: 0,
                types: Vec::new(),
            };
            let (size, peak) = encode(coding, &settings, &body, flush);
            let started = Instant::now();
            for _ in 0..runs {
                encode(coding, &settings, &body, flush);
            }
            let each: Duration = started.elapsed() / runs as u32;
            println!(
                "{:<40} {:>10} {:>9} {:>7.3} {:>10.0} {:>8.0} {:>9}",
                file,
                format!("{}-{level}", coding.token()),
                body.len(),
                size as f64 / body.len() as f64,
                each.as_secs_f64() * 1e6,
                body.len() as f64 / each.as_secs_f64() / 1e6,
                peak / 1024
            );
        }
    }
}
