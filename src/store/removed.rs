//! What a store call took out, for the caller to report or drop once the
//! shard's lock is released.

use super::published::{RetiredTables, Unlinked};
use crate::removal::RemovalCause;

/// An entry taken out: a node readers may still be reading (retired to the
/// collector when dropped), or a key and value no reader ever saw.
pub(crate) enum Taken<'s, K, V> {
    Node(Unlinked<'s, K, V>),
    Pair(K, V),
}

impl<K, V> Taken<'_, K, V> {
    pub(crate) fn key(&self) -> &K {
        match self {
            Self::Node(node) => &node.key,
            Self::Pair(key, _) => key,
        }
    }

    pub(crate) fn value(&self) -> &V {
        match self {
            Self::Node(node) => &node.value,
            Self::Pair(_, value) => value,
        }
    }

    /// The key and value by value: a node's are cloned (readers may still
    /// hold its own), a pair's moved.
    pub(crate) fn into_pair(self) -> (K, V)
    where
        K: Clone,
        V: Clone,
    {
        match self {
            Self::Node(node) => (node.key.clone(), node.value.clone()),
            Self::Pair(key, value) => (key, value),
        }
    }
}

impl<'s, K, V> From<Unlinked<'s, K, V>> for Taken<'s, K, V> {
    fn from(node: Unlinked<'s, K, V>) -> Self {
        Self::Node(node)
    }
}

/// Entries taken out of the store under a shard lock, to be handed to the
/// listener (or dropped) once every lock is released. The first needs no
/// allocation: most writes remove at most one entry.
pub(crate) struct Removed<'s, K, V> {
    first: Option<(Taken<'s, K, V>, RemovalCause)>,
    rest: Vec<(Taken<'s, K, V>, RemovalCause)>,
    /// Old tables of shards a caller held together (a resize), retired
    /// when this drops, after the caller's locks.
    tables: Vec<RetiredTables<'s, K, V>>,
}

impl<'s, K, V> Removed<'s, K, V> {
    pub(crate) const fn new() -> Self {
        Self {
            first: None,
            rest: Vec::new(),
            tables: Vec::new(),
        }
    }

    /// Keeps old tables to retire when this drops.
    pub(crate) fn push_tables(&mut self, tables: RetiredTables<'s, K, V>) {
        self.tables.push(tables);
    }

    pub(crate) fn push(&mut self, taken: impl Into<Taken<'s, K, V>>, cause: RemovalCause) {
        let item = (taken.into(), cause);
        if self.first.is_none() {
            self.first = Some(item);
        } else {
            self.rest.push(item);
        }
    }

    /// [`Removed::push`] of a key and value no reader saw.
    pub(crate) fn push_pair(&mut self, key: K, value: V, cause: RemovalCause) {
        self.push(Taken::Pair(key, value), cause);
    }

    pub(crate) fn reserve(&mut self, additional: usize) {
        self.rest.reserve(additional);
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.first.is_none()
    }

    /// How many entries were removed for `cause`.
    pub(crate) fn count(&self, cause: RemovalCause) -> u64 {
        self.iter().filter(|(_, c)| *c == cause).count() as u64
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = &(Taken<'s, K, V>, RemovalCause)> {
        self.first.iter().chain(self.rest.iter())
    }

    /// The entries; the old tables, if any, are retired at once (the
    /// caller's locks are released by now).
    pub(crate) fn into_iter(self) -> impl Iterator<Item = (Taken<'s, K, V>, RemovalCause)> {
        let Self { first, rest, .. } = self;
        first.into_iter().chain(rest)
    }
}
