//! `tessera-verifier` against a real token service: local verification, revocations followed
//! from the stream, failing closed or open while it is lost, key rotation, every signing
//! algorithm, and its layer in front of a tonic service.

use crate::flows::{cc, password, service_client, web_client};
use crate::harness::*;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tessera_proto::admin::v1 as adminpb;
use tessera_verifier::{Claims, Config, Rejection, RequireToken, Verifier, WhenDisconnected};
use tonic::transport::Channel;

const BOUND: Duration = Duration::from_secs(3);

/// A verifier following `app` as a client of its own allowed to watch, with a heartbeat a second.
async fn verifier(app: &TestApp, tweak: impl FnOnce(&mut Config)) -> Verifier {
    let id = format!("rs-{}", tessera_testkit::unique());
    let me = app
        .client(ClientSpec {
            id: &id,
            grants: &["client_credentials"],
            scopes: "api",
            watch_revocations: true,
            ..Default::default()
        })
        .await;
    let mut cfg = Config::new("https://tessera.test", me.0, me.1);
    cfg.heartbeat = Duration::from_secs(1);
    tweak(&mut cfg);
    let channel = Channel::from_shared(format!("http://{}", app.addr)).unwrap().connect_lazy();
    let v = Verifier::start(channel, cfg);
    assert!(v.caught_up(Duration::from_secs(10)).await, "the verifier never caught up");
    v
}

