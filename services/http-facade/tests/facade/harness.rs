//! Starts the real token service and the facade on free ports, on either backend pair, and
//! drives them with raw HTTP requests.

use base64::Engine as _;
use reqwest::header::HeaderMap;
use reqwest::{Method, StatusCode};
use serde_json::Value;
use sha2::Digest as _;
use std::net::TcpListener;
pub use tessera_http_facade::Upstream;
use tessera_http_facade::{FacadeApplication, FacadeConfig};
use tessera_proto::admin::v1 as admin;
use tessera_proto::admin::v1::admin_service_client::AdminServiceClient;
use tessera_proto::AdminCredential;
use tessera_token_service::settings::{AdminToken, SecretUrl, Settings};
pub use tessera_token_service::Application as TokenServiceApp;
use tessera_token_service::Application;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

pub use tessera_testkit::{Pair, ADMIN_TOKEN};

/// Runs a flow on a pair (for [`tessera_testkit::both_pairs`]): the flow starts what it needs
/// with [`TestApp::spawn`]; there, the embedded default runs behind a facade in the token
/// service's process (`tessera serve`, a local channel) and Postgres + Redis behind a facade
/// that calls the token service's gRPC port, each as it is deployed.
pub async fn with_pair<F: std::future::Future<Output = ()>>(pair: Pair, flow: impl FnOnce(Pair) -> F) {
    flow(pair).await
}

/// A running token service and facade, with an admin client and a plain HTTP client.
pub struct TestApp {
    pub base: String,
    pub http: reqwest::Client,
    pub admin: AdminServiceClient<InterceptedService<Channel, AdminCredential>>,
    token_service: Option<Application>,
    facade: Option<FacadeApplication>,
    _dir: tempfile::TempDir,
    // Declared last: dropped after the services have stopped.
    _stores: Option<tessera_testkit::ProductionStores>,
}

pub use tessera_testkit::skip_or_fail;

/// What stands between the facade and the token service in [`TestApp::spawn_behind`].
pub trait Relay {
    fn upstream(&self, token_service: &Application) -> Upstream;
}

/// Nothing: the facade calls the token service's gRPC port directly.
impl Relay for std::net::SocketAddr {
    fn upstream(&self, _: &Application) -> Upstream {
        Upstream::grpc(&format!("http://{self}")).unwrap()
    }
}

/// Not even a socket: the facade calls the token service over its local channel, as in
/// `tessera serve`.
pub struct Local;

impl Relay for Local {
    fn upstream(&self, token_service: &Application) -> Upstream {
        Upstream::Local(token_service.local_channel())
    }
}

impl TestApp {
    /// Starts both services; `None` (after a loud SKIPPED) when the pair's servers are
    /// unreachable outside CI.
    pub async fn spawn(pair: Pair) -> Option<Self> {
        Self::spawn_with(pair, |_| {}).await
    }

    pub async fn spawn_with(pair: Pair, tweak: impl FnOnce(&mut Settings)) -> Option<Self> {
        match pair {
            Pair::SqliteMemory => Self::spawn_behind(pair, tweak, |_| async { Local }).await.map(|(app, _)| app),
            Pair::PostgresRedis => {
                Self::spawn_behind(pair, tweak, |addr| async move { addr }).await.map(|(app, _)| app)
            }
        }
    }

