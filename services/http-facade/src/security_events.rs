//! Security Event Tokens (RFC 8417) delivered by poll (RFC 8936): the revocations a resource
//! server must honour, for one that does not speak gRPC (`WatchRevocations` is the stream of
//! the same events). One RPC, `PollSecurityEvents`.

use crate::backend::Backend;
use crate::error::{ApiError, ErrorBody};
use crate::oauth::json_no_store;
use crate::params::{client_credentials, json_body};
use actix_web::{web, HttpRequest, HttpResponse};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use tessera_core::printable;
use tessera_proto::token::v1 as pb;
use utoipa::ToSchema;

/// A poll request (RFC 8936 §2.4), a JSON object. Every member is optional.
#[derive(Default, Deserialize, ToSchema)]
#[serde(default, rename_all = "camelCase", deny_unknown_fields)]
pub struct PollRequest {
    /// The most SETs to return; 0 only acknowledges. The server's default is 100, its
    /// maximum 1000.
    pub max_events: Option<u32>,
    /// `false` (the default) waits a few seconds for an event when none is pending.
    pub return_immediately: bool,
    /// `jti`s of the SETs received and processed.
    pub ack: Vec<String>,
    /// SETs received but not processed, by `jti`.
    pub set_errs: HashMap<String, SetErr>,
}

/// Why a SET could not be processed (RFC 8936 §2.4.4).
#[derive(Default, Deserialize, Serialize, ToSchema)]
#[serde(default)]
pub struct SetErr {
    pub err: String,
    pub description: String,
}

/// The SETs not yet acknowledged, by `jti` (RFC 8936 §2.5).
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct PollResponse {
    pub sets: BTreeMap<String, String>,
    pub more_available: bool,
}

#[utoipa::path(
    post,
    path = "/oauth2/security-events",
    tag = "oauth2",
    request_body(content((PollRequest = "application/json"))),
    responses(
        (status = 200, description = "The pending SETs (`typ` secevent+jwt), by jti", body = PollResponse),
        (status = 400, description = "The body is not an RFC 8936 poll request, or the client may not watch revocations (unauthorized_client)", body = ErrorBody),
        (status = 401, description = "Client authentication failed", body = ErrorBody),
        (status = 413, description = "The body is over 64 KiB", body = ErrorBody),
        (status = 503, description = "The token service is unavailable", body = ErrorBody),
    ),
    security(("client_secret_basic" = []))
)]
#[tracing::instrument(name = "security_events", skip_all)]
pub async fn poll(
    req: HttpRequest,
    backend: web::Data<Backend>,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let client = client_credentials(&req, "", "")?;
    crate::observe::observe(&req, "", &printable(&client.client_id));
    let r: PollRequest = match json_body(&req, &mut payload.into_inner()).await? {
        None => PollRequest::default(),
        Some(body) => serde_json::from_slice(&body).map_err(|e| {
            ApiError::invalid_request(format!(
                "the body is not an RFC 8936 poll request: {}",
                printable(&e.to_string())
            ))
        })?,
    };
    let answer = backend
        .token
        .clone()
        .poll_security_events(pb::PollSecurityEventsRequest {
            client_id: client.client_id,
            client_secret: client.client_secret,
            ack: r.ack,
            set_errs: r
                .set_errs
                .into_iter()
                .map(|(jti, e)| (jti, pb::SetError { err: e.err, description: e.description }))
                .collect(),
            max_events: r.max_events.map(|n| i32::try_from(n).unwrap_or(i32::MAX)),
            return_immediately: r.return_immediately,
        })
        .await
        .map_err(|s| ApiError::from_status(&s).basic(client.basic))?
        .into_inner();
    Ok(json_no_store(&PollResponse { sets: answer.sets.into_iter().collect(), more_available: answer.more_available }))
}
