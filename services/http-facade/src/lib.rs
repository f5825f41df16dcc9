//! The HTTP facade: Tessera's public OAuth 2.0 / OpenID Connect endpoints and the pages a
//! person uses (login, consent, device verification), served by actix-web. Each request
//! becomes one gRPC call to the token service and its answer is mapped back to the RFC's
//! HTTP status and body; the facade decides nothing about clients, grants, scopes or tokens
//! (DESIGN.md rule 1). It depends on the token service only as a gRPC client (CI checks that
//! no crate of the token service, its stores or their drivers is in its dependency tree) and
//! holds no state of its own, so any replica serves any request.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::todo))]

pub mod backend;
pub mod discovery;
pub mod error;
pub mod health;
pub mod malformed;
pub mod oauth;
pub mod observe;
pub mod openapi;
pub mod pages;
pub mod params;
pub mod security_events;
pub mod settings;
pub mod source;
pub mod userinfo;

use actix_http::error::DispatchError;
use actix_http::{HttpService, KeepAlive};
use actix_service::{fn_service, map_config, IntoServiceFactory as _, ServiceFactoryExt as _};
use actix_web::dev::{AppConfig, ServerHandle, Service as _, ServiceResponse};
use actix_web::http::{header, StatusCode};
use actix_web::middleware::{DefaultHeaders, ErrorHandlerResponse, ErrorHandlers};
use actix_web::{web, App, HttpRequest, HttpResponse, ResponseError as _};
use anyhow::Context as _;
pub use backend::Upstream;
use error::ApiError;
use futures::FutureExt as _;
use observe::{Exchange, FacadeMetrics};
use std::net::{SocketAddr, TcpListener};
use std::time::Duration;
use tessera_proto::networks::TrustedNetworks;
use tessera_proto::paths;
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tracing::Instrument as _;

/// Alternative paths of the standard endpoints, for clients written against the two
/// documented products our users come from (DESIGN.md, HTTP surface).
pub const ALIASES: &[(&str, &str)] = &[
    ("/token", paths::TOKEN),
    ("/api/v4/oauth", paths::TOKEN),
    ("/authorization", paths::AUTHORIZE),
    ("/auth", paths::AUTHORIZE),
    ("/api/v4/oauth/device", paths::DEVICE_AUTHORIZATION),
    ("/.well-known/jwks.json", paths::JWKS),
];

/// A path and its aliases (none, for a path that is not a standard one).
fn with_aliases(canonical: &'static str) -> Vec<&'static str> {
    std::iter::once(canonical).chain(ALIASES.iter().filter(|(_, c)| *c == canonical).map(|(alias, _)| *alias)).collect()
}

const STYLESHEET: &str = include_str!("../static/tessera.css");

async fn stylesheet() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/css; charset=utf-8")
        .insert_header((header::CACHE_CONTROL, "public, max-age=3600"))
        .body(STYLESHEET)
}

async fn not_found() -> HttpResponse {
    ApiError::invalid_request("there is no such endpoint").with_status(StatusCode::NOT_FOUND).error_response()
}

async fn method_not_allowed(req: HttpRequest) -> HttpResponse {
    ApiError::invalid_request(format!("{} is not allowed here", req.method()))
        .with_status(StatusCode::METHOD_NOT_ALLOWED)
        .error_response()
}

/// Any error answer that is neither our JSON nor a page (an extractor's plain text, say)
/// becomes an OAuth JSON error, so no endpoint ever answers with something else.
fn json_errors<B>(res: ServiceResponse<B>) -> actix_web::Result<ErrorHandlerResponse<B>> {
    let ours = res
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with("application/json") || ct.starts_with("text/html"));
    if ours {
        return Ok(ErrorHandlerResponse::Response(res.map_into_left_body()));
    }
    let status = res.status();
    let e = if status.is_server_error() {
        ApiError::new(tessera_core::OAuthError::server_error(format!("status {status} without a body")))
    } else {
        ApiError::invalid_request(status.canonical_reason().unwrap_or("the request was refused").to_owned())
    };
    let (req, _) = res.into_parts();
    let body = e.with_status(status).error_response();
    Ok(ErrorHandlerResponse::Response(ServiceResponse::new(req, body).map_into_right_body()))
}

/// What a route answers with. JSON routes are the ones the OpenAPI document describes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Answers {
    /// OAuth and operations endpoints: JSON, errors included.
    Json,
    /// The pages a person uses: HTML.
    Page,
    /// Anything else: the Prometheus text format, the stylesheet.
    Other,
}

/// One route of the router: its paths (a standard path and its [`ALIASES`], each a resource of
/// its own), the methods it routes (lowercase) and what it answers with. Any other method
/// answers 405.
#[derive(Clone, Debug)]
pub struct Route {
    pub paths: Vec<&'static str>,
    pub methods: Vec<&'static str>,
    pub answers: Answers,
}

