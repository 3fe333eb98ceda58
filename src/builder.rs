//! [`CacheBuilder`]: every setting of a cache, checked when it is built.

use std::future::Future;
use std::hash::{BuildHasher, Hash};
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

use crate::Cache;
use crate::fetch::{BatchFetcher, DynBatchFetcher, ErasedFetcher, Fetcher, FnBatch, TraitBatch};
use crate::freshness::{Freshness, FreshnessFn};
use crate::hasher::DefaultBuildHasher;
use crate::inner::{Hooks, Inner};
use crate::removal::{Listener, RemovalCause, Weigher};
use crate::settings::{ConfigError, MAX_SIZE_LIMIT, Settings, jitter_of};

/// Builds a [`Cache`]; from [`Cache::builder`].
///
/// Defaults follow the LangSmith SDK's prompt cache: `max_size` 100,
/// `ttl` 300 s, `refresh_interval` 60 s; and for the refresher:
/// concurrency adapting between 4 and 256 (`adaptive_refreshes(4, 256)`),
/// `refresh_timeout` 30 s, `refresh_on_read` on, `max_retry_backoff` 600 s.
///
/// ```
/// use std::time::Duration;
/// use swr_cache::Cache;
///
/// let cache: Cache<String, u64> = Cache::builder()
///     .max_size(10_000)
///     .ttl(Some(Duration::from_secs(60)))
///     .build()?;
/// # Ok::<(), swr_cache::ConfigError>(())
/// ```
#[must_use]
pub struct CacheBuilder<K, V, S = DefaultBuildHasher> {
    pub(crate) settings: Settings,
    pub(crate) hasher: S,
    pub(crate) fetcher: Option<ErasedFetcher<K, V>>,
    /// Set in place of `fetcher`; made a fetcher at `build`, when the
    /// batching is known.
    batch_fetcher: Option<Arc<dyn DynBatchFetcher<K, V>>>,
    pub(crate) weigher: Option<Weigher<K, V>>,
    freshness: Option<FreshnessFn<K, V>>,
    pub(crate) listener: Option<Listener<K, V>>,
    key_debug: Option<fn(&K) -> String>,
    name: Option<Arc<str>>,
    _types: PhantomData<fn(K) -> V>,
}

impl<K, V, S> std::fmt::Debug for CacheBuilder<K, V, S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = &self.settings;
        f.debug_struct("CacheBuilder")
            .field("max_size", &s.max_size)
            .field("max_weight", &s.max_weight)
            .field("ttl", &s.ttl)
            .field("max_stale", &s.max_stale)
            .field("refresh_interval", &s.refresh_interval)
            .field("max_concurrent_refreshes", &s.max_concurrent_refreshes)
            .field("min_concurrent_refreshes", &s.min_concurrent_refreshes)
            .field("refresh_timeout", &s.refresh_timeout)
            .field("refresh_on_read", &s.refresh_on_read)
            .field("max_retry_backoff", &s.max_retry_backoff)
            .field("refresh_jitter", &s.refresh_jitter)
            .field("negative_ttl", &s.negative_ttl)
            .field("freshness", &self.freshness.is_some())
            .field("fetcher", &self.fetcher.is_some())
            .field("batch_fetcher", &self.batch_fetcher.is_some())
            .field("max_batch", &s.batching.max_batch)
            .field("batch_window", &s.batching.window)
            .field("weigher", &self.weigher.is_some())
            .field("eviction_listener", &self.listener.is_some())
            .field("log_keys", &self.key_debug.is_some())
            .field("name", &self.name)
            .field("hasher", &std::any::type_name::<S>())
            .finish()
    }
}

impl<K, V> Cache<K, V> {
    /// A builder with the LangSmith SDK's defaults: `max_size` 100, `ttl`
    /// 300 s, `refresh_interval` 60 s, and a randomly seeded hasher.
    pub fn builder() -> CacheBuilder<K, V> {
        CacheBuilder::default()
    }
}

impl<K, V> Default for CacheBuilder<K, V> {
    fn default() -> Self {
        Self {
            settings: Settings::default(),
            hasher: DefaultBuildHasher::default(),
            fetcher: None,
            batch_fetcher: None,
            weigher: None,
            freshness: None,
            listener: None,
            key_debug: None,
            name: None,
            _types: PhantomData,
        }
    }
}

