//! [`Inner`]: what every handle of one cache shares, and the operations
//! that change entries, count what happened and report what left.
//!
//! Each operation here is: user code that must run first (hashing happens
//! in the store; weighing here), one store call under one shard lock, then,
//! with every lock released, the counting and the report of removed entries
//! to the listener, or their drop.

use std::borrow::Borrow;
use std::hash::{BuildHasher, Hash};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use arc_swap::{ArcSwap, ArcSwapOption};

use crate::changes::{Change, Changes, Share};
use crate::clock::{Clock, Nanos, duration_to_nanos};
use crate::fetch::{ErasedFetcher, InFlight};
use crate::freshness::{Freshness, FreshnessFn, NEVER, Own, Terms};
use crate::gone::GoneKeys;
use crate::metrics::{Counter, Counters};
use crate::refresh::requests::Refresher;
use crate::removal::{Listener, RemovalCause, Weigher};
use crate::settings::{ConfigChange, ConfigError, Settings};
use crate::store::{
    Climber, Entry, Node, Nudge, Refusal, Removed, Store, Taken, Write, Written, shard_count,
    user_write,
};
use crate::throttle::Throttle;

/// What a read of a stale value leaves to do once it let the value go.
struct StaleRead {
    /// Its refresh to ask for, if this reader claimed it.
    nudge: Option<Nudge>,
    /// How far past its TTL the value was.
    #[cfg(feature = "metrics")]
    past_ttl: Nanos,
}

/// What every `get` reads besides the store, alone on its cache line(s):
/// written only by `configure` and the refresher's clock ticks.
#[repr(align(128))]
pub(crate) struct ReadPath {
    /// The TTL in nanoseconds, 0 for none: a copy of the settings' TTL.
    pub(crate) ttl: AtomicU64,
    /// The settings' `max_stale` in nanoseconds, `u64::MAX` for none.
    pub(crate) max_stale: AtomicU64,
    /// Set for good once a value may have a TTL of its own (the cache has
    /// a freshness function, or `insert_with_ttl` was called): values may
    /// go stale with no cache-wide TTL.
    pub(crate) own_ttls: AtomicBool,
    /// The refresh jitter, in 1/65,536ths of a TTL ([`Terms::jitter`]):
    /// set at build and never changed.
    pub(crate) jitter: u32,
    pub(crate) clock: Clock,
}

/// The user's code a cache calls on its values, besides the fetcher: each
/// given to the builder, or not.
pub(crate) struct Hooks<K, V> {
    pub(crate) weigher: Option<Weigher<K, V>>,
    pub(crate) freshness: Option<FreshnessFn<K, V>>,
    pub(crate) listener: Option<Listener<K, V>>,
    /// How logs name a key: its `Debug` form, if the user asked for it.
    pub(crate) key_debug: Option<fn(&K) -> String>,
}

impl ReadPath {
    /// The cache's terms now: what a value with none of its own follows.
    #[inline]
    pub(crate) fn terms(&self) -> Terms {
        let ttl = match self.ttl.load(Ordering::Relaxed) {
            0 => NEVER,
            ttl => ttl,
        };
        Terms::new(ttl, self.max_stale.load(Ordering::Relaxed), self.jitter)
    }

    /// Whether any value may go stale: the cache has a TTL, or values may
    /// have their own. `SeqCst` for the keeper's restart (`crate::upkeep`).
    pub(crate) fn ages(&self) -> bool {
        self.ttl.load(Ordering::SeqCst) != 0 || self.own_ttls.load(Ordering::SeqCst)
    }
}

