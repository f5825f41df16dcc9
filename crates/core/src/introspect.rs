//! Introspection (RFC 7662), revocation (RFC 7009) and UserInfo (OIDC Core §5.3).
//! Access tokens are checked in process (DESIGN.md rule 6); only refresh tokens, which are
//! opaque, need the durable store.

use crate::clients::ClientAuth;
use crate::engine::{key_retention, required};
use crate::error::{ErrorCode, OAuthError};
use crate::issuing::add_profile_claims;
use crate::model::PresentedToken;
use crate::ports::RefreshState;
use crate::tokens::{verify_access, AccessClaims, Inactive};

use crate::Tessera;
use serde_json::json;
use std::sync::Arc;

/// An introspection answer. `Inactive` carries nothing else (RFC 7662 §2.2).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Introspection {
    Inactive,
    Active(Box<ActiveToken>),
}

#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct ActiveToken {
    pub scope: String,
    pub client_id: String,
    pub username: String,
    /// "Bearer" for access tokens, "refresh_token" for refresh tokens.
    pub token_type: String,
    pub exp: i64,
    pub iat: i64,
    pub nbf: i64,
    pub sub: String,
    pub aud: Vec<String>,
    pub iss: String,
    pub jti: String,
}

fn looks_like_jwt(token: &str) -> bool {
    token.bytes().filter(|b| *b == b'.').count() == 2
}

impl Tessera {
    /// Verifies an access token locally; `None` if it is not active for any reason. A token
    /// signed by a key this node has not seen makes it re-read the keys (single-flight and
    /// rate-limited, see `KeyRing::reload_for_unknown_kid`), so a rotation on another node is
    /// honoured at once; `temporarily_unavailable` when they cannot be read (the database is
    /// down), since whether such a token is active cannot then be told.
    pub async fn verify_access_token(&self, token: &str) -> Result<Option<Arc<AccessClaims>>, OAuthError> {
        let check = || {
            let keys = self.keys.current();
            verify_access(token, &keys, &self.cfg.issuer, self.now(), &self.revocations, &self.verified)
        };
        let seen = self.keys.generation();
        match check() {
            Ok(c) => Ok(Some(c)),
            Err(Inactive::UnknownKey) => {
                let reloaded = self
                    .keys
                    .reload_for_unknown_kid(seen, self.durable.as_ref(), self.now(), key_retention(&self.cfg))
                    .await;
                match reloaded {
                    Err(e) if e.code == ErrorCode::TemporarilyUnavailable => Err(e),
                    // Any other failure was logged where the keys were read; the kid is unknown.
                    _ => Ok(check().ok()),
                }
            }
            Err(_) => Ok(None),
        }
    }

    /// RFC 7662: the caller must be an authenticated (confidential) client. Anything that is
    /// not an active token gives `Inactive` and nothing else.
    #[tracing::instrument(level = "debug", skip_all, fields(client_id = %crate::printable(&auth.client_id)))]
    pub async fn introspect(&self, auth: &ClientAuth, token: &PresentedToken) -> Result<Introspection, OAuthError> {
        let caller = self.authenticate_client(auth).await?;
        if !caller.confidential {
            return Err(OAuthError::invalid_client("introspection needs an authenticated confidential client"));
        }
        required(token.expose(), "token", 8192)?;
        if looks_like_jwt(token.expose()) {
            return Ok(match self.verify_access_token(token.expose()).await? {
                Some(c) => Introspection::Active(Box::new(ActiveToken {
                    scope: c.scope.clone(),
                    client_id: c.client_id.clone(),
                    username: c.username.clone().unwrap_or_default(),
                    token_type: "Bearer".into(),
                    exp: c.exp,
                    iat: c.iat,
                    nbf: c.nbf,
                    sub: c.sub.clone(),
                    aud: vec![c.aud.clone()],
                    iss: c.iss.clone(),
                    jti: c.jti.clone(),
                })),
                None => Introspection::Inactive,
            });
        }
        let Some(r) = self.durable.get_refresh(token.digest()).await? else {
            return Ok(Introspection::Inactive);
        };
        // Refresh tokens are the client's own: only the client they were issued to sees them.
        if r.state != RefreshState::Active
            || r.expires_at <= self.now()
            || r.client_id != caller.id
            || self.revocations.revokes_grant(
                r.user_id.as_deref(),
                Some(&r.client_id),
                r.auth_time.unwrap_or(r.issued_at),
            )
        {
            return Ok(Introspection::Inactive);
        }
        let username = match &r.user_id {
            Some(id) => match self.durable.get_user(id).await? {
                Some(u) if !u.disabled => u.username,
                // A disabled or deleted user's refresh tokens cannot be used: not active.
                _ => return Ok(Introspection::Inactive),
            },
            None => String::new(),
        };
        Ok(Introspection::Active(Box::new(ActiveToken {
            scope: r.scope,
            client_id: r.client_id.clone(),
            username,
            token_type: "refresh_token".into(),
            exp: r.expires_at,
            iat: r.issued_at,
            nbf: r.issued_at,
            sub: r.user_id.unwrap_or(r.client_id),
            aud: vec![],
            iss: self.cfg.issuer.clone(),
            jti: String::new(),
        })))
    }

