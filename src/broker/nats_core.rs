//! NATS core over one `async-nats` client per node.
//!
//! The client owns the reconnect loop and re-sends every live subscription after it
//! reconnects; this module only tunes its backoff and ping interval, maps its events to
//! the log and gauge, confirms subscriptions with a round trip (see [`Probe`]), and keeps
//! publishing off the caller (and off the client's command channel while it is
//! disconnected, which would otherwise fill up and then wait).
use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use async_nats::connection::State;
use async_nats::{Client, ConnectOptions, Event, ServerAddr};
use bytes::Bytes;
use futures::StreamExt;
use futures::future::BoxFuture;
use parking_lot::Mutex;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::common::{CONNECT_TIMEOUT, Counters, Link, PublishDrain, PublishQueue, backoff};
use super::{Broker, BrokerError, Handler};

/// The client PINGs this often and drops the connection after two unanswered: a peer that
/// vanished without closing the socket is noticed within a few seconds, not minutes.
const PING_INTERVAL: Duration = Duration::from_secs(2);

pub(super) struct NatsBroker {
    client: Client,
    handler: Handler,
    link: Arc<Link>,
    counters: Counters,
    queue: PublishQueue,
    /// Remembered subscriptions. The client re-subscribes them after a reconnect; dropping
    /// one (its task ends, the `Subscriber` is dropped) unsubscribes it.
    subs: tokio::sync::Mutex<HashMap<String, Sub>>,
    publisher: Mutex<Option<JoinHandle<()>>>,
    probe: Arc<Probe>,
    probe_task: JoinHandle<()>,
    closed: AtomicBool,
    shutdown: CancellationToken,
}

/// Confirms that the server has processed this connection's earlier commands.
///
/// `Client::flush` only waits for the socket write, not for the server, so a SUB followed
/// by `flush()` can still lose a payload another node publishes right after. NATS handles a
/// connection's commands in order, so a payload this node publishes to its own inbox and
/// receives back proves that every SUB sent before it is in force.
struct Probe {
    subject: String,
    next: AtomicU64,
    waiters: Mutex<BTreeMap<u64, oneshot::Sender<()>>>,
}

impl Probe {
    /// Probes come back in the order they were sent: one arriving answers it and every
    /// earlier one still waiting.
    async fn run(self: Arc<Self>, mut subscriber: async_nats::Subscriber) {
        while let Some(message) = subscriber.next().await {
            let Some(token) = std::str::from_utf8(&message.payload)
                .ok()
                .and_then(|t| t.parse::<u64>().ok())
            else {
                continue;
            };
            let answered = {
                let mut waiters = self.waiters.lock();
                let later = waiters.split_off(&(token + 1));
                std::mem::replace(&mut *waiters, later)
            };
            for (_, waiter) in answered {
                let _ = waiter.send(());
            }
        }
    }

    async fn confirm(&self, client: &Client) -> Result<(), BrokerError> {
        let token = self.next.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.waiters.lock().insert(token, tx);
        let round_trip = async {
            client
                .publish(self.subject.clone(), Bytes::from(token.to_string()))
                .await
                .map_err(unreachable)?;
            rx.await.map_err(|_| BrokerError::Closed)
        };
        let result = tokio::time::timeout(CONNECT_TIMEOUT, round_trip).await;
        self.waiters.lock().remove(&token);
        match result {
            Ok(r) => r,
            Err(_) => Err(unreachable("nats did not answer the round trip in time")),
        }
    }
}

struct Sub {
    task: JoinHandle<()>,
    active: Arc<AtomicBool>,
}

fn unreachable(e: impl std::fmt::Display) -> BrokerError {
    BrokerError::Unreachable(e.to_string())
}

/// A channel name as one NATS subject token. Channel names are opaque to the broker, but
/// subjects give meaning to `.` (token separator), `*` and `>` (wildcards), `$` (system
/// prefixes) and whitespace: those bytes, `~` itself and any non-ASCII byte become `~XX`.
/// The mapping is injective, so two channels never share a subject.
pub(super) fn subject(channel: &str) -> String {
    if channel.is_empty() {
        // No escaped name is a lone `~` (escapes are three bytes).
        return "~".into();
    }
    let mut s = String::with_capacity(channel.len());
    for b in channel.bytes() {
        if b.is_ascii_graphic() && !matches!(b, b'.' | b'*' | b'>' | b'~' | b'$') {
            s.push(b as char);
        } else {
            let _ = write!(s, "~{b:02X}");
        }
    }
    s
}

