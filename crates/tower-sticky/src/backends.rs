//! The backend set: one inner service per member of a sticky-core pool,
//! changed at runtime through a cheap, cloneable handle.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use sticky_core::token::KeyRing;
use sticky_core::{
    BackendId, BackendSpec, BackendState, ConfigError, Counters, GroupId, Membership, Pool,
    PoolConfig, Snapshot,
};
use tower::discover::{Change, Discover};

/// The services and the core snapshot they belong to, published together.
pub(crate) struct Table<S> {
    pub(crate) snapshot: Arc<Snapshot>,
    /// Indexed like `snapshot.members()`.
    pub(crate) services: Box<[S]>,
}

struct Shared<S> {
    pool: Pool,
    /// Every service by name; guarded with the writer lock.
    services: Mutex<BTreeMap<BackendId, S>>,
    current: ArcSwap<Table<S>>,
}

/// The backends a [`Sticky`](crate::Sticky) service chooses from, and the
/// handle that changes them at runtime.
///
/// Cloning gives another handle to the same set. Every change (add, remove,
/// reweight, drain, disable, enable, new keys) builds a new table aside and publishes
/// it in one atomic swap: requests in flight finish on the table they
/// started with, the next request sees the whole change.
///
/// # Example
///
/// ```
/// use std::convert::Infallible;
/// use http::{Request, Response};
/// use sticky_core::token::{KeyRing, TokenCodec, TokenConfig};
/// use sticky_core::{BackendSpec, PoolConfig};
/// use tower::service_fn;
/// use tower_sticky::Backends;
///
/// let backend = |name: &'static str| {
///     service_fn(move |_req: Request<String>| async move {
///         Ok::<_, Infallible>(Response::new(name.to_string()))
///     })
/// };
/// let keys = KeyRing::new(["a secret shared by every replica"]).unwrap();
/// let config = PoolConfig::new(TokenCodec::new(keys, TokenConfig::new("sticky")));
/// let backends = Backends::new(
///     config,
///     [(BackendSpec::new("b1"), backend("b1")), (BackendSpec::new("b2"), backend("b2"))],
/// )
/// .unwrap();
///
/// backends.drain("b1").unwrap();
/// backends.add(BackendSpec::new("b3").weight(2), backend("b3")).unwrap();
/// assert_eq!(backends.status().len(), 3);
/// ```
pub struct Backends<S> {
    shared: Arc<Shared<S>>,
}

impl<S> Clone for Backends<S> {
    fn clone(&self) -> Self {
        Self {
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<S> fmt::Debug for Backends<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Backends")
            .field("snapshot", &self.shared.current.load().snapshot)
            .finish_non_exhaustive()
    }
}

/// One backend as an admin API or dashboard shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct BackendStatus {
    /// Name.
    pub name: BackendId,
    /// Weight.
    pub weight: u32,
    /// State now (administrative, or `Unhealthy` from passive health or
    /// failing health checks).
    pub state: BackendState,
    /// The state set through the handle (or the configuration), whatever
    /// health says: what the backend returns to once it is healthy
    /// (`Unhealthy` only when set so by hand, with
    /// [`Backends::set_state`]).
    pub admin_state: BackendState,
    /// Group, if any.
    pub group: Option<GroupId>,
    /// Counters.
    pub counters: Counters,
    /// Whether an active health checker holds it out
    /// ([`Backends::set_checks_passing`]).
    pub failing_checks: bool,
}

pub(crate) fn wall_clock() -> Duration {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
}

impl<S: Clone> Backends<S> {
    /// A backend set under `config`, one service per backend.
    pub fn new<I>(config: PoolConfig, backends: I) -> Result<Self, ConfigError>
    where
        I: IntoIterator<Item = (BackendSpec, S)>,
    {
        let mut membership = Membership::new();
        let mut services = BTreeMap::new();
        for (spec, service) in backends {
            if services.insert(spec.id.clone(), service).is_some() {
                return Err(ConfigError::Duplicate(spec.id));
            }
            membership = membership.with(spec);
        }
        let pool = Pool::new(config, membership)?;
        let table = Self::table(pool.load(), &services);
        Ok(Self {
            shared: Arc::new(Shared {
                pool,
                services: Mutex::new(services),
                current: ArcSwap::from_pointee(table),
            }),
        })
    }

    fn table(snapshot: Arc<Snapshot>, services: &BTreeMap<BackendId, S>) -> Table<S> {
        let services = snapshot
            .members()
            .iter()
            .map(|m| services[m.id()].clone())
            .collect();
        Table { snapshot, services }
    }

    fn services(&self) -> MutexGuard<'_, BTreeMap<BackendId, S>> {
        self.shared
            .services
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Applies a membership change and publishes it with its services.
    fn publish<F>(&self, services: &BTreeMap<BackendId, S>, change: F) -> Result<(), ConfigError>
    where
        F: FnOnce(&mut Membership) -> Result<(), ConfigError>,
    {
        let snapshot = self.shared.pool.update(change)?;
        self.shared
            .current
            .store(Arc::new(Self::table(snapshot, services)));
        Ok(())
    }

