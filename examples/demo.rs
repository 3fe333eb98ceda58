//! A prompt hub behind a stale-while-revalidate cache, under read load.
//!
//! A simulated hub serves prompt commits with some latency, fails some of its
//! calls, and publishes new commits of random prompts as time goes on. Reader
//! tasks read prompts with Zipf-distributed names as fast as they can, from
//! more prompts than the cache holds. A miss is filled from the hub in the
//! background (at most 256 fills at once, one per prompt) while the reader
//! moves on, as a service answering with a fallback would; the refresher
//! keeps cached prompts fresh, so readers never wait for the hub.
//!
//! ```text
//! cargo run --release --example demo              # 15 s with the defaults
//! cargo run --release --example demo -- --help    # every flag, with its default
//! ```
//!
//! It prints a progress line each second (rewritten in place on a terminal,
//! one line per second in a log) and a report at the end: reads/s, read
//! latency percentiles, hit rate, the share of reads served stale, refreshes
//! and errors, and how stale the commits readers got were: the time since
//! the hub had published a newer commit of that prompt, beside the bound the
//! settings promise. With `--report FILE.svg` it also draws those measures
//! second by second: reads/s, the share served stale, refreshes and errors,
//! and the staleness of what readers got.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::{Arg, ArgMatches, Command, value_parser};
use hdrhistogram::Histogram;
use rand::rngs::SmallRng;
use rand::{RngExt, SeedableRng};
use rand_distr::Zipf;
use swr_cache::Cache;

#[path = "support/chart.rs"]
mod chart;
#[path = "support/cli.rs"]
mod cli;
use chart::{Panel, Series};
use cli::seconds;

fn command() -> Command {
    let count = |name: &'static str, default: &'static str, help: &'static str| {
        Arg::new(name)
            .long(name)
            .value_name("N")
            .default_value(default)
            .value_parser(value_parser!(u64).range(1..=100_000_000))
            .help(help)
    };
    Command::new("demo")
        .about("A simulated prompt hub behind swr-cache, read by many tasks at once.")
        .arg(seconds("duration", "15", "How long the readers run"))
        .arg(count(
            "prompts",
            "20000",
            "Prompts the hub holds (the key space)",
        ))
        .arg(count(
            "cache-size",
            "10000",
            "Prompts the cache holds (max_size)",
        ))
        .arg(
            count("readers", "4", "Reader tasks reading as fast as they can")
                .value_parser(value_parser!(u64).range(1..=1024)),
        )
        .arg(seconds("latency", "0.02", "The hub's latency per call"))
        .arg(
            Arg::new("error-rate")
                .long("error-rate")
                .value_name("FRACTION")
                .default_value("0.05")
                .value_parser(parse_fraction)
                .help("The share of hub calls that fail, 0 to 1"),
        )
        .arg(seconds(
            "ttl",
            "2",
            "Age after which a cached commit is stale",
        ))
        .arg(seconds(
            "refresh-interval",
            "0.5",
            "How often the refresher looks for stale commits",
        ))
        .arg(seconds(
            "refresh-timeout",
            "1",
            "How long one hub call may take before it is given up",
        ))
        .arg(
            count(
                "changes-per-sec",
                "200",
                "New commits the hub publishes a second",
            )
            .value_parser(value_parser!(u64).range(0..=1_000_000)),
        )
        .arg(
            Arg::new("report")
                .long("report")
                .value_name("FILE.svg")
                .value_parser(value_parser!(PathBuf))
                .help("Also draw the run, second by second, as an SVG chart in FILE.svg"),
        )
}

fn parse_fraction(text: &str) -> Result<f64, String> {
    let fraction: f64 = text
        .parse()
        .map_err(|_| format!("`{text}` is not a number"))?;
    if !(0.0..=1.0).contains(&fraction) {
        return Err("must be between 0 and 1".into());
    }
    Ok(fraction)
}

#[derive(Clone, Copy, Debug)]
struct Options {
    duration: Duration,
    prompts: usize,
    cache_size: usize,
    readers: usize,
    latency: Duration,
    error_rate: f64,
    ttl: Duration,
    interval: Duration,
    timeout: Duration,
    changes_per_sec: u64,
}

