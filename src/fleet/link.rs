//! The link itself: the hook that turns this cache's changes into
//! messages, the task that publishes them, and the task that applies the
//! other replicas' messages here.

use std::future::Future;
use std::hash::{BuildHasher, Hash};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use futures_util::StreamExt;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use tokio::runtime::Handle;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::{Instant, sleep, timeout};

use super::message::{Envelope, Op, decode};
use super::{FleetError, FleetMetrics, OnReconnect, RemoteChanges};
use crate::cache::Cache;
use crate::changes::{Change, Share};
use crate::inner::Inner;
use crate::store::Write;
use crate::throttle::Throttle;

/// How long a connection attempt or a command may take.
const NETWORK_TIMEOUT: Duration = Duration::from_secs(1);
/// The first wait before connecting again, doubled up to [`MAX_BACKOFF`].
const BACKOFF: Duration = Duration::from_millis(50);
const MAX_BACKOFF: Duration = Duration::from_secs(2);
/// Messages waiting to be published, by default.
const QUEUE: usize = 1024;
/// The most messages published in one pipeline (one round trip).
const BATCH: usize = 64;

type VersionFn<V> = Arc<dyn Fn(&V) -> String + Send + Sync>;

/// How values travel, when the user opted in ([`FleetBuilder::send_values`]).
struct ValueCodec<V> {
    encode: fn(&V) -> Result<Value, serde_json::Error>,
    decode: fn(Value) -> Result<V, serde_json::Error>,
}

impl<V> Clone for ValueCodec<V> {
    fn clone(&self) -> Self {
        Self {
            encode: self.encode,
            decode: self.decode,
        }
    }
}

/// Settings of a link, then [`attach`](Self::attach) to a cache. See the
/// [module docs](super) for what a link does.
pub struct FleetBuilder<V> {
    url: String,
    channel: String,
    remote: RemoteChanges,
    reconnect: OnReconnect,
    version: Option<VersionFn<V>>,
    values: Option<ValueCodec<V>>,
    queue: usize,
}

