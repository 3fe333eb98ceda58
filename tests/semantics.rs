//! The semantics (`docs/design.md`) S1, S2, S3, S10, S11 and S14, one named test each,
//! plus eviction order and live reconfiguration. Ages are checked on tokio's
//! paused clock.

use std::sync::Arc;
use std::time::Duration;

use swr_cache::{Cache, ConfigChange, ConfigError, MAX_SIZE_LIMIT, Metrics};
use tokio::time::advance;

fn cache(max_size: usize) -> Cache<u32, u32> {
    Cache::builder()
        .max_size(max_size)
        .ttl(Some(Duration::from_secs(10)))
        .build()
        .unwrap()
}

/// std's SipHash with its fixed keys: the same shards and fingerprints in
/// every run, so a test of the policy's choices is deterministic.
type Fixed = std::hash::BuildHasherDefault<std::collections::hash_map::DefaultHasher>;

/// A cache for the policy tests: one shard (below 1,024 entries) and a
/// fixed hasher.
fn policy_cache(max_size: usize) -> Cache<u32, u32, Fixed> {
    let cache = Cache::builder()
        .hasher(Fixed::default())
        .max_size(max_size)
        .ttl(None)
        .build()
        .unwrap();
    assert_eq!(cache.shard_count(), 1);
    cache
}

#[test]
fn s1_get_missing_is_none_and_counts_a_miss() {
    let cache = cache(10);
    assert_eq!(cache.get(&1), None);
    let m = cache.metrics();
    assert_eq!((m.hits, m.misses, m.stale_hits), (0, 1, 0));
}

#[tokio::test(start_paused = true)]
async fn s1_get_present_counts_hit_and_stale_hit() {
    let cache = cache(10);
    cache.insert(1, 100);
    assert_eq!(cache.get(&1), Some(100));
    assert_eq!((cache.metrics().hits, cache.metrics().stale_hits), (1, 0));

    advance(Duration::from_secs(11)).await;
    assert_eq!(cache.get(&1), Some(100), "a stale value is still served");
    let m = cache.metrics();
    assert_eq!((m.hits, m.misses, m.stale_hits), (2, 0, 1));
}

#[test]
fn s2_full_cache_evicts_one_entry_on_new_key() {
    let cache = cache(3);
    for k in 0..3 {
        cache.insert(k, k);
    }
    cache.insert(3, 3);
    assert_eq!(cache.len(), 3);
    assert_eq!(cache.metrics().evictions, 1);
    assert!(cache.contains_key(&3), "the new key is kept");
    assert_eq!((0..3).filter(|k| cache.contains_key(k)).count(), 2);
}

#[tokio::test(start_paused = true)]
async fn s2_overwrite_resets_age() {
    let cache = cache(3);
    cache.insert(1, 1);
    advance(Duration::from_secs(8)).await;
    cache.insert(1, 2);
    advance(Duration::from_secs(8)).await;
    assert_eq!(
        cache.is_stale(&1),
        Some(false),
        "16 s after the first write, 8 after the second"
    );
    assert_eq!(cache.get(&1), Some(2));
    advance(Duration::from_secs(3)).await;
    assert_eq!(cache.is_stale(&1), Some(true));
    let m = cache.metrics();
    assert_eq!((m.inserts, m.updates, m.evictions), (1, 1, 0));
}

#[test]
fn s3_max_size_zero_disables_the_cache() {
    let cache = cache(0);
    cache.insert(1, 1);
    assert_eq!(cache.get(&1), None);
    assert!(!cache.contains_key(&1));
    assert_eq!(cache.len(), 0);
    assert!(cache.is_empty());
    assert_eq!(cache.metrics(), Metrics::default(), "nothing is counted");
}

#[test]
fn s10_invalidate_clear_len_is_empty_contains_key() {
    let cache = cache(10);
    assert!(cache.is_empty());
    for k in 0..5 {
        cache.insert(k, k * 10);
    }
    assert_eq!(cache.len(), 5);
    assert!(!cache.is_empty());
    assert!(cache.contains_key(&2));

    assert!(cache.invalidate(&2));
    assert!(!cache.invalidate(&2), "already gone");
    assert!(!cache.contains_key(&2));
    assert_eq!(cache.get(&2), None);
    assert_eq!(cache.len(), 4);

    cache.clear();
    assert!(cache.is_empty());
    assert_eq!(cache.len(), 0);
    assert!((0..5).all(|k| !cache.contains_key(&k)));

    // The cache is as good as new after a clear: it fills to size again.
    for k in 0..10 {
        cache.insert(k, k);
    }
    assert_eq!(cache.len(), 10);
    assert_eq!(cache.metrics().evictions, 0);
}

