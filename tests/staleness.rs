//! How stale a value may get: `max_stale` bounds how long past the TTL a
//! value is served while its refreshes fail, a fetcher answering
//! `Fetched::Gone` removes the key, and without a refresher the coarse
//! clock's keeper (or the precise clock, where no runtime can run one)
//! judges staleness. On tokio's paused clock, but for the keeper's tests
//! (a multi-thread runtime, real time, each wait bounded).

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use swr_cache::{Cache, ConfigChange, FetchError, Fetched, Fetcher, RemovalCause};
use tokio::time::sleep;

const TTL: Duration = Duration::from_secs(10);
const MAX_STALE: Duration = Duration::from_secs(30);
const INTERVAL: Duration = Duration::from_secs(1);

/// (Review #18.6.) Write times were nanoseconds in 58 bits: 9.1 years
/// into a cache's life every value was stale as it was written, and with
/// `max_stale` every `get` missed. Long-running services keep caches for
/// years.
#[tokio::test(start_paused = true)]
async fn a_cache_ten_years_old_judges_ages_as_a_new_one_does() {
    let cache: Cache<String, String> = Cache::builder()
        .ttl(TTL)
        .max_stale(MAX_STALE)
        .build()
        .unwrap();
    tokio::time::advance(Duration::from_secs(10 * 365 * 24 * 3600)).await;
    cache.insert("k".into(), "v".into());
    assert_eq!(cache.is_stale("k"), Some(false), "fresh as written");
    assert_eq!(cache.get("k").as_deref(), Some("v"));
    sleep(TTL + Duration::from_millis(1)).await;
    assert_eq!(cache.is_stale("k"), Some(true), "stale past its TTL");
    assert_eq!(
        cache.get("k").as_deref(),
        Some("v"),
        "served within max_stale"
    );
    let m = cache.metrics();
    assert_eq!((m.hits, m.stale_hits, m.misses), (2, 1, 0), "{m}");
}

/// Fails while `down`, else answers `"{key}-new"`.
fn flaky_cache(down: &Arc<AtomicBool>) -> Cache<String, String> {
    let down = Arc::clone(down);
    Cache::builder()
        .ttl(TTL)
        .max_stale(MAX_STALE)
        .refresh_interval(INTERVAL)
        .max_retry_backoff(Duration::from_secs(4))
        .fetcher(move |key: String| {
            let down = down.load(Ordering::SeqCst);
            async move {
                if down {
                    Err(std::io::Error::other("upstream down"))
                } else {
                    Ok(format!("{key}-new"))
                }
            }
        })
        .build()
        .unwrap()
}

#[tokio::test(start_paused = true)]
async fn past_ttl_plus_max_stale_a_value_is_not_served_until_refreshed() {
    let down = Arc::new(AtomicBool::new(true));
    let cache = flaky_cache(&down);
    cache.insert("k".into(), "old".into());
    cache.start().unwrap();

    sleep(TTL + INTERVAL).await;
    assert_eq!(cache.get("k").as_deref(), Some("old"), "stale: served");
    sleep(MAX_STALE).await;

    assert_eq!(cache.get("k"), None, "past the bound: a miss");
    assert_eq!(cache.peek("k"), None);
    assert!(!cache.contains_key("k"));
    assert_eq!(cache.is_stale("k"), Some(true), "still there, stale");
    assert_eq!(cache.len(), 1);
    let m = cache.metrics();
    assert_eq!((m.expired, m.misses, m.stale_hits), (1, 1, 1), "{m}");
    assert!(m.refresh_errors >= 3, "{m}");
    assert!(matches!(
        cache.get_or_fetch("k").await,
        Err(FetchError::Failed(_))
    ));

    down.store(false, Ordering::SeqCst);
    sleep(Duration::from_secs(5)).await;
    assert_eq!(
        cache.get("k").as_deref(),
        Some("k-new"),
        "refreshed: served"
    );
}