pub(crate) struct Inner<K, V, S> {
    pub(crate) store: Store<K, V, S>,
    pub(crate) read: ReadPath,
    /// The live settings, swapped whole by `configure`.
    pub(crate) settings: ArcSwap<Settings>,
    /// Serializes `configure`, so two changes do not interleave their steps.
    configuring: Mutex<()>,
    pub(crate) counters: Counters,
    pub(crate) fetcher: ArcSwapOption<ErasedFetcher<K, V>>,
    weigher: Option<Weigher<K, V>>,
    /// Decides each written value's freshness, if the user gave one.
    freshness: Option<FreshnessFn<K, V>>,
    listener: Option<Listener<K, V>>,
    /// How logs name a key: its `Debug` form, if the user asked for it.
    key_debug: Option<fn(&K) -> String>,
    /// The builder's name for the cache, if any.
    pub(crate) name: Option<Arc<str>>,
    /// Its handles on the `metrics` facade.
    #[cfg(feature = "metrics")]
    pub(crate) export: crate::export::Export,
    pub(crate) failure_logs: Throttle,
    /// The fetches under way, async and blocking, and their fences.
    pub(crate) in_flight: InFlight<K, V, S>,
    pub(crate) refresher: Refresher,
    /// Tells an attached fleet link of the user's changes.
    pub(crate) changes: Changes<K, V>,
    /// The keys lately answered `Gone`, with `negative_ttl` set.
    pub(crate) gone: Option<GoneKeys<K, S>>,
    /// Sets the shards' probation share by the cache's hit ratio; taken
    /// with `try_lock` by the writer a shard asks to look.
    climber: Mutex<Climber>,
}

