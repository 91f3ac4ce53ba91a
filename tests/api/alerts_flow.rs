//! Alerts (§7), private messages (§10.5) and notifications (§10.6), over real sockets.
use futures::SinkExt;
use messaging::service::alerts;
use messaging::store::entities::{message_reactions, messages, notifications, private_messages};
use sea_orm::{ActiveValue::Set, ColumnTrait, EntityTrait, QueryFilter};
use serde_json::{Value, json};

use crate::helpers::*;
use crate::server_test;

const PM: &str = "/messaging/privatemessages";

/// Posts a message as `sender` (of church C1) through `POST /messaging/messages`, which
/// runs the private-message flow; returns the message id.
async fn pm_message(app: &TestApp, conv_id: &str, sender: &str, name: &str) -> String {
    // Strictly increasing times keep "latest message" unambiguous within a test: every
    // earlier message was written before this call, so this one is stamped after them all.
    clock_past(messaging::time::now_ms()).await;
    let (status, body) = app
        .post(
            "/messaging/messages",
            Some(&app.token("C1", sender, &[])),
            &json!([{"conversationId": conv_id, "content": "hi", "displayName": name}]),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    body[0]["id"].as_str().expect("message id").to_string()
}

/// A socket joined to the alerts room of the token's person.
async fn alerts_socket(app: &TestApp, token: &str) -> Ws {
    let ws = app.ws_with_id().await;
    app.join(
        Some(token),
        json!([{"conversationId": "alerts", "socketId": ws.id}]),
    )
    .await;
    ws
}

/// Asserts that nothing was queued for `ws`: the reply to a fresh probe comes first.
async fn assert_no_frame(ws: &mut Ws) {
    ws.stream.send("getId".into()).await.unwrap();
    let f = ws.frame().await;
    assert_eq!(f["action"], "socketId", "unexpected frame {f}");
}

async fn counts(app: &TestApp, token: &str) -> Value {
    let (status, body) = app
        .get("/messaging/notifications/unreadCount", Some(token))
        .await;
    assert_eq!(status, 200, "{body}");
    body
}

fn counts_of(n: u64, pm: u64) -> Value {
    json!({"notificationCount": n, "pmCount": pm})
}

async fn pm_row(app: &TestApp, id: &str) -> Option<private_messages::Model> {
    private_messages::Entity::find_by_id(id.to_string())
        .one(&app.db)
        .await
        .unwrap()
}

async fn notifications_of(app: &TestApp, person: &str) -> Vec<notifications::Model> {
    notifications::Entity::find()
        .filter(notifications::Column::PersonId.eq(person))
        .all(&app.db)
        .await
        .unwrap()
}

fn keys(v: &Value) -> Vec<&str> {
    v.as_object()
        .expect("object")
        .keys()
        .map(String::as_str)
        .collect()
}

/// A private conversation with its participants row `from → to`; returns both ids.
async fn thread(app: &TestApp, from_token: &str, to: &str) -> (String, String) {
    let conv = app.conversation("C1", "privateMessage", false).await;
    let (status, body) = app
        .post(
            PM,
            Some(from_token),
            &json!([{"toPersonId": to, "conversationId": conv}]),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    (conv, body[0]["id"].as_str().unwrap().to_string())
}

server_test!(
    private_message_alert_reaches_only_the_recipient,
    [sqlite, postgres, mysql, gateway_postgres, gateway_mysql],
    |db: TestDb| async move {
        let app = TestApp::spawn(&db).await;
        let (a, b, x) = (
            app.token("C1", "PA", &[]),
            app.token("C1", "PB", &[]),
            app.token("C1", "PX", &[]),
        );
        let (conv, pm_id) = thread(&app, &a, "PB").await;
        let mut b_tab1 = alerts_socket(&app, &b).await;
        let mut b_tab2 = alerts_socket(&app, &b).await;
        let mut a_tab = alerts_socket(&app, &a).await;
        let mut x_tab = alerts_socket(&app, &x).await;
        // B also watches the conversation room: the alert must not leak into rooms.
        let mut b_room = app.ws_with_id().await;
        app.join(
            Some(&b),
            json!([{"conversationId": conv, "socketId": b_room.id}]),
        )
        .await;

        let msg_id = pm_message(&app, &conv, "PA", "First PA").await;
        let expected = format!(
            r#"{{"churchId":"C1","conversationId":"{conv}","action":"privateMessage","data":{{"counts":{{"notificationCount":0,"pmCount":1}}}}}}"#
        );
        assert_eq!(b_tab1.text().await, expected);
        assert_eq!(b_tab2.text().await, expected);
        for ws in [&mut a_tab, &mut x_tab] {
            assert_no_frame(ws).await;
        }
        b_room.stream.send("getId".into()).await.unwrap();
        let room_frames = b_room.until(|f| f["action"] == "socketId").await;
        assert!(room_frames.iter().all(|f| f["action"] != "privateMessage"));

        let n = notifications_of(&app, "PB").await;
        assert_eq!(n.len(), 1);
        assert_eq!(
            (
                n[0].content_type.as_str(),
                n[0].content_id.as_str(),
                n[0].message.as_str()
            ),
            (
                "privateMessage",
                pm_id.as_str(),
                "New Message from First PA"
            )
        );
        assert_eq!(n[0].category.as_deref(), Some("direct_messages"));
        assert_eq!(n[0].triggered_by_person_id.as_deref(), Some("PA"));
        assert_eq!(n[0].delivery_method.as_deref(), Some("socket"));
        assert!(n[0].is_new);
        assert_eq!(n[0].link, None);
        assert_eq!(counts(&app, &b).await, counts_of(0, 1));
        assert_eq!(counts(&app, &a).await, counts_of(0, 0));

        // The inbox shows the state before its side effects, then applies them.
        let (status, inbox) = app.get(PM, Some(&b)).await;
        assert_eq!(status, 200, "{inbox}");
        assert_eq!(inbox.as_array().unwrap().len(), 1);
        let view = &inbox[0];
        assert_eq!(
            keys(view),
            [
                "id",
                "churchId",
                "fromPersonId",
                "toPersonId",
                "conversationId",
                "notifyPersonId",
                "lastMessageTime",
                "conversation"
            ]
        );
        assert_eq!(view["notifyPersonId"], "PB");
        assert_eq!(view["conversation"]["id"], conv.as_str());
        assert_eq!(view["conversation"]["messages"][0]["id"], msg_id.as_str());
        assert_eq!(
            view["lastMessageTime"],
            view["conversation"]["messages"][0]["timeSent"]
        );
        assert_eq!(counts(&app, &b).await, counts_of(0, 0));
        assert!(!notifications_of(&app, "PB").await[0].is_new);
        // No frame for opening the inbox.
        assert_no_frame(&mut b_tab1).await;
    }
);

server_test!(
    private_message_notification_is_reused_and_tracks_delivery,
    [sqlite, postgres, mysql, gateway_postgres, gateway_mysql],
    |db: TestDb| async move {
        let app = TestApp::spawn(&db).await;
        let (a, b) = (app.token("C1", "PA", &[]), app.token("C1", "PB", &[]));
        let (conv, pm_id) = thread(&app, &a, "PB").await;

        // Nobody of B's is listening: the row is flagged, the notification undelivered.
        pm_message(&app, &conv, "PA", "Ann").await;
        let first = notifications_of(&app, "PB").await;
        assert_eq!(first.len(), 1);
        assert_eq!(first[0].delivery_method, None);
        assert_eq!(
            pm_row(&app, &pm_id)
                .await
                .unwrap()
                .notify_person_id
                .as_deref(),
            Some("PB")
        );

        // A second message while it is unread refreshes the same notification.
        let mut b_tab = alerts_socket(&app, &b).await;
        pm_message(&app, &conv, "PA", "Ann Again").await;
        let f = b_tab.next_action("privateMessage").await;
        assert_eq!(f["data"]["counts"], counts_of(0, 1));
        let second = notifications_of(&app, "PB").await;
        assert_eq!(second.len(), 1);
        assert_eq!(second[0].id, first[0].id);
        assert_eq!(second[0].message, "New Message from Ann Again");
        assert!(second[0].time_sent > first[0].time_sent);
        assert_eq!(second[0].delivery_method.as_deref(), Some("socket"));

        // The reply flips the flag to the other participant.
        let mut a_tab = alerts_socket(&app, &a).await;
        pm_message(&app, &conv, "PB", "Bea").await;
        let f = a_tab.next_action("privateMessage").await;
        assert_eq!(f["conversationId"], conv.as_str());
        assert_eq!(f["data"]["counts"], counts_of(0, 1));
        assert_eq!(counts(&app, &b).await, counts_of(0, 0));
        assert_eq!(
            pm_row(&app, &pm_id)
                .await
                .unwrap()
                .notify_person_id
                .as_deref(),
            Some("PA")
        );
        assert_no_frame(&mut b_tab).await;

        // After B opened the inbox, the next message creates a fresh notification.
        let (status, _) = app.get(PM, Some(&b)).await;
        assert_eq!(status, 200);
        pm_message(&app, &conv, "PA", "Ann").await;
        b_tab.next_action("privateMessage").await;
        let all = notifications_of(&app, "PB").await;
        assert_eq!(all.len(), 2);
        assert_eq!(all.iter().filter(|n| n.is_new).count(), 1);

        // A sender who is not a participant clears the flag and alerts nobody.
        let txn = app.store.begin_write().await.unwrap();
        let c = app.store.conversation(&conv).await.unwrap().unwrap();
        let alert = alerts::on_message_created(&txn, &c, Some("PZ"), "Zed", 1)
            .await
            .unwrap();
        txn.commit().await.unwrap();
        assert!(alert.is_none());
        assert_eq!(pm_row(&app, &pm_id).await.unwrap().notify_person_id, None);

        // A private conversation without a participants row: nothing happens.
        let bare = app.conversation("C1", "privateMessage", false).await;
        let c = app.store.conversation(&bare).await.unwrap().unwrap();
        let txn = app.store.begin_write().await.unwrap();
        let alert = alerts::on_message_created(&txn, &c, Some("PA"), "Ann", 1)
            .await
            .unwrap();
        txn.commit().await.unwrap();
        assert!(alert.is_none());
        assert_no_frame(&mut b_tab).await;
        assert_no_frame(&mut a_tab).await;
    }
);

server_test!(
    private_message_create_rules,
    [sqlite, postgres, mysql, gateway_postgres, gateway_mysql],
    |db: TestDb| async move {
        let app = TestApp::spawn(&db).await;
        let (a, b, c) = (
            app.token("C1", "PA", &[]),
            app.token("C1", "PB", &[]),
            app.token("C1", "PC", &[]),
        );
        let conv = app.conversation("C1", "privateMessage", false).await;
        let item = json!([{"toPersonId": "PB", "conversationId": conv}]);
        let (status, body) = app.post(PM, Some(&a), &item).await;
        assert_eq!(status, 200, "{body}");
        let row = &body[0];
        assert_eq!(
            keys(row),
            [
                "id",
                "churchId",
                "fromPersonId",
                "toPersonId",
                "conversationId",
                "notifyPersonId"
            ]
        );
        assert_eq!(
            (
                &row["churchId"],
                &row["fromPersonId"],
                &row["toPersonId"],
                &row["notifyPersonId"]
            ),
            (&json!("C1"), &json!("PA"), &json!("PB"), &Value::Null)
        );
        assert_eq!(row["id"].as_str().unwrap().len(), 11);

        // The same pair, in either direction, gets the existing row back.
        let (status, again) = app.post(PM, Some(&a), &item).await;
        assert_eq!((status, &again[0]), (200, row));
        let (status, reverse) = app
            .post(
                PM,
                Some(&b),
                &json!([{"toPersonId": "PA", "conversationId": conv}]),
            )
            .await;
        assert_eq!((status, &reverse[0]), (200, row));

        // A different pair: 409, also when the clashing item is the second of a batch.
        let conv2 = app.conversation("C1", "privateMessage", false).await;
        let (status, body) = app
            .post(
                PM,
                Some(&c),
                &json!([{"toPersonId": "PA", "conversationId": conv}]),
            )
            .await;
        assert_eq!(
            (status, body),
            (
                409,
                json!({"error": "Conversation already has participants"})
            )
        );
        let (status, _) = app
            .post(
                PM,
                Some(&c),
                &json!([
                    {"toPersonId": "PA", "conversationId": conv2},
                    {"toPersonId": "PA", "conversationId": conv},
                ]),
            )
            .await;
        assert_eq!(status, 409);
        assert!(
            app.store
                .private_message_of(&conv2)
                .await
                .unwrap()
                .is_none()
        );

        // Unknown conversations and other churches' conversations are 404, nothing written.
        let foreign = app.conversation("C2", "privateMessage", false).await;
        for missing in ["NOPE0000000", foreign.as_str()] {
            let (status, body) = app
                .post(
                    PM,
                    Some(&c),
                    &json!([
                        {"toPersonId": "PA", "conversationId": conv2},
                        {"toPersonId": "PA", "conversationId": missing},
                    ]),
                )
                .await;
            assert_eq!(
                (status, body),
                (404, json!({"error": "Conversation not found"}))
            );
        }
        assert!(
            app.store
                .private_message_of(&conv2)
                .await
                .unwrap()
                .is_none()
        );
        assert!(
            app.store
                .private_message_of(&foreign)
                .await
                .unwrap()
                .is_none()
        );

        // Shape errors name the first offending value; nothing is written.
        let (status, body) = app
        .post(
            PM,
            Some(&c),
            &json!([{"toPersonId": "PA", "conversationId": conv2}, {"toPersonId": 5, "conversationId": conv2}]),
        )
        .await;
        assert_eq!(
            (status, body),
            (
                400,
                json!({"error": "Invalid request body", "field": "/1/toPersonId"})
            )
        );
        let (status, body) = app.post(PM, Some(&c), &json!({"toPersonId": "PA"})).await;
        assert_eq!(
            (status, body),
            (400, json!({"error": "Invalid request body", "field": ""}))
        );
        let many: Vec<Value> = (0..101)
            .map(|_| json!({"toPersonId": "PA", "conversationId": conv2}))
            .collect();
        let (status, body) = app.post(PM, Some(&c), &Value::Array(many)).await;
        assert_eq!((status, body), (400, json!({"error": "Too many items"})));
        assert!(
            app.store
                .private_message_of(&conv2)
                .await
                .unwrap()
                .is_none()
        );
        let (status, body) = app.post(PM, Some(&c), &json!([])).await;
        assert_eq!((status, body), (200, json!([])));

        // A batch of two threads is written in one go.
        let conv3 = app.conversation("C1", "privateMessage", false).await;
        let (status, body) = app
            .post(
                PM,
                Some(&c),
                &json!([
                    {"toPersonId": "PA", "conversationId": conv2},
                    {"toPersonId": "PB", "conversationId": conv3},
                ]),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body[1]["toPersonId"], "PB");

        // Acting as a person needs a token with a personId.
        let no_person = app.token("C1", "", &[]);
        for token in [None, Some(no_person.as_str())] {
            let (status, body) = app.post(PM, token, &item).await;
            assert_eq!((status, body), (401, json!({"error": "Unauthorized"})));
            let (status, _) = app.get(PM, token).await;
            assert_eq!(status, 401);
        }
    }
);

server_test!(
    private_message_get_and_delete_are_for_participants,
    [sqlite, postgres, mysql, gateway_postgres, gateway_mysql],
    |db: TestDb| async move {
        let app = TestApp::spawn(&db).await;
        let (a, b, x) = (
            app.token("C1", "PA", &[]),
            app.token("C1", "PB", &[]),
            app.token("C1", "PX", &["Content__Edit", "Messaging__Admin"]),
        );
        let (conv, pm_id) = thread(&app, &a, "PB").await;
        let (status, view) = app.get(&format!("{PM}/{pm_id}"), Some(&a)).await;
        assert_eq!(status, 200, "{view}");
        assert_eq!(view["lastMessageTime"], Value::Null);
        assert_eq!(view["conversation"]["messages"], json!([]));
        assert_eq!(view["conversation"]["contentType"], "privateMessage");

        let (status, body) = app.get(&format!("{PM}/{pm_id}"), Some(&x)).await;
        assert_eq!((status, body), (401, json!({"error": "Unauthorized"})));
        let not_found = json!({"error": "Private message not found"});
        let (status, body) = app.get(&format!("{PM}/NOPE0000000"), Some(&a)).await;
        assert_eq!((status, &body), (404, &not_found));
        let other_church = app.token("C2", "PA", &[]);
        let (status, body) = app.get(&format!("{PM}/{pm_id}"), Some(&other_church)).await;
        assert_eq!((status, &body), (404, &not_found));

        // Opening a thread flagged for someone else leaves the flag alone.
        let msg = pm_message(&app, &conv, "PA", "Ann").await;
        let (_, view) = app.get(&format!("{PM}/{pm_id}"), Some(&a)).await;
        assert_eq!(view["notifyPersonId"], "PB");
        assert_eq!(view["conversation"]["messages"][0]["id"], msg.as_str());
        assert_eq!(counts(&app, &b).await, counts_of(0, 1));
        // The recipient opening it sees the cleared value, and the thread is read.
        let (_, view) = app.get(&format!("{PM}/{pm_id}"), Some(&b)).await;
        assert_eq!(view["notifyPersonId"], Value::Null);
        assert_eq!(pm_row(&app, &pm_id).await.unwrap().notify_person_id, None);
        assert!(notifications_of(&app, "PB").await.iter().all(|n| !n.is_new));
        assert_eq!(counts(&app, &b).await, counts_of(0, 0));

        // Delete: participants only; unknown ids are "Conversation not found".
        let (other_conv, other_pm) = thread(&app, &a, "PX").await;
        pm_message(&app, &other_conv, "PA", "Ann").await;
        message_reactions::Entity::insert(message_reactions::ActiveModel {
            id: Set(messaging::ids::new_id()),
            church_id: Set("C1".into()),
            message_id: Set(msg.clone()),
            conversation_id: Set(conv.clone()),
            person_id: Set("PB".into()),
            emoji: Set("👍".into()),
            time_added: Set(1),
        })
        .exec_without_returning(&app.db)
        .await
        .unwrap();
        let (status, body) = app.delete(&format!("{PM}/{pm_id}"), Some(&x)).await;
        assert_eq!((status, body), (401, json!({"error": "Unauthorized"})));
        let (status, body) = app.delete(&format!("{PM}/NOPE0000000"), Some(&b)).await;
        assert_eq!(
            (status, body),
            (404, json!({"error": "Conversation not found"}))
        );
        let (status, body) = app.delete(&format!("{PM}/{pm_id}"), Some(&b)).await;
        assert_eq!((status, body), (200, json!({"success": true})));
        assert!(pm_row(&app, &pm_id).await.is_none());
        assert!(app.store.conversation(&conv).await.unwrap().is_none());
        let db = &app.db;
        let left = messages::Entity::find()
            .filter(messages::Column::ConversationId.eq(&conv))
            .all(db)
            .await
            .unwrap();
        assert!(left.is_empty());
        let reactions = message_reactions::Entity::find()
            .filter(message_reactions::Column::ConversationId.eq(&conv))
            .all(db)
            .await
            .unwrap();
        assert!(reactions.is_empty());
        assert!(notifications_of(&app, "PB").await.is_empty());
        // The other thread is untouched.
        assert!(pm_row(&app, &other_pm).await.is_some());
        assert_eq!(notifications_of(&app, "PX").await.len(), 1);
        assert_eq!(counts(&app, &x).await, counts_of(0, 1));
        let (status, _) = app.delete(&format!("{PM}/{pm_id}"), Some(&b)).await;
        assert_eq!(status, 404);
    }
);

server_test!(
    inbox_is_newest_first_with_empty_threads_last,
    [sqlite, postgres, mysql, gateway_postgres, gateway_mysql],
    |db: TestDb| async move {
        let app = TestApp::spawn(&db).await;
        let a = app.token("C1", "PA", &[]);
        let (quiet, quiet_pm) = thread(&app, &a, "PB").await;
        let (older, older_pm) = thread(&app, &a, "PC").await;
        let (newer, newer_pm) = thread(&app, &a, "PD").await;
        let (_, foreign_pm) = thread(&app, &app.token("C1", "PE", &[]), "PF").await;
        let _ = quiet;
        pm_message(&app, &newer, "PA", "Ann").await;
        pm_message(&app, &older, "PA", "Ann").await;
        let latest = pm_message(&app, &newer, "PD", "Dee").await;
        let (status, inbox) = app.get(PM, Some(&a)).await;
        assert_eq!(status, 200, "{inbox}");
        let ids: Vec<&str> = inbox
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v["id"].as_str().unwrap())
            .collect();
        assert_eq!(ids, [&newer_pm, &older_pm, &quiet_pm]);
        assert!(!ids.contains(&foreign_pm.as_str()));
        assert_eq!(
            inbox[0]["conversation"]["messages"]
                .as_array()
                .unwrap()
                .len(),
            1
        );
        assert_eq!(
            inbox[0]["conversation"]["messages"][0]["id"],
            latest.as_str()
        );
        assert_eq!(inbox[0]["conversation"]["postCount"], 2);
        assert_eq!(inbox[0]["notifyPersonId"], "PA");
        assert_eq!(inbox[2]["lastMessageTime"], Value::Null);
        assert_eq!(inbox[2]["conversation"]["messages"], json!([]));
        // Only the rows flagged for the caller are cleared.
        assert_eq!(
            pm_row(&app, &older_pm)
                .await
                .unwrap()
                .notify_person_id
                .as_deref(),
            Some("PC")
        );
        assert_eq!(
            pm_row(&app, &newer_pm).await.unwrap().notify_person_id,
            None
        );
        let (_, inbox) = app.get(PM, Some(&a)).await;
        assert_eq!(inbox[0]["notifyPersonId"], Value::Null);
    }
);

server_test!(
    notification_create_frames_skips_unread_duplicates_and_marks_read,
    [sqlite, postgres, mysql, gateway_postgres, gateway_mysql],
    |db: TestDb| async move {
        let app = TestApp::spawn(&db).await;
        let admin = app.token("C1", "PADM", &["Messaging__Admin"]);
        let (b, d, x) = (
            app.token("C1", "PB", &[]),
            app.token("C1", "PD", &[]),
            app.token("C1", "PX", &[]),
        );
        let mut b_tab = alerts_socket(&app, &b).await;
        let mut x_tab = alerts_socket(&app, &x).await;
        let mut admin_tab = alerts_socket(&app, &admin).await;
        // Another church's PB is a different person.
        let mut b_elsewhere = alerts_socket(&app, &app.token("C2", "PB", &[])).await;
        let body = json!({
            "peopleIds": ["PB", "PD", "PB"],
            "contentType": "event",
            "contentId": "E1",
            "message": "Hello",
            "link": "/events/E1",
            "churchId": "C2",
        });
        let create = "/messaging/notifications/create";
        let (status, created) = app.post(create, Some(&admin), &body).await;
        assert_eq!(status, 200, "{created}");
        let created = created.as_array().unwrap().clone();
        assert_eq!(created.len(), 2, "duplicate ids give one notification");
        assert_eq!(
            keys(&created[0]),
            [
                "id",
                "churchId",
                "personId",
                "contentType",
                "contentId",
                "timeSent",
                "isNew",
                "message",
                "link",
                "deliveryMethod",
                "triggeredByPersonId",
                "category"
            ]
        );
        let by_person = |p: &str| {
            created
                .iter()
                .find(|n| n["personId"] == p)
                .cloned()
                .unwrap()
        };
        let nb = by_person("PB");
        assert_eq!(
            (
                &nb["churchId"],
                &nb["isNew"],
                &nb["message"],
                &nb["link"],
                &nb["triggeredByPersonId"],
                &nb["category"]
            ),
            (
                &json!("C1"),
                &json!(true),
                &json!("Hello"),
                &json!("/events/E1"),
                &json!("PADM"),
                &Value::Null
            )
        );
        assert_eq!(nb["deliveryMethod"], "socket");
        assert_eq!(by_person("PD")["deliveryMethod"], Value::Null);
        let stored = notifications_of(&app, "PB").await;
        assert_eq!(stored[0].delivery_method.as_deref(), Some("socket"));
        assert_eq!(
            b_tab.text().await,
            r#"{"churchId":"C1","conversationId":"alert","action":"notification","data":{"counts":{"notificationCount":1,"pmCount":0}}}"#
        );
        for ws in [&mut x_tab, &mut admin_tab, &mut b_elsewhere] {
            assert_no_frame(ws).await;
        }

        // Repeating while unread creates nothing and sends nothing; new people still get one.
        let (status, again) = app.post(create, Some(&admin), &body).await;
        assert_eq!((status, again), (200, json!([])));
        assert_no_frame(&mut b_tab).await;
        let mut more = body.clone();
        more["peopleIds"] = json!(["PB", "PX"]);
        let (_, again) = app.post(create, Some(&admin), &more).await;
        assert_eq!(again.as_array().unwrap().len(), 1);
        assert_eq!(again[0]["personId"], "PX");
        assert_eq!(
            x_tab.next_action("notification").await["data"]["counts"],
            counts_of(1, 0)
        );
        // Another content id is another notification.
        let mut other = body.clone();
        other["contentId"] = json!("E2");
        other["peopleIds"] = json!(["PB"]);
        let (_, created2) = app.post(create, Some(&admin), &other).await;
        assert_eq!(created2.as_array().unwrap().len(), 1);
        assert_eq!(
            b_tab.next_action("notification").await["data"]["counts"],
            counts_of(2, 0)
        );
        assert_eq!(counts(&app, &b).await, counts_of(2, 0));
        assert_eq!(counts(&app, &d).await, counts_of(1, 0));

        // /my: newest first, state before marking, then read.
        let (status, mine) = app.get("/messaging/notifications/my", Some(&b)).await;
        assert_eq!(status, 200);
        let contents: Vec<&str> = mine
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n["contentId"].as_str().unwrap())
            .collect();
        assert_eq!(contents, ["E2", "E1"]);
        assert!(mine.as_array().unwrap().iter().all(|n| n["isNew"] == true));
        let (_, mine) = app.get("/messaging/notifications/my", Some(&b)).await;
        assert!(mine.as_array().unwrap().iter().all(|n| n["isNew"] == false));
        assert_eq!(counts(&app, &b).await, counts_of(0, 0));
        assert_no_frame(&mut b_tab).await;

        // Once read, the same content notifies again.
        let (_, again) = app.post(create, Some(&admin), &body).await;
        let people: Vec<&str> = again
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n["personId"].as_str().unwrap())
            .collect();
        assert_eq!(people, ["PB"]);
        assert_eq!(
            b_tab.next_action("notification").await["data"]["counts"],
            counts_of(1, 0)
        );
    }
);

