//! Watching revocations from outside: the `WatchRevocations` stream (snapshot, live events,
//! heartbeats, cursors, bounds) and Security Event Tokens by poll (RFC 8936), over real gRPC.

use crate::flows::{cc, password, service_client, web_client};
use crate::harness::*;
use std::time::{Duration, Instant};
use tessera_core::ErrorCode;
use tessera_proto::admin::v1 as adminpb;
use tessera_proto::token::v1 as pb;
use tessera_proto::token::v1::revocation_event::Event;
use tonic::Streaming;

const WAIT: Duration = Duration::from_secs(5);

async fn watcher(app: &TestApp, id: &str) -> (String, String) {
    app.client(ClientSpec {
        id,
        grants: &["client_credentials"],
        scopes: "api",
        watch_revocations: true,
        ..Default::default()
    })
    .await
}

async fn watch(
    app: &TestApp,
    who: &(String, String),
    cursor: &str,
    heartbeat_seconds: u32,
) -> Result<Streaming<pb::RevocationEvent>, tonic::Status> {
    app.connect()
        .await
        .watch_revocations(pb::WatchRevocationsRequest {
            client_id: who.0.clone(),
            client_secret: who.1.clone(),
            cursor: cursor.into(),
            heartbeat_seconds,
        })
        .await
        .map(tonic::Response::into_inner)
}

async fn next(stream: &mut Streaming<pb::RevocationEvent>) -> Result<pb::RevocationEvent, tonic::Status> {
    match tokio::time::timeout(WAIT, stream.message()).await {
        Ok(Ok(Some(e))) => Ok(e),
        Ok(Ok(None)) => panic!("the stream ended without a status"),
        Ok(Err(status)) => Err(status),
        Err(_) => panic!("no event within {WAIT:?}"),
    }
}

async fn event(stream: &mut Streaming<pb::RevocationEvent>) -> (String, Event) {
    let e = next(stream).await.unwrap();
    (e.cursor, e.event.expect("every event says what it is"))
}

/// Reads until `caught_up`, returning the revoked jtis seen and the caught-up cursor.
async fn until_caught_up(stream: &mut Streaming<pb::RevocationEvent>) -> (Vec<String>, Vec<Event>, String) {
    let mut jtis = Vec::new();
    let mut others = Vec::new();
    loop {
        match event(stream).await {
            (cursor, Event::CaughtUp(_)) => return (jtis, others, cursor),
            (_, Event::AccessToken(t)) => jtis.push(t.jti),
            (_, other) => others.push(other),
        }
    }
}

fn jti(token: &str) -> String {
    jwt_parts(token).1["jti"].as_str().unwrap().to_owned()
}