/// Declares the router once: [`routes`] registers it, and [`route_table`] lists it, so what is
/// documented can be checked against what is routed.
macro_rules! router {
    ($( $answers:ident $path:expr => { $($method:ident: $handler:expr),+ $(,)? } )+) => {
        /// Every route of the facade, each path (aliases included) a resource of its own: a
        /// resource of several paths is matched by a set of regular expressions, run by every
        /// request routed past it, where a resource of one fixed path compares a string.
        pub fn routes(cfg: &mut web::ServiceConfig) {
            $(
                for path in with_aliases($path) {
                    cfg.service(
                        web::resource(path)
                            $(.route(web::$method().to($handler)))+
                            .default_service(web::to(method_not_allowed)),
                    );
                }
            )+
        }

        /// What [`routes`] registers, in its order.
        pub fn route_table() -> Vec<Route> {
            vec![$(
                Route {
                    paths: with_aliases($path),
                    methods: vec![$(stringify!($method)),+],
                    answers: Answers::$answers,
                },
            )+]
        }
    };
}

router! {
    Json paths::TOKEN => { post: oauth::token }
    Json paths::DEVICE_AUTHORIZATION => { post: oauth::device_authorization }
    Json paths::INTROSPECT => { post: oauth::introspect }
    Json paths::REVOKE => { post: oauth::revoke }
    Json paths::SECURITY_EVENTS => { post: security_events::poll }
    Json paths::OAUTH_METADATA => { get: discovery::oauth_metadata }
    Json paths::OPENID_METADATA => { get: discovery::openid_metadata }
    Json paths::JWKS => { get: discovery::jwks }
    Json paths::USERINFO => { get: userinfo::userinfo_get, post: userinfo::userinfo_post }
    Json "/healthz" => { get: health::healthz }
    Json "/readyz" => { get: health::readyz }
    Json "/openapi.json" => { get: openapi::openapi_json }
    Other "/metrics" => { get: observe::metrics }
    Page paths::AUTHORIZE => { get: pages::authorize::authorize, post: pages::authorize::authorize_post }
    Page "/login" => { post: pages::login::login }
    Page "/consent" => { post: pages::authorize::consent }
    Page "/logout" => { post: pages::login::logout }
    Page paths::DEVICE_VERIFICATION => { get: pages::device::device_get, post: pages::device::device_post }
    Other "/static/tessera.css" => { get: stylesheet }
}

/// What the facade needs to serve, made from its settings by [`settings::Settings::config`]
/// (`http.listen`, `http.public_url`, `facade.trusted_proxies`, `shutdown.grace_period`).
#[derive(Clone, Debug)]
pub struct FacadeConfig {
    /// The listening address (port 0 picks a free port).
    pub listen: SocketAddr,
    /// The URL browsers and clients use to reach the facade; `https://` makes its cookies
    /// `Secure`.
    pub public_url: String,
    /// HTTP proxies whose `X-Forwarded-For` is believed.
    pub trusted_proxies: TrustedNetworks,
    /// Seconds in-flight requests get to finish when the facade stops.
    pub grace_period: u64,
}

impl Default for FacadeConfig {
    /// The settings' defaults: `127.0.0.1:8080`, served as `http://127.0.0.1:8080`, no proxy
    /// believed, 20 s to finish.
    fn default() -> Self {
        FacadeConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            public_url: "http://127.0.0.1:8080".into(),
            trusted_proxies: TrustedNetworks::none(),
            grace_period: 20,
        }
    }
}

/// A running HTTP facade.
pub struct FacadeApplication {
    addr: SocketAddr,
    handle: ServerHandle,
    server: Option<JoinHandle<std::io::Result<()>>>,
}

impl FacadeApplication {
    /// Binds `config.listen` and serves, calling the token service at `grpc_endpoint` (e.g.
    /// `http://127.0.0.1:50051`).
    pub async fn build(config: FacadeConfig, grpc_endpoint: &str) -> anyhow::Result<Self> {
        let listener = TcpListener::bind(config.listen)
            .with_context(|| format!("binding the HTTP listener on {}", config.listen))?;
        Self::build_with_listener(config, Upstream::grpc(grpc_endpoint)?, listener).await
    }