server_test!(
    notification_create_validates_and_needs_messaging_admin,
    [sqlite, postgres, mysql, gateway_postgres, gateway_mysql],
    |db: TestDb| async move {
        let app = TestApp::spawn(&db).await;
        let admin = app.token("C1", "PADM", &["Messaging__Admin"]);
        let create = "/messaging/notifications/create";
        let good =
            json!({"peopleIds": ["PB"], "contentType": "event", "contentId": "E1", "message": "m"});
        for token in [
            None,
            Some(app.token("C1", "PB", &["Content__Edit"])),
            Some(app.token("C1", "", &["Messaging__Admin"])),
        ] {
            let (status, body) = app.post(create, token.as_deref(), &good).await;
            assert_eq!((status, body), (401, json!({"error": "Unauthorized"})));
        }
        let invalid = |field: &str| json!({"error": "Invalid request body", "field": field});
        let mut cases = vec![
            (json!({"contentType": "event"}), invalid("/peopleIds")),
            (
                json!({"peopleIds": ["PB", 7], "contentType": "e", "contentId": "c", "message": "m"}),
                invalid("/peopleIds/1"),
            ),
            (
                json!({"peopleIds": ["PB"], "contentId": "c", "message": "m"}),
                invalid("/contentType"),
            ),
            (
                json!({"peopleIds": ["PB"], "contentType": "x".repeat(46), "contentId": "c", "message": "m"}),
                invalid("/contentType"),
            ),
            (
                json!({"peopleIds": ["PB"], "contentType": "e", "contentId": "c".repeat(256), "message": "m"}),
                invalid("/contentId"),
            ),
            (
                json!({"peopleIds": ["PB"], "contentType": "e", "contentId": "c"}),
                invalid("/message"),
            ),
            (
                json!({"peopleIds": ["PB"], "contentType": "e", "contentId": "c", "message": "é".repeat(32_768)}),
                invalid("/message"),
            ),
            (
                json!({"peopleIds": ["PB"], "contentType": "e", "contentId": "c", "message": "m", "link": "l".repeat(101)}),
                invalid("/link"),
            ),
        ];
        let many: Vec<String> = (0..101).map(|i| format!("P{i}")).collect();
        cases.push((
            json!({"peopleIds": many, "contentType": "e", "contentId": "c", "message": "m"}),
            json!({"error": "Too many items"}),
        ));
        for (body, error) in cases {
            let (status, got) = app.post(create, Some(&admin), &body).await;
            assert_eq!((status, got), (400, error), "{body}");
        }
        let (status, body) = app
            .send(
                app.client.post(app.url(create)).body("{\"peopleIds\":"),
                Some(&admin),
            )
            .await;
        assert_eq!((status, body), (400, json!({"error": "Invalid JSON"})));
        assert!(notifications_of(&app, "PB").await.is_empty());
        // Limits that are exactly met are fine: 65 535 bytes of message, 100 people.
        let people: Vec<String> = (0..100).map(|i| format!("P{i}")).collect();
        let (status, body) = app
            .post(
                create,
                Some(&admin),
                &json!({"peopleIds": people, "contentType": "e", "contentId": "c", "message": "m".repeat(65_535), "link": null}),
            )
            .await;
        assert_eq!(status, 200);
        assert_eq!(body.as_array().unwrap().len(), 100);
        assert_eq!(body[0]["link"], Value::Null);
        assert_eq!(body[99]["message"].as_str().unwrap().len(), 65_535);
    }
);

