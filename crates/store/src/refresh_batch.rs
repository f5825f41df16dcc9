//! Group commit of refresh-token writes: the one-step rotation
//! ([`tessera_core::ports::RefreshStore::rotate_live_refresh`]) and the first token of a new
//! family ([`tessera_core::ports::RefreshStore::start_family`], after a code exchange, a device
//! grant or a password grant, its user checked and read by the same statements). Writes asked
//! for at the same moment are written together, in one transaction committed once.
//!
//! - **SQLite** takes one writer at a time, and each call into sqlx's SQLite connection is a
//!   hand-off to its worker thread and back: writes done one by one queue for the writer,
//!   which spends most of its time waking threads rather than writing. A batch is one string of
//!   statements, run by the writer in one go.
//! - **Postgres** spends most of a lone write on what every statement and every commit costs
//!   (the round trip, the executor's start, the commit's WAL flush), not on the rows. A batch is
//!   one statement over arrays of the writes' values.
//!
//! A caller waits for its batch as it would for its own statement; a batch that fails is
//! rolled back and each of its writes is then tried alone, so one write's failure (a digest
//! already stored, say) is never another's. A lone write is a batch of one: the same
//! statements either way.
//!
//! Bounded (DESIGN.md rule 8): at most [`MAX_BATCH`] writes a batch and [`QUEUE`] waiting; a
//! caller finding the queue full waits for room.

use crate::circuit::Db;
use crate::entity::refresh_tokens::{Model, SaltBytes};
use crate::error;
use sea_orm::sqlx::{self, PgPool, SqlitePool};
use sea_orm::{DbErr, RuntimeErr};
use std::fmt::Write as _;
use tessera_core::model::User;
use tessera_core::ports::{RefreshRecord, RefreshState, Succession, Successor};
use tessera_core::{StoreError, StoreResult};
use tessera_crypto::Digest;
use tokio::sync::{mpsc, oneshot};

/// Writes in one transaction at most.
const MAX_BATCH: usize = 32;
/// Writes that may wait for the writer.
const QUEUE: usize = 1024;
/// What a SQLite batch yields at most: a result for each statement (`BEGIN`, three a rotation,
/// two a start, `COMMIT`) and a row for each write.
pub(crate) const SQLITE_BATCH_RESULTS: usize = 2 + 4 * MAX_BATCH;

/// Where the batches go.
#[derive(Clone)]
pub(crate) enum Writer {
    /// SQLite's one writer connection.
    Sqlite(SqlitePool),
    /// The writer's own Postgres connection (`connect_postgres` in lib.rs says why), behind the
    /// store's circuit breaker.
    Postgres { db: Db, conn: PgPool },
}

/// What one rotation found: the old token as it was and its user, or `None` when it was not
/// live and nothing changed. What a family's start found: its first token and its user, or
/// `None` when the user was not live and nothing was stored.
pub(crate) type Rotated = Option<(RefreshRecord, Option<User>)>;

/// One rotation asked for.
pub(crate) struct LiveRotation {
    pub old: Digest,
    pub client_id: String,
    pub succession: Succession,
    pub successor: Successor,
}

/// One write asked for.
enum Write {
    Rotate(LiveRotation),
    /// The first token of a new family, stored only while its user is live.
    Start(RefreshRecord),
}

struct Job {
    write: Write,
    /// What the rotation or the start found.
    reply: oneshot::Sender<StoreResult<Rotated>>,
}

/// The queue in front of the writer. Clones share it; the task writing the batches ends when
/// the last clone is gone.
#[derive(Clone)]
pub(crate) struct RefreshBatches {
    queue: mpsc::Sender<Job>,
}

impl RefreshBatches {
    /// Starts the task that writes batches to `writer`.
    pub(crate) fn start(writer: Writer) -> RefreshBatches {
        let (queue, jobs) = mpsc::channel(QUEUE);
        tokio::spawn(write_batches(writer, jobs));
        RefreshBatches { queue }
    }

