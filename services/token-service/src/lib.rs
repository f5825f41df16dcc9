//! The token service: Tessera's core served over gRPC (tonic) — `TokenService`,
//! `AdminService`, the standard health service and server reflection — wired at start-up to
//! the stores its settings name (SQLite + in-memory by default, Postgres + Redis in
//! production). Each RPC is a trace span (joined to the caller's trace when it sends a W3C
//! `traceparent`) and is counted in the Prometheus series served on `metrics.listen`.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::todo))]

pub mod admin;
mod connection;
pub mod errors;
pub mod grpc;
pub mod metadata;
pub mod observe;
pub mod settings;
pub mod source;
pub mod watch;

use anyhow::Context as _;
use observe::Metrics;
use settings::Settings;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tessera_core::admin::{NewClient, NewUser};
use tessera_core::clock::{Clock, SystemClock};
use tessera_core::model::{ClientSecret, Password};
use tessera_core::ports::{AuditLog, Durable, Ephemeral};
use tessera_core::Tessera;
use tessera_proto::admin::v1::admin_service_server::AdminServiceServer;
use tessera_proto::local::LocalChannel;
use tessera_proto::token::v1::token_service_server::TokenServiceServer;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// The largest gRPC message accepted: far above any honest OAuth request.
const MAX_MESSAGE_BYTES: usize = 64 * 1024;

/// Credentials of the demo client and user created on a first start.
#[derive(Clone, Debug)]
pub struct DemoCredentials {
    pub client_id: String,
    pub client_secret: ClientSecret,
    pub username: String,
    pub password: Password,
}

/// Connects the stores the settings name and runs the durable store's migrations.
pub async fn connect_stores(settings: &Settings) -> anyhow::Result<(Arc<dyn Durable>, Arc<dyn Ephemeral>)> {
    let store = connect_durable(settings).await?;
    let ephemeral: Arc<dyn Ephemeral> = match &settings.redis.url {
        None => Arc::new(tessera_ephemeral::MemoryEphemeral::new()),
        Some(url) => Arc::new(
            tessera_ephemeral::RedisEphemeral::connect(url.expose(), &settings.redis.key_prefix)
                .await
                .context("connecting to Redis")?,
        ),
    };
    Ok((Arc::new(store), ephemeral))
}

/// Connects the durable store and brings its schema up to date.
async fn connect_durable(settings: &Settings) -> anyhow::Result<tessera_store::SqlStore> {
    let url = settings.database_url();
    if url.starts_with("sqlite:") {
        std::fs::create_dir_all(&settings.data_dir)
            .with_context(|| format!("creating the data directory {}", settings.data_dir.display()))?;
    }
    let pool = tessera_store::PoolOptions { max_connections: settings.database.max_connections };
    let store = tessera_store::SqlStore::connect_with(&url, pool).await.context("connecting to the database")?;
    store.migrate().await.context("running database migrations")?;
    Ok(store)
}

/// Runs the migrations and exits: `tessera migrate`. Needs only the database.
pub async fn migrate(settings: &Settings) -> anyhow::Result<()> {
    connect_durable(settings).await.map(|_| ())
}

