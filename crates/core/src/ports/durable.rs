use crate::error::StoreResult;
use crate::model::{Client, User};
use async_trait::async_trait;
use tessera_crypto::Digest;

/// Registered clients.
#[async_trait]
pub trait ClientStore: Send + Sync {
    /// Inserts a client. `StoreError::Conflict` if its id is taken.
    async fn create_client(&self, client: &Client) -> StoreResult<()>;
    async fn get_client(&self, id: &str) -> StoreResult<Option<Client>>;
    /// All clients, ordered by id.
    async fn list_clients(&self) -> StoreResult<Vec<Client>>;
    /// Deletes a client; `false` if there was none.
    async fn delete_client(&self, id: &str) -> StoreResult<bool>;
    /// Replaces the secret digest; `false` if there is no such client. The old secret stops
    /// working at once.
    async fn set_client_secret(&self, id: &str, digest: Digest) -> StoreResult<bool>;
    /// Allows or forbids watching revocations; `false` if there is no such client.
    async fn set_client_watch_revocations(&self, id: &str, allowed: bool) -> StoreResult<bool>;
}

/// Users (resource owners).
#[async_trait]
pub trait UserStore: Send + Sync {
    /// Inserts a user. `StoreError::Conflict` if the username is taken (usernames compare
    /// exactly; the core lower-cases them before they get here).
    async fn create_user(&self, user: &User) -> StoreResult<()>;
    async fn find_user_by_username(&self, username: &str) -> StoreResult<Option<User>>;
    async fn get_user(&self, id: &str) -> StoreResult<Option<User>>;
    /// All users, ordered by username.
    async fn list_users(&self) -> StoreResult<Vec<User>>;
    /// Sets the disabled flag; returns the updated user, `None` if unknown.
    async fn set_user_disabled(&self, username: &str, disabled: bool) -> StoreResult<Option<User>>;
    /// Replaces the Argon2id hash; returns the updated user, `None` if unknown.
    async fn set_user_password(&self, username: &str, password_hash: &str) -> StoreResult<Option<User>>;
}

/// The state of one refresh token in its family.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RefreshState {
    /// May be used once.
    Active,
    /// Was used and replaced; presenting it again is reuse.
    Rotated,
    /// Its family was revoked.
    Revoked,
}

impl RefreshState {
    pub const fn as_str(self) -> &'static str {
        match self {
            RefreshState::Active => "active",
            RefreshState::Rotated => "rotated",
            RefreshState::Revoked => "revoked",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "active" => Some(RefreshState::Active),
            "rotated" => Some(RefreshState::Rotated),
            "revoked" => Some(RefreshState::Revoked),
            _ => None,
        }
    }
}

/// One refresh token, stored by digest. Every rotation adds a row to the same family.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RefreshRecord {
    pub digest: Digest,
    pub family_id: String,
    pub client_id: String,
    /// `None` for tokens issued without a user (never, today: client_credentials issues none).
    pub user_id: Option<String>,
    /// Space-separated, canonical order.
    pub scope: String,
    pub issued_at: i64,
    pub expires_at: i64,
    /// When the user authenticated (OIDC `auth_time`), carried through rotations.
    pub auth_time: Option<i64>,
    /// The access token issued together with this refresh token, so a family revocation
    /// can revoke it too.
    pub access_jti: String,
    pub access_exp: i64,
    pub state: RefreshState,
    /// Set when the token is rotated (by [`RefreshStore::rotate_refresh`]); `None` while it is
    /// active, and for tokens rotated before successions were recorded.
    pub succession: Option<Succession>,
}

/// What a rotation records on the old token, so a retry of the same refresh can be answered
/// with the same successor: the successor is `tessera_crypto::succession::successor_token(old
/// token, salt)`, which needs the raw old token that only the client holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Succession {
    /// When the old token was rotated, in seconds since the epoch.
    pub at: i64,
    /// The salt its successor was derived from (redacted in `Debug`).
    pub salt: tessera_crypto::succession::SuccessorSalt,
}

/// What [`RefreshStore::rotate_refresh`] found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Rotation {
    /// The old token was active; it is now `Rotated` and the new one is stored `Active`.
    Rotated,
    /// The old token had already been rotated: reuse. Nothing was stored; the caller
    /// revokes the family.
    Reused { family_id: String },
    /// No such token, or its family is revoked. Nothing was stored.
    Unknown,
}

