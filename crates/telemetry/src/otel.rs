//! The OTLP/gRPC span exporter, configured by the standard `OTEL_*` variables.

use anyhow::{bail, Context as _};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry::{Key, KeyValue};
use opentelemetry_otlp::WithExportConfig as _;
use opentelemetry_sdk::trace::TracerProvider;
use opentelemetry_sdk::{runtime, Resource};
use tracing::Subscriber;
use tracing_subscriber::filter::{filter_fn, FilterFn};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::Layer as _;

/// Where spans are exported, besides what the `OTEL_*` variables say.
#[derive(Clone, Debug, Default)]
pub struct ExportSettings {
    /// The collector's OTLP/gRPC endpoint from configuration (e.g. `http://jaeger:4317`).
    /// `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` and `OTEL_EXPORTER_OTLP_ENDPOINT` take precedence.
    /// With neither an endpoint nor a variable nothing is exported, so the embedded default
    /// and the tests need no collector.
    pub endpoint: Option<String>,
    /// `service.name` unless `OTEL_SERVICE_NAME` or `OTEL_RESOURCE_ATTRIBUTES` names one.
    pub service_name: String,
}

/// The running trace pipeline (or none, when export is off).
pub struct Telemetry {
    provider: Option<TracerProvider>,
}

fn var(name: &str) -> Option<String> {
    std::env::var(name).ok().map(|v| v.trim().to_owned()).filter(|v| !v.is_empty())
}

/// Spans of the transport underneath (HTTP/2, the exporter's own gRPC client) are never
/// exported: at TRACE they would feed the exporter its own calls.
fn is_transport(target: &str) -> bool {
    ["h2", "hyper", "tonic", "tower", "opentelemetry", "rustls"].iter().any(|t| target.starts_with(t))
}

impl Telemetry {
    /// No export: what tests and the embedded default get.
    pub fn disabled() -> Self {
        Self { provider: None }
    }

    pub(crate) fn start(settings: &ExportSettings) -> anyhow::Result<Self> {
        if var("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true")) {
            return Ok(Self::disabled());
        }
        match var("OTEL_TRACES_EXPORTER").as_deref() {
            None | Some("otlp") => {}
            Some("none") => return Ok(Self::disabled()),
            Some(other) => bail!("OTEL_TRACES_EXPORTER: only otlp and none are supported, got {other:?}"),
        }
        for name in ["OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL"] {
            if let Some(p) = var(name) {
                if p != "grpc" {
                    bail!("{name}: only grpc is supported (OTLP over gRPC, port 4317), got {p:?}");
                }
            }
        }
        let from_env = var("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").or_else(|| var("OTEL_EXPORTER_OTLP_ENDPOINT"));
        let configured = settings.endpoint.as_deref().map(str::trim).filter(|e| !e.is_empty());
        if from_env.is_none() && configured.is_none() {
            return Ok(Self::disabled());
        }
        let mut exporter = opentelemetry_otlp::SpanExporter::builder().with_tonic();
        if let Some(endpoint) = configured {
            // The exporter itself prefers the variables, as the specification asks.
            exporter = exporter.with_endpoint(endpoint);
        }
        let exporter = exporter.build().context("building the OTLP span exporter")?;
        // The sampler comes from OTEL_TRACES_SAMPLER / OTEL_TRACES_SAMPLER_ARG, the batch
        // sizes and delays from OTEL_BSP_*.
        let provider = TracerProvider::builder()
            .with_batch_exporter(exporter, runtime::Tokio)
            .with_resource(resource(&settings.service_name))
            .build();
        Ok(Self { provider: Some(provider) })
    }

    /// Whether spans are exported.
    pub fn enabled(&self) -> bool {
        self.provider.is_some()
    }

    pub(crate) fn layer<S>(&self) -> Option<impl tracing_subscriber::Layer<S>>
    where
        S: Subscriber + for<'a> LookupSpan<'a>,
    {
        let provider = self.provider.as_ref()?;
        let filter: FilterFn<_> = filter_fn(|meta| !is_transport(meta.target()));
        Some(
            tracing_opentelemetry::layer()
                .with_tracer(provider.tracer("tessera"))
                .with_threads(false)
                .with_location(false)
                .with_filter(filter),
        )
    }

    /// Sends every finished span now (the batch processor otherwise waits for its schedule).
    pub async fn flush(&self) {
        if let Some(provider) = self.provider.clone() {
            // The SDK blocks the calling thread until its batch task (on this runtime) answers.
            let _ = tokio::task::spawn_blocking(move || provider.force_flush()).await;
        }
    }

    /// Flushes and stops the exporter. Call once, before the process exits.
    pub async fn shutdown(self) {
        if let Some(provider) = self.provider {
            let stopped = tokio::task::spawn_blocking(move || provider.shutdown()).await;
            if let Ok(Err(e)) = stopped {
                tracing::warn!(error = %e, "the trace exporter did not shut down cleanly");
            }
        }
    }
}

/// The SDK's detected resource (`OTEL_SERVICE_NAME`, `OTEL_RESOURCE_ATTRIBUTES`), with our
/// service name when the environment names none.
fn resource(default_name: &str) -> Resource {
    let detected = Resource::default();
    let mut ours = vec![];
    let named = detected.get(Key::new("service.name")).is_some_and(|v| v.as_str() != "unknown_service");
    if !named && !default_name.is_empty() {
        ours.push(KeyValue::new("service.name", default_name.to_owned()));
    }
    if detected.get(Key::new("service.version")).is_none() {
        ours.push(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")));
    }
    detected.merge(&Resource::new(ours))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_transport_underneath_is_never_exported() {
        for t in ["h2::codec", "hyper_util::client", "tonic::transport", "tower::buffer", "opentelemetry_sdk"] {
            assert!(is_transport(t), "{t}");
        }
        for t in ["tessera_token_service::grpc", "tessera::audit", "tessera_http_facade"] {
            assert!(!is_transport(t), "{t}");
        }
    }
}
