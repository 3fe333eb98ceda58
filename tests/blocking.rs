//! The blocking path, for code without async and without a tokio runtime:
//! `get_or_insert_with` (a single-flight read-through across threads) and
//! the refresher on a thread of its own with a blocking fetcher. Real
//! threads and time, every test under a watchdog; no test here makes a
//! runtime of its own.

use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Barrier, mpsc};
use std::time::Duration;

use swr_cache::Cache;

#[path = "support/watchdog.rs"]
mod watchdog;
use watchdog::within;

fn plain() -> Cache<String, String> {
    Cache::builder().max_size(1000).build().unwrap()
}

#[test]
fn threads_missing_one_key_make_one_load_and_share_its_value() {
    within("single flight", || {
        let cache = plain();
        let loads = Arc::new(AtomicUsize::new(0));
        let start = Arc::new(Barrier::new(8));
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let (cache, loads, start) = (cache.clone(), loads.clone(), start.clone());
                std::thread::spawn(move || {
                    start.wait();
                    cache.get_or_insert_with("k", |key| {
                        loads.fetch_add(1, Ordering::SeqCst);
                        std::thread::sleep(Duration::from_millis(50));
                        Ok::<_, String>(format!("{key}-loaded"))
                    })
                })
            })
            .collect();
        for thread in threads {
            assert_eq!(thread.join().unwrap().unwrap(), "k-loaded");
        }
        assert_eq!(loads.load(Ordering::SeqCst), 1);
        assert_eq!(cache.get("k").as_deref(), Some("k-loaded"));
        let m = cache.metrics();
        assert_eq!((m.loads, m.inserts), (1, 1), "{m}");
    });
}

/// Runs a load of "k" on another thread that waits, inside its loader, for
/// `release`; returns once the loader is running, with the thread.
fn loading(
    cache: &Cache<String, String>,
    outcome: Result<&'static str, &'static str>,
) -> (
    mpsc::Sender<()>,
    std::thread::JoinHandle<Result<String, String>>,
) {
    let (release, released) = mpsc::channel::<()>();
    let (running, is_running) = mpsc::channel::<()>();
    let cache = cache.clone();
    let thread = std::thread::spawn(move || {
        cache.get_or_insert_with("k", |_| {
            running.send(()).unwrap();
            released.recv().unwrap();
            match outcome {
                Ok(value) => Ok(value.to_owned()),
                Err("panic") => panic!("loader bug"),
                Err(error) => Err(error.to_owned()),
            }
        })
    });
    is_running.recv().unwrap();
    (release, thread)
}

/// A second caller of "k" while `loading` holds it: returns once that
/// caller has missed, and checks that its loader does not run while the
/// first one is still loading (it waits instead).
fn waiting(cache: &Cache<String, String>) -> std::thread::JoinHandle<Result<String, String>> {
    let called = Arc::new(AtomicUsize::new(0));
    let misses = cache.metrics().misses;
    let waiter = std::thread::spawn({
        let (cache, called) = (cache.clone(), Arc::clone(&called));
        move || {
            cache.get_or_insert_with("k", |_| {
                called.fetch_add(1, Ordering::SeqCst);
                Ok::<_, String>("second".into())
            })
        }
    });
    while cache.metrics().misses == misses {
        std::thread::yield_now();
    }
    // Were it not waiting, its loader would run now, beside the first.
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(called.load(Ordering::SeqCst), 0, "two loads at once");
    waiter
}

#[test]
fn a_failed_load_is_not_cached_and_the_next_caller_loads_its_own() {
    within("failed load", || {
        let cache = plain();
        let (release, first) = loading(&cache, Err("upstream down"));
        let waiter = waiting(&cache);
        release.send(()).unwrap();
        assert_eq!(first.join().unwrap(), Err("upstream down".to_owned()));
        assert_eq!(waiter.join().unwrap().unwrap(), "second");
        assert_eq!(cache.get("k").as_deref(), Some("second"));
        assert_eq!(cache.metrics().load_errors, 1);
    });
}

#[test]
fn a_panicking_load_frees_the_key_for_the_next_caller() {
    within("panicking load", || {
        let cache = plain();
        let (release, first) = loading(&cache, Err("panic"));
        let waiter = waiting(&cache);
        release.send(()).unwrap();
        assert!(
            first.join().is_err(),
            "the loader's panic reaches its caller"
        );
        assert_eq!(waiter.join().unwrap().unwrap(), "second");
        let again = std::panic::catch_unwind(AssertUnwindSafe(|| {
            cache.get_or_insert_with("k", |_| Err::<String, _>("unused"))
        }));
        assert_eq!(again.unwrap().unwrap(), "second", "cached");
    });
}

