//! Single flight: at most one fetch per key at a time, shared by everyone who
//! asks for that key meanwhile (the refresher, [`Cache::refresh`] and
//! [`Cache::get_or_fetch`]), and the install of its result.
//!
//! A fetch of a cached key installs its value only if the entry still has the
//! version it started from: a newer write wins and its value stands, and a key
//! removed meanwhile stays removed (and if added again, it has a new version).
//! A fetch of an uncached key (read-through) inserts its value only if the key
//! is still absent.
//!
//! [`Cache::refresh`]: crate::Cache::refresh
//! [`Cache::get_or_fetch`]: crate::Cache::get_or_fetch

use std::future::Future;
use std::hash::{BuildHasher, Hash};
use std::sync::{Arc, Weak};

use dashmap::mapref::entry::Entry;
use tokio::sync::watch;

use crate::fetcher::{FetchError, Fetched, run_fetch};
use crate::inner::{FlightReceiver, Inner};
use crate::metrics::Counter;
use crate::removal::{RemovalCause, Removed};
use crate::store::{Install, Installed, Version, Write, Written};

/// What a fetch started from: the value and version of a cached key.
type Start<V> = Option<(V, Version)>;

/// A flight joined or started by [`Inner::join_or_start_flight`].
pub(crate) enum Flight<V, D> {
    /// A fetch was under way: wait on its receiver.
    Joined(FlightReceiver<V>),
    /// No fetch was: this future drives the new one, and returns its result.
    Started(D),
}

/// Waits for a flight's result.
pub(crate) async fn wait<V: Clone>(mut flight: FlightReceiver<V>) -> Result<V, FetchError> {
    match flight.wait_for(Option::is_some).await {
        Ok(outcome) => outcome.clone().unwrap_or(Err(FetchError::Cancelled)),
        // The fetch was dropped before it finished (stop, runtime shut down).
        Err(_) => Err(FetchError::Cancelled),
    }
}

impl<K, V, S> Inner<K, V, S>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
    S: BuildHasher + Clone + Send + Sync + 'static,
{
    /// Joins the fetch of `key` under way, or starts one. Starting returns the
    /// future that drives it, for the caller to run or spawn: it fetches,
    /// installs, publishes the result to whoever joined, and returns it.
    /// Dropping it unfinished ends the flight, and whoever waits on it gets
    /// [`FetchError::Cancelled`].
    pub(crate) fn join_or_start_flight(
        self: &Arc<Self>,
        key: K,
    ) -> Result<Flight<V, impl Future<Output = Result<V, FetchError>> + Send + 'static>, FetchError>
    {
        let fetcher = self
            .fetcher
            .load_full()
            .ok_or(FetchError::NoFetcher)?
            .0
            .clone();
        let (publish, receiver) = match self.flights.entry(key.clone()) {
            Entry::Occupied(flight) => return Ok(Flight::Joined(flight.get().clone())),
            Entry::Vacant(slot) => {
                let (publish, receiver) = watch::channel(None);
                slot.insert(receiver.clone());
                (publish, receiver)
            }
        };
        let start: Start<V> = self
            .store
            .read(&key, |node| (node.value.clone(), node.version));
        let landing = FlightLanding {
            cache: Arc::downgrade(self),
            key: key.clone(),
            receiver,
        };
        let timeout = self.settings.load().refresh_timeout;
        let drive = async move {
            let current = start.as_ref().map(|(value, _)| value.clone());
            let from = start.map(|(_, version)| version);
            let outcome = run_fetch(fetcher.fetch(key, current), timeout).await;
            let result = match landing.cache.upgrade() {
                Some(cache) => cache.install(&landing.key, from, outcome),
                None => Err(FetchError::Cancelled),
            };
            // Leave the map before publishing, so a caller who sees the
            // result and asks again starts a new fetch rather than joining
            // this finished one.
            drop(landing);
            publish.send_replace(Some(result.clone()));
            result
        };
        Ok(Flight::Started(drive))
    }

    /// Installs a fetch's outcome and counts it; returns the value the cache
    /// now holds for the key (a newer write's, if one won), or the error.
    /// `from` is the version the fetch started from, `None` for a read-through.
    fn install(
        &self,
        key: &K,
        from: Option<Version>,
        outcome: Result<Fetched<V>, FetchError>,
    ) -> Result<V, FetchError> {
        let fetched = match outcome {
            Ok(fetched) => fetched,
            Err(error) => {
                self.counters.incr(Counter::RefreshErrors);
                tracing::warn!(%error, "fetch failed; the cached value, if any, is kept");
                return Err(error);
            }
        };
        let Some(from) = from else {
            return match fetched {
                Fetched::Value(value) => {
                    self.counters.incr(Counter::Refreshes);
                    if !self.is_disabled() {
                        // Only if still absent: a write meanwhile wins.
                        if let Written::Refused(..) =
                            self.write(key.clone(), value.clone(), Write::IfAbsent)
                        {
                            if let Some(newer) = self.store.read(key, |n| n.value.clone()) {
                                return Ok(newer);
                            }
                        }
                    }
                    Ok(value)
                }
                Fetched::Unchanged => {
                    self.counters.incr(Counter::RefreshErrors);
                    tracing::warn!("fetcher answered Unchanged for a key the cache does not hold");
                    Err(FetchError::NothingToKeep)
                }
            };
        };
        self.counters.incr(Counter::Refreshes);
        let (update, fresh) = match fetched {
            Fetched::Value(value) => {
                let weight = self.weigh(key, &value);
                (Install::Value(value.clone(), weight), Some(value))
            }
            Fetched::Unchanged => (Install::Renew, None),
        };
        let mut removed = Removed::new();
        let installed = self
            .store
            .install(key, from, update, self.write_stamp(), &mut removed);
        let result = match installed {
            Installed::Done(old) => {
                if let Some(old) = old {
                    removed.push(key.clone(), old, RemovalCause::Replaced);
                }
                match fresh {
                    Some(value) => Ok(value),
                    None => self
                        .store
                        .read(key, |n| n.value.clone())
                        .ok_or(FetchError::NothingToKeep),
                }
            }
            Installed::Superseded(stale) => {
                drop(stale);
                // Removed meanwhile (it stays removed), or a newer write won.
                match self.store.read(key, |n| n.value.clone()) {
                    Some(newer) => Ok(newer),
                    None => fresh.ok_or(FetchError::NothingToKeep),
                }
            }
            Installed::Overweight(value) => {
                removed.push(key.clone(), value, RemovalCause::Evicted);
                fresh.ok_or(FetchError::NothingToKeep)
            }
        };
        self.count_removed(&removed);
        self.report(removed);
        result
    }
}

/// Removes a flight from the map when its fetch ends or is dropped.
struct FlightLanding<K, V, S>
where
    K: Hash + Eq,
    S: BuildHasher + Clone,
{
    cache: Weak<Inner<K, V, S>>,
    key: K,
    receiver: FlightReceiver<V>,
}

impl<K, V, S> Drop for FlightLanding<K, V, S>
where
    K: Hash + Eq,
    S: BuildHasher + Clone,
{
    fn drop(&mut self) {
        if let Some(cache) = self.cache.upgrade() {
            cache
                .flights
                .remove_if(&self.key, |_, flight| flight.same_channel(&self.receiver));
        }
    }
}
