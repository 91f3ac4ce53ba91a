//! Rooms, joins, fan-out and attendance (§4–§6, §10.2).
use std::time::{Duration, Instant};

use futures::SinkExt;
use messaging::hub::Action;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

use crate::helpers::*;
use crate::server_test;

server_test!(two_entry_points_share_rooms, |db: TestDb| async move {
    let app = TestApp::spawn(&db).await;
    let room = app.conversation("C1", "streamingLive", true).await;
    let mut dedicated = app.ws_with_id().await;
    let mut shared = Ws::connect(&format!("ws://{}/messaging/some/path", app.http)).await;
    shared.get_id().await;
    app.join_one(&room, &dedicated.id, "a").await;
    app.join_one(&room, &shared.id, "b").await;
    assert_eq!(app.grpc_send("C1", &room, &json!({"n": 1})).await, 2);
    for ws in [&mut dedicated, &mut shared] {
        let f = ws.next_action("message").await;
        assert_eq!(
            f,
            json!({"churchId": "C1", "conversationId": room, "action": "message", "data": {"n": 1}})
        );
    }
});

server_test!(
    join_gives_attendance_and_blocked_ip,
    [sqlite, postgres, mysql, gateway_postgres, gateway_mysql],
    |db: TestDb| async move {
        let app = TestApp::spawn(&db).await;
        let room = app.conversation("C1", "streamingLive", true).await;
        let mut a = app.ws_with_id().await;
        let rows = app.join_one(&room, &a.id, "Alice").await;
        let row = &rows[0];
        let keys: Vec<&str> = row
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(
            keys,
            [
                "id",
                "churchId",
                "conversationId",
                "personId",
                "displayName",
                "timeJoined",
                "socketId",
                "ipAddress"
            ]
        );
        assert_eq!(row["churchId"], "C1");
        assert_eq!(
            row["ipAddress"],
            Value::Null,
            "ipAddress is hidden from anonymous callers"
        );
        assert!(row["timeJoined"].as_str().unwrap().ends_with('Z'));
        let raw = a.text().await;
        assert!(
            raw.starts_with(r#"{"churchId":"C1","conversationId":""#),
            "{raw}"
        );
        let f: Value = serde_json::from_str(&raw).unwrap();
        assert_eq!(f["action"], "attendance");
        assert_eq!(
            f["data"],
            json!({"conversationId": room, "viewers": [{"id": row["id"], "displayName": "Alice"}], "totalViewers": 1})
        );
        assert!(!raw.contains("ipAddress"));
        let f = a.frame().await;
        assert_eq!(
            (f["action"].as_str(), &f["data"]),
            (Some("blockedIp"), &json!([]))
        );
    }
);

server_test!(
    grpc_fanout_reaches_exactly_the_room_once_in_order,
    |db: TestDb| async move {
        let app = TestApp::spawn(&db).await;
        let room = app.conversation("C1", "streamingLive", true).await;
        let other_room = app.conversation("C1", "streamingLive", true).await;
        let mut members = Vec::new();
        for i in 0..5 {
            let ws = app.ws_with_id().await;
            app.join_one(&room, &ws.id, &format!("m{i}")).await;
            members.push(ws);
        }
        let mut outsider = app.ws_with_id().await;
        app.join_one(&other_room, &outsider.id, "o").await;
        // Same room id in another church: a different room.
        let mut other_church = app.ws_with_id().await;
        assert_eq!(
            app.svc
                .send_to_room("C2", &room, Action::Message, &json!({"probe": true})),
            0
        );
        let (_, body) = app
        .post(
            "/messaging/connections",
            Some(&app.token("C2", "P2", &[])),
            &json!([{"conversationId": format!("content-sermon-{room}"), "socketId": other_church.id}]),
        )
        .await;
        assert_eq!(body[0]["churchId"], "C2");
        for n in 0..50 {
            assert_eq!(app.grpc_send("C1", &room, &json!({"seq": n})).await, 5);
        }
        app.grpc_send("C1", &other_room, &json!({"end": true}))
            .await;
        app.svc.send_to_room(
            "C2",
            &format!("content-sermon-{room}"),
            Action::Message,
            &json!({"end": true}),
        );
        for ws in &mut members {
            let seqs: Vec<u64> = ws
                .until(|f| f["data"]["seq"] == 49)
                .await
                .into_iter()
                .filter(|f| f["action"] == "message")
                .map(|f| f["data"]["seq"].as_u64().unwrap())
                .collect();
            assert_eq!(seqs, (0..50).collect::<Vec<_>>());
        }
        // The outsiders' first message frame is their own room's end marker.
        assert_eq!(
            outsider.next_action("message").await["data"],
            json!({"end": true})
        );
        assert_eq!(
            other_church.next_action("message").await["data"],
            json!({"end": true})
        );
    }
);

server_test!(
    leave_and_close_give_attendance_to_the_rest,
    [sqlite, postgres, mysql, gateway_postgres, gateway_mysql],
    |db: TestDb| async move {
        let app = TestApp::spawn(&db).await;
        let room = app.conversation("C1", "streamingLive", true).await;
        let mut a = app.ws_with_id().await;
        let mut b = app.ws_with_id().await;
        let mut c = app.ws_with_id().await;
        app.join(
            None,
            json!([
                {"conversationId": room, "socketId": a.id, "displayName": "a"},
                {"conversationId": room, "socketId": b.id, "displayName": "b"},
                {"conversationId": room, "socketId": c.id, "displayName": "c"},
            ]),
        )
        .await;
        for ws in [&mut a, &mut b, &mut c] {
            // One batch: exactly one attendance frame for each subscriber.
            assert_eq!(
                ws.next_action("attendance").await["data"]["totalViewers"],
                3
            );
            assert_eq!(ws.frame().await["action"], "blockedIp");
        }
        let (status, body) = app
            .delete(&format!("/messaging/connections/C1/{room}/{}", c.id), None)
            .await;
        assert_eq!((status, body), (200, json!({"success": true})));
        for ws in [&mut a, &mut b] {
            let f = ws.next_action("attendance").await;
            assert_eq!(f["data"]["totalViewers"], 2);
        }
        // The leaver got nothing: its next frame is the reply to its own probe.
        c.stream.send("getId".into()).await.unwrap();
        assert_eq!(c.frame().await["action"], "socketId");
        // Leaving again is still a success.
        let (status, _) = app
            .delete(&format!("/messaging/connections/C1/{room}/{}", c.id), None)
            .await;
        assert_eq!(status, 200);
        b.stream.close(None).await.unwrap();
        let f = a.next_action("attendance").await;
        assert_eq!(f["data"]["totalViewers"], 1);
        assert_eq!(f["data"]["viewers"][0]["displayName"], "a");
    }
);

server_test!(
    concurrent_identical_joins_leave_one_row,
    |db: TestDb| async move {
        let app = TestApp::spawn(&db).await;
        let room = app.conversation("C1", "streamingLive", true).await;
        let mut a = app.ws_with_id().await;
        let body = json!([{"conversationId": room, "socketId": a.id, "displayName": "x"}]);
        let joins = (0..20).map(|_| app.post("/messaging/connections", None, &body));
        let results = futures::future::join_all(joins).await;
        let ids: std::collections::BTreeSet<String> = results
            .iter()
            .map(|(s, b)| {
                assert_eq!(*s, 200, "{b}");
                b[0]["id"].as_str().unwrap().to_string()
            })
            .collect();
        assert_eq!(ids.len(), 1, "every join returns the same row id");
        let rows = app.store.room_rows("C1", &room).await.unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!(&rows[0].id, ids.iter().next().unwrap());
        assert_eq!(app.grpc_send("C1", &room, &json!({"once": true})).await, 1);
        let frames = a.until(|f| f["action"] == "message").await;
        assert_eq!(
            frames.iter().filter(|f| f["action"] == "message").count(),
            1
        );
        a.stream.send("getId".into()).await.unwrap();
        assert_eq!(
            a.until(|f| f["action"] == "socketId")
                .await
                .iter()
                .filter(|f| f["action"] == "message")
                .count(),
            0
        );
    }
);

server_test!(
    separate_concurrent_joins_are_coalesced,
    |db: TestDb| async move {
        let app = TestApp::spawn(&db).await;
        let room = app.conversation("C1", "streamingLive", true).await;
        let mut watcher = app.ws_with_id().await;
        app.join_one(&room, &watcher.id, "w").await;
        watcher.next_action("attendance").await;
        let mut sockets = Vec::new();
        for _ in 0..20 {
            sockets.push(app.ws_with_id().await);
        }
        let started = Instant::now();
        let joins = sockets.iter().map(|ws| app.join_one(&room, &ws.id, "j"));
        futures::future::join_all(joins).await;
        let frames = watcher
            .until(|f| f["action"] == "attendance" && f["data"]["totalViewers"] == 21)
            .await;
        let attendance = frames
            .iter()
            .filter(|f| f["action"] == "attendance")
            .count();
        // At most one frame per 100 ms window since the joins began (plus the window in flight).
        // The clock only sets the allowance: a slow machine makes it larger, never smaller,
        // so this cannot fail for want of speed.
        let windows = started.elapsed().as_millis() as usize / 100 + 1;
        assert!(
            attendance <= windows,
            "{attendance} attendance frames in {windows} windows"
        );
        assert!(attendance < 20, "20 joins must not give 20 frames");
    }
);

server_test!(
    big_room_roster_is_capped_and_sorted,
    |db: TestDb| async move {
        let app = TestApp::spawn(&db).await;
        let room = app.conversation("C1", "streamingLive", true).await;
        let mut watcher = app.ws_with_id().await;
        let mut items =
            vec![json!({"conversationId": room, "socketId": watcher.id, "displayName": ""})];
        let mut others = Vec::new();
        for i in 0..149 {
            let ws = app.ws_with_id().await;
            items.push(json!({"conversationId": room, "socketId": ws.id, "displayName": format!("Name{:03}", 148 - i)}));
            others.push(ws);
        }
        app.join(None, json!(items[..100])).await;
        app.join(None, json!(items[100..])).await;
        let f = watcher
            .until(|f| f["action"] == "attendance" && f["data"]["totalViewers"] == 150)
            .await
            .pop()
            .unwrap();
        let viewers = f["data"]["viewers"].as_array().unwrap();
        assert_eq!(viewers.len(), 100);
        assert_eq!(viewers[0]["displayName"], "Anonymous");
        assert_eq!(viewers[1]["displayName"], "Name000");
        assert_eq!(viewers[99]["displayName"], "Name098");
        assert!(viewers.iter().all(|v| v.as_object().unwrap().len() == 2));
        // Above 100 rows the window is 1 s: a rename shows up no sooner than that. A lower
        // bound on the clock (the window is what is tested): a slow machine only lengthens it.
        let t = Instant::now();
        let (s, _) = app
            .post(
                "/messaging/connections/setName",
                None,
                &json!({"socketId": watcher.id, "name": "zed"}),
            )
            .await;
        assert_eq!(s, 200);
        let f = watcher.next_action("attendance").await;
        assert!(
            t.elapsed() >= Duration::from_millis(900),
            "big rooms flush once per second"
        );
        assert_eq!(f["data"]["viewers"][0]["displayName"], "Name000");
    }
);

server_test!(
    set_name_renames_and_tells_the_room,
    [sqlite, postgres, mysql, gateway_postgres, gateway_mysql],
    |db: TestDb| async move {
        let app = TestApp::spawn(&db).await;
        let room = app.conversation("C1", "streamingLive", true).await;
        let mut a = app.ws_with_id().await;
        app.join_one(&room, &a.id, "before").await;
        a.next_action("attendance").await;
        let (s, rows) = app
            .post(
                "/messaging/connections/setName",
                None,
                &json!({"socketId": a.id, "name": "after"}),
            )
            .await;
        assert_eq!(s, 200);
        assert_eq!(rows[0]["displayName"], "after");
        let f = a.next_action("attendance").await;
        assert_eq!(f["data"]["viewers"][0]["displayName"], "after");
        let (s, rows) = app
            .post(
                "/messaging/connections/setName",
                None,
                &json!({"socketId": "unknownsock", "name": "x"}),
            )
            .await;
        assert_eq!((s, rows), (200, json!([])));
        // Anonymous numbering.
        let mut b = app.ws_with_id().await;
        let mut c = app.ws_with_id().await;
        let r1 = app.join_one(&room, &b.id, "Anonymous ").await;
        let r2 = app.join_one(&room, &c.id, "Anonymous ").await;
        assert_eq!(r1[0]["displayName"], "Anonymous_1");
        assert_eq!(r2[0]["displayName"], "Anonymous_2");
        drop((b.stream.close(None).await, c.stream.close(None).await));
    }
);

server_test!(
    alerts_rooms_are_per_person_and_silent,
    |db: TestDb| async move {
        let app = TestApp::spawn(&db).await;
        let mut mine = app.ws_with_id().await;
        let mut theirs = app.ws_with_id().await;
        let t1 = app.token("C1", "P1", &[]);
        let t2 = app.token("C1", "P2", &[]);
        // Anonymous join to alerts: 401, nothing written.
        let (s, b) = app
            .post(
                "/messaging/connections",
                None,
                &json!([{"conversationId": "alerts", "socketId": mine.id}]),
            )
            .await;
        assert_eq!((s, b), (401, json!({"error": "Unauthorized"})));
        // The token decides church and person, whatever the body says.
        let rows = app
        .join(Some(&t1), json!([{"conversationId": "alerts", "socketId": mine.id, "churchId": "EVIL", "personId": "P2"}]))
        .await;
        assert_eq!(
            (rows[0]["churchId"].as_str(), rows[0]["personId"].as_str()),
            (Some("C1"), Some("P1"))
        );
        app.join(
            Some(&t2),
            json!([{"conversationId": "alerts", "socketId": theirs.id}]),
        )
        .await;
        // Only the caller's own rows are listed.
        let (s, list) = app.get("/messaging/connections/C1/alerts", Some(&t1)).await;
        assert_eq!(s, 200);
        assert_eq!(list.as_array().unwrap().len(), 1);
        assert_eq!(list[0]["socketId"], mine.id);
        let mut person = app.delivery().await;
        let n = person
            .send_to_person(messaging::pb::SendToPersonRequest {
                church_id: "C1".into(),
                person_id: "P1".into(),
                conversation_id: "alert".into(),
                action: "notification".into(),
                data: r#"{"counts":{"notificationCount":1,"pmCount":0}}"#.into(),
            })
            .await
            .unwrap()
            .into_inner()
            .delivered;
        assert_eq!(n, 1);
        // No attendance or blockedIp ever reaches alerts rows: the first frame is the alert.
        let f = mine.frame().await;
        assert_eq!(f["action"], "notification");
        assert_eq!(f["conversationId"], "alert");
        theirs.stream.send("getId".into()).await.unwrap();
        assert_eq!(theirs.frame().await["action"], "socketId");
    }
);

server_test!(
    join_batch_is_all_or_nothing,
    [sqlite, postgres, mysql, gateway_postgres, gateway_mysql],
    |db: TestDb| async move {
        let app = TestApp::spawn(&db).await;
        let public = app.conversation("C1", "streamingLive", true).await;
        let members_only = app.conversation("C1", "streamingLive", false).await;
        let a = app.ws_with_id().await;
        let b = app.ws_with_id().await;
        // One unauthorized item (anonymous, not anonymous-public): 401, no row, no frame.
        let (s, body) = app
        .post(
            "/messaging/connections",
            None,
            &json!([{"conversationId": public, "socketId": a.id}, {"conversationId": members_only, "socketId": b.id}]),
        )
        .await;
        assert_eq!((s, body), (401, json!({"error": "Unauthorized"})));
        assert!(app.store.room_rows("C1", &public).await.unwrap().is_empty());
        // Members may read it.
        let t = app.token("C1", "P1", &[]);
        let rows = app
            .join(
                Some(&t),
                json!([{"conversationId": members_only, "socketId": b.id}]),
            )
            .await;
        assert_eq!(rows[0]["personId"], "P1");
        // Another church's member is anonymous there.
        let other = app.token("C9", "P9", &[]);
        let (s, _) = app
            .post(
                "/messaging/connections",
                Some(&other),
                &json!([{"conversationId": members_only, "socketId": a.id}]),
            )
            .await;
        assert_eq!(s, 401);
        // Unknown socket, unknown conversation.
        let (s, body) = app
            .post(
                "/messaging/connections",
                None,
                &json!([{"conversationId": public, "socketId": "nosuchsock1"}]),
            )
            .await;
        assert_eq!((s, body), (404, json!({"error": "Socket not found"})));
        let (s, body) = app
            .post(
                "/messaging/connections",
                None,
                &json!([{"conversationId": "NOSUCHCONV1", "socketId": a.id}]),
            )
            .await;
        assert_eq!((s, body), (404, json!({"error": "Conversation not found"})));
        let (s, body) = app
            .post(
                "/messaging/connections",
                Some(&t),
                &json!([{"conversationId": "content-", "socketId": a.id}]),
            )
            .await;
        assert_eq!((s, body), (404, json!({"error": "Conversation not found"})));
        // Content rooms need a token, and take the church from it.
        let (s, _) = app
            .post(
                "/messaging/connections",
                None,
                &json!([{"conversationId": "content-group-G1", "socketId": a.id}]),
            )
            .await;
        assert_eq!(s, 401);
        let (s, _) = app
            .post(
                "/messaging/connections",
                Some(&t),
                &json!([{"conversationId": "content-group-G1", "socketId": a.id}]),
            )
            .await;
        assert_eq!(s, 401, "not a member of group G1");
        let rows = app
        .join(
            Some(&t),
            json!([{"conversationId": "content-sermon-S-1", "socketId": a.id, "churchId": "X"}]),
        )
        .await;
        assert_eq!(rows[0]["churchId"], "C1");
        // The conversation's church wins over the body's.
        let rows = app
            .join(
                None,
                json!([{"conversationId": public, "socketId": a.id, "churchId": "WRONG"}]),
            )
            .await;
        assert_eq!(rows[0]["churchId"], "C1");
        // ipAddress is shown to Content Edit holders of the church.
        let ce = app.token("C1", "P5", &["Content__Edit"]);
        let (_, list) = app
            .get(&format!("/messaging/connections/C1/{public}"), Some(&ce))
            .await;
        assert_eq!(list[0]["ipAddress"], "127.0.0.1");
        let (_, list) = app
            .get(&format!("/messaging/connections/C1/{public}"), None)
            .await;
        assert_eq!(list[0]["ipAddress"], Value::Null);
        let (s, _) = app
            .get(&format!("/messaging/connections/C2/{public}"), None)
            .await;
        assert_eq!(s, 404, "path church must match the conversation");
    }
);

server_test!(
    one_batch_of_20_gives_each_one_attendance,
    [sqlite, postgres, mysql, gateway_postgres, gateway_mysql],
    |db: TestDb| async move {
        let app = TestApp::spawn(&db).await;
        let room = app.conversation("C1", "streamingLive", true).await;
        let mut sockets = Vec::new();
        for _ in 0..20 {
            sockets.push(app.ws_with_id().await);
        }
        let items: Vec<Value> = sockets
            .iter()
            .map(|ws| json!({"conversationId": room, "socketId": ws.id, "displayName": "x"}))
            .collect();
        app.join(None, json!(items)).await;
        for ws in &mut sockets {
            let f = ws.frame().await;
            assert_eq!(
                (f["action"].as_str(), f["data"]["totalViewers"].as_u64()),
                (Some("attendance"), Some(20))
            );
            assert_eq!(ws.frame().await["action"], "blockedIp");
        }
        // Absence can only be shown by waiting: three windows pass with no second frame.
        assert!(
            sockets[0]
                .try_text(Duration::from_millis(300))
                .await
                .is_none()
        );
    }
);

server_test!(
    anonymous_numbering_follows_the_rooms_current_names,
    [sqlite, postgres, mysql, gateway_postgres, gateway_mysql],
    |db: TestDb| async move {
        let app = TestApp::spawn(&db).await;
        let room = app.conversation("C1", "streamingLive", true).await;
        let other = app.conversation("C1", "streamingLive", true).await;
        let mut ws = Vec::new();
        for _ in 0..12 {
            ws.push(app.ws_with_id().await);
        }
        let id = |i: usize| ws[i].id.clone();
        let name = |rows: &Value| rows[0]["displayName"].as_str().unwrap().to_string();
        let join = async |i: usize, room: &str, n: &str| name(&app.join_one(room, &id(i), n).await);
        let rename = async |i: usize, n: &str| {
            let (s, rows) = app
                .post(
                    "/messaging/connections/setName",
                    None,
                    &json!({"socketId": id(i), "name": n}),
                )
                .await;
            assert_eq!(s, 200, "{rows}");
        };

        assert_eq!(join(0, &room, "Anonymous ").await, "Anonymous_1");
        assert_eq!(join(1, &room, "Anonymous ").await, "Anonymous_2");
        // A name chosen by hand counts; suffixes that are not plain digits do not.
        assert_eq!(join(2, &room, "Anonymous_10").await, "Anonymous_10");
        assert_eq!(join(3, &room, "Anonymous_x").await, "Anonymous_x");
        assert_eq!(join(4, &room, "Anonymous_+20").await, "Anonymous_+20");
        assert_eq!(join(5, &room, "Anonymous ").await, "Anonymous_11");
        // Each room numbers on its own.
        assert_eq!(join(0, &other, "Anonymous ").await, "Anonymous_1");
        // The holder of the largest number leaves: the next one reuses it.
        let (s, _) = app
            .delete(&format!("/messaging/connections/C1/{room}/{}", id(5)), None)
            .await;
        assert_eq!(s, 200);
        assert_eq!(join(6, &room, "Anonymous ").await, "Anonymous_11");
        // Renames count both ways: away from the pattern, and into it.
        rename(2, "Carol").await;
        rename(6, "Dave").await;
        assert_eq!(join(7, &room, "Anonymous ").await, "Anonymous_3");
        rename(0, "Anonymous_50").await;
        assert_eq!(join(8, &room, "Anonymous ").await, "Anonymous_51");
        // A re-join of a numbered socket as "Anonymous " numbers it afresh.
        assert_eq!(join(8, &room, "Anonymous ").await, "Anonymous_52");
        // The largest BIGINT: the next number is one past it, and nothing overflows.
        let top = i64::MAX;
        assert_eq!(
            join(9, &other, &format!("Anonymous_{top}")).await,
            format!("Anonymous_{top}")
        );
        let past = format!("Anonymous_{}", top as u64 + 1);
        assert_eq!(join(10, &other, "Anonymous ").await, past);
        assert_eq!(join(11, &other, "Anonymous ").await, past);
        // The stored rows agree with the replies.
        let (s, rows) = app
            .get(&format!("/messaging/connections/C1/{room}"), None)
            .await;
        assert_eq!(s, 200);
        let mut names: Vec<&str> = rows
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["displayName"].as_str().unwrap())
            .collect();
        names.sort_unstable();
        assert_eq!(
            names,
            [
                "Anonymous_+20",
                "Anonymous_2",
                "Anonymous_3",
                "Anonymous_50",
                "Anonymous_52",
                "Anonymous_x",
                "Carol",
                "Dave"
            ]
        );
    }
);

