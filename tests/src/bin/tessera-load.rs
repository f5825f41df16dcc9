//! A bounded load generator for the token service's gRPC API. It only talks to the
//! endpoint it is given (use a loopback address), stops by itself after `--duration` (or when
//! its pool of single-use inputs runs out), checks every answer (not only its status) and
//! prints throughput and latency percentiles.
//!
//! ```text
//! tessera-load --endpoint http://127.0.0.1:50051 --admin-token-file data/admin-token \
//!              --scenario client-credentials --concurrency 64 --duration 10
//! tessera-load --endpoint http://127.0.0.1:50051 --client-id bench --client-secret-file secret \
//!              --username bench --password-file password --scenario code-exchange --pool 20000 --json
//! tessera-load ... --mint codes --count 20000 --out codes.txt
//! ```
//!
//! The client and the user: `--client-id`/`--client-secret-file` and `--username`/
//! `--password-file` name ones an operator provisioned (the client needs the grants and, for
//! codes, the redirect URI and consent skipped); without them the generator creates a client
//! (all grants, scopes `api openid profile`, first-party) and a user through the AdminService
//! with `--admin-token-file`, and deletes the client at the end.
//!
//! Scenarios (`--scenario`), each answer checked as described:
//! - `health`: grpc.health.v1 Check; the answer must be SERVING.
//! - `client-credentials`: IssueToken; a well-formed Bearer JWT with the asked scope.
//! - `password`: IssueToken grant_type=password (Argon2-bound: run it at a small concurrency).
//! - `refresh-rotation`: each request in flight keeps one chain (started by a password grant),
//!   presents every rotated refresh token exactly once and feeds the new one back.
//! - `code-exchange`: `--pool` codes with PKCE (S256, one verifier each) minted ahead through
//!   Authenticate → Authorize, then each exchanged exactly once; tokens with a refresh token.
//! - `device-poll`: `--pool` device authorizations started and approved ahead
//!   (StartDeviceAuthorization → ApproveDevice with a session from Authenticate), then each
//!   polled exactly once; the poll must give tokens.
//! - `introspect-hot`: Introspect of one access token; `active` and ours.
//! - `introspect-many`: Introspect over 10 000 distinct access tokens.
//! - `revoke`: `--pool` distinct access tokens minted ahead, each revoked once; afterwards a
//!   sample must introspect as inactive.
//! - `userinfo`: UserInfo for one access token carrying `openid`; claims with a `sub`.
//!
//! Ahead-minted pools end the timed phase when they run out; rates are over the time the
//! phase actually took. `--json` adds one summary line on standard output:
//! `{"scenario":…,"rps":…,"p50_ms":…,"p99_ms":…,"ok":…,"errors":…,…}` (rps counts good answers).
//!
//! `--mint KIND --count N --out FILE` only mints single-use inputs for another load generator
//! (the HTTP one), one per line, into a file only the owner can read: `access-tokens`
//! (client_credentials), `user-tokens` (access tokens of password grants, with `--scope`),
//! `refresh-tokens` (of password grants), `codes` (`code verifier`), `devices` (approved device
//! codes).

use anyhow::{bail, Context as _};
use base64::Engine as _;
use clap::{ArgGroup, Parser, ValueEnum};
use sha2::Digest as _;
use std::collections::HashMap;
use std::future::Future;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tessera_proto::admin::v1 as adminpb;
use tessera_proto::admin::v1::admin_service_client::AdminServiceClient;
use tessera_proto::token::v1 as pb;
use tessera_proto::token::v1::authorize_response::Outcome;
use tessera_proto::token::v1::token_service_client::TokenServiceClient;
use tonic::transport::Channel;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

#[derive(Clone, Copy, ValueEnum, Debug, PartialEq, Eq)]
enum Scenario {
    /// grpc.health.v1 Check: the ceiling of the gRPC cases.
    Health,
    /// IssueToken with grant_type=client_credentials.
    ClientCredentials,
    /// IssueToken with grant_type=password.
    Password,
    /// IssueToken with grant_type=refresh_token: each request in flight keeps its own chain,
    /// presenting every rotated refresh token exactly once and feeding the new one back.
    RefreshRotation,
    /// ExchangeCode of codes minted ahead, each once.
    CodeExchange,
    /// PollDevice of device codes approved ahead, each once.
    DevicePoll,
    /// Introspect of one hot access token.
    IntrospectHot,
    /// Introspect over 10 000 distinct access tokens (every first check verifies ECDSA).
    IntrospectMany,
    /// Revoke of distinct access tokens minted ahead, each once.
    Revoke,
    /// UserInfo for an access token carrying openid.
    Userinfo,
}

