//! The grant rules of the core, run in process: `Tessera` itself on the embedded adapters
//! (SQLite in memory, the in-memory ephemeral store) with a clock that moves only when told
//! to, and no transport in between. Every test starts a core of its own.

use std::collections::HashMap;
use std::sync::Arc;

use tessera_core::admin::{NewClient, NewUser};
use tessera_core::authorize::{AuthorizeOutcome, AuthorizeRequest, Consent};
use tessera_core::clock::ManualClock;
use tessera_core::grants::{DeviceAuthorization, Grant};
use tessera_core::introspect::{ActiveToken, Introspection};
use tessera_core::model::{AuthorizationCode, Password, PresentedToken, SessionHandle};
use tessera_core::ports::{AuditKind, AuditLog as _, UserStore as _};
use tessera_core::{ClientAuth, CoreConfig, ErrorCode, OAuthError, Tessera, TokenSet};
use tessera_ephemeral::MemoryEphemeral;
use tessera_store::SqlStore;

const ISSUER: &str = "https://issuer.example";
const WEB_CB: &str = "https://web.example/cb";
const WEB_OTHER_CB: &str = "https://web.example/other";
const SPA_CB: &str = "https://spa.example/cb";
const LEGACY_CB: &str = "https://legacy.example/cb";
const ALICE_PASSWORD: &str = "alice-password";
const WRONG_PASSWORD: &str = "not-alices-password";

// ---------------------------------------------------------------------------------------------
// Fixture

struct Fixture {
    tessera: Arc<Tessera>,
    durable: SqlStore,
    clock: Arc<ManualClock>,
    /// Confidential: authorization_code (PKCE optional), password and refresh_token, with two
    /// redirect URIs.
    web: ClientAuth,
    /// Public: authorization_code (S256 only) and refresh_token.
    spa: ClientAuth,
    /// Public: authorization_code with `plain` PKCE allowed, and no refresh tokens.
    legacy: ClientAuth,
    /// Public: the device grant and refresh_token.
    tv: ClientAuth,
    /// Confidential, client_credentials only: the resource server that introspects.
    api: ClientAuth,
    /// Alice's login session.
    alice: SessionHandle,
}

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| (*s).to_owned()).collect()
}

async fn register(t: &Tessera, spec: NewClient) -> ClientAuth {
    let created = t.create_client(spec).await.expect("create_client");
    ClientAuth { client_id: created.client.id, client_secret: created.secret }
}

async fn fixture() -> Fixture {
    fixture_with(|_| {}).await
}

async fn fixture_with(configure: impl FnOnce(&mut CoreConfig)) -> Fixture {
    let durable = SqlStore::connect("sqlite::memory:").await.expect("SQLite in memory");
    durable.migrate().await.expect("migrations");
    let clock = Arc::new(ManualClock::default());
    // The ephemeral store reclaims what expired on the same clock, as Redis would on its own.
    let ephemeral = Arc::new(MemoryEphemeral::with_clock(clock.clone()));
    let mut cfg = CoreConfig::new(ISSUER);
    configure(&mut cfg);
    let started = Tessera::start(cfg, Arc::new(durable.clone()), ephemeral, clock.clone())
        .await
        .expect("the core starts on the in-memory stores");
    let t = started.tessera;
    let scopes = || strings(&["openid", "profile", "read", "write"]);
    let web = NewClient {
        client_id: "web".into(),
        grant_types: strings(&["authorization_code", "password", "refresh_token"]),
        redirect_uris: strings(&[WEB_CB, WEB_OTHER_CB]),
        scopes: scopes(),
        skip_consent: true,
        ..Default::default()
    };
    let spa = NewClient {
        client_id: "spa".into(),
        public: true,
        grant_types: strings(&["authorization_code", "refresh_token"]),
        redirect_uris: strings(&[SPA_CB]),
        scopes: scopes(),
        skip_consent: true,
        ..Default::default()
    };
    let legacy = NewClient {
        client_id: "legacy".into(),
        public: true,
        grant_types: strings(&["authorization_code"]),
        redirect_uris: strings(&[LEGACY_CB]),
        scopes: scopes(),
        skip_consent: true,
        allow_plain_pkce: true,
        ..Default::default()
    };
    let tv = NewClient {
        client_id: "tv".into(),
        public: true,
        grant_types: strings(&["urn:ietf:params:oauth:grant-type:device_code", "refresh_token"]),
        scopes: scopes(),
        ..Default::default()
    };
    let api =
        NewClient { client_id: "api".into(), grant_types: strings(&["client_credentials"]), ..Default::default() };
    let (web, spa, legacy, tv, api) = (
        register(&t, web).await,
        register(&t, spa).await,
        register(&t, legacy).await,
        register(&t, tv).await,
        register(&t, api).await,
    );
    let alice =
        NewUser { username: "alice".into(), password: Some(Password::new(ALICE_PASSWORD)), ..Default::default() };
    t.create_user(alice).await.expect("create_user");
    let alice = t.authenticate("alice", &Password::new(ALICE_PASSWORD), None).await.expect("alice signs in").session;
    Fixture { tessera: t, durable, clock, web, spa, legacy, tv, api, alice }
}

