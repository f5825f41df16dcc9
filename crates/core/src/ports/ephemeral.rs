use super::Revocation;
use crate::error::StoreResult;
use async_trait::async_trait;
use futures::stream::BoxStream;
use serde::{Deserialize, Serialize};
use tessera_crypto::Digest;

/// What an authorization code stands for. Stored as JSON under the code's digest.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CodeGrant {
    pub client_id: String,
    pub redirect_uri: String,
    pub scope: String,
    pub user_id: String,
    pub auth_time: i64,
    pub nonce: Option<String>,
    pub code_challenge: Option<String>,
    /// "S256" or "plain".
    pub code_challenge_method: Option<String>,
    /// Unix seconds; a code is dead at or after this instant whatever its TTL says.
    pub expires_at: i64,
}

// With PKCE `plain` the challenge *is* the verifier (RFC 7636 §4.2): not for Debug output.
impl std::fmt::Debug for CodeGrant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CodeGrant")
            .field("client_id", &self.client_id)
            .field("redirect_uri", &self.redirect_uri)
            .field("scope", &self.scope)
            .field("user_id", &self.user_id)
            .field("code_challenge_method", &self.code_challenge_method)
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
}

/// What the first use of a code issued (or is about to issue), kept in its tombstone so a
/// replay can revoke it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Issued {
    pub access_jti: String,
    pub access_exp: i64,
    pub family_id: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CodeTake {
    /// First use: here is the grant; a tombstone holding `issued` now stands in its place.
    Fresh(CodeGrant),
    /// The code was used before; the tombstone is now marked replayed.
    Replayed(Issued),
    /// No such code, or it has expired.
    Unknown,
}

/// What a device authorization stands for.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceGrant {
    pub client_id: String,
    pub scope: String,
    /// Canonical `XXXX-XXXX`.
    pub user_code: String,
    /// Unix seconds.
    pub expires_at: i64,
    /// Seconds between polls; raised by 5 at every `slow_down` (RFC 8628 §3.5).
    pub interval: i64,
}

// The user code is what a person types to approve the device: not for Debug output.
impl std::fmt::Debug for DeviceGrant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceGrant")
            .field("client_id", &self.client_id)
            .field("scope", &self.scope)
            .field("expires_at", &self.expires_at)
            .field("interval", &self.interval)
            .finish_non_exhaustive()
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum DeviceStatus {
    Pending,
    Approved {
        user_id: String,
        auth_time: i64,
    },
    Denied,
    /// The approved grant was handed out by a poll; nothing more will be.
    Consumed,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DeviceDecision {
    Approve { user_id: String, auth_time: i64 },
    Deny,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DecideOutcome {
    Decided,
    /// Unknown or expired user code.
    NotFound,
    /// Approved or denied before.
    AlreadyDecided,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DevicePoll {
    /// The user has not decided yet.
    Pending,
    /// Polled sooner than `interval` after the previous poll; the interval is now the one given.
    SlowDown {
        interval: i64,
    },
    /// Approved; returned to exactly one poll, after which the state is `Consumed`.
    Approved {
        grant: DeviceGrant,
        user_id: String,
        auth_time: i64,
    },
    Denied,
    /// The device code is past `expires_at`.
    Expired,
    /// Approved before and already handed out.
    Consumed,
    Unknown,
}

/// A browser login session held for the pages.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoginSession {
    pub user_id: String,
    pub username: String,
    pub auth_time: i64,
    pub expires_at: i64,
}

/// How a throttle answers repeated attempts under one key (a source address, an account):
/// `free` attempts pass without waiting; the `free`-th and every later one makes the next
/// wait a delay that starts at `base_delay_ms` and doubles up to `max_delay_ms`; after
/// `stop_after` counted attempts (0: never) everything is refused until the key is forgotten.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ThrottlePolicy {
    pub free: u32,
    pub base_delay_ms: i64,
    pub max_delay_ms: i64,
    pub stop_after: u32,
    /// Quiet time after the last counted attempt after which the key starts afresh.
    pub forget_after_ms: i64,
}

impl ThrottlePolicy {
    /// The wait the `count`-th counted attempt imposes on the next one.
    pub fn delay_after(&self, count: u32) -> i64 {
        if count < self.free {
            return 0;
        }
        let doublings = (count - self.free).min(40);
        self.base_delay_ms.saturating_mul(1_i64 << doublings).min(self.max_delay_ms)
    }
}

/// What [`Ephemeral::throttle`] does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ThrottleOp {
    /// Decide, and count the attempt when it is let through (before anything is checked).
    Take,
    /// Decide only; `Allowed` carries the count so far.
    Peek,
    /// Count a failure seen after the fact, whatever the state (the delay it imposes never
    /// shortens one already running); always `Allowed` with the new count.
    Record,
}

/// What [`Ephemeral::throttle`] decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Throttled {
    /// Let through and counted: this was attempt number `count`.
    Allowed { count: u32 },
    /// Too soon after the previous attempt; try again in `retry_after_ms`.
    Wait { retry_after_ms: i64 },
    /// Past `stop_after`: refused until the key is forgotten, in `retry_after_ms`.
    Stopped { retry_after_ms: i64 },
}

