//! End to end over real sockets: an axum app with ordinary routes and a
//! sticky `/cart` over three in-process backends, served by `axum::serve`
//! on an ephemeral port and driven by a hyper client that keeps cookies per
//! simulated client.
//!
//! Each backend counts visits per app session (a cookie it sets) in its own
//! memory, so a misrouted request shows up as a different backend name or a
//! counter that restarts at 1.
//!
//! A minimal copy of `examples/axum_app.rs`: the example is a binary and
//! cannot be imported.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::http::header::{HeaderValue, COOKIE, SET_COOKIE};
use axum::http::{HeaderMap, Request, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::task::JoinSet;
use tower::util::MapResponse;
use tower::Layer;
use tower_sticky::sticky_core::token::{KeyRing, TokenCodec, TokenConfig};
use tower_sticky::sticky_core::{BackendSpec, BackendState, PoolConfig};
use tower_sticky::{Affinity, Backends, CookieAttributes, Placement, Sticky, StickyLayer};

const NAMES: [&str; 3] = ["b1", "b2", "b3"];
const SESSION_COOKIE: &str = "sid";
const STICKY_COOKIE: &str = "sticky";

// ---------------------------------------------------------------- the app

#[derive(Clone)]
struct Shard {
    name: &'static str,
    visits: Arc<Mutex<HashMap<String, u32>>>,
    next: Arc<AtomicU64>,
}

fn request_cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(n, _)| *n == name)
        .map(|(_, v)| v)
}

/// Counts this session's visits; answers `"<backend> <visits>"`.
async fn visit(State(shard): State<Shard>, headers: HeaderMap) -> Response {
    let (id, new) = match request_cookie(&headers, SESSION_COOKIE) {
        Some(id) => (id.to_owned(), false),
        None => {
            let n = shard.next.fetch_add(1, Ordering::Relaxed);
            (format!("{}-{n}", shard.name), true)
        }
    };
    let count = {
        let mut visits = shard.visits.lock().unwrap();
        let count = visits.entry(id.clone()).or_default();
        *count += 1;
        *count
    };
    let mut response = format!("{} {count}", shard.name).into_response();
    if new {
        let cookie = format!("{SESSION_COOKIE}={id}; Path=/; HttpOnly");
        response
            .headers_mut()
            .append(SET_COOKIE, HeaderValue::from_str(&cookie).unwrap());
    }
    response
}

fn backend(name: &'static str) -> Router {
    Router::new().route("/", get(visit)).with_state(Shard {
        name,
        visits: Arc::default(),
        next: Arc::default(),
    })
}

fn outcome_header<B>(mut response: http::Response<B>) -> http::Response<B> {
    if let Some(placement) = response.extensions().get::<Placement>().cloned() {
        let value = HeaderValue::from_str(placement.outcome.as_str()).unwrap();
        response.headers_mut().insert("x-sticky-outcome", value);
        let source = HeaderValue::from_static(placement.source.as_str());
        response.headers_mut().insert("x-sticky-source", source);
    }
    response
}

/// Serves the app on an ephemeral port; returns its address and the handle
/// to its backends.
async fn start() -> (SocketAddr, Backends<Router>) {
    let keys = KeyRing::new(["end-to-end test secret, 32 bytes"]).unwrap();
    let config = PoolConfig::new(TokenCodec::new(keys, TokenConfig::new(STICKY_COOKIE)));
    let backends = Backends::new(
        config,
        NAMES.map(|name| (BackendSpec::new(name), backend(name))),
    )
    .unwrap();
    let carts = MapResponse::new(
        Sticky::new(backends.clone()).errors_as_responses(),
        outcome_header,
    );
    // The same backends placed by client IP, read from axum's ConnectInfo.
    let by_ip = MapResponse::new(
        StickyLayer::new()
            .affinity([Affinity::ClientIp])
            .layer(backends.clone())
            .errors_as_responses(),
        outcome_header,
    );
    // The same backends under a cookie of their own by its Path, as README
    // suggests for a second mount.
    let wishlists = MapResponse::new(
        StickyLayer::new()
            .cookie_attributes(CookieAttributes {
                path: "/wishlist".into(),
                ..CookieAttributes::default()
            })
            .layer(backends.clone())
            .errors_as_responses(),
        outcome_header,
    );
    let app = Router::new()
        .route("/", get(|| async { "home" }))
        .route("/health", get(|| async { "ok" }))
        .nest_service("/cart", carts)
        .nest_service("/by-ip", by_ip)
        .nest_service("/wishlist", wishlists);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = app.into_make_service_with_connect_info::<SocketAddr>();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (addr, backends)
}

