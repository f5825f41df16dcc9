//! OAuth errors leaving the service: logged with their detail, sent with their description.

use tessera_core::{ErrorCode, OAuthError};
use tonic::Status;

/// Maps an error to a gRPC status, logging what the client does not see. A server error
/// carries a correlation id instead of its cause.
pub fn status(e: OAuthError) -> Status {
    match e.code {
        ErrorCode::ServerError => {
            let id = tessera_crypto::random_secret(6);
            tracing::error!(error_id = %id, detail = e.detail.as_deref().unwrap_or(""), "internal error");
            let shown = OAuthError::new(e.code, format!("{} (error id {id})", e.description));
            tessera_proto::to_status(&shown)
        }
        ErrorCode::TemporarilyUnavailable => {
            tracing::warn!(error = e.code.as_str(), detail = e.detail.as_deref().unwrap_or(""), "store unavailable");
            tessera_proto::to_status(&e)
        }
        _ => {
            tracing::info!(error = e.code.as_str(), "request refused");
            tessera_proto::to_status(&e)
        }
    }
}
