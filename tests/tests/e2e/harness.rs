//! Starts the real token service on a random port against a backend pair, with a fresh
//! database (Postgres) or file (SQLite) and a fresh key prefix (Redis) per test.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use tessera_core::clock::ManualClock;
use tessera_core::ErrorCode;
use tessera_proto::admin::v1 as adminpb;
use tessera_proto::admin::v1::admin_service_client::AdminServiceClient;
use tessera_proto::token::v1 as pb;
use tessera_proto::token::v1::token_service_client::TokenServiceClient;
use tessera_token_service::settings::Settings;
use tessera_token_service::Application;
use tonic::transport::Channel;

pub const ADMIN_TOKEN: &str = "e2e-admin-credential-0123456789";
pub const POSTGRES_ADMIN_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";
pub const REDIS_URL: &str = "redis://127.0.0.1:6379";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    SqliteMemory,
    PostgresRedis,
}

/// A service this test needs is unreachable: fail under CI, skip loudly elsewhere.
pub fn unreachable(what: &str, err: impl std::fmt::Display) -> Option<TestApp> {
    if std::env::var_os("CI").is_some() {
        panic!("{what} is unreachable and CI is set: {err}");
    }
    eprintln!("\n*** SKIPPED: {what} is unreachable ({err}); this test did not run ***\n");
    None
}

fn random_suffix() -> String {
    use rand::Rng as _;
    let n: u64 = rand::thread_rng().gen();
    format!("{}_{n:016x}", std::process::id())
}

/// A Postgres database that is dropped with the test.
pub struct PgDatabase {
    pub name: String,
}

impl PgDatabase {
    async fn create() -> Result<Self, String> {
        use sea_orm::{ConnectionTrait as _, Database};
        let admin = Database::connect(POSTGRES_ADMIN_URL).await.map_err(|e| e.to_string())?;
        // Sweep databases left by runs that were killed before they could drop theirs.
        let old = admin
            .query_all(sea_orm::Statement::from_string(
                sea_orm::DatabaseBackend::Postgres,
                "SELECT datname FROM pg_database WHERE datname LIKE 'tessera_e2e_%' \
                 AND (pg_stat_file('base/'||oid||'/PG_VERSION')).modification < now() - interval '2 hours'"
                    .to_owned(),
            ))
            .await
            .unwrap_or_default();
        for row in old {
            if let Ok(name) = row.try_get::<String>("", "datname") {
                let _ = admin.execute_unprepared(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)")).await;
            }
        }
        let name = format!("tessera_e2e_{}", random_suffix());
        admin.execute_unprepared(&format!("CREATE DATABASE \"{name}\"")).await.map_err(|e| e.to_string())?;
        Ok(Self { name })
    }

    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:5432/{}", self.name)
    }
}

impl Drop for PgDatabase {
    fn drop(&mut self) {
        let name = self.name.clone();
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() else {
                return;
            };
            rt.block_on(async {
                use sea_orm::{ConnectionTrait as _, Database};
                if let Ok(admin) = Database::connect(POSTGRES_ADMIN_URL).await {
                    let _ = admin.execute_unprepared(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)")).await;
                }
            });
        })
        .join();
    }
}

/// Deletes a test's Redis keys when it ends.
pub struct RedisPrefix {
    pub prefix: String,
}

impl Drop for RedisPrefix {
    fn drop(&mut self) {
        if let Ok(client) = redis::Client::open(REDIS_URL) {
            if let Ok(mut con) = client.get_connection() {
                let keys: Vec<String> =
                    redis::cmd("KEYS").arg(format!("{}*", self.prefix)).query(&mut con).unwrap_or_default();
                for k in keys {
                    let _: Result<(), _> = redis::cmd("DEL").arg(k).query(&mut con);
                }
            }
        }
    }
}

/// A running token service with clients for both gRPC services.
pub struct TestApp {
    pub settings: Settings,
    pub clock: Arc<ManualClock>,
    pub app: Option<Application>,
    pub addr: SocketAddr,
    pub token: TokenServiceClient<Channel>,
    pub dir: PathBuf,
    _pg: Option<PgDatabase>,
    _redis: Option<RedisPrefix>,
}