#[test]
fn a_load_across_an_invalidate_is_returned_but_not_cached() {
    within("fenced load", || {
        let cache = plain();
        let (release, first) = loading(&cache, Ok("before"));
        assert!(!cache.invalidate("k"));
        release.send(()).unwrap();
        assert_eq!(first.join().unwrap().unwrap(), "before");
        assert!(!cache.contains_key("k"), "fenced: not cached");
        assert_eq!(cache.metrics().discarded, 1);
        let after = cache.get_or_insert_with("k", |_| Ok::<_, String>("after".into()));
        assert_eq!(after.unwrap(), "after", "a load of its own");
    });
}

#[test]
fn a_loader_that_asks_for_its_own_key_does_not_wait_for_itself() {
    within("reentrant load", || {
        let cache = plain();
        let outer = cache.get_or_insert_with("k", |_| {
            let inner = cache.get_or_insert_with("k", |_| Ok::<_, String>("inner".into()))?;
            Ok::<_, String>(format!("outer of {inner}"))
        });
        assert_eq!(outer.unwrap(), "inner", "the inner load was stored first");
        assert_eq!(cache.get("k").as_deref(), Some("inner"));
    });
}

/// (Review #18.1.) The inner load of a reentrant `get_or_insert_with`
/// began before an invalidate that landed while it ran: the invalidate
/// must fence it, as it fences the outer load it belongs to. It loaded
/// under a fresh, unset fence, and its value was cached after the
/// invalidate returned.
#[test]
fn an_invalidate_during_a_reentrant_load_fences_the_inner_load_too() {
    within("reentrant fenced load", || {
        let cache = plain();
        let outer = cache.get_or_insert_with("k", |_| {
            let inner = cache.get_or_insert_with("k", |_| {
                assert!(!cache.invalidate("k"), "nothing cached yet");
                Ok::<_, String>("inner".into())
            })?;
            Ok::<_, String>(format!("outer of {inner}"))
        });
        assert_eq!(outer.unwrap(), "outer of inner", "returned, not cached");
        assert_eq!(cache.get("k"), None, "a load begun before the invalidate");
        assert_eq!(cache.metrics().discarded, 2, "both loads fenced");
    });
}

#[test]
fn a_disabled_cache_loads_and_stores_nothing() {
    let cache: Cache<String, String> = Cache::builder().max_size(0).build().unwrap();
    let value = cache.get_or_insert_with("k", |_| Ok::<_, String>("v".into()));
    assert_eq!(value.unwrap(), "v");
    assert!(cache.is_empty());
}

#[test]
fn the_refresher_on_its_own_thread_refreshes_with_a_blocking_fetcher() {
    within("refresher thread", || {
        let calls = Arc::new(AtomicUsize::new(0));
        let counted = Arc::clone(&calls);
        let cache: Cache<String, String> = Cache::builder()
            .ttl(Duration::from_millis(50))
            .refresh_interval(Duration::from_millis(10))
            .blocking_fetcher(move |key: &String| {
                counted.fetch_add(1, Ordering::SeqCst);
                std::thread::sleep(Duration::from_millis(5));
                Ok::<_, std::io::Error>(format!("{key}-refreshed"))
            })
            .build()
            .unwrap();
        cache.insert("k".into(), "old".into());
        cache.start_thread().unwrap();
        cache.start_thread().unwrap();
        assert!(cache.is_refreshing());
        while cache.peek("k").as_deref() != Some("k-refreshed") {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(calls.load(Ordering::SeqCst) >= 1);

        cache.shutdown();
        assert!(!cache.is_refreshing());
        let settled = calls.load(Ordering::SeqCst);
        std::thread::sleep(Duration::from_millis(200));
        assert!(
            calls.load(Ordering::SeqCst) <= settled + 1,
            "no refreshes after shutdown but one under way"
        );
        drop(cache);
    });
}

#[test]
fn a_blocking_fetcher_panic_is_caught_and_counted() {
    within("blocking fetcher panic", || {
        let cache: Cache<String, String> = Cache::builder()
            .ttl(Duration::from_millis(20))
            .refresh_interval(Duration::from_millis(5))
            .blocking_fetcher(|_key: &String| -> Result<String, std::io::Error> {
                panic!("fetcher bug")
            })
            .build()
            .unwrap();
        cache.insert("k".into(), "old".into());
        cache.start_thread().unwrap();
        while cache.metrics().refresh_errors == 0 {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(cache.get("k").as_deref(), Some("old"));
        assert!(cache.is_refreshing(), "the refresher survived the panic");
        drop(cache);
    });
}
