//! The refresher: one tokio task per cache that keeps entries fresh, and the
//! read-through and forced fetches that share its single flight.
//!
//! Every `refresh_interval` the task walks the map, shard by shard, and queues
//! each stale entry not already queued or backing off. The walk costs a few
//! nanoseconds per entry (about a millisecond per 100,000 entries); it holds
//! one shard's *read* lock at a time, which readers share, so it never stalls
//! a read, and it delays a write to that shard by at most one shard's walk
//! (`len / shards` entries, about 60 µs for 100,000 entries). It then fetches
//! the queue `max_concurrent_refreshes` at a time, each fetch bounded by
//! `refresh_timeout`. A `get` that finds a stale entry queues it at once
//! through a bounded channel (refresh-on-read), so a read entry need not wait
//! for the next interval.
//!
//! A failed fetch (an error, a timeout, a panic) keeps the stale value, which
//! goes on being served, and is retried after a backoff that starts at one
//! `refresh_interval` and doubles with each failure, with jitter, up to
//! `max_retry_backoff`.
//!
//! The task holds only a `Weak` reference: dropping the last [`Cache`] handle
//! ends it. Between passes it ticks the coarse clock `get` reads (see
//! [`crate::time`]), every `ttl / 16`, clamped to 1 ms ..= 1 s.

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, Hash};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use arc_swap::ArcSwapOption;
use tokio::runtime::Handle;
use tokio::sync::{Notify, mpsc};
use tokio::task::{JoinHandle, JoinSet};

use crate::builder::DefaultHasher;
use crate::cache::{Cache, Inner};
use crate::entry::Entry;
use crate::fetcher::FetchError;
use crate::flight::{Flight, wait};
use crate::time::{Nanos, duration_to_nanos};

/// Why [`Cache::start`] could not start the refresher.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum StartError {
    /// Not called from inside a tokio runtime; use [`Cache::start_on`].
    NoRuntime,
    /// The cache was built without a fetcher, so there is nothing to refresh with.
    NoFetcher,
}

impl std::fmt::Display for StartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::NoRuntime => f.write_str("not inside a tokio runtime; use start_on"),
            Self::NoFetcher => f.write_str("the cache has no fetcher to refresh with"),
        }
    }
}

impl std::error::Error for StartError {}

/// How many refresh-on-read requests wait for the task at most; past that a
/// stale read queues nothing, and the next interval's pass finds the entry.
const NUDGE_CAPACITY: usize = 4096;

/// The cache's side of the refresher.
pub(crate) struct Refresher<K> {
    /// Where stale reads queue their entry; `None` while no task runs.
    nudges: ArcSwapOption<mpsc::Sender<Queued<K>>>,
    /// Whether `get` should queue stale entries: a task runs and
    /// refresh-on-read is on. Read before anything else on the stale path.
    nudging: AtomicBool,
    control: Mutex<Control>,
}

/// Taken only by start, stop and configure.
#[derive(Default)]
struct Control {
    /// Set by `start` until `stop`: where the task should run when it can
    /// (it cannot while the TTL is `None` or `max_size` is 0).
    runtime: Option<Handle>,
    run: Option<Run>,
}

struct Run {
    signals: Arc<Signals>,
    task: JoinHandle<()>,
}

#[derive(Default)]
struct Signals {
    stop: AtomicBool,
    /// Wakes the task to stop or to read changed settings.
    wake: Notify,
}

impl Signals {
    fn stop(&self) {
        self.stop.store(true, Ordering::Release);
        self.wake.notify_one();
    }
}

impl<K: Clone + Send + Sync + 'static> Refresher<K> {
    pub(crate) fn new() -> Self {
        Self {
            nudges: ArcSwapOption::empty(),
            nudging: AtomicBool::new(false),
            control: Mutex::new(Control::default()),
        }
    }

    fn control(&self) -> MutexGuard<'_, Control> {
        // Control is left consistent at every step; a panic elsewhere while
        // holding it does not make it unusable.
        self.control.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues the stale entry of `key` for the task, unless it is queued
    /// already. Called by `get` with the entry's shard read-locked.
    #[inline]
    pub(crate) fn nudge<V>(
        &self,
        cache: &Arc<impl RefreshMarks<K> + 'static>,
        key: &K,
        entry: &Entry<V>,
    ) {
        if self.nudging.load(Ordering::Relaxed) && entry.try_queue_refresh() {
            let queued = Queued::new(cache, key.clone());
            if let Some(nudges) = &*self.nudges.load() {
                // A full channel drops the request, and its queued mark; the
                // mark is cleared here, as `Queued`'s drop would take the
                // shard lock this thread holds.
                if let Err(refused) = nudges.try_send(queued) {
                    entry.finish_refresh();
                    refused.into_inner().disarm();
                }
            }
        }
    }
}

impl<K> Drop for Refresher<K> {
    fn drop(&mut self) {
        let control = self.control.get_mut().unwrap_or_else(|e| e.into_inner());
        if let Some(run) = control.run.take() {
            run.signals.stop();
        }
    }
}

