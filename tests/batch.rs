//! Batched fetches (issue #19): the refresher sends due keys in batches,
//! read-through misses within a window share a call, a key left out of an
//! answer is a failed fetch of that key, an error fails every key. All on
//! tokio's paused clock.

use std::collections::HashSet;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use swr_cache::{BatchFetcher, Cache, ConfigError, FetchError, Fetched};
use tokio::time::{Instant, sleep};

#[path = "support/watchdog.rs"]
mod watchdog;

const INTERVAL: Duration = Duration::from_secs(1);
const TTL: Duration = Duration::from_secs(10);

/// Records the keys of every call, in order.
#[derive(Clone, Default)]
struct Calls(Arc<Mutex<Vec<Vec<u64>>>>);

impl Calls {
    fn count(&self) -> usize {
        self.0.lock().unwrap().len()
    }

    fn largest(&self) -> usize {
        self.0
            .lock()
            .unwrap()
            .iter()
            .map(Vec::len)
            .max()
            .unwrap_or(0)
    }

    /// How many calls asked for `key`.
    fn asked_for(&self, key: u64) -> usize {
        let calls = self.0.lock().unwrap();
        calls.iter().filter(|keys| keys.contains(&key)).count()
    }

    /// A batch fetcher that logs each call, takes `delay` (or yields once),
    /// and answers `value(key)` for every key but those in `left_out`.
    fn fetcher(
        &self,
        value: fn(u64) -> u64,
        left_out: &'static [u64],
        delay: Duration,
    ) -> impl Fn(Vec<u64>) -> Answer + Send + Sync + 'static {
        let calls = self.clone();
        move |keys| {
            calls.0.lock().unwrap().push(keys.clone());
            Box::pin(async move {
                if delay.is_zero() {
                    tokio::task::yield_now().await;
                } else {
                    sleep(delay).await;
                }
                Ok(keys
                    .into_iter()
                    .filter(|key| !left_out.contains(key))
                    .map(|key| (key, value(key)))
                    .collect())
            })
        }
    }
}

/// What a test's batch fetcher returns.
type Answer = Pin<Box<dyn Future<Output = Result<Vec<(u64, u64)>, std::io::Error>> + Send>>;

fn ten_and_one(key: u64) -> u64 {
    key * 10 + 1
}

fn same(key: u64) -> u64 {
    key
}

fn times_three(key: u64) -> u64 {
    key * 3
}

fn plus_one(key: u64) -> u64 {
    key + 1
}

/// A cache whose batch fetcher answers `key * 10 + 1` for every key but
/// those in `left_out`, logging each call.
fn batching_cache(calls: &Calls, max_batch: usize, left_out: &'static [u64]) -> Cache<u64, u64> {
    Cache::builder()
        .max_size(4_000)
        .ttl(TTL)
        .refresh_interval(INTERVAL)
        .refresh_on_read(false)
        .max_retry_backoff(Duration::from_secs(60))
        // Two calls at a time: whole batches of keys, not two keys.
        .max_concurrent_refreshes(2)
        .batch_fetcher(calls.fetcher(ten_and_one, left_out, Duration::ZERO))
        .max_batch(max_batch)
        .build()
        .unwrap()
}

/// Waits (on the paused clock) until `done`, or fails after `limit`.
async fn wait_until(limit: Duration, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < limit, "not done within {limit:?}");
        sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(start_paused = true)]
async fn a_batch_fetcher_refreshes_1000_stale_keys_in_ceil_1000_over_max_batch_calls() {
    let calls = Calls::default();
    let cache = batching_cache(&calls, 64, &[]);
    for key in 0..1_000 {
        cache.insert(key, key);
    }
    cache.start().unwrap();
    sleep(TTL).await;
    wait_until(Duration::from_secs(10), || {
        cache.metrics().refreshes == 1_000
    })
    .await;

    assert!((0..1_000).all(|key| cache.peek(&key) == Some(key * 10 + 1)));
    let floor = 1_000usize.div_ceil(64);
    assert!(
        calls.count() <= floor + 3,
        "{} calls for 1,000 keys, against {floor}",
        calls.count()
    );
    assert!(calls.largest() <= 64, "a call of {} keys", calls.largest());
    let asked: HashSet<u64> = calls.0.lock().unwrap().iter().flatten().copied().collect();
    assert_eq!(asked.len(), 1_000, "every key fetched");
    cache.validate();
}

