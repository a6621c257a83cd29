//! Cost of one `Snapshot::decide` call, at 3, 100 and 10,000 backends
//! (named `b0`, `b1`, …, weight 1, default `PoolConfig`).
//!
//! - `new_session`: no keys, no token issued: the weighted pick alone.
//! - `keyed`: a hash key (cycling through 65,536 distinct 16-byte keys, so table reads are
//!   spread as they are with real traffic):
//!   stable hash plus consistent-hash lookup.
//! - `returning`: a valid token of a returning session (cycling through
//!   1024 tokens): token verification (HMAC-SHA256) plus decide; no refresh
//!   is due, so the outcome is `Hit` and no token is sealed.
//! - `issue`: a new session with a token issued: the pick plus sealing the
//!   token (HMAC-SHA256, base64, one `String`).
//!
//! Every call uses the same fixed `now`. Run with:
//!
//! ```text
//! cargo bench -p sticky-core --bench decide
//! ```

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use sticky_core::token::{KeyRing, TokenCodec, TokenConfig};
use sticky_core::{BackendSpec, Keys, Membership, Outcome, Pool, PoolConfig, Snapshot};

/// Backend counts each benchmark runs at.
const SIZES: [usize; 3] = [3, 100, 10_000];
/// Distinct hash keys cycled through by `keyed`.
const HASH_KEYS: usize = 1 << 16;
/// Distinct tokens cycled through by `returning`.
const TOKENS: usize = 1024;

fn now() -> Duration {
    Duration::from_secs(1_700_000_000)
}

/// A snapshot of a pool of `n` backends of weight 1; tokens idle out
/// after 30 minutes (so a token issued at `now()` needs no refresh at
/// `now()`).
fn snapshot(n: usize) -> Arc<Snapshot> {
    let keys = KeyRing::new(["a 32-byte secret shared by replicas"]).expect("valid key ring");
    let tokens = TokenCodec::new(
        keys,
        TokenConfig::new("sticky").idle_timeout(Duration::from_secs(30 * 60)),
    );
    let membership = (0..n).fold(Membership::new(), |m, i| {
        m.with(BackendSpec::new(format!("b{i}")))
    });
    Pool::new(PoolConfig::new(tokens), membership)
        .expect("valid pool")
        .load()
}

/// `count` distinct 16-byte keys (SplitMix64 output, deterministic).
fn hash_keys(count: usize) -> Vec<[u8; 16]> {
    let mut state = 0x9e37_79b9_7f4a_7c15_u64;
    let mut next = || {
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    };
    (0..count)
        .map(|_| {
            let mut key = [0u8; 16];
            key[..8].copy_from_slice(&next().to_le_bytes());
            key[8..].copy_from_slice(&next().to_le_bytes());
            key
        })
        .collect()
}

fn new_session(c: &mut Criterion) {
    let mut group = c.benchmark_group("new_session");
    for n in SIZES {
        let snapshot = snapshot(n);
        let keys = Keys::new();
        group.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, _| {
            b.iter(|| snapshot.decide(black_box(&keys), black_box(now())));
        });
    }
    group.finish();
}

fn keyed(c: &mut Criterion) {
    let mut group = c.benchmark_group("keyed");
    let hash_keys = hash_keys(HASH_KEYS);
    for n in SIZES {
        let snapshot = snapshot(n);
        let mut i = 0;
        group.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, _| {
            b.iter(|| {
                let key = &hash_keys[i % HASH_KEYS];
                i = i.wrapping_add(1);
                snapshot.decide(black_box(&Keys::new().hash(key)), black_box(now()))
            });
        });
    }
    group.finish();
}

fn returning(c: &mut Criterion) {
    let mut group = c.benchmark_group("returning");
    for n in SIZES {
        let snapshot = snapshot(n);
        let tokens: Vec<String> = (0..TOKENS)
            .map(|_| {
                let decision = snapshot.decide(&Keys::new().issue_token(), now());
                decision
                    .token
                    .expect("a new session with issue_token gets a token")
            })
            .collect();
        let check = snapshot.decide(&Keys::new().token(&tokens[0]), now());
        assert_eq!(
            check.outcome,
            Outcome::Hit,
            "a fresh token must be a plain hit"
        );
        assert!(
            check.token.is_none(),
            "a plain hit must not re-issue a token"
        );
        let mut i = 0;
        group.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, _| {
            b.iter(|| {
                let token = tokens[i % TOKENS].as_str();
                i = i.wrapping_add(1);
                snapshot.decide(black_box(&Keys::new().token(token)), black_box(now()))
            });
        });
    }
    group.finish();
}

fn issue(c: &mut Criterion) {
    let mut group = c.benchmark_group("issue");
    for n in SIZES {
        let snapshot = snapshot(n);
        let keys = Keys::new().issue_token();
        group.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, _| {
            b.iter(|| snapshot.decide(black_box(&keys), black_box(now())));
        });
    }
    group.finish();
}

fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(50)
}

criterion_group! {
    name = benches;
    config = config();
    targets = new_session, keyed, returning, issue
}
criterion_main!(benches);
