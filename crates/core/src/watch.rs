//! Revocations watched from outside: resource servers that verify tokens themselves follow
//! them through `WatchRevocations` (a stream) or as Security Event Tokens by poll (RFC 8417,
//! RFC 8936). Both read the durable log (DESIGN.md rule 9) from a cursor, then what this node
//! applies as it happens.
//!
//! A cursor is a log position below which the watcher has everything. Log positions are taken
//! before commit, so an entry can become visible after a later one; a cursor therefore never
//! runs ahead of what this node has *settled* (every entry up to it committed and seen, see
//! `LogCursor`). Each live event carries the settled position of the moment it was applied,
//! and this node applies, in order, everything that settles: so everything up to an event's
//! cursor reached the watcher before that event. Resuming from a cursor may repeat entries;
//! applying one twice changes nothing.

use crate::clients::ClientAuth;
use crate::error::OAuthError;
use crate::model::Client;
use crate::ports::{LoggedRevocation, Revocation, SetAcks};
use crate::Tessera;
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::broadcast;

/// Live revocations kept for watchers that have not read them yet, on this node, whatever the
/// number of watchers (one ring shared by all). A watcher that falls further behind is told
/// so (`Lagged`) and resumes from its cursor.
pub const LIVE_BUFFER: usize = 4_096;
/// Entries read from the log per page of a snapshot or backlog.
pub const PAGE: u64 = 1_000;
/// The text form of a cursor: this prefix, the log's epoch, a dot, the log position.
const CURSOR_PREFIX: &str = "r2.";
/// The `jti` of a SET: this prefix, the log's epoch, a dot, the log position. Not a cursor:
/// its position may not have settled.
const SET_PREFIX: &str = "set.";
/// Polls signing SETs at once on this node; past it a poll is refused as
/// `temporarily_unavailable` (each may sign up to [`MAX_EVENTS`] SETs).
pub const SET_POLLS: usize = 16;
/// `setErrs` entries logged per poll; the rest are counted in one line.
const LOGGED_SET_ERRORS: usize = 10;
/// An access token's revocation is still sent to watchers this long after its `exp`, for
/// resource servers whose clock is behind or that allow a leeway on `exp` (at most this).
pub const EXPIRY_GRACE: i64 = 60;
/// A node that has not read the durable log for this long cannot vouch for what it streams:
/// its watches end (UNAVAILABLE) so that their watchers call a replica that can.
pub const STALE_AFTER_MS: i64 = 5_000;
/// SETs per poll when the receiver names no `maxEvents`, and the most it may name.
const DEFAULT_MAX_EVENTS: u32 = 100;
const MAX_EVENTS: u32 = 1_000;
/// Acknowledgements kept above a receiver's contiguous position; more are dropped (those SETs
/// are delivered again, which RFC 8936 allows).
const MAX_ACKED_ABOVE: usize = 10_000;
/// How long a poll with `returnImmediately: false` waits for an event.
pub const LONG_POLL: Duration = Duration::from_secs(10);
/// Polls waiting at once on this node; past it a poll answers at once (DESIGN.md rule 8).
pub const LONG_POLLS: usize = 256;

/// A revocation this node applied, with the settled log position of that moment.
#[derive(Clone, Debug)]
pub struct Watched {
    pub revocation: Revocation,
    pub cursor: i64,
}

/// A log position of the log named `epoch` in its text form.
pub fn cursor_text(epoch: &str, seq: i64) -> String {
    format!("{CURSOR_PREFIX}{epoch}.{seq}")
}

/// `(epoch, position)` of a cursor or SET `jti` with this prefix.
fn parse_position<'a>(prefix: &str, text: &'a str) -> Option<(&'a str, i64)> {
    let (epoch, seq) = text.strip_prefix(prefix)?.rsplit_once('.')?;
    let seq = seq.parse().ok().filter(|seq: &i64| *seq >= 0)?;
    (!epoch.is_empty()).then_some((epoch, seq))
}

