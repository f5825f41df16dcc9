//! Requests the HTTP parser refuses, over raw TCP: each gets the JSON error of the rest of the
//! API and a closed connection, while well-formed traffic on the same wrapped connections
//! (keep-alive, pipelining, large answers, chunked bodies) is answered exactly as before.

use crate::harness::*;
use std::time::Duration;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

/// One answer read off the wire.
#[derive(Debug)]
struct Wire {
    status: u16,
    /// Header lines, names lower-cased.
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Wire {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }

    fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("{e}: {:?}", String::from_utf8_lossy(&self.body)))
    }
}

/// Reads one answer from `buf` (more from `stream` as needed), framed by its
/// `Content-Length`; `None` at a clean end of the stream.
async fn read_answer(stream: &mut (impl tokio::io::AsyncRead + Unpin), buf: &mut Vec<u8>) -> Option<Wire> {
    let mut chunk = [0u8; 16 * 1024];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) if buf.is_empty() => return None,
            Ok(0) | Err(_) => panic!("the stream ended inside a head: {:?}", String::from_utf8_lossy(buf)),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    };
    let head = String::from_utf8(buf[..head_end - 4].to_vec()).unwrap();
    let mut lines = head.split("\r\n");
    let status = lines.next().unwrap().split(' ').nth(1).unwrap().parse().unwrap();
    let headers: Vec<(String, String)> =
        lines.map(|l| l.split_once(": ").unwrap()).map(|(k, v)| (k.to_ascii_lowercase(), v.to_owned())).collect();
    assert!(!headers.iter().any(|(k, _)| k == "transfer-encoding"), "{head}");
    let length: usize = headers.iter().find(|(k, _)| k == "content-length").expect(&head).1.parse().unwrap();
    while buf.len() < head_end + length {
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => panic!("the stream ended inside a body of {length} bytes"),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    let body = buf[head_end..head_end + length].to_vec();
    buf.drain(..head_end + length);
    Some(Wire { status, headers, body })
}

fn facade_addr(app: &TestApp) -> String {
    app.base.strip_prefix("http://").unwrap().to_owned()
}

