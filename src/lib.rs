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
//! in a sharded map ([`dashmap`]); each holds its current value in an
//! [`arc_swap`] cell, replaced whole by writes.
//!
//! *Readers never block* means: a `get` never waits for a fetch, a refresh, an
//! eviction sweep or I/O of any kind. It takes its shard's *read* lock, which
//! can wait only while a writer is changing that same shard, for a bounded
//! in-memory step. A `get` does not allocate, send on a channel, take a mutex,
//! or write to a cache line other threads read, beyond setting an entry's
//! referenced bit when it is not set already and adding to a per-thread stripe
//! of counters.
//!
//! Eviction claims ring slots with compare-and-swap and an atomic hand; a
//! lock over the whole ring is taken exclusively only by `clear` and a
//! `configure` that changes `max_size`. The crate has no `unsafe` code.
//!
//! # Memory
//!
//! Per entry, with `K` and `V` the sizes of key and value:
//! a map slot `K + 8` bytes (plus the table's free space: hashbrown tables
//! are between 44 % and 88 % full), a node `K + 40` bytes, a value cell
//! `V + 24` bytes, and 8 bytes of eviction ring, which is allocated for
//! `max_size` entries when the cache is built. Data the key or value points to
//! (a `String`'s bytes) comes on top. For `u64 → u64` at one million entries
//! that is about 116 bytes.
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
mod fetcher;
mod flight;
mod metrics;
mod node;
mod refresh;
mod time;

pub use builder::{CacheBuilder, ConfigChange, ConfigError, DefaultHasher, MAX_SIZE_LIMIT};
pub use cache::Cache;
pub use fetcher::{FetchError, Fetched, Fetcher, IntoFetcher};
pub use metrics::Metrics;
pub use refresh::StartError;

/// The README's examples, compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
