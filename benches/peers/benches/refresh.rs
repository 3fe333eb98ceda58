//! Refreshing side by side: swr-cache beside the Rust caches that refresh in
//! the background or serve stale values, and beside what users of moka do
//! today (a `time_to_live`, and reads that load when it has passed).
//!
//! ```text
//! cargo bench -p swr-cache-peers --bench refresh
//! ```
//!
//! Every cache reads through the same simulated upstream: 10 ms a call (a
//! real tokio sleep, on one tokio worker thread that also runs every
//! cache's background tasks), failing every call while it is down; it
//! counts its calls and the most it saw at once. One reader thread scans
//! the keys in order, over and over, and times each read; a key is *fresh*
//! once the reader has read the upstream's new value for it, so "all fresh"
//! is what a reader sees, the same for a cache that refreshes on its own
//! and for one that refreshes only when read. A read that takes 1 ms or more
//! waited for the upstream; a read with no value failed.
//!
//! 1. *A storm*: 100,000 entries, written together, go stale together;
//!    the run ends when all are fresh or 15 s after they went stale.
//! 2. *An outage*: 1,000 hot keys, stale, the upstream down for 10 s and
//!    then back: its calls a second while down, and the time from its
//!    recovery until all are fresh (15 s at most).
//!
//! The caches, each as its documentation shows it (sizes with room to
//! spare, so nothing is evicted):
//!
//! - swr-cache with its defaults (the number of refreshes in flight adapts,
//!   4 to 256), and with a fixed 256;
//! - fibre_cache 0.4 with `stale_while_revalidate` and an async loader, with
//!   its default of 32 refreshes at a time, and with 256. Its loader has no
//!   error type: it panics when the upstream fails, which fibre_cache
//!   catches and counts as a failed load;
//! - cachet 0.16, an in-memory tier in front of a fallback tier that is the
//!   upstream, with `time_to_refresh` (refreshes spawned without a bound);
//! - moka 0.12 `future::Cache` with `time_to_live` and `try_get_with`: past
//!   the TTL an entry is gone, and its next read waits for the upstream
//!   (one load per key however many wait).

// The tokio worker that runs every cache's background work and the upstream.
#[path = "../../support/runtime.rs"]
mod runtime;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

/// What every entry holds until the upstream's first answer.
const OLD: u64 = 0;
/// What the upstream answers.
const NEW: u64 = 1;
const LATENCY: Duration = Duration::from_millis(10);
/// The most a run waits for all entries to be fresh.
const CAP: Duration = Duration::from_secs(15);
/// A read this slow waited for the upstream.
const WAITED: Duration = Duration::from_millis(1);
/// The panic message of fibre_cache's loader when the upstream fails.
const DOWN: &str = "upstream down";

/// The simulated upstream every cache reads through.
#[derive(Default)]
struct Upstream {
    calls: AtomicU64,
    in_flight: AtomicU64,
    peak: AtomicU64,
    down: AtomicBool,
}

#[derive(Debug)]
struct Down;

impl std::fmt::Display for Down {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(DOWN)
    }
}

impl std::error::Error for Down {}

impl Upstream {
    async fn fetch(&self) -> Result<u64, Down> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        let now = self.in_flight.fetch_add(1, Ordering::Relaxed) + 1;
        self.peak.fetch_max(now, Ordering::Relaxed);
        tokio::time::sleep(LATENCY).await;
        self.in_flight.fetch_sub(1, Ordering::Relaxed);
        if self.down.load(Ordering::Relaxed) {
            Err(Down)
        } else {
            Ok(NEW)
        }
    }
}

/// cachet's fallback tier: the upstream itself.
struct UpstreamTier(Arc<Upstream>);

impl cachet::CacheTier<u64, u64> for UpstreamTier {
    async fn get(&self, _key: &u64) -> Result<Option<cachet::CacheEntry<u64>>, cachet::Error> {
        match self.0.fetch().await {
            Ok(value) => Ok(Some(cachet::CacheEntry::new(value))),
            Err(down) => Err(cachet::Error::from_source(down)),
        }
    }

