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
    /// When the token was rotated; null while active (and on rows rotated before it was kept).
    pub rotated_at: Option<i64>,
    /// The salt its successor was derived from; set together with `rotated_at`.
    pub successor_salt: Option<SaltBytes>,
}

/// A successor salt as stored. Hand-written `Debug`, so a row printed whole shows no salt.
#[derive(Clone, PartialEq, Eq, DeriveValueType)]
pub struct SaltBytes(pub Vec<u8>);

impl std::fmt::Debug for SaltBytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SaltBytes(<redacted>)")
    }
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {
    /// The user the token stands for, read with it in one query (no foreign key: a token
    /// outlives nothing it needs, and a deleted user's tokens simply find no user).
    #[sea_orm(belongs_to = "super::users::Entity", from = "Column::UserId", to = "super::users::Column::Id")]
    User,
}

impl Related<super::users::Entity> for Entity {
    fn to() -> RelationDef {
        Relation::User.def()
    }
}

impl ActiveModelBehavior for ActiveModel {}
