//! How the password pool's refusals reach clients. The pool itself (fixed workers, reused
//! Argon2 memory, a bounded queue) lives in `tessera_crypto::password_pool`.

use crate::error::OAuthError;
use tessera_crypto::password_pool::PoolError;

/// Seconds a refused caller is told to wait. A full queue drains in well under a second
/// (a check takes ~15 ms and the queue holds a few per worker), so the smallest
/// `Retry-After` is enough.
const RETRY_AFTER_SECS: u32 = 1;

impl From<PoolError> for OAuthError {
    fn from(e: PoolError) -> Self {
        match e {
            // DESIGN.md rule 8: past the bound the answer is temporarily_unavailable.
            PoolError::Busy => OAuthError::temporarily_unavailable(
                "the server is busy checking passwords; try again shortly",
                RETRY_AFTER_SECS,
            ),
            e @ (PoolError::Stopped | PoolError::Hash(_)) => OAuthError::server_error(e.to_string()),
        }
    }
}
