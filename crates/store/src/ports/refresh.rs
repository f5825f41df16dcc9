use super::{corrupt, digest_from_hex};
use crate::entity::refresh_tokens::{Column, Entity, Model, SaltBytes};
use crate::error;
use crate::SqlStore;
use async_trait::async_trait;
use sea_orm::sea_query::Expr;
use sea_orm::{
    ColumnTrait, ConnectionTrait, DbBackend, EntityTrait, IntoActiveModel, QueryFilter, QueryOrder, QuerySelect,
    Statement, TransactionTrait,
};
use tessera_core::model::User;
use tessera_core::ports::{RefreshRecord, RefreshState, RefreshStore, Rotation, Succession, Successor};
use tessera_core::StoreResult;
use tessera_crypto::succession::SuccessorSalt;
use tessera_crypto::Digest;

const TABLE: &str = "refresh_tokens";
const ACTIVE: &str = RefreshState::Active.as_str();
const ROTATED: &str = RefreshState::Rotated.as_str();
const REVOKED: &str = RefreshState::Revoked.as_str();

/// Enough sweeps to outlast any rotation that was in flight when the revocation began.
const MAX_REVOKE_SWEEPS: usize = 8;

pub(crate) fn to_row(record: &RefreshRecord, state: RefreshState) -> Model {
    Model {
        digest: record.digest.to_hex(),
        family_id: record.family_id.clone(),
        client_id: record.client_id.clone(),
        user_id: record.user_id.clone(),
        scope: record.scope.clone(),
        issued_at: record.issued_at,
        expires_at: record.expires_at,
        auth_time: record.auth_time,
        access_jti: record.access_jti.clone(),
        access_exp: record.access_exp,
        state: state.as_str().to_owned(),
        rotated_at: record.succession.as_ref().map(|s| s.at),
        successor_salt: record.succession.as_ref().map(|s| SaltBytes(s.salt.expose().to_vec())),
    }
}

pub(crate) fn from_row(row: Model) -> StoreResult<RefreshRecord> {
    let succession = match (row.rotated_at, &row.successor_salt) {
        (Some(at), Some(salt)) => Some(Succession {
            at,
            salt: SuccessorSalt::from_slice(&salt.0)
                .ok_or_else(|| corrupt(TABLE, "a successor salt is not 32 bytes"))?,
        }),
        (None, None) => None,
        _ => return Err(corrupt(TABLE, "rotated_at and successor_salt are set one without the other")),
    };
    Ok(RefreshRecord {
        digest: digest_from_hex(TABLE, &row.digest)?,
        state: RefreshState::parse(&row.state)
            .ok_or_else(|| corrupt(TABLE, format!("unknown state {:?}", row.state)))?,
        family_id: row.family_id,
        client_id: row.client_id,
        user_id: row.user_id,
        scope: row.scope,
        issued_at: row.issued_at,
        expires_at: row.expires_at,
        auth_time: row.auth_time,
        access_jti: row.access_jti,
        access_exp: row.access_exp,
        succession,
    })
}

impl SqlStore {
    /// Stores a refresh token as it is, in any state: for seeding a store (the contract tests
    /// do). Grants start families with [`RefreshStore::start_family`].
    pub async fn insert_refresh(&self, record: &RefreshRecord) -> StoreResult<()> {
        Entity::insert(to_row(record, record.state).into_active_model())
            .exec_without_returning(&self.db)
            .await
            .map_err(error::from_db)?;
        Ok(())
    }
}

#[async_trait]
impl RefreshStore for SqlStore {
    async fn start_family(&self, record: &RefreshRecord) -> StoreResult<Option<User>> {
        // Written together with the other refresh-token writes of the moment, the user read
        // and checked by the same statements (refresh_batch.rs).
        self.refresh_writes.start_family(record.clone()).await
    }

    async fn get_refresh(&self, digest: Digest) -> StoreResult<Option<RefreshRecord>> {
        Entity::find_by_id(digest.to_hex()).one(&self.db).await.map_err(error::from_db)?.map(from_row).transpose()
    }

    async fn get_refresh_and_user(&self, digest: Digest) -> StoreResult<Option<(RefreshRecord, Option<User>)>> {
        let found = Entity::find_by_id(digest.to_hex())
            .find_also_related(crate::entity::users::Entity)
            .one(&self.db)
            .await
            .map_err(error::from_db)?;
        found.map(|(row, user)| Ok((from_row(row)?, user.map(super::users::from_row)))).transpose()
    }

    async fn rotate_refresh(&self, old: Digest, succession: &Succession, new: &RefreshRecord) -> StoreResult<Rotation> {
        let old = old.to_hex();
        let rotated = match self.db.get_database_backend() {
            DbBackend::Postgres => rotate_in_one_statement(&self.db, &old, succession, new).await?,
            _ => rotate_in_a_transaction(&self.db, &old, succession, new).await?,
        };
        if rotated {
            return Ok(Rotation::Rotated);
        }
        let row = Entity::find_by_id(old).one(&self.db).await.map_err(error::from_db)?;
        Ok(match row {
            Some(row) if row.state == ROTATED => Rotation::Reused { family_id: row.family_id },
            _ => Rotation::Unknown,
        })
    }

