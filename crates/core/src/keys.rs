//! The key ring: the one key that signs, and every key whose tokens may still be alive.
//! Keys are generated on first start and kept in the durable store, so tokens stay valid
//! across restarts and across replicas.

use crate::error::{ErrorCode, OAuthError, StoreError};
use crate::ports::{KeyStore, StoredKey};
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
    /// Serializes reloads caused by unknown kids.
    unknown_kid_gate: tokio::sync::Mutex<UnknownKidReload>,
    /// Reloads caused by unknown kids, whether they read the store or failed to.
    unknown_kid_reloads: AtomicU64,
}

/// The last reload caused by an unknown kid.
#[derive(Default)]
struct UnknownKidReload {
    /// When it started.
    at: Option<tokio::time::Instant>,
    /// Why it failed, if it did: the answer of every caller that waited for it.
    failed: Option<OAuthError>,
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
        durable: &dyn KeyStore,
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
            unknown_kid_gate: tokio::sync::Mutex::new(UnknownKidReload::default()),
            unknown_kid_reloads: AtomicU64::new(0),
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
    pub async fn reload(&self, durable: &dyn KeyStore, now: i64, retain: i64) -> Result<(), OAuthError> {
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
    ///
    /// A reload that fails is shared as well: whoever was waiting when it was tried gets its
    /// error. Otherwise, while the store is down, every waiting caller would try a reload of
    /// its own, one gap after the other, and a burst of forged kids would hold requests for
    /// its size times the gap.
    pub async fn reload_for_unknown_kid(
        &self,
        seen: u64,
        durable: &dyn KeyStore,
        now: i64,
        retain: i64,
    ) -> Result<(), OAuthError> {
        let tried = self.unknown_kid_reloads.load(Ordering::Acquire);
        let mut last = self.unknown_kid_gate.lock().await;
        if self.generation() != seen {
            return Ok(());
        }
        if self.unknown_kid_reloads.load(Ordering::Acquire) != tried {
            // Tried while this caller waited, and failed (or the generation would have moved).
            return last.failed.clone().map_or(Ok(()), Err);
        }
        if let Some(at) = last.at {
            tokio::time::sleep_until(at + UNKNOWN_KID_RELOAD_GAP).await;
        }
        // Marked before the read, so that a read whose caller gives up on it still spaces the next.
        last.at = Some(tokio::time::Instant::now());
        let outcome = self.reload(durable, now, retain).await;
        // Logged by the one caller that read, not by each that waited. A store outage is the
        // caller's to report (it answers temporarily_unavailable); anything else is not.
        if let Err(e) = &outcome {
            if e.code != ErrorCode::TemporarilyUnavailable {
                let detail = e.detail.as_deref().unwrap_or("");
                tracing::warn!(error = %e, detail, "cannot reload signing keys");
            }
        }
        last.failed = outcome.clone().err();
        self.unknown_kid_reloads.fetch_add(1, Ordering::AcqRel);
        outcome
    }
}

/// Creates a new active key and retires the others; returns its kid.
pub async fn rotate(durable: &dyn KeyStore, alg: Algorithm, kek: Option<&Kek>, now: i64) -> Result<String, OAuthError> {
    let kid = create_key(durable, alg, kek, now).await?;
    durable.retire_keys_except(&kid, now).await?;
    Ok(kid)
}

async fn create_key(durable: &dyn KeyStore, alg: Algorithm, kek: Option<&Kek>, now: i64) -> Result<String, OAuthError> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, AtomicUsize};
    use std::sync::Mutex;
    use std::time::Duration;

    /// Keys in memory, and a switch that makes reading them fail as a store that is down.
    #[derive(Default)]
    struct Keys {
        stored: Mutex<Vec<StoredKey>>,
        down: AtomicBool,
        reads: AtomicUsize,
    }

    #[async_trait::async_trait]
    impl KeyStore for Keys {
        async fn list_keys(&self) -> crate::StoreResult<Vec<StoredKey>> {
            self.reads.fetch_add(1, Ordering::SeqCst);
            if self.down.load(Ordering::SeqCst) {
                return Err(StoreError::Unavailable { store: "database", reason: "down".into() });
            }
            Ok(self.stored.lock().map(|k| k.clone()).unwrap_or_default())
        }
        async fn insert_key(&self, key: &StoredKey) -> crate::StoreResult<()> {
            self.stored.lock().unwrap().push(key.clone());
            Ok(())
        }
        async fn retire_keys_except(&self, _keep_kid: &str, _at: i64) -> crate::StoreResult<()> {
            Ok(())
        }
    }

    /// `callers` reloads for an unknown kid at once, all having seen the ring as it is now;
    /// how many failed, each with `temporarily_unavailable`.
    async fn at_once(ring: &Arc<KeyRing>, keys: &Arc<Keys>, callers: usize) -> usize {
        let seen = ring.generation();
        let mut calls = tokio::task::JoinSet::new();
        for _ in 0..callers {
            let (ring, keys) = (Arc::clone(ring), Arc::clone(keys));
            calls.spawn(async move { ring.reload_for_unknown_kid(seen, keys.as_ref(), 0, 3600).await.err() });
        }
        let failed: Vec<OAuthError> = calls.join_all().await.into_iter().flatten().collect();
        assert!(failed.iter().all(|e| e.code == ErrorCode::TemporarilyUnavailable), "{failed:?}");
        failed.len()
    }

    #[tokio::test(start_paused = true)]
    async fn while_the_store_is_down_callers_with_unknown_kids_share_one_failed_read_and_its_error() {
        let keys = Arc::new(Keys::default());
        let ring = Arc::new(KeyRing::load(keys.as_ref(), Algorithm::Es256, None, 0, 3600).await.unwrap().ring);
        let reads = || keys.reads.load(Ordering::SeqCst);

        // Up: a burst shares one read.
        let before = reads();
        assert_eq!(at_once(&ring, &keys, 50).await, 0);
        assert_eq!(reads() - before, 1);

        // Down: a burst shares one read as well, and is answered within one gap, not fifty.
        keys.down.store(true, Ordering::SeqCst);
        let (before, started) = (reads(), tokio::time::Instant::now());
        assert_eq!(at_once(&ring, &keys, 50).await, 50, "every caller gets the store's error");
        assert_eq!(reads() - before, 1);
        // Fifty reads in turn would take fifty gaps.
        assert!(started.elapsed() < 2 * UNKNOWN_KID_RELOAD_GAP, "waited {:?}", started.elapsed());

        // The next burst reads again, a gap after the last read.
        let before = reads();
        assert_eq!(at_once(&ring, &keys, 50).await, 50);
        assert_eq!(reads() - before, 1);

        // Up again: the ring reloads.
        keys.down.store(false, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_secs(1)).await;
        let generation = ring.generation();
        assert_eq!(at_once(&ring, &keys, 5).await, 0);
        assert_eq!(ring.generation(), generation + 1);
    }
}