server_test!(
    concurrent_creates_leave_one_unread_notification,
    [sqlite, postgres, mysql, gateway_postgres, gateway_mysql],
    |db: TestDb| async move {
        let app = TestApp::spawn(&db).await;
        let admin = app.token("C1", "PADM", &["Messaging__Admin"]);
        let body = json!({"peopleIds": ["PB", "PC"], "contentType": "event", "contentId": "E1", "message": "m"});
        let creates =
            (0..8).map(|_| app.post("/messaging/notifications/create", Some(&admin), &body));
        let results = futures::future::join_all(creates).await;
        let created: usize = results
            .iter()
            .map(|(status, b)| {
                assert_eq!(*status, 200, "{b}");
                b.as_array().unwrap().len()
            })
            .sum();
        assert_eq!(created, 2);
        assert_eq!(notifications_of(&app, "PB").await.len(), 1);
        assert_eq!(notifications_of(&app, "PC").await.len(), 1);
    }
);

server_test!(
    notification_mark_read_and_delete_permissions,
    [sqlite, postgres, mysql, gateway_postgres, gateway_mysql],
    |db: TestDb| async move {
        let app = TestApp::spawn(&db).await;
        let admin = app.token("C1", "PADM", &["Messaging__Admin"]);
        let (a, b) = (app.token("C1", "PA", &[]), app.token("C1", "PB", &[]));
        let create = |people: Value, content: &str| json!({"peopleIds": people, "contentType": "event", "contentId": content, "message": "m"});
        let (_, created) = app
            .post(
                "/messaging/notifications/create",
                Some(&admin),
                &create(json!(["PA", "PB"]), "E1"),
            )
            .await;
        app.post(
            "/messaging/notifications/create",
            Some(&admin),
            &create(json!(["PB"]), "E2"),
        )
        .await;
        // B also has a private-message notification, which counts and lists leave out.
        let (conv, _) = thread(&app, &a, "PB").await;
        pm_message(&app, &conv, "PA", "Ann").await;
        assert_eq!(counts(&app, &b).await, counts_of(2, 1));

        let unauthorized = (401, json!({"error": "Unauthorized"}));
        let success = (200, json!({"success": true}));
        // Someone else's notifications: only a Messaging Admin, and only in their church.
        let (s, body) = app
            .post(
                "/messaging/notifications/markRead/C1/PB",
                Some(&a),
                &json!({}),
            )
            .await;
        assert_eq!((s, body), unauthorized);
        let (s, body) = app
            .post(
                "/messaging/notifications/markRead/C2/PA",
                Some(&a),
                &json!({}),
            )
            .await;
        assert_eq!((s, body), unauthorized);
        let (s, body) = app
            .post(
                "/messaging/notifications/markRead/C2/PB",
                Some(&admin),
                &json!({}),
            )
            .await;
        assert_eq!((s, body), unauthorized);
        assert_eq!(counts(&app, &b).await, counts_of(2, 1));
        let (s, body) = app
            .post(
                "/messaging/notifications/markRead/C1/PA",
                Some(&a),
                &json!({}),
            )
            .await;
        assert_eq!((s, body), success);
        assert_eq!(counts(&app, &a).await, counts_of(0, 0));
        let (s, body) = app
            .post(
                "/messaging/notifications/markRead/C1/PB",
                Some(&admin),
                &json!({}),
            )
            .await;
        assert_eq!((s, body), success);
        assert_eq!(counts(&app, &b).await, counts_of(0, 1));
        assert!(notifications_of(&app, "PB").await.iter().all(|n| !n.is_new));

        // Deleting one: owner or Messaging Admin of its church.
        let a_note = created
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["personId"] == "PA")
            .unwrap()["id"]
            .as_str()
            .unwrap()
            .to_string();
        let b_note = created
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["personId"] == "PB")
            .unwrap()["id"]
            .as_str()
            .unwrap()
            .to_string();
        let path = |id: &str| format!("/messaging/notifications/C1/{id}");
        let (s, body) = app.delete(&path(&b_note), Some(&a)).await;
        assert_eq!((s, body), unauthorized);
        let foreign_admin = app.token("C2", "PZ", &["Messaging__Admin"]);
        let (s, body) = app.delete(&path(&b_note), Some(&foreign_admin)).await;
        assert_eq!((s, body), unauthorized);
        let not_found = (404, json!({"error": "Notification not found"}));
        let (s, body) = app.delete(&path("NOPE0000000"), Some(&a)).await;
        assert_eq!((s, body), not_found);
        let (s, body) = app
            .delete(&format!("/messaging/notifications/C2/{a_note}"), Some(&a))
            .await;
        assert_eq!((s, body), not_found);
        let (s, body) = app.delete(&path(&a_note), Some(&a)).await;
        assert_eq!((s, body), success);
        let (s, body) = app.delete(&path(&b_note), Some(&admin)).await;
        assert_eq!((s, body), success);
        assert!(notifications_of(&app, "PA").await.is_empty());

        // DELETE /my keeps the private-message notification with its thread.
        let (_, mine) = app.get("/messaging/notifications/my", Some(&b)).await;
        assert_eq!(mine.as_array().unwrap().len(), 1);
        assert_eq!(mine[0]["contentId"], "E2");
        let (s, body) = app.delete("/messaging/notifications/my", Some(&b)).await;
        assert_eq!((s, body), success);
        let left = notifications_of(&app, "PB").await;
        assert_eq!(left.len(), 1);
        assert_eq!(left[0].content_type, "privateMessage");
        let (_, mine) = app.get("/messaging/notifications/my", Some(&b)).await;
        assert_eq!(mine, json!([]));
        for (path, token) in [
            ("/messaging/notifications/unreadCount", None),
            ("/messaging/notifications/my", None),
            (
                "/messaging/notifications/unreadCount",
                Some(app.token("C1", "", &[])),
            ),
        ] {
            let (s, body) = app.get(path, token.as_deref()).await;
            assert_eq!((s, body), unauthorized);
        }
    }
);

