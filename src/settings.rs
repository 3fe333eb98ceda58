//! A cache's configuration: the [`Settings`] snapshot it runs on, the
//! [`ConfigChange`] that [`Cache::configure`](crate::Cache::configure)
//! applies to it, and the [`ConfigError`] for settings that cannot be used.
//!
//! The live settings are one immutable snapshot in an `ArcSwap`: `configure`
//! builds the changed snapshot, checks it whole and swaps it in, and the
//! refresher loads it at each wake-up, so no one ever sees half a change.
//! The read path does not load it: it reads the TTL from a copy on a cache
//! line of its own (see `Inner`).

use std::fmt;
use std::time::Duration;

/// The largest `max_size`: a shard numbers its entries with 32 bits.
pub const MAX_SIZE_LIMIT: usize = u32::MAX as usize - 1;

/// The largest `max_weight`, a quarter of `u64::MAX`: weights are summed
/// with this much headroom, so no sum wraps. (It is 4.6 exabytes, should the
/// weights be bytes.)
pub const MAX_WEIGHT_LIMIT: u64 = u64::MAX >> 2;

pub(crate) const DEFAULT_MAX_SIZE: usize = 100;
pub(crate) const DEFAULT_TTL: Duration = Duration::from_secs(300);
pub(crate) const DEFAULT_REFRESH_INTERVAL: Duration = Duration::from_secs(60);
pub(crate) const DEFAULT_MAX_CONCURRENT_REFRESHES: usize = 256;
pub(crate) const DEFAULT_MIN_CONCURRENT_REFRESHES: usize = 4;
pub(crate) const DEFAULT_REFRESH_TIMEOUT: Duration = Duration::from_secs(30);
pub(crate) const DEFAULT_MAX_RETRY_BACKOFF: Duration = Duration::from_secs(600);

/// Every setting a running cache reads.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Settings {
    /// Without a weigher, the most entries; with one, the number of entries
    /// expected (it sizes the shards).
    pub(crate) max_size: usize,
    /// The bound on the sum of weights, with a weigher.
    pub(crate) max_weight: Option<u64>,
    pub(crate) ttl: Option<Duration>,
    /// How long past the TTL a value may still be served; `None`: forever.
    pub(crate) max_stale: Option<Duration>,
    pub(crate) refresh_interval: Duration,
    /// The most refreshes at once: the cap of the adaptive limit, or the
    /// fixed number.
    pub(crate) max_concurrent_refreshes: usize,
    /// The floor of the adaptive limit; `None`: the number is fixed at
    /// `max_concurrent_refreshes`.
    pub(crate) min_concurrent_refreshes: Option<usize>,
    pub(crate) refresh_timeout: Duration,
    pub(crate) refresh_on_read: bool,
    pub(crate) max_retry_backoff: Duration,
    /// The last fraction of each TTL a value goes stale at a random point
    /// in, in 1/65,536ths; [`BAD_JITTER`] for a fraction outside `0..=1`.
    pub(crate) refresh_jitter: u32,
    /// How long a key whose fetch answered `Gone` is remembered as gone;
    /// `None`: not at all. Set by the builder only.
    pub(crate) negative_ttl: Option<Duration>,
    /// How a batch fetcher's calls are gathered (set by the builder, and
    /// taken by a batch fetcher when it is set).
    pub(crate) batching: Batching,
}

/// How a batch fetcher's calls are gathered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Batching {
    /// The most keys in one call.
    pub(crate) max_batch: usize,
    /// How long a batch waits for more keys after its first.
    pub(crate) window: Duration,
}

/// The default [`Batching::max_batch`].
pub(crate) const DEFAULT_MAX_BATCH: usize = 64;

/// The default [`Batching::window`]: short beside a fetch, long enough for
/// misses arriving together to meet.
pub(crate) const DEFAULT_BATCH_WINDOW: Duration = Duration::from_millis(1);

impl Default for Batching {
    fn default() -> Self {
        Self {
            max_batch: DEFAULT_MAX_BATCH,
            window: DEFAULT_BATCH_WINDOW,
        }
    }
}

/// A `refresh_jitter` that was not a fraction from 0 to 1.
pub(crate) const BAD_JITTER: u32 = u32::MAX;

