use crate::entity::signing_keys::{Column, Entity, Model};
use crate::error;
use crate::SqlStore;
use async_trait::async_trait;
use sea_orm::sea_query::Expr;
use sea_orm::{ColumnTrait, EntityTrait, IntoActiveModel, QueryFilter, QueryOrder};
use tessera_core::ports::{KeyStore, StoredKey};
use tessera_core::StoreResult;

fn from_row(row: Model) -> StoredKey {
    StoredKey {
        kid: row.kid,
        alg: row.alg,
        private_der: row.private_der,
        created_at: row.created_at,
        retired_at: row.retired_at,
    }
}

#[async_trait]
impl KeyStore for SqlStore {
    async fn list_keys(&self) -> StoreResult<Vec<StoredKey>> {
        let rows = Entity::find()
            .order_by_asc(Column::CreatedAt)
            .order_by_asc(Column::Kid)
            .all(&self.db)
            .await
            .map_err(error::from_db)?;
        Ok(rows.into_iter().map(from_row).collect())
    }

    async fn insert_key(&self, key: &StoredKey) -> StoreResult<()> {
        let row = Model {
            kid: key.kid.clone(),
            alg: key.alg.clone(),
            private_der: key.private_der.clone(),
            created_at: key.created_at,
            retired_at: key.retired_at,
        };
        Entity::insert(row.into_active_model()).exec_without_returning(&self.db).await.map_err(error::from_db)?;
        Ok(())
    }

    async fn retire_keys_except(&self, keep_kid: &str, at: i64) -> StoreResult<()> {
        Entity::update_many()
            .col_expr(Column::RetiredAt, Expr::value(at))
            .filter(Column::RetiredAt.is_null())
            .filter(Column::Kid.ne(keep_kid))
            .exec(&self.db)
            .await
            .map_err(error::from_db)?;
        Ok(())
    }
}
