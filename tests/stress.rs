//! Concurrency stress: many threads mixing reads, writes and invalidations on
//! an over-full key space. While they run, a checker thread validates the
//! store over and over (`validate` sees one moment of every shard at once);
//! once the cache is quiet, the invariants again and more: the capacity
//! bound, no value under a key it was not written for, no lost or
//! resurrected write, and metrics that add up exactly.
//!
//! Every workload runs under a watchdog (`within`), so a deadlock or a
//! livelock fails the test instead of hanging the suite. Randomness is a
//! seeded xorshift per thread; there are no sleeps.

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasher, Hash};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Barrier, Mutex};

use swr_cache::{Cache, ConfigChange};

#[path = "support/watchdog.rs"]
mod watchdog;
use watchdog::within;

const MAX_SIZE: usize = 64;
const KEYS: u64 = 256;

/// A value naming the thread that wrote it, the key it was written for and
/// the write's sequence number in that thread.
fn value(thread: u64, key: u64, seq: u64) -> u64 {
    assert!(thread < 1 << 16 && key < 1 << 16 && seq < 1 << 32);
    (thread << 48) | (key << 32) | seq
}

fn key_of(value: u64) -> u64 {
    (value >> 32) & 0xffff
}

fn thread_of(value: u64) -> u64 {
    value >> 48
}

/// xorshift64, seeded through splitmix64 so that nearby seeds diverge.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        let mut z = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        Self((z ^ (z >> 31)) | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Runs `work` while another thread validates `cache` again and again;
/// returns what `work` returned, after at least one validation.
fn validating<K, V, S, R>(cache: &Cache<K, V, S>, work: impl FnOnce() -> R) -> R
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
    S: BuildHasher + Clone + Send + Sync + 'static,
{
    let done = AtomicBool::new(false);
    std::thread::scope(|s| {
        let checker = s.spawn(|| {
            let mut checks = 0u64;
            while !done.load(Ordering::Acquire) || checks == 0 {
                cache.validate();
                checks += 1;
                std::thread::yield_now();
            }
        });
        let result = work();
        done.store(true, Ordering::Release);
        checker.join().unwrap();
        result
    })
}

fn offline_cache(max_size: usize) -> Cache<u64, u64> {
    Cache::builder()
        .max_size(max_size)
        .ttl(None)
        .build()
        .unwrap()
}

/// What one thread did and saw.
#[derive(Default)]
struct Tally {
    gets: u64,
    hits: u64,
    insert_calls: u64,
    invalidated: u64,
    /// Every value this thread wrote.
    written: HashSet<u64>,
    /// Every value this thread's reads returned.
    seen: Vec<u64>,
}

