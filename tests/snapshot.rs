//! Snapshots (`docs/design.md` S13): dump and load, LangSmith's file format, crash
//! safety, and every way a load can fail leaving the cache as it was.
#![cfg(feature = "serde")]

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize, Serializer};
use swr_cache::snapshot::MAX_MESSAGE_BYTES;
use swr_cache::{Cache, LoadOptions, SnapshotError, SnapshotLimits};
use tokio::time::advance;

/// A fresh directory for one test, removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(test: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("swr-cache-{test}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }

    fn files(&self) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(&self.0)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn strings(max_size: usize) -> Cache<String, String> {
    Cache::builder().max_size(max_size).build().unwrap()
}

#[test]
fn round_trip_of_two_entries() {
    let dir = TempDir::new("two");
    let path = dir.path("cache.json");
    let cache = strings(10);
    cache.insert("a".into(), "1".into());
    cache.insert("b".into(), "2".into());
    cache.dump(&path).unwrap();

    let text = std::fs::read_to_string(&path).unwrap();
    let json: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(
        json["entries"],
        serde_json::json!({"a": "1", "b": "2"}),
        "LangSmith's form"
    );
    assert_eq!(json["swr_cache_format"], 1);

    let restored = strings(10);
    let report = restored.load(&path).unwrap();
    assert_eq!(report.loaded, 2);
    assert_eq!(report.not_loaded(), 0);
    assert_eq!(restored.get("a").as_deref(), Some("1"));
    assert_eq!(restored.get("b").as_deref(), Some("2"));
    assert_eq!(dir.files(), vec!["cache.json"], "no temporary file left");
}

#[test]
fn round_trip_of_ten_thousand_entries_with_non_string_keys() {
    let dir = TempDir::new("many");
    let path = dir.path("cache.json");
    let cache: Cache<(u32, u8), Vec<u16>> = Cache::builder().max_size(20_000).build().unwrap();
    for i in 0..10_000u32 {
        cache.insert((i, (i % 7) as u8), vec![i as u16, 1, 2]);
    }
    cache.dump(&path).unwrap();
    let json: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    assert!(
        json["entries"].is_array(),
        "non-string keys use the list form"
    );

    let restored: Cache<(u32, u8), Vec<u16>> = Cache::builder().max_size(20_000).build().unwrap();
    let report = restored.load(&path).unwrap();
    assert_eq!(report.loaded, 10_000);
    assert_eq!(restored.len(), 10_000);
    for i in (0..10_000u32).step_by(97) {
        assert_eq!(
            restored.get(&(i, (i % 7) as u8)),
            Some(vec![i as u16, 1, 2])
        );
    }
}

#[test]
fn numeric_keys_load_from_the_object_form() {
    let cache: Cache<u64, String> = Cache::builder().build().unwrap();
    let report = cache
        .load_from_reader(
            &br#"{"entries": {"42": "answer"}}"#[..],
            SnapshotLimits::default(),
        )
        .unwrap();
    assert_eq!(report.loaded, 1);
    assert_eq!(cache.get(&42).as_deref(), Some("answer"));
}

/// A prompt commit as the LangSmith SDK stores it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct PromptCommit {
    owner: String,
    repo: String,
    commit_hash: String,
    manifest: serde_json::Value,
    examples: Vec<serde_json::Value>,
}

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/langsmith_prompt_cache.json")
}

#[test]
fn loads_a_file_in_the_langsmith_sdk_format() {
    let typed: Cache<String, PromptCommit> = Cache::builder().build().unwrap();
    let report = typed.load(fixture()).unwrap();
    assert_eq!(report.loaded, 2);
    let commit = typed.get("acme/summarize:2f9e1a").unwrap();
    assert_eq!(commit.owner, "acme");
    assert_eq!(commit.repo, "summarize");
    assert_eq!(commit.commit_hash, "2f9e1a");
    assert_eq!(commit.manifest["kwargs"]["template"], "Summarize: {text}");
    assert_eq!(commit.examples.len(), 1);

    let untyped: Cache<String, serde_json::Value> = Cache::builder().build().unwrap();
    assert_eq!(untyped.load(fixture()).unwrap().loaded, 2);
    assert_eq!(
        untyped.get("acme/support-triage:latest").unwrap()["commit_hash"],
        "4b1c5d0e9f2a7b3c"
    );

    // And what we dump, the SDK reads: the same `entries` object.
    let dir = TempDir::new("langsmith");
    typed.dump(dir.path("out.json")).unwrap();
    let ours: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path("out.json")).unwrap()).unwrap();
    let theirs: serde_json::Value =
        serde_json::from_slice(&std::fs::read(fixture()).unwrap()).unwrap();
    assert_eq!(ours["entries"], theirs["entries"]);
}

