//! Throughput of swr-cache against its peers, all in one run.
//!
//! ```text
//! cargo bench -p swr-cache-peers --bench throughput                  # 1 and 2 threads
//! SWR_BENCH_THREADS=1,2,4 cargo bench -p swr-cache-peers --bench throughput
//! cargo bench -p swr-cache-peers --bench throughput -- get_hit/u64   # a filter, as criterion takes
//! cargo test -p swr-cache-peers --bench throughput                   # test mode: each once, a check
//! ```
//!
//! Caches: swr-cache (with a TTL and its refresher running, as a service runs
//! it, so every read takes the staleness check on the coarse clock),
//! quick_cache, moka (sync), mini-moka, and a bare `DashMap` with swr-cache's
//! hasher: the floor that a cache built on it cannot beat. Workloads:
//!
//! - `get_hit`: reads of present keys, Zipf(1.0) or uniform over 100,000
//!   keys (capacity 200,000, so every read hits), `u64` and `String` keys;
//! - `mixed`: 95 % reads, 5 % inserts, Zipf(1.0) over 100,000 keys into a
//!   cache of 10,000 (ten times the capacity), so eviction runs all along;
//! - `churn`: inserts of new keys only into a full cache of 10,000, each one
//!   evicting. The floor here inserts and removes the key inserted 10,000
//!   before, to stay bounded;
//! - `get_or_insert`: a read of a Zipf(1.0) key over 100,000, and an insert
//!   when it misses, into a cache of 10,000 (a tenth of the keys): what a
//!   read-through cache does. The floor, unbounded, stops missing once it
//!   holds every key;
//! - `hot_prompts`: reads only, Zipf(1.0) over 100 prompts (`String` keys,
//!   2 KB `Arc<str>` values), all held by caches of 100 (quick_cache's is
//!   200, see `QUICK_CACHE_PROMPTS_CAPACITY`): reads that must not write
//!   shared memory. Readers: a `HashMap` built once and never written, read
//!   by reference (`frozen_borrow`, the limit) and cloning the `Arc`
//!   (`frozen_clone`); swr-cache's `get_with` and `get`, each with its
//!   refresher running and with a TTL but `start` never called
//!   (`_no_refresher`); and `get` (a clone) of quick_cache, moka and the
//!   `DashMap`. Its paired rounds run all nine readers and print each one's
//!   median reads per second, its scaling over one thread, and swr-cache's
//!   ratios to quick_cache and to `frozen_borrow`.
//!
//! Every measurement (criterion's `iter_custom`) runs `iters` operations split
//! over the threads, started together behind a barrier, and reports the wall
//! time of them all, so the figure is operations per second of all threads
//! together. The caches are concrete types (one copy of the loop per cache,
//! no dynamic dispatch in the loop). When criterion is done, the bench prints
//! a markdown table of the medians and the ratios of swr-cache to quick_cache
//! and to the floor, read from criterion's own estimates
//! (`$CARGO_TARGET_DIR/criterion/**/new/estimates.json`).
//!
//! Then it runs swr-cache, quick_cache and the floor back to back in short
//! interleaved rounds and prints the median and quartiles of the per-round
//! throughput ratios: on a shared machine these move far less between
//! invocations than ratios of criterion medians taken minutes apart. A
//! criterion filter (the first argument that is not a flag) limits these
//! rounds to the workloads whose names contain it. `SWR_BENCH_PAIRED_ONLY=1`
//! skips criterion and runs only these rounds. In criterion's test mode
//! (`cargo test`, or `-- --test`) every benchmark runs once and the rounds
//! are three short ones: a check that all of it runs, not a measurement.

use std::collections::HashMap;
use std::hash::Hash;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Barrier, LazyLock};
use std::time::{Duration, Instant};

use criterion::{BenchmarkGroup, BenchmarkId, Criterion, Throughput, measurement::WallTime};
use rand::rngs::SmallRng;
use rand::{RngExt, SeedableRng};
use rand_distr::Zipf;
use swr_cache::{Cache, DefaultBuildHasher};

/// Keys read by `get_hit`.
const GET_KEYS: usize = 100_000;
/// The capacity for `mixed` and `churn`; `mixed` draws from ten times as many keys.
const CAPACITY: usize = 10_000;
/// Pre-drawn key indices per thread; a power of two for cheap wrapping.
const DRAWS: usize = 1 << 16;

const CACHES: [&str; 5] = ["swr-cache", "quick_cache", "moka", "mini-moka", "dashmap"];

/// The operations the workloads need, over every cache measured.
trait BenchCache<K, V>: Send + Sync {
    fn get(&self, key: &K) -> Option<V>;
    fn insert(&self, key: K, value: V);
    /// Removes `key` where the cache does not bound itself (the floor).
    fn trim(&self, _key: &K) {}
}

impl<K, V> BenchCache<K, V> for Cache<K, V>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
{
    #[inline]
    fn get(&self, key: &K) -> Option<V> {
        Cache::get(self, key)
    }
    #[inline]
    fn insert(&self, key: K, value: V) {
        Cache::insert(self, key, value)
    }
}

impl<K, V> BenchCache<K, V> for quick_cache::sync::Cache<K, V>
where
    K: Hash + Eq + Clone + Send + Sync,
    V: Clone + Send + Sync,
{
    #[inline]
    fn get(&self, key: &K) -> Option<V> {
        quick_cache::sync::Cache::get(self, key)
    }
    #[inline]
    fn insert(&self, key: K, value: V) {
        quick_cache::sync::Cache::insert(self, key, value)
    }
}

