//! The API as a service author writes it: the forms that should compile and
//! read naturally, and the small methods beside `get` and `insert`.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use swr_cache::{Cache, ConfigChange, RemovalCause};

#[test]
fn ttl_takes_a_duration_or_an_option() {
    let plain: Cache<u32, u32> = Cache::builder()
        .ttl(Duration::from_secs(60))
        .build()
        .unwrap();
    assert_eq!(plain.ttl(), Some(Duration::from_secs(60)));
    let optional: Cache<u32, u32> = Cache::builder()
        .ttl(Some(Duration::from_secs(5)))
        .build()
        .unwrap();
    assert_eq!(optional.ttl(), Some(Duration::from_secs(5)));
    let offline: Cache<u32, u32> = Cache::builder().ttl(None).build().unwrap();
    assert_eq!(offline.ttl(), None);
    offline
        .configure(ConfigChange::new().ttl(Duration::from_secs(1)))
        .unwrap();
    assert_eq!(offline.ttl(), Some(Duration::from_secs(1)));
}

#[tokio::test]
async fn a_closure_fetcher_needs_no_key_type_and_arc_str_keys_read_through_by_str() {
    // No `|key: Arc<str>|`: the key's type comes from the cache's.
    let cache: Cache<Arc<str>, String> = Cache::builder()
        .fetcher(|key| async move { Ok::<_, std::io::Error>(format!("prompt {key}")) })
        .build()
        .unwrap();
    assert_eq!(
        cache.get_or_fetch("greeting").await.unwrap(),
        "prompt greeting"
    );
    assert_eq!(cache.get("greeting").as_deref(), Some("prompt greeting"));
    assert_eq!(cache.refresh("greeting").await.unwrap(), "prompt greeting");
    let owned: Arc<str> = Arc::from("greeting");
    assert!(
        cache.get_or_fetch(&owned).await.is_ok(),
        "the key's own type too"
    );
}

type Log = Arc<Mutex<Vec<(u32, u32, RemovalCause)>>>;

/// A cache of `u32 → u32` whose listener logs every removal.
fn logged() -> (Cache<u32, u32>, Log) {
    let log: Log = Arc::default();
    let sink = Arc::clone(&log);
    let cache = Cache::builder()
        .ttl(None)
        .eviction_listener(move |k, v, cause| sink.lock().unwrap().push((k, v, cause)))
        .build()
        .unwrap();
    (cache, log)
}

#[test]
fn remove_returns_the_value_and_the_listener_hears_it() {
    let (cache, log) = logged();
    cache.insert(1, 10);
    assert_eq!(cache.remove(&1), Some(10));
    assert_eq!(cache.remove(&1), None);
    assert_eq!(
        *log.lock().unwrap(),
        vec![(1, 10, RemovalCause::Invalidated)]
    );
    let m = cache.metrics();
    assert_eq!((m.inserts, m.invalidations), (1, 1));
    cache.validate();
}

#[test]
fn retain_and_invalidate_if_remove_what_they_pick() {
    let (cache, log) = logged();
    for k in 0..20 {
        cache.insert(k, k);
    }
    assert_eq!(cache.retain(|k, _| k % 2 == 0), 10);
    assert_eq!(cache.len(), 10);
    assert!((0..20).all(|k| cache.contains_key(&k) == (k % 2 == 0)));
    assert_eq!(cache.invalidate_if(|_, v| *v >= 10), 5);
    assert_eq!(cache.len(), 5);
    let log = log.lock().unwrap();
    assert_eq!(log.len(), 15);
    assert!(log.iter().all(|e| e.2 == RemovalCause::Invalidated));
    assert_eq!(cache.metrics().invalidations, 15);
    cache.validate();
}

#[test]
fn retain_leaves_an_entry_written_since_it_was_looked_at() {
    // The predicate runs with no lock held, so it may write the cache: an
    // entry rewritten after retain copied it is not removed on old grounds.
    let (cache, _) = logged();
    cache.insert(1, 1);
    cache.insert(2, 2);
    let removed = cache.retain(|k, _| {
        cache.insert(*k, 100);
        false
    });
    assert_eq!(removed, 0);
    assert_eq!(cache.peek(&1), Some(100));
    assert_eq!(cache.peek(&2), Some(100));
}

#[test]
fn iter_is_a_copy_that_counts_nothing() {
    let cache: Cache<u32, u32> = Cache::builder().max_size(5000).build().unwrap();
    for k in 0..3000 {
        cache.insert(k, k + 1);
    }
    let mut all: Vec<(u32, u32)> = cache.iter().collect();
    all.sort_unstable();
    assert_eq!(all.len(), cache.len());
    assert!(all.iter().all(|(k, v)| *v == k + 1));
    assert_eq!(cache.metrics().hits + cache.metrics().misses, 0);
    assert!(format!("{:?}", cache.iter()).starts_with("Iter"));
}

#[test]
fn the_builder_and_the_metrics_print_readably() {
    let builder = Cache::<u32, u32>::builder().max_size(7);
    let shown = format!("{builder:?}");
    assert!(
        shown.contains("max_size: 7") && shown.contains("fetcher: false"),
        "{shown}"
    );
    let cache = builder.build().unwrap();
    cache.get(&1);
    let line = cache.metrics().to_string();
    assert!(
        line.starts_with("1 request: 0 hits (0.0 %, 0 stale), 1 miss;"),
        "{line}"
    );
    assert_eq!(cache.metrics().requests(), 1);
}
