//! The reference model shared by `tests/model.rs` (proptest) and the `ops`
//! fuzz target: random operation sequences run against the cache and the
//! model side by side.
//!
//! The model cannot predict which entry the policy evicts, but the cache
//! tells it: an eviction listener reports every removal with its cause, and
//! the model applies them. So after every operation the model must be the
//! cache exactly: the same keys with the same values, and the same ones
//! stale: marked, or past their TTL (the cache's hour, or one of their own
//! from `insert_with_ttl`) on tokio's paused clock, which only `Advance`
//! moves. Also checked after
//! every step: the store's own invariants (`validate`), the bound, that an
//! eviction happens only when a write needs the room, and that the metrics
//! add up.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use swr_cache::{Cache, ConfigChange, RemovalCause};

/// One operation on a `Cache<u8, u16>`.
#[derive(Clone, Debug)]
pub enum Op {
    Insert(u8, u16),
    /// An insert with a TTL of its own, in seconds.
    InsertWithTtl(u8, u16, u8),
    /// The clock moves on, in seconds.
    Advance(u8),
    Get(u8),
    Invalidate(u8),
    MarkStale(u8),
    Clear,
    Resize(usize),
}

type Events = Arc<Mutex<Vec<(u8, u16, RemovalCause)>>>;

/// The cache-wide TTL, in seconds.
const CACHE_TTL: u64 = 3600;

/// The weight of a value in a weighted run: 1 to 4.
pub fn weight_of(value: u16) -> u64 {
    u64::from(value % 4) + 1
}

/// How the cache under test is set up.
#[derive(Clone, Copy, Debug)]
pub struct Setup {
    /// The bound: `max_size`, or `max_weight` when `weighted`.
    pub initial_size: usize,
    /// Entries weigh [`weight_of`] their value and the bound is on the sum.
    pub weighted: bool,
    /// Built for 4,096 entries (several shards) and then shrunk to the
    /// bound, so the shards share a tiny capacity; else one shard.
    pub sharded: bool,
}

