//! Three replicas of a service behind one prompt hub, with and without a
//! fleet link.
//!
//! The hub publishes a new commit of a random prompt every so often and
//! tells one replica (as a webhook would); that replica refreshes the
//! prompt at once. Without the link, the other two serve the old commit
//! until their TTL runs out; with it, the refresh is published (with the
//! commit as its version), the others mark the prompt stale and refresh it,
//! serving the old commit only for that fetch. A reader thread per replica
//! reads prompts as fast as it can and notes every read of a commit older
//! than the hub's.
//!
//! ```text
//! cargo run --release --features redis --example fleet                  # starts its own redis-server
//! cargo run --release --features redis --example fleet -- --redis redis://127.0.0.1:6379/
//! cargo run --release --features redis --example fleet -- --help
//! ```
//!
//! The report, for each run: per replica, the reads, the share that got an
//! older commit, and how long after the hub published a commit that
//! replica first served it (p50, max), and the largest staleness any
//! reader saw.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::{Arg, Command, value_parser};
use rand::rngs::SmallRng;
use rand::{RngExt, SeedableRng};
use swr_cache::Cache;
use swr_cache::fleet::{FleetBuilder, RemoteChanges};

const REPLICAS: usize = 3;
/// The hub's latency per call.
const LATENCY: Duration = Duration::from_millis(20);

#[path = "support/cli.rs"]
mod cli;
use cli::seconds;
// The tests' server harness; the example neither pauses nor restarts it.
#[path = "../tests/support/redis.rs"]
#[allow(dead_code)]
mod redis_server;

fn command() -> Command {
    Command::new("fleet")
        .about("Three swr-cache replicas behind one prompt hub, with and without a fleet link.")
        .arg(seconds("duration", "8", "How long each run lasts"))
        .arg(seconds("ttl", "5", "The caches' TTL"))
        .arg(seconds(
            "every",
            "0.25",
            "How often the hub publishes a new commit",
        ))
        .arg(
            Arg::new("prompts")
                .long("prompts")
                .value_name("N")
                .default_value("100")
                .value_parser(value_parser!(u32).range(1..=100_000))
                .help("Prompts the hub holds"),
        )
        .arg(
            Arg::new("redis").long("redis").value_name("URL").help(
                "A Redis server to use; without it, a redis-server is started on a free port",
            ),
        )
}

/// The prompt hub: each prompt's commit, and when it was published.
struct Hub {
    commits: Mutex<HashMap<u32, (u64, Instant)>>,
}

impl Hub {
    fn commit(&self, prompt: u32) -> (u64, Instant) {
        self.commits.lock().unwrap()[&prompt]
    }

    fn publish(&self, prompt: u32) -> u64 {
        let mut commits = self.commits.lock().unwrap();
        let entry = commits.get_mut(&prompt).expect("a known prompt");
        *entry = (entry.0 + 1, Instant::now());
        entry.0
    }
}

fn value(prompt: u32, commit: u64) -> String {
    format!("prompt-{prompt}@{commit}")
}

