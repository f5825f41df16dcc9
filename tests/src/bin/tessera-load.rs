//! A bounded load generator for the token service's gRPC API. It only talks to the
//! endpoint it is given (use a loopback address), stops by itself after `--duration`, and
//! prints throughput and latency percentiles.
//!
//! ```text
//! tessera-load --endpoint http://127.0.0.1:50051 --admin-token-file data/admin-token \
//!              --scenario client-credentials --concurrency 64 --duration 10
//! ```
//!
//! Scenarios: `client-credentials`, `introspect-hot`, `introspect-many`, and
//! `refresh-rotation` (each request in flight keeps one refresh chain, every rotated token used
//! once; run it with a small `--concurrency`, since each chain starts with a password grant).

use anyhow::Context as _;
use clap::{Parser, ValueEnum};
use std::time::{Duration, Instant};
use tessera_proto::admin::v1 as adminpb;
use tessera_proto::admin::v1::admin_service_client::AdminServiceClient;
use tessera_proto::token::v1 as pb;
use tessera_proto::token::v1::token_service_client::TokenServiceClient;
use tonic::transport::Channel;

#[derive(Clone, Copy, ValueEnum, Debug)]
enum Scenario {
    /// IssueToken with grant_type=client_credentials.
    ClientCredentials,
    /// Introspect of one hot access token.
    IntrospectHot,
    /// Introspect over 10 000 distinct access tokens (every first check verifies ECDSA).
    IntrospectMany,
    /// IssueToken with grant_type=refresh_token: each request in flight keeps its own chain,
    /// presenting every rotated refresh token exactly once and feeding the new one back.
    RefreshRotation,
}

#[derive(Parser)]
struct Args {
    #[arg(long, default_value = "http://127.0.0.1:50051")]
    endpoint: String,
    #[arg(long, default_value = "data/admin-token")]
    admin_token_file: std::path::PathBuf,
    #[arg(long, value_enum)]
    scenario: Scenario,
    /// Requests in flight.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// HTTP/2 connections shared by the requests.
    #[arg(long, default_value_t = 8)]
    connections: usize,
    /// Seconds to run (at most 120).
    #[arg(long, default_value_t = 10)]
    duration: u64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let duration = Duration::from_secs(args.duration.clamp(1, 120));
    let admin_token = std::fs::read_to_string(&args.admin_token_file)
        .with_context(|| format!("reading {}", args.admin_token_file.display()))?;
    let credential = tessera_proto::AdminCredential::new(&admin_token)
        .context("the admin credential is not a valid header value")?;
    let channel = Channel::from_shared(args.endpoint.clone())?.connect().await.context("connecting")?;
    let mut admin = AdminServiceClient::with_interceptor(channel, credential);
    let created = admin
        .create_client(adminpb::CreateClientRequest {
            name: "load generator".into(),
            grant_types: vec!["client_credentials".into(), "password".into(), "refresh_token".into()],
            scopes: vec!["api".into()],
            ..Default::default()
        })
        .await?
        .into_inner();
    let client_id = created.client.map(|c| c.client_id).unwrap_or_default();
    let secret = created.client_secret;