#[tokio::test(start_paused = true)]
async fn read_through_misses_within_the_window_share_one_call() {
    let calls = Calls::default();
    let cache = batching_cache(&calls, 64, &[]);
    let started = Instant::now();
    let got = fetch_all(&cache, 0..10).await;
    assert_eq!(calls.count(), 1, "{:?}", calls.0.lock().unwrap());
    for (key, got) in got.into_iter().enumerate() {
        assert_eq!(got.unwrap(), key as u64 * 10 + 1);
    }
    // The call started once the window (1 ms) had passed, and no later.
    assert!(started.elapsed() <= Duration::from_millis(2));

    // A miss after the call is a call of its own.
    assert_eq!(cache.get_or_fetch(&99).await.unwrap(), 991);
    assert_eq!(calls.count(), 2);
    cache.validate();
}

#[tokio::test(start_paused = true)]
async fn a_batch_goes_when_its_window_closes_though_the_fetch_that_opened_it_was_dropped() {
    let calls = Calls::default();
    let cache = Cache::builder()
        .batch_fetcher(calls.fetcher(ten_and_one, &[], Duration::ZERO))
        .batch_window(Duration::from_millis(10))
        .build()
        .unwrap();
    let opened = Instant::now();
    // Opens the batch, then is dropped before its window closes.
    let gave_up = tokio::time::timeout(Duration::from_millis(2), cache.get_or_fetch(&1)).await;
    assert!(gave_up.is_err());
    assert_eq!(cache.get_or_fetch(&2).await.unwrap(), 21);
    let took = opened.elapsed();
    assert!(took <= Duration::from_millis(11), "{took:?}");
    let mut asked = calls.0.lock().unwrap().clone();
    asked.iter_mut().for_each(|keys| keys.sort_unstable());
    assert_eq!(asked, [vec![1, 2]]);
}

#[tokio::test(start_paused = true)]
async fn a_key_fenced_while_it_waits_is_asked_for_once_and_both_fetches_answered() {
    let calls = Calls::default();
    let cache = batching_cache(&calls, 64, &[]);
    let first = tokio::spawn({
        let cache = cache.clone();
        async move { cache.get_or_fetch(&1).await }
    });
    tokio::task::yield_now().await; // the first fetch joins the batch
    // Fences the first flight: the next miss starts a second one, whose
    // fetch joins the same batch.
    cache.invalidate(&1);
    let second = cache.get_or_fetch(&1).await;
    assert_eq!(second.unwrap(), 11);
    assert_eq!(first.await.unwrap().unwrap(), 11);
    assert_eq!(*calls.0.lock().unwrap(), [vec![1]]);
    assert_eq!(cache.peek(&1), Some(11), "the unfenced flight stored it");
}

#[tokio::test(start_paused = true)]
async fn a_full_batch_is_called_without_waiting_for_its_window() {
    let calls = Calls::default();
    let cache = Cache::builder()
        .batch_fetcher(calls.fetcher(same, &[], Duration::ZERO))
        .max_batch(4)
        .batch_window(Duration::from_secs(3600))
        .build()
        .unwrap();
    let started = Instant::now();
    let got = fetch_all(&cache, 0..8).await;
    assert_eq!(
        got.into_iter().map(Result::unwrap).collect::<Vec<_>>(),
        (0..8).collect::<Vec<_>>()
    );
    assert_eq!(calls.count(), 2);
    assert_eq!(calls.largest(), 4);
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "waited for the window"
    );
}

#[tokio::test(start_paused = true)]
async fn a_key_the_answer_leaves_out_is_kept_stale_and_backs_off() {
    let calls = Calls::default();
    let cache = batching_cache(&calls, 64, &[0]);
    for key in 0..10 {
        cache.insert(key, key);
    }
    cache.start().unwrap();
    sleep(TTL).await;
    wait_until(Duration::from_secs(5), || cache.metrics().refreshes == 9).await;
    assert_eq!(cache.peek(&0), Some(0), "the stale value is kept");
    assert_eq!(cache.is_stale(&0), Some(true));
    assert!((1..10).all(|key| cache.peek(&key) == Some(key * 10 + 1)));
    wait_until(Duration::from_secs(5), || {
        cache.refresher_state().backing_off == 1
    })
    .await;

    // Retried after a backoff that doubles from the refresh interval
    // (1, 2, 4, 8, 16 s, jittered): a handful of calls in 30 s, where a key
    // tried at every look (each second) would be in thirty.
    sleep(Duration::from_secs(30)).await;
    let asked = calls.asked_for(0);
    assert!(
        (3..=8).contains(&asked),
        "key 0 asked for {asked} times in 30 s"
    );
    assert_eq!(cache.peek(&0), Some(0));
    assert!(
        cache.metrics().refresh_errors >= asked as u64,
        "each left-out answer is a failed refresh"
    );
    cache.validate();
}

