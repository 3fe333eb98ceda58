//! The refresh engine's behaviours (`docs/design.md` S4–S9, S12), each on tokio's
//! paused clock: `sleep` there advances virtual time as soon as every task is
//! idle, so these tests are exact and take no real time.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use swr_cache::{Cache, ConfigChange, FetchError, Fetched, Fetcher, StartError};
use tokio::sync::Semaphore;
use tokio::time::{Instant, sleep};

#[path = "support/watchdog.rs"]
mod watchdog;

const TTL: Duration = Duration::from_secs(10);
const INTERVAL: Duration = Duration::from_secs(1);

/// An upstream whose answers tests control and whose calls they count.
#[derive(Clone, Default)]
struct Upstream {
    calls: Arc<AtomicUsize>,
    /// Fetches under way now, and the most seen at once.
    running: Arc<AtomicUsize>,
    peak: Arc<AtomicUsize>,
    failing: Arc<AtomicBool>,
    version: Arc<AtomicUsize>,
}

impl Upstream {
    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    fn set_failing(&self, failing: bool) {
        self.failing.store(failing, Ordering::SeqCst);
    }

    /// Answers `"{key}@v{version}"` after `latency`, or an error while failing.
    async fn fetch(&self, key: String, latency: Duration) -> Result<String, std::io::Error> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let now = self.running.fetch_add(1, Ordering::SeqCst) + 1;
        self.peak.fetch_max(now, Ordering::SeqCst);
        if !latency.is_zero() {
            sleep(latency).await;
        }
        self.running.fetch_sub(1, Ordering::SeqCst);
        if self.failing.load(Ordering::SeqCst) {
            return Err(std::io::Error::other("upstream down"));
        }
        Ok(format!("{key}@v{}", self.version.load(Ordering::SeqCst)))
    }
}

fn cache_with(upstream: &Upstream, latency: Duration) -> Cache<String, String> {
    let upstream = upstream.clone();
    Cache::builder()
        .max_size(10_000)
        .ttl(Some(TTL))
        .refresh_interval(INTERVAL)
        .refresh_on_read(false)
        .fetcher(move |key: String| {
            let upstream = upstream.clone();
            async move { upstream.fetch(key, latency).await }
        })
        .build()
        .unwrap()
}

fn cache(upstream: &Upstream) -> Cache<String, String> {
    cache_with(upstream, Duration::ZERO)
}

#[tokio::test(start_paused = true)]
async fn refresh_is_called_for_a_stale_entry() {
    let upstream = Upstream::default();
    let cache = cache(&upstream);
    cache.start().unwrap();
    cache.insert("k".into(), "old".into());
    upstream.version.store(2, Ordering::SeqCst);

    sleep(TTL + INTERVAL * 2).await;

    assert_eq!(upstream.calls(), 1);
    assert_eq!(cache.get("k").as_deref(), Some("k@v2"));
    assert_eq!(cache.is_stale("k"), Some(false), "a refresh resets the age");
    assert_eq!(cache.metrics().refreshes, 1);
}

#[tokio::test(start_paused = true)]
async fn refresh_is_not_called_for_a_fresh_entry() {
    let upstream = Upstream::default();
    let cache = cache(&upstream);
    cache.start().unwrap();
    cache.insert("k".into(), "old".into());

    sleep(TTL - INTERVAL).await;

    assert_eq!(upstream.calls(), 0);
    assert_eq!(cache.get("k").as_deref(), Some("old"));
}

#[tokio::test(start_paused = true)]
async fn no_task_and_no_refresh_with_ttl_none() {
    let upstream = Upstream::default();
    let cache = cache(&upstream);
    cache.configure(ConfigChange::new().ttl(None)).unwrap();
    cache.start().unwrap();
    assert!(!cache.is_refreshing(), "offline mode spawns no task");
    cache.insert("k".into(), "old".into());

    sleep(TTL * 100).await;

    assert_eq!(upstream.calls(), 0);
    assert_eq!(cache.is_stale("k"), Some(false));
    assert_eq!(cache.get("k").as_deref(), Some("old"));
}

#[tokio::test(start_paused = true)]
async fn no_task_with_max_size_zero() {
    let upstream = Upstream::default();
    let cache = cache(&upstream);
    cache.configure(ConfigChange::new().max_size(0)).unwrap();
    cache.start().unwrap();
    assert!(!cache.is_refreshing());
}

#[tokio::test(start_paused = true)]
async fn a_failing_fetcher_keeps_the_stale_value_then_a_success_installs() {
    let upstream = Upstream::default();
    let cache = cache(&upstream);
    cache.start().unwrap();
    cache.insert("k".into(), "old".into());
    upstream.set_failing(true);

    sleep(TTL + INTERVAL + Duration::from_millis(1)).await;
    // The LangSmith sequence: one call, one error, the stale value kept.
    assert_eq!(upstream.calls(), 1);
    let m = cache.metrics();
    assert_eq!((m.refresh_errors, m.refreshes), (1, 0));
    assert_eq!(cache.get("k").as_deref(), Some("old"));
    assert_eq!(cache.is_stale("k"), Some(true));

    upstream.set_failing(false);
    sleep(INTERVAL * 2).await;
    // Then a second call, which succeeds.
    assert_eq!(upstream.calls(), 2);
    let m = cache.metrics();
    assert_eq!((m.refresh_errors, m.refreshes), (1, 1));
    assert_eq!(cache.get("k").as_deref(), Some("k@v0"));
    assert_eq!(cache.is_stale("k"), Some(false));
}

