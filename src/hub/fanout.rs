//! The fan-out path, start to end.
//!
//! 1. `Hub::deliver` takes a frame that was serialized and framed once, and pushes that same
//!    `Bytes` onto each recipient's outbox: a per-socket lock held for one `push_back`, plus
//!    an atomic byte count. A frame that would take a recipient over its byte bound makes
//!    the sender write that socket itself first (`SocketHandle::catch_up`); only if the
//!    kernel then refuses, the bound still exceeded, and has refused for the stall time
//!    (or the queue is at its cap) is the socket evicted (1013).
//! 2. A socket whose outbox was idle goes onto its flush queue, once. The queue is one per
//!    socket-runtime thread; a broadcast appends to it under one lock and wakes its flusher
//!    once, instead of waking a task per recipient.
//! 3. The flusher (`run_flusher`, on the socket runtime) takes the queue and, socket by
//!    socket, writes everything queued with one non-blocking `writev`. A socket fed faster
//!    than one frame per flush interval and written less than an interval ago waits for its
//!    turn, still listed (only with `FLUSH_INTERVAL_MS` set; by default every socket is
//!    written as soon as the flusher gets to it, and frames that arrived meanwhile go with it).
//! 4. A socket that cannot take it all (its send buffer is full) is handed to its own task
//!    (`socket.rs`), which waits for it to drain and writes the rest. Until then the flusher
//!    leaves it alone, so a slow reader never holds up anyone else.
//! 5. After the fan-out, not on it: a call that published waits before it replies while a
//!    flusher has more writing ahead of it than its bound (`Hub::backlog`), so a publisher
//!    that outruns the writers is slowed by its reply instead of growing their queue.
//!
//! Nothing on this path awaits, takes a shared lock per recipient or touches the database.
use std::collections::VecDeque;
use std::io::IoSlice;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, AtomicUsize, Ordering::*};
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes};
use parking_lot::Mutex;
use serde::Serialize;
use tokio::net::TcpStream;
use tokio::sync::Notify;

use super::{Action, Audience, CloseReason, Hub};

/// Who writes a socket: nobody needs to (nothing queued, or a frame is about to list it)...
const W_IDLE: u8 = 0;
/// ...its flusher, which will get to it (it is on the flush queue)...
const W_LISTED: u8 = 1;
/// ...or its own task: the socket was full and the task waits until it drains, or it is
/// closing.
const W_TASK: u8 = 2;

/// Most frames handed to one `writev`.
const MAX_IOV: usize = 64;

/// Largest outbox buffer, in frames, a socket keeps between broadcasts (`VecDeque`'s
/// smallest is 4 frames, 128 bytes).
const RECYCLE_MAX_FRAMES: usize = 8;

/// Flush-queue entries after which a flusher lets the socket tasks on its thread run.
const FLUSH_YIELD_EVERY: usize = 256;

/// How much writing a flusher may have ahead of it before publishers wait, µs (see
/// `Hub::backlog`; at least two broadcasts into its widest room). 16 ms: `fanout-1k` closed
/// loop at 2.2 times the floor's deliveries with a p99 of 0.7 times the floor's; 8 ms gave
/// 1.5 times (BENCHMARKS.md, session 17).
const BACKLOG_MAX_US: u64 = 16_000;

/// Sockets the flusher looks at between two reports of its progress to held publishers.
const RELIEF_EVERY: usize = 64;

/// Longest a publisher is held back by a flusher that is behind: a safety bound only (a
/// pass over the biggest room takes far less).
const BACKLOG_HOLD_MAX: Duration = Duration::from_secs(1);

/// How often a socket gets frames, as its flusher sees it: sockets that get them faster
/// than one per flush interval are written at most once per interval.
#[derive(Default)]
struct Pace {
    /// When it was last written, µs since its flusher's epoch (0: never).
    last_write_us: AtomicU64,
    /// Moving average of the time between its frames, µs (0: not known yet).
    gap_us: AtomicU64,
}

impl Pace {
    /// Whether a socket listed `now` waits until the returned time.
    fn wait_until(&self, now: u64, every: u64) -> Option<u64> {
        let last = self.last_write_us.load(Relaxed);
        let gap = self.gap_us.load(Relaxed);
        let due = last.saturating_add(every);
        (last > 0 && gap > 0 && gap < every && now < due).then_some(due)
    }

    /// Records a write at `now` that took `frames` frames.
    fn wrote(&self, now: u64, frames: usize) {
        let last = self.last_write_us.swap(now.max(1), Relaxed);
        if last == 0 || frames == 0 {
            return;
        }
        let per_frame = now.saturating_sub(last) / frames as u64;
        let gap = match self.gap_us.load(Relaxed) {
            0 => per_frame,
            // A quarter of the newest: about five writes to tell a stream from a pause.
            g => g - g / 4 + per_frame / 4,
        };
        self.gap_us.store(gap.max(1), Relaxed);
    }
}

