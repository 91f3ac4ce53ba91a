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
//!   acknowledged (`Fanout::settled`), that is once the frame is on every subscriber's
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
use std::time::Instant;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use futures::future::BoxFuture;
use parking_lot::Mutex;
use tokio::sync::mpsc;

use super::held::Orders;
use super::{Fanout, HeldFrame, HeldHere};
use crate::broker::{self, Broker};
use crate::error::{AppError, AppResult};
use crate::hub::{Audience, Hub};
use crate::pb;
use crate::store::entities::connections;
use crate::store::{NewRow, Store};

const KIND_FRAME: u8 = 1;
const KIND_ROOM_CHANGED: u8 = 2;
/// A held frame: its number (u64, big-endian), then the frame.
const KIND_HELD: u8 = 3;
/// The release, withdrawal or extension of a held frame: its number.
const KIND_RELEASE: u8 = 4;
const KIND_WITHDRAW: u8 = 5;
const KIND_EXTEND: u8 = 6;

/// How often each node looks for held frames past their deadline, at most.
const SWEEP_EVERY: Duration = Duration::from_millis(100);

/// A room's rows changed on another node: `(church, room, with_blocked_ip)`.
pub type RoomChange = (String, String, bool);

/// A broker channel name part: NATS subjects split on `.` and reserve `*`, `>` and white
/// space, so everything but `[A-Za-z0-9_-]` is written as `~` and two hex digits.
fn escape(out: &mut String, s: &str) {
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b == b'_' || b == b'-' {
            out.push(b as char);
        } else {
            out.push_str(&format!("~{b:02x}"));
        }
    }
}

fn channel(prefix: &str, audience: &Audience) -> String {
    let (kind, church, name) = match audience {
        Audience::Room { church, room } => ("r", church, room),
        Audience::Person { church, person } => ("p", church, person),
    };
    let mut c = String::with_capacity(prefix.len() + church.len() + name.len() + 8);
    c.push_str(prefix);
    c.push('.');
    c.push_str(kind);
    c.push('.');
    escape(&mut c, church);
    c.push('.');
    escape(&mut c, name);
    c
}

fn message(kind: u8, origin: &str, body: &[u8]) -> Bytes {
    let mut m = BytesMut::with_capacity(2 + origin.len() + body.len());
    m.put_u8(kind);
    m.put_u8(origin.len() as u8);
    m.put_slice(origin.as_bytes());
    m.put_slice(body);
    m.freeze()
}

/// `(kind, origin, body)` of a broker message.
fn parse(m: &Bytes) -> Option<(u8, &str, Bytes)> {
    let kind = *m.first()?;
    let len = *m.get(1)? as usize;
    let origin = std::str::from_utf8(m.get(2..2 + len)?).ok()?;
    Some((kind, origin, m.slice(2 + len..)))
}

/// A held frame's number, and what follows it in the message body.
fn split_id(mut body: Bytes) -> Option<(u64, Bytes)> {
    (body.len() >= 8).then(|| (body.get_u64(), body))
}

/// What the broker's handler needs: shared by the handler and `Cluster`.
struct Inbox {
    hub: Arc<Hub>,
    node_id: String,
    /// Subscribed channels and whose they are; `true` once the broker confirmed.
    subs: Mutex<HashMap<String, (Audience, bool)>>,
    /// The channels holding frames. Every delivery of a room or person frame happens under
    /// this lock, so that the receiving task, the sweeper and a local release cannot
    /// interleave one channel's frames.
    orders: Mutex<Orders>,
    /// How long a held frame waits for its release (or next extension).
    hold: Duration,
    expired: metrics::Counter,
    room_changes: mpsc::UnboundedSender<RoomChange>,
}

