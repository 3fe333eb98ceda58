//! The store: the cache's entries, split by key hash into shards, each shard
//! with its own published table, entries and eviction policy behind its own
//! lock.
//!
//! A key's hash picks its shard (the top bits) and gives its fingerprint
//! (the low 32 bits), which is all the shard ever hashes by. A read takes no
//! lock: it enters the cache's epoch collector, probes its shard's published
//! table and reads the node where it lies ([`published`]); it writes nothing
//! another core reads, except a frequency or refresh bit of the node, and
//! only while that bit is clear. A write takes the shard's lock, and
//! everything it does — replacing a value (by publishing a new node),
//! evicting to make room, admitting a new key, updating the totals — happens
//! inside it. No operation holds two shard locks but the two that take
//! every one of them, in index order (a change of capacity, `validate`), so
//! there is no cycle of waits.
//!
//! The store fetches nothing and counts nothing: it keeps entries, their
//! versions and their ages, the timer wheel the refresher takes stale
//! entries from (each shard's `due`, with the refresher's hold on an
//! entry), and hands back whatever it took out ([`Removed`]) for the caller
//! to report or drop once the lock is released.
//!
//! # Why the bound holds at every moment
//!
//! Shard `i` holds at most its share of the capacity (`capacity / n`, plus
//! one for the first `capacity % n` shards, so the shares add up to the
//! capacity), and a write evicts *before* it adds, inside the shard's lock. So
//! no shard is ever over its share, not even between two steps of a write,
//! and the cache's total is never over the capacity. The totals that
//! [`Store::len`] and [`Store::weight`] read are changed inside the same
//! critical section, by the net change, so they are never over either.

mod climber;
mod due;
mod ghost;
mod node;
#[allow(unsafe_code)]
mod published;
mod queue;
mod removed;
mod shard;
mod sketch;

use std::borrow::Borrow;
use std::hash::{BuildHasher, Hash};
use std::sync::atomic::{AtomicBool, Ordering};

pub(crate) use climber::Climber;
pub(crate) use node::{Node, Version, user_write};
pub(crate) use published::Unlinked;
pub(crate) use removed::{Removed, Taken};
pub(crate) use shard::{Entry, Install, Installed, Refusal, Write, Written};

use crate::clock::Nanos;
use crate::freshness::Terms;
use crate::sync::{AtomicU64, AtomicUsize};
use published::{Index, Padded, Shards};
use shard::Shard;

/// The fewest entries a shard is given when the capacity allows: below
/// this, a shard is too small for its probation queue and its frequency
/// duels to tell one-hit keys from recurring ones (measured: 1,024 holds
/// the hit ratio within 0.1 point of one unsharded policy on 21 traces).
pub(crate) const MIN_PER_SHARD: u64 = 1024;

/// A reader's request to refresh one value: where it is, and which write
/// it came from. Plain data, made while reading and sent after.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Nudge {
    pub(crate) shard: u32,
    pub(crate) fingerprint: u32,
    pub(crate) version: Version,
}

impl Nudge {
    pub(crate) fn of<K, V>(node: &Node<K, V>, shard: usize) -> Self {
        Self {
            shard: shard as u32,
            fingerprint: node.fingerprint,
            version: node.version(),
        }
    }
}

/// Where a key lives: its shard and its fingerprint there.
#[derive(Clone, Copy)]
struct Located {
    shard: usize,
    fingerprint: u32,
}

pub(crate) struct Store<K, V, S> {
    shards: Shards<K, V, Shard<K, V>>,
    hasher: S,
    weighted: bool,
    totals: Padded<Totals>,
}

/// Sums over the shards, changed under a shard's lock by its net
/// change (so a write that evicts one entry to add one writes nothing here).
struct Totals {
    len: AtomicUsize,
    /// A shard asked the climber to look (`Shard::take_climb`); read by
    /// writers, written every few hundred new entries.
    climb: AtomicBool,
    /// With a weigher; without one every entry weighs 1 and this stays 0.
    weight: AtomicU64,
    capacity: AtomicU64,
}

