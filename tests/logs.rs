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

/// The events' lines, and apart the spans' (name and fields when made,
/// then each record of a field).
#[derive(Clone, Default)]
struct Lines(Arc<Mutex<Vec<String>>>, Arc<Mutex<Vec<String>>>);

impl Lines {
    fn take(&self) -> Vec<String> {
        std::mem::take(&mut *self.0.lock().unwrap())
    }

    fn spans(&self) -> Vec<String> {
        std::mem::take(&mut *self.1.lock().unwrap())
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
    fn new_span(&self, attributes: &span::Attributes<'_>) -> span::Id {
        let mut line = format!("{} ", attributes.metadata().name());
        attributes.record(&mut Fields(&mut line));
        self.1.lock().unwrap().push(line);
        span::Id::from_u64(1)
    }
    fn record(&self, _: &span::Id, values: &span::Record<'_>) {
        let mut line = String::from("record ");
        values.record(&mut Fields(&mut line));
        self.1.lock().unwrap().push(line);
    }
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

/// (#20.) One span per fetch, at DEBUG: the key as logs name it, the
/// purpose, then the outcome and how long it took. Nothing on a hit.
#[test]
fn every_fetch_has_a_span_with_its_key_purpose_outcome_and_duration() {
    let lines = Lines::default();
    logged(&lines, || async {
        let cache: Cache<String, String> = Cache::builder()
            .log_keys()
            .fetcher(|key: String| async move {
                if key == "bad" {
                    Err("upstream down")
                } else {
                    Ok(format!("{key}!"))
                }
            })
            .build()
            .unwrap();
        assert!(cache.get_or_fetch("good").await.is_ok());
        assert!(cache.get_or_fetch("good").await.is_ok(), "a hit: no span");
        assert!(cache.get_or_fetch("bad").await.is_err());
    });
    let spans = lines.spans();
    assert_eq!(spans.len(), 6, "{spans:?}");
    assert!(spans[0].starts_with("swr_cache.fetch "), "{spans:?}");
    assert!(spans[0].contains("key=\"good\"") && spans[0].contains("purpose=Load"));
    assert!(spans[1].contains("outcome=\"value\""), "{spans:?}");
    assert!(spans[2].contains("elapsed_ms="), "{spans:?}");
    assert!(spans[3].contains("key=\"bad\""), "{spans:?}");
    assert!(spans[4].contains("outcome=\"error\""), "{spans:?}");
}

/// (#20.) The breaker's turns are logged: open at WARN, closed at INFO.
#[test]
fn the_breaker_logs_when_it_opens_and_closes() {
    let lines = Lines::default();
    logged(&lines, || async {
        let down = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let fetch_down = Arc::clone(&down);
        let cache: Cache<u32, u32> = Cache::builder()
            .ttl(Duration::from_secs(1))
            .refresh_interval(Duration::from_millis(100))
            .fetcher(move |key: u32| {
                let down = fetch_down.load(std::sync::atomic::Ordering::SeqCst);
                async move { if down { Err("upstream down") } else { Ok(key) } }
            })
            .build()
            .unwrap();
        for key in 0..20 {
            cache.insert(key, key);
        }
        cache.start().unwrap();
        tokio::time::sleep(Duration::from_secs(3)).await;
        down.store(false, std::sync::atomic::Ordering::SeqCst);
        tokio::time::sleep(Duration::from_secs(2)).await;
        cache.stop().await;
    });
    let lines = lines.take();
    let open = lines
        .iter()
        .position(|l| l.contains("refresh breaker open"));
    let closed = lines
        .iter()
        .position(|l| l.contains("refresh breaker closed"));
    assert!(open.is_some() && closed > open, "{lines:?}");
}
