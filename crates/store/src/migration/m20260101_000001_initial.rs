//! The initial schema: clients, users, refresh tokens, consents, signing keys, audit events.
//!
//! Portable choices: timestamps are `BIGINT` Unix seconds, lists are JSON in `TEXT`, digests
//! are 64 hex characters, and there are no foreign keys (rows outlive the clients and users
//! they name; lookups check existence where it matters).

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(Clients::Table)
                    .if_not_exists()
                    .col(ColumnDef::new(Clients::Id).string().not_null().primary_key())
                    .col(ColumnDef::new(Clients::Name).string().not_null())
                    .col(ColumnDef::new(Clients::SecretDigest).string_len(64).null())
                    .col(ColumnDef::new(Clients::Confidential).boolean().not_null())
                    .col(ColumnDef::new(Clients::GrantTypes).text().not_null())
                    .col(ColumnDef::new(Clients::RedirectUris).text().not_null())
                    .col(ColumnDef::new(Clients::Scopes).text().not_null())
                    .col(ColumnDef::new(Clients::AccessTokenTtl).big_integer().null())
                    .col(ColumnDef::new(Clients::RefreshTokenTtl).big_integer().null())
                    .col(ColumnDef::new(Clients::SkipConsent).boolean().not_null())
                    .col(ColumnDef::new(Clients::AllowImplicit).boolean().not_null())
                    .col(ColumnDef::new(Clients::AllowPlainPkce).boolean().not_null())
                    .col(ColumnDef::new(Clients::CreatedAt).big_integer().not_null())
                    .to_owned(),
            )
            .await?;

        manager
            .create_table(
                Table::create()
                    .table(Users::Table)
                    .if_not_exists()
                    .col(ColumnDef::new(Users::Id).string().not_null().primary_key())
                    .col(ColumnDef::new(Users::Username).string().not_null())
                    .col(ColumnDef::new(Users::PasswordHash).text().not_null())
                    .col(ColumnDef::new(Users::Disabled).boolean().not_null())
                    .col(ColumnDef::new(Users::Email).string().null())
                    .col(ColumnDef::new(Users::Name).string().null())
                    .col(ColumnDef::new(Users::CreatedAt).big_integer().not_null())
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("ux_users_username")
                    .table(Users::Table)
                    .col(Users::Username)
                    .unique()
                    .if_not_exists()
                    .to_owned(),
            )
            .await?;

        manager
            .create_table(
                Table::create()
                    .table(RefreshTokens::Table)
                    .if_not_exists()
                    .col(ColumnDef::new(RefreshTokens::Digest).string_len(64).not_null().primary_key())
                    .col(ColumnDef::new(RefreshTokens::FamilyId).string().not_null())
                    .col(ColumnDef::new(RefreshTokens::ClientId).string().not_null())
                    .col(ColumnDef::new(RefreshTokens::UserId).string().null())
                    .col(ColumnDef::new(RefreshTokens::Scope).text().not_null())
                    .col(ColumnDef::new(RefreshTokens::IssuedAt).big_integer().not_null())
                    .col(ColumnDef::new(RefreshTokens::ExpiresAt).big_integer().not_null())
                    .col(ColumnDef::new(RefreshTokens::AuthTime).big_integer().null())
                    .col(ColumnDef::new(RefreshTokens::AccessJti).string().not_null())
                    .col(ColumnDef::new(RefreshTokens::AccessExp).big_integer().not_null())
                    .col(ColumnDef::new(RefreshTokens::State).string_len(16).not_null())
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("ix_refresh_tokens_family_id")
                    .table(RefreshTokens::Table)
                    .col(RefreshTokens::FamilyId)
                    .if_not_exists()
                    .to_owned(),
            )
            .await?;

        manager
            .create_table(
                Table::create()
                    .table(Consents::Table)
                    .if_not_exists()
                    .col(ColumnDef::new(Consents::UserId).string().not_null())
                    .col(ColumnDef::new(Consents::ClientId).string().not_null())
                    .col(ColumnDef::new(Consents::Scope).string().not_null())
                    .primary_key(Index::create().col(Consents::UserId).col(Consents::ClientId).col(Consents::Scope))
                    .to_owned(),
            )
            .await?;

        manager
            .create_table(
                Table::create()
                    .table(SigningKeys::Table)
                    .if_not_exists()
                    .col(ColumnDef::new(SigningKeys::Kid).string().not_null().primary_key())
                    .col(ColumnDef::new(SigningKeys::Alg).string().not_null())
                    .col(ColumnDef::new(SigningKeys::PrivateDer).blob().not_null())
                    .col(ColumnDef::new(SigningKeys::CreatedAt).big_integer().not_null())
                    .col(ColumnDef::new(SigningKeys::RetiredAt).big_integer().null())
                    .to_owned(),
            )
            .await?;

        manager
            .create_table(
                Table::create()
                    .table(AuditEvents::Table)
                    .if_not_exists()
                    .col(ColumnDef::new(AuditEvents::Id).big_integer().not_null().auto_increment().primary_key())
                    .col(ColumnDef::new(AuditEvents::At).big_integer().not_null())
                    .col(ColumnDef::new(AuditEvents::Kind).string().not_null())
                    .col(ColumnDef::new(AuditEvents::ClientId).string().null())
                    .col(ColumnDef::new(AuditEvents::UserId).string().null())
                    .col(ColumnDef::new(AuditEvents::Detail).text().not_null())
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("ix_audit_events_at")
                    .table(AuditEvents::Table)
                    .col(AuditEvents::At)
                    .if_not_exists()
                    .to_owned(),
            )
            .await?;

        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for table in [
            AuditEvents::Table.into_iden(),
            SigningKeys::Table.into_iden(),
            Consents::Table.into_iden(),
            RefreshTokens::Table.into_iden(),
            Users::Table.into_iden(),
            Clients::Table.into_iden(),
        ] {
            manager.drop_table(Table::drop().table(table).if_exists().to_owned()).await?;
        }
        Ok(())
    }
}

#[derive(DeriveIden)]
enum Clients {
    Table,
    Id,
    Name,
    SecretDigest,
    Confidential,
    GrantTypes,
    RedirectUris,
    Scopes,
    AccessTokenTtl,
    RefreshTokenTtl,
    SkipConsent,
    AllowImplicit,
    AllowPlainPkce,
    CreatedAt,
}

#[derive(DeriveIden)]
enum Users {
    Table,
    Id,
    Username,
    PasswordHash,
    Disabled,
    Email,
    Name,
    CreatedAt,
}

#[derive(DeriveIden)]
enum RefreshTokens {
    Table,
    Digest,
    FamilyId,
    ClientId,
    UserId,
    Scope,
    IssuedAt,
    ExpiresAt,
    AuthTime,
    AccessJti,
    AccessExp,
    State,
}

#[derive(DeriveIden)]
enum Consents {
    Table,
    UserId,
    ClientId,
    Scope,
}

#[derive(DeriveIden)]
enum SigningKeys {
    Table,
    Kid,
    Alg,
    PrivateDer,
    CreatedAt,
    RetiredAt,
}

#[derive(DeriveIden)]
enum AuditEvents {
    Table,
    Id,
    At,
    Kind,
    ClientId,
    UserId,
    Detail,
}
