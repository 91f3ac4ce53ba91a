//! The socket protocol (§2): handshake, id stability, limits, keepalive, eviction.
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use futures::SinkExt;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

use crate::helpers::*;
use crate::server_test;

server_test!(handshake_and_id_stability, |db: TestDb| async move {
    let app = TestApp::spawn(&db).await;
    let mut a = app.ws().await;
    // Nothing before the first client frame. Absence can only be shown by waiting: a
    // 300 ms window, not a wait for an event.
    assert!(a.try_text(Duration::from_millis(300)).await.is_none());
    a.stream.send(Message::text("getId")).await.unwrap();
    let raw = a.text().await;
    let id = serde_json::from_str::<serde_json::Value>(&raw).unwrap()["data"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        raw,
        format!(r#"{{"churchId":"","conversationId":"","action":"socketId","data":"{id}"}}"#)
    );
    assert_eq!(id.len(), 11);
    assert!(
        id.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    );
    // Any later frame, text or binary, whatever its content, echoes the same id once.
    a.stream
        .send(Message::binary(vec![1u8, 2, 3]))
        .await
        .unwrap();
    a.stream
        .send(Message::text("anything at all"))
        .await
        .unwrap();
    assert_eq!(a.frame().await["data"], id);
    assert_eq!(a.frame().await["data"], id);
    // Once each: a 200 ms window shows no third reply (absence can only be shown by waiting).
    assert!(a.try_text(Duration::from_millis(200)).await.is_none());
    // A new socket, on either entry point, gets a new id.
    let mut b = Ws::connect(&format!("ws://{}/any/path", app.http)).await;
    assert_ne!(b.get_id().await, id);
});

server_test!(inbound_frame_over_4k_closes_1009, |db: TestDb| async move {
    let app = TestApp::spawn(&db).await;
    let mut a = app.ws_with_id().await;
    let mut b = app.ws_with_id().await;
    a.stream
        .send(Message::text("x".repeat(4097)))
        .await
        .unwrap();
    assert_eq!(a.close_code().await, Some(1009));
    // Exactly 4096 bytes is fine, and the process keeps serving everyone else.
    b.stream
        .send(Message::text("y".repeat(4096)))
        .await
        .unwrap();
    assert_eq!(b.frame().await["data"], b.id);
});

server_test!(
    non_upgrade_on_socket_port_gets_426,
    |db: TestDb| async move {
        let app = TestApp::spawn(&db).await;
        let resp = app
            .client
            .get(format!("http://{}/x", app.socket))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 426);
        assert_eq!(
            resp.json::<serde_json::Value>().await.unwrap(),
            json!({"error": "Upgrade Required"})
        );
    }
);

server_test!(
    silent_peer_is_dropped_and_room_told,
    |db: TestDb| async move {
        let mut s = settings(&db);
        s.ping_interval_secs = 0.2;
        let app = TestApp::spawn_with(s).await;
        let room = app.conversation("C1", "streamingLive", true).await;
        let mut watcher = app.ws_with_id().await;
        // The silent peer: it handshakes, joins, then is never polled again, so it never pongs.
        let mut silent = app.ws_with_id().await;
        app.join_one(&room, &watcher.id, "watcher").await;
        app.join_one(&room, &silent.id, "silent").await;
        watcher
            .until(|f| f["action"] == "attendance" && f["data"]["totalViewers"] == 2)
            .await;
        // The watcher keeps answering pings because it is being read; the silent one is not.
        watcher
            .until(|f| f["action"] == "attendance" && f["data"]["totalViewers"] == 1)
            .await;
        let (_, rows) = app
            .get(&format!("/messaging/connections/C1/{room}"), None)
            .await;
        assert_eq!(rows.as_array().unwrap().len(), 1);
        assert_eq!(rows[0]["socketId"], watcher.id);
        drop(silent.stream.close(None).await);
    }
);

