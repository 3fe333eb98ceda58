//! What the cache logs when fetches fail: the key (its `Debug` form with
//! `log_keys`, else its hash), and at most ten lines a second, with a count
//! of those held back. A small subscriber collects the events' fields.

use std::fmt::{Debug, Write as _};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use swr_cache::Cache;
use tracing::field::{Field, Visit};
use tracing::span;
use tracing::{Event, Metadata, Subscriber};

#[derive(Clone, Default)]
struct Lines(Arc<Mutex<Vec<String>>>);

impl Lines {
    fn take(&self) -> Vec<String> {
        std::mem::take(&mut *self.0.lock().unwrap())
    }
}

struct Fields<'a>(&'a mut String);

impl Visit for Fields<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn Debug) {
        let _ = write!(self.0, "{}={value:?} ", field.name());
    }
}

impl Subscriber for Lines {
    fn enabled(&self, _: &Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, _: &span::Attributes<'_>) -> span::Id {
        span::Id::from_u64(1)
    }
    fn record(&self, _: &span::Id, _: &span::Record<'_>) {}
    fn record_follows_from(&self, _: &span::Id, _: &span::Id) {}
    fn event(&self, event: &Event<'_>) {
        let mut line = String::new();
        event.record(&mut Fields(&mut line));
        self.0.lock().unwrap().push(line);
    }
    fn enter(&self, _: &span::Id) {}
    fn exit(&self, _: &span::Id) {}
}

/// Runs `test` on a paused current-thread runtime with `lines` collecting
/// this thread's events (the runtime's tasks run on it too).
fn logged<F: std::future::Future>(lines: &Lines, test: impl FnOnce() -> F) {
    tracing::subscriber::with_default(lines.clone(), || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .start_paused(true)
            .build()
            .unwrap()
            .block_on(test());
    });
}

fn failing(log_keys: bool) -> Cache<String, String> {
    let builder =
        Cache::builder().fetcher(|_key: String| async { Err::<String, _>("upstream down") });
    let builder = if log_keys {
        builder.log_keys()
    } else {
        builder
    };
    builder.build().unwrap()
}

#[test]
fn a_failed_fetch_is_logged_with_its_key_in_debug_form_when_asked() {
    let lines = Lines::default();
    logged(&lines, || async {
        let cache = failing(true);
        assert!(cache.get_or_fetch("alpha").await.is_err());
    });
    let lines = lines.take();
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(lines[0].contains("key=\"alpha\""), "{lines:?}");
    assert!(lines[0].contains("upstream down"), "{lines:?}");
}

#[test]
fn without_log_keys_a_key_is_named_by_its_hash() {
    let lines = Lines::default();
    logged(&lines, || async {
        let cache = failing(false);
        assert!(cache.get_or_fetch("alpha").await.is_err());
        assert!(cache.get_or_fetch("alpha").await.is_err());
    });
    let lines = lines.take();
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert!(!lines[0].contains("alpha"), "{lines:?}");
    let name = |line: &str| {
        let start = line.find("key=#").expect("a hash") + 4;
        line[start..start + 9].to_owned()
    };
    assert!(name(&lines[0])[1..].chars().all(|c| c.is_ascii_hexdigit()));
    assert_eq!(name(&lines[0]), name(&lines[1]), "one key, one name");
}

#[test]
fn an_outage_logs_ten_lines_a_second_and_counts_the_rest() {
    let lines = Lines::default();
    logged(&lines, || async {
        let cache = failing(true);
        for i in 0..1000 {
            assert!(cache.get_or_fetch(&format!("k{i}")).await.is_err());
        }
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(cache.get_or_fetch("last").await.is_err());
        assert_eq!(cache.metrics().load_errors, 1001);
    });
    let lines = lines.take();
    assert_eq!(lines.len(), 11, "{lines:?}");
    assert!(lines[..10].iter().all(|l| l.contains("held_back=0")));
    assert!(lines[10].contains("held_back=990"), "{}", lines[10]);
}
