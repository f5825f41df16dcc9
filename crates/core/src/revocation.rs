//! Revocation that cannot be lost (DESIGN.md rule 9). A revocation — one access token, a
//! refresh family's access tokens, or an "issued before T" cut-off for a user or a client — is
//! appended to the durable log first, applied on this node at once, then announced through
//! the ephemeral fan-out for the other nodes' sake. Every node also drains the durable log
//! every [`POLL_EVERY`], so an announcement lost while Redis was away, or made while a node
//! was disconnected, reaches it anyway, with no client action.
//!
//! Cut-offs need no enumeration of tokens: a token is dead when it was issued before its
//! user's or its client's cut-off, which introspection, UserInfo and refresh all check.

use crate::error::OAuthError;
use crate::ports::{AuditKind, LoggedRevocation, Revocation};
use crate::tokens::AccessClaims;
use crate::Tessera;
use std::collections::HashMap;
use std::sync::RwLock;
use std::time::Duration;

/// An access token's revocation is kept (in the log, on every node, and for watchers) this
/// long past the token's `exp`: resource servers may accept a token up to their leeway past it.
const GRACE: i64 = crate::watch::EXPIRY_GRACE;

/// How often every node reads the durable log for revocations it was not told about.
pub const POLL_EVERY: Duration = Duration::from_millis(500);
/// Entries read per query of the log.
const PAGE: u64 = 2_000;
/// The log's positions come from a sequence that is taken before commit, so an entry may
/// become visible after a later one. The cursor moves past an entry only once this node has
/// seen it for this long (on its own clock), so anything that committed out of order in the
/// meantime is read first; the newer entries are read again until then (applying twice
/// changes nothing).
const SETTLE_MS: i64 = 5_000;
/// Entries appended this long before (on the appending node's clock) settle at once: nothing
/// that old is still in flight, so a node that starts does not re-read the whole log.
const OLD_SECS: i64 = 60;
/// How often expired entries are deleted from the log.
const PURGE_EVERY_POLLS: u32 = 120;

/// What this node knows is revoked: bounded by the live revoked access tokens plus one
/// cut-off per user or client an administrator changed.
#[derive(Default)]
pub struct Revocations {
    state: RwLock<State>,
}

#[derive(Default)]
struct State {
    access: HashMap<String, i64>,
    users: HashMap<String, i64>,
    clients: HashMap<String, i64>,
}

impl Revocations {
    /// Records `r`; `true` if it was news.
    pub fn apply(&self, r: &Revocation, now: i64) -> bool {
        self.apply_then(r, now, || {})
    }

    /// Records `r` and, if it was news, runs `announce` before anyone else can see the change:
    /// whoever applies the same revocation next finds it not news only once `announce` ran.
    pub(crate) fn apply_then(&self, r: &Revocation, now: i64, announce: impl FnOnce()) -> bool {
        let Ok(mut st) = self.state.write() else { return false };
        let later = |map: &mut HashMap<String, i64>, id: &str, before: i64| match map.get_mut(id) {
            Some(v) if *v >= before => false,
            Some(v) => {
                *v = before;
                true
            }
            None => {
                map.insert(id.to_owned(), before);
                true
            }
        };
        let news = match r {
            Revocation::Access { exp, .. } if *exp + GRACE <= now => false,
            Revocation::Access { jti, exp } => st.access.insert(jti.clone(), *exp).is_none(),
            Revocation::User { id, before } => later(&mut st.users, id, *before),
            Revocation::Client { id, before } => later(&mut st.clients, id, *before),
        };
        if news {
            announce();
        }
        news
    }

    /// Whether a verified access token was revoked, by id or by a cut-off. Fails closed.
    /// A user's token is judged by when the user signed in (`auth_time`), which refreshes
    /// carry on, so a chain that began before a cut-off cannot outlive it by being refreshed
    /// on a node that had not heard of it yet.
    pub fn revokes_access(&self, claims: &AccessClaims) -> bool {
        let Ok(st) = self.state.read() else { return true };
        let origin = claims.auth_time.unwrap_or(claims.iat).min(claims.iat);
        st.access.contains_key(&claims.jti)
            || claims.username.is_some() && st.users.get(&claims.sub).is_some_and(|b| origin < *b)
            || st.clients.get(&claims.client_id).is_some_and(|b| origin < *b)
    }

