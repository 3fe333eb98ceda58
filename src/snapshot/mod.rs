//! Snapshots: [`Cache::dump`] and [`Cache::load`], JSON files compatible with
//! the LangSmith SDK's prompt cache (feature `serde`, on by default).
//!
//! # Format
//!
//! ```json
//! {"swr_cache_format":1,"entries":{"owner/prompt:latest":{"commit_hash":"…"}}}
//! ```
//!
//! A cache whose keys all serialize as JSON strings (`String`, `Arc<str>`, a
//! unit-variant enum, …: each key is serialized to a `serde_json::Value` and
//! checked) is written in the LangSmith SDK's own form,
//! `{"entries": {key: value, …}}`, so a file dumped by its Python or JS `dump`
//! loads here and ours loads there; LangSmith's readers ignore the
//! `swr_cache_format` field. A cache with any other key (numbers, tuples,
//! structs) is written as a list of pairs, `{"entries": [[key, value], …]}`;
//! the Python SDK's `load` does not read that form: it calls `.items()` on
//! `entries` and raises `AttributeError` (measured with langsmith 0.15.1).
//! An empty cache is written as `{"entries": {}}` (with the version field).
//!
//! A dump is ASCII only: every other character is written as a `\uXXXX`
//! escape, as Python's `json.dump` writes it, since the Python SDK reads
//! files in the system's locale encoding, which is not UTF-8 everywhere.
//! And it is deterministic: entries are written in the order of their keys'
//! JSON text, so the same entries give the same bytes whichever cache held
//! them and in whatever order they came (provided the values serialize
//! deterministically: a `HashMap` inside a value does not), and snapshots
//! can be diffed and kept in version control.
//!
//! `load` accepts either form, with or without the version field
//! ([`SNAPSHOT_FORMAT`]; any other value is
//! [`SnapshotError::UnsupportedFormat`]) and ignores other top-level fields.
//! An object key is read as the key type from the string, or, failing that,
//! from the JSON the string holds (`"42"` for a `u64` key). Entries are
//! loaded in the order the file lists them; a key listed twice takes the
//! value listed last, at the place it was first listed, as Python's `json`
//! and JavaScript's `JSON.parse` read it.
//!
//! # Crash safety
//!
//! `dump` copies the entries out of the cache (so no shard lock is held
//! during I/O), creates the parent directories, and writes a temporary file
//! beside the target, named `.<file name>.<process id>.<counter>.tmp` and
//! created exclusively. On Unix it is created readable by its owner only
//! (0600, whatever the umask), so no other user can open it, and given the
//! old file's permissions, if there is one, before anything is written: a
//! new snapshot is 0600, a replaced one keeps its mode. It flushes the file to disk (`fsync`), renames it over the target and
//! flushes the directory, so the target is always either the whole old
//! snapshot or the whole new one. On any failure before the rename (an I/O
//! error, a value whose `Serialize` fails) the temporary file is removed and
//! the old file is untouched. A rename replaces a symbolic link at the
//! target rather than the file it points to.
//!
//! # Loading
//!
//! `load` decodes the whole input before it changes the cache: a missing,
//! unreadable or oversized file, invalid JSON, a wrong shape or an unknown
//! format version is an error and leaves the cache as it was. An entry whose
//! key or value does not decode is skipped and counted in the [`LoadReport`];
//! so is one holding a lone surrogate escape (`"\ud800"`, which Python
//! writes for a string that is not valid text), where serde_json alone would
//! fail the whole input. (To find them, the loader rewrites each such escape
//! to U+FDD0, a noncharacter no text should hold; an input with lone
//! surrogates skips entries holding U+FDD0 too.) So is one holding a bare
//! `NaN`, `Infinity` or `-Infinity`, which Python's `json.dump` writes for
//! a float that is not finite and JSON has no number for (the words inside
//! strings are text, and load). (The loader rewrites each such token
//! outside strings into the string of one U+007F, padded to its length; an
//! input with them skips entries whose value holds that string too.) The
//! report's reason and the errors quote at most 256 bytes of each key,
//! value or version they name, so they stay within [`MAX_MESSAGE_BYTES`]
//! whatever the input.
//!
//! Loaded entries get a fresh age, as the LangSmith SDK gives them, or,
//! with [`LoadOptions::as_stale`], are loaded stale: served at once, and
//! revalidated by the refresher at its next pass (and at once when read,
//! with `refresh_on_read`), which suits a file of unknown age. Loading never
//! evicts: a new key is left out when the part of the cache it falls in
//! (its shard) is full, as the LangSmith SDK stops at a full cache; the
//! report counts what was left out.
//!
//! Values of `Arc<T>` dump and load (this crate enables serde's `rc`
//! feature): `Cache<String, Arc<str>>` works as written.
//!
//! # Limits
//!
//! [`SnapshotLimits`] bounds one load: at most `max_bytes` are read
//! ([`SnapshotError::TooLarge`] past them), and at most `max_entries`
//! entries are listed ([`SnapshotError::TooManyEntries`], as soon as one
//! more is seen). Nesting deeper than serde_json's recursion limit (128) is
//! [`SnapshotError::InvalidJson`], not a stack overflow. Memory while
//! loading is the input's bytes, the decoded entries, and the JSON tree
//! (`serde_json::Value`) of the one entry being decoded. For ordinary
//! snapshots that is a few bytes per input byte; for pathological input (one
//! entry holding a long array of `0`s) the tree takes about 35 bytes per
//! input byte (2 GB for 60 MiB, measured), so `max_bytes` (64 MiB by
//! default) is what bounds it: lower it where a load may meet hostile input,
//! raise it for very large caches.

