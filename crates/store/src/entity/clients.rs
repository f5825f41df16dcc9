//! `clients`: registered OAuth clients.

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "clients")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: String,
    pub name: String,
    /// Hex SHA-256 of the secret; `None` for public clients.
    pub secret_digest: Option<String>,
    pub confidential: bool,
    /// JSON array of wire grant types.
    #[sea_orm(column_type = "Text")]
    pub grant_types: String,
    /// JSON array of exact redirect URIs.
    #[sea_orm(column_type = "Text")]
    pub redirect_uris: String,
    /// JSON array of scope tokens.
    #[sea_orm(column_type = "Text")]
    pub scopes: String,
    pub access_token_ttl: Option<i64>,
    pub refresh_token_ttl: Option<i64>,
    pub skip_consent: bool,
    pub allow_implicit: bool,
    pub allow_plain_pkce: bool,
    pub created_at: i64,
    /// May watch revocations.
    pub watch_revocations: bool,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