#[tokio::test(start_paused = true)]
async fn a_panicking_fetcher_keeps_the_stale_value_and_the_task_lives() {
    let panicking = Arc::new(AtomicBool::new(true));
    let calls = Arc::new(AtomicUsize::new(0));
    let cache: Cache<String, String> = Cache::builder()
        .ttl(Some(TTL))
        .refresh_interval(INTERVAL)
        .fetcher({
            let (panicking, calls) = (panicking.clone(), calls.clone());
            move |key: String| {
                let (panicking, calls) = (panicking.clone(), calls.clone());
                async move {
                    calls.fetch_add(1, Ordering::SeqCst);
                    assert!(!panicking.load(Ordering::SeqCst), "fetcher bug");
                    Ok::<_, std::io::Error>(format!("{key}-new"))
                }
            }
        })
        .build()
        .unwrap();
    cache.start().unwrap();
    cache.insert("k".into(), "old".into());

    sleep(TTL + INTERVAL + Duration::from_millis(1)).await;
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert_eq!(cache.metrics().refresh_errors, 1);
    assert_eq!(cache.get("k").as_deref(), Some("old"));
    assert!(cache.is_refreshing());

    panicking.store(false, Ordering::SeqCst);
    sleep(INTERVAL * 2).await;
    assert_eq!(
        cache.get("k").as_deref(),
        Some("k-new"),
        "the task survived the panic"
    );
}

/// A closure that panics before it returns its future: caught like a panic
/// inside it, counted, and backed off rather than retried every interval.
#[tokio::test(start_paused = true)]
async fn a_closure_panicking_before_its_future_is_caught_counted_and_backed_off() {
    let calls = Arc::new(AtomicUsize::new(0));
    let cache: Cache<String, String> = Cache::builder()
        .ttl(Some(TTL))
        .refresh_interval(INTERVAL)
        .max_retry_backoff(Duration::from_secs(64))
        .fetcher({
            let calls = calls.clone();
            move |_key: String| -> std::future::Ready<Result<String, std::io::Error>> {
                calls.fetch_add(1, Ordering::SeqCst);
                panic!("fetcher bug before the future")
            }
        })
        .build()
        .unwrap();
    assert!(matches!(
        cache.get_or_fetch("absent").await,
        Err(FetchError::Panicked(message)) if message == "fetcher bug before the future"
    ));
    assert_eq!(cache.metrics().load_errors, 1);

    cache.insert("k".into(), "old".into());
    cache.start().unwrap();
    calls.store(0, Ordering::SeqCst);
    // Backoff doubles from one interval: retries after about 1, 2, 4, 8,
    // 16 s (each jittered down by up to half), so at most 6 calls in 40 s,
    // where one per interval would be 30.
    sleep(TTL + Duration::from_secs(30)).await;
    let calls = calls.load(Ordering::SeqCst);
    assert!((2..=6).contains(&calls), "{calls} calls");
    let m = cache.metrics();
    assert_eq!(m.refresh_errors as usize, calls, "{m}");
    assert_eq!(cache.get("k").as_deref(), Some("old"));
    assert!(cache.is_refreshing());
}

#[tokio::test(start_paused = true)]
async fn a_hanging_fetcher_times_out_keeps_the_stale_value_and_the_task_lives() {
    let hanging = Arc::new(AtomicBool::new(true));
    let cache: Cache<String, String> = Cache::builder()
        .ttl(Some(TTL))
        .refresh_interval(INTERVAL)
        .refresh_timeout(Duration::from_secs(5))
        .fetcher({
            let hanging = hanging.clone();
            move |key: String| {
                let hanging = hanging.clone();
                async move {
                    if hanging.load(Ordering::SeqCst) {
                        std::future::pending::<()>().await;
                    }
                    Ok::<_, std::io::Error>(format!("{key}-new"))
                }
            }
        })
        .build()
        .unwrap();
    cache.start().unwrap();
    cache.insert("k".into(), "old".into());

    // Stale after TTL, picked up by the next pass, then 5 s of timeout.
    sleep(TTL + INTERVAL).await;
    assert_eq!(cache.metrics().refresh_errors, 0, "still waiting");
    sleep(Duration::from_secs(5) + Duration::from_millis(1)).await;
    assert_eq!(cache.metrics().refresh_errors, 1);
    assert_eq!(cache.get("k").as_deref(), Some("old"));

    hanging.store(false, Ordering::SeqCst);
    sleep(INTERVAL * 2).await;
    assert_eq!(
        cache.get("k").as_deref(),
        Some("k-new"),
        "the task survived the hang"
    );
}

#[tokio::test(start_paused = true)]
async fn failed_keys_are_retried_later_and_later_with_jitter_up_to_the_cap() {
    let cap = Duration::from_secs(32);
    let calls: Arc<std::sync::Mutex<Vec<(String, Instant)>>> = Arc::default();
    let cache: Cache<String, String> = Cache::builder()
        .ttl(Some(TTL))
        .refresh_interval(INTERVAL)
        .max_retry_backoff(cap)
        .fetcher({
            let calls = calls.clone();
            move |key: String| {
                calls.lock().unwrap().push((key, Instant::now()));
                async { Err::<String, _>("always down") }
            }
        })
        .build()
        .unwrap();
    // Fewer keys than open the circuit breaker: these keys fail, not the
    // upstream, so each backs off on its own.
    let keys: Vec<String> = (0..6).map(|i| format!("k{i}")).collect();
    for key in &keys {
        cache.insert(key.clone(), "old".into());
    }
    cache.start().unwrap();

    sleep(TTL + Duration::from_secs(300)).await;

    let calls = calls.lock().unwrap();
    let mut nth_retry_times = Vec::new();
    for key in &keys {
        let times: Vec<Instant> = calls
            .iter()
            .filter(|(k, _)| k == key)
            .map(|(_, t)| *t)
            .collect();
        assert!(times.len() >= 6, "{key} was retried {} times", times.len());
        let gaps: Vec<Duration> = times.windows(2).map(|w| w[1] - w[0]).collect();
        // Waits double from one interval (1, 2, 4, 8, 16 s, each jittered
        // down by up to half) until they reach the 32 s cap; from then on they
        // are jittered within [cap / 2, cap].
        for pair in gaps[..6].windows(2) {
            assert!(
                pair[1] >= pair[0],
                "{key}: gaps shrank before the cap: {gaps:?}"
            );
        }
        assert!(
            gaps[0] >= INTERVAL / 2,
            "{key}: first retry after {:?}",
            gaps[0]
        );
        assert!(gaps[5..].iter().all(|g| *g >= cap / 2), "{key}: {gaps:?}");
        assert!(
            gaps.iter().all(|g| *g <= cap + INTERVAL),
            "{key}: past the cap: {gaps:?}"
        );
        nth_retry_times.push(times[5]);
    }
    nth_retry_times.sort();
    nth_retry_times.dedup();
    assert!(
        nth_retry_times.len() > 3,
        "keys that failed together retried together: {nth_retry_times:?}"
    );
    assert!(cache.is_refreshing());
}