#[tokio::test(start_paused = true)]
async fn a_load_the_answer_leaves_out_fails_with_left_out() {
    let calls = Calls::default();
    let cache = batching_cache(&calls, 64, &[7]);
    let (left_out, found) = tokio::join!(cache.get_or_fetch(&7), cache.get_or_fetch(&8));
    assert!(matches!(left_out, Err(FetchError::LeftOut)), "{left_out:?}");
    assert_eq!(found.unwrap(), 81);
    assert_eq!(calls.count(), 1);
    assert!(!cache.contains_key(&7));
}

#[tokio::test(start_paused = true)]
async fn an_error_fails_every_key_of_the_batch() {
    let cache: Cache<u64, u64> = Cache::builder()
        .batch_fetcher(|_keys: Vec<u64>| async move {
            Err::<Vec<(u64, u64)>, _>(std::io::Error::other("upstream down"))
        })
        .build()
        .unwrap();
    let got = fetch_all(&cache, 0..5).await;
    for got in got {
        assert!(matches!(got, Err(FetchError::Failed(_))), "{got:?}");
    }
    assert!(cache.is_empty());
}

/// Each key asked for, with the cached value the fetcher was given.
type Seen = Arc<Mutex<Vec<(u64, Option<u64>)>>>;

/// Answers per key by the key: 1 unchanged, 2 gone, others a new value.
struct PerKey {
    seen: Seen,
}

impl BatchFetcher<u64, u64> for PerKey {
    type Error = std::convert::Infallible;

    async fn fetch_batch(
        &self,
        batch: Vec<(u64, Option<u64>)>,
    ) -> Result<Vec<(u64, Fetched<u64>)>, Self::Error> {
        self.seen.lock().unwrap().extend(batch.iter().copied());
        Ok(batch
            .into_iter()
            .map(|(key, _)| match key {
                1 => (key, Fetched::Unchanged),
                2 => (key, Fetched::Gone),
                _ => (key, Fetched::Value(key * 100)),
            })
            .collect())
    }
}

#[tokio::test(start_paused = true)]
async fn a_batch_fetcher_impl_sees_cached_values_and_answers_per_key() {
    let seen = Seen::default();
    let cache = Cache::builder()
        .ttl(TTL)
        .refresh_interval(INTERVAL)
        .refresh_on_read(false)
        .batch_fetcher_impl(PerKey { seen: seen.clone() })
        .build()
        .unwrap();
    for key in 1..=3 {
        cache.insert(key, key);
    }
    cache.start().unwrap();
    sleep(TTL).await;
    wait_until(Duration::from_secs(5), || cache.metrics().refreshes == 2).await;

    let mut seen = seen.lock().unwrap().clone();
    seen.sort_unstable();
    assert_eq!(seen, [(1, Some(1)), (2, Some(2)), (3, Some(3))]);
    assert_eq!(cache.peek(&1), Some(1), "unchanged: kept");
    assert_eq!(cache.is_stale(&1), Some(false), "and renewed");
    assert_eq!(cache.peek(&2), None, "gone: removed");
    assert_eq!(cache.peek(&3), Some(300));
    assert_eq!(cache.metrics().gone, 1);
    cache.validate();
}

#[tokio::test(start_paused = true)]
async fn a_call_is_dropped_once_every_key_gave_up_on_it() {
    struct Dropped(Arc<AtomicBool>);
    impl Drop for Dropped {
        fn drop(&mut self) {
            self.0.store(true, Ordering::SeqCst);
        }
    }
    let dropped = Arc::new(AtomicBool::new(false));
    let started = Arc::new(AtomicUsize::new(0));
    let cache: Cache<u64, u64> = Cache::builder()
        .refresh_timeout(Duration::from_secs(1))
        .batch_fetcher({
            let (dropped, started) = (dropped.clone(), started.clone());
            move |_keys: Vec<u64>| {
                let guard = Dropped(dropped.clone());
                started.fetch_add(1, Ordering::SeqCst);
                async move {
                    let _guard = guard;
                    std::future::pending::<()>().await;
                    Ok::<Vec<(u64, u64)>, std::io::Error>(Vec::new())
                }
            }
        })
        .build()
        .unwrap();
    let got = cache.get_or_fetch(&1).await;
    assert!(matches!(got, Err(FetchError::TimedOut(_))), "{got:?}");
    assert_eq!(started.load(Ordering::SeqCst), 1);
    // The call's task sees its only key gone at its next poll.
    wait_until(Duration::from_secs(1), || dropped.load(Ordering::SeqCst)).await;
}

