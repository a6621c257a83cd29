//! Golden values: a release must not silently remap users or invalidate
//! the cookies they hold. If one of these fails, the change breaks every
//! deployed fleet's sessions; it needs a new token version or hash seed, not
//! new golden values.

mod common;

use common::NOW;
use sticky_core::hash::stable_hash;
use sticky_core::token::{KeyRing, TokenCodec, TokenConfig};
use sticky_core::{BackendSpec, Keys, Membership, Pool};

fn fleet(order: &[usize]) -> Pool {
    let specs = [
        BackendSpec::new("b1").weight(1),
        BackendSpec::new("b2").weight(2),
        BackendSpec::new("10.0.0.7:8080").weight(1),
        BackendSpec::new("b4").weight(3),
        BackendSpec::new("b5").weight(1),
    ];
    let membership = order
        .iter()
        .fold(Membership::new(), |m, &i| m.with(specs[i].clone()));
    Pool::new(common::config(), membership).unwrap()
}

fn owner(pool: &Pool, key: &str) -> String {
    let s = pool.load();
    let d = s.decide(&Keys::new().hash(key.as_bytes()), NOW);
    s.member(d.backend.unwrap()).id().to_string()
}

#[test]
fn stable_hash_is_xxh3_64() {
    // The same values as the reference xxHash library's XXH3_64bits_withSeed.
    assert_eq!(stable_hash(0, b""), 0x2D06_8005_38D3_94C2);
    assert_eq!(stable_hash(0, b"user-42"), GOLDEN_HASH_USER_42);
    assert_eq!(stable_hash(7, b"user-42"), GOLDEN_HASH_USER_42_SEED_7);
}

const GOLDEN_HASH_USER_42: u64 = 5836184775705692621;
const GOLDEN_HASH_USER_42_SEED_7: u64 = 2320060606180411264;

/// Owners in a five-backend fleet with weights 1, 2, 1, 3, 1: the ring's
/// 4,096 points per unit of weight, at the top half of each point's hash.
const GOLDEN_KEYS: [(&str, &str); 24] = [
    ("user-0", "10.0.0.7:8080"),
    ("user-1", "b2"),
    ("user-2", "b2"),
    ("user-3", "b2"),
    ("user-4", "b1"),
    ("user-5", "b2"),
    ("user-6", "b1"),
    ("user-7", "b4"),
    ("user-8", "b4"),
    ("user-9", "b4"),
    ("user-10", "b2"),
    ("user-11", "b2"),
    ("alice@example.com", "b5"),
    ("bob@example.com", "b4"),
    ("192.0.2.1", "b4"),
    ("192.0.2.2", "b4"),
    ("2001:db8::1", "b5"),
    ("session-7f3a9c", "b2"),
    ("session-000001", "b2"),
    ("", "b2"),
    ("ünïcödé", "b2"),
    ("tenant/42/cart", "b4"),
    ("x", "b4"),
    (
        "a-much-longer-key-that-spans-more-than-one-block-of-xxh3-input-0123456789",
        "b5",
    ),
];

#[test]
fn keys_map_to_pinned_backends() {
    let pool = fleet(&[0, 1, 2, 3, 4]);
    let got: Vec<(&str, String)> = GOLDEN_KEYS
        .iter()
        .map(|(k, _)| (*k, owner(&pool, k)))
        .collect();
    let want: Vec<(&str, String)> = GOLDEN_KEYS
        .iter()
        .map(|(k, b)| (*k, b.to_string()))
        .collect();
    assert_eq!(got, want);
}

#[test]
fn list_order_does_not_matter() {
    let a = fleet(&[0, 1, 2, 3, 4]);
    let b = fleet(&[4, 2, 0, 3, 1]);
    for (key, _) in GOLDEN_KEYS {
        assert_eq!(owner(&a, key), owner(&b, key), "{key}");
    }
}

#[test]
fn token_format_is_pinned() {
    let keys = KeyRing::new(["golden secret, thirty-two bytes!"]).unwrap();
    let codec = TokenCodec::new(keys.clone(), TokenConfig::new("sticky"));
    let tag = keys.backend_tag(0, "b1");
    let group = keys.group_tag(0, "");
    let text = codec.seal(tag, group, NOW, NOW);
    assert_eq!(text, GOLDEN_TOKEN);
    // And a token minted by an earlier release still opens.
    let opened = codec.open(GOLDEN_TOKEN, NOW).unwrap();
    assert_eq!(opened.backend_tag, tag);
    assert_eq!(opened.group_tag, group);
}

const GOLDEN_TOKEN: &str = "ARiBE0FQsemUJlQ7jvtlU_EAZVPxAMmQINGr94uxIbAbBVKfmyA";

#[test]
fn replicas_with_the_same_config_issue_the_same_token() {
    let a = fleet(&[0, 1, 2, 3, 4]);
    let b = fleet(&[3, 4, 0, 1, 2]);
    let keys = Keys::new().issue_token().hash(b"user-7");
    let (da, db) = (a.load().decide(&keys, NOW), b.load().decide(&keys, NOW));
    assert_eq!(da.token, db.token);
}