impl<K, V> BenchCache<K, V> for moka::sync::Cache<K, V>
where
    K: Hash + Eq + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
{
    #[inline]
    fn get(&self, key: &K) -> Option<V> {
        moka::sync::Cache::get(self, key)
    }
    #[inline]
    fn insert(&self, key: K, value: V) {
        moka::sync::Cache::insert(self, key, value)
    }
}

impl<K, V> BenchCache<K, V> for mini_moka::sync::Cache<K, V>
where
    K: Hash + Eq + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
{
    #[inline]
    fn get(&self, key: &K) -> Option<V> {
        mini_moka::sync::Cache::get(self, key)
    }
    #[inline]
    fn insert(&self, key: K, value: V) {
        mini_moka::sync::Cache::insert(self, key, value)
    }
}

impl<K, V> BenchCache<K, V> for dashmap::DashMap<K, V, DefaultBuildHasher>
where
    K: Hash + Eq + Send + Sync,
    V: Clone + Send + Sync,
{
    #[inline]
    fn get(&self, key: &K) -> Option<V> {
        dashmap::DashMap::get(self, key).map(|v| v.value().clone())
    }
    #[inline]
    fn insert(&self, key: K, value: V) {
        dashmap::DashMap::insert(self, key, value);
    }
    #[inline]
    fn trim(&self, key: &K) {
        dashmap::DashMap::remove(self, key);
    }
}

fn swr<K, V>(capacity: usize, runtime: &tokio::runtime::Runtime) -> Cache<K, V>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Default + Send + Sync + 'static,
{
    let cache = swr_not_started::<K, V>(capacity, runtime);
    cache.start_on(runtime.handle()).expect("has a fetcher");
    cache
}

/// [`swr`]'s cache before `start`: a TTL and a fetcher, but no refresher.
/// Built inside `runtime`, as a service builds it, so a task there keeps
/// its coarse clock.
fn swr_not_started<K, V>(capacity: usize, runtime: &tokio::runtime::Runtime) -> Cache<K, V>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Default + Send + Sync + 'static,
{
    let _inside = runtime.enter();
    Cache::builder()
        .max_size(capacity)
        .ttl(Some(Duration::from_secs(3600)))
        .fetcher(|_: K| async { Ok::<_, std::convert::Infallible>(V::default()) })
        .build()
        .expect("valid settings")
}

/// The floor: a bare `DashMap` with swr-cache's hasher.
fn floor<K: Hash + Eq, V>(capacity: usize) -> dashmap::DashMap<K, V, DefaultBuildHasher> {
    dashmap::DashMap::with_capacity_and_hasher(capacity, DefaultBuildHasher::default())
}

/// Runs `$body` once per cache, with `$name` the cache's name and `$cache` a
/// cache of `$capacity` entries, of its own concrete type.
macro_rules! each_cache {
    ($k:ty, $v:ty, $capacity:expr, $runtime:expr, |$name:ident, $cache:ident| $body:block) => {{
        let capacity: usize = $capacity;
        {
            let $name = CACHES[0];
            let $cache = swr::<$k, $v>(capacity, $runtime);
            $body
        }
        {
            let $name = CACHES[1];
            let $cache = quick_cache::sync::Cache::<$k, $v>::new(capacity);
            $body
        }
        {
            let $name = CACHES[2];
            let $cache = moka::sync::Cache::<$k, $v>::new(capacity as u64);
            $body
        }
        {
            let $name = CACHES[3];
            let $cache = mini_moka::sync::Cache::<$k, $v>::new(capacity as u64);
            $body
        }
        {
            let $name = CACHES[4];
            let $cache = floor::<$k, $v>(capacity);
            $body
        }
    }};
}

fn thread_counts() -> Vec<usize> {
    std::env::var("SWR_BENCH_THREADS")
        .unwrap_or_else(|_| "1,2".to_string())
        .split(',')
        .filter_map(|n| n.trim().parse().ok())
        .filter(|n| *n > 0)
        .collect()
}

/// `DRAWS` key indices for one thread: Zipf(1.0) or uniform over `0..keys`.
fn draws(keys: usize, zipf: bool, seed: u64) -> Vec<usize> {
    let mut rng = SmallRng::seed_from_u64(seed);
    if zipf {
        let zipf = Zipf::new(keys as f64, 1.0).expect("valid Zipf parameters");
        (0..DRAWS).map(|_| rng.sample(zipf) as usize - 1).collect()
    } else {
        (0..DRAWS).map(|_| rng.random_range(0..keys)).collect()
    }
}

/// Runs `op(thread, i)` for `i` in `0..iters / threads` on each of `threads`
/// threads, started together; returns the wall time until the last is done.
fn run_threads<F>(threads: usize, iters: u64, op: F) -> Duration
where
    F: Fn(usize, usize) + Sync,
{
    let start = Barrier::new(threads);
    let per_thread = (iters as usize).div_ceil(threads);
    let op = &op;
    // Each worker times itself from the barrier: the span from the first
    // start to the last end. (Timed by a waiting main thread, a round could
    // end before that thread was scheduled again to read the clock, which
    // on 2 cores made short rounds read far too fast.)
    let spans: Vec<(Instant, Instant)> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..threads)
            .map(|thread| {
                let start = &start;
                s.spawn(move || {
                    start.wait();
                    let began = Instant::now();
                    for i in 0..per_thread {
                        op(thread, i);
                    }
                    (began, Instant::now())
                })
            })
            .collect();
        workers.into_iter().map(|w| w.join().unwrap()).collect()
    });
    let first = spans.iter().map(|s| s.0).min().expect("a thread");
    let last = spans.iter().map(|s| s.1).max().expect("a thread");
    last - first
}

