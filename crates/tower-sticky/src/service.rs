//! [`Sticky`]: the service that places each request on one backend.

use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::header::{HeaderValue, COOKIE};
use http::{HeaderMap, Request, Response};
use sticky_core::{BackendId, Keys, Outcome};
use tower_service::Service;

use crate::affinity::{self, KeySource};
use crate::backends::{wall_clock, Backends};
use crate::body::ResponseBody;
use crate::error::{BoxError, Error, ErrorsAsResponses};
use crate::future::ResponseFuture;
use crate::layer::{Config, StickyLayer};

/// Where a request went and why; a response extension on every response,
/// next to the [`Outcome`] itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Placement {
    /// How the request was placed.
    pub outcome: Outcome,
    /// The backend that answered.
    pub backend: BackendId,
    /// The source of the key that placed it, or [`KeySource::None`] when
    /// the weights did. A key that did not check out placed nothing: the
    /// next key did, or the weights; so did the weights when a session
    /// failed over without a hash key.
    pub source: KeySource,
}

/// Places each request on one of several backend services: reads the
/// affinity keys, asks sticky-core for a decision, calls the chosen
/// backend, and writes the cookie (or token header) on the way back.
///
/// Always ready: the chosen backend is cloned and driven (`poll_ready`,
/// then `call`) inside the response future, so a backend that is slow to
/// become ready delays only its own requests. Backpressure belongs in each
/// backend's own stack (concurrency limit, load shed, timeout); its errors,
/// and 502/503/504 answers, feed passive health, except a request shed as
/// overloaded (tower's `LoadShed`), which answers 503 and leaves the
/// backend in service, and errors that
/// [`StickyLayer::failure_errors`] leaves out.
///
/// `Sticky` and its response future are `Send` when the backend service is
/// `Send + Sync` and its future is `Send`: the backend set is shared
/// between them. A backend that is not `Sync` (`BoxCloneService`, say) can
/// be made so with `BoxCloneSyncService` or a `Buffer`. One
/// caveat from the compiler, not the layer: if a backend's error type is a
/// bare `Box<dyn Error + Send + Sync>`, rustc cannot always prove an
/// `async` block holding the call is `Send` ("implementation of `From` is
/// not general enough"). Backends with a concrete error type (axum routes,
/// hyper clients, tonic channels, or a small wrapper type of your own) do
/// not hit it.
///
/// # Example
///
/// ```
/// use std::convert::Infallible;
/// use http::{header, Request, Response};
/// use sticky_core::token::{KeyRing, TokenCodec, TokenConfig};
/// use sticky_core::{BackendSpec, PoolConfig};
/// use tower::{service_fn, ServiceBuilder, ServiceExt};
/// use tower_sticky::{Backends, StickyLayer};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
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
/// let service = ServiceBuilder::new().layer(StickyLayer::new()).service(backends);
///
/// // A new session gets a cookie...
/// let first = service.clone().oneshot(Request::new(String::new())).await.unwrap();
/// let cookie = first.headers()[header::SET_COOKIE].to_str().unwrap();
/// let pair = cookie.split(';').next().unwrap().to_owned();
/// let home = first.into_body().into_inner();
///
/// // ...and every request that sends it back lands on the same backend.
/// for _ in 0..10 {
///     let request = Request::builder().header(header::COOKIE, &pair).body(String::new()).unwrap();
///     let response = service.clone().oneshot(request).await.unwrap();
///     assert!(response.headers().get(header::SET_COOKIE).is_none());
///     assert_eq!(response.into_body().into_inner(), home);
/// }
/// # }
/// ```
pub struct Sticky<S> {
    backends: Backends<S>,
    config: Arc<Config>,
    /// The LB cookie, then its CORS twin.
    cookies: Arc<Cookies>,
}

impl<S> Clone for Sticky<S> {
    fn clone(&self) -> Self {
        Self {
            backends: self.backends.clone(),
            config: Arc::clone(&self.config),
            cookies: Arc::clone(&self.cookies),
        }
    }
}

impl<S> fmt::Debug for Sticky<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sticky")
            .field("backends", &self.backends)
            .field("config", &self.config)
            .finish()
    }
}

