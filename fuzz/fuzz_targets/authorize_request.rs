//! The authorization endpoint: a query string through the facade's parameter parsing into
//! the core's `Tessera::authorize`, on the real adapters (SQLite in memory, the in-memory
//! ephemeral store) holding four clients, an enabled and a disabled user, and their logins.
//!
//! Input: an optional first line of flags, then the query string. Flags: `L` a fresh login
//! of the enabled user, `O` a login of hers two hours old, `X` a login of the disabled user
//! (the first of these wins; none: no session); `A` the user approves, `D` she denies.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::sync::{Arc, OnceLock};
use tessera_core::authorize::{AuthorizeOutcome, AuthorizeRequest, Consent};
use tessera_core::clock::{Clock, ManualClock};
use tessera_core::model::{Client, GrantType, SessionHandle};
use tessera_core::ports::{ClientStore as _, ConsentStore as _, LoginSession, SessionStore as _, UserStore as _};
use tessera_core::{CoreConfig, ErrorCode, Tessera};
use tessera_ephemeral::MemoryEphemeral;
use tessera_fuzz::{block_on, client, user};
use tessera_http_facade::pages::authorize::AuthorizeParams;
use tessera_http_facade::params::Params;
use tessera_store::SqlStore;

const ISSUER: &str = "https://issuer.example";

struct Fixture {
    tessera: Arc<Tessera>,
    durable: SqlStore,
    clients: Vec<Client>,
    ephemeral: Arc<MemoryEphemeral>,
    /// The ephemeral store's clock, moved a day per input so it reclaims what earlier inputs
    /// stored (the core's own clock stands still).
    reclaim_clock: Arc<ManualClock>,
    now: i64,
}

fn clients() -> Vec<Client> {
    use GrantType::*;
    let app = client("app", false, &[AuthorizationCode, RefreshToken], &["https://app.example/cb"]);
    let mut spa =
        client("spa", false, &[AuthorizationCode], &["https://spa.example/cb", "http://localhost:3000/cb?x=1"]);
    spa.allow_implicit = true;
    spa.allow_plain_pkce = true;
    spa.skip_consent = true;
    let mut web = client("web", true, &[AuthorizationCode, ClientCredentials], &["https://web.example/oauth/callback"]);
    web.skip_consent = true;
    let m2m = client("m2m", true, &[ClientCredentials], &["https://m2m.example/cb"]);
    vec![app, spa, web, m2m]
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let durable = block_on(async {
            let store = SqlStore::connect("sqlite::memory:").await.expect("SQLite in memory");
            store.migrate().await.expect("migrations");
            for c in clients() {
                store.create_client(&c).await.expect("create_client");
            }
            for u in [user("u-alice", "alice", false), user("u-bob", "bob", true)] {
                store.create_user(&u).await.expect("create_user");
            }
            store
        });
        let reclaim_clock = Arc::new(ManualClock::default());
        let ephemeral = Arc::new(MemoryEphemeral::with_clock(reclaim_clock.clone()));
        let clock = Arc::new(ManualClock::default());
        let now = clock.now();
        let started =
            block_on(Tessera::start(CoreConfig::new(ISSUER), Arc::new(durable.clone()), ephemeral.clone(), clock))
                .expect("the core starts on the in-memory stores");
        Fixture { tessera: started.tessera, durable, clients: clients(), ephemeral, reclaim_clock, now }
    })
}

fn query_pairs(s: &str) -> Vec<(String, String)> {
    url::form_urlencoded::parse(s.as_bytes()).map(|(k, v)| (k.into_owned(), v.into_owned())).collect()
}

