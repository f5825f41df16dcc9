//! Revocation cascades (DESIGN.md rule 9): disabling a user, setting a password, rotating a
//! client's secret and deleting a client revoke what they held, on this node at once and on
//! every other node within a poll of the durable revocation log — whether or not the fan-out
//! reaches it.

use crate::flows::{authorize, authz, cc, code_for, exchange, login, password, refresh, service_client, web_client};
use crate::harness::*;
use std::time::{Duration, Instant};
use tessera_core::ErrorCode;
use tessera_proto::admin::v1 as adminpb;
use tessera_proto::token::v1 as pb;
use tessera_proto::token::v1::authorize_response::Outcome;
use tessera_proto::token::v1::token_service_client::TokenServiceClient;
use tonic::transport::Channel;

/// How long another node may take to hear of a revocation: a few polls of the log.
pub(crate) const PROPAGATION: Duration = Duration::from_secs(3);

pub(crate) async fn active_on(node: &mut TokenServiceClient<Channel>, token: &str, caller: &(String, String)) -> bool {
    node.introspect(pb::IntrospectRequest {
        token: token.into(),
        token_type_hint: String::new(),
        client_id: caller.0.clone(),
        client_secret: caller.1.clone(),
    })
    .await
    .unwrap()
    .into_inner()
    .active
}

