//! `WatchRevocations`: one watcher's stream. The start, then the snapshot or backlog page by
//! page, then each revocation this node applies, with a heartbeat whenever nothing else was
//! sent for a while (see [`tessera_core::watch`] for what a cursor promises).
//!
//! Bounds (DESIGN.md rule 8): the stream is produced only as fast as the watcher reads it
//! (HTTP/2 flow control), so a watcher that stops reading holds one page of the log at most.
//! Live revocations wait for it in the node's one shared ring ([`LIVE_BUFFER`] entries); a
//! watcher that falls further behind is dropped with RESOURCE_EXHAUSTED and resumes from its
//! cursor. At most [`MAX_WATCHERS`] streams are open on a node at once; past that a call
//! fails UNAVAILABLE.
//!
//! [`LIVE_BUFFER`]: tessera_core::watch::LIVE_BUFFER

use futures::Stream;
use std::sync::Arc;
use std::time::Duration;
use tessera_core::ports::Revocation;
use tessera_core::watch::{Watch, Watched, EXPIRY_GRACE};
use tessera_core::Tessera;
use tessera_proto::token::v1 as pb;
use tokio::sync::broadcast::error::{RecvError, TryRecvError};
use tokio::sync::OwnedSemaphorePermit;
use tonic::Status;

/// Streams open at once on one node.
pub const MAX_WATCHERS: usize = 1_024;
/// Streams open at once on one node for one client, so that one client cannot take every
/// place.
pub const MAX_WATCHERS_PER_CLIENT: usize = MAX_WATCHERS / 4;

/// Open streams by client; a [`ClientSlot`] gives its place back when dropped.
#[derive(Default)]
pub struct PerClient(std::sync::Mutex<std::collections::HashMap<String, usize>>);

pub struct ClientSlot {
    table: Arc<PerClient>,
    client_id: String,
}

impl PerClient {
    /// A place for one more stream of `client_id`, if it has fewer than the bound open.
    pub fn take(table: &Arc<PerClient>, client_id: &str) -> Option<ClientSlot> {
        let mut open = table.0.lock().ok()?;
        let n = open.entry(client_id.to_owned()).or_insert(0);
        if *n >= MAX_WATCHERS_PER_CLIENT {
            return None;
        }
        *n += 1;
        Some(ClientSlot { table: Arc::clone(table), client_id: client_id.to_owned() })
    }
}

impl Drop for ClientSlot {
    fn drop(&mut self) {
        if let Ok(mut open) = self.table.0.lock() {
            if let Some(n) = open.get_mut(&self.client_id) {
                *n -= 1;
                if *n == 0 {
                    open.remove(&self.client_id);
                }
            }
        }
    }
}
/// Heartbeat interval when the watcher names none, and the range it may name.
const DEFAULT_HEARTBEAT: u32 = 10;
const HEARTBEAT_RANGE: std::ops::RangeInclusive<u32> = 1..=60;

pub type EventStream = std::pin::Pin<Box<dyn Stream<Item = Result<pb::RevocationEvent, Status>> + Send>>;

/// The heartbeat interval a watcher asked for (0: the default), within the range.
pub fn heartbeat(seconds: u32) -> Duration {
    let s =
        if seconds == 0 { DEFAULT_HEARTBEAT } else { seconds.clamp(*HEARTBEAT_RANGE.start(), *HEARTBEAT_RANGE.end()) };
    Duration::from_secs(s.into())
}

fn event(cursor: &str, e: pb::revocation_event::Event) -> pb::RevocationEvent {
    pb::RevocationEvent { cursor: cursor.to_owned(), event: Some(e) }
}

/// A revocation as an event; `None` for an access token that expired more than
/// [`EXPIRY_GRACE`] ago (it no longer matters, so it is never sent).
fn revocation_event(r: &Revocation, cursor: &str, now: i64) -> Option<pb::RevocationEvent> {
    use pb::revocation_event::Event;
    let e = match r {
        Revocation::Access { exp, .. } if *exp + EXPIRY_GRACE <= now => return None,
        Revocation::Access { jti, exp } => Event::AccessToken(pb::RevokedAccessToken { jti: jti.clone(), exp: *exp }),
        Revocation::User { id, before } => Event::User(pb::IssuedBefore { id: id.clone(), issued_before: *before }),
        Revocation::Client { id, before } => Event::Client(pb::IssuedBefore { id: id.clone(), issued_before: *before }),
    };
    Some(event(cursor, e))
}

