//! The JSON endpoints a client calls: token (RFC 6749 §3.2), device authorization
//! (RFC 8628 §3.1), introspection (RFC 7662) and revocation (RFC 7009). Each is one gRPC call.

use crate::backend::Backend;
use crate::error::{no_store, ApiError, ErrorBody};
use crate::params::{client_credentials, ClientCredentials, Params};
use actix_web::{web, HttpRequest, HttpResponse};
use serde::{Deserialize, Serialize};
use tessera_core::model::GrantType;
use tessera_core::printable;
use tessera_proto::token::v1 as pb;
use utoipa::ToSchema;

/// A token request (RFC 6749 §4.1.3, §4.3.2, §4.4.2, §6; RFC 8628 §3.4), as a form or a JSON
/// object. Client credentials may instead come in an `Authorization: Basic` header.
#[derive(Default, Deserialize, ToSchema)]
#[serde(default)]
pub struct TokenRequest {
    /// `client_credentials`, `password`, `refresh_token`, `authorization_code`,
    /// `urn:ietf:params:oauth:grant-type:device_code` (or its short form `device_code`).
    #[schema(example = "client_credentials")]
    pub grant_type: String,
    pub client_id: String,
    pub client_secret: String,
    pub scope: String,
    pub username: String,
    pub password: String,
    pub refresh_token: String,
    pub code: String,
    pub redirect_uri: String,
    pub code_verifier: String,
    pub device_code: String,
}

/// A successful token response (RFC 6749 §5.1). Absent fields were not issued.
#[derive(Serialize, ToSchema)]
pub struct TokenResponse {
    pub access_token: String,
    #[schema(example = "Bearer")]
    pub token_type: String,
    pub expires_in: i64,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub refresh_token: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub scope: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub id_token: String,
}

impl From<pb::TokenResponse> for TokenResponse {
    fn from(t: pb::TokenResponse) -> Self {
        Self {
            access_token: t.access_token,
            token_type: t.token_type,
            expires_in: t.expires_in,
            refresh_token: t.refresh_token,
            scope: t.scope,
            id_token: t.id_token,
        }
    }
}

/// The caller's credentials (HTTP Basic or the body), noted for the request's span and series.
fn caller(
    req: &HttpRequest,
    body_client_id: &str,
    body_client_secret: &str,
    grant_type: &'static str,
) -> Result<ClientCredentials, ApiError> {
    let client = client_credentials(req, body_client_id, body_client_secret)?;
    crate::observe::observe(req, grant_type, &printable(&client.client_id));
    Ok(client)
}

/// A JSON answer that must not be cached (RFC 6749 §5.1).
pub fn json_no_store(body: &impl Serialize) -> HttpResponse {
    let mut res = HttpResponse::Ok().json(body);
    no_store(&mut res);
    res
}

/// The token endpoint: one RPC chosen by `grant_type`. Unknown and missing grant types go to
/// `IssueToken`, which refuses them.
#[utoipa::path(
    post,
    path = "/oauth2/token",
    tag = "oauth2",
    request_body(content(
        (TokenRequest = "application/x-www-form-urlencoded"),
        (TokenRequest = "application/json"),
    )),
    responses(
        (status = 200, description = "Tokens issued", body = TokenResponse),
        (status = 400, description = "RFC 6749 §5.2 error", body = ErrorBody),
        (status = 401, description = "Client authentication failed", body = ErrorBody),
        (status = 413, description = "Body larger than 64 KiB", body = ErrorBody),
        (status = 503, description = "The token service is unavailable", body = ErrorBody),
    ),
    security((), ("client_secret_basic" = []))
)]
#[tracing::instrument(name = "token", skip_all)]
pub async fn token(req: HttpRequest, backend: web::Data<Backend>, params: Params) -> Result<HttpResponse, ApiError> {
    let r: TokenRequest = params.parse()?;
    let client = caller(&req, &r.client_id, &r.client_secret, tessera_core::model::GrantType::label(&r.grant_type))?;
    let mut rpc = backend.token.clone();
    let answer = match GrantType::parse(&r.grant_type) {
        Some(GrantType::AuthorizationCode) => {
            rpc.exchange_code(pb::ExchangeCodeRequest {
                client_id: client.client_id,
                client_secret: client.client_secret,
                code: r.code,
                redirect_uri: r.redirect_uri,
                code_verifier: r.code_verifier,
            })
            .await
        }
        Some(GrantType::DeviceCode) => {
            rpc.poll_device(pb::PollDeviceRequest {
                client_id: client.client_id,
                client_secret: client.client_secret,
                device_code: r.device_code,
            })
            .await
        }
        _ => {
            rpc.issue_token(pb::IssueTokenRequest {
                grant_type: r.grant_type,
                client_id: client.client_id,
                client_secret: client.client_secret,
                scope: r.scope,
                username: r.username,
                password: r.password,
                refresh_token: r.refresh_token,
            })
            .await
        }
    };
    let tokens = answer.map_err(|s| ApiError::from_status(&s).basic(client.basic))?;
    Ok(json_no_store(&TokenResponse::from(tokens.into_inner())))
}