impl<V> FleetBuilder<V>
where
    V: Clone + Send + Sync + 'static,
{
    /// A link over the Redis server at `url` (`redis://host:port/`), on the
    /// pub/sub channel `channel`: every replica of one fleet names the same.
    pub fn new(url: impl Into<String>, channel: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            channel: channel.into(),
            remote: RemoteChanges::Remove,
            reconnect: OnReconnect::MarkAllStale,
            version: None,
            values: None,
            queue: QUEUE,
        }
    }

    /// How another replica's change of a key is applied here (default
    /// [`RemoteChanges::Remove`]).
    pub fn remote_changes(mut self, how: RemoteChanges) -> Self {
        self.remote = how;
        self
    }

    /// What the link does once subscribed again after a time without a
    /// subscription (default [`OnReconnect::MarkAllStale`]).
    pub fn on_reconnect(mut self, what: OnReconnect) -> Self {
        self.reconnect = what;
        self
    }

    /// Names the version of a value (a commit id, an ETag): messages carry
    /// it, a replica already holding that version of the key leaves it be,
    /// and a refresh is published only when it changes the version.
    /// Without it, a refresh is published only when values are sent
    /// (there is no telling whether it changed anything).
    pub fn version(mut self, version: impl Fn(&V) -> String + Send + Sync + 'static) -> Self {
        self.version = Some(Arc::new(version));
        self
    }

    /// Sends the value itself with a write or a refresh, so that the other
    /// replicas install it rather than remove or revalidate theirs. Off by
    /// default: values may be large or private.
    pub fn send_values(mut self) -> Self
    where
        V: Serialize + DeserializeOwned,
    {
        self.values = Some(ValueCodec {
            encode: |value| serde_json::to_value(value),
            decode: serde_json::from_value,
        });
        self
    }

    /// The most messages waiting to be published (default 1024); past it,
    /// and while Redis is unreachable, messages are dropped and counted.
    /// At least 1.
    pub fn queue(mut self, messages: usize) -> Self {
        self.queue = messages.max(1);
        self
    }

    /// Attaches the link to `cache`, its tasks on the current tokio runtime.
    /// Returns at once: the link connects in the background, and keeps
    /// trying while Redis is unreachable (see [`FleetLink::subscribed`]).
    pub fn attach<K, S>(self, cache: &Cache<K, V, S>) -> Result<FleetLink<K, V, S>, FleetError>
    where
        K: Hash + Eq + Clone + Send + Sync + Serialize + DeserializeOwned + 'static,
        S: BuildHasher + Clone + Send + Sync + 'static,
    {
        let runtime = Handle::try_current().map_err(|_| FleetError::NoRuntime)?;
        self.attach_on(cache, &runtime)
    }

    /// [`attach`](Self::attach), the tasks on `runtime`.
    pub fn attach_on<K, S>(
        self,
        cache: &Cache<K, V, S>,
        runtime: &Handle,
    ) -> Result<FleetLink<K, V, S>, FleetError>
    where
        K: Hash + Eq + Clone + Send + Sync + Serialize + DeserializeOwned + 'static,
        S: BuildHasher + Clone + Send + Sync + 'static,
    {
        let client =
            redis::Client::open(self.url.as_str()).map_err(|e| FleetError::Url(e.to_string()))?;
        let id = replica_id();
        let shared = Arc::new(Shared {
            id,
            envelope: Envelope::new(id),
            counters: Counters::default(),
            subscribed: watch::Sender::new(false),
            logs: Throttle::new(),
        });
        let (outbox, queued) = mpsc::channel(self.queue);
        let tell = Teller {
            outbox: outbox.clone(),
            shared: Arc::clone(&shared),
            version: self.version.clone(),
            values: self.values.clone(),
        };
        if !cache
            .inner
            .changes
            .attach(Box::new(move |change| tell.tell(change)))
        {
            return Err(FleetError::AlreadyLinked);
        }
        let applier = Applier {
            cache: Arc::downgrade(&cache.inner),
            shared: Arc::clone(&shared),
            remote: self.remote,
            reconnect: self.reconnect,
            version: self.version,
            values: self.values,
        };
        let publisher = runtime.spawn(publish(
            client.clone(),
            self.channel.clone(),
            queued,
            Arc::clone(&shared),
        ));
        let subscriber = runtime.spawn(subscribe(client, self.channel, applier));
        Ok(FleetLink {
            cache: Arc::downgrade(&cache.inner),
            shared,
            outbox,
            tasks: [publisher, subscriber],
        })
    }
}

/// A cache's link to its fleet: dropping it detaches the link (the
/// cache's changes are no longer published, and the tasks end).
pub struct FleetLink<K, V, S> {
    cache: Weak<Inner<K, V, S>>,
    shared: Arc<Shared>,
    outbox: mpsc::Sender<String>,
    tasks: [JoinHandle<()>; 2],
}

impl<K, V, S> FleetLink<K, V, S>
where
    K: Hash + Eq + Clone + Send + Sync + Serialize + DeserializeOwned + 'static,
    V: Clone + Send + Sync + 'static,
    S: BuildHasher + Clone + Send + Sync + 'static,
{
    /// This replica's id, in the `from` field of its messages.
    pub fn replica_id(&self) -> u64 {
        self.shared.id
    }

    /// What the link has done so far.
    pub fn metrics(&self) -> FleetMetrics {
        self.shared.metrics()
    }

    /// Waits until the link is subscribed to its channel (at once if it
    /// is). Bound it with a timeout: while Redis is down it never is.
    pub fn subscribed(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut subscribed = self.shared.subscribed.subscribe();
        async move {
            // Fails only when the link is dropped: then there is nothing
            // to wait for.
            let _ = subscribed.wait_for(|&on| on).await;
        }
    }

    /// Invalidates `key` here (as [`Cache::invalidate`]) and tells the
    /// fleet, whether or not this replica held it. `Cache::invalidate`
    /// tells the fleet only when the key was cached here: a borrowed key
    /// (`&str` for `String`) cannot be sent, so use this for a key this
    /// replica may not hold. Returns whether it was cached here.
    pub fn invalidate(&self, key: K) -> bool {
        let Some(inner) = self.cache.upgrade() else {
            return false;
        };
        let removed = inner.invalidate(&key, Share::Local);
        match self
            .shared
            .envelope
            .encode::<K>(Op::Removed, Some(&key), None, None)
        {
            Ok(payload) => self.shared.queue(&self.outbox, payload),
            Err(_) => self.shared.counters.incr(&self.shared.counters.dropped),
        }
        removed
    }
}

