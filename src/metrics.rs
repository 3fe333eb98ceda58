//! Counters for what the cache does, and the [`Metrics`] snapshot of them.
//!
//! Every `get` counts a hit or a miss. A single shared counter would be one
//! cache line written by every core on every read, the very contention a
//! sharded map exists to avoid; so the counters are striped, each stripe alone
//! on its cache line, and [`Metrics`] sums the stripes when asked.
//!
//! Each live thread has a small id of its own (ids are reused when threads
//! exit). A thread whose id has an *exclusive* stripe counts with a plain load
//! and store, as nobody else writes that stripe: a locked read-modify-write
//! costs a quarter of a cache hit. Threads beyond the exclusive stripes share
//! a few stripes and count with `fetch_add`. Resetting records a baseline to
//! subtract rather than writing the stripes, which would race with their
//! owners' stores.

use std::cell::Cell;
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

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
    /// `get`s that did not find the key, or found it too stale to serve.
    pub misses: u64,
    /// The hits whose entry was older than the TTL.
    pub stale_hits: u64,
    /// The misses that found the key older than `ttl + max_stale` (see
    /// [`CacheBuilder::max_stale`](crate::CacheBuilder::max_stale)).
    pub expired: u64,
    /// Keys added to the cache (by `insert` or a read-through fetch).
    pub inserts: u64,
    /// Writes to keys already present (their age starts over).
    pub updates: u64,
    /// Entries removed to make room, by shrinking the bound, or refused as
    /// heavier than their shard's share.
    pub evictions: u64,
    /// Entries removed by `invalidate` (or `remove`, `retain`,
    /// `invalidate_if`), by `clear`, or because the fetcher answered
    /// [`Fetched::Gone`](crate::Fetched::Gone).
    pub invalidations: u64,
    /// Refreshes (by the refresher, or forced by `refresh` for a cached
    /// key) whose result was installed: a new value, or the old one renewed.
    pub refreshes: u64,
    /// Refreshes that failed, timed out or panicked; the cached value stays.
    /// Every fetch the refresher starts is a refresh, even one whose key was
    /// removed as it started (it then stores nothing).
    pub refresh_errors: u64,
    /// Loads (read-throughs of a key not cached, by `get_or_fetch`,
    /// `get_or_insert_with` or `refresh`) whose value was stored, including
    /// one stored and at once evicted as heavier than its shard's share
    /// (counted in `inserts` and `evictions` too, as such an `insert` is).
    pub loads: u64,
    /// Loads that failed, timed out or panicked.
    pub load_errors: u64,
    /// Fetches answered [`Fetched::Gone`](crate::Fetched::Gone): the key no
    /// longer exists at its source (its entry, if cached, was removed).
    pub gone: u64,
    /// `get_or_fetch` misses answered [`FetchError::Gone`](crate::FetchError::Gone)
    /// without a fetch, because the key's fetch answered `Gone` less than
    /// [`negative_ttl`](crate::CacheBuilder::negative_ttl) ago.
    pub negative_hits: u64,
    /// Fetched values not stored because the key was written, invalidated,
    /// removed or cleared since the fetch began.
    pub discarded: u64,
    /// Calls of the eviction listener that panicked (each caught; the cache
    /// carried on).
    pub listener_panics: u64,
    /// Times the refresher task panicked (in user code it runs: a key's
    /// `Clone`, `Hash` or `Eq`); each time it is logged and restarted.
    pub refresher_panics: u64,
}

