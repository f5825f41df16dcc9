//! `tessera.token.v1.TokenService`: turns each request into a typed core command at the edge
//! and maps the answer (or the `OAuthError`) back. Each RPC runs in a server span named after
//! it (grant type, client id, OAuth error code; never a credential) and is counted by
//! [`Metrics::observe`].

use crate::observe::Metrics;
use crate::source::TrustedNetworks;
use std::net::IpAddr;
use std::sync::Arc;
use tessera_core::authorize::{AuthorizeOutcome, AuthorizeRequest as CoreAuthorize, Consent};
use tessera_core::grants::Grant;
use tessera_core::introspect::Introspection;
use tessera_core::model::{
    AuthorizationCode, DeviceCode, GrantType, Password, PresentedToken, RefreshToken, SessionHandle,
};
use tessera_core::{printable, ClientAuth, ErrorCode, OAuthError, Tessera, TokenSet};
use tessera_proto::token::v1 as pb;
use tonic::{Request, Response, Status};
use tracing::field::Empty;

pub struct TokenApi {
    pub tessera: Arc<Tessera>,
    pub metrics: Arc<Metrics>,
    /// The RFC 8414 metadata document, built once from the settings.
    pub metadata_json: Arc<str>,
    /// Peers whose relayed client address is believed (`grpc.trusted_relays`).
    pub trusted_relays: TrustedNetworks,
    /// Becomes true when the service shuts down: open watches end.
    pub closing: tokio::sync::watch::Receiver<bool>,
    /// One permit per open watch ([`crate::watch::MAX_WATCHERS`]).
    pub watchers: Arc<tokio::sync::Semaphore>,
    /// Open watches by client ([`crate::watch::MAX_WATCHERS_PER_CLIENT`]).
    pub watchers_by_client: Arc<crate::watch::PerClient>,
}

impl TokenApi {
    /// Where the request comes from (see [`crate::source`]), also recorded as `client_addr` on
    /// the RPC's span when it declares that field: the key of the throttles of anonymous input.
    pub fn client_source<T>(&self, request: &Request<T>) -> Option<IpAddr> {
        let source = crate::source::client_source(request, &self.trusted_relays);
        if let Some(ip) = source {
            tracing::Span::current().record("client_addr", tracing::field::display(ip));
        }
        source
    }
}

fn token_response(t: TokenSet) -> pb::TokenResponse {
    pb::TokenResponse {
        access_token: t.access_token,
        token_type: TokenSet::TOKEN_TYPE.into(),
        expires_in: t.expires_in,
        refresh_token: t.refresh_token.map(|r| r.expose().to_owned()).unwrap_or_default(),
        scope: t.scope.to_string(),
        id_token: t.id_token.unwrap_or_default(),
    }
}

fn scopes(v: Vec<(String, String)>) -> Vec<pb::ScopeDescription> {
    v.into_iter().map(|(name, description)| pb::ScopeDescription { name, description }).collect()
}

#[tonic::async_trait]
impl pb::token_service_server::TokenService for TokenApi {
    type WatchRevocationsStream = crate::watch::EventStream;

    #[tracing::instrument(name = "WatchRevocations", skip_all, fields(otel.kind = "server", client_id = %printable(&request.get_ref().client_id), error_code = Empty))]
    async fn watch_revocations(
        &self,
        request: Request<pb::WatchRevocationsRequest>,
    ) -> Result<Response<Self::WatchRevocationsStream>, Status> {
        let r = request.into_inner();
        // Counted when it opens (or is refused); how long it stays open is the watcher's.
        self.metrics
            .observe("WatchRevocations", "", async move {
                let permit = Arc::clone(&self.watchers).try_acquire_owned().map_err(|_| {
                    OAuthError::temporarily_unavailable("too many revocation watchers on this node; retry later", 5)
                })?;
                let auth = ClientAuth::new(r.client_id, r.client_secret);
                let watch = self.tessera.watch_revocations(&auth, &r.cursor).await?;
                let slot =
                    crate::watch::PerClient::take(&self.watchers_by_client, &watch.watcher.id).ok_or_else(|| {
                        OAuthError::temporarily_unavailable(
                            "this client has too many revocation watches open on this node",
                            5,
                        )
                    })?;
                Ok(crate::watch::events(
                    Arc::clone(&self.tessera),
                    watch,
                    crate::watch::heartbeat(r.heartbeat_seconds),
                    self.closing.clone(),
                    (permit, slot),
                ))
            })
            .await
    }

