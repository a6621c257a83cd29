//! What `decide` does for each kind of request and pool state.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{config, keys, membership, pool, NOW};
use sticky_core::token::{KeyRing, TokenCodec, TokenConfig};
use sticky_core::{
    BackendSpec, BackendState, FailoverPolicy, HealthPolicy, KeyKind, Keys, Membership, Outcome,
    Pool, PoolConfig, Reason,
};

fn name(pool: &Pool, backend: Option<usize>) -> String {
    pool.load()
        .member(backend.expect("placed"))
        .id()
        .to_string()
}

/// A new session's token and the backend it is bound to.
fn session(pool: &Pool) -> (String, String) {
    let d = pool.load().decide(&Keys::new().issue_token(), NOW);
    (d.token.unwrap(), name(pool, d.backend))
}

fn back(pool: &Pool, token: &str) -> sticky_core::Decision {
    pool.load()
        .decide(&Keys::new().issue_token().token(token), NOW)
}

#[test]
fn a_returning_session_is_a_hit_without_a_new_cookie() {
    let pool = pool(&[1, 1, 1]);
    let (token, home) = session(&pool);
    let d = back(&pool, &token);
    assert_eq!(d.outcome, Outcome::Hit);
    assert_eq!(d.token, None, "nothing to re-send");
    assert_eq!(name(&pool, d.backend), home);
}

#[test]
fn forged_and_expired_tokens_start_new_sessions() {
    let tokens = TokenCodec::new(
        KeyRing::new([common::SECRET]).unwrap(),
        TokenConfig::new("sticky").max_lifetime(Duration::from_secs(60)),
    );
    let pool = Pool::new(PoolConfig::new(tokens), membership(&[1, 1])).unwrap();
    let (token, _) = session(&pool);

    let later = NOW + Duration::from_secs(3600);
    let d = pool
        .load()
        .decide(&Keys::new().issue_token().token(&token), later);
    assert_eq!(d.outcome, Outcome::Expired);
    assert!(d.token.is_some() && d.backend.is_some());

    let d = back(&pool, "not-a-token");
    assert_eq!(d.outcome, Outcome::Invalid);
    assert!(d.token.is_some() && d.backend.is_some());
}

#[test]
fn draining_keeps_bound_sessions_and_takes_no_new_ones() {
    let pool = pool(&[1, 1]);
    let sessions: Vec<_> = (0..20).map(|_| session(&pool)).collect();
    pool.set_state("b0", BackendState::Draining).unwrap();
    for (token, home) in &sessions {
        let d = back(&pool, token);
        assert_eq!(d.outcome, Outcome::Hit);
        assert_eq!(&name(&pool, d.backend), home);
    }
    for _ in 0..20 {
        assert_eq!(session(&pool).1, "b1");
    }
    // Weight 0 drains as well.
    pool.set_state("b0", BackendState::Active).unwrap();
    pool.set_weight("b1", 0).unwrap();
    for _ in 0..20 {
        assert_eq!(session(&pool).1, "b0");
    }
}

#[test]
fn removal_and_disabling_fail_over_with_a_new_token() {
    let pool = pool(&[1, 1, 1]);
    let sessions: Vec<_> = (0..30).map(|_| session(&pool)).collect();
    pool.remove("b0").unwrap();
    pool.set_state("b1", BackendState::Disabled).unwrap();
    for (token, home) in &sessions {
        let d = back(&pool, token);
        match home.as_str() {
            "b0" => assert_eq!(d.outcome, Outcome::Failover(Reason::Removed)),
            "b1" => assert_eq!(d.outcome, Outcome::Failover(Reason::Disabled)),
            _ => assert_eq!(d.outcome, Outcome::Hit),
        }
        assert_eq!(name(&pool, d.backend), "b2");
        if d.outcome != Outcome::Hit {
            let moved = d.token.expect("a new token");
            assert_eq!(back(&pool, &moved).outcome, Outcome::Hit, "and it sticks");
        }
    }
}

