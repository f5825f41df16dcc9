//! OAuth errors on the HTTP side: the one table from OAuth error code to HTTP status, and the
//! JSON bodies of RFC 6749 §5.2 (token endpoint and friends) and RFC 6750 §3 (userinfo).
//! The status is derived from the OAuth code carried in the gRPC `ErrorInfo`, never from the
//! gRPC code.

use actix_web::http::header::{self, HeaderValue};
use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};
use serde::Serialize;
use std::fmt;
use std::time::Duration;
use tessera_core::{ErrorCode, OAuthError};
use tessera_telemetry::OncePer;

/// The HTTP status of each OAuth error code: the one table of it.
pub fn http_status(code: ErrorCode) -> StatusCode {
    match code {
        // RFC 6749 §5.2 and RFC 8628 §3.5: every token endpoint error is a 400, except
        // invalid_client which may (and with Basic must) be a 401.
        ErrorCode::InvalidRequest
        | ErrorCode::InvalidGrant
        | ErrorCode::UnauthorizedClient
        | ErrorCode::UnsupportedGrantType
        | ErrorCode::UnsupportedResponseType
        | ErrorCode::UnsupportedTokenType
        | ErrorCode::InvalidScope
        | ErrorCode::AccessDenied
        | ErrorCode::AuthorizationPending
        | ErrorCode::SlowDown
        | ErrorCode::ExpiredToken
        | ErrorCode::LoginRequired
        | ErrorCode::ConsentRequired => StatusCode::BAD_REQUEST,
        ErrorCode::InvalidClient => StatusCode::UNAUTHORIZED,
        // RFC 6750 §3.1.
        ErrorCode::InvalidToken => StatusCode::UNAUTHORIZED,
        ErrorCode::InsufficientScope => StatusCode::FORBIDDEN,
        ErrorCode::ServerError => StatusCode::INTERNAL_SERVER_ERROR,
        ErrorCode::TemporarilyUnavailable => StatusCode::SERVICE_UNAVAILABLE,
    }
}

/// The JSON error body of RFC 6749 §5.2.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    /// An RFC 6749 / 7009 / 8628 / 6750 error code.
    #[schema(example = "invalid_request")]
    pub error: String,
    /// A human-readable explanation, safe to show the client.
    pub error_description: String,
}

/// The realm named in `WWW-Authenticate` challenges.
pub const REALM: &str = "tessera";

/// `Retry-After` seconds of a 503 or `slow_down` that does not say how long to wait.
pub const DEFAULT_RETRY_AFTER: u32 = 5;

/// The `Retry-After` an answer with this error carries (RFC 9110 §10.2.3): for
/// `temporarily_unavailable` and `slow_down`, the delay the token service named, else
/// [`DEFAULT_RETRY_AFTER`].
pub fn retry_after(e: &OAuthError) -> Option<u32> {
    matches!(e.code, ErrorCode::TemporarilyUnavailable | ErrorCode::SlowDown)
        .then(|| e.retry_after.unwrap_or(DEFAULT_RETRY_AFTER))
}

/// An error answered as JSON by an OAuth endpoint.
#[derive(Debug)]
pub struct ApiError {
    pub error: OAuthError,
    /// The client tried HTTP Basic: an `invalid_client` answer must then be a 401 with a
    /// `WWW-Authenticate: Basic` challenge (RFC 6749 §5.2).
    pub basic_tried: bool,
    /// A transport-level status that overrides the table (413 for an oversized body).
    pub status: Option<StatusCode>,
}

impl ApiError {
    pub fn new(error: OAuthError) -> Self {
        Self { error, basic_tried: false, status: None }
    }

    pub fn invalid_request(description: impl Into<String>) -> Self {
        Self::new(OAuthError::invalid_request(description))
    }

    /// A gRPC status from the token service, mapped back through its `ErrorInfo`.
    pub fn from_status(status: &tonic::Status) -> Self {
        Self::new(oauth_error(status))
    }

