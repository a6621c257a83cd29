//! Immutable snapshots of the pool: members, weights, states and every
//! table, built aside and published whole.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use crate::backend::{BackendId, BackendSpec, BackendState, GroupId, MAX_WEIGHT};
use crate::hash::{stable_hash, stable_hash_indexed};
use crate::health::{BackendStats, Counters};
use crate::pool::PoolConfig;
use crate::ring::{Ring, RingMember};
use crate::schedule::{Schedule, Share};

/// The backends of a pool and the weights of their groups: what a runtime
/// change edits before a new [`Snapshot`] is built from it.
///
/// # Example
///
/// ```
/// use sticky_core::{BackendSpec, Membership};
///
/// let m = Membership::new()
///     .with(BackendSpec::new("v1-a").group("v1"))
///     .with(BackendSpec::new("v2-a").group("v2"))
///     .with_group_weight("v1", 9)
///     .with_group_weight("v2", 1);
/// assert_eq!(m.backends().len(), 2);
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Membership {
    backends: Vec<BackendSpec>,
    group_weights: BTreeMap<GroupId, u32>,
}

impl Membership {
    /// No backends.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a backend (duplicates are reported when the snapshot is built).
    pub fn with(mut self, spec: BackendSpec) -> Self {
        self.backends.push(spec);
        self
    }

    /// Sets a group's weight (default 1), relative to the other groups':
    /// a group of weight 0 gets no new sessions and owns no hash keys
    /// while another group can take them, and takes both when none can.
    /// With one group it plays no part.
    pub fn with_group_weight(mut self, group: impl Into<GroupId>, weight: u32) -> Self {
        self.group_weights.insert(group.into(), weight);
        self
    }

    /// The backends, in the order given.
    pub fn backends(&self) -> &[BackendSpec] {
        &self.backends
    }

    /// A group's weight.
    pub fn group_weight(&self, group: &GroupId) -> u32 {
        self.group_weights.get(group).copied().unwrap_or(1)
    }

    /// Adds a backend; its name must be new.
    pub fn add(&mut self, spec: BackendSpec) -> Result<(), ConfigError> {
        if self.get(spec.id.as_str()).is_some() {
            return Err(ConfigError::Duplicate(spec.id));
        }
        self.backends.push(spec);
        Ok(())
    }

    /// Removes a backend.
    pub fn remove(&mut self, id: &str) -> Result<BackendSpec, ConfigError> {
        let at = self
            .backends
            .iter()
            .position(|b| b.id.as_str() == id)
            .ok_or_else(|| ConfigError::Unknown(id.into()))?;
        Ok(self.backends.remove(at))
    }

    /// A backend by name.
    pub fn get(&self, id: &str) -> Option<&BackendSpec> {
        self.backends.iter().find(|b| b.id.as_str() == id)
    }

    /// A backend by name, to change it.
    pub fn get_mut(&mut self, id: &str) -> Result<&mut BackendSpec, ConfigError> {
        self.backends
            .iter_mut()
            .find(|b| b.id.as_str() == id)
            .ok_or_else(|| ConfigError::Unknown(id.into()))
    }

    /// Sets a group's weight.
    pub fn set_group_weight(&mut self, group: impl Into<GroupId>, weight: u32) {
        self.group_weights.insert(group.into(), weight);
    }
}

/// A configuration that cannot be built, and what to change.
#[derive(Clone, Debug, PartialEq)]
pub enum ConfigError {
    /// A backend has an empty name.
    EmptyName,
    /// Two backends share a name.
    Duplicate(BackendId),
    /// No backend has this name.
    Unknown(BackendId),
    /// A backend's weight is above [`MAX_WEIGHT`].
    Weight {
        /// The backend.
        backend: BackendId,
        /// Its weight.
        weight: u32,
    },
    /// A group's weight is above [`MAX_WEIGHT`].
    GroupWeight {
        /// The group.
        group: GroupId,
        /// Its weight.
        weight: u32,
    },
    /// Two backends answer to the same route name.
    DuplicateRoute {
        /// The route name.
        route: String,
        /// The second backend that claims it.
        backend: BackendId,
    },
    /// A load bound below 1.0 (no backend could ever be under it).
    LoadBound(f64),
    /// A keyed-placement table resolution outside 10 to 24 bits.
    TableBits(u8),
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigError::EmptyName => f.write_str("a backend has an empty name"),
            ConfigError::Duplicate(id) => write!(f, "backend {id:?} is listed twice"),
            ConfigError::Unknown(id) => write!(f, "no backend is named {id:?}"),
            ConfigError::Weight { backend, weight } => write!(
                f,
                "backend {backend:?} has weight {weight}; weights go from 0 to {MAX_WEIGHT}"
            ),
            ConfigError::GroupWeight { group, weight } => write!(
                f,
                "group {group:?} has weight {weight}; weights go from 0 to {MAX_WEIGHT}"
            ),
            ConfigError::DuplicateRoute { route, backend } => write!(
                f,
                "route {route:?} of backend {backend:?} is already another backend's"
            ),
            ConfigError::LoadBound(c) => {
                write!(f, "load bound {c} is below 1.0; use 1.25 or more")
            }
            ConfigError::TableBits(bits) => {
                write!(
                    f,
                    "keyed table resolution of {bits} bits is outside 10 to 24; the default is 18"
                )
            }
        }
    }
}