    #[tracing::instrument(name = "PollSecurityEvents", skip_all, fields(otel.kind = "server", client_id = %printable(&request.get_ref().client_id), error_code = Empty))]
    async fn poll_security_events(
        &self,
        request: Request<pb::PollSecurityEventsRequest>,
    ) -> Result<Response<pb::PollSecurityEventsResponse>, Status> {
        let r = request.into_inner();
        self.metrics
            .observe("PollSecurityEvents", "", async move {
                let auth = ClientAuth::new(r.client_id, r.client_secret);
                let poll = tessera_core::watch::SetPoll {
                    ack: r.ack,
                    errors: r.set_errs.into_iter().map(|(jti, e)| (jti, e.err, e.description)).collect(),
                    // Negative: absent, as callers of the earlier form of this field sent it.
                    max_events: r.max_events.and_then(|n| u32::try_from(n).ok()),
                    return_immediately: r.return_immediately,
                };
                let batch = self.tessera.poll_security_events(&auth, poll).await?;
                Ok(pb::PollSecurityEventsResponse {
                    sets: batch.sets.into_iter().collect(),
                    more_available: batch.more_available,
                })
            })
            .await
    }

    #[tracing::instrument(name = "IssueToken", skip_all, fields(otel.kind = "server", grant_type = GrantType::label(&request.get_ref().grant_type), client_id = %printable(&request.get_ref().client_id), client_addr = Empty, error_code = Empty))]
    async fn issue_token(
        &self,
        request: Request<pb::IssueTokenRequest>,
    ) -> Result<Response<pb::TokenResponse>, Status> {
        let source = self.client_source(&request);
        let r = request.into_inner();
        let label = GrantType::label(&r.grant_type);
        self.metrics
            .observe("IssueToken", label, async move {
                let grant = match GrantType::parse(&r.grant_type) {
                    Some(GrantType::ClientCredentials) => Grant::ClientCredentials { scope: r.scope },
                    Some(GrantType::Password) => {
                        Grant::Password {
                            username: r.username,
                            password: Password::new(r.password),
                            scope: r.scope,
                            source,
                        }
                    }
                    Some(GrantType::RefreshToken) => {
                        Grant::RefreshToken { refresh_token: RefreshToken::new(r.refresh_token), scope: r.scope }
                    }
                    Some(GrantType::AuthorizationCode | GrantType::DeviceCode) => {
                        return Err(OAuthError::new(
                            ErrorCode::UnsupportedGrantType,
                            "IssueToken takes client_credentials, password and refresh_token; use ExchangeCode or PollDevice",
                        ))
                    }
                    None if r.grant_type.is_empty() => {
                        return Err(OAuthError::invalid_request("grant_type is required"))
                    }
                    // `implicit` is a response type, never a grant_type at the token endpoint.
                    Some(GrantType::Implicit) | None => {
                        return Err(OAuthError::new(ErrorCode::UnsupportedGrantType, "unsupported grant_type"))
                    }
                };
                let auth = ClientAuth::new(r.client_id, r.client_secret);
                let tokens = self.tessera.token(&auth, grant).await?;
                self.metrics.token_issued(label);
                Ok(token_response(tokens))
            })
            .await
    }

    #[tracing::instrument(name = "ExchangeCode", skip_all, fields(otel.kind = "server", grant_type = "authorization_code", client_id = %printable(&request.get_ref().client_id), error_code = Empty))]
    async fn exchange_code(
        &self,
        request: Request<pb::ExchangeCodeRequest>,
    ) -> Result<Response<pb::TokenResponse>, Status> {
        let r = request.into_inner();
        let label = GrantType::AuthorizationCode.as_str();
        self.metrics
            .observe("ExchangeCode", label, async move {
                let auth = ClientAuth::new(r.client_id, r.client_secret);
                let grant = Grant::AuthorizationCode {
                    code: AuthorizationCode::new(r.code),
                    redirect_uri: r.redirect_uri,
                    code_verifier: r.code_verifier,
                };
                let tokens = self.tessera.token(&auth, grant).await?;
                self.metrics.token_issued(label);
                Ok(token_response(tokens))
            })
            .await
    }

    #[tracing::instrument(name = "StartDeviceAuthorization", skip_all, fields(otel.kind = "server", client_id = %printable(&request.get_ref().client_id), client_addr = Empty, error_code = Empty))]
    async fn start_device_authorization(
        &self,
        request: Request<pb::DeviceAuthorizationRequest>,
    ) -> Result<Response<pb::DeviceAuthorizationResponse>, Status> {
        let source = self.client_source(&request);
        let r = request.into_inner();
        self.metrics
            .observe("StartDeviceAuthorization", "device_code", async move {
                let auth = ClientAuth::new(r.client_id, r.client_secret);
                let d = self.tessera.start_device_authorization(&auth, &r.scope, source).await?;
                Ok(pb::DeviceAuthorizationResponse {
                    device_code: d.device_code.expose().to_owned(),
                    user_code: d.user_code,
                    verification_uri: d.verification_uri,
                    verification_uri_complete: d.verification_uri_complete,
                    expires_in: d.expires_in,
                    interval: d.interval,
                })
            })
            .await
    }