impl Metrics {
    /// Every counter with its name, for exporters.
    #[cfg(feature = "metrics")]
    pub(crate) fn fields(&self) -> [(&'static str, u64); 17] {
        [
            ("hits", self.hits),
            ("misses", self.misses),
            ("stale_hits", self.stale_hits),
            ("expired", self.expired),
            ("inserts", self.inserts),
            ("updates", self.updates),
            ("evictions", self.evictions),
            ("invalidations", self.invalidations),
            ("refreshes", self.refreshes),
            ("refresh_errors", self.refresh_errors),
            ("loads", self.loads),
            ("load_errors", self.load_errors),
            ("gone", self.gone),
            ("negative_hits", self.negative_hits),
            ("discarded", self.discarded),
            ("listener_panics", self.listener_panics),
            ("refresher_panics", self.refresher_panics),
        ]
    }
}

/// One line a person reads:
///
/// ```
/// # use swr_cache::Cache;
/// let cache: Cache<u32, u32> = Cache::builder().build()?;
/// cache.insert(1, 1);
/// cache.get(&1);
/// cache.get(&2);
/// assert_eq!(
///     cache.metrics().to_string(),
///     "2 requests: 1 hit (50.0 %, 0 stale), 1 miss; 1 insert, 0 updates, \
///      0 evictions, 0 invalidations; 0 loads, 0 load errors, \
///      0 refreshes, 0 refresh errors"
/// );
/// # Ok::<(), swr_cache::ConfigError>(())
/// ```
impl std::fmt::Display for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let plural =
            |n: u64, one: &'static str, many: &'static str| if n == 1 { one } else { many };
        write!(
            f,
            "{} {}: {} {} ({:.1} %, {} stale), {} {}; {} {}, {} {}, {} {}, {} {}; \
             {} {}, {} {}, {} {}, {} {}",
            self.requests(),
            plural(self.requests(), "request", "requests"),
            self.hits,
            plural(self.hits, "hit", "hits"),
            self.hit_rate() * 100.0,
            self.stale_hits,
            self.misses,
            plural(self.misses, "miss", "misses"),
            self.inserts,
            plural(self.inserts, "insert", "inserts"),
            self.updates,
            plural(self.updates, "update", "updates"),
            self.evictions,
            plural(self.evictions, "eviction", "evictions"),
            self.invalidations,
            plural(self.invalidations, "invalidation", "invalidations"),
            self.loads,
            plural(self.loads, "load", "loads"),
            self.load_errors,
            plural(self.load_errors, "load error", "load errors"),
            self.refreshes,
            plural(self.refreshes, "refresh", "refreshes"),
            self.refresh_errors,
            plural(self.refresh_errors, "refresh error", "refresh errors"),
        )?;
        if self.expired > 0 {
            write!(f, "; {} expired", self.expired)?;
        }
        if self.gone > 0 {
            write!(f, "; {} gone", self.gone)?;
        }
        if self.negative_hits > 0 {
            write!(f, "; {} negative hits", self.negative_hits)?;
        }
        if self.discarded > 0 {
            write!(f, "; {} discarded", self.discarded)?;
        }
        if self.listener_panics > 0 {
            write!(f, "; {} listener panics", self.listener_panics)?;
        }
        if self.refresher_panics > 0 {
            write!(f, "; {} refresher panics", self.refresher_panics)?;
        }
        Ok(())
    }
}

impl Metrics {
    /// `hits + misses`: every `get` that counted (LangSmith's
    /// `total_requests`).
    pub fn requests(&self) -> u64 {
        self.hits + self.misses
    }