/// Frames taken from the outbox and not yet fully written. Owned by whoever writes.
#[derive(Default)]
struct Writer {
    out: VecDeque<Bytes>,
    /// The front frame of `out` is partly written: it must be finished before anything
    /// else (a close frame) may follow.
    partial: bool,
    /// Frames taken from the outbox since the flusher last asked (see `flush`).
    taken: usize,
}

/// How a round of writing ended.
pub(crate) enum Drain {
    /// Everything queued is written; the socket is idle (or someone else listed it).
    Idle,
    /// The socket would block: frames remain.
    Full,
    /// The write failed: the peer is gone.
    Failed,
}

/// What `push` did with a frame.
enum Push {
    Refused,
    Queued,
    /// Queued into an idle socket: the caller must put it on its flush queue.
    List,
}

/// The hub's handle on one live socket. Senders touch only its outbox (a short,
/// per-socket, practically uncontended lock) and atomics; they never wait.
pub struct SocketHandle {
    pub id: Arc<str>,
    /// Read by the socket's task, written by its flusher or (when full) its task.
    pub(crate) stream: TcpStream,
    /// Frames queued and not yet taken by a writer. A socket that never received a frame
    /// holds no allocation; one that did keeps one small buffer (see `drain`).
    outbox: Mutex<VecDeque<Bytes>>,
    queued: AtomicUsize,
    max_queued: usize,
    /// See `catch_up`.
    stall_us: u64,
    /// Since when (µs on its flusher's clock) the kernel has refused every write to this
    /// socket; 0 while it takes bytes.
    refused_since_us: AtomicU64,
    /// Open, or why it is closing (`CloseReason` as a number).
    state: AtomicU8,
    /// `W_IDLE`, `W_LISTED` or `W_TASK`.
    wstate: AtomicU8,
    /// Held only around non-blocking writes, never across an await.
    writer: Mutex<Writer>,
    flush: Arc<FlushQueue>,
    flush_index: usize,
    /// Its flusher's pacing state (see `run_flusher`; only that flusher touches it).
    pace: Pace,
    pub(crate) alive: AtomicBool,
    pub(crate) pinged: AtomicBool,
    /// Wakes the socket's task: a close request, or writing handed over to it.
    pub(crate) wake: Notify,
    /// The socket-id reply, framed once when the socket opens.
    pub(crate) socket_id_frame: Bytes,
    /// Serializes row changes of this socket (join, leave, close) so that the database
    /// and the in-memory mirror change together. Held across awaits, so it is async.
    pub membership: tokio::sync::Mutex<()>,
    /// The audiences this socket is mirrored in.
    pub(crate) audiences: Mutex<Vec<Audience>>,
    /// Opted into positions (`positions=1`, §5.6): it gets each audience frame with its
    /// `seq`, and its joins may resume.
    pub positions: bool,
}

const OPEN: u8 = 0;

impl SocketHandle {
    pub(crate) fn new(
        id: Arc<str>,
        stream: TcpStream,
        max_queued: usize,
        stall: Duration,
        (flush_index, flush): (usize, Arc<FlushQueue>),
        positions: bool,
    ) -> Self {
        let socket_id_frame = encode_frame("", "", Action::SocketId, &*id);
        Self {
            id,
            stream,
            outbox: Mutex::default(),
            queued: AtomicUsize::new(0),
            max_queued,
            stall_us: u64::try_from(stall.as_micros()).unwrap_or(u64::MAX),
            refused_since_us: AtomicU64::new(0),
            state: AtomicU8::new(OPEN),
            wstate: AtomicU8::new(W_IDLE),
            writer: Mutex::default(),
            flush,
            flush_index,
            pace: Pace::default(),
            alive: AtomicBool::new(true),
            pinged: AtomicBool::new(false),
            wake: Notify::new(),
            socket_id_frame,
            membership: tokio::sync::Mutex::new(()),
            audiences: Mutex::new(Vec::new()),
            positions,
        }
    }

    /// Queues a frame without waiting. Returns false if the socket is closing, or if this
    /// frame pushed it over its bound (it is then evicted).
    pub fn enqueue(self: &Arc<Self>, frame: Bytes) -> bool {
        match self.push(frame) {
            Push::Refused => false,
            Push::Queued => true,
            Push::List => {
                self.flush.push(self.clone());
                true
            }
        }
    }

    fn push(&self, frame: Bytes) -> Push {
        if self.state.load(Relaxed) != OPEN {
            return Push::Refused;
        }
        let len = frame.len();
        if self.queued.fetch_add(len, Relaxed) + len > self.max_queued {
            self.queued.fetch_sub(len, Relaxed);
            match self.catch_up(len) {
                CatchUp::Room => {
                    self.queued.fetch_add(len, Relaxed);
                }
                CatchUp::Closing => return Push::Refused,
                CatchUp::NotReading(cause) => {
                    if self.request_close(CloseReason::Evicted) {
                        self.flush.evicted(cause);
                        tracing::info!(socket = %self.id, queued = self.queued_bytes(),
                            cause = cause.as_str(), "evicting slow consumer");
                    }
                    return Push::Refused;
                }
            }
        }
        self.outbox.lock().push_back(frame);
        // A writer that went idle re-checks the outbox after saying so (see `drain`), so a
        // frame that finds it busy here is not stranded.
        if self.wstate.load(Relaxed) == W_IDLE
            && self
                .wstate
                .compare_exchange(W_IDLE, W_LISTED, AcqRel, Relaxed)
                .is_ok()
        {
            Push::List
        } else {
            Push::Queued
        }
    }

