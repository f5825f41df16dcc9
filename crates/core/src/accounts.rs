//! Users' passwords, checked behind the throttles of [`crate::throttle`] (lockout), and
//! usernames.

use crate::error::{ErrorCode, OAuthError};
use crate::model::{Password, User};
use crate::ports::{AuditKind, ThrottleOp};
use crate::throttle;
use crate::Tessera;
use std::net::IpAddr;

/// What the password grant holds of the accounts: a password check behind the throttles.
#[async_trait::async_trait]
pub(crate) trait PasswordCheck: Send + Sync {
    async fn verify_user_password(
        &self,
        username: &str,
        password: &Password,
        source: Option<IpAddr>,
    ) -> Result<User, OAuthError>;
}

#[async_trait::async_trait]
impl PasswordCheck for Tessera {
    async fn verify_user_password(
        &self,
        username: &str,
        password: &Password,
        source: Option<IpAddr>,
    ) -> Result<User, OAuthError> {
        Tessera::verify_user_password(self, username, password, source).await
    }
}

impl Tessera {
    /// Checks a user's password behind the throttles (DESIGN.md rule 8: Argon2id on the
    /// bounded pool; the source, then the account, counted before anything is checked; one
    /// generic error whether the user exists or not). Fails closed: without its throttle no
    /// password is checked.
    pub(crate) async fn verify_user_password(
        &self,
        username: &str,
        password: &Password,
        source: Option<IpAddr>,
    ) -> Result<User, OAuthError> {
        let generic = || OAuthError::invalid_grant("invalid username or password");
        let username = normalize_username(username)?;
        let busy = ErrorCode::TemporarilyUnavailable;
        let source_key = source.map(|ip| throttle::source_key("login-source", ip));
        if let Some(key) = &source_key {
            self.attempt(key, &throttle::LOGIN_SOURCE, ThrottleOp::Peek, busy).await?;
        }
        let account_key = format!("login:{}", tessera_crypto::Digest::of(username.as_bytes()).to_hex());
        let policy = throttle::account_policy(self.cfg.lockout_threshold, self.cfg.lockout_window);
        let count = match self.attempt(&account_key, &policy, ThrottleOp::Take, busy).await {
            Ok(count) => count,
            Err(e) => {
                // Asking again before the account's delay has passed counts against the source:
                // one address cannot keep taking the next slot of a known user's account.
                if let Some(key) = &source_key {
                    self.record_failure(key, &throttle::LOGIN_SOURCE).await;
                }
                return Err(e);
            }
        };
        let checked = async {
            let user = self.durable.find_user_by_username(&username).await?;
            let verified = match &user {
                Some(u) => self.passwords.verify(password.expose(), &u.password_hash).await?,
                None => {
                    self.passwords.verify_dummy(password.expose()).await?;
                    false
                }
            };
            Ok::<_, OAuthError>((user, verified))
        };
        let (user, verified) = match checked.await {
            Ok(outcome) => outcome,
            Err(e) => {
                // Nothing was checked (a full password queue, a store outage): not an attempt.
                self.forgive(&account_key, false).await;
                return Err(e);
            }
        };
        match user {
            Some(u) if verified && !u.disabled => {
                self.forgive(&account_key, true).await;
                Ok(u)
            }
            user => {
                if let Some(key) = &source_key {
                    self.record_failure(key, &throttle::LOGIN_SOURCE).await;
                }
                if count == policy.free {
                    let uid = user.as_ref().map(|u| u.id.as_str());
                    self.audit(
                        AuditKind::Lockout,
                        None,
                        uid,
                        "repeated password failures: attempts on this account are now delayed",
                    )
                    .await;
                }
                Err(generic())
            }
        }
    }
}

/// Usernames compare case-insensitively; they are stored lower-cased.
pub fn normalize_username(username: &str) -> Result<String, OAuthError> {
    let u = username.trim();
    if u.is_empty() {
        return Err(OAuthError::invalid_request("username is required"));
    }
    if u.len() > 128 || u.chars().any(char::is_control) {
        return Err(OAuthError::invalid_request("username is malformed"));
    }
    Ok(u.to_lowercase())
}
