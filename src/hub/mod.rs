//! Live sockets and fan-out: pure transport. This module is the only code that writes to
//! sockets, and it knows nothing of the database or of access rules.
//!
//! The fan-out path, start to end, is in `fanout.rs`: `Hub::deliver` pushes one
//! pre-framed `Bytes` onto each recipient's outbox and lists the sockets that were idle on
//! their flush queue; a flusher per socket-runtime thread writes them, one `writev` each.
//! The socket tasks (`socket.rs`) read, and write only a socket that was full or is closing.
//!
//! The hub keeps, per audience (a room, or one person's alerts), the local sockets in it
//! (`members`), so selecting a room's local sockets is a map lookup. The service layer
//! decides membership (it writes the rows, then mirrors them here under the socket's
//! `membership` lock) and is told through `SocketEvents` when a socket ends.
mod fanout;
pub mod frame;
mod reader;
mod socket;

pub use fanout::{CAP_FACTOR, EvictionCause, SocketHandle, encode_frame};

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering::*};
use std::time::Duration;

use bytes::Bytes;
use futures::future::BoxFuture;
use parking_lot::{Mutex, RwLock};
use tokio::net::TcpStream;
use tokio_util::task::TaskTracker;

use fanout::FlushQueue;

/// Tunables of the socket layer.
#[derive(Debug, Clone)]
pub struct HubConfig {
    /// Bytes queued and not yet taken by the kernel that a socket may hold. A frame past it
    /// makes its sender write the socket; the socket is evicted (1013) only if the kernel
    /// refuses while it is still over, for `stall` or up to `CAP_FACTOR` times this (see
    /// `fanout::SocketHandle::catch_up`).
    pub max_queued_bytes: usize,
    /// How long the kernel must refuse every write to a socket over `max_queued_bytes`
    /// before the socket is evicted (see `fanout::SocketHandle::catch_up`).
    pub stall: Duration,
    /// Inbound messages (all fragments together) larger than this close the socket with 1009.
    pub max_inbound_frame: usize,
    /// How long a server-initiated close waits for the client's close frame.
    pub close_wait: Duration,
    pub ping_interval: Duration,
    /// Worker threads of the socket runtime; 0 picks half the cores (at least one).
    pub socket_threads: usize,
    /// Nice steps the socket-runtime threads run below the process (0 = the same priority
    /// as requests).
    pub socket_nice: i32,
    /// Least time between two writes to a socket fed faster than one frame per interval
    /// (0: write as soon as listed).
    pub flush_interval: Duration,
    /// Open sockets (and upgrades in progress) past which an upgrade is refused with 503.
    pub max_sockets: usize,
}

impl Default for HubConfig {
    fn default() -> Self {
        Self {
            max_queued_bytes: 1 << 20,
            stall: Duration::from_secs(1),
            max_inbound_frame: 4096,
            close_wait: Duration::from_secs(1),
            ping_interval: Duration::from_secs(30),
            socket_threads: 0,
            socket_nice: DEFAULT_SOCKET_NICE,
            flush_interval: DEFAULT_FLUSH_INTERVAL,
            max_sockets: default_max_sockets(),
        }
    }
}

/// How many nice steps below the process the socket threads run by default: none. At a
/// lower priority they lost their core to any other busy thread (a client on the same
/// machine, the request path), which cost 5 ms of p99 at a chat's rate and made the writers,
/// not the work, set the latency under load. What the lower priority used to buy (a
/// publisher outrunning the writers could not starve them) is now `Hub::backlog`'s: a
/// publisher waits for the writers once they are behind. Measurements: BENCHMARKS.md,
/// session 17.
pub const DEFAULT_SOCKET_NICE: i32 = 0;

/// Least time between two writes to a socket fed faster than one frame per interval (see
/// `fanout::run_flusher`); by default none: every frame is written as soon as a socket
/// thread gets to it, and writes carry several frames only when there is a backlog (frames
/// that arrive while a pass over the room runs leave together). A fixed interval delayed
/// every frame of a busy room by up to the interval even on an idle machine: at 500 msg/s
/// into 1000 sockets, 25 ms doubled the p50 (BENCHMARKS.md, session 17).
pub const DEFAULT_FLUSH_INTERVAL: Duration = Duration::ZERO;

