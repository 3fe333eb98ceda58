//! The sending side: the hook queues the key a change was made to, and one
//! task turns each queued key into a message and publishes it.
//!
//! The message says what the cache holds for the key *when the task takes
//! it*, not what the change wrote: the hook is told after each change, so
//! the last queued item of a key is taken after its last change, and the
//! last message the fleet hears of a key is its final state, however the
//! threads changing it raced to the queue. (Telling the written value from
//! the writer's thread let two racing inserts reach the queue in the other
//! order than the store's, and a replica installing sent values kept the
//! older one.) Serializing happens on the task too, not on the writer.

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasher, Hash};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};

use serde::Serialize;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::backoff::Backoff;
use super::message::Op;
use super::seal::TAG;
use super::shared::{Shared, ValueCodec, VersionFn};
use crate::changes::Change;
use crate::inner::Inner;

/// The most messages published in one pipeline (one round trip).
const BATCH: usize = 64;
/// The most keys taken during a clear that are told again after it; past
/// it, the others may lack a key this replica holds (a miss there, which
/// fetches it), never hold one it lacks.
const DURING_CLEAR: usize = 4096;

/// A change waiting to be told: of a key (what kind of change it was,
/// which the message keeps unless the key's state says otherwise), or the
/// end of a clear (only to wake the task: clears are counted in
/// [`Clears`]).
pub(super) enum Item<K> {
    Key(Op, K),
    ClearEnded,
}

/// The hook: queues the keys of changes. Never waits: a full queue drops
/// the change and counts it.
pub(super) struct Teller<K, V> {
    pub(super) outbox: mpsc::Sender<Item<K>>,
    pub(super) shared: Arc<Shared>,
    pub(super) version: Option<VersionFn<V>>,
    pub(super) values: bool,
}

impl<K: Clone, V> Teller<K, V> {
    pub(super) fn tell(&self, change: Change<'_, K, V>) {
        let item = match change {
            Change::Written(key) => Item::Key(Op::Written, key.clone()),
            Change::Refreshed(key, old, new) => {
                // User code (the version function): a panic loses this
                // message, not the refresh.
                let changed = catch_unwind(AssertUnwindSafe(|| match &self.version {
                    Some(version) => version(old) != version(new),
                    // No version to compare: only a sent value says what
                    // it changed to.
                    None => self.values,
                }));
                match changed {
                    Ok(false) => return,
                    Ok(true) => Item::Key(Op::Refreshed, key.clone()),
                    Err(_) => {
                        self.unqueued();
                        return;
                    }
                }
            }
            Change::Removed(key) => Item::Key(Op::Removed, key.clone()),
            Change::Clearing => {
                self.shared.clears.begin();
                return;
            }
            Change::Cleared => {
                self.shared.clears.end();
                // A wake-up only: with the queue full, the task sees the
                // clear's end at the next item it takes.
                let _ = self.outbox.try_send(Item::ClearEnded);
                return;
            }
        };
        self.queue(item);
    }

    /// Queues `item`, or counts it dropped if the queue is full.
    pub(super) fn queue(&self, item: Item<K>) {
        if self.outbox.try_send(item).is_err() {
            self.unqueued();
        }
    }

    fn unqueued(&self) {
        let counters = &self.shared.counters;
        counters.incr(&counters.dropped);
        counters.incr(&counters.unqueued);
    }
}

/// How the task reads the cache for what to say of a key.
pub(super) struct Reader<K, V, S> {
    pub(super) cache: Weak<Inner<K, V, S>>,
    pub(super) version: Option<VersionFn<V>>,
    pub(super) values: Option<ValueCodec<V>>,
}

