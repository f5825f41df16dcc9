//! Follows `WatchRevocations` for as long as a [`crate::Verifier`] lives: applies each event,
//! keeps the last cursor, and on any loss (an error, the end of the stream, or silence for
//! three heartbeats) calls again from that cursor, backing off from 100 ms to 5 s. A snapshot
//! is gathered aside and replaces what was held only once complete.

use crate::revocations::{Entry, State};
use crate::{now_ms, Inner};
use std::sync::atomic::Ordering;
use std::sync::Weak;
use std::time::Duration;
use tessera_proto::token::v1::revocation_event::Event;
use tessera_proto::token::v1::token_service_client::TokenServiceClient;
use tessera_proto::token::v1::{RevocationEvent, WatchRevocationsRequest};
use tonic::transport::Channel;

const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// One connection's progress.
#[derive(Default)]
struct Session {
    /// A snapshot being gathered.
    fresh: Option<State>,
    /// The backlog or snapshot has been applied: what follows is live.
    live: bool,
}

pub(crate) async fn follow(inner: Weak<Inner>, mut client: TokenServiceClient<Channel>) {
    let mut cursor = String::new();
    let mut backoff = FIRST_BACKOFF;
    loop {
        let Some(request) = inner.upgrade().map(|v| WatchRevocationsRequest {
            client_id: v.cfg.client_id.clone(),
            client_secret: v.cfg.client_secret.clone(),
            cursor: cursor.clone(),
            heartbeat_seconds: v.cfg.heartbeat.as_secs().clamp(1, 60) as u32,
        }) else {
            return;
        };
        let silence = Duration::from_secs(u64::from(request.heartbeat_seconds) * 3);
        match client.watch_revocations(request).await {
            Ok(answer) => {
                let mut stream = answer.into_inner();
                let mut session = Session::default();
                loop {
                    let next = tokio::time::timeout(silence, stream.message()).await;
                    let Some(v) = inner.upgrade() else { return };
                    match next {
                        Ok(Ok(Some(event))) => {
                            if apply(&v, &mut session, &mut cursor, event) {
                                backoff = FIRST_BACKOFF;
                            }
                        }
                        Ok(Ok(None)) => {
                            tracing::info!("the revocation stream ended; calling again");
                            break;
                        }
                        Ok(Err(status)) => {
                            tracing::warn!(code = ?status.code(), message = status.message(), "the revocation stream failed; calling again");
                            break;
                        }
                        Err(_) => {
                            tracing::warn!("the revocation stream went silent; calling again");
                            break;
                        }
                    }
                }
            }
            Err(status) => {
                tracing::warn!(code = ?status.code(), message = status.message(), "cannot watch revocations; retrying");
                // A cursor the service refuses (one it cannot read): start again with a snapshot.
                if status.code() == tonic::Code::InvalidArgument {
                    cursor.clear();
                }
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// Applies one event; `true` once the session is live (the connection is sound).
fn apply(v: &Inner, session: &mut Session, cursor: &mut String, event: RevocationEvent) -> bool {
    let now = now_ms() / 1000;
    let entry = match event.event {
        Some(Event::Start(s)) => {
            session.fresh = s.snapshot.then(State::default);
            None
        }
        Some(Event::AccessToken(t)) => Some(Entry::Access { jti: t.jti, exp: t.exp }),
        Some(Event::User(u)) => Some(Entry::User { id: u.id, before: u.issued_before }),
        Some(Event::Client(c)) => Some(Entry::Client { id: c.id, before: c.issued_before }),
        Some(Event::CaughtUp(_)) => {
            if let Some(fresh) = session.fresh.take() {
                v.revocations.replace(fresh);
            }
            session.live = true;
            None
        }
        Some(Event::Heartbeat(_)) => {
            v.revocations.purge_now_and_then(now);
            None
        }
        None => None,
    };
    if let Some(entry) = entry {
        match session.fresh.as_mut() {
            Some(fresh) => fresh.apply(entry, now, v.revocations.keep_past_exp()),
            None => v.revocations.apply([entry], now),
        }
    }
    // Inside a snapshot the cursor is empty: the one held stays until the snapshot is whole.
    if !event.cursor.is_empty() && session.fresh.is_none() {
        *cursor = event.cursor;
    }
    if session.live {
        v.last_heard_ms.store(now_ms(), Ordering::Release);
    }
    session.live
}
