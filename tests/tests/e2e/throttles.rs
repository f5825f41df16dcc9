//! Throttles of anonymous input (DESIGN.md rule 8): password guesses are counted before they
//! are checked, by source first and then by account; one source is stopped before it touches
//! an account, an account only ever gets growing delays, and user-code guesses are throttled
//! per source (RFC 8628 §5.1). Sources are relayed in `x-tessera-client-addr`, which the
//! service believes from loopback callers like these tests.

use crate::flows::{password, web_client};
use crate::harness::*;
use futures::future::join_all;
use tessera_core::ErrorCode;
use tessera_proto::token::v1 as pb;

fn from<T>(source: &str, message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert(tessera_proto::CLIENT_ADDR_METADATA, source.parse().unwrap());
    request
}

/// Seconds the throttled answer asks the caller to wait.
fn wait_of(s: &tonic::Status) -> i64 {
    let words: Vec<&str> = s.message().split_whitespace().collect();
    let at = words.iter().position(|w| *w == "wait").unwrap_or_else(|| panic!("no wait in {:?}", s.message()));
    words[at + 1].parse().unwrap()
}

pub async fn one_source_is_stopped_before_it_touches_an_account_and_the_user_still_signs_in(app: TestApp) {
    let web = web_client(&app).await;
    app.user("bob", "bob-password").await;
    let mut token = app.token.clone();
    let attacker = "203.0.113.7";
    let unknown = assert_oauth(
        token.issue_token(from(attacker, password(&web, "nobody", "guess", ""))).await,
        ErrorCode::InvalidGrant,
        "an unknown user",
    );
    for guess in 0..3 {
        let s = assert_oauth(
            token.issue_token(from(attacker, password(&web, "bob", "guess", ""))).await,
            ErrorCode::InvalidGrant,
            "a free guess",
        );
        assert_eq!(s.message(), unknown.message(), "guess {guess}: the error must not tell users apart");
    }
    // The fifth failure from this source makes the next attempt wait, longer each time.
    let guess = || from(attacker, password(&web, "bob", "guess", ""));
    assert_oauth(token.issue_token(guess()).await, ErrorCode::InvalidGrant, "5th");
    let slowed = assert_oauth(token.issue_token(guess()).await, ErrorCode::TemporarilyUnavailable, "too soon after it");
    assert_eq!(slowed.code(), tonic::Code::Unavailable);
    assert_eq!(wait_of(&slowed), 1);
    for (n, wait) in [(6, 1), (7, 2), (8, 4)] {
        app.clock.advance_secs(wait);
        assert_oauth(token.issue_token(guess()).await, ErrorCode::InvalidGrant, &format!("failure {n}"));
    }
    // Eight failures: the source is stopped, even with the right password and long after.
    app.clock.advance_secs(120);
    let stopped = assert_oauth(
        token.issue_token(from(attacker, password(&web, "bob", "bob-password", ""))).await,
        ErrorCode::TemporarilyUnavailable,
        "a stopped source",
    );
    assert!(wait_of(&stopped) > 600, "stopped for the rest of its window: {}", stopped.message());

    // Bob, from his own address, signs in at once: the account was never touched.
    let ok = token.issue_token(from("198.51.100.20", password(&web, "bob", "bob-password", ""))).await;
    assert!(ok.is_ok(), "the user signs in from a clean source: {ok:?}");
    // The browser login shares the throttles.
    let login = token
        .authenticate(from(
            attacker,
            pb::AuthenticateRequest { username: "bob".into(), password: "bob-password".into() },
        ))
        .await;
    assert_oauth(login, ErrorCode::TemporarilyUnavailable, "the login page from a stopped source");
}

pub async fn distributed_guessing_only_delays_an_account_and_no_burst_gets_more_checks(app: TestApp) {
    let web = web_client(&app).await;
    app.user("carol", "carol-password").await;
    let mut token = app.token.clone();
    // 40 wrong guesses at once, each from its own source.
    let guesses = (0..40).map(|i| {
        let mut token = token.clone();
        let request = password(&web, "carol", "guess", "");
        async move { token.issue_token(from(&format!("192.0.2.{}", i + 1), request)).await }
    });
    let outcomes = join_all(guesses).await;
    let checked = outcomes.iter().filter(|o| matches!(o, Err(s) if oauth_code(s) == ErrorCode::InvalidGrant)).count();
    let delayed =
        outcomes.iter().filter(|o| matches!(o, Err(s) if oauth_code(s) == ErrorCode::TemporarilyUnavailable)).count();
    // The account's 10 free attempts are checked; the rest wait, unchecked.
    assert_eq!(checked, 10, "{checked} checked, where the policy allows 10");
    assert_eq!(checked + delayed, 40, "every answer is a check or a delay: {outcomes:?}");

    // The right password right after the burst waits too, even from a clean source…
    let clean = "198.51.100.30";
    let s = assert_oauth(
        token.issue_token(from(clean, password(&web, "carol", "carol-password", ""))).await,
        ErrorCode::TemporarilyUnavailable,
        "the right password right after the burst",
    );
    assert!(wait_of(&s) <= 30, "a delay, never a lock: {}", s.message());
    // …and only for a bounded delay: then Carol is in.
    app.clock.advance_secs(wait_of(&s));
    let again = token.issue_token(from(clean, password(&web, "carol", "carol-password", ""))).await;
    assert!(again.is_ok(), "after the delay: {again:?}");
    // A success forgives the account: the next wrong guess is free again.
    let s = assert_oauth(
        token.issue_token(from("192.0.2.200", password(&web, "carol", "guess", ""))).await,
        ErrorCode::InvalidGrant,
        "a guess after the user signed in",
    );
    assert_eq!(s.code(), tonic::Code::InvalidArgument);
}