/// `fraction` (from 0 to 1) in 1/65,536ths, or [`BAD_JITTER`].
pub(crate) fn jitter_of(fraction: f64) -> u32 {
    if (0.0..=1.0).contains(&fraction) {
        (fraction * 65_536.0).round() as u32
    } else {
        BAD_JITTER
    }
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            max_size: DEFAULT_MAX_SIZE,
            max_weight: None,
            ttl: Some(DEFAULT_TTL),
            max_stale: None,
            refresh_interval: DEFAULT_REFRESH_INTERVAL,
            max_concurrent_refreshes: DEFAULT_MAX_CONCURRENT_REFRESHES,
            min_concurrent_refreshes: Some(DEFAULT_MIN_CONCURRENT_REFRESHES),
            refresh_timeout: DEFAULT_REFRESH_TIMEOUT,
            refresh_on_read: true,
            max_retry_backoff: DEFAULT_MAX_RETRY_BACKOFF,
            refresh_jitter: 0,
            negative_ttl: None,
            batching: Batching::default(),
        }
    }
}

impl Settings {
    /// The store's bound: the weight with a weigher, else the entry count.
    pub(crate) fn capacity(&self) -> u64 {
        self.max_weight.unwrap_or(self.max_size as u64)
    }

    /// Checks every setting; `weighted` says whether there is a weigher.
    pub(crate) fn validate(&self, weighted: bool) -> Result<(), ConfigError> {
        if self.max_size > MAX_SIZE_LIMIT {
            return Err(ConfigError::MaxSizeTooLarge {
                max_size: self.max_size,
            });
        }
        match (weighted, self.max_weight) {
            (true, None) => return Err(ConfigError::WeigherWithoutMaxWeight),
            (false, Some(_)) => return Err(ConfigError::MaxWeightWithoutWeigher),
            (true, Some(max_weight)) if max_weight > MAX_WEIGHT_LIMIT => {
                return Err(ConfigError::MaxWeightTooLarge { max_weight });
            }
            _ => {}
        }
        if self.ttl == Some(Duration::ZERO) {
            return Err(ConfigError::ZeroTtl);
        }
        if self.refresh_interval.is_zero() {
            return Err(ConfigError::ZeroRefreshInterval);
        }
        if self.max_concurrent_refreshes == 0 {
            return Err(ConfigError::ZeroMaxConcurrentRefreshes);
        }
        if let Some(floor) = self.min_concurrent_refreshes {
            if floor == 0 || floor > self.max_concurrent_refreshes {
                return Err(ConfigError::AdaptiveRefreshesFloor {
                    floor,
                    cap: self.max_concurrent_refreshes,
                });
            }
        }
        if self.refresh_timeout.is_zero() {
            return Err(ConfigError::ZeroRefreshTimeout);
        }
        if self.max_retry_backoff.is_zero() {
            return Err(ConfigError::ZeroMaxRetryBackoff);
        }
        if self.refresh_jitter == BAD_JITTER {
            return Err(ConfigError::RefreshJitter);
        }
        if self.batching.max_batch == 0 {
            return Err(ConfigError::ZeroMaxBatch);
        }
        if self.negative_ttl == Some(Duration::ZERO) {
            return Err(ConfigError::ZeroNegativeTtl);
        }
        Ok(())
    }
}

/// A change to a running cache's settings, for [`Cache::configure`]: only the
/// settings given change; the result is checked whole before it applies.
///
/// ```
/// use std::time::Duration;
/// use swr_cache::{Cache, ConfigChange};
///
/// let cache: Cache<u32, u32> = Cache::builder().max_size(100).build()?;
/// cache.configure(ConfigChange::new().max_size(10).ttl(None))?;
/// assert_eq!(cache.max_size(), 10);
/// # Ok::<(), swr_cache::ConfigError>(())
/// ```
///
/// [`Cache::configure`]: crate::Cache::configure
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[must_use]
pub struct ConfigChange {
    max_size: Option<usize>,
    max_weight: Option<u64>,
    ttl: Option<Option<Duration>>,
    max_stale: Option<Option<Duration>>,
    refresh_interval: Option<Duration>,
    max_concurrent_refreshes: Option<usize>,
    min_concurrent_refreshes: Option<Option<usize>>,
    refresh_timeout: Option<Duration>,
    refresh_on_read: Option<bool>,
    max_retry_backoff: Option<Duration>,
}

impl ConfigChange {
    /// A change that changes nothing yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// See [`CacheBuilder::max_size`](crate::CacheBuilder::max_size).
    /// Shrinking evicts down to the new size at once.
    pub fn max_size(mut self, max_size: usize) -> Self {
        self.max_size = Some(max_size);
        self
    }

    /// See [`CacheBuilder::max_weight`](crate::CacheBuilder::max_weight).
    /// Shrinking evicts down to the new weight at once.
    pub fn max_weight(mut self, max_weight: u64) -> Self {
        self.max_weight = Some(max_weight);
        self
    }

    /// See [`CacheBuilder::ttl`](crate::CacheBuilder::ttl). Ages already
    /// reached are judged against the new TTL at once.
    pub fn ttl(mut self, ttl: impl Into<Option<Duration>>) -> Self {
        self.ttl = Some(ttl.into());
        self
    }

