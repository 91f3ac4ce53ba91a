//! Pieces both network brokers share: the publish queue, the connection state with its log
//! lines and gauge, the counters and the reconnect backoff.
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures::future::BoxFuture;
use metrics::{Counter, Gauge};
use parking_lot::Mutex;
use tokio::sync::{mpsc, watch};

/// Payloads waiting for the publishing task. Large enough to absorb a burst while one
/// pipelined batch is in flight, small enough that a stuck connection cannot hold much
/// memory (frames are small; at 1 KiB each this is 16 MiB).
pub(super) const PUBLISH_QUEUE: usize = 16_384;

/// How long a connect or a confirmation may take before the broker counts as unreachable.
pub(super) const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// The ceiling of the reconnect backoff: the issue asks for delivery to resume within 5 s
/// of the broker's return, so a node never waits longer than this between attempts.
pub(super) const MAX_BACKOFF: Duration = Duration::from_secs(1);

/// Delay before reconnect attempt `attempt` (0-based): immediate first, then doubling from
/// 50 ms up to [`MAX_BACKOFF`], less up to a fifth at random so that many nodes that lost
/// the broker together do not all knock at the same instant.
pub(super) fn backoff(attempt: u32) -> Duration {
    if attempt == 0 {
        return Duration::ZERO;
    }
    let base = Duration::from_millis(50)
        .saturating_mul(1u32 << (attempt - 1).min(10))
        .min(MAX_BACKOFF);
    let jitter = rand::random_range(0..=base.as_millis() as u64 / 5);
    base.saturating_sub(Duration::from_millis(jitter))
}

/// The counters of one broker (cached handles: resolving a metric by name costs a lookup).
#[derive(Clone)]
pub(super) struct Counters {
    pub published: Counter,
    pub received: Counter,
    pub dropped_disconnected: Counter,
    pub dropped_overflow: Counter,
    pub dropped_error: Counter,
}

impl Counters {
    pub fn new() -> Self {
        let dropped = |reason: &'static str| metrics::counter!("messaging_broker_dropped_total", "reason" => reason);
        Self {
            published: metrics::counter!("messaging_broker_published_total"),
            received: metrics::counter!("messaging_broker_received_total"),
            dropped_disconnected: dropped("disconnected"),
            dropped_overflow: dropped("overflow"),
            dropped_error: dropped("error"),
        }
    }
}

/// Whether the broker is reachable, with one log line per change and the gauge.
pub(super) struct Link {
    kind: &'static str,
    up: AtomicBool,
    was_up: AtomicBool,
    gauge: Gauge,
}

impl Link {
    pub fn new(kind: &'static str) -> Self {
        Self {
            kind,
            up: AtomicBool::new(false),
            was_up: AtomicBool::new(false),
            gauge: metrics::gauge!("messaging_broker_connected"),
        }
    }

    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Acquire)
    }

    /// Records the state; logs and sets the gauge only when it changed.
    pub fn set(&self, up: bool, why: &str) {
        if self.up.swap(up, Ordering::AcqRel) == up {
            return;
        }
        self.gauge.set(if up { 1.0 } else { 0.0 });
        let kind = self.kind;
        if up {
            if self.was_up.swap(true, Ordering::AcqRel) {
                tracing::info!(broker = kind, "broker connection restored");
            } else {
                tracing::info!(broker = kind, "broker connected");
            }
        } else {
            tracing::warn!(broker = kind, reason = why, "broker connection lost");
        }
    }

    /// At close: the gauge goes to 0 without a "lost" line (nothing was lost).
    pub fn closed(&self) {
        if self.up.swap(false, Ordering::AcqRel) {
            self.gauge.set(0.0);
        }
    }
}

/// A payload on its way to the publishing task: channel, payload, and whether a caller may
/// wait for it (see [`PublishQueue::push`]).
pub(super) type Outgoing = (Box<str>, Bytes, bool);

/// The caller's side of the publish queue.
pub(super) struct PublishQueue {
    tx: mpsc::Sender<Outgoing>,
    counters: Counters,
    /// Payloads queued so far, and the number of the last one a caller may wait for. Held
    /// while queueing, so that a payload's number is its place in the queue: "every payload
    /// up to n is settled" then means exactly those.
    queued: Mutex<Queued>,
    settled: watch::Receiver<u64>,
}