pub async fn a_thousand_wrong_user_codes_from_one_source_are_refused_after_the_limit(app: TestApp) {
    let tv = app
        .client(ClientSpec {
            id: "tv",
            grants: &["urn:ietf:params:oauth:grant-type:device_code"],
            public: true,
            ..Default::default()
        })
        .await;
    let started = app
        .token
        .clone()
        .start_device_authorization(pb::DeviceAuthorizationRequest { client_id: tv.0.clone(), ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    let mut token = app.token.clone();
    let guesser = "203.0.113.66";
    let (mut wrong, mut refused) = (0, 0);
    for i in 0..1000 {
        // Well-formed codes from the user-code alphabet, each different.
        const ALPHABET: &[u8] = b"BCDFGHJKLMNPQRSTVWXZ";
        let digits: String = [i / 400, i / 20 % 20, i % 20].iter().map(|d| char::from(ALPHABET[*d])).collect();
        let code = format!("BCDF-W{digits}");
        match token.lookup_user_code(from(guesser, pb::LookupUserCodeRequest { user_code: code })).await {
            Err(s) if oauth_code(&s) == ErrorCode::ExpiredToken => wrong += 1,
            Err(s) if oauth_code(&s) == ErrorCode::SlowDown => {
                refused += 1;
                assert!(s.message().contains("too many attempts"), "a clear message: {}", s.message());
            }
            other => panic!("guess {i}: {other:?}"),
        }
        if i % 50 == 0 {
            app.clock.advance_secs(2);
        }
    }
    assert!(wrong <= 30, "{wrong} wrong codes were looked up from one source");
    assert_eq!(wrong + refused, 1000);
    // Even the right code is refused to the stopped source…
    let right =
        token.lookup_user_code(from(guesser, pb::LookupUserCodeRequest { user_code: started.user_code.clone() })).await;
    assert_oauth(right, ErrorCode::SlowDown, "the stopped source");
    // …while another source still works.
    let other =
        token.lookup_user_code(from("198.51.100.40", pb::LookupUserCodeRequest { user_code: started.user_code })).await;
    assert_eq!(other.unwrap().into_inner().client_id, tv.0);
}

/// RFC 8628 §5.1: every live user code is one more a guess can hit, so one client may start
/// only so many device authorizations a minute; another client is unaffected.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_client_starts_a_bounded_number_of_device_authorizations_a_minute() {
    for backend in [Pair::SqliteMemory, Pair::PostgresRedis] {
        let Some(app) = TestApp::spawn_with(backend, |s| s.tokens.device_starts_per_minute = 3).await else {
            continue;
        };
        let grants: &[&str] = &["urn:ietf:params:oauth:grant-type:device_code"];
        let tv = app.client(ClientSpec { id: "tv", grants, public: true, ..Default::default() }).await;
        let radio = app.client(ClientSpec { id: "radio", grants, public: true, ..Default::default() }).await;
        let start = |client: &(String, String)| {
            let mut token = app.token.clone();
            let request = pb::DeviceAuthorizationRequest { client_id: client.0.clone(), ..Default::default() };
            async move { token.start_device_authorization(request).await }
        };
        for n in 1..=3 {
            assert!(start(&tv).await.is_ok(), "{backend:?}: start {n} of 3");
        }
        let s = assert_oauth(start(&tv).await, ErrorCode::TemporarilyUnavailable, "a fourth start in the minute");
        assert!(wait_of(&s) <= 60, "{backend:?}: {}", s.message());
        assert!(start(&radio).await.is_ok(), "{backend:?}: another client is unaffected");
        app.clock.advance_secs(60);
        assert!(start(&tv).await.is_ok(), "{backend:?}: the next minute");
    }
}
