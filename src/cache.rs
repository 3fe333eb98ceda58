//! [`Cache`]: the public handle. Each method here is the documented face of
//! an operation of the shared state ([`Inner`]), the single flight or the
//! refresher task.

use std::borrow::Borrow;
use std::fmt;
use std::hash::{BuildHasher, Hash};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::runtime::Handle;

use crate::changes::{Change, Share};
use crate::fetch::{
    BatchFetcher, DynBatchFetcher, ErasedFetcher, FetchError, Fetcher, Flight, FnBatch, Purpose,
    TraitBatch,
};
use crate::freshness::Freshness;
use crate::hasher::DefaultBuildHasher;
use crate::inner::Inner;
use crate::metrics::Metrics;
use crate::refresh::{RefresherState, StartError};
use crate::settings::{ConfigChange, ConfigError};
use crate::store::Write;

/// A concurrent, bounded, stale-while-revalidate cache. See the
/// [crate docs](crate) for the policy, the concurrency model and the costs.
///
/// `Cache` is a handle: clones share one cache.
pub struct Cache<K, V, S = DefaultBuildHasher> {
    pub(crate) inner: Arc<Inner<K, V, S>>,
}

impl<K, V, S> Clone for Cache<K, V, S> {
    fn clone(&self) -> Self {
        Self {
            inner: Arc::clone(&self.inner),
        }
    }
}

impl<K, V, S> fmt::Debug for Cache<K, V, S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let settings = self.inner.settings.load();
        f.debug_struct("Cache")
            .field("max_size", &settings.max_size)
            .field("max_weight", &settings.max_weight)
            .field("ttl", &settings.ttl)
            .field("refresh_interval", &settings.refresh_interval)
            .finish_non_exhaustive()
    }
}

