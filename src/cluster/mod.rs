//! The delivery seam. Everything the service layer sends (REST writes, gRPC `Delivery`,
//! attendance, blockedIp, alerts) goes through `Seam`, never to the hub directly, so that
//! delivery across nodes is one implementation of this trait and nothing else changes.
//!
//! The seam also carries the few room calls that must run on the node holding a socket
//! (join, leave, rename of a socket held elsewhere), so that any node serves any call.
//!
//! `Local` is the single-node implementation: this node's hub is the whole audience, and a
//! socket it does not hold does not exist.
use std::sync::Arc;

use bytes::Bytes;
use futures::future::BoxFuture;

use crate::error::{AppError, AppResult};
use crate::hub::{Audience, Hub};
use crate::store::NewRow;
use crate::store::entities::connections;

mod brokered;
pub mod gateway;
mod held;
mod history;
mod inbox;
mod peers;
mod wire;

pub use brokered::Cluster;
pub use gateway::Gateway;
pub use history::{History, HistoryLimits, Position};
pub use inbox::RoomChange;

/// A frame published ahead of the write it announces (see [`Seam::publish_held`]).
/// Dropping it unreleased withdraws it: it is delivered nowhere.
pub trait HeldFrame: Send + Sync {
    /// The write committed: the frame is delivered, in its place, on every node.
    fn release(self: Box<Self>);
    /// The write is still running: every node keeps the frame for another hold time (see
    /// `Settings::broker_hold`). Call it every [`Seam::extend_every`].
    fn extend(&self);
}

/// A held frame that never left this node: delivered to its sockets on release (and
/// numbered then, with a history: a withdrawn frame leaves no hole).
pub struct HeldHere {
    hub: Arc<Hub>,
    audience: Audience,
    frame: Bytes,
    history: Option<Arc<History>>,
}

impl HeldFrame for HeldHere {
    fn release(self: Box<Self>) {
        match &self.history {
            Some(h) => h.publish(&self.hub, &self.audience, &self.frame),
            None => self.hub.deliver(&self.audience, &self.frame),
        };
    }

    fn extend(&self) {}
}

