//! Failure logs, at most a few a second: in an outage every refresh fails,
//! and a log line per failure would bury everything else.
//!
//! Approximate by design: the window and count are two relaxed atomics, so
//! two threads crossing a second's boundary together may let a line or two
//! more through. The lines held back are counted and reported with the next
//! line let through.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::clock::Nanos;

/// Lines let through per second.
const PER_SECOND: u64 = 10;

pub(crate) struct Throttle {
    /// The second (of the clock) the count is for.
    window: AtomicU64,
    count: AtomicU64,
    held_back: AtomicU64,
}

impl Throttle {
    pub(crate) const fn new() -> Self {
        Self {
            window: AtomicU64::new(0),
            count: AtomicU64::new(0),
            held_back: AtomicU64::new(0),
        }
    }

    /// Whether a line may be logged at `now`: `Some` with the number of
    /// lines held back since the last one let through, or `None`.
    pub(crate) fn admit(&self, now: Nanos) -> Option<u64> {
        let second = now / 1_000_000_000;
        let window = self.window.load(Ordering::Relaxed);
        if second != window
            && self
                .window
                .compare_exchange(window, second, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            self.count.store(0, Ordering::Relaxed);
        }
        if self.count.fetch_add(1, Ordering::Relaxed) < PER_SECOND {
            Some(self.held_back.swap(0, Ordering::Relaxed))
        } else {
            self.held_back.fetch_add(1, Ordering::Relaxed);
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_few_lines_a_second_and_a_count_of_the_rest() {
        let throttle = Throttle::new();
        let second = 1_000_000_000;
        let let_through: Vec<Option<u64>> = (0..15).map(|_| throttle.admit(5 * second)).collect();
        assert!(let_through[..10].iter().all(|a| *a == Some(0)));
        assert!(let_through[10..].iter().all(Option::is_none));
        assert_eq!(throttle.admit(6 * second), Some(5), "the five held back");
        assert_eq!(throttle.admit(6 * second), Some(0));
    }
}
