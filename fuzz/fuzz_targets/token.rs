//! Token decoding: any text, as the LB cookie's value, opens to a typed
//! error or a token, and a decision is made either way; never a panic.
#![no_main]

use std::sync::OnceLock;
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use sticky_core::token::{KeyRing, TokenCodec, TokenConfig};
use sticky_core::{BackendSpec, Keys, Membership, Pool, PoolConfig};

fn pool() -> &'static Pool {
    static POOL: OnceLock<Pool> = OnceLock::new();
    POOL.get_or_init(|| {
        let keys = KeyRing::new(["fuzzing secret, sixteen bytes+", "an older fuzzing secret....."]).unwrap();
        let tokens = TokenCodec::new(
            keys,
            TokenConfig::new("sticky")
                .max_lifetime(Duration::from_secs(3600))
                .idle_timeout(Duration::from_secs(600)),
        );
        let membership = Membership::new()
            .with(BackendSpec::new("b1"))
            .with(BackendSpec::new("b2").weight(3))
            .with(BackendSpec::new("b3").group("canary"));
        Pool::new(PoolConfig::new(tokens), membership).unwrap()
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let now = Duration::from_secs(1_700_000_000);
    let pool = pool();
    let opened = pool.config().tokens.open(text, now);
    let decision = pool.load().decide(&Keys::new().issue_token().token(text), now);
    // Only a token this pool could have issued is ever a hit.
    if opened.is_err() {
        assert!(!decision.outcome.is_hit());
    }
});