    /// RFC 7009. An unknown, expired or malformed token is not an error (§2.2). A token that
    /// belongs to another client is refused with `unauthorized_client` (§2.1: the server
    /// verifies the token was issued to the requesting client and refuses otherwise), and
    /// nothing is revoked. Revoking a refresh token revokes its whole family and the access
    /// tokens it issued.
    #[tracing::instrument(level = "debug", skip_all, fields(client_id = %crate::printable(&auth.client_id)))]
    pub async fn revoke(&self, auth: &ClientAuth, token: &PresentedToken, hint: &str) -> Result<(), OAuthError> {
        let caller = self.authenticate_client(auth).await?;
        required(token.expose(), "token", 8192)?;
        if !hint.is_empty() && hint != "access_token" && hint != "refresh_token" {
            return Err(OAuthError::new(
                ErrorCode::UnsupportedTokenType,
                "token_type_hint must be access_token or refresh_token",
            ));
        }
        let not_yours = || OAuthError::unauthorized_client("the token was not issued to this client");
        if looks_like_jwt(token.expose()) {
            let keys = self.keys.current();
            // Expired or revoked tokens need no revoking; forged ones are unknown tokens.
            let Ok(v) = tessera_crypto::jwt::verify(token.expose(), |kid| keys.find(kid)) else {
                return Ok(());
            };
            let Ok(claims) = serde_json::from_value::<AccessClaims>(v.claims) else {
                return Ok(());
            };
            if claims.iss != self.cfg.issuer {
                return Ok(());
            }
            if claims.client_id != caller.id {
                return Err(not_yours());
            }
            return self.revoke_access(&claims.jti, claims.exp).await;
        }
        let Some(r) = self.durable.get_refresh(token.digest()).await? else {
            return Ok(());
        };
        if r.client_id != caller.id {
            return Err(not_yours());
        }
        self.revoke_family(&r.family_id).await
    }

    /// OIDC UserInfo for a Bearer access token: `invalid_token` when it is not active,
    /// `insufficient_scope` without `openid` (RFC 6750 §3.1).
    pub async fn userinfo(&self, access_token: &str) -> Result<serde_json::Value, OAuthError> {
        let claims = self
            .verify_access_token(access_token)
            .await?
            .ok_or_else(|| OAuthError::invalid_token("the access token is invalid, expired or revoked"))?;
        let scope = crate::model::ScopeSet::parse(&claims.scope)?;
        if !scope.contains("openid") {
            return Err(OAuthError::new(ErrorCode::InsufficientScope, "the access token lacks the openid scope"));
        }
        let user = self
            .durable
            .get_user(&claims.sub)
            .await?
            .filter(|u| !u.disabled)
            .ok_or_else(|| OAuthError::invalid_token("the access token's subject no longer exists"))?;
        let mut out = json!({ "sub": user.id });
        add_profile_claims(&mut out, &user, &scope);
        Ok(out)
    }
}