impl NatsBroker {
    pub async fn connect(url: &str, handler: Handler) -> Result<Arc<Self>, BrokerError> {
        let addr: ServerAddr = url
            .parse()
            .map_err(|_| BrokerError::BadUrl(url.to_string()))?;
        if addr.scheme() != "nats" {
            return Err(BrokerError::BadUrl(url.to_string()));
        }
        let link = Arc::new(Link::new("nats"));
        let events = link.clone();
        let options = ConnectOptions::new()
            .connection_timeout(CONNECT_TIMEOUT)
            .ping_interval(PING_INTERVAL)
            // The client counts attempts from 1; the first one goes at once.
            .reconnect_delay_callback(|attempts| {
                backoff(u32::try_from(attempts.saturating_sub(1)).unwrap_or(u32::MAX))
            })
            .max_reconnects(None)
            .event_callback(move |event| {
                let link = events.clone();
                async move {
                    match event {
                        Event::Connected => link.set(true, ""),
                        Event::Disconnected => link.set(false, "connection closed"),
                        Event::SlowConsumer(sid) => {
                            tracing::warn!(sid, "nats dropped messages of a slow subscription")
                        }
                        Event::ServerError(e) => tracing::warn!(error = %e, "nats server error"),
                        other => tracing::debug!(event = %other, "nats event"),
                    }
                }
            });
        let client = options.connect(addr).await.map_err(unreachable)?;
        link.set(true, "");
        let probe = Arc::new(Probe {
            subject: client.new_inbox(),
            next: AtomicU64::new(0),
            waiters: Mutex::new(BTreeMap::new()),
        });
        let probe_sub = client
            .subscribe(probe.subject.clone())
            .await
            .map_err(unreachable)?;
        let probe_task = tokio::spawn(probe.clone().run(probe_sub));
        let counters = Counters::new();
        let (queue, rx) = PublishQueue::new(counters.clone());
        let shutdown = CancellationToken::new();
        let publisher = tokio::spawn(publish_loop(
            client.clone(),
            probe.clone(),
            handler.clone(),
            rx,
            counters.clone(),
            shutdown.clone(),
        ));
        Ok(Arc::new(Self {
            client,
            handler,
            link,
            counters,
            queue,
            subs: tokio::sync::Mutex::new(HashMap::new()),
            publisher: Mutex::new(Some(publisher)),
            probe,
            probe_task,
            closed: AtomicBool::new(false),
            shutdown,
        }))
    }
}

/// Most payloads handed to the client before one confirming round trip.
const BATCH: usize = 512;

/// Hands the queue to the client in order, then settles each batch with one round trip.
/// While the client is disconnected its command channel is not drained, so payloads are
/// handed back here instead of piling up there.
///
/// `Client::flush` would not do to settle: it resolves once the bytes are written to the
/// socket, before the server has read them, so a payload another node publishes right
/// after the reply could still be processed first. The server handles one connection's
/// messages in order and, while handling a PUB, queues the message to every subscriber
/// before it reads the next; so once the probe published after a batch comes back, the
/// whole batch sits in every subscriber's stream ahead of anything published later.
async fn publish_loop(
    client: Client,
    probe: Arc<Probe>,
    handler: Handler,
    mut queue: PublishDrain,
    counters: Counters,
    shutdown: CancellationToken,
) {
    let mut batch = Vec::with_capacity(BATCH);
    loop {
        let n = tokio::select! {
            _ = shutdown.cancelled() => return,
            n = queue.recv_many(&mut batch, BATCH) => n,
        };
        if n == 0 {
            return;
        }
        let (mut sent, mut awaited_sent) = (0u64, 0u64);
        for (channel, payload, awaited) in batch.drain(..) {
            if client.connection_state() != State::Connected {
                // Not sent: this node's sockets get it once, through the handler.
                counters.dropped_disconnected.increment(1);
                handler(&channel, payload);
                continue;
            }
            // A failed publish never reached the client's queue, so it was not sent either.
            match client.publish(subject(&channel), payload.clone()).await {
                Ok(()) => {
                    sent += 1;
                    awaited_sent += u64::from(awaited);
                }
                Err(e) => {
                    counters.dropped_error.increment(1);
                    tracing::debug!(error = %e, "nats publish failed");
                    handler(&channel, payload);
                }
            }
        }
        // A batch of unawaited payloads only needs no round trip: nobody waits for them, and
        // the next awaited payload's confirmation covers them too (same connection, in order).
        if awaited_sent > 0 {
            let confirmed = tokio::select! {
                _ = shutdown.cancelled() => return,
                r = probe.confirm(&client) => r,
            };
            match confirmed {
                Ok(()) => counters.published.increment(sent),
                // Sent but unconfirmed: it may still arrive, or not (at-most-once).
                Err(e) => tracing::debug!(error = %e, payloads = sent, "nats publish unconfirmed"),
            }
        } else {
            counters.published.increment(sent);
        }
        queue.settle(n);
    }
}