/// `threads` threads, `ops` operations each: 60 % `get`, 30 % `insert`, 10 %
/// `invalidate`, on `KEYS` keys in a cache of `MAX_SIZE`.
fn mixed_load(threads: u64, ops: u64) {
    let (cache, tallies) = within("mixed load", move || {
        let cache = offline_cache(MAX_SIZE);
        let start = Barrier::new(threads as usize);
        let tallies: Vec<Tally> = validating(&cache, || {
            std::thread::scope(|s| {
                let handles: Vec<_> = (0..threads)
                    .map(|thread| {
                        let (cache, start) = (&cache, &start);
                        s.spawn(move || {
                            let mut rng = Rng::new(thread);
                            let mut tally = Tally::default();
                            start.wait();
                            for seq in 0..ops {
                                let key = rng.below(KEYS);
                                match rng.below(10) {
                                    0..=5 => {
                                        tally.gets += 1;
                                        if let Some(v) = cache.get(&key) {
                                            assert_eq!(
                                                key_of(v),
                                                key,
                                                "{v:#x} read under key {key}"
                                            );
                                            tally.hits += 1;
                                            tally.seen.push(v);
                                        }
                                    }
                                    6..=8 => {
                                        let v = value(thread, key, seq);
                                        tally.insert_calls += 1;
                                        tally.written.insert(v);
                                        cache.insert(key, v);
                                    }
                                    _ => tally.invalidated += u64::from(cache.invalidate(&key)),
                                }
                            }
                            tally
                        })
                    })
                    .collect();
                handles.into_iter().map(|h| h.join().unwrap()).collect()
            })
        });
        (cache, tallies)
    });
    cache.validate();

    let written: HashSet<u64> = tallies
        .iter()
        .flat_map(|t| t.written.iter().copied())
        .collect();
    for v in tallies.iter().flat_map(|t| &t.seen) {
        assert!(written.contains(v), "read {v:#x}, which no thread wrote");
    }

    assert!(cache.len() <= MAX_SIZE, "len {} once quiet", cache.len());
    let present: Vec<u64> = (0..KEYS).filter(|k| cache.contains_key(k)).collect();
    assert_eq!(
        present.len(),
        cache.len(),
        "len() counts what the map holds"
    );
    for key in present {
        let v = cache.get(&key).expect("present");
        assert_eq!(key_of(v), key);
        assert!(thread_of(v) < threads);
        assert!(
            written.contains(&v),
            "{key} holds {v:#x}, which no thread wrote"
        );
    }

    let sum = |f: fn(&Tally) -> u64| tallies.iter().map(f).sum::<u64>();
    let m = cache.metrics();
    let final_gets = cache.len() as u64; // the reads of the checks above
    assert_eq!(m.hits, sum(|t| t.hits) + final_gets, "{m:?}");
    assert_eq!(m.hits + m.misses, sum(|t| t.gets) + final_gets, "{m:?}");
    assert_eq!(m.inserts + m.updates, sum(|t| t.insert_calls), "{m:?}");
    assert_eq!(m.invalidations, sum(|t| t.invalidated), "{m:?}");
    assert_eq!(
        m.inserts - m.evictions - m.invalidations,
        cache.len() as u64,
        "{m:?}"
    );
    assert_eq!(m.stale_hits, 0, "offline mode: nothing is stale");
    assert!(m.evictions > 0, "the key space overflows the cache: {m:?}");
    assert!(m.hits > 0 && m.misses > 0 && m.updates > 0, "{m:?}");
}

#[test]
fn two_threads_mixed() {
    mixed_load(2, 50_000);
}

#[test]
fn four_threads_mixed() {
    mixed_load(4, 40_000);
}

#[test]
fn eight_threads_mixed() {
    mixed_load(8, 25_000);
}

/// Each key has one writer (`key % threads`), which inserts and invalidates
/// it; every thread reads and invalidates any key. Once quiet, a key whose
/// writer last invalidated it is absent (nothing brings it back), and a
/// present key holds its writer's last value (no older write wins).
#[test]
fn present_keys_hold_their_writers_last_value() {
    const THREADS: u64 = 4;
    const OPS: u64 = 30_000;
    let (cache, last) = within("single writer per key", || {
        let cache = offline_cache(MAX_SIZE);
        let start = Barrier::new(THREADS as usize);
        let last: Vec<HashMap<u64, Option<u64>>> = validating(&cache, || {
            std::thread::scope(|s| {
                let handles: Vec<_> = (0..THREADS)
                    .map(|thread| {
                        let (cache, start) = (&cache, &start);
                        s.spawn(move || {
                            let mut rng = Rng::new(100 + thread);
                            let mut last = HashMap::new();
                            start.wait();
                            for seq in 0..OPS {
                                let key = rng.below(KEYS);
                                let mine = key % THREADS == thread;
                                match rng.below(10) {
                                    0..=3 => {
                                        if let Some(v) = cache.get(&key) {
                                            assert_eq!(key_of(v), key);
                                            assert_eq!(
                                                thread_of(v),
                                                key % THREADS,
                                                "not its writer"
                                            );
                                        }
                                    }
                                    4..=7 if mine => {
                                        let v = value(thread, key, seq);
                                        cache.insert(key, v);
                                        last.insert(key, Some(v));
                                    }
                                    8 if mine => {
                                        cache.invalidate(&key);
                                        last.insert(key, None);
                                    }
                                    _ => {
                                        cache.invalidate(&key);
                                    }
                                }
                            }
                            last
                        })
                    })
                    .collect();
                handles.into_iter().map(|h| h.join().unwrap()).collect()
            })
        });
        (cache, last)
    });
    cache.validate();
    let last: HashMap<u64, Option<u64>> = last.into_iter().flatten().collect();
    assert!(cache.len() <= MAX_SIZE);
    let mut present = 0;
    for key in 0..KEYS {
        let Some(v) = cache.get(&key) else { continue };
        present += 1;
        match last.get(&key) {
            Some(Some(expected)) => assert_eq!(
                v, *expected,
                "key {key}: {v:#x} is not its writer's last value {expected:#x}"
            ),
            Some(None) => panic!("key {key} was invalidated last by its writer, yet holds {v:#x}"),
            None => panic!("key {key} was never written, yet holds {v:#x}"),
        }
    }
    assert_eq!(present, cache.len());
    let m = cache.metrics();
    assert_eq!(
        m.inserts - m.evictions - m.invalidations,
        cache.len() as u64,
        "{m:?}"
    );
}

