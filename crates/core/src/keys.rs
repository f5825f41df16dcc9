//! The key ring: the one key that signs, and every key whose tokens may still be alive.
//! Keys are generated on first start and kept in the durable store, so tokens stay valid
//! across restarts and across replicas.

use crate::error::{OAuthError, StoreError};
use crate::ports::{Durable, StoredKey};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use tessera_crypto::keys::{self, Algorithm, SigningKey, VerifyingKey};
use tessera_crypto::seal::{self, Kek};

pub struct KeySet {
    pub signing: SigningKey,
    pub verifying: Vec<VerifyingKey>,
    pub jwks_json: String,
}

impl KeySet {
    pub fn find(&self, kid: &str) -> Option<&VerifyingKey> {
        self.verifying.iter().find(|k| k.kid == kid)
    }
}

pub struct KeyRing {
    current: RwLock<Arc<KeySet>>,
    kek: Option<Kek>,
    /// How many times the ring was read from the store: a caller that saw generation `g`
    /// and finds it moved on knows someone reloaded since.
    generation: AtomicU64,
    /// Serializes reloads caused by unknown kids; holds when the last one finished.
    unknown_kid_gate: tokio::sync::Mutex<Option<tokio::time::Instant>>,
}

/// The least time between two reloads caused by unknown kids: forged kids cost at most ten
/// reads a second, and a real new kid waits at most this long.
const UNKNOWN_KID_RELOAD_GAP: std::time::Duration = std::time::Duration::from_millis(100);

/// Whether loading the ring had to create the very first key (a first start).
pub struct Loaded {
    pub ring: KeyRing,
    pub first_start: bool,
}

impl KeyRing {
    /// Loads the keys, creating one if none is active. `retain` is how long a retired key
    /// keeps verifying (the longest token lifetime it may have signed).
    /// Private keys are stored sealed with `kek` when one is configured.
    pub async fn load(
        durable: &dyn Durable,
        alg: Algorithm,
        kek: Option<Kek>,
        now: i64,
        retain: i64,
    ) -> Result<Loaded, OAuthError> {
        let mut stored = durable.list_keys().await?;
        let mut first_start = false;
        if !stored.iter().any(|k| k.retired_at.is_none()) {
            first_start = stored.is_empty();
            create_key(durable, alg, kek.as_ref(), now).await?;
            stored = durable.list_keys().await?;
        }
        let set = build(&stored, kek.as_ref(), now, retain)?;
        let ring = KeyRing {
            current: RwLock::new(Arc::new(set)),
            kek,
            generation: AtomicU64::new(0),
            unknown_kid_gate: tokio::sync::Mutex::new(None),
        };
        Ok(Loaded { ring, first_start })
    }

    pub(crate) fn kek(&self) -> Option<&Kek> {
        self.kek.as_ref()
    }

    /// Changes at every reload.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    pub fn current(&self) -> Arc<KeySet> {
        match self.current.read() {
            Ok(g) => Arc::clone(&g),
            Err(poisoned) => Arc::clone(&poisoned.into_inner()),
        }
    }

    /// Re-reads the keys (after a rotation on any node).
    pub async fn reload(&self, durable: &dyn Durable, now: i64, retain: i64) -> Result<(), OAuthError> {
        let set = build(&durable.list_keys().await?, self.kek.as_ref(), now, retain)?;
        match self.current.write() {
            Ok(mut g) => *g = Arc::new(set),
            Err(poisoned) => *poisoned.into_inner() = Arc::new(set),
        }
        self.generation.fetch_add(1, Ordering::AcqRel);
        Ok(())
    }

    /// Re-reads the keys because a token named a kid the ring of generation `seen` lacks (a
    /// key rotated in on another node). Single-flight: callers that saw the same generation
    /// share one reload, and whoever finds the generation moved on just checks again. Reloads
    /// of this kind are spaced by [`UNKNOWN_KID_RELOAD_GAP`], waited out rather than refused,
    /// so a just-rotated key is honoured at once and forged kids cannot hammer the store.
    pub async fn reload_for_unknown_kid(
        &self,
        seen: u64,
        durable: &dyn Durable,
        now: i64,
        retain: i64,
    ) -> Result<(), OAuthError> {
        let mut last = self.unknown_kid_gate.lock().await;
        if self.generation() != seen {
            return Ok(());
        }
        if let Some(at) = *last {
            tokio::time::sleep_until(at + UNKNOWN_KID_RELOAD_GAP).await;
        }
        let outcome = self.reload(durable, now, retain).await;
        *last = Some(tokio::time::Instant::now());
        outcome
    }
}

/// Creates a new active key and retires the others; returns its kid.
pub async fn rotate(durable: &dyn Durable, alg: Algorithm, kek: Option<&Kek>, now: i64) -> Result<String, OAuthError> {
    let kid = create_key(durable, alg, kek, now).await?;
    durable.retire_keys_except(&kid, now).await?;
    Ok(kid)
}

async fn create_key(durable: &dyn Durable, alg: Algorithm, kek: Option<&Kek>, now: i64) -> Result<String, OAuthError> {
    let der = keys::generate_pkcs8(alg).map_err(|e| OAuthError::server_error(e.to_string()))?;
    let key = SigningKey::from_pkcs8(alg, &der).map_err(|e| OAuthError::server_error(e.to_string()))?;
    let kid = key.kid().to_owned();
    let private_der = match kek {
        Some(kek) => kek.seal(&kid, &der).map_err(|e| OAuthError::server_error(e.to_string()))?,
        None => der,
    };
    let record =
        StoredKey { kid: kid.clone(), alg: alg.as_str().to_owned(), private_der, created_at: now, retired_at: None };
    match durable.insert_key(&record).await {
        Ok(()) | Err(StoreError::Conflict(_)) => Ok(kid),
        Err(e) => Err(e.into()),
    }
}

fn build(stored: &[StoredKey], kek: Option<&Kek>, now: i64, retain: i64) -> Result<KeySet, OAuthError> {
    // Replicas starting together may each create a key; all of them pick the oldest active one.
    let active = stored
        .iter()
        .find(|k| k.retired_at.is_none())
        .ok_or_else(|| OAuthError::server_error("no active signing key"))?;
    let signing = parse(active, kek)?;
    let mut verifying = Vec::new();
    for k in stored {
        let alive = match k.retired_at {
            None => true,
            Some(at) => at + retain > now,
        };
        if alive {
            verifying.push(parse(k, kek)?.verifying_key());
        }
    }
    let jwks_json = keys::jwks(&verifying).to_string();
    Ok(KeySet { signing, verifying, jwks_json })
}

fn parse(k: &StoredKey, kek: Option<&Kek>) -> Result<SigningKey, OAuthError> {
    let alg =
        Algorithm::parse(&k.alg).ok_or_else(|| OAuthError::server_error(format!("unknown key algorithm {}", k.alg)))?;
    let der = seal::open(kek, &k.kid, &k.private_der)
        .map_err(|e| OAuthError::server_error(format!("signing key {}: {e}", k.kid)))?;
    SigningKey::from_pkcs8(alg, &der).map_err(|e| OAuthError::server_error(format!("signing key {}: {e}", k.kid)))
}