impl<K, V, S> CacheBuilder<K, V, S> {
    /// The most entries the cache holds; `0` disables it (nothing is stored,
    /// `get` returns `None` and counts nothing). At most [`MAX_SIZE_LIMIT`].
    ///
    /// With a [`weigher`](Self::weigher), the bound is
    /// [`max_weight`](Self::max_weight) instead, and `max_size` is the number
    /// of entries you expect the cache to hold: it only sizes the shards.
    pub fn max_size(mut self, max_size: usize) -> Self {
        self.settings.max_size = max_size;
        self
    }

    /// Weighs each entry, so the cache is bound by the sum of the weights
    /// ([`max_weight`](Self::max_weight), which must be set too) instead of
    /// the count of entries: a prompt of 40 KB and one of 200 B are not the
    /// same. A weight of 0 counts as 1.
    ///
    /// The cache is split into shards, each holding its share of
    /// `max_weight` (`max_weight / shards`); an entry weighing more than its
    /// shard's share is not stored (the listener hears of it as
    /// [`RemovalCause::Evicted`]). The weigher runs once per write, before
    /// any lock is taken.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use swr_cache::Cache;
    ///
    /// let cache: Cache<String, Arc<str>> = Cache::builder()
    ///     .weigher(|key: &String, value: &Arc<str>| (key.len() + value.len()) as u64)
    ///     .max_weight(1 << 20) // a megabyte of prompts
    ///     .build()?;
    /// cache.insert("greeting".into(), Arc::from("hello"));
    /// assert_eq!(cache.weight(), 13);
    /// # Ok::<(), swr_cache::ConfigError>(())
    /// ```
    pub fn weigher(mut self, weigher: impl Fn(&K, &V) -> u64 + Send + Sync + 'static) -> Self {
        self.weigher = Some(Arc::new(weigher));
        self
    }

    /// The most total weight the cache holds, with a
    /// [`weigher`](Self::weigher); `0` disables the cache.
    pub fn max_weight(mut self, max_weight: u64) -> Self {
        self.settings.max_weight = Some(max_weight);
        self
    }

    /// Called with every entry that leaves the cache, and why: evicted by
    /// the policy, invalidated, replaced (the old value), or cleared.
    ///
    /// It runs on the thread whose call removed the entry, after every lock
    /// is released and the cache is consistent, so it may call the cache
    /// itself. It gets clones of the key and value (a reader may still be
    /// reading the entry's own, which are dropped once none can). A panic in
    /// it is caught and counted
    /// ([`Metrics::listener_panics`](crate::Metrics::listener_panics)).
    ///
    /// ```
    /// use std::sync::{Arc, Mutex};
    /// use swr_cache::{Cache, RemovalCause};
    ///
    /// let evicted = Arc::new(Mutex::new(Vec::new()));
    /// let log = Arc::clone(&evicted);
    /// let cache: Cache<u32, u32> = Cache::builder()
    ///     .max_size(1)
    ///     .eviction_listener(move |key, _value, cause| {
    ///         if cause == RemovalCause::Evicted {
    ///             log.lock().unwrap().push(key);
    ///         }
    ///     })
    ///     .build()?;
    /// cache.insert(1, 10);
    /// cache.insert(2, 20);
    /// assert_eq!(*evicted.lock().unwrap(), vec![1]);
    /// # Ok::<(), swr_cache::ConfigError>(())
    /// ```
    pub fn eviction_listener(
        mut self,
        listener: impl Fn(K, V, RemovalCause) + Send + Sync + 'static,
    ) -> Self {
        self.listener = Some(Arc::new(listener));
        self
    }

