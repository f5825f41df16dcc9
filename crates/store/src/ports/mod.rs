//! [`SqlStore`](crate::SqlStore)'s implementations of the durable ports, one module per
//! port, each with the conversions between its rows and the core's model types.

mod audit;
mod clients;
mod consents;
mod keys;
pub(crate) mod refresh;
mod revocations;
pub(crate) mod users;

use crate::error;
use crate::SqlStore;
use async_trait::async_trait;
use tessera_core::ports::Durable;
use tessera_core::{StoreError, StoreResult};
use tessera_crypto::Digest;

#[async_trait]
impl Durable for SqlStore {
    async fn ping(&self) -> StoreResult<()> {
        self.db.ping().await.map_err(error::from_db)
    }
}

/// A row the schema allows but the model does not: someone wrote it by hand, or a newer
/// version did. Never silently repaired.
fn corrupt(table: &str, what: impl std::fmt::Display) -> StoreError {
    StoreError::Other(format!("corrupt row in {table}: {what}"))
}

fn digest_from_hex(table: &str, hex: &str) -> StoreResult<Digest> {
    Digest::from_hex(hex).ok_or_else(|| corrupt(table, "a digest is not 64 hex characters"))
}
