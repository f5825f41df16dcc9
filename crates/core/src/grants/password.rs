//! `password` (RFC 6749 §4.3): only for clients allowed to use it; Argon2id behind the throttles of [`crate::throttle`].

use crate::accounts::PasswordCheck;
use crate::error::OAuthError;
use crate::issuing::Issuer;
use crate::issuing::TokenSet;
use crate::model::{Client, Password};
use crate::tokens::new_jti;

/// What the password grant holds: the issuer and the password check.
pub(super) struct Flow<'a> {
    pub(super) issuer: Issuer<'a>,
    pub(super) accounts: &'a dyn PasswordCheck,
}

pub(super) async fn run(
    t: &Flow<'_>,
    client: &Client,
    username: &str,
    password: &Password,
    scope: &str,
    source: Option<std::net::IpAddr>,
) -> Result<TokenSet, OAuthError> {
    if password.is_empty() {
        return Err(OAuthError::invalid_request("password is required"));
    }
    if password.expose().len() > 1024 {
        return Err(OAuthError::invalid_request("password is too long"));
    }
    let scope = crate::clients::resolve_scope(client, scope)?;
    let user = t.accounts.verify_user_password(username, password, source).await?;
    let auth_time = t.issuer.revocations.issue_time(Some(&user.id), Some(&client.id), t.issuer.now());
    let ids = (new_jti(), uuid::Uuid::new_v4().to_string());
    // Disabled between its password check and now: as if the password had not matched.
    let gone = || OAuthError::invalid_grant("invalid username or password");
    t.issuer.issue_for_user(client, &user.id, scope, auth_time, None, ids, t.issuer.now(), gone).await
}
