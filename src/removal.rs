//! Why an entry left the cache, and the eviction listener that hears of it.

use std::fmt;
use std::sync::Arc;

/// Why an entry left the cache, as the
/// [eviction listener](crate::CacheBuilder::eviction_listener) is told.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum RemovalCause {
    /// Removed by the eviction policy to make room (for the size or weight
    /// bound, or a `configure` that shrank it), or not admitted at all
    /// because it alone weighs more than its shard's share.
    Evicted,
    /// Removed by `invalidate`.
    Invalidated,
    /// Its value was replaced by an `insert` or a refresh; the old value is
    /// the one reported.
    Replaced,
    /// Removed by `clear`.
    Cleared,
    /// Removed because the fetcher answered [`Fetched::Gone`](crate::Fetched::Gone):
    /// the key no longer exists at its source.
    Gone,
}

impl RemovalCause {
    /// Whether the entry was removed by the policy rather than by a call
    /// naming it (`Evicted`).
    pub fn was_evicted(self) -> bool {
        matches!(self, Self::Evicted)
    }
}

impl fmt::Display for RemovalCause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Evicted => "evicted",
            Self::Invalidated => "invalidated",
            Self::Replaced => "replaced",
            Self::Cleared => "cleared",
            Self::Gone => "gone",
        })
    }
}

/// The user's listener, shared by every handle of a cache.
pub(crate) type Listener<K, V> = Arc<dyn Fn(K, V, RemovalCause) + Send + Sync>;

/// The user's weigher.
pub(crate) type Weigher<K, V> = Arc<dyn Fn(&K, &V) -> u64 + Send + Sync>;
