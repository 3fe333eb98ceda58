//! Snapshots: [`Cache::dump`] and [`Cache::load`], JSON files compatible with
//! the LangSmith SDK's prompt cache (feature `serde`, on by default).
//!
//! # Format
//!
//! ```json
//! {"swr_cache_format": 1, "entries": {"owner/prompt:latest": {"commit_hash": "…"}}}
//! ```
//!
//! A cache whose keys serialize as strings is written in the LangSmith SDK's
//! own form, `{"entries": {key: value, …}}`, so a file dumped by its Python or
//! JS `dump` loads here and ours loads there (LangSmith's readers ignore the
//! `swr_cache_format` field). Other keys (numbers, tuples, structs) are written
//! as a list of pairs, `{"entries": [[key, value], …]}`. `load` accepts either
//! form, with or without the version field; an object key is read as the key
//! type from the string, or, failing that, from the JSON the string holds
//! (`"42"` for a `u64` key).
//!
//! # Crash safety
//!
//! `dump` creates the parent directories, writes a temporary file beside the
//! target, flushes it to disk (`fsync`), renames it over the target and
//! flushes the directory, so the target is always either the old snapshot or
//! the new one. On any failure (an I/O error, a value whose `Serialize` fails)
//! the temporary file is removed and the old file is untouched.
//!
//! # Loading
//!
//! `load` decodes the whole file before it changes the cache: a missing,
//! unreadable or oversized file, invalid JSON, a wrong shape or an unknown
//! format version is an error and leaves the cache as it was. An entry whose
//! key or value does not decode is skipped and counted in the [`LoadReport`].
//! Loaded entries get a fresh age, and are refreshed by the fetcher like any
//! other once the refresher runs. Loading stops adding new keys when the cache
//! is full (as the LangSmith SDK does); the report counts what was left out.
//! [`SnapshotLimits`] bounds what a load reads and allocates.

use std::fmt;
use std::fs::{self, File};
use std::hash::{BuildHasher, Hash};
use std::io::{self, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use serde::de::DeserializeOwned;
use serde::ser::{SerializeMap, SerializeSeq, SerializeStruct};
use serde::{Serialize, Serializer};
use serde_json::Value;

use crate::Cache;

/// The version written in `swr_cache_format`.
pub const SNAPSHOT_FORMAT: u64 = 1;

/// Bounds on what one load reads and allocates, so a huge or hostile file
/// fails cleanly.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct SnapshotLimits {
    /// The most bytes read from the file or reader. Default 256 MiB.
    pub max_bytes: u64,
    /// The most entries the file may list. Default 10 million.
    pub max_entries: usize,
}

impl Default for SnapshotLimits {
    fn default() -> Self {
        Self {
            max_bytes: 256 << 20,
            max_entries: 10_000_000,
        }
    }
}

impl SnapshotLimits {
    /// Limits of `max_bytes` and `max_entries`.
    pub fn new(max_bytes: u64, max_entries: usize) -> Self {
        Self {
            max_bytes,
            max_entries,
        }
    }
}

/// What a load did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct LoadReport {
    /// Entries added to or updated in the cache.
    pub loaded: usize,
    /// Entries skipped because their key did not decode as the key type.
    pub bad_keys: usize,
    /// Entries skipped because their value did not decode as the value type.
    pub bad_values: usize,
    /// Entries not loaded because the cache was full.
    pub left_out_full: usize,
    /// Why the first skipped entry was skipped, if any was.
    pub first_skip_reason: Option<String>,
}

impl LoadReport {
    /// Entries in the file that are not in the cache after the load.
    pub fn not_loaded(&self) -> usize {
        self.bad_keys + self.bad_values + self.left_out_full
    }
}

/// Why a dump or a load failed. A failed load leaves the cache as it was; a
/// failed dump leaves the old file as it was.
#[derive(Debug)]
#[non_exhaustive]
pub enum SnapshotError {
    /// The snapshot file does not exist.
    NotFound(PathBuf),
    /// Reading or writing failed.
    Io(io::Error),
    /// The input is longer than [`SnapshotLimits::max_bytes`].
    TooLarge {
        /// The limit passed.
        max_bytes: u64,
    },
    /// The input lists more than [`SnapshotLimits::max_entries`] entries.
    TooManyEntries {
        /// The limit passed.
        max_entries: usize,
    },
    /// The input is not JSON.
    InvalidJson(serde_json::Error),
    /// The JSON is not a snapshot: no `entries` object or list, or a list
    /// item that is not a `[key, value]` pair.
    WrongShape(String),
    /// `swr_cache_format` names a version this crate does not read.
    UnsupportedFormat(Value),
    /// A key or value could not be written (its `Serialize` failed).
    Serialize(serde_json::Error),
}

