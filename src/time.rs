//! The cache's clock: one source of time for ages and deadlines.
//!
//! Time is read through [`tokio::time::Instant`], so a test on tokio's paused
//! clock (`#[tokio::test(start_paused = true)]`) controls every age the cache
//! computes, with no real sleep. Instants are kept as nanoseconds since the
//! clock's base in a `u64`, which fits in an atomic and lasts 584 years.

use std::time::Duration;

use tokio::time::Instant;

/// Nanoseconds since a [`Clock`]'s base.
pub(crate) type Nanos = u64;

pub(crate) struct Clock {
    base: Instant,
}

impl Clock {
    pub(crate) fn new() -> Self {
        Self {
            base: Instant::now(),
        }
    }

    /// The precise time.
    pub(crate) fn now(&self) -> Nanos {
        duration_to_nanos(Instant::now().saturating_duration_since(self.base))
    }

    /// The time the read path judges staleness by.
    #[inline]
    pub(crate) fn recent(&self) -> Nanos {
        self.now()
    }
}

pub(crate) fn duration_to_nanos(d: Duration) -> Nanos {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}