/// Reads of present keys.
fn bench_get_hit<K, C>(
    group: &mut BenchmarkGroup<'_, WallTime>,
    name: &str,
    threads: usize,
    cache: &C,
    keys: &[K],
    draws: &[Vec<usize>],
) where
    K: Clone + Sync,
    C: BenchCache<K, u64>,
{
    for (i, key) in keys.iter().enumerate() {
        cache.insert(key.clone(), i as u64);
    }
    assert!(
        keys.iter().all(|k| cache.get(k).is_some()),
        "{name}: every key must be present for a get-hit run"
    );
    group.bench_function(BenchmarkId::new(name, threads), |b| {
        b.iter_custom(|iters| get_hit_run(cache, keys, draws, threads, iters))
    });
}

fn get_hit_run<K: Sync, V, C: BenchCache<K, V>>(
    cache: &C,
    keys: &[K],
    draws: &[Vec<usize>],
    threads: usize,
    iters: u64,
) -> Duration {
    reads_run(keys, draws, threads, iters, |key| cache.get(key))
}

/// `read` of the pre-drawn keys, `iters` of them over `threads` threads
/// (see [`run_threads`]), each result black-boxed, then dropped.
fn reads_run<K: Sync, R>(
    keys: &[K],
    draws: &[Vec<usize>],
    threads: usize,
    iters: u64,
    read: impl Fn(&K) -> R + Sync,
) -> Duration {
    run_threads(threads, iters, |thread, i| {
        let key = &keys[draws[thread][i & (DRAWS - 1)]];
        std::hint::black_box(read(key));
    })
}

fn get_hit<K>(c: &mut Criterion, runtime: &tokio::runtime::Runtime, key_type: &str, keys: &[K])
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
{
    for (distribution, zipf) in [("zipf", true), ("uniform", false)] {
        let mut group = c.benchmark_group(format!("get_hit/{key_type}/{distribution}"));
        group.throughput(Throughput::Elements(1));
        for threads in thread_counts() {
            let draws: Vec<Vec<usize>> = (0..threads)
                .map(|t| draws(GET_KEYS, zipf, t as u64))
                .collect();
            each_cache!(K, u64, GET_KEYS * 2, runtime, |name, cache| {
                bench_get_hit(&mut group, name, threads, &cache, keys, &draws);
            });
        }
        group.finish();
    }
}

/// 95 % reads, 5 % inserts, over ten times the capacity.
fn bench_mixed<C: BenchCache<u64, u64>>(
    group: &mut BenchmarkGroup<'_, WallTime>,
    name: &str,
    threads: usize,
    cache: &C,
    draws: &[Vec<usize>],
) {
    group.bench_function(BenchmarkId::new(name, threads), |b| {
        b.iter_custom(|iters| mixed_run(cache, draws, threads, iters))
    });
}

fn mixed_run<C: BenchCache<u64, u64>>(
    cache: &C,
    draws: &[Vec<usize>],
    threads: usize,
    iters: u64,
) -> Duration {
    run_threads(threads, iters, |thread, i| {
        let key = draws[thread][i & (DRAWS - 1)] as u64;
        if i % 20 == 0 {
            cache.insert(key, key);
        } else {
            std::hint::black_box(cache.get(&key));
        }
    })
}

fn mixed(c: &mut Criterion, runtime: &tokio::runtime::Runtime) {
    let mut group = c.benchmark_group("mixed_95_get_5_insert/u64/zipf");
    group.throughput(Throughput::Elements(1));
    for threads in thread_counts() {
        let draws: Vec<Vec<usize>> = (0..threads)
            .map(|t| draws(CAPACITY * 10, true, 100 + t as u64))
            .collect();
        each_cache!(u64, u64, CAPACITY, runtime, |name, cache| {
            // Fill it first, so eviction runs from the first measurement on.
            for key in 0..(CAPACITY * 10) as u64 {
                cache.insert(key, key);
            }
            bench_mixed(&mut group, name, threads, &cache, &draws);
        });
    }
    group.finish();
}

/// Inserts of new keys only, each one evicting.
fn bench_churn<C: BenchCache<u64, u64>>(
    group: &mut BenchmarkGroup<'_, WallTime>,
    name: &str,
    threads: usize,
    cache: &C,
) {
    let next = fill_for_churn(cache);
    group.bench_function(BenchmarkId::new(name, threads), |b| {
        b.iter_custom(|iters| churn_run(cache, &next, threads, iters))
    });
}

/// Fills `cache` to `CAPACITY`; returns the counter of the next new key.
fn fill_for_churn<C: BenchCache<u64, u64>>(cache: &C) -> AtomicU64 {
    for key in 0..CAPACITY as u64 {
        cache.insert(key, key);
    }
    AtomicU64::new(CAPACITY as u64)
}

