//! Bounded excerpts of user data, for log lines and reports.
//!
//! Keys, values and whole input files can be chosen by whoever feeds the
//! cache (a snapshot file, a fleet message, a fetcher's error). A log line or
//! a report that quotes them whole can be made as large as the input, or
//! larger; [`Excerpt`] writes at most [`EXCERPT_BYTES`] of what it wraps and
//! then says how much it left out.

use std::fmt::{self, Display, Write};

/// The most bytes of user data one excerpt quotes.
pub(crate) const EXCERPT_BYTES: usize = 256;

/// Displays at most [`EXCERPT_BYTES`] of `T`'s text (cut at a character
/// boundary), followed by `… (N more bytes)` when anything was cut.
pub(crate) struct Excerpt<T>(pub(crate) T);

impl<T: Display> Display for Excerpt<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut bounded = Bounded {
            out: f,
            left: EXCERPT_BYTES,
            cut: 0,
        };
        write!(bounded, "{}", self.0)?;
        let cut = bounded.cut;
        if cut > 0 {
            write!(f, "… ({cut} more bytes)")?;
        }
        Ok(())
    }
}

/// `value`'s text, bounded as [`Excerpt`] bounds it.
pub(crate) fn excerpt(value: impl Display) -> String {
    Excerpt(value).to_string()
}

/// A writer that passes on the first `left` bytes and counts the rest.
struct Bounded<'a, 'f> {
    out: &'a mut fmt::Formatter<'f>,
    left: usize,
    cut: usize,
}

impl Write for Bounded<'_, '_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let mut keep = s.len().min(self.left);
        while !s.is_char_boundary(keep) {
            keep -= 1;
        }
        self.out.write_str(&s[..keep])?;
        // Once one character did not fit, nothing more is written, so the
        // excerpt is a prefix of the text.
        self.left = if keep < s.len() { 0 } else { self.left - keep };
        self.cut += s.len() - keep;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_text_is_quoted_whole() {
        assert_eq!(excerpt("owner/prompt:latest"), "owner/prompt:latest");
    }

    #[test]
    fn long_text_is_cut_and_says_how_much() {
        let long = "x".repeat(10_000);
        let quoted = excerpt(&long);
        assert_eq!(
            quoted,
            format!(
                "{}… ({} more bytes)",
                "x".repeat(EXCERPT_BYTES),
                10_000 - EXCERPT_BYTES
            )
        );
    }

    #[test]
    fn a_cut_never_splits_a_character_and_keeps_a_prefix() {
        // 255 ASCII bytes, then a 4-byte character that does not fit, then
        // ASCII that would.
        let text = format!("{}😀abc", "a".repeat(EXCERPT_BYTES - 1));
        let quoted = excerpt(&text);
        assert_eq!(
            quoted,
            format!("{}… (7 more bytes)", "a".repeat(EXCERPT_BYTES - 1))
        );
    }

    #[test]
    fn pieces_written_separately_are_bounded_together() {
        struct Pieces;
        impl Display for Pieces {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                for _ in 0..100 {
                    f.write_str("0123456789")?;
                }
                Ok(())
            }
        }
        let quoted = excerpt(Pieces);
        assert!(quoted.starts_with(&"0123456789".repeat(25)));
        assert!(quoted.ends_with("… (744 more bytes)"), "{quoted}");
    }
}
