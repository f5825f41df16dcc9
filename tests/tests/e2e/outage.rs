//! Store outages, simulated by cutting a TCP proxy that stands between the service and the
//! real Postgres and Redis: requests that need the lost store fail with UNAVAILABLE
//! (`temporarily_unavailable`), what needs Redis fails closed, what needs neither keeps
//! working, and the service recovers on its own when the proxy is restored. While Postgres
//! is silent, the store's circuit breaker answers at once instead of waiting for a connection.

use crate::harness::*;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tessera_core::ErrorCode;
use tessera_proto::token::v1 as pb;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

/// A loopback TCP proxy that can be cut (every connection dropped, new ones refused at once),
/// stalled (every connection dropped, new ones accepted and never answered, as a host that
/// vanished from the network) and restored.
struct Proxy {
    addr: SocketAddr,
    up: Arc<AtomicBool>,
    silent: Arc<AtomicBool>,
    held: Arc<Mutex<Vec<TcpStream>>>,
    conns: Arc<Mutex<Vec<JoinHandle<()>>>>,
    accept: JoinHandle<()>,
}

impl Proxy {
    async fn start(target: &str) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let up = Arc::new(AtomicBool::new(true));
        let silent = Arc::new(AtomicBool::new(false));
        let held: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
        let conns: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let (up2, silent2, held2, conns2, target) =
            (Arc::clone(&up), Arc::clone(&silent), Arc::clone(&held), Arc::clone(&conns), target.to_owned());
        let accept = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                if !up2.load(Ordering::SeqCst) {
                    if silent2.load(Ordering::SeqCst) {
                        held2.lock().unwrap().push(inbound);
                    } else {
                        drop(inbound);
                    }
                    continue;
                }
                let target = target.clone();
                let task = tokio::spawn(async move {
                    if let Ok(mut outbound) = TcpStream::connect(&target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                conns2.lock().unwrap().push(task);
            }
        });
        Proxy { addr, up, silent, held, conns, accept }
    }

    fn cut(&self) {
        self.up.store(false, Ordering::SeqCst);
        for c in self.conns.lock().unwrap().drain(..) {
            c.abort();
        }
    }

    fn stall(&self) {
        self.silent.store(true, Ordering::SeqCst);
        self.cut();
    }

    fn restore(&self) {
        self.up.store(true, Ordering::SeqCst);
        self.silent.store(false, Ordering::SeqCst);
        self.held.lock().unwrap().clear();
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.cut();
        self.held.lock().unwrap().clear();
    }
}

/// Waits until the standard health service reports `expected` for the whole server.
async fn wait_for_health(health: &HealthClient<tonic::transport::Channel>, expected: ServingStatus) {
    eventually(Duration::from_secs(10), || {
        let mut h = health.clone();
        async move {
            let s = h.check(HealthCheckRequest { service: String::new() }).await.map_err(|e| e.to_string())?;
            let status = s.into_inner().status;
            if status == expected as i32 {
                Ok(())
            } else {
                Err(format!("status {status}, waiting for {expected:?}"))
            }
        }
    })
    .await;
}

