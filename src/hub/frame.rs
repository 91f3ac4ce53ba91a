//! Server frames and the handshake key: pure functions, no I/O.
//!
//! We frame server messages ourselves so that a broadcast is encoded once into one `Bytes`
//! (header + payload) and that same allocation is queued to every recipient; tungstenite
//! would re-frame and copy it per socket.
use base64::Engine;
use bytes::{BufMut, Bytes, BytesMut};
use sha1::{Digest, Sha1};

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

/// The same envelope with its position (§5.6): `"seq":N` as a fifth key, after `data`.
/// Built from the framed envelope, once per broadcast, never per socket.
pub fn with_seq(frame: &[u8], seq: u64) -> Bytes {
    let payload = server_frame_payload(frame);
    let body = payload.strip_suffix(b"}").unwrap_or(payload);
    let mut json = Vec::with_capacity(body.len() + 28);
    json.extend_from_slice(body);
    json.extend_from_slice(b",\"seq\":");
    json.extend_from_slice(seq.to_string().as_bytes());
    json.push(b'}');
    text_frame(&json)
}

/// The payload of a frame this server framed (unmasked, so the header is 2, 4 or 10 bytes).
pub fn server_frame_payload(frame: &[u8]) -> &[u8] {
    let header = match frame.get(1).map(|b| b & 0x7f) {
        Some(126) => 4,
        Some(127) => 10,
        Some(_) => 2,
        None => return &[],
    };
    frame.get(header..).unwrap_or_default()
}

pub fn close_frame(code: u16, reason: &str) -> Bytes {
    let mut out = BytesMut::with_capacity(4 + reason.len());
    header(&mut out, 0x8, 2 + reason.len());
    out.put_u16(code);
    out.extend_from_slice(reason.as_bytes());
    out.freeze()
}

pub(crate) fn control_frame(opcode: u8, payload: &[u8]) -> Bytes {
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
    pub const INVALID_PAYLOAD: u16 = 1007;
    pub const TOO_BIG: u16 = 1009;
    pub const TRY_AGAIN_LATER: u16 = 1013;
}

/// Whether a client may send this close code (RFC 6455 §7.4): the codes of §7.4.1 that are
/// not reserved for local use, the ones IANA registered since (1012–1014: we send 1013
/// ourselves, so a client echoing it must be accepted), and 3000–4999. Everything else,
/// 1004–1006, 1015 and the unassigned 1016–2999 among them, is a protocol error (Autobahn
/// 7.9.x).
pub fn client_may_send(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999)
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