    /// Starts both services with something between them: `relay` gets the token service's
    /// gRPC address and returns what the facade should call (e.g. a proxy that can be cut).
    pub async fn spawn_behind<R: Relay, F: std::future::Future<Output = R>>(
        pair: Pair,
        tweak: impl FnOnce(&mut Settings),
        relay: impl FnOnce(std::net::SocketAddr) -> F,
    ) -> Option<(Self, R)> {
        let dir = tempfile::tempdir().unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let base = format!("http://{addr}");

        let mut settings = Settings { data_dir: dir.path().to_owned(), ..Settings::default() };
        settings.grpc.listen = "127.0.0.1:0".parse().unwrap();
        settings.metrics.listen = Some("127.0.0.1:0".parse().unwrap());
        settings.http.listen = addr;
        settings.http.public_url = Some(base.parse().unwrap());
        settings.admin.token = Some(AdminToken::new(ADMIN_TOKEN).unwrap());
        settings.demo.enabled = false;
        // Flows that check reuse detection present a rotated token at once, which the retry
        // window would answer as a retry.
        settings.tokens.refresh_retry_window = 0;
        settings.tokens.device_interval = 1;
        let stores = match pair {
            Pair::SqliteMemory => None,
            Pair::PostgresRedis => match tessera_testkit::ProductionStores::reserve("tessera_facade").await {
                Ok(stores) => {
                    settings.database.url = Some(SecretUrl::database(&stores.database_url()).unwrap());
                    // Tests run side by side on one Postgres: each node keeps few connections.
                    settings.database.max_connections = 8;
                    settings.redis.url = Some(SecretUrl::redis(&stores.redis_url()).unwrap());
                    settings.redis.key_prefix = stores.key_prefix().to_owned();
                    Some(stores)
                }
                Err(why) => {
                    skip_or_fail(format!("Postgres + Redis tests cannot run: {why}"));
                    return None;
                }
            },
        };
        tweak(&mut settings);
        let token_service = Application::build(settings.clone()).await.expect("the token service starts");
        let grpc_url = format!("http://{}", token_service.grpc_addr());
        let relay = relay(token_service.grpc_addr()).await;
        let facade =
            FacadeApplication::build_with_listener(facade_config(&settings), relay.upstream(&token_service), listener)
                .await
                .expect("the facade starts");
        let channel = tonic::transport::Endpoint::from_shared(grpc_url.clone()).unwrap().connect().await.unwrap();
        let app = Self {
            base,
            http: plain_client(),
            admin: AdminServiceClient::with_interceptor(channel, AdminCredential::new(ADMIN_TOKEN).unwrap()),
            token_service: Some(token_service),
            facade: Some(facade),
            _dir: dir,
            _stores: stores,
        };
        Some((app, relay))
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// The token service's gRPC address.
    pub fn grpc_addr(&self) -> std::net::SocketAddr {
        self.token_service.as_ref().expect("the token service is running").grpc_addr()
    }

    /// The token service's `GET /metrics` URL (its own listener, on a free port).
    pub fn token_service_metrics_url(&self) -> String {
        let ts = self.token_service.as_ref().expect("the token service is running");
        format!("http://{}/metrics", ts.metrics_addr().expect("the metrics listener is on"))
    }

    /// Stops the token service, leaving the facade up.
    pub async fn stop_token_service(&mut self) {
        if let Some(ts) = self.token_service.take() {
            ts.shutdown().await.unwrap();
        }
    }

    pub async fn stop(mut self) {
        if let Some(f) = self.facade.take() {
            f.stop().await.unwrap();
        }
        self.stop_token_service().await;
    }

    /// Creates a client; returns its id and secret (empty for public clients).
    pub async fn create_client(&self, spec: admin::CreateClientRequest) -> (String, String) {
        let created = self.admin.clone().create_client(spec).await.expect("the client is created").into_inner();
        (created.client.unwrap().client_id, created.client_secret)
    }

    /// A confidential client with the given grants, redirect URI `http://127.0.0.1:9/cb`, and
    /// the scopes openid profile email offline_access api.
    pub async fn confidential(&self, grants: &[&str]) -> (String, String) {
        self.create_client(client_spec(grants, false)).await
    }

    pub async fn create_user(&self, username: &str, password: &str) {
        self.admin
            .clone()
            .create_user(admin::CreateUserRequest {
                username: username.into(),
                password: password.into(),
                email: format!("{username}@example.com"),
                name: format!("User {username}"),
            })
            .await
            .expect("the user is created");
    }

    pub async fn post_form(&self, path: &str, form: &[(&str, &str)], basic: Option<(&str, &str)>) -> Answer {
        let mut r = self.http.post(self.url(path)).form(form);
        if let Some((id, secret)) = basic {
            r = r.header("Authorization", basic_header(id, secret));
        }
        Answer::of(r.send().await.unwrap()).await
    }

    pub async fn post_json(&self, path: &str, body: &str, basic: Option<(&str, &str)>) -> Answer {
        let mut r = self
            .http
            .post(self.url(path))
            .header("Content-Type", "application/json")
            .header("Accept", "application/json")
            .body(body.to_owned());
        if let Some((id, secret)) = basic {
            r = r.header("Authorization", basic_header(id, secret));
        }
        Answer::of(r.send().await.unwrap()).await
    }

    pub async fn get(&self, path: &str) -> Answer {
        Answer::of(self.http.get(self.url(path)).send().await.unwrap()).await
    }

    pub async fn raw(&self, method: Method, path: &str, headers: &[(&str, &str)], body: Vec<u8>) -> Answer {
        let mut r = self.http.request(method, self.url(path)).body(body);
        for (k, v) in headers {
            r = r.header(*k, *v);
        }
        Answer::of(r.send().await.unwrap()).await
    }

    /// A fresh browser-like client: its own cookie jar, redirects not followed.
    pub fn browser(&self) -> Browser {
        Browser {
            base: self.base.clone(),
            http: reqwest::Client::builder()
                .cookie_store(true)
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .unwrap(),
        }
    }
}

pub fn client_spec(grants: &[&str], public: bool) -> admin::CreateClientRequest {
    admin::CreateClientRequest {
        client_id: String::new(),
        name: "Test App".into(),
        public,
        grant_types: grants.iter().map(|g| g.to_string()).collect(),
        redirect_uris: vec![CALLBACK.into()],
        scopes: ["openid", "profile", "email", "offline_access", "api"].map(String::from).to_vec(),
        ..Default::default()
    }
}

/// The redirect URI of test clients; never visited (redirects are not followed).
pub const CALLBACK: &str = "http://127.0.0.1:9/cb";

pub fn plain_client() -> reqwest::Client {
    reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap()
}

/// RFC 6749 §2.3.1: form-urlencode id and secret, join with ':', base64.
pub fn basic_header(id: &str, secret: &str) -> String {
    let enc = |s: &str| url::form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
    format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{}:{}", enc(id), enc(secret))))
}

/// An HTTP answer, read whole.
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub text: String,
}

