//! Tessera's durable store: SeaORM entities, the schema migrations, and [`SqlStore`], the one
//! adapter that implements every durable port of `tessera_core::ports` (clients, users,
//! refresh-token families, consents, signing keys, the audit log) on Postgres and SQLite
//! with the same behaviour.
//!
//! This crate owns its transactions: the core never begins or commits anything. It depends on
//! the core only for the port traits and model types, and must not depend on any transport
//! (tonic, actix-web) or on the ephemeral store. Secrets never reach it: ports take digests.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::todo))]

mod circuit;
pub mod entity;
mod error;
mod migration;
mod ports;
mod refresh_batch;

pub use migration::Migrator;

use sea_orm::sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sea_orm::sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sea_orm::{ConnectionTrait as _, SqlxPostgresConnector, SqlxSqliteConnector};
use sea_orm_migration::MigratorTrait as _;
use std::time::Duration;
use tessera_core::StoreError;

/// How long a caller waits for a pooled connection, including opening a new one. Short, so
/// a database that is down turns into `Unavailable` instead of a hung request.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(3);
/// The statements the refresh-token writer's connection keeps prepared: its batch, and room.
const WRITER_STATEMENTS: usize = 4;
/// How long SQLite waits on another process's write lock before giving up with `SQLITE_BUSY`
/// (writers of this process queue for the one writer connection, within `ACQUIRE_TIMEOUT`).
const SQLITE_BUSY_TIMEOUT: Duration = Duration::from_secs(5);
/// A pooled Postgres connection idle for longer than this is pinged before it is handed out
/// (HikariCP's rule, with its 500 ms): one used a moment ago is known to be alive, and
/// pinging it would add a round trip to every checkout.
pub const PING_IF_IDLE_FOR: Duration = Duration::from_millis(500);
/// Reader connections to a SQLite file, beside its one writer (WAL lets them run at once).
const SQLITE_FILE_READERS: u32 = 4;

/// How many connections the store may hold open.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PoolOptions {
    /// Postgres connections in the pool, opened as needed and closed after ten idle minutes.
    /// Every request in flight that touches the database holds one for a few statements; with
    /// fewer connections than requests in flight, requests queue for them. The refresh-token
    /// writer holds one more of its own. Each is a server process on Postgres: replicas × (this
    /// + 1) must stay under the server's `max_connections`. SQLite ignores it.
    pub max_connections: u32,
}

impl PoolOptions {
    pub const DEFAULT_MAX_CONNECTIONS: u32 = 32;
}

impl Default for PoolOptions {
    fn default() -> Self {
        PoolOptions { max_connections: Self::DEFAULT_MAX_CONNECTIONS }
    }
}

/// Every durable port on one SeaORM connection pool, Postgres or SQLite (on Postgres with the
/// refresh-token writer's own connection beside it).
///
/// Cheap to clone: clones share the pool. The pool reconnects by itself after the database
/// comes back (a connection idle for [`PING_IF_IDLE_FOR`] is checked before it is handed out).
/// On Postgres a circuit breaker, shared by the clones, makes calls fail at once with
/// `Unavailable` after the first outage, until a background probe reaches the database again.
#[derive(Clone)]
pub struct SqlStore {
    db: circuit::Db,
    /// The group commit of refresh-token writes.
    refresh_writes: refresh_batch::RefreshBatches,
}

// Hand-written so nothing about the connection (its URL above all) is ever printed.
impl std::fmt::Debug for SqlStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqlStore").field("backend", &self.db.get_database_backend()).finish_non_exhaustive()
    }
}

impl SqlStore {
    /// Connects to `postgres://…` (or `postgresql://…`), `sqlite://path?mode=rwc` or
    /// `sqlite::memory:`, opening one connection to prove the database is there.
    ///
    /// Fails with `StoreError::Unavailable` if the database cannot be reached within a few
    /// seconds, and `StoreError::Other` for a URL of another scheme or a malformed one. The
    /// URL, which may hold a password, never appears in an error.
    pub async fn connect(url: &str) -> Result<SqlStore, StoreError> {
        SqlStore::connect_with(url, PoolOptions::default()).await
    }

    /// [`SqlStore::connect`] with the pool sized by `options`.
    pub async fn connect_with(url: &str, options: PoolOptions) -> Result<SqlStore, StoreError> {
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            let (db, conn) = connect_postgres(url, options.max_connections.max(1)).await?;
            let refresh_writes =
                refresh_batch::RefreshBatches::start(refresh_batch::Writer::Postgres { db: db.clone(), conn });
            Ok(SqlStore { db, refresh_writes })
        } else if url.starts_with("sqlite:") {
            let db = connect_sqlite(url).await?;
            let writer = refresh_batch::Writer::Sqlite(db.pool().get_sqlite_connection_pool().clone());
            Ok(SqlStore { db, refresh_writes: refresh_batch::RefreshBatches::start(writer) })
        } else {
            Err(StoreError::Other("unsupported database URL: expected postgres:// or sqlite:".into()))
        }
    }

    /// Applies every migration not yet applied. Running it again is a no-op.
    pub async fn migrate(&self) -> Result<(), StoreError> {
        Migrator::up(self.db.pool(), None).await.map_err(error::from_db)?;
        tracing::debug!(backend = ?self.db.get_database_backend(), "database schema is up to date");
        Ok(())
    }

    /// Closes the pool (and the writer's connection), waiting for connections in use to be
    /// returned. Other clones of this store fail with `Unavailable` afterwards.
    pub async fn close(self) -> Result<(), StoreError> {
        self.db.close().await.map_err(error::from_db)
    }

    /// Whether the circuit breaker is open: the database failed recently, so calls fail at
    /// once with `Unavailable` until the background probe reaches it. Always false on SQLite.
    pub fn circuit_open(&self) -> bool {
        self.db.circuit_open()
    }
}

