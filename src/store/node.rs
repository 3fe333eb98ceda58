//! One entry as the store keeps it: key, value, and the words of state the
//! policy and the refresher need.
//!
//! A node is a heap allocation of its own, published in its shard's table
//! for readers (see [`published`](super::published)) and owned by the
//! shard's slab, where it is named by its index; the shard's queues link the
//! index in a [`Link`](super::queue::Link) kept beside the slab. The key and
//! value never change once the node is published (a new value is a new
//! node); the version, the slab index and [`Meta`] are atomics, written by
//! the shard's writers under its lock; readers, who take no lock, write
//! only the frequency and refresh bits of `meta`, and only with `fetch_or`.
//!
//! For a `u64 → u64` cache a node is 48 bytes: key, value, `meta`, its own
//! freshness, version, fingerprint and slab index.

use std::sync::atomic::{AtomicU32, Ordering};

use crate::sync::AtomicU64;

use crate::clock::Nanos;
use crate::freshness::{NEVER, Own, Terms};

/// The version of an entry's value: which change it came from. The top 40
/// bits number the user's writes in the shard; the low 24 count the
/// changes since that are not the user's (installs of fetched results, and
/// `mark_stale`), wrapping. A refresh installs its result only over the
/// exact version it fetched from (see `Shard::install`), so any change
/// since (a write, an install, a mark) supersedes it; `retain` and
/// `invalidate_if` remove an entry only if no user write came since they
/// looked ([`user_write`]), an install or a mark between not saving it.
///
/// Equal versions are only ever compared across the life of one fetch (or
/// of one `retain` pass), so a number may wrap as long as it does not come
/// round within one: 2^40 writes to a shard take 18 hours at the fastest a
/// shard writes (17 million a second), and 2^24 installs and marks of one
/// key need as many fetches of it (one at a time, each bounded by
/// `refresh_timeout`) or marks. A fetch with no time bound (a blocking
/// load; a flight parked on an idle runtime) or millions of marks during
/// one fetch could see the count come round exactly: unlikely, and stated
/// in the crate docs' limitations.
pub(crate) type Version = u64;

/// The bits of a [`Version`] that count changes since the user's write.
pub(crate) const CHANGES: Version = (1 << 24) - 1;

/// The user's write a version comes from, installs and marks aside.
#[inline]
pub(crate) fn user_write(version: Version) -> Version {
    version & !CHANGES
}

/// The version after a change that is not the user's (an install, a mark)
/// over `version`: the same user write, the next change.
#[inline]
pub(crate) fn changed_from(version: Version) -> Version {
    user_write(version) | (version.wrapping_add(1) & CHANGES)
}

pub(crate) struct Node<K, V> {
    pub(crate) key: K,
    pub(crate) value: V,
    pub(crate) meta: Meta,
    /// The value's own freshness ([`Own`]), or the cache's; written with
    /// the write time, under the shard's lock.
    own: AtomicU64,
    /// Written under the shard's lock; read by readers for their refresh
    /// requests.
    version: AtomicU64,
    /// The key's 32-bit fingerprint: what the shard's table is hashed by and
    /// what the ghost remembers, so no user `Hash` runs inside the store.
    pub(crate) fingerprint: u32,
    /// The node's index in its shard's slab; only writers use it (a plain
    /// word in effect: written and read under the shard's lock).
    slot: AtomicU32,
}

/// What a new node starts with besides its key and value.
#[derive(Clone, Copy)]
pub(crate) struct Born {
    pub(crate) fingerprint: u32,
    pub(crate) version: Version,
    pub(crate) now: Nanos,
    pub(crate) slot: u32,
    /// The policy's bits it inherits: its frequency and queue.
    pub(crate) freq: u8,
    pub(crate) in_main: bool,
    /// Written stale whatever its age.
    pub(crate) stale: bool,
    /// Its own freshness, or the cache's.
    pub(crate) own: Own,
}