/// Whether `text` is a cursor of another form than this version's (`r<digits>.`).
fn is_other_version(text: &str) -> bool {
    let Some(rest) = text.strip_prefix('r') else { return false };
    let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
    digits > 0 && rest.as_bytes().get(digits) == Some(&b'.') && !text.starts_with(CURSOR_PREFIX)
}

/// Milliseconds on a clock that only goes forward, for how fresh this node's view is.
pub fn monotonic_ms() -> i64 {
    static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    START.get_or_init(std::time::Instant::now).elapsed().as_millis() as i64 + 1
}

/// A watch just opened: what to send first, and the live revocations that follow.
pub struct Watch {
    /// The watcher must replace what it held: no cursor was given, or its cursor cannot be
    /// resumed (it is ahead of this log: another deployment's, or a log restored from backup).
    pub snapshot: bool,
    /// The cursor to send with each backlog entry: `None` inside a snapshot.
    pub backlog_cursor: Option<i64>,
    /// The cursor once the backlog is sent.
    pub caught_up_cursor: i64,
    /// Live revocations, subscribed before the backlog was read, so nothing falls between.
    pub live: broadcast::Receiver<Watched>,
    /// The watching client.
    pub watcher: Arc<Client>,
    /// The log's identity, part of every cursor.
    pub epoch: String,
    after: i64,
    backlog_done: bool,
}

impl Watch {
    /// The cursor to send with a live event or a heartbeat, given the settled position of its
    /// moment: never behind the one the watcher came with.
    pub fn cursor_at(&self, settled: i64) -> String {
        cursor_text(&self.epoch, settled.max(self.backlog_cursor.unwrap_or(0)))
    }

    /// The cursor of the backlog's entries: the one the watcher came with; empty in a snapshot.
    pub fn backlog_cursor_text(&self) -> String {
        self.backlog_cursor.map(|c| cursor_text(&self.epoch, c)).unwrap_or_default()
    }
}

/// A poll of Security Event Tokens (RFC 8936 §2.4).
#[derive(Clone, Debug, Default)]
pub struct SetPoll {
    pub ack: Vec<String>,
    /// `(jti, err, description)` of SETs the receiver could not process.
    pub errors: Vec<(String, String, String)>,
    pub max_events: Option<u32>,
    pub return_immediately: bool,
}

/// What a poll returns: `(jti, SET)` pairs, and whether more are pending.
#[derive(Clone, Debug, Default)]
pub struct SetBatch {
    pub sets: Vec<(String, String)>,
    pub more_available: bool,
}

/// The event types of the SETs this service issues.
pub const SET_ACCESS_TOKEN_REVOKED: &str = "urn:tessera:secevent:access-token-revoked";
pub const SET_USER_ISSUED_BEFORE: &str = "urn:tessera:secevent:user-tokens-revoked";
pub const SET_CLIENT_ISSUED_BEFORE: &str = "urn:tessera:secevent:client-tokens-revoked";
/// OpenID CAEP's session revocation, sent beside the user cut-off for receivers that know CAEP.
pub const CAEP_SESSION_REVOKED: &str = "https://schemas.openid.net/secevent/caep/event-type/session-revoked";
pub const SET_EVENT_TYPES: [&str; 4] =
    [SET_ACCESS_TOKEN_REVOKED, SET_USER_ISSUED_BEFORE, SET_CLIENT_ISSUED_BEFORE, CAEP_SESSION_REVOKED];

impl Tessera {
    /// A confidential client allowed to watch revocations, or why not.
    async fn authorize_watcher(&self, auth: &ClientAuth) -> Result<Arc<Client>, OAuthError> {
        // A confidential client authenticates with its secret: no secret, no confidential client.
        let client = self.authenticate_client(auth).await?;
        if !client.confidential {
            return Err(OAuthError::invalid_client("watching revocations needs an authenticated confidential client"));
        }
        if !client.watch_revocations {
            return Err(OAuthError::unauthorized_client("this client may not watch revocations"));
        }
        Ok(client)
    }

