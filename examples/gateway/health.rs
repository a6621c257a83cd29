//! Active health checks: every `interval`, each backend gets a `GET` of
//! the health path on a connection of its own, on a timer of its own. A
//! backend that fails `fall` checks in a row takes nothing (its sessions
//! fail over, or get 503 in strict mode) until it passes `rise` in a row.
//! Backends given at start begin as passing; one added through the
//! admin API begins failing, and is checked within an interval: its first
//! check decides (as Envoy does for new hosts). Disabled backends are
//! checked too, so that the verdict is current when they are enabled.
//!
//! The verdict is kept apart from what an operator sets: a drained
//! backend that fails and recovers is draining again, and `enable` does
//! not bring back a backend whose checks fail. Passive health (requests'
//! own failures) goes on beside the checks.

use std::collections::HashMap;
use std::time::Duration;

use http::uri::PathAndQuery;
use tokio::time::MissedTickBehavior;
use tower_sticky::sticky_core::{CheckPolicy, CheckVerdict};
use tower_sticky::Backends;

use crate::proxy::Upstream;

/// What to check and how often.
#[derive(Clone, Debug)]
pub struct Checks {
    /// The path (and query) requested.
    pub path: PathAndQuery,
    /// From one check of a backend to its next.
    pub interval: Duration,
    /// How long one check may take, connecting included.
    pub timeout: Duration,
    /// Passes and failures in a row that change a backend's verdict.
    pub policy: CheckPolicy,
}

/// A verdict that a check changed.
#[derive(Debug, PartialEq, Eq)]
pub enum Change {
    /// Passing again.
    Passing,
    /// Failing, and why the last check failed.
    Failing(String),
}

/// Checks every backend of `backends`, each on its own timer, for as
/// long as the runtime runs: a backend that hangs delays only its own
/// checks. Every `interval` the list of backends is read again: a new
/// backend (or one given a new URL) gets its first check then, and a
/// removed one's checks stop.
pub async fn run(backends: Backends<Upstream>, checks: Checks) {
    let mut checkers = Checkers::default();
    let mut tasks = tokio::task::JoinSet::new();
    let mut rounds = tokio::time::interval(checks.interval);
    rounds.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        rounds.tick().await;
        // Reap the checkers aborted last round, so that the set stays small.
        while tasks.try_join_next().is_some() {}
        let current = backends
            .status()
            .into_iter()
            .filter_map(|status| {
                let name = status.name.as_str().to_owned();
                backends.service(&name).map(|upstream| (name, upstream))
            })
            .collect();
        for (name, upstream) in checkers.unchecked(current) {
            let url = upstream.url().to_owned();
            let task = tasks.spawn(check_one(
                backends.clone(),
                name.clone(),
                upstream,
                checks.clone(),
            ));
            checkers.0.insert(name, (url, task));
        }
    }
}

/// Each backend's checker, by name, with the URL it checks.
#[derive(Default)]
struct Checkers(HashMap<String, (String, tokio::task::AbortHandle)>);

impl Checkers {
    /// Of the backends now in the pool, by name, those without a
    /// checker. A checker whose backend is gone or has another URL is
    /// stopped first, and one that has ended (it can only have panicked)
    /// is replaced.
    fn unchecked(&mut self, mut current: HashMap<String, Upstream>) -> HashMap<String, Upstream> {
        self.0.retain(|name, (url, task)| {
            let keep =
                !task.is_finished() && current.get(name).is_some_and(|u| u.url() == url.as_str());
            if !keep {
                task.abort();
            }
            keep
        });
        current.retain(|name, _| !self.0.contains_key(name));
        current
    }
}

/// Checks one backend every `interval` until aborted.
async fn check_one(backends: Backends<Upstream>, name: String, upstream: Upstream, checks: Checks) {
    let mut verdict = CheckVerdict::default();
    let mut ticks = tokio::time::interval(checks.interval);
    // A check that outlasts the interval delays the next one instead of
    // bringing checks back to back.
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let result = upstream.check(&checks.path, checks.timeout).await;
        match apply(
            &backends,
            &name,
            upstream.url(),
            &mut verdict,
            result,
            &checks.policy,
        ) {
            Some(Change::Failing(why)) => tracing::warn!(
                backend = %name,
                why = %why,
                fall = checks.policy.fall,
                "backend failing its health checks: it takes no requests until they pass"
            ),
            Some(Change::Passing) => tracing::info!(
                backend = %name,
                rise = checks.policy.rise,
                "backend passing its health checks again"
            ),
            None => {}
        }
    }
}

