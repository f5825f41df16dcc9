//! The facade's only collaborator: gRPC clients of the token service, one lazily connected
//! channel per worker thread. Every call carries the current span's W3C trace context, so a
//! request and the RPC it causes are one trace, and the HTTP client's address
//! ([`tessera_proto::CLIENT_ADDR_METADATA`]) that the token service throttles anonymous input by.

use std::future::Future;
use std::net::IpAddr;
use std::time::Duration;
use tessera_proto::token::v1::token_service_client::TokenServiceClient;
use tonic::metadata::{MetadataKey, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};
use tonic_health::pb::health_client::HealthClient;

/// The largest gRPC answer accepted.
const MAX_MESSAGE_BYTES: usize = 1024 * 1024;

/// Where the token service is and how long to wait for it.
#[derive(Clone)]
pub struct BackendConfig {
    endpoint: Endpoint,
}

impl BackendConfig {
    pub fn new(url: &str) -> anyhow::Result<Self> {
        let endpoint = Endpoint::from_shared(url.to_owned())
            .map_err(|e| anyhow::anyhow!("the token service URL {url:?} is invalid: {e}"))?
            .connect_timeout(Duration::from_secs(2))
            .timeout(Duration::from_secs(15))
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(30))
            .keep_alive_while_idle(true);
        Ok(Self { endpoint })
    }

    /// Clients over a channel that connects on first use and reconnects on its own, so the
    /// facade starts (and answers 503) while the token service is down.
    pub fn connect_lazy(&self) -> Backend {
        let channel = self.endpoint.connect_lazy();
        Backend {
            token: TokenServiceClient::with_interceptor(channel.clone(), CallContext)
                .max_decoding_message_size(MAX_MESSAGE_BYTES),
            health: HealthClient::new(channel),
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
pub type TokenClient = TokenServiceClient<InterceptedService<Channel, CallContext>>;

/// The token service, as the handlers see it.
#[derive(Clone)]
pub struct Backend {
    pub token: TokenClient,
    pub health: HealthClient<Channel>,
}