impl<K, V, S> Reader<K, V, S>
where
    K: Hash + Eq + Clone + Send + Sync + Serialize + 'static,
    V: Clone + Send + Sync + 'static,
    S: BuildHasher + Clone + Send + Sync + 'static,
{
    /// The message for a change of `key` of kind `op`; `None` once the
    /// cache is gone. User code runs here (Serialize, the version function,
    /// and `V::clone` where it lies, as in `get`). A value
    /// that cannot be encoded is told as a removal; one whose message would
    /// be over `limit` bytes (signed) is not sent: the change is told
    /// without it.
    fn message(
        &self,
        shared: &Shared,
        op: Op,
        lost: bool,
        key: &K,
        limit: usize,
    ) -> Option<Result<String, String>> {
        let inner = self.cache.upgrade()?;
        let encoded = catch_unwind(AssertUnwindSafe(|| {
            if self.version.is_none() && self.values.is_none() {
                // Every message means "drop yours": what the key holds now
                // says nothing more.
                return shared.envelope.encode(op, lost, Some(key), None, None);
            }
            let Some(value) = inner.store.read(key, |node| node.value.clone()) else {
                return shared
                    .envelope
                    .encode(Op::Removed, lost, Some(key), None, None);
            };
            let op = if op == Op::Removed { Op::Written } else { op };
            let version = self.version.as_ref().map(|f| f(&value));
            let value = self
                .values
                .as_ref()
                .map(|codec| (codec.encode)(&value))
                .transpose();
            match value {
                Ok(value) => {
                    let envelope = &shared.envelope;
                    let full =
                        envelope.encode(op, lost, Some(key), version.as_deref(), value.as_ref())?;
                    if value.is_none() || signed_len(shared, &full) <= limit {
                        return Ok(full);
                    }
                    shared.counters.incr(&shared.counters.oversized);
                    shared.warn(
                        "a value is over the message size limit; told without it",
                        &format_args!("{} bytes", signed_len(shared, &full)),
                    );
                    let bare = envelope.encode(op, lost, Some(key), version.as_deref(), None)?;
                    if signed_len(shared, &bare) > limit {
                        // Counted oversized once, above: dropped, not
                        // counted again.
                        return Err(serde::ser::Error::custom(format_args!(
                            "{} bytes without the value, over the {limit}-byte limit",
                            signed_len(shared, &bare)
                        )));
                    }
                    Ok(bare)
                }
                Err(error) => {
                    shared.warn("a value could not be encoded; told as a removal", &error);
                    shared
                        .envelope
                        .encode(Op::Removed, lost, Some(key), None, None)
                }
            }
        }));
        Some(match encoded {
            Ok(result) => result.map_err(|e| e.to_string()),
            Err(_) => Err("a panic while encoding".into()),
        })
    }
}

/// Publishes what the hook queued over one connection, up to [`BATCH`]
/// `PUBLISH`es a round trip, and no more bytes than the largest message
/// (a pipeline reaches a subscriber's output buffer at once). After anything is dropped (a change the hook
/// could not queue, one that could not be encoded, a pipeline that could
/// not be sent), the next message is flagged `lost`, so receivers know
/// they missed something.
///
/// A clear is told as `c` when it is done. A write racing it may have been
/// read (and told) after the clear emptied the store but before the `c`,
/// which would then remove it at the receivers: when values are sent, the
/// keys taken between a clear's start and its end (up to
/// [`DURING_CLEAR`]) are told again after the `c`. Clears are counted in
/// [`Clears`], not queued, so a full queue cannot lose one's end.
pub(super) async fn run<K, V, S>(
    client: redis::Client,
    channel: String,
    mut queued: mpsc::Receiver<Item<K>>,
    reader: Reader<K, V, S>,
    shared: Arc<Shared>,
    max_message: usize,
) where
    K: Hash + Eq + Clone + Send + Sync + Serialize + 'static,
    V: Clone + Send + Sync + 'static,
    S: BuildHasher + Clone + Send + Sync + 'static,
{
    let mut publisher = Publisher::new(client, Arc::clone(&shared), max_message);
    let mut lost = false;
    let mut unqueued_seen = 0u64;
    let mut clears_told = 0u64;
    let mut during_clear: HashSet<K> = HashSet::new();
    let mut items = Vec::with_capacity(BATCH);
    let mut batch = Batch::default();
    let counters = &shared.counters;
    while queued.recv_many(&mut items, BATCH).await > 0 {
        // Connected first, so the server's limit on a message is known.
        publisher.connect().await;
        let limit = publisher.limit;
        for item in items.drain(..) {
            let unqueued = counters.unqueued.load(Ordering::Relaxed);
            if unqueued != unqueued_seen {
                unqueued_seen = unqueued;
                lost = true;
            }
            // Read after the item was taken: a write told after a clear
            // began finds it begun here.
            let (began, ended) = shared.clears.load();
            if ended != clears_told {
                // One `c` for the clears that ended since the last look.
                clears_told = ended;
                let message = shared
                    .envelope
                    .encode::<K>(Op::Cleared, lost, None, None, None)
                    .map_err(|e| e.to_string());
                lost = add(&mut publisher, &channel, &mut batch, message, limit).await;
                let again: Vec<K> = if began == ended {
                    during_clear.drain().collect()
                } else {
                    during_clear.iter().cloned().collect()
                };
                for key in again {
                    let Some(message) = reader.message(&shared, Op::Written, lost, &key, limit)
                    else {
                        return;
                    };
                    lost = add(&mut publisher, &channel, &mut batch, message, limit).await;
                }
            }
            // A clear's end only wakes the task.
            let Item::Key(op, key) = item else {
                continue;
            };
            let Some(message) = reader.message(&shared, op, lost, &key, limit) else {
                return;
            };
            if began != ended && reader.values.is_some() && during_clear.len() < DURING_CLEAR {
                during_clear.insert(key);
            }
            lost = add(&mut publisher, &channel, &mut batch, message, limit).await;
        }
        if !batch.payloads.is_empty() {
            lost |= flush(&mut publisher, &channel, &mut batch).await;
        }
    }
}

