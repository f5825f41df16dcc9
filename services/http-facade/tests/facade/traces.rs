//! One token request is one trace: the facade's HTTP span and the token service's RPC span,
//! exported over OTLP/gRPC to a receiver this test runs, share a trace id, the RPC span
//! descends from the HTTP span through the `traceparent` the facade sent, a client's own
//! `traceparent` is honoured, and no attribute carries the client secret or a token.
//!
//! The tracer provider and the subscriber are process-wide, so the test re-runs itself in a
//! child process of this test binary (under nextest each test has its own process anyway;
//! under `cargo test` the other tests of the binary share this one).

use crate::harness::*;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{TraceService, TraceServiceServer};
use opentelemetry_proto::tonic::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use opentelemetry_proto::tonic::trace::v1::Span;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Set in the child process that does the work.
const CHILD: &str = "TESSERA_TRACE_TEST_CHILD";

/// An OTLP trace receiver that keeps every span it is sent.
#[derive(Clone, Default)]
struct Receiver {
    spans: Arc<Mutex<Vec<Span>>>,
}

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut spans = self.spans.lock().unwrap();
        for resource in request.into_inner().resource_spans {
            for scope in resource.scope_spans {
                spans.extend(scope.spans);
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse { partial_success: None }))
    }
}

fn text(v: &KeyValue) -> String {
    match v.value.as_ref().and_then(|v| v.value.as_ref()) {
        Some(Value::StringValue(s)) => s.clone(),
        Some(Value::IntValue(i)) => i.to_string(),
        Some(Value::BoolValue(b)) => b.to_string(),
        Some(Value::DoubleValue(d)) => d.to_string(),
        Some(other) => format!("{other:?}"),
        None => String::new(),
    }
}

fn attr(span: &Span, key: &str) -> Option<String> {
    span.attributes.iter().find(|kv| kv.key == key).map(text)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Every attribute value of a span and of its events.
fn values(span: &Span) -> Vec<String> {
    let events = span.events.iter().flat_map(|e| e.attributes.iter());
    span.attributes.iter().chain(events).map(text).chain([span.name.clone()]).collect()
}

#[test]
fn a_facade_token_request_and_the_rpc_it_causes_are_one_trace() {
    let name = concat!(module_path!(), "::a_facade_token_request_and_the_rpc_it_causes_are_one_trace");
    let name = name.split_once("::").map_or(name, |(_, rest)| rest);
    if std::env::var_os(CHILD).is_none() {
        let mut child = std::process::Command::new(std::env::current_exe().unwrap());
        child.args(["--exact", name, "--nocapture", "--test-threads", "1"]).env(CHILD, "1");
        // The exporter must send to this test's receiver, whatever the machine's environment says.
        for (k, _) in std::env::vars() {
            if k.starts_with("OTEL_") {
                child.env_remove(k);
            }
        }
        let out = child.output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "the traced run failed:\n{stdout}\n{stderr}");
        assert!(stdout.contains("1 passed"), "the traced run ran no test:\n{stdout}\n{stderr}");
        return;
    }
    // The SDK's batch processor blocks one thread while another exports.
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(traced_run());
}

