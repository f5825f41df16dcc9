//! What both of Tessera's services read of their configuration, and how they read it:
//! defaults → an optional TOML file (unknown keys refused) → `TESSERA_SECTION__KEY`
//! environment variables → `DATABASE_URL` / `REDIS_URL`, into a settings type of the caller's
//! ([`load`]). Each value parses into its type as it loads ([`HttpUrl`], [`SecretUrl`],
//! `SocketAddr`, [`LogFormat`]), so a settings value that loaded holds nothing invalid; an
//! error names its key and never shows the value of a secret one.
//!
//! The sections both services read are here ([`HttpSettings`], [`GrpcSettings`],
//! [`FacadeSettings`], [`ShutdownSettings`], [`LogSettings`], [`OtelSettings`]); each
//! service's settings type adds its own.

use anyhow::bail;
use figment::providers::{Format as _, Toml};
use figment::Figment;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::Path;
pub use tessera_proto::networks::TrustedNetworks;

/// Loads `T` from an optional TOML file and the environment.
pub fn load<T: DeserializeOwned>(file: Option<&Path>, env: &dyn EnvSource) -> anyhow::Result<T> {
    let mut figment = Figment::new();
    if let Some(path) = file {
        if !path.exists() {
            bail!("configuration file {} does not exist", path.display());
        }
        figment = figment.merge(Toml::file(path));
    }
    let vars = env.vars();
    // A table, not TOML text: a value can't break the syntax, a later source simply wins,
    // and secret-bearing keys stay strings so no type error can quote them.
    let mut overlay = toml::Table::new();
    let tessera_vars = vars.iter().filter_map(|(key, value)| {
        let rest = key.strip_prefix("TESSERA_")?;
        // The command line's own variables share the prefix but are not settings.
        (!rest.is_empty() && !CLI_VARIABLES.contains(&rest)).then(|| (rest.to_lowercase().replace("__", "."), value))
    });
    let url_vars = [("DATABASE_URL", "database.url"), ("REDIS_URL", "redis.url")]
        .into_iter()
        .filter_map(|(key, path)| vars.iter().find(|(k, _)| k == key).map(|(_, v)| (path.to_owned(), v)));
    for (path, value) in tessera_vars.chain(url_vars) {
        insert_path(&mut overlay, &path, env_value(&path, value));
    }
    figment = figment.merge(figment::providers::Serialized::defaults(overlay));
    figment.extract().map_err(describe_errors)
}

/// Where a facade reaches the token service's gRPC listener: `facade.token_service_url`, else
/// `http://` + `grpc.listen` (a wildcard address becomes loopback).
pub fn token_service_url(grpc: &GrpcSettings, facade: &FacadeSettings) -> String {
    if let Some(url) = &facade.token_service_url {
        return url.to_string();
    }
    let mut listen = grpc.listen;
    if listen.ip().is_unspecified() {
        listen.set_ip(if listen.is_ipv4() { [127, 0, 0, 1].into() } else { std::net::Ipv6Addr::LOCALHOST.into() });
    }
    format!("http://{listen}")
}

/// Where settings come from besides the file: the process environment in production, a map
/// in tests (so no test ever calls `std::env::set_var`).
pub trait EnvSource {
    fn vars(&self) -> Vec<(String, String)>;
}

/// The process environment.
pub struct ProcessEnv;

impl EnvSource for ProcessEnv {
    fn vars(&self) -> Vec<(String, String)> {
        std::env::vars().collect()
    }
}

impl EnvSource for Vec<(String, String)> {
    fn vars(&self) -> Vec<(String, String)> {
        self.clone()
    }
}

/// `TESSERA_*` variables the `tessera` command reads itself (they are not settings keys).
pub const CLI_VARIABLES: &[&str] = &["CONFIG", "PASSWORD", "ADMIN_ENDPOINT"];

