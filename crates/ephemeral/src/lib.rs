//! The adapters of Tessera's ephemeral port ([`tessera_core::ports::Ephemeral`]): authorization
//! codes and their tombstones, device authorizations, login sessions, failure counters and the
//! revocation fan-out. [`MemoryEphemeral`] is the embedded default (one process, one mutex);
//! [`RedisEphemeral`] is the production store shared by every node. Both behave identically and
//! one contract suite (`tests/contract.rs`) runs against each.
//!
//! This crate depends on the core's port and its types, never the other way round, and knows
//! nothing of OAuth flows, transports or the durable store. It never sees a raw code, secret or
//! token: only digests. Expiry is always decided against the `now` the caller passes in; TTLs
//! and purges only reclaim space.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::todo))]

mod memory;
mod redis_ha;
mod redis_store;
mod redis_url;

pub use memory::MemoryEphemeral;
pub use redis_store::RedisEphemeral;

use std::time::{SystemTime, UNIX_EPOCH};
use tessera_core::StoreError;

/// The name every `StoreError::Unavailable` of this crate carries.
const STORE: &str = "ephemeral store";

/// How long codes, sessions and revocations are kept past their own expiry before their space
/// is reclaimed. Keeps a caller whose clock runs a little ahead of ours from losing entries.
const RECLAIM_GRACE_SECS: i64 = 300;

/// How long a device authorization outlives its `expires_at`, so a late poll is told
/// `Expired` (RFC 8628 `expired_token`) rather than `Unknown`.
const DEVICE_GRACE_SECS: i64 = 600;

/// No TTL is set longer than this (ten years), so an absurd `expires_at` cannot overflow
/// Redis' expiry arithmetic or ours.
const MAX_TTL_SECS: i64 = 10 * 365 * 24 * 3600;

/// Seconds until an entry that dies at `expires_at` may be reclaimed, counted from `now`
/// (the store's own clock). Never less than `grace`, so a caller's clock that lags ours does
/// not see entries vanish before it considers them dead.
fn reclaim_ttl_secs(expires_at: i64, now: i64, grace: i64) -> i64 {
    expires_at.saturating_sub(now).max(0).saturating_add(grace).clamp(1, MAX_TTL_SECS)
}

/// Wall-clock seconds, for TTLs only (never for expiry decisions).
fn wall_now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
}

/// A stored record that does not parse. The serde message is dropped on purpose: it can quote
/// the stored value, and errors are logged.
fn malformed(what: &str, e: &serde_json::Error) -> StoreError {
    StoreError::Other(format!("malformed {what} record in the {STORE} (line {}, column {})", e.line(), e.column()))
}

/// Serialises a record; the only failure serde_json has for these plain structs is a bug.
fn to_json<T: serde::Serialize>(what: &str, value: &T) -> Result<String, StoreError> {
    serde_json::to_string(value).map_err(|e| malformed(what, &e))
}

fn from_json<T: serde::de::DeserializeOwned>(what: &str, raw: &str) -> Result<T, StoreError> {
    serde_json::from_str(raw).map_err(|e| malformed(what, &e))
}

/// Entry points for the fuzz targets in `fuzz/`; not part of the crate's API.
#[doc(hidden)]
pub mod fuzzing {
    use crate::redis_url::{parse, Target};
    use tessera_core::StoreError;

    /// Reads a store URL as [`crate::RedisEphemeral::connect`] does up to the first
    /// connection, and returns how many servers it names.
    pub fn parse_store_url(url: &str) -> Result<usize, StoreError> {
        Ok(match parse(url)? {
            Target::Single(url) => {
                redis::Client::open(url).map_err(crate::redis_ha::store_error)?;
                1
            }
            Target::Sentinel(t) => t.sentinels.len(),
            Target::Cluster(t) => t.nodes.len(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reclaim_ttl_is_never_shorter_than_the_grace() {
        assert_eq!(reclaim_ttl_secs(100, 40, 5), 65);
        assert_eq!(reclaim_ttl_secs(100, 400, 5), 5);
        assert_eq!(reclaim_ttl_secs(i64::MAX, i64::MIN, 5), MAX_TTL_SECS);
        assert_eq!(reclaim_ttl_secs(0, 10, 0), 1);
    }

    #[test]
    fn a_malformed_record_error_does_not_quote_the_record() {
        let Err(e) = from_json::<i64>("session", "\"secret-value\"") else {
            panic!("a string is not an i64");
        };
        assert!(!e.to_string().contains("secret-value"), "{e}");
    }
}
