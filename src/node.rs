//! One cached entry ([`Node`]) and the immutable value it currently holds ([`Commit`]).
//!
//! A node lives from the insert of a new key until that key is invalidated,
//! cleared or evicted; overwrites and refreshes do not replace the node, they
//! swap a new [`Commit`] into it. The map and the eviction ring share the node
//! through an `Arc`. A refresh that started from one commit installs its result
//! only if that same commit is still current (pointer identity: the refresher
//! holds the old `Arc`, so its address cannot be reused meanwhile), so it never
//! overwrites a newer insert, and since it writes into the node, never into the
//! map, it cannot bring back a key that was removed.

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU32, Ordering};

use arc_swap::ArcSwap;

use crate::time::Nanos;

/// An immutable version of an entry's value.
pub(crate) struct Commit<V> {
    pub(crate) value: V,
    /// When the value was written or last confirmed unchanged.
    pub(crate) written_at: Nanos,
}

impl<V> Commit<V> {
    pub(crate) fn new(value: V, written_at: Nanos) -> Arc<Self> {
        Arc::new(Self { value, written_at })
    }

    /// Whether this commit is older than `ttl` at `now`; `ttl == 0` means
    /// "no TTL" (a TTL of zero is rejected at configuration).
    #[inline]
    pub(crate) fn is_stale(&self, now: Nanos, ttl: Nanos) -> bool {
        ttl != 0 && now.saturating_sub(self.written_at) > ttl
    }
}

// Bits of `Node::flags`.
/// Read since the clock hand last passed.
const REFERENCED: u8 = 1;
/// Queued for, or under, a background refresh.
const REFRESH_QUEUED: u8 = 1 << 1;
/// In the map. Cleared, under the shard's write lock, when the node is removed.
const LIVE: u8 = 1 << 2;
/// Removed from the map, or lost the race to be inserted: its ring slot is free.
const DEAD: u8 = 1 << 3;
// A node with neither LIVE nor DEAD is pending: it holds a ring slot and is
// about to be inserted into the map; the hand leaves it alone.

pub(crate) struct Node<K, V> {
    pub(crate) key: K,
    pub(crate) commit: ArcSwap<Commit<V>>,
    flags: AtomicU8,
    /// Index of the ring slot that holds this node; changed only while the
    /// ring is exclusively locked (resize, clear).
    slot: AtomicU32,
}

impl<K, V> Node<K, V> {
    /// A pending node: unreferenced, so a key read once is the first to go.
    pub(crate) fn new_pending(key: K, commit: Arc<Commit<V>>) -> Arc<Self> {
        Arc::new(Self {
            key,
            commit: ArcSwap::new(commit),
            flags: AtomicU8::new(0),
            slot: AtomicU32::new(0),
        })
    }

    /// Sets the referenced bit, writing only when it is unset, so reads of a
    /// hot key do not keep bouncing its cache line between cores.
    #[inline]
    pub(crate) fn touch(&self) {
        if self.flags.load(Ordering::Relaxed) & REFERENCED == 0 {
            self.flags.fetch_or(REFERENCED, Ordering::Relaxed);
        }
    }

    /// Clears the referenced bit, returning whether it was set.
    pub(crate) fn take_referenced(&self) -> bool {
        self.flags.fetch_and(!REFERENCED, Ordering::Relaxed) & REFERENCED != 0
    }

    pub(crate) fn is_live(&self) -> bool {
        self.flags.load(Ordering::Acquire) & LIVE != 0
    }

    pub(crate) fn is_dead(&self) -> bool {
        self.flags.load(Ordering::Acquire) & DEAD != 0
    }

    pub(crate) fn mark_live(&self) {
        self.flags.fetch_or(LIVE, Ordering::Release);
    }

    pub(crate) fn mark_dead(&self) {
        self.flags
            .fetch_update(Ordering::Release, Ordering::Relaxed, |f| {
                Some((f & !LIVE) | DEAD)
            })
            .ok();
    }

    /// Claims the right to queue a refresh; false if one is queued or running.
    /// Reads before writing, so gets of a hot stale key write nothing while
    /// its refresh is under way.
    pub(crate) fn try_queue_refresh(&self) -> bool {
        self.flags.load(Ordering::Relaxed) & REFRESH_QUEUED == 0
            && self.flags.fetch_or(REFRESH_QUEUED, Ordering::AcqRel) & REFRESH_QUEUED == 0
    }

    pub(crate) fn finish_refresh(&self) {
        self.flags.fetch_and(!REFRESH_QUEUED, Ordering::AcqRel);
    }

    pub(crate) fn slot(&self) -> usize {
        self.slot.load(Ordering::Relaxed) as usize
    }

    pub(crate) fn set_slot(&self, slot: usize) {
        // Ring sizes are bounded by `u32::MAX` at configuration.
        self.slot.store(slot as u32, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_layout_stays_small() {
        // key + ArcSwap pointer + flags and slot packed into one word.
        assert_eq!(std::mem::size_of::<Node<u64, u64>>(), 24);
        assert_eq!(std::mem::size_of::<Commit<u64>>(), 16);
    }

    #[test]
    fn state_transitions() {
        let node = Node::new_pending(1u8, Commit::new(1u8, 0));
        assert!(!node.is_live() && !node.is_dead());
        node.mark_live();
        assert!(node.is_live());
        node.touch();
        assert!(node.take_referenced());
        assert!(!node.take_referenced());
        assert!(node.try_queue_refresh());
        assert!(!node.try_queue_refresh());
        node.finish_refresh();
        assert!(node.try_queue_refresh());
        node.mark_dead();
        assert!(node.is_dead() && !node.is_live());
    }

    #[test]
    fn staleness() {
        let commit = Commit::new((), 100);
        assert!(!commit.is_stale(150, 50));
        assert!(commit.is_stale(151, 50));
        assert!(!commit.is_stale(u64::MAX, 0), "ttl 0 means never stale");
        assert!(
            !commit.is_stale(0, 50),
            "a clock behind the write is not stale"
        );
    }
}
