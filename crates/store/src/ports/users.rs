use crate::entity::users::{Column, Entity, Model};
use crate::error;
use crate::SqlStore;
use async_trait::async_trait;
use sea_orm::sea_query::{Expr, SimpleExpr};
use sea_orm::{ColumnTrait, EntityTrait, IntoActiveModel, QueryFilter, QueryOrder};
use tessera_core::model::User;
use tessera_core::ports::UserStore;
use tessera_core::StoreResult;

pub(crate) fn from_row(row: Model) -> User {
    User {
        id: row.id,
        username: row.username,
        password_hash: row.password_hash,
        disabled: row.disabled,
        email: row.email,
        name: row.name,
        created_at: row.created_at,
    }
}

impl SqlStore {
    /// Sets one column of a user found by username and reads the user back.
    async fn update_user(&self, username: &str, column: Column, value: SimpleExpr) -> StoreResult<Option<User>> {
        let res = Entity::update_many()
            .col_expr(column, value)
            .filter(Column::Username.eq(username))
            .exec(&self.db)
            .await
            .map_err(error::from_db)?;
        if res.rows_affected == 0 {
            return Ok(None);
        }
        self.find_user_by_username(username).await
    }
}

#[async_trait]
impl UserStore for SqlStore {
    async fn create_user(&self, user: &User) -> StoreResult<()> {
        let row = Model {
            id: user.id.clone(),
            username: user.username.clone(),
            password_hash: user.password_hash.clone(),
            disabled: user.disabled,
            email: user.email.clone(),
            name: user.name.clone(),
            created_at: user.created_at,
        };
        Entity::insert(row.into_active_model()).exec_without_returning(&self.db).await.map_err(error::from_db)?;
        Ok(())
    }

    async fn find_user_by_username(&self, username: &str) -> StoreResult<Option<User>> {
        let row = Entity::find().filter(Column::Username.eq(username)).one(&self.db).await.map_err(error::from_db)?;
        Ok(row.map(from_row))
    }

    async fn get_user(&self, id: &str) -> StoreResult<Option<User>> {
        let row = Entity::find_by_id(id).one(&self.db).await.map_err(error::from_db)?;
        Ok(row.map(from_row))
    }

    async fn list_users(&self) -> StoreResult<Vec<User>> {
        let rows = Entity::find().order_by_asc(Column::Username).all(&self.db).await.map_err(error::from_db)?;
        Ok(rows.into_iter().map(from_row).collect())
    }

    async fn set_user_disabled(&self, username: &str, disabled: bool) -> StoreResult<Option<User>> {
        self.update_user(username, Column::Disabled, Expr::value(disabled)).await
    }

    async fn set_user_password(&self, username: &str, password_hash: &str) -> StoreResult<Option<User>> {
        self.update_user(username, Column::PasswordHash, Expr::value(password_hash)).await
    }
}
