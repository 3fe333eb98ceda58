//! The eviction ring: an approximate LRU by clock sweep (second chance).
//!
//! The ring has one slot per entry the cache may hold, each holding the hash
//! of the key whose entry owns it. The entry records its slot index, so the
//! owner of slot `i` holding hash `h` is the entry hashed `h` that says it is
//! in slot `i`, found by one probe of the map; a slot with no such entry (its
//! entry removed, or moved by a resize) is an orphan, free to take. Naming
//! owners by hash rather than by a copy of the key costs no allocation per
//! insert and 8 bytes per entry in all.
//!
//! A new entry claims a slot: first one never used since the ring was built
//! or cleared, then one emptied by an invalidation (a short mutex-guarded
//! stack, touched only while not empty), so a cache that is not full never
//! evicts; then the hand advances (an atomic counter) to the first slot that
//! is an orphan or whose owner's referenced bit is clear. A referenced owner
//! has its bit cleared and is passed over, so a key read since the hand last
//! passed survives one more revolution. The owner of a taken slot is the
//! victim, which the caller removes from the map.
//!
//! A key may be removed and added again while a claim for it is under way,
//! so the entry a claim places is named by a ticket (see `Entry::ticket`),
//! and the entry is marked as taking a slot just before the claim swaps its
//! hash in: nothing in the ring waits for an insert to finish, and the hand
//! passes over a slot whose hash belongs to an entry being placed. No key
//! hashes to [`EMPTY`] (the map's hasher moves a zero hash elsewhere), so an
//! empty slot has no owner to judge or evict.
//!
//! A slot may return to a hash it held before between a claimer's look and
//! its swap (the same key placed there again, or another key of the same
//! hash), so the swap can succeed against an owner the claimer never judged.
//! The claimer evicts whichever entry of that hash is settled in the slot; an
//! entry still being placed there finds, once settled, that the slot no
//! longer holds its hash, and goes (or the entry it displaced does). If the
//! slot went back to the same hash for another key of it, both entries may
//! settle in the slot; the later to settle sees the other (both may), and one
//! goes, picked under the shard's write lock only while two remain. Settling,
//! swapping, and the looks are sequentially consistent, so one side always
//! sees the other and no entry is left outside the ring.
//!
//! Slots are atomics, claimed by compare-and-swap, never a lock. The whole
//! ring sits behind an `RwLock` in the cache that claimers take *shared*;
//! only a resize or a clear takes it exclusively.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

/// What the hand found in a slot, as the cache judges it from the map.
pub(crate) enum Occupant {
    /// No entry owns the slot: take it.
    Free,
    /// The owner stays: referenced since the hand last passed.
    Keep,
    /// The owner is evicted: take the slot.
    Evict,
}

/// The cache's side of a claim: it judges occupants by their entries in the
/// map and records the slot in the entry being placed.
pub(crate) trait Claimant {
    /// How the hand treats slot `index`, holding `hash` (never [`EMPTY`]:
    /// an empty slot is taken without asking).
    fn judge(&mut self, hash: u64, index: usize) -> Occupant;
    /// Records `index` as the placed entry's slot, just before the slot is
    /// taken; false if the entry is gone.
    fn reserve(&mut self, index: usize) -> bool;
    /// Undoes [`Claimant::reserve`] when another thread took the slot first.
    fn unreserve(&mut self, index: usize);
}

/// A slot a claim took.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Taken {
    pub(crate) index: usize,
    /// The hash the slot held before.
    pub(crate) previous: u64,
}

impl Taken {
    /// Whether the slot may have had an owner, who must then be evicted: an
    /// empty slot had none, since no key hashes to [`EMPTY`].
    pub(crate) fn may_be_owned(&self) -> bool {
        self.previous != EMPTY
    }
}

/// The entry being placed was removed meanwhile.
struct EntryGone;

pub(crate) struct Ring {
    slots: Box<[AtomicU64]>,
    /// Slots `unused..` have not been taken since the ring was built or
    /// cleared (counts past the length once all have been).
    unused: AtomicUsize,
    hand: AtomicUsize,
    /// Slots emptied by a release, probably still empty.
    free: Mutex<Vec<usize>>,
    /// `free.len()`, readable without the lock.
    free_len: AtomicUsize,
}

/// What an empty slot holds; the map's hasher never gives a key this hash
/// (see [`crate::hashing`]).
const EMPTY: u64 = 0;

