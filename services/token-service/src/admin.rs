//! `tessera.admin.v1.AdminService`, guarded by the admin credential from configuration.

use crate::errors::status;
use std::sync::Arc;
use tessera_core::admin::{NewClient, NewUser};
use tessera_core::model::{Client, GrantType, Password, User};
use tessera_core::Tessera;
use tessera_crypto::Digest;
use tessera_proto::admin::v1 as pb;
use tonic::{Request, Response, Status};

pub struct AdminApi {
    pub tessera: Arc<Tessera>,
}

/// Checks `authorization: Bearer <admin token>` in constant time (by digest).
#[derive(Clone)]
pub struct AdminGuard {
    pub token_digest: Digest,
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
                tracing::warn!(target: "tessera::audit", kind = "admin_denied", "admin call without a valid credential");
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
    #[tracing::instrument(name = "CreateClient", skip_all)]
    async fn create_client(
        &self,
        request: Request<pb::CreateClientRequest>,
    ) -> Result<Response<pb::CreateClientResponse>, Status> {
        let r = request.into_inner();
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
        };
        let created = self.tessera.create_client(spec).await.map_err(status)?;
        Ok(Response::new(pb::CreateClientResponse {
            client_secret: created.secret.map(|s| s.expose().to_owned()).unwrap_or_default(),
            client: Some(client_pb(created.client)),
        }))
    }

    async fn list_clients(
        &self,
        _request: Request<pb::ListClientsRequest>,
    ) -> Result<Response<pb::ListClientsResponse>, Status> {
        let clients = self.tessera.list_clients().await.map_err(status)?;
        Ok(Response::new(pb::ListClientsResponse { clients: clients.into_iter().map(client_pb).collect() }))
    }

    async fn get_client(&self, request: Request<pb::GetClientRequest>) -> Result<Response<pb::Client>, Status> {
        let c = self.tessera.get_client(&request.into_inner().client_id).await.map_err(status)?;
        Ok(Response::new(client_pb(c)))
    }

    async fn delete_client(
        &self,
        request: Request<pb::DeleteClientRequest>,
    ) -> Result<Response<pb::DeleteClientResponse>, Status> {
        self.tessera.delete_client(&request.into_inner().client_id).await.map_err(status)?;
        Ok(Response::new(pb::DeleteClientResponse {}))
    }

    async fn rotate_client_secret(
        &self,
        request: Request<pb::RotateClientSecretRequest>,
    ) -> Result<Response<pb::RotateClientSecretResponse>, Status> {
        let secret = self.tessera.rotate_client_secret(&request.into_inner().client_id).await.map_err(status)?;
        Ok(Response::new(pb::RotateClientSecretResponse { client_secret: secret.expose().to_owned() }))
    }

    #[tracing::instrument(name = "CreateUser", skip_all)]
    async fn create_user(&self, request: Request<pb::CreateUserRequest>) -> Result<Response<pb::User>, Status> {
        let r = request.into_inner();
        let spec = NewUser {
            username: r.username,
            password: Some(Password::new(r.password)),
            email: Some(r.email),
            name: Some(r.name),
        };
        let u = self.tessera.create_user(spec).await.map_err(status)?;
        Ok(Response::new(user_pb(u)))
    }

    async fn list_users(
        &self,
        _request: Request<pb::ListUsersRequest>,
    ) -> Result<Response<pb::ListUsersResponse>, Status> {
        let users = self.tessera.list_users().await.map_err(status)?;
        Ok(Response::new(pb::ListUsersResponse { users: users.into_iter().map(user_pb).collect() }))
    }

    async fn set_user_disabled(
        &self,
        request: Request<pb::SetUserDisabledRequest>,
    ) -> Result<Response<pb::User>, Status> {
        let r = request.into_inner();
        let u = self.tessera.set_user_disabled(&r.username, r.disabled).await.map_err(status)?;
        Ok(Response::new(user_pb(u)))
    }

    #[tracing::instrument(name = "SetUserPassword", skip_all)]
    async fn set_user_password(
        &self,
        request: Request<pb::SetUserPasswordRequest>,
    ) -> Result<Response<pb::User>, Status> {
        let r = request.into_inner();
        let u = self.tessera.set_user_password(&r.username, &Password::new(r.password)).await.map_err(status)?;
        Ok(Response::new(user_pb(u)))
    }

    #[tracing::instrument(name = "RotateSigningKey", skip_all)]
    async fn rotate_signing_key(
        &self,
        _request: Request<pb::RotateSigningKeyRequest>,
    ) -> Result<Response<pb::RotateSigningKeyResponse>, Status> {
        let kid = self.tessera.rotate_signing_key().await.map_err(status)?;
        Ok(Response::new(pb::RotateSigningKeyResponse { kid }))
    }
}
