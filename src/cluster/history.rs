//! Positions and resume on one node (PROTOCOL.md §5.6): each audience's frames numbered in
//! publish order and kept in memory, so that a socket that reconnects and joins with
//! `since` gets what it missed, or one `gap` frame saying where it continues.
//!
//! A log starts when the first socket with positions joins its audience: until then no
//! client can hold a position of it (the epoch is this process's), so a node whose clients
//! never opt in keeps nothing and pays nothing. From then on every frame published to the
//! audience takes the next `seq` and enters the log, members or not, until the log has had
//! no member here and no frame for the window; a later join starts a new log under a new
//! epoch, so a `seq` never starts over within one.
//!
//! The log's lock is held across a publish's fan-out and across a join's replay and its
//! entry into the audience: a frame is either in the replay or delivered live, never
//! both and never neither.
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use bytes::Bytes;
use parking_lot::{Mutex, RwLock};
use serde::{Deserialize, Serialize};

use crate::hub::{Action, Audience, Hub, SocketHandle, encode_frame, frame};

/// A place in an audience's stream: the last `seq` had, in one unbroken history (`epoch`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Position {
    pub epoch: String,
    pub seq: u64,
}

/// How much of each audience's stream is kept (`RESUME_HISTORY`, `RESUME_WINDOW_SECS`).
#[derive(Debug, Clone, Copy)]
pub struct HistoryLimits {
    pub frames: usize,
    pub window: Duration,
}

impl Default for HistoryLimits {
    fn default() -> Self {
        Self {
            frames: 1000,
            window: Duration::from_secs(120),
        }
    }
}

/// Why a join with `since` replays nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum GapReason {
    /// Another history, or a position this one never reached.
    Epoch,
    /// Frames after the position are no longer kept.
    Expired,
}

impl GapReason {
    fn as_str(self) -> &'static str {
        match self {
            GapReason::Epoch => "epoch",
            GapReason::Expired => "expired",
        }
    }
}

#[derive(Serialize)]
struct GapData<'a> {
    reason: &'a str,
    epoch: &'a str,
    seq: u64,
}

struct Log {
    epoch: Arc<str>,
    last: u64,
    /// `(seq, published, the frame with its seq)`, oldest first, without holes.
    frames: VecDeque<(u64, Instant, Bytes)>,
    /// The last publish or join.
    touched: Instant,
}

impl Log {
    fn trim(&mut self, limits: HistoryLimits, now: Instant) {
        while self.frames.len() > limits.frames
            || self
                .frames
                .front()
                .is_some_and(|(_, at, _)| now.duration_since(*at) > limits.window)
        {
            self.frames.pop_front();
        }
    }

    /// The frames after `since`, or why there are none to give.
    fn after(&self, since: &Position) -> Result<Vec<Bytes>, GapReason> {
        if *since.epoch != *self.epoch || since.seq > self.last {
            return Err(GapReason::Epoch);
        }
        let first = self.frames.front().map_or(self.last + 1, |(seq, ..)| *seq);
        if since.seq + 1 < first {
            return Err(GapReason::Expired);
        }
        Ok(self
            .frames
            .iter()
            .filter(|(seq, ..)| *seq > since.seq)
            .map(|(.., f)| f.clone())
            .collect())
    }
}

/// One node's positions: every audience's log.
pub struct History {
    /// This process's part of every epoch it names.
    process: String,
    /// Numbers the logs this process started, so that a log started again after it was
    /// dropped has an epoch of its own.
    started: AtomicU64,
    limits: HistoryLimits,
    logs: RwLock<HashMap<Audience, Arc<Mutex<Log>>>>,
    last_sweep: Mutex<Instant>,
}

impl History {
    pub fn new(limits: HistoryLimits) -> Self {
        Self {
            process: crate::ids::new_id(),
            started: AtomicU64::new(0),
            limits,
            logs: RwLock::default(),
            last_sweep: Mutex::new(Instant::now()),
        }
    }

