//! A passive reader of the WebSocket frames (RFC 6455 §5.2) that pass through the gateway (the
//! app's WebSockets through the tunnel's pump, [`crate::seam::pump`]; the realtime services'
//! `/ws` and Socket.IO on connections handed out of pingora, [`crate::handoff::Conn`]), so the
//! access log can say how a session went: messages each
//! way and the close code and reason, and who closed. It only reads: bytes are forwarded as
//! they are, whatever this makes of them; a stream that stops looking like WebSocket frames is
//! no longer read.

/// How a WebSocket session ended: the first Close frame seen, from either side.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Close {
    /// The status code (none when the frame had no payload).
    pub code: Option<u16>,
    pub reason: String,
    /// Sent by the client (`true`) or by the server.
    pub by_client: bool,
}

/// A session's frames, both ways.
#[derive(Debug, Default, Clone)]
pub struct Frames {
    pub from_client: FrameCounter,
    pub to_client: FrameCounter,
    /// The first Close frame of the session.
    pub close: Option<Close>,
}

impl Frames {
    /// Bytes the client sent.
    pub fn client_sent(&mut self, bytes: &[u8]) {
        self.from_client.feed(bytes);
        self.note_close(true);
    }

    /// Bytes sent to the client.
    pub fn sent_to_client(&mut self, bytes: &[u8]) {
        self.to_client.feed(bytes);
        self.note_close(false);
    }

    fn note_close(&mut self, by_client: bool) {
        if self.close.is_some() {
            return;
        }
        let side = if by_client {
            &self.from_client
        } else {
            &self.to_client
        };
        if let Some((code, reason)) = &side.close {
            self.close = Some(Close {
                code: *code,
                reason: reason.clone(),
                by_client,
            });
        }
    }
}

/// Most bytes of a Close frame's payload (RFC 6455 §5.5: control frames carry at most 125).
const MAX_CONTROL_PAYLOAD: usize = 125;
/// A frame header is at most 14 bytes: 2, 8 of extended length, 4 of mask.
const MAX_HEADER: usize = 14;

const OP_CONTINUATION: u8 = 0x0;
const OP_TEXT: u8 = 0x1;
const OP_BINARY: u8 = 0x2;
const OP_CLOSE: u8 = 0x8;

/// The frames of one direction, read across any split of the bytes.
#[derive(Debug, Default, Clone)]
pub struct FrameCounter {
    /// Complete data messages (a fragmented one counts once, at its final frame).
    pub messages: u64,
    /// The first Close frame's code and reason.
    pub close: Option<(Option<u16>, String)>,
    header: [u8; MAX_HEADER],
    header_len: usize,
    /// In a frame's payload, with this much left.
    payload_left: Option<u64>,
    opcode: u8,
    fin: bool,
    mask: Option<[u8; 4]>,
    /// The Close frame's payload so far (unmasked).
    control: Vec<u8>,
    /// Not WebSocket frames (a 64-bit length with its top bit set): stop reading.
    lost: bool,
}

/// How long the header that starts with `h` is, once its first two bytes are known.
fn header_len(h: &[u8]) -> usize {
    if h.len() < 2 {
        return 2;
    }
    let ext = match h[1] & 0x7f {
        126 => 2,
        127 => 8,
        _ => 0,
    };
    let mask = if h[1] & 0x80 != 0 { 4 } else { 0 };
    2 + ext + mask
}

impl FrameCounter {
    /// Read the next bytes of this direction.
    pub fn feed(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() && !self.lost {
            match self.payload_left {
                None => {
                    let want = header_len(&self.header[..self.header_len]);
                    let take = (want - self.header_len).min(bytes.len());
                    self.header[self.header_len..self.header_len + take]
                        .copy_from_slice(&bytes[..take]);
                    self.header_len += take;
                    bytes = &bytes[take..];
                    if self.header_len == header_len(&self.header[..self.header_len]) {
                        self.start_frame();
                    }
                }
                Some(left) => {
                    let take = usize::try_from(left).unwrap_or(usize::MAX).min(bytes.len());
                    if self.opcode == OP_CLOSE {
                        for &b in &bytes[..take] {
                            if self.control.len() < MAX_CONTROL_PAYLOAD {
                                let i = self.control.len() % 4;
                                let key = self.mask.map_or(0, |m| m[i]);
                                self.control.push(b ^ key);
                            }
                        }
                    }
                    bytes = &bytes[take..];
                    let left = left - take as u64;
                    self.payload_left = Some(left);
                    if left == 0 {
                        self.end_frame();
                    }
                }
            }
        }
    }