#[test]
fn strict_mode_rejects_instead_of_moving() {
    let pool = Pool::new(
        config().failover(FailoverPolicy::Strict),
        membership(&[1, 1]),
    )
    .unwrap();
    let sessions: Vec<_> = (0..10).map(|_| session(&pool)).collect();
    pool.remove("b0").unwrap();
    for (token, home) in &sessions {
        let d = back(&pool, token);
        if home == "b0" {
            assert_eq!(d.outcome, Outcome::Rejected(Reason::Removed));
            assert_eq!((d.backend, d.token), (None, None));
        } else {
            assert_eq!(d.outcome, Outcome::Hit);
        }
    }
}

#[test]
fn an_empty_pool_rejects_as_unavailable() {
    let pool = Pool::new(config(), Membership::new()).unwrap();
    let d = pool.load().decide(&Keys::new().issue_token(), NOW);
    assert_eq!(d.outcome, Outcome::Rejected(Reason::Unavailable));
    let d = pool.load().decide(&Keys::new().hash(b"k"), NOW);
    assert_eq!(d.outcome, Outcome::Rejected(Reason::Unavailable));
}

#[test]
fn passive_health_fails_over_then_probes_back() {
    let health = HealthPolicy {
        failure_threshold: 2,
        cooldown: Duration::from_secs(10),
    };
    let pool = Pool::new(config().health(health), membership(&[1, 1])).unwrap();
    let (token, home) = session(&pool);
    let stats = pool.load().member_by_name(&home).unwrap().stats().clone();
    stats.record_failure(&health, NOW);
    stats.record_failure(&health, NOW);
    assert_eq!(
        pool.load().member_by_name(&home).unwrap().state(NOW),
        BackendState::Unhealthy
    );

    let d = back(&pool, &token);
    assert_eq!(d.outcome, Outcome::Failover(Reason::Unhealthy));
    assert_ne!(name(&pool, d.backend), home);

    // After the cooldown, exactly one request probes the backend.
    let later = NOW + Duration::from_secs(10);
    let probe = pool.load().decide(&Keys::new().token(&token), later);
    assert_eq!(probe.outcome, Outcome::Hit);
    let next = pool.load().decide(&Keys::new().token(&token), later);
    assert_eq!(next.outcome, Outcome::Failover(Reason::Unhealthy));
    stats.record_success(later);
    assert_eq!(
        pool.load()
            .decide(&Keys::new().token(&token), later)
            .outcome,
        Outcome::Hit
    );
}

/// While passive health rests a backend, the others share its new
/// sessions by their weights: none of them takes the whole of it.
#[test]
fn an_unhealthy_backends_new_sessions_are_shared_by_weight() {
    let health = HealthPolicy {
        failure_threshold: 1,
        cooldown: Duration::from_secs(60),
    };
    for weights in [&[1, 1, 1, 1][..], &[1, 2, 1, 3, 1, 1, 1, 2][..]] {
        let pool = Pool::new(config().health(health), membership(weights)).unwrap();
        let down = ["b1", "b4"];
        for name in down
            .iter()
            .filter(|n| pool.load().member_by_name(n).is_some())
        {
            let snapshot = pool.load();
            snapshot
                .member_by_name(name)
                .unwrap()
                .stats()
                .record_failure(&health, NOW);
        }
        let mut counts = vec![0u32; weights.len()];
        let rounds = 1000;
        let total_w: u32 = weights.iter().sum();
        for _ in 0..rounds * total_w {
            let d = pool.load().decide(&Keys::new(), NOW);
            counts[d.backend.unwrap()] += 1;
        }
        let up_w: u32 = (0..weights.len())
            .filter(|i| !down.contains(&format!("b{i}").as_str()))
            .map(|i| weights[i])
            .sum();
        let placed: u32 = counts.iter().sum();
        for (i, &w) in weights.iter().enumerate() {
            let name = format!("b{i}");
            let got = f64::from(counts[i]) / f64::from(placed);
            if down.contains(&name.as_str()) {
                assert_eq!(counts[i], 0, "{name} rests: {counts:?}");
            } else {
                let want = f64::from(w) / f64::from(up_w);
                assert!(
                    (got - want).abs() < 0.01,
                    "{name}: {got:.3} for {want:.3}, {counts:?}"
                );
            }
        }
    }
}

