//! Persistence through sea-orm: SQLite by default, PostgreSQL and MySQL/MariaDB by URL.
//! Timestamps are stored as epoch milliseconds (exact, and identical on every backend).
mod blocked_ips;
mod checkpoint;
mod connect;
mod connections;
mod conversations;
mod db_error;
pub mod entities;
mod messages;
mod migrate;
mod nodes;
mod notifications;
mod private_messages;

pub use blocked_ips::BlockedIpToggle;
pub use connections::{NewRow, anonymous_number};
pub use db_error::{
    DbCode, DbFailure, Outage, error_code, is_connection_killed, is_transient, is_unavailable,
    outage_of,
};
pub use notifications::{PRIVATE_MESSAGE, Unread};
pub use private_messages::Thread;

use std::future::Future;
use std::time::Duration;

use sea_orm::{
    DatabaseConnection, DatabaseTransaction, DbBackend, DbErr, IsolationLevel,
    SqliteTransactionMode, TransactionOptions, TransactionTrait,
};

use connect::SqliteWriter;

/// Every query of the service goes through here: its connection is private, so SQL lives
/// in this module's files (one per table family) and nowhere else.
#[derive(Clone)]
pub struct Store {
    db: DatabaseConnection,
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

impl Store {
    pub async fn ping(&self) -> Result<(), DbErr> {
        self.db.ping().await
    }

    pub fn is_sqlite(&self) -> bool {
        self.db.get_database_backend() == DbBackend::Sqlite
    }

    /// Begins a write transaction (IMMEDIATE on SQLite, so concurrent writers wait for the
    /// lock rather than deadlocking on an upgrade).
    pub async fn begin_write(&self) -> Result<Tx, DbErr> {
        Ok(Tx(self.begin_raw().await?))
    }

    async fn begin_raw(&self) -> Result<DatabaseTransaction, DbErr> {
        let opts = TransactionOptions {
            sqlite_transaction_mode: self.is_sqlite().then_some(SqliteTransactionMode::Immediate),
            ..Default::default()
        };
        self.db.begin_with_options(opts).await
    }

    /// A write transaction with an explicit isolation level on PostgreSQL and MySQL (SQLite
    /// write transactions are IMMEDIATE and therefore already serial).
    pub async fn begin_isolated(&self, level: Isolation) -> Result<Tx, DbErr> {
        if self.is_sqlite() {
            return self.begin_write().await;
        }
        let isolation_level = Some(match level {
            Isolation::ReadCommitted => IsolationLevel::ReadCommitted,
            Isolation::Serializable => IsolationLevel::Serializable,
        });
        let opts = TransactionOptions {
            isolation_level,
            ..Default::default()
        };
        Ok(Tx(self.db.begin_with_options(opts).await?))
    }

    /// Runs a write unit, retrying it when the database reports a transient conflict
    /// (deadlock, serialization failure, lock wait timeout, SQLite busy), decided by the
    /// driver's error code. `f` must be idempotent up to its commit.
    ///
    /// A unit whose pooled connection the server had killed (`is_connection_killed`:
    /// PostgreSQL's `pg_terminate_backend` or idle-session timeout, MySQL's 1927) runs once
    /// more, at once: the pool drops the dead connection, so the next checkout is a fresh
    /// one. Nothing is written twice: the server rolled back what the killed session had
    /// begun, and PostgreSQL holds interrupts while it commits: a termination that arrives
    /// then ends the session when it next waits for the client, after the commit's answer
    /// (the unit has succeeded). Only once: if the server is going down (a fast shutdown
    /// reports the same 57P01), the second try fails too (within the 5 s checkout timeout)
    /// and the caller gets its 503. An I/O error is not retried: it cannot tell a killed
    /// connection from an unreachable server (MariaDB 10.11 closes the socket of a killed
    /// session without a code: that write answers 503).
    pub async fn write<T, E, F, Fut>(&self, mut f: F) -> Result<T, E>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, E>>,
        E: DbFailure,
    {
        let mut attempt = 0;
        let mut reconnected = false;
        loop {
            match f().await {
                Err(e) if attempt < 5 && e.db_err().is_some_and(is_transient) => {
                    attempt += 1;
                    metrics::counter!("messaging_db_retries_total").increment(1);
                    tokio::time::sleep(Duration::from_millis(5 << attempt)).await;
                }
                Err(e) if !reconnected && e.db_err().is_some_and(is_connection_killed) => {
                    reconnected = true;
                    tracing::warn!(
                        error = ?e.db_err(),
                        "the database killed the connection; the write runs once more"
                    );
                    metrics::counter!("messaging_db_retries_total").increment(1);
                }
                r => return r,
            }
        }
    }
}

/// A write transaction that spans several store calls, for a decision of the service that
/// must be all or nothing. Only `store` reaches the connection inside: the service can pass
/// it to the store's methods and commit it, not run its own SQL on it; dropped without a
/// commit, it rolls back.
pub struct Tx(DatabaseTransaction);

impl Tx {
    pub async fn commit(self) -> Result<(), DbErr> {
        self.0.commit().await
    }
}

/// The isolation a transaction asks for on PostgreSQL and MySQL/MariaDB.
#[derive(Debug, Clone, Copy)]
pub enum Isolation {
    /// Locked rows and the reads after them agree (MySQL's REPEATABLE READ snapshot would
    /// hide rows committed after the transaction's first read).
    ReadCommitted,
    /// Conflicting concurrent transactions fail with a retryable error instead of both
    /// committing (for invariants no unique index enforces).
    Serializable,
}
