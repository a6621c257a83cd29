//! The pool: the current [`Snapshot`], swapped whole on every change.

use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;

use crate::backend::{BackendSpec, BackendState, GroupId};
use crate::decide::FailoverPolicy;
use crate::health::HealthPolicy;
use crate::snapshot::{ConfigError, Membership, Snapshot};
use crate::token::{KeyRing, TokenCodec};

/// A pool's settings. All hold for the life of the pool except the key
/// ring, which [`Pool::set_keys`] replaces.
#[derive(Clone, Debug)]
pub struct PoolConfig {
    /// Seals and opens affinity tokens.
    pub tokens: TokenCodec,
    /// What happens to a session whose backend cannot serve it.
    pub failover: FailoverPolicy,
    /// Passive health.
    pub health: HealthPolicy,
    /// Bounded load for new sessions: none takes a backend whose in-flight
    /// requests exceed this factor times its share of all in flight (its
    /// share by its weight within its group, and its group's by group
    /// weight).
    pub new_session_bound: Option<f64>,
    /// Bounded load for keyed placement (consistent hashing with bounded
    /// loads): an overloaded owner passes the key to its next candidate.
    pub keyed_bound: Option<f64>,
    /// Seed of the stable hash for keyed placement; the same on every
    /// replica (see [`hash`](crate::hash)).
    pub hash_seed: u64,
    /// Keyed placement buckets keys by this many top bits of their hash
    /// (10 to 24, default 18: 262,144 buckets, a 512 KiB table for each
    /// group; 1 MiB past 65,536 backends). Each backend's share strays from
    /// its weight's by about `sqrt(1/points + 1/buckets)`: its points on
    /// the ring are 4,096 per unit of weight while the pool's weights add
    /// up to at most 512, and a share of 2,097,152 beyond (8 bytes each),
    /// its buckets its weight's share of the table. So about 2% for three
    /// backends of weight 1, 7% for 1,000, and 15% for 5,000, where 20
    /// bits bring it to 9%. Like the hash seed, it must be the same on every
    /// replica and must not change under live traffic: it decides which
    /// keys go where.
    pub keyed_table_bits: u8,
    /// Where the new-session schedule starts. Give each replica a random
    /// value so that replicas that start together do not send their first
    /// sessions to the same backend.
    pub schedule_seed: u64,
}

impl PoolConfig {
    /// Defaults: rebalance on failover, default passive health, no load
    /// bounds, hash seed 0, 2^18 keyed buckets, schedule seed 0.
    pub fn new(tokens: TokenCodec) -> Self {
        Self {
            tokens,
            failover: FailoverPolicy::Rebalance,
            health: HealthPolicy::default(),
            new_session_bound: None,
            keyed_bound: None,
            hash_seed: 0,
            keyed_table_bits: 18,
            schedule_seed: 0,
        }
    }

    /// Sets the failover policy.
    pub fn failover(mut self, policy: FailoverPolicy) -> Self {
        self.failover = policy;
        self
    }

    /// Sets the passive health policy.
    pub fn health(mut self, policy: HealthPolicy) -> Self {
        self.health = policy;
        self
    }

    /// Bounds new sessions to `factor` × the average load (e.g. 1.25).
    pub fn new_session_bound(mut self, factor: f64) -> Self {
        self.new_session_bound = Some(factor);
        self
    }

    /// Bounds keyed placement to `factor` × the average load: while a hash
    /// key's owner is over the bound, the key's requests go to its next
    /// candidate under it, as [`Outcome::Failover`](crate::Outcome::Failover)
    /// with [`Reason::Overloaded`](crate::Reason::Overloaded) and no token,
    /// and come back to the owner once it has room.
    pub fn keyed_bound(mut self, factor: f64) -> Self {
        self.keyed_bound = Some(factor);
        self
    }

    /// Sets the keyed-placement hash seed.
    pub fn hash_seed(mut self, seed: u64) -> Self {
        self.hash_seed = seed;
        self
    }

    /// Sets the keyed-placement bucket resolution, in bits (10 to 24).
    pub fn keyed_table_bits(mut self, bits: u8) -> Self {
        self.keyed_table_bits = bits;
        self
    }