impl Ring {
    /// An empty ring, or `None` if `len` slots cannot be allocated.
    pub(crate) fn new(len: usize) -> Option<Self> {
        let mut slots = Vec::new();
        slots.try_reserve_exact(len).ok()?;
        slots.resize_with(len, || AtomicU64::new(EMPTY));
        Some(Self {
            slots: slots.into_boxed_slice(),
            unused: AtomicUsize::new(0),
            hand: AtomicUsize::new(0),
            free: Mutex::new(Vec::new()),
            free_len: AtomicUsize::new(0),
        })
    }

    /// A ring of `len` slots holding `hashes` (at most `len` of them) in
    /// slots `0..`, in the order the hand is to judge them once the ring is
    /// full.
    pub(crate) fn with_hashes(
        len: usize,
        hashes: impl ExactSizeIterator<Item = u64>,
    ) -> Option<Self> {
        let ring = Self::new(len)?;
        let placed = hashes.len().min(len);
        for (slot, hash) in ring.slots.iter().zip(hashes) {
            slot.store(hash, Ordering::Relaxed);
        }
        ring.unused.store(placed, Ordering::Relaxed);
        Some(ring)
    }

    pub(crate) fn len(&self) -> usize {
        self.slots.len()
    }

    /// The hash slot `index` holds now.
    pub(crate) fn hash_at(&self, index: usize) -> u64 {
        self.slots[index].load(Ordering::SeqCst)
    }

    /// Puts `hash` into a slot for the `claimant`'s entry, judging each
    /// occupant the hand meets. `None` if the claimant's entry went away
    /// meanwhile. The ring must not be empty.
    ///
    /// The claimant records a slot in its entry *before* taking it, so that
    /// anyone who finds the new hash in the slot also finds its entry there.
    /// After each revolution of kept (referenced) occupants, the loop yields
    /// the thread rather than spin.
    pub(crate) fn claim(&self, hash: u64, claimant: &mut impl Claimant) -> Option<Taken> {
        if let Some(taken) = self.claim_unused(hash, claimant).ok()? {
            return Some(taken);
        }
        if let Some(taken) = self.claim_free(hash, claimant).ok()? {
            return Some(taken);
        }
        let len = self.slots.len();
        debug_assert!(len > 0, "claim on an empty ring");
        let mut kept = 0usize;
        loop {
            let index = self.hand.fetch_add(1, Ordering::Relaxed) % len;
            let slot = &self.slots[index];
            let previous = slot.load(Ordering::Acquire);
            if previous != EMPTY && matches!(claimant.judge(previous, index), Occupant::Keep) {
                kept += 1;
                if kept % len == 0 {
                    std::thread::yield_now();
                }
                continue;
            }
            #[cfg(test)]
            std::thread::yield_now(); // widens the window for tests, as in `Inner::finish_placement`
            if let Some(taken) = self.take(index, previous, hash, claimant)? {
                return Some(taken);
            }
        }
    }

    /// Swaps `hash` into slot `index` if it still holds `previous`, with the
    /// claimant's entry reserving it first. `Ok(None)` if another thread
    /// changed the slot first; `None` if the entry is gone.
    pub(crate) fn take(
        &self,
        index: usize,
        previous: u64,
        hash: u64,
        claimant: &mut impl Claimant,
    ) -> Option<Option<Taken>> {
        if !claimant.reserve(index) {
            return None;
        }
        // Sequentially consistent: see `Entry::slot`.
        let swapped = self.slots[index]
            .compare_exchange(previous, hash, Ordering::SeqCst, Ordering::Acquire)
            .is_ok();
        if !swapped {
            claimant.unreserve(index);
            return Some(None);
        }
        Some(Some(Taken { index, previous }))
    }

    /// Takes a slot never used since the ring was built or cleared, if any.
    fn claim_unused(
        &self,
        hash: u64,
        claimant: &mut impl Claimant,
    ) -> Result<Option<Taken>, EntryGone> {
        let len = self.slots.len();
        if self.unused.load(Ordering::Relaxed) >= len {
            return Ok(None);
        }
        let index = self.unused.fetch_add(1, Ordering::Relaxed);
        if index >= len {
            return Ok(None);
        }
        // The hand does not sweep while unused slots remain, but a claim that
        // found none a moment ago may be sweeping: then the swap can fail.
        let taken = self.take(index, EMPTY, hash, claimant);
        if taken.is_none() {
            self.list_free(index); // still empty: keep it for the next claim
        }
        taken.ok_or(EntryGone)
    }

