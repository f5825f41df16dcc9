//! Helpers shared by Tessera's test suites, and only by them: the one policy for a missing
//! test dependency (fail under `CI`, skip loudly elsewhere), the two backend pairs every flow
//! runs against and the macro that stamps a flow out for both, a fresh Postgres database per
//! test, a Redis key prefix per test, the admin credential of test nodes, and a process-wide
//! TRACE log to search for leaked secrets. It depends on no other Tessera crate, so every crate
//! may use it in its tests.

use sea_orm::{ConnectionTrait as _, Database, DatabaseConnection};
use std::fmt::Display;
use std::io::Write as _;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The Postgres server tests create their databases on (`TESSERA_TEST_POSTGRES_URL`, by
/// default the machine's own, user `postgres`, trust authentication), without a database name.
pub fn postgres_server() -> String {
    let url =
        std::env::var("TESSERA_TEST_POSTGRES_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".into());
    // A URL naming a database (`…/postgres`) names its server too.
    match url.split_once("://") {
        Some((scheme, rest)) => format!("{scheme}://{}", rest.split('/').next().unwrap_or(rest)),
        None => url,
    }
}

/// The Redis tests use (`TESSERA_TEST_REDIS_URL`, by default the machine's own).
pub fn redis_url() -> String {
    std::env::var("TESSERA_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned())
}

/// A missing dependency (a server, a browser): a failure when `CI` is set, otherwise a
/// skip that nobody can miss. Written straight to stderr, past the test harness's capture.
pub fn skip_or_fail(what: impl Display) {
    if std::env::var_os("CI").is_some() {
        panic!("{what}, and CI is set: this must not be skipped");
    }
    let mut err = std::io::stderr();
    let _ = writeln!(err, "\n********************************************************************");
    let _ = writeln!(err, "SKIPPED: {what}");
    let _ = writeln!(err, "********************************************************************\n");
}

/// The two backend pairs every flow runs against (DESIGN.md rule 3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pair {
    /// SQLite + the in-memory store: the embedded default, always available.
    SqliteMemory,
    /// Postgres + Redis: production's pair, on the machine's servers ([`ProductionStores`]).
    PostgresRedis,
}

/// Stamps out, for each flow named, `sqlite_memory::<flow>` and `postgres_redis::<flow>`: tests
/// that call `$run(Pair::…, super::<flow>)`. The flows are functions of the module the macro is
/// invoked in; `$run` is the harness's, and starts what the flow needs on that pair.
#[macro_export]
macro_rules! both_pairs {
    ($run:path; $($name:ident),* $(,)?) => {
        mod sqlite_memory {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $name() {
                    $run($crate::Pair::SqliteMemory, super::$name).await
                }
            )*
        }
        mod postgres_redis {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $name() {
                    $run($crate::Pair::PostgresRedis, super::$name).await
                }
            )*
        }
    };
}

/// The admin credential the test suites give their token services.
pub const ADMIN_TOKEN: &str = "test-admin-credential-0123456789";

/// Postgres and Redis for one test: a database and a key prefix of its own, both removed when
/// this value is dropped.
pub struct ProductionStores {
    database: PgDatabase,
    redis: RedisKeys,
}

impl ProductionStores {
    /// A database named `<name>_…` and a key prefix `<name>:…:`; why not, when either server
    /// does not answer.
    pub async fn reserve(name: &str) -> Result<Self, String> {
        let database = PgDatabase::create(name).await?;
        let redis = RedisKeys::reserve(&name.replace('_', "-")).await?;
        Ok(ProductionStores { database, redis })
    }

    pub fn database_url(&self) -> String {
        self.database.url()
    }

    pub fn redis_url(&self) -> String {
        redis_url()
    }

    pub fn key_prefix(&self) -> &str {
        self.redis.prefix()
    }
}

/// The lines a child process writes to `stream` (its stdout, say), as they come, read on a
/// thread of their own so that a test can wait for a line with a timeout. The thread reads to
/// the end even after the receiver is dropped: a pipe closed under the child would make its
/// next `println!` fail, and the child die of it.
pub fn lines_of(stream: impl std::io::Read + Send + 'static) -> std::sync::mpsc::Receiver<String> {
    use std::io::BufRead as _;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stream).lines().map_while(Result::ok) {
            // Nobody may be listening any more; the line is read all the same.
            let _ = tx.send(line);
        }
    });
    rx
}