impl<K, V> Node<K, V> {
    #[inline]
    pub(crate) fn new(key: K, value: V, born: Born) -> Self {
        let mut meta = stamp(born.now) | freq_bits(born.freq);
        if born.in_main {
            meta |= IN_MAIN;
        }
        if born.stale {
            meta |= MARKED_STALE;
        }
        Self {
            key,
            value,
            meta: Meta(AtomicU64::new(meta)),
            own: AtomicU64::new(born.own.0),
            version: AtomicU64::new(born.version),
            fingerprint: born.fingerprint,
            slot: AtomicU32::new(born.slot),
        }
    }

    /// The terms the value is judged by: its own, else the cache's, with
    /// its draw of the refresh jitter ([`Terms::drawn`], seeded by its
    /// fingerprint and write time, so each write draws anew).
    #[inline]
    pub(crate) fn terms(&self, cache: Terms) -> Terms {
        let terms = self.own_terms(cache);
        if terms.jitter == 0 {
            return terms;
        }
        let seed = super::mix((u64::from(self.fingerprint) << 32) ^ self.meta.written_at());
        terms.drawn(seed)
    }

    /// [`Node::terms`] without the jitter's draw: for a cache without
    /// jitter, whose hits should not carry its code.
    #[inline]
    pub(crate) fn own_terms(&self, cache: Terms) -> Terms {
        Own(self.own.load(Ordering::Relaxed)).terms(cache)
    }

    /// The value's own freshness, or [`Own::CACHE`].
    #[inline]
    pub(crate) fn own(&self) -> Own {
        Own(self.own.load(Ordering::Relaxed))
    }

    /// When the value goes stale by age (not counting a stale mark):
    /// [`NEVER`] if it does not.
    #[inline]
    pub(crate) fn stale_at(&self, cache: Terms) -> Nanos {
        self.meta.written_at().saturating_add(self.terms(cache).ttl)
    }

    /// Starts the value's age over at `now`, with freshness `own`: the
    /// value confirmed ([`Meta::renew`]). Under the shard's lock.
    #[inline]
    pub(crate) fn renew(&self, now: Nanos, own: Own) {
        self.own.store(own.0, Ordering::Relaxed);
        self.meta.renew(now);
    }

    #[inline]
    pub(crate) fn version(&self) -> Version {
        self.version.load(Ordering::Relaxed)
    }

    /// Under the shard's lock.
    #[inline]
    pub(crate) fn set_version(&self, version: Version) {
        self.version.store(version, Ordering::Relaxed);
    }

    /// The node's slab index; under the shard's lock.
    #[inline]
    pub(crate) fn slot(&self) -> u32 {
        self.slot.load(Ordering::Relaxed)
    }

    /// Under the shard's lock.
    #[inline]
    pub(crate) fn set_slot(&self, slot: u32) {
        self.slot.store(slot, Ordering::Relaxed);
    }
}

// The bits of `Meta`, from the top.
/// Set once this value's refresh has been asked for: by the first reader
/// who found it stale (who then sends the refresher a nudge), or by the
/// refresher taking the entry as due. Readers never ask twice, not while a
/// refresh is under way nor while it backs off after failing; the next
/// write of the entry (a refresh's result included) clears it.
const NUDGED: u64 = 1 << 63;
/// Set while the node is in the main queue, clear while in the small
/// (probationary) queue. Written under the shard's lock only.
const IN_MAIN: u64 = 1 << 62;
/// The frequency counter, three bits as a thermometer: the level is the
/// number of low bits set in a row. A reader raises the level by setting
/// the next bit with `fetch_or`, so two readers racing at one level raise
/// it once (an increment lost, which a saturating counter shrugs off) and
/// the counter can never overflow into the bits beside it. Lowered only by
/// the shard's writer, in one atomic step; a reader that judged the level
/// before a lowering may then set a bit above a gap (`0b101` reads as 1),
/// which only biases the count, as a lost increment does.
const FREQ_SHIFT: u32 = 59;
const FREQ_MASK: u64 = 0b111 << FREQ_SHIFT;
/// The highest frequency level.
pub(crate) const MAX_FREQ: u8 = 3;
/// Set on an entry written as stale whatever its age (a snapshot loaded
/// as stale), until its value is renewed. Written under the shard's lock.
const MARKED_STALE: u64 = 1 << 58;
/// When the value was written or last confirmed unchanged: 58 bits of
/// microseconds since the clock's base (rounded up, so a value is never
/// judged older than it is), 9,000 years. In nanoseconds they lasted 9
/// years, after which every value was stale as it was written.
const WRITTEN_AT: u64 = MARKED_STALE - 1;