/// Many tasks on four workers miss on overlapping keys while others are
/// removed: every caller gets its key's value and no call exceeds the
/// batch. Real time, under a watchdog.
#[test]
fn concurrent_misses_on_many_workers_each_get_their_own_key() {
    watchdog::within("concurrent batched misses", || {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(4)
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let calls = Calls::default();
            let cache = Cache::builder()
                .max_size(10_000)
                .batch_fetcher(calls.fetcher(times_three, &[], Duration::ZERO))
                .max_batch(16)
                .build()
                .unwrap();
            let mut tasks = tokio::task::JoinSet::new();
            for task in 0..32u64 {
                let cache = cache.clone();
                tasks.spawn(async move {
                    for round in 0..200u64 {
                        let key = (task * 7 + round * 13) % 500;
                        assert_eq!(cache.get_or_fetch(&key).await.unwrap(), key * 3);
                        if round % 5 == 0 {
                            cache.invalidate(&((key + 1) % 500));
                        }
                    }
                });
            }
            while let Some(done) = tasks.join_next().await {
                done.unwrap();
            }
            assert!(calls.largest() <= 16, "a call of {} keys", calls.largest());
            cache.validate();
        });
    });
}

#[test]
fn max_batch_zero_is_refused() {
    let built = Cache::<u64, u64>::builder()
        .batch_fetcher(|keys: Vec<u64>| async move {
            Ok::<_, std::io::Error>(keys.into_iter().map(|k| (k, k)).collect::<Vec<_>>())
        })
        .max_batch(0)
        .build();
    assert_eq!(built.err(), Some(ConfigError::ZeroMaxBatch));
}

/// `get_or_fetch` of every key at once, each in a task of its own; the
/// answers by key.
async fn fetch_all(
    cache: &Cache<u64, u64>,
    keys: std::ops::Range<u64>,
) -> Vec<Result<u64, FetchError>> {
    let mut tasks = tokio::task::JoinSet::new();
    for key in keys.clone() {
        let cache = cache.clone();
        tasks.spawn(async move { (key, cache.get_or_fetch(&key).await) });
    }
    let mut got = tasks.join_all().await;
    got.sort_by_key(|(key, _)| *key);
    got.into_iter().map(|(_, got)| got).collect()
}

#[tokio::test(start_paused = true)]
async fn a_batch_fetchers_gone_is_remembered_with_a_negative_ttl() {
    let seen = Seen::default();
    let cache = Cache::builder()
        .batch_fetcher_impl(PerKey { seen: seen.clone() })
        .negative_ttl(Duration::from_secs(30))
        .build()
        .unwrap();
    let (gone, found) = tokio::join!(cache.get_or_fetch(&2), cache.get_or_fetch(&3));
    assert!(matches!(gone, Err(FetchError::Gone)), "{gone:?}");
    assert_eq!(found.unwrap(), 300);
    assert!(matches!(
        cache.get_or_fetch(&2).await,
        Err(FetchError::Gone)
    ));
    assert_eq!(seen.lock().unwrap().len(), 2, "2 was asked for once");
    assert_eq!(cache.metrics().negative_hits, 1);
}

#[tokio::test(start_paused = true)]
async fn set_batch_fetcher_swaps_in_a_batch_fetcher_with_the_builders_batching() {
    let calls = Calls::default();
    let cache: Cache<u64, u64> = Cache::builder()
        .fetcher(|key: u64| async move { Ok::<_, std::io::Error>(key) })
        .max_batch(2)
        .build()
        .unwrap();
    assert_eq!(
        cache.get_or_fetch(&1).await.unwrap(),
        1,
        "the one-key fetcher"
    );
    cache.set_batch_fetcher(calls.fetcher(ten_and_one, &[], Duration::ZERO));
    let got = fetch_all(&cache, 10..14).await;
    assert_eq!(
        got.into_iter().map(Result::unwrap).collect::<Vec<_>>(),
        [101, 111, 121, 131]
    );
    assert_eq!(calls.count(), 2, "four keys in calls of max_batch 2");
    assert_eq!(calls.largest(), 2);
}

