//! [`Freshness`]: how long one value is fresh, and how long past that it may
//! still be served while its refreshes fail; and [`Own`], the word a node
//! keeps it in.
//!
//! A value either follows the cache's terms (`ttl` and `max_stale`, which
//! [`Cache::configure`](crate::Cache::configure) may change later for every
//! such value) or carries its own, given when it was written: by
//! [`Cache::insert_with_ttl`](crate::Cache::insert_with_ttl) or by the
//! builder's [`freshness`](crate::CacheBuilder::freshness) function, as an
//! HTTP response carries its `max-age`.

use std::sync::Arc;
use std::time::Duration;

use crate::clock::{Nanos, duration_to_nanos};

/// How long a value is fresh, and how long past that it may still be
/// served stale while its refreshes fail.
///
/// ```
/// use std::time::Duration;
/// use swr_cache::Freshness;
///
/// // Fresh for a minute; served stale for at most ten more.
/// let f = Freshness::ttl(Duration::from_secs(60)).max_stale(Duration::from_secs(600));
/// assert_eq!(f.ttl_of(), Some(Duration::from_secs(60)));
/// // Never stale; only the bound removes it.
/// assert_eq!(Freshness::forever().ttl_of(), None);
/// ```
///
/// A value's own times are kept to the millisecond (to the second past 24
/// days), rounded up: a value never goes stale before its TTL.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Freshness {
    ttl: Term,
    max_stale: Term,
}

/// One of a [`Freshness`]'s two times.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Term {
    /// The cache's, as configured now or later.
    Cache,
    /// This long.
    For(Duration),
    /// No end: never stale, or served stale for ever.
    Never,
}

impl Freshness {
    /// Fresh for `ttl` after it is written; served stale for the cache's
    /// `max_stale` past that, unless [`max_stale`](Self::max_stale) says
    /// otherwise. A TTL of zero is stale from the moment after its write.
    pub const fn ttl(ttl: Duration) -> Self {
        Self {
            ttl: Term::For(ttl),
            max_stale: Term::Cache,
        }
    }

    /// Never stale: never refreshed by age (a
    /// [`mark_stale`](crate::Cache::mark_stale) still marks it).
    pub const fn forever() -> Self {
        Self {
            ttl: Term::Never,
            max_stale: Term::Cache,
        }
    }

    /// The cache's own terms, `ttl` and `max_stale`, as they are configured
    /// now and later: what a value written without a freshness of its own
    /// follows.
    pub const fn cache_default() -> Self {
        Self {
            ttl: Term::Cache,
            max_stale: Term::Cache,
        }
    }

    /// How long past its TTL the value may still be served while its
    /// refreshes fail; `None`: for ever. Past it, a read misses.
    #[must_use]
    pub fn max_stale(self, max_stale: impl Into<Option<Duration>>) -> Self {
        Self {
            max_stale: max_stale.into().map_or(Term::Never, Term::For),
            ..self
        }
    }

    /// The TTL this freshness gives: `None` for [`forever`](Self::forever)
    /// and for [`cache_default`](Self::cache_default) (which has none of
    /// its own).
    pub fn ttl_of(&self) -> Option<Duration> {
        match self.ttl {
            Term::For(ttl) => Some(ttl),
            Term::Cache | Term::Never => None,
        }
    }

    /// Whether it follows the cache's TTL.
    pub(crate) fn is_cache_default(&self) -> bool {
        *self == Self::cache_default()
    }

    /// The word a node keeps it in.
    pub(crate) fn own(self) -> Own {
        Own((u64::from(code(self.ttl)) << 32) | u64::from(code(self.max_stale)))
    }
}

impl Default for Freshness {
    /// [`Freshness::cache_default`].
    fn default() -> Self {
        Self::cache_default()
    }
}

/// Decides the freshness of each value written
/// ([`CacheBuilder::freshness`](crate::CacheBuilder::freshness)).
pub(crate) type FreshnessFn<K, V> = Arc<dyn Fn(&K, &V) -> Freshness + Send + Sync>;

