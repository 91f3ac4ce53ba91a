//! Delivery in gateway mode (§5.5): API Gateway holds the sockets, so an audience is its rows
//! in the shared database, and a frame reaches each of them through `POST @connections/{id}`.
//!
//! Lambda freezes the process once an invocation has replied, so nothing here runs on its
//! own: `publish` queues the frame, one worker posts the queue in order (a frame's posts run
//! concurrently, at most `GATEWAY_CONCURRENCY` at once, the frame's bytes shared by all),
//! and the door awaits [`Seam::drain`] before it replies. A post answered `410` deletes the
//! connection's rows and names their rooms, so that the service sends their attendance in
//! the same invocation; `429` is retried with backoff within the post's 5 s; anything else
//! is logged and the row kept (the scheduled sweep removes rows older than a connection can
//! live).
mod management;

use std::collections::{BTreeSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use futures::future::BoxFuture;
use parking_lot::Mutex;

pub use management::{Answer, Management};

use super::{Drained, HeldFrame, Seam};
use crate::error::AppResult;
use crate::hub::Audience;
use crate::store::Store;
use crate::store::entities::connections;

/// The node id of every row in gateway mode: instances come and go with each scale-out,
/// and every one of them may write, read and delete any row.
pub const GATEWAY_NODE: &str = "api-gateway";

/// A person's rows are those of the `alerts` room (§7).
const ALERTS: &str = "alerts";

/// Each post's time budget, retries of a `429` included.
const POST_BUDGET: Duration = Duration::from_secs(5);

pub struct Gateway {
    shared: Arc<Shared>,
}

/// What the gateway seam, its worker and its held frames share.
struct Shared {
    store: Store,
    api: Management,
    concurrency: usize,
    state: Mutex<Pending>,
    idle: tokio::sync::Notify,
    /// When the current invocation must have replied (Lambda's deadline, less a margin):
    /// no post outlives it, whatever is left of its own 5 s.
    deadline: Mutex<Option<Instant>>,
}

#[derive(Default)]
struct Pending {
    queue: VecDeque<(Audience, Bytes)>,
    /// A worker is posting the queue.
    running: bool,
    /// Since the last drain: rows a frame was posted toward, posts taken, audiences reached,
    /// and rooms that lost rows to a 410.
    posts: usize,
    delivered: usize,
    reached: BTreeSet<Audience>,
    pruned: BTreeSet<(String, String)>,
}

/// One post's outcome, for the frame's tally.
enum Outcome {
    Delivered,
    Gone(String),
    Kept,
}

impl Gateway {
    pub fn new(store: Store, api: Management, concurrency: usize) -> Self {
        Self {
            shared: Arc::new(Shared {
                store,
                api,
                concurrency: concurrency.max(1),
                state: Mutex::default(),
                idle: tokio::sync::Notify::new(),
                deadline: Mutex::new(None),
            }),
        }
    }

    /// Where `@connections` calls go.
    pub fn endpoint(&self) -> &str {
        self.shared.api.endpoint()
    }

    /// The current invocation's deadline: posts end by then (`None`: only their own 5 s).
    pub fn set_deadline(&self, at: Option<Instant>) {
        *self.shared.deadline.lock() = at;
    }

    /// Posts one frame to one connection, outside any audience (the `getId` reply).
    pub async fn post_to(&self, connection: &str, frame: Bytes) -> Answer {
        let deadline = *self.shared.deadline.lock();
        post_within_budget(&self.shared.api, connection, json_of(&frame), deadline)
            .await
            .unwrap_or(Answer::Failed(504))
    }
}

impl Shared {
    fn enqueue(self: &Arc<Self>, audience: Audience, frame: Bytes) {
        let start = {
            let mut p = self.state.lock();
            p.queue.push_back((audience, json_of(&frame)));
            !std::mem::replace(&mut p.running, true)
        };
        if start {
            tokio::spawn(self.clone().run());
        }
    }

    /// Posts the queue in order until it is empty.
    async fn run(self: Arc<Self>) {
        loop {
            let next = {
                let mut p = self.state.lock();
                match p.queue.pop_front() {
                    Some(n) => n,
                    None => {
                        p.running = false;
                        drop(p);
                        self.idle.notify_waiters();
                        return;
                    }
                }
            };
            self.deliver(next.0, next.1).await;
        }
    }

    async fn deliver(&self, audience: Audience, frame: Bytes) {
        let rows = match &audience {
            Audience::Room { church, room } => self.store.room_rows(church, room).await,
            Audience::Person { church, person } => {
                self.store.person_rows(church, ALERTS, person).await
            }
        };
        let rows = match rows {
            Ok(rows) => rows,
            Err(e) => {
                tracing::warn!(?audience, error = %e, "gateway delivery: rows unreadable, frame dropped");
                return;
            }
        };
        let count = rows.len();
        let deadline = *self.deadline.lock();
        let outcomes: Vec<Outcome> = futures::stream::iter(rows)
            .map(|row: connections::Model| {
                let api = &self.api;
                let frame = frame.clone();
                async move {
                    match post_within_budget(api, &row.socket_id, frame, deadline).await {
                        Some(Answer::Done) => Outcome::Delivered,
                        Some(Answer::Gone) => Outcome::Gone(row.socket_id),
                        Some(Answer::TooLarge) => {
                            tracing::warn!(connection = %row.socket_id, "frame over the gateway's size limit: skipped");
                            Outcome::Kept
                        }
                        Some(other) => {
                            tracing::warn!(connection = %row.socket_id, answer = ?other, "@connections post failed; row kept");
                            Outcome::Kept
                        }
                        None => {
                            tracing::warn!(connection = %row.socket_id, "@connections post timed out; row kept");
                            Outcome::Kept
                        }
                    }
                }
            })
            .buffer_unordered(self.concurrency)
            .collect()
            .await;
        let mut delivered = 0usize;
        let mut pruned = BTreeSet::new();
        for o in outcomes {
            match o {
                Outcome::Delivered => delivered += 1,
                Outcome::Gone(connection) => match self.store.delete_socket_rows(&connection).await
                {
                    Ok(rooms) => pruned.extend(rooms),
                    Err(e) => {
                        tracing::warn!(%connection, error = %e, "rows of a gone connection not deleted")
                    }
                },
                Outcome::Kept => {}
            }
        }
        metrics::counter!("messaging_gateway_posts_total").increment(count as u64);
        tracing::debug!(?audience, count, delivered, "gateway delivery");
        let mut p = self.state.lock();
        p.posts += count;
        p.delivered += delivered;
        if delivered > 0 {
            p.reached.insert(audience);
        }
        p.pruned.extend(pruned);
    }
}

/// The frame's JSON: the service encodes frames for sockets (a WebSocket header before the
/// text), and the gateway takes the text alone. A view of the same bytes, not a copy.
fn json_of(frame: &Bytes) -> Bytes {
    let payload = crate::hub::frame::server_frame_payload(frame).len();
    frame.slice(frame.len() - payload..)
}

/// One post, `429` retried with backoff, all within [`POST_BUDGET`] and the invocation's
/// deadline. `None`: out of time (or the connection failed) before any answer that settles
/// it.
async fn post_within_budget(
    api: &Management,
    connection: &str,
    frame: Bytes,
    invocation_deadline: Option<Instant>,
) -> Option<Answer> {
    let own = Instant::now() + POST_BUDGET;
    let deadline = invocation_deadline.map_or(own, |d| d.min(own));
    let mut backoff = Duration::from_millis(50);
    // A kept-alive connection the far end closed while this instance was frozen fails the
    // first request sent on it: one more try, on a new connection, within the budget.
    let mut transport_retries = 1;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let answer = match tokio::time::timeout(left, api.post(connection, frame.clone())).await {
            Ok(Ok(a)) => a,
            Ok(Err(e)) if transport_retries > 0 && !e.is_timeout() => {
                transport_retries -= 1;
                tracing::debug!(%connection, error = %e, "@connections post failed; trying again");
                continue;
            }
            Ok(Err(e)) => {
                tracing::debug!(%connection, error = %e, "@connections post failed");
                return None;
            }
            Err(_) => return None,
        };
        if answer != Answer::Throttled {
            return Some(answer);
        }
        // Full jitter, so that a throttled fan-out does not retry in lockstep.
        let wait = backoff.mul_f64(rand::random::<f64>() + 0.5);
        if Instant::now() + wait >= deadline {
            return Some(Answer::Throttled);
        }
        tokio::time::sleep(wait).await;
        backoff = (backoff * 2).min(Duration::from_secs(1));
    }
}

