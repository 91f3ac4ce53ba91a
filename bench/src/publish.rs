//! Publishers: each owns one HTTP/1.1 keep-alive connection or one gRPC channel and sends
//! messages for a share of the rooms, as fast as possible or paced to a share of the target
//! rate. A room's sequence number is taken under the room's lock and the lock is held until
//! the response, so a room never has two messages in flight and its sequence numbers are
//! the order in which the server received them: out-of-order delivery is then a real fault.
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use hdrhistogram::Histogram;
use hyper::Method;
use tonic::transport::{Channel, Endpoint};

use crate::http::Http;
use crate::pb::SendConversationMessagesRequest;
use crate::pb::delivery_client::DeliveryClient;
use crate::ws::now_ns;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Via {
    Rest,
    Grpc,
}

pub struct Room {
    pub id: String,
    /// Sockets joined to the room (fixed before publishing starts).
    pub size: u64,
    /// Next sequence number; held for the whole request.
    pub next_seq: tokio::sync::Mutex<u64>,
}

/// What every publisher needs to know.
pub struct Plan {
    pub church: String,
    pub payload: usize,
    /// Target aggregate rate (messages/s), or None for as fast as possible.
    pub rate: Option<f64>,
    pub publishers: usize,
    pub timeout: Duration,
    pub grpc_token: Option<String>,
}

pub enum Sender {
    Rest(Http),
    Grpc(DeliveryClient<Channel>),
}

impl Sender {
    pub async fn connect_rest(
        addr: SocketAddr,
        prefix: &str,
        token: Option<&str>,
        timeout: Duration,
    ) -> anyhow::Result<Self> {
        let mut h = Http::new(addr, token, timeout)?.with_prefix(prefix);
        h.connect().await?;
        Ok(Sender::Rest(h))
    }

    pub async fn connect_grpc(addr: &str, timeout: Duration) -> anyhow::Result<Self> {
        let ch = Endpoint::from_shared(format!("http://{addr}"))?
            .tcp_nodelay(true)
            .connect_timeout(timeout)
            .timeout(timeout)
            .connect()
            .await?;
        Ok(Sender::Grpc(DeliveryClient::new(ch)))
    }
}

pub struct Outcome {
    pub sent: u64,
    pub errors: u64,
    pub first_error: Option<String>,
    /// Σ room size over successfully sent messages.
    pub expected: u64,
    /// Σ `delivered` of the gRPC replies (gRPC only).
    pub server_delivered: u64,
    /// Request round trip in microseconds.
    pub latency_us: Histogram<u64>,
    /// Times this publisher had to wait for a room held by another publisher.
    pub lock_waits: u64,
    /// Times a paced publisher fell more than 100 ms behind its schedule.
    pub schedule_slips: u64,
}

/// Runs publisher `p` from `start` until `end`.
pub async fn run(
    p: usize,
    mut sender: Sender,
    plan: Arc<Plan>,
    rooms: Arc<Vec<Room>>,
    start: Instant,
    end: Instant,
) -> Outcome {
    let mut out = Outcome {
        sent: 0,
        errors: 0,
        first_error: None,
        expected: 0,
        server_delivered: 0,
        latency_us: Histogram::new(3).expect("valid"),
        lock_waits: 0,
        schedule_slips: 0,
    };
    let (r_count, p_count) = (rooms.len(), plan.publishers);
    // With at least as many rooms as publishers each room has exactly one publisher;
    // otherwise publishers take turns on the rooms (and wait on their locks).
    let mine: Vec<usize> = if r_count >= p_count {
        (p..r_count).step_by(p_count).collect()
    } else {
        (0..r_count).map(|k| (p + k) % r_count).collect()
    };
    if mine.is_empty() {
        return out;
    }
    let church_json = serde_json::to_string(&plan.church).expect("string");
    let interval = plan
        .rate
        .map(|r| Duration::from_secs_f64(p_count as f64 / r.max(1e-9)));
    let mut next = match interval {
        Some(iv) => start + iv.mul_f64(p as f64 / p_count as f64),
        None => start,
    };
    let mut k = 0usize;
    loop {
        if let Some(iv) = interval {
            let now = Instant::now();
            if next > now {
                if next >= end {
                    break;
                }
                tokio::time::sleep_until(next.into()).await;
            } else if now - next > Duration::from_millis(100) {
                out.schedule_slips += 1;
                next = now;
            }
            next += iv;
        }
        if Instant::now() >= end {
            break;
        }
        let ri = mine[k % mine.len()];
        k += 1;
        let room = &rooms[ri];
        let mut seq_guard = match room.next_seq.try_lock() {
            Ok(g) => g,
            Err(_) => {
                out.lock_waits += 1;
                room.next_seq.lock().await
            }
        };
        if Instant::now() >= end {
            break;
        }
        let seq = *seq_guard;
        *seq_guard += 1;
        let t = now_ns();
        let content = crate::parse::content(ri, seq, t, plan.payload);
        let r = match &mut sender {
            Sender::Rest(h) => {
                let body = format!(
                    r#"[{{"conversationId":"{}","churchId":{church_json},"displayName":"lg","content":"{content}"}}]"#,
                    room.id
                );
                match h
                    .request(Method::POST, "/messaging/messages/send", Bytes::from(body))
                    .await
                {
                    Ok((200, _)) => Ok(0),
                    Ok((status, b)) => Err(format!(
                        "HTTP {status}: {}",
                        String::from_utf8_lossy(&b[..b.len().min(200)])
                    )),
                    Err(e) => Err(format!("{e:#}")),
                }
            }
            Sender::Grpc(c) => {
                let mut req = tonic::Request::new(SendConversationMessagesRequest {
                    church_id: plan.church.clone(),
                    conversation_id: room.id.clone(),
                    action: "message".into(),
                    data: format!(r#"{{"displayName":"lg","content":"{content}"}}"#),
                });
                req.set_timeout(plan.timeout);
                if let Some(t) = &plan.grpc_token
                    && let Ok(v) = format!("Bearer {t}").parse()
                {
                    req.metadata_mut().insert("authorization", v);
                }
                match c.send_conversation_messages(req).await {
                    Ok(r) => Ok(u64::from(r.into_inner().delivered)),
                    Err(s) => Err(format!("gRPC {:?}: {}", s.code(), s.message())),
                }
            }
        };
        drop(seq_guard);
        let rtt_us = now_ns().saturating_sub(t) / 1000;
        match r {
            Ok(delivered) => {
                out.sent += 1;
                out.expected += room.size;
                out.server_delivered += delivered;
                out.latency_us.record(rtt_us).ok();
            }
            Err(e) => {
                out.errors += 1;
                out.first_error.get_or_insert(e);
            }
        }
    }
    out
}
