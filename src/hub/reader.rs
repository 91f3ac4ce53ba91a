//! The read side of RFC 6455 for a server: a pure state machine over a byte buffer, no I/O.
//!
//! Client frames: tungstenite decodes each frame header (`FrameHeader::parse`), and
//! `Reader` below applies RFC 6455 §5–§7 to what follows. We do not use tungstenite's
//! `FrameSocket`/`WebSocket` readers: they buffer whole frames and messages in a read
//! buffer of 128 KiB per socket (`READ_BUF_LEN`), i.e. 1.25 GiB for `idle-10k`, where this
//! service keeps no read buffer for an idle socket and 40 bytes of reader state. The server
//! never looks at what a client sends (§2.1), so `Reader` streams payloads: it unmasks and
//! checks text as UTF-8 as bytes arrive (std's `Utf8Error::error_len` tells an invalid
//! sequence from one cut by a fragment or read boundary), counts message size, and drops
//! the bytes. Only an incomplete header or control frame (≤ 139 bytes) is ever left behind.
use std::io::Cursor;

use bytes::{Buf, Bytes, BytesMut};
use tungstenite::protocol::frame::FrameHeader;
use tungstenite::protocol::frame::coding::{Control, Data, OpCode};

use super::frame::{client_may_send, close_code};

/// What the client sent, as far as the server acts on it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Event {
    /// A complete data message, text or binary, however many fragments it came in.
    Message,
    /// A ping; the pong carries this payload (at most 125 bytes).
    Ping(Bytes),
    /// The client's close frame: its code, or `None` for an empty body.
    Close(Option<u16>),
    /// The client broke the protocol: close with this code. The reader now only looks for
    /// the client's close.
    Violation(u16, &'static str),
}

/// The data message in progress.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Msg {
    None,
    Text,
    Binary,
}

/// Longest frame header: 2 bytes, 8 of extended length, 4 of mask.
const MAX_HEADER: usize = 14;

/// Most bytes `Reader::next` leaves in the buffer: an incomplete header, or an incomplete
/// control frame (parsed whole: a masked header of 6 bytes and at most 125 of payload).
pub(crate) const MAX_PENDING: usize = MAX_HEADER + 125;

/// The read side of RFC 6455 §5–§7 for a server, as a pure state machine over a byte
/// buffer: fragmentation, control frames, masking, reserved bits and opcodes, close codes,
/// incremental UTF-8 and the message size limit. About 40 bytes, kept for the socket's life.
#[derive(Debug)]
pub(crate) struct Reader {
    /// Largest data message accepted, in bytes (the sum of its fragments).
    max_message: usize,
    /// Bytes of the current data frame's payload still to come.
    remaining: u64,
    mask: [u8; 4],
    /// Position of the next payload byte in the mask (payload offset mod 4).
    phase: u8,
    /// The current data frame ends its message.
    fin: bool,
    msg: Msg,
    /// Payload bytes of the message in progress, counted by frame header.
    msg_len: usize,
    /// The start of a UTF-8 sequence cut by a fragment or read boundary.
    utf8: [u8; 3],
    utf8_len: u8,
    /// After a violation or a server-initiated close: frames are skipped, not checked, and
    /// only the client's close frame is reported.
    closing: bool,
    /// The client has sent a close frame (valid or not): it sends nothing more.
    peer_closed: bool,
}

impl Reader {
    pub(crate) fn new(max_message: usize) -> Self {
        Self {
            max_message,
            remaining: 0,
            mask: [0; 4],
            phase: 0,
            fin: false,
            msg: Msg::None,
            msg_len: 0,
            utf8: [0; 3],
            utf8_len: 0,
            closing: false,
            peer_closed: false,
        }
    }

    /// The server is closing: from now on only the client's close frame matters.
    pub(crate) fn start_closing(&mut self) {
        self.closing = true;
    }

    pub(crate) fn peer_closed(&self) -> bool {
        self.peer_closed
    }

