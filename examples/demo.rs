//! A prompt hub behind a stale-while-revalidate cache, under read load.
//!
//! A simulated hub serves prompt commits with some latency, fails some of its
//! calls, and publishes new commits of random prompts as time goes on. Reader
//! tasks read prompts with Zipf-distributed keys as fast as they can; a miss
//! reads through. The refresher keeps entries fresh in the background, so
//! readers never wait for the hub once a prompt is cached.
//!
//! ```text
//! cargo run --release --example demo -- [--duration SECS] [--entries N]
//!     [--readers N] [--latency-ms MS] [--error-rate FRACTION]
//!     [--ttl-ms MS] [--interval-ms MS] [--changes-per-sec N]
//! ```
//!
//! It prints a progress line each second and a report at the end: reads/s,
//! read latency percentiles, hit rate, the share of reads served stale,
//! refreshes and refresh errors, and the largest staleness any reader saw:
//! how long after the hub published a newer commit a reader still got the
//! older one.

use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use rand::rngs::SmallRng;
use rand::{RngExt, SeedableRng};
use rand_distr::Zipf;
use swr_cache::Cache;

#[derive(Clone, Copy, Debug)]
struct Options {
    duration: Duration,
    entries: usize,
    readers: usize,
    latency: Duration,
    error_rate: f64,
    ttl: Duration,
    interval: Duration,
    changes_per_sec: u64,
}

impl Options {
    fn from_args() -> Result<Self, String> {
        let mut options = Self {
            duration: Duration::from_secs(15),
            entries: 10_000,
            readers: 4,
            latency: Duration::from_millis(20),
            error_rate: 0.05,
            ttl: Duration::from_secs(2),
            interval: Duration::from_millis(500),
            changes_per_sec: 200,
        };
        let mut args = std::env::args().skip(1);
        while let Some(flag) = args.next() {
            if flag == "--help" || flag == "-h" {
                return Err(String::new());
            }
            let value = args.next().ok_or(format!("{flag} needs a value"))?;
            let number = |v: &str| v.parse::<f64>().map_err(|e| format!("{flag} {v}: {e}"));
            let n = number(&value)?;
            if n < 0.0 || !n.is_finite() {
                return Err(format!("{flag} must be a finite number >= 0"));
            }
            match flag.as_str() {
                "--duration" => options.duration = Duration::from_secs_f64(n),
                "--entries" => options.entries = (n as usize).max(1),
                "--readers" => options.readers = (n as usize).max(1),
                "--latency-ms" => options.latency = Duration::from_secs_f64(n / 1000.0),
                "--error-rate" => options.error_rate = n.min(1.0),
                "--ttl-ms" => {
                    options.ttl = Duration::from_secs_f64(n / 1000.0).max(Duration::from_millis(1))
                }
                "--interval-ms" => {
                    options.interval =
                        Duration::from_secs_f64(n / 1000.0).max(Duration::from_millis(1))
                }
                "--changes-per-sec" => options.changes_per_sec = n as u64,
                _ => return Err(format!("unknown flag {flag}")),
            }
        }
        Ok(options)
    }
}

/// A prompt commit as the hub serves it.
#[derive(Clone, Debug)]
struct Commit {
    version: u64,
    #[allow(dead_code)] // carried as a real payload would be; the demo reads only versions
    manifest: Arc<str>,
}

/// The simulated prompt hub.
struct Hub {
    start: Instant,
    /// Per prompt: its current version and when that version was published
    /// (nanoseconds since `start`), packed as `version << 40 | published_ms`.
    prompts: Vec<AtomicU64>,
    latency: Duration,
    error_rate: f64,
    /// Draws which calls fail; off the read path, so a mutex is fine.
    failures: Mutex<SmallRng>,
    calls: AtomicU64,
}

const MS_BITS: u32 = 40;

impl Hub {
    fn new(entries: usize, latency: Duration, error_rate: f64) -> Self {
        Self {
            start: Instant::now(),
            prompts: (0..entries).map(|_| AtomicU64::new(0)).collect(),
            latency,
            error_rate,
            failures: Mutex::new(SmallRng::seed_from_u64(11)),
            calls: AtomicU64::new(0),
        }
    }

