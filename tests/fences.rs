//! Fences (DESIGN.md S7): a removal of a key (`invalidate`, `remove`,
//! `invalidate_if`, `retain`, `clear`) fences every fetch of it in flight.
//! A fetch that began before never installs, a caller who asks after never
//! joins it nor gets its value, and the background refresher never brings a
//! removed key back.
//!
//! The named cases run on tokio's paused clock with a gated upstream: each
//! fetch records the source's version when it is called and then waits
//! for the test to open the gate, so every interleaving here is exact. The
//! stress at the end runs real threads under a watchdog.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use swr_cache::Cache;
use tokio::sync::Semaphore;
use tokio::time::sleep;

#[path = "support/watchdog.rs"]
mod watchdog;
use watchdog::within;

const TTL: Duration = Duration::from_secs(10);
const INTERVAL: Duration = Duration::from_secs(1);

/// An upstream whose fetches wait at a gate the test opens.
#[derive(Clone)]
struct Gated {
    /// The keys fetched, in call order.
    called: Arc<Mutex<Vec<String>>>,
    /// The source's version, read when a fetch is called.
    version: Arc<AtomicUsize>,
    gate: Arc<Semaphore>,
}

impl Gated {
    fn new() -> Self {
        Self {
            called: Arc::default(),
            version: Arc::default(),
            gate: Arc::new(Semaphore::new(0)),
        }
    }

    fn calls(&self) -> usize {
        self.called.lock().unwrap().len()
    }

    /// Lets `n` fetches through the gate.
    fn open(&self, n: usize) {
        self.gate.add_permits(n);
    }

    /// The source changes: fetches called from now on answer version `v`.
    fn set_version(&self, v: usize) {
        self.version.store(v, Ordering::SeqCst);
    }

    async fn fetch(&self, key: String) -> Result<String, std::io::Error> {
        self.called.lock().unwrap().push(key.clone());
        let version = self.version.load(Ordering::SeqCst);
        self.gate.acquire().await.unwrap().forget();
        Ok(format!("{key}@v{version}"))
    }
}

fn gated_cache(upstream: &Gated) -> Cache<String, String> {
    let upstream = upstream.clone();
    Cache::builder()
        .ttl(TTL)
        .refresh_interval(INTERVAL)
        .refresh_on_read(false)
        .fetcher(move |key: String| {
            let upstream = upstream.clone();
            async move { upstream.fetch(key).await }
        })
        .build()
        .unwrap()
}

/// Lets every task run until all wait (at the gate or on a timer).
async fn settle() {
    sleep(Duration::from_millis(1)).await;
}

/// Case (a) and (b): a `get_or_fetch` of an absent key is in flight; the
/// key is inserted, then `removal` takes it out. The fetch that began before
/// must not be cached, and a `get_or_fetch` after the removal must fetch
/// anew rather than join it.
async fn a_load_across(removal: impl FnOnce(&Cache<String, String>)) {
    let upstream = Gated::new();
    let cache = gated_cache(&upstream);
    let first = tokio::spawn({
        let cache = cache.clone();
        async move { cache.get_or_fetch("k").await }
    });
    settle().await;
    assert_eq!(upstream.calls(), 1);

    cache.insert("k".into(), "inserted".into());
    removal(&cache);
    assert!(!cache.contains_key("k"));
    upstream.set_version(1);
    let second = tokio::spawn({
        let cache = cache.clone();
        async move { cache.get_or_fetch("k").await }
    });
    settle().await;
    assert_eq!(
        upstream.calls(),
        2,
        "a caller after the removal starts its own fetch"
    );

    upstream.open(2);
    assert!(first.await.unwrap().is_ok());
    assert_eq!(second.await.unwrap().unwrap(), "k@v1");
    assert_eq!(cache.get("k").as_deref(), Some("k@v1"));
    let m = cache.metrics();
    assert_eq!((m.loads, m.discarded), (1, 1), "{m}");
    cache.validate();
}

#[tokio::test(start_paused = true)]
async fn a_load_in_flight_across_an_invalidate_is_neither_cached_nor_joined() {
    a_load_across(|cache| assert!(cache.invalidate("k"))).await;
}

