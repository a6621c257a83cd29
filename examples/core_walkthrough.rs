//! A walk through sticky-core's decisions, printed as a story.
//!
//! Run with `cargo run --example core_walkthrough`. It places 10,000 new
//! sessions on three weighted backends, brings them back, drains one,
//! removes another, and shows where every session ended up.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sticky_core::token::{KeyRing, TokenCodec, TokenConfig};
use sticky_core::{BackendSpec, BackendState, Keys, Membership, Pool, PoolConfig};

fn main() {
    let keys = KeyRing::new(["walkthrough secret, 32 bytes long"]).expect("a valid secret");
    let tokens = TokenCodec::new(keys, TokenConfig::new("sticky"));
    let pool = Pool::new(
        PoolConfig::new(tokens),
        Membership::new()
            .with(BackendSpec::new("b1").weight(1))
            .with(BackendSpec::new("b2").weight(2))
            .with(BackendSpec::new("b3").weight(1)),
    )
    .expect("a valid pool");
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO);

    // 10,000 new sessions, each keeping the token it was given.
    let snapshot = pool.load();
    let mut sessions = Vec::new();
    for _ in 0..10_000 {
        let d = snapshot.decide(&Keys::new().issue_token(), now);
        let backend = snapshot.member(d.backend.expect("a backend")).id().clone();
        sessions.push((d.token.expect("a token"), backend));
    }
    report(
        "new sessions, weights 1:2:1",
        sessions.iter().map(|s| s.1.to_string()),
    );

    let mut step = |title: &str, pool: &Pool| {
        let snapshot = pool.load();
        let mut outcomes = BTreeMap::new();
        let mut stayed = 0;
        for (token, backend) in &mut sessions {
            let d = snapshot.decide(&Keys::new().issue_token().token(token), now);
            *outcomes.entry(d.outcome.to_string()).or_insert(0) += 1;
            let now_on = snapshot.member(d.backend.expect("a backend")).id().clone();
            stayed += usize::from(now_on == *backend);
            if let Some(t) = d.token {
                *token = t;
            }
            *backend = now_on;
        }
        println!(
            "{title}: {stayed} of {} sessions stayed; outcomes {outcomes:?}",
            sessions.len()
        );
        report("  now on", sessions.iter().map(|s| s.1.to_string()));
    };

    step("every session comes back", &pool);
    pool.set_state("b2", BackendState::Draining)
        .expect("b2 exists");
    step("b2 drains (bound sessions stay)", &pool);
    pool.remove("b3").expect("b3 exists");
    step("b3 is removed (its sessions move)", &pool);
}

fn report(title: &str, backends: impl Iterator<Item = String>) {
    let mut counts = BTreeMap::new();
    for b in backends {
        *counts.entry(b).or_insert(0) += 1;
    }
    println!("{title}: {counts:?}");
}