    async fn rotate_live_refresh(
        &self,
        old: Digest,
        client_id: &str,
        succession: &Succession,
        successor: &Successor,
    ) -> StoreResult<Option<(RefreshRecord, Option<User>)>> {
        // Written together with the rotations asked for at the same moment (refresh_batch.rs).
        let rotation = crate::refresh_batch::LiveRotation {
            old,
            client_id: client_id.to_owned(),
            succession: succession.clone(),
            successor: successor.clone(),
        };
        self.refresh_writes.rotate(rotation).await
    }

    async fn revoke_family(&self, family_id: &str) -> StoreResult<Vec<(String, i64)>> {
        // One UPDATE revokes the family. On Postgres a rotation that was in flight when it
        // started can commit a new active row its snapshot did not see, so sweep again until
        // nothing changes; once every row is revoked no new row can join the family.
        let mut settled = false;
        for _ in 0..MAX_REVOKE_SWEEPS {
            let changed = Entity::update_many()
                .col_expr(Column::State, Expr::value(REVOKED))
                .filter(Column::FamilyId.eq(family_id))
                .filter(Column::State.ne(REVOKED))
                .exec(&self.db)
                .await
                .map_err(error::from_db)?
                .rows_affected;
            if changed == 0 {
                settled = true;
                break;
            }
        }
        // The contract is "every token of the family revoked": never report success short of it.
        if !settled {
            return Err(tessera_core::StoreError::Other(
                "the refresh-token family kept changing while it was being revoked".to_owned(),
            ));
        }
        Entity::find()
            .select_only()
            .column(Column::AccessJti)
            .column(Column::AccessExp)
            .filter(Column::FamilyId.eq(family_id))
            .order_by_asc(Column::IssuedAt)
            .order_by_asc(Column::Digest)
            .into_tuple::<(String, i64)>()
            .all(&self.db)
            .await
            .map_err(error::from_db)
    }
}

/// Postgres: the rotation as one statement, committed once. The `UPDATE` in the CTE matches
/// the old row only while it is active; concurrent rotations of the same token wait on its
/// row lock and re-check `state` (READ COMMITTED), so exactly one sees a row, and only that
/// one's `INSERT … SELECT` stores a successor. True when this call rotated it.
async fn rotate_in_one_statement(
    db: &impl ConnectionTrait,
    old: &str,
    succession: &Succession,
    new: &RefreshRecord,
) -> StoreResult<bool> {
    const SQL: &str = "WITH old AS (\
            UPDATE refresh_tokens SET state = $2, rotated_at = $3, successor_salt = $4 \
            WHERE digest = $1 AND state = $5 RETURNING 1) \
        INSERT INTO refresh_tokens (digest, family_id, client_id, user_id, scope, issued_at, expires_at, \
            auth_time, access_jti, access_exp, state) \
        SELECT $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $5 FROM old";
    let values: [sea_orm::Value; 15] = [
        old.into(),
        ROTATED.into(),
        succession.at.into(),
        succession.salt.expose().to_vec().into(),
        ACTIVE.into(),
        new.digest.to_hex().into(),
        new.family_id.as_str().into(),
        new.client_id.as_str().into(),
        new.user_id.clone().into(),
        new.scope.as_str().into(),
        new.issued_at.into(),
        new.expires_at.into(),
        new.auth_time.into(),
        new.access_jti.as_str().into(),
        new.access_exp.into(),
    ];
    let stmt = Statement::from_sql_and_values(DbBackend::Postgres, SQL, values);
    Ok(db.execute(stmt).await.map_err(error::from_db)?.rows_affected() == 1)
}

/// SQLite, which has no `UPDATE` inside a CTE: the same two writes in one transaction.
/// SQLite serializes writers, so exactly one of concurrent rotations flips the row.
async fn rotate_in_a_transaction(
    db: &(impl TransactionTrait + Sync),
    old: &str,
    succession: &Succession,
    new: &RefreshRecord,
) -> StoreResult<bool> {
    let txn = db.begin().await.map_err(error::from_db)?;
    let flipped = Entity::update_many()
        .col_expr(Column::State, Expr::value(ROTATED))
        .col_expr(Column::RotatedAt, Expr::value(succession.at))
        .col_expr(Column::SuccessorSalt, Expr::value(succession.salt.expose().to_vec()))
        .filter(Column::Digest.eq(old))
        .filter(Column::State.eq(ACTIVE))
        .exec(&txn)
        .await
        .map_err(error::from_db)?
        .rows_affected;
    if flipped != 1 {
        txn.rollback().await.map_err(error::from_db)?;
        return Ok(false);
    }
    Entity::insert(to_row(new, RefreshState::Active).into_active_model())
        .exec_without_returning(&txn)
        .await
        .map_err(error::from_db)?;
    txn.commit().await.map_err(error::from_db)?;
    Ok(true)
}
