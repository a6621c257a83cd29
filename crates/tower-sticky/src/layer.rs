//! [`StickyLayer`]: the configuration of how keys are read and cookies
//! written.

use std::sync::Arc;

use cookie::SameSite;
use http::{HeaderName, StatusCode};
use tower_layer::Layer;

use crate::affinity::{Affinity, ClientIp, Limits};
use crate::backends::Backends;
use crate::service::Sticky;

/// Attributes of the load-balancer cookie.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CookieAttributes {
    /// `Path` (default `/`). A response to a request outside it sets no
    /// cookie: the browser would not send such a cookie back with the
    /// requests it came from, and it would replace the session's cookie
    /// under the path. Those requests are placed by their other keys, or
    /// as new sessions (and count as such in the backends' counters). A
    /// path that does not start with `/` is written as `/`. The request's
    /// path is the one the client asked for: under axum's `nest_service`,
    /// which strips its prefix, the layer reads axum's `OriginalUri` with
    /// the `axum` feature. Without it, or behind anything else that
    /// strips a prefix before the layer (a proxy in front included), a
    /// `Path` other than `/` never matches and no cookie is ever set.
    pub path: String,
    /// `Domain` (default none: host-only).
    pub domain: Option<String>,
    /// `Secure` (default off; turn on behind TLS). Always on with
    /// `SameSite=None`, which browsers refuse without it.
    pub secure: bool,
    /// `HttpOnly` (default on: scripts never see the token).
    pub http_only: bool,
    /// `SameSite` (default `Lax`); `None` brings `Secure` with it.
    pub same_site: SameSite,
    /// `Partitioned` (CHIPS; default off).
    pub partitioned: bool,
    /// Also set a `<name>CORS` twin with `SameSite=None; Secure`, for
    /// cross-site requests, as cloud balancers do (default off).
    pub cors_twin: bool,
}

impl Default for CookieAttributes {
    fn default() -> Self {
        Self {
            path: "/".into(),
            domain: None,
            secure: false,
            http_only: true,
            same_site: SameSite::Lax,
            partitioned: false,
            cors_twin: false,
        }
    }
}

impl CookieAttributes {
    /// The `Path` written: `/` in place of one that does not start with
    /// `/`, which a browser would replace with a path of its own choosing
    /// for each request.
    fn written_path(&self) -> &str {
        if self.path.starts_with('/') {
            &self.path
        } else {
            "/"
        }
    }

    /// Whether a browser sends a cookie with this `Path` along with a
    /// request for `request_path` (RFC 6265, 5.1.4): the same path, or one
    /// below it.
    pub(crate) fn covers(&self, request_path: &str) -> bool {
        let path = self.written_path();
        match request_path.strip_prefix(path) {
            None => false,
            Some(rest) => rest.is_empty() || path.ends_with('/') || rest.starts_with('/'),
        }
    }

    /// The attributes as `Set-Cookie` writes them after `name=value`
    /// (`; Path=/; HttpOnly; SameSite=Lax`), rendered by the cookie crate;
    /// a CORS `twin` is `Secure` and `SameSite=None`. `Max-Age` varies per
    /// token and is not included.
    pub(crate) fn rendered(&self, twin: bool) -> String {
        let same_site = if twin { SameSite::None } else { self.same_site };
        let mut cookie = cookie::Cookie::build(("n", "v"))
            .path(self.written_path())
            .http_only(self.http_only)
            .secure(self.secure || same_site == SameSite::None)
            .same_site(same_site)
            .partitioned(self.partitioned);
        if let Some(domain) = &self.domain {
            cookie = cookie.domain(domain.as_str());
        }
        let text = cookie.build().to_string();
        text.strip_prefix("n=v").unwrap_or_default().to_owned()
    }
}

