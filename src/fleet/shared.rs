//! What the link's parts (the handle, the publisher, the subscriber) share:
//! the replica's id and counters, the network deadlines, the user's
//! version function and value codec, and a throttled log.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde_json::Value;
use tokio::sync::watch;

use super::FleetMetrics;
use super::message::Envelope;
use super::seal::Seal;
use crate::excerpt::Excerpt;
use crate::throttle::Throttle;

/// How long the link waits on the network ([`FleetBuilder::connect_timeout`],
/// [`FleetBuilder::response_timeout`]).
///
/// [`FleetBuilder::connect_timeout`]: super::FleetBuilder::connect_timeout
/// [`FleetBuilder::response_timeout`]: super::FleetBuilder::response_timeout
#[derive(Clone, Copy, Debug)]
pub(super) struct Timeouts {
    /// Connecting, with its handshake (TLS, `HELLO`, `AUTH`) and `SUBSCRIBE`.
    pub(super) connect: Duration,
    /// A command's reply: `PUBLISH` pipelines, `PING`, `CONFIG GET`.
    pub(super) response: Duration,
}

impl Default for Timeouts {
    /// A second each.
    fn default() -> Self {
        Self {
            connect: Duration::from_secs(1),
            response: Duration::from_secs(1),
        }
    }
}

impl Timeouts {
    /// A connection's settings with these deadlines.
    pub(super) fn config(&self) -> redis::AsyncConnectionConfig {
        redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.connect))
            .set_response_timeout(Some(self.response))
    }
}

pub(super) type VersionFn<V> = Arc<dyn Fn(&V) -> String + Send + Sync>;

/// How values travel, when the user opted in ([`FleetBuilder::send_values`]).
pub(super) struct ValueCodec<V> {
    pub(super) encode: fn(&V) -> Result<Value, serde_json::Error>,
    pub(super) decode: fn(Value) -> Result<V, serde_json::Error>,
}

impl<V> Clone for ValueCodec<V> {
    fn clone(&self) -> Self {
        Self {
            encode: self.encode,
            decode: self.decode,
        }
    }
}

/// What the link's parts share.
pub(super) struct Shared {
    pub(super) id: u64,
    pub(super) envelope: Envelope,
    pub(super) counters: Counters,
    pub(super) subscribed: watch::Sender<bool>,
    /// The fleet's key, if it signs its messages.
    pub(super) seal: Option<Seal>,
    pub(super) clears: Clears,
    pub(super) timeouts: Timeouts,
    logs: Throttle,
}

/// The cache's clears, begun and ended: counted, not queued, so that a
/// full queue cannot lose the end of one (the publisher then believed a
/// clear open for good).
#[derive(Default)]
pub(super) struct Clears {
    began: AtomicU64,
    ended: AtomicU64,
}

impl Clears {
    pub(super) fn begin(&self) {
        self.began.fetch_add(1, Ordering::Release);
    }

    /// A clear ended. One racing `attach` may end without having begun
    /// here (its `Clearing` found no hook, its `Cleared` found this one):
    /// `began` is raised to match, or it stayed behind for good and no
    /// later clear ever looked closed.
    pub(super) fn end(&self) {
        let ended = self.ended.fetch_add(1, Ordering::AcqRel) + 1;
        self.began.fetch_max(ended, Ordering::AcqRel);
    }

    /// Clears begun and ended so far. Begun is never less than ended: a
    /// reader between an unbegun clear's two steps in [`end`](Self::end)
    /// sees it begun too.
    pub(super) fn load(&self) -> (u64, u64) {
        let ended = self.ended.load(Ordering::Acquire);
        (self.began.load(Ordering::Acquire).max(ended), ended)
    }
}

#[derive(Default)]
pub(super) struct Counters {
    pub(super) published: AtomicU64,
    pub(super) dropped: AtomicU64,
    /// Of `dropped`, those the hook could not queue: the publisher flags
    /// its next message as following a loss.
    pub(super) unqueued: AtomicU64,
    pub(super) received: AtomicU64,
    pub(super) applied: AtomicU64,
    pub(super) current: AtomicU64,
    pub(super) own: AtomicU64,
    pub(super) malformed: AtomicU64,
    pub(super) rejected: AtomicU64,
    pub(super) gaps: AtomicU64,
    pub(super) actions: AtomicU64,
    pub(super) arrival_dropped: AtomicU64,
    pub(super) discarded: AtomicU64,
    pub(super) oversized: AtomicU64,
    pub(super) reconnects: AtomicU64,
    pub(super) connect_failures: AtomicU64,
}

impl Counters {
    pub(super) fn incr(&self, counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

impl Shared {
    pub(super) fn new(id: u64, seal: Option<Seal>, timeouts: Timeouts) -> Self {
        Self {
            id,
            envelope: Envelope::new(id),
            counters: Counters::default(),
            subscribed: watch::Sender::new(false),
            seal,
            clears: Clears::default(),
            timeouts,
            logs: Throttle::new(),
        }
    }

    pub(super) fn metrics(&self) -> FleetMetrics {
        let c = &self.counters;
        let get = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        FleetMetrics {
            published: get(&c.published),
            publish_dropped: get(&c.dropped),
            received: get(&c.received),
            applied: get(&c.applied),
            already_current: get(&c.current),
            own: get(&c.own),
            malformed: get(&c.malformed),
            rejected: get(&c.rejected),
            gaps: get(&c.gaps),
            actions: get(&c.actions),
            dropped_on_arrival: get(&c.arrival_dropped),
            discarded: get(&c.discarded),
            oversized: get(&c.oversized),
            reconnects: get(&c.reconnects),
            connect_failures: get(&c.connect_failures),
            subscribed: *self.subscribed.borrow(),
        }
    }

    /// Logs a line, at most a few a second. `detail` may quote user data
    /// (a key or value in a serde error, a server's reply): at most
    /// [`Excerpt`]'s few hundred bytes of it are written.
    pub(super) fn warn(&self, what: &str, detail: &dyn std::fmt::Display) {
        if let Some(held_back) = self.logs.admit(epoch_nanos()) {
            let detail = Excerpt(detail);
            tracing::warn!(%detail, held_back, "fleet link: {what}");
        }
    }
}

/// Nanoseconds since the Unix epoch, for the log throttle's seconds.
pub(super) fn epoch_nanos() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A clear that ended without having begun (racing `attach`) left
    /// `began` behind `ended` for good: later clears never looked open, and
    /// the keys taken during one were never told again.
    #[test]
    fn a_clear_that_ends_unbegun_leaves_later_clears_counted_right() {
        let clears = Clears::default();
        clears.end();
        assert_eq!(clears.load(), (1, 1), "none open");
        clears.begin();
        assert_eq!(clears.load(), (2, 1), "the next one open");
        clears.end();
        assert_eq!(clears.load(), (2, 2), "and closed");
    }
}