server_test!(
    concurrent_thread_creates_and_messages_stay_single,
    [sqlite, postgres, mysql, gateway_postgres, gateway_mysql],
    |db: TestDb| async move {
        let app = TestApp::spawn(&db).await;
        let a = app.token("C1", "PA", &[]);
        let conv = app.conversation("C1", "privateMessage", false).await;
        let item = json!([{"toPersonId": "PB", "conversationId": conv}]);
        let creates = (0..8).map(|_| app.post(PM, Some(&a), &item));
        let ids: std::collections::BTreeSet<String> = futures::future::join_all(creates)
            .await
            .into_iter()
            .map(|(status, body)| {
                assert_eq!(status, 200, "{body}");
                body[0]["id"].as_str().unwrap().to_string()
            })
            .collect();
        assert_eq!(ids.len(), 1, "every create returns the one row");

        // Different pairs racing for one conversation: one wins, the rest get 409.
        let contested = app.conversation("C1", "privateMessage", false).await;
        let tokens: Vec<String> = (0..6)
            .map(|i| app.token("C1", &format!("Q{i}"), &[]))
            .collect();
        let body = json!([{"toPersonId": "PB", "conversationId": contested}]);
        let results =
            futures::future::join_all(tokens.iter().map(|t| app.post(PM, Some(t), &body))).await;
        let statuses: Vec<u16> = results.iter().map(|(s, _)| *s).collect();
        assert_eq!(
            statuses.iter().filter(|s| **s == 200).count(),
            1,
            "{statuses:?}"
        );
        assert!(
            statuses.iter().all(|s| *s == 200 || *s == 409),
            "{statuses:?}"
        );

        let sends = (0..6).map(|_| pm_message(&app, &conv, "PA", "Ann"));
        futures::future::join_all(sends).await;
        let n = notifications_of(&app, "PB").await;
        assert_eq!(n.len(), 1, "one unread notification per thread");
        assert_eq!(
            counts(&app, &app.token("C1", "PB", &[])).await,
            counts_of(0, 1)
        );
    }
);

