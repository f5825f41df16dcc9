//! Protects a Rust resource server with Tessera access tokens, without a call to Tessera per
//! request.
//!
//! A [`Verifier`] checks `at+jwt` access tokens (RFC 9068) in process: signature (ES256, EdDSA
//! or RS256, keys from the token service's JWK Set, fetched again when a token names a key it
//! does not know), `typ`, `iss`, `aud`, `exp` and `nbf` with a small leeway. It also follows
//! the token service's `WatchRevocations` stream, so a token revoked (or issued before its
//! user was disabled, or its client deleted) is refused within moments, not at its `exp`.
//! While the stream is lost for longer than [`Config::max_disconnected`], it refuses every
//! token (fail closed, the default) or goes on without revocations (fail open).
//!
//! [`RequireToken`] is the same as a `tower::Layer`, for a tonic server or an axum/hyper
//! router: a request without a valid token is answered 401 (`WWW-Authenticate: Bearer
//! error="invalid_token"`) or UNAUTHENTICATED; a valid one reaches the handler with its
//! [`Claims`] in the request extensions. [`require_scope`] answers 403 `insufficient_scope`
//! or PERMISSION_DENIED.
//!
//! Memory: the revocations held are those still alive (an access token's revocation is
//! dropped at its `exp`; one cut-off per user or client an administrator changed), and the
//! cache of verified tokens holds at most [`Config::cache_capacity`] entries, whatever the
//! traffic.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::todo))]

mod cache;
mod keys;
mod layer;
mod revocations;
mod watch;

pub use layer::{require_scope, InsufficientScope, RequireToken, RequireTokenService};
pub use revocations::Revocations;

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tessera_proto::token::v1::token_service_client::TokenServiceClient;
use tonic::transport::Channel;

/// What a verified access token says, handed to handlers in the request extensions.
#[derive(Clone, Debug, PartialEq, Eq, serde::Deserialize)]
pub struct Claims {
    pub iss: String,
    /// The user's id, or the client's for a client's own token.
    pub sub: String,
    pub aud: String,
    pub exp: i64,
    pub iat: i64,
    pub nbf: i64,
    pub jti: String,
    /// The client the token was issued to.
    pub client_id: String,
    /// Space-separated scopes.
    pub scope: String,
    /// When the user signed in.
    #[serde(default)]
    pub auth_time: Option<i64>,
    /// Present on tokens issued for a user.
    #[serde(default)]
    pub username: Option<String>,
}

impl Claims {
    /// Whether the token carries `scope`.
    pub fn has_scope(&self, scope: &str) -> bool {
        self.scope.split(' ').any(|s| s == scope)
    }

    /// The scopes, in the order issued.
    pub fn scopes(&self) -> impl Iterator<Item = &str> {
        self.scope.split(' ').filter(|s| !s.is_empty())
    }

    /// Whether a user's token (not a client's own).
    pub fn is_user_token(&self) -> bool {
        self.username.is_some()
    }
}

/// Why a token was refused. What a client is told is only "invalid_token" (or that the
/// service is unavailable); the reason is for logs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Rejection {
    /// No `Authorization: Bearer` credential (RFC 6750 §3.1: no error code is sent).
    Missing,
    /// Not a well-formed access token of this issuer and audience, a bad signature, an
    /// unknown key, expired or not yet valid.
    Invalid(&'static str),
    /// Revoked: by its id, or issued before a cut-off of its user or client.
    Revoked,
    /// Fail closed: the revocation stream has been lost for too long to vouch for any token.
    Unavailable,
}

/// What to do while the revocation stream is lost for longer than the bound.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WhenDisconnected {
    /// Refuse every token (503 / UNAVAILABLE): a revoked token is never accepted.
    FailClosed,
    /// Accept tokens on their signature and lifetime alone, as if nothing was revoked since.
    FailOpen,
}

