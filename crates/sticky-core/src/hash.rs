//! The stable hash behind every keyed decision.
//!
//! Keyed placement must give the same answer on every replica and in every
//! release, so it never uses `std`'s randomly seeded hashers. It uses
//! **XXH3-64 with a 64-bit seed** (`XXH3_64bits_withSeed`, as published in
//! the xxHash specification), which is platform- and endian-independent.
//! Changing this function is a breaking change: golden tests pin its output.
//!
//! The seed is part of the configuration ([`PoolConfig::hash_seed`]). The
//! default is `0`; a fleet that wants clients to be unable to predict which
//! keys share a backend sets the same secret seed on every replica.
//!
//! [`PoolConfig::hash_seed`]: crate::PoolConfig::hash_seed
//!
//! # Example
//!
//! ```
//! use sticky_core::hash::stable_hash;
//!
//! // The same input and seed give the same value everywhere, forever.
//! assert_eq!(stable_hash(0, b"user-42"), stable_hash(0, b"user-42"));
//! assert_ne!(stable_hash(0, b"user-42"), stable_hash(1, b"user-42"));
//! ```

/// Hashes `bytes` with XXH3-64 under `seed`.
#[inline]
pub fn stable_hash(seed: u64, bytes: &[u8]) -> u64 {
    xxhash_rust::xxh3::xxh3_64_with_seed(bytes, seed)
}

/// Hashes a name and an index together (ring points, tie-breaks).
pub(crate) fn stable_hash_indexed(seed: u64, name: &str, index: u32) -> u64 {
    let mut buf = Vec::with_capacity(name.len() + 5);
    buf.extend_from_slice(name.as_bytes());
    buf.push(0);
    buf.extend_from_slice(&index.to_le_bytes());
    stable_hash(seed, &buf)
}

/// SplitMix64's finalizer: spreads the bits of a counter, for choices that
/// should look random but cost no state.
pub(crate) fn mix64(mut x: u64) -> u64 {
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}
