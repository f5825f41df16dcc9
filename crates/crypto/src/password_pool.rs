//! A fixed pool of password workers behind a bounded queue (DESIGN.md rule 8).
//!
//! `workers` threads each own one [`Workspace`], so at most `workers` Argon2 buffers exist
//! however many requests arrive. At most `queue` more checks wait for a worker; past that,
//! a check is refused at once with [`PoolError::Busy`] (the service answers
//! `temporarily_unavailable` with `Retry-After`) instead of growing a backlog. A worker that
//! has had nothing to do for `idle_release` gives its memory back, so an idle process
//! returns to its baseline size.
//!
//! Every password operation goes through the same pool: verifying a stored hash, the dummy
//! work spent for unknown usernames (so timing does not reveal them) and hashing new
//! passwords, so none of them can bypass the bound.

use crate::password::{default_params, HashError, Workspace};
use std::collections::VecDeque;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

/// How the pool is sized.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PoolConfig {
    /// Threads hashing at once; each holds one Argon2 buffer while busy.
    pub workers: usize,
    /// Checks that may wait for a worker; the next one is refused.
    pub queue: usize,
    /// A worker idle this long frees its buffer.
    pub idle_release: Duration,
}

impl PoolConfig {
    /// One worker per core (as far as the process may use them: cgroup quotas count), a
    /// queue of four checks per worker, memory freed after 5 s without work.
    pub fn for_this_machine() -> Self {
        let workers = std::thread::available_parallelism().map_or(1, |n| n.get());
        Self { workers, queue: 4 * workers, idle_release: Duration::from_secs(5) }
    }
}

impl Default for PoolConfig {
    fn default() -> Self {
        Self::for_this_machine()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    /// Every worker is busy and the queue is full.
    #[error("the password queue is full")]
    Busy,
    /// The workers are gone (the pool is shutting down, or a check panicked).
    #[error("the password workers stopped")]
    Stopped,
    #[error(transparent)]
    Hash(#[from] HashError),
}

type Job = Box<dyn FnOnce(&mut Workspace) + Send>;

struct State {
    jobs: VecDeque<Job>,
    running: usize,
    closed: bool,
}

struct Shared {
    state: Mutex<State>,
    ready: Condvar,
}

impl Shared {
    // A worker never panics while holding the lock (jobs run outside it), so a poisoned
    // lock still guards consistent state.
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The pool. Dropping it stops the workers once they finish what is queued.
pub struct PasswordPool {
    shared: Arc<Shared>,
    config: PoolConfig,
}

impl PasswordPool {
    /// Starts `config.workers` threads (at least one). They allocate nothing until the first
    /// check.
    pub fn start(config: PoolConfig) -> std::io::Result<Self> {
        let config = PoolConfig { workers: config.workers.max(1), ..config };
        let shared = Arc::new(Shared {
            state: Mutex::new(State { jobs: VecDeque::new(), running: 0, closed: false }),
            ready: Condvar::new(),
        });
        for i in 0..config.workers {
            let shared = Arc::clone(&shared);
            std::thread::Builder::new()
                .name(format!("tessera-password-{i}"))
                .spawn(move || work(&shared, config.idle_release))?;
        }
        Ok(Self { shared, config })
    }

    pub fn config(&self) -> PoolConfig {
        self.config
    }

    /// Checks `password` against a stored PHC string.
    pub async fn verify(&self, password: &str, phc: &str) -> Result<bool, PoolError> {
        let (password, phc) = (password.to_owned(), phc.to_owned());
        self.run(move |ws| ws.verify(password.as_bytes(), &phc)).await?.map_err(PoolError::Hash)
    }

    /// Spends a verification's work for a username that does not exist.
    pub async fn verify_dummy(&self, password: &str) -> Result<(), PoolError> {
        let password = password.to_owned();
        self.run(move |ws| ws.spend(password.as_bytes())).await
    }

    /// Hashes a new password into a PHC string.
    pub async fn hash(&self, password: &str) -> Result<String, PoolError> {
        let password = password.to_owned();
        self.run(move |ws| ws.hash(password.as_bytes())).await?.map_err(PoolError::Hash)
    }

    /// Queues `f` for a worker, or refuses at once when `workers + queue` checks are already
    /// running or waiting.
    async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Workspace) -> T + Send + 'static,
    ) -> Result<T, PoolError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let job: Job = Box::new(move |ws| {
            // The caller went away (a client hung up): spend nothing on its behalf.
            if !tx.is_closed() {
                let _ = tx.send(f(ws));
            }
        });
        {
            let mut state = self.shared.lock();
            if state.closed {
                return Err(PoolError::Stopped);
            }
            if state.jobs.len() + state.running >= self.config.workers + self.config.queue {
                return Err(PoolError::Busy);
            }
            state.jobs.push_back(job);
        }
        self.shared.ready.notify_one();
        rx.await.map_err(|_| PoolError::Stopped)
    }
}

impl Drop for PasswordPool {
    fn drop(&mut self) {
        self.shared.lock().closed = true;
        self.shared.ready.notify_all();
    }
}