/// Whether `r` takes the watcher's own credential away (its client deleted, or its secret
/// replaced): the stream then ends, and the watcher must authenticate again.
fn ends_watcher(r: &Revocation, watch: &Watch) -> bool {
    matches!(r, Revocation::Client { id, .. } if *id == watch.watcher.id)
}

enum Next {
    Closing,
    Live(Result<Watched, RecvError>),
    Beat,
}

fn fell_behind(missed: u64) -> Status {
    Status::resource_exhausted(format!(
        "this watcher read too slowly and missed {missed} revocations; call again with the last cursor received"
    ))
}

fn stale() -> Status {
    Status::unavailable(
        "this node cannot read the revocation log now; call another replica with the last cursor received",
    )
}

fn shutting_down() -> Status {
    Status::unavailable("the token service is shutting down; call again with the last cursor received")
}

fn credential_gone() -> Status {
    Status::unauthenticated("the watching client was deleted or its secret replaced; authenticate again")
}

/// The stream of one watch. `permit` is held for as long as the stream lives.
pub fn events(
    tessera: Arc<Tessera>,
    mut watch: Watch,
    beat: Duration,
    mut closing: tokio::sync::watch::Receiver<bool>,
    permit: (OwnedSemaphorePermit, ClientSlot),
) -> EventStream {
    Box::pin(async_stream::stream! {
        let _permit = permit;
        use pb::revocation_event::Event;
        let backlog_cursor = watch.backlog_cursor_text();
        yield Ok(event(&backlog_cursor, Event::Start(pb::StreamStart { snapshot: watch.snapshot })));
        loop {
            if *closing.borrow() {
                yield Err(shutting_down());
                return;
            }
            match tessera.watch_backlog(&mut watch).await {
                Ok(Some(page)) => {
                    let now = tessera.now();
                    for r in &page {
                        if let Some(e) = revocation_event(r, &backlog_cursor, now) {
                            yield Ok(e);
                        }
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    yield Err(tessera_proto::to_status(&e));
                    return;
                }
            }
        }
        yield Ok(event(&watch.cursor_at(watch.caught_up_cursor), Event::CaughtUp(pb::CaughtUp {})));

        let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + beat, beat);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let next = tokio::select! {
                biased;
                _ = closing.wait_for(|closed| *closed) => Next::Closing,
                r = watch.live.recv() => Next::Live(r),
                _ = ticks.tick() => Next::Beat,
            };
            match next {
                Next::Closing => {
                    yield Err(shutting_down());
                    return;
                }
                Next::Live(Ok(w)) => {
                    if !tessera.revocations_fresh() {
                        yield Err(stale());
                        return;
                    }
                    if let Some(e) = revocation_event(&w.revocation, &watch.cursor_at(w.cursor), tessera.now()) {
                        yield Ok(e);
                    }
                    if ends_watcher(&w.revocation, &watch) {
                        yield Err(credential_gone());
                        return;
                    }
                }
                Next::Live(Err(RecvError::Lagged(missed))) => {
                    yield Err(fell_behind(missed));
                    return;
                }
                Next::Live(Err(RecvError::Closed)) => {
                    yield Err(shutting_down());
                    return;
                }
                Next::Beat => {
                    // A heartbeat vouches that nothing was missed: not from a node that cannot
                    // read the durable log (its database is away). Its watchers go elsewhere.
                    if !tessera.revocations_fresh() {
                        yield Err(stale());
                        return;
                    }
                    // The position first, then whatever is queued: everything up to the
                    // position was queued before it was read, so it goes out before the
                    // heartbeat that names it.
                    let settled = tessera.settled_position();
                    loop {
                        match watch.live.try_recv() {
                            Ok(w) => {
                                if let Some(e) = revocation_event(&w.revocation, &watch.cursor_at(w.cursor), tessera.now()) {
                                    yield Ok(e);
                                }
                                if ends_watcher(&w.revocation, &watch) {
                                    yield Err(credential_gone());
                                    return;
                                }
                            }
                            Err(TryRecvError::Empty) => break,
                            Err(TryRecvError::Lagged(missed)) => {
                                yield Err(fell_behind(missed));
                                return;
                            }
                            Err(TryRecvError::Closed) => return,
                        }
                    }
                    yield Ok(event(
                        &watch.cursor_at(settled),
                        Event::Heartbeat(pb::Heartbeat { server_time: tessera.now() }),
                    ));
                }
            }
        }
    })
}