#[derive(Clone, Copy, ValueEnum, Debug, PartialEq, Eq)]
enum Mint {
    /// Access tokens of client_credentials grants.
    AccessTokens,
    /// Access tokens of password grants (with --scope).
    UserTokens,
    /// Refresh tokens of password grants.
    RefreshTokens,
    /// Authorization codes with their PKCE verifiers: `code verifier` per line.
    Codes,
    /// Approved device codes.
    Devices,
}

#[derive(Parser)]
#[command(group(ArgGroup::new("what").required(true).args(["scenario", "mint"])))]
struct Args {
    #[arg(long, default_value = "http://127.0.0.1:50051")]
    endpoint: String,
    /// The admin credential, used only when no client (or no user) is given.
    #[arg(long, default_value = "data/admin-token")]
    admin_token_file: PathBuf,
    /// A provisioned client to act as (with --client-secret-file).
    #[arg(long, requires = "client_secret_file")]
    client_id: Option<String>,
    #[arg(long)]
    client_secret_file: Option<PathBuf>,
    /// A provisioned user for the user grants (with --password-file).
    #[arg(long, requires = "password_file")]
    username: Option<String>,
    #[arg(long)]
    password_file: Option<PathBuf>,
    /// The client's registered redirect URI (codes).
    #[arg(long, default_value = "http://127.0.0.1/cb")]
    redirect_uri: String,
    /// The scope of the user grants (password, refresh, codes, devices); client_credentials asks
    /// for `api`, userinfo for `openid profile`.
    #[arg(long, default_value = "api")]
    scope: String,
    #[arg(long, value_enum)]
    scenario: Option<Scenario>,
    /// Only mint single-use inputs into --out.
    #[arg(long, value_enum, requires = "out")]
    mint: Option<Mint>,
    /// How many to mint.
    #[arg(long, default_value_t = 1)]
    count: usize,
    #[arg(long)]
    out: Option<PathBuf>,
    /// Inputs minted ahead for code-exchange, device-poll and revoke (at most 200 000).
    #[arg(long, default_value_t = 10_000)]
    pool: usize,
    /// Requests in flight.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// HTTP/2 connections shared by the requests.
    #[arg(long, default_value_t = 8)]
    connections: usize,
    /// Seconds to run (at most 120).
    #[arg(long, default_value_t = 10)]
    duration: u64,
    /// Also print one JSON summary line on standard output (the text line goes to stderr).
    #[arg(long)]
    json: bool,
    /// A file created when the inputs are minted and the timed phase begins, for a caller that
    /// measures that phase only (bench/run's CPU figures).
    #[arg(long)]
    ready_file: Option<PathBuf>,
}

/// Everything a request needs to act as the run's client and user.
#[derive(Clone)]
struct Ctx {
    channels: Vec<Channel>,
    client_id: String,
    secret: String,
    user: Option<(String, String)>,
    redirect_uri: String,
    scope: String,
}

impl Ctx {
    fn token(&self, i: usize) -> TokenServiceClient<Channel> {
        TokenServiceClient::new(self.channels[i % self.channels.len()].clone())
    }

    fn user(&self) -> anyhow::Result<&(String, String)> {
        self.user.as_ref().context("this needs a user: --username and --password-file, or an admin credential")
    }

    fn cc(&self, scope: &str) -> pb::IssueTokenRequest {
        pb::IssueTokenRequest {
            grant_type: "client_credentials".into(),
            client_id: self.client_id.clone(),
            client_secret: self.secret.clone(),
            scope: scope.into(),
            ..Default::default()
        }
    }

    fn password(&self, scope: &str) -> anyhow::Result<pb::IssueTokenRequest> {
        let (username, password) = self.user()?;
        Ok(pb::IssueTokenRequest {
            grant_type: "password".into(),
            client_id: self.client_id.clone(),
            client_secret: self.secret.clone(),
            username: username.clone(),
            password: password.clone(),
            scope: scope.into(),
            ..Default::default()
        })
    }

    fn refresh(&self, token: &str) -> pb::IssueTokenRequest {
        pb::IssueTokenRequest {
            grant_type: "refresh_token".into(),
            client_id: self.client_id.clone(),
            client_secret: self.secret.clone(),
            refresh_token: token.into(),
            ..Default::default()
        }
    }

    fn introspect(&self, token: &str) -> pb::IntrospectRequest {
        pb::IntrospectRequest {
            token: token.into(),
            token_type_hint: String::new(),
            client_id: self.client_id.clone(),
            client_secret: self.secret.clone(),
        }
    }
}

