//! How stale a value may get: `max_stale` bounds how long past the TTL a
//! value is served while its refreshes fail, a fetcher answering
//! `Fetched::Gone` removes the key, and without a refresher the coarse
//! clock's keeper judges staleness. On tokio's paused clock, but for the
//! keeper's thread (real time, under a watchdog).

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use swr_cache::{Cache, ConfigChange, FetchError, Fetched, Fetcher, RemovalCause};
use tokio::time::sleep;

const TTL: Duration = Duration::from_secs(10);
const MAX_STALE: Duration = Duration::from_secs(30);
const INTERVAL: Duration = Duration::from_secs(1);

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
    // Reads judge staleness by the coarse clock, which its keeper ticks
    // every TTL / 64: up to one tick late.
    sleep(TTL + 2 * (TTL / 64)).await;
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

/// One tick of the coarse clock for `TTL`.
const TICK: Duration = Duration::from_nanos(TTL.as_nanos() as u64 / 64);

/// Without a refresher, reads still judge staleness (by the coarse clock,
/// which its keeper ticks: no clock read on a hit), never early and at most
/// a tick late.
#[tokio::test(start_paused = true)]
async fn without_a_refresher_the_keeper_makes_values_stale_on_time() {
    let cache: Cache<u32, u32> = Cache::builder().ttl(TTL).build().unwrap();
    cache.insert(1, 1);
    sleep(TTL - TICK).await;
    assert_eq!(cache.get(&1), Some(1));
    assert_eq!(cache.metrics().stale_hits, 0, "not stale before the TTL");
    sleep(3 * TICK).await;
    assert_eq!(cache.get(&1), Some(1));
    assert_eq!(cache.metrics().stale_hits, 1, "stale within a tick of it");
}

/// The keeper is a task on the cache's runtime that ends with the cache,
/// and one starts when `configure` gives a cache its first TTL.
#[tokio::test(start_paused = true)]
async fn the_keeper_ends_with_the_cache_and_starts_with_a_ttl() {
    let tasks = || {
        tokio::runtime::Handle::current()
            .metrics()
            .num_alive_tasks()
    };
    let offline: Cache<u32, u32> = Cache::builder().ttl(None).build().unwrap();
    assert_eq!(tasks(), 0, "no TTL, no keeper");
    offline.configure(ConfigChange::new().ttl(TTL)).unwrap();
    assert_eq!(tasks(), 1, "a TTL given: a keeper");
    offline.insert(1, 1);
    sleep(TTL + 2 * TICK).await;
    assert_eq!(offline.is_stale(&1), Some(true));
    assert_eq!(offline.get(&1), Some(1));
    assert_eq!(offline.metrics().stale_hits, 1);
    drop(offline);
    sleep(2 * TICK).await;
    assert_eq!(tasks(), 0, "the keeper ended with the cache");
}

/// Outside any runtime the keeper is a thread of its own.
#[test]
fn outside_a_runtime_a_thread_keeps_the_clock() {
    let ttl = Duration::from_millis(64); // ticks every millisecond
    let cache: Cache<u32, u32> = Cache::builder().ttl(ttl).build().unwrap();
    cache.insert(1, 1);
    let started = std::time::Instant::now();
    // Real time: poll until the read judges the value stale, or give up.
    while cache.metrics().stale_hits == 0 {
        assert_eq!(cache.get(&1), Some(1));
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "never stale: the clock is not kept"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(started.elapsed() >= ttl, "stale before its TTL");
}
