//! What Python's `json.dump` writes and JSON does not allow: lone
//! surrogate escapes (`"\ud800"`) and the floats `NaN`, `Infinity` and
//! `-Infinity`. serde_json fails the whole input on any of them; marking
//! them in place, as JSON it reads, lets a load skip only the entries that
//! hold them.

use serde_json::Value;

/// Which marks a decode wrote into its input, and so looks for in each entry.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct Marks {
    lone_surrogates: bool,
    non_finite: bool,
}

impl Marks {
    /// Marks what `input` holds of both, in place (the length unchanged).
    pub(super) fn write(input: &mut [u8]) -> Self {
        Self {
            lone_surrogates: mark_lone_surrogates(input) > 0,
            non_finite: mark_non_finite(input) > 0,
        }
    }

    /// Why an entry whose value (or list-form key) is `value` is skipped, if
    /// it holds a mark.
    pub(super) fn in_value(self, value: &Value) -> Option<&'static str> {
        if self.lone_surrogates && any_text(value, &|text, _| text.contains(LONE_SURROGATE)) {
            Some(LONE_SURROGATE_REASON)
        } else if self.non_finite && any_text(value, &|text, is_key| !is_key && text == NON_FINITE)
        {
            Some(NON_FINITE_REASON)
        } else {
            None
        }
    }

    /// Why an entry whose object-form key is `text` is skipped, if it holds a
    /// mark (only a lone surrogate can be in a key).
    pub(super) fn in_key(self, text: &str) -> Option<&'static str> {
        (self.lone_surrogates && text.contains(LONE_SURROGATE)).then_some(LONE_SURROGATE_REASON)
    }
}

/// Whether `hit` holds for any string or object key (`true` for a key) in
/// `value`.
fn any_text(value: &Value, hit: &impl Fn(&str, bool) -> bool) -> bool {
    match value {
        Value::String(text) => hit(text, false),
        Value::Array(items) => items.iter().any(|item| any_text(item, hit)),
        Value::Object(fields) => fields
            .iter()
            .any(|(key, value)| hit(key, true) || any_text(value, hit)),
        _ => false,
    }
}

/// Stands in the text for a lone surrogate escape: U+FDD0, a noncharacter,
/// which Unicode keeps for uses like this one and no text should carry.
const LONE_SURROGATE: char = '\u{fdd0}';

/// Rewrites, in place, every `\uD800`–`\uDFFF` escape that is not half of
/// a surrogate pair into the escape of [`LONE_SURROGATE`] (same length), and
/// returns how many it rewrote. Python's `json.dump` writes such escapes for
/// strings that hold a lone surrogate, which is not text: serde_json would
/// fail the whole input on one, and this way only the entry holding it is
/// skipped. (Backslashes appear only inside strings in valid JSON, and every
/// escape is stepped over whole, so an escaped backslash followed by `u` is
/// left alone.)
fn mark_lone_surrogates(input: &mut [u8]) -> usize {
    let mut marked = 0;
    let mut at = 0;
    while at < input.len() {
        if input[at] != b'\\' {
            at += 1;
            continue;
        }
        let Some(first) = escaped_unit(input, at) else {
            at += 2; // another escape, `\"` or `\\`: stepped over whole
            continue;
        };
        let paired = (0xd800..0xdc00).contains(&first)
            && escaped_unit(input, at + 6).is_some_and(|second| (0xdc00..0xe000).contains(&second));
        if paired {
            at += 12;
        } else {
            if (0xd800..0xe000).contains(&first) {
                input[at + 2..at + 6].copy_from_slice(b"fdd0");
                marked += 1;
            }
            at += 6;
        }
    }
    marked
}

/// The UTF-16 unit of the `\uXXXX` escape at `at`, if one is there.
fn escaped_unit(input: &[u8], at: usize) -> Option<u16> {
    let escape = input.get(at..at + 6)?;
    if escape[0] != b'\\' || escape[1] != b'u' {
        return None;
    }
    u16::from_str_radix(std::str::from_utf8(&escape[2..]).ok()?, 16).ok()
}

/// Why an entry holding a lone surrogate is skipped.
const LONE_SURROGATE_REASON: &str =
    "holds a lone surrogate escape (\\ud800 to \\udfff, not half of a pair), which is not text";

/// Stands in the text for `NaN`, `Infinity` or `-Infinity`: the string of
/// one U+007F (DEL), a control character no text should hold, written as
/// the three bytes `"`, 0x7F, `"` and padded with spaces to the token's
/// length. (So an input with these tokens skips entries whose value holds
/// that one-character string too.)
const NON_FINITE: &str = "\u{7f}";