/// What a rotation stores for the successor beyond what it copies from the token it
/// replaces (family, client, user, scope and `auth_time`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Successor {
    pub digest: Digest,
    pub issued_at: i64,
    pub expires_at: i64,
    pub access_jti: String,
    pub access_exp: i64,
}

/// Refresh-token families with rotation and reuse detection.
#[async_trait]
pub trait RefreshStore: Send + Sync {
    /// Starts a family for the user `record.user_id` names, after a sign-in (a code exchange,
    /// a device approval, a password): stores its first token only while that user exists
    /// and is not disabled, and returns the user as stored, in the same step. `None` (and
    /// nothing stored) when the user is gone, disabled, or not named.
    async fn start_family(&self, record: &RefreshRecord) -> StoreResult<Option<User>>;
    /// Reads a token in any state.
    async fn get_refresh(&self, digest: Digest) -> StoreResult<Option<RefreshRecord>>;
    /// Reads a token in any state together with the user it stands for (`None` when it has
    /// no user or its user is gone): what a refresh needs, in one round trip.
    async fn get_refresh_and_user(&self, digest: Digest) -> StoreResult<Option<(RefreshRecord, Option<User>)>>;
    /// Atomically: if `old` is `Active`, marks it `Rotated`, records `succession` on it (read
    /// back by `get_refresh`) and stores `new` (same family, `Active`), returning `Rotated`;
    /// exactly one of many concurrent calls for the same `old` can succeed (one conditional
    /// `UPDATE … WHERE state = 'active'`), and the succession recorded is that call's. If `old`
    /// is `Rotated`, returns `Reused` and changes nothing (its succession stays the first
    /// one's). Otherwise `Unknown`.
    async fn rotate_refresh(&self, old: Digest, succession: &Succession, new: &RefreshRecord) -> StoreResult<Rotation>;
    /// The common refresh, in one step where the backend allows: if `old` is `Active`, was
    /// issued to `client_id`, expires after `succession.at` and its user (if it has one)
    /// exists and is not disabled, rotates it as [`RefreshStore::rotate_refresh`] does, with
    /// a successor that copies its family, client, user, scope and `auth_time`, and returns
    /// the token as it was before (with its user). Otherwise changes nothing and returns
    /// `None`: the caller reads the token and decides (reuse, a retry, another client's).
    async fn rotate_live_refresh(
        &self,
        old: Digest,
        client_id: &str,
        succession: &Succession,
        successor: &Successor,
    ) -> StoreResult<Option<(RefreshRecord, Option<User>)>>;
    /// Marks every token of the family `Revoked` and returns the `(access_jti, access_exp)`
    /// of every row, so the caller can revoke the access tokens that are still live.
    /// Revoking a revoked or unknown family is not an error.
    async fn revoke_family(&self, family_id: &str) -> StoreResult<Vec<(String, i64)>>;
}

/// Scopes a user has granted a client on the consent page.
#[async_trait]
pub trait ConsentStore: Send + Sync {
    /// The scopes granted so far (empty if none).
    async fn granted_scopes(&self, user_id: &str, client_id: &str) -> StoreResult<Vec<String>>;
    /// Adds `scopes` to what was granted (a union; never narrows).
    async fn grant_scopes(&self, user_id: &str, client_id: &str, scopes: &[String]) -> StoreResult<()>;
}

/// A signing key at rest.
#[derive(Clone, PartialEq, Eq)]
pub struct StoredKey {
    pub kid: String,
    /// "ES256" or "EdDSA".
    pub alg: String,
    /// The private key as PKCS#8 (encrypted by the caller when a key-encryption key is set).
    pub private_der: Vec<u8>,
    pub created_at: i64,
    /// When the key stopped signing; `None` for the active key.
    pub retired_at: Option<i64>,
}

impl std::fmt::Debug for StoredKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoredKey").field("kid", &self.kid).field("alg", &self.alg).finish_non_exhaustive()
    }
}

