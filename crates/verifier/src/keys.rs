//! The token service's public keys, from its JWK Set (`GetJwks`). Fetched on first use and
//! again when a token names a key not held (a rotation): one fetch at a time however many
//! requests wait for it (single-flight), and at most one per [`MIN_INTERVAL`], so tokens with
//! made-up key ids cannot turn into a flood of fetches.

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey};
use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tessera_proto::token::v1::token_service_client::TokenServiceClient;
use tessera_proto::token::v1::GetJwksRequest;
use tokio::time::Instant;
use tonic::transport::Channel;

/// The least time between two fetches of the JWK Set (from the end of one to the start of
/// the next).
const MIN_INTERVAL: Duration = Duration::from_secs(1);
/// The JWK Set is fetched again this often, so a key the token service withdrew stops
/// verifying here too.
const REFRESH_EVERY: Duration = Duration::from_secs(300);
/// How long one fetch may take.
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);

pub(crate) struct Key {
    pub(crate) key: DecodingKey,
    pub(crate) alg: Algorithm,
}

pub(crate) struct Keys {
    client: TokenServiceClient<Channel>,
    held: RwLock<Arc<HashMap<String, Arc<Key>>>>,
    /// Held while fetching; when the last fetch ended.
    fetching: tokio::sync::Mutex<Option<Instant>>,
    /// A fetch found a key gone that was held before: tokens it verified must be checked again.
    withdrawn: std::sync::atomic::AtomicBool,
}

impl Keys {
    pub(crate) fn new(client: TokenServiceClient<Channel>) -> Self {
        Keys { client, held: RwLock::default(), fetching: tokio::sync::Mutex::new(None), withdrawn: Default::default() }
    }

    fn get(&self, kid: &str) -> Option<Arc<Key>> {
        self.held.read().ok()?.get(kid).cloned()
    }

    /// The key named `kid`, fetching the JWK Set if it is not held (see the module doc). A
    /// request waits for a fetch at most twice the fetch timeout.
    pub(crate) async fn find(&self, kid: &str) -> Option<Arc<Key>> {
        if let Some(k) = self.get(kid) {
            return Some(k);
        }
        tokio::time::timeout(FETCH_TIMEOUT * 2, self.fetch_for(kid)).await.ok().flatten()
    }

    async fn fetch_for(&self, kid: &str) -> Option<Arc<Key>> {
        let mut last = self.fetching.lock().await;
        // Another request may have fetched it while this one waited.
        if let Some(k) = self.get(kid) {
            return Some(k);
        }
        if last.is_some_and(|t| t.elapsed() < MIN_INTERVAL) {
            return None;
        }
        self.replace().await;
        *last = Some(Instant::now());
        self.get(kid)
    }

    /// Whether a key was withdrawn since the last call (see [`Keys::withdrawn`]).
    pub(crate) fn take_withdrawn(&self) -> bool {
        self.withdrawn.swap(false, std::sync::atomic::Ordering::AcqRel)
    }

    /// Fetches the JWK Set and holds exactly its keys (a withdrawn key goes).
    async fn replace(&self) {
        match self.fetch().await {
            Ok(keys) => {
                if let Ok(mut held) = self.held.write() {
                    if held.keys().any(|kid| !keys.contains_key(kid)) {
                        self.withdrawn.store(true, std::sync::atomic::Ordering::Release);
                    }
                    *held = Arc::new(keys);
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot fetch the token service's keys"),
        }
    }

    async fn fetch(&self) -> Result<HashMap<String, Arc<Key>>, String> {
        let mut client = self.client.clone();
        let answer = tokio::time::timeout(FETCH_TIMEOUT, client.get_jwks(GetJwksRequest {}))
            .await
            .map_err(|_| "timed out".to_owned())?
            .map_err(|s| format!("{:?}: {}", s.code(), s.message()))?;
        parse_jwks(&answer.into_inner().jwks_json)
    }
}

/// The usable keys of a JWK Set, by `kid`. Keys of other types are skipped.
pub(crate) fn parse_jwks(json: &str) -> Result<HashMap<String, Arc<Key>>, String> {
    let set: JwkSet = serde_json::from_str(json).map_err(|e| format!("not a JWK Set: {e}"))?;
    let mut keys = HashMap::new();
    for jwk in &set.keys {
        let Some(kid) = jwk.common.key_id.clone() else { continue };
        let alg = match &jwk.algorithm {
            AlgorithmParameters::EllipticCurve(p) if p.curve == EllipticCurve::P256 => Algorithm::ES256,
            AlgorithmParameters::OctetKeyPair(p) if p.curve == EllipticCurve::Ed25519 => Algorithm::EdDSA,
            AlgorithmParameters::RSA(_) => Algorithm::RS256,
            _ => continue,
        };
        let Ok(key) = DecodingKey::from_jwk(jwk) else { continue };
        keys.insert(kid, Arc::new(Key { key, alg }));
    }
    Ok(keys)
}

/// Fetches the JWK Set every [`REFRESH_EVERY`] for as long as the verifier lives.
pub(crate) async fn refresh_now_and_then(inner: std::sync::Weak<crate::Inner>) {
    loop {
        tokio::time::sleep(REFRESH_EVERY).await;
        let Some(v) = inner.upgrade() else { return };
        let mut last = v.keys.fetching.lock().await;
        v.keys.replace().await;
        *last = Some(Instant::now());
        drop(last);
        if v.keys.take_withdrawn() {
            v.cache.clear();
        }
    }
}