/// The terms a value is judged by, in nanoseconds ([`NEVER`] for no
/// end): the cache's, for a value with no freshness of its own, or the
/// value's own; with the cache's refresh jitter either way.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Terms {
    /// Fresh for this long after its write, before the jitter's draw.
    pub(crate) ttl: Nanos,
    /// Served stale for at most this long past its TTL.
    pub(crate) max_stale: Nanos,
    /// The refresh jitter: the last part of the TTL the value goes stale
    /// at a drawn point in, in 1/65,536ths; 0 for none.
    pub(crate) jitter: u32,
    /// The least TTL the jitter's draw can leave: a value no older is
    /// fresh whatever its draw, so a hit judges most values without one.
    pub(crate) floor: Nanos,
}

impl Terms {
    pub(crate) fn new(ttl: Nanos, max_stale: Nanos, jitter: u32) -> Self {
        Self {
            ttl,
            max_stale,
            jitter,
            floor: ttl - self::jitter(ttl, jitter, u64::MAX),
        }
    }

    /// These terms with the TTL cut by the jitter's draw for one value
    /// (`seed`: 64 well-mixed bits of it): it goes stale at a point in the
    /// last `jitter` of its TTL, and `max_stale` counts from there. Drawn
    /// when the value is judged, from the TTL in force then, so a
    /// `configure` of the TTL moves the point with it.
    #[inline]
    pub(crate) fn drawn(self, seed: u64) -> Self {
        let ttl = self.ttl - jitter(self.ttl, self.jitter, seed);
        Self {
            ttl,
            floor: ttl,
            ..self
        }
    }
}

/// No end: never stale, or served stale for ever.
pub(crate) const NEVER: Nanos = Nanos::MAX;

/// A value's own freshness as its node keeps it: the TTL's code in the
/// high half, `max_stale`'s in the low; 0 is the cache's terms for both.
/// A code is 0 for the cache's, `u32::MAX` for no end, `1 + ms` below
/// 2^31, and `2^31 + s` above (seconds past 24.8 days), rounded up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Own(pub(crate) u64);

impl Own {
    /// The cache's terms for both.
    pub(crate) const CACHE: Self = Self(0);

    /// The terms this word gives, the cache's `cache` where it has none.
    #[inline]
    pub(crate) fn terms(self, cache: Terms) -> Terms {
        if self.0 == 0 {
            return cache;
        }
        Terms::new(
            decode((self.0 >> 32) as u32, cache.ttl),
            decode(self.0 as u32, cache.max_stale),
            cache.jitter,
        )
    }

    /// The TTL this word gives, the cache's `cache` where it has none.
    #[inline]
    pub(crate) fn ttl(self, cache: Nanos) -> Nanos {
        decode((self.0 >> 32) as u32, cache)
    }
}

const CODE_CACHE: u32 = 0;
const CODE_NEVER: u32 = u32::MAX;
/// Codes from here count seconds.
const CODE_SECONDS: u32 = 1 << 31;
const MS: u64 = 1_000_000;
const S: u64 = 1_000_000_000;

fn code(term: Term) -> u32 {
    match term {
        Term::Cache => CODE_CACHE,
        Term::Never => CODE_NEVER,
        Term::For(d) => {
            let nanos = duration_to_nanos(d);
            let ms = nanos.div_ceil(MS);
            if ms < u64::from(CODE_SECONDS - 1) {
                1 + ms as u32
            } else {
                // Past the milliseconds' range; past the seconds' too, no end.
                let s = nanos.div_ceil(S);
                u32::try_from(s)
                    .ok()
                    .and_then(|s| CODE_SECONDS.checked_add(s))
                    .filter(|&c| c < CODE_NEVER)
                    .unwrap_or(CODE_NEVER)
            }
        }
    }
}