/// A device authorization request (RFC 8628 §3.1).
#[derive(Default, Deserialize, ToSchema)]
#[serde(default)]
pub struct DeviceAuthorizationRequest {
    pub client_id: String,
    pub client_secret: String,
    pub scope: String,
}

/// A device authorization response (RFC 8628 §3.2).
#[derive(Serialize, ToSchema)]
pub struct DeviceAuthorizationResponse {
    pub device_code: String,
    #[schema(example = "BCDF-GHJK")]
    pub user_code: String,
    pub verification_uri: String,
    pub verification_uri_complete: String,
    pub expires_in: i64,
    pub interval: i64,
}

#[utoipa::path(
    post,
    path = "/oauth2/device_authorization",
    tag = "oauth2",
    request_body(content(
        (DeviceAuthorizationRequest = "application/x-www-form-urlencoded"),
        (DeviceAuthorizationRequest = "application/json"),
    )),
    responses(
        (status = 200, description = "Device and user codes", body = DeviceAuthorizationResponse),
        (status = 400, description = "RFC 6749 §5.2 error", body = ErrorBody),
        (status = 401, description = "Client authentication failed", body = ErrorBody),
        (status = 503, description = "The token service is unavailable", body = ErrorBody),
    ),
    security((), ("client_secret_basic" = []))
)]
#[tracing::instrument(name = "device_authorization", skip_all)]
pub async fn device_authorization(
    req: HttpRequest,
    backend: web::Data<Backend>,
    params: Params,
) -> Result<HttpResponse, ApiError> {
    let r: DeviceAuthorizationRequest = params.parse()?;
    let client = caller(&req, &r.client_id, &r.client_secret, "")?;
    let d = backend
        .token
        .clone()
        .start_device_authorization(pb::DeviceAuthorizationRequest {
            client_id: client.client_id,
            client_secret: client.client_secret,
            scope: r.scope,
        })
        .await
        .map_err(|s| ApiError::from_status(&s).basic(client.basic))?
        .into_inner();
    Ok(json_no_store(&DeviceAuthorizationResponse {
        device_code: d.device_code,
        user_code: d.user_code,
        verification_uri: d.verification_uri,
        verification_uri_complete: d.verification_uri_complete,
        expires_in: d.expires_in,
        interval: d.interval,
    }))
}

/// An introspection or revocation request (RFC 7662 §2.1, RFC 7009 §2.1), from an
/// authenticated client.
#[derive(Default, Deserialize, ToSchema)]
#[serde(default)]
pub struct TokenCheckRequest {
    pub token: String,
    /// `access_token` or `refresh_token`; a hint only.
    pub token_type_hint: String,
    pub client_id: String,
    pub client_secret: String,
}

/// An introspection response (RFC 7662 §2.2): `{"active": false}` alone for any token that
/// is not active.
#[derive(Serialize, ToSchema, Default)]
pub struct IntrospectionResponse {
    pub active: bool,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub scope: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub client_id: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub username: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub token_type: String,
    #[serde(skip_serializing_if = "is_zero")]
    pub exp: i64,
    #[serde(skip_serializing_if = "is_zero")]
    pub iat: i64,
    #[serde(skip_serializing_if = "is_zero")]
    pub nbf: i64,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub sub: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub aud: Option<Audience>,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub iss: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub jti: String,
}

