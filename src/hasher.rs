//! The default hasher.

/// The default hasher of a [`Cache`](crate::Cache): foldhash's, seeded at
/// random per process, so keys chosen by an attacker cannot be aimed at one
/// shard. (std's SipHash is two to three times slower on these paths.) Not
/// std's `DefaultHasher`, which is a `Hasher`: this builds them.
pub type DefaultBuildHasher = foldhash::fast::RandomState;
