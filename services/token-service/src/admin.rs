//! `tessera.admin.v1.AdminService`, guarded by the admin credential from configuration.

use crate::observe::Metrics;
use std::sync::Arc;
use tessera_core::admin::{NewClient, NewUser};
use tessera_core::model::{Client, GrantType, Password, User};
use tessera_core::ports::AuditKind;
use tessera_core::Tessera;
use tessera_crypto::Digest;
use tessera_proto::admin::v1 as pb;
use tonic::{Request, Response, Status};
use tracing::field::Empty;

pub struct AdminApi {
    pub tessera: Arc<Tessera>,
    pub metrics: Arc<Metrics>,
}

/// Checks `authorization: Bearer <admin token>` in constant time (by digest).
#[derive(Clone)]
pub struct AdminGuard {
    pub token_digest: Digest,
    pub metrics: Arc<Metrics>,
}

impl tonic::service::Interceptor for AdminGuard {
    fn call(&mut self, request: Request<()>) -> Result<Request<()>, Status> {
        let presented = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(|t| Digest::of(t.as_bytes()));
        match presented {
            Some(d) if d.ct_eq(&self.token_digest) => Ok(request),
            _ => {
                tracing::warn!(target: "tessera::audit", kind = AuditKind::AdminDenied.as_str(), "admin call without a valid credential");
                self.metrics.audit_event(AuditKind::AdminDenied);
                Err(Status::unauthenticated("a valid admin credential is required"))
            }
        }
    }
}

fn client_pb(c: Client) -> pb::Client {
    pb::Client {
        client_id: c.id,
        name: c.name,
        confidential: c.confidential,
        grant_types: c.grant_types.iter().map(|g| GrantType::as_str(*g).to_owned()).collect(),
        redirect_uris: c.redirect_uris,
        scopes: c.scopes,
        access_token_ttl: c.access_token_ttl.unwrap_or(0),
        refresh_token_ttl: c.refresh_token_ttl.unwrap_or(0),
        skip_consent: c.skip_consent,
        allow_implicit: c.allow_implicit,
        allow_plain_pkce: c.allow_plain_pkce,
        created_at: c.created_at,
        watch_revocations: c.watch_revocations,
    }
}

fn user_pb(u: User) -> pb::User {
    pb::User {
        id: u.id,
        username: u.username,
        disabled: u.disabled,
        email: u.email.unwrap_or_default(),
        name: u.name.unwrap_or_default(),
        created_at: u.created_at,
    }
}

#[tonic::async_trait]
impl pb::admin_service_server::AdminService for AdminApi {
    #[tracing::instrument(name = "CreateClient", skip_all, fields(otel.kind = "server", error_code = Empty))]
    async fn create_client(
        &self,
        request: Request<pb::CreateClientRequest>,
    ) -> Result<Response<pb::CreateClientResponse>, Status> {
        let r = request.into_inner();
        self.metrics
            .observe("CreateClient", "", async move {
                let spec = NewClient {
                    client_id: r.client_id,
                    name: r.name,
                    public: r.public,
                    grant_types: r.grant_types,
                    redirect_uris: r.redirect_uris,
                    scopes: r.scopes,
                    access_token_ttl: (r.access_token_ttl > 0).then_some(r.access_token_ttl),
                    refresh_token_ttl: (r.refresh_token_ttl > 0).then_some(r.refresh_token_ttl),
                    skip_consent: r.skip_consent,
                    allow_implicit: r.allow_implicit,
                    allow_plain_pkce: r.allow_plain_pkce,
                    watch_revocations: r.watch_revocations,
                };
                let created = self.tessera.create_client(spec).await?;
                Ok(pb::CreateClientResponse {
                    client_secret: created.secret.map(|s| s.expose().to_owned()).unwrap_or_default(),
                    client: Some(client_pb(created.client)),
                })
            })
            .await
    }

    #[tracing::instrument(name = "ListClients", skip_all, fields(otel.kind = "server", error_code = Empty))]
    async fn list_clients(
        &self,
        _request: Request<pb::ListClientsRequest>,
    ) -> Result<Response<pb::ListClientsResponse>, Status> {
        self.metrics
            .observe("ListClients", "", async {
                let clients = self.tessera.list_clients().await?;
                Ok(pb::ListClientsResponse { clients: clients.into_iter().map(client_pb).collect() })
            })
            .await
    }