/// A PKCE verifier and its S256 challenge (RFC 7636 §4.1, §4.2).
fn pkce_pair() -> (String, String) {
    let verifier = tessera_crypto::random_secret(32);
    let challenge = tessera_crypto::pkce_s256(&verifier);
    (verifier, challenge)
}

/// The error of a refused request, which must carry `code`.
#[track_caller]
fn refused<T: std::fmt::Debug>(result: Result<T, OAuthError>, code: ErrorCode, what: &str) -> OAuthError {
    match result {
        Err(e) if e.code == code => e,
        Err(e) => panic!("{what}: expected {code}, got {e}"),
        Ok(answer) => panic!("{what}: expected {code}, got {answer:?}"),
    }
}

impl Fixture {
    async fn password(&self, username: &str, password: &str, scope: &str) -> Result<TokenSet, OAuthError> {
        let grant = Grant::Password {
            username: username.into(),
            password: Password::new(password),
            scope: scope.into(),
            source: None,
        };
        self.tessera.token(&self.web, grant).await
    }

    async fn refresh(&self, client: &ClientAuth, tokens: &TokenSet, scope: &str) -> Result<TokenSet, OAuthError> {
        let refresh_token = tokens.refresh_token.clone().expect("a refresh token");
        self.tessera.token(client, Grant::RefreshToken { refresh_token, scope: scope.into() }).await
    }

    /// Alice's authorization request for a code; the parameters of the redirect it answers.
    async fn authorize(
        &self,
        client: &ClientAuth,
        redirect_uri: &str,
        challenge: &str,
        method: &str,
    ) -> HashMap<String, String> {
        let req = AuthorizeRequest {
            response_type: "code".into(),
            client_id: client.client_id.clone(),
            redirect_uri: redirect_uri.into(),
            scope: "openid read".into(),
            state: "st".into(),
            code_challenge: challenge.into(),
            code_challenge_method: method.into(),
            ..Default::default()
        };
        let outcome = self.tessera.authorize(&req, &self.alice, Consent::NotAsked).await.expect("a trusted client");
        let AuthorizeOutcome::Redirect { to, .. } = outcome else { panic!("not a redirect: {outcome:?}") };
        let to = url::Url::parse(&to).expect("an absolute redirect");
        to.query_pairs().into_owned().collect()
    }

    async fn code(&self, client: &ClientAuth, redirect_uri: &str, challenge: &str, method: &str) -> AuthorizationCode {
        let p = self.authorize(client, redirect_uri, challenge, method).await;
        AuthorizationCode::new(p.get("code").unwrap_or_else(|| panic!("no code in {p:?}")).clone())
    }

    async fn exchange(
        &self,
        client: &ClientAuth,
        code: &AuthorizationCode,
        redirect_uri: &str,
        code_verifier: &str,
    ) -> Result<TokenSet, OAuthError> {
        let grant = Grant::AuthorizationCode {
            code: code.clone(),
            redirect_uri: redirect_uri.into(),
            code_verifier: code_verifier.into(),
        };
        self.tessera.token(client, grant).await
    }

