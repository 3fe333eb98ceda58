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

/// Entries taken out of the store under a shard lock, to be handed to the
/// listener (or dropped) once every lock is released. The first needs no
/// allocation: most writes remove at most one entry.
pub(crate) struct Removed<K, V> {
    first: Option<(K, V, RemovalCause)>,
    rest: Vec<(K, V, RemovalCause)>,
}

impl<K, V> Removed<K, V> {
    pub(crate) const fn new() -> Self {
        Self {
            first: None,
            rest: Vec::new(),
        }
    }

    pub(crate) fn push(&mut self, key: K, value: V, cause: RemovalCause) {
        if self.first.is_none() {
            self.first = Some((key, value, cause));
        } else {
            self.rest.push((key, value, cause));
        }
    }

    pub(crate) fn reserve(&mut self, additional: usize) {
        self.rest.reserve(additional);
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.first.is_none()
    }

    /// How many entries were removed for `cause`.
    pub(crate) fn count(&self, cause: RemovalCause) -> u64 {
        self.iter().filter(|(_, _, c)| *c == cause).count() as u64
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = &(K, V, RemovalCause)> {
        self.first.iter().chain(self.rest.iter())
    }

    pub(crate) fn into_iter(self) -> impl Iterator<Item = (K, V, RemovalCause)> {
        self.first.into_iter().chain(self.rest)
    }
}
