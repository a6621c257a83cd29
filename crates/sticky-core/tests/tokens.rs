//! Tokens: round trips, tampering, lifetimes and key rotation.

mod common;

use std::time::Duration;

use common::NOW;
use proptest::prelude::*;
use sticky_core::token::{KeyRing, KeyRingError, TokenCodec, TokenConfig, TokenError, TOKEN_LEN};

const OLD: &str = "the old secret, still listed....";
const NEW: &str = "the new secret, signs from today";

fn codec_with(secrets: &[&str], config: TokenConfig) -> TokenCodec {
    TokenCodec::new(KeyRing::new(secrets).unwrap(), config)
}

fn codec() -> TokenCodec {
    codec_with(&[NEW], TokenConfig::new("sticky"))
}

const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

proptest! {
    #[test]
    fn round_trip(tag in any::<u64>(), group in any::<u32>(), age in 0u64..1_000_000) {
        let c = codec();
        let issued = NOW - Duration::from_secs(age);
        let text = c.seal(tag, group, issued, NOW);
        prop_assert_eq!(text.len(), TOKEN_LEN);
        prop_assert!(text.bytes().all(|b| ALPHABET.contains(&b)), "cookie-safe: {}", text);
        let t = c.open(&text, NOW).unwrap();
        prop_assert_eq!((t.backend_tag, t.group_tag), (tag, group));
        prop_assert_eq!(u64::from(t.issued), issued.as_secs());
        prop_assert_eq!(u64::from(t.last_seen), NOW.as_secs());
    }

    /// Changing any one character to any other character of the alphabet
    /// is detected.
    #[test]
    fn every_single_character_change_is_rejected(tag in any::<u64>(), at in 0usize..TOKEN_LEN, to in 0usize..64) {
        let c = codec();
        let text = c.seal(tag, 0, NOW, NOW);
        let mut bytes = text.clone().into_bytes();
        prop_assume!(bytes[at] != ALPHABET[to]);
        bytes[at] = ALPHABET[to];
        let forged = String::from_utf8(bytes).unwrap();
        let err = c.open(&forged, NOW).unwrap_err();
        prop_assert!(matches!(
            err,
            TokenError::BadSignature | TokenError::UnknownKey | TokenError::UnknownVersion | TokenError::Malformed
        ), "{:?}", err);
    }

    /// Arbitrary text never panics and never opens.
    #[test]
    fn arbitrary_text_is_refused(text in ".{0,80}") {
        prop_assert!(codec().open(&text, NOW).is_err());
    }

    /// Arbitrary 51-character base64 never opens.
    #[test]
    fn arbitrary_well_formed_text_is_refused(chars in prop::collection::vec(0usize..64, TOKEN_LEN)) {
        let text: String = chars.iter().map(|&i| ALPHABET[i] as char).collect();
        prop_assert!(codec().open(&text, NOW).is_err());
    }
}

#[test]
fn truncated_and_extended_tokens_are_malformed() {
    let c = codec();
    let text = c.seal(1, 2, NOW, NOW);
    for len in 0..text.len() {
        assert_eq!(
            c.open(&text[..len], NOW),
            Err(TokenError::Malformed),
            "{len}"
        );
    }
    assert_eq!(c.open(&format!("{text}A"), NOW), Err(TokenError::Malformed));
    assert_eq!(c.open(&format!("{text}="), NOW), Err(TokenError::Malformed));
}

#[test]
fn non_ascii_is_malformed() {
    let c = codec();
    let mut text = c.seal(1, 2, NOW, NOW);
    text.replace_range(0..2, "é");
    assert_eq!(text.len(), TOKEN_LEN);
    assert_eq!(c.open(&text, NOW), Err(TokenError::Malformed));
}

#[test]
fn a_token_is_bound_to_its_cookie_name() {
    let a = codec_with(&[NEW], TokenConfig::new("sticky"));
    let b = codec_with(&[NEW], TokenConfig::new("other"));
    let text = a.seal(1, 2, NOW, NOW);
    assert_eq!(b.open(&text, NOW), Err(TokenError::BadSignature));
}

#[test]
fn tags_do_not_reveal_names() {
    let keys = KeyRing::new([NEW]).unwrap();
    let other = KeyRing::new([OLD]).unwrap();
    let text = TokenCodec::new(keys.clone(), TokenConfig::new("s")).seal(
        keys.backend_tag(0, "10.0.0.7:8080"),
        keys.group_tag(0, ""),
        NOW,
        NOW,
    );
    assert!(!text.contains("10.0.0.7"));
    // Tags depend on the key: without it, a name's tag can't be computed.
    assert_ne!(keys.backend_tag(0, "b1"), other.backend_tag(0, "b1"));
}

#[test]
fn lifetimes_are_enforced_with_skew() {
    let config = TokenConfig::new("sticky")
        .max_lifetime(Duration::from_secs(3600))
        .idle_timeout(Duration::from_secs(600))
        .clock_skew(Duration::from_secs(5));
    let c = codec_with(&[NEW], config);
    let s = Duration::from_secs;

    let fresh = c.seal(1, 1, NOW, NOW);
    assert!(
        c.open(&fresh, NOW + s(605)).is_ok(),
        "inside idle timeout + skew"
    );
    assert_eq!(c.open(&fresh, NOW + s(606)), Err(TokenError::Idle));

    let old = c.seal(1, 1, NOW - s(3600), NOW);
    assert!(c.open(&old, NOW + s(5)).is_ok());
    assert_eq!(c.open(&old, NOW + s(6)), Err(TokenError::Expired));

    assert!(c.open(&fresh, NOW - s(5)).is_ok(), "a replica 5 s behind");
    assert_eq!(c.open(&fresh, NOW - s(6)), Err(TokenError::FutureDated));
}

