//! Migrations under concurrency: nodes started together on one fresh database all come up
//! (PROTOCOL.md §1). Three pools of their own, as three processes would have, migrate at
//! the same moment; every one succeeds and the schema is complete once.
use messaging::store::Store;
use migrations::sea_orm_migration::MigratorTrait;

use crate::helpers::TestDb;
use crate::server_test;

server_test!(
    three_nodes_migrate_one_fresh_database_together,
    |db: TestDb| async move {
        let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(3));
        let nodes: Vec<_> = (0..3)
            .map(|i| {
                let url = db.url.clone();
                let barrier = barrier.clone();
                tokio::spawn(async move {
                    let store = Store::connect(&url).await.expect("connect");
                    // Connected first, then all at once: the race the lock has to settle.
                    barrier.wait().await;
                    let result = store.migrate().await;
                    (i, result, store)
                })
            })
            .collect();
        let mut stores = Vec::new();
        for node in nodes {
            let (i, result, store) = node.await.expect("node task");
            assert!(result.is_ok(), "node {i}: {:?}", result.err());
            stores.push(store);
        }
        let db = sea_orm::Database::connect(&db.url).await.expect("connect");
        for store in &stores {
            let pending = migrations::Migrator::get_pending_migrations(&db)
                .await
                .expect("read the migrations table");
            assert!(
                pending.is_empty(),
                "pending after migrate: {}",
                pending.len()
            );
            let applied = migrations::Migrator::get_applied_migrations(&db)
                .await
                .expect("read the migrations table");
            assert_eq!(applied.len(), migrations::Migrator::migrations().len());
            // Migrating again is a no-op.
            store.migrate().await.expect("migrate again");
        }
    }
);
