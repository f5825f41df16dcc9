//! The authorization server metadata (RFC 8414, OpenID Connect Discovery 1.0): what the
//! token service supports, at the URLs where the HTTP facade serves it. The paths here are
//! the public contract of DESIGN.md's HTTP table; the facade registers the same constants.

use crate::settings::Settings;
use serde_json::json;
use tessera_core::model::GrantType;

pub use tessera_proto::paths;

/// Scopes every deployment understands; clients may be registered with others.
pub const STANDARD_SCOPES: [&str; 4] = ["openid", "profile", "email", "offline_access"];

/// The metadata document for these settings.
pub fn server_metadata(settings: &Settings) -> serde_json::Value {
    let base = settings.public_url();
    let url = |path: &str| format!("{base}{path}");
    let client_auth = ["client_secret_basic", "client_secret_post", "none"];
    json!({
        "issuer": settings.issuer(),
        "authorization_endpoint": url(paths::AUTHORIZE),
        "token_endpoint": url(paths::TOKEN),
        "device_authorization_endpoint": url(paths::DEVICE_AUTHORIZATION),
        "introspection_endpoint": url(paths::INTROSPECT),
        "revocation_endpoint": url(paths::REVOKE),
        "jwks_uri": url(paths::JWKS),
        "userinfo_endpoint": url(paths::USERINFO),
        "scopes_supported": STANDARD_SCOPES,
        "response_types_supported": ["code", "token"],
        "response_modes_supported": ["query", "fragment"],
        "grant_types_supported": GrantType::ALL.map(GrantType::as_str),
        "token_endpoint_auth_methods_supported": client_auth,
        // Introspection answers confidential clients only.
        "introspection_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
        "revocation_endpoint_auth_methods_supported": client_auth,
        // plain is accepted only from clients registered to allow it.
        "code_challenge_methods_supported": ["S256", "plain"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": [settings.tokens.signing_alg.as_str()],
        "prompt_values_supported": ["none", "login", "consent", "select_account"],
        "claims_supported": [
            "sub", "iss", "aud", "exp", "iat", "auth_time", "nonce", "at_hash",
            "preferred_username", "name", "email"
        ],
        "claims_parameter_supported": false,
        "request_parameter_supported": false,
        "request_uri_parameter_supported": false,
        // RFC 9207: every authorization response carries `iss`.
        "authorization_response_iss_parameter_supported": true,
        // Revocations as Security Event Tokens (RFC 8417) by poll (RFC 8936), for clients
        // allowed to watch them; gRPC callers use WatchRevocations.
        "security_event_poll_endpoint": url(paths::SECURITY_EVENTS),
        "security_event_delivery_methods_supported": ["urn:ietf:rfc:8936"],
        "security_event_types_supported": tessera_core::watch::SET_EVENT_TYPES,
        "security_event_signing_alg_values_supported": [settings.tokens.signing_alg.as_str()],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_names_every_endpoint_under_the_public_url() {
        let mut s = Settings::default();
        s.http.public_url = Some("https://id.example.com/".parse().unwrap());
        let m = server_metadata(&s);
        assert_eq!(m["issuer"], "https://id.example.com");
        assert_eq!(m["token_endpoint"], "https://id.example.com/oauth2/token");
        assert_eq!(m["jwks_uri"], "https://id.example.com/oauth2/jwks");
        assert_eq!(m["security_event_poll_endpoint"], "https://id.example.com/oauth2/security-events");
        assert!(m["grant_types_supported"]
            .as_array()
            .unwrap()
            .contains(&json!("urn:ietf:params:oauth:grant-type:device_code")));
    }
}
