//! OpenID Connect UserInfo (OIDC Core §5.3) for a Bearer access token (RFC 6750), with its
//! errors in `WWW-Authenticate`.

use crate::backend::Backend;
use crate::error::{oauth_error, BearerError, ErrorBody};
use crate::params::body_params;
use actix_web::dev::Payload;
use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse};
use tessera_core::OAuthError;
use tessera_proto::token::v1 as pb;

/// The access token from `Authorization: Bearer` or, on POST, the `access_token` form
/// parameter (RFC 6750 §2.1, §2.2); never both (RFC 6750 §2).
fn bearer(req: &HttpRequest, body_token: Option<&str>) -> Result<String, BearerError> {
    let invalid = |d: &str| BearerError::new(OAuthError::invalid_request(d));
    let mut headers = req.headers().get_all(header::AUTHORIZATION);
    let header_token = match headers.next() {
        None => None,
        Some(v) => {
            if headers.next().is_some() {
                return Err(invalid("the Authorization header is repeated"));
            }
            let v = v.to_str().map_err(|_| invalid("the Authorization header is not ASCII"))?;
            let (scheme, token) = v.trim().split_once(' ').unwrap_or((v, ""));
            if !scheme.eq_ignore_ascii_case("bearer") {
                // RFC 6750 §3.1: not a bearer token at all, so no error code.
                return Err(BearerError::missing());
            }
            Some(token.trim().to_owned())
        }
    };
    match (header_token, body_token) {
        (Some(_), Some(_)) => Err(invalid("send the access token one way only")),
        (Some(t), None) if !t.is_empty() => Ok(t),
        (None, Some(t)) => Ok(t.to_owned()),
        _ => Err(BearerError::missing()),
    }
}

async fn answer(backend: &Backend, access_token: String) -> Result<HttpResponse, BearerError> {
    let claims = backend
        .token
        .clone()
        .user_info(pb::UserInfoRequest { access_token })
        .await
        .map_err(|s| BearerError::new(oauth_error(&s)))?;
    Ok(HttpResponse::Ok()
        .content_type("application/json")
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .insert_header((header::PRAGMA, "no-cache"))
        .body(claims.into_inner().claims_json))
}

#[utoipa::path(
    get,
    path = "/userinfo",
    tag = "oidc",
    responses(
        (status = 200, description = "Claims about the signed-in user (OIDC Core §5.3.2)", body = Object, content_type = "application/json"),
        (status = 401, description = "No token, or an invalid one (RFC 6750 §3.1)", body = ErrorBody),
        (status = 403, description = "The token lacks the openid scope", body = ErrorBody),
        (status = 503, description = "The token service is unavailable", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
#[tracing::instrument(name = "userinfo", skip_all)]
pub async fn userinfo_get(req: HttpRequest, backend: web::Data<Backend>) -> Result<HttpResponse, BearerError> {
    answer(&backend, bearer(&req, None)?).await
}

#[utoipa::path(
    post,
    path = "/userinfo",
    tag = "oidc",
    request_body(content(("application/x-www-form-urlencoded")), description = "Optionally `access_token` (RFC 6750 §2.2)"),
    responses(
        (status = 200, description = "Claims about the signed-in user (OIDC Core §5.3.2)", body = Object, content_type = "application/json"),
        (status = 400, description = "Malformed request", body = ErrorBody),
        (status = 401, description = "No token, or an invalid one (RFC 6750 §3.1)", body = ErrorBody),
        (status = 403, description = "The token lacks the openid scope", body = ErrorBody),
        (status = 503, description = "The token service is unavailable", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
#[tracing::instrument(name = "userinfo", skip_all)]
pub async fn userinfo_post(
    req: HttpRequest,
    payload: web::Payload,
    backend: web::Data<Backend>,
) -> Result<HttpResponse, BearerError> {
    let mut payload: Payload = payload.into_inner();
    let params = body_params(&req, &mut payload).await?;
    answer(&backend, bearer(&req, params.get("access_token"))?).await
}
