//! A circuit breaker in front of the Postgres pool, so that while the database is unreachable
//! requests answer `Unavailable` at once instead of each waiting out the pool's acquire timeout.
//!
//! The first outage-class failure ([`error::is_outage`]: an acquire timeout, a refused or cut
//! connection, a server shutting down) opens the circuit. While it is open every call fails at
//! once, and one background probe pings the database, every [`PROBE_INTERVAL`] (each ping bounded
//! by the acquire timeout), until it answers and closes the circuit: the service recovers by
//! itself and no request pays for the probing. A constraint conflict, a configuration mistake or
//! any other refusal leaves the circuit alone. SQLite, a local file, goes without one.
//!
//! The breaker guards what goes through the pool: single statements and the start of a
//! transaction (where a connection is acquired). Statements inside a transaction that has begun
//! are not counted; a connection lost there fails that request alone.

use crate::error;
use async_trait::async_trait;
use sea_orm::sqlx::{self, PgPool};
use sea_orm::{
    AccessMode, ConnectionTrait, DatabaseConnection, DatabaseTransaction, DbBackend, DbErr, ExecResult, IsolationLevel,
    QueryResult, RuntimeErr, Statement, TransactionError, TransactionTrait,
};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Weak};
use std::time::{Duration, Instant};

/// The pause between two probes of an unreachable database.
const PROBE_INTERVAL: Duration = Duration::from_secs(1);

/// What a call refused by the open circuit fails with; `error::from_db` makes it `Unavailable`.
const OPEN: &str = "the database failed recently; calls fail at once until a probe reaches it again";

/// The breaker's state, shared by every clone of the store.
#[derive(Debug, Default)]
pub(crate) struct Circuit {
    open: AtomicBool,
    /// When the latest outage-class failure was seen, in nanoseconds after [`EPOCH`] (0: never).
    last_outage: AtomicU64,
}

/// The origin of [`Circuit::last_outage`].
static EPOCH: LazyLock<Instant> = LazyLock::new(Instant::now);

fn since_epoch(at: Instant) -> u64 {
    u64::try_from(at.saturating_duration_since(*EPOCH).as_nanos()).unwrap_or(u64::MAX).max(1)
}

impl Circuit {
    /// Whether an outage was seen after a connection idle for `idle_for` was last released:
    /// it may have died with the server, so it is pinged before it is handed out.
    pub(crate) fn outage_since(&self, idle_for: Duration) -> bool {
        let outage = self.last_outage.load(Ordering::Acquire);
        let released = Instant::now().checked_sub(idle_for).unwrap_or(*EPOCH);
        outage != 0 && outage >= since_epoch(released)
    }

    /// Lets a call through while the circuit is closed.
    fn admit(&self) -> Result<(), DbErr> {
        if self.is_open() {
            Err(DbErr::Conn(RuntimeErr::Internal(OPEN.to_owned())))
        } else {
            Ok(())
        }
    }

    /// Counts a failed call. True when this failure opened the circuit: exactly one failure
    /// per opening sees it, and that one starts the probe.
    fn failed(&self, err: &DbErr) -> bool {
        if !error::is_outage(err) {
            return false;
        }
        self.last_outage.store(since_epoch(Instant::now()), Ordering::Release);
        self.open.compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire).is_ok()
    }

    fn close(&self) {
        self.open.store(false, Ordering::Release);
    }

    fn is_open(&self) -> bool {
        self.open.load(Ordering::Acquire)
    }
}

/// The store's connection: the pool, behind a [`Circuit`] on Postgres. Clones share both.
///
/// A SQLite file may also have a pool of readers: then a lone `SELECT` goes to them, and
/// every write and every transaction to `conn`, which has one connection. SQLite lets one
/// writer in at a time, and a second connection that tries waits in SQLite's busy handler,
/// which sleeps for milliseconds; queueing for the one writer connection instead wakes the
/// next writer as soon as the last one is done.
#[derive(Clone)]
pub(crate) struct Db {
    conn: DatabaseConnection,
    readers: Option<DatabaseConnection>,
    circuit: Option<Arc<Circuit>>,
    /// On Postgres, the refresh-token writer's own connection (`connect_postgres` in lib.rs),
    /// behind the same breaker, pinged and closed with the rest.
    writer: Option<PgPool>,
}