/// The query parameters sqlx understands in a Postgres URL. sqlx logs any other one at WARN
/// *with its value*, so a misspelt `password` (or libpq's `sslpassword`) would reach the log:
/// such a URL is refused, without naming the parameter.
const POSTGRES_URL_PARAMETERS: [&str; 13] = [
    "sslmode",
    "sslrootcert",
    "sslcert",
    "sslkey",
    "statement-cache-capacity",
    "host",
    "hostaddr",
    "port",
    "dbname",
    "user",
    "password",
    "application_name",
    "options",
];

fn check_postgres_parameters(url: &str) -> Result<(), StoreError> {
    let Some((_, query)) = url.split_once('?') else { return Ok(()) };
    let known = query.split('&').filter(|kv| !kv.is_empty()).all(|kv| {
        let key = kv.split_once('=').map_or(kv, |(k, _)| k);
        POSTGRES_URL_PARAMETERS.contains(&key)
    });
    if known {
        Ok(())
    } else {
        Err(StoreError::Other(format!(
            "the database URL has a query parameter this store does not support (supported: {})",
            POSTGRES_URL_PARAMETERS.join(", ")
        )))
    }
}

/// The pool of every statement, and beside it the refresh-token writer's own connection (kept
/// in the `Db` for readiness, the breaker's probe and closing, and returned for the writer).
///
/// The writer sends one statement, the batch ([`refresh_batch`]), over and over, with arrays
/// of every length. Left to choose, Postgres plans it afresh on each execution whenever its
/// arrays are short (a custom plan per call; planning it takes longer than running it), which is
/// every batch below full load. Its connection therefore runs with `plan_cache_mode =
/// force_generic_plan` and keeps its prepared statements whatever the URL's
/// `statement-cache-capacity`: the batch is planned once per connection, and again whenever the
/// tables' statistics change. Every other statement keeps Postgres's own choice, on the shared
/// pool. The writer holds its one connection from the start (a server that refuses the setting,
/// Postgres before 12 or a pooler, fails here, not at the first refresh), behind the pool's
/// circuit breaker, and readiness pings it with the pool.
async fn connect_postgres(url: &str, max_connections: u32) -> Result<(circuit::Db, PgPool), StoreError> {
    check_postgres_parameters(url)?;
    let options: PgConnectOptions = url.parse().map_err(error::from_connect)?;
    let circuit = std::sync::Arc::new(circuit::Circuit::default());
    let pool =
        pool_options(max_connections, &circuit).connect_with(options.clone()).await.map_err(error::from_connect)?;
    // One connection: the writer has one batch in flight at a time.
    let writer_options =
        options.options([("plan_cache_mode", "force_generic_plan")]).statement_cache_capacity(WRITER_STATEMENTS);
    let writer =
        pool_options(1, &circuit).min_connections(1).connect_with(writer_options).await.map_err(error::from_connect)?;
    let db = circuit::Db::guarded(SqlxPostgresConnector::from_sqlx_postgres_pool(pool), circuit);
    Ok((db.with_writer(writer.clone()), writer))
}

/// How a Postgres pool of at most `max_connections` opens, keeps and checks its connections,
/// the outages `circuit` sees included.
fn pool_options(max_connections: u32, circuit: &std::sync::Arc<circuit::Circuit>) -> PgPoolOptions {
    let seen = std::sync::Arc::clone(circuit);
    PgPoolOptions::new()
        .max_connections(max_connections)
        .min_connections(0)
        .acquire_timeout(ACQUIRE_TIMEOUT)
        .idle_timeout(Some(Duration::from_secs(600)))
        .max_lifetime(Some(Duration::from_secs(1800)))
        // A connection that died with the server is found and replaced here, not handed to a
        // caller: one that sat idle for a moment (as every connection does while the database
        // is down and the circuit is open), or that was last used before the latest outage
        // seen, answers a ping first. Under load connections are never idle that long, and a
        // checkout costs no round trip.
        .test_before_acquire(false)
        .before_acquire(move |conn, meta| {
            let suspect = meta.idle_for >= PING_IF_IDLE_FOR || seen.outage_since(meta.idle_for);
            Box::pin(async move { Ok(!suspect || sea_orm::sqlx::Connection::ping(conn).await.is_ok()) })
        })
}

