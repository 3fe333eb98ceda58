//! The install of a fetch's result, as the load's or the refresh's, and
//! its counts. Shared by the async flights (`flight.rs`) and the blocking
//! loads (`blocking.rs`).
//!
//! # What a fetch may install
//!
//! - A fetch of a cached key (a refresh) installs its value only if the entry
//!   still has the version it started from: a newer write wins and its value
//!   stands, and a key removed meanwhile stays removed (and if added again,
//!   it has a new version).
//! - A fetch of an uncached key (a load, by `get_or_fetch` or a forced
//!   `refresh`) inserts its value only if the key is still absent, and only
//!   if no removal of the key (`invalidate`, `remove`, `invalidate_if`,
//!   `retain`, `clear`) came since the fetch began: those *fence* the
//!   flight. The fence is a flag of the flight, set before the removal takes
//!   its shard lock and read under the shard lock the insert takes, so
//!   either the insert comes first and the removal takes it out, or the
//!   insert sees the fence and stores nothing.
//! - A failed fetch stores nothing, and the cached value, if any, is kept.
//! - A `Gone` answer is remembered (with `negative_ttl` set) only where it
//!   was applied: a load's unless fenced, a refresh's only if it removed
//!   the entry it was fetched from (`crate::gone` says how a record and a
//!   write of the key that race settle).

use std::hash::{BuildHasher, Hash};
use std::sync::atomic::{AtomicBool, Ordering};

use super::fetcher::{FetchError, Fetched};
use crate::changes::Change;
use crate::inner::Inner;
use crate::metrics::Counter;
use crate::removal::RemovalCause;
use crate::store::{Install, Installed, Refusal, Removed, Version, Write, Written};