mod dump;
mod load;
mod marks;

use std::fmt;
use std::fs::{self, File};
use std::hash::{BuildHasher, Hash};
use std::io::{self, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use serde_json::error::Category;

use crate::Cache;
use crate::store::{Write as Store, Written};
use dump::{AsciiOnly, Snapshot, ascii_json, create_temp, sync_dir};
use load::{Decoded, decode, dedup};

/// The version written in `swr_cache_format`.
pub const SNAPSHOT_FORMAT: u64 = 1;

/// The most bytes of a [`LoadReport::first_skip_reason`], and of the message
/// of a [`SnapshotError`] about the input (all but `Io`, `NotFound` and
/// `Serialize`): they quote at most 256 bytes of each piece of the input
/// they name (a key, serde_json's message about a value, the format found),
/// so a hostile file cannot make them large.
///
/// ```
/// use swr_cache::Cache;
/// use swr_cache::snapshot::MAX_MESSAGE_BYTES;
///
/// let cache: Cache<String, u32> = Cache::builder().build()?;
/// let huge = "x".repeat(1 << 20);
/// let input = serde_json::json!({"entries": {huge.as_str(): huge}}).to_string();
/// let report = cache.load_from_reader(input.as_bytes(), Default::default())?;
/// let reason = report.first_skip_reason.unwrap();
/// assert!(reason.len() <= MAX_MESSAGE_BYTES, "{}", reason.len());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub const MAX_MESSAGE_BYTES: usize = 1024;

/// Bounds on what one load reads and allocates, so a huge or hostile input
/// fails cleanly with a [`SnapshotError`].
///
/// ```
/// use swr_cache::{Cache, SnapshotError, SnapshotLimits};
///
/// let cache: Cache<String, String> = Cache::builder().build()?;
/// let input = br#"{"entries": {"a": "1", "b": "2", "c": "3"}}"#;
/// let error = cache
///     .load_from_reader(&input[..], SnapshotLimits::new(1 << 20, 2))
///     .unwrap_err();
/// assert!(matches!(error, SnapshotError::TooManyEntries { max_entries: 2 }));
/// assert!(cache.is_empty());
/// # Ok::<(), swr_cache::ConfigError>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct SnapshotLimits {
    /// The most bytes read from the file or reader. Default 64 MiB.
    pub max_bytes: u64,
    /// The most entries the input may list. Default 10 million.
    pub max_entries: usize,
}

