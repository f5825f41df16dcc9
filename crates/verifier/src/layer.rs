//! [`RequireToken`]: a `tower::Layer` that lets through only requests with a valid access
//! token, for a tonic server (`Server::builder().layer(..)`) or an axum/hyper router
//! (`Router::layer(..)`). gRPC requests (`content-type: application/grpc…`) are refused with a
//! gRPC status, others with an HTTP status and RFC 6750 §3 `WWW-Authenticate`.

use crate::{Claims, Rejection, Verifier};
use http::header::{HeaderValue, CONTENT_TYPE, WWW_AUTHENTICATE};
use http::{Request, Response, StatusCode};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

/// The layer; see the module doc. The handler finds the token's `Arc<Claims>` in the request
/// extensions (tonic: `request.extensions().get::<Arc<Claims>>()`; axum:
/// `Extension<Arc<Claims>>`).
#[derive(Clone, Debug)]
pub struct RequireToken {
    verifier: Verifier,
}

impl RequireToken {
    pub fn new(verifier: Verifier) -> Self {
        RequireToken { verifier }
    }
}

impl<S> tower_layer::Layer<S> for RequireToken {
    type Service = RequireTokenService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RequireTokenService { inner, verifier: self.verifier.clone() }
    }
}

#[derive(Clone, Debug)]
pub struct RequireTokenService<S> {
    inner: S,
    verifier: Verifier,
}

fn is_grpc<B>(req: &Request<B>) -> bool {
    req.headers().get(CONTENT_TYPE).and_then(|v| v.to_str().ok()).is_some_and(|v| v.starts_with("application/grpc"))
}

/// The Bearer credential of `Authorization` (RFC 6750 §2.1); `None` when there is none or
/// the header is not a single Bearer credential.
fn bearer<B>(req: &Request<B>) -> Option<&str> {
    let mut values = req.headers().get_all(http::header::AUTHORIZATION).iter();
    let value = values.next()?.to_str().ok()?;
    if values.next().is_some() {
        return None;
    }
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// A gRPC answer with only a status (trailers-only): HTTP 200, the status in the headers.
fn grpc_refusal<B: Default>(status: tonic::Status) -> Response<B> {
    let mut res = Response::new(B::default());
    res.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
    // Only fails for a message that cannot be a header; ours are fixed ASCII.
    let _ = status.add_header(res.headers_mut());
    res
}

fn http_refusal<B: Default>(code: StatusCode, challenge: &str) -> Response<B> {
    let mut res = Response::new(B::default());
    *res.status_mut() = code;
    if let Ok(v) = HeaderValue::from_str(challenge) {
        res.headers_mut().insert(WWW_AUTHENTICATE, v);
    }
    res.headers_mut().insert(http::header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    res
}

fn refusal<B: Default>(rejection: &Rejection, grpc: bool) -> Response<B> {
    match (rejection, grpc) {
        (Rejection::Unavailable, true) => {
            grpc_refusal(tonic::Status::unavailable("cannot check tokens for revocation now; retry later"))
        }
        (Rejection::Unavailable, false) => {
            let mut res = http_refusal(StatusCode::SERVICE_UNAVAILABLE, "Bearer");
            res.headers_mut().remove(WWW_AUTHENTICATE);
            res.headers_mut().insert(http::header::RETRY_AFTER, HeaderValue::from_static("5"));
            res
        }
        (Rejection::Missing, true) => grpc_refusal(tonic::Status::unauthenticated("a Bearer access token is required")),
        (Rejection::Missing, false) => http_refusal(StatusCode::UNAUTHORIZED, "Bearer"),
        (_, true) => grpc_refusal(tonic::Status::unauthenticated("the access token is not valid")),
        (_, false) => http_refusal(
            StatusCode::UNAUTHORIZED,
            r#"Bearer error="invalid_token", error_description="the access token is not valid""#,
        ),
    }
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, B, RB> tower_service::Service<Request<B>> for RequireTokenService<S>
where
    S: tower_service::Service<Request<B>, Response = Response<RB>> + Clone + Send + 'static,
    S::Future: Send,
    S::Error: Send,
    B: Send + 'static,
    RB: Default + Send + 'static,
{
    type Response = Response<RB>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Response<RB>, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        let grpc = is_grpc(&req);
        // The service that was polled ready answers this request; a clone waits for the next.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let cached = bearer(&req).map(|t| self.verifier.verify_cached(t));
        let answer = match cached {
            None => Err(Rejection::Missing),
            Some(Some(answer)) => answer,
            Some(None) => {
                // Not seen before: verify in full (maybe fetching keys), then go on.
                let verifier = self.verifier.clone();
                return Box::pin(async move {
                    let token = bearer(&req).unwrap_or_default().to_owned();
                    match verifier.verify(&token).await {
                        Ok(claims) => {
                            req.extensions_mut().insert(claims);
                            inner.call(req).await
                        }
                        Err(r) => {
                            tracing::debug!(reason = ?r, "a request's token was refused");
                            Ok(refusal(&r, grpc))
                        }
                    }
                });
            }
        };
        match answer {
            Ok(claims) => {
                req.extensions_mut().insert(claims);
                Box::pin(inner.call(req))
            }
            Err(r) => {
                tracing::debug!(reason = ?r, "a request's token was refused");
                Box::pin(std::future::ready(Ok(refusal(&r, grpc))))
            }
        }
    }
}

/// A request whose token lacks a scope it needs (RFC 6750 §3.1 `insufficient_scope`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InsufficientScope {
    pub scope: String,
}

impl InsufficientScope {
    /// PERMISSION_DENIED, for a tonic handler.
    pub fn status(&self) -> tonic::Status {
        tonic::Status::permission_denied(format!("the access token lacks the scope {}", self.scope))
    }

    /// 403 with `WWW-Authenticate: Bearer error="insufficient_scope", scope="…"`.
    pub fn response<B: Default>(&self) -> Response<B> {
        let scope: String = self.scope.chars().filter(|c| c.is_ascii_graphic() && *c != '"' && *c != '\\').collect();
        http_refusal(StatusCode::FORBIDDEN, &format!(r#"Bearer error="insufficient_scope", scope="{scope}""#))
    }
}

impl From<InsufficientScope> for tonic::Status {
    fn from(e: InsufficientScope) -> Self {
        e.status()
    }
}

/// The claims [`RequireToken`] put in `extensions`, if they carry `scope`. Without the layer
/// in front there are no claims, which counts as lacking the scope.
pub fn require_scope(extensions: &http::Extensions, scope: &str) -> Result<Arc<Claims>, InsufficientScope> {
    extensions
        .get::<Arc<Claims>>()
        .filter(|c| c.has_scope(scope))
        .cloned()
        .ok_or_else(|| InsufficientScope { scope: scope.to_owned() })
}
