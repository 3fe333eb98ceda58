//! Fences (`docs/design.md` S7): a removal of a key (`invalidate`, `remove`,
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
use std::time::Instant;

use swr_cache::{Cache, FetchError, Fetched, Fetcher};
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

/// The test keys below are equal by name alone, and (but for
/// `HashHooked`, whose hash runs its hook) hashed by name alone.
macro_rules! by_name {
    (eq: $($key:ty),*) => {$(
        impl PartialEq for $key {
            fn eq(&self, other: &Self) -> bool {
                self.name == other.name
            }
        }
        impl Eq for $key {}
    )*};
    (eq_and_hash: $($key:ty),*) => {
        by_name!(eq: $($key),*);
        $(impl std::hash::Hash for $key {
            fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
                self.name.hash(state);
            }
        })*
    };
}

by_name!(eq_and_hash: HookedKey, Cloned);
by_name!(eq: HashHooked);

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

// ---- Found in review, each failing on the code before its fix. ----

#[derive(Clone)]
struct GatedAnswers {
    calls: Arc<AtomicUsize>,
    version: Arc<AtomicUsize>,
    gate: Arc<Semaphore>,
    unchanged: bool,
}

impl GatedAnswers {
    fn new(unchanged: bool) -> Self {
        Self {
            calls: Arc::default(),
            version: Arc::default(),
            gate: Arc::new(Semaphore::new(0)),
            unchanged,
        }
    }
}

impl<K: Send + Sync + std::fmt::Debug + 'static> Fetcher<K, String> for GatedAnswers {
    type Error = std::io::Error;
    fn fetch(
        &self,
        key: &K,
        current: Option<&String>,
    ) -> impl std::future::Future<Output = Result<Fetched<String>, Self::Error>> + Send {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let version = self.version.load(Ordering::SeqCst);
        let answer = if self.unchanged && current.is_some() {
            Fetched::Unchanged
        } else {
            Fetched::Value(format!("{key:?}@v{version}"))
        };
        let gate = Arc::clone(&self.gate);
        async move {
            gate.acquire().await.unwrap().forget();
            Ok(answer)
        }
    }
}

fn spin_until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::yield_now();
    }
}