    /// See [`CacheBuilder::max_stale`](crate::CacheBuilder::max_stale);
    /// judged against at once.
    pub fn max_stale(mut self, max_stale: impl Into<Option<Duration>>) -> Self {
        self.max_stale = Some(max_stale.into());
        self
    }

    /// See [`CacheBuilder::refresh_interval`](crate::CacheBuilder::refresh_interval).
    pub fn refresh_interval(mut self, interval: Duration) -> Self {
        self.refresh_interval = Some(interval);
        self
    }

    /// See [`CacheBuilder::max_concurrent_refreshes`](crate::CacheBuilder::max_concurrent_refreshes);
    /// fetches already under way finish.
    pub fn max_concurrent_refreshes(mut self, max: usize) -> Self {
        self.max_concurrent_refreshes = Some(max);
        self.min_concurrent_refreshes = Some(None);
        self
    }

    /// See [`CacheBuilder::adaptive_refreshes`](crate::CacheBuilder::adaptive_refreshes);
    /// the limit goes on from where it is, within the new bounds.
    pub fn adaptive_refreshes(mut self, floor: usize, cap: usize) -> Self {
        self.max_concurrent_refreshes = Some(cap);
        self.min_concurrent_refreshes = Some(Some(floor));
        self
    }

    /// See [`CacheBuilder::refresh_timeout`](crate::CacheBuilder::refresh_timeout);
    /// applies to fetches started from now on.
    pub fn refresh_timeout(mut self, timeout: Duration) -> Self {
        self.refresh_timeout = Some(timeout);
        self
    }

    /// See [`CacheBuilder::refresh_on_read`](crate::CacheBuilder::refresh_on_read).
    pub fn refresh_on_read(mut self, enabled: bool) -> Self {
        self.refresh_on_read = Some(enabled);
        self
    }

    /// See [`CacheBuilder::max_retry_backoff`](crate::CacheBuilder::max_retry_backoff).
    pub fn max_retry_backoff(mut self, cap: Duration) -> Self {
        self.max_retry_backoff = Some(cap);
        self
    }

    /// `settings` with this change applied.
    pub(crate) fn apply(&self, settings: &Settings) -> Settings {
        let mut next = settings.clone();
        if let Some(max_size) = self.max_size {
            next.max_size = max_size;
        }
        if let Some(max_weight) = self.max_weight {
            next.max_weight = Some(max_weight);
        }
        if let Some(ttl) = self.ttl {
            next.ttl = ttl;
        }
        if let Some(max_stale) = self.max_stale {
            next.max_stale = max_stale;
        }
        if let Some(interval) = self.refresh_interval {
            next.refresh_interval = interval;
        }
        if let Some(max) = self.max_concurrent_refreshes {
            next.max_concurrent_refreshes = max;
        }
        if let Some(floor) = self.min_concurrent_refreshes {
            next.min_concurrent_refreshes = floor;
        }
        if let Some(timeout) = self.refresh_timeout {
            next.refresh_timeout = timeout;
        }
        if let Some(enabled) = self.refresh_on_read {
            next.refresh_on_read = enabled;
        }
        if let Some(cap) = self.max_retry_backoff {
            next.max_retry_backoff = cap;
        }
        next
    }
}

/// A setting that cannot be used, from [`CacheBuilder::build`] or
/// [`Cache::configure`].
///
/// [`CacheBuilder::build`]: crate::CacheBuilder::build
/// [`Cache::configure`]: crate::Cache::configure
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConfigError {
    /// `ttl` was `Some(0)`: every entry would be stale as soon as written. Use
    /// `None` for entries that never go stale.
    ZeroTtl,
    /// `refresh_interval` was zero.
    ZeroRefreshInterval,
    /// `refresh_timeout` was zero.
    ZeroRefreshTimeout,
    /// `max_concurrent_refreshes` was zero: nothing would ever be refreshed.
    ZeroMaxConcurrentRefreshes,
    /// `max_retry_backoff` was zero.
    ZeroMaxRetryBackoff,
    /// `max_batch` was zero: a batch fetcher would fetch nothing.
    ZeroMaxBatch,
    /// `refresh_jitter` was not a fraction from 0 to 1.
    RefreshJitter,
    /// `negative_ttl` was zero: a gone key would be forgotten as soon as
    /// remembered. Leave it unset to remember none.
    ZeroNegativeTtl,
    /// `adaptive_refreshes` had a floor of zero, or above its cap.
    AdaptiveRefreshesFloor {
        /// The floor asked for.
        floor: usize,
        /// The cap asked for.
        cap: usize,
    },
    /// `max_size` was above [`MAX_SIZE_LIMIT`].
    MaxSizeTooLarge {
        /// The size asked for.
        max_size: usize,
    },
    /// `max_weight` was above [`MAX_WEIGHT_LIMIT`].
    MaxWeightTooLarge {
        /// The weight asked for.
        max_weight: u64,
    },
    /// A weigher was given without `max_weight`, the bound it weighs against.
    WeigherWithoutMaxWeight,
    /// `max_weight` was given without a weigher to weigh entries with.
    MaxWeightWithoutWeigher,
}