    /// Consumes client bytes from `buf` up to the next event. `None`: everything usable was
    /// consumed and at most `MAX_PENDING` bytes (an incomplete header or control frame)
    /// are left for the next read. Never panics and never buffers a payload.
    pub(crate) fn next(&mut self, buf: &mut BytesMut) -> Option<Event> {
        loop {
            if self.remaining > 0 {
                if buf.is_empty() {
                    return None;
                }
                let n = usize::try_from(self.remaining).map_or(buf.len(), |r| r.min(buf.len()));
                let valid = self.closing || self.msg != Msg::Text || self.take_text(&mut buf[..n]);
                buf.advance(n);
                self.remaining -= n as u64;
                if !valid {
                    return Some(self.fail(close_code::INVALID_PAYLOAD, "invalid UTF-8"));
                }
                if self.remaining > 0 {
                    return None;
                }
                if let Some(e) = self.end_frame() {
                    return Some(e);
                }
                continue;
            }
            let mut cursor = Cursor::new(&buf[..]);
            let parsed = FrameHeader::parse(&mut cursor);
            let header_len = cursor.position() as usize;
            let (header, len) = match parsed {
                Ok(Some(h)) => h,
                Ok(None) => return None,
                // Only a reserved opcode fails here (a cursor cannot fail to read); its
                // frame cannot be skipped without trusting its length.
                Err(_) if self.closing => {
                    return Some(Event::Violation(
                        close_code::PROTOCOL_ERROR,
                        "reserved opcode",
                    ));
                }
                Err(_) => return Some(self.fail(close_code::PROTOCOL_ERROR, "reserved opcode")),
            };
            let is_close = header.opcode == OpCode::Control(Control::Close);
            if self.closing {
                if is_close {
                    // Its body does not matter any more: the handshake is complete.
                    self.peer_closed = true;
                    return Some(Event::Close(None));
                }
                buf.advance(header_len);
                self.remaining = len;
                self.msg = Msg::None;
                continue;
            }
            if let Some((code, why)) = self.check(&header, len) {
                // Left in the buffer: closing mode skips it by its length (or stops at it,
                // if it was a close).
                self.peer_closed |= is_close;
                return Some(self.fail(code, why));
            }
            let mask = header.mask.unwrap_or_default();
            match header.opcode {
                OpCode::Control(c) => {
                    // ≤ 125 by `check`.
                    let total = header_len + len as usize;
                    if buf.len() < total {
                        return None;
                    }
                    let mut frame = buf.split_to(total);
                    frame.advance(header_len);
                    unmask(&mut frame, mask, 0);
                    match c {
                        Control::Ping => return Some(Event::Ping(frame.freeze())),
                        Control::Pong => continue,
                        _ => {
                            self.peer_closed = true;
                            return Some(self.close_event(&frame));
                        }
                    }
                }
                OpCode::Data(d) => {
                    buf.advance(header_len);
                    match d {
                        Data::Text => self.msg = Msg::Text,
                        Data::Binary => self.msg = Msg::Binary,
                        _ => {}
                    }
                    // ≤ max_message by `check`.
                    self.msg_len += len as usize;
                    self.remaining = len;
                    self.mask = mask;
                    self.phase = 0;
                    self.fin = header.is_final;
                    if len == 0
                        && let Some(e) = self.end_frame()
                    {
                        return Some(e);
                    }
                }
            }
        }
    }

    /// What is wrong with a complete frame header, if anything: the close code and why.
    /// Reserved opcodes were refused by the header parser.
    fn check(&self, h: &FrameHeader, len: u64) -> Option<(u16, &'static str)> {
        let protocol = |why| Some((close_code::PROTOCOL_ERROR, why));
        if h.rsv1 || h.rsv2 || h.rsv3 {
            // No extension is ever negotiated (permessage-deflate is declined).
            return protocol("reserved bits set");
        }
        if h.mask.is_none() {
            return protocol("client frames must be masked");
        }
        if len >> 63 != 0 {
            return protocol("bad frame length");
        }
        match h.opcode {
            OpCode::Control(_) if !h.is_final => protocol("fragmented control frame"),
            OpCode::Control(_) if len > 125 => protocol("control frame too long"),
            OpCode::Control(_) => None,
            OpCode::Data(Data::Continue) if self.msg == Msg::None => {
                protocol("nothing to continue")
            }
            OpCode::Data(Data::Text | Data::Binary) if self.msg != Msg::None => {
                protocol("new message inside a fragmented one")
            }
            OpCode::Data(_) => {
                let total = (self.msg_len as u64).saturating_add(len);
                (total > self.max_message as u64)
                    .then_some((close_code::TOO_BIG, "message too big"))
            }
        }
    }

