//! Redis pub/sub over one RESP3 connection per node.
//!
//! RESP3 lets one connection both publish and receive (messages arrive as pushes), so the
//! node has a single connection, a single state and a single reconnect loop. The
//! `redis` crate's multiplexed connection reports its own end as a `Disconnection` push;
//! a periodic PING catches a peer that vanished without closing the socket.
use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use ::redis::aio::MultiplexedConnection;
use ::redis::{
    AsyncConnectionConfig, Client, IntoConnectionInfo, ProtocolVersion, PushInfo, PushKind,
    RedisError, Value,
};
use bytes::Bytes;
use futures::future::BoxFuture;
use parking_lot::{Mutex, RwLock};
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::common::{CONNECT_TIMEOUT, Counters, Link, PublishDrain, PublishQueue, backoff};
use super::{Broker, BrokerError, Handler};

/// Most PUBLISH commands sent as one pipeline: amortizes the round trip under load while
/// keeping one batch's reply small.
const BATCH: usize = 512;
/// A command (or pipeline) unanswered for this long means the connection is gone.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(3);
/// How often an otherwise quiet connection is checked.
const PING_EVERY: Duration = Duration::from_secs(2);

pub(super) struct RedisBroker {
    shared: Arc<Shared>,
    queue: PublishQueue,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    shutdown: CancellationToken,
}

struct Shared {
    client: Client,
    handler: Handler,
    link: Link,
    counters: Counters,
    /// Remembered subscriptions: made again after each reconnect, and the filter that keeps
    /// a late message of an unsubscribed channel from reaching the handler.
    channels: Arc<RwLock<HashSet<String>>>,
    /// The connection in use; `None` while reconnecting.
    current: Mutex<Option<Live>>,
}

/// One established connection and the signal that it ended.
#[derive(Clone)]
struct Live {
    conn: MultiplexedConnection,
    lost: Arc<Notify>,
}

fn unreachable(e: impl std::fmt::Display) -> BrokerError {
    BrokerError::Unreachable(e.to_string())
}

impl RedisBroker {
    pub async fn connect(url: &str, handler: Handler) -> Result<Arc<Self>, BrokerError> {
        let bad = |_| BrokerError::BadUrl(url.to_string());
        let info = url.into_connection_info().map_err(bad)?;
        let settings = info
            .redis_settings()
            .clone()
            .set_protocol(ProtocolVersion::RESP3);
        // Without TCP_NODELAY (the crate's default is off) a publish written while an earlier
        // one is unacknowledged waits for that ACK: every reply, and so every REST write,
        // would pay for it.
        let tcp = ::redis::io::tcp::TcpSettings::default().set_nodelay(true);
        let client =
            Client::open(info.set_redis_settings(settings).set_tcp_settings(tcp)).map_err(bad)?;
        let counters = Counters::new();
        let shared = Arc::new(Shared {
            client,
            handler,
            link: Link::new("redis"),
            counters: counters.clone(),
            channels: Arc::default(),
            current: Mutex::new(None),
        });
        let live = shared.establish().await.map_err(unreachable)?;
        shared.link.set(true, "");
        let (queue, rx) = PublishQueue::new(counters);
        let shutdown = CancellationToken::new();
        let tasks = vec![
            tokio::spawn(supervise(shared.clone(), live, shutdown.clone())),
            tokio::spawn(publish_loop(shared.clone(), rx, shutdown.clone())),
        ];
        Ok(Arc::new(Self {
            shared,
            queue,
            tasks: Mutex::new(tasks),
            shutdown,
        }))
    }
}

impl Shared {
    /// Opens a connection, makes it current and subscribes every remembered channel on it.
    async fn establish(&self) -> Result<Live, RedisError> {
        let lost = Arc::new(Notify::new());
        let push = {
            let lost = lost.clone();
            let channels = self.channels.clone();
            let handler = self.handler.clone();
            let received = self.counters.received.clone();
            move |info: PushInfo| -> Result<(), std::convert::Infallible> {
                match info.kind {
                    PushKind::Message => {
                        let mut data = info.data.into_iter();
                        if let (Some(Value::BulkString(ch)), Some(Value::BulkString(payload))) =
                            (data.next(), data.next())
                            && let Ok(ch) = std::str::from_utf8(&ch)
                            && channels.read().contains(ch)
                        {
                            received.increment(1);
                            handler(ch, Bytes::from(payload));
                        }
                    }
                    // notify_one keeps the permit if the supervisor is not waiting yet.
                    PushKind::Disconnection => lost.notify_one(),
                    _ => {}
                }
                Ok(())
            }
        };
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(RESPONSE_TIMEOUT))
            .set_push_sender(push);
        let conn = self
            .client
            .get_multiplexed_async_connection_with_config(&config)
            .await?;
        let live = Live { conn, lost };
        // Current before the snapshot: a subscribe() that inserts its channel after the
        // snapshot then finds this connection and subscribes on it itself.
        *self.current.lock() = Some(live.clone());
        let remembered: Vec<String> = self.channels.read().iter().cloned().collect();
        if !remembered.is_empty() {
            let mut conn = live.conn.clone();
            if let Err(e) = conn.subscribe(&remembered).await {
                *self.current.lock() = None;
                return Err(e);
            }
        }
        Ok(live)
    }
}