impl Answer {
    pub async fn of(r: reqwest::Response) -> Self {
        let status = r.status();
        let headers = r.headers().clone();
        let text = r.text().await.unwrap();
        Self { status, headers, text }
    }

    pub fn json(&self) -> Value {
        serde_json::from_str(&self.text).unwrap_or_else(|e| panic!("not JSON ({e}): {} {}", self.status, self.text))
    }

    pub fn header(&self, name: &str) -> &str {
        self.headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or("")
    }

    pub fn content_type(&self) -> &str {
        self.header("content-type")
    }

    /// Asserts an RFC 6749 §5.2 JSON error with this status and code.
    #[track_caller]
    pub fn assert_error(&self, status: u16, code: &str) -> &Self {
        assert_eq!(self.status.as_u16(), status, "{}", self.text);
        assert!(self.content_type().starts_with("application/json"), "{}", self.content_type());
        let j = self.json();
        assert_eq!(j["error"], code, "{}", self.text);
        assert!(j["error_description"].is_string(), "{}", self.text);
        self
    }

    /// Asserts a successful token response (RFC 6749 §5.1) and returns it.
    #[track_caller]
    pub fn assert_tokens(&self) -> Value {
        assert_eq!(self.status, StatusCode::OK, "{}", self.text);
        assert_eq!(self.header("cache-control"), "no-store");
        assert_eq!(self.header("pragma"), "no-cache");
        let j = self.json();
        assert!(j["access_token"].as_str().is_some_and(|t| !t.is_empty()), "{j}");
        assert_eq!(j["token_type"], "Bearer");
        assert!(j["expires_in"].as_i64().is_some_and(|n| n > 0), "{j}");
        for k in ["refresh_token", "id_token", "scope"] {
            if let Some(v) = j.get(k) {
                assert!(v.as_str().is_some_and(|s| !s.is_empty()), "{k} is present but empty: {j}");
            }
        }
        j
    }

