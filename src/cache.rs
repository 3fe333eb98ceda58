//! [`Cache`]: the public handle, with the read and write paths.

use std::borrow::Borrow;
use std::fmt;
use std::hash::{BuildHasher, Hash};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use dashmap::DashMap;
use dashmap::mapref::entry::Entry;

use crate::builder::{
    CacheBuilder, ConfigChange, ConfigError, DefaultHasher, LiveSettings, RefreshSettings,
};
use crate::clock::Ring;
use crate::fetcher::DynFetcher;
use crate::flight::FlightReceiver;
use crate::metrics::{Counter, Counters, Metrics};
use crate::node::{Commit, Node};
use crate::refresh::Refresher;
use crate::time::Clock;

/// A concurrent, bounded, stale-while-revalidate cache. See the
/// [crate docs](crate) for the policy, the concurrency model and the costs.
///
/// `Cache` is a handle: clones share one cache.
pub struct Cache<K, V, S = DefaultHasher> {
    pub(crate) inner: Arc<Inner<K, V, S>>,
}

pub(crate) struct Inner<K, V, S> {
    pub(crate) map: DashMap<K, Arc<Node<K, V>>, S>,
    /// Taken shared by every claim and release of a slot, exclusively only to
    /// resize or clear. Always taken before any map shard lock, never after.
    ring: RwLock<Ring<K, V>>,
    /// The ring's length, readable without the lock; 0 disables the cache.
    max_size: AtomicUsize,
    pub(crate) settings: LiveSettings,
    pub(crate) clock: Clock,
    pub(crate) counters: Counters,
    pub(crate) fetcher: Option<Arc<dyn DynFetcher<K, V>>>,
    pub(crate) refresh: RefreshSettings,
    /// The fetch under way for each key being fetched.
    pub(crate) flights: DashMap<K, FlightReceiver<V>, S>,
    pub(crate) refresher: Refresher<K, V>,
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
        f.debug_struct("Cache")
            .field("max_size", &self.inner.max_size.load(Ordering::Relaxed))
            .field("ttl", &self.inner.settings.ttl())
            .field("refresh_interval", &self.inner.settings.refresh_interval())
            .finish_non_exhaustive()
    }
}

impl<K, V> Cache<K, V> {
    /// A builder with the LangSmith SDK's defaults: `max_size` 100, `ttl`
    /// 300 s, `refresh_interval` 60 s, and a randomly seeded hasher.
    pub fn builder() -> CacheBuilder<K, V> {
        CacheBuilder::default()
    }
}

