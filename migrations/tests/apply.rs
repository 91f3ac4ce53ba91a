//! Applies the migrations to real databases: up, up again (no-op), re-running the
//! statements themselves (IF NOT EXISTS), down, then up once more.
//!
//! SQLite always runs (temporary file). PostgreSQL and MySQL/MariaDB run when
//! `DATABASE_URL_POSTGRES` / `DATABASE_URL_MYSQL` point at a server: a database
//! with a random name is created there, used, and dropped afterwards.
// Tests unwrap: a panic is the failure report (the workspace denies unwrap elsewhere).
#![allow(clippy::unwrap_used)]

use std::hash::{BuildHasher, Hasher};
use std::time::{SystemTime, UNIX_EPOCH};

use migrations::Migrator;
use migrations::sea_orm_migration::prelude::*;
use migrations::sea_orm_migration::sea_orm::{
    ConnectionTrait, Database, DatabaseConnection, DbBackend, Statement,
};

/// Every table with its columns and index names, as the service expects them.
const SCHEMA: &[(&str, &[&str], &[&str])] = &[
    (
        "connections",
        &[
            "id",
            "churchId",
            "conversationId",
            "personId",
            "displayName",
            "timeJoined",
            "socketId",
            "ipAddress",
            "nodeId",
            "anonymousNumber",
        ],
        &[
            "uq_connections_room_socket",
            "idx_connections_room_person",
            "idx_connections_socket",
            "idx_connections_node",
            "idx_connections_room_anonymous",
        ],
    ),
    (
        "conversations",
        &[
            "id",
            "churchId",
            "contentType",
            "contentId",
            "title",
            "dateCreated",
            "groupId",
            "visibility",
            "firstPostId",
            "lastPostId",
            "postCount",
            "allowAnonymousPosts",
        ],
        &["idx_conversations_content", "idx_conversations_group"],
    ),
    (
        "messages",
        &[
            "id",
            "churchId",
            "conversationId",
            "personId",
            "displayName",
            "timeSent",
            "timeUpdated",
            "messageType",
            "content",
        ],
        &["idx_messages_conversation_time", "idx_messages_person"],
    ),
    (
        "messageReactions",
        &[
            "id",
            "churchId",
            "messageId",
            "conversationId",
            "personId",
            "emoji",
            "timeAdded",
        ],
        &[
            "uq_message_reactions_message_person_emoji",
            "idx_message_reactions_message",
        ],
    ),
    (
        "privateMessages",
        &[
            "id",
            "churchId",
            "fromPersonId",
            "toPersonId",
            "conversationId",
            "notifyPersonId",
        ],
        &[
            "uq_private_messages_conversation",
            "idx_private_messages_from",
            "idx_private_messages_to",
            "idx_private_messages_notify",
        ],
    ),
    (
        "notifications",
        &[
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
            "category",
        ],
        &[
            "idx_notifications_person_time",
            "idx_notifications_person_new",
            "idx_notifications_content",
        ],
    ),
    (
        "blockedIps",
        &["id", "churchId", "conversationId", "serviceId", "ipAddress"],
        &["uq_blocked_ips_room_ip", "idx_blocked_ips_service"],
    ),
    (
        "nodes",
        &["id", "grpcAddress", "startedAt", "leaseUntil"],
        &["idx_nodes_lease"],
    ),
];

fn random_hex() -> String {
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    hasher.write_u128(nanos);
    hasher.write_u32(std::process::id());
    format!("{:016x}", hasher.finish())
}

/// Replaces the database (path) part of a connection URL.
fn with_database(url: &str, database: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, Some(query)),
        None => (url, None),
    };
    let authority_start = base.find("://").map_or(0, |i| i + 3);
    let path_start = base[authority_start..]
        .find('/')
        .map_or(base.len(), |i| authority_start + i);
    let mut out = format!("{}/{database}", &base[..path_start]);
    if let Some(query) = query {
        out.push('?');
        out.push_str(query);
    }
    out
}