impl<K, V, S> Inner<K, V, S>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
    S: BuildHasher + Clone + Send + Sync + 'static,
{
    pub(crate) fn new(
        settings: Settings,
        hasher: S,
        fetcher: Option<ErasedFetcher<K, V>>,
        hooks: Hooks<K, V>,
        name: Option<Arc<str>>,
    ) -> Self {
        let Hooks {
            weigher,
            freshness,
            listener,
            key_debug,
        } = hooks;
        let shards = shard_count(settings.max_size as u64);
        let read = ReadPath {
            ttl: AtomicU64::new(ttl_nanos(&settings)),
            max_stale: AtomicU64::new(max_stale_nanos(&settings)),
            own_ttls: AtomicBool::new(freshness.is_some()),
            jitter: settings.refresh_jitter,
            clock: Clock::new(),
        };
        let store = Store::new(
            settings.capacity(),
            weigher.is_some(),
            shards,
            hasher.clone(),
            read.terms(),
        );
        // Samples of requests are counted in entries, also with a weigher
        // (whose `max_size` is the entries expected).
        let entries = settings.max_size as u64;
        let gone = settings
            .negative_ttl
            .map(|ttl| GoneKeys::new(ttl, settings.capacity(), shards, hasher.clone()));
        Self {
            store,
            read,
            settings: ArcSwap::from_pointee(settings),
            configuring: Mutex::new(()),
            counters: Counters::new(),
            fetcher: ArcSwapOption::new(fetcher.map(Arc::new)),
            weigher,
            freshness,
            listener,
            key_debug,
            #[cfg(feature = "metrics")]
            export: crate::export::Export::new(name.as_deref()),
            name,
            failure_logs: Throttle::new(),
            in_flight: InFlight::new(hasher),
            refresher: Refresher::new(),
            changes: Changes::new(),
            gone,
            climber: Mutex::new(Climber::new(entries)),
        }
    }

    /// Whether the cache stores nothing (`max_size` or `max_weight` 0).
    pub(crate) fn is_disabled(&self) -> bool {
        self.store.capacity() == 0
    }

    #[inline]
    pub(crate) fn ttl_nanos(&self) -> Nanos {
        self.read.ttl.load(Ordering::Relaxed)
    }

    /// [`ReadPath::ages`].
    pub(crate) fn ages(&self) -> bool {
        self.read.ages()
    }

    /// [`ReadPath::terms`].
    #[inline]
    pub(crate) fn terms(&self) -> Terms {
        self.read.terms()
    }

    /// The freshness a refresh's `value` is installed with: the freshness
    /// function's, or `None` to keep the entry's own (or the cache's).
    pub(crate) fn refreshed_own(&self, key: &K, value: &V) -> Option<Own> {
        self.freshness.as_ref().map(|f| f(key, value).own())
    }

    /// The freshness an `Unchanged` answer renews `key`'s cached value
    /// with: the freshness function's for it, or `None` to keep the
    /// entry's own (or the cache's). The cache is read only when there is
    /// a function to run on the value.
    pub(crate) fn renewed_own(&self, key: &K) -> Option<Own> {
        let decide = self.freshness.as_ref()?;
        self.store.read(key, |n| decide(key, &n.value).own())
    }

    /// The freshness `value` is written with: `given` (by
    /// `insert_with_ttl`), else the freshness function's, else the cache's.
    pub(crate) fn own_of(&self, key: &K, value: &V, given: Option<Freshness>) -> Own {
        given
            .or_else(|| self.freshness.as_ref().map(|f| f(key, value)))
            .map_or(Own::CACHE, Freshness::own)
    }

    /// The value of `key`, counting a hit (and a stale hit) or a miss.
    #[inline]
    pub(crate) fn get<Q>(self: &Arc<Self>, key: &Q) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.get_with(key, V::clone)
    }

    /// `read` run on the value of `key` where it lies, counting a hit (and
    /// a stale hit) or a miss, and asking for the refresh of a stale value.
    #[inline]
    pub(crate) fn get_with<Q, R>(self: &Arc<Self>, key: &Q, read: impl FnOnce(&V) -> R) -> Option<R>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let cache = self.terms();
        let found = self.store.read_in_shard(key, |node, shard| {
            node.meta.touch();
            // Judged first by the floor the jitter's draw cannot go below,
            // so a hit on a value that young draws nothing (measured: the
            // draw's branch on every hit cost a hot-prompt hit 15-20 %).
            let terms = node.own_terms(cache);
            if terms.ttl == NEVER && !node.meta.is_marked_stale() {
                return (Some(read(&node.value)), None);
            }
            let now = self.read.clock.recent();
            if !node.meta.is_stale(now, terms.floor) {
                return (Some(read(&node.value)), None);
            }
            self.judge_old(node, shard, now, cache, read)
        });
        let found = found.map(|(value, stale)| {
            if let Some(nudge) = stale.as_ref().and_then(|s| s.nudge) {
                self.refresher.nudge(nudge);
            }
            (value, stale)
        });
        match found {
            Some((Some(value), stale)) => {
                if let Some(stale) = stale {
                    self.stale_hit(stale);
                }
                self.counters.incr(Counter::Hits);
                Some(value)
            }
            Some((None, _)) => {
                // Too stale to serve: a miss, and counted as expired.
                self.counters.incr(Counter::Expired);
                self.counters.incr(Counter::Misses);
                None
            }
            None => {
                // A disabled cache is empty, so only a miss asks whether to count.
                if !self.is_disabled() {
                    self.counters.incr(Counter::Misses);
                }
                None
            }
        }
    }

    /// A hit on `node` (of shard `shard`) older than its terms' floor at
    /// `now`: judged with its draw of the jitter, `read` on the value
    /// unless it is past its bound, and what a stale read leaves to do.
    #[inline]
    fn judge_old<R>(
        &self,
        node: &Node<K, V>,
        shard: usize,
        now: Nanos,
        cache: Terms,
        read: impl FnOnce(&V) -> R,
    ) -> (Option<R>, Option<StaleRead>) {
        let terms = node.terms(cache);
        if !node.meta.is_stale(now, terms.ttl) {
            return (Some(read(&node.value)), None);
        }
        // Only the first reader of a stale value asks for its refresh;
        // the request is sent once the value is let go.
        let nudge = (self.refresher.nudging.load(Ordering::Relaxed)
            && node.meta.try_nudge(now, terms.ttl))
        .then(|| Nudge::of(node, shard));
        let value =
            (!node.meta.is_expired(now, terms.ttl, terms.max_stale)).then(|| read(&node.value));
        let stale = StaleRead {
            nudge,
            #[cfg(feature = "metrics")]
            past_ttl: node.meta.age(now).saturating_sub(terms.ttl),
        };
        (value, Some(stale))
    }

    /// Reports counters and gauges to the `metrics` facade.
    #[cfg(feature = "metrics")]
    pub(crate) fn report_metrics(&self, refresher: crate::refresh::RefresherState) {
        let metrics = self.counters.snapshot();
        self.export
            .report(&metrics, self.store.len(), self.store.weight(), &refresher);
    }

    /// Counts a hit on a stale value (and, with feature `metrics`, how stale
    /// it was). Out of line, so that a fresh hit's code is the same with the
    /// feature or without.
    #[cold]
    #[inline(never)]
    fn stale_hit(&self, _stale: StaleRead) {
        self.counters.incr(Counter::StaleHits);
        #[cfg(feature = "metrics")]
        self.export.stale_served(_stale.past_ttl as f64 / 1e9);
    }

    /// Whether `node`'s value may be served: not past `ttl + max_stale`,
    /// its own or the cache's.
    pub(crate) fn is_servable(&self, node: &Node<K, V>) -> bool {
        let terms = node.terms(self.terms());
        let now = self.read.clock.recent();
        !node.meta.is_stale(now, terms.ttl)
            || !node.meta.is_expired(now, terms.ttl, terms.max_stale)
    }

    /// The climber's look, asked for by a shard every few hundred new
    /// entries: the cache's hits and requests so far, and the probation
    /// share it sets for every shard when a sample ends. Skipped if another
    /// writer is looking.
    #[cold]
    fn climb(&self) {
        let Ok(mut climber) = self.climber.try_lock() else {
            return;
        };
        // Raw sums, which `reset_metrics` does not move: the two counters
        // it needs, not all of them.
        let hits = self.counters.total(Counter::Hits);
        let misses = self.counters.total(Counter::Misses);
        if let Some(permille) = climber.observe(hits, hits.wrapping_add(misses)) {
            self.store.set_small_share(permille);
        }
    }

    /// Whether a fetch of `key` answered `Gone` less than `negative_ttl`
    /// ago (and nothing wrote or removed it since); counted as a negative
    /// hit. For a load's miss only: never on the hit path.
    pub(crate) fn known_gone(&self, key: &K) -> bool {
        let Some(gone) = &self.gone else {
            return false;
        };
        let known = gone.answers(key, self.read.clock.now());
        if known {
            self.counters.negative_hit();
        }
        known
    }

    /// How logs name `key`: its `Debug` form with `log_keys`, else its hash.
    pub(crate) fn describe(&self, key: &K) -> String {
        match self.key_debug {
            Some(debug) => crate::excerpt::excerpt(debug(key)),
            None => format!("#{:08x}", self.store.fingerprint_of(key)),
        }
    }

    /// The weight of an entry: the weigher's (at least 1), or 1.
    pub(crate) fn weigh(&self, key: &K, value: &V) -> u64 {
        self.weigher
            .as_ref()
            .map_or(1, |weigh| weigh(key, value).max(1))
    }

    /// The time a write of a value with freshness `own` is stamped with:
    /// so that it is never judged stale before its TTL ([`Clock::stamp`]);
    /// with no TTL, the last tick (no clock read), so an entry written then
    /// counts, should a TTL be set later, as written at the last tick
    /// before it.
    #[inline]
    fn write_stamp(&self, own: Own, cache: Terms) -> Nanos {
        if own.ttl(cache.ttl) == NEVER {
            self.read.clock.last_tick()
        } else {
            self.read.clock.stamp()
        }
    }

    /// Writes `value` for `key` as `how` says, marked stale whatever its
    /// age if `stale` (and the cache ages at all), with the freshness
    /// `given` (else the freshness function's, or the cache's), stamped by
    /// [`Inner::write_stamp`], then counts and reports. Returns what the
    /// store did, with a refused key and value already dropped or reported.
    pub(crate) fn write_as(
        &self,
        key: K,
        value: V,
        how: Write,
        marks: (bool, Option<Freshness>),
    ) -> Written<(), ()> {
        self.write_entry(key, value, how, marks, None)
    }

    /// [`Inner::write_as`] of a fetch's value, refused if `fence` is set when
    /// the key's shard lock is taken.
    pub(crate) fn write_fenced(
        &self,
        key: K,
        value: V,
        how: Write,
        fence: &AtomicBool,
    ) -> Written<(), ()> {
        self.write_entry(key, value, how, (false, None), Some(fence))
    }

    fn write_entry(
        &self,
        key: K,
        value: V,
        how: Write,
        (stale, given): (bool, Option<Freshness>),
        fence: Option<&AtomicBool>,
    ) -> Written<(), ()> {
        let weight = self.weigh(&key, &value);
        let own = self.own_of(&key, &value, given);
        let now = self.write_stamp(own, self.terms());
        // The key, to drop its record after the write, only while records
        // exist (`crate::gone`: a record never outlives a write of its key).
        let gone = self.gone.as_ref();
        let recorded = gone.filter(|g| g.any()).map(|_| key.clone());
        let mut removed = Removed::new();
        let written = self.store.write(
            Entry {
                key,
                value,
                weight,
                now,
                // A cache that never ages keeps no marks.
                stale: stale && self.ages(),
                own,
            },
            how,
            fence,
            &mut removed,
        );
        if let Some(gone) = gone {
            gone.written(recorded.as_ref());
        }
        if self.store.take_climb() {
            self.climb();
        }
        let replaced_one = removed.count(RemovalCause::Replaced) > 0;
        let written = match written {
            Written::Added => {
                self.counters.incr(Counter::Inserts);
                Written::Added
            }
            Written::Replaced => {
                self.counters.incr(Counter::Updates);
                Written::Replaced
            }
            Written::Refused(key, value, Refusal::Overweight) => {
                // Admitted and at once evicted for its weight: counted as a
                // write and (below) an eviction, so inserts - evictions -
                // invalidations stays the entry count.
                self.counters.incr(if replaced_one {
                    Counter::Updates
                } else {
                    Counter::Inserts
                });
                removed.push_pair(key, value, RemovalCause::Evicted);
                Written::Refused((), (), Refusal::Overweight)
            }
            Written::Refused(key, value, refusal) => {
                drop((key, value));
                Written::Refused((), (), refusal)
            }
        };
        self.count_removed(&removed);
        self.report(removed);
        written
    }

    /// Counts the entries a store call removed.
    pub(crate) fn count_removed(&self, removed: &Removed<K, V>) {
        if removed.is_empty() {
            return;
        }
        self.counters
            .add(Counter::Evictions, removed.count(RemovalCause::Evicted));
        self.counters.add(
            Counter::Invalidations,
            removed.count(RemovalCause::Invalidated)
                + removed.count(RemovalCause::Cleared)
                + removed.count(RemovalCause::Gone),
        );
    }

    /// Hands removed entries to the listener, one by one, each call's panic
    /// caught and counted. Called with no lock held. A node taken out is
    /// retired here, after its key and value are cloned for the listener
    /// (readers may still hold the node's own): its own are dropped once no
    /// reader can see them, by the collector. A key and value no reader saw
    /// (refused for their weight) are dropped here; a `Drop` of theirs that
    /// panics unwinds to the caller, the cache already consistent.
    pub(crate) fn report(&self, removed: Removed<'_, K, V>) {
        if removed.is_empty() {
            return;
        }
        let Some(listener) = &self.listener else {
            drop(removed);
            return;
        };
        for (taken, cause) in removed.into_iter() {
            let (key, value) = taken.into_pair();
            let heard = catch_unwind(AssertUnwindSafe(|| listener(key, value, cause)));
            if heard.is_err() {
                self.counters.incr(Counter::ListenerPanics);
                tracing::error!(%cause, "the eviction listener panicked; the cache carries on");
            }
        }
    }

    /// Removes `key` from the store, fencing its flights before and after:
    /// before, so that one started earlier stores nothing; after, since one
    /// that joined the map in between read the entry being removed as what
    /// it starts from, and no later caller should join it.
    fn remove_fenced<Q>(&self, key: &Q) -> Option<Taken<'_, K, V>>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.in_flight.fence(key);
        let removed = self.store.remove(key, |_| true);
        self.in_flight.fence(key);
        // After the fences and the shard lock (`crate::gone`).
        if let Some(gone) = &self.gone {
            gone.forget(key);
        }
        removed.map(Taken::Node)
    }

    /// Removes `key`; whether it was cached. A removal the fleet is to
    /// hear of is told when the key was cached (only then is there a `K`
    /// to tell it with).
    pub(crate) fn invalidate<Q>(&self, key: &Q, share: Share) -> bool
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let Some(taken) = self.remove_fenced(key) else {
            return false;
        };
        if share == Share::Fleet {
            self.changes.tell(|| Change::Removed(taken.key()));
        }
        self.counters.incr(Counter::Invalidations);
        let mut removed = Removed::new();
        removed.push(taken, RemovalCause::Invalidated);
        self.report(removed);
        true
    }

    /// Marks the value of `key` stale, fencing its flights before and after
    /// as a removal does (a fetch under way brought the value from before).
    /// With no TTL nothing is ever stale: the key is invalidated instead.
    /// Whether it was cached.
    pub(crate) fn mark_stale<Q>(&self, key: &Q) -> bool
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        if !self.ages() {
            return self.invalidate(key, Share::Local);
        }
        self.in_flight.fence(key);
        let marked = self.store.mark_stale(key);
        self.in_flight.fence(key);
        if marked {
            self.refresher.nudges.ask_for_look();
        }
        marked
    }

    /// [`Inner::mark_stale`] for every entry.
    pub(crate) fn mark_all_stale(&self) {
        if !self.ages() {
            return self.clear(Share::Local);
        }
        self.in_flight.fence_all();
        self.store.mark_all_stale();
        self.in_flight.fence_all();
        self.refresher.nudges.ask_for_look();
    }

    /// Removes `key`, returning its value (and telling the listener).
    pub(crate) fn remove<Q>(&self, key: &Q) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let taken = self.remove_fenced(key)?;
        self.changes.tell(|| Change::Removed(taken.key()));
        self.counters.incr(Counter::Invalidations);
        let value = taken.value().clone();
        let mut removed = Removed::new();
        removed.push(taken, RemovalCause::Invalidated);
        self.report(removed);
        Some(value)
    }

    /// Removes the entries `remove` picks, shard by shard: each shard's
    /// entries are copied without a lock, `remove` is asked about each
    /// with no lock held, and those it picks are removed unless written
    /// since the copy. Returns how many were removed.
    pub(crate) fn remove_picked(&self, mut remove: impl FnMut(&K, &V) -> bool) -> usize {
        let mut count = 0;
        for at in 0..self.store.shard_count() {
            for (key, value, version) in self.store.copy_shard(at) {
                if !remove(&key, &value) {
                    continue;
                }
                self.in_flight.fence(&key);
                // Over a refresh installed since the copy (its fetch may
                // have begun before): only a user's write saves the entry.
                let written = user_write(version);
                let removed = self
                    .store
                    .remove(&key, |n| user_write(n.version()) == written);
                self.in_flight.fence(&key);
                let Some(node) = removed else {
                    continue;
                };
                self.changes.tell(|| Change::Removed(&node.key));
                count += 1;
                self.counters.incr(Counter::Invalidations);
                let mut removed = Removed::new();
                removed.push(node, RemovalCause::Invalidated);
                self.report(removed);
            }
        }
        count
    }

    /// Removes every entry.
    pub(crate) fn clear(&self, share: Share) {
        if share == Share::Fleet {
            self.changes.tell(|| Change::Clearing);
        }
        self.in_flight.fence_all();
        let mut removed = Removed::new();
        self.store.clear(&mut removed);
        // Again: a flight that joined while the shards were emptied may
        // have read an entry about to go as what it starts from.
        self.in_flight.fence_all();
        if let Some(gone) = self.gone.as_ref().filter(|g| g.any()) {
            gone.forget_all();
        }
        if share == Share::Fleet {
            self.changes.tell(|| Change::Cleared);
        }
        self.count_removed(&removed);
        self.report(removed);
    }

    /// Applies `change`: checked whole, then a lower capacity, the rest,
    /// and a higher capacity.
    pub(crate) fn configure(self: &Arc<Self>, change: &ConfigChange) -> Result<(), ConfigError> {
        let mut removed = Removed::new();
        {
            let _serialized = self.configuring.lock().unwrap_or_else(|e| e.into_inner());
            let current = self.settings.load_full();
            let next = change.apply(&current);
            next.validate(self.weigher.is_some())?;
            // `len() <= max_size()` at every moment: a lower bound is
            // announced once the entries fit it, a higher one before
            // there is room for more.
            let capacity = next.capacity();
            if capacity < current.capacity() {
                self.store.set_capacity(capacity, &mut removed);
            }
            if current.ttl.is_none() && next.ttl.is_some() {
                // Entries written without a TTL count from the last tick:
                // make that now.
                self.read.clock.tick();
            }
            // SeqCst: see `crate::upkeep`'s restart.
            self.read.ttl.store(ttl_nanos(&next), Ordering::SeqCst);
            self.read
                .max_stale
                .store(max_stale_nanos(&next), Ordering::Relaxed);
            let refile = current.ttl != next.ttl;
            let resized = (current.max_size != next.max_size).then_some(next.max_size as u64);
            self.settings.store(Arc::new(next));
            if refile {
                // The values on the cache's TTL go stale at new times.
                self.store.refile(self.terms());
            }
            if capacity > current.capacity() {
                self.store.set_capacity(capacity, &mut removed);
            }
            if let Some(gone) = self
                .gone
                .as_ref()
                .filter(|_| capacity != current.capacity())
            {
                gone.set_capacity(capacity);
            }
            if let Some(entries) = resized {
                self.climber
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .resize(entries);
            }
        }
        self.count_removed(&removed);
        self.report(removed);
        self.reconcile_refresher();
        Ok(())
    }
}

