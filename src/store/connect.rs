//! Opening the database: the pool, SQLite's writer connection of its own and its batches,
//! the connection kept for posts on PostgreSQL/MariaDB.
use std::time::Duration;

use sea_orm::{ConnectOptions, Database, DbErr};

use super::Store;

/// A connection of its own for SQLite's hot writes. SQLite has one writer anyway, and:
/// - a connection drops its whole page cache whenever another connection has written, so
///   rotating the writes over the pool made each start cold, re-reading every B-tree page
///   it touched;
/// - sqlx pings a pooled connection each time it goes back to the pool, a second round
///   trip to its worker thread per write, which the next write then waited for.
pub(super) struct SqliteWriter {
    opts: sea_orm::sqlx::sqlite::SqliteConnectOptions,
    /// Taken out for each use and put back after it completed: a use that is cancelled
    /// midway drops (closes) the connection, and the next one opens a fresh one, so no
    /// half-finished transaction carries over.
    conn: tokio::sync::Mutex<Option<sea_orm::sqlx::SqliteConnection>>,
}

/// SQLite connection settings, for the pool and the writer connection alike. WAL lets
/// readers run beside the one writer; write transactions start IMMEDIATE (see
/// `begin_write`) so they queue on busy_timeout instead of failing. No connection
/// checkpoints when it commits: a task of its own does (`checkpoint`).
fn sqlite_tuning(
    o: sea_orm::sqlx::sqlite::SqliteConnectOptions,
) -> sea_orm::sqlx::sqlite::SqliteConnectOptions {
    use sea_orm::sqlx::sqlite::{SqliteJournalMode, SqliteSynchronous};
    o.journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Normal)
        .busy_timeout(Duration::from_secs(10))
        .pragma("wal_autocheckpoint", "0")
        .pragma(
            "journal_size_limit",
            (super::checkpoint::RESTART_FRAMES * 4096).to_string(),
        )
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

pub(super) fn conn_err(e: sea_orm::sqlx::Error) -> DbErr {
    DbErr::Conn(sea_orm::RuntimeErr::SqlxError(e.into()))
}

pub(super) fn exec_err(e: sea_orm::sqlx::Error) -> DbErr {
    DbErr::Exec(sea_orm::RuntimeErr::SqlxError(e.into()))
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
        let writer = std::sync::Arc::new(SqliteWriter {
            opts: opts.clone(),
            conn: tokio::sync::Mutex::new(Some(conn)),
        });
        // In-memory databases have no WAL, and no writer of their own: only files get here.
        super::checkpoint::spawn(opts, std::sync::Arc::downgrade(&writer));
        Ok(writer)
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
}
