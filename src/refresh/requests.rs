//! The cache's side of the refresher: where reads ask for refreshes, and
//! the handle of the task that takes them. Plain data and the read path's
//! one step ([`Refresher::nudge`]); the task itself is in `task.rs`.
//!
//! A reader that finds a value stale claims the value's nudge bit (only the
//! first reader of each value wins it), and, once it has let the value go,
//! leaves a [`Nudge`] (shard, fingerprint,
//! version: no key clone) in a list allocated once, and wakes the task. A
//! full list drops the request and tells the task so: the value is stale
//! (and marked as asked for, so its readers do not ask again), and the task
//! looks for the due values at once rather than at the next interval.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::runtime::Handle;
use tokio::sync::{Notify, oneshot};
use tokio::task::JoinHandle;

use super::Gauges;
use crate::store::Nudge;

/// How many readers' requests wait for the task at most.
pub(crate) const NUDGE_CAPACITY: usize = 4096;

/// The cache's side of the refresher.
pub(crate) struct Refresher {
    /// Whether `get` should ask for refreshes: a task runs and
    /// refresh-on-read is on. Read before anything else on the stale path.
    pub(crate) nudging: AtomicBool,
    pub(crate) nudges: Arc<Nudges>,
    /// The last number given to a task: a task takes entries from the
    /// store only while its number is the store's (see `release_all`).
    pub(crate) tasks: AtomicU64,
    /// What the task last published of its state.
    pub(crate) gauges: Gauges,
    control: Mutex<Control>,
}

/// Taken only by start, stop and configure.
#[derive(Default)]
pub(crate) struct Control {
    /// Set by `start` until `stop`: where the task should run when it can
    /// (it cannot while the TTL is `None` or the capacity is 0).
    pub(crate) runtime: Option<Handle>,
    pub(crate) run: Option<Run>,
    /// Set while the refresher runs on the thread `start_thread` made:
    /// dropping it ends that thread and its runtime.
    pub(crate) owned: Option<oneshot::Sender<()>>,
}

impl Control {
    /// Ends the thread made for the refresher, if there is one.
    pub(crate) fn retire_owned(&mut self) {
        self.owned = None;
    }
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

/// Readers' requests waiting for the task, in a list that never grows
/// past the capacity it was given when the task started.
#[derive(Default)]
pub(crate) struct Nudges {
    waiting: Mutex<Vec<Nudge>>,
    /// The task should look for due values now: requests were dropped for
    /// want of room, or values were marked stale, since it last took.
    look: AtomicBool,
    /// Wakes the task when a request arrives.
    pub(crate) arrived: Notify,
}

impl Nudges {
    fn waiting(&self) -> MutexGuard<'_, Vec<Nudge>> {
        // A push or swap cannot panic halfway; carry on past the poison.
        self.waiting.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Leaves `nudge` for the task, or, if the list is full, a note that a
    /// request was dropped; no allocation.
    fn push(&self, nudge: Nudge) {
        let mut waiting = self.waiting();
        let wake = if waiting.len() < waiting.capacity() {
            waiting.push(nudge);
            true
        } else {
            // Once per look: the reads that overflow after it need nothing more.
            !self.look.swap(true, Ordering::Relaxed)
        };
        drop(waiting);
        if wake {
            self.arrived.notify_one();
        }
    }

    /// Asks the task to look for due values now (values were marked
    /// stale: they are at the heads, and nobody may read them).
    pub(crate) fn ask_for_look(&self) {
        self.look.store(true, Ordering::Relaxed);
        self.arrived.notify_one();
    }

    /// Empties the list and gives it room for [`NUDGE_CAPACITY`] requests;
    /// for a task that starts.
    pub(crate) fn reset(&self) {
        let mut waiting = self.waiting();
        waiting.clear();
        waiting.reserve_exact(NUDGE_CAPACITY);
    }

    /// Swaps the waiting requests into `into` (emptied first; it should
    /// have the same room, which the list then keeps); returns whether a
    /// look at the due values was asked for since the last take.
    pub(crate) fn take(&self, into: &mut Vec<Nudge>) -> bool {
        into.clear();
        let mut waiting = self.waiting();
        std::mem::swap(&mut *waiting, into);
        self.look.swap(false, Ordering::Relaxed)
    }
}

impl Refresher {
    pub(crate) fn new() -> Self {
        Self {
            nudging: AtomicBool::new(false),
            nudges: Arc::default(),
            tasks: AtomicU64::new(0),
            gauges: Gauges::default(),
            control: Mutex::new(Control::default()),
        }
    }

    pub(crate) fn control(&self) -> MutexGuard<'_, Control> {
        // Control is left consistent at every step; a panic elsewhere while
        // holding it does not make it unusable.
        self.control.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Asks the task to refresh a value a reader found stale, and whose
    /// nudge bit that reader claimed. Called with no lock held.
    pub(crate) fn nudge(&self, nudge: Nudge) {
        self.nudges.push(nudge);
    }
}

impl Drop for Refresher {
    fn drop(&mut self) {
        let control = self.control.get_mut().unwrap_or_else(|e| e.into_inner());
        if let Some(run) = control.run.take() {
            run.signals.stop();
        }
        control.retire_owned();
    }
}
