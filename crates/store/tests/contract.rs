//! The durable-port contract, written once and stamped out by `contract!` for every backend:
//! an in-memory SQLite database, a SQLite file, and Postgres.
//!
//! Each test gets a database of its own (a fresh file, or `CREATE DATABASE` on the local
//! Postgres) and drops it afterwards, even when the test fails. If Postgres cannot be reached,
//! the Postgres cases fail when `CI` is set and are skipped, loudly, otherwise.

use sea_orm::{ConnectionTrait, Database, DatabaseConnection};
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tessera_core::StoreError;
use tessera_store::SqlStore;

const DATABASE_PREFIX: &str = "tessera_store";

#[derive(Clone, Copy, Debug)]
enum Backend {
    SqliteMemory,
    SqliteFile,
    Postgres,
}

/// A freshly migrated database of one backend, and what it takes to remove it.
struct TestDb {
    store: Arc<SqlStore>,
    /// Where a second node would connect.
    url: String,
    teardown: Teardown,
}

enum Teardown {
    Nothing,
    RemoveFile(PathBuf),
    /// Dropped (`WITH (FORCE)`) when this value is.
    DropDatabase(tessera_testkit::PgDatabase),
}

fn random_hex() -> String {
    tessera_testkit::unique()
}

/// A connection to the server's maintenance database, for what a test does behind the store.
async fn admin_connection() -> DatabaseConnection {
    Database::connect(format!("{}/postgres", tessera_testkit::postgres_server())).await.unwrap()
}

impl TestDb {
    /// `None` when Postgres is unreachable outside CI: the caller skips the test.
    async fn create(backend: Backend) -> Option<TestDb> {
        let (url, teardown) = match backend {
            Backend::SqliteMemory => ("sqlite::memory:".to_owned(), Teardown::Nothing),
            Backend::SqliteFile => {
                let path = std::env::temp_dir().join(format!("{DATABASE_PREFIX}_{}.db", random_hex()));
                let url = format!("sqlite://{}?mode=rwc", path.display());
                (url, Teardown::RemoveFile(path))
            }
            Backend::Postgres => match tessera_testkit::PgDatabase::create(DATABASE_PREFIX).await {
                Ok(db) => (db.url(), Teardown::DropDatabase(db)),
                Err(e) => {
                    tessera_testkit::skip_or_fail(format!("{e}; the Postgres contract cases did not run"));
                    return None;
                }
            },
        };
        let store = SqlStore::connect(&url).await.unwrap();
        store.migrate().await.unwrap();
        Some(TestDb { store: Arc::new(store), url, teardown })
    }

    async fn destroy(self) {
        let pool = (*self.store).clone();
        drop(self.store);
        let _ = pool.close().await;
        match self.teardown {
            Teardown::Nothing => {}
            Teardown::RemoveFile(path) => {
                for suffix in ["", "-wal", "-shm"] {
                    let mut file = path.clone().into_os_string();
                    file.push(suffix);
                    let _ = std::fs::remove_file(file);
                }
            }
            Teardown::DropDatabase(db) => drop(db),
        }
    }
}

/// Runs one contract case on a fresh database of `backend` and removes the database even if
/// the case panics.
async fn run<F, Fut>(backend: Backend, case: F)
where
    F: FnOnce(Arc<SqlStore>, Backend) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let Some(db) = TestDb::create(backend).await else {
        return;
    };
    let outcome = tokio::spawn(case(db.store.clone(), backend)).await;
    finish(db, outcome).await;
}

/// Removes the database, then re-raises the case's panic, if any.
async fn finish(db: TestDb, outcome: Result<(), tokio::task::JoinError>) {
    db.destroy().await;
    if let Err(e) = outcome {
        match e.try_into_panic() {
            Ok(payload) => std::panic::resume_unwind(payload),
            Err(e) => panic!("contract case did not finish: {e}"),
        }
    }
}

/// Stamps out every case as `<backend>::<case>`.
macro_rules! contract {
    ($($case:ident),+ $(,)?) => {
        contract!(@backend sqlite_memory, SqliteMemory, $($case),+);
        contract!(@backend sqlite_file, SqliteFile, $($case),+);
        contract!(@backend postgres, Postgres, $($case),+);
    };
    (@backend $module:ident, $backend:ident, $($case:ident),+) => {
        mod $module {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $case() {
                    super::run(super::Backend::$backend, super::cases::$case).await;
                }
            )+
        }
    };
}

contract!(
    clients_can_be_created_read_listed_and_deleted,
    creating_a_client_with_a_taken_id_is_a_conflict,
    replacing_a_client_secret_replaces_the_stored_digest,
    users_can_be_created_and_found_by_id_and_by_username,
    creating_a_user_with_a_taken_username_or_id_is_a_conflict,
    disabling_a_user_or_setting_a_password_returns_the_updated_user,
    a_refresh_token_reads_back_exactly_as_stored,
    rotating_an_active_refresh_token_rotates_it_and_stores_the_new_one_active,
    rotating_the_same_refresh_token_twice_reports_reuse_and_its_family,
    revoking_a_family_revokes_every_row_and_returns_every_access_jti,
    rotating_a_token_of_a_revoked_family_or_an_unknown_token_is_unknown,
    rotating_the_same_refresh_token_concurrently_lets_exactly_one_win,
    a_live_refresh_token_rotates_in_one_step_and_returns_itself_with_its_user,
    a_refresh_token_that_is_not_live_is_left_alone_by_the_one_step_rotation,
    a_one_step_rotation_that_fails_part_way_changes_nothing_and_the_store_goes_on,
    many_tokens_rotated_at_once_each_get_their_own_answer,
    new_families_stored_beside_rotations_at_once_are_stored_as_given_and_a_clash_fails_alone,
    a_family_starts_only_for_a_live_user_and_answers_with_the_user_as_stored,
    families_started_at_once_beside_rotations_each_get_their_own_user,
    starts_sharing_a_digest_in_one_batch_each_get_their_own_answer,
    rotating_a_live_token_concurrently_lets_exactly_one_win,
    granting_scopes_adds_to_what_was_granted_and_never_narrows,
    concurrent_consent_grants_keep_every_scope,
    keys_list_oldest_first_and_retiring_spares_only_the_kept_key,
    audit_events_come_back_newest_first,
    the_revocation_log_appends_once_reads_in_order_and_forgets_what_expired,
    a_deleted_client_id_stays_retired,
    the_watch_permission_is_stored_and_changed_alone,
    the_log_knows_its_last_position_and_keeps_each_receivers_acks,
    migrating_twice_is_a_no_op_that_keeps_the_data,
    a_live_database_answers_ping,
);

#[tokio::test]
async fn connecting_to_a_closed_port_fails_quickly_as_unavailable_without_the_password() {
    let started = Instant::now();
    let err = SqlStore::connect("postgres://postgres:hunter2@127.0.0.1:1/x").await.unwrap_err();
    let elapsed = started.elapsed();
    assert!(matches!(err, StoreError::Unavailable { store: "database", .. }), "expected Unavailable, got {err:?}");
    assert!(elapsed < Duration::from_secs(10), "took {elapsed:?}");
    assert!(!format!("{err} {err:?}").contains("hunter2"));
}