    /// The identity of the durable log (named by the first node that asks).
    pub async fn log_epoch(&self) -> Result<String, OAuthError> {
        if let Some(e) = self.log_epoch.get() {
            return Ok(e.clone());
        }
        let named = self.durable.revocation_log_epoch(&tessera_crypto::random_secret(12)).await?;
        Ok(self.log_epoch.get_or_init(|| named).clone())
    }

    /// Whether this node read the durable log recently enough to vouch for what it streams.
    pub fn revocations_fresh(&self) -> bool {
        let last = self.last_drain.load(std::sync::atomic::Ordering::Acquire);
        last > 0 && monotonic_ms() - last <= STALE_AFTER_MS
    }

    /// Opens a watch from `cursor` (empty: a snapshot). Fails for a client not allowed to
    /// watch, a malformed cursor, or a log that cannot be read.
    pub async fn watch_revocations(&self, auth: &ClientAuth, cursor: &str) -> Result<Watch, OAuthError> {
        let watcher = self.authorize_watcher(auth).await?;
        let resume = match cursor {
            "" => None,
            // A cursor of an earlier form (`r<n>.…`) cannot be resumed: a snapshot.
            text if is_other_version(text) => Some(("", 0)),
            text => Some(
                parse_position(CURSOR_PREFIX, text)
                    .ok_or_else(|| OAuthError::invalid_request("the cursor is malformed"))?,
            ),
        };
        let epoch = self.log_epoch().await?;
        // In this order: what settled before the subscription is in the log read after it.
        let settled = self.settled_position();
        let live = self.live.subscribe();
        let last = self.durable.last_revocation_seq().await?;
        // Another log's cursor, or one ahead of this log (restored from a backup): a snapshot.
        let resumable = resume.filter(|(e, c)| *e == epoch && *c <= last.max(settled)).map(|(_, c)| c);
        Ok(Watch {
            epoch,
            snapshot: resumable.is_none(),
            backlog_cursor: resumable,
            caught_up_cursor: settled.max(resumable.unwrap_or(0)),
            live,
            watcher,
            after: resumable.unwrap_or(0),
            backlog_done: false,
        })
    }

    /// The next page of the snapshot or backlog (entries still mattering now), `None` once it
    /// is all sent.
    pub async fn watch_backlog(&self, watch: &mut Watch) -> Result<Option<Vec<Revocation>>, OAuthError> {
        if watch.backlog_done {
            return Ok(None);
        }
        let page = self.durable.revocations_after(watch.after, self.now() - EXPIRY_GRACE, PAGE).await?;
        watch.backlog_done = (page.len() as u64) < PAGE;
        if let Some(last) = page.last() {
            watch.after = last.seq;
        }
        Ok(Some(page.into_iter().map(|e| e.revocation).collect()))
    }

    /// The log position up to which this node has applied everything (see the module doc).
    pub fn settled_position(&self) -> i64 {
        self.log_settled.load(std::sync::atomic::Ordering::Acquire)
    }

