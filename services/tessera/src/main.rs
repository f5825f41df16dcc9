//! `tessera`: runs the token service (`serve`, the default), its migrations (`migrate`),
//! checks configuration (`config check`), and administers clients and users over gRPC
//! (`admin …`).

mod admin;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use tessera_token_service::settings::{ProcessEnv, Settings};
use tessera_token_service::Application;

#[derive(Parser)]
#[command(
    name = "tessera",
    version,
    about = "Tessera: an OAuth 2.0 / OpenID Connect token service"
)]
struct Cli {
    /// A TOML configuration file (environment variables TESSERA_SECTION__KEY override it).
    #[arg(long, short, global = true, env = "TESSERA_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the token service (the default).
    Serve,
    /// Run the database migrations and exit.
    Migrate,
    /// Configuration commands.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Administer clients and users through the AdminService.
    Admin(admin::AdminArgs),
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Load and validate the configuration, print it (secrets hidden), and exit.
    Check,
}

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
        None | Some(Command::Serve) => serve(load(&cli)?).await,
        Some(Command::Migrate) => {
            let settings = load(&cli)?;
            init_logs(&settings)?;
            tessera_token_service::migrate(&settings).await?;
            println!(
                "migrations applied to {}",
                redact_url(&settings.database_url())
            );
            Ok(())
        }
        Some(Command::Config {
            command: ConfigCommand::Check,
        }) => {
            let s = load(&cli)?;
            println!("configuration is valid");
            println!("  grpc.listen     = {}", s.grpc.listen);
            println!("  http.listen     = {}", s.http.listen);
            println!("  issuer          = {}", s.issuer());
            println!("  database.url    = {}", redact_url(&s.database_url()));
            let redis = if s.redis.url.is_empty() {
                "(in-memory)".to_owned()
            } else {
                redact_url(&s.redis.url)
            };
            println!("  redis.url       = {redis}");
            println!("  data_dir        = {}", s.data_dir.display());
            println!(
                "  admin.token     = {}",
                if s.admin.token.is_some() {
                    "(set)"
                } else {
                    "(generated in data_dir)"
                }
            );
            Ok(())
        }
        Some(Command::Admin(args)) => admin::run(args, cli.config.as_deref()).await,
    }
}

fn init_logs(settings: &Settings) -> anyhow::Result<()> {
    let format = if settings.log.format == "json" {
        tessera_telemetry::Format::Json
    } else {
        tessera_telemetry::Format::Text
    };
    tessera_telemetry::init(format, &settings.log.level)
}

/// A connection URL without its password.
fn redact_url(url: &str) -> String {
    match url.split_once("://") {
        Some((scheme, rest)) => match rest.rsplit_once('@') {
            Some((userinfo, host)) => {
                let user = userinfo.split(':').next().unwrap_or("");
                format!("{scheme}://{user}:***@{host}")
            }
            None => url.to_owned(),
        },
        None => url.to_owned(),
    }
}

async fn serve(settings: Settings) -> anyhow::Result<()> {
    init_logs(&settings)?;
    let app = Application::build(settings.clone()).await?;
    let addr = app.grpc_addr();
    println!();
    println!("Tessera is running.");
    println!("  gRPC (TokenService, AdminService, health, reflection): {addr}");
    println!("  database: {}", redact_url(&settings.database_url()));
    let redis = if settings.redis.url.is_empty() {
        "in-memory".to_owned()
    } else {
        redact_url(&settings.redis.url)
    };
    println!("  ephemeral store: {redis}");
    let dir = settings.data_dir.display();
    if app.demo().is_some() {
        println!("  first start: created the demo client `demo` and the demo user `demo`;");
        println!("  their secrets are in {dir}/demo-client-secret and {dir}/demo-user-password.");
    }
    println!();
    println!("Get a first token (client_credentials for the demo client):");
    println!(
        "  grpcurl -plaintext -d \"{{\\\"grant_type\\\":\\\"client_credentials\\\",\\\"client_id\\\":\\\"demo\\\",\\\"client_secret\\\":\\\"$(cat {dir}/demo-client-secret)\\\"}}\" {addr} tessera.token.v1.TokenService/IssueToken"
    );
    println!();
    app.run_until(shutdown_signal()).await.context("serving")
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_lose_their_password_when_printed() {
        assert_eq!(
            redact_url("postgres://app:s3cret@db:5432/x"),
            "postgres://app:***@db:5432/x"
        );
        assert_eq!(
            redact_url("redis://127.0.0.1:6379"),
            "redis://127.0.0.1:6379"
        );
    }
}
