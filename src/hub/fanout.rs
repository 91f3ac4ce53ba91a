//! The fan-out path, start to end.
//!
//! 1. `Hub::deliver` takes a frame that was serialized and framed once, and pushes that same
//!    `Bytes` onto each recipient's outbox: a per-socket lock held for one `push_back`, plus
//!    an atomic byte count. A recipient over its byte bound is marked for eviction instead.
//! 2. A socket whose outbox was idle goes onto its flush queue, once. The queue is one per
//!    socket-runtime thread; a broadcast appends to it under one lock and wakes its flusher
//!    once, instead of waking a task per recipient.
//! 3. The flusher (`run_flusher`, on the socket runtime) takes the queue and, socket by
//!    socket, writes everything queued with one non-blocking `writev`.
//! 4. A socket that cannot take it all (its send buffer is full) is handed to its own task
//!    (`ws.rs`), which waits for it to drain and writes the rest. Until then the flusher
//!    leaves it alone, so a slow reader never holds up anyone else.
//!
//! Nothing on this path awaits, takes a shared lock per recipient or touches the database.
use std::collections::VecDeque;
use std::io::IoSlice;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering::*};
use std::time::Instant;

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

/// Frames taken from the outbox and not yet fully written. Owned by whoever writes.
#[derive(Default)]
struct Writer {
    out: VecDeque<Bytes>,
    /// The front frame of `out` is partly written: it must be finished before anything
    /// else (a close frame) may follow.
    partial: bool,
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
    /// Open, or why it is closing (`CloseReason` as a number).
    state: AtomicU8,
    /// `W_IDLE`, `W_LISTED` or `W_TASK`.
    wstate: AtomicU8,
    /// Held only around non-blocking writes, never across an await.
    writer: Mutex<Writer>,
    flush: Arc<FlushQueue>,
    flush_index: usize,
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
}

const OPEN: u8 = 0;

impl SocketHandle {
    pub(crate) fn new(
        id: Arc<str>,
        stream: TcpStream,
        max_queued: usize,
        (flush_index, flush): (usize, Arc<FlushQueue>),
    ) -> Self {
        let socket_id_frame = encode_frame("", "", Action::SocketId, &*id);
        Self {
            id,
            stream,
            outbox: Mutex::default(),
            queued: AtomicUsize::new(0),
            max_queued,
            state: AtomicU8::new(OPEN),
            wstate: AtomicU8::new(W_IDLE),
            writer: Mutex::default(),
            flush,
            flush_index,
            alive: AtomicBool::new(true),
            pinged: AtomicBool::new(false),
            wake: Notify::new(),
            socket_id_frame,
            membership: tokio::sync::Mutex::new(()),
            audiences: Mutex::new(Vec::new()),
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
            if self.request_close(CloseReason::Evicted) {
                metrics::counter!("messaging_sockets_evicted_total").increment(1);
                tracing::info!(socket = %self.id, "evicting slow consumer");
            }
            return Push::Refused;
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

    /// Called by the flusher for each socket it finds on its queue.
    fn flush(&self) {
        if self.wstate.load(Acquire) != W_LISTED {
            return; // its task took over (full or closing) after it was listed
        }
        let mut w = self.writer.lock();
        if self.wstate.load(Acquire) != W_LISTED {
            return;
        }
        match self.drain(&mut w, W_LISTED) {
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
    }

    /// Whether the socket's task owns writing (the socket was full, or it is closing).
    pub(crate) fn task_writes(&self) -> bool {
        self.wstate.load(Acquire) == W_TASK
    }

    /// The task's side of `flush`: writes what it can while it owns writing.
    pub(crate) fn drain_as_task(&self) -> Drain {
        let mut w = self.writer.lock();
        self.drain(&mut w, W_TASK)
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
        let of_room = |f: &Bytes| super::ws::server_frame_payload(f).starts_with(&prefix);
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
    /// writer lock held, by the current owner (`W_LISTED`: the flusher, `W_TASK`: the task).
    fn drain(&self, w: &mut Writer, owner: u8) -> Drain {
        loop {
            if w.out.is_empty() {
                // The two buffers trade places instead of being allocated by the sender and
                // freed here on every broadcast: a cross-thread free per recipient contends
                // on the allocator.
                std::mem::swap(&mut *self.outbox.lock(), &mut w.out);
                if w.out.is_empty() {
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
            }
            match write_some(&self.stream, w) {
                Ok(Some(n)) => {
                    self.queued.fetch_sub(n, Relaxed);
                }
                Ok(None) => return Drain::Full,
                Err(_) => return Drain::Failed,
            }
        }
    }
}

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
#[derive(Default)]
pub(crate) struct FlushQueue {
    list: Mutex<Vec<Arc<SocketHandle>>>,
    wake: Notify,
    closed: AtomicBool,
}

impl FlushQueue {
    fn push(&self, h: Arc<SocketHandle>) {
        let was_empty = {
            let mut list = self.list.lock();
            list.push(h);
            list.len() == 1
        };
        if was_empty {
            self.wake.notify_one();
        }
    }

    fn append(&self, hs: &mut Vec<Arc<SocketHandle>>) {
        if hs.is_empty() {
            return;
        }
        let was_empty = {
            let mut list = self.list.lock();
            let was_empty = list.is_empty();
            list.append(hs);
            was_empty
        };
        if was_empty {
            self.wake.notify_one();
        }
    }

    /// Lets the flusher end once its queue is empty.
    pub(crate) fn close(&self) {
        self.closed.store(true, Release);
        self.wake.notify_one();
    }
}

/// One flusher per socket-runtime thread: writes the sockets its queue lists, in order.
pub(crate) async fn run_flusher(q: Arc<FlushQueue>) {
    let mut batch = Vec::new();
    loop {
        std::mem::swap(&mut *q.list.lock(), &mut batch);
        if batch.is_empty() {
            if q.closed.load(Acquire) {
                return;
            }
            // A push after the swap above left a permit, so no wake-up is lost.
            q.wake.notified().await;
            continue;
        }
        for (i, h) in batch.drain(..).enumerate() {
            h.flush();
            if i % FLUSH_YIELD_EVERY == FLUSH_YIELD_EVERY - 1 {
                // Let this thread's socket tasks (reads, pongs) in during a huge room.
                tokio::task::yield_now().await;
            }
        }
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
    super::ws::text_frame(&json)
}

impl Hub {
    /// The fan-out (§5.2): one pre-framed frame to every local row of the audience.
    /// Returns the number of rows it was enqueued for.
    ///
    /// Only this node's sockets: the delivery seam (`cluster::Fanout`) carries a frame to
    /// the other nodes, each of which calls this for its own.
    pub fn deliver(&self, audience: &Audience, frame: &Bytes) -> usize {
        let started = Instant::now();
        let mut n = 0;
        // Sockets that went from idle to queued, by flush queue: each queue is appended to
        // under one lock, after the members lock is released.
        let mut listed: Vec<Vec<Arc<SocketHandle>>> = Vec::new();
        if let Some(room) = self.members.read().get(audience) {
            listed.resize_with(self.flushers.len(), Vec::new);
            for h in room.values() {
                match h.push(frame.clone()) {
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