    fn list_free(&self, index: usize) {
        let mut free = self.free.lock().unwrap_or_else(|e| e.into_inner());
        free.push(index);
        self.free_len.store(free.len(), Ordering::Relaxed);
    }

    /// Takes a slot from the free list that is still empty, if any.
    fn claim_free(
        &self,
        hash: u64,
        claimant: &mut impl Claimant,
    ) -> Result<Option<Taken>, EntryGone> {
        if self.free_len.load(Ordering::Relaxed) == 0 {
            return Ok(None);
        }
        let mut free = self.free.lock().unwrap_or_else(|e| e.into_inner());
        while let Some(index) = free.pop() {
            self.free_len.store(free.len(), Ordering::Relaxed);
            match self.take(index, EMPTY, hash, claimant) {
                None => {
                    free.push(index); // still free: leave it listed
                    self.free_len.store(free.len(), Ordering::Relaxed);
                    return Err(EntryGone);
                }
                Some(Some(taken)) => return Ok(Some(taken)),
                Some(None) => {} // the hand took it meanwhile
            }
        }
        Ok(None)
    }

    /// Empties slot `index` if it holds `hash` and `unowned()` says no entry
    /// owns it, and lists it as free; whether it did.
    pub(crate) fn release_if(
        &self,
        index: usize,
        hash: u64,
        unowned: impl FnOnce() -> bool,
    ) -> bool {
        let Some(slot) = self.slots.get(index) else {
            return false;
        };
        if slot.load(Ordering::Acquire) != hash || !unowned() {
            return false;
        }
        // Sequentially consistent: see `Entry::slot`.
        let released = slot
            .compare_exchange(hash, EMPTY, Ordering::SeqCst, Ordering::Acquire)
            .is_ok();
        if released {
            self.list_free(index);
        }
        released
    }

    /// Every slot that has been used with its hash, in the order the hand
    /// will next reach them.
    pub(crate) fn occupants_from_hand(&self) -> Vec<(usize, u64)> {
        let len = self.slots.len();
        if len == 0 {
            return Vec::new();
        }
        let start = self.hand.load(Ordering::Relaxed) % len;
        (0..len)
            .map(|i| (start + i) % len)
            .map(|i| (i, self.slots[i].load(Ordering::Acquire)))
            .collect()
    }

