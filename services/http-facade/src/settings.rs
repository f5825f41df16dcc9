//! What a facade process reads of the configuration (`tessera serve --only http-facade`, or the
//! `tessera-http-facade` binary): the HTTP listener and public URL, where the token service is,
//! the proxies it believes, the shutdown grace, logs and traces. Loaded like the token
//! service's settings (a TOML file, then `TESSERA_SECTION__KEY` variables; see
//! [`tessera_settings`]), so one file or environment can serve both.
//!
//! The token service's own sections may be present — docker-compose gives both services one
//! environment — and are neither read nor checked here: a facade does not refuse to start over
//! a database URL or a token lifetime, which are not its business. A section or key that is
//! nobody's is still refused.

use crate::FacadeConfig;
use serde::de::IgnoredAny;
use serde::Deserialize;
use std::path::Path;
pub use tessera_settings::{EnvSource, ProcessEnv};
use tessera_settings::{
    FacadeSettings, GrpcSettings, HttpSettings, LogFormat, LogSettings, OtelSettings, ShutdownSettings,
};

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    pub http: HttpSettings,
    pub facade: FacadeSettings,
    /// Only `grpc.listen`, for the default `facade.token_service_url`.
    pub grpc: GrpcSettings,
    pub shutdown: ShutdownSettings,
    pub log: LogSettings,
    pub otel: OtelSettings,
    // The token service's sections: allowed, not read.
    data_dir: IgnoredAny,
    issuer: IgnoredAny,
    database: IgnoredAny,
    redis: IgnoredAny,
    tokens: IgnoredAny,
    admin: IgnoredAny,
    demo: IgnoredAny,
    keys: IgnoredAny,
    metrics: IgnoredAny,
    passwords: IgnoredAny,
}

impl Settings {
    /// Loads the facade's settings from an optional TOML file and the environment.
    pub fn load(file: Option<&Path>, env: &dyn EnvSource) -> anyhow::Result<Self> {
        let settings: Settings = tessera_settings::load(file, env)?;
        settings.shutdown.check()?;
        Ok(settings)
    }

    /// What [`crate::FacadeApplication`] is built from.
    pub fn config(&self) -> FacadeConfig {
        FacadeConfig {
            listen: self.http.listen,
            public_url: self.http.public_url(),
            trusted_proxies: self.facade.trusted_proxies.clone(),
            grace_period: self.shutdown.grace_period,
        }
    }

    /// The token service's gRPC URL.
    pub fn token_service_url(&self) -> String {
        tessera_settings::token_service_url(&self.grpc, &self.facade)
    }
}

/// Logs, and for a server (`service_name` set) traces, as `log` and `otel` say: exported over
/// OTLP when `otel.endpoint` or `OTEL_EXPORTER_OTLP_ENDPOINT` names a collector. For both
/// services, which share these sections.
pub fn telemetry(log: &LogSettings, otel: &OtelSettings, service_name: Option<&str>) -> tessera_telemetry::Config {
    let format = match log.format {
        LogFormat::Json => tessera_telemetry::Format::Json,
        LogFormat::Text => tessera_telemetry::Format::Text,
    };
    let export = service_name.map(|name| tessera_telemetry::ExportSettings {
        endpoint: otel.endpoint.as_ref().map(ToString::to_string),
        service_name: name.to_owned(),
    });
    tessera_telemetry::Config { format, level: log.level.clone(), export }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn a_facade_reads_its_own_sections_and_leaves_the_token_services_alone() {
        let s = Settings::load(
            None,
            &env(&[
                ("TESSERA_HTTP__LISTEN", "0.0.0.0:8080"),
                ("TESSERA_HTTP__PUBLIC_URL", "https://id.example.com/"),
                ("TESSERA_FACADE__TOKEN_SERVICE_URL", "http://token-service:50051"),
                ("TESSERA_FACADE__TRUSTED_PROXIES", "10.0.0.0/8"),
                ("TESSERA_SHUTDOWN__GRACE_PERIOD", "7"),
                // What only the token service reads, even a value it would refuse.
                ("TESSERA_TOKENS__ACCESS_TOKEN_TTL", "-5"),
                ("DATABASE_URL", "mysql://u:hunter2@db/x"),
                ("TESSERA_DEMO__ENABLED", "false"),
            ]),
        )
        .unwrap();
        let c = s.config();
        assert_eq!(c.listen, "0.0.0.0:8080".parse().unwrap());
        assert_eq!(c.public_url, "https://id.example.com");
        assert!(c.trusted_proxies.contains("10.1.2.3".parse().unwrap()));
        assert_eq!(c.grace_period, 7);
        assert_eq!(s.token_service_url(), "http://token-service:50051");
        let s = Settings::load(None, &env(&[("TESSERA_GRPC__LISTEN", "0.0.0.0:6000")])).unwrap();
        assert_eq!(s.token_service_url(), "http://127.0.0.1:6000", "beside the token service by default");
    }

    #[test]
    fn a_facade_refuses_what_is_wrong_with_its_own_and_what_is_nobodys() {
        for (key, value, says) in [
            ("TESSERA_HTTP__LISTEN", "localhost", "http.listen"),
            ("TESSERA_FACADE__TOKEN_SERVICE_URL", "token-service:50051", "facade.token_service_url"),
            ("TESSERA_SHUTDOWN__GRACE_PERIOD", "100000", "shutdown.grace_period"),
            ("TESSERA_LOG__FORMAT", "xml", "log.format"),
            ("TESSERA_HTTPS__LISTEN", "0.0.0.0:1", "https"),
        ] {
            let e = Settings::load(None, &env(&[(key, value)])).unwrap_err();
            assert!(format!("{e:#}").contains(says), "{key}={value}: {e:#}");
        }
    }
}
