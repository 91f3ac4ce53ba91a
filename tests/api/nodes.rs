//! Nodes, leases, the sweep and shutdown (§1, §5.3).
use std::time::Duration;

use messaging::store::entities::{connections, nodes};
use sea_orm::{ActiveValue::Set, EntityTrait};
use serde_json::json;

use crate::db_test;
use crate::helpers::*;

db_test!(
    two_nodes_never_delete_each_others_rows,
    |db: TestDb| async move {
        let mut s = settings(&db);
        s.sweep_interval_secs = 0.2;
        let a = TestApp::spawn_with(s.clone()).await;
        let b = TestApp::spawn_with(s).await;
        assert_ne!(a.node_id, b.node_id);
        let room = a.conversation("C1", "streamingLive", true).await;
        let mut on_a = a.ws_with_id().await;
        let on_b = b.ws_with_id().await;
        a.join_one(&room, &on_a.id, "a").await;
        b.join_one(&room, &on_b.id, "b").await;
        // Sends on A reach A's socket and leave B's row alone, across several sweeps of both.
        for i in 0..5 {
            assert_eq!(a.grpc_send("C1", &room, &json!({"i": i})).await, 1);
            on_a.next_action("message").await;
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        let rows = a.store.room_rows("C1", &room).await.unwrap();
        let owners: std::collections::BTreeSet<_> =
            rows.iter().map(|r| r.node_id.clone()).collect();
        assert_eq!(rows.len(), 2);
        assert_eq!(
            owners,
            [a.node_id.clone(), b.node_id.clone()].into_iter().collect()
        );
        // A join on A naming B's socket is refused: the socket is not held here.
        let (st, body) = a
            .post(
                "/messaging/connections",
                None,
                &json!([{"conversationId": room, "socketId": on_b.id}]),
            )
            .await;
        assert_eq!((st, body), (404, json!({"error": "Socket not found"})));
    }
);

db_test!(
    rows_of_an_expired_node_are_purged,
    |db: TestDb| async move {
        let mut s = settings(&db);
        s.sweep_interval_secs = 0.2;
        let app = TestApp::spawn_with(s).await;
        let room = app.conversation("C1", "streamingLive", true).await;
        let mut watcher = app.ws_with_id().await;
        app.join_one(&room, &watcher.id, "w").await;
        watcher.next_action("attendance").await;
        // A crashed node: its lease ran out and its row is still there.
        let now = messaging::time::now_ms();
        nodes::Entity::insert(nodes::ActiveModel {
            id: Set("DEADNODE001".into()),
            grpc_address: Set(None),
            started_at: Set(now - 600_000),
            lease_until: Set(now - 1),
        })
        .exec_without_returning(&app.store.db)
        .await
        .unwrap();
        connections::Entity::insert(connections::ActiveModel {
            id: Set("GHOSTROW001".into()),
            church_id: Set("C1".into()),
            conversation_id: Set(room.clone()),
            person_id: Set(None),
            display_name: Set(Some("ghost".into())),
            time_joined: Set(now),
            socket_id: Set("GHOSTSOCK01".into()),
            ip_address: Set(None),
            node_id: Set("DEADNODE001".into()),
            anonymous_number: Set(None),
        })
        .exec_without_returning(&app.store.db)
        .await
        .unwrap();
        // The sweep removes it and tells the room.
        let frames = watcher
            .until(|f| f["action"] == "attendance" && f["data"]["totalViewers"] == 1)
            .await;
        assert!(!frames.last().unwrap().to_string().contains("ghost"));
        assert!(
            nodes::Entity::find_by_id("DEADNODE001".to_string())
                .one(&app.store.db)
                .await
                .unwrap()
                .is_none()
        );
        assert!(
            nodes::Entity::find_by_id(app.node_id.clone())
                .one(&app.store.db)
                .await
                .unwrap()
                .is_some()
        );
    }
);

db_test!(
    shutdown_closes_sockets_1001_and_removes_the_node,
    |db: TestDb| async move {
        let mut app = TestApp::spawn(&db).await;
        let room = app.conversation("C1", "streamingLive", true).await;
        let mut a = app.ws_with_id().await;
        app.join_one(&room, &a.id, "a").await;
        a.next_action("attendance").await;
        let store = app.store.clone();
        let node = app.node_id.clone();
        let closing = tokio::spawn(async move { a.close_code().await });
        app.shutdown().await;
        assert_eq!(closing.await.unwrap(), Some(1001));
        assert!(store.room_rows("C1", &room).await.unwrap().is_empty());
        assert!(
            nodes::Entity::find_by_id(node)
                .one(&store.db)
                .await
                .unwrap()
                .is_none()
        );
    }
);
