//! The receiving side: one task subscribes, applies what arrives, and
//! subscribes again when the connection ends or stops answering.

use std::hash::{BuildHasher, Hash};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::{Arc, Weak};
use std::time::Duration;

use serde::de::DeserializeOwned;
use tokio::time::{Instant, sleep, timeout};

use super::backoff::Backoff;
use super::inbox::{Arrival, RECEIVED, inbox};
use super::message::{Op, decode};
use super::pacer::Pacer;
use super::shared::{Shared, ValueCodec, VersionFn};
use super::{OnReconnect, RemoteChanges};
use crate::changes::Share;
use crate::inner::Inner;
use crate::store::Write;

/// With no message for this long, the subscription is pinged: a connection
/// that does not answer is taken for dead (a half-open TCP connection
/// would otherwise leave the replica deaf, and believing it listens).
const PING_WHEN_IDLE: Duration = Duration::from_secs(5);
/// A subscription that lived less than this counts as a failed attempt
/// for the backoff, so a server dropping subscribers at once is not
/// hammered (each resubscription also runs the reconnect action).
const HEALTHY: Duration = Duration::from_secs(1);

/// Subscribes, applies what arrives, and subscribes again, backing off
/// while Redis is unreachable or drops the subscription at once. A
/// subscription that starts after a time without one (any but the very
/// first attempt's) runs the reconnect action: what was published
/// meanwhile was missed.
///
/// The subscription is a RESP3 connection whose pushes go into a bounded
/// [inbox](super::inbox) (redis-rs's own pub/sub stream buffers without a
/// bound); `client` must speak RESP3.
pub(super) async fn run<K, V, S>(
    client: redis::Client,
    channel: String,
    max_message: usize,
    mut applier: Applier<K, V, S>,
) where
    K: Hash + Eq + Clone + Send + Sync + DeserializeOwned + 'static,
    V: Clone + Send + Sync + 'static,
    S: BuildHasher + Clone + Send + Sync + 'static,
{
    let shared = Arc::clone(&applier.shared);
    let mut first = true;
    let timeouts = shared.timeouts;
    let mut backoff = Backoff::new();
    loop {
        let (mailbox, mut inbox) = inbox(Arc::clone(&shared), max_message, RECEIVED);
        let config = timeouts.config().set_push_sender(mailbox);
        let attempt = timeout(timeouts.connect, async {
            let mut connection = client
                .get_multiplexed_async_connection_with_config(&config)
                .await?;
            connection.subscribe(&channel).await?;
            Ok::<_, redis::RedisError>(connection)
        })
        .await;
        let mut connection = match attempt {
            Ok(Ok(connection)) => connection,
            failed => {
                let why = match failed {
                    Ok(Err(error)) => error.to_string(),
                    _ => "timed out".to_owned(),
                };
                shared.counters.incr(&shared.counters.connect_failures);
                shared.warn("cannot subscribe", &why);
                first = false;
                sleep(backoff.next_wait()).await;
                continue;
            }
        };
        // From here the connection holds the only mailbox, so the inbox
        // closes when the connection is gone.
        drop(config);
        if !first {
            shared.counters.incr(&shared.counters.reconnects);
            if !applier.missed_messages() {
                return;
            }
        }
        first = false;
        shared.subscribed.send_replace(true);
        let started = Instant::now();
        loop {
            if !applier.act_if_due() {
                return;
            }
            // Wake for an action due, or to ping an idle subscription.
            let wait = applier.pacer.deadline().map_or(PING_WHEN_IDLE, |due| {
                due.saturating_duration_since(Instant::now())
                    .min(PING_WHEN_IDLE)
            });
            match timeout(wait, inbox.recv()).await {
                Ok(Some(Arrival::Message(payload))) => {
                    if !applier.apply(&payload) {
                        return;
                    }
                }
                Ok(Some(Arrival::Gap)) => {
                    if !applier.overflowed() {
                        return;
                    }
                }
                // The connection is gone.
                Ok(Some(Arrival::Disconnected) | None) => break,
                Err(_) if applier.pacer.deadline().is_some() => {}
                Err(_idle) => {
                    if applier.cache.strong_count() == 0 {
                        return;
                    }
                    let ping = redis::cmd("PING");
                    let pong = ping.query_async::<redis::Value>(&mut connection);
                    if !matches!(timeout(timeouts.response, pong).await, Ok(Ok(_))) {
                        shared.warn("the subscription stopped answering", &"no PONG");
                        break;
                    }
                }
            }
        }
        shared.subscribed.send_replace(false);
        if started.elapsed() >= HEALTHY {
            backoff.reset();
        }
        sleep(backoff.next_wait()).await;
    }
}

/// What came of a message.
enum Outcome {
    Applied,
    /// A write of a version held here already.
    Current,
    /// This replica's own.
    Own,
}

/// Applies other replicas' messages to the cache.
pub(super) struct Applier<K, V, S> {
    pub(super) cache: Weak<Inner<K, V, S>>,
    pub(super) shared: Arc<Shared>,
    pub(super) remote: RemoteChanges,
    pub(super) reconnect: OnReconnect,
    pub(super) version: Option<VersionFn<V>>,
    pub(super) values: Option<ValueCodec<V>>,
    /// Coalesces the reconnect actions of gaps noticed close together.
    pub(super) pacer: Pacer,
}

