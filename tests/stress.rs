//! Many threads mixing reads, writes and invalidations on an over-full key
//! space; then the invariants: the capacity bound, no value under a key it was
//! not written for, and metrics that add up.

use std::sync::Barrier;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use swr_cache::Cache;

const MAX_SIZE: usize = 64;
const KEYS: u64 = 256;

/// A value that names the key it was written for, the thread and the write.
fn value(thread: u64, key: u64, seq: u64) -> u64 {
    (thread << 48) | (key << 32) | seq
}

fn key_of(value: u64) -> u64 {
    (value >> 32) & 0xffff
}

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

#[derive(Default)]
struct Tally {
    gets: AtomicUsize,
    inserts: AtomicUsize,
    removed: AtomicUsize,
}

fn mixed_load(threads: u64, ops: u64) {
    let cache: Cache<u64, u64> = Cache::builder()
        .max_size(MAX_SIZE)
        .ttl(None)
        .build()
        .unwrap();
    let tally = Tally::default();
    let start = Barrier::new(threads as usize);
    std::thread::scope(|s| {
        for thread in 0..threads {
            let (cache, tally, start) = (&cache, &tally, &start);
            s.spawn(move || {
                let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ (thread + 1));
                start.wait();
                for seq in 0..ops {
                    let r = rng.next();
                    let key = (r >> 8) % KEYS;
                    match r % 10 {
                        0..=5 => {
                            tally.gets.fetch_add(1, Ordering::Relaxed);
                            if let Some(v) = cache.get(&key) {
                                assert_eq!(key_of(v), key, "a value under another key");
                            }
                        }
                        6..=8 => {
                            tally.inserts.fetch_add(1, Ordering::Relaxed);
                            cache.insert(key, value(thread, key, seq));
                        }
                        _ => {
                            if cache.invalidate(&key) {
                                tally.removed.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    }
                }
            });
        }
    });

    let m = cache.metrics();
    assert!(cache.len() <= MAX_SIZE, "len {} once quiet", cache.len());
    assert_eq!(m.hits + m.misses, tally.gets.load(Ordering::Relaxed) as u64);
    assert_eq!(
        m.inserts + m.updates,
        tally.inserts.load(Ordering::Relaxed) as u64
    );
    assert_eq!(
        m.invalidations,
        tally.removed.load(Ordering::Relaxed) as u64
    );
    assert_eq!(
        m.inserts - m.evictions - m.invalidations,
        cache.len() as u64,
        "{m:?}"
    );
    assert!(m.evictions > 0, "the key space overflows the cache");
    let present: Vec<u64> = (0..KEYS).filter(|k| cache.contains_key(k)).collect();
    assert_eq!(present.len(), cache.len());
    for key in present {
        let v = cache.get(&key).expect("present");
        assert_eq!(key_of(v), key);
        assert!(v >> 48 < threads, "written by one of the threads");
    }
}

#[test]
fn two_threads_mixed() {
    mixed_load(2, 50_000);
}

#[test]
fn four_threads_mixed() {
    mixed_load(4, 25_000);
}

#[test]
fn eight_threads_mixed() {
    mixed_load(8, 12_500);
}

#[test]
fn len_never_passes_max_size_by_more_than_the_inserters() {
    const INSERTERS: usize = 4;
    let cache: Cache<u64, u64> = Cache::builder()
        .max_size(MAX_SIZE)
        .ttl(None)
        .build()
        .unwrap();
    let done = AtomicBool::new(false);
    let worst = std::thread::scope(|s| {
        let watcher = s.spawn(|| {
            let mut worst = 0;
            while !done.load(Ordering::Relaxed) {
                worst = worst.max(cache.len());
            }
            worst
        });
        let inserters: Vec<_> = (0..INSERTERS as u64)
            .map(|thread| {
                let cache = &cache;
                s.spawn(move || {
                    for i in 0..20_000 {
                        cache.insert(thread << 32 | i, i); // always a new key
                    }
                })
            })
            .collect();
        for inserter in inserters {
            inserter.join().unwrap();
        }
        done.store(true, Ordering::Relaxed);
        watcher.join().unwrap()
    });
    assert!(worst <= MAX_SIZE + INSERTERS, "len reached {worst}");
    assert_eq!(cache.len(), MAX_SIZE);
    let m = cache.metrics();
    assert_eq!(m.inserts, INSERTERS as u64 * 20_000);
    assert_eq!(m.inserts - m.evictions, MAX_SIZE as u64);
}

#[test]
fn a_one_entry_cache_under_many_threads() {
    let cache: Cache<u64, u64> = Cache::builder().max_size(1).ttl(None).build().unwrap();
    std::thread::scope(|s| {
        for thread in 0..8u64 {
            let cache = &cache;
            s.spawn(move || {
                for i in 0..5_000u64 {
                    let key = (thread * 7 + i) % 5;
                    cache.insert(key, value(thread, key, i));
                    if let Some(v) = cache.get(&key) {
                        assert_eq!(key_of(v), key);
                    }
                    if i % 13 == 0 {
                        cache.invalidate(&key);
                    }
                }
            });
        }
    });
    assert!(cache.len() <= 1);
    let m = cache.metrics();
    assert_eq!(
        m.inserts - m.evictions - m.invalidations,
        cache.len() as u64
    );
}

#[test]
fn resizing_while_writers_run_keeps_the_bound() {
    let cache: Cache<u64, u64> = Cache::builder()
        .max_size(MAX_SIZE)
        .ttl(None)
        .build()
        .unwrap();
    let done = AtomicBool::new(false);
    std::thread::scope(|s| {
        for thread in 0..3u64 {
            let (cache, done) = (&cache, &done);
            s.spawn(move || {
                let mut rng = Rng(thread + 11);
                while !done.load(Ordering::Relaxed) {
                    let key = rng.next() % KEYS;
                    cache.insert(key, value(thread, key, 0));
                    cache.get(&(rng.next() % KEYS));
                }
            });
        }
        for size in [8usize, 128, 1, 0, 32, 64].into_iter().cycle().take(60) {
            cache
                .configure(swr_cache::ConfigChange::new().max_size(size))
                .unwrap();
            std::thread::yield_now();
        }
        done.store(true, Ordering::Relaxed);
    });
    let m = cache.metrics();
    let present = (0..KEYS).filter(|k| cache.contains_key(k)).count();
    assert_eq!(cache.len(), present, "len counts what the map holds");
    assert!(cache.len() <= MAX_SIZE);
    assert_eq!(
        m.inserts - m.evictions - m.invalidations,
        cache.len() as u64,
        "{m:?}"
    );
    for key in (0..KEYS).filter(|k| cache.contains_key(k)) {
        assert_eq!(key_of(cache.get(&key).unwrap()), key);
    }
    // Still a working cache of the last size.
    for key in 1000..1100 {
        cache.insert(key, value(9, key, 0));
    }
    assert_eq!(cache.len(), MAX_SIZE);
}