    /// Sets the schedule seed.
    pub fn schedule_seed(mut self, seed: u64) -> Self {
        self.schedule_seed = seed;
        self
    }

    fn validate(&self) -> Result<(), ConfigError> {
        for c in [self.new_session_bound, self.keyed_bound]
            .into_iter()
            .flatten()
        {
            if c.is_nan() || c < 1.0 {
                return Err(ConfigError::LoadBound(c));
            }
        }
        if !crate::ring::TABLE_BITS.contains(&self.keyed_table_bits) {
            return Err(ConfigError::TableBits(self.keyed_table_bits));
        }
        Ok(())
    }
}

/// The live pool: readers [`load`](Pool::load) the current snapshot without
/// a lock; each change builds a new snapshot aside and publishes it in one
/// atomic swap, so no reader sees half an update.
///
/// # Example
///
/// ```
/// use std::time::Duration;
/// use sticky_core::token::{KeyRing, TokenCodec, TokenConfig};
/// use sticky_core::{BackendSpec, Keys, Membership, Outcome, Pool, PoolConfig};
///
/// let keys = KeyRing::new(["change me: at least sixteen bytes"]).unwrap();
/// let config = PoolConfig::new(TokenCodec::new(keys, TokenConfig::new("sticky")));
/// let pool = Pool::new(
///     config,
///     Membership::new()
///         .with(BackendSpec::new("b1"))
///         .with(BackendSpec::new("b2").weight(3)),
/// )
/// .unwrap();
/// let now = Duration::from_secs(1_700_000_000);
///
/// // A new session gets a backend and a token...
/// let before = pool.load();
/// let first = before.decide(&Keys::new().issue_token(), now);
/// assert_eq!(first.outcome, Outcome::New);
/// let token = first.token.clone().unwrap();
///
/// // ...and comes back to it, even after the pool changed.
/// pool.add(BackendSpec::new("a0")).unwrap();
/// let after = pool.load();
/// let again = after.decide(&Keys::new().issue_token().token(&token), now);
/// assert_eq!(again.outcome, Outcome::Hit);
/// assert_eq!(
///     after.member(again.backend.unwrap()).id(),
///     before.member(first.backend.unwrap()).id(),
/// );
/// ```
#[derive(Debug)]
pub struct Pool {
    current: ArcSwap<Snapshot>,
    /// Serialises writers (never taken by readers).
    writer: Mutex<()>,
}

impl Pool {
    /// A pool of `membership` under `config`.
    pub fn new(config: PoolConfig, membership: Membership) -> Result<Pool, ConfigError> {
        config.validate()?;
        let config = Arc::new(config);
        let seed = config.schedule_seed;
        let first = Snapshot::build(Arc::clone(&config), membership, None, 0, seed)?;
        Ok(Pool {
            current: ArcSwap::from_pointee(first),
            writer: Mutex::new(()),
        })
    }

    /// The current snapshot.
    #[inline]
    pub fn load(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }

    /// The pool's settings, as the current snapshot has them.
    pub fn config(&self) -> Arc<PoolConfig> {
        Arc::clone(&self.current.load().config)
    }

    /// Applies `change` to a copy of the membership and publishes the
    /// result as one new snapshot. Nothing is published if `change` or the
    /// build fails.
    pub fn update<F>(&self, change: F) -> Result<Arc<Snapshot>, ConfigError>
    where
        F: FnOnce(&mut Membership) -> Result<(), ConfigError>,
    {
        let _writer = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        let old = self.current.load_full();
        let mut membership = old.membership().clone();
        change(&mut membership)?;
        self.publish(&old, Arc::clone(&old.config), membership)
    }