async fn connect_sqlite(url: &str) -> Result<circuit::Db, StoreError> {
    let options: SqliteConnectOptions = url.parse().map_err(error::from_connect)?;
    let options = options
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Normal)
        .busy_timeout(SQLITE_BUSY_TIMEOUT)
        .foreign_keys(true)
        // sqlx hands results from the connection's thread to the caller through a queue of
        // 50 by default: a full refresh batch yields more, and the thread would stop part-way
        // for the caller's task to take them.
        .row_buffer_size(refresh_batch::SQLITE_BATCH_RESULTS);
    let connect = |pool: SqlitePoolOptions| async {
        // A SQLite connection is a file in this process, not a socket that dies with a
        // server: sqlx's ping before every checkout would only be a trip to its thread and back.
        let pool = pool.test_before_acquire(false).acquire_timeout(ACQUIRE_TIMEOUT).connect_with(options.clone()).await;
        Ok::<_, StoreError>(SqlxSqliteConnector::from_sqlx_sqlite_pool(pool.map_err(error::from_connect)?))
    };
    if is_sqlite_memory(url) {
        // Each connection to `:memory:` would be its own database, and the database dies with
        // its last connection: exactly one connection, kept forever. It also serializes
        // writers, which is all the concurrency safety an in-memory database needs.
        let one = SqlitePoolOptions::new().max_connections(1).min_connections(1).idle_timeout(None).max_lifetime(None);
        return Ok(circuit::Db::unguarded(connect(one).await?));
    }
    // One writer connection, so writers queue in the pool rather than in SQLite's busy
    // handler (which sleeps); the busy timeout still covers another process writing. WAL
    // lets the readers run beside it. Every write transaction starts with its write, so a
    // wait happens before it has read anything and cannot end in SQLITE_BUSY_SNAPSHOT.
    // The writer connects first: it creates the file and puts it in WAL mode.
    let writer = connect(SqlitePoolOptions::new().max_connections(1)).await?;
    let readers = connect(SqlitePoolOptions::new().max_connections(SQLITE_FILE_READERS)).await?;
    Ok(circuit::Db::split(writer, readers))
}

fn is_sqlite_memory(url: &str) -> bool {
    url.contains(":memory:") || url.contains("mode=memory")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_postgres_url_with_a_parameter_sqlx_would_log_is_refused_without_naming_it() {
        assert!(check_postgres_parameters("postgres://u:p@h/db").is_ok());
        assert!(check_postgres_parameters("postgres://u@h/db?sslmode=require&application_name=tessera").is_ok());
        let e = check_postgres_parameters("postgres://u@h/db?passwd=hunter2").unwrap_err();
        assert!(!e.to_string().contains("hunter2") && !e.to_string().contains("passwd"), "{e}");
        assert!(check_postgres_parameters("postgres://u@h/db?sslpassword=x").is_err());
    }

    /// The refresh-token writer's batch is planned once on its connection, however short its
    /// arrays, while every other statement keeps Postgres's own choice of plan.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_refresh_writer_plans_its_batch_once_and_the_pool_keeps_the_default() {
        use sea_orm::sqlx::Row as _;
        use tessera_core::ports::{RefreshStore as _, Succession, Successor};
        let db = match tessera_testkit::PgDatabase::create("tessera_store_unit").await {
            Ok(db) => db,
            Err(e) => return tessera_testkit::skip_or_fail(format!("{e}; the refresh writer's plan was not checked")),
        };
        let store = SqlStore::connect(&db.url()).await.unwrap();
        store.migrate().await.unwrap();
        // Batches of one, the shortest arrays: Postgres's own choice would plan each afresh.
        const BATCHES: i64 = 8;
        for i in 0..BATCHES {
            let successor = Successor {
                digest: tessera_crypto::Digest::of(format!("next {i}").as_bytes()),
                issued_at: 1_700_000_000,
                expires_at: 1_700_086_400,
                access_jti: format!("jti {i}"),
                access_exp: 1_700_000_300,
            };
            let succession =
                Succession { at: 1_700_000_000, salt: tessera_crypto::succession::SuccessorSalt::generate() };
            let unknown = tessera_crypto::Digest::of(format!("unknown {i}").as_bytes());
            let rotated = store.rotate_live_refresh(unknown, "app", &succession, &successor).await.unwrap();
            assert_eq!(rotated, None, "an unknown token is not rotated");
        }
        let writer = store.db.writer().expect("a Postgres store has a refresh writer");
        let plans = sea_orm::sqlx::query(
            "SELECT generic_plans, custom_plans FROM pg_prepared_statements WHERE statement LIKE 'WITH input AS%'",
        )
        .fetch_one(writer)
        .await
        .unwrap();
        let (generic, custom): (i64, i64) = (plans.get(0), plans.get(1));
        assert_eq!((generic, custom), (BATCHES, 0), "the batch's plans on the writer's connection");
        async fn shown(pool: &sea_orm::sqlx::PgPool) -> String {
            let row = sea_orm::sqlx::query("SHOW plan_cache_mode").fetch_one(pool).await.unwrap();
            row.get(0)
        }
        assert_eq!(shown(writer).await, "force_generic_plan");
        assert_eq!(shown(store.db.pool().get_postgres_connection_pool()).await, "auto");
        store.close().await.unwrap();
    }
}