fuzz_target!(|input: &[u8]| {
    let f = fixture();
    let (flags, query) = match input.iter().position(|&b| b == b'\n') {
        Some(i) => (&input[..i], &input[i + 1..]),
        None => (&b""[..], input),
    };

    // The facade: parameters, then max_age as the RPC carries it (negative: absent).
    let Ok(params) = Params::from_urlencoded(query) else { return };
    let p: AuthorizeParams = params.parse().expect("string fields take any value");
    let max_age = if p.max_age.is_empty() {
        None
    } else {
        match p.max_age.parse::<i64>() {
            Ok(n) => (n >= 0).then_some(n),
            Err(_) => return,
        }
    };
    let req = AuthorizeRequest {
        response_type: p.response_type,
        client_id: p.client_id,
        redirect_uri: p.redirect_uri,
        scope: p.scope,
        state: p.state,
        nonce: p.nonce,
        code_challenge: p.code_challenge,
        code_challenge_method: p.code_challenge_method,
        prompt: p.prompt,
        max_age,
    };

    // The login sessions, stored afresh for every input. Consents persist from input to
    // input (the store has no way to forget them), so they are read first.
    let granted = block_on(f.durable.granted_scopes("u-alice", &req.client_id)).expect("granted_scopes");
    f.reclaim_clock.advance_secs(24 * 3600);
    let login = |user: &str, age: i64| LoginSession {
        user_id: format!("u-{user}"),
        username: user.to_owned(),
        auth_time: f.now - age,
        expires_at: f.now + 3600,
    };
    let sessions = [
        (b'L', "fuzz-fresh", login("alice", 5)),
        (b'O', "fuzz-old", login("alice", 7200)),
        (b'X', "fuzz-disabled", login("bob", 5)),
    ];
    for (_, handle, record) in &sessions {
        block_on(f.ephemeral.put_session(SessionHandle::new(*handle).digest(), record)).expect("put_session");
    }
    let session = sessions.iter().find(|(flag, _, _)| flags.contains(flag));
    let handle = SessionHandle::new(session.map_or("", |(_, h, _)| *h));
    let consent = if flags.contains(&b'A') {
        Consent::Approve
    } else if flags.contains(&b'D') {
        Consent::Deny
    } else {
        Consent::NotAsked
    };

    let outcome = block_on(f.tessera.authorize(&req, &handle, consent));

    // Err (an error page, no redirect) exactly when the client or its redirect URI cannot be
    // trusted (RFC 6749 §4.1.2.1).
    let client = f.clients.iter().find(|c| c.id == req.client_id);
    let redirect_uri = client.and_then(|c| match (req.redirect_uri.as_str(), c.redirect_uris.as_slice()) {
        ("", [only]) => Some(only.as_str()),
        ("", _) => None,
        (given, registered) => registered.iter().any(|r| r == given).then_some(given),
    });
    let session_flag = session.map(|(flag, _, _)| *flag);
    let (client, redirect_uri, to) = match (client, redirect_uri, outcome) {
        (Some(c), Some(r), Ok(outcome)) => match outcome {
            AuthorizeOutcome::Redirect { to, .. } => (c, r, to),
            AuthorizeOutcome::LoginRequired { client_name } => {
                assert_eq!(client_name, c.name);
                let stale = max_age.is_some() || (session_flag == Some(b'O') && req.prompt.contains("login"));
                assert!(session_flag.is_none() || stale, "a live login was asked to log in again");
                return;
            }
            AuthorizeOutcome::ConsentRequired { client_id, scopes, username, .. } => {
                assert_eq!(client_id, c.id);
                assert!(!c.skip_consent && consent == Consent::NotAsked, "consent asked needlessly");
                assert_eq!(username, "alice", "only an enabled user's login gets this far");
                assert!(!scopes.is_empty());
                assert!(scopes.iter().all(|(s, _)| c.scopes.contains(s)), "a scope beyond the client's: {scopes:?}");
                return;
            }
        },
        (Some(_), Some(_), Err(e)) => panic!("a trusted client and redirect URI got an error page: {e:?}"),
        (_, _, Err(e)) => {
            assert_eq!(e.code, ErrorCode::InvalidRequest);
            assert!(e.description.len() <= 256, "{:?}", e.description);
            return;
        }
        (_, _, Ok(o)) => panic!("an untrusted client or redirect URI was answered: {o:?}"),
    };

    // A redirect goes to the registered URI, in the query (or the fragment for the implicit
    // grant), with the state and the issuer (RFC 9207), and carries exactly one of a code,
    // a token or an error.
    let rest = to.strip_prefix(redirect_uri).unwrap_or_else(|| panic!("{to:?} is not under {redirect_uri:?}"));
    let implicit = req.response_type == "token";
    let expected_sep = if implicit {
        '#'
    } else if redirect_uri.contains('?') {
        '&'
    } else {
        '?'
    };
    assert!(rest.starts_with(expected_sep), "{to:?}");
    let answer = query_pairs(&rest[1..]);
    let get = |name: &str| -> Vec<&str> { answer.iter().filter(|(k, _)| k == name).map(|(_, v)| v.as_str()).collect() };
    assert_eq!(get("iss"), [ISSUER], "{to:?}");
    if req.state.is_empty() {
        assert!(get("state").is_empty(), "{to:?}");
    } else {
        assert_eq!(get("state"), [req.state.as_str()], "{to:?}");
    }
    let (code, token, error) = (get("code"), get("access_token"), get("error"));
    match (code.as_slice(), token.as_slice(), error.as_slice()) {
        ([_], [], []) => {
            assert_eq!(req.response_type, "code");
            assert!(client.allows_grant(GrantType::AuthorizationCode));
        }
        ([], [_], []) => {
            assert!(implicit && client.allow_implicit, "{to:?}");
            assert!(get("refresh_token").is_empty(), "the implicit grant issues no refresh token");
        }
        ([], [], [_]) => {
            for d in get("error_description") {
                assert!(d.len() <= 256, "{d:?}");
            }
            return;
        }
        _ => panic!("not exactly one of code, access_token, error: {to:?}"),
    }
    // Something was issued: only to an enabled user's live login, with consent.
    assert!(matches!(session_flag, Some(b'L' | b'O')), "issued without a login: {to:?}");
    // A first-party client (skip_consent) never shows the consent page, so a denial can only be
    // a forged form post by the user herself, and it is ignored.
    assert!(consent != Consent::Deny || client.skip_consent, "issued after a denial: {to:?}");
    let consented = consent == Consent::Approve || (!granted.is_empty() && !req.prompt.contains("consent"));
    assert!(client.skip_consent || consented, "issued without consent: {to:?}");
});