/// Counts a check of backend `name` at `url` and gives the pool the
/// verdict, unless the name has meanwhile been removed or given another
/// URL (the check, made before, says nothing about that one; the
/// supervisor stops this checker at its next round).
///
/// A backend the pool holds as failing while this verdict passes was
/// added through the admin API since (at start, or again under the same
/// URL): its verdict is pending, and this check decides. The verdict is
/// given after every check, not only on a change, so that it reaches a
/// backend added again with new counters.
fn apply(
    backends: &Backends<Upstream>,
    name: &str,
    url: &str,
    verdict: &mut CheckVerdict,
    result: Result<(), String>,
    policy: &CheckPolicy,
) -> Option<Change> {
    if backends.service(name).is_none_or(|now| now.url() != url) {
        return None;
    }
    let held = backends
        .snapshot()
        .member_by_name(name)
        .is_some_and(|member| member.stats().failing_checks());
    if held && verdict.passing() {
        *verdict = CheckVerdict::pending();
    }
    let changed = verdict.record(result.is_ok(), policy);
    let _ = backends.set_checks_passing(name, verdict.passing());
    changed.map(|_| match result {
        Ok(()) => Change::Passing,
        Err(why) => Change::Failing(why),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::ProxyOptions;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;
    use tower_sticky::sticky_core::token::{KeyRing, TokenCodec, TokenConfig};
    use tower_sticky::sticky_core::{BackendSpec, PoolConfig};

    /// A backend that accepts connections, reads the request head and
    /// writes `answer` (then keeps the connection open, writing nothing
    /// more).
    async fn answering(answer: &'static [u8]) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((mut stream, _)) = listener.accept().await {
                let mut head = [0u8; 4096];
                let _ = stream.read(&mut head).await;
                let _ = stream.write_all(answer).await;
                held.push(stream);
            }
        });
        url
    }

    fn upstream(url: &str) -> Upstream {
        Upstream::new(url, &ProxyOptions::default()).unwrap()
    }

    const SHORT: Duration = Duration::from_millis(300);

    /// A failed check says at which step it failed.
    #[tokio::test]
    async fn a_failed_check_says_why() {
        let path = PathAndQuery::from_static("/healthz");
        let ok = answering(b"HTTP/1.1 204 No Content\r\n\r\n").await;
        assert_eq!(upstream(&ok).check(&path, SHORT).await, Ok(()));
        let redirect =
            answering(b"HTTP/1.1 302 Found\r\nLocation: /\r\nContent-Length: 0\r\n\r\n").await;
        assert_eq!(upstream(&redirect).check(&path, SHORT).await, Ok(()));

        let unavailable =
            answering(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n").await;
        let why = upstream(&unavailable)
            .check(&path, SHORT)
            .await
            .unwrap_err();
        assert!(why.contains("answered 503"), "{why}");

        let silent = answering(b"").await;
        let why = upstream(&silent).check(&path, SHORT).await.unwrap_err();
        assert!(why.starts_with("connected, but no answer within"), "{why}");

        let stalled = answering(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nok").await;
        let why = upstream(&stalled).check(&path, SHORT).await.unwrap_err();
        assert!(why.contains("its body was not over"), "{why}");

        // A port nothing listens on: bound, then closed.
        let closed = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", closed.local_addr().unwrap());
        drop(closed);
        let why = upstream(&url).check(&path, SHORT).await.unwrap_err();
        assert!(why.starts_with("cannot connect"), "{why}");
    }

    fn pool(backends: &[(&str, &str)]) -> Backends<Upstream> {
        let config = PoolConfig::new(TokenCodec::new(
            KeyRing::new(["health check tests secret, 32 bytes"]).unwrap(),
            TokenConfig::new("sticky"),
        ));
        Backends::new(
            config,
            backends
                .iter()
                .map(|(name, url)| (BackendSpec::new(*name), upstream(url))),
        )
        .unwrap()
    }

    /// A check's result reaches the backend it was made on, and not one
    /// that has taken its name at another URL while it ran.
    #[test]
    fn a_check_of_a_replaced_backend_is_not_the_new_ones() {
        let old = "http://127.0.0.1:9";
        let backends = pool(&[("b1", old)]);
        let policy = CheckPolicy { rise: 1, fall: 1 };
        let mut verdict = CheckVerdict::default();
        backends.remove("b1").unwrap();
        backends
            .add(BackendSpec::new("b1"), upstream("http://127.0.0.1:10"))
            .unwrap();
        assert_eq!(
            apply(&backends, "b1", old, &mut verdict, fail(), &policy),
            None
        );
        assert!(!backends.status()[0].failing_checks);
        assert!(verdict.passing(), "nor is it counted");

        // The same URL again: the same server, and its checker's verdict
        // reaches the new entry.
        backends.remove("b1").unwrap();
        backends.add(BackendSpec::new("b1"), upstream(old)).unwrap();
        assert_eq!(
            apply(&backends, "b1", old, &mut verdict, fail(), &policy),
            Some(Change::Failing(
                "answered 503 Service Unavailable".to_owned()
            )),
            "a change says why"
        );
        assert!(backends.status()[0].failing_checks);
        assert_eq!(
            apply(&backends, "b1", old, &mut verdict, Ok(()), &policy),
            Some(Change::Passing)
        );
        assert!(!backends.status()[0].failing_checks);

        // Added again through the admin API, which holds it out until a
        // check passes: a passing verdict does not let it in unchecked.
        let policy = CheckPolicy { rise: 1, fall: 3 };
        backends.remove("b1").unwrap();
        backends.add(BackendSpec::new("b1"), upstream(old)).unwrap();
        backends.set_checks_passing("b1", false).unwrap();
        assert_eq!(
            apply(&backends, "b1", old, &mut verdict, fail(), &policy),
            None
        );
        assert!(
            backends.status()[0].failing_checks,
            "its first check failed"
        );
        assert_eq!(
            apply(&backends, "b1", old, &mut verdict, Ok(()), &policy),
            Some(Change::Passing)
        );
        assert!(!backends.status()[0].failing_checks);
    }

    /// The supervisor keeps one live checker per backend and URL.
    #[tokio::test]
    async fn each_backend_keeps_one_live_checker() {
        let mut checkers = Checkers::default();
        let now = |entries: &[(&str, &str)]| -> HashMap<String, Upstream> {
            entries
                .iter()
                .map(|(name, url)| ((*name).to_owned(), upstream(url)))
                .collect()
        };
        let names = |unchecked: HashMap<String, Upstream>| {
            let mut names: Vec<String> = unchecked.into_keys().collect();
            names.sort();
            names
        };
        let mut tasks = tokio::task::JoinSet::new();
        let pending =
            |tasks: &mut tokio::task::JoinSet<()>| tasks.spawn(std::future::pending::<()>());
        let b1 = "http://127.0.0.1:9";
        let b2 = "http://127.0.0.1:10";
        assert_eq!(
            names(checkers.unchecked(now(&[("b1", b1), ("b2", b2)]))),
            ["b1", "b2"]
        );
        checkers
            .0
            .insert("b1".into(), (b1.into(), pending(&mut tasks)));
        checkers
            .0
            .insert("b2".into(), (b2.into(), pending(&mut tasks)));
        assert!(checkers
            .unchecked(now(&[("b1", b1), ("b2", b2)]))
            .is_empty());

        // b2 is given another URL: its checker is stopped and replaced.
        let old = checkers.0["b2"].1.clone();
        assert_eq!(
            names(checkers.unchecked(now(&[("b1", b1), ("b2", b1)]))),
            ["b2"]
        );
        let stopped = tasks.join_next().await.unwrap();
        assert!(stopped.unwrap_err().is_cancelled() && old.is_finished());

        // b1's checker ended on its own: b1 gets a new one. b2 is gone.
        checkers.0["b1"].1.abort();
        tasks.join_next().await;
        assert_eq!(names(checkers.unchecked(now(&[("b1", b1)]))), ["b1"]);
        assert!(checkers.0.is_empty());
    }

    fn fail() -> Result<(), String> {
        Err("answered 503 Service Unavailable".to_owned())
    }
}