    async fn start_device(&self) -> DeviceAuthorization {
        self.tessera.start_device_authorization(&self.tv, "openid read", None).await.expect("device authorization")
    }

    async fn poll(&self, device: &DeviceAuthorization) -> Result<TokenSet, OAuthError> {
        self.tessera.token(&self.tv, Grant::DeviceCode { device_code: device.device_code.clone() }).await
    }

    /// An access token as the resource server's introspection sees it.
    async fn introspect(&self, access_token: &str) -> Option<ActiveToken> {
        let token = PresentedToken::new(access_token);
        match self.tessera.introspect(&self.api, &token).await.expect("introspection") {
            Introspection::Active(t) => Some(*t),
            Introspection::Inactive => None,
        }
    }

    async fn active(&self, access_token: &str) -> bool {
        self.introspect(access_token).await.is_some()
    }

    /// Whether the refresh token of `tokens` introspects active for `web`, whose it is.
    async fn refresh_active(&self, tokens: &TokenSet) -> bool {
        let token = PresentedToken::new(tokens.refresh_token.as_ref().expect("a refresh token").expose());
        self.tessera.introspect(&self.web, &token).await.expect("introspection") != Introspection::Inactive
    }

    async fn audited(&self, kind: AuditKind) -> bool {
        self.durable.recent_events(100).await.expect("audit events").iter().any(|e| e.kind == kind)
    }
}

// ---------------------------------------------------------------------------------------------
// PKCE (RFC 7636)

#[tokio::test]
async fn s256_pkce_exchanges_with_its_verifier_and_a_wrong_verifier_is_invalid_grant() {
    let f = fixture().await;
    let (verifier, challenge) = pkce_pair();
    let code = f.code(&f.spa, SPA_CB, &challenge, "S256").await;
    let (wrong, _) = pkce_pair();
    refused(f.exchange(&f.spa, &code, SPA_CB, &wrong).await, ErrorCode::InvalidGrant, "a wrong verifier");

    let t = f.exchange(&f.spa, &code, SPA_CB, &verifier).await.expect("the right verifier");
    let at = f.introspect(&t.access_token).await.expect("an active access token");
    assert_eq!((at.client_id.as_str(), at.username.as_str(), at.scope.as_str()), ("spa", "alice", "openid read"));
    assert!(t.refresh_token.is_some());
    assert!(t.id_token.is_some(), "scope openid");
}

#[tokio::test]
async fn plain_pkce_is_refused_unless_the_client_allows_it() {
    let f = fixture().await;
    // With `plain` the challenge is the verifier itself (RFC 7636 §4.2).
    let (verifier, _) = pkce_pair();
    let p = f.authorize(&f.spa, SPA_CB, &verifier, "plain").await;
    assert_eq!(p.get("error").map(String::as_str), Some("invalid_request"), "{p:?}");
    assert!(!p.contains_key("code"));
    // RFC 7636 §4.3: an absent method means plain.
    let p = f.authorize(&f.spa, SPA_CB, &verifier, "").await;
    assert_eq!(p.get("error").map(String::as_str), Some("invalid_request"), "{p:?}");

    let code = f.code(&f.legacy, LEGACY_CB, &verifier, "plain").await;
    let (wrong, _) = pkce_pair();
    refused(f.exchange(&f.legacy, &code, LEGACY_CB, &wrong).await, ErrorCode::InvalidGrant, "a wrong plain verifier");
    let t = f.exchange(&f.legacy, &code, LEGACY_CB, &verifier).await.expect("plain where the client allows it");
    assert!(f.active(&t.access_token).await);
}

#[tokio::test]
async fn a_verifier_sent_for_a_request_without_a_challenge_is_invalid_grant() {
    let f = fixture().await;
    // A confidential client may leave PKCE out; a verifier at the token endpoint then means
    // someone tries a PKCE downgrade (RFC 9700 §2.1.1).
    let code = f.code(&f.web, WEB_CB, "", "").await;
    let (verifier, _) = pkce_pair();
    refused(f.exchange(&f.web, &code, WEB_CB, &verifier).await, ErrorCode::InvalidGrant, "a verifier, no challenge");
    let t = f.exchange(&f.web, &code, WEB_CB, "").await.expect("the exchange without a verifier");
    assert!(f.active(&t.access_token).await);
}

