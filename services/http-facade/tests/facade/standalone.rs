//! The `tessera-http-facade` binary: the facade alone, reading only its own settings, in front
//! of a running token service.

use crate::harness::*;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_tessera-http-facade");

/// What [`start`] gives: the running binary, its HTTP URL, and the lines it writes to stdout
/// (its log) after its banner.
type Started = (std::process::Child, String, std::sync::mpsc::Receiver<String>);

/// Runs the binary with `env` added to a clean environment; its HTTP URL once its banner says
/// it listens, or its exit status and error output when it stops first.
fn start(env: &[(&str, &str)]) -> Result<Started, (Option<i32>, String)> {
    let mut child = Command::new(BIN)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("TESSERA_HTTP__LISTEN", "127.0.0.1:0")
        .env("RUST_LOG", "warn")
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the facade binary starts");
    let rx = tessera_testkit::lines_of(child.stdout.take().unwrap());
    let deadline = Instant::now() + Duration::from_secs(30);
    while let Ok(line) = rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
        if let Some(rest) = line.trim().strip_prefix("HTTP: ") {
            let url = rest.split_whitespace().next().unwrap().to_owned();
            // With no public URL set, the default names the port the system picked.
            if !rest.ends_with(&format!("(public URL {url})")) {
                let _ = child.kill();
                panic!("the default public URL is not the bound address: {line}");
            }
            return Ok((child, url, rx));
        }
    }
    let out = child.wait_with_output().expect("the facade binary's output");
    Err((out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_facade_binary_serves_alone_and_reads_only_its_own_settings() {
    let Some(app) = TestApp::spawn(Pair::SqliteMemory).await else { return };
    let (id, secret) = app.confidential(&["client_credentials"]).await;
    let upstream = format!("http://{}", app.grpc_addr());
    // Beside its own settings, what only the token service reads, even values it would refuse:
    // not the facade's business.
    let (mut child, base, _) = start(&[
        ("TESSERA_FACADE__TOKEN_SERVICE_URL", upstream.as_str()),
        ("TESSERA_TOKENS__ACCESS_TOKEN_TTL", "-5"),
        ("DATABASE_URL", "mysql://u:hunter2@db/x"),
        ("TESSERA_DEMO__ENABLED", "false"),
    ])
    .unwrap_or_else(|(code, stderr)| panic!("the facade did not start (exit {code:?}):\n{stderr}"));
    let http = reqwest::Client::new();
    let ready = http.get(format!("{base}/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 200, "ready behind the running token service");
    let token = http
        .post(format!("{base}/oauth2/token"))
        .header("Authorization", basic_header(&id, &secret))
        .form(&[("grant_type", "client_credentials")])
        .send()
        .await
        .unwrap();
    assert_eq!(token.status(), 200);
    let body: serde_json::Value = token.json().await.unwrap();
    assert!(body["access_token"].is_string(), "{body}");
    assert!(Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap().success());
    let status = tokio::task::spawn_blocking(move || child.wait()).await.unwrap().unwrap();
    assert_eq!(status.code(), Some(0), "SIGTERM is a clean exit");

    // What is wrong with its own settings stops it before it serves, naming the key.
    let (code, stderr) = start(&[("TESSERA_FACADE__TOKEN_SERVICE_URL", "token-service:50051")]).err().unwrap();
    assert_eq!(code, Some(1));
    assert!(stderr.contains("facade.token_service_url"), "{stderr}");
    app.stop().await;
}

/// Kills the child when dropped, so that a failed assertion leaves no process behind.
struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_token_service_gone_the_facade_answers_503_and_logs_it_once_a_second() {
    // A port nobody listens on.
    let gone = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let upstream = format!("http://{gone}");
    let (child, base, log) = start(&[("TESSERA_FACADE__TOKEN_SERVICE_URL", upstream.as_str())])
        .unwrap_or_else(|(code, stderr)| panic!("the facade did not start (exit {code:?}):\n{stderr}"));
    let child = Killed(child);
    let http = reqwest::Client::builder().timeout(Duration::from_secs(10)).build().unwrap();
    let started = Instant::now();
    for _ in 0..25 {
        let ready = http.get(format!("{base}/readyz")).send().await.unwrap();
        assert_eq!(ready.status(), 503);
        let token = http
            .post(format!("{base}/oauth2/token"))
            .header("Authorization", basic_header("svc", "not-checked-by-the-facade"))
            .form(&[("grant_type", "client_credentials")])
            .send()
            .await
            .unwrap();
        assert_eq!(token.status(), 503);
        let body: serde_json::Value = token.json().await.unwrap();
        assert_eq!(body["error"], "temporarily_unavailable", "{body}");
    }
    let spent = started.elapsed();
    drop(child);
    // The log ends when the process does.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut lines = Vec::new();
    while let Ok(line) = log.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
        lines.push(line);
    }
    // Each of 25 failures of each kind would otherwise be a line: one a second at most, the
    // first at once, saying how many it stands for.
    for said in ["readiness check failed", "the token service is unavailable"] {
        let written: Vec<&String> = lines.iter().filter(|l| l.contains(said)).collect();
        let n = written.len();
        assert!((1..=1 + spent.as_secs() as usize).contains(&n), "{n} lines \"{said}\" in {spent:?}:\n{lines:#?}");
        assert!(written[0].contains("held_back=0"), "{}", written[0]);
    }
}
