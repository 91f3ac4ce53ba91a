//! Live sockets and fan-out. This module is the only code that writes to sockets.
//!
//! The fan-out path, start to end, is `Hub::deliver`: the frame is serialized and framed
//! once, then the same `Bytes` is pushed onto each recipient's outbox (a per-socket lock that
//! only that socket's writer also takes, plus an atomic byte count). Nothing on that path
//! awaits, takes a shared lock per recipient or touches the database; a recipient whose
//! outbox exceeds its byte bound is marked for eviction and its own task closes it. The
//! socket tasks (`ws.rs`) run on `socket_runtime` and write each outbox with one `writev`.
//!
//! The hub mirrors this node's rows of the `connections` table in memory (`members`), so
//! selecting a room's local rows is a map lookup. The database stays the record: rows are
//! written first and mirrored after the commit, under the socket's membership lock, so the
//! two cannot diverge through concurrent joins and leaves of one socket.
pub mod attendance;
pub mod ws;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering::*};
use std::time::{Duration, Instant};

use bytes::Bytes;
use parking_lot::{Mutex, RwLock};
use serde::Serialize;
use tokio::sync::Notify;

use crate::store::Store;

/// Tunables of the socket layer.
#[derive(Debug, Clone)]
pub struct HubConfig {
    /// Bytes queued and not yet written after which a socket is evicted (1013).
    pub max_queued_bytes: usize,
    /// Inbound frames larger than this close the socket with 1009.
    pub max_inbound_frame: usize,
    pub ping_interval: Duration,
    /// Attendance windows: `small` up to `big_room_rows` rows, `big` above.
    pub attendance_window: Duration,
    pub attendance_window_big: Duration,
    pub big_room_rows: usize,
    pub roster_cap: usize,
    /// Worker threads of the socket runtime; 0 picks half the cores (at least one).
    pub socket_threads: usize,
}

impl Default for HubConfig {
    fn default() -> Self {
        Self {
            max_queued_bytes: 1 << 20,
            max_inbound_frame: 4096,
            ping_interval: Duration::from_secs(30),
            attendance_window: Duration::from_millis(100),
            attendance_window_big: Duration::from_secs(1),
            big_room_rows: 100,
            roster_cap: 100,
            socket_threads: 0,
        }
    }
}

/// The runtime every socket task runs on, apart from the one serving requests: a fan-out
/// wakes every recipient's writer at once, and on a shared runtime the next request's work
/// would queue behind that whole wave. It gets half the cores by default: socket writers
/// that can take every core delay the next publish, and each write then carries fewer
/// frames (on 2 cores, one socket thread delivered `fanout-1k` about twice as fast as two).
/// Built once per process; the first caller's thread count wins.
pub fn socket_runtime(threads: usize) -> &'static tokio::runtime::Runtime {
    static RT: std::sync::OnceLock<tokio::runtime::Runtime> = std::sync::OnceLock::new();
    RT.get_or_init(|| {
        let threads = match threads {
            0 => std::thread::available_parallelism().map_or(1, |n| (n.get() / 2).max(1)),
            n => n,
        };
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .thread_name("sockets")
            .enable_all()
            .build()
            .expect("socket runtime")
    })
}

/// Who a delivery targets: a room, or one person's `alerts` rows.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Audience {
    Room { church: String, room: String },
    Person { church: String, person: String },
}

impl Audience {
    pub fn room(church: &str, room: &str) -> Self {
        Audience::Room {
            church: church.to_string(),
            room: room.to_string(),
        }
    }

    /// The `alerts` rows of one person.
    pub fn person(church: &str, person: &str) -> Self {
        Audience::Person {
            church: church.to_string(),
            person: person.to_string(),
        }
    }

    /// The audience a `connections` row belongs to.
    pub fn of_row(church: &str, room: &str, person: Option<&str>) -> Self {
        match (room, person) {
            (ALERTS, Some(p)) => Audience::person(church, p),
            _ => Audience::room(church, room),
        }
    }
}

pub const ALERTS: &str = "alerts";

/// Why a socket is being closed by the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// Its queue overflowed (1013).
    Evicted,
    /// It missed a pong, or it ended on its own: no close handshake.
    Terminated,
    /// The node is shutting down (1001).
    Shutdown,
}

const OPEN: u8 = 0;

/// The hub's handle on one live socket. Senders touch only its outbox (a short,
/// per-socket, practically uncontended lock) and atomics; they never wait.
pub struct SocketHandle {
    pub id: Arc<str>,
    /// Frames queued and not yet taken by the writer. An empty `VecDeque` holds no
    /// allocation, so an idle socket's queue costs nothing.
    outbox: Mutex<std::collections::VecDeque<Bytes>>,
    queued: AtomicUsize,
    max_queued: usize,
    state: AtomicU8,
    alive: AtomicBool,
    pinged: AtomicBool,
    /// Wakes the writer: frames queued into an empty outbox, or a close request.
    pub(crate) wake: Notify,
    /// The socket-id reply, framed once when the socket opens.
    socket_id_frame: Bytes,
    /// Serializes row changes of this socket (join, leave, close) so that the database
    /// and the in-memory mirror change together. Held across awaits, so it is async.
    pub membership: tokio::sync::Mutex<()>,
    /// The audiences this socket is mirrored in.
    audiences: Mutex<Vec<Audience>>,
}

