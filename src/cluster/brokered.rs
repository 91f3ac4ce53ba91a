//! Several nodes as one service: `Cluster` implements the delivery seam over a broker
//! (Redis pub/sub or NATS core, `crate::broker`) and calls the node holding a socket over
//! gRPC (`messaging.v1.Node`).
//!
//! - Routing is by interest: a node subscribes to an audience's channel when the audience
//!   gets its first local socket, and unsubscribes when it loses its last. A publish to an
//!   audience nobody holds costs one broker publish.
//! - A frame is encoded once, by the publishing node: the encoded WebSocket frame travels
//!   through the broker and each receiving node queues those same bytes to its sockets.
//! - Order. While the broker is reachable, every node, the publishing one included,
//!   delivers room and person frames only from its subscription, in the order the broker
//!   put them on it; and a call that published replies only once the broker has
//!   acknowledged (`Seam::settled`), that is once the frame is on every subscriber's
//!   stream. So a publisher that sends frame n+1 after frame n's reply, through any node,
//!   has n+1 ordered after n by the broker, and every socket on every node gets them in
//!   that order, each once (a frame is never delivered both directly and from the echo).
//!   Frames of one node also go out in call order on one connection.
//! - Held frames. A post's frames are published before its write commits, held: the
//!   broker's acknowledgement then runs while the database writes, so a post waits for the
//!   longer of the two instead of their sum. Each node keeps a held frame in its place in
//!   the channel's order (`held`) and delivers it, and whatever the broker put behind it,
//!   when the publisher's release comes; the release needs no acknowledgement, since it
//!   only unblocks what is already ordered. A failed write withdraws its frames; a held
//!   frame whose release never comes (the publisher died, or lost the broker) is dropped
//!   after the hold time (`BROKER_HOLD_MS`), which the publisher extends while its write
//!   runs.
//! - While the broker is unreachable, a node delivers its own frames to its own sockets
//!   directly; they reach no other node (at-most-once), and order holds per node only.
//! - Presence: a room change is announced on the room's channel; each node holding sockets
//!   in the room raises its own coalesced attendance (see `service::presence`).
//! - Delivery across nodes is at-most-once, like delivery itself: while the broker is
//!   unreachable, local delivery goes on and frames for other nodes are dropped.
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use std::sync::atomic::{AtomicU64, Ordering};

use bytes::{BufMut, Bytes, BytesMut};
use futures::future::BoxFuture;
use parking_lot::Mutex;
use tokio::sync::mpsc;

use super::inbox::{Inbox, RoomChange};
use super::wire::{
    KIND_EXTEND, KIND_FRAME, KIND_HELD, KIND_RELEASE, KIND_ROOM_CHANGED, KIND_WITHDRAW, channel,
    message,
};
use super::{HeldFrame, HeldHere, Seam};
use crate::broker::{self, Broker};
use crate::error::AppResult;
use crate::hub::{Audience, Hub};
use crate::store::entities::connections;
use crate::store::{NewRow, Store};

/// How often each node looks for held frames past their deadline, at most.
const SWEEP_EVERY: Duration = Duration::from_millis(100);

/// Publishes a frame to every node (`Seam::publish`); returns this node's sockets in
/// `audience`.
fn publish_frame(
    inbox: &Inbox,
    broker: &dyn Broker,
    channel: &str,
    audience: &Audience,
    frame: &Bytes,
) -> usize {
    let m = message(KIND_FRAME, &inbox.node_id, frame);
    if broker.publish(channel, m) {
        // This node's sockets get it from the broker's stream too, so that frames
        // published through several nodes reach every node in one order.
        inbox.hub.local_count(audience)
    } else {
        // The broker did not take it (unreachable): it reaches no other node, and no echo
        // will come back, so this node's sockets get it now (at-most-once).
        inbox.hub.deliver(audience, frame)
    }
}

/// A "held" frame with held frames off (`BROKER_HOLD_MS=0`): nothing goes out before the
/// release, which publishes it as any frame; the reply then waits for its acknowledgement.
struct AfterCommit {
    inbox: Arc<Inbox>,
    broker: Arc<dyn Broker>,
    channel: String,
    audience: Audience,
    frame: Bytes,
}

impl HeldFrame for AfterCommit {
    fn release(self: Box<Self>) {
        publish_frame(
            &self.inbox,
            &*self.broker,
            &self.channel,
            &self.audience,
            &self.frame,
        );
    }

    fn extend(&self) {}
}

