//! The flows, each written once and run against both backend pairs by the macro below.

use crate::harness::*;
use futures::future::join_all;
use tessera_core::ErrorCode;
use tessera_proto::admin::v1 as adminpb;
use tessera_proto::token::v1 as pb;
use tessera_proto::token::v1::authorize_response::Outcome;

tessera_testkit::both_pairs!(
    crate::harness::with_app;
    client_credentials_issues_a_signed_jwt_that_introspects_as_active,
    client_authentication_failures_are_invalid_client_and_public_clients_are_refused,
    a_scope_beyond_what_the_client_may_ask_is_invalid_scope,
    the_password_grant_issues_access_refresh_and_id_tokens,
    one_source_is_stopped_before_it_touches_an_account_and_the_user_still_signs_in,
    distributed_guessing_only_delays_an_account_and_no_burst_gets_more_checks,
    a_thousand_wrong_user_codes_from_one_source_are_refused_after_the_limit,
    grants_the_client_is_not_allowed_are_unauthorized_client,
    a_refresh_rotates_and_reusing_the_old_token_revokes_the_family,
    a_refresh_may_narrow_the_scope_but_never_widen_it,
    the_authorization_code_flow_with_pkce_issues_tokens_once,
    exchanging_a_code_twice_revokes_the_first_tokens,
    a_code_exchange_that_fails_validation_leaves_the_code_usable,
    public_clients_need_pkce_and_plain_only_where_allowed,
    an_expired_code_is_invalid_grant,
    an_unregistered_redirect_uri_is_an_error_and_later_errors_redirect_with_state,
    login_and_consent_are_asked_for_and_remembered,
    the_implicit_grant_works_only_where_enabled,
    the_device_flow_runs_from_start_to_token,
    a_denied_or_expired_device_code_gives_the_rfc_errors,
    introspection_needs_a_client_and_says_nothing_about_bad_tokens,
    revocation_follows_rfc_7009_and_refuses_other_clients_tokens,
    the_same_code_exchanged_concurrently_yields_exactly_one_token,
    the_same_refresh_token_presented_concurrently_yields_at_most_one,
    signing_keys_persist_so_tokens_survive_a_restart,
    userinfo_answers_for_openid_tokens_only,
    the_admin_service_needs_its_credential_and_manages_clients_and_users,
    bad_input_gets_a_clear_oauth_error,
    health_and_reflection_are_served,
    rotating_the_signing_key_keeps_old_tokens_valid_and_signs_with_the_new_key,
    a_rotation_on_one_node_is_honoured_by_another_at_once,
    disabling_a_user_revokes_their_tokens_on_every_node,
    setting_a_password_revokes_the_old_tokens_and_the_new_password_signs_in_at_once,
    rotating_a_client_secret_revokes_its_tokens_and_every_node_takes_the_new_secret,
    deleting_a_client_revokes_its_tokens_everywhere_and_its_id_is_never_reused,
    a_new_password_ends_sign_ins_and_codes_from_before_it,
    a_refresh_retried_within_the_window_gets_the_same_successor_until_the_successor_is_used,
    a_refresh_retried_after_the_window_is_reuse,
    concurrent_refreshes_of_one_token_within_the_window_never_make_two_live_chains,
);

pub use crate::revocation::*;
pub use crate::throttles::*;

const CB: &str = "https://app.example/cb";

pub(crate) async fn service_client(app: &TestApp) -> (String, String) {
    app.client(ClientSpec {
        id: "svc",
        grants: &["client_credentials"],
        scopes: "api read write",
        ..Default::default()
    })
    .await
}

pub(crate) async fn web_client(app: &TestApp) -> (String, String) {
    app.client(ClientSpec {
        id: "web",
        grants: &["authorization_code", "refresh_token", "password"],
        redirect_uris: &[CB, "https://app.example/other"],
        ..Default::default()
    })
    .await
}

pub(crate) fn cc(client: &(String, String), scope: &str) -> pb::IssueTokenRequest {
    pb::IssueTokenRequest {
        grant_type: "client_credentials".into(),
        client_id: client.0.clone(),
        client_secret: client.1.clone(),
        scope: scope.into(),
        ..Default::default()
    }
}

pub(crate) fn password(client: &(String, String), user: &str, pass: &str, scope: &str) -> pb::IssueTokenRequest {
    pb::IssueTokenRequest {
        grant_type: "password".into(),
        client_id: client.0.clone(),
        client_secret: client.1.clone(),
        username: user.into(),
        password: pass.into(),
        scope: scope.into(),
        ..Default::default()
    }
}

pub(crate) fn refresh(client: &(String, String), token: &str, scope: &str) -> pb::IssueTokenRequest {
    pb::IssueTokenRequest {
        grant_type: "refresh_token".into(),
        client_id: client.0.clone(),
        client_secret: client.1.clone(),
        refresh_token: token.into(),
        scope: scope.into(),
        ..Default::default()
    }
}

pub(crate) async fn login(app: &TestApp, user: &str, pass: &str) -> String {
    app.token
        .clone()
        .authenticate(pb::AuthenticateRequest { username: user.into(), password: pass.into() })
        .await
        .unwrap()
        .into_inner()
        .session
}

pub(crate) fn authz(client_id: &str, challenge: &str, session: &str) -> pb::AuthorizeRequest {
    pb::AuthorizeRequest {
        response_type: "code".into(),
        client_id: client_id.into(),
        redirect_uri: CB.into(),
        scope: "openid profile".into(),
        state: "st-123".into(),
        nonce: "n-456".into(),
        code_challenge: challenge.into(),
        code_challenge_method: if challenge.is_empty() { String::new() } else { "S256".into() },
        session: session.into(),
        max_age: -1,
        ..Default::default()
    }
}

pub(crate) async fn authorize(app: &TestApp, req: pb::AuthorizeRequest) -> Outcome {
    app.token.clone().authorize(req).await.unwrap().into_inner().outcome.unwrap()
}

fn redirect(o: Outcome) -> String {
    match o {
        Outcome::RedirectTo(to) => to,
        other => panic!("expected a redirect, got {other:?}"),
    }
}

/// Signs in `alice`, consents, and returns a fresh code for `client_id` with PKCE.
pub(crate) async fn code_for(app: &TestApp, client_id: &str, challenge: &str) -> String {
    let session = login(app, "alice", "alice-password").await;
    let mut req = authz(client_id, challenge, &session);
    req.consent = pb::ConsentDecision::Approve as i32;
    let to = redirect(authorize(app, req).await);
    let params = redirect_params(&to);
    assert!(to.starts_with(CB), "{to}");
    assert_eq!(params["state"], "st-123");
    params.get("code").unwrap_or_else(|| panic!("no code in {to}")).clone()
}

pub(crate) fn exchange(client: &(String, String), code: &str, verifier: &str) -> pb::ExchangeCodeRequest {
    pb::ExchangeCodeRequest {
        client_id: client.0.clone(),
        client_secret: client.1.clone(),
        code: code.into(),
        redirect_uri: CB.into(),
        code_verifier: verifier.into(),
    }
}

