//! The transport edges: the client address the facade relays to the token service, and the
//! answers a client gets when the transport itself fails.

use crate::harness::*;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// The `client_addr` the token service recorded on the span of a refused `IssueToken` call
/// of this client.
fn recorded_client_addr(log: &str, client_id: &str) -> Option<String> {
    log.lines()
        .filter(|l| l.contains("IssueToken{") && l.contains("request refused"))
        .find(|l| l.contains(&format!("client_id={client_id} ")))
        .and_then(|l| l.split("client_addr=").nth(1))
        .map(|rest| rest.split([' ', '}']).next().unwrap_or("").to_owned())
}

/// A password grant with a wrong password, sent with these headers.
async fn refused_password_grant(app: &TestApp, id: &str, secret: &str, headers: &[(&str, &str)]) {
    let mut r = app
        .http
        .post(app.url("/oauth2/token"))
        .form(&[("grant_type", "password"), ("username", "nobody"), ("password", "wrong")])
        .header("Authorization", basic_header(id, secret));
    for (k, v) in headers {
        r = r.header(*k, *v);
    }
    Answer::of(r.send().await.unwrap()).await.assert_error(400, "invalid_grant");
}

/// Client addresses as the token service records them, through a facade with these settings,
/// over gRPC (a facade on its own) and over the local channel (`tessera serve`).
async fn relayed_sources(tweak: impl Fn(&mut tessera_token_service::settings::Settings), cases: &[Source]) {
    let over_grpc = TestApp::spawn_behind(Pair::SqliteMemory, &tweak, |addr| async move { addr }).await;
    relayed_sources_through(over_grpc.map(|(app, _)| app), cases).await;
    let local = TestApp::spawn_behind(Pair::SqliteMemory, &tweak, |_| async { Local }).await;
    relayed_sources_through(local.map(|(app, _)| app), cases).await;
}

async fn relayed_sources_through(app: Option<TestApp>, cases: &[Source]) {
    let log = tessera_testkit::trace_log();
    let Some(app) = app else { return };
    let mut clients = vec![];
    for case in cases {
        let (id, secret) = app.confidential(&["password"]).await;
        refused_password_grant(&app, &id, &secret, case.headers).await;
        clients.push(id);
    }
    let text = log.contents();
    for (case, id) in cases.iter().zip(&clients) {
        assert_eq!(recorded_client_addr(&text, id).as_deref(), Some(case.source), "{}", case.what);
    }
    app.stop().await;
}

struct Source {
    what: &'static str,
    headers: &'static [(&'static str, &'static str)],
    source: &'static str,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_a_trusted_proxy_the_token_service_sees_the_forwarded_client() {
    relayed_sources(
        |s| s.facade.trusted_proxies = "127.0.0.1".parse().unwrap(),
        &[
            Source { what: "no header: the proxy itself", headers: &[], source: "127.0.0.1" },
            Source { what: "one hop", headers: &[("X-Forwarded-For", "203.0.113.7")], source: "203.0.113.7" },
            Source {
                what: "a spoofed hop to the left",
                headers: &[("X-Forwarded-For", "6.6.6.6, 203.0.113.8")],
                source: "203.0.113.8",
            },
            Source {
                what: "IPv6 with a port",
                headers: &[("X-Forwarded-For", "[2001:db8::9]:443")],
                source: "2001:db8::9",
            },
            Source { what: "not an address", headers: &[("X-Forwarded-For", "unknown")], source: "127.0.0.1" },
        ],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_trusted_proxies_x_forwarded_for_is_ignored() {
    relayed_sources(
        |_| {},
        &[Source {
            what: "a client claiming another address",
            headers: &[("X-Forwarded-For", "203.0.113.9")],
            source: "127.0.0.1",
        }],
    )
    .await;
}

/// A loopback TCP proxy in front of the token service that can be cut: every connection is
/// dropped at once and new ones are refused, as when the replica behind it is killed.
struct CutProxy {
    addr: std::net::SocketAddr,
    up: Arc<AtomicBool>,
    conns: Arc<Mutex<Vec<JoinHandle<()>>>>,
    accept: JoinHandle<()>,
}

impl CutProxy {
    async fn start(target: std::net::SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let up = Arc::new(AtomicBool::new(true));
        let conns: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let (up2, conns2) = (Arc::clone(&up), Arc::clone(&conns));
        let accept = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                if !up2.load(Ordering::SeqCst) {
                    continue;
                }
                conns2.lock().unwrap().push(tokio::spawn(async move {
                    if let Ok(mut outbound) = TcpStream::connect(target).await {
                        let _ = outbound.set_nodelay(true);
                        let _ = inbound.set_nodelay(true);
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                }));
            }
        });
        Self { addr, up, conns, accept }
    }

    fn cut(&self) {
        self.up.store(false, Ordering::SeqCst);
        for c in self.conns.lock().unwrap().drain(..) {
            c.abort();
        }
    }
}

impl Relay for CutProxy {
    fn upstream(&self, _: &TokenServiceApp) -> Upstream {
        Upstream::grpc(&format!("http://{}", self.addr)).unwrap()
    }
}

