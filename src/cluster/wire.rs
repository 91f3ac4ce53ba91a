//! What goes over the broker: channel names, and the framing of a broker message (its kind,
//! the publishing node, the body).
use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::hub::Audience;

pub(super) const KIND_FRAME: u8 = 1;
pub(super) const KIND_ROOM_CHANGED: u8 = 2;
/// A held frame: its number (u64, big-endian), then the frame.
pub(super) const KIND_HELD: u8 = 3;
/// The release, withdrawal or extension of a held frame: its number.
pub(super) const KIND_RELEASE: u8 = 4;
pub(super) const KIND_WITHDRAW: u8 = 5;
pub(super) const KIND_EXTEND: u8 = 6;

/// A broker channel name part: NATS subjects split on `.` and reserve `*`, `>` and white
/// space, so everything but `[A-Za-z0-9_-]` is written as `~` and two hex digits.
fn escape(out: &mut String, s: &str) {
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b == b'_' || b == b'-' {
            out.push(b as char);
        } else {
            out.push_str(&format!("~{b:02x}"));
        }
    }
}

pub(super) fn channel(prefix: &str, audience: &Audience) -> String {
    let (kind, church, name) = match audience {
        Audience::Room { church, room } => ("r", church, room),
        Audience::Person { church, person } => ("p", church, person),
    };
    let mut c = String::with_capacity(prefix.len() + church.len() + name.len() + 8);
    c.push_str(prefix);
    c.push('.');
    c.push_str(kind);
    c.push('.');
    escape(&mut c, church);
    c.push('.');
    escape(&mut c, name);
    c
}

pub(super) fn message(kind: u8, origin: &str, body: &[u8]) -> Bytes {
    let mut m = BytesMut::with_capacity(2 + origin.len() + body.len());
    m.put_u8(kind);
    m.put_u8(origin.len() as u8);
    m.put_slice(origin.as_bytes());
    m.put_slice(body);
    m.freeze()
}

/// `(kind, origin, body)` of a broker message.
pub(super) fn parse(m: &Bytes) -> Option<(u8, &str, Bytes)> {
    let kind = *m.first()?;
    let len = *m.get(1)? as usize;
    let origin = std::str::from_utf8(m.get(2..2 + len)?).ok()?;
    Some((kind, origin, m.slice(2 + len..)))
}

/// A held frame's number, and what follows it in the message body.
pub(super) fn split_id(mut body: Bytes) -> Option<(u64, Bytes)> {
    (body.len() >= 8).then(|| (body.get_u64(), body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channels_are_safe_subjects() {
        let c = channel("p1", &Audience::room("Ch 1", "a.b*>c"));
        assert_eq!(c, "p1.r.Ch~201.a~2eb~2a~3ec");
        let c = channel("p1", &Audience::person("C", "P-1_x"));
        assert_eq!(c, "p1.p.C.P-1_x");
    }

    #[test]
    fn messages_round_trip() {
        let m = message(KIND_FRAME, "NODE0000001", b"\x81\x02hi");
        let (kind, origin, body) = parse(&m).unwrap();
        assert_eq!(
            (kind, origin, &body[..]),
            (KIND_FRAME, "NODE0000001", &b"\x81\x02hi"[..])
        );
        assert!(parse(&Bytes::from_static(&[1, 200, b'x'])).is_none());
    }
}