/// Lowers the calling thread's scheduling priority by `nice` steps, as `nice -n` would
/// (Linux: the nice value is per thread). Lowering needs no privilege; a failure leaves the
/// thread as it was.
fn lower_priority(nice: i32) {
    if nice <= 0 {
        return;
    }
    #[cfg(target_os = "linux")]
    {
        // SAFETY: plain integers; `0` names the calling thread. glibc's getpriority returns
        // the nice value itself and cannot fail for these arguments.
        let rc = unsafe {
            let current = libc::getpriority(libc::PRIO_PROCESS, 0);
            libc::setpriority(libc::PRIO_PROCESS, 0, (current + nice).min(19))
        };
        if rc != 0 {
            let error = std::io::Error::last_os_error();
            tracing::warn!(nice, %error, "socket thread priority not lowered");
        }
    }
}

/// File descriptors this process may open, less a reserve for HTTP requests, the database
/// pool, the broker and the listeners: past that, an accept or a query would fail with
/// EMFILE instead of one upgrade being refused cleanly.
pub fn default_max_sockets() -> usize {
    const RESERVE: usize = 1024;
    let soft = std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|s| {
            let line = s.lines().find(|l| l.starts_with("Max open files"))?;
            line.split_whitespace().nth(3)?.parse::<usize>().ok()
        })
        .unwrap_or(4096);
    soft.saturating_sub(RESERVE).max(64)
}

/// Who a delivery targets: a room, or one person's `alerts` rows.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
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
}

/// The actions a frame may carry (§3.2); the server sends no other.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    SocketId,
    Message,
    ConversationActivity,
    DeleteMessage,
    Reaction,
    Callout,
    Attendance,
    BlockedIp,
    PrivateMessage,
    Notification,
    /// To one socket with positions: frames of an audience it will not get (§5.6).
    Gap,
}

impl Action {
    pub const ALL: [Action; 11] = [
        Action::SocketId,
        Action::Message,
        Action::ConversationActivity,
        Action::DeleteMessage,
        Action::Reaction,
        Action::Callout,
        Action::Attendance,
        Action::BlockedIp,
        Action::PrivateMessage,
        Action::Notification,
        Action::Gap,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Action::SocketId => "socketId",
            Action::Message => "message",
            Action::ConversationActivity => "conversationActivity",
            Action::DeleteMessage => "deleteMessage",
            Action::Reaction => "reaction",
            Action::Callout => "callout",
            Action::Attendance => "attendance",
            Action::BlockedIp => "blockedIp",
            Action::PrivateMessage => "privateMessage",
            Action::Notification => "notification",
            Action::Gap => "gap",
        }
    }

    /// The one parser of an action name (exact, case-sensitive, as on the wire).
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|a| a.as_str() == name)
    }
}

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

/// What the hub tells the layer above. Registered once by the service layer.
pub trait SocketEvents: Send + Sync + 'static {
    /// A socket ended (closed, evicted, terminated) and is no longer in any audience; its
    /// `membership` lock is free. `audiences` are those it was in.
    fn socket_ended(
        &self,
        socket: Arc<SocketHandle>,
        audiences: Vec<Audience>,
    ) -> BoxFuture<'static, ()>;
}

/// A place among `max_sockets`, held from the upgrade until the socket's task ends.
pub struct SocketPermit(Arc<AtomicUsize>);

impl Drop for SocketPermit {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Relaxed);
    }
}

/// The local sockets of one audience, by socket id.
type Members = HashMap<Arc<str>, Arc<SocketHandle>>;

pub struct Hub {
    pub config: HubConfig,
    /// The runtime the flushers and every socket task run on, apart from the one serving
    /// requests: on a shared runtime the next request's work would queue behind a whole
    /// wave of writes. It gets half the cores by default: writers that can take every core
    /// delay the next publish, and each write then carries fewer frames (on 2 cores, one
    /// socket thread delivered `fanout-1k` about twice as fast as two). Owned here, so two
    /// applications in one process never share it; taken out by `shutdown`.
    runtime: Mutex<Option<tokio::runtime::Runtime>>,
    handle: tokio::runtime::Handle,
    /// Every socket task, so that shutdown can wait for them.
    tasks: TaskTracker,
    /// Open sockets plus upgrades in progress, against `config.max_sockets`.
    slots: Arc<AtomicUsize>,
    sockets: RwLock<HashMap<Arc<str>, Arc<SocketHandle>>>,
    members: RwLock<HashMap<Audience, Members>>,
    local_rows: AtomicUsize,
    /// One flush queue (and flusher task) per socket-runtime thread; sockets are spread
    /// over them round-robin.
    flushers: Vec<Arc<FlushQueue>>,
    next_flusher: AtomicUsize,
    events: RwLock<Option<Arc<dyn SocketEvents>>>,
}

impl Drop for Hub {
    fn drop(&mut self) {
        self.shutdown();
    }
}

