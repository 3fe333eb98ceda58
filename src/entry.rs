//! One cached entry, as it sits in the map's table.
//!
//! Everything a read needs is inline in the table slot: the value, when it
//! was written, and the referenced bit. A read then touches the one cache
//! line the hash probe already brought in. (Measured on the get-hit bench: an
//! entry behind an `Arc` reads at about half the speed, and behind an `Arc` and
//! an `ArcSwap`, about a third.) Writes to a present key replace the value
//! under the map shard's write lock, a bounded in-memory step.
//!
//! Each write gives the entry a new `version` from a cache-wide counter (its
//! low 32 bits; see [`Version`]), so a refresh that started from one version
//! installs its result only if that version is still current: a newer write
//! wins, and a key removed and added again meanwhile (a new version) is not
//! overwritten by the old refresh.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use crate::time::Nanos;

// States of `Entry::slot`. A ring slot number has neither of the top two
// bits set (`max_size` is below 2^30).
/// Set while the entry has no ring slot; the low 30 bits are then the
/// entry's ticket, which only its inserter knows.
const UNPLACED: u32 = 1 << 31;
/// Set, beside [`UNPLACED`] and the ticket, while the entry's inserter is
/// taking a slot. The slot's number is the inserter's to know: the ticket
/// stays, so an inserter acts only on its own entry, even beside another
/// entry of the same hash that is taking the same slot.
const RESERVING: u32 = 1 << 30;

// Bits of `Entry::stamp`: the write time below, flags in the top two bits.
/// Read since the clock hand last passed.
const REFERENCED: u64 = 1 << 63;
/// Queued for, or under, a background refresh.
const REFRESH_QUEUED: u64 = 1 << 62;
/// The write time: 62 bits of nanoseconds since the clock's base, 146 years.
const WRITTEN_AT: u64 = REFRESH_QUEUED - 1;

/// The version an entry keeps: the low 32 bits of the cache's write counter.
/// A refresh compares it with the version it started from; the two could
/// match by wrapping only if 2^32 writes to the cache happened during one
/// fetch (with the default `refresh_timeout` of 30 s, 143 million writes a
/// second), and even then the refresh's fresh value would be installed over
/// a newer one, nothing worse.
pub(crate) type Version = u32;

/// Three words for word-sized values: the map's table slot is the key and
/// this, so every byte here is paid per entry, a million times over.
pub(crate) struct Entry<V> {
    pub(crate) value: V,
    /// When the value was written or last confirmed unchanged, and the flags.
    stamp: AtomicU64,
    version: Version,
    /// The ring slot that lists this entry; until it has one, [`UNPLACED`]
    /// and the ticket, then [`RESERVING`] and the slot while its inserter
    /// takes it.
    slot: AtomicU32,
}

impl<V> Entry<V> {
    /// A new entry: unplaced and unreferenced, so a key read only once is
    /// the first to go. Its ticket ([`Entry::ticket`]) comes from `version`.
    pub(crate) fn new(value: V, written_at: Nanos, version: u64) -> Self {
        Self {
            value,
            stamp: AtomicU64::new(written_at.min(WRITTEN_AT)),
            version: version as Version,
            slot: AtomicU32::new(Self::ticket(version)),
        }
    }

    /// The ticket of an entry created with `version`: what its inserter
    /// shows to place it. Tickets tell apart an entry from one removed and
    /// added again under the same key meanwhile, so an inserter places only
    /// its own entry (30 bits of the version: two entries of one hash alive
    /// at once share a ticket only 2^30 writes apart).
    pub(crate) fn ticket(version: u64) -> u32 {
        UNPLACED | (version as u32 & (RESERVING - 1))
    }

    /// Replaces the value, returning the old one so that the caller can drop
    /// it after releasing the shard lock.
    pub(crate) fn overwrite(&mut self, value: V, written_at: Nanos, version: u64) -> V {
        self.renew(written_at, version);
        std::mem::replace(&mut self.value, value)
    }

