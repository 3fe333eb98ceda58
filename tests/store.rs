//! The store's promises as a user meets them: weights, the eviction
//! listener and its causes, values dropped outside the locks, panics in
//! user code that never wedge the cache, and the exact bound.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use swr_cache::{Cache, ConfigChange, ConfigError, RemovalCause};

type Log<K, V> = Arc<Mutex<Vec<(K, V, RemovalCause)>>>;

/// A cache of `u32 → u32` whose listener records every removal.
fn recorded(max_size: usize) -> (Cache<u32, u32>, Log<u32, u32>) {
    let log: Log<u32, u32> = Arc::default();
    let sink = Arc::clone(&log);
    let cache = Cache::builder()
        .max_size(max_size)
        .ttl(None)
        .eviction_listener(move |k, v, cause| sink.lock().unwrap().push((k, v, cause)))
        .build()
        .unwrap();
    (cache, log)
}

fn taken<K, V>(log: &Log<K, V>) -> Vec<(K, V, RemovalCause)> {
    std::mem::take(&mut *log.lock().unwrap())
}

#[test]
fn the_listener_hears_every_cause() {
    let (cache, log) = recorded(2);
    cache.insert(1, 10);
    cache.insert(1, 11);
    assert_eq!(taken(&log), vec![(1, 10, RemovalCause::Replaced)]);
    cache.insert(2, 20);
    cache.insert(3, 30);
    let evicted = taken(&log);
    assert_eq!(evicted.len(), 1);
    assert_eq!(evicted[0].2, RemovalCause::Evicted);
    assert!(cache.invalidate(&3));
    assert_eq!(taken(&log), vec![(3, 30, RemovalCause::Invalidated)]);
    let left: Vec<u32> = (1..=2).filter(|k| cache.contains_key(k)).collect();
    cache.clear();
    let cleared = taken(&log);
    assert_eq!(cleared.len(), left.len());
    assert!(cleared.iter().all(|(_, _, c)| *c == RemovalCause::Cleared));
    cache.validate();
}

#[test]
fn the_listener_runs_with_no_lock_held_and_may_use_the_cache() {
    // The listener reads and writes the cache it listens to: with a shard
    // lock held, this would deadlock.
    let slot: Arc<Mutex<Option<Cache<u32, u32>>>> = Arc::default();
    let inside = Arc::clone(&slot);
    let heard = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&heard);
    let cache: Cache<u32, u32> = Cache::builder()
        .max_size(1)
        .ttl(None)
        .eviction_listener(move |k, _, cause| {
            // Taken out of the slot first: the insert below evicts again,
            // and this listener hears of it, re-entered on this thread.
            let cache = inside.lock().unwrap().clone();
            let first = counted.fetch_add(1, Ordering::SeqCst) == 0;
            if let (Some(cache), true) = (cache, first) {
                assert_eq!(cause, RemovalCause::Evicted);
                assert!(cache.get(&k).is_none(), "gone when the listener hears");
                cache.validate();
                cache.insert(1000 + k, k);
            }
        })
        .build()
        .unwrap();
    *slot.lock().unwrap() = Some(cache.clone());
    cache.insert(1, 1);
    cache.insert(2, 2);
    // 2 evicted 1; the listener's 1001 evicted 2, and the listener heard
    // that too, from inside its own insert.
    assert_eq!(heard.load(Ordering::SeqCst), 2);
    assert_eq!(cache.len(), 1);
    assert!(cache.contains_key(&1001), "the listener's own insert stood");
    slot.lock().unwrap().take();
    cache.validate();
}