pub async fn client_credentials_issues_a_signed_jwt_that_introspects_as_active(app: TestApp) {
    let svc = service_client(&app).await;
    let t = app.issue(cc(&svc, "read")).await.unwrap();
    assert_eq!(t.token_type, "Bearer");
    assert_eq!(t.expires_in, 3600);
    assert_eq!(t.scope, "read");
    assert!(t.refresh_token.is_empty(), "client_credentials must not issue a refresh token");
    assert!(t.id_token.is_empty());

    let (header, claims) = jwt_parts(&t.access_token);
    assert_eq!(header["typ"], "at+jwt");
    assert_eq!(header["alg"], "ES256");
    let jwks: serde_json::Value =
        serde_json::from_str(&app.token.clone().get_jwks(pb::GetJwksRequest {}).await.unwrap().into_inner().jwks_json)
            .unwrap();
    let kids: Vec<&str> = jwks["keys"].as_array().unwrap().iter().map(|k| k["kid"].as_str().unwrap()).collect();
    assert!(kids.contains(&header["kid"].as_str().unwrap()), "kid {} not in JWKS {kids:?}", header["kid"]);
    assert!(jwks["keys"][0].get("d").is_none(), "the JWKS must not publish private keys");
    assert_eq!(claims["client_id"], "svc");
    assert_eq!(claims["sub"], "svc");
    assert_eq!(claims["iss"], "https://tessera.test");

    let i = app.introspect(&t.access_token, (&svc.0, &svc.1)).await;
    assert!(i.active);
    assert_eq!(i.client_id, "svc");
    assert_eq!(i.scope, "read");
    assert_eq!(i.token_type, "Bearer");
    assert_eq!(i.iss, "https://tessera.test");
    assert_eq!(i.sub, "svc");
    assert!(!i.jti.is_empty());
    assert_eq!(i.exp - i.iat, 3600);

    // An empty scope means the client's allowed scopes (RFC 6749 §3.3).
    let all = app.issue(cc(&svc, "")).await.unwrap();
    assert_eq!(all.scope, "api read write");
}

pub async fn client_authentication_failures_are_invalid_client_and_public_clients_are_refused(app: TestApp) {
    let svc = service_client(&app).await;
    let cases: Vec<(&str, pb::IssueTokenRequest, ErrorCode)> = vec![
        ("wrong secret", cc(&(svc.0.clone(), format!("{}x", svc.1)), ""), ErrorCode::InvalidClient),
        ("no secret for a confidential client", cc(&(svc.0.clone(), String::new()), ""), ErrorCode::InvalidClient),
        ("unknown client", cc(&("nobody".into(), svc.1.clone()), ""), ErrorCode::InvalidClient),
        ("empty client id", cc(&(String::new(), svc.1.clone()), ""), ErrorCode::InvalidClient),
        ("oversized client id", cc(&("c".repeat(5000), svc.1.clone()), ""), ErrorCode::InvalidClient),
    ];
    for (what, req, code) in cases {
        let s = assert_oauth(app.issue(req).await, code, what);
        assert_eq!(s.code(), tonic::Code::Unauthenticated, "{what}");
    }
    let public = app
        .client(ClientSpec {
            id: "spa",
            public: true,
            grants: &["authorization_code", "password"],
            redirect_uris: &[CB],
            ..Default::default()
        })
        .await;
    assert!(public.1.is_empty(), "a public client gets no secret");
    assert_oauth(app.issue(cc(&public, "")).await, ErrorCode::UnauthorizedClient, "public client_credentials");
    assert_oauth(
        app.issue(cc(&(public.0.clone(), "made-up".into()), "")).await,
        ErrorCode::InvalidClient,
        "a public client presenting a secret",
    );
}

pub async fn a_scope_beyond_what_the_client_may_ask_is_invalid_scope(app: TestApp) {
    let svc = service_client(&app).await;
    assert_oauth(app.issue(cc(&svc, "read admin")).await, ErrorCode::InvalidScope, "scope not allowed");
    assert_oauth(app.issue(cc(&svc, "re\"ad")).await, ErrorCode::InvalidScope, "malformed scope");
}

pub async fn the_password_grant_issues_access_refresh_and_id_tokens(app: TestApp) {
    let web = web_client(&app).await;
    let uid = app.user("Alice", "alice-password").await;
    // Usernames are case-insensitive.
    let t = app.issue(password(&web, "ALICE", "alice-password", "openid profile email")).await.unwrap();
    assert!(!t.refresh_token.is_empty());
    assert!(!t.id_token.is_empty());
    let (h, id) = jwt_parts(&t.id_token);
    assert_eq!(h["typ"], "JWT");
    assert_eq!(id["sub"], uid.as_str());
    assert_eq!(id["aud"], "web");
    assert_eq!(id["preferred_username"], "alice");
    assert_eq!(id["email"], "Alice@example.com");
    assert_eq!(id["at_hash"], tessera_crypto::half_hash(&t.access_token).as_str());
    let i = app.introspect(&t.access_token, (&web.0, &web.1)).await;
    assert!(i.active);
    assert_eq!(i.username, "alice");
    assert_eq!(i.sub, uid);
    // Refresh tokens introspect for the client they belong to.
    let r = app.introspect(&t.refresh_token, (&web.0, &web.1)).await;
    assert!(r.active);
    assert_eq!(r.token_type, "refresh_token");
    // Without openid there is no id_token.
    let t = app.issue(password(&web, "alice", "alice-password", "profile")).await.unwrap();
    assert!(t.id_token.is_empty());
    // A disabled user gets nothing.
    app.admin()
        .await
        .set_user_disabled(adminpb::SetUserDisabledRequest { username: "alice".into(), disabled: true })
        .await
        .unwrap();
    assert_oauth(
        app.issue(password(&web, "alice", "alice-password", "")).await,
        ErrorCode::InvalidGrant,
        "disabled user",
    );
    assert_oauth(
        app.issue(refresh(&web, &t.refresh_token, "")).await,
        ErrorCode::InvalidGrant,
        "disabled user's refresh",
    );
}

pub async fn grants_the_client_is_not_allowed_are_unauthorized_client(app: TestApp) {
    let svc = service_client(&app).await;
    app.user("alice", "alice-password").await;
    assert_oauth(
        app.issue(password(&svc, "alice", "alice-password", "")).await,
        ErrorCode::UnauthorizedClient,
        "password",
    );
    assert_oauth(app.issue(refresh(&svc, "whatever", "")).await, ErrorCode::UnauthorizedClient, "refresh");
    let r = app
        .token
        .clone()
        .start_device_authorization(pb::DeviceAuthorizationRequest {
            client_id: svc.0.clone(),
            client_secret: svc.1.clone(),
            scope: String::new(),
        })
        .await;
    assert_oauth(r, ErrorCode::UnauthorizedClient, "device");
}

pub async fn a_refresh_rotates_and_reusing_the_old_token_revokes_the_family(app: TestApp) {
    let web = web_client(&app).await;
    app.user("alice", "alice-password").await;
    let first = app.issue(password(&web, "alice", "alice-password", "openid profile")).await.unwrap();
    let second = app.issue(refresh(&web, &first.refresh_token, "")).await.unwrap();
    assert_ne!(second.refresh_token, first.refresh_token, "a refresh must rotate the refresh token");
    assert_eq!(second.scope, "openid profile");
    assert!(!second.id_token.is_empty());
    assert!(app.introspect(&second.access_token, (&web.0, &web.1)).await.active);
    assert!(
        !app.introspect(&first.refresh_token, (&web.0, &web.1)).await.active,
        "a rotated token is no longer active"
    );

    // Reuse of the rotated token: refused, and the whole family is revoked.
    assert_oauth(app.issue(refresh(&web, &first.refresh_token, "")).await, ErrorCode::InvalidGrant, "reuse");
    assert_oauth(app.issue(refresh(&web, &second.refresh_token, "")).await, ErrorCode::InvalidGrant, "family revoked");
    assert!(
        !app.introspect(&second.access_token, (&web.0, &web.1)).await.active,
        "the family's access tokens are revoked"
    );
    assert!(!app.introspect(&first.access_token, (&web.0, &web.1)).await.active);

    // A refresh token belongs to its client.
    let other =
        app.client(ClientSpec { id: "other", grants: &["password", "refresh_token"], ..Default::default() }).await;
    let t = app.issue(password(&web, "alice", "alice-password", "")).await.unwrap();
    assert_oauth(
        app.issue(refresh(&other, &t.refresh_token, "")).await,
        ErrorCode::InvalidGrant,
        "another client's token",
    );
    assert!(app.issue(refresh(&web, &t.refresh_token, "")).await.is_ok(), "the failed attempt changed nothing");
}