/// How a [`Verifier`] checks tokens and follows revocations. `Debug` leaves the secret out.
#[derive(Clone)]
pub struct Config {
    /// The token service's issuer, compared with `iss` byte for byte.
    pub issuer: String,
    /// The `aud` required; `None` accepts the issuer's default audience (the issuer itself).
    pub audience: Option<String>,
    /// A confidential client allowed to watch revocations (`tessera admin client permissions
    /// <id> --watch-revocations true`).
    pub client_id: String,
    pub client_secret: String,
    /// Clock skew allowed on `exp` and `nbf` (at most [`MAX_LEEWAY`]).
    pub leeway: Duration,
    /// How long the revocation stream may be lost before [`Config::when_disconnected`] applies
    /// (at least three heartbeats).
    pub max_disconnected: Duration,
    pub when_disconnected: WhenDisconnected,
    /// Verified tokens kept, so a token seen again skips the signature check.
    pub cache_capacity: usize,
    /// Heartbeats asked of the stream; silence for three of them counts as a lost stream.
    pub heartbeat: Duration,
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .field("client_id", &self.client_id)
            .field("client_secret", &"<redacted>")
            .field("leeway", &self.leeway)
            .field("max_disconnected", &self.max_disconnected)
            .field("when_disconnected", &self.when_disconnected)
            .field("cache_capacity", &self.cache_capacity)
            .field("heartbeat", &self.heartbeat)
            .finish()
    }
}

impl Config {
    /// The defaults: 5 s leeway, fail closed after 30 s without the stream, 10,000 cached
    /// tokens, a heartbeat every 5 s.
    pub fn new(issuer: impl Into<String>, client_id: impl Into<String>, client_secret: impl Into<String>) -> Self {
        Config {
            issuer: issuer.into(),
            audience: None,
            client_id: client_id.into(),
            client_secret: client_secret.into(),
            leeway: Duration::from_secs(5),
            max_disconnected: Duration::from_secs(30),
            when_disconnected: WhenDisconnected::FailClosed,
            cache_capacity: 10_000,
            heartbeat: Duration::from_secs(5),
        }
    }
}

/// Verifies access tokens locally and follows revocations. Cheap to clone; the stream is
/// followed by one task, which ends when the last clone is dropped.
#[derive(Clone)]
pub struct Verifier {
    inner: Arc<Inner>,
}

pub(crate) struct Inner {
    cfg: Config,
    pub(crate) keys: keys::Keys,
    revocations: Revocations,
    pub(crate) cache: cache::TokenCache,
    /// When the stream was last heard from (Unix ms); 0 before it first caught up.
    last_heard_ms: AtomicI64,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier").field("issuer", &self.inner.cfg.issuer).finish_non_exhaustive()
    }
}

/// The longest leeway on `exp` and `nbf` a verifier takes.
pub const MAX_LEEWAY: Duration = Duration::from_secs(60);

pub(crate) fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

impl Verifier {
    /// A verifier that fetches keys and follows revocations through `channel` (a connection
    /// to the token service's gRPC port; `Channel::balance_list` spreads it over replicas).
    /// Returns at once; until the stream has delivered its snapshot the verifier counts as
    /// disconnected (see [`Verifier::caught_up`]).
    pub fn start(channel: Channel, mut cfg: Config) -> Self {
        // The token service sends an access token's revocation until a minute past its `exp`;
        // a longer leeway would accept revoked tokens it no longer speaks of.
        cfg.leeway = cfg.leeway.min(MAX_LEEWAY);
        // One late heartbeat must not count as a lost stream.
        cfg.heartbeat = cfg.heartbeat.clamp(Duration::from_secs(1), Duration::from_secs(60));
        cfg.max_disconnected = cfg.max_disconnected.max(cfg.heartbeat * 3);
        let client = TokenServiceClient::new(channel);
        let inner = Arc::new(Inner {
            keys: keys::Keys::new(client.clone()),
            revocations: Revocations::new(cfg.leeway.as_secs() as i64),
            cache: cache::TokenCache::new(cfg.cache_capacity),
            last_heard_ms: AtomicI64::new(0),
            cfg,
        });
        tokio::spawn(watch::follow(Arc::downgrade(&inner), client));
        tokio::spawn(keys::refresh_now_and_then(Arc::downgrade(&inner)));
        Verifier { inner }
    }

