//! The delivery seam. Everything the service layer sends (REST writes, gRPC `Delivery`,
//! attendance, blockedIp, alerts) goes through `Fanout`, never to the hub directly, so that
//! delivery across nodes is one implementation of this trait and nothing else changes.
//!
//! `Local` is the single-node implementation: this node's hub is the whole audience.
use std::sync::Arc;

use bytes::Bytes;
use futures::future::BoxFuture;

use crate::hub::{Audience, Hub};

pub trait Fanout: Send + Sync + 'static {
    /// Delivers one encoded frame to every socket of `audience`, on every node. Returns the
    /// number of this node's sockets it was queued for. Never waits.
    fn publish(&self, audience: &Audience, frame: &Bytes) -> usize;

    /// Delivers to this node's sockets of `audience` only. For presence frames: each node
    /// computes attendance for its own sockets, so that the coalescing bound (one frame per
    /// socket per window) holds however many nodes changed the room.
    fn publish_local(&self, audience: &Audience, frame: &Bytes) -> usize;

    /// Tells the other nodes that a room's rows changed, so that they raise attendance for
    /// their sockets in it. This node has already raised its own.
    fn room_changed(&self, church: &str, room: &str, with_blocked_ip: bool);

    /// This node's sockets in `audience`.
    fn local_members(&self, audience: &Audience) -> usize;

    /// `audience` got its first local socket (`held`) or lost its last. Across nodes this is
    /// where a node starts or stops receiving the audience's traffic; a join awaits it, so
    /// that a frame published after the join's response reaches the socket.
    fn interest(&self, audience: &Audience, held: bool) -> BoxFuture<'_, ()>;
}

/// One node: delivery is the local hub's.
pub struct Local {
    hub: Arc<Hub>,
}

impl Local {
    pub fn new(hub: Arc<Hub>) -> Self {
        Self { hub }
    }
}

impl Fanout for Local {
    fn publish(&self, audience: &Audience, frame: &Bytes) -> usize {
        self.hub.deliver(audience, frame)
    }

    fn publish_local(&self, audience: &Audience, frame: &Bytes) -> usize {
        self.hub.deliver(audience, frame)
    }

    fn room_changed(&self, _church: &str, _room: &str, _with_blocked_ip: bool) {}

    fn local_members(&self, audience: &Audience) -> usize {
        self.hub.local_count(audience)
    }

    fn interest(&self, _audience: &Audience, _held: bool) -> BoxFuture<'_, ()> {
        Box::pin(std::future::ready(()))
    }
}