    /// The slow-consumer rule (§2.3), run by a sender whose frame would take the socket past
    /// its byte bound. Bytes can pile up for two reasons: the client does not read, or this
    /// server's own writer has not got to the socket yet (its flusher paced it, or the socket
    /// threads waited for a core behind requests: they run at a lower priority). Only the
    /// first is the client's fault, and only the kernel can tell them apart. So the sender
    /// writes the socket itself, now, with the same non-blocking `writev` its writer uses:
    /// - the kernel takes enough: the frame is queued (a writer that was merely behind costs
    ///   the client nothing);
    /// - the kernel refuses (would block) with the bound still exceeded: the client has left
    ///   its whole receive window and our send buffer unread, and a bound's worth behind
    ///   them. That is evidence from the client's side. The socket is evicted once the
    ///   kernel has refused every write for the stall time (`Stalled`), or once the queue
    ///   reaches `CAP_FACTOR` times the bound before that (`OverCap`, the memory cap); until
    ///   then the frame is queued, so a client that pauses for a moment loses nothing.
    ///
    /// The writer lock serializes this with the flusher and the socket's task, so frames stay
    /// in order whoever writes them; it is only ever held around non-blocking writes, and a
    /// sender only tries it. Writing
    /// does not change who owns the socket's writing (`wstate`): whoever listed or holds it
    /// finds less, or nothing, to write.
    fn catch_up(&self, need: usize) -> CatchUp {
        // A sender never waits for one socket: a writer holding the lock is writing it right
        // now, and what that write finds (the kernel refusing, `refused_since_us`) decides.
        if let Some(mut w) = self.writer.try_lock() {
            // A closing socket's task writes its close frame without this lock, once it has
            // taken writing over (which needs the lock, and comes after the state changed).
            if !self.is_open() {
                return CatchUp::Closing;
            }
            let before = self.queued_bytes();
            if let Drain::Failed = self.drain(&mut w, None) {
                drop(w);
                self.request_close(CloseReason::Terminated);
                return CatchUp::Closing;
            }
            drop(w);
            if self.queued_bytes() < before {
                self.flush.caught_up();
            }
        }
        let queued = self.queued_bytes();
        let since = self.refused_since_us.load(Relaxed);
        // The kernel takes bytes, or the bound holds again (over it with everything written,
        // other senders refilled it: theirs are the frames over the bound, and they run this
        // rule themselves).
        if since == 0 || queued == 0 || queued + need <= self.max_queued {
            return CatchUp::Room;
        }
        // The kernel refuses and a bound's worth waits. A client that has read nothing for
        // `stall` is gone or stuck; one that stopped for a moment (a busy tab, a lost packet,
        // a reader starved of CPU) gets that long to resume, its queue capped meanwhile.
        if self.flush.now_us().saturating_sub(since) >= self.stall_us {
            return CatchUp::NotReading(EvictionCause::Stalled);
        }
        if queued + need > self.max_queued.saturating_mul(CAP_FACTOR) {
            return CatchUp::NotReading(EvictionCause::OverCap);
        }
        CatchUp::Room
    }

    /// Marks the socket closing; the first reason wins. Returns whether this call set it.
    pub fn request_close(&self, reason: CloseReason) -> bool {
        let code = match reason {
            CloseReason::Evicted => 1,
            CloseReason::Terminated => 2,
            CloseReason::Shutdown => 3,
        };
        let set = self
            .state
            .compare_exchange(OPEN, code, AcqRel, Relaxed)
            .is_ok();
        if set {
            self.wake.notify_one();
        }
        set
    }

    pub fn close_reason(&self) -> Option<CloseReason> {
        match self.state.load(Acquire) {
            OPEN => None,
            1 => Some(CloseReason::Evicted),
            2 => Some(CloseReason::Terminated),
            _ => Some(CloseReason::Shutdown),
        }
    }

    pub fn is_open(&self) -> bool {
        self.state.load(Acquire) == OPEN
    }

    /// Bytes queued for this socket and not yet accepted by the kernel.
    pub fn queued_bytes(&self) -> usize {
        self.queued.load(Relaxed)
    }

    pub(crate) fn mark_alive(&self) {
        self.alive.store(true, Relaxed);
    }

    /// Called by the flusher for each socket it finds on its queue. Returns how many frames
    /// it took from the outbox.
    fn flush(&self) -> usize {
        if self.wstate.load(Acquire) != W_LISTED {
            return 0; // its task took over (full or closing) after it was listed
        }
        let mut w = self.writer.lock();
        if self.wstate.load(Acquire) != W_LISTED {
            return 0;
        }
        let drained = self.drain(&mut w, Some(W_LISTED));
        let taken = std::mem::take(&mut w.taken);
        match drained {
            Drain::Idle => {}
            Drain::Full => {
                // Nothing else moves a socket out of W_LISTED, and the task that could
                // (closing) waits for the writer lock we hold.
                self.wstate.store(W_TASK, Release);
                drop(w);
                self.wake.notify_one();
            }
            Drain::Failed => {
                self.wstate.store(W_TASK, Release);
                drop(w);
                self.request_close(CloseReason::Terminated);
            }
        }
        taken
    }