/// The delivery seam: how the service reaches sockets and the nodes holding them. Named
/// apart from `hub::fanout`, the local fan-out it ends in: besides publishing it locates
/// sockets and runs the room calls a socket's holder must run.
pub trait Seam: Send + Sync + 'static {
    /// Delivers one encoded frame to every socket of `audience`, on every node. Returns the
    /// number of this node's sockets it is (or will be, from the broker) queued for. Never
    /// waits.
    fn publish(&self, audience: &Audience, frame: &Bytes) -> usize;

    /// Publishes a frame of a write that has not committed yet. Every node puts it in the
    /// audience's order now, but delivers it, and whatever follows it there, only once it is
    /// released; withdrawn (dropped), it reaches no one. [`Seam::settled`] covers it, so
    /// the broker's acknowledgement runs while the database writes, not after; the release
    /// itself is not waited for. Never waits.
    fn publish_held(&self, audience: &Audience, frame: Bytes) -> Box<dyn HeldFrame>;

    /// How often a write still running must extend its held frames; `None` when they need
    /// no extending (one node: nobody else holds them).
    fn extend_every(&self) -> Option<std::time::Duration> {
        None
    }

    /// Resolves once every frame published on this node before the call is ordered for
    /// every node (across nodes: acknowledged by the broker). A call that published awaits
    /// it before it replies, so that what its caller publishes next, through any node, comes
    /// after. `None` when there is nothing to wait for, as always on one node.
    fn settled(&self) -> Option<BoxFuture<'static, ()>> {
        None
    }

    /// Delivers to this node's sockets of `audience` only. For presence frames: each node
    /// computes attendance for its own sockets, so that the coalescing bound (one frame per
    /// socket per window) holds however many nodes changed the room.
    fn publish_local(&self, audience: &Audience, frame: &Bytes) -> usize;

    /// Tells the other nodes that a room's rows changed, so that they raise attendance for
    /// their sockets in it. This node has already raised its own.
    fn room_changed(&self, _church: &str, _room: &str, _with_blocked_ip: bool) {}

    /// This node's sockets in `audience`.
    fn local_members(&self, audience: &Audience) -> usize;

    /// `audience` got its first local socket (`has_members`) or lost its last. Across nodes this is
    /// where a node starts or stops receiving the audience's traffic; a join awaits it, so
    /// that a frame published after the join's response reaches the socket.
    fn interest(&self, _audience: &Audience, _has_members: bool) -> BoxFuture<'_, ()> {
        Box::pin(std::future::ready(()))
    }

    // The defaults of the room calls below are one process's answers: no other node holds
    // a socket, so a socket this node does not hold does not exist.

    /// The other live node holding `socket_id` (not this one), if any.
    fn locate<'a>(&'a self, _socket_id: &'a str) -> BoxFuture<'a, AppResult<Option<String>>> {
        Box::pin(std::future::ready(Ok(None)))
    }

    /// Runs the write of a join on the node holding these rows' sockets.
    fn remote_join<'a>(
        &'a self,
        _node: &'a str,
        _rows: Vec<NewRow>,
    ) -> BoxFuture<'a, AppResult<Vec<connections::Model>>> {
        Box::pin(std::future::ready(Err(AppError::NotFound(
            "Socket not found",
        ))))
    }

    /// Runs the write of a leave on the node holding the row's socket; `NotFound` when no
    /// live node holds it.
    fn remote_leave<'a>(
        &'a self,
        _node: &'a str,
        _row: connections::Model,
    ) -> BoxFuture<'a, AppResult<bool>> {
        Box::pin(std::future::ready(Err(AppError::NotFound(
            "Socket not found",
        ))))
    }

    /// Tells the node holding `socket` that some of its rows were renamed.
    fn remote_renamed<'a>(
        &'a self,
        _node: &'a str,
        _socket: &'a str,
        _ids: &'a [String],
        _name: &'a str,
    ) -> BoxFuture<'a, AppResult<()>> {
        Box::pin(std::future::ready(Ok(())))
    }

    /// The positions this seam keeps (§5.6), if it keeps them: a socket with positions
    /// joins through it. `None`: such a socket is served like any other (no `seq`, no
    /// `position`), as it is with a broker until the broker engines keep positions.
    fn history(&self) -> Option<&History> {
        None
    }

    /// Why delivery across nodes is impaired right now (the broker is unreachable), if it is.
    fn unready(&self) -> Option<String> {
        None
    }

    /// Whether frames reach other nodes at all.
    fn crosses_nodes(&self) -> bool;

    /// Whether the sockets live outside every node (API Gateway holds them, §5.5): then an
    /// audience is its rows, any instance writes any socket's rows, and attendance is sent
    /// once per invocation rather than on a timer.
    fn socketless(&self) -> bool {
        false
    }

    /// Resolves once every frame published so far has reached its sockets (or failed for
    /// good), with what that took. A socketless door awaits it before it replies: nothing
    /// may run after an invocation has returned. Immediate elsewhere.
    fn drain(&self) -> BoxFuture<'_, Drained> {
        Box::pin(std::future::ready(Drained::default()))
    }
}

/// What [`Seam::drain`] found since the previous drain.
#[derive(Debug, Default)]
pub struct Drained {
    /// Rows a frame was posted toward.
    pub posts: usize,
    /// Posts the gateway took (2xx).
    pub delivered: usize,
    /// Audiences at least one of whose rows took a frame.
    pub reached: std::collections::BTreeSet<Audience>,
    /// Rooms that lost rows because their socket was gone: their attendance is due.
    pub pruned: Vec<(String, String)>,
}

/// One node: delivery is the local hub's, positions are kept in memory.
pub struct Local {
    hub: Arc<Hub>,
    history: Arc<History>,
}

impl Local {
    pub fn new(hub: Arc<Hub>, limits: HistoryLimits) -> Self {
        Self {
            hub,
            history: Arc::new(History::new(limits)),
        }
    }
}

impl Seam for Local {
    fn publish(&self, audience: &Audience, frame: &Bytes) -> usize {
        self.history.publish(&self.hub, audience, frame)
    }

    fn history(&self) -> Option<&History> {
        Some(&self.history)
    }

    fn publish_local(&self, audience: &Audience, frame: &Bytes) -> usize {
        self.hub.deliver(audience, frame)
    }

    fn publish_held(&self, audience: &Audience, frame: Bytes) -> Box<dyn HeldFrame> {
        Box::new(HeldHere {
            hub: self.hub.clone(),
            audience: audience.clone(),
            frame,
            history: Some(self.history.clone()),
        })
    }

    fn local_members(&self, audience: &Audience) -> usize {
        self.hub.local_count(audience)
    }

    fn crosses_nodes(&self) -> bool {
        false
    }
}