    /// Rotates one token, in whatever batch it joins.
    pub(crate) async fn rotate(&self, rotation: LiveRotation) -> StoreResult<Rotated> {
        self.write(Write::Rotate(rotation)).await
    }

    /// Starts a family for its user, in whatever batch it joins: the user as stored, or
    /// `None` when the user is not live and nothing was stored.
    pub(crate) async fn start_family(&self, record: RefreshRecord) -> StoreResult<Option<User>> {
        Ok(self.write(Write::Start(record)).await?.and_then(|(_, user)| user))
    }

    async fn write(&self, write: Write) -> StoreResult<Rotated> {
        let gone = || StoreError::Other("the refresh-token write queue has stopped".to_owned());
        let (reply, answer) = oneshot::channel();
        self.queue.send(Job { write, reply }).await.map_err(|_| gone())?;
        answer.await.map_err(|_| gone())?
    }
}

/// Takes whatever has queued up (one write at least, [`MAX_BATCH`] at most), writes it as one
/// batch, answers each caller, and goes on until every sender is gone. One batch at a time:
/// while it is written the next one gathers, so the busier the node, the larger the batches.
/// (Letting two or four batches run at once made them smaller and let fewer refreshes through
/// on Postgres: see the Performance section of the README.)
async fn write_batches(writer: Writer, mut jobs: mpsc::Receiver<Job>) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while jobs.recv_many(&mut batch, MAX_BATCH).await > 0 {
        // A caller that has gone (its request cancelled or timed out) gets no answer: its
        // write is not made. A refresh retried later would otherwise find its token rotated
        // by a write nobody saw.
        batch.retain(|job| !job.reply.is_closed());
        if !batch.is_empty() {
            write_batch(&writer, &mut batch).await;
        }
    }
}

async fn write_batch(writer: &Writer, batch: &mut Vec<Job>) {
    let writes: Vec<&Write> = batch.iter().map(|job| &job.write).collect();
    // The Postgres statement answers a new family by its digest: two writes storing the same
    // digest (one of them bound to fail) go alone, so each gets its own answer.
    if batch.len() > 1 && repeats_a_digest(&writes) {
        return write_each_alone(writer, batch).await;
    }
    match write_together(writer, &writes).await {
        Ok(found) => {
            for (job, found) in batch.drain(..).zip(found) {
                // A caller that went away while its batch was written: its write is committed
                // all the same. A retry of its refresh finds the successor (the retry window);
                // a new family nobody received just expires.
                let _ = job.reply.send(Ok(found));
            }
        }
        // One write's fault (a digest already stored; on Postgres, a deadlock with a batch on
        // another node): each write alone, so that only the faulty one fails.
        Err(Failed { error: _, one_writes_fault: true }) if batch.len() > 1 => write_each_alone(writer, batch).await,
        // The database's (unreachable, busy, full): every write of the batch fails with it.
        Err(Failed { error, .. }) => {
            for job in batch.drain(..) {
                let _ = job.reply.send(Err(error.clone()));
            }
        }
    }
}

/// A family's first token, as the batch writes it.
struct Start {
    slot: usize,
    row: Model,
}

/// Each write of `batch` as a batch of its own, each caller answered with its own outcome.
async fn write_each_alone(writer: &Writer, batch: &mut Vec<Job>) {
    for job in batch.drain(..) {
        let alone = write_together(writer, &[&job.write]).await;
        let _ = job.reply.send(alone.map(|mut found| found.pop().flatten()).map_err(|f| f.error));
    }
}

/// Whether two writes of a batch would store the same digest.
fn repeats_a_digest(writes: &[&Write]) -> bool {
    let mut stored = std::collections::HashSet::new();
    writes.iter().any(|w| {
        let digest = match w {
            Write::Rotate(r) => r.successor.digest,
            Write::Start(record) => record.digest,
        };
        !stored.insert(digest)
    })
}

