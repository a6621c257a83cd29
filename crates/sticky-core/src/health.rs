//! Passive health, active health checks' verdicts and per-backend
//! counters, all lock-free.
//!
//! A backend that fails `failure_threshold` requests in a row is marked
//! unhealthy for `cooldown`. When the cooldown has passed, exactly one request
//! is let through as a probe (half-open); its success restores the backend,
//! its failure starts another cooldown.
//!
//! An active health checker (one that requests a health endpoint on its
//! own schedule) gives its verdict with
//! [`fail_checks`](BackendStats::fail_checks) and
//! [`pass_checks`](BackendStats::pass_checks). A backend failing its checks
//! takes nothing, with no probe, until they pass again; requests' own
//! results do not bring it back.
//!
//! # Example
//!
//! ```
//! use std::time::Duration;
//! use sticky_core::{BackendStats, HealthPolicy};
//!
//! let policy = HealthPolicy { failure_threshold: 2, cooldown: Duration::from_secs(10) };
//! let stats = BackendStats::default();
//! let t0 = Duration::from_secs(1_000);
//!
//! stats.record_failure(&policy, t0);
//! assert!(stats.admit(&policy, t0));
//! stats.record_failure(&policy, t0);
//! assert!(!stats.admit(&policy, t0), "two failures in a row: unhealthy");
//!
//! let later = t0 + Duration::from_secs(10);
//! assert!(stats.admit(&policy, later), "after the cooldown one probe goes through");
//! assert!(!stats.admit(&policy, later), "but only one");
//! stats.record_success(later);
//! assert!(stats.admit(&policy, later), "the probe succeeded: healthy again");
//! ```

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed};
use std::time::Duration;

/// When passive health takes a backend out and how long for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HealthPolicy {
    /// Consecutive failures that mark a backend unhealthy (0 disables
    /// passive health).
    pub failure_threshold: u32,
    /// How long an unhealthy backend rests before one probe is let through.
    pub cooldown: Duration,
}

impl Default for HealthPolicy {
    fn default() -> Self {
        Self {
            failure_threshold: 5,
            cooldown: Duration::from_secs(10),
        }
    }
}

/// Live counters and health of one backend.
///
/// Shared by every snapshot that contains the backend, so counters survive
/// configuration changes. All updates are single atomic operations.
#[derive(Debug, Default)]
pub struct BackendStats {
    // What every placement reads or bumps comes first: with the Arc's two
    // counts these fill one cache line.
    /// Milliseconds since the epoch until which the backend rests; 0 =
    /// healthy; [`FAILING_CHECKS`] = out until its health checks pass.
    down_until_ms: AtomicU64,
    /// When the current half-open probe was let through; 0 = none.
    probe_at_ms: AtomicU64,
    new_sessions: AtomicU64,
    hits: AtomicU64,
    in_flight: AtomicU64,
    failovers: AtomicU64,
    requests: AtomicU64,
    failures: AtomicU64,
    consecutive_failures: AtomicU32,
}

/// How many active health checks in a row change a checker's verdict, as
/// HAProxy's `rise` and `fall` (both at least 1; 0 counts as 1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CheckPolicy {
    /// Passes in a row that bring a failing backend back.
    pub rise: u32,
    /// Failures in a row that take a passing backend out.
    pub fall: u32,
}

impl Default for CheckPolicy {
    /// HAProxy's defaults: back after 2 passes, out after 3 failures.
    fn default() -> Self {
        Self { rise: 2, fall: 3 }
    }
}

/// An active health checker's verdict on one backend: passing at first,
/// changed only by [`CheckPolicy::fall`] failures or
/// [`CheckPolicy::rise`] passes in a row. Hand the verdict to the pool
/// after every check ([`BackendStats::fail_checks`] or
/// [`pass_checks`](BackendStats::pass_checks)).
///
/// ```
/// use sticky_core::health::{CheckPolicy, CheckVerdict};
///
/// let policy = CheckPolicy { rise: 2, fall: 2 };
/// let mut verdict = CheckVerdict::default();
/// assert_eq!(verdict.record(false, &policy), None);
/// assert_eq!(verdict.record(false, &policy), Some(false), "out after two failures");
/// assert_eq!(verdict.record(true, &policy), None);
/// assert_eq!(verdict.record(false, &policy), None, "not two passes in a row");
/// assert_eq!(verdict.record(true, &policy), None);
/// assert_eq!(verdict.record(true, &policy), Some(true));
/// assert!(verdict.passing());
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CheckVerdict {
    passing: bool,
    /// Results in a row against the verdict.
    against: u32,
    /// No check has been counted yet, and the first decides.
    pending: bool,
}

