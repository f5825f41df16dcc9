//! Measures `tessera-verifier` against a running token service, for bench/run. Loopback only,
//! bounded in time; prints one JSON line per case on standard output.
//!
//! ```text
//! tessera-verifier-bench --endpoint http://127.0.0.1:50051 --issuer http://127.0.0.1:8080 \
//!     --client-id bench --client-secret-file secret --watch-client-id rs --watch-secret-file rs-secret \
//!     --duration 5 [--revoke-endpoint http://127.0.0.1:50052 --samples 200]
//! ```
//!
//! Cases, each on one thread (one core):
//! - `es256 verify raw`: ring's ECDSA P-256 check of the 10,000 tokens' signatures, nothing
//!   else: the ceiling of a token seen for the first time.
//! - `verifier hot`: one token checked again and again (from the cache of verified tokens,
//!   revocations consulted every time).
//! - `verifier 10k distinct`: 10,000 tokens each checked once by a fresh verifier (a full
//!   check each: signature, claims, revocations).
//! - `verifier 10k cached`: the same 10,000 again, now cached.
//! - `verifier memory`: the resident size of this process after `--memory-tokens` distinct
//!   tokens went through a verifier with the default cache of 10,000, and what it holds.
//! - with `--revoke-endpoint`: `revocation to refusal`: a token the verifier (following
//!   `--endpoint`) accepts is revoked through the other replica, and the time from the revoke
//!   call to the verifier refusing it is taken, `--samples` times (p50/p99; errors: samples
//!   not refused within 2 s).
//!
//! `--client-id` names a client with the client_credentials grant (the tokens); `--watch-client-id`
//! one allowed to watch revocations.

use anyhow::{bail, Context as _};
use base64::Engine as _;
use clap::Parser;
use std::path::PathBuf;
use std::time::{Duration, Instant};
use tessera_proto::token::v1 as pb;
use tessera_proto::token::v1::token_service_client::TokenServiceClient;
use tessera_verifier::{Config, Rejection, Verifier};
use tonic::transport::Channel;

#[derive(Parser)]
struct Args {
    #[arg(long)]
    endpoint: String,
    #[arg(long)]
    revoke_endpoint: Option<String>,
    #[arg(long)]
    issuer: String,
    #[arg(long)]
    client_id: String,
    #[arg(long)]
    client_secret_file: PathBuf,
    #[arg(long)]
    watch_client_id: String,
    #[arg(long)]
    watch_secret_file: PathBuf,
    /// Seconds for the hot case.
    #[arg(long, default_value_t = 5)]
    duration: u64,
    #[arg(long, default_value_t = 200)]
    samples: usize,
    /// Distinct tokens of the distinct and cached cases.
    #[arg(long, default_value_t = 10_000)]
    tokens: usize,
    /// Distinct tokens sent through one verifier for the memory case (0: no memory case).
    #[arg(long, default_value_t = 100_000)]
    memory_tokens: usize,
    /// `checks` (the rates and the memory case), `latency` (revocation to refusal; needs
    /// `--revoke-endpoint`), or `all`.
    #[arg(long, default_value = "all")]
    part: String,
}

fn loopback(url: &str) -> anyhow::Result<()> {
    let host = url.split("://").nth(1).unwrap_or(url).split(['/', ':']).next().unwrap_or("");
    if !matches!(host, "127.0.0.1" | "localhost" | "[") {
        bail!("{url}: loopback endpoints only");
    }
    Ok(())
}

fn secret(path: &PathBuf) -> anyhow::Result<String> {
    Ok(std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?.trim().to_owned())
}

fn rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("VmRSS:"))?.split_whitespace().nth(1)?.parse::<f64>().ok())
        .map_or(0.0, |kb| (kb / 1024.0 * 10.0).round() / 10.0)
}

fn line(case: &str, rps: Option<f64>, extra: serde_json::Value) {
    let mut v = serde_json::json!({ "case": case, "rps": rps.map(|r| r.round()), "ok": 0, "errors": 0 });
    if let (Some(o), Some(e)) = (v.as_object_mut(), extra.as_object()) {
        o.extend(e.clone());
    }
    println!("{v}");
}

struct Ctx {
    args: Args,
    node: TokenServiceClient<Channel>,
    secret: String,
    watch_secret: String,
}

