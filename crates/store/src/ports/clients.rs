use super::{corrupt, digest_from_hex};
use crate::entity::clients::{ActiveModel, Column, Entity, Model};
use crate::error;
use crate::SqlStore;
use async_trait::async_trait;
use sea_orm::sea_query::Expr;
use sea_orm::{ColumnTrait, EntityTrait, IntoActiveModel, QueryFilter, QueryOrder};
use tessera_core::model::{Client, GrantType};
use tessera_core::ports::ClientStore;
use tessera_core::StoreResult;
use tessera_crypto::Digest;

const TABLE: &str = "clients";

fn to_row(client: &Client) -> StoreResult<ActiveModel> {
    let grant_types: Vec<&str> = client.grant_types.iter().map(|g| g.as_str()).collect();
    Ok(Model {
        id: client.id.clone(),
        name: client.name.clone(),
        secret_digest: client.secret_digest.map(|d| d.to_hex()),
        confidential: client.confidential,
        grant_types: to_json(&grant_types)?,
        redirect_uris: to_json(&client.redirect_uris)?,
        scopes: to_json(&client.scopes)?,
        access_token_ttl: client.access_token_ttl,
        refresh_token_ttl: client.refresh_token_ttl,
        skip_consent: client.skip_consent,
        allow_implicit: client.allow_implicit,
        allow_plain_pkce: client.allow_plain_pkce,
        created_at: client.created_at,
        watch_revocations: client.watch_revocations,
    }
    .into_active_model())
}

fn from_row(row: Model) -> StoreResult<Client> {
    let grant_types = from_json(&row.grant_types)?
        .iter()
        .map(|g| GrantType::parse(g).ok_or_else(|| corrupt(TABLE, format!("unknown grant type {g:?}"))))
        .collect::<StoreResult<Vec<_>>>()?;
    Ok(Client {
        secret_digest: row.secret_digest.as_deref().map(|hex| digest_from_hex(TABLE, hex)).transpose()?,
        grant_types,
        redirect_uris: from_json(&row.redirect_uris)?,
        scopes: from_json(&row.scopes)?,
        id: row.id,
        name: row.name,
        confidential: row.confidential,
        access_token_ttl: row.access_token_ttl,
        refresh_token_ttl: row.refresh_token_ttl,
        skip_consent: row.skip_consent,
        allow_implicit: row.allow_implicit,
        allow_plain_pkce: row.allow_plain_pkce,
        created_at: row.created_at,
        watch_revocations: row.watch_revocations,
    })
}

fn to_json<S: AsRef<str>>(list: &[S]) -> StoreResult<String> {
    let list: Vec<&str> = list.iter().map(AsRef::as_ref).collect();
    serde_json::to_string(&list).map_err(|e| corrupt(TABLE, e))
}

fn from_json(text: &str) -> StoreResult<Vec<String>> {
    serde_json::from_str(text).map_err(|e| corrupt(TABLE, e))
}

#[async_trait]
impl ClientStore for SqlStore {
    async fn create_client(&self, client: &Client) -> StoreResult<()> {
        Entity::insert(to_row(client)?).exec_without_returning(&self.db).await.map_err(error::from_db)?;
        Ok(())
    }

    async fn get_client(&self, id: &str) -> StoreResult<Option<Client>> {
        Entity::find_by_id(id).one(&self.db).await.map_err(error::from_db)?.map(from_row).transpose()
    }

    async fn list_clients(&self) -> StoreResult<Vec<Client>> {
        Entity::find()
            .order_by_asc(Column::Id)
            .all(&self.db)
            .await
            .map_err(error::from_db)?
            .into_iter()
            .map(from_row)
            .collect()
    }

    async fn delete_client(&self, id: &str) -> StoreResult<bool> {
        let res = Entity::delete_by_id(id).exec(&self.db).await.map_err(error::from_db)?;
        Ok(res.rows_affected > 0)
    }

    async fn set_client_watch_revocations(&self, id: &str, allowed: bool) -> StoreResult<bool> {
        let res = Entity::update_many()
            .col_expr(Column::WatchRevocations, Expr::value(allowed))
            .filter(Column::Id.eq(id))
            .exec(&self.db)
            .await
            .map_err(error::from_db)?;
        Ok(res.rows_affected > 0)
    }

    async fn set_client_secret(&self, id: &str, digest: Digest) -> StoreResult<bool> {
        let res = Entity::update_many()
            .col_expr(Column::SecretDigest, Expr::value(digest.to_hex()))
            .filter(Column::Id.eq(id))
            .exec(&self.db)
            .await
            .map_err(error::from_db)?;
        Ok(res.rows_affected > 0)
    }
}