pub async fn a_refresh_may_narrow_the_scope_but_never_widen_it(app: TestApp) {
    let web = web_client(&app).await;
    app.user("alice", "alice-password").await;
    let t = app.issue(password(&web, "alice", "alice-password", "read write")).await.unwrap();
    assert_oauth(app.issue(refresh(&web, &t.refresh_token, "read write api")).await, ErrorCode::InvalidScope, "widen");
    let narrow = app.issue(refresh(&web, &t.refresh_token, "read")).await.unwrap();
    assert_eq!(narrow.scope, "read");
    // RFC 6749 §6: the new refresh token keeps the original scope.
    let again = app.issue(refresh(&web, &narrow.refresh_token, "")).await.unwrap();
    assert_eq!(again.scope, "read write");
}

pub async fn the_authorization_code_flow_with_pkce_issues_tokens_once(app: TestApp) {
    let web = web_client(&app).await;
    let uid = app.user("alice", "alice-password").await;
    let (verifier, challenge) = pkce_pair();
    let code = code_for(&app, "web", &challenge).await;
    let t = app.token.clone().exchange_code(exchange(&web, &code, &verifier)).await.unwrap().into_inner();
    assert!(!t.refresh_token.is_empty());
    let (_, id) = jwt_parts(&t.id_token);
    assert_eq!(id["nonce"], "n-456");
    assert_eq!(id["sub"], uid.as_str());
    assert!(id["auth_time"].as_i64().unwrap() > 0);
    let (_, at) = jwt_parts(&t.access_token);
    assert_eq!(at["scope"], "openid profile");
    assert_eq!(at["client_id"], "web");
    let again = app.token.clone().exchange_code(exchange(&web, &code, &verifier)).await;
    assert_oauth(again, ErrorCode::InvalidGrant, "second use");
}

pub async fn exchanging_a_code_twice_revokes_the_first_tokens(app: TestApp) {
    let web = web_client(&app).await;
    app.user("alice", "alice-password").await;
    let (verifier, challenge) = pkce_pair();
    let code = code_for(&app, "web", &challenge).await;
    let first = app.token.clone().exchange_code(exchange(&web, &code, &verifier)).await.unwrap().into_inner();
    assert!(app.introspect(&first.access_token, (&web.0, &web.1)).await.active);
    let replay = app.token.clone().exchange_code(exchange(&web, &code, &verifier)).await;
    assert_oauth(replay, ErrorCode::InvalidGrant, "replay");
    // RFC 6749 §4.1.2: what the first use issued is revoked.
    assert!(!app.introspect(&first.access_token, (&web.0, &web.1)).await.active, "first access token still active");
    assert_oauth(
        app.issue(refresh(&web, &first.refresh_token, "")).await,
        ErrorCode::InvalidGrant,
        "first refresh token",
    );
}

pub async fn a_code_exchange_that_fails_validation_leaves_the_code_usable(app: TestApp) {
    let web = web_client(&app).await;
    let other = app
        .client(ClientSpec { id: "other", grants: &["authorization_code"], redirect_uris: &[CB], ..Default::default() })
        .await;
    app.user("alice", "alice-password").await;
    let (verifier, challenge) = pkce_pair();
    let code = code_for(&app, "web", &challenge).await;
    let (wrong_verifier, _) = pkce_pair();
    let mut cases: Vec<(&str, pb::ExchangeCodeRequest, ErrorCode)> = vec![
        ("a code issued to another client", exchange(&other, &code, &verifier), ErrorCode::InvalidGrant),
        ("a verifier that does not match", exchange(&web, &code, &wrong_verifier), ErrorCode::InvalidGrant),
        ("a missing verifier", exchange(&web, &code, ""), ErrorCode::InvalidRequest),
        ("a malformed verifier", exchange(&web, &code, "short"), ErrorCode::InvalidRequest),
        (
            "a wrong client secret",
            exchange(&(web.0.clone(), "nope".into()), &code, &verifier),
            ErrorCode::InvalidClient,
        ),
        ("an empty code", exchange(&web, "", &verifier), ErrorCode::InvalidRequest),
        ("an unknown code", exchange(&web, "not-a-code", &verifier), ErrorCode::InvalidGrant),
    ];
    let mut one_char_off = exchange(&web, &code, &verifier);
    one_char_off.redirect_uri = "https://app.example/cc".into();
    cases.push(("a redirect URI one character off", one_char_off, ErrorCode::InvalidGrant));
    let mut other_registered = exchange(&web, &code, &verifier);
    other_registered.redirect_uri = "https://app.example/other".into();
    cases.push(("another registered redirect URI", other_registered, ErrorCode::InvalidGrant));
    for (what, req, code) in cases {
        assert_oauth(app.token.clone().exchange_code(req).await, code, what);
    }
    let t = app.token.clone().exchange_code(exchange(&web, &code, &verifier)).await;
    assert!(t.is_ok(), "the code must still work after rejected attempts: {t:?}");
}

pub async fn public_clients_need_pkce_and_plain_only_where_allowed(app: TestApp) {
    let spa = app
        .client(ClientSpec {
            id: "spa",
            public: true,
            grants: &["authorization_code", "refresh_token"],
            redirect_uris: &[CB],
            skip_consent: true,
            ..Default::default()
        })
        .await;
    let plain_ok = app
        .client(ClientSpec {
            id: "legacy",
            public: true,
            grants: &["authorization_code"],
            redirect_uris: &[CB],
            skip_consent: true,
            allow_plain_pkce: true,
            ..Default::default()
        })
        .await;
    app.user("alice", "alice-password").await;
    let session = login(&app, "alice", "alice-password").await;

    let no_pkce = redirect(authorize(&app, authz("spa", "", &session)).await);
    let p = redirect_params(&no_pkce);
    assert_eq!(p["error"], "invalid_request", "{no_pkce}");
    assert_eq!(p["state"], "st-123");

    let (verifier, _) = pkce_pair();
    let mut plain = authz("spa", &verifier, &session);
    plain.code_challenge_method = "plain".into();
    assert_eq!(redirect_params(&redirect(authorize(&app, plain.clone()).await))["error"], "invalid_request");
    let mut absent_method = plain.clone();
    absent_method.code_challenge_method = String::new();
    assert_eq!(
        redirect_params(&redirect(authorize(&app, absent_method).await))["error"],
        "invalid_request",
        "an absent method means plain (RFC 7636 §4.3), which this client may not use"
    );

    plain.client_id = "legacy".into();
    let code = redirect_params(&redirect(authorize(&app, plain).await))["code"].clone();
    let t = app.token.clone().exchange_code(exchange(&plain_ok, &code, &verifier)).await;
    assert!(t.is_ok(), "plain PKCE where allowed: {t:?}");

    let (verifier, challenge) = pkce_pair();
    let code = redirect_params(&redirect(authorize(&app, authz("spa", &challenge, &session)).await))["code"].clone();
    let t = app.token.clone().exchange_code(exchange(&spa, &code, &verifier)).await.unwrap().into_inner();
    assert!(!t.refresh_token.is_empty());
    // The public client refreshes with its id alone.
    assert!(app.issue(refresh(&spa, &t.refresh_token, "")).await.is_ok());
}

pub async fn an_expired_code_is_invalid_grant(app: TestApp) {
    let web = web_client(&app).await;
    app.user("alice", "alice-password").await;
    let (verifier, challenge) = pkce_pair();
    let code = code_for(&app, "web", &challenge).await;
    app.clock.advance_secs(61);
    assert_oauth(
        app.token.clone().exchange_code(exchange(&web, &code, &verifier)).await,
        ErrorCode::InvalidGrant,
        "expired",
    );
}