    /// The header is complete: read it and go to the payload.
    fn start_frame(&mut self) {
        let h = &self.header[..self.header_len];
        self.fin = h[0] & 0x80 != 0;
        self.opcode = h[0] & 0x0f;
        let (len, rest) = match h[1] & 0x7f {
            126 => (u64::from(u16::from_be_bytes([h[2], h[3]])), &h[4..]),
            127 => {
                let mut b = [0u8; 8];
                b.copy_from_slice(&h[2..10]);
                (u64::from_be_bytes(b), &h[10..])
            }
            n => (u64::from(n), &h[2..]),
        };
        if len >> 63 != 0 {
            self.lost = true;
            return;
        }
        self.mask = (h[1] & 0x80 != 0).then(|| [rest[0], rest[1], rest[2], rest[3]]);
        self.header_len = 0;
        self.control.clear();
        self.payload_left = Some(len);
        if len == 0 {
            self.end_frame();
        }
    }

    fn end_frame(&mut self) {
        self.payload_left = None;
        match self.opcode {
            OP_CONTINUATION | OP_TEXT | OP_BINARY if self.fin => self.messages += 1,
            OP_CLOSE if self.close.is_none() => {
                let p = &self.control;
                self.close = Some(match p.len() {
                    0 | 1 => (None, String::new()),
                    _ => (
                        Some(u16::from_be_bytes([p[0], p[1]])),
                        String::from_utf8_lossy(&p[2..]).into_owned(),
                    ),
                });
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A frame as a client (masked) or a server sends it.
    fn frame(fin: bool, opcode: u8, payload: &[u8], mask: Option<[u8; 4]>) -> Vec<u8> {
        let mut out = vec![(u8::from(fin) << 7) | opcode];
        let m = if mask.is_some() { 0x80 } else { 0 };
        match payload.len() {
            n if n < 126 => out.push(m | n as u8),
            n if n < 65536 => {
                out.push(m | 126);
                out.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                out.push(m | 127);
                out.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        match mask {
            Some(k) => {
                out.extend_from_slice(&k);
                out.extend(payload.iter().enumerate().map(|(i, b)| b ^ k[i % 4]));
            }
            None => out.extend_from_slice(payload),
        }
        out
    }

    #[test]
    fn counts_messages_in_any_split_and_reads_a_masked_close() {
        let key = Some([0x37, 0xfa, 0x21, 0x3d]);
        let mut bytes = frame(true, OP_TEXT, b"Hello", key);
        // A fragmented message: one message.
        bytes.extend(frame(false, OP_BINARY, &[1; 200], key));
        bytes.extend(frame(true, OP_CONTINUATION, &[2; 70_000], key));
        // A ping between is not a message.
        bytes.extend(frame(true, 0x9, b"", key));
        let mut close = 1001u16.to_be_bytes().to_vec();
        close.extend_from_slice("going away".as_bytes());
        bytes.extend(frame(true, OP_CLOSE, &close, key));
        for split in [1, 2, 3, 7, 64, 4096, bytes.len()] {
            let mut c = FrameCounter::default();
            for piece in bytes.chunks(split) {
                c.feed(piece);
            }
            assert_eq!(c.messages, 2, "split {split}");
            assert_eq!(
                c.close,
                Some((Some(1001), "going away".to_string())),
                "split {split}"
            );
        }
    }

    #[test]
    fn the_first_close_names_who_closed() {
        let mut f = Frames::default();
        f.sent_to_client(&frame(true, OP_TEXT, b"hi", None));
        f.client_sent(&frame(true, OP_TEXT, b"yo", Some([1, 2, 3, 4])));
        f.sent_to_client(&frame(true, OP_CLOSE, &[0x03, 0xe8], None));
        f.client_sent(&frame(true, OP_CLOSE, &[0x03, 0xe8], Some([9, 9, 9, 9])));
        assert_eq!((f.from_client.messages, f.to_client.messages), (1, 1));
        assert_eq!(
            f.close,
            Some(Close {
                code: Some(1000),
                reason: String::new(),
                by_client: false
            })
        );
        // A Close without a payload has no code.
        let mut c = FrameCounter::default();
        c.feed(&frame(true, OP_CLOSE, b"", None));
        assert_eq!(c.close, Some((None, String::new())));
    }

    #[test]
    fn bytes_that_are_not_frames_stop_the_reading() {
        let mut c = FrameCounter::default();
        c.feed(&[0x82, 0x7f, 0x80, 0, 0, 0, 0, 0, 0, 0]);
        c.feed(&frame(true, OP_TEXT, b"x", None));
        assert_eq!(c.messages, 0);
        assert!(c.close.is_none());
    }
}
