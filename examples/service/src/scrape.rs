//! Reading a Prometheus scrape, and the check that the cache's series are
//! there and moving: what CI asks of `load --check`.

use std::fmt;

/// One sample of a scrape: `name{labels} value`.
#[derive(Debug, PartialEq)]
pub struct Sample<'a> {
    pub name: &'a str,
    /// The labels as written, without the braces (`""` for none).
    pub labels: &'a str,
    pub value: f64,
}

/// The samples of a scrape in the text format; comments, blank lines and
/// lines that are not samples are skipped.
pub fn samples(text: &str) -> impl Iterator<Item = Sample<'_>> {
    text.lines().filter_map(|line| {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            return None;
        }
        // The value is the last field: label values may hold spaces, and
        // this exporter writes no timestamps.
        let (series, value) = line.rsplit_once(' ')?;
        let value = value.parse().ok()?;
        let (name, labels) = match series.split_once('{') {
            Some((name, labels)) => (name, labels.strip_suffix('}')?),
            None => (series, ""),
        };
        Some(Sample {
            name,
            labels,
            value,
        })
    })
}

/// The sum of the samples of `name` whose labels include `cache="{cache}"`,
/// or `None` if there are none.
pub fn total(text: &str, name: &str, cache: &str) -> Option<f64> {
    let label = format!("cache=\"{cache}\"");
    samples(text)
        .filter(|sample| sample.name == name && has_label(sample.labels, &label))
        .map(|sample| sample.value)
        .reduce(|a, b| a + b)
}

fn has_label(labels: &str, label: &str) -> bool {
    labels.split(',').any(|part| part.trim() == label)
}

/// What the check found wanting, one line each.
#[derive(Debug, PartialEq)]
pub struct Failures(pub Vec<String>);

impl fmt::Display for Failures {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for failure in &self.0 {
            writeln!(f, "- {failure}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Failures {}

/// Checks two scrapes of a service under load, `first` then `second`, for
/// the cache named `cache`: hits counted and growing between the two,
/// fetches timed in the fetch histogram, entries cached, the refresher
/// running.
pub fn check(first: &str, second: &str, cache: &str) -> Result<(), Failures> {
    let mut failures = Vec::new();
    let hits = |text| total(text, "swr_cache_hits_total", cache);
    match (hits(first), hits(second)) {
        (Some(before), Some(after)) if before > 0.0 && after > before => {}
        (Some(before), Some(after)) => failures.push(format!(
            "swr_cache_hits_total went from {before} to {after}: not above 0 and growing"
        )),
        _ => failures.push("swr_cache_hits_total is missing".into()),
    }
    let present =
        |name: &str, at_least: f64, failures: &mut Vec<String>| match total(second, name, cache) {
            Some(value) if value >= at_least => {}
            Some(value) => failures.push(format!("{name} is {value}, below {at_least}")),
            None => failures.push(format!("{name} is missing")),
        };
    present("swr_cache_fetch_seconds_count", 1.0, &mut failures);
    // Buckets, not a summary: what `histogram_quantile` needs.
    present("swr_cache_fetch_seconds_bucket", 1.0, &mut failures);
    present("swr_cache_loads_total", 1.0, &mut failures);
    present("swr_cache_entries", 1.0, &mut failures);
    present("swr_cache_refresher_running", 1.0, &mut failures);
    if failures.is_empty() {
        Ok(())
    } else {
        Err(Failures(failures))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SCRAPE: &str = "\
# TYPE swr_cache_hits_total counter
swr_cache_hits_total{cache=\"prompts\"} 120
swr_cache_hits_total{cache=\"other\"} 7
swr_cache_loads_total{cache=\"prompts\"} 30
swr_cache_entries{cache=\"prompts\"} 30
swr_cache_refresher_running{cache=\"prompts\"} 1
swr_cache_fetch_seconds_bucket{cache=\"prompts\",purpose=\"load\",outcome=\"value\",le=\"0.05\"} 25
swr_cache_fetch_seconds_bucket{cache=\"prompts\",purpose=\"load\",outcome=\"value\",le=\"+Inf\"} 30
swr_cache_fetch_seconds_count{cache=\"prompts\",purpose=\"load\",outcome=\"value\"} 30
";

    #[test]
    fn samples_are_summed_over_the_series_of_one_cache() {
        assert_eq!(
            total(SCRAPE, "swr_cache_hits_total", "prompts"),
            Some(120.0)
        );
        assert_eq!(total(SCRAPE, "swr_cache_hits_total", "other"), Some(7.0));
        assert_eq!(
            total(SCRAPE, "swr_cache_fetch_seconds_bucket", "prompts"),
            Some(55.0)
        );
        assert_eq!(total(SCRAPE, "swr_cache_hits_total", "nope"), None);
        assert_eq!(total(SCRAPE, "swr_cache_misses_total", "prompts"), None);
    }

    #[test]
    fn a_service_whose_hits_grow_passes() {
        let second = SCRAPE.replace("} 120", "} 900");
        assert_eq!(check(SCRAPE, &second, "prompts"), Ok(()));
    }

    #[test]
    fn hits_that_do_not_grow_fail() {
        let Err(Failures(failures)) = check(SCRAPE, SCRAPE, "prompts") else {
            panic!("the hits did not grow");
        };
        assert_eq!(
            failures,
            ["swr_cache_hits_total went from 120 to 120: not above 0 and growing"]
        );
    }

    #[test]
    fn a_summary_instead_of_buckets_fails() {
        let second: String = SCRAPE
            .replace("} 120", "} 900")
            .lines()
            .filter(|line| !line.contains("_bucket"))
            .map(|line| format!("{line}\n"))
            .collect();
        let Err(Failures(failures)) = check(SCRAPE, &second, "prompts") else {
            panic!("no buckets");
        };
        assert_eq!(failures, ["swr_cache_fetch_seconds_bucket is missing"]);
    }

    #[test]
    fn an_empty_scrape_names_every_missing_series() {
        let Err(Failures(failures)) = check("", "", "prompts") else {
            panic!("nothing there");
        };
        assert_eq!(failures.len(), 6, "{failures:?}");
    }
}
