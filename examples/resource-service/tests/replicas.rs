//! Black box: three token-service replicas on one Postgres and one Redis (a redis-server of
//! this test's own, so it can be restarted), and the example resource service, a separate
//! process, following revocations from the first replica. A token the resource service accepts
//! is refused there within [`BOUND`] after it is revoked on another replica, after its user is
//! disabled, after its client is deleted, and across a restart of Redis (the revocation made
//! while Redis is down included).
//!
//! Needs Postgres and `redis-server`: fails under CI without them, skips loudly elsewhere.

use std::io::BufRead as _;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tessera_proto::admin::v1 as adminpb;
use tessera_proto::admin::v1::admin_service_client::AdminServiceClient;
use tessera_proto::token::v1 as pb;
use tessera_proto::token::v1::token_service_client::TokenServiceClient;
use tessera_token_service::settings::{AdminToken, SecretUrl, Settings};
use tessera_token_service::Application;
use tonic::transport::Channel;

/// How long a revocation may take to reach the resource service. The fan-out takes
/// milliseconds; without Redis, a replica reads the durable log every 500 ms.
const BOUND: Duration = Duration::from_secs(3);
const ISSUER: &str = "https://tessera.replicas.test";

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn start_redis(port: u16, dir: &std::path::Path) -> Option<Killed> {
    let child = Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
        .arg("--dir")
        .arg(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "redis-server did not listen on {port}");
        std::thread::sleep(Duration::from_millis(20));
    }
    Some(Killed(child))
}

async fn replica(database_url: &str, redis_url: &str, prefix: &str, dir: &std::path::Path) -> Application {
    let mut s = Settings { data_dir: dir.to_owned(), ..Settings::default() };
    s.grpc.listen = "127.0.0.1:0".parse().unwrap();
    s.metrics.listen = None;
    s.admin.token = Some(AdminToken::new(tessera_testkit::ADMIN_TOKEN).unwrap());
    s.demo.enabled = false;
    s.issuer = Some(ISSUER.parse().unwrap());
    s.database.url = Some(SecretUrl::database(database_url).unwrap());
    s.database.max_connections = 4;
    s.redis.url = Some(SecretUrl::redis(redis_url).unwrap());
    s.redis.key_prefix = prefix.to_owned();
    Application::build(s).await.unwrap()
}

type Admin =
    AdminServiceClient<tonic::service::interceptor::InterceptedService<Channel, tessera_proto::AdminCredential>>;

async fn admin(addr: SocketAddr) -> Admin {
    let channel = Channel::from_shared(format!("http://{addr}")).unwrap().connect().await.unwrap();
    AdminServiceClient::with_interceptor(
        channel,
        tessera_proto::AdminCredential::new(tessera_testkit::ADMIN_TOKEN).unwrap(),
    )
}

