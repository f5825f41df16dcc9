//! The ephemeral port's contract, written once against `dyn Ephemeral` and stamped out for
//! every adapter by `contract!`. Redis tests use a random key prefix each and delete their keys
//! when done; without a reachable Redis they are skipped loudly, or fail when `CI` is set.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures::StreamExt as _;
use tessera_core::clock::ManualClock;
use tessera_core::ports::{
    CodeGrant, CodeTake, DecideOutcome, DeviceDecision, DeviceGrant, DevicePoll, DeviceStatus,
    Ephemeral, Issued, LoginSession,
};
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
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

fn redis_url() -> String {
    std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned())
}

async fn memory() -> Option<Harness> {
    let store = MemoryEphemeral::new();
    Some(Harness {
        other: Arc::new(store.clone()),
        store: Arc::new(store),
        now: wall_now(),
        _cleanup: None,
    })
}

async fn redis() -> Option<Harness> {
    let url = redis_url();
    let prefix = format!("tessera-test:{}:", tessera_crypto::random_secret(9));
    let store = match RedisEphemeral::connect(&url, &prefix).await {
        Ok(store) => store,
        Err(e) if std::env::var_os("CI").is_some() => {
            panic!("redis unreachable at {url} with CI set: {e}")
        }
        Err(e) => {
            eprintln!("\n*** SKIPPED: redis unreachable at {url} ({e}) ***\n");
            return None;
        }
    };
    let cleanup = RedisCleanup {
        url: url.clone(),
        prefix: prefix.clone(),
    };
    let other = RedisEphemeral::connect(&url, &prefix)
        .await
        .expect("a second connection to redis");
    Some(Harness {
        store: Arc::new(store),
        other: Arc::new(other),
        now: wall_now(),
        _cleanup: Some(cleanup),
    })
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
        let keys: Vec<String> =
            match redis::Commands::scan_match(&mut conn, format!("{}*", self.prefix)) {
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
    };
}

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
    failures_count_up_within_the_window_and_start_again_after_it,
    clearing_failures_resets_the_count,
    revoked_access_lists_revocations_until_they_expire,
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
    Issued {
        access_jti: jti.into(),
        access_exp: now + 3600,
        family_id: Some(format!("family-of-{jti}")),
    }
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
    LoginSession {
        user_id: "user-1".into(),
        username: "alice".into(),
        auth_time: now,
        expires_at: now + 3600,
    }
}

fn approve(now: i64) -> DeviceDecision {
    DeviceDecision::Approve {
        user_id: "user-1".into(),
        auth_time: now,
    }
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
    let took = h
        .store
        .take_code(code, h.now + 1, &first, 600)
        .await
        .unwrap();
    assert_eq!(took, CodeTake::Fresh(grant));
    assert!(
        !h.store.code_replayed(code).await.unwrap(),
        "a tombstone starts unreplayed"
    );

    let took = h
        .store
        .take_code(code, h.now + 2, &issued("jti-2", h.now), 600)
        .await
        .unwrap();
    assert_eq!(
        took,
        CodeTake::Replayed(first.clone()),
        "a replay sees what the first use issued"
    );
    assert!(h.store.code_replayed(code).await.unwrap());

    let took = h
        .store
        .take_code(code, h.now + 3, &issued("jti-3", h.now), 600)
        .await
        .unwrap();
    assert_eq!(
        took,
        CodeTake::Replayed(first),
        "every later use is a replay"
    );
}

async fn peeking_a_code_changes_nothing_and_a_used_code_cannot_be_peeked(h: &Harness) {
    let code = Digest::of(b"code");
    let grant = code_grant(h.now);
    h.store.put_code(code, &grant).await.unwrap();

    assert_eq!(
        h.store.peek_code(code, h.now).await.unwrap(),
        Some(grant.clone())
    );
    assert_eq!(
        h.store.peek_code(code, h.now).await.unwrap(),
        Some(grant.clone())
    );
    assert_eq!(
        h.store.peek_code(code, grant.expires_at).await.unwrap(),
        None,
        "dead at expires_at"
    );

    let took = h
        .store
        .take_code(code, h.now, &issued("jti-1", h.now), 600)
        .await
        .unwrap();
    assert_eq!(took, CodeTake::Fresh(grant));
    assert_eq!(h.store.peek_code(code, h.now).await.unwrap(), None);
}

