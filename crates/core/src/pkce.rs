//! PKCE (RFC 7636).

use crate::error::OAuthError;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    S256,
    Plain,
}

impl Method {
    pub fn as_str(self) -> &'static str {
        match self {
            Method::S256 => "S256",
            Method::Plain => "plain",
        }
    }
}

/// RFC 7636 §4.1 / §4.2: 43 to 128 characters of [A-Z] / [a-z] / [0-9] / "-" / "." / "_" / "~".
fn well_formed(s: &str) -> bool {
    (43..=128).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"-._~".contains(&b))
}

/// Validates an authorization request's challenge. RFC 7636 §4.3: an absent method means `plain`.
pub fn parse_challenge(challenge: &str, method: &str, allow_plain: bool) -> Result<Method, OAuthError> {
    let method = match method {
        "S256" => Method::S256,
        "" | "plain" => Method::Plain,
        _ => return Err(OAuthError::invalid_request("code_challenge_method must be S256")),
    };
    if method == Method::Plain && !allow_plain {
        return Err(OAuthError::invalid_request(
            "code_challenge_method must be S256 (plain is not enabled for this client)",
        ));
    }
    if !well_formed(challenge) {
        return Err(OAuthError::invalid_request("code_challenge is malformed (RFC 7636 §4.2)"));
    }
    Ok(method)
}

/// RFC 7636 §4.6: the verifier, transformed by the method, must equal the challenge.
pub fn verify(challenge: &str, method: &str, verifier: &str) -> Result<(), OAuthError> {
    if verifier.is_empty() {
        return Err(OAuthError::invalid_request("code_verifier is required"));
    }
    if !well_formed(verifier) {
        return Err(OAuthError::invalid_request("code_verifier is malformed (RFC 7636 §4.1)"));
    }
    let computed = match method {
        "plain" => verifier.to_owned(),
        _ => tessera_crypto::pkce_s256(verifier),
    };
    if tessera_crypto::ct_eq(computed.as_bytes(), challenge.as_bytes()) {
        Ok(())
    } else {
        Err(OAuthError::invalid_grant("code_verifier does not match the code_challenge"))
    }
}