    /// Replaces the key ring that signs and verifies tokens, keeping
    /// everything else: backends, their states, counters and health. The
    /// next request sees the new ring; a session whose token was signed
    /// with a key the ring still lists is re-signed under its first key,
    /// and one whose key it no longer lists starts again (see
    /// [`Pool::set_keys`]). This is how a process rotates its secrets
    /// without a restart, for instance when it is told to read them again.
    ///
    /// ```
    /// use std::convert::Infallible;
    /// use http::{Request, Response};
    /// use sticky_core::token::{KeyRing, TokenCodec, TokenConfig};
    /// use sticky_core::{BackendSpec, PoolConfig};
    /// use tower::service_fn;
    /// use tower_sticky::Backends;
    ///
    /// let backend = service_fn(|_req: Request<String>| async {
    ///     Ok::<_, Infallible>(Response::new(String::new()))
    /// });
    /// let old = "the old secret, sixteen bytes+";
    /// let new = "the new secret, sixteen bytes+";
    /// let keys = KeyRing::new([old]).unwrap();
    /// let config = PoolConfig::new(TokenCodec::new(keys, TokenConfig::new("sticky")));
    /// let backends = Backends::new(config, [(BackendSpec::new("b1"), backend)]).unwrap();
    /// backends.drain("b1").unwrap();
    ///
    /// // First step of a rotation: the new secret verifies; the old one
    /// // still signs until every replica knows the new one.
    /// backends.set_keys(KeyRing::new([old, new]).unwrap()).unwrap();
    /// assert_eq!(backends.config().tokens.keys().len(), 2);
    /// assert_eq!(backends.status()[0].state, sticky_core::BackendState::Draining);
    /// ```
    pub fn set_keys(&self, keys: KeyRing) -> Result<(), ConfigError> {
        let services = self.services();
        let snapshot = self.shared.pool.set_keys(keys)?;
        self.shared
            .current
            .store(Arc::new(Self::table(snapshot, &services)));
        Ok(())
    }

    /// Adds a backend with its service.
    pub fn add(&self, spec: BackendSpec, service: S) -> Result<(), ConfigError> {
        let mut services = self.services();
        if services.contains_key(&spec.id) {
            return Err(ConfigError::Duplicate(spec.id));
        }
        services.insert(spec.id.clone(), service);
        let id = spec.id.clone();
        let result = self.publish(&services, |m| m.add(spec));
        if result.is_err() {
            services.remove(&id);
        }
        result
    }

    /// Replaces a backend's service (or adds the backend, weight 1, if it
    /// is new), keeping its configuration and counters.
    pub fn upsert(&self, name: impl Into<BackendId>, service: S) -> Result<(), ConfigError> {
        let name = name.into();
        let mut services = self.services();
        let previous = services.insert(name.clone(), service);
        let known = previous.is_some();
        let result = self.publish(&services, |m| {
            if known {
                Ok(())
            } else {
                m.add(BackendSpec::new(name.clone()))
            }
        });
        if result.is_err() {
            // The pool refused it: leave the services as they were.
            match previous {
                Some(previous) => services.insert(name, previous),
                None => services.remove(&name),
            };
        }
        result
    }

    /// Removes a backend: its sessions fail over (or are rejected in strict
    /// mode) on their next request.
    pub fn remove(&self, name: &str) -> Result<(), ConfigError> {
        let mut services = self.services();
        let removed = services.remove(name);
        let result = self.publish(&services, |m| m.remove(name).map(drop));
        if let (Err(_), Some(service)) = (&result, removed) {
            services.insert(name.into(), service);
        }
        result
    }

    fn change(&self, name: &str, f: impl FnOnce(&mut BackendSpec)) -> Result<(), ConfigError> {
        let services = self.services();
        self.publish(&services, |m| {
            f(m.get_mut(name)?);
            Ok(())
        })
    }

    /// Sets a backend's weight (0 drains).
    pub fn set_weight(&self, name: &str, weight: u32) -> Result<(), ConfigError> {
        self.change(name, |b| b.weight = weight)
    }

    /// Drains a backend: bound sessions stay, no new ones come.
    pub fn drain(&self, name: &str) -> Result<(), ConfigError> {
        self.change(name, |b| b.state = BackendState::Draining)
    }

    /// Disables a backend: nothing goes to it; its sessions fail over.
    pub fn disable(&self, name: &str) -> Result<(), ConfigError> {
        self.change(name, |b| b.state = BackendState::Disabled)
    }

    /// Returns a drained, disabled or unhealthy-marked backend to service:
    /// an operator's word that it is back also ends any rest passive
    /// health gave it. A backend failing its active health checks stays
    /// out until they pass.
    pub fn enable(&self, name: &str) -> Result<(), ConfigError> {
        self.change(name, |b| b.state = BackendState::Active)?;
        if let Some(member) = self.snapshot().member_by_name(name) {
            member.stats().restore();
        }
        Ok(())
    }