impl fmt::Display for SnapshotError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotFound(path) => write!(f, "no snapshot at {}", path.display()),
            Self::Io(e) => write!(f, "snapshot I/O failed: {e}"),
            Self::TooLarge { max_bytes } => write!(f, "snapshot is larger than {max_bytes} bytes"),
            Self::TooManyEntries { max_entries } => {
                write!(f, "snapshot lists more than {max_entries} entries")
            }
            Self::InvalidJson(e) => write!(f, "snapshot is not valid JSON: {e}"),
            Self::WrongShape(why) => write!(f, "not a snapshot: {why}"),
            Self::UnsupportedFormat(v) => write!(f, "unsupported snapshot format {v}"),
            Self::Serialize(e) => write!(f, "could not serialize the cache: {e}"),
        }
    }
}

impl std::error::Error for SnapshotError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Io(e) => Some(e),
            Self::InvalidJson(e) | Self::Serialize(e) => Some(e),
            _ => None,
        }
    }
}

impl From<io::Error> for SnapshotError {
    fn from(e: io::Error) -> Self {
        Self::Io(e)
    }
}

/// The entries of a dump, in the form their keys allow.
struct Snapshot<'a, K, V> {
    entries: &'a [(K, V)],
    string_keys: bool,
}

impl<K: Serialize, V: Serialize> Serialize for Snapshot<'_, K, V> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut snapshot = serializer.serialize_struct("Snapshot", 2)?;
        snapshot.serialize_field("swr_cache_format", &SNAPSHOT_FORMAT)?;
        if self.string_keys {
            snapshot.serialize_field("entries", &AsMap(self.entries))?;
        } else {
            snapshot.serialize_field("entries", &AsList(self.entries))?;
        }
        snapshot.end()
    }
}

struct AsMap<'a, K, V>(&'a [(K, V)]);

impl<K: Serialize, V: Serialize> Serialize for AsMap<'_, K, V> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.0.len()))?;
        for (key, value) in self.0 {
            map.serialize_entry(key, value)?;
        }
        map.end()
    }
}

struct AsList<'a, K, V>(&'a [(K, V)]);

impl<K: Serialize, V: Serialize> Serialize for AsList<'_, K, V> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut list = serializer.serialize_seq(Some(self.0.len()))?;
        for pair in self.0 {
            list.serialize_element(pair)?;
        }
        list.end()
    }
}

/// A decoded entry, or why it was skipped.
enum Decoded<K, V> {
    Entry(K, V),
    BadKey(String),
    BadValue(String),
}

