//! An axum app whose `/cart` routes are spread over three backends with
//! sticky sessions, next to ordinary routes.
//!
//! Each backend (`cart-1`, `cart-2`, `cart-3`) is an axum [`Router`] with its
//! own in-memory cart store, keyed by an app session cookie (`cart_sid`) that
//! the backend sets when it is missing. The stores are not shared: a session
//! only keeps its cart if every request of it reaches the same backend. That
//! is what [`Sticky`] does: the first `/cart` request of a session is placed
//! by weight and gets a signed `sticky` cookie; every request that sends the
//! cookie back lands on the same backend.
//!
//! Routes:
//!
//! - `GET /`: home; `GET /health`: ordinary routes, never sticky;
//! - `GET /cart`: the cart of this session, and the backend that holds it;
//! - `POST /cart/add/{item}`: adds one item;
//! - `GET /backends`: every backend with its state and counters;
//! - `POST /backends/{name}/drain` and `POST /backends/{name}/enable`:
//!   drain a backend (bound sessions stay, no new ones come) and undo it.
//!
//! Responses from `/cart` carry `x-sticky-backend` and `x-sticky-outcome`
//! headers, copied from the [`Placement`] response extension.
//!
//! Run it with
//!
//! ```text
//! STICKY_SECRET="$(openssl rand -base64 32)" cargo run --example axum_app [ADDR]
//! ```
//!
//! (`ADDR` defaults to `127.0.0.1:3000`; without `STICKY_SECRET` a fixed
//! demo secret is used, with a warning), then keep cookies in a jar:
//!
//! ```text
//! curl -i -c jar -b jar -X POST localhost:3000/cart/add/apple
//! curl -c jar -b jar -X POST localhost:3000/cart/add/pear
//! curl -c jar -b jar localhost:3000/cart
//! ```
//!
//! Every request with the jar answers from the same backend and sees the
//! whole cart; without the jar each request is a new session.

use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::hash::BuildHasher;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use axum::extract::{Path, State};
use axum::http::header::{HeaderValue, COOKIE, SET_COOKIE};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use tower::util::MapResponse;
use tower_sticky::sticky_core::token::{KeyRing, TokenCodec, TokenConfig};
use tower_sticky::sticky_core::{BackendSpec, Outcome, PoolConfig};
use tower_sticky::{Backends, Placement, Sticky};

/// The app's own session cookie, set by each backend.
const SESSION_COOKIE: &str = "cart_sid";

/// Used when `STICKY_SECRET` is not set. Anyone who reads this file can
/// forge tokens with it: never use it outside a demo.
const DEMO_SECRET: &str = "tower-sticky axum demo secret, not for production";

/// One backend's state: its name and its cart store.
#[derive(Clone)]
struct Shard {
    name: &'static str,
    carts: Arc<Mutex<HashMap<String, Vec<String>>>>,
    ids: RandomState,
    next: Arc<AtomicU64>,
}

impl Shard {
    /// The request's session id, or a new one with the cookie that sets it.
    fn session(&self, headers: &HeaderMap) -> (String, Option<HeaderValue>) {
        if let Some(id) = cookie(headers, SESSION_COOKIE) {
            return (id.to_owned(), None);
        }
        // A demo id: hard to guess, but not from a CSPRNG. Use one (or your
        // framework's session layer) in a real app.
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let id = format!("{:016x}", self.ids.hash_one(n));
        let set = HeaderValue::from_str(&format!(
            "{SESSION_COOKIE}={id}; Path=/; HttpOnly; SameSite=Lax"
        ))
        .expect("hex ids are valid header text");
        (id, Some(set))
    }

    /// A text answer naming this backend, setting the session cookie if new.
    fn reply(&self, set_cookie: Option<HeaderValue>, body: String) -> Response {
        let mut response = ([("x-backend", self.name)], body).into_response();
        if let Some(value) = set_cookie {
            response.headers_mut().append(SET_COOKIE, value);
        }
        response
    }
}

/// The first cookie called `name` in the request.
fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(n, _)| *n == name)
        .map(|(_, value)| value)
}

async fn show_cart(State(shard): State<Shard>, headers: HeaderMap) -> Response {
    let (id, set_cookie) = shard.session(&headers);
    let items = {
        let carts = shard.carts.lock().unwrap_or_else(|p| p.into_inner());
        carts
            .get(&id)
            .map(|items| items.join(", "))
            .unwrap_or_default()
    };
    let body = format!("{}: session {id}, cart [{items}]\n", shard.name);
    shard.reply(set_cookie, body)
}

async fn add_item(
    State(shard): State<Shard>,
    Path(item): Path<String>,
    headers: HeaderMap,
) -> Response {
    let (id, set_cookie) = shard.session(&headers);
    let count = {
        let mut carts = shard.carts.lock().unwrap_or_else(|p| p.into_inner());
        let items = carts.entry(id.clone()).or_default();
        items.push(item.clone());
        items.len()
    };
    let body = format!(
        "{}: session {id}, added {item}, {count} item(s) in the cart\n",
        shard.name
    );
    shard.reply(set_cookie, body)
}