/// A token or route that does not check out leaves the hash key to place
/// the request, on its owner, as the key alone would: also a draining
/// owner, which keeps its keyed sessions.
#[test]
fn a_bad_token_or_route_leaves_a_keys_session_on_its_owner() {
    let pool = pool(&[1, 1, 1, 1]);
    let keys = keys(200, 5);
    let home = |k: &[u8]| pool.load().decide(&Keys::new().hash(k), NOW).backend;
    let homes: Vec<_> = keys.iter().map(|k| home(k)).collect();
    pool.set_state("b1", BackendState::Draining).unwrap();
    let snapshot = pool.load();
    let mut on_b1 = 0;
    for (k, &home) in keys.iter().zip(&homes) {
        on_b1 += usize::from(name(&pool, home) == "b1");
        let forged = snapshot.decide(&Keys::new().issue_token().token("forged").hash(k), NOW);
        assert_eq!((forged.outcome, forged.backend), (Outcome::Invalid, home));
        assert!(forged.token.is_some(), "the bad token is replaced");
        let route = snapshot.decide(&Keys::new().route("nowhere").hash(k), NOW);
        assert_eq!((route.outcome, route.backend), (Outcome::Invalid, home));
    }
    assert!(
        on_b1 > 20,
        "some keys live on the draining backend: {on_b1}"
    );
}

/// A heavy backend resting leaves long runs of its entries in the
/// schedule: its new sessions are still shared by the others' weights,
/// not handed to one of them.
#[test]
fn a_resting_heavy_backends_new_sessions_are_shared_by_weight() {
    let health = HealthPolicy {
        failure_threshold: 1,
        cooldown: Duration::from_secs(60),
    };
    for weights in [
        [16, 1, 1],
        [64, 4, 4],
        [256, 1, 1],
        [100, 5, 5],
        [200, 2, 6],
    ] {
        let pool = Pool::new(config().health(health), membership(&weights)).unwrap();
        let snapshot = pool.load();
        snapshot.member(0).stats().record_failure(&health, NOW);
        let mut counts = [0u32; 3];
        for _ in 0..20_000 {
            counts[snapshot.decide(&Keys::new(), NOW).backend.unwrap()] += 1;
        }
        assert_eq!(counts[0], 0, "{weights:?}: b0 rests");
        let b1 = f64::from(counts[1]) / 20_000.0;
        let want = f64::from(weights[1]) / f64::from(weights[1] + weights[2]);
        assert!(
            (b1 - want).abs() < 0.03,
            "{weights:?}: b1 took {b1:.3}, not {want:.3}: {counts:?}"
        );
    }
}

#[test]
fn hash_keys_stick_and_fail_over_to_their_next_candidate() {
    let pool = pool(&[1, 1, 1, 1]);
    let keys = keys(400, 3);
    let homes: Vec<String> = keys
        .iter()
        .map(|k| name(&pool, pool.load().decide(&Keys::new().hash(k), NOW).backend))
        .collect();
    pool.set_state("b2", BackendState::Disabled).unwrap();
    let snapshot = pool.load();
    for (k, home) in keys.iter().zip(&homes) {
        let d = snapshot.decide(&Keys::new().hash(k), NOW);
        if home == "b2" {
            assert_eq!(d.outcome, Outcome::Failover(Reason::Disabled));
        } else {
            assert_eq!(
                (d.outcome, name(&pool, d.backend)),
                (Outcome::Hit, home.clone())
            );
        }
        // Failover is deterministic: every replica moves the key to the same place.
        assert_eq!(
            d.backend,
            snapshot.decide(&Keys::new().hash(k), NOW).backend
        );
    }
    // Removing b2 sends its keys exactly where failover did.
    let failed_over: Vec<_> = keys
        .iter()
        .map(|k| name(&pool, snapshot.decide(&Keys::new().hash(k), NOW).backend))
        .collect();
    pool.remove("b2").unwrap();
    let after: Vec<_> = keys
        .iter()
        .map(|k| name(&pool, pool.load().decide(&Keys::new().hash(k), NOW).backend))
        .collect();
    assert_eq!(failed_over, after);
}

