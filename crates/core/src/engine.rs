//! [`Tessera`]: the token service's decisions, wired to its ports. Transports turn requests
//! into the typed commands here; everything that can be refused is refused here.

use crate::clock::Clock;
use crate::config::CoreConfig;
use crate::error::{ErrorCode, OAuthError};
use crate::keys::KeyRing;
use crate::model::{Client, ClientSecret, GrantType, Password, RefreshToken, ScopeSet, User};
use crate::ports::{AuditEvent, AuditKind, AuditLog, Durable, Ephemeral, RefreshRecord, RefreshState, ThrottleOp};
use crate::revocation::{LogCursor, Revocations};
use crate::throttle;
use crate::tokens::{self, AccessClaims, VerifiedCache};
use serde_json::json;
use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

/// How a client authenticated: HTTP Basic or body parameters both end up here.
#[derive(Clone, Debug)]
pub struct ClientAuth {
    pub client_id: String,
    /// `None` (or empty) for public clients.
    pub client_secret: Option<ClientSecret>,
}

impl ClientAuth {
    pub fn new(client_id: impl Into<String>, client_secret: impl Into<String>) -> Self {
        let secret: String = client_secret.into();
        Self {
            client_id: client_id.into(),
            client_secret: if secret.is_empty() { None } else { Some(ClientSecret::new(secret)) },
        }
    }
}

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

/// The token service core.
pub struct Tessera {
    pub(crate) cfg: CoreConfig,
    pub(crate) durable: Arc<dyn Durable>,
    /// Where security events go: the durable store's audit log unless another was given.
    pub(crate) audit_log: Arc<dyn AuditLog>,
    pub(crate) ephemeral: Arc<dyn Ephemeral>,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) keys: KeyRing,
    pub(crate) revocations: Revocations,
    pub(crate) log_cursor: tokio::sync::Mutex<LogCursor>,
    pub(crate) verified: VerifiedCache,
    pub(crate) clients: ClientCache,
    /// Every Argon2 computation runs here: fixed workers, bounded queue (DESIGN.md rule 8).
    pub(crate) passwords: tessera_crypto::password_pool::PasswordPool,
}

/// Clients read from the durable store, each trusted for `client_cache_ttl` seconds.
#[derive(Default)]
pub(crate) struct ClientCache {
    entries: std::sync::RwLock<std::collections::HashMap<String, (Arc<Client>, i64)>>,
}

impl ClientCache {
    const CAPACITY: usize = 10_000;

    fn get(&self, id: &str, now: i64) -> Option<Arc<Client>> {
        let entries = self.entries.read().ok()?;
        entries.get(id).filter(|(_, until)| *until > now).map(|(c, _)| Arc::clone(c))
    }

    fn put(&self, client: Arc<Client>, until: i64) {
        if let Ok(mut entries) = self.entries.write() {
            if entries.len() >= Self::CAPACITY {
                entries.clear();
            }
            entries.insert(client.id.clone(), (client, until));
        }
    }

    pub(crate) fn forget(&self, id: &str) {
        if let Ok(mut entries) = self.entries.write() {
            entries.remove(id);
        }
    }
}

/// The result of [`Tessera::start`].
pub struct Started {
    pub tessera: Arc<Tessera>,
    /// True when this start created the first signing key: the store was new.
    pub first_start: bool,
}

impl Tessera {
    /// Loads (or on a new store creates) the signing keys and the revocation snapshot.
    pub async fn start(
        cfg: CoreConfig,
        durable: Arc<dyn Durable>,
        ephemeral: Arc<dyn Ephemeral>,
        clock: Arc<dyn Clock>,
    ) -> Result<Started, OAuthError> {
        let audit_log: Arc<dyn AuditLog> = durable.clone();
        Self::start_with_audit(cfg, durable, audit_log, ephemeral, clock).await
    }