/// A watcher samples `len()` while inserters churn new keys: it is never
/// above `max_size`, not even for a moment (a write evicts before it adds,
/// under its shard's lock), and settles at `max_size`.
#[test]
fn len_never_passes_max_size() {
    const INSERTERS: u64 = 4;
    const PER_INSERTER: u64 = 25_000;
    let (cache, worst, samples) = within("len watcher", || {
        let cache = offline_cache(MAX_SIZE);
        let done = AtomicBool::new(false);
        let start = Barrier::new(INSERTERS as usize + 1);
        let (worst, samples) = std::thread::scope(|s| {
            let watcher = s.spawn(|| {
                let (mut worst, mut samples) = (0, 0u64);
                start.wait();
                loop {
                    let finished = done.load(Ordering::Acquire);
                    let len = cache.len();
                    assert!(len <= MAX_SIZE, "len {len} > max_size {MAX_SIZE}");
                    worst = worst.max(len);
                    samples += 1;
                    if finished {
                        return (worst, samples);
                    }
                }
            });
            let inserters: Vec<_> = (0..INSERTERS)
                .map(|thread| {
                    let (cache, start) = (&cache, &start);
                    s.spawn(move || {
                        start.wait();
                        for i in 0..PER_INSERTER {
                            cache.insert(thread << 32 | i, i); // always a new key
                        }
                    })
                })
                .collect();
            for inserter in inserters {
                inserter.join().unwrap();
            }
            done.store(true, Ordering::Release);
            watcher.join().unwrap()
        });
        (cache, worst, samples)
    });
    assert!(samples > 1, "the watcher sampled during the churn");
    assert!(worst >= MAX_SIZE, "the cache filled: worst {worst}");
    assert_eq!(cache.len(), MAX_SIZE, "full and within bounds once quiet");
    let m = cache.metrics();
    assert_eq!(m.inserts, INSERTERS * PER_INSERTER);
    assert_eq!(m.inserts - m.evictions, MAX_SIZE as u64, "{m:?}");
}

