//! A database that restarts or fails over under a running node (§9; issue 27, item 8): the
//! requests that find their connections killed (PostgreSQL 57P01; MariaDB 10.11 closes the
//! socket) answer `503 {"error":"Database unavailable"}` with `Retry-After`, never 500,
//! and gRPC `UNAVAILABLE`; the node recovers by itself once the server is back, and nothing
//! is half-written. Unlike `outage.rs`, which cuts a proxy, these tests stop and start a real
//! server, or kill its sessions: a PostgreSQL and a MariaDB of the test's own
//! (`own_server.rs`), never the shared ones.
use std::time::Duration;

use messaging::pb;
use sea_orm::{
    ConnectionTrait, Database, DatabaseConnection, DbBackend, Statement, TransactionTrait,
};
use serde_json::{Value, json};

use crate::helpers::*;
use crate::own_server::{Kind, OwnServer};
use crate::server_test;

/// How long the node may take to find its database again once the server is back: a request
/// that meets a refused connect waits up to the 5 s checkout timeout.
const RECOVERY: Duration = Duration::from_secs(30);

/// A post of one message: status, `Retry-After` (seconds) and body.
async fn post(app: &TestApp, room: &str, content: &str) -> (u16, Option<u32>, Value) {
    let resp = post_request(app, room, content)
        .send()
        .await
        .expect("http request");
    answer(resp).await
}

/// The conversation's messages (`/messages/catchup`): status, `Retry-After` and body.
async fn catchup(app: &TestApp, room: &str) -> (u16, Option<u32>, Value) {
    let resp = app
        .client
        .get(app.url(&format!("/messaging/messages/catchup/C1/{room}")))
        .send()
        .await
        .expect("http request");
    answer(resp).await
}

fn post_request(app: &TestApp, room: &str, content: &str) -> reqwest::RequestBuilder {
    app.client
        .post(app.url("/messaging/messages/send"))
        .json(&json!([{"conversationId": room, "content": content}]))
}

async fn answer(resp: reqwest::Response) -> (u16, Option<u32>, Value) {
    let status = resp.status().as_u16();
    let retry = resp
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u32>().ok());
    let body = resp.json().await.unwrap_or(Value::Null);
    (status, retry, body)
}

/// The contract's 503 (§9): `Retry-After` and the exact body.
#[track_caller]
fn assert_unavailable(what: &str, (status, retry, body): &(u16, Option<u32>, Value)) {
    assert_eq!(*status, 503, "{what}: {body}");
    assert!(
        retry.is_some_and(|s| s > 0),
        "{what}: Retry-After {retry:?}"
    );
    assert_eq!(*body, json!({"error": "Database unavailable"}), "{what}");
}

