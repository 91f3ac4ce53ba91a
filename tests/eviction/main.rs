//! The slow-consumer rule (§2.3, issue 29): only a client that does not read is evicted. A
//! reader that keeps up is never closed, however far this server's own writer falls behind
//! (socket threads at a lower priority, paced writes, a busy request path), and the generator,
//! the readers and the service share the same two cores here on purpose.
//!
//! The hub's rule does not depend on the database, so these run on SQLite only. They are a
//! test binary of their own, and take turns (`SCENARIO`): the scenario is the generator, the
//! readers and the service on the two cores, not that plus the rest of the suite.
// Tests unwrap: a panic is the failure report (the workspace denies unwrap elsewhere).
#![allow(clippy::unwrap_used)]
#[path = "../gateway/emulator/mod.rs"]
#[allow(unused_imports)]
mod emulator;
#[path = "../api/helpers.rs"]
mod helpers;

use std::time::Duration;

use futures::StreamExt;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

use crate::helpers::*;
use messaging::hub::EvictionCause;

/// One scenario at a time in this binary.
static SCENARIO: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Healthy readers and stalled sockets per round.
const READERS: usize = 5;
/// 2,000 posts of 4 KiB in batches of 100: about 8 MB to each socket, eight times the 1 MiB
/// bound.
const POSTS: usize = 2_000;
const BATCH: usize = 100;
/// Clients posting at once, each batch as soon as its previous one is answered: together they
/// keep the request path (and both cores) as busy as the API allows.
const POSTERS: usize = 4;
const CONTENT: usize = 4_096;
/// Time for one whole round's frames to reach a reader (generous: a loaded CI machine).
const ROUND: Duration = Duration::from_secs(120);

/// Reads one healthy socket until it has every post of the round: each poster's posts must
/// arrive in the order it sent them, each exactly once. Returns why it failed, if it did.
async fn read_all(mut ws: Ws, round: usize) -> Result<Ws, String> {
    let mut next = [0usize; POSTERS];
    let mut got = 0usize;
    let deadline = tokio::time::Instant::now() + ROUND;
    while got < POSTS {
        let msg = match tokio::time::timeout_at(deadline, ws.stream.next()).await {
            Err(_) => return Err(format!("only {got} of {POSTS} frames within {ROUND:?}")),
            Ok(None) => return Err(format!("stream ended after {got} frames")),
            Ok(Some(Err(e))) => return Err(format!("error after {got} frames: {e}")),
            Ok(Some(Ok(m))) => m,
        };
        let text = match msg {
            Message::Text(t) => t,
            Message::Close(c) => {
                return Err(format!(
                    "closed with {:?} after {got} frames",
                    c.map(|c| u16::from(c.code))
                ));
            }
            _ => continue,
        };
        let f: Value = serde_json::from_str(&text).map_err(|e| e.to_string())?;
        if f["action"] != "message" {
            continue;
        }
        let content = f["data"]["content"].as_str().unwrap_or_default();
        let head = &content[..content.len().min(12)];
        // "RR-P-IIII-": round, poster, the poster's own count.
        let parsed = (|| {
            let mut parts = head.split('-');
            let r: usize = parts.next()?.parse().ok()?;
            let p: usize = parts.next()?.parse().ok()?;
            let i: usize = parts.next()?.parse().ok()?;
            Some((r, p, i))
        })();
        match parsed {
            Some((r, p, i)) if r == round && p < POSTERS && i == next[p] => next[p] += 1,
            _ => {
                return Err(format!(
                    "frame {got}: {head}… out of order (next: {next:?})"
                ));
            }
        }
        got += 1;
    }
    Ok(ws)
}