/// One entry for many threads: every write contends for it.
#[test]
fn a_one_entry_cache_under_many_threads() {
    const THREADS: u64 = 8;
    let (cache, invalidated) = within("max_size 1", || {
        let cache = offline_cache(1);
        let invalidated = AtomicUsize::new(0);
        let start = Barrier::new(THREADS as usize);
        std::thread::scope(|s| {
            for thread in 0..THREADS {
                let (cache, invalidated, start) = (&cache, &invalidated, &start);
                s.spawn(move || {
                    let mut rng = Rng::new(200 + thread);
                    start.wait();
                    for i in 0..10_000u64 {
                        let key = rng.below(5);
                        cache.insert(key, value(thread, key, i));
                        if let Some(v) = cache.get(&key) {
                            assert_eq!(key_of(v), key);
                        }
                        if rng.below(8) == 0 && cache.invalidate(&rng.below(5)) {
                            invalidated.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                });
            }
        });
        (cache, invalidated.into_inner() as u64)
    });
    assert!(cache.len() <= 1, "len {}", cache.len());
    assert_eq!(
        (0..5).filter(|k| cache.contains_key(k)).count(),
        cache.len()
    );
    let m = cache.metrics();
    assert_eq!(m.invalidations, invalidated);
    assert_eq!(
        m.inserts - m.evictions - m.invalidations,
        cache.len() as u64,
        "{m:?}"
    );
}

/// Writers, invalidators and a thread that keeps clearing and resizing a
/// cache of one or two entries: resizing holds every shard lock at once,
/// and nothing else may hold one while it waits for another.
#[test]
fn a_tiny_cache_with_clear_and_resize_makes_progress() {
    const THREADS: u64 = 4;
    let cache = within("tiny cache with clear and resize", || {
        let cache = offline_cache(1);
        let done = AtomicBool::new(false);
        let start = Barrier::new(THREADS as usize + 1);
        std::thread::scope(|s| {
            let writers: Vec<_> = (0..THREADS)
                .map(|thread| {
                    let (cache, start) = (&cache, &start);
                    s.spawn(move || {
                        let mut rng = Rng::new(300 + thread);
                        start.wait();
                        for i in 0..5_000u64 {
                            let key = rng.below(3);
                            cache.insert(key, value(thread, key, i));
                            cache.invalidate(&rng.below(3));
                            if let Some(v) = cache.get(&key) {
                                assert_eq!(key_of(v), key);
                            }
                        }
                    })
                })
                .collect();
            s.spawn(|| {
                start.wait();
                let mut i = 0u64;
                while !done.load(Ordering::Acquire) {
                    match i % 3 {
                        0 => cache.clear(),
                        1 => cache.configure(ConfigChange::new().max_size(2)).unwrap(),
                        _ => cache.configure(ConfigChange::new().max_size(1)).unwrap(),
                    }
                    i += 1;
                }
            });
            for writer in writers {
                writer.join().unwrap();
            }
            done.store(true, Ordering::Release);
        });
        cache
    });
    let present = (0..3).filter(|k| cache.contains_key(k)).count();
    assert_eq!(cache.len(), present);
    assert!(cache.len() <= cache.max_size());
    let m = cache.metrics();
    assert_eq!(
        m.inserts - m.evictions - m.invalidations,
        cache.len() as u64,
        "{m:?}"
    );
}

/// `configure` resizes the cache under writers and readers: once quiet the
/// bound holds, `len()` agrees with the entries, and the cache works at its
/// last size.
#[test]
fn resizing_while_writers_run_keeps_the_bound() {
    let cache = within("resize under writers", || {
        let cache = offline_cache(MAX_SIZE);
        let done = AtomicBool::new(false);
        std::thread::scope(|s| {
            for thread in 0..3u64 {
                let (cache, done) = (&cache, &done);
                s.spawn(move || {
                    let mut rng = Rng::new(400 + thread);
                    let mut seq = 0;
                    while !done.load(Ordering::Relaxed) {
                        let key = rng.below(KEYS);
                        cache.insert(key, value(thread, key, seq));
                        if let Some(v) = cache.get(&rng.below(KEYS)) {
                            assert!(thread_of(v) < 3);
                        }
                        if rng.below(16) == 0 {
                            cache.invalidate(&rng.below(KEYS));
                        }
                        seq += 1;
                    }
                });
            }
            for size in [8usize, 128, 1, 0, 32, 64].into_iter().cycle().take(120) {
                cache.configure(ConfigChange::new().max_size(size)).unwrap();
                std::thread::yield_now();
            }
            done.store(true, Ordering::Relaxed);
        });
        cache
    });
    assert_eq!(cache.max_size(), MAX_SIZE);
    let present: Vec<u64> = (0..KEYS).filter(|k| cache.contains_key(k)).collect();
    assert_eq!(cache.len(), present.len(), "len counts what the map holds");
    assert!(cache.len() <= MAX_SIZE);
    let m = cache.metrics();
    assert_eq!(
        m.inserts - m.evictions - m.invalidations,
        cache.len() as u64,
        "{m:?}"
    );
    for key in present {
        assert_eq!(key_of(cache.get(&key).unwrap()), key);
    }
    // Still a working cache of the last size: it fills to it, and no further.
    for key in 1000..1100 {
        cache.insert(key, value(9, key, 0));
    }
    assert_eq!(cache.len(), MAX_SIZE);
    assert_eq!(
        cache.get(&1099),
        Some(value(9, 1099, 0)),
        "a new key is kept"
    );
}

/// Hashes every key to the same value: one shard, one fingerprint for every
/// key, one probe sequence in its table; the bound and the accounting must
/// still be exact.
#[derive(Clone, Default)]
struct OneHash;

impl std::hash::BuildHasher for OneHash {
    type Hasher = OneHasher;
    fn build_hasher(&self) -> OneHasher {
        OneHasher
    }
}

struct OneHasher;

impl std::hash::Hasher for OneHasher {
    fn finish(&self) -> u64 {
        0x5eed
    }
    fn write(&mut self, _: &[u8]) {}
}

#[test]
fn keys_that_share_one_hash_keep_the_bound() {
    const THREADS: u64 = 4;
    const MAX: usize = 8;
    let cache = within("one hash for every key", || {
        let cache: Cache<u64, u64, OneHash> = Cache::builder()
            .hasher(OneHash)
            .max_size(MAX)
            .ttl(None)
            .build()
            .unwrap();
        let start = Barrier::new(THREADS as usize);
        std::thread::scope(|s| {
            for thread in 0..THREADS {
                let (cache, start) = (&cache, &start);
                s.spawn(move || {
                    let mut rng = Rng::new(400 + thread);
                    start.wait();
                    for i in 0..5_000u64 {
                        let key = rng.below(32);
                        match rng.below(10) {
                            0..=4 => cache.insert(key, value(thread, key, i)),
                            5..=8 => {
                                if let Some(v) = cache.get(&key) {
                                    assert_eq!(key_of(v), key);
                                }
                            }
                            _ => {
                                cache.invalidate(&key);
                            }
                        }
                    }
                });
            }
        });
        cache
    });
    assert!(cache.len() <= MAX, "len {}", cache.len());
    assert_eq!(
        (0..32).filter(|k| cache.contains_key(k)).count(),
        cache.len()
    );
    let m = cache.metrics();
    assert!(m.evictions > 0, "{m:?}");
    assert_eq!(
        m.inserts - m.evictions - m.invalidations,
        cache.len() as u64,
        "{m:?}"
    );
    cache.validate();
    // Once quiet, the cache still works at its bound: new keys fill it,
    // evicting as they must. (Which keys go is the policy's to say, and with
    // one fingerprint for every key its frequency sketch cannot tell them
    // apart, so nothing more is asserted.)
    for key in 100..100 + 4 * MAX as u64 {
        cache.insert(key, value(9, key, 0));
    }
    assert_eq!(cache.len(), MAX);
    assert!(
        cache.contains_key(&(99 + 4 * MAX as u64)),
        "the last key stands"
    );
    cache.validate();
    let m = cache.metrics();
    assert_eq!(
        m.inserts - m.evictions - m.invalidations,
        cache.len() as u64,
        "{m:?}"
    );
}

/// Hashes a `u64` key to itself, as integer-keyed services often do: the
/// store must mix it before it picks shards and table positions.
#[derive(Clone, Default)]
struct Identity;

impl std::hash::BuildHasher for Identity {
    type Hasher = IdentityHasher;
    fn build_hasher(&self) -> IdentityHasher {
        IdentityHasher(0)
    }
}

struct IdentityHasher(u64);

impl std::hash::Hasher for IdentityHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, _: &[u8]) {
        unreachable!("only u64 keys")
    }
    fn write_u64(&mut self, key: u64) {
        self.0 = key;
    }
}

