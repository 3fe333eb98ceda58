//! The cache's clock: one source of time for ages and deadlines.
//!
//! Time is read through [`tokio::time::Instant`], so a test on tokio's paused
//! clock (`#[tokio::test(start_paused = true)]`) controls every age the cache
//! computes, with no real sleep. Instants are kept as nanoseconds since the
//! clock's base in a `u64`, which fits in an atomic and lasts 584 years.
//!
//! Reading the time costs a `clock_gettime` call (~20 ns), as much as a whole
//! cache hit, so the read path does not do it while the refresher runs:
//! the refresher ticks a *coarse* clock ([`Clock::recent`]) and `get` judges
//! staleness against that. With no refresher ticking, `recent` reads the
//! precise time instead, so staleness is never judged against a frozen clock.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

/// Nanoseconds since a [`Clock`]'s base.
pub(crate) type Nanos = u64;

pub(crate) struct Clock {
    base: Instant,
    /// The last time [`Clock::tick`] stored; read by `get` while `ticking`.
    recent: AtomicU64,
    /// The longest the ticker waits between two ticks, as it last said.
    period: AtomicU64,
    /// Whether a refresher task is keeping `recent` up to date.
    ticking: AtomicBool,
}

impl Clock {
    pub(crate) fn new() -> Self {
        Self {
            base: Instant::now(),
            recent: AtomicU64::new(0),
            period: AtomicU64::new(0),
            ticking: AtomicBool::new(false),
        }
    }

    /// The precise time.
    #[inline]
    pub(crate) fn now(&self) -> Nanos {
        duration_to_nanos(Instant::now().saturating_duration_since(self.base))
    }

    /// The time as of the last tick while a ticker runs, else the precise time.
    #[inline]
    pub(crate) fn recent(&self) -> Nanos {
        if self.ticking.load(Ordering::Relaxed) {
            self.recent.load(Ordering::Relaxed)
        } else {
            self.now()
        }
    }

    /// The time to stamp a write with, never before the precise time while
    /// the ticker keeps its period: the coarse time plus one period while a
    /// ticker runs (no clock read, which costs as much as the rest of a
    /// write), else the precise time. So an entry is never judged stale
    /// before its TTL, and at worst two periods after.
    #[inline]
    pub(crate) fn stamp(&self) -> Nanos {
        if self.ticking.load(Ordering::Relaxed) {
            let period = self.period.load(Ordering::Relaxed);
            self.recent.load(Ordering::Relaxed).saturating_add(period)
        } else {
            self.now()
        }
    }

    /// The last time a tick published, without reading the clock: what a
    /// write is stamped with while there is no TTL (nothing is stale then,
    /// and a stamp costs no clock read).
    #[inline]
    pub(crate) fn last_tick(&self) -> Nanos {
        self.recent.load(Ordering::Relaxed)
    }

    /// Sets the longest the ticker will wait before its next tick.
    pub(crate) fn set_period(&self, period: Nanos) {
        self.period.store(period, Ordering::Relaxed);
    }

    /// Reads the precise time and publishes it as the coarse time.
    pub(crate) fn tick(&self) -> Nanos {
        let now = self.now();
        self.recent.fetch_max(now, Ordering::Relaxed);
        now
    }

    /// Marks whether a ticker keeps [`Clock::recent`] current. Ticks first, so
    /// the coarse time is never older than the moment the ticker started.
    pub(crate) fn set_ticking(&self, ticking: bool) {
        if ticking {
            self.tick();
        }
        self.ticking.store(ticking, Ordering::Relaxed);
    }

    /// The instant a [`Nanos`] reading stands for, for tokio timers.
    pub(crate) fn instant_at(&self, at: Nanos) -> Instant {
        self.base + Duration::from_nanos(at)
    }
}

pub(crate) fn duration_to_nanos(d: Duration) -> Nanos {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn recent_is_precise_until_a_ticker_runs() {
        let clock = Clock::new();
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(clock.recent(), 1_000_000_000);

        clock.set_ticking(true);
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(
            clock.recent(),
            1_000_000_000,
            "coarse time waits for a tick"
        );
        clock.tick();
        assert_eq!(clock.recent(), 2_000_000_000);

        clock.set_ticking(false);
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(clock.recent(), 3_000_000_000);
    }
}