server_test!(
    stalled_reader_is_evicted_while_200_others_get_everything,
    |db: TestDb| async move {
        let mut s = settings(&db);
        s.socket_queue_bytes = 64 * 1024;
        let app = TestApp::spawn_with(s).await;
        let room = app.conversation("C1", "streamingLive", true).await;
        let mut readers = Vec::new();
        let mut items = Vec::new();
        for _ in 0..200 {
            let ws = app.ws_with_id().await;
            items.push(json!({"conversationId": room, "socketId": ws.id}));
            readers.push(ws);
        }
        let mut stalled = Ws::connect_small_rcvbuf(app.socket).await;
        stalled.get_id().await;
        items.push(json!({"conversationId": room, "socketId": stalled.id}));
        for chunk in items.chunks(100) {
            app.join(None, json!(chunk)).await;
        }
        // Readers drain concurrently; the stalled socket is never polled. Each reports its
        // progress, and the sender keeps at most LAG messages ahead of the slowest reader:
        // the 64 KiB bound is then only ever reached by the stalled socket, however busy the
        // machine (unpaced, a reader whose task waits for a core would overflow too).
        const LAG: u64 = 8;
        let progress: Arc<Vec<AtomicU64>> = Arc::new((0..200).map(|_| AtomicU64::new(0)).collect());
        let tick = Arc::new(tokio::sync::Notify::new());
        let caught_up = |seq: u64| {
            let (progress, tick) = (progress.clone(), tick.clone());
            async move {
                let need = seq.saturating_sub(LAG);
                tokio::time::timeout(WAIT, async {
                    while progress.iter().any(|p| p.load(Relaxed) < need) {
                        tick.notified().await;
                    }
                })
                .await
                .expect("readers fell behind");
            }
        };
        let (done_tx, mut done_rx) = tokio::sync::mpsc::unbounded_channel();
        for (i, mut ws) in readers.into_iter().enumerate() {
            let done_tx = done_tx.clone();
            let (progress, tick) = (progress.clone(), tick.clone());
            tokio::spawn(async move {
                let mut expected = 0u64;
                loop {
                    let f = ws.frame().await;
                    if f["action"] != "message" {
                        continue;
                    }
                    let seq = f["data"]["seq"].as_u64().unwrap();
                    assert_eq!(seq, expected, "reader {i} out of order");
                    expected += 1;
                    progress[i].store(expected, Relaxed);
                    tick.notify_one();
                    if f["data"]["last"] == true {
                        // Hand the socket back so it stays open (and subscribed).
                        done_tx.send((expected, ws)).unwrap();
                        return;
                    }
                }
            });
        }
        let pad = "p".repeat(4000);
        let mut seq = 0u64;
        // Send until the stalled socket drops out of the delivered count (its eviction).
        loop {
            caught_up(seq).await;
            let n = app
                .grpc_send("C1", &room, &json!({"seq": seq, "pad": pad}))
                .await;
            seq += 1;
            if n == 200 {
                break;
            }
            assert_eq!(n, 201);
            assert!(seq < 20_000, "stalled socket was never evicted");
        }
        // The stalled peer resumes reading now: after what was written it finds the 1013
        // close (the server gives a slow peer a few seconds to take it).
        let stalled_id = stalled.id.clone();
        let closed = tokio::spawn(async move { stalled.close_code().await });
        for _ in 0..20 {
            caught_up(seq).await;
            app.grpc_send("C1", &room, &json!({"seq": seq, "pad": pad}))
                .await;
            seq += 1;
        }
        assert_eq!(
            app.grpc_send("C1", &room, &json!({"seq": seq, "last": true}))
                .await,
            200
        );
        let mut finished = Vec::new();
        for _ in 0..200 {
            let (got, ws) = tokio::time::timeout(WAIT, done_rx.recv())
                .await
                .unwrap()
                .unwrap();
            assert_eq!(got, seq + 1);
            finished.push(ws);
        }
        assert_eq!(closed.await.unwrap(), Some(1013));
        let hub = app.hub.clone();
        eventually("evicted socket's rows deleted", || {
            let app = &app;
            let room = room.clone();
            let sid = stalled_id.clone();
            async move {
                let rows = app.store.room_rows("C1", &room).await.unwrap();
                rows.len() == 200 && rows.iter().all(|r| r.socket_id != sid)
            }
        })
        .await;
        assert!(!hub.has_socket(&stalled_id));
    }
);