/// Loads `bytes` into a cache holding one entry, expecting an error and the
/// cache unchanged.
fn load_fails(bytes: &[u8]) -> SnapshotError {
    let cache = strings(10);
    cache.insert("kept".into(), "as it was".into());
    let error = cache
        .load_from_reader(bytes, SnapshotLimits::default())
        .unwrap_err();
    assert_eq!(cache.len(), 1, "{error}");
    assert_eq!(cache.get("kept").as_deref(), Some("as it was"));
    error
}

#[test]
fn a_missing_file_is_a_typed_error() {
    let dir = TempDir::new("missing");
    let cache = strings(10);
    let error = cache.load(dir.path("nope.json")).unwrap_err();
    assert!(
        matches!(error, SnapshotError::NotFound(ref p) if p.ends_with("nope.json")),
        "{error}"
    );
    assert!(cache.is_empty());
}

#[test]
fn a_corrupt_file_is_a_typed_error() {
    let error = load_fails(br#"{"entries": {"a": "1", "b": "#);
    assert!(matches!(error, SnapshotError::InvalidJson(_)), "{error}");
    assert!(std::error::Error::source(&error).is_some());
    for bytes in [
        &b"\xff\xfe garbage"[..],
        b"",
        br#"{"entries": {}} trailing"#,
        br#"{"entries": {"a": "1",}}"#,
    ] {
        let error = load_fails(bytes);
        assert!(matches!(error, SnapshotError::InvalidJson(_)), "{error}");
    }
}

#[test]
fn a_wrong_shape_is_a_typed_error() {
    for bytes in [
        &b"[1, 2, 3]"[..],
        br#"{"items": {}}"#,
        br#"{"entries": "nope"}"#,
        br#"{"entries": [[1, 2, 3]]}"#,
        br#"{"entries": [["a", 1], "b"]}"#,
        br#"{"entries": {}, "entries": {}}"#,
        b"42",
        b"null",
        br#""entries""#,
    ] {
        let error = load_fails(bytes);
        assert!(matches!(error, SnapshotError::WrongShape(_)), "{error}");
    }
    let error = load_fails(br#"{"swr_cache_format": 99, "entries": {}}"#);
    assert!(
        matches!(error, SnapshotError::UnsupportedFormat(_)),
        "{error}"
    );
}

#[test]
fn one_bad_entry_among_good_ones_is_skipped_and_reported() {
    let cache: Cache<String, u32> = Cache::builder().build().unwrap();
    let report = cache
        .load_from_reader(
            &br#"{"entries": {"a": 1, "b": "not a number", "c": 3}}"#[..],
            SnapshotLimits::default(),
        )
        .unwrap();
    assert_eq!(report.loaded, 2);
    assert_eq!(report.bad_values, 1);
    assert_eq!(report.bad_keys, 0);
    let reason = report.first_skip_reason.clone().unwrap();
    assert!(reason.starts_with(r#"value of entry "b": "#), "{reason}");
    assert_eq!(report.not_loaded(), 1);
    assert_eq!(cache.get("a"), Some(1));
    assert_eq!(cache.get("c"), Some(3));
    assert!(!cache.contains_key("b"));

    let numbers: Cache<u64, u32> = Cache::builder().build().unwrap();
    let report = numbers
        .load_from_reader(
            &br#"{"entries": {"7": 1, "seven": 2}}"#[..],
            SnapshotLimits::default(),
        )
        .unwrap();
    assert_eq!((report.loaded, report.bad_keys), (1, 1));
}

#[test]
fn load_respects_max_size() {
    let cache = strings(3);
    cache.insert("existing".into(), "old".into());
    let entries: serde_json::Map<String, serde_json::Value> = (0..10)
        .map(|i| (format!("k{i}"), serde_json::json!(format!("v{i}"))))
        .chain([("existing".to_string(), serde_json::json!("new"))])
        .collect();
    let bytes = serde_json::to_vec(&serde_json::json!({ "entries": entries })).unwrap();
    let report = cache
        .load_from_reader(&bytes[..], SnapshotLimits::default())
        .unwrap();
    assert_eq!(cache.len(), 3);
    // The present key is updated, two new keys fill the room, eight are left out.
    assert_eq!((report.loaded, report.left_out_full), (3, 8));
    assert_eq!(report.not_loaded(), 8);
    assert_eq!(
        cache.metrics().evictions,
        0,
        "loading fills free room, never evicts"
    );
    assert_eq!(
        cache.get("existing").as_deref(),
        Some("new"),
        "present keys are updated"
    );
}

#[tokio::test(start_paused = true)]
async fn loaded_entries_get_a_fresh_age() {
    let dir = TempDir::new("age");
    let path = dir.path("cache.json");
    let cache: Cache<String, String> = Cache::builder()
        .ttl(Some(Duration::from_secs(60)))
        .build()
        .unwrap();
    cache.insert("k".into(), "v".into());
    advance(Duration::from_secs(120)).await;
    assert_eq!(cache.is_stale("k"), Some(true));
    cache.dump(&path).unwrap();

    cache.load(&path).unwrap();
    assert_eq!(cache.is_stale("k"), Some(false));
    advance(Duration::from_secs(61)).await;
    assert_eq!(cache.is_stale("k"), Some(true), "and ages from the load on");
}

#[test]
fn dump_creates_parent_directories() {
    let dir = TempDir::new("parents");
    let path = dir.path("a/b/c/cache.json");
    let cache = strings(10);
    cache.insert("k".into(), "v".into());
    cache.dump(&path).unwrap();
    assert!(path.exists());
}

thread_local! {
    /// Values `Poison` has serialized on this thread, and the one to fail on.
    static SERIALIZED: std::cell::Cell<(usize, Option<usize>)> =
        const { std::cell::Cell::new((0, None)) };
}

/// A value whose serialization fails when told to, for a dump that fails
/// midway.
#[derive(Clone, Debug, Deserialize)]
struct Poison(String);

impl Serialize for Poison {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let (done, fail_at) = SERIALIZED.get();
        SERIALIZED.set((done + 1, fail_at));
        if Some(done) == fail_at {
            return Err(serde::ser::Error::custom("this value cannot be written"));
        }
        serializer.serialize_str(&self.0)
    }
}

#[test]
fn a_dump_that_fails_midway_leaves_the_old_file_intact() {
    let dir = TempDir::new("midway");
    let path = dir.path("cache.json");
    let cache: Cache<String, Poison> = Cache::builder().max_size(1_000).build().unwrap();
    for i in 0..1_000 {
        cache.insert(format!("key{i}"), Poison("x".repeat(100)));
    }
    cache.dump(&path).unwrap();
    let before = std::fs::read(&path).unwrap();

    // Fail on the 600th value: some 60 KB are already in the temporary file.
    SERIALIZED.set((0, Some(600)));
    cache.insert("key0".into(), Poison("changed".into()));
    let error = cache.dump(&path).unwrap_err();
    assert_eq!(SERIALIZED.get().0, 601, "the dump failed midway");
    assert!(matches!(error, SnapshotError::Serialize(_)), "{error}");
    assert!(std::error::Error::source(&error).is_some());
    assert_eq!(
        std::fs::read(&path).unwrap(),
        before,
        "the old snapshot is untouched"
    );
    assert_eq!(
        dir.files(),
        vec!["cache.json"],
        "the temporary file is removed"
    );

    // And the next dump that can succeed does.
    SERIALIZED.set((0, None));
    cache.dump(&path).unwrap();
    let restored: Cache<String, String> = Cache::builder().max_size(1_000).build().unwrap();
    assert_eq!(restored.load(&path).unwrap().loaded, 1_000);
    assert_eq!(restored.get("key0").as_deref(), Some("changed"));
}

#[cfg(unix)]
#[test]
fn dump_keeps_the_old_file_permissions() {
    use std::os::unix::fs::PermissionsExt;
    let dir = TempDir::new("mode");
    let path = dir.path("cache.json");
    let cache = strings(10);
    cache.insert("k".into(), "v".into());
    cache.dump(&path).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    cache.insert("k".into(), "v2".into());
    cache.dump(&path).unwrap();
    let mode = std::fs::metadata(&path).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    assert!(std::fs::read_to_string(&path).unwrap().contains("v2"));
}

#[test]
fn load_follows_the_file_order_like_the_sdk() {
    // LangSmith's load walks the file in order and stops when the cache is full.
    let cache: Cache<String, u32> = Cache::builder().max_size(2).build().unwrap();
    let report = cache
        .load_from_reader(
            &br#"{"entries": {"z": 1, "a": 2, "m": 3}}"#[..],
            SnapshotLimits::default(),
        )
        .unwrap();
    assert_eq!((report.loaded, report.left_out_full), (2, 1));
    assert_eq!(cache.get("z"), Some(1));
    assert_eq!(cache.get("a"), Some(2));
    assert!(!cache.contains_key("m"));
}

#[test]
fn a_key_listed_twice_takes_the_last_value() {
    for input in [
        &br#"{"entries": {"a": 1, "b": 2, "a": 3}}"#[..],
        br#"{"entries": [["a", 1], ["b", 2], ["a", 3]]}"#,
    ] {
        let cache: Cache<String, u32> = Cache::builder().max_size(2).build().unwrap();
        let report = cache
            .load_from_reader(input, SnapshotLimits::default())
            .unwrap();
        assert_eq!((report.loaded, report.duplicate_keys), (2, 1));
        assert_eq!(report.left_out_full, 0, "a repeated key takes no room");
        assert_eq!(cache.get("a"), Some(3));
        assert_eq!(cache.get("b"), Some(2));
    }
}

#[tokio::test(start_paused = true)]
async fn offline_workflow() {
    let restored: Cache<String, serde_json::Value> = Cache::builder()
        .ttl(None)
        .fetcher(|_: String| async { Err::<serde_json::Value, _>("offline: no network") })
        .build()
        .unwrap();
    restored.load(fixture()).unwrap();
    restored.start().unwrap();
    assert!(!restored.is_refreshing(), "no TTL, no task");
    advance(Duration::from_secs(86_400)).await;
    assert_eq!(restored.is_stale("acme/summarize:2f9e1a"), Some(false));
    assert!(restored.get("acme/summarize:2f9e1a").is_some());
    let m = restored.metrics();
    assert_eq!((m.refreshes, m.refresh_errors), (0, 0));
}

#[test]
fn the_size_limits_reject_oversized_input() {
    let cache = strings(10);
    cache.insert("kept".into(), "as it was".into());
    let big =
        serde_json::to_vec(&serde_json::json!({"entries": {"k": "x".repeat(10_000)}})).unwrap();
    let error = cache
        .load_from_reader(&big[..], SnapshotLimits::new(1_000, 100))
        .unwrap_err();
    assert!(
        matches!(error, SnapshotError::TooLarge { max_bytes: 1_000 }),
        "{error}"
    );
    let exact = SnapshotLimits::new(big.len() as u64, 100);
    let one_short = SnapshotLimits::new(big.len() as u64 - 1, 100);
    assert!(matches!(
        cache.load_from_reader(&big[..], one_short),
        Err(SnapshotError::TooLarge { .. })
    ));
    // A complete document followed by more input than the limit allows.
    let padded = [&br#"{"entries": {}}"#[..], &[b' '; 2_000]].concat();
    assert!(matches!(
        cache.load_from_reader(&padded[..], SnapshotLimits::new(1_000, 100)),
        Err(SnapshotError::TooLarge { .. })
    ));
    // An endless input is cut off at the limit.
    let endless = std::io::Read::chain(&b"{"[..], std::io::repeat(b' '));
    assert!(matches!(
        cache.load_from_reader(endless, SnapshotLimits::new(1_000, 100)),
        Err(SnapshotError::TooLarge { max_bytes: 1_000 })
    ));
    assert_eq!(cache.len(), 1, "nothing loaded so far");
    let other = strings(10);
    assert_eq!(other.load_from_reader(&big[..], exact).unwrap().loaded, 1);

    let many = serde_json::to_vec(&serde_json::json!({
        "entries": (0..50).map(|i| (i.to_string(), serde_json::json!("v"))).collect::<serde_json::Map<_, _>>()
    }))
    .unwrap();
    let error = cache
        .load_from_reader(&many[..], SnapshotLimits::new(1 << 20, 10))
        .unwrap_err();
    assert!(
        matches!(error, SnapshotError::TooManyEntries { max_entries: 10 }),
        "{error}"
    );

    let dir = TempDir::new("limits");
    std::fs::write(dir.path("big.json"), &big).unwrap();
    let error = cache
        .load_with_limits(dir.path("big.json"), SnapshotLimits::new(1_000, 100))
        .unwrap_err();
    assert!(matches!(error, SnapshotError::TooLarge { .. }), "{error}");

    let deep = format!(
        "{{\"entries\": {}{}}}",
        "[".repeat(10_000),
        "]".repeat(10_000)
    );
    let error = cache
        .load_from_reader(deep.as_bytes(), SnapshotLimits::default())
        .unwrap_err();
    assert!(
        matches!(error, SnapshotError::InvalidJson(_)),
        "deep nesting: {error}"
    );
    assert_eq!(cache.len(), 1);
    assert_eq!(cache.get("kept").as_deref(), Some("as it was"));
}

/// A prompt commit with every field the LangSmith SDK writes
/// (`PromptCommit.model_dump(mode="json")`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct SdkPromptCommit {
    owner: String,
    repo: String,
    commit_hash: String,
    manifest: serde_json::Value,
    examples: Vec<serde_json::Value>,
    description: Option<String>,
    hub_model_config: Option<serde_json::Value>,
    hub_model_provider: Option<String>,
}

/// A dump written by the LangSmith Python SDK itself (langsmith 0.15.1,
/// `PromptCache.dump`; `tests/fixtures/langsmith_sdk/make_dump.py`).
fn sdk_dump() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/langsmith_sdk/dump.json")
}

/// What this crate dumps of `sdk_dump()`'s entries, checked in, and read
/// by the real SDK in `.ci/run` (`tests/fixtures/langsmith_sdk/check_ours.py`).
fn our_dump() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/langsmith_sdk/ours.json")
}

#[test]
fn loads_every_entry_of_a_dump_written_by_the_langsmith_python_sdk() {
    let cache: Cache<String, SdkPromptCommit> = Cache::builder().ttl(None).build().unwrap();
    let report = cache.load(sdk_dump()).unwrap();
    assert_eq!(report.loaded, 3, "{report:?}");
    // The one entry whose description holds a lone surrogate is skipped,
    // and said so, instead of failing the whole load.
    assert_eq!(report.bad_values, 1);
    let why = report.first_skip_reason.unwrap();
    assert!(
        why.contains("acme/broken:latest") && why.contains("lone surrogate"),
        "{why}"
    );
    assert!(!cache.contains_key("acme/broken:latest"));

    let triage = cache.get("acme/support-triage:latest").unwrap();
    assert_eq!(
        (
            triage.owner.as_str(),
            triage.repo.as_str(),
            triage.commit_hash.as_str()
        ),
        ("acme", "support-triage", "a1b2c3d4")
    );
    assert_eq!(
        triage.manifest["kwargs"]["template"],
        "Classify: {question}"
    );
    assert_eq!(
        triage.examples,
        vec![serde_json::json!({"question": "?", "answer": "!"})]
    );
    assert_eq!(triage.description, None);
    // Beyond ASCII, written by Python as escapes (a surrogate pair for the
    // emoji), read back as the text.
    let greeting = cache.get("acme/greeting:v2").unwrap();
    assert_eq!(
        greeting.manifest["kwargs"]["template"],
        "Grüße, {question} — こんにちは 🙂"
    );
    let summary = cache.get("acme/summary:latest").unwrap();
    assert_eq!(summary.description.as_deref(), Some("plain"));
    assert_eq!(summary.hub_model_provider, None);
}

#[test]
fn our_dump_of_the_sdk_file_is_ascii_and_the_checked_in_golden() {
    let cache: Cache<String, serde_json::Value> = Cache::builder().ttl(None).build().unwrap();
    assert_eq!(cache.load(sdk_dump()).unwrap().loaded, 3);
    let mut ours = Vec::new();
    cache.dump_to_writer(&mut ours).unwrap();
    assert!(ours.is_ascii(), "a dump is ASCII only");
    if std::env::var_os("SWR_BLESS").is_some() {
        std::fs::write(our_dump(), &ours).unwrap();
    }
    let golden = std::fs::read(our_dump()).unwrap();
    assert_eq!(
        String::from_utf8_lossy(&ours),
        String::from_utf8_lossy(&golden),
        "the dump changed: if on purpose, rerun with SWR_BLESS=1 and check it with \
         tests/fixtures/langsmith_sdk/check_ours.py"
    );
}

#[test]
fn the_same_entries_dump_to_the_same_bytes_whatever_the_order() {
    let entries: Vec<(String, String)> = (0..200)
        .map(|i| (format!("prompt/{i:03}-ü"), format!("commit {i} — ✓")))
        .collect();
    let dump = |order: &mut dyn Iterator<Item = &(String, String)>| {
        let cache = strings(1000);
        for (k, v) in order {
            cache.insert(k.clone(), v.clone());
        }
        let mut out = Vec::new();
        cache.dump_to_writer(&mut out).unwrap();
        out
    };
    let forward = dump(&mut entries.iter());
    let backward = dump(&mut entries.iter().rev());
    assert_eq!(forward, backward);
    assert!(forward.is_ascii());
    let text = String::from_utf8(forward).unwrap();
    assert!(
        text.contains(r#""prompt/000-\u00fc":"commit 0 \u2014 \u2713""#),
        "{}",
        &text[..120]
    );
    let reread = strings(1000);
    assert_eq!(
        reread
            .load_from_reader(text.as_bytes(), SnapshotLimits::default())
            .unwrap()
            .loaded,
        200
    );
    assert_eq!(reread.get("prompt/007-ü").as_deref(), Some("commit 7 — ✓"));
}

#[test]
fn arc_values_dump_and_load_as_written() {
    let cache: Cache<String, std::sync::Arc<str>> = Cache::builder().build().unwrap();
    cache.insert("greeting".into(), std::sync::Arc::from("hello"));
    let mut out = Vec::new();
    cache.dump_to_writer(&mut out).unwrap();
    let back: Cache<String, std::sync::Arc<str>> = Cache::builder().build().unwrap();
    back.load_from_reader(&out[..], SnapshotLimits::default())
        .unwrap();
    assert_eq!(back.get("greeting").as_deref(), Some("hello"));
}

#[tokio::test(start_paused = true)]
async fn entries_loaded_as_stale_are_served_and_refreshed_first() {
    let cache: Cache<String, String> = Cache::builder()
        .ttl(Duration::from_secs(300))
        .refresh_interval(Duration::from_secs(60))
        .fetcher(|key| async move { Ok::<_, std::io::Error>(format!("fresh {key}")) })
        .build()
        .unwrap();
    let input = br#"{"entries": {"a": "from the file", "b": "from the file"}}"#;
    let report = cache
        .load_from_reader_with(&input[..], LoadOptions::new().as_stale(true))
        .unwrap();
    assert_eq!(report.loaded, 2);
    assert_eq!(cache.is_stale("a"), Some(true), "stale at once, at any age");
    assert_eq!(
        cache.peek("a").as_deref(),
        Some("from the file"),
        "and served"
    );
    // The refresher's first pass finds both, without waiting for the TTL.
    cache.start().unwrap();
    for _ in 0..10 {
        tokio::task::yield_now().await;
        advance(Duration::from_millis(10)).await;
    }
    assert_eq!(cache.peek("a").as_deref(), Some("fresh a"));
    assert_eq!(cache.peek("b").as_deref(), Some("fresh b"));
    assert_eq!(cache.is_stale("a"), Some(false));
    cache.stop().await;

    // LangSmith's way, the default: a fresh age.
    let fresh = strings(10);
    fresh
        .load_from_reader(&input[..], SnapshotLimits::default())
        .unwrap();
    assert_eq!(fresh.is_stale("a"), Some(false));
}

/// A megabyte of `fill`: far more than any report or message should quote.
fn huge(fill: char) -> String {
    std::iter::repeat_n(fill, 1 << 20).collect()
}

#[test]
fn a_huge_key_or_value_is_quoted_only_in_part_in_the_skip_reason() {
    let key = huge('k');
    let bad_value = huge('x');
    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "a huge key with a huge bad value",
            serde_json::to_vec(&serde_json::json!({"entries": {key.as_str(): bad_value}})).unwrap(),
        ),
        (
            "a huge bad value in the list form",
            serde_json::to_vec(&serde_json::json!({"entries": [["k", bad_value]]})).unwrap(),
        ),
    ];
    for (what, input) in cases {
        let cache: Cache<String, u32> = Cache::builder().build().unwrap();
        let report = cache
            .load_from_reader(&input[..], SnapshotLimits::default())
            .unwrap();
        assert_eq!(report.bad_values, 1, "{what}");
        let reason = report.first_skip_reason.unwrap();
        assert!(
            reason.len() <= MAX_MESSAGE_BYTES,
            "{what}: a reason of {} bytes",
            reason.len()
        );
        assert!(reason.starts_with("value of entry "), "{what}: {reason}");
        assert!(reason.contains("more bytes)"), "{what}: says it was cut");
    }

    // A huge key that does not decode, in either form.
    let numbers: Cache<u64, u32> = Cache::builder().build().unwrap();
    for input in [
        serde_json::to_vec(&serde_json::json!({"entries": {key.as_str(): 1}})).unwrap(),
        serde_json::to_vec(&serde_json::json!({"entries": [[key, 1]]})).unwrap(),
    ] {
        let report = numbers
            .load_from_reader(&input[..], SnapshotLimits::default())
            .unwrap();
        assert_eq!(report.bad_keys, 1);
        let reason = report.first_skip_reason.unwrap();
        assert!(reason.len() <= MAX_MESSAGE_BYTES, "{} bytes", reason.len());
        assert!(reason.starts_with("key of entry "), "{reason}");
    }
}