// ---------------------------------------------------------------------------------------------
// The sections both services read

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GrpcSettings {
    pub listen: SocketAddr,
    /// Peers whose relayed client address (`x-tessera-client-addr`) is believed: the facades.
    /// Defaults to loopback and the private ranges (see the token service's `source.rs`); `[]`
    /// trusts no one over the network (a facade in the token service's own process, on the
    /// local channel, is always believed).
    pub trusted_relays: TrustedNetworks,
    /// Connections the token service's gRPC port holds open at once (16 to 1,000,000); one
    /// more is refused as it arrives. An idle HTTP/2 connection costs the service about 10 KiB.
    pub max_connections: u32,
}

impl GrpcSettings {
    /// The default for [`GrpcSettings::max_connections`]: about 100 MB of idle connections.
    pub const DEFAULT_MAX_CONNECTIONS: u32 = 10_000;
}

impl Default for GrpcSettings {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 50051)),
            trusted_relays: TrustedNetworks::loopback_and_private(),
            max_connections: Self::DEFAULT_MAX_CONNECTIONS,
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpSettings {
    pub listen: SocketAddr,
    /// The URL browsers and clients use to reach the facade.
    pub public_url: Option<HttpUrl>,
}

impl Default for HttpSettings {
    fn default() -> Self {
        Self { listen: SocketAddr::from(([127, 0, 0, 1], 8080)), public_url: None }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ShutdownSettings {
    /// Seconds in-flight requests get to finish after SIGTERM before the process exits anyway.
    pub grace_period: u64,
}

impl Default for ShutdownSettings {
    fn default() -> Self {
        Self { grace_period: 20 }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogSettings {
    /// "text" or "json".
    pub format: LogFormat,
    pub level: String,
}

impl Default for LogSettings {
    fn default() -> Self {
        Self { format: LogFormat::Text, level: "info".into() }
    }
}

#[derive(Clone, Debug, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct OtelSettings {
    /// An OTLP/gRPC collector (e.g. `http://jaeger:4317`) to export traces to. The standard
    /// `OTEL_EXPORTER_OTLP_ENDPOINT` variable also turns export on, and wins over this key.
    /// Neither set: no traces are exported.
    #[serde(deserialize_with = "empty_is_none")]
    pub endpoint: Option<HttpUrl>,
}

#[derive(Clone, Debug, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct FacadeSettings {
    /// The token service's gRPC URL for an HTTP facade running on its own; empty means
    /// `http://` + `grpc.listen` (a wildcard address becomes 127.0.0.1).
    #[serde(deserialize_with = "empty_is_none")]
    pub token_service_url: Option<HttpUrl>,
    /// HTTP proxies (IPs or CIDRs) in front of the facade whose `X-Forwarded-For` is believed;
    /// empty (the default): the client is the TCP peer.
    pub trusted_proxies: TrustedNetworks,
}

impl LogSettings {
    /// Logs as this section says, and for a server (`service_name` set) traces: exported over
    /// OTLP when `otel.endpoint` or `OTEL_EXPORTER_OTLP_ENDPOINT` names a collector.
    pub fn telemetry(&self, otel: &OtelSettings, service_name: Option<&str>) -> tessera_telemetry::Config {
        let format = match self.format {
            LogFormat::Json => tessera_telemetry::Format::Json,
            LogFormat::Text => tessera_telemetry::Format::Text,
        };
        let export = service_name.map(|name| tessera_telemetry::ExportSettings {
            endpoint: otel.endpoint.as_ref().map(ToString::to_string),
            service_name: name.to_owned(),
        });
        tessera_telemetry::Config { format, level: self.level.clone(), export }
    }
}

impl ShutdownSettings {
    /// The grace period's range (at most an hour).
    pub fn check(&self) -> anyhow::Result<()> {
        if self.grace_period > 3600 {
            bail!("shutdown.grace_period: at most 3600 seconds, got {}", self.grace_period);
        }
        Ok(())
    }
}

/// Completes on SIGTERM or Ctrl-C: when a server starts its `shutdown.grace_period`.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
}

impl HttpSettings {
    /// The URL browsers and clients use to reach the facade, without a trailing `/`.
    pub fn public_url(&self) -> String {
        match &self.public_url {
            Some(u) => u.as_str().trim_end_matches('/').to_owned(),
            None => format!("http://{}", self.listen),
        }
    }
}

/// What an admin credential must be (said in errors instead of the value).
pub const ADMIN_TOKEN_EXPECTED: &str = "must be at least 16 characters";
/// What a key-encryption key must be (said in errors instead of the value).
pub const KEK_EXPECTED: &str = "must be base64 of 32 random bytes (`tessera admin keys generate-kek` prints one)";
/// Messages of the token service's typed secrets that say what is wrong without quoting the
/// value, so they may be shown.
const SAFE_MESSAGES: [&str; 2] = [ADMIN_TOKEN_EXPECTED, KEK_EXPECTED];

/// Settings whose values are secrets or may hold one (a password in a URL).
pub const SECRET_KEYS: [&str; 4] = ["admin.token", "keys.encryption_key", "database.url", "redis.url"];

/// An environment value as a TOML value: numbers and booleans as such, anything else (and
/// every secret) a string.
fn env_value(path: &str, v: &str) -> toml::Value {
    if SECRET_KEYS.contains(&path) {
        return toml::Value::String(v.to_owned());
    }
    if let Ok(n) = v.parse::<i64>() {
        toml::Value::Integer(n)
    } else if let Ok(b) = v.parse::<bool>() {
        toml::Value::Boolean(b)
    } else {
        toml::Value::String(v.to_owned())
    }
}

/// Sets `a.b.c` in a table, creating the intermediate tables.
fn insert_path(table: &mut toml::Table, path: &str, value: toml::Value) {
    match path.split_once('.') {
        None => {
            table.insert(path.to_owned(), value);
        }
        Some((head, rest)) => {
            let entry = table.entry(head.to_owned()).or_insert_with(|| toml::Value::Table(toml::Table::new()));
            if !entry.is_table() {
                *entry = toml::Value::Table(toml::Table::new());
            }
            if let toml::Value::Table(inner) = entry {
                insert_path(inner, rest, value);
            }
        }
    }
}

/// Every configuration error, naming its key; the value of a secret key is never shown.
fn describe_errors(errors: figment::Error) -> anyhow::Error {
    use figment::error::Kind;
    let lines: Vec<String> = errors
        .into_iter()
        .map(|e| {
            let key = e.path.join(".");
            // A table that holds a secret counts too: `redis = "redis://:pw@…"` is a URL in
            // the wrong place, and a type error would quote it. Errors about names are safe.
            let names_only =
                matches!(e.kind, Kind::UnknownField(..) | Kind::MissingField(..) | Kind::DuplicateField(..));
            // What the typed secrets say of a bad value quotes nothing of it.
            let ours = matches!(&e.kind, Kind::Message(m) if SAFE_MESSAGES.contains(&m.as_str())
                || m == SecretUrl::DATABASE
                || m == SecretUrl::REDIS);
            if SECRET_KEYS.iter().any(|s| *s == key || s.strip_prefix(key.as_str()).is_some_and(|r| r.starts_with('.')))
                && !names_only
                && !ours
            {
                format!("{key}: invalid value (not shown: it may hold a secret)")
            } else if key.is_empty() {
                without_excerpt(&e.kind.to_string())
            } else {
                format!("{key}: {}", e.kind)
            }
        })
        .collect();
    anyhow::anyhow!("invalid configuration: {}", lines.join("; "))
}

/// A TOML syntax error without the excerpt of the file it carries: the broken line may be the
/// one that holds a secret (a missing closing quote, say). The position and the complaint stay.
fn without_excerpt(message: &str) -> String {
    let kept: Vec<&str> = message
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with(|c: char| c == '|' || c.is_ascii_digit()))
        .collect();
    kept.join(": ")
}

