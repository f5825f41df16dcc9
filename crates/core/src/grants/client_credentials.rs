//! `client_credentials` (RFC 6749 §4.4): confidential clients only, no refresh token, and no
//! store write on the way.

use crate::error::OAuthError;
use crate::issuing::TokenSet;
use crate::model::Client;
use crate::tokens::new_jti;
use crate::Tessera;

pub(super) async fn run(t: &Tessera, client: &Client, scope: &str) -> Result<TokenSet, OAuthError> {
    // RFC 6749 §4.4: the client credentials grant type MUST only be used by confidential clients.
    if !client.confidential {
        return Err(OAuthError::unauthorized_client("public clients may not use client_credentials"));
    }
    let scope = t.resolve_scope(client, scope)?;
    let now = t.now();
    let (access_token, exp) = t.mint_access(client, None, &scope, None, new_jti(), now)?;
    Ok(TokenSet { access_token, expires_in: exp - now, refresh_token: None, scope, id_token: None })
}
