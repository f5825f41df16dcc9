//! The `tessera` command (`src/main.rs`) and its command line as a library: the deployment
//! checks (`tests/deploy.rs`) parse every command line the deployment files and the README
//! write with [`cli::Cli`], the parser the binary runs.

pub mod admin;
pub mod cli;
