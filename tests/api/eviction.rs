//! The slow-consumer rule (§2.3, issue 29): only a client that does not read is evicted. A
//! reader that keeps up is never closed, however far this server's own writer falls behind
//! (socket threads at a lower priority, paced writes, a busy request path), and the generator,
//! the readers and the service share the same two cores here on purpose.
//!
//! The hub's rule does not depend on the database, so these run on SQLite only.
use std::time::Duration;

use futures::StreamExt;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

use crate::helpers::*;

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
            let rows = app.store.room_rows("C1", &room).await.unwrap();
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