/// Nanoseconds in the unit [`WRITTEN_AT`] counts.
const MICROSECOND: Nanos = 1_000;

/// `now` as [`WRITTEN_AT`] holds it.
#[inline]
fn stamp(now: Nanos) -> u64 {
    now.div_ceil(MICROSECOND).min(WRITTEN_AT)
}

/// When a word's value was written, in nanoseconds.
#[inline]
fn written(meta: u64) -> Nanos {
    (meta & WRITTEN_AT).saturating_mul(MICROSECOND)
}

/// The node's atomic word: write time, frequency and three flags.
pub(crate) struct Meta(AtomicU64);

impl Meta {
    #[inline]
    fn load(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }

    // Readers' transitions (shared access).

    /// A hit: raises the frequency by one level unless at the top. Reads
    /// first, so reads of a hot key write nothing once it is at the top.
    #[inline]
    pub(crate) fn touch(&self) {
        let meta = self.load();
        let level = freq_of(meta);
        if level < MAX_FREQ {
            self.0
                .fetch_or(1 << (FREQ_SHIFT + u32::from(level)), Ordering::Relaxed);
        }
    }

    /// Whether the value is older than `ttl` at `now`, or marked stale;
    /// `ttl == NEVER` is no TTL, and only a mark makes it stale then (a
    /// cache with no TTL at all marks nothing: it removes instead).
    #[inline]
    pub(crate) fn is_stale(&self, now: Nanos, ttl: Nanos) -> bool {
        stale(self.load(), now, ttl)
    }

    /// How old the value is at `now`.
    #[cfg(feature = "metrics")]
    #[inline]
    pub(crate) fn age(&self, now: Nanos) -> Nanos {
        now.saturating_sub(written(self.load()))
    }

    /// When the value was written (or last confirmed unchanged).
    #[inline]
    pub(crate) fn written_at(&self) -> Nanos {
        written(self.load())
    }

    /// Whether a stale value (see [`Meta::is_stale`]) is also past
    /// `ttl + max_stale`, too old to serve.
    #[inline]
    pub(crate) fn is_expired(&self, now: Nanos, ttl: Nanos, max_stale: Nanos) -> bool {
        now.saturating_sub(written(self.load())) > ttl.saturating_add(max_stale)
    }