    pub fn basic(mut self, basic_tried: bool) -> Self {
        self.basic_tried = basic_tried;
        self
    }

    pub fn with_status(mut self, status: StatusCode) -> Self {
        self.status = Some(status);
        self
    }

    pub fn code(&self) -> ErrorCode {
        self.error.code
    }
}

impl From<OAuthError> for ApiError {
    fn from(e: OAuthError) -> Self {
        Self::new(e)
    }
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.error.fmt(f)
    }
}

/// A gRPC status as an OAuth error, logged once here so every endpoint reports failures of
/// the token service the same way.
pub fn oauth_error(status: &tonic::Status) -> OAuthError {
    let e = tessera_proto::from_status(status);
    match e.code {
        ErrorCode::ServerError => tracing::error!(
            grpc_code = ?status.code(),
            detail = e.detail.as_deref().unwrap_or(""),
            "the token service failed"
        ),
        ErrorCode::TemporarilyUnavailable => {
            // During an outage every request ends here: a line a second, with how many
            // requests it stands for.
            static UNAVAILABLE: OncePer = OncePer::new(Duration::from_secs(1));
            if let Some(held_back) = UNAVAILABLE.admit() {
                tracing::warn!(grpc_code = ?status.code(), held_back, "the token service is unavailable");
            }
        }
        code => tracing::debug!(error = code.as_str(), "request refused"),
    }
    e
}

/// Adds the headers every token-bearing or error answer carries (RFC 6749 §5.1).
pub fn no_store(res: &mut HttpResponse) {
    res.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    res.headers_mut().insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        self.status.unwrap_or_else(|| http_status(self.error.code))
    }

    fn error_response(&self) -> HttpResponse {
        let mut res = HttpResponse::build(self.status_code()).json(ErrorBody {
            error: self.error.code.as_str().to_owned(),
            error_description: self.error.description.clone(),
        });
        no_store(&mut res);
        // For the request's span and series (see observe.rs).
        res.extensions_mut().insert(self.error.code);
        if self.error.code == ErrorCode::InvalidClient && self.basic_tried {
            res.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Basic realm=\"tessera\""));
        }
        if let Some(seconds) = retry_after(&self.error) {
            res.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        res
    }
}

/// An error of a protected resource (RFC 6750 §3): the code also travels in the
/// `WWW-Authenticate: Bearer` challenge.
#[derive(Debug)]
pub struct BearerError {
    /// `None` when the request carried no token at all: RFC 6750 §3.1 says the challenge then
    /// names no error.
    pub error: Option<OAuthError>,
    /// A transport-level status that overrides the table (413 for an oversized body).
    pub status: Option<StatusCode>,
}

impl BearerError {
    pub fn new(error: OAuthError) -> Self {
        Self { error: Some(error), status: None }
    }

    /// No token at all.
    pub fn missing() -> Self {
        Self { error: None, status: None }
    }
}

impl From<ApiError> for BearerError {
    fn from(e: ApiError) -> Self {
        Self { error: Some(e.error), status: e.status }
    }
}

impl fmt::Display for BearerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.error {
            Some(e) => e.fmt(f),
            None => f.write_str("no bearer token"),
        }
    }
}

/// A quoted-string of RFC 9110 §5.6.4, for `WWW-Authenticate` parameters.
fn quoted(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            // Header values must stay visible ASCII.
            c if c.is_ascii() && !c.is_ascii_control() => out.push(c),
            _ => out.push('?'),
        }
    }
    out.push('"');
    out
}

impl ResponseError for BearerError {
    fn status_code(&self) -> StatusCode {
        match (&self.error, self.status) {
            (_, Some(status)) => status,
            (Some(e), None) => http_status(e.code),
            (None, None) => StatusCode::UNAUTHORIZED,
        }
    }

