//! Negative caching (`CacheBuilder::negative_ttl`): a key whose fetch
//! answered `Fetched::Gone` is answered `FetchError::Gone` by
//! `get_or_fetch` without a call to the source until the time passes, or
//! the key is written, invalidated, removed or cleared. On tokio's paused
//! clock.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use swr_cache::{Cache, ConfigChange, ConfigError, FetchError, Fetched, Fetcher};
use tokio::time::{advance, sleep};

const NEGATIVE_TTL: Duration = Duration::from_secs(30);
const TTL: Duration = Duration::from_secs(10);
const MS: Duration = Duration::from_millis(1);

/// A source holding the keys in `exists` and nothing else (`Gone`),
/// counting its calls; each call takes `delay`.
#[derive(Clone, Default)]
struct Source {
    calls: Arc<AtomicUsize>,
    exists: Arc<Mutex<HashMap<u32, u32>>>,
    delay: Duration,
}

impl Source {
    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    fn slow(delay: Duration) -> Self {
        Self {
            delay,
            ..Self::default()
        }
    }
}

impl Fetcher<u32, u32> for Source {
    type Error = std::convert::Infallible;

    async fn fetch(&self, key: &u32, _: Option<&u32>) -> Result<Fetched<u32>, Self::Error> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        if !self.delay.is_zero() {
            sleep(self.delay).await;
        }
        Ok(match self.exists.lock().unwrap().get(key) {
            Some(value) => Fetched::Value(*value),
            None => Fetched::Gone,
        })
    }
}

fn cache(source: &Source) -> Cache<u32, u32> {
    Cache::builder()
        .ttl(TTL)
        .fetcher_impl(source.clone())
        .negative_ttl(NEGATIVE_TTL)
        .build()
        .unwrap()
}

async fn is_gone(cache: &Cache<u32, u32>, key: u32) -> bool {
    matches!(cache.get_or_fetch(&key).await, Err(FetchError::Gone))
}

#[tokio::test(start_paused = true)]
async fn a_gone_answer_is_remembered_until_negative_ttl_passes() {
    let source = Source::default();
    let cache = cache(&source);
    assert!(is_gone(&cache, 1).await);
    assert_eq!(source.calls(), 1);

    assert!(is_gone(&cache, 1).await, "answered from the record");
    assert!(is_gone(&cache, 1).await);
    assert_eq!(source.calls(), 1, "the source was not asked again");
    let m = cache.metrics();
    assert_eq!((m.negative_hits, m.gone, m.misses), (2, 1, 3), "{m}");
    assert!(m.to_string().contains("2 negative hits"), "{m}");

    advance(NEGATIVE_TTL - MS).await;
    assert!(is_gone(&cache, 1).await);
    assert_eq!(source.calls(), 1, "not yet expired");
    advance(MS).await;
    assert!(is_gone(&cache, 1).await);
    assert_eq!(source.calls(), 2, "expired: the source is asked again");
    assert!(is_gone(&cache, 1).await);
    assert_eq!(source.calls(), 2, "and its answer remembered anew");
    cache.validate();
}

#[tokio::test(start_paused = true)]
async fn without_negative_ttl_every_miss_asks_the_source() {
    let source = Source::default();
    let cache: Cache<u32, u32> = Cache::builder()
        .fetcher_impl(source.clone())
        .build()
        .unwrap();
    for _ in 0..3 {
        assert!(is_gone(&cache, 1).await);
    }
    assert_eq!(source.calls(), 3);
    assert_eq!(cache.metrics().negative_hits, 0);
}

#[tokio::test(start_paused = true)]
async fn a_key_that_exists_is_fetched_and_cached_as_before() {
    let source = Source::default();
    source.exists.lock().unwrap().insert(1, 10);
    let cache = cache(&source);
    assert_eq!(cache.get_or_fetch(&1).await.unwrap(), 10);
    assert_eq!(cache.get_or_fetch(&1).await.unwrap(), 10, "a hit");
    assert_eq!(source.calls(), 1);
    assert_eq!(cache.metrics().negative_hits, 0);
}

