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
//! - **The last word on a key is its final state.** A message says what
//!   the sender's cache holds for the key when the link publishes it, not
//!   what one write wrote, so however its threads race, the last message
//!   of a key tells its final value (or its removal).
//! - **No echo, no ping-pong.** A replica ignores its own messages (each
//!   carries the sender's random id); changes applied from the fleet are
//!   not published again; and a refresh of a value marked stale (by a
//!   message, `mark_stale` or a stale snapshot) is not published, since it
//!   answers a change already announced.
//! - **Readers never wait for Redis.** The writing thread only queues the
//!   key (a clone and a `try_send` into a bounded queue, after the
//!   change's lock is released); one task reads the cache, serializes and
//!   publishes, one applies. Redis down or slow costs readers and writers
//!   nothing.
//! - **Missed messages are noticed.** While Redis is unreachable, or the
//!   queue is full, changes are dropped and counted
//!   ([`FleetMetrics::publish_dropped`]), never queued past
//!   [`FleetBuilder::queue`]. A sender flags its next message after any
//!   drop (`lost`), so every receiver knows at that sender's next message
//!   ([`FleetMetrics::gaps`]); and a receiver that was itself without a
//!   subscription (Redis restarted, the connection lost, or silent: an idle
//!   subscription is pinged every 5 s) knows it. Either way it runs the
//!   reconnect action (as does one that received faster than it could
//!   apply and dropped some): by default every entry is marked stale, so the
//!   refresher revalidates what may have been missed while it goes on being
//!   served ([`OnReconnect`]). This is Redis's own advice for client-side
//!   caches (flush on a lost connection), minus the misses.
//! - **Bad input is skipped.** A message that does not decode, or whose key
//!   or value does not deserialize, is counted ([`FleetMetrics::malformed`])
//!   and skipped; a panic in the user's code (Serialize, Deserialize, the
//!   version function, a value's Drop) costs that message only. Both tasks
//!   reconnect with a backoff up to 2 s (jittered, so a fleet does not come
//!   back in lockstep), and a server refusing publishes or
//!   dropping subscribers at once is not hammered.
//!
//! # Connecting
//!
//! The URL is redis-rs's: `redis://[user:password@]host:port[/db]`, or
//! `rediss://` for TLS, which needs the feature `redis-tls` (without it,
//! [`attach`](FleetBuilder::attach) returns [`FleetError::Url`]) and trusts
//! the system's root certificates or those given to
//! `FleetBuilder::tls_root_certificates`. A password in the URL is sent
//! with `AUTH` (in `HELLO`) on each connection. `attach` does not wait for
//! Redis, so a refused connection (a wrong password, an untrusted
//! certificate, nobody listening) is not an error there: each attempt is
//! counted ([`FleetMetrics::connect_failures`]) and logged, and tried again
//! after a backoff, so a password rotated on the server, or a server that
//! comes back, needs no restart. Watch that counter, or bound
//! [`FleetLink::subscribed`] with a timeout at startup.
//!
//! # Trust
//!
//! **Without a [secret](FleetBuilder::secret), anyone who can `PUBLISH` on
//! the channel is trusted**: one message clears every replica (or, flagged
//! `lost`, marks everything stale), and with `send_values` installs any
//! value for any key. On a shared or managed Redis, set a secret (and an
//! ACL that lets only the fleet's user use the channel). With one, each
//! message carries an HMAC-SHA256 of its bytes and of the channel's name
//! (so that it is not accepted on another channel the secret is used on);
//! unsigned or badly signed messages are dropped as they arrive, before
//! they take room among the messages waiting to be applied or are parsed:
//! they change nothing, and are counted ([`FleetMetrics::rejected`]).
//!
//! What the secret does not do: it protects what messages say, not the
//! link's **availability**. Whoever can publish on the server can still
//! make Redis disconnect the subscribers (one message over the server's
//! pub/sub output-buffer hard limit does), and so make every replica run
//! its reconnect action about once a second for as long as they keep at
//! it; only the server's ACLs stop that. It does not hide anything (keys
//! and sent values travel readable; use TLS, feature `redis-tls`, against
//! eavesdroppers on the network, and trust the server itself), and it
//! does not stop a **replay**: whoever can publish can send again, later,
//! a message a replica signed (a clear clears again, an old value is
//! installed again). It bounds what an outsider can say to what the fleet
//! once said. Rotate the secret (all replicas at once) if it may have
//! leaked.
//!
//! # Limitations
//!
//! - **At most once, and noticed late.** A gap at a sender is seen only at
//!   its next message; a replica that stops for good after dropping some
//!   leaves the others stale until their TTL.
//! - **Concurrent writes of one key on two replicas** are not ordered:
//!   with the default (remove), both drop the key and fetch it again; with
//!   `send_values`, each may keep the other's value until the next change
//!   of the key or its TTL (a replica whose own change of the key is still
//!   queued when it applies another's tells that value again, which can
//!   land after a newer write elsewhere). Use a version, or removal, where
//!   that matters.
//! - **Marking stale needs a refresher.** With `MarkStale`, a replica whose
//!   cache runs no refresher removes instead, and its reconnect action
//!   clears: a mark nobody refreshes would be served for good.
//! - **`Cache::invalidate` tells the fleet only of a key it held**: it
//!   takes a borrowed key (`&str` for a `String`), and only a cached key
//!   gives the link a `K` to send. [`FleetLink::invalidate`] takes the
//!   owned key and always tells.
//! - **Not told**: read-through loads (`get_or_fetch`), snapshot loads,
//!   `mark_stale`, and evictions: each replica's capacity is its own.
//! - **Keys travel as JSON** (`K: Serialize + DeserializeOwned`), so a key
//!   must serialize the same way on every replica; a map key that is not a
//!   string does not, and is dropped and counted.
//! - **Redis 6 or later**: the subscription speaks RESP3, so that what it
//!   receives can be bounded: 4,096 messages waiting to be applied, and 16
//!   MiB of them (or four of the largest allowed, if more); past that they
//!   are dropped ([`FleetMetrics::dropped_on_arrival`]), counted as a gap,
//!   and the backlog received before the drop is discarded unapplied
//!   ([`FleetMetrics::discarded`]: the reconnect action covers it, and an
//!   older write applied after the action would land as fresh). The action
//!   runs then, or, within a second of the last one, at that second's end:
//!   messages received after the drop may be applied before it, which is
//!   safe (it only marks stale, or clears, what they wrote).
//! - **Messages are bounded in size** ([`FleetBuilder::max_message_bytes`],
//!   256 KiB by default), checked before a received message is parsed, and
//!   kept (as is each pipeline of them) under half the server's pub/sub
//!   output-buffer hard limit where `CONFIG GET` may read it. A message is read whole by the Redis client
//!   before the link sees it; Redis itself disconnects a subscriber rather
//!   than buffer past that hard limit (32 MiB by default).
//! - **Reconnect actions are coalesced**: at most one a second per replica,
//!   however many gaps are noticed ([`FleetMetrics::actions`]); a gap within
//!   the second after an action has one run at the second's end.
//!
//! # Performance
//!
//! An unlinked cache pays one relaxed load per change. A linked one clones
//! the key and `try_send`s it on the writing thread; figures are in
//! `BENCHMARKS.md` (`cargo bench --features redis --bench fleet`).