    /// The age after which an entry is stale: still served, and due for a
    /// refresh. `None` is offline mode: nothing is ever stale.
    ///
    /// So that a hit reads no clock, reads judge staleness by a coarse
    /// clock: ticked by the refresher while it runs on a runtime that is
    /// always driven, and otherwise, for a cache built (or given its TTL)
    /// inside a multi-thread tokio runtime, by a thread of its own
    /// (`swr-cache-clock`) that ends within a tick of the cache. An entry
    /// then goes stale at its TTL or a tick or two later, never before.
    /// Elsewhere a hit reads the precise clock. The tick's period is in
    /// [the crate docs](crate#the-refreshers-numbers).
    ///
    /// Takes a `Duration` or an `Option<Duration>`:
    ///
    /// ```
    /// # use std::time::Duration;
    /// # use swr_cache::Cache;
    /// let fresh_for_a_minute: Cache<u32, u32> =
    ///     Cache::builder().ttl(Duration::from_secs(60)).build()?;
    /// let offline: Cache<u32, u32> = Cache::builder().ttl(None).build()?;
    /// # Ok::<(), swr_cache::ConfigError>(())
    /// ```
    pub fn ttl(mut self, ttl: impl Into<Option<Duration>>) -> Self {
        self.settings.ttl = ttl.into();
        self
    }

    /// How long past the TTL a value may still be served while its refresh
    /// keeps failing (HTTP's `stale-if-error`); `None`, the default: for as
    /// long as it takes. Past `ttl + max_stale` without a successful refresh,
    /// [`get`](crate::Cache::get) misses (counted in
    /// [`Metrics::expired`](crate::Metrics::expired) as well as in `misses`),
    /// [`get_or_fetch`](crate::Cache::get_or_fetch) fetches and returns the
    /// fetch's error rather than the old value, and the refresher goes on
    /// trying. Such an entry still takes room (and counts in `len`) until it
    /// is refreshed, evicted or removed.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use std::time::Duration;
    /// use swr_cache::Cache;
    ///
    /// let cache: Cache<u32, u32> = Cache::builder()
    ///     .ttl(Duration::from_secs(60))
    ///     .max_stale(Duration::from_secs(600))
    ///     .build()?;
    /// cache.insert(1, 1);
    /// tokio::time::advance(Duration::from_secs(61)).await;
    /// assert_eq!(cache.get(&1), Some(1), "stale, still served");
    /// tokio::time::advance(Duration::from_secs(600)).await;
    /// assert_eq!(cache.get(&1), None, "past the bound");
    /// assert_eq!(cache.metrics().expired, 1);
    /// # Ok(())
    /// # }
    /// ```
    pub fn max_stale(mut self, max_stale: impl Into<Option<Duration>>) -> Self {
        self.settings.max_stale = max_stale.into();
        self
    }

    /// Decides how long each value is fresh, and how long it may be served
    /// stale past that, from the key and the value: called for every value
    /// written (an insert, a load, a refresh, a snapshot load, a fleet
    /// message), before any lock is taken. So a value that carries its own
    /// `max-age` keeps it, as an HTTP cache keeps a response's. Return
    /// [`Freshness::cache_default`] for a value with none of its own: it
    /// then follows the cache's `ttl` and `max_stale`, as they are
    /// configured now and later. A fetcher's
    /// [`Fetched::Unchanged`](crate::Fetched::Unchanged) renews the value
    /// for the freshness this gives it.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use std::time::Duration;
    /// use swr_cache::{Cache, Freshness};
    ///
    /// #[derive(Clone)]
    /// struct Response {
    ///     body: String,
    ///     max_age: Option<Duration>,
    /// }
    ///
    /// let cache: Cache<String, Response> = Cache::builder()
    ///     .ttl(Duration::from_secs(300))
    ///     .freshness(|_url: &String, response: &Response| match response.max_age {
    ///         Some(max_age) => Freshness::ttl(max_age),
    ///         None => Freshness::cache_default(),
    ///     })
    ///     .build()?;
    /// let short = Response { body: "news".into(), max_age: Some(Duration::from_secs(10)) };
    /// cache.insert("/news".into(), short);
    /// tokio::time::advance(Duration::from_secs(11)).await;
    /// assert_eq!(cache.is_stale("/news"), Some(true), "its own max-age");
    /// # Ok(())
    /// # }
    /// ```
    pub fn freshness(
        mut self,
        freshness: impl Fn(&K, &V) -> Freshness + Send + Sync + 'static,
    ) -> Self {
        self.freshness = Some(std::sync::Arc::new(freshness));
        self
    }

