//! `authorization_code` (RFC 6749 §4.1.3) with PKCE (RFC 7636). A code is single use: the
//! first use leaves a tombstone naming what it issued, and a second use revokes all of it.

use crate::engine::required;
use crate::error::OAuthError;
use crate::issuing::Issuer;
use crate::issuing::TokenSet;
use crate::model::{AuthorizationCode, Client, ScopeSet};
use crate::ports::CodeStore;
use crate::ports::{AuditKind, CodeGrant, CodeTake, Issued};
use crate::revocation::Revoking;
use crate::tokens::new_jti;

/// What a code exchange holds: the issuer, the codes, and revocation (a replayed code revokes what its first use issued).
pub(super) struct Flow<'a> {
    pub(super) issuer: Issuer<'a>,
    pub(super) codes: &'a dyn CodeStore,
    pub(super) revoking: &'a dyn Revoking,
}

pub(super) async fn run(
    t: &Flow<'_>,
    client: &Client,
    code: &AuthorizationCode,
    redirect_uri: &str,
    code_verifier: &str,
) -> Result<TokenSet, OAuthError> {
    required(code.expose(), "code", 512)?;
    let invalid = || OAuthError::invalid_grant("the authorization code is invalid, expired or already used");
    let digest = code.digest();
    let now = t.issuer.now();

    // Validate against a read first, so a request that fails (another client, another
    // redirect URI, a wrong verifier) leaves the code usable by the right one.
    if let Some(grant) = t.codes.peek_code(digest, now).await? {
        check(client, &grant, redirect_uri, code_verifier)?;
    }

    let jti = new_jti();
    let family_id = uuid::Uuid::new_v4().to_string();
    let issued = Issued {
        access_jti: jti.clone(),
        access_exp: now + t.issuer.access_ttl(client),
        family_id: Some(family_id.clone()),
    };
    let grant = match t.codes.take_code(digest, now, &issued, t.issuer.cfg.code_tombstone_ttl).await? {
        CodeTake::Fresh(grant) => grant,
        CodeTake::Replayed(first) => {
            revoke_issued(t, &first).await?;
            t.revoking
                .audit(
                    AuditKind::CodeReplay,
                    Some(&client.id),
                    None,
                    "an authorization code was used twice; what its first use issued is revoked",
                )
                .await;
            return Err(invalid());
        }
        CodeTake::Unknown => return Err(invalid()),
    };
    // The code is immutable, so this repeats the checks above on what was actually taken.
    check(client, &grant, redirect_uri, code_verifier)?;

    let scope = ScopeSet::parse(&grant.scope)?;
    let nonce = grant.nonce.as_deref();
    let tokens = t
        .issuer
        .issue_for_user(client, &grant.user_id, scope, grant.auth_time, nonce, (jti, family_id), now, invalid)
        .await?;

    // A replay that raced this exchange found the tombstone before our tokens existed, so
    // its revocation may have missed them: revoke them now. This exchange still answered
    // first and gets its (now revoked) tokens, as a non-racing first use would have.
    if t.codes.code_replayed(digest).await? {
        revoke_issued(t, &issued).await?;
    }
    Ok(tokens)
}

fn check(client: &Client, grant: &CodeGrant, redirect_uri: &str, verifier: &str) -> Result<(), OAuthError> {
    // RFC 6749 §4.1.3: the code must have been issued to this client.
    if grant.client_id != client.id {
        return Err(OAuthError::invalid_grant("the authorization code was issued to another client"));
    }
    // RFC 6749 §4.1.3: redirect_uri must be identical to the authorization request's.
    if !grant.redirect_uri.is_empty() && grant.redirect_uri != redirect_uri {
        return Err(OAuthError::invalid_grant("redirect_uri does not match the authorization request"));
    }
    if grant.redirect_uri.is_empty()
        && !redirect_uri.is_empty()
        && !client.redirect_uris.iter().any(|u| u == redirect_uri)
    {
        return Err(OAuthError::invalid_grant("redirect_uri does not match the authorization request"));
    }
    match (&grant.code_challenge, &grant.code_challenge_method) {
        (Some(challenge), method) => crate::pkce::verify(challenge, method.as_deref().unwrap_or("plain"), verifier),
        // RFC 9700 §2.1.1: a verifier without a challenge is a PKCE downgrade attempt.
        (None, _) if !verifier.is_empty() => {
            Err(OAuthError::invalid_grant("code_verifier was sent but the authorization request had no code_challenge"))
        }
        (None, _) => Ok(()),
    }
}

async fn revoke_issued(t: &Flow<'_>, issued: &Issued) -> Result<(), OAuthError> {
    t.revoking.revoke_access(&issued.access_jti, issued.access_exp).await?;
    if let Some(family) = &issued.family_id {
        t.revoking.revoke_family(family).await?;
    }
    Ok(())
}
