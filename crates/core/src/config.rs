//! The core's settings: lifetimes, the issuer, lockout policy. Plain values; the services
//! fill them from their configuration.

/// Token service policy. All durations are seconds.
#[derive(Clone, Debug)]
pub struct CoreConfig {
    /// `iss` of every token, and the base of the device verification URI.
    pub issuer: String,
    /// `aud` of access tokens (RFC 9068 §2.2). Defaults to the issuer.
    pub audience: String,
    pub access_token_ttl: i64,
    pub refresh_token_ttl: i64,
    pub id_token_ttl: i64,
    pub code_ttl: i64,
    pub device_code_ttl: i64,
    pub device_interval: i64,
    /// Device authorizations one client may start per minute; past it the device
    /// authorization endpoint answers `temporarily_unavailable` until the minute ends.
    pub device_starts_per_minute: u32,
    pub session_ttl: i64,
    /// Where a person enters a user code (RFC 8628 §3.2 `verification_uri`).
    pub verification_uri: String,
    /// Failed password attempts on one account that pass without delay; after them each
    /// attempt waits a delay that doubles from 1 s to 30 s (never a hard lock; see
    /// [`crate::throttle`]).
    pub lockout_threshold: u32,
    /// Quiet seconds after the last failure after which an account's count starts afresh.
    pub lockout_window: i64,
    /// How long a used code's tombstone is kept so a replay can still revoke.
    pub code_tombstone_ttl: i64,
    /// The JWS algorithm of new signing keys.
    pub signing_alg: tessera_crypto::keys::Algorithm,
    /// How long a node trusts a client it read from the durable store, so client
    /// authentication on the hot paths (client_credentials, introspection) needs no database
    /// round trip. Administrator changes (a rotated secret, a deleted client) drop the entry on
    /// every node through the revocation log at once; this bounds only how stale anything
    /// else may be. 0 disables the cache.
    pub client_cache_ttl: i64,
    /// How long after a refresh a retry of it (the same rotated token, from the same client,
    /// its successor never used) is answered with the same successor instead of being treated
    /// as reuse, for clients that lost the first answer. 0 disables it: every second
    /// presentation revokes the family.
    pub refresh_retry_window: i64,
    /// The public client a request that names no client at all acts as, for APIs whose
    /// callers send none (such as a JSON password grant with only a username and password).
    /// `None` (the default): such a request is `invalid_client`.
    pub default_client_id: Option<String>,
    /// Seals private signing keys at rest (AES-256-GCM). `None`: keys are stored unsealed.
    pub key_encryption_key: Option<tessera_crypto::seal::Kek>,
    /// The password workers (each holds one 19 MiB Argon2 buffer while busy) and how many
    /// checks may wait for them before the next is refused as `temporarily_unavailable`
    /// (DESIGN.md rule 8). Defaults to one worker per core and four waiting per worker.
    pub passwords: tessera_crypto::password_pool::PoolConfig,
}

impl CoreConfig {
    pub fn new(issuer: impl Into<String>) -> Self {
        let issuer: String = issuer.into();
        let issuer = issuer.trim_end_matches('/').to_owned();
        Self {
            audience: issuer.clone(),
            verification_uri: format!("{issuer}/device"),
            issuer,
            access_token_ttl: 3600,
            refresh_token_ttl: 30 * 24 * 3600,
            id_token_ttl: 3600,
            code_ttl: 60,
            device_code_ttl: 600,
            device_interval: 5,
            device_starts_per_minute: 600,
            session_ttl: 8 * 3600,
            lockout_threshold: 10,
            lockout_window: 15 * 60,
            code_tombstone_ttl: 24 * 3600,
            signing_alg: tessera_crypto::keys::Algorithm::Es256,
            client_cache_ttl: 10,
            refresh_retry_window: 5,
            key_encryption_key: None,
            default_client_id: None,
            passwords: tessera_crypto::password_pool::PoolConfig::for_this_machine(),
        }
    }
}
