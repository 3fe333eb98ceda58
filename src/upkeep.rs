//! The coarse clock's keeper. While a cache has a TTL, something must keep
//! [`Clock::recent`](crate::clock::Clock::recent) current, so that a hit
//! judges staleness without reading the clock. The refresher does while it
//! runs; the keeper does always, cheaply: a tick every
//! [`tick_period`] (a sixty-fourth of the TTL, 1 to 100 ms). It is a task
//! on the tokio runtime the cache was built (or given its TTL) in, so
//! tests on tokio's paused clock stay exact, or a thread of its own
//! outside a runtime. It holds the cache weakly, and ends when the cache
//! is dropped or its TTL removed; a keeper whose runtime goes away hands
//! the read path back to the precise clock.

use std::hash::{BuildHasher, Hash};
use std::sync::{Arc, Weak};
use std::time::Duration;

use crate::clock::tick_period;
use crate::inner::Inner;

/// Starts the keeper of `inner`'s coarse clock, unless it has no TTL or
/// one runs already.
pub(crate) fn keep_clock<K, V, S>(inner: &Arc<Inner<K, V, S>>)
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
    S: BuildHasher + Clone + Send + Sync + 'static,
{
    if inner.ttl_nanos() == 0 || !inner.read.clock.start_keeping() {
        return;
    }
    let kept = Kept(Arc::downgrade(inner));
    match tokio::runtime::Handle::try_current() {
        Ok(runtime) => {
            runtime.spawn(async move {
                while let Some(period) = kept.tick() {
                    tokio::time::sleep(period).await;
                }
            });
        }
        Err(_) => {
            let spawned = std::thread::Builder::new()
                .name("swr-cache-clock".into())
                .spawn(move || {
                    while let Some(period) = kept.tick() {
                        std::thread::sleep(period);
                    }
                });
            // No thread to be had: reads keep the precise clock (the
            // closure, and its `Kept`, were dropped with the error).
            drop(spawned);
        }
    }
}

/// The keeper's hold on its cache: when it is dropped (the keeper ended,
/// or its runtime dropped the task), the clock is no longer kept.
struct Kept<K, V, S>(Weak<Inner<K, V, S>>);

impl<K, V, S> Kept<K, V, S> {
    /// Ticks; how long to wait for the next tick, or `None` to end (the
    /// cache dropped, or its TTL removed).
    fn tick(&self) -> Option<Duration> {
        let inner = self.0.upgrade()?;
        let ttl = inner.read.ttl.load(std::sync::atomic::Ordering::Relaxed);
        if ttl == 0 {
            return None;
        }
        inner.read.clock.tick();
        Some(Duration::from_nanos(tick_period(ttl)))
    }
}

impl<K, V, S> Drop for Kept<K, V, S> {
    fn drop(&mut self) {
        if let Some(inner) = self.0.upgrade() {
            inner.read.clock.stop_keeping();
        }
    }
}
