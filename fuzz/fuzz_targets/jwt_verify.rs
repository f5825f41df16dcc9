//! JWT verification of arbitrary input: `tessera_crypto::jwt::verify` against a fixed key set
//! (ES256, EdDSA, RS256) and the core's local access-token check (`verify_access`) on top.
//!
//! Input: a token as presented, or, when it starts with `{`, a JSON header on the first line
//! and claims after it, which the target signs with the fixed key the header's `kid` names
//! (else the ES256 one) so the claim checks are reached too.
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use std::sync::OnceLock;
use tessera_core::keys::KeySet;
use tessera_core::tokens::{verify_access, Inactive, VerifiedCache, ACCESS_TOKEN_TYP};
use tessera_crypto::jwt::{self, JwtError};
use tessera_crypto::keys::{SigningKey, VerifyingKey};
use tessera_crypto::{b64url, b64url_decode};

const ISSUER: &str = "https://issuer.example";
/// The core's clock for every input: 2030-01-01.
const NOW: i64 = 1_893_456_000;

struct Fixture {
    signing: Vec<SigningKey>,
    keys: KeySet,
    cache: VerifiedCache,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let signing = tessera_fuzz::fixed_keys();
        let verifying: Vec<VerifyingKey> = signing.iter().map(SigningKey::verifying_key).collect();
        let keys = KeySet {
            signing: tessera_fuzz::fixed_keys().remove(0),
            jwks_json: tessera_crypto::keys::jwks(&verifying).to_string(),
            verifying,
        };
        // Small, so the cache's eviction runs too.
        Fixture { signing, keys, cache: VerifiedCache::new(64) }
    })
}

fuzz_target!(|input: &[u8]| {
    let f = fixture();
    let (token, expect_signed) = if input.first() == Some(&b'{') {
        let (header, claims) = match input.iter().position(|&b| b == b'\n') {
            Some(i) => (&input[..i], &input[i + 1..]),
            None => (input, &b""[..]),
        };
        let header_json: Option<Value> = serde_json::from_slice(header).ok();
        let kid = header_json.as_ref().and_then(|h| h.get("kid")).and_then(Value::as_str);
        let key = f.signing.iter().find(|k| Some(k.kid()) == kid).unwrap_or(&f.signing[0]);
        let mut token = b64url(header);
        token.push('.');
        token.push_str(&b64url(claims));
        let sig = key.sign(token.as_bytes()).expect("the fixed keys sign");
        token.push('.');
        token.push_str(&b64url(&sig));
        // A well-formed header naming our key and its algorithm over an object of claims
        // must verify.
        let alg_ok =
            header_json.as_ref().and_then(|h| h.get("alg")).and_then(Value::as_str) == Some(key.alg().as_str());
        let claims_ok = serde_json::from_slice::<Value>(claims).is_ok_and(|c| c.is_object());
        (token, Some(kid == Some(key.kid()) && alg_ok && claims_ok))
    } else {
        (String::from_utf8_lossy(input).into_owned(), None)
    };

    let verified = jwt::verify(&token, |kid| f.keys.find(kid));
    match &verified {
        Ok(v) => {
            assert!(v.claims.is_object());
            let kid = v.header.get("kid").and_then(Value::as_str).expect("a verified token names its key");
            let key = f.keys.find(kid).expect("and the key is ours");
            assert_eq!(v.header.get("alg").and_then(Value::as_str), Some(key.alg.as_str()));
            assert_eq!(token.split('.').count(), 3);
        }
        Err(JwtError::Sign) => panic!("verification reported a signing error"),
        Err(_) => {}
    }
    if let Some(expected) = expect_signed {
        assert_eq!(verified.is_ok(), expected, "{verified:?}");
    }

    // The same token through the core's local check, whose every acceptance the signature
    // check must back.
    let revoked = Default::default();
    match verify_access(&token, &f.keys, ISSUER, NOW, &revoked, &f.cache) {
        Ok(claims) => {
            let v = verified.expect("verify_access accepted a token jwt::verify refuses");
            assert_eq!(v.header.get("typ").and_then(Value::as_str), Some(ACCESS_TOKEN_TYP));
            assert_eq!(claims.iss, ISSUER);
            assert!(claims.exp > NOW && claims.nbf <= NOW);
        }
        Err(Inactive::Malformed | Inactive::UnknownKey | Inactive::Signature) => {
            if let Ok(v) = &verified {
                // Signed and well-formed, so only the claims can be wrong.
                let typ = v.header.get("typ").and_then(Value::as_str);
                assert!(typ == Some(ACCESS_TOKEN_TYP), "a wrong typ must be WrongType");
            }
        }
        Err(_) => assert!(verified.is_ok(), "a claim was judged on an unverified token"),
    }

    // Decoding never panics on the parts either.
    for part in token.split('.') {
        let _ = b64url_decode(part);
    }
});