    fn now_ms(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }

    /// The current version of a prompt and when it was published.
    fn current(&self, prompt: usize) -> (u64, u64) {
        let packed = self.prompts[prompt].load(Ordering::Relaxed);
        (packed >> MS_BITS, packed & ((1 << MS_BITS) - 1))
    }

    fn publish(&self, prompt: usize) {
        let (version, _) = self.current(prompt);
        let packed = ((version + 1) << MS_BITS) | self.now_ms();
        self.prompts[prompt].store(packed, Ordering::Relaxed);
    }

    async fn pull(&self, prompt: usize) -> Result<Commit, String> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        tokio::time::sleep(self.latency).await;
        let fail = self.failures.lock().expect("not poisoned").random::<f64>() < self.error_rate;
        if fail {
            return Err(format!("hub: 503 for prompt {prompt}"));
        }
        let (version, _) = self.current(prompt);
        Ok(Commit {
            version,
            manifest: Arc::from(format!("prompt {prompt} at version {version}")),
        })
    }
}

struct ReaderReport {
    latency: Histogram<u64>,
    reads: u64,
    max_staleness_ms: u64,
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let options = match Options::from_args() {
        Ok(options) => options,
        Err(message) => {
            if !message.is_empty() {
                eprintln!("demo: {message}");
            }
            eprintln!(
                "usage: demo [--duration SECS] [--entries N] [--readers N] [--latency-ms MS]\n            [--error-rate FRACTION] [--ttl-ms MS] [--interval-ms MS] [--changes-per-sec N]"
            );
            std::process::exit(if message.is_empty() { 0 } else { 2 });
        }
    };
    println!("swr-cache demo: {options:?}");

    let hub = Arc::new(Hub::new(
        options.entries,
        options.latency,
        options.error_rate,
    ));
    let cache: Cache<usize, Commit> = Cache::builder()
        .max_size(options.entries)
        .ttl(Some(options.ttl))
        .refresh_interval(options.interval)
        .max_concurrent_refreshes(256)
        .fetcher({
            let hub = Arc::clone(&hub);
            move |prompt: usize| {
                let hub = Arc::clone(&hub);
                async move { hub.pull(prompt).await }
            }
        })
        .build()?;
    cache.start()?;

    // Warm the cache as a service would at start-up: every prompt read
    // through, 256 at a time, retrying the hub's failures.
    let warm_start = Instant::now();
    let mut cold: Vec<usize> = (0..options.entries).collect();
    while !cold.is_empty() {
        let mut fills = tokio::task::JoinSet::new();
        for chunk in cold.chunks(cold.len().div_ceil(256)) {
            let (cache, chunk) = (cache.clone(), chunk.to_vec());
            fills.spawn(async move {
                let mut failed = Vec::new();
                for prompt in chunk {
                    if cache.get_or_fetch(&prompt).await.is_err() {
                        failed.push(prompt);
                    }
                }
                failed
            });
        }
        cold = fills.join_all().await.concat();
    }
    println!(
        "warmed {} prompts in {:.2} s",
        cache.len(),
        warm_start.elapsed().as_secs_f64()
    );
    cache.reset_metrics();

    let running = Arc::new(AtomicBool::new(true));
    let zipf = Zipf::new(options.entries as f64, 1.0).map_err(|e| format!("zipf: {e:?}"))?;

    // The hub publishes new commits of random prompts as time goes on.
    let publisher = tokio::spawn({
        let (hub, running) = (Arc::clone(&hub), Arc::clone(&running));
        let per_tick = (options.changes_per_sec / 10).max(1);
        async move {
            let mut rng = SmallRng::seed_from_u64(3);
            let mut tick = tokio::time::interval(Duration::from_millis(100));
            while running.load(Ordering::Relaxed) {
                tick.tick().await;
                if options.changes_per_sec > 0 {
                    for _ in 0..per_tick {
                        hub.publish(rng.random_range(0..hub.prompts.len()));
                    }
                }
            }
        }
    });

