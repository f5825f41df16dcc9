//! The durable revocation log: one row per revoked access token or per user/client cut-off,
//! appended before any announcement and read by every node from its last position.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(Revocations::Table)
                    .if_not_exists()
                    .col(ColumnDef::new(Revocations::Seq).big_integer().not_null().auto_increment().primary_key())
                    .col(ColumnDef::new(Revocations::Kind).string_len(16).not_null())
                    .col(ColumnDef::new(Revocations::Subject).string().not_null())
                    .col(ColumnDef::new(Revocations::Value).big_integer().not_null())
                    .col(ColumnDef::new(Revocations::RelevantUntil).big_integer().not_null())
                    .col(ColumnDef::new(Revocations::At).big_integer().not_null())
                    .to_owned(),
            )
            .await?;
        // Repeating a revocation appends nothing.
        manager
            .create_index(
                Index::create()
                    .name("ux_revocations_entry")
                    .table(Revocations::Table)
                    .col(Revocations::Kind)
                    .col(Revocations::Subject)
                    .col(Revocations::Value)
                    .unique()
                    .if_not_exists()
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("ix_revocations_relevant_until")
                    .table(Revocations::Table)
                    .col(Revocations::RelevantUntil)
                    .if_not_exists()
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager.drop_table(Table::drop().table(Revocations::Table).if_exists().to_owned()).await
    }
}

#[derive(DeriveIden)]
enum Revocations {
    Table,
    Seq,
    Kind,
    Subject,
    Value,
    RelevantUntil,
    At,
}