fn churn_run<C: BenchCache<u64, u64>>(
    cache: &C,
    next: &AtomicU64,
    threads: usize,
    iters: u64,
) -> Duration {
    // Each run takes a fresh range of keys.
    let per_thread = iters.div_ceil(threads as u64);
    let base = next.fetch_add(per_thread * threads as u64, Ordering::Relaxed);
    run_threads(threads, iters, |thread, i| {
        let key = base + thread as u64 * per_thread + i as u64;
        cache.insert(key, key);
        cache.trim(&(key - CAPACITY as u64));
    })
}

fn churn(c: &mut Criterion, runtime: &tokio::runtime::Runtime) {
    let mut group = c.benchmark_group("churn_insert_new/u64");
    group.throughput(Throughput::Elements(1));
    for threads in thread_counts() {
        each_cache!(u64, u64, CAPACITY, runtime, |name, cache| {
            bench_churn(&mut group, name, threads, &cache);
        });
    }
    group.finish();
}

/// Reads a Zipf key and inserts it on a miss, over ten times the capacity.
fn get_or_insert_run<C: BenchCache<u64, u64>>(
    cache: &C,
    draws: &[Vec<usize>],
    threads: usize,
    iters: u64,
) -> Duration {
    run_threads(threads, iters, |thread, i| {
        let key = draws[thread][i & (DRAWS - 1)] as u64;
        if cache.get(&key).is_none() {
            cache.insert(key, key);
        }
    })
}

fn get_or_insert(c: &mut Criterion, runtime: &tokio::runtime::Runtime) {
    let mut group = c.benchmark_group("get_or_insert/u64/zipf");
    group.throughput(Throughput::Elements(1));
    for threads in thread_counts() {
        let draws: Vec<Vec<usize>> = (0..threads)
            .map(|t| draws(CAPACITY * 10, true, 200 + t as u64))
            .collect();
        each_cache!(u64, u64, CAPACITY, runtime, |name, cache| {
            group.bench_function(BenchmarkId::new(name, threads), |b| {
                b.iter_custom(|iters| get_or_insert_run(&cache, &draws, threads, iters))
            });
        });
    }
    group.finish();
}

/// The prompts of `hot_prompts`, every one cached: the capacity of each cache.
const PROMPTS: usize = 100;
/// Bytes of each prompt's text.
const PROMPT_BYTES: usize = 2048;
/// quick_cache's capacity in `hot_prompts`, the one exception to `PROMPTS`:
/// at 100 it makes two shards of 50 entries, and the 100 keys seldom split
/// evenly between them, so some would be evicted and their reads miss; at
/// 200 it makes four shards of 50 (on any number of cores), which hold them.
const QUICK_CACHE_PROMPTS_CAPACITY: usize = 2 * PROMPTS;

/// The readers of `hot_prompts`, in the order they run and print.
#[derive(Clone, Copy)]
enum HotReader {
    /// The limit: a `HashMap` never written, read by reference.
    FrozenBorrow,
    /// The same map, cloning the `Arc` of each value read.
    FrozenClone,
    /// swr-cache's `get_with`, its refresher running.
    SwrGetWith,
    /// swr-cache's `get` (a clone of the `Arc`), its refresher running.
    SwrGet,
    /// `get_with` with a TTL but `start` never called.
    SwrGetWithNoRefresher,
    /// `get` with a TTL but `start` never called.
    SwrGetNoRefresher,
    QuickCache,
    DashMap,
    Moka,
}

impl HotReader {
    const ALL: [HotReader; 9] = [
        HotReader::FrozenBorrow,
        HotReader::FrozenClone,
        HotReader::SwrGetWith,
        HotReader::SwrGet,
        HotReader::SwrGetWithNoRefresher,
        HotReader::SwrGetNoRefresher,
        HotReader::QuickCache,
        HotReader::DashMap,
        HotReader::Moka,
    ];

    fn name(self) -> &'static str {
        match self {
            HotReader::FrozenBorrow => "frozen_borrow",
            HotReader::FrozenClone => "frozen_clone",
            HotReader::SwrGetWith => "swr_get_with",
            HotReader::SwrGet => "swr_get",
            HotReader::SwrGetWithNoRefresher => "swr_get_with_no_refresher",
            HotReader::SwrGetNoRefresher => "swr_get_no_refresher",
            HotReader::QuickCache => "quick_cache_get",
            HotReader::DashMap => "dashmap_get",
            HotReader::Moka => "moka_get",
        }
    }
}

/// `PROMPTS` prompts of `PROMPT_BYTES` each, in every reader's store; each
/// store holds its own `Arc`s, so no two share a reference count.
struct HotPrompts {
    keys: Vec<String>,
    frozen: HashMap<String, Arc<str>, DefaultBuildHasher>,
    swr: Cache<String, Arc<str>>,
    swr_no_refresher: Cache<String, Arc<str>>,
    quick: quick_cache::sync::Cache<String, Arc<str>>,
    dashmap: dashmap::DashMap<String, Arc<str>, DefaultBuildHasher>,
    moka: moka::sync::Cache<String, Arc<str>>,
}