/// Answers like a one-key fetcher of an upstream that holds `key * 100`
/// for every key: `Unchanged` to the value the fetch was given if it is
/// that, else the value.
struct Versioned;

impl BatchFetcher<u64, u64> for Versioned {
    type Error = std::convert::Infallible;

    async fn fetch_batch(
        &self,
        batch: Vec<(u64, Option<u64>)>,
    ) -> Result<Vec<(u64, Fetched<u64>)>, Self::Error> {
        Ok(batch
            .into_iter()
            .map(|(key, current)| match current {
                Some(value) if value == key * 100 => (key, Fetched::Unchanged),
                _ => (key, Fetched::Value(key * 100)),
            })
            .collect())
    }
}

/// A key's two fetches in one batch (the first fenced while it waited)
/// are asked with one cached value, which need not be the second's: the
/// first may join after it (its driver on a runtime driven later). An
/// `Unchanged` answered to that value must reach the other fetch as the
/// value it vouches for, not as "keep yours": a load then failed with
/// `NothingToKeep`, and a refresh renewed a value the upstream never had.
/// Each fetch's place in the batch is forced by driving two runtimes in
/// turn.
#[test]
fn a_load_batched_after_a_fenced_refresh_of_its_key_gets_the_value() {
    watchdog::within("a key twice in a batch", || {
        let runtime = || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
        };
        let (late, loads) = (runtime(), runtime());
        let cache: Cache<u64, u64> = Cache::builder()
            .batch_fetcher_impl(Versioned)
            // Called when both fetches joined: no timing.
            .max_batch(2)
            .batch_window(Duration::from_secs(3600))
            .build()
            .unwrap();
        cache.insert(1, 100);
        // A refresh of 1 from 100 claims its flight and spawns its driver
        // on `late`, which is not driven until later.
        let mut refresh = Box::pin({
            let cache = cache.clone();
            async move { cache.refresh(&1).await }
        });
        let waits = late.block_on(std::future::poll_fn(|cx| {
            std::task::Poll::Ready(refresh.as_mut().poll(cx).is_pending())
        }));
        assert!(waits, "the refresh waits for its driver");
        // Fences that flight; a load of 1 (from nothing) joins the batch.
        cache.invalidate(&1);
        let load = loads.spawn({
            let cache = cache.clone();
            async move { cache.get_or_fetch(&1).await }
        });
        loads.block_on(async {
            for _ in 0..10 {
                tokio::task::yield_now().await;
            }
        });
        // The refresh's fetch joins second (with 100): the batch is called.
        late.block_on(async {
            let _ = refresh.await;
        });
        let loaded = loads.block_on(load).unwrap();
        assert_eq!(loaded.unwrap(), 100);
        assert_eq!(cache.peek(&1), Some(100));
    });
}

/// The adaptive limit counts calls, so it is judged once per window of
/// that many calls' keys (one round trip at full use): slow start doubles
/// it once per round trip, as without batches. Judged per window of that
/// many keys, it doubled `max_batch` times as fast: after one round trip
/// of 4 calls of 4 keys, 16 calls, not 8.
#[tokio::test(start_paused = true)]
async fn the_adaptive_limit_doubles_once_per_round_trip_of_batches() {
    let calls = Calls::default();
    let cache = Cache::builder()
        .max_size(4_000)
        .ttl(TTL)
        .refresh_interval(INTERVAL)
        .refresh_on_read(false)
        .adaptive_refreshes(4, 256)
        .batch_fetcher(calls.fetcher(plus_one, &[], Duration::from_millis(100)))
        .max_batch(4)
        .build()
        .unwrap();
    for key in 0..1_000 {
        cache.insert(key, key);
    }
    cache.start().unwrap();
    sleep(TTL).await;
    // The first round trip's 16 keys are answered at one instant.
    wait_until(Duration::from_secs(5), || cache.metrics().refreshes > 0).await;
    assert_eq!(cache.metrics().refreshes, 16, "one round trip of 4 calls");
    assert_eq!(calls.largest(), 4);
    assert_eq!(cache.refresher_state().limit, 8, "doubled once");
}
