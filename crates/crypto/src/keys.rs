//! Signing keys: generated (ring; RSA with the `rsa` crate, which ring cannot do), stored as
//! PKCS#8, parsed once into a `ring` key pair that signs without re-parsing. Public halves are
//! published as JWKs (RFC 7517) whose `kid` is the RFC 7638 thumbprint.

use crate::b64url;
use ring::rand::SystemRandom;
use ring::signature::{self, EcdsaKeyPair, Ed25519KeyPair, KeyPair as _, RsaKeyPair};
use serde_json::{json, Value};
use sha2::{Digest as _, Sha256};

/// JWS algorithms Tessera signs with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Algorithm {
    /// ECDSA P-256 with SHA-256 (RFC 7518 §3.4); the default.
    Es256,
    /// Ed25519 (RFC 8037).
    EdDsa,
    /// RSASSA-PKCS1-v1_5 with SHA-256 and a 2048-bit key (RFC 7518 §3.3), for relying parties
    /// that accept nothing else.
    Rs256,
}

impl Algorithm {
    pub fn as_str(self) -> &'static str {
        match self {
            Algorithm::Es256 => "ES256",
            Algorithm::EdDsa => "EdDSA",
            Algorithm::Rs256 => "RS256",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "ES256" => Some(Algorithm::Es256),
            "EdDSA" => Some(Algorithm::EdDsa),
            "RS256" => Some(Algorithm::Rs256),
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
    Rs256 { pair: RsaKeyPair, n: Vec<u8>, e: Vec<u8> },
}

/// A parsed private key, ready to sign many times.
pub struct SigningKey {
    kid: String,
    alg: Algorithm,
    pair: Pair,
    rng: SystemRandom,
    /// The encoded JWS headers of the token types signed on every request, made once.
    headers: Vec<(&'static str, String)>,
}

/// The `typ` values whose headers a [`SigningKey`] keeps encoded: access tokens (RFC 9068)
/// and ID tokens.
const COMMON_TYPES: [&str; 2] = ["at+jwt", "JWT"];

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKey").field("kid", &self.kid).field("alg", &self.alg).finish_non_exhaustive()
    }
}

/// A freshly generated private key in PKCS#8 form, for storing.
pub fn generate_pkcs8(alg: Algorithm) -> Result<Vec<u8>, KeyError> {
    let rng = SystemRandom::new();
    let doc = match alg {
        Algorithm::Es256 => EcdsaKeyPair::generate_pkcs8(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, &rng),
        Algorithm::EdDsa => Ed25519KeyPair::generate_pkcs8(&rng),
        Algorithm::Rs256 => {
            use rsa::pkcs8::EncodePrivateKey as _;
            let key = rsa::RsaPrivateKey::new(&mut rand::rngs::OsRng, 2048).map_err(|_| KeyError::Generate)?;
            let der = key.to_pkcs8_der().map_err(|_| KeyError::Generate)?;
            return Ok(der.as_bytes().to_vec());
        }
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
            Algorithm::EdDsa => {
                Pair::EdDsa(Ed25519KeyPair::from_pkcs8_maybe_unchecked(pkcs8).map_err(|_| KeyError::Parse("EdDSA"))?)
            }
            Algorithm::Rs256 => {
                use rsa::pkcs8::DecodePrivateKey as _;
                use rsa::traits::PublicKeyParts as _;
                let pair = RsaKeyPair::from_pkcs8(pkcs8).map_err(|_| KeyError::Parse("RS256"))?;
                let parsed = rsa::RsaPrivateKey::from_pkcs8_der(pkcs8).map_err(|_| KeyError::Parse("RS256"))?;
                Pair::Rs256 { pair, n: parsed.n().to_bytes_be(), e: parsed.e().to_bytes_be() }
            }
        };
        let mut key = Self { kid: String::new(), alg, pair, rng, headers: Vec::new() };
        key.kid = key.verifying_key().thumbprint();
        key.headers = COMMON_TYPES.iter().map(|typ| (*typ, key.encode_header(typ))).collect();
        Ok(key)
    }

    pub fn kid(&self) -> &str {
        &self.kid
    }

    pub fn alg(&self) -> Algorithm {
        self.alg
    }

    /// The base64url JWS header `{alg, typ, kid}` of a token of type `typ` signed by this key.
    pub fn header(&self, typ: &str) -> std::borrow::Cow<'_, str> {
        match self.headers.iter().find(|(t, _)| *t == typ) {
            Some((_, encoded)) => std::borrow::Cow::Borrowed(encoded),
            None => std::borrow::Cow::Owned(self.encode_header(typ)),
        }
    }

    fn encode_header(&self, typ: &str) -> String {
        b64url(json!({"alg": self.alg.as_str(), "typ": typ, "kid": self.kid}).to_string().as_bytes())
    }

    /// Signs `message` (the JWS signing input).
    pub fn sign(&self, message: &[u8]) -> Result<Vec<u8>, KeyError> {
        match &self.pair {
            Pair::Es256(p) => p.sign(&self.rng, message).map(|s| s.as_ref().to_vec()).map_err(|_| KeyError::Sign),
            Pair::EdDsa(p) => Ok(p.sign(message).as_ref().to_vec()),
            Pair::Rs256 { pair, .. } => {
                let mut sig = vec![0u8; pair.public().modulus_len()];
                pair.sign(&signature::RSA_PKCS1_SHA256, &self.rng, message, &mut sig).map_err(|_| KeyError::Sign)?;
                Ok(sig)
            }
        }
    }

    /// The public half.
    pub fn verifying_key(&self) -> VerifyingKey {
        let public = match &self.pair {
            Pair::Es256(p) => Public::Ec(p.public_key().as_ref().to_vec()),
            Pair::EdDsa(p) => Public::Ed(p.public_key().as_ref().to_vec()),
            Pair::Rs256 { n, e, .. } => Public::Rsa { n: n.clone(), e: e.clone() },
        };
        VerifyingKey { kid: self.kid.clone(), alg: self.alg, public }
    }
}