#[test]
fn a_panicking_listener_is_caught_counted_and_the_cache_carries_on() {
    let calls = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&calls);
    let cache: Cache<u32, u32> = Cache::builder()
        .max_size(1)
        .ttl(None)
        .eviction_listener(move |_, _, _| {
            counted.fetch_add(1, Ordering::SeqCst);
            panic!("listener bug");
        })
        .build()
        .unwrap();
    for k in 0..10 {
        cache.insert(k, k);
        assert_eq!(cache.len(), 1);
        assert_eq!(cache.get(&k), Some(k));
    }
    assert_eq!(calls.load(Ordering::SeqCst), 9);
    let m = cache.metrics();
    assert_eq!(m.listener_panics, 9);
    assert_eq!(m.evictions, 9);
    cache.validate();
}

/// A value whose drop panics while `ARMED` is set, counting the drops of
/// the values the cache was given; its clones (what reads hand out) do not
/// panic or count.
struct Grenade {
    id: u32,
    live: bool,
}

static ARMED: AtomicBool = AtomicBool::new(false);
static GRENADES_DROPPED: AtomicUsize = AtomicUsize::new(0);

fn grenade(id: u32) -> Grenade {
    Grenade { id, live: true }
}

impl Clone for Grenade {
    fn clone(&self) -> Self {
        Grenade {
            id: self.id,
            live: false,
        }
    }
}

impl Drop for Grenade {
    fn drop(&mut self) {
        if self.live {
            GRENADES_DROPPED.fetch_add(1, Ordering::SeqCst);
            if ARMED.load(Ordering::SeqCst) && !std::thread::panicking() {
                panic!("drop of {}", self.id);
            }
        }
    }
}

/// A value taken out is dropped once no reader can see it, wherever the
/// cache's collector then frees it: a panic of its `Drop` is caught there,
/// reaches no caller, and leaves the cache consistent; every value is still
/// dropped exactly once.
#[test]
fn a_value_whose_drop_panics_is_caught_and_the_cache_stays_consistent() {
    let cache: Cache<u32, Grenade> = Cache::builder().max_size(1).ttl(None).build().unwrap();
    cache.insert(0, grenade(0));
    ARMED.store(true, Ordering::SeqCst);
    // Every insert evicts the one entry there.
    for k in 1..20 {
        cache.insert(k, grenade(k));
        assert_eq!(cache.len(), 1, "the bound holds");
        assert_eq!(
            cache.peek(&k).map(|g| g.id),
            Some(k),
            "the new entry stands"
        );
        cache.validate();
    }
    assert!(cache.invalidate(&19));
    assert!(cache.is_empty());
    cache.insert(7, grenade(7));
    assert_eq!(cache.len(), 1);
    let m = cache.metrics();
    assert_eq!(m.inserts - m.evictions - m.invalidations, 1);
    cache.validate();
    drop(cache);
    ARMED.store(false, Ordering::SeqCst);
    assert_eq!(
        GRENADES_DROPPED.load(Ordering::SeqCst),
        21,
        "every value given to the cache dropped exactly once"
    );
}

#[test]
fn weights_bound_the_cache_instead_of_the_count() {
    let log: Log<String, String> = Arc::default();
    let sink = Arc::clone(&log);
    let cache: Cache<String, String> = Cache::builder()
        .max_size(10) // one shard
        .weigher(|_: &String, v: &String| v.len() as u64)
        .max_weight(100)
        .eviction_listener(move |k, v, cause| sink.lock().unwrap().push((k, v, cause)))
        .ttl(None)
        .build()
        .unwrap();
    assert_eq!(cache.max_weight(), Some(100));
    cache.insert("a".into(), "x".repeat(40));
    cache.insert("b".into(), "x".repeat(40));
    assert_eq!(cache.weight(), 80);
    assert_eq!(cache.len(), 2);
    // 40 more do not fit in 100: one of the two goes.
    cache.insert("c".into(), "x".repeat(40));
    assert_eq!(cache.weight(), 80);
    assert_eq!(taken(&log).len(), 1);
    // Many small ones fit where one large one was.
    for i in 0..10 {
        cache.insert(format!("s{i}"), "x".repeat(2));
    }
    assert!(cache.weight() <= 100);
    assert!(cache.len() >= 10);
    cache.validate();
}

