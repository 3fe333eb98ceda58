//! Snapshot loading of arbitrary bytes: never a panic; on an error the cache
//! is as it was; on success it holds at most `max_size` entries and still
//! holds the entry it held before (a load never evicts), and the report
//! counts every listed entry once. A report's reason and an error's message
//! stay within `MAX_MESSAGE_BYTES`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use swr_cache::snapshot::MAX_MESSAGE_BYTES;
use swr_cache::{Cache, SnapshotLimits};

const MAX_SIZE: usize = 8;

/// Loads `data` into a cache holding one known entry and checks the outcome.
fn check<K, V>(data: &[u8], known: (K, V))
where
    K: std::hash::Hash
        + Eq
        + Clone
        + Send
        + Sync
        + serde::Serialize
        + serde::de::DeserializeOwned
        + 'static,
    V: Clone
        + PartialEq
        + std::fmt::Debug
        + Send
        + Sync
        + serde::Serialize
        + serde::de::DeserializeOwned
        + 'static,
{
    let cache: Cache<K, V> = Cache::builder()
        .max_size(MAX_SIZE)
        .ttl(None)
        .build()
        .unwrap();
    cache.insert(known.0.clone(), known.1.clone());
    match cache.load_from_reader(data, SnapshotLimits::new(1 << 16, 1 << 10)) {
        Ok(report) => {
            assert!(cache.len() <= MAX_SIZE);
            assert!(report.loaded <= MAX_SIZE);
            assert!(cache.contains_key(&known.0), "a load evicted an entry");
            assert_eq!(
                report.loaded + report.not_loaded(),
                report.listed,
                "{report:?}"
            );
            assert_eq!(
                report.first_skip_reason.is_some(),
                report.bad_keys + report.bad_values > 0,
                "{report:?}"
            );
            if let Some(reason) = &report.first_skip_reason {
                assert!(reason.len() <= MAX_MESSAGE_BYTES, "{}", reason.len());
            }
        }
        Err(error) => {
            // From a slice there is no I/O error, whose message is the OS's.
            let message = error.to_string();
            assert!(message.len() <= MAX_MESSAGE_BYTES, "{}", message.len());
            assert_eq!(cache.len(), 1, "a failed load changed the cache");
            assert_eq!(cache.get(&known.0), Some(known.1));
        }
    }
}

fuzz_target!(|data: &[u8]| {
    check::<String, serde_json::Value>(data, ("known".to_string(), serde_json::json!({"v": 1})));
    check::<u64, String>(data, (7, "seven".to_string()));
});
