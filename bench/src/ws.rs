//! The WebSocket client side: connect (optionally from a chosen 127.0.0.x source address),
//! the RFC 6455 upgrade, `getId`, then one receiver task per socket that parses frames in
//! place and keeps per-socket delivery statistics.
//!
//! Everything here is hand-rolled on a `TcpStream` and a `BytesMut`: no per-frame
//! allocation, no JSON tree, one clock read and one uncontended lock per `read()` batch.
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Instant;

use bytes::{Buf, BytesMut};
use hdrhistogram::Histogram;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

use crate::parse::{self, Frame};

/// Read buffer reserve per socket; grows if a frame is larger.
const READ_CHUNK: usize = 8 * 1024;
/// Sequence numbers above this are treated as malformed (keeps bitsets bounded).
const MAX_SEQ: u64 = 1 << 28;

static EPOCH: OnceLock<Instant> = OnceLock::new();

/// Nanoseconds since the generator-wide monotonic epoch.
pub fn now_ns() -> u64 {
    EPOCH.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

/// Unique `message` deliveries so far, all sockets (for progress checks).
pub static RECEIVED: AtomicU64 = AtomicU64::new(0);
/// `attendance` frames so far, all sockets.
pub static ATTENDANCE_FRAMES: AtomicU64 = AtomicU64::new(0);

/// Publish→deliver latency in microseconds: one histogram per generator thread, merged at
/// the end. Thousands of per-socket histograms were thousands of cold arrays, and recording
/// into them took a tenth of the generator's CPU.
static LATENCY: Mutex<Vec<Arc<Mutex<Histogram<u64>>>>> = Mutex::new(Vec::new());

thread_local! {
    static THREAD_LATENCY: Arc<Mutex<Histogram<u64>>> = {
        // Auto-resizing: memory grows with the largest latency seen, not a fixed range.
        let h = Arc::new(Mutex::new(Histogram::new(3).expect("3 significant figures is valid")));
        LATENCY.lock().unwrap_or_else(|e| e.into_inner()).push(h.clone());
        h
    };
}

fn record_latency(us: u64) {
    THREAD_LATENCY.with(|h| {
        let _ = h.lock().unwrap_or_else(|e| e.into_inner()).record(us);
    });
}

/// Every latency recorded so far, all threads.
pub fn latency_histogram() -> Histogram<u64> {
    let mut all = Histogram::new(3).expect("3 significant figures is valid");
    for h in LATENCY.lock().unwrap_or_else(|e| e.into_inner()).iter() {
        let _ = all.add(&*h.lock().unwrap_or_else(|e| e.into_inner()));
    }
    all
}

/// Where sockets connect to.
pub struct Target {
    pub addr: SocketAddr,
    pub request: Vec<u8>,
}

impl Target {
    pub fn new(addr: SocketAddr, path: &str) -> Self {
        // A fixed key is fine for a load generator: the server only hashes it.
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        .into_bytes();
        Self { addr, request }
    }
}

/// How a socket ended, if it did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// A close frame from the server, with its code (1005 if it had none).
    Close(u16),
    Eof,
    Error,
}

/// What one receiver shares with the coordinator.
pub struct Shared {
    pub room: u32,
    pub joined: AtomicBool,
    /// `totalViewers` of the latest attendance frame; u32::MAX before the first.
    pub latest_total: AtomicU32,
    pub stats: Mutex<Stats>,
}

impl Shared {
    pub fn new(room: u32) -> Self {
        Self {
            room,
            joined: AtomicBool::new(false),
            latest_total: AtomicU32::new(u32::MAX),
            stats: Mutex::new(Stats::default()),
        }
    }