/// The public key material of a [`VerifyingKey`].
#[derive(Clone, Debug)]
pub enum Public {
    /// The uncompressed P-256 point (0x04 ‖ x ‖ y).
    Ec(Vec<u8>),
    /// The 32-byte Ed25519 key.
    Ed(Vec<u8>),
    /// Big-endian modulus and exponent.
    Rsa { n: Vec<u8>, e: Vec<u8> },
}

/// A public key that verifies signatures and renders as a JWK.
#[derive(Clone, Debug)]
pub struct VerifyingKey {
    pub kid: String,
    pub alg: Algorithm,
    pub public: Public,
}

impl VerifyingKey {
    pub fn verify(&self, message: &[u8], sig: &[u8]) -> bool {
        match &self.public {
            Public::Ec(p) => {
                signature::UnparsedPublicKey::new(&signature::ECDSA_P256_SHA256_FIXED, p).verify(message, sig).is_ok()
            }
            Public::Ed(p) => signature::UnparsedPublicKey::new(&signature::ED25519, p).verify(message, sig).is_ok(),
            Public::Rsa { n, e } => signature::RsaPublicKeyComponents { n, e }
                .verify(&signature::RSA_PKCS1_2048_8192_SHA256, message, sig)
                .is_ok(),
        }
    }

    /// The required JWK members only, which RFC 7638 §3.2 hashes in lexicographic order
    /// (serde_json's map is sorted, and `to_string` adds no spaces).
    fn required_members(&self) -> Value {
        match &self.public {
            Public::Ec(p) => {
                let xy = p.get(1..).unwrap_or_default();
                let (x, y) = xy.split_at(xy.len() / 2);
                json!({"crv": "P-256", "kty": "EC", "x": b64url(x), "y": b64url(y)})
            }
            Public::Ed(p) => json!({"crv": "Ed25519", "kty": "OKP", "x": b64url(p)}),
            Public::Rsa { n, e } => json!({"e": b64url(e), "kty": "RSA", "n": b64url(n)}),
        }
    }

    /// RFC 7638 JWK thumbprint (SHA-256, base64url).
    pub fn thumbprint(&self) -> String {
        b64url(&Sha256::digest(self.required_members().to_string().as_bytes()))
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
        for alg in [Algorithm::Es256, Algorithm::EdDsa, Algorithm::Rs256] {
            let key = SigningKey::from_pkcs8(alg, &generate_pkcs8(alg).unwrap()).unwrap();
            let sig = key.sign(b"message").unwrap();
            let vk = key.verifying_key();
            assert!(vk.verify(b"message", &sig), "{alg:?}");
            assert!(!vk.verify(b"massage", &sig), "{alg:?}");
            assert_eq!(vk.to_jwk()["kid"], key.kid());
            assert_eq!(vk.to_jwk()["alg"], alg.as_str());
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

    #[test]
    fn the_thumbprint_matches_rfc_7638_section_3_1() {
        // The RSA key of RFC 7638 §3.1 and its published thumbprint.
        let n = crate::b64url_decode("0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw").unwrap();
        let e = crate::b64url_decode("AQAB").unwrap();
        let vk = VerifyingKey { kid: String::new(), alg: Algorithm::Rs256, public: Public::Rsa { n, e } };
        assert_eq!(vk.thumbprint(), "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs");
    }
}