    /// Serves on a listener the caller bound, so its address can be known (and written into
    /// the public URL) before the token service starts, calling the token service at
    /// `upstream`.
    pub async fn build_with_listener(
        config: FacadeConfig,
        upstream: Upstream,
        listener: TcpListener,
    ) -> anyhow::Result<Self> {
        // actix takes the grace period in whole seconds, as u64.
        let grace = config.grace_period;
        let page_config = pages::PageConfig { secure_cookies: config.public_url.starts_with("https://") };
        let openapi = web::Data::new(openapi::OpenApiJson(openapi::document_json()?));
        let metrics = web::Data::new(FacadeMetrics::new()?);
        let addr = listener.local_addr().context("reading the HTTP listener's address")?;
        listener.set_nonblocking(true).context("configuring the HTTP listener")?;
        let trusted_proxies = config.trusted_proxies.clone();
        // actix-server and actix-http directly rather than actix-web's `HttpServer`, whose
        // `listen` takes the TCP stream as it is: each connection is wrapped so that the
        // parser's own refusals are answered as JSON (see malformed.rs). Everything else is
        // what `HttpServer` did here (actix-web 4.18.1, `HttpServer::new` and `listen`): the
        // default worker count and connection limit, HTTP/1 only, its keep-alive and client
        // timeouts, a graceful shutdown that reaches every connection, and the TCP peer as the
        // request's peer address (read by source.rs).
        let builder = actix_server::Server::build().disable_signals().shutdown_timeout(grace);
        let shutdown = builder.graceful_shutdown_signal();
        let upstream_shown = upstream.to_string();
        let serve = move || {
            let app = App::new()
                .app_data(web::Data::new(upstream.connect_lazy()))
                .app_data(web::Data::new(page_config.clone()))
                .app_data(openapi.clone())
                .app_data(metrics.clone())
                .configure(routes)
                .default_service(web::to(not_found))
                .wrap(ErrorHandlers::new().default_handler(json_errors))
                .wrap(
                    DefaultHeaders::new()
                        .add((header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
                        .add((header::X_FRAME_OPTIONS, "DENY")),
                )
                .wrap_fn({
                    let metrics = metrics.clone();
                    let trusted_proxies = trusted_proxies.clone();
                    move |req, srv| {
                        let exchange = Exchange::start(&req);
                        let span = exchange.span.clone();
                        let metrics = metrics.clone();
                        let client = source::client_addr(
                            req.peer_addr().map(|a| a.ip()),
                            req.headers().get_all(header::X_FORWARDED_FOR).map(|v| v.as_bytes()),
                            &trusted_proxies,
                        );
                        backend::serving_client(client, srv.call(req))
                            .map(move |res| {
                                if let Ok(r) = &res {
                                    exchange.finish(&metrics, r);
                                }
                                res
                            })
                            .instrument(span)
                    }
                });
            let shutdown = shutdown.clone();
            let http = HttpService::build()
                .keep_alive(KeepAlive::Timeout(Duration::from_secs(5)))
                .client_request_timeout(Duration::from_secs(5))
                .client_disconnect_timeout(Duration::from_secs(1))
                .h1_allow_half_closed(true)
                .local_addr(addr)
                .graceful_shutdown_signal(move || {
                    let shutdown = shutdown.clone();
                    async move { shutdown.notified().await }
                })
                // The App's host name and address serve only URL generation and
                // `ConnectionInfo`, which the facade does not use (its URLs come from
                // `public_url`); actix-web offers no public way to set them.
                .h1(map_config(app.into_factory().map_err(|e| e.error_response()), |_| AppConfig::default()));
            fn_service(|io: TcpStream| {
                let peer = io.peer_addr().ok();
                async move { Ok::<_, DispatchError>((malformed::JsonRefusals::new(io), peer)) }
            })
            .and_then(http)
        };
        let server = builder.listen("tessera-http-facade", listener, serve).context("starting the HTTP server")?.run();
        let handle = server.handle();
        let server = tokio::spawn(server);
        tracing::info!(%addr, token_service = %upstream_shown, "HTTP facade listening");
        Ok(Self { addr, handle, server: Some(server) })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Stops accepting, lets in-flight requests finish, and returns when the server has
    /// stopped.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        self.handle.stop(true).await;
        if let Some(server) = self.server.take() {
            server.await.context("the HTTP server task failed")?.context("the HTTP server failed")?;
        }
        Ok(())
    }

    /// Serves until `signal` completes, then stops gracefully.
    pub async fn run_until(self, signal: impl std::future::Future<Output = ()>) -> anyhow::Result<()> {
        signal.await;
        self.stop().await
    }
}

/// The facade on its own, in front of the token service its settings name, until `signal`:
/// what `tessera serve --only http-facade` and the `tessera-http-facade` binary run.
pub async fn serve(settings: &settings::Settings, signal: impl std::future::Future<Output = ()>) -> anyhow::Result<()> {
    let upstream = settings.token_service_url();
    let mut config = settings.config();
    // Bound first, so that a port the system picked is the one a default public URL names.
    let listener =
        TcpListener::bind(config.listen).with_context(|| format!("binding the HTTP listener on {}", config.listen))?;
    if settings.http.public_url.is_none() {
        config.public_url = format!("http://{}", listener.local_addr().context("reading the HTTP listener's address")?);
    }
    let public = config.public_url.clone();
    let upstream = Upstream::grpc(&upstream)?;
    let facade = FacadeApplication::build_with_listener(config, upstream.clone(), listener).await?;
    println!();
    println!("Tessera's HTTP facade is running.");
    println!("  HTTP: http://{} (public URL {public})", facade.local_addr());
    println!("  token service: {upstream}");
    println!("  discovery: {public}/.well-known/openid-configuration");
    println!("  metrics (Prometheus): http://{}/metrics", facade.local_addr());
    println!();
    facade.run_until(signal).await.context("serving")
}

impl Drop for FacadeApplication {
    fn drop(&mut self) {
        if self.server.is_some() {
            // The stop command is sent at once; nobody waits for its completion here.
            drop(self.handle.stop(false));
        }
    }
}
