//! Positions and resume on one node (PROTOCOL.md §5.6): `positions=1` sockets get `seq` on
//! each audience frame and a `position` in their join rows; a join with `since` replays what
//! the socket missed, or sends one `gap`; sockets without positions see today's bytes.
use messaging::pb;
use serde_json::{Value, json};

use crate::helpers::*;
use crate::server_test;

const CE: &str = "Content__Edit";

/// A socket with positions, through the handshake.
async fn positioned(app: &TestApp) -> Ws {
    let mut ws = Ws::connect(&format!("{}?positions=1", app.ws_base)).await;
    ws.get_id().await;
    ws
}

/// Joins one socket to a room, with `since` if given; returns its row.
async fn join(app: &TestApp, room: &str, socket: &str, since: Option<&Value>) -> Value {
    let mut item = json!({"conversationId": room, "socketId": socket, "displayName": "n"});
    if let Some(s) = since {
        item["since"] = s.clone();
    }
    app.join(None, json!([item])).await[0].clone()
}

/// A `message` frame to the room through gRPC `Delivery`, numbered `n` in its data.
async fn publish(app: &TestApp, room: &str, n: u64) {
    app.grpc_send("C1", room, &json!({"n": n})).await;
}

/// The next `n` frames that are not attendance or blockedIp, which each node sends on its
/// own and which never carry a `seq` (checked here, for every one skipped).
async fn frames(ws: &mut Ws, n: usize) -> Vec<Value> {
    let mut out = Vec::new();
    while out.len() < n {
        let f = ws.frame().await;
        if f["action"] == "attendance" || f["action"] == "blockedIp" {
            assert!(f.get("seq").is_none(), "{f}");
        } else {
            out.push(f);
        }
    }
    out
}

fn seqs(frames: &[Value]) -> Vec<u64> {
    frames
        .iter()
        .map(|f| f["seq"].as_u64().expect("seq"))
        .collect()
}

/// A public conversation with anonymous posts, created over REST.
async fn public_room(app: &TestApp) -> String {
    let admin = app.token("C1", "ADMIN", &[CE]);
    let (s, body) = app
        .post(
            "/messaging/conversations",
            Some(&admin),
            &json!([{"contentType": "streamingLive", "contentId": messaging::ids::new_id(), "visibility": "public", "allowAnonymousPosts": true}]),
        )
        .await;
    assert_eq!(s, 200, "{body}");
    body[0]["id"].as_str().expect("id").to_string()
}

/// A public room and a socket with positions in it: (room, socket, the room's epoch).
async fn joined_room(app: &TestApp) -> (String, Ws, String) {
    let room = public_room(app).await;
    let a = positioned(app).await;
    let row = join(app, &room, &a.id, None).await;
    let epoch = row["position"]["epoch"]
        .as_str()
        .expect("epoch")
        .to_string();
    (room, a, epoch)
}

