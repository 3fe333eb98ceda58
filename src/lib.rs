//! A concurrent in-memory cache whose entries are refreshed in the background:
//! a reader always gets an answer at once, fresh or stale, and never waits for a
//! fetch (stale-while-revalidate).
//!
//! ```
//! use std::sync::Arc;
//! use std::time::Duration;
//! use swr_cache::Cache;
//!
//! let cache: Cache<String, Arc<str>> = Cache::builder()
//!     .max_size(1_000)
//!     .ttl(Some(Duration::from_secs(300)))
//!     .refresh_interval(Duration::from_secs(60))
//!     .build()?;
//! cache.insert("greeting".to_string(), Arc::from("hello"));
//! assert_eq!(cache.get("greeting").as_deref(), Some("hello"));
//! assert_eq!(cache.metrics().hits, 1);
//! # Ok::<(), swr_cache::ConfigError>(())
//! ```
//!
//! # Policy
//!
//! The cache holds at most `max_size` entries. A new key in a full cache evicts
//! one entry chosen by a *clock sweep* (second chance), an approximation of
//! least-recently-used: every read sets an entry's referenced bit; the hand
//! passes over referenced entries, clearing their bit, and evicts the first
//! unreferenced one. An entry older than the TTL is *stale*: it is still
//! served, and counted as a stale hit. `ttl = None` is offline mode: nothing
//! is ever stale.
//!
//! # Concurrency
//!
//! `Cache` is `Send + Sync` and cheap to clone (a shared handle). Entries sit
//! inline in a sharded map ([`dashmap`]): value, write time, version and
//! flags in the table slot itself, so a read touches the line the hash probe
//! already loaded.
//!
//! *Readers never block* means: a `get` never waits for a fetch, a refresh, an
//! eviction sweep or I/O of any kind. It takes its shard's *read* lock, which
//! can wait only while a writer is changing that same shard, for a bounded
//! in-memory step (writing a value, removing an entry). A `get` does not
//! allocate, read the clock, send on a channel or take a mutex; it writes only
//! an entry's referenced bit when that is not set already, and a counter on a
//! stripe of its own thread.
//!
//! Writes to a present key (an `insert`, a refresh's result) replace the value
//! under the shard's write lock. A refresh installs its result only if the
//! entry still has the version the refresh started from, so it never
//! overwrites a newer write and never brings back a removed key. New keys claim
//! a slot of the eviction ring by compare-and-swap behind an atomic hand; a
//! lock over the whole ring is taken exclusively only by `clear` and by a
//! `configure` that changes `max_size`. The crate has no `unsafe` code.
//!
//! # Memory
//!
//! Per entry, with `K` and `V` the sizes of key and value: a map slot of
//! `K + V + 16` bytes, rounded up to 8 (hashbrown tables are between 44 % and
//! 88 % full, so count about 1.5 to 2 slots per entry), and 8 bytes of
//! eviction ring slot (the key's hash), allocated for `max_size` entries when
//! the cache is built. Data the key or value points to (a `String`'s bytes)
//! comes on top. Measured at a million `u64 → u64` entries: 77 heap bytes
//! per entry (quick_cache 53, moka 233).
//!
//! # Performance
//!
//! Measured on 2 cores against peers in the same run (`BENCHMARKS.md` has the
//! tables and commands): a hit reads at 0.9–1.1× quick_cache's speed and
//! 0.75–0.95× a bare `DashMap`'s, many times moka's; with 5 % inserts and
//! eviction running, 0.8–0.95× quick_cache. Inserting new keys into a full
//! cache is the slow side, at 0.25–0.4× quick_cache: a claim on the ring
//! costs several map lookups. The hit ratio equals a textbook CLOCK's and is at
//! least exact LRU's on every trace measured, but it is below quick_cache's
//! and S3-FIFO's where one-hit keys crowd the cache.
//!
//! # Features
//!
//! - `serde` (default): [`Cache::dump`] and [`Cache::load`] of JSON
//!   snapshots, compatible with the LangSmith SDK's files; see [`snapshot`].
//!
//! # Semantics
//!
//! - `get` of a missing key is `None` and counts a miss; of a present key, its
//!   value fresh or stale, counting a hit (and a stale hit when stale).
//! - `insert` of a new key into a full cache evicts one entry; overwriting a
//!   key resets its age.
//! - `max_size = 0` disables the cache: `get` is `None` without counting,
//!   `insert` stores nothing.
//! - Invalid settings are rejected by [`CacheBuilder::build`] and
//!   [`Cache::configure`] with a [`ConfigError`] naming the setting.
#![forbid(unsafe_code)]
#![warn(missing_docs)]
#![cfg_attr(docsrs, feature(doc_cfg))]

mod builder;
mod cache;
mod clock;
mod entry;
mod fetcher;
mod flight;
mod hashing;
mod metrics;
mod refresh;
#[cfg(feature = "serde")]
#[cfg_attr(docsrs, doc(cfg(feature = "serde")))]
pub mod snapshot;
mod time;

pub use builder::{CacheBuilder, ConfigChange, ConfigError, DefaultHasher, MAX_SIZE_LIMIT};
pub use cache::Cache;
pub use fetcher::{FetchError, Fetched, Fetcher, IntoFetcher};
pub use metrics::Metrics;
pub use refresh::StartError;
#[cfg(feature = "serde")]
pub use snapshot::{LoadReport, SNAPSHOT_FORMAT, SnapshotError, SnapshotLimits};

/// The README's examples, compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
