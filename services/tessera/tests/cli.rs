//! The `tessera` binary as a person runs it: the embedded default's first start, the admin
//! CLI's JSON output, and a graceful stop on SIGTERM while requests are in flight.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_tessera");

struct Server {
    child: Child,
    http: String,
    grpc: String,
    banner: String,
}

impl Server {
    /// Starts `tessera serve` on free ports in `dir` and waits for its banner.
    fn start(dir: &Path, extra_env: &[(&str, &str)]) -> Server {
        let mut cmd = Command::new(BIN);
        cmd.arg("serve")
            .current_dir(dir)
            .env("TESSERA_DATA_DIR", dir.join("data"))
            .env("TESSERA_GRPC__LISTEN", "127.0.0.1:0")
            .env("TESSERA_HTTP__LISTEN", "127.0.0.1:0")
            .env("TESSERA_METRICS__LISTEN", "127.0.0.1:0")
            .env("RUST_LOG", "warn")
            .env_remove("DATABASE_URL")
            .env_remove("REDIS_URL")
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        for (k, v) in extra_env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("the tessera binary starts");
        let rx = tessera_testkit::lines_of(child.stdout.take().unwrap());
        let mut banner = String::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let line = rx.recv_timeout(deadline.saturating_duration_since(Instant::now())).unwrap_or_else(|_| {
                let _ = child.kill();
                panic!("no complete banner within 60 s; got:\n{banner}")
            });
            banner.push_str(&line);
            banner.push('\n');
            // The banner ends with the first-token hint.
            if line.starts_with("  curl ") || line.starts_with("Create a client") {
                break;
            }
        }
        let find = |prefix: &str| {
            banner
                .lines()
                .find_map(|l| {
                    l.trim().strip_prefix(prefix).map(|rest| rest.split_whitespace().next().unwrap().to_owned())
                })
                .unwrap_or_else(|| panic!("no `{prefix}` line in:\n{banner}"))
        };
        let http = find("HTTP (OAuth endpoints and pages):");
        let grpc = format!("http://{}", find("gRPC (TokenService, AdminService, health, reflection):"));
        Server { child, http, grpc, banner }
    }

    /// Sends SIGTERM and returns the exit status.
    fn terminate(mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("the server did not stop within 30 s of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn temp_dir() -> PathBuf {
    let dir =
        std::env::temp_dir().join(format!("tessera-cli-{}-{}", std::process::id(), tessera_crypto::random_secret(6)));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn admin(server: &Server, dir: &Path, args: &[&str], env: &[(&str, &str)]) -> serde_json::Value {
    let mut cmd = Command::new(BIN);
    cmd.current_dir(dir)
        .env("TESSERA_DATA_DIR", dir.join("data"))
        .args(["admin", "--endpoint", &server.grpc, "--json"])
        .args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "tessera admin {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!("tessera admin {args:?} printed no JSON ({e}): {}", String::from_utf8_lossy(&out.stdout))
    })
}