impl Ctx {
    async fn token(&self) -> anyhow::Result<String> {
        let r = self
            .node
            .clone()
            .issue_token(pb::IssueTokenRequest {
                grant_type: "client_credentials".into(),
                client_id: self.args.client_id.clone(),
                client_secret: self.secret.clone(),
                scope: "api".into(),
                ..Default::default()
            })
            .await?;
        Ok(r.into_inner().access_token)
    }

    async fn verifier(&self, endpoint: &str) -> anyhow::Result<Verifier> {
        let mut cfg = Config::new(&self.args.issuer, &self.args.watch_client_id, &self.watch_secret);
        cfg.heartbeat = Duration::from_secs(1);
        let v = Verifier::start(Channel::from_shared(endpoint.to_owned())?.connect_lazy(), cfg);
        if !v.caught_up(Duration::from_secs(10)).await {
            bail!("the verifier did not catch up with the revocation stream");
        }
        Ok(v)
    }
}

/// Checks every token once on this thread; the rate and how many were accepted.
async fn check_all(v: &Verifier, tokens: &[String]) -> (f64, usize) {
    let started = Instant::now();
    let mut ok = 0;
    for t in tokens {
        ok += usize::from(v.verify(t).await.is_ok());
    }
    (tokens.len() as f64 / started.elapsed().as_secs_f64(), ok)
}

async fn run(args: Args) -> anyhow::Result<()> {
    loopback(&args.endpoint)?;
    if let Some(e) = &args.revoke_endpoint {
        loopback(e)?;
    }
    let node = TokenServiceClient::new(Channel::from_shared(args.endpoint.clone())?.connect().await?);
    let ctx =
        Ctx { secret: secret(&args.client_secret_file)?, watch_secret: secret(&args.watch_secret_file)?, node, args };
    if ctx.args.part != "latency" {
        checks(&ctx).await?;
    }
    if ctx.args.part != "checks" {
        latency(&ctx).await?;
    }
    Ok(())
}

