//! Migrations at start, one node at a time: each database's own lock.
use migrations::sea_orm_migration::MigratorTrait;
use sea_orm::{DbBackend, DbErr};

use super::Store;
use super::connect::{conn_err, exec_err};

/// The PostgreSQL advisory lock key that serializes migrations across nodes: any constant
/// every node agrees on ("msgmigr" in ASCII).
const PG_MIGRATION_LOCK: i64 = 0x006d_7367_6d69_6772;
/// The MariaDB/MySQL named lock that does the same.
const MYSQL_MIGRATION_LOCK: &str = "messaging_migrate";
/// How long one GET_LOCK waits before it is asked again (and a log line says so).
const MYSQL_LOCK_WAIT_SECS: i64 = 60;

impl Store {
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
        let txn = self.begin_raw().await?;
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
}
