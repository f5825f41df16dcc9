//! What the token service tells its operators: Prometheus series per RPC (requests and
//! latency by RPC, grant type and outcome), tokens issued, security events and store
//! outages, served at `GET /metrics` on a small HTTP/1.1 listener of its own (`metrics.listen`).
//!
//! That listener is separate from the gRPC port: the gRPC listener speaks HTTP/2 only (h2c
//! with prior knowledge), while Prometheus scrapes over HTTP/1.1; and a port of its own lets
//! a network policy open metrics to the scraper without opening the token RPCs.
//!
//! Security events are counted where the core records them: the core's audit port is
//! [`CountedAudit`], which counts each event and hands it on to the durable store's audit log,
//! so the counts belong to this service's registry and need no global subscriber (and
//! `tessera-core` stays free of metrics types).

use crate::errors;
use async_trait::async_trait;
use bytes::Bytes;
use http_body_util::Full;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;
use tessera_core::ports::{AuditEvent, AuditKind, AuditLog};
use tessera_core::{ErrorCode, OAuthError, StoreResult};
use tessera_telemetry::metrics::prometheus::{HistogramVec, IntCounter, IntCounterVec, IntGauge, Registry};
use tessera_telemetry::metrics::{counter, counter_vec, gauge, latency_vec, render};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tonic::Status;

/// The label of the store a `temporarily_unavailable` error is about, as the store named itself
/// ([`OAuthError::unavailable_store`]).
pub(crate) fn store_label(e: &OAuthError) -> &'static str {
    match e.unavailable_store {
        Some("database") => "database",
        Some("ephemeral store") => "ephemeral",
        _ => "unknown",
    }
}

/// The token service's series, in a registry of its own.
pub struct Metrics {
    registry: Registry,
    requests: IntCounterVec,
    latency: HistogramVec,
    tokens_issued: IntCounterVec,
    refresh_reuse: IntCounter,
    code_replays: IntCounter,
    lockouts: IntCounter,
    audit_events: IntCounterVec,
    store_errors: IntCounterVec,
    /// Connections the gRPC port holds open, and those it refused at its bound.
    pub(crate) grpc_connections: IntGauge,
    pub(crate) grpc_connections_refused: IntCounter,
}

impl Metrics {
    pub fn new() -> anyhow::Result<Self> {
        let r = Registry::new();
        let rpc_labels = &["rpc", "grant_type", "outcome"];
        let m = Self {
            requests: counter_vec(
                &r,
                "tessera_grpc_requests_total",
                "gRPC calls answered, by RPC, grant type and outcome (ok or the OAuth error code).",
                rpc_labels,
            )?,
            latency: latency_vec(
                &r,
                "tessera_grpc_request_duration_seconds",
                "Time to answer a gRPC call, by RPC, grant type and outcome.",
                rpc_labels,
            )?,
            tokens_issued: counter_vec(
                &r,
                "tessera_tokens_issued_total",
                "Access tokens issued, by grant type.",
                &["grant_type"],
            )?,
            refresh_reuse: counter(
                &r,
                "tessera_refresh_reuse_detected_total",
                "Rotated refresh tokens presented again (their family was revoked).",
            )?,
            code_replays: counter(
                &r,
                "tessera_code_replays_total",
                "Authorization codes used twice (what the first use issued was revoked).",
            )?,
            lockouts: counter(&r, "tessera_lockouts_total", "Users locked out after repeated password failures.")?,
            audit_events: counter_vec(&r, "tessera_audit_events_total", "Audit events, by kind.", &["kind"])?,
            store_errors: counter_vec(
                &r,
                "tessera_store_errors_total",
                "Requests refused with temporarily_unavailable, by the store that could not be reached.",
                &["store"],
            )?,
            grpc_connections: gauge(&r, "tessera_grpc_connections", "Connections the gRPC port holds open.")?,
            grpc_connections_refused: counter(
                &r,
                "tessera_grpc_connections_refused_total",
                "Connections the gRPC port refused because it held grpc.max_connections already.",
            )?,
            registry: r,
        };
        // Series that alerts watch exist from the start, at zero.
        for store in ["database", "ephemeral"] {
            m.store_errors.with_label_values(&[store]);
        }
        for grant in ["client_credentials", "password", "refresh_token", "authorization_code", "device_code"] {
            m.tokens_issued.with_label_values(&[grant]);
        }
        Ok(m)
    }

    /// The text exposition of every series.
    pub fn render(&self) -> String {
        render(&self.registry)
    }

    /// Runs one RPC's body: times it, counts its outcome, and maps an error to its gRPC
    /// status (which also records the OAuth error code on the RPC's span).
    pub async fn observe<T>(
        &self,
        rpc: &'static str,
        grant_type: &'static str,
        body: impl Future<Output = Result<T, OAuthError>>,
    ) -> Result<tonic::Response<T>, Status> {
        let started = Instant::now();
        let result = body.await;
        let outcome = match &result {
            Ok(_) => "ok",
            Err(e) => e.code.as_str(),
        };
        if let Err(e) = &result {
            if e.code == ErrorCode::TemporarilyUnavailable {
                self.store_errors.with_label_values(&[store_label(e)]).inc();
            }
        }
        let labels = [rpc, grant_type, outcome];
        self.requests.with_label_values(&labels).inc();
        self.latency.with_label_values(&labels).observe(started.elapsed().as_secs_f64());
        result.map(tonic::Response::new).map_err(errors::status)
    }

    /// Counts an access token issued with this grant (a label from [`tessera_core::model::GrantType::label`]).
    pub fn token_issued(&self, grant_type: &'static str) {
        self.tokens_issued.with_label_values(&[grant_type]).inc();
    }