    pub fn stats(&self) -> MutexGuard<'_, Stats> {
        self.stats.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Per-socket delivery statistics, owned by the receiver task (behind an uncontended lock).
#[derive(Default)]
pub struct Stats {
    pub received: u64,
    pub duplicates: u64,
    pub out_of_order: u64,
    /// Messages for a room this socket never joined.
    pub wrong_room: u64,
    /// `message` frames whose content is not a generator content string.
    pub foreign: u64,
    pub attendance_frames: u32,
    /// Payload bytes of those attendance frames.
    pub attendance_bytes: u64,
    pub blocked_ip_frames: u32,
    /// `read()` calls that returned data, and the bytes they returned.
    pub reads: u64,
    pub bytes: u64,
    pub other_frames: u32,
    /// Highest sequence number seen + 1 (0: none yet).
    seq_hi: u64,
    /// One bit per sequence number of the room.
    seen: Vec<u64>,
    pub last_rx_ns: u64,
    pub ended: Option<End>,
}

impl Stats {
    fn message(&mut self, my_room: u32, room: u64, seq: u64, t_ns: u64, now: u64) -> bool {
        if room != u64::from(my_room) {
            self.wrong_room += 1;
            return false;
        }
        if seq >= MAX_SEQ {
            self.foreign += 1;
            return false;
        }
        let (w, bit) = ((seq / 64) as usize, 1u64 << (seq % 64));
        if w >= self.seen.len() {
            self.seen.resize((w + 1).next_power_of_two().max(16), 0);
        }
        if self.seen[w] & bit != 0 {
            self.duplicates += 1;
            return false;
        }
        self.seen[w] |= bit;
        if seq + 1 < self.seq_hi {
            self.out_of_order += 1;
        } else {
            self.seq_hi = seq + 1;
        }
        self.received += 1;
        self.last_rx_ns = now;
        record_latency(now.saturating_sub(t_ns) / 1000);
        true
    }
}

/// Connects (from `source` if given), upgrades and asks for the socket id. Returns the
/// stream, whatever was read past the reply, and the id.
pub async fn open(
    target: &Target,
    source: Option<Ipv4Addr>,
) -> io::Result<(TcpStream, BytesMut, String)> {
    let mut stream = match source {
        None => TcpStream::connect(target.addr).await?,
        Some(ip) => {
            let sock = TcpSocket::new_v4()?;
            // Let connect() pick the port per 4-tuple instead of bind() reserving one per
            // address: otherwise each source address is capped at the ephemeral range.
            let one: libc::c_int = 1;
            // SAFETY: setsockopt on a socket we own with a correctly sized int.
            unsafe {
                libc::setsockopt(
                    sock.as_raw_fd(),
                    libc::IPPROTO_IP,
                    libc::IP_BIND_ADDRESS_NO_PORT,
                    (&one as *const libc::c_int).cast(),
                    std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                );
            }
            sock.bind(SocketAddr::from((ip, 0)))?;
            sock.connect(target.addr).await?
        }
    };
    stream.set_nodelay(true)?;
    stream.write_all(&target.request).await?;
    let mut buf = BytesMut::with_capacity(READ_CHUNK);
    let head_end = loop {
        if stream.read_buf(&mut buf).await? == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "closed during upgrade",
            ));
        }
        if let Some(p) = memchr::memmem::find(&buf, b"\r\n\r\n") {
            break p + 4;
        }
        if buf.len() > 16 * 1024 {
            return Err(io::Error::other("oversized upgrade response"));
        }
    };
    if !buf.starts_with(b"HTTP/1.1 101") {
        let line = buf[..].split(|&b| b == b'\r').next().unwrap_or_default();
        return Err(io::Error::other(format!(
            "upgrade refused: {}",
            String::from_utf8_lossy(line)
        )));
    }
    buf.advance(head_end);
    stream.write_all(&client_frame(0x1, b"getId")).await?;
    loop {
        while let Some(h) = header(&buf) {
            let payload = &buf[h.start..h.start + h.len];
            if h.opcode == 0x1
                && let Frame::SocketId(id) = parse::classify(payload)
            {
                let id = String::from_utf8_lossy(id).into_owned();
                buf.advance(h.start + h.len);
                return Ok((stream, buf, id));
            }
            buf.advance(h.start + h.len);
        }
        if stream.read_buf(&mut buf).await? == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "closed before socketId",
            ));
        }
    }
}

/// One complete frame at the start of a buffer.
struct Header {
    fin: bool,
    opcode: u8,
    /// Offset of the payload.
    start: usize,
    len: usize,
    mask: Option<[u8; 4]>,
}

/// Parses the frame header at the start of `b`; None unless the whole frame is buffered.
fn header(b: &[u8]) -> Option<Header> {
    if b.len() < 2 {
        return None;
    }
    let (mut start, len) = match b[1] & 0x7f {
        126 => (4, u16::from_be_bytes([*b.get(2)?, *b.get(3)?]) as usize),
        127 => (
            10,
            u64::from_be_bytes(b.get(2..10)?.try_into().ok()?) as usize,
        ),
        n => (2, n as usize),
    };
    let mask = if b[1] & 0x80 != 0 {
        let m = b.get(start..start + 4)?.try_into().ok()?;
        start += 4;
        Some(m)
    } else {
        None
    };
    if b.len() < start.checked_add(len)? {
        return None;
    }
    Some(Header {
        fin: b[0] & 0x80 != 0,
        opcode: b[0] & 0x0f,
        start,
        len,
        mask,
    })
}