#[cfg_attr(docsrs, doc(cfg(feature = "serde")))]
impl<K, V, S> Cache<K, V, S>
where
    K: Hash + Eq + Clone + Send + Sync + Serialize + DeserializeOwned + 'static,
    V: Clone + Send + Sync + Serialize + DeserializeOwned + 'static,
    S: BuildHasher + Clone + Send + Sync + 'static,
{
    /// Writes every entry to `path`, atomically: see [the module
    /// docs](crate::snapshot) for the protocol and the format.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use swr_cache::Cache;
    ///
    /// let dir = std::env::temp_dir().join(format!("swr-doc-{}", std::process::id()));
    /// let path = dir.join("prompts.json");
    /// let cache: Cache<String, String> = Cache::builder().build()?;
    /// cache.insert("greeting".into(), "hello".into());
    /// cache.dump(&path)?;
    ///
    /// let restored: Cache<String, String> = Cache::builder().ttl(None).build()?;
    /// let report = restored.load(&path)?;
    /// assert_eq!(report.loaded, 1);
    /// assert_eq!(restored.get("greeting").as_deref(), Some("hello"));
    /// # std::fs::remove_dir_all(dir)?;
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    /// [`SnapshotError::Io`] or [`SnapshotError::Serialize`]; the old file, if
    /// any, is then as it was.
    pub fn dump(&self, path: impl AsRef<Path>) -> Result<(), SnapshotError> {
        let path = path.as_ref();
        let dir = match path.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir,
            _ => Path::new("."),
        };
        fs::create_dir_all(dir)?;
        let temp = temp_path(path);
        let written = File::create_new(&temp)
            .map_err(SnapshotError::from)
            .and_then(|file| {
                let mut out = BufWriter::new(file);
                self.dump_to_writer(&mut out)?;
                let file = out.into_inner().map_err(|e| e.into_error())?;
                file.sync_all()?;
                Ok(())
            })
            .and_then(|()| fs::rename(&temp, path).map_err(SnapshotError::from));
        if let Err(e) = written {
            let _ = fs::remove_file(&temp);
            return Err(e);
        }
        sync_dir(dir)?;
        Ok(())
    }

    /// Writes every entry as snapshot JSON to `writer`.
    ///
    /// # Errors
    /// [`SnapshotError::Io`] or [`SnapshotError::Serialize`].
    pub fn dump_to_writer(&self, writer: impl Write) -> Result<(), SnapshotError> {
        let entries: Vec<(K, V)> = self
            .inner
            .map
            .iter()
            .map(|entry| (entry.key().clone(), entry.value.clone()))
            .collect();
        let string_keys = entries
            .iter()
            .all(|(key, _)| matches!(serde_json::to_value(key), Ok(Value::String(_))));
        let snapshot = Snapshot {
            entries: &entries,
            string_keys,
        };
        serde_json::to_writer(writer, &snapshot).map_err(|e| match e.classify() {
            serde_json::error::Category::Io => SnapshotError::Io(e.into()),
            _ => SnapshotError::Serialize(e),
        })
    }

    /// Loads the snapshot at `path` with the default [`SnapshotLimits`].
    ///
    /// # Errors
    /// See [`load_from_reader`](Cache::load_from_reader); a missing file is
    /// [`SnapshotError::NotFound`]. On error the cache is as it was.
    pub fn load(&self, path: impl AsRef<Path>) -> Result<LoadReport, SnapshotError> {
        self.load_with_limits(path, SnapshotLimits::default())
    }

    /// Loads the snapshot at `path` within `limits`.
    ///
    /// # Errors
    /// As [`load`](Cache::load).
    pub fn load_with_limits(
        &self,
        path: impl AsRef<Path>,
        limits: SnapshotLimits,
    ) -> Result<LoadReport, SnapshotError> {
        let path = path.as_ref();
        let file = File::open(path).map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => SnapshotError::NotFound(path.to_path_buf()),
            _ => SnapshotError::Io(e),
        })?;
        if file.metadata()?.len() > limits.max_bytes {
            return Err(SnapshotError::TooLarge {
                max_bytes: limits.max_bytes,
            });
        }
        self.load_from_reader(file, limits)
    }

    /// Loads snapshot JSON from `reader`, reading at most `limits.max_bytes`.
    ///
    /// # Errors
    /// [`SnapshotError::Io`], [`TooLarge`](SnapshotError::TooLarge),
    /// [`TooManyEntries`](SnapshotError::TooManyEntries),
    /// [`InvalidJson`](SnapshotError::InvalidJson),
    /// [`WrongShape`](SnapshotError::WrongShape) or
    /// [`UnsupportedFormat`](SnapshotError::UnsupportedFormat). On error the
    /// cache is as it was.
    pub fn load_from_reader(
        &self,
        reader: impl Read,
        limits: SnapshotLimits,
    ) -> Result<LoadReport, SnapshotError> {
        let mut bytes = Vec::new();
        reader
            .take(limits.max_bytes.saturating_add(1))
            .read_to_end(&mut bytes)?;
        if bytes.len() as u64 > limits.max_bytes {
            return Err(SnapshotError::TooLarge {
                max_bytes: limits.max_bytes,
            });
        }
        let document: Value = serde_json::from_slice(&bytes).map_err(SnapshotError::InvalidJson)?;
        drop(bytes);
        let decoded = decode::<K, V>(document, limits)?;
        Ok(self.apply(decoded))
    }

    /// Adds decoded entries while the cache has room for new keys.
    fn apply(&self, decoded: Vec<Decoded<K, V>>) -> LoadReport {
        let mut report = LoadReport::default();
        let skip = |reason: String, report: &mut LoadReport| {
            report.first_skip_reason.get_or_insert(reason);
        };
        for item in decoded {
            match item {
                Decoded::BadKey(why) => {
                    report.bad_keys += 1;
                    skip(why, &mut report);
                }
                Decoded::BadValue(why) => {
                    report.bad_values += 1;
                    skip(why, &mut report);
                }
                Decoded::Entry(key, value) => {
                    let present = self.contains_key(&key);
                    if present || self.len() < self.max_size() {
                        self.insert(key, value);
                        report.loaded += 1;
                    } else {
                        report.left_out_full += 1;
                    }
                }
            }
        }
        report
    }
}

