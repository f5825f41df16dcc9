//! Tessera's cryptography: SHA-256 digests of secrets, random secrets, constant-time
//! comparison, Argon2id password hashing on a bounded pool, signing keys, JWS/JWT and JWK Sets.
//!
//! A leaf crate: it depends on no other Tessera crate and knows nothing of OAuth flows.
//! Signing keys are parsed once and cached as `ring` key pairs; never hand a PEM or a
//! PKCS#8 document to every signing call.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::todo))]

pub mod jwt;
pub mod keys;
pub mod password;
pub mod password_pool;
pub mod seal;
pub mod succession;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use rand::RngCore as _;
use sha2::{Digest as _, Sha256};
use subtle::ConstantTimeEq as _;

/// A SHA-256 digest. Secrets (client secrets, refresh tokens, codes) are stored and looked
/// up only by their digest.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Digest(pub [u8; 32]);

impl Digest {
    /// The SHA-256 digest of `input`.
    pub fn of(input: &[u8]) -> Self {
        Self(Sha256::digest(input).into())
    }

    /// Lower-case hex, for store keys.
    pub fn to_hex(&self) -> String {
        let mut out = String::with_capacity(64);
        for b in self.0 {
            out.push(char::from(HEX[(b >> 4) as usize]));
            out.push(char::from(HEX[(b & 0x0f) as usize]));
        }
        out
    }

    /// Parses the output of [`Digest::to_hex`].
    pub fn from_hex(s: &str) -> Option<Self> {
        if s.len() != 64 {
            return None;
        }
        let mut out = [0u8; 32];
        for (i, pair) in s.as_bytes().chunks(2).enumerate() {
            let hi = hex_val(pair[0])?;
            let lo = hex_val(pair[1])?;
            out[i] = (hi << 4) | lo;
        }
        Some(Self(out))
    }

    /// Constant-time equality, for comparing a presented secret's digest with a stored one.
    pub fn ct_eq(&self, other: &Digest) -> bool {
        self.0.ct_eq(&other.0).into()
    }
}

// A digest is not a secret, but printing it in full invites grepping logs for it.
impl std::fmt::Debug for Digest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Digest({}…)", &self.to_hex()[..8])
    }
}

const HEX: &[u8; 16] = b"0123456789abcdef";

fn hex_val(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// A fresh random secret of `bytes` bytes, base64url without padding, for what a request
/// mints (tokens' `jti`, refresh tokens, codes, sessions). 32 bytes give the 256 bits
/// DESIGN.md asks of refresh tokens. From the thread's CSPRNG (ChaCha12, seeded from the OS
/// generator and reseeded from it every 64 KiB of output): asking the OS for every secret costs
/// a system call each, a token's `jti` included.
pub fn random_secret(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    rand::thread_rng().fill_bytes(&mut buf);
    URL_SAFE_NO_PAD.encode(buf)
}

/// A fresh random secret of `bytes` bytes straight from the OS generator, base64url without
/// padding, for credentials that live long and are made rarely (client secrets, the admin
/// credential): no generator state in this process's memory ever held them.
pub fn random_credential(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    rand::rngs::OsRng.fill_bytes(&mut buf);
    URL_SAFE_NO_PAD.encode(buf)
}

/// Constant-time byte comparison.
pub fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    a.ct_eq(b).into()
}

/// base64url without padding (RFC 7515 §2).
pub fn b64url(input: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(input)
}

/// Decodes base64url without padding.
pub fn b64url_decode(input: &str) -> Option<Vec<u8>> {
    URL_SAFE_NO_PAD.decode(input).ok()
}

/// The PKCE S256 transform (RFC 7636 §4.2): BASE64URL(SHA256(ASCII(code_verifier))).
pub fn pkce_s256(verifier: &str) -> String {
    b64url(&Sha256::digest(verifier.as_bytes()))
}

/// OpenID Connect `at_hash` / `c_hash` for SHA-256 based algorithms: the left half of the
/// hash of the ASCII value, base64url (OIDC Core §3.1.3.6).
pub fn half_hash(value: &str) -> String {
    let full = Sha256::digest(value.as_bytes());
    b64url(&full[..16])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_hex_round_trips() {
        let d = Digest::of(b"secret");
        assert_eq!(Digest::from_hex(&d.to_hex()), Some(d));
        assert_eq!(Digest::from_hex("zz"), None);
    }

    #[test]
    fn debug_of_a_digest_shows_only_a_prefix() {
        let d = Digest::of(b"secret");
        assert!(!format!("{d:?}").contains(&d.to_hex()));
    }

    #[test]
    fn random_secrets_carry_256_bits() {
        let c = random_credential(32);
        assert_eq!(c.len(), 43);
        assert_ne!(c, random_credential(32));
        let s = random_secret(32);
        assert_eq!(b64url_decode(&s).map(|v| v.len()), Some(32));
        assert_ne!(s, random_secret(32));
    }

    #[test]
    fn pkce_s256_matches_rfc_7636_appendix_b() {
        assert_eq!(
            pkce_s256("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"),
            "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
        );
    }
}