/// (Review F1.) A refresh that began before `invalidate_if` installs between the
/// shard copy and the version-checked remove; the entry then counts as
/// "written since the copy" and survives with the pre-removal value.
async fn invalidate_if_across_refresh(unchanged: bool) {
    let upstream = GatedAnswers::new(unchanged);
    let cache: Cache<String, String> = Cache::builder()
        .ttl(Duration::from_secs(60))
        .fetcher_impl(upstream.clone())
        .build()
        .unwrap();
    cache.insert("k".into(), "old".into());
    let refresh = tokio::spawn({
        let cache = cache.clone();
        async move { cache.refresh("k").await }
    });
    spin_until("fetch called", || {
        upstream.calls.load(Ordering::SeqCst) == 1
    });
    // The source changes, then the user drops every entry of the key.
    upstream.version.store(1, Ordering::SeqCst);
    let removed = cache.invalidate_if(|k, _| {
        if k == "k" {
            upstream.gate.add_permits(1);
            // The install lands while the predicate runs (no lock held).
            spin_until("refresh installed", || cache.metrics().refreshes == 1);
        }
        true
    });
    assert_eq!(removed, 1);
    assert_eq!(
        cache.peek("k"),
        None,
        "a fetch from before invalidate_if stayed cached"
    );
    assert!(refresh.await.unwrap().is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalidate_if_removes_an_entry_a_refresh_installed_over_meanwhile() {
    invalidate_if_across_refresh(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalidate_if_removes_an_entry_a_refresh_renewed_meanwhile() {
    invalidate_if_across_refresh(true).await;
}

/// What a hooked key runs when its hook fires.
type Action = Box<dyn FnOnce() + Send>;

/// The hashes to let pass, then the action, for a `HashHooked` key.
type HashHook = Arc<Mutex<Option<(usize, Action)>>>;

/// A key whose `n`th clone after arming runs an action.
#[derive(Debug)]
struct Cloned {
    name: &'static str,
    hook: Option<Arc<CloneHook>>,
}
#[derive(Default)]
struct CloneHook {
    /// (name, clones to skip, action)
    armed: Mutex<Option<(&'static str, usize, Action)>>,
}
impl std::fmt::Debug for CloneHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CloneHook")
    }
}
impl Cloned {
    fn plain(name: &'static str) -> Self {
        Self { name, hook: None }
    }
}
impl Clone for Cloned {
    fn clone(&self) -> Self {
        if let Some(hook) = &self.hook {
            let action = {
                let mut armed = hook.armed.lock().unwrap();
                match armed.as_mut() {
                    Some((name, skip, _)) if *name == self.name => {
                        if *skip == 0 {
                            armed.take().map(|(_, _, a)| a)
                        } else {
                            *skip -= 1;
                            None
                        }
                    }
                    _ => None,
                }
            };
            if let Some(action) = action {
                action();
            }
        }
        Self {
            name: self.name,
            hook: self.hook.clone(),
        }
    }
}

/// (Review F2.) The refresher reads its start (present), then the key is
/// invalidated (here from the key's Clone in `flights.entry(key.clone())`,
/// as another thread could), then its flight enters the map. A
/// `get_or_fetch` after the invalidate returned joins that flight.
async fn refresher_window(unchanged: bool) {
    let upstream = GatedAnswers::new(unchanged);
    let hook = Arc::new(CloneHook::default());
    let cache: Cache<Cloned, String> = Cache::builder()
        .ttl(Duration::from_secs(10))
        .refresh_interval(Duration::from_secs(1))
        .refresh_on_read(false)
        .fetcher_impl(upstream.clone())
        .build()
        .unwrap();
    let key = Cloned {
        name: "k",
        hook: Some(Arc::clone(&hook)),
    };
    cache.insert(key, "old".into());
    let invalidated = Arc::new(std::sync::atomic::AtomicBool::new(false));
    {
        let cache = cache.clone();
        let invalidated = Arc::clone(&invalidated);
        // Skips the refresher's four clones before the flight starts
        // (taking the key as due, its bookkeeping, the fetch's record, the
        // key handed over); fires on the first inside, after the look that
        // the key is held and before the flight enters the map. (Counted
        // against the code: a test of that exact window.)
        *hook.armed.lock().unwrap() = Some((
            "k",
            4,
            Box::new(move || {
                assert!(cache.invalidate(&Cloned::plain("k")));
                invalidated.store(true, Ordering::SeqCst);
            }),
        ));
    }
    cache.start().unwrap();
    tokio::time::sleep(Duration::from_secs(12)).await;
    assert!(invalidated.load(Ordering::SeqCst), "hook fired");
    assert!(!cache.contains_key(&Cloned::plain("k")));
    let calls_before = upstream.calls.load(Ordering::SeqCst);
    // The removal has returned. A caller asks now.
    let after = tokio::spawn({
        let cache = cache.clone();
        async move { cache.get_or_fetch(&Cloned::plain("k")).await }
    });
    tokio::time::sleep(Duration::from_millis(1)).await;
    let calls = upstream.calls.load(Ordering::SeqCst);
    upstream.gate.add_permits(10);
    let got = after.await.unwrap();
    tokio::time::sleep(Duration::from_millis(1)).await;
    let m = cache.metrics();
    assert_eq!(
        calls,
        calls_before + 1,
        "a get_or_fetch after the invalidate joined the refresher's flight"
    );
    assert!(
        got.is_ok() && cache.peek(&Cloned::plain("k")).is_some(),
        "loaded and cached: {got:?}, {m}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_caller_after_an_invalidate_does_not_join_a_refresh_that_looked_before() {
    refresher_window(false).await;
}

#[tokio::test(start_paused = true)]
async fn a_caller_after_an_invalidate_gets_a_value_not_nothing_to_keep() {
    refresher_window(true).await;
}

/// (Review F3.) A panic in user code between the slot insert and the landing guard
/// (here K::clone for FlightLanding.key, in src/fetch/flight.rs) leaves the slot in
/// the map with a dead sender: every later caller gets Cancelled.
#[tokio::test(start_paused = true)]
async fn a_key_clone_panicking_at_flight_start_does_not_wedge_the_key() {
    let upstream = GatedAnswers::new(false);
    upstream.gate.add_permits(100);
    let hook = Arc::new(CloneHook::default());
    let cache: Cache<Cloned, String> = Cache::builder()
        .fetcher_impl(upstream.clone())
        .build()
        .unwrap();
    let key = Cloned {
        name: "k",
        hook: Some(Arc::clone(&hook)),
    };
    // clones: to_owned in get_or_fetch (1), flights.entry (2), landing (3).
    *hook.armed.lock().unwrap() = Some(("k", 2, Box::new(|| panic!("user Clone panics once"))));
    let first = tokio::spawn({
        let cache = cache.clone();
        let key = Cloned {
            name: "k",
            hook: key.hook.clone(),
        };
        async move { cache.get_or_fetch(&key).await }
    })
    .await;
    assert!(first.is_err(), "the panic reached the caller");
    for _ in 0..3 {
        let r = cache.get_or_fetch(&Cloned::plain("k")).await;
        assert!(
            !matches!(r, Err(FetchError::Cancelled)),
            "orphaned flight: Cancelled forever"
        );
    }
}

/// (Review F4.) `clear` drops the flights' keys inside DashMap::retain, under the
/// flights shard's write lock; a K whose Drop uses the cache deadlocks.
#[test]
fn clear_drops_no_key_under_the_flights_lock() {
    #[derive(Debug, Clone)]
    struct DropKey(
        &'static str,
        Option<Arc<std::sync::OnceLock<Cache<DropKey, String>>>>,
    );
    impl PartialEq for DropKey {
        fn eq(&self, o: &Self) -> bool {
            self.0 == o.0
        }
    }
    impl Eq for DropKey {}
    impl std::hash::Hash for DropKey {
        fn hash<H: std::hash::Hasher>(&self, s: &mut H) {
            self.0.hash(s)
        }
    }
    impl Drop for DropKey {
        fn drop(&mut self) {
            if let Some(c) = self.1.as_ref().and_then(|c| c.get()) {
                // e.g. a key handle that tells the cache when it goes away
                c.contains_key(&DropKey("other", None));
                let _ = c.invalidate(&DropKey(self.0, None));
            }
        }
    }
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let upstream = GatedAnswers::new(false);
            let cell = Arc::new(std::sync::OnceLock::new());
            let cache: Cache<DropKey, String> = Cache::builder()
                .fetcher_impl(upstream.clone())
                .build()
                .unwrap();
            let _ = cell.set(cache.clone());
            let task = tokio::spawn({
                let cache = cache.clone();
                let key = DropKey("k", Some(Arc::clone(&cell)));
                async move { cache.get_or_fetch(&key).await }
            });
            tokio::time::sleep(Duration::from_millis(10)).await;
            cache.clear();
            upstream.gate.add_permits(1);
            let _ = task.await;
        });
        let _ = done_tx.send(());
    });
    assert!(
        done_rx.recv_timeout(Duration::from_secs(5)).is_ok(),
        "deadlock in clear()"
    );
}

