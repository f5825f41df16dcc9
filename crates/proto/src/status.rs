//! The one mapping between the core's [`OAuthError`] and a gRPC [`Status`] (feature `oauth`).

use tessera_core::{ErrorCode, OAuthError};
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt as _};

/// The `ErrorInfo.domain` of OAuth errors.
pub const OAUTH_DOMAIN: &str = "oauth2";

/// The `ErrorInfo.metadata` key of [`OAuthError::retry_after`], in whole seconds. The same delay
/// also travels as a `google.rpc.RetryInfo`, for gRPC clients that read only that.
pub const RETRY_AFTER_KEY: &str = "retry_after";

/// The gRPC code that carries each OAuth error code: the one table of it.
pub fn grpc_code(code: ErrorCode) -> Code {
    match code {
        ErrorCode::InvalidRequest
        | ErrorCode::InvalidGrant
        | ErrorCode::InvalidScope
        | ErrorCode::UnsupportedGrantType
        | ErrorCode::UnsupportedResponseType
        | ErrorCode::UnsupportedTokenType => Code::InvalidArgument,
        ErrorCode::InvalidClient | ErrorCode::InvalidToken => Code::Unauthenticated,
        ErrorCode::UnauthorizedClient | ErrorCode::AccessDenied | ErrorCode::InsufficientScope => {
            Code::PermissionDenied
        }
        ErrorCode::AuthorizationPending
        | ErrorCode::SlowDown
        | ErrorCode::ExpiredToken
        | ErrorCode::LoginRequired
        | ErrorCode::ConsentRequired => Code::FailedPrecondition,
        ErrorCode::ServerError => Code::Internal,
        ErrorCode::TemporarilyUnavailable => Code::Unavailable,
    }
}

/// An OAuth error as a gRPC status. Only the client-safe description (and the retry delay)
/// travels; `detail` stays behind for the logs.
pub fn to_status(e: &OAuthError) -> Status {
    let mut metadata = std::collections::HashMap::new();
    if let Some(seconds) = e.retry_after {
        metadata.insert(RETRY_AFTER_KEY.to_owned(), seconds.to_string());
    }
    let mut details = ErrorDetails::with_error_info(e.code.as_str(), OAUTH_DOMAIN, metadata);
    if let Some(seconds) = e.retry_after {
        details.set_retry_info(Some(std::time::Duration::from_secs(seconds.into())));
    }
    Status::with_error_details(grpc_code(e.code), e.description.clone(), details)
}

/// The retry delay of a status: `ErrorInfo.metadata["retry_after"]`, else its `RetryInfo`
/// rounded up to whole seconds.
fn retry_after(details: &ErrorDetails) -> Option<u32> {
    let from_info = details.error_info().and_then(|info| info.metadata.get(RETRY_AFTER_KEY)?.parse().ok());
    from_info.or_else(|| {
        let delay = details.retry_info()?.retry_delay?;
        let seconds = delay.as_secs() + u64::from(delay.subsec_nanos() > 0);
        Some(u32::try_from(seconds).unwrap_or(u32::MAX))
    })
}

/// A gRPC status back as an OAuth error. A status without OAuth details (a transport failure,
/// a proxy's answer) becomes `temporarily_unavailable` when the service could not be reached
/// or the call was lost on the way (see [`lost_in_transport`]), and `server_error` otherwise.
pub fn from_status(s: &Status) -> OAuthError {
    let details = s.get_error_details();
    if let Some(info) = details.error_info() {
        if info.domain == OAUTH_DOMAIN {
            if let Some(code) = ErrorCode::parse(&info.reason) {
                let e = OAuthError::new(code, s.message());
                return match retry_after(&details) {
                    Some(seconds) => e.with_retry_after(seconds),
                    None => e,
                };
            }
        }
    }
    match s.code() {
        Code::Unavailable | Code::DeadlineExceeded => {
            let e = OAuthError::new(ErrorCode::TemporarilyUnavailable, "the token service is unavailable; retry later");
            match retry_after(&details) {
                Some(seconds) => e.with_retry_after(seconds),
                None => e,
            }
        }
        code if lost_in_transport(s) => {
            OAuthError::new(ErrorCode::TemporarilyUnavailable, "the token service is unavailable; retry later")
                .with_detail(format!("the call was lost in transport ({code:?}): {}", s.message()))
        }
        code => OAuthError::server_error(format!("unexpected gRPC status {code:?}")),
    }
}