/// A batch that failed and changed nothing.
struct Failed {
    error: StoreError,
    /// Whether one write can be to blame, so that the others may go through alone.
    one_writes_fault: bool,
}

impl Failed {
    fn from_db(e: DbErr) -> Failed {
        // A unique violation (`Conflict`, on either backend) or a Postgres deadlock (40P01).
        let deadlock = match &e {
            DbErr::Query(RuntimeErr::SqlxError(sqlx::Error::Database(db))) => db.code().as_deref() == Some("40P01"),
            _ => false,
        };
        let error = error::from_db(e);
        let one_writes_fault = deadlock || matches!(error, StoreError::Conflict(_));
        Failed { error, one_writes_fault }
    }

    fn from_store(error: StoreError) -> Failed {
        Failed { error, one_writes_fault: false }
    }
}

/// Bound values per rotation and per start in [`sqlite_batch`].
const ROTATION_VALUES: usize = 12;
const START_VALUES: usize = 14;

/// The columns a start writes, in the order its values are bound.
const COLUMNS: &str = "digest, family_id, client_id, user_id, scope, issued_at, expires_at, auth_time, \
    access_jti, access_exp, state, rotated_at, successor_salt";

/// A stored token `r` and its user's columns (null when it has no user), in the order
/// [`Answered::decode`] reads them after the slot; the caller adds the slot and the `WHERE`.
const ROW_AND_USER: &str = "r.digest, r.family_id, r.client_id, r.user_id, r.scope, r.issued_at, r.expires_at, \
    r.auth_time, r.access_jti, r.access_exp, r.state, r.rotated_at, r.successor_salt, u.id, u.username, \
    u.password_hash, u.disabled, u.email, u.name, u.created_at \
    FROM refresh_tokens r LEFT JOIN users u ON u.id = r.user_id";

/// The SQLite batch for `rotations` rotations and then `starts` family starts (each tagged
/// with its slot, a bound value, so that the text depends only on the two counts and sqlx's
/// statement cache keeps it): `BEGIN IMMEDIATE`, then for each rotation the `UPDATE` guarded by
/// the live checks, the `INSERT` of the successor copied from the row this rotation updated
/// (found by the random salt it wrote), and the `SELECT` of that row with its user; then for
/// each start the `INSERT` guarded by its user being live and, when it stored its row, the
/// `SELECT` of that row with its user; then `COMMIT`.
/// Two rotations of the same token in one batch: the first `UPDATE` flips it, the second
/// finds it rotated, so exactly one wins, as apart.
fn sqlite_batch(rotations: usize, starts: usize) -> String {
    let mut sql = String::from("BEGIN IMMEDIATE; ");
    for i in 0..rotations {
        let v = |k: usize| i * ROTATION_VALUES + k;
        let _ = write!(
            sql,
            "UPDATE refresh_tokens SET state = ${rotated}, rotated_at = ${at}, successor_salt = ${salt} \
             WHERE digest = ${old} AND state = ${active} AND client_id = ${client} AND expires_at > ${at} \
               AND (user_id IS NULL OR EXISTS \
                 (SELECT 1 FROM users u WHERE u.id = refresh_tokens.user_id AND NOT u.disabled)); \
             INSERT INTO refresh_tokens (digest, family_id, client_id, user_id, scope, issued_at, \
               expires_at, auth_time, access_jti, access_exp, state) \
             SELECT ${next}, family_id, client_id, user_id, scope, ${issued}, ${expires}, auth_time, ${jti}, \
               ${exp}, ${active} \
             FROM refresh_tokens WHERE digest = ${old} AND successor_salt = ${salt}; \
             SELECT ${slot} AS slot, {ROW_AND_USER} WHERE r.digest = ${old} AND r.successor_salt = ${salt}; ",
            old = v(1),
            rotated = v(2),
            at = v(3),
            salt = v(4),
            active = v(5),
            client = v(6),
            next = v(7),
            issued = v(8),
            expires = v(9),
            jti = v(10),
            exp = v(11),
            slot = v(12),
        );
    }
    let base = rotations * ROTATION_VALUES;
    for i in 0..starts {
        let v = |k: usize| base + i * START_VALUES + k;
        let values: Vec<String> = (1..=13).map(|k| format!("${}", v(k))).collect();
        let _ = write!(
            sql,
            "INSERT INTO refresh_tokens ({COLUMNS}) SELECT {values} \
             WHERE EXISTS (SELECT 1 FROM users u WHERE u.id = ${user} AND NOT u.disabled); \
             SELECT ${slot} AS slot, {ROW_AND_USER} WHERE changes() = 1 AND r.digest = ${digest}; ",
            values = values.join(", "),
            digest = v(1),
            user = v(4),
            slot = v(14),
        );
    }
    sql.push_str("COMMIT");
    sql
}

