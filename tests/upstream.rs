//! How the refresher treats its upstream: the number of fetches in flight
//! adapts (up to the cap on a healthy upstream, held near the knee of one
//! that slows under load), and an outage costs a few probes a second, with
//! everything released the moment the upstream is back. On tokio's paused
//! clock, with a simulated upstream.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use swr_cache::{BreakerState, Cache};
use tokio::time::{Instant, sleep};

const TTL: Duration = Duration::from_secs(10);
const INTERVAL: Duration = Duration::from_millis(100);

/// An upstream that counts calls and what is in flight, fails while
/// `down`, and takes `latency(in_flight)` per call.
#[derive(Clone)]
struct Upstream {
    calls: Arc<AtomicUsize>,
    in_flight: Arc<AtomicUsize>,
    peak: Arc<AtomicUsize>,
    /// The sum of in-flight counts seen by each call as it started.
    in_flight_sum: Arc<AtomicUsize>,
    down: Arc<AtomicBool>,
    latency: fn(usize) -> Duration,
}

impl Upstream {
    fn new(latency: fn(usize) -> Duration) -> Self {
        Self {
            calls: Arc::default(),
            in_flight: Arc::default(),
            peak: Arc::default(),
            in_flight_sum: Arc::default(),
            down: Arc::default(),
            latency,
        }
    }

    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    fn cache(&self, entries: usize) -> Cache<u64, u64> {
        let upstream = self.clone();
        let cache = Cache::builder()
            .max_size(entries * 2)
            .ttl(TTL)
            .refresh_interval(INTERVAL)
            .refresh_on_read(false)
            .fetcher(move |key: u64| {
                let upstream = upstream.clone();
                async move {
                    upstream.calls.fetch_add(1, Ordering::SeqCst);
                    let now = upstream.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
                    upstream.peak.fetch_max(now, Ordering::SeqCst);
                    upstream.in_flight_sum.fetch_add(now, Ordering::SeqCst);
                    sleep((upstream.latency)(now)).await;
                    upstream.in_flight.fetch_sub(1, Ordering::SeqCst);
                    if upstream.down.load(Ordering::SeqCst) {
                        Err(std::io::Error::other("upstream down"))
                    } else {
                        Ok(key + 1)
                    }
                }
            })
            .build()
            .unwrap();
        for key in 0..entries as u64 {
            cache.insert(key, key);
        }
        cache
    }
}

/// Waits until every key's value is the refreshed one; returns when.
async fn all_refreshed(cache: &Cache<u64, u64>, entries: usize) -> Instant {
    while cache.metrics().refreshes < entries as u64 {
        sleep(Duration::from_millis(1)).await;
    }
    let done = Instant::now();
    assert!((0..entries as u64).all(|k| cache.peek(&k) == Some(k + 1)));
    done
}

#[tokio::test(start_paused = true)]
async fn a_storm_on_a_healthy_upstream_runs_at_the_cap() {
    const ENTRIES: usize = 20_000;
    let upstream = Upstream::new(|_| Duration::from_millis(10));
    let cache = upstream.cache(ENTRIES);
    cache.start().unwrap();
    sleep(TTL).await;
    let stale_at = Instant::now();

    let done = all_refreshed(&cache, ENTRIES).await;

    // The floor: every entry through 256 slots, 10 ms each; plus the wait
    // for the next look.
    let floor = Duration::from_millis(10) * (ENTRIES as u32).div_ceil(256);
    let took = done - stale_at;
    assert!(
        took <= floor.mul_f64(1.3) + INTERVAL,
        "{took:?} against a floor of {floor:?}"
    );
    assert_eq!(upstream.peak.load(Ordering::SeqCst), 256);
    assert_eq!(upstream.calls(), ENTRIES);
}

