//! Refresh figures no peer has: how fast a storm of stale entries is
//! refreshed, what a storm does to read latency, and what a hit through
//! `get_or_fetch` costs beside a `get`.
//!
//! ```text
//! cargo bench --bench refresh [-- SECTION...]
//! ```
//!
//! 1. *Refresh throughput*: 100,000 entries go stale at once; the fetcher takes
//!    10 ms (a real sleep) and 256 fetches run at a time. Prints the time from
//!    the moment they are stale until every one has been refreshed, against
//!    the floor of 100,000 / 256 × 10 ms = 3.9 s.
//! 2. *Read latency under a refresh storm*: a reader thread times `get`s of
//!    Zipf-distributed keys, in five pairs of phases: while every entry is
//!    fresh, then while every entry is stale and the refresher is
//!    re-fetching all of them as fast as it can (a 1 ms TTL, a 1 ms
//!    fetcher, 256 at a time). Prints p50/p99/p99.9 of each phase, each
//!    pair's p99.9 ratio and their median: one pair's ratio of two tails of
//!    ~100 ns moves by 2× between runs on a shared machine.
//! 3. *The refresher's cost at a million entries*: with none stale, 1 %
//!    stale and all stale. The refresher runs alone on one tokio worker, so
//!    that worker's busy time is the refresher's: per wake-up when nothing
//!    is due, per refreshed entry when some are (with a fetcher that answers
//!    at once, so the cost is the refresher's own). A writer thread inserts
//!    meanwhile and times each insert, which waits for any hold of its
//!    shard's lock.
//! 4. *An upstream with a knee*: 20,000 stale entries; the upstream answers
//!    in 10 ms up to 64 calls at once and slower with the square of its
//!    load past that. Prints the mean number in flight and the time to all
//!    fresh, on the defaults (adaptive) and with a fixed 256.
//! 5. *An outage*: 1,000 hot keys (a reader reads them all the time), the
//!    upstream failing every call for 10 s. Prints the calls a second during
//!    the outage and the time from recovery until every key is fresh,
//!    against 1 s + 1,000 / 256 × 10 ms.
//! 6. *A hit through `get_or_fetch`*: 512 hot keys read by `get` and by
//!    `get_or_fetch`, each read a future polled once with a no-op waker;
//!    prints the nanoseconds per hit of each and their ratio, against the
//!    goal of `get_or_fetch` at 0.9× `get`'s speed or better.
//!
//! 7. *A batched storm*: section 1's 100,000 stale entries, with a batch
//!    fetcher answering a call of up to 64 keys in 10 ms; with 16 calls at
//!    a time and on the defaults, against the floor of
//!    ⌈100,000 / 64⌉ / calls at a time × 10 ms.
//!
//! Sections are named `throughput`, `batched`, `storm`, `million`,
//! `own_ttl`, `knee`, `outage` and `get_or_fetch`; `cargo bench --bench refresh -- get_or_fetch` runs
//! only the last (any name given runs the sections whose names contain it).

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use rand::rngs::SmallRng;
use rand::{RngExt, SeedableRng};
use rand_distr::Zipf;
use swr_cache::{Cache, ConfigChange};

const ENTRIES: u64 = 100_000;
const CONCURRENCY: usize = 256;

#[path = "support/runtime.rs"]
mod runtime;

fn sleeping_cache(
    latency: Duration,
    ttl: Duration,
    interval: Duration,
    fixed: bool,
) -> Cache<u64, u64> {
    let builder = Cache::builder()
        // Room to spare: each shard holds its share of max_size, and keys do
        // not split exactly evenly, so a cache of exactly ENTRIES would
        // evict a few of them.
        .max_size(2 * ENTRIES as usize)
        .ttl(Some(ttl))
        .refresh_interval(interval)
        .refresh_on_read(false);
    // The default is a limit adapting between 4 and the same cap.
    let builder = if fixed {
        builder.max_concurrent_refreshes(CONCURRENCY)
    } else {
        builder
    };
    builder
        .fetcher(move |key: u64| async move {
            tokio::time::sleep(latency).await;
            Ok::<_, std::convert::Infallible>(key + 1)
        })
        .build()
        .expect("valid settings")
}