/// A key whose Hash runs an action on the nth hash after arming.
struct HashHooked {
    name: &'static str,
    hook: Option<HashHook>,
}
impl std::fmt::Debug for HashHooked {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name)
    }
}
impl Clone for HashHooked {
    fn clone(&self) -> Self {
        Self {
            name: self.name,
            hook: None,
        }
    }
}
impl std::hash::Hash for HashHooked {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        if let Some(hook) = &self.hook {
            let action = {
                let mut armed = hook.lock().unwrap();
                match armed.as_mut() {
                    Some((0, _)) => armed.take().map(|(_, a)| a),
                    Some((n, _)) => {
                        *n -= 1;
                        None
                    }
                    None => None,
                }
            };
            if let Some(action) = action {
                action();
            }
        }
        self.name.hash(state);
    }
}

fn poll_once<F: std::future::Future>(f: F) {
    let mut f = std::pin::pin!(f);
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    let _ = f.as_mut().poll(&mut cx);
}

/// (Review F2b.) A `refresh` whose flight enters the map between `invalidate`'s fence
/// and its store removal starts from the entry being removed; a
/// `get_or_fetch` after the invalidate returned joins it.
#[tokio::test(start_paused = true)]
async fn a_flight_joining_between_the_fence_and_the_removal_is_fenced_too() {
    let upstream = GatedAnswers::new(true);
    let cache: Cache<HashHooked, String> = Cache::builder()
        .fetcher_impl(upstream.clone())
        .build()
        .unwrap();
    cache.insert(
        HashHooked {
            name: "k",
            hook: None,
        },
        "old".into(),
    );
    let hook = Arc::new(Mutex::new(None));
    {
        let cache = cache.clone();
        // hash 1: the fence's flights.remove; hash 2: store.remove's locate.
        *hook.lock().unwrap() = Some((
            1,
            Box::new(move || {
                poll_once(cache.refresh(&HashHooked {
                    name: "k",
                    hook: None,
                }))
            }) as Box<dyn FnOnce() + Send>,
        ));
    }
    assert!(cache.invalidate(&HashHooked {
        name: "k",
        hook: Some(hook.clone())
    }));
    assert!(hook.lock().unwrap().is_none(), "hook fired");
    tokio::time::sleep(Duration::from_millis(1)).await;
    let before = upstream.calls.load(Ordering::SeqCst);
    let after = tokio::spawn({
        let cache = cache.clone();
        async move {
            cache
                .get_or_fetch(&HashHooked {
                    name: "k",
                    hook: None,
                })
                .await
        }
    });
    tokio::time::sleep(Duration::from_millis(1)).await;
    let calls = upstream.calls.load(Ordering::SeqCst);
    upstream.gate.add_permits(10);
    let got = after.await.unwrap();
    println!(
        "f2b: calls before {before}, after {calls}; get_or_fetch -> {got:?}; cached {:?}",
        cache.peek(&HashHooked {
            name: "k",
            hook: None
        })
    );
    assert_eq!(
        calls,
        before + 1,
        "joined the flight that started from the removed entry"
    );
}