fn read_secret(path: &Path) -> anyhow::Result<String> {
    let s = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    Ok(s.trim_end_matches(['\n', '\r']).to_owned())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let duration = Duration::from_secs(args.duration.clamp(1, 120));
    let mut channels = Vec::new();
    for _ in 0..args.connections.clamp(1, args.concurrency.max(1)) {
        let channel = Channel::from_shared(args.endpoint.clone())?.connect().await;
        channels.push(channel.with_context(|| format!("connecting to {}", args.endpoint))?);
    }

    let needs_user = matches!(args.mint, Some(Mint::UserTokens | Mint::RefreshTokens | Mint::Codes | Mint::Devices))
        || matches!(
            args.scenario,
            Some(
                Scenario::Password
                    | Scenario::RefreshRotation
                    | Scenario::CodeExchange
                    | Scenario::DevicePoll
                    | Scenario::Userinfo
            )
        );
    let needs_admin = args.client_id.is_none() || (needs_user && args.username.is_none());
    let mut admin = if needs_admin {
        let admin_token = std::fs::read_to_string(&args.admin_token_file)
            .with_context(|| format!("reading {}", args.admin_token_file.display()))?;
        let credential = tessera_proto::AdminCredential::new(&admin_token)
            .context("the admin credential is not a valid header value")?;
        Some(AdminServiceClient::with_interceptor(channels[0].clone(), credential))
    } else {
        None
    };

    // The client: the one given, or one made for this run (deleted at the end).
    let mut created_client = None;
    let (client_id, secret) = match (&args.client_id, &args.client_secret_file, admin.as_mut()) {
        (Some(id), Some(file), _) => (id.clone(), read_secret(file)?),
        (_, _, Some(admin)) => {
            let created = admin
                .create_client(adminpb::CreateClientRequest {
                    name: "load generator".into(),
                    grant_types: [
                        "client_credentials",
                        "password",
                        "refresh_token",
                        "authorization_code",
                        "device_code",
                    ]
                    .map(String::from)
                    .to_vec(),
                    scopes: ["api", "openid", "profile"].map(String::from).to_vec(),
                    redirect_uris: vec![args.redirect_uri.clone()],
                    skip_consent: true,
                    ..Default::default()
                })
                .await
                .context("creating a client")?
                .into_inner();
            let id = created.client.map(|c| c.client_id).unwrap_or_default();
            created_client = Some(id.clone());
            (id, created.client_secret)
        }
        _ => bail!("give --client-id and --client-secret-file, or an admin credential"),
    };
    // The user: the one given, or one made for this run.
    let user = match (&args.username, &args.password_file, admin.as_mut()) {
        (Some(name), Some(file), _) => Some((name.clone(), read_secret(file)?)),
        (_, _, Some(admin)) if needs_user => {
            let username = format!("load-{}", std::process::id());
            let password = format!("load-password-{}", rand::random::<u64>());
            let req = adminpb::CreateUserRequest {
                username: username.clone(),
                password: password.clone(),
                ..Default::default()
            };
            admin.create_user(req).await.context("creating a user")?;
            Some((username, password))
        }
        _ => None,
    };
    let ctx =
        Ctx { channels, client_id, secret, user, redirect_uri: args.redirect_uri.clone(), scope: args.scope.clone() };

    let outcome = match (args.mint, args.scenario) {
        (Some(kind), _) => mint_to_file(&ctx, kind, args.count, args.out.as_deref()).await,
        (None, Some(scenario)) => run(&ctx, &args, scenario, duration).await,
        (None, None) => Ok(()),
    };
    if let (Some(admin), Some(client_id)) = (admin.as_mut(), created_client) {
        let _ = admin.delete_client(adminpb::DeleteClientRequest { client_id }).await;
    }
    outcome
}

/// Mints `count` inputs of `kind` into `out`, one per line, readable by the owner only.
async fn mint_to_file(ctx: &Ctx, kind: Mint, count: usize, out: Option<&Path>) -> anyhow::Result<()> {
    let out = out.context("--mint needs --out")?;
    let started = Instant::now();
    let lines: Vec<String> = match kind {
        Mint::AccessTokens => mint_access_tokens(ctx, count).await?,
        Mint::UserTokens => mint_user_tokens(ctx, count).await?.into_iter().map(|t| t.access_token).collect(),
        Mint::RefreshTokens => mint_user_tokens(ctx, count).await?.into_iter().map(|t| t.refresh_token).collect(),
        Mint::Codes => {
            mint_codes(ctx, count).await?.into_iter().map(|(code, verifier)| format!("{code} {verifier}")).collect()
        }
        Mint::Devices => mint_devices(ctx, count).await?,
    };
    let mut file = private_file(out)?;
    for line in &lines {
        writeln!(file, "{line}")?;
    }
    file.flush()?;
    eprintln!("minted {} {kind:?} in {:.1}s", lines.len(), started.elapsed().as_secs_f64());
    Ok(())
}

