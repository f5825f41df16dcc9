//! The device verification page (RFC 8628 §3.3): enter the user code (prefilled from
//! `verification_uri_complete`), see which client asks for what, sign in if needed, then
//! approve or deny. The token service normalizes and checks the code.

use super::{
    checked_form, error_page, render, session, Csrf, DeviceCodePage, DeviceConfirmPage, Hidden, LoginPage, LoginRetry,
    MessagePage, PageConfig, ScopeLine,
};
use crate::backend::Backend;
use crate::error::{oauth_error, ApiError};
use crate::params::Params;
use actix_web::cookie::Cookie;
use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use tessera_core::ErrorCode;
use tessera_proto::token::v1 as pb;

fn code_page(
    req: &HttpRequest,
    config: &PageConfig,
    status: StatusCode,
    user_code: &str,
    error: String,
    mut cookies: Vec<Cookie<'static>>,
) -> HttpResponse {
    let csrf = Csrf::for_page(req, config);
    cookies.extend(csrf.cookies());
    render(
        status,
        &DeviceCodePage { csrf_token: csrf.token, user_code: user_code.chars().take(32).collect(), error },
        cookies,
    )
}

/// `GET /device[?user_code=…]`: the form to enter a code.
#[tracing::instrument(name = "device_page", skip_all)]
pub async fn device_get(req: HttpRequest, config: web::Data<PageConfig>) -> HttpResponse {
    let prefill = Params::from_urlencoded(req.query_string().as_bytes())
        .ok()
        .and_then(|p| p.get("user_code").map(str::to_owned))
        .unwrap_or_default();
    code_page(&req, &config, StatusCode::OK, &prefill, String::new(), vec![])
}

/// What a code stands for: the confirmation page when the browser has a session, the login
/// page otherwise, and the code form again when the code is unknown or expired.
pub async fn show(
    req: &HttpRequest,
    backend: &Backend,
    config: &PageConfig,
    user_code: &str,
    session: &str,
    mut cookies: Vec<Cookie<'static>>,
    retry: LoginRetry,
) -> HttpResponse {
    let view = match backend
        .token
        .clone()
        .lookup_user_code(pb::LookupUserCodeRequest { user_code: user_code.to_owned() })
        .await
    {
        Ok(v) => v.into_inner(),
        Err(s) => {
            let e = oauth_error(&s);
            return match e.code {
                ErrorCode::ExpiredToken | ErrorCode::InvalidRequest | ErrorCode::InvalidGrant => {
                    code_page(req, config, StatusCode::BAD_REQUEST, user_code, e.description, cookies)
                }
                _ => error_page(&e, cookies),
            };
        }
    };
    let csrf = Csrf::for_page(req, config);
    cookies.extend(csrf.cookies());
    if session.is_empty() {
        return retry.answer(render(
            StatusCode::OK,
            &LoginPage {
                csrf_token: csrf.token,
                client_name: view.client_name,
                flow: "device",
                hidden: vec![Hidden { name: "user_code", value: view.user_code }],
                username: retry.username.clone(),
                error: retry.error.clone(),
            },
            cookies,
        ));
    }
    render(
        StatusCode::OK,
        &DeviceConfirmPage {
            csrf_token: csrf.token,
            client_name: view.client_name,
            user_code: view.user_code,
            scopes: view.scopes.into_iter().map(ScopeLine::from).collect(),
        },
        cookies,
    )
}

/// `POST /device`: `action=lookup` (the code form), `approve` or `deny`.
#[tracing::instrument(name = "device_decision", skip_all)]
pub async fn device_post(
    req: HttpRequest,
    backend: web::Data<Backend>,
    config: web::Data<PageConfig>,
    params: Result<Params, ApiError>,
) -> HttpResponse {
    let params = match checked_form(&req, params) {
        Ok(p) => p,
        Err(page) => return *page,
    };
    let user_code = params.get("user_code").unwrap_or_default();
    let session = session(&req);
    let approve = match params.get("action") {
        Some("approve") => true,
        Some("deny") => false,
        _ => return show(&req, &backend, &config, user_code, &session, vec![], LoginRetry::default()).await,
    };
    let mut rpc = backend.token.clone();
    let answer = if approve {
        rpc.approve_device(pb::ApproveDeviceRequest { user_code: user_code.to_owned(), session: session.clone() })
            .await
            .map(|_| ())
    } else {
        rpc.deny_device(pb::DenyDeviceRequest { user_code: user_code.to_owned(), session: session.clone() })
            .await
            .map(|_| ())
    };
    match answer {
        Ok(()) => {
            let (title, message) = if approve {
                ("Device connected", "You can return to your device; it will continue on its own.")
            } else {
                ("Request denied", "The device was not given access. You can close this page.")
            };
            render(
                StatusCode::OK,
                &MessagePage {
                    title: title.into(),
                    message: message.into(),
                    is_error: false,
                    link_href: String::new(),
                    link_text: String::new(),
                },
                vec![],
            )
        }
        Err(s) => {
            let e = oauth_error(&s);
            match e.code {
                // The session ended (or never was): sign in, then decide again.
                ErrorCode::LoginRequired => {
                    show(&req, &backend, &config, user_code, "", vec![], LoginRetry::default()).await
                }
                ErrorCode::ExpiredToken => {
                    code_page(&req, &config, StatusCode::BAD_REQUEST, user_code, e.description, vec![])
                }
                _ => error_page(&e, vec![]),
            }
        }
    }
}
