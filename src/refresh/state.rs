//! What operators see of the refresher: [`RefresherState`], from gauges the
//! task publishes once per pass (a few relaxed stores, no lock), so that
//! reading them costs a dashboard nothing and the task nothing more.

use std::sync::atomic::{AtomicU8, AtomicU64, AtomicUsize, Ordering};
use std::time::Instant;

use crate::clock::{Clock, Nanos};

/// The refresher's state, from [`Cache::refresher_state`]: what its task
/// saw at its last pass (it passes at least every tick of the coarse clock,
/// and whenever a fetch ends or a reader asks).
///
/// [`Cache::refresher_state`]: crate::Cache::refresher_state
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct RefresherState {
    /// Whether a refresher task runs.
    pub running: bool,
    /// Keys being fetched.
    pub in_flight: usize,
    /// How many calls of the fetcher may run at once now: the adaptive
    /// limit, or the fixed one. A call fetches one key, or with a batch
    /// fetcher up to `max_batch`.
    pub limit: usize,
    /// Keys waiting for a fetch slot (or, while the breaker is open, for
    /// the upstream to answer).
    pub queued: usize,
    /// Keys waiting out their backoff after a failed fetch.
    pub backing_off: usize,
    /// The circuit breaker.
    pub breaker: BreakerState,
    /// When a fetch of the refresher's last brought an answer (a value,
    /// unchanged, or gone); `None` if none has yet.
    pub last_answer: Option<Instant>,
}

/// The circuit breaker's state (see
/// [the refresher's numbers](crate#the-refreshers-numbers)).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum BreakerState {
    /// Fetches start as the concurrency limit allows.
    Closed,
    /// The upstream is failing: no fetch starts but a probe now and then.
    Open,
    /// A probe is under way.
    Probing,
}

impl BreakerState {
    fn to_u8(self) -> u8 {
        match self {
            Self::Closed => 0,
            Self::Open => 1,
            Self::Probing => 2,
        }
    }

    fn from_u8(byte: u8) -> Self {
        match byte {
            1 => Self::Open,
            2 => Self::Probing,
            _ => Self::Closed,
        }
    }
}

/// The numbers the task publishes for [`RefresherState`]; written by the
/// task only (or zeroed when it is detached), read by anyone.
#[derive(Default)]
pub(crate) struct Gauges {
    in_flight: AtomicUsize,
    limit: AtomicUsize,
    queued: AtomicUsize,
    backing_off: AtomicUsize,
    breaker: AtomicU8,
    /// The clock's reading at the last answer, plus one; 0 for none.
    last_answer: AtomicU64,
}

/// One pass's numbers, as the task hands them to [`Gauges::publish`].
pub(crate) struct Pass {
    pub(crate) in_flight: usize,
    pub(crate) limit: usize,
    pub(crate) queued: usize,
    pub(crate) backing_off: usize,
    pub(crate) breaker: BreakerState,
    pub(crate) last_answer: Option<Nanos>,
}

impl Gauges {
    pub(crate) fn publish(&self, pass: &Pass) {
        let relaxed = Ordering::Relaxed;
        self.in_flight.store(pass.in_flight, relaxed);
        self.limit.store(pass.limit, relaxed);
        self.queued.store(pass.queued, relaxed);
        self.backing_off.store(pass.backing_off, relaxed);
        self.breaker.store(pass.breaker.to_u8(), relaxed);
        if let Some(at) = pass.last_answer {
            self.last_answer.store(at.saturating_add(1), relaxed);
        }
    }

    /// Zeroes what a task that no longer runs was doing (its last answer
    /// stays).
    pub(crate) fn idle(&self) {
        self.publish(&Pass {
            in_flight: 0,
            limit: 0,
            queued: 0,
            backing_off: 0,
            breaker: BreakerState::Closed,
            last_answer: None,
        });
    }

    pub(crate) fn read(&self, running: bool, clock: &Clock) -> RefresherState {
        let relaxed = Ordering::Relaxed;
        let last_answer = match self.last_answer.load(relaxed) {
            0 => None,
            at => Some(clock.instant_at(at - 1).into_std()),
        };
        RefresherState {
            running,
            in_flight: self.in_flight.load(relaxed),
            limit: self.limit.load(relaxed),
            queued: self.queued.load(relaxed),
            backing_off: self.backing_off.load(relaxed),
            breaker: BreakerState::from_u8(self.breaker.load(relaxed)),
            last_answer,
        }
    }
}
