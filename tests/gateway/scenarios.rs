//! Gateway mode (§5.5) end to end: two instances of the binary behind the emulator, on a
//! fresh PostgreSQL or MariaDB database, browser sockets through the WebSocket front, REST
//! through the payload 1.0 front, frames through `@connections` (every call's signature
//! checked). Each frame a test expects is read before a marker the emulator writes after the
//! triggering call returned, so "exactly these frames" needs no waiting on the clock: in this
//! mode every frame is posted before the invocation that caused it returns.
use std::time::Duration;

use serde_json::{Value, json};

use crate::emulator::events::{self, EventKind};
use crate::emulator::{Fault, Gateway, Payload};
use crate::helpers::{TestDb, Ws};
use crate::server_test;
use crate::support::*;

const CHURCH: &str = "C1";

/// A gateway, its REST front (payload 1.0), a public room of `CHURCH`.
async fn setup(db: &TestDb, extra_env: &[(&str, &str)]) -> (Gateway, Rest, String) {
    let gateway = start(db, extra_env).await;
    let rest = Rest::new(&gateway, Payload::V1);
    let room = rest.public_conversation(CHURCH).await;
    (gateway, rest, room)
}

/// `POST /messaging/messages/send` (anonymous) to `room` through `instance`: the stored
/// message.
async fn send(rest: &Rest, room: &str, content: &str, instance: Option<usize>) -> Value {
    let (s, body) = rest
        .post(
            "/messaging/messages/send",
            None,
            &json!([{"conversationId": room, "content": content, "displayName": "Guest"}]),
            instance,
        )
        .await;
    assert_eq!(s, 200, "send: {body}");
    body[0].clone()
}

/// `setup`, and sockets `a` and `b` joined to its room, `a`'s frames so far read.
async fn a_and_b(db: &TestDb) -> (Gateway, Rest, String, Ws, Ws) {
    let (gateway, rest, room) = setup(db, &[]).await;
    let mut a = socket(&gateway).await;
    let b = socket(&gateway).await;
    rest.join(&room, &a.id, "A", None).await;
    rest.join(&room, &b.id, "B", None).await;
    drain(&gateway, &mut a).await;
    (gateway, rest, room, a, b)
}

/// The socket ids of a room's rows, sorted.
async fn sorted_rows(rest: &Rest, room: &str) -> Vec<String> {
    let mut ids = rest.room_sockets(CHURCH, room).await;
    ids.sort();
    ids
}

/// These sockets' ids, sorted.
fn sorted<const N: usize>(sockets: [&Ws; N]) -> Vec<String> {
    let mut ids: Vec<String> = sockets.iter().map(|w| w.id.clone()).collect();
    ids.sort();
    ids
}

/// The one `attendance` frame among `frames`, checked to be one.
fn one_attendance(frames: &[Value]) -> Value {
    let att = with_action(frames, "attendance");
    assert_eq!(att.len(), 1, "exactly one attendance frame: {frames:?}");
    att[0].clone()
}