    async fn insert(
        &self,
        _key: u64,
        _entry: cachet::CacheEntry<u64>,
    ) -> Result<cachet::InsertOutcome, cachet::Error> {
        // The initial values go to the memory tier; the upstream keeps its own.
        Ok(cachet::InsertOutcome::Accepted)
    }

    async fn invalidate(&self, _key: &u64) -> Result<(), cachet::Error> {
        Ok(())
    }

    async fn clear(&self) -> Result<(), cachet::Error> {
        Ok(())
    }
}

#[derive(Clone, Copy)]
enum Kind {
    SwrDefaults,
    SwrFixed,
    FibreDefaults,
    Fibre256,
    Cachet,
    Moka,
}

const KINDS: [Kind; 6] = [
    Kind::SwrDefaults,
    Kind::SwrFixed,
    Kind::FibreDefaults,
    Kind::Fibre256,
    Kind::Cachet,
    Kind::Moka,
];

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::SwrDefaults => "swr-cache, defaults (adaptive 4..=256)",
            Kind::SwrFixed => "swr-cache, fixed 256",
            Kind::FibreDefaults => "fibre_cache, defaults (32)",
            Kind::Fibre256 => "fibre_cache, 256",
            Kind::Cachet => "cachet (unbounded)",
            Kind::Moka => "moka future::Cache, TTL",
        }
    }
}

/// One cache under test, each behind its own API.
enum Subject {
    Swr(swr_cache::Cache<u64, u64>),
    Fibre(fibre_cache::Cache<u64, u64>),
    Cachet(cachet::Cache<u64, u64>),
    Moka(moka::future::Cache<u64, u64>, Arc<Upstream>),
}

/// A cache of `entries`, stale `ttl` after it is written, reading through
/// `upstream`; built inside `runtime`, which runs its background work.
fn build(
    kind: Kind,
    entries: u64,
    ttl: Duration,
    upstream: &Arc<Upstream>,
    runtime: &tokio::runtime::Runtime,
) -> Subject {
    let _inside = runtime.enter();
    let room = 2 * entries;
    match kind {
        Kind::SwrDefaults | Kind::SwrFixed => {
            let builder = swr_cache::Cache::builder()
                .max_size(room as usize)
                .ttl(Some(ttl));
            let builder = if matches!(kind, Kind::SwrFixed) {
                builder.max_concurrent_refreshes(256)
            } else {
                builder
            };
            let upstream = upstream.clone();
            let cache = builder
                .fetcher(move |_key: u64| {
                    let upstream = upstream.clone();
                    async move { upstream.fetch().await }
                })
                .build()
                .expect("valid settings");
            cache.start().expect("inside a runtime");
            Subject::Swr(cache)
        }
        Kind::FibreDefaults | Kind::Fibre256 => {
            let builder = fibre_cache::CacheBuilder::<u64, u64>::new()
                .capacity(room)
                .time_to_live(ttl)
                // Served stale for as long as the bench runs.
                .stale_while_revalidate(Duration::from_secs(3600));
            let builder = if matches!(kind, Kind::Fibre256) {
                builder.max_concurrent_refreshes(256)
            } else {
                builder
            };
            let upstream = upstream.clone();
            let cache = builder
                .async_loader(move |_key: u64| {
                    let upstream = upstream.clone();
                    async move {
                        match upstream.fetch().await {
                            Ok(value) => (value, 1),
                            Err(_) => panic!("{DOWN}"),
                        }
                    }
                })
                .build()
                .expect("valid settings");
            Subject::Fibre(cache)
        }
        Kind::Cachet => {
            let clock = tick::Clock::new_tokio();
            let spawner = anyspawn::Spawner::new_tokio_with_handle(runtime.handle().clone());
            let cache = cachet::Cache::builder::<u64, u64>(clock.clone())
                .memory()
                .fallback(
                    cachet::Cache::builder::<u64, u64>(clock)
                        .storage(UpstreamTier(upstream.clone())),
                )
                .time_to_refresh(cachet::TimeToRefresh::new(ttl, spawner))
                .build();
            Subject::Cachet(cache)
        }
        Kind::Moka => Subject::Moka(
            moka::future::Cache::builder()
                .max_capacity(room)
                .time_to_live(ttl)
                .build(),
            upstream.clone(),
        ),
    }
}

