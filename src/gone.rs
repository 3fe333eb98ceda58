//! [`GoneKeys`]: the keys whose fetch answered `Fetched::Gone` lately, so
//! that a `get_or_fetch` of one answers `FetchError::Gone` without asking
//! the source again until `negative_ttl` has passed
//! ([`CacheBuilder::negative_ttl`](crate::CacheBuilder::negative_ttl)).
//!
//! The records are a [`Store`] of their own (key to the time its record
//! ends), built only when `negative_ttl` is set: bounded by the cache's
//! capacity as a count of records, evicting by the store's policy, read
//! without a lock, and handing back what it takes out, so a key's `Drop`
//! never runs under its lock.
//!
//! # A record never outlives a write of its key
//!
//! A record made as the key is written must not stand after the write. The
//! one who records (`Inner::remember_gone`) writes the record, then looks
//! for the key in the cache's store *under the key's shard lock*, and
//! withdraws the record if the key is there (or the fetch was fenced by a
//! removal). A writer writes the store under that lock, then looks for
//! records. The shard lock orders the two looks: if the recorder's comes
//! after the write, it sees the key; if before, the record (made before
//! it) is visible to the writer, whose look comes after its lock. Either
//! way one of them drops it. A removal (`invalidate`, `remove`, `clear`)
//! sets its fences before it takes the shard lock and drops records after
//! it, so the same holds with the fence for "present".
//!
//! A writer that found no record as it began has not cloned its key (a
//! write pays one relaxed load while no key is recorded); if records
//! appeared while it wrote, it drops them all: they are the few made in
//! that instant, and a record lost costs one fetch.

use std::borrow::Borrow;
use std::hash::{BuildHasher, Hash};
use std::time::Duration;

use crate::clock::{Nanos, duration_to_nanos};
use crate::freshness::{NEVER, Own, Terms};
use crate::store::{Entry, Removed, Store, Write, Written};

/// The keys answered `Gone` within the last `ttl`, at most as many as the
/// cache's capacity.
pub(crate) struct GoneKeys<K, S> {
    /// Each key with the time its record ends.
    records: Store<K, Nanos, S>,
    /// How long a record lasts.
    ttl: Nanos,
}

