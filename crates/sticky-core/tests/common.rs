//! Shared builders for the integration tests.
#![allow(dead_code, unreachable_pub)]

use std::time::Duration;

use sticky_core::token::{KeyRing, TokenCodec, TokenConfig};
use sticky_core::{BackendSpec, Membership, Pool, PoolConfig};

pub const NOW: Duration = Duration::from_secs(1_700_000_000);
pub const SECRET: &str = "integration-test secret, 32 bytes";

pub fn codec() -> TokenCodec {
    TokenCodec::new(KeyRing::new([SECRET]).unwrap(), TokenConfig::new("sticky"))
}

pub fn config() -> PoolConfig {
    PoolConfig::new(codec())
}

pub fn membership(weights: &[u32]) -> Membership {
    weights
        .iter()
        .enumerate()
        .fold(Membership::new(), |m, (i, &w)| {
            m.with(BackendSpec::new(format!("b{i}")).weight(w))
        })
}

pub fn pool(weights: &[u32]) -> Pool {
    Pool::new(config(), membership(weights)).unwrap()
}

/// Deterministic pseudo-random keys (SplitMix64), so failures reproduce.
pub fn keys(count: usize, seed: u64) -> Vec<[u8; 8]> {
    let mut x = seed;
    (0..count)
        .map(|_| {
            x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = x;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            (z ^ (z >> 31)).to_le_bytes()
        })
        .collect()
}
