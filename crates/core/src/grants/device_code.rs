//! The device authorization grant (RFC 8628): start, the verification page's lookup and
//! decision, and the device's polls with `authorization_pending` / `slow_down` /
//! `access_denied` / `expired_token`.

use crate::clients::ClientAuth;
use crate::engine::required;
use crate::error::{ErrorCode, OAuthError, StoreError};
use crate::issuing::Issuer;
use crate::issuing::TokenSet;
use crate::model::describe_scope;
use crate::model::{Client, DeviceCode, GrantType, ScopeSet, SessionHandle};
use crate::ports::DeviceStore;
use crate::ports::{DecideOutcome, DeviceDecision, DeviceGrant, DevicePoll, ThrottleOp};
use crate::throttle;
use crate::tokens::new_jti;
use crate::Tessera;
use rand::Rng as _;
use std::net::IpAddr;

/// RFC 8628 §6.1: a user code from an alphabet without vowels (no words) and without
/// look-alikes, 8 characters: 20^8 ≈ 2^34.5 possibilities.
const USER_CODE_ALPHABET: &[u8; 20] = b"BCDFGHJKLMNPQRSTVWXZ";

/// The answer to a device authorization request (RFC 8628 §3.2).
#[derive(Clone)]
pub struct DeviceAuthorization {
    pub device_code: DeviceCode,
    pub user_code: String,
    pub verification_uri: String,
    pub verification_uri_complete: String,
    pub expires_in: i64,
    pub interval: i64,
}

impl std::fmt::Debug for DeviceAuthorization {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceAuthorization").field("expires_in", &self.expires_in).finish_non_exhaustive()
    }
}

/// What the verification page shows about a user code.
#[derive(Clone, Debug)]
pub struct DeviceRequestView {
    pub user_code: String,
    pub client: Client,
    pub scopes: Vec<(String, String)>,
    pub expires_in: i64,
}

fn new_user_code() -> String {
    let mut rng = rand::rngs::OsRng;
    let mut s = String::with_capacity(9);
    for i in 0..8 {
        if i == 4 {
            s.push('-');
        }
        s.push(char::from(USER_CODE_ALPHABET[rng.gen_range(0..USER_CODE_ALPHABET.len())]));
    }
    s
}

/// Canonical `XXXX-XXXX` from what a person typed: case, dashes and spaces do not matter.
pub fn normalize_user_code(input: &str) -> Option<String> {
    let chars: Vec<char> =
        input.chars().filter(|c| !matches!(c, '-' | ' ' | '\t')).map(|c| c.to_ascii_uppercase()).collect();
    if chars.len() != 8 || !chars.iter().all(|c| c.is_ascii() && USER_CODE_ALPHABET.contains(&(*c as u8))) {
        return None;
    }
    let mut s: String = chars[..4].iter().collect();
    s.push('-');
    s.extend(&chars[4..]);
    Some(s)
}

impl Tessera {
    /// The device authorization endpoint (RFC 8628 §3.1).
    #[tracing::instrument(level = "debug", skip_all, fields(client_id = %crate::printable(&auth.client_id)))]
    pub async fn start_device_authorization(
        &self,
        auth: &ClientAuth,
        scope: &str,
        source: Option<IpAddr>,
    ) -> Result<DeviceAuthorization, OAuthError> {
        let client = self.authenticate_client(auth).await?;
        self.require_grant(&client, GrantType::DeviceCode)?;
        let scope = crate::clients::resolve_scope(&client, scope)?;
        let now = self.now();
        // RFC 8628 §5.1: every live user code is one more that a guess can hit, so one client
        // starts a bounded number a minute, and one source far fewer (so that an anonymous
        // caller cannot use up a public client's allowance).
        let minute = now.div_euclid(60);
        let busy = ErrorCode::TemporarilyUnavailable;
        if let Some(ip) = source {
            let window = format!("{}:{minute}", throttle::source_key("device-starts-source", ip));
            self.attempt(&window, &throttle::DEVICE_STARTS_PER_SOURCE, ThrottleOp::Take, busy).await?;
        }
        let per_minute = throttle::per_minute(self.cfg.device_starts_per_minute);
        let window = format!("device-starts:{}:{minute}", client.id);
        self.attempt(&window, &per_minute, ThrottleOp::Take, busy).await?;
        let device_code = DeviceCode::new(tessera_crypto::random_secret(32));
        let mut grant = DeviceGrant {
            client_id: client.id.clone(),
            scope: scope.to_string(),
            user_code: String::new(),
            expires_at: now + self.cfg.device_code_ttl,
            interval: self.cfg.device_interval,
        };
        // A collision of user codes is rare; try a few fresh ones.
        let mut attempts = 0;
        loop {
            grant.user_code = new_user_code();
            match self.ephemeral.put_device(device_code.digest(), &grant).await {
                Ok(()) => break,
                Err(StoreError::Conflict(_)) if attempts < 5 => attempts += 1,
                Err(e) => return Err(e.into()),
            }
        }
        let complete = format!("{}?user_code={}", self.cfg.verification_uri, grant.user_code);
        Ok(DeviceAuthorization {
            device_code,
            user_code: grant.user_code,
            verification_uri: self.cfg.verification_uri.clone(),
            verification_uri_complete: complete,
            expires_in: self.cfg.device_code_ttl,
            interval: self.cfg.device_interval,
        })
    }