impl Db {
    /// A connection behind a circuit breaker.
    pub(crate) fn guarded(conn: DatabaseConnection, circuit: Arc<Circuit>) -> Db {
        Db { conn, readers: None, circuit: Some(circuit), writer: None }
    }

    /// This connection with the refresh-token writer's own pool beside it.
    pub(crate) fn with_writer(self, writer: PgPool) -> Db {
        Db { writer: Some(writer), ..self }
    }

    /// The refresh-token writer's own pool, where there is one.
    #[cfg(test)]
    pub(crate) fn writer(&self) -> Option<&PgPool> {
        self.writer.as_ref()
    }

    /// A connection with no breaker: every call goes to the pool.
    pub(crate) fn unguarded(conn: DatabaseConnection) -> Db {
        Db { conn, readers: None, circuit: None, writer: None }
    }

    /// One writer connection and a pool of readers, with no breaker (a SQLite file).
    pub(crate) fn split(writer: DatabaseConnection, readers: DatabaseConnection) -> Db {
        Db { conn: writer, readers: Some(readers), circuit: None, writer: None }
    }

    /// Where a statement outside a transaction goes: the readers take a `SELECT`.
    fn route(&self, stmt: &Statement) -> &DatabaseConnection {
        match &self.readers {
            Some(readers) if is_select(&stmt.sql) => readers,
            _ => &self.conn,
        }
    }

    /// The pool itself (the writer, where there are readers), bypassing the breaker: for
    /// migrations.
    pub(crate) fn pool(&self) -> &DatabaseConnection {
        &self.conn
    }

    /// Closes every pool, waiting for connections in use to be returned.
    pub(crate) async fn close(&self) -> Result<(), DbErr> {
        if let Some(writer) = &self.writer {
            writer.close().await;
        }
        if let Some(readers) = &self.readers {
            readers.close_by_ref().await?;
        }
        self.conn.close_by_ref().await
    }

    /// Whether calls are failing fast because the database failed recently.
    pub(crate) fn circuit_open(&self) -> bool {
        self.circuit.as_ref().is_some_and(|c| c.is_open())
    }

    /// A round trip; where there are readers, through them, so that a readiness check does not
    /// queue behind the writes; and one on the refresh-token writer's connection, where there is
    /// one: a node that cannot write refresh tokens is not ready either.
    pub(crate) async fn ping(&self) -> Result<(), DbErr> {
        self.guard(ping_all(self.readers.as_ref().unwrap_or(&self.conn), self.writer.as_ref())).await
    }

    fn admit(&self) -> Result<(), DbErr> {
        self.circuit.as_ref().map_or(Ok(()), |c| c.admit())
    }

    fn failed(&self, err: &DbErr) {
        let Some(circuit) = &self.circuit else { return };
        if circuit.failed(err) {
            tracing::warn!(error = %err, "database unreachable; failing fast until a probe reaches it");
            probe(self.conn.clone(), self.writer.clone(), Arc::downgrade(circuit));
        }
    }

    /// `call` behind the breaker: refused at once while it is open, and counted if it fails.
    /// Every statement through SeaORM goes through here; so does a call on the pool directly.
    pub(crate) async fn guard<T>(&self, call: impl Future<Output = Result<T, DbErr>>) -> Result<T, DbErr> {
        self.admit()?;
        let result = call.await;
        if let Err(e) = &result {
            self.failed(e);
        }
        result
    }
}

