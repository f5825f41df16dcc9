//! `refresh_tokens`: one row per refresh token, keyed by its digest; rotations add rows to
//! the same family.

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "refresh_tokens")]
pub struct Model {
    /// Hex SHA-256 of the token.
    #[sea_orm(primary_key, auto_increment = false)]
    pub digest: String,
    #[sea_orm(indexed)]
    pub family_id: String,
    pub client_id: String,
    pub user_id: Option<String>,
    #[sea_orm(column_type = "Text")]
    pub scope: String,
    pub issued_at: i64,
    pub expires_at: i64,
    pub auth_time: Option<i64>,
    pub access_jti: String,
    pub access_exp: i64,
    /// `active`, `rotated` or `revoked` (`RefreshState::as_str`).
    pub state: String,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