/// Postgres: the batch as one statement over arrays, one element a write. The `UPDATE` joins
/// the rotations to their rows and matches only live ones (the same checks as SQLite's),
/// returning each with its rotation's slot and successor values; the first `INSERT` copies
/// from what it matched; the second stores the new families' first tokens whose users are
/// live; the `SELECT` answers each rotation and each start that stored its row, with its user. Two rotations of one token in a batch join the same row, which Postgres updates
/// once, for one of them: exactly one wins. Concurrent batches rotating the same token wait
/// on its row lock and re-check `state`, as lone statements do (rotations on other nodes).
const POSTGRES_BATCH: &str = "WITH input AS (\
        SELECT * FROM unnest($1::bigint[], $2::text[], $3::bigint[], $4::bytea[], $5::text[], $6::text[], \
          $7::bigint[], $8::bigint[], $9::text[], $10::bigint[]) \
        AS i(slot, old_digest, at, salt, client, next_digest, next_issued_at, next_expires_at, next_jti, next_exp)), \
    old AS (\
        UPDATE refresh_tokens r SET state = $11, rotated_at = i.at, successor_salt = i.salt \
        FROM input i \
        WHERE r.digest = i.old_digest AND r.state = $12 AND r.client_id = i.client AND r.expires_at > i.at \
          AND (r.user_id IS NULL OR EXISTS \
            (SELECT 1 FROM users u WHERE u.id = r.user_id AND NOT u.disabled)) \
        RETURNING i.slot, i.next_digest, i.next_issued_at, i.next_expires_at, i.next_jti, i.next_exp, r.*), \
    successor AS (\
        INSERT INTO refresh_tokens (digest, family_id, client_id, user_id, scope, issued_at, \
          expires_at, auth_time, access_jti, access_exp, state) \
        SELECT next_digest, family_id, client_id, user_id, scope, next_issued_at, next_expires_at, \
          auth_time, next_jti, next_exp, $12 FROM old), \
    fresh AS (\
        INSERT INTO refresh_tokens (digest, family_id, client_id, user_id, scope, issued_at, expires_at, \
          auth_time, access_jti, access_exp, state, rotated_at, successor_salt) \
        SELECT digest, family_id, client_id, user_id, scope, issued_at, expires_at, auth_time, access_jti, \
          access_exp, state, rotated_at, successor_salt \
        FROM unnest($13::text[], $14::text[], $15::text[], $16::text[], $17::text[], $18::bigint[], \
          $19::bigint[], $20::bigint[], $21::text[], $22::bigint[], $23::text[], $24::bigint[], $25::bytea[]) \
          AS f(digest, family_id, client_id, user_id, scope, issued_at, expires_at, auth_time, access_jti, \
            access_exp, state, rotated_at, successor_salt) \
        WHERE EXISTS (SELECT 1 FROM users u WHERE u.id = f.user_id AND NOT u.disabled) \
        RETURNING *) \
    SELECT old.slot, old.digest, old.family_id, old.client_id, old.user_id, old.scope, old.issued_at, \
      old.expires_at, old.auth_time, old.access_jti, old.access_exp, old.state, old.rotated_at, \
      old.successor_salt, u.id, u.username, u.password_hash, u.disabled, u.email, u.name, u.created_at \
    FROM old LEFT JOIN users u ON u.id = old.user_id \
    UNION ALL \
    SELECT s.slot, fresh.digest, fresh.family_id, fresh.client_id, fresh.user_id, fresh.scope, \
      fresh.issued_at, fresh.expires_at, fresh.auth_time, fresh.access_jti, fresh.access_exp, fresh.state, \
      fresh.rotated_at, fresh.successor_salt, u.id, u.username, u.password_hash, u.disabled, u.email, \
      u.name, u.created_at \
    FROM fresh JOIN unnest($13::text[], $26::bigint[]) AS s(digest, slot) ON s.digest = fresh.digest \
    LEFT JOIN users u ON u.id = fresh.user_id";

