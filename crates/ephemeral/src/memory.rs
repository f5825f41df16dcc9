//! The embedded ephemeral store: plain maps behind one std `Mutex`, taken once per operation
//! and never held across an `.await`, so every operation is a single critical section.
//!
//! Entries carry the instant Redis would have reclaimed them (the same TTL arithmetic as the
//! Redis adapter, on the injected clock); past it they read as absent, and they are purged in
//! bulk whenever the maps have doubled since the last purge.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use async_trait::async_trait;
use futures::stream::{self, BoxStream, StreamExt as _};
use tessera_core::clock::{Clock, SystemClock};
use tessera_core::ports::{
    CodeGrant, CodeStore, CodeTake, DecideOutcome, DeviceDecision, DeviceGrant, DevicePoll, DeviceStatus, DeviceStore,
    Ephemeral, Issued, LoginSession, Revocation, RevocationFanout, SessionStore, ThrottleOp, ThrottlePolicy, Throttled,
    Throttles,
};
use tessera_core::{StoreError, StoreResult};
use tessera_crypto::Digest;
use tokio::sync::broadcast;

use crate::{reclaim_ttl_secs, DEVICE_GRACE_SECS, MAX_TTL_SECS, RECLAIM_GRACE_SECS};

/// Revocations a subscriber may fall behind by before its stream ends (and it reloads).
const REVOCATION_BACKLOG: usize = 4096;
/// Throttle entries the store holds at most (about 100 bytes each). Each is forgotten at the
/// end of its window; past this many live ones a new key is refused (fail closed) rather than
/// letting guesses from ever-new addresses grow the process (DESIGN.md rule 8).
const THROTTLE_CAPACITY: usize = 200_000;

/// The smallest entry count that triggers a purge.
const MIN_PURGE_AT: usize = 1024;

/// The in-memory [`Ephemeral`]. Clones share the same maps and the same revocation channel,
/// so a clone is "another handle" on one store.
#[derive(Clone)]
pub struct MemoryEphemeral {
    inner: Arc<Inner>,
}

struct Inner {
    /// Reclaims space and times failure windows. Expiry decisions use the caller's `now`.
    clock: Arc<dyn Clock>,
    state: Mutex<State>,
    throttle_capacity: usize,
    revocations: broadcast::Sender<Revocation>,
}

/// A value and the wall-clock instant (ms) past which it is gone, as a Redis TTL would be.
struct Slot<T> {
    value: T,
    reclaim_at_ms: i64,
}

enum CodeEntry {
    Live(CodeGrant),
    Tombstone { issued: Issued, dead_at: i64, replayed: bool },
}

struct DeviceEntry {
    grant: DeviceGrant,
    status: DeviceStatus,
    last_poll_ms: Option<i64>,
}

struct ThrottleEntry {
    count: u32,
    /// No attempt before this instant.
    next_ms: i64,
    /// The entry is forgotten at this instant.
    reset_ms: i64,
}

#[derive(Default)]
struct State {
    codes: HashMap<Digest, Slot<CodeEntry>>,
    devices: HashMap<Digest, Slot<DeviceEntry>>,
    user_codes: HashMap<String, Slot<Digest>>,
    sessions: HashMap<Digest, Slot<LoginSession>>,
    throttles: HashMap<String, ThrottleEntry>,
    purge_at: usize,
}

fn live<'a, K, V, Q>(map: &'a HashMap<K, Slot<V>>, key: &Q, now_ms: i64) -> Option<&'a V>
where
    K: Eq + Hash + std::borrow::Borrow<Q>,
    Q: Eq + Hash + ?Sized,
{
    map.get(key).filter(|s| s.reclaim_at_ms > now_ms).map(|s| &s.value)
}

fn live_mut<'a, K, V, Q>(map: &'a mut HashMap<K, Slot<V>>, key: &Q, now_ms: i64) -> Option<&'a mut Slot<V>>
where
    K: Eq + Hash + std::borrow::Borrow<Q>,
    Q: Eq + Hash + ?Sized,
{
    map.get_mut(key).filter(|s| s.reclaim_at_ms > now_ms)
}

