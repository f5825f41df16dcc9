//! The token service's settings: defaults (embedded SQLite + in-memory store) → an optional
//! TOML file (unknown keys refused) → `TESSERA_SECTION__KEY` environment variables →
//! `DATABASE_URL` / `REDIS_URL`. Invalid settings stop the process before it binds, naming
//! the key.

use anyhow::bail;
use secrecy::SecretString;
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use tessera_crypto::keys::Algorithm;
use tessera_crypto::seal::Kek;
use tessera_settings::{database_url, empty_is_none, redis_url};
pub use tessera_settings::{
    redact_url, EnvSource, FacadeSettings, GrpcSettings, HttpSettings, HttpUrl, LogFormat, LogSettings, OtelSettings,
    ProcessEnv, SecretUrl, ShutdownSettings, CLI_VARIABLES,
};

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    /// Where files of the embedded default live: the SQLite database, the generated admin
    /// token, the demo credentials.
    pub data_dir: PathBuf,
    /// `iss` of every token. Defaults to the facade's public URL.
    pub issuer: Option<HttpUrl>,
    pub grpc: GrpcSettings,
    pub http: HttpSettings,
    pub database: DatabaseSettings,
    pub redis: RedisSettings,
    pub tokens: TokenSettings,
    pub admin: AdminSettings,
    pub demo: DemoSettings,
    pub log: LogSettings,
    pub keys: KeySettings,
    pub shutdown: ShutdownSettings,
    pub facade: FacadeSettings,
    pub metrics: MetricsSettings,
    pub otel: OtelSettings,
    pub passwords: PasswordSettings,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DatabaseSettings {
    /// `postgres://…` or `sqlite://…`; unset (or empty) means `<data_dir>/tessera.db`.
    #[serde(deserialize_with = "database_url")]
    pub url: Option<SecretUrl>,
    /// Postgres connections this node may hold open (1–1000); see
    /// `tessera_store::PoolOptions::max_connections`.
    pub max_connections: u32,
}

impl Default for DatabaseSettings {
    fn default() -> Self {
        Self { url: None, max_connections: tessera_store::PoolOptions::DEFAULT_MAX_CONNECTIONS }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RedisSettings {
    /// `redis://…`; unset (or empty) means the in-memory store (one process only).
    #[serde(deserialize_with = "redis_url")]
    pub url: Option<SecretUrl>,
    pub key_prefix: String,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TokenSettings {
    pub access_token_ttl: i64,
    pub refresh_token_ttl: i64,
    pub id_token_ttl: i64,
    pub code_ttl: i64,
    pub device_code_ttl: i64,
    pub device_interval: i64,
    /// Device authorizations one client may start per minute (RFC 8628 §5.1: every live user
    /// code is one more a guess can hit).
    pub device_starts_per_minute: u32,
    pub session_ttl: i64,
    pub lockout_threshold: u32,
    pub lockout_window: i64,
    /// "ES256" (default), "EdDSA" or "RS256".
    #[serde(deserialize_with = "signing_alg")]
    pub signing_alg: Algorithm,
    /// `aud` of access tokens; defaults to the issuer.
    pub audience: Option<String>,
    /// Seconds a node trusts a client it read from the database (0: no cache).
    pub client_cache_ttl: u32,
    /// Seconds after a refresh in which the same client presenting the same (now rotated)
    /// refresh token again, its successor unused, gets that successor back instead of having
    /// the family revoked (0: every second presentation is reuse).
    pub refresh_retry_window: i64,
    /// A public client that token requests naming no client at all act as (off when empty).
    pub default_client_id: String,
}

#[derive(Clone, Debug, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct KeySettings {
    /// A base64 32-byte key-encryption key that seals private signing keys at rest
    /// (AES-256-GCM). Unset: keys are stored unsealed (fine for the embedded default only);
    /// set but empty is refused.
    #[serde(deserialize_with = "kek")]
    pub encryption_key: Option<Kek>,
}

#[derive(Clone, Debug, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct AdminSettings {
    /// The admin credential. When unset, one is generated into `<data_dir>/admin-token`.
    pub token: Option<AdminToken>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DemoSettings {
    /// Create a demo client and user on the first start.
    pub enabled: bool,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsSettings {
    /// Where the token service answers `GET /metrics` (Prometheus text format) on a small
    /// HTTP/1.1 listener of its own; empty turns it off. The facade serves its own
    /// `/metrics` on its HTTP port.
    #[serde(deserialize_with = "empty_is_none")]
    pub listen: Option<SocketAddr>,
}

impl Default for MetricsSettings {
    fn default() -> Self {
        Self { listen: Some(SocketAddr::from(([127, 0, 0, 1], 9464))) }
    }
}

/// The password pool (DESIGN.md rule 8): each worker holds one 19 MiB Argon2 buffer while
/// busy; a check finding every worker busy and `queue` others waiting is refused with 503.
#[derive(Clone, Debug, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct PasswordSettings {
    /// Argon2 threads; unset: one per core available to the process.
    pub workers: Option<std::num::NonZeroUsize>,
    /// Checks that may wait for a worker; unset: four per worker.
    pub queue: Option<usize>,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("data"),
            issuer: None,
            grpc: GrpcSettings::default(),
            http: HttpSettings::default(),
            database: DatabaseSettings::default(),
            redis: RedisSettings::default(),
            tokens: TokenSettings::default(),
            admin: AdminSettings::default(),
            demo: DemoSettings::default(),
            log: LogSettings::default(),
            keys: KeySettings::default(),
            shutdown: ShutdownSettings::default(),
            facade: FacadeSettings::default(),
            metrics: MetricsSettings::default(),
            otel: OtelSettings::default(),
            passwords: PasswordSettings::default(),
        }
    }
}