impl Hub {
    pub fn new(config: HubConfig) -> std::io::Result<Arc<Self>> {
        let threads = match config.socket_threads {
            0 => std::thread::available_parallelism().map_or(1, |n| (n.get() / 2).max(1)),
            n => n,
        };
        let nice = config.socket_nice;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .thread_name("sockets")
            .on_thread_start(move || lower_priority(nice))
            .on_thread_park(crate::memory::on_park)
            .enable_all()
            .build()?;
        let handle = runtime.handle().clone();
        let flushers: Vec<Arc<FlushQueue>> = (0..threads)
            .map(|_| Arc::new(FlushQueue::default()))
            .collect();
        for q in &flushers {
            handle.spawn(fanout::run_flusher(q.clone(), config.flush_interval));
        }
        // Every eviction cause is a series from the start, so that a rate over it reads 0,
        // not "no data", until the first eviction; likewise the open sockets until the first.
        for cause in EvictionCause::ALL {
            metrics::counter!("messaging_sockets_evicted_total", "cause" => cause.as_str())
                .increment(0);
        }
        metrics::gauge!("messaging_sockets_open").set(0.0);
        Ok(Arc::new(Self {
            config,
            runtime: Mutex::new(Some(runtime)),
            handle,
            tasks: TaskTracker::new(),
            slots: Arc::default(),
            sockets: RwLock::default(),
            members: RwLock::default(),
            local_rows: AtomicUsize::new(0),
            flushers,
            next_flusher: AtomicUsize::new(0),
            events: RwLock::default(),
        }))
    }

    /// Registers the listener of socket events (the service layer).
    pub fn set_events(&self, events: Arc<dyn SocketEvents>) {
        *self.events.write() = Some(events);
    }

    /// A place for one more socket, or `None` at `max_sockets`.
    pub fn try_reserve(&self) -> Option<SocketPermit> {
        let max = self.config.max_sockets;
        self.slots
            .fetch_update(AcqRel, Relaxed, |n| (n < max).then_some(n + 1))
            .ok()
            .map(|_| SocketPermit(self.slots.clone()))
    }

    /// Runs an upgraded connection's socket task on the socket runtime.
    pub fn spawn_socket(
        self: &Arc<Self>,
        stream: std::net::TcpStream,
        early: Bytes,
        permit: SocketPermit,
        positions: bool,
    ) {
        let hub = self.clone();
        self.tasks.spawn_on(
            async move {
                let _permit = permit;
                // Registers the stream with the socket runtime's own reactor.
                match TcpStream::from_std(stream) {
                    Ok(stream) => socket::run_socket(hub, stream, early, positions).await,
                    Err(e) => tracing::debug!(error = %e, "websocket registration failed"),
                }
            },
            &self.handle,
        );
    }

