//! [`Cache`]: the public handle, with the read and write paths.

use std::borrow::Borrow;
use std::collections::VecDeque;
use std::fmt;
use std::hash::{BuildHasher, Hash};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use dashmap::DashMap;
use dashmap::SharedValue;
use dashmap::mapref::entry::Entry as MapEntry;

use crate::builder::{
    CacheBuilder, ConfigChange, ConfigError, DefaultHasher, LiveSettings, RefreshSettings,
};
use crate::clock::{Claimant, Occupant, Ring, Taken};
use crate::entry::Entry;
use crate::fetcher::DynFetcher;
use crate::flight::FlightReceiver;
use crate::hashing::NonZeroHashes;
use crate::metrics::{Counter, Counters, Metrics};
use crate::refresh::Refresher;
use crate::time::{Clock, Nanos};

/// A concurrent, bounded, stale-while-revalidate cache. See the
/// [crate docs](crate) for the policy, the concurrency model and the costs.
///
/// `Cache` is a handle: clones share one cache.
pub struct Cache<K, V, S = DefaultHasher> {
    pub(crate) inner: Arc<Inner<K, V, S>>,
}

pub(crate) struct Inner<K, V, S> {
    pub(crate) map: DashMap<K, Entry<V>, NonZeroHashes<S>>,
    /// Taken shared by every claim and release of a slot, exclusively only to
    /// resize or clear. Never taken while holding a map shard lock.
    ring: RwLock<Ring>,
    /// The ring's length, readable without the lock; 0 disables the cache.
    max_size: AtomicUsize,
    /// The source of entry versions: one per write, unique in the cache.
    versions: AtomicU64,
    /// The number of entries in the map, counted as they are added and
    /// removed: one atomic read for `len()`, where summing the shards would
    /// lock each and, under churn, add up counts from different moments.
    entries: AtomicUsize,
    pub(crate) settings: LiveSettings,
    pub(crate) clock: Clock,
    pub(crate) counters: Counters,
    pub(crate) fetcher: Option<Arc<dyn DynFetcher<K, V>>>,
    pub(crate) refresh: RefreshSettings,
    /// The fetch under way for each key being fetched.
    pub(crate) flights: DashMap<K, FlightReceiver<V>, S>,
    pub(crate) refresher: Refresher<K>,
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
        let map = DashMap::with_capacity_and_hasher(
            max_size.min(1024),
            NonZeroHashes(builder.hasher.clone()),
        );
        Ok(Self {
            inner: Arc::new(Inner {
                map,
                ring: RwLock::new(ring),
                max_size: AtomicUsize::new(max_size),
                versions: AtomicU64::new(0),
                entries: AtomicUsize::new(0),
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
        // A disabled cache is empty, so only a miss needs to ask whether to count.
        let Some(entry) = inner.map.get(key) else {
            if !inner.is_disabled() {
                inner.counters.incr(Counter::Misses);
            }
            return None;
        };
        entry.touch();
        let ttl = inner.settings.ttl_nanos();
        if ttl != 0 && entry.is_stale(inner.clock.recent(), ttl) {
            inner.counters.incr(Counter::StaleHits);
            inner.refresher.nudge(&self.inner, entry.key(), &entry);
        }
        inner.counters.incr(Counter::Hits);
        Some(entry.value.clone())
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
        Some(entry.is_stale(inner.clock.now(), inner.settings.ttl_nanos()))
    }

    /// Stores `value` for `key`, with a fresh age. A new key in a full cache
    /// evicts one entry, chosen by the clock sweep.
    pub fn insert(&self, key: K, value: V) {
        let inner = &*self.inner;
        if !inner.is_disabled() {
            inner.write(key, value, inner.clock.now(), true);
        }
    }

    /// Removes `key`; returns whether it was cached.
    pub fn invalidate<Q>(&self, key: &Q) -> bool
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let inner = &*self.inner;
        let Some((key, entry)) = inner.remove_where(key, |_| true, Counter::Invalidations) else {
            return false;
        };
        if let Some(slot) = entry.slot() {
            // Unless the key was added again meanwhile and placed in the
            // same slot: then the slot is the new entry's.
            let hash = inner.hash(&key);
            inner.release(&inner.ring_shared(), slot, hash);
        }
        true
    }

    /// Removes every entry.
    pub fn clear(&self) {
        self.inner.clear();
    }

    /// The number of entries. Never above `max_size` once writers are quiet;
    /// under concurrent inserts of new keys it may pass it by at most one per
    /// inserter, for the moment between adding a key and removing the entry
    /// its slot claim displaced.
    pub fn len(&self) -> usize {
        self.inner.entries.load(Ordering::Acquire)
    }

    /// Whether the cache holds no entry.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
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

/// How [`Inner::settle`] left a placed entry.
enum Settled {
    /// Removed before it was settled.
    Gone,
    /// The only entry of its hash in its slot when it looked.
    Alone,
    /// Settled in a slot another entry of its hash was settled in too.
    Shared,
}

/// One entry's claim of a ring slot, judged against the map.
struct Placement<'a, K, V, S> {
    inner: &'a Inner<K, V, S>,
    /// The hash of the entry's key.
    hash: u64,
    ticket: u32,
}

impl<K, V, S> Claimant for Placement<'_, K, V, S>
where
    K: Hash + Eq + Clone,
    S: BuildHasher + Clone,
{
    fn judge(&mut self, hash: u64, index: usize) -> Occupant {
        let index = index as u32;
        self.inner
            .with_entry(
                hash,
                |e| e.slot() == Some(index) || e.is_reserving(),
                |_, entry| {
                    // An entry of this hash taking a slot may be taking this
                    // one (the hand does not know which): keep it, for a
                    // moment, as a referenced owner is kept.
                    if entry.is_reserving() || entry.take_referenced() {
                        Occupant::Keep
                    } else {
                        Occupant::Evict
                    }
                },
            )
            .unwrap_or(Occupant::Free) // an orphan: removed, or moved by a resize
    }

    fn reserve(&mut self, _: usize) -> bool {
        let ticket = self.ticket;
        self.inner
            .with_entry(self.hash, |e| e.awaits(ticket), |_, e| e.reserve(ticket))
            .unwrap_or(false)
    }

    fn unreserve(&mut self, _: usize) {
        let ticket = self.ticket;
        self.inner.with_entry(
            self.hash,
            |e| e.reserving_for(ticket),
            |_, e| e.unreserve(ticket),
        );
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

    pub(crate) fn next_version(&self) -> u64 {
        self.versions.fetch_add(1, Ordering::Relaxed)
    }

    /// The hash the map files `key` under.
    pub(crate) fn hash<Q: Hash + ?Sized>(&self, key: &Q) -> u64 {
        self.map.hasher().hash_one(key)
    }

    /// Runs `f` on the entry filed under `hash` that `which` picks, if any,
    /// under its shard's read lock. Looks entries up by hash alone, for the
    /// ring, which names entries by hash; `which` tells apart the entries
    /// that share one.
    fn with_entry<R>(
        &self,
        hash: u64,
        which: impl FnMut(&Entry<V>) -> bool,
        f: impl FnOnce(&K, &Entry<V>) -> R,
    ) -> Option<R> {
        let shard = &self.map.shards()[self.map.determine_shard(hash as usize)];
        let table = shard.read();
        let (key, entry) = table.get(hash, self.nth_filed_under(hash, which, 1))?;
        Some(f(key, entry.get()))
    }

    /// A table probe's `eq` for the `nth` (from 1, in probe order) of the
    /// entries filed under `hash` that `which` picks.
    fn nth_filed_under(
        &self,
        hash: u64,
        mut which: impl FnMut(&Entry<V>) -> bool,
        nth: usize,
    ) -> impl FnMut(&(K, SharedValue<Entry<V>>)) -> bool {
        let mut picked = 0;
        // The table compares only 7 bits of the hash before asking `eq`:
        // the full hash tells entries of other hashes apart.
        move |(k, e)| {
            if which(e.get()) && self.hash(k) == hash {
                picked += 1;
            }
            picked == nth
        }
    }

    /// Whether an entry filed under `hash` is in ring slot `slot`, or may be
    /// taking it.
    fn owns(&self, hash: u64, slot: u32) -> bool {
        self.with_entry(
            hash,
            |e| e.slot() == Some(slot) || e.is_reserving(),
            |_, _| (),
        )
        .is_some()
    }

    /// Empties ring slot `slot`, which the entry of `hash` just removed held,
    /// unless another entry of that hash is in it or may be taking it.
    fn release(&self, ring: &Ring, slot: u32, hash: u64) {
        if ring.release_if(slot as usize, hash, || !self.owns(hash, slot)) {
            // An entry of this hash may have settled into the slot between
            // the look and the release, and is outside the ring now: it goes.
            // (Had it settled after, it saw the slot empty and went itself;
            // see `keep_one_in_slot`.)
            self.remove_at(hash, |e| e.slot() == Some(slot), Counter::Evictions);
        }
    }

    /// Removes the entry filed under `hash` that `which` picks, keeping the
    /// entry count and counting the removal as `reason`.
    fn remove_at(&self, hash: u64, which: impl FnMut(&Entry<V>) -> bool, reason: Counter) {
        self.remove_nth_at(hash, which, 1, reason);
    }

    /// Removes the `nth` (from 1, in probe order) of the entries filed under
    /// `hash` that `which` picks, if there are that many, keeping the entry
    /// count and counting the removal as `reason`.
    fn remove_nth_at(
        &self,
        hash: u64,
        which: impl FnMut(&Entry<V>) -> bool,
        nth: usize,
        reason: Counter,
    ) {
        let shard = &self.map.shards()[self.map.determine_shard(hash as usize)];
        let removed = shard
            .write()
            .remove_entry(hash, self.nth_filed_under(hash, which, nth));
        if removed.is_some() {
            self.entries.fetch_sub(1, Ordering::AcqRel);
            self.counters.incr(reason);
        }
        drop(removed); // outside the shard lock: dropping a value may be slow
    }

    fn ring_shared(&self) -> RwLockReadGuard<'_, Ring> {
        // A poisoned lock only means another thread panicked mid-operation;
        // every ring operation leaves the slots consistent, so carry on.
        self.ring.read().unwrap_or_else(|e| e.into_inner())
    }

    fn ring_exclusive(&self) -> RwLockWriteGuard<'_, Ring> {
        self.ring.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Writes `value` for `key`: over a present entry if `overwrite`, else
    /// only if the key is absent. A new key is then given a ring slot.
    pub(crate) fn write(&self, key: K, value: V, now: Nanos, overwrite: bool) {
        let version = self.next_version();
        let hash = match self.map.entry(key) {
            MapEntry::Occupied(mut present) => {
                if overwrite {
                    present.get().touch(); // a write by the user is a use
                    let old = present.get_mut().overwrite(value, now, version);
                    drop(present);
                    drop(old); // outside the shard lock: dropping a value may be slow
                    self.counters.incr(Counter::Updates);
                }
                return;
            }
            MapEntry::Vacant(absent) => {
                let hash = self.hash(absent.key());
                let added = absent.insert(Entry::new(value, now, version));
                self.entries.fetch_add(1, Ordering::AcqRel);
                drop(added);
                hash
            }
        };
        self.counters.incr(Counter::Inserts);
        self.place(hash, Entry::<V>::ticket(version));
    }

    /// Gives the newly added entry with `ticket`, filed under `hash`, a ring
    /// slot, evicting the slot's owner if the ring is full. Until it is
    /// placed, the entry is one over `max_size`, which bounds the excess by
    /// the number of inserters.
    fn place(&self, hash: u64, ticket: u32) {
        let ring = self.ring_shared();
        if ring.len() == 0 {
            // Disabled since the entry was added: it goes too.
            self.remove_at(hash, |e| e.awaits(ticket), Counter::Evictions);
            return;
        }
        let mut placement = Placement {
            inner: self,
            hash,
            ticket,
        };
        let Some(taken) = ring.claim(hash, &mut placement) else {
            return; // removed before it had a slot
        };
        self.finish_placement(&ring, hash, ticket, taken);
    }

    /// Evicts the owner of the slot a claim took and settles the placed
    /// entry in it.
    fn finish_placement(&self, ring: &Ring, hash: u64, ticket: u32, taken: Taken) {
        let index = taken.index as u32;
        // Tests widen the windows between a claim's steps, where other
        // threads' claims and releases interleave.
        #[cfg(test)]
        std::thread::yield_now();
        if taken.may_be_owned() {
            // The owner the hand judged, or whoever held the slot at the swap;
            // not the entry being placed, which is only reserving it so far.
            self.remove_at(
                taken.previous,
                |e| e.slot() == Some(index),
                Counter::Evictions,
            );
        }
        let settled = self.settle(hash, ticket, index);
        #[cfg(test)]
        std::thread::yield_now();
        self.keep_one_in_slot(ring, hash, index, settled);
    }

    /// Acts on how `settle` left the entry just placed in `slot`, so that no
    /// entry is left outside the ring and no two entries share the slot.
    fn keep_one_in_slot(&self, ring: &Ring, hash: u64, slot: u32, settled: Settled) {
        let in_slot = |e: &Entry<V>| e.slot() == Some(slot);
        match settled {
            // Removed as the slot was taken: the remover may have missed it.
            Settled::Gone => return self.release(ring, slot, hash),
            Settled::Alone => {}
            // Two entries of our hash settled in the slot: two claims swapped
            // it to our hash, one of them against an owner it judged before
            // the slot went back to that hash. The later of the two to settle
            // sees the other (settling and these looks are sequentially
            // consistent), and both may. One goes, chosen under the shard's
            // write lock and only while two remain: two settlers that saw
            // each other do not both go, and a settler whose partner was
            // invalidated meanwhile stays.
            Settled::Shared => self.remove_nth_at(hash, in_slot, 2, Counter::Evictions),
        }
        if ring.hash_at(slot as usize) != hash {
            // The slot left our hash since our swap: another claim swapped
            // it, having judged the slot's previous owner, of our hash (a key
            // placed there again meanwhile, or another key of the same hash),
            // or a release emptied it; and it looked for that owner before
            // ours was settled or before the removal above. The entries of
            // our hash listed in the slot are outside the ring, and one is
            // left at most: it goes (ours, or the one it displaced, which is
            // the same to the ring). Had the other side looked later, it
            // removed it itself. Settling, removing, swapping and both looks
            // are sequentially consistent, so one side sees the other.
            self.remove_at(hash, in_slot, Counter::Evictions);
        }
    }

    /// Settles the entry `ticket` was issued for into ring slot `slot`, and
    /// says whether another entry of `hash` is settled there too.
    fn settle(&self, hash: u64, ticket: u32, slot: u32) -> Settled {
        let shard = &self.map.shards()[self.map.determine_shard(hash as usize)];
        let table = shard.read();
        let ours = self.nth_filed_under(hash, |e| e.reserving_for(ticket), 1);
        match table.get(hash, ours) {
            Some((_, entry)) if entry.get().settle(ticket, slot) => {}
            _ => return Settled::Gone,
        }
        let second_in_slot = self.nth_filed_under(hash, |e| e.slot() == Some(slot), 2);
        if table.get(hash, second_in_slot).is_some() {
            Settled::Shared
        } else {
            Settled::Alone
        }
    }

    /// Removes `key` if its entry passes `still`, keeping the entry count and
    /// counting the removal as `reason`.
    fn remove_where<Q>(
        &self,
        key: &Q,
        still: impl FnOnce(&Entry<V>) -> bool,
        reason: Counter,
    ) -> Option<(K, Entry<V>)>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let removed = self.map.remove_if(key, |_, entry| still(entry))?;
        self.entries.fetch_sub(1, Ordering::AcqRel);
        self.counters.incr(reason);
        Some(removed)
    }

    /// Empties the map and the ring.
    fn clear(&self) {
        let mut ring = self.ring_exclusive();
        let mut removed = 0;
        self.map.retain(|_, _| {
            removed += 1;
            false
        });
        self.entries.fetch_sub(removed as usize, Ordering::AcqRel);
        ring.reset();
        self.counters.add(Counter::Invalidations, removed);
    }

    /// A ring of `max_size` slots holding as many of the present entries as
    /// fit, the rest evicted by the same second-chance rule as a claim.
    fn resize(&self, max_size: usize) -> Result<(), ConfigError> {
        let mut ring = self.ring_exclusive();
        if max_size == ring.len() {
            return Ok(());
        }
        // Each owner with its key: entries are moved by key, as two entries
        // may share a hash.
        let mut owners: VecDeque<(usize, u64, K)> = ring
            .occupants_from_hand()
            .into_iter()
            .filter_map(|(slot, hash)| {
                let key = self.with_entry(
                    hash,
                    |e| e.slot() == Some(slot as u32),
                    |key, _| key.clone(),
                )?;
                Some((slot, hash, key))
            })
            .collect();
        let mut victims = Vec::new();
        while owners.len() > max_size {
            let (slot, hash, key) = owners.pop_front().expect("longer than max_size");
            if self.map.get(&key).is_some_and(|e| e.take_referenced()) {
                owners.push_back((slot, hash, key));
            } else {
                victims.push((slot, hash));
            }
        }
        let resized = Ring::with_hashes(max_size, owners.iter().map(|(_, hash, _)| *hash))
            .ok_or(ConfigError::OutOfMemory { max_size })?;
        for (slot, hash) in victims {
            let slot = Some(slot as u32);
            self.remove_at(hash, |e| e.slot() == slot, Counter::Evictions);
        }
        for (slot, (_, _, key)) in owners.iter().enumerate() {
            if let Some(entry) = self.map.get(key) {
                entry.move_to(slot as u32);
            }
        }
        *ring = resized;
        self.max_size.store(max_size, Ordering::Relaxed);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    //! The ring's invariant, checked from inside: once writers are quiet,
    //! every entry is placed in a ring slot of its own that holds its hash.
    //! (An entry outside the ring is never evicted, so the cache would
    //! outgrow `max_size` for good.)

    use super::*;
    use crate::hashing::tests::Identity;
    use std::collections::HashSet;
    use std::hash::{BuildHasherDefault, Hasher};
    use std::sync::Barrier;

    /// Entries outside the ring: not placed, placed in a slot that holds
    /// another hash, or placed in a slot another entry is placed in too.
    fn outside_the_ring<K, V, S>(cache: &Cache<K, V, S>) -> usize
    where
        K: Hash + Eq + Clone,
        S: BuildHasher + Clone,
    {
        let inner = &*cache.inner;
        let ring = inner.ring_exclusive();
        let mut slots = HashSet::new();
        inner
            .map
            .iter()
            .filter(|entry| match entry.value().slot() {
                Some(slot) => {
                    let slot = slot as usize;
                    !slots.insert(slot)
                        || slot >= ring.len()
                        || ring.hash_at(slot) != inner.hash(entry.key())
                }
                None => true,
            })
            .count()
    }

    /// Four threads insert, read and invalidate 64 keys in a cache of
    /// four, so claims, evictions and releases race on every slot.
    fn race<S: BuildHasher + Clone + Send + Sync + 'static>(hasher: S) -> Cache<u64, u64, S> {
        const THREADS: u64 = 4;
        let cache: Cache<u64, u64, S> = Cache::builder()
            .hasher(hasher)
            .max_size(4)
            .ttl(None)
            .build()
            .unwrap();
        let start = Barrier::new(THREADS as usize);
        std::thread::scope(|s| {
            for thread in 0..THREADS {
                let (cache, start) = (&cache, &start);
                s.spawn(move || {
                    let mut state = thread.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
                    start.wait();
                    for _ in 0..20_000 {
                        // xorshift: a cheap, seeded sequence per thread.
                        state ^= state << 13;
                        state ^= state >> 7;
                        state ^= state << 17;
                        let key = (state % 64) << 8;
                        match (state >> 8) % 10 {
                            0..=4 => cache.insert(key, key),
                            5..=7 => {
                                cache.get(&key);
                            }
                            _ => {
                                cache.invalidate(&key);
                            }
                        }
                    }
                });
            }
        });
        cache
    }

    fn assert_all_in_the_ring<S: BuildHasher + Clone + Send + Sync + 'static>(hasher: S) {
        for round in 0..10 {
            let cache = race(hasher.clone());
            assert_eq!(outside_the_ring(&cache), 0, "round {round}");
            assert!(cache.len() <= 4, "round {round}: len {}", cache.len());
        }
    }