fn max_stale_nanos(settings: &Settings) -> Nanos {
    settings.max_stale.map_or(u64::MAX, duration_to_nanos)
}

fn ttl_nanos(settings: &Settings) -> Nanos {
    // A validated TTL is non-zero; clamp so one nanosecond does not read as "none".
    settings.ttl.map_or(0, |t| duration_to_nanos(t).max(1))
}

#[cfg(test)]
mod tests {
    use std::collections::hash_map::DefaultHasher;
    use std::hash::BuildHasherDefault;

    use crate::Cache;

    fn share<S>(cache: &Cache<u64, (), S>) -> u32 {
        cache.inner.climber.lock().unwrap().permille()
    }

    /// Replays `keys` `rounds` times: get, then insert on a miss.
    fn replay<S: std::hash::BuildHasher + Clone + Send + Sync + 'static>(
        cache: &Cache<u64, (), S>,
        keys: impl Iterator<Item = u64> + Clone,
        rounds: usize,
    ) {
        for _ in 0..rounds {
            for key in keys.clone() {
                if cache.get(&key).is_none() {
                    cache.insert(key, ());
                }
            }
        }
    }

    #[test]
    fn a_loop_a_little_larger_than_the_cache_drives_the_probation_share_down() {
        let cache: Cache<u64, ()> = Cache::builder().max_size(1_000).ttl(None).build().unwrap();
        let start = share(&cache);
        replay(&cache, 0..1_100, 100);
        assert!(share(&cache) < start, "{} from {start}", share(&cache));
        cache.validate();
    }

    #[test]
    fn recency_drives_the_probation_share_up() {
        // A sliding window of hot keys: each key is read a few times within
        // a short span and never again, which a larger probation queue
        // keeps while the main queue holds on to keys gone cold.
        let cache: Cache<u64, ()> = Cache::builder().max_size(1_000).ttl(None).build().unwrap();
        let start = share(&cache);
        for base in (0..400_000u64).step_by(50) {
            replay(&cache, base..base + 400, 1);
        }
        assert!(share(&cache) > start, "{} from {start}", share(&cache));
        cache.validate();
    }

    #[test]
    fn the_same_requests_give_the_same_shares_under_one_hash_seed() {
        let run = || {
            let cache = Cache::<u64, ()>::builder()
                .max_size(500)
                .ttl(None)
                .hasher(BuildHasherDefault::<DefaultHasher>::default())
                .build()
                .unwrap();
            let mut shares = Vec::new();
            for base in (0..300_000u64).step_by(997) {
                replay(&cache, (base..base + 700).map(|k| k % 3_000), 1);
                shares.push(share(&cache));
            }
            shares
        };
        let shares = run();
        assert!(shares.iter().any(|&s| s != shares[0]), "it moved");
        assert_eq!(shares, run());
    }
}
