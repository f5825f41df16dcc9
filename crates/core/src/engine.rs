//! [`Tessera`]: the token service's decisions, wired to its ports. Transports turn requests
//! into the typed commands here; everything that can be refused is refused here.
//!
//! What it decides is split by responsibility: [`crate::clients`] (client authentication and
//! policy), [`crate::issuing`] (minting tokens), [`crate::accounts`] (passwords and lockout),
//! [`crate::audit`], and the grants, authorization and introspection in their own modules.

use crate::clients::ClientCache;
use crate::clock::Clock;
use crate::config::CoreConfig;
use crate::error::OAuthError;
use crate::keys::KeyRing;
use crate::ports::{AuditLog, Durable, Ephemeral};
use crate::revocation::{LogCursor, Revocations};
use crate::tokens::VerifiedCache;
use std::sync::Arc;
use std::time::Duration;

/// The token service core.
pub struct Tessera {
    pub(crate) cfg: CoreConfig,
    pub(crate) durable: Arc<dyn Durable>,
    /// Where security events go: the durable store's audit log unless another was given.
    pub(crate) audit_log: Arc<dyn AuditLog>,
    pub(crate) ephemeral: Arc<dyn Ephemeral>,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) keys: KeyRing,
    pub(crate) revocations: Revocations,
    pub(crate) log_cursor: tokio::sync::Mutex<LogCursor>,
    /// Where `log_cursor` has settled, readable without its lock.
    pub(crate) log_settled: std::sync::atomic::AtomicI64,
    /// Every revocation this node applies, for the watchers (see [`crate::watch`]).
    pub(crate) live: tokio::sync::broadcast::Sender<crate::watch::Watched>,
    /// Security Event Token polls waiting for an event.
    pub(crate) long_polls: tokio::sync::Semaphore,
    /// Security Event Token polls signing at once.
    pub(crate) set_polls: tokio::sync::Semaphore,
    /// When the durable log was last read in full ([`crate::watch::monotonic_ms`]; 0: never).
    pub(crate) last_drain: std::sync::atomic::AtomicI64,
    /// The identity of the durable log, part of every cursor.
    pub(crate) log_epoch: std::sync::OnceLock<String>,
    pub(crate) verified: VerifiedCache,
    pub(crate) clients: ClientCache,
    /// Every Argon2 computation runs here: fixed workers, bounded queue (DESIGN.md rule 8).
    pub(crate) passwords: tessera_crypto::password_pool::PasswordPool,
}

/// The result of [`Tessera::start`].
pub struct Started {
    pub tessera: Arc<Tessera>,
    /// True when this start created the first signing key: the store was new.
    pub first_start: bool,
}

impl Tessera {
    /// Loads (or on a new store creates) the signing keys and the revocation snapshot.
    pub async fn start(
        cfg: CoreConfig,
        durable: Arc<dyn Durable>,
        ephemeral: Arc<dyn Ephemeral>,
        clock: Arc<dyn Clock>,
    ) -> Result<Started, OAuthError> {
        let audit_log: Arc<dyn AuditLog> = durable.clone();
        Self::start_with_audit(cfg, durable, audit_log, ephemeral, clock).await
    }

    /// As [`Tessera::start`], with security events written to `audit_log` (the durable store's
    /// log behind something that also counts them, say) instead of the durable store itself.
    pub async fn start_with_audit(
        cfg: CoreConfig,
        durable: Arc<dyn Durable>,
        audit_log: Arc<dyn AuditLog>,
        ephemeral: Arc<dyn Ephemeral>,
        clock: Arc<dyn Clock>,
    ) -> Result<Started, OAuthError> {
        let now = clock.now();
        let loaded =
            KeyRing::load(durable.as_ref(), cfg.signing_alg, cfg.key_encryption_key.clone(), now, key_retention(&cfg))
                .await?;
        let passwords = tessera_crypto::password_pool::PasswordPool::start(cfg.passwords)
            .map_err(|e| OAuthError::server_error(format!("cannot start the password workers: {e}")))?;
        let tessera = Arc::new(Self {
            passwords,
            cfg,
            durable,
            audit_log,
            ephemeral,
            clock,
            keys: loaded.ring,
            revocations: Revocations::default(),
            log_cursor: Default::default(),
            log_settled: Default::default(),
            live: tokio::sync::broadcast::channel(crate::watch::LIVE_BUFFER).0,
            long_polls: tokio::sync::Semaphore::new(crate::watch::LONG_POLLS),
            set_polls: tokio::sync::Semaphore::new(crate::watch::SET_POLLS),
            last_drain: Default::default(),
            log_epoch: Default::default(),
            verified: VerifiedCache::new(100_000),
            clients: ClientCache::default(),
        });
        // A node that cannot read the revocations yet still starts; the sync task retries.
        if let Err(e) = tessera.drain_revocation_log().await {
            tracing::warn!(error = %e, "cannot read the revocation log yet");
        }
        Ok(Started { tessera, first_start: loaded.first_start })
    }

    pub fn config(&self) -> &CoreConfig {
        &self.cfg
    }

    pub fn now(&self) -> i64 {
        self.clock.now()
    }

    pub fn durable(&self) -> &Arc<dyn Durable> {
        &self.durable
    }

    pub fn ephemeral(&self) -> &Arc<dyn Ephemeral> {
        &self.ephemeral
    }

    /// The JWK Set document.
    pub fn jwks_json(&self) -> String {
        self.keys.current().jwks_json.clone()
    }

    /// Readiness: both stores answer.
    pub async fn ready(&self) -> Result<(), OAuthError> {
        self.durable.ping().await?;
        self.ephemeral.ping().await?;
        Ok(())
    }

    /// Re-reads the signing keys, so a rotation made through any node reaches this one.
    pub async fn refresh_keys(&self) -> Result<(), OAuthError> {
        self.keys.reload(self.durable.as_ref(), self.now(), key_retention(&self.cfg)).await
    }

    /// Re-reads the keys every `every` (a rotation elsewhere makes this node sign with the
    /// new key within that time; tokens with an unknown `kid` trigger a reload sooner).
    pub async fn run_key_refresh(self: Arc<Self>, every: Duration) {
        loop {
            tokio::time::sleep(every).await;
            if let Err(e) = self.refresh_keys().await {
                tracing::warn!(error = %e, detail = e.detail.as_deref().unwrap_or(""), "cannot reload signing keys");
            }
        }
    }
}

/// How long a retired key keeps verifying: the longest lifetime a token it signed may have.
pub(crate) fn key_retention(cfg: &CoreConfig) -> i64 {
    cfg.access_token_ttl.max(cfg.id_token_ttl).max(24 * 3600)
}

/// Rejects a string parameter that is absent or larger than a sane bound.
pub(crate) fn required<'a>(value: &'a str, name: &str, max: usize) -> Result<&'a str, OAuthError> {
    if value.is_empty() {
        return Err(OAuthError::invalid_request(format!("{name} is required")));
    }
    if value.len() > max {
        return Err(OAuthError::invalid_request(format!("{name} is too long")));
    }
    Ok(value)
}
