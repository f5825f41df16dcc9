//! Group commit for the one-step refresh rotation
//! ([`tessera_core::ports::RefreshStore::rotate_live_refresh`]): rotations asked for at the
//! same moment are written together, in one transaction committed once.
//!
//! - **SQLite** takes one writer at a time, and each call into sqlx's SQLite connection is a
//!   hand-off to its worker thread and back: rotations done one by one queue for the writer,
//!   which spends most of its time waking threads rather than writing. A batch is one string of
//!   statements, run by the writer in one go.
//! - **Postgres** spends most of a lone rotation on what every statement and every commit
//!   costs (the round trip, the executor's start, the commit's WAL flush), not on the rows. A
//!   batch is one statement over arrays of the rotations' values.
//!
//! A caller waits for its batch as it would for its own statement; a batch that fails is
//! rolled back and each of its rotations is then tried alone, so one rotation's failure is
//! never another's. A lone rotation is a batch of one: the same statements either way.
//!
//! Bounded (DESIGN.md rule 8): at most [`MAX_BATCH`] rotations a batch and [`QUEUE`] waiting;
//! a caller finding the queue full waits for room.

use crate::circuit::Db;
use crate::entity::refresh_tokens::Model;
use crate::error;
use sea_orm::sqlx::{self, SqlitePool};
use sea_orm::{DbErr, FromQueryResult, QueryResult, RuntimeErr};
use std::fmt::Write as _;
use tessera_core::model::User;
use tessera_core::ports::{RefreshRecord, RefreshState, Succession, Successor};
use tessera_core::{StoreError, StoreResult};
use tessera_crypto::Digest;
use tokio::sync::{mpsc, oneshot};

/// Rotations written in one transaction at most.
const MAX_BATCH: usize = 32;
/// Rotations that may wait for the writer.
const QUEUE: usize = 1024;
/// How long a Postgres batch may take. (A SQLite batch is not cut short: dropped part-way, it
/// would leave its transaction open on the writer; a local file does not stop answering.)
const POSTGRES_BATCH_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Where the batches go.
#[derive(Clone)]
pub(crate) enum Writer {
    /// SQLite's one writer connection.
    Sqlite(SqlitePool),
    /// The Postgres pool, behind its circuit breaker.
    Postgres(Db),
}

/// What one rotation found: the old token as it was and its user, or `None` when it was not
/// live and nothing changed.
pub(crate) type Rotated = Option<(RefreshRecord, Option<User>)>;

/// One rotation asked for.
pub(crate) struct LiveRotation {
    pub old: Digest,
    pub client_id: String,
    pub succession: Succession,
    pub successor: Successor,
}

struct Job {
    rotation: LiveRotation,
    reply: oneshot::Sender<StoreResult<Rotated>>,
}

/// The queue in front of the writer. Clones share it; the task writing the batches ends when
/// the last clone is gone.
#[derive(Clone)]
pub(crate) struct Rotations {
    queue: mpsc::Sender<Job>,
}

impl Rotations {
    /// Starts the task that writes batches to `writer`.
    pub(crate) fn start(writer: Writer) -> Rotations {
        let (queue, jobs) = mpsc::channel(QUEUE);
        tokio::spawn(write_batches(writer, jobs));
        Rotations { queue }
    }

    /// Rotates one token, in whatever batch it joins.
    pub(crate) async fn rotate(&self, rotation: LiveRotation) -> StoreResult<Rotated> {
        let gone = || StoreError::Other("the refresh rotation queue has stopped".to_owned());
        let (reply, answer) = oneshot::channel();
        self.queue.send(Job { rotation, reply }).await.map_err(|_| gone())?;
        answer.await.map_err(|_| gone())?
    }
}

/// Takes whatever has queued up (one rotation at least, [`MAX_BATCH`] at most), writes it as
/// one batch, answers each caller, and goes on until every sender is gone. One batch at a
/// time: while it is written the next one gathers, so the busier the node, the larger the
/// batches (more in flight at once made smaller batches and fewer rotations a second on
/// Postgres: see the Performance section of the README).
async fn write_batches(writer: Writer, mut jobs: mpsc::Receiver<Job>) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while jobs.recv_many(&mut batch, MAX_BATCH).await > 0 {
        write_batch(&writer, &mut batch).await;
    }
}

