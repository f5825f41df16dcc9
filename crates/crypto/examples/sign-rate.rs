//! The raw rate of signing access tokens with Tessera's default key (ES256) on every core of
//! this machine, and what one signed token costs one core: the floor under every token the
//! server issues (`bench/run` shows it beside the gRPC health check, the ceiling of
//! IssueToken).
//!
//! Each token is the compact JWS of a typical access token's claims (JSON, base64url, the
//! ECDSA signature), as the token service mints it. One thread per core signs for the given
//! number of seconds (default 3, at most 60). Prints one line:
//!
//! ```text
//! es256 threads=2 seconds=3 per_s=61234.5 us_per_token=32.7
//! ```

use serde_json::json;
use std::time::{Duration, Instant};
use tessera_crypto::jwt;
use tessera_crypto::keys::{generate_pkcs8, Algorithm, SigningKey};

fn main() {
    let seconds = std::env::args().nth(1).and_then(|s| s.parse::<u64>().ok()).unwrap_or(3).clamp(1, 60);
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let Ok(key) = generate_pkcs8(Algorithm::Es256).and_then(|der| SigningKey::from_pkcs8(Algorithm::Es256, &der))
    else {
        eprintln!("cannot make an ES256 key");
        std::process::exit(1);
    };
    let duration = Duration::from_secs(seconds);
    let start = Instant::now();
    let signed: u64 = std::thread::scope(|s| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                let key = &key;
                s.spawn(move || {
                    let mut n = 0u64;
                    while start.elapsed() < duration {
                        let claims = json!({
                            "iss": "https://tessera.example", "sub": "svc", "aud": "https://api.example",
                            "exp": 1_700_000_300 + n, "iat": 1_700_000_000, "nbf": 1_700_000_000,
                            "jti": format!("jti-{n:016x}"), "client_id": "svc", "scope": "api",
                        });
                        if jwt::encode(key, "at+jwt", &claims).is_err() {
                            break;
                        }
                        n += 1;
                    }
                    n
                })
            })
            .collect();
        workers.into_iter().map(|w| w.join().unwrap_or(0)).sum()
    });
    let elapsed = start.elapsed().as_secs_f64();
    let per_s = signed as f64 / elapsed;
    let us_per_token = if signed == 0 { 0.0 } else { elapsed * threads as f64 / signed as f64 * 1e6 };
    println!("es256 threads={threads} seconds={seconds} per_s={per_s:.1} us_per_token={us_per_token:.1}");
}
