//! Sticky sessions and weighted load balancing as tower middleware.
//!
//! [`Sticky`] places each request on one of several backend services and
//! keeps every session on its backend:
//!
//! 1. the [affinity chain](Affinity) reads keys from the request: the
//!    signed load-balancer cookie, a header or gRPC metadata entry, an
//!    application cookie, a Tomcat route suffix, a query parameter, the
//!    client IP;
//! 2. [`sticky_core`] decides: hit, new, refreshed, expired, invalid,
//!    failover or rejected, and the token to issue;
//! 3. the chosen backend is cloned and called with the request;
//! 4. the response gets the cookie (and token header) when one is due, an
//!    [`Outcome`](sticky_core::Outcome) and a [`Placement`] extension, and
//!    its status feeds passive health.
//!
//! [`Backends`] is both the set of services and the handle that changes it
//! at runtime (add, remove, reweight, drain, disable, enable, or a
//! [`Discover`](tower::discover::Discover) stream).
//!
//! # Example: inside an axum app
//!
//! ```
//! use std::convert::Infallible;
//! use axum::{body::Body, routing::get, Router};
//! use http::{Request, Response, StatusCode};
//! use sticky_core::token::{KeyRing, TokenCodec, TokenConfig};
//! use sticky_core::{BackendSpec, PoolConfig};
//! use tower::service_fn;
//! use tower_sticky::{Backends, Sticky};
//!
//! let shard = |name: &'static str| {
//!     service_fn(move |_req: Request<Body>| async move {
//!         Ok::<_, Infallible>(Response::new(Body::from(name)))
//!     })
//! };
//! let keys = KeyRing::new(["a secret shared by every replica"]).unwrap();
//! let config = PoolConfig::new(TokenCodec::new(keys, TokenConfig::new("sticky")));
//! let backends = Backends::new(
//!     config,
//!     [(BackendSpec::new("cart-1"), shard("cart-1")), (BackendSpec::new("cart-2"), shard("cart-2"))],
//! )
//! .unwrap();
//!
//! // axum wants services that never fail: strict-mode rejections become
//! // 503, backend errors 502. (To map responses further, wrap it with
//! // `tower::util::MapResponse::new`; `ServiceExt::map_response` cannot
//! // infer the request body type here.)
//! let carts = Sticky::new(backends.clone()).errors_as_responses();
//! // `nest_service` hands `/cart` and everything under it to the layer
//! // (`route_service` would match `/cart` alone).
//! let app: Router = Router::new()
//!     .route("/", get(|| async { "home" }))
//!     .nest_service("/cart", carts);
//! # let _ = (app, StatusCode::OK);
//! ```
//!
//! # Example: around tonic clients
//!
//! gRPC clients have no cookies: key each call by a metadata entry, and let
//! clients that have no key of their own carry the token in a header.
//!
//! ```
//! use http::HeaderName;
//! use tower_sticky::{Affinity, StickyLayer};
//!
//! let layer = StickyLayer::new()
//!     .affinity([Affinity::Header(HeaderName::from_static("x-session-id")), Affinity::Cookie])
//!     .token_header(HeaderName::from_static("x-sticky-token"));
//! // `ServiceBuilder::new().layer(layer).service(backends)` over
//! // `tonic::transport::Channel`s is a transport for a tonic client.
//! # let _ = layer;
//! ```

#![deny(missing_docs, unsafe_code, unreachable_pub, rust_2018_idioms)]

mod affinity;
mod backends;
mod error;
mod future;
mod layer;
mod service;

pub use affinity::{Affinity, ClientIp, IpNetwork, IpNetworkError, KeySource, Limits};
pub use backends::{BackendStatus, Backends};
pub use error::{BoxError, Error, ErrorsAsResponses, ErrorsAsResponsesFuture, Unsent};
pub use future::ResponseFuture;
pub use layer::{CookieAttributes, StickyLayer};
pub use service::{Placement, Sticky};

#[doc(no_inline)]
pub use sticky_core;