impl<K, V, S> Drop for FleetLink<K, V, S> {
    fn drop(&mut self) {
        if let Some(inner) = self.cache.upgrade() {
            inner.changes.detach();
        }
        for task in &self.tasks {
            task.abort();
        }
    }
}

impl<K, V, S> std::fmt::Debug for FleetLink<K, V, S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FleetLink")
            .field("replica_id", &format_args!("{:016x}", self.shared.id))
            .field("metrics", &self.shared.metrics())
            .finish_non_exhaustive()
    }
}

/// What the link's parts share.
struct Shared {
    id: u64,
    envelope: Envelope,
    counters: Counters,
    subscribed: watch::Sender<bool>,
    logs: Throttle,
}

#[derive(Default)]
struct Counters {
    published: AtomicU64,
    dropped: AtomicU64,
    received: AtomicU64,
    applied: AtomicU64,
    current: AtomicU64,
    own: AtomicU64,
    malformed: AtomicU64,
    reconnects: AtomicU64,
}

impl Counters {
    fn incr(&self, counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

impl Shared {
    fn metrics(&self) -> FleetMetrics {
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
            reconnects: get(&c.reconnects),
            subscribed: *self.subscribed.borrow(),
        }
    }

    /// Queues a payload for the publisher, or counts it dropped when the
    /// queue is full; never waits.
    fn queue(&self, outbox: &mpsc::Sender<String>, payload: String) {
        if outbox.try_send(payload).is_err() {
            self.counters.incr(&self.counters.dropped);
        }
    }

    /// Logs a line, at most a few a second.
    fn warn(&self, what: &str, detail: &dyn std::fmt::Display) {
        if let Some(held_back) = self.logs.admit(epoch_nanos()) {
            tracing::warn!(%detail, held_back, "fleet link: {what}");
        }
    }
}

/// Nanoseconds since the Unix epoch, for the log throttle's seconds.
fn epoch_nanos() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// A replica id: random per link, from the standard library's per-process
/// random hash keys and the time.
fn replica_id() -> u64 {
    use std::hash::BuildHasher as _;
    let id = std::collections::hash_map::RandomState::new().hash_one(epoch_nanos());
    // 0 would read as nothing in a log; any other value will do.
    id.max(1)
}

/// The hook: turns a change into a message and queues it.
struct Teller<V> {
    outbox: mpsc::Sender<String>,
    shared: Arc<Shared>,
    version: Option<VersionFn<V>>,
    values: Option<ValueCodec<V>>,
}

impl<V> Teller<V> {
    fn tell<K: Serialize>(&self, change: Change<'_, K, V>) {
        // User code runs here (Serialize, the version function): a panic
        // is this message's loss, not the caller's.
        match catch_unwind(AssertUnwindSafe(|| self.message(change))) {
            Ok(Ok(Some(payload))) => self.shared.queue(&self.outbox, payload),
            Ok(Ok(None)) => {}
            Ok(Err(error)) => {
                self.shared.counters.incr(&self.shared.counters.dropped);
                self.shared.warn("a change could not be encoded", &error);
            }
            Err(_) => {
                self.shared.counters.incr(&self.shared.counters.dropped);
                self.shared
                    .warn("a change could not be encoded", &"a panic while encoding");
            }
        }
    }

