//! Discovery: the authorization server metadata (RFC 8414 §3, OpenID Connect Discovery §4)
//! and the JWK Set (RFC 7517 §5), both built by the token service and served as they come.

use crate::backend::Backend;
use crate::error::{ApiError, ErrorBody};
use actix_web::http::header;
use actix_web::{web, HttpResponse};
use tessera_proto::token::v1 as pb;

fn json_document(body: String, max_age: u32) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/json")
        .insert_header((header::CACHE_CONTROL, format!("public, max-age={max_age}")))
        // Browser-based clients fetch these documents from other origins.
        .insert_header((header::ACCESS_CONTROL_ALLOW_ORIGIN, "*"))
        .body(body)
}

async fn metadata(backend: &Backend) -> Result<HttpResponse, ApiError> {
    let m = backend
        .token
        .clone()
        .get_server_metadata(pb::GetServerMetadataRequest {})
        .await
        .map_err(|s| ApiError::from_status(&s))?;
    Ok(json_document(m.into_inner().metadata_json, 300))
}

/// RFC 8414 §3.
#[utoipa::path(
    get,
    path = "/.well-known/oauth-authorization-server",
    tag = "discovery",
    responses(
        (status = 200, description = "Authorization server metadata (RFC 8414 §2)", body = Object, content_type = "application/json"),
        (status = 503, description = "The token service is unavailable", body = ErrorBody),
    )
)]
#[tracing::instrument(name = "oauth_metadata", skip_all)]
pub async fn oauth_metadata(backend: web::Data<Backend>) -> Result<HttpResponse, ApiError> {
    metadata(&backend).await
}

/// OpenID Connect Discovery 1.0 §4: the same document.
#[utoipa::path(
    get,
    path = "/.well-known/openid-configuration",
    tag = "discovery",
    responses(
        (status = 200, description = "OpenID Provider metadata", body = Object, content_type = "application/json"),
        (status = 503, description = "The token service is unavailable", body = ErrorBody),
    )
)]
#[tracing::instrument(name = "openid_metadata", skip_all)]
pub async fn openid_metadata(backend: web::Data<Backend>) -> Result<HttpResponse, ApiError> {
    metadata(&backend).await
}

#[utoipa::path(
    get,
    path = "/oauth2/jwks",
    tag = "discovery",
    responses(
        (status = 200, description = "The public signing keys (RFC 7517 JWK Set)", body = Object, content_type = "application/json"),
        (status = 503, description = "The token service is unavailable", body = ErrorBody),
    )
)]
#[tracing::instrument(name = "jwks", skip_all)]
pub async fn jwks(backend: web::Data<Backend>) -> Result<HttpResponse, ApiError> {
    let k = backend.token.clone().get_jwks(pb::GetJwksRequest {}).await.map_err(|s| ApiError::from_status(&s))?;
    // Short: clients refetch on an unknown `kid`, and keys rotate.
    Ok(json_document(k.into_inner().jwks_json, 60))
}
