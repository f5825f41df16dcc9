//! `tessera`: runs the token service and the HTTP facade in one process (`serve`, the
//! default; `serve --only token-service|http-facade` runs one of them), its migrations (`migrate`),
//! checks configuration (`config check`), and administers clients and users over gRPC
//! (`admin …`).

use anyhow::Context as _;
use clap::Parser as _;
use tessera::admin;
use tessera::cli::{Cli, Command, ConfigCommand, Only};
use tessera_http_facade::{FacadeApplication, FacadeConfig, Upstream};
use tessera_settings::shutdown_signal;
use tessera_token_service::settings::{redact_url, HttpUrl, ProcessEnv, SecretUrl, Settings};
use tessera_token_service::Application;

fn load(cli: &Cli) -> anyhow::Result<Settings> {
    Settings::load(cli.config.as_deref(), &ProcessEnv)
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    match run(cli).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match &cli.command {
        None => serve(load(&cli)?, false).await,
        // The facade alone reads only its own settings (see tessera_http_facade::settings).
        Some(Command::Serve(args)) if args.only == Some(Only::HttpFacade) => {
            tessera_http_facade::settings::run_alone(cli.config.as_deref()).await
        }
        Some(Command::Serve(args)) => serve(load(&cli)?, args.only == Some(Only::TokenService)).await,
        Some(Command::Migrate) => {
            let settings = load(&cli)?;
            init_logs(&settings, None)?;
            tessera_token_service::migrate(&settings).await?;
            println!("migrations applied to {}", redact_url(&settings.database_url()));
            Ok(())
        }
        Some(Command::Config { command: ConfigCommand::Check }) => {
            let s = load(&cli)?;
            println!("configuration is valid");
            println!("  grpc.listen     = {}", s.grpc.listen);
            println!("  http.listen     = {}", s.http.listen);
            println!("  issuer          = {}", s.issuer());
            println!("  database.url    = {}", redact_url(&s.database_url()));
            let redis = s.redis.url.as_ref().map_or_else(|| "(in-memory)".to_owned(), SecretUrl::redacted);
            println!("  redis.url       = {redis}");
            let metrics = s.metrics.listen.map_or_else(|| "(off)".to_owned(), |a| a.to_string());
            println!("  metrics.listen  = {metrics}");
            let otlp = s.otel.endpoint.as_ref().map_or("(unset)", HttpUrl::as_str);
            println!("  otel.endpoint   = {otlp}");
            println!("  data_dir        = {}", s.data_dir.display());
            println!(
                "  admin.token     = {}",
                if s.admin.token.is_some() { "(set)" } else { "(generated in data_dir)" }
            );
            Ok(())
        }
        Some(Command::Admin(args)) => admin::run(args, cli.config.as_deref()).await,
    }
}

/// Logs, and for a server (`service_name` set) traces: exported over OTLP when
/// `otel.endpoint` or `OTEL_EXPORTER_OTLP_ENDPOINT` names a collector.
fn init_logs(settings: &Settings, service_name: Option<&str>) -> anyhow::Result<tessera_telemetry::Telemetry> {
    tessera_telemetry::init(settings.log.telemetry(&settings.otel, service_name))
}

/// The token service, alone or with the facade in front of it.
async fn serve(settings: Settings, alone: bool) -> anyhow::Result<()> {
    // `service.name` of the spans, unless OTEL_SERVICE_NAME says otherwise.
    let service_name = if alone { "tessera-token-service" } else { "tessera" };
    let telemetry = init_logs(&settings, Some(service_name))?;
    let served = if alone { serve_token_service(settings).await } else { serve_both(settings).await };
    // The spans of the last requests are still queued: send them before exiting.
    telemetry.shutdown().await;
    served
}

/// The banner line of the token service's metrics listener.
fn print_metrics(app: &Application) {
    match app.metrics_addr() {
        Some(addr) => println!("  token service metrics (Prometheus): http://{addr}/metrics"),
        None => println!("  token service metrics: off (metrics.listen is empty)"),
    }
}

/// The banner lines about the stores, and the demo a first start created.
fn print_stores(settings: &Settings, app: &Application) {
    println!("  database: {}", redact_url(&settings.database_url()));
    let redis = settings.redis.url.as_ref().map_or_else(|| "in-memory".to_owned(), SecretUrl::redacted);
    println!("  ephemeral store: {redis}");
    if app.demo().is_some() {
        let dir = settings.data_dir.display();
        println!("  first start: created the demo client `demo` and the demo user `demo`;");
        println!("  their secrets are in {dir}/demo-client-secret and {dir}/demo-user-password.");
    }
}

/// The token service alone (for deployments that run the facade separately).
async fn serve_token_service(settings: Settings) -> anyhow::Result<()> {
    let app = Application::build(settings.clone()).await?;
    let addr = app.grpc_addr();
    println!();
    println!("Tessera's token service is running.");
    println!("  gRPC (TokenService, AdminService, health, reflection): {addr}");
    print_metrics(&app);
    print_stores(&settings, &app);
    println!();
    app.run_until(shutdown_signal()).await.context("serving")
}

/// Both services in one process: the facade calls the token service over a local channel (the
/// same services as its gRPC port, without the socket).
async fn serve_both(mut settings: Settings) -> anyhow::Result<()> {
    // Bound first, so that a port picked by the system is the one the token service puts in
    // its issuer and verification URI.
    let listener = std::net::TcpListener::bind(settings.http.listen)
        .with_context(|| format!("binding the HTTP listener on {}", settings.http.listen))?;
    let http_addr = listener.local_addr().context("reading the HTTP listener's address")?;
    if settings.http.public_url.is_none() {
        settings.http.public_url = Some(format!("http://{http_addr}").parse().map_err(anyhow::Error::msg)?);
    }
    let app = Application::build(settings.clone()).await?;
    let upstream = Upstream::Local(app.local_channel());
    let facade = FacadeApplication::build_with_listener(
        FacadeConfig::from_sections(&settings.http, &settings.facade, &settings.shutdown),
        upstream,
        listener,
    )
    .await?;
    let public = settings.public_url();
    println!();
    println!("Tessera is running.");
    println!("  HTTP (OAuth endpoints and pages): http://{http_addr} (public URL {public})");
    println!("  gRPC (TokenService, AdminService, health, reflection): {}", app.grpc_addr());
    println!("  HTTP facade metrics (Prometheus): http://{http_addr}/metrics");
    print_metrics(&app);
    print_stores(&settings, &app);
    let dir = settings.data_dir.display();
    println!();
    println!("Discovery document: {public}/.well-known/openid-configuration");
    if settings.data_dir.join("demo-client-secret").exists() {
        println!("Get a first token (client_credentials for the demo client):");
        println!(
            "  curl -s -u \"demo:$(cat {dir}/demo-client-secret)\" -d grant_type=client_credentials {public}/oauth2/token"
        );
    } else {
        println!("Create a client with `tessera admin`, then ask {public}/oauth2/token for a token.");
    }
    println!();
    shutdown_signal().await;
    tracing::info!("shutting down");
    let stopped = facade.stop().await;
    app.shutdown().await.context("stopping the token service")?;
    stopped.context("stopping the HTTP facade")
}