server_test!(
    a_full_socket_gets_every_frame_in_order_once_it_reads_again,
    |db: TestDb| async move {
        let mut s = settings(&db);
        s.socket_queue_bytes = 8 << 20;
        let app = TestApp::spawn_with(s).await;
        let room = app.conversation("C1", "streamingLive", true).await;
        let mut paused = Ws::connect_small_rcvbuf(app.socket).await;
        paused.get_id().await;
        let mut other = app.ws_with_id().await;
        app.join(
            None,
            json!([
                {"conversationId": room, "socketId": paused.id},
                {"conversationId": room, "socketId": other.id},
            ]),
        )
        .await;
        async fn next_seq(ws: &mut Ws) -> u64 {
            ws.next_action("message").await["data"]["seq"]
                .as_u64()
                .unwrap()
        }
        // Send while `paused` is not read until the kernel refuses more for it and frames
        // wait in the server's queue (its task then owns its writes); `other` keeps getting
        // each one meanwhile.
        let pad = "p".repeat(4000);
        let (hub, paused_id) = (app.hub.clone(), paused.id.clone());
        let queued = || hub.socket(&paused_id).map_or(0, |h| h.queued_bytes());
        let mut seq = 0u64;
        while queued() < 256 * 1024 {
            assert!(
                seq < 1500,
                "the paused socket's kernel buffers never filled"
            );
            let n = app
                .grpc_send("C1", &room, &json!({"seq": seq, "pad": pad}))
                .await;
            assert_eq!(n, 2);
            assert_eq!(next_seq(&mut other).await, seq);
            seq += 1;
        }
        // Reading again, it gets everything, once and in order...
        for want in 0..seq {
            assert_eq!(next_seq(&mut paused).await, want);
        }
        eventually("the paused socket's queue drained", || {
            let q = queued();
            async move { q == 0 }
        })
        .await;
        // ...and later frames reach it through the normal path again.
        for _ in 0..5 {
            app.grpc_send("C1", &room, &json!({"seq": seq})).await;
            assert_eq!(next_seq(&mut paused).await, seq);
            assert_eq!(next_seq(&mut other).await, seq);
            seq += 1;
        }
    }
);

server_test!(
    concurrent_publishers_reach_every_socket_once_in_each_ones_order,
    |db: TestDb| async move {
        let mut s = settings(&db);
        s.socket_queue_bytes = 8 << 20;
        let app = Arc::new(TestApp::spawn_with(s).await);
        let room = app.conversation("C1", "streamingLive", true).await;
        const PUBLISHERS: u64 = 4;
        const EACH: u64 = 100;
        // Readers that keep up, and readers that start only after the last send: the
        // kernel refuses most of it for them, so their tasks take their writes over.
        let mut live = Vec::new();
        let mut late = Vec::new();
        let mut items = Vec::new();
        for i in 0..24 {
            let ws = if i % 8 == 0 {
                let mut ws = Ws::connect_small_rcvbuf(app.socket).await;
                ws.get_id().await;
                ws
            } else {
                app.ws_with_id().await
            };
            items.push(json!({"conversationId": room, "socketId": ws.id}));
            if i % 8 == 0 {
                late.push(ws)
            } else {
                live.push(ws)
            }
        }
        app.join(None, json!(items)).await;
        async fn read_all(mut ws: Ws) {
            let mut next = [0u64; PUBLISHERS as usize];
            for _ in 0..PUBLISHERS * EACH {
                let f = ws.next_action("message").await;
                let p = f["data"]["p"].as_u64().unwrap() as usize;
                assert_eq!(f["data"]["seq"].as_u64().unwrap(), next[p], "publisher {p}");
                next[p] += 1;
            }
            // Exactly once: no further message within a 100 ms window (absence can only be
            // shown by waiting).
            assert!(
                ws.try_text(Duration::from_millis(100))
                    .await
                    .is_none_or(|t| !t.contains("\"message\""))
            );
        }
        let live: Vec<_> = live
            .into_iter()
            .map(|ws| tokio::spawn(read_all(ws)))
            .collect();
        let pad = "p".repeat(2000);
        let publishers: Vec<_> = (0..PUBLISHERS)
            .map(|p| {
                let (app, room, pad) = (app.clone(), room.clone(), pad.clone());
                tokio::spawn(async move {
                    for seq in 0..EACH {
                        let n = app
                            .grpc_send("C1", &room, &json!({"p": p, "seq": seq, "pad": pad}))
                            .await;
                        assert_eq!(n, 24);
                    }
                })
            })
            .collect();
        for p in publishers {
            p.await.unwrap();
        }
        for ws in late {
            read_all(ws).await;
        }
        for r in live {
            r.await.unwrap();
        }
    }
);

server_test!(
    upgrades_past_max_sockets_get_503_before_the_handshake,
    |db: TestDb| async move {
        let mut s = settings(&db);
        s.max_sockets = 2;
        let app = TestApp::spawn_with(s).await;
        let mut first = app.ws_with_id().await;
        let _second = app.ws_with_id().await;
        let url = format!("ws://{}/", app.socket);
        match tokio_tungstenite::connect_async(&url).await {
            Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
                assert_eq!(resp.status().as_u16(), 503);
                assert!(resp.headers().contains_key("retry-after"));
                let body = String::from_utf8(resp.body().clone().unwrap_or_default()).unwrap();
                assert_eq!(
                    serde_json::from_str::<Value>(&body).unwrap(),
                    json!({"error": "Too many sockets"})
                );
            }
            other => panic!("expected 503, got {:?}", other.map(|_| ())),
        }
        // The shared HTTP port counts the same sockets.
        let url = format!("ws://{}/", app.http);
        assert!(tokio_tungstenite::connect_async(&url).await.is_err());
        // A socket that ends gives its place back.
        first.stream.close(None).await.unwrap();
        first.close_code().await;
        eventually("a place is free again", || async {
            tokio_tungstenite::connect_async(format!("ws://{}/", app.socket))
                .await
                .is_ok()
        })
        .await;
    }
);