/// One round of issue 29's scenario: five readers and one socket that never reads join one
/// live room, then 2,000 posts of 4 KiB go in batches of 100, as fast as the API takes them.
async fn burst_round(app: &TestApp, round: usize) {
    let room = app.conversation("C1", "streamingLive", true).await;
    let mut readers = Vec::new();
    let mut items = Vec::new();
    for _ in 0..READERS {
        let ws = app.ws_with_id().await;
        items.push(json!({"conversationId": room, "socketId": ws.id, "displayName": "r"}));
        readers.push(ws);
    }
    let mut stalled = app.ws_with_id().await;
    items.push(json!({"conversationId": room, "socketId": stalled.id, "displayName": "s"}));
    app.join(None, json!(items)).await;
    let evictions = app.hub.evictions();

    let readers: Vec<_> = readers
        .into_iter()
        .map(|ws| tokio::spawn(read_all(ws, round)))
        .collect();
    let posters: Vec<_> = (0..POSTERS)
        .map(|p| {
            let (client, url, room) = (app.client.clone(), app.url("/messaging/messages/send"), room.clone());
            tokio::spawn(async move {
                for b in 0..POSTS / POSTERS / BATCH {
                    let batch: Vec<Value> = (b * BATCH..(b + 1) * BATCH)
                        .map(|i| {
                            let head = format!("{round:02}-{p}-{i:04}-");
                            let content = head.clone() + &"x".repeat(CONTENT - head.len());
                            json!({"conversationId": room, "content": content, "displayName": "gen"})
                        })
                        .collect();
                    let resp = client.post(&url).json(&batch).send().await.expect("post");
                    let status = resp.status().as_u16();
                    let body = resp.text().await.unwrap_or_default();
                    assert_eq!(status, 200, "round {round}, poster {p}, batch {b}: {body}");
                }
            })
        })
        .collect();
    for p in posters {
        p.await.expect("poster");
    }
    let mut healthy = Vec::new();
    for (i, r) in readers.into_iter().enumerate() {
        match r.await.expect("reader task") {
            Ok(ws) => healthy.push(ws),
            Err(why) => panic!("round {round}: healthy reader {i} failed: {why}"),
        }
    }
    // The stalled socket reads now: behind what the kernel held for it, its close is 1013.
    let stalled_id = stalled.id.clone();
    assert_eq!(
        stalled.close_code().await,
        Some(1013),
        "round {round}: the stalled socket"
    );
    assert_eq!(
        app.hub.evictions() - evictions,
        1,
        "round {round}: exactly the stalled socket was evicted"
    );
    eventually("the evicted socket's row deleted", || {
        let (app, room, sid) = (app, room.clone(), stalled_id.clone());
        async move {
            let rows = app.store.room_rows("C1", &room).await.expect("rows");
            rows.len() == READERS && rows.iter().all(|r| r.socket_id != sid)
        }
    })
    .await;
    for mut ws in healthy {
        let _ = ws.stream.close(None).await;
    }
}

/// The service's defaults: 20 rounds, zero healthy sockets evicted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_that_keeps_up_is_never_evicted() {
    let _turn = SCENARIO.lock().await;
    let db = TestDb::create(Backend::Sqlite).await;
    let app = TestApp::spawn(&db).await;
    for round in 0..20 {
        burst_round(&app, round).await;
    }
    eprintln!(
        "20 rounds: {} evictions, {} catch-up writes",
        app.hub.evictions(),
        app.hub.catch_up_writes()
    );
}

/// The socket threads starved on purpose: one thread at the lowest priority, while other
/// clients keep the request path busy (posts into another room, reads of its rows).
/// Whatever the server's writer cannot get to, the senders write; still no healthy reader
/// is evicted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_that_keeps_up_is_never_evicted_with_the_socket_threads_starved() {
    let _turn = SCENARIO.lock().await;
    let db = TestDb::create(Backend::Sqlite).await;
    let mut s = settings(&db);
    s.socket_threads = 1;
    s.socket_nice = 19;
    let app = std::sync::Arc::new(TestApp::spawn_with(s).await);
    let other = app.conversation("C1", "streamingLive", true).await;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let busy: Vec<_> = (0..2)
        .map(|_| {
            let (app, other, stop) = (app.clone(), other.clone(), stop.clone());
            tokio::spawn(async move {
                let mut n = 0u64;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let body = json!([{"conversationId": other, "content": "busy"}]);
                    let (status, _) = app.post("/messaging/messages/send", None, &body).await;
                    assert_eq!(status, 200);
                    let (status, _) = app
                        .get(&format!("/messaging/connections/C1/{other}"), None)
                        .await;
                    assert_eq!(status, 200);
                    n += 1;
                }
                n
            })
        })
        .collect();
    for round in 0..10 {
        burst_round(&app, round).await;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for b in busy {
        assert!(
            b.await.expect("busy client") > 0,
            "the request path was kept busy"
        );
    }
    eprintln!(
        "10 starved rounds: {} evictions, {} catch-up writes",
        app.hub.evictions(),
        app.hub.catch_up_writes()
    );
}

