//! Reading a snapshot: decoding within limits, entry by entry, before the
//! cache changes.

use std::collections::HashMap;
use std::fmt;
use std::hash::Hash;
use std::io::{self, BufReader, Read};

use serde::Deserializer;
use serde::de::{self, DeserializeOwned, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess};
use serde_json::Value;
use serde_json::error::Category;

use super::marks::Marks;
use super::{SNAPSHOT_FORMAT, SnapshotError, SnapshotLimits};
use crate::excerpt::{Excerpt, excerpt};

/// Keeps one entry per key: the value listed last, at the place the key was
/// first listed. Returns the entries and how many were dropped.
pub(super) fn dedup<K: Hash + Eq, V>(entries: Vec<(K, V)>) -> (Vec<(K, V)>, usize) {
    // `last[i]`: for the first listing of a key, the index of its last listing.
    let mut last: Vec<Option<usize>> = vec![None; entries.len()];
    {
        let mut first: HashMap<&K, usize> = HashMap::with_capacity(entries.len());
        for (i, (key, _)) in entries.iter().enumerate() {
            let at = *first.entry(key).or_insert(i);
            last[at] = Some(i);
        }
        if first.len() == entries.len() {
            return (entries, 0);
        }
    }
    let duplicates = entries.len() - last.iter().flatten().count();
    let mut slots: Vec<Option<(K, V)>> = entries.into_iter().map(Some).collect();
    let mut kept = Vec::with_capacity(slots.len() - duplicates);
    for (at, last) in last.into_iter().enumerate() {
        let Some(last) = last else { continue };
        let first = slots[at].take();
        let entry = if last == at {
            first
        } else {
            first
                .zip(slots[last].take())
                .map(|((key, _), (_, value))| (key, value))
        };
        kept.extend(entry);
    }
    (kept, duplicates)
}

/// What a load decoded, before it changes the cache.
pub(super) struct Decoded<K, V> {
    pub(super) listed: usize,
    pub(super) entries: Vec<(K, V)>,
    pub(super) bad_keys: usize,
    pub(super) bad_values: usize,
    pub(super) first_skip_reason: Option<String>,
}

/// The state of one decode.
struct State<K, V> {
    limits: SnapshotLimits,
    /// What Python writes and JSON lacks, marked in the input.
    marks: Marks,
    decoded: Decoded<K, V>,
    /// The typed error that stopped the decode, if it was not serde_json's.
    failure: Option<SnapshotError>,
}

impl<K: DeserializeOwned, V: DeserializeOwned> State<K, V> {
    /// Records `error` as the reason the decode stops, returning the error
    /// that makes the deserializer stop.
    fn fail<E: de::Error>(&mut self, error: SnapshotError) -> E {
        let message = error.to_string();
        self.failure = Some(error);
        E::custom(message)
    }

    /// Counts one more listed entry, failing past `max_entries`.
    fn count<E: de::Error>(&mut self) -> Result<(), E> {
        self.decoded.listed += 1;
        if self.decoded.listed > self.limits.max_entries {
            let max_entries = self.limits.max_entries;
            return Err(self.fail(SnapshotError::TooManyEntries { max_entries }));
        }
        Ok(())
    }

    /// Decodes one entry's value, or records why its key or value did not
    /// decode.
    fn entry(&mut self, which: impl FnOnce() -> String, key: Result<K, String>, value: Value) {
        let decoded = &mut self.decoded;
        let why = match (key, self.marks.in_value(&value)) {
            (Err(why), _) => {
                decoded.bad_keys += 1;
                format!("key of entry {}: {why}", which())
            }
            (Ok(_), Some(why)) => {
                decoded.bad_values += 1;
                format!("value of entry {}: {why}", which())
            }
            (Ok(key), None) => match serde_json::from_value::<V>(value) {
                Ok(value) => {
                    decoded.entries.push((key, value));
                    return;
                }
                Err(e) => {
                    decoded.bad_values += 1;
                    // serde_json's message quotes the value it met.
                    format!("value of entry {}: {}", which(), Excerpt(e))
                }
            },
        };
        decoded.first_skip_reason.get_or_insert(why);
    }
}

/// Decodes a snapshot from `reader` within `limits`.
pub(super) fn decode<K: DeserializeOwned, V: DeserializeOwned>(
    reader: impl Read,
    limits: SnapshotLimits,
) -> Result<Decoded<K, V>, SnapshotError> {
    let mut limited = Limited {
        inner: BufReader::new(reader),
        left: limits.max_bytes,
        exceeded: false,
    };
    let mut input = Vec::new();
    if let Err(e) = limited.read_to_end(&mut input) {
        return Err(if limited.exceeded {
            SnapshotError::TooLarge {
                max_bytes: limits.max_bytes,
            }
        } else {
            SnapshotError::Io(e)
        });
    }
    let marks = Marks::write(&mut input);
    let mut state = State {
        limits,
        marks,
        decoded: Decoded {
            listed: 0,
            entries: Vec::new(),
            bad_keys: 0,
            bad_values: 0,
            first_skip_reason: None,
        },
        failure: None,
    };
    let result = {
        let mut de = serde_json::Deserializer::from_slice(&input);
        Document(&mut state)
            .deserialize(&mut de)
            .and_then(|()| de.end())
    };
    match result {
        Ok(()) => Ok(state.decoded),
        Err(e) => Err(state.failure.take().unwrap_or_else(|| match e.classify() {
            Category::Io => SnapshotError::Io(e.into()),
            // Only the document's own visitors meet types they do not expect.
            // serde_json's message quotes the value it met.
            Category::Data => SnapshotError::WrongShape(excerpt(e)),
            Category::Syntax | Category::Eof => SnapshotError::InvalidJson(e),
        })),
    }
}

