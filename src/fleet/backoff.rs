//! How long the link waits before connecting again: doubling from 50 ms up
//! to 2 s, each wait scaled by a random factor in `[0.5, 1)`, so that a
//! fleet whose Redis restarted (or stalled on a fork) does not come back
//! in lockstep.

use std::time::Duration;

use crate::clock::duration_to_nanos;
use crate::refresh::backoff::{Jitter, retry_delay};

/// The first wait, doubled per failure up to [`MAX_BACKOFF`].
pub(super) const BACKOFF: Duration = Duration::from_millis(50);
pub(super) const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// The waits of one task's connection attempts: the refresher's retry
/// delays, on the link's own base and cap.
pub(super) struct Backoff {
    /// Attempts failed since the last success.
    failures: u32,
    jitter: Jitter,
}

impl Backoff {
    pub(super) fn new() -> Self {
        Self {
            failures: 0,
            jitter: Jitter::new(),
        }
    }

    /// The wait before the next attempt; the one after is twice as long
    /// (before jitter), up to [`MAX_BACKOFF`].
    pub(super) fn next_wait(&mut self) -> Duration {
        self.failures = self.failures.saturating_add(1);
        let (base, cap) = (duration_to_nanos(BACKOFF), duration_to_nanos(MAX_BACKOFF));
        Duration::from_nanos(retry_delay(
            base,
            cap,
            self.failures,
            self.jitter.next_unit(),
        ))
    }

    /// After a success: the next wait is the first again.
    pub(super) fn reset(&mut self) {
        self.failures = 0;
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