/// Writes `writes` in one transaction: what each found, by position. A batch that fails
/// changes nothing.
async fn write_together(writer: &Writer, writes: &[&Write]) -> Result<Vec<Rotated>, Failed> {
    let mut rotations = Vec::new();
    let mut starts = Vec::new();
    for (slot, write) in writes.iter().enumerate() {
        let row = |record: &RefreshRecord| crate::ports::refresh::to_row(record, record.state);
        match write {
            Write::Rotate(r) => rotations.push((slot, r)),
            Write::Start(record) => starts.push(Start { slot, row: row(record) }),
        }
    }
    let sqlx_err = |e| Failed::from_db(DbErr::Query(RuntimeErr::SqlxError(e)));
    // Each backend's rows are a type of their own, decoded by the same generic function.
    let answered: Vec<Answered> = match writer {
        Writer::Sqlite(pool) => {
            let rows = write_on_sqlite(pool, &rotations, &starts).await.map_err(sqlx_err)?;
            rows.iter().map(Answered::decode).collect::<Result<_, _>>().map_err(sqlx_err)?
        }
        Writer::Postgres { db, conn } => {
            let rows = write_on_postgres(db, conn, &rotations, &starts).await.map_err(Failed::from_db)?;
            rows.iter().map(Answered::decode).collect::<Result<_, _>>().map_err(sqlx_err)?
        }
    };
    let mut found: Vec<Rotated> = (0..writes.len()).map(|_| None).collect();
    for answered in answered {
        let slot = usize::try_from(answered.slot).unwrap_or(usize::MAX);
        let rotated = answered.live_and_user().map_err(Failed::from_store)?;
        if let Some(entry) = found.get_mut(slot) {
            *entry = Some(rotated);
        }
    }
    Ok(found)
}

