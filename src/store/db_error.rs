//! What a database error means, from the driver's own code: transient (retry), unavailable
//! (503), or a constraint.
use sea_orm::DbErr;

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
///
/// Whatever the wrapper: a statement run on a pool directly (a post's write on PostgreSQL,
/// `Store::append_messages`) opens its connection inside the call, so a failed connect
/// arrives as an execution error, not as sea-orm's connection error.
pub fn is_unavailable(e: &DbErr) -> bool {
    use sea_orm::sqlx::Error as X;
    match e {
        DbErr::ConnectionAcquire(_) => true,
        _ => matches!(
            sqlx_error(e),
            Some(
                X::Io(_)
                    | X::Protocol(_)
                    | X::PoolTimedOut
                    | X::PoolClosed
                    | X::WorkerCrashed
                    | X::Tls(_)
            )
        ),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use sea_orm::{DbErr, RuntimeErr, sqlx};

    use super::is_unavailable;

    #[test]
    fn a_failed_connect_is_unavailable_whichever_call_saw_it() {
        let refused = || {
            Arc::new(sqlx::Error::Protocol(
                "unexpected response from SSLRequest".into(),
            ))
        };
        assert!(is_unavailable(&DbErr::Conn(RuntimeErr::SqlxError(
            refused()
        ))));
        // A statement run on a pool directly connects inside the call (issue: a post sent
        // right after the database went away answered 500 instead of 503).
        assert!(is_unavailable(&DbErr::Exec(RuntimeErr::SqlxError(
            refused()
        ))));
        assert!(is_unavailable(&DbErr::Query(RuntimeErr::SqlxError(
            refused()
        ))));
        assert!(!is_unavailable(&DbErr::Custom("a bug".into())));
        assert!(!is_unavailable(&DbErr::Exec(RuntimeErr::SqlxError(
            Arc::new(sqlx::Error::RowNotFound)
        ))));
    }
}