async fn an_expired_code_is_unknown_even_before_its_ttl_elapses(h: &Harness) {
    let code = Digest::of(b"code");
    let grant = code_grant(h.now);
    h.store.put_code(code, &grant).await.unwrap();

    let took = h
        .store
        .take_code(code, grant.expires_at, &issued("jti-1", h.now), 600)
        .await
        .unwrap();
    assert_eq!(took, CodeTake::Unknown, "a code is dead at expires_at");
    let took = h
        .store
        .take_code(code, grant.expires_at + 1, &issued("jti-1", h.now), 600)
        .await
        .unwrap();
    assert_eq!(took, CodeTake::Unknown);
    assert!(!h.store.code_replayed(code).await.unwrap());

    // A tombstone dies `tombstone_ttl` seconds after the first use, by the caller's clock too.
    let other = Digest::of(b"other code");
    h.store.put_code(other, &grant).await.unwrap();
    let first = issued("jti-2", h.now);
    assert!(matches!(
        h.store.take_code(other, h.now, &first, 30).await.unwrap(),
        CodeTake::Fresh(_)
    ));
    let took = h
        .store
        .take_code(other, h.now + 29, &first, 30)
        .await
        .unwrap();
    assert_eq!(took, CodeTake::Replayed(first.clone()));
    assert_eq!(
        h.store
            .take_code(other, h.now + 30, &first, 30)
            .await
            .unwrap(),
        CodeTake::Unknown
    );
}

async fn an_unknown_code_is_unknown_and_not_replayed(h: &Harness) {
    let code = Digest::of(b"never stored");
    let took = h
        .store
        .take_code(code, h.now, &issued("jti-1", h.now), 600)
        .await
        .unwrap();
    assert_eq!(took, CodeTake::Unknown);
    assert!(!h.store.code_replayed(code).await.unwrap());
    assert_eq!(h.store.peek_code(code, h.now).await.unwrap(), None);
    let took = h
        .store
        .take_code(code, h.now, &issued("jti-1", h.now), 600)
        .await
        .unwrap();
    assert_eq!(
        took,
        CodeTake::Unknown,
        "taking an unknown code leaves no tombstone"
    );
}