/// The entry marks a [`Queued`] clears, without the cache's type parameters.
pub(crate) trait RefreshMarks<K>: Send + Sync {
    fn finish_refresh(&self, key: &K);
}

impl<K, V, S> RefreshMarks<K> for Inner<K, V, S>
where
    K: Hash + Eq + Send + Sync,
    V: Send + Sync,
    S: BuildHasher + Clone + Send + Sync,
{
    fn finish_refresh(&self, key: &K) {
        if let Some(entry) = self.map.get(key) {
            entry.finish_refresh();
        }
    }
}

/// A key whose entry is marked as queued for refresh; the mark is cleared
/// when this is dropped, wherever that happens: refreshed, skipped, or left in
/// a queue or channel when the task stops.
struct Queued<K> {
    cache: Weak<dyn RefreshMarks<K>>,
    key: K,
}

impl<K: Send + Sync + 'static> Queued<K> {
    fn new(cache: &Arc<impl RefreshMarks<K> + 'static>, key: K) -> Self {
        let cache: Weak<dyn RefreshMarks<K>> = Arc::downgrade(cache) as _;
        Self { cache, key }
    }

    /// Drops this without touching the entry's mark.
    fn disarm(mut self) {
        self.cache = Weak::<Inert>::new() as _;
    }
}

/// Marks nothing: what a disarmed [`Queued`] points to (never allocated).
struct Inert;

impl<K> RefreshMarks<K> for Inert {
    fn finish_refresh(&self, _: &K) {}
}

impl<K> Drop for Queued<K> {
    fn drop(&mut self) {
        if let Some(cache) = self.cache.upgrade() {
            cache.finish_refresh(&self.key);
        }
    }
}