    /// Empties every slot.
    pub(crate) fn reset(&mut self) {
        for slot in self.slots.iter_mut() {
            *slot.get_mut() = EMPTY;
        }
        *self.unused.get_mut() = 0;
        *self.hand.get_mut() = 0;
        self.free
            .get_mut()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
        *self.free_len.get_mut() = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A claimant whose entry never goes away, judging with `F`.
    struct Judge<F>(F);

    impl<F: FnMut(u64, usize) -> Occupant> Claimant for Judge<F> {
        fn judge(&mut self, hash: u64, index: usize) -> Occupant {
            (self.0)(hash, index)
        }
        fn reserve(&mut self, _: usize) -> bool {
            true
        }
        fn unreserve(&mut self, _: usize) {}
    }

    fn claim(ring: &Ring, hash: u64, judge: impl FnMut(u64, usize) -> Occupant) -> Taken {
        ring.claim(hash, &mut Judge(judge))
            .expect("the entry stays")
    }

    fn taken(index: usize, previous: u64) -> Taken {
        Taken { index, previous }
    }

    #[test]
    fn fills_unused_slots_in_order_then_sweeps() {
        let ring = Ring::new(3).unwrap();
        for hash in 10..13 {
            let got = claim(&ring, hash, |_, _| {
                unreachable!("unused slots need no judging")
            });
            assert_eq!(got, taken(hash as usize - 10, EMPTY));
        }
        // Full: keep slot 0's owner (referenced), evict slot 1's.
        let mut judged = Vec::new();
        let got = claim(&ring, 9, |hash, index| {
            judged.push((hash, index));
            if index == 0 {
                Occupant::Keep
            } else {
                Occupant::Evict
            }
        });
        assert_eq!(judged, vec![(10, 0), (11, 1)]);
        assert_eq!(got, taken(1, 11));
    }

    #[test]
    fn release_empties_only_an_unowned_slot_of_the_hash() {
        let ring = Ring::new(2).unwrap();
        let index = claim(&ring, 7, |_, _| Occupant::Free).index;
        assert!(!ring.release_if(index, 8, || true), "another hash");
        assert!(!ring.release_if(index, 7, || false), "owned");
        assert_eq!(ring.hash_at(index), 7, "still held");
        assert!(ring.release_if(index, 7, || true));
        assert_eq!(ring.hash_at(index), EMPTY);
        assert!(!ring.release_if(index, 7, || true), "released once");
    }

    #[test]
    fn freed_slots_are_claimed_before_the_hand_moves() {
        let ring = Ring::new(3).unwrap();
        for hash in 1..4 {
            claim(&ring, hash, |_, _| unreachable!());
        }
        assert!(ring.release_if(1, 2, || true));
        let got = claim(&ring, 9, |_, _| panic!("the hand moved"));
        assert_eq!(got, taken(1, EMPTY));

        // A freed slot that someone else filled meanwhile is passed over.
        assert!(ring.release_if(2, 3, || true));
        ring.slots[2].store(10, Ordering::Relaxed);
        let got = claim(&ring, 11, |_, _| Occupant::Evict);
        assert_ne!(
            got.previous, EMPTY,
            "the free list had nothing left to give"
        );
    }

    /// A claimant whose entry is removed before it can reserve a slot.
    struct Gone;

    impl Claimant for Gone {
        fn judge(&mut self, _: u64, _: usize) -> Occupant {
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
        assert!(ring.claim(9, &mut Gone).is_none(), "unused slot");
        for hash in 1..3 {
            claim(&ring, hash, |_, _| unreachable!("the unused slot was kept"));
        }
        // Slot 1 was the next unused one; slot 0 came back from the list.
        let mut held = ring.occupants_from_hand();
        held.sort();
        assert_eq!(held, vec![(0, 2), (1, 1)]);
        assert!(ring.claim(9, &mut Gone).is_none(), "full ring");
        assert!(ring.release_if(1, 1, || true));
        assert!(ring.claim(9, &mut Gone).is_none(), "freed slot");
        let got = claim(&ring, 10, |_, _| panic!("the hand moved"));
        assert_eq!(got.index, 1, "the freed slot stayed listed");
        let mut held = ring.occupants_from_hand();
        held.sort();
        assert_eq!(held, vec![(0, 2), (1, 10)], "nothing else moved");
    }

    #[test]
    fn a_lost_race_for_a_slot_is_undone_and_the_hand_moves_on() {
        /// Changes the slot under the claim between its look and its swap.
        struct Racer<'a> {
            ring: &'a Ring,
            reserved: Vec<usize>,
            unreserved: Vec<usize>,
        }
        impl Claimant for Racer<'_> {
            fn judge(&mut self, _: u64, _: usize) -> Occupant {
                Occupant::Evict
            }
            fn reserve(&mut self, index: usize) -> bool {
                if self.reserved.is_empty() {
                    self.ring.slots[index].store(99, Ordering::Relaxed);
                }
                self.reserved.push(index);
                true
            }
            fn unreserve(&mut self, index: usize) {
                self.unreserved.push(index);
            }
        }
        let ring = Ring::with_hashes(2, [1, 2].into_iter()).unwrap();
        let mut racer = Racer {
            ring: &ring,
            reserved: Vec::new(),
            unreserved: Vec::new(),
        };
        let got = ring.claim(5, &mut racer).unwrap();
        assert_eq!((racer.reserved, racer.unreserved), (vec![0, 1], vec![0]));
        assert_eq!(got, taken(1, 2));
    }

    #[test]
    fn with_hashes_fills_the_rest_then_sweeps_from_the_first() {
        let ring = Ring::with_hashes(4, [7, 8].into_iter()).unwrap();
        assert_eq!(&ring.occupants_from_hand()[..2], &[(0, 7), (1, 8)]);
        let got = claim(&ring, 9, |_, _| unreachable!());
        assert_eq!(got, taken(2, EMPTY), "an unused slot first");
        claim(&ring, 10, |_, _| unreachable!());
        let mut judged = Vec::new();
        claim(&ring, 11, |hash, _| {
            judged.push(hash);
            Occupant::Evict
        });
        assert_eq!(judged, vec![7], "the hand starts at the first hash given");
    }
}