fn viewer_ids(attendance: &Value) -> Vec<String> {
    attendance["data"]["viewers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["id"].as_str().unwrap().to_string())
        .collect()
}

server_test!(get_id_answers_with_the_connection_id, [postgres, mysql]);
async fn get_id_answers_with_the_connection_id(db: TestDb) {
    let gateway = start(&db, &[]).await;
    let mut ws = Ws::connect(&gateway.ws_url()).await;
    let id = ws.get_id().await;
    assert_eq!(Some(id.clone()), gateway.last_connection_id());
    assert_eq!((id.len(), id.ends_with('=')), (16, true));
    // The exact frame of §2.1, keys in order; any text gets the same answer.
    futures::SinkExt::send(
        &mut ws.stream,
        tokio_tungstenite::tungstenite::Message::text("anything"),
    )
    .await
    .unwrap();
    assert_eq!(
        ws.text().await,
        format!(r#"{{"churchId":"","conversationId":"","action":"socketId","data":"{id}"}}"#)
    );
    // A frame reaches the client before its POST is answered: wait for the invocations.
    let messages = |n: usize| {
        let finished: Vec<_> = gateway
            .invocations()
            .into_iter()
            .filter(|i| i.kind == EventKind::Message && i.finished.is_some())
            .collect();
        (finished.len() >= n).then_some(finished)
    };
    let messages = gateway.wait_for(WAIT, || messages(2)).await.unwrap();
    assert_eq!(messages.len(), 2);
    let posts = gateway.posts_to(&id);
    assert_eq!(posts.len(), 2, "one post per message");
    assert!(posts.iter().all(|c| c.status == 200));
    assert!(
        posts.iter().all(|c| c.raw_path.ends_with("%3D")),
        "the connection id is percent-encoded in the path: {:?}",
        posts.iter().map(|c| &c.raw_path).collect::<Vec<_>>()
    );
    // The reply was posted before the MESSAGE invocation returned.
    for (post, inv) in posts.iter().zip(&messages) {
        assert_eq!(
            inv.outcome.as_ref().unwrap().as_ref().unwrap()["statusCode"],
            200
        );
        assert!(post.answered <= inv.finished.unwrap());
    }
    // An id with '+' and '/' (base64 may have them) is encoded too.
    gateway.set_next_connection_id("ab+cd/efGHIJKLM=");
    let mut odd = Ws::connect(&gateway.ws_url()).await;
    assert_eq!(odd.get_id().await, "ab+cd/efGHIJKLM=");
    let posts = gateway
        .wait_calls(WAIT, |calls| {
            calls
                .iter()
                .any(|c| c.connection_id.as_deref() == Some("ab+cd/efGHIJKLM="))
        })
        .await
        .unwrap();
    let odd_paths: Vec<_> = posts
        .iter()
        .filter(|c| c.connection_id.as_deref() == Some("ab+cd/efGHIJKLM="))
        .map(|c| c.raw_path.as_str())
        .collect();
    assert_eq!(odd_paths, ["/dev/@connections/ab%2Bcd%2FefGHIJKLM%3D"]);
    // No HTTP, WebSocket or gRPC port in this mode.
    for i in 0..gateway.instances() {
        let pid = gateway.pid(i).unwrap();
        assert_eq!(
            listening_ports(pid),
            Vec::<u16>::new(),
            "instance {i} listens"
        );
    }
    assert_eq!(gateway.bad_signatures(), 0);
}

server_test!(join_on_one_instance_send_on_the_other, [postgres, mysql]);
async fn join_on_one_instance_send_on_the_other(db: TestDb) {
    let (gateway, rest, room) = setup(&db, &[]).await;
    let mut a = socket(&gateway).await;
    let row = rest.join(&room, &a.id, "A", Some(0)).await;
    assert_eq!(row["socketId"], a.id.as_str());
    assert_eq!(row["churchId"], CHURCH);
    // The join asked the gateway whether the connection exists.
    assert!(
        gateway.calls().iter().any(|c| c.method == "GET"
            && c.connection_id.as_deref() == Some(&a.id)
            && c.status == 200),
        "GET @connections before the join"
    );
    let frames = drain(&gateway, &mut a).await;
    let att = one_attendance(&frames);
    assert_eq!(att["data"]["totalViewers"], 1);
    assert_eq!(viewer_ids(&att), [row["id"].as_str().unwrap()]);

    let message = send(&rest, &room, "hi", Some(1)).await;
    let body = gateway.posts_to(&a.id).last().unwrap().body_text();
    assert!(
        body.starts_with(&format!(
            r#"{{"churchId":"{CHURCH}","conversationId":"{room}","action":"message","data":{{"#
        )),
        "the POST body is exactly the frame's JSON: {body}"
    );
    let frames = drain(&gateway, &mut a).await;
    assert_eq!(
        frames,
        [json!({"churchId": CHURCH, "conversationId": room, "action": "message", "data": message})]
    );

    let (s, body) = rest
        .delete(
            &format!("/messaging/connections/{CHURCH}/{room}/{}", a.id),
            None,
            Some(1),
        )
        .await;
    assert_eq!((s, body), (200, json!({"success": true})));
    let posts_before = gateway.posts_to(&a.id).len();
    send(&rest, &room, "after leave", Some(1)).await;
    assert_eq!(
        gateway.posts_to(&a.id).len(),
        posts_before,
        "nothing posted to a"
    );
    assert_eq!(drain(&gateway, &mut a).await, Vec::<Value>::new());

    // A join naming a connection the gateway no longer knows: 404 Socket not found.
    let b = socket(&gateway).await;
    gateway.inject_on("GET", &b.id, Fault::Status(410, 1));
    let (s, body) = rest
        .post(
            "/messaging/connections",
            None,
            &json!([{"conversationId": room, "socketId": b.id, "displayName": "B"}]),
            Some(0),
        )
        .await;
    assert_eq!((s, body), (404, json!({"error": "Socket not found"})));
    assert_eq!(rest.room_sockets(CHURCH, &room).await, Vec::<String>::new());
    assert_eq!(gateway.bad_signatures(), 0);
}

server_test!(
    a_410_prunes_the_row_and_sends_attendance_once,
    [postgres, mysql]
);
async fn a_410_prunes_the_row_and_sends_attendance_once(db: TestDb) {
    let (gateway, rest, room) = setup(&db, &[]).await;
    let mut a = socket(&gateway).await;
    let mut b = socket(&gateway).await;
    let row_a = rest.join(&room, &a.id, "A", None).await;
    rest.join(&room, &b.id, "B", None).await;
    drain(&gateway, &mut a).await;
    drain(&gateway, &mut b).await;

    gateway.inject(&b.id, Fault::Status(410, 1));
    let message = send(&rest, &room, "to both", None).await;
    assert_eq!(rest.room_sockets(CHURCH, &room).await, [a.id.clone()]);
    let frames = drain(&gateway, &mut a).await;
    assert_eq!(with_action(&frames, "message").len(), 1);
    assert_eq!(with_action(&frames, "message")[0]["data"], message);
    let att = one_attendance(&frames);
    assert_eq!(att["data"]["totalViewers"], 1);
    assert_eq!(viewer_ids(&att), [row_a["id"].as_str().unwrap()]);
    assert_eq!(drain(&gateway, &mut b).await, Vec::<Value>::new());
    let b_posts = gateway.posts_to(&b.id);
    assert_eq!(b_posts.last().unwrap().status, 410);
    assert_eq!(gateway.bad_signatures(), 0);
}

server_test!(a_429_is_retried_and_delivered_once, [postgres, mysql]);
async fn a_429_is_retried_and_delivered_once(db: TestDb) {
    let (gateway, rest, room) = setup(&db, &[]).await;
    let mut a = socket(&gateway).await;
    rest.join(&room, &a.id, "A", None).await;
    drain(&gateway, &mut a).await;
    let before = gateway.posts_to(&a.id).len();

    gateway.inject(&a.id, Fault::Status(429, 2));
    let started = std::time::Instant::now();
    let message = send(&rest, &room, "retried", None).await;
    let took = started.elapsed();
    let frames = drain(&gateway, &mut a).await;
    assert_eq!(
        frames,
        [json!({"churchId": CHURCH, "conversationId": room, "action": "message", "data": message})],
        "delivered exactly once"
    );
    let posts: Vec<_> = gateway.posts_to(&a.id).into_iter().skip(before).collect();
    let statuses: Vec<u16> = posts.iter().map(|c| c.status).collect();
    assert_eq!(statuses, [429, 429, 200]);
    assert!(
        posts.iter().all(|c| c.body == posts[0].body),
        "the same frame each time"
    );
    assert!(
        took < Duration::from_secs(5),
        "retried within 5 s: {took:?}"
    );
    assert_eq!(rest.room_sockets(CHURCH, &room).await, [a.id.clone()]);
    assert_eq!(gateway.bad_signatures(), 0);
}

server_test!(a_403_413_or_500_keeps_the_row, [postgres, mysql]);
async fn a_403_413_or_500_keeps_the_row(db: TestDb) {
    let (gateway, rest, room) = setup(&db, &[]).await;
    let mut a = socket(&gateway).await;
    let mut b = socket(&gateway).await;
    rest.join(&room, &a.id, "A", None).await;
    rest.join(&room, &b.id, "B", None).await;
    drain(&gateway, &mut a).await;
    drain(&gateway, &mut b).await;
    for status in [403, 413, 500] {
        gateway.inject(&a.id, Fault::Status(status, 1));
        let first = send(&rest, &room, "lost for a", None).await;
        assert_eq!(
            sorted_rows(&rest, &room).await,
            sorted([&a, &b]),
            "a {status} deletes nothing"
        );
        assert_eq!(
            drain(&gateway, &mut a).await,
            Vec::<Value>::new(),
            "{status}"
        );
        let b_frames = drain(&gateway, &mut b).await;
        assert_eq!(with_action(&b_frames, "message").len(), 1, "{status}");
        assert_eq!(with_action(&b_frames, "message")[0]["data"], first);
        assert!(
            with_action(&b_frames, "attendance").is_empty(),
            "{status}: no row changed"
        );
        // The next frame reaches a again.
        let second = send(&rest, &room, "for both", None).await;
        let frames = drain(&gateway, &mut a).await;
        assert_eq!(with_action(&frames, "message").len(), 1, "{status}");
        assert_eq!(with_action(&frames, "message")[0]["data"], second);
        drain(&gateway, &mut b).await;
    }
    assert_eq!(gateway.bad_signatures(), 0);
}

server_test!(a_slow_post_times_out_and_keeps_the_row, [postgres, mysql]);
async fn a_slow_post_times_out_and_keeps_the_row(db: TestDb) {
    let (gateway, rest, room, mut a, b) = a_and_b(&db).await;
    let b_answered = gateway.posts_to(&b.id).len();

    // Far longer than the 5 s a post may take: the send must not wait for it.
    gateway.inject(&b.id, Fault::Delay(Duration::from_secs(20), 1));
    let message = send(&rest, &room, "not for the slow one", None).await;
    assert_eq!(
        gateway.posts_to(&b.id).len(),
        b_answered,
        "the send returned before the slow post was answered"
    );
    let frames = drain(&gateway, &mut a).await;
    assert_eq!(with_action(&frames, "message").len(), 1);
    assert_eq!(with_action(&frames, "message")[0]["data"], message);
    assert!(with_action(&frames, "attendance").is_empty());
    assert_eq!(
        sorted_rows(&rest, &room).await,
        sorted([&a, &b]),
        "a timed-out post deletes nothing"
    );
}

server_test!(
    a_hanging_post_ends_with_the_invocations_deadline,
    [postgres, mysql]
);
/// Lambda's deadline bounds the posts, not only their own 5 s: with 3 s left, a direct send
/// whose post to `b` hangs still replies in time, delivered to `a` alone, `b`'s row kept.
async fn a_hanging_post_ends_with_the_invocations_deadline(db: TestDb) {
    let (gateway, rest, room, mut a, b) = a_and_b(&db).await;
    gateway.inject(&b.id, Fault::Delay(Duration::from_secs(20), 1));
    let event = events::direct(
        "messaging.v1.Delivery/SendConversationMessages",
        json!({"churchId": CHURCH, "conversationId": room, "action": "message", "data": "{\"n\":1}"}),
    );
    let reply = gateway
        .invoke_within(0, event, Duration::from_secs(3))
        .await
        .expect("the invocation replies before its deadline");
    assert_eq!(reply, json!({"delivered": 1}));
    let frames = drain(&gateway, &mut a).await;
    assert_eq!(with_action(&frames, "message").len(), 1);
    assert_eq!(
        sorted_rows(&rest, &room).await,
        sorted([&a, &b]),
        "a post cut by the deadline deletes nothing"
    );
}

server_test!(
    posts_run_at_most_gateway_concurrency_at_once,
    [postgres, mysql]
);
async fn posts_run_at_most_gateway_concurrency_at_once(db: TestDb) {
    let (gateway, rest, room) = setup(&db, &[("GATEWAY_CONCURRENCY", "2")]).await;
    let mut sockets = Vec::new();
    for i in 0..5 {
        let ws = socket(&gateway).await;
        rest.join(&room, &ws.id, &format!("S{i}"), None).await;
        sockets.push(ws);
    }
    for ws in &mut sockets {
        drain(&gateway, ws).await;
    }
    let before = gateway.calls().len();
    gateway.set_post_delay(Duration::from_millis(150));
    send(&rest, &room, "fan out", None).await;
    gateway.set_post_delay(Duration::ZERO);
    let posts: Vec<_> = gateway
        .calls()
        .into_iter()
        .skip(before)
        .filter(|c| c.method == "POST")
        .collect();
    assert_eq!(posts.len(), 5, "one post per row");
    // The most posts in flight at any moment.
    let mut edges: Vec<(std::time::Instant, i32)> = posts
        .iter()
        .flat_map(|c| [(c.received, 1), (c.answered, -1)])
        .collect();
    edges.sort_by(|x, y| x.0.cmp(&y.0).then(x.1.cmp(&y.1)));
    let (mut now, mut most) = (0, 0);
    for (_, d) in edges {
        now += d;
        most = most.max(now);
    }
    assert_eq!(most, 2, "GATEWAY_CONCURRENCY=2: posts run two at a time");
}

server_test!(
    a_join_batch_and_a_rename_send_one_attendance,
    [postgres, mysql]
);
async fn a_join_batch_and_a_rename_send_one_attendance(db: TestDb) {
    let (gateway, rest, room) = setup(&db, &[]).await;
    let mut a = socket(&gateway).await;
    let mut b = socket(&gateway).await;
    let (s, rows) = rest
        .post(
            "/messaging/connections",
            None,
            &json!([
                {"conversationId": room, "socketId": a.id, "displayName": "A"},
                {"conversationId": room, "socketId": b.id, "displayName": "B"},
            ]),
            None,
        )
        .await;
    assert_eq!(s, 200, "{rows}");
    for ws in [&mut a, &mut b] {
        let frames = drain(&gateway, ws).await;
        let att = one_attendance(&frames);
        assert_eq!(att["data"]["totalViewers"], 2);
        assert_eq!(
            with_action(&frames, "blockedIp").len(),
            1,
            "blockedIp follows a join: {frames:?}"
        );
        assert_eq!(frames.len(), 2, "{frames:?}");
    }
    let (s, renamed) = rest
        .post(
            "/messaging/connections/setName",
            None,
            &json!({"socketId": b.id, "name": "Bee"}),
            None,
        )
        .await;
    assert_eq!(s, 200, "{renamed}");
    assert_eq!(renamed[0]["displayName"], "Bee");
    for ws in [&mut a, &mut b] {
        let frames = drain(&gateway, ws).await;
        let att = one_attendance(&frames);
        let names: Vec<&str> = att["data"]["viewers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v["displayName"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["A", "Bee"]);
        assert_eq!(frames.len(), 1, "{frames:?}");
    }
    assert_eq!(gateway.bad_signatures(), 0);
}

server_test!(
    set_name_naming_a_gone_connection_is_socket_not_found,
    [postgres, mysql]
);
async fn set_name_naming_a_gone_connection_is_socket_not_found(db: TestDb) {
    let (gateway, rest, room) = setup(&db, &[]).await;
    let b = socket(&gateway).await;
    rest.join(&room, &b.id, "B", None).await;
    let gets = |calls: &[crate::emulator::Call]| {
        calls
            .iter()
            .filter(|c| c.method == "GET" && c.connection_id.as_deref() == Some(&b.id))
            .count()
    };
    let before = gets(&gateway.calls());
    gateway.inject_on("GET", &b.id, Fault::Status(410, 1));
    let (s, body) = rest
        .post(
            "/messaging/connections/setName",
            None,
            &json!({"socketId": b.id, "name": "Bee"}),
            None,
        )
        .await;
    assert_eq!((s, body), (404, json!({"error": "Socket not found"})));
    assert_eq!(
        gets(&gateway.calls()),
        before + 1,
        "setName asks GET @connections"
    );
}

server_test!(
    delivered_counts_the_rows_the_frame_reached,
    [postgres, mysql]
);
async fn delivered_counts_the_rows_the_frame_reached(db: TestDb) {
    let (gateway, _rest, room, mut a, b) = a_and_b(&db).await;
    let direct = |data: &str| {
        events::direct(
            "messaging.v1.Delivery/SendConversationMessages",
            json!({"churchId": CHURCH, "conversationId": room, "action": "message", "data": data}),
        )
    };
    let reply = gateway.invoke(0, direct("{\"n\":1}")).await.unwrap();
    assert_eq!(reply, json!({"delivered": 2}));
    drain(&gateway, &mut a).await;
    // b is gone: the frame reaches a alone (the attendance that follows is another frame).
    gateway.inject(&b.id, Fault::Status(410, 1));
    let reply = gateway.invoke(0, direct("{\"n\":2}")).await.unwrap();
    assert_eq!(reply, json!({"delivered": 1}));
    let frames = drain(&gateway, &mut a).await;
    assert_eq!(with_action(&frames, "message").len(), 1);
    assert_eq!(one_attendance(&frames)["data"]["totalViewers"], 1);
}

server_test!(notifications_reach_the_alerts_connection, [postgres, mysql]);
async fn notifications_reach_the_alerts_connection(db: TestDb) {
    let (gateway, rest, _room) = setup(&db, &[]).await;
    let person = token(CHURCH, "P1", &[]);
    let admin = token(CHURCH, "ADMIN", &["Messaging__Admin"]);
    let mut a = socket(&gateway).await;
    let (s, body) = rest
        .post(
            "/messaging/connections",
            Some(&person),
            &json!([{"conversationId": "alerts", "socketId": a.id}]),
            None,
        )
        .await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(
        drain(&gateway, &mut a).await,
        Vec::<Value>::new(),
        "no attendance for alerts"
    );
    let create = |content_id: &str| json!({"peopleIds": ["P1"], "contentType": "task", "contentId": content_id, "message": "m"});
    let (s, created) = rest
        .post(
            "/messaging/notifications/create",
            Some(&admin),
            &create("T1"),
            None,
        )
        .await;
    assert_eq!(s, 200, "{created}");
    assert_eq!(created[0]["deliveryMethod"], "socket");
    assert_eq!(
        drain(&gateway, &mut a).await,
        [
            json!({"churchId": CHURCH, "conversationId": "alert", "action": "notification",
                "data": {"counts": {"notificationCount": 1, "pmCount": 0}}})
        ]
    );
    let reply = gateway
        .invoke(
            1,
            events::direct(
                "messaging.v1.Delivery/SendToPerson",
                json!({"churchId": CHURCH, "personId": "P1", "conversationId": "alert",
                       "action": "notification", "data": "{\"counts\":{}}"}),
            ),
        )
        .await
        .unwrap();
    assert_eq!(reply, json!({"delivered": 1}));
    assert_eq!(
        drain(&gateway, &mut a).await,
        [
            json!({"churchId": CHURCH, "conversationId": "alert", "action": "notification",
                "data": {"counts": {}}})
        ]
    );
    // The only row's post is answered 410: the frame reached nobody (§7: deliveryMethod is
    // "socket" only if at least one row received the frame), and the row is pruned.
    gateway.inject(&a.id, Fault::Status(410, 1));
    let (s, created) = rest
        .post(
            "/messaging/notifications/create",
            Some(&admin),
            &create("T2"),
            None,
        )
        .await;
    assert_eq!(s, 200, "{created}");
    let (s, rows) = rest
        .get(
            &format!("/messaging/connections/{CHURCH}/alerts"),
            Some(&person),
            None,
        )
        .await;
    assert_eq!((s, rows), (200, json!([])), "the gone row is pruned");
    assert_eq!(created[0]["deliveryMethod"], Value::Null, "{created}");
}

server_test!(
    disconnect_attendance_is_posted_before_the_freeze,
    [postgres, mysql]
);
async fn disconnect_attendance_is_posted_before_the_freeze(db: TestDb) {
    let (gateway, rest, room) = setup(&db, &[]).await;
    let mut a = socket(&gateway).await;
    let mut b = socket(&gateway).await;
    let row_a = rest.join(&room, &a.id, "A", Some(0)).await;
    rest.join(&room, &b.id, "B", Some(0)).await;
    drain(&gateway, &mut a).await;
    drain(&gateway, &mut b).await;
    let before = gateway.posts_to(&a.id).len();

    gateway.route_connection(&b.id, Some(1));
    gateway.freeze_after_reply(1);
    close(&mut b).await;
    let frozen_at = gateway.wait_frozen(1, WAIT).await.unwrap();
    let pid = gateway.pid(1).unwrap();
    assert!(crate::emulator::runtime::all_threads_stopped(pid));
    // At the freeze, a's attendance had been posted and answered.
    let posted: Vec<_> = gateway.posts_to(&a.id).into_iter().skip(before).collect();
    assert_eq!(posted.len(), 1, "one post to a: {posted:?}");
    assert_eq!(posted[0].status, 200);
    assert!(posted[0].answered <= frozen_at);
    let frame: Value = serde_json::from_slice(&posted[0].body).unwrap();
    assert_eq!(frame["action"], "attendance");
    assert_eq!(frame["data"]["totalViewers"], 1);
    assert_eq!(viewer_ids(&frame), [row_a["id"].as_str().unwrap()]);
    // It is on a's socket: the marker comes after it.
    assert_eq!(drain(&gateway, &mut a).await, [frame]);
    // The row is gone (asked of the instance that is not frozen).
    let (s, rows) = rest
        .get(
            &format!("/messaging/connections/{CHURCH}/{room}"),
            None,
            Some(0),
        )
        .await;
    assert_eq!(s, 200);
    assert_eq!(rows.as_array().unwrap().len(), 1);
    assert_eq!(rows[0]["socketId"], a.id.as_str());
    let disconnect = gateway
        .invocations()
        .into_iter()
        .find(|i| i.kind == EventKind::Disconnect && i.connection_id.as_deref() == Some(&b.id))
        .unwrap();
    assert_eq!(disconnect.instance, 1);
    assert_eq!(disconnect.outcome.unwrap().unwrap()["statusCode"], 200);

    assert!(gateway.resume(1));
    let (s, body) = rest.get("/health", None, Some(1)).await;
    assert_eq!(
        (s, body),
        (200, json!({"status": "ok"})),
        "instance 1 serves again"
    );
    // Nothing was left to run after the reply: resumed, instance 1 posted nothing more.
    assert_eq!(gateway.posts_to(&a.id).len(), before + 1);
    assert_eq!(drain(&gateway, &mut a).await, Vec::<Value>::new());
    assert_eq!(gateway.bad_signatures(), 0);
}

server_test!(the_schedule_sweeps_old_rows, [postgres, mysql]);
async fn the_schedule_sweeps_old_rows(db: TestDb) {
    const MAX_SECS: i64 = 2;
    let (gateway, rest, room) = setup(
        &db,
        &[("GATEWAY_MAX_CONNECTION_SECS", &MAX_SECS.to_string())],
    )
    .await;
    let mut a = socket(&gateway).await;
    let mut b = socket(&gateway).await;
    let row_a = rest.join(&room, &a.id, "A", None).await;
    // Wait on the clock until a's row is older than the limit.
    let joined = chrono::DateTime::parse_from_rfc3339(row_a["timeJoined"].as_str().unwrap())
        .unwrap()
        .with_timezone(&chrono::Utc);
    let old_after = joined + chrono::Duration::milliseconds(MAX_SECS * 1000 + 50);
    tokio::time::timeout(WAIT, async {
        while chrono::Utc::now() <= old_after {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .unwrap();
    let row_b = rest.join(&room, &b.id, "B", None).await;
    drain(&gateway, &mut a).await;
    drain(&gateway, &mut b).await;

    let reply = gateway.invoke(0, events::scheduled("us-east-1")).await;
    assert!(reply.is_ok(), "the sweep runs: {reply:?}");
    assert_eq!(rest.room_sockets(CHURCH, &room).await, [b.id.clone()]);
    let frames = drain(&gateway, &mut b).await;
    let att = one_attendance(&frames);
    assert_eq!(att["data"]["totalViewers"], 1);
    assert_eq!(viewer_ids(&att), [row_b["id"].as_str().unwrap()]);
    assert_eq!(drain(&gateway, &mut a).await, Vec::<Value>::new());
    assert_eq!(gateway.bad_signatures(), 0);
}

server_test!(direct_invocations_call_the_grpc_methods, [postgres, mysql]);
async fn direct_invocations_call_the_grpc_methods(db: TestDb) {
    let (gateway, rest, room) = setup(&db, &[]).await;
    let mut a = socket(&gateway).await;
    let b = socket(&gateway).await;
    rest.join(&room, &a.id, "A", None).await;
    drain(&gateway, &mut a).await;

    let reply = gateway
        .invoke(
            1,
            events::direct(
                "messaging.v1.Delivery/SendConversationMessages",
                json!({"churchId": CHURCH, "conversationId": room, "action": "message", "data": "{\"id\":\"X1\"}"}),
            ),
        )
        .await
        .unwrap();
    assert_eq!(reply, json!({"delivered": 1}));
    assert_eq!(
        drain(&gateway, &mut a).await,
        [
            json!({"churchId": CHURCH, "conversationId": room, "action": "message", "data": {"id": "X1"}})
        ]
    );

    let invalid = gateway
        .invoke(
            0,
            events::direct(
                "messaging.v1.Delivery/SendConversationMessages",
                json!({"churchId": "", "conversationId": room, "action": "message", "data": "{}"}),
            ),
        )
        .await
        .unwrap();
    assert_eq!(invalid["error"]["code"], "INVALID_ARGUMENT", "{invalid}");
    assert!(invalid["error"]["message"].is_string(), "{invalid}");
    let unknown = gateway
        .invoke(
            0,
            events::direct("messaging.v1.Delivery/NoSuchMethod", json!({})),
        )
        .await
        .unwrap();
    assert_eq!(unknown["error"]["code"], "UNIMPLEMENTED", "{unknown}");
    let not_a_request = gateway
        .invoke(
            0,
            events::direct(
                "messaging.v1.Delivery/SendConversationMessages",
                json!("oops"),
            ),
        )
        .await
        .unwrap();
    assert_eq!(
        not_a_request["error"]["code"], "INVALID_ARGUMENT",
        "{not_a_request}"
    );

    // The Connection service too: a join (which asks @connections) and the room's rows.
    let joined = gateway
        .invoke(
            0,
            events::direct(
                "messaging.v1.Connection/Join",
                json!({"items": [{"churchId": CHURCH, "conversationId": room, "socketId": b.id, "displayName": "B"}]}),
            ),
        )
        .await
        .unwrap();
    assert_eq!(
        joined["connections"][0]["socketId"],
        b.id.as_str(),
        "{joined}"
    );
    let listed = gateway
        .invoke(
            1,
            events::direct(
                "messaging.v1.Connection/ListRoom",
                json!({"churchId": CHURCH, "roomId": room}),
            ),
        )
        .await
        .unwrap();
    let mut sockets: Vec<&str> = listed["connections"]
        .as_array()
        .unwrap_or_else(|| panic!("{listed}"))
        .iter()
        .map(|r| r["socketId"].as_str().unwrap())
        .collect();
    sockets.sort();
    let mut expected = vec![a.id.as_str(), b.id.as_str()];
    expected.sort();
    assert_eq!(sockets, expected);
    // The join's attendance reached a before the invocation returned.
    let frames = drain(&gateway, &mut a).await;
    assert_eq!(one_attendance(&frames)["data"]["totalViewers"], 2);
    // A join naming a connection the gateway does not know: NOT_FOUND.
    let c = socket(&gateway).await;
    gateway.inject_on("GET", &c.id, Fault::Status(410, 1));
    let refused = gateway
        .invoke(
            1,
            events::direct(
                "messaging.v1.Connection/Join",
                json!({"items": [{"churchId": CHURCH, "conversationId": room, "socketId": c.id}]}),
            ),
        )
        .await
        .unwrap();
    assert_eq!(refused["error"]["code"], "NOT_FOUND", "{refused}");
    assert_eq!(gateway.bad_signatures(), 0);
}

/// No database server needed: SQLite is refused at start in gateway mode.
#[tokio::test]
async fn sqlite_is_refused_in_gateway_mode() {
    let mut o = options("sqlite::memory:", &[]);
    o.instances = 1;
    let gateway = Gateway::spawn(o).await.unwrap();
    let exit = gateway.wait_exit(0, WAIT).await.unwrap();
    assert!(!exit.success(), "exits non-zero: {exit}");
    let stderr = gateway.stderr(0);
    assert!(
        stderr.to_lowercase().contains("sqlite"),
        "stderr names SQLite: {stderr}"
    );
    assert_eq!(
        gateway.state(0).unwrap().polls,
        0,
        "no invocation was asked for"
    );
}

server_test!(
    connection_ids_with_plus_and_slash_work_in_rest_paths,
    [postgres, mysql]
);
async fn connection_ids_with_plus_and_slash_work_in_rest_paths(db: TestDb) {
    let (gateway, rest, room) = setup(&db, &[]).await;
    let mut keep = socket(&gateway).await;
    gateway.set_next_connection_id("ab+cd/efGHIJKLM=");
    let mut odd = socket(&gateway).await;
    assert_eq!(odd.id, "ab+cd/efGHIJKLM=");
    rest.join(&room, &keep.id, "K", None).await;
    rest.join(&room, &odd.id, "O", None).await;
    drain(&gateway, &mut keep).await;
    drain(&gateway, &mut odd).await;
    // The leave path carries the id percent-encoded as one segment.
    let encoded = percent_encoding::utf8_percent_encode(&odd.id, PATH_SEGMENT).to_string();
    let (s, body) = rest
        .delete(
            &format!("/messaging/connections/{CHURCH}/{room}/{encoded}"),
            None,
            None,
        )
        .await;
    assert_eq!((s, body), (200, json!({"success": true})));
    assert_eq!(rest.room_sockets(CHURCH, &room).await, [keep.id.clone()]);
    let frames = drain(&gateway, &mut keep).await;
    assert_eq!(one_attendance(&frames)["data"]["totalViewers"], 1);
    assert_eq!(drain(&gateway, &mut odd).await, Vec::<Value>::new());
    assert_eq!(gateway.bad_signatures(), 0);
}

server_test!(
    a_lost_disconnect_is_pruned_by_the_next_post,
    [postgres, mysql]
);
async fn a_lost_disconnect_is_pruned_by_the_next_post(db: TestDb) {
    let (gateway, rest, room) = setup(&db, &[]).await;
    let mut a = socket(&gateway).await;
    let mut b = socket(&gateway).await;
    let row_a = rest.join(&room, &a.id, "A", None).await;
    rest.join(&room, &b.id, "B", None).await;
    drain(&gateway, &mut a).await;
    // API Gateway's $disconnect is best effort: this one never comes.
    gateway.lose_disconnects(true);
    close(&mut b).await;
    gateway.wait_disconnected(&b.id, WAIT).await.unwrap();
    let mut both = rest.room_sockets(CHURCH, &room).await;
    both.sort();
    let mut expected = vec![a.id.clone(), b.id.clone()];
    expected.sort();
    assert_eq!(both, expected, "b's row outlives its socket");
    let message = send(&rest, &room, "after b left", None).await;
    assert_eq!(gateway.posts_to(&b.id).last().unwrap().status, 410);
    assert_eq!(rest.room_sockets(CHURCH, &room).await, [a.id.clone()]);
    let frames = drain(&gateway, &mut a).await;
    assert_eq!(with_action(&frames, "message")[0]["data"], message);
    let att = one_attendance(&frames);
    assert_eq!(viewer_ids(&att), [row_a["id"].as_str().unwrap()]);
    assert_eq!(gateway.bad_signatures(), 0);
}

server_test!(metrics_is_not_served_in_gateway_mode, [postgres, mysql]);
async fn metrics_is_not_served_in_gateway_mode(db: TestDb) {
    let gateway = start(&db, &[]).await;
    for payload in [Payload::V1, Payload::V2] {
        let (s, body) = Rest::new(&gateway, payload)
            .get("/metrics", None, None)
            .await;
        assert_eq!(s, 404, "{payload:?}: {body}");
        // The shape of any unrouted path (§9).
        assert_eq!(body["error"]["message"], "Endpoint not found", "{body}");
        assert_eq!(body["error"]["status"], 404, "{body}");
        assert_eq!(body["error"]["path"], "/metrics", "{body}");
    }
}

server_test!(
    concurrent_joins_on_two_instances_write_one_row,
    [postgres, mysql]
);
/// The same join sent to both instances at once (a client retrying on a slow answer):
/// one row (the unique key), both answers name it, and the attendance that follows counts
/// one viewer.
async fn concurrent_joins_on_two_instances_write_one_row(db: TestDb) {
    let (gateway, rest, room) = setup(&db, &[]).await;
    let mut a = socket(&gateway).await;
    let (r0, r1) = tokio::join!(
        rest.join(&room, &a.id, "A", Some(0)),
        rest.join(&room, &a.id, "A", Some(1))
    );
    assert_eq!(r0["id"], r1["id"], "both joins answer the one row");
    assert_eq!(rest.room_sockets(CHURCH, &room).await, [a.id.clone()]);
    let frames = drain(&gateway, &mut a).await;
    let attendance = with_action(&frames, "attendance");
    assert!(
        !attendance.is_empty(),
        "attendance after the joins: {frames:?}"
    );
    for att in attendance {
        assert_eq!(att["data"]["totalViewers"], 1, "{att}");
    }
    assert_eq!(gateway.bad_signatures(), 0);
}