#[tokio::test(start_paused = true)]
async fn s11_metrics_snapshot_and_reset() {
    let cache = cache(3);
    cache.insert(1, 1);
    cache.insert(2, 2);
    cache.insert(4, 4);
    cache.insert(2, 22); // an update is a use
    cache.get(&1);
    cache.get(&9);
    cache.insert(3, 3); // evicts 4, the one entry not used since written
    advance(Duration::from_secs(11)).await;
    cache.get(&1);
    assert!(cache.invalidate(&3));
    let m = cache.metrics();
    assert_eq!(m.hits, 2);
    assert_eq!(m.misses, 1);
    assert_eq!(m.stale_hits, 1);
    assert_eq!(m.inserts, 4);
    assert_eq!(m.updates, 1);
    assert_eq!(m.evictions, 1);
    assert_eq!(m.invalidations, 1);
    assert_eq!((m.refreshes, m.refresh_errors), (0, 0));
    assert!((m.hit_rate() - 2.0 / 3.0).abs() < 1e-12);
    assert_eq!(
        m.inserts - m.evictions - m.invalidations,
        cache.len() as u64
    );
    assert!(cache.contains_key(&1) && cache.contains_key(&2) && !cache.contains_key(&4));

    cache.reset_metrics();
    assert_eq!(cache.metrics(), Metrics::default());
    assert_eq!(cache.metrics().hit_rate(), 0.0);
    cache.get(&1);
    assert_eq!(cache.metrics().hits, 1, "counting goes on after a reset");
}

#[test]
fn s14_invalid_settings_are_rejected_naming_the_setting() {
    let build = |b: swr_cache::CacheBuilder<u32, u32>| b.build().map(|_| ()).unwrap_err();
    let cases = [
        (build(Cache::builder().ttl(Some(Duration::ZERO))), "ttl"),
        (
            build(Cache::builder().refresh_interval(Duration::ZERO)),
            "refresh_interval",
        ),
        (
            build(Cache::builder().max_size(MAX_SIZE_LIMIT + 1)),
            "max_size",
        ),
        (
            build(Cache::builder().refresh_timeout(Duration::ZERO)),
            "refresh_timeout",
        ),
        (
            build(Cache::builder().max_concurrent_refreshes(0)),
            "max_concurrent_refreshes",
        ),
        (
            build(Cache::builder().max_retry_backoff(Duration::ZERO)),
            "max_retry_backoff",
        ),
    ];
    for (error, setting) in cases {
        assert_eq!(error.setting(), setting, "{error:?}");
        assert!(error.to_string().contains(setting), "{error}");
    }
    let _: &dyn std::error::Error = &ConfigError::ZeroTtl;
}

#[test]
fn s14_an_invalid_configure_changes_nothing() {
    let cache = cache(10);
    cache.insert(1, 1);
    let error = cache
        .configure(ConfigChange::new().max_size(1).ttl(Some(Duration::ZERO)))
        .unwrap_err();
    assert_eq!(error, ConfigError::ZeroTtl);
    assert_eq!(
        cache.max_size(),
        10,
        "the valid part was not applied either"
    );
    assert_eq!(cache.ttl(), Some(Duration::from_secs(10)));
    let error = cache
        .configure(ConfigChange::new().refresh_interval(Duration::ZERO))
        .unwrap_err();
    assert_eq!(error.setting(), "refresh_interval");
    assert_eq!(cache.refresh_interval(), Duration::from_secs(60));
    assert!(
        cache
            .configure(ConfigChange::new().max_size(usize::MAX))
            .is_err()
    );
    assert_eq!(cache.len(), 1);
}

#[test]
fn builder_defaults_follow_langsmith() {
    let cache: Cache<String, String> = Cache::builder().build().unwrap();
    assert_eq!(cache.max_size(), 100);
    assert_eq!(cache.ttl(), Some(Duration::from_secs(300)));
    assert_eq!(cache.refresh_interval(), Duration::from_secs(60));
}

#[tokio::test(start_paused = true)]
async fn offline_mode_ttl_none_is_never_stale() {
    let cache: Cache<u32, u32> = Cache::builder().ttl(None).build().unwrap();
    cache.insert(1, 1);
    advance(Duration::from_secs(1_000_000)).await;
    assert_eq!(cache.is_stale(&1), Some(false));
    assert_eq!(cache.get(&1), Some(1));
    assert_eq!(cache.metrics().stale_hits, 0);
    assert_eq!(cache.is_stale(&2), None);
}