impl State {
    fn len(&self) -> usize {
        self.codes.len() + self.devices.len() + self.user_codes.len() + self.sessions.len() + self.throttles.len()
    }

    /// Drops everything past its reclaim instant once the maps have doubled since the last
    /// purge: amortised O(1) per write, and never more than twice the live entries held.
    fn purge_if_due(&mut self, now_ms: i64) {
        if self.len() < self.purge_at.max(MIN_PURGE_AT) {
            return;
        }
        self.codes.retain(|_, s| s.reclaim_at_ms > now_ms);
        self.devices.retain(|_, s| s.reclaim_at_ms > now_ms);
        self.user_codes.retain(|_, s| s.reclaim_at_ms > now_ms);
        self.sessions.retain(|_, s| s.reclaim_at_ms > now_ms);
        self.throttles.retain(|_, t| t.reset_ms > now_ms);
        self.purge_at = self.len().saturating_mul(2);
    }

    /// The device a user code names, if both are still held and agree.
    fn device_of(&mut self, user_code: &str, now_ms: i64) -> Option<&mut DeviceEntry> {
        let digest = *live(&self.user_codes, user_code, now_ms)?;
        live_mut(&mut self.devices, &digest, now_ms).map(|s| &mut s.value).filter(|d| d.grant.user_code == user_code)
    }
}

impl MemoryEphemeral {
    /// A store on the system clock.
    pub fn new() -> Self {
        Self::with_clock(Arc::new(SystemClock))
    }

    /// A store whose failure windows and space reclaiming follow `clock` (tests pass a
    /// `ManualClock` to move failure windows without sleeping).
    pub fn with_clock(clock: Arc<dyn Clock>) -> Self {
        Self::build(clock, THROTTLE_CAPACITY)
    }

    fn build(clock: Arc<dyn Clock>, throttle_capacity: usize) -> Self {
        let (revocations, _) = broadcast::channel(REVOCATION_BACKLOG);
        let state = Mutex::new(State::default());
        Self { inner: Arc::new(Inner { clock, state, throttle_capacity, revocations }) }
    }

    /// The one critical section of an operation. A poisoned lock is taken over: every
    /// section leaves the maps consistent before anything in it can panic.
    fn state(&self) -> MutexGuard<'_, State> {
        self.inner.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn now_ms(&self) -> i64 {
        self.inner.clock.now_ms()
    }

    /// The instant (ms) Redis would reclaim an entry dying at `expires_at` if written now.
    fn reclaim_at_ms(&self, expires_at: i64, grace: i64) -> i64 {
        let now_ms = self.now_ms();
        now_ms.saturating_add(reclaim_ttl_secs(expires_at, now_ms.div_euclid(1000), grace) * 1000)
    }
}

impl Default for MemoryEphemeral {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for MemoryEphemeral {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryEphemeral").finish_non_exhaustive()
    }
}

#[async_trait]
impl Ephemeral for MemoryEphemeral {
    async fn ping(&self) -> StoreResult<()> {
        Ok(())
    }
}

#[async_trait]
impl CodeStore for MemoryEphemeral {
    async fn put_code(&self, code: Digest, grant: &CodeGrant) -> StoreResult<()> {
        let now_ms = self.now_ms();
        let reclaim_at_ms = self.reclaim_at_ms(grant.expires_at, RECLAIM_GRACE_SECS);
        let mut st = self.state();
        st.purge_if_due(now_ms);
        st.codes.insert(code, Slot { value: CodeEntry::Live(grant.clone()), reclaim_at_ms });
        Ok(())
    }

    async fn peek_code(&self, code: Digest, now: i64) -> StoreResult<Option<CodeGrant>> {
        let now_ms = self.now_ms();
        let st = self.state();
        Ok(match live(&st.codes, &code, now_ms) {
            Some(CodeEntry::Live(grant)) if now < grant.expires_at => Some(grant.clone()),
            _ => None,
        })
    }

