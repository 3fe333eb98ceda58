//! A frequency sketch: how often each key was wanted lately, approximately,
//! in 4 bits a counter (TinyLFU's count-min sketch, laid out as Caffeine
//! lays it: the four counters of a key in one 64-byte block, so an update
//! or an estimate touches one cache line).
//!
//! The shard feeds it only under its write lock: one count per miss (a new
//! key written), and the reads an entry collected, folded in when a queue
//! passes over it. Every `10 × entries` counts, every counter is halved, so
//! the sketch forgets at the pace the shard turns over. Its memory (8 to 16
//! bytes per entry) is taken when the shard first evicts.

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

    /// Whether it was sized (and so counts).
    pub(crate) fn is_sized(&self) -> bool {
        !self.words.is_empty()
    }

    /// Sizes it for a shard of `entries` entries, forgetting everything.
    pub(crate) fn size_for(&mut self, entries: usize) {
        let words = entries.max(BLOCK).next_power_of_two();
        self.words = vec![0; words];
        self.size = 0;
        self.sample = 10 * entries.max(1) as u64;
    }

    /// Frees its memory; it counts nothing until sized again.
    pub(crate) fn reset(&mut self) {
        *self = Self::new();
    }

    #[inline]
    fn cells(&self, fingerprint: u32) -> Cells {
        let h = u64::from(fingerprint);
        let mut y = (h ^ (h << 32)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        y ^= y >> 29;
        let blocks = self.words.len() / BLOCK;
        let block = ((y >> 40) as usize & (blocks - 1)) * BLOCK;
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
        if self.is_sized() && (self.size >= self.sample || !self.words.len().is_power_of_two()) {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_up_to_fifteen_and_costs_nothing_unsized() {
        let mut sketch = Sketch::new();
        sketch.increment(7);
        assert_eq!(sketch.estimate(7), 0, "unsized: counts nothing");
        sketch.size_for(1000);
        for n in 1..=20u8 {
            sketch.increment(7);
            assert_eq!(sketch.estimate(7), n.min(15));
        }
        sketch.check().unwrap();
    }

    #[test]
    fn halves_every_ten_entries_worth_of_counts() {
        let mut sketch = Sketch::new();
        sketch.size_for(10);
        for _ in 0..8 {
            sketch.increment(1);
        }
        assert_eq!(sketch.estimate(1), 8);
        // 100 counts in all reach the period: every counter is halved.
        for fp in 1000..1092 {
            sketch.increment(fp);
        }
        assert_eq!(sketch.estimate(1), 4, "halved once");
        sketch.check().unwrap();
    }

    #[test]
    fn keys_seldom_collide() {
        let mut sketch = Sketch::new();
        sketch.size_for(4096);
        for fp in 0..4096u32 {
            sketch.increment(fp.wrapping_mul(0x85eb_ca6b));
        }
        let overcounted = (0..4096u32)
            .filter(|fp| sketch.estimate(fp.wrapping_mul(0x85eb_ca6b)) > 1)
            .count();
        assert!(overcounted < 100, "{overcounted} of 4096 over-counted");
    }
}