#[test]
fn routes_map_to_backends_and_unknown_routes_are_invalid() {
    let pool = Pool::new(
        config(),
        Membership::new()
            .with(BackendSpec::new("10.0.0.1:8080").route("node1"))
            .with(BackendSpec::new("10.0.0.2:8080").route("node2")),
    )
    .unwrap();
    for _ in 0..5 {
        let d = pool.load().decide(&Keys::new().route("node2"), NOW);
        assert_eq!(
            (d.outcome, name(&pool, d.backend)),
            (Outcome::Hit, "10.0.0.2:8080".into())
        );
    }
    let d = pool.load().decide(&Keys::new().route("10.0.0.1:8080"), NOW);
    assert_eq!(
        d.outcome,
        Outcome::Invalid,
        "names are not routes once a route is set"
    );
    let d = pool.load().decide(&Keys::new().route("node9"), NOW);
    assert_eq!(d.outcome, Outcome::Invalid);
    assert!(d.backend.is_some());
}

/// A token that does not check out counts as no token: a known route
/// still places the request, and the client gets a new token for the
/// route's backend.
#[test]
fn a_bad_token_leaves_the_route_to_place_the_request() {
    let tokens = TokenCodec::new(
        KeyRing::new([common::SECRET]).unwrap(),
        TokenConfig::new("sticky").max_lifetime(Duration::from_secs(60)),
    );
    let failover = |policy| {
        Pool::new(
            PoolConfig::new(tokens.clone()).failover(policy),
            Membership::new()
                .with(BackendSpec::new("10.0.0.1:8080").route("node1"))
                .with(BackendSpec::new("10.0.0.2:8080").route("node2"))
                .with(BackendSpec::new("10.0.0.3:8080").route("node3")),
        )
        .unwrap()
    };
    let pool = failover(FailoverPolicy::Rebalance);
    let expired = {
        let d = pool.load().decide(&Keys::new().issue_token(), NOW);
        d.token.unwrap()
    };
    let later = NOW + Duration::from_secs(3600);
    for (token, outcome, now) in [
        ("not-a-token", Outcome::Invalid, NOW),
        (&expired[..], Outcome::Expired, later),
    ] {
        for route in ["node1", "node2", "node3"] {
            let keys = Keys::new().issue_token().token(token).route(route);
            let d = pool.load().decide(&keys, now);
            let home = format!("10.0.0.{}:8080", &route[4..]);
            assert_eq!(
                (d.outcome, d.key, name(&pool, d.backend)),
                (outcome, Some(KeyKind::Route), home.clone()),
                "{token} with route {route}"
            );
            let fresh = d.token.expect("the bad token is replaced");
            let d = pool.load().decide(&Keys::new().token(&fresh), now);
            assert_eq!((d.outcome, d.key), (Outcome::Hit, Some(KeyKind::Token)));
            assert_eq!(name(&pool, d.backend), home, "the new token agrees");
        }
        // An unknown route leaves nothing: the weights place it.
        let keys = Keys::new().issue_token().token(token).route("node9");
        let d = pool.load().decide(&keys, now);
        assert_eq!((d.outcome, d.key), (outcome, None));
        assert!(d.backend.is_some() && d.token.is_some());
    }

    // The route binds the session: strict mode does not move it on a retry.
    let strict = failover(FailoverPolicy::Strict);
    let keys = Keys::new().token("not-a-token").route("node2");
    let d = strict.load().decide(&keys, NOW);
    assert_eq!(d.outcome, Outcome::Invalid);
    let again = strict.load().retry(&d, d.backend.unwrap(), &keys, NOW);
    assert_eq!(again.outcome, Outcome::Rejected(Reason::Unhealthy));
}

#[test]
fn groups_split_new_sessions_by_group_weight_and_keep_failover_inside_the_group() {
    let pool = Pool::new(
        config(),
        Membership::new()
            .with(BackendSpec::new("v1-a").group("v1"))
            .with(BackendSpec::new("v1-b").group("v1"))
            .with(BackendSpec::new("v2-a").group("v2"))
            .with(BackendSpec::new("v2-b").group("v2"))
            .with_group_weight("v1", 3)
            .with_group_weight("v2", 1),
    )
    .unwrap();
    let sessions: Vec<_> = (0..400).map(|_| session(&pool)).collect();
    let v2 = sessions.iter().filter(|s| s.1.starts_with("v2")).count();
    assert_eq!(v2, 100, "one in four new sessions goes to v2");

    pool.remove("v2-a").unwrap();
    for (token, home) in sessions.iter().filter(|s| s.1 == "v2-a") {
        let d = back(&pool, token);
        assert_eq!(d.outcome, Outcome::Failover(Reason::Removed), "{home}");
        assert_eq!(name(&pool, d.backend), "v2-b", "stays on its version");
    }
}