#[tokio::test(start_paused = true)]
async fn a_load_in_flight_across_a_remove_is_neither_cached_nor_joined() {
    a_load_across(|cache| assert_eq!(cache.remove("k").as_deref(), Some("inserted"))).await;
}

#[tokio::test(start_paused = true)]
async fn a_load_in_flight_across_an_invalidate_if_is_neither_cached_nor_joined() {
    a_load_across(|cache| assert_eq!(cache.invalidate_if(|k, _| k == "k"), 1)).await;
}

#[tokio::test(start_paused = true)]
async fn a_load_in_flight_across_a_clear_is_neither_cached_nor_joined() {
    a_load_across(Cache::clear).await;
}

/// Case (b): the key was never cached, so `invalidate` finds nothing and
/// returns false; the fetch under way must still not be cached.
#[tokio::test(start_paused = true)]
async fn a_load_in_flight_across_an_invalidate_of_the_absent_key_is_not_cached() {
    let upstream = Gated::new();
    let cache = gated_cache(&upstream);
    let first = tokio::spawn({
        let cache = cache.clone();
        async move { cache.get_or_fetch("k").await }
    });
    settle().await;

    assert!(!cache.invalidate("k"));
    upstream.set_version(1);
    upstream.open(1);
    assert_eq!(
        first.await.unwrap().unwrap(),
        "k@v0",
        "its caller asked before the invalidate"
    );
    assert!(!cache.contains_key("k"), "not cached: it began before");

    upstream.open(1);
    assert_eq!(cache.get_or_fetch("k").await.unwrap(), "k@v1");
    assert_eq!(upstream.calls(), 2);
}

/// A forced `refresh` of an uncached key loads it, and is fenced the same.
#[tokio::test(start_paused = true)]
async fn a_forced_refresh_in_flight_across_an_invalidate_is_not_cached() {
    let upstream = Gated::new();
    let cache = gated_cache(&upstream);
    let first = tokio::spawn({
        let cache = cache.clone();
        async move { cache.refresh("k").await }
    });
    settle().await;

    assert!(!cache.invalidate("k"));
    upstream.open(1);
    assert!(first.await.unwrap().is_ok());
    assert!(!cache.contains_key("k"));
    assert_eq!(cache.metrics().discarded, 1);
}

/// Case (c): the refresher queued two stale keys and fetches one at a time;
/// the one still waiting is invalidated. It is not fetched, and stays gone.
#[tokio::test(start_paused = true)]
async fn a_key_invalidated_while_queued_for_refresh_stays_gone() {
    let upstream = Gated::new();
    let upstream_for_fetch = upstream.clone();
    let cache: Cache<String, String> = Cache::builder()
        .ttl(TTL)
        .refresh_interval(INTERVAL)
        .refresh_on_read(false)
        .max_concurrent_refreshes(1)
        .fetcher(move |key: String| {
            let upstream = upstream_for_fetch.clone();
            async move { upstream.fetch(key).await }
        })
        .build()
        .unwrap();
    cache.insert("a".into(), "old".into());
    cache.insert("b".into(), "old".into());
    cache.start().unwrap();
    sleep(TTL + INTERVAL + Duration::from_millis(1)).await;
    let in_flight = upstream.called.lock().unwrap().clone();
    assert_eq!(in_flight.len(), 1, "one refresh at a time");
    let waiting = if in_flight[0] == "a" { "b" } else { "a" };

    assert!(cache.invalidate(waiting));
    upstream.open(10);
    sleep(INTERVAL * 3).await;

    assert_eq!(upstream.calls(), 1, "the invalidated key was not fetched");
    assert!(!cache.contains_key(waiting));
    assert_eq!(
        cache.get(in_flight[0].as_str()).as_deref(),
        Some(format!("{}@v0", in_flight[0]).as_str())
    );
}

/// A key whose `Clone` can run a removal of itself, once, when armed: a
/// way to put an `invalidate` at an exact point of the refresher's work
/// (it clones a queued key just before starting its flight), as another
/// thread could. Equality and hashing are by name alone.
#[derive(Debug)]
struct HookedKey {
    name: &'static str,
    hook: Option<Arc<Hook>>,
}

#[derive(Debug, Default)]
struct Hook {
    /// The key whose next clone invalidates it.
    armed: Mutex<Option<&'static str>>,
    cache: std::sync::OnceLock<Cache<HookedKey, String>>,
}

