//! Throttles for anonymous input (DESIGN.md rule 8): password checks and user-code guesses.
//!
//! An account counts every attempt atomically *before* the password is checked, so a burst,
//! however concurrent, gets no more checks on one account than `lockout_threshold`; after that
//! it only ever gets growing delays, never a hard lock, so a few requests from an attacker
//! cannot keep a known user out, while distributed guessing of one account stays capped at one
//! guess per `max_delay_ms`. The source (the client's address, relayed by the facade) is
//! checked first and counts its failures: it is slowed, then stopped, before it can reach an
//! account's threshold. Sources count failures only (not attempts), so one busy address —
//! a backend doing password grants for many users — is never slowed by its successes; a burst
//! of guesses across many accounts from a fresh source is bounded by the password pool's
//! queue, and stops the source. Throttled requests get
//! `temporarily_unavailable` (or `slow_down` for user codes) with a `retry_after`, the same
//! answer for known and unknown usernames.

use crate::error::{ErrorCode, OAuthError};
use crate::ports::{ThrottleOp, ThrottlePolicy, Throttled};
use crate::Tessera;
use std::net::IpAddr;

/// Password failures from one source: from the 5th on, 1 s, 2 s, 4 s… between attempts, and
/// the 8th stops the source for 15 minutes — before it reaches an account's threshold (10 by
/// default).
pub const LOGIN_SOURCE: ThrottlePolicy =
    ThrottlePolicy { free: 5, base_delay_ms: 1_000, max_delay_ms: 60_000, stop_after: 8, forget_after_ms: 15 * 60_000 };

/// User-code guesses from one source (RFC 8628 §5.1), counted before they are looked up and
/// taken back when right: from the 10th on, growing delays, and the 30th wrong code stops the
/// source for 15 minutes.
pub const USER_CODE_SOURCE: ThrottlePolicy = ThrottlePolicy {
    free: 10,
    base_delay_ms: 1_000,
    max_delay_ms: 30_000,
    stop_after: 30,
    forget_after_ms: 15 * 60_000,
};

/// The per-account policy: `threshold` attempts pass without waiting, the `threshold`-th and
/// later ones impose 1 s doubling to 30 s; never a hard stop. Forgotten `window_secs` after
/// the last attempt, or at a success.
pub fn account_policy(threshold: u32, window_secs: i64) -> ThrottlePolicy {
    ThrottlePolicy {
        free: threshold,
        base_delay_ms: 1_000,
        max_delay_ms: 30_000,
        stop_after: 0,
        forget_after_ms: window_secs.saturating_mul(1000),
    }
}

/// Device authorizations one source may start a minute (a household has a few devices).
pub const DEVICE_STARTS_PER_SOURCE: ThrottlePolicy = per_minute(30);

/// At most `limit` attempts under a key that names its minute: a fixed-window rate, no delays.
pub const fn per_minute(limit: u32) -> ThrottlePolicy {
    ThrottlePolicy { free: limit, base_delay_ms: 0, max_delay_ms: 0, stop_after: limit, forget_after_ms: 60_000 }
}

/// The throttle key of a source: an IPv4 address, or an IPv6 address's /64 (one subscriber's
/// allocation, so an attacker cannot mint a fresh source per request).
pub fn source_key(kind: &str, ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => format!("{kind}:{v4}"),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => format!("{kind}:{v4}"),
            None => {
                let s = v6.segments();
                format!("{kind}:{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3])
            }
        },
    }
}

fn seconds(ms: i64) -> u32 {
    u32::try_from((ms.max(1) + 999) / 1000).unwrap_or(u32::MAX)
}

/// The answer to a throttled attempt.
pub(crate) fn too_many(code: ErrorCode, retry_after_ms: i64) -> OAuthError {
    let secs = seconds(retry_after_ms);
    OAuthError::new(code, format!("too many attempts; wait {secs} seconds and try again")).with_retry_after(secs)
}

impl Tessera {
    /// One throttle step under `key`: `Ok(count)` when the attempt may go on, the throttled
    /// answer (with `code`) otherwise.
    pub(crate) async fn attempt(
        &self,
        key: &str,
        policy: &ThrottlePolicy,
        op: ThrottleOp,
        code: ErrorCode,
    ) -> Result<u32, OAuthError> {
        match self.ephemeral.throttle(key, policy, op, self.clock.now_ms()).await? {
            Throttled::Allowed { count } => Ok(count),
            Throttled::Wait { retry_after_ms } | Throttled::Stopped { retry_after_ms } => {
                Err(too_many(code, retry_after_ms))
            }
        }
    }

    /// Whether this is the first time `key` is asked for in the current minute (so something
    /// worth doing once a minute is done); `false` as well when the store cannot tell.
    pub(crate) async fn first_this_minute(&self, key: &str) -> bool {
        let window = format!("{key}:{}", self.now().div_euclid(60));
        matches!(
            self.ephemeral.throttle(&window, &per_minute(1), ThrottleOp::Take, self.clock.now_ms()).await,
            Ok(Throttled::Allowed { .. })
        )
    }

    /// Counts a failure seen after the fact.
    pub(crate) async fn record_failure(&self, key: &str, policy: &ThrottlePolicy) {
        if let Err(e) = self.ephemeral.throttle(key, policy, ThrottleOp::Record, self.clock.now_ms()).await {
            tracing::debug!(error = %e, "cannot count a failed attempt");
        }
    }

    /// Takes back an attempt that turned out well.
    pub(crate) async fn forgive(&self, key: &str, entirely: bool) {
        if let Err(e) = self.ephemeral.forgive(key, entirely).await {
            tracing::debug!(error = %e, "cannot take back a throttled attempt");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_from_the_first_attempt_past_the_free_ones_and_are_capped() {
        let p = account_policy(3, 900);
        let delays: Vec<i64> = (1..=9).map(|n| p.delay_after(n)).collect();
        assert_eq!(delays, [0, 0, 1_000, 2_000, 4_000, 8_000, 16_000, 30_000, 30_000]);
        assert_eq!(p.delay_after(u32::MAX), 30_000);
        assert!(
            LOGIN_SOURCE.stop_after <= account_policy(10, 900).free,
            "one source stops before it touches an account"
        );
    }

    #[test]
    fn ipv6_sources_are_keyed_by_their_slash_64() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:bbbb::9".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(source_key("s", a), source_key("s", b));
        assert_ne!(source_key("s", a), source_key("s", c));
        let mapped: IpAddr = "::ffff:192.0.2.7".parse().unwrap();
        assert_eq!(source_key("s", mapped), "s:192.0.2.7");
        assert_eq!(seconds(1), 1);
        assert_eq!(seconds(1_001), 2);
    }
}
