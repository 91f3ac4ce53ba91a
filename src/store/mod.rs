//! Persistence through sea-orm: SQLite by default, PostgreSQL and MySQL/MariaDB by URL.
//! Timestamps are stored as epoch milliseconds (exact, and identical on every backend).
pub mod chat;
pub mod entities;

use std::collections::BTreeSet;
use std::future::Future;
use std::time::Duration;

use migrations::sea_orm_migration::MigratorTrait;
use sea_orm::sea_query::OnConflict;
use sea_orm::{
    ActiveValue::Set, ColumnTrait, ConnectOptions, ConnectionTrait, Database, DatabaseConnection,
    DatabaseTransaction, DbBackend, DbErr, EntityTrait, QueryFilter, QueryOrder, QuerySelect,
    SqliteTransactionMode, TransactionOptions, TransactionTrait,
};

use entities::{blocked_ips, connections, conversations, nodes, private_messages};

#[derive(Clone)]
pub struct Store {
    pub db: DatabaseConnection,
    /// SQLite (a file): the one connection the batched writes (`sqlite_batch`: message
    /// group commits, joins) run on, outside the pool. See `SqliteWriter`.
    sqlite_writer: Option<std::sync::Arc<SqliteWriter>>,
    /// PostgreSQL/MariaDB: a pool of one connection for the message group commits
    /// (`append_messages`). Their writer runs one write at a time, and the main pool hands
    /// out its idle connections in turn, so each post would otherwise go to a server
    /// process that had slept through the last dozen; one connection stays warm, and posts
    /// never queue behind other requests for a checkout.
    post_db: Option<DatabaseConnection>,
}

/// A connection of its own for SQLite's hot writes. SQLite has one writer anyway, and:
/// - a connection drops its whole page cache whenever another connection has written, so
///   rotating the writes over the pool made each start cold, re-reading every B-tree page
///   it touched;
/// - sqlx pings a pooled connection each time it goes back to the pool, a second round
///   trip to its worker thread per write, which the next write then waited for.
struct SqliteWriter {
    opts: sea_orm::sqlx::sqlite::SqliteConnectOptions,
    /// Taken out for each use and put back after it completed: a use that is cancelled
    /// midway drops (closes) the connection, and the next one opens a fresh one, so no
    /// half-finished transaction carries over.
    conn: tokio::sync::Mutex<Option<sea_orm::sqlx::SqliteConnection>>,
}

/// SQLite connection settings, for the pool and the writer connection alike. WAL lets
/// readers run beside the one writer; write transactions start IMMEDIATE (see
/// `begin_write`) so they queue on busy_timeout instead of failing.
fn sqlite_tuning(
    o: sea_orm::sqlx::sqlite::SqliteConnectOptions,
) -> sea_orm::sqlx::sqlite::SqliteConnectOptions {
    use sea_orm::sqlx::sqlite::{SqliteJournalMode, SqliteSynchronous};
    o.journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Normal)
        .busy_timeout(Duration::from_secs(10))
}

/// Runs a `BEGIN …; COMMIT;` batch. If a statement fails, the rest did not run: it rolls
/// back on the same connection. Returns the outcome and whether the connection is clean
/// (no transaction left open) for another use.
async fn run_batch(
    conn: &mut sea_orm::sqlx::SqliteConnection,
    sql: String,
    values: Vec<sea_orm::Value>,
) -> (Result<Vec<sea_orm::sqlx::sqlite::SqliteRow>, DbErr>, bool) {
    let batch = sea_orm::sqlx::query_with(
        sea_orm::sqlx::AssertSqlSafe(sql),
        sea_query_sqlx::SqlxValues(sea_orm::sea_query::Values(values)),
    );
    match batch.fetch_all(&mut *conn).await {
        Ok(rows) => (Ok(rows), true),
        Err(e) => {
            let clean = sea_orm::sqlx::query("ROLLBACK")
                .execute(&mut *conn)
                .await
                .is_ok();
            let err = DbErr::Exec(sea_orm::RuntimeErr::SqlxError(e.into()));
            (Err(err), clean)
        }
    }
}

/// The PostgreSQL advisory lock key that serializes migrations across nodes: any constant
/// every node agrees on ("msgmigr" in ASCII).
const PG_MIGRATION_LOCK: i64 = 0x006d_7367_6d69_6772;
/// The MariaDB/MySQL named lock that does the same.
const MYSQL_MIGRATION_LOCK: &str = "messaging_migrate";
/// How long one GET_LOCK waits before it is asked again (and a log line says so).
const MYSQL_LOCK_WAIT_SECS: i64 = 60;

