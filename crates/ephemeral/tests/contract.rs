//! The ephemeral port's contract, written once against `dyn Ephemeral` and stamped out for
//! every adapter by `contract!`. Redis tests use a random key prefix each and delete their keys
//! when done; without a reachable Redis they are skipped loudly, or fail when `CI` is set.
//!
//! The Sentinel and Cluster modes run the same cases against throwaway servers this file starts
//! on free loopback ports in a temporary directory (a master and a sentinel; three cluster
//! nodes), formed once per suite and killed when it ends. Without `redis-server` and
//! `redis-cli` on the PATH those suites are skipped loudly, or fail when `CI` is set.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures::future::LocalBoxFuture;
use futures::{FutureExt as _, StreamExt as _};
use tessera_core::ports::{
    CodeGrant, CodeTake, DecideOutcome, DeviceDecision, DeviceGrant, DevicePoll, DeviceStatus, Ephemeral, Issued,
    LoginSession, Revocation, ThrottleOp, ThrottlePolicy, Throttled,
};
use tessera_core::ports::{CodeStore as _, RevocationFanout as _};
use tessera_core::StoreError;
use tessera_crypto::Digest;
use tessera_ephemeral::{MemoryEphemeral, RedisEphemeral};

// ---------------------------------------------------------------------------------------------
// Harness

/// One store under test, as the core holds it, plus a second handle on the same data (another
/// node, for the fan-out), and the `now` the test starts from.
struct Harness {
    store: Arc<dyn Ephemeral>,
    other: Arc<dyn Ephemeral>,
    now: i64,
    _cleanup: Option<RedisCleanup>,
}

fn wall_now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
}

use tessera_testkit::redis_url;

async fn memory() -> Option<Harness> {
    let store = MemoryEphemeral::new();
    Some(Harness { other: Arc::new(store.clone()), store: Arc::new(store), now: wall_now(), _cleanup: None })
}

async fn redis() -> Option<Harness> {
    let url = redis_url();
    let prefix = format!("tessera-test:{}:", tessera_crypto::random_secret(9));
    let store = match RedisEphemeral::connect(&url, &prefix).await {
        Ok(store) => store,
        Err(e) => {
            tessera_testkit::skip_or_fail(format!("redis unreachable at {url} ({e})"));
            return None;
        }
    };
    let cleanup = RedisCleanup { url: url.clone(), prefix: prefix.clone() };
    let other = RedisEphemeral::connect(&url, &prefix).await.expect("a second connection to redis");
    Some(Harness { store: Arc::new(store), other: Arc::new(other), now: wall_now(), _cleanup: Some(cleanup) })
}

/// Deletes every key under a test's prefix, even when the test panicked.
struct RedisCleanup {
    url: String,
    prefix: String,
}

impl Drop for RedisCleanup {
    fn drop(&mut self) {
        let Ok(client) = redis::Client::open(self.url.as_str()) else {
            return;
        };
        let Ok(mut conn) = client.get_connection_with_timeout(Duration::from_secs(2)) else {
            return;
        };
        // Prefixes are base64url, so they hold no glob metacharacters.
        let keys: Vec<String> = match redis::Commands::scan_match(&mut conn, format!("{}*", self.prefix)) {
            Ok(iter) => iter.collect(),
            Err(_) => return,
        };
        if !keys.is_empty() {
            let _: redis::RedisResult<i64> = redis::cmd("DEL").arg(&keys).query(&mut conn);
        }
    }
}

/// Every test of the contract, for every adapter. Multi-threaded runtimes so concurrency
/// tests race for real.
macro_rules! contract {
    ($($case:ident),* $(,)?) => {
        mod memory_store {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    if let Some(h) = super::memory().await {
                        super::$case(&h).await;
                    }
                }
            )*
        }
        mod redis_store {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    if let Some(h) = super::redis().await {
                        super::$case(&h).await;
                    }
                }
            )*
        }
        /// Every case by name, for the suites that run them all against one set of throwaway
        /// servers: a Sentinel or a Cluster takes seconds to form, so each is formed once.
        const CASES: &[(&str, Case)] = &[$((stringify!($case), |h| Box::pin($case(h)))),*];
    };
}

type Case = for<'a> fn(&'a Harness) -> LocalBoxFuture<'a, ()>;

contract!(
    a_store_answers_a_ping,
    taking_a_code_twice_returns_the_tombstone_and_marks_it_replayed,
    peeking_a_code_changes_nothing_and_a_used_code_cannot_be_peeked,
    an_expired_code_is_unknown_even_before_its_ttl_elapses,
    an_unknown_code_is_unknown_and_not_replayed,
    of_32_concurrent_takes_of_one_code_exactly_one_is_fresh,
    an_approved_device_is_handed_out_to_one_poll_then_consumed,
    a_denied_device_polls_denied_and_cannot_be_decided_again,
    polling_a_pending_device_too_soon_slows_it_down_by_five_seconds,
    an_expired_device_polls_expired_and_can_no_longer_be_found_or_decided,
    an_unknown_device_or_user_code_is_unknown,
    a_user_code_already_in_use_is_a_conflict,
    a_session_lives_until_it_expires_or_is_deleted,
    a_throttle_lets_the_free_attempts_through_then_delays_then_stops,
    a_throttle_is_forgotten_after_quiet_and_forgiving_takes_attempts_back,
    a_rate_without_delays_never_makes_a_caller_wait_for_a_clock_read_a_moment_late,
    of_40_concurrent_attempts_a_throttle_lets_only_its_policy_through,
    a_revocation_made_on_another_handle_reaches_a_subscriber,
);

// ---------------------------------------------------------------------------------------------
// Fixtures