#[test]
fn a_key_hashing_to_zero_stays_within_the_bound() {
    // Each round fills an empty cache from several threads at once, with
    // the key 0 (hash 0) among the keys: the bound holds in every round.
    const THREADS: u64 = 4;
    const MAX: usize = 4;
    let cache = within("identity hashes", || {
        let cache: Cache<u64, u64, Identity> = Cache::builder()
            .hasher(Identity)
            .max_size(MAX)
            .ttl(None)
            .build()
            .unwrap();
        let start = Barrier::new(THREADS as usize);
        for round in 0..5_000u64 {
            std::thread::scope(|s| {
                for thread in 0..THREADS {
                    let (cache, start) = (&cache, &start);
                    s.spawn(move || {
                        start.wait();
                        for i in 0..3 {
                            let key = if thread == round % THREADS && i == 1 {
                                0
                            } else {
                                1 + thread * 100 + i
                            };
                            cache.insert(key, value(thread, key, i));
                        }
                    });
                }
            });
            assert!(cache.len() <= MAX, "round {round}: len {}", cache.len());
            cache.validate();
            cache.clear();
        }
        cache
    });
    assert!(cache.is_empty());
}

/// Inserts raced by invalidations and re-inserts of the same keys in a full
/// cache, with other threads churning new keys: an `insert` that returned is
/// seen by the same thread's next `get`, unless a write, invalidation or
/// eviction removed it meanwhile, and then the listener heard of that
/// removal. (The global ring this store replaced lost such inserts: an
/// invalidate racing a re-insert emptied the slot the re-insert had just
/// claimed.) Counts every read that found neither its value nor a removal
/// of it: zero.
#[test]
fn an_insert_is_seen_unless_something_removed_it() {
    const RACERS: u64 = 3;
    const CHURNERS: u64 = 2;
    const ROUNDS: u64 = 20_000;
    let removed: Arc<Mutex<HashSet<u64>>> = Arc::default();
    let sink = Arc::clone(&removed);
    let cache: Cache<u64, u64> = Cache::builder()
        .max_size(MAX_SIZE)
        .ttl(None)
        .eviction_listener(move |_, v, _| {
            sink.lock().unwrap().insert(v);
        })
        .build()
        .unwrap();
    let cache = within("insert against invalidate and churn", move || {
        let next_new = AtomicU64::new(1 << 40);
        let done = AtomicBool::new(false);
        let suspects: Vec<u64> = validating(&cache, || {
            std::thread::scope(|s| {
                let racers: Vec<_> = (0..RACERS)
                    .map(|thread| {
                        let cache = &cache;
                        s.spawn(move || {
                            let mut rng = Rng::new(500 + thread);
                            let mut suspects = Vec::new();
                            for seq in 0..ROUNDS {
                                let key = rng.below(8);
                                let v = value(thread, key, seq);
                                cache.insert(key, v);
                                if cache.get(&key) != Some(v) {
                                    suspects.push(v);
                                }
                                if rng.below(2) == 0 {
                                    cache.invalidate(&rng.below(8));
                                }
                            }
                            suspects
                        })
                    })
                    .collect();
                for _ in 0..CHURNERS {
                    let (cache, next_new, done) = (&cache, &next_new, &done);
                    s.spawn(move || {
                        while !done.load(Ordering::Relaxed) {
                            // Values no racer writes: their key field is 256.
                            let key = next_new.fetch_add(1, Ordering::Relaxed);
                            cache.insert(key, key);
                        }
                    });
                }
                let suspects = racers.into_iter().flat_map(|h| h.join().unwrap()).collect();
                done.store(true, Ordering::Relaxed);
                suspects
            })
        });
        assert!(!suspects.is_empty(), "the race was never run into");
        let removed = removed.lock().unwrap();
        let lost: Vec<&u64> = suspects.iter().filter(|v| !removed.contains(v)).collect();
        assert!(lost.is_empty(), "{} inserts lost: {lost:x?}", lost.len());
        cache
    });
    cache.validate();
    let m = cache.metrics();
    assert_eq!(
        m.inserts - m.evictions - m.invalidations,
        cache.len() as u64
    );
    assert!(m.evictions > 0, "the churn kept the cache full");
}