    #[test]
    fn every_entry_stays_in_the_ring_with_the_default_hasher() {
        assert_all_in_the_ring(crate::DefaultHasher::default());
    }

    #[test]
    fn every_entry_stays_in_the_ring_when_hashes_share_their_tag() {
        // Keys are multiples of 256 below 2^14: hashed to themselves, they
        // share the top 7 bits (the tag the map's table compares first),
        // and key 0 hashes to 0, the ring's mark for an empty slot.
        assert_all_in_the_ring(BuildHasherDefault::<Identity>::default());
    }

    /// One hash for every key.
    #[derive(Default)]
    struct OneHash;

    impl Hasher for OneHash {
        fn finish(&self) -> u64 {
            0x5eed
        }
        fn write(&mut self, _: &[u8]) {}
    }

    #[test]
    fn every_entry_stays_in_the_ring_when_keys_share_one_hash() {
        assert_all_in_the_ring(BuildHasherDefault::<OneHash>::default());
    }

    /// Adds `key` to the map as `Inner::write` does, without placing it;
    /// returns its ticket.
    fn add_unplaced<S: BuildHasher + Clone>(inner: &Inner<u64, u64, S>, key: u64) -> u32 {
        let version = inner.next_version();
        assert!(inner.map.insert(key, Entry::new(key, 0, version)).is_none());
        inner.entries.fetch_add(1, Ordering::AcqRel);
        Entry::<u64>::ticket(version)
    }

