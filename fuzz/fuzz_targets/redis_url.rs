//! The ephemeral store's URL parsing (`redis://`, `rediss://`, unix sockets, and the
//! `redis+sentinel://` and `redis+cluster://` forms parsed by the crate itself), up to the
//! first connection. An error never quotes a password, however malformed the URL.
//!
//! Input: the URL.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tessera_ephemeral::fuzzing::parse_store_url;

/// Stands in for the password of a second, derived URL.
const MARKER: &str = "Zq8wMarkerPw";

/// The password as a naive reader sees it: between the first `:` of the userinfo and its
/// last `@`, whichever `/`, `?` or `#` it holds.
fn naive_password(rest: &str) -> Option<(usize, usize)> {
    let at = rest.rfind('@')?;
    let colon = rest[..at].find(':')?;
    Some((colon + 1, at))
}

fn percent_decoded(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        match s.get(i + 1..i + 3).and_then(|h| u8::from_str_radix(h, 16).ok()) {
            Some(b) if bytes[i] == b'%' => {
                out.push(b);
                i += 3;
            }
            _ => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn check(url: &str) -> Option<String> {
    match parse_store_url(url) {
        Ok(n) => {
            assert!(n >= 1, "{url:?} names no server");
            None
        }
        Err(e) => {
            let message = e.to_string();
            assert!(message.len() <= 512, "{message:?}");
            Some(message)
        }
    }
}

fuzz_target!(|input: &[u8]| {
    let url = String::from_utf8_lossy(input);
    let message = check(&url);
    let Some((scheme, rest)) = url.split_once("://") else { return };

    if let (Some(message), Some((from, to))) = (&message, naive_password(rest)) {
        let password = &rest[from..to];
        // Only a password with a character no message holds can be told apart from text that
        // the fuzzer copied from a message; the marked URL below checks every other password.
        for secret in [password.to_owned(), percent_decoded(password)] {
            if secret.len() >= 6 && secret.contains(['!', '$', '~', '^', '|', '*']) && !scheme.contains(secret.as_str())
            {
                assert!(!message.contains(secret.as_str()), "{url:?}: {message:?}");
            }
        }
    }

    // The same URL with a known password, wherever the userinfo is.
    if url.contains(MARKER) {
        return;
    }
    let marked = match naive_password(rest) {
        Some((from, to)) => format!("{scheme}://{}{MARKER}{}", &rest[..from], &rest[to..]),
        None => format!("{scheme}://user:{MARKER}@{rest}"),
    };
    if let Some(message) = check(&marked) {
        assert!(!message.contains(MARKER), "{marked:?}: {message:?}");
    }
});