impl<K, V, S> Inner<K, V, S>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
    S: BuildHasher + Clone + Send + Sync + 'static,
{
    /// Installs a fetch's outcome and counts it; returns the value the cache
    /// now holds for the key (a newer write's, if one won), or the error.
    /// `from` is the version the fetch started from: the refresh's install
    /// over it, or with none the load's. A failure counts as a refresh's if
    /// the fetch was the refresher's (`by_refresher`, even when its key was
    /// removed as it started and it stores nothing) or started from a
    /// cached value, else as a load's.
    pub(crate) fn install(
        &self,
        key: &K,
        from: Option<Version>,
        outcome: Result<Fetched<V>, FetchError>,
        fence: &AtomicBool,
        by_refresher: bool,
    ) -> Result<V, FetchError> {
        let fetched = match outcome {
            Ok(fetched) => fetched,
            Err(error) => {
                let refresh = by_refresher || from.is_some();
                return Err(self.fetch_failed(key, error, refresh));
            }
        };
        match from {
            Some(from) => self.install_refresh(key, from, fetched, fence),
            None => self.install_load(key, fetched, fence),
        }
    }

    /// Counts a failed fetch (a refresh's or a load's) and logs it, at most
    /// ten lines a second; returns its error.
    fn fetch_failed(&self, key: &K, error: FetchError, refresh: bool) -> FetchError {
        self.counters.incr(if refresh {
            Counter::RefreshErrors
        } else {
            Counter::LoadErrors
        });
        if let Some(held_back) = self.failure_logs.admit(self.read.clock.now()) {
            let key = self.describe(key);
            tracing::warn!(
                %key,
                %error,
                held_back,
                "fetch failed; the cached value, if any, is kept"
            );
        }
        error
    }

    /// The load's install: stores a fetched value only if the key is still
    /// absent and `fence` is not set (a write or a removal meanwhile wins);
    /// returns the value, or the cached one if a write won.
    fn install_load(
        &self,
        key: &K,
        fetched: Fetched<V>,
        fence: &AtomicBool,
    ) -> Result<V, FetchError> {
        let value = match fetched {
            Fetched::Value(value) => value,
            Fetched::Unchanged => {
                self.counters.incr(Counter::LoadErrors);
                tracing::warn!("fetcher answered Unchanged for a key the cache does not hold");
                return Err(FetchError::NothingToKeep);
            }
            Fetched::Gone => {
                self.counters.incr(Counter::Gone);
                self.remember_gone(key, fence);
                return Err(FetchError::Gone);
            }
        };
        if self.is_disabled() {
            return Ok(value);
        }
        match self.write_fenced(key.clone(), value.clone(), Write::IfAbsent, fence) {
            // Stored and at once evicted for its weight, as an insert is
            // (counted as one, and an eviction): a load all the same, not a
            // discard.
            Written::Refused(_, _, Refusal::Overweight) => {
                self.counters.incr(Counter::Loads);
                Ok(value)
            }
            Written::Refused(..) => {
                self.counters.incr(Counter::Discarded);
                Ok(self.held_value(key).unwrap_or(value))
            }
            Written::Added | Written::Replaced => {
                self.counters.incr(Counter::Loads);
                Ok(value)
            }
        }
    }

    /// The refresh's install: over the entry of version `from` only (a
    /// newer write stands, a removed key stays removed); `Unchanged` renews
    /// that entry, `Gone` removes it. Returns the value the cache holds for
    /// the key after it, or the fetched one if none.
    fn install_refresh(
        &self,
        key: &K,
        from: Version,
        fetched: Fetched<V>,
        fence: &AtomicBool,
    ) -> Result<V, FetchError> {
        let (update, fresh) = match fetched {
            Fetched::Value(value) => {
                let weight = self.weigh(key, &value);
                let own = self.refreshed_own(key, &value);
                (
                    Install::Value(key.clone(), value.clone(), weight, own),
                    Some(value),
                )
            }
            Fetched::Unchanged => (Install::Renew(self.renewed_own(key)), None),
            Fetched::Gone => {
                self.counters.incr(Counter::Gone);
                // Only the entry fetched from: a newer write stands.
                if let Some(node) = self.store.remove(key, |n| n.version() == from) {
                    self.remember_gone(key, fence);
                    let mut removed = Removed::new();
                    removed.push(node, RemovalCause::Gone);
                    self.count_removed(&removed);
                    self.report(removed);
                }
                return Err(FetchError::Gone);
            }
        };
        let mut removed = Removed::new();
        let installed =
            self.store
                .install(key, from, update, self.read.clock.stamp(), &mut removed);
        let result = match installed {
            Installed::Done {
                replaced,
                was_marked,
            } => {
                self.counters.incr(Counter::Refreshes);
                if let Some(old) = replaced {
                    // A refresh of a marked value answers a change someone
                    // announced already (a fleet message, `mark_stale`, a
                    // stale snapshot): telling it again would have every
                    // replica mark the others' values stale in turn.
                    if let (Some(new), false) = (&fresh, was_marked) {
                        self.changes
                            .tell(|| Change::Refreshed(key, &old.value, new));
                    }
                    removed.push(old, RemovalCause::Replaced);
                }
                match fresh {
                    Some(value) => Ok(value),
                    None => self.held_value(key).ok_or(FetchError::NothingToKeep),
                }
            }
            Installed::Superseded(stale) => {
                self.counters.incr(Counter::Discarded);
                drop(stale);
                // Removed meanwhile (it stays removed), or a newer write won.
                match self.held_value(key) {
                    Some(newer) => Ok(newer),
                    None => fresh.ok_or(FetchError::NothingToKeep),
                }
            }
            Installed::Overweight(key, value) => {
                self.counters.incr(Counter::Refreshes);
                removed.push_pair(key, value, RemovalCause::Evicted);
                fresh.ok_or(FetchError::NothingToKeep)
            }
        };
        self.count_removed(&removed);
        self.report(removed);
        result
    }

    /// Remembers `key` as gone (with `negative_ttl` set), unless `fence`,
    /// the fetch's, says a removal came since it began. Recorded first,
    /// then the key looked for under its shard lock, and the record
    /// withdrawn if the key was written or the fetch fenced meanwhile: a
    /// write or removal that took that lock before is seen here, one after
    /// finds the record (`crate::gone`).
    fn remember_gone(&self, key: &K, fence: &AtomicBool) {
        let Some(gone) = &self.gone else {
            return;
        };
        if fence.load(Ordering::SeqCst) {
            return;
        }
        let Some(ends) = gone.record(key.clone(), self.read.clock.now()) else {
            return;
        };
        if self.store.holds(key) || fence.load(Ordering::SeqCst) {
            gone.withdraw(key, ends);
        }
    }

    /// The value the store holds for `key` now, servable or not.
    fn held_value(&self, key: &K) -> Option<V> {
        self.store.read(key, |n| n.value.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Cache;
    use std::time::Duration;

    /// (Review #18.7.) A refresher's flight whose key was removed as it
    /// started goes on as a fenced load (from no version) for whoever
    /// joined it; its failure counted as a load error. Every fetch the
    /// refresher starts counts as a refresh. (The race that makes one is
    /// narrow; this checks the rule it is counted by.)
    #[test]
    fn a_failed_refreshers_fetch_from_no_version_is_a_refresh_error() {
        let cache: Cache<u32, u32> = Cache::builder().build().unwrap();
        let fence = AtomicBool::new(true);
        let timed_out = || Err(FetchError::TimedOut(Duration::from_secs(1)));
        let _ = cache.inner.install(&1, None, timed_out(), &fence, true);
        let _ = cache.inner.install(&1, None, timed_out(), &fence, false);
        let m = cache.metrics();
        assert_eq!((m.refresh_errors, m.load_errors), (1, 1), "{m}");
    }

    std::thread_local! {
        /// Run by the next `Hash` of a [`Hooked`] key on this thread.
        static ON_HASH: std::cell::RefCell<Option<Box<dyn FnOnce()>>> =
            std::cell::RefCell::new(None);
    }

    /// A key whose `Hash` runs [`ON_HASH`] once: a way into a write
    /// between its look for records and its shard lock (the store hashes
    /// the key before it locks).
    #[derive(Clone, PartialEq, Eq)]
    struct Hooked(u32);

    impl Hash for Hooked {
        fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
            if let Some(hook) = ON_HASH.with(|h| h.borrow_mut().take()) {
                hook();
            }
            self.0.hash(state);
        }
    }

    /// A `Gone` recorded after an insert looked for records (there were
    /// none, so it kept no copy of its key) and before it wrote: the
    /// recorder finds no key yet, so the insert must drop the record.
    #[test]
    fn a_gone_recorded_as_an_insert_of_its_key_begins_does_not_outlive_it() {
        let cache: Cache<Hooked, u32> = Cache::builder()
            .negative_ttl(Duration::from_secs(30))
            .build()
            .unwrap();
        let recorder = cache.clone();
        ON_HASH.with(|h| {
            *h.borrow_mut() = Some(Box::new(move || {
                let fence = AtomicBool::new(false);
                recorder.inner.remember_gone(&Hooked(1), &fence);
            }));
        });
        cache.insert(Hooked(1), 5);
        assert!(ON_HASH.with(|h| h.borrow().is_none()), "the hook ran");
        let gone = cache.inner.gone.as_ref().unwrap();
        let now = cache.inner.read.clock.now();
        assert!(
            !gone.answers(&Hooked(1), now),
            "the record outlived the insert"
        );
        cache.validate();
    }
}
