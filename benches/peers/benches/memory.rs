//! Heap bytes per entry at one million entries, for swr-cache and its peers,
//! measured by a counting global allocator in one run.
//!
//! ```text
//! cargo bench -p swr-cache-peers --bench memory
//! ```
//!
//! Each cache is built for 1,000,000 entries and filled with 1,000,000
//! distinct keys; the figure is the growth of live heap bytes (bytes asked
//! for by live allocations: an allocation adds its size, a deallocation takes
//! it away, a reallocation adds the difference) from before the cache was
//! built, divided by the entries the cache then holds (also printed: a cache
//! may admit fewer). Then 1,000,000 more new keys churn through it, each
//! evicting, and the same is measured again: this is the figure with the
//! policy's memory of evicted keys (swr-cache's ghost and frequency sketch,
//! quick_cache's ghost entries, moka's sketch) at its full size. The bytes already taken once the empty cache is built
//! are printed too (what a generous `max_size` costs before it is used). Two
//! shapes: `u64 → u64`, and `String → Arc<str>` (16-byte keys, 32-byte
//! values; the bytes the key and value point to count too: 16 + 48 = 64 of
//! them per entry before any cache structure). Each cache is dropped before
//! the next is built, and each kind of cache is built and dropped once before
//! measuring, so lazily created global state (moka's housekeeping, thread
//! locals) is not charged to the first one.
//!
//! Run by `cargo test --benches` (without `--bench`), it measures 10,000
//! entries instead, as a smoke test.

use std::alloc::System;
use std::hash::Hash;
use std::sync::Arc;

use mini_moka::sync::ConcurrentCacheExt;
use stats_alloc::{INSTRUMENTED_SYSTEM, StatsAlloc};
use swr_cache::{Cache, DefaultBuildHasher};

#[global_allocator]
static ALLOCATOR: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

/// Bytes of live allocations. `stats_alloc` books a reallocation's growth in
/// `bytes_allocated` and its shrinking in `bytes_deallocated` already.
fn live() -> isize {
    let stats = ALLOCATOR.stats();
    stats.bytes_allocated as isize - stats.bytes_deallocated as isize
}

struct Measured {
    /// Live bytes of the empty cache, just built.
    built: isize,
    /// Live bytes of the filled cache.
    filled: isize,
    /// Entries it holds.
    held: usize,
    /// Live bytes after as many new keys again went through it.
    churned: isize,
    /// Entries it then holds.
    held_after_churn: usize,
}

/// Builds a cache, fills it with `entries` keys, and measures it.
fn measure<C, K, V>(
    entries: usize,
    build: impl Fn(usize) -> C,
    insert: impl Fn(&C, K, V),
    len: impl Fn(&C) -> usize,
    entry: impl Fn(usize) -> (K, V),
) -> Measured {
    // Once small, unmeasured, for any state created on first use.
    let warm = build(16);
    for i in 0..32 {
        let (key, value) = entry(i);
        insert(&warm, key, value);
    }
    len(&warm);
    drop(warm);

    let before = live();
    let cache = build(entries);
    let built = live() - before;
    for i in 0..entries {
        let (key, value) = entry(i);
        insert(&cache, key, value);
    }
    let held = len(&cache);
    let filled = live() - before;
    for i in entries..2 * entries {
        let (key, value) = entry(i);
        insert(&cache, key, value);
    }
    let held_after_churn = len(&cache);
    let churned = live() - before;
    drop(cache);
    Measured {
        built,
        filled,
        held,
        churned,
        held_after_churn,
    }
}

fn row<K, V>(entries: usize, shape: &str, entry: impl Fn(usize) -> (K, V) + Copy)
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
{
    let results = [
        (
            "swr-cache",
            measure(
                entries,
                |n| {
                    Cache::<K, V>::builder()
                        .max_size(n)
                        .ttl(None)
                        .build()
                        .expect("valid")
                },
                |c, k, v| c.insert(k, v),
                |c| c.len(),
                entry,
            ),
        ),
        (
            "quick_cache",
            measure(
                entries,
                quick_cache::sync::Cache::<K, V>::new,
                |c, k, v| c.insert(k, v),
                |c| c.len(),
                entry,
            ),
        ),
        (
            "moka",
            measure(
                entries,
                |n| moka::sync::Cache::<K, V>::new(n as u64),
                |c, k, v| c.insert(k, v),
                |c| {
                    c.run_pending_tasks();
                    c.entry_count() as usize
                },
                entry,
            ),
        ),
        (
            "mini-moka",
            measure(
                entries,
                |n| mini_moka::sync::Cache::<K, V>::new(n as u64),
                |c, k, v| c.insert(k, v),
                |c| {
                    c.sync();
                    c.entry_count() as usize
                },
                entry,
            ),
        ),
        (
            "dashmap (floor, no eviction)",
            measure(
                entries,
                |n| {
                    dashmap::DashMap::<K, V, DefaultBuildHasher>::with_capacity_and_hasher(
                        n,
                        DefaultBuildHasher::default(),
                    )
                },
                |c, k, v| {
                    c.insert(k, v);
                },
                |c| c.len(),
                entry,
            ),
        ),
    ];
    for (name, m) in results {
        println!(
            "| {shape} | {name} | {} | {:.1} | {:.1} | {} | {:.1} |",
            m.held,
            m.filled as f64 / m.held.max(1) as f64,
            m.built as f64 / entries as f64,
            m.held_after_churn,
            m.churned as f64 / m.held_after_churn.max(1) as f64,
        );
    }
}

fn main() {
    let bench = std::env::args().any(|a| a == "--bench");
    let entries = if bench { 1_000_000 } else { 10_000 };
    println!("## Heap bytes per entry, {entries} entries\n");
    println!(
        "| shape | cache | entries held | bytes per entry held | of which taken when built (per slot) | entries held after churn | bytes per entry after churn |"
    );
    println!("|---|---|---|---|---|---|---|");
    row(entries, "u64 → u64", |i| (i as u64, i as u64));
    row(entries, "String → Arc<str>", |i| {
        // `format!` may leave spare capacity; keys of exactly 16 bytes.
        let mut key = format!("prompt-{i:09}");
        key.shrink_to_fit();
        (key, Arc::<str>::from(format!("commit {i:025}")))
    });
}