/// Whether the client side made this status because the call got no answer: the connection
/// broke or was reset (a replica killed mid-call), could not be made, or timed out. tonic then
/// reports `Unknown` or `Cancelled` with the transport error as the status's source; a status
/// the server sent has no source. Decided by the errors' types, never by their text.
pub fn lost_in_transport(s: &Status) -> bool {
    let mut source = std::error::Error::source(s);
    while let Some(e) = source {
        if e.is::<tonic::transport::Error>()
            || e.is::<tonic::TimeoutExpired>()
            || e.is::<tonic::ConnectError>()
            || e.is::<hyper::Error>()
            || e.is::<std::io::Error>()
        {
            return true;
        }
        source = e.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_oauth_error_survives_the_round_trip_through_a_grpc_status() {
        for code in ErrorCode::ALL {
            let e = OAuthError::new(code, format!("about {code}")).with_detail("only for logs");
            let status = to_status(&e);
            assert_eq!(status.code(), grpc_code(code));
            assert!(!status.message().contains("only for logs"));
            // Through the wire encoding, as a client would receive it.
            let mut headers = tonic::metadata::MetadataMap::new().into_headers();
            status.add_header(&mut headers).unwrap();
            let wire = Status::from_header_map(&headers).unwrap();
            let back = from_status(&wire);
            assert_eq!(back.code, code, "{code}");
            assert_eq!(back.description, format!("about {code}"));
            assert_eq!(back.retry_after, None, "{code}");
            for seconds in [0, 1, 37, u32::MAX] {
                let e = OAuthError::new(code, "wait").with_retry_after(seconds);
                let mut headers = tonic::metadata::MetadataMap::new().into_headers();
                to_status(&e).add_header(&mut headers).unwrap();
                let back = from_status(&Status::from_header_map(&headers).unwrap());
                assert_eq!((back.code, back.retry_after), (code, Some(seconds)), "{code} after {seconds}s");
            }
        }
    }

    #[test]
    fn the_retry_delay_also_travels_as_retry_info_and_is_read_from_it_alone() {
        let status = to_status(&OAuthError::temporarily_unavailable("busy", 12));
        let info = status.get_details_retry_info().and_then(|r| r.retry_delay);
        assert_eq!(info, Some(std::time::Duration::from_secs(12)));
        // A peer that sends only RetryInfo (with a fraction of a second): rounded up.
        let only_retry_info = Status::with_error_details(
            Code::Unavailable,
            "overloaded",
            ErrorDetails::with_retry_info(Some(std::time::Duration::from_millis(2500))),
        );
        let e = from_status(&only_retry_info);
        assert_eq!((e.code, e.retry_after), (ErrorCode::TemporarilyUnavailable, Some(3)));
        let mut with_info = ErrorDetails::with_error_info("slow_down", OAUTH_DOMAIN, std::collections::HashMap::new());
        with_info.set_retry_info(Some(std::time::Duration::from_secs(9)));
        let e = from_status(&Status::with_error_details(Code::FailedPrecondition, "slow", with_info));
        assert_eq!((e.code, e.retry_after), (ErrorCode::SlowDown, Some(9)));
    }

    #[test]
    fn the_issue_table_of_grpc_codes_holds() {
        assert_eq!(grpc_code(ErrorCode::InvalidClient), Code::Unauthenticated);
        assert_eq!(grpc_code(ErrorCode::AuthorizationPending), Code::FailedPrecondition);
        assert_eq!(grpc_code(ErrorCode::SlowDown), Code::FailedPrecondition);
        assert_eq!(grpc_code(ErrorCode::TemporarilyUnavailable), Code::Unavailable);
    }

    #[test]
    fn a_status_without_oauth_details_is_classified_by_its_code() {
        assert_eq!(from_status(&Status::unavailable("down")).code, ErrorCode::TemporarilyUnavailable);
        assert_eq!(from_status(&Status::internal("boom")).code, ErrorCode::ServerError);
        assert_eq!(from_status(&Status::unknown("transport error")).code, ErrorCode::ServerError, "no source: sent");
        assert_eq!(from_status(&Status::cancelled("canceled")).code, ErrorCode::ServerError, "no source: sent");
    }

    #[test]
    fn a_call_lost_in_transport_is_temporarily_unavailable_whatever_its_code() {
        use std::io::{Error, ErrorKind};
        let cases: Vec<(&str, Status)> = vec![
            ("a broken pipe", Status::from_error(Box::new(Error::new(ErrorKind::BrokenPipe, "stream closed")))),
            ("a reset connection", Status::from_error(Box::new(Error::from(ErrorKind::ConnectionReset)))),
            ("a timeout", Status::from_error(Box::new(tonic::TimeoutExpired(())))),
            (
                "a failed connect",
                Status::from_error(Box::new(tonic::ConnectError(Box::new(Error::from(ErrorKind::ConnectionRefused))))),
            ),
        ];
        for (what, status) in cases {
            assert!(lost_in_transport(&status), "{what}");
            let e = from_status(&status);
            assert_eq!(e.code, ErrorCode::TemporarilyUnavailable, "{what}: {status:?}");
        }
        // OAuth details win over the transport: they are the service's own answer.
        let mut answered = to_status(&OAuthError::invalid_grant("no"));
        assert!(!lost_in_transport(&answered));
        answered = Status::from_error(Box::new(answered));
        assert_eq!(from_status(&answered).code, ErrorCode::InvalidGrant);
    }
}
