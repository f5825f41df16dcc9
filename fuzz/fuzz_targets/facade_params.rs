//! The facade's request parsing: form and JSON bodies (repeated and empty parameters, the
//! Content-Type, the size limit) and client authentication from HTTP Basic or the body, as the
//! token endpoint runs them.
//!
//! Input: line 1 is the Content-Type header (empty: none), line 2 the Authorization header
//! (empty: none; a tab separates repeated headers), the rest the body.
#![no_main]

use actix_web::http::header::{HeaderName, HeaderValue, AUTHORIZATION, CONTENT_TYPE};
use actix_web::test::TestRequest;
use actix_web::ResponseError as _;
use base64::Engine as _;
use libfuzzer_sys::fuzz_target;
use tessera_core::OAuthError;
use tessera_http_facade::error::ApiError;
use tessera_http_facade::oauth::TokenRequest;
use tessera_http_facade::pages::authorize::AuthorizeParams;
use tessera_http_facade::params::{body_params, client_credentials, Params, MAX_BODY_BYTES};

fn split_line(input: &[u8]) -> (&[u8], &[u8]) {
    match input.iter().position(|&b| b == b'\n') {
        Some(i) => (&input[..i], &input[i + 1..]),
        None => (input, &[]),
    }
}

/// An error description is for the client and the logs: bounded, and never the body itself.
fn check_error(e: &OAuthError, body: &[u8]) {
    assert!(e.description.len() <= 512, "an unbounded error description: {:?}", e.description);
    let body = String::from_utf8_lossy(body);
    let body = body.trim();
    // A body with structure (quotes, braces, pairs) is not text any message could hold.
    if body.len() >= 12 && body.contains(['"', '{', '=', '&']) {
        assert!(!e.description.contains(body), "the error quotes the body: {:?}", e.description);
    }
}

/// What every successful parse must satisfy: each name once, no empty value, and a `Debug`
/// that shows names only.
fn check_params(p: &Params, pairs: &[(String, String)]) {
    // A parameter sent without a value counts as omitted (RFC 6749 §3.1).
    let mut names: Vec<&str> = Vec::new();
    for (name, value) in pairs.iter().filter(|(_, v)| !v.is_empty()) {
        assert!(!names.contains(&name.as_str()), "a repeated parameter {name:?} was accepted");
        names.push(name);
        assert_eq!(p.get(name), Some(value.as_str()));
    }
    for (name, _) in pairs {
        assert!(p.get(name).is_some() == names.contains(&name.as_str()), "{name:?}");
    }
    let shown: Vec<&String> = pairs.iter().filter(|(_, v)| !v.is_empty()).map(|(k, _)| k).collect();
    assert_eq!(format!("{p:?}"), format!("{shown:?}"), "Debug shows more than the names");
    // Every string field takes any value: the typed requests cannot fail.
    assert!(p.parse::<TokenRequest>().is_ok());
    assert!(p.parse::<AuthorizeParams>().is_ok());
}

fn check_api_error(e: &ApiError, body: &[u8]) {
    check_error(&e.error, body);
    let status = e.status_code();
    assert!(status.is_client_error(), "bad input answered {status}");
}

fuzz_target!(|input: &[u8]| {
    let (content_type, rest) = split_line(input);
    let (authorization, body) = split_line(rest);

    // The two parsers on their own.
    let form_pairs: Vec<(String, String)> =
        url::form_urlencoded::parse(body).map(|(k, v)| (k.into_owned(), v.into_owned())).collect();
    match Params::from_urlencoded(body) {
        Ok(p) => check_params(&p, &form_pairs),
        Err(e) => {
            check_error(&e, body);
            let mut seen = std::collections::HashSet::new();
            assert!(!form_pairs.iter().all(|(k, _)| seen.insert(k)), "refused a form with no repeated name");
        }
    }
    match Params::from_json(body) {
        Ok(p) => {
            let object: serde_json::Map<String, serde_json::Value> =
                serde_json::from_slice(body).expect("accepted JSON is an object");
            for (name, value) in &object {
                let expected = match value {
                    serde_json::Value::String(s) => s.clone(),
                    serde_json::Value::Null => String::new(),
                    other => other.to_string(),
                };
                assert_eq!(p.get(name).unwrap_or_default(), expected, "{name:?}");
            }
            assert!(p.parse::<TokenRequest>().is_ok());
        }
        Err(e) => check_error(&e, body),
    }

    // The request as the token endpoint sees it.
    let mut req = TestRequest::post().uri("/oauth2/token").set_payload(body.to_vec());
    if !content_type.is_empty() {
        let Ok(v) = HeaderValue::from_bytes(content_type) else { return };
        req = req.append_header((CONTENT_TYPE, v));
    }
    if !authorization.is_empty() {
        for value in authorization.split(|&b| b == b'\t') {
            let Ok(v) = HeaderValue::from_bytes(value) else { return };
            req = req.append_header((HeaderName::from(AUTHORIZATION), v));
        }
    }
    let (req, mut payload) = req.to_http_parts();
    let params = match tessera_fuzz::block_on(body_params(&req, &mut payload)) {
        Ok(p) => p,
        Err(e) => {
            check_api_error(&e, body);
            return;
        }
    };
    assert!(body.len() <= MAX_BODY_BYTES);
    let r: TokenRequest = params.parse().expect("string fields take any value");
    match client_credentials(&req, &r.client_id, &r.client_secret) {
        Ok(c) => {
            if !c.basic {
                assert_eq!(
                    (c.client_id.as_str(), c.client_secret.as_str()),
                    (r.client_id.as_str(), r.client_secret.as_str())
                );
            } else {
                assert!(r.client_secret.is_empty(), "two client authentication methods were accepted");
                assert!(r.client_id.is_empty() || r.client_id == c.client_id);
            }
        }
        Err(e) => {
            check_api_error(&e, body);
            // Whatever is wrong, the Basic credentials are not quoted back. (Only credentials
            // with a digit are looked for: the messages hold none, so no word of theirs that the
            // fuzzer copies into a header counts.)
            let has_digit = |s: &str| s.bytes().any(|b| b.is_ascii_digit());
            for value in authorization.split(|&b| b == b'\t') {
                let encoded = String::from_utf8_lossy(value);
                let encoded = encoded.trim().split_once(' ').map_or("", |(_, e)| e.trim());
                if encoded.len() >= 8 && has_digit(encoded) {
                    assert!(!e.error.description.contains(encoded), "{:?}", e.error.description);
                }
                let decoded = base64::engine::general_purpose::STANDARD.decode(encoded).unwrap_or_default();
                let decoded = String::from_utf8_lossy(&decoded);
                if let Some((_, secret)) = decoded.split_once(':') {
                    if secret.len() >= 8 && has_digit(secret) {
                        assert!(!e.error.description.contains(secret), "{:?}", e.error.description);
                    }
                }
            }
        }
    }
});