#[derive(Clone, Debug)]
pub(crate) struct Config {
    pub(crate) chain: Vec<Affinity>,
    pub(crate) cookie: CookieAttributes,
    pub(crate) token_header: Option<HeaderName>,
    pub(crate) send_cookie: bool,
    pub(crate) strip_cookie: bool,
    pub(crate) cache_private: bool,
    pub(crate) failure_statuses: Vec<StatusCode>,
    pub(crate) failure_errors: fn(&(dyn std::error::Error + 'static)) -> bool,
    pub(crate) client_ip: ClientIp,
    pub(crate) limits: Limits,
}

/// Applies [`Sticky`] to a [`Backends`] set.
///
/// The layer holds only configuration and is cheap to clone. By default
/// the chain is `[Affinity::Cookie]`: a signed cookie pins each session,
/// new sessions follow the weights.
///
/// See [`Sticky`] for the request flow and an example.
#[derive(Clone, Debug)]
pub struct StickyLayer {
    config: Arc<Config>,
}

impl Default for StickyLayer {
    fn default() -> Self {
        Self::new()
    }
}

impl StickyLayer {
    /// Cookie affinity with default attributes.
    pub fn new() -> Self {
        Self {
            config: Arc::new(Config {
                chain: vec![Affinity::Cookie],
                cookie: CookieAttributes::default(),
                token_header: None,
                send_cookie: true,
                strip_cookie: false,
                cache_private: true,
                failure_statuses: vec![
                    StatusCode::BAD_GATEWAY,
                    StatusCode::SERVICE_UNAVAILABLE,
                    StatusCode::GATEWAY_TIMEOUT,
                ],
                failure_errors: |_| true,
                client_ip: ClientIp::Peer,
                limits: Limits::default(),
            }),
        }
    }

    fn edit(mut self, f: impl FnOnce(&mut Config)) -> Self {
        f(Arc::make_mut(&mut self.config));
        self
    }

    /// Sets the affinity chain, tried in order; the first source present
    /// wins. A cookie that does not check out counts as absent: the next
    /// source present places the request, and the cookie is replaced.
    /// A route does not end the walk, as it may name no backend: then the
    /// next source places the request; and a valid cookie later in the
    /// chain wins over a route. Include [`Affinity::Cookie`] to read and
    /// issue cookies.
    ///
    /// A hash key (header, app cookie, query, client IP) found before the
    /// cookie ends the walk: the key alone places its session. When the
    /// key's backend cannot serve, the session moves while it must and
    /// comes back with its key once the backend can (as consistent hashing
    /// does), and it is sent no token, which would never be read. With the
    /// cookie listed first, a session that moves is sent a token, and while
    /// it sends that back the token keeps it where it moved.
    pub fn affinity(self, chain: impl IntoIterator<Item = Affinity>) -> Self {
        let chain = chain.into_iter().collect();
        self.edit(|c| c.chain = chain)
    }

    /// Sets the cookie attributes.
    pub fn cookie_attributes(self, attributes: CookieAttributes) -> Self {
        self.edit(|c| c.cookie = attributes)
    }

    /// Also sends the token in this response header and accepts it from the
    /// same request header: stickiness for clients without cookies (gRPC,
    /// API clients).
    ///
    /// A token names a backend, not a session: sessions that start on one
    /// backend within the same second get the same token, so it is no
    /// session id for the application.
    pub fn token_header(self, name: HeaderName) -> Self {
        self.edit(|c| c.token_header = Some(name))
    }

    /// Whether tokens go out as `Set-Cookie` (default on). Turn it off for
    /// clients that only use the [token header](Self::token_header), such
    /// as gRPC.
    ///
    /// A backend's own `Set-Cookie` is passed on untouched, also one for
    /// the load-balancer cookie's name: an application may end a session's
    /// affinity by expiring that cookie (`Max-Age=0`), and its CORS twin
    /// if it has one. The layer then sets no cookie of its own in that
    /// response. Name the cookie (in the
    /// [`TokenConfig`](sticky_core::token::TokenConfig)) so that no
    /// application uses the name for anything else, and give each `Sticky`
    /// that serves the same site its own name (or its own `Path`, which
    /// needs the layer to see the whole request path: see
    /// [`CookieAttributes::path`]): a token from another one names no
    /// backend here, so each would move the other's sessions.
    pub fn send_cookie(self, send: bool) -> Self {
        self.edit(|c| c.send_cookie = send)
    }

    /// Removes the load-balancer cookie (and its
    /// [`cors_twin`](CookieAttributes::cors_twin)) from requests before
    /// they reach the backend, as HAProxy's `indirect` does (default: left
    /// in place). The other cookies reach the backend byte for byte, and a
    /// `Cookie` header left empty is dropped.
    pub fn strip_cookie(self, strip: bool) -> Self {
        self.edit(|c| c.strip_cookie = strip)
    }

    /// Adds `Cache-Control: private` to responses that get a cookie (or,
    /// outside the cookie's `Path`, the token header in its place) and are
    /// otherwise cacheable, so no shared cache hands one client's token to
    /// another (default on).
    pub fn cache_private(self, on: bool) -> Self {
        self.edit(|c| c.cache_private = on)
    }

    /// Response statuses that count as backend failures for passive health
    /// (default 502, 503, 504).
    pub fn failure_statuses(self, statuses: impl IntoIterator<Item = StatusCode>) -> Self {
        let statuses = statuses.into_iter().collect();
        self.edit(|c| c.failure_statuses = statuses)
    }

    /// Which backend errors count as failures for passive health (default:
    /// all). A request shed by the backend's own `LoadShed` never counts:
    /// the backend is busy, not broken.
    ///
    /// Leave out errors that say nothing of the backend's health. A tonic
    /// `Channel` reports a caller's own deadline (`grpc-timeout`) as an
    /// error, so a caller with a tight deadline on a slow method could take
    /// a healthy server out of service for everyone, with its sessions:
    ///
    /// ```
    /// use std::error::Error;
    /// use tower_sticky::StickyLayer;
    ///
    /// fn not_a_deadline(error: &(dyn Error + 'static)) -> bool {
    ///     let mut current = Some(error);
    ///     while let Some(e) = current {
    ///         if e.is::<tonic::TimeoutExpired>() {
    ///             return false;
    ///         }
    ///         current = e.source();
    ///     }
    ///     true
    /// }
    /// let layer = StickyLayer::new().failure_errors(not_a_deadline);
    /// ```
    ///
    /// The price: a server that stops answering altogether then never
    /// leaves service by passive health alone, since its calls end in
    /// exactly those deadlines. Pair it with an active health check
    /// ([`Backends::set_checks_passing`](crate::Backends::set_checks_passing)),
    /// or leave timeouts counted.
    pub fn failure_errors(self, counts: fn(&(dyn std::error::Error + 'static)) -> bool) -> Self {
        self.edit(|c| c.failure_errors = counts)
    }

    /// Which forwarding headers to believe for [`Affinity::ClientIp`]
    /// (default: none, the peer address).
    pub fn client_ip(self, policy: ClientIp) -> Self {
        self.edit(|c| c.client_ip = policy)
    }

    /// Bounds on what the layer reads from a request.
    pub fn limits(self, limits: Limits) -> Self {
        self.edit(|c| c.limits = limits)
    }
}

impl<S> Layer<Backends<S>> for StickyLayer {
    type Service = Sticky<S>;

    fn layer(&self, backends: Backends<S>) -> Sticky<S> {
        Sticky::from_parts(backends, Arc::clone(&self.config))
    }
}