impl HookedKey {
    fn plain(name: &'static str) -> Self {
        Self { name, hook: None }
    }
}

impl Clone for HookedKey {
    fn clone(&self) -> Self {
        if let Some(hook) = &self.hook {
            let fire = {
                let mut armed = hook.armed.lock().unwrap();
                (*armed == Some(self.name)).then(|| armed.take())
            };
            if fire.is_some() {
                assert!(
                    hook.cache
                        .get()
                        .unwrap()
                        .invalidate(&Self::plain(self.name))
                );
            }
        }
        Self {
            name: self.name,
            hook: self.hook.clone(),
        }
    }
}

impl PartialEq for HookedKey {
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name
    }
}

impl Eq for HookedKey {}

impl std::hash::Hash for HookedKey {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.name.hash(state);
    }
}

/// Case (c), the measured race: a key the refresher has queued is
/// invalidated after the refresher last saw it and before its flight reads
/// what it starts from. The refresher must not fetch it as a new key and
/// insert it.
#[tokio::test(start_paused = true)]
async fn a_key_invalidated_as_its_refresh_starts_is_not_loaded() {
    let upstream = Gated::new();
    let upstream_for_fetch = upstream.clone();
    let hook = Arc::new(Hook::default());
    let cache: Cache<HookedKey, String> = Cache::builder()
        .ttl(TTL)
        .refresh_interval(INTERVAL)
        .refresh_on_read(false)
        .max_concurrent_refreshes(1)
        .fetcher(move |key: HookedKey| {
            let upstream = upstream_for_fetch.clone();
            async move { upstream.fetch(key.name.to_owned()).await }
        })
        .build()
        .unwrap();
    hook.cache.set(cache.clone()).unwrap();
    for name in ["a", "b"] {
        let key = HookedKey {
            name,
            hook: Some(Arc::clone(&hook)),
        };
        cache.insert(key, "old".into());
    }
    cache.start().unwrap();
    sleep(TTL + INTERVAL + Duration::from_millis(1)).await;
    let first = upstream.called.lock().unwrap()[0].clone();
    let waiting = if first == "a" { "b" } else { "a" };

    *hook.armed.lock().unwrap() = Some(waiting);
    upstream.open(10);
    sleep(INTERVAL * 3).await;

    assert!(hook.armed.lock().unwrap().is_none(), "the hook fired");
    assert!(
        !cache.contains_key(&HookedKey::plain(waiting)),
        "not loaded back"
    );
    assert_eq!(upstream.calls(), 1);
}

/// Case (c): the refresher finds a stale key whose load is still in flight
/// (a `get_or_fetch` began before the key was inserted) and joins that load;
/// the key is then invalidated. Nothing the flight fetched is cached.
#[tokio::test(start_paused = true)]
async fn a_refresh_joined_to_a_load_installs_nothing_after_an_invalidate() {
    let upstream = Gated::new();
    let cache = gated_cache(&upstream);
    let load = tokio::spawn({
        let cache = cache.clone();
        async move { cache.get_or_fetch("k").await }
    });
    settle().await;
    cache.insert("k".into(), "inserted".into());
    cache.start().unwrap();
    sleep(TTL + INTERVAL + Duration::from_millis(1)).await;
    assert_eq!(
        cache.is_stale("k"),
        Some(true),
        "stale, and its refresh joined the load"
    );
    assert_eq!(upstream.calls(), 1);

    assert!(cache.invalidate("k"));
    upstream.open(10);
    assert!(load.await.unwrap().is_ok());
    sleep(INTERVAL * 3).await;

    assert!(!cache.contains_key("k"));
    assert_eq!(upstream.calls(), 1);
    let m = cache.metrics();
    assert_eq!((m.loads, m.refreshes, m.discarded), (0, 0, 1), "{m}");
}

const KEYS: u64 = 32;
/// Marks a value written by `insert` rather than fetched.
const INSERTED: u64 = 1 << 63;