    /// Asks the socket's flusher to look at its queue now: a closing socket that waits for
    /// its interval (see `run_flusher`) is then written at once.
    pub(crate) fn hurry_flusher(&self) {
        self.flush.hurry.store(true, Release);
        self.flush.wake.notify_one();
    }

    /// Whether the socket's task owns writing (the socket was full, or it is closing).
    pub(crate) fn task_writes(&self) -> bool {
        self.wstate.load(Acquire) == W_TASK
    }

    /// The task's side of `flush`: writes what it can while it owns writing.
    pub(crate) fn drain_as_task(&self) -> Drain {
        let mut w = self.writer.lock();
        self.drain(&mut w, Some(W_TASK))
    }

    /// Takes over writing for good (the socket is closing): whatever was partly written is
    /// returned so that it can be finished before the close frame.
    pub(crate) fn take_over(&self) -> Option<Bytes> {
        let mut w = self.writer.lock();
        self.wstate.store(W_TASK, Release);
        let partial = std::mem::take(&mut w.partial);
        let front = w.out.pop_front();
        *w = Writer::default();
        front.filter(|_| partial)
    }

    /// Drops this socket's queued frames of one room that the kernel has not taken yet, so
    /// that once a leave is answered the socket gets nothing more from the room (a frame
    /// already partly written is finished: the stream must stay well-formed). Frames are
    /// recognised by their envelope's first two keys, which `encode_frame` writes first, so
    /// the fan-out path carries no tag per queued frame.
    pub(crate) fn drop_room_frames(&self, church: &str, room: &str) {
        let prefix = envelope_prefix(church, room);
        let of_room = |f: &Bytes| super::frame::server_frame_payload(f).starts_with(&prefix);
        let mut dropped = 0;
        let mut drop_from = |q: &mut VecDeque<Bytes>, keep_front: bool| {
            let mut first = keep_front;
            q.retain(|f| {
                let keep = std::mem::take(&mut first) || !of_room(f);
                if !keep {
                    dropped += f.len();
                }
                keep
            });
        };
        // Writer before outbox, the order `drain` takes them in.
        let mut w = self.writer.lock();
        let partial = w.partial;
        drop_from(&mut w.out, partial);
        drop_from(&mut self.outbox.lock(), false);
        drop(w);
        self.queued.fetch_sub(dropped, Relaxed);
    }

    /// Writes queued frames until none are left or the socket is full. Called with the
    /// writer lock held, by the current owner (`W_LISTED`: the flusher, `W_TASK`: the task),
    /// or by a sender catching up (`None`: see `catch_up`), which leaves `wstate` alone.
    fn drain(&self, w: &mut Writer, owner: Option<u8>) -> Drain {
        loop {
            if w.out.is_empty() {
                // The two buffers trade places instead of being allocated by the sender and
                // freed here on every broadcast: a cross-thread free per recipient contends
                // on the allocator.
                std::mem::swap(&mut *self.outbox.lock(), &mut w.out);
                if w.out.is_empty() {
                    let Some(owner) = owner else {
                        return Drain::Idle;
                    };
                    self.wstate.store(W_IDLE, SeqCst);
                    let mut outbox = self.outbox.lock();
                    if outbox.is_empty() {
                        // Keep one small buffer for the next broadcast; a burst's is freed.
                        if outbox.capacity() == 0 && w.out.capacity() <= RECYCLE_MAX_FRAMES {
                            std::mem::swap(&mut *outbox, &mut w.out);
                        }
                        drop(outbox);
                        w.out = VecDeque::new();
                        return Drain::Idle;
                    }
                    drop(outbox);
                    // A frame arrived while we were still the owner, so it listed nothing:
                    // carry on, unless a newer frame has listed the socket meanwhile.
                    if self
                        .wstate
                        .compare_exchange(W_IDLE, owner, AcqRel, Relaxed)
                        .is_err()
                    {
                        return Drain::Idle;
                    }
                    continue;
                }
                frames_taken(w.out.len());
                w.taken += w.out.len();
            }
            // Counted before the call: a reader that got the bytes finds them counted.
            self.flush.wrote();
            match write_some(&self.stream, w) {
                Ok(Some(n)) => {
                    self.queued.fetch_sub(n, Relaxed);
                    if self.refused_since_us.load(Relaxed) != 0 {
                        self.refused_since_us.store(0, Relaxed);
                    }
                }
                Ok(None) => {
                    if self.refused_since_us.load(Relaxed) == 0 {
                        let now = self.flush.now_us().max(1);
                        self.refused_since_us.store(now, Relaxed);
                    }
                    return Drain::Full;
                }
                Err(_) => return Drain::Failed,
            }
        }
    }
}