fn private_file(path: &Path) -> anyhow::Result<std::io::BufWriter<std::fs::File>> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    Ok(std::io::BufWriter::new(file))
}

/// Runs `make(client, i)` for every i below `n`, `parallel` at a time over the run's
/// connections; fails on the first error.
async fn mint_many<T, F, Fut>(ctx: &Ctx, n: usize, parallel: usize, make: F) -> anyhow::Result<Vec<T>>
where
    T: Send + 'static,
    F: Fn(TokenServiceClient<Channel>, usize) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = anyhow::Result<T>> + Send,
{
    let next = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for t in 0..parallel.clamp(1, n.max(1)) {
        let (client, make, next) = (ctx.token(t), make.clone(), Arc::clone(&next));
        tasks.push(tokio::spawn(async move {
            let mut out = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    return anyhow::Ok(out);
                }
                out.push(make(client.clone(), i).await?);
            }
        }));
    }
    let mut all = Vec::with_capacity(n);
    for t in tasks {
        all.extend(t.await??);
    }
    Ok(all)
}

async fn mint_access_tokens(ctx: &Ctx, n: usize) -> anyhow::Result<Vec<String>> {
    let req = ctx.cc("api");
    mint_many(ctx, n, 32, move |mut c, _| {
        let req = req.clone();
        async move {
            let t = c.issue_token(req).await.context("minting an access token")?.into_inner();
            check_token(&t, "api", false, false).map_err(anyhow::Error::msg)?;
            Ok(t.access_token)
        }
    })
    .await
}

/// Password grants (Argon2-bound: four at a time).
async fn mint_user_tokens(ctx: &Ctx, n: usize) -> anyhow::Result<Vec<pb::TokenResponse>> {
    let req = ctx.password(&ctx.scope)?;
    let scope = ctx.scope.clone();
    mint_many(ctx, n, 4, move |mut c, _| {
        let (req, scope) = (req.clone(), scope.clone());
        async move {
            let t = c.issue_token(req).await.context("a password grant")?.into_inner();
            check_token(&t, &scope, true, scope.split_whitespace().any(|s| s == "openid"))
                .map_err(anyhow::Error::msg)?;
            Ok(t)
        }
    })
    .await
}

/// A login session of the run's user, as the pages would hold.
async fn session(ctx: &Ctx) -> anyhow::Result<String> {
    let (username, password) = ctx.user()?;
    let req = pb::AuthenticateRequest { username: username.clone(), password: password.clone() };
    Ok(ctx.token(0).authenticate(req).await.context("Authenticate")?.into_inner().session)
}

/// PKCE (RFC 7636): a fresh verifier and its S256 challenge.
fn pkce_pair() -> (String, String) {
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let verifier = b64.encode(rand::random::<[u8; 32]>());
    let challenge = b64.encode(sha2::Sha256::digest(verifier.as_bytes()));
    (verifier, challenge)
}

/// Codes minted through Authorize with one session (the client skips consent, or consent is
/// given), each with its own PKCE pair.
async fn mint_codes(ctx: &Ctx, n: usize) -> anyhow::Result<Vec<(String, String)>> {
    let session = session(ctx).await?;
    let (client_id, redirect_uri, scope) = (ctx.client_id.clone(), ctx.redirect_uri.clone(), ctx.scope.clone());
    mint_many(ctx, n, 32, move |mut c, i| {
        let (verifier, challenge) = pkce_pair();
        let state = format!("s{i}");
        let req = pb::AuthorizeRequest {
            response_type: "code".into(),
            client_id: client_id.clone(),
            redirect_uri: redirect_uri.clone(),
            scope: scope.clone(),
            state: state.clone(),
            code_challenge: challenge,
            code_challenge_method: "S256".into(),
            session: session.clone(),
            consent: pb::ConsentDecision::Approve as i32,
            max_age: -1,
            ..Default::default()
        };
        let redirect_uri = redirect_uri.clone();
        async move {
            let outcome = c.authorize(req).await.context("Authorize")?.into_inner().outcome;
            let Some(Outcome::RedirectTo(to)) = outcome else {
                bail!("Authorize did not redirect: {outcome:?}");
            };
            let (base, query) = to.split_once('?').context("a redirect without a query")?;
            let params = query_params(query);
            if base != redirect_uri || params.get("state") != Some(&state) {
                bail!("Authorize redirected elsewhere or lost the state");
            }
            let code = params.get("code").filter(|c| !c.is_empty()).context("a redirect without a code")?;
            Ok((code.clone(), verifier))
        }
    })
    .await
}