async fn client_credentials(http: &reqwest::Client, base: &str, id: &str, secret: &str) -> reqwest::Response {
    http.post(format!("{base}/oauth2/token"))
        .basic_auth(id, Some(secret))
        .form(&[("grant_type", "client_credentials")])
        .send()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_embedded_default_creates_its_demo_once_and_keeps_tokens_valid_across_restarts() {
    let dir = temp_dir();
    // The ports are picked anew at each start, so pin the issuer as a deployment would.
    let issuer = [("TESSERA_ISSUER", "https://tessera.test")];
    let server = Server::start(&dir, &issuer);
    assert!(server.banner.contains("first start: created the demo client"), "{}", server.banner);
    assert!(server.banner.contains("curl -s -u \"demo:$(cat"), "a copy-paste curl: {}", server.banner);
    assert!(server.banner.contains("/.well-known/openid-configuration"), "{}", server.banner);
    let secret = std::fs::read_to_string(dir.join("data/demo-client-secret")).unwrap();
    assert!(!server.banner.contains(secret.trim()), "the banner must not print the secret");
    let http = reqwest::Client::new();
    let r = client_credentials(&http, &server.http, "demo", secret.trim()).await;
    assert_eq!(r.status(), 200);
    let token: serde_json::Value = r.json().await.unwrap();
    let access = token["access_token"].as_str().unwrap().to_owned();
    assert_eq!(server.terminate().code(), Some(0), "SIGTERM is a clean exit");

    let server = Server::start(&dir, &issuer);
    assert!(!server.banner.contains("first start"), "the demo is created on the first start only");
    assert_eq!(std::fs::read_to_string(dir.join("data/demo-client-secret")).unwrap(), secret, "unchanged");
    let r = http
        .post(format!("{}/oauth2/introspect", server.http))
        .basic_auth("demo", Some(secret.trim()))
        .form(&[("token", access.as_str())])
        .send()
        .await
        .unwrap();
    let i: serde_json::Value = r.json().await.unwrap();
    assert_eq!(i["active"], true, "a token from before the restart: {i}");
    drop(server);
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_cli_prints_json_that_scripts_can_read() {
    let dir = temp_dir();
    let server = Server::start(&dir, &[]);
    let created = admin(
        &server,
        &dir,
        &["client", "create", "--id", "billing", "--grant", "client_credentials", "--scope", "invoices:read"],
        &[],
    );
    assert_eq!(created["client_id"], "billing");
    assert_eq!(created["confidential"], true);
    let secret = created["client_secret"].as_str().unwrap().to_owned();
    assert_eq!(secret.len(), 43);
    let public = admin(
        &server,
        &dir,
        &[
            "client",
            "create",
            "--name",
            "web",
            "--grant",
            "authorization_code",
            "--redirect-uri",
            "https://app.example/cb",
            "--public",
        ],
        &[],
    );
    assert_eq!(public["confidential"], false);
    assert!(public.get("client_secret").is_none(), "public clients get no secret");
    let list = admin(&server, &dir, &["client", "list"], &[]);
    let ids: Vec<&str> = list.as_array().unwrap().iter().map(|c| c["client_id"].as_str().unwrap()).collect();
    assert!(ids.contains(&"billing") && ids.contains(&"demo"), "{ids:?}");
    let rotated = admin(&server, &dir, &["client", "rotate-secret", "billing"], &[]);
    let new_secret = rotated["client_secret"].as_str().unwrap();
    let http = reqwest::Client::new();
    assert_eq!(client_credentials(&http, &server.http, "billing", &secret).await.status(), 401);
    assert_eq!(client_credentials(&http, &server.http, "billing", new_secret).await.status(), 200);
    let user =
        admin(&server, &dir, &["user", "create", "--username", "alice"], &[("TESSERA_PASSWORD", "alice-password-1")]);
    assert_eq!(user["username"], "alice");
    let disabled = admin(&server, &dir, &["user", "disable", "alice"], &[]);
    assert_eq!(disabled["disabled"], true);
    let kid = admin(&server, &dir, &["keys", "rotate"], &[]);
    assert_eq!(kid["kid"].as_str().unwrap().len(), 43);
    admin(&server, &dir, &["client", "delete", "billing"], &[]);
    // A wrong admin credential is refused with a clear message and a failing exit code.
    let out = Command::new(BIN)
        .current_dir(&dir)
        .env("TESSERA_ADMIN__TOKEN", "not-the-admin-credential")
        .args(["admin", "--endpoint", &server.grpc, "client", "list"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("admin credential"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    drop(server);
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_during_a_burst_lets_every_request_in_flight_finish() {
    let dir = temp_dir();
    // A queue and an account threshold large enough for the whole burst: what is tested here
    // is that nothing admitted is dropped at SIGTERM (the bounds have tests of their own).
    let server = Server::start(
        &dir,
        &[
            ("TESSERA_SHUTDOWN__GRACE_PERIOD", "30"),
            ("TESSERA_PASSWORDS__QUEUE", "64"),
            ("TESSERA_TOKENS__LOCKOUT_THRESHOLD", "100"),
        ],
    );
    let secret = std::fs::read_to_string(dir.join("data/demo-client-secret")).unwrap().trim().to_owned();
    let password = std::fs::read_to_string(dir.join("data/demo-user-password")).unwrap().trim().to_owned();
    // Password grants hash with Argon2id, so a burst of them stays in flight long enough for
    // the signal to arrive in the middle.
    let http = reqwest::Client::new();
    let burst: Vec<_> = (0..48)
        .map(|_| {
            let (http, base, secret, password) = (http.clone(), server.http.clone(), secret.clone(), password.clone());
            tokio::spawn(async move {
                let r = http
                    .post(format!("{base}/oauth2/token"))
                    .basic_auth("demo", Some(secret))
                    .form(&[("grant_type", "password"), ("username", "demo"), ("password", password.as_str())])
                    .send()
                    .await
                    .map(|r| r.status().as_u16())
                    .map_err(|e| e.to_string());
                (r, Instant::now())
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let signalled = Instant::now();
    let status = tokio::task::spawn_blocking(move || server.terminate()).await.unwrap();
    let mut finished_after_signal = 0;
    for r in burst {
        let (result, at) = r.await.unwrap();
        assert_eq!(result, Ok(200), "a request in flight at SIGTERM failed");
        if at > signalled {
            finished_after_signal += 1;
        }
    }
    assert!(finished_after_signal > 0, "the signal must land while requests are in flight");
    assert_eq!(status.code(), Some(0), "a graceful stop exits 0");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn config_check_names_the_bad_key_and_fails() {
    let out =
        Command::new(BIN).args(["config", "check"]).env("TESSERA_TOKENS__ACCESS_TOKEN_TTL", "-1").output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("tokens.access_token_ttl"));
    let out = Command::new(BIN).args(["config", "check"]).env("TESSERA_NOPE__X", "1").output().unwrap();
    assert!(!out.status.success(), "unknown keys are refused");
    let out = Command::new(BIN).args(["config", "check"]).output().unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("configuration is valid"));
}
