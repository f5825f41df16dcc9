//! Encryption of private keys at rest with a key-encryption key (AES-256-GCM).

use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use ring::rand::{SecureRandom as _, SystemRandom};

/// Marks a sealed blob: magic, version 1. Unsealed PKCS#8 never starts with it (DER starts 0x30).
const MAGIC: &[u8; 5] = b"TKEK1";

/// A 256-bit key-encryption key. Its `Debug` shows nothing of it.
#[derive(Clone)]
pub struct Kek([u8; 32]);

impl std::fmt::Debug for Kek {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Kek(<redacted>)")
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SealError {
    #[error("the key-encryption key must be 32 bytes, base64 encoded")]
    BadKek,
    #[error("the stored key is encrypted but no key-encryption key is configured")]
    NoKek,
    #[error("the stored key cannot be decrypted with the configured key-encryption key")]
    Open,
    #[error("encryption failed")]
    Seal,
}

impl Kek {
    /// Parses a base64 (standard or URL-safe, padded or not) 32-byte key.
    pub fn parse(b64: &str) -> Result<Self, SealError> {
        use base64::Engine as _;
        let s = b64.trim();
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(s)
            .or_else(|_| base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(s.trim_end_matches('=')))
            .map_err(|_| SealError::BadKek)?;
        let key: [u8; 32] = bytes.try_into().map_err(|_| SealError::BadKek)?;
        Ok(Self(key))
    }

    /// A fresh random key, base64 (for `tessera keys generate-kek`-style setup).
    pub fn generate_b64() -> String {
        use base64::Engine as _;
        let mut k = [0u8; 32];
        let _ = SystemRandom::new().fill(&mut k);
        base64::engine::general_purpose::STANDARD.encode(k)
    }

    fn key(&self) -> Result<LessSafeKey, SealError> {
        UnboundKey::new(&AES_256_GCM, &self.0).map(LessSafeKey::new).map_err(|_| SealError::BadKek)
    }

    /// Encrypts `plain`; `label` (the key id) is bound as associated data.
    pub fn seal(&self, label: &str, plain: &[u8]) -> Result<Vec<u8>, SealError> {
        let mut nonce = [0u8; NONCE_LEN];
        SystemRandom::new().fill(&mut nonce).map_err(|_| SealError::Seal)?;
        let mut buf = plain.to_vec();
        self.key()?
            .seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), Aad::from(label.as_bytes()), &mut buf)
            .map_err(|_| SealError::Seal)?;
        let mut out = Vec::with_capacity(MAGIC.len() + NONCE_LEN + buf.len());
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&buf);
        Ok(out)
    }
}

/// Whether a stored blob is sealed.
pub fn is_sealed(stored: &[u8]) -> bool {
    stored.starts_with(MAGIC)
}

/// Opens a sealed blob, or returns an unsealed one as it is.
pub fn open(kek: Option<&Kek>, label: &str, stored: &[u8]) -> Result<Vec<u8>, SealError> {
    if !is_sealed(stored) {
        return Ok(stored.to_vec());
    }
    let kek = kek.ok_or(SealError::NoKek)?;
    let rest = &stored[MAGIC.len()..];
    if rest.len() < NONCE_LEN {
        return Err(SealError::Open);
    }
    let (nonce, sealed) = rest.split_at(NONCE_LEN);
    let nonce: [u8; NONCE_LEN] = nonce.try_into().map_err(|_| SealError::Open)?;
    let mut buf = sealed.to_vec();
    let plain = kek
        .key()?
        .open_in_place(Nonce::assume_unique_for_key(nonce), Aad::from(label.as_bytes()), &mut buf)
        .map_err(|_| SealError::Open)?;
    Ok(plain.to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sealed_key_opens_only_with_its_kek_and_label() {
        let kek = Kek::parse(&Kek::generate_b64()).unwrap();
        let sealed = kek.seal("kid-1", b"private key").unwrap();
        assert!(is_sealed(&sealed));
        assert!(!sealed.windows(11).any(|w| w == b"private key"));
        assert_eq!(open(Some(&kek), "kid-1", &sealed).unwrap(), b"private key");
        assert_eq!(open(Some(&kek), "kid-2", &sealed).unwrap_err(), SealError::Open);
        let other = Kek::parse(&Kek::generate_b64()).unwrap();
        assert_eq!(open(Some(&other), "kid-1", &sealed).unwrap_err(), SealError::Open);
        assert_eq!(open(None, "kid-1", &sealed).unwrap_err(), SealError::NoKek);
        assert_eq!(open(None, "kid-1", b"\x30plain").unwrap(), b"\x30plain");
        assert!(Kek::parse("c2hvcnQ=").is_err());
        assert!(!format!("{kek:?}").contains(&format!("{:?}", kek.0)));
    }
}