/// RFC 7519 §4.1.3: one audience as a string, several as an array.
#[derive(Serialize, ToSchema)]
#[serde(untagged)]
pub enum Audience {
    One(String),
    Many(Vec<String>),
}

fn is_zero(n: &i64) -> bool {
    *n == 0
}

impl From<pb::IntrospectResponse> for IntrospectionResponse {
    fn from(r: pb::IntrospectResponse) -> Self {
        if !r.active {
            return Self::default();
        }
        let aud = match r.aud.len() {
            0 => None,
            1 => r.aud.into_iter().next().map(Audience::One),
            _ => Some(Audience::Many(r.aud)),
        };
        Self {
            active: true,
            scope: r.scope,
            client_id: r.client_id,
            username: r.username,
            token_type: r.token_type,
            exp: r.exp,
            iat: r.iat,
            nbf: r.nbf,
            sub: r.sub,
            aud,
            iss: r.iss,
            jti: r.jti,
        }
    }
}

#[utoipa::path(
    post,
    path = "/oauth2/introspect",
    tag = "oauth2",
    request_body(content(
        (TokenCheckRequest = "application/x-www-form-urlencoded"),
        (TokenCheckRequest = "application/json"),
    )),
    responses(
        (status = 200, description = "The token's state", body = IntrospectionResponse),
        (status = 400, description = "RFC 6749 §5.2 error", body = ErrorBody),
        (status = 401, description = "The caller is not an authenticated client", body = ErrorBody),
        (status = 503, description = "The token service is unavailable", body = ErrorBody),
    ),
    security(("client_secret_basic" = []), ())
)]
#[tracing::instrument(name = "introspect", skip_all)]
pub async fn introspect(
    req: HttpRequest,
    backend: web::Data<Backend>,
    params: Params,
) -> Result<HttpResponse, ApiError> {
    let r: TokenCheckRequest = params.parse()?;
    let client = caller(&req, &r.client_id, &r.client_secret, "")?;
    let answer = backend
        .token
        .clone()
        .introspect(pb::IntrospectRequest {
            token: r.token,
            token_type_hint: r.token_type_hint,
            client_id: client.client_id,
            client_secret: client.client_secret,
        })
        .await
        .map_err(|s| ApiError::from_status(&s).basic(client.basic))?;
    Ok(json_no_store(&IntrospectionResponse::from(answer.into_inner())))
}

#[utoipa::path(
    post,
    path = "/oauth2/revoke",
    tag = "oauth2",
    request_body(content(
        (TokenCheckRequest = "application/x-www-form-urlencoded"),
        (TokenCheckRequest = "application/json"),
    )),
    responses(
        (status = 200, description = "Revoked, or the token was unknown (RFC 7009 §2.2); empty body"),
        (status = 400, description = "RFC 7009 §2.2.1 error", body = ErrorBody),
        (status = 401, description = "Client authentication failed", body = ErrorBody),
        (status = 503, description = "The token service is unavailable", body = ErrorBody),
    ),
    security(("client_secret_basic" = []), ())
)]
#[tracing::instrument(name = "revoke", skip_all)]
pub async fn revoke(req: HttpRequest, backend: web::Data<Backend>, params: Params) -> Result<HttpResponse, ApiError> {
    let r: TokenCheckRequest = params.parse()?;
    let client = caller(&req, &r.client_id, &r.client_secret, "")?;
    backend
        .token
        .clone()
        .revoke(pb::RevokeRequest {
            token: r.token,
            token_type_hint: r.token_type_hint,
            client_id: client.client_id,
            client_secret: client.client_secret,
        })
        .await
        .map_err(|s| ApiError::from_status(&s).basic(client.basic))?;
    let mut res = HttpResponse::Ok().finish();
    no_store(&mut res);
    Ok(res)
}
