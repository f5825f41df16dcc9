//! `client_credentials` (RFC 6749 §4.4): confidential clients only, no refresh token, and no
//! store write on the way.

use crate::error::OAuthError;
use crate::issuing::Issuer;
use crate::issuing::TokenSet;
use crate::model::Client;
use crate::tokens::new_jti;

/// Holds the issuer only: nothing is read or written on the way.
pub(super) fn run(issuer: Issuer<'_>, client: &Client, scope: &str) -> Result<TokenSet, OAuthError> {
    // RFC 6749 §4.4: the client credentials grant type MUST only be used by confidential clients.
    if !client.confidential {
        return Err(OAuthError::unauthorized_client("public clients may not use client_credentials"));
    }
    let scope = crate::clients::resolve_scope(client, scope)?;
    let now = issuer.now();
    let (access_token, exp) = issuer.mint_access(client, None, &scope, None, new_jti(), now)?;
    Ok(TokenSet { access_token, expires_in: exp - now, refresh_token: None, scope, id_token: None })
}