server_test!(
    a_socket_resumes_where_it_left_off,
    [sqlite, postgres, mysql],
    |db: TestDb| async move {
        let app = TestApp::spawn(&db).await;
        let room = public_room(&app).await;
        let mut a = positioned(&app).await;
        let row = join(&app, &room, &a.id, None).await;
        // A room never used: seq 0.
        assert_eq!(row["position"]["seq"], 0, "{row}");
        let epoch = row["position"]["epoch"]
            .as_str()
            .expect("epoch")
            .to_string();
        for n in 1..=3 {
            publish(&app, &room, n).await;
        }
        let got = frames(&mut a, 3).await;
        assert_eq!(seqs(&got), [1, 2, 3]);
        // The envelope with one more key, after `data`.
        let raw = serde_json::to_string(&got[0]).expect("json");
        assert!(raw.ends_with(r#""data":{"n":1},"seq":1}"#), "{raw}");
        drop(a);

        // Missed while away, a stored message among them (a held frame, numbered when its
        // write commits).
        publish(&app, &room, 4).await;
        let (s, body) = app
            .post(
                "/messaging/messages/send",
                None,
                &json!([{"conversationId": room, "content": "while away", "displayName": "G"}]),
            )
            .await;
        assert_eq!(s, 200, "{body}");
        publish(&app, &room, 6).await;

        let mut b = positioned(&app).await;
        let row = join(&app, &room, &b.id, Some(&json!({"epoch": epoch, "seq": 3}))).await;
        assert_eq!(row["position"], json!({"epoch": epoch, "seq": 6}));
        publish(&app, &room, 7).await;
        let got = frames(&mut b, 4).await;
        assert_eq!(seqs(&got), [4, 5, 6, 7], "{got:?}");
        assert_eq!(got[1]["action"], "message");
        assert_eq!(got[1]["data"]["content"], "while away");
        assert_eq!(got[0]["data"]["n"], 4);
        assert_eq!(got[3]["data"]["n"], 7);
    }
);

server_test!(
    sockets_without_positions_get_the_four_keys,
    [sqlite],
    |db: TestDb| async move {
        let app = TestApp::spawn(&db).await;
        let room = public_room(&app).await;
        let mut plain = app.ws_with_id().await;
        let mut other = Ws::connect(&format!("{}?positions=true", app.ws_base)).await;
        other.get_id().await;
        let mut with = positioned(&app).await;
        // `since` on a socket without positions is ignored; its row has no position.
        let row = join(
            &app,
            &room,
            &plain.id,
            Some(&json!({"epoch": "x", "seq": 1})),
        )
        .await;
        assert!(row.get("position").is_none(), "{row}");
        let row = join(&app, &room, &other.id, None).await;
        assert!(
            row.get("position").is_none(),
            "positions=true opted in: {row}"
        );
        join(&app, &room, &with.id, None).await;
        publish(&app, &room, 1).await;
        for ws in [&mut plain, &mut other] {
            let f = frames(ws, 1).await.remove(0);
            let keys: Vec<&str> = f
                .as_object()
                .expect("object")
                .keys()
                .map(String::as_str)
                .collect();
            assert_eq!(keys, ["churchId", "conversationId", "action", "data"]);
        }
        let f = frames(&mut with, 1).await.remove(0);
        assert_eq!(f["seq"], 1);
    }
);

server_test!(
    a_position_the_room_cannot_continue_from_gets_one_gap,
    [sqlite],
    |db: TestDb| async move {
        let mut settings = settings(&db);
        settings.resume_history = 3;
        let app = TestApp::spawn_with(settings).await;
        let (room, mut a, epoch) = joined_room(&app).await;
        for n in 1..=6 {
            publish(&app, &room, n).await;
        }
        assert_eq!(seqs(&frames(&mut a, 6).await), [1, 2, 3, 4, 5, 6]);

        let gap = |reason: &str, seq: u64| {
            json!({"churchId": "C1", "conversationId": room, "action": "gap",
                   "data": {"reason": reason, "epoch": epoch, "seq": seq}})
        };
        // Kept: 4, 5, 6. From 3 on the room resumes.
        let mut b = positioned(&app).await;
        join(&app, &room, &b.id, Some(&json!({"epoch": epoch, "seq": 3}))).await;
        assert_eq!(seqs(&frames(&mut b, 3).await), [4, 5, 6]);
        // From 2 on it is expired; another epoch, or a seq the room never reached, is
        // `epoch`. One gap, naming where the socket continues, then the next frame.
        for (since, reason) in [
            (json!({"epoch": epoch, "seq": 2}), "expired"),
            (json!({"epoch": "another", "seq": 2}), "epoch"),
            (json!({"epoch": epoch, "seq": 99}), "epoch"),
        ] {
            let mut c = positioned(&app).await;
            let row = join(&app, &room, &c.id, Some(&since)).await;
            let last = row["position"]["seq"].as_u64().expect("seq");
            publish(&app, &room, 100).await;
            let got = frames(&mut c, 2).await;
            assert_eq!(got[0], gap(reason, last), "since {since}");
            assert_eq!(got[1]["seq"], last + 1, "since {since}");
        }
    }
);

server_test!(
    a_restarted_node_names_a_new_epoch,
    [sqlite],
    |db: TestDb| async move {
        let mut app = TestApp::spawn(&db).await;
        let room = public_room(&app).await;
        let a = positioned(&app).await;
        let row = join(&app, &room, &a.id, None).await;
        let old = row["position"]["epoch"]
            .as_str()
            .expect("epoch")
            .to_string();
        publish(&app, &room, 1).await;
        drop(a);
        app.shutdown().await;

        let app = TestApp::spawn(&db).await;
        let mut b = positioned(&app).await;
        let row = join(&app, &room, &b.id, Some(&json!({"epoch": old, "seq": 1}))).await;
        let new = row["position"]["epoch"].as_str().expect("epoch");
        assert_ne!(new, old);
        assert_eq!(row["position"]["seq"], 0);
        let f = frames(&mut b, 1).await.remove(0);
        assert_eq!(f["action"], "gap");
        assert_eq!(
            f["data"],
            json!({"reason": "epoch", "epoch": new, "seq": 0})
        );
    }
);

server_test!(
    a_resume_racing_live_publishes_has_no_hole_and_no_duplicate,
    [sqlite],
    |db: TestDb| async move {
        let app = TestApp::spawn(&db).await;
        let (room, mut a, epoch) = joined_room(&app).await;
        publish(&app, &room, 1).await;
        assert_eq!(seqs(&frames(&mut a, 1).await), [1]);

        // A publisher that does not stop while sockets resume from seq 1.
        const TOTAL: u64 = 300;
        let mut d = app.delivery().await;
        let publisher = {
            let room = room.clone();
            tokio::spawn(async move {
                for n in 2..=TOTAL {
                    grpc_send_on(&mut d, "C1", &room, &json!({"n": n})).await;
                }
            })
        };
        let mut resumed = Vec::new();
        for _ in 0..5 {
            let b = positioned(&app).await;
            join(&app, &room, &b.id, Some(&json!({"epoch": epoch, "seq": 1}))).await;
            resumed.push(b);
        }
        publisher.await.expect("publisher");
        for b in &mut resumed {
            let got = frames(b, (TOTAL - 1) as usize).await;
            let expect: Vec<u64> = (2..=TOTAL).collect();
            assert_eq!(seqs(&got), expect);
            let ns: Vec<u64> = got
                .iter()
                .map(|f| f["data"]["n"].as_u64().expect("n"))
                .collect();
            assert_eq!(ns, expect, "seq and publish order agree");
        }
    }
);

/// A gRPC `Join` of one socket; its rows.
async fn grpc_join(
    app: &TestApp,
    room: &str,
    socket: &str,
    since: Option<pb::Position>,
) -> Vec<pb::ConnectionRow> {
    app.connection()
        .await
        .join(pb::JoinRequest {
            items: vec![pb::JoinItem {
                church_id: "C1".into(),
                conversation_id: room.into(),
                socket_id: socket.into(),
                since,
                ..Default::default()
            }],
        })
        .await
        .expect("join")
        .into_inner()
        .connections
}

server_test!(
    grpc_join_resumes_and_reports_the_position,
    [sqlite],
    |db: TestDb| async move {
        let app = TestApp::spawn(&db).await;
        let (room, mut a, epoch) = joined_room(&app).await;
        for n in 1..=2 {
            publish(&app, &room, n).await;
        }
        frames(&mut a, 2).await;
        let mut b = positioned(&app).await;
        let since = pb::Position {
            epoch: epoch.clone(),
            seq: 1,
        };
        let rows = grpc_join(&app, &room, &b.id, Some(since)).await;
        assert_eq!(rows[0].position, Some(pb::Position { epoch, seq: 2 }));
        assert_eq!(seqs(&frames(&mut b, 1).await), [2]);
        // A plain socket's row has none.
        let plain = app.ws_with_id().await;
        let rows = grpc_join(&app, &room, &plain.id, None).await;
        assert_eq!(rows[0].position, None);
    }
);

server_test!(
    a_malformed_since_is_refused_and_joins_nothing,
    [sqlite],
    |db: TestDb| async move {
        let app = TestApp::spawn(&db).await;
        let room = public_room(&app).await;
        let a = positioned(&app).await;
        for (since, field) in [
            (json!({"epoch": "", "seq": 1}), "/0/since/epoch"),
            (json!({"epoch": "e", "seq": -1}), "/0/since/seq"),
            (json!({"epoch": "e", "seq": "1"}), "/0/since/seq"),
            (json!({"epoch": "e", "seq": 1.5}), "/0/since/seq"),
            (
                json!({"epoch": "e", "seq": 9007199254740992.0}),
                "/0/since/seq",
            ),
            (
                json!({"epoch": "e", "seq": 9007199254740992u64}),
                "/0/since/seq",
            ),
            (json!({"epoch": "e"}), "/0/since/seq"),
            (json!("e:1"), "/0/since"),
        ] {
            let (s, body) = app
                .post(
                    "/messaging/connections",
                    None,
                    &json!([{"conversationId": room, "socketId": a.id, "since": since}]),
                )
                .await;
            assert_eq!(s, 400, "{since}: {body}");
            assert_eq!(body["field"], field, "{since}: {body}");
        }
        let (_, rows) = app
            .get(&format!("/messaging/connections/C1/{room}"), None)
            .await;
        assert_eq!(rows, json!([]));
        // JSON Schema's integers include `3.0`: a valid position (ignored on this plain
        // socket's join, which it does not refuse).
        let plain = app.ws_with_id().await;
        let (s, body) = app
            .post(
                "/messaging/connections",
                None,
                &json!([{"conversationId": room, "socketId": plain.id, "since": {"epoch": "e", "seq": 3.0}}]),
            )
            .await;
        assert_eq!(s, 200, "{body}");
        // gRPC Delivery may not send a gap: it goes to one socket, from this server.
        let err = app
            .delivery()
            .await
            .send_conversation_messages(pb::SendConversationMessagesRequest {
                church_id: "C1".into(),
                conversation_id: room.clone(),
                action: "gap".into(),
                data: "{}".into(),
            })
            .await
            .expect_err("gap refused");
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
    }
);

server_test!(
    a_log_idle_for_the_window_is_dropped_and_its_room_starts_a_new_epoch,
    [sqlite],
    |db: TestDb| async move {
        let mut settings = settings(&db);
        settings.resume_window_secs = 1;
        let app = TestApp::spawn_with(settings).await;
        let (room, a, old) = joined_room(&app).await;
        publish(&app, &room, 1).await;
        // Its only member leaves; another room stays busy.
        let (s, body) = app
            .delete(&format!("/messaging/connections/C1/{room}/{}", a.id), None)
            .await;
        assert_eq!(s, 200, "{body}");
        let (busy, mut b, busy_epoch) = joined_room(&app).await;
        // The window is the event: nothing touches the first room's log for longer.
        tokio::time::sleep(std::time::Duration::from_millis(1_500)).await;
        publish(&app, &busy, 1).await;
        assert_eq!(seqs(&frames(&mut b, 1).await), [1]);

        let mut c = positioned(&app).await;
        let row = join(&app, &room, &c.id, Some(&json!({"epoch": old, "seq": 1}))).await;
        let new = row["position"]["epoch"].as_str().expect("epoch");
        assert_ne!(new, old, "the idle log was kept");
        assert_eq!(row["position"]["seq"], 0);
        let f = frames(&mut c, 1).await.remove(0);
        assert_eq!(
            f["data"],
            json!({"reason": "epoch", "epoch": new, "seq": 0})
        );
        // The busy room, with a member, kept its log.
        let probe = positioned(&app).await;
        let row = join(&app, &busy, &probe.id, None).await;
        assert_eq!(row["position"], json!({"epoch": busy_epoch, "seq": 1}));
    }
);
