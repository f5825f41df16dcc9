//! Telemetry shared by Tessera's services: the `tracing` subscriber (text or JSON logs with
//! an env filter), OpenTelemetry traces exported over OTLP/gRPC when an endpoint is
//! configured, W3C trace-context propagation for both sides of a gRPC call, and the
//! Prometheus text exposition, and [`OncePer`], the gate that keeps a line every failing request
//! would write to one a second. Security events go to the `tessera::audit` target. Depends on
//! no other Tessera crate; `tessera-core` must never depend on this one.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::todo))]

mod json;
pub mod metrics;
mod once_per;
mod otel;
pub mod propagation;

pub use once_per::OncePer;
pub use otel::{ExportSettings, Telemetry};
use std::io::IsTerminal as _;
use tracing_subscriber::layer::{Layered, SubscriberExt as _};
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{fmt, EnvFilter, Layer, Registry};

/// Log output format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Text,
    /// One JSON object per line; inside a traced span it starts with `trace_id` and `span_id`.
    Json,
}

/// What [`init`] sets up.
#[derive(Clone, Debug)]
pub struct Config {
    pub format: Format,
    /// The filter when `RUST_LOG` is unset, e.g. `info`.
    pub level: String,
    /// Where spans go and under which service name; `None` for commands that serve nothing
    /// (they log, never export).
    pub export: Option<ExportSettings>,
}

type LogLayer = Box<dyn Layer<Registry> + Send + Sync>;

/// Installs the global subscriber, with the OTLP trace exporter when an endpoint is
/// configured (see [`ExportSettings`]). `RUST_LOG` overrides `config.level` when set. Must
/// run inside a multi-threaded Tokio runtime: the exporter's batch task lives there. Keep
/// the returned handle and call [`Telemetry::shutdown`] before exiting, so the spans still
/// queued reach the collector.
pub fn init(config: Config) -> anyhow::Result<Telemetry> {
    let filter = EnvFilter::try_from_default_env().or_else(|_| EnvFilter::try_new(&config.level))?;
    let telemetry = match &config.export {
        Some(export) => Telemetry::start(export)?,
        None => Telemetry::disabled(),
    };
    let logs: LogLayer = match config.format {
        // Colours only for a person at a terminal: in a file or a collector they are noise,
        // and painting every span's fields costs each request a little.
        Format::Text => fmt::layer().with_target(true).with_ansi(std::io::stdout().is_terminal()).boxed(),
        Format::Json => fmt::layer()
            .fmt_fields(fmt::format::JsonFields::new())
            .event_format(json::WithTraceIds(fmt::format().json().flatten_event(true).with_target(true)))
            .boxed(),
    };
    let traces = telemetry.layer::<Layered<LogLayer, Registry>>();
    Registry::default()
        .with(logs)
        .with(traces)
        .with(filter)
        .try_init()
        .map_err(|e| anyhow::anyhow!("cannot install the log subscriber: {e}"))?;
    Ok(telemetry)
}