/// The payloads of the next pipeline.
#[derive(Default)]
struct Batch {
    payloads: Vec<Vec<u8>>,
    /// Their bytes.
    bytes: usize,
}

impl Batch {
    /// Whether a payload of `len` bytes must wait for the next pipeline:
    /// this one holds [`BATCH`] messages, or would pass `limit` bytes. A
    /// pipeline lands in each subscriber's output buffer at once, so it is
    /// kept under the server's limit as each message is.
    fn is_full_for(&self, len: usize, limit: usize) -> bool {
        !self.payloads.is_empty() && (self.payloads.len() >= BATCH || self.bytes + len > limit)
    }

    fn push(&mut self, payload: Vec<u8>) {
        self.bytes += payload.len();
        self.payloads.push(payload);
    }
}

/// Adds an encoded message to the batch, the batch published first if it
/// has no room for it; returns whether the next message must say
/// something was lost.
async fn add(
    publisher: &mut Publisher,
    channel: &str,
    batch: &mut Batch,
    message: Result<String, String>,
    limit: usize,
) -> bool {
    let Some(payload) = collect(&publisher.shared, message, limit) else {
        return true;
    };
    let lost = batch.is_full_for(payload.len(), limit) && flush(publisher, channel, batch).await;
    batch.push(payload);
    lost
}

/// Publishes the batch in one pipeline and empties it, counting its
/// messages published or dropped; returns whether they were dropped.
async fn flush(publisher: &mut Publisher, channel: &str, batch: &mut Batch) -> bool {
    let sent = publisher.publish(channel, &batch.payloads).await;
    let counters = &publisher.shared.counters;
    let counter = match sent {
        Ok(()) => &counters.published,
        Err(()) => &counters.dropped,
    };
    counter.fetch_add(batch.payloads.len() as u64, Ordering::Relaxed);
    batch.payloads.clear();
    batch.bytes = 0;
    sent.is_err()
}

/// A payload's length once signed.
fn signed_len(shared: &Shared, payload: &str) -> usize {
    payload.len() + if shared.seal.is_some() { TAG } else { 0 }
}

/// An encoded message's payload (signed, with a secret), or `None` if it
/// is dropped and counted (as it is if over `limit` bytes).
fn collect(shared: &Shared, message: Result<String, String>, limit: usize) -> Option<Vec<u8>> {
    let message = message.and_then(|payload| {
        let len = signed_len(shared, &payload);
        if len <= limit {
            return Ok(payload);
        }
        shared.counters.incr(&shared.counters.oversized);
        Err(format!(
            "{len} bytes, over the {limit}-byte message size limit"
        ))
    });
    match message {
        Ok(payload) => {
            let mut payload = payload.into_bytes();
            if let Some(seal) = &shared.seal {
                seal.sign(&mut payload);
            }
            Some(payload)
        }
        Err(why) => {
            shared.counters.incr(&shared.counters.dropped);
            shared.warn("a change could not be encoded", &why);
            None
        }
    }
}

/// The publishing connection: made lazily, at most once per backoff while
/// Redis is unreachable (sooner once the subscriber got back in).
struct Publisher {
    client: redis::Client,
    config: redis::AsyncConnectionConfig,
    connection: Option<redis::aio::MultiplexedConnection>,
    /// No connection attempt before this, unless the subscriber got in
    /// again since the last attempt (Redis is back: no need to wait).
    retry_at: Instant,
    /// The user's largest message.
    max_message: usize,
    /// The largest message sent: `max_message`, or less if the server's
    /// pub/sub output buffer limit says so.
    limit: usize,
    backoff: Backoff,
    /// The subscriber's reconnects at the last attempt.
    resubscribed: u64,
    shared: Arc<Shared>,
}

impl Publisher {
    fn new(client: redis::Client, shared: Arc<Shared>, max_message: usize) -> Self {
        Self {
            client,
            config: shared.timeouts.config(),
            connection: None,
            retry_at: Instant::now(),
            backoff: Backoff::new(),
            resubscribed: 0,
            max_message,
            limit: max_message,
            shared,
        }
    }

    /// Publishes `payloads` in one pipeline. A connection Redis closed (a
    /// restart) is made again and the pipeline tried once more; an error
    /// reply (an ACL, a read-only replica) keeps the connection and backs
    /// off instead, so a refusing server is not hammered.
    async fn publish(&mut self, channel: &str, payloads: &[Vec<u8>]) -> Result<(), ()> {
        let had_connection = self.connection.is_some();
        match self.attempt(channel, payloads).await {
            Err(Lost) if had_connection => self.attempt(channel, payloads).await.map_err(drop),
            other => other.map_err(drop),
        }
    }