// ------------------------------------------------------------- the client

/// One browser: its own cookie jar over a shared connection pool.
struct Browser {
    http: Client<HttpConnector, Empty<Bytes>>,
    addr: SocketAddr,
    jar: BTreeMap<String, String>,
}

#[derive(Debug)]
struct Reply {
    status: StatusCode,
    set_cookies: Vec<String>,
    outcome: Option<String>,
    source: Option<String>,
    body: String,
}

impl Reply {
    fn sticky_cookie(&self) -> Option<&str> {
        self.set_cookies
            .iter()
            .find(|c| c.starts_with(&format!("{STICKY_COOKIE}=")))
            .map(String::as_str)
    }

    /// `(backend, visits)` from a `/cart` answer.
    fn visit(&self) -> (String, u32) {
        assert_eq!(self.status, StatusCode::OK, "{self:?}");
        let (name, count) = self.body.split_once(' ').expect("`<backend> <visits>`");
        (name.to_owned(), count.parse().expect("a visit count"))
    }
}

impl Browser {
    fn new(http: &Client<HttpConnector, Empty<Bytes>>, addr: SocketAddr) -> Self {
        Self {
            http: http.clone(),
            addr,
            jar: BTreeMap::new(),
        }
    }

    async fn get(&mut self, path: &str) -> Reply {
        let mut request = Request::get(format!("http://{}{path}", self.addr));
        if !self.jar.is_empty() {
            let cookies: Vec<String> = self.jar.iter().map(|(n, v)| format!("{n}={v}")).collect();
            request = request.header(COOKIE, cookies.join("; "));
        }
        let response = self
            .http
            .request(request.body(Empty::new()).unwrap())
            .await
            .unwrap();
        let (parts, body) = response.into_parts();
        let set_cookies: Vec<String> = parts
            .headers
            .get_all(SET_COOKIE)
            .iter()
            .map(|v| v.to_str().unwrap().to_owned())
            .collect();
        for cookie in &set_cookies {
            let pair = cookie.split(';').next().unwrap();
            let (name, value) = pair.split_once('=').unwrap();
            self.jar
                .insert(name.trim().to_owned(), value.trim().to_owned());
        }
        let body = body.collect().await.unwrap().to_bytes();
        Reply {
            status: parts.status,
            set_cookies,
            outcome: parts
                .headers
                .get("x-sticky-outcome")
                .map(|v| v.to_str().unwrap().to_owned()),
            source: parts
                .headers
                .get("x-sticky-source")
                .map(|v| v.to_str().unwrap().to_owned()),
            body: String::from_utf8(body.to_vec()).unwrap(),
        }
    }
}

fn http_client() -> Client<HttpConnector, Empty<Bytes>> {
    Client::builder(TokioExecutor::new()).build_http()
}