/// Signing keys, kept so tokens stay valid across restarts.
#[async_trait]
pub trait KeyStore: Send + Sync {
    /// All keys, oldest first (by `created_at`, then `kid`).
    async fn list_keys(&self) -> StoreResult<Vec<StoredKey>>;
    /// Inserts a key. `StoreError::Conflict` if the kid exists.
    async fn insert_key(&self, key: &StoredKey) -> StoreResult<()>;
    /// Sets `retired_at` on every key not yet retired except `keep_kid`.
    async fn retire_keys_except(&self, keep_kid: &str, at: i64) -> StoreResult<()>;
}

/// What a security event is about. Stored, logged and counted as [`AuditKind::as_str`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AuditKind {
    /// A rotated refresh token presented again: its family is revoked.
    RefreshReuse,
    /// A rotated refresh token presented again within the retry window: its successor again.
    RefreshRetry,
    /// An authorization code used twice: what its first use issued is revoked.
    CodeReplay,
    /// Repeated password failures: attempts on an account are now delayed.
    Lockout,
    /// An admin call without a valid credential (logged and counted, not stored).
    AdminDenied,
    ClientCreated,
    ClientDeleted,
    ClientSecretRotated,
    /// What a client may do besides its grants changed (the detail says what).
    ClientPermissionsChanged,
    UserCreated,
    /// A user disabled or enabled again (the detail says which).
    UserDisabled,
    UserPasswordSet,
    SigningKeyRotated,
}

impl AuditKind {
    pub const ALL: [AuditKind; 13] = [
        AuditKind::RefreshReuse,
        AuditKind::RefreshRetry,
        AuditKind::CodeReplay,
        AuditKind::Lockout,
        AuditKind::AdminDenied,
        AuditKind::ClientCreated,
        AuditKind::ClientDeleted,
        AuditKind::ClientSecretRotated,
        AuditKind::ClientPermissionsChanged,
        AuditKind::UserCreated,
        AuditKind::UserDisabled,
        AuditKind::UserPasswordSet,
        AuditKind::SigningKeyRotated,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            AuditKind::RefreshReuse => "refresh_reuse",
            AuditKind::RefreshRetry => "refresh_retry",
            AuditKind::CodeReplay => "code_replay",
            AuditKind::Lockout => "lockout",
            AuditKind::AdminDenied => "admin_denied",
            AuditKind::ClientCreated => "client_created",
            AuditKind::ClientDeleted => "client_deleted",
            AuditKind::ClientSecretRotated => "client_secret_rotated",
            AuditKind::ClientPermissionsChanged => "client_permissions_changed",
            AuditKind::UserCreated => "user_created",
            AuditKind::UserDisabled => "user_disabled",
            AuditKind::UserPasswordSet => "user_password_set",
            AuditKind::SigningKeyRotated => "signing_key_rotated",
        }
    }

    pub fn parse(s: &str) -> Option<AuditKind> {
        AuditKind::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

/// A security event: code replay, family revocation, lockout, admin change.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuditEvent {
    pub at: i64,
    pub kind: AuditKind,
    pub client_id: Option<String>,
    pub user_id: Option<String>,
    /// Free text; never a secret.
    pub detail: String,
}

#[async_trait]
pub trait AuditLog: Send + Sync {
    async fn record_event(&self, event: &AuditEvent) -> StoreResult<()>;
    /// The newest `limit` events, newest first.
    async fn recent_events(&self, limit: u64) -> StoreResult<Vec<AuditEvent>>;
}

/// Every durable port in one object, as one adapter provides them.
#[async_trait]
pub trait Durable:
    ClientStore + UserStore + RefreshStore + ConsentStore + KeyStore + AuditLog + super::RevocationLog
{
    /// A cheap round trip, for readiness.
    async fn ping(&self) -> StoreResult<()>;
}

#[cfg(test)]
mod tests {
    use super::AuditKind;

    #[test]
    fn every_audit_kind_parses_back_from_its_string_and_names_are_distinct() {
        for kind in AuditKind::ALL {
            assert_eq!(AuditKind::parse(kind.as_str()), Some(kind));
        }
        let names: std::collections::HashSet<_> = AuditKind::ALL.iter().map(|k| k.as_str()).collect();
        assert_eq!(names.len(), AuditKind::ALL.len());
        assert_eq!(AuditKind::parse("other"), None);
    }
}