pub async fn a_watcher_gets_a_snapshot_then_live_revocations_then_heartbeats(app: TestApp) {
    let me = watcher(&app, "rs").await;
    let svc = service_client(&app).await;
    let web = web_client(&app).await;
    let alice = app.user("alice", "alice-password").await;
    let expired_soon = app.issue(cc(&svc, "api")).await.unwrap().access_token;
    let before = app.issue(cc(&svc, "api")).await.unwrap().access_token;
    app.revoke(&before, &svc).await;
    app.admin()
        .await
        .set_user_disabled(adminpb::SetUserDisabledRequest { username: "alice".into(), disabled: true })
        .await
        .unwrap();

    let mut stream = watch(&app, &me, "", 1).await.unwrap();
    let (cursor, start) = event(&mut stream).await;
    assert!(matches!(start, Event::Start(pb::StreamStart { snapshot: true })), "{start:?}");
    assert_eq!(cursor, "", "a snapshot cannot be resumed halfway");
    let (jtis, others, caught_up) = until_caught_up(&mut stream).await;
    assert_eq!(jtis, [jti(&before)]);
    assert!(
        others.iter().any(|e| matches!(e, Event::User(u) if u.id == alice && u.issued_before > 0)),
        "the user's cut-off is in the snapshot: {others:?}"
    );
    assert!(caught_up.starts_with("r2."), "{caught_up}");

    // Live: revoked after the watch began.
    let live = app.issue(cc(&svc, "api")).await.unwrap().access_token;
    app.revoke(&live, &svc).await;
    let (cursor, e) = loop {
        match event(&mut stream).await {
            (_, Event::Heartbeat(_)) => continue,
            other => break other,
        }
    };
    assert!(matches!(&e, Event::AccessToken(t) if t.jti == jti(&live) && t.exp > 0), "{e:?}");
    assert!(cursor.starts_with("r2."));
    // Nothing else happens: a heartbeat within its second.
    let started = Instant::now();
    let (_, e) = event(&mut stream).await;
    assert!(matches!(e, Event::Heartbeat(ref h) if h.server_time > 0), "{e:?}");
    assert!(started.elapsed() < Duration::from_secs(3));

    // An access token whose revocation has expired is never sent again.
    app.revoke(&expired_soon, &svc).await;
    let _ = event(&mut stream).await;
    app.clock.advance_secs(3 * 3600);
    let mut again = watch(&app, &me, "", 1).await.unwrap();
    let _start = event(&mut again).await;
    let (jtis, _, _) = until_caught_up(&mut again).await;
    assert!(jtis.is_empty(), "expired entries are not sent: {jtis:?}");
    // A new user token is unaffected by the old cut-off, and its revocation is live news.
    app.admin()
        .await
        .set_user_disabled(adminpb::SetUserDisabledRequest { username: "alice".into(), disabled: false })
        .await
        .unwrap();
    let t = app.issue(password(&web, "alice", "alice-password", "openid")).await.unwrap();
    app.revoke(&t.access_token, &web).await;
    loop {
        match event(&mut again).await {
            (_, Event::AccessToken(a)) => {
                assert_eq!(a.jti, jti(&t.access_token));
                break;
            }
            (_, Event::Heartbeat(_)) => continue,
            (_, other) => panic!("unexpected {other:?}"),
        }
    }
}

pub async fn watching_needs_a_confidential_client_with_the_permission(app: TestApp) {
    let svc = service_client(&app).await;
    assert_oauth(watch(&app, &svc, "", 0).await, ErrorCode::UnauthorizedClient, "a client without the permission");
    let wrong = (svc.0.clone(), "wrong-secret".to_owned());
    assert_oauth(watch(&app, &wrong, "", 0).await, ErrorCode::InvalidClient, "a wrong secret");
    let public = app
        .client(ClientSpec {
            id: "spa",
            public: true,
            grants: &["authorization_code"],
            redirect_uris: &["https://spa.example/cb"],
            ..Default::default()
        })
        .await;
    assert_oauth(watch(&app, &public, "", 0).await, ErrorCode::InvalidClient, "a public client");
    let refused = app.permit_watching("spa", true).await;
    assert_oauth(refused, ErrorCode::InvalidRequest, "a public client cannot be allowed");

    let c = app.permit_watching(&svc.0, true).await.unwrap();
    assert!(c.watch_revocations);
    let mut stream = watch(&app, &svc, "", 0).await.unwrap();
    assert!(matches!(event(&mut stream).await.1, Event::Start(_)));
    let c = app.permit_watching(&svc.0, false).await.unwrap();
    assert!(!c.watch_revocations);
    assert_oauth(watch(&app, &svc, "", 0).await, ErrorCode::UnauthorizedClient, "the permission taken back");
    assert_oauth(watch(&app, &svc, "nonsense", 0).await, ErrorCode::UnauthorizedClient, "checked before the cursor");
    let me = watcher(&app, "rs").await;
    assert_oauth(watch(&app, &me, "nonsense", 0).await, ErrorCode::InvalidRequest, "a malformed cursor");
}

/// Lets what is in the log settle on the node (entries count as settled once seen for 5 s of
/// the service's clock), so that cursors move past it.
pub(crate) async fn settle(app: &TestApp) {
    // The log is polled every 500 ms: once a poll has seen the entries, the clock moves past
    // the settling time, and a later poll settles them.
    let (durable, _) = tessera_token_service::connect_stores(&app.settings).await.unwrap();
    let last = durable.last_revocation_seq().await.unwrap();
    let node = app.app.as_ref().unwrap().tessera();
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    let started = Instant::now();
    while node.settled_position() < last {
        app.clock.advance_secs(6);
        assert!(started.elapsed() < Duration::from_secs(30), "the log never settled through {last}");
        tokio::time::sleep(Duration::from_millis(600)).await;
    }
}