#[tokio::test(start_paused = true)]
async fn an_upstream_that_slows_under_load_is_held_near_its_knee() {
    const ENTRIES: usize = 20_000;
    const KNEE: usize = 64;
    // 10 ms up to the knee; past it, slower with the square of the load,
    // so that more in flight means fewer answers a second.
    let upstream = Upstream::new(|n| {
        let over = (n as f64 / KNEE as f64).max(1.0);
        Duration::from_millis(10).mul_f64(over * over)
    });
    let cache = upstream.cache(ENTRIES);
    cache.start().unwrap();
    sleep(TTL).await;
    all_refreshed(&cache, ENTRIES).await;

    let mean = upstream.in_flight_sum.load(Ordering::SeqCst) as f64 / upstream.calls() as f64;
    assert!(
        (KNEE as f64 * 0.5..=KNEE as f64 * 1.5).contains(&mean),
        "mean in flight {mean:.1} against a knee of {KNEE}"
    );
}

#[tokio::test(start_paused = true)]
async fn an_outage_costs_a_few_probes_a_second_and_recovery_is_at_once() {
    const ENTRIES: usize = 1_000;
    let upstream = Upstream::new(|_| Duration::from_millis(10));
    let cache = upstream.cache(ENTRIES);
    cache.start().unwrap();
    upstream.down.store(true, Ordering::SeqCst);
    sleep(TTL).await;
    let calls_before = upstream.calls();

    sleep(Duration::from_secs(10)).await;
    let during = upstream.calls() - calls_before;
    assert!(during <= 500, "{during} calls in a 10 s outage");
    assert!(cache.metrics().refresh_errors > 0);

    upstream.down.store(false, Ordering::SeqCst);
    let recovered = Instant::now();
    let done = all_refreshed(&cache, ENTRIES).await;
    let bound = Duration::from_secs(1) + Duration::from_millis(10) * (ENTRIES as u32).div_ceil(256);
    assert!(
        done - recovered <= bound,
        "all fresh {:?} after recovery (bound {bound:?})",
        done - recovered
    );
    assert_eq!(cache.get(&0), Some(1));
}

/// `refresher_state` shows an outage as it happens: the breaker open (or
/// probing), every stale key queued, nothing answered since; then, once
/// the upstream is back, the breaker closed and the last answer recent.
#[tokio::test(start_paused = true)]
async fn the_refresher_state_shows_an_outage_and_the_recovery() {
    const ENTRIES: usize = 1_000;
    let upstream = Upstream::new(|_| Duration::from_millis(10));
    let cache = upstream.cache(ENTRIES);
    assert!(!cache.refresher_state().running);
    cache.start().unwrap();
    upstream.down.store(true, Ordering::SeqCst);
    sleep(TTL + Duration::from_secs(2)).await;

    let state = cache.refresher_state();
    assert!(state.running);
    assert_ne!(state.breaker, BreakerState::Closed, "{state:?}");
    assert_eq!(state.last_answer, None, "{state:?}");
    assert!(state.in_flight <= 1, "only a probe: {state:?}");
    assert!(state.queued + state.in_flight >= 2, "keys wait: {state:?}");

    upstream.down.store(false, Ordering::SeqCst);
    let recovered = Instant::now();
    all_refreshed(&cache, ENTRIES).await;
    sleep(INTERVAL).await;
    let state = cache.refresher_state();
    assert_eq!(state.breaker, BreakerState::Closed, "{state:?}");
    assert_eq!((state.queued, state.backing_off), (0, 0), "{state:?}");
    let last = state.last_answer.expect("answers came");
    assert!(last >= recovered.into_std(), "answered since the recovery");
    assert!(state.limit >= 1);

    cache.stop().await;
    let state = cache.refresher_state();
    assert!(!state.running && state.in_flight == 0, "{state:?}");
}

/// A few keys failing on their own, while the others answer, leave the
/// breaker closed: the rest keep being refreshed on time.
#[tokio::test(start_paused = true)]
async fn a_few_failing_keys_do_not_stop_the_others() {
    let calls = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&calls);
    let cache: Cache<u64, u64> = Cache::builder()
        .ttl(TTL)
        .refresh_interval(INTERVAL)
        .fetcher(move |key: u64| {
            counted.fetch_add(1, Ordering::SeqCst);
            async move {
                if key < 5 {
                    Err(std::io::Error::other("this key is broken"))
                } else {
                    Ok(key + 1)
                }
            }
        })
        .build()
        .unwrap();
    for key in 0..100 {
        cache.insert(key, key);
    }
    cache.start().unwrap();
    sleep(TTL + INTERVAL * 3).await;
    for key in 5..100 {
        assert_eq!(cache.peek(&key), Some(key + 1), "key {key}");
    }
    for key in 0..5 {
        assert_eq!(
            cache.peek(&key),
            Some(key),
            "broken key {key} keeps its value"
        );
    }
}