#[derive(Default)]
struct Queued {
    all: u64,
    awaited: u64,
}

/// The publishing task's side: payloads in queue order, and how many of them are settled.
pub(super) struct PublishDrain {
    rx: mpsc::Receiver<Outgoing>,
    settled: watch::Sender<u64>,
}

impl PublishQueue {
    pub fn new(counters: Counters) -> (Self, PublishDrain) {
        let (tx, rx) = mpsc::channel(PUBLISH_QUEUE);
        let (settled_tx, settled) = watch::channel(0);
        let queue = Self {
            tx,
            counters,
            queued: Mutex::default(),
            settled,
        };
        (
            queue,
            PublishDrain {
                rx,
                settled: settled_tx,
            },
        )
    }

    /// Never waits. Returns false, counted, for a payload that cannot be queued or would
    /// only sit in the queue until the broker returns: the caller still has it and may
    /// deliver it locally, since it reaches no node through the broker.
    ///
    /// `awaited`: whether [`Self::settled`] covers it (see [`super::Broker::publish`] and
    /// [`super::Broker::publish_unawaited`]).
    pub fn push(&self, channel: &str, payload: Bytes, connected: bool, awaited: bool) -> bool {
        if !connected {
            self.counters.dropped_disconnected.increment(1);
            return false;
        }
        let mut queued = self.queued.lock();
        match self.tx.try_send((channel.into(), payload, awaited)) {
            Ok(()) => {
                queued.all += 1;
                if awaited {
                    queued.awaited = queued.all;
                }
                true
            }
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.counters.dropped_overflow.increment(1);
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                self.counters.dropped_disconnected.increment(1);
                false
            }
        }
    }

    /// Resolves once every awaited payload queued before this call is settled (see
    /// [`super::Broker::settled`]); `None` when they already are.
    pub fn settled(&self) -> Option<BoxFuture<'static, ()>> {
        let target = self.queued.lock().awaited;
        if *self.settled.borrow() >= target {
            return None;
        }
        let mut settled = self.settled.clone();
        Some(Box::pin(async move {
            // Err: the publishing task has ended (closed), nothing more will settle.
            let _ = settled.wait_for(|n| *n >= target).await;
        }))
    }
}

impl PublishDrain {
    /// The next payloads in queue order (up to `limit`); 0 once the queue is closed.
    pub async fn recv_many(&mut self, batch: &mut Vec<Outgoing>, limit: usize) -> usize {
        self.rx.recv_many(batch, limit).await
    }

    /// `n` more payloads (the oldest not yet settled) are settled.
    pub fn settle(&self, n: usize) {
        self.settled.send_modify(|s| *s += n as u64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settled_covers_awaited_payloads_only() {
        use futures::FutureExt;
        let (queue, drain) = PublishQueue::new(Counters::new());
        let payload = || Bytes::from_static(b"x");
        assert!(queue.push("c", payload(), true, true));
        assert!(queue.push("c", payload(), true, false));
        let first = queue.settled().expect("the awaited payload is pending");
        drain.settle(1);
        assert!(first.now_or_never().is_some(), "settled by the first alone");
        assert!(
            queue.settled().is_none(),
            "nobody waits for the unawaited one"
        );
        // An awaited payload behind the unawaited one waits for both, in queue order.
        assert!(queue.push("c", payload(), true, true));
        let mut third = queue.settled().expect("pending");
        drain.settle(1);
        assert!(
            (&mut third).now_or_never().is_none(),
            "only the second is settled"
        );
        drain.settle(1);
        assert!(third.now_or_never().is_some());
        // Not taken while disconnected: nothing to wait for.
        assert!(!queue.push("c", payload(), false, true));
        assert!(queue.settled().is_none());
    }

    #[test]
    fn backoff_is_capped_at_one_second() {
        assert_eq!(backoff(0), Duration::ZERO);
        for attempt in 1..64 {
            let d = backoff(attempt);
            assert!(d <= MAX_BACKOFF, "attempt {attempt}: {d:?}");
            assert!(d >= Duration::from_millis(40), "attempt {attempt}: {d:?}");
        }
        assert!(backoff(20) >= Duration::from_millis(800));
    }
}
