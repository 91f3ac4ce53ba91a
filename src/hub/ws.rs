//! The WebSocket wire: the RFC 6455 handshake, server frame encoding and the per-socket task
//! (reads, keepalive, close; writes only when the flusher hands a full socket over).
//!
//! We frame server messages ourselves so that a broadcast is encoded once into one `Bytes`
//! (header + payload) and that same allocation is queued to every recipient; tungstenite
//! would re-frame and copy it per socket. Client frames are parsed only as far as the
//! protocol needs: the server never looks at their content (§2.1).
use std::net::Shutdown;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use bytes::{Buf, BufMut, Bytes, BytesMut};
use sha1::{Digest, Sha1};
use socket2::SockRef;
use tokio::io::Interest;
use tokio::net::TcpStream;

use super::fanout::Drain;
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

/// Why a socket's task ends.
enum End {
    /// EOF or an I/O error: the peer is gone.
    Gone,
    /// A close frame from the client, with the code to echo.
    ClientClose(u16),
    /// A frame over the inbound limit (1009) or a protocol violation (1002).
    Violation(u16, &'static str),
    /// The hub asked the socket to close.
    Closed(CloseReason),
}

/// Parses every complete client frame in `buf`, consuming it. Any frame proves liveness;
/// every complete data message gets the socket-id reply; pings get pongs. Payloads are
/// never kept.
fn parse_frames(buf: &mut BytesMut, h: &Arc<SocketHandle>, max_frame: usize) -> Result<(), End> {
    loop {
        if buf.len() < 2 {
            break;
        }
        let b0 = buf[0];
        let b1 = buf[1];
        let (fin, opcode) = (b0 & 0x80 != 0, b0 & 0x0f);
        if b0 & 0x70 != 0 {
            return Err(End::Violation(
                close_code::PROTOCOL_ERROR,
                "reserved bits set",
            ));
        }
        if b1 & 0x80 == 0 {
            return Err(End::Violation(
                close_code::PROTOCOL_ERROR,
                "client frames must be masked",
            ));
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
            return Err(End::Violation(close_code::TOO_BIG, "message too big"));
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
                    return Err(End::Gone);
                }
            }
            0x8..=0xA if len > 125 || !fin => {
                return Err(End::Violation(
                    close_code::PROTOCOL_ERROR,
                    "bad control frame",
                ));
            }
            0x8 => {
                let code = if len >= 2 {
                    u16::from_be_bytes([buf[off] ^ mask[0], buf[off + 1] ^ mask[1]])
                } else {
                    close_code::NORMAL
                };
                return Err(End::ClientClose(code));
            }
            0x9 => {
                let payload: Vec<u8> = buf[off..off + len]
                    .iter()
                    .enumerate()
                    .map(|(i, b)| b ^ mask[i % 4])
                    .collect();
                if !h.enqueue(control_frame(0xA, &payload)) {
                    return Err(End::Gone);
                }
            }
            0xA => {}
            _ => {
                return Err(End::Violation(close_code::PROTOCOL_ERROR, "unknown opcode"));
            }
        }
        buf.advance(off + len);
    }
    if buf.is_empty() && buf.capacity() > 0 {
        // Give back the buffer of a large frame so idle sockets stay small.
        *buf = BytesMut::new();
    }
    Ok(())
}

/// One upgraded socket's task, on the socket runtime: it reads and parses client frames
/// straight off the socket (readiness from the socket runtime's own reactor), and writes
/// only when its flusher handed writing over (the socket was full) or when it closes.
struct Conn {
    /// Client bytes not yet parsed. Starts with what arrived behind the upgrade request;
    /// grows only to the largest frame seen (≤ max frame + 14) and is released when empty,
    /// so an idle socket holds no read buffer.
    rbuf: BytesMut,
}