/// Keeps a connection up: waits for the current one to end, then reconnects with backoff.
async fn supervise(shared: Arc<Shared>, first: Live, shutdown: CancellationToken) {
    let mut live = Some(first);
    let mut attempt = 0u32;
    loop {
        let current = match live.take() {
            Some(l) => l,
            None => {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(backoff(attempt)) => {}
                }
                attempt = attempt.saturating_add(1);
                let made = tokio::select! {
                    _ = shutdown.cancelled() => return,
                    r = shared.establish() => r,
                };
                match made {
                    Ok(l) => l,
                    Err(e) => {
                        tracing::debug!(error = %e, attempt, "redis reconnect failed");
                        continue;
                    }
                }
            }
        };
        attempt = 0;
        shared.link.set(true, "");
        let why = watch(&current, &shutdown).await;
        *shared.current.lock() = None;
        if shutdown.is_cancelled() {
            return;
        }
        shared.link.set(false, &why);
    }
}

/// Returns why the connection ended: closed by the peer, or a PING went unanswered.
async fn watch(live: &Live, shutdown: &CancellationToken) -> String {
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return "closed".into(),
            _ = live.lost.notified() => return "connection closed".into(),
            _ = tokio::time::sleep(PING_EVERY) => {
                let mut conn = live.conn.clone();
                let cmd = ::redis::cmd("PING");
                let ping = cmd.query_async::<()>(&mut conn);
                match tokio::time::timeout(RESPONSE_TIMEOUT, ping).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => return e.to_string(),
                    Err(_) => return "PING unanswered".into(),
                }
            }
        }
    }
}

/// Drains the queue onto the current connection, in order, a pipeline at a time, and
/// settles each batch once Redis has answered it.
///
/// Redis runs commands one at a time and, while running a PUBLISH, appends the message to
/// every subscriber connection's output before it answers the publisher. So once the reply
/// is here, the payload sits in every subscriber's stream ahead of anything any node
/// publishes later; and since this connection is also this node's subscriber, the echo of
/// a payload to a channel it holds has already reached the handler (pushes are read ahead
/// of the reply that follows them).
async fn publish_loop(shared: Arc<Shared>, mut queue: PublishDrain, shutdown: CancellationToken) {
    let mut batch = Vec::with_capacity(BATCH);
    loop {
        let n = tokio::select! {
            _ = shutdown.cancelled() => return,
            n = queue.recv_many(&mut batch, BATCH) => n,
        };
        if n == 0 {
            return;
        }
        let live = shared.current.lock().clone();
        let Some(live) = live else {
            // None of it went out: hand it back, so this node's sockets get it once.
            shared.counters.dropped_disconnected.increment(n as u64);
            for (channel, payload, _) in batch.drain(..) {
                (shared.handler)(&channel, payload);
            }
            queue.settle(n);
            continue;
        };
        let mut pipe = ::redis::pipe();
        for (channel, payload, _) in &batch {
            pipe.cmd("PUBLISH")
                .arg(&**channel)
                .arg(&payload[..])
                .ignore();
        }
        let mut conn = live.conn;
        let sent = tokio::select! {
            // close() does not wait out a response timeout on a dead connection.
            _ = shutdown.cancelled() => return,
            r = pipe.query_async::<()>(&mut conn) => r,
        };
        match sent {
            Ok(()) => shared.counters.published.increment(n as u64),
            Err(e) => {
                // Some of the batch may have gone out (and come back): at-most-once either
                // way, never resent nor handed back.
                shared.counters.dropped_error.increment(n as u64);
                if e.is_unrecoverable_error() || e.is_io_error() || e.is_timeout() {
                    live.lost.notify_one();
                }
                tracing::debug!(error = %e, payloads = n, "redis publish failed");
            }
        }
        batch.clear();
        queue.settle(n);
    }
}

#[async_trait::async_trait]
impl Broker for RedisBroker {
    fn publish(&self, channel: &str, payload: Bytes) -> bool {
        self.queue
            .push(channel, payload, self.shared.link.is_up(), true)
    }

    fn publish_unawaited(&self, channel: &str, payload: Bytes) -> bool {
        self.queue
            .push(channel, payload, self.shared.link.is_up(), false)
    }

    fn settled(&self) -> Option<BoxFuture<'static, ()>> {
        self.queue.settled()
    }

    async fn subscribe(&self, channel: &str) -> Result<(), BrokerError> {
        if self.shutdown.is_cancelled() {
            return Err(BrokerError::Closed);
        }
        self.shared.channels.write().insert(channel.to_string());
        let live = self.shared.current.lock().clone();
        let Some(mut live) = live else {
            return Err(unreachable("reconnecting to redis"));
        };
        match tokio::time::timeout(CONNECT_TIMEOUT, live.conn.subscribe(channel)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(unreachable(e)),
            Err(_) => Err(unreachable(
                "redis did not confirm the subscription in time",
            )),
        }
    }

    async fn unsubscribe(&self, channel: &str) {
        if !self.shared.channels.write().remove(channel) {
            return;
        }
        let live = self.shared.current.lock().clone();
        if let Some(mut live) = live {
            // A failure leaves the server subscribed until this connection ends; the
            // channel filter already keeps its messages from the handler.
            let _ = tokio::time::timeout(CONNECT_TIMEOUT, live.conn.unsubscribe(channel)).await;
        }
    }

    fn is_connected(&self) -> bool {
        self.shared.link.is_up()
    }

    async fn close(&self) {
        self.shutdown.cancel();
        let tasks = std::mem::take(&mut *self.tasks.lock());
        for task in tasks {
            let _ = task.await;
        }
        *self.shared.current.lock() = None;
        self.shared.link.closed();
    }
}

impl Drop for RedisBroker {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}
