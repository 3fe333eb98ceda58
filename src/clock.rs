//! The eviction ring: an approximate LRU by clock sweep (second chance).
//!
//! The ring has one slot per entry the cache may hold, each naming the key of
//! the entry that owns it (the entry records its slot index, so a slot whose
//! key has been removed, or has moved to another slot, is free). A new key
//! claims a slot: the hand advances (an atomic counter) and the first slot it
//! finds empty, free, or owned by an entry whose referenced bit is clear, is
//! taken; a referenced entry has its bit cleared and is passed over, so a key
//! read since the hand last passed survives one more revolution. The owner of
//! a taken slot is the victim, which the caller removes from the map.
//!
//! A key may be removed and added again while a claim for it is under way,
//! so the entry a claim places is named by a ticket, not by its key (see
//! `Entry::ticket`), and the entry records its slot just before the claim
//! takes it. A slot's key is then always either its entry's or an orphan that
//! the hand may take: nothing in the ring waits for an insert to finish.
//!
//! A slot emptied by an invalidation goes on a free list, which claims take
//! from before the hand moves: a cache that is not full never evicts. The
//! list is a short mutex-guarded stack, touched only while it is not empty.
//!
//! Slots are [`ArcSwapOption`]s: claimers race with loads and compare-and-swap,
//! never a lock, and a key a slot lets go of is freed by `arc-swap`'s own
//! reclamation once no reader still holds it. The whole ring sits behind an
//! `RwLock` in the cache that claimers take *shared*; only a resize or a clear
//! takes it exclusively.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwapOption;

/// What the hand found in a slot, as the cache judges it from the map.
pub(crate) enum Occupant {
    /// No entry owns the slot any more: take it.
    Free,
    /// The owner stays: referenced since the hand last passed.
    Keep,
    /// The owner is evicted: take the slot.
    Evict,
}

/// The cache's side of a claim: it judges occupants by their entries in the
/// map and records the slot in the entry being placed.
pub(crate) trait Claimant<K> {
    /// How the hand treats slot `index`, whose key is `owner`.
    fn judge(&mut self, owner: &K, index: usize) -> Occupant;
    /// Records `index` as the placed entry's slot, just before the slot is
    /// taken; false if the entry is gone.
    fn reserve(&mut self, index: usize) -> bool;
    /// Undoes [`Claimant::reserve`] when another thread took the slot first.
    fn unreserve(&mut self, index: usize);
}

/// The entry being placed was removed meanwhile.
struct EntryGone;

pub(crate) struct Ring<K> {
    slots: Box<[ArcSwapOption<K>]>,
    hand: AtomicUsize,
    /// Slots emptied by a release, probably still empty.
    free: Mutex<Vec<usize>>,
    /// `free.len()`, readable without the lock.
    free_len: AtomicUsize,
}

impl<K> Ring<K> {
    /// An empty ring, or `None` if `len` slots cannot be allocated.
    pub(crate) fn new(len: usize) -> Option<Self> {
        let mut slots = Vec::new();
        slots.try_reserve_exact(len).ok()?;
        slots.resize_with(len, ArcSwapOption::empty);
        Some(Self {
            slots: slots.into_boxed_slice(),
            hand: AtomicUsize::new(0),
            free: Mutex::new(Vec::new()),
            free_len: AtomicUsize::new(0),
        })
    }

    /// A ring of `len` slots holding `keys` (at most `len` of them) in slots
    /// `0..`, with the hand on the first slot after them.
    pub(crate) fn with_keys(
        len: usize,
        keys: impl ExactSizeIterator<Item = Arc<K>>,
    ) -> Option<Self> {
        let ring = Self::new(len)?;
        let placed = keys.len().min(len);
        for (slot, key) in ring.slots.iter().zip(keys) {
            slot.store(Some(key));
        }
        ring.hand
            .store(if len == 0 { 0 } else { placed % len }, Ordering::Relaxed);
        Some(ring)
    }

    pub(crate) fn len(&self) -> usize {
        self.slots.len()
    }