mod backoff;
#[doc(hidden)]
pub mod fuzzing;
mod inbox;
mod link;
mod message;
mod pacer;
mod publish;
mod seal;
mod shared;
mod subscribe;

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
    /// old value is served until the refresher brings the new one (it is
    /// asked to look at once). Without a TTL, or without a refresher
    /// running, removes.
    MarkStale,
}

/// What a link does when it may have missed messages: subscribed again
/// after a time without a subscription, a sender's message flagged as
/// following one it dropped, or messages dropped here on arrival.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum OnReconnect {
    /// Mark every entry stale (`Cache::mark_all_stale`): everything is
    /// served on and revalidated. Without a TTL, or without a refresher
    /// running, clears.
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
    /// Changes not published: the queue was full, Redis unreachable, the
    /// publish failed, or the change could not be encoded.
    pub publish_dropped: u64,
    /// Messages received on the channel and taken to be applied, this
    /// replica's own included (not those skipped as they arrived:
    /// `oversized`, `rejected`, `dropped_on_arrival`).
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
    /// Messages refused unread as they arrived, with a
    /// [secret](FleetBuilder::secret) set: unsigned, or not signed with
    /// this fleet's secret. They take no room among the messages waiting.
    pub rejected: u64,
    /// Messages missed: flagged by their sender as following one it dropped,
    /// or dropped here on arrival (faster than applied). Each has the
    /// reconnect action run after it (gaps close together share one).
    pub gaps: u64,
    /// Reconnect actions run: for gaps and resubscriptions, at most one a
    /// second (a gap within a second of the last action has it run at the
    /// second's end).
    pub actions: u64,
    /// Messages dropped on arrival: more were waiting to be applied than
    /// the link holds (4,096, or 16 MiB of them). Each run of drops is one
    /// gap.
    pub dropped_on_arrival: u64,
    /// Messages that were waiting when later ones were dropped on arrival,
    /// discarded unapplied: the reconnect action of that gap covers them
    /// (applied after it, an older write would land as fresh). Every
    /// message that arrives is counted once: in `received`, `oversized`,
    /// `rejected`, `dropped_on_arrival` or here.
    pub discarded: u64,
    /// Messages over [`FleetBuilder::max_message_bytes`]: received and
    /// skipped unread, or not sent (then a smaller message without the value
    /// is sent instead, or the change is dropped and counted in
    /// `publish_dropped` too).
    pub oversized: u64,
    /// Subscriptions started again after a time without one.
    pub reconnects: u64,
    /// Connection attempts that failed, of either task: refused, timed
    /// out, or turned away by TLS or `AUTH` (a wrong password). Each is
    /// logged and tried again after a backoff: the link never gives up.
    pub connect_failures: u64,
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
    /// A builder setting is out of its range; which, and why.
    Setting(String),
}

impl std::fmt::Display for FleetError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FleetError::Url(why) => write!(f, "invalid Redis URL: {why}"),
            FleetError::AlreadyLinked => f.write_str("the cache has a fleet link attached already"),
            FleetError::NoRuntime => f.write_str("attach needs a tokio runtime (or use attach_on)"),
            FleetError::Setting(why) => write!(f, "invalid fleet link setting: {why}"),
        }
    }
}

impl std::error::Error for FleetError {}