    fn message<K: Serialize>(
        &self,
        change: Change<'_, K, V>,
    ) -> Result<Option<String>, serde_json::Error> {
        let version = |value: &V| self.version.as_ref().map(|f| f(value));
        let value = |value: &V| {
            self.values
                .as_ref()
                .map(|codec| (codec.encode)(value))
                .transpose()
        };
        let (op, key, ver, val) = match change {
            Change::Written(key, v) => (Op::Written, Some(key), version(v), value(v)?),
            Change::Refreshed(key, old, new) => {
                let changed = match &self.version {
                    Some(f) => f(old) != f(new),
                    // No version to compare: only a sent value says what
                    // it changed to.
                    None => self.values.is_some(),
                };
                if !changed {
                    return Ok(None);
                }
                (Op::Refreshed, Some(key), version(new), value(new)?)
            }
            Change::Removed(key) => (Op::Removed, Some(key), None, None),
            Change::Cleared => (Op::Cleared, None, None, None),
        };
        self.shared
            .envelope
            .encode(op, key, ver.as_deref(), val.as_ref())
            .map(Some)
    }
}

/// Publishes what the hook queued over one connection, up to [`BATCH`]
/// `PUBLISH`es a round trip. Without a connection (Redis down) a message is dropped and
/// counted, with a connection attempt at most once per backoff, so the
/// queue drains and never blocks the hook. A publish that fails on a
/// connection Redis closed (a restart) is tried once more on a new one.
async fn publish(
    client: redis::Client,
    channel: String,
    mut queued: mpsc::Receiver<String>,
    shared: Arc<Shared>,
) {
    let mut publisher = Publisher {
        client,
        config: redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(NETWORK_TIMEOUT))
            .set_response_timeout(Some(NETWORK_TIMEOUT)),
        connection: None,
        retry_at: Instant::now(),
        backoff: BACKOFF,
        resubscribed: 0,
        shared,
    };
    let mut batch = Vec::with_capacity(BATCH);
    while queued.recv_many(&mut batch, BATCH).await > 0 {
        let mut sent = publisher.send(&channel, &batch).await;
        if sent.is_err() && publisher.connection.is_none() {
            sent = publisher.send(&channel, &batch).await;
        }
        let counters = &publisher.shared.counters;
        let counter = match sent {
            Ok(()) => &counters.published,
            Err(()) => &counters.dropped,
        };
        counter.fetch_add(batch.len() as u64, Ordering::Relaxed);
        batch.clear();
    }
}

struct Publisher {
    client: redis::Client,
    config: redis::AsyncConnectionConfig,
    connection: Option<redis::aio::MultiplexedConnection>,
    /// No connection attempt before this, unless the subscriber got in
    /// again since the last attempt (Redis is back: no need to wait).
    retry_at: Instant,
    backoff: Duration,
    /// The subscriber's reconnects at the last attempt.
    resubscribed: u64,
    shared: Arc<Shared>,
}