impl<S> Sticky<S> {
    /// Cookie affinity over `backends`, with default settings.
    pub fn new(backends: Backends<S>) -> Self {
        tower_layer::Layer::layer(&StickyLayer::new(), backends)
    }

    /// A [`StickyLayer`] to configure.
    pub fn layer() -> StickyLayer {
        StickyLayer::new()
    }

    pub(crate) fn from_parts(backends: Backends<S>, config: Arc<Config>) -> Self {
        let name = backends.config().tokens.config().name.clone();
        let mut names = vec![name.clone()];
        if config.cookie.cors_twin {
            names.push(format!("{name}CORS"));
        }
        let attributes = (0..names.len())
            .map(|i| config.cookie.rendered(i > 0))
            .collect();
        Self {
            backends,
            config,
            cookies: Arc::new(Cookies { names, attributes }),
        }
    }

    /// The backend set (also the handle that changes it).
    pub fn get_ref(&self) -> &Backends<S> {
        &self.backends
    }

    /// The backend set, mutably.
    pub fn get_mut(&mut self) -> &mut Backends<S> {
        &mut self.backends
    }

    /// The backend set.
    pub fn into_inner(self) -> Backends<S> {
        self.backends
    }

    /// Answers errors with empty 503/502/504 responses instead of failing,
    /// as axum's `route_service` and `fallback_service` require (see
    /// [`ErrorsAsResponses`]).
    pub fn errors_as_responses(self) -> ErrorsAsResponses<Self> {
        ErrorsAsResponses::new(self)
    }
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for Sticky<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone,
    S::Error: Into<BoxError>,
    ReqBody: 'static,
{
    type Response = Response<ResponseBody<ResBody>>;
    type Error = Error;
    type Future = ResponseFuture<S, ReqBody>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        let table = self.backends.load();
        let now = wall_clock();
        let (mut parts, body) = request.into_parts();
        let config = &self.config;
        let (decision, sources, issue_tokens) = {
            let found = affinity::find(
                &parts,
                &config.chain,
                &self.cookies.names,
                config.token_header.as_ref(),
                &config.client_ip,
                &config.limits,
                &|token| table.snapshot.config().tokens.open(token, now).is_ok(),
            );
            let keys = Keys {
                token: found.token,
                route: found.route,
                hash: found.hash.as_ref().map(|h| h.bytes()),
                issue_token: found.reads_token,
            };
            (
                table.snapshot.decide(&keys, now),
                found.sources,
                found.reads_token,
            )
        };
        if config.strip_cookie {
            strip_cookies(&mut parts.headers, &self.cookies.names);
        }
        ResponseFuture::new(
            table,
            decision,
            sources,
            Request::from_parts(parts, body),
            Arc::clone(&self.config),
            Arc::clone(&self.cookies),
            issue_tokens,
            now,
        )
    }
}

/// The cookies the layer reads and sets: the LB cookie, then its CORS
/// twin.
pub(crate) struct Cookies {
    pub(crate) names: Vec<String>,
    /// Each cookie's attributes as they follow `name=value` in
    /// `Set-Cookie` (`; Path=/; HttpOnly; ...`), rendered once.
    pub(crate) attributes: Vec<String>,
}

/// Removes the named cookies from every `Cookie` header, dropping headers
/// left empty. The other pairs are kept byte for byte, whatever bytes they
/// hold.
fn strip_cookies(headers: &mut HeaderMap, names: &[String]) {
    if !headers.contains_key(COOKIE) {
        return;
    }
    let kept: Vec<HeaderValue> = headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|value| {
            let pairs: Vec<&[u8]> = value
                .as_bytes()
                .split(|&b| b == b';')
                .map(<[u8]>::trim_ascii)
                .filter(|pair| {
                    let name = pair.split(|&b| b == b'=').next().unwrap_or(pair);
                    !pair.is_empty() && !names.iter().any(|n| n.as_bytes() == name.trim_ascii())
                })
                .collect();
            // Pieces of a valid header value, joined by "; ", are valid.
            (!pairs.is_empty()).then(|| HeaderValue::from_bytes(&pairs.join(&b"; "[..])).ok())?
        })
        .collect();
    headers.remove(COOKIE);
    for value in kept {
        headers.append(COOKIE, value);
    }
}