impl HotPrompts {
    fn new(runtime: &tokio::runtime::Runtime) -> Self {
        let keys: Vec<String> = (0..PROMPTS).map(|i| format!("prompt-{i:05}")).collect();
        let texts: Vec<String> = keys
            .iter()
            .map(|key| {
                let mut text = format!("You are {key}. ");
                text.extend(std::iter::repeat_n('.', PROMPT_BYTES - text.len()));
                text
            })
            .collect();
        let value = |i: usize| Arc::<str>::from(texts[i].as_str());
        let prompts = HotPrompts {
            frozen: (0..PROMPTS).map(|i| (keys[i].clone(), value(i))).collect(),
            swr: swr(PROMPTS, runtime),
            swr_no_refresher: swr_not_started(PROMPTS, runtime),
            quick: quick_cache::sync::Cache::new(QUICK_CACHE_PROMPTS_CAPACITY),
            dashmap: floor(PROMPTS),
            moka: moka::sync::Cache::new(PROMPTS as u64),
            keys,
        };
        for (i, key) in prompts.keys.iter().enumerate() {
            prompts.swr.insert(key.clone(), value(i));
            prompts.swr_no_refresher.insert(key.clone(), value(i));
            prompts.quick.insert(key.clone(), value(i));
            prompts.dashmap.insert(key.clone(), value(i));
            prompts.moka.insert(key.clone(), value(i));
        }
        prompts.moka.run_pending_tasks();
        let all_held = |name: &str, held: &dyn Fn(&String) -> bool| {
            let missing = prompts.keys.iter().filter(|key| !held(key)).count();
            assert_eq!(
                missing, 0,
                "hot_prompts: {name} lacks {missing} of the prompts"
            );
        };
        all_held("swr-cache", &|key| prompts.swr.contains_key(key));
        all_held("swr-cache (no refresher)", &|key| {
            prompts.swr_no_refresher.contains_key(key)
        });
        all_held("quick_cache", &|key| prompts.quick.contains_key(key));
        all_held("moka", &|key| prompts.moka.contains_key(key));
        prompts
    }

    /// `iters` reads by `reader`, over `threads` threads.
    fn run(&self, reader: HotReader, draws: &[Vec<usize>], threads: usize, iters: u64) -> Duration {
        let keys = &self.keys[..];
        match reader {
            HotReader::FrozenBorrow => reads_run(keys, draws, threads, iters, |key| {
                self.frozen.get(key).map(|v| v.len())
            }),
            HotReader::FrozenClone => reads_run(keys, draws, threads, iters, |key| {
                self.frozen.get(key).cloned()
            }),
            HotReader::SwrGetWith => reads_run(keys, draws, threads, iters, |key| {
                self.swr.get_with(key, |v: &Arc<str>| v.len())
            }),
            HotReader::SwrGet => get_hit_run(&self.swr, keys, draws, threads, iters),
            HotReader::SwrGetWithNoRefresher => reads_run(keys, draws, threads, iters, |key| {
                self.swr_no_refresher.get_with(key, |v: &Arc<str>| v.len())
            }),
            HotReader::SwrGetNoRefresher => {
                get_hit_run(&self.swr_no_refresher, keys, draws, threads, iters)
            }
            HotReader::QuickCache => get_hit_run(&self.quick, keys, draws, threads, iters),
            HotReader::DashMap => get_hit_run(&self.dashmap, keys, draws, threads, iters),
            HotReader::Moka => get_hit_run(&self.moka, keys, draws, threads, iters),
        }
    }
}

/// Zipf(1.0) draws over the prompts, one list a thread.
fn hot_prompt_draws(threads: usize) -> Vec<Vec<usize>> {
    (0..threads)
        .map(|t| draws(PROMPTS, true, 300 + t as u64))
        .collect()
}

fn hot_prompts(c: &mut Criterion, runtime: &tokio::runtime::Runtime) {
    let prompts = HotPrompts::new(runtime);
    let mut group = c.benchmark_group("hot_prompts");
    group.throughput(Throughput::Elements(1));
    for threads in thread_counts() {
        let draws = hot_prompt_draws(threads);
        for reader in HotReader::ALL {
            group.bench_function(BenchmarkId::new(reader.name(), threads), |b| {
                b.iter_custom(|iters| prompts.run(reader, &draws, threads, iters))
            });
        }
    }
    group.finish();
}

/// Rounds of the paired comparison; odd, so the median is one round's ratio.
const PAIRED_ROUNDS: usize = 21;
/// Operations per run in the paired comparison: tens of milliseconds a run.
const PAIRED_OPS: u64 = 1 << 19;

/// Whether criterion runs in its test mode (`cargo test --benches`, or
/// `cargo bench -- --test`), as criterion decides it: every benchmark runs
/// once, and the paired comparison runs a few short rounds, a check that it
/// runs rather than a measurement.
static TEST_MODE: LazyLock<bool> = LazyLock::new(|| {
    let args: Vec<String> = std::env::args().skip(1).collect();
    args.iter().any(|arg| arg == "--test") || !args.iter().any(|arg| arg == "--bench")
});

/// `PAIRED_ROUNDS`, or 3 in test mode.
fn paired_rounds() -> usize {
    if *TEST_MODE { 3 } else { PAIRED_ROUNDS }
}

/// `PAIRED_OPS`, or 1,024 in test mode.
fn paired_ops() -> u64 {
    if *TEST_MODE { 1 << 10 } else { PAIRED_OPS }
}

/// The quartiles of `swr / quick_cache` and `swr / floor` throughput ratios
/// over rounds in which the three caches run back to back.
struct PairedRatios {
    versus_quick_cache: [f64; 3],
    versus_floor: [f64; 3],
}

