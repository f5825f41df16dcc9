//! Logging setup shared by Tessera's services: `tracing` with an env filter, as text or JSON.
//! Security events go to the `tessera::audit` target. Depends on no other Tessera crate.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::todo))]

use tracing_subscriber::{fmt, EnvFilter};

/// Log output format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Text,
    Json,
}

/// Installs the global subscriber. `RUST_LOG` overrides `default_level` when set.
pub fn init(format: Format, default_level: &str) -> anyhow::Result<()> {
    let filter = EnvFilter::try_from_default_env().or_else(|_| EnvFilter::try_new(default_level))?;
    let builder = fmt().with_env_filter(filter).with_target(true);
    let result = match format {
        Format::Text => builder.try_init(),
        Format::Json => builder.json().flatten_event(true).try_init(),
    };
    result.map_err(|e| anyhow::anyhow!("cannot install the log subscriber: {e}"))
}