/// One backend: an ordinary axum app with its own in-memory store. In a
/// real deployment this could as well be a client to a remote replica.
fn cart_backend(name: &'static str) -> Router {
    let shard = Shard {
        name,
        carts: Arc::default(),
        ids: RandomState::new(),
        next: Arc::default(),
    };
    // Nested under `/cart`: these paths are what is left after it.
    Router::new()
        .route("/", get(show_cart))
        .route("/add/{item}", post(add_item))
        .with_state(shard)
}

/// The three cart backends under one signing secret.
fn cart_backends(secret: &str) -> Result<Backends<Router>, Box<dyn std::error::Error>> {
    let keys = KeyRing::new([secret])?;
    let config = PoolConfig::new(TokenCodec::new(keys, TokenConfig::new("sticky")));
    let backends = Backends::new(
        config,
        ["cart-1", "cart-2", "cart-3"].map(|name| (BackendSpec::new(name), cart_backend(name))),
    )?;
    Ok(backends)
}

/// Copies where a request went into response headers, for curl to show.
fn placement_headers<B>(mut response: http::Response<B>) -> http::Response<B> {
    if let Some(placement) = response.extensions().get::<Placement>().cloned() {
        if let Ok(value) = HeaderValue::from_str(placement.backend.as_str()) {
            response.headers_mut().insert("x-sticky-backend", value);
        }
    }
    // Also on a 503 for a request no backend could take.
    if let Some(outcome) = response.extensions().get::<Outcome>().copied() {
        if let Ok(value) = HeaderValue::from_str(&outcome.to_string()) {
            response.headers_mut().insert("x-sticky-outcome", value);
        }
    }
    response
}

async fn home() -> &'static str {
    "tower-sticky demo: GET /cart, POST /cart/add/{item}, GET /backends, GET /health\n"
}

async fn health() -> &'static str {
    "ok\n"
}

async fn backend_status(State(backends): State<Backends<Router>>) -> String {
    backends
        .status()
        .iter()
        .map(|b| {
            format!(
                "{} weight={} state={} {:?}\n",
                b.name,
                b.weight,
                b.state.as_str(),
                b.counters
            )
        })
        .collect()
}

async fn drain(
    State(backends): State<Backends<Router>>,
    Path(name): Path<String>,
) -> (StatusCode, String) {
    match backends.drain(&name) {
        Ok(()) => (StatusCode::OK, format!("{name} is draining\n")),
        Err(error) => (StatusCode::NOT_FOUND, format!("{error}\n")),
    }
}

async fn enable(
    State(backends): State<Backends<Router>>,
    Path(name): Path<String>,
) -> (StatusCode, String) {
    match backends.enable(&name) {
        Ok(()) => (StatusCode::OK, format!("{name} is active\n")),
        Err(error) => (StatusCode::NOT_FOUND, format!("{error}\n")),
    }
}

/// The whole app: ordinary routes, the admin routes on the backend handle,
/// and the sticky `/cart`.
fn app(backends: Backends<Router>) -> Router {
    // axum takes only services that never fail: a rejected placement
    // becomes an empty 503, a failed backend an empty 502.
    let carts = MapResponse::new(
        Sticky::new(backends.clone()).errors_as_responses(),
        placement_headers,
    );
    Router::new()
        .route("/", get(home))
        .route("/health", get(health))
        // Demo only: put admin routes behind authentication in a real app.
        .route("/backends", get(backend_status))
        .route("/backends/{name}/drain", post(drain))
        .route("/backends/{name}/enable", post(enable))
        .nest_service("/cart", carts)
        .with_state(backends)
}

/// `STICKY_SECRET`, or the demo secret with a warning.
fn secret() -> String {
    match std::env::var("STICKY_SECRET") {
        Ok(secret) if !secret.is_empty() => secret,
        _ => {
            eprintln!(
                "warning: STICKY_SECRET is not set; using a fixed demo secret that anyone \
                 can read in this file. Set STICKY_SECRET to 32 random bytes, the same on \
                 every replica."
            );
            DEMO_SECRET.to_owned()
        }
    }
}

async fn shutdown() {
    if let Err(error) = tokio::signal::ctrl_c().await {
        eprintln!("cannot listen for Ctrl-C ({error}); stop the process to quit");
        std::future::pending::<()>().await;
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let addr: SocketAddr = match std::env::args().nth(1) {
        Some(arg) => arg
            .parse()
            .map_err(|error| format!("{arg:?} is not an address like 127.0.0.1:3000: {error}"))?,
        None => SocketAddr::from(([127, 0, 0, 1], 3000)),
    };
    let backends = cart_backends(&secret())?;
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let addr = listener.local_addr()?;
    println!("listening on http://{addr}");
    println!("try:");
    println!("  curl -i -c jar -b jar -X POST {addr}/cart/add/apple");
    println!("  curl -c jar -b jar -X POST {addr}/cart/add/pear");
    println!("  curl -c jar -b jar {addr}/cart");
    println!("  curl {addr}/backends");
    axum::serve(listener, app(backends))
        .with_graceful_shutdown(shutdown())
        .await?;
    Ok(())
}
