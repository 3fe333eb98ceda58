//! Permutation tests: the store's locks and atomics run under shuttle's
//! scheduler (under `--cfg swr_shuttle`, not a feature, so that
//! `--all-features` builds stay ordinary), which explores the interleavings of a few
//! threads working a tiny cache, thousands of schedules per test, randomly
//! and with PCT (probabilistic concurrency testing, which finds bugs that
//! need a few ordered preemptions).
//!
//! ```text
//! RUSTFLAGS="--cfg swr_shuttle" CARGO_TARGET_DIR=target/shuttle \
//!     cargo test --release --test shuttle
//! ```
//!
//! Every schedule checks, once the threads are done: the store's invariants
//! (`validate`, which each thread also calls mid-run); the bound; metrics
//! that add up; only values some thread wrote; and no lost insert — a
//! thread's `get` right after its `insert` sees its value unless the
//! listener was told that value left (replaced, invalidated, evicted or
//! cleared).
#![cfg(swr_shuttle)]

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use shuttle::thread;
use swr_cache::{Cache, ConfigChange, FetchError, Fetched, Fetcher, RemovalCause};

/// Schedules per test and scheduler.
const SCHEDULES: usize = 3_000;

type Removed = Arc<Mutex<Vec<(u8, u32, RemovalCause)>>>;

/// A cache of `max_size` entries (one shard) whose listener logs removals.
fn tiny(max_size: usize) -> (Cache<u8, u32>, Removed) {
    tiny_with_ttl(max_size, None)
}

/// [`tiny`] with a TTL, so that values can be marked stale.
fn tiny_with_ttl(max_size: usize, ttl: Option<Duration>) -> (Cache<u8, u32>, Removed) {
    let removed: Removed = Arc::default();
    let sink = Arc::clone(&removed);
    let cache = Cache::builder()
        .max_size(max_size)
        .ttl(ttl)
        .eviction_listener(move |k, v, cause| sink.lock().unwrap().push((k, v, cause)))
        .build()
        .unwrap();
    (cache, removed)
}

/// Inserts `value` under `key`, validates, and reads the key back: `None`
/// if the value was seen, else the value, for the caller to check against
/// the log of removals.
fn insert_then_get(cache: &Cache<u8, u32>, key: u8, value: u32) -> Option<u32> {
    cache.insert(key, value);
    cache.validate();
    (cache.get(&key) != Some(value)).then_some(value)
}

/// The checks every schedule ends with.
fn settle(cache: &Cache<u8, u32>, removed: &Removed, suspects: &[u32], written: &HashSet<u32>) {
    cache.validate();
    assert!(cache.len() <= cache.max_size(), "len {}", cache.len());
    let log = removed.lock().unwrap();
    let gone: HashSet<u32> = log.iter().map(|(_, v, _)| *v).collect();
    for v in suspects {
        assert!(
            gone.contains(v),
            "insert of {v} lost: not read back, not removed"
        );
    }
    for k in 0..8u8 {
        if let Some(v) = cache.peek(&k) {
            assert!(written.contains(&v), "{k} holds {v}, which nobody wrote");
            assert!(!gone.contains(&v), "{k} holds {v}, reported removed");
        }
    }
    let m = cache.metrics();
    assert_eq!(
        m.inserts - m.evictions - m.invalidations,
        cache.len() as u64,
        "{m:?}"
    );
}

/// Two threads insert the same new key into a full cache while a third
/// invalidates it and inserts another, so eviction, replacement and
/// removal of one key interleave.
fn same_key_into_a_full_cache() {
    let (cache, removed) = tiny(2);
    cache.insert(0, 100);
    cache.insert(1, 101);
    let a = thread::spawn({
        let cache = cache.clone();
        move || insert_then_get(&cache, 2, 1)
    });
    let b = thread::spawn({
        let cache = cache.clone();
        move || insert_then_get(&cache, 2, 2)
    });
    let c = thread::spawn({
        let cache = cache.clone();
        move || {
            cache.invalidate(&2);
            let lost = insert_then_get(&cache, 3, 3);
            cache.get(&0);
            lost
        }
    });
    let suspects: Vec<u32> = [a, b, c]
        .into_iter()
        .filter_map(|t| t.join().unwrap())
        .collect();
    let written = HashSet::from([100, 101, 1, 2, 3]);
    settle(&cache, &removed, &suspects, &written);
}