    async fn take_code(&self, code: Digest, now: i64, issued: &Issued, tombstone_ttl: i64) -> StoreResult<CodeTake> {
        let now_ms = self.now_ms();
        let tombstone_reclaim_at_ms = now_ms.saturating_add(tombstone_ttl.clamp(1, MAX_TTL_SECS) * 1000);
        let mut st = self.state();
        st.purge_if_due(now_ms);
        let Some(slot) = live_mut(&mut st.codes, &code, now_ms) else {
            return Ok(CodeTake::Unknown);
        };
        match &mut slot.value {
            CodeEntry::Live(grant) if now < grant.expires_at => {
                let grant = grant.clone();
                *slot = Slot {
                    value: CodeEntry::Tombstone {
                        issued: issued.clone(),
                        dead_at: now.saturating_add(tombstone_ttl),
                        replayed: false,
                    },
                    reclaim_at_ms: tombstone_reclaim_at_ms,
                };
                Ok(CodeTake::Fresh(grant))
            }
            CodeEntry::Tombstone { issued, dead_at, replayed } if now < *dead_at => {
                *replayed = true;
                Ok(CodeTake::Replayed(issued.clone()))
            }
            CodeEntry::Live(_) | CodeEntry::Tombstone { .. } => Ok(CodeTake::Unknown),
        }
    }

    async fn code_replayed(&self, code: Digest) -> StoreResult<bool> {
        let now_ms = self.now_ms();
        let st = self.state();
        Ok(matches!(live(&st.codes, &code, now_ms), Some(CodeEntry::Tombstone { replayed: true, .. })))
    }
}

#[async_trait]
impl DeviceStore for MemoryEphemeral {
    async fn put_device(&self, device: Digest, grant: &DeviceGrant) -> StoreResult<()> {
        let now_ms = self.now_ms();
        let reclaim_at_ms = self.reclaim_at_ms(grant.expires_at, DEVICE_GRACE_SECS);
        let mut st = self.state();
        st.purge_if_due(now_ms);
        if live(&st.user_codes, grant.user_code.as_str(), now_ms).is_some() {
            return Err(StoreError::Conflict("the user code is already in use".into()));
        }
        st.user_codes.insert(grant.user_code.clone(), Slot { value: device, reclaim_at_ms });
        let entry = DeviceEntry { grant: grant.clone(), status: DeviceStatus::Pending, last_poll_ms: None };
        st.devices.insert(device, Slot { value: entry, reclaim_at_ms });
        Ok(())
    }

    async fn lookup_user_code(&self, user_code: &str, now: i64) -> StoreResult<Option<(DeviceGrant, DeviceStatus)>> {
        let now_ms = self.now_ms();
        let mut st = self.state();
        Ok(st
            .device_of(user_code, now_ms)
            .filter(|d| now < d.grant.expires_at)
            .map(|d| (d.grant.clone(), d.status.clone())))
    }

    async fn decide_device(&self, user_code: &str, decision: &DeviceDecision, now: i64) -> StoreResult<DecideOutcome> {
        let now_ms = self.now_ms();
        let mut st = self.state();
        st.purge_if_due(now_ms);
        let Some(device) = st.device_of(user_code, now_ms).filter(|d| now < d.grant.expires_at) else {
            return Ok(DecideOutcome::NotFound);
        };
        if device.status != DeviceStatus::Pending {
            return Ok(DecideOutcome::AlreadyDecided);
        }
        device.status = match decision {
            DeviceDecision::Approve { user_id, auth_time } => {
                DeviceStatus::Approved { user_id: user_id.clone(), auth_time: *auth_time }
            }
            DeviceDecision::Deny => DeviceStatus::Denied,
        };
        Ok(DecideOutcome::Decided)
    }

