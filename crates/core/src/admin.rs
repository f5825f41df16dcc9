//! Administration of clients and users: validation and secrets are decided here; the admin
//! transport only checks the admin credential.

use crate::accounts::normalize_username;
use crate::error::{OAuthError, StoreError};
use crate::model::{Client, ClientSecret, GrantType, Password, ScopeSet, User};
use crate::ports::{AuditKind, Revocation};
use crate::Tessera;
use tessera_crypto::password_pool::PasswordPool;
use url::Url;

/// What an administrator asks for when registering a client.
#[derive(Clone, Debug, Default)]
pub struct NewClient {
    /// Empty: a random id.
    pub client_id: String,
    pub name: String,
    pub public: bool,
    pub grant_types: Vec<String>,
    pub redirect_uris: Vec<String>,
    pub scopes: Vec<String>,
    pub access_token_ttl: Option<i64>,
    pub refresh_token_ttl: Option<i64>,
    pub skip_consent: bool,
    pub allow_implicit: bool,
    pub allow_plain_pkce: bool,
    /// May watch revocations (confidential clients only).
    pub watch_revocations: bool,
}

/// A client just created, with its secret, shown once.
#[derive(Clone, Debug)]
pub struct CreatedClient {
    pub client: Client,
    pub secret: Option<ClientSecret>,
}

#[derive(Clone, Debug, Default)]
pub struct NewUser {
    pub username: String,
    pub password: Option<Password>,
    pub email: Option<String>,
    pub name: Option<String>,
}

fn bad(d: impl Into<String>) -> OAuthError {
    OAuthError::invalid_request(d)
}

fn conflict_or(e: StoreError, what: &str) -> OAuthError {
    match e {
        StoreError::Conflict(_) => bad(format!("{what} already exists")),
        other => other.into(),
    }
}

fn validate_client_id(id: &str) -> Result<(), OAuthError> {
    if id.is_empty() || id.len() > 128 || !id.bytes().all(|b| b.is_ascii_alphanumeric() || b"-._~".contains(&b)) {
        return Err(bad("client_id must be 1 to 128 characters of letters, digits, '-', '.', '_' or '~'"));
    }
    Ok(())
}

/// RFC 6749 §3.1.2: an absolute URI without a fragment. Plain http only for loopback hosts
/// (RFC 8252 §7.3) or custom schemes of native apps.
fn validate_redirect_uri(uri: &str) -> Result<(), OAuthError> {
    let url = Url::parse(uri).map_err(|_| bad(format!("redirect URI {uri:?} is not an absolute URI")))?;
    if url.fragment().is_some() {
        return Err(bad(format!("redirect URI {uri:?} must not contain a fragment")));
    }
    if url.scheme() == "http" {
        let loopback = matches!(url.host_str(), Some("localhost" | "127.0.0.1" | "[::1]"));
        if !loopback {
            return Err(bad(format!("redirect URI {uri:?} must use https (http only for loopback)")));
        }
    }
    Ok(())
}

