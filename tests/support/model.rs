//! The reference model shared by `tests/model.rs` (proptest) and the `ops`
//! fuzz target: random operation sequences run against the cache and the
//! model side by side.
//!
//! The model cannot predict which entry the clock evicts, so it keeps, per
//! key, the value last written since the key's last removal, and learns of
//! evictions when the cache reports a key absent. What it checks after every
//! operation: a value read is the one last written for that key; the cache
//! never holds a key the model does not; the size bound; and metrics that add
//! up.

use std::collections::HashMap;

use swr_cache::{Cache, ConfigChange};

/// One operation on a `Cache<u8, u16>`.
#[derive(Clone, Debug)]
pub enum Op {
    Insert(u8, u16),
    Get(u8),
    Invalidate(u8),
    Clear,
    Resize(usize),
}

/// Runs `ops` against the cache and the model, checking after every step;
/// returns the model at the end.
pub fn run(initial_size: usize, keys: u8, ops: &[Op]) -> (Cache<u8, u16>, HashMap<u8, u16>) {
    let cache: Cache<u8, u16> = Cache::builder()
        .max_size(initial_size)
        .ttl(None)
        .build()
        .unwrap();
    let mut model: HashMap<u8, u16> = HashMap::new();
    let mut gets = 0u64;
    for op in ops {
        let enabled = cache.max_size() > 0;
        match *op {
            Op::Insert(k, v) => {
                cache.insert(k, v);
                if enabled {
                    model.insert(k, v);
                }
            }
            Op::Get(k) => {
                gets += u64::from(enabled);
                match cache.get(&k) {
                    Some(v) => assert_eq!(model.get(&k), Some(&v), "get {k} after {ops:?}"),
                    None => {
                        model.remove(&k);
                    }
                }
            }
            Op::Invalidate(k) => {
                let removed = cache.invalidate(&k);
                assert!(
                    !removed || model.contains_key(&k),
                    "removed a key never written"
                );
                model.remove(&k);
            }
            Op::Clear => {
                cache.clear();
                model.clear();
            }
            Op::Resize(size) => {
                cache.configure(ConfigChange::new().max_size(size)).unwrap();
            }
        }
        // Learn evictions; the cache holds nothing the model does not.
        for k in 0..keys {
            if !cache.contains_key(&k) {
                model.remove(&k);
            }
        }
        assert_eq!(cache.len(), model.len(), "len after {op:?}");
        assert!(
            cache.len() <= cache.max_size(),
            "{} > {}",
            cache.len(),
            cache.max_size()
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