/// Runs swr-cache, quick_cache and the floor in turn, `paired_rounds()`
/// times, rotating which goes first, and takes each round's throughput
/// ratios. Two runs a few milliseconds apart share most of what a noisy
/// neighbour does to the machine, so these ratios move far less between
/// invocations than criterion's medians, measured minutes apart, do.
fn paired(
    swr: &dyn Fn() -> Duration,
    quick: &dyn Fn() -> Duration,
    floor: &dyn Fn() -> Duration,
) -> PairedRatios {
    let contenders = [swr, quick, floor];
    let rounds = interleaved_rounds(contenders.len(), |which| contenders[which]());
    // Throughput ratio: the same operations, so the inverse of the times.
    let ratio = |of: usize| quartiles(rounds.iter().map(|s| s[of] / s[0]).collect());
    PairedRatios {
        versus_quick_cache: ratio(1),
        versus_floor: ratio(2),
    }
}

/// Runs `run(0)` to `run(contenders - 1)` in turn, `paired_rounds()` times,
/// rotating which goes first; returns each round's seconds, by contender.
fn interleaved_rounds(contenders: usize, run: impl Fn(usize) -> Duration) -> Vec<Vec<f64>> {
    (0..paired_rounds())
        .map(|round| {
            let mut seconds = vec![0.0; contenders];
            for turn in 0..contenders {
                let which = (round + turn) % contenders;
                seconds[which] = run(which).as_secs_f64();
            }
            seconds
        })
        .collect()
}

/// The first quartile, median and third quartile of `values`.
fn quartiles(mut values: Vec<f64>) -> [f64; 3] {
    values.sort_by(f64::total_cmp);
    let at = |q: usize| values[(values.len() - 1) * q / 4];
    [at(1), at(2), at(3)]
}

/// The paired comparison of every workload whose name contains `filter`.
fn paired_ratios(
    runtime: &tokio::runtime::Runtime,
    u64_keys: &[u64],
    string_keys: &[String],
    filter: &str,
) -> Vec<(String, usize, PairedRatios)> {
    let mut results = Vec::new();
    for threads in thread_counts() {
        for (distribution, zipf) in [("zipf", true), ("uniform", false)] {
            let draws: Vec<Vec<usize>> = (0..threads)
                .map(|t| draws(GET_KEYS, zipf, t as u64))
                .collect();
            let group = format!("get_hit/u64/{distribution}");
            if group.contains(filter) {
                results.push((
                    group,
                    threads,
                    paired_get_hit(runtime, u64_keys, &draws, threads),
                ));
            }
            let group = format!("get_hit/string/{distribution}");
            if group.contains(filter) {
                results.push((
                    group,
                    threads,
                    paired_get_hit(runtime, string_keys, &draws, threads),
                ));
            }
        }
        let group = "mixed_95_get_5_insert/u64/zipf";
        if group.contains(filter) {
            let draws: Vec<Vec<usize>> = (0..threads)
                .map(|t| draws(CAPACITY * 10, true, 100 + t as u64))
                .collect();
            let swr = swr::<u64, u64>(CAPACITY, runtime);
            let quick = quick_cache::sync::Cache::<u64, u64>::new(CAPACITY);
            let floor = floor::<u64, u64>(CAPACITY);
            for key in 0..(CAPACITY * 10) as u64 {
                swr.insert(key, key);
                quick.insert(key, key);
                BenchCache::insert(&floor, key, key);
            }
            let ratios = paired(
                &|| mixed_run(&swr, &draws, threads, paired_ops()),
                &|| mixed_run(&quick, &draws, threads, paired_ops()),
                &|| mixed_run(&floor, &draws, threads, paired_ops()),
            );
            results.push((group.to_string(), threads, ratios));
        }
        let group = "get_or_insert/u64/zipf";
        if group.contains(filter) {
            let draws: Vec<Vec<usize>> = (0..threads)
                .map(|t| draws(CAPACITY * 10, true, 200 + t as u64))
                .collect();
            let swr = swr::<u64, u64>(CAPACITY, runtime);
            let quick = quick_cache::sync::Cache::<u64, u64>::new(CAPACITY);
            let floor = floor::<u64, u64>(CAPACITY);
            let ratios = paired(
                &|| get_or_insert_run(&swr, &draws, threads, paired_ops()),
                &|| get_or_insert_run(&quick, &draws, threads, paired_ops()),
                &|| get_or_insert_run(&floor, &draws, threads, paired_ops()),
            );
            results.push((group.to_string(), threads, ratios));
        }
        let group = "churn_insert_new/u64";
        if group.contains(filter) {
            let swr = swr::<u64, u64>(CAPACITY, runtime);
            let quick = quick_cache::sync::Cache::<u64, u64>::new(CAPACITY);
            let floor = floor::<u64, u64>(CAPACITY);
            let (swr_next, quick_next, floor_next) = (
                fill_for_churn(&swr),
                fill_for_churn(&quick),
                fill_for_churn(&floor),
            );
            let ratios = paired(
                &|| churn_run(&swr, &swr_next, threads, paired_ops()),
                &|| churn_run(&quick, &quick_next, threads, paired_ops()),
                &|| churn_run(&floor, &floor_next, threads, paired_ops()),
            );
            results.push((group.to_string(), threads, ratios));
        }
    }
    results
}

