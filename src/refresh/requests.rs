//! The cache's side of the refresher: where reads queue stale keys, and the
//! handle of the task that takes them. Plain data and the read path's one
//! step (`nudge`); the task itself is in `task.rs`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use arc_swap::ArcSwapOption;
use tokio::runtime::Handle;
use tokio::sync::{Notify, mpsc};
use tokio::task::JoinHandle;

use crate::store::Node;

/// How many refresh-on-read requests wait for the task at most; past that a
/// stale read queues nothing, and the next interval's pass finds the entry.
pub(crate) const NUDGE_CAPACITY: usize = 4096;

/// The cache's side of the refresher.
pub(crate) struct Refresher<K> {
    /// Where stale reads queue their entry; `None` while no task runs.
    pub(crate) nudges: ArcSwapOption<mpsc::Sender<Queued<K>>>,
    /// Whether `get` should queue stale entries: a task runs and
    /// refresh-on-read is on. Read before anything else on the stale path.
    pub(crate) nudging: AtomicBool,
    control: Mutex<Control>,
}

/// Taken only by start, stop and configure.
#[derive(Default)]
pub(crate) struct Control {
    /// Set by `start` until `stop`: where the task should run when it can
    /// (it cannot while the TTL is `None` or the capacity is 0).
    pub(crate) runtime: Option<Handle>,
    pub(crate) run: Option<Run>,
}

pub(crate) struct Run {
    pub(crate) signals: Arc<Signals>,
    pub(crate) task: JoinHandle<()>,
}

#[derive(Default)]
pub(crate) struct Signals {
    pub(crate) stop: AtomicBool,
    /// Wakes the task to stop or to read changed settings.
    pub(crate) wake: Notify,
}

impl Signals {
    pub(crate) fn stop(&self) {
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

    pub(crate) fn control(&self) -> MutexGuard<'_, Control> {
        // Control is left consistent at every step; a panic elsewhere while
        // holding it does not make it unusable.
        self.control.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues the stale entry `node` for the task, unless it is queued
    /// already. Called by `get` with the entry's shard read-locked.
    #[inline]
    pub(crate) fn nudge<V>(&self, cache: &Arc<impl RefreshMarks<K> + 'static>, node: &Node<K, V>) {
        if self.nudging.load(Ordering::Relaxed) && node.meta.try_queue_refresh() {
            let queued = Queued::new(cache, node.key.clone());
            if let Some(nudges) = &*self.nudges.load() {
                // A full channel drops the request, and its queued mark; the
                // mark is cleared here, as `Queued`'s drop would take the
                // shard lock this thread holds.
                if let Err(refused) = nudges.try_send(queued) {
                    node.meta.finish_refresh();
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

/// A key whose entry is marked as queued for refresh; the mark is cleared
/// when this is dropped, wherever that happens: refreshed, skipped, or left in
/// a queue or channel when the task stops.
pub(crate) struct Queued<K> {
    cache: Weak<dyn RefreshMarks<K>>,
    pub(crate) key: K,
}

impl<K: Send + Sync + 'static> Queued<K> {
    pub(crate) fn new(cache: &Arc<impl RefreshMarks<K> + 'static>, key: K) -> Self {
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
