//! `refresh_token` (RFC 6749 §6) with rotation and reuse detection (RFC 9700 §4.14.2): every
//! use rotates the token; presenting a rotated one revokes its whole family, unless it is the
//! same client retrying within `refresh_retry_window` a refresh whose answer it lost, while the
//! successor is still unused: then it gets that same successor again.

use crate::engine::required;
use crate::error::OAuthError;
use crate::issuing::Issuer;
use crate::issuing::TokenSet;
use crate::model::{Client, RefreshToken, ScopeSet, User};
use crate::ports::RefreshStore;
use crate::ports::{AuditKind, RefreshRecord, RefreshState, Rotation, Succession, Successor};
use crate::revocation::Revoking;
use crate::tokens::new_jti;
use tessera_crypto::succession::{successor_token, SuccessorSalt};

/// What a refresh holds: the issuer, the refresh-token families, and revocation.
pub(super) struct Flow<'a> {
    pub(super) issuer: Issuer<'a>,
    pub(super) families: &'a dyn RefreshStore,
    pub(super) revoking: &'a dyn Revoking,
}

pub(super) async fn run(
    t: &Flow<'_>,
    client: &Client,
    token: &RefreshToken,
    scope: &str,
) -> Result<TokenSet, OAuthError> {
    required(token.expose(), "refresh_token", 512)?;
    let invalid = || OAuthError::invalid_grant("the refresh token is invalid, expired or revoked");
    let now = t.issuer.now();
    // The common case, a live token refreshed with its whole scope, is one store step.
    if scope.trim().is_empty() {
        if let Some(answer) = rotate_live(t, client, token, now).await? {
            return Ok(answer);
        }
    }
    let (old, user) = t.families.get_refresh_and_user(token.digest()).await?.ok_or_else(invalid)?;
    // RFC 6749 §6: the refresh token must have been issued to the authenticated client.
    if old.client_id != client.id {
        return Err(invalid());
    }
    match old.state {
        RefreshState::Active => {}
        RefreshState::Rotated => return retried_or_reused(t, client, token, scope, &old, now).await,
        RefreshState::Revoked => {
            // Its revocation may not have reached every node (DESIGN.md rule 9): send it again,
            // at most once a minute per family, so presenting it over and over costs little.
            if t.revoking.first_this_minute(&format!("reannounce:{}", old.family_id)).await {
                t.revoking.revoke_family(&old.family_id).await?;
            }
            return Err(invalid());
        }
    }
    let scope = narrowed(&old.scope, scope)?;
    let user = live_user(t, &old, user, now)?;

    let jti = new_jti();
    let (access_token, access_exp) =
        t.issuer.mint_access(client, user.as_ref(), &scope, old.auth_time, jti.clone(), now)?;
    // Derived rather than drawn, so that a retry of this refresh can be answered with it again.
    let succession = Succession { at: now, salt: SuccessorSalt::generate() };
    let new_token = RefreshToken::new(successor_token(token.expose(), &succession.salt));
    let new = RefreshRecord {
        digest: new_token.digest(),
        family_id: old.family_id.clone(),
        client_id: client.id.clone(),
        user_id: old.user_id.clone(),
        scope: old.scope.clone(),
        issued_at: t.issuer.revocations.issue_time(old.user_id.as_deref(), Some(&client.id), now),
        expires_at: now + t.issuer.refresh_ttl(client),
        auth_time: old.auth_time,
        access_jti: jti,
        access_exp,
        state: RefreshState::Active,
        succession: None,
    };
    match t.families.rotate_refresh(old.digest, &succession, &new).await? {
        Rotation::Rotated => {}
        Rotation::Reused { .. } => {
            // Another request rotated it first; this one may be the same client retrying.
            let old = t.families.get_refresh(old.digest).await?.ok_or_else(invalid)?;
            return retried_or_reused(t, client, token, &scope.to_string(), &old, now).await;
        }
        Rotation::Unknown => return Err(invalid()),
    }
    answer(t, client, user.as_ref(), scope, old.auth_time, (access_token, access_exp), new_token, now)
}

