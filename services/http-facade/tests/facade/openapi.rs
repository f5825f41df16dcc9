//! The OpenAPI document matches the router: every JSON route the router registers is
//! documented, every documented operation is routed (and answers), and nothing else is.

use crate::harness::*;
use reqwest::Method;

/// The JSON routes as the router registers them (`route_table` is made by the same macro
/// invocation as `routes`), each method and path.
fn json_routes() -> Vec<(String, String)> {
    let mut routes = vec![];
    for route in tessera_http_facade::route_table() {
        if route.answers != tessera_http_facade::Answers::Json {
            continue;
        }
        for path in &route.paths {
            routes.extend(route.methods.iter().map(|m| (m.to_string(), path.to_string())));
        }
    }
    routes
}

#[test]
fn the_router_routes_the_json_endpoints_of_the_design_and_their_aliases() {
    let routes = json_routes();
    for (method, path) in [
        ("post", "/oauth2/token"),
        ("post", "/token"),
        ("post", "/api/v4/oauth"),
        ("post", "/api/v4/oauth/device"),
        ("post", "/oauth2/introspect"),
        ("post", "/oauth2/revoke"),
        ("get", "/.well-known/jwks.json"),
        ("post", "/userinfo"),
        ("get", "/openapi.json"),
    ] {
        assert!(routes.iter().any(|(m, p)| m == method && p == path), "{method} {path} is not routed as JSON");
    }
    let table = tessera_http_facade::route_table();
    let metrics = table.iter().find(|r| r.paths == ["/metrics"]).unwrap();
    assert_eq!(metrics.answers, tessera_http_facade::Answers::Other, "Prometheus text is not in the document");
}

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
    let routed = json_routes();
    let mut missing: Vec<String> = routed
        .iter()
        .filter(|(m, p)| !documented.iter().any(|(dm, dp)| dm == m && dp == p))
        .map(|(m, p)| format!("{m} {p} is routed but not documented"))
        .collect();
    for (method, path) in &documented {
        if !routed.iter().any(|(m, p)| m == method && p == path) {
            missing.push(format!("{method} {path} is documented but not routed as JSON"));
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
