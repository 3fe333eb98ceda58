//! The map's hasher: the user's, with a hash of zero moved elsewhere.
//!
//! The eviction ring names each slot's owner by its hash and marks an empty
//! slot with zero, so no key may hash to zero. A seeded hasher returns zero
//! once in 2^64 keys, but an identity hasher (common for integer keys) does
//! for the key 0, and a key that shared the empty mark could be taken for no
//! one and slip out of the ring. Zero moves to [`ZERO_MOVED_TO`], a value no
//! small integer hashes to under an identity hasher (moving it to 1 would
//! make the keys 0 and 1 share a hash). It costs a conditional move per hash
//! and makes one hash value twice as likely, which no lookup notices.

use std::hash::{BuildHasher, Hasher};

/// Where a hash of zero goes: an odd constant with bits spread over the word.
const ZERO_MOVED_TO: u64 = 0x9e37_79b9_7f4a_7c15;

/// Builds [`NonZeroHasher`]s around the user's hasher.
#[derive(Clone, Debug, Default)]
pub(crate) struct NonZeroHashes<S>(pub(crate) S);

impl<S: BuildHasher> BuildHasher for NonZeroHashes<S> {
    type Hasher = NonZeroHasher<S::Hasher>;

    #[inline]
    fn build_hasher(&self) -> Self::Hasher {
        NonZeroHasher(self.0.build_hasher())
    }
}

/// Forwards every write, so a hasher's fast paths for integers stay in use.
pub(crate) struct NonZeroHasher<H>(H);

macro_rules! forward_writes {
    ($($method:ident: $ty:ty),* $(,)?) => {
        $(
            #[inline]
            fn $method(&mut self, value: $ty) {
                self.0.$method(value)
            }
        )*
    };
}

impl<H: Hasher> Hasher for NonZeroHasher<H> {
    #[inline]
    fn finish(&self) -> u64 {
        match self.0.finish() {
            0 => ZERO_MOVED_TO,
            hash => hash,
        }
    }

    forward_writes! {
        write: &[u8],
        write_u8: u8, write_u16: u16, write_u32: u32, write_u64: u64,
        write_u128: u128, write_usize: usize,
        write_i8: i8, write_i16: i16, write_i32: i32, write_i64: i64,
        write_i128: i128, write_isize: isize,
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::hash::BuildHasherDefault;

    /// Hashes an integer to itself, as services with integer keys often do.
    #[derive(Default)]
    pub(crate) struct Identity(u64);

    impl Hasher for Identity {
        fn finish(&self) -> u64 {
            self.0
        }
        fn write(&mut self, bytes: &[u8]) {
            for &byte in bytes {
                self.0 = self.0 << 8 | u64::from(byte);
            }
        }
        fn write_u64(&mut self, value: u64) {
            self.0 = value;
        }
    }

    #[test]
    fn zero_moves_away_and_the_rest_pass_through() {
        let hashes = NonZeroHashes(BuildHasherDefault::<Identity>::default());
        assert_eq!(hashes.hash_one(0u64), ZERO_MOVED_TO);
        assert_eq!(hashes.hash_one(1u64), 1);
        assert_eq!(hashes.hash_one(7u64), 7, "write_u64 is forwarded");
        assert_eq!(hashes.hash_one(u64::MAX), u64::MAX);
        assert_eq!(
            hashes.hash_one([1u8, 2]),
            BuildHasherDefault::<Identity>::default().hash_one([1u8, 2]),
            "the same bytes are written"
        );
    }
}
