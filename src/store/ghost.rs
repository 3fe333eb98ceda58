//! The ghost: fingerprints of keys recently evicted from a shard's small
//! queue, so that a key coming back soon after is known to be worth more
//! than a newcomer.
//!
//! Four bytes per remembered key: a set-associative array of 32-bit
//! fingerprints, eight to a bucket (32 bytes), each bucket a FIFO (the newest in front,
//! the oldest pushed out). Its memory is taken when the shard first evicts,
//! not when the cache is built. A fingerprint of another key can match (one
//! chance in 2^32 per remembered key of the bucket), which at worst admits
//! that key as if it had been seen: a policy question, not a correctness one.

const WAYS: usize = 8;

/// A bucket slot holding no fingerprint.
const EMPTY: u32 = 0;

#[derive(Debug)]
pub(crate) struct Ghost {
    buckets: Vec<[u32; WAYS]>,
    /// How many fingerprints it is sized for; 0 remembers nothing.
    capacity: usize,
    len: usize,
}

impl Ghost {
    pub(crate) const fn new(capacity: usize) -> Self {
        Self {
            buckets: Vec::new(),
            capacity,
            len: 0,
        }
    }

    /// The slot value for `fingerprint`: never [`EMPTY`].
    #[inline]
    fn tag(fingerprint: u32) -> u32 {
        fingerprint.max(1)
    }

    #[inline]
    fn bucket(&self, fingerprint: u32) -> usize {
        // Range reduction by multiplication, over bits remixed from the
        // fingerprint, so any bucket count works and none is favoured.
        let mixed = fingerprint.wrapping_mul(0x9e37_79b9);
        ((u64::from(mixed) * self.buckets.len() as u64) >> 32) as usize
    }

    /// Remembers `fingerprint` (unless it is remembered already), forgetting
    /// the oldest of its bucket if full.
    #[inline]
    pub(crate) fn insert(&mut self, fingerprint: u32) {
        if self.capacity == 0 {
            return;
        }
        if self.buckets.is_empty() {
            self.buckets = vec![[EMPTY; WAYS]; self.capacity.div_ceil(WAYS)];
        }
        let i = self.bucket(fingerprint);
        let bucket = &mut self.buckets[i];
        if bucket.contains(&Self::tag(fingerprint)) {
            return;
        }
        if bucket[WAYS - 1] == EMPTY {
            self.len += 1;
        }
        bucket.copy_within(0..WAYS - 1, 1);
        bucket[0] = Self::tag(fingerprint);
    }

    /// Forgets `fingerprint`, returning whether it was remembered.
    #[inline]
    pub(crate) fn take(&mut self, fingerprint: u32) -> bool {
        if self.buckets.is_empty() {
            return false;
        }
        let i = self.bucket(fingerprint);
        let bucket = &mut self.buckets[i];
        let tag = Self::tag(fingerprint);
        let Some(at) = bucket.iter().position(|&t| t == tag) else {
            return false;
        };
        bucket.copy_within(at + 1.., at);
        bucket[WAYS - 1] = EMPTY;
        self.len -= 1;
        true
    }

    /// Forgets everything and frees the memory; it comes back when needed,
    /// sized for `capacity` fingerprints.
    pub(crate) fn reset(&mut self, capacity: usize) {
        *self = Self::new(capacity);
    }

    /// Checks the counts against the slots; for `validate`.
    pub(crate) fn check(&self) -> Result<(), String> {
        let held: usize = self
            .buckets
            .iter()
            .map(|b| b.iter().filter(|&&t| t != EMPTY).count())
            .sum();
        if held != self.len {
            return Err(format!(
                "ghost holds {held} fingerprints, counts {}",
                self.len
            ));
        }
        let packed = self.buckets.iter().all(|b| {
            let used = b.iter().take_while(|&&t| t != EMPTY).count();
            b[used..].iter().all(|&t| t == EMPTY)
        });
        if !packed {
            return Err("a ghost bucket has a hole".into());
        }
        if self.len > self.buckets.len() * WAYS {
            return Err("ghost over its slots".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remembers_until_taken_or_pushed_out() {
        let mut ghost = Ghost::new(WAYS);
        assert!(!ghost.take(7), "empty");
        assert!(ghost.buckets.is_empty(), "no memory until the first insert");
        ghost.insert(7);
        assert!(!ghost.buckets.is_empty());
        assert!(ghost.take(7));
        assert!(!ghost.take(7), "taken once");
        // One bucket: the insert past its ways pushes the first out.
        for fp in 1..=WAYS as u32 + 1 {
            ghost.insert(fp);
        }
        ghost.check().unwrap();
        assert_eq!(ghost.len, WAYS);
        assert!(!ghost.take(1));
        assert!((2..=WAYS as u32 + 1).all(|fp| ghost.take(fp)));
        assert_eq!(ghost.len, 0);
        ghost.check().unwrap();
    }

    #[test]
    fn zero_is_a_fingerprint_like_any_other_and_capacity_zero_keeps_nothing() {
        let mut ghost = Ghost::new(8);
        ghost.insert(0);
        assert!(ghost.take(0));
        let mut none = Ghost::new(0);
        none.insert(3);
        assert!(!none.take(3));
        assert!(none.buckets.is_empty());
    }
}
