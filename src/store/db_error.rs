//! What a database error means, from the driver's own code: transient (retry), unavailable
//! (503; a connection the server killed is retried once first), or a constraint.
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

/// What the server said about a connection it ended or would not open, by the driver's code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outage {
    /// The server ended this one connection and is (as far as the code tells) still up: an
    /// administrator's kill, an idle-session timeout. A fresh connection may work at once.
    Killed,
    /// The server is shutting down, restarting or refusing connections for now, or the
    /// connection failed: worth another try later, not now.
    Down,
}

/// PostgreSQL:
/// - `57P01` admin_shutdown: `pg_terminate_backend`, and also a smart or fast shutdown (the
///   code is the same: the connection was killed, the server may or may not be going away);
/// - `57P05` idle_session_timeout: the server closed an idle pooled connection;
/// - `57P02` crash_shutdown, `57P03` cannot_connect_now (starting up, shutting down, in
///   recovery);
/// - class `08`, connection exception (`08000`, `08003`, `08006`, `08001`, `08004`, `08007`),
///   except `08P01` protocol_violation, which is a malformed message of ours (a bind with the
///   wrong number of parameters): a bug, a 500, not an outage to wait out.
///
/// MySQL/MariaDB: `1927` ER_CONNECTION_KILLED (`KILL`), `1053` ER_SERVER_SHUTDOWN, and the
/// client-side `2006` (server has gone away) and `2013` (lost connection during query).
pub fn outage_of(code: &DbCode) -> Option<Outage> {
    match code {
        DbCode::Postgres(s) => match s.as_str() {
            "57P01" | "57P05" => Some(Outage::Killed),
            "57P02" | "57P03" => Some(Outage::Down),
            "08P01" => None,
            s if s.starts_with("08") => Some(Outage::Down),
            _ => None,
        },
        DbCode::Mysql(1927) => Some(Outage::Killed),
        DbCode::Mysql(1053 | 2006 | 2013) => Some(Outage::Down),
        DbCode::Mysql(_) | DbCode::Sqlite(_) => None,
    }
}

/// The database cannot be reached: the pool timed out, the connection failed at the I/O
/// level, or a new connection got no valid answer (a peer that accepts and closes at once
/// makes sqlx-postgres read the end of the stream as `unexpected response from SSLRequest`,
/// a protocol error); or the server answered with a code of `outage_of` (it ended the
/// connection, is restarting or failing over). Retrying later may work; nothing was
/// written (the transaction of a connection that ended is rolled back by the server).
///
/// Whatever the wrapper: a statement run on a pool directly (a post's write on PostgreSQL,
/// `Store::append_messages`) opens its connection inside the call, so a failed connect
/// arrives as an execution error, not as sea-orm's connection error.
pub fn is_unavailable(e: &DbErr) -> bool {
    use sea_orm::sqlx::Error as X;
    match e {
        DbErr::ConnectionAcquire(_) => true,
        _ => {
            matches!(
                sqlx_error(e),
                Some(
                    X::Io(_)
                        | X::Protocol(_)
                        | X::PoolTimedOut
                        | X::PoolClosed
                        | X::WorkerCrashed
                        | X::Tls(_)
                )
            ) || error_code(e).is_some_and(|c| outage_of(&c).is_some())
        }
    }
}

