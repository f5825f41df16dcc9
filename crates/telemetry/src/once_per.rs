//! A bound on log lines that every failing request would otherwise write. While a store is
//! down, each request that needs it fails fast with the same cause; a line for each is no news
//! after the first, and at tens of thousands of requests a second it becomes megabytes of log a
//! second (DESIGN.md rule 8). A site keeps one [`OncePer`] and writes its line only when the
//! gate lets it through, saying how many like it were left out since the last.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Lets one line through per interval. Shared by every thread; never blocks.
#[derive(Debug)]
pub struct OncePer {
    interval_ms: u64,
    /// From when the next line may go, in milliseconds on the process's clock ([`elapsed_ms`]).
    next_ms: AtomicU64,
    /// Lines held back since the last one let through.
    held_back: AtomicU64,
}

impl OncePer {
    /// A gate for a `static`: the first line goes at once, then one per `interval`.
    pub const fn new(interval: Duration) -> OncePer {
        OncePer { interval_ms: interval.as_millis() as u64, next_ms: AtomicU64::new(0), held_back: AtomicU64::new(0) }
    }

    /// `Some(n)` when this line should be written, `n` being how many held-back lines it
    /// reports; `None` when it should not be (it is counted). Each held-back line is reported
    /// once, by a line written after it: by the next one, or (when it raced that one) the one
    /// after. Lines held back at the end of an outage are reported only when the site next
    /// writes, however much later: the metrics, not this count, are the record of how many
    /// requests failed.
    pub fn admit(&self) -> Option<u64> {
        self.admit_at(elapsed_ms())
    }

    fn admit_at(&self, now_ms: u64) -> Option<u64> {
        let next = self.next_ms.load(Ordering::Relaxed);
        // Of the threads that find the interval over, the one that moves it on writes.
        if now_ms >= next
            && self
                .next_ms
                .compare_exchange(next, now_ms + self.interval_ms, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            return Some(self.held_back.swap(0, Ordering::Relaxed));
        }
        self.held_back.fetch_add(1, Ordering::Relaxed);
        None
    }
}

/// Milliseconds since the process first asked, from a monotonic clock.
fn elapsed_ms() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    EPOCH.get_or_init(Instant::now).elapsed().as_millis() as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_goes_per_interval_and_the_next_says_how_many_were_held_back() {
        let gate = OncePer::new(Duration::from_secs(1));
        assert_eq!(gate.admit_at(5_000), Some(0), "the first line goes at once");
        for at in [5_000, 5_400, 5_999] {
            assert_eq!(gate.admit_at(at), None, "at {at} ms, within the interval");
        }
        assert_eq!(gate.admit_at(6_000), Some(3), "the interval is over: the three held back are counted");
        assert_eq!(gate.admit_at(6_001), None);
        assert_eq!(gate.admit_at(60_000), Some(1), "a quiet spell lets the next one through at once");
    }

    #[test]
    fn of_many_threads_at_once_one_writes_and_every_other_line_is_counted_once() {
        let gate = std::sync::Arc::new(OncePer::new(Duration::from_secs(3600)));
        let start = std::sync::Arc::new(std::sync::Barrier::new(8));
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let (gate, start) = (gate.clone(), start.clone());
                std::thread::spawn(move || {
                    start.wait();
                    (0..1000).filter_map(|_| gate.admit()).collect::<Vec<u64>>()
                })
            })
            .collect();
        let written: Vec<u64> = threads.into_iter().flat_map(|t| t.join().unwrap()).collect();
        assert_eq!(written.len(), 1, "{written:?}");
        // Those held back while the one line was let through are reported by it, the rest by
        // the next.
        assert_eq!(written[0] + gate.held_back.load(Ordering::Relaxed), 7_999);
    }
}
