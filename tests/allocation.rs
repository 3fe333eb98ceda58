//! What a cache allocates, counted by a global allocator: nothing per entry
//! until entries come, whatever `max_size` says.

use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};
use std::alloc::System;

use swr_cache::{Cache, MAX_SIZE_LIMIT};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

#[test]
fn the_largest_cache_costs_nothing_per_entry_until_used() {
    let region = Region::new(GLOBAL);
    let cache: Cache<u64, u64> = Cache::builder().max_size(MAX_SIZE_LIMIT).build().unwrap();
    let built = region.change().bytes_allocated;
    // Shards, counters and the refresher's handles: a few pages, not 4
    // billion slots.
    assert!(built < 256 << 10, "{built} bytes at build");
    for k in 0..1000 {
        cache.insert(k, k);
    }
    assert_eq!(cache.len(), 1000);
    let used = region.change().bytes_allocated - built;
    assert!(used < 1000 * 200, "{used} bytes for 1000 entries");
}
