//! The eviction ring: an approximate LRU by clock sweep (second chance).
//!
//! The ring has one slot per entry the cache may hold. A new key claims a slot:
//! the hand advances (an atomic counter), and the first slot it finds empty,
//! holding a dead node, or holding a node whose referenced bit is clear, is
//! taken; a referenced node has its bit cleared and is passed over, so a key read
//! since the hand last passed survives one more revolution. The displaced live
//! node is the victim, which the caller removes from the map.
//!
//! Slots are [`ArcSwapOption`]s: claimers race with loads and compare-and-swap,
//! never a lock, and a node a slot lets go of is freed by `arc-swap`'s own
//! reclamation once no reader still holds it. The whole ring sits behind an
//! `RwLock` in the cache that claimers take *shared*; only a resize or a clear
//! takes it exclusively.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use arc_swap::ArcSwapOption;

use crate::node::Node;

/// Nodes displaced from the ring, for the caller to remove from the map.
pub(crate) type Victims<K, V> = Vec<Arc<Node<K, V>>>;

pub(crate) struct Ring<K, V> {
    slots: Box<[ArcSwapOption<Node<K, V>>]>,
    hand: AtomicUsize,
}

impl<K, V> Ring<K, V> {
    /// An empty ring, or `None` if `len` slots cannot be allocated.
    pub(crate) fn new(len: usize) -> Option<Self> {
        let mut slots = Vec::new();
        slots.try_reserve_exact(len).ok()?;
        slots.resize_with(len, ArcSwapOption::empty);
        Some(Self {
            slots: slots.into_boxed_slice(),
            hand: AtomicUsize::new(0),
        })
    }

    pub(crate) fn len(&self) -> usize {
        self.slots.len()
    }

    /// Puts `node` into a slot and returns the live node it displaced, if any.
    ///
    /// The ring must not be empty. Pending nodes (claimed but not yet in the
    /// map) are skipped; they become live or dead within one map insert, so
    /// the loop yields the thread after each fruitless revolution rather than
    /// spinning hot.
    pub(crate) fn claim(&self, node: &Arc<Node<K, V>>) -> Option<Arc<Node<K, V>>> {
        let len = self.slots.len();
        debug_assert!(len > 0, "claim on an empty ring");
        let mut steps = 0usize;
        loop {
            let index = self.hand.fetch_add(1, Ordering::Relaxed) % len;
            let slot = &self.slots[index];
            let occupant = slot.load();
            let victim = match &*occupant {
                None => None,
                Some(o) if o.is_dead() => None,
                Some(o) if !o.is_live() || o.take_referenced() => {
                    steps += 1;
                    if steps % len == 0 {
                        std::thread::yield_now();
                    }
                    continue;
                }
                Some(o) => Some(Arc::clone(o)),
            };
            let previous = slot.compare_and_swap(&occupant, Some(Arc::clone(node)));
            if ptr_eq_opt(&previous, &occupant) {
                node.set_slot(index);
                return victim;
            }
        }
    }

    /// Empties the slot `node` holds, if it still holds it.
    pub(crate) fn release(&self, node: &Arc<Node<K, V>>) {
        if let Some(slot) = self.slots.get(node.slot()) {
            let current = Some(Arc::clone(node));
            slot.compare_and_swap(&current, None);
        }
    }

    /// Calls `visit` with every node in the ring, by slot loads only.
    pub(crate) fn for_each_node(&self, mut visit: impl FnMut(&Arc<Node<K, V>>)) {
        for slot in self.slots.iter() {
            if let Some(node) = &*slot.load() {
                visit(node);
            }
        }
    }

    /// Drops every node the ring holds.
    pub(crate) fn reset(&mut self) {
        for slot in self.slots.iter() {
            slot.store(None);
        }
        *self.hand.get_mut() = 0;
    }

    /// Every live node, in the order the hand will next reach them.
    pub(crate) fn live_nodes(&self) -> Vec<Arc<Node<K, V>>> {
        let len = self.slots.len();
        let start = if len == 0 {
            0
        } else {
            self.hand.load(Ordering::Relaxed) % len
        };
        (0..len)
            .filter_map(|i| self.slots[(start + i) % len].load_full())
            .filter(|n| n.is_live())
            .collect()
    }

    /// A ring of `len` slots holding this ring's live nodes; returns it with the
    /// nodes that did not fit, chosen by the same second-chance rule as `claim`.
    /// `None` if the new ring cannot be allocated. Needs exclusive access, so
    /// that no claim or release races with the move of slot indices.
    pub(crate) fn resized(&mut self, len: usize) -> Option<(Self, Victims<K, V>)> {
        let mut resized = Ring::new(len)?;
        let mut keep: VecDeque<_> = self.live_nodes().into();
        let mut victims = Vec::new();
        while keep.len() > len {
            let node = keep.pop_front().expect("longer than len");
            if node.take_referenced() {
                keep.push_back(node);
            } else {
                victims.push(node);
            }
        }
        for (index, node) in keep.iter().enumerate() {
            node.set_slot(index);
            resized.slots[index].store(Some(Arc::clone(node)));
        }
        *resized.hand.get_mut() = if len == 0 { 0 } else { keep.len() % len };
        Some((resized, victims))
    }
}

fn ptr_eq_opt<T>(a: &Option<Arc<T>>, b: &Option<Arc<T>>) -> bool {
    match (a, b) {
        (None, None) => true,
        (Some(a), Some(b)) => Arc::ptr_eq(a, b),
        _ => false,
    }
}
