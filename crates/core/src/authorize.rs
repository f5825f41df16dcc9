//! The authorization endpoint (RFC 6749 §4.1.1, §4.2.1; OIDC Core §3.1.2) and the login
//! sessions the pages use. The token service decides everything, including the redirect the
//! browser gets; the facade only renders pages and follows the outcome.

use crate::accounts::normalize_username;
use crate::error::{ErrorCode, OAuthError};
use crate::model::describe_scope;
use crate::model::{AuthorizationCode, Client, GrantType, Password, ScopeSet, SessionHandle, User};
use crate::pkce;
use crate::ports::{CodeGrant, LoginSession};
use crate::tokens::new_jti;
use crate::Tessera;

/// An authorization request as the browser sent it.
#[derive(Clone, Debug, Default)]
pub struct AuthorizeRequest {
    pub response_type: String,
    pub client_id: String,
    pub redirect_uri: String,
    pub scope: String,
    pub state: String,
    pub nonce: String,
    pub code_challenge: String,
    pub code_challenge_method: String,
    pub prompt: String,
    /// Seconds; `None` when absent.
    pub max_age: Option<i64>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Consent {
    #[default]
    NotAsked,
    Approve,
    Deny,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AuthorizeOutcome {
    /// Send the browser to `to`: the client's redirect URI with a code, an error, or (the
    /// implicit grant, RFC 6749 §4.2.2) an access token, and then `issued` says so.
    Redirect { to: String, issued: Option<GrantType> },
    /// Show the login page.
    LoginRequired { client_name: String },
    /// Show the consent page.
    ConsentRequired { client_id: String, client_name: String, scopes: Vec<(String, String)>, username: String },
}

/// A successful login.
#[derive(Clone)]
pub struct Authenticated {
    pub session: SessionHandle,
    pub user: User,
    pub expires_in: i64,
}

/// How recent a login must be for `prompt=login` to count it as fresh.
const FRESH_LOGIN_SECS: i64 = 600;

impl Tessera {
    /// Checks a username and password (behind the throttles, by `source` and by account) and
    /// opens a login session.
    #[tracing::instrument(level = "debug", skip_all)]
    pub async fn authenticate(
        &self,
        username: &str,
        password: &Password,
        source: Option<std::net::IpAddr>,
    ) -> Result<Authenticated, OAuthError> {
        if password.is_empty() || password.expose().len() > 1024 {
            return Err(OAuthError::invalid_request("a password is required"));
        }
        normalize_username(username)?;
        let user = self.verify_user_password(username, password, source).await?;
        let now = self.now();
        let session = SessionHandle::new(tessera_crypto::random_secret(32));
        let record = LoginSession {
            user_id: user.id.clone(),
            username: user.username.clone(),
            // Never before a cut-off of this user: a sign-in just after a password change is
            // a sign-in after it.
            auth_time: self.revocations.issue_time(Some(&user.id), None, now),
            expires_at: now + self.cfg.session_ttl,
        };
        self.ephemeral.put_session(session.digest(), &record).await?;
        Ok(Authenticated { session, user, expires_in: self.cfg.session_ttl })
    }

    /// Ends a login session. An unknown session is not an error.
    pub async fn end_session(&self, session: &SessionHandle) -> Result<(), OAuthError> {
        if !session.is_empty() {
            self.ephemeral.delete_session(session.digest()).await?;
        }
        Ok(())
    }

    pub(crate) async fn session(&self, session: &SessionHandle) -> Result<Option<LoginSession>, OAuthError> {
        if session.is_empty() || session.expose().len() > 256 {
            return Ok(None);
        }
        let s = self.ephemeral.get_session(session.digest(), self.now()).await?;
        // A sign-in from before the user was disabled or given a new password is over.
        Ok(s.filter(|s| !self.revocations.revokes_grant(Some(&s.user_id), None, s.auth_time)))
    }

    /// Decides an authorization request. `Err` means the client or redirect URI cannot be
    /// trusted: show an error page and never redirect (RFC 6749 §4.1.2.1). Every other
    /// error is a redirect back to the client.
    #[tracing::instrument(level = "debug", skip_all, fields(client_id = %crate::printable(&req.client_id), response_type = %crate::printable(&req.response_type)))]
    pub async fn authorize(
        &self,
        req: &AuthorizeRequest,
        session: &SessionHandle,
        consent: Consent,
    ) -> Result<AuthorizeOutcome, OAuthError> {
        if req.client_id.is_empty() {
            return Err(OAuthError::invalid_request("client_id is required"));
        }
        let client = self
            .durable
            .get_client(&req.client_id)
            .await?
            .ok_or_else(|| OAuthError::invalid_request("unknown client_id"))?;
        let redirect_uri = match (req.redirect_uri.as_str(), client.redirect_uris.as_slice()) {
            // RFC 9700 §4.1.3: exact string comparison.
            (given, registered) if !given.is_empty() => {
                if registered.iter().any(|r| r == given) {
                    given.to_owned()
                } else {
                    return Err(OAuthError::invalid_request("redirect_uri is not registered for this client"));
                }
            }
            (_, [only]) => only.clone(),
            _ => return Err(OAuthError::invalid_request("redirect_uri is required")),
        };
        let implicit = req.response_type == "token";
        let back = Back {
            redirect_uri: redirect_uri.clone(),
            state: req.state.clone(),
            fragment: implicit,
            issuer: self.cfg.issuer.clone(),
        };
        // RFC 6749 §4.1.2.1: from here on, errors go back to the client (including
        // server_error and temporarily_unavailable).
        let outcome = match self.decide_authorization(req, &client, &redirect_uri, session, consent).await {
            Ok(AuthorizeOutcome::Redirect { to, issued }) => AuthorizeOutcome::Redirect { to: back.join(&to), issued },
            Ok(other) => other,
            Err(e) => AuthorizeOutcome::Redirect { to: back.join(&back.error(&e)), issued: None },
        };
        Ok(outcome)
    }

    async fn decide_authorization(
        &self,
        req: &AuthorizeRequest,
        client: &Client,
        redirect_uri: &str,
        session: &SessionHandle,
        consent: Consent,
    ) -> Result<AuthorizeOutcome, OAuthError> {
        let implicit = match req.response_type.as_str() {
            "code" => {
                self.require_grant(client, GrantType::AuthorizationCode)?;
                false
            }
            "token" => {
                if !client.allow_implicit {
                    return Err(OAuthError::unauthorized_client("the implicit grant is not enabled for this client"));
                }
                true
            }
            "" => return Err(OAuthError::invalid_request("response_type is required")),
            _ => {
                return Err(OAuthError::new(ErrorCode::UnsupportedResponseType, "response_type must be code or token"))
            }
        };
        for (name, value, max) in [("state", &req.state, 1024), ("nonce", &req.nonce, 512)] {
            if value.len() > max {
                return Err(OAuthError::invalid_request(format!("{name} is too long")));
            }
        }
        let scope = crate::clients::resolve_scope(client, &req.scope)?;
        let challenge = if implicit {
            None
        } else if req.code_challenge.is_empty() {
            // DESIGN.md: PKCE is required for public clients (RFC 9700 §2.1.1).
            if !client.confidential {
                return Err(OAuthError::invalid_request("code_challenge is required for public clients (PKCE)"));
            }
            if !req.code_challenge_method.is_empty() {
                return Err(OAuthError::invalid_request("code_challenge_method without code_challenge"));
            }
            None
        } else {
            Some(pkce::parse_challenge(&req.code_challenge, &req.code_challenge_method, client.allow_plain_pkce)?)
        };
        let prompts: Vec<&str> = req.prompt.split(' ').filter(|p| !p.is_empty()).collect();
        if prompts.iter().any(|p| !matches!(*p, "none" | "login" | "consent" | "select_account")) {
            return Err(OAuthError::invalid_request("prompt has an unknown value"));
        }
        let prompt_none = prompts.contains(&"none");
        if prompt_none && prompts.len() > 1 {
            return Err(OAuthError::invalid_request("prompt=none cannot be combined with other values"));
        }

        let now = self.now();
        let login = self.session(session).await?;
        let login = login.filter(|s| {
            let fresh_enough = !prompts.contains(&"login") || now - s.auth_time <= FRESH_LOGIN_SECS;
            let within_max_age = req.max_age.is_none_or(|m| now - s.auth_time <= m.max(0));
            fresh_enough && within_max_age
        });
        let Some(login) = login else {
            if prompt_none {
                return Err(OAuthError::new(ErrorCode::LoginRequired, "the user is not signed in"));
            }
            return Ok(AuthorizeOutcome::LoginRequired { client_name: client.name.clone() });
        };
        let user = self
            .durable
            .get_user(&login.user_id)
            .await?
            .filter(|u| !u.disabled)
            .ok_or_else(|| OAuthError::access_denied("the account is disabled"))?;

        if !client.skip_consent {
            match consent {
                Consent::Approve => self.durable.grant_scopes(&user.id, &client.id, &scope.to_vec()).await?,
                Consent::Deny => return Err(OAuthError::access_denied("the user denied the request")),
                Consent::NotAsked => {
                    let granted = ScopeSet::from_tokens(self.durable.granted_scopes(&user.id, &client.id).await?);
                    if prompts.contains(&"consent") || !scope.is_subset(&granted) {
                        if prompt_none {
                            return Err(OAuthError::new(ErrorCode::ConsentRequired, "the user has not consented"));
                        }
                        return Ok(AuthorizeOutcome::ConsentRequired {
                            client_id: client.id.clone(),
                            client_name: client.name.clone(),
                            scopes: scope.iter().map(|s| (s.to_owned(), describe_scope(s))).collect(),
                            username: user.username.clone(),
                        });
                    }
                }
            }
        }

        if implicit {
            // RFC 6749 §4.2.2: the token goes in the fragment; no refresh token.
            let (token, exp) =
                self.issuer().mint_access(client, Some(&user), &scope, Some(login.auth_time), new_jti(), now)?;
            let params = encode(&[
                ("access_token", token.as_str()),
                ("token_type", "Bearer"),
                ("expires_in", &(exp - now).to_string()),
                ("scope", &scope.to_string()),
            ]);
            return Ok(AuthorizeOutcome::Redirect { to: format!("#{params}"), issued: Some(GrantType::Implicit) });
        }

        let code = AuthorizationCode::new(tessera_crypto::random_secret(32));
        let grant = CodeGrant {
            client_id: client.id.clone(),
            redirect_uri: if req.redirect_uri.is_empty() { String::new() } else { redirect_uri.to_owned() },
            scope: scope.to_string(),
            user_id: user.id.clone(),
            auth_time: login.auth_time,
            nonce: (!req.nonce.is_empty()).then(|| req.nonce.clone()),
            code_challenge: challenge.map(|_| req.code_challenge.clone()),
            code_challenge_method: challenge.map(|m| m.as_str().to_owned()),
            expires_at: now + self.cfg.code_ttl,
        };
        self.ephemeral.put_code(code.digest(), &grant).await?;
        Ok(AuthorizeOutcome::Redirect { to: format!("?{}", encode(&[("code", code.expose())])), issued: None })
    }
}

/// Builds redirects back to the client: query for codes, fragment for the implicit grant,
/// always with `state` and the issuer (RFC 9207).
struct Back {
    redirect_uri: String,
    state: String,
    fragment: bool,
    issuer: String,
}

impl Back {
    fn error(&self, e: &OAuthError) -> String {
        let sep = if self.fragment { '#' } else { '?' };
        format!("{sep}{}", encode(&[("error", e.code.as_str()), ("error_description", &e.description)]))
    }

    /// Appends `params` (starting with `?` or `#`) plus `state` and `iss` to the redirect URI.
    fn join(&self, params: &str) -> String {
        let mut extra = vec![];
        if !self.state.is_empty() {
            extra.push(("state", self.state.as_str()));
        }
        extra.push(("iss", self.issuer.as_str()));
        let extra = encode(&extra);
        let body = &params[1..];
        let all = if body.is_empty() { extra } else { format!("{body}&{extra}") };
        if params.starts_with('#') {
            format!("{}#{all}", self.redirect_uri)
        } else {
            // Registered redirect URIs carry no fragment, so a '?' can only start a query.
            let sep = if self.redirect_uri.contains('?') { '&' } else { '?' };
            format!("{}{sep}{all}", self.redirect_uri)
        }
    }
}

fn encode(pairs: &[(&str, &str)]) -> String {
    url::form_urlencoded::Serializer::new(String::new()).extend_pairs(pairs).finish()
}