    /// Counts one audit event.
    pub fn audit_event(&self, kind: AuditKind) {
        match kind {
            AuditKind::RefreshReuse => self.refresh_reuse.inc(),
            AuditKind::CodeReplay => self.code_replays.inc(),
            AuditKind::Lockout => self.lockouts.inc(),
            _ => {}
        }
        self.audit_events.with_label_values(&[kind.as_str()]).inc();
    }
}

/// An audit log that counts every event on its way to `inner`.
pub struct CountedAudit {
    inner: Arc<dyn AuditLog>,
    metrics: Arc<Metrics>,
}

impl CountedAudit {
    pub fn new(inner: Arc<dyn AuditLog>, metrics: Arc<Metrics>) -> Self {
        Self { inner, metrics }
    }
}

#[async_trait]
impl AuditLog for CountedAudit {
    async fn record_event(&self, event: &AuditEvent) -> StoreResult<()> {
        // Counted even when the audit log cannot be written: the event happened.
        self.metrics.audit_event(event.kind);
        self.inner.record_event(event).await
    }
    async fn recent_events(&self, limit: u64) -> StoreResult<Vec<AuditEvent>> {
        self.inner.recent_events(limit).await
    }
}

type Answer = http::Response<Full<Bytes>>;

fn answer(metrics: &Metrics, request: &http::Request<hyper::body::Incoming>) -> Answer {
    let (status, content_type, body) = match (request.method(), request.uri().path()) {
        (&http::Method::GET, "/metrics") => {
            (http::StatusCode::OK, tessera_telemetry::metrics::CONTENT_TYPE, Bytes::from(metrics.render()))
        }
        (_, "/metrics") => {
            (http::StatusCode::METHOD_NOT_ALLOWED, "text/plain", Bytes::from_static(b"only GET /metrics\n"))
        }
        _ => (http::StatusCode::NOT_FOUND, "text/plain", Bytes::from_static(b"try GET /metrics\n")),
    };
    let mut res = http::Response::new(Full::new(body));
    *res.status_mut() = status;
    res.headers_mut().insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static(content_type));
    res
}

/// Serves `GET /metrics` on `listener` until the returned task is aborted (which also ends
/// the connections it accepted).
pub fn serve_metrics(listener: TcpListener, metrics: Arc<Metrics>) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut connections = tokio::task::JoinSet::new();
        loop {
            let stream = match listener.accept().await {
                Ok((stream, _)) => stream,
                Err(e) => {
                    tracing::warn!(error = %e, "metrics listener: accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            };
            // Reap finished connections so the set does not grow.
            while connections.try_join_next().is_some() {}
            let metrics = Arc::clone(&metrics);
            connections.spawn(async move {
                let service = hyper::service::service_fn(move |request| {
                    let res = answer(&metrics, &request);
                    async move { Ok::<_, Infallible>(res) }
                });
                let io = hyper_util::rt::TokioIo::new(stream);
                let _ = hyper::server::conn::http1::Builder::new().serve_connection(io, service).await;
            });
        }
    })
}

/// Binds `metrics.listen`; `None` when it is empty (metrics off).
pub async fn bind_metrics(listen: Option<SocketAddr>) -> anyhow::Result<Option<(TcpListener, SocketAddr)>> {
    let Some(listen) = listen else { return Ok(None) };
    let listener = TcpListener::bind(listen)
        .await
        .map_err(|e| anyhow::anyhow!("metrics.listen: cannot bind {listen}: {e} (empty turns the listener off)"))?;
    let addr = listener.local_addr()?;
    Ok(Some((listener, addr)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unavailable_store_is_named_by_what_the_core_says() {
        let db: OAuthError =
            tessera_core::StoreError::Unavailable { store: "database", reason: "connection refused".into() }.into();
        assert_eq!(store_label(&db), "database");
        let eph: OAuthError =
            tessera_core::StoreError::Unavailable { store: "ephemeral store", reason: "timed out".into() }.into();
        assert_eq!(store_label(&eph), "ephemeral");
        assert_eq!(store_label(&OAuthError::new(ErrorCode::TemporarilyUnavailable, "busy")), "unknown");
    }

    #[tokio::test]
    async fn each_rpc_is_counted_by_outcome_and_security_events_by_kind() {
        let m = Metrics::new().unwrap();
        let ok = m.observe("IssueToken", "client_credentials", async { Ok::<_, OAuthError>(()) }).await;
        assert!(ok.is_ok());
        let refused = m
            .observe("IssueToken", "client_credentials", async {
                Err::<(), _>(OAuthError::invalid_client("client authentication failed"))
            })
            .await;
        assert_eq!(refused.unwrap_err().code(), tonic::Code::Unauthenticated);
        m.audit_event(AuditKind::RefreshReuse);
        m.audit_event(AuditKind::UserCreated);
        let text = m.render();
        for line in [
            r#"tessera_grpc_requests_total{grant_type="client_credentials",outcome="ok",rpc="IssueToken"} 1"#,
            r#"tessera_grpc_requests_total{grant_type="client_credentials",outcome="invalid_client",rpc="IssueToken"} 1"#,
            r#"tessera_grpc_request_duration_seconds_count{grant_type="client_credentials",outcome="ok",rpc="IssueToken"} 1"#,
            "tessera_refresh_reuse_detected_total 1",
            "tessera_code_replays_total 0",
            r#"tessera_audit_events_total{kind="refresh_reuse"} 1"#,
            r#"tessera_audit_events_total{kind="user_created"} 1"#,
            r#"tessera_store_errors_total{store="database"} 0"#,
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line:?} in:\n{text}");
        }
    }
}
