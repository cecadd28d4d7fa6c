//! A large answer from the app is neither copied out of the buffer it was read into nor into
//! another buffer before it is written to the client (the pingora-core patch of
//! vendor/large-body-writes.patch.md, both halves).
//!
//! pingora-proxy reads the app's answer with pingora's HTTP/1 client, 64 KiB at a time, and
//! hands the client's side the head and the body chunks read meanwhile in batches. Published,
//! the client copied each read out of its read buffer (`read_body_bytes`), and the server
//! copied every chunk of a batch into one buffer before writing it: for a 1 MiB answer over TLS
//! those copies were 7% and 11% of the gateway's CPU, where TLS copies each byte into its
//! records anyway. Patched, a large read of a content-length (or read-until-close) body is
//! handed out as the read buffer itself, and a chunk of 16 KiB or more is written as it is,
//! after whatever smaller chunks came before it. The tests run pingora's HTTP/1 sessions over
//! a stream that records where each read and write put or took its bytes in memory: every
//! byte arrives, in order, framed as before, and the large pieces were never copied.

use std::ops::Range;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use async_trait::async_trait;
use bytes::Bytes;
use pingora::http::ResponseHeader;
use pingora::protocols::http::{HttpTask, ServerSession};
use pingora::protocols::raw_connect::ProxyDigest;
use pingora::protocols::{
    GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, SocketDigest, Ssl,
    TimingDigest, UniqueID, UniqueIDType,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, DuplexStream, ReadBuf};

/// One end of an in-memory pipe that records the memory each write's bytes came from and each
/// read's bytes went to.
#[derive(Debug)]
struct Recording {
    inner: DuplexStream,
    writes: Arc<Mutex<Vec<Range<usize>>>>,
    reads: Arc<Mutex<Vec<Range<usize>>>>,
}

impl Recording {
    fn new(inner: DuplexStream) -> Recording {
        Recording {
            inner,
            writes: Arc::default(),
            reads: Arc::default(),
        }
    }
}

impl AsyncRead for Recording {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let read = Pin::new(&mut self.inner).poll_read(cx, buf);
        let filled = &buf.filled()[before..];
        if !filled.is_empty() {
            let start = filled.as_ptr() as usize;
            self.reads.lock().unwrap().push(start..start + filled.len());
        }
        read
    }
}

