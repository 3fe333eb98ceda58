//! How often the reconnect action may run: at most once per
//! [`ACTION_EVERY`], however many gaps are noticed.
//!
//! In a sustained overflow nearly every message carries `lost`, and each
//! ran a full `mark_all_stale` (which also fences every refresh under
//! way). A gap within the interval after an action is not forgotten: the
//! action is due at the interval's end, and runs then.

use std::time::Duration;

use tokio::time::Instant;

/// The least time between two reconnect actions of one replica.
pub(super) const ACTION_EVERY: Duration = Duration::from_secs(1);

/// When the reconnect action last ran, and whether it is due again.
#[derive(Debug, Default)]
pub(super) struct Pacer {
    last: Option<Instant>,
    due: bool,
}

impl Pacer {
    /// A gap noticed at `now`: whether the action runs now (else it is due
    /// at [`deadline`](Self::deadline)).
    pub(super) fn gap(&mut self, now: Instant) -> bool {
        self.due = true;
        self.poll(now)
    }

    /// Whether an action due runs now.
    pub(super) fn poll(&mut self, now: Instant) -> bool {
        let ready = self.last.is_none_or(|last| now >= last + ACTION_EVERY);
        if self.due && ready {
            self.due = false;
            self.last = Some(now);
            return true;
        }
        false
    }

    /// When the action due runs, if one is.
    pub(super) fn deadline(&self) -> Option<Instant> {
        match (self.due, self.last) {
            (true, Some(last)) => Some(last + ACTION_EVERY),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gaps_within_the_interval_share_one_action_at_its_end() {
        let start = Instant::now();
        let mut pacer = Pacer::default();
        assert!(pacer.gap(start), "the first gap acts at once");
        assert_eq!(pacer.deadline(), None);
        for ms in 1..1000 {
            assert!(!pacer.gap(start + Duration::from_millis(ms)));
        }
        assert_eq!(pacer.deadline(), Some(start + ACTION_EVERY));
        assert!(!pacer.poll(start + Duration::from_millis(999)));
        assert!(pacer.poll(start + ACTION_EVERY), "due, not forgotten");
        assert!(!pacer.poll(start + ACTION_EVERY * 3), "once");
        assert!(
            pacer.gap(start + ACTION_EVERY * 3),
            "a later gap acts at once"
        );
    }
}
