//! SQLite's checkpoints, off the commit path.
//!
//! In WAL mode a commit appends pages to the WAL, and by default the connection that commits
//! past 1000 WAL pages then copies them into the database file and syncs both files before
//! its call returns: every few hundred posts one of them waited 5–10 ms for that (a run at
//! 1 500 posts/s had 91 writes over 5 ms, as many as it had checkpoints; BENCHMARKS.md,
//! session 18). Here no connection checkpoints on commit (`wal_autocheckpoint=0`, see
//! `connect::sqlite_tuning`); a task with a connection of its own copies what the WAL holds
//! every `EVERY`, PASSIVE: beside the writer, never blocking it.
//!
//! SQLite starts the WAL over only when a write begins after a checkpoint that copied all
//! of it, which under a steady stream of commits rarely happens (each one lands while the
//! copy runs). So the WAL is bounded the other way: once it holds `RESTART_FRAMES`, the task
//! asks for a RESTART checkpoint, which waits for the writer, copies the little the last
//! PASSIVE pass left, and makes the next write start the WAL from the beginning. Writers wait
//! for that once per `RESTART_FRAMES` pages instead of for a whole checkpoint every 1000.
//! `journal_size_limit` keeps the file at that size once it is reset.
use std::sync::Weak;
use std::time::{Duration, Instant};

use sea_orm::sqlx::{self, Connection, sqlite::SqliteConnectOptions};

/// How often the WAL is copied into the database. At 1 500 posts/s that is about 900
/// pages a pass, what SQLite's own 1000-page trigger would copy, but on another thread.
const EVERY: Duration = Duration::from_millis(100);
/// The WAL's bound, in pages (64 MiB of 4 KiB pages).
pub(super) const RESTART_FRAMES: i64 = 16_384;
/// How long a RESTART waits for the writer and for readers before it gives up (and is
/// tried again on the next pass).
const RESTART_WAIT: Duration = Duration::from_secs(1);

/// Runs until `alive` (the store's writer connection) is gone.
pub(super) fn spawn<T: Send + Sync + 'static>(opts: SqliteConnectOptions, alive: Weak<T>) {
    tokio::spawn(async move {
        let opts = opts.busy_timeout(RESTART_WAIT);
        let mut conn: Option<sqlx::SqliteConnection> = None;
        let mut tick = tokio::time::interval(EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if alive.strong_count() == 0 {
                break;
            }
            let c = match conn.as_mut() {
                Some(c) => c,
                None => match sqlx::SqliteConnection::connect_with(&opts).await {
                    Ok(c) => conn.insert(c),
                    Err(e) => {
                        tracing::warn!(error = %e, "checkpoint connection failed; retrying");
                        continue;
                    }
                },
            };
            if let Err(e) = pass(c).await {
                tracing::warn!(error = %e, "SQLite checkpoint failed; retrying");
                // A fresh connection next time, in case this one is the problem.
                conn = None;
            }
        }
        if let Some(c) = conn {
            let _ = c.close().await;
        }
    });
}

/// One pass: PASSIVE, then RESTART if the WAL has reached its bound.
async fn pass(conn: &mut sqlx::SqliteConnection) -> Result<(), sqlx::Error> {
    let started = Instant::now();
    let (_, log, copied) = checkpoint(conn, "PRAGMA wal_checkpoint(PASSIVE)").await?;
    if copied > 0 {
        metrics::histogram!("messaging_sqlite_checkpoint_seconds", "mode" => "passive")
            .record(started.elapsed().as_secs_f64());
    }
    metrics::gauge!("messaging_sqlite_wal_pages").set(log.max(0) as f64);
    if log >= RESTART_FRAMES {
        let started = Instant::now();
        let (busy, ..) = checkpoint(conn, "PRAGMA wal_checkpoint(RESTART)").await?;
        metrics::histogram!("messaging_sqlite_checkpoint_seconds", "mode" => "restart")
            .record(started.elapsed().as_secs_f64());
        if busy == 0 {
            metrics::gauge!("messaging_sqlite_wal_pages").set(0.0);
        }
    }
    Ok(())
}

/// A `PRAGMA wal_checkpoint(…)`: (busy, pages in the WAL, pages copied so far).
async fn checkpoint(
    conn: &mut sqlx::SqliteConnection,
    sql: &'static str,
) -> Result<(i64, i64, i64), sqlx::Error> {
    sqlx::query_as::<_, (i64, i64, i64)>(sql)
        .fetch_one(conn)
        .await
}
