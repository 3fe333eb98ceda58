//! The fleet link against a real redis-server on loopback (started by the
//! bench on a free port):
//!
//! ```text
//! cargo bench --features redis --bench fleet
//! ```
//!
//! 1. *Convergence*: two linked caches; 1,000 times, one replica
//!    invalidates a key the other holds, and the bench spins until the
//!    other no longer serves it. Prints p50/p99/max of that time, beside
//!    the round trip of a Redis `PING` on the same machine.
//! 2. *Throughput of one link*: one replica publishes 200,000
//!    invalidations as fast as it can; the time until the other has
//!    applied them all.
//! 3. *The cost on writes*: `insert` and `invalidate` of `u64` keys on a
//!    cache with a link attached against the same cache without, in five
//!    interleaved rounds; prints the median ratio.
//!
//! Two cores: the bench's thread, and one tokio worker running both
//! links' tasks; redis-server shares them.

use std::time::{Duration, Instant};

use swr_cache::Cache;
use swr_cache::fleet::FleetBuilder;

// The tests' server harness; the bench does not restart it.
#[path = "../tests/support/redis.rs"]
#[allow(dead_code)]
mod redis_server;

#[path = "support/runtime.rs"]
mod runtime;

fn cache(size: usize) -> Cache<u64, u64> {
    Cache::builder()
        .max_size(size)
        .ttl(Duration::from_secs(3600))
        .build()
        .expect("valid settings")
}

fn wait(runtime: &tokio::runtime::Runtime, subscribed: impl std::future::Future<Output = ()>) {
    runtime.block_on(async {
        tokio::time::timeout(Duration::from_secs(10), subscribed)
            .await
            .expect("subscribed within 10 s");
    });
}

fn spin_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !done() {
        assert!(Instant::now() < deadline, "not within 30 s: {what}");
        std::hint::spin_loop();
    }
}

