//! W3C trace context (`traceparent`, `tracestate`) across the facade → token service hop:
//! the caller injects the current span's context into its request headers, the server
//! extracts it so its spans join the caller's trace. Without an installed exporter the
//! current span has no context and nothing is injected.

use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator as _};
use opentelemetry::trace::{FutureExt as _, TraceContextExt as _, WithContext};
use opentelemetry::Context;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use std::task::{Context as TaskContext, Poll};
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

/// The W3C `traceparent` header.
pub const TRACEPARENT: &str = "traceparent";

struct FnInjector<F>(F);

impl<F: FnMut(&str, String)> Injector for FnInjector<F> {
    fn set(&mut self, key: &str, value: String) {
        (self.0)(key, value)
    }
}

/// Reads headers through a closure; `'h` is how long the values it returns live.
struct FnExtractor<'h, F>(F, std::marker::PhantomData<&'h ()>);

impl<'h, F: Fn(&str) -> Option<&'h str>> FnExtractor<'h, F> {
    fn new(get: F) -> Self {
        Self(get, std::marker::PhantomData)
    }
}

impl<'h, F: Fn(&str) -> Option<&'h str>> Extractor for FnExtractor<'h, F> {
    fn get(&self, key: &str) -> Option<&str> {
        (self.0)(key)
    }
    fn keys(&self) -> Vec<&str> {
        vec![]
    }
}

/// Hands `set` the trace-context headers of the current `tracing` span, if it is traced.
pub fn inject_current(set: impl FnMut(&str, String)) {
    let cx = tracing::Span::current().context();
    if !cx.span().span_context().is_valid() {
        return;
    }
    TraceContextPropagator::new().inject_context(&cx, &mut FnInjector(set));
}

/// Makes the trace context in a request's headers (read through `get`) the parent of `span`.
/// Call it before the span has children.
pub fn set_parent_from<'h>(span: &tracing::Span, get: impl Fn(&str) -> Option<&'h str>) {
    if get(TRACEPARENT).is_none() {
        return;
    }
    let cx = TraceContextPropagator::new().extract(&FnExtractor::new(get));
    if cx.span().span_context().is_valid() {
        span.set_parent(cx);
    }
}

/// A tower layer for servers on `http` 1 (tonic): requests that carry a `traceparent` run
/// with it as the current OpenTelemetry context, so the handler's span is a child of the
/// caller's.
#[derive(Clone, Copy, Debug, Default)]
pub struct TraceContextLayer;

impl<S> tower_layer::Layer<S> for TraceContextLayer {
    type Service = TraceContextService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        TraceContextService { inner }
    }
}

/// See [`TraceContextLayer`].
#[derive(Clone, Debug)]
pub struct TraceContextService<S> {
    inner: S,
}

impl<S, B> tower_service::Service<http::Request<B>> for TraceContextService<S>
where
    S: tower_service::Service<http::Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = WithContext<S::Future>;

    fn poll_ready(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let parent = if request.headers().contains_key(TRACEPARENT) {
            let headers = request.headers();
            TraceContextPropagator::new()
                .extract(&FnExtractor::new(|k: &str| headers.get(k).and_then(|v| v.to_str().ok())))
        } else {
            Context::current()
        };
        self.inner.call(request).with_context(parent)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry::trace::SpanContext;
    use tower_service::Service as _;

    #[test]
    fn an_untraced_span_injects_nothing() {
        let mut headers = vec![];
        inject_current(|k, v| headers.push((k.to_owned(), v)));
        assert!(headers.is_empty());
    }

    /// Answers with the OpenTelemetry context current while its future runs (tonic calls the
    /// handler from inside the future too).
    struct CurrentContext;

    impl tower_service::Service<http::Request<()>> for CurrentContext {
        type Response = SpanContext;
        type Error = std::convert::Infallible;
        type Future = std::pin::Pin<Box<dyn std::future::Future<Output = Result<SpanContext, Self::Error>>>>;
        fn poll_ready(&mut self, _: &mut TaskContext<'_>) -> Poll<Result<(), Self::Error>> {
            Poll::Ready(Ok(()))
        }
        fn call(&mut self, _: http::Request<()>) -> Self::Future {
            Box::pin(async { Ok(Context::current().span().span_context().clone()) })
        }
    }

    #[test]
    fn the_server_layer_runs_the_call_in_the_callers_trace() {
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let mut service = tower_layer::Layer::layer(&TraceContextLayer, CurrentContext);
        let traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
        let request = http::Request::builder().header(TRACEPARENT, traceparent).body(()).unwrap();
        let sc = rt.block_on(service.call(request)).unwrap();
        assert_eq!(sc.trace_id().to_string(), "0af7651916cd43dd8448eb211c80319c");
        assert_eq!(sc.span_id().to_string(), "b7ad6b7169203331");
        assert!(sc.is_remote());

        let sc = rt.block_on(service.call(http::Request::new(()))).unwrap();
        assert!(!sc.is_valid(), "no header, no parent");
    }
}
