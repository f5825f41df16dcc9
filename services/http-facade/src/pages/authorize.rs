//! The authorization endpoint (RFC 6749 §3.1, §4.1.1, §4.2.1; OIDC Core §3.1.2) and its
//! consent page (the login form it shows is answered by `login.rs`). Every step is one `Authorize` call whose answer is a redirect, a
//! login page or a consent page. An `Authorize` error means the client or its redirect URI
//! cannot be trusted: an error page, never a redirect (RFC 6749 §4.1.2.1).

use super::{
    checked_form, error_page, redirect, render, session, ConsentPage, Csrf, Hidden, LoginPage, LoginRetry, PageConfig,
    ScopeLine,
};
use crate::backend::Backend;
use crate::error::{oauth_error, ApiError};
use crate::params::Params;
use actix_web::cookie::Cookie;
use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use serde::Deserialize;
use tessera_core::OAuthError;
use tessera_proto::token::v1 as pb;
use tessera_proto::token::v1::authorize_response::Outcome;
use tracing::field::Empty;

/// The parameters of an authorization request, carried unchanged through the pages.
#[derive(Default, Deserialize)]
#[serde(default)]
pub struct AuthorizeParams {
    pub response_type: String,
    pub client_id: String,
    pub redirect_uri: String,
    pub scope: String,
    pub state: String,
    pub nonce: String,
    pub code_challenge: String,
    pub code_challenge_method: String,
    pub prompt: String,
    pub max_age: String,
}

impl AuthorizeParams {
    pub fn hidden(&self) -> Vec<Hidden> {
        [
            ("response_type", &self.response_type),
            ("client_id", &self.client_id),
            ("redirect_uri", &self.redirect_uri),
            ("scope", &self.scope),
            ("state", &self.state),
            ("nonce", &self.nonce),
            ("code_challenge", &self.code_challenge),
            ("code_challenge_method", &self.code_challenge_method),
            ("prompt", &self.prompt),
            ("max_age", &self.max_age),
        ]
        .into_iter()
        .filter(|(_, v)| !v.is_empty())
        .map(|(name, v)| Hidden { name, value: v.clone() })
        .collect()
    }

    fn rpc(&self, session: String, consent: pb::ConsentDecision) -> Result<pb::AuthorizeRequest, OAuthError> {
        // The RPC carries max_age as a number, negative for absent.
        let max_age = if self.max_age.is_empty() {
            -1
        } else {
            self.max_age
                .parse::<i64>()
                .map_err(|_| OAuthError::invalid_request("max_age must be a number of seconds"))?
        };
        Ok(pb::AuthorizeRequest {
            response_type: self.response_type.clone(),
            client_id: self.client_id.clone(),
            redirect_uri: self.redirect_uri.clone(),
            scope: self.scope.clone(),
            state: self.state.clone(),
            nonce: self.nonce.clone(),
            code_challenge: self.code_challenge.clone(),
            code_challenge_method: self.code_challenge_method.clone(),
            prompt: self.prompt.clone(),
            session,
            consent: consent as i32,
            max_age,
        })
    }
}

