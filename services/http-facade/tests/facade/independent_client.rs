//! An OAuth client library written by others (the `oauth2` crate) against the facade: its
//! idea of RFC 6749 / 7636 / 7662 / 8628 (Basic with form-encoded credentials, form bodies,
//! response parsing, device polling) must agree with ours. Revocation is left out: the
//! library refuses a plain-http revocation URL.

use crate::harness::*;
use oauth2::basic::BasicClient;
use oauth2::{
    AuthUrl, AuthorizationCode, ClientId, ClientSecret, CsrfToken, DeviceAuthorizationUrl, IntrospectionUrl,
    PkceCodeChallenge, RedirectUrl, ResourceOwnerPassword, ResourceOwnerUsername, Scope,
    StandardDeviceAuthorizationResponse, TokenIntrospectionResponse as _, TokenResponse as _, TokenUrl,
};

tessera_testkit::both_pairs!(crate::harness::with_pair; an_independent_oauth2_client_library_completes_every_grant);

async fn an_independent_oauth2_client_library_completes_every_grant(pair: Pair) {
    let Some(app) = TestApp::spawn(pair).await else { return };
    let (id, secret) =
        app.confidential(&["client_credentials", "password", "refresh_token", "authorization_code"]).await;
    app.create_user("kim", "kim's long password").await;
    let http = plain_client();
    let client = BasicClient::new(ClientId::new(id.clone()))
        .set_client_secret(ClientSecret::new(secret.clone()))
        .set_auth_uri(AuthUrl::new(app.url("/oauth2/authorize")).unwrap())
        .set_token_uri(TokenUrl::new(app.url("/oauth2/token")).unwrap())
        .set_redirect_uri(RedirectUrl::new(CALLBACK.into()).unwrap())
        .set_introspection_url(IntrospectionUrl::new(app.url("/oauth2/introspect")).unwrap());

    let cc = client
        .exchange_client_credentials()
        .add_scope(Scope::new("api".into()))
        .request_async(&http)
        .await
        .expect("client_credentials");
    assert!(cc.refresh_token().is_none());
    let introspected = client.introspect(cc.access_token()).request_async(&http).await.expect("introspection");
    assert!(introspected.active());
    assert_eq!(introspected.client_id().map(|c| c.as_str()), Some(id.as_str()));

    let pw = client
        .exchange_password(
            &ResourceOwnerUsername::new("kim".into()),
            &ResourceOwnerPassword::new("kim's long password".into()),
        )
        .add_scope(Scope::new("openid".into()))
        .request_async(&http)
        .await
        .expect("password");
    let refreshed = client
        .exchange_refresh_token(pw.refresh_token().expect("a refresh token"))
        .request_async(&http)
        .await
        .expect("refresh_token");
    assert_ne!(refreshed.access_token().secret(), pw.access_token().secret());
    let wrong = client
        .exchange_password(&ResourceOwnerUsername::new("kim".into()), &ResourceOwnerPassword::new("nope".into()))
        .request_async(&http)
        .await;
    match wrong {
        Err(oauth2::RequestTokenError::ServerResponse(e)) => {
            assert_eq!(e.error(), &oauth2::basic::BasicErrorResponseType::InvalidGrant)
        }
        other => panic!("expected invalid_grant, got {other:?}"),
    }

    let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
    let (url, state) = client
        .authorize_url(CsrfToken::new_random)
        .add_scope(Scope::new("openid".into()))
        .set_pkce_challenge(challenge)
        .url();
    let done = app.browser().login_and_consent(url.as_str(), "kim", "kim's long password").await;
    let back = params_of(&done.location(), false);
    assert_eq!(param(&back, "state").as_deref(), Some(state.secret().as_str()));
    let code = param(&back, "code").expect("a code");
    let tokens = client
        .exchange_code(AuthorizationCode::new(code))
        .set_pkce_verifier(verifier)
        .request_async(&http)
        .await
        .expect("authorization_code");
    assert!(tokens.refresh_token().is_some());

    // A public device client.
    let mut spec = client_spec(&["device_code"], true);
    spec.name = "Device App".into();
    let (device_id, _) = app.create_client(spec).await;
    let device = BasicClient::new(ClientId::new(device_id))
        .set_token_uri(TokenUrl::new(app.url("/oauth2/token")).unwrap())
        .set_device_authorization_url(DeviceAuthorizationUrl::new(app.url("/oauth2/device_authorization")).unwrap());
    let details: StandardDeviceAuthorizationResponse = device
        .exchange_device_code()
        .add_scope(Scope::new("profile".into()))
        .request_async(&http)
        .await
        .expect("device authorization");
    let browser = app.browser();
    let entry = browser.get(details.verification_uri_complete().expect("a complete URI").secret()).await;
    // The code field is a text input the person sees prefilled; a form post sends it.
    let login = browser.submit(&entry, "/device", &[("user_code", details.user_code().secret())]).await;
    let confirm = browser.submit(&login, "/login", &[("username", "kim"), ("password", "kim's long password")]).await;
    let approved = browser.submit(&confirm, "/device", &[("action", "approve")]).await;
    assert!(approved.text.contains("Device connected"), "{}", approved.text);
    let polled = device
        .exchange_device_access_token(&details)
        .request_async(&http, tokio::time::sleep, Some(std::time::Duration::from_secs(30)))
        .await
        .expect("device_code");
    assert!(!polled.access_token().secret().is_empty());
    app.stop().await;
}