    /// Whether a grant that began at `origin` (a sign-in's `auth_time`, or a refresh family's
    /// first issue) for this user and client falls under a cut-off. Fails closed. Refresh
    /// tokens, login sessions, codes and device approvals are all judged by it.
    pub fn revokes_grant(&self, user_id: Option<&str>, client_id: Option<&str>, origin: i64) -> bool {
        let Ok(st) = self.state.read() else { return true };
        user_id.and_then(|u| st.users.get(u)).is_some_and(|b| origin < *b)
            || client_id.and_then(|c| st.clients.get(c)).is_some_and(|b| origin < *b)
    }

    /// The `iat` (or `auth_time`) of a token or sign-in made now: never before a cut-off of
    /// its user or client, so one made in the same second as (and after) a cut-off is not
    /// caught by it. A cut-off is at most one second ahead of its clock; a deleted client's is
    /// ignored here (such a client cannot authenticate).
    pub fn issue_time(&self, user_id: Option<&str>, client_id: Option<&str>, now: i64) -> i64 {
        let Ok(st) = self.state.read() else { return now };
        let user = user_id.and_then(|u| st.users.get(u)).copied().unwrap_or(now);
        let client =
            client_id.and_then(|c| st.clients.get(c)).copied().filter(|b| *b != Revocation::FOREVER).unwrap_or(now);
        now.max(user).max(client).min(now + 1)
    }

    /// Forgets access-token revocations whose tokens have expired.
    pub fn purge(&self, now: i64) {
        if let Ok(mut st) = self.state.write() {
            st.access.retain(|_, exp| *exp + GRACE > now);
        }
    }
}

/// How far this node has read the durable log.
#[derive(Debug, Default)]
pub(crate) struct LogCursor {
    /// Every entry up to here is applied and settled.
    through: i64,
    /// Entries above `through` already applied, with when this node first saw them (ms).
    unsettled: std::collections::BTreeMap<i64, i64>,
    polls: u32,
}

impl LogCursor {
    /// Notes an entry read at `now_ms`; `old` entries settle at once.
    fn saw(&mut self, seq: i64, old: bool, now_ms: i64) {
        if seq > self.through {
            let first = self.unsettled.entry(seq).or_insert(now_ms);
            if old {
                *first = i64::MIN;
            }
        }
    }

    /// Moves `through` past every entry seen long enough ago, in order, stopping at the first
    /// that is not: an entry below it may still commit.
    fn settle(&mut self, now_ms: i64) {
        while let Some((&seq, &first)) = self.unsettled.first_key_value() {
            if now_ms.saturating_sub(first) < SETTLE_MS {
                break;
            }
            self.through = seq;
            self.unsettled.pop_first();
        }
    }
}

/// What a flow may do about what it, or an earlier use of the same credential, issued: revoke
/// it everywhere (durably first), record why, and repeat such a repair at most once a minute
/// ([`Revoking::first_this_minute`]). A flow holds this, not the core.
#[async_trait::async_trait]
pub(crate) trait Revoking: Send + Sync {
    async fn revoke_access(&self, jti: &str, exp: i64) -> Result<(), OAuthError>;
    async fn revoke_family(&self, family_id: &str) -> Result<(), OAuthError>;
    async fn audit(&self, kind: AuditKind, client_id: Option<&str>, user_id: Option<&str>, detail: &str);
    /// Whether `key` is asked for the first time this minute, for a repair worth doing at most
    /// once a minute.
    async fn first_this_minute(&self, key: &str) -> bool;
}

#[async_trait::async_trait]
impl Revoking for Tessera {
    async fn revoke_access(&self, jti: &str, exp: i64) -> Result<(), OAuthError> {
        Tessera::revoke_access(self, jti, exp).await
    }

    async fn revoke_family(&self, family_id: &str) -> Result<(), OAuthError> {
        Tessera::revoke_family(self, family_id).await
    }

    async fn audit(&self, kind: AuditKind, client_id: Option<&str>, user_id: Option<&str>, detail: &str) {
        Tessera::audit(self, kind, client_id, user_id, detail).await
    }

    async fn first_this_minute(&self, key: &str) -> bool {
        Tessera::first_this_minute(self, key).await
    }
}