#[tokio::test]
async fn a_failed_exchange_leaves_the_code_usable_by_the_right_request() {
    let f = fixture().await;
    let (verifier, challenge) = pkce_pair();
    let code = f.code(&f.web, WEB_CB, &challenge, "S256").await;
    let (wrong, _) = pkce_pair();
    refused(f.exchange(&f.web, &code, WEB_CB, &wrong).await, ErrorCode::InvalidGrant, "a wrong verifier");
    // RFC 6749 §4.1.3: the code was issued to another client.
    refused(f.exchange(&f.spa, &code, WEB_CB, &verifier).await, ErrorCode::InvalidGrant, "another client");
    // RFC 6749 §4.1.3: redirect_uri must be identical to the request's, even if registered.
    refused(f.exchange(&f.web, &code, WEB_OTHER_CB, &verifier).await, ErrorCode::InvalidGrant, "another redirect_uri");

    let t = f.exchange(&f.web, &code, WEB_CB, &verifier).await.expect("the right request after the failed ones");
    assert!(f.active(&t.access_token).await);
    assert!(!f.audited(AuditKind::CodeReplay).await, "the refused requests were no use of the code");
}

// ---------------------------------------------------------------------------------------------
// Refresh (RFC 6749 §6, RFC 9700 §4.14.2)

#[tokio::test]
async fn a_refresh_may_narrow_the_scope_and_its_successor_keeps_the_original_scope() {
    let f = fixture().await;
    let first = f.password("alice", ALICE_PASSWORD, "read write").await.unwrap();
    let narrow = f.refresh(&f.web, &first, "read").await.expect("a narrower scope");
    assert_eq!(narrow.scope.to_string(), "read");
    assert_eq!(f.introspect(&narrow.access_token).await.expect("active").scope, "read");
    // RFC 6749 §6: the new refresh token stands for the scope originally granted.
    let again = f.refresh(&f.web, &narrow, "").await.unwrap();
    assert_eq!(again.scope.to_string(), "read write");
}

#[tokio::test]
async fn a_refresh_that_widens_the_scope_is_invalid_scope_and_rotates_nothing() {
    let f = fixture().await;
    let first = f.password("alice", ALICE_PASSWORD, "read").await.unwrap();
    // `write` is one the client may ask for, but it was not granted.
    refused(f.refresh(&f.web, &first, "read write").await, ErrorCode::InvalidScope, "a wider scope");
    assert!(f.refresh_active(&first).await, "the refused refresh left the token as it was");
    let next = f.refresh(&f.web, &first, "").await.expect("the same token, refreshed as granted");
    assert_eq!(next.scope.to_string(), "read");
}

#[tokio::test]
async fn every_refresh_rotates_the_token_and_the_rotated_one_is_no_longer_active() {
    let f = fixture().await;
    let t0 = f.password("alice", ALICE_PASSWORD, "").await.unwrap();
    let t1 = f.refresh(&f.web, &t0, "").await.unwrap();
    let t2 = f.refresh(&f.web, &t1, "").await.unwrap();
    let tokens: Vec<&str> = [&t0, &t1, &t2].into_iter().map(|t| t.refresh_token.as_ref().unwrap().expose()).collect();
    assert!(tokens[0] != tokens[1] && tokens[1] != tokens[2] && tokens[0] != tokens[2], "each refresh rotates");
    assert!(!f.refresh_active(&t0).await && !f.refresh_active(&t1).await);
    assert!(f.refresh_active(&t2).await);
    // Rotation alone revokes no access token.
    for t in [&t0, &t1, &t2] {
        assert!(f.active(&t.access_token).await);
    }
}