/// What a sender's `catch_up` found.
enum CatchUp {
    /// The frame may be queued.
    Room,
    /// The client does not read: evict.
    NotReading(EvictionCause),
    /// The socket is closing (or its write just failed): drop the frame.
    Closing,
}

/// Why a socket was evicted, the label of `messaging_sockets_evicted_total`. Both need the
/// kernel refusing writes with the queue over its bound (see `catch_up`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EvictionCause {
    /// The kernel refused every write for the stall time.
    Stalled = 0,
    /// The queue reached `CAP_FACTOR` times the bound before that.
    OverCap = 1,
}

impl EvictionCause {
    pub const ALL: [EvictionCause; 2] = [EvictionCause::Stalled, EvictionCause::OverCap];

    pub fn as_str(self) -> &'static str {
        match self {
            EvictionCause::Stalled => "stalled",
            EvictionCause::OverCap => "over_cap",
        }
    }
}

/// A socket whose client pauses may hold this many times its byte bound while the stall
/// time runs: the memory cap per socket.
pub const CAP_FACTOR: usize = 4;

fn frames_taken(n: usize) {
    static WRITTEN: std::sync::OnceLock<metrics::Counter> = std::sync::OnceLock::new();
    WRITTEN
        .get_or_init(|| metrics::counter!("messaging_frames_written_total"))
        .increment(n as u64);
}

/// One `writev` of the front frames: Ok(Some(bytes written)), or Ok(None) if the socket is
/// full.
fn write_some(stream: &TcpStream, w: &mut Writer) -> std::io::Result<Option<usize>> {
    let mut iov = [IoSlice::new(&[]); MAX_IOV];
    let n = w
        .out
        .iter()
        .zip(iov.iter_mut())
        .map(|(f, s)| *s = IoSlice::new(f))
        .count();
    match stream.try_write_vectored(&iov[..n]) {
        Ok(0) => Err(std::io::ErrorKind::WriteZero.into()),
        Ok(written) => {
            let mut left = written;
            while let Some(front) = w.out.front_mut() {
                if left < front.len() {
                    front.advance(left);
                    w.partial = left > 0 || w.partial;
                    break;
                }
                left -= front.len();
                w.out.pop_front();
                w.partial = false;
            }
            Ok(Some(written))
        }
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Ok(None),
        Err(e) => Err(e),
    }
}

/// The sockets with frames to write, for one flusher.
pub(crate) struct FlushQueue {
    list: Mutex<Vec<Arc<SocketHandle>>>,
    wake: Notify,
    closed: AtomicBool,
    /// A closing socket may be waiting for its interval: look at the waiting ones now.
    hurry: AtomicBool,
    writes: AtomicU64,
    /// By `EvictionCause`.
    evictions: [AtomicU64; 2],
    catch_ups: AtomicU64,
    epoch: Instant,
    /// Sockets listed and not yet looked at by the flusher (its list and the rest of the
    /// batch it is writing): the writes it has ahead of it.
    outstanding: AtomicUsize,
    /// What one socket's turn costs the flusher, ns (moving average over its passes).
    turn_ns: AtomicU64,
    /// The most sockets one broadcast listed here lately (decaying slowly).
    widest: AtomicUsize,
    /// Publishers held back by `Hub::backlog`; woken as the flusher works its way down.
    relieved: Notify,
}

impl Default for FlushQueue {
    fn default() -> Self {
        Self {
            list: Mutex::default(),
            wake: Notify::new(),
            closed: AtomicBool::new(false),
            hurry: AtomicBool::new(false),
            writes: AtomicU64::new(0),
            evictions: Default::default(),
            catch_ups: AtomicU64::new(0),
            epoch: Instant::now(),
            outstanding: AtomicUsize::new(0),
            turn_ns: AtomicU64::new(0),
            widest: AtomicUsize::new(0),
            relieved: Notify::new(),
        }
    }
}

impl FlushQueue {
    /// Counts one `writev` to a socket of this flusher's.
    fn wrote(&self) {
        static WRITES: std::sync::OnceLock<metrics::Counter> = std::sync::OnceLock::new();
        WRITES
            .get_or_init(|| metrics::counter!("messaging_socket_writes_total"))
            .increment(1);
        self.writes.fetch_add(1, Relaxed);
    }

    /// Counts an eviction of one of this flusher's sockets.
    fn evicted(&self, cause: EvictionCause) {
        metrics::counter!("messaging_sockets_evicted_total", "cause" => cause.as_str())
            .increment(1);
        self.evictions[cause as usize].fetch_add(1, Relaxed);
    }

    /// Counts a socket of this flusher's written by a sender because it was behind
    /// (`SocketHandle::catch_up`).
    fn caught_up(&self) {
        static CATCH_UPS: std::sync::OnceLock<metrics::Counter> = std::sync::OnceLock::new();
        CATCH_UPS
            .get_or_init(|| metrics::counter!("messaging_socket_catch_up_writes_total"))
            .increment(1);
        self.catch_ups.fetch_add(1, Relaxed);
    }

    /// Evictions of this flusher's sockets for `cause` so far.
    pub(crate) fn evictions(&self, cause: EvictionCause) -> u64 {
        self.evictions[cause as usize].load(Relaxed)
    }

