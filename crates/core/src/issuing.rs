//! Issuing tokens: access tokens (RFC 9068), ID tokens (OpenID Connect Core §2), and a user's
//! tokens after a grant, with the first refresh token of a new family.

use crate::clock::Clock;
use crate::config::CoreConfig;
use crate::error::OAuthError;
use crate::keys::KeyRing;
use crate::model::{Client, GrantType, RefreshToken, ScopeSet, User};
use crate::ports::{RefreshRecord, RefreshState, RefreshStore, UserStore};
use crate::revocation::Revocations;
use crate::tokens::{self, AccessClaims};
use crate::Tessera;
use serde_json::json;
use std::fmt;

/// A successful token response (RFC 6749 §5.1).
#[derive(Clone)]
pub struct TokenSet {
    pub access_token: String,
    pub expires_in: i64,
    pub refresh_token: Option<RefreshToken>,
    pub scope: ScopeSet,
    pub id_token: Option<String>,
}

impl TokenSet {
    pub const TOKEN_TYPE: &'static str = "Bearer";
}

impl fmt::Debug for TokenSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenSet")
            .field("expires_in", &self.expires_in)
            .field("scope", &self.scope)
            .finish_non_exhaustive()
    }
}

/// What a flow needs to issue tokens, and nothing else of the core: the policy, the signing
/// keys, the revocation cut-offs (a grant resting on a revoked sign-in issues nothing), the
/// clock, and the users and refresh-token families a user's tokens start from.
#[derive(Clone, Copy)]
pub(crate) struct Issuer<'a> {
    pub(crate) cfg: &'a CoreConfig,
    keys: &'a KeyRing,
    pub(crate) revocations: &'a Revocations,
    clock: &'a dyn Clock,
    users: &'a dyn UserStore,
    families: &'a dyn RefreshStore,
}

impl Tessera {
    /// The capability to issue tokens, for the flows that do.
    pub(crate) fn issuer(&self) -> Issuer<'_> {
        Issuer {
            cfg: &self.cfg,
            keys: &self.keys,
            revocations: &self.revocations,
            clock: self.clock.as_ref(),
            users: self.durable.as_ref(),
            families: self.durable.as_ref(),
        }
    }
}

