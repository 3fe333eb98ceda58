//! [`Climber`]: the probation queue's share of every shard, set by one hill
//! climber for the whole cache from the whole cache's hit ratio.
//!
//! A probation queue larger than the policy's 5 % suits traces whose reuse
//! is recent (a database's, OLTP's), a smaller one loops and scans. One
//! climber per shard was measured too noisy (a 5–15 point swing per sample
//! against a 0.5–1 point effect); one for the cache samples as many
//! requests as an unsharded cache would. It moves the share by a step each
//! sample of `10 × max_size` requests: on in the same direction while the
//! hit ratio holds or rises, back when it falls; the step decays, and
//! starts over when the hit ratio jumps (the workload changed). This is
//! the climber of Caffeine's simulator (`SimpleClimber`), in permille,
//! with a smaller first step that goes down, and a first sample that only
//! measures.

/// The smallest share, in permille of the shard's capacity.
pub(crate) const MIN_PERMILLE: u32 = 5;
/// The largest share.
pub(crate) const MAX_PERMILLE: u32 = 800;
/// The share a cache starts with: the fixed policy's.
pub(crate) const START_PERMILLE: u32 = 50;

/// The first step, in permille: toward a smaller probation, which loops,
/// scans and frequency-skewed traces want and which short replays have no
/// time to find if the first step goes the other way (measured on the
/// hit-ratio bench's 20 rows: a summed shortfall of 16.1 points with it,
/// 20.0 starting upward).
const START_STEP: f64 = -25.0;
/// Each step is this much of the last.
const STEP_DECAY: f64 = 0.98;
/// A change of the hit ratio this large starts the steps over.
const RESTART_AT: f64 = 0.05;
/// Requests per sample, in multiples of the entries.
const SAMPLE_CAPACITIES: u64 = 10;
/// The fewest requests per sample.
const MIN_SAMPLE: u64 = 1_024;

/// The hill climber's state; deterministic: the same requests give the
/// same shares.
#[derive(Debug)]
pub(crate) struct Climber {
    /// The share now, in permille (fractional: steps decay below one).
    share: f64,
    /// The next move, signed.
    step: f64,
    /// The last sample's hit ratio, once there is one.
    previous: Option<f64>,
    /// Requests per sample.
    sample: u64,
    /// The cache's hits and requests when this sample began.
    began: (u64, u64),
}

impl Climber {
    /// A climber for a cache of `capacity` entries (with a weigher, the
    /// entries it expects: not its weight).
    pub(crate) fn new(capacity: u64) -> Self {
        Self {
            share: f64::from(START_PERMILLE),
            step: START_STEP,
            previous: None,
            sample: sample_for(capacity),
            began: (0, 0),
        }
    }

    /// The cache was resized: samples follow its new capacity.
    pub(crate) fn resize(&mut self, capacity: u64) {
        self.sample = sample_for(capacity);
    }

    /// Told the cache's hits and requests so far (counts that only grow,
    /// or start over); returns the new share in permille when a sample
    /// ended and moved it.
    pub(crate) fn observe(&mut self, hits: u64, requests: u64) -> Option<u32> {
        let (hits0, requests0) = self.began;
        if requests < requests0 || hits < hits0 {
            // The counts started over: so does the sample.
            self.began = (hits, requests);
            return None;
        }
        let asked = requests - requests0;
        if asked < self.sample {
            return None;
        }
        self.began = (hits, requests);
        let ratio = (hits - hits0) as f64 / asked as f64;
        // The first sample only measures: a move needs a ratio to beat.
        let previous = self.previous.replace(ratio)?;
        let delta = ratio - previous;
        let amount = if delta >= 0.0 { self.step } else { -self.step };
        self.step = if delta.abs() >= RESTART_AT {
            START_STEP.abs().copysign(amount)
        } else {
            amount * STEP_DECAY
        };
        let before = self.permille();
        self.share = (self.share + amount).clamp(f64::from(MIN_PERMILLE), f64::from(MAX_PERMILLE));
        let after = self.permille();
        (after != before).then_some(after)
    }

    /// The share now, in whole permille.
    pub(crate) fn permille(&self) -> u32 {
        self.share.round() as u32
    }
}

fn sample_for(capacity: u64) -> u64 {
    capacity.saturating_mul(SAMPLE_CAPACITIES).max(MIN_SAMPLE)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `samples` samples whose hit ratio `ratio_at(share)` gives.
    fn climb(climber: &mut Climber, samples: usize, ratio_at: impl Fn(u32) -> f64) {
        let (mut hits, mut requests) = (0u64, 0u64);
        for _ in 0..samples {
            let share = climber.permille();
            requests += climber.sample;
            hits += (ratio_at(share) * climber.sample as f64) as u64;
            climber.observe(hits, requests);
        }
    }

    #[test]
    fn it_climbs_to_a_peak_and_stays_near_it() {
        let mut climber = Climber::new(1_000);
        let peak = 200.0;
        climb(&mut climber, 400, |share| {
            0.5 - ((f64::from(share) - peak) / 1_000.0).powi(2)
        });
        let share = f64::from(climber.permille());
        assert!((share - peak).abs() < 30.0, "ended at {share}");
    }

    #[test]
    fn it_goes_down_when_a_smaller_share_is_better() {
        let mut climber = Climber::new(1_000);
        climb(&mut climber, 400, |share| 0.6 - f64::from(share) / 10_000.0);
        assert!(climber.permille() < 20, "ended at {}", climber.permille());
    }

    #[test]
    fn the_share_stays_within_its_bounds() {
        let mut climber = Climber::new(100);
        climb(&mut climber, 1_000, |share| f64::from(share) / 1_000.0);
        assert!(climber.permille() <= MAX_PERMILLE);
        let mut climber = Climber::new(100);
        climb(&mut climber, 1_000, |share| {
            1.0 - f64::from(share) / 1_000.0
        });
        assert!(climber.permille() >= MIN_PERMILLE);
    }

    #[test]
    fn a_sample_is_whole_the_first_only_measures_and_counts_that_start_over_restart_it() {
        let mut climber = Climber::new(100); // samples of 1,024 requests
        assert_eq!(climber.observe(500, 1_000), None, "not a whole sample");
        assert_eq!(climber.observe(600, 1_100), None, "the first only measures");
        assert_eq!(climber.permille(), START_PERMILLE);
        assert_eq!(climber.observe(0, 10), None, "the counts started over");
        // A sample whose ratio fell (0.55 to 0.5): the first step, down,
        // is turned back up.
        assert_eq!(climber.observe(512, 1_034), Some(START_PERMILLE + 25));
    }

    #[test]
    fn it_is_deterministic() {
        let run = || {
            let mut climber = Climber::new(500);
            let mut shares = Vec::new();
            let (mut hits, mut requests) = (0u64, 0u64);
            for i in 0..200u64 {
                requests += 5_000;
                hits += 2_000 + (i * 37 % 500);
                climber.observe(hits, requests);
                shares.push(climber.permille());
            }
            shares
        };
        assert_eq!(run(), run());
    }
}