impl TestApp {
    /// Starts the service, or returns `None` after a loud skip when a store is unreachable
    /// outside CI.
    pub async fn spawn(backend: Backend) -> Option<TestApp> {
        Self::spawn_with(backend, |_| {}).await
    }

    pub async fn spawn_with(backend: Backend, tweak: impl FnOnce(&mut Settings)) -> Option<TestApp> {
        let dir = std::env::temp_dir().join(format!("tessera-e2e-{}", random_suffix()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut settings = Settings { data_dir: dir.clone(), ..Settings::default() };
        settings.grpc.listen = "127.0.0.1:0".into();
        settings.metrics.listen = "127.0.0.1:0".into();
        settings.admin.token = Some(ADMIN_TOKEN.to_owned().into());
        settings.demo.enabled = false;
        settings.issuer = Some("https://tessera.test".into());
        let (pg, redis_prefix) = match backend {
            Backend::SqliteMemory => (None, None),
            Backend::PostgresRedis => {
                let pg = match PgDatabase::create().await {
                    Ok(pg) => pg,
                    Err(e) => return unreachable("Postgres at 127.0.0.1:5432", e),
                };
                let probe = async {
                    let client = redis::Client::open(REDIS_URL).map_err(|e| e.to_string())?;
                    let mut con = client.get_multiplexed_async_connection().await.map_err(|e| e.to_string())?;
                    redis::cmd("PING").query_async::<String>(&mut con).await.map_err(|e| e.to_string())
                };
                if let Err(e) = tokio::time::timeout(std::time::Duration::from_secs(3), probe)
                    .await
                    .map_err(|_| "timed out".to_owned())
                    .and_then(|r| r)
                {
                    return unreachable("Redis at 127.0.0.1:6379", e);
                }
                settings.database.url = pg.url();
                let prefix = format!("tessera-e2e:{}:", random_suffix());
                settings.redis.url = REDIS_URL.into();
                settings.redis.key_prefix = prefix.clone();
                (Some(pg), Some(RedisPrefix { prefix }))
            }
        };
        tweak(&mut settings);
        let clock = Arc::new(ManualClock::default());
        let (app, addr, token) = start(&settings, &clock).await;
        Some(TestApp { settings, clock, app: Some(app), addr, token, dir, _pg: pg, _redis: redis_prefix })
    }

    /// Stops the service and starts it again on the same stores (Redis keeps its keys;
    /// the in-memory store starts empty, as a restarted process would).
    pub async fn restart(&mut self) {
        if let Some(app) = self.app.take() {
            app.shutdown().await.unwrap();
        }
        let (app, addr, token) = start(&self.settings, &self.clock).await;
        self.app = Some(app);
        self.addr = addr;
        self.token = token;
    }

    pub async fn admin(
        &self,
    ) -> AdminServiceClient<tonic::service::interceptor::InterceptedService<Channel, tessera_proto::AdminCredential>>
    {
        let channel = Channel::from_shared(format!("http://{}", self.addr)).unwrap().connect().await.unwrap();
        AdminServiceClient::with_interceptor(channel, tessera_proto::AdminCredential::new(ADMIN_TOKEN).unwrap())
    }

    /// Registers a client through the AdminService; returns (client_id, secret).
    pub async fn client(&self, spec: ClientSpec<'_>) -> (String, String) {
        let r = self
            .admin()
            .await
            .create_client(adminpb::CreateClientRequest {
                client_id: spec.id.to_owned(),
                name: format!("{} app", spec.id),
                public: spec.public,
                grant_types: spec.grants.iter().map(|s| s.to_string()).collect(),
                redirect_uris: spec.redirect_uris.iter().map(|s| s.to_string()).collect(),
                scopes: spec.scopes.split_whitespace().map(str::to_owned).collect(),
                skip_consent: spec.skip_consent,
                allow_implicit: spec.allow_implicit,
                allow_plain_pkce: spec.allow_plain_pkce,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        (r.client.unwrap().client_id, r.client_secret)
    }

    pub async fn user(&self, username: &str, password: &str) -> String {
        self.admin()
            .await
            .create_user(adminpb::CreateUserRequest {
                username: username.into(),
                password: password.into(),
                email: format!("{username}@example.com"),
                name: format!("{username} Example"),
            })
            .await
            .unwrap()
            .into_inner()
            .id
    }

    /// Makes the running node re-read its signing keys (what it does every minute).
    pub async fn tessera_refresh_keys(&self) {
        self.app.as_ref().unwrap().tessera().refresh_keys().await.unwrap();
    }

    /// Another replica on the same stores (its own in-memory store when Redis is not used).
    pub async fn second_node(&self) -> (Application, TokenServiceClient<Channel>) {
        let (app, _, client) = start(&self.settings, &self.clock).await;
        (app, client)
    }

    /// A fresh gRPC client (its own connection).
    pub async fn connect(&self) -> TokenServiceClient<Channel> {
        TokenServiceClient::connect(format!("http://{}", self.addr)).await.unwrap()
    }

    pub async fn issue(&self, req: pb::IssueTokenRequest) -> Result<pb::TokenResponse, tonic::Status> {
        self.token.clone().issue_token(req).await.map(|r| r.into_inner())
    }

    pub async fn introspect(&self, token: &str, caller: (&str, &str)) -> pb::IntrospectResponse {
        self.token
            .clone()
            .introspect(pb::IntrospectRequest {
                token: token.into(),
                token_type_hint: String::new(),
                client_id: caller.0.into(),
                client_secret: caller.1.into(),
            })
            .await
            .unwrap()
            .into_inner()
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        drop(self.app.take());
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

async fn start(
    settings: &Settings,
    clock: &Arc<ManualClock>,
) -> (Application, SocketAddr, TokenServiceClient<Channel>) {
    let (durable, ephemeral) = tessera_token_service::connect_stores(settings).await.unwrap();
    let app = Application::build_with(settings.clone(), durable, ephemeral, Arc::clone(clock) as _).await.unwrap();
    let addr = app.grpc_addr();
    let token = TokenServiceClient::connect(format!("http://{addr}")).await.unwrap();
    (app, addr, token)
}

#[derive(Clone, Copy)]
pub struct ClientSpec<'a> {
    pub id: &'a str,
    pub public: bool,
    pub grants: &'a [&'a str],
    pub redirect_uris: &'a [&'a str],
    pub scopes: &'a str,
    pub skip_consent: bool,
    pub allow_implicit: bool,
    pub allow_plain_pkce: bool,
}

impl Default for ClientSpec<'_> {
    fn default() -> Self {
        Self {
            id: "",
            public: false,
            grants: &[],
            redirect_uris: &[],
            scopes: "openid profile email api read write",
            skip_consent: false,
            allow_implicit: false,
            allow_plain_pkce: false,
        }
    }
}

/// The OAuth error code a status carries (DESIGN.md rule 2).
pub fn oauth_code(s: &tonic::Status) -> ErrorCode {
    tessera_proto::from_status(s).code
}

/// Asserts a call failed with this OAuth error code.
#[track_caller]
pub fn assert_oauth<T: std::fmt::Debug>(r: Result<T, tonic::Status>, code: ErrorCode, what: &str) -> tonic::Status {
    match r {
        Ok(v) => panic!("{what}: expected {code}, got success {v:?}"),
        Err(s) => {
            assert_eq!(oauth_code(&s), code, "{what}: wrong error ({s:?})");
            s
        }
    }
}

/// Decodes a JWT's header and claims without verifying.
pub fn jwt_parts(token: &str) -> (serde_json::Value, serde_json::Value) {
    use base64::Engine as _;
    let mut it = token.split('.');
    let dec = |s: &str| -> serde_json::Value {
        serde_json::from_slice(&base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(s).unwrap()).unwrap()
    };
    (dec(it.next().unwrap()), dec(it.next().unwrap()))
}

/// A PKCE verifier and its S256 challenge.
pub fn pkce_pair() -> (String, String) {
    let verifier = tessera_crypto::random_secret(48);
    let challenge = tessera_crypto::pkce_s256(&verifier);
    (verifier, challenge)
}

/// Parses the query (or fragment) of a redirect into pairs.
pub fn redirect_params(url: &str) -> std::collections::HashMap<String, String> {
    let part = url.split_once('#').map(|x| x.1).or_else(|| url.split_once('?').map(|x| x.1)).unwrap_or("");
    url::form_urlencoded::parse(part.as_bytes()).into_owned().collect()
}
