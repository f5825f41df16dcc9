//! Group commit for the one-step refresh rotation on SQLite
//! ([`tessera_core::ports::RefreshStore::rotate_live_refresh`]).
//!
//! SQLite takes one writer at a time, and each call into sqlx's SQLite connection is a hand-off
//! to its worker thread and back: rotations done one by one queue for the writer, which spends
//! most of its time waking threads rather than writing. Here rotations asked for at the same
//! moment are written together, as one batch of statements in one transaction, committed once.
//! A caller waits for its batch as it would for its own statement; a batch that fails is
//! rolled back and each of its rotations is then tried alone, so one rotation's failure is
//! never another's.
//!
//! Bounded (DESIGN.md rule 8): at most [`MAX_BATCH`] rotations a batch and [`QUEUE`] waiting;
//! a caller finding the queue full waits for room.

use crate::entity::refresh_tokens::Model;
use crate::error;
use sea_orm::sqlx::{self, sqlite::SqliteRow, SqlitePool};
use sea_orm::{FromQueryResult, QueryResult};
use std::fmt::Write as _;
use tessera_core::model::User;
use tessera_core::ports::{RefreshRecord, RefreshState, Succession, Successor};
use tessera_core::{StoreError, StoreResult};
use tessera_crypto::Digest;
use tokio::sync::{mpsc, oneshot};

/// Rotations written in one transaction at most (each binds 11 values).
const MAX_BATCH: usize = 32;
/// Rotations that may wait for the writer.
const QUEUE: usize = 1024;

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
    /// Starts the task that writes batches to `pool` (SQLite's writer connection).
    pub(crate) fn start(pool: SqlitePool) -> Rotations {
        let (queue, jobs) = mpsc::channel(QUEUE);
        tokio::spawn(write_batches(pool, jobs));
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
/// one batch, answers each caller, and goes on until every sender is gone.
async fn write_batches(pool: SqlitePool, mut jobs: mpsc::Receiver<Job>) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while jobs.recv_many(&mut batch, MAX_BATCH).await > 0 {
        let rotations: Vec<&LiveRotation> = batch.iter().map(|job| &job.rotation).collect();
        match rotate_together(&pool, &rotations).await {
            Ok(found) => {
                for (job, found) in batch.drain(..).zip(found) {
                    // A caller that went away: its rotation is committed all the same, and
                    // a retry of its refresh finds the successor (the retry window).
                    let _ = job.reply.send(Ok(found));
                }
            }
            Err(_) if batch.len() > 1 => {
                for job in batch.drain(..) {
                    let alone = rotate_together(&pool, &[&job.rotation]).await;
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
}

/// Bound values per rotation in [`batch_sql`].
const VALUES: usize = 11;

/// The batch for `n` rotations: `BEGIN IMMEDIATE`, then for each the `UPDATE` guarded by the
/// live checks, the `INSERT` of the successor copied from the row this rotation updated
/// (found by the random salt it wrote), and the `SELECT` of that row with its user, tagged with
/// the rotation's slot; then `COMMIT`. Two rotations of the same token in one batch: the
/// first `UPDATE` flips it, the second finds it rotated, so exactly one wins, as apart.
fn batch_sql(n: usize) -> String {
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

/// Writes `rotations` in one transaction: what each found, in their order. A batch that fails
/// part-way is rolled back before its connection goes back to the pool (or the connection is
/// closed), and changes nothing.
async fn rotate_together(pool: &SqlitePool, rotations: &[&LiveRotation]) -> StoreResult<Vec<Rotated>> {
    let sql = batch_sql(rotations.len());
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
    let sqlx_err = |e| error::from_db(sea_orm::DbErr::Query(sea_orm::RuntimeErr::SqlxError(e)));
    let mut conn = pool.acquire().await.map_err(sqlx_err)?;
    let rows = query.fetch_all(&mut *conn).await;
    if rows.is_err() && sqlx::query("ROLLBACK").execute(&mut *conn).await.is_err() {
        // Failed before BEGIN took effect, or the connection is broken: either way it must
        // not go back to the pool with a transaction that might still be open.
        conn.close_on_drop();
    }
    let mut found: Vec<Rotated> = (0..rotations.len()).map(|_| None).collect();
    for row in rows.map_err(sqlx_err)? {
        let (slot, rotated) = slot_and_rotated(row)?;
        if let Some(entry) = found.get_mut(slot) {
            *entry = Some(rotated);
        }
    }
    Ok(found)
}

fn slot_and_rotated(row: SqliteRow) -> StoreResult<(usize, (RefreshRecord, Option<User>))> {
    let row = QueryResult::from(row);
    let slot: i64 = row.try_get("", "slot").map_err(error::from_db)?;
    Ok((usize::try_from(slot).unwrap_or(usize::MAX), live_and_user(&row)?))
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
        let sql = batch_sql(3);
        assert!(sql.starts_with("BEGIN IMMEDIATE; ") && sql.ends_with("COMMIT"));
        assert_eq!(sql.matches("COMMIT").count(), 1);
        assert_eq!(sql.matches("UPDATE refresh_tokens").count(), 3);
        assert!(sql.contains("SELECT 2 AS slot") && sql.contains("$33") && !sql.contains("$34"));
        assert!(sql.contains("WHERE digest = $12 AND state = $16 AND client_id = $17"), "{sql}");
    }
}
