//! The cache's clock: one source of time for ages and deadlines.
//!
//! Time is read through [`tokio::time::Instant`], so a test on tokio's paused
//! clock (`#[tokio::test(start_paused = true)]`) controls every age the cache
//! computes, with no real sleep. Instants are kept as nanoseconds since the
//! clock's base in a `u64`, which fits in an atomic and lasts 584 years
//! (an entry keeps its write time in microseconds, which last longer).
//!
//! Reading the time costs a `clock_gettime` call (~20 ns), as much as a whole
//! cache hit, so the read path does not do it: a *coarse* clock
//! ([`Clock::recent`]) is ticked by the refresher while it runs, and
//! otherwise, for a cache with a TTL built in a multi-thread runtime, by a
//! keeper of its own (`crate::upkeep`), and `get` judges staleness against
//! that. With neither ticking, `recent` reads the precise
//! time instead, so staleness is never judged against a frozen clock.

use std::sync::atomic::{AtomicU64, Ordering};
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
    /// The ticker keeping `recent` up to date: 0 for none, else the number
    /// [`Clock::start_ticking`] gave it, so that a ticker that ends late
    /// (its task dropped after a newer one started) cannot stop the newer.
    ticker: AtomicU64,
    /// The last number given to a ticker.
    tickers: AtomicU64,
    /// The keeper (`crate::upkeep`) keeping `recent` current: 0 for none,
    /// else its number, so that one ending late cannot stop a newer one.
    kept: AtomicU64,
}

/// A keeper's number, from [`Clock::start_keeping`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Keeper(u64);

/// A ticker's number, from [`Clock::start_ticking`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Ticker(u64);

impl Clock {
    pub(crate) fn new() -> Self {
        Self {
            base: Instant::now(),
            recent: AtomicU64::new(0),
            period: AtomicU64::new(0),
            ticker: AtomicU64::new(0),
            tickers: AtomicU64::new(0),
            kept: AtomicU64::new(0),
        }
    }

    /// The precise time.
    #[inline]
    pub(crate) fn now(&self) -> Nanos {
        duration_to_nanos(Instant::now().saturating_duration_since(self.base))
    }

    #[inline]
    fn is_ticking(&self) -> bool {
        self.ticker.load(Ordering::Relaxed) != 0
    }

    /// The time as of the last tick while the refresher or the keeper
    /// ticks, else the precise time.
    #[inline]
    pub(crate) fn recent(&self) -> Nanos {
        if self.is_ticking() || self.kept.load(Ordering::Relaxed) != 0 {
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
        if self.is_ticking() {
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

    /// Marks a new ticker as keeping [`Clock::recent`] current, in place of
    /// any other. Ticks first, so the coarse time is never older than the
    /// moment the ticker started.
    pub(crate) fn start_ticking(&self) -> Ticker {
        self.tick();
        let ticker = self.tickers.fetch_add(1, Ordering::Relaxed) + 1;
        self.ticker.store(ticker, Ordering::Relaxed);
        Ticker(ticker)
    }

    /// No ticker keeps the coarse time any more: reads go back to the
    /// precise clock.
    pub(crate) fn stop_ticking(&self) {
        self.ticker.store(0, Ordering::Relaxed);
    }

    /// [`Clock::stop_ticking`], if `ticker` is still the one ticking.
    pub(crate) fn stop_ticking_if(&self, ticker: Ticker) {
        let _ = self
            .ticker
            .compare_exchange(ticker.0, 0, Ordering::Relaxed, Ordering::Relaxed);
    }

    /// Marks the clock as kept by a new keeper, ticking first; `None` if
    /// one keeps it already (the caller then starts none).
    pub(crate) fn start_keeping(&self) -> Option<Keeper> {
        self.tick();
        let keeper = self.tickers.fetch_add(1, Ordering::Relaxed) + 1;
        // SeqCst: see `crate::upkeep`'s restart.
        self.kept
            .compare_exchange(0, keeper, Ordering::SeqCst, Ordering::SeqCst)
            .ok()
            .map(|_| Keeper(keeper))
    }

    /// Keeper `keeper` stopped: reads go back to the precise clock unless
    /// the refresher ticks or a newer keeper keeps it.
    pub(crate) fn stop_keeping(&self, keeper: Keeper) {
        let _ = self
            .kept
            .compare_exchange(keeper.0, 0, Ordering::SeqCst, Ordering::SeqCst);
    }

    /// The instant a [`Nanos`] reading stands for, for tokio timers.
    pub(crate) fn instant_at(&self, at: Nanos) -> Instant {
        self.base + Duration::from_nanos(at)
    }
}

/// How often the coarse clock ticks for a TTL: a sixty-fourth of it,
/// between 1 ms and 100 ms, so staleness is judged at most that late; 100
/// ms with no cache-wide TTL (`0`: values with TTLs of their own only).
pub(crate) fn tick_period(ttl: Nanos) -> Nanos {
    const MOST: Nanos = 100_000_000;
    if ttl == 0 {
        return MOST;
    }
    (ttl / 64).clamp(1_000_000, MOST)
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

        let ticker = clock.start_ticking();
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(
            clock.recent(),
            1_000_000_000,
            "coarse time waits for a tick"
        );
        clock.tick();
        assert_eq!(clock.recent(), 2_000_000_000);

        clock.stop_ticking_if(ticker);
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(clock.recent(), 3_000_000_000);
    }

    /// (Review.) A keeper that stops late (the TTL removed and given back
    /// meanwhile) must not stop the one that took over.
    #[test]
    fn a_keeper_that_stops_late_does_not_stop_a_newer_one() {
        let clock = Clock::new();
        let old = clock.start_keeping().expect("none keeps it");
        assert!(clock.start_keeping().is_none(), "one keeper at a time");
        clock.stop_keeping(old);
        let new = clock.start_keeping().expect("free again");
        clock.stop_keeping(old);
        assert_eq!(clock.kept.load(Ordering::SeqCst), new.0, "still kept");
        clock.stop_keeping(new);
        assert_eq!(clock.kept.load(Ordering::SeqCst), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_ticker_that_ends_late_does_not_stop_a_newer_one() {
        let clock = Clock::new();
        let old = clock.start_ticking();
        clock.stop_ticking();
        let new = clock.start_ticking();
        clock.stop_ticking_if(old);
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(clock.recent(), 0, "still coarse: the new ticker runs");
        clock.stop_ticking_if(new);
        assert_eq!(clock.recent(), 1_000_000_000);
    }
}