impl Tessera {
    /// Revokes, durably first (DESIGN.md rule 9): appends to the durable log, applies on this
    /// node, then announces. An announcement that fails is logged and left to the other
    /// nodes' polls of the log: the revocation itself has happened.
    pub(crate) async fn record_revocations(&self, revocations: Vec<Revocation>) -> Result<(), OAuthError> {
        let now = self.now();
        // Kept a minute past an access token's `exp`: resource servers may accept it that long.
        let live: Vec<Revocation> = revocations.into_iter().filter(|r| r.relevant_until() > now - GRACE).collect();
        if live.is_empty() {
            return Ok(());
        }
        self.durable.append_revocations(&live, now).await?;
        for r in &live {
            self.apply_revocation(r, now);
        }
        self.announce(&live).await;
        Ok(())
    }

    /// Sends revocations already in the durable log to the fan-out again.
    pub(crate) async fn announce(&self, revocations: &[Revocation]) {
        for r in revocations {
            if let Err(e) = self.ephemeral.publish_revocation(r).await {
                tracing::warn!(error = %e, "a revocation could not be announced; other nodes read it from the durable log");
                return;
            }
        }
    }

    fn apply_revocation(&self, r: &Revocation, now: i64) {
        self.revocations.apply_then(r, now, || {
            // Nobody watching is not an error.
            let _ = self.live.send(crate::watch::Watched { revocation: r.clone(), cursor: self.settled_position() });
        });
        // A changed or deleted client must not be trusted from any node's cache.
        if let Revocation::Client { id, .. } = r {
            self.clients.forget(id);
        }
    }

    /// Revokes one access token everywhere.
    pub(crate) async fn revoke_access(&self, jti: &str, exp: i64) -> Result<(), OAuthError> {
        self.record_revocations(vec![Revocation::Access { jti: jti.to_owned(), exp }]).await
    }

    /// Revokes a refresh-token family and every access token it issued that is still alive.
    /// Running it again for a revoked family repeats nothing in the store but announces the
    /// family's revocations again, so presenting a token of a revoked family repairs a
    /// fan-out that was lost.
    pub(crate) async fn revoke_family(&self, family_id: &str) -> Result<(), OAuthError> {
        let issued = self.durable.revoke_family(family_id).await?;
        let revocations = issued.into_iter().map(|(jti, exp)| Revocation::Access { jti, exp }).collect();
        self.record_revocations(revocations).await
    }

    /// Reads the durable log from the cursor on, applying every entry.
    pub(crate) async fn drain_revocation_log(&self) -> Result<(), OAuthError> {
        let mut cursor = self.log_cursor.lock().await;
        let (now, now_ms) = (self.now(), self.clock.now_ms());
        let mut from = cursor.through;
        loop {
            let page = self.durable.revocations_after(from, now - GRACE, PAGE).await?;
            let full = page.len() as u64 == PAGE;
            for LoggedRevocation { seq, at, revocation } in page {
                self.apply_revocation(&revocation, now);
                cursor.saw(seq, at <= now - OLD_SECS, now_ms);
                from = from.max(seq);
            }
            if !full {
                break;
            }
        }
        cursor.settle(now_ms);
        self.log_settled.fetch_max(cursor.through, std::sync::atomic::Ordering::AcqRel);
        // On this node's own clock, not the service clock: how fresh its view is.
        self.last_drain.store(crate::watch::monotonic_ms(), std::sync::atomic::Ordering::Release);
        cursor.polls = cursor.polls.wrapping_add(1);
        let purge_due = cursor.polls % PURGE_EVERY_POLLS == 0;
        // The purge runs after the cursor is released: a slow delete must not hold up the
        // next drain (nor make this node look stale to its watchers).
        drop(cursor);
        if purge_due {
            self.revocations.purge(now);
            if let Err(e) = self.durable.purge_revocations(now - GRACE).await {
                tracing::debug!(error = %e, "cannot purge the revocation log");
            }
        }
        Ok(())
    }

    /// Keeps this node's revocations in step with every other node's, forever: drains the
    /// durable log every [`POLL_EVERY`] (the repair), and follows the fan-out in between (the
    /// fast path), resubscribing whenever it is lost.
    pub async fn run_revocation_sync(self: std::sync::Arc<Self>) {
        futures::future::join(self.poll_log_forever(), self.follow_fan_out()).await;
    }

    async fn poll_log_forever(&self) {
        let mut failing = false;
        loop {
            match self.drain_revocation_log().await {
                Ok(()) if failing => {
                    tracing::info!("the revocation log is readable again");
                    failing = false;
                }
                Ok(()) => {}
                Err(e) if !failing => {
                    tracing::warn!(error = %e, "cannot read the revocation log; retrying");
                    failing = true;
                }
                Err(_) => {}
            }
            tokio::time::sleep(POLL_EVERY).await;
        }
    }