/// Inserts race a `clear` and a shrinking then growing `configure`.
fn inserts_against_clear_and_resize() {
    let (cache, removed) = tiny(3);
    for k in 0..3 {
        cache.insert(k, 100 + u32::from(k));
    }
    let a = thread::spawn({
        let cache = cache.clone();
        move || {
            let first = insert_then_get(&cache, 4, 4);
            let second = insert_then_get(&cache, 0, 5);
            [first, second]
        }
    });
    let b = thread::spawn({
        let cache = cache.clone();
        move || {
            cache.clear();
            insert_then_get(&cache, 5, 6)
        }
    });
    let c = thread::spawn({
        let cache = cache.clone();
        move || {
            cache.configure(ConfigChange::new().max_size(1)).unwrap();
            cache.validate();
            cache.configure(ConfigChange::new().max_size(3)).unwrap();
        }
    });
    let mut suspects: Vec<u32> = a.join().unwrap().into_iter().flatten().collect();
    suspects.extend(b.join().unwrap());
    c.join().unwrap();
    let written = HashSet::from([100, 101, 102, 4, 5, 6]);
    settle(&cache, &removed, &suspects, &written);
}

/// Readers raise entries' counters while writers evict around them in a
/// one-entry cache: the reads that race a write see a whole value.
fn reads_race_evictions_in_a_one_entry_cache() {
    let (cache, removed) = tiny(1);
    cache.insert(0, 100);
    let readers: Vec<_> = (0..2)
        .map(|_| {
            let cache = cache.clone();
            thread::spawn(move || {
                for k in 0..3u8 {
                    if let Some(v) = cache.get(&k) {
                        assert!([100, 1, 2, 3].contains(&v), "read {v}");
                    }
                }
            })
        })
        .collect();
    let writer = thread::spawn({
        let cache = cache.clone();
        move || {
            let mut lost = Vec::new();
            for k in 1..=3u8 {
                lost.extend(insert_then_get(&cache, k, u32::from(k)));
            }
            lost
        }
    });
    for reader in readers {
        reader.join().unwrap();
    }
    let suspects = writer.join().unwrap();
    settle(&cache, &removed, &suspects, &HashSet::from([100, 1, 2, 3]));
}

/// Marks (`mark_stale`, `mark_all_stale`, which move values to the head of
/// the refresher's due list and give them a new version) race inserts,
/// evictions and an invalidation in a full cache: the invariants hold
/// and no insert is lost.
fn marks_race_writes_and_evictions() {
    let (cache, removed) = tiny_with_ttl(2, Some(Duration::from_secs(3600)));
    cache.insert(0, 100);
    cache.insert(1, 101);
    let a = thread::spawn({
        let cache = cache.clone();
        move || {
            let lost = insert_then_get(&cache, 2, 1);
            cache.mark_stale(&2);
            cache.validate();
            lost
        }
    });
    let b = thread::spawn({
        let cache = cache.clone();
        move || {
            cache.mark_stale(&0);
            cache.mark_all_stale();
            cache.validate();
            insert_then_get(&cache, 3, 3)
        }
    });
    let c = thread::spawn({
        let cache = cache.clone();
        move || {
            for k in 0..4u8 {
                cache.mark_stale(&k);
            }
            cache.invalidate(&1);
            insert_then_get(&cache, 0, 5)
        }
    });
    let suspects: Vec<u32> = [a, b, c]
        .into_iter()
        .filter_map(|t| t.join().unwrap())
        .collect();
    let written = HashSet::from([100, 101, 1, 3, 5]);
    settle(&cache, &removed, &suspects, &written);
}