#[test]
fn borrowed_lookup_with_str_for_string_keys() {
    let cache: Cache<String, Arc<str>> = Cache::builder().build().unwrap();
    cache.insert("key".to_string(), Arc::from("value"));
    assert_eq!(cache.get("key").as_deref(), Some("value"));
    assert!(cache.contains_key("key"));
    assert_eq!(cache.is_stale("key"), Some(false));
    assert!(cache.invalidate("key"));
    assert_eq!(cache.get("key"), None);
}

#[test]
fn cache_is_send_sync_and_clone_shares_state() {
    fn send_sync<T: Send + Sync + 'static>(_: &T) {}
    let cache = cache(10);
    send_sync(&cache);
    let other = cache.clone();
    std::thread::spawn(move || other.insert(1, 1))
        .join()
        .unwrap();
    assert_eq!(cache.get(&1), Some(1));
    assert_eq!(cache.metrics().inserts, 1);
}

#[test]
fn a_custom_hasher_works() {
    let cache: Cache<u32, u32, std::hash::RandomState> = Cache::builder()
        .hasher(std::hash::RandomState::new())
        .max_size(4)
        .build()
        .unwrap();
    cache.insert(1, 1);
    assert_eq!(cache.get(&1), Some(1));
}

#[test]
fn eviction_prefers_entries_that_were_read() {
    let n = 1000;
    let cache = policy_cache(n);
    for k in 0..n as u32 {
        cache.insert(k, k);
    }
    let read: Vec<u32> = (0..n as u32).filter(|k| k % 2 == 0).collect();
    for k in &read {
        assert_eq!(cache.get(k), Some(*k));
    }
    for k in 10_000..10_000 + (n / 2) as u32 {
        cache.insert(k, k);
    }
    assert_eq!(cache.len(), n);
    assert_eq!(cache.metrics().evictions, (n / 2) as u64);
    let kept = read.iter().filter(|k| cache.contains_key(k)).count();
    assert_eq!(kept, read.len(), "every entry that was read stayed");
    cache.validate();
}

/// A scan of keys read once each, five times the cache's size, passes
/// through probation and leaves the keys that are read again and again.
/// (A much longer scan ages the frequency sketch until the hot keys rate no
/// higher than a newcomer, and they go; that is TinyLFU's forgetting, by
/// design.)
#[test]
fn a_scan_does_not_flush_the_entries_read_often() {
    let n = 1000;
    let cache = policy_cache(n);
    let hot: Vec<u32> = (0..(n / 2) as u32).collect();
    for round in 0..3 {
        for k in &hot {
            if cache.get(k).is_none() {
                assert_eq!(round, 0, "{k} lost before the scan");
                cache.insert(*k, *k);
            }
        }
    }
    for k in 100_000..100_000 + 5 * n as u32 {
        if cache.get(&k).is_none() {
            cache.insert(k, k);
        }
    }
    let kept = hot.iter().filter(|k| cache.contains_key(k)).count();
    assert!(
        kept * 100 >= hot.len() * 95,
        "{kept} of {} hot keys kept",
        hot.len()
    );
    cache.validate();
}

/// Keys read in a loop a little longer than the cache: LRU and CLOCK evict
/// each key just before it comes round again and never hit. Here a stable
/// part of the loop stays.
#[test]
fn a_loop_a_little_larger_than_the_cache_still_hits() {
    let n = 1000;
    let cache = policy_cache(n);
    let keys = (n + n / 10) as u32;
    let (mut hits, mut reads) = (0u64, 0u64);
    for round in 0..20 {
        for k in 0..keys {
            let hit = cache.get(&k).is_some();
            if !hit {
                cache.insert(k, k);
            }
            if round >= 5 {
                reads += 1;
                hits += u64::from(hit);
            }
        }
    }
    let ratio = hits as f64 / reads as f64;
    assert!(
        ratio > 0.6,
        "hit ratio {ratio:.3} on a loop of 1.1 x the cache"
    );
    cache.validate();
}

/// Entries invalidated from a full cache leave room: new keys fill it
/// without evicting anything, and only the next one evicts.
#[test]
fn invalidations_leave_room_that_new_keys_take_without_evicting() {
    let cache = cache(4);
    for k in 0..6 {
        cache.insert(k, k);
    }
    assert_eq!(cache.metrics().evictions, 2);
    let present: Vec<u32> = (0..6).filter(|k| cache.contains_key(k)).collect();
    assert_eq!(present.len(), 4);
    assert!(cache.invalidate(&present[0]));
    assert!(cache.invalidate(&present[1]));
    cache.insert(10, 10);
    cache.insert(11, 11);
    assert_eq!(cache.len(), 4);
    assert_eq!(cache.metrics().evictions, 2, "the room was used first");
    assert!(
        [present[2], present[3], 10, 11]
            .iter()
            .all(|k| cache.contains_key(k))
    );
    cache.insert(12, 12);
    assert_eq!(cache.metrics().evictions, 3, "full again: a new key evicts");
    cache.validate();
}