/// The server killed the connection this error came on (`Outage::Killed`). The pool drops
/// that connection (sqlx pings each one it takes back), so the next checkout gets a
/// working one: `Store::write` runs its unit once more.
pub fn is_connection_killed(e: &DbErr) -> bool {
    error_code(e).is_some_and(|c| outage_of(&c) == Some(Outage::Killed))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use sea_orm::{DbErr, RuntimeErr, sqlx};

    use super::{DbCode, Outage, is_connection_killed, is_transient, is_unavailable, outage_of};

    /// Every code the service treats as an outage, and neighbours that must stay errors
    /// (a 500, or a retry as a conflict).
    #[test]
    fn outage_codes() {
        use DbCode::{Mysql, Postgres, Sqlite};
        let pg = |s: &str| Postgres(s.to_string());
        let table = [
            (pg("57P01"), Some(Outage::Killed)),
            (pg("57P05"), Some(Outage::Killed)),
            (pg("57P02"), Some(Outage::Down)),
            (pg("57P03"), Some(Outage::Down)),
            (pg("08000"), Some(Outage::Down)),
            (pg("08003"), Some(Outage::Down)),
            (pg("08006"), Some(Outage::Down)),
            (pg("08001"), Some(Outage::Down)),
            (pg("08004"), Some(Outage::Down)),
            (pg("08007"), Some(Outage::Down)),
            (pg("08P01"), None), // protocol violation: our bug
            (pg("57014"), None), // query_canceled (statement timeout)
            (pg("57P04"), None), // database_dropped
            (pg("40P01"), None),
            (pg("23505"), None),
            (pg("P0001"), None), // raise_exception (a trigger)
            (Mysql(1927), Some(Outage::Killed)),
            (Mysql(1053), Some(Outage::Down)),
            (Mysql(2006), Some(Outage::Down)),
            (Mysql(2013), Some(Outage::Down)),
            (Mysql(1213), None),
            (Mysql(1205), None),
            (Mysql(1062), None),
            (Mysql(1644), None), // SIGNAL (a trigger)
            (Mysql(1317), None), // query interrupted (KILL QUERY): the connection lives
            (Sqlite(5), None),
            (Sqlite(1), None),
        ];
        for (code, verdict) in table {
            assert_eq!(outage_of(&code), verdict, "{code:?}");
        }
    }

    /// A database error with a SQLSTATE, as sqlx-postgres reports one (its own error type
    /// cannot be built outside sqlx; `error_code` reads any other type's code as SQLSTATE).
    #[derive(Debug)]
    struct Sqlstate(&'static str);
    impl std::fmt::Display for Sqlstate {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "SQLSTATE {}", self.0)
        }
    }
    impl std::error::Error for Sqlstate {}
    impl sqlx::error::DatabaseError for Sqlstate {
        fn message(&self) -> &str {
            "from the test"
        }
        fn code(&self) -> Option<std::borrow::Cow<'_, str>> {
            Some(self.0.into())
        }
        fn as_error(&self) -> &(dyn std::error::Error + Send + Sync + 'static) {
            self
        }
        fn as_error_mut(&mut self) -> &mut (dyn std::error::Error + Send + Sync + 'static) {
            self
        }
        fn into_error(self: Box<Self>) -> Box<dyn std::error::Error + Send + Sync + 'static> {
            self
        }
        fn kind(&self) -> sqlx::error::ErrorKind {
            sqlx::error::ErrorKind::Other
        }
    }

    #[test]
    fn server_codes_decide_through_every_wrapper() {
        let wrapped = |code: &'static str| {
            let e = || Arc::new(sqlx::Error::Database(Box::new(Sqlstate(code))));
            [
                DbErr::Conn(RuntimeErr::SqlxError(e())),
                DbErr::Exec(RuntimeErr::SqlxError(e())),
                DbErr::Query(RuntimeErr::SqlxError(e())),
            ]
        };
        // (code, unavailable, killed, transient)
        for (code, unavailable, killed, transient) in [
            ("57P01", true, true, false),
            ("57P05", true, true, false),
            ("57P02", true, false, false),
            ("57P03", true, false, false),
            ("08006", true, false, false),
            ("08P01", false, false, false),
            ("40001", false, false, true),
            ("23505", false, false, false),
        ] {
            for e in wrapped(code) {
                assert_eq!(is_unavailable(&e), unavailable, "{e:?}");
                assert_eq!(is_connection_killed(&e), killed, "{e:?}");
                assert_eq!(is_transient(&e), transient, "{e:?}");
            }
        }
        // An I/O failure is unavailable but not a kill: the server may be unreachable, and
        // `Store::write` does not try again at once.
        let io = DbErr::Exec(RuntimeErr::SqlxError(Arc::new(sqlx::Error::Io(
            std::io::Error::from(std::io::ErrorKind::ConnectionReset),
        ))));
        assert!(is_unavailable(&io));
        assert!(!is_connection_killed(&io));
    }

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