impl<K, V, S> Cache<K, V, S>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
    S: BuildHasher + Clone + Send + Sync + 'static,
{
    pub(crate) fn from_builder(builder: CacheBuilder<K, V, S>) -> Result<Self, ConfigError> {
        let max_size = builder.max_size;
        let ring = Ring::new(max_size).ok_or(ConfigError::OutOfMemory { max_size })?;
        // Enough room up front for small caches; large ones grow as they fill,
        // so a generous max_size costs nothing until it is used.
        let map = DashMap::with_capacity_and_hasher(max_size.min(1024), builder.hasher.clone());
        Ok(Self {
            inner: Arc::new(Inner {
                map,
                ring: RwLock::new(ring),
                max_size: AtomicUsize::new(max_size),
                settings: LiveSettings::new(builder.ttl, builder.refresh_interval),
                clock: Clock::new(),
                counters: Counters::new(),
                fetcher: builder.fetcher,
                refresh: builder.refresh,
                flights: DashMap::with_hasher(builder.hasher),
                refresher: Refresher::new(),
            }),
        })
    }

    /// The value for `key`, fresh or stale; `None` if it is not cached.
    ///
    /// Counts a hit (and a stale hit if the entry is older than the TTL) or a
    /// miss, and marks the entry recently used. A stale entry is queued for
    /// the refresher at once when it runs with `refresh_on_read`. Never waits
    /// for a fetch: see [the concurrency model](crate#concurrency).
    #[inline]
    pub fn get<Q>(&self, key: &Q) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let inner = &*self.inner;
        if inner.is_disabled() {
            return None;
        }
        let Some(entry) = inner.map.get(key) else {
            inner.counters.incr(Counter::Misses);
            return None;
        };
        let node = entry.value();
        node.touch();
        let commit = node.commit.load();
        let ttl = inner.settings.ttl_nanos();
        if ttl != 0 && commit.is_stale(inner.clock.recent(), ttl) {
            inner.counters.incr(Counter::StaleHits);
            inner.refresher.nudge(node);
        }
        inner.counters.incr(Counter::Hits);
        Some(commit.value.clone())
    }

    /// Whether `key` is cached; counts nothing and does not mark it used.
    pub fn contains_key<Q>(&self, key: &Q) -> bool
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.inner.map.contains_key(key)
    }

    /// Whether the entry for `key` is older than the TTL, by the precise
    /// clock; `None` if it is not cached.
    pub fn is_stale<Q>(&self, key: &Q) -> Option<bool>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let inner = &*self.inner;
        let entry = inner.map.get(key)?;
        let stale = entry
            .value()
            .commit
            .load()
            .is_stale(inner.clock.now(), inner.settings.ttl_nanos());
        Some(stale)
    }

    /// Stores `value` for `key`, with a fresh age. A new key in a full cache
    /// evicts one entry, chosen by the clock sweep.
    pub fn insert(&self, key: K, value: V) {
        let inner = &*self.inner;
        if inner.is_disabled() {
            return;
        }
        let commit = Commit::new(value, inner.clock.now());
        if let Some(entry) = inner.map.get(&key) {
            let node = entry.value();
            node.commit.store(commit);
            node.touch();
            inner.counters.incr(Counter::Updates);
            return;
        }
        inner.insert_new(key, commit);
    }

    /// Removes `key`; returns whether it was cached.
    pub fn invalidate<Q>(&self, key: &Q) -> bool
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let inner = &*self.inner;
        let ring = inner.ring_shared();
        let Some((_, node)) = inner.map.remove(key) else {
            return false;
        };
        node.mark_dead();
        ring.release(&node);
        inner.counters.incr(Counter::Invalidations);
        true
    }

    /// Removes every entry.
    pub fn clear(&self) {
        let inner = &*self.inner;
        let mut ring = inner.ring_exclusive();
        let removed = inner.remove_all();
        ring.reset();
        inner.counters.add(Counter::Invalidations, removed);
    }

    /// The number of entries. Never above `max_size` once writers are quiet;
    /// under concurrent inserts of new keys it may pass it by at most one per
    /// inserter, for the moment between claiming a slot and removing the victim.
    pub fn len(&self) -> usize {
        self.inner.map.len()
    }

    /// Whether the cache holds no entry.
    pub fn is_empty(&self) -> bool {
        self.inner.map.is_empty()
    }

    /// The most entries the cache holds; 0 when disabled.
    pub fn max_size(&self) -> usize {
        self.inner.max_size.load(Ordering::Relaxed)
    }

    /// The current TTL; `None` in offline mode.
    pub fn ttl(&self) -> Option<std::time::Duration> {
        self.inner.settings.ttl()
    }

    /// The current refresh interval.
    pub fn refresh_interval(&self) -> std::time::Duration {
        self.inner.settings.refresh_interval()
    }

    /// A snapshot of the counters. See [`Metrics`].
    pub fn metrics(&self) -> Metrics {
        self.inner.counters.snapshot()
    }

    /// Sets every counter back to zero.
    pub fn reset_metrics(&self) {
        self.inner.counters.reset();
    }

    /// Changes the settings `change` names, on the live cache; the others stay.
    ///
    /// Shrinking `max_size` evicts down to the new size at once (counted as
    /// evictions), keeping recently read entries first; `0` empties and
    /// disables the cache.
    ///
    /// # Errors
    /// A [`ConfigError`] naming the first invalid setting; then nothing changes.
    pub fn configure(&self, change: ConfigChange) -> Result<(), ConfigError> {
        change.validate()?;
        let inner = &*self.inner;
        if let Some(max_size) = change.max_size {
            inner.resize(max_size)?;
        }
        if let Some(ttl) = change.ttl {
            inner.settings.set_ttl(ttl);
        }
        if let Some(interval) = change.refresh_interval {
            inner.settings.set_refresh_interval(interval);
        }
        self.inner.reconcile_refresher();
        Ok(())
    }
}

