//! The decision: from the keys found in a request to a backend, an
//! [`Outcome`] and the token to issue.

use std::fmt;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use crate::hash::stable_hash;
use crate::snapshot::Snapshot;
use crate::token::OpenedToken;

/// What happens to a bound session whose backend cannot serve it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum FailoverPolicy {
    /// Re-pick by weight among backends that take new sessions (in the
    /// session's group when it has one left) and issue a new token.
    #[default]
    Rebalance,
    /// Reject: the caller answers 503 rather than moving the session.
    Strict,
}

/// Why a session did not reach the backend it was bound to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Reason {
    /// Its backend is unhealthy (passive or active health, or a failed
    /// connection).
    Unhealthy,
    /// Its backend is disabled.
    Disabled,
    /// Its backend is no longer in the pool.
    Removed,
    /// No backend can take the request at all.
    Unavailable,
    /// Its backend is over the keyed load bound
    /// ([`PoolConfig::keyed_bound`](crate::PoolConfig::keyed_bound)): this
    /// request of a hash key went to the key's next candidate.
    Overloaded,
}

impl Reason {
    /// Lower-case name for logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Unhealthy => "unhealthy",
            Reason::Disabled => "disabled",
            Reason::Removed => "removed",
            Reason::Unavailable => "unavailable",
            Reason::Overloaded => "overloaded",
        }
    }
}

/// How a request was placed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// A bound session (token, route or hash key) reached its backend.
    Hit,
    /// Like `Hit`, and a fresh token is issued (last-seen renewed, or
    /// re-signed with the newest key).
    Refreshed,
    /// No key: a new session, placed by weight.
    New,
    /// A genuine token past its lifetime or idle timeout: treated as no
    /// token, like [`Invalid`](Outcome::Invalid).
    Expired,
    /// A forged, truncated, altered or unknown key: treated as no key.
    /// The next key (a known route, else the hash key) or the weights
    /// place the request, and a new token is issued.
    Invalid,
    /// The bound backend could not serve; the session moved. Under a
    /// keyed load bound ([`Reason::Overloaded`]) only this request moved:
    /// no token is issued, and the key's next request goes to its owner
    /// again once the owner is under the bound.
    Failover(Reason),
    /// Nothing was placed: strict mode, or no backend available.
    Rejected(Reason),
}

impl Outcome {
    /// Lower-case name for logs and metrics (without the reason).
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Hit => "hit",
            Outcome::Refreshed => "refreshed",
            Outcome::New => "new",
            Outcome::Expired => "expired",
            Outcome::Invalid => "invalid",
            Outcome::Failover(_) => "failover",
            Outcome::Rejected(_) => "rejected",
        }
    }

    /// True when the request reached the backend it was bound to.
    pub fn is_hit(self) -> bool {
        matches!(self, Outcome::Hit | Outcome::Refreshed)
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outcome::Failover(r) | Outcome::Rejected(r) => {
                write!(f, "{} ({})", self.as_str(), r.as_str())
            }
            _ => f.write_str(self.as_str()),
        }
    }
}

/// The affinity keys found in one request.
///
/// A valid token wins; otherwise a known route; otherwise the hash key; a
/// request with none of them is a new session placed by weight. A key that
/// does not check out counts as no key: a bad token leaves the route and
/// the hash key, an unknown route leaves the hash key.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Keys<'a> {
    /// The load-balancer token (cookie value or affinity header).
    pub token: Option<&'a str>,
    /// A route name (Tomcat-style `jvmRoute` suffix).
    pub route: Option<&'a str>,
    /// A key for consistent hashing (header, app cookie, query, client IP).
    pub hash: Option<&'a [u8]>,
    /// Whether to produce a token when the session needs one (new, moved,
    /// refreshed).
    pub issue_token: bool,
}

impl<'a> Keys<'a> {
    /// No keys, no token issued.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the token.
    pub fn token(mut self, token: &'a str) -> Self {
        self.token = Some(token);
        self
    }

    /// Sets the route name.
    pub fn route(mut self, route: &'a str) -> Self {
        self.route = Some(route);
        self
    }

    /// Sets the hash key.
    pub fn hash(mut self, key: &'a [u8]) -> Self {
        self.hash = Some(key);
        self
    }

    /// Asks for a token when the session needs one.
    pub fn issue_token(mut self) -> Self {
        self.issue_token = true;
        self
    }
}