#[tokio::test(start_paused = true)]
async fn many_stale_entries_are_refreshed_with_bounded_concurrency() {
    let upstream = Upstream::default();
    let latency = Duration::from_millis(100);
    let upstream_for_fetch = upstream.clone();
    let cache: Cache<String, String> = Cache::builder()
        .max_size(1000)
        .ttl(Some(TTL))
        .refresh_interval(INTERVAL)
        .max_concurrent_refreshes(16)
        .fetcher(move |key: String| {
            let upstream = upstream_for_fetch.clone();
            async move { upstream.fetch(key, latency).await }
        })
        .build()
        .unwrap();
    for i in 0..1000 {
        cache.insert(format!("k{i}"), "old".into());
    }
    cache.start().unwrap();
    sleep(TTL + Duration::from_millis(1)).await;
    let stale_since = Instant::now();
    assert!((0..1000).all(|i| cache.is_stale(&format!("k{i}")) == Some(true)));

    while (0..1000).any(|i| cache.is_stale(&format!("k{i}")) == Some(true)) {
        sleep(Duration::from_millis(10)).await;
    }
    let took = stale_since.elapsed();

    // ceil(1000 / 16) = 63 rounds of 100 ms, after at most one interval.
    let ideal = latency * 63;
    assert!(took >= ideal, "faster than 16 at a time: {took:?}");
    assert!(
        took <= ideal + INTERVAL + Duration::from_millis(100),
        "took {took:?}"
    );
    assert_eq!(upstream.peak.load(Ordering::SeqCst), 16);
    assert_eq!(upstream.calls(), 1000);
}

#[tokio::test(start_paused = true)]
async fn an_insert_during_a_refresh_wins() {
    let upstream = Upstream::default();
    let cache = cache_with(&upstream, Duration::from_secs(3));
    cache.insert("k".into(), "old".into());
    cache.start().unwrap();
    sleep(TTL + INTERVAL + Duration::from_millis(1)).await;
    assert_eq!(
        upstream.running.load(Ordering::SeqCst),
        1,
        "the refresh is under way"
    );

    cache.insert("k".into(), "inserted".into());
    sleep(Duration::from_secs(3)).await;

    assert_eq!(upstream.calls(), 1);
    assert_eq!(
        upstream.running.load(Ordering::SeqCst),
        0,
        "the refresh finished"
    );
    assert_eq!(cache.get("k").as_deref(), Some("inserted"));
}

#[tokio::test(start_paused = true)]
async fn an_invalidate_during_a_refresh_keeps_the_key_absent() {
    let upstream = Upstream::default();
    let cache = cache_with(&upstream, Duration::from_secs(3));
    cache.insert("k".into(), "old".into());
    cache.start().unwrap();
    sleep(TTL + INTERVAL + Duration::from_millis(1)).await;
    assert_eq!(upstream.running.load(Ordering::SeqCst), 1);

    assert!(cache.invalidate("k"));
    sleep(Duration::from_secs(3)).await;

    assert_eq!(upstream.running.load(Ordering::SeqCst), 0);
    assert!(!cache.contains_key("k"));
    assert_eq!(cache.len(), 0);
    let m = cache.metrics();
    assert_eq!(
        (m.refreshes, m.discarded),
        (0, 1),
        "the fetch succeeded, into a removed entry: discarded"
    );
}

#[tokio::test(start_paused = true)]
async fn get_or_fetch_makes_one_fetch_for_concurrent_misses() {
    let upstream = Upstream::default();
    let cache = cache_with(&upstream, Duration::from_millis(100));
    let mut waiters = tokio::task::JoinSet::new();
    for _ in 0..10 {
        let cache = cache.clone();
        waiters.spawn(async move { cache.get_or_fetch("k").await });
    }
    let results = waiters.join_all().await;

    assert_eq!(upstream.calls(), 1);
    assert!(
        results.iter().all(|r| r.as_deref().ok() == Some("k@v0")),
        "{results:?}"
    );
    assert_eq!(cache.get("k").as_deref(), Some("k@v0"));
    let m = cache.metrics();
    assert_eq!((m.inserts, m.loads, m.refreshes), (1, 1, 0));
}

#[tokio::test(start_paused = true)]
async fn get_or_fetch_shares_one_error() {
    let upstream = Upstream::default();
    upstream.set_failing(true);
    let cache = cache_with(&upstream, Duration::from_millis(100));
    let mut waiters = tokio::task::JoinSet::new();
    for _ in 0..10 {
        let cache = cache.clone();
        waiters.spawn(async move { cache.get_or_fetch("k").await });
    }
    let results = waiters.join_all().await;

    assert_eq!(upstream.calls(), 1);
    assert!(
        results
            .iter()
            .all(|r| matches!(r, Err(FetchError::Failed(_)))),
        "{results:?}"
    );
    assert!(!cache.contains_key("k"));
    let m = cache.metrics();
    assert_eq!((m.load_errors, m.refresh_errors), (1, 0));

    upstream.set_failing(false);
    assert_eq!(
        cache.get_or_fetch("k").await.unwrap(),
        "k@v0",
        "errors are not cached"
    );
}

#[tokio::test(start_paused = true)]
async fn get_or_fetch_returns_a_cached_value_without_fetching() {
    let upstream = Upstream::default();
    let cache = cache(&upstream);
    cache.insert("k".into(), "cached".into());
    assert_eq!(cache.get_or_fetch("k").await.unwrap(), "cached");
    assert_eq!(upstream.calls(), 0);
    let m = cache.metrics();
    assert_eq!((m.hits, m.misses), (1, 0), "a hit, counted once");
}