impl AsyncWrite for Recording {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let written = Pin::new(&mut self.inner).poll_write(cx, data);
        if let Poll::Ready(Ok(n)) = written {
            let start = data.as_ptr() as usize;
            self.writes.lock().unwrap().push(start..start + n);
        }
        written
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[async_trait]
impl Shutdown for Recording {
    async fn shutdown(&mut self) {
        let _ = AsyncWriteExt::shutdown(&mut self.inner).await;
    }
}

impl UniqueID for Recording {
    fn id(&self) -> UniqueIDType {
        1
    }
}

impl Ssl for Recording {}

impl GetTimingDigest for Recording {
    fn get_timing_digest(&self) -> Vec<Option<TimingDigest>> {
        Vec::new()
    }
}

impl GetProxyDigest for Recording {
    fn get_proxy_digest(&self) -> Option<Arc<ProxyDigest>> {
        None
    }
}

impl GetSocketDigest for Recording {
    fn get_socket_digest(&self) -> Option<Arc<SocketDigest>> {
        None
    }
}

impl Peek for Recording {}

/// `len` bytes of a recognisable pattern, different for each `seed`.
fn chunk(seed: u8, len: usize) -> Bytes {
    (0..len)
        .map(|i| seed.wrapping_add((i % 251) as u8))
        .collect::<Vec<u8>>()
        .into()
}

/// Write `head` and `chunks` as one batch (pingora-proxy's `response_duplex_vec`) on a session
/// that has read a GET, and return what the client received and where the written bytes were.
async fn answer(head: ResponseHeader, chunks: &[Bytes]) -> (Vec<u8>, Vec<Range<usize>>) {
    let (mut client, server) = tokio::io::duplex(4 * 1024 * 1024);
    let stream = Recording::new(server);
    let writes = stream.writes.clone();
    client
        .write_all(b"GET /download HTTP/1.1\r\nHost: app.example\r\n\r\n")
        .await
        .unwrap();
    let mut session = ServerSession::new_http1(Box::new(stream));
    assert!(session.read_request().await.unwrap());
    let mut tasks = vec![HttpTask::Header(Box::new(head), false)];
    let last = chunks.len() - 1;
    for (i, c) in chunks.iter().enumerate() {
        tasks.push(HttpTask::Body(Some(c.clone()), i == last));
    }
    let ended = session.response_duplex_vec(tasks).await.unwrap();
    assert!(ended, "the batch ended the answer");
    drop(session);
    let mut received = Vec::new();
    client.read_to_end(&mut received).await.unwrap();
    let writes = writes.lock().unwrap().clone();
    (received, writes)
}

/// Whether some write's bytes came from inside `c`'s own memory.
fn written_in_place(c: &Bytes, writes: &[Range<usize>]) -> bool {
    let own = c.as_ptr() as usize..c.as_ptr() as usize + c.len();
    writes
        .iter()
        .any(|w| w.start >= own.start && w.end <= own.end && !w.is_empty())
}

/// Whether `c`'s bytes are where a read put them (not a copy of them).
fn where_read(c: &Bytes, reads: &[Range<usize>]) -> bool {
    let at = c.as_ptr() as usize;
    reads
        .iter()
        .any(|r| at >= r.start && at + c.len() <= r.end && !c.is_empty())
}

/// The app's side: pingora's HTTP/1 client sends a GET over a recording stream, and the app
/// answers `head` then `body` (in one write). Returns every piece `read_body_bytes` handed out
/// and where the client's reads put bytes.
async fn read_answer(head: &[u8], body: &[u8]) -> (Vec<Bytes>, Vec<Range<usize>>) {
    use pingora::http::RequestHeader;
    use pingora::protocols::http::v1::client::HttpSession;
    let (client_end, mut app) = tokio::io::duplex(4 * 1024 * 1024);
    let stream = Recording::new(client_end);
    let reads = stream.reads.clone();
    let mut session = HttpSession::new(Box::new(stream));
    let mut req = RequestHeader::build("GET", b"/download", None).unwrap();
    req.insert_header("Host", "app.example").unwrap();
    session.write_request_header(Box::new(req)).await.unwrap();
    let mut asked = [0u8; 1024];
    let _ = app.read(&mut asked).await.unwrap();
    app.write_all(head).await.unwrap();
    app.write_all(body).await.unwrap();
    drop(app);
    session.read_response().await.unwrap();
    let mut pieces = Vec::new();
    while let Some(piece) = session.read_body_bytes().await.unwrap() {
        pieces.push(piece);
    }
    let reads = reads.lock().unwrap().clone();
    (pieces, reads)
}

fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i % 253) as u8).collect()
}

#[tokio::test]
async fn a_large_answer_with_a_length_is_handed_on_in_the_buffers_it_was_read_into() {
    let body = pattern(300 * 1024);
    let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", body.len());
    let (pieces, reads) = read_answer(head.as_bytes(), &body).await;
    assert_eq!(pieces.concat(), body, "every byte, in order");
    // Pieces of 32 KiB or more are the read buffers themselves; smaller ones are copies, so
    // that they do not each keep a 64 KiB buffer alive.
    let large: Vec<_> = pieces.iter().filter(|p| p.len() >= 32 * 1024).collect();
    assert!(
        large.len() >= 4,
        "{:?}",
        pieces.iter().map(Bytes::len).collect::<Vec<_>>()
    );
    for piece in &large {
        assert!(
            where_read(piece, &reads),
            "a {} byte piece was copied",
            piece.len()
        );
    }
    for piece in pieces.iter().filter(|p| p.len() < 32 * 1024) {
        assert!(!where_read(piece, &reads));
    }
}

