//! Signing keys: generated with `ring`, stored as PKCS#8, parsed once into a key pair that
//! signs without re-parsing. Public halves are published as JWKs (RFC 7517) whose `kid` is
//! the RFC 7638 thumbprint.

use crate::b64url;
use ring::rand::SystemRandom;
use ring::signature::{self, EcdsaKeyPair, Ed25519KeyPair, KeyPair as _};
use serde_json::{json, Value};
use sha2::{Digest as _, Sha256};

/// JWS algorithms Tessera signs with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Algorithm {
    /// ECDSA P-256 with SHA-256 (RFC 7518 §3.4); the default.
    Es256,
    /// Ed25519 (RFC 8037).
    EdDsa,
}

impl Algorithm {
    pub fn as_str(self) -> &'static str {
        match self {
            Algorithm::Es256 => "ES256",
            Algorithm::EdDsa => "EdDSA",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "ES256" => Some(Algorithm::Es256),
            "EdDSA" => Some(Algorithm::EdDsa),
            _ => None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("key generation failed")]
    Generate,
    #[error("the stored key is not a valid {0} PKCS#8 document")]
    Parse(&'static str),
    #[error("signing failed")]
    Sign,
}

enum Pair {
    Es256(EcdsaKeyPair),
    EdDsa(Ed25519KeyPair),
}

/// A parsed private key, ready to sign many times.
pub struct SigningKey {
    kid: String,
    alg: Algorithm,
    pair: Pair,
    rng: SystemRandom,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKey")
            .field("kid", &self.kid)
            .field("alg", &self.alg)
            .finish_non_exhaustive()
    }
}

/// A freshly generated private key in PKCS#8 form, for storing.
pub fn generate_pkcs8(alg: Algorithm) -> Result<Vec<u8>, KeyError> {
    let rng = SystemRandom::new();
    let doc = match alg {
        Algorithm::Es256 => {
            EcdsaKeyPair::generate_pkcs8(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
        }
        Algorithm::EdDsa => Ed25519KeyPair::generate_pkcs8(&rng),
    }
    .map_err(|_| KeyError::Generate)?;
    Ok(doc.as_ref().to_vec())
}

impl SigningKey {
    /// Parses a stored PKCS#8 private key. The `kid` is derived from the public key.
    pub fn from_pkcs8(alg: Algorithm, pkcs8: &[u8]) -> Result<Self, KeyError> {
        let rng = SystemRandom::new();
        let pair = match alg {
            Algorithm::Es256 => Pair::Es256(
                EcdsaKeyPair::from_pkcs8(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8, &rng)
                    .map_err(|_| KeyError::Parse("ES256"))?,
            ),
            Algorithm::EdDsa => Pair::EdDsa(
                Ed25519KeyPair::from_pkcs8_maybe_unchecked(pkcs8)
                    .map_err(|_| KeyError::Parse("EdDSA"))?,
            ),
        };
        let mut key = Self {
            kid: String::new(),
            alg,
            pair,
            rng,
        };
        key.kid = key.verifying_key().thumbprint();
        Ok(key)
    }

    pub fn kid(&self) -> &str {
        &self.kid
    }

    pub fn alg(&self) -> Algorithm {
        self.alg
    }

    /// Signs `message` (the JWS signing input).
    pub fn sign(&self, message: &[u8]) -> Result<Vec<u8>, KeyError> {
        match &self.pair {
            Pair::Es256(p) => p
                .sign(&self.rng, message)
                .map(|s| s.as_ref().to_vec())
                .map_err(|_| KeyError::Sign),
            Pair::EdDsa(p) => Ok(p.sign(message).as_ref().to_vec()),
        }
    }

    /// The public half.
    pub fn verifying_key(&self) -> VerifyingKey {
        let public = match &self.pair {
            Pair::Es256(p) => p.public_key().as_ref().to_vec(),
            Pair::EdDsa(p) => p.public_key().as_ref().to_vec(),
        };
        VerifyingKey {
            kid: self.kid.clone(),
            alg: self.alg,
            public,
        }
    }
}

/// A public key that verifies signatures and renders as a JWK.
#[derive(Clone, Debug)]
pub struct VerifyingKey {
    pub kid: String,
    pub alg: Algorithm,
    /// ES256: the uncompressed point (0x04 ‖ x ‖ y); EdDSA: the 32-byte key.
    pub public: Vec<u8>,
}

impl VerifyingKey {
    pub fn verify(&self, message: &[u8], sig: &[u8]) -> bool {
        let alg: &dyn signature::VerificationAlgorithm = match self.alg {
            Algorithm::Es256 => &signature::ECDSA_P256_SHA256_FIXED,
            Algorithm::EdDsa => &signature::ED25519,
        };
        signature::UnparsedPublicKey::new(alg, &self.public)
            .verify(message, sig)
            .is_ok()
    }

    /// The required JWK members only, in the lexicographic order RFC 7638 §3.2 hashes.
    fn required_members(&self) -> Value {
        match self.alg {
            Algorithm::Es256 => {
                let (x, y) = self
                    .public
                    .get(1..)
                    .unwrap_or_default()
                    .split_at(32.min(self.public.len().saturating_sub(1)));
                json!({"crv": "P-256", "kty": "EC", "x": b64url(x), "y": b64url(y)})
            }
            Algorithm::EdDsa => json!({"crv": "Ed25519", "kty": "OKP", "x": b64url(&self.public)}),
        }
    }

    /// RFC 7638 JWK thumbprint (SHA-256, base64url).
    pub fn thumbprint(&self) -> String {
        // serde_json's default map is a BTreeMap, so keys serialize sorted and without spaces.
        let canonical = self.required_members().to_string();
        b64url(&Sha256::digest(canonical.as_bytes()))
    }

    /// The public JWK with `kid`, `alg` and `use`.
    pub fn to_jwk(&self) -> Value {
        let mut jwk = self.required_members();
        if let Value::Object(m) = &mut jwk {
            m.insert("kid".into(), json!(self.kid));
            m.insert("alg".into(), json!(self.alg.as_str()));
            m.insert("use".into(), json!("sig"));
        }
        jwk
    }
}

/// A JWK Set document (RFC 7517 §5).
pub fn jwks(keys: &[VerifyingKey]) -> Value {
    json!({ "keys": keys.iter().map(VerifyingKey::to_jwk).collect::<Vec<_>>() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_sign_and_their_public_half_verifies() {
        for alg in [Algorithm::Es256, Algorithm::EdDsa] {
            let key = SigningKey::from_pkcs8(alg, &generate_pkcs8(alg).unwrap()).unwrap();
            let sig = key.sign(b"message").unwrap();
            let vk = key.verifying_key();
            assert!(vk.verify(b"message", &sig));
            assert!(!vk.verify(b"massage", &sig));
            assert_eq!(vk.to_jwk()["kid"], key.kid());
        }
    }

    #[test]
    fn the_kid_is_stable_for_a_stored_key() {
        let pkcs8 = generate_pkcs8(Algorithm::Es256).unwrap();
        let a = SigningKey::from_pkcs8(Algorithm::Es256, &pkcs8).unwrap();
        let b = SigningKey::from_pkcs8(Algorithm::Es256, &pkcs8).unwrap();
        assert_eq!(a.kid(), b.kid());
        assert_eq!(a.kid().len(), 43);
    }
}