/// A round trip on `conn`, then on `writer`.
async fn ping_all(conn: &DatabaseConnection, writer: Option<&PgPool>) -> Result<(), DbErr> {
    conn.ping().await?;
    if let Some(writer) = writer {
        let mut held = writer.acquire().await.map_err(|e| DbErr::Conn(RuntimeErr::SqlxError(e)))?;
        sqlx::Connection::ping(&mut *held).await.map_err(|e| DbErr::Conn(RuntimeErr::SqlxError(e)))?;
    }
    Ok(())
}

/// Pings the database (on the pool and on the refresh-token writer's connection, if any)
/// until both answer, then closes the circuit. Ends early when every clone of the store is
/// gone.
fn probe(conn: DatabaseConnection, writer: Option<PgPool>, circuit: Weak<Circuit>) {
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        // Nothing could ever close it: stay closed rather than fail forever.
        if let Some(c) = circuit.upgrade() {
            c.close();
        }
        return;
    };
    runtime.spawn(async move {
        let opened = Instant::now();
        loop {
            // A circuit opened by a passing hiccup closes at the first ping.
            let answered = ping_all(&conn, writer.as_ref()).await.is_ok();
            let Some(circuit) = circuit.upgrade() else { return };
            if answered {
                circuit.close();
                tracing::info!(after = ?opened.elapsed(), "database reachable again; circuit closed");
                return;
            }
            drop(circuit);
            tokio::time::sleep(PROBE_INTERVAL).await;
        }
    });
}

/// A statement that only reads: a `SELECT` (an `INSERT … RETURNING`, which also comes back
/// as rows, is a write). `WITH` is not taken: its CTE may write.
fn is_select(sql: &str) -> bool {
    sql.trim_start().get(..7).is_some_and(|head| head.eq_ignore_ascii_case("SELECT "))
}

#[async_trait]
impl ConnectionTrait for Db {
    fn get_database_backend(&self) -> DbBackend {
        self.conn.get_database_backend()
    }

    async fn execute(&self, stmt: Statement) -> Result<ExecResult, DbErr> {
        self.guard(self.conn.execute(stmt)).await
    }

    async fn execute_unprepared(&self, sql: &str) -> Result<ExecResult, DbErr> {
        self.guard(self.conn.execute_unprepared(sql)).await
    }

    async fn query_one(&self, stmt: Statement) -> Result<Option<QueryResult>, DbErr> {
        self.guard(self.route(&stmt).query_one(stmt)).await
    }

    async fn query_all(&self, stmt: Statement) -> Result<Vec<QueryResult>, DbErr> {
        self.guard(self.route(&stmt).query_all(stmt)).await
    }

    fn support_returning(&self) -> bool {
        self.conn.support_returning()
    }
}

#[async_trait]
impl TransactionTrait for Db {
    async fn begin(&self) -> Result<DatabaseTransaction, DbErr> {
        self.guard(self.conn.begin()).await
    }

    async fn begin_with_config(
        &self,
        isolation_level: Option<IsolationLevel>,
        access_mode: Option<AccessMode>,
    ) -> Result<DatabaseTransaction, DbErr> {
        self.guard(self.conn.begin_with_config(isolation_level, access_mode)).await
    }