/// Which of the request's [`Keys`] placed it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum KeyKind {
    /// The token.
    Token,
    /// The route name.
    Route,
    /// The hash key (its owner, or the next of its candidates).
    Hash,
}

/// The result of [`Snapshot::decide`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    /// Index of the chosen member in the snapshot, `None` when rejected.
    pub backend: Option<usize>,
    /// How the request was placed.
    pub outcome: Outcome,
    /// The key that placed the request; `None` when the weights did, or
    /// nothing was placed.
    pub key: Option<KeyKind>,
    /// A token to send to the client, when one is due.
    pub token: Option<String>,
    /// When the session that `token` carries started.
    issued: Option<Duration>,
    /// The stable hash of the hash key, kept for retries.
    hash: Option<u64>,
    /// Whether the request went where its key binds it (strict mode does
    /// not move such a request on a retry).
    bound: bool,
}

impl Decision {
    /// When the session carried by [`Decision::token`] started: now for a
    /// new session, the first token's time for a refreshed or re-signed
    /// one. Pass it to [`TokenCodec::max_age`](crate::token::TokenCodec::max_age)
    /// for the cookie's lifetime. `None` when there is no token.
    pub fn token_issued(&self) -> Option<Duration> {
        self.issued
    }

    fn rejected(reason: Reason) -> Decision {
        Decision {
            backend: None,
            outcome: Outcome::Rejected(reason),
            key: None,
            token: None,
            issued: None,
            hash: None,
            bound: false,
        }
    }
}

/// A bound session's origin, for deciding about tokens.
enum Bound<'t> {
    Token(&'t OpenedToken),
    /// A known route; with the outcome of a token that did not open, if
    /// the request also carried one.
    Route(Option<Outcome>),
    /// A hash key's owner; with the outcome of a token or route that did
    /// not check out, if the request also carried one.
    Hash(u64, Option<Outcome>),
}

impl Bound<'_> {
    fn kind(&self) -> KeyKind {
        match self {
            Bound::Token(_) => KeyKind::Token,
            Bound::Route(_) => KeyKind::Route,
            Bound::Hash(..) => KeyKind::Hash,
        }
    }
}

impl Snapshot {
    /// Decides where a request with `keys` goes at `now` (time since the
    /// Unix epoch, from the wall clock so that replicas agree).
    ///
    /// Counts the decision in the chosen backend's counters.
    pub fn decide(&self, keys: &Keys<'_>, now: Duration) -> Decision {
        let hash = keys.hash.map(|k| stable_hash(self.config.hash_seed, k));
        // The outcome of a key that did not check out: the next key places
        // the request, if there is one, and the client gets a new token.
        let mut spoiled = None;
        if let Some(text) = keys.token {
            match self.config.tokens.open(text, now) {
                Ok(token) => {
                    if token.key != 0 {
                        self.older_key_tokens.fetch_add(1, Relaxed);
                    }
                    return self.by_token(&token, keys, hash, now);
                }
                Err(e) if e.is_expiry() => spoiled = Some(Outcome::Expired),
                Err(_) => spoiled = Some(Outcome::Invalid),
            }
        }
        if let Some(route) = keys.route {
            match self.routes.get(route) {
                Some(&m) => return self.bound(m, Bound::Route(spoiled), keys, hash, now),
                None => spoiled = spoiled.or(Some(Outcome::Invalid)),
            }
        }
        if let Some(h) = hash {
            // The key's owner keeps it, a bad token or route beside it
            // notwithstanding (a draining owner too).
            if let Some(m) = self.keyed_owner(h) {
                return self.bound(m, Bound::Hash(h, spoiled), keys, hash, now);
            }
        }
        self.fresh(spoiled.unwrap_or(Outcome::New), None, hash, keys, now, None)
    }

    /// Places a request again after its backend `failed` before anything
    /// was sent (a connection error): the next candidate of its key, or
    /// another backend by weight, with a new token. A bound session in
    /// strict mode is rejected instead.
    pub fn retry(
        &self,
        previous: &Decision,
        failed: usize,
        keys: &Keys<'_>,
        now: Duration,
    ) -> Decision {
        let reason = Reason::Unhealthy;
        // The placement that failed counted a session or a hit that did
        // not happen there.
        if previous.backend == Some(failed) {
            let failover = matches!(previous.outcome, Outcome::Failover(_));
            self.stats[failed].uncount(previous.bound, failover);
        }
        if previous.bound && self.config.failover == crate::FailoverPolicy::Strict {
            return Decision::rejected(reason);
        }
        let group = Some(self.members[failed].group);
        self.fresh(
            Outcome::Failover(reason),
            group,
            previous.hash,
            keys,
            now,
            Some(failed as u32),
        )
    }

