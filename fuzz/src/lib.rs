//! What the fuzz targets share: a small executor, a fixed key set, and the clients and users
//! they register.

use std::future::Future;
use tessera_core::model::{Client, GrantType, User};
use tessera_crypto::keys::{Algorithm, SigningKey};
use tessera_crypto::Digest;

/// Runs a future to completion on this thread's current-thread runtime.
pub fn block_on<F: Future>(f: F) -> F::Output {
    thread_local! {
        static RUNTIME: tokio::runtime::Runtime =
            tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a current-thread runtime");
    }
    RUNTIME.with(|rt| rt.block_on(f))
}

/// Throwaway test keys (generated for the fuzz targets, never used anywhere else), so a
/// committed corpus token keeps its `kid` and signature from one run to the next.
pub fn fixed_keys() -> Vec<SigningKey> {
    [
        (Algorithm::Es256, &include_bytes!("../keys/es256.pk8")[..]),
        (Algorithm::EdDsa, &include_bytes!("../keys/ed25519.pk8")[..]),
        (Algorithm::Rs256, &include_bytes!("../keys/rs256.pk8")[..]),
    ]
    .into_iter()
    .map(|(alg, der)| SigningKey::from_pkcs8(alg, der).expect("a fixed fuzz key parses"))
    .collect()
}

/// A client to register.
pub fn client(id: &str, confidential: bool, grants: &[GrantType], redirect_uris: &[&str]) -> Client {
    Client {
        id: id.to_owned(),
        name: format!("{id} (fuzz)"),
        secret_digest: confidential.then(|| Digest::of(b"fuzz-client-secret")),
        confidential,
        grant_types: grants.to_vec(),
        redirect_uris: redirect_uris.iter().map(|s| s.to_string()).collect(),
        scopes: ["openid", "profile", "email", "offline_access", "read", "write"].map(String::from).to_vec(),
        access_token_ttl: None,
        refresh_token_ttl: None,
        skip_consent: false,
        allow_implicit: false,
        allow_plain_pkce: false,
        created_at: 0,
        watch_revocations: false,
    }
}

pub fn user(id: &str, username: &str, disabled: bool) -> User {
    User {
        id: id.to_owned(),
        username: username.to_owned(),
        // Never checked: the targets open login sessions directly.
        password_hash: String::new(),
        disabled,
        email: None,
        name: None,
        created_at: 0,
    }
}