/// Rewrites, in place, every bare `NaN`, `Infinity` and `-Infinity` outside
/// strings (as Python's `json.dump` writes floats that are not finite) into
/// the string [`NON_FINITE`], padded with spaces to the same length, and
/// returns how many it rewrote. Inside strings the words are text and left
/// alone. (Strings are tracked by their quotes, each escape stepped over
/// whole. Where the input is not JSON before a token, the rewrite of the
/// token, a complete value either way, cannot make it JSON.)
fn mark_non_finite(input: &mut [u8]) -> usize {
    const TOKENS: [&[u8]; 3] = [b"NaN", b"Infinity", b"-Infinity"];
    let mut marked = 0;
    let mut in_string = false;
    let mut at = 0;
    while at < input.len() {
        let byte = input[at];
        if in_string {
            match byte {
                b'\\' => at += 2,
                b'"' => {
                    in_string = false;
                    at += 1;
                }
                _ => at += 1,
            }
            continue;
        }
        if byte == b'"' {
            in_string = true;
            at += 1;
            continue;
        }
        if !matches!(byte, b'N' | b'I' | b'-') {
            at += 1;
            continue;
        }
        match TOKENS.iter().find(|token| input[at..].starts_with(token)) {
            Some(token) => {
                input[at..at + 3].copy_from_slice(b"\"\x7f\"");
                input[at + 3..at + token.len()].fill(b' ');
                at += token.len();
                marked += 1;
            }
            None => at += 1,
        }
    }
    marked
}

/// Why an entry holding `NaN`, `Infinity` or `-Infinity` is skipped.
const NON_FINITE_REASON: &str = "holds NaN, Infinity or -Infinity (as Python's json.dump writes \
     floats that are not finite), which JSON has no number for";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lone_surrogates_are_marked_and_pairs_and_other_escapes_left_alone() {
        let mark = |text: &str| {
            let mut bytes = text.as_bytes().to_vec();
            let n = mark_lone_surrogates(&mut bytes);
            (String::from_utf8(bytes).unwrap(), n)
        };
        assert_eq!(mark(r#""\ud800""#), (r#""\ufdd0""#.into(), 1));
        assert_eq!(mark(r#""\udc00x""#), (r#""\ufdd0x""#.into(), 1));
        assert_eq!(mark(r#""\ud83d\ude00""#), (r#""\ud83d\ude00""#.into(), 0));
        assert_eq!(mark(r#""\ud83d\u0041""#), (r#""\ufdd0\u0041""#.into(), 1));
        assert_eq!(
            mark(r#""\\ud800""#),
            (r#""\\ud800""#.into(), 0),
            "an escaped backslash"
        );
        assert_eq!(mark(r#""\"\ud800\"""#), (r#""\"\ufdd0\"""#.into(), 1));
        assert_eq!(mark(r#""\u12"#), (r#""\u12"#.into(), 0), "cut short");
        assert_eq!(mark("\\"), ("\\".into(), 0));
    }

    #[test]
    fn nan_and_infinity_are_marked_outside_strings_only() {
        let mark = |text: &str| {
            let mut bytes = text.as_bytes().to_vec();
            let n = mark_non_finite(&mut bytes);
            (String::from_utf8(bytes).unwrap(), n)
        };
        assert_eq!(mark("[NaN]"), ("[\"\x7f\"]".into(), 1));
        assert_eq!(
            mark("[Infinity,-Infinity]"),
            ("[\"\x7f\"     ,\"\x7f\"      ]".into(), 2)
        );
        assert_eq!(
            mark(r#"["NaN", "-Infinity"]"#),
            (r#"["NaN", "-Infinity"]"#.into(), 0)
        );
        assert_eq!(
            mark(r#"{"a\"NaN": NaN, "b\\": Infinity}"#),
            (
                "{\"a\\\"NaN\": \"\x7f\", \"b\\\\\": \"\x7f\"     }".into(),
                2
            ),
            "escaped quotes and backslashes in strings"
        );
        assert_eq!(
            mark("[-1, Nan, Inf, -Infinit]"),
            ("[-1, Nan, Inf, -Infinit]".into(), 0)
        );
        assert_eq!(mark("Na"), ("Na".into(), 0), "cut short");
        assert_eq!(mark("\"\\"), ("\"\\".into(), 0), "cut short in an escape");
    }
}
