//! The messages replicas send one another: one JSON object per change,
//! small, and never holding the value unless the user opted in.
//!
//! ```text
//! {"swr":1,"from":"6f1c0e2a9b3d4c5e","op":"d","key":"greeting"}
//! {"swr":1,"from":"6f1c0e2a9b3d4c5e","op":"w","lost":true,"key":"greeting","ver":"c0ffee"}
//! {"swr":1,"from":"6f1c0e2a9b3d4c5e","op":"c"}
//! ```
//!
//! `swr` is the format's version and `from` the sending replica's id (16
//! hex digits); `lost` is set on the first message after the sender dropped
//! one (its queue full, Redis unreachable, a change it could not encode),
//! so that a receiver knows it missed something even if this is the first
//! message it hears from that sender; `op` is `w` (the key has a new value), `r` (a refresh brought a new
//! value), `d` (the user removed it) or `c` (the user cleared the cache);
//! `ver` is the value's version as the user's version function gives it,
//! `val` the value itself when values are sent. Decoding is strict about
//! the envelope (a message of another format or a newer version is
//! refused, not guessed at) and lenient about what it does not know
//! (extra fields are ignored, for later versions that add some).

use serde::Serialize;
use serde_json::Value;

/// The format's version, in every message's `swr` field.
pub(crate) const FORMAT: u64 = 1;

/// What a message says happened.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Op {
    Written,
    Refreshed,
    Removed,
    Cleared,
}

impl Op {
    fn code(self) -> &'static str {
        match self {
            Op::Written => "w",
            Op::Refreshed => "r",
            Op::Removed => "d",
            Op::Cleared => "c",
        }
    }

    fn from_code(code: &str) -> Option<Self> {
        Some(match code {
            "w" => Op::Written,
            "r" => Op::Refreshed,
            "d" => Op::Removed,
            "c" => Op::Cleared,
            _ => return None,
        })
    }
}

/// A decoded message: the key and value still as JSON, for the link to
/// decode as its types.
#[derive(Debug, PartialEq)]
pub(crate) struct Message {
    pub(crate) from: u64,
    pub(crate) op: Op,
    /// The sender dropped a message before this one.
    pub(crate) lost: bool,
    /// Present for every op but `Cleared`.
    pub(crate) key: Option<Value>,
    pub(crate) version: Option<String>,
    pub(crate) value: Option<Value>,
}

/// Why a payload is not a message.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Malformed {
    NotJson,
    NotOurs,
    Format(u64),
    Field(&'static str),
}

/// What starts every message of one replica, formatted once.
pub(crate) struct Envelope {
    /// `{"swr":1,"from":"<id>","op":"`
    prefix: String,
}