    /// Claims the right to ask for this value's refresh, if it is stale
    /// at `now`: false if it is not, or was asked for already. Judged and
    /// claimed in one step, so a value renewed meanwhile (its refresh done)
    /// is not left marked as asked for. Reads first, so reads of a stale
    /// key write nothing once it has been asked for.
    #[inline]
    pub(crate) fn try_nudge(&self, now: Nanos, ttl: Nanos) -> bool {
        self.load() & NUDGED == 0
            && self
                .0
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |m| {
                    (m & NUDGED == 0 && stale(m, now, ttl)).then_some(m | NUDGED)
                })
                .is_ok()
    }

    /// Whether the value carries the stale mark ([`Meta::mark_stale`]).
    #[inline]
    pub(crate) fn is_marked_stale(&self) -> bool {
        self.load() & MARKED_STALE != 0
    }

    #[inline]
    pub(crate) fn is_nudged(&self) -> bool {
        self.load() & NUDGED != 0
    }

    #[inline]
    pub(crate) fn freq(&self) -> u8 {
        freq_of(self.load())
    }

    #[inline]
    pub(crate) fn in_main(&self) -> bool {
        self.load() & IN_MAIN != 0
    }

    // The writers' transitions, under the shard's lock. Readers may set
    // bits at the same moment, so each is one atomic read-modify-write.

    /// Changes the word by `change` in one atomic step.
    #[inline]
    fn update(&self, change: impl Fn(u64) -> u64) {
        let _ = self
            .0
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |m| Some(change(m)));
    }

    /// Starts the value's age over at `now`: the value confirmed. Keeps
    /// the policy's bits, clears the stale mark and the nudge (the value's
    /// next refresh has not been asked for).
    #[inline]
    pub(crate) fn renew(&self, now: Nanos) {
        self.update(|m| (m & !(WRITTEN_AT | MARKED_STALE | NUDGED)) | stamp(now));
    }

    /// Marks the value's refresh as asked for: the refresher took it.
    #[inline]
    pub(crate) fn set_nudged(&self) {
        self.0.fetch_or(NUDGED, Ordering::Relaxed);
    }

    /// Lets readers ask for this value's refresh again: the refresher gave
    /// it back without writing it.
    #[inline]
    pub(crate) fn clear_nudged(&self) {
        self.0.fetch_and(!NUDGED, Ordering::Relaxed);
    }

    /// Marks the value stale whatever its age, until it is renewed.
    #[inline]
    pub(crate) fn mark_stale(&self) {
        self.0.fetch_or(MARKED_STALE, Ordering::Relaxed);
    }

    /// Lowers the frequency by one level; false if it was at zero. In one
    /// step, as a reader may raise it meanwhile.
    #[inline]
    pub(crate) fn cool(&self) -> bool {
        self.0
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |m| {
                let level = freq_of(m);
                (level > 0).then(|| (m & !FREQ_MASK) | freq_bits(level - 1))
            })
            .is_ok()
    }

    /// Sets the frequency to `level` (at most [`MAX_FREQ`]).
    #[inline]
    pub(crate) fn set_freq(&self, level: u8) {
        self.update(|m| (m & !FREQ_MASK) | freq_bits(level));
    }

    /// Moves the node's queue mark: main if `main`, else small.
    #[inline]
    pub(crate) fn set_in_main(&self, main: bool) {
        if main {
            self.0.fetch_or(IN_MAIN, Ordering::Relaxed);
        } else {
            self.0.fetch_and(!IN_MAIN, Ordering::Relaxed);
        }
    }
}

/// [`Meta::is_stale`] of a word.
#[inline]
fn stale(meta: u64, now: Nanos, ttl: Nanos) -> bool {
    meta & MARKED_STALE != 0 || (ttl != NEVER && now.saturating_sub(written(meta)) > ttl)
}

#[inline]
fn freq_of(meta: u64) -> u8 {
    ((meta & FREQ_MASK) >> FREQ_SHIFT).trailing_ones() as u8
}