/// A reader that fails once more than `left` bytes are asked of it.
struct Limited<R> {
    inner: R,
    left: u64,
    exceeded: bool,
}

impl<R: Read> Read for Limited<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        if self.left == 0 {
            // At the limit: the input must end here.
            let mut probe = [0u8; 1];
            if self.inner.read(&mut probe)? == 0 {
                return Ok(0);
            }
            self.exceeded = true;
            return Err(io::Error::other("the snapshot is longer than max_bytes"));
        }
        let room = usize::try_from(self.left)
            .unwrap_or(usize::MAX)
            .min(buf.len());
        let n = self.inner.read(&mut buf[..room])?;
        self.left -= n as u64;
        Ok(n)
    }
}

/// The top level: `{"swr_cache_format": 1, "entries": …}`.
struct Document<'a, K, V>(&'a mut State<K, V>);

impl<'de, K: DeserializeOwned, V: DeserializeOwned> DeserializeSeed<'de> for Document<'_, K, V> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de, K: DeserializeOwned, V: DeserializeOwned> de::Visitor<'de> for Document<'_, K, V> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a snapshot object with an `entries` field")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let state = self.0;
        let mut seen_entries = false;
        while let Some(field) = map.next_key::<String>()? {
            match field.as_str() {
                "swr_cache_format" => {
                    let version: Value = map.next_value()?;
                    if version.as_u64() != Some(SNAPSHOT_FORMAT) {
                        let found = excerpt(version);
                        return Err(state.fail(SnapshotError::UnsupportedFormat(found)));
                    }
                }
                "entries" => {
                    if seen_entries {
                        let why = "the `entries` field appears twice".into();
                        return Err(state.fail(SnapshotError::WrongShape(why)));
                    }
                    seen_entries = true;
                    map.next_value_seed(Entries(&mut *state))?;
                }
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        if !seen_entries {
            return Err(state.fail(SnapshotError::WrongShape("no `entries` field".into())));
        }
        Ok(())
    }
}

/// The `entries` field: an object of key to value, or a list of pairs.
struct Entries<'a, K, V>(&'a mut State<K, V>);

impl<'de, K: DeserializeOwned, V: DeserializeOwned> DeserializeSeed<'de> for Entries<'_, K, V> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de, K: DeserializeOwned, V: DeserializeOwned> de::Visitor<'de> for Entries<'_, K, V> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("`entries` as an object or a list of [key, value] pairs")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let state = self.0;
        while let Some(text) = map.next_key::<String>()? {
            state.count()?;
            let key = match state.marks.in_key(&text) {
                Some(why) => Err(why.to_string()),
                None => decode_object_key::<K>(&text),
            };
            match key {
                Ok(key) => {
                    let value: Value = map.next_value()?;
                    state.entry(|| quoted(&text), Ok(key), value);
                }
                Err(why) => {
                    map.next_value::<IgnoredAny>()?;
                    state.entry(|| quoted(&text), Err(why), Value::Null);
                }
            }
        }
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let state = self.0;
        let mut index = 0usize;
        while let Some(pair) = seq.next_element::<Value>()? {
            state.count()?;
            let pair = match pair {
                Value::Array(items) => <[Value; 2]>::try_from(items).ok(),
                _ => None,
            };
            let Some([key, value]) = pair else {
                let why = format!("entry {index} is not a [key, value] pair");
                return Err(state.fail(SnapshotError::WrongShape(why)));
            };
            let key = match state.marks.in_value(&key) {
                Some(why) => Err(why.to_string()),
                None => serde_json::from_value::<K>(key).map_err(excerpt),
            };
            state.entry(|| index.to_string(), key, value);
            index += 1;
        }
        Ok(())
    }
}

/// An object key as the key type: from the string itself, else from the
/// JSON the string holds (`"42"` for a number). The error is bounded, as
/// serde_json's message quotes the key.
fn decode_object_key<K: DeserializeOwned>(text: &str) -> Result<K, String> {
    serde_json::from_value::<K>(Value::String(text.to_owned()))
        .or_else(|as_string| serde_json::from_str::<K>(text).map_err(|_| excerpt(as_string)))
}

/// A key for a message: quoted, and bounded.
fn quoted(text: &str) -> String {
    excerpt(format_args!("{text:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dedup_keeps_the_first_place_and_the_last_value() {
        let entries = vec![("a", 1), ("b", 2), ("a", 3), ("c", 4), ("a", 5), ("b", 6)];
        let (kept, dropped) = dedup(entries);
        assert_eq!(kept, vec![("a", 5), ("b", 6), ("c", 4)]);
        assert_eq!(dropped, 3);
        assert_eq!(
            dedup(vec![("x", 1), ("y", 2)]),
            (vec![("x", 1), ("y", 2)], 0)
        );
    }

    #[test]
    fn the_limited_reader_stops_one_byte_past_the_limit() {
        let read = |input: &[u8], max: u64| {
            let mut limited = Limited {
                inner: input,
                left: max,
                exceeded: false,
            };
            let mut out = Vec::new();
            let result = limited.read_to_end(&mut out);
            (result.is_ok(), limited.exceeded, out.len())
        };
        assert_eq!(read(b"12345", 5), (true, false, 5));
        assert_eq!(read(b"123456", 5), (false, true, 5));
        assert_eq!(read(b"", 0), (true, false, 0));
    }
}