    fn by_token(
        &self,
        token: &OpenedToken,
        keys: &Keys<'_>,
        hash: Option<u64>,
        now: Duration,
    ) -> Decision {
        let tags = &self.tags[token.key];
        match tags.backends.get(&token.backend_tag) {
            Some(&m) => self.bound(m, Bound::Token(token), keys, hash, now),
            None => {
                let group = tags.groups.get(&token.group_tag).copied();
                self.failover(Reason::Removed, group, hash, keys, now, None)
            }
        }
    }

    fn bound(
        &self,
        m: u32,
        how: Bound<'_>,
        keys: &Keys<'_>,
        hash: Option<u64>,
        now: Duration,
    ) -> Decision {
        let member = &self.members[m as usize];
        if !(member.spec().keeps_bound() && member.stats().admit(&self.config.health, now)) {
            let reason = if member.spec().state == crate::BackendState::Disabled {
                Reason::Disabled
            } else {
                Reason::Unhealthy
            };
            return self.failover(reason, Some(member.group), hash, keys, now, Some(m));
        }
        if let (Bound::Hash(h, _), Some(c)) = (&how, self.config.keyed_bound) {
            if !self.fits(m, c) {
                // Consistent hashing with bounded loads: pass the key on,
                // for this request only. No token, which would keep the
                // client on the other backend after the owner has room
                // again. With no other candidate the owner keeps it.
                let next = self.keyed_pick(*h, Some(member.group), now, None, true);
                if let Some(next) = next.filter(|&next| next != m) {
                    let keys = Keys {
                        issue_token: false,
                        ..*keys
                    };
                    let outcome = Outcome::Failover(Reason::Overloaded);
                    return self.placed(next, outcome, &keys, hash, now);
                }
            }
        }
        let (outcome, issued) = match how {
            Bound::Token(t) if t.refresh_due => (
                Outcome::Refreshed,
                Some(Duration::from_secs(u64::from(t.issued))),
            ),
            // The route or key places the request; the bad token is
            // replaced.
            Bound::Route(Some(spoiled)) | Bound::Hash(_, Some(spoiled)) => (spoiled, Some(now)),
            // A route or hash key is affinity enough: no token, so that
            // clients which send their own key on every call are not sent
            // one on every answer.
            Bound::Token(_) | Bound::Route(None) | Bound::Hash(_, None) => (Outcome::Hit, None),
        };
        member.stats().count_hit();
        let issued = issued.filter(|_| keys.issue_token);
        let token = issued.map(|issued| self.seal(m, issued, now));
        Decision {
            backend: Some(m as usize),
            outcome,
            key: Some(how.kind()),
            token,
            issued,
            hash,
            bound: true,
        }
    }

    fn failover(
        &self,
        reason: Reason,
        group: Option<u32>,
        hash: Option<u64>,
        keys: &Keys<'_>,
        now: Duration,
        exclude: Option<u32>,
    ) -> Decision {
        match self.config.failover {
            crate::FailoverPolicy::Strict => Decision::rejected(reason),
            crate::FailoverPolicy::Rebalance => {
                self.fresh(Outcome::Failover(reason), group, hash, keys, now, exclude)
            }
        }
    }

    /// Starts a session: by the hash key's candidates if there is one,
    /// else by the weighted schedule.
    fn fresh(
        &self,
        outcome: Outcome,
        group: Option<u32>,
        hash: Option<u64>,
        keys: &Keys<'_>,
        now: Duration,
        exclude: Option<u32>,
    ) -> Decision {
        let bounded = self.config.keyed_bound.is_some();
        let pick = match hash {
            Some(h) => self.keyed_pick(h, group, now, exclude, bounded),
            None => self.scheduled_pick(group, now, exclude),
        };
        match pick {
            Some(m) => self.placed(m, outcome, keys, hash, now),
            None => Decision::rejected(Reason::Unavailable),
        }
    }