    async fn poll_device(&self, device: Digest, now_ms: i64) -> StoreResult<DevicePoll> {
        let wall_ms = self.now_ms();
        let mut st = self.state();
        st.purge_if_due(wall_ms);
        let Some(slot) = live_mut(&mut st.devices, &device, wall_ms) else {
            return Ok(DevicePoll::Unknown);
        };
        let entry = &mut slot.value;
        if now_ms >= entry.grant.expires_at.saturating_mul(1000) {
            return Ok(DevicePoll::Expired);
        }
        Ok(match &entry.status {
            DeviceStatus::Pending => {
                let previous = entry.last_poll_ms.replace(now_ms);
                // RFC 8628 §3.5: polling faster than `interval` earns `slow_down` and 5 more seconds.
                match previous {
                    Some(prev) if now_ms.saturating_sub(prev) < entry.grant.interval.saturating_mul(1000) => {
                        entry.grant.interval = entry.grant.interval.saturating_add(5);
                        DevicePoll::SlowDown { interval: entry.grant.interval }
                    }
                    _ => DevicePoll::Pending,
                }
            }
            DeviceStatus::Approved { user_id, auth_time } => {
                let poll = DevicePoll::Approved {
                    grant: entry.grant.clone(),
                    user_id: user_id.clone(),
                    auth_time: *auth_time,
                };
                entry.status = DeviceStatus::Consumed;
                poll
            }
            DeviceStatus::Denied => DevicePoll::Denied,
            DeviceStatus::Consumed => DevicePoll::Consumed,
        })
    }
}

#[async_trait]
impl SessionStore for MemoryEphemeral {
    async fn put_session(&self, handle: Digest, session: &LoginSession) -> StoreResult<()> {
        let now_ms = self.now_ms();
        let reclaim_at_ms = self.reclaim_at_ms(session.expires_at, RECLAIM_GRACE_SECS);
        let mut st = self.state();
        st.purge_if_due(now_ms);
        st.sessions.insert(handle, Slot { value: session.clone(), reclaim_at_ms });
        Ok(())
    }

    async fn get_session(&self, handle: Digest, now: i64) -> StoreResult<Option<LoginSession>> {
        let now_ms = self.now_ms();
        let st = self.state();
        Ok(live(&st.sessions, &handle, now_ms).filter(|s| now < s.expires_at).cloned())
    }

    async fn delete_session(&self, handle: Digest) -> StoreResult<()> {
        self.state().sessions.remove(&handle);
        Ok(())
    }
}

#[async_trait]
impl Throttles for MemoryEphemeral {
    async fn throttle(
        &self,
        key: &str,
        policy: &ThrottlePolicy,
        op: ThrottleOp,
        now_ms: i64,
    ) -> StoreResult<Throttled> {
        let capacity = self.inner.throttle_capacity;
        let mut st = self.state();
        st.purge_if_due(now_ms);
        // A peek stores nothing: looking must not cost memory per source.
        if op == ThrottleOp::Peek && st.throttles.get(key).is_none_or(|e| e.reset_ms <= now_ms) {
            return Ok(Throttled::Allowed { count: 0 });
        }
        if !st.throttles.contains_key(key) && st.throttles.len() >= capacity {
            st.throttles.retain(|_, e| e.reset_ms > now_ms);
            if st.throttles.len() >= capacity {
                return Ok(match op {
                    // Nothing to record it in; the refusal is what bounds the attempts.
                    ThrottleOp::Record => Throttled::Allowed { count: 0 },
                    _ => Throttled::Wait { retry_after_ms: 1_000 },
                });
            }
        }
        let fresh = ThrottleEntry { count: 0, next_ms: 0, reset_ms: 0 };
        let entry = st.throttles.entry(key.to_owned()).or_insert(fresh);
        if entry.reset_ms <= now_ms {
            *entry = ThrottleEntry { count: 0, next_ms: 0, reset_ms: 0 };
        }
        if op != ThrottleOp::Record {
            if policy.stop_after > 0 && entry.count >= policy.stop_after {
                return Ok(Throttled::Stopped { retry_after_ms: entry.reset_ms - now_ms });
            }
            if now_ms < entry.next_ms {
                return Ok(Throttled::Wait { retry_after_ms: entry.next_ms - now_ms });
            }
            if op == ThrottleOp::Peek {
                return Ok(Throttled::Allowed { count: entry.count });
            }
        }
        entry.count = entry.count.saturating_add(1);
        // Only a delay moves the next allowed time: with none, a caller whose clock read came
        // a moment earlier than the last one's is not told to wait.
        let delay = policy.delay_after(entry.count);
        if delay > 0 {
            entry.next_ms = entry.next_ms.max(now_ms.saturating_add(delay));
        }
        entry.reset_ms = now_ms.saturating_add(policy.forget_after_ms.max(1));
        Ok(Throttled::Allowed { count: entry.count })
    }