/// The local channel over `routes`, with the server's own layer: each call is a task of its
/// own, as a call over the network is, and is cancelled when its caller gives up on it, as a
/// reset HTTP/2 stream is, or when the deadline its `grpc-timeout` sets has passed
/// (DEADLINE_EXCEEDED), as tonic's server does. Once `open` is false (the service is shutting
/// down) calls fail as UNAVAILABLE, as a closed port would; a task that ends without an answer
/// (it panicked) is UNAVAILABLE too, as a broken stream is. At most [`LOCAL_CALLS_IN_FLIGHT`]
/// calls run at once (DESIGN.md rule 8): later ones wait for a place, as requests wait in a
/// network channel's buffer, within their deadline.
///
/// The call's task runs on the caller's runtime (the facade's worker thread that serves the
/// HTTP request), inside the server's runtime context ([`within`]). Handing each call to the
/// server's runtime instead woke one of its threads for the call and the facade's thread again
/// for the answer (README, Performance: "A local call on the caller's thread").
fn local_channel(routes: tonic::service::Routes, open: Arc<AtomicBool>) -> LocalChannel {
    use tower_layer::Layer as _;
    use tower_service::Service as _;
    let runtime = tokio::runtime::Handle::current();
    let service = tessera_telemetry::propagation::TraceContextLayer.layer(routes.prepare());
    let places = Arc::new(tokio::sync::Semaphore::new(LOCAL_CALLS_IN_FLIGHT));
    LocalChannel::new(move |request| {
        if !open.load(Ordering::Acquire) {
            let stopped = tonic::Status::unavailable("the token service has stopped");
            return Box::pin(std::future::ready(Err(stopped.into())));
        }
        let deadline = grpc_timeout(request.headers());
        let (runtime, mut service, places) = (runtime.clone(), service.clone(), Arc::clone(&places));
        let call = async move {
            let place = places.acquire_owned().await.map_err(|_| tonic::Status::unavailable("stopping"))?;
            let serve = async move {
                let answer = service.call(request).await;
                drop(place);
                answer
            };
            // The caller's thread runs the call (see `within`).
            let here = tokio::runtime::Handle::try_current().unwrap_or_else(|_| runtime.clone());
            let task = AbortOnDrop(here.spawn(within(runtime, serve)));
            task.await.map_err(|_| tonic::Status::unavailable("the token service's task ended without an answer"))
        };
        Box::pin(async move {
            let joined = match deadline {
                Some(deadline) => match tokio::time::timeout(deadline, call).await {
                    Ok(joined) => joined,
                    Err(_) => return Err(tonic::Status::deadline_exceeded("the call ran past its deadline").into()),
                },
                None => call.await,
            };
            match joined {
                Ok(answer) => answer,
                Err(status) => Err(status.into()),
            }
        })
    })
}

/// `work` inside `runtime`'s context wherever it runs: each of its polls, and its drop when it
/// is cancelled. What it spawns, the timers it sets and the sockets it opens belong to
/// `runtime`, and so does what its drop starts (sqlx hands a dropped connection back to its
/// pool in a task of its own). A pooled database or Redis connection opened by a call made on
/// a facade's worker thread must not die with that thread's runtime.
fn within<F: std::future::Future>(runtime: tokio::runtime::Handle, work: F) -> Within<F> {
    Within { runtime, work: Some(Box::pin(work)) }
}

/// What [`within`] returns.
struct Within<F> {
    runtime: tokio::runtime::Handle,
    /// `None` once it has answered.
    work: Option<std::pin::Pin<Box<F>>>,
}

impl<F: std::future::Future> std::future::Future for Within<F> {
    type Output = F::Output;

    fn poll(mut self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<F::Output> {
        let this = &mut *self;
        let _inside = this.runtime.enter();
        let Some(work) = this.work.as_mut() else { return std::task::Poll::Pending };
        let answer = std::task::ready!(work.as_mut().poll(cx));
        this.work = None;
        std::task::Poll::Ready(answer)
    }
}

impl<F> Drop for Within<F> {
    fn drop(&mut self) {
        if let Some(work) = self.work.take() {
            let _inside = self.runtime.enter();
            drop(work);
        }
    }
}

/// Calls over the local channel that may run at once: as many as one network channel lets
/// through its buffer.
const LOCAL_CALLS_IN_FLIGHT: usize = 1024;

/// The deadline a caller set in `grpc-timeout` (gRPC over HTTP/2: at most 8 digits and a unit).
fn grpc_timeout(headers: &tonic::codegen::http::HeaderMap) -> Option<Duration> {
    let value = headers.get("grpc-timeout")?.to_str().ok()?;
    let (digits, unit) = value.split_at(value.len().checked_sub(1)?);
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.saturating_mul(3600)),
        "M" => Duration::from_secs(n.saturating_mul(60)),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// A task that is aborted when its handle is dropped before it finished.
struct AbortOnDrop<T>(JoinHandle<T>);

impl<T> std::future::Future for AbortOnDrop<T> {
    type Output = Result<T, tokio::task::JoinError>;