/// Postgres: the batch as [`POSTGRES_BATCH`] on the writer's own connection, behind the
/// circuit breaker.
async fn write_on_postgres(
    db: &Db,
    pool: &PgPool,
    rotations: &[(usize, &LiveRotation)],
    starts: &[Start],
) -> Result<Vec<sqlx::postgres::PgRow>, DbErr> {
    let ints = |f: &dyn Fn(&LiveRotation) -> i64| rotations.iter().map(|(_, r)| f(r)).collect::<Vec<i64>>();
    let texts = |f: &dyn Fn(&LiveRotation) -> String| rotations.iter().map(|(_, r)| f(r)).collect::<Vec<_>>();
    let rows: Vec<&Model> = starts.iter().map(|start| &start.row).collect();
    let query = sqlx::query(POSTGRES_BATCH)
        .bind(rotations.iter().map(|(slot, _)| *slot as i64).collect::<Vec<i64>>())
        .bind(texts(&|r| r.old.to_hex()))
        .bind(ints(&|r| r.succession.at))
        .bind(rotations.iter().map(|(_, r)| r.succession.salt.expose().to_vec()).collect::<Vec<Vec<u8>>>())
        .bind(texts(&|r| r.client_id.clone()))
        .bind(texts(&|r| r.successor.digest.to_hex()))
        .bind(ints(&|r| r.successor.issued_at))
        .bind(ints(&|r| r.successor.expires_at))
        .bind(texts(&|r| r.successor.access_jti.clone()))
        .bind(ints(&|r| r.successor.access_exp))
        .bind(RefreshState::Rotated.as_str())
        .bind(RefreshState::Active.as_str())
        .bind(rows.iter().map(|m| m.digest.clone()).collect::<Vec<_>>())
        .bind(rows.iter().map(|m| m.family_id.clone()).collect::<Vec<_>>())
        .bind(rows.iter().map(|m| m.client_id.clone()).collect::<Vec<_>>())
        .bind(rows.iter().map(|m| m.user_id.clone()).collect::<Vec<_>>())
        .bind(rows.iter().map(|m| m.scope.clone()).collect::<Vec<_>>())
        .bind(rows.iter().map(|m| m.issued_at).collect::<Vec<_>>())
        .bind(rows.iter().map(|m| m.expires_at).collect::<Vec<_>>())
        .bind(rows.iter().map(|m| m.auth_time).collect::<Vec<_>>())
        .bind(rows.iter().map(|m| m.access_jti.clone()).collect::<Vec<_>>())
        .bind(rows.iter().map(|m| m.access_exp).collect::<Vec<_>>())
        .bind(rows.iter().map(|m| m.state.clone()).collect::<Vec<_>>())
        .bind(rows.iter().map(|m| m.rotated_at).collect::<Vec<_>>())
        .bind(rows.iter().map(|m| m.successor_salt.as_ref().map(|s| s.0.clone())).collect::<Vec<_>>())
        .bind(starts.iter().map(|start| start.slot as i64).collect::<Vec<i64>>());
    // No timeout of its own, as for every statement of this store: a batch cut short on
    // the client would still run, and could commit, on the server.
    let fetched = db.guard(async { query.fetch_all(pool).await.map_err(|e| DbErr::Query(RuntimeErr::SqlxError(e))) });
    fetched.await
}

/// SQLite: the batch on the writer connection. One that fails part-way is rolled back before
/// the connection goes back to the pool, or the connection is closed.
async fn write_on_sqlite(
    pool: &SqlitePool,
    rotations: &[(usize, &LiveRotation)],
    starts: &[Start],
) -> Result<Vec<sqlx::sqlite::SqliteRow>, sqlx::Error> {
    let sql = sqlite_batch(rotations.len(), starts.len());
    let mut query = sqlx::query(&sql);
    for (slot, r) in rotations {
        query = query
            .bind(r.old.to_hex())
            .bind(RefreshState::Rotated.as_str())
            .bind(r.succession.at)
            .bind(r.succession.salt.expose().to_vec())
            .bind(RefreshState::Active.as_str())
            .bind(r.client_id.clone())
            .bind(r.successor.digest.to_hex())
            .bind(r.successor.issued_at)
            .bind(r.successor.expires_at)
            .bind(r.successor.access_jti.clone())
            .bind(r.successor.access_exp)
            .bind(*slot as i64);
    }
    for Start { slot, row: m } in starts {
        query = query
            .bind(m.digest.clone())
            .bind(m.family_id.clone())
            .bind(m.client_id.clone())
            .bind(m.user_id.clone())
            .bind(m.scope.clone())
            .bind(m.issued_at)
            .bind(m.expires_at)
            .bind(m.auth_time)
            .bind(m.access_jti.clone())
            .bind(m.access_exp)
            .bind(m.state.clone())
            .bind(m.rotated_at)
            .bind(m.successor_salt.as_ref().map(|s| s.0.clone()))
            .bind(*slot as i64);
    }
    let mut conn = pool.acquire().await?;
    let rows = query.fetch_all(&mut *conn).await;
    if rows.is_err() && sqlx::query("ROLLBACK").execute(&mut *conn).await.is_err() {
        // Failed before BEGIN took effect, or the connection is broken: either way it must
        // not go back to the pool with a transaction that might still be open.
        conn.close_on_drop();
    }
    rows
}

