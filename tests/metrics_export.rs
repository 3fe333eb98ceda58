//! Feature `metrics`: what the cache reports to the `metrics` facade,
//! read back from a recorder of the test's own (a few lines, so that no
//! example or test build pays for a metrics toolkit).
#![cfg(feature = "metrics")]

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use metrics::{
    Counter, CounterFn, Gauge, GaugeFn, Histogram, HistogramFn, Key, KeyName, Metadata, Recorder,
    SharedString, Unit,
};
use swr_cache::Cache;

/// What one series holds: a counter's count, a gauge's value (as bits), a
/// histogram's samples.
#[derive(Default)]
struct Series {
    count: AtomicU64,
    gauge: AtomicU64,
    samples: Mutex<Vec<f64>>,
}

impl CounterFn for Series {
    fn increment(&self, by: u64) {
        self.count.fetch_add(by, Ordering::Relaxed);
    }
    fn absolute(&self, value: u64) {
        self.count.fetch_max(value, Ordering::Relaxed);
    }
}

impl GaugeFn for Series {
    fn increment(&self, by: f64) {
        GaugeFn::set(
            self,
            f64::from_bits(self.gauge.load(Ordering::Relaxed)) + by,
        );
    }
    fn decrement(&self, by: f64) {
        GaugeFn::increment(self, -by);
    }
    fn set(&self, value: f64) {
        self.gauge.store(value.to_bits(), Ordering::Relaxed);
    }
}

impl HistogramFn for Series {
    fn record(&self, value: f64) {
        self.samples.lock().unwrap().push(value);
    }
}

/// A series' name and its labels, sorted.
type SeriesKey = (String, Vec<(String, String)>);

/// Every series registered.
#[derive(Default)]
struct Recorded(Mutex<HashMap<SeriesKey, Arc<Series>>>);

impl Recorded {
    fn series(&self, key: &Key) -> Arc<Series> {
        let mut labels: Vec<_> = key
            .labels()
            .map(|l| (l.key().to_owned(), l.value().to_owned()))
            .collect();
        labels.sort();
        let mut all = self.0.lock().unwrap();
        Arc::clone(all.entry((key.name().to_owned(), labels)).or_default())
    }

    /// The series `name` whose labels include all of `labels`.
    fn find(&self, name: &str, labels: &[(&str, &str)]) -> Option<Arc<Series>> {
        let all = self.0.lock().unwrap();
        all.iter()
            .find(|((n, have), _)| {
                n == name
                    && labels
                        .iter()
                        .all(|(k, v)| have.iter().any(|(hk, hv)| hk == k && hv == v))
            })
            .map(|(_, series)| Arc::clone(series))
    }

    fn counter(&self, name: &str) -> Option<u64> {
        let series = self.find(name, &[("cache", "prompts")])?;
        Some(series.count.load(Ordering::Relaxed))
    }

    fn gauge(&self, name: &str) -> Option<f64> {
        let series = self.find(name, &[("cache", "prompts")])?;
        Some(f64::from_bits(series.gauge.load(Ordering::Relaxed)))
    }

    fn samples(&self, name: &str, labels: &[(&str, &str)]) -> Vec<f64> {
        self.find(name, labels)
            .map_or_else(Vec::new, |series| series.samples.lock().unwrap().clone())
    }
}

impl Recorder for Recorded {
    fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
        Counter::from_arc(self.series(key))
    }
    fn register_gauge(&self, key: &Key, _: &Metadata<'_>) -> Gauge {
        Gauge::from_arc(self.series(key))
    }
    fn register_histogram(&self, key: &Key, _: &Metadata<'_>) -> Histogram {
        Histogram::from_arc(self.series(key))
    }
}

#[test]
fn the_cache_reports_its_counters_gauges_and_histograms() {
    let recorder = Recorded::default();
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
            let read = &recorder;
            assert_eq!(read.counter("swr_cache_hits_total"), Some(1));
            assert_eq!(read.counter("swr_cache_misses_total"), Some(2));
            assert_eq!(read.counter("swr_cache_loads_total"), Some(1));
            assert_eq!(read.counter("swr_cache_load_errors_total"), Some(1));
            assert_eq!(read.counter("swr_cache_negative_hits_total"), Some(0));
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
            let read = &recorder;
            let stale = read.samples("swr_cache_stale_served_seconds", &[("cache", "prompts")]);
            assert_eq!(stale.len(), 1, "{stale:?}");
            assert!((stale[0] - 5.0).abs() < 0.01, "{stale:?}");
            assert_eq!(read.counter("swr_cache_stale_hits_total"), Some(1));
            assert_eq!(read.counter("swr_cache_hits_total"), Some(2), "absolute");
        });
    });
}