/// Values with TTLs of their own (filed in the shard's timer wheel by
/// their own deadlines) race a `configure` of the cache's TTL (which
/// refiles every entry, shard by shard), marks, and writes on the cache's
/// TTL, in a full cache: the wheel's lists stay whole (`validate` walks
/// every one), and no insert is lost.
fn own_ttls_race_refiles_marks_and_writes() {
    let (cache, removed) = tiny_with_ttl(3, Some(Duration::from_secs(3600)));
    cache.insert(0, 100);
    cache.insert_with_ttl(1, 101, Duration::from_millis(5));
    let a = thread::spawn({
        let cache = cache.clone();
        move || {
            cache.insert_with_ttl(2, 1, Duration::from_secs(1));
            cache.validate();
            cache.insert_fresh(3, 2, swr_cache::Freshness::forever());
            cache.validate();
            (cache.get(&3) != Some(2)).then_some(2)
        }
    });
    let b = thread::spawn({
        let cache = cache.clone();
        move || {
            cache
                .configure(ConfigChange::new().ttl(Duration::from_secs(60)))
                .unwrap();
            cache.validate();
            cache.configure(ConfigChange::new().ttl(None)).unwrap();
            cache
                .configure(ConfigChange::new().ttl(Duration::from_secs(10)))
                .unwrap();
            insert_then_get(&cache, 4, 3)
        }
    });
    let c = thread::spawn({
        let cache = cache.clone();
        move || {
            cache.mark_stale(&1);
            cache.mark_stale(&2);
            cache.validate();
            let lost = insert_then_get(&cache, 1, 4);
            cache.mark_all_stale();
            lost
        }
    });
    let suspects: Vec<u32> = [a, b, c]
        .into_iter()
        .filter_map(|t| t.join().unwrap())
        .collect();
    let written = HashSet::from([100, 101, 1, 2, 3, 4]);
    settle(&cache, &removed, &suspects, &written);
}

/// A value that knows its key, says whether it has been dropped, and
/// counts its drops.
struct Tagged {
    key: u8,
    value: u32,
    alive: Box<std::sync::atomic::AtomicBool>,
    drops: Arc<std::sync::atomic::AtomicUsize>,
}

impl Tagged {
    fn new(key: u8, value: u32, drops: &Arc<std::sync::atomic::AtomicUsize>) -> Self {
        Self {
            key,
            value,
            alive: Box::new(true.into()),
            drops: Arc::clone(drops),
        }
    }
}

impl Clone for Tagged {
    fn clone(&self) -> Self {
        self.drops.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
        Self::new(self.key, self.value, &self.drops)
    }
}

impl Drop for Tagged {
    fn drop(&mut self) {
        use std::sync::atomic::Ordering::SeqCst;
        assert!(self.alive.swap(false, SeqCst), "dropped twice");
        self.drops.fetch_add(1, SeqCst);
    }
}

/// Borrowing reads (`get_with`) race a replace, an eviction and a clear of
/// the entries they read, in a two-entry cache: each read sees a live value
/// of its own key that some thread wrote, and once the cache is dropped
/// every value it was given has been dropped exactly once.
fn borrowed_reads_race_replace_evict_and_clear() {
    let drops = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let cache: Cache<u8, Tagged> = Cache::builder().max_size(2).ttl(None).build().unwrap();
    cache.insert(0, Tagged::new(0, 100, &drops));
    cache.insert(1, Tagged::new(1, 101, &drops));
    let readers: Vec<_> = (0..2)
        .map(|_| {
            let cache = cache.clone();
            thread::spawn(move || {
                for k in 0..3u8 {
                    cache.get_with(&k, |t| {
                        assert!(t.alive.load(std::sync::atomic::Ordering::SeqCst));
                        assert_eq!(t.key, k, "a read found another key's value");
                        assert!([100, 101, 1, 2, 3].contains(&t.value), "read {}", t.value);
                    });
                }
            })
        })
        .collect();
    let writer = thread::spawn({
        let cache = cache.clone();
        let drops = Arc::clone(&drops);
        move || {
            cache.insert(0, Tagged::new(0, 1, &drops)); // a replace
            cache.insert(2, Tagged::new(2, 2, &drops)); // an eviction
            cache.clear();
            cache.insert(1, Tagged::new(1, 3, &drops));
            cache.validate();
        }
    });
    for reader in readers {
        reader.join().unwrap();
    }
    writer.join().unwrap();
    cache.validate();
    drop(cache);
    assert_eq!(drops.load(std::sync::atomic::Ordering::SeqCst), 5);
}

#[test]
fn borrowed_reads_race_replace_evict_and_clear_random() {
    shuttle::check_random(borrowed_reads_race_replace_evict_and_clear, SCHEDULES);
}

#[test]
fn borrowed_reads_race_replace_evict_and_clear_pct() {
    shuttle::check_pct(borrowed_reads_race_replace_evict_and_clear, SCHEDULES, 3);
}

#[test]
fn same_key_into_a_full_cache_random() {
    shuttle::check_random(same_key_into_a_full_cache, SCHEDULES);
}

#[test]
fn same_key_into_a_full_cache_pct() {
    shuttle::check_pct(same_key_into_a_full_cache, SCHEDULES, 3);
}

#[test]
fn inserts_against_clear_and_resize_random() {
    shuttle::check_random(inserts_against_clear_and_resize, SCHEDULES);
}