/// Threads invalidate (and now and then clear) while tasks load, force
/// refreshes and read, and the refresher refreshes every key a millisecond
/// after it was written. Each key has an epoch, bumped just before each
/// removal of the key; a fetch answers the epoch it was called in. Once a
/// removal has returned, a value from an epoch before it is a resurrection,
/// wherever it is seen: in `get`, or from a `get_or_fetch` or `refresh`
/// called afterwards.
#[test]
fn no_removed_key_comes_back_under_concurrent_fetches() {
    let (resurrected, metrics) = within("fence stress", || {
        let epochs: Arc<Vec<AtomicU64>> = Arc::new((0..KEYS).map(|_| AtomicU64::new(0)).collect());
        // The epoch of each key's last completed removal.
        let floors: Arc<Vec<AtomicU64>> = Arc::new((0..KEYS).map(|_| AtomicU64::new(0)).collect());
        let fetch_epochs = Arc::clone(&epochs);
        let cache: Cache<u64, u64> = Cache::builder()
            .max_size(1024)
            .ttl(Duration::from_millis(1))
            .refresh_interval(Duration::from_millis(1))
            .fetcher(move |key: u64| {
                let epoch = fetch_epochs[key as usize].load(Ordering::SeqCst);
                async move {
                    // Widen the window between the call and the install.
                    for _ in 0..3 {
                        tokio::task::yield_now().await;
                    }
                    Ok::<_, std::convert::Infallible>(epoch)
                }
            })
            .build()
            .unwrap();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        cache.start_on(runtime.handle()).unwrap();
        let done = Arc::new(AtomicBool::new(false));
        let resurrected = Arc::new(AtomicUsize::new(0));
        let check = {
            let resurrected = Arc::clone(&resurrected);
            move |value: u64, floor: u64| {
                if value & INSERTED == 0 && value < floor {
                    resurrected.fetch_add(1, Ordering::SeqCst);
                }
            }
        };

        let mut fetchers = Vec::new();
        for task in 0..4u64 {
            let (cache, floors, done, check) = (
                cache.clone(),
                Arc::clone(&floors),
                Arc::clone(&done),
                check.clone(),
            );
            fetchers.push(runtime.spawn(async move {
                let mut i = task;
                while !done.load(Ordering::SeqCst) {
                    i = i
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    let key = (i >> 33) % KEYS;
                    let floor = floors[key as usize].load(Ordering::SeqCst);
                    let result = match i >> 60 {
                        0 => cache.refresh(&key).await,
                        1 | 2 => {
                            cache.insert(key, INSERTED | floor);
                            continue;
                        }
                        _ => cache.get_or_fetch(&key).await,
                    };
                    if let Ok(value) = result {
                        check(value, floor);
                    }
                    if let Some(value) = cache.get(&key) {
                        check(value, floor);
                    }
                }
            }));
        }

        let mut i = 0x2545_f491_4f6c_dd1du64;
        for round in 0..20_000u32 {
            i ^= i << 13;
            i ^= i >> 7;
            i ^= i << 17;
            if round % 512 == 511 {
                let bumped: Vec<u64> = epochs
                    .iter()
                    .map(|e| e.fetch_add(1, Ordering::SeqCst) + 1)
                    .collect();
                cache.clear();
                for (floor, epoch) in floors.iter().zip(bumped) {
                    floor.fetch_max(epoch, Ordering::SeqCst);
                }
                cache.validate();
                continue;
            }
            let key = (i % KEYS) as usize;
            let epoch = epochs[key].fetch_add(1, Ordering::SeqCst) + 1;
            cache.invalidate(&(key as u64));
            floors[key].fetch_max(epoch, Ordering::SeqCst);
            for (key, floor) in floors.iter().enumerate() {
                if let Some(value) = cache.get(&(key as u64)) {
                    check(value, floor.load(Ordering::SeqCst));
                }
            }
            if round % 64 == 0 {
                std::thread::yield_now();
            }
        }
        done.store(true, Ordering::SeqCst);
        for task in fetchers {
            runtime.block_on(task).unwrap();
        }
        runtime.block_on(cache.stop());
        cache.validate();
        (resurrected.load(Ordering::SeqCst), cache.metrics())
    });
    assert_eq!(resurrected, 0, "values from before a removal came back");
    assert!(
        metrics.loads > 0 && metrics.refreshes > 0 && metrics.discarded > 0,
        "every path ran: {metrics}"
    );
}