    let reads = Arc::new(AtomicU64::new(0));
    let mut readers = Vec::new();
    for reader in 0..options.readers {
        let (cache, hub, running, reads) = (
            cache.clone(),
            Arc::clone(&hub),
            Arc::clone(&running),
            Arc::clone(&reads),
        );
        readers.push(tokio::spawn(async move {
            let mut rng = SmallRng::seed_from_u64(reader as u64);
            let mut report = ReaderReport {
                latency: Histogram::new(3).expect("valid precision"),
                reads: 0,
                max_staleness_ms: 0,
            };
            while running.load(Ordering::Relaxed) {
                for _ in 0..256 {
                    let prompt = rng.sample(zipf) as usize - 1;
                    let started = Instant::now();
                    let commit = cache.get(&prompt);
                    report
                        .latency
                        .saturating_record(started.elapsed().as_nanos() as u64);
                    let commit = match commit {
                        Some(commit) => commit,
                        // A miss reads through; its wait is the hub's, not the cache's.
                        None => match cache.get_or_fetch(&prompt).await {
                            Ok(commit) => commit,
                            Err(_) => continue,
                        },
                    };
                    let (version, published_ms) = hub.current(prompt);
                    if commit.version < version {
                        // A newer commit exists; it has for at least this long.
                        let staleness = hub.now_ms().saturating_sub(published_ms);
                        report.max_staleness_ms = report.max_staleness_ms.max(staleness);
                    }
                }
                report.reads += 256;
                reads.fetch_add(256, Ordering::Relaxed);
                tokio::task::yield_now().await;
            }
            report
        }));
    }

    let started = Instant::now();
    let mut last_reads = 0;
    let mut progress = tokio::time::interval(Duration::from_secs(1));
    progress.tick().await;
    while started.elapsed() < options.duration {
        progress.tick().await;
        let total = reads.load(Ordering::Relaxed);
        let m = cache.metrics();
        print!(
            "\r[{:>4.0}s] {:>11} reads/s  hit {:>6.2}%  stale {:>6.2}%  refreshes {:>7}  errors {:>5}  len {:>6}",
            started.elapsed().as_secs_f64(),
            total - last_reads,
            m.hit_rate() * 100.0,
            m.stale_hits as f64 / (m.hits.max(1)) as f64 * 100.0,
            m.refreshes,
            m.refresh_errors,
            cache.len(),
        );
        std::io::stdout().flush()?;
        last_reads = total;
    }
    running.store(false, Ordering::Relaxed);
    let elapsed = started.elapsed();
    let mut latency = Histogram::<u64>::new(3)?;
    let mut total_reads = 0;
    let mut max_staleness_ms = 0;
    for reader in readers {
        let report = reader.await?;
        latency.add(&report.latency)?;
        total_reads += report.reads;
        max_staleness_ms = max_staleness_ms.max(report.max_staleness_ms);
    }
    publisher.await?;
    cache.stop().await;

    let m = cache.metrics();
    println!("\n\n## swr-cache demo report\n");
    println!("| measure | value |\n|---|---|");
    println!("| duration | {:.1} s |", elapsed.as_secs_f64());
    println!("| readers | {} |", options.readers);
    println!("| reads | {total_reads} |");
    println!(
        "| reads/s | {:.0} |",
        total_reads as f64 / elapsed.as_secs_f64()
    );
    for (name, q) in [("p50", 0.5), ("p99", 0.99), ("p99.9", 0.999)] {
        println!(
            "| read latency {name} | {} ns |",
            latency.value_at_quantile(q)
        );
    }
    println!("| hit rate | {:.3} % |", m.hit_rate() * 100.0);
    println!(
        "| served stale | {:.3} % of hits |",
        m.stale_hits as f64 / m.hits.max(1) as f64 * 100.0
    );
    println!("| refreshes | {} |", m.refreshes);
    println!("| refresh errors | {} |", m.refresh_errors);
    println!("| hub calls | {} |", hub.calls.load(Ordering::Relaxed));
    println!("| largest staleness seen | {max_staleness_ms} ms |");
    println!(
        "\n(ttl {:?}, refresh interval {:?}, hub latency {:?}, hub error rate {:.1} %, {} entries, {} changes/s)",
        options.ttl,
        options.interval,
        options.latency,
        options.error_rate * 100.0,
        options.entries,
        options.changes_per_sec
    );
    Ok(())
}