    fn error_response(&self) -> HttpResponse {
        let (challenge, body) = match &self.error {
            Some(e) => (
                format!(
                    "Bearer realm={}, error={}, error_description={}",
                    quoted(REALM),
                    quoted(e.code.as_str()),
                    quoted(&e.description)
                ),
                ErrorBody { error: e.code.as_str().to_owned(), error_description: e.description.clone() },
            ),
            None => (
                format!("Bearer realm={}", quoted(REALM)),
                ErrorBody {
                    error: ErrorCode::InvalidToken.as_str().to_owned(),
                    error_description: "a Bearer access token is required".to_owned(),
                },
            ),
        };
        let mut res = HttpResponse::build(self.status_code()).json(body);
        no_store(&mut res);
        res.extensions_mut().insert(self.error.as_ref().map_or(ErrorCode::InvalidToken, |e| e.code));
        if let Some(seconds) = self.error.as_ref().and_then(retry_after) {
            res.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        // Only server and availability failures leave the challenge out: they are not about
        // the token.
        let about_the_token = self
            .error
            .as_ref()
            .is_none_or(|e| !matches!(e.code, ErrorCode::ServerError | ErrorCode::TemporarilyUnavailable));
        if about_the_token {
            if let Ok(v) = HeaderValue::from_str(&challenge) {
                res.headers_mut().insert(header::WWW_AUTHENTICATE, v);
            }
        }
        res
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_oauth_code_has_an_error_status() {
        for code in ErrorCode::ALL {
            let s = http_status(code);
            assert!(s.is_client_error() || s.is_server_error(), "{code}: {s}");
        }
        assert_eq!(http_status(ErrorCode::AuthorizationPending), StatusCode::BAD_REQUEST);
        assert_eq!(http_status(ErrorCode::AccessDenied), StatusCode::BAD_REQUEST);
        assert_eq!(http_status(ErrorCode::TemporarilyUnavailable), StatusCode::SERVICE_UNAVAILABLE);
    }

    #[test]
    fn every_code_survives_grpc_and_comes_out_with_its_status_and_json() {
        for code in ErrorCode::ALL {
            let status = tessera_proto::to_status(&OAuthError::new(code, "why"));
            let e = ApiError::from_status(&status);
            assert_eq!(e.code(), code);
            assert_eq!(e.status_code(), http_status(code));
        }
    }

    #[test]
    fn retry_after_carries_the_token_services_delay_through_grpc() {
        let cases = [
            ("a throttle names its delay", OAuthError::temporarily_unavailable("busy", 42), Some("42")),
            ("an outage without a delay", OAuthError::new(ErrorCode::TemporarilyUnavailable, "down"), Some("5")),
            ("slow_down with a delay", OAuthError::new(ErrorCode::SlowDown, "slow").with_retry_after(10), Some("10")),
            ("slow_down without one", OAuthError::new(ErrorCode::SlowDown, "slow"), Some("5")),
            ("other errors have none", OAuthError::invalid_grant("no").with_retry_after(3), None),
        ];
        for (what, e, want) in cases {
            let back = ApiError::from_status(&tessera_proto::to_status(&e));
            let res = back.error_response();
            let got = res.headers().get(header::RETRY_AFTER).map(|v| v.to_str().unwrap().to_owned());
            assert_eq!(got.as_deref(), want, "{what}");
            let bearer = BearerError::new(tessera_proto::from_status(&tessera_proto::to_status(&e))).error_response();
            let got = bearer.headers().get(header::RETRY_AFTER).map(|v| v.to_str().unwrap().to_owned());
            assert_eq!(got.as_deref(), want, "{what} (bearer)");
        }
    }

    #[test]
    fn challenge_parameters_are_quoted_strings() {
        assert_eq!(quoted(r#"a "b" \c"#), r#""a \"b\" \\c""#);
        assert_eq!(quoted("é"), "\"?\"");
    }
}
