//! The pages a person uses: login, consent and device verification, rendered on the server
//! from askama templates, usable without JavaScript. Every decision comes from the token
//! service (`Authorize`, `Authenticate`, `LookupUserCode`, `ApproveDevice`, `DenyDevice`);
//! these handlers only render its answers and carry the request through hidden fields.
//!
//! Login sessions live in the token service: the browser holds the opaque handle in an
//! HttpOnly, SameSite=Lax cookie, so any facade replica serves any request.

pub mod authorize;
pub mod device;
pub mod login;

use crate::error::ApiError;
use crate::params::Params;
use actix_web::cookie::{time::Duration as CookieDuration, Cookie, SameSite};
use actix_web::http::{header, StatusCode};
use actix_web::{HttpRequest, HttpResponse, HttpResponseBuilder};
use askama::Template;
use subtle::ConstantTimeEq as _;
use tessera_core::{ErrorCode, OAuthError};

/// The cookie holding the token service's login session handle.
pub const SESSION_COOKIE: &str = "tessera_session";
/// The double-submit CSRF cookie; its value must come back in each form's `csrf_token`.
pub const CSRF_COOKIE: &str = "tessera_csrf";

/// Content-Security-Policy of every page: no scripts, styles from the facade only, never
/// framed. `form-action` is left out on purpose: Chromium applies it to the redirect that
/// follows a form post, and the consent form must redirect to the client's own origin.
pub const CSP: &str = "default-src 'none'; style-src 'self'; img-src 'self'; base-uri 'none'; frame-ancestors 'none'";

/// How the pages set cookies.
#[derive(Clone)]
pub struct PageConfig {
    /// `Secure` cookies: the public URL is https.
    pub secure_cookies: bool,
}

/// A hidden form field that carries the original request through the pages.
pub struct Hidden {
    pub name: &'static str,
    pub value: String,
}

/// A scope as the consent and device pages show it.
pub struct ScopeLine {
    pub name: String,
    pub description: String,
}

impl From<tessera_proto::token::v1::ScopeDescription> for ScopeLine {
    fn from(s: tessera_proto::token::v1::ScopeDescription) -> Self {
        Self { name: s.name, description: s.description }
    }
}

#[derive(Template)]
#[template(path = "login.html")]
pub struct LoginPage {
    pub csrf_token: String,
    pub client_name: String,
    /// `authorize` or `device`: where the login goes on.
    pub flow: &'static str,
    pub hidden: Vec<Hidden>,
    pub username: String,
    pub error: String,
}

#[derive(Template)]
#[template(path = "consent.html")]
pub struct ConsentPage {
    pub csrf_token: String,
    pub client_name: String,
    pub username: String,
    pub scopes: Vec<ScopeLine>,
    pub hidden: Vec<Hidden>,
}

#[derive(Template)]
#[template(path = "device_code.html")]
pub struct DeviceCodePage {
    pub csrf_token: String,
    pub user_code: String,
    pub error: String,
}

#[derive(Template)]
#[template(path = "device_confirm.html")]
pub struct DeviceConfirmPage {
    pub csrf_token: String,
    pub client_name: String,
    pub user_code: String,
    pub scopes: Vec<ScopeLine>,
}

#[derive(Template)]
#[template(path = "message.html")]
pub struct MessagePage {
    pub title: String,
    pub message: String,
    pub is_error: bool,
    pub link_href: String,
    pub link_text: String,
}

impl MessagePage {
    pub fn error(title: &str, message: impl Into<String>) -> Self {
        Self {
            title: title.to_owned(),
            message: message.into(),
            is_error: true,
            link_href: String::new(),
            link_text: String::new(),
        }
    }
}

/// What the login page shows again after a failed attempt.
#[derive(Default)]
pub struct LoginRetry {
    pub username: String,
    pub error: String,
    /// Set when the sign-in was throttled (or the password queue was full): the form comes
    /// back as a 503 with this `Retry-After`, not as a wrong password.
    pub retry_after: Option<u32>,
}

impl LoginRetry {
    /// The status and `Retry-After` of the login form shown again after this retry.
    pub fn answer(&self, page: HttpResponse) -> HttpResponse {
        let mut page = page;
        match self.retry_after {
            Some(seconds) => {
                *page.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
                page.headers_mut().insert(actix_web::http::header::RETRY_AFTER, seconds.max(1).into());
            }
            None if !self.error.is_empty() => *page.status_mut() = StatusCode::UNAUTHORIZED,
            None => {}
        }
        page
    }
}