    /// RFC 8936: applies the receiver's acknowledgements, then returns the SETs it has not
    /// acknowledged, oldest first. With `return_immediately` false and nothing pending, waits
    /// up to [`LONG_POLL`] for one.
    pub async fn poll_security_events(&self, auth: &ClientAuth, poll: SetPoll) -> Result<SetBatch, OAuthError> {
        let receiver = self.authorize_watcher(auth).await?;
        let epoch = self.log_epoch().await?;
        let stored = self.durable.set_acks(&receiver.id).await?;
        let mut acks = stored.clone();
        for jti in poll.ack.iter().chain(poll.errors.iter().map(|(jti, _, _)| jti)) {
            // A SET of another log (another deployment's) acknowledges nothing here.
            if let Some((_, seq)) =
                parse_position(SET_PREFIX, jti).filter(|(e, seq)| *e == epoch && *seq > acks.through)
            {
                acks.above.push(seq);
            }
        }
        if poll.errors.len() > LOGGED_SET_ERRORS {
            tracing::warn!(
                receiver = %crate::printable(&receiver.id),
                count = poll.errors.len(),
                "a receiver could not process security events (the first {LOGGED_SET_ERRORS} follow)"
            );
        }
        for (jti, err, description) in poll.errors.iter().take(LOGGED_SET_ERRORS) {
            tracing::warn!(
                receiver = %crate::printable(&receiver.id),
                jti = %crate::printable(jti),
                err = %crate::printable(err),
                description = %crate::printable(description),
                "a receiver could not process a security event"
            );
        }
        acks.above.sort_unstable();
        acks.above.dedup();
        acks.above.truncate(MAX_ACKED_ABOVE);
        let max = poll.max_events.unwrap_or(DEFAULT_MAX_EVENTS).min(MAX_EVENTS) as usize;

        let mut live = self.live.subscribe();
        let mut waited = poll.return_immediately || max == 0;
        let (pending, more_available) = loop {
            let settled = self.settled_position();
            let limit = (max + acks.above.len() + 1) as u64;
            let entries = self.durable.revocations_after(acks.through, self.now() - EXPIRY_GRACE, limit).await?;
            let complete = (entries.len() as u64) < limit;
            advance_acks(&mut acks, &entries, settled, complete);
            // What is acknowledged: at or below `through` now, or above it out of order.
            let mut pending: Vec<LoggedRevocation> = entries
                .into_iter()
                .filter(|e| e.seq > acks.through && acks.above.binary_search(&e.seq).is_err())
                .collect();
            let more = pending.len() > max;
            pending.truncate(max);
            if !pending.is_empty() || waited {
                break (pending, more);
            }
            waited = true;
            let Ok(_slot) = self.long_polls.try_acquire() else { break (pending, more) };
            // Whatever happens next (an event, a lag, the time running out) is worth a look.
            let _ = tokio::time::timeout(LONG_POLL, live.recv()).await;
        };
        if acks != stored {
            self.durable.save_set_acks(&receiver.id, &acks).await?;
        }
        // Only the signing is bounded: a poll waiting for an event costs no CPU.
        let _signing = self.set_polls.try_acquire().map_err(|_| {
            OAuthError::temporarily_unavailable("too many security event polls at once; retry later", 1)
        })?;
        let keys = self.keys.current();
        let now = self.now();
        let mut sets = Vec::with_capacity(pending.len());
        for e in pending {
            let jti = format!("{SET_PREFIX}{epoch}.{}", e.seq);
            let claims = self.security_event(&receiver.id, &jti, &e, now);
            let set = tessera_crypto::jwt::encode(&keys.signing, "secevent+jwt", &claims)
                .map_err(|e| OAuthError::server_error(e.to_string()))?;
            sets.push((jti, set));
        }
        Ok(SetBatch { sets, more_available })
    }

    /// The claims of a SET (RFC 8417 §2.2) for one log entry.
    fn security_event(&self, audience: &str, jti: &str, e: &LoggedRevocation, now: i64) -> Value {
        let iss = &self.cfg.issuer;
        let events = match &e.revocation {
            Revocation::Access { jti, exp } => json!({ SET_ACCESS_TOKEN_REVOKED: { "jti": jti, "exp": exp } }),
            Revocation::User { id, before } => json!({
                SET_USER_ISSUED_BEFORE: { "sub": id, "issued_before": before },
                CAEP_SESSION_REVOKED: {
                    "subject": { "format": "iss_sub", "iss": iss, "sub": id },
                    "event_timestamp": before,
                },
            }),
            Revocation::Client { id, before } => json!({ SET_CLIENT_ISSUED_BEFORE: {
                "client_id": id,
                "issued_before": before,
                "deleted": *before == Revocation::FOREVER,
            } }),
        };
        json!({ "iss": iss, "iat": now, "jti": jti, "aud": audience, "toe": e.at, "events": events })
    }
}