#[test]
fn inserts_against_clear_and_resize_pct() {
    shuttle::check_pct(inserts_against_clear_and_resize, SCHEDULES, 3);
}

#[test]
fn reads_race_evictions_random() {
    shuttle::check_random(reads_race_evictions_in_a_one_entry_cache, SCHEDULES);
}

#[test]
fn reads_race_evictions_pct() {
    shuttle::check_pct(reads_race_evictions_in_a_one_entry_cache, SCHEDULES, 3);
}

#[test]
fn marks_race_writes_and_evictions_random() {
    shuttle::check_random(marks_race_writes_and_evictions, SCHEDULES);
}

#[test]
fn marks_race_writes_and_evictions_pct() {
    shuttle::check_pct(marks_race_writes_and_evictions, SCHEDULES, 3);
}

/// A source that holds nothing: every fetch answers `Gone` at once. Counts
/// its calls.
struct Nothing(Arc<AtomicUsize>);

impl Fetcher<u8, u32> for Nothing {
    type Error = std::convert::Infallible;

    async fn fetch(&self, _: &u8, _: Option<&u32>) -> Result<Fetched<u32>, Self::Error> {
        self.0.fetch_add(1, Ordering::SeqCst);
        Ok(Fetched::Gone)
    }
}

/// `get_or_fetch` of each of `keys` on a runtime of the calling thread's
/// own. Its fetches answer at once, so the runtime never parks, and
/// tokio's own locks are never held where shuttle switches threads (only
/// the store's are shuttle's). One thread at a time may use it: shuttle's
/// threads share one OS thread, and a runtime cannot start inside another.
fn load(cache: &Cache<u8, u32>, keys: &[u8]) -> Vec<Result<u32, FetchError>> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    runtime.block_on(async {
        let mut results = Vec::new();
        for key in keys {
            results.push(cache.get_or_fetch(key).await);
        }
        results
    })
}

/// With `negative_ttl`, a load whose source answers `Gone` races an
/// insert of the key: in no interleaving does the record of the gone key
/// outlive the insert (the recorder looks for the key under its shard
/// lock after recording; the writer looks for records after writing).
fn a_gone_answer_races_an_insert_of_its_key() {
    let calls = Arc::new(AtomicUsize::new(0));
    let cache: Cache<u8, u32> = Cache::builder()
        .max_size(2)
        .ttl(None)
        .fetcher_impl(Nothing(Arc::clone(&calls)))
        .negative_ttl(Duration::from_secs(60))
        .build()
        .unwrap();
    // Another key's record first, so that the insert may find records as
    // it begins, or not, by the interleaving.
    let loader = thread::spawn({
        let cache = cache.clone();
        move || load(&cache, &[0, 1])
    });
    let writer = thread::spawn({
        let cache = cache.clone();
        move || {
            cache.insert(1, 5);
            cache.validate();
        }
    });
    let loaded = loader.join().unwrap();
    assert!(matches!(loaded[0], Err(FetchError::Gone)), "{loaded:?}");
    assert!(
        matches!(loaded[1], Ok(5) | Err(FetchError::Gone)),
        "{loaded:?}"
    );
    writer.join().unwrap();
    cache.validate();
    // Taken out by `retain`, which leaves records alone: a record that
    // outlived the insert would now answer without a call.
    assert_eq!(cache.retain(|k, _| *k != 1), 1, "the insert stands");
    let before = calls.load(Ordering::SeqCst);
    assert!(matches!(load(&cache, &[1])[0], Err(FetchError::Gone)));
    assert_eq!(
        calls.load(Ordering::SeqCst),
        before + 1,
        "a record of the gone key outlived its insert"
    );
}

#[test]
fn a_gone_answer_races_an_insert_of_its_key_random() {
    shuttle::check_random(a_gone_answer_races_an_insert_of_its_key, SCHEDULES);
}

#[test]
fn a_gone_answer_races_an_insert_of_its_key_pct() {
    shuttle::check_pct(a_gone_answer_races_an_insert_of_its_key, SCHEDULES, 3);
}

#[test]
fn own_ttls_race_refiles_marks_and_writes_random() {
    shuttle::check_random(own_ttls_race_refiles_marks_and_writes, SCHEDULES);
}

#[test]
fn own_ttls_race_refiles_marks_and_writes_pct() {
    shuttle::check_pct(own_ttls_race_refiles_marks_and_writes, SCHEDULES, 3);
}