async fn receive(
    mut subscriber: async_nats::Subscriber,
    channel: String,
    handler: Handler,
    active: Arc<AtomicBool>,
    counters: Counters,
) {
    while let Some(message) = subscriber.next().await {
        if !active.load(Ordering::Acquire) {
            return;
        }
        counters.received.increment(1);
        handler(&channel, message.payload);
    }
}

#[async_trait::async_trait]
impl Broker for NatsBroker {
    fn publish(&self, channel: &str, payload: Bytes) -> bool {
        self.queue.push(channel, payload, self.is_connected(), true)
    }

    fn publish_unawaited(&self, channel: &str, payload: Bytes) -> bool {
        self.queue
            .push(channel, payload, self.is_connected(), false)
    }

    fn settled(&self) -> Option<BoxFuture<'static, ()>> {
        self.queue.settled()
    }

    async fn subscribe(&self, channel: &str) -> Result<(), BrokerError> {
        if self.shutdown.is_cancelled() {
            return Err(BrokerError::Closed);
        }
        {
            let mut subs = self.subs.lock().await;
            if !subs.contains_key(channel) {
                // Only queues a SUB command: while disconnected the client keeps it and
                // sends it on reconnect, which is how the subscription is remembered.
                let subscriber =
                    tokio::time::timeout(CONNECT_TIMEOUT, self.client.subscribe(subject(channel)))
                        .await
                        .map_err(|_| unreachable("nats client busy"))?
                        .map_err(unreachable)?;
                let active = Arc::new(AtomicBool::new(true));
                let task = tokio::spawn(receive(
                    subscriber,
                    channel.to_string(),
                    self.handler.clone(),
                    active.clone(),
                    self.counters.clone(),
                ));
                subs.insert(channel.to_string(), Sub { task, active });
            }
        }
        if !self.is_connected() {
            return Err(unreachable("reconnecting to nats"));
        }
        self.probe.confirm(&self.client).await
    }

    async fn unsubscribe(&self, channel: &str) {
        let sub = self.subs.lock().await.remove(channel);
        if let Some(sub) = sub {
            sub.active.store(false, Ordering::Release);
            sub.task.abort();
            // Once the task has ended its Subscriber is dropped, which sends UNSUB, and the
            // handler is not running for this channel any more.
            let _ = sub.task.await;
        }
    }

    fn is_connected(&self) -> bool {
        !self.closed.load(Ordering::Acquire) && self.client.connection_state() == State::Connected
    }

    async fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.shutdown.cancel();
        self.probe_task.abort();
        let publisher = self.publisher.lock().take();
        if let Some(task) = publisher {
            let _ = task.await;
        }
        let subs = std::mem::take(&mut *self.subs.lock().await);
        for sub in subs.into_values() {
            sub.active.store(false, Ordering::Release);
            sub.task.abort();
            let _ = sub.task.await;
        }
        let _ = tokio::time::timeout(CONNECT_TIMEOUT, self.client.drain()).await;
        self.link.closed();
    }
}

impl Drop for NatsBroker {
    fn drop(&mut self) {
        self.shutdown.cancel();
        self.probe_task.abort();
        if let Ok(subs) = self.subs.try_lock() {
            for sub in subs.values() {
                sub.task.abort();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::subject;

    #[test]
    fn subjects_are_single_tokens_and_distinct() {
        assert_eq!(subject("room-1_A"), "room-1_A");
        assert_eq!(subject("a.b"), "a~2Eb");
        assert_eq!(subject("x y*>$"), "x~20y~2A~3E~24");
        assert_eq!(subject("~"), "~7E");
        assert_eq!(subject(""), "~");
        assert_eq!(subject("é"), "~C3~A9");
        assert_ne!(subject("a~2Eb"), subject("a.b"));
    }
}
