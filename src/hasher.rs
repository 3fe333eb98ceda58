//! The default hasher.

/// The default hasher: foldhash, seeded at random per process, so keys
/// chosen by an attacker cannot be aimed at one shard. (std's SipHash is two
/// to three times slower on these paths.)
pub type DefaultHasher = foldhash::fast::RandomState;
