//! Writing a snapshot: the JSON form, and the file written atomically.

use std::fs::{File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use serde::ser::{SerializeMap, SerializeSeq, SerializeStruct};
use serde::{Serialize, Serializer};
use serde_json::ser::Formatter;

use super::{SNAPSHOT_FORMAT, SnapshotError};

/// Compact JSON (the trait's default methods) with every character outside
/// ASCII escaped (`\uXXXX`, a surrogate pair above U+FFFF), as Python's
/// `json.dump` writes it: the LangSmith SDK reads its files in the system's
/// locale encoding, which is not UTF-8 everywhere (Windows without UTF-8
/// mode), and ASCII reads the same in all of them.
pub(super) struct AsciiOnly;

impl Formatter for AsciiOnly {
    fn write_string_fragment<W: ?Sized + io::Write>(
        &mut self,
        writer: &mut W,
        fragment: &str,
    ) -> io::Result<()> {
        let mut ascii_from = 0;
        for (at, c) in fragment.char_indices() {
            if c.is_ascii() {
                continue;
            }
            writer.write_all(&fragment.as_bytes()[ascii_from..at])?;
            let mut units = [0u16; 2];
            for unit in c.encode_utf16(&mut units) {
                write!(writer, "\\u{unit:04x}")?;
            }
            ascii_from = at + c.len_utf8();
        }
        writer.write_all(&fragment.as_bytes()[ascii_from..])
    }
}

/// `value` as ASCII-only JSON text.
pub(super) fn ascii_json(value: &impl Serialize) -> Result<Vec<u8>, serde_json::Error> {
    let mut out = Vec::new();
    value.serialize(&mut serde_json::Serializer::with_formatter(
        &mut out, AsciiOnly,
    ))?;
    Ok(out)
}

/// The entries of a dump, in the form their keys allow.
pub(super) struct Snapshot<'a, K, V> {
    pub(super) entries: &'a [(K, V)],
    pub(super) string_keys: bool,
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

/// Creates a fresh temporary file beside `path`, for a dump to write before
/// renaming it over `path`; on Unix, readable and writable by its owner
/// only (0600, whatever the umask).
pub(super) fn create_temp(path: &Path) -> Result<(PathBuf, File), SnapshotError> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let name = path
        .file_name()
        .map_or_else(|| "snapshot".into(), |n| n.to_string_lossy());
    let mut tries = 0;
    loop {
        let unique = COUNTER.fetch_add(1, Ordering::Relaxed);
        let temp = path.with_file_name(format!(".{name}.{}.{unique}.tmp", std::process::id()));
        let mut options = OpenOptions::new();
        options.write(true).create_new(true);
        // Owner only from its creation: a chmod afterwards would not close
        // the file to whoever opened it in between.
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        match options.open(&temp) {
            Ok(file) => return Ok((temp, file)),
            // Left by a crashed process that had this process id.
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists && tries < 16 => tries += 1,
            Err(e) => return Err(e.into()),
        }
    }
}

/// Flushes a directory's entries (the rename) to disk, where the platform
/// allows opening a directory.
pub(super) fn sync_dir(dir: &Path) -> io::Result<()> {
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