async fn assert_schema(manager: &SchemaManager<'_>, present: bool) {
    for (table, columns, indexes) in SCHEMA {
        let has_table = manager.has_table(table).await.expect("has_table");
        assert_eq!(has_table, present, "table {table} present");
        if !present {
            continue;
        }
        for column in *columns {
            let has = manager.has_column(table, column).await.expect("has_column");
            assert!(has, "column {table}.{column} missing");
        }
        for index in *indexes {
            let has = manager.has_index(table, index).await.expect("has_index");
            assert!(has, "index {index} on {table} missing");
        }
    }
    // PostgreSQL writes posts through a function of its own (m20261130_000004), MySQL and
    // MariaDB through a procedure (m20261130_000005).
    let db = manager.get_connection();
    let backend = db.get_database_backend();
    let sql = match backend {
        DbBackend::Postgres => {
            "SELECT count(*) AS n FROM pg_proc WHERE proname = 'messaging_append_messages'"
        }
        DbBackend::MySql => {
            "SELECT count(*) AS n FROM information_schema.ROUTINES WHERE ROUTINE_SCHEMA = \
             DATABASE() AND ROUTINE_TYPE = 'PROCEDURE' AND ROUTINE_NAME = 'messaging_append_messages'"
        }
        _ => return,
    };
    let n: i64 = db
        .query_one_raw(Statement::from_string(backend, sql))
        .await
        .expect("routines")
        .expect("a row")
        .try_get("", "n")
        .expect("n");
    assert_eq!(n, i64::from(present), "messaging_append_messages present");
}

async fn add_reaction(db: &DatabaseConnection, id: &str, emoji: &str) -> Result<(), DbErr> {
    let insert = Query::insert()
        .into_table("messageReactions")
        .columns([
            "id",
            "churchId",
            "messageId",
            "conversationId",
            "personId",
            "emoji",
            "timeAdded",
        ])
        .values_panic([
            id.into(),
            "church".into(),
            "message".into(),
            "conversation".into(),
            "person".into(),
            emoji.into(),
            1_764_201_600_000_i64.into(),
        ])
        .to_owned();
    db.execute(&insert).await.map(|_| ())
}

/// Checks defaults, case-sensitive ids, 4-byte characters and a unique index.
async fn check_data(db: &DatabaseConnection) {
    let insert = Query::insert()
        .into_table("conversations")
        .columns(["id", "churchId", "dateCreated"])
        .values_panic(["c1".into(), "church".into(), 1_764_201_600_000_i64.into()])
        .to_owned();
    db.execute(&insert).await.expect("insert conversation");
    let select = Query::select()
        .columns(["postCount", "allowAnonymousPosts", "dateCreated"])
        .from("conversations")
        .and_where(Expr::col("id").eq("c1"))
        .to_owned();
    let row = db
        .query_one(&select)
        .await
        .expect("select conversation")
        .expect("conversation row");
    assert_eq!(row.try_get::<i32>("", "postCount").unwrap(), 0);
    assert!(!row.try_get::<bool>("", "allowAnonymousPosts").unwrap());
    assert_eq!(
        row.try_get::<i64>("", "dateCreated").unwrap(),
        1_764_201_600_000
    );

    // Ids differing only in case are distinct; so are emoji differing only in
    // a skin-tone modifier (a Unicode collation could fold those together).
    add_reaction(db, "r1", "👍").await.expect("reaction r1");
    add_reaction(db, "R1", "👍🏽").await.expect("reaction R1");
    add_reaction(db, "r2", "👍")
        .await
        .expect_err("duplicate (messageId, personId, emoji) must be rejected");

    let select = Query::select()
        .columns(["id", "emoji"])
        .from("messageReactions")
        .and_where(Expr::col("id").eq("R1"))
        .to_owned();
    let rows = db.query_all(&select).await.expect("select reactions");
    assert_eq!(rows.len(), 1, "id lookup must be case-sensitive");
    assert_eq!(rows[0].try_get::<String>("", "id").unwrap(), "R1");
    assert_eq!(rows[0].try_get::<String>("", "emoji").unwrap(), "👍🏽");
}

