//! Every endpoint's happy path and its RFC error paths, with raw HTTP requests, against both
//! backend pairs.

use crate::harness::*;
use reqwest::StatusCode;
use serde_json::{json, Value};
use std::time::Duration;
use tessera_proto::admin::v1 as admin;

tessera_testkit::both_pairs!(
    crate::harness::with_pair;
    client_credentials_tokens_come_with_no_store_headers_on_every_token_path,
    basic_credentials_are_form_decoded_as_rfc_6749_section_2_3_1_says,
    invalid_client_is_a_401_with_a_basic_challenge_when_basic_was_tried,
    the_seed_password_and_refresh_json_bodies_work_as_written,
    the_seed_password_json_body_works_without_any_client_where_a_default_client_is_set,
    the_seed_authorization_code_json_body_works_as_written_and_a_replay_fails,
    the_seed_device_json_bodies_work_as_written_through_the_verification_page,
    a_denied_device_request_polls_as_access_denied_with_400,
    the_verification_page_takes_codes_in_any_case_and_explains_unknown_ones,
    a_person_guessing_codes_on_the_verification_page_is_told_to_wait,
    introspection_shows_active_fields_and_only_active_false_once_revoked,
    revocations_come_as_security_event_tokens_by_poll,
    userinfo_answers_bearer_tokens_and_challenges_with_rfc_6750_errors,
    discovery_documents_and_keys_are_served_on_every_path,
    authorize_never_redirects_for_an_unknown_client_or_unregistered_redirect_uri,
    the_authorization_endpoint_also_takes_a_form_post,
    authorize_errors_for_a_known_client_go_back_with_error_and_state,
    a_second_authorization_skips_login_and_consent_and_carries_the_nonce,
    denying_consent_redirects_with_access_denied,
    implicit_clients_get_the_token_in_the_fragment,
    pages_refuse_forms_without_the_csrf_token_and_send_security_headers,
    a_wrong_password_shows_the_login_page_again,
    guessing_on_the_login_page_is_slowed_with_a_503_that_says_how_long,
    readiness_follows_the_token_service_and_its_absence_is_a_503_json,
);

async fn client_credentials_tokens_come_with_no_store_headers_on_every_token_path(pair: Pair) {
    let Some(app) = TestApp::spawn(pair).await else { return };
    let (id, secret) = app.confidential(&["client_credentials"]).await;
    for path in ["/oauth2/token", "/token", "/api/v4/oauth"] {
        let basic = app.post_form(path, &[("grant_type", "client_credentials")], Some((&id, &secret))).await;
        let t = basic.assert_tokens();
        assert!(t.get("refresh_token").is_none() && t.get("id_token").is_none(), "{t}");
        let post = app
            .post_form(
                path,
                &[
                    ("grant_type", "client_credentials"),
                    ("client_id", &id),
                    ("client_secret", &secret),
                    ("scope", "api"),
                ],
                None,
            )
            .await;
        assert_eq!(post.assert_tokens()["scope"], "api");
        let body = json!({"grant_type": "client_credentials", "client_id": id, "client_secret": secret}).to_string();
        app.post_json(path, &body, None).await.assert_tokens();
    }
    app.stop().await;
}

async fn basic_credentials_are_form_decoded_as_rfc_6749_section_2_3_1_says(pair: Pair) {
    let Some(app) = TestApp::spawn(pair).await else { return };
    let mut spec = client_spec(&["client_credentials"], false);
    spec.client_id = "svc~one.x".into();
    let (id, secret) = app.create_client(spec).await;
    // A client that percent-encodes every character it may: `~` as %7E.
    let raw = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, format!("svc%7Eone.x:{secret}"));
    let a = app
        .raw(
            reqwest::Method::POST,
            "/oauth2/token",
            &[("Authorization", &format!("Basic {raw}")), ("Content-Type", "application/x-www-form-urlencoded")],
            b"grant_type=client_credentials".to_vec(),
        )
        .await;
    a.assert_tokens();
    app.post_form("/oauth2/token", &[("grant_type", "client_credentials")], Some((&id, &secret))).await.assert_tokens();
    app.stop().await;
}

async fn invalid_client_is_a_401_with_a_basic_challenge_when_basic_was_tried(pair: Pair) {
    let Some(app) = TestApp::spawn(pair).await else { return };
    let (id, _) = app.confidential(&["client_credentials"]).await;
    let a = app.post_form("/oauth2/token", &[("grant_type", "client_credentials")], Some((&id, "wrong"))).await;
    a.assert_error(401, "invalid_client");
    assert_eq!(a.header("www-authenticate"), "Basic realm=\"tessera\"");
    assert_eq!(a.header("cache-control"), "no-store");
    let b = app
        .post_form(
            "/oauth2/token",
            &[("grant_type", "client_credentials"), ("client_id", &id), ("client_secret", "wrong")],
            None,
        )
        .await;
    b.assert_error(401, "invalid_client");
    assert_eq!(b.header("www-authenticate"), "");
    app.stop().await;
}