#[test]
fn a_huge_format_value_or_misshapen_input_is_quoted_only_in_part_in_the_error() {
    let text = huge('x');
    for input in [
        serde_json::json!({"swr_cache_format": text, "entries": {}}),
        serde_json::json!({"swr_cache_format": [text], "entries": {}}),
        serde_json::json!(text),
        serde_json::json!({"entries": text}),
    ] {
        let error = load_fails(&serde_json::to_vec(&input).unwrap());
        assert!(
            matches!(
                error,
                SnapshotError::UnsupportedFormat(_) | SnapshotError::WrongShape(_)
            ),
            "{error}"
        );
        let message = error.to_string();
        assert!(
            message.len() <= MAX_MESSAGE_BYTES,
            "a message of {} bytes",
            message.len()
        );
        assert!(message.contains("more bytes)"), "says it was cut");
    }
}

/// Set in the child process that [`under_umask_0`] starts.
#[cfg(unix)]
const UMASK_0_CHILD: &str = "SWR_SNAPSHOT_TEST_UMASK_0_CHILD";

/// Runs `test` (this function's caller, by name) again in a child process
/// whose umask is 0, where a file created with the default mode is open to
/// everyone (0666), and checks that it passed there. Returns whether this
/// is the child, which goes on to the test's body.
#[cfg(unix)]
fn under_umask_0(test: &str) -> bool {
    if std::env::var_os(UMASK_0_CHILD).is_some() {
        return true;
    }
    let output = std::process::Command::new("sh")
        .args(["-c", r#"umask 000 && exec "$0" "$@""#])
        .arg(std::env::current_exe().unwrap())
        .args([test, "--exact", "--nocapture", "--test-threads=1"])
        .env(UMASK_0_CHILD, "1")
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&output.stdout);
    let err = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success() && out.contains("1 passed"),
        "the child under umask 0 failed:\n{out}\n{err}"
    );
    false
}