async fn exercise(url: String) {
    let db = Database::connect(&url)
        .await
        .unwrap_or_else(|e| panic!("connect to {url}: {e}"));
    // Rows from before `anonymousNumber` existed get their number when it is added.
    Migrator::up(&db, Some(2))
        .await
        .expect("first two migrations");
    let names = [
        ("a1", Some("Anonymous_3")),
        ("a2", Some("Anonymous_12")),
        ("a3", Some("Anonymous_x")),
        ("a4", Some("anonymous_5")),
        ("a5", Some("lg")),
        ("a6", None),
    ];
    for (id, name) in names {
        let insert = Query::insert()
            .into_table("connections")
            .columns([
                "id",
                "churchId",
                "conversationId",
                "displayName",
                "timeJoined",
                "socketId",
                "nodeId",
            ])
            .values_panic([
                id.into(),
                "church".into(),
                "room".into(),
                name.into(),
                1_764_201_600_000_i64.into(),
                id.into(),
                "node".into(),
            ])
            .to_owned();
        db.execute(&insert).await.expect("insert connection");
    }
    Migrator::up(&db, None).await.expect("first up");
    let select = Query::select()
        .columns(["id", "anonymousNumber"])
        .from("connections")
        .order_by("id", Order::Asc)
        .to_owned();
    let numbers: Vec<(String, Option<i64>)> = db
        .query_all(&select)
        .await
        .expect("select connections")
        .iter()
        .map(|r| {
            (
                r.try_get("", "id").unwrap(),
                r.try_get("", "anonymousNumber").unwrap(),
            )
        })
        .collect();
    let expected = [
        ("a1", Some(3)),
        ("a2", Some(12)),
        ("a3", None),
        ("a4", None),
        ("a5", None),
        ("a6", None),
    ];
    let expected: Vec<(String, Option<i64>)> = expected
        .iter()
        .map(|&(id, n)| (String::from(id), n))
        .collect();
    assert_eq!(numbers, expected);
    Migrator::up(&db, None).await.expect("second up (no-op)");
    {
        let manager = SchemaManager::new(&db);
        // The statements themselves are idempotent too (IF NOT EXISTS).
        for migration in Migrator::migrations() {
            migration.up(&manager).await.expect("re-run statements");
        }
        assert_schema(&manager, true).await;
        check_data(&db).await;

        Migrator::down(&db, None).await.expect("down");
        assert_schema(&manager, false).await;

        Migrator::up(&db, None).await.expect("up after down");
        assert_schema(&manager, true).await;
        check_data(&db).await;
    }
    db.close().await.expect("close");
}

/// Runs `exercise` on its own task so that cleanup happens even if it panics.
async fn run_then(url: String, cleanup: impl AsyncFnOnce()) {
    let result = tokio::spawn(exercise(url)).await;
    cleanup().await;
    if let Err(err) = result {
        std::panic::resume_unwind(err.into_panic());
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn sqlite() {
    let dir = std::env::temp_dir().join(format!("mig_{}", random_hex()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let url = format!("sqlite://{}?mode=rwc", dir.join("test.db").display());
    run_then(url, async || {
        let _ = std::fs::remove_dir_all(&dir);
    })
    .await;
}

async fn on_server(env: &str) {
    // Compiled as ignored when the variable was unset at build time (see build.rs); run
    // anyway with `--include-ignored`, it fails rather than pass without testing anything.
    let admin_url = std::env::var(env).unwrap_or_else(|_| panic!("{env} is not set"));
    let admin = Database::connect(&admin_url)
        .await
        .unwrap_or_else(|e| panic!("connect to {admin_url}: {e}"));
    let name = format!("mig_{}", random_hex());
    admin
        .execute_unprepared(&format!("CREATE DATABASE {name}"))
        .await
        .expect("create database");
    let drop = match admin.get_database_backend() {
        // Also ends connections a panicking test may have left open.
        DbBackend::Postgres => format!("DROP DATABASE {name} WITH (FORCE)"),
        _ => format!("DROP DATABASE {name}"),
    };
    run_then(with_database(&admin_url, &name), async || {
        admin
            .execute_unprepared(&drop)
            .await
            .expect("drop database");
        admin.close_by_ref().await.expect("close admin connection");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
#[cfg_attr(not(with_postgres), ignore = "DATABASE_URL_POSTGRES is not set")]
async fn postgres() {
    on_server("DATABASE_URL_POSTGRES").await;
}

#[tokio::test(flavor = "multi_thread")]
#[cfg_attr(not(with_mysql), ignore = "DATABASE_URL_MYSQL is not set")]
async fn mysql() {
    on_server("DATABASE_URL_MYSQL").await;
}

#[test]
fn replaces_database_in_url() {
    assert_eq!(
        with_database("postgres://postgres@127.0.0.1:5432/postgres", "x"),
        "postgres://postgres@127.0.0.1:5432/x"
    );
    assert_eq!(
        with_database("mysql://root@127.0.0.1:3306/test?ssl-mode=disabled", "x"),
        "mysql://root@127.0.0.1:3306/x?ssl-mode=disabled"
    );
    assert_eq!(
        with_database("mysql://root@host", "x"),
        "mysql://root@host/x"
    );
}
