//! The successor of a rotated refresh token, derivable again so a retried refresh can be answered
//! with the same token: `base64url(HMAC-SHA256(key = the old token, message = a random salt))`.
//!
//! The salt is stored with the old token's row; the old token itself is stored only as a digest.
//! Computing a successor needs both the raw old token and that row, so a stolen token alone
//! does not reveal what follows it in its chain, and the database alone reveals no token.

use rand::RngCore as _;
use ring::hmac;

/// The random salt a refresh token's successor is derived from. Secret-bearing: no `Display`,
/// a redacting `Debug`, and its bytes only through [`SuccessorSalt::expose`].
#[derive(Clone, PartialEq, Eq)]
pub struct SuccessorSalt([u8; 32]);

impl SuccessorSalt {
    /// A fresh salt from the OS generator.
    pub fn generate() -> Self {
        let mut salt = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut salt);
        Self(salt)
    }

    /// A salt read back from the store; `None` unless exactly 32 bytes.
    pub fn from_slice(bytes: &[u8]) -> Option<Self> {
        bytes.try_into().ok().map(Self)
    }

    /// The salt's bytes, for the store. Never log them.
    pub fn expose(&self) -> &[u8; 32] {
        &self.0
    }
}

impl std::fmt::Debug for SuccessorSalt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SuccessorSalt(<redacted>)")
    }
}

/// The refresh token that succeeds `old_token` under `salt`: 256 bits, base64url without
/// padding, like every refresh token. The same inputs always give the same token.
pub fn successor_token(old_token: &str, salt: &SuccessorSalt) -> String {
    let key = hmac::Key::new(hmac::HMAC_SHA256, old_token.as_bytes());
    crate::b64url(hmac::sign(&key, &salt.0).as_ref())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_successor_is_a_keyed_hash_of_the_old_token_and_the_salt() {
        let salt = SuccessorSalt::generate();
        let next = successor_token("old-token", &salt);
        assert_eq!(next, successor_token("old-token", &salt), "derivable again");
        assert_eq!(crate::b64url_decode(&next).map(|b| b.len()), Some(32), "256 bits");
        assert_ne!(next, successor_token("another-token", &salt), "the old token is the key");
        assert_ne!(next, successor_token("old-token", &SuccessorSalt::generate()), "the salt is the message");
    }

    #[test]
    fn the_old_token_is_the_hmac_key_and_the_salt_the_message() {
        // Computed independently: HMAC-SHA256(key = b"old-refresh-token", msg = bytes 0..32).
        let salt = SuccessorSalt::from_slice(&core::array::from_fn::<u8, 32, _>(|i| i as u8)).unwrap();
        assert_eq!(successor_token("old-refresh-token", &salt), "1vq8BV93SIBnOL0PspnxKHsU_1eu6fIYw-uud3zA4f4");
    }

    #[test]
    fn a_salt_never_shows_in_debug_and_reads_back_only_at_its_length() {
        let salt = SuccessorSalt::from_slice(&[0xab; 32]).unwrap();
        assert_eq!(format!("{salt:?}"), "SuccessorSalt(<redacted>)");
        assert_eq!(SuccessorSalt::from_slice(salt.expose()), Some(salt));
        assert!(SuccessorSalt::from_slice(&[0u8; 31]).is_none());
    }
}