    /// `hits / (hits + misses)`, or 0 before the first `get`.
    pub fn hit_rate(&self) -> f64 {
        match self.requests() {
            0 => 0.0,
            requests => self.hits as f64 / requests as f64,
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
    Loads,
    LoadErrors,
    Discarded,
    Expired,
    Gone,
    ListenerPanics,
    RefresherPanics,
}

const COUNTERS: usize = 16;

/// Stripes shared by threads whose id has no exclusive stripe.
const SHARED_STRIPES: usize = 8;

#[repr(align(128))] // two cache lines: adjacent-line prefetch pairs them on x86
struct Stripe([AtomicU64; COUNTERS]);

/// A counter of the miss path's, off the stripes (a 17th striped counter
/// would double every stripe, and a hit's footprint with it), alone on
/// its lines so that its writes touch nothing a hit reads.
#[repr(align(128))]
struct Alone(AtomicU64);

impl Stripe {
    fn new() -> Self {
        Self(std::array::from_fn(|_| AtomicU64::new(0)))
    }
}

pub(crate) struct Counters {
    /// Written only by the thread with the stripe's id.
    exclusive: Box<[Stripe]>,
    /// Written with `fetch_add` by every other thread.
    shared: [Stripe; SHARED_STRIPES],
    /// [`Metrics::negative_hits`], counted with `fetch_add`: each one
    /// spares a fetch, so a shared write costs nothing that matters.
    negative_hits: Alone,
    /// The sums at the last reset.
    baseline: Mutex<Metrics>,
}

impl Counters {
    pub(crate) fn new() -> Self {
        let threads = std::thread::available_parallelism().map_or(4, |n| n.get());
        Self {
            exclusive: (0..(threads * 4).clamp(16, 256))
                .map(|_| Stripe::new())
                .collect(),
            shared: std::array::from_fn(|_| Stripe::new()),
            negative_hits: Alone(AtomicU64::new(0)),
            baseline: Mutex::new(Metrics::default()),
        }
    }

    #[inline]
    pub(crate) fn add(&self, counter: Counter, n: u64) {
        let id = thread_id();
        if let Some(stripe) = self.exclusive.get(id) {
            let cell = &stripe.0[counter as usize];
            cell.store(
                cell.load(Ordering::Relaxed).wrapping_add(n),
                Ordering::Relaxed,
            );
        } else {
            self.shared[id % SHARED_STRIPES].0[counter as usize].fetch_add(n, Ordering::Relaxed);
        }
    }

    #[inline]
    pub(crate) fn incr(&self, counter: Counter) {
        self.add(counter, 1);
    }

    /// Counts a miss answered from the record of gone keys.
    pub(crate) fn negative_hit(&self) {
        self.negative_hits.0.fetch_add(1, Ordering::Relaxed);
    }

    /// The sum of `counter` since the cache was built, whatever the resets.
    pub(crate) fn total(&self, counter: Counter) -> u64 {
        self.exclusive
            .iter()
            .chain(self.shared.iter())
            .map(|s| s.0[counter as usize].load(Ordering::Relaxed))
            .fold(0u64, u64::wrapping_add)
    }

    /// The sums since the cache was built, whatever the resets.
    fn totals(&self) -> Metrics {
        let sum = |c: Counter| self.total(c);
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
            loads: sum(Counter::Loads),
            load_errors: sum(Counter::LoadErrors),
            discarded: sum(Counter::Discarded),
            expired: sum(Counter::Expired),
            gone: sum(Counter::Gone),
            negative_hits: self.negative_hits.0.load(Ordering::Relaxed),
            listener_panics: sum(Counter::ListenerPanics),
            refresher_panics: sum(Counter::RefresherPanics),
        }
    }

    pub(crate) fn snapshot(&self) -> Metrics {
        let baseline = *self.baseline.lock().unwrap_or_else(|e| e.into_inner());
        let t = self.totals();
        Metrics {
            hits: t.hits.wrapping_sub(baseline.hits),
            misses: t.misses.wrapping_sub(baseline.misses),
            stale_hits: t.stale_hits.wrapping_sub(baseline.stale_hits),
            inserts: t.inserts.wrapping_sub(baseline.inserts),
            updates: t.updates.wrapping_sub(baseline.updates),
            evictions: t.evictions.wrapping_sub(baseline.evictions),
            invalidations: t.invalidations.wrapping_sub(baseline.invalidations),
            refreshes: t.refreshes.wrapping_sub(baseline.refreshes),
            refresh_errors: t.refresh_errors.wrapping_sub(baseline.refresh_errors),
            loads: t.loads.wrapping_sub(baseline.loads),
            load_errors: t.load_errors.wrapping_sub(baseline.load_errors),
            discarded: t.discarded.wrapping_sub(baseline.discarded),
            expired: t.expired.wrapping_sub(baseline.expired),
            gone: t.gone.wrapping_sub(baseline.gone),
            negative_hits: t.negative_hits.wrapping_sub(baseline.negative_hits),
            listener_panics: t.listener_panics.wrapping_sub(baseline.listener_panics),
            refresher_panics: t.refresher_panics.wrapping_sub(baseline.refresher_panics),
        }
    }

    pub(crate) fn reset(&self) {
        let mut baseline = self.baseline.lock().unwrap_or_else(|e| e.into_inner());
        *baseline = self.totals();
    }
}

/// Ids of live threads: the lowest free id is handed out first, so ids stay
/// small and dense however many threads come and go. Process-wide, as thread
/// ids are; it holds no cache state.
static THREAD_IDS: Mutex<ThreadIds> = Mutex::new(ThreadIds {
    next: 0,
    free: BinaryHeap::new(),
});

struct ThreadIds {
    next: usize,
    /// Lowest first, so a new thread takes an exclusive stripe if one is free.
    free: BinaryHeap<Reverse<usize>>,
}

/// What [`thread_id`] answers before a lease or after it is given back: no
/// exclusive stripe has it, so counting falls back to a shared stripe.
const NO_LEASE: usize = usize::MAX - 1;

/// Holds a thread's id and gives it back when the thread exits.
struct ThreadIdLease(usize);

impl ThreadIdLease {
    fn take() -> Self {
        let mut ids = THREAD_IDS.lock().unwrap_or_else(|e| e.into_inner());
        let id = match ids.free.pop() {
            Some(Reverse(id)) => id,
            None => {
                ids.next += 1;
                ids.next - 1
            }
        };
        Self(id)
    }
}

impl Drop for ThreadIdLease {
    fn drop(&mut self) {
        // This thread may still count while it tears down; once the id is
        // back in the pool it must do so on a shared stripe.
        let _ = ID.try_with(|id| id.set(NO_LEASE));
        let mut ids = THREAD_IDS.lock().unwrap_or_else(|e| e.into_inner());
        ids.free.push(Reverse(self.0));
    }
}

thread_local! {
    /// This thread's id once leased; `usize::MAX` before.
    static ID: Cell<usize> = const { Cell::new(usize::MAX) };
    static LEASE: ThreadIdLease = ThreadIdLease::take();
}

/// This thread's id, unique among live threads.
#[inline]
fn thread_id() -> usize {
    ID.with(|id| {
        let mut current = id.get();
        if current == usize::MAX {
            // Once the lease is dropped in thread teardown, it cannot be
            // taken again; a shared stripe is always safe to count on.
            current = LEASE.try_with(|lease| lease.0).unwrap_or(NO_LEASE);
            id.set(current);
        }
        current
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn live_threads_have_distinct_ids_reused_after_exit() {
        let ids: Vec<usize> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..8).map(|_| s.spawn(thread_id)).collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        // Threads in a scope may finish before others start, so ids can be
        // reused; those alive together must differ, which a barrier forces.
        let barrier = std::sync::Barrier::new(4);
        let together: Vec<usize> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..4)
                .map(|_| {
                    s.spawn(|| {
                        let id = thread_id();
                        barrier.wait();
                        id
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let mut distinct = together.clone();
        distinct.sort_unstable();
        distinct.dedup();
        assert_eq!(distinct.len(), 4, "{together:?}");
        assert!(ids.iter().all(|id| *id < 1024), "ids stay small: {ids:?}");
    }

    #[test]
    fn counts_from_more_threads_than_exclusive_stripes_add_up() {
        let counters = Counters::new();
        let threads = counters.exclusive.len() + 2 * SHARED_STRIPES;
        let barrier = std::sync::Barrier::new(threads);
        std::thread::scope(|s| {
            for _ in 0..threads {
                s.spawn(|| {
                    barrier.wait(); // all alive at once: some must share stripes
                    for _ in 0..1000 {
                        counters.incr(Counter::Misses);
                    }
                });
            }
        });
        assert_eq!(counters.snapshot().misses, threads as u64 * 1000);
    }

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