#[tokio::test]
async fn a_rotated_token_presented_after_the_retry_window_revokes_the_whole_family() {
    let f = fixture().await;
    let t0 = f.password("alice", ALICE_PASSWORD, "").await.unwrap();
    let t1 = f.refresh(&f.web, &t0, "").await.unwrap();
    let t2 = f.refresh(&f.web, &t1, "").await.unwrap();
    f.clock.advance_secs(f.tessera.config().refresh_retry_window + 1);

    refused(f.refresh(&f.web, &t1, "").await, ErrorCode::InvalidGrant, "a rotated token again");
    refused(f.refresh(&f.web, &t2, "").await, ErrorCode::InvalidGrant, "the successor of a reused token");
    assert!(!f.refresh_active(&t2).await);
    for (n, t) in [&t0, &t1, &t2].into_iter().enumerate() {
        assert!(!f.active(&t.access_token).await, "access token {n} of the family is still active");
    }
    assert!(f.audited(AuditKind::RefreshReuse).await);
}

#[tokio::test]
async fn a_retry_within_the_window_gets_the_same_successor_again() {
    let f = fixture().await;
    let t0 = f.password("alice", ALICE_PASSWORD, "").await.unwrap();
    let t1 = f.refresh(&f.web, &t0, "").await.unwrap();
    f.clock.advance_secs(f.tessera.config().refresh_retry_window - 1);

    // The client lost the answer and asks again with the same token.
    let retry = f.refresh(&f.web, &t0, "").await.expect("a retry within the window");
    assert_eq!(retry.refresh_token.as_ref().unwrap().expose(), t1.refresh_token.as_ref().unwrap().expose());
    let (first, again) = (f.introspect(&t1.access_token).await, f.introspect(&retry.access_token).await);
    let (first, again) = (first.expect("active"), again.expect("active"));
    assert_eq!(again.jti, first.jti, "the successor's own access token, signed again");
    assert!(f.audited(AuditKind::RefreshRetry).await);
    assert!(!f.audited(AuditKind::RefreshReuse).await);

    // The family lives on: the successor refreshes as usual.
    let t2 = f.refresh(&f.web, &retry, "").await.expect("the successor after a retry");
    assert!(f.active(&t2.access_token).await && f.active(&t1.access_token).await);
}

#[tokio::test]
async fn a_retry_after_the_successor_was_used_is_reuse() {
    let f = fixture().await;
    let t0 = f.password("alice", ALICE_PASSWORD, "").await.unwrap();
    let t1 = f.refresh(&f.web, &t0, "").await.unwrap();
    let t2 = f.refresh(&f.web, &t1, "").await.unwrap();
    // Within the window, but the client evidently got its answer: someone else holds t0.
    refused(f.refresh(&f.web, &t0, "").await, ErrorCode::InvalidGrant, "t0 after t1 was used");
    refused(f.refresh(&f.web, &t2, "").await, ErrorCode::InvalidGrant, "the family is revoked");
    assert!(!f.active(&t2.access_token).await);
}

// ---------------------------------------------------------------------------------------------
// Password throttles (crates/core/src/throttle.rs): per account, `lockout_threshold` attempts
// pass, then each one waits a delay that doubles from 1 s to 30 s, never a hard lock; the
// count is forgotten `lockout_window` seconds after the last attempt or at a success.

const THRESHOLD: u32 = 3;
const WINDOW: i64 = 900;

async fn lockout_fixture() -> Fixture {
    fixture_with(|cfg| {
        cfg.lockout_threshold = THRESHOLD;
        cfg.lockout_window = WINDOW;
    })
    .await
}

#[track_caller]
fn throttled<T: std::fmt::Debug>(result: Result<T, OAuthError>, wait: u32, what: &str) {
    let e = refused(result, ErrorCode::TemporarilyUnavailable, what);
    assert_eq!(e.retry_after, Some(wait), "{what}: {e}");
}

