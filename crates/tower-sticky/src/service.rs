//! [`Sticky`]: the service that places each request on one backend.

use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::header::{Entry, HeaderValue, COOKIE};
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
/// left empty. A header without them is left as it is; in one with them,
/// the other pairs are kept byte for byte, whatever bytes they hold.
fn strip_cookies(headers: &mut HeaderMap, names: &[String]) {
    let mut entry = match headers.try_entry(COOKIE) {
        Ok(Entry::Occupied(entry)) => entry,
        Ok(Entry::Vacant(_)) => return,
        // Only a map at its size limit, which no HTTP server hands on: no
        // Cookie header goes on, rather than the LB cookie with them.
        Err(_) => {
            headers.remove(COOKIE);
            return;
        }
    };
    // Every value to keep, in order, once one has lost a pair.
    let mut kept: Option<Vec<HeaderValue>> = None;
    for (i, value) in entry.iter().enumerate() {
        match without_named(value, names) {
            None => {
                if let Some(kept) = &mut kept {
                    kept.push(value.clone());
                }
            }
            Some(rest) => kept
                .get_or_insert_with(|| entry.iter().take(i).cloned().collect())
                .extend(rest),
        }
    }
    let Some(kept) = kept else {
        return;
    };
    let mut kept = kept.into_iter();
    match kept.next() {
        // Every value of the entry goes with it.
        None => drop(entry.remove()),
        Some(first) => {
            // Replaces every value of the entry.
            entry.insert(first);
            kept.for_each(|value| entry.append(value));
        }
    }
}

/// `value` without the named cookies, in one pass over its bytes: `None`
/// when it holds none of them, `Some(None)` when nothing else is left.
fn without_named(value: &HeaderValue, names: &[String]) -> Option<Option<HeaderValue>> {
    let named = |pair: &[u8]| {
        let name = memchr::memchr(b'=', pair).map_or(pair, |at| &pair[..at]);
        names.iter().any(|n| n.as_bytes() == name.trim_ascii())
    };
    // Room for what is kept, taken at its first pair: a header that
    // held only the named cookies needs none.
    let push = |joined: &mut Vec<u8>, pair: &[u8]| {
        if !pair.is_empty() {
            if joined.is_empty() {
                joined.reserve(value.len());
            } else {
                joined.extend_from_slice(b"; ");
            }
            joined.extend_from_slice(pair);
        }
    };
    let bytes = value.as_bytes();
    // The pairs kept, once a named one has been met.
    let mut joined: Option<Vec<u8>> = None;
    let mut start = 0;
    for pair in affinity::pairs(bytes) {
        let before = &bytes[..start];
        start += pair.len() + 1;
        let pair = pair.trim_ascii();
        match &mut joined {
            Some(joined) if !named(pair) => push(joined, pair),
            Some(_) => {}
            None if named(pair) => {
                let mut kept = Vec::new();
                for pair in affinity::pairs(before) {
                    push(&mut kept, pair.trim_ascii());
                }
                joined = Some(kept);
            }
            None => {}
        }
    }
    // Pieces of a valid header value, joined by "; ", are valid. The
    // bytes become the value's own, without another copy.
    joined.map(|joined| {
        (!joined.is_empty()).then(|| HeaderValue::from_maybe_shared(Bytes::from(joined)).ok())?
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The Cookie headers left after stripping `sticky` and its twin.
    fn stripped(values: &[&str]) -> Vec<String> {
        let mut headers = HeaderMap::new();
        for value in values {
            headers.append(COOKIE, HeaderValue::from_str(value).unwrap());
        }
        strip_cookies(&mut headers, &["sticky".into(), "sticky_cors".into()]);
        headers
            .get_all(COOKIE)
            .iter()
            .map(|v| v.to_str().unwrap().to_owned())
            .collect()
    }

    /// A map too full to look the header up in loses every Cookie header,
    /// rather than pass the LB cookie on.
    #[test]
    fn a_full_map_keeps_no_cookie() {
        let mut headers = HeaderMap::new();
        headers.append(COOKIE, HeaderValue::from_static("a=1; sticky=t"));
        let filler = HeaderValue::from_static("x");
        for i in 0.. {
            let name = http::HeaderName::try_from(format!("x-{i}")).unwrap();
            if headers.try_insert(name, filler.clone()).is_err() {
                break;
            }
        }
        assert!(headers.try_entry(COOKIE).is_err(), "the map should be full");
        strip_cookies(&mut headers, &["sticky".into()]);
        assert!(!headers.contains_key(COOKIE));
    }

    #[test]
    fn only_the_named_cookies_are_stripped() {
        assert_eq!(stripped(&[]), Vec::<String>::new());
        assert_eq!(stripped(&["sticky=t"]), Vec::<String>::new());
        assert_eq!(stripped(&["sticky=t; sticky_cors=t"]), Vec::<String>::new());
        // Headers without them stay as they came, separators included.
        assert_eq!(stripped(&["a=1;b=2"]), ["a=1;b=2"]);
        assert_eq!(stripped(&["a=1;b=2", "sticky=t"]), ["a=1;b=2"]);
        assert_eq!(stripped(&["sticky=t", "a=1;b=2"]), ["a=1;b=2"]);
        // Before, between and after other pairs; empty pairs go too.
        assert_eq!(stripped(&["a=1;;sticky=t ; b=2"]), ["a=1; b=2"]);
        assert_eq!(stripped(&["a=1; sticky=t"]), ["a=1"]);
        assert_eq!(stripped(&[" sticky = t;a=1"]), ["a=1"]);
        // Names are compared whole; a value may hold anything.
        assert_eq!(
            stripped(&["stickyx=1; x=sticky; sticky_cors=t; s=a=b"]),
            ["stickyx=1; x=sticky; s=a=b"]
        );
        assert_eq!(
            stripped(&["c=1", "sticky=t; d=2", "e=3; f=4"]),
            ["c=1", "d=2", "e=3; f=4"]
        );
    }
}
