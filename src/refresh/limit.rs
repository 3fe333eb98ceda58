//! How many refreshes run at once: a fixed number, or (the default) a limit
//! that adapts to the upstream, between a floor and a cap.
//!
//! The adaptive limit is judged once per *window*: as many finished fetches
//! as the limit allowed when the window began (about one round trip's worth
//! at full use; the limit counts calls, so with a batch fetcher that is its
//! calls times the keys each fetches). Over a window it compares the mean
//! latency with a baseline, the upstream's latency when not loaded: the
//! lowest window mean seen, drifting up slowly with windows that are near
//! it or that run at the floor, so that an upstream slower for good is
//! learnt, but load alone (latency rising because of the refresher) never
//! moves it:
//!
//! - more than a fifth of the window failed (errors, timeouts, panics):
//!   halve;
//! - latency more than doubled: past the upstream's knee, take a fifth off;
//! - latency up by more than 30 %: near the knee, hold;
//! - else grow: double per window in *slow start* (from the start, and
//!   after the circuit breaker closes), which any decrease ends; then one
//!   more per window.
//!
//! So a storm on a healthy upstream reaches the cap in a few round trips,
//! an upstream whose latency grows with its load is held near the knee,
//! and a failing one is not hammered (and the breaker stops it entirely).

/// Windows the baseline takes to drift halfway up to a higher latency.
const BASELINE_DRIFT: f64 = 64.0;

pub(crate) struct Limit {
    /// The limit, between the floor and the cap.
    current: f64,
    slow_start: bool,
    /// Mean latency, in nanoseconds, of an unloaded upstream; 0 until seen.
    baseline: f64,
    window: Window,
}

#[derive(Default)]
struct Window {
    /// Fetches to finish before the window is judged.
    size: usize,
    finished: usize,
    failed: usize,
    /// Answers whose latency was timed, and their sum.
    timed: usize,
    latency_sum: f64,
}

/// What a finished fetch says about the upstream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// It answered (a value, unchanged, gone).
    Answered,
    /// It failed: an error, a timeout, a panic.
    Failed,
}

impl Limit {
    pub(crate) fn new(floor: usize) -> Self {
        Self {
            current: floor.max(1) as f64,
            slow_start: true,
            baseline: 0.0,
            window: Window::default(),
        }
    }

    /// The number of refreshes that may run now, within `floor..=cap`.
    pub(crate) fn get(&self, floor: usize, cap: usize) -> usize {
        (self.current as usize).clamp(floor.max(1), cap.max(1))
    }

    /// Grows again from here as fast as it can: the upstream is back.
    pub(crate) fn restart(&mut self) {
        self.slow_start = true;
        self.window = Window::default();
    }