/// A lone group's weight plays no part: new sessions and hash keys are
/// placed alike whatever it is.
#[test]
fn a_lone_groups_weight_plays_no_part() {
    for weight in [0, 1, 5] {
        let pool = Pool::new(
            config(),
            Membership::new()
                .with(BackendSpec::new("a").group("only"))
                .with(BackendSpec::new("b").group("only"))
                .with_group_weight("only", weight),
        )
        .unwrap();
        let snapshot = pool.load();
        assert_eq!(snapshot.decide(&Keys::new(), NOW).outcome, Outcome::New);
        let d = snapshot.decide(&Keys::new().hash(b"key"), NOW);
        assert_eq!(d.outcome, Outcome::Hit, "group weight {weight}");
    }
}

/// Groups of weight 0 own no keys while another group can take them, and
/// take them, as they take new sessions, when none can.
#[test]
fn weight_zero_groups_take_keys_only_when_no_other_group_can() {
    let two = |a: u32, b: u32| {
        Pool::new(
            config().health(HealthPolicy {
                failure_threshold: 1,
                cooldown: Duration::from_secs(60),
            }),
            Membership::new()
                .with(BackendSpec::new("a1").group("a"))
                .with(BackendSpec::new("b1").group("b"))
                .with_group_weight("a", a)
                .with_group_weight("b", b),
        )
        .unwrap()
    };
    let keys = keys(50, 9);
    let pool = two(0, 1);
    for key in &keys {
        let d = pool.load().decide(&Keys::new().hash(key), NOW);
        assert_eq!(
            (d.outcome, name(&pool, d.backend)),
            (Outcome::Hit, "b1".into())
        );
    }
    // b's only member rests: keys go where new sessions go.
    let snapshot = pool.load();
    let b1 = snapshot.index_of("b1").unwrap();
    snapshot
        .member(b1)
        .stats()
        .record_failure(&pool.config().health, NOW);
    assert_eq!(
        name(&pool, snapshot.decide(&Keys::new(), NOW).backend),
        "a1"
    );
    for key in &keys {
        let d = snapshot.decide(&Keys::new().hash(key), NOW);
        assert_eq!(d.outcome, Outcome::Failover(Reason::Unhealthy));
        assert_eq!(name(&pool, d.backend), "a1");
    }
    // Every group at 0: keys are placed as new sessions are.
    let pool = two(0, 0);
    assert_eq!(pool.load().decide(&Keys::new(), NOW).outcome, Outcome::New);
    for key in &keys {
        let d = pool.load().decide(&Keys::new().hash(key), NOW);
        assert_eq!(d.outcome, Outcome::Hit, "placed, not rejected");
    }
}

#[test]
fn rotated_keys_still_route_and_refresh_to_the_new_key() {
    let old = KeyRing::new(["the old secret, still listed...."]).unwrap();
    let both = KeyRing::new([
        "the new secret, signs from today",
        "the old secret, still listed....",
    ])
    .unwrap();
    let before = Pool::new(
        PoolConfig::new(TokenCodec::new(old, TokenConfig::new("sticky"))),
        membership(&[1, 1, 1]),
    )
    .unwrap();
    let after = Pool::new(
        PoolConfig::new(TokenCodec::new(both, TokenConfig::new("sticky"))),
        membership(&[1, 1, 1]),
    )
    .unwrap();
    for _ in 0..10 {
        let (token, home) = session(&before);
        let d = back(&after, &token);
        assert_eq!(d.outcome, Outcome::Refreshed);
        assert_eq!(name(&after, d.backend), home);
        let renewed = d.token.expect("re-signed");
        assert_eq!(back(&after, &renewed).outcome, Outcome::Hit);
    }
}