impl Issuer<'_> {
    pub(crate) fn now(&self) -> i64 {
        self.clock.now()
    }

    pub(crate) fn now_ms(&self) -> i64 {
        self.clock.now_ms()
    }

    pub(crate) fn access_ttl(&self, client: &Client) -> i64 {
        client.access_token_ttl.filter(|t| *t > 0).unwrap_or(self.cfg.access_token_ttl)
    }

    pub(crate) fn refresh_ttl(&self, client: &Client) -> i64 {
        client.refresh_token_ttl.filter(|t| *t > 0).unwrap_or(self.cfg.refresh_token_ttl)
    }

    /// Signs an access token (RFC 9068) with the given `jti`; returns it with its `exp`.
    pub(crate) fn mint_access(
        &self,
        client: &Client,
        user: Option<&User>,
        scope: &ScopeSet,
        auth_time: Option<i64>,
        jti: String,
        now: i64,
    ) -> Result<(String, i64), OAuthError> {
        let exp = now + self.access_ttl(client);
        let claims = AccessClaims {
            iss: self.cfg.issuer.clone(),
            sub: user.map(|u| u.id.clone()).unwrap_or_else(|| client.id.clone()),
            aud: self.cfg.audience.clone(),
            exp,
            iat: self.revocations.issue_time(user.map(|u| u.id.as_str()), Some(&client.id), now),
            nbf: now,
            jti,
            client_id: client.id.clone(),
            scope: scope.to_string(),
            auth_time,
            username: user.map(|u| u.username.clone()),
        };
        let keys = self.keys.current();
        let token = tessera_crypto::jwt::encode(&keys.signing, tokens::ACCESS_TOKEN_TYP, &claims)
            .map_err(|e| OAuthError::server_error(e.to_string()))?;
        Ok((token, exp))
    }

    /// Signs an OpenID Connect ID token (OIDC Core §2) for `user`.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn mint_id_token(
        &self,
        client: &Client,
        user: &User,
        scope: &ScopeSet,
        auth_time: i64,
        nonce: Option<&str>,
        access_token: &str,
        now: i64,
    ) -> Result<String, OAuthError> {
        let mut claims = json!({
            "iss": self.cfg.issuer,
            "sub": user.id,
            "aud": client.id,
            "azp": client.id,
            "exp": now + self.cfg.id_token_ttl,
            "iat": now,
            "auth_time": auth_time,
            "at_hash": tessera_crypto::half_hash(access_token),
        });
        if let Some(n) = nonce.filter(|n| !n.is_empty()) {
            claims["nonce"] = json!(n);
        }
        add_profile_claims(&mut claims, user, scope);
        let keys = self.keys.current();
        tessera_crypto::jwt::encode(&keys.signing, "JWT", &claims).map_err(|e| OAuthError::server_error(e.to_string()))
    }

    /// Issues tokens for a user after a grant succeeded: an access token, a refresh token in
    /// a new family when the client may refresh, and an ID token for scope `openid`.
    /// `jti`, `family_id` and `now` may be chosen in advance (a code's tombstone names the
    /// first two, and the access token's expiry from that `now`). The user is read (or read
    /// again) as the family starts, in the same store step, and must still exist and be
    /// enabled; else `gone` is the answer.
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn issue_for_user(
        &self,
        client: &Client,
        user_id: &str,
        scope: ScopeSet,
        auth_time: i64,
        nonce: Option<&str>,
        (jti, family_id): (String, String),
        now: i64,
        gone: impl Fn() -> OAuthError,
    ) -> Result<TokenSet, OAuthError> {
        // A code or a device approval rests on a sign-in: one from before a cut-off of the
        // user or the client (a new password, a disabled user, a rotated secret) is revoked.
        if self.revocations.revokes_grant(Some(user_id), Some(&client.id), auth_time) {
            return Err(OAuthError::invalid_grant("the sign-in this grant rests on was revoked"));
        }
        let access_exp = now + self.access_ttl(client);
        let (user, refresh_token) = if client.allows_grant(GrantType::RefreshToken) {
            let token = RefreshToken::new(tessera_crypto::random_secret(32));
            let record = RefreshRecord {
                digest: token.digest(),
                family_id,
                client_id: client.id.clone(),
                user_id: Some(user_id.to_owned()),
                scope: scope.to_string(),
                issued_at: self.revocations.issue_time(Some(user_id), Some(&client.id), now),
                expires_at: now + self.refresh_ttl(client),
                auth_time: Some(auth_time),
                access_jti: jti.clone(),
                access_exp,
                state: RefreshState::Active,
                succession: None,
            };
            let user = self.families.start_family(&record).await?.ok_or_else(&gone)?;
            (user, Some(token))
        } else {
            let user = self.users.get_user(user_id).await?.filter(|u| !u.disabled).ok_or_else(&gone)?;
            (user, None)
        };
        let (access_token, minted_exp) = self.mint_access(client, Some(&user), &scope, Some(auth_time), jti, now)?;
        debug_assert_eq!(minted_exp, access_exp, "the family records the access token's expiry");
        let id_token = if scope.contains("openid") {
            Some(self.mint_id_token(client, &user, &scope, auth_time, nonce, &access_token, now)?)
        } else {
            None
        };
        Ok(TokenSet { access_token, expires_in: access_exp - now, refresh_token, scope, id_token })
    }
}

pub(crate) fn add_profile_claims(claims: &mut serde_json::Value, user: &User, scope: &ScopeSet) {
    if scope.contains("profile") {
        claims["preferred_username"] = json!(user.username);
        if let Some(name) = &user.name {
            claims["name"] = json!(name);
        }
    }
    if scope.contains("email") {
        if let Some(email) = &user.email {
            claims["email"] = json!(email);
        }
    }
}
