//! The raw Argon2id rate of Tessera's password parameters on every core of this machine:
//! the ceiling the password grant is measured against (`bench/password-memory.sh`).
//!
//! One thread per core hashes for the given number of seconds (default 5, at most 60), first
//! with one reused buffer per thread (as the password pool does), then allocating a fresh
//! buffer per hash (the argon2 crate's ordinary API). Prints one line:
//!
//! ```text
//! argon2id m=19456 t=2 p=1 threads=2 seconds=5 reused_per_s=131.2 allocating_per_s=118.4
//! ```

use argon2::{Algorithm, Argon2, Version};
use std::time::{Duration, Instant};
use tessera_crypto::password::{default_params, Workspace};

fn main() {
    let seconds = std::env::args().nth(1).and_then(|s| s.parse::<u64>().ok()).unwrap_or(5).clamp(1, 60);
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let per_phase = Duration::from_secs(seconds);
    let reused = rate(threads, per_phase, |_| {
        let mut ws = Workspace::new(default_params());
        move |i: u64| ws.spend(&i.to_le_bytes())
    });
    let allocating = rate(threads, per_phase, |_| {
        let argon = Argon2::new(Algorithm::Argon2id, Version::V0x13, default_params());
        move |i: u64| {
            let mut out = [0u8; 32];
            let _ = argon.hash_password_into(&i.to_le_bytes(), b"tessera-rate-salt", &mut out);
        }
    });
    let p = default_params();
    println!(
        "argon2id m={} t={} p={} threads={threads} seconds={seconds} reused_per_s={reused:.1} allocating_per_s={allocating:.1}",
        p.m_cost(),
        p.t_cost(),
        p.p_cost()
    );
}

/// Hashes per second over all `threads`, each running the hasher `make` gives it until
/// `duration` has passed.
fn rate<F, H>(threads: usize, duration: Duration, make: F) -> f64
where
    F: Fn(usize) -> H + Sync,
    H: FnMut(u64) + Send,
{
    let start = Instant::now();
    let done: u64 = std::thread::scope(|s| {
        let workers: Vec<_> = (0..threads)
            .map(|t| {
                let mut hash = make(t);
                s.spawn(move || {
                    let mut n = 0u64;
                    while start.elapsed() < duration {
                        hash(n);
                        n += 1;
                    }
                    n
                })
            })
            .collect();
        workers.into_iter().map(|w| w.join().unwrap_or(0)).sum()
    });
    done as f64 / start.elapsed().as_secs_f64()
}
