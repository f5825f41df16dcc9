//! The domain of Tessera: grants, PKCE, scopes, consent rules, token claims and the
//! [`OAuthError`] type, as pure logic over the traits in [`ports`].
//!
//! This crate must not depend on tonic, actix-web, SeaORM or redis: transports and stores are
//! adapters that live in their own crates. CI checks that with `cargo tree`.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::todo))]

mod accounts;
pub mod admin;
mod audit;
pub mod authorize;
pub mod clients;
pub mod clock;
pub mod config;
pub mod engine;
pub mod error;
pub mod grants;
pub mod introspect;
pub mod issuing;
pub mod keys;
pub mod model;
mod passwords;
pub mod pkce;
pub mod ports;
pub mod revocation;
pub mod throttle;
pub mod tokens;
pub mod watch;

pub use clients::ClientAuth;
pub use config::CoreConfig;
pub use engine::{Started, Tessera};
pub use error::{ErrorCode, OAuthError, StoreError, StoreResult};
pub use issuing::TokenSet;

/// A client-supplied value fit for a log field or an error message: at most 128 characters,
/// none of them control characters, so a request can neither flood nor forge log lines.
pub fn printable(s: &str) -> String {
    s.chars().filter(|c| !c.is_control()).take(128).collect()
}
