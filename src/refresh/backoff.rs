//! How long a key whose refreshes fail waits before the next try.

use crate::clock::Nanos;
use crate::hasher::DefaultBuildHasher;
use std::hash::BuildHasher;

/// The wait before retry number `failures` (1 for the first): `base` doubled
/// per failure after the first, capped at `cap`, then scaled by a jitter
/// factor in `[0.5, 1)` (from `unit` in `[0, 1)`), so keys that failed together
/// do not retry together, and each wait is at least as long as the one before
/// until the cap is reached.
pub(crate) fn retry_delay(base: Nanos, cap: Nanos, failures: u32, unit: f64) -> Nanos {
    let doublings = failures.saturating_sub(1).min(63);
    let delay = base.saturating_mul(1u64 << doublings).min(cap);
    (delay as f64 * (0.5 + 0.5 * unit)) as Nanos
}

/// A small xorshift generator, seeded at random per task.
pub(crate) struct Jitter(u64);

impl Jitter {
    pub(crate) fn new() -> Self {
        Self(DefaultBuildHasher::default().hash_one(0u64) | 1)
    }

    /// A number in `[0, 1)`.
    pub(crate) fn next_unit(&mut self) -> f64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_delays_grow_with_jitter_up_to_the_cap() {
        let base = 1_000;
        let cap = 10_000;
        assert_eq!(retry_delay(base, cap, 1, 0.0), 500);
        assert_eq!(retry_delay(base, cap, 2, 0.0), 1_000);
        assert_eq!(retry_delay(base, cap, 3, 0.999_999), 3_999);
        assert_eq!(retry_delay(base, cap, 10, 0.999_999), 9_999);
        assert_eq!(retry_delay(base, cap, u32::MAX, 0.0), 5_000);
        // The slowest draw for one failure is never slower than the fastest
        // draw for the next, until the cap.
        for failures in 1..4 {
            assert!(
                retry_delay(base, cap, failures, 0.999)
                    <= retry_delay(base, cap, failures + 1, 0.0)
            );
        }
    }

    #[test]
    fn jitter_is_in_the_unit_interval_and_varies() {
        let mut jitter = Jitter::new();
        let draws: Vec<f64> = (0..1000).map(|_| jitter.next_unit()).collect();
        assert!(draws.iter().all(|d| (0.0..1.0).contains(d)));
        let mean = draws.iter().sum::<f64>() / draws.len() as f64;
        assert!((0.4..0.6).contains(&mean), "mean {mean}");
    }
}
