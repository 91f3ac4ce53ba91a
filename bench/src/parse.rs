//! The lean frame parser: classifies a server text frame and pulls out the few numbers the
//! generator needs by byte search, without building a JSON tree.
//!
//! It relies on two properties of the wire format: the envelope's keys come in a fixed order
//! (`churchId`, `conversationId`, `action`, `data`, PROTOCOL.md §3.1) so `"action":"` is found
//! within the first few dozen bytes, and the generator's own `content` strings use only
//! `[a-z0-9|]`, so they appear verbatim (unescaped) in the frame.
use std::sync::LazyLock;

use memchr::memmem::{Finder, FinderRev};

/// Prefix of every content string the generator publishes.
pub const CONTENT_TAG: &str = "lg|";

static ACTION: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"\"action\":\""));
static CONTENT: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"\"content\":\"lg|"));
static TOTAL: LazyLock<FinderRev<'static>> = LazyLock::new(|| FinderRev::new(b"\"totalViewers\":"));
static DATA_STR: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"\"data\":\""));

/// What a server text frame is, as far as the generator cares.
#[derive(Debug, PartialEq, Eq)]
pub enum Frame<'a> {
    /// A `message` frame carrying a generator content string.
    Message {
        room: u64,
        seq: u64,
        t_ns: u64,
    },
    /// A `message` frame whose content is not ours, or is malformed.
    ForeignMessage,
    /// An `attendance` frame and its `totalViewers` (None if it could not be read).
    Attendance(Option<u32>),
    BlockedIp,
    /// The `socketId` reply and its id.
    SocketId(&'a [u8]),
    Other,
}

/// Classifies one text frame payload.
pub fn classify(p: &[u8]) -> Frame<'_> {
    let Some(a) = ACTION.find(p) else {
        return Frame::Other;
    };
    let rest = &p[a + 10..];
    if rest.starts_with(b"message\"") {
        let from = a + 10 + 8;
        match CONTENT.find(&p[from..]) {
            Some(c) => parse_content(&p[from + c + 14..]).unwrap_or(Frame::ForeignMessage),
            None => Frame::ForeignMessage,
        }
    } else if rest.starts_with(b"attendance\"") {
        Frame::Attendance(
            TOTAL
                .rfind(p)
                .and_then(|t| leading_number(&p[t + 15..]).map(|(n, _)| n))
                .and_then(|n| u32::try_from(n).ok()),
        )
    } else if rest.starts_with(b"blockedIp\"") {
        Frame::BlockedIp
    } else if rest.starts_with(b"socketId\"") {
        match DATA_STR.find(p) {
            Some(d) => {
                let s = &p[d + 8..];
                match memchr::memchr(b'"', s) {
                    Some(end) => Frame::SocketId(&s[..end]),
                    None => Frame::Other,
                }
            }
            None => Frame::Other,
        }
    } else {
        Frame::Other
    }
}

/// `<room>|<seq>|<t_ns>|…` (the text after `lg|`).
fn parse_content(s: &[u8]) -> Option<Frame<'static>> {
    let (room, n) = leading_number(s)?;
    let s = s.get(n..)?.strip_prefix(b"|")?;
    let (seq, n) = leading_number(s)?;
    let s = s.get(n..)?.strip_prefix(b"|")?;
    let (t_ns, n) = leading_number(s)?;
    if s.get(n) != Some(&b'|') {
        return None;
    }
    Some(Frame::Message { room, seq, t_ns })
}

/// The decimal number at the start of `s` and how many bytes it took (at most 19 digits).
fn leading_number(s: &[u8]) -> Option<(u64, usize)> {
    let mut v: u64 = 0;
    let mut n = 0;
    for &b in s.iter().take(19) {
        if !b.is_ascii_digit() {
            break;
        }
        v = v * 10 + u64::from(b - b'0');
        n += 1;
    }
    (n > 0).then_some((v, n))
}

/// The content string of one published message: `lg|<room>|<seq>|<t_ns>|` padded with `x` up
/// to `payload` bytes (never truncated below the header).
pub fn content(room: usize, seq: u64, t_ns: u64, payload: usize) -> String {
    use std::fmt::Write;
    let mut s = String::with_capacity(payload.max(48));
    let _ = write!(s, "{CONTENT_TAG}{room}|{seq}|{t_ns}|");
    while s.len() < payload {
        s.push('x');
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_message_frame() {
        let c = content(3, 41, 123_456_789, 64);
        assert_eq!(c.len(), 64);
        let f = format!(
            r#"{{"churchId":"C","conversationId":"CONV0000001","action":"message","data":{{"id":"MSG00000001","churchId":"C","conversationId":"CONV0000001","personId":null,"displayName":"lg","timeSent":"2026-05-04T12:00:00.000Z","timeUpdated":null,"messageType":"comment","content":"{c}"}}}}"#
        );
        assert_eq!(
            classify(f.as_bytes()),
            Frame::Message {
                room: 3,
                seq: 41,
                t_ns: 123_456_789
            }
        );
    }

    #[test]
    fn floor_message_frame_sorted_keys() {
        let f = r#"{"action":"message","churchId":"C","conversationId":"R","data":{"churchId":"C","content":"lg|0|7|99|","conversationId":"R","displayName":"lg","id":"x","personId":null}}"#;
        assert_eq!(
            classify(f.as_bytes()),
            Frame::Message {
                room: 0,
                seq: 7,
                t_ns: 99
            }
        );
    }

    #[test]
    fn foreign_and_malformed_messages() {
        let f = r#"{"churchId":"C","conversationId":"R","action":"message","data":{"content":"hello"}}"#;
        assert_eq!(classify(f.as_bytes()), Frame::ForeignMessage);
        let f = r#"{"churchId":"C","conversationId":"R","action":"message","data":{"content":"lg|1|x|2|"}}"#;
        assert_eq!(classify(f.as_bytes()), Frame::ForeignMessage);
        let f = r#"{"churchId":"C","conversationId":"R","action":"message","data":{"content":"lg|1|2|3"}}"#;
        assert_eq!(classify(f.as_bytes()), Frame::ForeignMessage);
    }

    #[test]
    fn attendance_blocked_ip_socket_id() {
        let f = r#"{"churchId":"C","conversationId":"R","action":"attendance","data":{"conversationId":"R","viewers":[{"id":"a","displayName":"totalViewers"}],"totalViewers":5000}}"#;
        assert_eq!(classify(f.as_bytes()), Frame::Attendance(Some(5000)));
        let f = r#"{"churchId":"C","conversationId":"R","action":"blockedIp","data":[]}"#;
        assert_eq!(classify(f.as_bytes()), Frame::BlockedIp);
        let f = r#"{"churchId":"","conversationId":"","action":"socketId","data":"AbC_-123456"}"#;
        assert_eq!(classify(f.as_bytes()), Frame::SocketId(b"AbC_-123456"));
        assert_eq!(classify(b"{}"), Frame::Other);
    }

    #[test]
    fn short_payload_keeps_header() {
        assert_eq!(content(12, 3, 4, 0), "lg|12|3|4|");
    }
}