#[tokio::test]
async fn past_the_threshold_an_account_waits_even_with_the_right_password() {
    let f = lockout_fixture().await;
    for n in 1..=THRESHOLD {
        refused(f.password("alice", WRONG_PASSWORD, "").await, ErrorCode::InvalidGrant, &format!("free attempt {n}"));
    }
    throttled(f.password("alice", ALICE_PASSWORD, "").await, 1, "the right password at once");
    // The login page shares the account's throttle.
    throttled(f.tessera.authenticate("alice", &Password::new(ALICE_PASSWORD), None).await.map(|_| ()), 1, "sign-in");

    f.clock.advance_secs(1);
    f.tessera.authenticate("alice", &Password::new(ALICE_PASSWORD), None).await.expect("the delay is over");
    // A success forgives the account entirely: the free attempts are back.
    for n in 1..=THRESHOLD {
        refused(f.password("alice", WRONG_PASSWORD, "").await, ErrorCode::InvalidGrant, &format!("again free {n}"));
    }
}

#[tokio::test]
async fn the_delays_double_up_to_thirty_seconds_and_never_become_a_lock() {
    let f = lockout_fixture().await;
    for _ in 0..THRESHOLD {
        refused(f.password("alice", WRONG_PASSWORD, "").await, ErrorCode::InvalidGrant, "a free attempt");
    }
    for wait in [1, 2, 4, 8, 16, 30, 30] {
        throttled(f.password("alice", WRONG_PASSWORD, "").await, wait, "too soon");
        f.clock.advance_secs(i64::from(wait) - 1);
        throttled(f.password("alice", WRONG_PASSWORD, "").await, 1, "a second too soon");
        f.clock.advance_secs(1);
        refused(f.password("alice", WRONG_PASSWORD, "").await, ErrorCode::InvalidGrant, "after the delay");
    }
    f.clock.advance_secs(30);
    f.password("alice", ALICE_PASSWORD, "").await.expect("the right password once the delay is over");
}

#[tokio::test]
async fn an_account_quiet_for_its_window_starts_afresh() {
    let f = lockout_fixture().await;
    for _ in 0..=THRESHOLD {
        refused(f.password("alice", WRONG_PASSWORD, "").await, ErrorCode::InvalidGrant, "a failure");
        f.clock.advance_secs(1);
    }
    // Four failures: the next waits 2 s. A second short of the window after the last one,
    // the count still stands, and one more failure makes the next attempt wait 4 s.
    f.clock.advance_secs(WINDOW - 2);
    refused(f.password("alice", WRONG_PASSWORD, "").await, ErrorCode::InvalidGrant, "a late failure");
    throttled(f.password("alice", ALICE_PASSWORD, "").await, 4, "the count still stood");

    // Quiet for the whole window: forgotten, the free attempts are back and the right
    // password works at once.
    f.clock.advance_secs(WINDOW);
    for n in 1..=THRESHOLD {
        refused(f.password("alice", WRONG_PASSWORD, "").await, ErrorCode::InvalidGrant, &format!("free again {n}"));
    }
    f.clock.advance_secs(WINDOW);
    f.password("alice", ALICE_PASSWORD, "").await.expect("the right password after the window");
}

#[tokio::test]
async fn unknown_usernames_are_throttled_like_known_ones() {
    let f = lockout_fixture().await;
    let mut answers = vec![];
    for user in ["alice", "nobody"] {
        for _ in 0..THRESHOLD {
            answers.push(refused(f.password(user, WRONG_PASSWORD, "").await, ErrorCode::InvalidGrant, user));
        }
        throttled(f.password(user, WRONG_PASSWORD, "").await, 1, user);
    }
    assert!(answers.windows(2).all(|w| w[0] == w[1]), "the answers tell users apart: {answers:?}");
}