fn quantile(sorted: &[Duration], q: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

fn micros(d: Duration) -> String {
    format!("{:.0} µs", d.as_secs_f64() * 1e6)
}

fn convergence(url: &str, runtime: &tokio::runtime::Runtime) {
    const KEYS: u64 = 1_000;
    let (one, two) = (cache(2 * KEYS as usize), cache(2 * KEYS as usize));
    for key in 0..KEYS {
        two.insert(key, key);
    }
    let _inside = runtime.enter();
    let one_link = FleetBuilder::new(url, "bench-converge")
        .attach(&one)
        .expect("a valid URL");
    let two_link = FleetBuilder::new(url, "bench-converge")
        .attach(&two)
        .expect("a valid URL");
    wait(runtime, one_link.subscribed());
    wait(runtime, two_link.subscribed());

    let mut times = Vec::with_capacity(KEYS as usize);
    for key in 0..KEYS {
        let started = Instant::now();
        one_link.invalidate(key);
        spin_until("the other replica drops the key", || {
            !two.contains_key(&key)
        });
        times.push(started.elapsed());
    }
    times.sort();

    let client = redis::Client::open(url).expect("a valid URL");
    let mut pings = runtime.block_on(async {
        let mut connection = client
            .get_multiplexed_async_connection()
            .await
            .expect("a connection");
        let mut pings = Vec::new();
        for _ in 0..KEYS {
            let started = Instant::now();
            let _: String = redis::cmd("PING")
                .query_async(&mut connection)
                .await
                .expect("PONG");
            pings.push(started.elapsed());
        }
        pings
    });
    pings.sort();

    println!("## Convergence\n");
    println!(
        "Two replicas; one invalidates a key the other holds, {KEYS} times, one after another; the time until the other no longer serves it.\n"
    );
    println!("| | p50 | p99 | max |");
    println!("|---|---|---|---|");
    for (name, sorted) in [
        ("invalidate → gone on the other replica", &times),
        ("a Redis PING round trip, for scale", &pings),
    ] {
        println!(
            "| {name} | {} | {} | {} |",
            micros(quantile(sorted, 0.5)),
            micros(quantile(sorted, 0.99)),
            micros(quantile(sorted, 1.0))
        );
    }
    println!();
}

fn throughput(url: &str, runtime: &tokio::runtime::Runtime) {
    const MESSAGES: u64 = 200_000;
    let (one, two) = (cache(1_000), cache(1_000));
    let _inside = runtime.enter();
    let one_link = FleetBuilder::new(url, "bench-throughput")
        .queue(MESSAGES as usize)
        .attach(&one)
        .expect("a valid URL");
    let two_link = FleetBuilder::new(url, "bench-throughput")
        .attach(&two)
        .expect("a valid URL");
    wait(runtime, one_link.subscribed());
    wait(runtime, two_link.subscribed());

    let started = Instant::now();
    for key in 0..MESSAGES {
        one_link.invalidate(key);
    }
    let queued = started.elapsed();
    spin_until("every message applied or dropped", || {
        let applied = two_link.metrics().applied;
        applied + one_link.metrics().publish_dropped >= MESSAGES
    });
    let took = started.elapsed();
    spin_until("every publish counted", || {
        let m = one_link.metrics();
        m.published + m.publish_dropped >= MESSAGES
    });
    let sent = one_link.metrics();
    println!("## Throughput of one link\n");
    println!(
        "One replica invalidates {MESSAGES} keys as fast as it can (queued in {:.0} ms); the other applies them.\n",
        queued.as_secs_f64() * 1e3
    );
    println!("| messages | published | dropped | all applied in | messages/s |");
    println!("|---|---|---|---|---|");
    println!(
        "| {MESSAGES} | {} | {} | {:.2} s | {:.0} |\n",
        sent.published,
        sent.publish_dropped,
        took.as_secs_f64(),
        two_link.metrics().applied as f64 / took.as_secs_f64()
    );
}

/// Nanoseconds per insert then per invalidate of `keys` keys on `cache`.
fn time_writes(cache: &Cache<u64, u64>, keys: u64) -> (f64, f64) {
    let started = Instant::now();
    for key in 0..keys {
        cache.insert(key, key);
    }
    let insert = started.elapsed().as_nanos() as f64 / keys as f64;
    let started = Instant::now();
    for key in 0..keys {
        std::hint::black_box(cache.invalidate(&key));
    }
    let invalidate = started.elapsed().as_nanos() as f64 / keys as f64;
    (insert, invalidate)
}

fn write_cost(url: &str, runtime: &tokio::runtime::Runtime) {
    const KEYS: u64 = 100_000;
    const ROUNDS: usize = 5;
    let plain = cache(2 * KEYS as usize);
    let linked = cache(2 * KEYS as usize);
    let _inside = runtime.enter();
    // Room for every message of a round, so each one is really queued.
    let link = FleetBuilder::new(url, "bench-cost")
        .queue(2 * KEYS as usize)
        .attach(&linked)
        .expect("a valid URL");
    wait(runtime, link.subscribed());

    let mut rows = Vec::new();
    for _ in 0..ROUNDS {
        let without = time_writes(&plain, KEYS);
        let with = time_writes(&linked, KEYS);
        rows.push((without, with));
        // Let the publisher drain before the next round.
        spin_until("the round published", || {
            let m = link.metrics();
            m.published + m.publish_dropped >= (rows.len() as u64) * 2 * KEYS
        });
    }
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let m = link.metrics();
    println!("## The cost on writes\n");
    println!(
        "`u64` keys, {KEYS} inserts then {KEYS} invalidates a round, {ROUNDS} rounds alternating a cache without a link and one with (its queue large enough for a round: {} published, {} dropped in all).\n",
        m.published, m.publish_dropped
    );
    println!("| operation | without | with a link | ratio (median of rounds) |");
    println!("|---|---|---|---|");
    for (name, pick) in [
        (
            "insert",
            (|r: &((f64, f64), (f64, f64))| (r.0.0, r.1.0)) as fn(&_) -> _,
        ),
        ("invalidate", |r| (r.0.1, r.1.1)),
    ] {
        let without = median(rows.iter().map(|r| pick(r).0).collect());
        let with = median(rows.iter().map(|r| pick(r).1).collect());
        let ratio = median(rows.iter().map(|r| pick(r).1 / pick(r).0).collect());
        println!("| {name} | {without:.0} ns | {with:.0} ns | {ratio:.2}× |");
    }
    println!();
}

fn main() {
    // `cargo test --benches` runs this too; the figures need `cargo bench`.
    if !std::env::args().any(|a| a == "--bench") {
        println!("the fleet figures run with `cargo bench --features redis --bench fleet`");
        return;
    }
    let server = redis_server::RedisServer::start();
    let runtime = runtime::one_worker();
    convergence(&server.url(), &runtime);
    throughput(&server.url(), &runtime);
    write_cost(&server.url(), &runtime);
}