#[test]
fn keys_replaced_in_a_live_pool_rotate_and_keep_everything_else() {
    let old = "the old secret, still listed....";
    let new = "the new secret, signs from today";
    let tokens = TokenCodec::new(KeyRing::new([old]).unwrap(), TokenConfig::new("sticky"));
    let pool = Pool::new(PoolConfig::new(tokens), membership(&[1, 1, 1, 1, 1])).unwrap();
    let sessions: Vec<(String, String)> = (0..50).map(|_| session(&pool)).collect();
    // The state an operator and health left, which a rotation must not
    // undo: b1 drained, b2 resting, b3 weighted up, b4 failing its checks.
    pool.set_state("b1", BackendState::Draining).unwrap();
    pool.set_weight("b3", 5).unwrap();
    let before = pool.load();
    let b2 = before.member_by_name("b2").unwrap().stats();
    b2.record_refused(&pool.config().health, NOW);
    let _in_flight = before.start_request(before.index_of("b2").unwrap());
    before.member_by_name("b4").unwrap().stats().fail_checks();
    let generation = before.generation();
    assert_eq!(before.older_key_tokens(), 0);

    pool.set_keys(KeyRing::new([new, old]).unwrap()).unwrap();
    let after = pool.load();
    assert_eq!(after.generation(), generation + 1);
    assert_eq!(after.membership(), before.membership());
    assert!(Arc::ptr_eq(
        after.member_by_name("b2").unwrap().stats(),
        before.member_by_name("b2").unwrap().stats()
    ));
    assert!(after.member_by_name("b2").unwrap().stats().is_down(NOW));
    assert!(after.member_by_name("b4").unwrap().stats().failing_checks());
    assert_eq!(after.total_in_flight(), 1);
    let fingerprints =
        |pool: &Pool| -> Vec<u64> { pool.config().tokens.keys().fingerprints().collect() };
    let rotated = fingerprints(&pool);
    assert_eq!(rotated.len(), 2);

    // Every session keeps its backend, re-signed under the new key; those
    // on the resting backend and the one failing its checks move.
    let mut renewed = Vec::new();
    for (token, home) in &sessions {
        let d = back(&pool, token);
        let d_home = name(&pool, d.backend);
        if home == "b2" || home == "b4" {
            assert_eq!(d.outcome, Outcome::Failover(Reason::Unhealthy));
            assert_ne!(&d_home, home);
        } else {
            assert_eq!(
                (d.outcome, d_home.as_str()),
                (Outcome::Refreshed, home.as_str())
            );
        }
        let token = d.token.expect("re-signed");
        let opened = pool.config().tokens.open(&token, NOW).unwrap();
        assert_eq!(opened.key, 0, "signed with the new key");
        renewed.push((token, d_home));
    }
    // Each of those requests counted its token as under an older key.
    assert_eq!(pool.load().older_key_tokens(), sessions.len() as u64);
    // New sessions still avoid the drained and the resting backend.
    for _ in 0..60 {
        let (_, home) = session(&pool);
        assert!(home == "b0" || home == "b3", "{home}");
    }

    // The old secret retired: its tokens count as none, re-signed ones hold.
    pool.set_keys(KeyRing::new([new]).unwrap()).unwrap();
    assert_eq!(fingerprints(&pool), rotated[..1]);
    for ((old_token, _), (token, home)) in sessions.iter().zip(&renewed) {
        assert_eq!(back(&pool, old_token).outcome, Outcome::Invalid);
        let d = back(&pool, token);
        assert_eq!(
            (d.outcome, name(&pool, d.backend)),
            (Outcome::Hit, home.clone())
        );
    }
    assert_eq!(pool.load().membership(), before.membership());
    // Old tokens no longer open, re-signed ones are under the signing key:
    // the count stays where it was.
    assert_eq!(pool.load().older_key_tokens(), sessions.len() as u64);
}

