//! The refresher task: one tokio task per cache that keeps entries fresh.
//!
//! Each shard files its entries by when their values go stale (the
//! store's `due` timer wheel), so the stale ones come out of it in O(due)
//! whatever each value's TTL. Every `refresh_interval`, whenever its
//! queue runs low while stale values remain, when readers asked for more
//! refreshes than their request list holds, and when values were marked
//! stale, the task takes stale values
//! from the wheels, as many as its queue needs (twice the concurrency
//! limit); as readers' requests arrive (refresh-on-read) it takes those,
//! and fetches them first. It fetches as many at a time as the limit
//! allows (adaptive by default, see [`limit`](super::limit)) and the
//! circuit breaker lets through ([`breaker`](super::breaker)), each fetch
//! bounded by `refresh_timeout`. What it holds and how a held key is let go
//! is in [`held`](super::held).
//!
//! # Cost
//!
//! A look for due values costs one lock of each shard and the wheel's
//! buckets passed since the last look, whatever the number of entries,
//! fresh or stale; taking `n` of them costs `O(n)` under their
//! shards' locks, at most `TAKE_BATCH` per hold of a lock. So a tick's cost
//! and lock hold time do not grow with the entries (`BENCHMARKS.md`:
//! 11-24 µs a wake-up at 10 k and at 1 M entries alike on this machine).
//!
//! A failed fetch (an error, a timeout, a panic) keeps the stale value,
//! which goes on being served, and is retried after a backoff that starts
//! at one `refresh_interval` and doubles with each failure, with jitter, up
//! to `max_retry_backoff`; meanwhile readers do not ask for it again.
//!
//! The task holds only a `Weak` reference: dropping the last cache handle
//! ends it. On a runtime that is always driven (a multi-thread one, or the
//! thread `start_thread` makes), it ticks the coarse clock `get` reads (see
//! [`crate::clock`]) every [`tick_period`]; on a
//! current-thread runtime, which may sit idle with the task in it, it
//! leaves the clock to the keeper or the precise time.

use std::future::Future;
use std::hash::{BuildHasher, Hash};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::task::Poll;

use tokio::runtime::{Handle, RuntimeFlavor};

