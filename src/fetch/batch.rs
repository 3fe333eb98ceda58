//! Batched fetches: [`BatchFetcher`], and the [`Batcher`] that gathers the
//! cache's one-key fetches into calls of many.
//!
//! The rest of the cache fetches one key at a time, each in its own flight
//! (with its own fence, version and outcome for the breaker). A batcher is
//! a one-key fetcher to them: a fetch joins the batch being gathered and
//! waits for its key's part of the answer. A batch is called when it holds
//! `max_batch` keys, or `window` after its first key joined, whichever
//! comes first (each of its fetches watches the window, and the first to
//! see it closed calls the batch), in a task of its own; so the refresher's keys, started
//! together, fill whole batches, and read-through misses within a window
//! share a call.
//!
//! A key the answer leaves out gets [`FetchError::LeftOut`]; an error, a
//! panic or a timeout of the call, every key's. A call is dropped
//! (cancelled) once every key's fetch has given up on it (each times out
//! by its own `refresh_timeout`).

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::error::Error as StdError;
use std::future::{Future, poll_fn};
use std::hash::Hash;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::Poll;

use tokio::sync::oneshot;
use tokio::time::Instant;

use super::fetcher::{DynFetcher, FetchError, FetchFuture, Fetched, panic_as_error};
use crate::settings::Batching;

/// Fetches many keys in one call; given to
/// [`CacheBuilder::batch_fetcher_impl`](crate::CacheBuilder::batch_fetcher_impl).
///
/// Each key comes with the value the cache holds for it, if any, so the
/// answer may say [`Fetched::Unchanged`] or [`Fetched::Gone`] per key. A key
/// the answer leaves out is a failed fetch of that key
/// ([`FetchError::LeftOut`]: a refresh keeps the stale value and backs
/// off); an error fails every key of the batch. A key answered twice counts
/// its last answer; a key not asked for is ignored.
///
/// ```
/// use std::convert::Infallible;
/// use swr_cache::{BatchFetcher, Fetched};
///
/// /// Revalidates many prompts in one round trip, by version.
/// struct Prompts;
///
/// impl BatchFetcher<String, (u64, String)> for Prompts {
///     type Error = Infallible;
///
///     async fn fetch_batch(
///         &self,
///         batch: Vec<(String, Option<(u64, String)>)>,
///     ) -> Result<Vec<(String, Fetched<(u64, String)>)>, Infallible> {
///         let upstream_version = 7; // one request for every key here
///         Ok(batch
///             .into_iter()
///             .map(|(key, current)| match current {
///                 Some((version, _)) if version == upstream_version => (key, Fetched::Unchanged),
///                 _ => {
///                     let body = format!("body of {key}");
///                     (key, Fetched::Value((upstream_version, body)))
///                 }
///             })
///             .collect())
///     }
/// }
/// ```
pub trait BatchFetcher<K, V>: Send + Sync + 'static {
    /// Why a call failed: every key of the batch failed with it.
    type Error: Into<Box<dyn StdError + Send + Sync>>;

    /// Fetches every key of `batch` (each once), with its cached value if
    /// any; answers per key.
    fn fetch_batch(
        &self,
        batch: Vec<(K, Option<V>)>,
    ) -> impl Future<Output = Result<Vec<(K, Fetched<V>)>, Self::Error>> + Send;
}

type BatchFuture<K, V> =
    Pin<Box<dyn Future<Output = Result<Vec<(K, Fetched<V>)>, FetchError>> + Send>>;

/// A batch fetcher with its types erased.
pub(crate) trait DynBatchFetcher<K, V>: Send + Sync {
    fn fetch_batch(self: Arc<Self>, batch: Vec<(K, Option<V>)>) -> BatchFuture<K, V>;
}

/// A [`BatchFetcher`] as the batcher calls it.
pub(crate) struct TraitBatch<F>(pub(crate) F);

impl<K, V, F> DynBatchFetcher<K, V> for TraitBatch<F>
where
    K: Send + 'static,
    V: Send + 'static,
    F: BatchFetcher<K, V>,
{
    fn fetch_batch(self: Arc<Self>, batch: Vec<(K, Option<V>)>) -> BatchFuture<K, V> {
        Box::pin(async move { self.0.fetch_batch(batch).await.map_err(FetchError::failed) })
    }
}

/// An async closure from keys to the values found, as the batcher calls it.
pub(crate) struct FnBatch<F>(pub(crate) F);

