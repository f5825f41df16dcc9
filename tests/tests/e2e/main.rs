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

macro_rules! for_both_backends {
    ($($name:ident),* $(,)?) => {
        mod sqlite_memory {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $name() {
                    if let Some(app) = crate::harness::TestApp::spawn(crate::harness::Backend::SqliteMemory).await {
                        crate::flows::$name(app).await;
                    }
                }
            )*
        }
        mod postgres_redis {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $name() {
                    if let Some(app) = crate::harness::TestApp::spawn(crate::harness::Backend::PostgresRedis).await {
                        crate::flows::$name(app).await;
                    }
                }
            )*
        }
    };
}

for_both_backends!(
    client_credentials_issues_a_signed_jwt_that_introspects_as_active,
    client_authentication_failures_are_invalid_client_and_public_clients_are_refused,
    a_scope_beyond_what_the_client_may_ask_is_invalid_scope,
    the_password_grant_issues_access_refresh_and_id_tokens,
    one_source_is_stopped_before_it_touches_an_account_and_the_user_still_signs_in,
    distributed_guessing_only_delays_an_account_and_no_burst_gets_more_checks,
    a_thousand_wrong_user_codes_from_one_source_are_refused_after_the_limit,
    grants_the_client_is_not_allowed_are_unauthorized_client,
    a_refresh_rotates_and_reusing_the_old_token_revokes_the_family,
    a_refresh_may_narrow_the_scope_but_never_widen_it,
    the_authorization_code_flow_with_pkce_issues_tokens_once,
    exchanging_a_code_twice_revokes_the_first_tokens,
    a_code_exchange_that_fails_validation_leaves_the_code_usable,
    public_clients_need_pkce_and_plain_only_where_allowed,
    an_expired_code_is_invalid_grant,
    an_unregistered_redirect_uri_is_an_error_and_later_errors_redirect_with_state,
    login_and_consent_are_asked_for_and_remembered,
    the_implicit_grant_works_only_where_enabled,
    the_device_flow_runs_from_start_to_token,
    a_denied_or_expired_device_code_gives_the_rfc_errors,
    introspection_needs_a_client_and_says_nothing_about_bad_tokens,
    revocation_follows_rfc_7009_and_refuses_other_clients_tokens,
    the_same_code_exchanged_concurrently_yields_exactly_one_token,
    the_same_refresh_token_presented_concurrently_yields_at_most_one,
    signing_keys_persist_so_tokens_survive_a_restart,
    userinfo_answers_for_openid_tokens_only,
    the_admin_service_needs_its_credential_and_manages_clients_and_users,
    bad_input_gets_a_clear_oauth_error,
    health_and_reflection_are_served,
    rotating_the_signing_key_keeps_old_tokens_valid_and_signs_with_the_new_key,
    a_rotation_on_one_node_is_honoured_by_another_at_once,
    disabling_a_user_revokes_their_tokens_on_every_node,
    setting_a_password_revokes_the_old_tokens_and_the_new_password_signs_in_at_once,
    rotating_a_client_secret_revokes_its_tokens_and_every_node_takes_the_new_secret,
    deleting_a_client_revokes_its_tokens_everywhere_and_its_id_is_never_reused,
    a_new_password_ends_sign_ins_and_codes_from_before_it,
    a_refresh_retried_within_the_window_gets_the_same_successor_until_the_successor_is_used,
    a_refresh_retried_after_the_window_is_reuse,
    concurrent_refreshes_of_one_token_within_the_window_never_make_two_live_chains,
);

mod sealed_keys {
    use crate::harness::*;

    const KEK: &str = "q2O9mJ3m1YH8JX1bX0h8m9XH3t7b9Q1nq1d3V8yq0aE=";

    async fn keys_are_sealed_at_rest(backend: Backend) {
        let Some(mut app) = TestApp::spawn_with(backend, |s| s.keys.encryption_key = Some(KEK.to_owned().into())).await
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
        wrong.keys.encryption_key = Some(tessera_crypto::seal::Kek::generate_b64().into());
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
        keys_are_sealed_at_rest(Backend::SqliteMemory).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn signing_keys_are_sealed_at_rest_with_postgres() {
        keys_are_sealed_at_rest(Backend::PostgresRedis).await;
    }
}

mod algorithms {
    use crate::harness::*;
    use tessera_proto::token::v1 as pb;

    async fn signs_and_verifies_with(alg: &str, kty: &str) {
        let Some(app) = TestApp::spawn_with(Backend::SqliteMemory, |s| {
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
        let Some(app) = TestApp::spawn_with(Backend::SqliteMemory, |s| s.tokens.default_client_id = "cli".into()).await
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
        let Some(app) = TestApp::spawn(Backend::SqliteMemory).await else { return };
        app.user("alice", "alice-password").await;
        assert_oauth(app.issue(password_without_client()).await, ErrorCode::InvalidClient, "no client");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn a_confidential_default_client_cannot_be_used_without_its_secret() {
        let Some(app) = TestApp::spawn_with(Backend::SqliteMemory, |s| s.tokens.default_client_id = "svc".into()).await
        else {
            return;
        };
        app.client(ClientSpec { id: "svc", grants: &["password"], ..Default::default() }).await;
        app.user("alice", "alice-password").await;
        assert_oauth(app.issue(password_without_client()).await, ErrorCode::InvalidClient, "confidential default");
    }
}