    /// A close frame's payload (unmasked), checked per §5.5.1 and §7.4.
    fn close_event(&mut self, body: &[u8]) -> Event {
        match body {
            [] => Event::Close(None),
            [_] => self.fail(close_code::PROTOCOL_ERROR, "close frame of one byte"),
            [a, b, reason @ ..] => {
                let code = u16::from_be_bytes([*a, *b]);
                if !client_may_send(code) {
                    self.fail(close_code::PROTOCOL_ERROR, "invalid close code")
                } else if std::str::from_utf8(reason).is_err() {
                    self.fail(close_code::INVALID_PAYLOAD, "invalid UTF-8 in close reason")
                } else {
                    self.closing = true;
                    Event::Close(Some(code))
                }
            }
        }
    }

    /// The current data frame is complete.
    fn end_frame(&mut self) -> Option<Event> {
        if !self.fin || self.closing {
            return None;
        }
        let cut = self.msg == Msg::Text && self.utf8_len > 0;
        self.msg = Msg::None;
        self.msg_len = 0;
        self.utf8_len = 0;
        if cut {
            return Some(self.fail(close_code::INVALID_PAYLOAD, "invalid UTF-8"));
        }
        Some(Event::Message)
    }

    fn fail(&mut self, code: u16, why: &'static str) -> Event {
        self.closing = true;
        Event::Violation(code, why)
    }

    /// Unmasks the next payload bytes of a text message and checks them as the
    /// continuation of what came before. False as soon as they cannot be UTF-8, whatever
    /// follows (fail fast).
    fn take_text(&mut self, data: &mut [u8]) -> bool {
        unmask(data, self.mask, self.phase);
        self.phase = ((self.phase as usize + data.len()) % 4) as u8;
        let mut rest: &[u8] = data;
        if self.utf8_len > 0 {
            // Complete the sequence cut last time, byte by byte as far as we have them.
            let have = self.utf8_len as usize;
            let need = utf8_width(self.utf8[0]).saturating_sub(have);
            let take = need.min(rest.len());
            let mut seq = [0u8; 4];
            seq[..have].copy_from_slice(&self.utf8[..have]);
            seq[have..have + take].copy_from_slice(&rest[..take]);
            match std::str::from_utf8(&seq[..have + take]) {
                Ok(_) => {
                    self.utf8_len = 0;
                    rest = &rest[take..];
                }
                Err(e) if e.error_len().is_some() => return false,
                Err(_) => {
                    let n = have + take;
                    if n > self.utf8.len() {
                        return false;
                    }
                    self.utf8[..n].copy_from_slice(&seq[..n]);
                    self.utf8_len = n as u8;
                    return true;
                }
            }
        }
        match std::str::from_utf8(rest) {
            Ok(_) => true,
            Err(e) if e.error_len().is_some() => false,
            Err(e) => {
                // A valid prefix of a sequence that the next bytes may complete.
                let tail = &rest[e.valid_up_to()..];
                if tail.len() > self.utf8.len() {
                    return false;
                }
                self.utf8[..tail.len()].copy_from_slice(tail);
                self.utf8_len = tail.len() as u8;
                true
            }
        }
    }
}

/// Length of the UTF-8 sequence a lead byte starts (4 for anything else: `from_utf8`
/// decides).
fn utf8_width(lead: u8) -> usize {
    match lead {
        0x00..=0x7F => 1,
        0xC0..=0xDF => 2,
        0xE0..=0xEF => 3,
        _ => 4,
    }
}

