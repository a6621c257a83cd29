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
//!    its status feeds passive health; its body, a [`ResponseBody`], keeps
//!    the request counted as in flight on the backend until it is over.
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
//! calls without one carry the layer's token in a metadata entry instead.
//! The stack over one lazily connected `Channel` per server is a transport
//! any generated client takes, in place of `Channel::balance_list`.
//!
//! ```
//! use http::HeaderName;
//! use sticky_core::token::{KeyRing, TokenCodec, TokenConfig};
//! use sticky_core::{BackendSpec, PoolConfig};
//! use tonic::transport::Channel;
//! use tower::ServiceBuilder;
//! use tower_sticky::{Affinity, Backends, StickyLayer};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let servers = ["10.0.0.1:50051", "10.0.0.2:50051", "10.0.0.3:50051"];
//! let channels = servers.map(|addr| {
//!     let endpoint = Channel::from_shared(format!("http://{addr}")).unwrap();
//!     (BackendSpec::new(addr), endpoint.connect_lazy())
//! });
//! let keys = KeyRing::new(["a secret shared by every replica"]).unwrap();
//! let config = PoolConfig::new(TokenCodec::new(keys, TokenConfig::new("x-sticky-token")));
//! let backends = Backends::new(config, channels).unwrap();
//!
//! let token = HeaderName::from_static("x-sticky-token");
//! // With the `tonic` feature, `.map_err(tonic::Status::from)` here hands
//! // callers gRPC statuses for the layer's errors (see `Error`).
//! let transport = ServiceBuilder::new()
//!     .layer(
//!         StickyLayer::new()
//!             .affinity([Affinity::Header(HeaderName::from_static("x-session-id")), Affinity::Cookie])
//!             .token_header(token)
//!             .send_cookie(false),
//!     )
//!     .service(backends.clone());
//!
//! # fn is_transport<T: tonic::client::GrpcService<tonic::body::Body>>(_: &T) {}
//! # is_transport(&transport);
//! // `GreeterClient::new(transport)` with a generated client; here the
//! // untyped one:
//! let client = tonic::client::Grpc::new(transport);
//! # let _ = client;
//! // Servers come and go through the handle (or a `Discover` stream).
//! backends.drain("10.0.0.3:50051").unwrap();
//! # }
//! ```

#![deny(missing_docs, unsafe_code, unreachable_pub, rust_2018_idioms)]

mod affinity;
mod backends;
mod body;
mod error;
mod future;
mod layer;
mod service;

pub use affinity::{Affinity, ClientIp, IpNetwork, IpNetworkError, KeySource, Limits};
pub use backends::{BackendStatus, Backends};
pub use body::ResponseBody;
pub use error::{BoxError, Error, ErrorsAsResponses, ErrorsAsResponsesFuture, Unsent};
pub use future::ResponseFuture;
pub use layer::{CookieAttributes, StickyLayer};
pub use service::{Placement, Sticky};

/// The `SameSite` attribute's values, for [`CookieAttributes::same_site`]
/// (from the `cookie` crate).
#[doc(no_inline)]
pub use cookie::SameSite;
#[doc(no_inline)]
pub use sticky_core;