/// (Issue #19.6.) A hit through `get_or_fetch` costs what a `get` costs:
/// its future holds no room for the miss path's state (856 bytes, which
/// every hit paid to build, move and drop: half a `get`'s speed), only a
/// pointer to it once there is a miss.
#[tokio::test(start_paused = true)]
async fn a_get_or_fetch_future_holds_no_room_for_the_miss_path() {
    let cache = cache(&Upstream::default());
    let future = cache.get_or_fetch("k");
    let size = std::mem::size_of_val(&future);
    assert!(size <= 128, "a get_or_fetch future of {size} bytes");
    drop(future);
    assert_eq!(
        cache.metrics().misses,
        0,
        "an unpolled future reads nothing"
    );
}

#[tokio::test(start_paused = true)]
async fn refresh_forces_a_revalidation_now() {
    let upstream = Upstream::default();
    let cache = cache(&upstream);
    cache.insert("k".into(), "old".into());
    upstream.version.store(3, Ordering::SeqCst);

    assert_eq!(cache.refresh("k").await.unwrap(), "k@v3");

    assert_eq!(upstream.calls(), 1);
    assert_eq!(cache.get("k").as_deref(), Some("k@v3"));
    assert_eq!(cache.metrics().refreshes, 1);

    upstream.set_failing(true);
    assert!(cache.refresh("k").await.is_err());
    assert_eq!(
        cache.get("k").as_deref(),
        Some("k@v3"),
        "a failed refresh keeps the value"
    );
}

#[tokio::test(start_paused = true)]
async fn without_a_fetcher_fetching_is_an_error() {
    let cache: Cache<String, String> = Cache::builder().build().unwrap();
    assert_eq!(cache.start(), Err(StartError::NoFetcher));
    assert!(matches!(
        cache.get_or_fetch("k").await,
        Err(FetchError::NoFetcher)
    ));
    assert!(matches!(
        cache.refresh("k").await,
        Err(FetchError::NoFetcher)
    ));
}

#[test]
fn start_outside_a_runtime_is_an_error() {
    let upstream = Upstream::default();
    let cache = cache(&upstream);
    assert_eq!(cache.start(), Err(StartError::NoRuntime));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    cache.start_on(runtime.handle()).unwrap();
    assert!(cache.is_refreshing());
    cache.shutdown();
}

#[tokio::test(start_paused = true)]
async fn a_stale_read_refreshes_at_once_with_refresh_on_read() {
    let upstream = Upstream::default();
    let upstream_for_fetch = upstream.clone();
    let cache: Cache<String, String> = Cache::builder()
        .ttl(Some(TTL))
        .refresh_interval(Duration::from_secs(3600))
        .fetcher(move |key: String| {
            let upstream = upstream_for_fetch.clone();
            async move { upstream.fetch(key, Duration::ZERO).await }
        })
        .build()
        .unwrap();
    cache.start().unwrap();
    cache.insert("k".into(), "old".into());
    sleep(TTL * 2).await;
    assert_eq!(upstream.calls(), 0, "the hourly pass has not come");

    assert_eq!(
        cache.get("k").as_deref(),
        Some("old"),
        "the stale value is served at once"
    );
    sleep(Duration::from_millis(1)).await;

    assert_eq!(upstream.calls(), 1);
    assert_eq!(cache.get("k").as_deref(), Some("k@v0"));
    assert_eq!(cache.metrics().stale_hits, 1);
}

#[tokio::test(start_paused = true)]
async fn a_stale_read_waits_for_the_pass_without_refresh_on_read() {
    let upstream = Upstream::default();
    let cache = cache(&upstream);
    cache
        .configure(ConfigChange::new().refresh_interval(Duration::from_secs(3600)))
        .unwrap();
    cache.start().unwrap();
    cache.insert("k".into(), "old".into());
    sleep(TTL * 2).await;

    assert_eq!(cache.get("k").as_deref(), Some("old"));
    sleep(Duration::from_secs(60)).await;

    assert_eq!(upstream.calls(), 0);
}

#[tokio::test(start_paused = true)]
async fn start_is_idempotent_and_stop_waits_for_the_task() {
    let upstream = Upstream::default();
    let cache = cache(&upstream);
    let tasks_before = tokio::runtime::Handle::current()
        .metrics()
        .num_alive_tasks();
    cache.start().unwrap();
    cache.start().unwrap();
    cache.clone().start().unwrap();
    assert_eq!(
        tokio::runtime::Handle::current()
            .metrics()
            .num_alive_tasks(),
        tasks_before + 1
    );

    cache.stop().await;
    assert!(!cache.is_refreshing());
    assert_eq!(
        tokio::runtime::Handle::current()
            .metrics()
            .num_alive_tasks(),
        tasks_before
    );

    cache.insert("k".into(), "old".into());
    sleep(TTL * 3).await;
    assert_eq!(upstream.calls(), 0, "a stopped cache refreshes nothing");

    cache.start().unwrap();
    sleep(INTERVAL * 2).await;
    assert_eq!(upstream.calls(), 1, "and starts again");
}

#[tokio::test(start_paused = true)]
async fn shutdown_stops_the_task_without_awaiting() {
    let upstream = Upstream::default();
    let cache = cache(&upstream);
    let tasks_before = tokio::runtime::Handle::current()
        .metrics()
        .num_alive_tasks();
    cache.start().unwrap();
    cache.insert("k".into(), "old".into());

    cache.shutdown();
    assert!(!cache.is_refreshing());
    sleep(Duration::from_millis(1)).await;
    assert_eq!(
        tokio::runtime::Handle::current()
            .metrics()
            .num_alive_tasks(),
        tasks_before
    );
    sleep(TTL * 3).await;
    assert_eq!(upstream.calls(), 0);
}

