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
pub use tessera_token_service::settings::SecretUrl;
use tessera_token_service::settings::{AdminToken, Settings};
use tessera_token_service::Application;
use tonic::transport::Channel;

pub use tessera_testkit::{Pair, ADMIN_TOKEN};

/// Runs a flow on a node started on `pair` (for [`tessera_testkit::both_pairs`]); nothing when
/// the pair's servers are unreachable outside CI (after a loud skip).
pub async fn with_app<F: std::future::Future<Output = ()>>(pair: Pair, flow: impl FnOnce(TestApp) -> F) {
    if let Some(app) = TestApp::spawn(pair).await {
        flow(app).await
    }
}

/// A store this test needs is unreachable: fail under CI, skip loudly elsewhere.
fn unreachable(why: String) -> Option<TestApp> {
    tessera_testkit::skip_or_fail(format!("{why}; this Postgres + Redis test did not run"));
    None
}

/// A running token service with clients for both gRPC services.
pub struct TestApp {
    pub settings: Settings,
    pub clock: Arc<ManualClock>,
    pub app: Option<Application>,
    pub addr: SocketAddr,
    pub token: TokenServiceClient<Channel>,
    pub dir: PathBuf,
    _stores: Option<tessera_testkit::ProductionStores>,
}

impl TestApp {
    /// Starts the service, or returns `None` after a loud skip when a store is unreachable
    /// outside CI.
    pub async fn spawn(pair: Pair) -> Option<TestApp> {
        Self::spawn_with(pair, |_| {}).await
    }

    pub async fn spawn_with(pair: Pair, tweak: impl FnOnce(&mut Settings)) -> Option<TestApp> {
        let dir = std::env::temp_dir().join(format!("tessera-e2e-{}", tessera_testkit::unique()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut settings = Settings { data_dir: dir.clone(), ..Settings::default() };
        settings.grpc.listen = "127.0.0.1:0".parse().unwrap();
        settings.metrics.listen = Some("127.0.0.1:0".parse().unwrap());
        settings.admin.token = Some(AdminToken::new(ADMIN_TOKEN).unwrap());
        settings.demo.enabled = false;
        // Room for every burst a flow sends at once, whatever the core count: the flows count
        // throttled answers, and a full password queue would be counted with them.
        settings.passwords.queue = Some(64);
        // Flows that check reuse detection present a rotated token at once, which the retry
        // window would answer as a retry: it is off here, and on in the tests of it.
        settings.tokens.refresh_retry_window = 0;
        settings.issuer = Some("https://tessera.test".parse().unwrap());
        let stores = match pair {
            Pair::SqliteMemory => None,
            Pair::PostgresRedis => {
                let stores = match tessera_testkit::ProductionStores::reserve("tessera_e2e").await {
                    Ok(stores) => stores,
                    Err(e) => return unreachable(e),
                };
                settings.database.url = Some(SecretUrl::database(&stores.database_url()).unwrap());
                // Tests run side by side on one Postgres: each node keeps few connections.
                settings.database.max_connections = 8;
                settings.redis.url = Some(SecretUrl::redis(&stores.redis_url()).unwrap());
                settings.redis.key_prefix = stores.key_prefix().to_owned();
                Some(stores)
            }
        };
        tweak(&mut settings);
        let clock = Arc::new(ManualClock::default());
        let (app, addr, token) = start(&settings, &clock).await;
        Some(TestApp { settings, clock, app: Some(app), addr, token, dir, _stores: stores })
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
                watch_revocations: spec.watch_revocations,
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

    /// Revokes a token (RFC 7009) as `caller`.
    pub async fn revoke(&self, token: &str, caller: &(String, String)) {
        let request = pb::RevokeRequest {
            token: token.into(),
            token_type_hint: String::new(),
            client_id: caller.0.clone(),
            client_secret: caller.1.clone(),
        };
        self.token.clone().revoke(request).await.unwrap();
    }

    /// Allows a client to watch revocations, or stops allowing it.
    pub async fn permit_watching(&self, client_id: &str, allowed: bool) -> Result<adminpb::Client, tonic::Status> {
        let request = adminpb::SetClientPermissionsRequest { client_id: client_id.into(), watch_revocations: allowed };
        self.admin().await.set_client_permissions(request).await.map(tonic::Response::into_inner)
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
    pub watch_revocations: bool,
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
            watch_revocations: false,
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