impl ConfigError {
    /// The name of the setting at fault, as the builder method is named.
    pub fn setting(&self) -> &'static str {
        match self {
            Self::ZeroTtl => "ttl",
            Self::ZeroRefreshInterval => "refresh_interval",
            Self::ZeroRefreshTimeout => "refresh_timeout",
            Self::ZeroMaxConcurrentRefreshes => "max_concurrent_refreshes",
            Self::ZeroMaxRetryBackoff => "max_retry_backoff",
            Self::ZeroMaxBatch => "max_batch",
            Self::RefreshJitter => "refresh_jitter",
            Self::ZeroNegativeTtl => "negative_ttl",
            Self::AdaptiveRefreshesFloor { .. } => "adaptive_refreshes",
            Self::MaxSizeTooLarge { .. } => "max_size",
            Self::MaxWeightTooLarge { .. }
            | Self::WeigherWithoutMaxWeight
            | Self::MaxWeightWithoutWeigher => "max_weight",
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::ZeroTtl => f.write_str("ttl must be more than zero (use None for no ttl)"),
            Self::ZeroRefreshInterval => f.write_str("refresh_interval must be more than zero"),
            Self::ZeroRefreshTimeout => f.write_str("refresh_timeout must be more than zero"),
            Self::ZeroMaxConcurrentRefreshes => {
                f.write_str("max_concurrent_refreshes must be more than zero")
            }
            Self::ZeroMaxRetryBackoff => f.write_str("max_retry_backoff must be more than zero"),
            Self::ZeroMaxBatch => f.write_str("max_batch must be more than zero"),
            Self::RefreshJitter => f.write_str("refresh_jitter must be a fraction from 0 to 1"),
            Self::ZeroNegativeTtl => f.write_str(
                "negative_ttl must be more than zero (leave it unset to remember no gone keys)",
            ),
            Self::AdaptiveRefreshesFloor { floor, cap } => write!(
                f,
                "adaptive_refreshes needs a floor from 1 to its cap, not {floor} with a cap of {cap}"
            ),
            Self::MaxSizeTooLarge { max_size } => {
                write!(
                    f,
                    "max_size {max_size} is above the limit of {MAX_SIZE_LIMIT}"
                )
            }
            Self::MaxWeightTooLarge { max_weight } => {
                write!(
                    f,
                    "max_weight {max_weight} is above the limit of {MAX_WEIGHT_LIMIT}"
                )
            }
            Self::WeigherWithoutMaxWeight => {
                f.write_str("a weigher needs max_weight, the total weight to bound")
            }
            Self::MaxWeightWithoutWeigher => {
                f.write_str("max_weight needs a weigher to weigh entries with")
            }
        }
    }
}

impl std::error::Error for ConfigError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_invalid_setting_is_named() {
        let base = Settings::default();
        let cases = [
            (ConfigChange::new().ttl(Some(Duration::ZERO)), false, "ttl"),
            (
                ConfigChange::new().refresh_interval(Duration::ZERO),
                false,
                "refresh_interval",
            ),
            (ConfigChange::new().max_size(usize::MAX), false, "max_size"),
            (
                ConfigChange::new().max_concurrent_refreshes(0),
                false,
                "max_concurrent_refreshes",
            ),
            (
                ConfigChange::new().refresh_timeout(Duration::ZERO),
                false,
                "refresh_timeout",
            ),
            (
                ConfigChange::new().max_retry_backoff(Duration::ZERO),
                false,
                "max_retry_backoff",
            ),
            (ConfigChange::new().max_weight(10), false, "max_weight"),
            (ConfigChange::new(), true, "max_weight"),
            (ConfigChange::new().max_weight(u64::MAX), true, "max_weight"),
        ];
        for (change, weighted, setting) in cases {
            let err = change.apply(&base).validate(weighted).unwrap_err();
            assert_eq!(err.setting(), setting);
            assert!(err.to_string().contains(setting), "{err}");
        }
        let fine = ConfigChange::new().max_size(0).ttl(None).apply(&base);
        assert_eq!(fine.validate(false), Ok(()));
        assert_eq!(fine.capacity(), 0);
        let weighted = ConfigChange::new().max_weight(7).apply(&base);
        assert_eq!(weighted.validate(true), Ok(()));
        assert_eq!(weighted.capacity(), 7);
    }
}