/// Authorization codes (RFC 6749 §4.1): stored once, taken once.
#[async_trait]
pub trait CodeStore: Send + Sync {
    /// Stores a fresh code under its digest until `grant.expires_at`.
    async fn put_code(&self, code: Digest, grant: &CodeGrant) -> StoreResult<()>;
    /// Reads a live code without using it, so a request that fails validation (another
    /// client, another redirect URI, a wrong PKCE verifier) changes nothing. `None` if the
    /// code is unknown, expired or already used.
    async fn peek_code(&self, code: Digest, now: i64) -> StoreResult<Option<CodeGrant>>;
    /// Takes a code, atomically. The first call for a live code returns `Fresh` and leaves a
    /// tombstone with `issued` that lives `tombstone_ttl` seconds; every later call returns
    /// `Replayed` with what the tombstone holds and marks it replayed. Of many concurrent
    /// calls exactly one gets `Fresh`. An expired code gives `Unknown`.
    async fn take_code(&self, code: Digest, now: i64, issued: &Issued, tombstone_ttl: i64) -> StoreResult<CodeTake>;
    /// Whether the code's tombstone was marked replayed (checked by the first use after it
    /// has stored its tokens, so a replay that raced it still revokes them).
    async fn code_replayed(&self, code: Digest) -> StoreResult<bool>;
}

/// Device authorizations (RFC 8628): started, decided by a person, polled by the device.
#[async_trait]
pub trait DeviceStore: Send + Sync {
    /// Stores a device authorization under the device code's digest and indexes it by its
    /// user code, until `grant.expires_at` (plus a grace so `Expired` can be told from
    /// `Unknown`). `StoreError::Conflict` if the user code is already in use.
    async fn put_device(&self, device: Digest, grant: &DeviceGrant) -> StoreResult<()>;
    /// The live device authorization a user code names, with its status; `None` if unknown
    /// or expired.
    async fn lookup_user_code(&self, user_code: &str, now: i64) -> StoreResult<Option<(DeviceGrant, DeviceStatus)>>;
    /// Records the user's decision, once.
    async fn decide_device(&self, user_code: &str, decision: &DeviceDecision, now: i64) -> StoreResult<DecideOutcome>;
    /// One poll by the device, atomically: checks expiry, the polling interval (a `Pending`
    /// authorization polled less than `interval` seconds after the previous poll gets
    /// `SlowDown` and its interval raised by 5), and hands an approval out once.
    async fn poll_device(&self, device: Digest, now_ms: i64) -> StoreResult<DevicePoll>;
}

/// Login sessions of the browser pages.
#[async_trait]
pub trait SessionStore: Send + Sync {
    /// Stores a login session under its handle's digest until `session.expires_at`.
    async fn put_session(&self, handle: Digest, session: &LoginSession) -> StoreResult<()>;
    /// The live session, `None` if unknown or expired.
    async fn get_session(&self, handle: Digest, now: i64) -> StoreResult<Option<LoginSession>>;
    async fn delete_session(&self, handle: Digest) -> StoreResult<()>;
}

/// The counters behind the throttles of [`crate::throttle`].
#[async_trait]
pub trait Throttles: Send + Sync {
    /// One step of the throttle `key`, atomically (see [`ThrottleOp`]): with `Take`, no burst,
    /// however concurrent, gets more attempts through than `policy` allows. The count is
    /// forgotten `policy.forget_after_ms` after the last counted attempt.
    async fn throttle(&self, key: &str, policy: &ThrottlePolicy, op: ThrottleOp, now_ms: i64)
        -> StoreResult<Throttled>;
    /// Takes back what a successful attempt counted: the whole count when `entirely` (the key
    /// starts afresh), otherwise one attempt; a key left at zero is forgotten, so attempts
    /// taken back cost no memory. Unknown keys are not an error.
    async fn forgive(&self, key: &str, entirely: bool) -> StoreResult<()>;
}

/// The revocation fan-out between nodes.
#[async_trait]
pub trait RevocationFanout: Send + Sync {
    /// Announces a revocation to every node's subscription. Not a record: the durable
    /// [`RevocationLog`](super::RevocationLog) is, and every node drains it, so an announcement
    /// lost here (the store down, a node disconnected) is repaired without it.
    async fn publish_revocation(&self, revocation: &Revocation) -> StoreResult<()>;
    /// Revocations announced by any node from now on, in the order they were announced. The
    /// stream ends when the connection is lost (or a subscriber falls too far behind); the
    /// caller reads the durable log and subscribes again.
    async fn subscribe_revocations(&self) -> StoreResult<BoxStream<'static, Revocation>>;
}

/// Short-lived state: every ephemeral port in one object, as one adapter provides them, split
/// by purpose so that each flow is handed only what it uses (codes, device authorizations,
/// login sessions, throttles, the revocation fan-out). Every mutation is one atomic operation
/// (a single command or Lua script on Redis, one critical section in memory). Expiry is checked
/// against the `now` passed in on every read, not left to TTL purges; TTLs only reclaim space.
#[async_trait]
pub trait Ephemeral: CodeStore + DeviceStore + SessionStore + Throttles + RevocationFanout {
    /// A cheap round trip, for readiness.
    async fn ping(&self) -> StoreResult<()>;
}
