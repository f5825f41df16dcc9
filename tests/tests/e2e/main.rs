//! Black-box tests of the token service over real gRPC on a random port. Every flow is
//! written once and stamped out for both backend pairs: SQLite + in-memory (always) and
//! Postgres + Redis (fails under CI when they are unreachable, skips loudly elsewhere).

// tonic's Status is the error type of every client call; boxing it in tests buys nothing.
#![allow(clippy::result_large_err)]

mod flows;
mod harness;
mod leaks;
mod outage;
mod revocation;
mod throttles;
mod verifier;
mod watch;

mod sealed_keys {
    use crate::harness::*;

    const KEK: &str = "q2O9mJ3m1YH8JX1bX0h8m9XH3t7b9Q1nq1d3V8yq0aE=";

    async fn keys_are_sealed_at_rest(pair: Pair) {
        let Some(mut app) =
            TestApp::spawn_with(pair, |s| s.keys.encryption_key = Some(tessera_crypto::seal::Kek::parse(KEK).unwrap()))
                .await
        else {
            return;
        };
        let (durable, _) = tessera_token_service::connect_stores(&app.settings).await.unwrap();
        let stored = durable.list_keys().await.unwrap();
        assert_eq!(stored.len(), 1);
        assert!(tessera_crypto::seal::is_sealed(&stored[0].private_der), "the private key is sealed");
        assert!(tessera_crypto::keys::SigningKey::from_pkcs8(
            tessera_crypto::keys::Algorithm::Es256,
            &stored[0].private_der
        )
        .is_err());
        // The sealed key still signs and verifies across a restart.
        app.restart().await;
        let mut wrong = app.settings.clone();
        wrong.keys.encryption_key =
            Some(tessera_crypto::seal::Kek::parse(&tessera_crypto::seal::Kek::generate_b64()).unwrap());
        let (d, e) = tessera_token_service::connect_stores(&wrong).await.unwrap();
        let err = tessera_token_service::Application::build_with(
            wrong.clone(),
            d,
            e,
            std::sync::Arc::new(tessera_core::clock::SystemClock),
        )
        .await
        .err()
        .expect("a wrong key-encryption key must stop the start");
        assert!(format!("{err:#}").contains("cannot be decrypted"), "{err:#}");
        wrong.keys.encryption_key = None;
        let (d, e) = tessera_token_service::connect_stores(&wrong).await.unwrap();
        let err = tessera_token_service::Application::build_with(
            wrong,
            d,
            e,
            std::sync::Arc::new(tessera_core::clock::SystemClock),
        )
        .await
        .err()
        .expect("a missing key-encryption key must stop the start");
        assert!(format!("{err:#}").contains("no key-encryption key"), "{err:#}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn signing_keys_are_sealed_at_rest_with_sqlite() {
        keys_are_sealed_at_rest(Pair::SqliteMemory).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn signing_keys_are_sealed_at_rest_with_postgres() {
        keys_are_sealed_at_rest(Pair::PostgresRedis).await;
    }
}

mod algorithms {
    use crate::harness::*;
    use tessera_proto::token::v1 as pb;

    async fn signs_and_verifies_with(alg: &str, kty: &str) {
        let Some(app) = TestApp::spawn_with(Pair::SqliteMemory, |s| {
            s.tokens.signing_alg = tessera_crypto::keys::Algorithm::parse(alg).unwrap()
        })
        .await
        else {
            return;
        };
        let svc = app.client(ClientSpec { id: "svc", grants: &["client_credentials"], ..Default::default() }).await;
        let req = pb::IssueTokenRequest {
            grant_type: "client_credentials".into(),
            client_id: svc.0.clone(),
            client_secret: svc.1.clone(),
            ..Default::default()
        };
        let t = app.issue(req).await.unwrap();
        assert_eq!(jwt_parts(&t.access_token).0["alg"], alg);
        assert!(app.introspect(&t.access_token, (&svc.0, &svc.1)).await.active);
        let jwks = app.token.clone().get_jwks(pb::GetJwksRequest {}).await.unwrap().into_inner().jwks_json;
        let jwks: serde_json::Value = serde_json::from_str(&jwks).unwrap();
        assert_eq!(jwks["keys"][0]["kty"], kty);
        assert_eq!(jwks["keys"][0]["alg"], alg);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn tokens_can_be_signed_with_eddsa() {
        signs_and_verifies_with("EdDSA", "OKP").await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn tokens_can_be_signed_with_rs256() {
        signs_and_verifies_with("RS256", "RSA").await;
    }
}

mod default_client {
    use crate::harness::*;
    use tessera_core::ErrorCode;
    use tessera_proto::token::v1 as pb;

    fn password_without_client() -> pb::IssueTokenRequest {
        pb::IssueTokenRequest {
            grant_type: "password".into(),
            username: "alice".into(),
            password: "alice-password".into(),
            ..Default::default()
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn a_request_naming_no_client_acts_as_the_configured_public_default() {
        let Some(app) = TestApp::spawn_with(Pair::SqliteMemory, |s| s.tokens.default_client_id = "cli".into()).await
        else {
            return;
        };
        app.client(ClientSpec {
            id: "cli",
            public: true,
            grants: &["password", "refresh_token"],
            ..Default::default()
        })
        .await;
        app.user("alice", "alice-password").await;
        let t = app.issue(password_without_client()).await.unwrap();
        assert_eq!(jwt_parts(&t.access_token).1["client_id"], "cli");
        // A secret without a client id is still refused: the default is for public use only.
        let with_secret = pb::IssueTokenRequest { client_secret: "something".into(), ..password_without_client() };
        assert_oauth(app.issue(with_secret).await, ErrorCode::InvalidClient, "a secret with no client id");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn without_a_default_client_a_request_naming_no_client_is_invalid_client() {
        let Some(app) = TestApp::spawn(Pair::SqliteMemory).await else { return };
        app.user("alice", "alice-password").await;
        assert_oauth(app.issue(password_without_client()).await, ErrorCode::InvalidClient, "no client");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn a_confidential_default_client_cannot_be_used_without_its_secret() {
        let Some(app) = TestApp::spawn_with(Pair::SqliteMemory, |s| s.tokens.default_client_id = "svc".into()).await
        else {
            return;
        };
        app.client(ClientSpec { id: "svc", grants: &["password"], ..Default::default() }).await;
        app.user("alice", "alice-password").await;
        assert_oauth(app.issue(password_without_client()).await, ErrorCode::InvalidClient, "confidential default");
    }
}
