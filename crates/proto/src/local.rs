//! A gRPC channel without a socket, for a facade that runs in the token service's own process
//! (`tessera serve`). Calls still go through the token service's whole gRPC stack: the same
//! services, the same message encoding and size limits, the same metadata. Only the HTTP/2
//! connection over loopback is gone, which on a busy two-core machine is a sizeable share of
//! a cheap request (the kernel runs both ends of every loopback write).
//!
//! The server side makes a [`LocalChannel`] from its routes; the facade holds it where it
//! would hold a `tonic::transport::Channel`. Neither needs the other's crate.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tonic::body::BoxBody;
use tonic::codegen::http;

/// The error of a local call: the server's own (a task that panicked, a runtime shut down).
pub type LocalError = Box<dyn std::error::Error + Send + Sync>;

/// The answer to one local call.
pub type LocalFuture = Pin<Box<dyn Future<Output = Result<http::Response<BoxBody>, LocalError>> + Send>>;

/// Marks a request that came over a [`LocalChannel`]: the caller is this process's own facade,
/// so it is a trusted relay of its HTTP client's address whatever the relay networks say.
#[derive(Clone, Copy, Debug)]
pub struct LocalCaller;

/// A cloneable gRPC transport that hands each request to a function of the server's, which
/// answers it in the same process. A `tower::Service`, so generated clients take it as they
/// take a `Channel`.
#[derive(Clone)]
pub struct LocalChannel(Arc<dyn Fn(http::Request<BoxBody>) -> LocalFuture + Send + Sync>);

impl LocalChannel {
    /// A channel whose calls `serve` answers. Every request it passes on carries
    /// [`LocalCaller`] in its extensions.
    pub fn new(serve: impl Fn(http::Request<BoxBody>) -> LocalFuture + Send + Sync + 'static) -> Self {
        LocalChannel(Arc::new(move |mut request: http::Request<BoxBody>| {
            request.extensions_mut().insert(LocalCaller);
            serve(request)
        }))
    }
}

impl std::fmt::Debug for LocalChannel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LocalChannel")
    }
}

impl tonic::codegen::Service<http::Request<BoxBody>> for LocalChannel {
    type Response = http::Response<BoxBody>;
    type Error = LocalError;
    type Future = LocalFuture;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<BoxBody>) -> Self::Future {
        (self.0)(request)
    }
}