impl Default for CheckVerdict {
    /// Passing, until checks say otherwise.
    fn default() -> Self {
        Self {
            passing: true,
            against: 0,
            pending: false,
        }
    }
}

impl CheckVerdict {
    /// Failing until the first check, which decides either way: for a
    /// backend added while serving, which should take no sessions before
    /// it has answered once (Envoy's rule for new hosts). `rise` and
    /// `fall` count from then on.
    ///
    /// ```
    /// use sticky_core::health::{CheckPolicy, CheckVerdict};
    ///
    /// let mut verdict = CheckVerdict::pending();
    /// assert!(!verdict.passing());
    /// assert_eq!(verdict.record(true, &CheckPolicy::default()), Some(true));
    /// ```
    pub fn pending() -> Self {
        Self {
            passing: false,
            against: 0,
            pending: true,
        }
    }

    /// Whether the backend passes its checks.
    pub fn passing(&self) -> bool {
        self.passing
    }

    /// Counts one check (`passed` or not); returns the new verdict when
    /// this check changed it.
    pub fn record(&mut self, passed: bool, policy: &CheckPolicy) -> Option<bool> {
        if std::mem::take(&mut self.pending) && passed {
            self.passing = true;
            return Some(true);
        }
        if passed == self.passing {
            self.against = 0;
            return None;
        }
        self.against += 1;
        let needed = if self.passing {
            policy.fall
        } else {
            policy.rise
        };
        if self.against < needed.max(1) {
            return None;
        }
        self.passing = passed;
        self.against = 0;
        Some(passed)
    }
}

/// A backend's health at one moment, as [`BackendStats::health`] reads it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Health {
    /// Takes requests (a rest whose cooldown is over, with its half-open
    /// probe not yet claimed, counts as up).
    Up,
    /// Passive health took it out; it rests until its cooldown is over
    /// and a probe succeeds.
    Resting,
    /// Its health checks fail ([`BackendStats::fail_checks`]).
    FailingChecks,
}

/// A plain copy of a backend's counters, for dashboards and admin APIs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// Requests dispatched to the backend.
    pub requests: u64,
    /// Sessions started on the backend (new, expired, invalid or failed over).
    pub new_sessions: u64,
    /// Requests of bound sessions that reached their backend.
    pub hits: u64,
    /// Requests moved to this backend because their own could not serve
    /// them (or was over the keyed load bound).
    pub failovers: u64,
    /// Requests that failed (errors, and configured 5xx statuses).
    pub failures: u64,
    /// Requests under way now.
    pub in_flight: u64,
}

/// `down_until_ms` of a backend held out by its health checks: above any
/// time [`millis`] gives.
const FAILING_CHECKS: u64 = u64::MAX;

fn millis(t: Duration) -> u64 {
    // Never 0, which means "healthy" / "no probe", nor FAILING_CHECKS.
    u64::try_from(t.as_millis()).map_or(FAILING_CHECKS - 1, |ms| ms.clamp(1, FAILING_CHECKS - 1))
}

impl BackendStats {
    /// A copy of the counters.
    pub fn counters(&self) -> Counters {
        Counters {
            requests: self.requests.load(Relaxed),
            new_sessions: self.new_sessions.load(Relaxed),
            hits: self.hits.load(Relaxed),
            failovers: self.failovers.load(Relaxed),
            failures: self.failures.load(Relaxed),
            in_flight: self.in_flight.load(Relaxed),
        }
    }

    /// Requests under way now.
    pub fn in_flight(&self) -> u64 {
        self.in_flight.load(Relaxed)
    }

    /// Counts a dispatched request and marks it in flight; pair with
    /// [`finish_request`](Self::finish_request).
    pub fn start_request(&self) {
        self.requests.fetch_add(1, Relaxed);
        self.in_flight.fetch_add(1, Relaxed);
    }

    /// Marks a request started with [`start_request`](Self::start_request)
    /// as done.
    pub fn finish_request(&self) {
        self.in_flight.fetch_sub(1, Relaxed);
    }

    pub(crate) fn count_new_session(&self) {
        self.new_sessions.fetch_add(1, Relaxed);
    }

    pub(crate) fn count_hit(&self) {
        self.hits.fetch_add(1, Relaxed);
    }

    pub(crate) fn count_failover(&self) {
        self.failovers.fetch_add(1, Relaxed);
        self.new_sessions.fetch_add(1, Relaxed);
    }