/// A short random hex string for names that must not collide between tests.
pub fn unique() -> String {
    format!("{:016x}", rand::random::<u64>())
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// Databases older than this with a test prefix belong to killed runs and are dropped.
const LEFTOVER_AGE_SECS: u64 = 2 * 3600;

async fn admin_connection() -> Result<DatabaseConnection, String> {
    let url = format!("{}/postgres", postgres_server());
    let mut options = sea_orm::ConnectOptions::new(url);
    options
        .max_connections(1)
        .connect_timeout(Duration::from_secs(3))
        .acquire_timeout(Duration::from_secs(3))
        .sqlx_logging(false);
    Database::connect(options).await.map_err(|e| format!("Postgres at {} is unreachable: {e}", postgres_server()))
}

/// A Postgres database of its own for one test, named `<prefix>_<unix time>_<hex>`, dropped
/// (`WITH (FORCE)`) when this value is, even after a panic.
pub struct PgDatabase {
    name: String,
}

impl PgDatabase {
    /// Creates the database, first dropping this prefix's databases that killed runs left
    /// behind (old ones only: young ones may belong to tests running now).
    pub async fn create(prefix: &str) -> Result<Self, String> {
        let admin = admin_connection().await?;
        let rows = admin
            .query_all(sea_orm::Statement::from_string(
                admin.get_database_backend(),
                format!("SELECT datname FROM pg_database WHERE datname LIKE '{prefix}\\_%'"),
            ))
            .await
            .unwrap_or_default();
        let cutoff = unix_now().saturating_sub(LEFTOVER_AGE_SECS);
        for row in rows {
            let Ok(name) = row.try_get::<String>("", "datname") else { continue };
            let created =
                name.strip_prefix(prefix).and_then(|r| r.split('_').nth(1)).and_then(|s| s.parse::<u64>().ok());
            if created.is_some_and(|c| c < cutoff) {
                let _ = admin.execute_unprepared(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)")).await;
            }
        }
        let name = format!("{prefix}_{}_{}", unix_now(), unique());
        admin
            .execute_unprepared(&format!("CREATE DATABASE \"{name}\""))
            .await
            .map_err(|e| format!("creating the test database: {e}"))?;
        let _ = admin.close().await;
        Ok(Self { name })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn url(&self) -> String {
        format!("{}/{}", postgres_server(), self.name)
    }
}

impl Drop for PgDatabase {
    fn drop(&mut self) {
        let name = self.name.clone();
        // Drop cannot await; a thread with its own runtime does it.
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() else { return };
            rt.block_on(async {
                if let Ok(admin) = admin_connection().await {
                    let _ = admin.execute_unprepared(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)")).await;
                    let _ = admin.close().await;
                }
            });
        })
        .join();
    }
}

/// A Redis key prefix of its own for one test (`<namespace>:<hex>:`), whose keys are deleted
/// when this value is dropped. Never FLUSHDB: other tests share the server.
pub struct RedisKeys {
    prefix: String,
}

impl RedisKeys {
    /// Checks that Redis answers, then reserves a prefix.
    pub async fn reserve(namespace: &str) -> Result<Self, String> {
        let url = redis_url();
        let probe = async {
            let client = redis::Client::open(url.as_str()).map_err(|e| e.to_string())?;
            let mut con = client.get_multiplexed_async_connection().await.map_err(|e| e.to_string())?;
            redis::cmd("PING").query_async::<String>(&mut con).await.map_err(|e| e.to_string())
        };
        match tokio::time::timeout(Duration::from_secs(3), probe).await {
            Ok(Ok(_)) => Ok(Self { prefix: format!("{namespace}:{}:", unique()) }),
            Ok(Err(e)) => Err(format!("Redis at {url} is unreachable: {e}")),
            Err(_) => Err(format!("Redis at {url} did not answer")),
        }
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }
}

impl Drop for RedisKeys {
    fn drop(&mut self) {
        let Ok(client) = redis::Client::open(redis_url()) else { return };
        let Ok(mut con) = client.get_connection_with_timeout(Duration::from_secs(3)) else { return };
        let keys: Vec<String> = redis::cmd("SCAN")
            .cursor_arg(0)
            .arg("MATCH")
            .arg(format!("{}*", self.prefix))
            .arg("COUNT")
            .arg(1000)
            .clone()
            .iter(&mut con)
            .map(|it| it.collect())
            .unwrap_or_default();
        for chunk in keys.chunks(500) {
            let _: Result<(), _> = redis::cmd("DEL").arg(chunk).query(&mut con);
        }
    }
}

/// Everything the process logged at TRACE since the first call.
#[derive(Clone, Default)]
pub struct LogBuffer(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for LogBuffer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if let Ok(mut b) = self.0.lock() {
            b.extend_from_slice(buf);
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl LogBuffer {
    pub fn contents(&self) -> String {
        self.0.lock().map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default()
    }
}

/// Installs (once per process: tests may share one under `cargo test`) a subscriber that logs
/// Tessera's crates and the servers' frameworks at TRACE into a buffer, and returns it. Each
/// test searches the whole buffer for its own secrets. The test's own HTTP client stays at
/// INFO: what it logs is not the services' log.
pub fn trace_log() -> LogBuffer {
    static BUFFER: OnceLock<LogBuffer> = OnceLock::new();
    BUFFER
        .get_or_init(|| {
            let buffer = LogBuffer::default();
            let writer = buffer.clone();
            let filter = tracing_subscriber::EnvFilter::new(
                "info,tessera=trace,tessera_http_facade=trace,tessera_token_service=trace,tessera_core=trace,\
                 tessera_crypto=trace,tessera_ephemeral=trace,tessera_store=trace,actix_web=trace,actix_http=trace,\
                 actix_server=trace,tonic=trace,sqlx=trace,sea_orm=trace",
            );
            let _ = tracing_subscriber::fmt()
                .with_env_filter(filter)
                .with_writer(move || writer.clone())
                .with_ansi(false)
                .try_init();
            buffer
        })
        .clone()
}