#[tokio::test(start_paused = true)]
async fn get_or_fetch_of_a_value_past_the_bound_fetches_it() {
    let down = Arc::new(AtomicBool::new(false));
    let cache = flaky_cache(&down);
    cache.insert("k".into(), "old".into());
    sleep(TTL + MAX_STALE + Duration::from_secs(1)).await;
    assert_eq!(cache.get("k"), None);

    assert_eq!(cache.get_or_fetch("k").await.unwrap(), "k-new");
    assert_eq!(cache.get("k").as_deref(), Some("k-new"));
}

#[tokio::test(start_paused = true)]
async fn max_stale_applies_without_a_refresher_and_changes_at_once() {
    let cache: Cache<u32, u32> = Cache::builder().ttl(TTL).build().unwrap();
    cache.insert(1, 1);
    sleep(TTL + MAX_STALE * 10).await;
    assert_eq!(cache.get(&1), Some(1), "no bound by default");

    cache
        .configure(ConfigChange::new().max_stale(MAX_STALE))
        .unwrap();
    assert_eq!(cache.get(&1), None);
    cache
        .configure(ConfigChange::new().max_stale(Duration::ZERO))
        .unwrap();
    cache.insert(2, 2);
    sleep(TTL + Duration::from_millis(1)).await;
    assert_eq!(cache.get(&2), None, "max_stale zero: stale is not served");
    cache
        .configure(ConfigChange::new().max_stale(None))
        .unwrap();
    assert_eq!(cache.get(&2), Some(2));
}

/// Answers `Gone` for keys starting with "gone", a value otherwise.
struct Source;

impl Fetcher<String, String> for Source {
    type Error = std::convert::Infallible;

    async fn fetch(
        &self,
        key: &String,
        _: Option<&String>,
    ) -> Result<Fetched<String>, Self::Error> {
        if key.starts_with("gone") {
            Ok(Fetched::Gone)
        } else {
            Ok(Fetched::Value(format!("{key}-new")))
        }
    }
}

type Heard = Arc<Mutex<Vec<(String, String, RemovalCause)>>>;

fn gone_cache(heard: &Heard) -> Cache<String, String> {
    let heard = Arc::clone(heard);
    Cache::builder()
        .ttl(TTL)
        .refresh_interval(INTERVAL)
        .fetcher_impl(Source)
        .eviction_listener(move |k, v, cause| heard.lock().unwrap().push((k, v, cause)))
        .build()
        .unwrap()
}

#[tokio::test(start_paused = true)]
async fn a_key_gone_at_its_source_is_removed_by_its_refresh() {
    let heard: Heard = Arc::default();
    let cache = gone_cache(&heard);
    cache.insert("gone-1".into(), "old".into());
    cache.insert("kept".into(), "old".into());
    cache.start().unwrap();
    sleep(TTL + INTERVAL * 2).await;

    assert_eq!(cache.get("gone-1"), None);
    assert_eq!(cache.get("kept").as_deref(), Some("kept-new"));
    let mut heard = heard.lock().unwrap().clone();
    heard.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        heard,
        [
            ("gone-1".to_owned(), "old".to_owned(), RemovalCause::Gone),
            ("kept".to_owned(), "old".to_owned(), RemovalCause::Replaced)
        ]
    );
    let m = cache.metrics();
    assert_eq!((m.gone, m.invalidations, m.refreshes), (1, 1, 1), "{m}");
    assert_eq!(
        m.inserts - m.evictions - m.invalidations,
        cache.len() as u64
    );
}

#[tokio::test(start_paused = true)]
async fn get_or_fetch_and_refresh_of_a_gone_key_are_errors_and_cache_nothing() {
    let heard: Heard = Arc::default();
    let cache = gone_cache(&heard);
    assert!(matches!(
        cache.get_or_fetch("gone-absent").await,
        Err(FetchError::Gone)
    ));
    assert!(!cache.contains_key("gone-absent"));

    cache.insert("gone-cached".into(), "old".into());
    assert!(matches!(
        cache.refresh("gone-cached").await,
        Err(FetchError::Gone)
    ));
    assert!(!cache.contains_key("gone-cached"));
    assert_eq!(heard.lock().unwrap().len(), 1);
    assert_eq!(cache.metrics().gone, 2);
}