impl std::error::Error for ConfigError {}

/// One backend as a snapshot sees it.
#[derive(Debug)]
pub struct Member {
    spec: BackendSpec,
    stats: Arc<BackendStats>,
    pub(crate) group: u32,
    /// Backend tag under the signing key.
    pub(crate) tag: u64,
}

impl Member {
    /// The configuration.
    pub fn spec(&self) -> &BackendSpec {
        &self.spec
    }

    /// The name.
    pub fn id(&self) -> &BackendId {
        &self.spec.id
    }

    /// Live counters and health (shared with every snapshot that holds the
    /// backend).
    pub fn stats(&self) -> &Arc<BackendStats> {
        &self.stats
    }

    /// A copy of the counters.
    pub fn counters(&self) -> Counters {
        self.stats.counters()
    }

    /// The state at `now`: the administrative state, or `Unhealthy` while
    /// passive health has an active or draining backend resting or its
    /// health checks fail.
    pub fn state(&self, now: Duration) -> BackendState {
        match self.spec.state {
            BackendState::Active | BackendState::Draining if self.stats.is_down(now) => {
                BackendState::Unhealthy
            }
            s => s,
        }
    }
}

/// A group of members with its own schedule and ring.
#[derive(Debug)]
pub(crate) struct Group {
    pub(crate) id: Option<GroupId>,
    pub(crate) weight: u32,
    /// Group tag under the signing key.
    pub(crate) tag: u32,
    pub(crate) members: Box<[u32]>,
    pub(crate) schedule: Schedule,
    pub(crate) next: AtomicU64,
    pub(crate) ring: Ring,
}

/// Hashes HMAC-derived tags (already uniform) by taking them as they are.
#[derive(Default)]
pub(crate) struct TagHasher(u64);

impl Hasher for TagHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 << 8) | u64::from(b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
    fn write_u32(&mut self, n: u32) {
        self.0 = u64::from(n);
    }
}

pub(crate) type TagMap<K> = HashMap<K, u32, BuildHasherDefault<TagHasher>>;

/// Tag → index maps under one key of the ring.
#[derive(Debug, Default)]
pub(crate) struct Tags {
    pub(crate) backends: TagMap<u64>,
    pub(crate) groups: TagMap<u32>,
}

/// An immutable view of the pool: members, weights, states, the
/// new-session schedules, the hash rings and the token tag indexes, all
/// from one [`Membership`]. Obtained from [`Pool::load`](crate::Pool::load).
pub struct Snapshot {
    pub(crate) config: Arc<PoolConfig>,
    pub(crate) membership: Membership,
    pub(crate) generation: u64,
    pub(crate) members: Box<[Member]>,
    /// The members' stats pointers again, packed: a new-session pick reads
    /// 8 bytes here instead of a whole member record, which keeps picks
    /// as cheap at 10,000 members as at 3.
    pub(crate) stats: Box<[Arc<BackendStats>]>,
    pub(crate) by_name: HashMap<BackendId, u32>,
    pub(crate) routes: HashMap<Arc<str>, u32>,
    pub(crate) groups: Box<[Group]>,
    pub(crate) group_schedule: Schedule,
    pub(crate) next_group: AtomicU64,
    /// One entry per key of the ring, in ring order.
    pub(crate) tags: Box<[Tags]>,
    /// Each member's share of new load: its group's share of the group
    /// weights, times its share of its group's member weights (0 for a
    /// member that takes no new sessions). The load bounds compare a
    /// member's in-flight requests with this share of the total.
    pub(crate) shares: Box<[f64]>,
    pub(crate) load: Arc<AtomicU64>,
    /// Tokens opened with a key after the signing one, since the pool
    /// began; shared by its snapshots, as `load` is.
    pub(crate) older_key_tokens: Arc<AtomicU64>,
}

impl fmt::Debug for Snapshot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Snapshot")
            .field("generation", &self.generation)
            .field("members", &self.members)
            .finish_non_exhaustive()
    }
}

