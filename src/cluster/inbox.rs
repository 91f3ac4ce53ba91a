//! What arrives from the broker: each node's per-channel order of frames (held frames
//! included), fed by its subscriptions and drained into its hub.
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use parking_lot::Mutex;
use tokio::sync::mpsc;

use super::held::Orders;
use super::wire::{
    KIND_EXTEND, KIND_FRAME, KIND_HELD, KIND_RELEASE, KIND_ROOM_CHANGED, KIND_WITHDRAW, parse,
    split_id,
};
use crate::hub::{Audience, Hub};

/// A room's rows changed on another node: `(church, room, with_blocked_ip)`.
pub type RoomChange = (String, String, bool);

/// What the broker's handler needs: shared by the handler and `Cluster`.
pub(super) struct Inbox {
    pub(super) hub: Arc<Hub>,
    pub(super) node_id: String,
    /// Subscribed channels and whose they are; `true` once the broker confirmed.
    pub(super) subs: Mutex<HashMap<String, (Audience, bool)>>,
    /// The channels holding frames. Every delivery of a room or person frame happens under
    /// this lock, so that the receiving task, the sweeper and a local release cannot
    /// interleave one channel's frames.
    pub(super) orders: Mutex<Orders>,
    /// How long a held frame waits for its release (or next extension).
    pub(super) hold: Duration,
    pub(super) expired: metrics::Counter,
    pub(super) room_changes: mpsc::UnboundedSender<RoomChange>,
}

impl Inbox {
    pub(super) fn receive(&self, channel: &str, payload: Bytes) {
        let Some((kind, origin, body)) = parse(&payload) else {
            tracing::debug!(%channel, "malformed broker message");
            return;
        };
        // Attendance is this node's own and already raised; its own frames, though, are
        // delivered here like everyone's, in the broker's order (see `publish`).
        if kind == KIND_ROOM_CHANGED && origin == self.node_id {
            return;
        }
        let Some(audience) = self.subs.lock().get(channel).map(|(a, _)| a.clone()) else {
            return; // unsubscribed meanwhile
        };
        let deliver = &mut |a: &Audience, f: &Bytes| {
            self.hub.deliver(a, f);
        };
        match (kind, &audience) {
            (KIND_FRAME, _) => self.orders.lock().frame(channel, &audience, body, deliver),
            (KIND_HELD, _) => {
                if let Some((id, frame)) = split_id(body) {
                    let deadline = Instant::now() + self.hold;
                    let key = (origin, id);
                    self.orders
                        .lock()
                        .hold(channel, &audience, key, frame, deadline);
                }
            }
            (KIND_RELEASE | KIND_WITHDRAW | KIND_EXTEND, _) => {
                if let Some((id, _)) = split_id(body) {
                    self.resolve(channel, kind, (origin, id));
                }
            }
            (KIND_ROOM_CHANGED, Audience::Room { church, room }) => {
                let with_blocked_ip = body.first() == Some(&1);
                let _ = self
                    .room_changes
                    .send((church.clone(), room.clone(), with_blocked_ip));
            }
            _ => {}
        }
    }

    /// Applies a release, withdrawal or extension to this node's order of `channel`.
    pub(super) fn resolve(&self, channel: &str, kind: u8, key: (&str, u64)) {
        let deliver = &mut |a: &Audience, f: &Bytes| {
            self.hub.deliver(a, f);
        };
        let mut orders = self.orders.lock();
        match kind {
            KIND_RELEASE => orders.release(channel, key, deliver),
            KIND_WITHDRAW => orders.withdraw(channel, key, deliver),
            _ => orders.extend(channel, key, Instant::now() + self.hold),
        }
    }

    /// Drops held frames past their deadline.
    pub(super) fn sweep(&self) {
        let mut orders = self.orders.lock();
        if orders.is_empty() {
            return;
        }
        let dropped = orders.expire(Instant::now(), &mut |a, f| {
            self.hub.deliver(a, f);
        });
        drop(orders);
        if dropped > 0 {
            self.expired.increment(dropped as u64);
            tracing::debug!(dropped, "held frames expired without their release");
        }
    }
}
