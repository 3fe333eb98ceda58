//! The source of truth behind a cache: [`Fetcher`], its answers and its errors.
//!
//! A fetcher is given to the builder either as a plain async closure,
//! [`CacheBuilder::fetcher`](crate::CacheBuilder::fetcher)`(|key| async move
//! { ... })` returning `Result<V, E>`, or as a type implementing [`Fetcher`],
//! [`CacheBuilder::fetcher_impl`](crate::CacheBuilder::fetcher_impl), whose
//! method also receives the value the cache holds now, so it can answer
//! [`Fetched::Unchanged`] (like an HTTP 304 on a commit hash): the entry's age
//! starts over and its value stays.

use std::any::Any;
use std::error::Error as StdError;
use std::fmt;
use std::future::Future;
use std::hash::Hash;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use super::batch::{Batcher, DynBatchFetcher};
use crate::settings::Batching;

/// What a [`Fetcher`] answers for a key.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Fetched<V> {
    /// A new value: it replaces the cached one.
    Value(V),
    /// The cached value is still right: its age starts over. Answered for a
    /// key with no cached value, it is an error ([`FetchError::NothingToKeep`]).
    Unchanged,
    /// The key no longer exists at the source: the cached entry, if it is
    /// still the one fetched from, is removed (the listener hears
    /// [`RemovalCause::Gone`](crate::RemovalCause::Gone)), and whoever waits
    /// on the fetch gets [`FetchError::Gone`].
    Gone,
}

/// Fetches the value for a key from wherever it comes from; given to
/// [`CacheBuilder::fetcher_impl`](crate::CacheBuilder::fetcher_impl) or
/// [`Cache::set_fetcher_impl`](crate::Cache::set_fetcher_impl).
///
/// ```
/// use std::convert::Infallible;
/// use swr_cache::{Fetched, Fetcher};
///
/// /// Answers "unchanged" when the upstream version is the cached one.
/// struct Versioned;
///
/// impl Fetcher<String, (u64, String)> for Versioned {
///     type Error = Infallible;
///
///     async fn fetch(
///         &self,
///         key: &String,
///         current: Option<&(u64, String)>,
///     ) -> Result<Fetched<(u64, String)>, Infallible> {
///         let upstream_version = 7; // ask the upstream for its version here
///         match current {
///             Some((version, _)) if *version == upstream_version => Ok(Fetched::Unchanged),
///             _ => Ok(Fetched::Value((upstream_version, format!("body of {key}")))),
///         }
///     }
/// }
/// ```
pub trait Fetcher<K, V>: Send + Sync + 'static {
    /// Why a fetch failed; logged and counted, the stale value is kept.
    type Error: Into<Box<dyn StdError + Send + Sync>>;

    /// Fetches `key`; `current` is the cached value, if any.
    fn fetch(
        &self,
        key: &K,
        current: Option<&V>,
    ) -> impl Future<Output = Result<Fetched<V>, Self::Error>> + Send;
}

/// Why a fetch gave no value. Cheap to clone: every caller waiting on one
/// fetch gets the same error.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum FetchError {
    /// The fetcher returned an error.
    Failed(Arc<dyn StdError + Send + Sync>),
    /// The fetcher took longer than `refresh_timeout`; it was cancelled.
    TimedOut(Duration),
    /// The fetcher panicked, or user code on its result did (the weigher,
    /// or the key's or value's `Clone`, `Eq`, `Hash` or `Drop` while the
    /// result was stored); the panic was caught.
    Panicked(String),
    /// The fetcher answered [`Fetched::Unchanged`] for a key the cache did
    /// not hold.
    NothingToKeep,
    /// The fetcher answered [`Fetched::Gone`]: the key no longer exists at
    /// its source, and is not cached.
    Gone,
    /// The [`BatchFetcher`](crate::BatchFetcher)'s answer left the key out.
    LeftOut,
    /// The cache was built without a fetcher.
    NoFetcher,
    /// Called outside a tokio runtime.
    NoRuntime,
    /// The fetch was abandoned before it finished: the refresher was stopped
    /// or the runtime shut down.
    Cancelled,
}

