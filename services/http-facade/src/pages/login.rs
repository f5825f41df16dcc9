//! Signing in and out: `POST /login`, which both the authorization flow and the device flow
//! show a form for, and `POST /logout`. A successful sign-in puts the session handle into a
//! cookie and goes on with the flow the login interrupted.

use super::authorize::{decide, AuthorizeParams};
use super::{
    checked_form, error_page, login_error_message, render, session, session_cookie, LoginRetry, MessagePage,
    PageConfig, SESSION_COOKIE,
};
use crate::backend::Backend;
use crate::error::{oauth_error, ApiError};
use crate::params::Params;
use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use tessera_core::ErrorCode;
use tessera_proto::token::v1 as pb;
use tracing::field::Empty;

/// `POST /login`: username and password to `Authenticate`, the session handle into a cookie,
/// then on with the flow the login interrupted.
#[tracing::instrument(name = "login", skip_all, fields(client_id = Empty))]
pub async fn login(
    req: HttpRequest,
    backend: web::Data<Backend>,
    config: web::Data<PageConfig>,
    params: Result<Params, ApiError>,
) -> HttpResponse {
    let params = match checked_form(&req, params) {
        Ok(p) => p,
        Err(page) => return *page,
    };
    let username = params.get("username").unwrap_or_default().to_owned();
    let device_flow = params.get("flow") == Some("device");
    let answer = backend
        .token
        .clone()
        .authenticate(pb::AuthenticateRequest {
            username: username.clone(),
            password: params.get("password").unwrap_or_default().to_owned(),
        })
        .await;
    let (session, cookies, retry) = match answer {
        Ok(a) => {
            let a = a.into_inner();
            let cookie = session_cookie(a.session.clone(), a.expires_in, &config);
            (a.session, vec![cookie], LoginRetry::default())
        }
        Err(s) => {
            let e = oauth_error(&s);
            let Some(message) = login_error_message(&e) else {
                return error_page(&e, vec![]);
            };
            // Back to the login page through the same call that showed it.
            let retry_after = matches!(e.code, ErrorCode::TemporarilyUnavailable | ErrorCode::SlowDown)
                .then_some(e.retry_after.unwrap_or(5));
            (String::new(), vec![], LoginRetry { username, error: message, retry_after })
        }
    };
    if device_flow {
        let user_code = params.get("user_code").unwrap_or_default();
        return super::device::show(&req, &backend, &config, user_code, &session, cookies, retry).await;
    }
    let auth = match params.parse::<AuthorizeParams>() {
        Ok(p) => p,
        Err(e) => return error_page(&e, cookies),
    };
    decide(&req, &backend, &config, auth, session, pb::ConsentDecision::Unspecified, cookies, retry).await
}

/// `POST /logout`: ends the login session in the token service and forgets the cookie.
#[tracing::instrument(name = "logout", skip_all)]
pub async fn logout(
    req: HttpRequest,
    backend: web::Data<Backend>,
    config: web::Data<PageConfig>,
    params: Result<Params, ApiError>,
) -> HttpResponse {
    if let Err(page) = checked_form(&req, params) {
        return *page;
    }
    let handle = session(&req);
    if !handle.is_empty() {
        if let Err(s) = backend.token.clone().end_session(pb::EndSessionRequest { session: handle }).await {
            return error_page(&oauth_error(&s), vec![]);
        }
    }
    let mut gone = session_cookie(String::new(), 0, &config);
    gone.make_removal();
    debug_assert_eq!(gone.name(), SESSION_COOKIE);
    render(
        StatusCode::OK,
        &MessagePage {
            title: "Signed out".into(),
            message: "You are signed out.".into(),
            is_error: false,
            link_href: String::new(),
            link_text: String::new(),
        },
        vec![gone],
    )
}
