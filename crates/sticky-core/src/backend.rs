//! Backend identities, weights and administrative states.

use std::fmt;
use std::sync::Arc;

/// The largest weight a backend or a group may have.
///
/// Weights are relative; 256 steps are enough for canaries of well under 1%
/// and keep the new-session schedule small (see [`PoolConfig`](crate::PoolConfig)).
pub const MAX_WEIGHT: u32 = 256;

/// A backend's stable, user-given name, such as `"b1"` or `"10.0.0.7:8080"`.
///
/// Every decision is derived from names, never from list order or
/// addresses, so replicas with the same configuration agree.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BackendId(Arc<str>);

/// The name of a backend group (for example an application version in an
/// A/B test or a canary).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct GroupId(Arc<str>);

macro_rules! name_type {
    ($t:ident) => {
        impl $t {
            /// Returns the name as a string slice.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }
        impl From<&str> for $t {
            fn from(s: &str) -> Self {
                Self(Arc::from(s))
            }
        }
        impl From<String> for $t {
            fn from(s: String) -> Self {
                Self(Arc::from(s))
            }
        }
        impl From<&String> for $t {
            fn from(s: &String) -> Self {
                Self(Arc::from(s.as_str()))
            }
        }
        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
        impl fmt::Debug for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Debug::fmt(&*self.0, f)
            }
        }
        impl std::borrow::Borrow<str> for $t {
            fn borrow(&self) -> &str {
                &self.0
            }
        }
    };
}
name_type!(BackendId);
name_type!(GroupId);

/// What a backend accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BackendState {
    /// New sessions and bound sessions.
    Active,
    /// Bound sessions only; no new sessions. A weight of 0 also drains.
    Draining,
    /// Nothing: bound sessions fail over (or are rejected in strict mode).
    Disabled,
    /// Failing health checks: treated like `Disabled` until it recovers.
    /// Passive health sets this on its own; it can also be set by hand or by
    /// an active health checker.
    Unhealthy,
}

impl BackendState {
    /// Lower-case name, as used in logs and admin APIs.
    pub fn as_str(self) -> &'static str {
        match self {
            BackendState::Active => "active",
            BackendState::Draining => "draining",
            BackendState::Disabled => "disabled",
            BackendState::Unhealthy => "unhealthy",
        }
    }
}

impl fmt::Display for BackendState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The configuration of one backend: name, weight, state, group and route.
///
/// # Example
///
/// ```
/// use sticky_core::{BackendSpec, BackendState};
///
/// let canary = BackendSpec::new("v2-a").weight(1).group("v2");
/// let old = BackendSpec::new("v1-a").weight(3).state(BackendState::Draining);
/// assert_eq!(canary.weight, 1);
/// assert_eq!(old.state, BackendState::Draining);
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackendSpec {
    /// Stable name.
    pub id: BackendId,
    /// Relative weight, `0..=MAX_WEIGHT`. 0 drains: sessions bound by
    /// token or route stay, no new session comes, and keyed placement
    /// (consistent hashing) passes the backend's keys on, as HAProxy and
    /// Envoy do. The `Draining` state keeps keyed sessions too.
    pub weight: u32,
    /// Administrative state.
    pub state: BackendState,
    /// Group for two-tier balancing; `None` is the default group.
    pub group: Option<GroupId>,
    /// Route name used by route-suffix affinity (Tomcat's `jvmRoute`);
    /// defaults to the backend's name.
    pub route: Option<Arc<str>>,
}

impl BackendSpec {
    /// An active backend of weight 1 in the default group.
    pub fn new(id: impl Into<BackendId>) -> Self {
        Self {
            id: id.into(),
            weight: 1,
            state: BackendState::Active,
            group: None,
            route: None,
        }
    }

    /// Sets the weight (0 drains).
    pub fn weight(mut self, weight: u32) -> Self {
        self.weight = weight;
        self
    }

    /// Sets the administrative state.
    pub fn state(mut self, state: BackendState) -> Self {
        self.state = state;
        self
    }

    /// Puts the backend in a group.
    pub fn group(mut self, group: impl Into<GroupId>) -> Self {
        self.group = Some(group.into());
        self
    }

    /// Sets the route name that route-suffix affinity maps to this backend.
    pub fn route(mut self, route: impl Into<Arc<str>>) -> Self {
        self.route = Some(route.into());
        self
    }

    /// The route name: the configured one, or the backend's name.
    pub fn route_name(&self) -> &str {
        self.route.as_deref().unwrap_or(self.id.as_str())
    }

    /// Takes new sessions: active with a non-zero weight.
    pub(crate) fn takes_new(&self) -> bool {
        self.state == BackendState::Active && self.weight > 0
    }

    /// Keeps bound sessions: active or draining (health aside).
    pub(crate) fn keeps_bound(&self) -> bool {
        matches!(self.state, BackendState::Active | BackendState::Draining)
    }
}