    /// Starts the entry's age over, keeping its value and flags.
    pub(crate) fn renew(&mut self, written_at: Nanos, version: u64) {
        let stamp = self.stamp.get_mut();
        *stamp = (*stamp & !WRITTEN_AT) | written_at.min(WRITTEN_AT);
        self.version = version as Version;
    }

    /// When the value was written or last confirmed unchanged.
    pub(crate) fn written_at(&self) -> Nanos {
        self.stamp.load(Ordering::Relaxed) & WRITTEN_AT
    }

    pub(crate) fn version(&self) -> Version {
        self.version
    }

    /// Whether the entry is older than `ttl` at `now`; `ttl == 0` means
    /// "no TTL" (a TTL of zero is rejected at configuration).
    #[inline]
    pub(crate) fn is_stale(&self, now: Nanos, ttl: Nanos) -> bool {
        ttl != 0 && now.saturating_sub(self.written_at()) > ttl
    }

    /// Sets the referenced bit, writing only when it is unset, so reads of a
    /// hot key do not keep bouncing its cache line between cores.
    #[inline]
    pub(crate) fn touch(&self) {
        if self.stamp.load(Ordering::Relaxed) & REFERENCED == 0 {
            self.stamp.fetch_or(REFERENCED, Ordering::Relaxed);
        }
    }

    /// Clears the referenced bit, returning whether it was set.
    pub(crate) fn take_referenced(&self) -> bool {
        self.stamp.load(Ordering::Relaxed) & REFERENCED != 0
            && self.stamp.fetch_and(!REFERENCED, Ordering::Relaxed) & REFERENCED != 0
    }

    /// Claims the right to queue a refresh; false if one is queued or running.
    /// Reads before writing, so reads of a hot stale key write nothing while
    /// its refresh is under way.
    pub(crate) fn try_queue_refresh(&self) -> bool {
        self.stamp.load(Ordering::Relaxed) & REFRESH_QUEUED == 0
            && self.stamp.fetch_or(REFRESH_QUEUED, Ordering::AcqRel) & REFRESH_QUEUED == 0
    }

    pub(crate) fn finish_refresh(&self) {
        self.stamp.fetch_and(!REFRESH_QUEUED, Ordering::AcqRel);
    }

    /// The ring slot that lists this entry, if it has one.
    ///
    /// Sequentially consistent, as is [`Entry::settle`]: an inserter settles
    /// its entry and then reads its slot in the ring (and the slots of other
    /// entries of its hash), while a thread that swaps the slot from under it
    /// (or settles another entry there) then looks for the entry; one of the
    /// two must see the other's write (see `Inner::keep_one_in_slot`).
    pub(crate) fn slot(&self) -> Option<u32> {
        let slot = self.slot.load(Ordering::SeqCst);
        (slot & UNPLACED == 0).then_some(slot)
    }

    /// Whether the entry's inserter is taking a ring slot for it.
    pub(crate) fn is_reserving(&self) -> bool {
        self.slot.load(Ordering::Acquire) & (UNPLACED | RESERVING) == UNPLACED | RESERVING
    }

    /// Whether the entry is the unplaced one that `ticket` was issued for.
    pub(crate) fn awaits(&self, ticket: u32) -> bool {
        self.slot.load(Ordering::Acquire) == ticket
    }

    /// Whether the entry is the one `ticket` was issued for, taking a slot.
    pub(crate) fn reserving_for(&self, ticket: u32) -> bool {
        self.slot.load(Ordering::Acquire) == ticket | RESERVING
    }

    /// Marks the entry as taking a ring slot, if it is still the unplaced one
    /// `ticket` was issued for; false otherwise.
    pub(crate) fn reserve(&self, ticket: u32) -> bool {
        self.transition(ticket, ticket | RESERVING)
    }

    /// Undoes [`Entry::reserve`] when the slot went to someone else.
    pub(crate) fn unreserve(&self, ticket: u32) -> bool {
        self.transition(ticket | RESERVING, ticket)
    }

    /// Completes [`Entry::reserve`] once ring slot `slot` is taken.
    pub(crate) fn settle(&self, ticket: u32, slot: u32) -> bool {
        debug_assert_eq!(slot & UNPLACED, 0, "a slot number");
        self.transition(ticket | RESERVING, slot)
    }