fn position(cursor: &str) -> i64 {
    cursor.rsplit_once('.').unwrap().1.parse().unwrap()
}

pub async fn resuming_from_a_cursor_sends_what_was_missed_and_a_foreign_cursor_gets_a_snapshot(app: TestApp) {
    let me = watcher(&app, "rs").await;
    let svc = service_client(&app).await;
    let seen = app.issue(cc(&svc, "api")).await.unwrap().access_token;
    app.revoke(&seen, &svc).await;
    settle(&app).await;
    let mut stream = watch(&app, &me, "", 0).await.unwrap();
    let _ = event(&mut stream).await;
    let (jtis, _, cursor) = until_caught_up(&mut stream).await;
    assert_eq!(jtis, [jti(&seen)]);
    assert!(position(&cursor) > 0, "the cursor moved past what settled: {cursor}");
    drop(stream);

    let missed: Vec<String> = {
        let mut v = Vec::new();
        for _ in 0..3 {
            let t = app.issue(cc(&svc, "api")).await.unwrap().access_token;
            app.revoke(&t, &svc).await;
            v.push(jti(&t));
        }
        v
    };
    let mut resumed = watch(&app, &me, &cursor, 0).await.unwrap();
    let (c, start) = event(&mut resumed).await;
    assert!(matches!(start, Event::Start(pb::StreamStart { snapshot: false })), "{start:?}");
    assert_eq!(c, cursor, "the backlog carries the cursor it resumed from");
    let (jtis, _, _) = until_caught_up(&mut resumed).await;
    for j in &missed {
        assert!(jtis.contains(j), "{j} was missed while away: got {jtis:?}");
    }
    assert!(!jtis.contains(&jti(&seen)), "what settled before the cursor is not sent again");

    // Another deployment's cursor, even one behind this log, and a cursor ahead of this log
    // (one restored from a backup): a snapshot, flagged.
    let epoch = cursor.strip_prefix("r2.").unwrap().rsplit_once('.').unwrap().0;
    for foreign in ["r2.another-log.1".to_owned(), format!("r2.{epoch}.999999999")] {
        let mut s = watch(&app, &me, &foreign, 0).await.unwrap();
        assert!(matches!(event(&mut s).await.1, Event::Start(pb::StreamStart { snapshot: true })), "{foreign}");
        let (jtis, _, _) = until_caught_up(&mut s).await;
        assert!(jtis.contains(&jti(&seen)) && missed.iter().all(|j| jtis.contains(j)), "{foreign}");
    }
}