impl Options {
    fn from(matches: &ArgMatches) -> Self {
        let duration = |name| *matches.get_one::<Duration>(name).expect("has a default");
        let count = |name| *matches.get_one::<u64>(name).expect("has a default");
        Self {
            duration: duration("duration"),
            prompts: count("prompts") as usize,
            cache_size: count("cache-size") as usize,
            readers: count("readers") as usize,
            latency: duration("latency"),
            error_rate: *matches.get_one::<f64>("error-rate").expect("has a default"),
            ttl: duration("ttl"),
            interval: duration("refresh-interval"),
            timeout: duration("refresh-timeout"),
            changes_per_sec: count("changes-per-sec"),
        }
    }

    /// How stale a commit a reader gets can be, if the hub answers: it was
    /// fresh when fetched, goes stale a TTL later, and its next refresh
    /// starts within a refresh interval (at once if read) and takes one hub
    /// call.
    fn staleness_bound(&self) -> Duration {
        self.ttl + self.interval + self.latency.min(self.timeout)
    }

    fn describe(&self) {
        println!(
            "swr-cache demo: {} prompts on a hub, {} of them fit in the cache.",
            self.prompts, self.cache_size
        );
        println!(
            "The hub answers in {:?}, fails {:.1} % of its calls, and publishes {} new commits a second.",
            self.latency,
            self.error_rate * 100.0,
            self.changes_per_sec
        );
        println!(
            "A cached commit is stale after {:?}; the refresher looks every {:?} and gives a hub call {:?}.",
            self.ttl, self.interval, self.timeout
        );
        println!(
            "{} readers read Zipf-distributed prompts for {:?}; a miss reads through the hub.\n",
            self.readers, self.duration
        );
    }
}

/// A prompt commit as the hub serves it.
#[derive(Clone, Debug)]
struct Commit {
    version: u64,
    #[allow(dead_code)] // carried as a real payload would be; the demo reads only versions
    manifest: Arc<str>,
}

/// How many recent publish times the hub keeps per prompt.
const HISTORY: usize = 8;

/// The simulated prompt hub.
struct Hub {
    start: Instant,
    /// Per prompt: its current version.
    versions: Vec<AtomicU64>,
    /// Per prompt: when its recent versions were published (ms since
    /// `start`), version `v` at `v % HISTORY`.
    published: Vec<[AtomicU64; HISTORY]>,
    latency: Duration,
    error_rate: f64,
    /// Draws which calls fail; off the read path, so a mutex is fine.
    failures: Mutex<SmallRng>,
    calls: AtomicU64,
}

impl Hub {
    fn new(prompts: usize, latency: Duration, error_rate: f64) -> Self {
        Self {
            start: Instant::now(),
            versions: (0..prompts).map(|_| AtomicU64::new(0)).collect(),
            published: (0..prompts)
                .map(|_| std::array::from_fn(|_| AtomicU64::new(0)))
                .collect(),
            latency,
            error_rate,
            failures: Mutex::new(SmallRng::seed_from_u64(11)),
            calls: AtomicU64::new(0),
        }
    }

    fn now_ms(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }

    fn publish(&self, prompt: usize) {
        let next = self.versions[prompt].load(Ordering::Relaxed) + 1;
        self.published[prompt][next as usize % HISTORY].store(self.now_ms(), Ordering::Relaxed);
        self.versions[prompt].store(next, Ordering::Release);
    }

    /// How long ago the commit `version` of `prompt` was superseded by a
    /// newer one; `None` while it is the current one. For a commit more
    /// than `HISTORY` versions behind, the oldest time kept (so at least
    /// that long).
    fn superseded_for(&self, prompt: usize, version: u64) -> Option<u64> {
        let current = self.versions[prompt].load(Ordering::Acquire);
        if version >= current {
            return None;
        }
        let next = (version + 1).max(current.saturating_sub(HISTORY as u64 - 1));
        let at = self.published[prompt][next as usize % HISTORY].load(Ordering::Relaxed);
        Some(self.now_ms().saturating_sub(at))
    }

    async fn pull(&self, prompt: usize) -> Result<Commit, String> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        tokio::time::sleep(self.latency).await;
        let fail = self.failures.lock().expect("not poisoned").random::<f64>() < self.error_rate;
        if fail {
            return Err(format!("hub: 503 for prompt {prompt}"));
        }
        let version = self.versions[prompt].load(Ordering::Acquire);
        Ok(Commit {
            version,
            manifest: Arc::from(format!("prompt {prompt} at version {version}")),
        })
    }
}

