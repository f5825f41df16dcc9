//! Liveness (`/healthz`: the process answers) and readiness (`/readyz`: the token service
//! answers its gRPC health check as SERVING).

use crate::backend::Backend;
use crate::error::{ApiError, ErrorBody};
use actix_web::{web, HttpResponse};
use serde::Serialize;
use std::time::Duration;
use tessera_core::{ErrorCode, OAuthError};
use tessera_telemetry::OncePer;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::HealthCheckRequest;

/// The gRPC service whose health decides readiness.
const TOKEN_SERVICE: &str = "tessera.token.v1.TokenService";

#[derive(Serialize, utoipa::ToSchema)]
pub struct Health {
    #[schema(example = "ok")]
    pub status: &'static str,
}

#[utoipa::path(
    get,
    path = "/healthz",
    tag = "operations",
    responses((status = 200, description = "The process is up", body = Health))
)]
pub async fn healthz() -> HttpResponse {
    HttpResponse::Ok().insert_header(("Cache-Control", "no-store")).json(Health { status: "ok" })
}

#[utoipa::path(
    get,
    path = "/readyz",
    tag = "operations",
    responses(
        (status = 200, description = "The token service is reachable and serving", body = Health),
        (status = 503, description = "The token service is unreachable or not serving", body = ErrorBody),
    )
)]
#[tracing::instrument(name = "readyz", skip_all)]
pub async fn readyz(backend: web::Data<Backend>) -> Result<HttpResponse, ApiError> {
    let mut request = tonic::Request::new(HealthCheckRequest { service: TOKEN_SERVICE.to_owned() });
    request.set_timeout(Duration::from_secs(2));
    let unavailable = |why: &str| {
        ApiError::new(OAuthError::new(
            ErrorCode::TemporarilyUnavailable,
            format!("the token service is not ready: {why}"),
        ))
    };
    // Anyone may ask, as often as they like: a line a second at most.
    static FAILED: OncePer = OncePer::new(Duration::from_secs(1));
    let answer = backend.health.clone().check(request).await.map_err(|s| {
        if let Some(held_back) = FAILED.admit() {
            tracing::warn!(grpc_code = ?s.code(), held_back, "readiness check failed");
        }
        unavailable("unreachable")
    })?;
    if answer.into_inner().status() == ServingStatus::Serving {
        Ok(HttpResponse::Ok().insert_header(("Cache-Control", "no-store")).json(Health { status: "ready" }))
    } else {
        Err(unavailable("not serving"))
    }
}