#[inline]
fn decode(code: u32, cache: Nanos) -> Nanos {
    match code {
        CODE_CACHE => cache,
        CODE_NEVER => NEVER,
        c if c < CODE_SECONDS => u64::from(c - 1) * MS,
        c => u64::from(c - CODE_SECONDS) * S,
    }
}

/// How much of `ttl` a value's draw of `refresh_jitter` (a fraction in
/// 1/65,536ths) takes off, so that it goes stale at a point in the last
/// `fraction` of its `ttl`: `seed` (any 64 bits, well mixed) picks the
/// point. Less than `ttl`.
#[inline]
pub(crate) fn jitter(ttl: Nanos, fraction: u32, seed: u64) -> Nanos {
    if fraction == 0 || ttl == NEVER {
        return 0;
    }
    let span = (u128::from(ttl) * u128::from(fraction)) >> 16;
    ((span * u128::from(seed >> 32)) >> 32) as Nanos
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cache() -> Terms {
        Terms::new(300 * S, NEVER, 0)
    }

    #[test]
    fn the_cache_default_is_the_zero_word_and_follows_the_cache() {
        assert_eq!(Freshness::cache_default().own(), Own::CACHE);
        assert_eq!(Own::CACHE.terms(cache()), cache());
        let later = Terms::new(S, 2 * S, 1 << 15);
        assert_eq!(Own::CACHE.terms(later), later, "configure reaches it");
    }

    #[test]
    fn own_times_round_trip_to_the_millisecond_rounded_up() {
        let f = Freshness::ttl(Duration::from_micros(1_500)).max_stale(Duration::ZERO);
        assert_eq!(f.own().terms(cache()), Terms::new(2 * MS, 0, 0));
        let zero = Freshness::ttl(Duration::ZERO).own().terms(cache());
        assert_eq!(zero.ttl, 0, "zero is a TTL, not the cache's");
        assert_eq!(zero.max_stale, NEVER, "the cache's bound");
        let only_bound = Freshness::cache_default()
            .max_stale(Duration::from_secs(5))
            .own();
        assert_eq!(only_bound.terms(cache()), Terms::new(300 * S, 5 * S, 0));
    }

    #[test]
    fn long_times_count_seconds_and_the_longest_are_never() {
        let day = Duration::from_secs(86_400);
        assert_eq!(Freshness::ttl(day).own().ttl(0), 86_400 * S);
        let month = Duration::from_secs(30 * 86_400) + Duration::from_millis(1);
        assert_eq!(
            Freshness::ttl(month).own().ttl(0),
            (30 * 86_400 + 1) * S,
            "past 24.8 days: whole seconds, up"
        );
        assert_eq!(Freshness::ttl(Duration::MAX).own().ttl(0), NEVER);
        assert_eq!(Freshness::forever().own().ttl(5), NEVER);
        assert_eq!(
            Freshness::ttl(day)
                .max_stale(None)
                .own()
                .terms(cache())
                .max_stale,
            NEVER
        );
    }

    #[test]
    fn jitter_is_within_the_last_fraction_and_off_at_zero() {
        let ttl = 100 * S;
        let half = 1 << 15;
        assert_eq!(jitter(ttl, 0, u64::MAX), 0);
        assert_eq!(jitter(NEVER, half, u64::MAX), 0);
        assert_eq!(jitter(ttl, half, 0), 0);
        let most = jitter(ttl, half, u64::MAX);
        assert!(most < 50 * S && most > 49 * S, "{most}");
        assert!(jitter(ttl, 1 << 16, u64::MAX) < ttl, "never the whole TTL");
        let terms = Terms::new(ttl, S, half);
        assert_eq!(terms.floor, ttl - most, "the floor is the longest draw");
        assert_eq!(terms.drawn(u64::MAX).ttl, ttl - most);
        assert!(terms.drawn(1 << 40).ttl > terms.floor);
        assert_eq!(terms.drawn(u64::MAX).max_stale, S, "the bound is kept");
    }
}