/// The breaker's probe joins a fetch another runtime drives, and that
/// runtime goes away: the probe ends cancelled, which says nothing of the
/// upstream, so another probe must follow (the breaker had waited for the
/// cancelled one for good, and nothing was ever refreshed again).
#[tokio::test(start_paused = true)]
async fn a_cancelled_probe_is_followed_by_another() {
    let down = Arc::new(AtomicBool::new(true));
    let upstream_down = Arc::clone(&down);
    let cache: Cache<u64, u64> = Cache::builder()
        .ttl(TTL)
        .refresh_interval(INTERVAL)
        .refresh_on_read(false)
        .max_concurrent_refreshes(16)
        .fetcher(move |key: u64| {
            let on_other = std::thread::current().name() == Some("other");
            let down = upstream_down.load(Ordering::SeqCst);
            async move {
                if on_other {
                    std::future::pending::<()>().await;
                }
                if down {
                    Err(std::io::Error::other("down"))
                } else {
                    Ok(key + 1)
                }
            }
        })
        .build()
        .unwrap();
    for k in 0..10 {
        cache.insert(k, k);
    }
    cache.start().unwrap();
    sleep(TTL + Duration::from_secs(2)).await;
    assert!(cache.metrics().refresh_errors >= 10, "the breaker opened");

    // Another runtime forces a refresh of every key; its fetches hang, and
    // the probe joins one of them.
    let (started, is_started) = std::sync::mpsc::channel();
    let (end, ended) = std::sync::mpsc::channel::<()>();
    let other = std::thread::Builder::new()
        .name("other".into())
        .spawn({
            let cache = cache.clone();
            move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                for k in 0..10 {
                    let cache = cache.clone();
                    runtime.spawn(async move { cache.refresh(&k).await });
                }
                runtime.block_on(async { tokio::time::sleep(Duration::from_millis(50)).await });
                started.send(()).unwrap();
                ended.recv().unwrap();
            }
        })
        .unwrap();
    is_started.recv().unwrap();
    sleep(Duration::from_millis(300)).await;
    end.send(()).unwrap();
    other.join().unwrap();

    down.store(false, Ordering::SeqCst);
    sleep(Duration::from_secs(30)).await;
    assert!(
        (0..10).all(|k| cache.peek(&k) == Some(k + 1)),
        "30 s after recovery: {}",
        cache.metrics()
    );
}

/// The breaker is open and nothing is left to probe with (the failed keys
/// were cleared): the refresher must wait, not wake again and again for a
/// probe it cannot start. A spinning task would keep the paused clock from
/// ever advancing, so the test's own sleep would never end.
#[test]
fn an_open_breaker_with_nothing_to_probe_waits_quietly() {
    let (step, steps) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .start_paused(true)
            .build()
            .unwrap();
        runtime.block_on(async {
            let cache: Cache<u64, u64> = Cache::builder()
                .ttl(TTL)
                .refresh_interval(INTERVAL)
                .refresh_on_read(false)
                .max_concurrent_refreshes(16)
                .fetcher(|_key: u64| async { Err::<u64, _>(std::io::Error::other("down")) })
                .build()
                .unwrap();
            for k in 0..10 {
                cache.insert(k, k);
            }
            cache.start().unwrap();
            sleep(TTL + Duration::from_secs(2)).await;
            assert!(cache.metrics().refresh_errors >= 10);
            cache.clear();
            step.send("cleared").unwrap();
            sleep(Duration::from_secs(1)).await;
            step.send("slept").unwrap();
        });
    });
    assert_eq!(
        steps.recv_timeout(Duration::from_secs(30)).unwrap(),
        "cleared"
    );
    assert_eq!(
        steps.recv_timeout(Duration::from_secs(10)),
        Ok("slept"),
        "the runtime never went idle: the refresher spins"
    );
}