impl<K, V, F, Fut, E> DynBatchFetcher<K, V> for FnBatch<F>
where
    F: Fn(Vec<K>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Vec<(K, V)>, E>> + Send + 'static,
    E: Into<Box<dyn StdError + Send + Sync>>,
    K: Send + 'static,
    V: Send + 'static,
{
    fn fetch_batch(self: Arc<Self>, batch: Vec<(K, Option<V>)>) -> BatchFuture<K, V> {
        // Called in the first poll, so a panic before the closure returns
        // its future is caught like one inside it.
        Box::pin(async move {
            let keys = batch.into_iter().map(|(key, _)| key).collect();
            match (self.0)(keys).await {
                Ok(found) => Ok(found
                    .into_iter()
                    .map(|(key, value)| (key, Fetched::Value(value)))
                    .collect()),
                Err(e) => Err(FetchError::failed(e)),
            }
        })
    }
}

/// Where one key's fetch waits for its part of a batch's answer.
type Answer<V> = oneshot::Sender<Result<Fetched<V>, FetchError>>;

/// A key's fetch waiting in the batch being gathered.
struct Waiting<K, V> {
    key: K,
    current: Option<V>,
    answer: Answer<V>,
}

/// The batch being gathered.
struct Gathering<K, V> {
    waiting: Vec<Waiting<K, V>>,
    /// Counts the batches called, so that a fetch whose window closed
    /// knows whether its batch went already (full, or closed by another).
    round: u64,
    /// When the batch's window closes: set by its first key.
    closes_at: Instant,
}

/// Gathers one-key fetches into calls of a batch fetcher; to the cache, a
/// one-key fetcher like any other.
pub(crate) struct Batcher<K, V> {
    fetch: Arc<dyn DynBatchFetcher<K, V>>,
    batching: Batching,
    /// Only pushed to and taken whole under the lock: no user code runs
    /// under it (keys are hashed and compared once the batch is out).
    gathering: Mutex<Gathering<K, V>>,
}

impl<K, V> Batcher<K, V>
where
    K: Hash + Eq + Clone + Send + 'static,
    V: Clone + Send + Sync + 'static,
{
    pub(crate) fn new(fetch: Arc<dyn DynBatchFetcher<K, V>>, batching: Batching) -> Self {
        Self {
            fetch,
            batching: Batching {
                max_batch: batching.max_batch.max(1),
                ..batching
            },
            gathering: Mutex::new(Gathering {
                waiting: Vec::new(),
                round: 0,
                closes_at: Instant::now(),
            }),
        }
    }

    /// The most keys in one call.
    pub(crate) fn max_batch(&self) -> usize {
        self.batching.max_batch
    }

    /// Adds a key's fetch to the batch being gathered, and calls the batch
    /// if it is full now; else returns the batch's round and when its
    /// window closes.
    fn join(self: &Arc<Self>, waiting: Waiting<K, V>) -> Option<(u64, Instant)> {
        let (full, round, closes_at) = {
            // Pushes and takes leave the batch whole: a poisoned lock (a
            // panic in the allocator) holds nothing half-written.
            let mut gathering = self
                .gathering
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if gathering.waiting.is_empty() {
                gathering.closes_at = Instant::now() + self.batching.window;
            }
            gathering.waiting.push(waiting);
            let (round, closes_at) = (gathering.round, gathering.closes_at);
            let full = (gathering.waiting.len() >= self.batching.max_batch)
                .then(|| self.take(&mut gathering));
            (full, round, closes_at)
        };
        match full {
            Some(batch) => {
                tokio::spawn(Arc::clone(self).call(batch));
                None
            }
            None => Some((round, closes_at)),
        }
    }

    /// Calls the batch of `round` if it is still being gathered: its window
    /// closed. Any of its keys' fetches may close it (whichever wakes
    /// first), so it goes even if the one that opened it was dropped.
    fn close(self: &Arc<Self>, round: u64) {
        let batch = {
            let mut gathering = self
                .gathering
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            (gathering.round == round).then(|| self.take(&mut gathering))
        };
        if let Some(batch) = batch {
            tokio::spawn(Arc::clone(self).call(batch));
        }
    }

    /// Takes the batch being gathered, to call it; the next round begins.
    fn take(&self, gathering: &mut Gathering<K, V>) -> Vec<Waiting<K, V>> {
        gathering.round += 1;
        std::mem::take(&mut gathering.waiting)
    }

    /// Calls the batch fetcher once for `batch`, and answers each key.
    async fn call(self: Arc<Self>, batch: Vec<Waiting<K, V>>) {
        // Each key once, in the order they came, with the cached value of
        // the last of its fetches to join: a key fenced while it waited may
        // be here twice, one fetch from a flight started after the fence
        // (which may join first or last).
        let mut place: HashMap<K, usize> = HashMap::with_capacity(batch.len());
        let mut asked: Vec<(K, Option<V>)> = Vec::with_capacity(batch.len());
        // Each fetch's answer, and its key's place in `asked`.
        let mut answers: Vec<(Answer<V>, usize)> = Vec::with_capacity(batch.len());
        for Waiting {
            key,
            current,
            answer,
        } in batch
        {
            let at = match place.entry(key) {
                Entry::Occupied(seen) => {
                    asked[*seen.get()].1 = current;
                    *seen.get()
                }
                Entry::Vacant(new) => {
                    asked.push((new.key().clone(), current));
                    *new.insert(asked.len() - 1)
                }
            };
            answers.push((answer, at));
        }
        // The value each key of several fetches was asked with: an
        // `Unchanged` vouches for it, not for the others' values.
        let mut last_of = vec![0; asked.len()];
        let mut fetches = vec![0_usize; asked.len()];
        for (i, &(_, at)) in answers.iter().enumerate() {
            last_of[at] = i;
            fetches[at] += 1;
        }
        let asked_with: HashMap<usize, Option<V>> = (0..asked.len())
            .filter(|&at| fetches[at] > 1)
            .map(|at| (at, asked[at].1.clone()))
            .collect();
        let span = tracing::debug_span!("swr_cache.fetch_batch", keys = asked.len());
        let mut call = std::pin::pin!(panic_as_error(tracing::Instrument::instrument(
            Arc::clone(&self.fetch).fetch_batch(asked),
            span
        )));
        let outcome = poll_fn(|cx| {
            if let Poll::Ready(outcome) = call.as_mut().poll(cx) {
                return Poll::Ready(Some(outcome));
            }
            // Dropped, so cancelled, once no fetch waits for it.
            let mut all_gone = true;
            for (answer, _) in &mut answers {
                all_gone &= answer.poll_closed(cx).is_ready();
            }
            if all_gone {
                Poll::Ready(None)
            } else {
                Poll::Pending
            }
        })
        .await;
        let Some(outcome) = outcome else {
            return;
        };
        let mut results: Vec<Option<Result<Fetched<V>, FetchError>>> = match outcome {
            Ok(answered) => {
                let mut results: Vec<_> = (0..place.len()).map(|_| None).collect();
                // A key answered twice counts its last answer; one not
                // asked for is ignored.
                for (key, fetched) in answered {
                    if let Some(&at) = place.get(&key) {
                        results[at] = Some(Ok(fetched));
                    }
                }
                results
            }
            Err(error) => (0..place.len()).map(|_| Some(Err(error.clone()))).collect(),
        };
        // A result is cloned only for a key asked for twice: moved to the
        // last of its fetches, whose value it was asked with. The others
        // get an `Unchanged` as the value it vouches for (as a one-key
        // fetch from their own would), or none to keep.
        for (i, (answer, at)) in answers.into_iter().enumerate() {
            let result = if last_of[at] == i {
                results[at].take()
            } else {
                match results[at].clone() {
                    Some(Ok(Fetched::Unchanged)) => Some(match asked_with.get(&at) {
                        Some(Some(value)) => Ok(Fetched::Value(value.clone())),
                        _ => Err(FetchError::NothingToKeep),
                    }),
                    other => other,
                }
            };
            // A fetch that gave up (timed out) no longer listens.
            let _ = answer.send(result.unwrap_or(Err(FetchError::LeftOut)));
        }
    }
}

impl<K, V> DynFetcher<K, V> for Batcher<K, V>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
{
    fn fetch(self: Arc<Self>, key: K, current: Option<V>) -> FetchFuture<V> {
        Box::pin(async move {
            let (answer, mut answered) = oneshot::channel();
            let mut gathering = self.join(Waiting {
                key,
                current,
                answer,
            });
            // Each key's fetch watches its batch's window itself, so the
            // batch goes on time whichever of its fetches are dropped, and
            // on a runtime that is driven (this one).
            let mut window = std::pin::pin!(tokio::time::sleep_until(
                gathering.map_or_else(Instant::now, |(_, closes_at)| closes_at)
            ));
            poll_fn(|cx| {
                if let Some((round, _)) = gathering
                    && window.as_mut().poll(cx).is_ready()
                {
                    gathering = None;
                    self.close(round);
                }
                // Dropped unanswered: the call's task was dropped with its
                // runtime, or panicked on the keys' own code (Hash, Eq).
                Pin::new(&mut answered)
                    .poll(cx)
                    .map(|answer| answer.unwrap_or(Err(FetchError::Cancelled)))
            })
            .await
        })
    }
}
