//! Active health checks: every `interval`, each backend gets a `GET` of
//! the health path on a connection of its own. A backend that fails
//! `fall` checks in a row takes nothing (its sessions fail over, or get
//! 503 in strict mode) until it passes `rise` in a row. Backends start
//! as passing, and those added through the admin API are checked from
//! the next round.
//!
//! The verdict is kept apart from what an operator sets: a drained
//! backend that fails and recovers is draining again, and `enable` does
//! not bring back a backend whose checks fail. Passive health (requests'
//! own failures) goes on beside the checks.

use std::collections::HashMap;
use std::time::Duration;

use http::uri::PathAndQuery;
use tokio::time::MissedTickBehavior;
use tower_sticky::Backends;

use crate::proxy::Upstream;

/// What to check and how often.
#[derive(Clone, Debug)]
pub struct Checks {
    /// The path (and query) requested.
    pub path: PathAndQuery,
    /// From the start of one round of checks to the next.
    pub interval: Duration,
    /// How long one check may take, connecting included.
    pub timeout: Duration,
    /// Passes in a row that bring a failing backend back.
    pub rise: u32,
    /// Failures in a row that take a passing backend out.
    pub fall: u32,
}

/// A backend's verdict, and the results in a row that go against it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tally {
    url: String,
    passing: bool,
    against: u32,
}

/// A verdict that a check changed.
#[derive(Debug, PartialEq, Eq)]
pub enum Change {
    /// Passing again.
    Passing,
    /// Failing, and why the last check failed.
    Failing(String),
}

impl Tally {
    /// A backend at `url`, passing until its checks say otherwise.
    pub fn new(url: &str) -> Self {
        Tally {
            url: url.to_owned(),
            passing: true,
            against: 0,
        }
    }

    /// Whether the backend passes its checks.
    pub fn passing(&self) -> bool {
        self.passing
    }

    /// Counts one check's result; says when it changed the verdict.
    pub fn record(&mut self, result: Result<(), String>, checks: &Checks) -> Option<Change> {
        if result.is_ok() == self.passing {
            self.against = 0;
            return None;
        }
        self.against += 1;
        let needed = if self.passing {
            checks.fall
        } else {
            checks.rise
        };
        if self.against < needed {
            return None;
        }
        self.passing = !self.passing;
        self.against = 0;
        Some(match result {
            Ok(()) => Change::Passing,
            Err(why) => Change::Failing(why),
        })
    }
}

/// Checks every backend of `backends`, round after round, for as long as
/// the runtime runs.
pub async fn run(backends: Backends<Upstream>, checks: Checks) {
    let mut tallies: HashMap<String, Tally> = HashMap::new();
    let mut rounds = tokio::time::interval(checks.interval);
    // A round that takes longer than the interval delays the next one,
    // instead of starting rounds back to back to catch up.
    rounds.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        rounds.tick().await;
        let mut round = tokio::task::JoinSet::new();
        for status in backends.status() {
            let name = status.name.as_str().to_owned();
            let Some(upstream) = backends.service(&name) else {
                continue;
            };
            let checks = checks.clone();
            round.spawn(async move {
                let result = upstream.check(&checks.path, checks.timeout).await;
                (name, upstream.url().to_owned(), result)
            });
        }
        let mut checked = HashMap::with_capacity(tallies.len());
        while let Some(done) = round.join_next().await {
            let Ok((name, url, result)) = done else {
                continue;
            };
            let mut tally = tallies
                .remove(&name)
                // A backend given a new URL under the same name starts over.
                .filter(|tally| tally.url == url)
                .unwrap_or_else(|| Tally::new(&url));
            match tally.record(result, &checks) {
                Some(Change::Failing(why)) => tracing::warn!(
                    backend = %name,
                    why = %why,
                    fall = checks.fall,
                    "backend taken out of service: its health checks fail"
                ),
                Some(Change::Passing) => tracing::info!(
                    backend = %name,
                    rise = checks.rise,
                    "backend back in service: its health checks pass"
                ),
                None => {}
            }
            // Every round, not only on a change: a backend removed and
            // added again meanwhile has new counters, passing.
            if backends.set_checks_passing(&name, tally.passing()).is_ok() {
                checked.insert(name, tally);
            }
        }
        // Removed backends are forgotten.
        tallies = checked;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn checks() -> Checks {
        Checks {
            path: PathAndQuery::from_static("/healthz"),
            interval: Duration::from_secs(1),
            timeout: Duration::from_secs(1),
            rise: 2,
            fall: 3,
        }
    }

    fn fail() -> Result<(), String> {
        Err("answered 503 Service Unavailable".to_owned())
    }

    /// `fall` failures in a row take a backend out and `rise` passes
    /// bring it back; a result the other way in between starts the count
    /// again.
    #[test]
    fn only_results_in_a_row_change_the_verdict() {
        let checks = checks();
        let mut tally = Tally::new("http://127.0.0.1:9");
        assert!(tally.passing(), "a backend starts as passing");
        assert_eq!(tally.record(fail(), &checks), None);
        assert_eq!(tally.record(fail(), &checks), None);
        assert_eq!(tally.record(Ok(()), &checks), None);
        assert_eq!(tally.record(fail(), &checks), None);
        assert_eq!(tally.record(fail(), &checks), None);
        assert!(tally.passing(), "two failures, a pass, two failures");
        assert_eq!(
            tally.record(fail(), &checks),
            Some(Change::Failing(
                "answered 503 Service Unavailable".to_owned()
            ))
        );
        assert!(!tally.passing());
        assert_eq!(tally.record(fail(), &checks), None);
        assert_eq!(tally.record(Ok(()), &checks), None);
        assert_eq!(tally.record(fail(), &checks), None);
        assert_eq!(tally.record(Ok(()), &checks), None);
        assert!(!tally.passing(), "passes not in a row");
        assert_eq!(tally.record(Ok(()), &checks), Some(Change::Passing));
        assert!(tally.passing());
        assert_eq!(tally.record(Ok(()), &checks), None);
    }
}
