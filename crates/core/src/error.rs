//! The one error type of every decision Tessera makes, with the RFC 6749 / 7009 / 8628 /
//! 6750 / OIDC error codes. `description` is safe to show a client; `detail` is for logs only.

use std::fmt;

/// An OAuth error code. [`ErrorCode::as_str`] is the only table of their wire strings.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    InvalidRequest,
    InvalidClient,
    InvalidGrant,
    UnauthorizedClient,
    UnsupportedGrantType,
    UnsupportedResponseType,
    UnsupportedTokenType,
    InvalidScope,
    AccessDenied,
    AuthorizationPending,
    SlowDown,
    ExpiredToken,
    InvalidToken,
    InsufficientScope,
    LoginRequired,
    ConsentRequired,
    ServerError,
    TemporarilyUnavailable,
}

impl ErrorCode {
    pub const ALL: [ErrorCode; 18] = [
        ErrorCode::InvalidRequest,
        ErrorCode::InvalidClient,
        ErrorCode::InvalidGrant,
        ErrorCode::UnauthorizedClient,
        ErrorCode::UnsupportedGrantType,
        ErrorCode::UnsupportedResponseType,
        ErrorCode::UnsupportedTokenType,
        ErrorCode::InvalidScope,
        ErrorCode::AccessDenied,
        ErrorCode::AuthorizationPending,
        ErrorCode::SlowDown,
        ErrorCode::ExpiredToken,
        ErrorCode::InvalidToken,
        ErrorCode::InsufficientScope,
        ErrorCode::LoginRequired,
        ErrorCode::ConsentRequired,
        ErrorCode::ServerError,
        ErrorCode::TemporarilyUnavailable,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::InvalidRequest => "invalid_request",
            ErrorCode::InvalidClient => "invalid_client",
            ErrorCode::InvalidGrant => "invalid_grant",
            ErrorCode::UnauthorizedClient => "unauthorized_client",
            ErrorCode::UnsupportedGrantType => "unsupported_grant_type",
            ErrorCode::UnsupportedResponseType => "unsupported_response_type",
            ErrorCode::UnsupportedTokenType => "unsupported_token_type",
            ErrorCode::InvalidScope => "invalid_scope",
            ErrorCode::AccessDenied => "access_denied",
            ErrorCode::AuthorizationPending => "authorization_pending",
            ErrorCode::SlowDown => "slow_down",
            ErrorCode::ExpiredToken => "expired_token",
            ErrorCode::InvalidToken => "invalid_token",
            ErrorCode::InsufficientScope => "insufficient_scope",
            ErrorCode::LoginRequired => "login_required",
            ErrorCode::ConsentRequired => "consent_required",
            ErrorCode::ServerError => "server_error",
            ErrorCode::TemporarilyUnavailable => "temporarily_unavailable",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.as_str() == s)
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An OAuth error: a code, a description safe for the client, and a detail for logs only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OAuthError {
    pub code: ErrorCode,
    pub description: String,
    /// Never sent to a client. Must not hold secrets either: it is logged.
    pub detail: Option<String>,
    /// For `temporarily_unavailable` and `slow_down` from a throttle or a full queue: how many
    /// seconds the caller should wait before trying again (HTTP `Retry-After`, RFC 9110 §10.2.3).
    pub retry_after: Option<u32>,
    /// For `temporarily_unavailable` from a store outage: which store (the `store` of
    /// [`StoreError::Unavailable`]), for metrics. Never sent to a client.
    pub unavailable_store: Option<&'static str>,
}

impl OAuthError {
    pub fn new(code: ErrorCode, description: impl Into<String>) -> Self {
        Self { code, description: description.into(), detail: None, retry_after: None, unavailable_store: None }
    }

    pub fn with_retry_after(mut self, seconds: u32) -> Self {
        self.retry_after = Some(seconds);
        self
    }

    /// A bound was reached (a full queue, a throttle): try again in `retry_after` seconds.
    pub fn temporarily_unavailable(d: impl Into<String>, retry_after: u32) -> Self {
        Self::new(ErrorCode::TemporarilyUnavailable, d).with_retry_after(retry_after)
    }

    pub fn with_detail(mut self, detail: impl Into<String>) -> Self {
        self.detail = Some(detail.into());
        self
    }

    pub fn invalid_request(d: impl Into<String>) -> Self {
        Self::new(ErrorCode::InvalidRequest, d)
    }
    pub fn invalid_client(d: impl Into<String>) -> Self {
        Self::new(ErrorCode::InvalidClient, d)
    }
    pub fn invalid_grant(d: impl Into<String>) -> Self {
        Self::new(ErrorCode::InvalidGrant, d)
    }
    pub fn invalid_scope(d: impl Into<String>) -> Self {
        Self::new(ErrorCode::InvalidScope, d)
    }
    pub fn unauthorized_client(d: impl Into<String>) -> Self {
        Self::new(ErrorCode::UnauthorizedClient, d)
    }
    pub fn access_denied(d: impl Into<String>) -> Self {
        Self::new(ErrorCode::AccessDenied, d)
    }
    pub fn invalid_token(d: impl Into<String>) -> Self {
        Self::new(ErrorCode::InvalidToken, d)
    }
    pub fn server_error(detail: impl Into<String>) -> Self {
        Self::new(ErrorCode::ServerError, "the server could not complete the request").with_detail(detail)
    }
}

impl fmt::Display for OAuthError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code, self.description)
    }
}

impl std::error::Error for OAuthError {}

/// An adapter's failure. `Unavailable` is a store that cannot be reached: the request is
/// refused with `temporarily_unavailable` and the adapter reconnects on its own.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    #[error("{store} is unavailable: {reason}")]
    Unavailable { store: &'static str, reason: String },
    #[error("conflict: {0}")]
    Conflict(String),
    #[error("store error: {0}")]
    Other(String),
}

impl From<StoreError> for OAuthError {
    fn from(e: StoreError) -> Self {
        match &e {
            StoreError::Unavailable { store, .. } => OAuthError {
                unavailable_store: Some(store),
                ..OAuthError::new(ErrorCode::TemporarilyUnavailable, format!("the {store} is unavailable; retry later"))
                    .with_detail(e.to_string())
            },
            StoreError::Conflict(_) | StoreError::Other(_) => OAuthError::server_error(e.to_string()),
        }
    }
}

pub type StoreResult<T> = Result<T, StoreError>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_parses_back_from_its_string() {
        for code in ErrorCode::ALL {
            assert_eq!(ErrorCode::parse(code.as_str()), Some(code));
        }
        assert_eq!(ErrorCode::parse("nope"), None);
    }

    #[test]
    fn an_unavailable_store_is_temporarily_unavailable_without_its_reason() {
        let e: OAuthError =
            StoreError::Unavailable { store: "ephemeral store", reason: "connection refused 10.0.0.1".into() }.into();
        assert_eq!(e.code, ErrorCode::TemporarilyUnavailable);
        assert!(!e.description.contains("10.0.0.1"));
    }
}