    fn poll(mut self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<Self::Output> {
        std::pin::Pin::new(&mut self.0).poll(cx)
    }
}

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A running token service.
pub struct Application {
    grpc_addr: SocketAddr,
    metrics_addr: Option<SocketAddr>,
    tessera: Arc<Tessera>,
    demo: Option<DemoCredentials>,
    local: LocalChannel,
    local_open: Arc<AtomicBool>,
    shutdown: Option<oneshot::Sender<()>>,
    /// Tells open watches to end, so a graceful shutdown does not wait for them.
    closing: tokio::sync::watch::Sender<bool>,
    grace: Duration,
    server: JoinHandle<Result<(), tonic::transport::Error>>,
    background: Vec<JoinHandle<()>>,
}

impl Application {
    /// Connects the configured stores and binds the gRPC listener (port 0 picks a free port).
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        let (durable, ephemeral) = connect_stores(&settings).await?;
        Self::build_with(settings, durable, ephemeral, Arc::new(SystemClock)).await
    }

    /// Builds on stores and a clock the caller provides.
    pub async fn build_with(
        settings: Settings,
        durable: Arc<dyn Durable>,
        ephemeral: Arc<dyn Ephemeral>,
        clock: Arc<dyn Clock>,
    ) -> anyhow::Result<Self> {
        let metrics = Arc::new(Metrics::new().context("registering the metrics")?);
        // Bound before anything starts, so a taken port stops the start-up naming the key.
        let metrics_listener = observe::bind_metrics(settings.metrics.listen).await?;
        let audit: Arc<dyn AuditLog> = Arc::new(observe::CountedAudit::new(durable.clone(), Arc::clone(&metrics)));
        // Settings built in code (not through `Settings::load`) are checked here too.
        settings.validate()?;
        let started = Tessera::start_with_audit(settings.core_config()?, durable, audit, ephemeral, clock)
            .await
            // At start-up the operator is the audience: show the cause, not the client-safe text.
            .map_err(|e| {
                anyhow::anyhow!("starting the token service: {}", e.detail.as_deref().unwrap_or(&e.description))
            })?;
        let tessera = started.tessera;
        let demo = if started.first_start && settings.demo.enabled {
            Some(seed_demo(&tessera, &settings).await?)
        } else {
            None
        };
        let admin_token = admin_token(&settings)?;

        let listener = TcpListener::bind(settings.grpc.listen)
            .await
            .with_context(|| format!("binding the gRPC listener on {}", settings.grpc.listen))?;
        let grpc_addr = listener.local_addr()?;

        let (mut health, health_service) = tonic_health::server::health_reporter();
        health.set_serving::<TokenServiceServer<grpc::TokenApi>>().await;
        let reflection = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(tessera_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .build_v1()
            .context("building the reflection service")?;
        let (closing, closing_rx) = tokio::sync::watch::channel(false);
        let token = TokenServiceServer::new(grpc::TokenApi {
            tessera: Arc::clone(&tessera),
            metrics: Arc::clone(&metrics),
            metadata_json: metadata::server_metadata(&settings).to_string().into(),
            trusted_relays: settings.grpc.trusted_relays.clone(),
            closing: closing_rx,
            watchers: Arc::new(tokio::sync::Semaphore::new(watch::MAX_WATCHERS)),
            watchers_by_client: Default::default(),
        })
        .max_decoding_message_size(MAX_MESSAGE_BYTES);
        let guard = admin::AdminGuard {
            token_digest: tessera_crypto::Digest::of(admin_token.as_bytes()),
            metrics: Arc::clone(&metrics),
        };
        let admin = tonic::service::interceptor::InterceptedService::new(
            AdminServiceServer::new(admin::AdminApi { tessera: Arc::clone(&tessera), metrics: Arc::clone(&metrics) })
                .max_decoding_message_size(MAX_MESSAGE_BYTES),
            guard,
        );

        let routes =
            tonic::service::Routes::new(health_service).add_service(reflection).add_service(token).add_service(admin);
        let local_open = Arc::new(AtomicBool::new(true));
        let local = local_channel(routes.clone(), Arc::clone(&local_open));

        let (tx, rx) = oneshot::channel::<()>();
        let incoming = connection::accept(
            listener,
            settings.grpc.max_connections as usize,
            connection::PREFACE_WITHIN,
            Arc::clone(&metrics),
        )?;
        let server = tokio::spawn(
            tonic::transport::Server::builder()
                // Dead peers (a watcher's vanished host) are found and their streams ended.
                .http2_keepalive_interval(Some(Duration::from_secs(30)))
                .http2_keepalive_timeout(Some(Duration::from_secs(10)))
                // A caller's `traceparent` becomes the parent of the RPC's span.
                .layer(tessera_telemetry::propagation::TraceContextLayer)
                .add_routes(routes)
                .serve_with_incoming_shutdown(incoming, async {
                    let _ = rx.await;
                }),
        );

        let mut background = vec![
            tokio::spawn(Arc::clone(&tessera).run_revocation_sync()),
            tokio::spawn(watch_health(Arc::clone(&tessera), health)),
            tokio::spawn(Arc::clone(&tessera).run_key_refresh(Duration::from_secs(60))),
        ];
        let metrics_addr = metrics_listener.map(|(listener, addr)| {
            background.push(observe::serve_metrics(listener, Arc::clone(&metrics)));
            addr
        });
        match metrics_addr {
            Some(addr) => tracing::info!(%grpc_addr, metrics = %addr, "token service listening"),
            None => tracing::info!(%grpc_addr, "token service listening (metrics listener off)"),
        }
        let grace = Duration::from_secs(settings.shutdown.grace_period);
        Ok(Self {
            grpc_addr,
            metrics_addr,
            local,
            local_open,
            tessera,
            demo,
            shutdown: Some(tx),
            closing,
            grace,
            server,
            background,
        })
    }

    pub fn grpc_addr(&self) -> SocketAddr {
        self.grpc_addr
    }

    /// The same services as [`Self::grpc_addr`] serves, for a facade in this process: no
    /// socket, no HTTP/2 framing. A call runs on the thread that makes it, inside the context
    /// of this runtime (the one that built the application): what it spawns, the timers it
    /// sets and the connections it opens belong to this runtime. Once the service shuts down
    /// calls fail as UNAVAILABLE. Stop a facade in this process before the service, so that
    /// its requests in flight finish.
    pub fn local_channel(&self) -> LocalChannel {
        self.local.clone()
    }

    /// Where `GET /metrics` answers; `None` when `metrics.listen` is empty.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_addr
    }