impl<K, V, S> Applier<K, V, S>
where
    K: Hash + Eq + Clone + Send + Sync + DeserializeOwned + 'static,
    V: Clone + Send + Sync + 'static,
    S: BuildHasher + Clone + Send + Sync + 'static,
{
    /// The reconnect action after a time without a subscription; false if
    /// the cache is gone.
    fn missed_messages(&mut self) -> bool {
        let Some(inner) = self.cache.upgrade() else {
            return false;
        };
        self.missed(&inner);
        true
    }

    /// Runs the reconnect action if one is due; false if the cache is gone.
    fn act_if_due(&mut self) -> bool {
        if self.pacer.deadline().is_none() {
            return true;
        }
        let Some(inner) = self.cache.upgrade() else {
            return false;
        };
        if self.pacer.poll(Instant::now()) {
            self.act_on_missed(&inner);
        }
        true
    }

    /// Messages may have been missed: the reconnect action runs now, or at
    /// the end of the interval after the last one.
    fn missed(&mut self, inner: &Inner<K, V, S>) {
        if self.pacer.gap(Instant::now()) {
            self.act_on_missed(inner);
        }
    }

    /// Messages were dropped on arrival (this replica applied slower than
    /// the fleet published): counted as a gap, and the reconnect action
    /// runs. False if the cache is gone.
    pub(super) fn overflowed(&mut self) -> bool {
        let Some(inner) = self.cache.upgrade() else {
            return false;
        };
        self.shared.counters.incr(&self.shared.counters.gaps);
        self.shared.warn(
            "messages arrived faster than applied and were dropped",
            &format_args!("over {RECEIVED} waiting, or their bytes at the bound"),
        );
        self.missed(&inner);
        true
    }

    /// The reconnect action, for messages that may have been missed.
    /// Marking stale needs a refresher to end it: without one running, the
    /// cache is cleared instead. Values removed here are dropped here: a
    /// panicking `Drop` costs the action, not the link.
    fn act_on_missed(&self, inner: &Inner<K, V, S>) {
        self.shared.counters.incr(&self.shared.counters.actions);
        let acted = catch_unwind(AssertUnwindSafe(|| match self.reconnect {
            OnReconnect::MarkAllStale if inner.is_refreshing() => inner.mark_all_stale(),
            OnReconnect::MarkAllStale | OnReconnect::Clear => inner.clear(Share::Local),
            OnReconnect::Keep => {}
        }));
        if acted.is_err() {
            self.shared
                .warn("the reconnect action panicked", &"a value's Drop");
        }
    }

    /// Applies one payload (its signature, if the fleet signs, checked and
    /// cut off in the [inbox](super::inbox)); false if the cache is gone.
    pub(super) fn apply(&mut self, payload: &[u8]) -> bool {
        let Some(inner) = self.cache.upgrade() else {
            return false;
        };
        let shared = Arc::clone(&self.shared);
        let counters = &shared.counters;
        counters.incr(&counters.received);
        // User code runs here (Deserialize, the version function, Drop of
        // what is removed): a panic costs this message, not the link.
        let applied = catch_unwind(AssertUnwindSafe(|| self.apply_to(&inner, payload)));
        match applied {
            Ok(Ok(outcome)) => counters.incr(match outcome {
                Outcome::Applied => &counters.applied,
                Outcome::Current => &counters.current,
                Outcome::Own => &counters.own,
            }),
            Ok(Err(why)) => {
                counters.incr(&counters.malformed);
                shared.warn("a message was skipped", &why);
            }
            Err(_) => {
                counters.incr(&counters.malformed);
                shared.warn("a message was skipped", &"a panic while applying it");
            }
        }
        true
    }

    /// Applies a payload; what came of it, or why it is skipped.
    fn apply_to(&mut self, inner: &Inner<K, V, S>, payload: &[u8]) -> Result<Outcome, String> {
        let message = decode(payload).map_err(|why| format!("{why:?}"))?;
        if message.from == self.shared.id {
            return Ok(Outcome::Own);
        }
        if message.lost {
            // The sender dropped a message before this one: nobody heard it.
            let counters = &self.shared.counters;
            counters.incr(&counters.gaps);
            self.shared.warn(
                "a sender's message was lost",
                &format_args!("{:016x}", message.from),
            );
            self.missed(inner);
        }
        if message.op == Op::Cleared {
            inner.clear(Share::Local);
            return Ok(Outcome::Applied);
        }
        let key = message.key.ok_or("no key")?;
        let key: K = serde_json::from_value(key).map_err(|e| format!("the key: {e}"))?;
        if matches!(message.op, Op::Written | Op::Refreshed) {
            if let (Some(value), Some(codec)) = (message.value, &self.values) {
                let value = (codec.decode)(value).map_err(|e| format!("the value: {e}"))?;
                if !inner.is_disabled() {
                    inner.write_as(key, value, Write::Upsert, (false, None));
                }
                return Ok(Outcome::Applied);
            }
            if let (Some(version), Some(version_of)) = (&message.version, &self.version) {
                // The value is cloned where it lies; the user's function
                // runs after.
                let held = inner.store.read(&key, |node| node.value.clone());
                if held.is_some_and(|value| version_of(&value) == *version) {
                    return Ok(Outcome::Current);
                }
            }
        }
        // Marking stale needs a refresher to end it; without one the old
        // value would be served for good.
        if self.remote == RemoteChanges::MarkStale && inner.is_refreshing() {
            inner.mark_stale(&key);
        } else {
            inner.invalidate(&key, Share::Local);
        }
        Ok(Outcome::Applied)
    }
}