fn conn_err(e: sea_orm::sqlx::Error) -> DbErr {
    DbErr::Conn(sea_orm::RuntimeErr::SqlxError(e.into()))
}

fn exec_err(e: sea_orm::sqlx::Error) -> DbErr {
    DbErr::Exec(sea_orm::RuntimeErr::SqlxError(e.into()))
}

/// A row to upsert into `connections`.
#[derive(Debug, Clone)]
pub struct NewRow {
    pub church_id: String,
    pub room: String,
    pub socket_id: String,
    pub person_id: Option<String>,
    pub display_name: String,
    pub ip_address: Option<String>,
}

impl Store {
    pub async fn connect(url: &str) -> anyhow::Result<Self> {
        let sqlite_writer = if url.starts_with("sqlite:")
            && !url.contains(":memory:")
            && !url.contains("mode=memory")
        {
            Some(Self::sqlite_writer(url).await?)
        } else {
            None
        };
        let mut opts = ConnectOptions::new(url.to_string());
        // A database that refuses connections must turn into `503 Database unavailable`
        // within seconds, not after a 30 s wait per request; 5 s is still far above any
        // checkout wait under load.
        opts.sqlx_logging(false)
            .connect_timeout(Duration::from_secs(5))
            .acquire_timeout(Duration::from_secs(5));
        if url.starts_with("sqlite:") {
            // A local file cannot go stale: no ping before each checkout (sqlx's default,
            // one more round trip to the worker thread per query).
            opts.max_connections(4)
                .min_connections(1)
                .test_before_acquire(false)
                .map_sqlx_sqlite_opts(sqlite_tuning);
        } else {
            // Ping only connections idle long enough to have been dropped by the server or
            // a proxy, not every checkout. 15 here and one for posts (`post_db`): 16 per node.
            opts.max_connections(15)
                .min_connections(1)
                .test_before_acquire_if_idle_for(Duration::from_secs(30));
        }
        let post_db = if url.starts_with("sqlite:") {
            None
        } else {
            let mut one = opts.clone();
            one.max_connections(1).min_connections(1);
            Some(Database::connect(one).await?)
        };
        let db = Database::connect(opts).await?;
        Ok(Self {
            db,
            sqlite_writer,
            post_db,
        })
    }