    let mut channels = Vec::new();
    for _ in 0..args.connections.max(1) {
        channels.push(Channel::from_shared(args.endpoint.clone())?.connect().await?);
    }
    let cc = pb::IssueTokenRequest {
        grant_type: "client_credentials".into(),
        client_id: client_id.clone(),
        client_secret: secret.clone(),
        ..Default::default()
    };
    let tokens: Vec<String> = match args.scenario {
        Scenario::ClientCredentials | Scenario::RefreshRotation => vec![],
        Scenario::IntrospectHot => {
            vec![TokenServiceClient::new(channels[0].clone()).issue_token(cc.clone()).await?.into_inner().access_token]
        }
        Scenario::IntrospectMany => {
            let mut v = Vec::with_capacity(10_000);
            let mut c = TokenServiceClient::new(channels[0].clone());
            for _ in 0..10_000 {
                v.push(c.issue_token(cc.clone()).await?.into_inner().access_token);
            }
            v
        }
    };
    let tokens = std::sync::Arc::new(tokens);
    // One chain per request in flight, started by a password grant of a user made for the run.
    let mut chains = vec![String::new(); args.concurrency.max(1)];
    if let Scenario::RefreshRotation = args.scenario {
        let username = format!("load-{}", std::process::id());
        let password = format!("load-password-{}", std::process::id());
        admin
            .create_user(adminpb::CreateUserRequest {
                username: username.clone(),
                password: password.clone(),
                ..Default::default()
            })
            .await?;
        let mut c = TokenServiceClient::new(channels[0].clone());
        for chain in &mut chains {
            let grant = pb::IssueTokenRequest {
                grant_type: "password".into(),
                client_id: client_id.clone(),
                client_secret: secret.clone(),
                username: username.clone(),
                password: password.clone(),
                ..Default::default()
            };
            *chain = c.issue_token(grant).await.context("starting a refresh chain")?.into_inner().refresh_token;
        }
    }

    let deadline = Instant::now() + duration;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..args.concurrency.max(1) {
        let mut c = TokenServiceClient::new(channels[i % channels.len()].clone());
        let cc = cc.clone();
        let tokens = std::sync::Arc::clone(&tokens);
        let (client_id, secret) = (client_id.clone(), secret.clone());
        let scenario = args.scenario;
        let mut chain = std::mem::take(&mut chains[i]);
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut errors = 0u64;
            let mut n = i;
            while Instant::now() < deadline {
                let t0 = Instant::now();
                let ok = match scenario {
                    Scenario::ClientCredentials => c.issue_token(cc.clone()).await.is_ok(),
                    Scenario::RefreshRotation => {
                        let refresh = pb::IssueTokenRequest {
                            grant_type: "refresh_token".into(),
                            client_id: client_id.clone(),
                            client_secret: secret.clone(),
                            refresh_token: chain.clone(),
                            ..Default::default()
                        };
                        match c.issue_token(refresh).await {
                            // A rotation must hand out a new refresh token and an access token.
                            Ok(r) if !r.get_ref().access_token.is_empty() && r.get_ref().refresh_token != chain => {
                                chain = r.into_inner().refresh_token;
                                true
                            }
                            _ => false,
                        }
                    }
                    Scenario::IntrospectHot | Scenario::IntrospectMany => {
                        n = n.wrapping_add(args_stride());
                        let token = tokens[n % tokens.len()].clone();
                        let r = c
                            .introspect(pb::IntrospectRequest {
                                token,
                                token_type_hint: String::new(),
                                client_id: client_id.clone(),
                                client_secret: secret.clone(),
                            })
                            .await;
                        matches!(r, Ok(ref resp) if resp.get_ref().active)
                    }
                };
                latencies.push(t0.elapsed().as_micros() as u32);
                if !ok {
                    errors += 1;
                }
            }
            (latencies, errors)
        }));
    }
    let mut all = Vec::new();
    let mut errors = 0;
    for t in tasks {
        let (l, e) = t.await?;
        all.extend(l);
        errors += e;
    }
    let elapsed = started.elapsed().as_secs_f64();
    all.sort_unstable();
    let pct = |p: f64| {
        all.get(((all.len() as f64 * p) as usize).min(all.len().saturating_sub(1))).copied().unwrap_or(0) as f64
            / 1000.0
    };
    println!(
        "scenario={:?} concurrency={} connections={} duration={:.1}s requests={} errors={} rps={:.0} p50={:.2}ms p99={:.2}ms",
        args.scenario,
        args.concurrency,
        args.connections,
        elapsed,
        all.len(),
        errors,
        all.len() as f64 / elapsed,
        pct(0.50),
        pct(0.99)
    );
    let _ = admin.delete_client(adminpb::DeleteClientRequest { client_id }).await;
    Ok(())
}

/// Each task walks the token list with a stride so tasks do not move in lockstep.
fn args_stride() -> usize {
    7919
}
