//! The coarse clock's keeper. While a cache has a TTL, something must keep
//! [`Clock::recent`](crate::clock::Clock::recent) current, so that a hit
//! judges staleness without reading the clock. The refresher does while it
//! runs; otherwise the keeper does, cheaply: a tick every [`tick_period`]
//! (a sixty-fourth of the TTL, 1 to 100 ms), from a task on the
//! multi-thread tokio runtime the cache was built (or given its TTL) in. It
//! holds the cache weakly, and ends when the cache is dropped or its TTL
//! removed; a keeper whose runtime goes away hands the read path back to
//! the precise clock.
//!
//! Only a multi-thread runtime keeps it: its workers always run timers,
//! while a current-thread runtime runs them only inside `block_on`, and a
//! keeper there could freeze the cache's time. Built outside a runtime, or
//! in a current-thread one, a cache without a running refresher reads the
//! precise clock on a hit, as it always did.

use std::hash::{BuildHasher, Hash};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::Duration;

use tokio::runtime::{Handle, RuntimeFlavor};

use crate::clock::{Keeper, tick_period};
use crate::inner::Inner;

/// Starts the keeper of `inner`'s coarse clock, unless it has no TTL, one
/// runs already, or there is no multi-thread runtime to run it on.
pub(crate) fn keep_clock<K, V, S>(inner: &Arc<Inner<K, V, S>>)
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
    S: BuildHasher + Clone + Send + Sync + 'static,
{
    let Ok(runtime) = Handle::try_current() else {
        return;
    };
    if runtime.runtime_flavor() != RuntimeFlavor::MultiThread || inner.ttl_nanos() == 0 {
        return;
    }
    let Some(keeper) = inner.read.clock.start_keeping() else {
        return;
    };
    let kept = Kept {
        cache: Arc::downgrade(inner),
        keeper,
    };
    runtime.spawn(async move {
        let mut kept = kept;
        while let Some(period) = kept.tick() {
            tokio::time::sleep(period).await;
        }
    });
}

/// The keeper's hold on its cache: when it is dropped (the keeper ended,
/// or its runtime dropped the task), the clock is no longer kept by it.
struct Kept<K, V, S> {
    cache: Weak<Inner<K, V, S>>,
    keeper: Keeper,
}

impl<K, V, S> Kept<K, V, S> {
    /// Ticks; how long to wait for the next tick, or `None` to end (the
    /// cache dropped, or its TTL removed).
    fn tick(&mut self) -> Option<Duration> {
        let inner = self.cache.upgrade()?;
        let clock = &inner.read.clock;
        let ttl = || inner.read.ttl.load(Ordering::Relaxed);
        if ttl() == 0 {
            // Stop keeping first, then look again: a `configure` giving a
            // TTL back in between found this keeper still keeping and
            // started none, so this one carries on under a new number.
            clock.stop_keeping(self.keeper);
            if ttl() == 0 {
                return None;
            }
            self.keeper = clock.start_keeping()?;
        }
        clock.tick();
        Some(Duration::from_nanos(tick_period(ttl())))
    }
}

impl<K, V, S> Drop for Kept<K, V, S> {
    fn drop(&mut self) {
        if let Some(inner) = self.cache.upgrade() {
            inner.read.clock.stop_keeping(self.keeper);
        }
    }
}