impl Default for RedisSettings {
    fn default() -> Self {
        Self { url: None, key_prefix: "tessera:".into() }
    }
}

impl Default for TokenSettings {
    /// The core's own defaults, so the numbers live in one place.
    fn default() -> Self {
        let core = tessera_core::CoreConfig::new("");
        Self {
            access_token_ttl: core.access_token_ttl,
            refresh_token_ttl: core.refresh_token_ttl,
            id_token_ttl: core.id_token_ttl,
            code_ttl: core.code_ttl,
            device_code_ttl: core.device_code_ttl,
            device_interval: core.device_interval,
            device_starts_per_minute: core.device_starts_per_minute,
            session_ttl: core.session_ttl,
            lockout_threshold: core.lockout_threshold,
            lockout_window: core.lockout_window,
            signing_alg: core.signing_alg,
            client_cache_ttl: u32::try_from(core.client_cache_ttl).unwrap_or(0),
            refresh_retry_window: core.refresh_retry_window,
            default_client_id: String::new(),
            audience: None,
        }
    }
}

impl Default for DemoSettings {
    fn default() -> Self {
        Self { enabled: true }
    }
}

impl Settings {
    /// Loads settings from an optional TOML file and the environment, then validates them.
    pub fn load(file: Option<&Path>, env: &dyn EnvSource) -> anyhow::Result<Self> {
        let settings: Settings = tessera_settings::load(file, env)?;
        settings.validate()?;
        Ok(settings)
    }

    /// Checks the ranges of the numbers: every other value was parsed into its type as it
    /// loaded.
    pub fn validate(&self) -> anyhow::Result<()> {
        if !(1..=1000).contains(&self.database.max_connections) {
            bail!("database.max_connections: must be between 1 and 1000");
        }
        if !(16..=1_000_000).contains(&self.grpc.max_connections) {
            bail!("grpc.max_connections: must be between 16 and 1000000, got {}", self.grpc.max_connections);
        }
        let t = &self.tokens;
        for (name, v) in [
            ("tokens.access_token_ttl", t.access_token_ttl),
            ("tokens.refresh_token_ttl", t.refresh_token_ttl),
            ("tokens.id_token_ttl", t.id_token_ttl),
            ("tokens.code_ttl", t.code_ttl),
            ("tokens.device_code_ttl", t.device_code_ttl),
            ("tokens.device_interval", t.device_interval),
            ("tokens.session_ttl", t.session_ttl),
            ("tokens.lockout_window", t.lockout_window),
        ] {
            if v <= 0 {
                bail!("{name}: must be a positive number of seconds, got {v}");
            }
        }
        if t.lockout_threshold == 0 {
            bail!("tokens.lockout_threshold: must be at least 1");
        }
        if t.device_starts_per_minute == 0 {
            bail!("tokens.device_starts_per_minute: must be at least 1");
        }
        if !(0..=60).contains(&t.refresh_retry_window) {
            bail!("tokens.refresh_retry_window: must be 0 (off) to 60 seconds, got {}", t.refresh_retry_window);
        }
        self.shutdown.check()?;
        let passwords = self.core_passwords();
        if passwords.workers > 256 || passwords.queue > 65_536 {
            bail!("passwords.workers: at most 256 and passwords.queue: at most 65536 (each worker holds 19 MiB)");
        }
        Ok(())
    }