impl fmt::Display for FetchError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Failed(e) => write!(f, "fetch failed: {e}"),
            Self::TimedOut(after) => write!(f, "fetch timed out after {after:?}"),
            Self::Panicked(message) => write!(f, "fetch panicked: {message}"),
            Self::NothingToKeep => f.write_str("fetcher answered Unchanged for an uncached key"),
            Self::Gone => f.write_str("the key no longer exists at its source"),
            Self::LeftOut => f.write_str("the batch fetcher's answer left the key out"),
            Self::NoFetcher => f.write_str("the cache has no fetcher"),
            Self::NoRuntime => f.write_str("not inside a tokio runtime"),
            Self::Cancelled => f.write_str("fetch cancelled"),
        }
    }
}

impl FetchError {
    /// A fetcher's own error, as every waiter on its fetch gets it.
    pub(crate) fn failed(error: impl Into<Box<dyn StdError + Send + Sync>>) -> Self {
        Self::Failed(Arc::from(error.into()))
    }
}

impl StdError for FetchError {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        match self {
            Self::Failed(e) => Some(&**e),
            _ => None,
        }
    }
}

pub(crate) type FetchFuture<V> =
    Pin<Box<dyn Future<Output = Result<Fetched<V>, FetchError>> + Send>>;

/// A fetcher with its types erased, as the cache stores it.
pub(crate) trait DynFetcher<K, V>: Send + Sync {
    fn fetch(self: Arc<Self>, key: K, current: Option<V>) -> FetchFuture<V>;
}

struct TraitFetcher<F>(F);

impl<K, V, F> DynFetcher<K, V> for TraitFetcher<F>
where
    K: Send + 'static,
    V: Send + Sync + 'static,
    F: Fetcher<K, V>,
{
    fn fetch(self: Arc<Self>, key: K, current: Option<V>) -> FetchFuture<V> {
        Box::pin(async move {
            self.0
                .fetch(&key, current.as_ref())
                .await
                .map_err(FetchError::failed)
        })
    }
}

struct FnFetcher<F>(F);

impl<K, V, F, Fut, E> DynFetcher<K, V> for FnFetcher<F>
where
    F: Fn(K) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<V, E>> + Send + 'static,
    E: Into<Box<dyn StdError + Send + Sync>>,
    K: Send + 'static,
    V: Send + 'static,
{
    fn fetch(self: Arc<Self>, key: K, _current: Option<V>) -> FetchFuture<V> {
        // The closure is called in the first poll, not here, so that a panic
        // before it returns its future is caught like one inside it.
        Box::pin(async move {
            (self.0)(key)
                .await
                .map(Fetched::Value)
                .map_err(FetchError::failed)
        })
    }
}

struct BlockingFetcher<F>(F);

impl<K, V, F, E> DynFetcher<K, V> for BlockingFetcher<F>
where
    F: Fn(&K) -> Result<V, E> + Send + Sync + 'static,
    E: Into<Box<dyn StdError + Send + Sync>>,
    K: Send + 'static,
    V: Send + 'static,
{
    fn fetch(self: Arc<Self>, key: K, _current: Option<V>) -> FetchFuture<V> {
        Box::pin(async move {
            // On the runtime's blocking pool: a blocking fetcher never holds
            // up the refresher or a runtime worker. A timeout abandons the
            // wait, not the thread, which runs the closure to its end.
            let call = move || (self.0)(&key).map_err(Into::into);
            let called: Result<Result<V, Box<dyn StdError + Send + Sync>>, _> =
                tokio::task::spawn_blocking(call).await;
            match called {
                Ok(fetched) => fetched.map(Fetched::Value).map_err(FetchError::failed),
                Err(join) if join.is_panic() => {
                    Err(FetchError::Panicked(panic_message(&*join.into_panic())))
                }
                Err(_) => Err(FetchError::Cancelled),
            }
        })
    }
}