    /// Catch-up writes to this flusher's sockets so far.
    pub(crate) fn catch_ups(&self) -> u64 {
        self.catch_ups.load(Relaxed)
    }

    /// `writev`s to the sockets of this flusher so far.
    pub(crate) fn writes(&self) -> u64 {
        self.writes.load(Relaxed)
    }

    fn now_us(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_micros()).unwrap_or(u64::MAX)
    }

    fn push(&self, h: Arc<SocketHandle>) {
        let was_empty = {
            let mut list = self.list.lock();
            list.push(h);
            list.len() == 1
        };
        self.outstanding.fetch_add(1, Relaxed);
        if was_empty {
            self.wake.notify_one();
        }
    }

    fn append(&self, hs: &mut Vec<Arc<SocketHandle>>) {
        if hs.is_empty() {
            return;
        }
        let was_empty = {
            let n = hs.len();
            // Rises at once, forgets a 64th per broadcast.
            let w = self.widest.load(Relaxed);
            self.widest.store(n.max(w - w / 64), Relaxed);
            let mut list = self.list.lock();
            let was_empty = list.is_empty();
            list.append(hs);
            self.outstanding.fetch_add(n, Relaxed);
            was_empty
        };
        if was_empty {
            self.wake.notify_one();
        }
    }

    /// The flusher's work ahead of it, in time: its outstanding sockets at what a turn has
    /// cost it lately.
    fn backlog_ns(&self) -> u64 {
        let turns = self.outstanding.load(Relaxed) as u64;
        turns.saturating_mul(self.turn_ns.load(Relaxed))
    }

    /// How much work ahead holds publishers back: `BACKLOG_MAX_US`, or two broadcasts into
    /// the widest room lately where that takes longer (a big room). Less than that would let
    /// no broadcast wait for a pass over the room already under way, so every pass would
    /// carry one frame per socket: the writes would cost the most exactly when there is the
    /// most to write (measured: a bound of half a pass cut `fanout-1k` to a quarter).
    fn backlog_bound_ns(&self) -> u64 {
        let room = (self.widest.load(Relaxed) as u64).saturating_mul(self.turn_ns.load(Relaxed));
        (BACKLOG_MAX_US * 1000).max(room.saturating_mul(2))
    }

    /// Whether a publisher should wait for this flusher (see `Hub::backlog`).
    fn behind(&self) -> bool {
        !self.closed.load(Relaxed) && self.backlog_ns() > self.backlog_bound_ns()
    }

    /// Resolves once this flusher's backlog is back under half the bound (or it closed):
    /// half, so that a held publisher does not wake for every socket written.
    async fn relieved(&self) {
        loop {
            let notified = self.relieved.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.closed.load(Acquire) || self.backlog_ns() <= self.backlog_bound_ns() / 2 {
                return;
            }
            notified.await;
        }
    }

    /// The flusher has looked at `n` more sockets.
    fn turns_done(&self, n: usize) {
        self.outstanding.fetch_sub(n, Relaxed);
        self.relieved.notify_waiters();
    }

    /// Folds a pass's cost into the moving average of a turn.
    fn pass_took(&self, turns: usize, took: Duration) {
        if turns == 0 {
            return;
        }
        let per = u64::try_from(took.as_nanos() / turns as u128).unwrap_or(u64::MAX);
        let avg = match self.turn_ns.load(Relaxed) {
            0 => per,
            // An eighth of the newest pass: a few passes to follow a change of load.
            a => a - a / 8 + per / 8,
        };
        self.turn_ns.store(avg.max(1), Relaxed);
    }

    /// Lets the flusher end once its queue is empty.
    pub(crate) fn close(&self) {
        self.closed.store(true, Release);
        self.wake.notify_one();
        self.relieved.notify_waiters();
    }
}