impl<K, V, S> Cache<K, V, S>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
    S: BuildHasher + Clone + Send + Sync + 'static,
{
    /// The value for `key`, fresh or stale; `None` if it is not cached.
    ///
    /// Counts a hit (and a stale hit if the entry is older than the TTL) or a
    /// miss, and marks the entry as used. A stale entry is asked of the
    /// refresher at once when it runs with `refresh_on_read`. A value older
    /// than `ttl + max_stale` (see [`CacheBuilder::max_stale`]) is not
    /// served: a miss. Never waits for a fetch: see
    /// [the concurrency model](crate#concurrency).
    ///
    /// [`CacheBuilder::max_stale`]: crate::CacheBuilder::max_stale
    #[inline]
    pub fn get<Q>(&self, key: &Q) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.inner.get(key)
    }

    /// Runs `read` on the cached value of `key` where it lies, without
    /// cloning it, and returns what `read` returns; `None` if the key is not
    /// cached. It means what [`get`](Self::get) means: the same hit, stale
    /// hit and miss counts, the same refresh request for a stale value, the
    /// same `max_stale` bound.
    ///
    /// `read` runs with no lock held (it may call into the cache), and the
    /// value it sees stays valid until it returns even if another thread
    /// replaces or evicts it meanwhile; it is the cheapest way to read, as
    /// no reference count or lock word is written.
    ///
    /// ```
    /// # use std::sync::Arc;
    /// # use swr_cache::Cache;
    /// let cache: Cache<String, Arc<str>> = Cache::builder().build()?;
    /// cache.insert("greeting".into(), "Hello, {name}!".into());
    /// let len = cache.get_with("greeting", |template| template.len());
    /// assert_eq!(len, Some(14));
    /// assert_eq!(cache.metrics().hits, 1);
    /// # Ok::<(), swr_cache::ConfigError>(())
    /// ```
    #[inline]
    pub fn get_with<Q, R>(&self, key: &Q, read: impl FnOnce(&V) -> R) -> Option<R>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.inner.get_with(key, read)
    }

    /// [`get_with`](Self::get_with) without counting, marking the entry
    /// used or asking for a refresh: [`peek`](Self::peek) that borrows.
    ///
    /// ```
    /// # use swr_cache::Cache;
    /// let cache: Cache<u32, String> = Cache::builder().build()?;
    /// cache.insert(1, "one".into());
    /// assert_eq!(cache.peek_with(&1, |v| v.to_uppercase()), Some("ONE".into()));
    /// assert_eq!(cache.metrics().hits, 0);
    /// # Ok::<(), swr_cache::ConfigError>(())
    /// ```
    pub fn peek_with<Q, R>(&self, key: &Q, read: impl FnOnce(&V) -> R) -> Option<R>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let inner = &*self.inner;
        inner
            .store
            .read(key, |node| {
                inner.is_servable(node).then(|| read(&node.value))
            })
            .flatten()
    }

    /// The value for `key`, fresh or stale, like [`get`](Self::get) but
    /// counting nothing, not marking the entry used (so it does not help it
    /// stay) and not asking for a refresh. Like `get`, `None` for a value
    /// past [`max_stale`](crate::CacheBuilder::max_stale).
    ///
    /// ```
    /// # use swr_cache::Cache;
    /// let cache: Cache<u32, &str> = Cache::builder().build()?;
    /// cache.insert(1, "one");
    /// assert_eq!(cache.peek(&1), Some("one"));
    /// assert_eq!(cache.metrics().hits, 0);
    /// # Ok::<(), swr_cache::ConfigError>(())
    /// ```
    pub fn peek<Q>(&self, key: &Q) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.peek_with(key, V::clone)
    }

    /// Whether `key` is cached with a value [`get`](Self::get) would serve
    /// (one past [`max_stale`](crate::CacheBuilder::max_stale) is not);
    /// counts nothing and does not mark it used.
    pub fn contains_key<Q>(&self, key: &Q) -> bool
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let inner = &*self.inner;
        inner.store.read(key, |node| inner.is_servable(node)) == Some(true)
    }

    /// Whether the entry for `key` is older than the TTL (or was loaded as
    /// stale), by the precise clock; `None` if it is not cached. Without a
    /// TTL nothing is stale.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use std::time::Duration;
    /// use swr_cache::Cache;
    ///
    /// let cache: Cache<u32, u32> = Cache::builder().ttl(Duration::from_secs(60)).build()?;
    /// cache.insert(1, 1);
    /// assert_eq!(cache.is_stale(&1), Some(false));
    /// tokio::time::advance(Duration::from_secs(61)).await;
    /// assert_eq!(cache.is_stale(&1), Some(true)); // still served by get
    /// assert_eq!(cache.is_stale(&2), None);
    /// # Ok(())
    /// # }
    /// ```
    pub fn is_stale<Q>(&self, key: &Q) -> Option<bool>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let inner = &*self.inner;
        let now = inner.read.clock.now();
        let cache = inner.terms();
        inner
            .store
            .read(key, |node| node.meta.is_stale(now, node.terms(cache).ttl))
    }

    /// Stores `value` for `key`, with a fresh age. A new key in a full cache
    /// evicts to make room, by the policy described in the
    /// [crate docs](crate#policy); the evicted entries, and the value this
    /// one replaces, are given to the listener after the lock is released,
    /// and dropped once no reader can still see them.
    pub fn insert(&self, key: K, value: V) {
        self.insert_as(key, value, None);
    }

    /// An insert with the freshness `given`, or the one the cache decides.
    fn insert_as(&self, key: K, value: V, given: Option<Freshness>) {
        if self.inner.is_disabled() {
            return;
        }
        if self.inner.changes.is_on() {
            let told = key.clone();
            self.inner
                .write_as(key, value, Write::Upsert, (false, given));
            self.inner.changes.tell(|| Change::Written(&told));
        } else {
            self.inner
                .write_as(key, value, Write::Upsert, (false, given));
        }
    }

    /// [`insert`](Self::insert)s `value` with a freshness of its own: fresh
    /// for `ttl`, then stale (served, and refreshed by the fetcher) until a
    /// refresh or a write renews it. `max_stale` and the refresh jitter are
    /// the cache's. A refresh of it keeps this TTL (unless a
    /// [freshness function](crate::CacheBuilder::freshness) decides
    /// otherwise); an `insert` puts the key back on the cache's. For the
    /// other terms a value may carry, see [`insert_fresh`](Self::insert_fresh).
    ///
    /// The cache's refresher runs for such values even without a cache-wide
    /// TTL, once started.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use std::time::Duration;
    /// use swr_cache::Cache;
    ///
    /// let cache: Cache<&str, &str> = Cache::builder().ttl(Duration::from_secs(300)).build()?;
    /// cache.insert_with_ttl("token", "abc", Duration::from_secs(30));
    /// cache.insert("config", "x");
    /// tokio::time::advance(Duration::from_secs(31)).await;
    /// assert_eq!(cache.is_stale("token"), Some(true));
    /// assert_eq!(cache.is_stale("config"), Some(false));
    /// # Ok(())
    /// # }
    /// ```
    pub fn insert_with_ttl(&self, key: K, value: V, ttl: Duration) {
        self.insert_fresh(key, value, Freshness::ttl(ttl));
    }

    /// [`insert`](Self::insert)s `value` with the freshness given: its own
    /// TTL (or none), and how long it may be served stale past it.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use std::time::Duration;
    /// use swr_cache::{Cache, Freshness};
    ///
    /// let cache: Cache<&str, &str> = Cache::builder().build()?;
    /// let terms = Freshness::ttl(Duration::from_secs(30)).max_stale(Duration::from_secs(60));
    /// cache.insert_fresh("quote", "1.07", terms);
    /// tokio::time::advance(Duration::from_secs(45)).await;
    /// assert_eq!(cache.get("quote"), Some("1.07"), "stale, within its bound");
    /// tokio::time::advance(Duration::from_secs(60)).await;
    /// assert_eq!(cache.get("quote"), None, "past 30 s + 60 s");
    /// # Ok(())
    /// # }
    /// ```
    pub fn insert_fresh(&self, key: K, value: V, freshness: Freshness) {
        if !self.inner.is_disabled()
            && !freshness.is_cache_default()
            && !self.inner.read.own_ttls.load(Ordering::SeqCst)
        {
            // Values may now go stale without a cache-wide TTL: the
            // refresher and the clock's keeper may have to start.
            self.inner.read.own_ttls.store(true, Ordering::SeqCst);
            self.inner.reconcile_refresher();
            crate::upkeep::keep_clock(&self.inner);
        }
        self.insert_as(key, value, Some(freshness));
    }

    /// Removes `key`; returns whether it was cached. The listener hears of
    /// it as [`RemovalCause::Invalidated`](crate::RemovalCause).
    ///
    /// A fetch of the key under way (by [`get_or_fetch`](Self::get_or_fetch),
    /// [`refresh`](Self::refresh) or the refresher) is fenced, whether or not
    /// the key was cached: its value is not stored, and a caller who asks
    /// after this returns starts a fetch of its own rather than join it.
    /// [`remove`](Self::remove), [`retain`](Self::retain),
    /// [`invalidate_if`](Self::invalidate_if) and [`clear`](Self::clear)
    /// fence the keys they remove the same way.
    ///
    /// ```
    /// # use swr_cache::Cache;
    /// let cache: Cache<String, u32> = Cache::builder().build()?;
    /// cache.insert("a".into(), 1);
    /// assert!(cache.invalidate("a"));
    /// assert!(!cache.invalidate("a"));
    /// assert_eq!(cache.get("a"), None);
    /// # Ok::<(), swr_cache::ConfigError>(())
    /// ```
    pub fn invalidate<Q>(&self, key: &Q) -> bool
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.inner.invalidate(key, Share::Fleet)
    }

    /// Removes `key` and returns its value, if it was cached; the listener
    /// hears of it as [`RemovalCause::Invalidated`](crate::RemovalCause).
    ///
    /// ```
    /// # use swr_cache::Cache;
    /// let cache: Cache<String, u32> = Cache::builder().build()?;
    /// cache.insert("a".into(), 1);
    /// assert_eq!(cache.remove("a"), Some(1));
    /// assert_eq!(cache.remove("a"), None);
    /// # Ok::<(), swr_cache::ConfigError>(())
    /// ```
    pub fn remove<Q>(&self, key: &Q) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.inner.remove(key)
    }

    /// Keeps only the entries for which `keep` returns true; returns how
    /// many were removed (each heard by the listener as
    /// [`RemovalCause::Invalidated`](crate::RemovalCause)).
    ///
    /// Weakly consistent, one shard at a time: each shard's entries are
    /// copied without a lock, `keep` is called with no lock held (so it
    /// may use the cache), and an entry it rejects is removed only if it was
    /// not written since the copy. Entries added meanwhile may be missed.
    ///
    /// ```
    /// # use swr_cache::Cache;
    /// let cache: Cache<u32, u32> = Cache::builder().build()?;
    /// for k in 0..10 {
    ///     cache.insert(k, k * k);
    /// }
    /// assert_eq!(cache.retain(|_, v| v % 2 == 0), 5);
    /// assert_eq!(cache.len(), 5);
    /// # Ok::<(), swr_cache::ConfigError>(())
    /// ```
    pub fn retain(&self, mut keep: impl FnMut(&K, &V) -> bool) -> usize {
        self.inner.remove_picked(|k, v| !keep(k, v))
    }

    /// Removes the entries for which `remove` returns true: the opposite of
    /// [`retain`](Self::retain), with the same consistency.
    pub fn invalidate_if(&self, remove: impl FnMut(&K, &V) -> bool) -> usize {
        self.inner.remove_picked(remove)
    }

    /// The entries, as copies: a weakly consistent snapshot taken one shard
    /// at a time (each shard's entries are copied without a lock when
    /// the iterator reaches it), so writes made meanwhile may or may not be
    /// seen. Reading through it counts no hit and marks nothing used.
    ///
    /// ```
    /// # use swr_cache::Cache;
    /// let cache: Cache<u32, &str> = Cache::builder().build()?;
    /// cache.insert(1, "one");
    /// cache.insert(2, "two");
    /// let mut all: Vec<(u32, &str)> = cache.iter().collect();
    /// all.sort();
    /// assert_eq!(all, [(1, "one"), (2, "two")]);
    /// # Ok::<(), swr_cache::ConfigError>(())
    /// ```
    pub fn iter(&self) -> Iter<'_, K, V, S> {
        Iter {
            cache: self,
            next_shard: 0,
            copied: Vec::new().into_iter(),
        }
    }

    /// Removes every entry, and fences every fetch under way (see
    /// [`invalidate`](Self::invalidate)). Shards are emptied one after
    /// another, so a write to a shard already emptied may stand when `clear`
    /// returns.
    pub fn clear(&self) {
        self.inner.clear(Share::Fleet);
    }

    /// Marks the value of `key` stale whatever its age, until it is next
    /// written: it goes on being served (as a stale hit), and the next
    /// stale read (with `refresh_on_read`) or the refresher's next look
    /// refreshes it. A fetch of the key under way is fenced as by
    /// [`invalidate`](Self::invalidate), since it brings the value from
    /// before. With no TTL nothing is ever stale, and the key is
    /// invalidated instead. Returns whether the key was cached.
    ///
    /// For a source that says "this changed" without saying to what: the
    /// readers keep their answer at once while it is fetched again. (A
    /// fleet link applies remote changes this way if asked to.)
    ///
    /// ```
    /// # use std::time::Duration;
    /// # use swr_cache::Cache;
    /// let cache: Cache<&str, u32> = Cache::builder().ttl(Duration::from_secs(60)).build()?;
    /// cache.insert("a", 1);
    /// assert!(cache.mark_stale("a"));
    /// assert_eq!(cache.is_stale("a"), Some(true));
    /// assert_eq!(cache.get("a"), Some(1), "still served");
    /// # Ok::<(), swr_cache::ConfigError>(())
    /// ```
    pub fn mark_stale<Q>(&self, key: &Q) -> bool
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.inner.mark_stale(key)
    }

    /// [`mark_stale`](Self::mark_stale) for every entry, one shard at a
    /// time; with no TTL, [`clear`](Self::clear) without telling a fleet
    /// link.
    pub fn mark_all_stale(&self) {
        self.inner.mark_all_stale();
    }

    /// The number of entries: never above `max_size` (without a weigher),
    /// at any moment.
    pub fn len(&self) -> usize {
        self.inner.store.len()
    }

    /// Whether the cache holds no entry.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The sum of the entries' weights: never above `max_weight`, at any
    /// moment. Without a weigher every entry weighs 1, and this is `len()`.
    pub fn weight(&self) -> u64 {
        self.inner.store.weight()
    }

    /// `max_size`: the most entries the cache holds (without a weigher; 0
    /// when disabled), or the number it was sized for (with one).
    pub fn max_size(&self) -> usize {
        self.inner.settings.load().max_size
    }

    /// The bound on the sum of weights, with a weigher.
    pub fn max_weight(&self) -> Option<u64> {
        self.inner.settings.load().max_weight
    }

    /// The current TTL; `None` in offline mode.
    pub fn ttl(&self) -> Option<Duration> {
        self.inner.settings.load().ttl
    }

    /// The current refresh interval.
    pub fn refresh_interval(&self) -> Duration {
        self.inner.settings.load().refresh_interval
    }

    /// A snapshot of the counters. See [`Metrics`].
    ///
    /// ```
    /// # use swr_cache::Cache;
    /// let cache: Cache<u32, u32> = Cache::builder().build()?;
    /// cache.insert(1, 1);
    /// cache.get(&1);
    /// cache.get(&2);
    /// let m = cache.metrics();
    /// assert_eq!((m.hits, m.misses, m.inserts), (1, 1, 1));
    /// assert_eq!(m.hit_rate(), 0.5);
    /// println!("{m}"); // one line: "2 requests: 1 hit (50.0 %, 0 stale), 1 miss; ..."
    /// # Ok::<(), swr_cache::ConfigError>(())
    /// ```
    pub fn metrics(&self) -> Metrics {
        self.inner.counters.snapshot()
    }

    /// Sets every counter back to zero.
    pub fn reset_metrics(&self) {
        self.inner.counters.reset();
    }

    /// Changes the settings `change` names, on the live cache; the others
    /// stay. The new settings are checked whole first.
    ///
    /// Shrinking `max_size` (or `max_weight`) evicts down to the new bound at
    /// once, by the policy (counted as evictions); `0` empties and disables
    /// the cache. A running refresher picks the new settings up at once.
    ///
    /// The number of shards is fixed when the cache is built (from
    /// `max_size`: shards of at least 1,024 entries, up to four per core), and
    /// each holds its share of the bound. Shrinking far below the size the
    /// cache was built for leaves small shards, and below one entry per shard
    /// the keys of some shards cannot be cached at all (each such insert is
    /// evicted at once, and the listener hears so).
    ///
    /// ```
    /// use std::time::Duration;
    /// use swr_cache::{Cache, ConfigChange, ConfigError};
    ///
    /// let cache: Cache<u32, u32> = Cache::builder().max_size(100).build()?;
    /// for k in 0..100 {
    ///     cache.insert(k, k);
    /// }
    /// cache.configure(ConfigChange::new().max_size(10).ttl(Duration::from_secs(30)))?;
    /// assert_eq!(cache.len(), 10);
    /// assert_eq!(cache.ttl(), Some(Duration::from_secs(30)));
    /// // An invalid change is refused whole.
    /// let refused = cache.configure(ConfigChange::new().max_size(5).ttl(Duration::ZERO));
    /// assert_eq!(refused, Err(ConfigError::ZeroTtl));
    /// assert_eq!(cache.max_size(), 10);
    /// # Ok::<(), ConfigError>(())
    /// ```
    ///
    /// # Errors
    /// A [`ConfigError`] naming the first invalid setting; then nothing changes.
    pub fn configure(&self, change: ConfigChange) -> Result<(), ConfigError> {
        self.inner.configure(&change)?;
        // A TTL given now needs the coarse clock kept.
        crate::upkeep::keep_clock(&self.inner);
        Ok(())
    }

    /// Replaces the fetcher used from now on by the refresher,
    /// [`get_or_fetch`](Self::get_or_fetch) and [`refresh`](Self::refresh)
    /// with an async closure (as [`CacheBuilder::fetcher`] takes it); fetches
    /// under way finish with the fetcher they started with.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use swr_cache::Cache;
    ///
    /// let cache: Cache<String, String> = Cache::builder().build()?;
    /// cache.set_fetcher(|key| async move { Ok::<_, std::io::Error>(format!("v1 {key}")) });
    /// assert_eq!(cache.get_or_fetch("a").await?, "v1 a");
    /// cache.set_fetcher(|key| async move { Ok::<_, std::io::Error>(format!("v2 {key}")) });
    /// assert_eq!(cache.refresh("a").await?, "v2 a");
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// [`CacheBuilder::fetcher`]: crate::CacheBuilder::fetcher
    pub fn set_fetcher<F, Fut, E>(&self, fetch: F)
    where
        F: Fn(K) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = Result<V, E>> + Send + 'static,
        E: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        self.inner
            .fetcher
            .store(Some(Arc::new(ErasedFetcher::from_fn(fetch))));
    }

    /// [`set_fetcher`](Self::set_fetcher) for a blocking closure; see
    /// [`CacheBuilder::blocking_fetcher`](crate::CacheBuilder::blocking_fetcher).
    pub fn set_blocking_fetcher<F, E>(&self, fetch: F)
    where
        F: Fn(&K) -> Result<V, E> + Send + Sync + 'static,
        E: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        self.inner
            .fetcher
            .store(Some(Arc::new(ErasedFetcher::from_blocking(fetch))));
    }

    /// [`set_fetcher`](Self::set_fetcher) for a [`Fetcher`] type.
    pub fn set_fetcher_impl(&self, fetcher: impl Fetcher<K, V>) {
        self.inner
            .fetcher
            .store(Some(Arc::new(ErasedFetcher::from_impl(fetcher))));
    }

    /// [`set_fetcher`](Self::set_fetcher) for a batch fetcher, gathered by
    /// the builder's `max_batch` and `batch_window`; see
    /// [`CacheBuilder::batch_fetcher`](crate::CacheBuilder::batch_fetcher).
    /// Keys waiting in a batch of the fetcher it replaces are fetched by
    /// that one.
    pub fn set_batch_fetcher<F, Fut, E>(&self, fetch: F)
    where
        F: Fn(Vec<K>) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = Result<Vec<(K, V)>, E>> + Send + 'static,
        E: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        self.set_batched(Arc::new(FnBatch(fetch)));
    }

    /// [`set_batch_fetcher`](Self::set_batch_fetcher) for a
    /// [`BatchFetcher`] type.
    pub fn set_batch_fetcher_impl(&self, fetcher: impl BatchFetcher<K, V>) {
        self.set_batched(Arc::new(TraitBatch(fetcher)));
    }

    fn set_batched(&self, fetch: Arc<dyn DynBatchFetcher<K, V>>) {
        let batching = self.inner.settings.load().batching;
        self.inner
            .fetcher
            .store(Some(Arc::new(ErasedFetcher::batched(fetch, batching))));
    }

    /// Starts the refresher on the current tokio runtime. Calling it again
    /// while it runs does nothing.
    ///
    /// The refresher is one tokio task. Every `refresh_interval` it looks
    /// for stale entries in each shard's timer wheel (one hold of each
    /// shard's lock, whatever the number of entries; it takes the
    /// stale ones under the shard's lock, a bounded batch per hold), and fetches them,
    /// as many at a time as the adaptive limit allows
    /// ([`adaptive_refreshes`](crate::CacheBuilder::adaptive_refreshes), or a fixed
    /// [`max_concurrent_refreshes`](crate::CacheBuilder::max_concurrent_refreshes)),
    /// each within `refresh_timeout`. A `get` that finds an entry stale
    /// asks for it at once (with `refresh_on_read`), and those keys go
    /// first. A failed fetch (an error, a timeout, a panic of the fetcher or
    /// of the weigher on its result) keeps the stale value, which goes on
    /// being served, and is retried after a backoff that starts at one
    /// `refresh_interval` and doubles with each failure, with jitter, up to
    /// `max_retry_backoff`; when many keys fail with no answer between, a
    /// circuit breaker holds every key back but for a probe now and then,
    /// and lets them all go when a probe answers. Between looks it ticks the
    /// coarse clock reads judge staleness by (on a runtime that is always
    /// driven). It holds only a weak reference to the cache: dropping the
    /// last handle ends it. A panic in the task (a key's `Clone`, say) is
    /// counted and logged, and the task starts over; the cache stays
    /// consistent and serving meanwhile. The numbers are in
    /// [the crate docs](crate#the-refreshers-numbers).
    ///
    /// With `ttl = None` or a capacity of 0 no task is spawned until
    /// [`configure`](Cache::configure) gives a TTL and a capacity.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use std::time::Duration;
    /// use swr_cache::Cache;
    ///
    /// let cache: Cache<String, String> = Cache::builder()
    ///     .ttl(Duration::from_secs(300))
    ///     .refresh_interval(Duration::from_secs(60))
    ///     .fetcher(|key| async move { Ok::<_, std::io::Error>(format!("fresh {key}")) })
    ///     .build()?;
    /// cache.start()?;
    /// assert!(cache.is_refreshing());
    /// cache.stop().await;
    /// assert!(!cache.is_refreshing());
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    /// [`StartError::NoRuntime`] outside a tokio runtime,
    /// [`StartError::NoFetcher`] if the cache has no fetcher.
    pub fn start(&self) -> Result<(), StartError> {
        let runtime = Handle::try_current().map_err(|_| StartError::NoRuntime)?;
        self.start_on(&runtime)
    }

    /// Starts the refresher on `runtime`; see [`start`](Cache::start).
    ///
    /// # Errors
    /// [`StartError::NoFetcher`] if the cache has no fetcher.
    pub fn start_on(&self, runtime: &Handle) -> Result<(), StartError> {
        if self.inner.fetcher.load().is_none() {
            return Err(StartError::NoFetcher);
        }
        let mut control = self.inner.refresher.control();
        if control.owned.is_some() {
            // Moving off the refresher's own thread: that one ends.
            if let Some(run) = control.run.take() {
                run.signals.stop();
            }
            control.retire_owned();
        }
        control.runtime = Some(runtime.clone());
        self.inner.reconcile(&mut control);
        Ok(())
    }

    /// Starts the refresher on a thread of its own (named
    /// `swr-cache-refresher`), for code with no tokio runtime: the crate
    /// makes one for it. With a
    /// [`blocking_fetcher`](crate::CacheBuilder::blocking_fetcher), fetches
    /// run on that runtime's blocking threads. [`shutdown`](Cache::shutdown)
    /// (or dropping the last handle) stops it and ends the thread. Calling
    /// it again while it runs changes nothing.
    ///
    /// ```
    /// use std::time::Duration;
    /// use swr_cache::Cache;
    ///
    /// let cache: Cache<String, String> = Cache::builder()
    ///     .ttl(Duration::from_secs(60))
    ///     .blocking_fetcher(|key: &String| Ok::<_, std::io::Error>(format!("fetched {key}")))
    ///     .build()?;
    /// cache.start_thread()?;
    /// assert!(cache.is_refreshing());
    /// cache.shutdown();
    /// assert!(!cache.is_refreshing());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    /// [`StartError::NoFetcher`] if the cache has no fetcher;
    /// [`StartError::NoThread`] if the thread could not be made.
    pub fn start_thread(&self) -> Result<(), StartError> {
        if self.inner.fetcher.load().is_none() {
            return Err(StartError::NoFetcher);
        }
        let mut control = self.inner.refresher.control();
        if control.owned.is_none() {
            let (retire, retired) = tokio::sync::oneshot::channel::<()>();
            let (ready, handle) = std::sync::mpsc::channel();
            std::thread::Builder::new()
                .name("swr-cache-refresher".into())
                .spawn(move || {
                    // The runtime is made and dropped on this thread only, so
                    // that no caller's async context ever drops one.
                    let runtime = match tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                    {
                        Ok(runtime) => runtime,
                        Err(e) => {
                            let _ = ready.send(Err(e.to_string()));
                            return;
                        }
                    };
                    let _ = ready.send(Ok(runtime.handle().clone()));
                    // Runs the refresher until `retire` is dropped (stop,
                    // shutdown, the last handle gone); fetches on its
                    // blocking pool are left to finish on their own.
                    runtime.block_on(async {
                        let _ = retired.await;
                    });
                    runtime.shutdown_background();
                })
                .map_err(|e| StartError::NoThread(e.to_string()))?;
            let handle = handle
                .recv()
                .map_err(|_| StartError::NoThread("the thread ended at once".into()))?
                .map_err(StartError::NoThread)?;
            if let Some(run) = control.run.take() {
                run.signals.stop();
            }
            control.runtime = Some(handle);
            control.owned = Some(retire);
        }
        self.inner.reconcile(&mut control);
        Ok(())
    }

    /// Stops the refresher and waits until its task has ended. Fetches it
    /// started are cancelled; callers of [`get_or_fetch`](Cache::get_or_fetch)
    /// waiting on one of them get [`FetchError::Cancelled`]. The cache keeps
    /// serving what it holds; [`start`](Cache::start) starts it again. (See
    /// `start` for an example.)
    pub async fn stop(&self) {
        if let Some(run) = self.inner.stop_run() {
            // The task only ends by returning; a JoinError here could only be
            // the runtime shutting down, which ends it just the same.
            let _ = run.task.await;
        }
    }

    /// Stops the refresher without waiting: [`stop`](Cache::stop) for
    /// non-async code. The task ends at its next wake-up, at once if idle.
    pub fn shutdown(&self) {
        self.inner.stop_run();
    }

    /// Whether the refresher task is running.
    pub fn is_refreshing(&self) -> bool {
        self.inner.is_refreshing()
    }

    /// Reports the cache's counters and gauges to the `metrics` facade now
    /// (feature `metrics`): each [`Metrics`] field as a counter
    /// `swr_cache_<field>_total`, and the gauges `swr_cache_entries`,
    /// `swr_cache_weight` and the refresher's state
    /// (`swr_cache_refresher_running`, `_in_flight`, `_limit`, `_queued`,
    /// `_backing_off`, and `_breaker`: 0 closed, 1 open, 2 probing). The
    /// refresher reports them once a second while it runs; call this where
    /// they must be current (before a scrape, or with no refresher).
    ///
    /// Two histograms are recorded as their events happen, off the hit
    /// path: `swr_cache_fetch_seconds` for each fetch, labelled `purpose`
    /// (`load`, `refresh`) and `outcome` (`value`, `unchanged`, `gone`,
    /// `error`, `timeout`), and `swr_cache_stale_served_seconds`, how far
    /// past its TTL each stale value served was. Their handles are taken
    /// when the cache is built: install the recorder first. Every series is
    /// labelled `cache` with the builder's [`name`](crate::CacheBuilder::name)
    /// (`"default"` without one).
    ///
    /// Useful queries (PromQL), for a cache named `prompts`:
    ///
    /// ```text
    /// hit ratio:     rate(swr_cache_hits_total{cache="prompts"}[5m])
    ///                  / (rate(swr_cache_hits_total{cache="prompts"}[5m])
    ///                   + rate(swr_cache_misses_total{cache="prompts"}[5m]))
    /// served stale:  rate(swr_cache_stale_hits_total{cache="prompts"}[5m])
    ///                  / rate(swr_cache_hits_total{cache="prompts"}[5m])
    /// staleness p99: histogram_quantile(0.99,
    ///                  rate(swr_cache_stale_served_seconds_bucket{cache="prompts"}[5m]))
    /// outage:        swr_cache_refresher_breaker{cache="prompts"} > 0
    /// fetch p99:     histogram_quantile(0.99, sum by (le, purpose)
    ///                  (rate(swr_cache_fetch_seconds_bucket{cache="prompts"}[5m])))
    /// ```
    #[cfg(feature = "metrics")]
    #[cfg_attr(docsrs, doc(cfg(feature = "metrics")))]
    pub fn report_metrics(&self) {
        self.inner.report_metrics(self.refresher_state());
    }

    /// The refresher's state for dashboards and alerts: fetches in flight,
    /// the concurrency limit now, keys waiting and backing off, the circuit
    /// breaker, and when a fetch last answered. Cheap (a few atomic loads);
    /// the numbers are as of the task's last pass.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use std::time::Duration;
    /// use swr_cache::{BreakerState, Cache};
    ///
    /// let cache: Cache<String, String> = Cache::builder()
    ///     .ttl(Duration::from_secs(60))
    ///     .fetcher(|key| async move { Ok::<_, std::io::Error>(key) })
    ///     .build()?;
    /// assert!(!cache.refresher_state().running);
    /// cache.start()?;
    /// tokio::task::yield_now().await;
    /// let state = cache.refresher_state();
    /// assert!(state.running);
    /// assert_eq!(state.breaker, BreakerState::Closed);
    /// # Ok(()) }
    /// ```
    pub fn refresher_state(&self) -> RefresherState {
        self.inner
            .refresher
            .gauges
            .read(self.inner.is_refreshing(), &self.inner.read.clock)
    }

    /// The cached value for `key`, fresh or stale; on a miss, fetches it,
    /// caches it and returns it. Concurrent misses of one key make one fetch,
    /// whose value or error they all get. The key is taken by reference in
    /// any form the cache's key borrows as (`&str` for `String` or `Arc<str>`
    /// keys), and made into a key only on a miss.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use swr_cache::Cache;
    ///
    /// let cache: Cache<String, usize> = Cache::builder()
    ///     .fetcher(|key: String| async move { Ok::<_, std::io::Error>(key.len()) })
    ///     .build()?;
    /// assert_eq!(cache.get_or_fetch("four").await?, 4);
    /// assert_eq!(cache.get("four"), Some(4));
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// If the key is written or removed while the fetch is under way, the
    /// write stands, or the key stays removed: the fetched value is still
    /// returned to those who asked before, but not cached (counted in
    /// [`Metrics::discarded`]).
    ///
    /// # Errors
    /// The fetch's [`FetchError`]; nothing is cached then.
    pub async fn get_or_fetch<Q>(&self, key: &Q) -> Result<V, FetchError>
    where
        K: Borrow<Q> + From<Q::Owned>,
        Q: ToOwned + Hash + Eq + ?Sized,
    {
        if let Some(value) = self.get(key) {
            return Ok(value);
        }
        // Boxed, so that this future holds a pointer to the miss path's
        // (hundreds of bytes) rather than room for it, which every hit
        // would build, move and drop: a hit costs what a `get` costs.
        Box::pin(self.fetch_now(K::from(key.to_owned()), Purpose::Load)).await
    }

    /// The cached value for `key`; on a miss, calls `load` on this thread,
    /// caches its value and returns it: a read-through for code without
    /// async, which needs no runtime at all. Threads that miss the same key
    /// while one loads it wait for it (single flight) and then get its
    /// value; if its load fails or panics, the next of them loads with its
    /// own `load`. An error is returned to the loader's caller only, and
    /// nothing is cached then. Like a [`get_or_fetch`](Self::get_or_fetch),
    /// the load is fenced by a removal of the key while it runs: its value
    /// is returned, not cached.
    ///
    /// `load` runs with no lock held, so it may use the cache; if it asks
    /// for the same key, that call loads again rather than wait for itself.
    ///
    /// ```
    /// use swr_cache::Cache;
    ///
    /// let cache: Cache<String, usize> = Cache::builder().build()?;
    /// let len = cache.get_or_insert_with("four", |key| Ok::<_, std::io::Error>(key.len()))?;
    /// assert_eq!(len, 4);
    /// assert_eq!(cache.get("four"), Some(4));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    /// `load`'s error; nothing is cached then.
    pub fn get_or_insert_with<Q, E>(
        &self,
        key: &Q,
        load: impl FnOnce(&K) -> Result<V, E>,
    ) -> Result<V, E>
    where
        K: Borrow<Q> + From<Q::Owned>,
        Q: ToOwned + Hash + Eq + ?Sized,
    {
        self.inner.get_or_insert_with(key, load)
    }

    /// Revalidates `key` now: fetches it (joining a fetch already under way,
    /// whose result is then the answer) and installs the result, unless a
    /// newer write lands first. Returns the value the cache holds afterwards.
    /// An uncached key is fetched and cached. (Joining a `get_or_fetch` that
    /// found the key written since its miss answers with that value, with
    /// no fetch.)
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use swr_cache::Cache;
    ///
    /// let cache: Cache<String, String> = Cache::builder()
    ///     .fetcher(|key| async move { Ok::<_, std::io::Error>(format!("upstream {key}")) })
    ///     .build()?;
    /// cache.insert("a".into(), "local".into());
    /// assert_eq!(cache.refresh("a").await?, "upstream a");
    /// assert_eq!(cache.get("a").as_deref(), Some("upstream a"));
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    /// The fetch's [`FetchError`]; the cached value, if any, is kept.
    pub async fn refresh<Q>(&self, key: &Q) -> Result<V, FetchError>
    where
        K: Borrow<Q> + From<Q::Owned>,
        Q: ToOwned + Hash + Eq + ?Sized,
    {
        self.fetch_now(K::from(key.to_owned()), Purpose::Forced)
            .await
    }

    async fn fetch_now(&self, mut key: K, purpose: Purpose) -> Result<V, FetchError> {
        // A load of a key lately answered `Gone` asks no one; `refresh`
        // revalidates, so it asks the source whatever is remembered.
        if purpose == Purpose::Load && self.inner.known_gone(&key) {
            return Err(FetchError::Gone);
        }
        let runtime = Handle::try_current().map_err(|_| FetchError::NoRuntime)?;
        loop {
            return match self.inner.join_or_start_flight(key, purpose)? {
                Flight::Joined(flight) => match flight.wait().await {
                    Ok(result) => result,
                    // Its driver stalled: start a new one (or join one
                    // another caller started meanwhile).
                    Err(again) => {
                        key = again;
                        continue;
                    }
                },
                // Spawned, not awaited here: the fetch finishes and fills
                // the cache even if every caller waiting on it goes away.
                Flight::Started(drive) => runtime
                    .spawn(drive)
                    .await
                    .unwrap_or(Err(FetchError::Cancelled)),
                Flight::Found(value) => Ok(value),
                Flight::Gone => unreachable!("only a background refresh skips an absent key"),
            };
        }
    }

    /// Checks the store's invariants (every shard's counts, queues, table,
    /// ghost and sketch, and the totals; with `negative_ttl`, the same of
    /// the record of gone keys, its bound among them), panicking with the
    /// first that fails. It holds every shard's lock at once and walks every
    /// entry, so it sees one moment of the whole cache and may run while
    /// other threads use it: for tests and fuzzing.
    #[doc(hidden)]
    pub fn validate(&self) {
        let gone = self.inner.gone.as_ref().map_or(Ok(()), |g| g.validate());
        if let Err(broken) = self.inner.store.validate().and(gone) {
            panic!("swr-cache invariant broken: {broken}");
        }
    }

    /// The shards the store is split into; for tests and benches.
    #[doc(hidden)]
    pub fn shard_count(&self) -> usize {
        self.inner.store.shard_count()
    }
}

/// The entries of a cache, copied one shard at a time; from [`Cache::iter`].
pub struct Iter<'a, K, V, S = DefaultBuildHasher> {
    cache: &'a Cache<K, V, S>,
    next_shard: usize,
    copied: std::vec::IntoIter<(K, V, crate::store::Version)>,
}

impl<K, V, S> Iterator for Iter<'_, K, V, S>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
    S: BuildHasher + Clone + Send + Sync + 'static,
{
    type Item = (K, V);

    fn next(&mut self) -> Option<(K, V)> {
        loop {
            if let Some((key, value, _)) = self.copied.next() {
                return Some((key, value));
            }
            let store = &self.cache.inner.store;
            if self.next_shard >= store.shard_count() {
                return None;
            }
            self.copied = store.copy_shard(self.next_shard).into_iter();
            self.next_shard += 1;
        }
    }
}

impl<K, V, S> fmt::Debug for Iter<'_, K, V, S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Iter")
            .field("next_shard", &self.next_shard)
            .finish_non_exhaustive()
    }
}
