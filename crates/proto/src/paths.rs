//! The standard paths of the HTTP surface (DESIGN.md's HTTP table): where a facade serves each
//! endpoint, and what the token service's metadata document (RFC 8414) names. Aliases live in
//! the facade.

pub const AUTHORIZE: &str = "/oauth2/authorize";
pub const TOKEN: &str = "/oauth2/token";
pub const DEVICE_AUTHORIZATION: &str = "/oauth2/device_authorization";
pub const DEVICE_VERIFICATION: &str = "/device";
pub const INTROSPECT: &str = "/oauth2/introspect";
pub const REVOKE: &str = "/oauth2/revoke";
/// Security Event Tokens by poll (RFC 8936).
pub const SECURITY_EVENTS: &str = "/oauth2/security-events";
pub const JWKS: &str = "/oauth2/jwks";
pub const USERINFO: &str = "/userinfo";
pub const OAUTH_METADATA: &str = "/.well-known/oauth-authorization-server";
pub const OPENID_METADATA: &str = "/.well-known/openid-configuration";