    /// What a typed user code stands for; `expired_token` when it is unknown or expired.
    /// Each lookup is a guess from `source`, throttled (RFC 8628 §5.1).
    pub async fn lookup_user_code(
        &self,
        user_code: &str,
        source: Option<IpAddr>,
    ) -> Result<DeviceRequestView, OAuthError> {
        self.guess(source, async {
            let unknown = || OAuthError::new(ErrorCode::ExpiredToken, "that code is unknown or has expired");
            let code = normalize_user_code(user_code).ok_or_else(unknown)?;
            let now = self.now();
            let (grant, _status) = self.ephemeral.lookup_user_code(&code, now).await?.ok_or_else(unknown)?;
            let client = self.durable.get_client(&grant.client_id).await?.ok_or_else(unknown)?;
            let scopes = ScopeSet::parse(&grant.scope)?.iter().map(|s| (s.to_owned(), describe_scope(s))).collect();
            Ok(DeviceRequestView { user_code: code, client, scopes, expires_in: grant.expires_at - now })
        })
        .await
    }

    /// The person approves the device on the verification page, signed in by `session`.
    pub async fn approve_device(
        &self,
        user_code: &str,
        session: &SessionHandle,
        source: Option<IpAddr>,
    ) -> Result<(), OAuthError> {
        let s =
            self.session(session).await?.ok_or_else(|| OAuthError::new(ErrorCode::LoginRequired, "sign in first"))?;
        let decision = DeviceDecision::Approve { user_id: s.user_id, auth_time: s.auth_time };
        self.guess(source, self.decide(user_code, decision)).await
    }

    /// The person denies the device.
    pub async fn deny_device(
        &self,
        user_code: &str,
        session: &SessionHandle,
        source: Option<IpAddr>,
    ) -> Result<(), OAuthError> {
        self.session(session).await?.ok_or_else(|| OAuthError::new(ErrorCode::LoginRequired, "sign in first"))?;
        self.guess(source, self.decide(user_code, DeviceDecision::Deny)).await
    }

    /// Runs `use_code` as one user-code guess from `source` (RFC 8628 §5.1: user codes are
    /// short, so guessing them is throttled): counted before the code is looked at, taken back
    /// unless the code was wrong. Throttled guesses get `slow_down` with a `retry_after`.
    async fn guess<T>(
        &self,
        source: Option<IpAddr>,
        use_code: impl std::future::Future<Output = Result<T, OAuthError>>,
    ) -> Result<T, OAuthError> {
        let key = source.map(|ip| throttle::source_key("user-code-source", ip));
        if let Some(key) = &key {
            self.attempt(key, &throttle::USER_CODE_SOURCE, ThrottleOp::Take, ErrorCode::SlowDown).await?;
        }
        let outcome = use_code.await;
        let wrong_code = matches!(&outcome, Err(e) if e.code == ErrorCode::ExpiredToken);
        if let (Some(key), false) = (&key, wrong_code) {
            self.forgive(key, false).await;
        }
        outcome
    }

    async fn decide(&self, user_code: &str, decision: DeviceDecision) -> Result<(), OAuthError> {
        let unknown = || OAuthError::new(ErrorCode::ExpiredToken, "that code is unknown or has expired");
        let code = normalize_user_code(user_code).ok_or_else(unknown)?;
        match self.ephemeral.decide_device(&code, &decision, self.now()).await? {
            DecideOutcome::Decided => Ok(()),
            DecideOutcome::NotFound => Err(unknown()),
            DecideOutcome::AlreadyDecided => {
                Err(OAuthError::invalid_request("this code was already approved or denied"))
            }
        }
    }
}

/// What a device's poll holds: the issuer and the device authorizations.
pub(super) struct PollFlow<'a> {
    pub(super) issuer: Issuer<'a>,
    pub(super) devices: &'a dyn DeviceStore,
}

/// The device access token request (RFC 8628 §3.4, §3.5).
pub(super) async fn poll(t: &PollFlow<'_>, client: &Client, device_code: &DeviceCode) -> Result<TokenSet, OAuthError> {
    required(device_code.expose(), "device_code", 512)?;
    let invalid = || OAuthError::invalid_grant("the device code is invalid or was already used");
    match t.devices.poll_device(device_code.digest(), t.issuer.now_ms()).await? {
        DevicePoll::Pending => {
            Err(OAuthError::new(ErrorCode::AuthorizationPending, "the user has not yet approved the request"))
        }
        DevicePoll::SlowDown { interval } => Err(OAuthError::new(
            ErrorCode::SlowDown,
            format!("polling too fast; wait at least {interval} seconds between requests"),
        )),
        DevicePoll::Denied => Err(OAuthError::access_denied("the user denied the request")),
        DevicePoll::Expired => Err(OAuthError::new(ErrorCode::ExpiredToken, "the device code has expired")),
        DevicePoll::Consumed | DevicePoll::Unknown => Err(invalid()),
        DevicePoll::Approved { grant, user_id, auth_time } => {
            if grant.client_id != client.id {
                return Err(invalid());
            }
            let scope = ScopeSet::parse(&grant.scope)?;
            let ids = (new_jti(), uuid::Uuid::new_v4().to_string());
            t.issuer.issue_for_user(client, &user_id, scope, auth_time, None, ids, t.issuer.now(), invalid).await
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_codes_have_the_documented_shape() {
        for _ in 0..100 {
            let c = new_user_code();
            assert_eq!(c.len(), 9);
            assert_eq!(&c[4..5], "-");
            assert!(!c.chars().any(|ch| "AEIOUY".contains(ch)));
            assert_eq!(normalize_user_code(&c).as_deref(), Some(c.as_str()));
        }
    }

    #[test]
    fn typed_user_codes_are_case_and_dash_insensitive() {
        assert_eq!(normalize_user_code("bcdf ghjk").as_deref(), Some("BCDF-GHJK"));
        assert_eq!(normalize_user_code("BCDFGHJK").as_deref(), Some("BCDF-GHJK"));
        assert_eq!(normalize_user_code("bcdf-ghj"), None);
        assert_eq!(normalize_user_code("ABCD-EFGH"), None);
    }
}
