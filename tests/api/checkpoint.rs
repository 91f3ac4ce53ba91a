//! SQLite checkpoints run off the commit path (`store::checkpoint`): a commit leaves its
//! pages in the WAL and returns, and a task with a connection of its own copies them into
//! the database file shortly after. SQLite's own trigger (1000 WAL pages, on the committing
//! connection) would leave a single post in the WAL indefinitely, so the database file alone
//! showing it tells the two apart.
use std::time::Duration;

use messaging::store::Store;
use messaging::store::entities::messages;
use sea_orm::{ConnectionTrait, Database, Statement};

use crate::helpers::{Backend, TestDb};

#[tokio::test]
async fn sqlite_commits_are_copied_into_the_database_file_by_the_checkpointer() {
    let db = TestDb::create(Backend::Sqlite).await;
    let store = Store::connect(&db.url).await.expect("connect");
    store.migrate().await.expect("migrate");
    let message = messages::Model {
        id: messaging::ids::new_id(),
        church_id: "C1".into(),
        conversation_id: "CONV1".into(),
        person_id: Some("P1".into()),
        display_name: Some("Ann".into()),
        time_sent: 1,
        time_updated: None,
        message_type: "message".into(),
        content: "checkpointed".into(),
    };
    store
        .append_messages(std::slice::from_ref(&message))
        .await
        .expect("append");

    // `immutable=1` reads the database file and ignores the WAL: the row shows there only
    // once a checkpoint has copied it. A fresh connection each time: no cache carries over.
    let path = db
        .url
        .trim_start_matches("sqlite://")
        .split('?')
        .next()
        .expect("path");
    let file_only = format!("sqlite://{path}?mode=ro&immutable=1");
    let count_in_file = || async {
        let conn = Database::connect(&file_only).await.ok()?;
        let row = conn
            .query_one_raw(Statement::from_string(
                conn.get_database_backend(),
                format!(
                    "SELECT COUNT(*) AS n FROM messages WHERE id = '{}'",
                    message.id
                ),
            ))
            .await
            .ok()??;
        let n: i64 = row.try_get("", "n").ok()?;
        let _ = conn.close().await;
        Some(n)
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        if count_in_file().await == Some(1) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the post never reached the database file: nothing checkpoints it"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The WAL stays; what it holds has all been copied.
    assert!(std::path::Path::new(&format!("{path}-wal")).exists());
}
