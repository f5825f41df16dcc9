//! The one mapping from database errors to [`StoreError`].
//!
//! Reasons come from the driver's own messages (an I/O error, a server notice, a constraint
//! name); ports only ever hand us digests, and connection URLs are never formatted into an
//! error, so no secret can end up in one.

use sea_orm::sqlx;
use sea_orm::{DbErr, RuntimeErr, SqlErr};
use tessera_core::StoreError;

/// The `store` every [`StoreError::Unavailable`] from this crate names.
pub(crate) const STORE: &str = "database";

pub(crate) fn unavailable(reason: impl Into<String>) -> StoreError {
    StoreError::Unavailable { store: STORE, reason: reason.into() }
}

/// Connection trouble is `Unavailable` (the pool reconnects by itself, so a retry may
/// succeed), a unique violation is `Conflict`, anything else is `Other`.
pub(crate) fn from_db(err: DbErr) -> StoreError {
    if let Some(SqlErr::UniqueConstraintViolation(constraint)) = err.sql_err() {
        return StoreError::Conflict(constraint);
    }
    let outage = is_outage(&err);
    let reason = match err {
        DbErr::ConnectionAcquire(e) => e.to_string(),
        DbErr::Conn(RuntimeErr::Internal(reason)) => reason,
        DbErr::Conn(RuntimeErr::SqlxError(sqlx::Error::Configuration(e))) => {
            format!("invalid database configuration: {e}")
        }
        DbErr::Conn(RuntimeErr::SqlxError(sqlx::Error::Database(db))) => db.message().to_owned(),
        DbErr::Exec(RuntimeErr::SqlxError(sqlx::Error::Database(db)))
        | DbErr::Query(RuntimeErr::SqlxError(sqlx::Error::Database(db)))
            if outage =>
        {
            db.message().to_owned()
        }
        DbErr::Conn(RuntimeErr::SqlxError(e))
        | DbErr::Exec(RuntimeErr::SqlxError(e))
        | DbErr::Query(RuntimeErr::SqlxError(e)) => e.to_string(),
        other => other.to_string(),
    };
    if outage {
        unavailable(reason)
    } else {
        StoreError::Other(reason)
    }
}

/// For errors sqlx returns before SeaORM wraps them (connecting the pool ourselves).
pub(crate) fn from_connect(err: sqlx::Error) -> StoreError {
    from_db(DbErr::Conn(RuntimeErr::SqlxError(err)))
}

/// Whether `err` is an outage, what [`from_db`] maps to `Unavailable`: the one
/// classification, which the circuit breaker counts too.
pub(crate) fn is_outage(err: &DbErr) -> bool {
    match err {
        DbErr::ConnectionAcquire(_) | DbErr::Conn(RuntimeErr::Internal(_)) => true,
        DbErr::Conn(RuntimeErr::SqlxError(e)) => match e {
            // A malformed URL or option is a configuration mistake, not an outage.
            sqlx::Error::Configuration(_) => false,
            // The server answered and said no (a refused password, a missing database): a
            // mistake to fix, not an outage to wait out.
            sqlx::Error::Database(db) => is_server_outage(db.as_ref()),
            // No answer, a dropped handshake, a restarting server: an outage.
            _ => true,
        },
        DbErr::Exec(RuntimeErr::SqlxError(e)) | DbErr::Query(RuntimeErr::SqlxError(e)) => match e {
            sqlx::Error::Io(_)
            | sqlx::Error::Tls(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::WorkerCrashed
            // A connection cut mid-conversation reads as a protocol error (an unexpected end).
            | sqlx::Error::Protocol(_) => true,
            sqlx::Error::Database(db) => is_server_outage(db.as_ref()),
            _ => false,
        },
        _ => false,
    }
}

/// Server-side errors that mean "not now" rather than "not this".
fn is_server_outage(db: &dyn sqlx::error::DatabaseError) -> bool {
    let Some(code) = db.code() else {
        return false;
    };
    if db.try_downcast_ref::<sqlx::postgres::PgDatabaseError>().is_some() {
        // Class 08: connection exception; 53: insufficient resources (too many
        // connections, disk full); 57P01-57P03: admin/crash shutdown, cannot connect now.
        // 25006: read-only transaction, what a demoted primary answers during a failover.
        return code.starts_with("08")
            || code.starts_with("53")
            || matches!(&*code, "57P01" | "57P02" | "57P03" | "25006");
    }
    if db.try_downcast_ref::<sqlx::sqlite::SqliteError>().is_some() {
        // SQLite reports extended result codes; the primary code is the low byte.
        // BUSY and LOCKED outlasted the busy timeout; IOERR, FULL, CANTOPEN are the disk.
        return code.parse::<i32>().map(|c| matches!(c & 0xff, 5 | 6 | 10 | 13 | 14)).unwrap_or(false);
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pool_exhaustion_and_refused_connections_are_unavailable() {
        let cases = [
            DbErr::ConnectionAcquire(sea_orm::ConnAcquireErr::Timeout),
            DbErr::Conn(RuntimeErr::SqlxError(sqlx::Error::PoolTimedOut)),
            DbErr::Query(RuntimeErr::SqlxError(sqlx::Error::PoolClosed)),
            DbErr::Exec(RuntimeErr::SqlxError(sqlx::Error::Io(std::io::Error::from(
                std::io::ErrorKind::ConnectionReset,
            )))),
        ];
        for err in cases {
            let shown = err.to_string();
            assert!(
                matches!(from_db(err), StoreError::Unavailable { store: "database", .. }),
                "{shown} should be Unavailable"
            );
        }
    }

    #[test]
    fn other_errors_are_other() {
        assert!(matches!(from_db(DbErr::Query(RuntimeErr::SqlxError(sqlx::Error::RowNotFound))), StoreError::Other(_)));
        assert!(matches!(from_db(DbErr::Custom("x".into())), StoreError::Other(_)));
    }
}