    /// The database's URL for the driver (it may hold a password: never log it; see
    /// [`SecretUrl::redacted`]).
    pub fn database_url(&self) -> String {
        match &self.database.url {
            Some(url) => url.expose().to_owned(),
            None => format!("sqlite://{}?mode=rwc", self.data_dir.join("tessera.db").display()),
        }
    }

    pub fn public_url(&self) -> String {
        self.http.public_url()
    }

    /// Where a facade reaches the token service's gRPC listener.
    pub fn token_service_url(&self) -> String {
        tessera_settings::token_service_url(&self.grpc, &self.facade)
    }

    /// Where the generated admin credential is kept when `admin.token` is not set.
    pub fn admin_token_file(&self) -> PathBuf {
        self.data_dir.join("admin-token")
    }

    /// The admin credential the configuration names: `admin.token`, else the one generated
    /// into `admin_token_file()` by an earlier start; `None` when there is neither yet.
    pub fn admin_token(&self) -> Option<String> {
        if let Some(t) = &self.admin.token {
            return Some(t.expose().to_owned());
        }
        std::fs::read_to_string(self.admin_token_file()).ok().map(|t| t.trim().to_owned()).filter(|t| !t.is_empty())
    }

    pub fn issuer(&self) -> String {
        self.issuer.as_ref().map_or_else(|| self.public_url(), HttpUrl::to_string)
    }

    /// The password pool's size: the settings where given, else the machine's defaults.
    fn core_passwords(&self) -> tessera_crypto::password_pool::PoolConfig {
        let mut pool = tessera_crypto::password_pool::PoolConfig::for_this_machine();
        if let Some(workers) = self.passwords.workers {
            pool.workers = workers.get();
        }
        pool.queue = self.passwords.queue.unwrap_or(4 * pool.workers);
        pool
    }

    /// The core's policy from these settings.
    pub fn core_config(&self) -> anyhow::Result<tessera_core::CoreConfig> {
        let mut c = tessera_core::CoreConfig::new(self.issuer());
        let t = &self.tokens;
        c.access_token_ttl = t.access_token_ttl;
        c.refresh_token_ttl = t.refresh_token_ttl;
        c.id_token_ttl = t.id_token_ttl;
        c.code_ttl = t.code_ttl;
        c.device_code_ttl = t.device_code_ttl;
        c.device_interval = t.device_interval;
        c.device_starts_per_minute = t.device_starts_per_minute;
        c.session_ttl = t.session_ttl;
        c.lockout_threshold = t.lockout_threshold;
        c.lockout_window = t.lockout_window;
        c.client_cache_ttl = i64::from(t.client_cache_ttl);
        c.refresh_retry_window = t.refresh_retry_window;
        c.default_client_id = Some(t.default_client_id.clone()).filter(|id| !id.is_empty());
        c.key_encryption_key = self.keys.encryption_key.clone();
        c.passwords = self.core_passwords();
        c.verification_uri = format!("{}/device", self.public_url());
        if let Some(a) = &t.audience {
            c.audience = a.clone();
        }
        c.signing_alg = t.signing_alg;
        Ok(c)
    }
}

/// The admin credential: at least 16 characters once trimmed. `Debug` never shows it.
#[derive(Clone)]
pub struct AdminToken(SecretString);

impl AdminToken {
    pub fn new(token: &str) -> Result<Self, &'static str> {
        let token = token.trim();
        (token.len() >= 16)
            .then(|| AdminToken(SecretString::from(token.to_owned())))
            .ok_or(tessera_settings::ADMIN_TOKEN_EXPECTED)
    }

    pub fn expose(&self) -> &str {
        use secrecy::ExposeSecret as _;
        self.0.expose_secret()
    }
}

