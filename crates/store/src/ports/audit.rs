use crate::entity::audit_events::{ActiveModel, Column, Entity, Model};
use crate::error;
use crate::SqlStore;
use async_trait::async_trait;
use sea_orm::{ActiveValue, EntityTrait, QueryOrder, QuerySelect};
use tessera_core::ports::{AuditEvent, AuditKind, AuditLog};
use tessera_core::{StoreError, StoreResult};

fn from_row(row: Model) -> StoreResult<AuditEvent> {
    let kind = AuditKind::parse(&row.kind)
        .ok_or_else(|| StoreError::Other(format!("audit_events: unknown kind {:?}", row.kind)))?;
    Ok(AuditEvent { at: row.at, kind, client_id: row.client_id, user_id: row.user_id, detail: row.detail })
}

#[async_trait]
impl AuditLog for SqlStore {
    async fn record_event(&self, event: &AuditEvent) -> StoreResult<()> {
        let row = ActiveModel {
            id: ActiveValue::NotSet,
            at: ActiveValue::Set(event.at),
            kind: ActiveValue::Set(event.kind.as_str().to_owned()),
            client_id: ActiveValue::Set(event.client_id.clone()),
            user_id: ActiveValue::Set(event.user_id.clone()),
            detail: ActiveValue::Set(event.detail.clone()),
        };
        Entity::insert(row).exec_without_returning(&self.db).await.map_err(error::from_db)?;
        Ok(())
    }

    async fn recent_events(&self, limit: u64) -> StoreResult<Vec<AuditEvent>> {
        // Postgres binds LIMIT as a signed BIGINT.
        let limit = limit.min(i64::MAX as u64);
        let rows = Entity::find()
            .order_by_desc(Column::At)
            .order_by_desc(Column::Id)
            .limit(limit)
            .all(&self.db)
            .await
            .map_err(error::from_db)?;
        rows.into_iter().map(from_row).collect()
    }
}