impl<K, V, S> Cache<K, V, S>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
    S: BuildHasher + Clone + Send + Sync + 'static,
{
    /// Starts the refresher on the current tokio runtime. Calling it again
    /// while it runs does nothing.
    ///
    /// With `ttl = None` or `max_size = 0` no task is spawned until
    /// [`configure`](Cache::configure) gives a TTL and a size.
    ///
    /// # Errors
    /// [`StartError::NoRuntime`] outside a tokio runtime,
    /// [`StartError::NoFetcher`] if the cache has no fetcher.
    pub fn start(&self) -> Result<(), StartError> {
        let runtime = Handle::try_current().map_err(|_| StartError::NoRuntime)?;
        self.start_on(&runtime)
    }

    /// Starts the refresher on `runtime`; see [`start`](Cache::start).
    ///
    /// # Errors
    /// [`StartError::NoFetcher`] if the cache has no fetcher.
    pub fn start_on(&self, runtime: &Handle) -> Result<(), StartError> {
        if self.inner.fetcher.is_none() {
            return Err(StartError::NoFetcher);
        }
        let mut control = self.inner.refresher.control();
        control.runtime = Some(runtime.clone());
        self.inner.reconcile(&mut control);
        Ok(())
    }

    /// Stops the refresher and waits until its task has ended. Fetches it
    /// started are cancelled; callers of [`get_or_fetch`](Cache::get_or_fetch)
    /// waiting on one of them get [`FetchError::Cancelled`].
    pub async fn stop(&self) {
        if let Some(run) = self.inner.stop_run() {
            // The task only ends by returning; a JoinError here could only be
            // the runtime shutting down, which ends it just the same.
            let _ = run.task.await;
        }
    }

    /// Stops the refresher without waiting: [`stop`](Cache::stop) for
    /// non-async code. The task ends at its next wake-up, at once if idle.
    pub fn shutdown(&self) {
        self.inner.stop_run();
    }

    /// Whether the refresher task is running.
    pub fn is_refreshing(&self) -> bool {
        let control = self.inner.refresher.control();
        control
            .run
            .as_ref()
            .is_some_and(|run| !run.task.is_finished())
    }

    /// The cached value for `key`, fresh or stale; on a miss, fetches it,
    /// caches it and returns it. Concurrent misses of one key make one fetch,
    /// whose value or error they all get.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use swr_cache::Cache;
    ///
    /// let cache: Cache<String, usize> = Cache::builder()
    ///     .fetcher(|key: String| async move { Ok::<_, std::io::Error>(key.len()) })
    ///     .build()?;
    /// assert_eq!(cache.get_or_fetch("four").await?, 4);
    /// assert_eq!(cache.get("four"), Some(4));
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    /// The fetch's [`FetchError`]; nothing is cached then.
    pub async fn get_or_fetch<Q>(&self, key: &Q) -> Result<V, FetchError>
    where
        K: std::borrow::Borrow<Q>,
        Q: ToOwned<Owned = K> + Hash + Eq + ?Sized,
    {
        if let Some(value) = self.get(key) {
            return Ok(value);
        }
        self.fetch_now(key.to_owned()).await
    }

    /// Revalidates `key` now: fetches it (joining a fetch already under way)
    /// and installs the result, unless a newer write lands first. Returns the
    /// value the cache holds afterwards. An uncached key is fetched and cached.
    ///
    /// # Errors
    /// The fetch's [`FetchError`]; the cached value, if any, is kept.
    pub async fn refresh<Q>(&self, key: &Q) -> Result<V, FetchError>
    where
        K: std::borrow::Borrow<Q>,
        Q: ToOwned<Owned = K> + Hash + Eq + ?Sized,
    {
        self.fetch_now(key.to_owned()).await
    }

    async fn fetch_now(&self, key: K) -> Result<V, FetchError> {
        let runtime = Handle::try_current().map_err(|_| FetchError::NoRuntime)?;
        match self.inner.join_or_start_flight(key)? {
            Flight::Joined(flight) => wait(flight).await,
            // Spawned, not awaited here: the fetch finishes and fills the
            // cache even if every caller waiting on it goes away.
            Flight::Started(drive) => runtime
                .spawn(drive)
                .await
                .unwrap_or(Err(FetchError::Cancelled)),
        }
    }
}

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

    fn reconcile(self: &Arc<Self>, control: &mut Control) {
        let can_run = self.settings.ttl_nanos() != 0 && !self.is_disabled();
        let running = control.run.as_ref().is_some_and(|r| !r.task.is_finished());
        match (&control.runtime, can_run, running) {
            (Some(runtime), true, false) => {
                let runtime = runtime.clone();
                control.run = Some(self.spawn_refresher(&runtime));
            }
            (_, true, true) => {
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

    fn stop_run(&self) -> Option<Run> {
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
        self.clock.set_ticking(false);
        control.run.take()
    }

    fn spawn_refresher(self: &Arc<Self>, runtime: &Handle) -> Run {
        let (nudges, nudged) = mpsc::channel(NUDGE_CAPACITY);
        self.refresher.nudges.store(Some(Arc::new(nudges)));
        self.refresher
            .nudging
            .store(self.refresh.on_read, Ordering::Relaxed);
        self.clock.set_ticking(true);
        let signals = Arc::new(Signals::default());
        let task = runtime.spawn(run_refresher(
            Arc::downgrade(self),
            Arc::clone(&signals),
            nudged,
            self.map.hasher().0.clone(),
        ));
        Run { signals, task }
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
        let now = inner.clock.tick();
        let interval = duration_to_nanos(inner.settings.refresh_interval());
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
        let ttl = inner.settings.ttl_nanos();
        let tick = (ttl / 16).clamp(1_000_000, 1_000_000_000).min(interval);
        let next_scan = last_scan.map_or(now, |at| at.saturating_add(interval));
        let wake_at = inner
            .clock
            .instant_at(next_scan.min(now.saturating_add(tick)));
        drop(inner);

        tokio::select! {
            () = signals.wake.notified() => {}
            Some(queued) = nudged.recv() => nudges.push(queued),
            Some(done) = pass.fetching.join_next(), if !pass.fetching.is_empty() => {
                // A fetch task only fails by being aborted, which happens
                // only when this loop drops the set.
                if let Ok(done) = done {
                    finished.push(done);
                }
            }
            () = tokio::time::sleep_until(wake_at) => {}
        }
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
        let ttl = inner.settings.ttl_nanos();
        if ttl == 0 {
            return;
        }
        self.backoff.retain(|key, _| inner.map.contains_key(key));
        for entry in inner.map.iter() {
            if entry.is_stale(now, ttl)
                && !self.is_backing_off(entry.key(), now)
                && entry.try_queue_refresh()
            {
                self.queue
                    .push_back(Queued::new(inner, entry.key().clone()));
            }
        }
    }

    fn nudged(&mut self, queued: Queued<K>, now: Nanos) {
        if !self.is_backing_off(&queued.key, now) {
            self.queue.push_back(queued);
        }
    }

    /// Starts fetches from the queue while fewer than the limit run.
    fn start_fetches(&mut self, inner: &Arc<Inner<K, V, S>>) {
        while self.fetching.len() < inner.refresh.max_concurrent {
            let Some(queued) = self.queue.pop_front() else {
                break;
            };
            if !inner.map.contains_key(&queued.key) {
                continue;
            }
            let key = queued.key.clone();
            // Start refuses to run without a fetcher, so a flight always starts.
            let Ok(flight) = inner.join_or_start_flight(key) else {
                continue;
            };
            match flight {
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
        let base = duration_to_nanos(inner.settings.refresh_interval());
        let cap = duration_to_nanos(inner.refresh.max_retry_backoff);
        let backoff = self.backoff.entry(key.clone()).or_insert(Backoff {
            failures: 0,
            retry_at: now,
        });
        backoff.failures = backoff.failures.saturating_add(1);
        let delay = retry_delay(base, cap, backoff.failures, self.jitter.next_unit());
        backoff.retry_at = now.saturating_add(delay);
    }
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
        Self(DefaultHasher::default().hash_one(0u64) | 1)
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