    /// Replaces the key ring, as a rotation or a reload of the secrets
    /// does: from the next snapshot on, tokens are signed with the new
    /// ring's first key and opened with any of its keys. Everything else
    /// carries over: members, states, counters and health, and the
    /// settings. A token signed with a key the new ring still lists is
    /// re-issued under its first key on its session's next request
    /// ([`OpenedToken::refresh_due`](crate::token::OpenedToken::refresh_due));
    /// one signed with a key it no longer lists counts as no token, and its
    /// session starts again. [`KeyRing`]'s docs give the order in which
    /// replicas rotate.
    ///
    /// ```
    /// use std::time::Duration;
    /// use sticky_core::token::{KeyRing, TokenCodec, TokenConfig};
    /// use sticky_core::{BackendSpec, Keys, Membership, Outcome, Pool, PoolConfig};
    ///
    /// let old = "the old secret, sixteen bytes+";
    /// let new = "the new secret, sixteen bytes+";
    /// let codec = TokenCodec::new(KeyRing::new([old]).unwrap(), TokenConfig::new("sticky"));
    /// let members = Membership::new().with(BackendSpec::new("b1")).with(BackendSpec::new("b2"));
    /// let pool = Pool::new(PoolConfig::new(codec), members).unwrap();
    /// let now = Duration::from_secs(1_700_000_000);
    /// let first = pool.load().decide(&Keys::new().issue_token(), now);
    /// let token = first.token.unwrap();
    ///
    /// // The new secret signs; the old one still verifies.
    /// pool.set_keys(KeyRing::new([new, old]).unwrap()).unwrap();
    /// let again = pool.load().decide(&Keys::new().issue_token().token(&token), now);
    /// assert_eq!((again.outcome, again.backend), (Outcome::Refreshed, first.backend));
    /// let resigned = again.token.unwrap();
    ///
    /// // The old secret retired: only tokens signed with the new one hold.
    /// pool.set_keys(KeyRing::new([new]).unwrap()).unwrap();
    /// let snapshot = pool.load();
    /// let kept = snapshot.decide(&Keys::new().issue_token().token(&resigned), now);
    /// assert_eq!((kept.outcome, kept.backend), (Outcome::Hit, first.backend));
    /// let stale = snapshot.decide(&Keys::new().issue_token().token(&token), now);
    /// assert_eq!(stale.outcome, Outcome::Invalid);
    /// ```
    pub fn set_keys(&self, keys: KeyRing) -> Result<Arc<Snapshot>, ConfigError> {
        let _writer = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        let old = self.current.load_full();
        let mut config = PoolConfig::clone(&old.config);
        config.tokens = TokenCodec::new(keys, old.config.tokens.config().clone());
        self.publish(&old, Arc::new(config), old.membership().clone())
    }

    /// Builds the snapshot after `old` and publishes it. The caller holds
    /// the writer lock.
    fn publish(
        &self,
        old: &Snapshot,
        config: Arc<PoolConfig>,
        membership: Membership,
    ) -> Result<Arc<Snapshot>, ConfigError> {
        let seed = config.schedule_seed;
        let next = Arc::new(Snapshot::build(
            config,
            membership,
            Some(old),
            old.generation() + 1,
            seed,
        )?);
        self.current.store(Arc::clone(&next));
        Ok(next)
    }

    /// Adds a backend.
    pub fn add(&self, spec: BackendSpec) -> Result<Arc<Snapshot>, ConfigError> {
        self.update(|m| m.add(spec))
    }

    /// Removes a backend; its sessions fail over (or are rejected in strict
    /// mode) on their next request.
    pub fn remove(&self, id: &str) -> Result<Arc<Snapshot>, ConfigError> {
        self.update(|m| m.remove(id).map(drop))
    }

    /// Sets a backend's weight (0 drains).
    pub fn set_weight(&self, id: &str, weight: u32) -> Result<Arc<Snapshot>, ConfigError> {
        self.update(|m| {
            m.get_mut(id)?.weight = weight;
            Ok(())
        })
    }

    /// Sets a backend's administrative state (drain, disable, enable).
    pub fn set_state(&self, id: &str, state: BackendState) -> Result<Arc<Snapshot>, ConfigError> {
        self.update(|m| {
            m.get_mut(id)?.state = state;
            Ok(())
        })
    }

    /// Sets a group's weight.
    pub fn set_group_weight(
        &self,
        group: impl Into<GroupId>,
        weight: u32,
    ) -> Result<Arc<Snapshot>, ConfigError> {
        let group = group.into();
        self.update(|m| {
            m.set_group_weight(group, weight);
            Ok(())
        })
    }
}