async fn write_batch(writer: &Writer, batch: &mut Vec<Job>) {
    let rotations: Vec<&LiveRotation> = batch.iter().map(|job| &job.rotation).collect();
    match rotate_together(writer, &rotations).await {
        Ok(found) => {
            for (job, found) in batch.drain(..).zip(found) {
                // A caller that went away: its rotation is committed all the same, and a
                // retry of its refresh finds the successor (the retry window).
                let _ = job.reply.send(Ok(found));
            }
        }
        Err(_) if batch.len() > 1 => {
            for job in batch.drain(..) {
                let alone = rotate_together(writer, &[&job.rotation]).await;
                let _ = job.reply.send(alone.map(|mut found| found.pop().flatten()));
            }
        }
        Err(e) => {
            for job in batch.drain(..) {
                let _ = job.reply.send(Err(e.clone()));
            }
        }
    }
}

/// Bound values per rotation in [`sqlite_batch`].
const VALUES: usize = 11;

/// The batch for `n` rotations: `BEGIN IMMEDIATE`, then for each the `UPDATE` guarded by the
/// live checks, the `INSERT` of the successor copied from the row this rotation updated
/// (found by the random salt it wrote), and the `SELECT` of that row with its user, tagged with
/// the rotation's slot; then `COMMIT`. Two rotations of the same token in one batch: the
/// first `UPDATE` flips it, the second finds it rotated, so exactly one wins, as apart.
fn sqlite_batch(n: usize) -> String {
    let mut sql = String::from("BEGIN IMMEDIATE; ");
    for slot in 0..n {
        let v = |i: usize| slot * VALUES + i;
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
             SELECT {slot} AS slot, r.*, u.id AS u_id, u.username AS u_username, \
               u.password_hash AS u_password_hash, u.disabled AS u_disabled, u.email AS u_email, \
               u.name AS u_name, u.created_at AS u_created_at \
             FROM refresh_tokens r LEFT JOIN users u ON u.id = r.user_id \
             WHERE r.digest = ${old} AND r.successor_salt = ${salt}; ",
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
        );
    }
    sql.push_str("COMMIT");
    sql
}

/// Postgres: the batch as one statement over arrays, one element a rotation. The `UPDATE`
/// joins the rotations to their rows and matches only live ones (the same checks as SQLite's),
/// returning each with its rotation's slot and successor values; the `INSERT` copies from what
/// it matched; the `SELECT` adds the users. Two rotations of one token in a batch join the
/// same row, which Postgres updates once, for one of them: exactly one wins. Concurrent
/// batches rotating the same token wait on its row lock and re-check `state`, as lone
/// statements do (rotations on other nodes).
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
          auth_time, next_jti, next_exp, $12 FROM old) \
    SELECT old.*, u.id AS u_id, u.username AS u_username, u.password_hash AS u_password_hash, \
      u.disabled AS u_disabled, u.email AS u_email, u.name AS u_name, u.created_at AS u_created_at \
    FROM old LEFT JOIN users u ON u.id = old.user_id";

