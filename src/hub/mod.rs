//! Live sockets and fan-out. This module is the only code that writes to sockets.
//!
//! The fan-out path, start to end, is in `fanout.rs`: `Hub::deliver` pushes one
//! pre-framed `Bytes` onto each recipient's outbox and lists the sockets that were idle on
//! their flush queue; a flusher per socket-runtime thread writes them, one `writev` each.
//! The socket tasks (`ws.rs`) read, and write only a socket that was full or is closing.
//!
//! The hub mirrors this node's rows of the `connections` table in memory (`members`), so
//! selecting a room's local rows is a map lookup. The database stays the record: rows are
//! written first and mirrored after the commit, under the socket's membership lock, so the
//! two cannot diverge through concurrent joins and leaves of one socket.
pub mod attendance;
mod fanout;
pub mod ws;

pub use fanout::{SocketHandle, encode_frame};

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering::*};
use std::time::{Duration, Instant};

use parking_lot::RwLock;
use tokio::net::TcpStream;

use fanout::FlushQueue;

use crate::store::Store;

/// Tunables of the socket layer.
#[derive(Debug, Clone)]
pub struct HubConfig {
    /// Bytes queued and not yet written after which a socket is evicted (1013).
    pub max_queued_bytes: usize,
    /// Inbound messages (all fragments together) larger than this close the socket with 1009.
    pub max_inbound_frame: usize,
    /// How long a server-initiated close waits for the client's close frame.
    pub close_wait: Duration,
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
            close_wait: Duration::from_secs(1),
            ping_interval: Duration::from_secs(30),
            attendance_window: Duration::from_millis(100),
            attendance_window_big: Duration::from_secs(1),
            big_room_rows: 100,
            roster_cap: 100,
            socket_threads: 0,
        }
    }
}

/// The runtime the flushers and every socket task run on, apart from the one serving
/// requests: on a shared runtime the next request's work would queue behind a whole wave
/// of writes. It gets half the cores by default: writers that can take every core delay
/// the next publish, and each write then carries fewer frames (on 2 cores, one socket
/// thread delivered `fanout-1k` about twice as fast as two).
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
    /// One flush queue (and flusher task) per socket-runtime thread; sockets are spread
    /// over them round-robin.
    flushers: Vec<Arc<FlushQueue>>,
    next_flusher: AtomicUsize,
}

impl Drop for Hub {
    fn drop(&mut self) {
        for q in &self.flushers {
            q.close();
        }
    }
}

impl Hub {
    pub fn new(node_id: String, config: HubConfig, store: Store) -> Arc<Self> {
        let rt = socket_runtime(config.socket_threads);
        let flushers: Vec<Arc<FlushQueue>> = (0..rt.metrics().num_workers())
            .map(|_| Arc::new(FlushQueue::default()))
            .collect();
        for q in &flushers {
            rt.spawn(fanout::run_flusher(q.clone()));
        }
        Arc::new(Self {
            node_id,
            config,
            store,
            sockets: RwLock::default(),
            members: RwLock::default(),
            local_rows: AtomicUsize::new(0),
            attendance: attendance::Coalescer::default(),
            flushers,
            next_flusher: AtomicUsize::new(0),
        })
    }

    /// A new socket with a fresh CSPRNG id. `stream` must be registered with the socket
    /// runtime.
    fn register_socket(&self, stream: TcpStream) -> Arc<SocketHandle> {
        let i = self.next_flusher.fetch_add(1, Relaxed) % self.flushers.len();
        let flusher = (i, self.flushers[i].clone());
        let mut sockets = self.sockets.write();
        // Ids are 66 random bits; the loop only guards the theoretical collision.
        let id: Arc<str> = loop {
            let id: Arc<str> = crate::ids::new_id().into();
            if !sockets.contains_key(&id) {
                break id;
            }
        };
        let h = Arc::new(SocketHandle::new(
            id.clone(),
            stream,
            self.config.max_queued_bytes,
            flusher,
        ));
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