/// The refresher's runtime is dropped without `stop()`: reads go back to
/// the precise clock, so entries still go stale. In real time (the runtime
/// and its paused clock are what goes away), under a watchdog.
#[test]
fn reads_see_entries_go_stale_after_the_refreshers_runtime_is_dropped() {
    watchdog::within("dropped runtime", || {
        let ttl = Duration::from_millis(50);
        let upstream = Upstream::default();
        let upstream_for_fetch = upstream.clone();
        let cache: Cache<String, String> = Cache::builder()
            .ttl(ttl)
            .refresh_interval(Duration::from_secs(3600))
            .refresh_on_read(false)
            .fetcher(move |key: String| {
                let upstream = upstream_for_fetch.clone();
                async move { upstream.fetch(key, Duration::ZERO).await }
            })
            .build()
            .unwrap();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        cache.start_on(runtime.handle()).unwrap();
        runtime.block_on(async { sleep(Duration::from_millis(5)).await });
        cache.insert("k".into(), "v".into());
        drop(runtime);
        assert!(!cache.is_refreshing());

        std::thread::sleep(ttl * 2);
        assert_eq!(cache.get("k").as_deref(), Some("v"));
        assert_eq!(
            cache.metrics().stale_hits,
            1,
            "the read clock stopped with the runtime"
        );

        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        cache.start_on(runtime.handle()).unwrap();
        assert!(cache.is_refreshing(), "a new runtime runs a new task");
        runtime.block_on(async {
            while cache.peek("k").as_deref() != Some("k@v0") {
                sleep(Duration::from_millis(1)).await;
            }
        });
        assert_eq!(upstream.calls(), 1);
    });
}

#[tokio::test(start_paused = true)]
async fn dropping_the_last_handle_ends_the_task() {
    let upstream = Upstream::default();
    let cache = cache(&upstream);
    let tasks_before = tokio::runtime::Handle::current()
        .metrics()
        .num_alive_tasks();
    cache.start().unwrap();
    let second = cache.clone();
    drop(cache);
    sleep(Duration::from_millis(1)).await;
    assert_eq!(
        tokio::runtime::Handle::current()
            .metrics()
            .num_alive_tasks(),
        tasks_before + 1,
        "a handle remains"
    );

    drop(second);
    sleep(Duration::from_millis(1)).await;
    assert_eq!(
        tokio::runtime::Handle::current()
            .metrics()
            .num_alive_tasks(),
        tasks_before
    );
}

#[tokio::test(start_paused = true)]
async fn configure_applies_to_the_running_task() {
    let upstream = Upstream::default();
    let cache = cache(&upstream);
    cache
        .configure(ConfigChange::new().refresh_interval(Duration::from_secs(3600)))
        .unwrap();
    cache.start().unwrap();
    cache.insert("k".into(), "old".into());
    sleep(TTL * 2).await;
    assert_eq!(upstream.calls(), 0);

    // A shorter interval is taken up without a restart.
    cache
        .configure(ConfigChange::new().refresh_interval(INTERVAL))
        .unwrap();
    sleep(INTERVAL + Duration::from_millis(1)).await;
    assert_eq!(upstream.calls(), 1);

    // ttl None stops the task; a ttl again starts it again.
    cache.configure(ConfigChange::new().ttl(None)).unwrap();
    assert!(!cache.is_refreshing());
    cache.configure(ConfigChange::new().ttl(Some(TTL))).unwrap();
    assert!(cache.is_refreshing());
    sleep(TTL + INTERVAL * 2).await;
    assert_eq!(upstream.calls(), 2);

    // A shorter ttl makes entries stale by the new measure.
    cache
        .configure(ConfigChange::new().ttl(Some(Duration::from_secs(1))))
        .unwrap();
    sleep(INTERVAL * 3).await;
    assert!(upstream.calls() >= 3);
}

/// A [`Fetcher`] that revalidates by version: "unchanged" renews the age.
struct Versioned {
    upstream_version: Arc<AtomicUsize>,
    calls: Arc<AtomicUsize>,
}

impl Fetcher<String, (usize, String)> for Versioned {
    type Error = std::convert::Infallible;

    async fn fetch(
        &self,
        key: &String,
        current: Option<&(usize, String)>,
    ) -> Result<Fetched<(usize, String)>, Self::Error> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let version = self.upstream_version.load(Ordering::SeqCst);
        Ok(match current {
            Some((v, _)) if *v == version => Fetched::Unchanged,
            _ => Fetched::Value((version, format!("{key} body {version}"))),
        })
    }
}

#[tokio::test(start_paused = true)]
async fn a_fetcher_type_can_answer_unchanged() {
    let upstream_version = Arc::new(AtomicUsize::new(1));
    let calls = Arc::new(AtomicUsize::new(0));
    let cache: Cache<String, (usize, String)> = Cache::builder()
        .ttl(Some(TTL))
        .refresh_interval(INTERVAL)
        .fetcher_impl(Versioned {
            upstream_version: upstream_version.clone(),
            calls: calls.clone(),
        })
        .build()
        .unwrap();
    cache.insert("k".into(), (1, "original".into()));
    cache.start().unwrap();

    sleep(TTL + INTERVAL * 2).await;
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert_eq!(
        cache.get("k"),
        Some((1, "original".into())),
        "unchanged keeps the value"
    );
    assert_eq!(cache.is_stale("k"), Some(false), "and renews the age");

    upstream_version.store(2, Ordering::SeqCst);
    sleep(TTL + INTERVAL * 2).await;
    assert_eq!(cache.get("k"), Some((2, "k body 2".into())));
}

/// Always answers "unchanged".
struct AlwaysUnchanged;

impl Fetcher<String, String> for AlwaysUnchanged {
    type Error = std::convert::Infallible;

    async fn fetch(&self, _: &String, _: Option<&String>) -> Result<Fetched<String>, Self::Error> {
        Ok(Fetched::Unchanged)
    }
}

#[tokio::test(start_paused = true)]
async fn unchanged_for_an_uncached_key_is_an_error() {
    let cache: Cache<String, String> = Cache::builder()
        .fetcher_impl(AlwaysUnchanged)
        .build()
        .unwrap();
    assert!(matches!(
        cache.get_or_fetch("k").await,
        Err(FetchError::NothingToKeep)
    ));
    assert!(!cache.contains_key("k"));
    let m = cache.metrics();
    assert_eq!((m.load_errors, m.refresh_errors), (1, 0));
}

