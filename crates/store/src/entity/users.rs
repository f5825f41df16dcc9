//! `users`: resource owners.

use sea_orm::entity::prelude::*;

// No derived `Debug`: the row holds a password hash.
#[derive(Clone, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "users")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: String,
    #[sea_orm(unique)]
    pub username: String,
    /// Argon2id PHC string.
    #[sea_orm(column_type = "Text")]
    pub password_hash: String,
    pub disabled: bool,
    pub email: Option<String>,
    pub name: Option<String>,
    pub created_at: i64,
}

impl std::fmt::Debug for Model {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("users::Model").field("id", &self.id).field("username", &self.username).finish_non_exhaustive()
    }
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
