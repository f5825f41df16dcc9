//! What the facade tells its operators: a server span per HTTP request (joined to the
//! caller's W3C trace context when it sends one, carrying the grant type, client id and OAuth
//! error code — never a credential), and Prometheus series of requests and latency by
//! endpoint, method, grant type and outcome, served at `GET /metrics` on the facade's own
//! HTTP port.

use crate::ALIASES;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::{web, HttpMessage as _, HttpRequest, HttpResponse};
use tessera_core::ErrorCode;
use tessera_telemetry::metrics::prometheus::{HistogramVec, IntCounterVec, Registry};
use tessera_telemetry::metrics::{counter_vec, latency_vec, render, CONTENT_TYPE};
use tracing::field::Empty;

/// The facade's series, in a registry of its own.
pub struct FacadeMetrics {
    registry: Registry,
    requests: IntCounterVec,
    latency: HistogramVec,
}

impl FacadeMetrics {
    pub fn new() -> anyhow::Result<Self> {
        let registry = Registry::new();
        let labels = &["endpoint", "method", "grant_type", "outcome"];
        Ok(Self {
            requests: counter_vec(
                &registry,
                "tessera_http_requests_total",
                "HTTP requests answered, by endpoint (route, aliases folded into the standard path), method, \
                 grant type and outcome (ok or the OAuth error code).",
                labels,
            )?,
            latency: latency_vec(
                &registry,
                "tessera_http_request_duration_seconds",
                "Time to answer an HTTP request, by endpoint, method, grant type and outcome.",
                labels,
            )?,
            registry,
        })
    }

    pub fn render(&self) -> String {
        render(&self.registry)
    }
}

/// What a handler learned about its request, for the span and the series: the token
/// endpoint puts it in the request's extensions.
#[derive(Clone, Debug)]
pub struct Observed {
    /// A bounded label (see `tessera_core::model::GrantType::label`).
    pub grant_type: &'static str,
    pub client_id: String,
}

/// Notes the grant type and client id of the request being answered.
pub fn observe(req: &HttpRequest, grant_type: &'static str, client_id: &str) {
    req.extensions_mut().insert(Observed { grant_type, client_id: client_id.to_owned() });
}

/// The route a request matched, with aliases folded into their standard path; `unmatched`
/// for anything else (so a scan of random paths cannot grow the series).
fn endpoint(req: &ServiceRequest) -> String {
    match req.match_pattern() {
        Some(p) => ALIASES.iter().find(|(alias, _)| *alias == p).map(|(_, c)| (*c).to_owned()).unwrap_or(p),
        None => "unmatched".to_owned(),
    }
}

fn method_label(m: &actix_web::http::Method) -> &'static str {
    use actix_web::http::Method;
    match *m {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::HEAD => "HEAD",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::OPTIONS => "OPTIONS",
        Method::PATCH => "PATCH",
        _ => "other",
    }
}

/// One request being answered: its span, what it is counted under, and when it started.
pub struct Exchange {
    pub span: tracing::Span,
    endpoint: String,
    method: &'static str,
    started: std::time::Instant,
}

impl Exchange {
    /// Opens the request's server span, parented by the caller's `traceparent` if any.
    pub fn start(req: &ServiceRequest) -> Self {
        let endpoint = endpoint(req);
        let method = method_label(req.method());
        let span = tracing::info_span!(
            "http",
            otel.kind = "server",
            otel.name = format!("{method} {endpoint}"),
            method = %req.method(),
            path = %req.path(),
            http.route = %endpoint,
            status = Empty,
            grant_type = Empty,
            client_id = Empty,
            error_code = Empty,
        );
        let headers = req.headers();
        tessera_telemetry::propagation::set_parent_from(&span, |k| headers.get(k).and_then(|v| v.to_str().ok()));
        Self { span, endpoint, method, started: std::time::Instant::now() }
    }

    /// Records the answer on the span and in the series.
    pub fn finish<B>(self, metrics: &FacadeMetrics, res: &ServiceResponse<B>) {
        let status = res.status().as_u16();
        let elapsed = self.started.elapsed();
        self.span.record("status", status);
        let observed = res.request().extensions().get::<Observed>().cloned();
        let grant_type = match &observed {
            Some(o) => {
                self.span.record("grant_type", o.grant_type);
                self.span.record("client_id", o.client_id.as_str());
                o.grant_type
            }
            None => "",
        };
        let code = res.response().extensions().get::<ErrorCode>().copied();
        let http_outcome;
        let outcome = match code {
            Some(code) => {
                self.span.record("error_code", code.as_str());
                code.as_str()
            }
            None if status < 400 => "ok",
            None => {
                http_outcome = format!("http_{status}");
                &http_outcome
            }
        };
        let labels = [self.endpoint.as_str(), self.method, grant_type, outcome];
        metrics.requests.with_label_values(&labels).inc();
        metrics.latency.with_label_values(&labels).observe(elapsed.as_secs_f64());
        let _entered = self.span.enter();
        tracing::debug!(status, micros = elapsed.as_micros() as u64, "answered");
    }
}

/// `GET /metrics`: the facade's series in the Prometheus text format.
pub async fn metrics(metrics: web::Data<FacadeMetrics>) -> HttpResponse {
    HttpResponse::Ok().content_type(CONTENT_TYPE).insert_header(("Cache-Control", "no-store")).body(metrics.render())
}
