//! Bad input, table-driven: every JSON endpoint answers malformed bodies, wrong content
//! types, repeated parameters, oversized bodies, unknown grant types, missing fields and
//! double client authentication with the RFC's error and status, as JSON, never a 500 and
//! never HTML. Each failing case is printed with its description.

use crate::harness::*;
use reqwest::Method;

tessera_testkit::both_pairs!(crate::harness::with_pair; every_json_endpoint_answers_bad_input_with_the_rfc_error_as_json);

struct Case {
    what: &'static str,
    method: Method,
    path: &'static str,
    headers: Vec<(&'static str, String)>,
    body: Vec<u8>,
    status: u16,
    error: &'static str,
}

const FORM: &str = "application/x-www-form-urlencoded";
const JSON: &str = "application/json";

fn case(
    what: &'static str,
    path: &'static str,
    content_type: &str,
    body: impl Into<Vec<u8>>,
    status: u16,
    error: &'static str,
) -> Case {
    Case {
        what,
        method: Method::POST,
        path,
        headers: vec![("Content-Type", content_type.to_owned())],
        body: body.into(),
        status,
        error,
    }
}

async fn every_json_endpoint_answers_bad_input_with_the_rfc_error_as_json(pair: Pair) {
    let Some(app) = TestApp::spawn(pair).await else { return };
    let (id, secret) =
        app.confidential(&["client_credentials", "authorization_code", "refresh_token", "password"]).await;
    let basic = basic_header(&id, &secret);
    let big_form = format!("grant_type=client_credentials&pad={}", "a".repeat(70 * 1024));
    let big_json = format!("{{\"grant_type\":\"client_credentials\",\"pad\":\"{}\"}}", "a".repeat(200 * 1024));
    let with_basic = |mut c: Case| {
        c.headers.push(("Authorization", basic.clone()));
        c
    };

    let mut cases = vec![
        // Token endpoint.
        with_basic(case("token: malformed JSON", "/oauth2/token", JSON, "{\"grant_type\":", 400, "invalid_request")),
        with_basic(case(
            "token: a JSON array",
            "/oauth2/token",
            JSON,
            "[\"client_credentials\"]",
            400,
            "invalid_request",
        )),
        with_basic(case(
            "token: a nested JSON value",
            "/oauth2/token",
            JSON,
            r#"{"grant_type":{"x":1}}"#,
            400,
            "invalid_request",
        )),
        with_basic(case(
            "token: a repeated JSON key",
            "/api/v4/oauth",
            JSON,
            r#"{"grant_type":"password","grant_type":"client_credentials"}"#,
            400,
            "invalid_request",
        )),
        with_basic(case(
            "token: a repeated form parameter",
            "/token",
            FORM,
            "grant_type=client_credentials&grant_type=password",
            400,
            "invalid_request",
        )),
        with_basic(case(
            "token: text/plain",
            "/oauth2/token",
            "text/plain",
            "grant_type=client_credentials",
            400,
            "invalid_request",
        )),
        with_basic(case(
            "token: multipart",
            "/oauth2/token",
            "multipart/form-data; boundary=x",
            "--x--",
            400,
            "invalid_request",
        )),
        with_basic(case(
            "token: a charset other than UTF-8",
            "/oauth2/token",
            "application/x-www-form-urlencoded; charset=iso-8859-1",
            "grant_type=client_credentials",
            400,
            "invalid_request",
        )),
        with_basic(case(
            "token: a form body over 64 KiB",
            "/oauth2/token",
            FORM,
            big_form.clone(),
            413,
            "invalid_request",
        )),
        with_basic(case(
            "token: a JSON body over 64 KiB",
            "/api/v4/oauth",
            JSON,
            big_json.clone(),
            413,
            "invalid_request",
        )),
        with_basic(case(
            "token: an unknown grant type",
            "/oauth2/token",
            FORM,
            "grant_type=magic",
            400,
            "unsupported_grant_type",
        )),
        with_basic(case("token: no grant type", "/oauth2/token", FORM, "scope=api", 400, "invalid_request")),
        with_basic(case(
            "token: an empty grant type counts as none",
            "/oauth2/token",
            JSON,
            r#"{"grant_type":""}"#,
            400,
            "invalid_request",
        )),
        with_basic(case(
            "token: authorization_code without a code",
            "/oauth2/token",
            FORM,
            format!("grant_type=authorization_code&redirect_uri={}", encode(CALLBACK)),
            400,
            "invalid_request",
        )),
        with_basic(case(
            "token: password without a password",
            "/oauth2/token",
            FORM,
            "grant_type=password&username=x",
            400,
            "invalid_request",
        )),
        with_basic(case(
            "token: refresh_token without the token",
            "/oauth2/token",
            FORM,
            "grant_type=refresh_token",
            400,
            "invalid_request",
        )),
        with_basic(case(
            "token: Basic and client_secret at once",
            "/oauth2/token",
            FORM,
            format!("grant_type=client_credentials&client_secret={secret}"),
            400,
            "invalid_request",
        )),
        with_basic(case(
            "token: Basic and another client_id",
            "/oauth2/token",
            FORM,
            "grant_type=client_credentials&client_id=someone-else",
            400,
            "invalid_request",
        )),
        case(
            "token: no client authentication",
            "/oauth2/token",
            FORM,
            "grant_type=client_credentials",
            401,
            "invalid_client",
        ),
        case("token: an empty body", "/oauth2/token", FORM, "", 400, "invalid_request"),
        case(
            "token: no Content-Type with a body",
            "/oauth2/token",
            "",
            "grant_type=client_credentials",
            400,
            "invalid_request",
        ),
        Case {
            what: "token: Basic that is not base64",
            method: Method::POST,
            path: "/oauth2/token",
            headers: vec![("Content-Type", FORM.into()), ("Authorization", "Basic %%%".into())],
            body: b"grant_type=client_credentials".to_vec(),
            status: 401,
            error: "invalid_client",
        },
        Case {
            what: "token: a Bearer header instead of client authentication",
            method: Method::POST,
            path: "/oauth2/token",
            headers: vec![("Content-Type", FORM.into()), ("Authorization", "Bearer abc".into())],
            body: b"grant_type=client_credentials".to_vec(),
            status: 401,
            error: "invalid_client",
        },
        Case {
            what: "token: GET is not allowed",
            method: Method::GET,
            path: "/oauth2/token",
            headers: vec![],
            body: vec![],
            status: 405,
            error: "invalid_request",
        },
        // Device authorization.
        case(
            "device: a repeated parameter",
            "/oauth2/device_authorization",
            FORM,
            "client_id=a&client_id=b",
            400,
            "invalid_request",
        ),
        case("device: malformed JSON", "/api/v4/oauth/device", JSON, "{client_id: x}", 400, "invalid_request"),
        case("device: text/xml", "/api/v4/oauth/device", "text/xml", "<client_id/>", 400, "invalid_request"),
        case("device: over 64 KiB", "/oauth2/device_authorization", FORM, big_form.clone(), 413, "invalid_request"),
        case("device: no client", "/oauth2/device_authorization", FORM, "scope=openid", 401, "invalid_client"),
        with_basic(case(
            "device: a client not allowed the device grant",
            "/oauth2/device_authorization",
            FORM,
            "scope=openid",
            400,
            "unauthorized_client",
        )),
        // Introspection and revocation.
        case("introspect: no caller authentication", "/oauth2/introspect", FORM, "token=abc", 401, "invalid_client"),
        with_basic(case(
            "introspect: no token",
            "/oauth2/introspect",
            FORM,
            "token_type_hint=access_token",
            400,
            "invalid_request",
        )),
        with_basic(case(
            "introspect: a repeated token",
            "/oauth2/introspect",
            FORM,
            "token=a&token=b",
            400,
            "invalid_request",
        )),
        with_basic(case(
            "introspect: a JSON array for a token",
            "/oauth2/introspect",
            JSON,
            r#"{"token":[1]}"#,
            400,
            "invalid_request",
        )),
        with_basic(case(
            "introspect: over 64 KiB",
            "/oauth2/introspect",
            JSON,
            big_json.clone(),
            413,
            "invalid_request",
        )),
        with_basic(case("revoke: text/plain", "/oauth2/revoke", "text/plain", "token=abc", 400, "invalid_request")),
        with_basic(case(
            "revoke: Basic and client_secret at once",
            "/oauth2/revoke",
            FORM,
            format!("token=abc&client_secret={secret}"),
            400,
            "invalid_request",
        )),
        case("revoke: no client", "/oauth2/revoke", FORM, "token=abc", 401, "invalid_client"),
        // Userinfo.
        Case {
            what: "userinfo: a token in the header and in the body",
            method: Method::POST,
            path: "/userinfo",
            headers: vec![("Content-Type", FORM.into()), ("Authorization", "Bearer abc".into())],
            body: b"access_token=abc".to_vec(),
            status: 400,
            error: "invalid_request",
        },
        case("userinfo: a wrong content type", "/userinfo", "text/plain", "access_token=abc", 400, "invalid_request"),
        case("userinfo: over 64 KiB", "/userinfo", FORM, big_form.clone(), 413, "invalid_request"),
        // Anything else.
        Case {
            what: "an unknown path",
            method: Method::GET,
            path: "/oauth2/nothing-here",
            headers: vec![],
            body: vec![],
            status: 404,
            error: "invalid_request",
        },
        Case {
            what: "DELETE on the metadata",
            method: Method::DELETE,
            path: "/.well-known/openid-configuration",
            headers: vec![],
            body: vec![],
            status: 405,
            error: "invalid_request",
        },
    ];
    // reqwest sets no Content-Type for a raw body; an empty one means "send none".
    for c in &mut cases {
        c.headers.retain(|(k, v)| !(*k == "Content-Type" && v.is_empty()));
    }

    let mut failures = vec![];
    for c in &cases {
        let headers: Vec<(&str, &str)> = c.headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let a = app.raw(c.method.clone(), c.path, &headers, c.body.clone()).await;
        let json: Option<serde_json::Value> = serde_json::from_str(&a.text).ok();
        let problem = if a.status.as_u16() != c.status {
            Some(format!("status {} (expected {})", a.status, c.status))
        } else if !a.content_type().starts_with("application/json") {
            Some(format!("content type {:?}", a.content_type()))
        } else if json.as_ref().and_then(|j| j["error"].as_str()) != Some(c.error) {
            Some(format!("error {:?} (expected {})", json.as_ref().map(|j| j["error"].clone()), c.error))
        } else if json.as_ref().and_then(|j| j["error_description"].as_str()).is_none() {
            Some("no error_description".to_owned())
        } else {
            None
        };
        if let Some(p) = problem {
            let shown: String = a.text.chars().take(300).collect();
            failures.push(format!("{}: {p}; body: {shown}", c.what));
        }
        let basic_tried = c.headers.iter().any(|(k, v)| *k == "Authorization" && v.starts_with("Basic"));
        if c.error == "invalid_client" && basic_tried && a.header("www-authenticate") != "Basic realm=\"tessera\"" {
            failures.push(format!("{}: no Basic challenge", c.what));
        }
    }
    assert!(failures.is_empty(), "{} of {} cases failed:\n  {}", failures.len(), cases.len(), failures.join("\n  "));
    app.stop().await;
}

/// With nothing listening at the token service's address, every JSON endpoint answers 503
/// `temporarily_unavailable` as JSON.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_json_endpoint_answers_503_json_when_the_token_service_is_down() {
    // A port that was free a moment ago: nothing listens there.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let config = tessera_http_facade::FacadeConfig { listen: "127.0.0.1:0".parse().unwrap(), ..Default::default() };
    let facade = tessera_http_facade::FacadeApplication::build(config, &format!("http://{dead}")).await.unwrap();
    let base = format!("http://{}", facade.local_addr());
    let http = plain_client();
    let basic = basic_header("some-client", "some-secret");
    let cases: Vec<(&str, Method, &str, Option<&str>)> = vec![
        ("token (form)", Method::POST, "/oauth2/token", Some("grant_type=client_credentials")),
        ("token (alias)", Method::POST, "/api/v4/oauth", Some("grant_type=password&username=a&password=b")),
        ("authorization_code", Method::POST, "/token", Some("grant_type=authorization_code&code=x")),
        ("device poll", Method::POST, "/oauth2/token", Some("grant_type=device_code&device_code=x")),
        ("device authorization", Method::POST, "/oauth2/device_authorization", Some("scope=openid")),
        ("introspect", Method::POST, "/oauth2/introspect", Some("token=x")),
        ("revoke", Method::POST, "/oauth2/revoke", Some("token=x")),
        ("metadata", Method::GET, "/.well-known/oauth-authorization-server", None),
        ("openid metadata", Method::GET, "/.well-known/openid-configuration", None),
        ("jwks", Method::GET, "/oauth2/jwks", None),
        ("jwks alias", Method::GET, "/.well-known/jwks.json", None),
        ("userinfo", Method::GET, "/userinfo", None),
        ("readyz", Method::GET, "/readyz", None),
    ];
    let mut failures = vec![];
    for (what, method, path, body) in cases {
        let mut r = http
            .request(method, format!("{base}{path}"))
            .header("Authorization", if path == "/userinfo" { "Bearer x".to_owned() } else { basic.clone() });
        if let Some(b) = body {
            r = r.header("Content-Type", "application/x-www-form-urlencoded").body(b.to_owned());
        }
        let a = Answer::of(r.send().await.unwrap()).await;
        let error = serde_json::from_str::<serde_json::Value>(&a.text)
            .ok()
            .and_then(|j| j["error"].as_str().map(str::to_owned));
        if a.status.as_u16() != 503
            || !a.content_type().starts_with("application/json")
            || error.as_deref() != Some("temporarily_unavailable")
        {
            failures.push(format!("{what}: {} {} {}", a.status, a.content_type(), a.text));
        }
    }
    assert!(failures.is_empty(), "failing cases:\n  {}", failures.join("\n  "));
    assert_eq!(http.get(format!("{base}/healthz")).send().await.unwrap().status(), 200);
    facade.stop().await.unwrap();
}
