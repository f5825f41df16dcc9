//! The facade's only collaborator: gRPC clients of the token service. Over the network, one
//! lazily connected channel per worker thread; in the token service's own process (`tessera
//! serve`), a [`LocalChannel`] that skips the socket. Every call carries the current span's W3C
//! trace context, so a request and the RPC it causes are one trace, and the HTTP client's
//! address ([`tessera_proto::CLIENT_ADDR_METADATA`]) that the token service throttles
//! anonymous input by.

use std::future::Future;
use std::net::IpAddr;
use std::task::{Context, Poll};
use std::time::Duration;
use tessera_proto::local::{LocalChannel, LocalError, LocalFuture};
use tessera_proto::token::v1::token_service_client::TokenServiceClient;
use tessera_settings::redact_url;
use tonic::body::BoxBody;
use tonic::codegen::{http, Service};
use tonic::metadata::{MetadataKey, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};
use tonic_health::pb::health_client::HealthClient;

/// The largest gRPC answer accepted.
const MAX_MESSAGE_BYTES: usize = 1024 * 1024;

/// The longest any call may take, over either transport (then DEADLINE_EXCEEDED: a 503).
const CALL_TIMEOUT: Duration = Duration::from_secs(15);

/// Where the token service is.
#[derive(Clone, Debug)]
pub enum Upstream {
    /// A token service at a gRPC URL (e.g. `http://127.0.0.1:50051`).
    Grpc(Box<Endpoint>),
    /// The token service of this process.
    Local(LocalChannel),
}

impl Upstream {
    /// A token service at `url`, waited for at most 2 s to connect and [`CALL_TIMEOUT`] to
    /// answer.
    pub fn grpc(url: &str) -> anyhow::Result<Self> {
        let endpoint = Endpoint::from_shared(url.to_owned())
            .map_err(|e| anyhow::anyhow!("the token service URL {} is invalid: {e}", redact_url(url)))?
            .connect_timeout(Duration::from_secs(2))
            .timeout(CALL_TIMEOUT)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(30))
            .keep_alive_while_idle(true);
        Ok(Upstream::Grpc(Box::new(endpoint)))
    }

    /// Clients for one worker thread. A network channel connects on first use and reconnects
    /// on its own, so the facade starts (and answers 503) while the token service is down; its
    /// tasks live on the worker's runtime.
    pub fn connect_lazy(&self) -> Backend {
        let transport = match self {
            Upstream::Grpc(endpoint) => Transport::Grpc(endpoint.connect_lazy()),
            Upstream::Local(channel) => Transport::Local(channel.clone()),
        };
        Backend {
            token: TokenServiceClient::with_interceptor(transport.clone(), CallContext)
                .max_decoding_message_size(MAX_MESSAGE_BYTES),
            health: HealthClient::new(transport),
        }
    }
}

impl std::fmt::Display for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            // A URL may carry credentials; what is shown never does.
            Upstream::Grpc(endpoint) => f.write_str(&redact_url(&endpoint.uri().to_string())),
            Upstream::Local(_) => f.write_str("this process (local channel)"),
        }
    }
}

/// A network channel or a local one, as one `tower::Service` the generated clients take.
#[derive(Clone, Debug)]
pub enum Transport {
    Grpc(Channel),
    Local(LocalChannel),
}

impl Service<http::Request<BoxBody>> for Transport {
    type Response = http::Response<BoxBody>;
    type Error = LocalError;
    type Future = LocalFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        match self {
            Transport::Grpc(channel) => channel.poll_ready(cx).map_err(Into::into),
            Transport::Local(channel) => channel.poll_ready(cx),
        }
    }

    fn call(&mut self, request: http::Request<BoxBody>) -> Self::Future {
        match self {
            Transport::Grpc(channel) => {
                let answer = channel.call(request);
                Box::pin(async move { answer.await.map_err(Into::into) })
            }
            Transport::Local(channel) => {
                let answer = tokio::time::timeout(CALL_TIMEOUT, channel.call(request));
                Box::pin(async move {
                    answer.await.unwrap_or_else(|_| Err(tonic::Status::deadline_exceeded("no answer in time").into()))
                })
            }
        }
    }
}

tokio::task_local! {
    /// The address of the HTTP client whose request the current task serves.
    static CLIENT_ADDR: Option<IpAddr>;
}

/// Runs `request` (an HTTP request's handling) with `client` as the address every RPC it makes
/// relays. Scoped to the request's task like its span, so no handler can forget to pass it.
pub fn serving_client<F: Future>(client: Option<IpAddr>, request: F) -> impl Future<Output = F::Output> {
    CLIENT_ADDR.scope(client, request)
}

/// Adds to each call's metadata the `traceparent` (and `tracestate`) of the current span and
/// the address of the HTTP client being served (see [`serving_client`]).
#[derive(Clone, Copy, Debug, Default)]
pub struct CallContext;

impl tonic::service::Interceptor for CallContext {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        tessera_telemetry::propagation::inject_current(|key, value| {
            if let (Ok(key), Ok(value)) = (MetadataKey::from_bytes(key.as_bytes()), MetadataValue::try_from(value)) {
                request.metadata_mut().insert(key, value);
            }
        });
        if let Some(addr) = CLIENT_ADDR.try_with(|addr| *addr).ok().flatten() {
            if let Ok(value) = MetadataValue::try_from(addr.to_string()) {
                request.metadata_mut().insert(tessera_proto::CLIENT_ADDR_METADATA, value);
            }
        }
        Ok(request)
    }
}

/// A TokenService client that propagates the trace context and the client's address.
pub type TokenClient = TokenServiceClient<InterceptedService<Transport, CallContext>>;

/// The token service, as the handlers see it.
#[derive(Clone)]
pub struct Backend {
    pub token: TokenClient,
    pub health: HealthClient<Transport>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_service_url_is_shown_without_its_password() {
        let upstream = Upstream::grpc("http://facade:s3cret@token-service:50051").unwrap();
        let shown = upstream.to_string();
        assert!(shown.contains("token-service:50051") && !shown.contains("s3cret"), "{shown}");
        let e = Upstream::grpc("http://facade:s3cret@bad host:1").unwrap_err();
        assert!(!format!("{e:#}").contains("s3cret"), "{e:#}");
    }
}