pub async fn an_unregistered_redirect_uri_is_an_error_and_later_errors_redirect_with_state(app: TestApp) {
    web_client(&app).await;
    app.user("alice", "alice-password").await;
    let session = login(&app, "alice", "alice-password").await;
    let (_, challenge) = pkce_pair();

    let mut req = authz("web", &challenge, &session);
    req.redirect_uri = "https://app.example/cb/".into();
    let e = app.token.clone().authorize(req).await;
    assert_oauth(e, ErrorCode::InvalidRequest, "unregistered redirect URI must not redirect");
    let mut req = authz("ghost", &challenge, &session);
    req.redirect_uri = CB.into();
    assert_oauth(app.token.clone().authorize(req).await, ErrorCode::InvalidRequest, "unknown client");

    type Tweak = Box<dyn Fn(&mut pb::AuthorizeRequest)>;
    let cases: Vec<(&str, Tweak, &str)> = vec![
        ("unknown response type", Box::new(|r| r.response_type = "id_token".into()), "unsupported_response_type"),
        ("missing response type", Box::new(|r| r.response_type = String::new()), "invalid_request"),
        ("scope not allowed", Box::new(|r| r.scope = "openid admin".into()), "invalid_scope"),
        ("implicit not enabled", Box::new(|r| r.response_type = "token".into()), "unauthorized_client"),
        ("bad challenge method", Box::new(|r| r.code_challenge_method = "S512".into()), "invalid_request"),
        (
            "prompt=none without a session",
            Box::new(|r| {
                r.prompt = "none".into();
                r.session = String::new();
            }),
            "login_required",
        ),
        ("user denies", Box::new(|r| r.consent = pb::ConsentDecision::Deny as i32), "access_denied"),
    ];
    for (what, tweak, code) in cases {
        let mut req = authz("web", &challenge, &session);
        tweak(&mut req);
        let to = redirect(authorize(&app, req).await);
        let p = redirect_params(&to);
        assert!(to.starts_with(CB), "{what}: {to}");
        assert_eq!(p.get("error").map(String::as_str), Some(code), "{what}: {to}");
        assert_eq!(p["state"], "st-123", "{what}");
        assert_eq!(p["iss"], "https://tessera.test", "{what}: RFC 9207 iss");
        assert!(!p.contains_key("code"), "{what}");
    }
}

pub async fn login_and_consent_are_asked_for_and_remembered(app: TestApp) {
    web_client(&app).await;
    app.user("alice", "alice-password").await;
    let (_, challenge) = pkce_pair();
    match authorize(&app, authz("web", &challenge, "")).await {
        Outcome::LoginRequired(l) => assert_eq!(l.client_name, "web app"),
        other => panic!("expected login, got {other:?}"),
    }
    match authorize(&app, authz("web", &challenge, "forged-session")).await {
        Outcome::LoginRequired(_) => {}
        other => panic!("a forged session must not count: {other:?}"),
    }
    let bad = app
        .token
        .clone()
        .authenticate(pb::AuthenticateRequest { username: "alice".into(), password: "nope-nope".into() })
        .await;
    assert_oauth(bad, ErrorCode::InvalidGrant, "wrong password at login");
    let session = login(&app, "alice", "alice-password").await;
    match authorize(&app, authz("web", &challenge, &session)).await {
        Outcome::ConsentRequired(c) => {
            assert_eq!(c.client_id, "web");
            assert_eq!(c.username, "alice");
            let names: Vec<&str> = c.scopes.iter().map(|s| s.name.as_str()).collect();
            assert_eq!(names, ["openid", "profile"]);
            assert!(c.scopes.iter().all(|s| !s.description.is_empty()));
        }
        other => panic!("expected consent, got {other:?}"),
    }
    let mut approve = authz("web", &challenge, &session);
    approve.consent = pb::ConsentDecision::Approve as i32;
    assert!(redirect_params(&redirect(authorize(&app, approve).await)).contains_key("code"));
    // Consent is remembered for the same scopes...
    assert!(redirect_params(&redirect(authorize(&app, authz("web", &challenge, &session)).await)).contains_key("code"));
    // ...but asked again for more, or when prompt=consent says so.
    let mut more = authz("web", &challenge, &session);
    more.scope = "openid profile email".into();
    assert!(matches!(authorize(&app, more).await, Outcome::ConsentRequired(_)));
    let mut prompt = authz("web", &challenge, &session);
    prompt.prompt = "consent".into();
    assert!(matches!(authorize(&app, prompt).await, Outcome::ConsentRequired(_)));
    // max_age: a login older than it asks for a new one.
    app.clock.advance_secs(120);
    let mut aged = authz("web", &challenge, &session);
    aged.max_age = 60;
    assert!(matches!(authorize(&app, aged).await, Outcome::LoginRequired(_)));
    // Ending the session signs the user out.
    app.token.clone().end_session(pb::EndSessionRequest { session: session.clone() }).await.unwrap();
    assert!(matches!(authorize(&app, authz("web", &challenge, &session)).await, Outcome::LoginRequired(_)));
    // A first-party client skips consent.
    app.client(ClientSpec {
        id: "first",
        grants: &["authorization_code"],
        redirect_uris: &[CB],
        skip_consent: true,
        ..Default::default()
    })
    .await;
    let session = login(&app, "alice", "alice-password").await;
    assert!(
        redirect_params(&redirect(authorize(&app, authz("first", &challenge, &session)).await)).contains_key("code")
    );
}

pub async fn the_implicit_grant_works_only_where_enabled(app: TestApp) {
    app.client(ClientSpec {
        id: "legacy-spa",
        public: true,
        grants: &["implicit"],
        redirect_uris: &[CB],
        skip_consent: true,
        allow_implicit: true,
        ..Default::default()
    })
    .await;
    let web = web_client(&app).await;
    app.user("alice", "alice-password").await;
    let session = login(&app, "alice", "alice-password").await;
    let mut req = authz("legacy-spa", "", &session);
    req.response_type = "token".into();
    let to = redirect(authorize(&app, req).await);
    assert!(to.starts_with(&format!("{CB}#")), "the token goes in the fragment: {to}");
    let p = redirect_params(&to);
    assert_eq!(p["token_type"], "Bearer");
    assert_eq!(p["state"], "st-123");
    assert!(!p.contains_key("refresh_token"));
    assert!(app.introspect(&p["access_token"], (&web.0, &web.1)).await.active);
}

async fn start_device(app: &TestApp, client: &(String, String), scope: &str) -> pb::DeviceAuthorizationResponse {
    app.token
        .clone()
        .start_device_authorization(pb::DeviceAuthorizationRequest {
            client_id: client.0.clone(),
            client_secret: client.1.clone(),
            scope: scope.into(),
        })
        .await
        .unwrap()
        .into_inner()
}

async fn poll(app: &TestApp, client: &(String, String), device_code: &str) -> Result<pb::TokenResponse, tonic::Status> {
    app.token
        .clone()
        .poll_device(pb::PollDeviceRequest {
            client_id: client.0.clone(),
            client_secret: client.1.clone(),
            device_code: device_code.into(),
        })
        .await
        .map(|r| r.into_inner())
}

async fn tv_client(app: &TestApp) -> (String, String) {
    app.client(ClientSpec { id: "tv", public: true, grants: &["device_code", "refresh_token"], ..Default::default() })
        .await
}

