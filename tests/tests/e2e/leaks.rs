//! Runs every flow with TRACE logging into a buffer and asserts that no secret, password,
//! code, token or session handle used in it appears anywhere in the log.

use crate::harness::*;
use tessera_proto::token::v1 as pb;

async fn run_every_flow(pair: Pair) {
    let buffer = tessera_testkit::trace_log();
    let Some(app) = TestApp::spawn(pair).await else { return };
    let mut secrets: Vec<String> = vec![ADMIN_TOKEN.to_owned()];
    let svc = app.client(ClientSpec { id: "svc", grants: &["client_credentials"], ..Default::default() }).await;
    let web = app
        .client(ClientSpec {
            id: "web",
            grants: &["authorization_code", "refresh_token", "password", "device_code"],
            redirect_uris: &["https://app.example/cb"],
            ..Default::default()
        })
        .await;
    secrets.extend([svc.1.clone(), web.1.clone()]);
    let password = "correct-horse-battery-staple";
    app.user("alice", password).await;
    secrets.push(password.to_owned());
    let mut c = app.token.clone();

    let t = app
        .issue(pb::IssueTokenRequest {
            grant_type: "client_credentials".into(),
            client_id: svc.0.clone(),
            client_secret: svc.1.clone(),
            ..Default::default()
        })
        .await
        .unwrap();
    secrets.push(t.access_token.clone());
    app.introspect(&t.access_token, (&svc.0, &svc.1)).await;
    let p = app
        .issue(pb::IssueTokenRequest {
            grant_type: "password".into(),
            client_id: web.0.clone(),
            client_secret: web.1.clone(),
            username: "alice".into(),
            password: password.into(),
            scope: "openid profile".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    secrets.extend([p.access_token.clone(), p.refresh_token.clone(), p.id_token.clone()]);
    let wrong = "wrong-password-that-must-not-leak";
    let _ = app
        .issue(pb::IssueTokenRequest {
            grant_type: "password".into(),
            client_id: web.0.clone(),
            client_secret: web.1.clone(),
            username: "alice".into(),
            password: wrong.into(),
            ..Default::default()
        })
        .await;
    secrets.push(wrong.to_owned());
    let r = app
        .issue(pb::IssueTokenRequest {
            grant_type: "refresh_token".into(),
            client_id: web.0.clone(),
            client_secret: web.1.clone(),
            refresh_token: p.refresh_token.clone(),
            ..Default::default()
        })
        .await
        .unwrap();
    secrets.extend([r.access_token.clone(), r.refresh_token.clone()]);
    // Reuse: an audit event, and a family revocation.
    let _ = app
        .issue(pb::IssueTokenRequest {
            grant_type: "refresh_token".into(),
            client_id: web.0.clone(),
            client_secret: web.1.clone(),
            refresh_token: p.refresh_token.clone(),
            ..Default::default()
        })
        .await;

    let session = c
        .authenticate(pb::AuthenticateRequest { username: "alice".into(), password: password.into() })
        .await
        .unwrap()
        .into_inner()
        .session;
    secrets.push(session.clone());
    let (verifier, challenge) = pkce_pair();
    secrets.push(verifier.clone());
    let to = c
        .authorize(pb::AuthorizeRequest {
            response_type: "code".into(),
            client_id: web.0.clone(),
            redirect_uri: "https://app.example/cb".into(),
            scope: "openid".into(),
            state: "s".into(),
            code_challenge: challenge,
            code_challenge_method: "S256".into(),
            session: session.clone(),
            consent: pb::ConsentDecision::Approve as i32,
            max_age: -1,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let Some(pb::authorize_response::Outcome::RedirectTo(to)) = to.outcome else { panic!("no redirect") };
    let code = redirect_params(&to)["code"].clone();
    secrets.push(code.clone());
    let ex = |code: String| pb::ExchangeCodeRequest {
        client_id: web.0.clone(),
        client_secret: web.1.clone(),
        code,
        redirect_uri: "https://app.example/cb".into(),
        code_verifier: verifier.clone(),
    };
    let e = c.exchange_code(ex(code.clone())).await.unwrap().into_inner();
    secrets.extend([e.access_token.clone(), e.refresh_token.clone()]);
    let _ = c.exchange_code(ex(code)).await; // replay: audit event and revocations

    let d = c
        .start_device_authorization(pb::DeviceAuthorizationRequest {
            client_id: web.0.clone(),
            client_secret: web.1.clone(),
            scope: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    secrets.push(d.device_code.clone());
    let _ = c
        .poll_device(pb::PollDeviceRequest {
            client_id: web.0.clone(),
            client_secret: web.1.clone(),
            device_code: d.device_code.clone(),
        })
        .await;
    c.approve_device(pb::ApproveDeviceRequest { user_code: d.user_code.clone(), session: session.clone() })
        .await
        .unwrap();
    app.clock.advance_secs(6);
    let dt = c
        .poll_device(pb::PollDeviceRequest {
            client_id: web.0.clone(),
            client_secret: web.1.clone(),
            device_code: d.device_code.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    secrets.extend([dt.access_token.clone(), dt.refresh_token.clone()]);
    let _ = c.user_info(pb::UserInfoRequest { access_token: dt.access_token.clone() }).await;
    c.revoke(pb::RevokeRequest {
        token: dt.refresh_token.clone(),
        client_id: web.0.clone(),
        client_secret: web.1.clone(),
        ..Default::default()
    })
    .await
    .unwrap();
    let _ = c
        .revoke(pb::RevokeRequest {
            token: t.access_token.clone(),
            client_id: web.0.clone(),
            client_secret: web.1.clone(),
            ..Default::default()
        })
        .await;
    let mut admin = app.admin().await;
    let rotated = admin
        .rotate_client_secret(tessera_proto::admin::v1::RotateClientSecretRequest { client_id: "svc".into() })
        .await
        .unwrap()
        .into_inner()
        .client_secret;
    secrets.push(rotated);
    drop(app);

    let log = buffer.contents();
    assert!(log.lines().count() > 50, "the log must have captured the flows ({} lines)", log.lines().count());
    assert!(log.contains("tessera::audit"), "security events are logged");
    for secret in secrets.iter().filter(|s| !s.is_empty()) {
        if let Some(pos) = log.find(secret.as_str()) {
            let line = log[..pos].lines().count();
            panic!("a secret of {} characters appears in the log at line {line}", secret.len());
        }
        // A JWT's signature alone identifies it too.
        if let Some(sig) = secret.rsplit('.').next().filter(|s| s.len() > 40 && secret.contains('.')) {
            assert!(!log.contains(sig), "a token signature appears in the log");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn no_secret_reaches_the_trace_log_with_sqlite_and_memory() {
    run_every_flow(Pair::SqliteMemory).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn no_secret_reaches_the_trace_log_with_postgres_and_redis() {
    run_every_flow(Pair::PostgresRedis).await;
}