    /// As [`Tessera::start`], with security events written to `audit_log` (the durable store's
    /// log behind something that also counts them, say) instead of the durable store itself.
    pub async fn start_with_audit(
        cfg: CoreConfig,
        durable: Arc<dyn Durable>,
        audit_log: Arc<dyn AuditLog>,
        ephemeral: Arc<dyn Ephemeral>,
        clock: Arc<dyn Clock>,
    ) -> Result<Started, OAuthError> {
        let now = clock.now();
        let loaded =
            KeyRing::load(durable.as_ref(), cfg.signing_alg, cfg.key_encryption_key.clone(), now, key_retention(&cfg))
                .await?;
        let passwords = tessera_crypto::password_pool::PasswordPool::start(cfg.passwords)
            .map_err(|e| OAuthError::server_error(format!("cannot start the password workers: {e}")))?;
        let tessera = Arc::new(Self {
            passwords,
            cfg,
            durable,
            audit_log,
            ephemeral,
            clock,
            keys: loaded.ring,
            revocations: Revocations::default(),
            log_cursor: Default::default(),
            verified: VerifiedCache::new(100_000),
            clients: ClientCache::default(),
        });
        // A node that cannot read the revocations yet still starts; the sync task retries.
        if let Err(e) = tessera.drain_revocation_log().await {
            tracing::warn!(error = %e, "cannot read the revocation log yet");
        }
        Ok(Started { tessera, first_start: loaded.first_start })
    }

    pub fn config(&self) -> &CoreConfig {
        &self.cfg
    }

    pub fn now(&self) -> i64 {
        self.clock.now()
    }

    pub fn durable(&self) -> &Arc<dyn Durable> {
        &self.durable
    }

    pub fn ephemeral(&self) -> &Arc<dyn Ephemeral> {
        &self.ephemeral
    }

    /// The JWK Set document.
    pub fn jwks_json(&self) -> String {
        self.keys.current().jwks_json.clone()
    }

    /// Readiness: both stores answer.
    pub async fn ready(&self) -> Result<(), OAuthError> {
        self.durable.ping().await?;
        self.ephemeral.ping().await?;
        Ok(())
    }

    /// Re-reads the signing keys, so a rotation made through any node reaches this one.
    pub async fn refresh_keys(&self) -> Result<(), OAuthError> {
        self.keys.reload(self.durable.as_ref(), self.now(), key_retention(&self.cfg)).await
    }

    /// Re-reads the keys every `every` (a rotation elsewhere makes this node sign with the
    /// new key within that time; tokens with an unknown `kid` trigger a reload sooner).
    pub async fn run_key_refresh(self: Arc<Self>, every: Duration) {
        loop {
            tokio::time::sleep(every).await;
            if let Err(e) = self.refresh_keys().await {
                tracing::warn!(error = %e, detail = e.detail.as_deref().unwrap_or(""), "cannot reload signing keys");
            }
        }
    }

    /// Authenticates a client (RFC 6749 §2.3). Confidential clients must present their
    /// secret, compared by digest in constant time; public clients must present none.
    pub async fn authenticate_client(&self, auth: &ClientAuth) -> Result<Arc<Client>, OAuthError> {
        let failed = || OAuthError::invalid_client("client authentication failed");
        // A request with no client at all may act as the configured default public client.
        let id = match (&auth.client_id, &auth.client_secret, &self.cfg.default_client_id) {
            (id, None, Some(default)) if id.is_empty() => default.as_str(),
            (id, _, _) => id.as_str(),
        };
        if id.is_empty() || id.len() > 255 {
            return Err(failed());
        }
        let client = self.client(id).await?.ok_or_else(failed)?;
        let authenticated = match (&client.secret_digest, &auth.client_secret) {
            (Some(stored), Some(presented)) if client.confidential => stored.ct_eq(&presented.digest()),
            (_, None) => !client.confidential,
            _ => false,
        };
        if authenticated {
            Ok(client)
        } else {
            Err(failed())
        }
    }