    /// Takes back what a placement counted (a hit, a failover or a new
    /// session) when its request never reached the backend and went
    /// elsewhere. Never below zero, should the counters have been
    /// replaced in between.
    pub(crate) fn uncount(&self, hit: bool, failover: bool) {
        let take_back = |counter: &AtomicU64| {
            let _ = counter.fetch_update(Relaxed, Relaxed, |n| n.checked_sub(1));
        };
        if hit {
            take_back(&self.hits);
            return;
        }
        if failover {
            take_back(&self.failovers);
        }
        take_back(&self.new_sessions);
    }

    /// Records a request that succeeded at `now`: resets the failure
    /// streak, and restores a resting backend once its cooldown is over
    /// (the half-open probe's success, or any after it). A success during
    /// the rest, of a request sent before it began, does not end it: a
    /// backend that refuses new connections while finishing the requests
    /// it has stays out for its cooldown instead of flapping back in.
    pub fn record_success(&self, now: Duration) {
        if self.consecutive_failures.load(Relaxed) != 0 {
            self.consecutive_failures.store(0, Relaxed);
        }
        let until = self.down_until_ms.load(Relaxed);
        // Never true of FAILING_CHECKS, which no time reaches.
        if until != 0 && millis(now) >= until {
            self.restore();
        }
    }

    /// Ends any rest passive health gave the backend at once, as an
    /// operator's word that the backend is back does, and resets the
    /// failure streak. A backend failing its health checks stays out: the
    /// checks, not the operator, say when it answers again.
    pub fn restore(&self) {
        self.consecutive_failures.store(0, Relaxed);
        self.set_rest(0);
        self.probe_at_ms.store(0, Relaxed);
    }

    /// Sets the end of a passive-health rest (milliseconds; 0 ends it),
    /// leaving a health checks' hold alone.
    fn set_rest(&self, until: u64) {
        let _ = self.down_until_ms.fetch_update(Relaxed, Relaxed, |now| {
            (now != FAILING_CHECKS).then_some(until)
        });
    }

    /// Rests the backend until `until` (milliseconds), unless its health
    /// checks hold it out already.
    fn rest_until(&self, until: u64) {
        self.set_rest(until);
        self.probe_at_ms.store(0, Relaxed);
    }

    /// Takes the backend out on an active health checker's word: no
    /// requests, not even a half-open probe, until
    /// [`pass_checks`](Self::pass_checks). This replaces any passive-health
    /// rest.
    pub fn fail_checks(&self) {
        self.down_until_ms.store(FAILING_CHECKS, Relaxed);
        self.probe_at_ms.store(0, Relaxed);
    }

    /// Returns a backend held out by [`fail_checks`](Self::fail_checks) to
    /// service, with a fresh failure streak. Nothing changes for a backend
    /// that was not failing its checks: a passive-health rest runs its
    /// course.
    pub fn pass_checks(&self) {
        if self
            .down_until_ms
            .compare_exchange(FAILING_CHECKS, 0, Relaxed, Relaxed)
            .is_ok()
        {
            self.consecutive_failures.store(0, Relaxed);
        }
    }

    /// Whether an active health checker holds the backend out
    /// ([`fail_checks`](Self::fail_checks)).
    pub fn failing_checks(&self) -> bool {
        self.down_until_ms.load(Relaxed) == FAILING_CHECKS
    }

    /// Records a failed request at `now` (time since the Unix epoch).
    pub fn record_failure(&self, policy: &HealthPolicy, now: Duration) {
        self.failures.fetch_add(1, Relaxed);
        let streak = self.consecutive_failures.fetch_add(1, Relaxed) + 1;
        if policy.failure_threshold != 0 && streak >= policy.failure_threshold {
            self.rest_until(millis(now.saturating_add(policy.cooldown)));
        }
    }

    /// Records a refused connection at `now`: unlike an error that could
    /// be the request's fault, it says the backend is not there, so the
    /// backend rests at once instead of after `failure_threshold` failures.
    pub fn record_refused(&self, policy: &HealthPolicy, now: Duration) {
        self.failures.fetch_add(1, Relaxed);
        if policy.failure_threshold != 0 {
            self.consecutive_failures
                .store(policy.failure_threshold, Relaxed);
            self.rest_until(millis(now.saturating_add(policy.cooldown)));
        }
    }

    /// Whether passive health has the backend resting at `now` (a probe may
    /// still be due; this does not claim it), or its health checks hold it
    /// out.
    pub fn is_down(&self, now: Duration) -> bool {
        self.health(now) != Health::Up
    }