/// `mark_stale` fences like a removal but keeps the value: a refresh in
/// flight from the value before installs nothing, a caller after it does
/// not join that refresh, the value goes on being served as stale, and
/// the next refresh brings the source's new value.
#[tokio::test(start_paused = true)]
async fn a_refresh_in_flight_across_a_mark_stale_installs_nothing_and_the_next_one_does() {
    let upstream = Gated::new();
    let cache = gated_cache(&upstream);
    cache.insert("k".into(), "old".into());
    let first = tokio::spawn({
        let cache = cache.clone();
        async move { cache.refresh("k").await }
    });
    settle().await;
    assert_eq!(upstream.calls(), 1);

    upstream.set_version(1);
    assert!(cache.mark_stale("k"));
    assert_eq!(cache.get("k").as_deref(), Some("old"), "still served");
    assert_eq!(cache.is_stale("k"), Some(true));
    let second = tokio::spawn({
        let cache = cache.clone();
        async move { cache.refresh("k").await }
    });
    settle().await;
    assert_eq!(upstream.calls(), 2, "a caller after it fetches anew");

    upstream.open(1);
    first.await.unwrap().unwrap();
    assert_eq!(
        cache.get("k").as_deref(),
        Some("old"),
        "the refresh from before installed nothing"
    );
    upstream.open(1);
    assert_eq!(second.await.unwrap().unwrap(), "k@v1");
    assert_eq!(cache.get("k").as_deref(), Some("k@v1"));
    assert_eq!(cache.is_stale("k"), Some(false));
    assert_eq!(cache.metrics().discarded, 1);
    cache.validate();
}

/// A marked value goes to the head of the refresher's line: its next look
/// refreshes it though it is young, and every other entry stays as it is.
#[tokio::test(start_paused = true)]
async fn the_refresher_takes_marked_values_at_its_next_look() {
    let upstream = Gated::new();
    let cache = gated_cache(&upstream);
    for key in ["a", "b", "c"] {
        cache.insert(key.into(), "old".into());
    }
    cache.start().unwrap();
    settle().await;
    upstream.set_version(1);
    assert!(cache.mark_stale("b"));
    assert!(!cache.mark_stale("absent"));
    upstream.open(10);
    sleep(INTERVAL * 2).await;

    assert_eq!(*upstream.called.lock().unwrap(), ["b"]);
    assert_eq!(cache.get("b").as_deref(), Some("b@v1"));
    assert_eq!(cache.get("a").as_deref(), Some("old"));

    cache.mark_all_stale();
    sleep(INTERVAL * 2).await;
    assert_eq!(upstream.calls(), 4, "every entry once more");
    for key in ["a", "b", "c"] {
        assert_eq!(cache.get(key), Some(format!("{key}@v1")));
    }
    cache.validate();
}

/// With no TTL nothing is ever stale: marking invalidates instead.
#[test]
fn mark_stale_without_a_ttl_invalidates() {
    let cache: Cache<u32, u32> = Cache::builder().ttl(None).build().unwrap();
    cache.insert(1, 1);
    cache.insert(2, 2);
    assert!(cache.mark_stale(&1));
    assert_eq!(cache.get(&1), None);
    cache.mark_all_stale();
    assert!(cache.is_empty());
}

