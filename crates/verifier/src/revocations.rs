//! What the token service has revoked, as this verifier learnt it from the stream: revoked
//! access tokens until their `exp`, and per-user and per-client "issued before" cut-offs.
//! Judged exactly as the token service judges them: a user's token by when the user signed in
//! (`auth_time`, carried through refreshes), a client's by its `iat`.

use crate::Claims;
use std::collections::HashMap;
use std::sync::RwLock;

#[derive(Debug, Default)]
pub struct Revocations {
    state: RwLock<State>,
    /// Seconds an access token's revocation is kept past its `exp`: the leeway on `exp`.
    keep_past_exp: i64,
    /// When expired entries were last dropped (Unix seconds).
    purged_at: std::sync::atomic::AtomicI64,
}

#[derive(Debug, Default, Clone)]
pub(crate) struct State {
    pub(crate) access: HashMap<String, i64>,
    pub(crate) users: HashMap<String, i64>,
    pub(crate) clients: HashMap<String, i64>,
}

/// One revocation from the stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Entry {
    Access { jti: String, exp: i64 },
    User { id: String, before: i64 },
    Client { id: String, before: i64 },
}

impl State {
    /// Records `e`; an access token's revocation is kept until `exp + keep_past_exp`.
    pub(crate) fn apply(&mut self, e: Entry, now: i64, keep_past_exp: i64) {
        let later = |map: &mut HashMap<String, i64>, id: String, before: i64| {
            let v = map.entry(id).or_insert(before);
            *v = (*v).max(before);
        };
        match e {
            Entry::Access { exp, .. } if exp + keep_past_exp <= now => {}
            Entry::Access { jti, exp } => {
                self.access.insert(jti, exp);
            }
            Entry::User { id, before } => later(&mut self.users, id, before),
            Entry::Client { id, before } => later(&mut self.clients, id, before),
        }
    }
}

impl Revocations {
    pub(crate) fn new(keep_past_exp: i64) -> Self {
        Revocations { keep_past_exp, ..Revocations::default() }
    }

    pub(crate) fn keep_past_exp(&self) -> i64 {
        self.keep_past_exp
    }

    /// Whether a verified token is revoked. Fails closed.
    pub fn revokes(&self, c: &Claims) -> bool {
        let Ok(st) = self.state.read() else { return true };
        if st.access.is_empty() && st.users.is_empty() && st.clients.is_empty() {
            return false;
        }
        let origin = c.auth_time.unwrap_or(c.iat).min(c.iat);
        st.access.contains_key(&c.jti)
            || c.is_user_token() && st.users.get(&c.sub).is_some_and(|b| origin < *b)
            || st.clients.get(&c.client_id).is_some_and(|b| origin < *b)
    }

    /// Revoked access tokens, user cut-offs and client cut-offs held.
    pub fn len(&self) -> (usize, usize, usize) {
        self.state.read().map_or((0, 0, 0), |s| (s.access.len(), s.users.len(), s.clients.len()))
    }

    pub fn is_empty(&self) -> bool {
        self.len() == (0, 0, 0)
    }

    pub(crate) fn apply(&self, entries: impl IntoIterator<Item = Entry>, now: i64) {
        if let Ok(mut st) = self.state.write() {
            for e in entries {
                st.apply(e, now, self.keep_past_exp);
            }
        }
        self.purge_now_and_then(now);
    }

    /// Drops expired entries at most once a second, however busy the stream.
    pub(crate) fn purge_now_and_then(&self, now: i64) {
        use std::sync::atomic::Ordering;
        let last = self.purged_at.load(Ordering::Relaxed);
        if now > last && self.purged_at.compare_exchange(last, now, Ordering::AcqRel, Ordering::Relaxed).is_ok() {
            self.purge(now);
        }
    }

    /// Replaces everything held (a snapshot).
    pub(crate) fn replace(&self, fresh: State) {
        if let Ok(mut st) = self.state.write() {
            *st = fresh;
        }
    }

    /// Forgets revoked access tokens that have expired (past the leeway).
    pub(crate) fn purge(&self, now: i64) {
        if let Ok(mut st) = self.state.write() {
            st.access.retain(|_, exp| *exp + self.keep_past_exp > now);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(sub: &str, client: &str, iat: i64, user: bool) -> Claims {
        Claims {
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
    fn cut_offs_and_ids_revoke_as_the_token_service_judges_them() {
        let r = Revocations::new(0);
        r.apply([Entry::User { id: "u1".into(), before: 101 }, Entry::User { id: "u1".into(), before: 90 }], 100);
        assert!(r.revokes(&claims("u1", "c", 100, true)));
        assert!(!r.revokes(&claims("u1", "c", 101, true)), "issued at the cut-off: after it");
        assert!(!r.revokes(&claims("u1", "c", 100, false)), "a client's own token named like the user");
        let refreshed = Claims { auth_time: Some(90), ..claims("u1", "c", 200, true) };
        assert!(r.revokes(&refreshed), "refreshed after the cut-off, from a sign-in before it");

        r.apply([Entry::Client { id: "c".into(), before: i64::MAX }], 100);
        assert!(r.revokes(&claims("u2", "c", 5_000, false)), "a deleted client's tokens are all dead");

        let t = claims("u3", "d", 100, true);
        r.apply([Entry::Access { jti: t.jti.clone(), exp: 50 }], 100);
        assert!(!r.revokes(&t), "an entry that already expired is not kept");
        r.apply([Entry::Access { jti: t.jti.clone(), exp: t.exp }], 100);
        assert!(r.revokes(&t));
        r.purge(t.exp);
        assert!(!r.revokes(&t), "forgotten at its exp");
        assert_eq!(r.len(), (0, 1, 1));
    }

    #[test]
    fn with_a_leeway_a_revocation_outlives_its_exp_as_long_as_the_token_is_accepted() {
        let r = Revocations::new(5);
        let t = claims("u", "c", 100, false);
        r.apply([Entry::Access { jti: t.jti.clone(), exp: t.exp }], t.exp + 2);
        assert!(r.revokes(&t), "kept within the leeway past exp");
        r.purge(t.exp + 4);
        assert!(r.revokes(&t));
        r.purge(t.exp + 5);
        assert!(!r.revokes(&t));
    }
}