pub async fn a_watcher_that_stops_reading_is_dropped_and_resumes_without_gaps(app: TestApp) {
    use tessera_core::ports::Revocation;
    let me = watcher(&app, "rs").await;
    // A watcher with a small receive window, so that what it does not read stays on the
    // server's side instead of in its own buffers.
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", app.addr))
        .unwrap()
        .initial_stream_window_size(Some(1024))
        .initial_connection_window_size(Some(1024))
        .connect()
        .await
        .unwrap();
    let mut stream = pb::token_service_client::TokenServiceClient::new(channel)
        .watch_revocations(pb::WatchRevocationsRequest {
            client_id: me.0.clone(),
            client_secret: me.1.clone(),
            cursor: String::new(),
            heartbeat_seconds: 60,
        })
        .await
        .unwrap()
        .into_inner();
    let _ = event(&mut stream).await;
    let (_, _, cursor) = until_caught_up(&mut stream).await;
    // Another replica's worth of revocations lands in the log while this watcher reads
    // nothing: more than the node keeps for slow watchers.
    const MANY: usize = 12_000;
    let (durable, _) = tessera_token_service::connect_stores(&app.settings).await.unwrap();
    let cut_offs: Vec<Revocation> =
        (0..MANY).map(|i| Revocation::User { id: format!("user-{i}"), before: 1_000 + i as i64 }).collect();
    // Appended "long ago", so they settle as soon as the node reads them.
    let long_ago = {
        use tessera_core::clock::Clock as _;
        app.clock.now() - 600
    };
    for chunk in cut_offs.chunks(1_000) {
        durable.append_revocations(chunk, long_ago).await.unwrap();
    }
    // The node reads the log within a poll; the watcher is left behind meanwhile.
    let last = durable.last_revocation_seq().await.unwrap();
    let node = app.app.as_ref().unwrap().tessera();
    let waited = Instant::now();
    while node.settled_position() < last {
        assert!(waited.elapsed() < Duration::from_secs(30), "the node never read the log through");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut last_cursor = cursor;
    let mut seen = std::collections::HashSet::new();
    let status = loop {
        match next(&mut stream).await {
            Ok(e) => {
                if let Some(Event::User(u)) = e.event {
                    seen.insert(u.id);
                }
                if !e.cursor.is_empty() {
                    last_cursor = e.cursor;
                }
            }
            Err(status) => break status,
        }
    };
    assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
    assert!(status.message().contains("last cursor"), "{}", status.message());
    assert!(seen.len() < MANY, "dropped before the end");
    // From the last cursor, the rest (and maybe some again).
    let mut resumed = watch(&app, &me, &last_cursor, 60).await.unwrap();
    assert!(matches!(event(&mut resumed).await.1, Event::Start(pb::StreamStart { snapshot: false })));
    let (_, others, _) = until_caught_up(&mut resumed).await;
    for e in others {
        if let Event::User(u) = e {
            seen.insert(u.id);
        }
    }
    let missing = (0..MANY).filter(|i| !seen.contains(&format!("user-{i}"))).count();
    assert_eq!(missing, 0, "every cut-off arrived across the drop");
}

pub async fn shutting_down_ends_every_watch_at_once_with_unavailable(mut app: TestApp) {
    let me = watcher(&app, "rs").await;
    let mut stream = watch(&app, &me, "", 60).await.unwrap();
    let _ = event(&mut stream).await;
    until_caught_up(&mut stream).await;
    let started = Instant::now();
    app.app.take().unwrap().shutdown().await.unwrap();
    assert!(started.elapsed() < Duration::from_secs(5), "shutdown waited for the watch: {:?}", started.elapsed());
    let status = next(&mut stream).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
}

pub async fn deleting_or_rotating_the_watching_client_ends_its_stream(app: TestApp) {
    let me = watcher(&app, "rs").await;
    let mut stream = watch(&app, &me, "", 60).await.unwrap();
    let _ = event(&mut stream).await;
    until_caught_up(&mut stream).await;
    app.admin()
        .await
        .rotate_client_secret(adminpb::RotateClientSecretRequest { client_id: me.0.clone() })
        .await
        .unwrap();
    let (_, e) = event(&mut stream).await;
    assert!(matches!(e, Event::Client(ref c) if c.id == me.0), "{e:?}");
    let status = next(&mut stream).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unauthenticated, "{status:?}");
    assert_oauth(watch(&app, &me, "", 0).await, ErrorCode::InvalidClient, "the old secret");
}

fn poll(
    who: &(String, String),
    ack: &[&str],
    max_events: Option<i32>,
    return_immediately: bool,
) -> pb::PollSecurityEventsRequest {
    pb::PollSecurityEventsRequest {
        client_id: who.0.clone(),
        client_secret: who.1.clone(),
        ack: ack.iter().map(|s| s.to_string()).collect(),
        set_errs: Default::default(),
        max_events,
        return_immediately,
    }
}