/// A fetcher ready to store: a closure, a [`Fetcher`] or a batch fetcher,
/// its types erased.
pub(crate) struct ErasedFetcher<K, V> {
    pub(crate) fetch: Arc<dyn DynFetcher<K, V>>,
    /// The most keys one call fetches: 1 but for a batch fetcher.
    pub(crate) batch: usize,
}

impl<K: Send + 'static, V: Send + Sync + 'static> ErasedFetcher<K, V> {
    /// From an async closure taking the key.
    pub(crate) fn from_fn<F, Fut, E>(fetch: F) -> Self
    where
        F: Fn(K) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<V, E>> + Send + 'static,
        E: Into<Box<dyn StdError + Send + Sync>>,
    {
        Self::one_by_one(Arc::new(FnFetcher(fetch)))
    }

    /// From a blocking closure taking the key.
    pub(crate) fn from_blocking<F, E>(fetch: F) -> Self
    where
        F: Fn(&K) -> Result<V, E> + Send + Sync + 'static,
        E: Into<Box<dyn StdError + Send + Sync>>,
    {
        Self::one_by_one(Arc::new(BlockingFetcher(fetch)))
    }

    /// From a [`Fetcher`].
    pub(crate) fn from_impl(fetcher: impl Fetcher<K, V>) -> Self {
        Self::one_by_one(Arc::new(TraitFetcher(fetcher)))
    }

    fn one_by_one(fetch: Arc<dyn DynFetcher<K, V>>) -> Self {
        Self { fetch, batch: 1 }
    }

    /// From a batch fetcher, its calls gathered as `batching` says.
    pub(crate) fn batched(fetch: Arc<dyn DynBatchFetcher<K, V>>, batching: Batching) -> Self
    where
        K: Hash + Eq + Clone + Sync,
        V: Clone,
    {
        let batcher = Batcher::new(fetch, batching);
        let batch = batcher.max_batch();
        Self {
            fetch: Arc::new(batcher),
            batch,
        }
    }
}

/// Runs a fetch to its end: a panic becomes [`FetchError::Panicked`], and a
/// fetch still running after `timeout` is dropped (cancelled) and becomes
/// [`FetchError::TimedOut`].
pub(crate) async fn run_fetch<V>(
    fetch: FetchFuture<V>,
    timeout: Duration,
) -> Result<Fetched<V>, FetchError> {
    match tokio::time::timeout(timeout, CatchUnwind(fetch)).await {
        Ok(Ok(result)) => result,
        Ok(Err(panic)) => Err(FetchError::Panicked(panic_message(&*panic))),
        Err(_elapsed) => Err(FetchError::TimedOut(timeout)),
    }
}

/// Runs `future` to its end; a panic inside it becomes
/// [`FetchError::Panicked`].
pub(crate) async fn panic_as_error<T>(
    future: impl Future<Output = Result<T, FetchError>>,
) -> Result<T, FetchError> {
    CatchUnwind(Box::pin(future))
        .await
        .unwrap_or_else(|panic| Err(FetchError::Panicked(panic_message(&*panic))))
}

/// Polls a boxed future, turning a panic inside a poll into an `Err`.
struct CatchUnwind<F>(Pin<Box<F>>)
where
    F: ?Sized;

impl<T, F: Future<Output = T> + ?Sized> Future for CatchUnwind<F> {
    type Output = Result<T, Box<dyn Any + Send>>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        // A future that panicked is never polled again: it is dropped with
        // the `Err`, so no broken state it may hold is observed.
        let inner = self.0.as_mut();
        match catch_unwind(AssertUnwindSafe(|| inner.poll(cx))) {
            Ok(Poll::Pending) => Poll::Pending,
            Ok(Poll::Ready(value)) => Poll::Ready(Ok(value)),
            Err(panic) => Poll::Ready(Err(panic)),
        }
    }
}

pub(crate) fn panic_message(panic: &(dyn Any + Send)) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "non-string panic payload".to_owned()
    }
}
