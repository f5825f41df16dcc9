//! The domain of Tessera: grants, PKCE, scopes, consent rules, token claims and the
//! [`OAuthError`] type, as pure logic over the traits in [`ports`].
//!
//! This crate must not depend on tonic, actix-web, SeaORM or redis: transports and stores are
//! adapters that live in their own crates. CI checks that with `cargo tree`.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::todo))]

pub mod clock;
pub mod error;
pub mod model;
pub mod ports;

pub use error::{ErrorCode, OAuthError, StoreError, StoreResult};