/// Found in review: a mark made the value's next version by the install
/// count, which wrapped at 256, so a refresh in flight across 256 marks
/// found its version again and installed the value from before as fresh.
/// Marks and installs now count in 24 bits (see `Version`); this guards
/// against narrowing them again. A mark is not a user's write (the next
/// test).
#[tokio::test(start_paused = true)]
async fn a_refresh_in_flight_across_256_marks_installs_nothing() {
    let upstream = Gated::new();
    let cache = gated_cache(&upstream);
    cache.insert("k".into(), "old".into());
    let first = tokio::spawn({
        let cache = cache.clone();
        async move { cache.refresh("k").await }
    });
    settle().await;
    upstream.set_version(1);
    for _ in 0..256 {
        assert!(cache.mark_stale("k"));
    }
    upstream.open(1);
    first.await.unwrap().unwrap();

    assert_eq!(cache.get("k").as_deref(), Some("old"));
    assert_eq!(cache.is_stale("k"), Some(true), "still marked");
    assert_eq!(cache.metrics().discarded, 1);
    cache.validate();
}

/// (Review #18.5.) A mark between `invalidate_if`'s copy of the shard and
/// its removal is not a user's write: the entry the predicate picked is
/// removed. Marks took a user-write number, and the entry survived.
#[test]
fn invalidate_if_removes_an_entry_marked_stale_meanwhile() {
    let cache: Cache<String, String> = Cache::builder().ttl(TTL).build().unwrap();
    cache.insert("k".into(), "old".into());
    let removed = cache.invalidate_if(|k, _| {
        // The predicate runs between the copy and the removal.
        assert!(cache.mark_stale(k));
        true
    });
    assert_eq!(removed, 1);
    assert_eq!(cache.peek("k"), None, "the mark saved the entry");
    cache.insert("k".into(), "old".into());
    cache.retain(|k, _| {
        assert!(cache.mark_stale(k));
        false
    });
    assert_eq!(cache.peek("k"), None, "retain: the mark saved the entry");
    cache.validate();
}

/// A cache on `upstream` whose refresher looks for due values only once an
/// hour, so that any sooner refresh is one it was asked for.
fn hourly_cache(upstream: &Gated) -> Cache<String, String> {
    let upstream = upstream.clone();
    Cache::builder()
        .ttl(TTL)
        .refresh_interval(Duration::from_secs(3600))
        .fetcher(move |key: String| {
            let upstream = upstream.clone();
            async move { upstream.fetch(key).await }
        })
        .build()
        .unwrap()
}

/// A marked value may have no reader: the refresher looks at once, not at
/// its next interval.
#[tokio::test(start_paused = true)]
async fn a_marked_value_is_refreshed_without_waiting_for_the_interval() {
    let upstream = Gated::new();
    let cache = hourly_cache(&upstream);
    cache.insert("k".into(), "old".into());
    cache.start().unwrap();
    settle().await;
    upstream.set_version(1);
    upstream.open(1);
    assert!(cache.mark_stale("k"));
    sleep(Duration::from_millis(10)).await;

    assert_eq!(cache.get("k").as_deref(), Some("k@v1"));
}

/// (Review #18.3.) A mark that lands while the refresher's own fetch of
/// the key runs: that fetch began from the value before and installs
/// nothing, and the marked value is fetched as soon as it ends, not at the
/// next interval. The refresher was handed the key again mid-fetch and
/// ignored it, then let it go; the "look now" was spent.
#[tokio::test(start_paused = true)]
async fn a_mark_during_the_refreshers_own_fetch_is_refreshed_when_that_fetch_ends() {
    let upstream = Gated::new();
    let cache = hourly_cache(&upstream);
    cache.insert("k".into(), "old".into());
    cache.start().unwrap();
    // Two ticks of the coarse clock past the TTL.
    sleep(TTL + Duration::from_secs(1)).await;
    assert_eq!(cache.get("k").as_deref(), Some("old"), "stale: asks");
    settle().await;
    assert_eq!(upstream.calls(), 1, "the refresher's fetch runs");

    upstream.set_version(1);
    assert!(cache.mark_stale("k"));
    upstream.open(2);
    sleep(Duration::from_millis(10)).await;

    assert_eq!(upstream.calls(), 2, "fetched again at once");
    assert_eq!(cache.get("k").as_deref(), Some("k@v1"));
    assert_eq!(cache.is_stale("k"), Some(false));
    cache.validate();
}
