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
use tessera_settings::{FacadeSettings, GrpcSettings, HttpSettings, LogSettings, OtelSettings, ShutdownSettings};

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    pub http: HttpSettings,
    pub facade: FacadeSettings,
    /// For `grpc.listen`, the default `facade.token_service_url` (its `trusted_relays` and
    /// `max_connections` are parsed too, and not used).
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
        FacadeConfig::from_sections(&self.http, &self.facade, &self.shutdown)
    }

    /// The token service's gRPC URL.
    pub fn token_service_url(&self) -> String {
        tessera_settings::token_service_url(&self.grpc, &self.facade)
    }
}

impl FacadeConfig {
    /// From the sections of the settings the facade reads, whichever service's settings hold
    /// them.
    pub fn from_sections(http: &HttpSettings, facade: &FacadeSettings, shutdown: &ShutdownSettings) -> Self {
        FacadeConfig {
            listen: http.listen,
            public_url: http.public_url(),
            trusted_proxies: facade.trusted_proxies.clone(),
            grace_period: shutdown.grace_period,
        }
    }
}

/// The facade alone, as its settings (from `config`, a TOML file, and the environment) say,
/// until SIGTERM or Ctrl-C: the `tessera-http-facade` binary, and `tessera serve --only
/// http-facade`.
pub async fn run_alone(config: Option<&Path>) -> anyhow::Result<()> {
    let settings = Settings::load(config, &ProcessEnv)?;
    let telemetry = tessera_telemetry::init(settings.log.telemetry(&settings.otel, Some(SERVICE_NAME)))?;
    let served = crate::serve(&settings, tessera_settings::shutdown_signal()).await;
    // The spans of the last requests are still queued: send them before exiting.
    telemetry.shutdown().await;
    served
}

/// `service.name` of the facade's spans when it runs alone, unless OTEL_SERVICE_NAME says
/// otherwise.
pub const SERVICE_NAME: &str = "tessera-http-facade";

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
