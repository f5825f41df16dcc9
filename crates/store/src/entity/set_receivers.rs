//! `set_receivers`: what each receiver of Security Event Tokens by poll has acknowledged.

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "set_receivers")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub client_id: String,
    /// Every log entry up to this position is acknowledged.
    pub acked_through: i64,
    /// JSON array of the positions above `acked_through` acknowledged out of order.
    #[sea_orm(column_type = "Text")]
    pub acked_above: String,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