    /// A new socket with a fresh CSPRNG id. `stream` must be registered with the socket
    /// runtime.
    fn register_socket(&self, stream: TcpStream, positions: bool) -> Arc<SocketHandle> {
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
            self.config.stall,
            flusher,
            positions,
        ));
        sockets.insert(id, h.clone());
        metrics::gauge!("messaging_sockets_open").set(sockets.len() as f64);
        h
    }

    pub fn socket(&self, id: &str) -> Option<Arc<SocketHandle>> {
        self.sockets.read().get(id).cloned()
    }

    /// `writev`s to this hub's sockets so far (frames written in one count once).
    pub fn socket_writes(&self) -> u64 {
        self.flushers.iter().map(|q| q.writes()).sum()
    }

    /// Sockets of this hub evicted as slow consumers so far.
    pub fn evictions(&self) -> u64 {
        EvictionCause::ALL
            .iter()
            .map(|c| self.evictions_for(*c))
            .sum()
    }

    /// Sockets of this hub evicted for `cause` so far.
    pub fn evictions_for(&self, cause: EvictionCause) -> u64 {
        self.flushers.iter().map(|q| q.evictions(cause)).sum()
    }

    /// Sockets over their bound that a sender wrote itself because their writer was behind,
    /// so far (each one a socket the old rule would have evicted; see `fanout::catch_up`).
    pub fn catch_up_writes(&self) -> u64 {
        self.flushers.iter().map(|q| q.catch_ups()).sum()
    }

    pub fn socket_count(&self) -> usize {
        self.sockets.read().len()
    }

    pub fn has_socket(&self, id: &str) -> bool {
        self.sockets.read().contains_key(id)
    }

    /// Every live socket, for the sweep and the lease's re-registration.
    pub fn sockets(&self) -> Vec<Arc<SocketHandle>> {
        self.sockets.read().values().cloned().collect()
    }

    /// Adds a socket to an audience; returns whether it is the audience's first local
    /// socket. Call with the socket's membership lock held.
    pub fn add_member(&self, h: &Arc<SocketHandle>, audience: Audience) -> bool {
        let mut members = self.members.write();
        let room = members.entry(audience.clone()).or_default();
        let first = room.is_empty();
        if room.insert(h.id.clone(), h.clone()).is_none() {
            self.local_rows.fetch_add(1, Relaxed);
            h.audiences.lock().push(audience);
        }
        metrics::gauge!("messaging_rows").set(self.local_rows.load(Relaxed) as f64);
        first
    }

    /// Removes a socket from an audience; returns whether that left the audience without
    /// local sockets. Call with the socket's membership lock held.
    pub fn remove_member(&self, socket_id: &str, audience: &Audience) -> bool {
        let mut members = self.members.write();
        let mut emptied = false;
        let mut left = None;
        if let Some(room) = members.get_mut(audience) {
            if let Some(h) = room.remove(socket_id) {
                self.local_rows.fetch_sub(1, Relaxed);
                h.audiences.lock().retain(|a| a != audience);
                left = Some(h);
            }
            if room.is_empty() {
                members.remove(audience);
                emptied = true;
            }
        }
        drop(members);
        // No frame of the room reaches the socket from here on: drop what is still queued
        // (outside the members lock, which every broadcast takes).
        if let (Some(h), Audience::Room { church, room }) = (left, audience) {
            h.drop_room_frames(church, room);
        }
        metrics::gauge!("messaging_rows").set(self.local_rows.load(Relaxed) as f64);
        emptied
    }

    /// Number of this node's sockets in an audience.
    pub fn local_count(&self, audience: &Audience) -> usize {
        self.members.read().get(audience).map_or(0, HashMap::len)
    }

    /// After a socket ended: forget it, take it out of every audience, then tell the
    /// service layer (which deletes its rows).
    async fn socket_ended(&self, h: &Arc<SocketHandle>) {
        {
            let mut sockets = self.sockets.write();
            sockets.remove(&h.id);
            metrics::gauge!("messaging_sockets_open").set(sockets.len() as f64);
        }
        let audiences = {
            let _guard = h.membership.lock().await;
            let audiences = std::mem::take(&mut *h.audiences.lock());
            for a in &audiences {
                self.remove_member(&h.id, a);
            }
            audiences
        };
        let events = self.events.read().clone();
        if let Some(events) = events {
            events.socket_ended(h.clone(), audiences).await;
        }
    }

    /// One ping round (§2.2): terminate sockets that stayed silent since the last ping,
    /// ping the rest. One shared ping frame serves every socket.
    pub fn ping_round(&self) {
        let ping = frame::ping_frame();
        for h in self.sockets() {
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

    /// Asks every socket to close with 1001 and waits (bounded) until their tasks have
    /// ended, rows deleted.
    pub async fn close_all(&self, within: Duration) {
        for h in self.sockets() {
            h.request_close(CloseReason::Shutdown);
        }
        self.tasks.close();
        if tokio::time::timeout(within, self.tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                left = self.tasks.len(),
                "socket tasks still running after {within:?}"
            );
        }
    }

    /// Stops the flushers and the socket runtime, and lets go of the event listener (which
    /// holds the service layer). Idempotent; never blocks.
    pub fn shutdown(&self) {
        for q in &self.flushers {
            q.close();
        }
        self.events.write().take();
        if let Some(rt) = self.runtime.lock().take() {
            rt.shutdown_background();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The nice value of the thread this runs on, from procfs.
    #[cfg(target_os = "linux")]
    fn own_nice() -> i32 {
        let stat = std::fs::read_to_string("/proc/thread-self/stat").expect("procfs");
        // Fields after the command name (which may hold spaces): state is field 3, nice 19.
        let rest = &stat[stat.rfind(')').expect("comm") + 2..];
        rest.split_whitespace()
            .nth(19 - 3)
            .and_then(|n| n.parse().ok())
            .expect("nice field")
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn socket_threads_run_at_the_configured_nice_value_and_requests_keep_theirs() {
        let base = own_nice();
        for nice in [0, 7] {
            let hub = Hub::new(HubConfig {
                socket_threads: 1,
                socket_nice: nice,
                ..HubConfig::default()
            })
            .expect("hub");
            let (tx, rx) = std::sync::mpsc::channel();
            hub.handle.spawn(async move {
                let _ = tx.send(own_nice());
            });
            let seen = rx
                .recv_timeout(Duration::from_secs(10))
                .expect("a socket thread answered");
            assert_eq!(
                seen,
                (base + nice).min(19),
                "socket thread, SOCKET_NICE={nice}"
            );
            // The thread that built the hub (a request thread, in the service) is untouched.
            assert_eq!(own_nice(), base);
        }
    }
}