/// The `key=value` pairs of a URL query, percent-decoded.
fn query_params(query: &str) -> HashMap<String, String> {
    fn decode(s: &str) -> String {
        let hex = |b: u8| (b as char).to_digit(16);
        let bytes = s.as_bytes();
        let mut out = Vec::with_capacity(bytes.len());
        let mut i = 0;
        while i < bytes.len() {
            match (bytes[i], bytes.get(i + 1).copied().and_then(hex), bytes.get(i + 2).copied().and_then(hex)) {
                (b'%', Some(hi), Some(lo)) => {
                    out.push((hi * 16 + lo) as u8);
                    i += 3;
                    continue;
                }
                (b'+', _, _) => out.push(b' '),
                (b, _, _) => out.push(b),
            }
            i += 1;
        }
        String::from_utf8_lossy(&out).into_owned()
    }
    query.split('&').filter_map(|pair| pair.split_once('=')).map(|(k, v)| (decode(k), decode(v))).collect()
}

/// Source addresses the anonymous calls come from.
///
/// Enough that no source passes its 30 device starts a minute when two of the largest pools
/// (200,000) are minted within one minute (at most 13 each a pool), and few enough that the
/// in-memory store's throttle table (200,000 keys; a source's starts are counted under a key
/// per minute, kept a minute after its last start) never fills: with one address per call it
/// did, when a second pool's minute began before the first pool's keys were forgotten, and the
/// server rightly refused the surplus.
const SOURCES: usize = 16_384;
// Every source inside 198.18.0.0/15.
const _: () = assert!(SOURCES <= 131_072);

/// A source address for the i-th anonymous call (RFC 2544's benchmark range 198.18.0.0/15),
/// relayed as a facade would: the per-source throttles of device starts and user-code guesses
/// bound one source, and here the calls are spread over [`SOURCES`] of them.
fn relayed<T>(msg: T, i: usize) -> tonic::Request<T> {
    let k = i % SOURCES;
    let addr = format!("198.{}.{}.{}", 18 + (k >> 16), (k >> 8) & 255, k & 255);
    let mut req = tonic::Request::new(msg);
    if let Ok(v) = addr.parse() {
        req.metadata_mut().insert(tessera_proto::CLIENT_ADDR_METADATA, v);
    }
    req
}

/// Device authorizations started and approved by the run's user (one session).
async fn mint_devices(ctx: &Ctx, n: usize) -> anyhow::Result<Vec<String>> {
    let session = session(ctx).await?;
    let start = pb::DeviceAuthorizationRequest {
        client_id: ctx.client_id.clone(),
        client_secret: ctx.secret.clone(),
        scope: ctx.scope.clone(),
    };
    let refused = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&refused);
    let devices = mint_many(ctx, n, 32, move |mut c, i| {
        let (start, session, refused) = (start.clone(), session.clone(), Arc::clone(&counted));
        async move {
            // A start refused as "too many attempts" is tried again after a moment, as a device
            // would (the per-client bound is set out of the way, so this should be rare).
            let mut tries = 0;
            let d = loop {
                match c.start_device_authorization(relayed(start.clone(), i)).await {
                    Err(s) if s.code() == tonic::Code::Unavailable && tries < 50 => {
                        tries += 1;
                        refused.fetch_add(1, Ordering::Relaxed);
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                    other => break other.context("StartDeviceAuthorization")?.into_inner(),
                }
            };
            let approve = pb::ApproveDeviceRequest { user_code: d.user_code, session };
            c.approve_device(relayed(approve, i)).await.context("ApproveDevice")?;
            Ok(d.device_code)
        }
    })
    .await?;
    let refused = refused.load(Ordering::Relaxed);
    if refused > 0 {
        eprintln!("note: {refused} device starts were refused as too many attempts and tried again");
    }
    Ok(devices)
}