    /// Waits until the revocation stream has delivered everything up to now, for at most
    /// `timeout`; `false` if it has not.
    pub async fn caught_up(&self, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        while self.inner.last_heard_ms.load(Ordering::Acquire) == 0 {
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        true
    }

    /// Whether the stream was heard from within the bound.
    pub fn connected(&self) -> bool {
        let heard = self.inner.last_heard_ms.load(Ordering::Acquire);
        heard > 0 && now_ms() - heard <= self.inner.cfg.max_disconnected.as_millis() as i64
    }

    /// The revocations held now.
    pub fn revocations(&self) -> &Revocations {
        &self.inner.revocations
    }

    /// Tokens held in the cache of verified tokens.
    pub fn cached_tokens(&self) -> usize {
        self.inner.cache.len()
    }

    /// Checks a token: from the cache when it was verified before (no signature check), else
    /// in full, fetching the JWK Set again if the token names a key not seen yet.
    pub async fn verify(&self, token: &str) -> Result<Arc<Claims>, Rejection> {
        match self.verify_cached(token) {
            Some(answer) => answer,
            None => self.verify_full(token).await,
        }
    }

    /// The answer for a token already verified, with no waiting; `None` if it must be checked
    /// in full.
    pub fn verify_cached(&self, token: &str) -> Option<Result<Arc<Claims>, Rejection>> {
        let now = now_ms() / 1000;
        let claims = self.inner.cache.get(token)?;
        Some(self.admit(claims, now))
    }

    async fn verify_full(&self, token: &str) -> Result<Arc<Claims>, Rejection> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| Rejection::Invalid("malformed"))?;
        if !matches!(header.typ.as_deref(), Some("at+jwt" | "application/at+jwt")) {
            return Err(Rejection::Invalid("not an access token (typ)"));
        }
        let kid = header.kid.ok_or(Rejection::Invalid("no kid"))?;
        let key = self.inner.keys.find(&kid).await;
        if self.inner.keys.take_withdrawn() {
            // Tokens verified with a key the service withdrew are not trusted from the cache.
            self.inner.cache.clear();
        }
        let key = key.ok_or(Rejection::Invalid("unknown key"))?;
        if key.alg != header.alg {
            return Err(Rejection::Invalid("algorithm mismatch"));
        }
        let cfg = &self.inner.cfg;
        let mut v = jsonwebtoken::Validation::new(key.alg);
        v.leeway = cfg.leeway.as_secs();
        v.validate_nbf = true;
        v.set_issuer(&[&cfg.issuer]);
        v.set_audience(&[cfg.audience.as_deref().unwrap_or(&cfg.issuer)]);
        v.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        let data = jsonwebtoken::decode::<Claims>(token, &key.key, &v).map_err(|e| {
            use jsonwebtoken::errors::ErrorKind;
            Rejection::Invalid(match e.kind() {
                ErrorKind::ExpiredSignature => "expired",
                ErrorKind::ImmatureSignature => "not yet valid",
                ErrorKind::InvalidIssuer => "another issuer",
                ErrorKind::InvalidAudience => "another audience",
                ErrorKind::InvalidSignature => "bad signature",
                _ => "malformed",
            })
        })?;
        let claims = Arc::new(data.claims);
        let now = now_ms() / 1000;
        self.inner.cache.insert(token, Arc::clone(&claims), now);
        self.admit(claims, now)
    }

    /// The checks that change with time: lifetime (a cached token expires too), the
    /// revocations, and whether they can be trusted.
    fn admit(&self, claims: Arc<Claims>, now: i64) -> Result<Arc<Claims>, Rejection> {
        let leeway = self.inner.cfg.leeway.as_secs() as i64;
        if claims.exp + leeway <= now {
            return Err(Rejection::Invalid("expired"));
        }
        if claims.nbf - leeway > now {
            return Err(Rejection::Invalid("not yet valid"));
        }
        if !self.connected() && self.inner.cfg.when_disconnected == WhenDisconnected::FailClosed {
            return Err(Rejection::Unavailable);
        }
        if self.inner.revocations.revokes(&claims) {
            return Err(Rejection::Revoked);
        }
        Ok(claims)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_secret_stays_out_of_debug() {
        let cfg = Config::new("https://id.example", "rs", "s3cret-value-of-the-watcher");
        let shown = format!("{cfg:?}");
        assert!(!shown.contains("s3cret"), "{shown}");
        assert!(shown.contains("rs") && shown.contains("<redacted>"));
    }
}
