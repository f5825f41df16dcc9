use crate::error::StoreResult;
use async_trait::async_trait;

/// One revocation (DESIGN.md rule 9), as the durable log records it and the fan-out
/// announces it. Applying the same revocation twice changes nothing.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Revocation {
    /// One access token, by `jti`, until its `exp`.
    Access { jti: String, exp: i64 },
    /// Every token of this user (by id) issued before `before` (Unix seconds): the user was
    /// disabled or given a new password.
    User { id: String, before: i64 },
    /// Every token of this client issued before `before`: its secret was replaced. With
    /// `before == Revocation::FOREVER` the client was deleted, and its id is never registered
    /// again.
    Client { id: String, before: i64 },
}

impl Revocation {
    /// A cut-off that no token can be issued after: a deleted client.
    pub const FOREVER: i64 = i64::MAX;

    /// Until when this revocation can make a difference: an access token's revocation stops
    /// mattering at its `exp`; cut-offs are kept (they are rare: administrator actions).
    pub fn relevant_until(&self) -> i64 {
        match self {
            Revocation::Access { exp, .. } => *exp,
            Revocation::User { .. } | Revocation::Client { .. } => Self::FOREVER,
        }
    }

    /// `(kind, subject, value)`, the columns of the durable log and the words of the wire form.
    pub fn parts(&self) -> (&'static str, &str, i64) {
        match self {
            Revocation::Access { jti, exp } => ("access", jti, *exp),
            Revocation::User { id, before } => ("user", id, *before),
            Revocation::Client { id, before } => ("client", id, *before),
        }
    }

    pub fn from_parts(kind: &str, subject: String, value: i64) -> Option<Self> {
        Some(match kind {
            "access" => Revocation::Access { jti: subject, exp: value },
            "user" => Revocation::User { id: subject, before: value },
            "client" => Revocation::Client { id: subject, before: value },
            _ => return None,
        })
    }

    /// The fan-out's message: `"<kind> <value> <subject>"` (the subject last, so it may hold
    /// anything).
    pub fn to_wire(&self) -> String {
        let (kind, subject, value) = self.parts();
        format!("{kind} {value} {subject}")
    }

    pub fn from_wire(message: &str) -> Option<Self> {
        let mut words = message.splitn(3, ' ');
        let kind = words.next()?;
        let value = words.next()?.parse().ok()?;
        Self::from_parts(kind, words.next()?.to_owned(), value)
    }
}

/// One entry of the durable revocation log with its position.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoggedRevocation {
    /// Increases with every append (gaps are possible: a rolled-back append).
    pub seq: i64,
    /// When it was appended (Unix seconds).
    pub at: i64,
    pub revocation: Revocation,
}

/// The durable record of revocations: written before anything is announced, and drained by
/// every node, so a revocation survives the loss of its announcement.
#[async_trait]
pub trait RevocationLog: Send + Sync {
    /// Appends revocations at `at`, in one statement. A revocation already in the log (same
    /// kind, subject and value) is not appended again, so repeating a revocation is free.
    async fn append_revocations(&self, revocations: &[Revocation], at: i64) -> StoreResult<()>;
    /// Up to `limit` entries with `seq > after` that still matter at `now`
    /// (`relevant_until > now`), by ascending `seq`.
    async fn revocations_after(&self, after: i64, now: i64, limit: u64) -> StoreResult<Vec<LoggedRevocation>>;
    /// Deletes the entries that no longer matter at `now`; returns how many.
    async fn purge_revocations(&self, now: i64) -> StoreResult<u64>;
    /// Whether `client_id` belonged to a deleted client (such an id is never reused, so a new
    /// client cannot inherit anything of the old one).
    async fn client_id_retired(&self, client_id: &str) -> StoreResult<bool>;
    /// The highest position the log has handed out so far (0 for an empty log).
    async fn last_revocation_seq(&self) -> StoreResult<i64>;
    /// The identity of this log: `candidate` if the log had none yet (it keeps it), else the
    /// one it has.
    async fn revocation_log_epoch(&self, candidate: &str) -> StoreResult<String>;
    /// What a receiver of Security Event Tokens by poll has acknowledged (the default for one
    /// never seen).
    async fn set_acks(&self, receiver: &str) -> StoreResult<SetAcks>;
    async fn save_set_acks(&self, receiver: &str, acks: &SetAcks) -> StoreResult<()>;
}

/// What a receiver of Security Event Tokens (RFC 8936) acknowledged, by log position.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SetAcks {
    /// Every entry up to here is acknowledged.
    pub through: i64,
    /// Entries above `through` acknowledged out of order, ascending.
    pub above: Vec<i64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_revocation_survives_its_wire_form() {
        for r in [
            Revocation::Access { jti: "a b c".into(), exp: 42 },
            Revocation::User { id: "0b5e".into(), before: 7 },
            Revocation::Client { id: "svc.x".into(), before: Revocation::FOREVER },
        ] {
            assert_eq!(Revocation::from_wire(&r.to_wire()), Some(r.clone()));
            let (kind, subject, value) = r.parts();
            assert_eq!(Revocation::from_parts(kind, subject.to_owned(), value), Some(r));
        }
        assert_eq!(Revocation::from_wire("access notanumber x"), None);
        assert_eq!(Revocation::from_wire("other 1 x"), None);
    }
}
