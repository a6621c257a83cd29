//! Session affinity ("sticky sessions") and weighted balancing decisions.
//!
//! `sticky-core` is the engine behind `tower-sticky`: pure and synchronous,
//! with no I/O, no async runtime and no HTTP types. Time comes in as an
//! argument, so every decision can be reproduced in a test.
//!
//! - A [`Pool`] holds the current [`Snapshot`] of the backends: names,
//!   weights, [states](BackendState), groups, and every table derived from
//!   them. Changes build a new snapshot aside and publish it in one atomic
//!   swap; readers never lock.
//! - [`Snapshot::decide`] turns the [`Keys`] found in a request (an
//!   affinity token, a route name, a key to hash) into a [`Decision`]: a
//!   backend, an [`Outcome`] and the token to issue.
//! - New sessions follow the weights exactly ([schedule](crate::Pool)),
//!   keys are placed by weighted consistent hashing over a
//!   [stable hash](hash), and tokens are authenticated and opaque
//!   ([`token`]).
//! - [Passive health](health) takes failing backends out and probes them
//!   back in.
//!
//! # Example
//!
//! ```
//! use std::time::Duration;
//! use sticky_core::token::{KeyRing, TokenCodec, TokenConfig};
//! use sticky_core::{BackendSpec, BackendState, Keys, Membership, Outcome, Pool, PoolConfig};
//!
//! let keys = KeyRing::new(["a 32-byte secret shared by replicas"]).unwrap();
//! let tokens = TokenCodec::new(
//!     keys,
//!     TokenConfig::new("sticky").idle_timeout(Duration::from_secs(1800)),
//! );
//! let pool = Pool::new(
//!     PoolConfig::new(tokens),
//!     Membership::new()
//!         .with(BackendSpec::new("b1"))
//!         .with(BackendSpec::new("b2")),
//! )
//! .unwrap();
//! let now = Duration::from_secs(1_700_000_000);
//!
//! let new = pool.load().decide(&Keys::new().issue_token(), now);
//! let token = new.token.unwrap();
//! let b = pool.load().member(new.backend.unwrap()).id().clone();
//!
//! // Draining keeps bound sessions where they are.
//! pool.set_state(b.as_str(), BackendState::Draining).unwrap();
//! let snapshot = pool.load();
//! let back = snapshot.decide(&Keys::new().issue_token().token(&token), now);
//! assert_eq!(back.outcome, Outcome::Hit);
//! assert_eq!(snapshot.member(back.backend.unwrap()).id(), &b);
//!
//! // A header key always lands on the same backend, on any replica.
//! let by_header = snapshot.decide(&Keys::new().hash(b"user-42"), now);
//! assert_eq!(by_header.backend, snapshot.decide(&Keys::new().hash(b"user-42"), now).backend);
//! ```

#![deny(missing_docs, unsafe_code, unreachable_pub, rust_2018_idioms)]

mod backend;
mod decide;
pub mod hash;
pub mod health;
mod pool;
mod ring;
mod schedule;
mod snapshot;
pub mod token;

pub use backend::{BackendId, BackendSpec, BackendState, GroupId, MAX_WEIGHT};
pub use decide::{Decision, FailoverPolicy, KeyKind, Keys, Outcome, Reason};
pub use health::{BackendStats, CheckPolicy, CheckVerdict, Counters, Health, HealthPolicy};
pub use pool::{Pool, PoolConfig};
pub use snapshot::{ConfigError, InFlight, Member, Membership, Snapshot};