#[tokio::test(start_paused = true)]
async fn a_refresh_for_one_key_is_never_run_twice_at_once() {
    let upstream = Upstream::default();
    let gate = Arc::new(Semaphore::new(0));
    let upstream_for_fetch = upstream.clone();
    let gate_for_fetch = gate.clone();
    let cache: Cache<String, String> = Cache::builder()
        .ttl(Some(TTL))
        .refresh_interval(INTERVAL)
        .fetcher(move |key: String| {
            let (upstream, gate) = (upstream_for_fetch.clone(), gate_for_fetch.clone());
            async move {
                let _permit = gate.acquire().await.unwrap();
                upstream.fetch(key, Duration::ZERO).await
            }
        })
        .build()
        .unwrap();
    cache.insert("k".into(), "old".into());
    cache.start().unwrap();
    sleep(TTL + INTERVAL * 5).await; // several passes while the first fetch waits
    let forced = {
        let cache = cache.clone();
        tokio::spawn(async move { cache.refresh("k").await })
    };
    for _ in 0..100 {
        cache.get("k"); // stale reads while the fetch waits
    }
    sleep(INTERVAL * 5).await;

    gate.add_permits(10);
    assert_eq!(forced.await.unwrap().unwrap(), "k@v0");
    assert_eq!(
        upstream.calls(),
        1,
        "one flight served the passes and the forced refresh"
    );
}

/// Keys a reader found stale are fetched before stale keys nobody reads.
#[tokio::test(start_paused = true)]
async fn keys_readers_ask_for_are_refreshed_before_keys_nobody_reads() {
    let fetched: Arc<std::sync::Mutex<Vec<String>>> = Arc::default();
    let log = Arc::clone(&fetched);
    let cache: Cache<String, String> = Cache::builder()
        .max_size(1000)
        .ttl(TTL)
        .refresh_interval(INTERVAL)
        .max_concurrent_refreshes(1)
        .fetcher(move |key: String| {
            log.lock().unwrap().push(key.clone());
            async move {
                sleep(Duration::from_millis(100)).await;
                Ok::<_, std::io::Error>(format!("{key}-new"))
            }
        })
        .build()
        .unwrap();
    for i in 0..100 {
        cache.insert(format!("cold{i}"), "old".into());
    }
    cache.insert("hot".into(), "old".into());
    cache.start().unwrap();
    sleep(TTL + INTERVAL + Duration::from_millis(1)).await;
    assert_eq!(fetched.lock().unwrap().len(), 1, "one fetch at a time");

    assert_eq!(cache.get("hot").as_deref(), Some("old"), "served stale");
    sleep(Duration::from_millis(350)).await;

    let order = fetched.lock().unwrap().clone();
    let position = order.iter().position(|k| k == "hot");
    assert!(
        position.is_some_and(|p| p <= 3),
        "the read key was fetched at {position:?} of {order:?}"
    );
    assert_eq!(cache.get("hot").as_deref(), Some("hot-new"));
}

/// An entry the user writes while its refresh backs off is the user's
/// again: fresh, and refreshed as usual once it goes stale.
#[tokio::test(start_paused = true)]
async fn an_entry_written_while_its_refresh_backs_off_is_refreshed_when_stale_again() {
    let upstream = Upstream::default();
    upstream.set_failing(true);
    let cache = cache(&upstream);
    cache.insert("k".into(), "old".into());
    cache.start().unwrap();
    sleep(TTL + INTERVAL + Duration::from_millis(1)).await;
    assert_eq!(cache.metrics().refresh_errors, 1);

    cache.insert("k".into(), "written".into());
    upstream.set_failing(false);
    assert_eq!(cache.is_stale("k"), Some(false));
    sleep(TTL + INTERVAL * 2).await;

    assert_eq!(cache.get("k").as_deref(), Some("k@v0"));
    assert_eq!(cache.metrics().refreshes, 1);
}

/// What a stopped refresher held (a key backing off) is refreshed by the
/// next one.
#[tokio::test(start_paused = true)]
async fn a_restarted_refresher_takes_up_what_the_stopped_one_held() {
    let upstream = Upstream::default();
    upstream.set_failing(true);
    let upstream_for_fetch = upstream.clone();
    let cache: Cache<String, String> = Cache::builder()
        .ttl(TTL)
        .refresh_interval(INTERVAL)
        .max_retry_backoff(Duration::from_secs(3600))
        .fetcher(move |key: String| {
            let upstream = upstream_for_fetch.clone();
            async move { upstream.fetch(key, Duration::ZERO).await }
        })
        .build()
        .unwrap();
    cache.insert("k".into(), "old".into());
    cache.start().unwrap();
    sleep(TTL + INTERVAL * 4).await;
    let failures = cache.metrics().refresh_errors;
    assert!(failures >= 2, "backing off after {failures} failures");

    cache.stop().await;
    upstream.set_failing(false);
    cache.start().unwrap();
    sleep(INTERVAL * 2).await;

    assert_eq!(cache.get("k").as_deref(), Some("k@v0"));
}

/// More readers' requests than the list holds (a storm of stale reads): the
/// requests it drops are not lost. The values stay marked as asked for, so
/// readers do not ask again; the task must look for them at once, not at
/// the next interval. (Found by the side-by-side refresh bench: with the
/// default interval of a minute, 16 % of 100,000 stale keys waited for it.)
#[tokio::test(start_paused = true)]
async fn stale_reads_past_the_request_list_are_refreshed_before_the_next_interval() {
    const KEYS: usize = 10_000;
    let upstream = Upstream::default();
    let upstream_for_fetch = upstream.clone();
    let cache: Cache<String, String> = Cache::builder()
        .max_size(2 * KEYS)
        .ttl(Some(TTL))
        .refresh_interval(Duration::from_secs(3600))
        .max_concurrent_refreshes(256)
        .fetcher(move |key: String| {
            let upstream = upstream_for_fetch.clone();
            async move { upstream.fetch(key, Duration::from_millis(10)).await }
        })
        .build()
        .unwrap();
    for i in 0..KEYS {
        cache.insert(format!("k{i}"), "old".into());
    }
    cache.start().unwrap();
    sleep(TTL * 2).await;
    assert_eq!(upstream.calls(), 0, "the hourly pass has not come");

    // Every key read once while stale, faster than the task takes requests.
    for i in 0..KEYS {
        assert_eq!(cache.get(&format!("k{i}")).as_deref(), Some("old"));
    }
    // 10,000 at 256 at a time, 10 ms each: 0.4 s; a minute is room to spare
    // and still far from the hour.
    sleep(Duration::from_secs(60)).await;

    assert_eq!(upstream.calls(), KEYS, "each key fetched once");
    let stale = (0..KEYS)
        .filter(|i| cache.get(&format!("k{i}")).as_deref() == Some("old"))
        .count();
    assert_eq!(stale, 0, "keys left stale until the next interval");
}

