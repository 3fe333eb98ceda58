//! The simulated upstream: a prompt hub that answers in 20-50 ms, fails some
//! of its calls, and publishes new versions of its prompts as time goes on.
//! A real service would call its hub over HTTP here.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::rngs::SmallRng;
use rand::{RngExt, SeedableRng};
use swr_cache::{Fetched, Fetcher};

/// How the simulated hub behaves.
#[derive(Clone, Copy, Debug)]
pub struct Settings {
    /// Prompts the hub holds: `prompt-0` to `prompt-{prompts - 1}`.
    pub prompts: usize,
    /// The shortest and the longest time a call takes.
    pub latency: (Duration, Duration),
    /// The share of calls that fail, 0 to 1.
    pub error_rate: f64,
    /// New versions the hub publishes a second, of prompts drawn at random.
    pub changes_per_sec: u32,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            prompts: 2_000,
            latency: (Duration::from_millis(20), Duration::from_millis(50)),
            error_rate: 0.05,
            changes_per_sec: 50,
        }
    }
}

/// A prompt as the hub serves it.
#[derive(Debug, PartialEq, Eq)]
pub struct Prompt {
    pub name: String,
    pub version: u64,
    pub template: String,
}

/// Why a call to the hub failed.
#[derive(Debug, PartialEq, Eq)]
pub enum UpstreamError {
    /// The hub answered 503 (the simulated failures).
    Unavailable,
}

impl fmt::Display for UpstreamError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Unavailable => f.write_str("the prompt hub answered 503"),
        }
    }
}

impl std::error::Error for UpstreamError {}

/// The simulated prompt hub: the cache's fetcher. Clones share one hub.
#[derive(Clone)]
pub struct Upstream {
    hub: Arc<Hub>,
}

/// The hub's state.
struct Hub {
    settings: Settings,
    /// Per prompt: its current version.
    versions: Vec<AtomicU64>,
    /// Draws latencies, failures and which prompts change; off the read
    /// path (only fetches and the publisher take it), so a mutex is fine.
    rng: Mutex<SmallRng>,
    calls: AtomicU64,
}

impl Upstream {
    pub fn new(settings: Settings) -> Self {
        let hub = Hub {
            settings,
            versions: (0..settings.prompts).map(|_| AtomicU64::new(1)).collect(),
            rng: Mutex::new(SmallRng::seed_from_u64(17)),
            calls: AtomicU64::new(0),
        };
        Self { hub: Arc::new(hub) }
    }

    /// Calls made to the hub so far.
    pub fn calls(&self) -> u64 {
        self.hub.calls.load(Ordering::Relaxed)
    }

    /// Publishes `changes_per_sec` new versions a second, for as long as the
    /// runtime runs.
    pub fn spawn_publisher(&self) -> tokio::task::JoinHandle<()> {
        let hub = Arc::clone(&self.hub);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(100));
            let mut owed = 0.0;
            loop {
                tick.tick().await;
                owed += f64::from(hub.settings.changes_per_sec) / 10.0;
                while owed >= 1.0 {
                    hub.publish_one();
                    owed -= 1.0;
                }
            }
        })
    }
}

impl Hub {
    /// The index of a prompt the hub holds, from its name.
    fn index(&self, name: &str) -> Option<usize> {
        let index: usize = name.strip_prefix("prompt-")?.parse().ok()?;
        // `prompt-01` would parse as 1: only the canonical name exists.
        (index < self.settings.prompts && name == format!("prompt-{index}")).then_some(index)
    }

    /// Publishes a new version of a prompt drawn at random.
    fn publish_one(&self) {
        let prompt = self.rng().random_range(0..self.versions.len().max(1));
        if let Some(version) = self.versions.get(prompt) {
            version.fetch_add(1, Ordering::Release);
        }
    }

    fn rng(&self) -> std::sync::MutexGuard<'_, SmallRng> {
        // A panic while holding it cannot leave the generator half-written.
        self.rng
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Fetcher<String, Arc<Prompt>> for Upstream {
    type Error = UpstreamError;

    /// Answers "unchanged" when the cached version is the hub's (as a hub
    /// answering 304 to a conditional request would), so the cache keeps
    /// its value and only its age starts over.
    async fn fetch(
        &self,
        name: &String,
        current: Option<&Arc<Prompt>>,
    ) -> Result<Fetched<Arc<Prompt>>, UpstreamError> {
        let hub = &self.hub;
        hub.calls.fetch_add(1, Ordering::Relaxed);
        let (latency, fail) = {
            let mut rng = hub.rng();
            let (low, high) = hub.settings.latency;
            let latency = low + (high.saturating_sub(low)).mul_f64(rng.random::<f64>());
            (latency, rng.random::<f64>() < hub.settings.error_rate)
        };
        tokio::time::sleep(latency).await;
        if fail {
            return Err(UpstreamError::Unavailable);
        }
        let Some(index) = hub.index(name) else {
            return Ok(Fetched::Gone);
        };
        let version = hub.versions[index].load(Ordering::Acquire);
        if current.is_some_and(|prompt| prompt.version == version) {
            return Ok(Fetched::Unchanged);
        }
        Ok(Fetched::Value(Arc::new(Prompt {
            name: name.clone(),
            version,
            template: format!("You are the assistant of {name}, revision {version}. {{question}}"),
        })))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn quick(error_rate: f64) -> Upstream {
        Upstream::new(Settings {
            prompts: 3,
            latency: (Duration::ZERO, Duration::ZERO),
            error_rate,
            changes_per_sec: 0,
        })
    }

    #[tokio::test(start_paused = true)]
    async fn a_prompt_the_hub_holds_is_served_at_its_current_version() {
        let upstream = quick(0.0);
        let Ok(Fetched::Value(prompt)) = upstream.fetch(&"prompt-2".to_owned(), None).await else {
            panic!("prompt-2 exists");
        };
        assert_eq!((prompt.name.as_str(), prompt.version), ("prompt-2", 1));
        upstream.hub.versions[2].fetch_add(1, Ordering::Release);
        let Ok(Fetched::Value(newer)) = upstream.fetch(&"prompt-2".to_owned(), Some(&prompt)).await
        else {
            panic!("a new version is a new value");
        };
        assert_eq!(newer.version, 2);
    }

    #[tokio::test(start_paused = true)]
    async fn the_cached_version_is_answered_unchanged() {
        let upstream = quick(0.0);
        let Ok(Fetched::Value(prompt)) = upstream.fetch(&"prompt-0".to_owned(), None).await else {
            panic!("prompt-0 exists");
        };
        let again = upstream.fetch(&"prompt-0".to_owned(), Some(&prompt)).await;
        assert_eq!(again, Ok(Fetched::Unchanged));
    }

    #[tokio::test(start_paused = true)]
    async fn names_the_hub_does_not_hold_are_gone() {
        let upstream = quick(0.0);
        for name in ["prompt-3", "prompt-01", "prompt-", "other", "prompt--1"] {
            let answer = upstream.fetch(&name.to_owned(), None).await;
            assert_eq!(answer, Ok(Fetched::Gone), "{name}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_hub_that_always_fails_answers_unavailable() {
        let upstream = quick(1.0);
        let answer = upstream.fetch(&"prompt-0".to_owned(), None).await;
        assert_eq!(answer, Err(UpstreamError::Unavailable));
        assert_eq!(upstream.calls(), 1);
    }
}
