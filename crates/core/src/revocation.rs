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
use crate::ports::{LoggedRevocation, Revocation};
use crate::tokens::AccessClaims;
use crate::Tessera;
use std::collections::HashMap;
use std::sync::RwLock;
use std::time::Duration;

/// How often every node reads the durable log for revocations it was not told about.
pub const POLL_EVERY: Duration = Duration::from_millis(500);
/// Entries read per query of the log.
const PAGE: u64 = 2_000;
/// The log's positions come from a sequence that is taken before commit, so an entry may
/// become visible after a later one. The cursor only moves past entries this old, and the
/// newer ones are read again (applying twice changes nothing).
const SETTLE_SECS: i64 = 5;
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
        match r {
            Revocation::Access { exp, .. } if *exp <= now => false,
            Revocation::Access { jti, exp } => st.access.insert(jti.clone(), *exp).is_none(),
            Revocation::User { id, before } => later(&mut st.users, id, *before),
            Revocation::Client { id, before } => later(&mut st.clients, id, *before),
        }
    }

    /// Whether a verified access token was revoked, by id or by a cut-off. Fails closed.
    pub fn revokes_access(&self, claims: &AccessClaims) -> bool {
        let Ok(st) = self.state.read() else { return true };
        st.access.contains_key(&claims.jti)
            || claims.username.is_some() && st.users.get(&claims.sub).is_some_and(|b| claims.iat < *b)
            || st.clients.get(&claims.client_id).is_some_and(|b| claims.iat < *b)
    }

    /// Whether a refresh token issued at `issued_at` falls under a cut-off. Fails closed.
    pub fn revokes_refresh(&self, user_id: Option<&str>, client_id: &str, issued_at: i64) -> bool {
        let Ok(st) = self.state.read() else { return true };
        user_id.and_then(|u| st.users.get(u)).is_some_and(|b| issued_at < *b)
            || st.clients.get(client_id).is_some_and(|b| issued_at < *b)
    }

    /// The `iat` of a token issued now: never before a cut-off of its user or client, so a
    /// token issued in the same second as (and after) a cut-off is not caught by it. A cut-off
    /// is at most one second ahead of its clock; a deleted client's is ignored here (such a
    /// client cannot authenticate).
    pub fn issue_time(&self, user_id: Option<&str>, client_id: &str, now: i64) -> i64 {
        let Ok(st) = self.state.read() else { return now };
        let user = user_id.and_then(|u| st.users.get(u)).copied().unwrap_or(now);
        let client = st.clients.get(client_id).copied().filter(|b| *b != Revocation::FOREVER).unwrap_or(now);
        now.max(user).max(client).min(now + 1)
    }

    /// Forgets access-token revocations whose tokens have expired.
    pub fn purge(&self, now: i64) {
        if let Ok(mut st) = self.state.write() {
            st.access.retain(|_, exp| *exp > now);
        }
    }

    /// Revoked access tokens still alive, and cut-offs, this node holds.
    pub fn len(&self) -> usize {
        self.state.read().map(|st| st.access.len() + st.users.len() + st.clients.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// How far this node has read the durable log.
#[derive(Debug, Default)]
pub(crate) struct LogCursor {
    /// Every entry up to here is applied.
    through: i64,
    polls: u32,
}

impl Tessera {
    /// Revokes, durably first (DESIGN.md rule 9): appends to the durable log, applies on this
    /// node, then announces. An announcement that fails is logged and left to the other
    /// nodes' polls of the log: the revocation itself has happened.
    pub(crate) async fn record_revocations(&self, revocations: Vec<Revocation>) -> Result<(), OAuthError> {
        let now = self.now();
        let live: Vec<Revocation> = revocations.into_iter().filter(|r| r.relevant_until() > now).collect();
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
        self.revocations.apply(r, now);
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
        let now = self.now();
        loop {
            let page = self.durable.revocations_after(cursor.through, now, PAGE).await?;
            let full = page.len() as u64 == PAGE;
            for LoggedRevocation { seq, at, revocation } in page {
                self.apply_revocation(&revocation, now);
                // Only settled entries move the cursor; a page of unsettled ones is read again.
                if at <= now - SETTLE_SECS {
                    cursor.through = cursor.through.max(seq);
                }
            }
            if !full {
                break;
            }
        }
        cursor.polls = cursor.polls.wrapping_add(1);
        if cursor.polls % PURGE_EVERY_POLLS == 0 {
            self.revocations.purge(now);
            if let Err(e) = self.durable.purge_revocations(now).await {
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
        assert_eq!(r.issue_time(Some("u1"), "c", 100), 101, "issued after the cut-off, in its second");
        assert!(r.revokes_refresh(Some("u1"), "c", 100));
        assert!(!r.revokes_refresh(Some("u2"), "c", 100));

        r.apply(&Revocation::Client { id: "c".into(), before: Revocation::FOREVER }, 100);
        assert!(r.revokes_access(&claims("u2", "c", 5_000, true)), "a deleted client's tokens are all dead");
        assert!(r.revokes_refresh(None, "c", 5_000));
        assert_eq!(r.issue_time(None, "c", 100), 100);
    }

    #[test]
    fn access_revocations_are_forgotten_when_their_tokens_expire() {
        let r = Revocations::default();
        let c = claims("s", "c", 100, false);
        assert!(!r.apply(&Revocation::Access { jti: c.jti.clone(), exp: 100 }, 100), "already expired");
        r.apply(&Revocation::Access { jti: c.jti.clone(), exp: c.exp }, 100);
        assert!(r.revokes_access(&c));
        r.purge(c.exp);
        assert!(r.is_empty());
    }
}