impl Drop for CutProxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.cut();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_service_killed_mid_call_is_a_503_at_the_facade_never_a_500() {
    let Some((app, proxy)) = TestApp::spawn_behind(
        Pair::SqliteMemory,
        // Many concurrent sign-ins of one user are the load here, not guessing to throttle.
        |s| s.tokens.lockout_threshold = 100_000,
        CutProxy::start,
    )
    .await
    else {
        return;
    };
    let (id, secret) = app.confidential(&["password"]).await;
    app.create_user("slow", "a slow password").await;
    // Password grants (an Argon2 check each) keep many calls in flight; the cut comes once
    // answers are flowing, so it lands in the middle of calls.
    let ok = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut calls = tokio::task::JoinSet::new();
    for _ in 0..16 {
        let (http, url, basic, ok) =
            (app.http.clone(), app.url("/oauth2/token"), basic_header(&id, &secret), Arc::clone(&ok));
        calls.spawn(async move {
            let mut answers = vec![];
            for _ in 0..12 {
                let r = http
                    .post(&url)
                    .header("Authorization", &basic)
                    .form(&[("grant_type", "password"), ("username", "slow"), ("password", "a slow password")])
                    .send()
                    .await
                    .unwrap();
                let a = Answer::of(r).await;
                if a.status.as_u16() == 200 {
                    ok.fetch_add(1, Ordering::SeqCst);
                }
                answers.push(a);
            }
            answers
        });
    }
    let started = std::time::Instant::now();
    while ok.load(Ordering::SeqCst) < 16 {
        assert!(started.elapsed() < Duration::from_secs(30), "password grants do not succeed");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    proxy.cut();
    let mut by_status = std::collections::BTreeMap::<u16, usize>::new();
    while let Some(answers) = calls.join_next().await {
        for a in answers.unwrap() {
            *by_status.entry(a.status.as_u16()).or_default() += 1;
            match a.status.as_u16() {
                200 => {}
                503 => {
                    a.assert_error(503, "temporarily_unavailable");
                    assert!(!a.header("retry-after").is_empty(), "a 503 says when to retry");
                }
                other => panic!("a {other} while the token service died: {}", a.text),
            }
        }
    }
    eprintln!("answers by status: {by_status:?}");
    assert!(by_status.get(&503).is_some_and(|n| *n > 0), "the cut was seen: {by_status:?}");
    app.stop().await;
}

/// Sends bytes as they are and hands back the answer's bytes: a gRPC client that can send
/// what no generated client would.
#[derive(Clone, Copy, Default)]
struct RawCodec;

impl tonic::codec::Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawCodec;
    type Decoder = RawCodec;
    fn encoder(&mut self) -> RawCodec {
        RawCodec
    }
    fn decoder(&mut self) -> RawCodec {
        RawCodec
    }
}

impl tonic::codec::Encoder for RawCodec {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn encode(&mut self, item: Vec<u8>, dst: &mut tonic::codec::EncodeBuf<'_>) -> Result<(), tonic::Status> {
        bytes::BufMut::put_slice(dst, &item);
        Ok(())
    }
}

impl tonic::codec::Decoder for RawCodec {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn decode(&mut self, src: &mut tonic::codec::DecodeBuf<'_>) -> Result<Option<Vec<u8>>, tonic::Status> {
        let n = bytes::Buf::remaining(src);
        Ok(Some(bytes::Buf::copy_to_bytes(src, n).to_vec()))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undecodable_grpc_bodies_are_invalid_argument_with_invalid_request_on_both_services() {
    let Some(app) = TestApp::spawn(Pair::SqliteMemory).await else { return };
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", app.grpc_addr()))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let call = |path: &'static str, body: Vec<u8>| {
        let mut grpc = tonic::client::Grpc::new(channel.clone());
        async move {
            grpc.ready().await.unwrap();
            let mut request = tonic::Request::new(body);
            request.metadata_mut().insert("authorization", format!("Bearer {ADMIN_TOKEN}").parse().unwrap());
            grpc.unary(request, tonic::codegen::http::uri::PathAndQuery::from_static(path), RawCodec).await
        }
    };
    // Bad for any message; the last one only where field 1 is a string.
    let bodies: &[(&str, &[u8])] = &[
        ("a tag with wire type 7", &[0x0f]),
        ("a truncated varint", &[0x08, 0xff]),
        ("a length past the end", &[0x0a, 0x05, b'a']),
        ("field number zero", &[0x00, 0x01]),
        ("an overlong varint", &[0x08, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01]),
        ("a string that is not UTF-8", &[0x0a, 0x02, 0xc3, 0x28]),
    ];
    let paths = [
        ("/tessera.token.v1.TokenService/IssueToken", true),
        ("/tessera.token.v1.TokenService/Authenticate", true),
        ("/tessera.token.v1.TokenService/GetJwks", false),
        ("/tessera.admin.v1.AdminService/CreateClient", true),
        ("/tessera.admin.v1.AdminService/ListClients", false),
    ];
    for (path, string_field_1) in paths {
        let cases = if string_field_1 { bodies } else { &bodies[..bodies.len() - 1] };
        for (what, body) in cases {
            let status = call(path, body.to_vec()).await.expect_err(what);
            assert_eq!(status.code(), tonic::Code::InvalidArgument, "{path}, {what}: {status:?}");
            let e = tessera_proto::from_status(&status);
            assert_eq!(e.code, tessera_core::ErrorCode::InvalidRequest, "{path}, {what}");
            assert_eq!(e.description, tessera_proto::codec::UNDECODABLE, "{path}, {what}");
        }
    }
    // The same services still answer well-formed messages (an empty one is all defaults).
    call("/tessera.token.v1.TokenService/GetJwks", vec![]).await.expect("an empty GetJwksRequest is valid");
    call("/tessera.admin.v1.AdminService/ListClients", vec![]).await.expect("an empty ListClientsRequest is valid");
    app.stop().await;
}
