//! The coarse clock's keeper. While a cache has a TTL, something must keep
//! [`Clock::recent`](crate::clock::Clock::recent) current, so that a hit
//! judges staleness without reading the clock. The refresher does while it
//! runs; otherwise the keeper does, cheaply: a thread of its own (named
//! `swr-cache-clock`) ticking every [`tick_period`] (the crate docs' *The
//! refresher's numbers*). It holds the cache weakly, and ends within a tick of
//! the cache being dropped or its TTL removed.
//!
//! A cache gets one only when built (or given its TTL) inside a
//! multi-thread tokio runtime, the services it is made for: a thread per
//! cache is cheap there, and it needs nothing of the runtime (neither its
//! timers, which a runtime may not have enabled, nor its being driven). A
//! current-thread runtime may run on tokio's paused clock, which a thread
//! cannot follow, and a cache outside any runtime may be one of thousands
//! (a test suite, a fuzzer): those, without a running refresher, read the
//! precise clock on a hit, as they always did.

use std::hash::{BuildHasher, Hash};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::Duration;

use tokio::runtime::{Handle, RuntimeFlavor};

use crate::clock::{Keeper, tick_period};
use crate::inner::Inner;

/// Starts the keeper of `inner`'s coarse clock, unless it has no TTL, one
/// runs already, or it is not inside a multi-thread runtime.
pub(crate) fn keep_clock<K, V, S>(inner: &Arc<Inner<K, V, S>>)
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
    S: BuildHasher + Clone + Send + Sync + 'static,
{
    let in_multi_thread =
        Handle::try_current().is_ok_and(|r| r.runtime_flavor() == RuntimeFlavor::MultiThread);
    if !in_multi_thread || !inner.ages() {
        return;
    }
    let Some(keeper) = inner.read.clock.start_keeping() else {
        return;
    };
    let mut kept = Kept {
        cache: Arc::downgrade(inner),
        keeper,
    };
    // Should the thread not start, the closure (and `kept`) is dropped with
    // the error, and reads keep the precise clock.
    let _ = std::thread::Builder::new()
        .name("swr-cache-clock".into())
        .spawn(move || {
            while let Some(period) = kept.tick() {
                std::thread::sleep(period);
            }
        });
}

/// The keeper's hold on its cache: when it is dropped (the keeper ended),
/// the clock is no longer kept by it.
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
        // SeqCst with `configure`'s store of the TTL and the keeper's
        // number: of a keeper seeing no TTL and a `configure` giving one
        // back, at least one sees the other.
        if !inner.read.ages() {
            // Stop keeping first, then look again: a `configure` giving a
            // TTL back in between found this keeper still keeping and
            // started none, so this one carries on under a new number.
            clock.stop_keeping(self.keeper);
            if !inner.read.ages() {
                return None;
            }
            self.keeper = clock.start_keeping()?;
        }
        clock.tick();
        Some(Duration::from_nanos(tick_period(
            inner.read.ttl.load(Ordering::Relaxed),
        )))
    }
}

impl<K, V, S> Drop for Kept<K, V, S> {
    fn drop(&mut self) {
        if let Some(inner) = self.cache.upgrade() {
            inner.read.clock.stop_keeping(self.keeper);
        }
    }
}