/// Decodes a snapshot document into entries, each decoded or skipped.
fn decode<K: DeserializeOwned, V: DeserializeOwned>(
    document: Value,
    limits: SnapshotLimits,
) -> Result<Vec<Decoded<K, V>>, SnapshotError> {
    let Value::Object(mut top) = document else {
        return Err(SnapshotError::WrongShape(
            "the top level is not an object".into(),
        ));
    };
    if let Some(version) = top.get("swr_cache_format") {
        if version.as_u64() != Some(SNAPSHOT_FORMAT) {
            return Err(SnapshotError::UnsupportedFormat(version.clone()));
        }
    }
    let too_many = |n: usize| {
        if n > limits.max_entries {
            Err(SnapshotError::TooManyEntries {
                max_entries: limits.max_entries,
            })
        } else {
            Ok(())
        }
    };
    match top.remove("entries") {
        Some(Value::Object(entries)) => {
            too_many(entries.len())?;
            Ok(entries
                .into_iter()
                .map(|(key, value)| decode_entry(decode_object_key(key), value))
                .collect())
        }
        Some(Value::Array(pairs)) => {
            too_many(pairs.len())?;
            pairs
                .into_iter()
                .enumerate()
                .map(|(i, pair)| match pair {
                    Value::Array(pair) if pair.len() == 2 => {
                        let mut pair = pair.into_iter();
                        let (key, value) = (pair.next(), pair.next());
                        let key = key.map_or(Err("missing key".into()), |k| {
                            serde_json::from_value::<K>(k).map_err(|e| e.to_string())
                        });
                        Ok(decode_entry(key, value.unwrap_or(Value::Null)))
                    }
                    _ => Err(SnapshotError::WrongShape(format!(
                        "entry {i} is not a [key, value] pair"
                    ))),
                })
                .collect()
        }
        Some(_) => Err(SnapshotError::WrongShape(
            "`entries` is neither an object nor a list".into(),
        )),
        None => Err(SnapshotError::WrongShape("no `entries` field".into())),
    }
}

/// An object key as the key type: from the string itself, else from the
/// JSON the string holds (`"42"` for a number).
fn decode_object_key<K: DeserializeOwned>(key: String) -> Result<K, String> {
    serde_json::from_value::<K>(Value::String(key.clone()))
        .or_else(|as_string| serde_json::from_str::<K>(&key).map_err(|_| as_string.to_string()))
}

fn decode_entry<K, V: DeserializeOwned>(key: Result<K, String>, value: Value) -> Decoded<K, V> {
    match key {
        Err(why) => Decoded::BadKey(format!("key: {why}")),
        Ok(key) => match serde_json::from_value::<V>(value) {
            Ok(value) => Decoded::Entry(key, value),
            Err(e) => Decoded::BadValue(format!("value: {e}")),
        },
    }
}

/// A fresh name beside `path` for the file a dump writes before renaming.
fn temp_path(path: &Path) -> PathBuf {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let name = path
        .file_name()
        .map_or_else(|| "snapshot".into(), |n| n.to_string_lossy());
    let unique = COUNTER.fetch_add(1, Ordering::Relaxed);
    path.with_file_name(format!(".{name}.{}.{unique}.tmp", std::process::id()))
}

/// Flushes a directory's entries (the rename) to disk, where the platform
/// allows opening a directory.
fn sync_dir(dir: &Path) -> io::Result<()> {
    #[cfg(unix)]
    {
        File::open(dir)?.sync_all()
    }
    #[cfg(not(unix))]
    {
        let _ = dir;
        Ok(())
    }
}