/// Retries `f` until it succeeds or `within` passes.
async fn eventually<T, E: std::fmt::Debug, F: std::future::Future<Output = Result<T, E>>>(
    within: Duration,
    mut f: impl FnMut() -> F,
) -> T {
    let start = Instant::now();
    loop {
        match f().await {
            Ok(v) => return v,
            Err(e) if start.elapsed() > within => panic!("did not recover within {within:?}: {e:?}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_store_outage_gives_unavailable_fails_closed_and_recovers_by_itself() {
    let pg = Proxy::start("127.0.0.1:5432").await;
    let redis = Proxy::start("127.0.0.1:6379").await;
    let (pg_addr, redis_addr) = (pg.addr, redis.addr);
    let Some(app) = TestApp::spawn_with(Pair::PostgresRedis, |s| {
        s.database.url =
            Some(SecretUrl::database(&s.database_url().replace("127.0.0.1:5432", &pg_addr.to_string())).unwrap());
        s.redis.url = Some(SecretUrl::redis(&format!("redis://{redis_addr}")).unwrap());
    })
    .await
    else {
        return;
    };
    let (svc_id, svc_secret) =
        app.client(ClientSpec { id: "svc", grants: &["client_credentials"], ..Default::default() }).await;
    let (web_id, web_secret) = app
        .client(ClientSpec {
            id: "web",
            grants: &["password", "authorization_code", "refresh_token"],
            redirect_uris: &["https://app.example/cb"],
            skip_consent: true,
            ..Default::default()
        })
        .await;
    app.user("alice", "alice-password").await;
    let cc = pb::IssueTokenRequest {
        grant_type: "client_credentials".into(),
        client_id: svc_id.clone(),
        client_secret: svc_secret.clone(),
        ..Default::default()
    };
    let pw = pb::IssueTokenRequest {
        grant_type: "password".into(),
        client_id: web_id.clone(),
        client_secret: web_secret.clone(),
        username: "alice".into(),
        password: "alice-password".into(),
        ..Default::default()
    };
    let token = app.issue(cc.clone()).await.unwrap().access_token;

    // Redis down: nothing that needs a single-use check or a lockout counter is decided.
    redis.cut();
    let s =
        assert_oauth(app.issue(pw.clone()).await, ErrorCode::TemporarilyUnavailable, "password grant without Redis");
    assert_eq!(s.code(), tonic::Code::Unavailable);
    assert!(s.message().contains("unavailable"), "a clear message: {}", s.message());
    assert!(!s.message().contains(&redis_addr.to_string()), "no infrastructure detail in the message");
    let code = app
        .token
        .clone()
        .exchange_code(pb::ExchangeCodeRequest {
            client_id: web_id.clone(),
            client_secret: web_secret.clone(),
            code: "some-code".into(),
            redirect_uri: "https://app.example/cb".into(),
            code_verifier: String::new(),
        })
        .await;
    assert_oauth(code, ErrorCode::TemporarilyUnavailable, "code exchange without Redis");
    // What needs only Postgres, or nothing, still works.
    assert!(app.issue(cc.clone()).await.is_ok(), "client_credentials needs no Redis");
    assert!(app.introspect(&token, (&svc_id, &svc_secret)).await.active, "introspection is local");
    redis.restore();
    // A family's first refresh token is stored by the refresh-token writer, on its own
    // Postgres connection.
    let signed_in = eventually(Duration::from_secs(15), || app.issue(pw.clone())).await;
    let refresh = pb::IssueTokenRequest {
        grant_type: "refresh_token".into(),
        client_id: web_id.clone(),
        client_secret: web_secret.clone(),
        refresh_token: signed_in.refresh_token.clone(),
        ..Default::default()
    };

    // Postgres down: once the node's cached clients are stale, client authentication fails
    // with UNAVAILABLE.
    pg.cut();
    let cached = app.issue(cc.clone()).await;
    assert!(cached.is_ok(), "a recently used client is served from the node's cache: {cached:?}");
    // Its client still cached, the refresh reaches the writer, whose connection is cut.
    assert_oauth(app.issue(refresh.clone()).await, ErrorCode::TemporarilyUnavailable, "refresh without Postgres");
    app.clock.advance_secs(11);
    let s = assert_oauth(
        app.issue(cc.clone()).await,
        ErrorCode::TemporarilyUnavailable,
        "client_credentials without Postgres",
    );
    assert_eq!(s.code(), tonic::Code::Unavailable);
    let checked = app
        .token
        .clone()
        .introspect(pb::IntrospectRequest {
            token: token.clone(),
            client_id: svc_id.clone(),
            client_secret: svc_secret.clone(),
            ..Default::default()
        })
        .await;
    // The caller's client authentication needs the database, so introspection is
    // unavailable too; the token check itself touches no store.
    assert_oauth(checked, ErrorCode::TemporarilyUnavailable, "introspection without Postgres");
    // A token naming a key this node does not hold needs the keys re-read: without them,
    // whether it is active cannot be told. Many at once share one failed read.
    let forged = forged_kid_token(&token);
    let started = Instant::now();
    let mut calls = tokio::task::JoinSet::new();
    for _ in 0..20 {
        let (mut client, access_token) = (app.token.clone(), forged.clone());
        calls.spawn(async move { client.user_info(pb::UserInfoRequest { access_token }).await });
    }
    for answer in calls.join_all().await {
        assert_oauth(answer, ErrorCode::TemporarilyUnavailable, "a token with an unknown kid without Postgres");
    }
    assert!(started.elapsed() < Duration::from_secs(1), "20 calls took {:?}", started.elapsed());
    // The standard health service reports it, and reports the recovery.
    let channel =
        tonic::transport::Channel::from_shared(format!("http://{}", app.addr)).unwrap().connect().await.unwrap();
    let health = HealthClient::new(channel);
    wait_for_health(&health, ServingStatus::NotServing).await;
    pg.restore();
    eventually(Duration::from_secs(15), || app.issue(cc.clone())).await;
    wait_for_health(&health, ServingStatus::Serving).await;
    assert!(app.introspect(&token, (&svc_id, &svc_secret)).await.active);
    let forged = app.token.clone().user_info(pb::UserInfoRequest { access_token: forged_kid_token(&token) }).await;
    assert_oauth(forged, ErrorCode::InvalidToken, "a token with an unknown kid, the keys read");
    // The refresh refused during the outage changed nothing, and the writer's connection, cut
    // with the others, has been replaced: the same token rotates now.
    let rotated = eventually(Duration::from_secs(15), || app.issue(refresh.clone())).await;
    assert!(!rotated.refresh_token.is_empty() && rotated.refresh_token != signed_in.refresh_token);
}

/// `token` with its header naming a key nobody has (and so a signature nobody can check).
fn forged_kid_token(token: &str) -> String {
    use base64::Engine as _;
    let header = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(r#"{"alg":"ES256","kid":"no-such-key","typ":"at+jwt"}"#);
    let rest = token.split_once('.').map(|(_, rest)| rest).unwrap();
    format!("{header}.{rest}")
}

/// Restarts `app`'s node on a store this test keeps a clone of, to watch its circuit breaker.
async fn restart_on_own_store(app: &mut TestApp) -> tessera_store::SqlStore {
    if let Some(node) = app.app.take() {
        node.shutdown().await.unwrap();
    }
    let store = tessera_store::SqlStore::connect(&app.settings.database_url()).await.unwrap();
    let ephemeral = tessera_ephemeral::RedisEphemeral::connect(
        app.settings.redis.url.as_ref().unwrap().expose(),
        &app.settings.redis.key_prefix,
    )
    .await
    .unwrap();
    let node = tessera_token_service::Application::build_with(
        app.settings.clone(),
        Arc::new(store.clone()),
        Arc::new(ephemeral),
        Arc::clone(&app.clock) as _,
    )
    .await
    .unwrap();
    app.addr = node.grpc_addr();
    app.token = app.connect().await;
    app.app = Some(node);
    store
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn while_postgres_is_silent_the_breaker_answers_at_once_and_closes_when_it_answers_again() {
    let log = tessera_testkit::trace_log();
    let pg = Proxy::start("127.0.0.1:5432").await;
    let pg_addr = pg.addr;
    let Some(mut app) = TestApp::spawn_with(Pair::PostgresRedis, |s| {
        s.database.url =
            Some(SecretUrl::database(&s.database_url().replace("127.0.0.1:5432", &pg_addr.to_string())).unwrap());
    })
    .await
    else {
        return;
    };
    let store = restart_on_own_store(&mut app).await;
    let (svc_id, svc_secret) =
        app.client(ClientSpec { id: "svc", grants: &["client_credentials"], ..Default::default() }).await;
    let cc = pb::IssueTokenRequest {
        grant_type: "client_credentials".into(),
        client_id: svc_id,
        client_secret: svc_secret,
        ..Default::default()
    };
    assert!(app.issue(cc.clone()).await.is_ok());
    assert!(!store.circuit_open());

    // Connection attempts now hang until the pool's acquire timeout; the cached client goes stale.
    pg.stall();
    app.clock.advance_secs(11);
    let s = assert_oauth(app.issue(cc.clone()).await, ErrorCode::TemporarilyUnavailable, "the first call");
    assert_eq!(s.code(), tonic::Code::Unavailable);
    assert!(store.circuit_open(), "the first timeout opens the breaker");
    let unavailable_lines = || log.contents().matches("store unavailable").count();
    let lines_before = unavailable_lines();
    assert!(lines_before >= 1, "the first call's failure is in the log");
    let started = Instant::now();
    for i in 0..20 {
        let s = assert_oauth(
            app.issue(cc.clone()).await,
            ErrorCode::TemporarilyUnavailable,
            &format!("call {i} while the breaker is open"),
        );
        assert_eq!(s.code(), tonic::Code::Unavailable);
    }
    // Without the breaker each of them waits out the 3 s acquire timeout: a minute in all.
    let spent = started.elapsed();
    assert!(spent < Duration::from_secs(3), "20 calls took {spent:?}: they waited for the database");
    // Nor does each write a line: one a second at most says how many it stands for.
    let lines = unavailable_lines() - lines_before;
    assert!(lines as u64 <= 1 + spent.as_secs(), "{lines} lines for 20 failed calls in {spent:?}");
    assert!(store.circuit_open(), "the breaker stays open while the database is silent");

    // The background probe finds the database again; nobody restarts anything.
    pg.restore();
    eventually(Duration::from_secs(15), || app.issue(cc.clone())).await;
    assert!(!store.circuit_open(), "the probe closed the breaker");
}

/// DESIGN.md rule 9: a revocation made while the fan-out is cut is durable, answered as a
/// revocation (not as an outage), and reaches every node by itself, during the cut and after.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_revocation_made_while_redis_is_cut_reaches_every_node_without_client_action() {
    use crate::revocation::until_inactive_on;
    let redis = Proxy::start("127.0.0.1:6379").await;
    let redis_addr = redis.addr;
    let Some(app) = TestApp::spawn_with(Pair::PostgresRedis, |s| {
        s.redis.url = Some(SecretUrl::redis(&format!("redis://{redis_addr}")).unwrap())
    })
    .await
    else {
        return;
    };
    let (_node_b, mut b) = app.second_node().await;
    let svc = app.client(ClientSpec { id: "svc", grants: &["client_credentials"], ..Default::default() }).await;
    let web = app.client(ClientSpec { id: "web", grants: &["password", "refresh_token"], ..Default::default() }).await;
    app.user("alice", "alice-password").await;
    let first = app
        .issue(pb::IssueTokenRequest {
            grant_type: "password".into(),
            client_id: web.0.clone(),
            client_secret: web.1.clone(),
            username: "alice".into(),
            password: "alice-password".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let refresh = |token: &str| pb::IssueTokenRequest {
        grant_type: "refresh_token".into(),
        client_id: web.0.clone(),
        client_secret: web.1.clone(),
        refresh_token: token.into(),
        ..Default::default()
    };
    let second = app.issue(refresh(&first.refresh_token)).await.unwrap();
    let cc = pb::IssueTokenRequest {
        grant_type: "client_credentials".into(),
        client_id: svc.0.clone(),
        client_secret: svc.1.clone(),
        ..Default::default()
    };
    let t = app.issue(cc).await.unwrap();

    redis.cut();
    // Reuse during the cut: the family is revoked, and that is the answer.
    assert_oauth(app.issue(refresh(&first.refresh_token)).await, ErrorCode::InvalidGrant, "reuse while Redis is cut");
    let revoked = app
        .token
        .clone()
        .revoke(pb::RevokeRequest {
            token: t.access_token.clone(),
            token_type_hint: String::new(),
            client_id: svc.0.clone(),
            client_secret: svc.1.clone(),
        })
        .await;
    assert!(revoked.is_ok(), "a revocation is durable first, so it succeeds without the fan-out: {revoked:?}");
    let during = until_inactive_on(&mut b, &second.access_token, &web, "the reused family, during the cut").await;
    until_inactive_on(&mut b, &t.access_token, &svc, "the revoked token, during the cut").await;
    eprintln!("during the Redis cut, node B refused the family's token {during:?} after the reuse");

    redis.restore();
    let after = until_inactive_on(&mut b, &second.access_token, &web, "after the restore").await;
    assert!(!app.introspect(&t.access_token, (&svc.0, &svc.1)).await.active);
    // Presenting the revoked family again re-announces it, and is still refused.
    assert_oauth(app.issue(refresh(&second.refresh_token)).await, ErrorCode::InvalidGrant, "a token of the family");
    eprintln!("after the restore node B says inactive within {after:?}");
}
