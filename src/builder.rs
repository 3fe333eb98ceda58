//! [`CacheBuilder`], the live settings of a cache, and [`ConfigError`].

use std::fmt;
use std::hash::{BuildHasher, Hash};
use std::marker::PhantomData;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::Cache;
use crate::time::{Nanos, duration_to_nanos};

/// The default hasher: foldhash, seeded at random, so keys chosen by an
/// attacker cannot be aimed at one shard.
pub type DefaultHasher = foldhash::fast::RandomState;

/// The largest `max_size`: slots are numbered with 32 bits.
pub const MAX_SIZE_LIMIT: usize = u32::MAX as usize;

pub(crate) const DEFAULT_MAX_SIZE: usize = 100;
pub(crate) const DEFAULT_TTL: Duration = Duration::from_secs(300);
pub(crate) const DEFAULT_REFRESH_INTERVAL: Duration = Duration::from_secs(60);

/// Builds a [`Cache`]; from [`Cache::builder`].
///
/// Defaults follow the LangSmith SDK's prompt cache: `max_size` 100,
/// `ttl` 300 s, `refresh_interval` 60 s.
///
/// ```
/// use std::time::Duration;
/// use swr_cache::Cache;
///
/// let cache: Cache<String, u64> = Cache::builder()
///     .max_size(10_000)
///     .ttl(Some(Duration::from_secs(60)))
///     .build()?;
/// # Ok::<(), swr_cache::ConfigError>(())
/// ```
#[must_use]
pub struct CacheBuilder<K, V, S = DefaultHasher> {
    pub(crate) max_size: usize,
    pub(crate) ttl: Option<Duration>,
    pub(crate) refresh_interval: Duration,
    pub(crate) hasher: S,
    _types: PhantomData<fn(K) -> V>,
}

impl<K, V> Default for CacheBuilder<K, V> {
    fn default() -> Self {
        Self {
            max_size: DEFAULT_MAX_SIZE,
            ttl: Some(DEFAULT_TTL),
            refresh_interval: DEFAULT_REFRESH_INTERVAL,
            hasher: DefaultHasher::default(),
            _types: PhantomData,
        }
    }
}

impl<K, V, S> CacheBuilder<K, V, S> {
    /// The most entries the cache holds; `0` disables it (nothing is stored,
    /// `get` returns `None` and counts nothing). At most [`MAX_SIZE_LIMIT`].
    pub fn max_size(mut self, max_size: usize) -> Self {
        self.max_size = max_size;
        self
    }

    /// The age after which an entry is stale: still served, and due for a
    /// refresh. `None` is offline mode: nothing is ever stale.
    pub fn ttl(mut self, ttl: Option<Duration>) -> Self {
        self.ttl = ttl;
        self
    }

    /// How often the refresher looks for stale entries.
    pub fn refresh_interval(mut self, interval: Duration) -> Self {
        self.refresh_interval = interval;
        self
    }

    /// Hashes keys with `hasher` instead of the default, seeded foldhash.
    pub fn hasher<S2>(self, hasher: S2) -> CacheBuilder<K, V, S2> {
        CacheBuilder {
            max_size: self.max_size,
            ttl: self.ttl,
            refresh_interval: self.refresh_interval,
            hasher,
            _types: PhantomData,
        }
    }

    /// Checks the settings and builds the cache.
    ///
    /// # Errors
    /// A [`ConfigError`] naming the first invalid setting.
    pub fn build(self) -> Result<Cache<K, V, S>, ConfigError>
    where
        K: Hash + Eq + Clone + Send + Sync + 'static,
        V: Clone + Send + Sync + 'static,
        S: BuildHasher + Clone + Send + Sync + 'static,
    {
        let change = ConfigChange {
            max_size: Some(self.max_size),
            ttl: Some(self.ttl),
            refresh_interval: Some(self.refresh_interval),
        };
        change.validate()?;
        Cache::from_builder(self)
    }
}

/// A change to a running cache's settings, for [`Cache::configure`]: only the
/// settings given change.
///
/// ```
/// use std::time::Duration;
/// use swr_cache::{Cache, ConfigChange};
///
/// let cache: Cache<u32, u32> = Cache::builder().max_size(100).build()?;
/// cache.configure(ConfigChange::new().max_size(10).ttl(None))?;
/// # Ok::<(), swr_cache::ConfigError>(())
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[must_use]
pub struct ConfigChange {
    pub(crate) max_size: Option<usize>,
    pub(crate) ttl: Option<Option<Duration>>,
    pub(crate) refresh_interval: Option<Duration>,
}

impl ConfigChange {
    /// A change that changes nothing yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// See [`CacheBuilder::max_size`]. Shrinking evicts down to the new size.
    pub fn max_size(mut self, max_size: usize) -> Self {
        self.max_size = Some(max_size);
        self
    }