// ------------------------------------------------------------------ tests

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifty_clients_never_leave_their_backend() {
    let (addr, _backends) = start().await;
    let http = http_client();
    let mut clients = JoinSet::new();
    for _ in 0..50 {
        let mut browser = Browser::new(&http, addr);
        clients.spawn(async move {
            let mut seen = Vec::new();
            for _ in 0..10 {
                seen.push(browser.get("/cart").await.visit());
            }
            seen
        });
    }
    let mut per_backend: BTreeMap<String, usize> = BTreeMap::new();
    let mut misroutes = 0;
    while let Some(seen) = clients.join_next().await {
        let seen = seen.unwrap();
        let home = seen[0].0.clone();
        for (i, (backend, visits)) in seen.iter().enumerate() {
            if *backend != home || *visits != i as u32 + 1 {
                misroutes += 1;
            }
        }
        *per_backend.entry(home).or_default() += 1;
    }
    assert_eq!(misroutes, 0, "clients per backend: {per_backend:?}");
    // New sessions follow the (equal) weights.
    assert_eq!(per_backend.len(), 3, "{per_backend:?}");
    assert!(
        per_backend.values().all(|&n| (16..=17).contains(&n)),
        "{per_backend:?}"
    );
}

#[tokio::test]
async fn only_the_first_response_sets_the_sticky_cookie() {
    let (addr, _backends) = start().await;
    let mut browser = Browser::new(&http_client(), addr);

    let first = browser.get("/cart").await;
    assert_eq!(first.status, StatusCode::OK);
    assert_eq!(first.outcome.as_deref(), Some("new"));
    let cookie = first.sticky_cookie().expect("a sticky Set-Cookie");
    let attributes: Vec<&str> = cookie.split(';').map(str::trim).skip(1).collect();
    for wanted in ["HttpOnly", "SameSite=Lax", "Path=/"] {
        assert!(attributes.contains(&wanted), "{wanted} missing: {cookie}");
    }
    let token = &browser.jar[STICKY_COOKIE];
    assert!(!token.is_empty());

    for _ in 0..5 {
        let later = browser.get("/cart").await;
        assert_eq!(later.status, StatusCode::OK);
        assert_eq!(later.outcome.as_deref(), Some("hit"));
        assert!(later.set_cookies.is_empty(), "{later:?}");
    }
}

/// A mount told apart by its cookie's Path gets its cookie, though the
/// nested service sees its paths without the prefix.
#[tokio::test]
async fn a_nested_mount_with_a_path_of_its_own_sets_its_cookie() {
    let (addr, _backends) = start().await;
    let mut browser = Browser::new(&http_client(), addr);
    let first = browser.get("/wishlist/items").await;
    assert_eq!(first.outcome.as_deref(), Some("new"));
    let cookie = first.sticky_cookie().expect("a sticky Set-Cookie");
    assert!(cookie.contains("Path=/wishlist"), "{cookie}");
    for _ in 0..3 {
        let later = browser.get("/wishlist/items").await;
        assert_eq!(later.outcome.as_deref(), Some("hit"), "{later:?}");
    }
}

#[tokio::test]
async fn ordinary_routes_are_not_sticky() {
    let (addr, backends) = start().await;
    let mut browser = Browser::new(&http_client(), addr);
    for (path, body) in [("/health", "ok"), ("/", "home")] {
        let reply = browser.get(path).await;
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(reply.body, body);
        assert!(reply.set_cookies.is_empty(), "{reply:?}");
        assert_eq!(reply.outcome, None);
    }
    // Nothing was placed.
    assert!(backends.status().iter().all(|b| b.counters.requests == 0));
    // A client with a sticky cookie still gets plain answers there.
    browser.get("/cart").await;
    let reply = browser.get("/health").await;
    assert_eq!((reply.status, reply.body.as_str()), (StatusCode::OK, "ok"));
    assert!(reply.set_cookies.is_empty(), "{reply:?}");
}

