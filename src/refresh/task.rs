//! The refresher task: one tokio task per cache that keeps entries fresh.
//!
//! Every `refresh_interval` the task walks the store, shard by shard, and
//! queues each stale entry not already queued or backing off. The walk costs
//! a few nanoseconds per entry (about a millisecond per 100,000 entries); it
//! holds one shard's *read* lock at a time, which readers share, so it never
//! stalls a read, and it delays a write to that shard by at most one shard's
//! walk. It then fetches the queue `max_concurrent_refreshes` at a time, each
//! fetch bounded by `refresh_timeout`. A `get` that finds a stale entry
//! queues it at once through a bounded channel (refresh-on-read), so a read
//! entry need not wait for the next interval.
//!
//! A failed fetch (an error, a timeout, a panic) keeps the stale value, which
//! goes on being served, and is retried after a backoff that starts at one
//! `refresh_interval` and doubles with each failure, with jitter, up to
//! `max_retry_backoff`.
//!
//! The task holds only a `Weak` reference: dropping the last cache handle
//! ends it. Between passes it ticks the coarse clock `get` reads (see
//! [`crate::clock`]), every `ttl / 16`, clamped to 1 ms ..= 1 s.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::hash::{BuildHasher, Hash};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::task::Poll;

use tokio::runtime::Handle;
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use super::requests::{Control, NUDGE_CAPACITY, Queued, Run, Signals};
use crate::clock::{Nanos, Ticker, duration_to_nanos};
use crate::fetcher::FetchError;
use crate::flight::{Flight, Purpose, wait};
use crate::hasher::DefaultBuildHasher;
use crate::inner::Inner;

impl<K, V, S> Inner<K, V, S>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
    S: BuildHasher + Clone + Send + Sync + 'static,
{
    /// Called after `start` or a settings change: spawns the task if it
    /// should run and does not, stops it if it runs and should not, or wakes
    /// it to read the new settings.
    pub(crate) fn reconcile_refresher(self: &Arc<Self>) {
        let mut control = self.refresher.control();
        self.reconcile(&mut control);
    }

    pub(crate) fn reconcile(self: &Arc<Self>, control: &mut Control) {
        let can_run = self.ttl_nanos() != 0 && !self.is_disabled();
        let running = control.run.as_ref().is_some_and(|r| !r.task.is_finished());
        match (&control.runtime, can_run, running) {
            (Some(runtime), true, false) => {
                let runtime = runtime.clone();
                control.run = Some(self.spawn_refresher(&runtime));
            }
            (_, true, true) => {
                let on_read = self.settings.load().refresh_on_read;
                self.refresher.nudging.store(on_read, Ordering::Relaxed);
                if let Some(run) = &control.run {
                    run.signals.wake.notify_one();
                }
            }
            (_, false, true) => {
                if let Some(run) = self.take_run(control) {
                    run.signals.stop();
                }
            }
            _ => {}
        }
    }

    /// Detaches the task, if one runs, and tells it to stop.
    pub(crate) fn stop_run(&self) -> Option<Run> {
        let mut control = self.refresher.control();
        control.runtime = None;
        let run = self.take_run(&mut control)?;
        run.signals.stop();
        Some(run)
    }

    /// Detaches the running task from the cache: stale reads stop queuing
    /// and the read path goes back to the precise clock.
    fn take_run(&self, control: &mut Control) -> Option<Run> {
        self.refresher.nudging.store(false, Ordering::Relaxed);
        self.refresher.nudges.store(None);
        self.read.clock.stop_ticking();
        control.run.take()
    }

    fn spawn_refresher(self: &Arc<Self>, runtime: &Handle) -> Run {
        let (nudges, nudged) = mpsc::channel(NUDGE_CAPACITY);
        self.refresher.nudges.store(Some(Arc::new(nudges)));
        let on_read = self.settings.load().refresh_on_read;
        self.refresher.nudging.store(on_read, Ordering::Relaxed);
        let settings = self.settings.load();
        let interval = duration_to_nanos(settings.refresh_interval);
        self.read
            .clock
            .set_period(tick_period(self.ttl_nanos(), interval));
        let ticking = Ticking {
            cache: Arc::downgrade(self),
            ticker: self.read.clock.start_ticking(),
        };
        let signals = Arc::new(Signals::default());
        let task = runtime.spawn(run_refresher(
            Arc::downgrade(self),
            Arc::clone(&signals),
            nudged,
            self.store.hasher().clone(),
            ticking,
        ));
        Run { signals, task }
    }
}