impl Default for SnapshotLimits {
    fn default() -> Self {
        Self {
            max_bytes: 64 << 20,
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

/// How a load treats what it reads, for [`Cache::load_with`] and
/// [`Cache::load_from_reader_with`].
///
/// ```
/// use swr_cache::{Cache, LoadOptions};
/// use std::time::Duration;
///
/// let cache: Cache<String, u32> = Cache::builder().ttl(Duration::from_secs(60)).build()?;
/// let input = br#"{"entries": {"a": 1}}"#;
/// cache.load_from_reader_with(&input[..], LoadOptions::new().as_stale(true))?;
/// assert_eq!(cache.get("a"), Some(1), "served at once");
/// assert_eq!(cache.is_stale("a"), Some(true), "and due for a refresh");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct LoadOptions {
    /// What one load may read and allocate.
    pub limits: SnapshotLimits,
    /// Whether loaded entries are stale from the start (served, and
    /// revalidated first) rather than given a fresh age (the LangSmith SDK's
    /// way, and the default). Without a TTL nothing is stale, and this
    /// changes nothing until one is set.
    pub as_stale: bool,
}

impl LoadOptions {
    /// The defaults: [`SnapshotLimits::default`], a fresh age.
    pub fn new() -> Self {
        Self::default()
    }

    /// Loads within `limits`.
    pub fn limits(mut self, limits: SnapshotLimits) -> Self {
        self.limits = limits;
        self
    }

    /// Loads entries stale (`true`) or fresh (`false`, the default).
    pub fn as_stale(mut self, as_stale: bool) -> Self {
        self.as_stale = as_stale;
        self
    }
}

/// What a load did. Every entry the input lists is counted once, in
/// `loaded` or in one of the other counts ([`not_loaded`](Self::not_loaded)):
/// `loaded + not_loaded() == listed`.
///
/// ```
/// use swr_cache::{Cache, SnapshotLimits};
///
/// let cache: Cache<String, u32> = Cache::builder().max_size(1).build()?;
/// let input = br#"{"entries": {"a": 1, "b": "two", "a": 3, "c": 4}}"#;
/// let report = cache.load_from_reader(&input[..], SnapshotLimits::default())?;
/// assert_eq!(report.listed, 4);
/// assert_eq!(
///     (report.loaded, report.bad_values, report.duplicate_keys, report.left_out_full),
///     (1, 1, 1, 1)
/// );
/// assert_eq!(report.loaded + report.not_loaded(), report.listed);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct LoadReport {
    /// Entries the input lists, each listing of a key counted.
    pub listed: usize,
    /// Entries added to or updated in the cache.
    pub loaded: usize,
    /// Entries skipped because their key did not decode as the key type.
    pub bad_keys: usize,
    /// Entries skipped because their value did not decode as the value type.
    pub bad_values: usize,
    /// Entries not loaded because the cache was full.
    pub left_out_full: usize,
    /// Entries whose key the input lists again later: the later value was
    /// loaded instead.
    pub duplicate_keys: usize,
    /// Why the first skipped entry (bad key or bad value) was skipped, if any
    /// was, naming the entry; at most [`MAX_MESSAGE_BYTES`].
    pub first_skip_reason: Option<String>,
}

impl LoadReport {
    /// Entries in the input that are not in the cache after the load.
    pub fn not_loaded(&self) -> usize {
        self.bad_keys + self.bad_values + self.left_out_full + self.duplicate_keys
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
    /// The input is not JSON (or nests deeper than serde_json's recursion
    /// limit).
    InvalidJson(serde_json::Error),
    /// The JSON is not a snapshot: not an object, no `entries` field or two
    /// of them, `entries` neither an object nor a list, or a list item that is
    /// not a `[key, value]` pair. (What is wrong, quoting at most 256 bytes
    /// of the input.)
    WrongShape(String),
    /// `swr_cache_format` names a version this crate does not read. (The
    /// value found, as JSON text, cut after 256 bytes.)
    UnsupportedFormat(String),
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
    /// any, is then as it was. The one exception: if only the last step,
    /// flushing the directory after the rename, fails, the new file is in
    /// place but may not survive a power loss, and that `Io` error is
    /// returned.
    pub fn dump(&self, path: impl AsRef<Path>) -> Result<(), SnapshotError> {
        let path = path.as_ref();
        let dir = match path.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir,
            _ => Path::new("."),
        };
        fs::create_dir_all(dir)?;
        let (temp, file) = create_temp(path)?;
        let written = (|| -> Result<(), SnapshotError> {
            if let Ok(old) = fs::metadata(path) {
                file.set_permissions(old.permissions())?;
            }
            let mut out = BufWriter::new(file);
            self.dump_to_writer(&mut out)?;
            let file = out.into_inner().map_err(|e| e.into_error())?;
            file.sync_all()?;
            drop(file);
            fs::rename(&temp, path)?;
            Ok(())
        })();
        if let Err(e) = written {
            let _ = fs::remove_file(&temp);
            return Err(e);
        }
        sync_dir(dir)?;
        Ok(())
    }