#[tokio::test]
async fn one_source_is_stopped_after_eight_failures_before_it_can_delay_an_account() {
    // The default threshold (10) is above the source's stop (8).
    let f = fixture().await;
    let attacker = Some("203.0.113.7".parse().unwrap());
    let guess = |username: &str, password: &str| Grant::Password {
        username: username.into(),
        password: Password::new(password),
        scope: String::new(),
        source: attacker,
    };
    // Failures 1 to 5 pass at once; the 5th makes the next wait 1 s, then 2 s, 4 s.
    for _ in 0..5 {
        refused(f.tessera.token(&f.web, guess("alice", WRONG_PASSWORD)).await, ErrorCode::InvalidGrant, "free");
    }
    for wait in [1, 2, 4] {
        throttled(f.tessera.token(&f.web, guess("alice", WRONG_PASSWORD)).await, wait, "the source waits");
        f.clock.advance_secs(i64::from(wait));
        refused(f.tessera.token(&f.web, guess("alice", WRONG_PASSWORD)).await, ErrorCode::InvalidGrant, "a failure");
    }
    // The 8th failure stops the source for its 15 minutes, even for the right password.
    f.clock.advance_secs(60);
    let stopped = refused(
        f.tessera.token(&f.web, guess("alice", ALICE_PASSWORD)).await,
        ErrorCode::TemporarilyUnavailable,
        "a stopped source",
    );
    assert_eq!(stopped.retry_after, Some(15 * 60 - 60));

    // Alice's account took eight failures, under its threshold: from elsewhere she signs in.
    f.password("alice", ALICE_PASSWORD, "").await.expect("alice from another source");
    f.clock.advance_secs(15 * 60 - 60);
    f.tessera.token(&f.web, guess("alice", ALICE_PASSWORD)).await.expect("the source after its window");
}

// ---------------------------------------------------------------------------------------------
// The device authorization grant (RFC 8628)

#[tokio::test]
async fn polling_before_approval_is_pending_and_polling_too_fast_is_slow_down() {
    let f = fixture().await;
    let d = f.start_device().await;
    assert_eq!(d.interval, 5);
    refused(f.poll(&d).await, ErrorCode::AuthorizationPending, "the first poll");
    refused(f.poll(&d).await, ErrorCode::SlowDown, "a poll at once");
    // RFC 8628 §3.5: after slow_down the interval is 5 s longer for all later polls.
    f.clock.advance_secs(d.interval);
    refused(f.poll(&d).await, ErrorCode::SlowDown, "the old interval");
    f.clock.advance_secs(d.interval + 10);
    refused(f.poll(&d).await, ErrorCode::AuthorizationPending, "the raised interval");
}

#[tokio::test]
async fn an_approved_device_gets_tokens_once() {
    let f = fixture().await;
    let d = f.start_device().await;
    refused(f.poll(&d).await, ErrorCode::AuthorizationPending, "before approval");
    f.tessera.approve_device(&d.user_code, &f.alice, None).await.expect("alice approves");
    f.clock.advance_secs(d.interval);

    let t = f.poll(&d).await.expect("the poll after approval");
    let at = f.introspect(&t.access_token).await.expect("an active access token");
    assert_eq!((at.client_id.as_str(), at.username.as_str(), at.scope.as_str()), ("tv", "alice", "openid read"));
    assert!(t.refresh_token.is_some());
    f.refresh(&f.tv, &t, "").await.expect("the device's refresh token works");

    f.clock.advance_secs(d.interval);
    refused(f.poll(&d).await, ErrorCode::InvalidGrant, "a second poll after the tokens were issued");
}

#[tokio::test]
async fn a_device_code_past_its_lifetime_is_expired_token() {
    let f = fixture().await;
    let d = f.start_device().await;
    refused(f.poll(&d).await, ErrorCode::AuthorizationPending, "before expiry");
    f.clock.advance_secs(d.expires_in);
    refused(f.poll(&d).await, ErrorCode::ExpiredToken, "at expiry");
    let late = f.tessera.approve_device(&d.user_code, &f.alice, None).await;
    refused(late, ErrorCode::ExpiredToken, "an approval after expiry");
}

#[tokio::test]
async fn a_denied_device_gets_access_denied() {
    let f = fixture().await;
    let d = f.start_device().await;
    f.tessera.deny_device(&d.user_code, &f.alice, None).await.expect("alice denies");
    refused(f.poll(&d).await, ErrorCode::AccessDenied, "after the denial");
    let approve = f.tessera.approve_device(&d.user_code, &f.alice, None).await;
    refused(approve, ErrorCode::InvalidRequest, "an approval after the denial");
    f.clock.advance_secs(d.interval);
    refused(f.poll(&d).await, ErrorCode::AccessDenied, "still denied");
}