async fn the_seed_password_and_refresh_json_bodies_work_as_written(pair: Pair) {
    let Some(app) = TestApp::spawn(pair).await else { return };
    let (id, secret) = app.confidential(&["password", "refresh_token"]).await;
    app.create_user("alice", "correct horse battery").await;
    // ../shared/seeds/000: the body exactly as documented; the client authenticates with
    // HTTP Basic, which the seed leaves out of its example.
    let body = "{\n\"grant_type\": \"password\",\n\"username\": \"alice\",\n\"password\": \"correct horse battery\"\n}";
    let t = app.post_json("/api/v4/oauth", body, Some((&id, &secret))).await.assert_tokens();
    let refresh = t["refresh_token"].as_str().expect("a refresh token").to_owned();
    // Without any client authentication the answer is the RFC's, not a parse error.
    app.post_json("/api/v4/oauth", body, None).await.assert_error(401, "invalid_client");

    let body = format!(
        "{{\n\"grant_type\": \"refresh_token\",\n\"refresh_token\": \"{refresh}\",\n\"client_id\": \"{id}\",\n\"client_secret\": \"{secret}\"\n}}"
    );
    let t2 = app.post_json("/api/v4/oauth", &body, None).await.assert_tokens();
    assert_ne!(t2["refresh_token"], t["refresh_token"], "the refresh token rotates");
    // The rotated one is spent.
    app.post_json("/api/v4/oauth", &body, None).await.assert_error(400, "invalid_grant");
    app.stop().await;
}

async fn the_seed_password_json_body_works_without_any_client_where_a_default_client_is_set(pair: Pair) {
    let Some(app) = TestApp::spawn_with(pair, |s| s.tokens.default_client_id = "web-app".into()).await else { return };
    app.create_client(admin::CreateClientRequest {
        client_id: "web-app".into(),
        public: true,
        grant_types: vec!["password".into(), "refresh_token".into()],
        ..Default::default()
    })
    .await;
    app.create_user("alice", "correct horse battery").await;
    // ../shared/seeds/000, byte for byte: no client_id, no secret, no Authorization header.
    let body = "{\n\"grant_type\": \"password\",\n\"username\": \"alice\",\n\"password\": \"correct horse battery\"\n}";
    let t = app.post_json("/api/v4/oauth", body, None).await.assert_tokens();
    assert_eq!(t["token_type"], "Bearer");
    assert_eq!(t["expires_in"], 3600);
    assert!(t["refresh_token"].is_string());
    app.stop().await;
}

async fn the_seed_authorization_code_json_body_works_as_written_and_a_replay_fails(pair: Pair) {
    let Some(app) = TestApp::spawn(pair).await else { return };
    let (id, secret) = app.confidential(&["authorization_code", "refresh_token"]).await;
    app.create_user("bob", "bob's long password").await;
    let (verifier, challenge) = pkce();
    let browser = app.browser();
    // ../shared/seeds/000 sends the person to /auth.
    let authorize = format!(
        "/auth?response_type=code&client_id={id}&redirect_uri={}&scope={}&state=xyz%20123&code_challenge={challenge}&code_challenge_method=S256",
        encode(CALLBACK),
        encode("openid profile")
    );
    let done = browser.login_and_consent(&authorize, "bob", "bob's long password").await;
    assert_eq!(done.status, StatusCode::SEE_OTHER, "{}", done.text);
    let back = params_of(&done.location(), false);
    assert_eq!(param(&back, "state").as_deref(), Some("xyz 123"));
    assert_eq!(param(&back, "iss").as_deref(), Some(app.base.as_str()));
    let code = param(&back, "code").expect("a code");

    let body = format!(
        "{{\n\"grant_type\": \"authorization_code\",\n\"code\": \"{code}\",\n\"redirect_uri\": \"{CALLBACK}\",\n\"client_id\": \"{id}\",\n\"client_secret\": \"{secret}\",\n\"code_verifier\": \"{verifier}\"\n}}"
    );
    let t = app.post_json("/api/v4/oauth", &body, None).await.assert_tokens();
    assert!(t["id_token"].is_string() && t["refresh_token"].is_string(), "{t}");
    app.post_json("/api/v4/oauth", &body, None).await.assert_error(400, "invalid_grant");
    app.stop().await;
}

/// Approves (or denies) a user code through the verification pages, signing in on the way.
async fn decide_on_verification_page(app: &TestApp, user_code: &str, user: (&str, &str), action: &str) {
    let browser = app.browser();
    let entry = browser.get(&format!("/device?user_code={}", encode(user_code))).await;
    assert_eq!(entry.status, StatusCode::OK);
    assert!(entry.text.contains(&format!("value=\"{user_code}\"")), "prefilled: {}", entry.text);
    let login = browser.submit(&entry, "/device", &[("user_code", user_code)]).await;
    assert_eq!(login.status, StatusCode::OK, "{}", login.text);
    assert!(login.text.contains("Device App"), "the login page names the client: {}", login.text);
    let confirm = browser.submit(&login, "/login", &[("username", user.0), ("password", user.1)]).await;
    assert_eq!(confirm.status, StatusCode::OK, "{}", confirm.text);
    assert!(
        confirm.text.contains(user_code) && confirm.text.contains("See your name and username"),
        "{}",
        confirm.text
    );
    let done = browser.submit(&confirm, "/device", &[("action", action)]).await;
    assert_eq!(done.status, StatusCode::OK, "{}", done.text);
    let expected = if action == "approve" { "Device connected" } else { "Request denied" };
    assert!(done.text.contains(expected), "{}", done.text);
}