#[test]
fn refresh_is_due_after_a_fraction_of_the_idle_timeout() {
    let c = codec_with(
        &[NEW],
        TokenConfig::new("sticky")
            .idle_timeout(Duration::from_secs(400))
            .refresh_fraction(0.25),
    );
    let text = c.seal(1, 1, NOW, NOW);
    assert!(
        !c.open(&text, NOW + Duration::from_secs(99))
            .unwrap()
            .refresh_due
    );
    assert!(
        c.open(&text, NOW + Duration::from_secs(100))
            .unwrap()
            .refresh_due
    );
}

/// The last-seen time moves only when a token is re-issued, so a refresh
/// fraction near 1 would let an active session run out; it is held to 0.5.
#[test]
fn a_session_active_within_half_its_idle_timeout_is_kept() {
    for fraction in [0.25, 0.5, 0.9, 1.0] {
        let config = TokenConfig::new("sticky")
            .idle_timeout(Duration::from_secs(100))
            .refresh_fraction(fraction);
        for c in [
            codec_with(&[NEW], config.clone()),
            // Set directly, not through the builder.
            codec_with(
                &[NEW],
                TokenConfig {
                    refresh_fraction: fraction,
                    ..config
                },
            ),
        ] {
            let mut token = c.seal(1, 1, NOW, NOW);
            let mut cookie_expires = NOW + c.max_age(NOW, NOW).unwrap();
            for request in 1..=10 {
                let now = NOW + Duration::from_secs(50 * request);
                assert!(
                    now < cookie_expires,
                    "fraction {fraction}: the browser dropped the cookie before request {request}"
                );
                let opened = c
                    .open(&token, now)
                    .unwrap_or_else(|e| panic!("fraction {fraction}, request {request}: {e:?}"));
                if opened.refresh_due {
                    token = c.seal(1, 1, NOW, now);
                    cookie_expires = now + c.max_age(NOW, now).unwrap();
                }
            }
        }
    }
}

/// "Forever" given as the largest duration is taken as such, without an
/// overflow anywhere.
#[test]
fn the_largest_lifetimes_mean_forever() {
    let c = codec_with(
        &[NEW],
        TokenConfig::new("sticky")
            .max_lifetime(Duration::MAX)
            .idle_timeout(Duration::MAX)
            .clock_skew(Duration::MAX),
    );
    let text = c.seal(1, 1, NOW, NOW);
    let later = NOW + Duration::from_secs(10 * 365 * 86_400);
    assert!(c.open(&text, later).is_ok());
    assert!(c.max_age(NOW, later).unwrap() > Duration::from_secs(1 << 40));
}

#[test]
fn key_rotation() {
    let old = codec_with(&[OLD], TokenConfig::new("sticky"));
    let rotated = codec_with(&[NEW, OLD], TokenConfig::new("sticky"));
    let retired = codec_with(&[NEW], TokenConfig::new("sticky"));

    let issued_before = old.seal(9, 9, NOW, NOW);
    let t = rotated.open(&issued_before, NOW).unwrap();
    assert_eq!(t.key, 1);
    assert!(t.refresh_due, "re-issue under the newest key");

    let issued_after = rotated.seal(9, 9, NOW, NOW);
    assert_eq!(rotated.open(&issued_after, NOW).unwrap().key, 0);
    assert!(!rotated.open(&issued_after, NOW).unwrap().refresh_due);
    assert!(
        old.open(&issued_after, NOW).is_err(),
        "old replicas can't verify new tokens"
    );

    assert!(matches!(
        retired.open(&issued_before, NOW),
        Err(TokenError::UnknownKey | TokenError::BadSignature)
    ));
}

/// A replica whose clock is behind (within the skew allowance) re-seals a
/// token issued "later" by another: the new token opens on both.
#[test]
fn a_token_refreshed_by_a_replica_behind_opens_everywhere() {
    let behind = NOW - Duration::from_secs(5);
    let old = codec_with(&[OLD], TokenConfig::new("sticky"));
    let rotated = codec_with(&[NEW, OLD], TokenConfig::new("sticky"));
    let first = old.seal(9, 3, NOW, NOW);
    let opened = rotated.open(&first, behind).unwrap();
    assert!(opened.refresh_due, "signed by the old key");
    let issued = Duration::from_secs(u64::from(opened.issued));
    let refreshed = rotated.seal(9, 3, issued, behind);
    for now in [behind, NOW, NOW + Duration::from_secs(5)] {
        let t = rotated.open(&refreshed, now).unwrap();
        assert_eq!(
            (t.backend_tag, t.group_tag, t.issued),
            (9, 3, opened.issued)
        );
        assert!(t.last_seen >= t.issued);
    }
}

#[test]
fn key_ring_rejects_weak_input_and_hides_secrets() {
    assert_eq!(
        KeyRing::new(Vec::<&str>::new()).unwrap_err(),
        KeyRingError::Empty
    );
    assert_eq!(
        KeyRing::new([NEW, "short"]).unwrap_err(),
        KeyRingError::TooShort { position: 1 }
    );
    let debug = format!("{:?}", codec_with(&[NEW, OLD], TokenConfig::new("sticky")));
    assert!(!debug.contains("secret"), "{debug}");
}
