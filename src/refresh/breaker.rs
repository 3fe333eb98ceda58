//! The circuit breaker: when failures are upstream-wide, the refresher
//! backs off as one instead of key by key.
//!
//! - *Closed* (normal): fetches start as the concurrency limit allows. Once
//!   [`OPEN_AFTER`] keys have failed with no answer between (a key that
//!   fails again counts once), it opens: the upstream is down, not a key.
//! - *Open*: no fetch starts but one *probe* every [`PROBE_EVERY`]. Failed
//!   keys wait in the queue without growing their own backoff, so that
//!   nothing is held back once the upstream is back.
//! - *Probing*: one probe is under way. Any answer (the probe's, or a late
//!   one from a fetch started before opening) closes the breaker, and every
//!   queued key may start at once; a failed probe opens it again.
//!
//! A few keys whose own fetches fail never open it, however often they are
//! retried, and answers reset the count: those keys back off on their own.

use crate::clock::Nanos;

use super::limit::Outcome;
use super::state::BreakerState;

/// Keys failing with no answer between that open the breaker.
pub(crate) const OPEN_AFTER: u32 = 10;
/// The wait between probes while open: five calls a second.
pub(crate) const PROBE_EVERY: Nanos = 200_000_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Closed,
    Open { probe_at: Nanos },
    Probing,
}

/// What starting a fetch is allowed now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Permit {
    /// Any number, within the concurrency limit.
    Any,
    /// One probe.
    Probe,
    /// None.
    Wait,
}

/// A change of state a recorded outcome made.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Turned {
    Opened,
    Closed,
}

pub(crate) struct Breaker {
    /// Keys that failed since the last answer.
    failing_keys: u32,
    state: State,
}

impl Breaker {
    pub(crate) fn new() -> Self {
        Self {
            failing_keys: 0,
            state: State::Closed,
        }
    }

    /// The state, as operators see it.
    pub(crate) fn state(&self) -> BreakerState {
        match self.state {
            State::Closed => BreakerState::Closed,
            State::Open { .. } => BreakerState::Open,
            State::Probing => BreakerState::Probing,
        }
    }

    pub(crate) fn is_open(&self) -> bool {
        self.state != State::Closed
    }

    pub(crate) fn permit(&self, now: Nanos) -> Permit {
        match self.state {
            State::Closed => Permit::Any,
            State::Open { probe_at } if now >= probe_at => Permit::Probe,
            State::Open { .. } | State::Probing => Permit::Wait,
        }
    }

    /// When the next probe may start, while open.
    pub(crate) fn probe_at(&self) -> Option<Nanos> {
        match self.state {
            State::Open { probe_at } => Some(probe_at),
            State::Closed | State::Probing => None,
        }
    }

    /// A probe was started on the permit.
    pub(crate) fn probing(&mut self) {
        self.state = State::Probing;
    }

    /// The probe ended without saying anything of the upstream (it was
    /// cancelled): another may start at once.
    pub(crate) fn abandon_probe(&mut self, now: Nanos) {
        if self.state == State::Probing {
            self.state = State::Open { probe_at: now };
        }
    }

    /// Records a finished fetch: `probe` if it was started as one, and
    /// `new_key` if a failure is its key's first since it last answered.
    pub(crate) fn record(
        &mut self,
        outcome: Outcome,
        probe: bool,
        new_key: bool,
        now: Nanos,
    ) -> Option<Turned> {
        match outcome {
            Outcome::Answered => {
                self.failing_keys = 0;
                let was_open = self.is_open();
                self.state = State::Closed;
                was_open.then_some(Turned::Closed)
            }
            Outcome::Failed => {
                if new_key {
                    self.failing_keys = self.failing_keys.saturating_add(1);
                }
                let reopen = || State::Open {
                    probe_at: now.saturating_add(PROBE_EVERY),
                };
                match self.state {
                    State::Closed if self.failing_keys >= OPEN_AFTER => {
                        self.state = reopen();
                        Some(Turned::Opened)
                    }
                    State::Probing if probe => {
                        self.state = reopen();
                        None
                    }
                    _ => None,
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_keys_fail_probes_and_closes_on_an_answer() {
        let mut breaker = Breaker::new();
        for _ in 0..OPEN_AFTER - 1 {
            assert_eq!(breaker.record(Outcome::Failed, false, true, 0), None);
            assert_eq!(breaker.record(Outcome::Failed, false, false, 0), None);
        }
        assert_eq!(breaker.permit(0), Permit::Any, "retries count once");
        let opened = breaker.record(Outcome::Failed, false, true, 0);
        assert_eq!(opened, Some(Turned::Opened));
        assert_eq!(breaker.permit(0), Permit::Wait);
        assert_eq!(breaker.permit(PROBE_EVERY), Permit::Probe);
        breaker.probing();
        assert_eq!(
            breaker.permit(PROBE_EVERY),
            Permit::Wait,
            "one probe at a time"
        );
        let late = breaker.record(Outcome::Failed, false, true, PROBE_EVERY);
        assert_eq!(late, None);
        assert_eq!(
            breaker.permit(2 * PROBE_EVERY),
            Permit::Wait,
            "a late failure is no probe"
        );
        let failed_probe = breaker.record(Outcome::Failed, true, false, PROBE_EVERY);
        assert_eq!(failed_probe, None);
        assert_eq!(breaker.probe_at(), Some(2 * PROBE_EVERY));
        breaker.probing();
        let answered = breaker.record(Outcome::Answered, true, false, 2 * PROBE_EVERY);
        assert_eq!(answered, Some(Turned::Closed));
        assert_eq!(breaker.permit(2 * PROBE_EVERY), Permit::Any);
    }

    #[test]
    fn a_cancelled_probe_lets_another_start_at_once() {
        let mut breaker = Breaker::new();
        for _ in 0..OPEN_AFTER {
            breaker.record(Outcome::Failed, false, true, 0);
        }
        breaker.probing();
        breaker.abandon_probe(5);
        assert_eq!(breaker.permit(5), Permit::Probe);
    }

    #[test]
    fn answers_between_failures_keep_it_closed() {
        let mut breaker = Breaker::new();
        for _ in 0..100 {
            for _ in 0..OPEN_AFTER - 1 {
                breaker.record(Outcome::Failed, false, true, 0);
            }
            breaker.record(Outcome::Answered, false, false, 0);
        }
        assert!(!breaker.is_open());
    }
}