impl<K, V, S> Inner<K, V, S>
where
    K: Hash + Eq + Clone,
    S: BuildHasher + Clone,
{
    #[inline]
    pub(crate) fn is_disabled(&self) -> bool {
        self.max_size.load(Ordering::Relaxed) == 0
    }

    fn ring_shared(&self) -> RwLockReadGuard<'_, Ring<K, V>> {
        // A poisoned lock only means another thread panicked mid-operation;
        // every ring operation leaves the slots consistent, so carry on.
        self.ring.read().unwrap_or_else(|e| e.into_inner())
    }

    fn ring_exclusive(&self) -> RwLockWriteGuard<'_, Ring<K, V>> {
        self.ring.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds a key not seen in the map: claim a slot (evicting if the ring is
    /// full), then insert. The ring lock is held across both, so a resize
    /// never sees a node that holds a slot but is not yet in the map.
    fn insert_new(&self, key: K, commit: Arc<Commit<V>>) {
        self.add(key, commit, true);
    }

    /// Adds `key` unless it is cached already (a read-through fetch's value
    /// yields to whatever was written meanwhile).
    pub(crate) fn insert_if_absent(&self, key: K, commit: Arc<Commit<V>>) {
        if !self.is_disabled() && !self.map.contains_key(&key) {
            self.add(key, commit, false);
        }
    }

    fn add(&self, key: K, commit: Arc<Commit<V>>, overwrite: bool) {
        let ring = self.ring_shared();
        if ring.len() == 0 {
            return; // disabled since the caller looked
        }
        let node = Node::new_pending(key.clone(), commit);
        if let Some(victim) = ring.claim(&node) {
            self.evict(&victim);
        }
        match self.map.entry(key) {
            Entry::Occupied(entry) => {
                // Another thread added the key meanwhile: write into its node
                // (if overwriting) and give back the slot this one claimed.
                if overwrite {
                    let existing = entry.get();
                    existing.commit.store(node.commit.load_full());
                    existing.touch();
                    self.counters.incr(Counter::Updates);
                }
                node.mark_dead();
                drop(entry);
                ring.release(&node);
            }
            Entry::Vacant(entry) => {
                node.mark_live();
                entry.insert(node);
                self.counters.incr(Counter::Inserts);
            }
        }
    }

    /// Calls `visit` with every node the ring holds (live, pending or dead).
    pub(crate) fn for_each_node(&self, visit: impl FnMut(&Arc<Node<K, V>>)) {
        self.ring_shared().for_each_node(visit);
    }

    /// Removes `victim` from the map if it is still the node for its key.
    fn evict(&self, victim: &Arc<Node<K, V>>) {
        let removed = self.map.remove_if(&victim.key, |_, node| {
            let same = Arc::ptr_eq(node, victim);
            if same {
                node.mark_dead();
            }
            same
        });
        if removed.is_some() {
            self.counters.incr(Counter::Evictions);
        }
    }

    /// Empties the map, marking every node dead; returns how many were removed.
    fn remove_all(&self) -> u64 {
        let mut removed = 0;
        self.map.retain(|_, node| {
            node.mark_dead();
            removed += 1;
            false
        });
        removed
    }

    fn resize(&self, max_size: usize) -> Result<(), ConfigError> {
        let mut ring = self.ring_exclusive();
        if max_size == ring.len() {
            return Ok(());
        }
        let (resized, victims) = ring
            .resized(max_size)
            .ok_or(ConfigError::OutOfMemory { max_size })?;
        for victim in &victims {
            self.evict(victim);
        }
        *ring = resized;
        self.max_size.store(max_size, Ordering::Relaxed);
        Ok(())
    }
}