/// The refresh of a token that is live (active, this client's, unexpired, its user enabled)
/// and asks for its whole scope: rotated in one step, then checked against the cut-offs.
/// `None` when the store found it not live, and nothing changed: the careful path reads it
/// and decides (reuse, a retry, an expired or another client's token).
async fn rotate_live(
    t: &Flow<'_>,
    client: &Client,
    token: &RefreshToken,
    now: i64,
) -> Result<Option<TokenSet>, OAuthError> {
    let jti = new_jti();
    let succession = Succession { at: now, salt: SuccessorSalt::generate() };
    let new_token = RefreshToken::new(successor_token(token.expose(), &succession.salt));
    let successor = Successor {
        digest: new_token.digest(),
        // Dated for the client's cut-offs; a user's cut-off later than now revokes this grant
        // below anyway (the grant began before it).
        issued_at: t.issuer.revocations.issue_time(None, Some(&client.id), now),
        expires_at: now + t.issuer.refresh_ttl(client),
        access_jti: jti.clone(),
        access_exp: now + t.issuer.access_ttl(client),
    };
    let Some((old, user)) = t.families.rotate_live_refresh(token.digest(), &client.id, &succession, &successor).await?
    else {
        return Ok(None);
    };
    // A cut-off of the user or the client revokes the whole grant, the successor just stored
    // with it: it is never handed out, and the family is marked revoked so that presenting
    // the old token again reads as revoked, not as reuse.
    let origin = old.auth_time.unwrap_or(old.issued_at);
    if t.issuer.revocations.revokes_grant(old.user_id.as_deref(), Some(&client.id), origin) {
        t.revoking.revoke_family(&old.family_id).await?;
        return Err(OAuthError::invalid_grant("the refresh token is invalid, expired or revoked"));
    }
    let scope = ScopeSet::parse(&old.scope)?;
    let (access_token, access_exp) = t.issuer.mint_access(client, user.as_ref(), &scope, old.auth_time, jti, now)?;
    answer(t, client, user.as_ref(), scope, old.auth_time, (access_token, access_exp), new_token, now).map(Some)
}

/// RFC 6749 §6: the scope may only narrow; the new refresh token keeps the original scope.
fn narrowed(granted: &str, requested: &str) -> Result<ScopeSet, OAuthError> {
    let granted = ScopeSet::parse(granted)?;
    let requested = ScopeSet::parse(requested)?;
    if requested.is_empty() {
        Ok(granted)
    } else if requested.is_subset(&granted) {
        Ok(requested)
    } else {
        Err(OAuthError::invalid_scope("a refresh may not widen the scope granted"))
    }
}

/// A rotated token presented again: a retry answered with the same successor, or reuse.
async fn retried_or_reused(
    t: &Flow<'_>,
    client: &Client,
    token: &RefreshToken,
    requested: &str,
    old: &RefreshRecord,
    now: i64,
) -> Result<TokenSet, OAuthError> {
    match retried(t, client, token, requested, old, now).await? {
        Some(answer) => Ok(answer),
        None => reused(t, old).await,
    }
}