struct ReaderReport {
    latency: Histogram<u64>,
    reads: u64,
    /// Reads that got a commit the hub had superseded, and how long before.
    stale_reads: u64,
    staleness_ms: Histogram<u64>,
    /// Misses whose fill was left to one already under way or skipped as
    /// 256 were under way.
    fills_skipped: u64,
}

/// Fills missed prompts from the hub in the background, at most this many
/// at once.
const FILLS: usize = 256;

/// Reads that got a superseded commit since the progress loop last took
/// them: how many, and how long they had been superseded, summed and at
/// most. Readers add to it once per batch of reads.
#[derive(Default)]
struct Superseded {
    reads: AtomicU64,
    sum_ms: AtomicU64,
    max_ms: AtomicU64,
}

impl Superseded {
    fn add(&self, reads: u64, sum_ms: u64, max_ms: u64) {
        self.reads.fetch_add(reads, Ordering::Relaxed);
        self.sum_ms.fetch_add(sum_ms, Ordering::Relaxed);
        self.max_ms.fetch_max(max_ms, Ordering::Relaxed);
    }

    /// What was added since the last take: reads, sum and max (ms).
    fn take(&self) -> (u64, u64, u64) {
        (
            self.reads.swap(0, Ordering::Relaxed),
            self.sum_ms.swap(0, Ordering::Relaxed),
            self.max_ms.swap(0, Ordering::Relaxed),
        )
    }
}

/// One second of the run, as the report draws it.
struct Second {
    /// Seconds since the readers started.
    at: f64,
    reads_per_sec: f64,
    /// Of this second's hits, the share served stale (%).
    served_stale: f64,
    /// Of this second's reads, the share that got a superseded commit (%).
    superseded: f64,
    refreshes_per_sec: f64,
    errors_per_sec: f64,
    /// How long the superseded commits read this second had been
    /// superseded: mean and max (ms); 0 without any.
    staleness_mean_ms: f64,
    staleness_max_ms: f64,
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let matches = command().get_matches();
    let options = Options::from(&matches);
    let report = matches.get_one::<PathBuf>("report").cloned();
    options.describe();

    let hub = Arc::new(Hub::new(
        options.prompts,
        options.latency,
        options.error_rate,
    ));
    let cache: Cache<usize, Commit> = Cache::builder()
        .max_size(options.cache_size)
        .ttl(Some(options.ttl))
        .refresh_interval(options.interval)
        .refresh_timeout(options.timeout)
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

    // Warm the cache as a service would at start-up: the most read prompts
    // read through, 256 at a time, each tried three times at most.
    let warm_start = Instant::now();
    let warm: Vec<usize> = (0..options.cache_size.min(options.prompts)).collect();
    let mut fills = tokio::task::JoinSet::new();
    for chunk in warm.chunks(warm.len().div_ceil(256).max(1)) {
        let (cache, chunk) = (cache.clone(), chunk.to_vec());
        fills.spawn(async move {
            let mut cold = 0;
            for prompt in chunk {
                let mut tries = 0;
                while cache.get_or_fetch(&prompt).await.is_err() {
                    tries += 1;
                    if tries == 3 {
                        cold += 1;
                        break;
                    }
                }
            }
            cold
        });
    }
    let cold: usize = fills.join_all().await.into_iter().sum();
    println!(
        "Warmed {} prompts in {:.2} s ({cold} left cold after three failed tries).",
        cache.len(),
        warm_start.elapsed().as_secs_f64()
    );
    cache.reset_metrics();

    let running = Arc::new(AtomicBool::new(true));
    let zipf = Zipf::new(options.prompts as f64, 1.0).map_err(|e| format!("zipf: {e:?}"))?;

    // The hub publishes new commits of random prompts as time goes on.
    let publisher = tokio::spawn({
        let (hub, running) = (Arc::clone(&hub), Arc::clone(&running));
        async move {
            let mut rng = SmallRng::seed_from_u64(3);
            let mut tick = tokio::time::interval(Duration::from_millis(100));
            let mut owed = 0.0;
            while running.load(Ordering::Relaxed) {
                tick.tick().await;
                owed += options.changes_per_sec as f64 / 10.0;
                while owed >= 1.0 {
                    hub.publish(rng.random_range(0..hub.versions.len()));
                    owed -= 1.0;
                }
            }
        }
    });

