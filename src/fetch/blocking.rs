//! The blocking read-through, [`Cache::get_or_insert_with`]: for code with
//! no async and no runtime at all.
//!
//! One thread per key loads at a time. The first to miss registers itself
//! in the map of blocking loads and calls the user's loader with no lock
//! held; others that miss meanwhile find its entry and wait on its latch,
//! then read again: a hit if the load was stored, or, if it failed,
//! panicked or was fenced, they go round again, one of them loading in
//! turn with its own loader (an error is the loader's own, so it is never
//! shared). The loader's thread, if its loader asks for the same key, loads
//! again directly instead of waiting for itself.
//!
//! A load stores its value as a fetch's would ([`Inner::install`]): over
//! the version it found (an entry past `max_stale`), or only if the key is
//! still absent and no removal fenced the load since it registered.
//!
//! [`Cache::get_or_insert_with`]: crate::Cache::get_or_insert_with

use std::borrow::Borrow;
use std::hash::{BuildHasher, Hash};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use super::fetcher::Fetched;
use super::in_flight::{InFlight, LoadRole};
use super::latch::Latch;
use crate::inner::Inner;
use crate::metrics::Counter;

impl<K, V, S> Inner<K, V, S>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
    S: BuildHasher + Clone + Send + Sync + 'static,
{
    pub(crate) fn get_or_insert_with<Q, E>(
        self: &Arc<Self>,
        key: &Q,
        load: impl FnOnce(&K) -> Result<V, E>,
    ) -> Result<V, E>
    where
        K: Borrow<Q> + From<Q::Owned>,
        Q: ToOwned + Hash + Eq + ?Sized,
    {
        if let Some(value) = self.get(key) {
            return Ok(value);
        }
        let key = K::from(key.to_owned());
        let me = std::thread::current().id();
        loop {
            match self.in_flight.join_or_claim_blocking(key.clone(), me) {
                LoadRole::Wait(done) => {
                    done.wait();
                    // (Named: the caller's `K: Borrow<Q>` would claim `&key`.)
                    let found = self
                        .store
                        .read::<K, _>(&key, |n| self.is_servable(n).then(|| n.value.clone()));
                    if let Some(Some(value)) = found {
                        return Ok(value);
                    }
                }
                LoadRole::Load(done, fence) => {
                    let _leaving = Leaving {
                        in_flight: &self.in_flight,
                        key: &key,
                        done,
                    };
                    return self.load_blocking(&key, load, &fence);
                }
                LoadRole::Reenter(fence) => {
                    return self.load_blocking(&key, load, &fence);
                }
            }
        }
    }

    /// Calls `load` and stores its value, unless the key was written since
    /// the miss (that value is returned) or `fence` is set by then.
    fn load_blocking<E>(
        &self,
        key: &K,
        load: impl FnOnce(&K) -> Result<V, E>,
        fence: &AtomicBool,
    ) -> Result<V, E> {
        let start = self.store.read(key, |n| {
            (self.is_servable(n).then(|| n.value.clone()), n.version())
        });
        if let Some((Some(value), _)) = start {
            return Ok(value);
        }
        let from = start.map(|(_, version)| version);
        match load(key) {
            // Never the refresher's; and a value, so never a failure.
            Ok(value) => Ok(self
                .install(key, from, Ok(Fetched::Value(value.clone())), fence, false)
                .unwrap_or(value)),
            Err(error) => {
                self.counters.incr(Counter::LoadErrors);
                Err(error)
            }
        }
    }
}

/// The loader leaving: takes its entry out of the map (unless a fence took
/// it already, and another load may be there) and opens its latch, however
/// the load ended, a panic included.
struct Leaving<'a, K, V, S>
where
    K: Hash + Eq,
    S: BuildHasher + Clone,
{
    in_flight: &'a InFlight<K, V, S>,
    key: &'a K,
    done: Arc<Latch>,
}

impl<K, V, S> Drop for Leaving<'_, K, V, S>
where
    K: Hash + Eq,
    S: BuildHasher + Clone,
{
    fn drop(&mut self) {
        self.in_flight.leave_blocking(self.key, &self.done);
        self.done.open();
    }
}