#[test]
fn refresh_renews_last_seen_but_keeps_the_issue_time() {
    let tokens = TokenCodec::new(
        KeyRing::new([common::SECRET]).unwrap(),
        TokenConfig::new("sticky")
            .idle_timeout(Duration::from_secs(100))
            .max_lifetime(Duration::from_secs(1000)),
    );
    let codec = tokens.clone();
    let pool = Pool::new(PoolConfig::new(tokens), membership(&[1, 1])).unwrap();
    let (mut token, home) = session(&pool);
    // Active every 60 s: the idle timeout never trips, the lifetime does.
    let mut t = NOW;
    loop {
        t += Duration::from_secs(60);
        let d = pool
            .load()
            .decide(&Keys::new().issue_token().token(&token), t);
        if d.outcome == Outcome::Expired {
            assert!(t > NOW + Duration::from_secs(1000));
            break;
        }
        assert_eq!(d.outcome, Outcome::Refreshed);
        assert_eq!(name(&pool, d.backend), home);
        token = d.token.unwrap();
        assert_eq!(
            u64::from(codec.open(&token, t).unwrap().issued),
            NOW.as_secs()
        );
    }
}

#[test]
fn retry_after_a_connect_error_moves_to_another_backend() {
    let pool = pool(&[1, 1, 1]);
    let snapshot = pool.load();
    let keys = Keys::new().issue_token();
    let first = snapshot.decide(&keys, NOW);
    let failed = first.backend.unwrap();
    let again = snapshot.retry(&first, failed, &keys, NOW);
    assert_eq!(again.outcome, Outcome::Failover(Reason::Unhealthy));
    assert_ne!(again.backend, Some(failed));
    assert!(again.token.is_some());
    // The session started where the retry put it, not where it failed.
    let counters = |m: usize| snapshot.member(m).counters();
    assert_eq!(counters(failed).new_sessions, 0);
    let moved = counters(again.backend.unwrap());
    assert_eq!((moved.new_sessions, moved.failovers), (1, 1));

    // A bound session's hit is taken back the same way.
    let (token, _) = session(&pool);
    let token_keys = Keys::new().token(&token).issue_token();
    let bound = snapshot.decide(&token_keys, NOW);
    let home = bound.backend.unwrap();
    let hits = counters(home).hits;
    snapshot.retry(&bound, home, &token_keys, NOW);
    assert_eq!(counters(home).hits, hits - 1);

    let strict = Pool::new(
        config().failover(FailoverPolicy::Strict),
        membership(&[1, 1]),
    )
    .unwrap();
    let (token, _) = session(&strict);
    let s = strict.load();
    let keys = Keys::new().token(&token);
    let bound = s.decide(&keys, NOW);
    let d = s.retry(&bound, bound.backend.unwrap(), &keys, NOW);
    assert_eq!(d.outcome, Outcome::Rejected(Reason::Unhealthy));
}

#[test]
fn bounded_load_skips_a_backend_far_above_average() {
    let pool = Pool::new(config().new_session_bound(1.25), membership(&[1, 1, 1])).unwrap();
    let snapshot = pool.load();
    let b0 = snapshot.index_of("b0").unwrap();
    let _busy: Vec<_> = (0..30).map(|_| snapshot.start_request(b0)).collect();
    for _ in 0..30 {
        let d = snapshot.decide(&Keys::new(), NOW);
        assert_ne!(d.backend, Some(b0), "b0 has 30 in flight, the others none");
    }
    drop(_busy);
    assert_eq!(snapshot.total_in_flight(), 0);
    let hits_b0 = (0..30)
        .filter(|_| snapshot.decide(&Keys::new(), NOW).backend == Some(b0))
        .count();
    assert_eq!(hits_b0, 10);
}

#[test]
fn keyed_bounded_load_passes_keys_on_while_the_owner_is_overloaded() {
    let pool = Pool::new(config().keyed_bound(1.25), membership(&[1, 1, 1])).unwrap();
    let snapshot = pool.load();
    let key = b"hot-tenant";
    let owner = snapshot
        .decide(&Keys::new().hash(key), NOW)
        .backend
        .unwrap();
    let _busy: Vec<_> = (0..10).map(|_| snapshot.start_request(owner)).collect();
    // The client could take a cookie, but a cookie would keep it on the
    // other backend once the owner has room again: none is issued.
    let keys = Keys::new().hash(key).issue_token();
    let d = snapshot.decide(&keys, NOW);
    let other = d.backend.unwrap();
    assert_ne!(other, owner);
    assert_eq!(d.outcome, Outcome::Failover(Reason::Overloaded));
    assert_eq!(d.outcome.as_str(), "failover");
    assert_eq!(Reason::Overloaded.as_str(), "overloaded");
    assert_eq!(d.key, Some(KeyKind::Hash));
    assert_eq!(d.token, None);
    let moved = snapshot.member(other).counters();
    assert_eq!((moved.hits, moved.failovers), (0, 1));
    drop(_busy);
    let d = snapshot.decide(&keys, NOW);
    assert_eq!(
        (d.backend, d.outcome, d.token),
        (Some(owner), Outcome::Hit, None)
    );
}