#[cfg(unix)]
thread_local! {
    /// The modes of the temporary files `ModeSpy` found while being written.
    static TEMP_MODES: std::cell::RefCell<Vec<u32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// A value that, while a dump writes it, records the mode of each
/// temporary file in its directory: the file the dump is writing into.
#[cfg(unix)]
#[derive(Clone, Debug, Deserialize)]
struct ModeSpy(PathBuf);

#[cfg(unix)]
impl Serialize for ModeSpy {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use std::os::unix::fs::PermissionsExt;
        for entry in std::fs::read_dir(&self.0).unwrap() {
            let entry = entry.unwrap();
            if entry.file_name().to_string_lossy().ends_with(".tmp") {
                let mode = entry.metadata().unwrap().permissions().mode() & 0o777;
                TEMP_MODES.with_borrow_mut(|modes| modes.push(mode));
            }
        }
        serializer.serialize_str("spy")
    }
}

#[cfg(unix)]
#[test]
fn a_new_snapshot_file_is_never_open_to_group_or_others() {
    use std::os::unix::fs::PermissionsExt;
    if !under_umask_0("a_new_snapshot_file_is_never_open_to_group_or_others") {
        return;
    }
    let dir = TempDir::new("umask");
    let mode = |path: &Path| std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
    std::fs::File::create(dir.path("plain")).unwrap();
    assert_eq!(mode(&dir.path("plain")), 0o666, "the umask is 0 here");
    std::fs::remove_file(dir.path("plain")).unwrap();

    // No file to replace: owner only, from creation (while written) on.
    let path = dir.path("cache.json");
    let cache: Cache<String, ModeSpy> = Cache::builder().build().unwrap();
    cache.insert("k".into(), ModeSpy(dir.0.clone()));
    cache.dump(&path).unwrap();
    assert_eq!(TEMP_MODES.take(), vec![0o600], "while being written");
    assert_eq!(mode(&path), 0o600);

    // A file to replace: its mode, which the new one takes before any
    // entry is written.
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
    cache.dump(&path).unwrap();
    assert_eq!(TEMP_MODES.take(), vec![0o640], "while being written");
    assert_eq!(mode(&path), 0o640);
}

