use super::corrupt;
use crate::entity::revocations::{ActiveModel, Column, Entity, Model};
use crate::entity::set_receivers;
use crate::error;
use crate::SqlStore;
use async_trait::async_trait;
use sea_orm::sea_query::OnConflict;
use sea_orm::{ActiveValue, ColumnTrait, EntityTrait, PaginatorTrait, QueryFilter, QueryOrder, QuerySelect};
use tessera_core::ports::{LoggedRevocation, Revocation, RevocationLog, SetAcks};
use tessera_core::StoreResult;

const TABLE: &str = "revocations";

fn to_row(r: &Revocation, at: i64) -> ActiveModel {
    let (kind, subject, value) = r.parts();
    ActiveModel {
        seq: ActiveValue::NotSet,
        kind: ActiveValue::Set(kind.to_owned()),
        subject: ActiveValue::Set(subject.to_owned()),
        value: ActiveValue::Set(value),
        relevant_until: ActiveValue::Set(r.relevant_until()),
        at: ActiveValue::Set(at),
    }
}

fn from_row(row: Model) -> StoreResult<LoggedRevocation> {
    let revocation = Revocation::from_parts(&row.kind, row.subject, row.value)
        .ok_or_else(|| corrupt(TABLE, format!("unknown kind {:?}", row.kind)))?;
    Ok(LoggedRevocation { seq: row.seq, at: row.at, revocation })
}

#[async_trait]
impl RevocationLog for SqlStore {
    async fn append_revocations(&self, revocations: &[Revocation], at: i64) -> StoreResult<()> {
        if revocations.is_empty() {
            return Ok(());
        }
        // One statement; an entry already in the log is skipped, not an error.
        Entity::insert_many(revocations.iter().map(|r| to_row(r, at)))
            .on_conflict(OnConflict::columns([Column::Kind, Column::Subject, Column::Value]).do_nothing().to_owned())
            .do_nothing()
            .exec_without_returning(&self.db)
            .await
            .map_err(error::from_db)?;
        Ok(())
    }

    async fn revocations_after(&self, after: i64, now: i64, limit: u64) -> StoreResult<Vec<LoggedRevocation>> {
        // Postgres binds LIMIT as a signed BIGINT.
        let limit = limit.min(i64::MAX as u64);
        Entity::find()
            .filter(Column::Seq.gt(after))
            .filter(Column::RelevantUntil.gt(now))
            .order_by_asc(Column::Seq)
            .limit(limit)
            .all(&self.db)
            .await
            .map_err(error::from_db)?
            .into_iter()
            .map(from_row)
            .collect()
    }

    async fn purge_revocations(&self, now: i64) -> StoreResult<u64> {
        let done = Entity::delete_many()
            .filter(Column::RelevantUntil.lte(now))
            .exec(&self.db)
            .await
            .map_err(error::from_db)?;
        Ok(done.rows_affected)
    }

    async fn client_id_retired(&self, client_id: &str) -> StoreResult<bool> {
        let (kind, _, forever) = Revocation::Client { id: String::new(), before: Revocation::FOREVER }.parts();
        let n = Entity::find()
            .filter(Column::Kind.eq(kind))
            .filter(Column::Subject.eq(client_id))
            .filter(Column::Value.eq(forever))
            .count(&self.db)
            .await
            .map_err(error::from_db)?;
        Ok(n > 0)
    }

    async fn last_revocation_seq(&self) -> StoreResult<i64> {
        // An empty log (or one whose every entry was purged) answers 0.
        let last: Option<Option<i64>> = Entity::find()
            .select_only()
            .column_as(Column::Seq.max(), "last")
            .into_tuple()
            .one(&self.db)
            .await
            .map_err(error::from_db)?;
        Ok(last.flatten().unwrap_or(0))
    }

    async fn revocation_log_epoch(&self, candidate: &str) -> StoreResult<String> {
        use crate::entity::revocation_log_meta as meta;
        let row = meta::ActiveModel { id: ActiveValue::Set(1), epoch: ActiveValue::Set(candidate.to_owned()) };
        // The first node to ask names the log; every later one reads that name.
        meta::Entity::insert(row)
            .on_conflict(OnConflict::column(meta::Column::Id).do_nothing().to_owned())
            .do_nothing()
            .exec_without_returning(&self.db)
            .await
            .map_err(error::from_db)?;
        let stored = meta::Entity::find_by_id(1).one(&self.db).await.map_err(error::from_db)?;
        stored.map(|m| m.epoch).ok_or_else(|| corrupt("revocation_log_meta", "the log's identity is missing"))
    }

    async fn set_acks(&self, receiver: &str) -> StoreResult<SetAcks> {
        let Some(row) = set_receivers::Entity::find_by_id(receiver).one(&self.db).await.map_err(error::from_db)? else {
            return Ok(SetAcks::default());
        };
        let above = serde_json::from_str(&row.acked_above).map_err(|e| corrupt("set_receivers", e))?;
        Ok(SetAcks { through: row.acked_through, above })
    }

    async fn save_set_acks(&self, receiver: &str, acks: &SetAcks) -> StoreResult<()> {
        let above = serde_json::to_string(&acks.above).map_err(|e| corrupt("set_receivers", e))?;
        let row = set_receivers::ActiveModel {
            client_id: ActiveValue::Set(receiver.to_owned()),
            acked_through: ActiveValue::Set(acks.through),
            acked_above: ActiveValue::Set(above),
        };
        set_receivers::Entity::insert(row)
            .on_conflict(
                OnConflict::column(set_receivers::Column::ClientId)
                    .update_columns([set_receivers::Column::AckedThrough, set_receivers::Column::AckedAbove])
                    .to_owned(),
            )
            .exec_without_returning(&self.db)
            .await
            .map_err(error::from_db)?;
        Ok(())
    }
}
