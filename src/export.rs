//! Reporting to the `metrics` facade (feature `metrics`), which the
//! ecosystem's exporters (Prometheus, StatsD, OpenTelemetry bridges) plug
//! into. Every series carries the label `cache` (the builder's
//! [`name`](crate::CacheBuilder::name), or `"default"`).
//!
//! | series | kind | what |
//! |---|---|---|
//! | `swr_cache_<counter>_total` | counter | each [`Metrics`] field (`hits`, `stale_hits`, `loads`, ...) |
//! | `swr_cache_entries`, `swr_cache_weight` | gauge | [`Cache::len`], [`Cache::weight`] |
//! | `swr_cache_refresher_running`, `_in_flight`, `_limit`, `_queued`, `_backing_off` | gauge | [`RefresherState`] |
//! | `swr_cache_refresher_breaker` | gauge | 0 closed, 1 open, 2 probing |
//! | `swr_cache_fetch_seconds` | histogram | each fetch, labelled `purpose` (`load`, `refresh`) and `outcome` (`value`, `unchanged`, `gone`, `error`, `timeout`) |
//! | `swr_cache_stale_served_seconds` | histogram | how far past its TTL each stale value served was |
//!
//! Counters and gauges are read from the cache (its per-thread stripes)
//! when reported, never pushed by a hit: once a second by the refresher
//! while it runs, and on each [`Cache::report_metrics`]. The histograms are
//! recorded as their events happen, off the hit path: a fetch's end, and a
//! hit on a stale value. Their handles are registered when the cache is
//! built, so install the recorder first.
//!
//! [`Metrics`]: crate::Metrics
//! [`Cache::len`]: crate::Cache::len
//! [`Cache::weight`]: crate::Cache::weight
//! [`RefresherState`]: crate::RefresherState
//! [`Cache::report_metrics`]: crate::Cache::report_metrics

use metrics::{Histogram, SharedString, counter, gauge, histogram};

use crate::fetch::{FetchError, Fetched};
use crate::metrics::Metrics;
use crate::refresh::{BreakerState, RefresherState};

/// The label value of a cache built without a name.
const UNNAMED: &str = "default";

/// A fetch's outcome, as the fetch histogram labels it.
const OUTCOMES: [&str; 5] = ["value", "unchanged", "gone", "error", "timeout"];

/// A cache's handles on the facade.
pub(crate) struct Export {
    name: SharedString,
    /// Fetch latencies: loads then refreshes, each by [`OUTCOMES`].
    fetches: [[Histogram; 5]; 2],
    stale_served: Histogram,
}

impl Export {
    pub(crate) fn new(name: Option<&str>) -> Self {
        let name = SharedString::from(name.unwrap_or(UNNAMED).to_owned());
        let fetch = |purpose: &'static str, outcome: &'static str| {
            histogram!("swr_cache_fetch_seconds", "cache" => name.clone(),
                "purpose" => purpose, "outcome" => outcome)
        };
        let by_outcome = |purpose| OUTCOMES.map(|outcome| fetch(purpose, outcome));
        Self {
            fetches: [by_outcome("load"), by_outcome("refresh")],
            stale_served: histogram!("swr_cache_stale_served_seconds", "cache" => name.clone()),
            name,
        }
    }

    /// A fetch ended after `seconds`: a refresh (of a cached value, or any
    /// fetch the refresher started, as the counters have it) or a load.
    pub(crate) fn fetched<V>(
        &self,
        refresh: bool,
        outcome: &Result<Fetched<V>, FetchError>,
        seconds: f64,
    ) {
        let at = match outcome {
            Ok(Fetched::Value(_)) => 0,
            Ok(Fetched::Unchanged) => 1,
            Ok(Fetched::Gone) => 2,
            Err(FetchError::TimedOut(_)) => 4,
            Err(_) => 3,
        };
        self.fetches[usize::from(refresh)][at].record(seconds);
    }

    /// A stale value was served, `seconds` past its TTL.
    pub(crate) fn stale_served(&self, seconds: f64) {
        self.stale_served.record(seconds);
    }

    /// Reports the counters and gauges as they are now.
    pub(crate) fn report(
        &self,
        metrics: &Metrics,
        entries: usize,
        weight: u64,
        refresher: &RefresherState,
    ) {
        for (field, value) in metrics.fields() {
            counter!(format!("swr_cache_{field}_total"), "cache" => self.name.clone())
                .absolute(value);
        }
        let set = |series: &'static str, value: f64| {
            gauge!(series, "cache" => self.name.clone()).set(value);
        };
        set("swr_cache_entries", entries as f64);
        set("swr_cache_weight", weight as f64);
        set(
            "swr_cache_refresher_running",
            f64::from(u8::from(refresher.running)),
        );
        set("swr_cache_refresher_in_flight", refresher.in_flight as f64);
        set("swr_cache_refresher_limit", refresher.limit as f64);
        set("swr_cache_refresher_queued", refresher.queued as f64);
        set(
            "swr_cache_refresher_backing_off",
            refresher.backing_off as f64,
        );
        let breaker = match refresher.breaker {
            BreakerState::Closed => 0.0,
            BreakerState::Open => 1.0,
            BreakerState::Probing => 2.0,
        };
        set("swr_cache_refresher_breaker", breaker);
    }
}