fn paired_get_hit<K>(
    runtime: &tokio::runtime::Runtime,
    keys: &[K],
    draws: &[Vec<usize>],
    threads: usize,
) -> PairedRatios
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
{
    let swr = swr::<K, u64>(GET_KEYS * 2, runtime);
    let quick = quick_cache::sync::Cache::<K, u64>::new(GET_KEYS * 2);
    let floor = floor::<K, u64>(GET_KEYS * 2);
    for (i, key) in keys.iter().enumerate() {
        swr.insert(key.clone(), i as u64);
        quick.insert(key.clone(), i as u64);
        BenchCache::insert(&floor, key.clone(), i as u64);
    }
    paired(
        &|| get_hit_run(&swr, keys, draws, threads, paired_ops()),
        &|| get_hit_run(&quick, keys, draws, threads, paired_ops()),
        &|| get_hit_run(&floor, keys, draws, threads, paired_ops()),
    )
}

fn print_paired(results: &[(String, usize, PairedRatios)]) {
    if results.is_empty() {
        return;
    }
    println!(
        "\n## Paired ratios (throughput of swr-cache over the peer's; median and quartiles of {} interleaved rounds)\n",
        paired_rounds()
    );
    println!("| workload | threads | swr / quick_cache | swr / floor |");
    println!("|---|---|---|---|");
    for (group, threads, ratios) in results {
        println!(
            "| {group} | {threads} | {} | {} |",
            ratio_cell(ratios.versus_quick_cache),
            ratio_cell(ratios.versus_floor)
        );
    }
}

/// A ratio's median, then its quartiles in parentheses.
fn ratio_cell([q1, median, q3]: [f64; 3]) -> String {
    format!("{median:.2} ({q1:.2}–{q3:.2})")
}

/// The paired hot-prompts rounds at one thread count.
struct HotPromptsRounds {
    threads: usize,
    /// Median reads per second of all threads, by reader (`HotReader::ALL`).
    reads_per_second: Vec<f64>,
    /// The quartiles of the per-round ratios of `HOT_RATIOS`, with
    /// swr-cache's refresher running and not started.
    ratios: Vec<[[f64; 3]; 2]>,
}

/// The throughput ratios the hot-prompts rounds print: a swr-cache reader
/// (its refresher running; not started) over a peer.
const HOT_RATIOS: [(&str, [HotReader; 2], HotReader); 3] = [
    (
        "swr get_with / quick_cache get",
        [HotReader::SwrGetWith, HotReader::SwrGetWithNoRefresher],
        HotReader::QuickCache,
    ),
    (
        "swr get_with / frozen_borrow",
        [HotReader::SwrGetWith, HotReader::SwrGetWithNoRefresher],
        HotReader::FrozenBorrow,
    ),
    (
        "swr get / quick_cache get",
        [HotReader::SwrGet, HotReader::SwrGetNoRefresher],
        HotReader::QuickCache,
    ),
];

/// Every hot-prompts reader in interleaved rounds, at each thread count.
fn paired_hot_prompts(runtime: &tokio::runtime::Runtime) -> Vec<HotPromptsRounds> {
    let prompts = HotPrompts::new(runtime);
    // Eight times the other workloads' rounds: a hot-prompt read is a few
    // nanoseconds, and a round of a few milliseconds on 2 shared cores
    // measures the scheduler more than the reads.
    let ops = 8 * paired_ops();
    thread_counts()
        .into_iter()
        .map(|threads| {
            let draws = hot_prompt_draws(threads);
            let rounds = interleaved_rounds(HotReader::ALL.len(), |which| {
                prompts.run(HotReader::ALL[which], &draws, threads, ops)
            });
            let median = |values: Vec<f64>| quartiles(values)[1];
            let reads_per_second = (0..HotReader::ALL.len())
                .map(|which| median(rounds.iter().map(|s| ops as f64 / s[which]).collect()))
                .collect();
            // The same reads, so the inverse of the times.
            let ratio = |swr: HotReader, peer: HotReader| {
                quartiles(
                    rounds
                        .iter()
                        .map(|s| s[peer as usize] / s[swr as usize])
                        .collect(),
                )
            };
            let ratios = HOT_RATIOS
                .iter()
                .map(|&(_, swr, peer)| swr.map(|swr| ratio(swr, peer)))
                .collect();
            HotPromptsRounds {
                threads,
                reads_per_second,
                ratios,
            }
        })
        .collect()
}

/// Millions of reads per second of every hot-prompts reader at each thread
/// count, and each one's scaling: its reads per second over its own at the
/// fewest threads measured (1 by default).
fn print_hot_prompts_reads(rows: &[(usize, Vec<Option<f64>>)]) {
    let Some((base_threads, base)) = rows.iter().min_by_key(|(threads, _)| *threads) else {
        return;
    };
    let threads_word = if *base_threads == 1 {
        "thread"
    } else {
        "threads"
    };
    println!("| threads | reader | M reads/s | ÷ {base_threads} {threads_word} |");
    println!("|---|---|---|---|");
    for (threads, reads) in rows {
        for (which, reader) in HotReader::ALL.iter().enumerate() {
            let (reads, base) = (reads[which], base[which]);
            println!(
                "| {threads} | {} | {} | {} |",
                reader.name(),
                reads.map_or("–".to_string(), |r| format!("{:.1}", r / 1e6)),
                reads
                    .zip(base)
                    .map_or("–".to_string(), |(r, b)| format!("{:.2}", r / b)),
            );
        }
    }
}