pub async fn security_events_by_poll_are_signed_redelivered_until_acknowledged_and_waited_for(app: TestApp) {
    let me = watcher(&app, "rs").await;
    let svc = service_client(&app).await;
    let t = app.issue(cc(&svc, "api")).await.unwrap().access_token;
    app.revoke(&t, &svc).await;
    let mut node = app.connect().await;

    let first = node.poll_security_events(poll(&me, &[], None, true)).await.unwrap().into_inner();
    assert_eq!(first.sets.len(), 1, "{first:?}");
    assert!(!first.more_available);
    let (set_jti, set) = first.sets.iter().next().unwrap();
    let (header, claims) = jwt_parts(set);
    assert_eq!(header["typ"], "secevent+jwt");
    assert_eq!(claims["jti"], set_jti.as_str());
    assert_eq!(claims["aud"], me.0.as_str());
    assert_eq!(claims["iss"], "https://tessera.test");
    let revoked = &claims["events"]["urn:tessera:secevent:access-token-revoked"];
    assert_eq!(revoked["jti"], jti(&t).as_str());
    // The SET's signature is the token service's own: the JWK Set verifies it.
    let jwks = node.get_jwks(pb::GetJwksRequest {}).await.unwrap().into_inner().jwks_json;
    let jwks: serde_json::Value = serde_json::from_str(&jwks).unwrap();
    assert!(jwks["keys"].as_array().unwrap().iter().any(|k| k["kid"] == header["kid"]));

    let again = node.poll_security_events(poll(&me, &[], None, true)).await.unwrap().into_inner();
    assert_eq!(again.sets.keys().collect::<Vec<_>>(), [set_jti], "not acknowledged: delivered again");
    let acked = node.poll_security_events(poll(&me, &[set_jti.as_str()], None, true)).await.unwrap().into_inner();
    assert!(acked.sets.is_empty(), "acknowledged: {acked:?}");
    // Once settled, the acknowledgement moves the receiver's position past it: still not sent.
    settle(&app).await;
    let settled = node.poll_security_events(poll(&me, &[], None, true)).await.unwrap().into_inner();
    assert!(settled.sets.is_empty(), "acknowledged and settled: {settled:?}");
    let (durable, _) = tessera_token_service::connect_stores(&app.settings).await.unwrap();
    let stored = durable.set_acks(&me.0).await.unwrap();
    assert!(stored.through > 0 && stored.above.is_empty(), "{stored:?}");

    // maxEvents and moreAvailable.
    for _ in 0..3 {
        let t = app.issue(cc(&svc, "api")).await.unwrap().access_token;
        app.revoke(&t, &svc).await;
    }
    let two = node.poll_security_events(poll(&me, &[], Some(2), true)).await.unwrap().into_inner();
    assert_eq!(two.sets.len(), 2);
    assert!(two.more_available);
    let jtis: Vec<&str> = two.sets.keys().map(String::as_str).collect();
    let rest = node.poll_security_events(poll(&me, &jtis, Some(10), true)).await.unwrap().into_inner();
    assert_eq!(rest.sets.len(), 1, "{rest:?}");
    let last: Vec<&str> = rest.sets.keys().map(String::as_str).collect();
    let none = node.poll_security_events(poll(&me, &last, Some(0), true)).await.unwrap().into_inner();
    assert!(none.sets.is_empty(), "maxEvents 0 only acknowledges");

    // A poll that may wait returns when a revocation happens.
    let started = Instant::now();
    let waiting = tokio::spawn({
        let mut node = app.connect().await;
        let me = me.clone();
        async move { node.poll_security_events(poll(&me, &[], None, false)).await.unwrap().into_inner() }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let late = app.issue(cc(&svc, "api")).await.unwrap().access_token;
    app.revoke(&late, &svc).await;
    let woke = waiting.await.unwrap();
    assert_eq!(woke.sets.len(), 1, "{woke:?}");
    assert!(started.elapsed() < Duration::from_secs(5), "woke at the event, not at the end of the wait");

    let stranger = service_client_named(&app, "other").await;
    assert_oauth(
        node.poll_security_events(poll(&stranger, &[], None, true)).await,
        ErrorCode::UnauthorizedClient,
        "no permission",
    );
}

async fn service_client_named(app: &TestApp, id: &str) -> (String, String) {
    app.client(ClientSpec { id, grants: &["client_credentials"], scopes: "api", ..Default::default() }).await
}

tessera_testkit::both_pairs!(crate::harness::with_app;
    a_watcher_gets_a_snapshot_then_live_revocations_then_heartbeats,
    watching_needs_a_confidential_client_with_the_permission,
    resuming_from_a_cursor_sends_what_was_missed_and_a_foreign_cursor_gets_a_snapshot,
    a_watcher_that_stops_reading_is_dropped_and_resumes_without_gaps,
    shutting_down_ends_every_watch_at_once_with_unavailable,
    deleting_or_rotating_the_watching_client_ends_its_stream,
    security_events_by_poll_are_signed_redelivered_until_acknowledged_and_waited_for,
);