impl<K, S> GoneKeys<K, S>
where
    K: Hash + Eq,
    S: BuildHasher,
{
    /// Records lasting `ttl`, at most `capacity` of them over `shards`
    /// shards, keys hashed by `hasher` (the cache's).
    pub(crate) fn new(ttl: Duration, capacity: u64, shards: usize, hasher: S) -> Self {
        Self {
            // Records never go stale by the store's clock: each keeps its
            // own end as its value.
            records: Store::new(capacity, false, shards, hasher, Terms::new(NEVER, NEVER, 0)),
            ttl: duration_to_nanos(ttl).max(1),
        }
    }

    /// Whether any key may be recorded: one relaxed load (the store's
    /// count, 0 only when every shard is empty).
    #[inline]
    pub(crate) fn any(&self) -> bool {
        self.records.len() > 0
    }

    /// Whether `key` is recorded as gone at `now`. A record past its end
    /// is dropped.
    pub(crate) fn answers<Q>(&self, key: &Q, now: Nanos) -> bool
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let Some(ends) = self.records.read(key, |n| n.value) else {
            return false;
        };
        if now < ends {
            return true;
        }
        // Only that record: one made since stands.
        drop(self.records.remove(key, |n| n.value == ends));
        false
    }

    /// Records `key` as gone from `now`; returns when the record ends, or
    /// `None` if there is no room for records at all (capacity 0).
    pub(crate) fn record(&self, key: K, now: Nanos) -> Option<Nanos> {
        let ends = now.saturating_add(self.ttl);
        let mut removed = Removed::new();
        let entry = Entry {
            key,
            value: ends,
            weight: 1,
            now,
            stale: false,
            own: Own::CACHE,
        };
        let written = self.records.write(entry, Write::Upsert, None, &mut removed);
        // Evicted records, and a refused key, dropped with no lock held.
        drop(removed);
        match written {
            Written::Added | Written::Replaced => Some(ends),
            Written::Refused(..) => None,
        }
    }

    /// Drops `key`'s record if it is the one ending at `ends`.
    pub(crate) fn withdraw(&self, key: &K, ends: Nanos) {
        drop(self.records.remove(key, |n| n.value == ends));
    }

    /// Drops `key`'s record, if any: after a removal of the key, or a write
    /// that found records as it began.
    #[inline]
    pub(crate) fn forget<Q>(&self, key: &Q)
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        // A look without a lock first: most keys written have no record.
        if self.any() && self.records.read(key, |_| ()).is_some() {
            drop(self.records.remove(key, |_| true));
        }
    }

    /// After a write of a key: drops its record, given `key` (cloned
    /// because records existed as the write began); without it, drops
    /// every record should any have appeared meanwhile (see the module
    /// docs).
    #[inline]
    pub(crate) fn written(&self, key: Option<&K>) {
        match key {
            Some(key) => self.forget(key),
            None if self.any() => self.forget_all(),
            None => {}
        }
    }

    /// Drops every record.
    pub(crate) fn forget_all(&self) {
        let mut removed = Removed::new();
        self.records.clear(&mut removed);
        drop(removed);
    }

    /// Bounds the records by the cache's new capacity, evicting down to it.
    pub(crate) fn set_capacity(&self, capacity: u64) {
        let mut removed = Removed::new();
        self.records.set_capacity(capacity, &mut removed);
        drop(removed);
    }

    /// Checks the record store's invariants, the bound among them.
    pub(crate) fn validate(&self) -> Result<(), String> {
        self.records
            .validate()
            .map_err(|broken| format!("gone keys: {broken}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hasher::DefaultBuildHasher;

    fn gone(capacity: u64) -> GoneKeys<u32, DefaultBuildHasher> {
        GoneKeys::new(
            Duration::from_secs(10),
            capacity,
            1,
            DefaultBuildHasher::default(),
        )
    }

    const S: Nanos = 1_000_000_000;

    #[test]
    fn a_record_answers_until_its_end_and_is_then_dropped() {
        let keys = gone(4);
        assert!(!keys.any());
        assert_eq!(keys.record(1, 5 * S), Some(15 * S));
        assert!(keys.answers(&1, 5 * S));
        assert!(keys.answers(&1, 15 * S - 1));
        assert!(!keys.answers(&2, 5 * S), "never recorded");
        assert!(!keys.answers(&1, 15 * S), "ended");
        assert_eq!(keys.records.len(), 0, "the ended record is dropped");
    }

    #[test]
    fn records_never_exceed_the_capacity() {
        let keys = gone(3);
        for key in 0..100 {
            keys.record(key, 0);
            assert!(keys.records.len() <= 3);
        }
        keys.validate().unwrap();
        let none = gone(0);
        assert_eq!(none.record(1, 0), None, "no room for any record");
        assert!(!none.answers(&1, 0));
    }

    #[test]
    fn a_withdrawal_drops_only_its_own_record() {
        let keys = gone(4);
        let first = keys.record(1, 0).unwrap();
        let second = keys.record(1, S).unwrap();
        keys.withdraw(&1, first);
        assert!(keys.answers(&1, S), "a newer record stands");
        keys.withdraw(&1, second);
        assert!(!keys.answers(&1, S));
    }

    #[test]
    fn a_write_without_its_key_drops_records_made_meanwhile() {
        let keys = gone(4);
        keys.written(None);
        keys.record(1, 0);
        keys.record(2, 0);
        keys.written(Some(&1));
        assert!(!keys.answers(&1, 0) && keys.answers(&2, 0));
        keys.written(None);
        assert!(!keys.any());
    }
}