async fn checks(ctx: &Ctx) -> anyhow::Result<()> {
    let mut tokens = Vec::with_capacity(ctx.args.tokens);
    for _ in 0..ctx.args.tokens.max(1) {
        tokens.push(ctx.token().await?);
    }

    // The ceiling: ring alone, on the same signatures.
    let jwks = ctx.node.clone().get_jwks(pb::GetJwksRequest {}).await?.into_inner().jwks_json;
    let jwks: serde_json::Value = serde_json::from_str(&jwks)?;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let kid = serde_json::from_slice::<serde_json::Value>(&b64.decode(tokens[0].split('.').next().unwrap_or(""))?)?
        ["kid"]
        .clone();
    let jwk = jwks["keys"].as_array().and_then(|k| k.iter().find(|k| k["kid"] == kid)).context("the token's key")?;
    if jwk["kty"] != "EC" {
        bail!("the raw ceiling is measured for ES256 keys; this service signs with {}", jwk["alg"]);
    }
    let mut point = vec![4u8];
    point.extend(b64.decode(jwk["x"].as_str().unwrap_or(""))?);
    point.extend(b64.decode(jwk["y"].as_str().unwrap_or(""))?);
    let key = ring::signature::UnparsedPublicKey::new(&ring::signature::ECDSA_P256_SHA256_FIXED, point);
    let parts: Vec<(Vec<u8>, Vec<u8>)> = tokens
        .iter()
        .map(|t| {
            let (input, sig) = t.rsplit_once('.').unwrap_or((t, ""));
            (input.as_bytes().to_vec(), b64.decode(sig).unwrap_or_default())
        })
        .collect();
    let started = Instant::now();
    let good = parts.iter().filter(|(input, sig)| key.verify(input, sig).is_ok()).count();
    let raw = parts.len() as f64 / started.elapsed().as_secs_f64();
    line("es256 verify raw", Some(raw), serde_json::json!({ "ok": good, "errors": parts.len() - good }));

    // Distinct: a fresh verifier checks each token once, then again from its cache.
    let v = ctx.verifier(&ctx.args.endpoint).await?;
    let (rate, ok) = check_all(&v, &tokens).await;
    // "10k" in the names of a full run's cases; the count otherwise.
    let count = if tokens.len() % 1_000 == 0 { format!("{}k", tokens.len() / 1_000) } else { tokens.len().to_string() };
    line(
        &format!("verifier {count} distinct"),
        Some(rate),
        serde_json::json!({ "ok": ok, "errors": tokens.len() - ok }),
    );
    let (rate, ok) = check_all(&v, &tokens).await;
    line(&format!("verifier {count} cached"), Some(rate), serde_json::json!({ "ok": ok, "errors": tokens.len() - ok }));

    // Hot: one token, for the duration.
    let hot = &tokens[0];
    let until = Instant::now() + Duration::from_secs(ctx.args.duration);
    let started = Instant::now();
    let (mut n, mut bad) = (0u64, 0u64);
    while Instant::now() < until {
        for _ in 0..10_000 {
            match v.verify_cached(hot) {
                Some(Ok(_)) => n += 1,
                _ => bad += 1,
            }
        }
        // The stream's task shares this thread, as it would a server's: let it run.
        tokio::task::yield_now().await;
    }
    let rate = n as f64 / started.elapsed().as_secs_f64();
    line("verifier hot", Some(rate), serde_json::json!({ "ok": n, "errors": bad }));
    drop(v);

    // Memory: many distinct tokens through one verifier, in batches of 10,000 that this tool
    // then drops, so what stays is the verifier's.
    drop(tokens);
    drop(parts);
    if ctx.args.memory_tokens == 0 {
        return Ok(());
    }
    let rss_before = rss_mb();
    let v = ctx.verifier(&ctx.args.endpoint).await?;
    let (mut seen, mut ok) = (0, 0);
    while seen < ctx.args.memory_tokens {
        let mut batch = Vec::with_capacity(10_000);
        for _ in 0..10_000.min(ctx.args.memory_tokens - seen) {
            batch.push(ctx.token().await?);
        }
        ok += check_all(&v, &batch).await.1;
        seen += batch.len();
    }
    let (access, users, clients) = v.revocations().len();
    line(
        "verifier memory",
        None,
        serde_json::json!({
            "ok": ok, "errors": seen - ok, "tokens_seen": seen, "cached_tokens": v.cached_tokens(),
            "revocations_held": access + users + clients, "rss_before_mb": rss_before, "rss_after_mb": rss_mb(),
        }),
    );
    Ok(())
}

/// Revocation to refusal across replicas.
async fn latency(ctx: &Ctx) -> anyhow::Result<()> {
    if let Some(other) = ctx.args.revoke_endpoint.clone() {
        let v = ctx.verifier(&ctx.args.endpoint).await?;
        let mut revoker = TokenServiceClient::new(Channel::from_shared(other)?.connect().await?);
        let mut took = Vec::with_capacity(ctx.args.samples);
        let mut lost = 0;
        let started = Instant::now();
        for _ in 0..ctx.args.samples {
            let t = ctx.token().await?;
            if v.verify(&t).await.is_err() {
                lost += 1;
                continue;
            }
            let t0 = Instant::now();
            revoker
                .revoke(pb::RevokeRequest {
                    token: t.clone(),
                    token_type_hint: "access_token".into(),
                    client_id: ctx.args.client_id.clone(),
                    client_secret: ctx.secret.clone(),
                })
                .await?;
            loop {
                if let Some(Err(Rejection::Revoked)) = v.verify_cached(&t) {
                    took.push(t0.elapsed());
                    break;
                }
                if t0.elapsed() > Duration::from_secs(2) {
                    lost += 1;
                    break;
                }
                tokio::time::sleep(Duration::from_micros(100)).await;
            }
        }
        took.sort();
        let pct = |p: f64| {
            took.get(((took.len() as f64 * p).ceil() as usize).saturating_sub(1)).map(|d| d.as_secs_f64() * 1e3)
        };
        line(
            "revocation to refusal",
            None,
            serde_json::json!({
                "ok": took.len(), "errors": lost, "p50_ms": pct(0.5), "p99_ms": pct(0.99),
                "max_ms": took.last().map(|d| d.as_secs_f64() * 1e3), "seconds": started.elapsed().as_secs_f64(),
            }),
        );
    }
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    // One thread: every figure is of one core.
    tokio::runtime::Builder::new_current_thread().enable_all().build()?.block_on(run(args))
}