    /// Two claims of one slot, for keys 1 (`late`) and 0 (`early`) of one
    /// hash, in a cache of one slot, each with its ticket and taken slot.
    struct SameHashClaims {
        cache: Cache<u64, u64, BuildHasherDefault<OneHash>>,
        hash: u64,
        late: (u32, Taken),
        early: (u32, Taken),
    }

    impl SameHashClaims {
        /// Settles the late entry, then the early one, which sees the late
        /// one in the slot; returns the cache, the hash and the slot.
        fn settle_both(self) -> (Cache<u64, u64, BuildHasherDefault<OneHash>>, u64, u32) {
            let inner = &*self.cache.inner;
            let slot = self.late.1.index as u32;
            let late = inner.settle(self.hash, self.late.0, slot);
            assert!(matches!(late, Settled::Alone));
            let early = inner.settle(self.hash, self.early.0, slot);
            assert!(matches!(early, Settled::Shared));
            (self.cache, self.hash, slot)
        }
    }

    /// Plays the claims of two keys of one hash for a slot that goes back to
    /// that hash between a claimer's look and its swap: a claim for key 1
    /// judges key 0's slot; key 0 goes and comes back, its claim taking the
    /// slot off the free list; then key 1's swap finds the hash it judged
    /// and succeeds. Both claims hold slot 0, and neither is settled yet.
    fn same_hash_claims() -> SameHashClaims {
        let cache: Cache<u64, u64, BuildHasherDefault<OneHash>> = Cache::builder()
            .hasher(Default::default())
            .max_size(1)
            .ttl(None)
            .build()
            .unwrap();
        let inner = &*cache.inner;
        let hash = inner.hash(&0u64);
        cache.insert(0, 0);
        let late = add_unplaced(inner, 1);
        let mut late_claim = Placement {
            inner,
            hash,
            ticket: late,
        };
        assert!(matches!(late_claim.judge(hash, 0), Occupant::Evict));
        assert!(cache.invalidate(&0));
        let early = add_unplaced(inner, 0);
        let ring = inner.ring_shared();
        let mut early_claim = Placement {
            inner,
            hash,
            ticket: early,
        };
        let early_taken = ring.claim(hash, &mut early_claim).unwrap();
        assert_eq!(early_taken.index, 0);
        assert!(
            !early_taken.may_be_owned(),
            "taken off the free list, empty"
        );
        let late_taken = ring.take(0, hash, hash, &mut late_claim).unwrap().unwrap();
        drop(ring);
        SameHashClaims {
            cache,
            hash,
            late: (late, late_taken),
            early: (early, early_taken),
        }
    }