fn commit_of(value: &str) -> u64 {
    value
        .rsplit('@')
        .next()
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

/// What one replica's reader saw.
#[derive(Default)]
struct Seen {
    reads: u64,
    stale: u64,
    max_staleness: Duration,
    /// For each commit the hub published: how long until this replica first
    /// served it.
    caught_up: Vec<Duration>,
}

struct Settings {
    duration: Duration,
    ttl: Duration,
    every: Duration,
    prompts: u32,
}

fn run(settings: &Settings, url: Option<&str>, runtime: &tokio::runtime::Runtime) -> Vec<Seen> {
    let now = Instant::now();
    let hub = Arc::new(Hub {
        commits: Mutex::new((0..settings.prompts).map(|p| (p, (0, now))).collect()),
    });
    let _inside = runtime.enter();
    let mut caches = Vec::new();
    let mut links = Vec::new();
    for _ in 0..REPLICAS {
        let upstream = Arc::clone(&hub);
        let cache: Cache<u32, String> = Cache::builder()
            .max_size(2 * settings.prompts as usize)
            .ttl(settings.ttl)
            .fetcher(move |prompt: u32| {
                let upstream = Arc::clone(&upstream);
                async move {
                    tokio::time::sleep(LATENCY).await;
                    Ok::<_, std::convert::Infallible>(value(prompt, upstream.commit(prompt).0))
                }
            })
            .build()
            .expect("valid settings");
        for prompt in 0..settings.prompts {
            cache.insert(prompt, value(prompt, 0));
        }
        cache.start().expect("inside a runtime");
        if let Some(url) = url {
            let link = FleetBuilder::new(url, "swr-cache-fleet-example")
                .remote_changes(RemoteChanges::MarkStale)
                .version(|v: &String| commit_of(v).to_string())
                .attach(&cache)
                .expect("a valid Redis URL");
            runtime.block_on(async {
                tokio::time::timeout(Duration::from_secs(5), link.subscribed())
                    .await
                    .expect("subscribed to Redis within 5 s");
            });
            links.push(link);
        }
        caches.push(cache);
    }

    let stop = AtomicBool::new(false);
    std::thread::scope(|s| {
        let readers: Vec<_> = caches
            .iter()
            .map(|cache| {
                let hub = &hub;
                let stop = &stop;
                s.spawn(move || read(cache, hub, settings.prompts, stop))
            })
            .collect();
        // The hub: a new commit of a random prompt, told to replica 0.
        let mut rng = SmallRng::seed_from_u64(1);
        let started = Instant::now();
        while started.elapsed() < settings.duration {
            std::thread::sleep(settings.every);
            let prompt = rng.random_range(0..settings.prompts);
            hub.publish(prompt);
            let first = caches[0].clone();
            runtime.spawn(async move {
                let _ = first.refresh(&prompt).await;
            });
        }
        stop.store(true, Ordering::Relaxed);
        readers
            .into_iter()
            .map(|r| r.join().expect("a reader"))
            .collect()
    })
}

/// Reads prompts round and round until `stop`, noting old commits.
fn read(cache: &Cache<u32, String>, hub: &Hub, prompts: u32, stop: &AtomicBool) -> Seen {
    let mut seen = Seen::default();
    // The newest commit this reader has served, per prompt.
    let mut served = vec![0u64; prompts as usize];
    let mut prompt = 0;
    while !stop.load(Ordering::Relaxed) {
        prompt = (prompt + 1) % prompts;
        let Some(got) = cache.get(&prompt) else {
            continue;
        };
        seen.reads += 1;
        let (commit, published) = hub.commit(prompt);
        let got = commit_of(&got);
        if got < commit {
            seen.stale += 1;
            seen.max_staleness = seen.max_staleness.max(published.elapsed());
        } else if got > served[prompt as usize] {
            served[prompt as usize] = got;
            seen.caught_up.push(published.elapsed());
        }
    }
    seen
}

fn quantile(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

fn report(name: &str, seen: &[Seen]) {
    println!("\n{name}");
    println!("  replica  reads        older commit  caught up p50  caught up max  max staleness");
    for (i, s) in seen.iter().enumerate() {
        let mut caught = s.caught_up.clone();
        caught.sort();
        println!(
            "  {i}        {:<12} {:>10.4} %  {:>10.1} ms  {:>10.1} ms  {:>10.1} ms",
            s.reads,
            s.stale as f64 * 100.0 / s.reads.max(1) as f64,
            quantile(&caught, 0.5).as_secs_f64() * 1e3,
            quantile(&caught, 1.0).as_secs_f64() * 1e3,
            s.max_staleness.as_secs_f64() * 1e3,
        );
    }
    let worst = seen
        .iter()
        .map(|s| s.max_staleness)
        .max()
        .unwrap_or_default();
    println!(
        "  the largest staleness any reader saw: {:.1} ms",
        worst.as_secs_f64() * 1e3
    );
}

/// `url` without its password (`redis://user:***@host/`, or
/// `?pass=***` / `?password=***` in the query, as `redis+unix://` URLs
/// carry it), for printing.
fn redacted(url: &str) -> String {
    let (url, query) = match url.split_once('?') {
        Some((url, query)) => (url, Some(query)),
        None => (url, None),
    };
    let mut printed = match url.split_once("://") {
        Some((scheme, rest)) => {
            let authority = rest.split('/').next().unwrap_or(rest);
            match authority.rsplit_once('@') {
                Some((user_info, _host)) => {
                    let user = user_info.split(':').next().unwrap_or("");
                    format!("{scheme}://{user}:***@{}", &rest[user_info.len() + 1..])
                }
                None => url.to_owned(),
            }
        }
        None => url.to_owned(),
    };
    if let Some(query) = query {
        let pairs: Vec<String> = query
            .split('&')
            .map(|pair| match pair.split_once('=') {
                Some((name @ ("pass" | "password"), _)) => format!("{name}=***"),
                _ => pair.to_owned(),
            })
            .collect();
        printed = format!("{printed}?{}", pairs.join("&"));
    }
    printed
}

fn main() -> Result<(), String> {
    let args = command().get_matches();
    let secs = |name: &str| *args.get_one::<Duration>(name).expect("defaulted");
    let settings = Settings {
        duration: secs("duration"),
        ttl: secs("ttl"),
        every: secs("every"),
        prompts: *args.get_one::<u32>("prompts").expect("defaulted"),
    };
    let (_server, url) = match args.get_one::<String>("redis") {
        Some(url) => (None, url.clone()),
        None => {
            let server = redis_server::RedisServer::try_start_with(&[])
                .map_err(|why| format!("{why}; or pass --redis URL"))?;
            let url = server.url();
            (Some(server), url)
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    println!(
        "{REPLICAS} replicas, {} prompts, TTL {:?}, the hub ({LATENCY:?} a call) publishing a commit every {:?} to replica 0, {:?} a run; Redis at {}",
        settings.prompts,
        settings.ttl,
        settings.every,
        settings.duration,
        redacted(&url)
    );
    let without = run(&settings, None, &runtime);
    report("without the link: the others wait for their TTL", &without);
    let with = run(&settings, Some(&url), &runtime);
    report(
        "with the link (mark stale, the commit as the version)",
        &with,
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::redacted;

    /// The URL the example printed carried the password.
    #[test]
    fn the_printed_url_hides_the_password() {
        assert_eq!(
            redacted("redis://fleet:s3cret@redis.internal:6379/0"),
            "redis://fleet:***@redis.internal:6379/0"
        );
        assert_eq!(redacted("rediss://:s3cret@host/"), "rediss://:***@host/");
        assert_eq!(
            redacted("redis://127.0.0.1:6379/"),
            "redis://127.0.0.1:6379/"
        );
    }

    /// A password in the query (`redis+unix://` URLs carry it there) was
    /// printed as it was.
    #[test]
    fn the_printed_url_hides_a_password_in_the_query() {
        assert_eq!(
            redacted("redis+unix:///run/redis.sock?db=1&pass=s3cret"),
            "redis+unix:///run/redis.sock?db=1&pass=***"
        );
        assert_eq!(
            redacted("redis+unix:///run/redis.sock?password=s3cret&user=fleet"),
            "redis+unix:///run/redis.sock?password=***&user=fleet"
        );
        assert_eq!(
            redacted("redis://fleet:s3cret@host/?protocol=resp3"),
            "redis://fleet:***@host/?protocol=resp3"
        );
    }
}