async fn device_client(app: &TestApp) -> String {
    let mut spec = client_spec(&["device_code", "refresh_token"], true);
    spec.name = "Device App".into();
    app.create_client(spec).await.0
}

async fn the_seed_device_json_bodies_work_as_written_through_the_verification_page(pair: Pair) {
    let Some(app) = TestApp::spawn(pair).await else { return };
    let id = device_client(&app).await;
    app.create_user("carol", "carol's long password").await;
    let start = app.post_json("/api/v4/oauth/device", &format!("{{\n\"client_id\": \"{id}\"\n}}"), None).await;
    assert_eq!(start.status, StatusCode::OK, "{}", start.text);
    assert_eq!(start.header("cache-control"), "no-store");
    let d = start.json();
    let user_code = d["user_code"].as_str().unwrap().to_owned();
    assert_eq!(d["verification_uri"], app.url("/device"));
    assert!(d["verification_uri_complete"].as_str().unwrap().ends_with(&user_code));
    let poll = format!(
        "{{\n\"grant_type\": \"device_code\",\n\"device_code\": \"{}\",\n\"client_id\": \"{id}\"\n}}",
        d["device_code"].as_str().unwrap()
    );
    app.post_json("/api/v4/oauth", &poll, None).await.assert_error(400, "authorization_pending");
    // RFC 8628 §3.5: polling faster than the interval is slow_down.
    app.post_json("/api/v4/oauth", &poll, None).await.assert_error(400, "slow_down");

    decide_on_verification_page(&app, &user_code, ("carol", "carol's long password"), "approve").await;
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let t = app.post_json("/api/v4/oauth", &poll, None).await.assert_tokens();
    assert!(t["refresh_token"].is_string(), "{t}");
    // The RFC's form body works too, and the code is spent.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    app.post_form(
        "/oauth2/token",
        &[
            ("grant_type", "urn:ietf:params:oauth:grant-type:device_code"),
            ("device_code", d["device_code"].as_str().unwrap()),
            ("client_id", &id),
        ],
        None,
    )
    .await
    .assert_error(400, "invalid_grant");
    app.stop().await;
}

async fn a_denied_device_request_polls_as_access_denied_with_400(pair: Pair) {
    let Some(app) = TestApp::spawn(pair).await else { return };
    let id = device_client(&app).await;
    app.create_user("dave", "dave's long password").await;
    let d =
        app.post_form("/oauth2/device_authorization", &[("client_id", &id), ("scope", "openid profile")], None).await;
    assert_eq!(d.status, StatusCode::OK, "{}", d.text);
    let d = d.json();
    decide_on_verification_page(&app, d["user_code"].as_str().unwrap(), ("dave", "dave's long password"), "deny").await;
    let a = app
        .post_form(
            "/oauth2/token",
            &[
                ("grant_type", "urn:ietf:params:oauth:grant-type:device_code"),
                ("device_code", d["device_code"].as_str().unwrap()),
                ("client_id", &id),
            ],
            None,
        )
        .await;
    a.assert_error(400, "access_denied");
    app.stop().await;
}

async fn the_verification_page_takes_codes_in_any_case_and_explains_unknown_ones(pair: Pair) {
    let Some(app) = TestApp::spawn(pair).await else { return };
    let id = device_client(&app).await;
    let d = app.post_form("/oauth2/device_authorization", &[("client_id", &id)], None).await.json();
    let code = d["user_code"].as_str().unwrap().to_owned();
    let sloppy = code.replace('-', "").to_lowercase();
    let browser = app.browser();
    let entry = browser.get("/device").await;
    assert_eq!(entry.status, StatusCode::OK);
    assert!(entry.text.contains("name=\"user_code\""));
    let login = browser.submit(&entry, "/device", &[("user_code", &sloppy)]).await;
    assert_eq!(login.status, StatusCode::OK, "{}", login.text);
    assert!(login.text.contains(&format!("value=\"{code}\"")), "the canonical code is carried on: {}", login.text);

    let unknown = browser.submit(&entry, "/device", &[("user_code", "BCDF-GHJK")]).await;
    assert_eq!(unknown.status, StatusCode::BAD_REQUEST);
    assert!(unknown.content_type().starts_with("text/html"));
    assert!(unknown.text.contains("unknown or has expired"), "{}", unknown.text);
    app.stop().await;
}