/// A worker: takes jobs in order, keeps its workspace's memory while work keeps coming and
/// frees it after `idle_release` without any.
fn work(shared: &Shared, idle_release: Duration) {
    let mut ws = Workspace::new(default_params());
    let mut state = shared.lock();
    loop {
        if let Some(job) = state.jobs.pop_front() {
            state.running += 1;
            drop(state);
            // A panic inside Argon2 would be a bug; it must not take a worker (and its slot
            // in the count) with it. The caller sees its answer channel close.
            if std::panic::catch_unwind(AssertUnwindSafe(|| job(&mut ws))).is_err() {
                ws.release();
            }
            state = shared.lock();
            state.running -= 1;
            continue;
        }
        if state.closed {
            return;
        }
        if ws.holds_memory() {
            let (guard, wait) = shared.ready.wait_timeout(state, idle_release).unwrap_or_else(PoisonError::into_inner);
            state = guard;
            if wait.timed_out() && state.jobs.is_empty() {
                drop(state);
                ws.release();
                state = shared.lock();
            }
        } else {
            state = shared.ready.wait(state).unwrap_or_else(PoisonError::into_inner);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use argon2::password_hash::{PasswordHash, PasswordHasher as _, PasswordVerifier as _, SaltString};
    use argon2::Argon2;

    fn pool(workers: usize, queue: usize) -> PasswordPool {
        PasswordPool::start(PoolConfig { workers, queue, idle_release: Duration::from_secs(60) }).unwrap()
    }

    #[tokio::test]
    async fn the_pool_verifies_hashes_of_the_argon2_crate_and_its_own_hashes_verify_there() {
        let pool = pool(2, 8);
        let salt = SaltString::generate(&mut rand::rngs::OsRng);
        let theirs = Argon2::default().hash_password(b"correct horse", &salt).unwrap().to_string();
        assert!(pool.verify("correct horse", &theirs).await.unwrap());
        assert!(!pool.verify("correct horse!", &theirs).await.unwrap());
        assert!(!pool.verify("correct horse", "not a hash").await.unwrap());

        let ours = pool.hash("battery staple").await.unwrap();
        let parsed = PasswordHash::new(&ours).unwrap();
        assert!(Argon2::default().verify_password(b"battery staple", &parsed).is_ok());
        assert!(Argon2::default().verify_password(b"battery stapler", &parsed).is_err());
        assert!(pool.verify("battery staple", &ours).await.unwrap());
        pool.verify_dummy("anything").await.unwrap();
    }

    #[tokio::test]
    async fn many_concurrent_checks_within_the_bound_all_get_the_right_answer() {
        let pool = Arc::new(pool(2, 14));
        let salt = SaltString::generate(&mut rand::rngs::OsRng);
        let h = Arc::new(Argon2::default().hash_password(b"pw", &salt).unwrap().to_string());
        let checks = (0..16).map(|i| {
            let (pool, h) = (Arc::clone(&pool), Arc::clone(&h));
            tokio::spawn(async move { (i, pool.verify(if i % 2 == 0 { "pw" } else { "no" }, &h).await.unwrap()) })
        });
        for check in checks.collect::<Vec<_>>() {
            let (i, ok) = check.await.unwrap();
            assert_eq!(ok, i % 2 == 0, "check {i}");
        }
    }

    /// A job that holds its worker until `release` is dropped, and says when it started.
    fn blocking_job(
        pool: &Arc<PasswordPool>,
    ) -> (tokio::task::JoinHandle<Result<(), PoolError>>, std::sync::mpsc::Sender<()>) {
        let (release, wait) = std::sync::mpsc::channel::<()>();
        let pool = Arc::clone(pool);
        let job = tokio::spawn(async move {
            pool.run(move |_| {
                let _ = wait.recv();
            })
            .await
        });
        (job, release)
    }

    #[tokio::test]
    async fn a_full_queue_refuses_at_once_and_accepts_again_once_it_drains() {
        let pool = Arc::new(pool(1, 1));
        let (running, release_running) = blocking_job(&pool);
        let (queued, release_queued) = blocking_job(&pool);
        // Both admitted jobs are counted as soon as they are queued, whether or not the
        // worker has picked one up yet, so the refusal below does not depend on timing.
        while {
            let state = pool.shared.lock();
            state.jobs.len() + state.running < 2
        } {
            tokio::task::yield_now().await;
        }
        assert!(matches!(pool.verify_dummy("x").await, Err(PoolError::Busy)));
        assert!(matches!(pool.hash("password").await, Err(PoolError::Busy)));
        drop((release_running, release_queued));
        running.await.unwrap().unwrap();
        queued.await.unwrap().unwrap();
        pool.verify_dummy("x").await.unwrap();
    }

    #[tokio::test]
    async fn an_idle_worker_frees_its_memory_and_allocates_again_for_the_next_check() {
        let idle = Duration::from_millis(50);
        // A queue of one: a job may be handed over while the worker is still finishing the last.
        let pool = PasswordPool::start(PoolConfig { workers: 1, queue: 1, idle_release: idle }).unwrap();
        let spend_and_look = |ws: &mut Workspace| {
            ws.spend(b"x");
            ws.holds_memory()
        };
        assert!(pool.run(spend_and_look).await.unwrap(), "a busy worker holds its memory");
        let mut freed = false;
        for _ in 0..50 {
            // Each probe is itself a job, so wait past the idle time before the next one.
            tokio::time::sleep(idle * 3).await;
            if !pool.run(|ws| ws.holds_memory()).await.unwrap() {
                freed = true;
                break;
            }
        }
        assert!(freed, "an idle worker gave its memory back");
        assert!(pool.run(spend_and_look).await.unwrap(), "and takes it again for the next check");
    }
}