impl Subject {
    async fn insert(&self, key: u64, value: u64) {
        match self {
            Subject::Swr(cache) => cache.insert(key, value),
            Subject::Fibre(cache) => cache.insert(key, value, 1),
            Subject::Cachet(cache) => {
                cache
                    .insert(key, value)
                    .await
                    .expect("the memory tier takes it");
            }
            Subject::Moka(cache, _) => cache.insert(key, value).await,
        }
    }

    /// The value a reader gets, or `None` when it gets none.
    async fn read(&self, key: u64) -> Option<u64> {
        match self {
            Subject::Swr(cache) => cache.get(&key),
            Subject::Fibre(cache) => Some(*cache.fetch_with(&key)),
            Subject::Cachet(cache) => cache.get(&key).await.ok().flatten().map(|e| *e.value()),
            Subject::Moka(cache, upstream) => cache.try_get_with(key, upstream.fetch()).await.ok(),
        }
    }
}

/// What one reader saw in one phase.
struct Seen {
    /// From the phase's start until every key was read fresh, if it was.
    all_fresh: Option<Duration>,
    fresh: u64,
    reads: Histogram<u64>,
    waited: u64,
    failed: u64,
    /// The upstream's calls when the phase ended.
    calls: u64,
}

/// Reads `keys` in order, over and over, from `start` until every key has
/// been read fresh (if `until_fresh`) or until `start + limit`.
async fn scan(
    subject: &Subject,
    keys: u64,
    start: Instant,
    limit: Duration,
    until_fresh: bool,
    upstream: &Upstream,
) -> Seen {
    let mut is_fresh = vec![false; keys as usize];
    let mut seen = Seen {
        all_fresh: None,
        fresh: 0,
        reads: Histogram::new(3).expect("valid precision"),
        waited: 0,
        failed: 0,
        calls: 0,
    };
    let deadline = start + limit;
    let mut i: u64 = 0;
    loop {
        let key = i % keys;
        i += 1;
        let t = Instant::now();
        let value = subject.read(key).await;
        let took = t.elapsed();
        seen.reads
            .record((took.as_nanos() as u64).max(1))
            .expect("in range");
        if took >= WAITED {
            seen.waited += 1;
        }
        match value {
            None => seen.failed += 1,
            Some(NEW) if !is_fresh[key as usize] => {
                is_fresh[key as usize] = true;
                seen.fresh += 1;
                if seen.fresh == keys && seen.all_fresh.is_none() {
                    seen.all_fresh = Some(start.elapsed());
                    if until_fresh {
                        break;
                    }
                }
            }
            Some(_) => {}
        }
        if i.is_multiple_of(256) && Instant::now() >= deadline {
            break;
        }
    }
    seen.calls = upstream.calls.load(Ordering::Relaxed);
    seen
}

/// The reader's own runtime: it awaits the async caches' reads, and moka's
/// loads run in it.
fn reader() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime")
}

fn micros(nanos: u64) -> String {
    if nanos >= 1_000_000 {
        format!("{:.1} ms", nanos as f64 / 1e6)
    } else {
        format!("{:.2} µs", nanos as f64 / 1e3)
    }
}

fn fresh_cell(seen: &Seen, keys: u64, floor: Option<Duration>) -> String {
    match (seen.all_fresh, floor) {
        (Some(took), Some(floor)) => format!(
            "{:.2} s ({:.2}× floor)",
            took.as_secs_f64(),
            took.as_secs_f64() / floor.as_secs_f64()
        ),
        (Some(took), None) => format!("{:.2} s", took.as_secs_f64()),
        (None, _) => format!(
            "not in {} s: {:.0} % fresh",
            CAP.as_secs(),
            seen.fresh as f64 * 100.0 / keys as f64
        ),
    }
}

