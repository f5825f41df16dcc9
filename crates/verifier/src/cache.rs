//! Tokens verified before, keyed by the whole token (so a hit is exactly the bytes that were
//! verified), bounded: 16 shards of at most capacity / 16 entries. A full shard first drops
//! its expired tokens, then, if still full, everything it held; a hot token is verified again
//! once after that.

use crate::Claims;
use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::{Arc, RwLock};

const SHARDS: usize = 16;

type Shard = RwLock<HashMap<Box<str>, Arc<Claims>, foldhash::quality::RandomState>>;

pub(crate) struct TokenCache {
    shards: Vec<Shard>,
    per_shard: usize,
    pick: foldhash::fast::RandomState,
}

impl TokenCache {
    pub(crate) fn new(capacity: usize) -> Self {
        TokenCache {
            shards: (0..SHARDS).map(|_| RwLock::new(HashMap::default())).collect(),
            per_shard: capacity.div_ceil(SHARDS),
            pick: foldhash::fast::RandomState::default(),
        }
    }

    fn shard(&self, token: &str) -> &Shard {
        // The signature's last bytes spread tokens evenly and cost nothing to hash.
        let tail = &token.as_bytes()[token.len().saturating_sub(8)..];
        &self.shards[self.pick.hash_one(tail) as usize % SHARDS]
    }

    pub(crate) fn get(&self, token: &str) -> Option<Arc<Claims>> {
        let shard = self.shard(token).read().ok()?;
        shard.get(token).cloned()
    }

    pub(crate) fn insert(&self, token: &str, claims: Arc<Claims>, now: i64) {
        if self.per_shard == 0 {
            return;
        }
        let Ok(mut shard) = self.shard(token).write() else { return };
        if shard.len() >= self.per_shard {
            shard.retain(|_, c| c.exp > now);
            if shard.len() >= self.per_shard {
                shard.clear();
            }
        }
        shard.insert(token.into(), claims);
    }

    pub(crate) fn len(&self) -> usize {
        self.shards.iter().map(|s| s.read().map_or(0, |s| s.len())).sum()
    }
}