#[tokio::test(start_paused = true)]
async fn an_insert_of_a_gone_key_ends_its_record() {
    let source = Source::default();
    let cache = cache(&source);
    assert!(is_gone(&cache, 1).await);
    cache.insert(1, 5);
    assert_eq!(cache.get_or_fetch(&1).await.unwrap(), 5);
    // Taken out by `retain`, which leaves records alone: only the insert
    // can have ended it.
    assert_eq!(cache.retain(|k, _| *k != 1), 1);
    assert!(is_gone(&cache, 1).await);
    assert_eq!(source.calls(), 2, "the insert ended the record");
}

#[tokio::test(start_paused = true)]
async fn a_fetched_value_of_a_gone_key_ends_its_record() {
    let source = Source::default();
    let cache = cache(&source);
    assert!(is_gone(&cache, 1).await);
    source.exists.lock().unwrap().insert(1, 7);
    assert_eq!(
        cache.refresh(&1).await.unwrap(),
        7,
        "refresh asks the source"
    );
    assert_eq!(source.calls(), 2);
    source.exists.lock().unwrap().remove(&1);
    assert_eq!(cache.retain(|_, _| false), 1);
    assert!(is_gone(&cache, 1).await);
    assert_eq!(source.calls(), 3, "the fetched value ended the record");
}

#[tokio::test(start_paused = true)]
async fn invalidate_remove_and_clear_end_records() {
    let source = Source::default();
    let cache = cache(&source);
    for key in [1, 2, 3, 4] {
        assert!(is_gone(&cache, key).await);
    }
    assert_eq!(source.calls(), 4);
    assert!(!cache.invalidate(&1), "not cached, but its record ends");
    assert_eq!(cache.remove(&2), None);
    for key in [1, 2, 3, 4] {
        assert!(is_gone(&cache, key).await);
    }
    assert_eq!(source.calls(), 6, "1 and 2 asked again; 3 and 4 remembered");
    cache.clear();
    for key in [1, 2, 3, 4] {
        assert!(is_gone(&cache, key).await);
    }
    assert_eq!(source.calls(), 10, "clear ended every record");
}

#[tokio::test(start_paused = true)]
async fn a_refresh_asks_the_source_and_its_gone_is_remembered() {
    let source = Source::default();
    let cache = cache(&source);
    assert!(matches!(cache.refresh(&1).await, Err(FetchError::Gone)));
    assert!(is_gone(&cache, 1).await);
    assert_eq!(source.calls(), 1, "the refresh's answer remembered");
    assert!(matches!(cache.refresh(&1).await, Err(FetchError::Gone)));
    assert_eq!(
        source.calls(),
        2,
        "a refresh revalidates: it asks the source"
    );

    // A forced refresh of a cached key that is gone removes it and
    // remembers it.
    cache.insert(2, 20);
    assert!(matches!(cache.refresh(&2).await, Err(FetchError::Gone)));
    assert_eq!(cache.get(&2), None);
    assert!(is_gone(&cache, 2).await);
    assert_eq!(source.calls(), 3);
    assert_eq!(cache.metrics().negative_hits, 2);
}

#[tokio::test(start_paused = true)]
async fn a_background_refresh_answering_gone_is_remembered() {
    let source = Source::default();
    let cache: Cache<u32, u32> = Cache::builder()
        .ttl(TTL)
        .refresh_interval(Duration::from_secs(1))
        .fetcher_impl(source.clone())
        .negative_ttl(NEGATIVE_TTL)
        .build()
        .unwrap();
    cache.insert(1, 10);
    cache.start().unwrap();
    sleep(TTL + Duration::from_secs(3)).await;
    assert_eq!(cache.get(&1), None, "removed by its refresh");
    assert_eq!(source.calls(), 1);
    assert!(is_gone(&cache, 1).await);
    assert_eq!(source.calls(), 1, "remembered from the refresher's answer");
    cache.stop().await;
}