/// Moves `acks.through` past every entry (in log order) that is acknowledged and settled,
/// stopping at the first that is not: an unacknowledged entry, or one that may still have an
/// earlier entry commit before it. Acknowledgements of entries no longer in the log (expired)
/// are passed over the same way. `complete`: `entries` is everything in the log above
/// `acks.through` (the read was not cut short), so acknowledgements past its end can pass too.
fn advance_acks(acks: &mut SetAcks, entries: &[LoggedRevocation], settled: i64, complete: bool) {
    let mut above = std::mem::take(&mut acks.above).into_iter().peekable();
    let mut stopped = false;
    for e in entries {
        // Acknowledged positions below this entry that are not in the log any more.
        while let Some(&seq) = above.peek() {
            if seq >= e.seq || seq > settled {
                break;
            }
            acks.through = seq;
            above.next();
        }
        if above.peek() == Some(&e.seq) && e.seq <= settled {
            acks.through = e.seq;
            above.next();
        } else {
            stopped = true;
            break;
        }
    }
    while let Some(&seq) = above.peek() {
        if stopped || !complete || seq > settled {
            break;
        }
        acks.through = seq;
        above.next();
    }
    acks.above = above.collect();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(seq: i64) -> LoggedRevocation {
        LoggedRevocation { seq, at: 0, revocation: Revocation::Access { jti: format!("j{seq}"), exp: 99 } }
    }

    #[test]
    fn a_cursor_survives_its_text_and_nothing_else_parses() {
        assert_eq!(parse_position(CURSOR_PREFIX, &cursor_text("ab.c", 42)), Some(("ab.c", 42)));
        for bad in ["", "42", "r2.", "r2.e.-3", "r2.5", "r2..5", "r2.e.5x", "set.e.5", "r1.5"] {
            assert_eq!(parse_position(CURSOR_PREFIX, bad), None, "{bad}");
        }
        assert_eq!(parse_position(SET_PREFIX, "set.e.7"), Some(("e", 7)));
        assert!(is_other_version("r1.42") && is_other_version("r10.x.1"));
        assert!(!is_other_version("r2.e.1") && !is_other_version("rx.1") && !is_other_version("42"));
    }

    #[test]
    fn acknowledgements_advance_only_through_contiguous_settled_entries() {
        let entries: Vec<_> = [3, 5, 8, 9].into_iter().map(entry).collect();
        // 3 and 5 acknowledged, 8 not, 9 acknowledged: the position stops below 8.
        let mut acks = SetAcks { through: 0, above: vec![3, 5, 9] };
        advance_acks(&mut acks, &entries, 100, true);
        assert_eq!(acks, SetAcks { through: 5, above: vec![9] });
        // Everything acknowledged but only up to 8 settled: 9 may still have an earlier
        // entry commit before it.
        let mut acks = SetAcks { through: 0, above: vec![3, 5, 8, 9] };
        advance_acks(&mut acks, &entries, 8, true);
        assert_eq!(acks, SetAcks { through: 8, above: vec![9] });
        // An acknowledged entry that expired out of the log is passed over.
        let mut acks = SetAcks { through: 0, above: vec![1, 3] };
        advance_acks(&mut acks, &entries, 100, true);
        assert_eq!(acks, SetAcks { through: 3, above: vec![] });
        // Acknowledgements past the last entry read pass only when the read was complete.
        let mut acks = SetAcks { through: 9, above: vec![12] };
        advance_acks(&mut acks, &[], 100, false);
        assert_eq!(acks, SetAcks { through: 9, above: vec![12] });
        advance_acks(&mut acks, &[], 100, true);
        assert_eq!(acks, SetAcks { through: 12, above: vec![] });
    }
}
