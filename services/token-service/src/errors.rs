//! OAuth errors leaving the service: logged with their detail, sent with their description,
//! and named on the RPC's span (`error_code`, an attribute of its trace span).

use std::time::Duration;
use tessera_core::{ErrorCode, OAuthError};
use tessera_telemetry::OncePer;
use tonic::Status;

/// Maps an error to a gRPC status, logging what the client does not see. A server error
/// carries a correlation id instead of its cause. The current span (the RPC's, which
/// declares an empty `error_code` field) gets the OAuth error code.
pub fn status(e: OAuthError) -> Status {
    tracing::Span::current().record("error_code", e.code.as_str());
    match e.code {
        ErrorCode::ServerError => {
            let id = tessera_crypto::random_secret(6);
            tracing::error!(error_id = %id, detail = e.detail.as_deref().unwrap_or(""), "internal error");
            let shown = OAuthError::new(e.code, format!("{} (error id {id})", e.description));
            tessera_proto::to_status(&shown)
        }
        ErrorCode::TemporarilyUnavailable => {
            // While a store is down, or a bound is reached, every request that meets it ends
            // here: a line a second says so, and how many requests it stands for. One gate per
            // store and one for the bounds, so that an outage never hides another, nor a bound
            // an outage.
            static DATABASE: OncePer = OncePer::new(Duration::from_secs(1));
            static EPHEMERAL: OncePer = OncePer::new(Duration::from_secs(1));
            static BOUND: OncePer = OncePer::new(Duration::from_secs(1));
            let detail = e.detail.as_deref().unwrap_or("");
            match e.unavailable_store {
                Some(_) => {
                    // Named as the metrics name it.
                    let store = crate::observe::store_label(&e);
                    let gate = if store == "database" { &DATABASE } else { &EPHEMERAL };
                    if let Some(held_back) = gate.admit() {
                        tracing::warn!(error = e.code.as_str(), store, detail, held_back, "store unavailable");
                    }
                }
                None => {
                    if let Some(held_back) = BOUND.admit() {
                        let description = e.description.as_str();
                        tracing::warn!(error = e.code.as_str(), description, detail, held_back, "a bound was reached");
                    }
                }
            }
            tessera_proto::to_status(&e)
        }
        _ => {
            // Refusals are the protocol working (every device poll before approval is one):
            // debug, not info. They are counted in the metrics and recorded on the span.
            tracing::debug!(error = e.code.as_str(), "request refused");
            tessera_proto::to_status(&e)
        }
    }
}