    /// Makes each value go stale at a random point in the last `fraction`
    /// of its TTL (from 0, the default: exactly at its TTL, to 1), drawn
    /// anew at each write. So values loaded together, and the replicas of
    /// a fleet, do not all come due for a refresh in the same instant.
    /// `max_stale` counts from the point drawn. A fraction outside `0..=1`
    /// fails the build ([`ConfigError::RefreshJitter`]).
    ///
    /// ```
    /// use std::time::Duration;
    /// use swr_cache::Cache;
    ///
    /// // Stale somewhere between 54 s and 60 s after each write.
    /// let cache: Cache<u32, u32> = Cache::builder()
    ///     .ttl(Duration::from_secs(60))
    ///     .refresh_jitter(0.1)
    ///     .build()?;
    /// # Ok::<(), swr_cache::ConfigError>(())
    /// ```
    pub fn refresh_jitter(mut self, fraction: f64) -> Self {
        self.settings.refresh_jitter = jitter_of(fraction);
        self
    }

    /// Remembers, for `ttl`, each key whose fetch answered
    /// [`Fetched::Gone`](crate::Fetched::Gone): meanwhile
    /// [`get_or_fetch`](crate::Cache::get_or_fetch) of it answers
    /// [`FetchError::Gone`](crate::FetchError::Gone) at once, without
    /// calling the fetcher (counted in
    /// [`Metrics::negative_hits`](crate::Metrics::negative_hits)), so a
    /// stream of requests for a key that does not exist costs the source one
    /// call per `ttl`. Off by default; a zero `ttl` fails the build
    /// ([`ConfigError::ZeroNegativeTtl`]). Set when the cache is built; not
    /// a [`ConfigChange`](crate::ConfigChange).
    ///
    /// A key is remembered when a load (`get_or_fetch`, or `refresh` of an
    /// uncached key) answers `Gone` and no removal of the key came while it
    /// ran, or when a refresh's `Gone` removed the cached value it was
    /// fetched from. It is forgotten when its `ttl` has passed, when the key
    /// is written (`insert` and its kin, a fetched value, a snapshot load, a
    /// fleet message), invalidated or removed, and by `clear`.
    /// [`refresh`](crate::Cache::refresh) always asks the source (and
    /// remembers its answer). [`get`](crate::Cache::get) and the other
    /// reads are not changed: the hit path reads nothing more. Loads by
    /// [`get_or_insert_with`](crate::Cache::get_or_insert_with), and
    /// fetchers made from a closure ([`fetcher`](Self::fetcher),
    /// [`blocking_fetcher`](Self::blocking_fetcher),
    /// [`batch_fetcher`](Self::batch_fetcher)), cannot answer `Gone`: only
    /// a [`Fetcher`] or a [`BatchFetcher`] can (per key).
    ///
    /// The memory is bounded by the cache's own: at most `max_size` keys
    /// (with a weigher, `max_weight` of them), evicted by the cache's policy
    /// when full. Each takes what an entry with an 8-byte value does (see
    /// [Memory](crate#memory)), the key's own data included. While any key
    /// is remembered, each write clones its key to look for its record.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use std::sync::Arc;
    /// use std::sync::atomic::{AtomicUsize, Ordering};
    /// use std::time::Duration;
    /// use std::convert::Infallible;
    /// use swr_cache::{Cache, FetchError, Fetched, Fetcher};
    ///
    /// /// A source that holds no user at all, and counts its calls.
    /// struct Users(Arc<AtomicUsize>);
    ///
    /// impl Fetcher<u64, String> for Users {
    ///     type Error = Infallible;
    ///
    ///     async fn fetch(&self, _id: &u64, _: Option<&String>) -> Result<Fetched<String>, Infallible> {
    ///         self.0.fetch_add(1, Ordering::Relaxed);
    ///         Ok(Fetched::Gone)
    ///     }
    /// }
    ///
    /// let calls = Arc::new(AtomicUsize::new(0));
    /// let cache: Cache<u64, String> = Cache::builder()
    ///     .fetcher_impl(Users(Arc::clone(&calls)))
    ///     .negative_ttl(Duration::from_secs(30))
    ///     .build()?;
    /// for _ in 0..3 {
    ///     assert!(matches!(cache.get_or_fetch(&7).await, Err(FetchError::Gone)));
    /// }
    /// assert_eq!(calls.load(Ordering::Relaxed), 1, "asked once");
    /// assert_eq!(cache.metrics().negative_hits, 2);
    /// tokio::time::advance(Duration::from_secs(30)).await;
    /// assert!(matches!(cache.get_or_fetch(&7).await, Err(FetchError::Gone)));
    /// assert_eq!(calls.load(Ordering::Relaxed), 2, "asked again once 30 s passed");
    /// # Ok(())
    /// # }
    /// ```
    pub fn negative_ttl(mut self, ttl: Duration) -> Self {
        self.settings.negative_ttl = Some(ttl);
        self
    }

