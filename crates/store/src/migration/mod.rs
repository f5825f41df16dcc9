//! Schema migrations, written with the SeaQuery schema builder so one definition serves
//! Postgres and SQLite. A migration, once released, is history: change the schema by adding
//! a new one, never by editing an old one (which is also why migrations name their own
//! columns instead of borrowing the entities').

use sea_orm_migration::prelude::*;

mod m20260101_000001_initial;
mod m20261130_000002_revocations;
mod m20261130_000003_refresh_retry;
mod m20261201_000004_watchers;

/// Every migration of the store, oldest first.
pub struct Migrator;

#[async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(m20260101_000001_initial::Migration),
            Box::new(m20261130_000002_revocations::Migration),
            Box::new(m20261130_000003_refresh_retry::Migration),
            Box::new(m20261201_000004_watchers::Migration),
        ]
    }
}
