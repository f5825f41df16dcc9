//! The `tessera` command line, as a library so that what runs it (the binary) and what checks
//! command lines written elsewhere (the deployment files, the README) use one parser.

use crate::admin;
use clap::{Parser, Subcommand};
use std::path::PathBuf;

#[derive(Parser)]
#[command(name = "tessera", version, about = "Tessera: an OAuth 2.0 / OpenID Connect token service")]
pub struct Cli {
    /// A TOML configuration file (environment variables TESSERA_SECTION__KEY override it).
    #[arg(long, short, global = true, env = "TESSERA_CONFIG")]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Subcommand)]
pub enum Command {
    /// Run the token service and the HTTP facade (the default).
    Serve(ServeArgs),
    /// Run the database migrations and exit.
    Migrate,
    /// Configuration commands.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Administer clients and users through the AdminService.
    Admin(Box<admin::AdminArgs>),
}

#[derive(clap::Args, Default)]
pub struct ServeArgs {
    /// Run only one service: the gRPC token service, or the HTTP facade (which then reaches
    /// the token service at facade.token_service_url, env TESSERA_FACADE__TOKEN_SERVICE_URL).
    #[arg(long, value_enum)]
    pub only: Option<Only>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Only {
    TokenService,
    HttpFacade,
}

#[derive(Subcommand)]
pub enum ConfigCommand {
    /// Load and validate the configuration, print it (secrets hidden), and exit.
    Check,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serve_runs_both_services_unless_told_which_one() {
        let cli = Cli::try_parse_from(["tessera", "serve", "--only", "http-facade"]).unwrap();
        assert!(matches!(cli.command, Some(Command::Serve(ServeArgs { only: Some(Only::HttpFacade) }))));
        let cli = Cli::try_parse_from(["tessera", "serve", "--only", "token-service"]).unwrap();
        assert!(matches!(cli.command, Some(Command::Serve(ServeArgs { only: Some(Only::TokenService) }))));
        let cli = Cli::try_parse_from(["tessera", "serve"]).unwrap();
        assert!(matches!(cli.command, Some(Command::Serve(ServeArgs { only: None }))));
        assert!(Cli::try_parse_from(["tessera", "serve", "--only", "nope"]).is_err());
    }
}
