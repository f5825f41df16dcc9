use crate::entity::consents::{ActiveModel, Column, Entity};
use crate::error;
use crate::SqlStore;
use async_trait::async_trait;
use sea_orm::sea_query::OnConflict;
use sea_orm::{ActiveValue, ColumnTrait, EntityTrait, QueryFilter, QueryOrder, QuerySelect};
use std::collections::BTreeSet;
use tessera_core::ports::ConsentStore;
use tessera_core::StoreResult;

#[async_trait]
impl ConsentStore for SqlStore {
    async fn granted_scopes(&self, user_id: &str, client_id: &str) -> StoreResult<Vec<String>> {
        Entity::find()
            .select_only()
            .column(Column::Scope)
            .filter(Column::UserId.eq(user_id))
            .filter(Column::ClientId.eq(client_id))
            .order_by_asc(Column::Scope)
            .into_tuple::<String>()
            .all(&self.db)
            .await
            .map_err(error::from_db)
    }

    async fn grant_scopes(&self, user_id: &str, client_id: &str, scopes: &[String]) -> StoreResult<()> {
        // A row per scope makes the union one INSERT that skips what is already there: no
        // read-modify-write, so concurrent grants cannot lose each other's scopes.
        let rows: Vec<ActiveModel> = scopes
            .iter()
            .collect::<BTreeSet<_>>()
            .into_iter()
            .map(|scope| ActiveModel {
                user_id: ActiveValue::Set(user_id.to_owned()),
                client_id: ActiveValue::Set(client_id.to_owned()),
                scope: ActiveValue::Set(scope.clone()),
            })
            .collect();
        if rows.is_empty() {
            return Ok(());
        }
        Entity::insert_many(rows)
            .on_conflict(OnConflict::columns([Column::UserId, Column::ClientId, Column::Scope]).do_nothing().to_owned())
            .exec_without_returning(&self.db)
            .await
            .map_err(error::from_db)?;
        Ok(())
    }
}