    /// Sets a backend's administrative state directly. An active health
    /// checker reports with [`set_checks_passing`](Self::set_checks_passing)
    /// instead, which leaves what an operator set alone.
    pub fn set_state(&self, name: &str, state: BackendState) -> Result<(), ConfigError> {
        self.change(name, |b| b.state = state)
    }

    /// Gives an active health checker's verdict on a backend. While its
    /// checks fail the backend reads as `Unhealthy` and takes nothing, not
    /// even a half-open probe: its sessions fail over (or are rejected in
    /// strict mode). When they pass it returns to its administrative state
    /// (a drained backend stays draining). Call it after every check: the
    /// verdict belongs to the backend's counters, and a backend added
    /// again under the same name starts passing.
    /// [`CheckVerdict`](sticky_core::CheckVerdict) turns single checks into
    /// a verdict that changes only after several in a row.
    ///
    /// ```
    /// use std::convert::Infallible;
    /// use http::{Request, Response};
    /// use sticky_core::token::{KeyRing, TokenCodec, TokenConfig};
    /// use sticky_core::{BackendSpec, BackendState, PoolConfig};
    /// use tower::service_fn;
    /// use tower_sticky::Backends;
    ///
    /// let backend = service_fn(|_req: Request<String>| async {
    ///     Ok::<_, Infallible>(Response::new(String::new()))
    /// });
    /// let keys = KeyRing::new(["a secret shared by every replica"]).unwrap();
    /// let config = PoolConfig::new(TokenCodec::new(keys, TokenConfig::new("sticky")));
    /// let backends = Backends::new(config, [(BackendSpec::new("b1"), backend)]).unwrap();
    /// backends.drain("b1").unwrap();
    ///
    /// backends.set_checks_passing("b1", false).unwrap();
    /// assert_eq!(backends.status()[0].state, BackendState::Unhealthy);
    /// assert!(backends.status()[0].failing_checks);
    /// assert_eq!(backends.status()[0].admin_state, BackendState::Draining);
    /// backends.set_checks_passing("b1", true).unwrap();
    /// assert_eq!(backends.status()[0].state, BackendState::Draining);
    /// ```
    pub fn set_checks_passing(&self, name: &str, passing: bool) -> Result<(), ConfigError> {
        let snapshot = self.snapshot();
        let member = snapshot
            .member_by_name(name)
            .ok_or_else(|| ConfigError::Unknown(name.into()))?;
        if passing {
            member.stats().pass_checks();
        } else {
            member.stats().fail_checks();
        }
        Ok(())
    }

    /// Sets a group's weight.
    pub fn set_group_weight(
        &self,
        group: impl Into<GroupId>,
        weight: u32,
    ) -> Result<(), ConfigError> {
        let group = group.into();
        let services = self.services();
        self.publish(&services, |m| {
            m.set_group_weight(group, weight);
            Ok(())
        })
    }

    /// Applies changes from a [`Discover`] stream until it ends, the way a
    /// mesh control plane feeds endpoints: `Insert` adds a backend (or
    /// replaces its service), `Remove` removes it.
    ///
    /// Returns the stream's error, if it fails.
    pub async fn discover<D>(&self, discover: D) -> Result<(), D::Error>
    where
        D: Discover<Service = S>,
        D::Key: Into<BackendId>,
    {
        let mut discover = std::pin::pin!(discover);
        while let Some(change) =
            std::future::poll_fn(|cx| discover.as_mut().poll_discover(cx)).await
        {
            let result = match change? {
                Change::Insert(key, service) => self.upsert(key, service),
                Change::Remove(key) => {
                    let key: BackendId = key.into();
                    self.remove(key.as_str())
                }
            };
            if let Err(error) = result {
                tracing::warn!(%error, "discovered change not applied");
            }
        }
        Ok(())
    }
}

impl<S> Backends<S> {
    pub(crate) fn load(&self) -> Arc<Table<S>> {
        self.shared.current.load_full()
    }

    /// The current core snapshot.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        Arc::clone(&self.shared.current.load().snapshot)
    }

    /// A backend's service, by name.
    pub fn service(&self, name: &str) -> Option<S>
    where
        S: Clone,
    {
        let table = self.shared.current.load();
        let index = table.snapshot.index_of(name)?;
        Some(table.services[index].clone())
    }

    /// The pool's settings, with the key ring in use.
    pub fn config(&self) -> Arc<PoolConfig> {
        self.shared.pool.config()
    }

    /// Every backend with its state and counters, sorted by name.
    pub fn status(&self) -> Vec<BackendStatus> {
        let snapshot = self.snapshot();
        let now = wall_clock();
        snapshot
            .members()
            .iter()
            .enumerate()
            .map(|(i, m)| BackendStatus {
                name: m.id().clone(),
                weight: m.spec().weight,
                state: m.state(now),
                admin_state: m.spec().state,
                group: snapshot.group_of(i).cloned(),
                counters: m.counters(),
                failing_checks: m.stats().failing_checks(),
            })
            .collect()
    }
}