/// A held frame that went to the broker (see `Seam::publish_held`).
struct BrokerHeld {
    inbox: Arc<Inbox>,
    broker: Arc<dyn Broker>,
    channel: String,
    id: u64,
    released: bool,
}

impl BrokerHeld {
    /// Tells every node, this one included. If the broker does not take it (unreachable),
    /// the frame can only be here (handed back by the broker): it is applied here at once.
    fn signal(&self, kind: u8) {
        let m = message(kind, &self.inbox.node_id, &self.id.to_be_bytes());
        if !self.broker.publish_unawaited(&self.channel, m) {
            self.inbox
                .resolve(&self.channel, kind, (&self.inbox.node_id, self.id));
        }
    }
}

impl HeldFrame for BrokerHeld {
    fn release(mut self: Box<Self>) {
        self.released = true;
        self.signal(KIND_RELEASE);
    }

    fn extend(&self) {
        self.signal(KIND_EXTEND);
    }
}

impl Drop for BrokerHeld {
    fn drop(&mut self) {
        if !self.released {
            self.signal(KIND_WITHDRAW);
        }
    }
}

/// The delivery seam across nodes.
pub struct Cluster {
    pub(super) inbox: Arc<Inbox>,
    pub(super) broker: Arc<dyn Broker>,
    pub(super) prefix: String,
    /// Serializes subscription changes, so a subscribe and an unsubscribe of one channel
    /// cannot overtake each other on the way to the broker.
    pub(super) sub_lock: tokio::sync::Mutex<()>,
    pub(super) store: Store,
    pub(super) grpc_token: Option<String>,
    pub(super) peers: Mutex<HashMap<String, tonic::transport::Channel>>,
    /// This node's number for its next held frame.
    pub(super) next_held: AtomicU64,
    pub(super) sweeper: tokio::task::JoinHandle<()>,
}

impl Cluster {
    /// Connects to the broker. Room changes announced by other nodes arrive on the returned
    /// receiver.
    pub async fn connect(
        url: &str,
        prefix: &str,
        hub: Arc<Hub>,
        node_id: &str,
        store: Store,
        grpc_token: Option<String>,
        hold: Duration,
    ) -> anyhow::Result<(Self, mpsc::UnboundedReceiver<RoomChange>)> {
        // `hold`: zero (held frames off) or positive (`Settings::broker_hold`).
        let (tx, rx) = mpsc::unbounded_channel();
        let inbox = Arc::new(Inbox {
            hub,
            node_id: node_id.to_string(),
            subs: Mutex::default(),
            orders: Mutex::default(),
            hold,
            expired: metrics::counter!("messaging_broker_held_expired_total"),
            room_changes: tx,
        });
        let handler_inbox = Arc::downgrade(&inbox);
        let handler: broker::Handler = Arc::new(move |channel: &str, payload: Bytes| {
            if let Some(inbox) = handler_inbox.upgrade() {
                inbox.receive(channel, payload);
            }
        });
        let broker = broker::connect(url, handler)
            .await
            .map_err(|e| anyhow::anyhow!("cannot reach the broker: {e}"))?;
        let swept = Arc::downgrade(&inbox);
        let sweeper = tokio::spawn(async move {
            let period = if hold.is_zero() {
                SWEEP_EVERY
            } else {
                SWEEP_EVERY.min(hold / 4)
            };
            let mut every = tokio::time::interval(period);
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                every.tick().await;
                match swept.upgrade() {
                    Some(inbox) => inbox.sweep(),
                    None => return,
                }
            }
        });
        Ok((
            Self {
                inbox,
                broker,
                prefix: prefix.to_string(),
                sub_lock: tokio::sync::Mutex::new(()),
                store,
                grpc_token,
                peers: Mutex::default(),
                next_held: AtomicU64::new(0),
                sweeper,
            },
            rx,
        ))
    }

    pub async fn close(&self) {
        self.sweeper.abort();
        self.broker.close().await;
    }

    async fn subscribe(&self, audience: &Audience) {
        let channel = channel(&self.prefix, audience);
        if self
            .inbox
            .subs
            .lock()
            .get(&channel)
            .is_some_and(|(_, confirmed)| *confirmed)
        {
            return;
        }
        let _order = self.sub_lock.lock().await;
        {
            let mut subs = self.inbox.subs.lock();
            match subs.get(&channel) {
                Some((_, true)) => return,
                Some(_) => {}
                None => {
                    subs.insert(channel.clone(), (audience.clone(), false));
                }
            }
        }
        if let Err(e) = self.broker.subscribe(&channel).await {
            // The broker keeps it and subscribes again when it is back.
            tracing::warn!(%channel, error = %e, "subscription not confirmed");
        }
        if let Some(s) = self.inbox.subs.lock().get_mut(&channel) {
            s.1 = true;
        }
    }

    async fn unsubscribe(&self, audience: &Audience) {
        let _order = self.sub_lock.lock().await;
        // A join may have brought a socket back since the last one left.
        if self.inbox.hub.local_count(audience) > 0 {
            return;
        }
        let channel = channel(&self.prefix, audience);
        if self.inbox.subs.lock().remove(&channel).is_some() {
            self.inbox.orders.lock().forget(&channel);
            self.broker.unsubscribe(&channel).await;
        }
    }
}

