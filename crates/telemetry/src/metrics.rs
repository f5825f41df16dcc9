//! The Prometheus text exposition both services serve at `/metrics`. Each service owns its
//! own [`Registry`] (so two services in one process, or two tests, never mix their series).

pub use prometheus;
use prometheus::{HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts, Registry, TextEncoder};

/// The content type of the text exposition format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Latency buckets in seconds: token requests take ~0.1 ms (cached client, ES256) to ~30 ms
/// (Argon2id password check, Postgres round trips).
pub const LATENCY_BUCKETS: [f64; 14] =
    [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

/// The registry's series in the text exposition format.
pub fn render(registry: &Registry) -> String {
    let mut out = String::new();
    if let Err(e) = TextEncoder::new().encode_utf8(&registry.gather(), &mut out) {
        tracing::warn!(error = %e, "could not encode the metrics");
    }
    out
}

/// A registered counter.
pub fn counter(registry: &Registry, name: &str, help: &str) -> prometheus::Result<IntCounter> {
    let c = IntCounter::with_opts(Opts::new(name, help))?;
    registry.register(Box::new(c.clone()))?;
    Ok(c)
}

/// A registered gauge.
pub fn gauge(registry: &Registry, name: &str, help: &str) -> prometheus::Result<IntGauge> {
    let g = IntGauge::with_opts(Opts::new(name, help))?;
    registry.register(Box::new(g.clone()))?;
    Ok(g)
}

/// A registered counter with labels.
pub fn counter_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> prometheus::Result<IntCounterVec> {
    let c = IntCounterVec::new(Opts::new(name, help), labels)?;
    registry.register(Box::new(c.clone()))?;
    Ok(c)
}

/// A registered latency histogram (seconds, [`LATENCY_BUCKETS`]) with labels.
pub fn latency_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> prometheus::Result<HistogramVec> {
    let h = HistogramVec::new(HistogramOpts::new(name, help).buckets(LATENCY_BUCKETS.to_vec()), labels)?;
    registry.register(Box::new(h.clone()))?;
    Ok(h)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_exposition_names_each_series_with_its_labels() {
        let r = Registry::new();
        let c = counter_vec(&r, "tessera_test_total", "A test.", &["outcome"]).unwrap();
        c.with_label_values(&["ok"]).inc_by(2);
        let h = latency_vec(&r, "tessera_test_seconds", "A test.", &["rpc"]).unwrap();
        h.with_label_values(&["IssueToken"]).observe(0.003);
        let text = render(&r);
        assert!(text.contains("tessera_test_total{outcome=\"ok\"} 2"), "{text}");
        assert!(text.contains("tessera_test_seconds_bucket{rpc=\"IssueToken\",le=\"0.005\"} 1"), "{text}");
        assert!(text.contains("tessera_test_seconds_count{rpc=\"IssueToken\"} 1"), "{text}");
    }
}