async fn refused_within_bound(v: &Verifier, token: &str, what: &str) -> Rejection {
    let start = Instant::now();
    loop {
        match v.verify(token).await {
            Ok(_) => assert!(start.elapsed() < BOUND, "{what}: still accepted after {BOUND:?}"),
            Err(r) => return r,
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

pub async fn the_verifier_accepts_valid_tokens_and_refuses_revoked_ones_at_once(app: TestApp) {
    let v = verifier(&app, |_| {}).await;
    let svc = service_client(&app).await;
    let web = web_client(&app).await;
    let alice = app.user("alice", "alice-password").await;

    let t = app.issue(cc(&svc, "api read")).await.unwrap().access_token;
    let claims = v.verify(&t).await.unwrap();
    assert_eq!((claims.sub.as_str(), claims.client_id.as_str()), ("svc", "svc"));
    assert!(claims.has_scope("read") && !claims.has_scope("write"));
    assert!(!claims.is_user_token());
    assert_eq!(v.cached_tokens(), 1);
    assert!(v.verify_cached(&t).unwrap().is_ok(), "seen again: from the cache");

    // Not tokens of this issuer: each refused, none cached.
    // One character inside the signature (the last one may carry only padding bits).
    let mut tampered = t.clone().into_bytes();
    let at = tampered.len() - 10;
    tampered[at] = if tampered[at] == b'A' { b'B' } else { b'A' };
    let tampered = String::from_utf8(tampered).unwrap();
    assert_eq!(v.verify(&tampered).await.unwrap_err(), Rejection::Invalid("bad signature"));
    assert!(matches!(v.verify("a.b.c").await.unwrap_err(), Rejection::Invalid(_)));
    let id_token = app.issue(password(&web, "alice", "alice-password", "openid")).await.unwrap().id_token;
    assert_eq!(v.verify(&id_token).await.unwrap_err(), Rejection::Invalid("not an access token (typ)"));
    let elsewhere = verifier(&app, |c| c.audience = Some("https://other.example".into())).await;
    assert_eq!(elsewhere.verify(&t).await.unwrap_err(), Rejection::Invalid("another audience"));
    let other_issuer = verifier(&app, |c| c.issuer = "https://other.example".into()).await;
    assert!(matches!(other_issuer.verify(&t).await.unwrap_err(), Rejection::Invalid(_)));
    assert_eq!(v.cached_tokens(), 1);

    // Revoked at the token service: refused here, though cached.
    app.revoke(&t, &svc).await;
    assert_eq!(refused_within_bound(&v, &t, "revoked").await, Rejection::Revoked);
    assert_eq!(v.revocations().len().0, 1);

    // A user disabled: the user's tokens go, the client's own stay.
    let users = app.issue(password(&web, "alice", "alice-password", "api")).await.unwrap().access_token;
    let own = app.issue(cc(&svc, "api")).await.unwrap().access_token;
    assert_eq!(v.verify(&users).await.unwrap().sub, alice);
    app.admin()
        .await
        .set_user_disabled(adminpb::SetUserDisabledRequest { username: "alice".into(), disabled: true })
        .await
        .unwrap();
    assert_eq!(refused_within_bound(&v, &users, "user disabled").await, Rejection::Revoked);
    assert!(v.verify(&own).await.is_ok());

    // The client's secret replaced: every token it had goes.
    app.admin()
        .await
        .rotate_client_secret(adminpb::RotateClientSecretRequest { client_id: svc.0.clone() })
        .await
        .unwrap();
    assert_eq!(refused_within_bound(&v, &own, "client secret replaced").await, Rejection::Revoked);
}

pub async fn while_the_stream_is_lost_the_verifier_fails_closed_or_open_as_configured(mut app: TestApp) {
    let closed = verifier(&app, |c| c.max_disconnected = Duration::from_secs(1)).await;
    let open = verifier(&app, |c| {
        c.max_disconnected = Duration::from_secs(1);
        c.when_disconnected = WhenDisconnected::FailOpen;
    })
    .await;
    let svc = service_client(&app).await;
    let t = app.issue(cc(&svc, "api")).await.unwrap().access_token;
    assert!(closed.verify(&t).await.is_ok() && open.verify(&t).await.is_ok());

    // The token service goes away (on a port it will come back on).
    app.settings.grpc.listen = app.addr;
    // The bound is at least three heartbeats (3 s), counted from the last one heard (at most
    // 1 s before the shutdown).
    let start = Instant::now();
    app.app.take().unwrap().shutdown().await.unwrap();
    while closed.verify(&t).await.is_ok() {
        assert!(start.elapsed() < Duration::from_secs(10), "fail closed did not close");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(closed.verify(&t).await.unwrap_err(), Rejection::Unavailable);
    assert!(start.elapsed() >= Duration::from_secs(1), "not before the bound: {:?}", start.elapsed());
    assert!(open.verify(&t).await.is_ok(), "fail open accepts on the signature alone");

    // Back: the verifier reconnects by itself and accepts again.
    app.restart().await;
    let start = Instant::now();
    while closed.verify(&t).await.is_err() {
        assert!(start.elapsed() < Duration::from_secs(10), "never reconnected");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn jwks_fetches(app: &TestApp) -> u64 {
    let addr = app.app.as_ref().unwrap().metrics_addr().unwrap();
    let text = reqwest::get(format!("http://{addr}/metrics")).await.unwrap().text().await.unwrap();
    text.lines()
        .filter(|l| l.starts_with("tessera_grpc_requests_total") && l.contains(r#"rpc="GetJwks""#))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

pub async fn a_rotated_key_is_fetched_once_and_made_up_key_ids_cannot_flood_the_service(app: TestApp) {
    let v = verifier(&app, |_| {}).await;
    let svc = service_client(&app).await;
    let before = app.issue(cc(&svc, "api")).await.unwrap().access_token;
    assert!(v.verify(&before).await.is_ok());
    app.admin().await.rotate_signing_key(adminpb::RotateSigningKeyRequest {}).await.unwrap();
    let after = app.issue(cc(&svc, "api")).await.unwrap().access_token;
    assert_ne!(jwt_parts(&before).0["kid"], jwt_parts(&after).0["kid"]);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert!(v.verify(&after).await.is_ok(), "the new key is fetched on its first token");
    assert!(v.verify(&before).await.is_ok(), "the old key still verifies");

    // Tokens naming keys that do not exist, at once: one fetch for all of them.
    use base64::Engine as _;
    let b64 = |v: serde_json::Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let fetched = jwks_fetches(&app).await;
    let forged: Vec<String> = (0..200)
        .map(|i| {
            format!(
                "{}.{}.c2ln",
                b64(serde_json::json!({"alg": "ES256", "typ": "at+jwt", "kid": format!("k{i}")})),
                b64(serde_json::json!({}))
            )
        })
        .collect();
    let answers = futures::future::join_all(forged.iter().map(|t| v.verify(t))).await;
    assert!(answers.iter().all(|a| *a == Err(Rejection::Invalid("unknown key"))));
    let more = jwks_fetches(&app).await - fetched;
    assert!(more <= 1, "{more} fetches for 200 made-up key ids at once");
}

async fn signs_with(alg: &str) {
    let Some(app) = TestApp::spawn_with(Pair::SqliteMemory, |s| {
        s.tokens.signing_alg = tessera_crypto::keys::Algorithm::parse(alg).unwrap()
    })
    .await
    else {
        return;
    };
    let v = verifier(&app, |_| {}).await;
    let svc = service_client(&app).await;
    let t = app.issue(cc(&svc, "api")).await.unwrap().access_token;
    assert_eq!(jwt_parts(&t).0["alg"], alg);
    assert_eq!(v.verify(&t).await.unwrap().client_id, "svc");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_verifier_checks_es256_eddsa_and_rs256_tokens() {
    for alg in ["ES256", "EdDSA", "RS256"] {
        signs_with(alg).await;
    }
}

pub async fn the_layer_guards_a_tonic_service_and_hands_it_the_claims(app: TestApp) {
    use tonic_health::pb::health_client::HealthClient;
    use tonic_health::pb::HealthCheckRequest;
    let v = verifier(&app, |_| {}).await;
    let svc = service_client(&app).await;
    let (mut reporter, health) = tonic_health::server::health_reporter();
    reporter.set_service_status("", tonic_health::ServingStatus::Serving).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .layer(RequireToken::new(v.clone()))
            .add_service(health)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    let channel = Channel::from_shared(format!("http://{addr}")).unwrap().connect().await.unwrap();
    let with = |token: Option<&str>| {
        let mut req = tonic::Request::new(HealthCheckRequest { service: String::new() });
        if let Some(t) = token {
            req.metadata_mut().insert("authorization", format!("Bearer {t}").parse().unwrap());
        }
        req
    };
    let refused = HealthClient::new(channel.clone()).check(with(None)).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unauthenticated);
    let refused = HealthClient::new(channel.clone()).check(with(Some("a.b.c"))).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unauthenticated);
    let t = app.issue(cc(&svc, "api")).await.unwrap().access_token;
    HealthClient::new(channel.clone()).check(with(Some(&t))).await.unwrap();
    app.revoke(&t, &svc).await;
    refused_within_bound(&v, &t, "revoked").await;
    let refused = HealthClient::new(channel.clone()).check(with(Some(&t))).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unauthenticated, "a revoked token through the layer");
    let t = app.issue(cc(&svc, "api")).await.unwrap().access_token;

    // The claims travel in the extensions; the scope helper answers by them.
    let mut ext = http::Extensions::new();
    let claims: Arc<Claims> = v.verify(&t).await.unwrap();
    ext.insert(Arc::clone(&claims));
    assert_eq!(tessera_verifier::require_scope(&ext, "api").unwrap(), claims);
    let denied = tessera_verifier::require_scope(&ext, "admin").unwrap_err();
    assert_eq!(denied.status().code(), tonic::Code::PermissionDenied);
    let res: http::Response<()> = denied.response();
    assert_eq!(res.status(), 403);
    assert_eq!(res.headers()["www-authenticate"], r#"Bearer error="insufficient_scope", scope="admin""#);
}

tessera_testkit::both_pairs!(crate::harness::with_app;
    the_verifier_accepts_valid_tokens_and_refuses_revoked_ones_at_once,
    while_the_stream_is_lost_the_verifier_fails_closed_or_open_as_configured,
    a_rotated_key_is_fetched_once_and_made_up_key_ids_cannot_flood_the_service,
    the_layer_guards_a_tonic_service_and_hands_it_the_claims,
);