    async fn forgive(&self, key: &str, entirely: bool) -> StoreResult<()> {
        let mut st = self.state();
        let emptied = entirely
            || st.throttles.get_mut(key).is_some_and(|e| {
                e.count = e.count.saturating_sub(1);
                e.count == 0
            });
        // Nothing left to remember: an attempt taken back costs no memory.
        if emptied {
            st.throttles.remove(key);
        }
        Ok(())
    }
}

#[async_trait]
impl RevocationFanout for MemoryEphemeral {
    async fn publish_revocation(&self, revocation: &Revocation) -> StoreResult<()> {
        // Nobody listening is not an error.
        let _ = self.inner.revocations.send(revocation.clone());
        Ok(())
    }

    async fn subscribe_revocations(&self) -> StoreResult<BoxStream<'static, Revocation>> {
        let receiver = self.inner.revocations.subscribe();
        // A lagged receiver has missed revocations: end the stream so the caller reloads.
        Ok(stream::unfold(receiver, |mut rx| async move { rx.recv().await.ok().map(|item| (item, rx)) }).boxed())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_full_throttle_table_refuses_new_keys_until_entries_expire() {
        let store = MemoryEphemeral::build(Arc::new(SystemClock), 2);
        let p = ThrottlePolicy { free: 5, base_delay_ms: 0, max_delay_ms: 0, stop_after: 0, forget_after_ms: 1_000 };
        for key in ["a", "b"] {
            assert_eq!(store.throttle(key, &p, ThrottleOp::Take, 0).await.unwrap(), Throttled::Allowed { count: 1 });
        }
        assert_eq!(
            store.throttle("c", &p, ThrottleOp::Take, 10).await.unwrap(),
            Throttled::Wait { retry_after_ms: 1_000 }
        );
        assert_eq!(store.throttle("c", &p, ThrottleOp::Record, 10).await.unwrap(), Throttled::Allowed { count: 0 });
        assert_eq!(store.state().throttles.len(), 2, "nothing stored past the capacity");
        assert_eq!(
            store.throttle("a", &p, ThrottleOp::Take, 10).await.unwrap(),
            Throttled::Allowed { count: 2 },
            "known keys go on"
        );
        assert_eq!(
            store.throttle("c", &p, ThrottleOp::Take, 1_010).await.unwrap(),
            Throttled::Allowed { count: 1 },
            "room once they expire"
        );
    }
    use tessera_core::clock::ManualClock;

    fn grant(expires_at: i64) -> CodeGrant {
        CodeGrant {
            client_id: "c".into(),
            redirect_uri: "https://app.example/cb".into(),
            scope: "openid".into(),
            user_id: "u".into(),
            auth_time: 0,
            nonce: None,
            code_challenge: None,
            code_challenge_method: None,
            expires_at,
        }
    }

    #[tokio::test]
    async fn dead_entries_are_purged_once_the_maps_have_doubled() {
        let clock = Arc::new(ManualClock::default());
        let store = MemoryEphemeral::with_clock(clock.clone());
        let now = clock.now();
        for i in 0..2_000u32 {
            store.put_code(Digest::of(&i.to_be_bytes()), &grant(now + 60)).await.unwrap();
        }
        assert_eq!(store.state().len(), 2_000);
        // Past every code's expiry and reclaim grace: the next purge drops them all.
        clock.advance_secs(60 + RECLAIM_GRACE_SECS);
        let later = clock.now();
        for i in 2_000..4_100u32 {
            store.put_code(Digest::of(&i.to_be_bytes()), &grant(later + 60)).await.unwrap();
        }
        let held = store.state().len();
        assert!(held <= 2_100, "dead codes were purged, {held} held");
        let kept = Digest::of(&4_099u32.to_be_bytes());
        assert_eq!(store.peek_code(kept, later).await.unwrap(), Some(grant(later + 60)));
    }
}