    pub fn tessera(&self) -> &Arc<Tessera> {
        &self.tessera
    }

    /// The demo credentials, when this start created them.
    pub fn demo(&self) -> Option<&DemoCredentials> {
        self.demo.as_ref()
    }

    /// Stops accepting, lets in-flight calls over the network finish (for at most the grace
    /// period), and returns when the server has stopped. The local channel refuses new calls
    /// at once; calls already made over it are not waited for.
    pub async fn shutdown(mut self) -> anyhow::Result<()> {
        self.local_open.store(false, Ordering::Release);
        self.closing.send_replace(true);
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        for task in &self.background {
            task.abort();
        }
        let server = std::mem::replace(&mut self.server, tokio::spawn(async { Ok(()) }));
        let abort = server.abort_handle();
        match tokio::time::timeout(self.grace, server).await {
            Ok(joined) => {
                joined.context("the gRPC server task failed")?.context("the gRPC server failed")?;
            }
            Err(_) => {
                tracing::warn!(
                    grace_seconds = self.grace.as_secs(),
                    "calls still running after the grace period; stopping"
                );
                abort.abort();
            }
        }
        Ok(())
    }

    /// Serves until `signal` completes, then shuts down gracefully.
    pub async fn run_until(self, signal: impl std::future::Future<Output = ()>) -> anyhow::Result<()> {
        signal.await;
        tracing::info!("shutting down");
        self.shutdown().await
    }
}

impl Drop for Application {
    fn drop(&mut self) {
        self.local_open.store(false, Ordering::Release);
        self.closing.send_replace(true);
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        for task in &self.background {
            task.abort();
        }
    }
}

/// Reports NOT_SERVING on the standard health service while a store cannot be reached.
async fn watch_health(tessera: Arc<Tessera>, mut health: tonic_health::server::HealthReporter) {
    let mut serving = true;
    loop {
        tokio::time::sleep(Duration::from_secs(2)).await;
        match (tessera.ready().await, serving) {
            (Err(e), true) => {
                serving = false;
                let detail = e.detail.as_deref().unwrap_or("");
                tracing::warn!(error = %e, detail, "a store is unreachable; reporting NOT_SERVING");
                health.set_not_serving::<TokenServiceServer<grpc::TokenApi>>().await;
                health.set_service_status("", tonic_health::ServingStatus::NotServing).await;
            }
            (Ok(()), false) => {
                serving = true;
                tracing::info!("stores reachable again; serving");
                health.set_serving::<TokenServiceServer<grpc::TokenApi>>().await;
                health.set_service_status("", tonic_health::ServingStatus::Serving).await;
            }
            _ => {}
        }
    }
}

/// The admin credential: from the settings, or generated once into `<data_dir>/admin-token`.
fn admin_token(settings: &Settings) -> anyhow::Result<String> {
    if let Some(token) = settings.admin_token() {
        return Ok(token);
    }
    std::fs::create_dir_all(&settings.data_dir)
        .with_context(|| format!("creating the data directory {}", settings.data_dir.display()))?;
    let token = tessera_crypto::random_credential(32);
    let path = settings.admin_token_file();
    write_private(&path, &token)?;
    tracing::info!(path = %path.display(), "generated an admin credential");
    Ok(token)
}

/// Writes a file only its owner can read.
pub fn write_private(path: &Path, contents: &str) -> anyhow::Result<()> {
    use std::io::Write as _;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
    }
    let mut f = options.open(path).with_context(|| format!("writing {}", path.display()))?;
    // `mode` applies only to a file it creates: an existing one is narrowed here.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        f.set_permissions(std::fs::Permissions::from_mode(0o600))
            .with_context(|| format!("securing {}", path.display()))?;
    }
    f.write_all(contents.as_bytes()).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