    /// Writes every entry as snapshot JSON to `writer` (unbuffered writers
    /// are best wrapped in a [`BufWriter`]).
    ///
    /// ```
    /// use swr_cache::Cache;
    ///
    /// let cache: Cache<String, u32> = Cache::builder().build()?;
    /// cache.insert("a".into(), 1);
    /// let mut out = Vec::new();
    /// cache.dump_to_writer(&mut out)?;
    /// assert_eq!(out, br#"{"swr_cache_format":1,"entries":{"a":1}}"#);
    ///
    /// let numbers: Cache<u64, u32> = Cache::builder().build()?;
    /// numbers.insert(7, 1);
    /// let mut out = Vec::new();
    /// numbers.dump_to_writer(&mut out)?;
    /// assert_eq!(out, br#"{"swr_cache_format":1,"entries":[[7,1]]}"#);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    /// [`SnapshotError::Io`] or [`SnapshotError::Serialize`].
    pub fn dump_to_writer(&self, writer: impl Write) -> Result<(), SnapshotError> {
        let entries: Vec<(K, V)> = self.iter().collect();
        let serialize = |e: serde_json::Error| SnapshotError::Serialize(e);
        let string_keys = entries
            .iter()
            .all(|(key, _)| matches!(serde_json::to_value(key), Ok(Value::String(_))));
        // In the order of the keys' own JSON, so the same entries make the
        // same bytes whichever cache held them and however they came in.
        let mut keyed = entries
            .into_iter()
            .map(|(key, value)| Ok((ascii_json(&key).map_err(serialize)?, key, value)))
            .collect::<Result<Vec<_>, SnapshotError>>()?;
        keyed.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        let entries: Vec<(K, V)> = keyed.into_iter().map(|(_, k, v)| (k, v)).collect();
        let snapshot = Snapshot {
            entries: &entries,
            string_keys,
        };
        let mut serializer = serde_json::Serializer::with_formatter(writer, AsciiOnly);
        snapshot
            .serialize(&mut serializer)
            .map_err(|e| match e.classify() {
                Category::Io => SnapshotError::Io(e.into()),
                _ => SnapshotError::Serialize(e),
            })
    }