    /// Records a finished fetch of one key that took `latency`
    /// nanoseconds; `None` for one whose latency is not the upstream's (it
    /// joined a fetch under way), which counts towards the window and its
    /// failures only. Each call of the fetcher fetches up to `per_call`
    /// keys.
    pub(crate) fn record(
        &mut self,
        outcome: Outcome,
        latency: Option<u64>,
        (floor, cap): (usize, usize),
        per_call: usize,
    ) {
        let size = self.get(floor, cap).saturating_mul(per_call.max(1));
        let window = &mut self.window;
        if window.size == 0 {
            window.size = size;
        }
        window.finished += 1;
        match outcome {
            Outcome::Answered => {
                if let Some(latency) = latency {
                    window.timed += 1;
                    window.latency_sum += latency as f64;
                }
            }
            Outcome::Failed => window.failed += 1,
        }
        if window.finished < window.size {
            return;
        }
        let window = std::mem::take(&mut self.window);
        let (floor, cap) = (floor.max(1) as f64, cap.max(1) as f64);
        let limit = self.current.clamp(floor, cap);
        let next = if window.failed * 5 > window.finished {
            self.slow_start = false;
            limit / 2.0
        } else if window.timed == 0 {
            // Answers, none timed: nothing learnt of latency; hold.
            limit
        } else {
            let mean = window.latency_sum / window.timed as f64;
            if self.baseline == 0.0 || mean < self.baseline {
                self.baseline = mean;
            }
            let ratio = mean / self.baseline.max(1.0);
            if ratio <= 1.3 || limit <= floor {
                self.baseline += (mean - self.baseline) / BASELINE_DRIFT;
            }
            if ratio > 2.0 {
                self.slow_start = false;
                limit * 0.8
            } else if ratio > 1.3 {
                limit
            } else if self.slow_start {
                limit * 2.0
            } else {
                limit + 1.0
            }
        };
        self.current = next.clamp(floor, cap);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    /// Finishes `n` fetches of one latency and outcome.
    fn run(limit: &mut Limit, n: usize, outcome: Outcome, latency: u64) {
        for _ in 0..n {
            limit.record(outcome, Some(latency), (4, 256), 1);
        }
    }

    #[test]
    fn a_steady_upstream_takes_it_to_the_cap_in_a_few_windows() {
        let mut limit = Limit::new(4);
        let mut windows = 0;
        while limit.get(4, 256) < 256 {
            let size = limit.get(4, 256);
            run(&mut limit, size, Outcome::Answered, 10 * MS);
            windows += 1;
        }
        assert_eq!(windows, 6, "4, 8, ..., 256: doubling");
    }

    #[test]
    fn failures_halve_it_and_end_slow_start() {
        let mut limit = Limit::new(4);
        run(&mut limit, 4 + 8 + 16, Outcome::Answered, 10 * MS);
        assert_eq!(limit.get(4, 256), 32);
        run(&mut limit, 32, Outcome::Failed, 0);
        assert_eq!(limit.get(4, 256), 16);
        run(&mut limit, 16, Outcome::Answered, 10 * MS);
        assert_eq!(limit.get(4, 256), 17, "additive growth after a decrease");
        for _ in 0..10 {
            let size = limit.get(4, 256);
            run(&mut limit, size, Outcome::Failed, 0);
        }
        assert_eq!(limit.get(4, 256), 4, "never below the floor");
        limit.restart();
        run(&mut limit, 4, Outcome::Answered, 10 * MS);
        assert_eq!(limit.get(4, 256), 8, "slow start again after a restart");
    }

    #[test]
    fn rising_latency_holds_then_shrinks_it() {
        let mut limit = Limit::new(4);
        run(&mut limit, 4 + 8 + 16 + 32, Outcome::Answered, 10 * MS);
        assert_eq!(limit.get(4, 256), 64);
        run(&mut limit, 64, Outcome::Answered, 12 * MS);
        assert_eq!(limit.get(4, 256), 128, "within 30 %: still growing");
        run(&mut limit, 128, Outcome::Answered, 15 * MS);
        assert_eq!(limit.get(4, 256), 128, "near the knee: held");
        run(&mut limit, 128, Outcome::Answered, 25 * MS);
        assert_eq!(limit.get(4, 256), 102, "past the knee: a fifth off");
    }

    #[test]
    fn a_few_failing_keys_do_not_shrink_it() {
        let mut limit = Limit::new(4);
        run(&mut limit, 4 + 8, Outcome::Answered, 10 * MS);
        for _ in 0..3 {
            limit.record(Outcome::Failed, None, (4, 256), 1);
        }
        run(&mut limit, 13, Outcome::Answered, 10 * MS);
        assert_eq!(limit.get(4, 256), 32, "3 of 16 failed: still doubling");
    }

    /// (Review #18.9.) A refresh that joined a fetch under way was timed
    /// from the join: its short latency lowered the baseline, and the
    /// upstream's own latency then read as past the knee. Joined answers
    /// count towards the window, not its latency.
    #[test]
    fn joined_answers_leave_the_baseline_alone() {
        let mut limit = Limit::new(4);
        run(&mut limit, 4, Outcome::Answered, 100 * MS);
        assert_eq!(limit.get(4, 256), 8);
        for _ in 0..4 {
            limit.record(Outcome::Answered, Some(100 * MS), (4, 256), 1);
            limit.record(Outcome::Answered, None, (4, 256), 1);
        }
        assert_eq!(limit.get(4, 256), 16, "the timed half is the upstream's");
        run(&mut limit, 16, Outcome::Answered, 100 * MS);
        assert_eq!(limit.get(4, 256), 32, "not taken for a slowdown");
        assert_eq!(limit.baseline, (100 * MS) as f64);
    }
}