    /// Puts `key` into a slot for the `claimant`'s entry, judging each
    /// occupant the hand meets. Returns the slot taken and, if its owner was
    /// evicted, that owner's key; `None` if the claimant's entry went away
    /// meanwhile. The ring must not be empty.
    ///
    /// The claimant records a slot in its entry *before* taking it, so that
    /// anyone who finds the new key in the slot also finds its entry there:
    /// no slot is ever held by a key whose entry is still on its way, which
    /// the hand would have to wait for. After each revolution of kept
    /// (referenced) occupants, the loop yields the thread rather than spin.
    pub(crate) fn claim(
        &self,
        key: &Arc<K>,
        claimant: &mut impl Claimant<K>,
    ) -> Option<(usize, Option<Arc<K>>)> {
        if let Some(slot) = self.claim_free(key, claimant).ok()? {
            return Some((slot, None));
        }
        let len = self.slots.len();
        debug_assert!(len > 0, "claim on an empty ring");
        let mut kept = 0usize;
        loop {
            let index = self.hand.fetch_add(1, Ordering::Relaxed) % len;
            let slot = &self.slots[index];
            let occupant = slot.load();
            let evict = match &*occupant {
                None => false,
                Some(owner) => match claimant.judge(owner, index) {
                    Occupant::Free => false,
                    Occupant::Evict => true,
                    Occupant::Keep => {
                        kept += 1;
                        if kept % len == 0 {
                            std::thread::yield_now();
                        }
                        continue;
                    }
                },
            };
            if !claimant.reserve(index) {
                return None;
            }
            let previous = slot.compare_and_swap(&occupant, Some(Arc::clone(key)));
            if same(&previous, &occupant) {
                let victim = if evict { (*occupant).clone() } else { None };
                return Some((index, victim));
            }
            claimant.unreserve(index);
        }
    }

    /// Takes a slot from the free list that is still empty, if any; `Err` if
    /// the claimant's entry is gone.
    fn claim_free(
        &self,
        key: &Arc<K>,
        claimant: &mut impl Claimant<K>,
    ) -> Result<Option<usize>, EntryGone> {
        if self.free_len.load(Ordering::Relaxed) == 0 {
            return Ok(None);
        }
        let mut free = self.free.lock().unwrap_or_else(|e| e.into_inner());
        while let Some(&index) = free.last() {
            if !claimant.reserve(index) {
                return Err(EntryGone); // and the slot stays listed
            }
            free.pop();
            self.free_len.store(free.len(), Ordering::Relaxed);
            let previous =
                self.slots[index].compare_and_swap(&None::<Arc<K>>, Some(Arc::clone(key)));
            if previous.is_none() {
                return Ok(Some(index));
            }
            claimant.unreserve(index); // the hand took it meanwhile
        }
        Ok(None)
    }

    /// Empties slot `index` if it still holds `key` (this very `Arc`).
    pub(crate) fn release(&self, index: usize, key: &Arc<K>) {
        self.release_if(index, |occupant| std::ptr::eq(occupant, &**key));
    }

    /// Empties slot `index` if its key is one `matches` accepts, and lists it
    /// as free.
    pub(crate) fn release_if(&self, index: usize, matches: impl FnOnce(&K) -> bool) {
        let Some(slot) = self.slots.get(index) else {
            return;
        };
        let occupant = slot.load();
        if occupant.as_deref().is_some_and(matches) {
            let previous = slot.compare_and_swap(&occupant, None);
            if same(&previous, &occupant) {
                let mut free = self.free.lock().unwrap_or_else(|e| e.into_inner());
                free.push(index);
                self.free_len.store(free.len(), Ordering::Relaxed);
            }
        }
    }

    /// Every occupied slot with its key, in the order the hand will next
    /// reach them.
    pub(crate) fn occupants_from_hand(&self) -> Vec<(usize, Arc<K>)> {
        let len = self.slots.len();
        if len == 0 {
            return Vec::new();
        }
        let start = self.hand.load(Ordering::Relaxed) % len;
        (0..len)
            .map(|i| (start + i) % len)
            .filter_map(|i| self.slots[i].load_full().map(|key| (i, key)))
            .collect()
    }

    /// Empties every slot.
    pub(crate) fn reset(&mut self) {
        for slot in self.slots.iter() {
            slot.store(None);
        }
        *self.hand.get_mut() = 0;
        self.free
            .get_mut()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
        *self.free_len.get_mut() = 0;
    }
}