    /// Whether the backend is up at `now`, resting after passive health
    /// took it out (a probe may still be due; this does not claim it), or
    /// held out by its health checks.
    pub fn health(&self, now: Duration) -> Health {
        match self.down_until_ms.load(Relaxed) {
            0 => Health::Up,
            FAILING_CHECKS => Health::FailingChecks,
            until if millis(now) < until || self.probe_at_ms.load(Relaxed) != 0 => Health::Resting,
            _ => Health::Up,
        }
    }

    /// Whether [`admit`](Self::admit) would let a request through at
    /// `now`, without claiming the half-open probe.
    pub(crate) fn may_admit(&self, policy: &HealthPolicy, now: Duration) -> bool {
        let until = self.down_until_ms.load(Relaxed);
        if until == 0 {
            return true;
        }
        let now_ms = millis(now);
        let probe = self.probe_at_ms.load(Relaxed);
        now_ms >= until && (probe == 0 || now_ms >= probe.saturating_add(millis(policy.cooldown)))
    }

    /// Whether a request may go to this backend at `now`.
    ///
    /// Healthy: always. Resting: no. Cooldown over: `true` for exactly one
    /// caller (the half-open probe); another probe is allowed if that one
    /// has not reported within a further cooldown.
    pub fn admit(&self, policy: &HealthPolicy, now: Duration) -> bool {
        let until = self.down_until_ms.load(Relaxed);
        if until == 0 {
            return true;
        }
        let now_ms = millis(now);
        if now_ms < until {
            return false;
        }
        let probe = self.probe_at_ms.load(Relaxed);
        let stale = probe != 0 && now_ms >= probe.saturating_add(millis(policy.cooldown));
        (probe == 0 || stale)
            && self
                .probe_at_ms
                .compare_exchange(probe, now_ms, Relaxed, Relaxed)
                .is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_largest_cooldown_rests_a_backend_without_overflow() {
        let policy = HealthPolicy {
            failure_threshold: 1,
            cooldown: Duration::MAX,
        };
        let stats = BackendStats::default();
        let now = Duration::from_secs(1_000);
        stats.record_failure(&policy, now);
        assert!(!stats.admit(&policy, now + Duration::from_secs(86_400)));
        stats.record_refused(&policy, now);
        assert!(stats.is_down(now));
        assert!(
            !stats.failing_checks(),
            "a rest, however long, is not the checks' hold"
        );
    }

    fn policy() -> HealthPolicy {
        HealthPolicy {
            failure_threshold: 3,
            cooldown: Duration::from_secs(5),
        }
    }

    #[test]
    fn success_breaks_the_failure_streak() {
        let s = BackendStats::default();
        let now = Duration::from_secs(100);
        s.record_failure(&policy(), now);
        s.record_failure(&policy(), now);
        s.record_success(now);
        s.record_failure(&policy(), now);
        assert!(s.admit(&policy(), now));
        assert_eq!(s.counters().failures, 3);
    }

    /// A request sent before the rest that succeeds during it does not
    /// end the rest; the probe's success after the cooldown does.
    #[test]
    fn only_a_success_after_the_cooldown_ends_a_rest() {
        let s = BackendStats::default();
        let now = Duration::from_secs(100);
        s.record_refused(&policy(), now);
        s.record_success(now + Duration::from_secs(1));
        assert!(s.is_down(now + Duration::from_secs(1)), "still resting");
        let later = now + Duration::from_secs(5);
        assert!(s.admit(&policy(), later), "the probe");
        s.record_success(later);
        assert!(!s.is_down(later));
        assert!(s.admit(&policy(), later));
        s.record_refused(&policy(), later);
        s.restore();
        assert!(
            s.admit(&policy(), later),
            "an operator's restore ends it at once"
        );
    }

    /// Failing checks hold a backend out with no probe, whatever its
    /// requests do and however long it rests; passing checks bring it
    /// back at once, with a fresh streak.
    #[test]
    fn failing_checks_hold_a_backend_out_until_they_pass() {
        let s = BackendStats::default();
        let now = Duration::from_secs(100);
        s.fail_checks();
        assert!(s.failing_checks() && s.is_down(now));
        let much_later = now + Duration::from_secs(86_400);
        assert!(!s.admit(&policy(), much_later), "no half-open probe");
        s.record_success(much_later);
        s.restore();
        for _ in 0..3 {
            s.record_failure(&policy(), now);
        }
        s.record_refused(&policy(), now);
        assert!(
            !s.admit(&policy(), much_later),
            "neither requests nor an operator's restore end the checks' hold"
        );
        s.pass_checks();
        assert!(!s.failing_checks());
        assert!(s.admit(&policy(), now));
        s.record_failure(&policy(), now);
        s.record_failure(&policy(), now);
        assert!(s.admit(&policy(), now), "the streak started again");
    }

    /// Passing checks leave a passive rest to run its course; failing ones
    /// replace it.
    #[test]
    fn passing_checks_leave_a_passive_rest_alone() {
        let s = BackendStats::default();
        let now = Duration::from_secs(100);
        s.record_refused(&policy(), now);
        s.pass_checks();
        assert!(s.is_down(now) && !s.failing_checks());
        s.fail_checks();
        assert!(!s.admit(&policy(), now + Duration::from_secs(5)));
        s.pass_checks();
        assert!(s.admit(&policy(), now));
    }

    #[test]
    fn health_tells_a_rest_from_failing_checks() {
        let s = BackendStats::default();
        let now = Duration::from_secs(100);
        assert_eq!(s.health(now), Health::Up);
        s.record_refused(&policy(), now);
        assert_eq!(s.health(now), Health::Resting);
        let later = now + Duration::from_secs(5);
        assert_eq!(s.health(later), Health::Up, "the cooldown is over");
        assert!(s.admit(&policy(), later));
        assert_eq!(s.health(later), Health::Resting, "its probe is under way");
        s.fail_checks();
        assert_eq!(s.health(later), Health::FailingChecks);
        s.pass_checks();
        assert_eq!(s.health(later), Health::Up);
    }

    /// `fall` failures in a row take a backend out and `rise` passes
    /// bring it back; a result the other way in between starts the count
    /// again.
    #[test]
    fn only_checks_in_a_row_change_the_verdict() {
        let policy = CheckPolicy::default();
        let mut v = CheckVerdict::default();
        assert!(v.passing(), "a backend starts as passing");
        for passed in [false, false, true, false, false] {
            assert_eq!(v.record(passed, &policy), None);
        }
        assert!(v.passing(), "two failures, a pass, two failures");
        assert_eq!(v.record(false, &policy), Some(false));
        for passed in [false, true, false, true] {
            assert_eq!(v.record(passed, &policy), None);
        }
        assert!(!v.passing(), "passes not in a row");
        assert_eq!(v.record(true, &policy), Some(true));
        assert_eq!(v.record(true, &policy), None);
        let zero = CheckPolicy { rise: 0, fall: 0 };
        assert_eq!(v.record(false, &zero), Some(false), "0 counts as 1");
    }

    /// A pending verdict fails until the first check; a first pass is
    /// enough, a first failure leaves `rise` passes to go.
    #[test]
    fn a_pending_verdict_waits_for_one_check() {
        let policy = CheckPolicy::default();
        let mut v = CheckVerdict::pending();
        assert!(!v.passing());
        assert_eq!(v.record(true, &policy), Some(true));
        assert_eq!(v.record(false, &policy), None, "fall counts from then on");

        let mut v = CheckVerdict::pending();
        assert_eq!(v.record(false, &policy), None);
        assert_eq!(v.record(true, &policy), None);
        assert_eq!(v.record(true, &policy), Some(true), "then rise passes");
    }

    #[test]
    fn failed_probe_rests_again() {
        let s = BackendStats::default();
        let now = Duration::from_secs(100);
        for _ in 0..3 {
            s.record_failure(&policy(), now);
        }
        assert!(s.is_down(now));
        let later = now + Duration::from_secs(5);
        assert!(s.admit(&policy(), later));
        s.record_failure(&policy(), later);
        assert!(!s.admit(&policy(), later + Duration::from_secs(4)));
        assert!(s.admit(&policy(), later + Duration::from_secs(5)));
    }

    #[test]
    fn lost_probe_is_replaced_after_another_cooldown() {
        let s = BackendStats::default();
        let now = Duration::from_secs(100);
        for _ in 0..3 {
            s.record_failure(&policy(), now);
        }
        let t = now + Duration::from_secs(5);
        assert!(s.admit(&policy(), t));
        assert!(!s.admit(&policy(), t + Duration::from_secs(1)));
        assert!(s.admit(&policy(), t + Duration::from_secs(5)));
    }

    #[test]
    fn a_refused_connection_rests_the_backend_at_once() {
        let s = BackendStats::default();
        let now = Duration::from_secs(100);
        s.record_refused(&policy(), now);
        assert!(!s.admit(&policy(), now));
        assert!(
            s.admit(&policy(), now + Duration::from_secs(5)),
            "then a probe"
        );
    }

    #[test]
    fn zero_threshold_never_marks_down() {
        let s = BackendStats::default();
        let p = HealthPolicy {
            failure_threshold: 0,
            ..policy()
        };
        for _ in 0..100 {
            s.record_failure(&p, Duration::from_secs(1));
        }
        assert!(s.admit(&p, Duration::from_secs(1)));
    }
}