    pub fn location(&self) -> String {
        self.header("location").to_owned()
    }
}

/// A browser without JavaScript: a cookie jar and HTML forms read by hand.
pub struct Browser {
    pub base: String,
    pub http: reqwest::Client,
}

impl Browser {
    pub async fn get(&self, path_or_url: &str) -> Answer {
        let url = if path_or_url.starts_with("http") {
            path_or_url.to_owned()
        } else {
            format!("{}{path_or_url}", self.base)
        };
        Answer::of(self.http.get(url).send().await.unwrap()).await
    }

    /// Submits the page's form (its hidden fields plus `extra`) to `action`.
    pub async fn submit(&self, page: &Answer, action: &str, extra: &[(&str, &str)]) -> Answer {
        let mut fields = hidden_fields(&page.text);
        for (k, v) in extra {
            fields.retain(|(name, _)| name != k);
            fields.push((k.to_string(), v.to_string()));
        }
        Answer::of(self.http.post(format!("{}{action}", self.base)).form(&fields).send().await.unwrap()).await
    }

    /// Signs in on a login page and approves a consent page if one follows; returns the
    /// final answer (a redirect to the client).
    pub async fn login_and_consent(&self, authorize_path: &str, username: &str, password: &str) -> Answer {
        let login = self.get(authorize_path).await;
        assert_eq!(login.status, StatusCode::OK, "{}", login.text);
        assert!(login.text.contains("name=\"password\""), "not a login page: {}", login.text);
        let next = self.submit(&login, "/login", &[("username", username), ("password", password)]).await;
        if next.status == StatusCode::OK && next.text.contains("name=\"decision\"") {
            return self.submit(&next, "/consent", &[("decision", "approve")]).await;
        }
        next
    }
}

fn unescape(s: &str) -> String {
    s.replace("&#34;", "\"")
        .replace("&quot;", "\"")
        .replace("&#39;", "'")
        .replace("&#x27;", "'")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&amp;", "&")
}

/// The hidden inputs of a page, in order.
pub fn hidden_fields(html: &str) -> Vec<(String, String)> {
    let mut out = vec![];
    for chunk in html.split("<input type=\"hidden\" ").skip(1) {
        let name = chunk.split("name=\"").nth(1).and_then(|s| s.split('"').next()).unwrap_or("");
        let value = chunk.split("value=\"").nth(1).and_then(|s| s.split('"').next()).unwrap_or("");
        out.push((unescape(name), unescape(value)));
    }
    out
}

/// The query (or fragment) parameters of a URL.
pub fn params_of(url: &str, fragment: bool) -> Vec<(String, String)> {
    let u = url::Url::parse(url).unwrap();
    let part = if fragment { u.fragment().unwrap_or("").to_owned() } else { u.query().unwrap_or("").to_owned() };
    url::form_urlencoded::parse(part.as_bytes()).into_owned().collect()
}

pub fn param(params: &[(String, String)], name: &str) -> Option<String> {
    params.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone())
}

/// A PKCE verifier and its S256 challenge (RFC 7636 §4.1, §4.2).
pub fn pkce() -> (String, String) {
    let verifier = tessera_crypto::random_secret(48);
    let challenge = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(sha2::Sha256::digest(verifier.as_bytes()));
    (verifier, challenge)
}

/// The claims of a JWT, unverified (the token service verified them).
pub fn jwt_claims(jwt: &str) -> Value {
    let payload = jwt.split('.').nth(1).unwrap();
    serde_json::from_slice(&base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap()
}

pub fn encode(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

/// What the facade reads of the settings (as the `tessera` command makes it).
pub fn facade_config(settings: &Settings) -> FacadeConfig {
    FacadeConfig::from_sections(&settings.http, &settings.facade, &settings.shutdown)
}