    let reads = Arc::new(AtomicU64::new(0));
    let superseded = Arc::new(Superseded::default());
    let fills = Arc::new(tokio::sync::Semaphore::new(FILLS));
    let mut readers = Vec::new();
    for reader in 0..options.readers {
        let (cache, hub, running, reads, superseded, fills) = (
            cache.clone(),
            Arc::clone(&hub),
            Arc::clone(&running),
            Arc::clone(&reads),
            Arc::clone(&superseded),
            Arc::clone(&fills),
        );
        readers.push(tokio::spawn(async move {
            let mut rng = SmallRng::seed_from_u64(reader as u64);
            let mut report = ReaderReport {
                latency: Histogram::new(3).expect("valid precision"),
                reads: 0,
                stale_reads: 0,
                staleness_ms: Histogram::new(3).expect("valid precision"),
                fills_skipped: 0,
            };
            while running.load(Ordering::Relaxed) {
                // This batch's superseded reads: count, sum and max (ms).
                let mut batch = (0, 0, 0);
                for _ in 0..256 {
                    let prompt = rng.sample(zipf) as usize - 1;
                    let started = Instant::now();
                    let commit = cache.get(&prompt);
                    report
                        .latency
                        .saturating_record(started.elapsed().as_nanos() as u64);
                    let Some(commit) = commit else {
                        // The fill joins one under way for the prompt, if any.
                        match Arc::clone(&fills).try_acquire_owned() {
                            Ok(permit) => {
                                let cache = cache.clone();
                                tokio::spawn(async move {
                                    let _ = cache.get_or_fetch(&prompt).await;
                                    drop(permit);
                                });
                            }
                            Err(_) => report.fills_skipped += 1,
                        }
                        continue;
                    };
                    if let Some(ms) = hub.superseded_for(prompt, commit.version) {
                        report.stale_reads += 1;
                        report.staleness_ms.saturating_record(ms);
                        batch = (batch.0 + 1, batch.1 + ms, batch.2.max(ms));
                    }
                }
                if batch.0 > 0 {
                    superseded.add(batch.0, batch.1, batch.2);
                }
                report.reads += 256;
                reads.fetch_add(256, Ordering::Relaxed);
                tokio::task::yield_now().await;
            }
            report
        }));
    }

    let terminal = std::io::stdout().is_terminal();
    let started = Instant::now();
    let (mut last_reads, mut last_at, mut last) = (0, 0.0, cache.metrics());
    superseded.take();
    let mut seconds = Vec::new();
    let mut progress = tokio::time::interval(Duration::from_secs(1));
    progress.tick().await;
    while started.elapsed() < options.duration {
        progress.tick().await;
        let total = reads.load(Ordering::Relaxed);
        let m = cache.metrics();
        let at = started.elapsed().as_secs_f64();
        let (stale_reads, stale_sum_ms, stale_max_ms) = superseded.take();
        let span = (at - last_at).max(1e-3);
        let hits = m.hits - last.hits;
        seconds.push(Second {
            at,
            reads_per_sec: (total - last_reads) as f64 / span,
            served_stale: (m.stale_hits - last.stale_hits) as f64 / hits.max(1) as f64 * 100.0,
            superseded: stale_reads as f64 / (total - last_reads).max(1) as f64 * 100.0,
            refreshes_per_sec: (m.refreshes - last.refreshes) as f64 / span,
            errors_per_sec: (m.refresh_errors + m.load_errors
                - last.refresh_errors
                - last.load_errors) as f64
                / span,
            staleness_mean_ms: stale_sum_ms as f64 / stale_reads.max(1) as f64,
            staleness_max_ms: stale_max_ms as f64,
        });
        (last_at, last) = (at, m);
        let line = format!(
            "{:>4.0} s: {:>10} reads/s, hit {:>6.2} %, served stale {:>5.2} %, {:>7} refreshes, {:>5} errors, {:>6} loads, {:>6} cached",
            started.elapsed().as_secs_f64(),
            total - last_reads,
            m.hit_rate() * 100.0,
            m.stale_hits as f64 / (m.hits.max(1)) as f64 * 100.0,
            m.refreshes,
            m.refresh_errors + m.load_errors,
            m.loads,
            cache.len(),
        );
        if terminal {
            print!("\r{line}");
            std::io::stdout().flush()?;
        } else {
            println!("{line}");
        }
        last_reads = total;
    }
    running.store(false, Ordering::Relaxed);
    let elapsed = started.elapsed();
    let mut latency = Histogram::<u64>::new(3)?;
    let mut staleness = Histogram::<u64>::new(3)?;
    let (mut total_reads, mut stale_reads, mut fills_skipped) = (0, 0, 0);
    for reader in readers {
        let report = reader.await?;
        latency.add(&report.latency)?;
        staleness.add(&report.staleness_ms)?;
        total_reads += report.reads;
        stale_reads += report.stale_reads;
        fills_skipped += report.fills_skipped;
    }
    publisher.await?;
    cache.stop().await;