/// The headers of every page.
fn page_builder(status: StatusCode) -> HttpResponseBuilder {
    let mut b = HttpResponse::build(status);
    b.content_type("text/html; charset=utf-8")
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .insert_header((header::PRAGMA, "no-cache"))
        .insert_header((header::CONTENT_SECURITY_POLICY, CSP))
        .insert_header((header::X_FRAME_OPTIONS, "DENY"))
        .insert_header((header::REFERRER_POLICY, "no-referrer"));
    b
}

/// A rendered page, with the cookies it sets.
pub fn render(status: StatusCode, page: &impl Template, cookies: Vec<Cookie<'static>>) -> HttpResponse {
    match page.render() {
        Ok(body) => {
            let mut b = page_builder(status);
            for c in cookies {
                b.cookie(c);
            }
            b.body(body)
        }
        Err(e) => {
            tracing::error!(error = %e, "a page template failed to render");
            page_builder(StatusCode::INTERNAL_SERVER_ERROR)
                .body("<!doctype html><title>Error</title><p>Something went wrong.</p>")
        }
    }
}

/// A redirect to the client (or back to a page), never cached.
pub fn redirect(status: StatusCode, location: &str, cookies: Vec<Cookie<'static>>) -> HttpResponse {
    let mut b = HttpResponse::build(status);
    b.insert_header((header::LOCATION, location))
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .insert_header((header::REFERRER_POLICY, "no-referrer"));
    for c in cookies {
        b.cookie(c);
    }
    b.finish()
}

/// What a person refused by a throttle is told: `None` unless the error says how long to wait.
pub fn throttle_message(e: &OAuthError) -> Option<String> {
    match (e.code, e.retry_after) {
        (ErrorCode::TemporarilyUnavailable | ErrorCode::SlowDown, Some(seconds)) => {
            let unit = if seconds == 1 { "second" } else { "seconds" };
            Some(format!("Too many attempts; wait {seconds} {unit} and try again."))
        }
        _ => None,
    }
}

/// A page for an error the person cannot fix by retrying the form.
pub fn error_page(e: &OAuthError, cookies: Vec<Cookie<'static>>) -> HttpResponse {
    let (status, title, message) = match (e.code, throttle_message(e)) {
        (_, Some(message)) => (crate::error::http_status(e.code), "Too many attempts", message),
        (ErrorCode::TemporarilyUnavailable, None) => (
            StatusCode::SERVICE_UNAVAILABLE,
            "Try again in a moment",
            "The sign-in service is unavailable right now.".to_owned(),
        ),
        (ErrorCode::ServerError, None) => {
            (StatusCode::INTERNAL_SERVER_ERROR, "Something went wrong", e.description.clone())
        }
        _ => (crate::error::http_status(e.code), "This request cannot be completed", e.description.clone()),
    };
    let mut res = render(status, &MessagePage::error(title, message), cookies);
    if let Some(seconds) = crate::error::retry_after(e) {
        res.headers_mut().insert(header::RETRY_AFTER, seconds.into());
    }
    res
}

/// The CSRF token of this browser, and the cookie to set when it had none.
pub struct Csrf {
    pub token: String,
    pub cookie: Option<Cookie<'static>>,
}

impl Csrf {
    pub fn for_page(req: &HttpRequest, config: &PageConfig) -> Self {
        if let Some(c) = req.cookie(CSRF_COOKIE) {
            let v = c.value();
            if v.len() == 43 && v.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') {
                return Self { token: v.to_owned(), cookie: None };
            }
        }
        let token = tessera_crypto::random_secret(32);
        let cookie = Cookie::build(CSRF_COOKIE, token.clone())
            .path("/")
            .http_only(true)
            .secure(config.secure_cookies)
            .same_site(SameSite::Lax)
            .finish();
        Self { token, cookie: Some(cookie) }
    }

    pub fn cookies(&self) -> Vec<Cookie<'static>> {
        self.cookie.iter().cloned().collect()
    }
}

/// Double-submit check: the form's `csrf_token` equals the cookie, in constant time.
pub fn csrf_ok(req: &HttpRequest, params: &Params) -> bool {
    match (req.cookie(CSRF_COOKIE), params.get("csrf_token")) {
        (Some(cookie), Some(field)) if !field.is_empty() => {
            bool::from(cookie.value().as_bytes().ct_eq(field.as_bytes()))
        }
        _ => false,
    }
}