/// Writes `rotations` in one transaction: what each found, in their order. A batch that fails
/// changes nothing.
async fn rotate_together(writer: &Writer, rotations: &[&LiveRotation]) -> StoreResult<Vec<Rotated>> {
    let sqlx_err = |e| error::from_db(DbErr::Query(RuntimeErr::SqlxError(e)));
    let rows: Vec<QueryResult> = match writer {
        Writer::Sqlite(pool) => rotate_on_sqlite(pool, rotations).await.map_err(sqlx_err)?,
        Writer::Postgres(db) => {
            let pool = db.pool().get_postgres_connection_pool();
            let column = |f: &dyn Fn(&LiveRotation) -> i64| rotations.iter().map(|r| f(r)).collect::<Vec<i64>>();
            let query = sqlx::query(POSTGRES_BATCH)
                .bind((0..rotations.len()).map(|slot| slot as i64).collect::<Vec<i64>>())
                .bind(rotations.iter().map(|r| r.old.to_hex()).collect::<Vec<String>>())
                .bind(column(&|r| r.succession.at))
                .bind(rotations.iter().map(|r| r.succession.salt.expose().to_vec()).collect::<Vec<Vec<u8>>>())
                .bind(rotations.iter().map(|r| r.client_id.clone()).collect::<Vec<String>>())
                .bind(rotations.iter().map(|r| r.successor.digest.to_hex()).collect::<Vec<String>>())
                .bind(column(&|r| r.successor.issued_at))
                .bind(column(&|r| r.successor.expires_at))
                .bind(rotations.iter().map(|r| r.successor.access_jti.clone()).collect::<Vec<String>>())
                .bind(column(&|r| r.successor.access_exp))
                .bind(RefreshState::Rotated.as_str())
                .bind(RefreshState::Active.as_str());
            // Every rotation of this node waits on the batch: a database that stops answering
            // (a dead peer the kernel has not noticed yet) fails it as an outage, which opens
            // the circuit, instead of holding them all.
            let fetched = db.guard(async {
                match tokio::time::timeout(POSTGRES_BATCH_TIMEOUT, query.fetch_all(pool)).await {
                    Ok(rows) => rows.map_err(|e| DbErr::Query(RuntimeErr::SqlxError(e))),
                    Err(_) => Err(DbErr::Conn(RuntimeErr::Internal(format!(
                        "the database did not answer a batch of refresh rotations within {} s",
                        POSTGRES_BATCH_TIMEOUT.as_secs()
                    )))),
                }
            });
            fetched.await.map_err(error::from_db)?.into_iter().map(QueryResult::from).collect()
        }
    };
    let mut found: Vec<Rotated> = (0..rotations.len()).map(|_| None).collect();
    for row in rows {
        let (slot, rotated) = slot_and_rotated(&row)?;
        if let Some(entry) = found.get_mut(slot) {
            *entry = Some(rotated);
        }
    }
    Ok(found)
}

/// SQLite: the batch on the writer connection. One that fails part-way is rolled back before
/// the connection goes back to the pool, or the connection is closed.
async fn rotate_on_sqlite(pool: &SqlitePool, rotations: &[&LiveRotation]) -> Result<Vec<QueryResult>, sqlx::Error> {
    let sql = sqlite_batch(rotations.len());
    let mut query = sqlx::query(&sql);
    for r in rotations {
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
            .bind(r.successor.access_exp);
    }
    let mut conn = pool.acquire().await?;
    let rows = query.fetch_all(&mut *conn).await;
    if rows.is_err() && sqlx::query("ROLLBACK").execute(&mut *conn).await.is_err() {
        // Failed before BEGIN took effect, or the connection is broken: either way it must
        // not go back to the pool with a transaction that might still be open.
        conn.close_on_drop();
    }
    Ok(rows?.into_iter().map(QueryResult::from).collect())
}

fn slot_and_rotated(row: &QueryResult) -> StoreResult<(usize, (RefreshRecord, Option<User>))> {
    let slot: i64 = row.try_get("", "slot").map_err(error::from_db)?;
    Ok((usize::try_from(slot).unwrap_or(usize::MAX), live_and_user(row)?))
}

/// The row of a one-step rotation (the old token as the rotation left it, with its user's
/// columns prefixed `u_`), as the caller wants it: the token as it was before.
pub(crate) fn live_and_user(row: &QueryResult) -> StoreResult<(RefreshRecord, Option<User>)> {
    let rotated = crate::ports::refresh::from_row(Model::from_query_result(row, "").map_err(error::from_db)?)?;
    let record = RefreshRecord { state: RefreshState::Active, succession: None, ..rotated };
    // The LEFT JOIN found no user where `u_id` is NULL.
    let user = match row.try_get::<Option<String>>("", "u_id").map_err(error::from_db)? {
        None => None,
        Some(_) => Some(crate::entity::users::Model::from_query_result(row, "u_").map_err(error::from_db)?),
    };
    Ok((record, user.map(crate::ports::users::from_row)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_rotation_in_a_batch_binds_its_own_values_and_the_batch_commits_once() {
        let sql = sqlite_batch(3);
        assert!(sql.starts_with("BEGIN IMMEDIATE; ") && sql.ends_with("COMMIT"));
        assert_eq!(sql.matches("COMMIT").count(), 1);
        assert_eq!(sql.matches("UPDATE refresh_tokens").count(), 3);
        assert!(sql.contains("SELECT 2 AS slot") && sql.contains("$33") && !sql.contains("$34"));
        assert!(sql.contains("WHERE digest = $12 AND state = $16 AND client_id = $17"), "{sql}");
    }
}