/// Bytes still needed for the frame at the start of `b` (0 if the header is incomplete).
fn frame_size_hint(b: &[u8]) -> usize {
    if b.len() < 10 {
        return 0;
    }
    let (hdr, len) = match b[1] & 0x7f {
        126 => (4, u16::from_be_bytes([b[2], b[3]]) as usize),
        127 => (
            10,
            u64::from_be_bytes(b[2..10].try_into().unwrap_or_default()) as usize,
        ),
        n => (2, n as usize),
    };
    (hdr + 4 + len).saturating_sub(b.len())
}

/// A masked client frame.
pub fn client_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    assert!(payload.len() < 126, "only short client frames are sent");
    // Any mask will do; vary it a little so frames do not all look alike.
    let mask = (now_ns() as u32 | 1).to_be_bytes();
    let mut f = Vec::with_capacity(6 + payload.len());
    f.push(0x80 | opcode);
    f.push(0x80 | payload.len() as u8);
    f.extend_from_slice(&mask);
    f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    f
}

/// The receiver: runs until the socket ends (the process exits at the end of a run).
pub async fn receive(mut stream: TcpStream, mut buf: BytesMut, sh: std::sync::Arc<Shared>) {
    let room = sh.room;
    // A fragmented message being reassembled (the servers never fragment; kept for safety).
    let mut frag: Vec<u8> = Vec::new();
    let mut reply: Vec<u8> = Vec::new();
    let mut end = None;
    let mut got = 0usize;
    loop {
        {
            let now = now_ns();
            let mut fresh = 0u64;
            let mut attendance = 0u64;
            {
                let mut st = sh.stats();
                if got > 0 {
                    st.reads += 1;
                    st.bytes += got as u64;
                }
                while let Some(h) = header(&buf) {
                    let total = h.start + h.len;
                    if let Some(m) = h.mask {
                        for (i, b) in buf[h.start..total].iter_mut().enumerate() {
                            *b ^= m[i % 4];
                        }
                    }
                    match h.opcode {
                        0x1 | 0x2 if h.fin => {
                            let p = &buf[h.start..total];
                            on_text(p, room, now, &mut st, &sh, &mut fresh, &mut attendance);
                        }
                        0x1 | 0x2 => frag = buf[h.start..total].to_vec(),
                        0x0 => {
                            frag.extend_from_slice(&buf[h.start..total]);
                            if h.fin {
                                let p = std::mem::take(&mut frag);
                                on_text(&p, room, now, &mut st, &sh, &mut fresh, &mut attendance);
                            }
                        }
                        0x8 => {
                            let code = if h.len >= 2 {
                                u16::from_be_bytes([buf[h.start], buf[h.start + 1]])
                            } else {
                                1005
                            };
                            end = Some(End::Close(code));
                            reply.extend_from_slice(&client_frame(0x8, &code.to_be_bytes()));
                        }
                        0x9 => reply.extend_from_slice(&client_frame(0xA, &buf[h.start..total])),
                        _ => {}
                    }
                    buf.advance(total);
                    if end.is_some() {
                        break;
                    }
                }
                if end.is_some() {
                    st.ended = end;
                }
            }
            if fresh > 0 {
                RECEIVED.fetch_add(fresh, Relaxed);
            }
            if attendance > 0 {
                ATTENDANCE_FRAMES.fetch_add(attendance, Relaxed);
            }
            if !reply.is_empty() {
                let r = stream.write_all(&reply).await;
                reply.clear();
                if r.is_err() && end.is_none() {
                    end = Some(End::Error);
                    sh.stats().ended = end;
                }
            }
        }
        if end.is_some() {
            return;
        }
        let need = frame_size_hint(&buf).max(READ_CHUNK / 2);
        if buf.capacity() - buf.len() < need {
            buf.reserve(need.max(READ_CHUNK));
        }
        match stream.read_buf(&mut buf).await {
            Ok(0) => end = Some(End::Eof),
            Ok(n) => got = n,
            Err(_) => end = Some(End::Error),
        }
        if end.is_some() {
            sh.stats().ended = end;
            return;
        }
    }
}