/// RFC 8628 §5.1: wrong user codes from one source are throttled, and the page says how long
/// to wait; the right code from that source waits too, then works.
async fn a_person_guessing_codes_on_the_verification_page_is_told_to_wait(pair: Pair) {
    let Some(app) = TestApp::spawn(pair).await else { return };
    let id = device_client(&app).await;
    let d = app.post_form("/oauth2/device_authorization", &[("client_id", &id)], None).await.json();
    let code = d["user_code"].as_str().unwrap().to_owned();
    let browser = app.browser();
    let entry = browser.get("/device").await;
    let mut throttled = None;
    for guess in 0..40 {
        let page = browser.submit(&entry, "/device", &[("user_code", "BCDF-GHJK")]).await;
        if page.text.contains("Too many attempts") {
            throttled = Some((guess, page));
            break;
        }
        assert!(page.text.contains("unknown or has expired"), "guess {guess}: {}", page.text);
    }
    let (guess, page) = throttled.expect("forty wrong codes in a row are throttled");
    assert!(guess >= 10, "the first ten wrong codes are only refused, guess {guess} was throttled");
    assert!(page.content_type().starts_with("text/html"));
    assert!(page.text.contains("wait 1 second"), "{}", page.text);
    assert!(
        page.header("retry-after").parse::<u32>().is_ok_and(|s| s >= 1),
        "Retry-After: {:?}",
        page.header("retry-after")
    );
    // The right code waits its turn too, then works.
    tokio::time::sleep(std::time::Duration::from_millis(1_100)).await;
    let right = browser.submit(&entry, "/device", &[("user_code", &code)]).await;
    assert_eq!(right.status, StatusCode::OK, "{}", right.text);
    app.stop().await;
}

async fn introspection_shows_active_fields_and_only_active_false_once_revoked(pair: Pair) {
    let Some(app) = TestApp::spawn(pair).await else { return };
    let (id, secret) = app.confidential(&["client_credentials"]).await;
    let (rs, rs_secret) = app.confidential(&["client_credentials"]).await;
    let t = app
        .post_form("/oauth2/token", &[("grant_type", "client_credentials"), ("scope", "api")], Some((&id, &secret)))
        .await;
    let token = t.assert_tokens()["access_token"].as_str().unwrap().to_owned();

    let i = app.post_form("/oauth2/introspect", &[("token", &token)], Some((&rs, &rs_secret))).await;
    assert_eq!(i.status, StatusCode::OK, "{}", i.text);
    assert_eq!(i.header("cache-control"), "no-store");
    let j = i.json();
    assert_eq!(j["active"], true);
    assert_eq!(j["client_id"], id.as_str());
    assert_eq!(j["scope"], "api");
    assert_eq!(j["iss"], app.base.as_str());
    assert!(j["aud"].is_string(), "one audience is a string: {j}");
    assert!(j["exp"].as_i64().unwrap() > j["iat"].as_i64().unwrap());
    assert!(j.get("username").is_none(), "empty fields are left out: {j}");
    // JSON body with credentials in it.
    let body = json!({"token": token, "client_id": rs, "client_secret": rs_secret}).to_string();
    assert_eq!(app.post_json("/oauth2/introspect", &body, None).await.json()["active"], true);

    let r = app
        .post_form("/oauth2/revoke", &[("token", &token), ("token_type_hint", "access_token")], Some((&id, &secret)))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert!(r.text.is_empty());
    // RFC 7009 §2.2: an unknown token is not an error.
    let r = app.post_form("/oauth2/revoke", &[("token", "no-such-token")], Some((&id, &secret))).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);

    let i = app.post_form("/oauth2/introspect", &[("token", &token)], Some((&rs, &rs_secret))).await;
    assert_eq!(i.json(), json!({"active": false}));
    let i = app.post_form("/oauth2/introspect", &[("token", "garbage")], Some((&rs, &rs_secret))).await;
    assert_eq!(i.json(), json!({"active": false}));
    let i = app.post_form("/oauth2/introspect", &[("token", &token)], Some((&rs, "wrong"))).await;
    i.assert_error(401, "invalid_client");
    assert_eq!(i.header("www-authenticate"), "Basic realm=\"tessera\"");
    app.stop().await;
}

