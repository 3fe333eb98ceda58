//! Feature `metrics`: what the cache reports to the `metrics` facade, read
//! back from `metrics-util`'s debugging recorder.
#![cfg(feature = "metrics")]

use std::time::Duration;

use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use swr_cache::Cache;

/// One reading of every series: name, labels, value. (Reading resets the
/// debugging recorder's counters, so each check group reads once.)
struct Reading(Vec<Series>);

/// A series' name, labels and value.
type Series = (String, Vec<(String, String)>, DebugValue);

impl Reading {
    fn take(snapshotter: &Snapshotter) -> Self {
        let series = snapshotter
            .snapshot()
            .into_vec()
            .into_iter()
            .map(|(key, _, _, value)| {
                let key = key.key();
                let labels = key
                    .labels()
                    .map(|l| (l.key().to_owned(), l.value().to_owned()))
                    .collect();
                (key.name().to_owned(), labels, value)
            });
        Self(series.collect())
    }

    /// The value of the series `name` whose labels include all of `labels`.
    fn series(&self, name: &str, labels: &[(&str, &str)]) -> Option<&DebugValue> {
        self.0
            .iter()
            .find(|(n, have, _)| {
                n == name
                    && labels
                        .iter()
                        .all(|(k, v)| have.iter().any(|(hk, hv)| hk == k && hv == v))
            })
            .map(|(_, _, value)| value)
    }

    fn counter(&self, name: &str) -> Option<u64> {
        match self.series(name, &[("cache", "prompts")])? {
            DebugValue::Counter(n) => Some(*n),
            other => panic!("{name} is {other:?}"),
        }
    }

    fn gauge(&self, name: &str) -> Option<f64> {
        match self.series(name, &[("cache", "prompts")])? {
            DebugValue::Gauge(value) => Some(value.into_inner()),
            other => panic!("{name} is {other:?}"),
        }
    }

    fn samples(&self, name: &str, labels: &[(&str, &str)]) -> Vec<f64> {
        match self.series(name, labels) {
            Some(DebugValue::Histogram(values)) => values.iter().map(|v| v.into_inner()).collect(),
            None => Vec::new(),
            other => panic!("{name} is {other:?}"),
        }
    }
}

#[test]
fn the_cache_reports_its_counters_gauges_and_histograms() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    metrics::with_local_recorder(&recorder, || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .start_paused(true)
            .build()
            .unwrap();
        runtime.block_on(async {
            let cache: Cache<String, String> = Cache::builder()
                .name("prompts")
                .ttl(Duration::from_secs(10))
                .fetcher(|key: String| async move {
                    if key == "missing" {
                        Err("no such prompt")
                    } else {
                        Ok(format!("{key}!"))
                    }
                })
                .build()
                .unwrap();
            assert_eq!(cache.get_or_fetch("a").await.unwrap(), "a!");
            assert!(cache.get_or_fetch("missing").await.is_err());
            assert!(cache.get("a").is_some());
            cache.insert("b".into(), "b".into());
            cache.report_metrics();
            let read = Reading::take(&snapshotter);
            assert_eq!(read.counter("swr_cache_hits_total"), Some(1));
            assert_eq!(read.counter("swr_cache_misses_total"), Some(2));
            assert_eq!(read.counter("swr_cache_loads_total"), Some(1));
            assert_eq!(read.counter("swr_cache_load_errors_total"), Some(1));
            assert_eq!(read.gauge("swr_cache_entries"), Some(2.0));
            assert_eq!(read.gauge("swr_cache_refresher_running"), Some(0.0));
            assert_eq!(read.gauge("swr_cache_refresher_breaker"), Some(0.0));
            let load = |outcome| {
                let labels = [
                    ("cache", "prompts"),
                    ("purpose", "load"),
                    ("outcome", outcome),
                ];
                read.samples("swr_cache_fetch_seconds", &labels)
            };
            assert_eq!(load("value").len(), 1);
            assert_eq!(load("error").len(), 1);

            // Served 5 s past its TTL: one sample of 5 s.
            tokio::time::sleep(Duration::from_secs(15)).await;
            assert!(cache.get("b").is_some());
            cache.report_metrics();
            let read = Reading::take(&snapshotter);
            let stale = read.samples("swr_cache_stale_served_seconds", &[("cache", "prompts")]);
            assert_eq!(stale.len(), 1, "{stale:?}");
            assert!((stale[0] - 5.0).abs() < 0.01, "{stale:?}");
            assert_eq!(read.counter("swr_cache_stale_hits_total"), Some(1));
            assert_eq!(read.counter("swr_cache_hits_total"), Some(2), "absolute");
        });
    });
}