    async fn sqlite_writer(url: &str) -> anyhow::Result<std::sync::Arc<SqliteWriter>> {
        use sea_orm::sqlx::Connection;
        let opts = sqlite_tuning(url.parse()?);
        // Turning a fresh file to WAL takes an exclusive lock that busy_timeout does not
        // wait for: processes opening one new file together get SQLITE_BUSY at once. The
        // switch is quick and happens once per file, so a short retry settles it.
        let mut attempt = 0;
        let conn = loop {
            match sea_orm::sqlx::SqliteConnection::connect_with(&opts).await {
                Err(sea_orm::sqlx::Error::Database(e))
                    if attempt < 50 && e.code().as_deref() == Some("5") =>
                {
                    attempt += 1;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                r => break r?,
            }
        };
        Ok(std::sync::Arc::new(SqliteWriter {
            opts,
            conn: tokio::sync::Mutex::new(Some(conn)),
        }))
    }

    /// Runs pending migrations. Processes started together on one fresh database take
    /// turns under a database lock: without it, each saw the same pending migrations and
    /// all but one died on a duplicate key (`seaql_migrations`).
    pub async fn migrate(&self) -> Result<(), DbErr> {
        match self.db.get_database_backend() {
            DbBackend::Postgres => self.migrate_locked_postgres().await,
            DbBackend::MySql => self.migrate_locked_mysql().await,
            _ => self.migrate_locked_sqlite().await,
        }
    }

    /// SQLite has no named locks, but its write lock does the job: the whole run is one
    /// IMMEDIATE transaction (SQLite's DDL is transactional), so a second process waits on
    /// busy_timeout and then finds nothing pending. The migrator must run on that same
    /// transaction: any other connection would wait for the lock this one holds.
    async fn migrate_locked_sqlite(&self) -> Result<(), DbErr> {
        let txn = self.begin_write().await?;
        migrations::Migrator::up(&txn, None).await?;
        txn.commit().await
    }

    /// The lock is held by a connection of its own, outside the pool, for the whole run:
    /// PostgreSQL's advisory locks belong to a session, so taking one through the pool
    /// could unlock on another connection, or leave it held by a pooled one. If the process
    /// dies midway, its session ends and the server releases the lock.
    async fn migrate_locked_postgres(&self) -> Result<(), DbErr> {
        use sea_orm::sqlx::Connection;
        let opts = self.db.get_postgres_connection_pool().connect_options();
        let mut lock = sea_orm::sqlx::PgConnection::connect_with(&opts)
            .await
            .map_err(conn_err)?;
        sea_orm::sqlx::query("SELECT pg_advisory_lock($1)")
            .bind(PG_MIGRATION_LOCK)
            .execute(&mut lock)
            .await
            .map_err(exec_err)?;
        let result = migrations::Migrator::up(&self.db, None).await;
        // Closing the session would release it as well; unlocking first does not depend on
        // the close reaching the server.
        let _ = sea_orm::sqlx::query("SELECT pg_advisory_unlock($1)")
            .bind(PG_MIGRATION_LOCK)
            .execute(&mut lock)
            .await;
        let _ = lock.close().await;
        result
    }

    /// As for PostgreSQL, with MariaDB/MySQL's named lock, also held by its session.
    async fn migrate_locked_mysql(&self) -> Result<(), DbErr> {
        use sea_orm::sqlx::Connection;
        let opts = self.db.get_mysql_connection_pool().connect_options();
        let mut lock = sea_orm::sqlx::MySqlConnection::connect_with(&opts)
            .await
            .map_err(conn_err)?;
        loop {
            // 1: taken; 0: still held by another node after the wait; NULL: an error.
            let got: Option<i64> =
                sea_orm::sqlx::query_scalar("SELECT CAST(GET_LOCK(?, ?) AS SIGNED)")
                    .bind(MYSQL_MIGRATION_LOCK)
                    .bind(MYSQL_LOCK_WAIT_SECS)
                    .fetch_one(&mut lock)
                    .await
                    .map_err(exec_err)?;
            match got {
                Some(1) => break,
                Some(_) => tracing::info!("still waiting for another node's migrations"),
                None => {
                    return Err(DbErr::Custom(format!(
                        "GET_LOCK('{MYSQL_MIGRATION_LOCK}') failed"
                    )));
                }
            }
        }
        let result = migrations::Migrator::up(&self.db, None).await;
        let _ = sea_orm::sqlx::query("SELECT RELEASE_LOCK(?)")
            .bind(MYSQL_MIGRATION_LOCK)
            .execute(&mut lock)
            .await;
        let _ = lock.close().await;
        result
    }

    pub async fn ping(&self) -> Result<(), DbErr> {
        self.db.ping().await
    }

    pub fn is_sqlite(&self) -> bool {
        self.db.get_database_backend() == DbBackend::Sqlite
    }

    /// Begins a write transaction (IMMEDIATE on SQLite, so concurrent writers wait for the
    /// lock rather than deadlocking on an upgrade).
    pub async fn begin_write(&self) -> Result<DatabaseTransaction, DbErr> {
        let opts = TransactionOptions {
            sqlite_transaction_mode: self.is_sqlite().then_some(SqliteTransactionMode::Immediate),
            ..Default::default()
        };
        self.db.begin_with_options(opts).await
    }

    /// Runs a write unit, retrying it when the database reports a transient conflict
    /// (deadlock, serialization failure, lock wait timeout, SQLite busy), decided by the
    /// driver's error code. `f` must be idempotent up to its commit.
    pub async fn write<T, E, F, Fut>(&self, mut f: F) -> Result<T, E>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, E>>,
        E: DbFailure,
    {
        let mut attempt = 0;
        loop {
            match f().await {
                Err(e) if attempt < 5 && e.db_err().is_some_and(is_transient) => {
                    attempt += 1;
                    metrics::counter!("messaging_db_retries_total").increment(1);
                    tokio::time::sleep(Duration::from_millis(5 << attempt)).await;
                }
                r => return r,
            }
        }
    }

    // ---- conversations -------------------------------------------------------------

    pub async fn conversation(&self, id: &str) -> Result<Option<conversations::Model>, DbErr> {
        conversations::Entity::find_by_id(id.to_string())
            .one(&self.db)
            .await
    }

    pub async fn private_message_of(
        &self,
        conversation_id: &str,
    ) -> Result<Option<private_messages::Model>, DbErr> {
        private_messages::Entity::find()
            .filter(private_messages::Column::ConversationId.eq(conversation_id))
            .one(&self.db)
            .await
    }

    pub async fn insert_conversation(&self, c: conversations::Model) -> Result<(), DbErr> {
        let am: conversations::ActiveModel = c.into();
        conversations::Entity::insert(am)
            .exec_without_returning(&self.db)
            .await?;
        Ok(())
    }

    pub async fn blocked_ips(
        &self,
        church: &str,
        conversation: &str,
    ) -> Result<Vec<String>, DbErr> {
        let rows = blocked_ips::Entity::find()
            .filter(blocked_ips::Column::ChurchId.eq(church))
            .filter(blocked_ips::Column::ConversationId.eq(conversation))
            .order_by_asc(blocked_ips::Column::IpAddress)
            .all(&self.db)
            .await?;
        Ok(rows.into_iter().map(|r| r.ip_address).collect())
    }

    // ---- connections ---------------------------------------------------------------

    /// Upserts rows on `(churchId, conversationId, socketId)` inside `txn` and returns
    /// them as stored. An existing row keeps its `id` and `timeJoined`.
    pub async fn upsert_rows(
        txn: &DatabaseTransaction,
        node_id: &str,
        rows: &[NewRow],
        now: i64,
    ) -> Result<Vec<connections::Model>, DbErr> {
        let mut out = Vec::with_capacity(rows.len());
        for r in rows {
            let display_name = if r.display_name == "Anonymous " {
                // In u64: the largest BIGINT plus one must not overflow.
                let next = Self::max_anonymous(txn, &r.church_id, &r.room).await? as u64 + 1;
                format!("Anonymous_{next}")
            } else {
                r.display_name.clone()
            };
            let am = connections::ActiveModel {
                id: Set(crate::ids::new_id()),
                church_id: Set(r.church_id.clone()),
                conversation_id: Set(r.room.clone()),
                person_id: Set(r.person_id.clone()),
                anonymous_number: Set(anonymous_number(&display_name)),
                display_name: Set(Some(display_name)),
                time_joined: Set(now),
                socket_id: Set(r.socket_id.clone()),
                ip_address: Set(r.ip_address.clone()),
                node_id: Set(node_id.to_string()),
            };
            connections::Entity::insert(am)
                .on_conflict(
                    OnConflict::columns([
                        connections::Column::ChurchId,
                        connections::Column::ConversationId,
                        connections::Column::SocketId,
                    ])
                    .update_columns([
                        connections::Column::PersonId,
                        connections::Column::DisplayName,
                        connections::Column::AnonymousNumber,
                        connections::Column::IpAddress,
                        connections::Column::NodeId,
                    ])
                    .to_owned(),
                )
                .exec_without_returning(txn)
                .await?;
            let row = connections::Entity::find()
                .filter(connections::Column::ChurchId.eq(&r.church_id))
                .filter(connections::Column::ConversationId.eq(&r.room))
                .filter(connections::Column::SocketId.eq(&r.socket_id))
                .one(txn)
                .await?
                .ok_or_else(|| DbErr::RecordNotFound("upserted connection".into()))?;
            out.push(row);
        }
        Ok(out)
    }

    /// Upserts join rows as one write unit (retried on transient conflicts).
    pub async fn upsert_connections(
        &self,
        node_id: &str,
        rows: &[NewRow],
    ) -> Result<Vec<connections::Model>, DbErr> {
        self.write(|| async {
            let now = crate::time::now_ms();
            if self.is_sqlite() {
                return self.upsert_rows_sqlite(node_id, rows, now).await;
            }
            let txn = self.begin_write().await?;
            let stored = Store::upsert_rows(&txn, node_id, rows, now).await?;
            txn.commit().await?;
            Ok(stored)
        })
        .await
    }

    /// Writes rows back as they were (same ids, `timeJoined` and names) under `node_id`;
    /// a row whose `(churchId, conversationId, socketId)` exists already is left alone.
    /// The caller holds the sockets' membership locks, so nothing else writes these keys.
    pub async fn restore_rows(
        &self,
        node_id: &str,
        rows: &[connections::Model],
    ) -> Result<(), DbErr> {
        if rows.is_empty() {
            return Ok(());
        }
        self.write(|| async {
            let txn = self.begin_write().await?;
            for r in rows {
                let exists = connections::Entity::find()
                    .filter(connections::Column::ChurchId.eq(&r.church_id))
                    .filter(connections::Column::ConversationId.eq(&r.conversation_id))
                    .filter(connections::Column::SocketId.eq(&r.socket_id))
                    .one(&txn)
                    .await?
                    .is_some();
                if !exists {
                    let mut am: connections::ActiveModel = r.clone().into();
                    am.node_id = Set(node_id.to_string());
                    connections::Entity::insert(am)
                        .exec_without_returning(&txn)
                        .await?;
                }
            }
            txn.commit().await
        })
        .await
    }

    /// SQLite: runs `sql`, a `BEGIN IMMEDIATE; …; COMMIT;` batch, as one round trip to a
    /// pinned connection's worker thread and returns the rows of its statements (RETURNING)
    /// in order. Sent as separate statements, each one was a round trip, and under load
    /// each round trip waited for a core while the write lock was held.
    pub(crate) async fn sqlite_batch(
        &self,
        sql: String,
        values: Vec<sea_orm::Value>,
    ) -> Result<Vec<sea_orm::sqlx::sqlite::SqliteRow>, DbErr> {
        use sea_orm::sqlx::{self, Connection};
        let conn_err = |e: sqlx::Error| DbErr::Conn(sea_orm::RuntimeErr::SqlxError(e.into()));
        let Some(writer) = &self.sqlite_writer else {
            // In-memory databases: a second connection would be a second database.
            let mut conn = self
                .db
                .get_sqlite_connection_pool()
                .acquire()
                .await
                .map_err(conn_err)?;
            let (result, clean) = run_batch(&mut conn, sql, values).await;
            if !clean {
                // It leaves the pool rather than carry an open transaction.
                drop(conn.detach());
            }
            return result;
        };
        let mut slot = writer.conn.lock().await;
        let mut conn = match slot.take() {
            Some(c) => c,
            None => sqlx::SqliteConnection::connect_with(&writer.opts)
                .await
                .map_err(conn_err)?,
        };
        let (result, clean) = run_batch(&mut conn, sql, values).await;
        if clean {
            *slot = Some(conn);
        }
        result
    }

    /// SQLite: `upsert_rows` in its own transaction as one batch: one
    /// `INSERT … ON CONFLICT DO UPDATE … RETURNING` per row. An `"Anonymous "` row is
    /// numbered by a subquery of the same statement, so it sees the rows of the
    /// statements before it exactly as the general path does.
    pub async fn upsert_rows_sqlite(
        &self,
        node_id: &str,
        rows: &[NewRow],
        now: i64,
    ) -> Result<Vec<connections::Model>, DbErr> {
        use sea_orm::{FromQueryResult, Value};
        if rows.is_empty() {
            return Ok(Vec::new());
        }
        const COLS: &str = r#""id", "churchId", "conversationId", "personId", "displayName", "anonymousNumber", "timeJoined", "socketId", "ipAddress", "nodeId""#;
        const UPSERT: &str = r#"ON CONFLICT ("churchId", "conversationId", "socketId") DO UPDATE SET "personId" = excluded."personId", "displayName" = excluded."displayName", "anonymousNumber" = excluded."anonymousNumber", "ipAddress" = excluded."ipAddress", "nodeId" = excluded."nodeId""#;
        // The largest BIGINT has no successor in SQLite's integers: that name is spelled
        // out and left unnumbered, as `anonymous_number` does. MAX stays a scalar
        // subquery on its own: as the aggregate of a FROM subquery SQLite scanned the
        // whole room (1.8 ms per join at 20 000 rows) instead of seeking the index's end.
        const NUMBERED: &str = r#"SELECT ?, ?, ?, ?, CASE WHEN m = 9223372036854775807 THEN 'Anonymous_9223372036854775808' ELSE 'Anonymous_' || (m + 1) END, CASE WHEN m = 9223372036854775807 THEN NULL ELSE m + 1 END, ?, ?, ?, ? FROM (SELECT COALESCE((SELECT MAX("anonymousNumber") FROM "connections" WHERE "churchId" = ? AND "conversationId" = ?), 0) AS m) WHERE true"#;
        let mut sql = String::from("BEGIN IMMEDIATE;");
        let mut values: Vec<Value> = Vec::new();
        for r in rows {
            let head = [
                Value::from(crate::ids::new_id()),
                r.church_id.clone().into(),
                r.room.clone().into(),
                r.person_id.clone().into(),
            ];
            let tail = [
                Value::from(now),
                r.socket_id.clone().into(),
                r.ip_address.clone().into(),
                node_id.to_string().into(),
            ];
            values.extend(head);
            if r.display_name == "Anonymous " {
                sql.push_str(&format!(
                    r#"INSERT INTO "connections" ({COLS}) {NUMBERED} "#
                ));
                values.extend(tail);
                values.extend([r.church_id.clone().into(), r.room.clone().into()]);
            } else {
                sql.push_str(&format!(
                    r#"INSERT INTO "connections" ({COLS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "#
                ));
                values.push(r.display_name.clone().into());
                values.push(anonymous_number(&r.display_name).into());
                values.extend(tail);
            }
            sql.push_str(UPSERT);
            sql.push_str(&format!(" RETURNING {COLS};"));
        }
        sql.push_str("COMMIT;");
        let got = self.sqlite_batch(sql, values).await?;
        got.into_iter()
            .map(|row| connections::Model::from_query_result(&row.into(), ""))
            .collect()
    }

    /// The largest N among the room's `Anonymous_N` names (0 when none): one lookup in
    /// the `(churchId, conversationId, anonymousNumber)` index.
    async fn max_anonymous<C: ConnectionTrait>(
        db: &C,
        church: &str,
        room: &str,
    ) -> Result<i64, DbErr> {
        let max: Option<Option<i64>> = connections::Entity::find()
            .select_only()
            .column_as(connections::Column::AnonymousNumber.max(), "n")
            .filter(connections::Column::ChurchId.eq(church))
            .filter(connections::Column::ConversationId.eq(room))
            .into_tuple()
            .one(db)
            .await?;
        Ok(max.flatten().unwrap_or(0))
    }

    pub async fn room_rows(
        &self,
        church: &str,
        room: &str,
    ) -> Result<Vec<connections::Model>, DbErr> {
        connections::Entity::find()
            .filter(connections::Column::ChurchId.eq(church))
            .filter(connections::Column::ConversationId.eq(room))
            .order_by_asc(connections::Column::TimeJoined)
            .order_by_asc(connections::Column::Id)
            .all(&self.db)
            .await
    }

    pub async fn person_rows(
        &self,
        church: &str,
        room: &str,
        person: &str,
    ) -> Result<Vec<connections::Model>, DbErr> {
        connections::Entity::find()
            .filter(connections::Column::ChurchId.eq(church))
            .filter(connections::Column::ConversationId.eq(room))
            .filter(connections::Column::PersonId.eq(person))
            .order_by_asc(connections::Column::TimeJoined)
            .order_by_asc(connections::Column::Id)
            .all(&self.db)
            .await
    }

    pub async fn row(
        &self,
        church: &str,
        room: &str,
        socket: &str,
    ) -> Result<Option<connections::Model>, DbErr> {
        connections::Entity::find()
            .filter(connections::Column::ChurchId.eq(church))
            .filter(connections::Column::ConversationId.eq(room))
            .filter(connections::Column::SocketId.eq(socket))
            .one(&self.db)
            .await
    }

    pub async fn delete_row(&self, id: &str) -> Result<bool, DbErr> {
        let r = connections::Entity::delete_by_id(id.to_string())
            .exec(&self.db)
            .await?;
        Ok(r.rows_affected > 0)
    }

    pub async fn socket_rows(&self, socket: &str) -> Result<Vec<connections::Model>, DbErr> {
        connections::Entity::find()
            .filter(connections::Column::SocketId.eq(socket))
            .order_by_asc(connections::Column::TimeJoined)
            .order_by_asc(connections::Column::Id)
            .all(&self.db)
            .await
    }

    pub async fn rename_rows(&self, ids: &[String], name: &str) -> Result<(), DbErr> {
        if ids.is_empty() {
            return Ok(());
        }
        connections::Entity::update_many()
            .col_expr(
                connections::Column::DisplayName,
                sea_orm::sea_query::Expr::value(name.to_string()),
            )
            .col_expr(
                connections::Column::AnonymousNumber,
                sea_orm::sea_query::Expr::value(anonymous_number(name)),
            )
            .filter(connections::Column::Id.is_in(ids.to_vec()))
            .exec(&self.db)
            .await?;
        Ok(())
    }

    /// Deletes every row of a socket; returns the distinct rooms that lost a row.
    pub async fn delete_socket_rows(&self, socket: &str) -> Result<Vec<(String, String)>, DbErr> {
        let rows = self.socket_rows(socket).await?;
        if rows.is_empty() {
            return Ok(Vec::new());
        }
        connections::Entity::delete_many()
            .filter(connections::Column::SocketId.eq(socket))
            .exec(&self.db)
            .await?;
        Ok(distinct_rooms(rows))
    }

    // ---- nodes, leases and the sweep (§5.3) -----------------------------------------

    pub async fn register_node(
        &self,
        id: &str,
        grpc_address: Option<String>,
        now: i64,
        lease: Duration,
    ) -> Result<(), DbErr> {
        let am = nodes::ActiveModel {
            id: Set(id.to_string()),
            grpc_address: Set(grpc_address),
            started_at: Set(now),
            lease_until: Set(now + lease.as_millis() as i64),
        };
        nodes::Entity::insert(am)
            .exec_without_returning(&self.db)
            .await?;
        Ok(())
    }

    /// The ids of nodes whose lease holds at `now`.
    pub async fn live_nodes(&self, now: i64) -> Result<Vec<String>, DbErr> {
        nodes::Entity::find()
            .filter(nodes::Column::LeaseUntil.gte(now))
            .all(&self.db)
            .await
            .map(|ns| ns.into_iter().map(|n| n.id).collect())
    }

    /// The gRPC address of a node whose lease holds at `now`.
    pub async fn live_node_address(&self, id: &str, now: i64) -> Result<Option<String>, DbErr> {
        Ok(nodes::Entity::find_by_id(id.to_string())
            .filter(nodes::Column::LeaseUntil.gte(now))
            .one(&self.db)
            .await?
            .and_then(|n| n.grpc_address))
    }

    /// Extends the lease; false if the row is gone (another node swept us).
    pub async fn renew_lease(&self, id: &str, now: i64, lease: Duration) -> Result<bool, DbErr> {
        let r = nodes::Entity::update_many()
            .col_expr(
                nodes::Column::LeaseUntil,
                sea_orm::sea_query::Expr::value(now + lease.as_millis() as i64),
            )
            .filter(nodes::Column::Id.eq(id))
            .exec(&self.db)
            .await?;
        Ok(r.rows_affected > 0)
    }

    /// Deletes this node's rows whose socket is not live, the rows of nodes whose lease
    /// expired, and those nodes. Returns the rooms that lost rows.
    ///
    /// `live_sockets` is asked only after this node's rows are read: a socket is registered
    /// before any of its rows is written, so every row read belongs to a socket in that
    /// set unless the socket has ended. Read the other way round, a socket that opened and
    /// joined between the two reads would lose its new row.
    pub async fn sweep(
        &self,
        node_id: &str,
        live_sockets: impl FnOnce() -> std::collections::HashSet<String>,
        now: i64,
    ) -> Result<Vec<(String, String)>, DbErr> {
        let own = connections::Entity::find()
            .filter(connections::Column::NodeId.eq(node_id))
            .all(&self.db)
            .await?;
        let live_sockets = live_sockets();
        let stale: Vec<connections::Model> = own
            .into_iter()
            .filter(|r| !live_sockets.contains(&r.socket_id))
            .collect();
        let mut affected = Vec::new();
        if !stale.is_empty() {
            let ids: Vec<String> = stale.iter().map(|r| r.id.clone()).collect();
            connections::Entity::delete_many()
                .filter(connections::Column::Id.is_in(ids))
                .exec(&self.db)
                .await?;
            affected.extend(stale);
        }
        let expired: Vec<String> = nodes::Entity::find()
            .filter(nodes::Column::LeaseUntil.lt(now))
            .filter(nodes::Column::Id.ne(node_id))
            .all(&self.db)
            .await?
            .into_iter()
            .map(|n| n.id)
            .collect();
        if !expired.is_empty() {
            let orphans = connections::Entity::find()
                .filter(connections::Column::NodeId.is_in(expired.clone()))
                .all(&self.db)
                .await?;
            let txn = self.begin_write().await?;
            connections::Entity::delete_many()
                .filter(connections::Column::NodeId.is_in(expired.clone()))
                .exec(&txn)
                .await?;
            nodes::Entity::delete_many()
                .filter(nodes::Column::Id.is_in(expired))
                .exec(&txn)
                .await?;
            txn.commit().await?;
            affected.extend(orphans);
        }
        Ok(distinct_rooms(affected))
    }

    /// Deletes a node's rows and its `nodes` row; returns the rooms that lost rows.
    pub async fn delete_node(&self, id: &str) -> Result<Vec<(String, String)>, DbErr> {
        let rows = connections::Entity::find()
            .filter(connections::Column::NodeId.eq(id))
            .all(&self.db)
            .await?;
        let txn = self.begin_write().await?;
        connections::Entity::delete_many()
            .filter(connections::Column::NodeId.eq(id))
            .exec(&txn)
            .await?;
        nodes::Entity::delete_by_id(id.to_string())
            .exec(&txn)
            .await?;
        txn.commit().await?;
        Ok(distinct_rooms(rows))
    }
}

/// The N of a display name `Anonymous_<N>`: ASCII digits only, within BIGINT. Anything
/// else (`Anonymous_x`, `Anonymous_+1`, a number past BIGINT) takes no part in numbering.
pub fn anonymous_number(name: &str) -> Option<i64> {
    let digits = name.strip_prefix("Anonymous_")?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

fn distinct_rooms(rows: Vec<connections::Model>) -> Vec<(String, String)> {
    rows.into_iter()
        .map(|r| (r.church_id, r.conversation_id))
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect()
}

/// An error that may carry a database error, for `Store::write`'s retry decision.
pub trait DbFailure {
    fn db_err(&self) -> Option<&DbErr>;
}

impl DbFailure for DbErr {
    fn db_err(&self) -> Option<&DbErr> {
        Some(self)
    }
}

fn sqlx_error(e: &DbErr) -> Option<&sea_orm::sqlx::Error> {
    match e {
        DbErr::Conn(sea_orm::RuntimeErr::SqlxError(e))
        | DbErr::Exec(sea_orm::RuntimeErr::SqlxError(e))
        | DbErr::Query(sea_orm::RuntimeErr::SqlxError(e)) => Some(e),
        _ => None,
    }
}

/// The driver's code of a database error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DbCode {
    /// SQLSTATE.
    Postgres(String),
    /// The server's error number.
    Mysql(u16),
    /// The extended result code.
    Sqlite(i32),
}

pub fn error_code(e: &DbErr) -> Option<DbCode> {
    use sea_orm::sqlx::{mysql::MySqlDatabaseError, sqlite::SqliteError};
    let sea_orm::sqlx::Error::Database(db) = sqlx_error(e)? else {
        return None;
    };
    if let Some(my) = db.try_downcast_ref::<MySqlDatabaseError>() {
        return Some(DbCode::Mysql(my.number()));
    }
    let code = db.code()?;
    if db.try_downcast_ref::<SqliteError>().is_some() {
        return code.parse().ok().map(DbCode::Sqlite);
    }
    Some(DbCode::Postgres(code.into_owned()))
}

/// Deadlocks (PostgreSQL 40P01, MySQL 1213), serialization failures (40001), lock wait
/// timeouts (MySQL 1205) and SQLite busy/locked (result codes 5 and 6, and their extended
/// forms) are worth another try of the whole unit.
pub fn is_transient(e: &DbErr) -> bool {
    match error_code(e) {
        Some(DbCode::Postgres(s)) => s == "40P01" || s == "40001",
        Some(DbCode::Mysql(n)) => n == 1213 || n == 1205,
        Some(DbCode::Sqlite(n)) => matches!(n & 0xff, 5 | 6),
        None => false,
    }
}

/// The database cannot be reached: the pool timed out, the connection failed at the I/O
/// level, or a new connection got no valid answer (a peer that accepts and closes at once
/// makes sqlx-postgres read the end of the stream as `unexpected response from SSLRequest`,
/// a protocol error). Retrying later may work; nothing was written.
pub fn is_unavailable(e: &DbErr) -> bool {
    use sea_orm::sqlx::Error as X;
    match e {
        DbErr::ConnectionAcquire(_) => true,
        DbErr::Conn(sea_orm::RuntimeErr::SqlxError(e)) if matches!(**e, X::Protocol(_)) => true,
        _ => matches!(
            sqlx_error(e),
            Some(X::Io(_) | X::PoolTimedOut | X::PoolClosed | X::WorkerCrashed | X::Tls(_))
        ),
    }
}