fn code_grant(now: i64) -> CodeGrant {
    CodeGrant {
        client_id: "client-1".into(),
        redirect_uri: "https://app.example/cb".into(),
        scope: "openid profile".into(),
        user_id: "user-1".into(),
        auth_time: now - 30,
        nonce: Some("n-0S6_WzA2Mj".into()),
        code_challenge: Some("E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM".into()),
        code_challenge_method: Some("S256".into()),
        expires_at: now + 60,
    }
}

fn issued(jti: &str, now: i64) -> Issued {
    Issued { access_jti: jti.into(), access_exp: now + 3600, family_id: Some(format!("family-of-{jti}")) }
}

fn device_grant(now: i64, user_code: &str) -> DeviceGrant {
    DeviceGrant {
        client_id: "tv-app".into(),
        scope: "profile".into(),
        user_code: user_code.into(),
        expires_at: now + 600,
        interval: 5,
    }
}

fn session(now: i64) -> LoginSession {
    LoginSession { user_id: "user-1".into(), username: "alice".into(), auth_time: now, expires_at: now + 3600 }
}

fn approve(now: i64) -> DeviceDecision {
    DeviceDecision::Approve { user_id: "user-1".into(), auth_time: now }
}

// ---------------------------------------------------------------------------------------------
// Cases

async fn a_store_answers_a_ping(h: &Harness) {
    h.store.ping().await.unwrap();
}

async fn taking_a_code_twice_returns_the_tombstone_and_marks_it_replayed(h: &Harness) {
    let code = Digest::of(b"code");
    let grant = code_grant(h.now);
    h.store.put_code(code, &grant).await.unwrap();

    let first = issued("jti-1", h.now);
    let took = h.store.take_code(code, h.now + 1, &first, 600).await.unwrap();
    assert_eq!(took, CodeTake::Fresh(grant));
    assert!(!h.store.code_replayed(code).await.unwrap(), "a tombstone starts unreplayed");

    let took = h.store.take_code(code, h.now + 2, &issued("jti-2", h.now), 600).await.unwrap();
    assert_eq!(took, CodeTake::Replayed(first.clone()), "a replay sees what the first use issued");
    assert!(h.store.code_replayed(code).await.unwrap());

    let took = h.store.take_code(code, h.now + 3, &issued("jti-3", h.now), 600).await.unwrap();
    assert_eq!(took, CodeTake::Replayed(first), "every later use is a replay");
}

async fn peeking_a_code_changes_nothing_and_a_used_code_cannot_be_peeked(h: &Harness) {
    let code = Digest::of(b"code");
    let grant = code_grant(h.now);
    h.store.put_code(code, &grant).await.unwrap();

    assert_eq!(h.store.peek_code(code, h.now).await.unwrap(), Some(grant.clone()));
    assert_eq!(h.store.peek_code(code, h.now).await.unwrap(), Some(grant.clone()));
    assert_eq!(h.store.peek_code(code, grant.expires_at).await.unwrap(), None, "dead at expires_at");

    let took = h.store.take_code(code, h.now, &issued("jti-1", h.now), 600).await.unwrap();
    assert_eq!(took, CodeTake::Fresh(grant));
    assert_eq!(h.store.peek_code(code, h.now).await.unwrap(), None);
}

async fn an_expired_code_is_unknown_even_before_its_ttl_elapses(h: &Harness) {
    let code = Digest::of(b"code");
    let grant = code_grant(h.now);
    h.store.put_code(code, &grant).await.unwrap();

    let took = h.store.take_code(code, grant.expires_at, &issued("jti-1", h.now), 600).await.unwrap();
    assert_eq!(took, CodeTake::Unknown, "a code is dead at expires_at");
    let took = h.store.take_code(code, grant.expires_at + 1, &issued("jti-1", h.now), 600).await.unwrap();
    assert_eq!(took, CodeTake::Unknown);
    assert!(!h.store.code_replayed(code).await.unwrap());

    // A tombstone dies `tombstone_ttl` seconds after the first use, by the caller's clock too.
    let other = Digest::of(b"other code");
    h.store.put_code(other, &grant).await.unwrap();
    let first = issued("jti-2", h.now);
    assert!(matches!(h.store.take_code(other, h.now, &first, 30).await.unwrap(), CodeTake::Fresh(_)));
    let took = h.store.take_code(other, h.now + 29, &first, 30).await.unwrap();
    assert_eq!(took, CodeTake::Replayed(first.clone()));
    assert_eq!(h.store.take_code(other, h.now + 30, &first, 30).await.unwrap(), CodeTake::Unknown);
}

async fn an_unknown_code_is_unknown_and_not_replayed(h: &Harness) {
    let code = Digest::of(b"never stored");
    let took = h.store.take_code(code, h.now, &issued("jti-1", h.now), 600).await.unwrap();
    assert_eq!(took, CodeTake::Unknown);
    assert!(!h.store.code_replayed(code).await.unwrap());
    assert_eq!(h.store.peek_code(code, h.now).await.unwrap(), None);
    let took = h.store.take_code(code, h.now, &issued("jti-1", h.now), 600).await.unwrap();
    assert_eq!(took, CodeTake::Unknown, "taking an unknown code leaves no tombstone");
}