/// A `Gone` answer removes only the value it was fetched for: a write that
/// landed meanwhile stands.
#[tokio::test(start_paused = true)]
async fn a_gone_answer_leaves_a_newer_write_alone() {
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let calls = Arc::new(AtomicUsize::new(0));
    struct Gated(Arc<tokio::sync::Semaphore>, Arc<AtomicUsize>);
    impl Fetcher<String, String> for Gated {
        type Error = std::convert::Infallible;
        async fn fetch(
            &self,
            _: &String,
            _: Option<&String>,
        ) -> Result<Fetched<String>, Self::Error> {
            self.1.fetch_add(1, Ordering::SeqCst);
            self.0.acquire().await.unwrap().forget();
            Ok(Fetched::Gone)
        }
    }
    let cache: Cache<String, String> = Cache::builder()
        .ttl(TTL)
        .fetcher_impl(Gated(Arc::clone(&gate), Arc::clone(&calls)))
        .build()
        .unwrap();
    cache.insert("k".into(), "old".into());
    let refresh = tokio::spawn({
        let cache = cache.clone();
        async move { cache.refresh("k").await }
    });
    sleep(Duration::from_millis(1)).await;
    assert_eq!(calls.load(Ordering::SeqCst), 1);

    cache.insert("k".into(), "newer".into());
    gate.add_permits(1);
    assert!(matches!(refresh.await.unwrap(), Err(FetchError::Gone)));
    assert_eq!(cache.get("k").as_deref(), Some("newer"));
}

/// Polls `done` every millisecond, in real time, until it holds; fails
/// after 30 s (a stuck clock).
fn eventually(what: &str, mut done: impl FnMut() -> bool) {
    let started = std::time::Instant::now();
    while !done() {
        assert!(started.elapsed() < Duration::from_secs(30), "{what}");
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// The threads of this process named as the clock's keeper names its own
/// (Linux: `/proc/self/task/*/comm`).
#[cfg(target_os = "linux")]
fn keepers() -> usize {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("comm")).ok())
        .filter(|name| name.trim_end() == "swr-cache-clock")
        .count()
}

/// In a multi-thread runtime and without a refresher, a thread keeps the
/// coarse clock that reads judge staleness by (no clock read on a hit): it
/// starts when `configure` gives the cache a TTL (as it does with one given
/// at `build`), values go stale by it at their TTL (never before), and it
/// ends with the cache. The runtime's timers are not needed.
#[cfg(target_os = "linux")]
#[test]
fn in_a_multi_thread_runtime_a_keeper_ticks_the_clock_and_ends_with_the_cache() {
    // No `enable_time`: the keeper must not need the runtime's timers.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .build()
        .unwrap();
    let _inside = runtime.enter();
    let before = keepers();
    let cache: Cache<u32, u32> = Cache::builder().ttl(None).build().unwrap();
    assert_eq!(keepers(), before, "no TTL, no keeper");
    let ttl = Duration::from_millis(64); // a tick a millisecond
    cache.configure(ConfigChange::new().ttl(ttl)).unwrap();
    eventually("no keeper for a TTL given", || keepers() == before + 1);
    cache.insert(1, 1);
    let written = std::time::Instant::now();
    eventually("never stale: the clock is not kept", || {
        assert_eq!(cache.get(&1), Some(1));
        cache.metrics().stale_hits > 0
    });
    assert!(
        written.elapsed() >= ttl - Duration::from_millis(1),
        "stale before its TTL"
    );
    drop(cache);
    eventually("the keeper outlived its cache", || keepers() == before);
}

/// (Review.) A keeper on a runtime nobody drives would freeze the time
/// reads judge by: built in a current-thread runtime outside `block_on`,
/// the cache reads the precise clock instead, and values go stale and past
/// `max_stale` on time.
#[test]
fn a_cache_built_in_a_runtime_not_driven_still_ages_its_values() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let cache: Cache<u32, u32> = {
        let _inside = runtime.enter();
        Cache::builder()
            .ttl(Duration::from_millis(20))
            .max_stale(Duration::from_millis(20))
            .build()
            .unwrap()
    };
    cache.insert(1, 1);
    eventually("served long past ttl + max_stale", || {
        cache.get(&1).is_none()
    });
    assert_eq!(cache.metrics().expired, 1);
}