impl Conn {
    /// Runs until the peer goes, breaks the protocol, closes, or the hub closes the socket.
    async fn serve(&mut self, h: &Arc<SocketHandle>, max_frame: usize) -> End {
        loop {
            if let Err(end) = parse_frames(&mut self.rbuf, h, max_frame) {
                return end;
            }
            if let Some(r) = h.close_reason() {
                return End::Closed(r);
            }
            let mut interest = Interest::READABLE;
            if h.task_writes() {
                match h.drain_as_task() {
                    Drain::Idle => {}
                    Drain::Full => interest = Interest::READABLE | Interest::WRITABLE,
                    Drain::Failed => return End::Gone,
                }
            }
            tokio::select! {
                biased;
                ready = h.stream.ready(interest) => match ready {
                    Ok(r) if r.is_readable() || r.is_read_closed() => {
                        if let Err(end) = self.read_some(&h.stream) {
                            return end;
                        }
                    }
                    Ok(_) => {}
                    Err(_) => return End::Gone,
                },
                // A close request, or writing handed over. A notification sent while we
                // were busy leaves a permit, so none is lost.
                _ = h.wake.notified() => {}
            }
        }
    }

    /// Reads what the socket has (until it would block) and parses it on the next turn.
    fn read_some(&mut self, stream: &TcpStream) -> Result<(), End> {
        loop {
            match stream.try_read_buf(&mut self.rbuf) {
                Ok(0) => return Err(End::Gone),
                Ok(_) => {
                    if self.rbuf.len() >= 16 * 1024 {
                        // Parse before reading more; the frame limit bounds the buffer.
                        return Ok(());
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(()),
                Err(_) => return Err(End::Gone),
            }
        }
    }
}

/// Writes all of `buf`, waiting for the socket to drain as needed.
async fn write_all(stream: &TcpStream, mut buf: &[u8]) -> std::io::Result<()> {
    while !buf.is_empty() {
        stream.writable().await?;
        match stream.try_write(buf) {
            Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
            Ok(n) => buf = &buf[n..],
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Takes writing over from the flusher, finishes a partly written frame (if any), then
/// writes the close frame; bounded in time because the peer may have stopped reading.
async fn finish(h: &SocketHandle, close: Bytes, within: Duration) {
    let partial = h.take_over();
    let _ = tokio::time::timeout(within, async {
        if let Some(front) = partial
            && write_all(&h.stream, &front).await.is_err()
        {
            return;
        }
        if write_all(&h.stream, &close).await.is_ok() {
            let _ = SockRef::from(&h.stream).shutdown(Shutdown::Write);
        }
    })
    .await;
}

/// Owns one upgraded socket from registration to cleanup. `early` holds any client bytes
/// that arrived behind the upgrade request.
pub async fn run_socket(hub: Arc<Hub>, stream: TcpStream, early: Bytes) {
    let h = hub.register_socket(stream);
    // Copied, then dropped: `early` is a slice of the HTTP server's read buffer (8 KiB or
    // more), which it would otherwise keep alive for the socket's whole life.
    let rbuf = BytesMut::from(&early[..]);
    drop(early);
    let mut conn = Conn { rbuf };
    let ended = match conn.serve(&h, hub.config.max_inbound_frame).await {
        End::Gone | End::Closed(CloseReason::Terminated) => None,
        End::ClientClose(code) => Some((code_echo(code), "")),
        End::Violation(code, why) => Some((code, why)),
        End::Closed(CloseReason::Evicted) => Some((close_code::TRY_AGAIN_LATER, "slow consumer")),
        End::Closed(CloseReason::Shutdown) => {
            Some((close_code::GOING_AWAY, "server shutting down"))
        }
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
            let finish = finish(&h, close_frame(code, why), Duration::from_secs(within));
            tokio::join!(cleanup, finish);
        }
        None => {
            h.take_over();
            cleanup.await;
        }
    }
    // The handle (and with it the descriptor) may outlive this task for a moment in a
    // flush queue or a request's hands; the peer learns now that the socket is gone.
    let _ = SockRef::from(&h.stream).shutdown(Shutdown::Both);
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