async fn of_32_concurrent_takes_of_one_code_exactly_one_is_fresh(h: &Harness) {
    let code = Digest::of(b"code");
    let grant = code_grant(h.now);
    h.store.put_code(code, &grant).await.unwrap();

    let barrier = Arc::new(tokio::sync::Barrier::new(32));
    let takes: Vec<_> = (0..32)
        .map(|i| {
            let store = if i % 2 == 0 { h.store.clone() } else { h.other.clone() };
            let barrier = barrier.clone();
            let now = h.now;
            tokio::spawn(async move {
                barrier.wait().await;
                store.take_code(code, now, &issued(&format!("jti-{i}"), now), 600).await.unwrap()
            })
        })
        .collect();
    let mut fresh = 0;
    let mut winner = None;
    let mut replays = Vec::new();
    for (i, take) in takes.into_iter().enumerate() {
        match take.await.unwrap() {
            CodeTake::Fresh(g) => {
                assert_eq!(g, grant);
                fresh += 1;
                winner = Some(format!("jti-{i}"));
            }
            CodeTake::Replayed(issued) => replays.push(issued.access_jti),
            CodeTake::Unknown => panic!("a live code was unknown to take {i}"),
        }
    }
    assert_eq!(fresh, 1, "exactly one take is fresh");
    let winner = winner.unwrap();
    assert!(replays.iter().all(|jti| *jti == winner), "every replay sees the winner's tombstone");
    assert!(h.store.code_replayed(code).await.unwrap());
}

async fn an_approved_device_is_handed_out_to_one_poll_then_consumed(h: &Harness) {
    let device = Digest::of(b"device");
    let grant = device_grant(h.now, "BCDF-GHJK");
    h.store.put_device(device, &grant).await.unwrap();

    let found = h.store.lookup_user_code("BCDF-GHJK", h.now).await.unwrap();
    assert_eq!(found, Some((grant.clone(), DeviceStatus::Pending)));
    assert_eq!(h.store.poll_device(device, h.now * 1000).await.unwrap(), DevicePoll::Pending);

    let decided = h.store.decide_device("BCDF-GHJK", &approve(h.now + 10), h.now + 10).await.unwrap();
    assert_eq!(decided, DecideOutcome::Decided);
    let again = h.store.decide_device("BCDF-GHJK", &DeviceDecision::Deny, h.now + 11).await.unwrap();
    assert_eq!(again, DecideOutcome::AlreadyDecided);
    let found = h.store.lookup_user_code("BCDF-GHJK", h.now + 11).await.unwrap();
    let approved = DeviceStatus::Approved { user_id: "user-1".into(), auth_time: h.now + 10 };
    assert_eq!(found, Some((grant.clone(), approved)));

    let poll = h.store.poll_device(device, (h.now + 20) * 1000).await.unwrap();
    assert_eq!(poll, DevicePoll::Approved { grant: grant.clone(), user_id: "user-1".into(), auth_time: h.now + 10 });
    let poll = h.store.poll_device(device, (h.now + 40) * 1000).await.unwrap();
    assert_eq!(poll, DevicePoll::Consumed);
    let found = h.store.lookup_user_code("BCDF-GHJK", h.now + 41).await.unwrap();
    assert_eq!(found, Some((grant, DeviceStatus::Consumed)));
}

async fn a_denied_device_polls_denied_and_cannot_be_decided_again(h: &Harness) {
    let device = Digest::of(b"device");
    h.store.put_device(device, &device_grant(h.now, "BCDF-GHJK")).await.unwrap();

    let decided = h.store.decide_device("BCDF-GHJK", &DeviceDecision::Deny, h.now).await.unwrap();
    assert_eq!(decided, DecideOutcome::Decided);
    let again = h.store.decide_device("BCDF-GHJK", &approve(h.now), h.now).await.unwrap();
    assert_eq!(again, DecideOutcome::AlreadyDecided);
    assert_eq!(h.store.poll_device(device, h.now * 1000).await.unwrap(), DevicePoll::Denied);
    assert_eq!(h.store.poll_device(device, (h.now + 10) * 1000).await.unwrap(), DevicePoll::Denied);
}

async fn polling_a_pending_device_too_soon_slows_it_down_by_five_seconds(h: &Harness) {
    let device = Digest::of(b"device");
    let grant = device_grant(h.now, "BCDF-GHJK");
    h.store.put_device(device, &grant).await.unwrap();
    let t0 = h.now * 1000;

    assert_eq!(h.store.poll_device(device, t0).await.unwrap(), DevicePoll::Pending, "the first poll is never early");
    let poll = h.store.poll_device(device, t0 + 4_999).await.unwrap();
    assert_eq!(poll, DevicePoll::SlowDown { interval: 10 });
    // The early poll counts as the previous one; the raised interval runs from it.
    let t1 = t0 + 4_999;
    let poll = h.store.poll_device(device, t1 + 9_999).await.unwrap();
    assert_eq!(poll, DevicePoll::SlowDown { interval: 15 });
    let t2 = t1 + 9_999;
    assert_eq!(h.store.poll_device(device, t2 + 15_000).await.unwrap(), DevicePoll::Pending);

    let (found, _) = h.store.lookup_user_code("BCDF-GHJK", h.now + 30).await.unwrap().unwrap();
    assert_eq!(found.interval, 15, "the raised interval is the grant's from now on");
    h.store.decide_device("BCDF-GHJK", &approve(h.now), h.now + 30).await.unwrap();
    match h.store.poll_device(device, t2 + 15_001).await.unwrap() {
        DevicePoll::Approved { grant: handed, .. } => assert_eq!(handed.interval, 15),
        other => panic!("an approved device polled {other:?}"),
    }
}

async fn an_expired_device_polls_expired_and_can_no_longer_be_found_or_decided(h: &Harness) {
    let device = Digest::of(b"device");
    let grant = device_grant(h.now, "BCDF-GHJK");
    h.store.put_device(device, &grant).await.unwrap();

    let poll = h.store.poll_device(device, grant.expires_at * 1000 - 1).await.unwrap();
    assert_eq!(poll, DevicePoll::Pending);
    let poll = h.store.poll_device(device, grant.expires_at * 1000).await.unwrap();
    assert_eq!(poll, DevicePoll::Expired, "dead at expires_at");
    assert_eq!(h.store.lookup_user_code("BCDF-GHJK", grant.expires_at).await.unwrap(), None);
    let decided = h.store.decide_device("BCDF-GHJK", &approve(h.now), grant.expires_at).await.unwrap();
    assert_eq!(decided, DecideOutcome::NotFound);

    // Expiry wins over an approval that was never collected.
    let late = Digest::of(b"late device");
    h.store.put_device(late, &device_grant(h.now, "LMNP-QRST")).await.unwrap();
    h.store.decide_device("LMNP-QRST", &approve(h.now), h.now).await.unwrap();
    assert_eq!(h.store.poll_device(late, (grant.expires_at + 5) * 1000).await.unwrap(), DevicePoll::Expired);
}

