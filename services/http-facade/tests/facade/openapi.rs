//! The OpenAPI document matches the routes that exist: every documented operation is
//! routed, and every JSON route of DESIGN.md's table is documented.

use crate::harness::*;
use reqwest::Method;

/// The JSON endpoints of DESIGN.md's HTTP table (aliases included) and the operations ones.
const JSON_ROUTES: &[(&str, &str)] = &[
    ("post", "/oauth2/token"),
    ("post", "/token"),
    ("post", "/api/v4/oauth"),
    ("post", "/oauth2/device_authorization"),
    ("post", "/api/v4/oauth/device"),
    ("post", "/oauth2/introspect"),
    ("post", "/oauth2/revoke"),
    ("get", "/.well-known/oauth-authorization-server"),
    ("get", "/.well-known/openid-configuration"),
    ("get", "/oauth2/jwks"),
    ("get", "/.well-known/jwks.json"),
    ("get", "/userinfo"),
    ("post", "/userinfo"),
    ("get", "/healthz"),
    ("get", "/readyz"),
    ("get", "/openapi.json"),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openapi_document_lists_exactly_the_json_routes_that_answer() {
    let Some(app) = TestApp::spawn(Pair::SqliteMemory).await else { return };
    let doc = app.get("/openapi.json").await;
    assert_eq!(doc.status, 200);
    let doc = doc.json();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."), "{}", doc["openapi"]);
    let paths = doc["paths"].as_object().unwrap();

    let mut documented = vec![];
    for (path, item) in paths {
        for method in ["get", "post", "put", "delete", "patch"] {
            if item.get(method).is_some() {
                documented.push((method.to_owned(), path.clone()));
            }
        }
    }
    let mut missing: Vec<String> = JSON_ROUTES
        .iter()
        .filter(|(m, p)| !documented.iter().any(|(dm, dp)| dm == m && dp == p))
        .map(|(m, p)| format!("{m} {p} is routed but not documented"))
        .collect();
    for (method, path) in &documented {
        if !JSON_ROUTES.iter().any(|(m, p)| m == method && p == path) {
            missing.push(format!("{method} {path} is documented but not in DESIGN.md's table"));
        }
        let m = Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
        let a = app.raw(m, path, &[("Content-Type", "application/x-www-form-urlencoded")], vec![]).await;
        if a.status == 404 || a.status == 405 {
            missing.push(format!("{method} {path} is documented but answers {}", a.status));
        }
    }
    let ids: Vec<&str> = documented.iter().filter_map(|(m, p)| paths[p][m.as_str()]["operationId"].as_str()).collect();
    let mut unique = ids.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), ids.len(), "operationIds are unique: {ids:?}");
    assert!(missing.is_empty(), "{}", missing.join("\n"));
    let token = &paths["/oauth2/token"]["post"]["requestBody"]["content"];
    assert!(
        token.get("application/json").is_some() && token.get("application/x-www-form-urlencoded").is_some(),
        "{token}"
    );
    app.stop().await;
}