#[test]
fn configure_shrinking_max_size_evicts_down_to_size() {
    let cache = cache(10);
    for k in 0..10 {
        cache.insert(k, k);
    }
    cache.configure(ConfigChange::new().max_size(3)).unwrap();
    assert_eq!(cache.max_size(), 3);
    assert_eq!(cache.len(), 3);
    assert_eq!(cache.metrics().evictions, 7);
    cache.validate();
    // And the shrunk cache keeps its bound.
    cache.insert(100, 100);
    assert_eq!(cache.len(), 3);
    assert!(cache.contains_key(&100), "a new key is kept");
}

#[test]
fn configure_growing_lets_the_cache_fill() {
    let cache = cache(3);
    for k in 0..3 {
        cache.insert(k, k);
    }
    cache.configure(ConfigChange::new().max_size(10)).unwrap();
    for k in 3..10 {
        cache.insert(k, k);
    }
    assert_eq!(cache.len(), 10);
    assert_eq!(cache.metrics().evictions, 0);
    assert!((0..10).all(|k| cache.get(&k) == Some(k)));
    cache.insert(10, 10);
    assert_eq!(cache.len(), 10, "the new bound holds");
}

#[test]
fn configure_to_zero_empties_and_disables_then_back() {
    let cache = cache(5);
    for k in 0..5 {
        cache.insert(k, k);
    }
    cache.configure(ConfigChange::new().max_size(0)).unwrap();
    assert!(cache.is_empty());
    cache.insert(1, 1);
    assert_eq!(cache.get(&1), None);
    assert_eq!(cache.metrics().misses, 0, "disabled: nothing counted");

    cache.configure(ConfigChange::new().max_size(2)).unwrap();
    cache.insert(1, 1);
    cache.insert(2, 2);
    cache.insert(3, 3);
    assert_eq!(cache.len(), 2);
    assert_eq!(cache.get(&3), Some(3));
}

#[test]
fn configure_changes_only_given_settings() {
    let cache = cache(7);
    cache.configure(ConfigChange::new().ttl(None)).unwrap();
    assert_eq!(cache.ttl(), None);
    assert_eq!(cache.max_size(), 7);
    assert_eq!(cache.refresh_interval(), Duration::from_secs(60));
    cache
        .configure(ConfigChange::new().refresh_interval(Duration::from_secs(5)))
        .unwrap();
    assert_eq!(cache.ttl(), None);
    assert_eq!(cache.refresh_interval(), Duration::from_secs(5));
    cache.configure(ConfigChange::new()).unwrap();
    assert_eq!((cache.max_size(), cache.ttl()), (7, None));
}

#[tokio::test(start_paused = true)]
async fn configure_ttl_applies_to_existing_entries() {
    let cache = cache(4);
    cache.insert(1, 1);
    advance(Duration::from_secs(5)).await;
    assert_eq!(cache.is_stale(&1), Some(false));
    cache
        .configure(ConfigChange::new().ttl(Some(Duration::from_secs(2))))
        .unwrap();
    assert_eq!(cache.is_stale(&1), Some(true));
    cache.get(&1);
    assert_eq!(cache.metrics().stale_hits, 1);
    cache.configure(ConfigChange::new().ttl(None)).unwrap();
    assert_eq!(cache.is_stale(&1), Some(false));
}

/// Writes without a TTL read no clock: an entry written then counts as
/// written at the last tick of the cache's coarse clock (here, when it was
/// built), so a TTL set later finds it as old as that; writes after the TTL
/// is set are timed as usual.
#[tokio::test(start_paused = true)]
async fn entries_written_without_a_ttl_count_from_the_last_tick_once_one_is_set() {
    let cache: Cache<u32, u32> = Cache::builder().ttl(None).build().unwrap();
    advance(Duration::from_secs(3600)).await;
    cache.insert(1, 1);
    assert_eq!(
        cache.is_stale(&1),
        Some(false),
        "nothing is stale without a TTL"
    );
    cache
        .configure(ConfigChange::new().ttl(Some(Duration::from_secs(10))))
        .unwrap();
    assert_eq!(cache.is_stale(&1), Some(true), "counted from the build");
    cache.insert(2, 2);
    advance(Duration::from_secs(10)).await;
    assert_eq!(cache.is_stale(&2), Some(false));
    advance(Duration::from_secs(1)).await;
    assert_eq!(cache.is_stale(&2), Some(true));
}