    /// Loads the snapshot at `path` with the default [`LoadOptions`]: within
    /// the default [`SnapshotLimits`], loaded entries given a fresh age.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use swr_cache::Cache;
    ///
    /// let path = std::env::temp_dir().join(format!("swr-load-doc-{}.json", std::process::id()));
    /// std::fs::write(&path, r#"{"entries": {"acme/greeting:latest": "hello", "acme/bye": 7}}"#)?;
    /// let cache: Cache<String, String> = Cache::builder().ttl(None).build()?;
    /// let report = cache.load(&path)?;
    /// assert_eq!((report.loaded, report.bad_values), (1, 1));
    /// assert_eq!(cache.get("acme/greeting:latest").as_deref(), Some("hello"));
    /// # std::fs::remove_file(path)?;
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    /// See [`load_from_reader`](Cache::load_from_reader); a missing file is
    /// [`SnapshotError::NotFound`]. On error the cache is as it was.
    pub fn load(&self, path: impl AsRef<Path>) -> Result<LoadReport, SnapshotError> {
        self.load_with_limits(path, SnapshotLimits::default())
    }

    /// Loads the snapshot at `path` within `limits`; a file longer than
    /// `limits.max_bytes` fails before it is read.
    ///
    /// # Errors
    /// As [`load`](Cache::load).
    pub fn load_with_limits(
        &self,
        path: impl AsRef<Path>,
        limits: SnapshotLimits,
    ) -> Result<LoadReport, SnapshotError> {
        self.load_with(path, LoadOptions::new().limits(limits))
    }

    /// Loads the snapshot at `path` as `options` say; a file longer than
    /// `options.limits.max_bytes` fails before it is read.
    ///
    /// # Errors
    /// As [`load`](Cache::load).
    pub fn load_with(
        &self,
        path: impl AsRef<Path>,
        options: LoadOptions,
    ) -> Result<LoadReport, SnapshotError> {
        let limits = options.limits;
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
        self.load_from_reader_with(file, options)
    }

    /// Loads snapshot JSON from `reader` (buffered here), reading at most
    /// `limits.max_bytes`.
    ///
    /// ```
    /// use swr_cache::{Cache, SnapshotLimits};
    ///
    /// let cache: Cache<String, u32> = Cache::builder().max_size(2).build()?;
    /// let input = br#"{"entries": {"a": 1, "b": "two", "c": 3, "d": 4}}"#;
    /// let report = cache.load_from_reader(&input[..], SnapshotLimits::default())?;
    /// assert_eq!((report.loaded, report.bad_values, report.left_out_full), (2, 1, 1));
    /// assert_eq!(cache.get("c"), Some(3));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
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
        self.load_from_reader_with(reader, LoadOptions::new().limits(limits))
    }

    /// Loads snapshot JSON from `reader` as `options` say.
    ///
    /// # Errors
    /// As [`load_from_reader`](Cache::load_from_reader).
    pub fn load_from_reader_with(
        &self,
        reader: impl Read,
        options: LoadOptions,
    ) -> Result<LoadReport, SnapshotError> {
        let decoded = decode::<K, V>(reader, options.limits)?;
        Ok(self.apply(decoded, options.as_stale))
    }

    /// Adds decoded entries while the cache has room for new keys.
    fn apply(&self, decoded: Decoded<K, V>, stale: bool) -> LoadReport {
        let mut report = LoadReport {
            listed: decoded.listed,
            bad_keys: decoded.bad_keys,
            bad_values: decoded.bad_values,
            first_skip_reason: decoded.first_skip_reason,
            ..LoadReport::default()
        };
        let (entries, duplicates) = dedup(decoded.entries);
        report.duplicate_keys = duplicates;
        for (key, value) in entries {
            if self.inner.is_disabled() {
                report.left_out_full += 1;
                continue;
            }
            match self
                .inner
                .write_as(key, value, Store::IfRoom, (stale, None))
            {
                Written::Refused(..) => report.left_out_full += 1,
                Written::Added | Written::Replaced => report.loaded += 1,
            }
        }
        report
    }
}
