//! Single flight: at most one fetch per key at a time, shared by everyone who
//! asks for that key meanwhile (the refresher, [`Cache::refresh`] and
//! [`Cache::get_or_fetch`]). The flight's driver fetches, installs the
//! result (`install.rs` says what a fetch may install) and publishes it to
//! whoever joined.
//!
//! # Who joins a flight, and what it starts from
//!
//! - A flight reads what it starts from (the cached value and its version,
//!   or none for a load) only once it is in the map of flights. A
//!   `get_or_fetch` whose key was written between its miss and its
//!   flight's start fetches nothing: that value is its answer.
//! - A removal of the key *fences* the flight: it installs nothing, and
//!   leaves the map of flights at once (`clear` only flags it, and the next
//!   caller replaces it), so a caller who asks after the removal starts a
//!   new fetch instead of joining the old one and getting its value. A
//!   removal fences before and after it removes the entry, so no flight
//!   that read the removed entry can be joined after.
//! - The background refresher never loads: it fetches only entries it holds
//!   (see `refresh/held.rs`), and a key no longer held when its flight would
//!   start is left alone.
//!
//! [`Cache::refresh`]: crate::Cache::refresh
//! [`Cache::get_or_fetch`]: crate::Cache::get_or_fetch

use std::future::Future;
use std::hash::{BuildHasher, Hash};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::Duration;

use tokio::time::Instant;

use tracing::Instrument;

use super::fetcher::{FetchError, Fetched, panic_message, run_fetch};
use super::in_flight::{FlightClaim, FlightReceiver};
use crate::inner::Inner;

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
        Err(FetchError::LeftOut) => "left_out",
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
            .fetch
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
            let by_refresher = purpose == Purpose::Refresh;
            let timed = cfg!(feature = "metrics") || !traced.is_disabled();
            let began = timed.then(std::time::Instant::now);
            let outcome = run_fetch(fetcher.fetch(key, current), timeout).await;
            if let Some(began) = began {
                let seconds = began.elapsed().as_secs_f64();
                traced.record("outcome", outcome_name(&outcome));
                traced.record("elapsed_ms", seconds * 1e3);
                #[cfg(feature = "metrics")]
                if let Some(cache) = landing.cache.upgrade() {
                    let refresh = from.is_some() || by_refresher;
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
                    cache.install(&landing.key, from, outcome, &fence, by_refresher)
                }))
                .unwrap_or_else(|panic| {
                    let panicked = FetchError::Panicked(panic_message(&*panic));
                    cache.install(&landing.key, from, Err(panicked), &fence, by_refresher)
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