/// A posted page form, once it parsed and carried the right CSRF token; otherwise the page
/// to answer with instead.
pub fn checked_form(req: &HttpRequest, params: Result<Params, ApiError>) -> Result<Params, Box<HttpResponse>> {
    let params = params.map_err(|e| Box::new(error_page(&e.error, vec![])))?;
    if csrf_ok(req, &params) {
        Ok(params)
    } else {
        Err(Box::new(csrf_failed()))
    }
}

pub fn csrf_failed() -> HttpResponse {
    render(
        StatusCode::FORBIDDEN,
        &MessagePage::error("This form has expired", "Go back, reload the page and try again."),
        vec![],
    )
}

/// The login session handle this browser holds.
pub fn session(req: &HttpRequest) -> String {
    req.cookie(SESSION_COOKIE).map(|c| c.value().to_owned()).unwrap_or_default()
}

pub fn session_cookie(handle: String, max_age_secs: i64, config: &PageConfig) -> Cookie<'static> {
    Cookie::build(SESSION_COOKIE, handle)
        .path("/")
        .http_only(true)
        .secure(config.secure_cookies)
        .same_site(SameSite::Lax)
        .max_age(CookieDuration::seconds(max_age_secs.max(0)))
        .finish()
}

/// Login failures the person can fix on the form, in the token service's words, and throttles
/// they can wait out; any other failure gets the error page.
pub fn login_error_message(e: &OAuthError) -> Option<String> {
    match e.code {
        ErrorCode::InvalidGrant | ErrorCode::InvalidRequest | ErrorCode::AccessDenied => Some(e.description.clone()),
        _ => throttle_message(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::test::TestRequest;

    #[test]
    fn cookies_are_http_only_lax_and_secure_only_over_https() {
        for secure in [false, true] {
            let config = PageConfig { secure_cookies: secure };
            let session = session_cookie("handle".into(), 60, &config);
            let csrf = Csrf::for_page(&TestRequest::default().to_http_request(), &config).cookie.unwrap();
            for c in [session, csrf] {
                assert_eq!(c.http_only(), Some(true));
                assert_eq!(c.same_site(), Some(SameSite::Lax));
                assert_eq!(c.secure(), Some(secure));
                assert_eq!(c.path(), Some("/"));
            }
        }
    }

    #[test]
    fn a_throttled_person_is_told_how_long_to_wait() {
        let cases = [
            ("a throttle", OAuthError::temporarily_unavailable("busy", 30), 503, Some("wait 30 seconds and try again")),
            (
                "slow_down",
                OAuthError::new(ErrorCode::SlowDown, "slow").with_retry_after(1),
                400,
                Some("wait 1 second "),
            ),
            ("an outage without a delay", OAuthError::new(ErrorCode::TemporarilyUnavailable, "down"), 503, None),
            ("a refusal", OAuthError::invalid_grant("no such code"), 400, None),
        ];
        for (what, e, status, message) in cases {
            let res = error_page(&e, vec![]);
            assert_eq!(res.status().as_u16(), status, "{what}");
            let body = actix_web::body::to_bytes(res.into_body());
            let body = futures::executor::block_on(body).map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap();
            match message {
                Some(m) => assert!(body.contains("Too many attempts") && body.contains(m), "{what}: {body}"),
                None => assert!(!body.contains("Too many attempts"), "{what}: {body}"),
            }
        }
    }

    #[test]
    fn a_csrf_token_must_match_its_cookie() {
        let req = TestRequest::default().cookie(Cookie::new(CSRF_COOKIE, "a".repeat(43))).to_http_request();
        let ok = Params::from_urlencoded(format!("csrf_token={}", "a".repeat(43)).as_bytes()).unwrap();
        let bad = Params::from_urlencoded(format!("csrf_token={}", "b".repeat(43)).as_bytes()).unwrap();
        assert!(csrf_ok(&req, &ok));
        assert!(!csrf_ok(&req, &bad));
        assert!(!csrf_ok(&TestRequest::default().to_http_request(), &ok));
        // An existing well-formed token is reused, so several tabs keep working.
        let again = Csrf::for_page(&req, &PageConfig { secure_cookies: false });
        assert_eq!(again.token, "a".repeat(43));
        assert!(again.cookie.is_none());
    }
}