async fn client(admin: &mut Admin, id: &str, grants: &[&str], scopes: &str, watch: bool) -> (String, String) {
    let r = admin
        .create_client(adminpb::CreateClientRequest {
            client_id: id.into(),
            grant_types: grants.iter().map(|g| g.to_string()).collect(),
            scopes: scopes.split(' ').map(str::to_owned).collect(),
            watch_revocations: watch,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    (id.to_owned(), r.client_secret)
}

struct ResourceService {
    _child: Killed,
    http: String,
}

fn start_resource_service(token_service: SocketAddr, watcher: &(String, String)) -> ResourceService {
    let mut child = Command::new(env!("CARGO_BIN_EXE_resource-service"))
        .env("TESSERA_GRPC_URL", format!("http://{token_service}"))
        .env("TESSERA_ISSUER", ISSUER)
        .env("WATCH_CLIENT_ID", &watcher.0)
        .env("WATCH_CLIENT_SECRET", &watcher.1)
        .env("LISTEN", "127.0.0.1:0")
        .env("GRPC_LISTEN", "127.0.0.1:0")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut first = String::new();
    std::io::BufReader::new(stdout).read_line(&mut first).unwrap();
    let http = first
        .split_whitespace()
        .find_map(|w| w.strip_prefix("http="))
        .unwrap_or_else(|| panic!("the resource service said {first:?}"))
        .to_owned();
    ResourceService { _child: Killed(child), http: format!("http://{http}") }
}

async fn status(http: &reqwest::Client, rs: &ResourceService, path: &str, token: &str) -> u16 {
    http.get(format!("{}{path}", rs.http)).bearer_auth(token).send().await.unwrap().status().as_u16()
}

/// Waits until the resource service refuses `token`; fails after [`BOUND`].
async fn refused_within_bound(http: &reqwest::Client, rs: &ResourceService, token: &str, what: &str) -> Duration {
    let start = Instant::now();
    loop {
        match status(http, rs, "/whoami", token).await {
            401 => return start.elapsed(),
            200 => {}
            other => panic!("{what}: unexpected status {other}"),
        }
        assert!(start.elapsed() < BOUND, "{what}: still accepted {BOUND:?} after");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn issue(client: &(String, String), grant: &str, user: Option<(&str, &str)>, scope: &str) -> pb::IssueTokenRequest {
    pb::IssueTokenRequest {
        grant_type: grant.into(),
        client_id: client.0.clone(),
        client_secret: client.1.clone(),
        scope: scope.into(),
        username: user.map(|u| u.0.to_owned()).unwrap_or_default(),
        password: user.map(|u| u.1.to_owned()).unwrap_or_default(),
        ..Default::default()
    }
}

async fn token(node: &mut TokenServiceClient<Channel>, req: pb::IssueTokenRequest) -> String {
    node.issue_token(req).await.unwrap().into_inner().access_token
}

async fn revoke(node: &mut TokenServiceClient<Channel>, token: &str, caller: &(String, String)) {
    node.revoke(pb::RevokeRequest {
        token: token.into(),
        token_type_hint: "access_token".into(),
        client_id: caller.0.clone(),
        client_secret: caller.1.clone(),
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_revocation_on_any_replica_reaches_the_resource_service_within_the_bound() {
    let Ok(db) = tessera_testkit::PgDatabase::create("tessera_replicas").await else {
        tessera_testkit::skip_or_fail("Postgres is unreachable; the three-replica test did not run");
        return;
    };
    let dir = tempfile_dir();
    let redis_port = free_port();
    let Some(redis) = start_redis(redis_port, &dir) else {
        tessera_testkit::skip_or_fail("redis-server is not on the PATH; the three-replica test did not run");
        return;
    };
    let redis_url = format!("redis://127.0.0.1:{redis_port}");
    let prefix = format!("replicas-{}", tessera_testkit::unique());
    let mut replicas = Vec::new();
    for _ in 0..3 {
        replicas.push(replica(&db.url(), &redis_url, &prefix, &dir).await);
    }
    let addrs: Vec<SocketAddr> = replicas.iter().map(Application::grpc_addr).collect();
    let mut nodes = Vec::new();
    for a in &addrs {
        nodes.push(TokenServiceClient::connect(format!("http://{a}")).await.unwrap());
    }
    let mut admin1 = admin(addrs[0]).await;
    let watcher = client(&mut admin1, "orders-api", &["client_credentials"], "api", true).await;
    let svc = client(&mut admin1, "billing", &["client_credentials"], "orders:read api", false).await;
    let web = client(&mut admin1, "web", &["password", "refresh_token"], "openid api", false).await;
    admin1
        .create_user(adminpb::CreateUserRequest {
            username: "alice".into(),
            password: "alice-password".into(),
            ..Default::default()
        })
        .await
        .unwrap();

    let rs = start_resource_service(addrs[0], &watcher);
    let http = reqwest::Client::new();
    // The verifier has caught up once a token is accepted (it fails closed until then).
    let first = token(&mut nodes[1], issue(&svc, "client_credentials", None, "orders:read api")).await;
    let start = Instant::now();
    while status(&http, &rs, "/whoami", &first).await != 200 {
        assert!(start.elapsed() < Duration::from_secs(10), "the resource service never accepted a token");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(status(&http, &rs, "/orders", &first).await, 200);
    assert_eq!(status(&http, &rs, "/whoami", "not-a-token").await, 401);
    let narrow = token(&mut nodes[2], issue(&svc, "client_credentials", None, "api")).await;
    let res = http.get(format!("{}/orders", rs.http)).bearer_auth(&narrow).send().await.unwrap();
    assert_eq!(res.status().as_u16(), 403);
    assert!(res.headers()["www-authenticate"].to_str().unwrap().contains(r#"error="insufficient_scope""#));

    // Revoked on the second replica.
    revoke(&mut nodes[1], &first, &svc).await;
    let took = refused_within_bound(&http, &rs, &first, "revoked on another replica").await;
    println!("revoked on replica 2: refused after {took:?}");
    assert_eq!(status(&http, &rs, "/whoami", &narrow).await, 200, "another token of the client is untouched");

    // The user disabled on the third replica.
    let alices = token(&mut nodes[2], issue(&web, "password", Some(("alice", "alice-password")), "api")).await;
    assert_eq!(status(&http, &rs, "/whoami", &alices).await, 200);
    admin(addrs[2])
        .await
        .set_user_disabled(adminpb::SetUserDisabledRequest { username: "alice".into(), disabled: true })
        .await
        .unwrap();
    let took = refused_within_bound(&http, &rs, &alices, "the user disabled on another replica").await;
    println!("user disabled on replica 3: refused after {took:?}");

    // The client deleted on the second replica.
    admin(addrs[1]).await.delete_client(adminpb::DeleteClientRequest { client_id: "billing".into() }).await.unwrap();
    let took = refused_within_bound(&http, &rs, &narrow, "the client deleted on another replica").await;
    println!("client deleted on replica 2: refused after {took:?}");

    // Redis goes away; a revocation made meanwhile reaches the resource service through the
    // durable log, and one made after Redis is back through the fan-out again.
    let other = client(&mut admin1, "reports", &["client_credentials"], "api", false).await;
    let during = token(&mut nodes[1], issue(&other, "client_credentials", None, "api")).await;
    let after = token(&mut nodes[1], issue(&other, "client_credentials", None, "api")).await;
    assert_eq!(status(&http, &rs, "/whoami", &during).await, 200);
    drop(redis);
    revoke(&mut nodes[2], &during, &other).await;
    let took = refused_within_bound(&http, &rs, &during, "revoked while Redis was down").await;
    println!("revoked on replica 3 with Redis down: refused after {took:?}");
    let _redis = start_redis(redis_port, &dir).expect("redis-server starts again");
    // Give the replicas a moment to find Redis again; the revocation must arrive either way.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(status(&http, &rs, "/whoami", &after).await, 200);
    revoke(&mut nodes[1], &after, &other).await;
    let took = refused_within_bound(&http, &rs, &after, "revoked after Redis came back").await;
    println!("revoked on replica 2 after the Redis restart: refused after {took:?}");
    // Nothing revoked before the restart came back to life.
    for (t, what) in [(&first, "first"), (&alices, "alice's"), (&narrow, "the deleted client's"), (&during, "during")] {
        assert_eq!(status(&http, &rs, "/whoami", t).await, 401, "{what} token after the restart");
    }
    for r in replicas {
        r.shutdown().await.unwrap();
    }
    let _ = std::fs::remove_dir_all(&dir);
}

fn tempfile_dir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("tessera-replicas-{}", tessera_testkit::unique()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}