impl Seam for Cluster {
    fn publish(&self, audience: &Audience, frame: &Bytes) -> usize {
        publish_frame(
            &self.inbox,
            &*self.broker,
            &channel(&self.prefix, audience),
            audience,
            frame,
        )
    }

    fn publish_held(&self, audience: &Audience, frame: Bytes) -> Box<dyn HeldFrame> {
        let channel = channel(&self.prefix, audience);
        if self.inbox.hold.is_zero() {
            // Held frames are off: published on release, after the commit, as any frame.
            return Box::new(AfterCommit {
                inbox: self.inbox.clone(),
                broker: self.broker.clone(),
                channel,
                audience: audience.clone(),
                frame,
            });
        }
        let id = self.next_held.fetch_add(1, Ordering::Relaxed);
        let mut body = BytesMut::with_capacity(8 + frame.len());
        body.put_u64(id);
        body.put_slice(&frame);
        let m = message(KIND_HELD, &self.inbox.node_id, &body);
        if self.broker.publish(&channel, m) {
            Box::new(BrokerHeld {
                inbox: self.inbox.clone(),
                broker: self.broker.clone(),
                channel,
                id,
                released: false,
            })
        } else {
            // Not taken (unreachable): it reaches no other node, so this node's sockets get
            // it on release, as `publish` does.
            Box::new(HeldHere {
                hub: self.inbox.hub.clone(),
                audience: audience.clone(),
                frame,
                history: None,
            })
        }
    }

    fn extend_every(&self) -> Option<Duration> {
        (!self.inbox.hold.is_zero()).then(|| self.inbox.hold / 4)
    }

    fn settled(&self) -> Option<BoxFuture<'static, ()>> {
        self.broker.settled()
    }

    fn publish_local(&self, audience: &Audience, frame: &Bytes) -> usize {
        self.inbox.hub.deliver(audience, frame)
    }

    fn room_changed(&self, church: &str, room: &str, with_blocked_ip: bool) {
        let m = message(
            KIND_ROOM_CHANGED,
            &self.inbox.node_id,
            &[u8::from(with_blocked_ip)],
        );
        self.broker
            .publish(&channel(&self.prefix, &Audience::room(church, room)), m);
    }

    fn local_members(&self, audience: &Audience) -> usize {
        self.inbox.hub.local_count(audience)
    }

    fn interest(&self, audience: &Audience, has_members: bool) -> BoxFuture<'_, ()> {
        let audience = audience.clone();
        Box::pin(async move {
            if has_members {
                self.subscribe(&audience).await;
            } else {
                self.unsubscribe(&audience).await;
            }
        })
    }

    fn locate<'a>(&'a self, socket_id: &'a str) -> BoxFuture<'a, AppResult<Option<String>>> {
        Box::pin(self.locate_holder(socket_id))
    }

    fn remote_join<'a>(
        &'a self,
        node: &'a str,
        rows: Vec<NewRow>,
    ) -> BoxFuture<'a, AppResult<Vec<connections::Model>>> {
        Box::pin(self.join_on(node, rows))
    }

    fn remote_leave<'a>(
        &'a self,
        node: &'a str,
        row: connections::Model,
    ) -> BoxFuture<'a, AppResult<bool>> {
        Box::pin(self.leave_on(node, row))
    }

    fn remote_renamed<'a>(
        &'a self,
        node: &'a str,
        socket: &'a str,
        ids: &'a [String],
        name: &'a str,
    ) -> BoxFuture<'a, AppResult<()>> {
        Box::pin(self.renamed_on(node, socket, ids, name))
    }

    fn unready(&self) -> Option<String> {
        (!self.broker.is_connected()).then(|| "broker unreachable".to_string())
    }

    fn crosses_nodes(&self) -> bool {
        true
    }
}
