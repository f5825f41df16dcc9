//! `tessera-http-facade`: the HTTP facade alone, in front of a token service reached over gRPC
//! at `facade.token_service_url`. It reads only the facade's settings
//! ([`tessera_http_facade::settings`]) and links none of the token service's stores or their
//! drivers; `tessera serve --only http-facade` runs the same code from the all-in-one binary.

use clap::Parser;
use std::path::PathBuf;

#[derive(Parser)]
#[command(name = "tessera-http-facade", version, about = "Tessera's HTTP facade, on its own")]
struct Cli {
    /// A TOML configuration file (environment variables TESSERA_SECTION__KEY override it).
    #[arg(long, short, env = "TESSERA_CONFIG")]
    config: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    match run(Cli::parse()).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    tessera_http_facade::settings::run_alone(cli.config.as_deref()).await
}