/// One write's answer as a batch returns it: its slot, the token as the write found it (for a
/// rotation, as the rotation left it) and the token's user. Both backends' batches return the
/// same columns in the same order ([`ROW_AND_USER`], [`POSTGRES_BATCH`]), read by position:
/// reading a column by name costs a lookup and a formatted name each, a measurable share of a
/// refresh.
struct Answered {
    slot: i64,
    token: Model,
    user: Option<crate::entity::users::Model>,
}

impl Answered {
    fn decode<'r, R>(row: &'r R) -> Result<Answered, sqlx::Error>
    where
        R: sqlx::Row,
        usize: sqlx::ColumnIndex<R>,
        i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
        bool: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
        String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
        Vec<u8>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    {
        let token = Model {
            digest: row.try_get(1)?,
            family_id: row.try_get(2)?,
            client_id: row.try_get(3)?,
            user_id: row.try_get(4)?,
            scope: row.try_get(5)?,
            issued_at: row.try_get(6)?,
            expires_at: row.try_get(7)?,
            auth_time: row.try_get(8)?,
            access_jti: row.try_get(9)?,
            access_exp: row.try_get(10)?,
            state: row.try_get(11)?,
            rotated_at: row.try_get(12)?,
            successor_salt: row.try_get::<Option<Vec<u8>>, _>(13)?.map(SaltBytes),
        };
        // The LEFT JOIN found no user where the user's id is NULL.
        let user = match row.try_get::<Option<String>, _>(14)? {
            None => None,
            Some(id) => Some(crate::entity::users::Model {
                id,
                username: row.try_get(15)?,
                password_hash: row.try_get(16)?,
                disabled: row.try_get(17)?,
                email: row.try_get(18)?,
                name: row.try_get(19)?,
                created_at: row.try_get(20)?,
            }),
        };
        Ok(Answered { slot: row.try_get(0)?, token, user })
    }

    /// The token as the caller wants it (as it was before a rotation), and its user.
    fn live_and_user(self) -> StoreResult<(RefreshRecord, Option<User>)> {
        let found = crate::ports::refresh::from_row(self.token)?;
        let record = RefreshRecord { state: RefreshState::Active, succession: None, ..found };
        Ok((record, self.user.map(crate::ports::users::from_row)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_write_in_a_batch_binds_its_own_values_and_the_batch_commits_once() {
        let sql = sqlite_batch(3, 2);
        assert!(sql.starts_with("BEGIN IMMEDIATE; ") && sql.ends_with("COMMIT"));
        assert_eq!(sql.matches("COMMIT").count(), 1);
        assert_eq!(sql.matches("UPDATE refresh_tokens").count(), 3);
        assert!(sql.contains("SELECT $36 AS slot") && sql.contains("SELECT $12 AS slot"), "{sql}");
        assert!(sql.contains("WHERE digest = $13 AND state = $17 AND client_id = $18"), "{sql}");
        assert!(sql.contains("SELECT $37, ") && sql.contains("$49 WHERE EXISTS"), "{sql}");
        assert!(sql.contains("u.id = $40 AND NOT u.disabled") && sql.contains("SELECT $50 AS slot"), "{sql}");
        assert!(sql.contains("SELECT $64 AS slot") && sql.contains("changes() = 1 AND r.digest = $51; "), "{sql}");
        assert!(!sql.contains("$65"), "{sql}");
    }
}