/// A load fenced by an invalidate while it ran stores nothing; its `Gone`
/// is not remembered either (the invalidate came after it began).
#[tokio::test(start_paused = true)]
async fn a_gone_answer_fenced_by_an_invalidate_is_not_remembered() {
    let source = Source::slow(Duration::from_secs(1));
    let cache = cache(&source);
    let load = tokio::spawn({
        let cache = cache.clone();
        async move { is_gone(&cache, 1).await }
    });
    advance(Duration::from_millis(500)).await;
    assert_eq!(source.calls(), 1, "under way");
    cache.invalidate(&1);
    assert!(load.await.unwrap());
    assert!(is_gone(&cache, 1).await);
    assert_eq!(source.calls(), 2, "not remembered");
}

/// A `Gone` whose fetch began before an insert of the key, answered after
/// it: the record made then must not stand, though no record existed
/// when the insert looked (the recorder looks for the key after
/// recording, under its shard lock).
#[tokio::test(start_paused = true)]
async fn a_gone_answer_after_an_insert_of_the_key_is_not_remembered() {
    let source = Source::slow(Duration::from_secs(1));
    let cache = cache(&source);
    let load = tokio::spawn({
        let cache = cache.clone();
        async move { cache.get_or_fetch(&1).await }
    });
    advance(Duration::from_millis(500)).await;
    assert_eq!(source.calls(), 1, "under way");
    cache.insert(1, 5);
    // The fetch answers `Gone` after the insert, which stands.
    assert!(matches!(load.await.unwrap(), Err(FetchError::Gone)));
    assert_eq!(cache.get(&1), Some(5));
    assert_eq!(
        cache.retain(|_, _| false),
        1,
        "taken out, records untouched"
    );
    assert!(is_gone(&cache, 1).await);
    assert_eq!(source.calls(), 2, "the late Gone was not remembered");
}

#[tokio::test(start_paused = true)]
async fn gone_keys_remembered_are_bounded_by_the_capacity() {
    for weighted in [false, true] {
        let source = Source::default();
        let builder = Cache::builder()
            .max_size(4)
            .fetcher_impl(source.clone())
            .negative_ttl(NEGATIVE_TTL);
        let cache: Cache<u32, u32> = if weighted {
            builder.weigher(|_, _| 10).max_weight(4).build().unwrap()
        } else {
            builder.build().unwrap()
        };
        for key in 0..40 {
            assert!(is_gone(&cache, key).await);
            cache.validate();
        }
        // Newest first, so that no record made now evicts one not yet asked.
        for key in (0..40).rev() {
            assert!(is_gone(&cache, key).await);
        }
        let remembered = cache.metrics().negative_hits;
        assert_eq!(remembered as usize + source.calls(), 80);
        assert!(
            (1..=4).contains(&remembered),
            "weighted {weighted}: {remembered} remembered of 40, at most 4"
        );
        cache.validate();

        // A lower bound evicts records down to it.
        cache
            .configure(if weighted {
                ConfigChange::new().max_weight(1)
            } else {
                ConfigChange::new().max_size(1)
            })
            .unwrap();
        cache.validate();
        cache.reset_metrics();
        for key in (0..40).rev() {
            assert!(is_gone(&cache, key).await);
        }
        let remembered = cache.metrics().negative_hits;
        assert!(remembered <= 1, "weighted {weighted}: {remembered} of 1");
    }
}

#[tokio::test(start_paused = true)]
async fn reset_metrics_zeroes_negative_hits() {
    let source = Source::default();
    let cache = cache(&source);
    assert!(is_gone(&cache, 1).await);
    assert!(is_gone(&cache, 1).await);
    assert_eq!(cache.metrics().negative_hits, 1);
    cache.reset_metrics();
    assert_eq!(cache.metrics().negative_hits, 0);
    assert!(is_gone(&cache, 1).await);
    assert_eq!(cache.metrics().negative_hits, 1);
}

#[test]
fn a_zero_negative_ttl_fails_the_build() {
    let built = Cache::<u32, u32>::builder()
        .negative_ttl(Duration::ZERO)
        .build();
    let err = built.err().unwrap();
    assert_eq!(err, ConfigError::ZeroNegativeTtl);
    assert_eq!(err.setting(), "negative_ttl");
}
