//! One cached entry, as it sits in the map's table.
//!
//! Everything a read needs is inline in the table slot: the value, when it
//! was written, and the referenced bit. A read then touches the one cache
//! line the hash probe already brought in. (Measured on the get-hit bench: an
//! entry behind an `Arc` reads at about half the speed, and behind an `Arc` and
//! an `ArcSwap`, about a third.) Writes to a present key replace the value
//! under the map shard's write lock, a bounded in-memory step.
//!
//! Each write gives the entry a new `version`, unique across the cache, so a
//! refresh that started from one version installs its result only if that
//! version is still current: a newer write wins, and a key removed and added
//! again meanwhile (a new version) is not overwritten by the old refresh.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use crate::time::Nanos;

// States of `Entry::slot`. A ring slot number has neither of the top two
// bits set (`max_size` is below 2^30).
/// Set while the entry has no ring slot; the other 31 bits are then the
/// entry's ticket, which only its inserter knows.
const UNPLACED: u32 = 1 << 31;
/// Set, beside a slot number, while the entry's inserter is taking that slot.
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
    /// its own entry (31 bits of the version: two entries of one key alive
    /// at once share a ticket only 2^31 writes apart).
    pub(crate) fn ticket(version: u64) -> u32 {
        UNPLACED | (version as u32 & !UNPLACED)
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
    pub(crate) fn slot(&self) -> Option<u32> {
        let slot = self.slot.load(Ordering::Acquire);
        (slot & (UNPLACED | RESERVING) == 0).then_some(slot)
    }

    /// Whether the entry is in ring slot `slot`, or its inserter is taking it.
    pub(crate) fn holds(&self, slot: u32) -> bool {
        self.slot.load(Ordering::Acquire) & !RESERVING == slot
    }

    /// Whether the entry's inserter is taking ring slot `slot`.
    pub(crate) fn is_reserving(&self, slot: u32) -> bool {
        self.slot.load(Ordering::Acquire) == slot | RESERVING
    }

    /// Whether the entry is the unplaced one that `ticket` was issued for.
    pub(crate) fn awaits(&self, ticket: u32) -> bool {
        self.slot.load(Ordering::Acquire) == ticket
    }

    /// Marks ring slot `slot` as being taken for the entry, if the entry is
    /// still the unplaced one `ticket` was issued for; false otherwise.
    pub(crate) fn reserve(&self, ticket: u32, slot: u32) -> bool {
        debug_assert_eq!(slot & (UNPLACED | RESERVING), 0, "a slot number");
        self.transition(ticket, slot | RESERVING)
    }

    /// Undoes [`Entry::reserve`] when the slot went to someone else.
    pub(crate) fn unreserve(&self, ticket: u32, slot: u32) -> bool {
        self.transition(slot | RESERVING, ticket)
    }

    /// Completes [`Entry::reserve`] once the slot is taken.
    pub(crate) fn settle(&self, slot: u32) -> bool {
        self.transition(slot | RESERVING, slot)
    }

    fn transition(&self, from: u32, to: u32) -> bool {
        self.slot
            .compare_exchange(from, to, Ordering::AcqRel, Ordering::Acquire)
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
        assert_eq!(entry.slot(), None);
        assert!(entry.awaits(ticket));
        assert!(
            !entry.reserve(Entry::<()>::ticket(8), 3),
            "another's ticket"
        );
        assert!(entry.reserve(ticket, 3));
        assert!(!entry.reserve(ticket, 4), "reserved once");
        assert_eq!(entry.slot(), None, "not placed until settled");
        assert!(entry.is_reserving(3) && entry.holds(3) && !entry.holds(4));
        assert!(
            !entry.unreserve(ticket, 4),
            "unreserves only the slot given"
        );
        assert!(entry.unreserve(ticket, 3));
        assert!(entry.awaits(ticket) && !entry.holds(3));
        assert!(!entry.settle(3), "nothing to settle");
        assert!(entry.reserve(ticket, 0));
        assert!(entry.settle(0));
        assert_eq!(entry.slot(), Some(0));
        assert!(entry.holds(0) && !entry.is_reserving(0));
        entry.move_to(5);
        assert_eq!(entry.slot(), Some(5));
    }

    #[test]
    fn tickets_are_never_slot_numbers() {
        for version in [0, 1, u32::MAX as u64, 1 << 31, u64::MAX] {
            assert_eq!(Entry::<()>::ticket(version) & UNPLACED, UNPLACED);
            let slot = crate::builder::MAX_SIZE_LIMIT as u32 - 1;
            assert_eq!(slot & (UNPLACED | RESERVING), 0, "the last slot number");
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
