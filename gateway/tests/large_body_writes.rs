//! A large chunk of an app's answer is written to the client from where it lies, not copied
//! into a buffer first (the pingora-core patch of vendor/large-body-writes.patch.md).
//!
//! pingora-proxy hands the client's side the app's answer in batches of tasks (the head and
//! the body chunks read meanwhile). pingora's HTTP/1 server copied every body chunk of a batch
//! into one buffer and wrote that: for a 1 MiB answer over TLS, that copy and the buffer's
//! growth were 11% of the gateway's CPU, where TLS copies each byte into its records anyway.
//! Patched, a chunk of 16 KiB or more is written as it is, after whatever smaller chunks came
//! before it. The tests write a batch through an HTTP/1 session whose stream records where each
//! write's bytes were in memory, and check that the client gets every byte, in order, framed as
//! before (content-length and chunked), and that the large chunks' bytes were written from their
//! own memory.

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

/// The server's end of an in-memory pipe that records the memory each write's bytes came from.
#[derive(Debug)]
struct Recording {
    inner: DuplexStream,
    writes: Arc<Mutex<Vec<Range<usize>>>>,
}

impl AsyncRead for Recording {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
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
    let writes = Arc::new(Mutex::new(Vec::new()));
    let stream = Recording {
        inner: server,
        writes: writes.clone(),
    };
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