/// The two causes, one socket each, on a small bound (64 KiB, so a cap of 256 KiB): a client
/// that stops reading while more than its bound piles up and then reads again within the stall time
/// loses nothing; one that never reads again is closed with 1013 once the kernel has refused
/// it for `SOCKET_STALL_MS` (`stalled`); one that lets four bounds pile up is closed at once
/// (`over_cap`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pause_shorter_than_the_stall_time_loses_nothing() {
    let _turn = SCENARIO.lock().await;
    let db = TestDb::create(Backend::Sqlite).await;
    let mut s = settings(&db);
    s.socket_queue_bytes = 64 * 1024;
    s.socket_stall_ms = 1_000;
    let app = TestApp::spawn_with(s).await;
    let room = app.conversation("C1", "streamingLive", true).await;
    let mut pauser = Ws::connect_small_rcvbuf(app.socket).await;
    pauser.get_id().await;
    let mut stalled = Ws::connect_small_rcvbuf(app.socket).await;
    stalled.get_id().await;
    app.join(
        None,
        json!([
            {"conversationId": room, "socketId": pauser.id, "displayName": "p"},
            {"conversationId": room, "socketId": stalled.id, "displayName": "s"},
        ]),
    )
    .await;
    let pad = "p".repeat(4_000);
    let mut d = app.delivery().await;
    // 4 KiB frames until the pauser's queue is past the bound (its kernel buffers full
    // first), well under the cap. Neither socket reads.
    let queued = || app.hub.socket(&pauser.id).map_or(0, |h| h.queued_bytes());
    let mut sent = 0u64;
    while queued() <= 64 * 1024 {
        let n = grpc_send_on(&mut d, "C1", &room, &json!({"seq": sent, "pad": pad})).await;
        assert_eq!(n, 2, "frame {sent}: both sockets still open");
        sent += 1;
        assert!(sent < 3_000, "the pauser's queue never passed its bound");
    }
    assert_eq!(app.hub.evictions(), 0, "a pause is not a stall");
    // The pauser reads again: every frame, in order.
    let mut seq = 0u64;
    while seq < sent {
        let f = pauser.frame().await;
        if f["action"] != "message" {
            continue;
        }
        assert_eq!(f["data"]["seq"], seq);
        seq += 1;
    }
    // The stalled one never does: once its kernel has refused it for the stall time, the
    // next frame past its bound closes it. Frames go at 20 a second, so its queue stays far
    // from the cap (4 KiB each, 64 to the cap) within the stall time.
    let mut pace = tokio::time::interval(Duration::from_millis(50));
    let evicted = tokio::time::timeout(WAIT, async {
        loop {
            pace.tick().await;
            let n = grpc_send_on(&mut d, "C1", &room, &json!({"seq": seq, "pad": pad})).await;
            // The pauser keeps reading: up to the frame just sent.
            loop {
                let f = pauser.frame().await;
                if f["action"] == "message" {
                    assert_eq!(f["data"]["seq"], seq);
                    break;
                }
            }
            seq += 1;
            if n == 1 {
                return seq;
            }
        }
    })
    .await
    .expect("the stalled socket is evicted within the stall time");
    assert!(evicted > sent);
    assert_eq!(app.hub.evictions_for(EvictionCause::Stalled), 1);
    assert_eq!(stalled.close_code().await, Some(1013));

    // A third socket, in a room of its own, lets four bounds pile up faster than the stall
    // time: the cap closes it.
    let other = app.conversation("C1", "streamingLive", true).await;
    let mut flooded = Ws::connect_small_rcvbuf(app.socket).await;
    flooded.get_id().await;
    app.join_one(&other, &flooded.id, "f").await;
    let big = "b".repeat(30_000);
    let mut sent = 0;
    while grpc_send_on(&mut d, "C1", &other, &json!({"pad": big})).await == 1 {
        sent += 1;
        // Its kernel takes megabytes before it refuses (loopback autotunes the send
        // buffer); the cap comes 256 KiB after that.
        assert!(sent < 400, "the flooded socket was never capped");
    }
    assert_eq!(app.hub.evictions_for(EvictionCause::OverCap), 1);
    assert_eq!(flooded.close_code().await, Some(1013));
}