pub async fn the_device_flow_runs_from_start_to_token(app: TestApp) {
    let tv = tv_client(&app).await;
    app.user("alice", "alice-password").await;
    let d = start_device(&app, &tv, "openid profile").await;
    assert_eq!(d.expires_in, 600);
    assert_eq!(d.interval, 5);
    assert_eq!(d.verification_uri, "http://127.0.0.1:8080/device");
    assert_eq!(d.verification_uri_complete, format!("http://127.0.0.1:8080/device?user_code={}", d.user_code));
    let uc = &d.user_code;
    assert_eq!(uc.len(), 9);
    assert_eq!(&uc[4..5], "-");
    assert!(uc.chars().filter(|c| *c != '-').all(|c| "BCDFGHJKLMNPQRSTVWXZ".contains(c)), "{uc}");

    let s = assert_oauth(poll(&app, &tv, &d.device_code).await, ErrorCode::AuthorizationPending, "first poll");
    assert_eq!(s.code(), tonic::Code::FailedPrecondition);
    app.clock.advance_secs(1);
    assert_oauth(poll(&app, &tv, &d.device_code).await, ErrorCode::SlowDown, "polling faster than the interval");

    // The person types the code in lower case without the dash.
    let typed = uc.replace('-', "").to_lowercase();
    let view = app
        .token
        .clone()
        .lookup_user_code(pb::LookupUserCodeRequest { user_code: typed.clone() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(&view.user_code, uc);
    assert_eq!(view.client_id, "tv");
    assert_eq!(view.scopes.len(), 2);
    let no_session = app
        .token
        .clone()
        .approve_device(pb::ApproveDeviceRequest { user_code: typed.clone(), session: String::new() })
        .await;
    assert_oauth(no_session, ErrorCode::LoginRequired, "approval needs a login");
    let session = login(&app, "alice", "alice-password").await;
    app.token
        .clone()
        .approve_device(pb::ApproveDeviceRequest { user_code: typed.clone(), session: session.clone() })
        .await
        .unwrap();
    let twice = app.token.clone().deny_device(pb::DenyDeviceRequest { user_code: typed, session }).await;
    assert_oauth(twice, ErrorCode::InvalidRequest, "deciding twice");

    // After slow_down the interval grew to 10 s.
    app.clock.advance_secs(11);
    let t = poll(&app, &tv, &d.device_code).await.unwrap();
    assert!(!t.access_token.is_empty());
    assert!(!t.refresh_token.is_empty());
    assert!(!t.id_token.is_empty());
    app.clock.advance_secs(11);
    assert_oauth(poll(&app, &tv, &d.device_code).await, ErrorCode::InvalidGrant, "a device code gives tokens once");
    let unknown = app.token.clone().lookup_user_code(pb::LookupUserCodeRequest { user_code: "BCDF-GHJK".into() }).await;
    assert_oauth(unknown, ErrorCode::ExpiredToken, "unknown user code");
}

pub async fn a_denied_or_expired_device_code_gives_the_rfc_errors(app: TestApp) {
    let tv = tv_client(&app).await;
    app.user("alice", "alice-password").await;
    let session = login(&app, "alice", "alice-password").await;
    let d = start_device(&app, &tv, "").await;
    app.token.clone().deny_device(pb::DenyDeviceRequest { user_code: d.user_code.clone(), session }).await.unwrap();
    assert_oauth(poll(&app, &tv, &d.device_code).await, ErrorCode::AccessDenied, "denied");

    let d = start_device(&app, &tv, "").await;
    app.clock.advance_secs(601);
    assert_oauth(poll(&app, &tv, &d.device_code).await, ErrorCode::ExpiredToken, "expired");
    let view = app.token.clone().lookup_user_code(pb::LookupUserCodeRequest { user_code: d.user_code.clone() }).await;
    assert_oauth(view, ErrorCode::ExpiredToken, "an expired user code");
    assert_oauth(poll(&app, &tv, "no-such-device-code").await, ErrorCode::InvalidGrant, "unknown device code");
    let other =
        app.client(ClientSpec { id: "tv2", public: true, grants: &["device_code"], ..Default::default() }).await;
    let d = start_device(&app, &tv, "").await;
    let session = login(&app, "alice", "alice-password").await;
    app.token
        .clone()
        .approve_device(pb::ApproveDeviceRequest { user_code: d.user_code.clone(), session })
        .await
        .unwrap();
    assert_oauth(poll(&app, &other, &d.device_code).await, ErrorCode::InvalidGrant, "another client's device code");
}

pub async fn introspection_needs_a_client_and_says_nothing_about_bad_tokens(app: TestApp) {
    let svc = service_client(&app).await;
    let rs =
        app.client(ClientSpec { id: "resource-server", grants: &["client_credentials"], ..Default::default() }).await;
    let t = app.issue(cc(&svc, "read")).await.unwrap();
    // Any authenticated client (a resource server) may introspect an access token.
    assert!(app.introspect(&t.access_token, (&rs.0, &rs.1)).await.active);
    let r = app
        .token
        .clone()
        .introspect(pb::IntrospectRequest {
            token: t.access_token.clone(),
            client_id: rs.0.clone(),
            client_secret: "bad".into(),
            ..Default::default()
        })
        .await;
    assert_oauth(r, ErrorCode::InvalidClient, "unauthenticated caller");
    let public =
        app.client(ClientSpec { id: "pub", public: true, grants: &["device_code"], ..Default::default() }).await;
    let r = app
        .token
        .clone()
        .introspect(pb::IntrospectRequest { token: t.access_token.clone(), client_id: public.0, ..Default::default() })
        .await;
    assert_oauth(r, ErrorCode::InvalidClient, "public clients cannot introspect");

    let mut parts: Vec<String> = t.access_token.split('.').map(str::to_owned).collect();
    let forged_claims = {
        use base64::Engine as _;
        let (_, mut claims) = jwt_parts(&t.access_token);
        claims["scope"] = "read write api".into();
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(claims.to_string())
    };
    parts[1] = forged_claims;
    let forged = parts.join(".");
    let other_issuer_key = {
        let k = tessera_crypto::keys::SigningKey::from_pkcs8(
            tessera_crypto::keys::Algorithm::Es256,
            &tessera_crypto::keys::generate_pkcs8(tessera_crypto::keys::Algorithm::Es256).unwrap(),
        )
        .unwrap();
        let (_, claims) = jwt_parts(&t.access_token);
        tessera_crypto::jwt::encode(&k, "at+jwt", &claims).unwrap()
    };
    let cases = [
        ("garbage", "garbage".to_owned()),
        ("a forged payload", forged),
        ("a token signed by a foreign key", other_issuer_key),
        ("three empty segments", "..".to_owned()),
        ("an unknown opaque token", tessera_crypto::random_secret(32)),
    ];
    for (what, token) in cases {
        let i = app.introspect(&token, (&rs.0, &rs.1)).await;
        assert_eq!(i, pb::IntrospectResponse::default(), "{what}: inactive and nothing else");
    }
    // An id_token is not an access token.
    let web = web_client(&app).await;
    app.user("alice", "alice-password").await;
    let p = app.issue(password(&web, "alice", "alice-password", "openid")).await.unwrap();
    assert!(!app.introspect(&p.id_token, (&rs.0, &rs.1)).await.active, "an id_token must not introspect as active");
    // Refresh tokens are only visible to their own client.
    assert!(!app.introspect(&p.refresh_token, (&rs.0, &rs.1)).await.active);
    // Expiry is checked against the clock.
    app.clock.advance_secs(3601);
    assert_eq!(app.introspect(&t.access_token, (&rs.0, &rs.1)).await, pb::IntrospectResponse::default(), "expired");
}

pub async fn revocation_follows_rfc_7009_and_refuses_other_clients_tokens(app: TestApp) {
    let svc = service_client(&app).await;
    let web = web_client(&app).await;
    app.user("alice", "alice-password").await;
    let revoke = |client: (String, String), token: String, hint: &str| {
        let mut c = app.token.clone();
        let hint = hint.to_owned();
        async move {
            c.revoke(pb::RevokeRequest { token, token_type_hint: hint, client_id: client.0, client_secret: client.1 })
                .await
        }
    };
    let t = app.issue(cc(&svc, "")).await.unwrap();
    let s = assert_oauth(
        revoke(web.clone(), t.access_token.clone(), "").await,
        ErrorCode::UnauthorizedClient,
        "another client's token",
    );
    assert_eq!(s.code(), tonic::Code::PermissionDenied);
    assert!(app.introspect(&t.access_token, (&svc.0, &svc.1)).await.active, "a refused revocation changes nothing");
    revoke(svc.clone(), t.access_token.clone(), "access_token").await.unwrap();
    assert!(!app.introspect(&t.access_token, (&svc.0, &svc.1)).await.active);
    // Unknown and already-revoked tokens are not errors (RFC 7009 §2.2).
    revoke(svc.clone(), t.access_token.clone(), "").await.unwrap();
    revoke(svc.clone(), "no-such-token".into(), "refresh_token").await.unwrap();
    assert_oauth(revoke(svc.clone(), "x".into(), "id_token").await, ErrorCode::UnsupportedTokenType, "bad hint");
    assert_oauth(revoke(svc.clone(), String::new(), "").await, ErrorCode::InvalidRequest, "no token");
    assert_oauth(revoke((svc.0.clone(), "bad".into()), "x".into(), "").await, ErrorCode::InvalidClient, "bad secret");

    // Revoking a refresh token revokes its family and its access tokens.
    let p = app.issue(password(&web, "alice", "alice-password", "")).await.unwrap();
    revoke(web.clone(), p.refresh_token.clone(), "refresh_token").await.unwrap();
    assert_oauth(
        app.issue(refresh(&web, &p.refresh_token, "")).await,
        ErrorCode::InvalidGrant,
        "revoked refresh token",
    );
    assert!(!app.introspect(&p.access_token, (&svc.0, &svc.1)).await.active);
}

pub async fn the_same_code_exchanged_concurrently_yields_exactly_one_token(app: TestApp) {
    let web = web_client(&app).await;
    app.user("alice", "alice-password").await;
    let (verifier, challenge) = pkce_pair();
    let code = code_for(&app, "web", &challenge).await;
    let mut clients = Vec::new();
    for _ in 0..8 {
        clients.push(app.connect().await);
    }
    let attempts = (0..32).map(|i| {
        let mut c = clients[i % clients.len()].clone();
        let req = exchange(&web, &code, &verifier);
        tokio::spawn(async move { c.exchange_code(req).await.map(|r| r.into_inner()) })
    });
    let results: Vec<_> = join_all(attempts).await.into_iter().map(|r| r.unwrap()).collect();
    let ok: Vec<_> = results.iter().filter_map(|r| r.as_ref().ok()).collect();
    assert_eq!(ok.len(), 1, "exactly one exchange may succeed: {results:?}");
    for r in results.iter().filter_map(|r| r.as_ref().err()) {
        assert_eq!(oauth_code(r), ErrorCode::InvalidGrant);
    }
    // Every loser was a replay, so the winner's tokens are revoked too.
    assert!(!app.introspect(&ok[0].access_token, (&web.0, &web.1)).await.active);
}

pub async fn the_same_refresh_token_presented_concurrently_yields_at_most_one(app: TestApp) {
    let web = web_client(&app).await;
    app.user("alice", "alice-password").await;
    let t = app.issue(password(&web, "alice", "alice-password", "")).await.unwrap();
    let mut clients = Vec::new();
    for _ in 0..8 {
        clients.push(app.connect().await);
    }
    let attempts = (0..24).map(|i| {
        let mut c = clients[i % clients.len()].clone();
        let req = refresh(&web, &t.refresh_token, "");
        tokio::spawn(async move { c.issue_token(req).await.map(|r| r.into_inner()) })
    });
    let results: Vec<_> = join_all(attempts).await.into_iter().map(|r| r.unwrap()).collect();
    let ok: Vec<_> = results.iter().filter_map(|r| r.as_ref().ok()).collect();
    assert!(ok.len() <= 1, "at most one refresh may succeed, {} did", ok.len());
    for r in results.iter().filter_map(|r| r.as_ref().err()) {
        assert_eq!(oauth_code(r), ErrorCode::InvalidGrant);
    }
    // The rest were reuse: the family, including any winner's new token, is revoked.
    if let Some(w) = ok.first() {
        assert_oauth(
            app.issue(refresh(&web, &w.refresh_token, "")).await,
            ErrorCode::InvalidGrant,
            "winner after reuse",
        );
        assert!(!app.introspect(&w.access_token, (&web.0, &web.1)).await.active);
    }
}

pub async fn signing_keys_persist_so_tokens_survive_a_restart(mut app: TestApp) {
    let svc = service_client(&app).await;
    let t = app.issue(cc(&svc, "")).await.unwrap();
    let jwks_before = app.token.clone().get_jwks(pb::GetJwksRequest {}).await.unwrap().into_inner().jwks_json;
    app.restart().await;
    let jwks_after = app.token.clone().get_jwks(pb::GetJwksRequest {}).await.unwrap().into_inner().jwks_json;
    assert_eq!(jwks_before, jwks_after, "the same keys after a restart");
    assert!(app.introspect(&t.access_token, (&svc.0, &svc.1)).await.active, "a token from before the restart");
}

pub async fn userinfo_answers_for_openid_tokens_only(app: TestApp) {
    let web = web_client(&app).await;
    let svc = service_client(&app).await;
    let uid = app.user("alice", "alice-password").await;
    let t = app.issue(password(&web, "alice", "alice-password", "openid email")).await.unwrap();
    let claims =
        app.token.clone().user_info(pb::UserInfoRequest { access_token: t.access_token }).await.unwrap().into_inner();
    let claims: serde_json::Value = serde_json::from_str(&claims.claims_json).unwrap();
    assert_eq!(claims["sub"], uid.as_str());
    assert_eq!(claims["email"], "alice@example.com");
    assert!(claims.get("preferred_username").is_none(), "profile was not granted");
    let no_openid = app.issue(cc(&svc, "read")).await.unwrap();
    let r = app.token.clone().user_info(pb::UserInfoRequest { access_token: no_openid.access_token }).await;
    assert_oauth(r, ErrorCode::InsufficientScope, "no openid scope");
    let r = app.token.clone().user_info(pb::UserInfoRequest { access_token: "bogus".into() }).await;
    assert_oauth(r, ErrorCode::InvalidToken, "bogus token");
}

pub async fn the_admin_service_needs_its_credential_and_manages_clients_and_users(app: TestApp) {
    let channel =
        tonic::transport::Channel::from_shared(format!("http://{}", app.addr)).unwrap().connect().await.unwrap();
    let mut anonymous = tessera_proto::admin::v1::admin_service_client::AdminServiceClient::new(channel.clone());
    let r = anonymous.list_clients(adminpb::ListClientsRequest {}).await;
    assert_eq!(r.unwrap_err().code(), tonic::Code::Unauthenticated);
    let mut wrong = tessera_proto::admin::v1::admin_service_client::AdminServiceClient::with_interceptor(
        channel,
        tessera_proto::AdminCredential::new("not-the-admin-credential").unwrap(),
    );
    assert_eq!(
        wrong.list_clients(adminpb::ListClientsRequest {}).await.unwrap_err().code(),
        tonic::Code::Unauthenticated
    );

    let mut admin = app.admin().await;
    let svc = service_client(&app).await;
    assert_eq!(svc.1.len(), 43, "secrets carry 256 bits");
    let listed = admin.list_clients(adminpb::ListClientsRequest {}).await.unwrap().into_inner().clients;
    assert_eq!(listed.len(), 1);
    assert!(listed[0].confidential);
    assert_eq!(listed[0].grant_types, ["client_credentials"]);
    let dup = admin
        .create_client(adminpb::CreateClientRequest {
            client_id: "svc".into(),
            grant_types: vec!["client_credentials".into()],
            ..Default::default()
        })
        .await;
    assert_oauth(dup, ErrorCode::InvalidRequest, "duplicate client id");
    let bad = [
        ("unknown grant", adminpb::CreateClientRequest { grant_types: vec!["magic".into()], ..Default::default() }),
        ("no grants", adminpb::CreateClientRequest::default()),
        (
            "code without redirect URI",
            adminpb::CreateClientRequest { grant_types: vec!["authorization_code".into()], ..Default::default() },
        ),
        (
            "redirect URI with a fragment",
            adminpb::CreateClientRequest {
                grant_types: vec!["authorization_code".into()],
                redirect_uris: vec!["https://a.example/cb#x".into()],
                ..Default::default()
            },
        ),
        (
            "plain http redirect URI",
            adminpb::CreateClientRequest {
                grant_types: vec!["authorization_code".into()],
                redirect_uris: vec!["http://a.example/cb".into()],
                ..Default::default()
            },
        ),
        (
            "public client_credentials",
            adminpb::CreateClientRequest {
                public: true,
                grant_types: vec!["client_credentials".into()],
                ..Default::default()
            },
        ),
    ];
    for (what, req) in bad {
        assert_oauth(admin.create_client(req).await, ErrorCode::InvalidRequest, what);
    }

    let new_secret = admin
        .rotate_client_secret(adminpb::RotateClientSecretRequest { client_id: "svc".into() })
        .await
        .unwrap()
        .into_inner()
        .client_secret;
    assert_oauth(app.issue(cc(&svc, "")).await, ErrorCode::InvalidClient, "old secret after rotation");
    assert!(app.issue(cc(&(svc.0.clone(), new_secret.clone()), "")).await.is_ok());
    admin.delete_client(adminpb::DeleteClientRequest { client_id: "svc".into() }).await.unwrap();
    assert_oauth(app.issue(cc(&(svc.0.clone(), new_secret), "")).await, ErrorCode::InvalidClient, "deleted client");
    assert!(admin.get_client(adminpb::GetClientRequest { client_id: "svc".into() }).await.is_err());

    app.user("carol", "carol-password").await;
    let dup = admin
        .create_user(adminpb::CreateUserRequest {
            username: "Carol".into(),
            password: "another-pass".into(),
            ..Default::default()
        })
        .await;
    assert_oauth(dup, ErrorCode::InvalidRequest, "duplicate username, case-insensitively");
    let short = admin
        .create_user(adminpb::CreateUserRequest {
            username: "dave".into(),
            password: "short".into(),
            ..Default::default()
        })
        .await;
    assert_oauth(short, ErrorCode::InvalidRequest, "short password");
    admin
        .set_user_password(adminpb::SetUserPasswordRequest {
            username: "carol".into(),
            password: "carol-new-password".into(),
        })
        .await
        .unwrap();
    let web = web_client(&app).await;
    assert_oauth(
        app.issue(password(&web, "carol", "carol-password", "")).await,
        ErrorCode::InvalidGrant,
        "old password",
    );
    assert!(app.issue(password(&web, "carol", "carol-new-password", "")).await.is_ok());
    let users = admin.list_users(adminpb::ListUsersRequest {}).await.unwrap().into_inner().users;
    assert_eq!(users.iter().map(|u| u.username.as_str()).collect::<Vec<_>>(), ["carol"]);
}

pub async fn bad_input_gets_a_clear_oauth_error(app: TestApp) {
    let web = web_client(&app).await;
    app.user("alice", "alice-password").await;
    let base = password(&web, "alice", "alice-password", "");
    let cases: Vec<(&str, pb::IssueTokenRequest, ErrorCode)> = vec![
        (
            "missing grant_type",
            pb::IssueTokenRequest { grant_type: String::new(), ..base.clone() },
            ErrorCode::InvalidRequest,
        ),
        (
            "unknown grant_type",
            pb::IssueTokenRequest { grant_type: "magic".into(), ..base.clone() },
            ErrorCode::UnsupportedGrantType,
        ),
        (
            "grant_type with a space",
            pb::IssueTokenRequest { grant_type: "password ".into(), ..base.clone() },
            ErrorCode::UnsupportedGrantType,
        ),
        (
            "code through IssueToken",
            pb::IssueTokenRequest { grant_type: "authorization_code".into(), ..base.clone() },
            ErrorCode::UnsupportedGrantType,
        ),
        (
            "missing username",
            pb::IssueTokenRequest { username: String::new(), ..base.clone() },
            ErrorCode::InvalidRequest,
        ),
        (
            "missing password",
            pb::IssueTokenRequest { password: String::new(), ..base.clone() },
            ErrorCode::InvalidRequest,
        ),
        (
            "oversized password",
            pb::IssueTokenRequest { password: "p".repeat(5000), ..base.clone() },
            ErrorCode::InvalidRequest,
        ),
        (
            "username with control characters",
            pb::IssueTokenRequest { username: "al\u{0}ice".into(), ..base.clone() },
            ErrorCode::InvalidRequest,
        ),
        (
            "oversized scope",
            pb::IssueTokenRequest { scope: "s ".repeat(5000), ..base.clone() },
            ErrorCode::InvalidScope,
        ),
        ("missing refresh_token", refresh(&web, "", ""), ErrorCode::InvalidRequest),
        ("oversized refresh_token", refresh(&web, &"r".repeat(2000), ""), ErrorCode::InvalidRequest),
    ];
    for (what, req, code) in cases {
        assert_oauth(app.issue(req).await, code, what);
    }
    // A message over the 64 KiB limit is refused by the transport before any decision.
    let huge = pb::IssueTokenRequest { scope: "x".repeat(100 * 1024), ..base.clone() };
    let e = app.issue(huge).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::OutOfRange, "{e:?}");
    // None of it changed anything: the user is not locked out and the grant still works.
    assert!(app.issue(base).await.is_ok());
}

pub async fn health_and_reflection_are_served(app: TestApp) {
    use tonic_health::pb::health_client::HealthClient;
    use tonic_health::pb::HealthCheckRequest;
    let channel =
        tonic::transport::Channel::from_shared(format!("http://{}", app.addr)).unwrap().connect().await.unwrap();
    let mut health = HealthClient::new(channel.clone());
    let status = health
        .check(HealthCheckRequest { service: "tessera.token.v1.TokenService".into() })
        .await
        .unwrap()
        .into_inner()
        .status;
    assert_eq!(status, tonic_health::pb::health_check_response::ServingStatus::Serving as i32);

    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    let mut reflection = ServerReflectionClient::new(channel);
    let req = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut stream = reflection.server_reflection_info(futures::stream::iter([req])).await.unwrap().into_inner();
    let resp = stream.message().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = resp.message_response else { panic!("no service list") };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    for expected in ["tessera.token.v1.TokenService", "tessera.admin.v1.AdminService", "grpc.health.v1.Health"] {
        assert!(names.iter().any(|n| n == expected), "{expected} missing from {names:?}");
    }
}

async fn jwks_kids(
    c: &mut tessera_proto::token::v1::token_service_client::TokenServiceClient<tonic::transport::Channel>,
) -> Vec<String> {
    let jwks: serde_json::Value =
        serde_json::from_str(&c.get_jwks(pb::GetJwksRequest {}).await.unwrap().into_inner().jwks_json).unwrap();
    jwks["keys"].as_array().unwrap().iter().map(|k| k["kid"].as_str().unwrap().to_owned()).collect()
}

pub async fn rotating_the_signing_key_keeps_old_tokens_valid_and_signs_with_the_new_key(app: TestApp) {
    let svc = service_client(&app).await;
    let before = app.issue(cc(&svc, "")).await.unwrap();
    let old_kid = jwt_parts(&before.access_token).0["kid"].as_str().unwrap().to_owned();
    let new_kid =
        app.admin().await.rotate_signing_key(adminpb::RotateSigningKeyRequest {}).await.unwrap().into_inner().kid;
    assert_ne!(new_kid, old_kid);
    let after = app.issue(cc(&svc, "")).await.unwrap();
    assert_eq!(jwt_parts(&after.access_token).0["kid"], new_kid.as_str(), "new tokens use the new key");
    let kids = jwks_kids(&mut app.token.clone()).await;
    assert!(kids.contains(&old_kid) && kids.contains(&new_kid), "both keys are published: {kids:?}");
    assert!(app.introspect(&before.access_token, (&svc.0, &svc.1)).await.active, "a token from before the rotation");
    assert!(app.introspect(&after.access_token, (&svc.0, &svc.1)).await.active);
    // Once every token the old key signed has expired, it leaves the JWK Set.
    app.clock.advance_secs(24 * 3600 + 1);
    app.tessera_refresh_keys().await;
    let kids = jwks_kids(&mut app.token.clone()).await;
    assert_eq!(kids, [new_kid], "the retired key is gone");
}

pub async fn a_rotation_on_one_node_is_honoured_by_another_at_once(app: TestApp) {
    let svc = service_client(&app).await;
    let (node_b, mut b) = app.second_node().await;
    // Node B has just read its keys, as it does every minute: a fresh reload must not stop it
    // from reading them again for a kid it does not know.
    node_b.tessera().refresh_keys().await.unwrap();
    app.admin().await.rotate_signing_key(adminpb::RotateSigningKeyRequest {}).await.unwrap();
    let t = app.issue(cc(&svc, "")).await.unwrap();
    // Many callers at once with the new kid: they share one reload, and all see it active.
    let concurrent = join_all((0..16).map(|_| {
        let mut b = b.clone();
        let request = pb::IntrospectRequest {
            token: t.access_token.clone(),
            client_id: svc.0.clone(),
            client_secret: svc.1.clone(),
            ..Default::default()
        };
        async move { b.introspect(request).await.unwrap().into_inner().active }
    }))
    .await;
    assert!(concurrent.iter().all(|active| *active), "every concurrent caller sees the new key: {concurrent:?}");
    let i = b
        .introspect(pb::IntrospectRequest {
            token: t.access_token,
            client_id: svc.0.clone(),
            client_secret: svc.1.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(i.active, "node B verifies a token signed with the key rotated in on node A");
}

/// `app` restarted with the refresh retry window on: the harness turns it off, so the flows
/// above see every second presentation of a rotated token as reuse.
async fn with_retry_window(mut app: TestApp, seconds: i64) -> TestApp {
    app.settings.tokens.refresh_retry_window = seconds;
    app.restart().await;
    app
}

pub async fn a_refresh_retried_within_the_window_gets_the_same_successor_until_the_successor_is_used(app: TestApp) {
    let app = with_retry_window(app, 5).await;
    let web = web_client(&app).await;
    app.user("alice", "alice-password").await;
    let first = app.issue(password(&web, "alice", "alice-password", "openid profile")).await.unwrap();
    let second = app.issue(refresh(&web, &first.refresh_token, "")).await.unwrap();
    // The answer was lost; the client sends the same request again.
    app.clock.advance_secs(2);
    let again = app.issue(refresh(&web, &first.refresh_token, "")).await.unwrap();
    assert_eq!(again.refresh_token, second.refresh_token, "the same successor, not a new branch");
    let (first_claims, again_claims) = (jwt_parts(&second.access_token).1, jwt_parts(&again.access_token).1);
    assert_eq!(again_claims["jti"], first_claims["jti"], "the successor's own access token id");
    assert_eq!(again_claims["exp"], first_claims["exp"], "and no later expiry");
    assert_eq!(again.scope, "openid profile");
    assert!(!again.id_token.is_empty(), "an ID token for an openid scope");
    assert!(app.introspect(&again.access_token, (&web.0, &web.1)).await.active);
    // Another client cannot retry it.
    let other =
        app.client(ClientSpec { id: "other", grants: &["password", "refresh_token"], ..Default::default() }).await;
    assert_oauth(app.issue(refresh(&other, &first.refresh_token, "")).await, ErrorCode::InvalidGrant, "other client");

    // The successor is used: from now on the old token is reuse, and the family is revoked.
    let third = app.issue(refresh(&web, &again.refresh_token, "")).await.unwrap();
    assert_oauth(app.issue(refresh(&web, &first.refresh_token, "")).await, ErrorCode::InvalidGrant, "reuse");
    assert_oauth(app.issue(refresh(&web, &third.refresh_token, "")).await, ErrorCode::InvalidGrant, "family revoked");
    for t in [&second.access_token, &again.access_token, &third.access_token] {
        assert!(!app.introspect(t, (&web.0, &web.1)).await.active, "the family's access tokens are revoked");
    }
}

pub async fn a_refresh_retried_after_the_window_is_reuse(app: TestApp) {
    let app = with_retry_window(app, 1).await;
    let web = web_client(&app).await;
    app.user("alice", "alice-password").await;
    let first = app.issue(password(&web, "alice", "alice-password", "")).await.unwrap();
    let second = app.issue(refresh(&web, &first.refresh_token, "")).await.unwrap();
    app.clock.advance_secs(2);
    assert_oauth(app.issue(refresh(&web, &first.refresh_token, "")).await, ErrorCode::InvalidGrant, "late retry");
    assert_oauth(app.issue(refresh(&web, &second.refresh_token, "")).await, ErrorCode::InvalidGrant, "family revoked");
    assert!(!app.introspect(&second.access_token, (&web.0, &web.1)).await.active);
}

pub async fn concurrent_refreshes_of_one_token_within_the_window_never_make_two_live_chains(app: TestApp) {
    let app = with_retry_window(app, 5).await;
    let web = web_client(&app).await;
    app.user("alice", "alice-password").await;
    let t = app.issue(password(&web, "alice", "alice-password", "")).await.unwrap();
    let mut clients = Vec::new();
    for _ in 0..8 {
        clients.push(app.connect().await);
    }
    let attempts = (0..16).map(|i| {
        let mut c = clients[i % clients.len()].clone();
        let req = refresh(&web, &t.refresh_token, "");
        tokio::spawn(async move { c.issue_token(req).await.map(|r| r.into_inner()) })
    });
    let results: Vec<_> = join_all(attempts).await.into_iter().map(|r| r.unwrap()).collect();
    for r in results.iter().filter_map(|r| r.as_ref().err()) {
        assert_eq!(oauth_code(r), ErrorCode::InvalidGrant, "{r:?}");
    }
    let mut distinct: Vec<&str> =
        results.iter().filter_map(|r| r.as_ref().ok()).map(|t| t.refresh_token.as_str()).collect();
    distinct.sort_unstable();
    distinct.dedup();
    // Every presentation is the same refresh: one successor, handed to each of them.
    assert!(results.iter().all(|r| r.is_ok()), "each concurrent presentation is answered: {results:?}");
    assert_eq!(distinct.len(), 1, "one successor, not {} branches", distinct.len());

    // Whatever was handed out, at most one chain goes on.
    let mut live = 0;
    for token in &distinct {
        if app.issue(refresh(&web, token, "")).await.is_ok() {
            live += 1;
        }
    }
    assert_eq!(live, 1, "exactly one live chain");
    assert_oauth(app.issue(refresh(&web, &t.refresh_token, "")).await, ErrorCode::InvalidGrant, "old token after use");
}
