//! The bound on password checks (DESIGN.md rule 8), seen from outside: a burst far beyond the
//! password pool's queue is partly refused with 503 `temporarily_unavailable` and
//! `Retry-After`, never with anything else, and the service answers normally once the burst
//! has passed. The pool does not depend on the backend pair, so one pair is enough.

use crate::harness::*;
use std::num::NonZeroUsize;

/// Concurrent requests per burst: sixteen times what one worker and a queue of one admit.
const BURST: usize = 32;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_beyond_the_password_queue_is_refused_with_503_and_retry_after_and_nothing_else() {
    let small_pool = |s: &mut tessera_token_service::settings::Settings| {
        s.passwords.workers = NonZeroUsize::new(1);
        s.passwords.queue = Some(1);
        // One user signs in many times at once: the account throttle is not what is tested.
        s.tokens.lockout_threshold = 100_000;
    };
    let Some(app) = TestApp::spawn_with(Pair::SqliteMemory, small_pool).await else { return };
    let (id, secret) = app.confidential(&["password"]).await;
    app.create_user("burst", "burst-password").await;
    let grant = [("grant_type", "password"), ("username", "burst"), ("password", "burst-password")];

    let (mut granted, mut refused) = (0, 0);
    // Each burst overlaps far more than two checks, but whether a given one does is up to
    // the scheduler; a few bursts make seeing a refusal certain without timing anything.
    for _ in 0..5 {
        let answers = futures::future::join_all(
            (0..BURST).map(|_| app.post_form("/oauth2/token", &grant, Some((id.as_str(), secret.as_str())))),
        )
        .await;
        for a in answers {
            match a.status.as_u16() {
                200 => {
                    a.assert_tokens();
                    granted += 1;
                }
                503 => {
                    a.assert_error(503, "temporarily_unavailable");
                    let retry_after = a.header("retry-after");
                    assert!(retry_after.parse::<u32>().is_ok_and(|s| s >= 1), "Retry-After: {retry_after:?}");
                    refused += 1;
                }
                other => panic!("a burst got {other}: {}", a.text),
            }
        }
        if refused > 0 && granted > 0 {
            break;
        }
    }
    assert!(refused > 0, "no request of the bursts was refused ({granted} granted)");
    assert!(granted > 0, "the pool kept working during the bursts");

    // The queue drains: one request on its own is served.
    app.post_form("/oauth2/token", &grant, Some((id.as_str(), secret.as_str()))).await.assert_tokens();
    app.stop().await;
}
