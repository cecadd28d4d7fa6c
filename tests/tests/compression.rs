//! Response compression as a browser sees it: gzip or brotli by `Accept-Encoding`, for the
//! app's answers, static files and PHP, and never where it would break something (event
//! streams, ranges, bodies already encoded, `no-transform`) or gain nothing (small bodies,
//! images). Every compressed body is decoded here and compared with what was sent.

use std::io::{Read, Write};
use std::time::Duration;

use e2e::{client, client_builder, raw_tls, Gateway, PhpFpm, Scratch, Stub};
use reqwest::header::HeaderMap;

/// A static root, the stub app behind it, the gateway's own SSE route, and a route whose
/// compression is turned off (`/body/7777`: the gateway passes paths on unchanged).
struct Site {
    gw: Gateway,
    app: Stub,
    root: Scratch,
}

/// An HTML page long enough to be worth compressing.
fn page() -> Vec<u8> {
    let mut html = String::from("<!doctype html><title>Orders</title><ul>\n");
    for i in 0..400 {
        html.push_str(&format!(
            "<li class=\"order\">Order #{i:05}: {} items, shipped</li>\n",
            i * 37 % 11
        ));
    }
    html.push_str("</ul>\n");
    html.into_bytes()
}

/// Bytes that do not compress (a stand-in for a PNG).
fn noise(n: usize) -> Vec<u8> {
    let mut x: u32 = 2_463_534_242;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

fn site() -> Site {
    let app = Stub::start("app");
    let root = Scratch::new("public");
    let r = root.path();
    std::fs::write(r.join("orders.html"), page()).expect("write");
    std::fs::write(r.join("tiny.txt"), "ok\n").expect("write");
    std::fs::write(r.join("logo.png"), noise(5000)).expect("write");
    // A bundle with a precompressed brotli sibling (made at build time) but no .gz.
    let bundle = "function add(a, b) { return a + b; }\n".repeat(200);
    std::fs::write(r.join("bundle.js"), &bundle).expect("write");
    let mut br = Vec::new();
    brotli::CompressorWriter::new(&mut br, 4096, 11, 22)
        .write_all(bundle.as_bytes())
        .expect("brotli");
    std::fs::write(r.join("bundle.js.br"), &br).expect("write");
    let gw = Gateway::start(&format!(
        r#"
listen: {{https: "{{https}}", admin: "{{admin}}"}}
tls: {{state_dir: state}}
realtime: {{sse: {{heartbeat_ms: 1000}}}}
upstreams: {{app: {{servers: ["{app}"]}}}}
routes:
  - {{path: /events, realtime: sse}}
  - {{path: /body/7777, upstream: app, compression: false}}
  - path: /
    static: {{root: {root}, precompressed: true}}
    upstream: app
"#,
        app = app.addr,
        root = r.display()
    ));
    Site { gw, app, root }
}

struct Got {
    status: u16,
    headers: HeaderMap,
    body: Vec<u8>,
}

impl Got {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
    fn encoding(&self) -> Option<&str> {
        self.header("content-encoding")
    }
    fn varies_on_accept_encoding(&self) -> bool {
        self.headers.get_all("vary").iter().any(|v| {
            v.to_str()
                .unwrap_or("")
                .split(',')
                .any(|t| t.trim().eq_ignore_ascii_case("accept-encoding"))
        })
    }
    /// The body as the client's decoder would hand it to the page.
    fn decoded(&self) -> Vec<u8> {
        decode(self.encoding(), &self.body)
    }
}

fn decode(encoding: Option<&str>, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    match encoding {
        None => out.extend_from_slice(body),
        Some("gzip") => {
            flate2::read::GzDecoder::new(body)
                .read_to_end(&mut out)
                .expect("a valid gzip stream");
        }
        Some("br") => {
            brotli::Decompressor::new(body, 4096)
                .read_to_end(&mut out)
                .expect("a valid brotli stream");
        }
        Some(other) => panic!("unexpected content-encoding {other}"),
    }
    out
}

/// `GET` with these request headers. reqwest is built without its gzip/brotli features, so
/// it neither asks for an encoding nor decodes one: we see exactly what was sent.
async fn get(c: &reqwest::Client, url: &str, headers: &[(&str, &str)]) -> Got {
    let mut req = c.get(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let r = req.send().await.expect("request");
    Got {
        status: r.status().as_u16(),
        headers: r.headers().clone(),
        body: r.bytes().await.expect("body").to_vec(),
    }
}

/// HTTP/2 (what browsers get by ALPN) and HTTP/1.1 (chunked framing).
fn clients() -> [(&'static str, reqwest::Client); 2] {
    [
        ("h2", client()),
        (
            "h1",
            client_builder().http1_only().build().expect("h1 client"),
        ),
    ]
}

/// What the app sends for `path`, asked directly (no gateway, no compression).
async fn original(app: &Stub, path: &str) -> Vec<u8> {
    reqwest::get(format!("http://{}{path}", app.addr))
        .await
        .expect("stub")
        .bytes()
        .await
        .expect("stub body")
        .to_vec()
}

#[tokio::test]
async fn app_answers_are_compressed_with_the_coding_the_browser_prefers() {
    let s = site();
    for path in [
        "/body/20000?type=text/html;%20charset=utf-8",
        "/body/20000?type=application/json&framing=chunked",
    ] {
        let want = original(&s.app, path).await;
        assert_eq!(want.len(), 20000);
        for (proto, c) in clients() {
            for (accept, coding) in [
                ("gzip, deflate, br, zstd", "br"),
                ("br", "br"),
                ("gzip", "gzip"),
                ("br;q=0, gzip", "gzip"),
                ("gzip;q=1.0, br;q=0.5", "gzip"),
                ("*", "br"),
            ] {
                let r = get(&c, &s.gw.https(path), &[("accept-encoding", accept)]).await;
                let at = format!("{proto} {path} {accept:?}");
                assert_eq!(r.status, 200, "{at}");
                assert_eq!(r.encoding(), Some(coding), "{at}");
                assert!(r.varies_on_accept_encoding(), "{at}: no Vary");
                assert_eq!(r.header("content-length"), None, "{at}");
                assert!(
                    r.body.len() < want.len() / 3,
                    "{at}: {} bytes is hardly compressed",
                    r.body.len()
                );
                assert_eq!(r.decoded(), want, "{at}: decoded bytes differ");
            }
        }
    }
}

#[tokio::test]
async fn compressing_weakens_the_etag_and_keeps_the_apps_vary() {
    let s = site();
    let path = "/body/5000?header=ETag:%20%22v1%22&header=Vary:%20Origin";
    let c = client();
    let r = get(&c, &s.gw.https(path), &[("accept-encoding", "gzip")]).await;
    assert_eq!(r.encoding(), Some("gzip"));
    assert_eq!(r.header("etag"), Some("W/\"v1\""));
    assert_eq!(r.header("vary"), Some("Origin, Accept-Encoding"));
    assert_eq!(r.decoded(), original(&s.app, path).await);
    // Identity keeps the strong tag: those are the exact bytes it was made for.
    let r = get(&c, &s.gw.https(path), &[]).await;
    assert_eq!(r.encoding(), None);
    assert_eq!(r.header("etag"), Some("\"v1\""));
    assert_eq!(r.header("vary"), Some("Origin, Accept-Encoding"));
}

#[tokio::test]
async fn a_browser_that_refuses_every_coding_gets_the_bytes_as_they_are() {
    let s = site();
    let path = "/body/20000";
    let want = original(&s.app, path).await;
    let c = client();
    for accept in [
        Some("gzip;q=0"),
        Some("br;q=0, gzip;q=0"),
        Some("identity"),
        Some("gzip;q=0.5, identity"),
        Some("deflate"),
        None,
    ] {
        let headers: Vec<(&str, &str)> =
            accept.map(|a| ("accept-encoding", a)).into_iter().collect();
        let r = get(&c, &s.gw.https(path), &headers).await;
        assert_eq!(r.encoding(), None, "{accept:?}");
        assert_eq!(r.header("content-length"), Some("20000"), "{accept:?}");
        assert!(
            r.varies_on_accept_encoding(),
            "{accept:?}: caches must keep variants apart"
        );
        assert_eq!(r.body, want, "{accept:?}");
    }
}

#[tokio::test]
async fn event_streams_ranges_small_images_encoded_and_no_transform_answers_are_left_alone() {
    let s = site();
    let c = client();
    let all = [("accept-encoding", "gzip, br")];
    for (path, why) in [
        ("/body/20000?type=text/event-stream", "an event stream"),
        (
            "/body/20000?type=text/event-stream&framing=chunked",
            "a streamed event stream",
        ),
        ("/body/100", "below min_length"),
        ("/body/20000?type=image/png", "an image type"),
        (
            "/body/20000?header=Cache-Control:%20public,%20no-transform",
            "no-transform",
        ),
        ("/body/7777", "a route with compression: false"),
    ] {
        let r = get(&c, &s.gw.https(path), &all).await;
        assert_eq!(r.status, 200, "{why}");
        assert_eq!(r.encoding(), None, "{why}");
        assert!(!r.varies_on_accept_encoding(), "{why}: nothing varies");
        assert_eq!(r.body, original(&s.app, path).await, "{why}");
    }

    // Already encoded by the app: passed on as it is, never encoded twice.
    let path = "/body/20000?header=Content-Encoding:%20br";
    let r = get(&c, &s.gw.https(path), &[("accept-encoding", "gzip, br")]).await;
    assert_eq!(r.encoding(), Some("br"));
    assert_eq!(r.header("content-length"), Some("20000"));
    assert_eq!(r.body, original(&s.app, path).await);

    // A range request gets the identity bytes (the app here ignores Range and sends them all).
    let r = get(
        &c,
        &s.gw.https("/body/20000"),
        &[("accept-encoding", "gzip"), ("range", "bytes=0-99")],
    )
    .await;
    assert_eq!(r.encoding(), None);
    assert_eq!(r.body, original(&s.app, "/body/20000").await);

    // HTTP/1.0 has no chunked framing for a body of unknown length.
    let out = raw_tls(
        s.gw.https_addr(),
        b"GET /body/20000 HTTP/1.0\r\nHost: localhost\r\nAccept-Encoding: gzip\r\n\r\n",
        Duration::from_secs(5),
    )
    .await;
    let head = out
        .split("\r\n\r\n")
        .next()
        .unwrap_or("")
        .to_ascii_lowercase();
    assert!(head.starts_with("http/1."), "{head}");
    assert!(!head.contains("content-encoding"), "{head}");
    assert!(head.contains("content-length: 20000"), "{head}");
}

#[tokio::test]
async fn the_gateways_own_event_stream_is_never_compressed() {
    let s = site();
    let mut r = client()
        .get(s.gw.https("/events?topic=news"))
        .header("accept-encoding", "gzip, br")
        .send()
        .await
        .expect("subscribe");
    assert_eq!(r.status(), 200);
    assert!(r.headers()["content-type"]
        .to_str()
        .expect("type")
        .starts_with("text/event-stream"));
    assert!(r.headers().get("content-encoding").is_none());
    // The first bytes are plain text, readable as they arrive.
    let first = tokio::time::timeout(Duration::from_secs(5), r.chunk())
        .await
        .expect("first bytes in time")
        .expect("read")
        .expect("a chunk");
    let text = String::from_utf8(first.to_vec()).expect("plain text");
    assert!(text.starts_with("retry: "), "{text:?}");
}

/// Feeds a compressed stream to a streaming decoder; returns what it decoded so far.
enum Decoder {
    Gzip(Box<flate2::write::GzDecoder<Vec<u8>>>),
    Brotli(Box<brotli::DecompressorWriter<Vec<u8>>>),
}

impl Decoder {
    fn new(coding: &str) -> Decoder {
        match coding {
            "gzip" => Decoder::Gzip(Box::new(flate2::write::GzDecoder::new(Vec::new()))),
            _ => Decoder::Brotli(Box::new(brotli::DecompressorWriter::new(Vec::new(), 4096))),
        }
    }
    fn feed(&mut self, bytes: &[u8]) -> String {
        let out = match self {
            Decoder::Gzip(d) => {
                d.write_all(bytes).expect("gzip");
                d.flush().expect("gzip");
                d.get_ref()
            }
            Decoder::Brotli(d) => {
                d.write_all(bytes).expect("brotli");
                d.flush().expect("brotli");
                d.get_ref()
            }
        };
        String::from_utf8_lossy(out).into_owned()
    }
}

#[tokio::test]
async fn a_streamed_answer_reaches_the_browser_piece_by_piece_while_compressed() {
    let s = site();
    // Three lines of plain text, one a second: a progress page or a chunked export.
    let path = "/stream?format=chunked&n=3&interval_ms=1000";
    for (proto, c) in clients() {
        for coding in ["gzip", "br"] {
            let mut r = c
                .get(s.gw.https(path))
                .header("accept-encoding", coding)
                .send()
                .await
                .expect("request");
            assert_eq!(
                r.headers()
                    .get("content-encoding")
                    .and_then(|v| v.to_str().ok()),
                Some(coding),
                "{proto}"
            );
            let mut decoder = Decoder::new(coding);
            let mut seen = String::new();
            let mut first_seen_alone = None;
            while let Some(chunk) = tokio::time::timeout(Duration::from_secs(10), r.chunk())
                .await
                .expect("stream stalled")
                .expect("read")
            {
                seen = decoder.feed(&chunk);
                if first_seen_alone.is_none() && seen.contains("tick 1\n") {
                    first_seen_alone = Some(!seen.contains("tick 3"));
                }
            }
            assert_eq!(
                first_seen_alone,
                Some(true),
                "{proto} {coding}: the first line waited for the end of the stream"
            );
            assert_eq!(seen, "tick 1\ntick 2\ntick 3\n", "{proto} {coding}");
        }
    }
}

#[tokio::test]
async fn static_files_are_compressed_on_the_fly_unless_a_precompressed_sibling_is_served() {
    let s = site();
    let want = page();
    let c = client();
    let url = s.gw.https("/orders.html");
    let mut weak = String::new();
    for (accept, coding) in [("gzip", "gzip"), ("br, gzip", "br")] {
        let r = get(&c, &url, &[("accept-encoding", accept)]).await;
        assert_eq!(r.status, 200);
        assert_eq!(r.encoding(), Some(coding), "{accept}");
        assert_eq!(r.header("content-type"), Some("text/html; charset=utf-8"));
        assert!(r.varies_on_accept_encoding());
        assert_eq!(r.header("content-length"), None);
        assert_eq!(
            r.header("accept-ranges"),
            None,
            "no ranges on a compressed body"
        );
        let etag = r.header("etag").expect("etag");
        assert!(etag.starts_with("W/\""), "{etag}");
        weak = etag.to_string();
        assert!(r.body.len() < want.len() / 3);
        assert_eq!(r.decoded(), want, "{accept}");
    }
    // The identity answer keeps its strong tag, length and ranges.
    let r = get(&c, &url, &[]).await;
    assert_eq!(r.encoding(), None);
    assert_eq!(r.header("etag"), weak.strip_prefix("W/"));
    assert_eq!(
        r.header("content-length"),
        Some(want.len().to_string().as_str())
    );
    assert_eq!(r.header("accept-ranges"), Some("bytes"));
    assert!(r.varies_on_accept_encoding());
    assert_eq!(r.body, want);

    // Revalidating with the weak tag still gets a 304, carrying the same weak tag and Vary.
    let r = get(
        &c,
        &url,
        &[("accept-encoding", "gzip"), ("if-none-match", &weak)],
    )
    .await;
    assert_eq!(r.status, 304);
    assert_eq!(r.header("etag"), Some(weak.as_str()));
    assert!(r.varies_on_accept_encoding());
    assert!(r.body.is_empty());
    let r = get(&c, &url, &[("if-none-match", &weak)]).await;
    assert_eq!(r.status, 304, "weak comparison for If-None-Match");

    // A range is served from the identity file, uncompressed.
    let r = get(
        &c,
        &url,
        &[("accept-encoding", "gzip"), ("range", "bytes=0-99")],
    )
    .await;
    assert_eq!(r.status, 206);
    assert_eq!(r.encoding(), None);
    assert_eq!(r.body, want[..100]);

    // HEAD describes the identity answer.
    let r = c
        .head(&url)
        .header("accept-encoding", "gzip")
        .send()
        .await
        .expect("head");
    assert!(r.headers().get("content-encoding").is_none());
    assert_eq!(
        r.headers()["content-length"],
        want.len().to_string().as_str()
    );

    // The build's brotli file is sent as it is; gzip, which has no sibling, is made on the fly.
    let bundle = std::fs::read(s.root.path().join("bundle.js")).expect("read");
    let prebuilt = std::fs::read(s.root.path().join("bundle.js.br")).expect("read");
    let r = get(
        &c,
        &s.gw.https("/bundle.js"),
        &[("accept-encoding", "br, gzip")],
    )
    .await;
    assert_eq!(r.encoding(), Some("br"));
    assert_eq!(r.body, prebuilt, "the precompressed file, byte for byte");
    assert_eq!(
        r.header("content-length"),
        Some(prebuilt.len().to_string().as_str())
    );
    let r = get(
        &c,
        &s.gw.https("/bundle.js"),
        &[("accept-encoding", "gzip")],
    )
    .await;
    assert_eq!(r.encoding(), Some("gzip"));
    assert_eq!(r.decoded(), bundle);

    // Too small, or not a compressible type: as they are.
    for (path, body) in [("/tiny.txt", b"ok\n".to_vec()), ("/logo.png", noise(5000))] {
        let r = get(&c, &s.gw.https(path), &[("accept-encoding", "gzip, br")]).await;
        assert_eq!(r.encoding(), None, "{path}");
        assert_eq!(r.body, body, "{path}");
    }
    assert!(
        s.app.paths().await.is_empty(),
        "static requests reached the app"
    );
}

#[tokio::test]
async fn php_answers_are_compressed_too() {
    let fpm = PhpFpm::start("");
    let root = Scratch::new("php-public");
    std::fs::write(
        root.path().join("index.php"),
        r#"<?php
if ($_SERVER['REQUEST_URI'] === '/small') { echo "tiny"; exit; }
header('Content-Type: text/html; charset=utf-8');
for ($i = 0; $i < 500; $i++) { echo "<p>Row $i of the report</p>\n"; }
"#,
    )
    .expect("write");
    let gw = Gateway::start(&format!(
        r#"
listen: {{https: "{{https}}"}}
tls: {{state_dir: state}}
upstreams:
  php:
    protocol: fastcgi
    servers: ["{server}"]
    fastcgi: {{root: {root}}}
routes:
  - {{path: /, upstream: php}}
"#,
        server = fpm.server(),
        root = root.path().display()
    ));
    let want: String = (0..500)
        .map(|i| format!("<p>Row {i} of the report</p>\n"))
        .collect();
    for (proto, c) in clients() {
        for coding in ["gzip", "br"] {
            let r = get(&c, &gw.https("/report"), &[("accept-encoding", coding)]).await;
            assert_eq!(r.status, 200, "{proto}");
            assert_eq!(r.encoding(), Some(coding), "{proto}");
            assert!(r.varies_on_accept_encoding());
            assert!(r.body.len() < want.len() / 3, "{proto} {coding}");
            assert_eq!(r.decoded(), want.as_bytes(), "{proto} {coding}");
        }
        let r = get(&c, &gw.https("/report"), &[]).await;
        assert_eq!(r.encoding(), None);
        assert_eq!(r.body, want.as_bytes());
    }
    // A PHP answer has no Content-Length, so even a tiny one is compressed (as nginx does).
    let r = get(
        &client(),
        &gw.https("/small"),
        &[("accept-encoding", "gzip")],
    )
    .await;
    assert_eq!(r.encoding(), Some("gzip"));
    assert_eq!(r.decoded(), b"tiny");
    drop(fpm);
}

#[tokio::test]
async fn answers_to_held_uploads_and_buffered_answers_are_compressed_too() {
    // A request with a body is held whole and relayed by the gateway itself (not pingora's
    // proxy path); a route with response buffering reads the answer ahead. Both compress.
    let s = site();
    let path = "/body/20000?type=text/html;%20charset=utf-8";
    let want = original(&s.app, path).await;
    let buffered = Gateway::start(&format!(
        r#"
listen: {{https: "{{https}}"}}
tls: {{state_dir: state}}
upstreams: {{app: {{servers: ["{app}"]}}}}
routes:
  - {{path: /, upstream: app, response_buffering: true}}
"#,
        app = s.app.addr
    ));
    for (proto, c) in clients() {
        for (gw, what) in [(&s.gw, "held upload"), (&buffered, "buffered answer")] {
            for coding in ["gzip", "br"] {
                let r = c
                    .post(gw.https(path))
                    .header("accept-encoding", coding)
                    .body("form=data&more=fields")
                    .send()
                    .await
                    .expect("post");
                let at = format!("{proto} {what} {coding}");
                assert_eq!(r.status(), 200, "{at}");
                let encoding = r
                    .headers()
                    .get("content-encoding")
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string);
                assert_eq!(encoding.as_deref(), Some(coding), "{at}");
                let body = r.bytes().await.expect("body");
                assert!(body.len() < want.len() / 3, "{at}: hardly compressed");
                assert_eq!(decode(encoding.as_deref(), &body), want, "{at}");
            }
        }
    }
}