    /// How often the refresher looks for stale entries.
    pub fn refresh_interval(mut self, interval: Duration) -> Self {
        self.settings.refresh_interval = interval;
        self
    }

    /// Hashes keys with `hasher` instead of the default, seeded foldhash.
    pub fn hasher<S2>(self, hasher: S2) -> CacheBuilder<K, V, S2> {
        CacheBuilder {
            settings: self.settings,
            hasher,
            fetcher: self.fetcher,
            batch_fetcher: self.batch_fetcher,
            weigher: self.weigher,
            freshness: self.freshness,
            listener: self.listener,
            key_debug: self.key_debug,
            name: self.name,
            _types: PhantomData,
        }
    }

    /// Where values come from: an async closure taking the key and
    /// returning `Result<V, E>`, for any error type `E` that converts into
    /// `Box<dyn Error + Send + Sync>`. The key's type is inferred where the
    /// closure's body lets the compiler see it; where it asks, write it out
    /// (`|key: String|`).
    ///
    /// ```
    /// # use swr_cache::Cache;
    /// let cache: Cache<String, String> = Cache::builder()
    ///     .fetcher(|key| async move { Ok::<_, std::io::Error>(format!("fetched {key}")) })
    ///     .build()?;
    /// # Ok::<(), swr_cache::ConfigError>(())
    /// ```
    ///
    /// The refresher ([`Cache::start`]), [`Cache::get_or_fetch`] and
    /// [`Cache::refresh`] call it; [`Cache::set_fetcher`] swaps it later. A
    /// fetcher that sees the cached value, and may answer that it is
    /// unchanged, is a [`Fetcher`]: see [`fetcher_impl`](Self::fetcher_impl).
    pub fn fetcher<F, Fut, E>(mut self, fetch: F) -> Self
    where
        F: Fn(K) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<V, E>> + Send + 'static,
        E: Into<Box<dyn std::error::Error + Send + Sync>>,
        K: Send + 'static,
        V: Send + Sync + 'static,
    {
        self.fetcher = Some(ErasedFetcher::from_fn(fetch));
        self.batch_fetcher = None;
        self
    }

    /// Where values come from, for code without async: a blocking closure
    /// taking the key. Each call runs on the tokio blocking pool of the
    /// runtime the fetch runs on (the refresher's, as started by
    /// [`Cache::start_thread`](crate::Cache::start_thread), which needs no
    /// runtime of the caller's), so it never holds up other fetches. A call
    /// that outlives `refresh_timeout` is abandoned, not stopped: its
    /// thread runs it to its end.
    ///
    /// ```
    /// # use std::time::Duration;
    /// # use swr_cache::Cache;
    /// let cache: Cache<String, usize> = Cache::builder()
    ///     .ttl(Duration::from_secs(60))
    ///     .blocking_fetcher(|key: &String| Ok::<_, std::io::Error>(key.len()))
    ///     .build()?;
    /// cache.start_thread()?;
    /// # cache.shutdown();
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn blocking_fetcher<F, E>(mut self, fetch: F) -> Self
    where
        F: Fn(&K) -> Result<V, E> + Send + Sync + 'static,
        E: Into<Box<dyn std::error::Error + Send + Sync>>,
        K: Send + 'static,
        V: Send + Sync + 'static,
    {
        self.fetcher = Some(ErasedFetcher::from_blocking(fetch));
        self.batch_fetcher = None;
        self
    }