impl Publisher {
    /// One attempt to publish `payloads`, in one pipeline: connects first
    /// if it may.
    async fn send(&mut self, channel: &str, payloads: &[String]) -> Result<(), ()> {
        let resubscribed = self.shared.counters.reconnects.load(Ordering::Relaxed);
        if self.connection.is_none()
            && (Instant::now() >= self.retry_at || resubscribed != self.resubscribed)
        {
            self.resubscribed = resubscribed;
            match self
                .client
                .get_multiplexed_async_connection_with_config(&self.config)
                .await
            {
                Ok(connected) => {
                    self.connection = Some(connected);
                    self.backoff = BACKOFF;
                }
                Err(error) => {
                    self.shared.warn("cannot connect to publish", &error);
                    self.retry_at = Instant::now() + self.backoff;
                    self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
        let open = self.connection.as_mut().ok_or(())?;
        let mut pipeline = redis::pipe();
        for payload in payloads {
            pipeline.cmd("PUBLISH").arg(channel).arg(payload).ignore();
        }
        let sent: redis::RedisResult<()> = pipeline.query_async(open).await;
        sent.map(drop).map_err(|error| {
            self.shared.warn("a publish failed", &error);
            self.connection = None;
        })
    }
}

/// Subscribes, applies what arrives, and subscribes again when the
/// connection ends, backing off while Redis is unreachable. A subscription
/// that starts after a time without one (any but the very first attempt's)
/// runs the reconnect action: what was published meanwhile was missed.
async fn subscribe<K, V, S>(client: redis::Client, channel: String, applier: Applier<K, V, S>)
where
    K: Hash + Eq + Clone + Send + Sync + DeserializeOwned + 'static,
    V: Clone + Send + Sync + 'static,
    S: BuildHasher + Clone + Send + Sync + 'static,
{
    let shared = Arc::clone(&applier.shared);
    let mut first = true;
    let mut backoff = BACKOFF;
    loop {
        let attempt = timeout(NETWORK_TIMEOUT, async {
            let mut pubsub = client.get_async_pubsub().await?;
            pubsub.subscribe(&channel).await?;
            Ok::<_, redis::RedisError>(pubsub)
        })
        .await;
        let pubsub = match attempt {
            Ok(Ok(pubsub)) => pubsub,
            Ok(Err(error)) => {
                shared.warn("cannot subscribe", &error);
                first = false;
                sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
                continue;
            }
            Err(elapsed) => {
                shared.warn("cannot subscribe", &elapsed);
                first = false;
                sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
                continue;
            }
        };
        backoff = BACKOFF;
        if !first {
            if !applier.reconnected() {
                return;
            }
            shared.counters.incr(&shared.counters.reconnects);
        }
        first = false;
        shared.subscribed.send_replace(true);
        let mut messages = pubsub.into_on_message();
        while let Some(message) = messages.next().await {
            if !applier.apply(message.get_payload_bytes()) {
                return;
            }
        }
        shared.subscribed.send_replace(false);
    }
}

/// Applies other replicas' messages to the cache.
struct Applier<K, V, S> {
    cache: Weak<Inner<K, V, S>>,
    shared: Arc<Shared>,
    remote: RemoteChanges,
    reconnect: OnReconnect,
    version: Option<VersionFn<V>>,
    values: Option<ValueCodec<V>>,
}

impl<K, V, S> Applier<K, V, S>
where
    K: Hash + Eq + Clone + Send + Sync + DeserializeOwned + 'static,
    V: Clone + Send + Sync + 'static,
    S: BuildHasher + Clone + Send + Sync + 'static,
{
    /// The reconnect action; false if the cache is gone.
    fn reconnected(&self) -> bool {
        let Some(inner) = self.cache.upgrade() else {
            return false;
        };
        match self.reconnect {
            OnReconnect::MarkAllStale => inner.mark_all_stale(),
            OnReconnect::Clear => inner.clear(Share::Local),
            OnReconnect::Keep => {}
        }
        true
    }

    /// Applies one payload; false if the cache is gone.
    fn apply(&self, payload: &[u8]) -> bool {
        let Some(inner) = self.cache.upgrade() else {
            return false;
        };
        let counters = &self.shared.counters;
        counters.incr(&counters.received);
        // User code runs here (Deserialize, the version function, Drop of
        // what is removed): a panic costs this message, not the link.
        let applied = catch_unwind(AssertUnwindSafe(|| self.apply_to(&inner, payload)));
        match applied {
            Ok(Ok(counter)) => counters.incr(counter),
            Ok(Err(why)) => {
                counters.incr(&counters.malformed);
                self.shared.warn("a message was skipped", &why);
            }
            Err(_) => {
                counters.incr(&counters.malformed);
                self.shared
                    .warn("a message was skipped", &"a panic while applying it");
            }
        }
        true
    }

    /// Applies a payload; the counter it counts in, or why it is skipped.
    fn apply_to(&self, inner: &Inner<K, V, S>, payload: &[u8]) -> Result<&AtomicU64, String> {
        let counters = &self.shared.counters;
        let message = decode(payload).map_err(|why| format!("{why:?}"))?;
        if message.from == self.shared.id {
            return Ok(&counters.own);
        }
        if message.op == Op::Cleared {
            inner.clear(Share::Local);
            return Ok(&counters.applied);
        }
        let key = message.key.ok_or("no key")?;
        let key: K = serde_json::from_value(key).map_err(|e| format!("the key: {e}"))?;
        if matches!(message.op, Op::Written | Op::Refreshed) {
            if let (Some(value), Some(codec)) = (message.value, &self.values) {
                let value = (codec.decode)(value).map_err(|e| format!("the value: {e}"))?;
                if !inner.is_disabled() {
                    inner.write(key, value, Write::Upsert);
                }
                return Ok(&counters.applied);
            }
            if let (Some(version), Some(version_of)) = (&message.version, &self.version) {
                // The value is cloned under the lock; the user's function
                // runs after.
                let held = inner.store.read(&key, |node| node.value.clone());
                if held.is_some_and(|value| version_of(&value) == *version) {
                    return Ok(&counters.current);
                }
            }
        }
        match self.remote {
            RemoteChanges::Remove => {
                inner.invalidate(&key, Share::Local);
            }
            RemoteChanges::MarkStale => {
                inner.mark_stale(&key);
            }
        }
        Ok(&counters.applied)
    }
}