impl Tessera {
    pub async fn create_client(&self, spec: NewClient) -> Result<CreatedClient, OAuthError> {
        let id = if spec.client_id.is_empty() { tessera_crypto::random_secret(12) } else { spec.client_id.clone() };
        validate_client_id(&id)?;
        let name = if spec.name.trim().is_empty() { id.clone() } else { spec.name.trim().to_owned() };
        if name.len() > 200 {
            return Err(bad("name is too long"));
        }
        let mut grant_types = Vec::new();
        for g in &spec.grant_types {
            let g = GrantType::parse(g).ok_or_else(|| bad(format!("unknown grant type {g:?}")))?;
            if !grant_types.contains(&g) {
                grant_types.push(g);
            }
        }
        if grant_types.is_empty() {
            return Err(bad("a client needs at least one grant type"));
        }
        if spec.public && grant_types.contains(&GrantType::ClientCredentials) {
            return Err(bad("public clients cannot use client_credentials"));
        }
        let browser = grant_types.contains(&GrantType::AuthorizationCode) || spec.allow_implicit;
        if browser && spec.redirect_uris.is_empty() {
            return Err(bad("authorization_code and implicit need at least one redirect URI"));
        }
        for uri in &spec.redirect_uris {
            validate_redirect_uri(uri)?;
        }
        let scopes = ScopeSet::parse(&spec.scopes.join(" "))?;
        // Retired signing keys are published for a day, so no access token may outlive that.
        if spec.access_token_ttl.is_some_and(|t| !(0..=24 * 3600).contains(&t)) {
            return Err(bad("access_token_ttl must be between 0 and 86400 seconds"));
        }
        if spec.refresh_token_ttl.is_some_and(|t| !(0..=366 * 24 * 3600).contains(&t)) {
            return Err(bad("refresh_token_ttl must be between 0 and 366 days"));
        }
        if spec.allow_implicit && !grant_types.contains(&GrantType::Implicit) {
            grant_types.push(GrantType::Implicit);
        }
        if spec.public && spec.watch_revocations {
            return Err(bad("only a confidential client may watch revocations"));
        }
        let secret = (!spec.public).then(|| ClientSecret::new(tessera_crypto::random_credential(32)));
        let client = Client {
            id,
            name,
            secret_digest: secret.as_ref().map(ClientSecret::digest),
            confidential: !spec.public,
            grant_types,
            redirect_uris: spec.redirect_uris,
            scopes: scopes.to_vec(),
            access_token_ttl: spec.access_token_ttl.filter(|t| *t > 0),
            refresh_token_ttl: spec.refresh_token_ttl.filter(|t| *t > 0),
            skip_consent: spec.skip_consent,
            allow_implicit: spec.allow_implicit,
            allow_plain_pkce: spec.allow_plain_pkce,
            created_at: self.now(),
            watch_revocations: spec.watch_revocations,
        };
        // A deleted client's id stays retired: a new client must not inherit its refresh
        // tokens, consents or anything a resource server remembers about it.
        if self.durable.client_id_retired(&client.id).await? {
            return Err(bad("a client with this id existed and was deleted; its id cannot be registered again"));
        }
        self.durable.create_client(&client).await.map_err(|e| conflict_or(e, "a client with this id"))?;
        self.audit(AuditKind::ClientCreated, Some(&client.id), None, "client registered").await;
        Ok(CreatedClient { client, secret })
    }

    pub async fn get_client(&self, id: &str) -> Result<Client, OAuthError> {
        self.durable.get_client(id).await?.ok_or_else(|| bad("no such client"))
    }

    pub async fn list_clients(&self) -> Result<Vec<Client>, OAuthError> {
        Ok(self.durable.list_clients().await?)
    }

    /// Deletes a client and revokes every token it holds, on every node (DESIGN.md rule 9):
    /// the revocation is recorded before the client is removed, so a failure in between leaves
    /// a client that can no longer use anything, never tokens that outlive their client.
    pub async fn delete_client(&self, id: &str) -> Result<(), OAuthError> {
        if self.durable.get_client(id).await?.is_none() {
            return Err(bad("no such client"));
        }
        self.record_revocations(vec![Revocation::Client { id: id.to_owned(), before: Revocation::FOREVER }]).await?;
        if !self.durable.delete_client(id).await? {
            return Err(bad("no such client"));
        }
        self.audit(AuditKind::ClientDeleted, Some(id), None, "client deleted").await;
        Ok(())
    }

    /// Allows a confidential client to watch revocations, or stops allowing it. Other nodes
    /// see the change once their copy of the client is older than `client_cache_ttl`; a
    /// stream already open on a node goes on until it ends.
    pub async fn set_client_permissions(&self, id: &str, watch_revocations: bool) -> Result<Client, OAuthError> {
        let client = self.get_client(id).await?;
        if watch_revocations && !client.confidential {
            return Err(bad("only a confidential client may watch revocations"));
        }
        if !self.durable.set_client_watch_revocations(id, watch_revocations).await? {
            return Err(bad("no such client"));
        }
        self.clients.forget(id);
        let what = if watch_revocations { "may watch revocations" } else { "may not watch revocations" };
        self.audit(AuditKind::ClientPermissionsChanged, Some(id), None, what).await;
        self.get_client(id).await
    }

