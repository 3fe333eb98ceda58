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
//! The cache holds at most `max_size` entries (or, with a
//! [weigher](CacheBuilder::weigher), at most `max_weight` of total weight).
//! It is split into shards by key hash, each holding its share of the bound
//! and running its own eviction policy: S3-FIFO's queues with TinyLFU's
//! frequency duels.
//!
//! - A new key enters *probation*, a FIFO of about 5 % of the shard to
//!   start with. One hill climber for the whole cache then moves that share
//!   (from 0.5 % to 80 %) by the cache's hit ratio, each sample of ten
//!   capacities of requests: larger where reuse is recent, smaller for
//!   loops and scans. Reads raise a small per-entry counter, and only that.
//! - When room is needed, the oldest entry on probation leaves it: read twice
//!   or more, it moves to the *main* queue; otherwise it moves there only if a
//!   frequency sketch (how often each key was wanted lately) rates it above
//!   main's next victim, and else it is evicted, its key remembered by a
//!   *ghost*. A remembered key that comes back asks for a place in main at
//!   once, by the same duel.
//! - Main is a CLOCK: its oldest entry, if read since it last passed, spends
//!   a read and goes to the back; if not, it is evicted.
//!
//! So a scan of keys read once passes through probation without pushing out
//! what is read often, and a loop a little larger than the cache keeps a
//! stable part of itself (where LRU and CLOCK never hit). `docs/design.md`
//! says how the policy was chosen and where it loses (large caches whose
//! reuse is mostly recent), and `BENCHMARKS.md` gives the hit ratios beside
//! quick_cache's, moka's and exact LRU's.
//!
//! An entry older than the TTL is *stale*: it is still served, counted as a
//! stale hit, and refreshed in the background. `ttl = None` is offline mode:
//! nothing is ever stale. [`max_stale`](CacheBuilder::max_stale) bounds how
//! long past the TTL a value is served while its refreshes fail, and a
//! fetcher can answer [`Fetched::Gone`] to have a key removed (and, with
//! [`negative_ttl`](CacheBuilder::negative_ttl), remembered as gone for a
//! while, so `get_or_fetch` of it does not ask again).
//!
//! # Concurrency
//!
//! `Cache` is `Send + Sync` and cheap to clone (a shared handle). Each shard
//! has a table that readers search without a lock, and behind one mutex its
//! slab of entries and its policy:
//!
//! - *Readers never block*: a `get` never waits for a fetch, a refresh, I/O
//!   or a lock. It enters the cache's epoch collector (a store to a word of
//!   its own thread's), probes its shard's published table and reads the
//!   entry where it lies: [`get_with`](Cache::get_with) runs a closure on
//!   the value there, `get` clones it. A read does not allocate or send on a
//!   channel; it writes only the entry's frequency counter, while that is
//!   below its cap, and a count on a metrics stripe of its own thread. (The
//!   first reader of a stale value, with the refresher running, also claims
//!   a bit in the entry and leaves a small record in a list allocated when
//!   the refresher started, under a mutex of its own: one such reader per
//!   value.)
//! - A write (`insert`, `invalidate`, a refresh's result) takes its shard's
//!   lock once and does everything there: publishing a new value (a new
//!   entry in the old one's place, so a reader sees the old value or the
//!   new, whole), evicting to make room, admitting the new key. So `len()`
//!   is never above `max_size` (nor `weight()` above `max_weight`), at any
//!   moment.
//! - Entries leaving the cache (evicted, replaced, invalidated, cleared) are
//!   handed to the [eviction listener](CacheBuilder::eviction_listener) (a
//!   clone of the key and value: readers may still hold the entry's own)
//!   after the lock is released. The entry's own key and value are dropped
//!   exactly once, when no reader can still see them: on whichever thread
//!   next leaves a read or retires enough entries, or when the cache is
//!   dropped (see *Limitations* in `docs/design.md`). The user code that
//!   does run under a shard lock is the key's `Eq` (in a write, before
//!   anything changes) and the key's `Clone` when the refresher takes stale
//!   entries. The weigher, the listener, the fetcher, a read's closure and
//!   every `Drop` of a key or value never run under a lock.
//!
//! A refresh of a cached key installs its result only if the entry still
//! has the version the refresh started from, so it never overwrites a newer
//! write and never brings back a key removed meanwhile. A read-through of a
//! key that was not cached (`get_or_fetch`) inserts only if the key is still
//! absent and was not removed since the fetch began: every removal fences
//! the fetches of its keys in flight, and a caller after the removal starts
//! a fetch of its own rather than join one from before. The crate's only
//! `unsafe` code is the lock-free table and the retiring of its entries,
//! one module of the store, tested under Miri and shuttle.
//!
//! # Memory
//!
//! Per entry, with `K` and `V` the sizes of key and value: a node of
//! `K + V + 32` bytes, rounded up to a multiple of 8, in an allocation of
//! its own; 8 bytes of slab pointer and 16 of list links (the policy's
//! queue, and the refresher's timer wheel); a table slot of 9
//! bytes (tables are between 44 % and 88 % full, a full shard's 70 %);
//! and, once a shard has evicted, 3.6 bytes of ghost and 8 to 16 of
//! frequency sketch. Data the key or value points to (a `String`'s bytes)
//! comes on top. Nothing is allocated per entry when the cache is built, so a
//! generous `max_size` costs nothing until it is used. `BENCHMARKS.md` has
//! the figures at a million entries beside the peers'.
//!
//! # Performance
//!
//! Measured on 2 cores against the peers in the same run (`BENCHMARKS.md`
//! has the tables and the commands). A few hot keys read from two threads
//! (the prompt cache's own workload): `get_with` reads twice as fast as
//! on one thread, as a map nobody writes does, at 2.4–3.4× quick_cache's
//! speed, whose reads (like dashmap's and moka's) are slower on two threads
//! than on one; `get`, which clones the value's `Arc`, at 1.8–1.9×. On one
//! thread a hit costs more than quick_cache's (0.55–1.0× its speed: the
//! epoch collector and a pointer to the node), and inserting new keys into
//! a full cache runs at 0.21–0.36× quick_cache's speed (a node allocated
//! and one retired per insert, and the policy's cache misses). A million
//! `u64 → u64` entries, with the policy's memory of evicted keys at full
//! size, take 96.9 heap bytes each (quick_cache 94.4, moka 240). The
//! refresher's look for stale entries at a million entries costs a few
//! microseconds whatever the entries (the walk it replaced: 1.35 ms).
//!
//! # Features
//!
//! - `serde` (default): [`Cache::dump`] and [`Cache::load`] of JSON
//!   snapshots, compatible with the LangSmith SDK's files; see [`snapshot`].
//! - `metrics`: the cache reports its counters, gauges (entries, the
//!   refresher's state) and histograms (fetch latency, how stale the
//!   stale values served were) to the [`metrics`](https://docs.rs/metrics)
//!   facade, for Prometheus, StatsD or OpenTelemetry exporters; see
//!   `Cache::report_metrics` (with the feature) for the series. Nothing is
//!   added to a hit.
//! - `redis`: a fleet link (the `fleet` module) through which the replicas of a
//!   service share their inserts, invalidations, clears and refreshes over
//!   Redis pub/sub. Off by default: without it the crate has no network
//!   dependency.
//! - `redis-tls`: the fleet link over TLS (`rediss://` URLs, as managed
//!   Redis services with in-transit encryption need), through redis-rs's
//!   rustls transport.
//!
//! # Semantics
//!
//! - `get` of a missing key is `None` and counts a miss; of a present key, its
//!   value fresh or stale, counting a hit (and a stale hit when stale).
//! - `insert` of a new key into a full cache evicts by the policy; overwriting
//!   a key resets its age.
//! - A value is fresh for the cache's `ttl` and served stale for its
//!   `max_stale` past that, or for its own ([`Freshness`]: from
//!   [`Cache::insert_with_ttl`], [`Cache::insert_fresh`] or the builder's
//!   [`freshness`](CacheBuilder::freshness) function), which a refresh
//!   keeps unless the function decides anew; `refresh_jitter` draws each
//!   value's stale point in the last part of its TTL.
//! - `max_size = 0` disables the cache: `get` is `None` without counting,
//!   `insert` stores nothing.
//! - Invalid settings are rejected by [`CacheBuilder::build`] and
//!   [`Cache::configure`] with a [`ConfigError`] naming the setting.
//!
//! # The refresher's numbers
//!
//! The fixed numbers the refresher and the clock work by, stated here
//! once (the methods' docs link here):
//!
//! - **Coarse clock.** A hit judges staleness by a clock ticked every
//!   `ttl / 64`, within 1 ms ..= 100 ms, by the refresher on a runtime that
//!   is always driven (multi-thread, or [`Cache::start_thread`]'s own) or
//!   else by the cache's keeper thread (a cache built or given its TTL in a
//!   multi-thread runtime); with neither, a hit reads the precise clock. An
//!   entry goes stale at its TTL, never before, and at most two ticks
//!   after.
//! - **Finding stale entries.** Each shard files its entries by when they
//!   go stale in a timer wheel of five levels of 64 buckets (about 1 ms,
//!   67 ms, 4.3 s, 4.6 min and 4.9 h each), so a look costs the buckets
//!   passed since the last one and the entries in them, not the entries
//!   cached; a value is found within a millisecond of going stale by the
//!   clock the refresher reads. The coarse clock ticks by the cache-wide
//!   TTL (every 100 ms without one), so a value whose own TTL is much
//!   shorter than the cache's is judged stale up to two such ticks late.
//! - **Taking stale entries.** At most 32 entries per hold of a shard's
//!   lock, so a look's lock hold does not grow with the entries.
//! - **Order.** Keys a reader asked for go first, but for one key taken as
//!   due after every three of theirs.
//! - **Circuit breaker.** Once ten keys have failed with no answer between,
//!   no fetch starts but one probe every 200 ms (five calls a second to a
//!   dead upstream); the first answer lets everything waiting go.
//! - **A flight whose driver stalled.** Whoever joined a fetch under way
//!   waits at most its `refresh_timeout` and as long again (at least 100 ms
//!   more) from when it started: its driver was then a task on a runtime
//!   no longer driven. A caller then starts a fetch of its own; the
//!   refresher counts the fetch cancelled and retries the key after its
//!   backoff.
//! - **Batches.** A [batch fetcher](CacheBuilder::batch_fetcher)'s call
//!   goes when it holds `max_batch` keys (64 by default) or a
//!   `batch_window` (1 ms by default) after its first key, whichever is
//!   first; the concurrency limit counts calls, so up to `limit ×
//!   max_batch` keys are fetched at once. The breaker counts keys, so one
//!   failed call of ten keys or more opens it.
//! - **A refresher that panics** (in a key's `Clone`, `Hash` or `Eq`) is
//!   counted in [`Metrics::refresher_panics`], logged, and started over
//!   after a `refresh_interval`.
//!
//! # Limitations
//!
//! - **Removed values are dropped late.** A value replaced, evicted,
//!   invalidated or cleared is dropped once no reader can see it, on
//!   whichever thread frees it; a thread gathers up to 128 before it hands
//!   them on, so a few may wait until that thread writes more or the cache
//!   is dropped. The listener is told at once, with clones.
//! - **A hit on one thread costs more than a bare map's**, and more than
//!   quick_cache's: entering the epoch collector and a pointer to the node.
//!   The gain is that a hit writes nothing shared, so reads scale with the
//!   cores (see *Performance*). Inserting new keys into a full cache is
//!   slower than quick_cache (a node allocated per value).
//! - **The coarse clock needs a runtime always driven.** Outside a
//!   multi-thread runtime and without the refresher on one, a hit reads the
//!   precise clock (about 20 ns more).
//! - **A version's count of changes wraps at 2^24.** A refresh installs
//!   only over the version it began from; installs and marks of a key
//!   since count in 24 bits, so a fetch that lives through exactly a
//!   multiple of 2^24 of them (a blocking load, which has no time bound; a
//!   flight parked on an idle runtime and resumed much later; or millions
//!   of `mark_stale` calls during one fetch) would install over the last.
//!   Unlikely, not impossible.
//! - **A flight's driver is a task of the runtime that started it.** A
//!   caller that joins it waits at most twice its timeout before starting
//!   its own; a fetch abandoned on an idle runtime may then run twice.
//! - **A value's own times are kept to the millisecond** (to the second
//!   past 24.8 days), rounded up, and cost every entry 8 bytes whether it
//!   has any or not. A change of the cache's `ttl` reaches the values that
//!   follow it (and refiles them, one shard at a time: O(entries)), not
//!   those with their own.
//! - **`mark_all_stale` and a fleet's reconnect mark every value**,
//!   [`Freshness::forever`] ones too, which are then refreshed once.
//!
//! `docs/design.md` (*Limitations*, *Departures*) has the reasons.
// Unsafe code lives in one module (`store::published`, the lock-free reads),
// which alone allows it; each block there says why it is sound.
#![deny(unsafe_code)]
#![deny(unsafe_op_in_unsafe_fn, clippy::undocumented_unsafe_blocks)]
#![warn(missing_docs)]
#![cfg_attr(docsrs, feature(doc_cfg))]

mod builder;
mod cache;
mod changes;
mod clock;
mod excerpt;
#[cfg(feature = "metrics")]
mod export;
mod fetch;
#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub mod fleet;
mod freshness;
mod gone;
mod hasher;
mod inner;
mod metrics;
mod refresh;
mod removal;
mod settings;
#[cfg(feature = "serde")]
#[cfg_attr(docsrs, doc(cfg(feature = "serde")))]
pub mod snapshot;
mod store;
mod sync;
mod throttle;
mod upkeep;

pub use builder::CacheBuilder;
pub use cache::{Cache, Iter};
pub use fetch::{BatchFetcher, FetchError, Fetched, Fetcher};
pub use freshness::Freshness;
pub use hasher::DefaultBuildHasher;
pub use metrics::Metrics;
pub use refresh::{BreakerState, RefresherState, StartError};
pub use removal::RemovalCause;
pub use settings::{ConfigChange, ConfigError, MAX_SIZE_LIMIT, MAX_WEIGHT_LIMIT};
#[cfg(feature = "serde")]
pub use snapshot::{LoadOptions, LoadReport, SNAPSHOT_FORMAT, SnapshotError, SnapshotLimits};

/// The README's examples, compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
