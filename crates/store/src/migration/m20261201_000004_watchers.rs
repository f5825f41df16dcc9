//! Watching revocations: a client may be allowed to watch them (`clients.watch_revocations`,
//! off for every existing client), and a receiver of Security Event Tokens by poll (RFC 8936)
//! has its acknowledgements kept (`set_receivers`); the revocation log gets an identity
//! (`revocation_log_meta`).

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(
                Table::alter()
                    .table(Clients::Table)
                    .add_column(ColumnDef::new(Clients::WatchRevocations).boolean().not_null().default(false))
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(SetReceivers::Table)
                    .if_not_exists()
                    .col(ColumnDef::new(SetReceivers::ClientId).string().not_null().primary_key())
                    .col(ColumnDef::new(SetReceivers::AckedThrough).big_integer().not_null())
                    .col(ColumnDef::new(SetReceivers::AckedAbove).text().not_null())
                    .to_owned(),
            )
            .await?;
        // One row: the identity of this revocation log, so a cursor of another log (another
        // deployment's) is told apart from this one's.
        manager
            .create_table(
                Table::create()
                    .table(RevocationLogMeta::Table)
                    .if_not_exists()
                    .col(ColumnDef::new(RevocationLogMeta::Id).integer().not_null().primary_key())
                    .col(ColumnDef::new(RevocationLogMeta::Epoch).string_len(64).not_null())
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager.drop_table(Table::drop().table(RevocationLogMeta::Table).if_exists().to_owned()).await?;
        manager.drop_table(Table::drop().table(SetReceivers::Table).if_exists().to_owned()).await?;
        manager
            .alter_table(Table::alter().table(Clients::Table).drop_column(Clients::WatchRevocations).to_owned())
            .await
    }
}

#[derive(DeriveIden)]
enum Clients {
    Table,
    WatchRevocations,
}

#[derive(DeriveIden)]
enum RevocationLogMeta {
    Table,
    Id,
    Epoch,
}

#[derive(DeriveIden)]
enum SetReceivers {
    Table,
    ClientId,
    AckedThrough,
    AckedAbove,
}
