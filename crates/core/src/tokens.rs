//! Token claims, minting, and the local verification path of introspection: signature,
//! time, issuer, and an in-memory revocation set, with no store round trip (DESIGN.md rule 6).

use crate::keys::KeySet;
use crate::revocation::Revocations;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tessera_crypto::{jwt, Digest};

/// Claims of an access token (RFC 9068 §2.2).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccessClaims {
    pub iss: String,
    pub sub: String,
    pub aud: String,
    pub exp: i64,
    pub iat: i64,
    pub nbf: i64,
    pub jti: String,
    pub client_id: String,
    pub scope: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth_time: Option<i64>,
    /// The resource owner's username, for introspection (RFC 7662 §2.2 `username`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
}

/// The media type of access tokens in the JWT `typ` header (RFC 9068 §2.1).
pub const ACCESS_TOKEN_TYP: &str = "at+jwt";

pub fn new_jti() -> String {
    tessera_crypto::random_secret(16)
}

/// Why a presented access token is not active. Never shown to clients in detail.
#[derive(Debug, PartialEq, Eq)]
pub enum Inactive {
    Malformed,
    /// Signed with a key this node does not know (yet: it may have been rotated elsewhere).
    UnknownKey,
    Signature,
    WrongType,
    WrongIssuer,
    Expired,
    NotYetValid,
    Revoked,
}

/// Tokens whose signature was verified, by digest, so hot tokens skip ECDSA. Entries are only
/// good for their signature: time and revocation are checked on every use.
pub struct VerifiedCache {
    entries: Mutex<HashMap<Digest, Arc<AccessClaims>>>,
    capacity: usize,
}

impl VerifiedCache {
    pub fn new(capacity: usize) -> Self {
        Self { entries: Mutex::new(HashMap::new()), capacity }
    }

    fn get(&self, d: &Digest) -> Option<Arc<AccessClaims>> {
        self.entries.lock().ok()?.get(d).cloned()
    }

    fn put(&self, d: Digest, claims: Arc<AccessClaims>, now: i64) {
        if let Ok(mut m) = self.entries.lock() {
            if m.len() >= self.capacity {
                m.retain(|_, c| c.exp > now);
                if m.len() >= self.capacity {
                    m.clear();
                }
            }
            m.insert(d, claims);
        }
    }
}

/// Verifies an access token locally: signature (cached), `typ`, issuer, time, revocation.
pub fn verify_access(
    token: &str,
    keys: &KeySet,
    issuer: &str,
    now: i64,
    revoked: &Revocations,
    cache: &VerifiedCache,
) -> Result<Arc<AccessClaims>, Inactive> {
    let digest = Digest::of(token.as_bytes());
    let claims = match cache.get(&digest) {
        Some(c) => c,
        None => {
            let v = jwt::verify(token, |kid| keys.find(kid)).map_err(|e| match e {
                jwt::JwtError::Malformed => Inactive::Malformed,
                jwt::JwtError::UnknownKey => Inactive::UnknownKey,
                _ => Inactive::Signature,
            })?;
            if v.header.get("typ").and_then(|t| t.as_str()) != Some(ACCESS_TOKEN_TYP) {
                return Err(Inactive::WrongType);
            }
            let claims: AccessClaims = serde_json::from_value(v.claims).map_err(|_| Inactive::Malformed)?;
            let claims = Arc::new(claims);
            cache.put(digest, Arc::clone(&claims), now);
            claims
        }
    };
    if claims.iss != issuer {
        return Err(Inactive::WrongIssuer);
    }
    if claims.exp <= now {
        return Err(Inactive::Expired);
    }
    if claims.nbf > now {
        return Err(Inactive::NotYetValid);
    }
    if revoked.revokes_access(&claims) {
        return Err(Inactive::Revoked);
    }
    Ok(claims)
}
