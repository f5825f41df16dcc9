//! Clients: how one authenticates (RFC 6749 §2.3), the cache of clients read from the durable
//! store, and each client's policy (the grants it may use, the scopes it may ask for).

use crate::error::OAuthError;
use crate::model::{Client, ClientSecret, GrantType, ScopeSet};
use crate::Tessera;
use std::sync::Arc;

/// How a client authenticated: HTTP Basic or body parameters both end up here.
#[derive(Clone, Debug)]
pub struct ClientAuth {
    pub client_id: String,
    /// `None` (or empty) for public clients.
    pub client_secret: Option<ClientSecret>,
}

impl ClientAuth {
    pub fn new(client_id: impl Into<String>, client_secret: impl Into<String>) -> Self {
        let secret: String = client_secret.into();
        Self {
            client_id: client_id.into(),
            client_secret: if secret.is_empty() { None } else { Some(ClientSecret::new(secret)) },
        }
    }
}

/// Clients read from the durable store, each trusted for `client_cache_ttl` seconds.
#[derive(Default)]
pub(crate) struct ClientCache {
    entries: std::sync::RwLock<std::collections::HashMap<String, (Arc<Client>, i64)>>,
}

impl ClientCache {
    const CAPACITY: usize = 10_000;

    fn get(&self, id: &str, now: i64) -> Option<Arc<Client>> {
        let entries = self.entries.read().ok()?;
        entries.get(id).filter(|(_, until)| *until > now).map(|(c, _)| Arc::clone(c))
    }

    fn put(&self, client: Arc<Client>, until: i64) {
        if let Ok(mut entries) = self.entries.write() {
            if entries.len() >= Self::CAPACITY {
                entries.clear();
            }
            entries.insert(client.id.clone(), (client, until));
        }
    }

    pub(crate) fn forget(&self, id: &str) {
        if let Ok(mut entries) = self.entries.write() {
            entries.remove(id);
        }
    }
}

impl Tessera {
    /// Authenticates a client (RFC 6749 §2.3). Confidential clients must present their
    /// secret, compared by digest in constant time; public clients must present none.
    pub async fn authenticate_client(&self, auth: &ClientAuth) -> Result<Arc<Client>, OAuthError> {
        let failed = || OAuthError::invalid_client("client authentication failed");
        // A request with no client at all may act as the configured default public client.
        let id = match (&auth.client_id, &auth.client_secret, &self.cfg.default_client_id) {
            (id, None, Some(default)) if id.is_empty() => default.as_str(),
            (id, _, _) => id.as_str(),
        };
        if id.is_empty() || id.len() > 255 {
            return Err(failed());
        }
        let client = self.client(id).await?.ok_or_else(failed)?;
        let authenticated = match (&client.secret_digest, &auth.client_secret) {
            (Some(stored), Some(presented)) if client.confidential => stored.ct_eq(&presented.digest()),
            (_, None) => !client.confidential,
            _ => false,
        };
        if authenticated {
            Ok(client)
        } else {
            Err(failed())
        }
    }

    /// A client by id, from the cache when it is fresh enough.
    pub(crate) async fn client(&self, id: &str) -> Result<Option<Arc<Client>>, OAuthError> {
        let now = self.now();
        if let Some(c) = self.clients.get(id, now) {
            return Ok(Some(c));
        }
        let Some(client) = self.durable.get_client(id).await? else {
            return Ok(None);
        };
        let client = Arc::new(client);
        if self.cfg.client_cache_ttl > 0 {
            self.clients.put(Arc::clone(&client), now + self.cfg.client_cache_ttl);
        }
        Ok(Some(client))
    }

    pub(crate) fn require_grant(&self, client: &Client, grant: GrantType) -> Result<(), OAuthError> {
        if client.allows_grant(grant) {
            Ok(())
        } else {
            Err(OAuthError::unauthorized_client(format!("this client may not use the {} grant", grant.as_str())))
        }
    }
}

/// RFC 6749 §3.3: an empty request means the client's allowed scopes; anything beyond them is
/// `invalid_scope`.
pub(crate) fn resolve_scope(client: &Client, requested: &str) -> Result<ScopeSet, OAuthError> {
    let requested = ScopeSet::parse(requested)?;
    let allowed = client.allowed_scopes();
    if requested.is_empty() {
        return Ok(allowed);
    }
    if !requested.is_subset(&allowed) {
        return Err(OAuthError::invalid_scope("the requested scope exceeds what this client may ask for"));
    }
    Ok(requested)
}
