//! `revocations`: the durable revocation log (DESIGN.md rule 9), drained by every node.

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "revocations")]
pub struct Model {
    /// The log position: increases with every append.
    #[sea_orm(primary_key)]
    pub seq: i64,
    /// "access", "user" or "client".
    pub kind: String,
    /// The access token's `jti`, or the user's or client's id.
    pub subject: String,
    /// The access token's `exp`, or the cut-off ("issued before").
    pub value: i64,
    /// When the entry stops mattering (`i64::MAX`: never).
    pub relevant_until: i64,
    /// When it was appended.
    pub at: i64,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