/// See [`Snapshot::shares`]. With a single group its weight plays no
/// part, as in the new-session schedule.
fn new_load_shares(members: &[Member], groups: &[Group]) -> Box<[f64]> {
    let takes_new = |m: &Member| m.spec.takes_new().then_some(f64::from(m.spec.weight));
    let mut in_group = vec![0.0; groups.len()];
    for m in members {
        in_group[m.group as usize] += takes_new(m).unwrap_or(0.0);
    }
    let group_weight = |g: usize| match groups.len() {
        1 => 1.0,
        _ => f64::from(groups[g].weight),
    };
    let total: f64 = (0..groups.len())
        .filter(|&g| in_group[g] > 0.0)
        .map(group_weight)
        .sum();
    members
        .iter()
        .map(|m| {
            let g = m.group as usize;
            match takes_new(m) {
                Some(w) if total > 0.0 && in_group[g] > 0.0 => {
                    group_weight(g) / total * w / in_group[g]
                }
                _ => 0.0,
            }
        })
        .collect()
}

fn name_hash(name: &str) -> u64 {
    stable_hash(0, name.as_bytes())
}

impl Snapshot {
    pub(crate) fn build(
        config: Arc<PoolConfig>,
        membership: Membership,
        previous: Option<&Snapshot>,
        generation: u64,
        schedule_seed: u64,
    ) -> Result<Snapshot, ConfigError> {
        for (group, &weight) in &membership.group_weights {
            if weight > MAX_WEIGHT {
                return Err(ConfigError::GroupWeight {
                    group: group.clone(),
                    weight,
                });
            }
        }
        let mut specs: Vec<BackendSpec> = membership.backends.clone();
        specs.sort_by(|a, b| a.id.cmp(&b.id));
        for (i, spec) in specs.iter().enumerate() {
            if spec.id.as_str().is_empty() {
                return Err(ConfigError::EmptyName);
            }
            if i > 0 && specs[i - 1].id == spec.id {
                return Err(ConfigError::Duplicate(spec.id.clone()));
            }
            if spec.weight > MAX_WEIGHT {
                return Err(ConfigError::Weight {
                    backend: spec.id.clone(),
                    weight: spec.weight,
                });
            }
        }

        let keys = config.tokens.keys();
        let group_names: Vec<Option<GroupId>> = {
            let mut names: Vec<Option<GroupId>> = specs.iter().map(|s| s.group.clone()).collect();
            names.sort();
            names.dedup();
            names
        };
        let group_of = |spec: &BackendSpec| {
            group_names
                .binary_search(&spec.group)
                .expect("every member's group is listed") as u32
        };

        let mut by_name = HashMap::with_capacity(specs.len());
        let mut routes: HashMap<Arc<str>, u32> = HashMap::with_capacity(specs.len());
        let mut members = Vec::with_capacity(specs.len());
        for (i, spec) in specs.into_iter().enumerate() {
            let i = i as u32;
            let stats = previous
                .and_then(|p| p.member_by_name(spec.id.as_str()))
                .map(|m| Arc::clone(&m.stats))
                .unwrap_or_default();
            if routes.insert(Arc::from(spec.route_name()), i).is_some() {
                return Err(ConfigError::DuplicateRoute {
                    route: spec.route_name().to_owned(),
                    backend: spec.id.clone(),
                });
            }
            by_name.insert(spec.id.clone(), i);
            members.push(Member {
                tag: keys.backend_tag(0, spec.id.as_str()),
                group: group_of(&spec),
                stats,
                spec,
            });
        }

        let seed = config.hash_seed;
        let groups: Vec<Group> = group_names
            .iter()
            .enumerate()
            .map(|(g, id)| {
                let in_group: Vec<u32> = (0..members.len() as u32)
                    .filter(|&i| members[i as usize].group == g as u32)
                    .collect();
                let shares: Vec<Share> = in_group
                    .iter()
                    .map(|&i| (i, &members[i as usize].spec))
                    .filter(|(_, spec)| spec.takes_new())
                    .map(|(index, spec)| Share {
                        index,
                        weight: spec.weight,
                        tiebreak: name_hash(spec.id.as_str()),
                    })
                    .collect();
                let schedule = Schedule::build(&shares);
                // Every weighted member, whatever its state: a key whose
                // owner can't serve reports why and walks on to the member
                // that removing the owner would give it.
                let ring_members: Vec<RingMember<'_>> = in_group
                    .iter()
                    .map(|&i| (i, &members[i as usize].spec))
                    .map(|(index, spec)| RingMember {
                        index,
                        name: spec.id.as_str(),
                        weight: spec.weight,
                    })
                    .collect();
                let ring = Ring::build(&ring_members, seed, config.keyed_table_bits);
                let name = id.as_ref().map_or("", |g| g.as_str());
                Group {
                    weight: id.as_ref().map_or(1, |g| membership.group_weight(g)),
                    tag: keys.group_tag(0, name),
                    next: AtomicU64::new(stable_hash_indexed(
                        schedule_seed,
                        name,
                        generation as u32,
                    )),
                    members: in_group.into(),
                    schedule,
                    ring,
                    id: id.clone(),
                }
            })
            .collect();

        let group_shares: Vec<Share> = groups
            .iter()
            .enumerate()
            .filter(|(_, g)| g.weight > 0 && g.schedule.len() > 0)
            .map(|(i, g)| Share {
                index: i as u32,
                weight: g.weight,
                tiebreak: u64::from(g.tag),
            })
            .collect();

        let tags: Vec<Tags> = (0..keys.len())
            .map(|k| Tags {
                backends: members
                    .iter()
                    .enumerate()
                    .map(|(i, m)| (keys.backend_tag(k, m.spec.id.as_str()), i as u32))
                    .collect(),
                groups: groups
                    .iter()
                    .enumerate()
                    .map(|(i, g)| {
                        let name = g.id.as_ref().map_or("", |g| g.as_str());
                        (keys.group_tag(k, name), i as u32)
                    })
                    .collect(),
            })
            .collect();

        let shares = new_load_shares(&members, &groups);
        Ok(Snapshot {
            shares,
            load: previous.map_or_else(Default::default, |p| Arc::clone(&p.load)),
            older_key_tokens: previous
                .map_or_else(Default::default, |p| Arc::clone(&p.older_key_tokens)),
            group_schedule: Schedule::build(&group_shares),
            next_group: AtomicU64::new(stable_hash_indexed(schedule_seed, "", generation as u32)),
            config,
            membership,
            generation,
            stats: members.iter().map(|m| Arc::clone(&m.stats)).collect(),
            members: members.into(),
            by_name,
            routes,
            groups: groups.into(),
            tags: tags.into(),
        })
    }