async fn an_unknown_device_or_user_code_is_unknown(h: &Harness) {
    assert_eq!(h.store.poll_device(Digest::of(b"nobody"), h.now * 1000).await.unwrap(), DevicePoll::Unknown);
    assert_eq!(h.store.lookup_user_code("VWXZ-BCDF", h.now).await.unwrap(), None);
    let decided = h.store.decide_device("VWXZ-BCDF", &approve(h.now), h.now).await.unwrap();
    assert_eq!(decided, DecideOutcome::NotFound);
}

async fn a_user_code_already_in_use_is_a_conflict(h: &Harness) {
    h.store.put_device(Digest::of(b"first"), &device_grant(h.now, "BCDF-GHJK")).await.unwrap();
    let second = Digest::of(b"second");
    let clash = h.store.put_device(second, &device_grant(h.now, "BCDF-GHJK")).await;
    assert!(matches!(clash, Err(StoreError::Conflict(_))), "{clash:?}");
    assert_eq!(h.store.poll_device(second, h.now * 1000).await.unwrap(), DevicePoll::Unknown, "nothing was stored");
    let Err(e) = clash else { unreachable!() };
    assert!(!e.to_string().contains("BCDF-GHJK"), "errors do not carry key contents: {e}");

    h.store.put_device(second, &device_grant(h.now, "LMNP-QRST")).await.unwrap();
}

async fn a_session_lives_until_it_expires_or_is_deleted(h: &Harness) {
    let handle = Digest::of(b"session");
    let s = session(h.now);
    h.store.put_session(handle, &s).await.unwrap();

    assert_eq!(h.store.get_session(handle, h.now).await.unwrap(), Some(s.clone()));
    assert_eq!(h.store.get_session(handle, s.expires_at - 1).await.unwrap(), Some(s.clone()));
    assert_eq!(h.store.get_session(handle, s.expires_at).await.unwrap(), None, "dead at expires_at");
    assert_eq!(h.store.get_session(Digest::of(b"nobody"), h.now).await.unwrap(), None);

    h.store.delete_session(handle).await.unwrap();
    assert_eq!(h.store.get_session(handle, h.now).await.unwrap(), None);
    h.store.delete_session(handle).await.unwrap();
}

const POLICY: ThrottlePolicy =
    ThrottlePolicy { free: 2, base_delay_ms: 1_000, max_delay_ms: 4_000, stop_after: 5, forget_after_ms: 60_000 };

async fn a_throttle_lets_the_free_attempts_through_then_delays_then_stops(h: &Harness) {
    use ThrottleOp::Take;
    let key = "source:192.0.2.1";
    let t0 = h.now * 1000;
    assert_eq!(h.store.throttle(key, &POLICY, Take, t0).await.unwrap(), Throttled::Allowed { count: 1 });
    // The second (free) attempt makes the next one wait 1 s; refused attempts are not counted.
    assert_eq!(h.other.throttle(key, &POLICY, Take, t0).await.unwrap(), Throttled::Allowed { count: 2 }, "any handle");
    assert_eq!(h.store.throttle(key, &POLICY, Take, t0 + 400).await.unwrap(), Throttled::Wait { retry_after_ms: 600 });
    assert_eq!(h.store.throttle(key, &POLICY, Take, t0 + 999).await.unwrap(), Throttled::Wait { retry_after_ms: 1 });
    assert_eq!(h.store.throttle(key, &POLICY, Take, t0 + 1_000).await.unwrap(), Throttled::Allowed { count: 3 });
    // …then 2 s, then 4 s (the cap).
    let early = h.store.throttle(key, &POLICY, Take, t0 + 2_000).await.unwrap();
    assert_eq!(early, Throttled::Wait { retry_after_ms: 1_000 });
    assert_eq!(h.store.throttle(key, &POLICY, Take, t0 + 3_000).await.unwrap(), Throttled::Allowed { count: 4 });
    assert_eq!(h.store.throttle(key, &POLICY, Take, t0 + 7_000).await.unwrap(), Throttled::Allowed { count: 5 });
    // Five counted: stopped until the key is forgotten, a minute after the last counted one.
    let stopped = h.store.throttle(key, &POLICY, Take, t0 + 60_000).await.unwrap();
    assert_eq!(stopped, Throttled::Stopped { retry_after_ms: 7_000 });
    let elsewhere = h.store.throttle("source:192.0.2.2", &POLICY, Take, t0).await.unwrap();
    assert_eq!(elsewhere, Throttled::Allowed { count: 1 }, "throttles are per key");
    assert_eq!(h.store.throttle(key, &POLICY, Take, t0 + 67_000).await.unwrap(), Throttled::Allowed { count: 1 });
}