/// The load bounds measure a member against its share of the load with
/// group weights counted: under load spread as the weights say, nothing is
/// over the bound, so no key leaves its version for another.
#[test]
fn load_bounds_count_group_weights() {
    let pool = Pool::new(
        config().keyed_bound(1.25).new_session_bound(1.25),
        Membership::new()
            .with(BackendSpec::new("v1-a").group("v1"))
            .with(BackendSpec::new("v1-b").group("v1"))
            .with(BackendSpec::new("v2-canary").group("v2"))
            .with_group_weight("v1", 9)
            .with_group_weight("v2", 1),
    )
    .unwrap();
    let snapshot = pool.load();
    let index = |name: &str| snapshot.index_of(name).unwrap();
    // 100 requests in flight, as the weights share them: 45 / 45 / 10.
    let _busy: Vec<_> = [("v1-a", 45), ("v1-b", 45), ("v2-canary", 10)]
        .iter()
        .flat_map(|&(name, n)| (0..n).map(move |_| name))
        .map(|name| snapshot.start_request(index(name)))
        .collect();
    for key in keys(500, 11) {
        let d = snapshot.decide(&Keys::new().hash(&key), NOW);
        assert_eq!(d.outcome, Outcome::Hit, "{}", name(&pool, d.backend));
    }
    let mut canary = 0;
    for _ in 0..1000 {
        let d = snapshot.decide(&Keys::new(), NOW);
        assert_eq!(d.outcome, Outcome::New);
        canary += usize::from(name(&pool, d.backend) == "v2-canary");
    }
    assert_eq!(canary, 100, "the canary keeps its tenth of new sessions");
}

#[test]
fn an_overloaded_owner_keeps_its_key_when_no_other_backend_can_take_it() {
    let health = HealthPolicy {
        failure_threshold: 1,
        cooldown: Duration::from_secs(10),
    };
    let config = config().keyed_bound(1.25).health(health);
    let pool = Pool::new(config, membership(&[1, 1, 1])).unwrap();
    let snapshot = pool.load();
    let keys = Keys::new().hash(b"hot-tenant").issue_token();
    let owner = snapshot.decide(&keys, NOW).backend.unwrap();
    for m in (0..3).filter(|&m| m != owner) {
        snapshot.member(m).stats().record_failure(&health, NOW);
    }
    let _busy: Vec<_> = (0..10).map(|_| snapshot.start_request(owner)).collect();
    let d = snapshot.decide(&keys, NOW);
    assert_eq!(
        (d.backend, d.outcome, d.token),
        (Some(owner), Outcome::Hit, None)
    );
}

#[test]
fn counters_follow_outcomes() {
    let pool = pool(&[1]);
    let (token, _) = session(&pool);
    back(&pool, &token);
    back(&pool, &token);
    let c = pool.load().member(0).counters();
    assert_eq!((c.new_sessions, c.hits, c.failovers), (1, 2, 0));
}

#[test]
fn configuration_errors_name_what_to_fix() {
    let dup = Pool::new(config(), membership(&[1]).with(BackendSpec::new("b0"))).unwrap_err();
    assert_eq!(dup.to_string(), "backend \"b0\" is listed twice");
    let heavy = Pool::new(config(), membership(&[1000])).unwrap_err();
    assert_eq!(
        heavy.to_string(),
        "backend \"b0\" has weight 1000; weights go from 0 to 256"
    );
    let pool = pool(&[1]);
    assert_eq!(
        pool.remove("nope").unwrap_err().to_string(),
        "no backend is named \"nope\""
    );
    assert_eq!(
        pool.load().generation(),
        0,
        "a failed change publishes nothing"
    );
    assert!(Pool::new(config().new_session_bound(0.5), membership(&[1])).is_err());
}