    /// Both entries settle in the slot, one after the other: the later sees
    /// the earlier, and one of them goes.
    #[test]
    fn a_slot_swapped_back_to_the_same_hash_keeps_one_entry() {
        let SameHashClaims {
            cache,
            hash,
            late,
            early,
        } = same_hash_claims();
        let inner = &*cache.inner;
        let ring = inner.ring_shared();
        inner.finish_placement(&ring, hash, late.0, late.1);
        inner.finish_placement(&ring, hash, early.0, early.1);
        drop(ring);
        assert_eq!(cache.len(), 1);
        assert_eq!(outside_the_ring(&cache), 0);
        assert_eq!(cache.metrics().evictions, 1);
    }

    /// Both entries settle, then each acts as a settler that saw the other
    /// (the late settler's look played after the early settling, as a
    /// thread may interleave it): only one of them goes.
    #[test]
    fn two_settlers_that_each_see_the_other_keep_one_entry() {
        let (cache, hash, slot) = same_hash_claims().settle_both();
        let inner = &*cache.inner;
        let ring = inner.ring_shared();
        // The late settler's look, had it come after the early settling.
        inner.keep_one_in_slot(&ring, hash, slot, Settled::Shared);
        inner.keep_one_in_slot(&ring, hash, slot, Settled::Shared);
        drop(ring);
        assert_eq!(cache.len(), 1);
        assert_eq!(outside_the_ring(&cache), 0);
        assert_eq!(cache.metrics().evictions, 1);
    }

