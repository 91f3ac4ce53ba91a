//! Cross-node fan-out: a small publish/subscribe interface in the style of Centrifuge's
//! `Broker`, with Redis pub/sub and NATS core behind it, and an in-process one for tests.
//!
//! # Design
//! - **Publishing never waits on the network.** [`Broker::publish`] puts the payload on a
//!   bounded in-memory queue and returns; one task per broker drains that queue onto one
//!   connection, in call order. A payload that finds the queue full, or the broker
//!   unreachable, is not taken and counted (`messaging_broker_dropped_total{reason}`).
//!   Whoever must know that the broker has ordered the payloads (a reply to the publisher)
//!   waits on [`Broker::settled`] instead.
//! - **Order.** One queue, one task, one connection: a subscriber receives the payloads one
//!   node published to one channel in the order the node published them, across any number
//!   of channels. Payloads of different publishers interleave arbitrarily.
//! - **Interest.** Channels are subscribed one by one ([`Broker::subscribe`] resolves when
//!   the server has confirmed, so anything published after that is received). Every
//!   subscribed channel is remembered and made again after a reconnect; unsubscribing
//!   forgets it. Channel names are opaque: the caller prefixes them (Redis pub/sub ignores
//!   the database index, so one Redis server is one namespace).
//! - **Outages.** Each implementation reconnects by itself with a backoff capped at 1 s,
//!   re-subscribes, and says so in one log line when the connection is lost and one when it
//!   is restored, and in the gauge `messaging_broker_connected`.
//! - **Own payloads come back.** A node subscribed to a channel it publishes to receives its
//!   own payloads (Redis, NATS and [`MemoryBroker`] alike); the caller skips them if needed.
//!
//! # What each broker guarantees
//! Both are **at-most-once**: nothing is stored, so a payload published while a subscriber
//! is disconnected (or while the publisher is) is lost, and the subscriber recovers by other
//! means (clients catch up through REST). Neither duplicates a payload.
//! - **Redis pub/sub** (`redis://host:port[/db]`): one RESP3 connection per node carries the
//!   publishes (pipelined, in order) and the subscriptions (pushed messages). Redis delivers
//!   a connection's publishes in the order it executed them. Requires Redis 6 or later.
//! - **NATS core** (`nats://host:port`): one connection per node, the `async-nats` client
//!   reconnects and re-subscribes by itself; NATS keeps per-connection publish order.
//!   Channel names are escaped into single-token subjects (no wildcards, no dots).
//!
//! The handler is called on the broker's own tasks for every payload of a subscribed
//! channel. It must return quickly (hand the payload to a queue): a slow handler holds up
//! the Redis connection (publishes included) or the NATS subscription. Redis calls it from
//! one task for all channels; NATS from one task per channel, so calls for different
//! channels may run at the same time and their relative order is not kept.
mod common;
mod memory;
mod nats_core;
mod redis_pubsub;

use std::sync::Arc;

pub use memory::{MemoryBroker, MemoryBus};

/// Called for every message received on a subscribed channel: (channel, payload).
pub type Handler = Arc<dyn Fn(&str, bytes::Bytes) + Send + Sync>;

#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    /// The broker could not be reached (or did not answer in time).
    #[error("broker unreachable: {0}")]
    Unreachable(String),
    /// The URL is neither `redis://host:port[/db]` nor `nats://host:port`.
    #[error("unsupported broker URL {0:?}: expected redis://host:port[/db] or nats://host:port")]
    BadUrl(String),
    /// The broker was closed with [`Broker::close`].
    #[error("broker closed")]
    Closed,
}

#[async_trait::async_trait]
pub trait Broker: Send + Sync + 'static {
    /// Queues one payload for `channel` and returns at once: never waits on the network.
    /// Payloads published from one node are sent in call order over one connection, so a
    /// subscriber receives one publisher's payloads to one channel in order.
    ///
    /// Returns false, and counts it, when the payload was not taken (the broker is
    /// unreachable, or the queue is full): it reaches no one, the caller may deliver it
    /// locally. Once taken, a payload the publishing task then finds no connection for is
    /// given to the handler as if it had come back (it reached no other node, and this one
    /// gets it once); one whose sending failed midway may or may not have gone out and is
    /// dropped (at-most-once).
    fn publish(&self, channel: &str, payload: bytes::Bytes) -> bool;
    /// Like `publish`, in the same order, but [`Broker::settled`] does not wait for it: for
    /// payloads nobody's reply depends on (the release of a held frame, see
    /// `cluster::brokered`). A later `settled` still covers it if an awaited payload follows.
    fn publish_unawaited(&self, channel: &str, payload: bytes::Bytes) -> bool {
        self.publish(channel, payload)
    }
    /// Resolves once every payload taken by `publish` (not `publish_unawaited`) before this
    /// call is settled: the broker has acknowledged it (Redis: the PUBLISH reply; NATS: a
    /// round trip on the same connection after it), so the broker has already placed it, in
    /// its order, on every subscriber's stream; or it was handed back or dropped. `None` when
    /// there is nothing to wait for. A reply sent after this resolves cannot overtake the
    /// payloads.
    fn settled(&self) -> Option<futures::future::BoxFuture<'static, ()>>;
    /// Starts receiving `channel`. Resolves once the broker has confirmed the subscription, so
    /// a payload published by anyone after this returns Ok is delivered to the handler. If the
    /// broker is unreachable it returns Err, but the subscription is remembered and made again
    /// on reconnect. Idempotent.
    async fn subscribe(&self, channel: &str) -> Result<(), BrokerError>;
    /// Stops receiving `channel` (forgotten for reconnects too). Idempotent.
    async fn unsubscribe(&self, channel: &str);
    /// Whether the broker is reachable right now (drives `/ready` and a metric).
    fn is_connected(&self) -> bool;
    /// Stops background tasks and closes connections.
    async fn close(&self);
}

/// `redis://host:port[/db]` or `nats://host:port`; anything else is `BadUrl`. Connects (or
/// fails with Unreachable within a few seconds) and starts the background tasks that
/// reconnect by themselves.
pub async fn connect(url: &str, handler: Handler) -> Result<Arc<dyn Broker>, BrokerError> {
    let scheme = url.split_once("://").map(|(s, _)| s.to_ascii_lowercase());
    match scheme.as_deref() {
        Some("redis") => {
            let b = redis_pubsub::RedisBroker::connect(url, handler).await?;
            Ok(b as Arc<dyn Broker>)
        }
        Some("nats") => {
            let b = nats_core::NatsBroker::connect(url, handler).await?;
            Ok(b as Arc<dyn Broker>)
        }
        _ => Err(BrokerError::BadUrl(url.to_string())),
    }
}