impl Inbox {
    fn receive(&self, channel: &str, payload: Bytes) {
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
    fn resolve(&self, channel: &str, kind: u8, key: (&str, u64)) {
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
    fn sweep(&self) {
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

/// Publishes a frame to every node (`Fanout::publish`); returns this node's sockets in
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

/// A held frame that went to the broker (see `Fanout::publish_held`).
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
    inbox: Arc<Inbox>,
    broker: Arc<dyn Broker>,
    prefix: String,
    /// Serializes subscription changes, so a subscribe and an unsubscribe of one channel
    /// cannot overtake each other on the way to the broker.
    sub_lock: tokio::sync::Mutex<()>,
    store: Store,
    grpc_token: Option<String>,
    peers: Mutex<HashMap<String, tonic::transport::Channel>>,
    /// This node's number for its next held frame.
    next_held: AtomicU64,
    sweeper: tokio::task::JoinHandle<()>,
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

    /// A gRPC client of another node's `Node` service (connections are kept per node).
    async fn peer(
        &self,
        node: &str,
    ) -> AppResult<pb::node_client::NodeClient<tonic::transport::Channel>> {
        let cached = self.peers.lock().get(node).cloned();
        let channel = match cached {
            Some(c) => c,
            None => {
                let address = self
                    .store
                    .live_node_address(node, crate::time::now_ms())
                    .await?
                    .ok_or(AppError::NotFound("Socket not found"))?;
                let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{address}"))
                    .map_err(|e| AppError::Internal(format!("node {node} address: {e}")))?
                    .connect_timeout(Duration::from_secs(2))
                    .timeout(Duration::from_secs(10));
                let c = endpoint.connect_lazy();
                self.peers.lock().insert(node.to_string(), c.clone());
                c
            }
        };
        Ok(pb::node_client::NodeClient::new(channel))
    }

    fn request<T>(&self, msg: T) -> tonic::Request<T> {
        let mut req = tonic::Request::new(msg);
        if let Some(t) = &self.grpc_token
            && let Ok(v) = format!("Bearer {t}").parse()
        {
            req.metadata_mut().insert("authorization", v);
        }
        req
    }

    /// A failed call to another node: `NOT_FOUND` is the holder's `Socket not found`;
    /// anything else means the node is unreachable and its connection is dropped.
    fn peer_error(&self, node: &str, s: tonic::Status) -> AppError {
        if s.code() == tonic::Code::NotFound {
            return AppError::NotFound("Socket not found");
        }
        self.peers.lock().remove(node);
        AppError::Internal(format!("node {node}: {}", s.message()))
    }
}

impl Fanout for Cluster {
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

    fn interest(&self, audience: &Audience, held: bool) -> BoxFuture<'_, ()> {
        let audience = audience.clone();
        Box::pin(async move {
            if held {
                self.subscribe(&audience).await;
            } else {
                self.unsubscribe(&audience).await;
            }
        })
    }

    fn locate<'a>(&'a self, socket_id: &'a str) -> BoxFuture<'a, AppResult<Option<String>>> {
        Box::pin(async move {
            let now = crate::time::now_ms();
            let nodes = self.store.live_nodes(now).await?;
            let asks =
                nodes
                    .into_iter()
                    .filter(|n| *n != self.inbox.node_id)
                    .map(|node| async move {
                        let mut client = self.peer(&node).await.ok()?;
                        let req = self.request(pb::HoldsRequest {
                            socket_id: socket_id.to_string(),
                        });
                        match client.holds(req).await {
                            Ok(r) => r.into_inner().held.then_some(node),
                            Err(s) => {
                                let _ = self.peer_error(&node, s);
                                None
                            }
                        }
                    });
            Ok(futures::future::join_all(asks)
                .await
                .into_iter()
                .flatten()
                .next())
        })
    }

    fn remote_join<'a>(
        &'a self,
        node: &'a str,
        rows: Vec<NewRow>,
    ) -> BoxFuture<'a, AppResult<Vec<connections::Model>>> {
        Box::pin(async move {
            let req = self.request(pb::NodeJoinRequest {
                rows: rows
                    .into_iter()
                    .map(|r| pb::NewConnection {
                        church_id: r.church_id,
                        conversation_id: r.room,
                        socket_id: r.socket_id,
                        person_id: r.person_id,
                        display_name: r.display_name,
                        ip_address: r.ip_address,
                    })
                    .collect(),
            });
            let reply = self
                .peer(node)
                .await?
                .join(req)
                .await
                .map_err(|s| self.peer_error(node, s))?;
            reply
                .into_inner()
                .connections
                .into_iter()
                .map(|r| {
                    connections::Model::try_from(r).map_err(|_| {
                        AppError::Internal(format!("node {node} sent an unreadable row"))
                    })
                })
                .collect()
        })
    }

    fn remote_leave<'a>(
        &'a self,
        node: &'a str,
        row: connections::Model,
    ) -> BoxFuture<'a, AppResult<bool>> {
        Box::pin(async move {
            let req = self.request(pb::NodeLeaveRequest {
                row: Some(row.into()),
            });
            let reply = self
                .peer(node)
                .await?
                .leave(req)
                .await
                .map_err(|s| self.peer_error(node, s))?;
            Ok(reply.into_inner().removed)
        })
    }

    fn remote_renamed<'a>(
        &'a self,
        node: &'a str,
        socket: &'a str,
        ids: &'a [String],
        name: &'a str,
    ) -> BoxFuture<'a, AppResult<()>> {
        Box::pin(async move {
            let req = self.request(pb::NodeRenamedRequest {
                socket_id: socket.to_string(),
                row_ids: ids.to_vec(),
                name: name.to_string(),
            });
            self.peer(node)
                .await?
                .renamed(req)
                .await
                .map_err(|s| self.peer_error(node, s))?;
            Ok(())
        })
    }

    fn unready(&self) -> Option<String> {
        (!self.broker.is_connected()).then(|| "broker unreachable".to_string())
    }

    fn crosses_nodes(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channels_are_safe_subjects() {
        let c = channel("p1", &Audience::room("Ch 1", "a.b*>c"));
        assert_eq!(c, "p1.r.Ch~201.a~2eb~2a~3ec");
        let c = channel("p1", &Audience::person("C", "P-1_x"));
        assert_eq!(c, "p1.p.C.P-1_x");
    }

    #[test]
    fn messages_round_trip() {
        let m = message(KIND_FRAME, "NODE0000001", b"\x81\x02hi");
        let (kind, origin, body) = parse(&m).unwrap();
        assert_eq!(
            (kind, origin, &body[..]),
            (KIND_FRAME, "NODE0000001", &b"\x81\x02hi"[..])
        );
        assert!(parse(&Bytes::from_static(&[1, 200, b'x'])).is_none());
    }
}
