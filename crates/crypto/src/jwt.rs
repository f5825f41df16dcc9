//! Compact JWS (RFC 7515) for JWTs (RFC 7519): encoding with a cached [`SigningKey`] and
//! verification against a set of [`VerifyingKey`]s chosen by `kid`.

use crate::b64url_decode;
use crate::keys::{SigningKey, VerifyingKey};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use serde_json::Value;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum JwtError {
    #[error("malformed token")]
    Malformed,
    #[error("unknown signing key")]
    UnknownKey,
    #[error("bad signature")]
    BadSignature,
    #[error("signing failed")]
    Sign,
}

/// Signs `claims` as a compact JWS with header `{alg, typ, kid}`.
pub fn encode(key: &SigningKey, typ: &str, claims: &impl serde::Serialize) -> Result<String, JwtError> {
    let claims = serde_json::to_vec(claims).map_err(|_| JwtError::Sign)?;
    let header = key.header(typ);
    // Room for the signature too: 86 characters for the 64 bytes of ES256 and EdDSA (RS256's
    // longer one grows the string once).
    let mut out = String::with_capacity(header.len() + 2 + claims.len().div_ceil(3) * 4 + 86);
    out.push_str(&header);
    out.push('.');
    URL_SAFE_NO_PAD.encode_string(&claims, &mut out);
    let sig = key.sign(out.as_bytes()).map_err(|_| JwtError::Sign)?;
    out.push('.');
    URL_SAFE_NO_PAD.encode_string(&sig, &mut out);
    Ok(out)
}

/// A verified token's header and claims.
#[derive(Debug, Clone)]
pub struct Verified {
    pub header: Value,
    pub claims: Value,
}

/// Verifies the signature of a compact JWS with the key its `kid` names and returns the
/// header and claims. Time-based claims are the caller's to check.
pub fn verify<'a>(token: &str, find: impl Fn(&str) -> Option<&'a VerifyingKey>) -> Result<Verified, JwtError> {
    let mut parts = token.split('.');
    let (Some(h), Some(c), Some(s), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
        return Err(JwtError::Malformed);
    };
    let header: Value =
        serde_json::from_slice(&b64url_decode(h).ok_or(JwtError::Malformed)?).map_err(|_| JwtError::Malformed)?;
    // Every key has a kid: a token naming none could never verify, and calling it an unknown
    // key would send the caller to re-read its keys for nothing.
    let kid = header.get("kid").and_then(Value::as_str).ok_or(JwtError::Malformed)?;
    let key = find(kid).ok_or(JwtError::UnknownKey)?;
    // RFC 8725 §3.1: the algorithm comes from the key, never from the token's header alone.
    if header.get("alg").and_then(Value::as_str) != Some(key.alg.as_str()) {
        return Err(JwtError::BadSignature);
    }
    let sig = b64url_decode(s).ok_or(JwtError::Malformed)?;
    let signing_input_len = h.len() + 1 + c.len();
    if !key.verify(&token.as_bytes()[..signing_input_len], &sig) {
        return Err(JwtError::BadSignature);
    }
    let claims: Value =
        serde_json::from_slice(&b64url_decode(c).ok_or(JwtError::Malformed)?).map_err(|_| JwtError::Malformed)?;
    if !claims.is_object() {
        return Err(JwtError::Malformed);
    }
    Ok(Verified { header, claims })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::b64url;
    use crate::keys::{generate_pkcs8, Algorithm};
    use serde_json::json;

    fn key() -> SigningKey {
        SigningKey::from_pkcs8(Algorithm::Es256, &generate_pkcs8(Algorithm::Es256).unwrap()).unwrap()
    }

    #[test]
    fn a_signed_token_verifies_and_a_tampered_one_does_not() {
        let k = key();
        let vk = k.verifying_key();
        let t = encode(&k, "at+jwt", &json!({"sub": "alice"})).unwrap();
        let v = verify(&t, |kid| (kid == vk.kid).then_some(&vk)).unwrap();
        assert_eq!(v.claims["sub"], "alice");
        assert_eq!(v.header["typ"], "at+jwt");

        let mut parts: Vec<&str> = t.split('.').collect();
        let forged = b64url(br#"{"sub":"mallory"}"#);
        parts[1] = &forged;
        let forged = parts.join(".");
        assert_eq!(verify(&forged, |_| Some(&vk)).unwrap_err(), JwtError::BadSignature);
        assert_eq!(verify("a.b", |_| Some(&vk)).unwrap_err(), JwtError::Malformed);
        let other = key().verifying_key();
        assert_eq!(verify(&t, |_| Some(&other)).unwrap_err(), JwtError::BadSignature);
        assert_eq!(verify(&t, |_| None).unwrap_err(), JwtError::UnknownKey);
        for header in [json!({"alg": "ES256", "typ": "at+jwt"}), json!({"alg": "ES256", "kid": 7})] {
            let no_kid = format!("{}.{}", b64url(header.to_string().as_bytes()), parts[1..].join("."));
            let looked_up = |_: &str| -> Option<&VerifyingKey> { panic!("no kid to look up in {header}") };
            assert_eq!(verify(&no_kid, looked_up).unwrap_err(), JwtError::Malformed, "{header}");
        }
    }

    #[test]
    fn every_type_gets_a_header_naming_it_whether_kept_encoded_or_not() {
        for alg in [Algorithm::Es256, Algorithm::EdDsa] {
            let k = SigningKey::from_pkcs8(alg, &generate_pkcs8(alg).unwrap()).unwrap();
            let vk = k.verifying_key();
            for typ in ["at+jwt", "JWT", "logout+jwt"] {
                let t = encode(&k, typ, &json!({"sub": "alice"})).unwrap();
                let v = verify(&t, |kid| (kid == vk.kid).then_some(&vk)).unwrap();
                assert_eq!(v.header, json!({"alg": alg.as_str(), "typ": typ, "kid": vk.kid}), "{typ}");
            }
        }
    }
}