/// Owned by the task's future: when the future is dropped, however (the
/// task stopped, or its runtime shut down or was dropped, even before the
/// task first ran), the read path goes back to the precise clock, unless a
/// newer task ticks it by then. Without it, `get` would judge staleness by
/// a clock nobody ticks any more, and no entry would go stale again.
struct Ticking<K, V, S> {
    cache: Weak<Inner<K, V, S>>,
    ticker: Ticker,
}

impl<K, V, S> Drop for Ticking<K, V, S> {
    fn drop(&mut self) {
        if let Some(inner) = self.cache.upgrade() {
            inner.read.clock.stop_ticking_if(self.ticker);
        }
    }
}

/// Failures of one key's fetches, while they keep failing.
struct Backoff {
    failures: u32,
    retry_at: Nanos,
}

/// The task's own state.
struct Pass<K, V, S> {
    queue: VecDeque<Queued<K>>,
    fetching: JoinSet<(Queued<K>, Result<V, FetchError>)>,
    backoff: HashMap<K, Backoff, S>,
    jitter: Jitter,
}

async fn run_refresher<K, V, S>(
    cache: Weak<Inner<K, V, S>>,
    signals: Arc<Signals>,
    mut nudged: mpsc::Receiver<Queued<K>>,
    hasher: S,
    _ticking: Ticking<K, V, S>,
) where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
    S: BuildHasher + Clone + Send + Sync + 'static,
{
    let mut pass = Pass {
        queue: VecDeque::new(),
        fetching: JoinSet::new(),
        backoff: HashMap::with_hasher(hasher),
        jitter: Jitter::new(),
    };
    let mut last_scan: Option<Nanos> = None;
    let mut nudges = Vec::new();
    let mut finished = Vec::new();
    loop {
        if signals.stop.load(Ordering::Acquire) {
            break;
        }
        let Some(inner) = cache.upgrade() else { break };
        let now = inner.read.clock.tick();
        let settings = inner.settings.load_full();
        let interval = duration_to_nanos(settings.refresh_interval);
        for (queued, result) in finished.drain(..) {
            pass.finished(&inner, now, queued, result);
        }
        for queued in nudges.drain(..) {
            pass.nudged(queued, now);
        }
        let next_scan = last_scan.map_or(now, |at: Nanos| at.saturating_add(interval));
        if now >= next_scan {
            pass.scan(&inner, now);
            last_scan = Some(now);
        }
        pass.start_fetches(&inner);
        let ttl = inner.ttl_nanos();
        let tick = tick_period(ttl, interval);
        inner.read.clock.set_period(tick);
        let next_scan = last_scan.map_or(now, |at| at.saturating_add(interval));
        let wake_at = inner
            .read
            .clock
            .instant_at(next_scan.min(now.saturating_add(tick)));
        drop(inner);

        // Waits for a wake-up, stale reads queued, fetches finished or the
        // next tick, whichever comes first, taking everything ready at once
        // so none of them starves the others. (Written out rather than with
        // `tokio::select!`, so the library needs no tokio macros and users'
        // builds no proc-macro for it.)
        let mut wake = std::pin::pin!(signals.wake.notified());
        let mut sleep = std::pin::pin!(tokio::time::sleep_until(wake_at));
        std::future::poll_fn(|cx| {
            let mut ready = wake.as_mut().poll(cx).is_ready();
            while nudges.len() < NUDGE_CAPACITY {
                match nudged.poll_recv(cx) {
                    Poll::Ready(Some(queued)) => nudges.push(queued),
                    // Closed (the cache is gone) or empty.
                    Poll::Ready(None) | Poll::Pending => break,
                }
                ready = true;
            }
            while !pass.fetching.is_empty() {
                let Poll::Ready(Some(done)) = pass.fetching.poll_join_next(cx) else {
                    break;
                };
                // A fetch task only fails by being aborted, which happens
                // only when this loop drops the set.
                if let Ok(done) = done {
                    finished.push(done);
                }
                ready = true;
            }
            ready |= sleep.as_mut().poll(cx).is_ready();
            if ready {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        })
        .await;
    }
}

impl<K, V, S> Pass<K, V, S>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
    S: BuildHasher + Clone + Send + Sync + 'static,
{
    fn is_backing_off(&self, key: &K, now: Nanos) -> bool {
        self.backoff.get(key).is_some_and(|b| b.retry_at > now)
    }

    /// Queues every stale entry not queued already nor backing off.
    fn scan(&mut self, inner: &Arc<Inner<K, V, S>>, now: Nanos) {
        let ttl = inner.ttl_nanos();
        if ttl == 0 {
            return;
        }
        self.backoff
            .retain(|key, _| inner.store.read(key, |_| ()).is_some());
        let (queue, backoff) = (&mut self.queue, &self.backoff);
        inner.store.for_each(|node| {
            let backing_off = || backoff.get(&node.key).is_some_and(|b| b.retry_at > now);
            if node.meta.is_stale(now, ttl) && !backing_off() && node.meta.try_queue_refresh() {
                queue.push_back(Queued::new(inner, node.key.clone()));
            }
        });
    }

    fn nudged(&mut self, queued: Queued<K>, now: Nanos) {
        if !self.is_backing_off(&queued.key, now) {
            self.queue.push_back(queued);
        }
    }

    /// Starts fetches from the queue while fewer than the limit run.
    fn start_fetches(&mut self, inner: &Arc<Inner<K, V, S>>) {
        let max_concurrent = inner.settings.load().max_concurrent_refreshes;
        while self.fetching.len() < max_concurrent {
            let Some(queued) = self.queue.pop_front() else {
                break;
            };
            let key = queued.key.clone();
            // Start refuses to run without a fetcher, so a flight always starts.
            let Ok(flight) = inner.join_or_start_flight(key, Purpose::Refresh) else {
                continue;
            };
            match flight {
                // Removed since it was queued: left alone, not loaded again.
                Flight::Gone => continue,
                Flight::Started(drive) => self.fetching.spawn(async move { (queued, drive.await) }),
                Flight::Joined(flight) => self
                    .fetching
                    .spawn(async move { (queued, wait(flight).await) }),
            };
        }
    }

    fn finished(
        &mut self,
        inner: &Inner<K, V, S>,
        now: Nanos,
        queued: Queued<K>,
        result: Result<V, FetchError>,
    ) {
        let key = &queued.key;
        if result.is_ok() {
            self.backoff.remove(key);
            return;
        }
        let settings = inner.settings.load();
        let base = duration_to_nanos(settings.refresh_interval);
        let cap = duration_to_nanos(settings.max_retry_backoff);
        let backoff = self.backoff.entry(key.clone()).or_insert(Backoff {
            failures: 0,
            retry_at: now,
        });
        backoff.failures = backoff.failures.saturating_add(1);
        let delay = retry_delay(base, cap, backoff.failures, self.jitter.next_unit());
        backoff.retry_at = now.saturating_add(delay);
    }
}

/// How long the task waits at most between two ticks of the coarse clock:
/// a sixteenth of the TTL, within 1 ms ..= 1 s, and no longer than the
/// refresh interval.
fn tick_period(ttl: Nanos, interval: Nanos) -> Nanos {
    (ttl / 16).clamp(1_000_000, 1_000_000_000).min(interval)
}

/// The wait before retry number `failures` (1 for the first): `base` doubled
/// per failure after the first, capped at `cap`, then scaled by a jitter
/// factor in `[0.5, 1)` (from `unit` in `[0, 1)`), so keys that failed together
/// do not retry together, and each wait is at least as long as the one before
/// until the cap is reached.
fn retry_delay(base: Nanos, cap: Nanos, failures: u32, unit: f64) -> Nanos {
    let doublings = failures.saturating_sub(1).min(63);
    let delay = base.saturating_mul(1u64 << doublings).min(cap);
    (delay as f64 * (0.5 + 0.5 * unit)) as Nanos
}

/// A small xorshift generator, seeded at random per task.
struct Jitter(u64);

impl Jitter {
    fn new() -> Self {
        Self(DefaultBuildHasher::default().hash_one(0u64) | 1)
    }

    /// A number in `[0, 1)`.
    fn next_unit(&mut self) -> f64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_delays_grow_with_jitter_up_to_the_cap() {
        let base = 1_000;
        let cap = 10_000;
        assert_eq!(retry_delay(base, cap, 1, 0.0), 500);
        assert_eq!(retry_delay(base, cap, 2, 0.0), 1_000);
        assert_eq!(retry_delay(base, cap, 3, 0.999_999), 3_999);
        assert_eq!(retry_delay(base, cap, 10, 0.999_999), 9_999);
        assert_eq!(retry_delay(base, cap, u32::MAX, 0.0), 5_000);
        // The slowest draw for one failure is never slower than the fastest
        // draw for the next, until the cap.
        for failures in 1..4 {
            assert!(
                retry_delay(base, cap, failures, 0.999)
                    <= retry_delay(base, cap, failures + 1, 0.0)
            );
        }
    }

    #[test]
    fn jitter_is_in_the_unit_interval_and_varies() {
        let mut jitter = Jitter::new();
        let draws: Vec<f64> = (0..1000).map(|_| jitter.next_unit()).collect();
        assert!(draws.iter().all(|d| (0.0..1.0).contains(d)));
        let mean = draws.iter().sum::<f64>() / draws.len() as f64;
        assert!((0.4..0.6).contains(&mean), "mean {mean}");
    }
}