    async fn attempt(&mut self, channel: &str, payloads: &[Vec<u8>]) -> Result<(), Lost> {
        self.connect().await;
        let open = self.connection.as_mut().ok_or(Lost)?;
        if Instant::now() < self.retry_at {
            // The server refused the last pipeline: wait out the backoff.
            return Err(Lost);
        }
        let mut pipeline = redis::pipe();
        for payload in payloads {
            pipeline.cmd("PUBLISH").arg(channel).arg(payload).ignore();
        }
        let sent: redis::RedisResult<()> = pipeline.query_async(open).await;
        match sent {
            Ok(()) => {
                self.backoff.reset();
                Ok(())
            }
            Err(error) => {
                self.shared.warn("a publish failed", &error);
                if error.is_timeout() {
                    // A slow server: a new connection per pipeline would
                    // only add to its load.
                    self.connection = None;
                    self.back_off();
                } else if error.is_io_error() || error.is_connection_dropped() {
                    self.connection = None;
                } else {
                    self.back_off();
                }
                Err(Lost)
            }
        }
    }

    async fn connect(&mut self) {
        let resubscribed = self.shared.counters.reconnects.load(Ordering::Relaxed);
        let may = Instant::now() >= self.retry_at || resubscribed != self.resubscribed;
        if self.connection.is_some() || !may {
            return;
        }
        self.resubscribed = resubscribed;
        match self
            .client
            .get_multiplexed_async_connection_with_config(&self.config)
            .await
        {
            Ok(mut connected) => {
                self.limit = match pubsub_hard_limit(&mut connected).await {
                    Some(hard) => self.max_message.min(hard / 2),
                    None => self.max_message,
                };
                self.connection = Some(connected);
                self.retry_at = Instant::now();
            }
            Err(error) => {
                let counters = &self.shared.counters;
                counters.incr(&counters.connect_failures);
                self.shared.warn("cannot connect to publish", &error);
                self.back_off();
            }
        }
    }

    fn back_off(&mut self) {
        self.retry_at = Instant::now() + self.backoff.next_wait();
    }
}

/// A publish that did not happen.
struct Lost;

/// The hard `client-output-buffer-limit` of the pub/sub class, in bytes, if
/// the server lets us read it (managed services often refuse `CONFIG`) and
/// sets one: a subscriber whose output buffer reaches it is disconnected.
async fn pubsub_hard_limit(connection: &mut redis::aio::MultiplexedConnection) -> Option<usize> {
    // A map: RESP2 gives a flat array of name and value, RESP3 a map.
    let reply: redis::RedisResult<HashMap<String, String>> = redis::cmd("CONFIG")
        .arg("GET")
        .arg("client-output-buffer-limit")
        .query_async(connection)
        .await;
    let setting = reply.ok()?.remove("client-output-buffer-limit")?;
    hard_limit_of("pubsub", &setting)
}

/// The hard limit of `class` in a `client-output-buffer-limit` setting
/// (`normal 0 0 0 replica 268435456 67108864 60 pubsub 33554432 8388608 60`,
/// in bytes as `CONFIG GET` gives it); `None` if absent or 0 (no limit).
fn hard_limit_of(class: &str, setting: &str) -> Option<usize> {
    let words: Vec<&str> = setting.split_whitespace().collect();
    let at = words.chunks_exact(4).find(|chunk| chunk[0] == class)?;
    at[1].parse::<usize>().ok().filter(|&hard| hard > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Only each message was kept under the limit: 64 messages each just
    /// under it went in one pipeline, and reached every subscriber's
    /// output buffer at once.
    #[test]
    fn a_batch_is_published_before_its_bytes_pass_the_limit() {
        let mut batch = Batch::default();
        assert!(!batch.is_full_for(1000, 1000), "one message always fits");
        batch.push(vec![0; 600]);
        assert!(!batch.is_full_for(400, 1000));
        assert!(batch.is_full_for(401, 1000), "1,001 bytes");
        for _ in 1..BATCH {
            batch.push(Vec::new());
        }
        assert!(batch.is_full_for(0, 1000), "64 messages");
    }

    #[test]
    fn the_pubsub_hard_limit_is_read_from_the_setting() {
        let default = "normal 0 0 0 slave 268435456 67108864 60 pubsub 33554432 8388608 60";
        assert_eq!(hard_limit_of("pubsub", default), Some(33_554_432));
        assert_eq!(hard_limit_of("pubsub", "normal 0 0 0 pubsub 0 0 0"), None);
        assert_eq!(hard_limit_of("pubsub", "normal 0 0 0"), None);
        assert_eq!(hard_limit_of("pubsub", "pubsub lots 0 0"), None);
    }
}
