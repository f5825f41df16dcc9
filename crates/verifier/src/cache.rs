//! Tokens verified before, keyed by the whole token (so a hit is exactly the bytes that were
//! verified), bounded: at most `capacity` entries in all, over 16 shards. Inserting into a full
//! cache first drops the shard's expired tokens, then, if it is still full, a quarter of the
//! shard; if that shard had nothing to drop, the expired tokens of every shard (at most once
//! a second), else the token is not kept. A token not held is verified again on its next use.

use crate::Claims;
use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};

const SHARDS: usize = 16;

type Shard = RwLock<HashMap<Box<str>, Arc<Claims>, foldhash::quality::RandomState>>;

pub(crate) struct TokenCache {
    shards: Vec<Shard>,
    capacity: usize,
    len: AtomicUsize,
    /// When expired tokens were last swept from every shard (Unix seconds).
    swept_at: std::sync::atomic::AtomicI64,
    pick: foldhash::fast::RandomState,
}

impl TokenCache {
    pub(crate) fn new(capacity: usize) -> Self {
        TokenCache {
            shards: (0..SHARDS).map(|_| RwLock::new(HashMap::default())).collect(),
            capacity,
            len: AtomicUsize::new(0),
            swept_at: Default::default(),
            pick: foldhash::fast::RandomState::default(),
        }
    }

    fn shard(&self, token: &str) -> &Shard {
        // The signature's last bytes spread tokens evenly and cost little to hash.
        let tail = &token.as_bytes()[token.len().saturating_sub(8)..];
        &self.shards[self.pick.hash_one(tail) as usize % SHARDS]
    }

    pub(crate) fn get(&self, token: &str) -> Option<Arc<Claims>> {
        let shard = self.shard(token).read().ok()?;
        shard.get(token).cloned()
    }

    pub(crate) fn insert(&self, token: &str, claims: Arc<Claims>, now: i64) {
        if self.capacity == 0 {
            return;
        }
        let Ok(mut shard) = self.shard(token).write() else { return };
        if self.len.load(Ordering::Relaxed) >= self.capacity {
            let before = shard.len();
            shard.retain(|_, c| c.exp > now);
            if self.len.load(Ordering::Relaxed) - (before - shard.len()) >= self.capacity {
                let mut drop = (shard.len() / 4).max(1);
                shard.retain(|_, _| {
                    let keep = drop == 0;
                    drop = drop.saturating_sub(1);
                    keep
                });
            }
            self.len.fetch_sub(before - shard.len(), Ordering::Relaxed);
            if self.len.load(Ordering::Relaxed) >= self.capacity {
                self.sweep_others(&shard, now);
            }
            // Nothing to drop (the other shards hold the capacity, unexpired): not kept.
            if self.len.load(Ordering::Relaxed) >= self.capacity {
                return;
            }
        }
        if shard.insert(token.into(), claims).is_none() {
            self.len.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Drops the expired tokens of the other shards, at most once a second (it reads them all),
    /// skipping any shard in use (never waiting for a lock while holding one).
    fn sweep_others(&self, held: &HashMap<Box<str>, Arc<Claims>, foldhash::quality::RandomState>, now: i64) {
        let last = self.swept_at.load(Ordering::Relaxed);
        if now <= last || self.swept_at.compare_exchange(last, now, Ordering::AcqRel, Ordering::Relaxed).is_err() {
            return;
        }
        for other in &self.shards {
            let Ok(mut other) = other.try_write() else { continue };
            if std::ptr::eq(&*other, held) {
                continue;
            }
            let before = other.len();
            other.retain(|_, c| c.exp > now);
            self.len.fetch_sub(before - other.len(), Ordering::Relaxed);
        }
    }

    /// Forgets every token.
    pub(crate) fn clear(&self) {
        for shard in &self.shards {
            if let Ok(mut shard) = shard.write() {
                self.len.fetch_sub(shard.len(), Ordering::Relaxed);
                shard.clear();
            }
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.len.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(exp: i64) -> Arc<Claims> {
        Arc::new(Claims {
            iss: "i".into(),
            sub: "s".into(),
            aud: "a".into(),
            exp,
            iat: 0,
            nbf: 0,
            jti: "j".into(),
            client_id: "c".into(),
            scope: String::new(),
            auth_time: None,
            username: None,
        })
    }

    #[test]
    fn the_cache_holds_its_capacity_and_never_more() {
        let cache = TokenCache::new(1_000);
        for i in 0..1_000 {
            cache.insert(&format!("token-{i:08}-signature{i}"), claims(100), 0);
        }
        assert_eq!(cache.len(), 1_000);
        let held = (0..1_000).filter(|i| cache.get(&format!("token-{i:08}-signature{i}")).is_some()).count();
        assert_eq!(held, 1_000, "everything up to the capacity is kept");
        for i in 1_000..50_000 {
            cache.insert(&format!("token-{i:08}-signature{i}"), claims(100), 0);
            assert!(cache.len() <= 1_000, "over capacity at {i}");
        }
        let counted: usize = cache.shards.iter().map(|s| s.read().unwrap().len()).sum();
        assert_eq!(counted, cache.len());
        // Expired tokens go first.
        let cache = TokenCache::new(10);
        for i in 0..10 {
            cache.insert(&format!("old-{i}"), claims(5), 0);
        }
        for i in 0..10 {
            cache.insert(&format!("new-{i}"), claims(100), 50);
            assert!(cache.len() <= 10);
        }
        let kept = (0..10).filter(|i| cache.get(&format!("new-{i}")).is_some()).count();
        assert!(kept >= 5, "the expired made room: {kept} kept");
    }
}