#[test]
fn an_entry_heavier_than_its_share_is_not_admitted() {
    let log: Log<u32, Vec<u8>> = Arc::default();
    let sink = Arc::clone(&log);
    let cache: Cache<u32, Vec<u8>> = Cache::builder()
        .max_size(10)
        .weigher(|_: &u32, v: &Vec<u8>| v.len() as u64)
        .max_weight(100)
        .eviction_listener(move |k, v, cause| sink.lock().unwrap().push((k, v, cause)))
        .ttl(None)
        .build()
        .unwrap();
    assert_eq!(cache.shard_count(), 1);
    cache.insert(1, vec![0; 101]);
    assert!(!cache.contains_key(&1));
    assert_eq!(
        taken(&log),
        vec![(1, vec![0; 101], RemovalCause::Evicted)],
        "refused, and the listener hears it as evicted"
    );
    // Over a present key: the old value is replaced, the new one refused.
    cache.insert(2, vec![0; 10]);
    cache.insert(2, vec![1; 200]);
    assert!(!cache.contains_key(&2));
    assert_eq!(
        taken(&log),
        vec![
            (2, vec![0; 10], RemovalCause::Replaced),
            (2, vec![1; 200], RemovalCause::Evicted)
        ]
    );
    let m = cache.metrics();
    assert_eq!(
        m.inserts - m.evictions - m.invalidations,
        cache.len() as u64
    );
    cache.validate();
}

#[test]
fn a_weight_of_zero_counts_as_one() {
    let cache: Cache<u32, u32> = Cache::builder()
        .weigher(|_: &u32, _: &u32| 0)
        .max_weight(5)
        .ttl(None)
        .build()
        .unwrap();
    for k in 0..100 {
        cache.insert(k, k);
    }
    assert_eq!(cache.len(), 5);
    assert_eq!(cache.weight(), 5);
    cache.validate();
}

#[test]
fn a_weigher_needs_max_weight_and_max_weight_a_weigher() {
    let without_bound = Cache::<u32, u32>::builder()
        .weigher(|_: &u32, _: &u32| 1)
        .build()
        .unwrap_err();
    assert_eq!(without_bound, ConfigError::WeigherWithoutMaxWeight);
    let without_weigher = Cache::<u32, u32>::builder()
        .max_weight(10)
        .build()
        .unwrap_err();
    assert_eq!(without_weigher, ConfigError::MaxWeightWithoutWeigher);
    let cache: Cache<u32, u32> = Cache::builder().build().unwrap();
    assert_eq!(
        cache.configure(ConfigChange::new().max_weight(5)),
        Err(ConfigError::MaxWeightWithoutWeigher)
    );
}

#[test]
fn shrinking_max_weight_evicts_down_to_it() {
    let cache: Cache<u32, u32> = Cache::builder()
        .max_size(10)
        .weigher(|_: &u32, v: &u32| u64::from(*v))
        .max_weight(1_000)
        .ttl(None)
        .build()
        .unwrap();
    for k in 1..=40 {
        cache.insert(k, 10);
    }
    assert_eq!(cache.weight(), 400);
    cache
        .configure(ConfigChange::new().max_weight(100))
        .unwrap();
    assert_eq!(cache.weight(), 100);
    assert_eq!(cache.metrics().evictions, 30);
    cache.validate();
}

#[test]
fn a_refresh_result_is_weighed_like_an_insert() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let cache: Cache<String, String> = Cache::builder()
            .max_size(10)
            .weigher(|_: &String, v: &String| v.len() as u64)
            .max_weight(50)
            .fetcher(|key: String| async move {
                Ok::<_, std::io::Error>(if key == "big" {
                    "x".repeat(60)
                } else {
                    "y".repeat(30)
                })
            })
            .build()
            .unwrap();
        cache.insert("small".into(), "z".into());
        assert_eq!(cache.refresh("small").await.unwrap(), "y".repeat(30));
        assert_eq!(cache.weight(), 30);
        cache.insert("big".into(), "z".into());
        assert_eq!(cache.weight(), 31);
        // The fetched value weighs more than the cache holds: the entry goes.
        cache.refresh("big").await.unwrap();
        assert!(!cache.contains_key("big"));
        assert_eq!(cache.weight(), 30);
        cache.validate();
    });
}