    /// Where values come from: a type implementing [`Fetcher`], which also
    /// sees the cached value and may answer
    /// [`Fetched::Unchanged`](crate::Fetched) to renew it without a new value.
    /// See [`fetcher`](Self::fetcher) for the plain closure form.
    pub fn fetcher_impl(mut self, fetcher: impl Fetcher<K, V>) -> Self
    where
        K: Send + 'static,
        V: Send + Sync + 'static,
    {
        self.fetcher = Some(ErasedFetcher::from_impl(fetcher));
        self.batch_fetcher = None;
        self
    }

    /// Where values come from, many keys a call: an async closure taking
    /// the keys and returning the values found, `Result<Vec<(K, V)>, E>`.
    /// The refresher sends due keys in batches of up to
    /// [`max_batch`](Self::max_batch), and read-through misses
    /// ([`Cache::get_or_fetch`]) within a [`batch_window`](Self::batch_window)
    /// of each other share a call.
    ///
    /// Each key is still its own fetch to the cache: its own single flight,
    /// fence and version, its own outcome for the refresher's backoff and
    /// breaker. A key the answer leaves out is a failed fetch of that key
    /// ([`FetchError::LeftOut`](crate::FetchError::LeftOut): a refresh keeps
    /// the stale value and backs off); an error fails every key of the
    /// call. `max_concurrent_refreshes` and `adaptive_refreshes` count
    /// calls, so up to that many times `max_batch` keys are fetched at once.
    ///
    /// ```
    /// # use swr_cache::Cache;
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let cache: Cache<u32, String> = Cache::builder()
    ///     .batch_fetcher(|ids: Vec<u32>| async move {
    ///         // One request for every id here, e.g. `SELECT .. WHERE id IN (..)`.
    ///         Ok::<_, std::io::Error>(ids.into_iter().map(|id| (id, format!("row {id}"))).collect())
    ///     })
    ///     .max_batch(100)
    ///     .build()?;
    /// let (a, b) = tokio::join!(cache.get_or_fetch(&1), cache.get_or_fetch(&2)); // one call
    /// assert_eq!((a?, b?), ("row 1".to_owned(), "row 2".to_owned()));
    /// # Ok(())
    /// # }
    /// ```
    pub fn batch_fetcher<F, Fut, E>(mut self, fetch: F) -> Self
    where
        F: Fn(Vec<K>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Vec<(K, V)>, E>> + Send + 'static,
        E: Into<Box<dyn std::error::Error + Send + Sync>>,
        K: Send + 'static,
        V: Send + Sync + 'static,
    {
        self.batch_fetcher = Some(Arc::new(FnBatch(fetch)));
        self.fetcher = None;
        self
    }

    /// [`batch_fetcher`](Self::batch_fetcher) for a type implementing
    /// [`BatchFetcher`], which also sees each key's cached value and may
    /// answer [`Fetched::Unchanged`](crate::Fetched::Unchanged) or
    /// [`Fetched::Gone`](crate::Fetched::Gone) per key.
    pub fn batch_fetcher_impl(mut self, fetcher: impl BatchFetcher<K, V>) -> Self
    where
        K: Send + 'static,
        V: Send + Sync + 'static,
    {
        self.batch_fetcher = Some(Arc::new(TraitBatch(fetcher)));
        self.fetcher = None;
        self
    }

    /// The most keys a batch fetcher is given in one call; 64 by default.
    /// Zero is a [`ConfigError::ZeroMaxBatch`].
    pub fn max_batch(mut self, max_batch: usize) -> Self {
        self.settings.batching.max_batch = max_batch;
        self
    }

    /// How long a batch fetcher's batch waits for more keys after its
    /// first, unless it fills first; 1 ms by default. A read-through miss
    /// waits up to this long (rounded up to tokio's timer, which counts
    /// milliseconds) before its call starts; the refresher's keys, started
    /// together, mostly fill their batches at once.
    pub fn batch_window(mut self, window: Duration) -> Self {
        self.settings.batching.window = window;
        self
    }

    /// A fixed number of fetches the refresher runs at once, in place of
    /// the adaptive limit (see [`adaptive_refreshes`](Self::adaptive_refreshes)).
    /// With a [`batch_fetcher`](Self::batch_fetcher), a number of calls.
    pub fn max_concurrent_refreshes(mut self, max: usize) -> Self {
        self.settings.max_concurrent_refreshes = max;
        self.settings.min_concurrent_refreshes = None;
        self
    }

    /// Lets the number of fetches the refresher runs at once adapt to the
    /// upstream, between `floor` and `cap` (the default, with 4 and 256).
    /// Judged once per round of fetches: it doubles while the upstream's
    /// latency holds (from the start, and when the upstream comes back after
    /// an outage), then grows by one per round; it holds when latency rises
    /// by more than 30 % over the upstream's unloaded latency, shrinks by a
    /// fifth when latency more than doubles (past the upstream's knee), and
    /// halves when more than a fifth of a round failed. So a storm of stale
    /// entries on a healthy upstream runs at the cap within a few round
    /// trips, and an upstream that slows down under load is not driven past
    /// the point where it does.
    ///
    /// Whatever the limit, when every fetch fails (many in a row, across
    /// keys) the refresher stops fetching but for a probe now and then, and
    /// starts everything waiting as soon as one answers: a circuit breaker,
    /// so an outage costs the upstream a few calls a second
    /// ([the numbers](crate#the-refreshers-numbers)).
    pub fn adaptive_refreshes(mut self, floor: usize, cap: usize) -> Self {
        self.settings.max_concurrent_refreshes = cap;
        self.settings.min_concurrent_refreshes = Some(floor);
        self
    }

    /// How long one fetch may take before it is cancelled and counted as an
    /// error.
    pub fn refresh_timeout(mut self, timeout: Duration) -> Self {
        self.settings.refresh_timeout = timeout;
        self
    }

    /// Whether a `get` that finds a stale entry asks the refresher to fetch it
    /// now rather than at its next interval (Caffeine's refresh-after-write).
    pub fn refresh_on_read(mut self, enabled: bool) -> Self {
        self.settings.refresh_on_read = enabled;
        self
    }

    /// The longest wait before retrying a key whose refreshes keep failing.
    /// Retries start one `refresh_interval` after the first failure and double
    /// with each failure after it, with random jitter, up to this cap.
    pub fn max_retry_backoff(mut self, cap: Duration) -> Self {
        self.settings.max_retry_backoff = cap;
        self
    }

    /// Names keys by their `Debug` form in the cache's logs (failed fetches,
    /// at most ten lines a second, with a count of those held back).
    /// Without it a key is named by its 32-bit hash, as `#1a2b3c4d`, so that
    /// a key's failures can be told apart without its content in the logs.
    pub fn log_keys(mut self) -> Self
    where
        K: std::fmt::Debug,
    {
        self.key_debug = Some(|key: &K| format!("{key:?}"));
        self
    }

    /// Names the cache: in its fetch spans (`cache = name`), and with
    /// feature `metrics` as the `cache` label of every series it reports
    /// (`"default"` without a name), so that a service's caches can be told
    /// apart on a dashboard.
    ///
    /// ```
    /// use swr_cache::Cache;
    ///
    /// let prompts: Cache<String, String> = Cache::builder().name("prompts").build()?;
    /// # Ok::<(), swr_cache::ConfigError>(())
    /// ```
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(Arc::from(name.into()));
        self
    }

    /// Checks the settings and builds the cache. Nothing is allocated for
    /// entries until they come, however large `max_size` is.
    ///
    /// # Errors
    /// A [`ConfigError`] naming the first invalid setting.
    pub fn build(self) -> Result<Cache<K, V, S>, ConfigError>
    where
        K: Hash + Eq + Clone + Send + Sync + 'static,
        V: Clone + Send + Sync + 'static,
        S: BuildHasher + Clone + Send + Sync + 'static,
    {
        self.settings.validate(self.weigher.is_some())?;
        debug_assert!(self.settings.max_size <= MAX_SIZE_LIMIT);
        let batching = self.settings.batching;
        let fetcher = match self.batch_fetcher {
            Some(batch) => Some(ErasedFetcher::batched(batch, batching)),
            None => self.fetcher,
        };
        let inner = Inner::new(
            self.settings,
            self.hasher,
            fetcher,
            Hooks {
                weigher: self.weigher,
                freshness: self.freshness,
                listener: self.listener,
                key_debug: self.key_debug,
            },
            self.name,
        );
        let inner = Arc::new(inner);
        crate::upkeep::keep_clock(&inner);
        Ok(Cache { inner })
    }
}