async fn revocations_come_as_security_event_tokens_by_poll(pair: Pair) {
    let Some(app) = TestApp::spawn(pair).await else { return };
    let (id, secret) = app.confidential(&["client_credentials"]).await;
    let (rs, rs_secret) = app
        .create_client(admin::CreateClientRequest {
            watch_revocations: true,
            ..client_spec(&["client_credentials"], false)
        })
        .await;
    let discovery = app.get("/.well-known/oauth-authorization-server").await.json();
    assert_eq!(discovery["security_event_poll_endpoint"], app.url("/oauth2/security-events").as_str());
    assert_eq!(discovery["security_event_delivery_methods_supported"], json!(["urn:ietf:rfc:8936"]));

    let t = app
        .post_form("/oauth2/token", &[("grant_type", "client_credentials"), ("scope", "api")], Some((&id, &secret)))
        .await;
    let token = t.assert_tokens()["access_token"].as_str().unwrap().to_owned();
    let r = app.post_form("/oauth2/revoke", &[("token", &token)], Some((&id, &secret))).await;
    assert_eq!(r.status, StatusCode::OK);

    let path = "/oauth2/security-events";
    app.post_json(path, "{}", None).await.assert_error(401, "invalid_client");
    app.post_json(path, r#"{"returnImmediately": true}"#, Some((&id, &secret)))
        .await
        .assert_error(400, "unauthorized_client");
    app.post_json(path, r#"{"ack": "not a list"}"#, Some((&rs, &rs_secret))).await.assert_error(400, "invalid_request");
    app.post_json(path, r#"{"maxEvent": 3}"#, Some((&rs, &rs_secret))).await.assert_error(400, "invalid_request");
    app.post_form(path, &[("ack", "x")], Some((&rs, &rs_secret))).await.assert_error(400, "invalid_request");

    let polled = app.post_json(path, r#"{"returnImmediately": true}"#, Some((&rs, &rs_secret))).await;
    assert_eq!(polled.status, StatusCode::OK, "{}", polled.text);
    assert_eq!(polled.header("cache-control"), "no-store");
    let body = polled.json();
    let sets = body["sets"].as_object().unwrap();
    assert_eq!(sets.len(), 1, "{body}");
    assert_eq!(body["moreAvailable"], false);
    let (jti, set) = sets.iter().next().unwrap();
    let claims: Value = {
        use base64::Engine as _;
        let payload = set.as_str().unwrap().split('.').nth(1).unwrap();
        serde_json::from_slice(&base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap()
    };
    assert_eq!(claims["jti"], jti.as_str());
    assert_eq!(claims["aud"], rs.as_str());
    assert!(claims["events"]["urn:tessera:secevent:access-token-revoked"]["jti"].is_string(), "{claims}");

    let ack = json!({"ack": [jti], "returnImmediately": true}).to_string();
    let after = app.post_json(path, &ack, Some((&rs, &rs_secret))).await.json();
    assert_eq!(after["sets"], json!({}), "acknowledged");
    app.stop().await;
}

async fn userinfo_answers_bearer_tokens_and_challenges_with_rfc_6750_errors(pair: Pair) {
    let Some(app) = TestApp::spawn(pair).await else { return };
    let (id, secret) = app.confidential(&["password", "client_credentials"]).await;
    app.create_user("erin", "erin's long password").await;
    let t = app
        .post_form(
            "/oauth2/token",
            &[
                ("grant_type", "password"),
                ("username", "erin"),
                ("password", "erin's long password"),
                ("scope", "openid profile email"),
            ],
            Some((&id, &secret)),
        )
        .await
        .assert_tokens();
    let token = t["access_token"].as_str().unwrap().to_owned();
    let bearer = format!("Bearer {token}");

    let get = app.raw(reqwest::Method::GET, "/userinfo", &[("Authorization", &bearer)], vec![]).await;
    assert_eq!(get.status, StatusCode::OK, "{}", get.text);
    let claims = get.json();
    assert_eq!(claims["preferred_username"], "erin");
    assert_eq!(claims["email"], "erin@example.com");
    let post = app.raw(reqwest::Method::POST, "/userinfo", &[("Authorization", &bearer)], vec![]).await;
    assert_eq!(post.json(), claims);
    let form = app.post_form("/userinfo", &[("access_token", &token)], None).await;
    assert_eq!(form.json(), claims);

    let none = app.get("/userinfo").await;
    assert_eq!(none.status, StatusCode::UNAUTHORIZED);
    assert_eq!(none.header("www-authenticate"), "Bearer realm=\"tessera\"");
    let bad = app.raw(reqwest::Method::GET, "/userinfo", &[("Authorization", "Bearer not-a-token")], vec![]).await;
    bad.assert_error(401, "invalid_token");
    assert!(
        bad.header("www-authenticate").starts_with("Bearer realm=\"tessera\", error=\"invalid_token\""),
        "{}",
        bad.header("www-authenticate")
    );

    let cc = app
        .post_form("/oauth2/token", &[("grant_type", "client_credentials"), ("scope", "api")], Some((&id, &secret)))
        .await;
    let cc = cc.assert_tokens()["access_token"].as_str().unwrap().to_owned();
    let scope = app.raw(reqwest::Method::GET, "/userinfo", &[("Authorization", &format!("Bearer {cc}"))], vec![]).await;
    scope.assert_error(403, "insufficient_scope");
    assert!(scope.header("www-authenticate").contains("error=\"insufficient_scope\""));
    app.stop().await;
}

async fn discovery_documents_and_keys_are_served_on_every_path(pair: Pair) {
    let Some(app) = TestApp::spawn(pair).await else { return };
    let oauth = app.get("/.well-known/oauth-authorization-server").await;
    let oidc = app.get("/.well-known/openid-configuration").await;
    assert_eq!(oauth.status, StatusCode::OK);
    assert!(oauth.content_type().starts_with("application/json"));
    let m = oauth.json();
    assert_eq!(m, oidc.json());
    assert_eq!(m["issuer"], app.base.as_str());
    for (key, path) in [
        ("authorization_endpoint", "/oauth2/authorize"),
        ("token_endpoint", "/oauth2/token"),
        ("device_authorization_endpoint", "/oauth2/device_authorization"),
        ("introspection_endpoint", "/oauth2/introspect"),
        ("revocation_endpoint", "/oauth2/revoke"),
        ("jwks_uri", "/oauth2/jwks"),
        ("userinfo_endpoint", "/userinfo"),
    ] {
        assert_eq!(m[key], app.url(path), "{key}");
    }
    let has = |k: &str, v: &str| m[k].as_array().unwrap().iter().any(|x| x == v);
    for g in [
        "authorization_code",
        "client_credentials",
        "password",
        "refresh_token",
        "urn:ietf:params:oauth:grant-type:device_code",
    ] {
        assert!(has("grant_types_supported", g), "{g}");
    }
    for a in ["client_secret_basic", "client_secret_post", "none"] {
        assert!(has("token_endpoint_auth_methods_supported", a), "{a}");
    }
    assert!(has("code_challenge_methods_supported", "S256") && has("code_challenge_methods_supported", "plain"));
    assert!(has("response_types_supported", "code") && has("subject_types_supported", "public"));
    assert!(has("id_token_signing_alg_values_supported", "ES256") && has("scopes_supported", "openid"));

    let jwks = app.get("/oauth2/jwks").await;
    let alias = app.get("/.well-known/jwks.json").await;
    assert_eq!(jwks.status, StatusCode::OK);
    assert_eq!(jwks.json(), alias.json());
    let keys = jwks.json()["keys"].as_array().unwrap().clone();
    assert!(!keys.is_empty() && keys.iter().all(|k| k["kid"].is_string() && k.get("d").is_none()));
    app.stop().await;
}

async fn authorize_never_redirects_for_an_unknown_client_or_unregistered_redirect_uri(pair: Pair) {
    let Some(app) = TestApp::spawn(pair).await else { return };
    let (id, _) = app.confidential(&["authorization_code"]).await;
    for path in [
        format!("/oauth2/authorize?response_type=code&client_id=nobody&redirect_uri={}", encode(CALLBACK)),
        format!("/authorization?response_type=code&client_id={id}&redirect_uri={}", encode("https://evil.example/cb")),
        format!(
            "/oauth2/authorize?response_type=code&client_id={id}&redirect_uri={}",
            encode("http://127.0.0.1:9/cb/")
        ),
        format!("/oauth2/authorize?response_type=code&client_id={id}&client_id={id}"),
    ] {
        let a = app.get(&path).await;
        assert_eq!(a.status, StatusCode::BAD_REQUEST, "{path}: {}", a.text);
        assert!(a.location().is_empty(), "{path} redirected to {}", a.location());
        assert!(a.content_type().starts_with("text/html"), "{path}");
        assert!(a.text.contains("This request cannot be completed"), "{}", a.text);
    }
    app.stop().await;
}

async fn the_authorization_endpoint_also_takes_a_form_post(pair: Pair) {
    let Some(app) = TestApp::spawn(pair).await else { return };
    let (id, _) = app.confidential(&["authorization_code"]).await;
    // OIDC Core §3.1.2.1: GET and POST, the POST form-serialized.
    let form = [
        ("response_type", "code"),
        ("client_id", id.as_str()),
        ("redirect_uri", CALLBACK),
        ("scope", "openid"),
        ("state", "s1"),
    ];
    for path in ["/oauth2/authorize", "/authorization", "/auth"] {
        let page = app.post_form(path, &form, None).await;
        assert_eq!(page.status, StatusCode::OK, "{path}: {}", page.text);
        assert!(page.text.contains("name=\"username\""), "{path}: the login page: {}", page.text);
    }
    // A known client's error still goes back to it; an unknown client's never does.
    let bad = [("response_type", "bogus"), ("client_id", id.as_str()), ("redirect_uri", CALLBACK), ("state", "s1")];
    let a = app.post_form("/oauth2/authorize", &bad, None).await;
    // RFC 9700 §4.12: after a POST, 303 so the browser does not re-send the form.
    assert_eq!(a.status, StatusCode::SEE_OTHER, "{}", a.text);
    assert_eq!(param(&params_of(&a.location(), false), "error").as_deref(), Some("unsupported_response_type"));
    let unknown = [("response_type", "code"), ("client_id", "nobody"), ("redirect_uri", CALLBACK)];
    let a = app.post_form("/oauth2/authorize", &unknown, None).await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST, "{}", a.text);
    assert!(a.location().is_empty());
    assert!(a.content_type().starts_with("text/html"));
    app.stop().await;
}

async fn authorize_errors_for_a_known_client_go_back_with_error_and_state(pair: Pair) {
    let Some(app) = TestApp::spawn(pair).await else { return };
    let (id, _) = app.confidential(&["authorization_code"]).await;
    let cases = [
        ("response_type=bogus", "unsupported_response_type"),
        ("response_type=code&scope=nope", "invalid_scope"),
        ("response_type=code&prompt=none", "login_required"),
        ("response_type=token", "unauthorized_client"),
    ];
    for (query, error) in cases {
        let a = app
            .get(&format!("/oauth2/authorize?{query}&client_id={id}&redirect_uri={}&state=s1", encode(CALLBACK)))
            .await;
        assert_eq!(a.status, StatusCode::FOUND, "{query}: {}", a.text);
        let loc = a.location();
        let fragment = query.contains("response_type=token");
        let p = params_of(&loc, fragment);
        assert!(loc.starts_with(CALLBACK), "{loc}");
        assert_eq!(param(&p, "error").as_deref(), Some(error), "{query}: {loc}");
        assert_eq!(param(&p, "state").as_deref(), Some("s1"), "{query}");
        assert!(param(&p, "error_description").is_some());
    }
    app.stop().await;
}

async fn a_second_authorization_skips_login_and_consent_and_carries_the_nonce(pair: Pair) {
    let Some(app) = TestApp::spawn(pair).await else { return };
    let (id, secret) = app.confidential(&["authorization_code"]).await;
    app.create_user("frank", "frank's long password").await;
    let browser = app.browser();
    let path = |nonce: &str| {
        format!(
            "/oauth2/authorize?response_type=code&client_id={id}&redirect_uri={}&scope=openid%20email&nonce={nonce}",
            encode(CALLBACK)
        )
    };
    let first = browser.login_and_consent(&path("n-1"), "frank", "frank's long password").await;
    assert_eq!(first.status, StatusCode::SEE_OTHER, "{}", first.text);
    // Signed in and consented: straight back to the client.
    let second = browser.get(&path("n-2")).await;
    assert_eq!(second.status, StatusCode::FOUND, "{}", second.text);
    let code = param(&params_of(&second.location(), false), "code").unwrap();
    let t = app
        .post_form(
            "/oauth2/token",
            &[("grant_type", "authorization_code"), ("code", &code), ("redirect_uri", CALLBACK)],
            Some((&id, &secret)),
        )
        .await
        .assert_tokens();
    let claims = jwt_claims(t["id_token"].as_str().unwrap());
    assert_eq!(claims["nonce"], "n-2");
    // prompt=consent asks again.
    let again = browser.get(&format!("{}&prompt=consent", path("n-3"))).await;
    assert_eq!(again.status, StatusCode::OK);
    assert!(again.text.contains("name=\"decision\""), "{}", again.text);

    // A first-party client (skip_consent) never shows the consent page.
    let mut spec = client_spec(&["authorization_code"], false);
    spec.skip_consent = true;
    let (first_party, _) = app.create_client(spec).await;
    let direct = browser
        .get(&format!(
            "/oauth2/authorize?response_type=code&client_id={first_party}&redirect_uri={}&scope=openid",
            encode(CALLBACK)
        ))
        .await;
    assert_eq!(direct.status, StatusCode::FOUND, "{}", direct.text);
    app.stop().await;
}

async fn denying_consent_redirects_with_access_denied(pair: Pair) {
    let Some(app) = TestApp::spawn(pair).await else { return };
    let (id, _) = app.confidential(&["authorization_code"]).await;
    app.create_user("gina", "gina's long password").await;
    let browser = app.browser();
    let login = browser
        .get(&format!(
            "/oauth2/authorize?response_type=code&client_id={id}&redirect_uri={}&scope=openid&state=st",
            encode(CALLBACK)
        ))
        .await;
    let consent = browser.submit(&login, "/login", &[("username", "gina"), ("password", "gina's long password")]).await;
    assert!(consent.text.contains("Test App") && consent.text.contains("gina"), "{}", consent.text);
    let denied = browser.submit(&consent, "/consent", &[("decision", "deny")]).await;
    assert_eq!(denied.status, StatusCode::SEE_OTHER);
    let p = params_of(&denied.location(), false);
    assert_eq!(param(&p, "error").as_deref(), Some("access_denied"));
    assert_eq!(param(&p, "state").as_deref(), Some("st"));
    app.stop().await;
}

async fn implicit_clients_get_the_token_in_the_fragment(pair: Pair) {
    let Some(app) = TestApp::spawn(pair).await else { return };
    let mut spec = client_spec(&["authorization_code"], false);
    spec.allow_implicit = true;
    let (id, _) = app.create_client(spec).await;
    app.create_user("hana", "hana's long password").await;
    let done = app
        .browser()
        .login_and_consent(
            &format!(
                "/oauth2/authorize?response_type=token&client_id={id}&redirect_uri={}&scope=api&state=i1",
                encode(CALLBACK)
            ),
            "hana",
            "hana's long password",
        )
        .await;
    assert_eq!(done.status, StatusCode::SEE_OTHER, "{}", done.text);
    let p = params_of(&done.location(), true);
    assert!(param(&p, "access_token").is_some(), "{}", done.location());
    assert!(param(&p, "refresh_token").is_none());
    assert_eq!(param(&p, "state").as_deref(), Some("i1"));
    app.stop().await;
}

async fn pages_refuse_forms_without_the_csrf_token_and_send_security_headers(pair: Pair) {
    let Some(app) = TestApp::spawn(pair).await else { return };
    let (id, _) = app.confidential(&["authorization_code"]).await;
    app.create_user("ivan", "ivan's long password").await;
    let browser = app.browser();
    let login = browser
        .get(&format!("/oauth2/authorize?response_type=code&client_id={id}&redirect_uri={}", encode(CALLBACK)))
        .await;
    assert_eq!(login.status, StatusCode::OK);
    assert!(login.content_type().starts_with("text/html"));
    assert_eq!(login.header("x-frame-options"), "DENY");
    let csp = login.header("content-security-policy");
    assert!(csp.contains("default-src 'none'") && csp.contains("frame-ancestors 'none'"), "{csp}");
    assert_eq!(login.header("cache-control"), "no-store");
    let csrf_cookie = login
        .headers
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        .find(|c| c.starts_with("tessera_csrf="));
    let csrf_cookie = csrf_cookie.expect("a CSRF cookie");
    assert!(csrf_cookie.contains("HttpOnly") && csrf_cookie.contains("SameSite=Lax"), "{csrf_cookie}");

    let forged = browser
        .submit(
            &login,
            "/login",
            &[("username", "ivan"), ("password", "ivan's long password"), ("csrf_token", "forged")],
        )
        .await;
    assert_eq!(forged.status, StatusCode::FORBIDDEN);
    // Another browser (no CSRF cookie) replaying the form is refused too.
    let other =
        app.browser().submit(&login, "/login", &[("username", "ivan"), ("password", "ivan's long password")]).await;
    assert_eq!(other.status, StatusCode::FORBIDDEN);
    for (path, fields) in [
        ("/consent", vec![("decision", "approve")]),
        ("/device", vec![("user_code", "BCDF-GHJK")]),
        ("/logout", vec![]),
    ] {
        let a = app.browser().submit(&login, path, &fields).await;
        assert_eq!(a.status, StatusCode::FORBIDDEN, "{path}");
    }

    let consent = browser.submit(&login, "/login", &[("username", "ivan"), ("password", "ivan's long password")]).await;
    let session_cookie = consent
        .headers
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        .find(|c| c.starts_with("tessera_session="))
        .expect("a session cookie");
    assert!(session_cookie.contains("HttpOnly") && session_cookie.contains("SameSite=Lax"), "{session_cookie}");
    assert!(!session_cookie.contains("Secure"), "plain http public URL: {session_cookie}");

    let css = app.get("/static/tessera.css").await;
    assert_eq!(css.status, StatusCode::OK);
    assert!(css.content_type().starts_with("text/css"));
    app.stop().await;
}

async fn a_wrong_password_shows_the_login_page_again(pair: Pair) {
    let Some(app) = TestApp::spawn(pair).await else { return };
    let (id, _) = app.confidential(&["authorization_code"]).await;
    app.create_user("judy", "judy's long password").await;
    let browser = app.browser();
    let login = browser
        .get(&format!("/oauth2/authorize?response_type=code&client_id={id}&redirect_uri={}", encode(CALLBACK)))
        .await;
    let again = browser.submit(&login, "/login", &[("username", "judy"), ("password", "wrong")]).await;
    assert_eq!(again.status, StatusCode::UNAUTHORIZED);
    assert!(again.text.contains("role=\"alert\"") && again.text.contains("value=\"judy\""), "{}", again.text);
    assert!(!again.text.contains("wrong"), "the password is not echoed");
    let consent = browser.submit(&again, "/login", &[("username", "judy"), ("password", "judy's long password")]).await;
    assert!(consent.text.contains("name=\"decision\""), "{}", consent.text);
    app.stop().await;
}

/// DESIGN.md rule 8: a person (or script) guessing on the login page from one address is
/// slowed: the form comes back as a 503 with `Retry-After` and says how long to wait.
async fn guessing_on_the_login_page_is_slowed_with_a_503_that_says_how_long(pair: Pair) {
    let Some(app) = TestApp::spawn(pair).await else { return };
    let (id, _) = app.confidential(&["authorization_code"]).await;
    app.create_user("kim", "kim's long password").await;
    let browser = app.browser();
    let login = browser
        .get(&format!("/oauth2/authorize?response_type=code&client_id={id}&redirect_uri={}", encode(CALLBACK)))
        .await;
    let mut page = login;
    for guess in 1..=5 {
        page = browser.submit(&page, "/login", &[("username", "kim"), ("password", "guess")]).await;
        assert_eq!(page.status, StatusCode::UNAUTHORIZED, "guess {guess} is only refused: {}", page.text);
    }
    let slowed = browser.submit(&page, "/login", &[("username", "kim"), ("password", "kim's long password")]).await;
    assert_eq!(slowed.status, StatusCode::SERVICE_UNAVAILABLE, "{}", slowed.text);
    assert!(slowed.text.contains("Too many attempts; wait 1 second"), "{}", slowed.text);
    assert_eq!(slowed.header("retry-after"), "1");
    assert!(slowed.text.contains("value=\"kim\""), "the form is shown again: {}", slowed.text);
    tokio::time::sleep(std::time::Duration::from_millis(1_100)).await;
    let consent = browser.submit(&slowed, "/login", &[("username", "kim"), ("password", "kim's long password")]).await;
    assert!(consent.text.contains("name=\"decision\""), "after the wait the right password works: {}", consent.text);
    app.stop().await;
}

async fn readiness_follows_the_token_service_and_its_absence_is_a_503_json(pair: Pair) {
    let Some(mut app) = TestApp::spawn(pair).await else { return };
    let (id, secret) = app.confidential(&["client_credentials"]).await;
    assert_eq!(app.get("/healthz").await.status, StatusCode::OK);
    let ready = app.get("/readyz").await;
    assert_eq!(ready.status, StatusCode::OK, "{}", ready.text);
    app.stop_token_service().await;
    assert_eq!(app.get("/healthz").await.status, StatusCode::OK);
    app.get("/readyz").await.assert_error(503, "temporarily_unavailable");
    let t = app.post_form("/oauth2/token", &[("grant_type", "client_credentials")], Some((&id, &secret))).await;
    t.assert_error(503, "temporarily_unavailable");
    let page = app.get(&format!("/oauth2/authorize?response_type=code&client_id={id}")).await;
    assert_eq!(page.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(page.content_type().starts_with("text/html"));
    app.stop().await;
}
