//! A person in a real browser: headless Chromium over WebDriver (chromedriver) runs the
//! authorization code + PKCE flow through the login and consent pages to a local callback,
//! and the device flow through the verification page while a poller waits for its token.

use crate::harness::*;
use actix_web::{web, App, HttpResponse, HttpServer};
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{json, Value};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
const CHROMIUM: &str = "/usr/bin/chromium";

/// A chromedriver process, killed when dropped.
struct Driver {
    child: Child,
    url: String,
    _profile: tempfile::TempDir,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// chromedriver on a free port and a Chromium session with a fresh profile; `None` (after
/// a loud SKIPPED) when they are not installed outside CI.
async fn browser() -> Option<(Driver, Client)> {
    for bin in [CHROMEDRIVER, CHROMIUM] {
        if !std::path::Path::new(bin).exists() {
            skip_or_fail(format!("{bin} is missing (apt-get install chromium chromium-driver)"));
            return None;
        }
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let child = Command::new(CHROMEDRIVER)
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("chromedriver starts");
    let profile = tempfile::tempdir().unwrap();
    let driver = Driver { child, url: format!("http://127.0.0.1:{port}"), _profile: profile };
    let http = plain_client();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(r) = http.get(format!("{}/status", driver.url)).send().await {
            if r.status().is_success() {
                break;
            }
        }
        assert!(Instant::now() < deadline, "chromedriver did not start");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        json!({
            "binary": CHROMIUM,
            "args": [
                "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
                format!("--user-data-dir={}", driver._profile.path().display()),
            ],
            // A phone: 390 CSS pixels wide, as the pages must read there.
            "mobileEmulation": {"deviceMetrics": {"width": 390, "height": 844, "pixelRatio": 2.0}},
        }),
    );
    // fantoccini's TLS stack comes without a crypto provider; WebDriver here is plain HTTP
    // on loopback, but the builder wants one.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = ClientBuilder::rustls()
        .expect("TLS roots")
        .capabilities(caps)
        .connect(&driver.url)
        .await
        .expect("a Chromium session");
    Some((driver, client))
}

/// A local OAuth client's redirect URI that records every query it receives.
async fn callback_server() -> (String, Arc<Mutex<Vec<String>>>, actix_web::dev::ServerHandle) {
    let seen = Arc::new(Mutex::new(Vec::<String>::new()));
    let data = web::Data::new(Arc::clone(&seen));
    let server = HttpServer::new(move || {
        App::new().app_data(data.clone()).route(
            "/callback",
            web::get().to(|req: actix_web::HttpRequest, seen: web::Data<Arc<Mutex<Vec<String>>>>| async move {
                seen.lock().unwrap().push(req.query_string().to_owned());
                HttpResponse::Ok()
                    .content_type("text/html")
                    .body("<!doctype html><title>Back</title><h1>Back at the app</h1>")
            }),
        )
    })
    .workers(1)
    .disable_signals()
    .bind("127.0.0.1:0")
    .unwrap();
    let addr = server.addrs()[0];
    let server = server.run();
    let handle = server.handle();
    tokio::spawn(server);
    (format!("http://{addr}/callback"), seen, handle)
}

async fn fill(c: &Client, css: &str, text: &str) {
    c.wait().for_element(Locator::Css(css)).await.unwrap().send_keys(text).await.unwrap();
}

async fn click(c: &Client, css: &str) {
    c.wait().for_element(Locator::Css(css)).await.unwrap().click().await.unwrap();
}

/// Waits for the page whose `<h1>` reads `expected` (the previous page may still be
/// showing right after a click).
async fn expect_heading(c: &Client, expected: &str) {
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut last = String::new();
    while Instant::now() < deadline {
        if let Ok(h1) = c.find(Locator::Css("h1")).await {
            if let Ok(text) = h1.text().await {
                if text == expected {
                    return;
                }
                last = text;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("expected the page {expected:?}, still on {last:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_person_signs_in_and_consents_in_chromium_and_the_app_exchanges_the_pkce_code() {
    let Some((_driver, c)) = browser().await else { return };
    let Some(app) = TestApp::spawn(Pair::SqliteMemory).await else { return };
    let (callback, seen, cb_handle) = callback_server().await;
    let mut spec = client_spec(&["authorization_code", "refresh_token"], true);
    spec.name = "Photo Printer".into();
    spec.redirect_uris = vec![callback.clone()];
    let (id, _) = app.create_client(spec).await;
    app.create_user("ada", "ada's long password").await;
    let (verifier, challenge) = pkce();

    let authorize = app.url(&format!(
        "/oauth2/authorize?response_type=code&client_id={id}&redirect_uri={}&scope={}&state=st-42&nonce=nn&code_challenge={challenge}&code_challenge_method=S256",
        encode(&callback),
        encode("openid profile")
    ));
    c.goto(&authorize).await.unwrap();
    expect_heading(&c, "Sign in").await;
    let png = c.screenshot().await.unwrap();
    let shot = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("facade-login-phone.png");
    std::fs::write(&shot, png).unwrap();
    eprintln!("login page screenshot: {}", shot.display());

    fill(&c, "#username", "ada").await;
    fill(&c, "#password", "ada's long password").await;
    click(&c, "button[type=submit]").await;
    expect_heading(&c, "Allow Photo Printer?").await;
    let page = c.source().await.unwrap();
    assert!(page.contains("See your name and username"), "{page}");
    click(&c, "button[value=approve]").await;

    let deadline = Instant::now() + Duration::from_secs(15);
    let query = loop {
        if let Some(q) = seen.lock().unwrap().first().cloned() {
            break q;
        }
        assert!(Instant::now() < deadline, "the browser never reached the callback");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    expect_heading(&c, "Back at the app").await;
    assert!(c.current_url().await.unwrap().as_str().starts_with(&callback));
    let p: Vec<(String, String)> = url::form_urlencoded::parse(query.as_bytes()).into_owned().collect();
    assert_eq!(param(&p, "state").as_deref(), Some("st-42"));
    let code = param(&p, "code").expect("a code");

    let t = app
        .post_form(
            "/oauth2/token",
            &[
                ("grant_type", "authorization_code"),
                ("code", &code),
                ("redirect_uri", &callback),
                ("client_id", &id),
                ("code_verifier", &verifier),
            ],
            None,
        )
        .await
        .assert_tokens();
    assert_eq!(jwt_claims(t["id_token"].as_str().unwrap())["nonce"], "nn");
    c.close().await.unwrap();
    cb_handle.stop(false).await;
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_person_approves_a_device_in_chromium_while_the_device_polls_for_its_token() {
    let Some((_driver, c)) = browser().await else { return };
    let Some(app) = TestApp::spawn(Pair::SqliteMemory).await else { return };
    let mut spec = client_spec(&["device_code"], true);
    spec.name = "Living Room TV".into();
    let (id, _) = app.create_client(spec).await;
    app.create_user("grace", "grace's long password").await;
    let d =
        app.post_form("/oauth2/device_authorization", &[("client_id", &id), ("scope", "openid profile")], None).await;
    assert_eq!(d.status, 200, "{}", d.text);
    let d = d.json();

    let poller = {
        let token_url = app.url("/oauth2/token");
        let device_code = d["device_code"].as_str().unwrap().to_owned();
        let id = id.clone();
        let mut interval = d["interval"].as_u64().unwrap();
        tokio::spawn(async move {
            let http = plain_client();
            let deadline = Instant::now() + Duration::from_secs(90);
            loop {
                // RFC 8628 §3.5: wait `interval` between polls, 5 s more after slow_down.
                tokio::time::sleep(Duration::from_millis(interval * 1000 + 100)).await;
                let a = Answer::of(
                    http.post(&token_url)
                        .form(&[
                            ("grant_type", "urn:ietf:params:oauth:grant-type:device_code"),
                            ("device_code", device_code.as_str()),
                            ("client_id", id.as_str()),
                        ])
                        .send()
                        .await
                        .unwrap(),
                )
                .await;
                if a.status == 200 {
                    return a.json();
                }
                let error = a.json()["error"].as_str().unwrap_or_default().to_owned();
                match error.as_str() {
                    "authorization_pending" => {}
                    "slow_down" => interval += 5,
                    other => panic!("the device poll failed: {other}: {}", a.text),
                }
                assert!(Instant::now() < deadline, "no token in time");
            }
        })
    };

    c.goto(d["verification_uri_complete"].as_str().unwrap()).await.unwrap();
    expect_heading(&c, "Connect a device").await;
    let prefilled = c.find(Locator::Css("#user_code")).await.unwrap().prop("value").await.unwrap();
    assert_eq!(prefilled.as_deref(), d["user_code"].as_str());
    click(&c, "button[type=submit]").await;
    expect_heading(&c, "Sign in").await;
    fill(&c, "#username", "grace").await;
    fill(&c, "#password", "grace's long password").await;
    click(&c, "button[type=submit]").await;
    expect_heading(&c, "Connect Living Room TV?").await;
    let page = c.source().await.unwrap();
    assert!(page.contains(d["user_code"].as_str().unwrap()), "the code is shown to compare");
    click(&c, "button[value=approve]").await;
    expect_heading(&c, "Device connected").await;

    let tokens: Value = tokio::time::timeout(Duration::from_secs(120), poller).await.expect("the poller ends").unwrap();
    assert_eq!(tokens["token_type"], "Bearer");
    assert!(tokens["id_token"].is_string(), "{tokens}");
    c.close().await.unwrap();
    app.stop().await;
}
