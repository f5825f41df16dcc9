//! Ports: the traits the core needs from the outside world. Adapters live in their own
//! crates (`tessera-store` for the durable ports, `tessera-ephemeral` for the ephemeral one)
//! and own their transactions and scripts; the core never begins or commits anything.
//!
//! Every method takes digests, never raw codes, secrets or tokens. Times are Unix seconds
//! unless a name says `_ms`.

mod durable;
mod ephemeral;
mod revocation;

pub use durable::*;
pub use ephemeral::*;
pub use revocation::*;