server_test!(
    a_rejoin_keeps_its_row_and_a_batch_answers_in_order,
    [sqlite, postgres, mysql, gateway_postgres, gateway_mysql],
    |db: TestDb| async move {
        let app = TestApp::spawn(&db).await;
        let room = app.conversation("C1", "streamingLive", true).await;
        let other = app.conversation("C1", "streamingLive", true).await;
        let a = app.ws_with_id().await;
        let b = app.ws_with_id().await;
        let first = app.join_one(&room, &a.id, "before").await;
        // Past the first join's millisecond, so a new timeJoined would show.
        let joined = first[0]["timeJoined"].as_str().unwrap();
        clock_past(messaging::time::parse_rfc3339_ms(joined).unwrap()).await;
        let batch = app
            .join(
                Some(&app.token("C1", "P1", &[])),
                json!([
                    {"conversationId": room, "socketId": a.id, "displayName": "after"},
                    {"conversationId": other, "socketId": a.id, "displayName": "Anonymous "},
                    {"conversationId": other, "socketId": b.id, "displayName": "Anonymous "},
                ]),
            )
            .await;
        let batch = batch.as_array().unwrap();
        assert_eq!(batch.len(), 3);
        // The re-join: same row, same timeJoined, new name and person.
        assert_eq!(batch[0]["id"], first[0]["id"]);
        assert_eq!(batch[0]["timeJoined"], first[0]["timeJoined"]);
        assert_eq!(batch[0]["displayName"], "after");
        assert_eq!(batch[0]["personId"], "P1");
        assert_eq!(first[0]["personId"], Value::Null);
        // New rows, in request order, numbered one after the other.
        assert_eq!(
            (
                batch[1]["conversationId"].as_str(),
                batch[1]["socketId"].as_str()
            ),
            (Some(other.as_str()), Some(a.id.as_str()))
        );
        assert_eq!(batch[1]["displayName"], "Anonymous_1");
        assert_eq!(batch[2]["socketId"], b.id.as_str());
        assert_eq!(batch[2]["displayName"], "Anonymous_2");
        assert_ne!(batch[1]["id"], batch[2]["id"]);
        let (s, rows) = app
            .get(&format!("/messaging/connections/C1/{room}"), None)
            .await;
        assert_eq!(s, 200);
        assert_eq!(rows.as_array().unwrap().len(), 1);
        assert_eq!(rows[0]["displayName"], "after");
    }
);