    let m = cache.metrics();
    if terminal {
        println!();
    }
    println!("\n## swr-cache demo report\n");
    println!("| measure | value |\n|---|---|");
    println!("| duration | {:.1} s |", elapsed.as_secs_f64());
    println!("| reads | {total_reads} by {} readers |", options.readers);
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
    println!(
        "| hit rate | {:.2} % ({} prompts, {} cached) |",
        m.hit_rate() * 100.0,
        options.prompts,
        options.cache_size
    );
    println!(
        "| served stale (older than the TTL) | {:.2} % of hits |",
        m.stale_hits as f64 / m.hits.max(1) as f64 * 100.0
    );
    println!(
        "| loads (read-through fills), load errors | {}, {} |",
        m.loads, m.load_errors
    );
    println!(
        "| refreshes, refresh errors | {}, {} |",
        m.refreshes, m.refresh_errors
    );
    println!(
        "| fetched and discarded (the key was written meanwhile) | {} |",
        m.discarded
    );
    println!("| hub calls | {} |", hub.calls.load(Ordering::Relaxed));
    println!(
        "| misses left unfilled ({FILLS} fills already under way) | {fills_skipped} of {} |",
        m.misses
    );
    println!(
        "| reads that got a superseded commit | {:.2} % |",
        stale_reads as f64 / total_reads.max(1) as f64 * 100.0
    );
    if stale_reads > 0 {
        println!(
            "| superseded for, p50 / p99 / max | {} / {} / {} ms |",
            staleness.value_at_quantile(0.5),
            staleness.value_at_quantile(0.99),
            staleness.max()
        );
    }
    println!(
        "| staleness the settings promise, if the hub answers | {} ms (ttl + refresh interval + one hub call) |",
        options.staleness_bound().as_millis()
    );
    if let Some(path) = report {
        if let Some(dir) = path.parent().filter(|dir| !dir.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(&path, draw(&options, &seconds))?;
        println!("\nThe run, second by second: {}", path.display());
    }
    Ok(())
}

/// The report's chart: four panels over the seconds of the run.
fn draw(options: &Options, seconds: &[Second]) -> String {
    let series = |label, color, value: fn(&Second) -> f64| Series {
        label,
        color,
        points: seconds.iter().map(|s| (s.at, value(s))).collect(),
    };
    let panels = [
        Panel {
            title: "Reads",
            unit: "per second",
            series: vec![series("reads", "#1f77b4", |s| s.reads_per_sec)],
            bound: None,
        },
        Panel {
            title: "Stale reads",
            unit: "%",
            series: vec![
                series("served stale, of hits", "#ff7f0e", |s| s.served_stale),
                series("superseded, of reads", "#9467bd", |s| s.superseded),
            ],
            bound: None,
        },
        Panel {
            title: "Refreshes and errors",
            unit: "per second",
            series: vec![
                series("refreshes", "#2ca02c", |s| s.refreshes_per_sec),
                series("errors", "#d62728", |s| s.errors_per_sec),
            ],
            bound: None,
        },
        Panel {
            title: "How long what readers got had been superseded",
            unit: "ms",
            series: vec![
                series("mean", "#8c564b", |s| s.staleness_mean_ms),
                series("max", "#e377c2", |s| s.staleness_max_ms),
            ],
            bound: Some((
                format!(
                    "bound the settings promise: {} ms",
                    options.staleness_bound().as_millis()
                ),
                options.staleness_bound().as_secs_f64() * 1000.0,
            )),
        },
    ];
    let title = format!(
        "swr-cache demo: {} readers, {} prompts, {} cached, hub {:?} latency, {:.0} % errors",
        options.readers,
        options.prompts,
        options.cache_size,
        options.latency,
        options.error_rate * 100.0
    );
    chart::svg(&title, "seconds since the readers started", &panels)
}
