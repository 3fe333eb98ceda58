//! Counters for what the cache does, and the [`Metrics`] snapshot of them.
//!
//! Every `get` counts a hit or a miss. A single shared counter would be one
//! cache line written by every core on every read, the very contention a
//! sharded map exists to avoid; so the counters are striped: each thread adds to
//! the stripe it was assigned (round-robin, on its first count), each stripe
//! alone on its cache line, and [`Metrics`] sums the stripes when asked.

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

/// A point-in-time copy of a cache's counters, from
/// [`Cache::metrics`](crate::Cache::metrics).
///
/// Counters are summed without stopping writers, so a snapshot taken under load
/// may be a few operations out of step between fields; once the cache is quiet
/// they add up exactly: `inserts - evictions - invalidations` is the entry count.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct Metrics {
    /// `get`s that found the key (fresh or stale).
    pub hits: u64,
    /// `get`s that did not find the key.
    pub misses: u64,
    /// The hits whose entry was older than the TTL.
    pub stale_hits: u64,
    /// Keys added to the cache (by `insert` or a read-through fetch).
    pub inserts: u64,
    /// Writes to keys already present (their age starts over).
    pub updates: u64,
    /// Entries removed to make room, or by shrinking `max_size`.
    pub evictions: u64,
    /// Entries removed by `invalidate` or `clear`.
    pub invalidations: u64,
    /// Fetches that succeeded and renewed an entry.
    pub refreshes: u64,
    /// Fetches that failed, timed out or panicked.
    pub refresh_errors: u64,
}

impl Metrics {
    /// `hits / (hits + misses)`, or 0 before the first `get`.
    pub fn hit_rate(&self) -> f64 {
        let requests = self.hits + self.misses;
        if requests == 0 {
            0.0
        } else {
            self.hits as f64 / requests as f64
        }
    }
}

#[derive(Clone, Copy)]
pub(crate) enum Counter {
    Hits,
    Misses,
    StaleHits,
    Inserts,
    Updates,
    Evictions,
    Invalidations,
    Refreshes,
    RefreshErrors,
}

const COUNTERS: usize = 9;

#[repr(align(128))] // two cache lines: adjacent-line prefetch pairs them on x86
struct Stripe([AtomicU64; COUNTERS]);

pub(crate) struct Counters {
    stripes: Box<[Stripe]>,
}

impl Counters {
    pub(crate) fn new() -> Self {
        let threads = std::thread::available_parallelism().map_or(4, |n| n.get());
        let stripes = (threads * 2).next_power_of_two().min(64);
        Self {
            stripes: (0..stripes)
                .map(|_| Stripe(std::array::from_fn(|_| AtomicU64::new(0))))
                .collect(),
        }
    }

    #[inline]
    pub(crate) fn add(&self, counter: Counter, n: u64) {
        let stripe = &self.stripes[thread_stripe() & (self.stripes.len() - 1)];
        stripe.0[counter as usize].fetch_add(n, Ordering::Relaxed);
    }

    #[inline]
    pub(crate) fn incr(&self, counter: Counter) {
        self.add(counter, 1);
    }

    pub(crate) fn snapshot(&self) -> Metrics {
        let sum = |c: Counter| {
            self.stripes
                .iter()
                .map(|s| s.0[c as usize].load(Ordering::Relaxed))
                .fold(0u64, u64::wrapping_add)
        };
        Metrics {
            hits: sum(Counter::Hits),
            misses: sum(Counter::Misses),
            stale_hits: sum(Counter::StaleHits),
            inserts: sum(Counter::Inserts),
            updates: sum(Counter::Updates),
            evictions: sum(Counter::Evictions),
            invalidations: sum(Counter::Invalidations),
            refreshes: sum(Counter::Refreshes),
            refresh_errors: sum(Counter::RefreshErrors),
        }
    }

    pub(crate) fn reset(&self) {
        for stripe in self.stripes.iter() {
            for counter in &stripe.0 {
                counter.store(0, Ordering::Relaxed);
            }
        }
    }
}

/// This thread's stripe number, assigned round-robin on first use. The number
/// is shared by every cache the thread touches; it carries no cache state.
#[inline]
fn thread_stripe() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static STRIPE: Cell<usize> = const { Cell::new(usize::MAX) };
    }
    STRIPE.with(|s| {
        let mut stripe = s.get();
        if stripe == usize::MAX {
            stripe = NEXT.fetch_add(1, Ordering::Relaxed);
            s.set(stripe);
        }
        stripe
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_from_many_threads_add_up() {
        let counters = Counters::new();
        std::thread::scope(|s| {
            for _ in 0..8 {
                s.spawn(|| {
                    for _ in 0..1000 {
                        counters.incr(Counter::Hits);
                    }
                    counters.add(Counter::Evictions, 3);
                });
            }
        });
        let m = counters.snapshot();
        assert_eq!(m.hits, 8000);
        assert_eq!(m.evictions, 24);
        assert_eq!(m.misses, 0);
        counters.reset();
        assert_eq!(counters.snapshot(), Metrics::default());
    }

    #[test]
    fn hit_rate() {
        assert_eq!(Metrics::default().hit_rate(), 0.0);
        let m = Metrics {
            hits: 3,
            misses: 1,
            ..Metrics::default()
        };
        assert_eq!(m.hit_rate(), 0.75);
    }
}