fn storm() {
    const ENTRIES: u64 = 100_000;
    // Longer than the runs that finish take, so those refresh each key once.
    let ttl = Duration::from_secs(5);
    let floor = LATENCY * (ENTRIES as u32).div_ceil(256);
    println!("## A storm: {ENTRIES} entries stale at once\n");
    println!(
        "Written together, stale {ttl:?} later; a {LATENCY:?} upstream; one reader scanning the keys. The floor at 256 at a time: {:.2} s.\n",
        floor.as_secs_f64()
    );
    println!(
        "| cache | all fresh (reader's view) | upstream calls | most at once | read p50 | read p99.9 | read max | reads that waited | reads with no value |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    for kind in KINDS {
        let runtime = runtime::one_worker();
        let upstream = Arc::new(Upstream::default());
        let subject = build(kind, ENTRIES, ttl, &upstream, &runtime);
        let seen = reader().block_on(async {
            let written = Instant::now();
            for key in 0..ENTRIES {
                subject.insert(key, OLD).await;
            }
            let stale_at = written + ttl;
            tokio::time::sleep_until(stale_at.into()).await;
            scan(&subject, ENTRIES, stale_at, CAP, true, &upstream).await
        });
        println!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            kind.name(),
            fresh_cell(&seen, ENTRIES, Some(floor)),
            seen.calls,
            upstream.peak.load(Ordering::Relaxed),
            micros(seen.reads.value_at_quantile(0.5)),
            micros(seen.reads.value_at_quantile(0.999)),
            micros(seen.reads.max()),
            seen.waited,
            seen.failed
        );
        drop(subject);
        runtime.shutdown_background();
    }
    println!();
}

fn outage() {
    const KEYS: u64 = 1_000;
    let ttl = Duration::from_secs(1);
    let outage = Duration::from_secs(10);
    println!("## An outage: {KEYS} hot keys, the upstream down for {outage:?}\n");
    println!(
        "Stale {ttl:?} after written, as the outage starts; one reader scanning the keys throughout. Goal for swr-cache: at most 50 calls a second while down, all fresh within 1 s + {KEYS} / 256 × {LATENCY:?} of recovery.\n"
    );
    println!(
        "| cache | calls a second while down | all fresh after recovery (reader's view) | most at once | reads that waited while down | reads with no value while down |"
    );
    println!("|---|---|---|---|---|---|");
    for kind in KINDS {
        let runtime = runtime::one_worker();
        let upstream = Arc::new(Upstream::default());
        upstream.down.store(true, Ordering::Relaxed);
        let subject = build(kind, KEYS, ttl, &upstream, &runtime);
        let (down, back) = reader().block_on(async {
            let written = Instant::now();
            for key in 0..KEYS {
                subject.insert(key, OLD).await;
            }
            let stale_at = written + ttl;
            tokio::time::sleep_until(stale_at.into()).await;
            let before = upstream.calls.load(Ordering::Relaxed);
            let mut down = scan(&subject, KEYS, stale_at, outage, false, &upstream).await;
            down.calls -= before;
            upstream.down.store(false, Ordering::Relaxed);
            let back = scan(&subject, KEYS, Instant::now(), CAP, true, &upstream).await;
            (down, back)
        });
        println!(
            "| {} | {:.1} | {} | {} | {} | {} |",
            kind.name(),
            down.calls as f64 / outage.as_secs_f64(),
            fresh_cell(&back, KEYS, None),
            upstream.peak.load(Ordering::Relaxed),
            down.waited,
            down.failed
        );
        drop(subject);
        runtime.shutdown_background();
    }
    println!();
}

fn main() {
    // fibre_cache's loader panics when the upstream fails; keep those quiet
    // and every other panic loud.
    let report = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if info.payload_as_str() != Some(DOWN) {
            report(info);
        }
    }));
    // `cargo test --benches` runs this too; the figures need `cargo bench`.
    if !std::env::args().any(|a| a == "--bench") {
        println!(
            "the refresh comparison runs with `cargo bench -p swr-cache-peers --bench refresh`"
        );
        return;
    }
    storm();
    outage();
}