/// One `Authorize` call and the page or redirect that answers it.
#[allow(clippy::too_many_arguments)]
pub(super) async fn decide(
    req: &HttpRequest,
    backend: &Backend,
    config: &PageConfig,
    params: AuthorizeParams,
    session: String,
    consent: pb::ConsentDecision,
    mut cookies: Vec<Cookie<'static>>,
    retry: LoginRetry,
) -> HttpResponse {
    tracing::Span::current().record("client_id", tessera_core::printable(&params.client_id));
    let request = match params.rpc(session, consent) {
        Ok(r) => r,
        Err(e) => return error_page(&e, cookies),
    };
    let answer = match backend.token.clone().authorize(request).await {
        Ok(a) => a.into_inner(),
        Err(s) => return error_page(&oauth_error(&s), cookies),
    };
    match answer.outcome {
        Some(Outcome::RedirectTo(location)) => {
            // 303 after a form post so the browser follows with GET (RFC 9110 §15.4.4).
            let status =
                if req.method() == actix_web::http::Method::POST { StatusCode::SEE_OTHER } else { StatusCode::FOUND };
            redirect(status, &location, cookies)
        }
        Some(Outcome::LoginRequired(l)) => {
            let csrf = Csrf::for_page(req, config);
            cookies.extend(csrf.cookies());
            retry.answer(render(
                StatusCode::OK,
                &LoginPage {
                    csrf_token: csrf.token,
                    client_name: l.client_name,
                    flow: "authorize",
                    hidden: params.hidden(),
                    username: retry.username.clone(),
                    error: retry.error.clone(),
                },
                cookies,
            ))
        }
        Some(Outcome::ConsentRequired(c)) => {
            let csrf = Csrf::for_page(req, config);
            cookies.extend(csrf.cookies());
            render(
                StatusCode::OK,
                &ConsentPage {
                    csrf_token: csrf.token,
                    client_name: c.client_name,
                    username: c.username,
                    scopes: c.scopes.into_iter().map(ScopeLine::from).collect(),
                    hidden: params.hidden(),
                },
                cookies,
            )
        }
        None => error_page(&OAuthError::server_error("Authorize answered without an outcome"), cookies),
    }
}

/// `GET /oauth2/authorize` (and `/authorization`, `/auth`).
#[tracing::instrument(name = "authorize", skip_all, fields(client_id = Empty))]
pub async fn authorize(req: HttpRequest, backend: web::Data<Backend>, config: web::Data<PageConfig>) -> HttpResponse {
    let params = Params::from_urlencoded(req.query_string().as_bytes());
    start_authorization(&req, &backend, &config, params).await
}

/// `POST /oauth2/authorize` with a form body: OIDC Core §3.1.2.1 says the authorization
/// endpoint MUST take POST as well as GET. Like GET it is the relying party's first request,
/// so it carries no CSRF token. (A cross-site POST does not send the SameSite=Lax session
/// cookie, so the person may be asked to sign in again.)
#[tracing::instrument(name = "authorize", skip_all, fields(client_id = Empty))]
pub async fn authorize_post(
    req: HttpRequest,
    backend: web::Data<Backend>,
    config: web::Data<PageConfig>,
    params: Result<Params, ApiError>,
) -> HttpResponse {
    start_authorization(&req, &backend, &config, params.map_err(|e| e.error)).await
}

async fn start_authorization(
    req: &HttpRequest,
    backend: &Backend,
    config: &PageConfig,
    params: Result<Params, OAuthError>,
) -> HttpResponse {
    let params = match params.and_then(|p| p.parse::<AuthorizeParams>()) {
        Ok(p) => p,
        Err(e) => return error_page(&e, vec![]),
    };
    let session = session(req);
    decide(req, backend, config, params, session, pb::ConsentDecision::Unspecified, vec![], LoginRetry::default()).await
}

/// `POST /consent`: the person's answer, to `Authorize` with `consent`.
#[tracing::instrument(name = "consent", skip_all, fields(client_id = Empty))]
pub async fn consent(
    req: HttpRequest,
    backend: web::Data<Backend>,
    config: web::Data<PageConfig>,
    params: Result<Params, ApiError>,
) -> HttpResponse {
    let params = match checked_form(&req, params) {
        Ok(p) => p,
        Err(page) => return *page,
    };
    let decision = match params.get("decision") {
        Some("approve") => pb::ConsentDecision::Approve,
        Some("deny") => pb::ConsentDecision::Deny,
        _ => pb::ConsentDecision::Unspecified,
    };
    let auth = match params.parse::<AuthorizeParams>() {
        Ok(p) => p,
        Err(e) => return error_page(&e, vec![]),
    };
    let session = session(&req);
    decide(&req, &backend, &config, auth, session, decision, vec![], LoginRetry::default()).await
}