#[tokio::test]
async fn an_unsupported_url_is_rejected_without_echoing_it() {
    let err = SqlStore::connect("mysql://root:hunter2@127.0.0.1/x").await.unwrap_err();
    assert!(matches!(err, StoreError::Other(_)), "got {err:?}");
    assert!(!format!("{err} {err:?}").contains("hunter2"));
}

#[tokio::test]
async fn a_store_debug_shows_nothing_of_its_url() {
    let store = SqlStore::connect("sqlite::memory:").await.unwrap();
    let shown = format!("{store:?}");
    assert!(shown.contains("SqlStore"), "{shown}");
    assert!(!shown.contains("memory"), "{shown}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_store_reconnects_after_its_connections_are_killed() {
    use tessera_core::ports::{ClientStore, Durable};
    let Some(db) = TestDb::create(Backend::Postgres).await else {
        return;
    };
    let Teardown::DropDatabase(pg) = &db.teardown else {
        unreachable!("a Postgres test database is dropped at teardown");
    };
    let (store, admin, name) = (db.store.clone(), admin_connection().await, pg.name().to_owned());
    let outcome = tokio::spawn(async move {
        store.create_client(&cases::client("app")).await.unwrap();
        // The refresh-token writer's own connection is opened too.
        assert_eq!(cases::rotate_unknown(&store, 1).await.unwrap(), None);
        // What a Postgres restart does to the pool: every connection dies under it.
        let killed = admin
            .query_all(sea_orm::Statement::from_string(
                admin.get_database_backend(),
                format!(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                     WHERE datname = '{name}' AND pid <> pg_backend_pid()"
                ),
            ))
            .await
            .unwrap();
        assert!(!killed.is_empty(), "the pool had a connection to kill");
        // A restart takes longer than this; by then every pooled connection has been idle
        // long enough to be pinged, and a dead one replaced, before it is handed out.
        tokio::time::sleep(tessera_store::PING_IF_IDLE_FOR + std::time::Duration::from_millis(100)).await;
        store.ping().await.unwrap();
        assert_eq!(store.list_clients().await.unwrap(), vec![cases::client("app")]);
        assert_eq!(cases::rotate_unknown(&store, 2).await.unwrap(), None, "the refresh writer reconnected");
    })
    .await;
    finish(db, outcome).await;
}

#[tokio::test]
async fn a_sqlite_file_database_runs_in_wal_mode() {
    let path = std::env::temp_dir().join(format!("{DATABASE_PREFIX}_{}.db", random_hex()));
    let store = SqlStore::connect(&format!("sqlite://{}?mode=rwc", path.display())).await.unwrap();
    store.migrate().await.unwrap();
    let wal = PathBuf::from(format!("{}-wal", path.display()));
    let in_wal_mode = wal.exists();
    let _ = store.close().await;
    for file in [path.clone(), wal, PathBuf::from(format!("{}-shm", path.display()))] {
        let _ = std::fs::remove_file(file);
    }
    assert!(in_wal_mode, "no -wal file next to {}", path.display());
}

#[tokio::test]
async fn opening_sqlite_in_a_missing_directory_is_unavailable() {
    let err = SqlStore::connect("sqlite:///nonexistent-tessera-dir/x.db?mode=rwc").await.unwrap_err();
    assert!(matches!(err, StoreError::Unavailable { store: "database", .. }), "got {err:?}");
}

mod cases {
    use super::Backend;
    use std::collections::BTreeSet;
    use std::sync::Arc;
    use tessera_core::model::{Client, GrantType, User};
    use tessera_core::ports::Succession;
    use tessera_core::ports::{
        AuditEvent, AuditKind, AuditLog, ClientStore, ConsentStore, Durable, KeyStore, RefreshRecord, RefreshState,
        RefreshStore, Rotation, StoredKey, Successor, UserStore,
    };
    use tessera_core::StoreError;
    use tessera_crypto::succession::SuccessorSalt;
    use tessera_crypto::Digest;
    use tessera_store::SqlStore;

    pub fn client(id: &str) -> Client {
        Client {
            id: id.to_owned(),
            name: format!("client {id}"),
            secret_digest: Some(Digest::of(format!("secret of {id}").as_bytes())),
            confidential: true,
            grant_types: vec![GrantType::AuthorizationCode, GrantType::RefreshToken, GrantType::DeviceCode],
            redirect_uris: vec!["https://app.example/cb".to_owned(), "http://127.0.0.1:8080/cb?x=1".to_owned()],
            scopes: vec!["openid".to_owned(), "profile".to_owned()],
            access_token_ttl: Some(300),
            refresh_token_ttl: None,
            skip_consent: false,
            allow_implicit: true,
            allow_plain_pkce: false,
            created_at: 1_700_000_000,
            watch_revocations: true,
        }
    }

    fn public_client(id: &str) -> Client {
        Client {
            secret_digest: None,
            confidential: false,
            grant_types: vec![],
            redirect_uris: vec![],
            scopes: vec![],
            access_token_ttl: None,
            refresh_token_ttl: Some(86_400),
            skip_consent: true,
            allow_implicit: false,
            allow_plain_pkce: true,
            watch_revocations: false,
            ..client(id)
        }
    }

    fn user(id: &str, username: &str) -> User {
        User {
            id: id.to_owned(),
            username: username.to_owned(),
            password_hash: format!("$argon2id$v=19$m=19456,t=2,p=1${username}"),
            disabled: false,
            email: Some(format!("{username}@example.com")),
            name: None,
            created_at: 1_700_000_000,
        }
    }

    fn refresh(token: &str, family: &str, issued_at: i64) -> RefreshRecord {
        RefreshRecord {
            digest: Digest::of(token.as_bytes()),
            family_id: family.to_owned(),
            client_id: "app".to_owned(),
            user_id: Some("u1".to_owned()),
            scope: "openid profile".to_owned(),
            issued_at,
            expires_at: issued_at + 86_400,
            auth_time: Some(issued_at - 10),
            access_jti: format!("jti-{token}"),
            access_exp: issued_at + 300,
            state: RefreshState::Active,
            succession: None,
        }
    }

    fn succession(at: i64) -> Succession {
        Succession { at, salt: SuccessorSalt::generate() }
    }

    /// A rotation of a token never stored: a batch written that changes nothing.
    pub async fn rotate_unknown(
        s: &SqlStore,
        n: u32,
    ) -> tessera_core::StoreResult<Option<(RefreshRecord, Option<User>)>> {
        let next = Successor {
            digest: Digest::of(format!("successor {n}").as_bytes()),
            issued_at: 1_700_000_000,
            expires_at: 1_700_086_400,
            access_jti: format!("jti-successor-{n}"),
            access_exp: 1_700_000_300,
        };
        s.rotate_live_refresh(
            Digest::of(format!("never stored {n}").as_bytes()),
            "app",
            &succession(1_700_000_000),
            &next,
        )
        .await
    }

    fn key(kid: &str, created_at: i64) -> StoredKey {
        StoredKey {
            kid: kid.to_owned(),
            alg: "ES256".to_owned(),
            private_der: vec![0x30, 0x81, 0x87, 0x00, 0xff, kid.len() as u8],
            created_at,
            retired_at: None,
        }
    }

    fn event(at: i64, kind: AuditKind) -> AuditEvent {
        AuditEvent {
            at,
            kind,
            client_id: Some("app".to_owned()),
            user_id: None,
            detail: format!("{} at {at}", kind.as_str()),
        }
    }

    pub async fn clients_can_be_created_read_listed_and_deleted(s: Arc<SqlStore>, _: Backend) {
        let (b, a) = (client("b-client"), public_client("a-client"));
        s.create_client(&b).await.unwrap();
        s.create_client(&a).await.unwrap();

        assert_eq!(s.get_client("b-client").await.unwrap(), Some(b.clone()));
        assert_eq!(s.get_client("a-client").await.unwrap(), Some(a.clone()));
        assert_eq!(s.get_client("nobody").await.unwrap(), None);
        assert_eq!(s.list_clients().await.unwrap(), vec![a, b.clone()], "ordered by id");

        assert!(s.delete_client("a-client").await.unwrap());
        assert!(!s.delete_client("a-client").await.unwrap(), "second delete");
        assert_eq!(s.get_client("a-client").await.unwrap(), None);
        assert_eq!(s.list_clients().await.unwrap(), vec![b]);
    }

    pub async fn creating_a_client_with_a_taken_id_is_a_conflict(s: Arc<SqlStore>, _: Backend) {
        s.create_client(&client("app")).await.unwrap();
        let err = s.create_client(&public_client("app")).await.unwrap_err();
        assert!(matches!(err, StoreError::Conflict(_)), "got {err:?}");
        assert_eq!(s.get_client("app").await.unwrap(), Some(client("app")));
    }

    pub async fn replacing_a_client_secret_replaces_the_stored_digest(s: Arc<SqlStore>, _: Backend) {
        s.create_client(&client("app")).await.unwrap();
        let new = Digest::of(b"the new secret");
        assert!(s.set_client_secret("app", new).await.unwrap());
        let stored = s.get_client("app").await.unwrap().unwrap();
        assert_eq!(stored.secret_digest, Some(new));
        assert_eq!(stored, Client { secret_digest: Some(new), ..client("app") });
        assert!(!s.set_client_secret("nobody", new).await.unwrap());
    }

    pub async fn users_can_be_created_and_found_by_id_and_by_username(s: Arc<SqlStore>, _: Backend) {
        let (bob, alice) = (user("u2", "bob"), user("u1", "alice"));
        s.create_user(&bob).await.unwrap();
        s.create_user(&alice).await.unwrap();

        assert_eq!(s.get_user("u2").await.unwrap(), Some(bob.clone()));
        assert_eq!(s.find_user_by_username("alice").await.unwrap(), Some(alice.clone()));
        assert!(s.find_user_by_username("ALICE").await.unwrap().is_none(), "exact match");
        assert!(s.get_user("u3").await.unwrap().is_none());
        let names: Vec<String> = s.list_users().await.unwrap().into_iter().map(|u| u.username).collect();
        assert_eq!(names, ["alice", "bob"], "ordered by username");
    }

    pub async fn creating_a_user_with_a_taken_username_or_id_is_a_conflict(s: Arc<SqlStore>, _: Backend) {
        s.create_user(&user("u1", "alice")).await.unwrap();
        for (description, taken) in
            [("same username, new id", user("u2", "alice")), ("same id, new username", user("u1", "alicia"))]
        {
            let err = s.create_user(&taken).await.unwrap_err();
            assert!(matches!(err, StoreError::Conflict(_)), "{description}: got {err:?}");
        }
        assert_eq!(s.list_users().await.unwrap().len(), 1);
    }

    pub async fn disabling_a_user_or_setting_a_password_returns_the_updated_user(s: Arc<SqlStore>, _: Backend) {
        s.create_user(&user("u1", "alice")).await.unwrap();

        let disabled = s.set_user_disabled("alice", true).await.unwrap().unwrap();
        assert!(disabled.disabled);
        assert!(s.get_user("u1").await.unwrap().unwrap().disabled);
        let enabled = s.set_user_disabled("alice", false).await.unwrap().unwrap();
        assert!(!enabled.disabled);

        let rehashed = s.set_user_password("alice", "$argon2id$new").await.unwrap().unwrap();
        assert_eq!(rehashed.password_hash, "$argon2id$new");
        assert_eq!(
            s.find_user_by_username("alice").await.unwrap(),
            Some(rehashed),
            "the returned user is what is stored"
        );

        assert!(s.set_user_disabled("nobody", true).await.unwrap().is_none());
        assert!(s.set_user_password("nobody", "x").await.unwrap().is_none());
    }

    pub async fn a_refresh_token_reads_back_exactly_as_stored(s: Arc<SqlStore>, _: Backend) {
        let with_user = refresh("t1", "f1", 1_000);
        let without_user = RefreshRecord { user_id: None, auth_time: None, ..refresh("t2", "f2", 2_000) };
        let rotated = RefreshRecord {
            state: RefreshState::Rotated,
            succession: Some(succession(3_500)),
            ..refresh("t3", "f3", 3_000)
        };
        s.insert_refresh(&with_user).await.unwrap();
        s.insert_refresh(&without_user).await.unwrap();
        s.insert_refresh(&rotated).await.unwrap();
        assert_eq!(s.get_refresh(with_user.digest).await.unwrap(), Some(with_user.clone()));
        assert_eq!(s.get_refresh(without_user.digest).await.unwrap(), Some(without_user.clone()));
        assert_eq!(s.get_refresh(rotated.digest).await.unwrap(), Some(rotated), "the succession and its salt");
        assert_eq!(s.get_refresh(Digest::of(b"nope")).await.unwrap(), None);

        // Read with its user in one query: the user once it exists, none without one.
        assert_eq!(s.get_refresh_and_user(with_user.digest).await.unwrap(), Some((with_user.clone(), None)));
        let u1 = user("u1", "alice");
        s.create_user(&u1).await.unwrap();
        assert_eq!(s.get_refresh_and_user(with_user.digest).await.unwrap(), Some((with_user.clone(), Some(u1))));
        assert_eq!(s.get_refresh_and_user(without_user.digest).await.unwrap(), Some((without_user, None)));
        assert_eq!(s.get_refresh_and_user(Digest::of(b"nope")).await.unwrap(), None);

        let err = s.insert_refresh(&with_user).await.unwrap_err();
        assert!(matches!(err, StoreError::Conflict(_)), "same digest twice: {err:?}");
    }

    pub async fn rotating_an_active_refresh_token_rotates_it_and_stores_the_new_one_active(
        s: Arc<SqlStore>,
        _: Backend,
    ) {
        let old = refresh("t1", "f1", 1_000);
        let new = refresh("t2", "f1", 2_000);
        s.insert_refresh(&old).await.unwrap();

        let rotation = succession(1_500);
        assert_eq!(s.rotate_refresh(old.digest, &rotation, &new).await.unwrap(), Rotation::Rotated);

        let old_now = s.get_refresh(old.digest).await.unwrap().unwrap();
        assert_eq!(
            old_now,
            RefreshRecord { state: RefreshState::Rotated, succession: Some(rotation), ..old },
            "the old token records when it was rotated and its successor's salt"
        );
        assert_eq!(s.get_refresh(new.digest).await.unwrap(), Some(new));
    }

    pub async fn rotating_the_same_refresh_token_twice_reports_reuse_and_its_family(s: Arc<SqlStore>, _: Backend) {
        let old = refresh("t1", "family-7", 1_000);
        s.insert_refresh(&old).await.unwrap();
        let first = refresh("t2", "family-7", 2_000);
        let second = refresh("t3", "family-7", 3_000);

        let (first_rotation, second_rotation) = (succession(1_500), succession(2_500));
        assert_eq!(s.rotate_refresh(old.digest, &first_rotation, &first).await.unwrap(), Rotation::Rotated);
        assert_eq!(
            s.rotate_refresh(old.digest, &second_rotation, &second).await.unwrap(),
            Rotation::Reused { family_id: "family-7".to_owned() }
        );
        assert_eq!(s.get_refresh(second.digest).await.unwrap(), None, "nothing stored on reuse");
        assert_eq!(
            s.get_refresh(old.digest).await.unwrap().and_then(|r| r.succession),
            Some(first_rotation),
            "reuse leaves the first rotation's succession"
        );
        assert_eq!(
            s.get_refresh(first.digest).await.unwrap().map(|r| r.state),
            Some(RefreshState::Active),
            "reuse alone revokes nothing; the caller does"
        );
    }

    pub async fn revoking_a_family_revokes_every_row_and_returns_every_access_jti(s: Arc<SqlStore>, _: Backend) {
        let t1 = refresh("t1", "f1", 1_000);
        let t2 = refresh("t2", "f1", 2_000);
        let t3 = refresh("t3", "f1", 3_000);
        let other = refresh("o1", "f2", 1_500);
        s.insert_refresh(&t1).await.unwrap();
        s.insert_refresh(&other).await.unwrap();
        assert_eq!(s.rotate_refresh(t1.digest, &succession(2_000), &t2).await.unwrap(), Rotation::Rotated);
        assert_eq!(s.rotate_refresh(t2.digest, &succession(3_000), &t3).await.unwrap(), Rotation::Rotated);

        let mut revoked = s.revoke_family("f1").await.unwrap();
        revoked.sort();
        let mut expected: Vec<(String, i64)> =
            [&t1, &t2, &t3].iter().map(|r| (r.access_jti.clone(), r.access_exp)).collect();
        expected.sort();
        assert_eq!(revoked, expected);

        for r in [&t1, &t2, &t3] {
            let state = s.get_refresh(r.digest).await.unwrap().map(|r| r.state);
            assert_eq!(state, Some(RefreshState::Revoked), "{}", r.access_jti);
        }
        assert_eq!(
            s.get_refresh(other.digest).await.unwrap().map(|r| r.state),
            Some(RefreshState::Active),
            "other families are untouched"
        );

        assert_eq!(s.revoke_family("f1").await.unwrap().len(), 3, "revoking again is fine");
        assert_eq!(s.revoke_family("no-such-family").await.unwrap(), vec![]);
    }

    pub async fn rotating_a_token_of_a_revoked_family_or_an_unknown_token_is_unknown(s: Arc<SqlStore>, _: Backend) {
        let active = refresh("t1", "f1", 1_000);
        s.insert_refresh(&active).await.unwrap();
        s.revoke_family("f1").await.unwrap();
        let new = refresh("t2", "f1", 2_000);

        let rotation = succession(2_000);
        assert_eq!(s.rotate_refresh(active.digest, &rotation, &new).await.unwrap(), Rotation::Unknown);
        assert_eq!(s.rotate_refresh(Digest::of(b"never issued"), &rotation, &new).await.unwrap(), Rotation::Unknown);
        assert_eq!(s.get_refresh(new.digest).await.unwrap(), None, "nothing stored");
        assert_eq!(
            s.get_refresh(active.digest).await.unwrap().and_then(|r| r.succession),
            None,
            "a revoked token records no succession"
        );
    }

    pub async fn rotating_the_same_refresh_token_concurrently_lets_exactly_one_win(s: Arc<SqlStore>, backend: Backend) {
        let old = refresh("t0", "f1", 1_000);
        s.insert_refresh(&old).await.unwrap();

        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..16 {
            let s = s.clone();
            tasks.spawn(async move {
                let new = refresh(&format!("t{}", i + 1), "f1", 2_000);
                let rotation = succession(2_000 + i as i64);
                let outcome = s.rotate_refresh(old.digest, &rotation, &new).await.unwrap();
                (new.digest, rotation, outcome)
            });
        }
        let mut winners = vec![];
        let mut reused = 0;
        while let Some(joined) = tasks.join_next().await {
            match joined.unwrap() {
                (digest, rotation, Rotation::Rotated) => winners.push((digest, rotation)),
                (_, _, Rotation::Reused { family_id }) => {
                    assert_eq!(family_id, "f1");
                    reused += 1;
                }
                (_, _, Rotation::Unknown) => panic!("{backend:?}: a loser saw Unknown"),
            }
        }
        assert_eq!(winners.len(), 1, "{backend:?}: exactly one rotation wins");
        assert_eq!(reused, 15, "{backend:?}: every loser sees reuse");

        let mut stored = vec![];
        for i in 1..=16 {
            let digest = Digest::of(format!("t{i}").as_bytes());
            if s.get_refresh(digest).await.unwrap().is_some() {
                stored.push(digest);
            }
        }
        let (winner, winning_rotation) = winners.pop().unwrap();
        assert_eq!(stored, [winner], "only the winner's token is stored");
        assert_eq!(
            s.get_refresh(old.digest).await.unwrap().and_then(|r| r.succession),
            Some(winning_rotation),
            "{backend:?}: the old token records the winner's succession"
        );
        assert_eq!(s.revoke_family("f1").await.unwrap().len(), 2, "old and winner");
    }

    fn successor_of(token: &str, at: i64) -> Successor {
        Successor {
            digest: Digest::of(token.as_bytes()),
            issued_at: at,
            expires_at: at + 86_400,
            access_jti: format!("jti-{token}"),
            access_exp: at + 300,
        }
    }

    pub async fn a_live_refresh_token_rotates_in_one_step_and_returns_itself_with_its_user(
        s: Arc<SqlStore>,
        _: Backend,
    ) {
        let alice = user("u1", "alice");
        s.create_user(&alice).await.unwrap();
        let old = refresh("t1", "f1", 1_000);
        let userless = RefreshRecord { user_id: None, ..refresh("t9", "f9", 1_000) };
        s.insert_refresh(&old).await.unwrap();
        s.insert_refresh(&userless).await.unwrap();

        let rotation = succession(1_500);
        let next = successor_of("t2", 1_500);
        let found = s.rotate_live_refresh(old.digest, "app", &rotation, &next).await.unwrap();
        assert_eq!(found, Some((old.clone(), Some(alice))), "the token as it was, and its user");
        assert_eq!(
            s.get_refresh(old.digest).await.unwrap(),
            Some(RefreshRecord { state: RefreshState::Rotated, succession: Some(rotation), ..old.clone() }),
            "rotated, with its succession"
        );
        let stored = RefreshRecord {
            digest: next.digest,
            issued_at: 1_500,
            expires_at: 1_500 + 86_400,
            access_jti: "jti-t2".into(),
            access_exp: 1_800,
            ..old.clone()
        };
        assert_eq!(s.get_refresh(next.digest).await.unwrap(), Some(stored), "family, user, scope, auth_time copied");

        let (rotation, next) = (succession(1_500), successor_of("t10", 1_500));
        let found = s.rotate_live_refresh(userless.digest, "app", &rotation, &next).await.unwrap();
        assert_eq!(found, Some((userless, None)), "a token with no user");
    }

    pub async fn a_refresh_token_that_is_not_live_is_left_alone_by_the_one_step_rotation(s: Arc<SqlStore>, _: Backend) {
        s.create_user(&user("u1", "alice")).await.unwrap();
        s.create_user(&User { disabled: true, ..user("u2", "bob") }).await.unwrap();
        let live = refresh("live", "f1", 1_000);
        let disabled = RefreshRecord { user_id: Some("u2".into()), ..refresh("disabled", "f2", 1_000) };
        let gone = RefreshRecord { user_id: Some("u3".into()), ..refresh("gone", "f3", 1_000) };
        let revoked = RefreshRecord { state: RefreshState::Revoked, ..refresh("revoked", "f4", 1_000) };
        for r in [&live, &disabled, &gone, &revoked] {
            s.insert_refresh(r).await.unwrap();
        }
        let at = |t: i64| (succession(t), successor_of(&format!("next-{t}"), t));
        let cases = [
            (live.digest, "other-app", 1_500, "another client's"),
            (live.digest, "app", 1_000 + 86_400, "expired"),
            (disabled.digest, "app", 1_500, "its user disabled"),
            (gone.digest, "app", 1_500, "its user gone"),
            (revoked.digest, "app", 1_500, "revoked"),
            (Digest::of(b"unknown"), "app", 1_500, "unknown"),
        ];
        for (digest, client, t, what) in cases {
            let (rotation, next) = at(t);
            assert_eq!(s.rotate_live_refresh(digest, client, &rotation, &next).await.unwrap(), None, "{what}");
            assert_eq!(s.get_refresh(next.digest).await.unwrap(), None, "{what}: nothing stored");
        }
        assert_eq!(s.get_refresh(live.digest).await.unwrap(), Some(live.clone()), "left as it was");
        assert_eq!(s.get_refresh(disabled.digest).await.unwrap(), Some(disabled), "left as it was");

        let (rotation, next) = at(1_500);
        assert!(s.rotate_live_refresh(live.digest, "app", &rotation, &next).await.unwrap().is_some());
        let (rotation, next) = at(1_600);
        assert_eq!(s.rotate_live_refresh(live.digest, "app", &rotation, &next).await.unwrap(), None, "rotated");
        assert_eq!(s.get_refresh(next.digest).await.unwrap(), None, "rotated: nothing stored");
    }

    pub async fn a_one_step_rotation_that_fails_part_way_changes_nothing_and_the_store_goes_on(
        s: Arc<SqlStore>,
        backend: Backend,
    ) {
        s.create_user(&user("u1", "alice")).await.unwrap();
        let old = refresh("t1", "f1", 1_000);
        let taken = refresh("taken", "f2", 1_000);
        s.insert_refresh(&old).await.unwrap();
        s.insert_refresh(&taken).await.unwrap();
        // The successor's digest is already stored: the rotation's write of the old row has
        // happened when its insert fails.
        let clash = Successor { digest: taken.digest, ..successor_of("t2", 1_500) };
        let failed = s.rotate_live_refresh(old.digest, "app", &succession(1_500), &clash).await;
        assert!(matches!(failed, Err(StoreError::Conflict(_))), "{backend:?}: {failed:?}");
        assert_eq!(s.get_refresh(old.digest).await.unwrap(), Some(old.clone()), "{backend:?}: rolled back");
        assert_eq!(s.get_refresh(taken.digest).await.unwrap(), Some(taken), "{backend:?}: untouched");
        // No transaction was left open on a connection: the next writes commit, and are seen.
        let next = successor_of("t3", 1_600);
        assert!(s.rotate_live_refresh(old.digest, "app", &succession(1_600), &next).await.unwrap().is_some());
        s.insert_refresh(&refresh("t4", "f4", 1_000)).await.unwrap();
        assert!(s.get_refresh(next.digest).await.unwrap().is_some(), "{backend:?}");
        assert!(s.get_refresh(Digest::of(b"t4")).await.unwrap().is_some(), "{backend:?}");
    }

    pub async fn many_tokens_rotated_at_once_each_get_their_own_answer(s: Arc<SqlStore>, backend: Backend) {
        s.create_user(&user("u1", "alice")).await.unwrap();
        s.create_user(&User { disabled: true, ..user("u2", "bob") }).await.unwrap();
        // Every third token's user is disabled: those are not live, the others are.
        let tokens: Vec<RefreshRecord> = (0..60)
            .map(|i| {
                let owner = if i % 3 == 0 { "u2" } else { "u1" };
                RefreshRecord { user_id: Some(owner.into()), ..refresh(&format!("m{i}"), &format!("fam{i}"), 1_000) }
            })
            .collect();
        for t in &tokens {
            s.insert_refresh(t).await.unwrap();
        }
        let mut tasks = tokio::task::JoinSet::new();
        for (i, t) in tokens.iter().cloned().enumerate() {
            let s = s.clone();
            tasks.spawn(async move {
                let next = successor_of(&format!("m{i}-next"), 1_500);
                let found = s.rotate_live_refresh(t.digest, "app", &succession(1_500), &next).await.unwrap();
                (i, t, found, next.digest)
            });
        }
        while let Some(joined) = tasks.join_next().await {
            let (i, t, found, next) = joined.unwrap();
            let stored = s.get_refresh(next).await.unwrap();
            if i % 3 == 0 {
                assert_eq!(found, None, "{backend:?}: token {i}'s user is disabled");
                assert_eq!(stored, None, "{backend:?}: nothing stored for token {i}");
            } else {
                let (old, owner) = found.unwrap_or_else(|| panic!("{backend:?}: token {i} is live"));
                assert_eq!(old, t, "{backend:?}: token {i} gets itself back");
                assert_eq!(owner.map(|u| u.id).as_deref(), Some("u1"));
                assert_eq!(stored.map(|r| r.family_id), Some(format!("fam{i}")), "{backend:?}: its own family");
            }
        }
    }

    pub async fn new_families_stored_beside_rotations_at_once_are_stored_as_given_and_a_clash_fails_alone(
        s: Arc<SqlStore>,
        backend: Backend,
    ) {
        s.create_user(&user("u1", "alice")).await.unwrap();
        let live: Vec<RefreshRecord> = (0..20).map(|i| refresh(&format!("r{i}"), &format!("rf{i}"), 1_000)).collect();
        for t in &live {
            s.insert_refresh(t).await.unwrap();
        }
        // Rows stored as given while rotations are batched: one of them userless, one already
        // rotated (with its succession), and one whose digest is already stored.
        let mut fresh: Vec<RefreshRecord> =
            (0..20).map(|i| refresh(&format!("n{i}"), &format!("nf{i}"), 1_200 + i)).collect();
        fresh[3].user_id = None;
        fresh[4] =
            RefreshRecord { state: RefreshState::Rotated, succession: Some(succession(1_300)), ..fresh[4].clone() };
        let clash = RefreshRecord { family_id: "clash".into(), ..live[0].clone() };
        let mut tasks = tokio::task::JoinSet::new();
        for record in fresh.iter().cloned().chain([clash]) {
            let s = s.clone();
            tasks.spawn(async move { s.insert_refresh(&record).await });
        }
        for (i, t) in live.iter().cloned().enumerate() {
            let s = s.clone();
            tasks.spawn(async move {
                let next = successor_of(&format!("r{i}-next"), 1_500);
                let found = s.rotate_live_refresh(t.digest, "app", &succession(1_500), &next).await.unwrap();
                assert_eq!(found.map(|(old, _)| old), Some(t), "{backend:?}: rotation {i}");
                Ok(())
            });
        }
        let mut conflicts = 0;
        while let Some(joined) = tasks.join_next().await {
            match joined.unwrap() {
                Ok(()) => {}
                Err(StoreError::Conflict(_)) => conflicts += 1,
                Err(e) => panic!("{backend:?}: {e}"),
            }
        }
        assert_eq!(conflicts, 1, "{backend:?}: only the clash fails");
        for record in &fresh {
            assert_eq!(s.get_refresh(record.digest).await.unwrap().as_ref(), Some(record), "{backend:?}: as given");
        }
        assert_eq!(s.get_refresh(live[0].digest).await.unwrap().map(|r| r.family_id).as_deref(), Some("rf0"));
    }

    pub async fn a_family_starts_only_for_a_live_user_and_answers_with_the_user_as_stored(
        s: Arc<SqlStore>,
        backend: Backend,
    ) {
        let alice = user("u1", "alice");
        s.create_user(&alice).await.unwrap();
        s.create_user(&user("u2", "bob")).await.unwrap();
        s.set_user_disabled("bob", true).await.unwrap();

        let started = refresh("s1", "sf1", 1_000);
        assert_eq!(s.start_family(&started).await.unwrap(), Some(alice.clone()), "{backend:?}: the user as stored");
        assert_eq!(s.get_refresh(started.digest).await.unwrap(), Some(started.clone()), "{backend:?}: stored as given");

        let refused = [
            ("a disabled user", RefreshRecord { user_id: Some("u2".into()), ..refresh("s2", "sf2", 1_000) }),
            ("an unknown user", RefreshRecord { user_id: Some("u9".into()), ..refresh("s3", "sf3", 1_000) }),
            ("no user", RefreshRecord { user_id: None, ..refresh("s4", "sf4", 1_000) }),
        ];
        for (what, record) in &refused {
            assert_eq!(s.start_family(record).await.unwrap(), None, "{backend:?}: {what}");
            assert_eq!(s.get_refresh(record.digest).await.unwrap(), None, "{backend:?}: nothing stored for {what}");
        }

        // Enabled again, the user gets a family; its digest taken, a start is a conflict.
        s.set_user_disabled("bob", false).await.unwrap();
        assert_eq!(s.start_family(&refused[0].1).await.unwrap().map(|u| u.username).as_deref(), Some("bob"));
        let err = s.start_family(&started).await.unwrap_err();
        assert!(matches!(err, StoreError::Conflict(_)), "{backend:?}: same digest twice: {err:?}");
    }

    /// Starts, plain inserts and rotations written in the same batches: each start answers
    /// with its own user, or `None` for the disabled one, and stores nothing then.
    pub async fn families_started_at_once_beside_rotations_each_get_their_own_user(s: Arc<SqlStore>, backend: Backend) {
        for i in 0..6 {
            s.create_user(&user(&format!("u{i}"), &format!("user{i}"))).await.unwrap();
        }
        s.set_user_disabled("user5", true).await.unwrap();
        let live: Vec<RefreshRecord> = (0..10).map(|i| refresh(&format!("r{i}"), &format!("rf{i}"), 1_000)).collect();
        for t in &live {
            s.insert_refresh(t).await.unwrap();
        }
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..30 {
            let s = s.clone();
            let owner = format!("u{}", i % 6);
            tasks.spawn(async move {
                let record = RefreshRecord {
                    user_id: Some(owner.clone()),
                    ..refresh(&format!("n{i}"), &format!("nf{i}"), 1_200)
                };
                let found = s.start_family(&record).await.unwrap();
                let stored = s.get_refresh(record.digest).await.unwrap();
                if owner == "u5" {
                    assert_eq!(found, None, "{backend:?}: start {i}, a disabled user");
                    assert_eq!(stored, None, "{backend:?}: start {i} stored nothing");
                } else {
                    assert_eq!(found.map(|u| u.id), Some(owner), "{backend:?}: start {i} gets its own user");
                    assert_eq!(stored, Some(record), "{backend:?}: start {i} stored as given");
                }
            });
        }
        for i in 0..10 {
            let s = s.clone();
            let record = refresh(&format!("p{i}"), &format!("pf{i}"), 1_300);
            tasks.spawn(async move {
                s.insert_refresh(&record).await.unwrap();
            });
        }
        for (i, t) in live.iter().cloned().enumerate() {
            let s = s.clone();
            tasks.spawn(async move {
                let next = successor_of(&format!("r{i}-next"), 1_500);
                let found = s.rotate_live_refresh(t.digest, "app", &succession(1_500), &next).await.unwrap();
                assert_eq!(
                    found.map(|(old, u)| (old, u.map(|u| u.id))),
                    Some((t, Some("u1".into()))),
                    "{backend:?}: rotation {i}"
                );
            });
        }
        while let Some(joined) = tasks.join_next().await {
            joined.unwrap();
        }
    }

    /// Writes storing the same digest asked for at once (one of them bound to fail, or to find
    /// its user disabled): each caller hears about its own write, never the other's.
    pub async fn starts_sharing_a_digest_in_one_batch_each_get_their_own_answer(s: Arc<SqlStore>, backend: Backend) {
        s.create_user(&user("u1", "alice")).await.unwrap();
        s.create_user(&user("u2", "bob")).await.unwrap();
        s.set_user_disabled("bob", true).await.unwrap();
        for round in 0..10 {
            let live = refresh(&format!("same{round}"), &format!("live{round}"), 1_000);
            let for_bob =
                RefreshRecord { user_id: Some("u2".into()), family_id: format!("bob{round}"), ..live.clone() };
            let (a, b) = tokio::join!(s.start_family(&live), s.start_family(&for_bob));
            assert_eq!(a.unwrap().map(|u| u.id).as_deref(), Some("u1"), "{backend:?}: round {round}, alice's start");
            assert_eq!(b.unwrap(), None, "{backend:?}: round {round}, bob is disabled");
            let stored = s.get_refresh(live.digest).await.unwrap();
            assert_eq!(stored.map(|r| r.family_id), Some(format!("live{round}")), "{backend:?}: round {round}");
        }
    }

    /// Two nodes on one database (two stores, each with its own pool and batch queue): the
    /// same token rotated on both at once has exactly one winner, and distinct tokens rotated
    /// across both each get their own answer.
    pub async fn two_nodes_writing_batches_at_once_keep_one_winner_per_token(
        a: Arc<SqlStore>,
        b: Arc<SqlStore>,
        backend: Backend,
    ) {
        a.create_user(&user("u1", "alice")).await.unwrap();
        let contested = refresh("c0", "fc", 1_000);
        let others: Vec<RefreshRecord> = (0..30).map(|i| refresh(&format!("o{i}"), &format!("fo{i}"), 1_000)).collect();
        for t in std::iter::once(&contested).chain(&others) {
            a.insert_refresh(t).await.unwrap();
        }
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..16 {
            let node = if i % 2 == 0 { a.clone() } else { b.clone() };
            let old = contested.digest;
            tasks.spawn(async move {
                let next = successor_of(&format!("c{}", i + 1), 2_000);
                let won = node.rotate_live_refresh(old, "app", &succession(2_000 + i), &next).await.unwrap();
                (None, won.is_some().then_some(next.digest))
            });
        }
        for (i, t) in others.iter().cloned().enumerate() {
            let node = if i % 2 == 0 { b.clone() } else { a.clone() };
            tasks.spawn(async move {
                let next = successor_of(&format!("o{i}-next"), 2_000);
                let found = node.rotate_live_refresh(t.digest, "app", &succession(2_000), &next).await.unwrap();
                (Some((t, found.map(|(old, _)| old))), None)
            });
        }
        let mut winners = vec![];
        while let Some(joined) = tasks.join_next().await {
            match joined.unwrap() {
                (Some((t, found)), _) => assert_eq!(found, Some(t), "{backend:?}: its own token back"),
                (None, Some(winner)) => winners.push(winner),
                (None, None) => {}
            }
        }
        assert_eq!(winners.len(), 1, "{backend:?}: exactly one of two nodes' rotations of one token wins");
        for i in 1..=16 {
            let d = Digest::of(format!("c{i}").as_bytes());
            assert_eq!(
                b.get_refresh(d).await.unwrap().is_some(),
                winners.contains(&d),
                "{backend:?}: c{i}: only the winner's successor is stored"
            );
        }
    }

    pub async fn rotating_a_live_token_concurrently_lets_exactly_one_win(s: Arc<SqlStore>, backend: Backend) {
        s.create_user(&user("u1", "alice")).await.unwrap();
        let old = refresh("t0", "f1", 1_000);
        s.insert_refresh(&old).await.unwrap();
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..16 {
            let s = s.clone();
            tasks.spawn(async move {
                let (rotation, next) = (succession(2_000 + i), successor_of(&format!("t{}", i + 1), 2_000));
                let won = s.rotate_live_refresh(old.digest, "app", &rotation, &next).await.unwrap().is_some();
                (won, next.digest)
            });
        }
        let mut winners = vec![];
        while let Some(joined) = tasks.join_next().await {
            if let (true, digest) = joined.unwrap() {
                winners.push(digest);
            }
        }
        assert_eq!(winners.len(), 1, "{backend:?}: exactly one rotation wins");
        let mut stored = vec![];
        for i in 1..=16 {
            let digest = Digest::of(format!("t{i}").as_bytes());
            if s.get_refresh(digest).await.unwrap().is_some() {
                stored.push(digest);
            }
        }
        assert_eq!(stored, winners, "{backend:?}: only the winner's successor is stored");
    }

    pub async fn granting_scopes_adds_to_what_was_granted_and_never_narrows(s: Arc<SqlStore>, _: Backend) {
        let strings = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(s.granted_scopes("u1", "app").await.unwrap(), Vec::<String>::new());

        s.grant_scopes("u1", "app", &strings(&["profile", "openid", "openid"])).await.unwrap();
        assert_eq!(s.granted_scopes("u1", "app").await.unwrap(), ["openid", "profile"]);

        s.grant_scopes("u1", "app", &strings(&["email", "openid"])).await.unwrap();
        assert_eq!(s.granted_scopes("u1", "app").await.unwrap(), ["email", "openid", "profile"]);

        s.grant_scopes("u1", "app", &[]).await.unwrap();
        assert_eq!(s.granted_scopes("u1", "app").await.unwrap().len(), 3, "empty grant");

        assert!(s.granted_scopes("u1", "other-app").await.unwrap().is_empty());
        assert!(s.granted_scopes("u2", "app").await.unwrap().is_empty());
    }

    pub async fn concurrent_consent_grants_keep_every_scope(s: Arc<SqlStore>, _: Backend) {
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..8 {
            let s = s.clone();
            tasks.spawn(async move {
                let scopes = vec![format!("scope{i}"), "openid".to_owned()];
                s.grant_scopes("u1", "app", &scopes).await.unwrap();
            });
        }
        while let Some(joined) = tasks.join_next().await {
            joined.unwrap();
        }
        let granted: BTreeSet<String> = s.granted_scopes("u1", "app").await.unwrap().into_iter().collect();
        let mut expected: BTreeSet<String> = (0..8).map(|i| format!("scope{i}")).collect();
        expected.insert("openid".to_owned());
        assert_eq!(granted, expected);
    }

    pub async fn keys_list_oldest_first_and_retiring_spares_only_the_kept_key(s: Arc<SqlStore>, _: Backend) {
        let already_retired = StoredKey { retired_at: Some(150), ..key("k-old", 100) };
        for k in [key("k-new", 300), key("k-b", 200), key("k-a", 200), already_retired.clone()] {
            s.insert_key(&k).await.unwrap();
        }
        let err = s.insert_key(&key("k-a", 999)).await.unwrap_err();
        assert!(matches!(err, StoreError::Conflict(_)), "duplicate kid: {err:?}");

        let kids = |keys: &[StoredKey]| keys.iter().map(|k| k.kid.clone()).collect::<Vec<_>>();
        let listed = s.list_keys().await.unwrap();
        assert_eq!(kids(&listed), ["k-old", "k-a", "k-b", "k-new"], "created_at, then kid");
        assert_eq!(listed[0], already_retired, "keys read back as stored");
        assert_eq!(listed[1], key("k-a", 200));

        s.retire_keys_except("k-new", 400).await.unwrap();
        let retired: Vec<(String, Option<i64>)> =
            s.list_keys().await.unwrap().into_iter().map(|k| (k.kid, k.retired_at)).collect();
        assert_eq!(
            retired,
            [
                ("k-old".to_owned(), Some(150)),
                ("k-a".to_owned(), Some(400)),
                ("k-b".to_owned(), Some(400)),
                ("k-new".to_owned(), None),
            ],
            "already retired keys keep their time"
        );
    }

    pub async fn audit_events_come_back_newest_first(s: Arc<SqlStore>, _: Backend) {
        let events = [
            event(100, AuditKind::ClientCreated),
            event(300, AuditKind::RefreshReuse),
            event(200, AuditKind::Lockout),
            AuditEvent { client_id: None, user_id: Some("u1".to_owned()), ..event(300, AuditKind::CodeReplay) },
        ];
        for e in &events {
            s.record_event(e).await.unwrap();
        }
        let recent = s.recent_events(10).await.unwrap();
        assert_eq!(
            recent,
            [events[3].clone(), events[1].clone(), events[2].clone(), events[0].clone()],
            "newest first; the same second in reverse insertion order"
        );
        assert_eq!(s.recent_events(2).await.unwrap(), recent[..2]);
        assert!(s.recent_events(0).await.unwrap().is_empty());
        assert_eq!(s.recent_events(u64::MAX).await.unwrap().len(), 4);
    }

    pub async fn the_revocation_log_appends_once_reads_in_order_and_forgets_what_expired(s: Arc<SqlStore>, _: Backend) {
        use tessera_core::ports::{Revocation, RevocationLog};
        let short = Revocation::Access { jti: "j1".into(), exp: 200 };
        let long = Revocation::Access { jti: "j2".into(), exp: 5_000 };
        let user = Revocation::User { id: "u1".into(), before: 101 };
        s.append_revocations(&[short.clone(), long.clone()], 100).await.unwrap();
        s.append_revocations(&[user.clone(), short.clone()], 100).await.unwrap();
        s.append_revocations(&[], 100).await.unwrap();

        let all = s.revocations_after(0, 100, 100).await.unwrap();
        let got: Vec<_> = all.iter().map(|e| e.revocation.clone()).collect();
        assert_eq!(got, [short.clone(), long.clone(), user.clone()], "in append order, a repeat not appended");
        assert!(all.windows(2).all(|w| w[0].seq < w[1].seq));
        assert!(all.iter().all(|e| e.at == 100));

        let after_first = s.revocations_after(all[0].seq, 100, 100).await.unwrap();
        assert_eq!(after_first.len(), 2);
        assert_eq!(s.revocations_after(0, 100, 1).await.unwrap().len(), 1, "the limit holds");
        let later: Vec<_> = s.revocations_after(0, 200, 100).await.unwrap().into_iter().map(|e| e.revocation).collect();
        assert_eq!(later, [long.clone(), user.clone()], "an access token's revocation stops mattering at its exp");

        assert_eq!(s.purge_revocations(200).await.unwrap(), 1);
        let kept: Vec<_> = s.revocations_after(0, 0, 100).await.unwrap().into_iter().map(|e| e.revocation).collect();
        assert_eq!(kept, [long, user.clone()]);
        let newer = Revocation::User { id: "u1".into(), before: 300 };
        s.append_revocations(std::slice::from_ref(&newer), 299).await.unwrap();
        let last = s.revocations_after(0, 0, 100).await.unwrap().pop().unwrap();
        assert_eq!(last.revocation, newer, "a later cut-off of the same user is a new entry");
    }

    pub async fn a_deleted_client_id_stays_retired(s: Arc<SqlStore>, _: Backend) {
        use tessera_core::ports::{Revocation, RevocationLog};
        assert!(!s.client_id_retired("gone").await.unwrap());
        s.append_revocations(&[Revocation::Client { id: "rotated".into(), before: 10 }], 9).await.unwrap();
        assert!(!s.client_id_retired("rotated").await.unwrap(), "a secret rotation retires nothing");
        s.append_revocations(&[Revocation::Client { id: "gone".into(), before: Revocation::FOREVER }], 9)
            .await
            .unwrap();
        assert!(s.client_id_retired("gone").await.unwrap());
        assert_eq!(s.purge_revocations(i64::MAX - 1).await.unwrap(), 0, "cut-offs are never purged");
        assert!(s.client_id_retired("gone").await.unwrap());
    }

    pub async fn the_watch_permission_is_stored_and_changed_alone(s: Arc<SqlStore>, _: Backend) {
        s.create_client(&client("svc")).await.unwrap();
        assert!(s.set_client_watch_revocations("svc", false).await.unwrap());
        let changed = s.get_client("svc").await.unwrap().unwrap();
        assert_eq!(changed, Client { watch_revocations: false, ..client("svc") }, "nothing else changed");
        assert!(s.set_client_watch_revocations("svc", true).await.unwrap());
        assert_eq!(s.get_client("svc").await.unwrap(), Some(client("svc")));
        assert!(!s.set_client_watch_revocations("nobody", true).await.unwrap());
    }

    pub async fn the_log_knows_its_last_position_and_keeps_each_receivers_acks(s: Arc<SqlStore>, _: Backend) {
        use tessera_core::ports::{Revocation, RevocationLog, SetAcks};
        assert_eq!(s.last_revocation_seq().await.unwrap(), 0, "an empty log");
        s.append_revocations(&[Revocation::Access { jti: "a".into(), exp: 50 }], 1).await.unwrap();
        s.append_revocations(&[Revocation::User { id: "u".into(), before: 9 }], 1).await.unwrap();
        let all = s.revocations_after(0, 0, 10).await.unwrap();
        assert_eq!(s.last_revocation_seq().await.unwrap(), all.last().unwrap().seq);

        assert_eq!(s.set_acks("rs").await.unwrap(), SetAcks::default(), "a receiver never seen");
        let acks = SetAcks { through: 7, above: vec![9, 12] };
        s.save_set_acks("rs", &acks).await.unwrap();
        assert_eq!(s.set_acks("rs").await.unwrap(), acks);
        let moved = SetAcks { through: 12, above: vec![] };
        s.save_set_acks("rs", &moved).await.unwrap();
        assert_eq!(s.set_acks("rs").await.unwrap(), moved, "saved again over the first");
        assert_eq!(s.set_acks("other").await.unwrap(), SetAcks::default(), "each receiver its own");

        let epoch = s.revocation_log_epoch("first").await.unwrap();
        assert_eq!(epoch, "first", "the first candidate names the log");
        assert_eq!(s.revocation_log_epoch("second").await.unwrap(), "first", "and keeps its name");
    }

    pub async fn migrating_twice_is_a_no_op_that_keeps_the_data(s: Arc<SqlStore>, _: Backend) {
        s.create_client(&client("app")).await.unwrap();
        s.migrate().await.unwrap();
        s.migrate().await.unwrap();
        assert_eq!(s.get_client("app").await.unwrap(), Some(client("app")));
    }

    pub async fn a_live_database_answers_ping(s: Arc<SqlStore>, _: Backend) {
        let durable: &dyn Durable = &*s;
        durable.ping().await.unwrap();
    }
}

#[tokio::test]
async fn connecting_to_a_missing_database_is_a_mistake_to_fix_not_an_outage() {
    // Only reachable servers can say the database is missing.
    if TestDb::create(Backend::Postgres).await.is_none() {
        return;
    }
    let url = format!("{}/tessera_store_no_such_database_{}", tessera_testkit::postgres_server(), random_hex());
    match SqlStore::connect(&url).await {
        Err(StoreError::Other(reason)) => assert!(reason.contains("does not exist"), "{reason}"),
        other => panic!("a missing database must not look like an outage: {other:?}"),
    }
}

/// Two stores on one database, as two nodes are: on Postgres, and on a SQLite file (where the
/// second writer waits in SQLite's busy handler). An in-memory SQLite database is one node's.
async fn run_on_two_nodes(backend: Backend) {
    let Some(db) = TestDb::create(backend).await else { return };
    let second = Arc::new(SqlStore::connect(&db.url).await.unwrap());
    let outcome = tokio::spawn(cases::two_nodes_writing_batches_at_once_keep_one_winner_per_token(
        db.store.clone(),
        second.clone(),
        backend,
    ))
    .await;
    let _ = (*second).clone().close().await;
    drop(second);
    finish(db, outcome).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_nodes_on_postgres_keep_one_winner_per_token() {
    run_on_two_nodes(Backend::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_nodes_on_a_sqlite_file_keep_one_winner_per_token() {
    run_on_two_nodes(Backend::SqliteFile).await;
}