/// A value that says whether it is alive, counts its drops, and checks its
/// own bytes: a read of a freed or half-written value fails.
struct Watched {
    key: u64,
    bytes: Box<[u64; 8]>,
    alive: AtomicBool,
    drops: Arc<AtomicUsize>,
}

impl Watched {
    fn new(key: u64, seq: u64, drops: &Arc<AtomicUsize>) -> Self {
        Self {
            key,
            bytes: Box::new([key ^ seq; 8]),
            alive: AtomicBool::new(true),
            drops: Arc::clone(drops),
        }
    }

    /// Reads the whole value, as a borrower would, and checks it.
    fn check(&self, key: u64) {
        assert!(self.alive.load(Ordering::SeqCst), "read after drop");
        assert_eq!(self.key, key, "a read found another key's value");
        let first = self.bytes[0];
        assert!(self.bytes.iter().all(|&b| b == first), "torn value");
    }
}

impl Clone for Watched {
    fn clone(&self) -> Self {
        unreachable!("borrowing reads clone nothing")
    }
}

impl Drop for Watched {
    fn drop(&mut self) {
        assert!(self.alive.swap(false, Ordering::SeqCst), "dropped twice");
        self.drops.fetch_add(1, Ordering::SeqCst);
    }
}

/// Readers hold values by reference (`get_with`, `peek_with`, checking
/// every byte) while writers replace them, evict them from a small cache
/// and clear it: no value is seen after its drop, every value the cache
/// was given is dropped exactly once (by the cache's collector while it
/// lives, or when it is dropped), and values are freed while the cache
/// lives, not only at its end.
#[test]
fn borrowed_values_are_dropped_once_and_never_while_read() {
    within("borrowed values", || {
        let drops = Arc::new(AtomicUsize::new(0));
        let given = Arc::new(AtomicUsize::new(0));
        let cache: Cache<u64, Watched> = Cache::builder().max_size(32).ttl(None).build().unwrap();
        let done = AtomicBool::new(false);
        let freed_while_live = validating(&cache, || {
            std::thread::scope(|s| {
                for reader in 0..2u64 {
                    let (cache, done) = (&cache, &done);
                    s.spawn(move || {
                        let mut rng = Rng::new(100 + reader);
                        let mut reads = 0u64;
                        while !done.load(Ordering::Acquire) || reads < 1_000 {
                            let key = rng.below(64);
                            if reader == 0 {
                                cache.get_with(&key, |v| v.check(key));
                            } else {
                                cache.peek_with(&key, |v| v.check(key));
                            }
                            reads += 1;
                        }
                    });
                }
                let writers: Vec<_> = (0..2u64)
                    .map(|writer| {
                        let (cache, drops, given) = (&cache, &drops, &given);
                        s.spawn(move || {
                            let mut rng = Rng::new(writer);
                            for seq in 0..20_000u64 {
                                let key = rng.below(64);
                                given.fetch_add(1, Ordering::SeqCst);
                                cache.insert(key, Watched::new(key, seq, drops));
                                if seq % 5_000 == 4_999 {
                                    cache.clear();
                                }
                            }
                        })
                    })
                    .collect();
                for writer in writers {
                    writer.join().unwrap();
                }
                done.store(true, Ordering::Release);
            });
            drops.load(Ordering::SeqCst)
        });
        let given = given.load(Ordering::SeqCst);
        assert!(
            freed_while_live > given / 2,
            "only {freed_while_live} of {given} values freed while the cache lived"
        );
        drop(cache);
        assert_eq!(
            drops.load(Ordering::SeqCst),
            given,
            "each value dropped once"
        );
    });
}