/// Whether an answer is what a grant must give: a signed JWT access token of type Bearer
/// with a lifetime, the asked scope, and the refresh and ID tokens it promises.
fn check_token(t: &pb::TokenResponse, scope: &str, refresh: bool, id_token: bool) -> Result<(), &'static str> {
    let jwt = |s: &str| s.split('.').count() == 3 && s.split('.').all(|p| !p.is_empty());
    if !jwt(&t.access_token) {
        return Err("the access token is not a JWT");
    }
    if t.token_type != "Bearer" || t.expires_in <= 0 {
        return Err("not a Bearer token with a lifetime");
    }
    if !scope.is_empty() && !same_scope(&t.scope, scope) {
        return Err("another scope than asked");
    }
    if refresh && t.refresh_token.len() < 20 {
        return Err("no refresh token");
    }
    if id_token && !jwt(&t.id_token) {
        return Err("no ID token");
    }
    Ok(())
}

fn same_scope(a: &str, b: &str) -> bool {
    let mut a: Vec<&str> = a.split_whitespace().collect();
    let mut b: Vec<&str> = b.split_whitespace().collect();
    a.sort_unstable();
    b.sort_unstable();
    a == b
}

/// The single-use inputs a timed phase consumes, each taken once.
struct Pool<T> {
    items: Vec<T>,
    next: AtomicUsize,
}

impl<T> Pool<T> {
    fn new(items: Vec<T>) -> Arc<Self> {
        Arc::new(Self { items, next: AtomicUsize::new(0) })
    }

    fn take(&self) -> Option<&T> {
        self.items.get(self.next.fetch_add(1, Ordering::Relaxed))
    }
}

/// What one request in flight of a scenario works on.
enum Work {
    None,
    Chain(String),
    Hot(Arc<String>),
    Many(Arc<Vec<String>>),
    Codes(Arc<Pool<(String, String)>>),
    Tokens(Arc<Pool<String>>),
}

struct TaskResult {
    latencies: Vec<u32>,
    errors: u64,
    reasons: HashMap<String, u64>,
    revoked: Vec<String>,
}

fn status_reason(what: &str, s: &tonic::Status) -> String {
    let message: String = s.message().chars().take(80).collect();
    format!("{what}: {:?} {message}", s.code())
}