/// Fills `cache` with `ENTRIES` entries of TTL `ttl`, starts its refresher
/// and waits until every one has been refreshed once: the time from when
/// they went stale.
fn storm(runtime: &tokio::runtime::Runtime, cache: &Cache<u64, u64>, ttl: Duration) -> Duration {
    for key in 0..ENTRIES {
        cache.insert(key, key);
    }
    let stale_at = Instant::now() + ttl;
    cache.start().expect("inside a runtime");
    runtime.block_on(async {
        while cache.metrics().refreshes < ENTRIES {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    });
    stale_at.elapsed()
}

fn refresh_throughput() {
    let ttl = Duration::from_secs(6);
    let interval = Duration::from_secs(1);
    let latency = Duration::from_millis(10);
    let floor = latency * (ENTRIES as u32).div_ceil(CONCURRENCY as u32);
    println!("## Refresh throughput\n");
    println!(
        "{ENTRIES} entries stale at once, a {latency:?} fetcher (a real sleep), a look every {interval:?}. The floor is entries / {CONCURRENCY} × latency = {:.2} s; the goal 1.15× it with a fixed {CONCURRENCY}, 1.3× it on the defaults (adaptive, 4 to {CONCURRENCY}); both plus up to one interval before the first look.\n",
        floor.as_secs_f64()
    );
    println!("| concurrency | time to all fresh | ÷ floor | refreshes/s |");
    println!("|---|---|---|---|");
    for fixed in [true, false] {
        let runtime = runtime::one_worker();
        let _guard = runtime.enter();
        // Longer than the refresh takes, so no entry goes stale a second
        // time and the count of refreshes is the count of entries refreshed.
        let cache = sleeping_cache(latency, ttl, interval, fixed);
        let took = storm(&runtime, &cache, ttl);
        println!(
            "| {} | {:.2} s | {:.2} | {:.0} |",
            if fixed {
                format!("fixed {CONCURRENCY}")
            } else {
                format!("adaptive 4..={CONCURRENCY} (default)")
            },
            took.as_secs_f64(),
            took.as_secs_f64() / floor.as_secs_f64(),
            ENTRIES as f64 / took.as_secs_f64()
        );
        runtime.block_on(cache.stop());
    }
    println!();
}

/// Times `get`s of Zipf keys on this thread for `phase`.
fn time_reads(cache: &Cache<u64, u64>, phase: Duration) -> Histogram<u64> {
    let zipf = Zipf::new(ENTRIES as f64, 1.0).expect("valid Zipf parameters");
    let mut rng = SmallRng::seed_from_u64(7);
    let keys: Vec<u64> = (0..1 << 16).map(|_| rng.sample(zipf) as u64 - 1).collect();
    let mut histogram = Histogram::new(3).expect("valid precision");
    let started = Instant::now();
    let mut i = 0;
    while started.elapsed() < phase {
        for _ in 0..1024 {
            let key = keys[i & (keys.len() - 1)];
            i += 1;
            let t = Instant::now();
            let value = cache.get(&key);
            let nanos = t.elapsed().as_nanos() as u64;
            assert!(value.is_some(), "every key is cached");
            histogram.record(nanos.max(1)).expect("in range");
        }
    }
    histogram
}

fn read_latency_under_storm() {
    let runtime = runtime::one_worker();
    let _guard = runtime.enter();
    let cache = sleeping_cache(
        Duration::from_millis(1),
        Duration::from_secs(3600),
        Duration::from_millis(100),
        true,
    );
    for key in 0..ENTRIES {
        cache.insert(key, key);
    }
    cache.start().expect("inside a runtime");
    let phase = Duration::from_secs(2);
    let set_ttl = |ttl: Duration| {
        cache
            .configure(ConfigChange::new().ttl(Some(ttl)))
            .expect("valid ttl");
    };

    println!("## Read latency with and without a refresh storm\n");
    println!(
        "One reader thread, one tokio worker thread for the refresher (2 cores); {ENTRIES} entries, Zipf(1.0) keys. {PAIRS} pairs of phases of {phase:?}: quiet (a TTL of an hour), then a storm (a TTL of 1 ms: every entry stale, and stale again 1 ms after each refresh; a 1 ms fetcher, 256 at a time). The figure is the median of the pairs' p99.9 ratios.\n"
    );
    println!(
        "| pair | quiet p50 | quiet p99 | quiet p99.9 | storm p50 | storm p99 | storm p99.9 | refreshes/s in the storm | p99.9 storm / quiet |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    let mut ratios = Vec::new();
    for pair in 1..=PAIRS {
        set_ttl(Duration::from_secs(3600));
        let quiet = time_reads(&cache, phase);
        let before = cache.metrics().refreshes;
        set_ttl(Duration::from_millis(1));
        let storm = time_reads(&cache, phase);
        let refreshes = cache.metrics().refreshes - before;
        let ratio = storm.value_at_quantile(0.999) as f64 / quiet.value_at_quantile(0.999) as f64;
        ratios.push(ratio);
        println!(
            "| {pair} | {} ns | {} ns | {} ns | {} ns | {} ns | {} ns | {:.0} | {ratio:.2} |",
            quiet.value_at_quantile(0.5),
            quiet.value_at_quantile(0.99),
            quiet.value_at_quantile(0.999),
            storm.value_at_quantile(0.5),
            storm.value_at_quantile(0.99),
            storm.value_at_quantile(0.999),
            refreshes as f64 / phase.as_secs_f64(),
        );
    }
    ratios.sort_by(f64::total_cmp);
    println!(
        "\np99.9 ratio storm / quiet, median of {PAIRS} pairs: {:.2} (goal <= 1.5)\n",
        ratios[ratios.len() / 2]
    );
    runtime.block_on(cache.stop());
}

/// Quiet and storm phases the read latency bench alternates.
const PAIRS: usize = 5;

const MILLION: u64 = 1_000_000;

/// A cache of a million entries (keys from `first`), refreshed by a fetcher
/// that answers at once, looked at every 10 ms.
fn million_cache(ttl: Duration) -> Cache<u64, u64> {
    Cache::builder()
        .max_size(2 * MILLION as usize)
        .ttl(Some(ttl))
        .refresh_interval(Duration::from_millis(10))
        .max_concurrent_refreshes(CONCURRENCY)
        .refresh_on_read(false)
        .fetcher(|key: u64| async move { Ok::<_, std::convert::Infallible>(key + 1) })
        .build()
        .expect("valid settings")
}

/// The refresher's worker's busy time so far.
fn busy(runtime: &tokio::runtime::Runtime) -> Duration {
    runtime.metrics().worker_total_busy_duration(0)
}

/// Writes 1,000 keys of its own over and over until `stop` (so they never
/// go stale), timing each insert.
fn time_inserts(cache: &Cache<u64, u64>, stop: &AtomicBool) -> Histogram<u64> {
    let mut histogram = Histogram::new(3).expect("valid precision");
    let mut key = 0;
    while !stop.load(Ordering::Relaxed) {
        let t = Instant::now();
        cache.insert(2 * MILLION + key, key);
        let nanos = t.elapsed().as_nanos() as u64;
        histogram.record(nanos.max(1)).expect("in range");
        key = (key + 1) % 1_000;
    }
    histogram
}

/// Runs `phase` while a writer thread inserts; returns `phase`'s result and
/// the writer's insert latencies.
fn with_writer<R>(cache: &Cache<u64, u64>, phase: impl FnOnce() -> R) -> (R, Histogram<u64>) {
    let stop = AtomicBool::new(false);
    std::thread::scope(|s| {
        let writer = s.spawn(|| time_inserts(cache, &stop));
        let result = phase();
        stop.store(true, Ordering::Relaxed);
        (result, writer.join().expect("the writer finished"))
    })
}

fn tick_cost() {
    println!(
        "## The refresher at a million entries
"
    );
    println!(
        "One tokio worker runs the refresher alone; its busy time is the refresher's. A writer thread inserts throughout; its p99.99 and max include being preempted (three threads on two shared cores).\n"
    );
    println!(
        "| stale | time to all refreshed | refresher busy | per wake-up or per entry | insert p99.99 | insert max |"
    );
    println!("|---|---|---|---|---|---|");

    // None stale: ten seconds of looks every 10 ms.
    {
        let runtime = runtime::one_worker();
        let _guard = runtime.enter();
        let cache = million_cache(Duration::from_secs(3600));
        for key in 0..MILLION {
            cache.insert(key, key);
        }
        cache.start().expect("inside a runtime");
        let phase = Duration::from_secs(5);
        let (spent, inserts) = with_writer(&cache, || {
            let before = busy(&runtime);
            std::thread::sleep(phase);
            busy(&runtime) - before
        });
        let wakeups = (phase.as_millis() / 10) as u32;
        println!(
            "| none | - | {:.2} ms in {phase:?} | {:.1} µs per wake-up (every 10 ms) | {:.1} µs | {:.1} µs |",
            spent.as_secs_f64() * 1e3,
            spent.as_secs_f64() * 1e6 / f64::from(wakeups),
            inserts.value_at_quantile(0.9999) as f64 / 1e3,
            inserts.max() as f64 / 1e3
        );
        runtime.block_on(cache.stop());
    }

    // 1 % and all stale: the stale ones written a TTL before the rest.
    for stale in [MILLION / 100, MILLION] {
        let runtime = runtime::one_worker();
        let _guard = runtime.enter();
        let ttl = Duration::from_secs(2);
        let cache = million_cache(ttl);
        let written = Instant::now();
        for key in 0..stale {
            cache.insert(key, key);
        }
        if stale < MILLION {
            std::thread::sleep(ttl / 2);
            for key in stale..MILLION {
                cache.insert(key, key);
            }
        }
        cache.start().expect("inside a runtime");
        std::thread::sleep((written + ttl).saturating_duration_since(Instant::now()));
        let ((spent, took), inserts) = with_writer(&cache, || {
            let before = busy(&runtime);
            let started = Instant::now();
            while cache.metrics().refreshes < stale {
                std::thread::sleep(Duration::from_millis(1));
            }
            (busy(&runtime) - before, started.elapsed())
        });
        println!(
            "| {} % ({stale}) | {:.2} s | {:.0} ms | {:.2} µs per entry | {:.1} µs | {:.1} µs |",
            stale * 100 / MILLION,
            took.as_secs_f64(),
            spent.as_secs_f64() * 1e3,
            spent.as_secs_f64() * 1e6 / stale as f64,
            inserts.value_at_quantile(0.9999) as f64 / 1e3,
            inserts.max() as f64 / 1e3
        );
        runtime.block_on(cache.stop());
    }
    println!();
}

/// A cache of `entries` stale entries whose upstream's latency is
/// `latency(in flight)`, failing while `down`; counts calls and the
/// in-flight count each call saw.
struct Simulated {
    cache: Cache<u64, u64>,
    calls: Arc<AtomicU64>,
    in_flight_sum: Arc<AtomicU64>,
    down: Arc<AtomicBool>,
}

fn simulated(entries: u64, ttl: Duration, fixed: bool, latency: fn(u64) -> Duration) -> Simulated {
    let calls = Arc::new(AtomicU64::new(0));
    let in_flight = Arc::new(AtomicU64::new(0));
    let in_flight_sum = Arc::new(AtomicU64::new(0));
    let down = Arc::new(AtomicBool::new(false));
    let (c, f, sum, d) = (
        calls.clone(),
        in_flight.clone(),
        in_flight_sum.clone(),
        down.clone(),
    );
    let builder = Cache::builder()
        .max_size(2 * entries as usize)
        .ttl(Some(ttl))
        .refresh_interval(Duration::from_millis(100));
    let builder = if fixed {
        builder.max_concurrent_refreshes(CONCURRENCY)
    } else {
        builder
    };
    let cache = builder
        .fetcher(move |key: u64| {
            let (c, f, sum, d) = (c.clone(), f.clone(), sum.clone(), d.clone());
            async move {
                c.fetch_add(1, Ordering::Relaxed);
                let now = f.fetch_add(1, Ordering::Relaxed) + 1;
                sum.fetch_add(now, Ordering::Relaxed);
                tokio::time::sleep(latency(now)).await;
                f.fetch_sub(1, Ordering::Relaxed);
                if d.load(Ordering::Relaxed) {
                    Err(std::io::Error::other("upstream down"))
                } else {
                    Ok(key + 1)
                }
            }
        })
        .build()
        .expect("valid settings");
    for key in 0..entries {
        cache.insert(key, key);
    }
    Simulated {
        cache,
        calls,
        in_flight_sum,
        down,
    }
}

/// Waits until `entries` refreshes have been installed.
fn wait_refreshed(runtime: &tokio::runtime::Runtime, cache: &Cache<u64, u64>, entries: u64) {
    runtime.block_on(async {
        while cache.metrics().refreshes < entries {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    });
}

fn knee() {
    const ENTRIES: u64 = 20_000;
    const KNEE: u64 = 64;
    fn latency(n: u64) -> Duration {
        let over = (n as f64 / KNEE as f64).max(1.0);
        Duration::from_millis(10).mul_f64(over * over)
    }
    println!("## An upstream with a knee\n");
    println!(
        "{ENTRIES} stale entries; the upstream answers in 10 ms up to {KNEE} calls at once, and past that in 10 ms × (in flight / {KNEE})², so its answers a second peak at {KNEE} in flight ({} a second).\n",
        KNEE * 100
    );
    println!("| concurrency | mean in flight | time to all fresh | refreshes/s |");
    println!("|---|---|---|---|");
    for fixed in [false, true] {
        let runtime = runtime::one_worker();
        let _guard = runtime.enter();
        let ttl = Duration::from_secs(1);
        let sim = simulated(ENTRIES, ttl, fixed, latency);
        let inserted = Instant::now();
        sim.cache.start().expect("inside a runtime");
        std::thread::sleep(ttl);
        wait_refreshed(&runtime, &sim.cache, ENTRIES);
        let took = (inserted + ttl).elapsed();
        let calls = sim.calls.load(Ordering::Relaxed);
        println!(
            "| {} | {:.1} | {:.2} s | {:.0} |",
            if fixed {
                "fixed 256"
            } else {
                "adaptive (default)"
            },
            sim.in_flight_sum.load(Ordering::Relaxed) as f64 / calls as f64,
            took.as_secs_f64(),
            ENTRIES as f64 / took.as_secs_f64()
        );
        runtime.block_on(sim.cache.stop());
    }
    println!();
}

fn outage() {
    const KEYS: u64 = 1_000;
    let runtime = runtime::one_worker();
    let _guard = runtime.enter();
    let ttl = Duration::from_secs(1);
    let sim = simulated(KEYS, ttl, false, |_| Duration::from_millis(10));
    sim.down.store(true, Ordering::Relaxed);
    sim.cache.start().expect("inside a runtime");
    let stop = AtomicBool::new(false);
    let (during, recovery) = std::thread::scope(|s| {
        // The keys are hot: a reader reads every one of them, all the time.
        s.spawn(|| {
            while !stop.load(Ordering::Relaxed) {
                for key in 0..KEYS {
                    std::hint::black_box(sim.cache.get(&key));
                }
            }
        });
        std::thread::sleep(ttl);
        let before = sim.calls.load(Ordering::Relaxed);
        std::thread::sleep(Duration::from_secs(10));
        let during = sim.calls.load(Ordering::Relaxed) - before;
        sim.down.store(false, Ordering::Relaxed);
        let recovered = Instant::now();
        wait_refreshed(&runtime, &sim.cache, KEYS);
        let recovery = recovered.elapsed();
        stop.store(true, Ordering::Relaxed);
        (during, recovery)
    });
    let bound = Duration::from_secs(1) + Duration::from_millis(10) * (KEYS as u32).div_ceil(256);
    println!("## An outage\n");
    println!(
        "{KEYS} hot keys (a reader thread reads them all the time), stale; the upstream (10 ms) fails every call for 10 s, then answers. Defaults.\n"
    );
    println!("| calls a second during the outage (goal ≤ 50) | all fresh after recovery | goal |");
    println!("|---|---|---|");
    println!(
        "| {:.1} | {:.2} s | ≤ {:.2} s |\n",
        during as f64 / 10.0,
        recovery.as_secs_f64(),
        bound.as_secs_f64()
    );
    runtime.block_on(sim.cache.stop());
}

/// The look's cost with a TTL per entry: the timer wheel must keep it flat
/// as the entries grow.
fn own_ttl_looks() {
    println!("## Looks with a TTL per entry\n");
    println!(
        "Each entry inserted with its own TTL (`insert_with_ttl`), spread evenly over the range; the refresher looks every 10 ms on one tokio worker for 5 s, refreshing what comes due (a refresh keeps the entry's TTL).\n"
    );
    println!("| entries | TTLs | refreshes in 5 s | refresher busy | per wake-up |");
    println!("|---|---|---|---|---|");
    let rows: [(u64, u64, u64); 4] = [
        (10_000, 600, 3_600),
        (100_000, 600, 3_600),
        (MILLION, 600, 3_600),
        (MILLION, 1, 3_600),
    ];
    for (entries, from, to) in rows {
        let runtime = runtime::one_worker();
        let _guard = runtime.enter();
        let cache = million_cache(Duration::from_secs(3600));
        for key in 0..entries {
            let secs = from as f64 + (to - from) as f64 * key as f64 / entries as f64;
            cache.insert_with_ttl(key, key, Duration::from_secs_f64(secs));
        }
        cache.start().expect("inside a runtime");
        let phase = Duration::from_secs(5);
        let before = (busy(&runtime), cache.metrics().refreshes);
        std::thread::sleep(phase);
        let spent = busy(&runtime) - before.0;
        let refreshes = cache.metrics().refreshes - before.1;
        let wakeups = (phase.as_millis() / 10) as u32;
        println!(
            "| {entries} | {from} s to {to} s | {refreshes} | {:.2} ms | {:.1} µs |",
            spent.as_secs_f64() * 1e3,
            spent.as_secs_f64() * 1e6 / f64::from(wakeups),
        );
        runtime.block_on(cache.stop());
    }
    println!();
}

/// Polls `future` once, with a waker that does nothing: how both reads of
/// [`get_or_fetch_hits`] are run, so that neither pays for a runtime.
fn poll_ready<T>(future: impl Future<Output = T>) -> T {
    let future = std::pin::pin!(future);
    match future.poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(value) => value,
        Poll::Pending => panic!("a hit is ready at its first poll"),
    }
}

fn get_or_fetch_hits() {
    const KEYS: u64 = 512;
    const OPS: u64 = 4_000_000;
    const ROUNDS: usize = 7;
    let runtime = runtime::one_worker();
    // Built in a multi-thread runtime, so that the clock's keeper ticks the
    // coarse clock and a hit reads no clock, as in a service.
    let cache: Cache<u64, u64> = {
        let _inside = runtime.enter();
        Cache::builder()
            .max_size(2 * KEYS as usize)
            .ttl(Some(Duration::from_secs(3600)))
            .fetcher(|key: u64| async move { Ok::<_, std::convert::Infallible>(key) })
            .build()
            .expect("valid settings")
    };
    for key in 0..KEYS {
        cache.insert(key, key);
    }
    let ns_per_hit = |hit: &dyn Fn(u64) -> bool| {
        let started = Instant::now();
        let mut found = 0;
        for op in 0..OPS {
            found += u64::from(hit(std::hint::black_box(op % KEYS)));
        }
        let elapsed = started.elapsed();
        assert_eq!(found, OPS, "every read a hit");
        elapsed.as_nanos() as f64 / OPS as f64
    };
    let get = |key: u64| poll_ready(async { cache.get(&key) }).is_some();
    let get_or_fetch = |key: u64| poll_ready(cache.get_or_fetch(&key)).is_ok();
    println!("## A hit through get_or_fetch\n");
    println!(
        "{KEYS} hot keys, fresh (a TTL of an hour, the coarse clock kept by the runtime's keeper); one thread reads each key in turn, {OPS} reads per figure, each read a future polled once with a no-op waker: `async {{ get }}` and `get_or_fetch`. {ROUNDS} rounds, the two in turn (which goes first alternates); the figure is the median round's ratio. The goal: at least 0.9.\n"
    );
    println!("| round | ns per get hit | ns per get_or_fetch hit | get_or_fetch ÷ get speed |");
    println!("|---|---|---|---|");
    let mut ratios = Vec::with_capacity(ROUNDS);
    for round in 1..=ROUNDS {
        let (get_ns, fetch_ns) = if round % 2 == 1 {
            let get_ns = ns_per_hit(&get);
            (get_ns, ns_per_hit(&get_or_fetch))
        } else {
            let fetch_ns = ns_per_hit(&get_or_fetch);
            (ns_per_hit(&get), fetch_ns)
        };
        let ratio = get_ns / fetch_ns;
        ratios.push(ratio);
        println!("| {round} | {get_ns:.1} | {fetch_ns:.1} | {ratio:.2} |");
    }
    ratios.sort_by(f64::total_cmp);
    println!(
        "\nget_or_fetch hit ÷ get hit speed, median of {ROUNDS} rounds: {:.2} (goal >= 0.9)\n",
        ratios[ROUNDS / 2]
    );
    assert_eq!(
        cache.metrics().misses,
        0,
        "get_or_fetch never missed, so never fetched"
    );
}

/// Refresh throughput with a batch fetcher: the storm of section 1 (100,000
/// entries stale at once), the upstream answering a call of up to 64 keys
/// in 10 ms, against the floor of calls / limit × 10 ms.
fn batched_storm() {
    const MAX_BATCH: usize = 64;
    const CALLS_AT_ONCE: usize = 16;
    let ttl = Duration::from_secs(6);
    let interval = Duration::from_secs(1);
    let latency = Duration::from_millis(10);
    let calls_needed = (ENTRIES as usize).div_ceil(MAX_BATCH);
    println!("## Refresh throughput, batched\n");
    println!(
        "{ENTRIES} entries stale at once, a batch fetcher taking {latency:?} a call (a real sleep) of up to {MAX_BATCH} keys, a look every {interval:?}. The floor is {calls_needed} calls / the limit × latency; up to one interval before the first look comes on top.\n"
    );
    println!("| calls at once | time to all fresh | floor | ÷ floor | calls | keys/s |");
    println!("|---|---|---|---|---|---|");
    for fixed in [Some(CALLS_AT_ONCE), None] {
        let runtime = runtime::one_worker();
        let _guard = runtime.enter();
        let calls = Arc::new(AtomicU64::new(0));
        let counted = calls.clone();
        let builder = Cache::builder()
            .max_size(2 * ENTRIES as usize)
            .ttl(Some(ttl))
            .refresh_interval(interval)
            .refresh_on_read(false)
            .max_batch(MAX_BATCH);
        let builder = match fixed {
            Some(limit) => builder.max_concurrent_refreshes(limit),
            None => builder,
        };
        let cache: Cache<u64, u64> = builder
            .batch_fetcher(move |keys: Vec<u64>| {
                counted.fetch_add(1, Ordering::Relaxed);
                async move {
                    tokio::time::sleep(latency).await;
                    Ok::<_, std::convert::Infallible>(
                        keys.into_iter()
                            .map(|key| (key, key + 1))
                            .collect::<Vec<_>>(),
                    )
                }
            })
            .build()
            .expect("valid settings");
        let took = storm(&runtime, &cache, ttl);
        // The adaptive limit's cap is 256 calls.
        let limit = fixed.unwrap_or(256);
        let floor = latency * (calls_needed.div_ceil(limit) as u32);
        println!(
            "| {} | {:.2} s | {:.2} s | {:.2} | {} | {:.0} |",
            match fixed {
                Some(limit) => format!("fixed {limit}"),
                None => "adaptive 4..=256 (default)".to_owned(),
            },
            took.as_secs_f64(),
            floor.as_secs_f64(),
            took.as_secs_f64() / floor.as_secs_f64(),
            calls.load(Ordering::Relaxed),
            ENTRIES as f64 / took.as_secs_f64()
        );
        runtime.block_on(cache.stop());
    }
    println!();
}

fn main() {
    // `cargo bench --bench refresh -- NAME...` runs only the sections whose
    // names contain one of the NAMEs (cargo passes `--bench` as well).
    let only: Vec<String> = std::env::args()
        .skip(1)
        .filter(|arg| !arg.starts_with('-'))
        .collect();
    let sections: [(&str, fn()); 8] = [
        ("throughput", refresh_throughput),
        ("batched", batched_storm),
        ("storm", read_latency_under_storm),
        ("million", tick_cost),
        ("own_ttl", own_ttl_looks),
        ("knee", knee),
        ("outage", outage),
        ("get_or_fetch", get_or_fetch_hits),
    ];
    for (name, section) in sections {
        if only.is_empty() || only.iter().any(|want| name.contains(want.as_str())) {
            section();
        }
    }
}