async fn of_32_concurrent_takes_of_one_code_exactly_one_is_fresh(h: &Harness) {
    let code = Digest::of(b"code");
    let grant = code_grant(h.now);
    h.store.put_code(code, &grant).await.unwrap();

    let barrier = Arc::new(tokio::sync::Barrier::new(32));
    let takes: Vec<_> = (0..32)
        .map(|i| {
            let store = if i % 2 == 0 {
                h.store.clone()
            } else {
                h.other.clone()
            };
            let barrier = barrier.clone();
            let now = h.now;
            tokio::spawn(async move {
                barrier.wait().await;
                store
                    .take_code(code, now, &issued(&format!("jti-{i}"), now), 600)
                    .await
                    .unwrap()
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
    assert!(
        replays.iter().all(|jti| *jti == winner),
        "every replay sees the winner's tombstone"
    );
    assert!(h.store.code_replayed(code).await.unwrap());
}

async fn an_approved_device_is_handed_out_to_one_poll_then_consumed(h: &Harness) {
    let device = Digest::of(b"device");
    let grant = device_grant(h.now, "BCDF-GHJK");
    h.store.put_device(device, &grant).await.unwrap();

    let found = h.store.lookup_user_code("BCDF-GHJK", h.now).await.unwrap();
    assert_eq!(found, Some((grant.clone(), DeviceStatus::Pending)));
    assert_eq!(
        h.store.poll_device(device, h.now * 1000).await.unwrap(),
        DevicePoll::Pending
    );

    let decided = h
        .store
        .decide_device("BCDF-GHJK", &approve(h.now + 10), h.now + 10)
        .await
        .unwrap();
    assert_eq!(decided, DecideOutcome::Decided);
    let again = h
        .store
        .decide_device("BCDF-GHJK", &DeviceDecision::Deny, h.now + 11)
        .await
        .unwrap();
    assert_eq!(again, DecideOutcome::AlreadyDecided);
    let found = h
        .store
        .lookup_user_code("BCDF-GHJK", h.now + 11)
        .await
        .unwrap();
    let approved = DeviceStatus::Approved {
        user_id: "user-1".into(),
        auth_time: h.now + 10,
    };
    assert_eq!(found, Some((grant.clone(), approved)));

    let poll = h
        .store
        .poll_device(device, (h.now + 20) * 1000)
        .await
        .unwrap();
    assert_eq!(
        poll,
        DevicePoll::Approved {
            grant: grant.clone(),
            user_id: "user-1".into(),
            auth_time: h.now + 10
        }
    );
    let poll = h
        .store
        .poll_device(device, (h.now + 40) * 1000)
        .await
        .unwrap();
    assert_eq!(poll, DevicePoll::Consumed);
    let found = h
        .store
        .lookup_user_code("BCDF-GHJK", h.now + 41)
        .await
        .unwrap();
    assert_eq!(found, Some((grant, DeviceStatus::Consumed)));
}

async fn a_denied_device_polls_denied_and_cannot_be_decided_again(h: &Harness) {
    let device = Digest::of(b"device");
    h.store
        .put_device(device, &device_grant(h.now, "BCDF-GHJK"))
        .await
        .unwrap();

    let decided = h
        .store
        .decide_device("BCDF-GHJK", &DeviceDecision::Deny, h.now)
        .await
        .unwrap();
    assert_eq!(decided, DecideOutcome::Decided);
    let again = h
        .store
        .decide_device("BCDF-GHJK", &approve(h.now), h.now)
        .await
        .unwrap();
    assert_eq!(again, DecideOutcome::AlreadyDecided);
    assert_eq!(
        h.store.poll_device(device, h.now * 1000).await.unwrap(),
        DevicePoll::Denied
    );
    assert_eq!(
        h.store
            .poll_device(device, (h.now + 10) * 1000)
            .await
            .unwrap(),
        DevicePoll::Denied
    );
}

async fn polling_a_pending_device_too_soon_slows_it_down_by_five_seconds(h: &Harness) {
    let device = Digest::of(b"device");
    let grant = device_grant(h.now, "BCDF-GHJK");
    h.store.put_device(device, &grant).await.unwrap();
    let t0 = h.now * 1000;

    assert_eq!(
        h.store.poll_device(device, t0).await.unwrap(),
        DevicePoll::Pending,
        "the first poll is never early"
    );
    let poll = h.store.poll_device(device, t0 + 4_999).await.unwrap();
    assert_eq!(poll, DevicePoll::SlowDown { interval: 10 });
    // The early poll counts as the previous one; the raised interval runs from it.
    let t1 = t0 + 4_999;
    let poll = h.store.poll_device(device, t1 + 9_999).await.unwrap();
    assert_eq!(poll, DevicePoll::SlowDown { interval: 15 });
    let t2 = t1 + 9_999;
    assert_eq!(
        h.store.poll_device(device, t2 + 15_000).await.unwrap(),
        DevicePoll::Pending
    );

    let (found, _) = h
        .store
        .lookup_user_code("BCDF-GHJK", h.now + 30)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        found.interval, 15,
        "the raised interval is the grant's from now on"
    );
    h.store
        .decide_device("BCDF-GHJK", &approve(h.now), h.now + 30)
        .await
        .unwrap();
    match h.store.poll_device(device, t2 + 15_001).await.unwrap() {
        DevicePoll::Approved { grant: handed, .. } => assert_eq!(handed.interval, 15),
        other => panic!("an approved device polled {other:?}"),
    }
}

async fn an_expired_device_polls_expired_and_can_no_longer_be_found_or_decided(h: &Harness) {
    let device = Digest::of(b"device");
    let grant = device_grant(h.now, "BCDF-GHJK");
    h.store.put_device(device, &grant).await.unwrap();

    let poll = h
        .store
        .poll_device(device, grant.expires_at * 1000 - 1)
        .await
        .unwrap();
    assert_eq!(poll, DevicePoll::Pending);
    let poll = h
        .store
        .poll_device(device, grant.expires_at * 1000)
        .await
        .unwrap();
    assert_eq!(poll, DevicePoll::Expired, "dead at expires_at");
    assert_eq!(
        h.store
            .lookup_user_code("BCDF-GHJK", grant.expires_at)
            .await
            .unwrap(),
        None
    );
    let decided = h
        .store
        .decide_device("BCDF-GHJK", &approve(h.now), grant.expires_at)
        .await
        .unwrap();
    assert_eq!(decided, DecideOutcome::NotFound);

    // Expiry wins over an approval that was never collected.
    let late = Digest::of(b"late device");
    h.store
        .put_device(late, &device_grant(h.now, "LMNP-QRST"))
        .await
        .unwrap();
    h.store
        .decide_device("LMNP-QRST", &approve(h.now), h.now)
        .await
        .unwrap();
    assert_eq!(
        h.store
            .poll_device(late, (grant.expires_at + 5) * 1000)
            .await
            .unwrap(),
        DevicePoll::Expired
    );
}

async fn an_unknown_device_or_user_code_is_unknown(h: &Harness) {
    assert_eq!(
        h.store
            .poll_device(Digest::of(b"nobody"), h.now * 1000)
            .await
            .unwrap(),
        DevicePoll::Unknown
    );
    assert_eq!(
        h.store.lookup_user_code("VWXZ-BCDF", h.now).await.unwrap(),
        None
    );
    let decided = h
        .store
        .decide_device("VWXZ-BCDF", &approve(h.now), h.now)
        .await
        .unwrap();
    assert_eq!(decided, DecideOutcome::NotFound);
}

async fn a_user_code_already_in_use_is_a_conflict(h: &Harness) {
    h.store
        .put_device(Digest::of(b"first"), &device_grant(h.now, "BCDF-GHJK"))
        .await
        .unwrap();
    let second = Digest::of(b"second");
    let clash = h
        .store
        .put_device(second, &device_grant(h.now, "BCDF-GHJK"))
        .await;
    assert!(matches!(clash, Err(StoreError::Conflict(_))), "{clash:?}");
    assert_eq!(
        h.store.poll_device(second, h.now * 1000).await.unwrap(),
        DevicePoll::Unknown,
        "nothing was stored"
    );
    let Err(e) = clash else { unreachable!() };
    assert!(
        !e.to_string().contains("BCDF-GHJK"),
        "errors do not carry key contents: {e}"
    );

    h.store
        .put_device(second, &device_grant(h.now, "LMNP-QRST"))
        .await
        .unwrap();
}

async fn a_session_lives_until_it_expires_or_is_deleted(h: &Harness) {
    let handle = Digest::of(b"session");
    let s = session(h.now);
    h.store.put_session(handle, &s).await.unwrap();

    assert_eq!(
        h.store.get_session(handle, h.now).await.unwrap(),
        Some(s.clone())
    );
    assert_eq!(
        h.store.get_session(handle, s.expires_at - 1).await.unwrap(),
        Some(s.clone())
    );
    assert_eq!(
        h.store.get_session(handle, s.expires_at).await.unwrap(),
        None,
        "dead at expires_at"
    );
    assert_eq!(
        h.store
            .get_session(Digest::of(b"nobody"), h.now)
            .await
            .unwrap(),
        None
    );

    h.store.delete_session(handle).await.unwrap();
    assert_eq!(h.store.get_session(handle, h.now).await.unwrap(), None);
    h.store.delete_session(handle).await.unwrap();
}

async fn failures_count_up_within_the_window_and_start_again_after_it(h: &Harness) {
    let key = "password:alice";
    assert_eq!(h.store.failures(key).await.unwrap(), 0);
    for expected in 1..=3 {
        assert_eq!(h.store.record_failure(key, 1).await.unwrap(), expected);
    }
    assert_eq!(h.store.failures(key).await.unwrap(), 3);
    assert_eq!(
        h.store.failures("password:bob").await.unwrap(),
        0,
        "counters are per key"
    );

    // The window started at the first failure; stores count on their own clock here.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(h.store.failures(key).await.unwrap(), 0);
    assert_eq!(h.store.record_failure(key, 1).await.unwrap(), 1);
}

async fn clearing_failures_resets_the_count(h: &Harness) {
    let key = "password:alice";
    h.store.record_failure(key, 60).await.unwrap();
    h.store.record_failure(key, 60).await.unwrap();
    h.store.clear_failures(key).await.unwrap();
    assert_eq!(h.store.failures(key).await.unwrap(), 0);
    assert_eq!(h.store.record_failure(key, 60).await.unwrap(), 1);
    h.store.clear_failures("password:nobody").await.unwrap();
}

async fn revoked_access_lists_revocations_until_they_expire(h: &Harness) {
    assert_eq!(h.store.revoked_access(h.now).await.unwrap(), vec![]);
    h.store
        .revoke_access("jti-long", h.now + 3600)
        .await
        .unwrap();
    h.other
        .revoke_access("jti-short", h.now + 60)
        .await
        .unwrap();

    let mut revoked = h.store.revoked_access(h.now).await.unwrap();
    revoked.sort();
    assert_eq!(
        revoked,
        vec![
            ("jti-long".to_owned(), h.now + 3600),
            ("jti-short".to_owned(), h.now + 60)
        ]
    );
    let revoked = h.store.revoked_access(h.now + 60).await.unwrap();
    assert_eq!(
        revoked,
        vec![("jti-long".to_owned(), h.now + 3600)],
        "a token is expired at its exp"
    );
    assert_eq!(h.store.revoked_access(h.now + 3600).await.unwrap(), vec![]);
}

async fn a_revocation_made_on_another_handle_reaches_a_subscriber(h: &Harness) {
    let mut revocations = h.store.subscribe_revocations().await.unwrap();
    h.other.revoke_access("jti-1", h.now + 600).await.unwrap();
    h.store
        .revoke_access("jti 2 with spaces", h.now + 900)
        .await
        .unwrap();

    let first = tokio::time::timeout(Duration::from_secs(3), revocations.next()).await;
    assert_eq!(
        first.expect("the revocation arrives in time"),
        Some(("jti-1".to_owned(), h.now + 600))
    );
    let second = tokio::time::timeout(Duration::from_secs(3), revocations.next()).await;
    assert_eq!(
        second.expect("the revocation arrives in time"),
        Some(("jti 2 with spaces".to_owned(), h.now + 900))
    );
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
    assert!(
        matches!(outcome, Err(StoreError::Unavailable { .. })),
        "{outcome:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn a_lagging_memory_subscriber_sees_its_stream_end_so_it_reloads() {
    let store = MemoryEphemeral::new();
    let mut revocations = store.subscribe_revocations().await.unwrap();
    for i in 0..10_000 {
        store
            .revoke_access(&format!("jti-{i}"), wall_now() + 60)
            .await
            .unwrap();
    }
    let end = tokio::time::timeout(Duration::from_secs(1), revocations.next())
        .await
        .unwrap();
    assert_eq!(end, None);
    assert_eq!(
        store.revoked_access(wall_now()).await.unwrap().len(),
        10_000,
        "nothing is lost for a reload"
    );
}

#[tokio::test]
async fn memory_failure_windows_follow_the_injected_clock() {
    let clock = Arc::new(ManualClock::default());
    let store = MemoryEphemeral::with_clock(clock.clone());
    store.record_failure("password:alice", 60).await.unwrap();
    clock.advance_secs(59);
    assert_eq!(
        store.record_failure("password:alice", 60).await.unwrap(),
        2,
        "the window runs from the first failure"
    );
    clock.advance_secs(1);
    assert_eq!(store.failures("password:alice").await.unwrap(), 0);
    assert_eq!(store.record_failure("password:alice", 60).await.unwrap(), 1);
}