    /// A settler that saw another entry in its slot, which was invalidated
    /// before the settler acted, keeps its entry.
    #[test]
    fn a_settler_whose_partner_was_invalidated_stays() {
        let (cache, hash, slot) = same_hash_claims().settle_both();
        let inner = &*cache.inner;
        let ring = inner.ring_shared();
        drop(ring); // invalidating takes the ring's lock
        assert!(cache.invalidate(&1));
        let ring = inner.ring_shared();
        inner.keep_one_in_slot(&ring, hash, slot, Settled::Shared);
        drop(ring);
        assert_eq!(cache.get(&0), Some(0));
        assert_eq!(outside_the_ring(&cache), 0);
        assert_eq!(cache.metrics().evictions, 0);
    }

    /// A settler that saw another entry in its slot, whose slot then left
    /// their hash before it acted, removes both: neither is in the ring.
    #[test]
    fn a_settler_whose_slot_left_its_hash_removes_what_is_outside() {
        let (cache, hash, slot) = same_hash_claims().settle_both();
        let inner = &*cache.inner;
        let ring = inner.ring_shared();
        // The slot leaves the hash after the early settler's look.
        assert!(ring.release_if(slot as usize, hash, || true));
        inner.keep_one_in_slot(&ring, hash, slot, Settled::Shared);
        drop(ring);
        assert_eq!(cache.len(), 0);
        assert_eq!(outside_the_ring(&cache), 0);
    }
}