impl std::fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AdminToken(<redacted>)")
    }
}

impl<'de> Deserialize<'de> for AdminToken {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        AdminToken::new(&String::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}

/// A key-encryption key. Empty is refused like any other bad key, not taken as "none": an empty
/// value in a Secret must not have signing keys stored unsealed.
fn kek<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Kek>, D::Error> {
    let s = String::deserialize(d)?;
    Kek::parse(&s).map(Some).map_err(|_| serde::de::Error::custom(tessera_settings::KEK_EXPECTED))
}

fn signing_alg<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Algorithm, D::Error> {
    let s = String::deserialize(d)?;
    Algorithm::parse(&s).ok_or_else(|| serde::de::Error::custom(format!("must be ES256, EdDSA or RS256, got {s:?}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn defaults_are_the_embedded_pair_on_the_documented_ports() {
        let s = Settings::load(None, &env(&[])).unwrap();
        assert_eq!(s.grpc.listen.to_string(), "127.0.0.1:50051");
        assert_eq!(s.http.listen.to_string(), "127.0.0.1:8080");
        assert!(s.database_url().starts_with("sqlite://"));
        assert!(s.redis.url.is_none());
        assert_eq!((s.log.format, s.tokens.signing_alg), (LogFormat::Text, Algorithm::Es256));
        assert_eq!(s.tokens.access_token_ttl, 3600);
        assert_eq!(s.tokens.code_ttl, 60);
    }

    #[test]
    fn environment_variables_override_and_name_the_bad_key() {
        let s = Settings::load(
            None,
            &env(&[
                ("TESSERA_GRPC__LISTEN", "0.0.0.0:6000"),
                ("TESSERA_TOKENS__ACCESS_TOKEN_TTL", "60"),
                ("DATABASE_URL", "postgres://u@h/db"),
                ("REDIS_URL", "redis://127.0.0.1:6379"),
            ]),
        )
        .unwrap();
        assert_eq!(s.grpc.listen.to_string(), "0.0.0.0:6000");
        assert_eq!(s.tokens.access_token_ttl, 60);
        assert_eq!(s.database_url(), "postgres://u@h/db");
        assert_eq!(s.redis.url.as_ref().map(SecretUrl::expose), Some("redis://127.0.0.1:6379"));

        let e = Settings::load(None, &env(&[("TESSERA_TOKENS__ACCESS_TOKEN_TTL", "-5")])).unwrap_err();
        assert!(e.to_string().contains("tokens.access_token_ttl"), "{e}");
        assert_eq!(Settings::load(None, &env(&[])).unwrap().tokens.refresh_retry_window, 5);
        let s = Settings::load(None, &env(&[("TESSERA_TOKENS__REFRESH_RETRY_WINDOW", "0")])).unwrap();
        assert_eq!(s.core_config().unwrap().refresh_retry_window, 0, "0 turns retries off");
        let e = Settings::load(None, &env(&[("TESSERA_TOKENS__REFRESH_RETRY_WINDOW", "-1")])).unwrap_err();
        assert!(e.to_string().contains("tokens.refresh_retry_window"), "{e}");
        let e = Settings::load(None, &env(&[("TESSERA_KEYS__ENCRYPTION_KEY", "c2hvcnQ=")])).unwrap_err();
        assert!(format!("{e:#}").contains("keys.encryption_key"), "{e:#}");
        assert!(!format!("{e:#}").contains("c2hvcnQ="), "the bad key itself is not echoed: {e:#}");
        assert!(format!("{e:#}").contains(tessera_settings::KEK_EXPECTED), "what is wrong is said: {e:#}");
        let e = Settings::load(None, &env(&[("TESSERA_KEYS__ENCRYPTION_KEY", "")])).unwrap_err();
        assert!(format!("{e:#}").contains("keys.encryption_key"), "empty does not mean unsealed: {e:#}");
        let e = Settings::load(None, &env(&[("TESSERA_ADMIN__TOKEN", "hunter2-short")])).unwrap_err();
        assert!(format!("{e:#}").contains("admin.token: must be at least 16 characters"), "{e:#}");
        assert!(!format!("{e:#}").contains("hunter2"), "{e:#}");
        let s = Settings::load(None, &env(&[("TESSERA_ADMIN__TOKEN", "  0123456789abcdef  ")])).unwrap();
        assert_eq!(s.admin_token().as_deref(), Some("0123456789abcdef"), "trimmed once, as it loads");
        assert!(!format!("{s:?}").contains("0123456789abcdef"), "Debug hides the admin credential");
        for url in ["redis+sentinel://s1:26379,s2:26379/mymaster", "redis+cluster://n1:7000,n2:7001"] {
            let s = Settings::load(None, &env(&[("REDIS_URL", url)])).unwrap();
            let got = s.redis.url.as_ref().map(SecretUrl::expose);
            assert_eq!(got, Some(url), "Sentinel and Cluster URLs are settings the Redis adapter understands");
        }
        let e = Settings::load(None, &env(&[("REDIS_URL", "memcached://u:hunter2@x")])).unwrap_err();
        assert!(format!("{e:#}").contains(&format!("redis.url: {}", SecretUrl::REDIS)), "what is wrong is said: {e:#}");
        assert!(!format!("{e:#}").contains("hunter2"), "{e:#}");
        let e = Settings::load(None, &env(&[("DATABASE_URL", "mysql://u:hunter2@x/db")])).unwrap_err();
        assert!(format!("{e:#}").contains(&format!("database.url: {}", SecretUrl::DATABASE)), "{e:#}");
        assert!(!format!("{e:#}").contains("hunter2"), "{e:#}");
        // Debug of the settings (a panic message, a trace) hides the passwords too.
        let s = Settings::load(None, &env(&[("DATABASE_URL", "postgres://u:hunter2@h/db?password=p2")])).unwrap();
        let shown = format!("{s:?}");
        assert!(shown.contains("postgres://u:***@h/db?…") && !shown.contains("hunter2") && !shown.contains("p2"));
        // A secret never shows in an error, whatever is wrong with it.
        let e =
            Settings::load(None, &env(&[("TESSERA_ADMIN__TOKEN", "1234567890123456"), ("TESSERA_ADMIN__NOPE", "1")]))
                .unwrap_err();
        assert!(!format!("{e:#}").contains("1234567890123456"), "{e:#}");
        let both =
            env(&[("TESSERA_DATABASE__URL", "postgres://u:hunter2@a/x"), ("DATABASE_URL", "postgres://u:pw2@b/y")]);
        assert_eq!(Settings::load(None, &both).unwrap().database_url(), "postgres://u:pw2@b/y", "DATABASE_URL wins");
        // The command line's own variables are not mistaken for settings.
        let cli = env(&[("TESSERA_PASSWORD", "x"), ("TESSERA_CONFIG", "t.toml"), ("TESSERA_ADMIN_ENDPOINT", "h:1")]);
        assert!(Settings::load(None, &cli).is_ok());
        let e = Settings::load(None, &env(&[("TESSERA_TOKENS__NOPE", "1")])).unwrap_err();
        assert!(format!("{e:#}").contains("nope"), "{e:#}");
        let e = Settings::load(None, &env(&[("TESSERA_GRPC__LISTEN", "not an address")])).unwrap_err();
        assert!(format!("{e:#}").contains("grpc.listen"), "{e:#}");
        assert_eq!(Settings::load(None, &env(&[])).unwrap().grpc.max_connections, 10_000);
        let s = Settings::load(None, &env(&[("TESSERA_GRPC__MAX_CONNECTIONS", "500")])).unwrap();
        assert_eq!(s.grpc.max_connections, 500);
        for bad in ["0", "15", "1000001"] {
            let e = Settings::load(None, &env(&[("TESSERA_GRPC__MAX_CONNECTIONS", bad)])).unwrap_err();
            assert!(format!("{e:#}").contains("grpc.max_connections: must be between 16 and 1000000"), "{e:#}");
        }
    }

    #[test]
    fn a_secret_is_not_shown_by_a_syntax_error_on_its_line_or_a_type_error_at_its_table() {
        let secret = "0123456789abcdef-admin";
        let path = std::env::temp_dir().join(format!("tessera-settings-test-{}.toml", std::process::id()));
        std::fs::write(&path, format!("[log]\nformat = \"text\"\n[admin]\ntoken = \"{secret}\n")).unwrap();
        let e = Settings::load(Some(&path), &env(&[])).unwrap_err();
        std::fs::remove_file(&path).unwrap();
        assert!(format!("{e:#}").contains("line 4"), "{e:#}");
        assert!(!format!("{e:#}").contains(secret), "{e:#}");
        let e = Settings::load(None, &env(&[("TESSERA_REDIS", "redis://:hunter2@cache:6379")])).unwrap_err();
        assert!(format!("{e:#}").contains("redis: invalid value"), "{e:#}");
        assert!(!format!("{e:#}").contains("hunter2"), "{e:#}");
        let e = Settings::load(None, &env(&[("TESSERA_REDIS__URLL", "redis://h")])).unwrap_err();
        assert!(format!("{e:#}").contains("urll"), "a misspelt key is still named: {e:#}");
    }

    #[test]
    fn a_facade_on_its_own_finds_the_token_service_from_config() {
        let s = Settings::load(None, &env(&[("TESSERA_GRPC__LISTEN", "0.0.0.0:6000")])).unwrap();
        assert_eq!(s.token_service_url(), "http://127.0.0.1:6000");
        let s =
            Settings::load(None, &env(&[("TESSERA_FACADE__TOKEN_SERVICE_URL", "http://token-service:50051")])).unwrap();
        assert_eq!(s.token_service_url(), "http://token-service:50051");
        let e = Settings::load(None, &env(&[("TESSERA_FACADE__TOKEN_SERVICE_URL", "nope")])).unwrap_err();
        assert!(format!("{e:#}").contains("facade.token_service_url"), "{e:#}");
    }

    #[test]
    fn trusted_relays_default_to_the_cluster_and_proxies_to_none() {
        let s = Settings::load(None, &env(&[])).unwrap();
        assert!(s.grpc.trusted_relays.contains("10.4.0.7".parse().unwrap()));
        assert!(!s.grpc.trusted_relays.contains("203.0.113.7".parse().unwrap()));
        assert!(s.facade.trusted_proxies.is_empty());
        let s = Settings::load(
            None,
            &env(&[
                ("TESSERA_GRPC__TRUSTED_RELAYS", ""),
                ("TESSERA_FACADE__TRUSTED_PROXIES", "192.0.2.0/24, 2001:db8::1"),
            ]),
        )
        .unwrap();
        assert!(s.grpc.trusted_relays.is_empty(), "empty trusts no relay");
        assert!(s.facade.trusted_proxies.contains("192.0.2.200".parse().unwrap()));
        assert!(s.facade.trusted_proxies.contains("2001:db8::1".parse().unwrap()));
        let e = Settings::load(None, &env(&[("TESSERA_FACADE__TRUSTED_PROXIES", "10.0.0.0/8,proxy.lan")])).unwrap_err();
        assert!(format!("{e:#}").contains("facade.trusted_proxies"), "{e:#}");
        assert!(format!("{e:#}").contains("proxy.lan"), "{e:#}");
    }

    #[test]
    fn metrics_listen_on_their_own_port_and_traces_go_nowhere_by_default() {
        let s = Settings::load(None, &env(&[])).unwrap();
        assert_eq!(s.metrics.listen, Some("127.0.0.1:9464".parse().unwrap()));
        assert!(s.otel.endpoint.is_none());
        let s = Settings::load(
            None,
            &env(&[("TESSERA_METRICS__LISTEN", ""), ("TESSERA_OTEL__ENDPOINT", "http://jaeger:4317")]),
        )
        .unwrap();
        assert!(s.metrics.listen.is_none(), "empty turns the listener off");
        assert_eq!(s.otel.endpoint.as_ref().map(HttpUrl::as_str), Some("http://jaeger:4317"));
        let e = Settings::load(None, &env(&[("TESSERA_METRICS__LISTEN", "9464")])).unwrap_err();
        assert!(format!("{e:#}").contains("metrics.listen"), "{e:#}");
        let e = Settings::load(None, &env(&[("TESSERA_OTEL__ENDPOINT", "jaeger:4317")])).unwrap_err();
        assert!(format!("{e:#}").contains("otel.endpoint"), "{e:#}");
    }

    #[test]
    fn values_with_a_type_are_parsed_once_and_refused_with_the_key_when_they_are_not_one() {
        for (key, value, says) in [
            ("TESSERA_HTTP__LISTEN", "localhost:8080", "http.listen"),
            ("TESSERA_LOG__FORMAT", "yaml", "log.format"),
            ("TESSERA_TOKENS__SIGNING_ALG", "HS256", "tokens.signing_alg: must be ES256, EdDSA or RS256"),
            ("TESSERA_TOKENS__CLIENT_CACHE_TTL", "-1", "tokens.client_cache_ttl"),
            ("TESSERA_ISSUER", "id.example.com", "issuer: must be an http(s) URL"),
            ("TESSERA_HTTP__PUBLIC_URL", "ftp://id.example.com", "http.public_url: must be an http(s) URL"),
        ] {
            let e = Settings::load(None, &env(&[(key, value)])).unwrap_err();
            assert!(format!("{e:#}").contains(says), "{key}={value}: {e:#}");
        }
        let s = Settings::load(
            None,
            &env(&[
                ("TESSERA_TOKENS__SIGNING_ALG", "EdDSA"),
                ("TESSERA_LOG__FORMAT", "json"),
                ("TESSERA_ISSUER", "https://id.example.com"),
                ("TESSERA_HTTP__LISTEN", "[::]:8443"),
            ]),
        )
        .unwrap();
        assert_eq!(s.core_config().unwrap().signing_alg, Algorithm::EdDsa, "no silent fallback to ES256");
        assert_eq!(s.log.format, LogFormat::Json);
        assert_eq!(s.issuer(), "https://id.example.com", "the issuer exactly as written, no `/` added");
        assert_eq!(s.http.listen.port(), 8443);
        let s = Settings::load(None, &env(&[("TESSERA_GRPC__LISTEN", "[::]:6000")])).unwrap();
        assert_eq!(s.token_service_url(), "http://[::1]:6000");
    }

    #[test]
    fn urls_lose_their_password_when_printed() {
        assert_eq!(redact_url("postgres://app:s3cret@db:5432/x"), "postgres://app:***@db:5432/x");
        assert_eq!(redact_url("redis://127.0.0.1:6379"), "redis://127.0.0.1:6379");
        assert_eq!(redact_url("postgres://postgres@db/x"), "postgres://postgres@db/x");
        assert_eq!(redact_url("redis://:pw@cache:6379"), "redis://:***@cache:6379");
        assert_eq!(redact_url("postgres://u:p@ss@db/x"), "postgres://u:***@db/x");
        assert_eq!(redact_url("postgres://h/db?password=s3cret&sslmode=require"), "postgres://h/db?…");
        assert_eq!(redact_url("sqlite://data/tessera.db?mode=rwc"), "sqlite://data/tessera.db?…");
    }

    #[test]
    fn the_password_pool_defaults_to_the_cores_and_takes_its_size_from_the_environment() {
        let cores = std::thread::available_parallelism().unwrap().get();
        let c = Settings::load(None, &env(&[])).unwrap().core_config().unwrap();
        assert_eq!((c.passwords.workers, c.passwords.queue), (cores, 4 * cores));
        let c = Settings::load(None, &env(&[("TESSERA_PASSWORDS__WORKERS", "3")])).unwrap().core_config().unwrap();
        assert_eq!((c.passwords.workers, c.passwords.queue), (3, 12), "the queue follows the workers");
        let s = Settings::load(None, &env(&[("TESSERA_PASSWORDS__WORKERS", "1"), ("TESSERA_PASSWORDS__QUEUE", "0")]));
        let c = s.unwrap().core_config().unwrap();
        assert_eq!((c.passwords.workers, c.passwords.queue), (1, 0));
        for (key, value) in [("WORKERS", "0"), ("WORKERS", "1000"), ("QUEUE", "-1"), ("QUEUE", "1000000")] {
            let e = Settings::load(None, &env(&[(&format!("TESSERA_PASSWORDS__{key}"), value)])).unwrap_err();
            assert!(format!("{e:#}").contains("passwords."), "{key}={value}: {e:#}");
        }
    }
}
