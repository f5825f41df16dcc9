//! The transport edges: the client address the facade relays to the token service, and the
//! answers a client gets when the transport itself fails.

use crate::harness::*;

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

/// Client addresses as the token service records them, through a facade with these settings.
async fn relayed_sources(tweak: impl FnOnce(&mut tessera_token_service::settings::Settings), cases: &[Source]) {
    let log = tessera_testkit::trace_log();
    let Some(app) = TestApp::spawn_with(Pair::SqliteMemory, tweak).await else { return };
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
