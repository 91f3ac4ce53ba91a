//! An in-process broker: several "nodes" of one test process share a [`MemoryBus`].
//!
//! Same contract as the network brokers (queued publish in call order, confirmed
//! subscribe, at-most-once, own payloads come back), plus [`MemoryBroker::set_connected`]
//! to play an outage.
use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use bytes::Bytes;
use parking_lot::RwLock;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::common::{Counters, Link, PUBLISH_QUEUE};
use super::{Broker, BrokerError, Handler};

/// The shared medium: what one broker publishes reaches every connected broker of the same
/// bus subscribed to the channel.
#[derive(Clone, Default)]
pub struct MemoryBus {
    nodes: Arc<RwLock<Vec<Arc<Node>>>>,
    next_id: Arc<AtomicU64>,
}

struct Node {
    id: u64,
    channels: RwLock<HashSet<String>>,
    up: AtomicBool,
    /// This node's deliveries, in the order they were published.
    inbox: mpsc::Sender<(Arc<str>, Bytes)>,
}

impl Node {
    fn wants(&self, channel: &str) -> bool {
        self.up.load(Ordering::Acquire) && self.channels.read().contains(channel)
    }
}

pub struct MemoryBroker {
    bus: MemoryBus,
    node: Arc<Node>,
    link: Link,
    counters: Counters,
    delivery: JoinHandle<()>,
}

impl MemoryBus {
    pub fn new() -> Self {
        Self::default()
    }

    /// A new node on this bus, connected. Needs a Tokio runtime (it spawns the delivery task).
    pub fn connect(&self, handler: Handler) -> Arc<MemoryBroker> {
        let (inbox, mut rx) = mpsc::channel::<(Arc<str>, Bytes)>(PUBLISH_QUEUE);
        let node = Arc::new(Node {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            channels: RwLock::default(),
            up: AtomicBool::new(true),
            inbox,
        });
        let counters = Counters::new();
        let delivery = {
            let node = node.clone();
            let received = counters.received.clone();
            tokio::spawn(async move {
                while let Some((channel, payload)) = rx.recv().await {
                    // Checked again on delivery: an unsubscribe (or outage) in between wins.
                    if node.wants(&channel) {
                        received.increment(1);
                        handler(&channel, payload);
                    }
                }
            })
        };
        self.nodes.write().push(node.clone());
        let link = Link::new("memory");
        link.set(true, "");
        Arc::new(MemoryBroker {
            bus: self.clone(),
            node,
            link,
            counters,
            delivery,
        })
    }
}

impl MemoryBroker {
    /// A broker on a bus of its own.
    pub fn new(handler: Handler) -> Arc<Self> {
        MemoryBus::new().connect(handler)
    }

    /// Plays an outage (`false`) and the broker's return (`true`): while down, publishes are
    /// dropped and nothing is delivered to this node; subscriptions are kept.
    pub fn set_connected(&self, up: bool) {
        self.node.up.store(up, Ordering::Release);
        self.link
            .set(up, if up { "" } else { "outage played by a test" });
    }
}

#[async_trait::async_trait]
impl Broker for MemoryBroker {
    fn publish(&self, channel: &str, payload: Bytes) -> bool {
        if !self.node.up.load(Ordering::Acquire) {
            self.counters.dropped_disconnected.increment(1);
            return false;
        }
        let channel: Arc<str> = channel.into();
        for node in self.bus.nodes.read().iter() {
            if node.wants(&channel)
                && node
                    .inbox
                    .try_send((channel.clone(), payload.clone()))
                    .is_err()
            {
                self.counters.dropped_overflow.increment(1);
            }
        }
        self.counters.published.increment(1);
        true
    }

    /// Publishing places the payload on every subscriber's queue at once: nothing to wait for.
    fn settled(&self) -> Option<futures::future::BoxFuture<'static, ()>> {
        None
    }

    async fn subscribe(&self, channel: &str) -> Result<(), BrokerError> {
        if self.delivery.is_finished() {
            return Err(BrokerError::Closed);
        }
        self.node.channels.write().insert(channel.to_string());
        if self.node.up.load(Ordering::Acquire) {
            Ok(())
        } else {
            Err(BrokerError::Unreachable("outage played by a test".into()))
        }
    }

    async fn unsubscribe(&self, channel: &str) {
        self.node.channels.write().remove(channel);
    }

    fn is_connected(&self) -> bool {
        self.node.up.load(Ordering::Acquire) && !self.delivery.is_finished()
    }

    async fn close(&self) {
        let id = self.node.id;
        self.bus.nodes.write().retain(|n| n.id != id);
        self.node.up.store(false, Ordering::Release);
        self.delivery.abort();
        self.link.closed();
    }
}

impl Drop for MemoryBroker {
    fn drop(&mut self) {
        let id = self.node.id;
        self.bus.nodes.write().retain(|n| n.id != id);
        self.delivery.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn collector() -> (Handler, mpsc::UnboundedReceiver<(String, Bytes)>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let handler: Handler = Arc::new(move |ch: &str, p: Bytes| {
            let _ = tx.send((ch.to_string(), p));
        });
        (handler, rx)
    }

    async fn next(rx: &mut mpsc::UnboundedReceiver<(String, Bytes)>) -> Option<(String, Bytes)> {
        tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .ok()
            .flatten()
    }

    #[tokio::test]
    async fn nodes_on_one_bus_exchange_in_order_and_outages_drop() {
        let bus = MemoryBus::new();
        let (ha, _ra) = collector();
        let (hb, mut rb) = collector();
        let a = bus.connect(ha);
        let b = bus.connect(hb);
        assert!(b.subscribe("room").await.is_ok());
        for i in 0..100u32 {
            a.publish("room", Bytes::from(i.to_string()));
        }
        a.publish("elsewhere", Bytes::from_static(b"x"));
        for i in 0..100u32 {
            let (ch, p) = next(&mut rb).await.expect("delivery");
            assert_eq!((ch.as_str(), &p[..]), ("room", i.to_string().as_bytes()));
        }

        b.set_connected(false);
        assert!(!b.is_connected());
        a.publish("room", Bytes::from_static(b"lost"));
        assert!(b.subscribe("other").await.is_err());
        b.set_connected(true);
        a.publish("other", Bytes::from_static(b"kept"));
        let (ch, p) = next(&mut rb).await.expect("delivery after the outage");
        assert_eq!((ch.as_str(), &p[..]), ("other", &b"kept"[..]));

        b.unsubscribe("room").await;
        a.publish("room", Bytes::from_static(b"gone"));
        a.publish("other", Bytes::from_static(b"marker"));
        let (ch, _) = next(&mut rb).await.expect("marker");
        assert_eq!(ch, "other");
        a.close().await;
        b.close().await;
    }
}