async fn traced_run() {
    let receiver = Receiver::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let collector = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(receiver.clone()))
            .serve_with_incoming(tokio_stream_of(listener)),
    );
    let telemetry = tessera_telemetry::init(tessera_telemetry::Config {
        format: tessera_telemetry::Format::Json,
        level: "info".into(),
        export: Some(tessera_telemetry::ExportSettings {
            endpoint: Some(collector),
            service_name: "tessera-trace-test".into(),
        }),
    })
    .expect("telemetry starts");
    assert!(telemetry.enabled());

    // Over gRPC, as when the services run apart: the trace crosses the network hop.
    let (app, _) = TestApp::spawn_behind(Pair::SqliteMemory, |_| {}, |addr| async move { addr })
        .await
        .expect("the SQLite + memory pair always starts");
    let (id, secret) = app.confidential(&["client_credentials"]).await;
    let t = app
        .post_form("/oauth2/token", &[("grant_type", "client_credentials"), ("scope", "api")], Some((&id, &secret)))
        .await
        .assert_tokens();
    let access_token = t["access_token"].as_str().unwrap().to_owned();
    app.post_form("/oauth2/token", &[("grant_type", "client_credentials")], Some((&id, "not-the-secret")))
        .await
        .assert_error(401, "invalid_client");
    // A client that traces its own calls: the facade's span joins the client's trace.
    let (client_trace, client_span) = ("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7");
    let traceparent = format!("00-{client_trace}-{client_span}-01");
    let basic = basic_header(&id, &secret);
    let headers = [
        ("Authorization", basic.as_str()),
        ("Content-Type", "application/x-www-form-urlencoded"),
        ("traceparent", traceparent.as_str()),
    ];
    let a = app.raw(reqwest::Method::POST, "/oauth2/token", &headers, b"grant_type=client_credentials".to_vec()).await;
    assert_eq!(a.status, 200, "{}", a.text);

    // Wait for the facade's two HTTP spans and the two IssueToken spans.
    let deadline = Instant::now() + Duration::from_secs(20);
    let spans = loop {
        telemetry.flush().await;
        let spans = receiver.spans.lock().unwrap().clone();
        let http = spans.iter().filter(|s| s.name == "POST /oauth2/token").count();
        let rpc = spans.iter().filter(|s| s.name == "IssueToken").count();
        if http >= 3 && rpc >= 3 {
            break spans;
        }
        assert!(
            Instant::now() < deadline,
            "spans did not arrive; got {:?}",
            spans.iter().map(|s| &s.name).collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let by_id: HashMap<Vec<u8>, &Span> = spans.iter().map(|s| (s.span_id.clone(), s)).collect();
    let descends_from = |span: &Span, ancestor: &Span| {
        let mut at = span;
        for _ in 0..16 {
            if at.parent_span_id.is_empty() {
                return false;
            }
            if at.parent_span_id == ancestor.span_id {
                return true;
            }
            match by_id.get(&at.parent_span_id) {
                Some(parent) => at = parent,
                None => return false,
            }
        }
        false
    };

    for (outcome, error_code) in [("ok", None), ("refused", Some("invalid_client"))] {
        let http = spans
            .iter()
            .find(|s| {
                s.name == "POST /oauth2/token"
                    && attr(s, "error_code").as_deref() == error_code
                    && hex(&s.trace_id) != client_trace
            })
            .unwrap_or_else(|| panic!("no {outcome} HTTP span"));
        assert_eq!(http.kind, SpanKind::Server as i32, "{outcome}: the HTTP span is a server span");
        assert_eq!(attr(http, "grant_type").as_deref(), Some("client_credentials"), "{outcome}");
        assert_eq!(attr(http, "client_id").as_deref(), Some(id.as_str()), "{outcome}");
        assert_eq!(attr(http, "http.route").as_deref(), Some("/oauth2/token"), "{outcome}");
        assert!(http.parent_span_id.is_empty(), "{outcome}: the request started the trace");
        let rpc = spans
            .iter()
            .find(|s| s.name == "IssueToken" && s.trace_id == http.trace_id)
            .unwrap_or_else(|| panic!("{outcome}: no IssueToken span in trace {}", hex(&http.trace_id)));
        assert_eq!(rpc.kind, SpanKind::Server as i32, "{outcome}: the RPC span is a server span");
        assert!(descends_from(rpc, http), "{outcome}: the RPC span descends from the HTTP span");
        assert_eq!(attr(rpc, "grant_type").as_deref(), Some("client_credentials"), "{outcome}");
        assert_eq!(attr(rpc, "client_id").as_deref(), Some(id.as_str()), "{outcome}");
        assert_eq!(attr(rpc, "error_code").as_deref(), error_code, "{outcome}");
    }
    let traces: std::collections::HashSet<_> =
        spans.iter().filter(|s| s.name == "POST /oauth2/token").map(|s| s.trace_id.clone()).collect();
    assert_eq!(traces.len(), 3, "each request is a trace of its own");
    let joined = spans
        .iter()
        .find(|s| s.name == "POST /oauth2/token" && hex(&s.trace_id) == client_trace)
        .expect("the facade's span joins the client's trace");
    assert_eq!(hex(&joined.parent_span_id), client_span, "the client's span is its parent");
    let rpc = spans.iter().find(|s| s.name == "IssueToken" && s.trace_id == joined.trace_id).expect("its RPC span");
    assert!(descends_from(rpc, joined));
    // The admin call came without a traceparent: its span starts a trace of its own.
    let create = spans.iter().find(|s| s.name == "CreateClient").expect("the CreateClient span");
    assert!(create.parent_span_id.is_empty() && !traces.contains(&create.trace_id));

    for span in &spans {
        for v in values(span) {
            assert!(!v.contains(&secret), "span {} carries the client secret", span.name);
            assert!(!v.contains(&access_token), "span {} carries the access token", span.name);
        }
    }
    app.stop().await;
    telemetry.shutdown().await;
}

/// A tonic incoming stream over a bound listener.
fn tokio_stream_of(
    listener: tokio::net::TcpListener,
) -> impl futures::Stream<Item = std::io::Result<tokio::net::TcpStream>> {
    futures::stream::unfold(listener, |listener| async move {
        let accepted = listener.accept().await.map(|(s, _)| s);
        Some((accepted, listener))
    })
}