/// One flusher per socket-runtime thread: writes the sockets its queue lists.
///
/// A socket that gets frames faster than one per `interval` (on a moving average) is
/// written at most once per `interval`: listed again within `interval` of its last write, it
/// waits, still listed, so that everything sent to it meanwhile leaves in one `writev` (and
/// reaches the client in one read). Every other socket is written at once: a quiet room, a
/// first frame, the first frame after a pause, a room of a few messages a second. Under a
/// stream of broadcasts into big rooms this turns one system call per frame into one per
/// interval, and on loopback a `writev` also runs the receiver's TCP processing: together
/// most of a delivery's CPU (BENCHMARKS.md, session 9).
pub(crate) async fn run_flusher(q: Arc<FlushQueue>, interval: Duration) {
    let every = u64::try_from(interval.as_micros()).unwrap_or(u64::MAX);
    let mut batch: Vec<Arc<SocketHandle>> = Vec::new();
    // Sockets waiting for their interval to pass, and the earliest time one is due.
    let mut waiting: Vec<Arc<SocketHandle>> = Vec::new();
    let mut due = u64::MAX;
    loop {
        if q.list.lock().is_empty() {
            if waiting.is_empty() {
                if q.closed.load(Acquire) {
                    return;
                }
                // A push after the check above left a permit, so no wake-up is lost.
                q.wake.notified().await;
                continue;
            }
            if !q.closed.load(Acquire) {
                match q.epoch.checked_add(Duration::from_micros(due)) {
                    Some(at) => tokio::select! {
                        _ = q.wake.notified() => {}
                        _ = tokio::time::sleep_until(tokio::time::Instant::from_std(at)) => {}
                    },
                    None => q.wake.notified().await,
                }
            }
        }
        let now = q.now_us();
        let closing = q.closed.load(Acquire);
        // The waiting sockets are looked at only when one is due (or one is closing), so
        // that a wake-up for a few other sockets does not cost a pass over a big room.
        if now >= due || closing || q.hurry.swap(false, AcqRel) {
            std::mem::swap(&mut waiting, &mut batch);
            due = u64::MAX;
            // Sockets back from waiting for their interval are work ahead again.
            q.outstanding.fetch_add(batch.len(), Relaxed);
        }
        batch.append(&mut q.list.lock());
        let pass = Instant::now();
        let turns = batch.len();
        let mut written = 0;
        let mut looked = 0;
        for h in batch.drain(..) {
            looked += 1;
            if looked % RELIEF_EVERY == 0 {
                q.turns_done(RELIEF_EVERY);
            }
            // A closing socket's task waits for its queued frames to go out first.
            if every > 0
                && !closing
                && h.is_open()
                && let Some(at) = h.pace.wait_until(now, every)
            {
                due = due.min(at);
                waiting.push(h);
                continue;
            }
            let frames = h.flush();
            if every > 0 {
                h.pace.wrote(now, frames);
            }
            written += 1;
            if written % FLUSH_YIELD_EVERY == 0 {
                // Let this thread's socket tasks (reads, pongs) in during a huge room.
                tokio::task::yield_now().await;
            }
        }
        q.turns_done(looked % RELIEF_EVERY);
        q.pass_took(turns, pass.elapsed());
        if batch.capacity() > 4096 {
            batch = Vec::new();
        }
    }
}

/// The frame envelope of §3.1: exactly these four keys, in this order.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Envelope<'a, T: Serialize + ?Sized> {
    church_id: &'a str,
    conversation_id: &'a str,
    action: &'a str,
    data: &'a T,
}

/// How every frame of one room begins: the envelope's first two keys, as `encode_frame`
/// writes them.
fn envelope_prefix(church: &str, room: &str) -> Vec<u8> {
    let mut p = Vec::with_capacity(40 + church.len() + room.len());
    p.extend_from_slice(b"{\"churchId\":");
    let _ = serde_json::to_writer(&mut p, church);
    p.extend_from_slice(b",\"conversationId\":");
    let _ = serde_json::to_writer(&mut p, room);
    p.push(b',');
    p
}

/// Serializes and frames one envelope. Called once per delivery, never per recipient.
pub fn encode_frame<T: Serialize + ?Sized>(
    church_id: &str,
    conversation_id: &str,
    action: Action,
    data: &T,
) -> Bytes {
    let json = serde_json::to_vec(&Envelope {
        church_id,
        conversation_id,
        action: action.as_str(),
        data,
    })
    .unwrap_or_default();
    super::frame::text_frame(&json)
}

impl Hub {
    /// Holds a publisher back while a flusher has more writing ahead of it than its bound
    /// (`BACKLOG_MAX_US`, or two broadcasts into its widest room), until it is down to half
    /// that. `None` when every flusher keeps up, as it does whenever the machine has time to
    /// spare: then nothing waits and nothing is delayed.
    ///
    /// Why: a publish is answered once its frame is queued, and writing happens later on the
    /// socket threads. A publisher that outruns the writers would otherwise queue frames
    /// faster than they leave, and the backlog, not the work, would set every frame's
    /// latency (bufferbloat: a closed-loop p99 of 160 ms against the floor's 30). Bounding
    /// the backlog rather than waiting for each frame's write keeps the batching that a
    /// backlog brings: what is published while a pass over a room runs still leaves in one
    /// write per socket, so under load each write carries several frames, and at a calm rate
    /// every frame is written at once.
    pub fn backlog(&self) -> Option<impl std::future::Future<Output = ()> + Send + 'static> {
        let behind: Vec<Arc<FlushQueue>> = self
            .flushers
            .iter()
            .filter(|q| q.behind())
            .cloned()
            .collect();
        (!behind.is_empty()).then_some(async move {
            let _ = tokio::time::timeout(BACKLOG_HOLD_MAX, async {
                for q in &behind {
                    q.relieved().await;
                }
            })
            .await;
        })
    }

    /// The fan-out (§5.2): one pre-framed frame to every local row of the audience.
    /// Returns the number of rows it was enqueued for.
    ///
    /// Only this node's sockets: the delivery seam (`cluster::Seam`) carries a frame to
    /// the other nodes, each of which calls this for its own.
    pub fn deliver(&self, audience: &Audience, frame: &Bytes) -> usize {
        self.deliver_at(audience, frame, None)
    }

    /// [`Hub::deliver`] of a frame that has a position: sockets with positions get
    /// `positioned` (the same envelope with its `seq`), the others `frame`. Two encodings
    /// per broadcast at most, never one per socket.
    pub fn deliver_at(
        &self,
        audience: &Audience,
        frame: &Bytes,
        positioned: Option<&Bytes>,
    ) -> usize {
        let started = Instant::now();
        let mut n = 0;
        // Sockets that went from idle to queued, by flush queue: each queue is appended to
        // under one lock, after the members lock is released.
        let mut listed: Vec<Vec<Arc<SocketHandle>>> = Vec::new();
        if let Some(room) = self.members.read().get(audience) {
            listed.resize_with(self.flushers.len(), Vec::new);
            for h in room.values() {
                let f = match positioned {
                    Some(p) if h.positions => p,
                    _ => frame,
                };
                match h.push(f.clone()) {
                    Push::Refused => {}
                    Push::Queued => n += 1,
                    Push::List => {
                        n += 1;
                        if let Some(l) = listed.get_mut(h.flush_index) {
                            l.push(h.clone());
                        }
                    }
                }
            }
        }
        for (q, l) in self.flushers.iter().zip(listed.iter_mut()) {
            q.append(l);
        }
        metrics::counter!("messaging_frames_enqueued_total").increment(n as u64);
        metrics::histogram!("messaging_fanout_seconds").record(started.elapsed().as_secs_f64());
        n
    }
}