#[tokio::test]
async fn a_tampered_cookie_is_a_new_session_not_an_error() {
    let (addr, _backends) = start().await;
    let mut browser = Browser::new(&http_client(), addr);
    browser.get("/cart").await;
    let token = browser.jar[STICKY_COOKIE].clone();

    // Flip one character in the middle of the token.
    let mut bytes = token.clone().into_bytes();
    let i = bytes.len() / 2;
    bytes[i] = if bytes[i] == b'A' { b'B' } else { b'A' };
    let tampered = String::from_utf8(bytes).unwrap();
    assert_ne!(tampered, token);
    browser.jar.insert(STICKY_COOKIE.into(), tampered.clone());

    let reply = browser.get("/cart").await;
    assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
    assert_eq!(reply.outcome.as_deref(), Some("invalid"));
    let cookie = reply.sticky_cookie().expect("a new sticky Set-Cookie");
    assert!(!cookie.starts_with(&format!("{STICKY_COOKIE}={tampered};")));
    // The new token holds from then on.
    let again = browser.get("/cart").await;
    assert_eq!(again.outcome.as_deref(), Some("hit"), "{again:?}");
    assert!(again.set_cookies.is_empty(), "{again:?}");

    // Garbage of any shape is no 5xx either.
    for junk in [
        "",
        "x",
        "%%%",
        "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
    ] {
        let mut stranger = Browser::new(&browser.http, addr);
        stranger.jar.insert(STICKY_COOKIE.into(), junk.into());
        let reply = stranger.get("/cart").await;
        assert_eq!(reply.status, StatusCode::OK, "{junk:?}: {reply:?}");
        assert!(reply.sticky_cookie().is_some(), "{junk:?}: {reply:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn draining_keeps_sessions_and_takes_no_new_ones() {
    let (addr, backends) = start().await;
    let http = http_client();

    let mut existing = Vec::new();
    for _ in 0..12 {
        let mut browser = Browser::new(&http, addr);
        let (home, visits) = browser.get("/cart").await.visit();
        assert_eq!(visits, 1);
        existing.push((browser, home));
    }
    let drained = existing[0].1.clone();
    backends.drain(&drained).unwrap();
    let state = |name: &str| {
        backends
            .status()
            .into_iter()
            .find(|b| b.name.as_str() == name)
            .unwrap()
            .state
    };
    assert_eq!(state(&drained), BackendState::Draining);

    // Bound sessions stay, on the drained backend too.
    let mut on_drained = 0;
    for (browser, home) in &mut existing {
        for visit in 2..=4 {
            let reply = browser.get("/cart").await;
            assert_eq!(reply.visit(), (home.clone(), visit), "{reply:?}");
            assert_eq!(reply.outcome.as_deref(), Some("hit"), "{reply:?}");
        }
        on_drained += usize::from(*home == drained);
    }
    assert!(on_drained >= 2, "only {on_drained} sessions on {drained}");

    // New sessions go elsewhere.
    let mut new_homes: BTreeMap<String, usize> = BTreeMap::new();
    let mut clients = JoinSet::new();
    for _ in 0..30 {
        let mut browser = Browser::new(&http, addr);
        clients.spawn(async move {
            let first = browser.get("/cart").await.visit();
            let second = browser.get("/cart").await.visit();
            assert_eq!((second.0.as_str(), second.1), (first.0.as_str(), 2));
            first.0
        });
    }
    while let Some(home) = clients.join_next().await {
        *new_homes.entry(home.unwrap()).or_default() += 1;
    }
    assert!(!new_homes.contains_key(&drained), "{new_homes:?}");
    assert_eq!(new_homes.len(), 2, "{new_homes:?}");
    assert_eq!(new_homes.values().sum::<usize>(), 30);
}

#[tokio::test]
async fn client_ip_affinity_reads_the_connection_peer() {
    let (addr, _backends) = start().await;
    let http = http_client();
    // Two browsers with separate jars, one machine: one IP, one backend.
    let mut a = Browser::new(&http, addr);
    let mut b = Browser::new(&http, addr);
    let first = a.get("/by-ip").await;
    assert_eq!(first.source.as_deref(), Some("ip"), "{first:?}");
    assert!(
        first.sticky_cookie().is_none(),
        "IP affinity issues no cookie"
    );
    let (home, _) = first.visit();
    for _ in 0..5 {
        assert_eq!(a.get("/by-ip").await.visit().0, home);
        let other = b.get("/by-ip").await;
        assert_eq!(other.source.as_deref(), Some("ip"));
        assert_eq!(other.visit().0, home);
    }
}