    async fn transaction<F, T, E>(&self, callback: F) -> Result<T, TransactionError<E>>
    where
        F: for<'c> FnOnce(&'c DatabaseTransaction) -> Pin<Box<dyn Future<Output = Result<T, E>> + Send + 'c>> + Send,
        T: Send,
        E: std::fmt::Display + std::fmt::Debug + Send,
    {
        self.transaction_with_config(callback, None, None).await
    }

    async fn transaction_with_config<F, T, E>(
        &self,
        callback: F,
        isolation_level: Option<IsolationLevel>,
        access_mode: Option<AccessMode>,
    ) -> Result<T, TransactionError<E>>
    where
        F: for<'c> FnOnce(&'c DatabaseTransaction) -> Pin<Box<dyn Future<Output = Result<T, E>> + Send + 'c>> + Send,
        T: Send,
        E: std::fmt::Display + std::fmt::Debug + Send,
    {
        self.admit().map_err(TransactionError::Connection)?;
        let result = self.conn.transaction_with_config(callback, isolation_level, access_mode).await;
        if let Err(TransactionError::Connection(e)) = &result {
            self.failed(e);
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sea_orm::sqlx;

    fn timeout() -> DbErr {
        DbErr::ConnectionAcquire(sea_orm::ConnAcquireErr::Timeout)
    }

    #[test]
    fn the_first_outage_opens_the_circuit_once_and_an_open_circuit_refuses_at_once() {
        let c = Circuit::default();
        assert!(c.admit().is_ok());
        assert!(c.failed(&timeout()), "the first outage opens it and starts the probe");
        assert!(!c.failed(&timeout()), "later failures while open start no second probe");
        let refused = c.admit().unwrap_err();
        assert!(
            matches!(error::from_db(refused), tessera_core::StoreError::Unavailable { store: "database", .. }),
            "a refused call is Unavailable"
        );
        c.close();
        assert!(c.admit().is_ok(), "a successful probe closes it");
        assert!(c.failed(&timeout()), "and the next outage opens it again");
    }

    #[test]
    fn a_connection_last_used_before_an_outage_is_suspect_and_one_used_after_is_not() {
        let c = Circuit::default();
        assert!(!c.outage_since(Duration::from_secs(3600)), "no outage seen yet");
        std::thread::sleep(Duration::from_millis(5));
        c.failed(&timeout());
        assert!(c.outage_since(Duration::from_millis(5)), "released before the outage");
        std::thread::sleep(Duration::from_millis(5));
        assert!(!c.outage_since(Duration::from_millis(1)), "released after it");
        c.failed(&DbErr::RecordNotInserted);
        assert!(!c.outage_since(Duration::from_millis(1)), "a failure that is not an outage is no news");
    }

    #[test]
    fn failures_that_are_not_outages_leave_the_circuit_closed() {
        let c = Circuit::default();
        let not_outages = [
            DbErr::Query(RuntimeErr::SqlxError(sqlx::Error::RowNotFound)),
            DbErr::Conn(RuntimeErr::SqlxError(sqlx::Error::Configuration("bad option".into()))),
            DbErr::Custom("a row the model does not know".into()),
            DbErr::RecordNotInserted,
        ];
        for err in not_outages {
            assert!(!c.failed(&err), "{err} must not open the circuit");
        }
        assert!(c.admit().is_ok());
    }

    #[test]
    fn only_a_select_goes_to_the_readers() {
        assert!(is_select("SELECT \"digest\" FROM \"refresh_tokens\""));
        assert!(is_select("  select 1 "));
        assert!(!is_select("INSERT INTO t (a) VALUES (1) RETURNING a"));
        assert!(!is_select("UPDATE t SET a = 1"));
        assert!(!is_select("WITH x AS (UPDATE t SET a = 1 RETURNING 1) SELECT * FROM x"));
        assert!(!is_select("SELECT"));
    }

    #[tokio::test]
    async fn an_unguarded_connection_never_fails_fast() {
        let conn = sea_orm::Database::connect("sqlite::memory:").await.unwrap();
        let db = Db::unguarded(conn);
        db.failed(&timeout());
        assert!(!db.circuit_open());
        assert!(db.ping().await.is_ok());
    }

    #[tokio::test]
    async fn a_probe_that_reaches_the_database_closes_the_circuit() {
        let db = Db::guarded(sea_orm::Database::connect("sqlite::memory:").await.unwrap(), Arc::default());
        db.failed(&timeout());
        assert!(db.circuit_open());
        assert!(db.ping().await.is_err(), "an open circuit refuses without asking the database");
        for _ in 0..100 {
            if !db.circuit_open() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(!db.circuit_open(), "the probe's first ping closed it");
        assert!(db.ping().await.is_ok());
    }
}