server_test!(
    private_message_posted_over_rest_alerts_the_recipient,
    [sqlite, postgres, mysql, gateway_postgres, gateway_mysql],
    |db: TestDb| async move {
        let app = TestApp::spawn(&db).await;
        let (a, b) = (app.token("C1", "PA", &[]), app.token("C1", "PB", &[]));
        let (conv, _) = thread(&app, &a, "PB").await;
        let mut b_alerts = alerts_socket(&app, &b).await;
        let mut a_alerts = alerts_socket(&app, &a).await;
        // One tab of B's in both the thread's room and alerts: `message` comes first.
        let mut b_both = alerts_socket(&app, &b).await;
        app.join(
            Some(&b),
            json!([{"conversationId": conv, "socketId": b_both.id}]),
        )
        .await;
        let (status, body) = app
            .post(
                "/messaging/messages",
                Some(&a),
                &json!([{"conversationId": conv, "content": "hello"}]),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        let f = b_alerts.frame().await;
        assert_eq!(
            (&f["action"], &f["conversationId"], &f["data"]),
            (
                &json!("privateMessage"),
                &json!(conv),
                &json!({"counts": counts_of(0, 1)})
            )
        );
        let seen = b_both.until(|f| f["action"] == "privateMessage").await;
        let order: Vec<&str> = seen
            .iter()
            .filter_map(|f| f["action"].as_str())
            .filter(|a| ["message", "privateMessage"].contains(a))
            .collect();
        assert_eq!(order, ["message", "privateMessage"]);
        assert_no_frame(&mut a_alerts).await;

        // Editing does not notify again.
        let id = body[0]["id"].as_str().unwrap();
        let (status, body) = app
            .post(
                "/messaging/messages",
                Some(&a),
                &json!([{"id": id, "conversationId": conv, "content": "edited"}]),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        assert_no_frame(&mut b_alerts).await;

        let (_, inbox) = app.get(PM, Some(&b)).await;
        assert_eq!(inbox[0]["conversation"]["messages"][0]["content"], "edited");
        assert_eq!(counts(&app, &b).await, counts_of(0, 0));
    }
);