#[tokio::test]
async fn a_large_answer_read_until_close_is_handed_on_in_the_buffers_it_was_read_into() {
    let body = pattern(200 * 1024);
    let (pieces, reads) = read_answer(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n", &body).await;
    assert_eq!(pieces.concat(), body);
    assert!(pieces
        .iter()
        .filter(|p| p.len() >= 32 * 1024)
        .all(|p| where_read(p, &reads)));
    assert!(pieces.iter().any(|p| p.len() >= 32 * 1024));
}

#[tokio::test]
async fn a_chunked_answer_is_copied_out_as_before_and_arrives_whole() {
    let body = pattern(150 * 1024);
    let mut wire = Vec::new();
    for piece in body.chunks(40 * 1024) {
        wire.extend_from_slice(format!("{:X}\r\n", piece.len()).as_bytes());
        wire.extend_from_slice(piece);
        wire.extend_from_slice(b"\r\n");
    }
    wire.extend_from_slice(b"0\r\n\r\n");
    let (pieces, reads) = read_answer(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
        &wire,
    )
    .await;
    assert_eq!(pieces.concat(), body);
    // The chunked reader keeps parsing state in its buffer: its pieces are copies.
    assert!(pieces.iter().all(|p| !where_read(p, &reads)));
}

/// The body part of an HTTP/1 answer (after the head's blank line).
fn body_of(received: &[u8]) -> &[u8] {
    let at = received
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a head");
    &received[at + 4..]
}

/// Small and large chunks mixed, as a batch from the app brings them: a small one first (the
/// rest of the app's first read), two of 64 KiB (pingora's body reads), small ones between.
fn mixed() -> Vec<Bytes> {
    vec![
        chunk(1, 700),
        chunk(2, 64 * 1024),
        chunk(3, 10),
        chunk(4, 5),
        chunk(5, 64 * 1024),
        chunk(6, 16 * 1024),
        chunk(7, 300),
    ]
}

#[tokio::test]
async fn a_large_answer_with_a_length_is_written_from_its_chunks_own_memory() {
    let chunks = mixed();
    let total: usize = chunks.iter().map(Bytes::len).sum();
    let mut head = ResponseHeader::build(200, None).unwrap();
    head.insert_header("Content-Length", total.to_string())
        .unwrap();
    let (received, writes) = answer(head, &chunks).await;

    let expected: Vec<u8> = chunks.iter().flat_map(|c| c.iter().copied()).collect();
    assert!(received.starts_with(b"HTTP/1.1 200 OK\r\n"));
    assert_eq!(
        body_of(&received),
        expected.as_slice(),
        "every byte, in order"
    );
    for large in [&chunks[1], &chunks[4], &chunks[5]] {
        assert!(
            written_in_place(large, &writes),
            "a {} byte chunk was copied before it was written",
            large.len()
        );
    }
    // The small ones are still joined: never written from their own memory.
    for small in [&chunks[0], &chunks[2], &chunks[3], &chunks[6]] {
        assert!(!written_in_place(small, &writes));
    }
}

#[tokio::test]
async fn a_large_chunked_answer_is_framed_as_before_and_written_from_its_chunks_own_memory() {
    let chunks = mixed();
    let mut head = ResponseHeader::build(200, None).unwrap();
    head.insert_header("Transfer-Encoding", "chunked").unwrap();
    let (received, writes) = answer(head, &chunks).await;

    // Decode the chunked body: the same bytes, whatever the chunk boundaries, then the last
    // chunk and nothing after it.
    let mut body = body_of(&received);
    let mut decoded = Vec::new();
    loop {
        let line_end = body.windows(2).position(|w| w == b"\r\n").unwrap();
        let size =
            usize::from_str_radix(std::str::from_utf8(&body[..line_end]).unwrap(), 16).unwrap();
        body = &body[line_end + 2..];
        if size == 0 {
            assert_eq!(body, b"\r\n", "the last chunk ends the answer");
            break;
        }
        decoded.extend_from_slice(&body[..size]);
        assert_eq!(&body[size..size + 2], b"\r\n");
        body = &body[size + 2..];
    }
    let expected: Vec<u8> = chunks.iter().flat_map(|c| c.iter().copied()).collect();
    assert_eq!(decoded, expected, "every byte, in order");
    for large in [&chunks[1], &chunks[4], &chunks[5]] {
        assert!(written_in_place(large, &writes));
    }
}

#[tokio::test]
async fn an_answer_of_small_chunks_is_still_one_write() {
    let chunks: Vec<Bytes> = (0..8).map(|i| chunk(i, 1000)).collect();
    let mut head = ResponseHeader::build(200, None).unwrap();
    head.insert_header("Content-Length", "8000").unwrap();
    let (received, writes) = answer(head, &chunks).await;
    let expected: Vec<u8> = chunks.iter().flat_map(|c| c.iter().copied()).collect();
    assert_eq!(body_of(&received), expected.as_slice());
    // The head, then the eight chunks joined: one write of 8,000 bytes.
    assert!(
        writes.iter().any(|w| w.len() == 8000),
        "the small chunks were not joined: {writes:?}"
    );
    assert!(chunks.iter().all(|c| !written_in_place(c, &writes)));
}