    /// A client by id, from the cache when it is fresh enough.
    pub(crate) async fn client(&self, id: &str) -> Result<Option<Arc<Client>>, OAuthError> {
        let now = self.now();
        if let Some(c) = self.clients.get(id, now) {
            return Ok(Some(c));
        }
        let Some(client) = self.durable.get_client(id).await? else {
            return Ok(None);
        };
        let client = Arc::new(client);
        if self.cfg.client_cache_ttl > 0 {
            self.clients.put(Arc::clone(&client), now + self.cfg.client_cache_ttl);
        }
        Ok(Some(client))
    }

    pub(crate) fn require_grant(&self, client: &Client, grant: GrantType) -> Result<(), OAuthError> {
        if client.allows_grant(grant) {
            Ok(())
        } else {
            Err(OAuthError::unauthorized_client(format!("this client may not use the {} grant", grant.as_str())))
        }
    }

    /// RFC 6749 §3.3: an empty request means the client's allowed scopes; anything beyond
    /// them is `invalid_scope`.
    pub(crate) fn resolve_scope(&self, client: &Client, requested: &str) -> Result<ScopeSet, OAuthError> {
        let requested = ScopeSet::parse(requested)?;
        let allowed = client.allowed_scopes();
        if requested.is_empty() {
            return Ok(allowed);
        }
        if !requested.is_subset(&allowed) {
            return Err(OAuthError::invalid_scope("the requested scope exceeds what this client may ask for"));
        }
        Ok(requested)
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
    /// `jti` and `family_id` may be chosen in advance (a code's tombstone names them). The
    /// user is read (or read again) as the family starts, in the same store step, and must
    /// still exist and be enabled; else `gone` is the answer.
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn issue_for_user(
        &self,
        client: &Client,
        user_id: &str,
        scope: ScopeSet,
        auth_time: i64,
        nonce: Option<&str>,
        (jti, family_id): (String, String),
        gone: impl Fn() -> OAuthError,
    ) -> Result<TokenSet, OAuthError> {
        let now = self.now();
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
            let user = self.durable.start_family(&record).await?.ok_or_else(&gone)?;
            (user, Some(token))
        } else {
            let user = self.durable.get_user(user_id).await?.filter(|u| !u.disabled).ok_or_else(&gone)?;
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

    /// Writes a security event to the `tessera::audit` target and the audit log.
    pub(crate) async fn audit(&self, kind: AuditKind, client_id: Option<&str>, user_id: Option<&str>, detail: &str) {
        tracing::warn!(target: "tessera::audit", kind = kind.as_str(), client_id, user_id, detail);
        let event = AuditEvent {
            at: self.now(),
            kind,
            client_id: client_id.map(str::to_owned),
            user_id: user_id.map(str::to_owned),
            detail: detail.to_owned(),
        };
        if let Err(e) = self.audit_log.record_event(&event).await {
            tracing::error!(target: "tessera::audit", error = %e, kind = kind.as_str(), "could not store an audit event");
        }
    }

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

/// How long a retired key keeps verifying: the longest lifetime a token it signed may have.
pub(crate) fn key_retention(cfg: &CoreConfig) -> i64 {
    cfg.access_token_ttl.max(cfg.id_token_ttl).max(24 * 3600)
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

/// A human description of a scope, for the consent and device pages.
pub fn describe_scope(scope: &str) -> String {
    match scope {
        "openid" => "Sign you in with your account".to_owned(),
        "profile" => "See your name and username".to_owned(),
        "email" => "See your email address".to_owned(),
        "offline_access" => "Stay connected when you are not using it".to_owned(),
        other => format!("Access “{other}”"),
    }
}

/// Rejects a string parameter that is absent or larger than a sane bound.
pub(crate) fn required<'a>(value: &'a str, name: &str, max: usize) -> Result<&'a str, OAuthError> {
    if value.is_empty() {
        return Err(OAuthError::invalid_request(format!("{name} is required")));
    }
    if value.len() > max {
        return Err(OAuthError::invalid_request(format!("{name} is too long")));
    }
    Ok(value)
}
