//! What a cache allocates, counted by a global allocator: nothing per entry
//! until entries come, whatever `max_size` says, and nothing on the read
//! path.
//!
//! The counts are global, so this file runs without the test harness
//! (`harness = false`): its checks run one after another on the main
//! thread, with no other test allocating meanwhile.

use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};
use std::alloc::System;

use swr_cache::{Cache, MAX_SIZE_LIMIT};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

fn main() {
    let checks: [(&str, fn()); 3] = [
        (
            "the_largest_cache_costs_nothing_per_entry_until_used",
            the_largest_cache_costs_nothing_per_entry_until_used,
        ),
        (
            "stale_reads_allocate_nothing_asking_for_a_refresh_or_while_it_backs_off",
            stale_reads_allocate_nothing_asking_for_a_refresh_or_while_it_backs_off,
        ),
        (
            "a_get_or_fetch_hit_allocates_nothing",
            a_get_or_fetch_hit_allocates_nothing,
        ),
    ];
    for (name, check) in checks {
        check();
        println!("test {name} ... ok");
    }
}

fn the_largest_cache_costs_nothing_per_entry_until_used() {
    // Built in a runtime, so the clock's keeper is a task that goes with the
    // runtime, not a thread that could allocate during the next check.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let _inside = runtime.enter();
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

/// The read path asks for a refresh with no key clone and no allocation:
/// the first stale read of a value leaves a plain record in a list
/// allocated when the refresher started, and later reads (while the
/// refresh runs, or backs off after failing) ask nothing more.
fn stale_reads_allocate_nothing_asking_for_a_refresh_or_while_it_backs_off() {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .unwrap()
        .block_on(stale_reads());
}

async fn stale_reads() {
    use std::time::Duration;
    use tokio::time::sleep;

    let cache: Cache<String, u64> = Cache::builder()
        .ttl(Duration::from_secs(1))
        .refresh_interval(Duration::from_secs(3600))
        .max_retry_backoff(Duration::from_secs(3600))
        .fetcher(|_key: String| async { Err::<u64, _>("upstream down") })
        .build()
        .unwrap();
    cache.insert("k".into(), 1);
    cache.start().unwrap();
    sleep(Duration::from_secs(2)).await;

    let region = Region::new(GLOBAL);
    assert_eq!(cache.get("k"), Some(1));
    assert_eq!(
        region.change().allocations,
        0,
        "the first stale read allocated"
    );

    sleep(Duration::from_millis(10)).await;
    assert_eq!(cache.metrics().refresh_errors, 1, "refreshed, and failed");
    let region = Region::new(GLOBAL);
    for _ in 0..10_000 {
        assert_eq!(cache.get("k"), Some(1));
    }
    assert_eq!(
        region.change().allocations,
        0,
        "stale reads allocated while the refresh backs off"
    );
    assert_eq!(cache.metrics().refresh_errors, 1, "and asked for no retry");
}

/// Only a miss boxes the miss path's future (issue #19.6): a hit through
/// `get_or_fetch`, like a `get`, allocates nothing.
fn a_get_or_fetch_hit_allocates_nothing() {
    use std::future::Future;
    use std::task::{Context, Poll, Waker};

    let cache: Cache<String, u64> = Cache::builder()
        .fetcher(|_key: String| async { Ok::<u64, std::io::Error>(0) })
        .build()
        .unwrap();
    cache.insert("k".into(), 1);
    assert_eq!(cache.get("k"), Some(1), "a first read, before counting");
    let region = Region::new(GLOBAL);
    for _ in 0..10_000 {
        let hit = std::pin::pin!(cache.get_or_fetch("k"));
        let polled = hit.poll(&mut Context::from_waker(Waker::noop()));
        assert!(matches!(polled, Poll::Ready(Ok(1))), "{polled:?}");
    }
    assert_eq!(region.change().allocations, 0, "a hit allocated");
}
