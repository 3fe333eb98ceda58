//! A frequency sketch: how often each key was wanted lately, approximately,
//! in 4 bits a counter (TinyLFU's count-min sketch, laid out as Caffeine
//! lays it: the four counters of a key in one 64-byte block, so an update
//! or an estimate touches one cache line).
//!
//! The shard feeds it only under its lock: one count per miss (a new
//! key written), and the reads an entry collected, folded in when a queue
//! passes over it. Every `10 × entries` counts, every counter is halved, so
//! the sketch forgets at the pace the shard turns over (`entries` being the
//! most the shard holds, from the start, so that a sketch still growing does
//! not forget faster). Its memory (8 to 16 bytes per entry) grows with the
//! shard: it doubles when the shard holds more entries than it has words,
//! carrying over what it knew of the keys the shard holds
//! ([`Sketch::grown`]).

/// Counters per word, 4 bits each.
const NIBBLES: u32 = 16;
/// Words per 64-byte block.
const BLOCK: usize = 8;
/// Halving clears the bit each counter's top would shift into.
const RESET_MASK: u64 = 0x7777_7777_7777_7777;

#[derive(Debug)]
pub(crate) struct Sketch {
    words: Vec<u64>,
    /// Counts since the last halving.
    size: u64,
    /// Counts after which every counter is halved.
    sample: u64,
}

/// The words and nibbles of one key's four counters.
struct Cells {
    words: [usize; 4],
    shifts: [u32; 4],
}

impl Sketch {
    /// An empty sketch, holding no memory.
    pub(crate) const fn new() -> Self {
        Self {
            words: Vec::new(),
            size: 0,
            sample: 0,
        }
    }

    /// A sketch of a word (16 counters) per entry for `entries` entries, in
    /// a power of two, halved every `10 × period` counts.
    fn sized_for(entries: usize, period: usize) -> Self {
        Self {
            words: vec![0; entries.max(BLOCK).next_power_of_two()],
            size: 0,
            sample: 10 * period.max(BLOCK) as u64,
        }
    }

    /// Whether a shard of `entries` entries needs a larger sketch: the
    /// sketch keeps a word (16 counters) per entry, at least.
    #[inline]
    pub(crate) fn outgrown_by(&self, entries: usize) -> bool {
        entries > self.words.len()
    }

    /// A sketch for `entries` entries, halving every `10 × period` counts,
    /// that knows what this one knew of `fingerprints`, the keys the shard
    /// holds: each is counted as often as this one estimates it. The rest is
    /// forgotten, as halving would forget it soon.
    pub(crate) fn grown(
        &self,
        entries: usize,
        period: usize,
        fingerprints: impl Iterator<Item = u32>,
    ) -> Self {
        let mut grown = Self::sized_for(entries, period);
        for fingerprint in fingerprints {
            for _ in 0..self.estimate(fingerprint) {
                grown.increment(fingerprint);
            }
        }
        grown
    }

    /// Frees its memory; it counts nothing until sized again.
    pub(crate) fn reset(&mut self) {
        *self = Self::new();
    }

    #[inline]
    fn cells(&self, fingerprint: u32) -> Cells {
        cells_in(self.words.len() / BLOCK, fingerprint)
    }

    /// Counts one more want of `fingerprint`.
    #[inline]
    pub(crate) fn increment(&mut self, fingerprint: u32) {
        if self.words.is_empty() {
            return;
        }
        let cells = self.cells(fingerprint);
        let mut added = false;
        for i in 0..4 {
            let word = &mut self.words[cells.words[i]];
            if (*word >> cells.shifts[i]) & 15 < 15 {
                *word += 1 << cells.shifts[i];
                added = true;
            }
        }
        if added {
            self.size += 1;
            if self.size >= self.sample {
                self.halve();
            }
        }
    }

    /// How often `fingerprint` was wanted lately: the least of its counters.
    #[inline]
    pub(crate) fn estimate(&self, fingerprint: u32) -> u8 {
        if self.words.is_empty() {
            return 0;
        }
        let cells = self.cells(fingerprint);
        (0..4)
            .map(|i| ((self.words[cells.words[i]] >> cells.shifts[i]) & 15) as u8)
            .min()
            .unwrap_or(0)
    }