impl SocketHandle {
    /// Queues a frame without waiting. Returns false if the socket is closing, or if this
    /// frame pushed it over its bound (it is then evicted).
    pub fn enqueue(&self, frame: Bytes) -> bool {
        if self.state.load(Relaxed) != OPEN {
            return false;
        }
        let len = frame.len();
        if self.queued.fetch_add(len, Relaxed) + len > self.max_queued {
            self.queued.fetch_sub(len, Relaxed);
            if self.request_close(CloseReason::Evicted) {
                metrics::counter!("messaging_sockets_evicted_total").increment(1);
                tracing::info!(socket = %self.id, "evicting slow consumer");
            }
            return false;
        }
        let first = {
            let mut out = self.outbox.lock();
            out.push_back(frame);
            out.len() == 1
        };
        // Only the frame that makes the outbox non-empty needs to wake the writer: it
        // takes everything queued when it runs.
        if first {
            self.wake.notify_one();
        }
        true
    }

    /// Everything queued, leaving the outbox empty (and unallocated).
    fn take_queued(&self) -> std::collections::VecDeque<Bytes> {
        std::mem::take(&mut *self.outbox.lock())
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

    fn mark_alive(&self) {
        self.alive.store(true, Relaxed);
    }

    fn frames_taken(&self, n: usize) {
        static WRITTEN: std::sync::OnceLock<metrics::Counter> = std::sync::OnceLock::new();
        WRITTEN
            .get_or_init(|| metrics::counter!("messaging_frames_written_total"))
            .increment(n as u64);
    }

    fn written(&self, bytes: usize) {
        self.queued.fetch_sub(bytes, Relaxed);
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

/// Serializes and frames one envelope. Called once per delivery, never per recipient.
pub fn encode_frame<T: Serialize + ?Sized>(
    church_id: &str,
    conversation_id: &str,
    action: &str,
    data: &T,
) -> Bytes {
    let json = serde_json::to_vec(&Envelope {
        church_id,
        conversation_id,
        action,
        data,
    })
    .unwrap_or_default();
    ws::text_frame(&json)
}

/// The local sockets of one audience, by socket id.
type Members = HashMap<Arc<str>, Arc<SocketHandle>>;

pub struct Hub {
    pub node_id: String,
    pub config: HubConfig,
    pub store: Store,
    sockets: RwLock<HashMap<Arc<str>, Arc<SocketHandle>>>,
    members: RwLock<HashMap<Audience, Members>>,
    local_rows: AtomicUsize,
    attendance: attendance::Coalescer,
}

impl Hub {
    pub fn new(node_id: String, config: HubConfig, store: Store) -> Arc<Self> {
        Arc::new(Self {
            node_id,
            config,
            store,
            sockets: RwLock::default(),
            members: RwLock::default(),
            local_rows: AtomicUsize::new(0),
            attendance: attendance::Coalescer::default(),
        })
    }

    /// A new socket with a fresh CSPRNG id.
    fn register_socket(&self) -> Arc<SocketHandle> {
        let mut sockets = self.sockets.write();
        // Ids are 66 random bits; the loop only guards the theoretical collision.
        let id: Arc<str> = loop {
            let id: Arc<str> = crate::ids::new_id().into();
            if !sockets.contains_key(&id) {
                break id;
            }
        };
        let socket_id_frame = encode_frame("", "", "socketId", &*id);
        let h = Arc::new(SocketHandle {
            id: id.clone(),
            outbox: Mutex::default(),
            queued: AtomicUsize::new(0),
            max_queued: self.config.max_queued_bytes,
            state: AtomicU8::new(OPEN),
            alive: AtomicBool::new(true),
            pinged: AtomicBool::new(false),
            wake: Notify::new(),
            socket_id_frame,
            membership: tokio::sync::Mutex::new(()),
            audiences: Mutex::new(Vec::new()),
        });
        sockets.insert(id, h.clone());
        metrics::gauge!("messaging_sockets_open").set(sockets.len() as f64);
        h
    }

    pub fn socket(&self, id: &str) -> Option<Arc<SocketHandle>> {
        self.sockets.read().get(id).cloned()
    }

    pub fn socket_count(&self) -> usize {
        self.sockets.read().len()
    }

    pub fn holds_socket(&self, id: &str) -> bool {
        self.sockets.read().contains_key(id)
    }

    /// Mirrors a committed row. Call with the socket's membership lock held.
    pub fn add_member(&self, h: &Arc<SocketHandle>, audience: Audience) {
        let mut members = self.members.write();
        let room = members.entry(audience.clone()).or_default();
        if room.insert(h.id.clone(), h.clone()).is_none() {
            self.local_rows.fetch_add(1, Relaxed);
            h.audiences.lock().push(audience);
        }
        metrics::gauge!("messaging_rows").set(self.local_rows.load(Relaxed) as f64);
    }

    /// Drops a mirrored row. Call with the socket's membership lock held.
    pub fn remove_member(&self, socket_id: &str, audience: &Audience) {
        let mut members = self.members.write();
        if let Some(room) = members.get_mut(audience) {
            if let Some(h) = room.remove(socket_id) {
                self.local_rows.fetch_sub(1, Relaxed);
                h.audiences.lock().retain(|a| a != audience);
            }
            if room.is_empty() {
                members.remove(audience);
            }
        }
        metrics::gauge!("messaging_rows").set(self.local_rows.load(Relaxed) as f64);
    }

    /// Number of this node's sockets in an audience.
    pub fn local_count(&self, audience: &Audience) -> usize {
        self.members.read().get(audience).map_or(0, HashMap::len)
    }

    /// The fan-out (§5.2): one pre-framed frame to every local row of the audience.
    /// Returns the number of rows it was enqueued for.
    ///
    /// Rows held by other nodes are skipped here; node-to-node forwarding through the
    /// `Delivery` service plugs in at this point.
    pub fn deliver(&self, audience: &Audience, frame: &Bytes) -> usize {
        let started = Instant::now();
        let mut n = 0;
        if let Some(room) = self.members.read().get(audience) {
            for h in room.values() {
                if h.enqueue(frame.clone()) {
                    n += 1;
                }
            }
        }
        metrics::counter!("messaging_frames_enqueued_total").increment(n as u64);
        metrics::histogram!("messaging_fanout_seconds").record(started.elapsed().as_secs_f64());
        n
    }

    /// Serializes once, then fans out to a room.
    pub fn send_to_room<T: Serialize + ?Sized>(
        &self,
        church_id: &str,
        room: &str,
        action: &str,
        data: &T,
    ) -> usize {
        let frame = encode_frame(church_id, room, action, data);
        self.deliver(&Audience::room(church_id, room), &frame)
    }

    /// Serializes once, then delivers to a person's `alerts` rows.
    pub fn send_to_person<T: Serialize + ?Sized>(
        &self,
        church_id: &str,
        person_id: &str,
        conversation_id: &str,
        action: &str,
        data: &T,
    ) -> usize {
        let frame = encode_frame(church_id, conversation_id, action, data);
        self.deliver(&Audience::person(church_id, person_id), &frame)
    }

    /// After a socket ended: unmirror it, delete all its rows and raise attendance for
    /// every affected room but `alerts` (§2.2).
    async fn socket_ended(self: &Arc<Self>, h: &Arc<SocketHandle>) {
        {
            let mut sockets = self.sockets.write();
            sockets.remove(&h.id);
            metrics::gauge!("messaging_sockets_open").set(sockets.len() as f64);
        }
        let _guard = h.membership.lock().await;
        let audiences = std::mem::take(&mut *h.audiences.lock());
        for a in &audiences {
            self.remove_member(&h.id, a);
        }
        match self.store.delete_socket_rows(&h.id).await {
            Ok(rooms) => {
                for (church, room) in rooms {
                    self.trigger_attendance(&church, &room, false);
                }
            }
            Err(e) => {
                // The sweep removes the rows of sockets this node no longer holds.
                tracing::warn!(socket = %h.id, error = %e, "could not delete rows of ended socket");
                for a in audiences {
                    if let Audience::Room { church, room } = a {
                        self.trigger_attendance(&church, &room, false);
                    }
                }
            }
        }
    }

    /// One ping round (§2.2): terminate sockets that stayed silent since the last ping,
    /// ping the rest. One shared ping frame serves every socket.
    pub fn ping_round(&self) {
        let ping = ws::ping_frame();
        let sockets: Vec<_> = self.sockets.read().values().cloned().collect();
        for h in sockets {
            if h.pinged.load(Relaxed) && !h.alive.load(Relaxed) {
                tracing::debug!(socket = %h.id, "no pong: terminating");
                h.request_close(CloseReason::Terminated);
                continue;
            }
            h.alive.store(false, Relaxed);
            h.pinged.store(true, Relaxed);
            h.enqueue(ping.clone());
        }
    }

    /// Every live socket id, for the sweep.
    pub fn socket_ids(&self) -> std::collections::HashSet<String> {
        self.sockets.read().keys().map(|k| k.to_string()).collect()
    }

    /// Asks every socket to close with 1001 and waits (bounded) until their tasks have
    /// cleaned up.
    pub async fn close_all(&self, within: Duration) {
        let sockets: Vec<_> = self.sockets.read().values().cloned().collect();
        for h in &sockets {
            h.request_close(CloseReason::Shutdown);
        }
        let deadline = Instant::now() + within;
        while self.socket_count() > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}