/// XORs the mask in, starting at mask position `phase`.
fn unmask(data: &mut [u8], mask: [u8; 4], phase: u8) {
    for (i, b) in data.iter_mut().enumerate() {
        *b ^= mask[(phase as usize + i) % 4];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A masked client frame: first byte as given (FIN, RSV, opcode), any payload length.
    fn client_frame(b0: u8, payload: &[u8], mask: [u8; 4]) -> Vec<u8> {
        let mut out = vec![b0];
        match payload.len() {
            n if n < 126 => out.push(0x80 | n as u8),
            n if n <= 0xFFFF => {
                out.push(0x80 | 126);
                out.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                out.push(0x80 | 127);
                out.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        out.extend_from_slice(&mask);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        out
    }

    const M: [u8; 4] = [0x12, 0x34, 0x56, 0x78];

    /// Feeds `input` in chunks cut at `cuts`, the way the socket task does: events until
    /// the reader wants more, then the next chunk. Stops at a close or a violation.
    fn run(reader: &mut Reader, input: &[u8], cuts: &[usize]) -> Vec<Event> {
        run_until(reader, input, cuts, true)
    }

    /// `run`, optionally going on after a violation as the close wait does, until the
    /// client's close; closing mode must report nothing but that close.
    fn run_until(
        reader: &mut Reader,
        input: &[u8],
        cuts: &[usize],
        stop_at_violation: bool,
    ) -> Vec<Event> {
        let mut buf = BytesMut::new();
        let mut events = Vec::new();
        let mut at = 0;
        let mut cuts: Vec<usize> = cuts.iter().map(|c| c % (input.len() + 1)).collect();
        cuts.push(input.len());
        cuts.sort_unstable();
        for cut in cuts {
            buf.extend_from_slice(&input[at..cut.max(at)]);
            at = cut.max(at);
            while let Some(e) = reader.next(&mut buf) {
                let closing = events.iter().any(|e| matches!(e, Event::Violation(..)));
                assert!(
                    !closing || matches!(e, Event::Close(_) | Event::Violation(..)),
                    "{e:?} while closing"
                );
                let end = match e {
                    Event::Close(_) => true,
                    Event::Violation(..) => stop_at_violation || closing || reader.peer_closed(),
                    _ => false,
                };
                events.push(e);
                if end {
                    return events;
                }
            }
            assert!(buf.len() <= MAX_PENDING, "{} bytes pending", buf.len());
        }
        events
    }

    fn events(input: &[u8]) -> Vec<Event> {
        run(&mut Reader::new(4096), input, &[])
    }

    fn violation(code: u16) -> impl Fn(&Event) -> bool {
        move |e| matches!(e, Event::Violation(c, _) if *c == code)
    }

    #[test]
    fn fragments_make_one_message_and_pings_interleave() {
        let mut input = client_frame(0x01, b"Hel", M);
        input.extend(client_frame(0x89, b"are you there", M));
        input.extend(client_frame(0x00, b"lo, ", M));
        input.extend(client_frame(0x8A, b"unsolicited", M));
        input.extend(client_frame(0x80, "wörld".as_bytes(), M));
        input.extend(client_frame(0x82, &[0xFF, 0xFE], M));
        let want = vec![
            Event::Ping(Bytes::from_static(b"are you there")),
            Event::Message,
            Event::Message,
        ];
        assert_eq!(events(&input), want);
        // The same, one byte at a time.
        let cuts: Vec<usize> = (0..input.len()).collect();
        assert_eq!(run(&mut Reader::new(4096), &input, &cuts), want);
    }

    #[test]
    fn fragmentation_errors_are_1002() {
        let cont = client_frame(0x80, b"x", M);
        assert!(violation(1002)(&events(&cont)[0]));
        let mut two_starts = client_frame(0x01, b"a", M);
        two_starts.extend(client_frame(0x81, b"b", M));
        assert!(violation(1002)(&events(&two_starts)[0]));
        let fragmented_ping = client_frame(0x09, b"", M);
        assert!(violation(1002)(&events(&fragmented_ping)[0]));
        let long_ping = client_frame(0x89, &[0; 126], M);
        assert!(violation(1002)(&events(&long_ping)[0]));
        for b0 in [
            0x83, 0x84, 0x85, 0x86, 0x87, 0x8B, 0x8C, 0x8D, 0x8E, 0x8F, 0xC1, 0xA1, 0x91,
        ] {
            assert!(
                violation(1002)(&events(&client_frame(b0, b"", M))[0]),
                "{b0:#x}"
            );
        }
        let mut unmasked = client_frame(0x81, b"", M);
        unmasked[1] &= 0x7F;
        unmasked.truncate(2);
        assert!(violation(1002)(&events(&unmasked)[0]));
    }

    #[test]
    fn size_limit_counts_the_whole_message() {
        let mut input = Vec::new();
        input.extend(client_frame(0x02, &[0; 2048], M));
        input.extend(client_frame(0x80, &[0; 2048], M));
        assert_eq!(events(&input), vec![Event::Message]);
        let mut input = Vec::new();
        for _ in 0..4096 {
            input.extend(client_frame(0x00, b"a", M));
        }
        input[0] = 0x01;
        input.extend(client_frame(0x80, b"b", M));
        assert!(violation(1009)(events(&input).last().unwrap()));
    }

    #[test]
    fn utf8_is_checked_across_fragments_and_fails_fast() {
        // "κόσμε" split inside its code points.
        let text = "κόσμε".as_bytes();
        let mut input = client_frame(0x01, &text[..1], M);
        input.extend(client_frame(0x00, &text[1..4], M));
        input.extend(client_frame(0x80, &text[4..], M));
        assert_eq!(events(&input), vec![Event::Message]);
        // A code point above U+10FFFF: reported with the fragment that starts it, before
        // the rest of the message arrives.
        let mut input = client_frame(0x01, "κόσμε".as_bytes(), M);
        input.extend(client_frame(0x00, &[0xF4, 0x90], M));
        assert!(violation(1007)(&events(&input)[0]));
        // A message that ends inside a code point.
        let input = client_frame(0x81, &[b'a', 0xE2, 0x82], M);
        assert!(violation(1007)(&events(&input)[0]));
        // Binary content is never looked at.
        assert_eq!(
            events(&client_frame(0x82, &[0xF4, 0x90], M)),
            vec![Event::Message]
        );
    }

    #[test]
    fn close_frames() {
        let close = |body: &[u8]| events(&client_frame(0x88, body, M));
        assert_eq!(close(b""), vec![Event::Close(None)]);
        assert_eq!(close(&[0x03, 0xE8]), vec![Event::Close(Some(1000))]);
        assert_eq!(
            close(&[0x0F, 0xA0, b'o', b'k']),
            vec![Event::Close(Some(4000))]
        );
        assert!(violation(1002)(&close(&[0x03])[0]));
        assert!(violation(1007)(&close(&[0x03, 0xE8, 0xFF])[0]));
        for code in [
            0u16, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999, 5000, 65535,
        ] {
            assert!(violation(1002)(&close(&code.to_be_bytes())[0]), "{code}");
        }
        for code in [
            1000u16, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014, 3000, 3999,
            4000, 4999,
        ] {
            assert_eq!(close(&code.to_be_bytes()), vec![Event::Close(Some(code))]);
        }
    }

    #[test]
    fn closing_skips_to_the_clients_close() {
        let mut r = Reader::new(4096);
        let mut input = client_frame(0x81, &[0xFF], M);
        input.extend(client_frame(0x81, b"ignored", M));
        input.extend(client_frame(0x89, b"not answered", M));
        input.extend(client_frame(0xC1, b"reserved bit, skipped by length", M));
        input.extend(client_frame(0x88, &[0x03, 0xE8], M));
        let mut buf = BytesMut::from(&input[..]);
        assert!(violation(1007)(&r.next(&mut buf).unwrap()));
        assert!(!r.peer_closed());
        assert_eq!(r.next(&mut buf), Some(Event::Close(None)));
        assert!(r.peer_closed());
    }

    mod props {
        use super::*;
        use proptest::prelude::*;

        /// Drives the reader the way the socket task does, through the close wait: after
        /// a violation it keeps reading, now in closing mode, until the client's close.
        fn drive(input: &[u8], cuts: &[usize]) -> Vec<Event> {
            run_until(&mut Reader::new(4096), input, cuts, false)
        }

        /// Frames with any first byte (every FIN/RSV/opcode combination), masked or not,
        /// with short or long payloads.
        fn frame_soup() -> impl Strategy<Value = Vec<u8>> {
            prop::collection::vec(
                (
                    any::<u8>(),
                    any::<bool>(),
                    prop::collection::vec(any::<u8>(), 0..300),
                    any::<[u8; 4]>(),
                ),
                0..12,
            )
            .prop_map(|frames| {
                let mut out = Vec::new();
                for (b0, masked, payload, mask) in frames {
                    let mut f = client_frame(b0, &payload, mask);
                    if !masked {
                        f[1] &= 0x7F;
                    }
                    out.extend(f);
                }
                out
            })
        }

        proptest! {
            #[test]
            fn arbitrary_bytes_never_panic_or_pile_up(
                input in prop::collection::vec(any::<u8>(), 0..4000),
                cuts in prop::collection::vec(any::<usize>(), 0..16),
            ) {
                // `run` asserts the pending bound after every chunk.
                drive(&input, &cuts);
            }

            #[test]
            fn frame_soup_never_panics_or_piles_up(
                input in frame_soup(),
                cuts in prop::collection::vec(any::<usize>(), 0..16),
            ) {
                let events = drive(&input, &cuts);
                let ends = events
                    .iter()
                    .filter(|e| matches!(e, Event::Close(_)))
                    .count();
                prop_assert!(ends <= 1);
            }

            /// A text message, cut into fragments at any points (pings between them) and
            /// delivered in reads cut anywhere, is one message if and only if the whole is
            /// UTF-8; otherwise 1007, and nothing for it before that.
            #[test]
            fn text_is_checked_whatever_the_cuts(
                text in prop_oneof![
                    any::<String>().prop_map(String::into_bytes),
                    prop::collection::vec(any::<u8>(), 0..64),
                    prop::collection::vec(prop::sample::select(vec![0x41u8, 0x80, 0xBF, 0xC2, 0xE0, 0xED, 0xF0, 0xF4, 0xF5, 0xA0, 0x90]), 0..32),
                ],
                frags in prop::collection::vec(any::<usize>(), 0..6),
                cuts in prop::collection::vec(any::<usize>(), 0..16),
                mask in any::<[u8; 4]>(),
            ) {
                let mut frags: Vec<usize> = frags.iter().map(|f| f % (text.len() + 1)).collect();
                frags.sort_unstable();
                frags.push(text.len());
                let mut input = Vec::new();
                let mut at = 0;
                let last = frags.len() - 1;
                for (i, end) in frags.into_iter().enumerate() {
                    let fin = if i == last { 0x80 } else { 0 };
                    let op = if i == 0 { 0x1 } else { 0x0 };
                    input.extend(client_frame(fin | op, &text[at..end], mask));
                    if i != last {
                        input.extend(client_frame(0x89, &[i as u8], mask));
                    }
                    at = end;
                }
                let events = run(&mut Reader::new(4096), &input, &cuts);
                let last = events.last().cloned();
                if std::str::from_utf8(&text).is_ok() {
                    prop_assert_eq!(last, Some(Event::Message));
                } else {
                    prop_assert!(matches!(last, Some(Event::Violation(1007, _))), "{:?}", events);
                }
                for (i, e) in events.iter().filter(|e| matches!(e, Event::Ping(_))).enumerate() {
                    prop_assert_eq!(e, &Event::Ping(Bytes::from(vec![i as u8])));
                }
            }
        }
    }
}