    fn halve(&mut self) {
        for word in &mut self.words {
            *word = (*word >> 1) & RESET_MASK;
        }
        self.size /= 2;
    }

    /// Checks the count against its period; for `validate`.
    pub(crate) fn check(&self) -> Result<(), String> {
        let sized = !self.words.is_empty();
        if sized && (self.size >= self.sample || !self.words.len().is_power_of_two()) {
            return Err(format!(
                "sketch of {} words counts {} of {}",
                self.words.len(),
                self.size,
                self.sample
            ));
        }
        Ok(())
    }
}

/// The counters of `fingerprint` in a sketch of `blocks` blocks (a power
/// of two): one block, chosen by the hash's bits 24 and up (40 bits, so
/// every block of the largest sketch is reachable), and in it a word of
/// each pair and a nibble of each word, chosen by bits 0..4 and 8..24.
#[inline]
fn cells_in(blocks: usize, fingerprint: u32) -> Cells {
    let h = u64::from(fingerprint);
    let mut y = (h ^ (h << 32)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    y ^= y >> 29;
    let block = ((y >> 24) as usize & (blocks - 1)) * BLOCK;
    let mut cells = Cells {
        words: [0; 4],
        shifts: [0; 4],
    };
    for i in 0..4 {
        cells.words[i] = block + 2 * i + ((y >> i) & 1) as usize;
        cells.shifts[i] = ((y >> (8 + 4 * i)) as u32 % NIBBLES) * 4;
    }
    cells
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_up_to_fifteen_and_costs_nothing_unsized() {
        let mut sketch = Sketch::new();
        sketch.increment(7);
        assert_eq!(sketch.estimate(7), 0, "unsized: counts nothing");
        assert!(sketch.outgrown_by(1));
        let mut sketch = sketch.grown(1000, 1000, std::iter::empty());
        assert!(!sketch.outgrown_by(1000) && sketch.outgrown_by(1025));
        for n in 1..=20u8 {
            sketch.increment(7);
            assert_eq!(sketch.estimate(7), n.min(15));
        }
        sketch.check().unwrap();
    }

    #[test]
    fn halves_every_ten_words_worth_of_counts() {
        let mut sketch = Sketch::sized_for(64, 64);
        for _ in 0..8 {
            sketch.increment(1);
        }
        assert_eq!(sketch.estimate(1), 8);
        // 640 counts in all reach the period: every counter is halved.
        for fp in 1000..1632 {
            sketch.increment(fp);
        }
        assert_eq!(sketch.estimate(1), 4, "halved once");
        sketch.check().unwrap();
    }

    #[test]
    fn growing_keeps_what_it_knew_of_the_keys_held() {
        let mut sketch = Sketch::sized_for(64, 64);
        for _ in 0..5 {
            sketch.increment(42);
        }
        sketch.increment(7);
        let grown = sketch.grown(128, 128, [42u32].into_iter());
        assert_eq!(grown.estimate(42), 5);
        assert_eq!(grown.estimate(7), 0, "not held: forgotten");
        assert!(!grown.outgrown_by(128));
    }

    #[test]
    fn keys_seldom_collide() {
        let mut sketch = Sketch::sized_for(4096, 4096);
        for fp in 0..4096u32 {
            sketch.increment(fp.wrapping_mul(0x85eb_ca6b));
        }
        let overcounted = (0..4096u32)
            .filter(|fp| sketch.estimate(fp.wrapping_mul(0x85eb_ca6b)) > 1)
            .count();
        assert!(overcounted < 100, "{overcounted} of 4096 over-counted");
    }

    /// (Review.) The block came from the hash's top 24 bits, so a sketch of
    /// more than 2^24 blocks (a shard of more than 2^27 entries) counted in
    /// its first 2^24 only.
    #[test]
    fn every_block_of_the_largest_sketch_is_reachable() {
        let blocks = 1 << 27;
        let highest = (0..1_000_000u32)
            .map(|fp| cells_in(blocks, fp.wrapping_mul(0x85eb_ca6b)).words[0] / BLOCK)
            .max()
            .unwrap();
        assert!(
            highest >= blocks / 2 + blocks / 4,
            "highest block used: {highest} of {blocks}"
        );
    }
}
