//! Every flow through the facade with the services logging at TRACE into a buffer: no client
//! secret, password, code, token, session handle or CSRF token used may appear in the log.

use crate::harness::*;
use reqwest::StatusCode;
use serde_json::json;

tessera_testkit::both_pairs!(crate::harness::with_pair; no_secret_code_token_or_password_reaches_the_log_at_trace);

fn set_cookie(a: &Answer, name: &str) -> Option<String> {
    a.headers
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(|c| c.strip_prefix(&format!("{name}=")).map(|rest| rest.split(';').next().unwrap_or("").to_owned()))
}

async fn no_secret_code_token_or_password_reaches_the_log_at_trace(pair: Pair) {
    let buffer = tessera_testkit::trace_log();
    let Some(app) = TestApp::spawn(pair).await else { return };
    let mut secrets = vec![ADMIN_TOKEN.to_owned()];
    let (id, secret) =
        app.confidential(&["client_credentials", "password", "refresh_token", "authorization_code"]).await;
    let (rs, rs_secret) = app.confidential(&["client_credentials"]).await;
    let password = "leak-test correct horse";
    app.create_user("lena", password).await;
    secrets.extend([secret.clone(), rs_secret.clone(), password.to_owned()]);
    let keep = |t: &serde_json::Value, secrets: &mut Vec<String>| {
        for k in ["access_token", "refresh_token", "id_token"] {
            if let Some(v) = t[k].as_str() {
                secrets.push(v.to_owned());
            }
        }
    };

    // Token endpoint: client credentials, password (JSON), refresh, and failures.
    let t = app
        .post_form("/oauth2/token", &[("grant_type", "client_credentials")], Some((&id, &secret)))
        .await
        .assert_tokens();
    keep(&t, &mut secrets);
    let body = json!({"grant_type": "password", "username": "lena", "password": password, "scope": "openid profile"});
    let t = app.post_json("/api/v4/oauth", &body.to_string(), Some((&id, &secret))).await.assert_tokens();
    keep(&t, &mut secrets);
    let refresh = t["refresh_token"].as_str().unwrap().to_owned();
    let t2 = app
        .post_form(
            "/oauth2/token",
            &[("grant_type", "refresh_token"), ("refresh_token", &refresh)],
            Some((&id, &secret)),
        )
        .await
        .assert_tokens();
    keep(&t2, &mut secrets);
    app.post_form(
        "/oauth2/token",
        &[("grant_type", "password"), ("username", "lena"), ("password", "wrong-leaky-pw")],
        Some((&id, &secret)),
    )
    .await
    .assert_error(400, "invalid_grant");
    app.post_form("/oauth2/token", &[("grant_type", "client_credentials")], Some((&id, "wrong-leaky-secret")))
        .await
        .assert_error(401, "invalid_client");
    secrets.extend(["wrong-leaky-pw".to_owned(), "wrong-leaky-secret".to_owned()]);

    // Introspection, userinfo, revocation.
    let access = t2["access_token"].as_str().unwrap().to_owned();
    assert_eq!(
        app.post_form("/oauth2/introspect", &[("token", &access)], Some((&rs, &rs_secret))).await.json()["active"],
        true
    );
    let ui =
        app.raw(reqwest::Method::GET, "/userinfo", &[("Authorization", &format!("Bearer {access}"))], vec![]).await;
    assert_eq!(ui.status, StatusCode::OK);
    app.post_form("/oauth2/revoke", &[("token", &refresh)], Some((&id, &secret))).await;

    // Authorization code with PKCE through the pages.
    let (verifier, challenge) = pkce();
    secrets.push(verifier.clone());
    let browser = app.browser();
    let login = browser
        .get(&format!(
            "/oauth2/authorize?response_type=code&client_id={id}&redirect_uri={}&scope=openid&code_challenge={challenge}&code_challenge_method=S256",
            encode(CALLBACK)
        ))
        .await;
    secrets.extend(set_cookie(&login, "tessera_csrf"));
    let consent = browser.submit(&login, "/login", &[("username", "lena"), ("password", password)]).await;
    secrets.push(set_cookie(&consent, "tessera_session").expect("a session"));
    let done = browser.submit(&consent, "/consent", &[("decision", "approve")]).await;
    let code = param(&params_of(&done.location(), false), "code").expect("a code");
    secrets.push(code.clone());
    let t = app
        .post_form(
            "/oauth2/token",
            &[
                ("grant_type", "authorization_code"),
                ("code", &code),
                ("redirect_uri", CALLBACK),
                ("code_verifier", &verifier),
            ],
            Some((&id, &secret)),
        )
        .await
        .assert_tokens();
    keep(&t, &mut secrets);

    // Device flow through the verification page.
    let mut spec = client_spec(&["device_code"], true);
    spec.name = "Leaky TV".into();
    let (device_client, _) = app.create_client(spec).await;
    let d = app.post_form("/oauth2/device_authorization", &[("client_id", &device_client)], None).await.json();
    let device_code = d["device_code"].as_str().unwrap().to_owned();
    secrets.push(device_code.clone());
    let entry = browser.get("/device").await;
    let confirm = browser.submit(&entry, "/device", &[("user_code", d["user_code"].as_str().unwrap())]).await;
    let approved = browser.submit(&confirm, "/device", &[("action", "approve")]).await;
    assert!(approved.text.contains("Device connected"), "{}", approved.text);
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let t = app
        .post_form(
            "/oauth2/token",
            &[
                ("grant_type", "urn:ietf:params:oauth:grant-type:device_code"),
                ("device_code", &device_code),
                ("client_id", &device_client),
            ],
            None,
        )
        .await
        .assert_tokens();
    keep(&t, &mut secrets);
    app.stop().await;

    let log = buffer.contents();
    // The capture is real: the facade's per-request events and the token service's spans are in it.
    assert!(log.contains("answered") && log.contains("IssueToken"), "the log was not captured");
    let leaked: Vec<String> = secrets
        .iter()
        .filter(|s| s.len() >= 8 && log.contains(s.as_str()))
        .map(|s| format!("{}…", s.chars().take(12).collect::<String>()))
        .collect();
    assert!(leaked.is_empty(), "secrets in the log: {leaked:?}");
}