    async fn follow_fan_out(&self) {
        let mut backoff = Duration::from_millis(200);
        loop {
            match self.ephemeral.subscribe_revocations().await {
                Ok(mut stream) => {
                    backoff = Duration::from_millis(200);
                    // What was announced while unsubscribed is in the durable log.
                    if let Err(e) = self.drain_revocation_log().await {
                        tracing::debug!(error = %e, "cannot read the revocation log after subscribing");
                    }
                    use futures::StreamExt as _;
                    while let Some(r) = stream.next().await {
                        self.apply_revocation(&r, self.now());
                    }
                    tracing::warn!("revocation fan-out ended; resubscribing");
                }
                Err(e) => tracing::debug!(error = %e, "cannot subscribe to revocations; retrying"),
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(sub: &str, client: &str, iat: i64, user: bool) -> AccessClaims {
        AccessClaims {
            iss: "i".into(),
            sub: sub.into(),
            aud: "a".into(),
            exp: iat + 3600,
            iat,
            nbf: iat,
            jti: format!("jti-{sub}-{iat}"),
            client_id: client.into(),
            scope: String::new(),
            auth_time: None,
            username: user.then(|| "name".to_owned()),
        }
    }

    #[test]
    fn cut_offs_revoke_what_was_issued_before_them_and_nothing_after() {
        let r = Revocations::default();
        assert!(r.apply(&Revocation::User { id: "u1".into(), before: 101 }, 100));
        assert!(!r.apply(&Revocation::User { id: "u1".into(), before: 90 }, 100), "an older cut-off is no news");
        assert!(r.revokes_access(&claims("u1", "c", 100, true)));
        assert!(!r.revokes_access(&claims("u1", "c", 101, true)));
        assert!(!r.revokes_access(&claims("u1", "c", 100, false)), "a client's own token named like a user");
        let refreshed = AccessClaims { auth_time: Some(90), ..claims("u1", "c", 200, true) };
        assert!(r.revokes_access(&refreshed), "refreshed after the cut-off, but from a sign-in before it");
        assert_eq!(r.issue_time(Some("u1"), Some("c"), 100), 101, "issued after the cut-off, in its second");
        assert!(r.revokes_grant(Some("u1"), Some("c"), 100));
        assert!(!r.revokes_grant(Some("u2"), Some("c"), 100));

        r.apply(&Revocation::Client { id: "c".into(), before: Revocation::FOREVER }, 100);
        assert!(r.revokes_access(&claims("u2", "c", 5_000, true)), "a deleted client's tokens are all dead");
        assert!(r.revokes_grant(None, Some("c"), 5_000));
        assert_eq!(r.issue_time(None, Some("c"), 100), 100);
    }

    #[test]
    fn the_cursor_passes_an_entry_only_once_it_was_seen_long_enough_and_in_order() {
        let mut c = LogCursor::default();
        c.saw(2, false, 1_000);
        c.saw(3, false, 1_000);
        c.settle(1_000 + SETTLE_MS - 1);
        assert_eq!(c.through, 0, "not yet: seq 1 may still commit");
        // Seq 1 commits late and is seen now; the others have waited long enough but are
        // behind it, so the cursor stops below it.
        c.saw(1, false, 1_000 + SETTLE_MS);
        c.settle(1_000 + SETTLE_MS);
        assert_eq!(c.through, 0);
        c.settle(1_000 + 2 * SETTLE_MS);
        assert_eq!(c.through, 3);
        assert!(c.unsettled.is_empty());
        c.saw(2, false, 99_999);
        assert!(c.unsettled.is_empty(), "what the cursor passed is not noted again");
        c.saw(9, true, 50_000);
        c.settle(50_000);
        assert_eq!(c.through, 9, "an old entry settles at once");
    }

    #[test]
    fn access_revocations_are_forgotten_when_their_tokens_expire() {
        let r = Revocations::default();
        let c = claims("s", "c", 100, false);
        assert!(!r.apply(&Revocation::Access { jti: c.jti.clone(), exp: 100 - GRACE }, 100), "long expired");
        r.apply(&Revocation::Access { jti: c.jti.clone(), exp: c.exp }, 100);
        assert!(r.revokes_access(&c));
        r.purge(c.exp);
        assert!(r.revokes_access(&c), "kept through the grace after exp");
        r.purge(c.exp + GRACE);
        assert!(!r.revokes_access(&c), "forgotten once the token expired and the grace passed");
    }
}