/// While the refresher runs, reads judge staleness by its coarse clock: an
/// entry is never stale before its TTL and stale at most two ticks after
/// (a tick is a 64th of the TTL, at most 100 ms), so entries written
/// together start refreshing close to when they go stale.
#[tokio::test(start_paused = true)]
async fn with_the_refresher_running_an_entry_goes_stale_within_two_ticks_of_its_ttl() {
    for ttl in [Duration::from_millis(640), Duration::from_secs(60)] {
        let tick = (ttl / 64).min(Duration::from_millis(100));
        let cache: Cache<u32, u32> = Cache::builder()
            .ttl(Some(ttl))
            .refresh_interval(Duration::from_secs(3600))
            .refresh_on_read(false)
            .fetcher(|_key: u32| async { Ok::<_, std::io::Error>(2) })
            .build()
            .unwrap();
        cache.start().unwrap();
        sleep(Duration::from_millis(3)).await;
        cache.insert(1, 1);
        let written = Instant::now();
        let step = Duration::from_millis(1);
        // `get` judges by the coarse clock (`is_stale` by the precise one).
        while cache.get(&1) == Some(1) && cache.metrics().stale_hits == 0 {
            sleep(step).await;
        }
        let after = written.elapsed();
        assert!(
            after >= ttl && after <= ttl + 2 * tick + step,
            "stale after {after:?} with a TTL of {ttl:?} and ticks of {tick:?}"
        );
        cache.stop().await;
    }
}

/// A key whose `Clone` panics while `PANICKY_CLONES` is set.
#[derive(PartialEq, Eq, Hash, Debug)]
struct PanickyClone(u32);

static PANICKY_CLONES: AtomicBool = AtomicBool::new(false);
/// Held by each test that sets `PANICKY_CLONES`, so they do not run at once.
static PANICKY_TESTS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

impl Clone for PanickyClone {
    fn clone(&self) -> Self {
        assert!(!PANICKY_CLONES.load(Ordering::SeqCst), "the key's Clone");
        PanickyClone(self.0)
    }
}

/// The refresher takes a due entry under the shard's write lock and clones
/// its key there: a `Clone` that panics is counted and the task starts
/// over, with the store consistent and the value still served meanwhile.
#[tokio::test(start_paused = true)]
async fn a_refresher_that_panics_in_a_key_clone_is_counted_and_starts_over() {
    let _alone = PANICKY_TESTS.lock().await;
    let cache: Cache<PanickyClone, u32> = Cache::builder()
        .max_size(10)
        .ttl(TTL)
        .refresh_interval(INTERVAL)
        .refresh_on_read(false)
        .fetcher(|_| async { Ok::<_, std::io::Error>(7) })
        .build()
        .unwrap();
    cache.start().unwrap();
    cache.insert(PanickyClone(1), 1);
    PANICKY_CLONES.store(true, Ordering::SeqCst);
    sleep(TTL + INTERVAL * 3).await;
    PANICKY_CLONES.store(false, Ordering::SeqCst);
    cache.validate();
    let panics = cache.metrics().refresher_panics;
    assert!(panics >= 1, "counted");
    assert!(cache.is_refreshing(), "started over");
    assert_eq!(cache.peek(&PanickyClone(1)), Some(1), "still served");
    assert_eq!(cache.is_stale(&PanickyClone(1)), Some(true));

    // (Review #18.9.) The task that panicked was gone for good, and
    // readers' requests flowed to nothing; a new one starts by itself.
    sleep(INTERVAL * 3).await;
    assert_eq!(
        cache.peek(&PanickyClone(1)),
        Some(7),
        "refreshed by the new task"
    );
    assert_eq!(cache.metrics().refresher_panics, panics, "no more panics");
    cache.validate();
}

/// (Review.) A weigher that panics on a refresh's result: the refresh
/// failed, counted and backed off, and the key is refreshed again. The
/// panic had unwound the fetch task, whose end the refresher then never
/// heard of, so the key stayed "fetching" for the task's life and was
/// never refreshed again, whatever was written to it.
#[tokio::test(start_paused = true)]
async fn a_weigher_panic_on_a_refreshed_value_is_a_failed_refresh() {
    let calls = Arc::new(AtomicUsize::new(0));
    let armed = Arc::new(AtomicBool::new(true));
    let (counted, weigher_armed) = (Arc::clone(&calls), Arc::clone(&armed));
    let cache: Cache<u32, String> = Cache::builder()
        .max_size(10)
        .ttl(TTL)
        .refresh_interval(INTERVAL)
        .refresh_on_read(false)
        .weigher(move |_, value: &String| {
            let fetched = value.starts_with("fetched");
            assert!(
                !(fetched && weigher_armed.swap(false, Ordering::SeqCst)),
                "the weigher panics, once"
            );
            1
        })
        .max_weight(10)
        .fetcher(move |_| {
            let n = counted.fetch_add(1, Ordering::SeqCst) + 1;
            async move { Ok::<_, std::io::Error>(format!("fetched {n}")) }
        })
        .build()
        .unwrap();
    cache.start().unwrap();
    cache.insert(1, "written".into());
    sleep(TTL).await;
    while calls.load(Ordering::SeqCst) == 0 {
        sleep(Duration::from_millis(10)).await;
    }
    sleep(Duration::from_millis(1)).await;
    assert_eq!(
        cache.metrics().refresh_errors,
        1,
        "the panic is a failed refresh"
    );
    assert_eq!(
        cache.peek(&1).as_deref(),
        Some("written"),
        "the stale value stays"
    );

    // Retried after its backoff (one interval, with jitter, then doubling).
    sleep(INTERVAL * 8).await;
    assert_eq!(cache.peek(&1).as_deref(), Some("fetched 2"));
    assert!(cache.is_refreshing());
    cache.validate();
}

