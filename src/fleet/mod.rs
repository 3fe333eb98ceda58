//! A fleet of caches that agree: replicas of a service tell one another
//! of their changes over Redis pub/sub (feature `redis`).
//!
//! A [`FleetLink`] attached to a cache publishes, on a channel the user
//! names, a small message for each change made through it: an `insert`,
//! an `invalidate`, `remove`, `retain` or `invalidate_if` of a key it held,
//! a `clear`, and a refresh that brought a new value. Every other replica
//! on the channel applies it: a removal, a write or a refresh of a key
//! fences that key's fetches under way and removes it (or, with
//! [`RemoteChanges::MarkStale`], marks it stale, so it is served while it
//! is revalidated); a clear clears. With a [version](FleetBuilder::version)
//! function a replica that already holds the announced version leaves its
//! entry be; with [`send_values`](FleetBuilder::send_values) the value
//! travels and is installed as it is.
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use std::time::Duration;
//! use swr_cache::Cache;
//! use swr_cache::fleet::{FleetBuilder, RemoteChanges};
//!
//! let cache: Cache<String, String> = Cache::builder().ttl(Duration::from_secs(300)).build()?;
//! let link = FleetBuilder::new("redis://127.0.0.1:6379/", "prompts")
//!     .remote_changes(RemoteChanges::MarkStale)
//!     .attach(&cache)?;
//! cache.insert("greeting".into(), "hello".into()); // the other replicas drop theirs
//! println!("{:?}", link.metrics());
//! # Ok(()) }
//! ```
//!
//! # Guarantees
//!
//! - **A remote change fences as a local one does.** A fetch of the key
//!   that was under way here when the message arrived installs nothing,
//!   and a caller after it does not join it.
//! - **No echo.** A replica ignores its own messages (each carries the
//!   sender's random id), and changes applied from the fleet are not
//!   published again.
//! - **Readers never wait for Redis.** Publishing is a `try_send` into a
//!   bounded queue from the thread making the change, after the change's
//!   lock is released; one task publishes, one applies. Redis down or
//!   slow costs readers and writers nothing.
//! - **Faults are normal.** While Redis is unreachable messages are
//!   dropped and counted ([`FleetMetrics::publish_dropped`]), never queued
//!   past [`FleetBuilder::queue`]; both tasks reconnect with a backoff up
//!   to 2 s. Once subscribed again after a time without a subscription,
//!   the link marks every entry stale, so the refresher revalidates what
//!   it may have missed ([`OnReconnect`], configurable); this is Redis's
//!   own advice for client-side caches (flush on a lost connection), minus
//!   the misses. A message that does not decode, or whose key or value
//!   does not deserialize, is counted ([`FleetMetrics::malformed`]) and
//!   skipped; a panic in the user's code while applying one costs that
//!   message only.
//!
//! # Limitations
//!
//! - **At most once.** Pub/sub delivers to whoever is subscribed at that
//!   moment: a message published while a replica is disconnected is lost
//!   for it (the reconnect action covers that), and there is no ordering
//!   between replicas beyond what Redis gives one connection.
//! - **`Cache::invalidate` tells the fleet only of a key it held**: it
//!   takes a borrowed key (`&str` for a `String`), and only a cached key
//!   gives the link a `K` to send. [`FleetLink::invalidate`] takes the
//!   owned key and always tells.
//! - **Not told**: read-through loads (`get_or_fetch`), snapshot loads,
//!   `mark_stale`, and evictions: each replica's capacity is its own.
//! - **Keys travel as JSON** (`K: Serialize + DeserializeOwned`), so a key
//!   must serialize the same way on every replica; a map key that is not a
//!   string does not, and is dropped and counted.
//!
//! # Performance
//!
//! An unlinked cache pays one relaxed load per change. A linked one
//! serializes the key (and version) and sends it to the queue on the
//! writing thread; figures are in `BENCHMARKS.md` (`cargo bench --features
//! redis --bench fleet`).

mod link;
mod message;

pub use link::{FleetBuilder, FleetLink};

/// How a replica applies another replica's change of a key.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum RemoteChanges {
    /// Fence the key's fetches and remove it: the next read misses and
    /// fetches (the same as `invalidate`).
    #[default]
    Remove,
    /// Fence the key's fetches and mark it stale (`Cache::mark_stale`): the
    /// old value is served until the refresher (or the next stale read)
    /// brings the new one. Without a TTL, removes.
    MarkStale,
}

/// What a link does when it is subscribed again after a time without a
/// subscription, during which it may have missed messages.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum OnReconnect {
    /// Mark every entry stale (`Cache::mark_all_stale`): everything is
    /// served on and revalidated. Without a TTL, clears.
    #[default]
    MarkAllStale,
    /// Clear the cache.
    Clear,
    /// Do nothing: entries catch up by their TTL.
    Keep,
}

/// What a link has done, since it was attached.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct FleetMetrics {
    /// Messages published.
    pub published: u64,
    /// Messages not published: the queue was full, Redis unreachable, the
    /// publish failed, or the change could not be encoded.
    pub publish_dropped: u64,
    /// Messages received on the channel, this replica's own included.
    pub received: u64,
    /// Other replicas' messages applied here.
    pub applied: u64,
    /// Other replicas' writes of a version this replica already held.
    pub already_current: u64,
    /// This replica's own messages, received and ignored.
    pub own: u64,
    /// Messages skipped: not ours, not decodable, or their key or value did
    /// not deserialize.
    pub malformed: u64,
    /// Subscriptions started again after a time without one.
    pub reconnects: u64,
    /// Whether the link is subscribed now.
    pub subscribed: bool,
}

/// Why a link could not be attached.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum FleetError {
    /// The Redis URL does not parse; the client's reason.
    Url(String),
    /// The cache has a link attached already.
    AlreadyLinked,
    /// [`FleetBuilder::attach`] was called outside a tokio runtime.
    NoRuntime,
}

impl std::fmt::Display for FleetError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FleetError::Url(why) => write!(f, "invalid Redis URL: {why}"),
            FleetError::AlreadyLinked => f.write_str("the cache has a fleet link attached already"),
            FleetError::NoRuntime => f.write_str("attach needs a tokio runtime (or use attach_on)"),
        }
    }
}

impl std::error::Error for FleetError {}
