//! Both services' `/metrics` after a few flows through the facade: each request counted under
//! its endpoint, grant type and outcome, tokens issued by grant, and the security events
//! (refresh reuse, lockout) where they happened. Each test owns its services, so the counts
//! are exact whatever else runs in the process.

use crate::harness::*;

/// The value of the series named exactly `series` (name and labels, as exposed).
#[track_caller]
fn value(exposition: &str, series: &str) -> f64 {
    exposition
        .lines()
        .find_map(|l| l.strip_prefix(series).and_then(|rest| rest.strip_prefix(' ')))
        .unwrap_or_else(|| panic!("no series {series} in:\n{exposition}"))
        .trim()
        .parse()
        .unwrap()
}

async fn scrape(http: &reqwest::Client, url: &str) -> String {
    let r = http.get(url).send().await.unwrap();
    assert_eq!(r.status(), 200, "{url}");
    let ct = r.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
    assert!(ct.starts_with("text/plain; version=0.0.4"), "{url}: {ct}");
    r.text().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_services_count_outcomes_tokens_and_security_events() {
    let Some(app) = TestApp::spawn_with(Pair::SqliteMemory, |s| s.tokens.lockout_threshold = 2).await else {
        return;
    };
    let (id, secret) = app.confidential(&["client_credentials", "password", "refresh_token"]).await;
    app.create_user("mia", "mia's correct horse").await;
    app.create_user("max", "max's correct horse").await;

    // A success, and an invalid_client through an alias of the token endpoint.
    app.post_form("/oauth2/token", &[("grant_type", "client_credentials")], Some((&id, &secret))).await.assert_tokens();
    app.post_form("/token", &[("grant_type", "client_credentials")], Some((&id, "not-the-secret")))
        .await
        .assert_error(401, "invalid_client");
    // A refresh token used twice: the second use is reuse.
    let t = app
        .post_form(
            "/oauth2/token",
            &[("grant_type", "password"), ("username", "mia"), ("password", "mia's correct horse")],
            Some((&id, &secret)),
        )
        .await
        .assert_tokens();
    let refresh = t["refresh_token"].as_str().unwrap().to_owned();
    let form = [("grant_type", "refresh_token"), ("refresh_token", refresh.as_str())];
    app.post_form("/oauth2/token", &form, Some((&id, &secret))).await.assert_tokens();
    app.post_form("/oauth2/token", &form, Some((&id, &secret))).await.assert_error(400, "invalid_grant");
    // Two wrong passwords lock max out (threshold 2).
    for _ in 0..2 {
        app.post_form(
            "/oauth2/token",
            &[("grant_type", "password"), ("username", "max"), ("password", "wrong")],
            Some((&id, &secret)),
        )
        .await
        .assert_error(400, "invalid_grant");
    }

    let facade = scrape(&app.http, &app.url("/metrics")).await;
    let http = |grant: &str, outcome: &str| {
        format!(
            "tessera_http_requests_total{{endpoint=\"/oauth2/token\",grant_type=\"{grant}\",method=\"POST\",outcome=\"{outcome}\"}}"
        )
    };
    for (series, expected) in [
        (http("client_credentials", "ok"), 1.0),
        (http("client_credentials", "invalid_client"), 1.0),
        (http("password", "ok"), 1.0),
        (http("password", "invalid_grant"), 2.0),
        (http("refresh_token", "ok"), 1.0),
        (http("refresh_token", "invalid_grant"), 1.0),
    ] {
        assert_eq!(value(&facade, &series), expected, "{series}");
    }
    let latency = "tessera_http_request_duration_seconds_count{endpoint=\"/oauth2/token\",grant_type=\"refresh_token\",method=\"POST\",outcome=\"ok\"}";
    assert_eq!(value(&facade, latency), 1.0);
    assert!(!facade.contains("endpoint=\"/token\""), "aliases are folded into the standard path:\n{facade}");
    assert!(!facade.contains(&id), "no client id in the labels:\n{facade}");

    let ts = scrape(&app.http, &app.token_service_metrics_url()).await;
    let rpc = |grant: &str, outcome: &str| {
        format!("tessera_grpc_requests_total{{grant_type=\"{grant}\",outcome=\"{outcome}\",rpc=\"IssueToken\"}}")
    };
    for (series, expected) in [
        (rpc("client_credentials", "ok"), 1.0),
        (rpc("client_credentials", "invalid_client"), 1.0),
        (rpc("password", "ok"), 1.0),
        (rpc("password", "invalid_grant"), 2.0),
        (rpc("refresh_token", "ok"), 1.0),
        (rpc("refresh_token", "invalid_grant"), 1.0),
        (
            "tessera_grpc_request_duration_seconds_count{grant_type=\"password\",outcome=\"ok\",rpc=\"IssueToken\"}"
                .into(),
            1.0,
        ),
        ("tessera_grpc_requests_total{grant_type=\"\",outcome=\"ok\",rpc=\"CreateUser\"}".into(), 2.0),
        ("tessera_tokens_issued_total{grant_type=\"client_credentials\"}".into(), 1.0),
        ("tessera_tokens_issued_total{grant_type=\"password\"}".into(), 1.0),
        ("tessera_tokens_issued_total{grant_type=\"refresh_token\"}".into(), 1.0),
        ("tessera_tokens_issued_total{grant_type=\"authorization_code\"}".into(), 0.0),
        ("tessera_refresh_reuse_detected_total".into(), 1.0),
        ("tessera_lockouts_total".into(), 1.0),
        ("tessera_code_replays_total".into(), 0.0),
        ("tessera_audit_events_total{kind=\"refresh_reuse\"}".into(), 1.0),
        ("tessera_audit_events_total{kind=\"client_created\"}".into(), 1.0),
        ("tessera_store_errors_total{store=\"database\"}".into(), 0.0),
        ("tessera_store_errors_total{store=\"ephemeral\"}".into(), 0.0),
    ] {
        assert_eq!(value(&ts, &series), expected, "{series}");
    }
    assert!(!ts.contains(&id) && !ts.contains("mia"), "no client id or username in the labels:\n{ts}");

    // The listener answers nothing but GET /metrics.
    let other = app.token_service_metrics_url().replace("/metrics", "/");
    assert_eq!(app.http.get(other).send().await.unwrap().status(), 404);
    assert_eq!(app.http.post(app.token_service_metrics_url()).send().await.unwrap().status(), 405);
    app.stop().await;
}