// ---------------------------------------------------------------------------------------------
// Authorization code replay (RFC 6749 §4.1.2, §10.5)

#[tokio::test]
async fn a_replayed_code_is_invalid_grant_and_revokes_what_its_first_use_issued() {
    let f = fixture().await;
    let (verifier, challenge) = pkce_pair();
    let code = f.code(&f.web, WEB_CB, &challenge, "S256").await;
    let first = f.exchange(&f.web, &code, WEB_CB, &verifier).await.expect("the first use");
    assert!(f.active(&first.access_token).await && f.refresh_active(&first).await);

    refused(f.exchange(&f.web, &code, WEB_CB, &verifier).await, ErrorCode::InvalidGrant, "the second use");
    assert!(!f.active(&first.access_token).await, "the first access token is revoked");
    assert!(!f.refresh_active(&first).await, "the first refresh token is revoked");
    refused(f.refresh(&f.web, &first, "").await, ErrorCode::InvalidGrant, "the first refresh token");
    assert!(f.audited(AuditKind::CodeReplay).await);
}

#[tokio::test]
async fn a_replayed_code_also_revokes_what_was_refreshed_since_its_first_use() {
    let f = fixture().await;
    let (verifier, challenge) = pkce_pair();
    let code = f.code(&f.spa, SPA_CB, &challenge, "S256").await;
    let first = f.exchange(&f.spa, &code, SPA_CB, &verifier).await.unwrap();
    let refreshed = f.refresh(&f.spa, &first, "").await.unwrap();

    refused(f.exchange(&f.spa, &code, SPA_CB, &verifier).await, ErrorCode::InvalidGrant, "the second use");
    assert!(!f.active(&first.access_token).await);
    assert!(!f.active(&refreshed.access_token).await, "the family's later access token");
    refused(f.refresh(&f.spa, &refreshed, "").await, ErrorCode::InvalidGrant, "the family's later refresh token");
}

// ---------------------------------------------------------------------------------------------
// A grant's user, read as its tokens are issued

#[tokio::test]
async fn a_code_exchanged_after_its_user_was_disabled_gets_no_tokens() {
    let f = fixture().await;
    let (verifier, challenge) = pkce_pair();
    let with_refresh = f.code(&f.web, WEB_CB, &challenge, "S256").await;
    let without_refresh = f.code(&f.legacy, LEGACY_CB, &challenge, "S256").await;
    // Disabled in the store only, as by another node whose revocation this one has not heard
    // of yet: no cut-off here, so the user read with the new family is all that stands.
    f.durable.set_user_disabled("alice", true).await.unwrap().expect("alice");

    refused(f.exchange(&f.web, &with_refresh, WEB_CB, &verifier).await, ErrorCode::InvalidGrant, "start_family");
    refused(
        f.exchange(&f.legacy, &without_refresh, LEGACY_CB, &verifier).await,
        ErrorCode::InvalidGrant,
        "a client without refresh tokens",
    );
}

#[tokio::test]
async fn a_code_exchanged_after_an_administrator_disabled_its_user_gets_no_tokens() {
    let f = fixture().await;
    let (verifier, challenge) = pkce_pair();
    let code = f.code(&f.web, WEB_CB, &challenge, "S256").await;
    f.tessera.set_user_disabled("alice", true).await.expect("disable alice");
    refused(f.exchange(&f.web, &code, WEB_CB, &verifier).await, ErrorCode::InvalidGrant, "a disabled user's code");
}

#[tokio::test]
async fn a_device_approved_before_its_user_was_disabled_gets_no_tokens() {
    let f = fixture().await;
    let d = f.start_device().await;
    f.tessera.approve_device(&d.user_code, &f.alice, None).await.expect("alice approves");
    f.durable.set_user_disabled("alice", true).await.unwrap().expect("alice");
    refused(f.poll(&d).await, ErrorCode::InvalidGrant, "a disabled user's device");
}