/// Posts `content 1`, `content 2`, … until one is stored (within `RECOVERY`); every post
/// before it must be the contract's 503. Returns the content stored.
async fn post_until_stored(app: &TestApp, room: &str, content: &str) -> String {
    let deadline = tokio::time::Instant::now() + RECOVERY;
    let mut i = 0;
    loop {
        i += 1;
        let content = format!("{content} {i}");
        let answer = post(app, room, &content).await;
        if answer.0 == 200 {
            return content;
        }
        assert_unavailable(&format!("post {content:?} while recovering"), &answer);
        assert!(
            tokio::time::Instant::now() < deadline,
            "no post stored within {RECOVERY:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// What the conversation holds: its messages' contents in order (through the API) and its
/// post count (the stats the same transaction updates). A read may still meet a pooled
/// connection that was killed (each such connection fails one request, and only writes are
/// tried again): it is the contract's 503, and the read is repeated.
async fn stored(app: &TestApp, room: &str) -> (Vec<String>, i32) {
    let deadline = tokio::time::Instant::now() + RECOVERY;
    let messages = loop {
        let answer = catchup(app, room).await;
        if answer.0 == 200 {
            break answer.2;
        }
        assert_unavailable("a read while recovering", &answer);
        assert!(
            tokio::time::Instant::now() < deadline,
            "no read within {RECOVERY:?}"
        );
    };
    let contents = messages
        .as_array()
        .map(|m| {
            m.iter()
                .filter_map(|m| m["content"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    let conv = loop {
        match app.store.conversation(room).await {
            Ok(conv) => break conv.expect("the conversation"),
            Err(e) if messaging::store::is_unavailable(&e) => {
                assert!(tokio::time::Instant::now() < deadline, "{e}");
            }
            Err(e) => panic!("read the conversation: {e}"),
        }
    };
    (contents, conv.post_count)
}

/// A node on `server`'s database with a room, a socket in it, and one message posted.
async fn node_with_a_message(server: &OwnServer, first: &str) -> (TestApp, String, Ws) {
    let app = TestApp::spawn_with(messaging::Settings::for_tests(&server.url(), SECRET)).await;
    let room = app.conversation("C1", "streamingLive", true).await;
    let ws = app.ws_with_id().await;
    app.join_one(&room, &ws.id, "Viewer").await;
    assert_eq!(post(&app, &room, first).await.0, 200);
    (app, room, ws)
}

server_test!(
    a_restarted_database_gives_503_then_recovers,
    [own_postgres, own_mariadb]
);
/// The server is stopped the way an operator does it (PostgreSQL's fast shutdown, MariaDB's
/// `shutdown`) under a running node, then started again on the same data and port.
async fn a_restarted_database_gives_503_then_recovers(mut server: OwnServer) {
    let (app, room, mut ws) = node_with_a_message(&server, "before").await;
    assert_eq!(ws.next_action("message").await["data"]["content"], "before");

    // A post whose write is in flight when the server stops: it waits for a lock on the
    // conversation that a session of the test holds (as another node's write would). The
    // shutdown ends both sessions; which goes first is the server's race: the post is
    // stored whole (the holder's end released the lock and the write committed before its
    // own session ended) or not at all (503), and the stored rows say which.
    let (be, waiting) = match server.kind {
        Kind::Postgres => (
            DbBackend::Postgres,
            format!(
                "SELECT count(*)::bigint FROM pg_stat_activity \
                 WHERE datname = '{}' AND wait_event_type = 'Lock'",
                server.db_name()
            ),
        ),
        Kind::Mariadb => (
            DbBackend::MySql,
            format!(
                "SELECT count(*) FROM information_schema.INNODB_TRX t \
                 JOIN information_schema.PROCESSLIST p ON p.ID = t.trx_mysql_thread_id \
                 WHERE t.trx_state = 'LOCK WAIT' AND p.DB = '{}'",
                server.db_name()
            ),
        ),
    };
    let holder = Database::connect(server.url())
        .await
        .expect("another connection");
    let held = holder.begin().await.expect("begin");
    held.execute_unprepared(&format!(
        "SELECT 1 FROM conversations WHERE id = '{room}' FOR UPDATE"
    ))
    .await
    .expect("lock the conversation");
    let in_flight = tokio::spawn(post_request(&app, &room, "in flight").send());
    let admin = Database::connect(server.admin_url())
        .await
        .expect("admin connection");
    eventually("the post's write waits for the lock", || {
        let (admin, waiting) = (&admin, waiting.clone());
        async move {
            let row = admin
                .query_one_raw(Statement::from_string(be, waiting))
                .await
                .expect("lock waits");
            row.and_then(|r| r.try_get_by_index::<i64>(0).ok()) == Some(1)
        }
    })
    .await;

    server.stop().await;
    let in_flight = answer(in_flight.await.expect("join").expect("http request")).await;
    let mut expected = vec!["before".to_string()];
    if in_flight.0 == 200 {
        expected.push("in flight".into());
    } else {
        assert_unavailable("the post in flight at the stop", &in_flight);
    }
    drop((held, holder, admin));
    // The first post finds its pooled connection killed by the shutdown (57P01 on
    // PostgreSQL, which answered 500 before); the next ones cannot connect.
    for content in ["during", "during again"] {
        let answer = post(&app, &room, content).await;
        assert_unavailable(
            &format!("post {content:?} with the server stopped"),
            &answer,
        );
    }
    assert_unavailable(
        "a read with the server stopped",
        &catchup(&app, &room).await,
    );
    let err = app
        .connection()
        .await
        .list_room(pb::RoomRequest {
            church_id: "C1".into(),
            room_id: room.clone(),
        })
        .await
        .expect_err("the server is stopped");
    assert_eq!(err.code(), tonic::Code::Unavailable, "{err:?}");

    server.resume().await;
    let after = post_until_stored(&app, &room, "after").await;
    // No frame of a failed post went out: the next messages the socket gets are the stored
    // ones.
    if in_flight.0 == 200 {
        assert_eq!(
            ws.next_action("message").await["data"]["content"],
            "in flight"
        );
    }
    assert_eq!(ws.next_action("message").await["data"]["content"], after);
    expected.push(after);
    let count = expected.len() as i32;
    assert_eq!(stored(&app, &room).await, (expected, count));
    assert_eq!(app.get("/ready", None).await.0, 200);
}

/// Ends sessions of the node's database from `admin` (a connection to another database of
/// the same server), the way an operator or a failover does, and waits until they are gone.
/// PostgreSQL: `pg_terminate_backend` of the sessions `filter` (SQL on `pg_stat_activity`)
/// selects; MariaDB: `KILL` of every session. Returns how many were ended.
async fn end_sessions(server: &OwnServer, admin: &DatabaseConnection, filter: &str) -> usize {
    let db = server.db_name();
    let (backend, list) = match server.kind {
        Kind::Postgres => (
            DbBackend::Postgres,
            format!(
                "SELECT pid::bigint FROM pg_stat_activity WHERE datname = '{db}' \
                 AND pid <> pg_backend_pid() {filter}"
            ),
        ),
        Kind::Mariadb => (
            DbBackend::MySql,
            format!(
                "SELECT CAST(ID AS SIGNED) FROM information_schema.PROCESSLIST \
                 WHERE DB = '{db}' AND ID <> CONNECTION_ID()"
            ),
        ),
    };
    let ids = |sql: String| async move {
        admin
            .query_all_raw(Statement::from_string(backend, sql))
            .await
            .expect("list sessions")
            .iter()
            .map(|row| row.try_get_by_index::<i64>(0).expect("session id"))
            .collect::<Vec<i64>>()
    };
    let ended = ids(list).await;
    for id in &ended {
        let sql = match server.kind {
            Kind::Postgres => format!("SELECT pg_terminate_backend({id})"),
            Kind::Mariadb => format!("KILL {id}"),
        };
        admin.execute_unprepared(&sql).await.expect("end a session");
    }
    let listed = ended
        .iter()
        .map(i64::to_string)
        .collect::<Vec<_>>()
        .join(",");
    let left = match server.kind {
        Kind::Postgres if !ended.is_empty() => {
            format!("SELECT pid::bigint FROM pg_stat_activity WHERE pid IN ({listed})")
        }
        Kind::Mariadb if !ended.is_empty() => format!(
            "SELECT CAST(ID AS SIGNED) FROM information_schema.PROCESSLIST WHERE ID IN ({listed})"
        ),
        _ => return 0,
    };
    eventually("the ended sessions to be gone", || {
        let left = left.clone();
        async move { ids(left).await.is_empty() }
    })
    .await;
    ended.len()
}

server_test!(
    a_killed_session_gives_503_or_is_retried,
    [own_postgres, own_mariadb]
);
/// The server stays up and ends the node's sessions under it (an administrator, a failover
/// proxy): a request answers 503 or succeeds on a fresh connection, never 500.
async fn a_killed_session_gives_503_or_is_retried(server: OwnServer) {
    let (app, room, _ws) = node_with_a_message(&server, "first").await;
    let admin = Database::connect(server.admin_url())
        .await
        .expect("admin connection");
    let mut expected = vec!["first".to_string()];

    if server.kind == Kind::Postgres {
        // The one connection the node keeps for posts, known by its last statement: its
        // next use gets 57P01, and the write runs once more on a fresh connection.
        let ended = end_sessions(
            &server,
            &admin,
            r#"AND query LIKE 'SELECT "messaging_append_messages"%'"#,
        )
        .await;
        assert_eq!(ended, 1, "the post connection");
        let answer = post(&app, &room, "second").await;
        assert_eq!(
            answer.0, 200,
            "a post after its connection was killed: {answer:?}"
        );
        expected.push("second".into());
    }

    // Every session of the node: a read on a pooled connection that was killed answers 503
    // (only writes are tried again), or the post succeeds.
    assert!(end_sessions(&server, &admin, "").await > 0);
    let answer = post(&app, &room, "third").await;
    if answer.0 == 200 {
        expected.push("third".into());
    } else {
        assert_unavailable("a post after every session was killed", &answer);
    }
    expected.push(post_until_stored(&app, &room, "fourth").await);
    let count = expected.len() as i32;
    assert_eq!(stored(&app, &room).await, (expected, count));
}