/// (Review #18.7.) A load whose value is too heavy to keep is stored and
/// at once evicted, as such an insert is: an insert, an eviction and a
/// load. It counted a discard and no load.
#[tokio::test(start_paused = true)]
async fn a_load_too_heavy_to_keep_counts_as_a_load_and_an_eviction() {
    let cache: Cache<String, String> = Cache::builder()
        .weigher(|_, value: &String| value.len() as u64)
        .max_weight(10)
        .fetcher(|_| async { Ok::<_, std::io::Error>("x".repeat(100)) })
        .build()
        .unwrap();
    assert_eq!(cache.get_or_fetch("k").await.unwrap().len(), 100);
    assert!(!cache.contains_key("k"));
    let m = cache.metrics();
    assert_eq!(
        (m.loads, m.inserts, m.evictions, m.discarded, m.load_errors),
        (1, 1, 1, 0, 0),
        "{m}"
    );
}

/// A key whose clone runs a hook once, when armed: a way to land an
/// `insert` between a `get_or_fetch`'s miss and its flight's start (it
/// clones the key in between), as another thread could.
#[derive(Debug, PartialEq, Eq, Hash)]
struct CloneHooked(u32);

thread_local! {
    static ON_CLONE: std::cell::RefCell<Option<Box<dyn FnOnce()>>> =
        std::cell::RefCell::new(None);
}

impl Clone for CloneHooked {
    fn clone(&self) -> Self {
        if let Some(hook) = ON_CLONE.with(|h| h.borrow_mut().take()) {
            hook();
        }
        Self(self.0)
    }
}

/// (Review #18.9.) An insert that lands between a `get_or_fetch`'s miss
/// and its flight's start is the answer: it was fetched over, as a
/// refresh of the inserted value, and overwritten.
#[tokio::test(start_paused = true)]
async fn get_or_fetch_returns_an_insert_that_landed_after_its_miss() {
    let calls = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&calls);
    let cache: Cache<CloneHooked, String> = Cache::builder()
        .ttl(TTL)
        .fetcher(move |_| {
            counted.fetch_add(1, Ordering::SeqCst);
            async { Ok::<_, std::io::Error>("fetched".to_owned()) }
        })
        .build()
        .unwrap();
    let writer = cache.clone();
    ON_CLONE.with(|h| {
        *h.borrow_mut() = Some(Box::new(move || {
            writer.insert(CloneHooked(1), "inserted".into());
        }))
    });
    let got = cache.get_or_fetch(&CloneHooked(1)).await.unwrap();
    assert!(ON_CLONE.with(|h| h.borrow().is_none()), "the hook ran");
    assert_eq!(got, "inserted");
    assert_eq!(cache.peek(&CloneHooked(1)).as_deref(), Some("inserted"));
    assert_eq!(calls.load(Ordering::SeqCst), 0, "nothing fetched");
}

/// (Review of #18.9's restart.) A refresher that panicked waits a refresh
/// interval before it starts over; a `stop` meanwhile must end it at once,
/// not when that pause is over.
#[tokio::test(start_paused = true)]
async fn stop_right_after_a_refresher_panic_does_not_wait_out_the_pause() {
    let _alone = PANICKY_TESTS.lock().await;
    let cache: Cache<PanickyClone, u32> = Cache::builder()
        .max_size(10)
        .ttl(TTL)
        .refresh_interval(Duration::from_secs(60))
        .refresh_on_read(false)
        .fetcher(|_| async { Ok::<_, std::io::Error>(7) })
        .build()
        .unwrap();
    cache.insert(PanickyClone(1), 1);
    sleep(TTL + Duration::from_secs(1)).await;
    PANICKY_CLONES.store(true, Ordering::SeqCst);
    cache.start().unwrap();
    while cache.metrics().refresher_panics == 0 {
        sleep(Duration::from_millis(10)).await;
    }
    PANICKY_CLONES.store(false, Ordering::SeqCst);
    let asked = Instant::now();
    cache.stop().await;
    assert!(
        asked.elapsed() < Duration::from_secs(1),
        "{:?}",
        asked.elapsed()
    );
    assert!(!cache.is_refreshing());
}

/// (Review of #18.2's patience.) A joiner's patience is the flight's own:
/// fixed when the flight starts, from the timeout it runs under. Lowering
/// `refresh_timeout` while a fetch runs made later joiners give up on a
/// healthy flight and fetch again.
#[tokio::test(start_paused = true)]
async fn a_joiner_waits_by_the_flights_own_timeout_not_a_lowered_one() {
    let gate = Arc::new(Semaphore::new(0));
    let calls = Arc::new(AtomicUsize::new(0));
    let (fetch_gate, counted) = (Arc::clone(&gate), Arc::clone(&calls));
    let cache: Cache<String, String> = Cache::builder()
        .refresh_timeout(Duration::from_secs(30))
        .fetcher(move |key: String| {
            counted.fetch_add(1, Ordering::SeqCst);
            let gate = Arc::clone(&fetch_gate);
            async move {
                gate.acquire().await.unwrap().forget();
                Ok::<_, std::io::Error>(format!("{key}!"))
            }
        })
        .build()
        .unwrap();
    let first = tokio::spawn({
        let cache = cache.clone();
        async move { cache.get_or_fetch("k").await }
    });
    sleep(Duration::from_millis(1)).await;
    cache
        .configure(ConfigChange::new().refresh_timeout(Duration::from_secs(1)))
        .unwrap();
    let joiner = tokio::spawn({
        let cache = cache.clone();
        async move { cache.get_or_fetch("k").await }
    });
    sleep(Duration::from_secs(5)).await;
    assert_eq!(calls.load(Ordering::SeqCst), 1, "the joiner gave up early");
    gate.add_permits(1);
    assert_eq!(first.await.unwrap().unwrap(), "k!");
    assert_eq!(joiner.await.unwrap().unwrap(), "k!");
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}