/// How many shards a cache gets: enough for the machine's threads to write
/// without waiting on each other much (four per core, as quick_cache
/// does), but never so many that a shard holds fewer than
/// [`MIN_PER_SHARD`] of the `entries` expected.
pub(crate) fn shard_count(entries: u64) -> usize {
    let cores = std::thread::available_parallelism().map_or(4, |n| n.get());
    let for_cores = (cores * 4).next_power_of_two();
    let for_policy = (entries / MIN_PER_SHARD).max(1);
    // The largest power of two not above `for_policy`.
    let for_policy = 1usize << (usize::BITS - 1 - (for_policy as usize).leading_zeros());
    for_cores.min(for_policy)
}

/// Shard `i`'s part of `total` split over `n`: the parts add up to `total`.
fn share(total: u64, n: usize, i: usize) -> u64 {
    let n = n as u64;
    total / n + u64::from((i as u64) < total % n)
}

/// Mixes the user's hash so that a weak one (an identity hash of integers)
/// still spreads keys over shards and table positions.
#[inline]
pub(super) fn mix(hash: u64) -> u64 {
    let x = (hash ^ (hash >> 32)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    x ^ (x >> 32)
}

impl<K, V, S> Store<K, V, S>
where
    K: Hash + Eq,
    S: BuildHasher,
{
    /// A store of `capacity` (entries, or weight with a weigher) over
    /// `shards` shards, filing values by the cache's `terms`. Nothing is
    /// allocated per entry until entries come.
    pub(crate) fn new(
        capacity: u64,
        weighted: bool,
        shards: usize,
        hasher: S,
        terms: Terms,
    ) -> Self {
        let shards = shards.max(1);
        Self {
            shards: Shards::new(shards, |i| {
                Shard::new(share(capacity, shards, i), weighted, terms)
            }),
            hasher,
            weighted,
            totals: Padded(Totals {
                len: AtomicUsize::new(0),
                climb: AtomicBool::new(false),
                weight: AtomicU64::new(0),
                capacity: AtomicU64::new(capacity),
            }),
        }
    }

    pub(crate) fn hasher(&self) -> &S {
        &self.hasher
    }

    #[inline]
    fn locate<Q: Hash + ?Sized>(&self, key: &Q) -> Located {
        let hash = mix(self.hasher.hash_one(key));
        Located {
            shard: ((u128::from(hash) * self.shards.len() as u128) >> 64) as usize,
            fingerprint: hash as u32,
        }
    }

    /// Runs `f` on the entry of `key`, taking no lock (see [`published`]).
    #[inline]
    pub(crate) fn read<Q, R>(&self, key: &Q, f: impl FnOnce(&Node<K, V>) -> R) -> Option<R>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.read_in_shard(key, |node, _| f(node))
    }

    /// The key's 32-bit fingerprint, as the store files it (for logs).
    pub(crate) fn fingerprint_of(&self, key: &K) -> u32 {
        self.locate(key).fingerprint
    }

    /// [`Store::read`], telling `f` the entry's shard too.
    #[inline]
    pub(crate) fn read_in_shard<Q, R>(
        &self,
        key: &Q,
        f: impl FnOnce(&Node<K, V>, usize) -> R,
    ) -> Option<R>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let at = self.locate(key);
        self.shards.read(
            at.shard,
            at.fingerprint,
            |node| node.key.borrow() == key,
            |node| f(node, at.shard),
        )
    }

    /// Whether `key` is present, looked up under its shard's lock, so that
    /// a write that took the lock before is seen, and one that takes it
    /// after sees everything done before this (`crate::gone`'s race with
    /// an insert).
    pub(crate) fn holds<Q>(&self, key: &Q) -> bool
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let at = self.locate(key);
        let mut writer = self.shards.lock(at.shard);
        let (_, ix) = writer.split();
        ix.find(at.fingerprint, |n| n.key.borrow() == key).is_some()
    }

    /// Runs `f` on the entry of `key` if the refresher holds it (see
    /// [`Shard::take_due`]), under its shard's lock.
    pub(crate) fn read_held<R>(&self, key: &K, f: impl FnOnce(&Node<K, V>) -> R) -> Option<R> {
        let at = self.locate(key);
        let mut writer = self.shards.lock(at.shard);
        let (shard, ix) = writer.split();
        shard.find_held(&ix, at.fingerprint, |k| k == key).map(f)
    }

    /// Files every entry again by the cache's new `terms`, one shard at a
    /// time ([`Shard::refile`]).
    pub(crate) fn refile(&self, terms: Terms) {
        for at in 0..self.shards.len() {
            self.shards.lock(at).split().0.refile(terms);
        }
    }

    /// Hands the refresher up to `limit` keys of shard `at` stale at `now`
    /// ([`Shard::take_due`]); under its lock, which it holds for as
    /// many as it takes.
    pub(crate) fn take_due(
        &self,
        refresher: u64,
        at: usize,
        now: Nanos,
        limit: usize,
        out: &mut Vec<K>,
    ) where
        K: Clone,
    {
        self.shards
            .lock(at)
            .split()
            .0
            .take_due(refresher, now, limit, out);
    }

    /// Hands the refresher the key a reader asked it for
    /// ([`Shard::take_nudged`]).
    pub(crate) fn take_nudged(&self, refresher: u64, nudge: Nudge) -> Option<K>
    where
        K: Clone,
    {
        let at = nudge.shard as usize;
        if at >= self.shards.len() {
            return None;
        }
        let mut writer = self.shards.lock(at);
        let (shard, ix) = writer.split();
        shard.take_nudged(&ix, refresher, nudge.fingerprint, nudge.version)
    }

    /// Gives `key` back to the due values if the refresher holds it.
    pub(crate) fn release(&self, key: &K) {
        let at = self.locate(key);
        let mut writer = self.shards.lock(at.shard);
        let (shard, ix) = writer.split();
        shard.release(&ix, at.fingerprint, |k| k == key);
    }

    /// Gives every held entry back to the due values, one shard at a time,
    /// and lets only refresher number `refresher` take entries from now on.
    pub(crate) fn release_all(&self, refresher: u64) {
        for at in 0..self.shards.len() {
            self.shards.lock(at).split().0.release_all(refresher);
        }
    }

    /// Changes shard `at` with `change`, then brings the totals up to date,
    /// all under the shard's lock.
    fn change<'s, R>(
        &'s self,
        at: usize,
        change: impl FnOnce(&mut Shard<K, V>, &mut Index<'_, 's, K, V>) -> R,
    ) -> R {
        let mut writer = self.shards.lock(at);
        let (shard, mut ix) = writer.split();
        let (len, weight) = (shard.len(), shard.weight());
        let result = change(shard, &mut ix);
        let totals = &self.totals.0;
        match shard.len().cmp(&len) {
            std::cmp::Ordering::Greater => {
                totals.len.fetch_add(shard.len() - len, Ordering::Relaxed);
            }
            std::cmp::Ordering::Less => {
                totals.len.fetch_sub(len - shard.len(), Ordering::Relaxed);
            }
            std::cmp::Ordering::Equal => {}
        }
        if self.weighted {
            match shard.weight().cmp(&weight) {
                std::cmp::Ordering::Greater => {
                    totals
                        .weight
                        .fetch_add(shard.weight() - weight, Ordering::Relaxed);
                }
                std::cmp::Ordering::Less => {
                    totals
                        .weight
                        .fetch_sub(weight - shard.weight(), Ordering::Relaxed);
                }
                std::cmp::Ordering::Equal => {}
            }
        }
        result
    }

    /// Writes `entry` as `how` says. With a `fence`, the write is refused
    /// ([`Refusal::Fenced`]) if the fence is set when the shard's lock is
    /// taken: whoever sets it before removing the key under that lock is
    /// sure the write either came before the removal or does not happen.
    pub(crate) fn write<'s>(
        &'s self,
        entry: Entry<K, V>,
        how: Write,
        fence: Option<&AtomicBool>,
        out: &mut Removed<'s, K, V>,
    ) -> Written<K, V> {
        let at = self.locate(&entry.key);
        self.change(at.shard, |shard, ix| {
            if fence.is_some_and(|f| f.load(Ordering::SeqCst)) {
                return Written::Refused(entry.key, entry.value, Refusal::Fenced);
            }
            let written = shard.write(ix, at.fingerprint, entry, how, out);
            if shard.take_climb() {
                self.totals.0.climb.store(true, Ordering::Relaxed);
            }
            written
        })
    }

    /// Whether a shard asked the cache's climber to look since the last
    /// call: true for one caller.
    #[inline]
    pub(crate) fn take_climb(&self) -> bool {
        let climb = &self.totals.0.climb;
        climb.load(Ordering::Relaxed) && climb.swap(false, Ordering::Relaxed)
    }

    /// Sets every shard's probation share, in permille ([`Climber`]), one
    /// shard at a time.
    pub(crate) fn set_small_share(&self, permille: u32) {
        for at in 0..self.shards.len() {
            self.shards.lock(at).split().0.set_small_share(permille);
        }
    }

    /// Marks the value of `key` stale ([`Shard::mark_stale`]); whether
    /// it was there.
    pub(crate) fn mark_stale<Q>(&self, key: &Q) -> bool
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let at = self.locate(key);
        let mut writer = self.shards.lock(at.shard);
        let (shard, ix) = writer.split();
        shard.mark_stale(&ix, at.fingerprint, |k| k.borrow() == key)
    }

    /// Marks every value stale, one shard at a time.
    pub(crate) fn mark_all_stale(&self) {
        for at in 0..self.shards.len() {
            self.shards.lock(at).split().0.mark_all_stale();
        }
    }

    /// Installs a refresh's result for `key` over version `from` only.
    pub(crate) fn install<'s>(
        &'s self,
        key: &K,
        from: Version,
        update: Install<K, V>,
        now: Nanos,
        out: &mut Removed<'s, K, V>,
    ) -> Installed<'s, K, V> {
        let at = self.locate(key);
        self.change(at.shard, |shard, ix| {
            shard.install(ix, at.fingerprint, |k| k == key, from, update, now, out)
        })
    }

    /// Removes the entry of `key` if `remove_if` says so; it is retired
    /// when the returned node drops.
    pub(crate) fn remove<Q>(
        &self,
        key: &Q,
        remove_if: impl FnOnce(&Node<K, V>) -> bool,
    ) -> Option<Unlinked<'_, K, V>>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let at = self.locate(key);
        self.change(at.shard, |shard, ix| {
            shard.remove(ix, at.fingerprint, |k| k.borrow() == key, remove_if)
        })
    }

    /// Empties every shard, one after the other; the entries go to `out`.
    pub(crate) fn clear<'s>(&'s self, out: &mut Removed<'s, K, V>) {
        for at in 0..self.shards.len() {
            self.change(at, |shard, ix| shard.clear(ix, out));
        }
    }

    /// Sets the total capacity, each shard evicting down to its new share.
    ///
    /// Holds every shard's lock at once (in index order, as
    /// `validate` does), so no one sees some shards resized and others not.
    /// A resize is rare; while it runs, the cache waits.
    pub(crate) fn set_capacity<'s>(&'s self, capacity: u64, out: &mut Removed<'s, K, V>) {
        let n = self.shards.len();
        let mut writers: Vec<_> = (0..n).map(|at| self.shards.lock(at)).collect();
        let (len, weight) = writers.iter().fold((0, 0), |(l, w), s| {
            (l + s.state().len(), w + s.state().weight())
        });
        for (at, writer) in writers.iter_mut().enumerate() {
            let (shard, mut ix) = writer.split();
            shard.set_capacity(&mut ix, share(capacity, n, at), out);
            // Old tables (of shards emptied) are retired once every lock,
            // and the caller's, is released: with `out`. Taken at once, so
            // an unwinding panic does not retire them as the locks go.
            out.push_tables(writer.take_replaced());
        }
        let (new_len, new_weight) = writers.iter().fold((0, 0), |(l, w), s| {
            (l + s.state().len(), w + s.state().weight())
        });

        let totals = &self.totals.0;
        totals.len.fetch_sub(len - new_len, Ordering::Relaxed);
        if self.weighted {
            totals
                .weight
                .fetch_sub(weight - new_weight, Ordering::Relaxed);
        }
        totals.capacity.store(capacity, Ordering::Relaxed);
    }

    /// Copies of shard `at`'s entries with their versions, taken without a
    /// lock (weakly consistent: a write meanwhile may or may not be seen).
    pub(crate) fn copy_shard(&self, at: usize) -> Vec<(K, V, Version)>
    where
        K: Clone,
        V: Clone,
    {
        let mut copies = Vec::new();
        self.shards.for_each(at, |n| {
            copies.push((n.key.clone(), n.value.clone(), n.version()));
        });
        copies
    }

    /// The number of entries.
    pub(crate) fn len(&self) -> usize {
        self.totals.0.len.load(Ordering::Relaxed)
    }

    /// The sum of the entries' weights (the number of entries without a
    /// weigher).
    pub(crate) fn weight(&self) -> u64 {
        if self.weighted {
            self.totals.0.weight.load(Ordering::Relaxed)
        } else {
            self.len() as u64
        }
    }

    /// The most entries (or weight) the store holds; 0 disables it.
    pub(crate) fn capacity(&self) -> u64 {
        self.totals.0.capacity.load(Ordering::Relaxed)
    }

    pub(crate) fn shard_count(&self) -> usize {
        self.shards.len()
    }

    /// Checks every shard's invariants and that the totals add up.
    ///
    /// It holds every shard's lock at once (taken in index order; no
    /// other operation holds two, so this cannot deadlock), so it sees one
    /// moment of the whole store and may run while other threads write.
    pub(crate) fn validate(&self) -> Result<(), String> {
        let n = self.shards.len();
        let mut writers: Vec<_> = (0..n).map(|at| self.shards.lock(at)).collect();
        let capacity = self.capacity();
        let (mut len, mut weight) = (0, 0);
        for (at, writer) in writers.iter_mut().enumerate() {
            let (shard, ix) = writer.split();
            shard
                .validate(&ix)
                .map_err(|e| format!("shard {at}: {e}"))?;
            if shard.capacity() != share(capacity, n, at) {
                return Err(format!("shard {at}: capacity is not its share"));
            }
            len += shard.len();
            weight += shard.weight();
        }
        if len != self.len() {
            return Err(format!("len counts {}, shards hold {len}", self.len()));
        }
        if weight != self.weight() {
            return Err(format!(
                "weight counts {}, shards hold {weight}",
                self.weight()
            ));
        }
        if weight > capacity {
            return Err(format!("weight {weight} over capacity {capacity}"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_add_up_to_the_total() {
        for (total, n) in [(0, 1), (1, 8), (7, 8), (100, 8), (1_000_003, 64)] {
            let sum: u64 = (0..n).map(|i| share(total, n, i)).sum();
            assert_eq!(sum, total, "{total} over {n}");
            let (min, max) = (share(total, n, n - 1), share(total, n, 0));
            assert!(max - min <= 1);
        }
    }

    #[test]
    fn small_caches_get_one_shard_and_large_ones_many() {
        assert_eq!(shard_count(0), 1);
        assert_eq!(shard_count(100), 1);
        assert_eq!(shard_count(2 * MIN_PER_SHARD), 2);
        let most = shard_count(u64::MAX);
        assert!(most.is_power_of_two() && most >= 4);
        for entries in [1_000, 10_000, 1_000_000] {
            let n = shard_count(entries) as u64;
            assert!(n == 1 || entries / n >= MIN_PER_SHARD, "{entries}: {n}");
        }
    }
}