    #[tracing::instrument(name = "PollDevice", skip_all, fields(otel.kind = "server", grant_type = "device_code", client_id = %printable(&request.get_ref().client_id), error_code = Empty))]
    async fn poll_device(
        &self,
        request: Request<pb::PollDeviceRequest>,
    ) -> Result<Response<pb::TokenResponse>, Status> {
        let r = request.into_inner();
        self.metrics
            .observe("PollDevice", "device_code", async move {
                let auth = ClientAuth::new(r.client_id, r.client_secret);
                let grant = Grant::DeviceCode { device_code: DeviceCode::new(r.device_code) };
                let tokens = self.tessera.token(&auth, grant).await?;
                self.metrics.token_issued("device_code");
                Ok(token_response(tokens))
            })
            .await
    }

    #[tracing::instrument(name = "Introspect", skip_all, fields(otel.kind = "server", client_id = %printable(&request.get_ref().client_id), error_code = Empty))]
    async fn introspect(
        &self,
        request: Request<pb::IntrospectRequest>,
    ) -> Result<Response<pb::IntrospectResponse>, Status> {
        let r = request.into_inner();
        self.metrics
            .observe("Introspect", "", async move {
                let auth = ClientAuth::new(r.client_id, r.client_secret);
                let answer = self.tessera.introspect(&auth, &PresentedToken::new(r.token)).await?;
                Ok(match answer {
                    Introspection::Inactive => pb::IntrospectResponse::default(),
                    Introspection::Active(a) => {
                        let a = *a;
                        pb::IntrospectResponse {
                            active: true,
                            scope: a.scope,
                            client_id: a.client_id,
                            username: a.username,
                            token_type: a.token_type,
                            exp: a.exp,
                            iat: a.iat,
                            nbf: a.nbf,
                            sub: a.sub,
                            aud: a.aud,
                            iss: a.iss,
                            jti: a.jti,
                        }
                    }
                })
            })
            .await
    }

    #[tracing::instrument(name = "Revoke", skip_all, fields(otel.kind = "server", client_id = %printable(&request.get_ref().client_id), error_code = Empty))]
    async fn revoke(&self, request: Request<pb::RevokeRequest>) -> Result<Response<pb::RevokeResponse>, Status> {
        let r = request.into_inner();
        self.metrics
            .observe("Revoke", "", async move {
                let auth = ClientAuth::new(r.client_id, r.client_secret);
                self.tessera.revoke(&auth, &PresentedToken::new(r.token), &r.token_type_hint).await?;
                Ok(pb::RevokeResponse {})
            })
            .await
    }

    #[tracing::instrument(name = "Authenticate", skip_all, fields(otel.kind = "server", client_addr = Empty, error_code = Empty))]
    async fn authenticate(
        &self,
        request: Request<pb::AuthenticateRequest>,
    ) -> Result<Response<pb::AuthenticateResponse>, Status> {
        let source = self.client_source(&request);
        let r = request.into_inner();
        self.metrics
            .observe("Authenticate", "", async move {
                let a = self.tessera.authenticate(&r.username, &Password::new(r.password), source).await?;
                Ok(pb::AuthenticateResponse {
                    session: a.session.expose().to_owned(),
                    subject: a.user.id,
                    username: a.user.username,
                    expires_in: a.expires_in,
                })
            })
            .await
    }

    #[tracing::instrument(name = "EndSession", skip_all, fields(otel.kind = "server", error_code = Empty))]
    async fn end_session(
        &self,
        request: Request<pb::EndSessionRequest>,
    ) -> Result<Response<pb::EndSessionResponse>, Status> {
        let r = request.into_inner();
        self.metrics
            .observe("EndSession", "", async move {
                self.tessera.end_session(&SessionHandle::new(r.session)).await?;
                Ok(pb::EndSessionResponse {})
            })
            .await
    }

