//! Demo backends: small HTTP servers that remember each session's visits in
//! their own memory (a "cart" that resets if stickiness breaks), with a
//! WebSocket echo at `/ws` and a health endpoint at `/healthz` (for
//! `--health-check /healthz`; it starts no session).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::State;
use axum::http::header::{COOKIE, SET_COOKIE};
use axum::http::{HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use axum::Router;
use http_body_util::BodyExt;

/// The demo's own session cookie (the backend's, not the gateway's).
const SESSION_COOKIE: &str = "demo_session";

#[derive(Clone)]
struct Demo {
    name: Arc<str>,
    visits: Arc<Mutex<HashMap<String, u64>>>,
    next_id: Arc<AtomicU64>,
}

fn session_id(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == SESSION_COOKIE)
        .map(|(_, value)| value.to_owned())
}

async fn visit(State(demo): State<Demo>, headers: HeaderMap, mut body: Body) -> Response {
    // Takes in whatever was sent before answering, as an application does:
    // a server that answers and closes with a body left unread resets the
    // connection, which can cost the client the answer.
    while let Some(Ok(_)) = body.frame().await {}
    let (id, new) = match session_id(&headers) {
        Some(id) => (id, false),
        None => {
            let n = demo.next_id.fetch_add(1, Ordering::Relaxed);
            (format!("{}-{n}", demo.name), true)
        }
    };
    let count = {
        let mut visits = demo.visits.lock().unwrap_or_else(|e| e.into_inner());
        let count = visits.entry(id.clone()).or_insert(0);
        *count += 1;
        *count
    };
    let mut response = format!("{} visit {count}\n", demo.name).into_response();
    let headers = response.headers_mut();
    if let Ok(name) = HeaderValue::from_str(&demo.name) {
        headers.insert("x-backend", name);
    }
    if new {
        if let Ok(cookie) =
            HeaderValue::from_str(&format!("{SESSION_COOKIE}={id}; Path=/; HttpOnly"))
        {
            headers.append(SET_COOKIE, cookie);
        }
    }
    response
}

async fn echo(State(demo): State<Demo>, ws: WebSocketUpgrade) -> Response {
    ws.on_upgrade(move |socket| echo_socket(socket, demo.name))
}

async fn echo_socket(mut socket: WebSocket, name: Arc<str>) {
    while let Some(Ok(message)) = socket.recv().await {
        let reply = match message {
            Message::Text(text) => Message::Text(format!("{name}: {}", text.as_str()).into()),
            Message::Binary(bytes) => Message::Binary(bytes),
            Message::Close(_) => break,
            _ => continue,
        };
        if socket.send(reply).await.is_err() {
            break;
        }
    }
}

/// A demo backend's routes.
pub fn router(name: &str) -> Router {
    let demo = Demo {
        name: Arc::from(name),
        visits: Arc::default(),
        next_id: Arc::default(),
    };
    Router::new()
        .route("/ws", get(echo))
        .route("/healthz", get(|| async { "ok\n" }))
        .fallback(any(visit))
        .with_state(demo)
}

/// Starts a demo backend on a free loopback port; returns its address.
pub async fn start(name: &str) -> std::io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let address = listener.local_addr()?;
    let app = router(name);
    tokio::spawn(async move {
        if let Err(error) = axum::serve(listener, app).await {
            tracing::error!(%error, "demo backend stopped");
        }
    });
    Ok(address)
}
