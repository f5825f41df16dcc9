//! A resource service protected by `tessera-verifier`: every request needs a Tessera access
//! token, checked in process, and a token revoked at the token service is refused here within
//! moments.
//!
//! - HTTP (axum) on `LISTEN` (default `127.0.0.1:8090`): `GET /whoami` answers the token's
//!   subject, client and scopes; `GET /orders` also needs the scope `orders:read`;
//!   `GET /healthz` needs nothing.
//! - gRPC (tonic) on `GRPC_LISTEN` (default `127.0.0.1:50061`): the standard health service,
//!   behind the same layer.
//!
//! It follows revocations as the client `WATCH_CLIENT_ID` / `WATCH_CLIENT_SECRET` (a
//! confidential client allowed to watch: `tessera admin client permissions <id>
//! --watch-revocations true`), from the token service at `TESSERA_GRPC_URL` (default
//! `http://127.0.0.1:50051`), whose issuer is `TESSERA_ISSUER` (default
//! `http://127.0.0.1:8080`). `FAIL_OPEN=1` accepts tokens while the revocation stream is lost;
//! the default refuses them once it has been lost for 30 s.
//!
//! It prints one line, `listening http=<addr> grpc=<addr>`, once both ports are bound.

use axum::extract::Extension;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use std::sync::Arc;
use std::time::Duration;
use tessera_verifier::{require_scope, Claims, Config, RequireToken, Verifier, WhenDisconnected};
use tonic::transport::{Channel, Server};

fn env(name: &str, default: &str) -> String {
    std::env::var(name).ok().filter(|v| !v.is_empty()).unwrap_or_else(|| default.to_owned())
}

async fn whoami(Extension(claims): Extension<Arc<Claims>>) -> Json<serde_json::Value> {
    Json(serde_json::json!({
        "sub": claims.sub,
        "client_id": claims.client_id,
        "scopes": claims.scopes().collect::<Vec<_>>(),
    }))
}

async fn orders(request: axum::extract::Request) -> Response {
    match require_scope(request.extensions(), "orders:read") {
        Ok(claims) => Json(serde_json::json!({ "orders": [], "for": claims.sub })).into_response(),
        Err(e) => e.response(),
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt().with_env_filter(env("RUST_LOG", "info")).with_writer(std::io::stderr).init();
    let mut cfg = Config::new(
        env("TESSERA_ISSUER", "http://127.0.0.1:8080"),
        env("WATCH_CLIENT_ID", ""),
        std::env::var("WATCH_CLIENT_SECRET").unwrap_or_default(),
    );
    if env("FAIL_OPEN", "0") == "1" {
        cfg.when_disconnected = WhenDisconnected::FailOpen;
    }
    if let Ok(seconds) = env("MAX_DISCONNECTED_SECONDS", "30").parse() {
        cfg.max_disconnected = Duration::from_secs(seconds);
    }
    // Lazy: the verifier keeps calling until the token service answers.
    let channel = Channel::from_shared(env("TESSERA_GRPC_URL", "http://127.0.0.1:50051"))?.connect_lazy();
    let verifier = Verifier::start(channel, cfg);
    if !verifier.caught_up(Duration::from_secs(10)).await {
        tracing::warn!("the revocation stream has not caught up yet; tokens are refused until it does");
    }

    let protected = Router::new()
        .route("/whoami", get(whoami))
        .route("/orders", get(orders))
        .layer(RequireToken::new(verifier.clone()));
    let app = Router::new().route("/healthz", get(|| async { StatusCode::NO_CONTENT })).merge(protected);
    let http = tokio::net::TcpListener::bind(env("LISTEN", "127.0.0.1:8090")).await?;
    let grpc = tokio::net::TcpListener::bind(env("GRPC_LISTEN", "127.0.0.1:50061")).await?;
    println!("listening http={} grpc={}", http.local_addr()?, grpc.local_addr()?);

    let (mut health, health_service) = tonic_health::server::health_reporter();
    health.set_service_status("", tonic_health::ServingStatus::Serving).await;
    let grpc_server =
        Server::builder().layer(RequireToken::new(verifier)).add_service(health_service).serve_with_incoming(
            tonic::transport::server::TcpIncoming::from_listener(grpc, true, None).map_err(|e| anyhow::anyhow!(e))?,
        );
    let http_server = axum::serve(http, app);
    tokio::select! {
        r = grpc_server => r?,
        r = http_server => r?,
        _ = tokio::signal::ctrl_c() => {}
    }
    Ok(())
}