/// Creates the demo client and user of a first start and writes their secrets to files in
/// the data directory (never to the log).
async fn seed_demo(tessera: &Tessera, settings: &Settings) -> anyhow::Result<DemoCredentials> {
    let public = settings.public_url();
    let created = tessera
        .create_client(NewClient {
            client_id: "demo".into(),
            name: "Demo application".into(),
            public: false,
            grant_types: ["client_credentials", "password", "refresh_token", "authorization_code", "device_code"]
                .map(String::from)
                .to_vec(),
            redirect_uris: vec![format!("{public}/callback"), "http://127.0.0.1:9999/callback".into()],
            scopes: ["openid", "profile", "email", "offline_access", "api"].map(String::from).to_vec(),
            ..NewClient::default()
        })
        .await
        .map_err(|e| anyhow::anyhow!("creating the demo client: {e}"))?;
    let password = Password::new(tessera_crypto::random_credential(12));
    tessera
        .create_user(NewUser {
            username: "demo".into(),
            password: Some(password.clone()),
            email: Some("demo@example.com".into()),
            name: Some("Demo User".into()),
        })
        .await
        .map_err(|e| anyhow::anyhow!("creating the demo user: {e}"))?;
    let secret = created.secret.ok_or_else(|| anyhow::anyhow!("the demo client has no secret"))?;
    std::fs::create_dir_all(&settings.data_dir)
        .with_context(|| format!("creating the data directory {}", settings.data_dir.display()))?;
    write_private(&settings.data_dir.join("demo-client-secret"), secret.expose())?;
    write_private(&settings.data_dir.join("demo-user-password"), password.expose())?;
    Ok(DemoCredentials { client_id: created.client.id, client_secret: secret, username: "demo".into(), password })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server_runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("server-worker")
            .enable_all()
            .build()
            .unwrap()
    }

    /// A facade's worker: a runtime of one thread, this one, with no timers and no sockets of
    /// its own, so that a call using either outside the server's context panics.
    fn caller_runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread().build().unwrap()
    }

    #[test]
    fn a_call_runs_where_it_is_made_and_what_it_starts_belongs_to_the_server() {
        let server = server_runtime();
        let caller = caller_runtime();
        let caller_thread = std::thread::current().id();
        let (ran_on, started) = caller.block_on(async {
            let call = within(server.handle().clone(), async {
                // A timer, a socket, and a task the call leaves behind (a connection's driver).
                tokio::time::sleep(Duration::from_millis(1)).await;
                let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
                let started = tokio::spawn(async move {
                    let accepted = listener.accept();
                    let _ = tokio::time::timeout(Duration::from_millis(50), accepted).await;
                    std::thread::current().name().map(str::to_owned)
                });
                (std::thread::current().id(), started)
            });
            tokio::spawn(call).await.unwrap()
        });
        assert_eq!(ran_on, caller_thread, "the call itself ran on the caller's thread");
        // The caller's runtime goes away, as a facade's workers do at shutdown: what the call
        // started lives on, on the server's runtime.
        drop(caller);
        let thread = server.block_on(started).expect("the task the call started outlived the caller's runtime");
        assert_eq!(thread.as_deref(), Some("server-worker"));
    }

    #[test]
    fn a_cancelled_call_is_dropped_inside_the_server_runtime() {
        /// What a pooled connection does when dropped: hands itself back in a task.
        struct Connection(std::sync::mpsc::Sender<tokio::task::JoinHandle<Option<String>>>);
        impl Drop for Connection {
            fn drop(&mut self) {
                let handed_back = tokio::spawn(async {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    std::thread::current().name().map(str::to_owned)
                });
                let _ = self.0.send(handed_back);
            }
        }
        let server = server_runtime();
        let caller = caller_runtime();
        let (tx, rx) = std::sync::mpsc::channel();
        caller.block_on(async {
            let call = within(server.handle().clone(), async move {
                let _held = Connection(tx);
                std::future::pending::<()>().await;
            });
            let task = AbortOnDrop(tokio::spawn(call));
            tokio::task::yield_now().await;
            // The caller gives up on the call.
            drop(task);
            tokio::task::yield_now().await;
        });
        drop(caller);
        let handed_back = rx.recv_timeout(Duration::from_secs(5)).expect("the cancelled call was dropped");
        let thread = server.block_on(handed_back).expect("what the drop started outlived the caller's runtime");
        assert_eq!(thread.as_deref(), Some("server-worker"));
    }

    #[test]
    fn a_callers_grpc_timeout_is_its_deadline_on_the_local_channel() {
        let deadline = |v: &str| {
            let mut headers = tonic::codegen::http::HeaderMap::new();
            headers.insert("grpc-timeout", v.parse().unwrap());
            grpc_timeout(&headers)
        };
        assert_eq!(deadline("2S"), Some(Duration::from_secs(2)));
        assert_eq!(deadline("1500m"), Some(Duration::from_millis(1500)));
        assert_eq!(deadline("3M"), Some(Duration::from_secs(180)));
        assert_eq!(deadline("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(deadline("250u"), Some(Duration::from_micros(250)));
        assert_eq!(deadline("10n"), Some(Duration::from_nanos(10)));
        for bad in ["", "S", "2", "2s", "-1S", "x1S"] {
            assert_eq!(deadline(bad), None, "{bad:?}");
        }
        assert_eq!(grpc_timeout(&tonic::codegen::http::HeaderMap::new()), None);
    }
}