async fn a_throttle_is_forgotten_after_quiet_and_forgiving_takes_attempts_back(h: &Harness) {
    use ThrottleOp::{Peek, Record, Take};
    let key = "login:alice";
    let t0 = h.now * 1000;
    assert_eq!(h.store.throttle(key, &POLICY, Take, t0).await.unwrap(), Throttled::Allowed { count: 1 });
    assert_eq!(h.store.throttle(key, &POLICY, Peek, t0).await.unwrap(), Throttled::Allowed { count: 1 });
    assert_eq!(
        h.store.throttle(key, &POLICY, Peek, t0).await.unwrap(),
        Throttled::Allowed { count: 1 },
        "a peek counts nothing"
    );
    h.store.forgive(key, false).await.unwrap();
    assert_eq!(
        h.store.throttle(key, &POLICY, Take, t0).await.unwrap(),
        Throttled::Allowed { count: 1 },
        "one taken back"
    );
    h.store.forgive(key, true).await.unwrap();
    assert_eq!(
        h.store.throttle(key, &POLICY, Take, t0).await.unwrap(),
        Throttled::Allowed { count: 1 },
        "all taken back"
    );
    // Failures seen after the fact are counted whatever the state, and delays never shorten.
    assert_eq!(h.store.throttle(key, &POLICY, Record, t0 + 10).await.unwrap(), Throttled::Allowed { count: 2 });
    assert_eq!(h.store.throttle(key, &POLICY, Record, t0 + 10).await.unwrap(), Throttled::Allowed { count: 3 });
    assert_eq!(h.store.throttle(key, &POLICY, Peek, t0 + 10).await.unwrap(), Throttled::Wait { retry_after_ms: 2_000 });
    let forgotten = h.store.throttle(key, &POLICY, Peek, t0 + 60_010).await.unwrap();
    assert_eq!(forgotten, Throttled::Allowed { count: 0 }, "forgotten a minute after the last counted attempt");
    h.store.forgive("login:nobody", false).await.unwrap();
    h.store.forgive("login:nobody", true).await.unwrap();
}

async fn a_rate_without_delays_never_makes_a_caller_wait_for_a_clock_read_a_moment_late(h: &Harness) {
    use ThrottleOp::Take;
    // Three a minute, no delays: concurrent callers read the clock in one order and reach the
    // store in another; only the limit refuses.
    let rate = ThrottlePolicy { free: 3, base_delay_ms: 0, max_delay_ms: 0, stop_after: 3, forget_after_ms: 60_000 };
    let (key, t0) = ("device-start:192.0.2.9", h.now * 1000);
    assert_eq!(h.store.throttle(key, &rate, Take, t0 + 5).await.unwrap(), Throttled::Allowed { count: 1 });
    assert_eq!(h.store.throttle(key, &rate, Take, t0 + 3).await.unwrap(), Throttled::Allowed { count: 2 });
    assert_eq!(h.other.throttle(key, &rate, Take, t0).await.unwrap(), Throttled::Allowed { count: 3 });
    assert!(matches!(h.store.throttle(key, &rate, Take, t0 + 6).await.unwrap(), Throttled::Stopped { .. }));
}

async fn of_40_concurrent_attempts_a_throttle_lets_only_its_policy_through(h: &Harness) {
    let t0 = h.now * 1000;
    let attempts = (0..40).map(|i| {
        let store = if i % 2 == 0 { Arc::clone(&h.store) } else { Arc::clone(&h.other) };
        async move { store.throttle("login:bob", &POLICY, ThrottleOp::Take, t0).await.unwrap() }
    });
    let outcomes = futures::future::join_all(attempts).await;
    let allowed = outcomes.iter().filter(|o| matches!(o, Throttled::Allowed { .. })).count();
    assert_eq!(allowed, 2, "only the free attempts: {outcomes:?}");
}

async fn a_revocation_made_on_another_handle_reaches_a_subscriber(h: &Harness) {
    let mut revocations = h.store.subscribe_revocations().await.unwrap();
    let first = Revocation::Access { jti: "jti-1".into(), exp: h.now + 600 };
    let second = Revocation::Access { jti: "jti 2 with spaces".into(), exp: h.now + 900 };
    let third = Revocation::Client { id: "svc".into(), before: Revocation::FOREVER };
    h.other.publish_revocation(&first).await.unwrap();
    h.store.publish_revocation(&second).await.unwrap();
    h.other.publish_revocation(&third).await.unwrap();

    for expected in [first, second, third] {
        let got = tokio::time::timeout(Duration::from_secs(3), revocations.next()).await;
        assert_eq!(got.expect("the revocation arrives in time"), Some(expected));
    }
}

// ---------------------------------------------------------------------------------------------
// Adapter-specific behaviour

#[tokio::test]
async fn connecting_to_a_redis_that_is_down_fails_fast_as_unavailable() {
    let started = Instant::now();
    let outcome = match RedisEphemeral::connect("redis://127.0.0.1:1", "tessera-test:down:").await {
        Err(e) => Err(e),
        Ok(store) => store.ping().await,
    };
    assert!(matches!(outcome, Err(StoreError::Unavailable { .. })), "{outcome:?}");
    assert!(started.elapsed() < Duration::from_secs(5), "took {:?}", started.elapsed());
}

#[tokio::test]
async fn a_lagging_memory_subscriber_sees_its_stream_end_so_it_reloads() {
    let store = MemoryEphemeral::new();
    let mut revocations = store.subscribe_revocations().await.unwrap();
    for i in 0..10_000 {
        store.publish_revocation(&Revocation::Access { jti: format!("jti-{i}"), exp: wall_now() + 60 }).await.unwrap();
    }
    let end = tokio::time::timeout(Duration::from_secs(1), revocations.next()).await.unwrap();
    assert_eq!(end, None, "the caller then reads the durable log and subscribes again");
}

#[tokio::test]
async fn connecting_to_a_sentinel_or_cluster_that_is_down_fails_fast_as_unavailable() {
    for url in ["redis+sentinel://127.0.0.1:1,127.0.0.1:2/mymaster", "redis+cluster://127.0.0.1:1,127.0.0.1:2"] {
        let started = Instant::now();
        let outcome = RedisEphemeral::connect(url, "tessera-test:down:").await;
        assert!(matches!(outcome, Err(StoreError::Unavailable { .. })), "{url}: {outcome:?}");
        assert!(started.elapsed() < Duration::from_secs(5), "{url}: took {:?}", started.elapsed());
    }
}