// ---------------------------------------------------------------------------------------------
// Typed values: each parses once, when the settings load, so a `Settings` holds no value that
// a later step could find invalid.

/// An `http://` or `https://` URL, kept as written: the issuer is compared byte for byte by
/// relying parties, so a parsed-and-reprinted form (a trailing `/` added) would break them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpUrl(String);

impl HttpUrl {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::str::FromStr for HttpUrl {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let wrong = || format!("must be an http(s) URL such as http://host:port, got {s:?}");
        // The text is what is kept: it must be the URL as it parses, nothing trimmed around it.
        let literal = (s.starts_with("http://") || s.starts_with("https://"))
            && !s.chars().any(|c| c.is_whitespace() || c.is_control());
        let parsed = url::Url::parse(s).map_err(|e| format!("{} ({e})", wrong()))?;
        if !literal || !parsed.has_host() {
            return Err(wrong());
        }
        Ok(HttpUrl(s.to_owned()))
    }
}

impl std::fmt::Display for HttpUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for HttpUrl {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?.parse().map_err(serde::de::Error::custom)
    }
}

/// A store's URL, which may carry a password: `Debug` and [`SecretUrl::redacted`] hide it, and
/// what is wrong with one is said without quoting it. [`SecretUrl::expose`] is for the driver.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretUrl(String);

