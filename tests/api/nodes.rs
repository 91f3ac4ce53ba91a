//! Nodes, leases, the sweep and shutdown (§1, §5.3).
use std::time::Duration;

use messaging::store::entities::{connections, nodes};
use sea_orm::{ActiveValue::Set, EntityTrait, TransactionTrait};
use serde_json::json;

use crate::helpers::*;
use crate::server_test;

/// Returns once `node` has run a whole lease renewal and sweep begun after this call. A round
/// renews the lease (a new `leaseUntil`) and then sweeps, so the second renewal seen from
/// here comes after a whole round. Polled: a renewal missed between two looks only makes
/// this wait longer.
async fn a_whole_sweep_round(conn: &sea_orm::DatabaseConnection, node: &str) {
    let lease = || async {
        nodes::Entity::find_by_id(node)
            .one(conn)
            .await
            .unwrap()
            .expect("the node's row")
            .lease_until
    };
    let deadline = tokio::time::Instant::now() + WAIT;
    let (mut last, mut renewals) = (lease().await, 0);
    while renewals < 2 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "node {node}: {renewals} lease renewals within {WAIT:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
        let now = lease().await;
        if now != last {
            (last, renewals) = (now, renewals + 1);
        }
    }
}

server_test!(
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
        let conn = sea_orm::Database::connect(&db.url).await.unwrap();
        for i in 0..5 {
            assert_eq!(a.grpc_send("C1", &room, &json!({"i": i})).await, 1);
            on_a.next_action("message").await;
            for node in [&a.node_id, &b.node_id] {
                a_whole_sweep_round(&conn, node).await;
            }
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

server_test!(
    rows_of_an_expired_node_are_purged,
    |db: TestDb| async move {
        let mut s = settings(&db);
        s.sweep_interval_secs = 0.2;
        let app = TestApp::spawn_with(s).await;
        let room = app.conversation("C1", "streamingLive", true).await;
        let mut watcher = app.ws_with_id().await;
        app.join_one(&room, &watcher.id, "w").await;
        watcher.next_action("attendance").await;
        // A crashed node: its lease ran out and its row is still there. Both rows in one
        // transaction: a sweep between them would remove the node and leave its row behind
        // with no expired node to find it by.
        let now = messaging::time::now_ms();
        let txn = app.db.begin().await.unwrap();
        nodes::Entity::insert(nodes::ActiveModel {
            id: Set("DEADNODE001".into()),
            grpc_address: Set(None),
            started_at: Set(now - 600_000),
            lease_until: Set(now - 1),
        })
        .exec_without_returning(&txn)
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
        .exec_without_returning(&txn)
        .await
        .unwrap();
        txn.commit().await.unwrap();
        // The sweep removes it and tells the room.
        let frames = watcher
            .until(|f| f["action"] == "attendance" && f["data"]["totalViewers"] == 1)
            .await;
        assert!(!frames.last().unwrap().to_string().contains("ghost"));
        assert!(
            nodes::Entity::find_by_id("DEADNODE001".to_string())
                .one(&app.db)
                .await
                .unwrap()
                .is_none()
        );
        assert!(
            nodes::Entity::find_by_id(app.node_id.clone())
                .one(&app.db)
                .await
                .unwrap()
                .is_some()
        );
    }
);

server_test!(
    shutdown_closes_sockets_1001_and_removes_the_node,
    |db: TestDb| async move {
        let mut app = TestApp::spawn(&db).await;
        let room = app.conversation("C1", "streamingLive", true).await;
        let mut a = app.ws_with_id().await;
        app.join_one(&room, &a.id, "a").await;
        a.next_action("attendance").await;
        let store = app.store.clone();
        let db = app.db.clone();
        let node = app.node_id.clone();
        let closing = tokio::spawn(async move { a.close_code().await });
        app.shutdown().await;
        assert_eq!(closing.await.unwrap(), Some(1001));
        assert!(store.room_rows("C1", &room).await.unwrap().is_empty());
        assert!(
            nodes::Entity::find_by_id(node)
                .one(&db)
                .await
                .unwrap()
                .is_none()
        );
    }
);

server_test!(
    a_swept_node_registers_again_and_writes_its_rows_back,
    |db: TestDb| async move {
        let mut s = settings(&db);
        s.sweep_interval_secs = 0.2;
        let app = TestApp::spawn_with(s).await;
        let room = app.conversation("C1", "streamingLive", true).await;
        let mut a = app.ws_with_id().await;
        let b = app.ws_with_id().await;
        app.join_one(&room, &a.id, "Ada").await;
        app.join_one(&room, &b.id, "Anonymous ").await;
        a.until(|f| f["action"] == "attendance" && f["data"]["totalViewers"] == 2)
            .await;
        let before = app.store.room_rows("C1", &room).await.unwrap();
        // What another node's sweep does to a node whose lease ran out (the node was paused):
        // its rows and its `nodes` row go, in one transaction.
        use sea_orm::{ColumnTrait, QueryFilter, TransactionTrait};
        let txn = app.db.begin().await.unwrap();
        connections::Entity::delete_many()
            .filter(connections::Column::NodeId.eq(app.node_id.clone()))
            .exec(&txn)
            .await
            .unwrap();
        nodes::Entity::delete_by_id(app.node_id.clone())
            .exec(&txn)
            .await
            .unwrap();
        txn.commit().await.unwrap();
        // The node notices at its next renewal, registers again and writes the same rows back.
        eventually("rows written back", || async {
            app.store.room_rows("C1", &room).await.unwrap() == before
        })
        .await;
        assert!(
            nodes::Entity::find_by_id(app.node_id.clone())
                .one(&app.db)
                .await
                .unwrap()
                .is_some()
        );
        // The room is told, and memory and database agree again: a send reaches both.
        a.until(|f| f["action"] == "attendance" && f["data"]["totalViewers"] == 2)
            .await;
        assert_eq!(app.grpc_send("C1", &room, &json!({"after": 1})).await, 2);
        assert_eq!(a.next_action("message").await["data"]["after"], 1);
    }
);

server_test!(deadlocked_write_units_are_retried, [postgres, mysql]);
/// A real deadlock (PostgreSQL 40P01, MariaDB 1213): two write units lock two rows in
/// opposite orders; the database aborts one, `Store::write` sees the driver's code and runs
/// it again, and both units complete.
async fn deadlocked_write_units_are_retried(db: TestDb) {
    let store = messaging::store::Store::connect(&db.url).await.unwrap();
    store.migrate().await.unwrap();
    // The units run their own SQL, on a connection of the test's: what is under test is
    // `Store::write`'s retry, whatever runs inside it.
    let raw = sea_orm::Database::connect(&db.url).await.unwrap();
    for id in ["NODE0000001", "NODE0000002"] {
        store
            .register_node(id, None, 0, Duration::from_secs(60))
            .await
            .unwrap();
    }
    let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(2));
    let unit = |first: &'static str, second: &'static str| {
        let (store, raw, barrier) = (store.clone(), raw.clone(), barrier.clone());
        let attempts = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
        let counted = attempts.clone();
        let task = tokio::spawn(async move {
            store
                .write(|| async {
                    let n = counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    use sea_orm::{ColumnTrait, QueryFilter, TransactionTrait};
                    let txn = raw.begin().await?;
                    let bump = |id: &'static str| {
                        nodes::Entity::update_many()
                            .col_expr(
                                nodes::Column::LeaseUntil,
                                sea_orm::sea_query::Expr::value(n as i64 + 1),
                            )
                            .filter(nodes::Column::Id.eq(id))
                    };
                    bump(first).exec(&txn).await?;
                    if n == 0 {
                        // Both hold their first row before either asks for its second.
                        barrier.wait().await;
                    }
                    bump(second).exec(&txn).await?;
                    txn.commit().await
                })
                .await
        });
        (task, attempts)
    };
    let (a, tries_a) = unit("NODE0000001", "NODE0000002");
    let (b, tries_b) = unit("NODE0000002", "NODE0000001");
    let (a, b) = tokio::time::timeout(WAIT * 3, async { (a.await, b.await) })
        .await
        .expect("both units finish");
    a.unwrap().expect("unit a committed");
    b.unwrap().expect("unit b committed");
    let tries = tries_a.load(std::sync::atomic::Ordering::SeqCst)
        + tries_b.load(std::sync::atomic::Ordering::SeqCst);
    assert!(tries >= 3, "one unit was retried ({tries} attempts)");
}