    /// Delivers a frame to this node's sockets of `audience`, with its position for the
    /// sockets that have them, and keeps it. Without a log (no socket with positions ever
    /// joined the audience here, or not within the window) it is a plain delivery.
    pub fn publish(&self, hub: &Hub, audience: &Audience, frame: &Bytes) -> usize {
        let log = self.logs.read().get(audience).cloned();
        let Some(log) = log else {
            return hub.deliver(audience, frame);
        };
        let now = Instant::now();
        let mut l = log.lock();
        l.last += 1;
        let positioned = frame::with_seq(frame, l.last);
        let seq = l.last;
        l.frames.push_back((seq, now, positioned.clone()));
        l.trim(self.limits, now);
        l.touched = now;
        // Under the log's lock: a join's replay cannot slip between this frame's place in
        // the log and its delivery.
        let n = hub.deliver_at(audience, frame, Some(&positioned));
        drop(l);
        self.sweep(hub, now);
        n
    }

    /// Adds a socket with positions to `audience` (`room`: the room id it joined by) and
    /// returns the audience's position at that moment. With `since`, first queues to it
    /// the frames after `since`, or one `gap` frame naming the returned position.
    pub fn join(
        &self,
        hub: &Hub,
        h: &Arc<SocketHandle>,
        audience: &Audience,
        room: &str,
        since: Option<&Position>,
    ) -> Position {
        let now = Instant::now();
        let position = loop {
            let log = self.log(audience, now);
            let mut l = log.lock();
            // A log the sweep dropped meanwhile is not the audience's any more: join the
            // one the map holds, under its lock (the sweep never takes a locked log).
            let current = self
                .logs
                .read()
                .get(audience)
                .is_some_and(|x| Arc::ptr_eq(x, &log));
            if !current {
                continue;
            }
            l.trim(self.limits, now);
            l.touched = now;
            let position = Position {
                epoch: l.epoch.to_string(),
                seq: l.last,
            };
            if let Some(since) = since {
                match l.after(since) {
                    Ok(frames) => {
                        metrics::counter!("messaging_resume_total", "outcome" => "replayed")
                            .increment(1);
                        metrics::counter!("messaging_resume_frames_total")
                            .increment(frames.len() as u64);
                        for f in frames {
                            h.enqueue(f);
                        }
                    }
                    Err(reason) => {
                        metrics::counter!("messaging_resume_total", "outcome" => reason.as_str())
                            .increment(1);
                        h.enqueue(gap_frame(audience, room, reason, &position));
                    }
                }
            }
            hub.add_member(h, audience.clone());
            break position;
        };
        // Outside the log's lock: the sweep takes every log's in turn.
        self.sweep(hub, now);
        position
    }

    /// The audience's log, started if it has none.
    fn log(&self, audience: &Audience, now: Instant) -> Arc<Mutex<Log>> {
        if let Some(l) = self.logs.read().get(audience) {
            return l.clone();
        }
        self.logs
            .write()
            .entry(audience.clone())
            .or_insert_with(|| {
                let n = self.started.fetch_add(1, Relaxed) + 1;
                Arc::new(Mutex::new(Log {
                    epoch: format!("{}-{n}", self.process).into(),
                    last: 0,
                    frames: VecDeque::new(),
                    touched: now,
                }))
            })
            .clone()
    }

    /// Drops the logs that had no frame and no join for the window and have no member
    /// here, at most once per window/4.
    fn sweep(&self, hub: &Hub, now: Instant) {
        {
            let mut last = self.last_sweep.lock();
            if now.duration_since(*last) < self.limits.window / 4 {
                return;
            }
            *last = now;
        }
        let idle = |l: &Mutex<Log>| {
            // A locked log is in use: not idle. (A join holds its log's lock while it looks
            // the log up in the map, so waiting for it here could deadlock.)
            l.try_lock()
                .is_some_and(|l| now.duration_since(l.touched) > self.limits.window)
        };
        let candidates: Vec<Audience> = self
            .logs
            .read()
            .iter()
            .filter(|(_, l)| idle(l))
            .map(|(a, _)| a.clone())
            .collect();
        if candidates.is_empty() {
            return;
        }
        let mut logs = self.logs.write();
        for a in candidates {
            // Checked again under the map's lock: a join since then touched it, or holds it.
            if logs.get(&a).is_some_and(|l| idle(l)) && hub.local_count(&a) == 0 {
                logs.remove(&a);
            }
        }
        metrics::gauge!("messaging_resume_logs").set(logs.len() as f64);
    }
}