/// A held frame in gateway mode: queued on release, like any frame.
struct HeldForGateway {
    shared: Arc<Shared>,
    audience: Audience,
    frame: Bytes,
}

impl HeldFrame for HeldForGateway {
    fn release(self: Box<Self>) {
        let Self {
            shared,
            audience,
            frame,
        } = *self;
        shared.enqueue(audience, frame);
    }

    fn extend(&self) {}
}

impl Seam for Gateway {
    fn publish(&self, audience: &Audience, frame: &Bytes) -> usize {
        self.shared.enqueue(audience.clone(), frame.clone());
        0
    }

    fn publish_held(&self, audience: &Audience, frame: Bytes) -> Box<dyn HeldFrame> {
        Box::new(HeldForGateway {
            shared: self.shared.clone(),
            audience: audience.clone(),
            frame,
        })
    }

    fn publish_local(&self, audience: &Audience, frame: &Bytes) -> usize {
        // Every row is this function's to serve: attendance goes to all of them.
        self.publish(audience, frame)
    }

    fn local_members(&self, _audience: &Audience) -> usize {
        0
    }

    /// Whether the gateway knows the connection (`GET @connections/{id}`): `410` is a
    /// socket that does not exist. A gateway that cannot answer (a timeout, a missing
    /// permission) is taken at the client's word: the join is written, and a dead row is
    /// pruned by the first post that gets `410`, or by the sweep.
    fn locate<'a>(&'a self, socket_id: &'a str) -> BoxFuture<'a, AppResult<Option<String>>> {
        Box::pin(async move {
            match tokio::time::timeout(POST_BUDGET, self.shared.api.get(socket_id)).await {
                Ok(Ok(Answer::Gone)) => Ok(None),
                Ok(Ok(Answer::Done)) => Ok(Some(GATEWAY_NODE.to_string())),
                other => {
                    tracing::warn!(connection = %socket_id, answer = ?other.map(|r| r.map_err(|e| e.to_string())), "the gateway could not confirm a connection; joining anyway");
                    Ok(Some(GATEWAY_NODE.to_string()))
                }
            }
        })
    }

    fn crosses_nodes(&self) -> bool {
        false
    }

    fn socketless(&self) -> bool {
        true
    }

    fn drain(&self) -> BoxFuture<'_, Drained> {
        Box::pin(async move {
            loop {
                let notified = self.shared.idle.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                {
                    let mut p = self.shared.state.lock();
                    if !p.running && p.queue.is_empty() {
                        return Drained {
                            posts: std::mem::take(&mut p.posts),
                            delivered: std::mem::take(&mut p.delivered),
                            reached: std::mem::take(&mut p.reached),
                            pruned: std::mem::take(&mut p.pruned).into_iter().collect(),
                        };
                    }
                }
                notified.await;
            }
        })
    }
}