/// A file as Python's `json.dump` writes floats that are not finite: bare
/// `NaN`, `Infinity` and `-Infinity`
/// (`tests/fixtures/python_json/make_non_finite.py`).
fn non_finite_dump() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/python_json/non_finite.json")
}

#[test]
fn entries_holding_nan_or_infinity_are_skipped_and_the_rest_load() {
    let cache: Cache<String, serde_json::Value> = Cache::builder().ttl(None).build().unwrap();
    let report = cache.load(non_finite_dump()).unwrap();
    assert_eq!(
        (report.loaded, report.bad_values, report.bad_keys),
        (3, 3, 0),
        "{report:?}"
    );
    let why = report.first_skip_reason.unwrap();
    assert!(
        why.starts_with(r#"value of entry "acme/sampling:latest": "#) && why.contains("NaN"),
        "{why}"
    );
    for skipped in [
        "acme/sampling:latest",
        "acme/limits:latest",
        "acme/scores:v1",
    ] {
        assert!(!cache.contains_key(skipped), "{skipped}");
    }
    // The words, in strings and keys, are text.
    let words = cache.get("acme/words:latest").unwrap();
    assert_eq!(
        words["manifest"]["kwargs"]["template"],
        r#"NaN, Infinity and -Infinity are words here: "NaN" \NaN"#
    );
    assert_eq!(
        words["manifest"]["kwargs"]["stop"],
        serde_json::json!(["NaN", "Infinity", "-Infinity"])
    );
    assert_eq!(
        cache.get("NaN").unwrap()["manifest"]["kwargs"]["Infinity"],
        "-Infinity"
    );
    assert_eq!(
        cache.get("acme/plain:latest").unwrap()["manifest"]["kwargs"]["top_p"],
        1e300
    );
}

#[test]
fn nan_or_infinity_in_the_list_form_skips_its_entry_as_a_bad_key_or_value() {
    let cache: Cache<u64, String> = Cache::builder().build().unwrap();
    let input = br#"{"entries":[[NaN,"x"],[1,"one"],[2,-Infinity],[3,[Infinity]],[4,"NaN"]]}"#;
    let report = cache
        .load_from_reader(&input[..], SnapshotLimits::default())
        .unwrap();
    assert_eq!(
        (report.loaded, report.bad_keys, report.bad_values),
        (2, 1, 2),
        "{report:?}"
    );
    let why = report.first_skip_reason.unwrap();
    assert!(why.starts_with("key of entry 0: "), "{why}");
    assert_eq!(cache.get(&1).as_deref(), Some("one"));
    assert_eq!(cache.get(&4).as_deref(), Some("NaN"));
    assert_eq!(cache.len(), 2);
}

#[test]
fn the_report_counts_every_listed_entry_once() {
    // Loaded, a bad key, a bad value, NaN, a lone surrogate, a key listed
    // twice, and one left out of a full cache, in both forms.
    for input in [
        &br#"{"entries": {"1": "a", "x": "b", "2": 3, "3": [NaN], "4": "\ud800", "1": "c", "5": "d", "6": "e"}}"#[..],
        br#"{"entries": [[1, "a"], ["x", "b"], [2, 3], [3, [NaN]], [4, "\ud800"], [1, "c"], [5, "d"], [6, "e"]]}"#,
    ] {
        let cache: Cache<u64, String> = Cache::builder().max_size(2).build().unwrap();
        let report = cache
            .load_from_reader(input, SnapshotLimits::default())
            .unwrap();
        assert_eq!(report.listed, 8, "{report:?}");
        assert_eq!(
            (
                report.loaded,
                report.bad_keys,
                report.bad_values,
                report.duplicate_keys,
                report.left_out_full
            ),
            (2, 1, 3, 1, 1),
            "{report:?}"
        );
        assert_eq!(report.loaded + report.not_loaded(), report.listed);
        assert_eq!(cache.get(&1).as_deref(), Some("c"));
        assert_eq!(cache.get(&5).as_deref(), Some("d"));
    }
}

#[test]
fn keys_and_values_beyond_ascii_round_trip_as_python_escapes_them() {
    // Each text, and the escapes Python's `json.dumps` writes for it
    // (checked with CPython 3.11): a surrogate pair above U+FFFF, combining
    // marks kept as written (no normalization).
    let texts = [
        ("😀 grin", r"\ud83d\ude00 grin"),
        (
            "プロンプト/要約:latest",
            r"\u30d7\u30ed\u30f3\u30d7\u30c8/\u8981\u7d04:latest",
        ),
        ("é", r"\u00e9"),
        ("e\u{301}", r"e\u0301"),
        (
            "👨\u{200d}👩\u{200d}👧",
            r"\ud83d\udc68\u200d\ud83d\udc69\u200d\ud83d\udc67",
        ),
        ("𝄞 \u{10ffff}", r"\ud834\udd1e \udbff\udfff"),
    ];
    let dir = TempDir::new("beyond-ascii");
    let path = dir.path("cache.json");
    let cache = strings(100);
    for (text, _) in texts {
        cache.insert(text.to_owned(), format!("{text} ✓"));
    }
    cache.dump(&path).unwrap();

    let bytes = std::fs::read(&path).unwrap();
    assert!(bytes.is_ascii(), "a dump is ASCII only");
    let dump = String::from_utf8(bytes).unwrap();
    for (text, escaped) in texts {
        assert!(
            dump.contains(&format!(r#""{escaped}":"{escaped} \u2713""#)),
            "{text:?} as {escaped}: {dump}"
        );
    }
    let json: serde_json::Value = serde_json::from_str(&dump).unwrap();
    assert!(json["entries"].is_object(), "the LangSmith SDK's form");

    let restored = strings(100);
    let report = restored.load(&path).unwrap();
    assert_eq!((report.loaded, report.listed), (texts.len(), texts.len()));
    for (text, _) in texts {
        assert_eq!(
            restored.get(text).as_deref(),
            Some(format!("{text} ✓").as_str()),
            "{text:?}"
        );
    }
    assert_ne!(
        restored.get("é"),
        restored.get("e\u{301}"),
        "composed and decomposed stay two keys"
    );
}