impl SecretUrl {
    /// What a database URL must look like (said in errors instead of the value).
    pub const DATABASE: &'static str = "must start with postgres://, postgresql:// or sqlite:";
    /// What a Redis URL must look like.
    pub const REDIS: &'static str = "must start with redis://, rediss://, redis+unix://, unix://, \
         redis+sentinel:// or redis+cluster://";

    /// A Postgres or SQLite URL.
    pub fn database(url: &str) -> Result<Self, &'static str> {
        let ok = ["postgres://", "postgresql://", "sqlite:"].iter().any(|s| url.starts_with(s));
        ok.then(|| SecretUrl(url.to_owned())).ok_or(Self::DATABASE)
    }

    /// A Redis URL, of any topology the Redis adapter understands.
    pub fn redis(url: &str) -> Result<Self, &'static str> {
        let schemes = ["redis://", "rediss://", "redis+unix://", "unix://", "redis+sentinel://", "redis+cluster://"];
        schemes.iter().any(|s| url.starts_with(s)).then(|| SecretUrl(url.to_owned())).ok_or(Self::REDIS)
    }

    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The URL with its password (and any query, which may hold one) replaced, for banners.
    pub fn redacted(&self) -> String {
        redact_url(&self.0)
    }
}

impl std::fmt::Debug for SecretUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SecretUrl({})", self.redacted())
    }
}

/// `scheme://user:***@host/path?…`: the password hidden, and the query, which may carry one
/// too (`?password=…`).
pub fn redact_url(url: &str) -> String {
    let (url, query) = match url.split_once('?') {
        Some((base, _)) => (base, "?…"),
        None => (url, ""),
    };
    let shown = match url.split_once("://") {
        Some((scheme, rest)) => match rest.rsplit_once('@') {
            Some((userinfo, host)) => match userinfo.split_once(':') {
                Some((user, _password)) => format!("{scheme}://{user}:***@{host}"),
                None => url.to_owned(),
            },
            None => url.to_owned(),
        },
        None => url.to_owned(),
    };
    format!("{shown}{query}")
}

/// How logs are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

/// For `deserialize_with`: `""` is `None`; anything else parses as `T`.
pub fn empty_is_none<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: std::str::FromStr,
    T::Err: std::fmt::Display,
{
    let s = String::deserialize(d)?;
    if s.is_empty() {
        return Ok(None);
    }
    s.parse().map(Some).map_err(|e| serde::de::Error::custom(format!("{e} (empty turns it off)")))
}

pub fn database_url<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<SecretUrl>, D::Error> {
    let s = String::deserialize(d)?;
    (!s.is_empty()).then(|| SecretUrl::database(&s)).transpose().map_err(serde::de::Error::custom)
}

pub fn redis_url<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<SecretUrl>, D::Error> {
    let s = String::deserialize(d)?;
    (!s.is_empty()).then(|| SecretUrl::redis(&s)).transpose().map_err(serde::de::Error::custom)
}