/// (Review #18.8.) `configure` raising the bound raised the shards'
/// capacities before the settings, so for a moment `len()` could exceed
/// `max_size()`. A writer checks, after each insert, the length and then
/// the bound, while the bound is raised (and lowered again) under it.
#[test]
fn len_never_exceeds_max_size_while_the_bound_is_raised() {
    within("bound raised under writes", || {
        let cache: Cache<u64, u64> = Cache::builder().max_size(100_000).build().unwrap();
        let small = ConfigChange::new().max_size(100);
        let large = ConfigChange::new().max_size(100_000);
        for round in 0..300u64 {
            cache.configure(small.clone()).unwrap();
            for key in 0..200 {
                cache.insert(key, key);
            }
            let (stop, writing) = (AtomicBool::new(false), AtomicBool::new(false));
            let seen = std::thread::scope(|s| {
                let writer = s.spawn(|| {
                    let mut key = round << 32;
                    while !stop.load(Ordering::Relaxed) {
                        cache.insert(key, key);
                        writing.store(true, Ordering::Relaxed);
                        key += 1;
                        let len = cache.len();
                        let max = cache.max_size();
                        if len > max {
                            return Some((len, max));
                        }
                    }
                    None
                });
                while !writing.load(Ordering::Relaxed) {
                    std::hint::spin_loop();
                }
                cache.configure(large.clone()).unwrap();
                stop.store(true, Ordering::Relaxed);
                writer.join().unwrap()
            });
            assert_eq!(seen, None, "len above max_size in round {round}");
        }
        cache.validate();
    });
}
