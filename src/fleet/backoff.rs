//! How long the link waits before connecting again: doubling from 50 ms up
//! to 2 s, each wait scaled by a random factor in `[0.5, 1)`, so that a
//! fleet whose Redis restarted (or stalled on a fork) does not come back
//! in lockstep.

use std::hash::{BuildHasher, RandomState};
use std::time::Duration;

/// The first wait, doubled per failure up to [`MAX_BACKOFF`].
pub(super) const BACKOFF: Duration = Duration::from_millis(50);
pub(super) const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// The waits of one task's connection attempts.
#[derive(Debug)]
pub(super) struct Backoff {
    /// The next wait, before its jitter.
    next: Duration,
    /// Waits so far, so each draws a new factor.
    drawn: u64,
}

impl Backoff {
    pub(super) fn new() -> Self {
        Self {
            next: BACKOFF,
            drawn: 0,
        }
    }

    /// The wait before the next attempt; the one after is twice as long
    /// (before jitter), up to [`MAX_BACKOFF`].
    pub(super) fn next_wait(&mut self) -> Duration {
        let wait = self.next;
        self.next = (self.next * 2).min(MAX_BACKOFF);
        self.drawn += 1;
        // std's RandomState is seeded at random per process and per call.
        let random = RandomState::new().hash_one(self.drawn);
        let unit = (random >> 11) as f64 / (1u64 << 53) as f64;
        wait.mul_f64(0.5 + 0.5 * unit)
    }

    /// After a success: the next wait is the first again.
    pub(super) fn reset(&mut self) {
        self.next = BACKOFF;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_double_up_to_the_cap_each_jittered() {
        let mut backoff = Backoff::new();
        let mut expected = BACKOFF;
        for _ in 0..10 {
            let wait = backoff.next_wait();
            assert!(
                wait >= expected / 2 && wait < expected,
                "{wait:?} for {expected:?}"
            );
            expected = (expected * 2).min(MAX_BACKOFF);
        }
        backoff.reset();
        assert!(backoff.next_wait() < BACKOFF);
    }

    #[test]
    fn two_tasks_do_not_wait_in_lockstep() {
        let waits = |_| {
            let mut backoff = Backoff::new();
            (0..8).map(|_| backoff.next_wait()).collect::<Vec<_>>()
        };
        assert_ne!(waits(0), waits(1));
    }
}