fn print_paired_hot_prompts(results: &[HotPromptsRounds]) {
    println!(
        "\n## Hot prompts, paired (median of {} interleaved rounds of every reader)\n",
        paired_rounds()
    );
    let rows: Vec<(usize, Vec<Option<f64>>)> = results
        .iter()
        .map(|r| {
            (
                r.threads,
                r.reads_per_second.iter().copied().map(Some).collect(),
            )
        })
        .collect();
    print_hot_prompts_reads(&rows);
    println!("\nThroughput ratios, median and quartiles of the per-round ratios:\n");
    println!("| threads | ratio | swr-cache's refresher running | not started |");
    println!("|---|---|---|---|");
    for result in results {
        for ((name, _, _), [running, not_started]) in HOT_RATIOS.iter().zip(&result.ratios) {
            println!(
                "| {} | {name} | {} | {} |",
                result.threads,
                ratio_cell(*running),
                ratio_cell(*not_started)
            );
        }
    }
}

/// The hot-prompts readers' criterion medians, as the paired rounds print them.
fn print_hot_prompts_summary() {
    println!("\n## Hot prompts (criterion medians)\n");
    let rows: Vec<(usize, Vec<Option<f64>>)> = thread_counts()
        .into_iter()
        .map(|threads| {
            let reads = HotReader::ALL
                .iter()
                .map(|reader| median_ns("hot_prompts", reader.name(), threads).map(|ns| 1e9 / ns))
                .collect();
            (threads, reads)
        })
        .collect();
    print_hot_prompts_reads(&rows);
}

/// Where criterion writes its estimates: `criterion/` in the target
/// directory (cargo's scratch directory for benches is `<target>/tmp`),
/// set explicitly, as the bench runs in its own crate's directory.
fn criterion_dir() -> PathBuf {
    if let Some(home) = std::env::var_os("CRITERION_HOME") {
        return PathBuf::from(home);
    }
    Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .map_or_else(|| PathBuf::from("target"), Path::to_path_buf)
        .join("criterion")
}

/// Median nanoseconds per operation (all threads together), from criterion's
/// estimates of the latest run.
fn median_ns(group: &str, cache: &str, threads: usize) -> Option<f64> {
    let path = criterion_dir()
        .join(group.replace('/', "_"))
        .join(cache)
        .join(threads.to_string())
        .join("new/estimates.json");
    let json: serde_json::Value = serde_json::from_slice(&std::fs::read(path).ok()?).ok()?;
    json["median"]["point_estimate"].as_f64()
}

fn print_summary(groups: &[String]) {
    println!("\n## Throughput (million operations per second, all threads; median)\n");
    println!("Read from {}.\n", criterion_dir().display());
    println!(
        "| workload | threads | swr-cache | quick_cache | moka | mini-moka | dashmap (floor) | swr / quick_cache | swr / floor |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    for group in groups {
        for threads in thread_counts() {
            let mops: Vec<Option<f64>> = CACHES
                .iter()
                .map(|cache| median_ns(group, cache, threads).map(|ns| 1e3 / ns))
                .collect();
            let cell = |m: Option<f64>| m.map_or("–".to_string(), |m| format!("{m:.1}"));
            let ratio = |a: Option<f64>, b: Option<f64>| match (a, b) {
                (Some(a), Some(b)) => format!("{:.2}", a / b),
                _ => "–".to_string(),
            };
            println!(
                "| {group} | {threads} | {} | {} | {} | {} | {} | {} | {} |",
                cell(mops[0]),
                cell(mops[1]),
                cell(mops[2]),
                cell(mops[3]),
                cell(mops[4]),
                ratio(mops[0], mops[1]),
                ratio(mops[0], mops[4]),
            );
        }
    }
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let paired_only = std::env::var_os("SWR_BENCH_PAIRED_ONLY").is_some_and(|v| v == "1");
    let mut c = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(2))
        .sample_size(15)
        .output_directory(&criterion_dir())
        .configure_from_args();
    let u64_keys: Vec<u64> = (0..GET_KEYS as u64).collect();
    // Prompt names of 16 bytes: past the inline size of small-string types,
    // so a clone of the key would allocate.
    let string_keys: Vec<String> = (0..GET_KEYS).map(|i| format!("prompt-{i:09}")).collect();
    if !paired_only {
        get_hit(&mut c, &runtime, "u64", &u64_keys);
        get_hit(&mut c, &runtime, "string", &string_keys);
        mixed(&mut c, &runtime);
        get_or_insert(&mut c, &runtime);
        churn(&mut c, &runtime);
        hot_prompts(&mut c, &runtime);
        c.final_summary();

        let mut groups = Vec::new();
        for key_type in ["u64", "string"] {
            for distribution in ["zipf", "uniform"] {
                groups.push(format!("get_hit/{key_type}/{distribution}"));
            }
        }
        groups.push("mixed_95_get_5_insert/u64/zipf".to_string());
        groups.push("get_or_insert/u64/zipf".to_string());
        groups.push("churn_insert_new/u64".to_string());
        // Test mode writes no estimates: these would be an earlier run's.
        if !*TEST_MODE {
            print_summary(&groups);
            print_hot_prompts_summary();
        }
    }

    // criterion's filter, if one was given: the first argument not a flag.
    let filter = std::env::args()
        .skip(1)
        .find(|arg| !arg.starts_with('-'))
        .unwrap_or_default();
    print_paired(&paired_ratios(&runtime, &u64_keys, &string_keys, &filter));
    if "hot_prompts".contains(&filter) {
        print_paired_hot_prompts(&paired_hot_prompts(&runtime));
    }
}