    /// A new secret that replaces the old one at once.
    pub async fn rotate_client_secret(&self, id: &str) -> Result<ClientSecret, OAuthError> {
        let client = self.get_client(id).await?;
        if !client.confidential {
            return Err(bad("public clients have no secret"));
        }
        let secret = ClientSecret::new(tessera_crypto::random_credential(32));
        let replaced = self.durable.set_client_secret(id, secret.digest()).await?;
        if !replaced {
            return Err(bad("no such client"));
        }
        // The old secret's tokens die with it, on every node, and every node's cache drops the
        // client, so it is read again with the new secret. The cut-off is taken after the
        // change: nothing the old secret obtains can be dated after it.
        self.record_revocations(vec![Revocation::Client { id: id.to_owned(), before: self.cut_off() }]).await?;
        self.audit(AuditKind::ClientSecretRotated, Some(id), None, "client secret replaced").await;
        Ok(secret)
    }

    pub async fn create_user(&self, spec: NewUser) -> Result<User, OAuthError> {
        let username = normalize_username(&spec.username)?;
        let password = spec.password.ok_or_else(|| bad("a password is required"))?;
        let hash = hash_password(&self.passwords, &password).await?;
        let user = User {
            id: uuid::Uuid::new_v4().to_string(),
            username,
            password_hash: hash,
            disabled: false,
            email: spec.email.filter(|e| !e.is_empty()),
            name: spec.name.filter(|n| !n.is_empty()),
            created_at: self.now(),
        };
        self.durable.create_user(&user).await.map_err(|e| conflict_or(e, "a user with this username"))?;
        self.audit(AuditKind::UserCreated, None, Some(&user.id), "user created").await;
        Ok(user)
    }

    pub async fn list_users(&self) -> Result<Vec<User>, OAuthError> {
        Ok(self.durable.list_users().await?)
    }

    /// Disabling a user revokes every token and sign-in the user holds, on every node
    /// (DESIGN.md rule 9); enabling revokes nothing and revives nothing.
    pub async fn set_user_disabled(&self, username: &str, disabled: bool) -> Result<User, OAuthError> {
        let username = normalize_username(username)?;
        let user = self.durable.set_user_disabled(&username, disabled).await?.ok_or_else(|| bad("no such user"))?;
        if disabled {
            self.revoke_user_tokens(&user).await?;
        }
        let what = if disabled { "user disabled" } else { "user enabled" };
        self.audit(AuditKind::UserDisabled, None, Some(&user.id), what).await;
        Ok(user)
    }

    /// A new password revokes every token and sign-in the user holds, on every node.
    pub async fn set_user_password(&self, username: &str, password: &Password) -> Result<User, OAuthError> {
        let username = normalize_username(username)?;
        let hash = hash_password(&self.passwords, password).await?;
        let user = self.durable.set_user_password(&username, &hash).await?.ok_or_else(|| bad("no such user"))?;
        self.revoke_user_tokens(&user).await?;
        self.audit(AuditKind::UserPasswordSet, None, Some(&user.id), "password replaced").await;
        Ok(user)
    }

    /// A cut-off for tokens issued up to and including this second: one second ahead, since
    /// tokens carry whole seconds (a token issued later in this second gets `iat` = the
    /// cut-off, see `Revocations::issue_time`).
    fn cut_off(&self) -> i64 {
        self.now() + 1
    }

    /// Records the user's cut-off. Called after the change it stands for is stored, so that
    /// nothing the old password (or the enabled account) obtains can be dated after it; if it
    /// fails the administrator sees the error and repeats the change.
    async fn revoke_user_tokens(&self, user: &User) -> Result<(), OAuthError> {
        self.record_revocations(vec![Revocation::User { id: user.id.clone(), before: self.cut_off() }]).await
    }

    /// Makes a new signing key active; the old ones keep verifying until their tokens expire.
    pub async fn rotate_signing_key(&self) -> Result<String, OAuthError> {
        let now = self.now();
        let kid = crate::keys::rotate(self.durable.as_ref(), self.cfg.signing_alg, self.keys.kek(), now).await?;
        self.refresh_keys().await?;
        self.audit(AuditKind::SigningKeyRotated, None, None, &format!("new signing key {kid}")).await;
        Ok(kid)
    }
}

/// Hashes a new password on the same bounded pool as every check, so admin traffic cannot
/// bypass the memory bound either.
async fn hash_password(pool: &PasswordPool, password: &Password) -> Result<String, OAuthError> {
    if password.expose().len() < 8 || password.expose().len() > 1024 {
        return Err(bad("passwords must be 8 to 1024 characters"));
    }
    Ok(pool.hash(password.expose()).await?)
}