async fn run(ctx: &Ctx, args: &Args, scenario: Scenario, duration: Duration) -> anyhow::Result<()> {
    let concurrency = args.concurrency.max(1);
    let pool_size = args.pool.clamp(1, 200_000);
    let prepared = Instant::now();
    // Inputs minted ahead, outside the timed phase: what each request in flight works on.
    let works: Vec<Work> = match scenario {
        Scenario::IntrospectHot => {
            let token = Arc::new(mint_access_tokens(ctx, 1).await?.remove(0));
            (0..concurrency).map(|_| Work::Hot(Arc::clone(&token))).collect()
        }
        Scenario::Userinfo => {
            let user_ctx = Ctx { scope: "openid profile".into(), ..ctx.clone() };
            let token = Arc::new(mint_user_tokens(&user_ctx, 1).await?.remove(0).access_token);
            (0..concurrency).map(|_| Work::Hot(Arc::clone(&token))).collect()
        }
        Scenario::IntrospectMany => {
            let tokens = Arc::new(mint_access_tokens(ctx, 10_000).await?);
            (0..concurrency).map(|_| Work::Many(Arc::clone(&tokens))).collect()
        }
        Scenario::CodeExchange => {
            let pool = Pool::new(mint_codes(ctx, pool_size).await?);
            (0..concurrency).map(|_| Work::Codes(Arc::clone(&pool))).collect()
        }
        Scenario::DevicePoll | Scenario::Revoke => {
            let items = if scenario == Scenario::DevicePoll {
                mint_devices(ctx, pool_size).await?
            } else {
                mint_access_tokens(ctx, pool_size).await?
            };
            let pool = Pool::new(items);
            (0..concurrency).map(|_| Work::Tokens(Arc::clone(&pool))).collect()
        }
        Scenario::RefreshRotation => mint_user_tokens(ctx, concurrency)
            .await
            .context("starting the refresh chains")?
            .into_iter()
            .map(|t| Work::Chain(t.refresh_token))
            .collect(),
        Scenario::Health | Scenario::ClientCredentials | Scenario::Password => {
            (0..concurrency).map(|_| Work::None).collect()
        }
    };
    if prepared.elapsed() > Duration::from_secs(1) {
        eprintln!("prepared {scenario:?} in {:.1}s", prepared.elapsed().as_secs_f64());
    }

    if let Some(path) = &args.ready_file {
        std::fs::write(path, b"").with_context(|| format!("creating {}", path.display()))?;
    }
    let started = Instant::now();
    let deadline = started + duration;
    let mut tasks = Vec::new();
    for (i, work) in works.into_iter().enumerate() {
        let ctx = ctx.clone();
        let mut c = ctx.token(i);
        let mut health = HealthClient::new(ctx.channels[i % ctx.channels.len()].clone());
        let cc = ctx.cc("api");
        let password = if scenario == Scenario::Password { Some(ctx.password(&ctx.scope)?) } else { None };
        tasks.push(tokio::spawn(async move {
            let mut r = TaskResult { latencies: Vec::new(), errors: 0, reasons: HashMap::new(), revoked: Vec::new() };
            let mut work = work;
            let mut n = i;
            while Instant::now() < deadline {
                let t0 = Instant::now();
                let outcome: Result<(), String> = match (&mut work, scenario) {
                    (_, Scenario::Health) => match health.check(HealthCheckRequest { service: String::new() }).await {
                        Ok(a) if a.get_ref().status == ServingStatus::Serving as i32 => Ok(()),
                        Ok(_) => Err("health: not SERVING".into()),
                        Err(s) => Err(status_reason("health", &s)),
                    },
                    (_, Scenario::ClientCredentials) => match c.issue_token(cc.clone()).await {
                        Ok(t) => check_token(t.get_ref(), "api", false, false).map_err(String::from),
                        Err(s) => Err(status_reason("client_credentials", &s)),
                    },
                    (_, Scenario::Password) => {
                        let req = password.clone().unwrap_or_default();
                        match c.issue_token(req).await {
                            Ok(t) => check_token(t.get_ref(), &ctx.scope, false, false).map_err(String::from),
                            Err(s) => Err(status_reason("password", &s)),
                        }
                    }
                    (Work::Chain(chain), Scenario::RefreshRotation) => {
                        if chain.is_empty() {
                            // This chain broke on an earlier bad answer: nothing left to present.
                            break;
                        }
                        match c.issue_token(ctx.refresh(chain)).await {
                            Ok(t) => {
                                let t = t.into_inner();
                                let checked = check_token(&t, &ctx.scope, true, false).map_err(String::from);
                                // A rotation must hand out a new refresh token.
                                let rotated = checked.and_then(|()| {
                                    if t.refresh_token == *chain {
                                        Err("the refresh token did not rotate".to_owned())
                                    } else {
                                        Ok(())
                                    }
                                });
                                *chain = if rotated.is_ok() { t.refresh_token } else { String::new() };
                                rotated
                            }
                            Err(s) => {
                                chain.clear();
                                Err(status_reason("refresh", &s))
                            }
                        }
                    }
                    (Work::Codes(pool), _) => {
                        let Some((code, verifier)) = pool.take() else { break };
                        let req = pb::ExchangeCodeRequest {
                            client_id: ctx.client_id.clone(),
                            client_secret: ctx.secret.clone(),
                            code: code.clone(),
                            redirect_uri: ctx.redirect_uri.clone(),
                            code_verifier: verifier.clone(),
                        };
                        match c.exchange_code(req).await {
                            Ok(t) => {
                                check_token(t.get_ref(), &ctx.scope, true, has_openid(&ctx.scope)).map_err(String::from)
                            }
                            Err(s) => Err(status_reason("exchange", &s)),
                        }
                    }
                    (Work::Tokens(pool), Scenario::DevicePoll) => {
                        let Some(device_code) = pool.take() else { break };
                        let req = pb::PollDeviceRequest {
                            client_id: ctx.client_id.clone(),
                            client_secret: ctx.secret.clone(),
                            device_code: device_code.clone(),
                        };
                        match c.poll_device(req).await {
                            Ok(t) => {
                                check_token(t.get_ref(), &ctx.scope, true, has_openid(&ctx.scope)).map_err(String::from)
                            }
                            Err(s) => Err(status_reason("device poll", &s)),
                        }
                    }
                    (Work::Tokens(pool), _) => {
                        let Some(token) = pool.take() else { break };
                        let req = pb::RevokeRequest {
                            token: token.clone(),
                            token_type_hint: "access_token".into(),
                            client_id: ctx.client_id.clone(),
                            client_secret: ctx.secret.clone(),
                        };
                        match c.revoke(req).await {
                            Ok(_) => {
                                if r.revoked.len() < 20 {
                                    r.revoked.push(token.clone());
                                }
                                Ok(())
                            }
                            Err(s) => Err(status_reason("revoke", &s)),
                        }
                    }
                    (Work::Hot(token), Scenario::Userinfo) => {
                        match c.user_info(pb::UserInfoRequest { access_token: token.to_string() }).await {
                            Ok(a) => check_userinfo(&a.get_ref().claims_json),
                            Err(s) => Err(status_reason("userinfo", &s)),
                        }
                    }
                    (Work::Hot(_) | Work::Many(_), _) => {
                        let token = match &work {
                            Work::Hot(t) => t.to_string(),
                            Work::Many(ts) => {
                                n = n.wrapping_add(STRIDE);
                                ts[n % ts.len()].clone()
                            }
                            _ => String::new(),
                        };
                        match c.introspect(ctx.introspect(&token)).await {
                            Ok(a) if a.get_ref().active && a.get_ref().client_id == ctx.client_id => Ok(()),
                            Ok(_) => Err("introspect: not active, or not ours".into()),
                            Err(s) => Err(status_reason("introspect", &s)),
                        }
                    }
                    _ => Err("nothing to do".into()),
                };
                r.latencies.push(t0.elapsed().as_micros().min(u128::from(u32::MAX)) as u32);
                if let Err(reason) = outcome {
                    r.errors += 1;
                    *r.reasons.entry(reason).or_default() += 1;
                }
            }
            r
        }));
    }
    let mut all = Vec::new();
    let mut errors = 0;
    let mut reasons: HashMap<String, u64> = HashMap::new();
    let mut revoked = Vec::new();
    for t in tasks {
        let r = t.await?;
        all.extend(r.latencies);
        errors += r.errors;
        for (k, v) in r.reasons {
            *reasons.entry(k).or_default() += v;
        }
        revoked.extend(r.revoked);
    }
    let elapsed = started.elapsed().as_secs_f64();
    let exhausted = started.elapsed() + Duration::from_millis(50) < duration;

    // A revoked token must no longer be active: check a sample of them.
    let mut unrevoked = 0u64;
    for token in revoked.iter().take(100) {
        match ctx.token(0).introspect(ctx.introspect(token)).await {
            Ok(a) if !a.get_ref().active => {}
            _ => unrevoked += 1,
        }
    }
    if unrevoked > 0 {
        errors += unrevoked;
        *reasons.entry("revoke: the token is still active".into()).or_default() += unrevoked;
    }

    all.sort_unstable();
    let pct = |p: f64| {
        all.get(((all.len() as f64 * p) as usize).min(all.len().saturating_sub(1))).copied().unwrap_or(0) as f64
            / 1000.0
    };
    let requests = all.len() as u64;
    let ok = requests.saturating_sub(errors);
    let rps = ok as f64 / elapsed;
    let name = format!("{scenario:?}");
    let line = format!(
        "scenario={name} concurrency={concurrency} connections={} duration={elapsed:.1}s requests={requests} ok={ok} errors={errors} rps={rps:.0} p50={:.2}ms p99={:.2}ms{}",
        ctx.channels.len(),
        pct(0.50),
        pct(0.99),
        if exhausted { " (the pool ran out)" } else { "" }
    );
    let mut reasons: Vec<_> = reasons.into_iter().collect();
    reasons.sort_by_key(|r| std::cmp::Reverse(r.1));
    if args.json {
        eprintln!("{line}");
        let summary = serde_json::json!({
            "scenario": scenario.to_possible_value().map(|v| v.get_name().to_owned()).unwrap_or(name),
            "concurrency": concurrency,
            "connections": ctx.channels.len(),
            "elapsed_s": round(elapsed, 3),
            "requests": requests,
            "ok": ok,
            "errors": errors,
            "rps": round(rps, 1),
            "p50_ms": round(pct(0.50), 3),
            "p99_ms": round(pct(0.99), 3),
            "pool_exhausted": exhausted,
            "error_reasons": reasons.iter().take(5).map(|(k, v)| serde_json::json!({"reason": k, "count": v})).collect::<Vec<_>>(),
        });
        println!("{summary}");
    } else {
        println!("{line}");
    }
    for (reason, count) in reasons.iter().take(5) {
        eprintln!("  {count} x {reason}");
    }
    Ok(())
}

fn has_openid(scope: &str) -> bool {
    scope.split_whitespace().any(|s| s == "openid")
}

fn check_userinfo(claims: &str) -> Result<(), String> {
    let v: serde_json::Value = serde_json::from_str(claims).map_err(|_| "userinfo: claims are not JSON".to_owned())?;
    match v.get("sub").and_then(|s| s.as_str()) {
        Some(sub) if !sub.is_empty() => Ok(()),
        _ => Err("userinfo: no sub".into()),
    }
}

fn round(x: f64, places: i32) -> f64 {
    let f = 10f64.powi(places);
    (x * f).round() / f
}

/// Each task walks the token list with a stride so tasks do not move in lockstep.
const STRIDE: usize = 7919;