/// Runs `ops` against the cache and the model, checking after every step;
/// returns the cache and the model at the end.
pub fn run(setup: Setup, keys: u8, ops: &[Op]) -> (Cache<u8, u16>, HashMap<u8, u16>) {
    let Setup {
        initial_size,
        weighted,
        sharded,
    } = setup;
    // The clock the cache reads, paused: only `Advance` moves it.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap();
    let _inside = runtime.enter();
    let events: Events = Arc::default();
    let sink = Arc::clone(&events);
    let builder = Cache::builder()
        .max_size(if sharded { 4096 } else { initial_size })
        .ttl(Duration::from_secs(CACHE_TTL))
        .eviction_listener(move |k, v, cause| sink.lock().unwrap().push((k, v, cause)));
    let cache: Cache<u8, u16> = if weighted {
        builder
            .weigher(|_, v| weight_of(*v))
            .max_weight(initial_size as u64)
            .build()
            .unwrap()
    } else {
        builder.build().unwrap()
    };
    if sharded {
        assert!(cache.shard_count() > 1);
        let bound = if weighted {
            ConfigChange::new().max_weight(initial_size as u64)
        } else {
            ConfigChange::new().max_size(initial_size)
        };
        cache.configure(bound).unwrap();
    } else {
        assert_eq!(cache.shard_count(), 1, "small caches have one shard");
    }
    let bound = |cache: &Cache<u8, u16>| cache.max_weight().unwrap_or(cache.max_size() as u64);
    let mut model: HashMap<u8, u16> = HashMap::new();
    // The keys marked stale since they were last written.
    let mut stale: std::collections::HashSet<u8> = Default::default();
    // When each key goes stale, in seconds of the model's clock.
    let mut due: HashMap<u8, u64> = HashMap::new();
    let mut now = 0u64;
    let mut gets = 0u64;
    for op in ops {
        let weight_before = cache.weight();
        let bound_before = bound(&cache);
        match *op {
            Op::Insert(k, v) | Op::InsertWithTtl(k, v, _) => {
                let present = model.contains_key(&k);
                let ttl = match *op {
                    Op::InsertWithTtl(_, _, ttl) => {
                        cache.insert_with_ttl(k, v, Duration::from_secs(u64::from(ttl)));
                        u64::from(ttl)
                    }
                    _ => {
                        cache.insert(k, v);
                        CACHE_TTL
                    }
                };
                stale.remove(&k);
                due.insert(k, now + ttl);
                if bound_before > 0 {
                    model.insert(k, v);
                }
                // Room was needed only if the new weight does not fit.
                let old = if present {
                    cache_weight_of(&events, k, weighted)
                } else {
                    0
                };
                let incoming = if weighted { weight_of(v) } else { 1 };
                let needed = weight_before - old + incoming > bound_before;
                let evicted = events
                    .lock()
                    .unwrap()
                    .iter()
                    .any(|e| e.2 == RemovalCause::Evicted && e.0 != k);
                // (With several shards, one can be full while the cache is not.)
                assert!(
                    needed || !evicted || sharded,
                    "insert {k} evicted with room to spare ({weight_before} of {bound_before})"
                );
            }
            Op::Get(k) => {
                gets += u64::from(bound_before > 0);
                let got = cache.get(&k);
                assert_eq!(got, model.get(&k).copied(), "get {k} after {op:?}");
            }
            Op::Invalidate(k) => {
                let removed = cache.invalidate(&k);
                assert_eq!(removed, model.contains_key(&k), "invalidate {k}");
            }
            Op::MarkStale(k) => {
                let marked = cache.mark_stale(&k);
                assert_eq!(marked, model.contains_key(&k), "mark_stale {k}");
                if marked {
                    stale.insert(k);
                }
            }
            Op::Clear => cache.clear(),
            Op::Advance(secs) => {
                runtime.block_on(tokio::time::advance(Duration::from_secs(u64::from(secs))));
                now += u64::from(secs);
            }
            Op::Resize(size) => {
                let change = if weighted {
                    ConfigChange::new().max_weight(size as u64)
                } else {
                    ConfigChange::new().max_size(size)
                };
                cache.configure(change).unwrap();
            }
        }
        for (k, v, cause) in events.lock().unwrap().drain(..) {
            match cause {
                RemovalCause::Replaced => {}
                _ => {
                    // A refused overweight write reports its own value.
                    let held = model.get(&k).copied();
                    assert!(
                        held == Some(v) || matches!(*op, Op::Insert(ok, ov) if ok == k && ov == v),
                        "{cause} {k}={v}, but the model holds {held:?}"
                    );
                    model.remove(&k);
                    stale.remove(&k);
                }
            }
        }
        cache.validate();
        for k in 0..keys {
            assert_eq!(
                cache.peek(&k),
                model.get(&k).copied(),
                "key {k} after {op:?}"
            );
            let is_stale = model
                .contains_key(&k)
                .then(|| stale.contains(&k) || now > due[&k]);
            assert_eq!(
                cache.is_stale(&k),
                is_stale,
                "staleness of {k} after {op:?}"
            );
        }
        assert_eq!(cache.len(), model.len(), "len after {op:?}");
        assert!(
            cache.weight() <= bound(&cache),
            "over the bound after {op:?}"
        );
        let m = cache.metrics();
        assert_eq!(m.hits + m.misses, gets);
        assert_eq!(
            m.inserts - m.evictions - m.invalidations,
            cache.len() as u64,
            "{m:?}"
        );
    }
    (cache, model)
}

/// The weight the cache gave `k`'s value before this write replaced it: the
/// replaced value is the one the listener was just told of.
fn cache_weight_of(events: &Events, k: u8, weighted: bool) -> u64 {
    let events = events.lock().unwrap();
    let replaced = events
        .iter()
        .find(|e| e.0 == k && e.2 == RemovalCause::Replaced)
        .map(|e| e.1);
    match replaced {
        Some(v) if weighted => weight_of(v),
        Some(_) => 1,
        None => 0,
    }
}
