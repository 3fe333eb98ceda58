//! The link's handle and builder: attaching sets the cache's change hook
//! ([`publish::Teller`]) and spawns the two tasks ([`publish::run`],
//! [`subscribe::run`]), which share [`Shared`].

use std::future::Future;
use std::hash::{BuildHasher, Hash};
use std::sync::{Arc, Weak};
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::runtime::Handle;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::pacer::Pacer;
use super::publish::{self, Item, Teller};
use super::seal::Seal;
use super::shared::{Shared, Timeouts, ValueCodec, VersionFn, epoch_nanos};
use super::subscribe::{self, Applier};
use super::{FleetError, FleetMetrics, OnReconnect, RemoteChanges};
use crate::cache::Cache;
use crate::changes::Share;
use crate::inner::Inner;

/// Messages waiting to be published, by default.
const QUEUE: usize = 1024;
/// The largest message sent or received, by default.
const MAX_MESSAGE: usize = 256 << 10;
/// The least [`FleetBuilder::max_message_bytes`]: room for a key.
const MIN_MESSAGE: usize = 1 << 10;
/// The most [`FleetBuilder::queue`] takes.
const MAX_QUEUE: usize = 1 << 24;

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
    secret: Option<Vec<u8>>,
    max_message: usize,
    timeouts: Timeouts,
    /// PEM root certificates to trust for `rediss://` (feature `redis-tls`).
    #[cfg(feature = "redis-tls")]
    tls_roots: Option<Vec<u8>>,
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
            secret: None,
            max_message: MAX_MESSAGE,
            timeouts: Timeouts::default(),
            #[cfg(feature = "redis-tls")]
            tls_roots: None,
        }
    }

    /// How another replica's change of a key is applied here (default
    /// [`RemoteChanges::Remove`]).
    pub fn remote_changes(mut self, how: RemoteChanges) -> Self {
        self.remote = how;
        self
    }

    /// What the link does when it may have missed messages: subscribed
    /// again after a time without a subscription, or a message flagged as
    /// following one its sender dropped (default [`OnReconnect::MarkAllStale`]).
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

    /// The most changes waiting to be published (default 1024); past it,
    /// and while Redis is unreachable, they are dropped and counted (and
    /// the receivers, seeing the next message flagged `lost`, run the reconnect
    /// action). At least 1; more than 2^24 is refused by
    /// [`attach`](Self::attach).
    pub fn queue(mut self, messages: usize) -> Self {
        self.queue = messages.max(1);
        self
    }

    /// How long connecting to Redis may take, handshakes (TLS, `HELLO`,
    /// `AUTH`) and `SUBSCRIBE` included (default 1 s). A replica across a
    /// slow link, or a server that answers slowly after a restart, may need
    /// more; a zero is refused by [`attach`](Self::attach).
    ///
    /// ```
    /// use std::time::Duration;
    /// use swr_cache::fleet::FleetBuilder;
    ///
    /// let builder = FleetBuilder::<String>::new("redis://127.0.0.1:6379/", "prompts")
    ///     .connect_timeout(Duration::from_secs(3))
    ///     .response_timeout(Duration::from_secs(2));
    /// ```
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.timeouts.connect = timeout;
        self
    }

    /// How long a reply may take (default 1 s): a pipeline of `PUBLISH`es
    /// (past it the pipeline is dropped and counted, and the connection
    /// made again), and the `PING` of an idle subscription (past it the
    /// subscription is taken for dead and made again). A zero is refused by
    /// [`attach`](Self::attach).
    pub fn response_timeout(mut self, timeout: Duration) -> Self {
        self.timeouts.response = timeout;
        self
    }

    /// Signs every message with `secret` (HMAC-SHA256), and refuses any
    /// message not signed with it: unsigned or badly signed messages are
    /// dropped unread and counted ([`FleetMetrics::rejected`]). Every
    /// replica of the fleet must be given the same secret (a replica
    /// without it counts the others' messages as
    /// [malformed](FleetMetrics::malformed)). Use at least 32 random bytes;
    /// an empty secret is refused by [`attach`](Self::attach).
    ///
    /// Without a secret, whoever can `PUBLISH` on the channel is trusted:
    /// one message clears every replica, and with
    /// [`send_values`](Self::send_values) installs any value. With one,
    /// only holders of the secret can say anything, but a message they
    /// signed can be replayed by whoever can publish (see the
    /// [module docs](super#trust)).
    ///
    /// ```no_run
    /// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
    /// # let cache: swr_cache::Cache<String, String> = swr_cache::Cache::builder().build()?;
    /// use swr_cache::fleet::FleetBuilder;
    ///
    /// let secret = std::env::var("FLEET_SECRET")?;
    /// let link = FleetBuilder::new("redis://127.0.0.1:6379/", "prompts")
    ///     .secret(secret)
    ///     .attach(&cache)?;
    /// # Ok(()) }
    /// ```
    pub fn secret(mut self, secret: impl AsRef<[u8]>) -> Self {
        self.secret = Some(secret.as_ref().to_vec());
        self
    }

    /// The largest message, in bytes, sent or received (default 256 KiB; at
    /// least 1 KiB, else [`attach`](Self::attach) refuses it). A received
    /// message over it is skipped unread; a change whose message would be
    /// over it is sent without its value, or, still too large, dropped
    /// (receivers then run the reconnect action). Each is counted in
    /// [`FleetMetrics::oversized`]. Give every replica the same.
    ///
    /// The publisher also keeps under the server's own bound: a message
    /// larger than the pub/sub class's hard `client-output-buffer-limit`
    /// would make Redis disconnect every subscriber. It reads the limit
    /// with `CONFIG GET` on each connection and sends nothing larger than
    /// half of it; where `CONFIG` is refused (managed services often do),
    /// it keeps this setting alone, so keep it under that limit (Redis's
    /// default is 32 MiB).
    ///
    /// ```
    /// use swr_cache::fleet::FleetBuilder;
    ///
    /// let builder = FleetBuilder::<String>::new("redis://127.0.0.1:6379/", "prompts")
    ///     .send_values()
    ///     .max_message_bytes(64 << 10);
    /// ```
    pub fn max_message_bytes(mut self, bytes: usize) -> Self {
        self.max_message = bytes;
        self
    }

    /// Trusts the root certificates in `pem` (one or more, PEM) for a
    /// `rediss://` URL, instead of the system's (feature `redis-tls`): for a
    /// server whose certificate a private CA signed. The server's name in
    /// the URL must match its certificate. Without TLS, a password in the
    /// URL (`redis://user:password@host/`) travels in clear.
    ///
    /// TLS is redis-rs's rustls transport; if the process has not chosen a
    /// rustls crypto provider, attaching installs ring's as its default.
    ///
    /// ```no_run
    /// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
    /// # let cache: swr_cache::Cache<String, String> = swr_cache::Cache::builder().build()?;
    /// use swr_cache::fleet::FleetBuilder;
    ///
    /// let ca = std::fs::read("/etc/redis/ca.pem")?;
    /// let link = FleetBuilder::new("rediss://fleet:password@redis.internal:6380/", "prompts")
    ///     .tls_root_certificates(ca)
    ///     .attach(&cache)?;
    /// # Ok(()) }
    /// ```
    #[cfg(feature = "redis-tls")]
    #[cfg_attr(docsrs, doc(cfg(feature = "redis-tls")))]
    pub fn tls_root_certificates(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.tls_roots = Some(pem.into());
        self
    }

    /// The Redis client for the URL (and the TLS roots, if given).
    fn client(&self) -> Result<redis::Client, FleetError> {
        #[cfg(feature = "redis-tls")]
        {
            use rustls::crypto::{CryptoProvider, ring};
            if CryptoProvider::get_default().is_none() {
                // Deprecated for its lack of post-quantum key exchange, as
                // rustls's own fallback to it is; lost only to another
                // thread installing a provider meanwhile.
                #[allow(deprecated)]
                let _ = ring::default_provider().install_default();
            }
            if let Some(roots) = &self.tls_roots {
                let certificates = redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(roots.clone()),
                };
                return redis::Client::build_with_tls(self.url.as_str(), certificates)
                    .map_err(|e| FleetError::Setting(format!("TLS: {e}")));
            }
        }
        redis::Client::open(self.url.as_str()).map_err(|e| FleetError::Url(e.to_string()))
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
        if self.queue > MAX_QUEUE {
            return Err(FleetError::Setting(format!(
                "queue is {}, over {MAX_QUEUE}",
                self.queue
            )));
        }
        if self.timeouts.connect.is_zero() || self.timeouts.response.is_zero() {
            return Err(FleetError::Setting("a timeout is zero".into()));
        }
        if self.max_message < MIN_MESSAGE {
            return Err(FleetError::Setting(format!(
                "max_message_bytes is {}, under {MIN_MESSAGE}",
                self.max_message
            )));
        }
        let seal = match &self.secret {
            Some(secret) if secret.is_empty() => {
                return Err(FleetError::Setting("the secret is empty".into()));
            }
            Some(secret) => Some(Seal::new(secret, &self.channel)),
            None => None,
        };
        // Only once the settings are known good: making the client installs
        // the process's TLS provider (feature `redis-tls`).
        let client = self.client()?;
        // The subscription speaks RESP3, whose pushes can be bounded.
        let info = client.get_connection_info().clone();
        let resp3 = info
            .redis_settings()
            .clone()
            .set_protocol(redis::ProtocolVersion::RESP3);
        let listener = redis::Client::open(info.set_redis_settings(resp3))
            .map_err(|e| FleetError::Url(e.to_string()))?;
        let id = replica_id();
        let shared = Arc::new(Shared::new(id, seal, self.timeouts));
        let (outbox, queued) = mpsc::channel(self.queue);
        let teller = Arc::new(Teller {
            outbox,
            shared: Arc::clone(&shared),
            version: self.version.clone(),
            values: self.values.is_some(),
        });
        let hook = Arc::clone(&teller);
        if !cache
            .inner
            .changes
            .attach(Box::new(move |change| hook.tell(change)))
        {
            return Err(FleetError::AlreadyLinked);
        }
        let cache_ref = Arc::downgrade(&cache.inner);
        let publisher = runtime.spawn(publish::run(
            client.clone(),
            self.channel.clone(),
            queued,
            publish::Reader {
                cache: Weak::clone(&cache_ref),
                version: self.version.clone(),
                values: self.values.clone(),
            },
            Arc::clone(&shared),
            self.max_message,
        ));
        let applier = Applier {
            cache: Weak::clone(&cache_ref),
            shared: Arc::clone(&shared),
            remote: self.remote,
            reconnect: self.reconnect,
            version: self.version,
            values: self.values,
            pacer: Pacer::default(),
        };
        let subscriber = runtime.spawn(subscribe::run(
            listener,
            self.channel,
            self.max_message,
            applier,
        ));
        Ok(FleetLink {
            cache: cache_ref,
            shared,
            teller,
            tasks: [publisher, subscriber],
        })
    }
}

/// A cache's link to its fleet: dropping it detaches the link (the
/// cache's changes are no longer published, and the tasks end).
pub struct FleetLink<K, V, S> {
    cache: Weak<Inner<K, V, S>>,
    shared: Arc<Shared>,
    teller: Arc<Teller<K, V>>,
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
        self.teller
            .queue(Item::Key(super::message::Op::Removed, key));
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

/// A replica id: random per link, from the standard library's per-process
/// random hash keys and the time.
fn replica_id() -> u64 {
    let id = std::collections::hash_map::RandomState::new().hash_one(epoch_nanos());
    // 0 would read as nothing in a log; any other value will do.
    id.max(1)
}
