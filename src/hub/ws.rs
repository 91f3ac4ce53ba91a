//! The WebSocket wire: the RFC 6455 handshake, server frame encoding and the per-socket task.
//!
//! We frame server messages ourselves so that a broadcast is encoded once into one `Bytes`
//! (header + payload) and that same allocation is queued to every recipient; tungstenite
//! would re-frame and copy it per socket. Client frames are parsed only as far as the
//! protocol needs: the server never looks at their content (§2.1).
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use bytes::{Buf, BufMut, Bytes, BytesMut};
use sha1::{Digest, Sha1};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::{CloseReason, Hub, SocketHandle};

const WS_GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// `Sec-WebSocket-Accept` for a client's `Sec-WebSocket-Key`.
pub fn accept_key(key: &[u8]) -> String {
    let mut h = Sha1::new();
    h.update(key);
    h.update(WS_GUID.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(h.finalize())
}

fn header(out: &mut BytesMut, opcode: u8, len: usize) {
    out.put_u8(0x80 | opcode);
    if len < 126 {
        out.put_u8(len as u8);
    } else if len <= u16::MAX as usize {
        out.put_u8(126);
        out.put_u16(len as u16);
    } else {
        out.put_u8(127);
        out.put_u64(len as u64);
    }
}

/// One complete, unmasked server text frame.
pub fn text_frame(payload: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(payload.len() + 10);
    header(&mut out, 0x1, payload.len());
    out.extend_from_slice(payload);
    out.freeze()
}

pub fn close_frame(code: u16, reason: &str) -> Bytes {
    let mut out = BytesMut::with_capacity(4 + reason.len());
    header(&mut out, 0x8, 2 + reason.len());
    out.put_u16(code);
    out.extend_from_slice(reason.as_bytes());
    out.freeze()
}

fn control_frame(opcode: u8, payload: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(2 + payload.len());
    header(&mut out, opcode, payload.len());
    out.extend_from_slice(payload);
    out.freeze()
}

pub fn ping_frame() -> Bytes {
    Bytes::from_static(&[0x89, 0x00])
}

/// Close codes this server uses.
pub mod close_code {
    pub const NORMAL: u16 = 1000;
    pub const GOING_AWAY: u16 = 1001;
    pub const PROTOCOL_ERROR: u16 = 1002;
    pub const TOO_BIG: u16 = 1009;
    pub const TRY_AGAIN_LATER: u16 = 1013;
}

/// Why the reading half stopped.
enum ReadEnd {
    /// EOF or an I/O error: the peer is gone.
    Gone,
    /// A close frame from the client, with the code to echo.
    ClientClose(u16),
    /// A frame over the inbound limit (1009) or a protocol violation (1002).
    Violation(u16, &'static str),
}

/// Reads client frames until the socket ends. Any frame proves liveness; every complete
/// data message gets the socket-id reply; pings get pongs. Payloads are never kept.
async fn read_loop<R: AsyncRead + Unpin>(mut rd: R, h: &SocketHandle, max_frame: usize) -> ReadEnd {
    // Starts empty and grows only to the largest frame seen (≤ max_frame + 14), so an idle
    // socket holds no read buffer at all.
    let mut buf = BytesMut::new();
    loop {
        // Parse every complete frame already buffered.
        loop {
            if buf.len() < 2 {
                break;
            }
            let b0 = buf[0];
            let b1 = buf[1];
            let (fin, opcode) = (b0 & 0x80 != 0, b0 & 0x0f);
            if b0 & 0x70 != 0 {
                return ReadEnd::Violation(close_code::PROTOCOL_ERROR, "reserved bits set");
            }
            if b1 & 0x80 == 0 {
                return ReadEnd::Violation(
                    close_code::PROTOCOL_ERROR,
                    "client frames must be masked",
                );
            }
            let (len, mut off) = match b1 & 0x7f {
                126 if buf.len() >= 4 => (u16::from_be_bytes([buf[2], buf[3]]) as u64, 4),
                127 if buf.len() >= 10 => {
                    let mut a = [0u8; 8];
                    a.copy_from_slice(&buf[2..10]);
                    (u64::from_be_bytes(a), 10)
                }
                126 | 127 => break,
                n => (n as u64, 2),
            };
            if len > max_frame as u64 {
                return ReadEnd::Violation(close_code::TOO_BIG, "message too big");
            }
            let len = len as usize;
            if buf.len() < off + 4 + len {
                buf.reserve(off + 4 + len - buf.len());
                break;
            }
            let mask = [buf[off], buf[off + 1], buf[off + 2], buf[off + 3]];
            off += 4;
            h.mark_alive();
            match opcode {
                0x0..=0x2 => {
                    if fin && !h.enqueue(h.socket_id_frame.clone()) {
                        return ReadEnd::Gone;
                    }
                }
                0x8..=0xA if len > 125 || !fin => {
                    return ReadEnd::Violation(close_code::PROTOCOL_ERROR, "bad control frame");
                }
                0x8 => {
                    let code = if len >= 2 {
                        u16::from_be_bytes([buf[off] ^ mask[0], buf[off + 1] ^ mask[1]])
                    } else {
                        close_code::NORMAL
                    };
                    return ReadEnd::ClientClose(code);
                }
                0x9 => {
                    let payload: Vec<u8> = buf[off..off + len]
                        .iter()
                        .enumerate()
                        .map(|(i, b)| b ^ mask[i % 4])
                        .collect();
                    if !h.enqueue(control_frame(0xA, &payload)) {
                        return ReadEnd::Gone;
                    }
                }
                0xA => {}
                _ => return ReadEnd::Violation(close_code::PROTOCOL_ERROR, "unknown opcode"),
            }
            buf.advance(off + len);
        }
        if buf.is_empty() && buf.capacity() > 0 {
            // Give back the buffer of a large frame so idle sockets stay small.
            buf = BytesMut::new();
        }
        match rd.read_buf(&mut buf).await {
            Ok(0) | Err(_) => return ReadEnd::Gone,
            Ok(_) => {}
        }
    }
}

/// The writing half: drains the socket's queue, writing whatever is queued in one write.
struct Writer<W> {
    wr: W,
    /// Bytes taken from the queue but not yet written. Kept outside the write future so a
    /// write interrupted by a close request can still be finished cleanly.
    pending: BytesMut,
}

impl<W: AsyncWrite + Unpin> Writer<W> {
    /// Runs until the hub asks the socket to close (returns the reason) or a write fails.
    async fn run(&mut self, h: &SocketHandle) -> Option<CloseReason> {
        loop {
            if let Some(r) = h.close_reason() {
                return Some(r);
            }
            if self.pending.is_empty() {
                let frames = h.take_queued();
                if frames.is_empty() {
                    // A frame queued after the check leaves a permit: no lost wake-up.
                    h.wake.notified().await;
                    continue;
                }
                h.frames_taken(frames.len());
                for f in &frames {
                    self.pending.extend_from_slice(f);
                }
            }
            tokio::select! {
                r = self.wr.write_buf(&mut self.pending) => {
                    match r {
                        Ok(n) if n > 0 => h.written(n),
                        _ => return None,
                    }
                    if self.pending.is_empty() {
                        // A socket going idle gives its buffer back: most sockets are idle
                        // most of the time, and a retained buffer (an attendance roster is
                        // ~5 KiB) would cost every one of them that much.
                        let idle = h.outbox.lock().is_empty();
                        if idle || self.pending.capacity() > 64 * 1024 {
                            self.pending = BytesMut::new();
                        }
                        if idle && self.wr.flush().await.is_err() {
                            return None;
                        }
                    }
                }
                // New frames or a close request: loop to look at both.
                _ = h.wake.notified() => {}
            }
        }
    }

    /// Finishes the frame in flight (if any), then writes the close frame; bounded in time
    /// because the peer may have stopped reading.
    async fn finish(mut self, close: Bytes, within: Duration) {
        let _ = tokio::time::timeout(within, async {
            while !self.pending.is_empty() {
                if !matches!(self.wr.write_buf(&mut self.pending).await, Ok(n) if n > 0) {
                    return;
                }
            }
            let _ = self.wr.write_all(&close).await;
            let _ = self.wr.flush().await;
            let _ = self.wr.shutdown().await;
        })
        .await;
    }
}

/// Owns one upgraded socket from registration to cleanup. Reading and writing run in one
/// task; whichever ends first ends the socket.
pub async fn run_socket<S>(hub: Arc<Hub>, io: S)
where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let h = hub.register_socket();
    let (rd, wr) = tokio::io::split(io);
    let mut writer = Writer {
        wr,
        pending: BytesMut::new(),
    };
    let max_frame = hub.config.max_inbound_frame;
    let ended = tokio::select! {
        r = read_loop(rd, &h, max_frame) => match r {
            ReadEnd::Gone => None,
            ReadEnd::ClientClose(code) => Some((code_echo(code), "")),
            ReadEnd::Violation(code, why) => Some((code, why)),
        },
        r = writer.run(&h) => match r {
            Some(CloseReason::Evicted) => Some((close_code::TRY_AGAIN_LATER, "slow consumer")),
            Some(CloseReason::Shutdown) => Some((close_code::GOING_AWAY, "server shutting down")),
            Some(CloseReason::Terminated) | None => None,
        },
    };
    let reason = match ended {
        Some((close_code::TRY_AGAIN_LATER, _)) => CloseReason::Evicted,
        Some((close_code::GOING_AWAY, _)) => CloseReason::Shutdown,
        _ => CloseReason::Terminated,
    };
    h.request_close(reason);
    let cleanup = hub.socket_ended(&h);
    match ended {
        Some((code, why)) => {
            // An evicted peer gets longer: it is slow by definition, and a clean 1013 tells
            // it why it was dropped.
            let within = if code == close_code::TRY_AGAIN_LATER {
                5
            } else {
                1
            };
            let finish = writer.finish(close_frame(code, why), Duration::from_secs(within));
            tokio::join!(cleanup, finish);
        }
        None => cleanup.await,
    }
}

/// A client's close code is echoed unless it is one that must not appear on the wire.
fn code_echo(code: u16) -> u16 {
    match code {
        1005 | 1006 | 1015 | 0..=999 => close_code::NORMAL,
        c => c,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc6455_accept_key() {
        assert_eq!(
            accept_key(b"dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[test]
    fn frame_lengths() {
        assert_eq!(&text_frame(b"hi")[..], &[0x81, 2, b'h', b'i']);
        let f = text_frame(&[b'x'; 300]);
        assert_eq!(&f[..4], &[0x81, 126, 1, 44]);
        let f = text_frame(&vec![b'x'; 70_000]);
        assert_eq!(f[1], 127);
        assert_eq!(
            &close_frame(1013, "slow consumer")[..4],
            &[0x88, 15, 0x03, 0xF5]
        );
    }
}