fn on_text(
    p: &[u8],
    room: u32,
    now: u64,
    st: &mut Stats,
    sh: &Shared,
    fresh: &mut u64,
    attendance: &mut u64,
) {
    match parse::classify(p) {
        Frame::Message { room: r, seq, t_ns } => {
            if st.message(room, r, seq, t_ns, now) {
                *fresh += 1;
            }
        }
        Frame::ForeignMessage => st.foreign += 1,
        Frame::Attendance(total) => {
            st.attendance_frames += 1;
            st.attendance_bytes += p.len() as u64;
            *attendance += 1;
            if let Some(t) = total {
                sh.latest_total.store(t, Relaxed);
            }
        }
        Frame::BlockedIp => st.blocked_ip_frames += 1,
        Frame::SocketId(_) | Frame::Other => st.other_frames += 1,
    }
}

/// The receive path without the network: `n` service-shaped `message` frames with fresh
/// sequence numbers through `on_text` (classify, dedup bitset, order check, histogram).
/// The 10 sequence digits are rewritten in place per frame, which is included in the time.
pub fn parse_bench(n: u64, payload: usize) -> serde_json::Value {
    let content = format!(
        "lg|0|{:010}|0|{}",
        0,
        "x".repeat(payload.saturating_sub(18))
    );
    let mut frame = format!(
        r#"{{"churchId":"loadgen-church","conversationId":"CONV0000001","action":"message","data":{{"id":"MSG00000001","churchId":"loadgen-church","conversationId":"CONV0000001","personId":null,"displayName":"lg","timeSent":"2026-05-04T12:00:00.000Z","timeUpdated":null,"messageType":"comment","content":"{content}"}}}}"#
    )
    .into_bytes();
    let at = memchr::memmem::find(&frame, b"lg|0|").expect("content") + 5;
    let n = n.min(MAX_SEQ);
    let sh = Shared::new(0);
    let mut st = Stats::default();
    let (mut fresh, mut att) = (0u64, 0u64);
    let t = Instant::now();
    for i in 0..n {
        let mut v = i;
        for d in frame[at..at + 10].iter_mut().rev() {
            *d = b'0' + (v % 10) as u8;
            v /= 10;
        }
        on_text(&frame, 0, 1_000_000 + i, &mut st, &sh, &mut fresh, &mut att);
    }
    let el = t.elapsed();
    serde_json::json!({
        "frames": n,
        "frame_bytes": frame.len(),
        "ns_per_frame": (el.as_nanos() as f64 / n.max(1) as f64 * 10.0).round() / 10.0,
        "received": st.received,
        "duplicates": st.duplicates,
        "out_of_order": st.out_of_order,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers() {
        assert!(header(&[0x81]).is_none());
        let h = header(&[0x81, 2, b'h', b'i']).unwrap();
        assert_eq!((h.fin, h.opcode, h.start, h.len), (true, 1, 2, 2));
        let mut f = vec![0x81, 126, 1, 44];
        f.extend(std::iter::repeat_n(b'x', 300));
        let h = header(&f).unwrap();
        assert_eq!((h.start, h.len), (4, 300));
        assert!(header(&f[..200]).is_none());
        let c = client_frame(0x1, b"getId");
        let h = header(&c).unwrap();
        let m = h.mask.unwrap();
        let p: Vec<u8> = c[h.start..]
            .iter()
            .enumerate()
            .map(|(i, b)| b ^ m[i % 4])
            .collect();
        assert_eq!(p, b"getId");
    }

    #[test]
    fn duplicates_and_order() {
        let mut s = Stats::default();
        assert!(s.message(0, 0, 0, 0, 10_000));
        assert!(s.message(0, 0, 2, 0, 10_000));
        assert!(s.message(0, 0, 1, 0, 10_000));
        assert!(!s.message(0, 0, 2, 0, 10_000));
        assert!(!s.message(0, 1, 3, 0, 10_000));
        assert!(s.message(0, 0, 5000, 0, 10_000));
        assert_eq!(
            (s.received, s.duplicates, s.out_of_order, s.wrong_room),
            (4, 1, 1, 1)
        );
        assert!(latency_histogram().len() >= 4);
    }
}