/// The thermometer bits of frequency `level` (at most [`MAX_FREQ`]).
#[inline]
fn freq_bits(level: u8) -> u64 {
    ((1u64 << level.min(MAX_FREQ)) - 1) << FREQ_SHIFT
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Microseconds, the unit write times are kept in.
    const US: Nanos = MICROSECOND;

    fn written_at(meta: &Meta) -> Nanos {
        written(meta.load())
    }

    fn meta_at(now: Nanos) -> Meta {
        Meta(AtomicU64::new(stamp(now)))
    }

    #[test]
    fn a_node_of_words_is_six_words() {
        assert_eq!(std::mem::size_of::<Node<u64, u64>>(), 48);
    }

    #[test]
    fn the_frequency_saturates_and_never_touches_the_time_or_flags() {
        let meta = meta_at(1234 * US);
        assert_eq!(meta.freq(), 0);
        for level in 1..=MAX_FREQ {
            meta.touch();
            assert_eq!(meta.freq(), level);
        }
        meta.touch();
        assert_eq!(meta.freq(), MAX_FREQ, "saturates");
        assert_eq!(written_at(&meta), 1234 * US);
        assert!(!meta.in_main());
        assert!(
            !meta.try_nudge(1234 * US, NEVER),
            "never stale without a TTL"
        );
        assert!(meta.try_nudge(5000 * US, 10 * US), "stale: asked for");
        assert!(meta.cool());
        assert_eq!(meta.freq(), 2);
        meta.set_freq(0);
        assert!(!meta.cool(), "nothing to lower");
        meta.set_freq(9);
        assert_eq!(meta.freq(), MAX_FREQ, "clamped");
        assert!(!meta.try_nudge(5000 * US, 10 * US), "the flag survived");
        assert_eq!(written_at(&meta), 1234 * US);
        meta.renew(2000 * US);
        assert!(
            meta.try_nudge(5000 * US, 10 * US),
            "a new value's refresh is asked for anew"
        );
        assert_eq!(meta.freq(), MAX_FREQ, "renewal keeps the policy's bits");
    }

    #[test]
    fn a_stale_mark_holds_until_renewed_whatever_the_ttl() {
        let meta = meta_at(100 * US);
        meta.mark_stale();
        assert!(meta.is_stale(100 * US, 50 * US), "marked: stale at any age");
        assert!(meta.is_stale(100 * US, NEVER), "marked: stale with no TTL");
        assert_eq!(written_at(&meta), 100 * US);
        meta.renew(200 * US);
        assert!(
            !meta.is_stale(200 * US, 50 * US),
            "renewed: the mark is gone"
        );
    }

    #[test]
    fn expiry_is_past_the_ttl_and_the_bound() {
        let meta = meta_at(100 * US);
        assert!(
            !meta.is_expired(180 * US, 50 * US, 30 * US),
            "at ttl + bound: served"
        );
        assert!(meta.is_expired(180 * US + 1, 50 * US, 30 * US));
        assert!(!meta.is_expired(u64::MAX, 50, NEVER), "no bound");
    }

    #[test]
    fn staleness_and_renewal() {
        let meta = meta_at(100 * US);
        assert!(!meta.is_stale(150 * US, 50 * US));
        assert!(meta.is_stale(150 * US + 1, 50 * US));
        assert!(!meta.is_stale(u64::MAX, NEVER), "NEVER means never stale");
        assert!(
            !meta.is_stale(0, 50 * US),
            "a clock behind the write is not stale"
        );
        meta.set_in_main(true);
        meta.touch();
        meta.renew(u64::MAX);
        assert_eq!(written_at(&meta), u64::MAX, "the clock's whole range fits");
        assert!(meta.in_main() && meta.freq() == 1, "flags kept");
        meta.renew(7 * US);
        assert_eq!(written_at(&meta), 7 * US);
        meta.set_in_main(false);
        assert!(!meta.in_main());
    }

    /// A time between two microseconds is kept as the later, so a value
    /// is judged its age or younger, never older: stale no earlier than
    /// its TTL.
    #[test]
    fn a_write_time_rounds_up_so_no_value_goes_stale_early() {
        let meta = meta_at(100 * US + 1);
        assert_eq!(written_at(&meta), 101 * US);
        assert!(!meta.is_stale(150 * US + 1, 50 * US), "exactly its TTL old");
        assert!(meta.is_stale(151 * US + 1, 50 * US));
    }

    /// (Review #18.6.) Write times were 58 bits of nanoseconds: 9.1 years
    /// after a cache was built they saturated, and every value was stale
    /// as it was written.
    #[test]
    fn a_value_written_ten_years_into_a_caches_life_is_fresh() {
        let ten_years: Nanos = 10 * 365 * 24 * 3600 * 1_000_000_000;
        let ttl: Nanos = 60 * 1_000_000_000;
        let meta = meta_at(ten_years);
        assert!(!meta.is_stale(ten_years + ttl, ttl));
        assert!(meta.is_stale(ten_years + ttl + US, ttl));
        assert!(!meta.is_expired(ten_years + ttl + US, ttl, ttl));
    }
}