    /// A request placed away from any binding: a new session, a key that
    /// did not check out, or a move. Any token issued starts a session now.
    fn placed(
        &self,
        m: u32,
        outcome: Outcome,
        keys: &Keys<'_>,
        hash: Option<u64>,
        now: Duration,
    ) -> Decision {
        let stats = &self.stats[m as usize];
        match outcome {
            Outcome::Failover(_) => stats.count_failover(),
            _ => stats.count_new_session(),
        }
        let issued = keys.issue_token.then_some(now);
        let token = issued.map(|issued| self.seal(m, issued, now));
        Decision {
            backend: Some(m as usize),
            outcome,
            key: hash.map(|_| KeyKind::Hash),
            token,
            issued,
            hash,
            bound: false,
        }
    }

    fn seal(&self, m: u32, issued: Duration, now: Duration) -> String {
        let member = &self.members[m as usize];
        let group_tag = self.member_group(m).tag;
        self.config.tokens.seal(member.tag, group_tag, issued, now)
    }

    /// Takes a new session now: active, weighted, healthy (claims the
    /// half-open probe if one is due), not excluded.
    fn takes_new(&self, m: u32, now: Duration, exclude: Option<u32>) -> bool {
        let member = &self.members[m as usize];
        Some(m) != exclude
            && member.spec().takes_new()
            && member.stats().admit(&self.config.health, now)
    }

    /// Like [`takes_new`](Self::takes_new) for a schedule entry, which
    /// takes new sessions by construction: only health and exclusion left.
    fn scheduled_ok(&self, m: u32, now: Duration, exclude: Option<u32>) -> bool {
        Some(m) != exclude && self.stats[m as usize].admit(&self.config.health, now)
    }

    /// Under the load bound `c`: in-flight requests at most `c` × the
    /// member's share of all in flight (by its weight and its group's),
    /// counting the request about to be placed.
    fn fits(&self, m: u32, c: f64) -> bool {
        let share = self.shares[m as usize];
        if share <= 0.0 {
            return true;
        }
        let total = (self.load.load(Relaxed) + 1) as f64;
        let limit = (c * total * share).ceil();
        (self.stats[m as usize].in_flight() + 1) as f64 <= limit
    }

    fn scheduled_pick(
        &self,
        group: Option<u32>,
        now: Duration,
        exclude: Option<u32>,
    ) -> Option<u32> {
        if let Some(m) = group.and_then(|g| self.pick_in_group(g, now, exclude)) {
            return Some(m);
        }
        if self.groups.len() == 1 {
            return if group == Some(0) {
                None
            } else {
                self.pick_in_group(0, now, exclude)
            };
        }
        if self.group_schedule.len() > 0 {
            let g = self
                .group_schedule
                .at(self.next_group.fetch_add(1, Relaxed));
            if Some(g) != group {
                if let Some(m) = self.pick_in_group(g, now, exclude) {
                    return Some(m);
                }
            }
        }
        // The weighted choice could not serve: any group that can.
        (0..self.groups.len() as u32)
            .filter(|&g| Some(g) != group)
            .find_map(|g| self.pick_in_group(g, now, exclude))
    }

    fn pick_in_group(&self, g: u32, now: Duration, exclude: Option<u32>) -> Option<u32> {
        let group = &self.groups[g as usize];
        let len = group.schedule.len() as u64;
        if len == 0 {
            return None;
        }
        let bound = self.config.new_session_bound;
        let fits = |m: u32| bound.is_none_or(|c| self.fits(m, c));
        // An entry that cannot take the session is used up, and the next
        // one drawn, as if the member were not in the schedule: the others
        // share its sessions by weight. (Taking the following entries
        // instead would give all of them to the member after it.)
        let tries = len.min(8);
        let mut n = group.next.fetch_add(1, Relaxed);
        for k in 1..=tries {
            let m = group.schedule.at(n);
            if fits(m) && self.scheduled_ok(m, now, exclude) {
                return Some(m);
            }
            if k < tries {
                n = group.next.fetch_add(1, Relaxed);
            }
        }
        // The entries drawn were all out or over the bound (a heavy member
        // resting, say, whose entries come in long runs): a weighted pick
        // among the members that can take the session, so that they still
        // share it by weight.
        // Members are looked at without claiming a half-open probe, which
        // only the chosen one does.
        let chosen = self
            .weighted_among(group, n, |m| fits(m) && self.may_take_new(m, now, exclude))
            .or_else(|| self.weighted_among(group, n, |m| self.may_take_new(m, now, exclude)));
        match chosen {
            Some(m) if self.takes_new(m, now, exclude) => Some(m),
            // Another request took the chosen member's probe meanwhile.
            _ => group
                .members
                .iter()
                .copied()
                .find(|&m| self.takes_new(m, now, exclude)),
        }
    }