#[test]
fn the_largest_weights_neither_wrap_nor_panic() {
    assert_eq!(
        Cache::<u32, u64>::builder()
            .weigher(|_: &u32, v: &u64| *v)
            .max_weight(u64::MAX)
            .build()
            .unwrap_err(),
        ConfigError::MaxWeightTooLarge {
            max_weight: u64::MAX
        }
    );
    let cache: Cache<u32, u64> = Cache::builder()
        .weigher(|_: &u32, v: &u64| *v)
        .max_weight(swr_cache::MAX_WEIGHT_LIMIT)
        .ttl(None)
        .build()
        .unwrap();
    let half = swr_cache::MAX_WEIGHT_LIMIT / 2;
    cache.insert(1, half);
    cache.insert(2, half);
    cache.insert(3, u64::MAX); // heavier than the whole cache: refused
    cache.insert(4, half); // evicts one of the halves
    assert!(!cache.contains_key(&3));
    assert_eq!(cache.len(), 2);
    assert_eq!(cache.weight(), 2 * half);
    cache.insert(2, u64::MAX); // over a present key: it goes
    assert!(!cache.contains_key(&2));
    assert!(cache.weight() <= swr_cache::MAX_WEIGHT_LIMIT);
    cache.validate();
}

#[test]
fn shrinking_below_one_entry_per_shard_keeps_the_bound() {
    // Built large, the cache has several shards; shrunk to fewer entries
    // than shards, some shards hold none: their keys are refused, each
    // reported as evicted, and the bound holds.
    let (cache, log) = recorded(100_000);
    let shards = cache.shard_count();
    assert!(shards > 1, "{shards} shards on this machine");
    cache.configure(ConfigChange::new().max_size(1)).unwrap();
    for k in 0..64 {
        cache.insert(k, k);
        assert!(cache.len() <= 1);
    }
    let events = taken(&log);
    assert!(events.iter().all(|e| e.2 == RemovalCause::Evicted));
    assert_eq!(events.len(), 64 - cache.len());
    cache.validate();
}

/// The cache a `Reentrant` value's drop uses.
static REENTERED: std::sync::OnceLock<Cache<u64, Reentrant>> = std::sync::OnceLock::new();

/// A value whose drop uses its own cache (a removal takes a shard's lock).
#[derive(Clone)]
struct Reentrant;

impl Drop for Reentrant {
    fn drop(&mut self) {
        if let Some(cache) = REENTERED.get() {
            for key in 1_000_000..1_000_064 {
                cache.remove(&key);
            }
        }
    }
}

/// (Review.) A resize held every shard's lock while it retired the tables
/// of shards it emptied, and a retirement may free values retired before
/// and run their `Drop`: one that used the cache deadlocked. Old tables
/// are now retired once every lock is released.
#[test]
fn a_value_dropped_during_a_resize_may_use_its_cache() {
    #[path = "support/watchdog.rs"]
    mod watchdog;
    watchdog::within("a resize whose drops use the cache", || {
        let cache = REENTERED.get_or_init(|| Cache::builder().max_size(4096).build().unwrap());
        assert!(cache.shard_count() > 1);
        // Removals retire one value each and the resize a table per shard
        // it empties; rounds of every length bring the collector's batch
        // to its size at some retirement inside the resize.
        for round in 0..300u64 {
            let keys = 1 + round % 128;
            for key in 0..keys {
                cache.insert(key, Reentrant);
            }
            for key in 0..keys {
                cache.remove(&key);
            }
            let size = if round % 2 == 0 { 4097 } else { 4096 };
            cache.configure(ConfigChange::new().max_size(size)).unwrap();
            cache.validate();
        }
    });
}