    /// The configuration this snapshot was built with.
    pub fn config(&self) -> &PoolConfig {
        &self.config
    }

    /// The membership this snapshot was built from.
    pub fn membership(&self) -> &Membership {
        &self.membership
    }

    /// Counts the snapshots published before this one.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Every member, sorted by name. Indices into this slice are what
    /// [`Decision::backend`](crate::Decision::backend) returns.
    pub fn members(&self) -> &[Member] {
        &self.members
    }

    /// A member by index.
    pub fn member(&self, index: usize) -> &Member {
        &self.members[index]
    }

    /// A member by name.
    pub fn member_by_name(&self, name: &str) -> Option<&Member> {
        self.index_of(name).map(|i| &self.members[i])
    }

    /// A member's index by name.
    pub fn index_of(&self, name: &str) -> Option<usize> {
        self.by_name.get(name).map(|&i| i as usize)
    }

    /// The group a member belongs to.
    pub fn group_of(&self, index: usize) -> Option<&GroupId> {
        self.groups[self.members[index].group as usize].id.as_ref()
    }

    /// Requests in flight over all members (the basis of load bounds).
    pub fn total_in_flight(&self) -> u64 {
        self.load.load(Relaxed)
    }

    /// How many requests, since the pool began, carried a token signed
    /// with a key the ring lists after its signing key (each such token is
    /// re-issued under the signing key). During a rotation, once this
    /// stops growing for as long as sessions last, no session still needs
    /// the older keys, and they can be dropped.
    pub fn older_key_tokens(&self) -> u64 {
        self.older_key_tokens.load(Relaxed)
    }

    /// Marks a request to member `index` as dispatched; the guard marks it
    /// done when dropped. Load bounds and counters depend on it.
    pub fn start_request(&self, index: usize) -> InFlight {
        let stats = Arc::clone(&self.members[index].stats);
        stats.start_request();
        self.load.fetch_add(1, Relaxed);
        InFlight {
            stats,
            load: Arc::clone(&self.load),
        }
    }

    pub(crate) fn member_group(&self, index: u32) -> &Group {
        &self.groups[self.members[index as usize].group as usize]
    }
}

/// A request under way to one backend; dropping it marks the request done.
#[derive(Debug)]
pub struct InFlight {
    stats: Arc<BackendStats>,
    load: Arc<AtomicU64>,
}

impl InFlight {
    /// The backend's counters and health, to record the result.
    pub fn stats(&self) -> &BackendStats {
        &self.stats
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.stats.finish_request();
        self.load.fetch_sub(1, Relaxed);
    }
}