#[cfg(test)]
mod tests {
    use super::{FlushQueue, Pace};
    use std::sync::atomic::Ordering::Relaxed;
    use std::time::Duration;

    #[tokio::test]
    async fn publishers_wait_only_while_the_writing_ahead_passes_the_bound() {
        let q = FlushQueue::default();
        // Nothing ahead: never behind, whatever a turn costs.
        assert!(!q.behind());
        q.pass_took(100, Duration::from_millis(1)); // 10 µs a turn
        q.outstanding.store(1_000, Relaxed); // 10 ms ahead: under 16 ms
        assert!(!q.behind());
        q.outstanding.store(2_000, Relaxed); // 20 ms ahead
        assert!(q.behind());
        // A room of 1500 sockets takes 15 ms a pass: the bound is two of its broadcasts, so
        // that a broadcast may wait for a pass under way (and leave with it).
        q.widest.store(1_500, Relaxed);
        assert!(!q.behind());
        q.outstanding.store(3_100, Relaxed);
        assert!(q.behind());
        q.widest.store(0, Relaxed);

        // A held publisher goes once the flusher is down to half the bound (8 ms), not at
        // every turn it reports before that.
        q.outstanding.store(2_000, Relaxed);
        let mut held = Box::pin(q.relieved());
        assert!(futures::poll!(&mut held).is_pending());
        q.turns_done(1_000); // 10 ms ahead: still over half
        assert!(
            futures::poll!(&mut held).is_pending(),
            "released above half"
        );
        q.turns_done(300); // 7 ms ahead
        assert!(
            futures::poll!(&mut held).is_ready(),
            "held under half the bound"
        );

        // A closing flusher releases everyone.
        q.outstanding.store(5_000, Relaxed);
        let mut held = Box::pin(q.relieved());
        assert!(futures::poll!(&mut held).is_pending());
        q.close();
        assert!(futures::poll!(&mut held).is_ready(), "held after close");
        assert!(!q.behind());
    }

    const EVERY: u64 = 20_000; // 20 ms, in µs

    #[test]
    fn only_sockets_fed_faster_than_the_interval_wait() {
        let p = Pace::default();
        // Never written, then written once: nothing is known about its rate.
        assert_eq!(p.wait_until(5, EVERY), None);
        p.wrote(5, 1);
        assert_eq!(p.wait_until(1_000, EVERY), None);
        // One frame per 2 ms: it waits for the interval since its last write.
        p.wrote(2_005, 1);
        assert_eq!(p.wait_until(3_000, EVERY), Some(22_005));
        // Paced, a write takes what came meanwhile and the average stays under the interval.
        p.wrote(22_005, 10);
        assert_eq!(p.wait_until(23_000, EVERY), Some(42_005));
        // Not listed for longer than the interval: written at once.
        assert_eq!(p.wait_until(42_005, EVERY), None);
    }

    #[test]
    fn a_pause_or_a_slow_stream_cools_a_socket_down() {
        let p = Pace::default();
        p.wrote(1, 1);
        p.wrote(1_001, 1); // 1 ms: fed fast
        assert!(p.wait_until(1_500, EVERY).is_some());
        // Frames every 50 ms from now on (20 a second): after a few writes it is written
        // at once, however soon after a write its next frame comes.
        let mut t = 1_001;
        for _ in 0..8 {
            t += 50_000;
            p.wrote(t, 1);
        }
        assert_eq!(p.wait_until(t + 1, EVERY), None);
        // A burst of frames taken in one write after a long pause is no stream either.
        let p = Pace::default();
        p.wrote(1, 1);
        p.wrote(10_000_001, 30);
        assert_eq!(p.wait_until(10_000_100, EVERY), None);
    }
}