    #[tracing::instrument(name = "Authorize", skip_all, fields(otel.kind = "server", client_id = %printable(&request.get_ref().client_id), response_type = %printable(&request.get_ref().response_type), error_code = Empty))]
    async fn authorize(
        &self,
        request: Request<pb::AuthorizeRequest>,
    ) -> Result<Response<pb::AuthorizeResponse>, Status> {
        let r = request.into_inner();
        self.metrics
            .observe("Authorize", "", async move {
                let consent = match pb::ConsentDecision::try_from(r.consent) {
                    Ok(pb::ConsentDecision::Approve) => Consent::Approve,
                    Ok(pb::ConsentDecision::Deny) => Consent::Deny,
                    _ => Consent::NotAsked,
                };
                let req = CoreAuthorize {
                    response_type: r.response_type,
                    client_id: r.client_id,
                    redirect_uri: r.redirect_uri,
                    scope: r.scope,
                    state: r.state,
                    nonce: r.nonce,
                    code_challenge: r.code_challenge,
                    code_challenge_method: r.code_challenge_method,
                    prompt: r.prompt,
                    max_age: (r.max_age >= 0).then_some(r.max_age),
                };
                let outcome = self.tessera.authorize(&req, &SessionHandle::new(r.session), consent).await?;
                use pb::authorize_response::Outcome;
                let outcome = match outcome {
                    AuthorizeOutcome::Redirect { to, issued } => {
                        if let Some(grant) = issued {
                            self.metrics.token_issued(grant.as_str());
                        }
                        Outcome::RedirectTo(to)
                    }
                    AuthorizeOutcome::LoginRequired { client_name } => {
                        Outcome::LoginRequired(pb::LoginRequired { client_name })
                    }
                    AuthorizeOutcome::ConsentRequired { client_id, client_name, scopes: s, username } => {
                        Outcome::ConsentRequired(pb::ConsentRequired {
                            client_id,
                            client_name,
                            scopes: scopes(s),
                            username,
                        })
                    }
                };
                Ok(pb::AuthorizeResponse { outcome: Some(outcome) })
            })
            .await
    }

    #[tracing::instrument(name = "LookupUserCode", skip_all, fields(otel.kind = "server", client_addr = Empty, error_code = Empty))]
    async fn lookup_user_code(
        &self,
        request: Request<pb::LookupUserCodeRequest>,
    ) -> Result<Response<pb::LookupUserCodeResponse>, Status> {
        let source = self.client_source(&request);
        let r = request.into_inner();
        self.metrics
            .observe("LookupUserCode", "", async move {
                let v = self.tessera.lookup_user_code(&r.user_code, source).await?;
                Ok(pb::LookupUserCodeResponse {
                    user_code: v.user_code,
                    client_id: v.client.id,
                    client_name: v.client.name,
                    scopes: scopes(v.scopes),
                    expires_in: v.expires_in,
                })
            })
            .await
    }

    #[tracing::instrument(name = "ApproveDevice", skip_all, fields(otel.kind = "server", client_addr = Empty, error_code = Empty))]
    async fn approve_device(
        &self,
        request: Request<pb::ApproveDeviceRequest>,
    ) -> Result<Response<pb::ApproveDeviceResponse>, Status> {
        let source = self.client_source(&request);
        let r = request.into_inner();
        self.metrics
            .observe("ApproveDevice", "", async move {
                self.tessera.approve_device(&r.user_code, &SessionHandle::new(r.session), source).await?;
                Ok(pb::ApproveDeviceResponse {})
            })
            .await
    }

    #[tracing::instrument(name = "DenyDevice", skip_all, fields(otel.kind = "server", client_addr = Empty, error_code = Empty))]
    async fn deny_device(
        &self,
        request: Request<pb::DenyDeviceRequest>,
    ) -> Result<Response<pb::DenyDeviceResponse>, Status> {
        let source = self.client_source(&request);
        let r = request.into_inner();
        self.metrics
            .observe("DenyDevice", "", async move {
                self.tessera.deny_device(&r.user_code, &SessionHandle::new(r.session), source).await?;
                Ok(pb::DenyDeviceResponse {})
            })
            .await
    }

    #[tracing::instrument(name = "GetJwks", skip_all, fields(otel.kind = "server"))]
    async fn get_jwks(&self, _request: Request<pb::GetJwksRequest>) -> Result<Response<pb::GetJwksResponse>, Status> {
        self.metrics
            .observe("GetJwks", "", async { Ok(pb::GetJwksResponse { jwks_json: self.tessera.jwks_json() }) })
            .await
    }

    #[tracing::instrument(name = "UserInfo", skip_all, fields(otel.kind = "server", error_code = Empty))]
    async fn user_info(&self, request: Request<pb::UserInfoRequest>) -> Result<Response<pb::UserInfoResponse>, Status> {
        let r = request.into_inner();
        self.metrics
            .observe("UserInfo", "", async move {
                let claims = self.tessera.userinfo(&r.access_token).await?;
                Ok(pb::UserInfoResponse { claims_json: claims.to_string() })
            })
            .await
    }

    #[tracing::instrument(name = "GetServerMetadata", skip_all, fields(otel.kind = "server"))]
    async fn get_server_metadata(
        &self,
        _request: Request<pb::GetServerMetadataRequest>,
    ) -> Result<Response<pb::GetServerMetadataResponse>, Status> {
        self.metrics
            .observe("GetServerMetadata", "", async {
                Ok(pb::GetServerMetadataResponse { metadata_json: self.metadata_json.to_string() })
            })
            .await
    }
}