/// Waits until `token` is inactive on `node`; fails after [`PROPAGATION`].
pub(crate) async fn until_inactive_on(
    node: &mut TokenServiceClient<Channel>,
    token: &str,
    caller: &(String, String),
    what: &str,
) -> Duration {
    let start = Instant::now();
    while active_on(node, token, caller).await {
        assert!(start.elapsed() < PROPAGATION, "{what}: still active on the other node after {PROPAGATION:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    start.elapsed()
}

pub async fn disabling_a_user_revokes_their_tokens_on_every_node(app: TestApp) {
    let web = web_client(&app).await;
    app.user("alice", "alice-password").await;
    app.user("bob", "bob-password").await;
    let (_node_b, mut b) = app.second_node().await;
    let t = app.issue(password(&web, "alice", "alice-password", "openid")).await.unwrap();
    let bobs = app.issue(password(&web, "bob", "bob-password", "openid")).await.unwrap();
    assert!(active_on(&mut b, &t.access_token, &web).await);
    assert!(active_on(&mut b, &t.refresh_token, &web).await);

    let disable = |disabled| adminpb::SetUserDisabledRequest { username: "alice".into(), disabled };
    app.admin().await.set_user_disabled(disable(true)).await.unwrap();
    assert!(!app.introspect(&t.access_token, (&web.0, &web.1)).await.active, "at once on the node that disabled");
    assert!(!app.introspect(&t.refresh_token, (&web.0, &web.1)).await.active, "a disabled user's refresh token");
    until_inactive_on(&mut b, &t.access_token, &web, "a disabled user's access token").await;
    assert!(!active_on(&mut b, &t.refresh_token, &web).await);
    let refused = b.issue_token(refresh(&web, &t.refresh_token, "")).await;
    assert_oauth(refused, ErrorCode::InvalidGrant, "refreshing a disabled user's token");
    let userinfo = b.user_info(pb::UserInfoRequest { access_token: t.access_token.clone() }).await;
    assert_oauth(userinfo, ErrorCode::InvalidToken, "userinfo for a disabled user's token");
    assert!(active_on(&mut b, &bobs.access_token, &web).await, "another user's tokens are untouched");

    // Enabled again in the same second: the old tokens stay dead, a new sign-in works everywhere.
    app.admin().await.set_user_disabled(disable(false)).await.unwrap();
    assert!(!app.introspect(&t.access_token, (&web.0, &web.1)).await.active, "enabling revives nothing");
    let again = app.issue(password(&web, "alice", "alice-password", "openid")).await.unwrap();
    assert!(app.introspect(&again.access_token, (&web.0, &web.1)).await.active);
    assert!(active_on(&mut b, &again.access_token, &web).await);
    assert!(b.issue_token(refresh(&web, &again.refresh_token, "")).await.is_ok());
}

pub async fn setting_a_password_revokes_the_old_tokens_and_the_new_password_signs_in_at_once(app: TestApp) {
    let web = web_client(&app).await;
    app.user("alice", "alice-password").await;
    let (_node_b, mut b) = app.second_node().await;
    let old = app.issue(password(&web, "alice", "alice-password", "")).await.unwrap();
    app.admin()
        .await
        .set_user_password(adminpb::SetUserPasswordRequest {
            username: "alice".into(),
            password: "new-password".into(),
        })
        .await
        .unwrap();
    assert!(!app.introspect(&old.access_token, (&web.0, &web.1)).await.active);
    until_inactive_on(&mut b, &old.access_token, &web, "a token from before the password change").await;
    assert_oauth(
        b.issue_token(refresh(&web, &old.refresh_token, "")).await,
        ErrorCode::InvalidGrant,
        "a refresh token from before the password change",
    );
    let new = app.issue(password(&web, "alice", "new-password", "")).await.unwrap();
    assert!(active_on(&mut b, &new.access_token, &web).await, "issued after the change, in the same second");
}

pub async fn rotating_a_client_secret_revokes_its_tokens_and_every_node_takes_the_new_secret(app: TestApp) {
    let svc = service_client(&app).await;
    let rs =
        app.client(ClientSpec { id: "resource-server", grants: &["client_credentials"], ..Default::default() }).await;
    let (_node_b, mut b) = app.second_node().await;
    let t = app.issue(cc(&svc, "")).await.unwrap();
    // Node B has the client cached now.
    assert!(b.issue_token(cc(&svc, "")).await.is_ok());
    let secret = app
        .admin()
        .await
        .rotate_client_secret(adminpb::RotateClientSecretRequest { client_id: svc.0.clone() })
        .await
        .unwrap()
        .into_inner()
        .client_secret;
    let rotated = (svc.0.clone(), secret);
    assert!(!app.introspect(&t.access_token, (&rotated.0, &rotated.1)).await.active);
    until_inactive_on(&mut b, &t.access_token, &rs, "a token issued under the old secret").await;
    // The test clock stands still, so no cache entry times out: only the revocation can have
    // dropped the old client from node B's cache.
    assert_oauth(b.issue_token(cc(&svc, "")).await, ErrorCode::InvalidClient, "the old secret on node B");
    let fresh = b.issue_token(cc(&rotated, "")).await.unwrap().into_inner();
    assert!(app.introspect(&fresh.access_token, (&rotated.0, &rotated.1)).await.active);
}

pub async fn deleting_a_client_revokes_its_tokens_everywhere_and_its_id_is_never_reused(app: TestApp) {
    let svc = service_client(&app).await;
    let web = web_client(&app).await;
    app.user("alice", "alice-password").await;
    let (_node_b, mut b) = app.second_node().await;
    let t = app.issue(cc(&svc, "")).await.unwrap();
    let user_tokens = app.issue(password(&web, "alice", "alice-password", "")).await.unwrap();
    assert!(b.issue_token(cc(&svc, "")).await.is_ok(), "node B has the client cached");

    app.admin().await.delete_client(adminpb::DeleteClientRequest { client_id: svc.0.clone() }).await.unwrap();
    assert!(!app.introspect(&t.access_token, (&web.0, &web.1)).await.active);
    until_inactive_on(&mut b, &t.access_token, &web, "a deleted client's token").await;
    assert_oauth(b.issue_token(cc(&svc, "")).await, ErrorCode::InvalidClient, "a deleted client on node B");
    assert!(active_on(&mut b, &user_tokens.access_token, &web).await, "other clients' tokens are untouched");

    let again = app
        .admin()
        .await
        .create_client(adminpb::CreateClientRequest {
            client_id: svc.0.clone(),
            name: "impostor".into(),
            grant_types: vec!["client_credentials".into()],
            ..Default::default()
        })
        .await;
    let s = again.expect_err("a deleted client's id cannot be registered again");
    assert!(s.message().contains("deleted"), "a clear reason: {}", s.message());

    // Deleting the web client kills its users' refresh tokens too.
    app.admin().await.delete_client(adminpb::DeleteClientRequest { client_id: web.0.clone() }).await.unwrap();
    let other = app.client(ClientSpec { id: "other", grants: &["client_credentials"], ..Default::default() }).await;
    assert!(!app.introspect(&user_tokens.access_token, (&other.0, &other.1)).await.active);
    until_inactive_on(&mut b, &user_tokens.access_token, &other, "a deleted client's user token").await;
}

pub async fn a_new_password_ends_sign_ins_and_codes_from_before_it(app: TestApp) {
    let web = web_client(&app).await;
    app.user("alice", "alice-password").await;
    let (verifier, challenge) = pkce_pair();
    let code = code_for(&app, "web", &challenge).await;
    let session = login(&app, "alice", "alice-password").await;
    app.admin()
        .await
        .set_user_password(adminpb::SetUserPasswordRequest {
            username: "alice".into(),
            password: "new-password".into(),
        })
        .await
        .unwrap();
    assert!(
        matches!(authorize(&app, authz("web", &challenge, &session)).await, Outcome::LoginRequired(_)),
        "a sign-in from before the new password is over"
    );
    assert_oauth(
        app.token.clone().exchange_code(exchange(&web, &code, &verifier)).await,
        ErrorCode::InvalidGrant,
        "a code from a sign-in before the new password",
    );
    // Signing in again, in the same second, works.
    let fresh = login(&app, "alice", "new-password").await;
    assert!(matches!(authorize(&app, authz("web", &challenge, &fresh)).await, Outcome::RedirectTo(_)));
}
