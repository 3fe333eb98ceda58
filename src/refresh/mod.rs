//! Refreshing: the cache's side of the refresher (`requests`: where stale
//! reads ask for refreshes, and the task's handle), the task that fetches
//! them (`task`), what it holds (`held`), how many it fetches at once
//! (`limit`), when it stops for an outage (`breaker`), how long a failing
//! key waits (`backoff`), and what operators see of it (`state`).

pub(crate) mod backoff;
mod breaker;
mod held;
mod limit;
pub(crate) mod requests;
mod state;
pub(crate) mod task;

pub(crate) use state::Gauges;
pub use state::{BreakerState, RefresherState};

/// Why [`Cache::start`](crate::Cache::start) could not start the refresher.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum StartError {
    /// Not called from inside a tokio runtime; use
    /// [`Cache::start_on`](crate::Cache::start_on).
    NoRuntime,
    /// The cache has no fetcher, so there is nothing to refresh with.
    NoFetcher,
    /// [`Cache::start_thread`](crate::Cache::start_thread) could not make
    /// the refresher's thread and runtime; why.
    NoThread(String),
}

impl std::fmt::Display for StartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::NoRuntime => f.write_str("not inside a tokio runtime; use start_on"),
            Self::NoFetcher => f.write_str("the cache has no fetcher to refresh with"),
            Self::NoThread(why) => write!(f, "no thread for the refresher: {why}"),
        }
    }
}

impl std::error::Error for StartError {}
