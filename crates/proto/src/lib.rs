//! The gRPC contract generated from `proto/` (tessera.token.v1 and tessera.admin.v1), and, with
//! the feature `oauth` (on by default), the servers and the one mapping between the core's
//! `OAuthError` and a gRPC `Status`: the code travels as
//! `google.rpc.ErrorInfo { reason = <oauth code>, domain = "oauth2" }` in the status details,
//! so the round trip is lossless whatever gRPC code carries it.
//!
//! Without `oauth`, this crate is the messages and the clients alone, with no other Tessera
//! crate behind it: what a resource server's verifier needs.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::todo))]

#[cfg(feature = "oauth")]
pub mod codec;
pub mod local;
pub mod networks;
pub mod paths;
#[cfg(feature = "oauth")]
mod status;
#[cfg(feature = "oauth")]
pub use status::*;

pub mod token {
    pub mod v1 {
        #![allow(clippy::all, clippy::pedantic)]
        tonic::include_proto!("tessera.token.v1");
        #[cfg(feature = "oauth")]
        include!(concat!(env!("OUT_DIR"), "/servers/tessera.token.v1.rs"));
    }
}

pub mod admin {
    pub mod v1 {
        #![allow(clippy::all, clippy::pedantic)]
        tonic::include_proto!("tessera.admin.v1");
        #[cfg(feature = "oauth")]
        include!(concat!(env!("OUT_DIR"), "/servers/tessera.admin.v1.rs"));
    }
}

/// Adds `authorization: Bearer <admin credential>` to every call of an AdminService client.
#[derive(Clone)]
pub struct AdminCredential(tonic::metadata::MetadataValue<tonic::metadata::Ascii>);

impl AdminCredential {
    /// `None` if the credential cannot be a header value.
    pub fn new(token: &str) -> Option<Self> {
        format!("Bearer {}", token.trim()).parse().ok().map(Self)
    }
}

impl std::fmt::Debug for AdminCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AdminCredential(<redacted>)")
    }
}

impl tonic::service::Interceptor for AdminCredential {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        request.metadata_mut().insert("authorization", self.0.clone());
        Ok(request)
    }
}

/// The metadata in which a facade relays its HTTP client's address (an IP address, no port)
/// on every call. The token service believes it only from a trusted relay.
pub const CLIENT_ADDR_METADATA: &str = "x-tessera-client-addr";

/// The encoded descriptors of every Tessera service, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/tessera_descriptor.bin"));