    /// See [`CacheBuilder::ttl`]. Ages already reached are judged against the
    /// new TTL at once.
    pub fn ttl(mut self, ttl: Option<Duration>) -> Self {
        self.ttl = Some(ttl);
        self
    }

    /// See [`CacheBuilder::refresh_interval`].
    pub fn refresh_interval(mut self, interval: Duration) -> Self {
        self.refresh_interval = Some(interval);
        self
    }

    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        if let Some(max_size) = self.max_size {
            if max_size > MAX_SIZE_LIMIT {
                return Err(ConfigError::MaxSizeTooLarge { max_size });
            }
        }
        if self.ttl == Some(Some(Duration::ZERO)) {
            return Err(ConfigError::ZeroTtl);
        }
        if self.refresh_interval == Some(Duration::ZERO) {
            return Err(ConfigError::ZeroRefreshInterval);
        }
        Ok(())
    }
}

/// A setting that cannot be used, from [`CacheBuilder::build`] or
/// [`Cache::configure`].
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConfigError {
    /// `ttl` was `Some(0)`: every entry would be stale as soon as written. Use
    /// `None` for entries that never go stale.
    ZeroTtl,
    /// `refresh_interval` was zero.
    ZeroRefreshInterval,
    /// `max_size` was above [`MAX_SIZE_LIMIT`].
    MaxSizeTooLarge {
        /// The size asked for.
        max_size: usize,
    },
    /// The eviction ring for `max_size` entries (8 bytes each) could not be
    /// allocated.
    OutOfMemory {
        /// The size asked for.
        max_size: usize,
    },
}

impl ConfigError {
    /// The name of the setting at fault, as the builder method is named.
    pub fn setting(&self) -> &'static str {
        match self {
            Self::ZeroTtl => "ttl",
            Self::ZeroRefreshInterval => "refresh_interval",
            Self::MaxSizeTooLarge { .. } | Self::OutOfMemory { .. } => "max_size",
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::ZeroTtl => f.write_str("ttl must be more than zero (use None for no ttl)"),
            Self::ZeroRefreshInterval => f.write_str("refresh_interval must be more than zero"),
            Self::MaxSizeTooLarge { max_size } => {
                write!(f, "max_size {max_size} is above the limit of {MAX_SIZE_LIMIT}")
            }
            Self::OutOfMemory { max_size } => {
                write!(f, "could not allocate the eviction ring for max_size {max_size}")
            }
        }
    }
}

impl std::error::Error for ConfigError {}

/// The settings a running cache reads on its paths, changeable live.
pub(crate) struct LiveSettings {
    /// Nanoseconds; 0 means no TTL.
    ttl: AtomicU64,
    refresh_interval: AtomicU64,
}

impl LiveSettings {
    pub(crate) fn new(ttl: Option<Duration>, refresh_interval: Duration) -> Self {
        let settings = Self {
            ttl: AtomicU64::new(0),
            refresh_interval: AtomicU64::new(0),
        };
        settings.set_ttl(ttl);
        settings.set_refresh_interval(refresh_interval);
        settings
    }

    #[inline]
    pub(crate) fn ttl_nanos(&self) -> Nanos {
        self.ttl.load(Ordering::Relaxed)
    }

    pub(crate) fn ttl(&self) -> Option<Duration> {
        match self.ttl_nanos() {
            0 => None,
            n => Some(Duration::from_nanos(n)),
        }
    }

    pub(crate) fn set_ttl(&self, ttl: Option<Duration>) {
        // A validated TTL is non-zero; clamp so one nanosecond does not read as "none".
        let nanos = ttl.map_or(0, |t| duration_to_nanos(t).max(1));
        self.ttl.store(nanos, Ordering::Relaxed);
    }

    pub(crate) fn refresh_interval(&self) -> Duration {
        Duration::from_nanos(self.refresh_interval.load(Ordering::Relaxed))
    }

    pub(crate) fn set_refresh_interval(&self, interval: Duration) {
        let nanos = duration_to_nanos(interval).max(1);
        self.refresh_interval.store(nanos, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_invalid_setting_is_named() {
        let cases = [
            (ConfigChange::new().ttl(Some(Duration::ZERO)), "ttl"),
            (
                ConfigChange::new().refresh_interval(Duration::ZERO),
                "refresh_interval",
            ),
            (ConfigChange::new().max_size(usize::MAX), "max_size"),
        ];
        for (change, setting) in cases {
            let err = change.validate().unwrap_err();
            assert_eq!(err.setting(), setting);
            assert!(err.to_string().contains(setting));
        }
        assert_eq!(ConfigChange::new().max_size(0).ttl(None).validate(), Ok(()));
    }
}