    /// Like [`takes_new`](Self::takes_new), without claiming a half-open
    /// probe.
    fn may_take_new(&self, m: u32, now: Duration, exclude: Option<u32>) -> bool {
        let member = &self.members[m as usize];
        Some(m) != exclude
            && member.spec().takes_new()
            && member.stats().may_admit(&self.config.health, now)
    }

    /// A member of `group` that passes `ok`, chosen with chances in
    /// proportion to weight, by a hash of `n`.
    fn weighted_among(
        &self,
        group: &crate::snapshot::Group,
        n: u64,
        ok: impl Fn(u32) -> bool,
    ) -> Option<u32> {
        let weight = |m: u32| u64::from(self.members[m as usize].spec().weight);
        let eligible: Vec<u32> = group.members.iter().copied().filter(|&m| ok(m)).collect();
        let total: u64 = eligible.iter().map(|&m| weight(m)).sum();
        if total == 0 {
            return eligible.first().copied();
        }
        let mut at = crate::hash::mix64(n) % total;
        eligible.into_iter().find(|&m| {
            let w = weight(m);
            if at < w {
                return true;
            }
            at -= w;
            false
        })
    }

    /// The owner of `hash`: in the first group (by weighted rendezvous)
    /// that has a ring.
    fn keyed_owner(&self, hash: u64) -> Option<u32> {
        if let [only] = &*self.groups {
            return (!only.ring.is_empty()).then(|| only.ring.first(hash));
        }
        let g = *self.keyed_groups(hash, None).first()?;
        Some(self.groups[g as usize].ring.first(hash))
    }

    /// Groups in the keyed order of `hash`, `preferred` first.
    fn keyed_groups(&self, hash: u64, preferred: Option<u32>) -> Vec<u32> {
        if self.groups.len() == 1 {
            // A lone group's weight plays no part, as in the schedule.
            return if self.groups[0].ring.is_empty() {
                vec![]
            } else {
                vec![0]
            };
        }
        // Weighted rendezvous: the lowest -ln(u)/w wins. Groups of weight
        // 0 come after all the others, in their own rendezvous order: they
        // own no key while another group can take it, but take keys, as
        // they take new sessions, when none can.
        let mut scored: Vec<(bool, f64, u32)> = self
            .groups
            .iter()
            .enumerate()
            .filter(|(_, g)| !g.ring.is_empty())
            .map(|(i, g)| {
                let name = g.id.as_ref().map_or("", |id| id.as_str());
                let u =
                    ((stable_hash(hash, name.as_bytes()) >> 11) + 1) as f64 / (1u64 << 53) as f64;
                (
                    g.weight == 0,
                    -u.ln() / f64::from(g.weight.max(1)),
                    i as u32,
                )
            })
            .collect();
        scored.sort_by(|a, b| a.0.cmp(&b.0).then(a.1.total_cmp(&b.1)).then(a.2.cmp(&b.2)));
        let mut order: Vec<u32> = scored.into_iter().map(|(_, _, g)| g).collect();
        if let Some(p) = preferred {
            if let Some(at) = order.iter().position(|&g| g == p) {
                order[..=at].rotate_right(1);
            }
        }
        order
    }

    /// The first candidate of `hash` that takes new sessions (and fits the
    /// keyed bound, if `bounded`), `group` first.
    fn keyed_pick(
        &self,
        hash: u64,
        group: Option<u32>,
        now: Duration,
        exclude: Option<u32>,
        bounded: bool,
    ) -> Option<u32> {
        let groups = self.keyed_groups(hash, group);
        let bound = self.config.keyed_bound.filter(|_| bounded);
        let walk = |with_bound: bool| {
            groups.iter().find_map(|&g| {
                self.groups[g as usize].ring.candidates(hash).find(|&m| {
                    (!with_bound || bound.is_none_or(|c| self.fits(m, c)))
                        && self.takes_new(m, now, exclude)
                })
            })
        };
        walk(true).or_else(|| if bound.is_some() { walk(false) } else { None })
    }
}