    #[tracing::instrument(name = "GetClient", skip_all, fields(otel.kind = "server", error_code = Empty))]
    async fn get_client(&self, request: Request<pb::GetClientRequest>) -> Result<Response<pb::Client>, Status> {
        let r = request.into_inner();
        self.metrics
            .observe("GetClient", "", async move { Ok(client_pb(self.tessera.get_client(&r.client_id).await?)) })
            .await
    }

    #[tracing::instrument(name = "SetClientPermissions", skip_all, fields(otel.kind = "server", error_code = Empty))]
    async fn set_client_permissions(
        &self,
        request: Request<pb::SetClientPermissionsRequest>,
    ) -> Result<Response<pb::Client>, Status> {
        let r = request.into_inner();
        self.metrics
            .observe("SetClientPermissions", "", async move {
                Ok(client_pb(self.tessera.set_client_permissions(&r.client_id, r.watch_revocations).await?))
            })
            .await
    }

    #[tracing::instrument(name = "DeleteClient", skip_all, fields(otel.kind = "server", error_code = Empty))]
    async fn delete_client(
        &self,
        request: Request<pb::DeleteClientRequest>,
    ) -> Result<Response<pb::DeleteClientResponse>, Status> {
        let r = request.into_inner();
        self.metrics
            .observe("DeleteClient", "", async move {
                self.tessera.delete_client(&r.client_id).await?;
                Ok(pb::DeleteClientResponse {})
            })
            .await
    }

    #[tracing::instrument(name = "RotateClientSecret", skip_all, fields(otel.kind = "server", error_code = Empty))]
    async fn rotate_client_secret(
        &self,
        request: Request<pb::RotateClientSecretRequest>,
    ) -> Result<Response<pb::RotateClientSecretResponse>, Status> {
        let r = request.into_inner();
        self.metrics
            .observe("RotateClientSecret", "", async move {
                let secret = self.tessera.rotate_client_secret(&r.client_id).await?;
                Ok(pb::RotateClientSecretResponse { client_secret: secret.expose().to_owned() })
            })
            .await
    }

    #[tracing::instrument(name = "CreateUser", skip_all, fields(otel.kind = "server", error_code = Empty))]
    async fn create_user(&self, request: Request<pb::CreateUserRequest>) -> Result<Response<pb::User>, Status> {
        let r = request.into_inner();
        self.metrics
            .observe("CreateUser", "", async move {
                let spec = NewUser {
                    username: r.username,
                    password: Some(Password::new(r.password)),
                    email: Some(r.email),
                    name: Some(r.name),
                };
                Ok(user_pb(self.tessera.create_user(spec).await?))
            })
            .await
    }

    #[tracing::instrument(name = "ListUsers", skip_all, fields(otel.kind = "server", error_code = Empty))]
    async fn list_users(
        &self,
        _request: Request<pb::ListUsersRequest>,
    ) -> Result<Response<pb::ListUsersResponse>, Status> {
        self.metrics
            .observe("ListUsers", "", async {
                let users = self.tessera.list_users().await?;
                Ok(pb::ListUsersResponse { users: users.into_iter().map(user_pb).collect() })
            })
            .await
    }

    #[tracing::instrument(name = "SetUserDisabled", skip_all, fields(otel.kind = "server", error_code = Empty))]
    async fn set_user_disabled(
        &self,
        request: Request<pb::SetUserDisabledRequest>,
    ) -> Result<Response<pb::User>, Status> {
        let r = request.into_inner();
        self.metrics
            .observe("SetUserDisabled", "", async move {
                Ok(user_pb(self.tessera.set_user_disabled(&r.username, r.disabled).await?))
            })
            .await
    }

    #[tracing::instrument(name = "SetUserPassword", skip_all, fields(otel.kind = "server", error_code = Empty))]
    async fn set_user_password(
        &self,
        request: Request<pb::SetUserPasswordRequest>,
    ) -> Result<Response<pb::User>, Status> {
        let r = request.into_inner();
        self.metrics
            .observe("SetUserPassword", "", async move {
                Ok(user_pb(self.tessera.set_user_password(&r.username, &Password::new(r.password)).await?))
            })
            .await
    }

    #[tracing::instrument(name = "RotateSigningKey", skip_all, fields(otel.kind = "server", error_code = Empty))]
    async fn rotate_signing_key(
        &self,
        _request: Request<pb::RotateSigningKeyRequest>,
    ) -> Result<Response<pb::RotateSigningKeyResponse>, Status> {
        self.metrics
            .observe("RotateSigningKey", "", async {
                Ok(pb::RotateSigningKeyResponse { kid: self.tessera.rotate_signing_key().await? })
            })
            .await
    }
}