    fn transition(&self, from: u32, to: u32) -> bool {
        self.slot
            .compare_exchange(from, to, Ordering::SeqCst, Ordering::Acquire)
            .is_ok()
    }

    /// Moves the entry to another slot (a resize, under the ring's exclusive lock).
    pub(crate) fn move_to(&self, slot: u32) {
        self.slot.store(slot, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_entry_of_a_word_is_three_words() {
        assert_eq!(std::mem::size_of::<Entry<u64>>(), 24);
    }

    #[test]
    fn flags() {
        let mut entry = Entry::new((), 5, 0);
        assert!(!entry.take_referenced());
        entry.touch();
        assert!(entry.take_referenced());
        assert!(!entry.take_referenced());
        assert!(entry.try_queue_refresh());
        assert!(!entry.try_queue_refresh());
        entry.touch();
        entry.renew(9, 1);
        assert_eq!(entry.written_at(), 9, "flags are not part of the time");
        assert!(entry.take_referenced(), "a write keeps the flags");
        assert!(!entry.try_queue_refresh());
        entry.finish_refresh();
        assert!(entry.try_queue_refresh());
        assert_eq!(entry.written_at(), 9);
    }

    #[test]
    fn placing() {
        let entry = Entry::new((), 0, 7);
        let ticket = Entry::<()>::ticket(7);
        let other = Entry::<()>::ticket(8);
        assert_eq!(entry.slot(), None);
        assert!(entry.awaits(ticket) && !entry.is_reserving());
        assert!(!entry.reserve(other), "another's ticket");
        assert!(entry.reserve(ticket));
        assert!(!entry.reserve(ticket), "reserved once");
        assert_eq!(entry.slot(), None, "not placed until settled");
        assert!(entry.is_reserving() && entry.reserving_for(ticket));
        assert!(!entry.reserving_for(other) && !entry.awaits(ticket));
        assert!(!entry.unreserve(other), "only by its own ticket");
        assert!(!entry.settle(other, 3), "only by its own ticket");
        assert!(entry.unreserve(ticket));
        assert!(entry.awaits(ticket) && !entry.is_reserving());
        assert!(!entry.settle(ticket, 3), "nothing to settle");
        assert!(entry.reserve(ticket));
        assert!(entry.settle(ticket, 0));
        assert_eq!(entry.slot(), Some(0));
        assert!(!entry.is_reserving() && !entry.awaits(ticket));
        entry.move_to(5);
        assert_eq!(entry.slot(), Some(5));
    }

    #[test]
    fn tickets_are_never_slot_numbers() {
        let last_slot = crate::builder::MAX_SIZE_LIMIT as u32 - 1;
        assert_eq!(last_slot & (UNPLACED | RESERVING), 0);
        for version in [0, 1, u32::MAX as u64, 1 << 30, 1 << 31, u64::MAX] {
            let ticket = Entry::<()>::ticket(version);
            assert_eq!(ticket & (UNPLACED | RESERVING), UNPLACED, "{version}");
        }
        assert_ne!(Entry::<()>::ticket(1), Entry::<()>::ticket(2));
    }

    #[test]
    fn staleness_and_writes() {
        let mut entry = Entry::new(1, 100, 7);
        assert!(!entry.is_stale(150, 50));
        assert!(entry.is_stale(151, 50));
        assert!(!entry.is_stale(u64::MAX, 0), "ttl 0 means never stale");
        assert!(
            !entry.is_stale(0, 50),
            "a clock behind the write is not stale"
        );
        assert_eq!(entry.overwrite(2, 200, 8), 1);
        assert_eq!(
            (entry.value, entry.written_at(), entry.version()),
            (2, 200, 8)
        );
        entry.renew(300, (1 << 32) + 9);
        assert_eq!(
            (entry.value, entry.written_at(), entry.version()),
            (2, 300, 9)
        );
        entry.renew(u64::MAX, 10);
        assert_eq!(
            entry.written_at(),
            WRITTEN_AT,
            "a time past 146 years saturates"
        );
        assert!(
            !entry.take_referenced(),
            "and does not spill into the flags"
        );
    }
}