use super::held::Holdings;
use super::requests::{Control, Nudges, Run, Signals};
use crate::clock::{Nanos, Ticker, duration_to_nanos};
use crate::excerpt::Excerpt;
use crate::fetch::{FetchError, panic_as_error};
use crate::inner::Inner;
use crate::metrics::Counter;

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
        let can_run = self.ages() && !self.is_disabled();
        let running = control.run.as_ref().is_some_and(|r| !r.task.is_finished());
        match (&control.runtime, can_run, running) {
            (Some(runtime), true, false) => {
                let runtime = runtime.clone();
                // A current-thread runtime runs the task only while some
                // thread drives it (its own, for `start_thread`), and may be
                // idle for good: the task then keeps the coarse clock only
                // on a runtime that is always driven, so that a stalled
                // task cannot freeze the ages every read judges.
                let driven = runtime.runtime_flavor() != RuntimeFlavor::CurrentThread
                    || control.owned.is_some();
                control.run = Some(self.spawn_refresher(&runtime, driven));
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

    /// Whether a refresher task runs for the cache now.
    pub(crate) fn is_refreshing(&self) -> bool {
        let control = self.refresher.control();
        control
            .run
            .as_ref()
            .is_some_and(|run| !run.task.is_finished())
    }

    /// Detaches the task, if one runs, and tells it to stop.
    pub(crate) fn stop_run(&self) -> Option<Run> {
        let mut control = self.refresher.control();
        control.runtime = None;
        let run = self.take_run(&mut control);
        if let Some(run) = &run {
            run.signals.stop();
        }
        control.retire_owned();
        run
    }

    /// Detaches the running task from the cache: stale reads stop asking
    /// and the read path goes back to the precise clock.
    fn take_run(&self, control: &mut Control) -> Option<Run> {
        self.refresher.nudging.store(false, Ordering::Relaxed);
        self.read.clock.stop_ticking();
        self.refresher.gauges.idle();
        control.run.take()
    }

    fn spawn_refresher(self: &Arc<Self>, runtime: &Handle, keeps_clock: bool) -> Run {
        let first = self.begin_task(keeps_clock);
        let signals = Arc::new(Signals::default());
        let task = runtime.spawn(supervise(
            Arc::downgrade(self),
            Arc::clone(&signals),
            self.store.hasher().clone(),
            first,
            keeps_clock,
        ));
        Run { signals, task }
    }

    /// Readies the store and the read path for a task that starts: returns
    /// its number and its hold on the clock.
    fn begin_task(self: &Arc<Self>, keeps_clock: bool) -> (u64, Ticking<K, V, S>) {
        // What an earlier task held, this one does not know of: given back
        // to the due values (O(entries), once per start); and an earlier
        // task still running (told to stop, not yet stopped) can take no
        // more.
        let number = self.refresher.tasks.fetch_add(1, Ordering::Relaxed) + 1;
        self.store.release_all(number);
        self.refresher.nudges.reset();
        let settings = self.settings.load();
        self.refresher
            .nudging
            .store(settings.refresh_on_read, Ordering::Relaxed);
        let interval = duration_to_nanos(settings.refresh_interval);
        self.read
            .clock
            .set_period(tick_period(self.ttl_nanos(), interval));
        let ticking = Ticking {
            cache: Arc::downgrade(self),
            ticker: keeps_clock.then(|| self.read.clock.start_ticking()),
        };
        (number, ticking)
    }
}

/// Runs the refresher task and, should it panic (in user code it runs: a
/// key's `Clone`, `Hash` or `Eq`), counts and logs the panic and starts a
/// new task after a refresh interval, unless it was stopped meanwhile. The
/// new task is numbered anew, which gives back to the store whatever the
/// one that panicked held (its own records may be half-changed). Without
/// this, readers' requests went on flowing to a task that was gone.
async fn supervise<K, V, S>(
    cache: Weak<Inner<K, V, S>>,
    signals: Arc<Signals>,
    hasher: S,
    (mut number, mut ticking): (u64, Ticking<K, V, S>),
    keeps_clock: bool,
) where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
    S: BuildHasher + Clone + Send + Sync + 'static,
{
    loop {
        let Some(nudges) = cache
            .upgrade()
            .map(|inner| Arc::clone(&inner.refresher.nudges))
        else {
            return;
        };
        let run = run_refresher(
            cache.clone(),
            Arc::clone(&signals),
            nudges,
            hasher.clone(),
            number,
            ticking,
        );
        let Err(FetchError::Panicked(panic)) = panic_as_error(async {
            run.await;
            Ok(())
        })
        .await
        else {
            return;
        };
        let Some(inner) = cache.upgrade() else { return };
        inner.counters.incr(Counter::RefresherPanics);
        tracing::error!(
            cause = %Excerpt(&panic),
            "the refresher panicked; a new one starts after a refresh interval"
        );
        let pause = inner.settings.load().refresh_interval;
        drop(inner);
        // A stop meanwhile wakes it (a permit stored by a `notify_one`
        // before this waits counts too), so `stop().await` does not wait
        // out the pause.
        let stopped = signals.wake.notified();
        let _ = tokio::time::timeout(pause, stopped).await;
        if signals.stop.load(Ordering::Acquire) {
            return;
        }
        let Some(inner) = cache.upgrade() else { return };
        // Under the control lock, as start and stop are: a stop since the
        // panic has detached this task, and a new one may run.
        let _control = inner.refresher.control();
        if signals.stop.load(Ordering::Acquire) {
            return;
        }
        (number, ticking) = inner.begin_task(keeps_clock);
    }
}

/// Owned by the task's future: when the future is dropped, however (the
/// task stopped, or its runtime shut down or was dropped, even before the
/// task first ran), the read path goes back to the precise clock, unless a
/// newer task ticks it by then. Without it, `get` would judge staleness by
/// a clock nobody ticks any more, and no entry would go stale again. `None`
/// for a task that does not keep the clock (its runtime may not be driven).
struct Ticking<K, V, S> {
    cache: Weak<Inner<K, V, S>>,
    ticker: Option<Ticker>,
}

impl<K, V, S> Drop for Ticking<K, V, S> {
    fn drop(&mut self) {
        if let (Some(ticker), Some(inner)) = (self.ticker, self.cache.upgrade()) {
            inner.read.clock.stop_ticking_if(ticker);
        }
    }
}

async fn run_refresher<K, V, S>(
    cache: Weak<Inner<K, V, S>>,
    signals: Arc<Signals>,
    nudges: Arc<Nudges>,
    hasher: S,
    number: u64,
    _ticking: Ticking<K, V, S>,
) where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
    S: BuildHasher + Clone + Send + Sync + 'static,
{
    let mut holdings = Holdings::new(hasher, number);
    let mut last_look: Option<Nanos> = None;
    let mut backlog = false;
    let mut finished = Vec::new();
    #[cfg(feature = "metrics")]
    let mut next_report: Nanos = 0;
    loop {
        if signals.stop.load(Ordering::Acquire) {
            break;
        }
        let Some(inner) = cache.upgrade() else { break };
        let now = inner.read.clock.tick();
        let settings = inner.settings.load_full();
        let interval = duration_to_nanos(settings.refresh_interval);
        for done in finished.drain(..) {
            holdings.finished(&inner, now, done);
        }
        holdings.set_batch(inner.fetcher.load().as_ref().map_or(1, |f| f.batch));
        // Requests dropped for want of room are for stale values marked
        // as asked for, whose readers will not ask again; values marked
        // stale may have no reader: look for them now.
        backlog |= holdings.take_nudged(&inner);
        holdings.retry_due(now);
        // From the last look and the interval as it is now, so a shorter
        // interval set by `configure` takes effect at once.
        let look_at = |last: Option<Nanos>| last.map_or(0, |at: Nanos| at.saturating_add(interval));
        if backlog || now >= look_at(last_look) {
            let want = holdings.keys_at_once(&settings).saturating_mul(2);
            backlog = holdings.take_due(&inner, now, want);
            if now >= look_at(last_look) {
                last_look = Some(now);
            }
        }
        holdings.start_fetches(&inner, now);
        if !signals.stop.load(Ordering::Acquire) {
            inner.refresher.gauges.publish(&holdings.pass(&settings));
            #[cfg(feature = "metrics")]
            if now >= next_report {
                next_report = now.saturating_add(REPORT_EVERY);
                inner.report_metrics(inner.refresher.gauges.read(true, &inner.read.clock));
            }
        }
        let tick = tick_period(inner.ttl_nanos(), interval);
        inner.read.clock.set_period(tick);
        let mut wake_at = look_at(last_look).min(now.saturating_add(tick));
        if let Some(start) = holdings.next_start_at(&settings) {
            wake_at = wake_at.min(start);
        }
        let wake_at = inner.read.clock.instant_at(wake_at);
        drop(inner);

        // Waits for a wake-up, a reader's request, fetches finished or the
        // next tick, whichever comes first, taking every finished fetch at
        // once. (Written out rather than with `tokio::select!`, so the
        // library needs no tokio macros and users' builds no proc-macro
        // for it.)
        let mut wake = std::pin::pin!(signals.wake.notified());
        let mut asked = std::pin::pin!(nudges.arrived.notified());
        let mut sleep = std::pin::pin!(tokio::time::sleep_until(wake_at));
        std::future::poll_fn(|cx| {
            let mut ready = wake.as_mut().poll(cx).is_ready();
            ready |= asked.as_mut().poll(cx).is_ready();
            while !holdings.fetching.is_empty() {
                let Poll::Ready(Some(done)) = holdings.fetching.poll_join_next(cx) else {
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

/// How often the task reports the cache's counters and gauges to the
/// `metrics` facade (it wakes at least every 100 ms).
#[cfg(feature = "metrics")]
const REPORT_EVERY: Nanos = 1_000_000_000;

/// How long the task waits at most between two ticks of the coarse clock:
/// a 64th of the TTL, within 1 ms ..= 100 ms, and no longer than the
/// refresh interval. An entry is judged stale up to two ticks late, so this
/// bounds how late a storm of entries written together starts refreshing
/// (at 1 s, a 5 s TTL's storm took 1.22× its floor, not 1.12×); ten
/// wake-ups a second cost a few microseconds whatever the entries.
fn tick_period(ttl: Nanos, interval: Nanos) -> Nanos {
    crate::clock::tick_period(ttl).min(interval)
}