fn same<K>(a: &Option<Arc<K>>, b: &Option<Arc<K>>) -> bool {
    match (a, b) {
        (None, None) => true,
        (Some(a), Some(b)) => Arc::ptr_eq(a, b),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A claimant whose entry never goes away, judging with `F`.
    struct Judge<F>(F);

    impl<K, F: FnMut(&K, usize) -> Occupant> Claimant<K> for Judge<F> {
        fn judge(&mut self, owner: &K, index: usize) -> Occupant {
            (self.0)(owner, index)
        }
        fn reserve(&mut self, _: usize) -> bool {
            true
        }
        fn unreserve(&mut self, _: usize) {}
    }

    fn claim<K>(
        ring: &Ring<K>,
        key: &Arc<K>,
        judge: impl FnMut(&K, usize) -> Occupant,
    ) -> (usize, Option<Arc<K>>) {
        ring.claim(key, &mut Judge(judge)).expect("the entry stays")
    }

    #[test]
    fn fills_empty_slots_in_order_then_sweeps() {
        let ring = Ring::new(3).unwrap();
        for expected in 0..3 {
            let (slot, victim) = claim(&ring, &Arc::new(expected), |_, _| unreachable!());
            assert_eq!((slot, victim), (expected, None));
        }
        // Full: keep slot 0's owner (referenced), evict slot 1's.
        let mut judged = Vec::new();
        let (slot, victim) = claim(&ring, &Arc::new(9), |key, index| {
            judged.push((*key, index));
            if index == 0 {
                Occupant::Keep
            } else {
                Occupant::Evict
            }
        });
        assert_eq!(judged, vec![(0, 0), (1, 1)]);
        assert_eq!((slot, victim.as_deref()), (1, Some(&1)));
    }

    #[test]
    fn release_only_empties_the_same_key() {
        let ring = Ring::new(2).unwrap();
        let key = Arc::new(1);
        let (slot, _) = claim(&ring, &key, |_, _| Occupant::Free);
        ring.release(slot, &Arc::new(1));
        assert_eq!(
            ring.occupants_from_hand().len(),
            1,
            "an equal key in another Arc is not the same"
        );
        ring.release_if(slot, |k| *k == 2);
        assert_eq!(ring.occupants_from_hand().len(), 1);
        ring.release(slot, &key);
        assert!(ring.occupants_from_hand().is_empty());
    }

    #[test]
    fn freed_slots_are_claimed_before_the_hand_moves() {
        let ring = Ring::new(3).unwrap();
        let keys: Vec<_> = (0..3).map(Arc::new).collect();
        for key in &keys {
            claim(&ring, key, |_, _| {
                unreachable!("empty slots need no judging")
            });
        }
        ring.release(1, &keys[1]);
        let (slot, victim) = claim(&ring, &Arc::new(9), |_, _| panic!("the hand moved"));
        assert_eq!((slot, victim), (1, None));

        // A freed slot that someone else filled meanwhile is passed over.
        ring.release(2, &keys[2]);
        ring.slots[2].store(Some(Arc::new(10)));
        let (_, victim) = claim(&ring, &Arc::new(11), |_, _| Occupant::Evict);
        assert!(victim.is_some(), "the free list had nothing left to give");
    }

    /// A claimant whose entry is removed before it can reserve a slot.
    struct Gone;

    impl Claimant<u32> for Gone {
        fn judge(&mut self, _: &u32, _: usize) -> Occupant {
            Occupant::Evict
        }
        fn reserve(&mut self, _: usize) -> bool {
            false
        }
        fn unreserve(&mut self, _: usize) {
            unreachable!("nothing was reserved")
        }
    }

    #[test]
    fn a_claim_for_a_removed_entry_takes_nothing() {
        let ring = Ring::new(2).unwrap();
        let keys: Vec<_> = (0..2).map(Arc::new).collect();
        for key in &keys {
            claim(&ring, key, |_, _| unreachable!());
        }
        assert!(ring.claim(&Arc::new(9), &mut Gone).is_none(), "full ring");
        ring.release(0, &keys[0]);
        assert!(ring.claim(&Arc::new(9), &mut Gone).is_none(), "freed slot");
        let (slot, _) = claim(&ring, &Arc::new(10), |_, _| panic!("the hand moved"));
        assert_eq!(slot, 0, "the freed slot stayed listed");
        let occupants: Vec<_> = ring
            .occupants_from_hand()
            .into_iter()
            .map(|(i, k)| (i, *k))
            .collect();
        assert!(occupants.contains(&(1, 1)), "no occupant was displaced");
    }

    #[test]
    fn with_keys_places_keys_first_and_the_hand_after() {
        let ring = Ring::with_keys(4, [Arc::new(7), Arc::new(8)].into_iter()).unwrap();
        let occupants: Vec<_> = ring
            .occupants_from_hand()
            .into_iter()
            .map(|(i, k)| (i, *k))
            .collect();
        assert_eq!(occupants, vec![(0, 7), (1, 8)]);
        let (slot, _) = claim(&ring, &Arc::new(9), |_, _| Occupant::Keep);
        assert_eq!(slot, 2, "the next claim takes the first empty slot");
    }
}
