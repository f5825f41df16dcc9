//! `refresh_token` (RFC 6749 §6) with rotation and reuse detection (RFC 9700 §4.14.2): every
//! use rotates the token; presenting a rotated one revokes its whole family.

use crate::engine::{required, TokenSet};
use crate::error::OAuthError;
use crate::model::{Client, RefreshToken, ScopeSet};
use crate::ports::{RefreshRecord, RefreshState, Rotation};
use crate::tokens::new_jti;
use crate::Tessera;

pub(super) async fn run(
    t: &Tessera,
    client: &Client,
    token: &RefreshToken,
    scope: &str,
) -> Result<TokenSet, OAuthError> {
    required(token.expose(), "refresh_token", 512)?;
    let invalid = || OAuthError::invalid_grant("the refresh token is invalid, expired or revoked");
    let now = t.now();
    let old = t.durable.get_refresh(token.digest()).await?.ok_or_else(invalid)?;
    // RFC 6749 §6: the refresh token must have been issued to the authenticated client.
    if old.client_id != client.id {
        return Err(invalid());
    }
    match old.state {
        RefreshState::Active => {}
        RefreshState::Rotated => return reused(t, &old).await,
        RefreshState::Revoked => return Err(invalid()),
    }
    if old.expires_at <= now {
        return Err(invalid());
    }
    // RFC 6749 §6: the scope may only narrow; the new refresh token keeps the original scope.
    let granted = ScopeSet::parse(&old.scope)?;
    let requested = ScopeSet::parse(scope)?;
    let scope = if requested.is_empty() {
        granted.clone()
    } else if requested.is_subset(&granted) {
        requested
    } else {
        return Err(OAuthError::invalid_scope("a refresh may not widen the scope granted"));
    };
    let user = match &old.user_id {
        Some(id) => Some(t.durable.get_user(id).await?.filter(|u| !u.disabled).ok_or_else(invalid)?),
        None => None,
    };

    let jti = new_jti();
    let (access_token, access_exp) = t.mint_access(client, user.as_ref(), &scope, old.auth_time, jti.clone(), now)?;
    let new_token = RefreshToken::new(tessera_crypto::random_secret(32));
    let new = RefreshRecord {
        digest: new_token.digest(),
        family_id: old.family_id.clone(),
        client_id: client.id.clone(),
        user_id: old.user_id.clone(),
        scope: old.scope.clone(),
        issued_at: now,
        expires_at: now + t.refresh_ttl(client),
        auth_time: old.auth_time,
        access_jti: jti,
        access_exp,
        state: RefreshState::Active,
    };
    match t.durable.rotate_refresh(old.digest, &new).await? {
        Rotation::Rotated => {}
        Rotation::Reused { .. } => return reused(t, &old).await,
        Rotation::Unknown => return Err(invalid()),
    }
    let id_token = match (&user, scope.contains("openid")) {
        (Some(u), true) => {
            Some(t.mint_id_token(client, u, &scope, old.auth_time.unwrap_or(now), None, &access_token, now)?)
        }
        _ => None,
    };
    Ok(TokenSet { access_token, expires_in: access_exp - now, refresh_token: Some(new_token), scope, id_token })
}

async fn reused(t: &Tessera, old: &RefreshRecord) -> Result<TokenSet, OAuthError> {
    t.revoke_family(&old.family_id).await?;
    t.audit(
        "refresh_reuse",
        Some(&old.client_id),
        old.user_id.as_deref(),
        "a rotated refresh token was presented again; its family is revoked",
    )
    .await;
    Err(OAuthError::invalid_grant("the refresh token is invalid, expired or revoked"))
}