/// `{"churchId","conversationId","action":"gap","data":{"reason","epoch","seq"}}`.
fn gap_frame(audience: &Audience, room: &str, reason: GapReason, at: &Position) -> Bytes {
    let church = match audience {
        Audience::Room { church, .. } | Audience::Person { church, .. } => church,
    };
    encode_frame(
        church,
        room,
        Action::Gap,
        &GapData {
            reason: reason.as_str(),
            epoch: &at.epoch,
            seq: at.seq,
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn log(last: u64, kept: Vec<u64>) -> Log {
        let now = Instant::now();
        Log {
            epoch: "E".into(),
            last,
            frames: kept
                .into_iter()
                .map(|s| (s, now, Bytes::from(s.to_string())))
                .collect(),
            touched: now,
        }
    }

    fn at(epoch: &str, seq: u64) -> Position {
        Position {
            epoch: epoch.into(),
            seq,
        }
    }

    #[test]
    fn a_position_replays_what_follows_it_or_says_why_not() {
        let l = log(10, (4..=10).collect());
        let seqs = |r: Result<Vec<Bytes>, GapReason>| {
            r.map(|v| {
                v.iter()
                    .map(|b| String::from_utf8_lossy(b).into_owned())
                    .collect::<Vec<_>>()
            })
        };
        assert_eq!(
            seqs(l.after(&at("E", 7))),
            Ok(vec!["8".into(), "9".into(), "10".into()])
        );
        assert_eq!(seqs(l.after(&at("E", 10))), Ok(vec![]));
        // 3 is the last one not kept: everything after it still is.
        assert_eq!(seqs(l.after(&at("E", 3))).map(|v| v.len()), Ok(7));
        assert_eq!(seqs(l.after(&at("E", 2))), Err(GapReason::Expired));
        assert_eq!(seqs(l.after(&at("E", 11))), Err(GapReason::Epoch));
        assert_eq!(seqs(l.after(&at("F", 7))), Err(GapReason::Epoch));
        // Nothing kept (all aged out): only the last position itself resumes.
        let empty = log(10, vec![]);
        assert_eq!(seqs(empty.after(&at("E", 10))), Ok(vec![]));
        assert_eq!(seqs(empty.after(&at("E", 9))), Err(GapReason::Expired));
        // A new audience: seq 0 resumes with nothing.
        assert_eq!(seqs(log(0, vec![]).after(&at("E", 0))), Ok(vec![]));
    }

    #[test]
    fn the_log_keeps_at_most_its_count_and_its_window() {
        let limits = HistoryLimits {
            frames: 3,
            window: Duration::from_secs(60),
        };
        let mut l = log(10, (1..=10).collect());
        l.trim(limits, Instant::now());
        assert_eq!(l.frames.iter().map(|f| f.0).collect::<Vec<_>>(), [8, 9, 10]);
        l.trim(limits, Instant::now() + Duration::from_secs(61));
        assert!(l.frames.is_empty());
    }

    #[test]
    fn a_frame_with_seq_is_the_envelope_with_one_more_key() {
        let plain = encode_frame("C", "R", Action::Message, &serde_json::json!({"a": 1}));
        let with = frame::with_seq(&plain, 42);
        assert_eq!(
            frame::server_frame_payload(&with),
            br#"{"churchId":"C","conversationId":"R","action":"message","data":{"a":1},"seq":42}"#
        );
        // Past 125 bytes the header grows: the payload is still whole.
        let long = encode_frame("C", "R", Action::Message, &"x".repeat(300));
        let with = frame::with_seq(&long, 7);
        let p = frame::server_frame_payload(&with);
        assert!(p.ends_with(br#"x","seq":7}"#));
        assert_eq!(p.len(), frame::server_frame_payload(&long).len() + 8);
    }
}