/// The answer to a retry, or `None` when the presentation is reuse. A retry is the client the
/// token belongs to (checked by the caller) presenting it again within `refresh_retry_window`
/// seconds of its rotation while the successor has never been used: it gets that successor
/// again, re-derived from the token it presented and the salt recorded at the rotation, with
/// the successor's own access token `jti`, so revoking the family still covers what it holds.
async fn retried(
    t: &Flow<'_>,
    client: &Client,
    token: &RefreshToken,
    requested: &str,
    old: &RefreshRecord,
    now: i64,
) -> Result<Option<TokenSet>, OAuthError> {
    let invalid = || OAuthError::invalid_grant("the refresh token is invalid, expired or revoked");
    let window = t.issuer.cfg.refresh_retry_window;
    let Some(succession) = old.succession.as_ref().filter(|s| window > 0 && now - s.at <= window) else {
        return Ok(None);
    };
    let successor = RefreshToken::new(successor_token(token.expose(), &succession.salt));
    let Some((next, user)) = t.families.get_refresh_and_user(successor.digest()).await? else {
        return Ok(None);
    };
    // Rotated means the client got the first answer after all and used it; revoked, that the
    // family is gone.
    if next.state != RefreshState::Active || next.family_id != old.family_id {
        return Ok(None);
    }
    let scope = narrowed(&next.scope, requested)?;
    let user = live_user(t, &next, user, now)?;
    // Signed as of the successor's issue, so its `exp` is never past the one stored with the
    // row: a family revocation keeps the `jti` revoked until exactly then.
    let minted_at = now.min(next.access_exp - t.issuer.access_ttl(client));
    let (access_token, access_exp) =
        t.issuer.mint_access(client, user.as_ref(), &scope, next.auth_time, next.access_jti.clone(), minted_at)?;
    if access_exp <= now {
        return Err(invalid());
    }
    let answer = answer(t, client, user.as_ref(), scope, next.auth_time, (access_token, access_exp), successor, now)?;
    t.revoking.audit(
        AuditKind::RefreshRetry,
        Some(&client.id),
        next.user_id.as_deref(),
        "a rotated refresh token was presented again within the retry window; its unused successor was answered again",
    )
    .await;
    Ok(Some(answer))
}

/// A refresh's answer: the access token minted for it, the refresh token that follows, and an
/// ID token when there is a user and the scope holds `openid`.
#[allow(clippy::too_many_arguments)]
fn answer(
    t: &Flow<'_>,
    client: &Client,
    user: Option<&User>,
    scope: ScopeSet,
    auth_time: Option<i64>,
    (access_token, access_exp): (String, i64),
    refresh_token: RefreshToken,
    now: i64,
) -> Result<TokenSet, OAuthError> {
    let id_token = match user {
        Some(u) if scope.contains("openid") => {
            Some(t.issuer.mint_id_token(client, u, &scope, auth_time.unwrap_or(now), None, &access_token, now)?)
        }
        _ => None,
    };
    Ok(TokenSet { access_token, expires_in: access_exp - now, refresh_token: Some(refresh_token), scope, id_token })
}

async fn reused(t: &Flow<'_>, old: &RefreshRecord) -> Result<TokenSet, OAuthError> {
    t.revoking.revoke_family(&old.family_id).await?;
    t.revoking
        .audit(
            AuditKind::RefreshReuse,
            Some(&old.client_id),
            old.user_id.as_deref(),
            "a rotated refresh token was presented again; its family is revoked",
        )
        .await;
    Err(OAuthError::invalid_grant("the refresh token is invalid, expired or revoked"))
}

/// The user an unexpired refresh token stands for (read with it), checked again:
/// `invalid_grant` when the token expired, falls under a cut-off of its user or client
/// (judged by the sign-in its family began with), or its user is gone or disabled.
fn live_user(t: &Flow<'_>, r: &RefreshRecord, user: Option<User>, now: i64) -> Result<Option<User>, OAuthError> {
    let invalid = || OAuthError::invalid_grant("the refresh token is invalid, expired or revoked");
    let origin = r.auth_time.unwrap_or(r.issued_at);
    if r.expires_at <= now || t.issuer.revocations.revokes_grant(r.user_id.as_deref(), Some(&r.client_id), origin) {
        return Err(invalid());
    }
    match (&r.user_id, user) {
        (Some(id), Some(u)) if u.id == *id && !u.disabled => Ok(Some(u)),
        (Some(_), _) => Err(invalid()),
        (None, _) => Ok(None),
    }
}