impl Envelope {
    pub(crate) fn new(from: u64) -> Self {
        Self {
            prefix: format!(r#"{{"swr":{FORMAT},"from":"{from:016x}","op":""#),
        }
    }

    /// A message's payload, written straight into one buffer (the key
    /// serialized in place: no intermediate JSON values).
    pub(crate) fn encode<K: Serialize + ?Sized>(
        &self,
        op: Op,
        lost: bool,
        key: Option<&K>,
        version: Option<&str>,
        value: Option<&Value>,
    ) -> Result<String, serde_json::Error> {
        let mut out = Vec::with_capacity(self.prefix.len() + 64);
        out.extend_from_slice(self.prefix.as_bytes());
        out.extend_from_slice(op.code().as_bytes());
        out.push(b'"');
        if lost {
            out.extend_from_slice(br#","lost":true"#);
        }
        if let Some(key) = key {
            out.extend_from_slice(br#","key":"#);
            serde_json::to_writer(&mut out, key)?;
        }
        if let Some(version) = version {
            out.extend_from_slice(br#","ver":"#);
            serde_json::to_writer(&mut out, version)?;
        }
        if let Some(value) = value {
            out.extend_from_slice(br#","val":"#);
            serde_json::to_writer(&mut out, value)?;
        }
        out.push(b'}');
        // serde_json writes UTF-8, and the rest is ASCII.
        String::from_utf8(out).map_err(|e| serde::ser::Error::custom(e.utf8_error()))
    }
}

/// Decodes a payload; every field is checked for its type.
pub(crate) fn decode(payload: &[u8]) -> Result<Message, Malformed> {
    let value: Value = serde_json::from_slice(payload).map_err(|_| Malformed::NotJson)?;
    let Value::Object(mut object) = value else {
        return Err(Malformed::NotOurs);
    };
    match object.get("swr").map(Value::as_u64) {
        None | Some(None) => return Err(Malformed::NotOurs),
        Some(Some(FORMAT)) => {}
        Some(Some(other)) => return Err(Malformed::Format(other)),
    }
    let from = object
        .get("from")
        .and_then(Value::as_str)
        // As sent: 16 lowercase hex digits (from_str_radix alone would
        // also take a sign and uppercase, two spellings of one id).
        .filter(|s| s.len() == 16 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
        .and_then(|s| u64::from_str_radix(s, 16).ok())
        .ok_or(Malformed::Field("from"))?;
    let op = object
        .get("op")
        .and_then(Value::as_str)
        .and_then(Op::from_code)
        .ok_or(Malformed::Field("op"))?;
    let lost = match object.get("lost") {
        None => false,
        Some(Value::Bool(lost)) => *lost,
        Some(_) => return Err(Malformed::Field("lost")),
    };
    let key = object.remove("key");
    if key.is_none() && op != Op::Cleared {
        return Err(Malformed::Field("key"));
    }
    let version = match object.remove("ver") {
        None => None,
        Some(Value::String(version)) => Some(version),
        Some(_) => return Err(Malformed::Field("ver")),
    };
    Ok(Message {
        from,
        op,
        lost,
        key,
        version,
        value: object.remove("val"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_op_round_trips() {
        for op in [Op::Written, Op::Refreshed, Op::Removed, Op::Cleared] {
            let key = (op != Op::Cleared).then(|| Value::from("k"));
            let payload = Envelope::new(7)
                .encode(op, true, key.as_ref(), Some("v1"), None)
                .unwrap();
            let message = decode(payload.as_bytes()).unwrap();
            assert_eq!(
                message,
                Message {
                    from: 7,
                    op,
                    lost: true,
                    key,
                    version: Some("v1".into()),
                    value: None
                }
            );
        }
    }

    #[test]
    fn the_format_is_as_documented() {
        let payload = Envelope::new(0x6f1c_0e2a_9b3d_4c5e)
            .encode(
                Op::Written,
                false,
                Some("greeting"),
                Some("c0ffee"),
                Some(&Value::from("hello")),
            )
            .unwrap();
        assert_eq!(
            payload,
            r#"{"swr":1,"from":"6f1c0e2a9b3d4c5e","op":"w","key":"greeting","ver":"c0ffee","val":"hello"}"#
        );
    }

    #[test]
    fn what_is_not_a_message_is_refused_with_its_reason() {
        let cases: [(&str, Malformed); 12] = [
            ("not json", Malformed::NotJson),
            ("[1,2]", Malformed::NotOurs),
            (r#"{"op":"d","key":1}"#, Malformed::NotOurs),
            (
                r#"{"swr":2,"from":"0000000000000001","op":"c"}"#,
                Malformed::Format(2),
            ),
            (r#"{"swr":1,"from":"1","op":"c"}"#, Malformed::Field("from")),
            (
                r#"{"swr":1,"from":"000000000000000g","op":"c"}"#,
                Malformed::Field("from"),
            ),
            // Not as sent: a sign, uppercase.
            (
                r#"{"swr":1,"from":"+00000000000001f","op":"c"}"#,
                Malformed::Field("from"),
            ),
            (
                r#"{"swr":1,"from":"000000000000001F","op":"c"}"#,
                Malformed::Field("from"),
            ),
            (
                r#"{"swr":1,"from":"0000000000000001","op":"c","lost":1}"#,
                Malformed::Field("lost"),
            ),
            (
                r#"{"swr":1,"from":"0000000000000001","op":"x"}"#,
                Malformed::Field("op"),
            ),
            (
                r#"{"swr":1,"from":"0000000000000001","op":"d"}"#,
                Malformed::Field("key"),
            ),
            (
                r#"{"swr":1,"from":"0000000000000001","op":"w","key":1,"ver":2}"#,
                Malformed::Field("ver"),
            ),
        ];
        for (payload, reason) in cases {
            assert_eq!(decode(payload.as_bytes()), Err(reason), "{payload}");
        }
    }

    #[test]
    fn unknown_fields_are_ignored() {
        let message =
            decode(br#"{"swr":1,"from":"0000000000000001","op":"c","later":true}"#).unwrap();
        assert_eq!(message.op, Op::Cleared);
    }
}