#[tokio::test]
async fn a_bad_url_or_a_braced_cluster_prefix_is_refused_without_quoting_the_password() {
    for (url, prefix) in [
        ("redis+sentinel://:hunter2@127.0.0.1:26379", "tessera-test:"),
        ("redis+cluster://:hunter2@127.0.0.1:7000/3", "tessera-test:"),
        ("redis-cluster://:hunter2@127.0.0.1:7000", "tessera-test:"),
        ("redis+cluster://:hunter2@127.0.0.1:7000", "{tessera}:"),
    ] {
        match RedisEphemeral::connect(url, prefix).await {
            Err(StoreError::Other(message)) => assert!(!message.contains("hunter2"), "{url}: {message}"),
            other => panic!("{url}: {other:?}"),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Sentinel and Cluster, against throwaway servers

/// Runs every contract case against the store `url` names, each with a fresh key prefix and
/// fresh handles, and fails with the names of the cases that failed.
async fn run_contract(mode: &str, url: &str) {
    let started = Instant::now();
    let mut failed = Vec::new();
    for (name, case) in CASES {
        let prefix = format!("tessera-test:{}:", tessera_crypto::random_secret(9));
        let store = RedisEphemeral::connect(url, &prefix).await.unwrap_or_else(|e| panic!("{mode}: {e}"));
        let other = RedisEphemeral::connect(url, &prefix).await.unwrap_or_else(|e| panic!("{mode}: {e}"));
        let h = Harness { store: Arc::new(store), other: Arc::new(other), now: wall_now(), _cleanup: None };
        if std::panic::AssertUnwindSafe(case(&h)).catch_unwind().await.is_err() {
            eprintln!("{mode}: contract case {name} FAILED");
            failed.push(*name);
        }
    }
    eprintln!("{mode}: {} contract cases in {:?}", CASES.len(), started.elapsed());
    assert!(failed.is_empty(), "{mode}: {} of {} contract cases failed: {failed:?}", failed.len(), CASES.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sentinel_store_keeps_the_contract() {
    let Some(mut servers) = Servers::new("sentinel contract") else { return };
    let master = servers.start_redis("master", &[]);
    let sentinel = servers.start_sentinel(master);
    servers.wait_for_sentinel(sentinel, 0);
    run_contract("sentinel", &format!("redis+sentinel://127.0.0.1:{sentinel}/mymaster")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_store_keeps_the_contract_and_subscribes_past_dead_nodes() {
    let Some(mut servers) = Servers::new("cluster contract") else { return };
    let nodes = servers.start_cluster(3);
    let hosts: Vec<String> = nodes.iter().map(|port| format!("127.0.0.1:{port}")).collect();
    run_contract("cluster", &format!("redis+cluster://{}", hosts.join(","))).await;

    // A seed that is down is passed over, by the cluster connection and by the subscription.
    let url = format!("redis+cluster://127.0.0.1:{},{}", dead_port(), hosts.join(","));
    let prefix = format!("tessera-test:{}:", tessera_crypto::random_secret(9));
    let store = RedisEphemeral::connect(&url, &prefix).await.unwrap();
    let mut revocations = store.subscribe_revocations().await.unwrap();
    let now = wall_now();
    let first = Revocation::Access { jti: "jti-1".into(), exp: now + 600 };
    store.publish_revocation(&first).await.unwrap();
    let got = tokio::time::timeout(Duration::from_secs(3), revocations.next()).await;
    assert_eq!(got.expect("the revocation arrives in time"), Some(first));

    // The node a subscription uses dies: the stream ends, and the next subscription lands on
    // another node.
    let doomed = 0;
    let mut order = hosts.clone();
    order.rotate_left(doomed);
    let url = format!("redis+cluster://{}", order.join(","));
    let store = RedisEphemeral::connect(&url, &prefix).await.unwrap();
    let mut revocations = store.subscribe_revocations().await.unwrap();
    servers.kill(&format!("node{doomed}"));
    let ended = tokio::time::timeout(Duration::from_secs(5), revocations.next()).await;
    assert_eq!(ended.expect("the subscription ends with its node"), None);
    let mut revocations = store.subscribe_revocations().await.unwrap();
    let second = Revocation::Access { jti: "jti-2".into(), exp: now + 600 };
    store.publish_revocation(&second).await.unwrap();
    let got = tokio::time::timeout(Duration::from_secs(3), revocations.next()).await;
    assert_eq!(got.expect("the revocation arrives in time"), Some(second));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sentinel_store_follows_a_failover_to_the_promoted_replica() {
    let Some(mut servers) = Servers::new("sentinel failover") else { return };
    // The replica's first sync starts at once rather than after the default 5 s.
    let master = servers.start_redis("master", &["--repl-diskless-sync-delay", "0"]);
    let replica = servers.start_redis("replica", &["--replicaof", "127.0.0.1", &master.to_string()]);
    let sentinel = servers.start_sentinel(master);
    servers.wait_for_sentinel(sentinel, 1);

    let url = format!("redis+sentinel://127.0.0.1:{sentinel}/mymaster");
    let prefix = format!("tessera-test:{}:", tessera_crypto::random_secret(9));
    let store = RedisEphemeral::connect(&url, &prefix).await.unwrap();
    let other = RedisEphemeral::connect(&url, &prefix).await.unwrap();
    let now = wall_now();
    let code = Digest::of(b"code");
    let grant = code_grant(now);
    store.put_code(code, &grant).await.unwrap();
    other.ping().await.unwrap();
    let mut revocations = store.subscribe_revocations().await.unwrap();
    // Everything written so far is on the replica before the master goes. WAIT covers only
    // the writes of its own connection, so that connection writes first: the replication
    // stream is ordered, and the store's earlier writes come before this one.
    let mut barrier = sync_conn(master);
    let _: () = redis::cmd("SET").arg(format!("{prefix}barrier")).arg(1).query(&mut barrier).unwrap();
    let synced: i64 = redis::cmd("WAIT").arg(1).arg(5000).query(&mut barrier).unwrap();
    assert_eq!(synced, 1, "the replica acknowledged the writes");

    let killed = Instant::now();
    servers.kill("master");
    let ended = tokio::time::timeout(Duration::from_secs(5), revocations.next()).await;
    assert_eq!(ended.expect("the subscription ends with its connection"), None);

    // Until a sentinel promotes the replica every command fails as unavailable; then the same
    // handle works again, against the promoted replica, with what the old master held.
    let deadline = killed + Duration::from_secs(20);
    let peeked = loop {
        match store.peek_code(code, now).await {
            Ok(peeked) => break peeked,
            Err(StoreError::Unavailable { .. }) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await
            }
            Err(e) => panic!("{:?} after the master died: {e:?}", killed.elapsed()),
        }
    };
    eprintln!("sentinel failover: the store answered again {:?} after the master died", killed.elapsed());
    assert_eq!(peeked, Some(grant.clone()));
    let role: Vec<redis::Value> = redis::cmd("ROLE").query(&mut sync_conn(replica)).unwrap();
    assert_eq!(role.first(), Some(&redis::Value::BulkString(b"master".to_vec())), "the replica was promoted");
    assert_eq!(store.take_code(code, now, &issued("jti-1", now), 600).await.unwrap(), CodeTake::Fresh(grant));

    // The other handle, idle through the failover, finds the new master by itself too, and a
    // new subscription hears what it announces.
    let mut revocations = store.subscribe_revocations().await.unwrap();
    let announced = Revocation::Access { jti: "jti-2".into(), exp: now + 600 };
    loop {
        match other.publish_revocation(&announced).await {
            Ok(()) => break,
            Err(StoreError::Unavailable { .. }) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await
            }
            Err(e) => panic!("{:?} after the master died: {e:?}", killed.elapsed()),
        }
    }
    let heard = tokio::time::timeout(Duration::from_secs(3), revocations.next()).await;
    assert_eq!(heard.expect("the revocation arrives in time"), Some(announced));
    assert!(store.code_replayed(code).await.is_ok());
}

/// A blocking connection to a throwaway server, for setting up and checking on it.
fn sync_conn(port: u16) -> redis::Connection {
    redis::Client::open(format!("redis://127.0.0.1:{port}"))
        .and_then(|c| c.get_connection_with_timeout(Duration::from_secs(2)))
        .unwrap_or_else(|e| panic!("connecting to 127.0.0.1:{port}: {e}"))
}

/// A loopback port nothing listens on.
fn dead_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

/// A free port in 20000–27999, below the range the kernel picks outgoing ports from; with
/// `bus`, the cluster bus port 10000 above it is free too.
fn free_port(bus: bool) -> u16 {
    use std::hash::{BuildHasher, Hasher};
    let free = |port: u16| std::net::TcpListener::bind(("127.0.0.1", port)).is_ok();
    for attempt in 0u64.. {
        let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
        hasher.write_u64(attempt);
        let port = 20_000 + (hasher.finish() % 8_000) as u16;
        if free(port) && (!bus || free(port + 10_000)) {
            return port;
        }
        assert!(attempt < 1_000, "no free port found");
    }
    unreachable!()
}

fn which(name: &str) -> Option<std::path::PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|dir| dir.join(name)).find(|candidate| candidate.is_file())
}

/// Polls `ready` every 50 ms until it holds, or panics naming `what` after `limit`.
fn wait_until(what: &str, limit: Duration, mut ready: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !ready() {
        assert!(Instant::now() < deadline, "{what}: not ready after {limit:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Throwaway Redis processes in a temporary directory. Every process is killed when this is
/// dropped, a failing test included (and then the end of each log is printed).
struct Servers {
    server: std::path::PathBuf,
    cli: std::path::PathBuf,
    /// `redis-sentinel`, or `redis-server` with `--sentinel` after the config file.
    sentinel: (std::path::PathBuf, Option<&'static str>),
    dir: tempfile::TempDir,
    procs: Vec<(String, std::process::Child)>,
}

impl Servers {
    /// `None` (after a loud `SKIPPED:` line) if the binaries are missing; a failure instead
    /// when `CI` is set.
    fn new(suite: &str) -> Option<Self> {
        let (Some(server), Some(cli)) = (which("redis-server"), which("redis-cli")) else {
            tessera_testkit::skip_or_fail(format!("{suite}: redis-server and redis-cli are not both on the PATH"));
            return None;
        };
        let sentinel = match which("redis-sentinel") {
            Some(sentinel) => (sentinel, None),
            None => (server.clone(), Some("--sentinel")),
        };
        let dir = tempfile::Builder::new().prefix("tessera-redis-").tempdir().expect("a temporary directory");
        Some(Self { server, cli, sentinel, dir, procs: Vec::new() })
    }

    fn log(&self, name: &str) -> std::path::PathBuf {
        self.dir.path().join(format!("{name}.log"))
    }

    fn spawn(&mut self, name: &str, command: &mut std::process::Command) {
        let child = command
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {name}: {e}"));
        self.procs.push((name.to_owned(), child));
    }

    /// Waits until the server on `port` answers PING, or fails if it exited.
    fn wait_for_ping(&mut self, name: &str, port: u16) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let pong = redis::Client::open(format!("redis://127.0.0.1:{port}"))
                .and_then(|c| c.get_connection_with_timeout(Duration::from_millis(200)))
                .and_then(|mut c| redis::cmd("PING").query::<String>(&mut c));
            if pong.is_ok() {
                return;
            }
            if let Some((_, child)) = self.procs.iter_mut().find(|(n, _)| n == name) {
                if let Ok(Some(status)) = child.try_wait() {
                    panic!("{name} exited ({status}) before answering on port {port}");
                }
            }
            assert!(Instant::now() < deadline, "{name} did not answer on port {port}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Starts a redis-server that saves nothing, and returns its port.
    fn start_redis(&mut self, name: &str, extra: &[&str]) -> u16 {
        let cluster = extra.contains(&"--cluster-enabled");
        let port = free_port(cluster);
        let mut command = std::process::Command::new(&self.server);
        command
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(self.dir.path())
            .arg("--logfile")
            .arg(self.log(name))
            .args(extra);
        self.spawn(name, &mut command);
        self.wait_for_ping(name, port);
        port
    }

    /// Starts a sentinel monitoring `mymaster` on `master_port` with a quorum of 1 and quick
    /// failure detection, and returns its port.
    fn start_sentinel(&mut self, master_port: u16) -> u16 {
        let port = free_port(false);
        let dir = self.dir.path().display().to_string();
        let config = self.dir.path().join("sentinel.conf");
        std::fs::write(
            &config,
            format!(
                "port {port}\nbind 127.0.0.1\ndir {dir}\nlogfile {log}\n\
                 sentinel monitor mymaster 127.0.0.1 {master_port} 1\n\
                 sentinel down-after-milliseconds mymaster 500\n\
                 sentinel failover-timeout mymaster 1500\n",
                log = self.log("sentinel").display(),
            ),
        )
        .expect("writing sentinel.conf");
        let (program, flag) = self.sentinel.clone();
        let mut command = std::process::Command::new(program);
        command.arg(&config).args(flag);
        self.spawn("sentinel", &mut command);
        self.wait_for_ping("sentinel", port);
        port
    }

    /// Waits until the sentinel sees its master up, and `replicas` replicas linked to it.
    fn wait_for_sentinel(&mut self, port: u16, replicas: usize) {
        let mut conn = sync_conn(port);
        wait_until("the sentinel's view of its master", Duration::from_secs(15), || {
            let master: redis::RedisResult<std::collections::HashMap<String, String>> =
                redis::cmd("SENTINEL").arg("MASTER").arg("mymaster").query(&mut conn);
            let Ok(master) = master else { return false };
            if master.get("flags").map(String::as_str) != Some("master") {
                return false;
            }
            let listed: redis::RedisResult<Vec<std::collections::HashMap<String, String>>> =
                redis::cmd("SENTINEL").arg("REPLICAS").arg("mymaster").query(&mut conn);
            let good = listed.unwrap_or_default().into_iter().filter(|r| {
                r.get("flags").map(String::as_str) == Some("slave")
                    && r.get("master-link-status").map(String::as_str) == Some("ok")
            });
            good.count() == replicas
        });
    }

    /// Starts `count` cluster nodes named `node0`…, joins them into one cluster with every slot
    /// assigned, and returns their ports once every node says `cluster_state:ok`.
    fn start_cluster(&mut self, count: usize) -> Vec<u16> {
        let ports: Vec<u16> = (0..count)
            .map(|i| {
                let name = format!("node{i}");
                let config = self.dir.path().join(format!("{name}-nodes.conf")).display().to_string();
                self.start_redis(
                    &name,
                    &[
                        "--cluster-enabled",
                        "yes",
                        "--cluster-config-file",
                        &config,
                        "--cluster-node-timeout",
                        "2000",
                        // A node that dies takes only its own slots down.
                        "--cluster-require-full-coverage",
                        "no",
                    ],
                )
            })
            .collect();
        let mut create = std::process::Command::new(&self.cli);
        create
            .arg("--cluster")
            .arg("create")
            .args(ports.iter().map(|port| format!("127.0.0.1:{port}")))
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .stdin(std::process::Stdio::null())
            .stdout(std::fs::File::create(self.log("cluster-create")).expect("a log file"))
            .stderr(std::process::Stdio::null());
        let mut child = create.spawn().expect("running redis-cli --cluster create");
        let deadline = Instant::now() + Duration::from_secs(30);
        let status = loop {
            if let Some(status) = child.try_wait().expect("waiting for redis-cli") {
                break status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("redis-cli --cluster create did not finish in 30 s");
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        assert!(status.success(), "redis-cli --cluster create failed ({status}); see cluster-create.log");
        for port in &ports {
            let mut conn = sync_conn(*port);
            wait_until(&format!("cluster node {port}"), Duration::from_secs(20), || {
                let info: String = redis::cmd("CLUSTER").arg("INFO").query(&mut conn).unwrap_or_default();
                info.contains("cluster_state:ok") && info.contains(&format!("cluster_known_nodes:{count}"))
            });
        }
        ports
    }

    /// Kills one process now, as a crash would.
    fn kill(&mut self, name: &str) {
        if let Some(i) = self.procs.iter().position(|(n, _)| n == name) {
            let (_, mut child) = self.procs.remove(i);
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Servers {
    fn drop(&mut self) {
        for (_, child) in &mut self.procs {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            let Ok(entries) = std::fs::read_dir(self.dir.path()) else { return };
            for entry in entries.flatten() {
                let path = entry.path();
                if path.extension().is_some_and(|e| e == "log") {
                    let log = std::fs::read_to_string(&path).unwrap_or_default();
                    let tail: Vec<&str> = log.lines().rev().take(15).collect();
                    eprintln!("--- {} (last lines) ---", path.display());
                    for line in tail.iter().rev() {
                        eprintln!("{line}");
                    }
                }
            }
        }
    }
}
