//! Single flight: at most one fetch per key at a time, shared by everyone who
//! asks for that key meanwhile (the refresher, [`Cache::refresh`] and
//! [`Cache::get_or_fetch`]), and the install of its result.
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
//!   insert sees the fence and stores nothing. A `get_or_fetch` whose key
//!   was written between its miss and its flight's start fetches nothing:
//!   that value is its answer.
//! - A fenced flight also leaves the map of flights at once (`clear` only
//!   flags it, and the next caller replaces it), so a caller who asks after
//!   the removal starts a new fetch instead of joining the old one and
//!   getting its value. A removal fences before and after it removes the
//!   entry, and a flight reads what it starts from only once it is in the
//!   map, so no flight that read the removed entry can be joined after.
//! - The background refresher never loads: it fetches only entries it holds
//!   (see `refresh/held.rs`), and a key no longer held when its flight would
//!   start is left alone.
//!
//! [`Cache::refresh`]: crate::Cache::refresh
//! [`Cache::get_or_fetch`]: crate::Cache::get_or_fetch

use std::future::Future;
use std::hash::{BuildHasher, Hash};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use tokio::time::Instant;

use tracing::Instrument;

use super::fetcher::{FetchError, Fetched, panic_message, run_fetch};
use super::in_flight::{FlightClaim, FlightReceiver};
use crate::changes::Change;
use crate::inner::Inner;
use crate::metrics::Counter;
use crate::removal::RemovalCause;
use crate::store::Removed;
use crate::store::{Install, Installed, Refusal, Version, Write, Written};

/// Why a flight is asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Purpose {
    /// `get_or_fetch`: load the key if it is not cached.
    Load,
    /// `refresh`: revalidate the key now, loading it if it is not cached.
    Forced,
    /// The background refresher: revalidate a cached key, never load one.
    Refresh,
}

/// A flight joined or started by [`Inner::join_or_start_flight`].
pub(crate) enum Flight<K, V, S, D> {
    /// A fetch was under way: wait for it.
    Joined(Joined<K, V, S>),
    /// No fetch was: this future drives the new one, and returns its result.
    Started(D),
    /// A background refresh of a key the refresher no longer holds
    /// (removed, or written since it was taken): nothing to do.
    Gone,
    /// A load of a key written since the caller's miss: its value.
    Found(V),
}

/// Waits for a flight's result.
async fn wait<V: Clone>(mut flight: FlightReceiver<V>) -> Result<V, FetchError> {
    match flight.wait_for(Option::is_some).await {
        Ok(outcome) => outcome.clone().unwrap_or(Err(FetchError::Cancelled)),
        // The fetch was dropped before it finished (stop, runtime shut down).
        Err(_) => Err(FetchError::Cancelled),
    }
}

/// How a fetch ended, as its span names it.
fn outcome_name<V>(outcome: &Result<Fetched<V>, FetchError>) -> &'static str {
    match outcome {
        Ok(Fetched::Value(_)) => "value",
        Ok(Fetched::Unchanged) => "unchanged",
        Ok(Fetched::Gone) => "gone",
        Err(FetchError::TimedOut(_)) => "timeout",
        Err(FetchError::Panicked(_)) => "panic",
        Err(_) => "error",
    }
}

/// When a flight started now with fetch timeout `timeout` should have
/// ended, whoever waits for it. A flight that is driven ends within its
/// fetch's timeout; one that has not ended the same time again later (and
/// at least 100 ms more, for a loaded runtime's scheduling) is taken to be
/// stalled: its driver is a task of a runtime that is alive but not driven
/// (a current-thread runtime outside `block_on`, after the caller that
/// started it gave up), and waiting on would be for ever. Fixed when the
/// flight starts, so a `configure` meanwhile does not move it.
fn ends_by(timeout: Duration) -> Instant {
    let patience = timeout.saturating_add(timeout.max(Duration::from_millis(100)));
    let now = Instant::now();
    now.checked_add(patience)
        .unwrap_or(now + Duration::from_secs(86_400 * 365))
}

/// A flight a caller joined: its result, and what is needed to give up on
/// it if it stalls.
pub(crate) struct Joined<K, V, S> {
    result: FlightReceiver<V>,
    cache: Weak<Inner<K, V, S>>,
    key: K,
    ends_by: Instant,
}

