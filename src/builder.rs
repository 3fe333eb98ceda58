//! [`CacheBuilder`], the live settings of a cache, and [`ConfigError`].

use std::fmt;
use std::hash::{BuildHasher, Hash};
use std::marker::PhantomData;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::Cache;
use crate::fetcher::{DynFetcher, IntoFetcher};
use crate::time::{Nanos, duration_to_nanos};
use std::sync::Arc;

/// The default hasher: foldhash, seeded at random, so keys chosen by an
/// attacker cannot be aimed at one shard.
pub type DefaultHasher = foldhash::fast::RandomState;

/// The largest `max_size`: slots are numbered with 30 bits.
pub const MAX_SIZE_LIMIT: usize = (1 << 30) - 1;

pub(crate) const DEFAULT_MAX_SIZE: usize = 100;
pub(crate) const DEFAULT_TTL: Duration = Duration::from_secs(300);
pub(crate) const DEFAULT_REFRESH_INTERVAL: Duration = Duration::from_secs(60);
pub(crate) const DEFAULT_MAX_CONCURRENT_REFRESHES: usize = 16;
pub(crate) const DEFAULT_REFRESH_TIMEOUT: Duration = Duration::from_secs(30);
pub(crate) const DEFAULT_MAX_RETRY_BACKOFF: Duration = Duration::from_secs(600);

/// Builds a [`Cache`]; from [`Cache::builder`].
///
/// Defaults follow the LangSmith SDK's prompt cache: `max_size` 100,
/// `ttl` 300 s, `refresh_interval` 60 s; and for the refresher:
/// `max_concurrent_refreshes` 16, `refresh_timeout` 30 s, `refresh_on_read`
/// on, `max_retry_backoff` 600 s.
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
    pub(crate) fetcher: Option<Arc<dyn DynFetcher<K, V>>>,
    pub(crate) refresh: RefreshSettings,
    _types: PhantomData<fn(K) -> V>,
}

/// The refresher's settings, fixed at build time.
#[derive(Clone, Copy, Debug)]
pub(crate) struct RefreshSettings {
    pub(crate) max_concurrent: usize,
    pub(crate) timeout: Duration,
    pub(crate) on_read: bool,
    pub(crate) max_retry_backoff: Duration,
}

impl<K, V> Default for CacheBuilder<K, V> {
    fn default() -> Self {
        Self {
            max_size: DEFAULT_MAX_SIZE,
            ttl: Some(DEFAULT_TTL),
            refresh_interval: DEFAULT_REFRESH_INTERVAL,
            hasher: DefaultHasher::default(),
            fetcher: None,
            refresh: RefreshSettings {
                max_concurrent: DEFAULT_MAX_CONCURRENT_REFRESHES,
                timeout: DEFAULT_REFRESH_TIMEOUT,
                on_read: true,
                max_retry_backoff: DEFAULT_MAX_RETRY_BACKOFF,
            },
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
            fetcher: self.fetcher,
            refresh: self.refresh,
            _types: PhantomData,
        }
    }

    /// Where values come from: an async closure taking the key,
    ///
    /// ```
    /// # use swr_cache::Cache;
    /// let cache: Cache<String, String> = Cache::builder()
    ///     .fetcher(|key: String| async move { Ok::<_, std::io::Error>(key.to_uppercase()) })
    ///     .build()?;
    /// # Ok::<(), swr_cache::ConfigError>(())
    /// ```
    ///
    /// or a type implementing [`Fetcher`](crate::Fetcher), which also sees the
    /// cached value and may answer [`Fetched::Unchanged`](crate::Fetched).
    /// The refresher ([`Cache::start`]), [`Cache::get_or_fetch`] and
    /// [`Cache::refresh`] call it.
    pub fn fetcher<M>(mut self, fetcher: impl IntoFetcher<K, V, M>) -> Self {
        self.fetcher = Some(fetcher.into_fetcher().0);
        self
    }

    /// How many fetches the refresher runs at once.
    pub fn max_concurrent_refreshes(mut self, max: usize) -> Self {
        self.refresh.max_concurrent = max;
        self
    }

    /// How long one fetch may take before it is cancelled and counted as an
    /// error.
    pub fn refresh_timeout(mut self, timeout: Duration) -> Self {
        self.refresh.timeout = timeout;
        self
    }

    /// Whether a `get` that finds a stale entry asks the refresher to fetch it
    /// now rather than at its next interval (Caffeine's refresh-after-write).
    pub fn refresh_on_read(mut self, enabled: bool) -> Self {
        self.refresh.on_read = enabled;
        self
    }

    /// The longest wait before retrying a key whose refreshes keep failing.
    /// Retries start one `refresh_interval` after the first failure and double
    /// with each failure after it, with random jitter, up to this cap.
    pub fn max_retry_backoff(mut self, cap: Duration) -> Self {
        self.refresh.max_retry_backoff = cap;
        self
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
        if self.refresh.max_concurrent == 0 {
            return Err(ConfigError::ZeroMaxConcurrentRefreshes);
        }
        if self.refresh.timeout.is_zero() {
            return Err(ConfigError::ZeroRefreshTimeout);
        }
        if self.refresh.max_retry_backoff.is_zero() {
            return Err(ConfigError::ZeroMaxRetryBackoff);
        }
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
    /// `refresh_timeout` was zero.
    ZeroRefreshTimeout,
    /// `max_concurrent_refreshes` was zero: nothing would ever be refreshed.
    ZeroMaxConcurrentRefreshes,
    /// `max_retry_backoff` was zero.
    ZeroMaxRetryBackoff,
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
            Self::ZeroRefreshTimeout => "refresh_timeout",
            Self::ZeroMaxConcurrentRefreshes => "max_concurrent_refreshes",
            Self::ZeroMaxRetryBackoff => "max_retry_backoff",
            Self::MaxSizeTooLarge { .. } | Self::OutOfMemory { .. } => "max_size",
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
            Self::MaxSizeTooLarge { max_size } => {
                write!(
                    f,
                    "max_size {max_size} is above the limit of {MAX_SIZE_LIMIT}"
                )
            }
            Self::OutOfMemory { max_size } => {
                write!(
                    f,
                    "could not allocate the eviction ring for max_size {max_size}"
                )
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