/// `FLUSH_INTERVAL_MS`: a socket that gets frames faster than one per interval, listed
/// again within the interval, waits with everything sent to it meanwhile, while a socket
/// not written lately is written at once by the same flusher; shutdown writes whatever
/// waits, in order, before the close.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paced_socket_waits_its_turn_while_others_go_at_once() {
    let db = TestDb::create(Backend::Sqlite).await;
    let mut s = settings(&db);
    // Far longer than the test: once written, a socket is not written again until shutdown.
    s.flush_interval_ms = 600_000;
    s.socket_threads = 1; // one flusher for every socket
    let mut app = TestApp::spawn_with(s).await;
    let room = app.conversation("C1", "streamingLive", true).await;
    // A's first frames (its id, twice) are written at once; two frames well within the
    // interval of each other make it a socket that gets frames faster than one per interval.
    let mut a = app.ws_with_id().await;
    a.stream.send(Message::text("getId")).await.expect("send");
    assert_eq!(a.frame().await["data"], a.id);
    app.join_one(&room, &a.id, "A").await;
    let mut d = app.delivery().await;
    for seq in 0..3 {
        assert_eq!(
            grpc_send_on(&mut d, "C1", &room, &json!({ "seq": seq })).await,
            1
        );
    }
    let before = app.hub.socket_writes();
    // B's first frame goes at once, though A waits in the same flusher. B was listed after
    // A's frames, so by B's answer the flusher had looked at A and left it waiting.
    let b = app.ws_with_id().await;
    assert_eq!(
        app.hub.socket_writes(),
        before + 1,
        "only B's answer was written"
    );
    // And A still gets nothing: a 200 ms window (absence can only be shown by waiting).
    assert!(a.try_text(Duration::from_millis(200)).await.is_none());
    let reader = tokio::spawn(async move {
        let mut seqs = Vec::new();
        while let Some(t) = a.try_text(WAIT).await {
            let f: Value = serde_json::from_str(&t).expect("JSON frame");
            if f["action"] == "message" {
                seqs.push(f["data"]["seq"].as_u64().expect("seq"));
            }
        }
        seqs
    });
    app.shutdown().await;
    let seqs = reader.await.expect("reader");
    assert_eq!(
        seqs,
        [0, 1, 2],
        "every waiting frame, in order, before the close"
    );
    drop(b);
}

/// Under a stream of broadcasts, paced sockets get every frame in order, in a few writes
/// (the interval is much longer than the stream, so at most one write per socket goes out
/// at once and the rest leave together when the interval is over).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paced_sockets_get_a_burst_in_order_in_few_writes() {
    let db = TestDb::create(Backend::Sqlite).await;
    let mut s = settings(&db);
    s.flush_interval_ms = 300;
    s.socket_threads = 1;
    let app = TestApp::spawn_with(s).await;
    let room = app.conversation("C1", "streamingLive", true).await;
    let mut sockets = Vec::new();
    for name in ["A", "B"] {
        let ws = app.ws_with_id().await;
        app.join_one(&room, &ws.id, name).await;
        sockets.push(ws);
    }
    // Both joins' attendance frames are out before the burst starts.
    for ws in &mut sockets {
        ws.until(|f| f["action"] == "attendance" && f["data"]["totalViewers"] == 2)
            .await;
    }
    let before = app.hub.socket_writes();
    let mut d = app.delivery().await;
    const N: u64 = 60;
    for seq in 0..N {
        grpc_send_on(&mut d, "C1", &room, &json!({ "seq": seq })).await;
    }
    for ws in &mut sockets {
        let mut next = 0;
        while next < N {
            let f = ws.next_action("message").await;
            assert_eq!(f["data"]["seq"], next, "in order");
            next += 1;
        }
    }
    let writes = app.hub.socket_writes() - before;
    // Unpaced, one sequential send after another, this is about one write per frame. Paced,
    // once a socket's moving average says it gets a frame faster than one per 300 ms (a few
    // writes), it is written once per 300 ms: a handful of writes in all unless the sends
    // themselves took seconds.
    assert!(writes <= 2 * 10, "{writes} writes for 2 × {N} frames");
}