/// Sends `request` on a new connection and reads every answer until the facade closes it.
/// The request is written while the answers are read: the facade may refuse it before
/// reading all of it.
async fn exchange(addr: &str, request: Vec<u8>) -> Vec<Wire> {
    let (mut rx, mut tx) = TcpStream::connect(addr).await.unwrap().into_split();
    let writer = tokio::spawn(async move {
        // A refusal closes the connection: the rest of the request may not be taken.
        let _ = tx.write_all(&request).await;
        tx
    });
    let read = async {
        let mut buf = vec![];
        let mut answers = vec![];
        while let Some(a) = read_answer(&mut rx, &mut buf).await {
            answers.push(a);
        }
        answers
    };
    let answers = tokio::time::timeout(Duration::from_secs(10), read).await.expect("the facade closes the connection");
    drop(writer.await);
    answers
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_the_parser_refuses_get_the_json_error_and_a_closed_connection() {
    let Some(app) = TestApp::spawn(Pair::SqliteMemory).await else { return };
    let addr = facade_addr(&app);
    let get = |extra: &str| format!("GET /healthz HTTP/1.1\r\nHost: x\r\n{extra}\r\n").into_bytes();
    let post = |extra: &str| format!("POST /oauth2/token HTTP/1.1\r\nHost: x\r\n{extra}\r\ngrant_type=x").into_bytes();
    let many_headers: String = (0..100).map(|i| format!("X-H{i}: v\r\n")).collect();
    let malformed = "the HTTP request is malformed";
    let too_large = "the request header section is too large";
    let cases: Vec<(&str, Vec<u8>, u16, &str)> = vec![
        ("Content-Length that is not a number", post("Content-Length: abc\r\n"), 400, malformed),
        ("two different Content-Lengths", post("Content-Length: 12\r\nContent-Length: 13\r\n"), 400, malformed),
        (
            "Content-Length and chunked at once",
            post("Content-Length: 12\r\nTransfer-Encoding: chunked\r\n"),
            400,
            malformed,
        ),
        ("a NUL byte in a header value", get("X-Thing: a\0b\r\n"), 400, malformed),
        ("a space in a header name", get("Bad Name: y\r\n"), 400, malformed),
        ("a header name with a separator", get("X(y): z\r\n"), 400, malformed),
        ("a garbage request line", b"this is not http at all\r\n\r\n".to_vec(), 400, malformed),
        (
            "binary garbage (a TLS hello)",
            b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n".to_vec(),
            400,
            malformed,
        ),
        ("a header section over 128 KiB", get(&format!("X-Big: {}\r\n", "a".repeat(300 * 1024))), 431, too_large),
        ("more than 96 header lines", get(&many_headers), 431, too_large),
    ];
    let mut failures = vec![];
    for (what, request, status, description) in cases {
        let answers = exchange(&addr, request).await;
        let [a] = answers.as_slice() else {
            failures.push(format!("{what}: {} answers: {answers:?}", answers.len()));
            continue;
        };
        let json: Option<serde_json::Value> = serde_json::from_slice(&a.body).ok();
        let problem = if a.status != status {
            Some(format!("status {} (expected {status})", a.status))
        } else if a.header("content-type") != Some("application/json") {
            Some(format!("content type {:?}", a.header("content-type")))
        } else if a.header("cache-control") != Some("no-store") || a.header("connection") != Some("close") {
            Some(format!("headers {:?}", a.headers))
        } else if json.as_ref().map(|j| (j["error"].clone(), j["error_description"].clone()))
            != Some(("invalid_request".into(), description.into()))
        {
            Some(format!("body {:?}", String::from_utf8_lossy(&a.body)))
        } else {
            None
        };
        if let Some(p) = problem {
            failures.push(format!("{what}: {p}"));
        }
    }
    assert!(failures.is_empty(), "failing cases:\n  {}", failures.join("\n  "));
    // The facade serves on.
    assert_eq!(app.get("/healthz").await.status, 200);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_request_pipelined_after_a_good_one_leaves_the_first_answer_whole() {
    let Some(app) = TestApp::spawn(Pair::SqliteMemory).await else { return };
    let addr = facade_addr(&app);
    let request = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\nGET /healthz HTTP/1.1\r\nHost: x\r\nX-Bad: \0\r\n\r\n";
    let answers = exchange(&addr, request.to_vec()).await;
    assert_eq!(answers.len(), 2, "{answers:?}");
    assert_eq!(answers[0].status, 200);
    assert_eq!(answers[0].json()["status"], "ok");
    assert_eq!(answers[0].header("x-content-type-options"), Some("nosniff"));
    assert_eq!(answers[1].status, 400);
    assert_eq!(answers[1].json()["error"], "invalid_request");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn well_formed_traffic_on_one_connection_is_answered_as_before() {
    let Some(app) = TestApp::spawn(Pair::SqliteMemory).await else { return };
    let (id, secret) = app.confidential(&["client_credentials"]).await;
    let basic = basic_header(&id, &secret);
    let discovery = app.http.get(app.url("/.well-known/openid-configuration")).send().await.unwrap();
    let discovery = discovery.bytes().await.unwrap();
    let openapi = tessera_http_facade::openapi::document_json().unwrap();
    assert!(openapi.len() > 8 * 1024, "the OpenAPI document is {} bytes: not a large answer", openapi.len());

    let mut stream = TcpStream::connect(facade_addr(&app)).await.unwrap();
    let mut buf = vec![];
    // Keep-alive: several requests, one after the other, on one connection.
    for path in ["/healthz", "/.well-known/openid-configuration", "/openapi.json", "/healthz"] {
        stream.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes()).await.unwrap();
        let a = read_answer(&mut stream, &mut buf).await.expect("an answer");
        assert_eq!(a.status, 200, "{path}");
        assert_eq!(a.header("connection"), None, "{path}: the connection is kept");
        match path {
            "/openapi.json" => assert!(a.body == openapi.as_bytes(), "the OpenAPI document differs"),
            "/.well-known/openid-configuration" => assert_eq!(a.body, discovery, "the discovery document differs"),
            _ => assert_eq!(a.json()["status"], "ok"),
        }
    }
    // A chunked request body, sent in pieces.
    let head = format!(
        "POST /oauth2/token HTTP/1.1\r\nHost: x\r\nAuthorization: {basic}\r\n\
         Content-Type: application/x-www-form-urlencoded\r\nTransfer-Encoding: chunked\r\n\r\n"
    );
    for piece in [head.as_str(), "b\r\ngrant_type=\r\n", "12\r\nclient_credentials\r\n", "0\r\n\r\n"] {
        stream.write_all(piece.as_bytes()).await.unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let a = read_answer(&mut stream, &mut buf).await.expect("an answer");
    assert_eq!(a.status, 200, "{}", String::from_utf8_lossy(&a.body));
    assert!(a.json()["access_token"].is_string());
    assert_eq!(a.header("cache-control"), Some("no-store"));
    // Pipelined: three requests in one write, three answers in order.
    let three = "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n".repeat(2) + "GET /openapi.json HTTP/1.1\r\nHost: x\r\n\r\n";
    stream.write_all(three.as_bytes()).await.unwrap();
    for _ in 0..2 {
        assert_eq!(read_answer(&mut stream, &mut buf).await.unwrap().json()["status"], "ok");
    }
    assert!(read_answer(&mut stream, &mut buf).await.unwrap().body == openapi.as_bytes());
    // Forty large answers asked for at once and read only later: the facade's writes fill the
    // socket and come back partial or pending, and still arrive whole and in order.
    let forty = "GET /openapi.json HTTP/1.1\r\nHost: x\r\n\r\n".repeat(40);
    stream.write_all(forty.as_bytes()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    for i in 0..40 {
        let a = read_answer(&mut stream, &mut buf).await.unwrap();
        assert!(a.status == 200 && a.body == openapi.as_bytes(), "answer {i} differs");
    }
    // An application error is the App's own, untouched.
    stream.write_all(b"GET /oauth2/token HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    let a = read_answer(&mut stream, &mut buf).await.unwrap();
    assert_eq!(a.status, 405);
    assert_eq!(a.json()["error"], "invalid_request");
    assert_eq!(a.header("connection"), None);
    assert!(buf.is_empty(), "nothing more was sent: {:?}", String::from_utf8_lossy(&buf));
    app.stop().await;
}
