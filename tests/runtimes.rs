//! What must not depend on one caller's runtime being driven (review
//! #18.2): a runtime can be alive and idle for good (a current-thread
//! runtime outside `block_on`), with a cache's work parked in it: the
//! driver of a flight whose caller gave up, or the refresher. Callers that
//! join such a flight, the refresher's slot, and the ages every read
//! judges must go on regardless.
//!
//! Each test parks work in an idle runtime it keeps alive. Those that wait
//! for the cache to notice do so on tokio's paused clock where they can,
//! else in real time under the watchdog, polling for an outcome that does
//! not depend on timing.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use swr_cache::Cache;
use tokio::runtime::{Builder, Runtime};

#[path = "support/watchdog.rs"]
mod watchdog;
use watchdog::within;

/// A current-thread runtime that nothing will drive once `block_on`
/// returns.
fn idle_runtime() -> Runtime {
    Builder::new_current_thread().enable_all().build().unwrap()
}

/// A cache whose fetcher never answers its first call and answers
/// `"fresh {n}"` to the n-th after.
fn cache_stalling_once(ttl: Option<Duration>, calls: &Arc<AtomicUsize>) -> Cache<String, String> {
    let calls = Arc::clone(calls);
    Cache::builder()
        .ttl(ttl)
        .refresh_interval(Duration::from_millis(20))
        .max_retry_backoff(Duration::from_millis(40))
        .refresh_timeout(Duration::from_millis(100))
        .fetcher(move |_key: String| {
            let n = calls.fetch_add(1, Ordering::SeqCst);
            async move {
                if n == 0 {
                    std::future::pending::<()>().await;
                }
                Ok::<_, std::io::Error>(format!("fresh {n}"))
            }
        })
        .build()
        .unwrap()
}

/// Starts a fetch of "k" with `fetch` on `idle` and gives up on it, as a
/// caller with a timeout would: its flight's driver stays parked there.
fn strand_a_flight<F: Future>(idle: &Runtime, fetch: F) {
    let gave_up =
        idle.block_on(async { tokio::time::timeout(Duration::from_millis(10), fetch).await });
    assert!(gave_up.is_err(), "the first fetch never answers");
}

/// A caller that joins a flight whose driver is parked in an idle runtime
/// waited for ever. It now gives up on it after the fetch's timeout and as
/// long again, and starts a fetch of its own.
#[test]
fn a_caller_joining_a_flight_stranded_in_an_idle_runtime_gets_a_value() {
    within("stranded flight", || {
        let calls = Arc::new(AtomicUsize::new(0));
        let cache = cache_stalling_once(None, &calls);
        let idle = idle_runtime();
        strand_a_flight(&idle, cache.get_or_fetch("k"));

        let other = Builder::new_current_thread()
            .enable_all()
            .start_paused(true)
            .build()
            .unwrap();
        let value = other.block_on(cache.get_or_fetch("k")).unwrap();
        assert_eq!(value, "fresh 1");
        assert_eq!(cache.get("k").as_deref(), Some("fresh 1"));
        assert_eq!(calls.load(Ordering::SeqCst), 2);
        drop(idle);
    });
}

/// The refresher joined a stranded flight (a forced `refresh` its caller
/// gave up on) and its slot was never freed: the key was never refreshed
/// again (and had it been the breaker's probe, no fetch would ever start
/// again). It now lets the flight go and retries the key.
#[test]
fn the_refresher_gives_up_on_a_stranded_flight_and_refreshes_the_key() {
    within("refresher joined a stranded flight", || {
        let calls = Arc::new(AtomicUsize::new(0));
        let cache = cache_stalling_once(Some(Duration::from_millis(50)), &calls);
        cache.insert("k".into(), "old".into());
        let idle = idle_runtime();
        strand_a_flight(&idle, cache.refresh("k"));
        cache.start_thread().unwrap();
        while cache.peek("k").as_deref() == Some("old") {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(cache.peek("k").unwrap().starts_with("fresh"));
        cache.shutdown();
        drop(idle);
    });
}

/// A refresher started on a current-thread runtime that then sits idle
/// kept the coarse clock, and the clock stood still: values written later
/// were never judged stale, nor past `max_stale`. Only a runtime that is
/// always driven keeps the clock now.
#[test]
fn a_refresher_in_an_idle_runtime_does_not_stop_values_from_aging() {
    within("refresher in an idle runtime", || {
        let ttl = Duration::from_millis(50);
        let calls = Arc::new(AtomicUsize::new(0));
        let cache = cache_stalling_once(Some(ttl), &calls);
        cache
            .configure(swr_cache::ConfigChange::new().max_stale(Some(ttl)))
            .unwrap();
        let idle = idle_runtime();
        idle.block_on(async { cache.start().unwrap() });
        cache.insert("k".into(), "v".into());
        std::thread::sleep(ttl * 3);
        assert_eq!(cache.get("k"), None, "past ttl + max_stale: a miss");
        assert_eq!(cache.metrics().expired, 1);
        drop(idle);
    });
}