server_test!(
    after_a_leave_returns_the_socket_gets_nothing_more_from_the_room,
    |db: TestDb| async move {
        let app = TestApp::spawn(&db).await;
        let room = app.conversation("C1", "streamingLive", true).await;
        let mut stay = app.ws_with_id().await;
        app.join_one(&room, &stay.id, "stay").await;
        stay.next_action("blockedIp").await;
        for round in 0..5 {
            let mut go = app.ws_with_id().await;
            app.join_one(&room, &go.id, "go").await;
            // Leave as soon as the join's presence arrives, while its blockedIp may still be
            // on its way.
            go.next_action("attendance").await;
            let (st, _) = app
                .delete(&format!("/messaging/connections/C1/{room}/{}", go.id), None)
                .await;
            assert_eq!(st, 200);
            // From here on, the room's traffic must not reach `go`: messages, and the
            // presence that the leave and a rename trigger.
            app.grpc_send("C1", &room, &json!({"round": round})).await;
            let (st, _) = app
                .post(
                    "/messaging/connections/setName",
                    None,
                    &json!({"socketId": stay.id, "name": format!("stay{round}")}),
                )
                .await;
            assert_eq!(st, 200);
            stay.until(|f| {
                f["action"] == "attendance"
                    && f["data"]["viewers"][0]["displayName"] == format!("stay{round}")
            })
            .await;
            // A socket's frames arrive in order: whatever reached `go` after its leave comes
            // before the reply to this probe.
            go.stream.send(Message::text("getId")).await.unwrap();
            let after: Vec<Value> = go.until(|f| f["action"] == "socketId").await;
            let leaked: Vec<&Value> = after
                .iter()
                .filter(|f| {
                    f["action"] == "message"
                        || (f["action"] == "attendance" && f["data"]["totalViewers"] == 1)
                })
                .collect();
            assert!(
                leaked.is_empty(),
                "round {round}: got {leaked:?} after leaving"
            );
        }
    }
);