impl<K, V, S> Joined<K, V, S>
where
    K: Hash + Eq,
    V: Clone,
    S: BuildHasher + Clone,
{
    /// The flight's result; or, if it has not come by the time the flight
    /// should have ended ([`ends_by`]), the key back (the flight is then
    /// fenced and out of the map, so that the caller, and every one after,
    /// starts a new one).
    pub(crate) async fn wait(self) -> Result<Result<V, FetchError>, K> {
        let waited = tokio::time::timeout_at(self.ends_by, wait(self.result.clone())).await;
        if let Ok(result) = waited {
            return Ok(result);
        }
        // A result that came as the time ran out is as good as any.
        if let Some(result) = self.result.borrow().clone() {
            return Ok(result);
        }
        if let Some(cache) = self.cache.upgrade() {
            cache.in_flight.give_up(&self.key, &self.result);
        }
        Err(self.key)
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
        purpose: Purpose,
    ) -> Result<
        Flight<K, V, S, impl Future<Output = Result<V, FetchError>> + Send + 'static>,
        FetchError,
    > {
        let fetcher = self
            .fetcher
            .load_full()
            .ok_or(FetchError::NoFetcher)?
            .0
            .clone();
        // A background refresh starts nothing for a key the refresher no
        // longer holds (removed, or written since it was taken): a cheap
        // look first.
        if purpose == Purpose::Refresh && self.store.read_held(&key, |_| ()).is_none() {
            return Ok(Flight::Gone);
        }
        // Cloned before the map's lock, and the landing made right after the
        // slot, so that no user code runs between the two: a panic there
        // would leave a slot whose sender is gone, and every later caller
        // of the key would get `Cancelled`.
        let landing_key = key.clone();
        let claim = self.in_flight.join_or_claim(key.clone(), || {
            ends_by(self.settings.load().refresh_timeout)
        });
        let (publish, landing, fence) = match claim {
            FlightClaim::Joined(result, ends_by) => {
                return Ok(Flight::Joined(Joined {
                    result,
                    cache: Arc::downgrade(self),
                    key,
                    ends_by,
                }));
            }
            FlightClaim::Claimed {
                publish,
                receiver,
                fence,
            } => {
                let landing = FlightLanding {
                    cache: Arc::downgrade(self),
                    key: landing_key,
                    receiver,
                };
                (publish, landing, fence)
            }
        };
        // What the fetch starts from, read once the flight is in the map:
        // a removal from then on either fences it or is seen here.
        let start = match purpose {
            Purpose::Refresh => self
                .store
                .read_held(&key, |node| (node.value.clone(), node.version())),
            Purpose::Load => {
                let found = self.store.read(&key, |node| {
                    let servable = self.is_servable(node);
                    (node.value.clone(), node.version(), servable)
                });
                if let Some((value, _, true)) = found {
                    // Written since the caller's miss: that value is the
                    // answer, for whoever joined too, and nothing is
                    // fetched (it would overwrite the write).
                    drop(landing);
                    publish.send_replace(Some(Ok(value.clone())));
                    return Ok(Flight::Found(value));
                }
                found.map(|(value, version, _)| (value, version))
            }
            Purpose::Forced => self
                .store
                .read(&key, |node| (node.value.clone(), node.version())),
        };
        if purpose == Purpose::Refresh && start.is_none() {
            // Removed or written since the look: leave the map, unless
            // someone joined meanwhile; then fetch for them, fenced, so
            // that nothing is stored.
            if self
                .in_flight
                .leave_unjoined(&key, &landing.receiver, &publish)
            {
                return Ok(Flight::Gone);
            }
            fence.store(true, Ordering::SeqCst);
        }
        let timeout = self.settings.load().refresh_timeout;
        // One span per fetch, at DEBUG; its fields are formatted only if a
        // subscriber wants it.
        let span = tracing::debug_span!(
            "swr_cache.fetch",
            cache = self.name.as_deref().unwrap_or("default"),
            key = %self.describe(&key),
            purpose = ?purpose,
            outcome = tracing::field::Empty,
            elapsed_ms = tracing::field::Empty,
        );
        let traced = span.clone();
        let drive = async move {
            let current = start.as_ref().map(|(value, _)| value.clone());
            let from = start.map(|(_, version)| version);
            let timed = cfg!(feature = "metrics") || !traced.is_disabled();
            let began = timed.then(std::time::Instant::now);
            let outcome = run_fetch(fetcher.fetch(key, current), timeout).await;
            if let Some(began) = began {
                let seconds = began.elapsed().as_secs_f64();
                traced.record("outcome", outcome_name(&outcome));
                traced.record("elapsed_ms", seconds * 1e3);
                #[cfg(feature = "metrics")]
                if let Some(cache) = landing.cache.upgrade() {
                    let refresh = from.is_some() || purpose == Purpose::Refresh;
                    cache.export.fetched(refresh, &outcome, seconds);
                }
            }
            let result = match landing.cache.upgrade() {
                // User code storing the result (the weigher; the key's or
                // value's Clone, Eq, Hash, Drop) may panic: the store is
                // consistent then (it runs before the shard changes, or
                // after), and the panic is the fetch's failure, counted and
                // backed off like the fetcher's own.
                Some(cache) => catch_unwind(AssertUnwindSafe(|| {
                    cache.install(&landing.key, from, outcome, &fence, purpose)
                }))
                .unwrap_or_else(|panic| {
                    let panicked = FetchError::Panicked(panic_message(&*panic));
                    cache.install(&landing.key, from, Err(panicked), &fence, purpose)
                }),
                None => Err(FetchError::Cancelled),
            };
            // Leave the map before publishing, so a caller who sees the
            // result and asks again starts a new fetch rather than joining
            // this finished one.
            drop(landing);
            publish.send_replace(Some(result.clone()));
            result
        };
        Ok(Flight::Started(drive.instrument(span)))
    }

    /// Installs a fetch's outcome and counts it; returns the value the cache
    /// now holds for the key (a newer write's, if one won), or the error.
    /// `from` is the version the fetch started from, `None` for a load.
    /// A failure counts as a refresh's if the fetch was the refresher's
    /// (even when its key was removed as it started and it stores
    /// nothing) or started from a cached value, else as a load's.
    pub(crate) fn install(
        &self,
        key: &K,
        from: Option<Version>,
        outcome: Result<Fetched<V>, FetchError>,
        fence: &AtomicBool,
        purpose: Purpose,
    ) -> Result<V, FetchError> {
        let fetched = match outcome {
            Ok(fetched) => fetched,
            Err(error) => {
                self.counters.incr(match (from, purpose) {
                    (None, Purpose::Load | Purpose::Forced) => Counter::LoadErrors,
                    _ => Counter::RefreshErrors,
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
                return Err(error);
            }
        };
        let Some(from) = from else {
            return match fetched {
                Fetched::Value(value) => {
                    if self.is_disabled() {
                        return Ok(value);
                    }
                    // Only if still absent and not fenced: a write or an
                    // invalidation meanwhile wins.
                    match self.write_fenced(key.clone(), value.clone(), Write::IfAbsent, fence) {
                        // Stored and at once evicted for its weight, as an
                        // insert is (counted as one, and an eviction): a
                        // load all the same, not a discard.
                        Written::Refused(_, _, Refusal::Overweight) => {
                            self.counters.incr(Counter::Loads);
                            Ok(value)
                        }
                        Written::Refused(..) => {
                            self.counters.incr(Counter::Discarded);
                            Ok(self.store.read(key, |n| n.value.clone()).unwrap_or(value))
                        }
                        Written::Added | Written::Replaced => {
                            self.counters.incr(Counter::Loads);
                            Ok(value)
                        }
                    }
                }
                Fetched::Unchanged => {
                    self.counters.incr(Counter::LoadErrors);
                    tracing::warn!("fetcher answered Unchanged for a key the cache does not hold");
                    Err(FetchError::NothingToKeep)
                }
                Fetched::Gone => {
                    self.counters.incr(Counter::Gone);
                    Err(FetchError::Gone)
                }
            };
        };
        let (update, fresh) = match fetched {
            Fetched::Value(value) => {
                let weight = self.weigh(key, &value);
                (
                    Install::Value(key.clone(), value.clone(), weight),
                    Some(value),
                )
            }
            Fetched::Unchanged => (Install::Renew, None),
            Fetched::Gone => {
                self.counters.incr(Counter::Gone);
                // Only the entry fetched from: a newer write stands.
                if let Some(node) = self.store.remove(key, |n| n.version() == from) {
                    let mut removed = Removed::new();
                    removed.push(node, RemovalCause::Gone);
                    self.count_removed(&removed);
                    self.report(removed);
                }
                return Err(FetchError::Gone);
            }
        };
        let mut removed = Removed::new();
        let installed = self
            .store
            .install(key, from, update, self.write_stamp(), &mut removed);
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
                    None => self
                        .store
                        .read(key, |n| n.value.clone())
                        .ok_or(FetchError::NothingToKeep),
                }
            }
            Installed::Superseded(stale) => {
                self.counters.incr(Counter::Discarded);
                drop(stale);
                // Removed meanwhile (it stays removed), or a newer write won.
                match self.store.read(key, |n| n.value.clone()) {
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
}

/// Removes a flight from the map when its fetch ends or is dropped, unless
/// a fence removed it already (and another flight of the key may be there).
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
            cache.in_flight.leave(&self.key, &self.receiver);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Cache;

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
        let _ = cache
            .inner
            .install(&1, None, timed_out(), &fence, Purpose::Refresh);
        let _ = cache
            .inner
            .install(&1, None, timed_out(), &fence, Purpose::Load);
        let m = cache.metrics();
        assert_eq!((m.refresh_errors, m.load_errors), (1, 1), "{m}");
    }
}
