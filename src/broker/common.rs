//! Pieces both network brokers share: the publish queue, the connection state with its log
//! lines and gauge, the counters and the reconnect backoff.
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use metrics::{Counter, Gauge};
use tokio::sync::mpsc;

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

/// A payload on its way to the publishing task.
pub(super) type Outgoing = (Box<str>, Bytes);

/// The caller's side of the publish queue.
pub(super) struct PublishQueue {
    tx: mpsc::Sender<Outgoing>,
    counters: Counters,
}

impl PublishQueue {
    pub fn new(counters: Counters) -> (Self, mpsc::Receiver<Outgoing>) {
        let (tx, rx) = mpsc::channel(PUBLISH_QUEUE);
        (Self { tx, counters }, rx)
    }

    /// Never waits: a payload that cannot be queued, or that would only sit in the queue
    /// until the broker returns, is dropped and counted.
    pub fn push(&self, channel: &str, payload: Bytes, connected: bool) {
        if !connected {
            self.counters.dropped_disconnected.increment(1);
            return;
        }
        match self.tx.try_send((channel.into(), payload)) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => self.counters.dropped_overflow.increment(1),
            Err(mpsc::error::TrySendError::Closed(_)) => {
                self.counters.dropped_disconnected.increment(1)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