server_test!(
    a_leave_drops_the_rooms_frames_still_queued_for_the_socket,
    |db: TestDb| async move {
        let mut s = settings(&db);
        s.socket_queue_bytes = 8 << 20;
        let app = TestApp::spawn_with(s).await;
        let left = app.conversation("C1", "streamingLive", true).await;
        let kept = app.conversation("C1", "streamingLive", true).await;
        let mut paused = Ws::connect_small_rcvbuf(app.socket).await;
        paused.get_id().await;
        for room in [&left, &kept] {
            app.join_one(room, &paused.id, "paused").await;
            paused.next_action("blockedIp").await;
        }
        // `paused` stops reading: messages of both rooms fill its kernel buffers, then wait
        // in the server's queue for it.
        let pad = "p".repeat(4000);
        let (hub, paused_id) = (app.hub.clone(), paused.id.clone());
        let queued = || hub.socket(&paused_id).map_or(0, |h| h.queued_bytes());
        let mut sent = 0u64;
        while queued() < 256 * 1024 {
            assert!(
                sent < 1500,
                "the paused socket's kernel buffers never filled"
            );
            for room in [&left, &kept] {
                app.grpc_send("C1", room, &json!({"seq": sent, "pad": pad}))
                    .await;
            }
            sent += 1;
        }
        let (st, _) = app
            .delete(
                &format!("/messaging/connections/C1/{left}/{}", paused.id),
                None,
            )
            .await;
        assert_eq!(st, 200);
        // Reading again, up to a probe queued after the leave's reply: the room it left
        // stops where the kernel had already taken its frames; the other room loses nothing.
        paused.stream.send(Message::text("getId")).await.unwrap();
        let frames = paused.until(|f| f["action"] == "socketId").await;
        let seqs = |room: &str| -> Vec<u64> {
            frames
                .iter()
                .filter(|f| f["action"] == "message" && f["conversationId"] == room)
                .filter_map(|f| f["data"]["seq"].as_u64())
                .collect()
        };
        assert_eq!(seqs(&kept), (0..sent).collect::<Vec<_>>());
        let got = seqs(&left);
        assert_eq!(got, (0..got.len() as u64).collect::<Vec<_>>());
        assert!(
            (got.len() as u64) < sent,
            "all {sent} messages of the room it left still reached the socket after the leave"
        );
    }
);
