//! The gateway's admin API and status page, served on their own listener.
//!
//! Every answer is JSON except the status page at `/`; every error is
//! `{"error": "..."}` with a status that says what went wrong: 400 for a
//! bad request (malformed JSON, a bad URL, a weight above 256), 404 for an
//! unknown backend or group, 409 for a name that is already taken, an
//! undrain of a backend that is not draining, or keys to read again that
//! did not come from a file, and 500 for a key file that cannot be read or
//! holds no usable key.
//!
//! A backend reads as
//!
//! ```json
//! {"name": "b1", "url": "http://127.0.0.1:3001", "weight": 1, "state": "active",
//!  "group": null, "admin_state": "active", "failing_checks": false,
//!  "counters": {"requests": 120, "new_sessions": 14, "hits": 104, "failovers": 2,
//!               "failures": 0, "in_flight": 1}}
//! ```
//!
//! where `state` is `active`, `draining` (bound sessions stay, no new ones
//! come), `disabled` (nothing goes to it; its sessions fail over) or
//! `unhealthy` (taken out by passive health until a probe succeeds, or
//! failing its health checks, `--health-check`, which `failing_checks`
//! tells). `admin_state` is what the admin API (or the command line) set:
//! `active`, `draining` or `disabled`, which an unhealthy backend returns
//! to once healthy. A backend failing its checks stays out until they
//! pass, whatever its `admin_state`; one added with `POST /backends` while
//! checks run is failing them until its first check passes.
//!
//! Under hash-key affinity (`header:`, `app-cookie:`, `query:`, `ip`) a
//! key is bound to its backend from its first request: the gateway keeps
//! no record of keys, so it cannot tell a new one from one it has seen.
//! Draining keeps every key where it is, the new ones too, and counts
//! their requests as hits. To move keys off a backend, set its weight to
//! 0 (its keys go to their next backend, and come back with the weight)
//! or disable it.
//!
//! # Endpoints
//!
//! With the admin listener on `127.0.0.1:9000`:
//!
//! ```text
//! # The status page: one row per backend and its share of the requests,
//! # refreshed every 2 seconds.
//! open http://127.0.0.1:9000/
//!
//! # Every backend, sorted by name.
//! curl -s http://127.0.0.1:9000/backends
//!
//! # The same figures for Prometheus (text exposition format 0.0.4).
//! curl -s http://127.0.0.1:9000/metrics
//!
//! # Drain b1 (bound sessions stay, no new sessions), then put it back
//! # (undrain acts on a draining backend only).
//! curl -s -X POST http://127.0.0.1:9000/backends/b1/drain
//! curl -s -X POST http://127.0.0.1:9000/backends/b1/undrain
//!
//! # Disable b2 (its sessions fail over), then enable it again (this also
//! # returns a drained backend, or one passive health took out, to service;
//! # one failing its health checks returns when they pass).
//! curl -s -X POST http://127.0.0.1:9000/backends/b2/disable
//! curl -s -X POST http://127.0.0.1:9000/backends/b2/enable
//!
//! # Set b1's weight: 0 to 256, relative to the others; 0 drains.
//! curl -s -X POST http://127.0.0.1:9000/backends/b1/weight/3
//!
//! # Add a backend (weight is optional and defaults to 1; group is
//! # optional): 201 Created.
//! curl -s -X POST http://127.0.0.1:9000/backends \
//!      -H 'content-type: application/json' \
//!      -d '{"name": "b3", "url": "http://127.0.0.1:3003", "weight": 2, "group": "v2"}'
//!
//! # Set group v2's weight (0 to 256, relative to the other groups'; it
//! # holds for backends added to the group later too): answers with the
//! # weight and the group's backends.
//! curl -s -X POST http://127.0.0.1:9000/groups/v2/weight/1
//!
//! # Remove a backend: its sessions fail over on their next request.
//! curl -s -X DELETE http://127.0.0.1:9000/backends/b3
//!
//! # The cookie keys: where they come from and their fingerprints, the
//! # signing key's first (replicas that share sessions show the same).
//! curl -s http://127.0.0.1:9000/keys
//!
//! # Read --secret-file again, as SIGHUP does: 200 with the keys now in
//! # use, whether they changed, and whether the signing key was dropped
//! # or was not listed before (both risky across replicas: see --help);
//! # 500 (the keys in use kept, and the reason shown by GET /keys until a
//! # reading succeeds) for a file that cannot be read or holds no usable
//! # key; 409 when the keys did not come from a file.
//! curl -s -X POST http://127.0.0.1:9000/keys/reload
//! ```
//!
//! `GET /metrics` has one series per backend for each counter
//! (`sticky_backend_requests_total`, `..._new_sessions_total`,
//! `..._hits_total`, `..._failovers_total`, `..._failures_total`), for
//! requests in flight, weight and state (`sticky_backend_state`, 1 for the
//! backend's state and 0 for the others), whether it fails its health
//! checks (`sticky_backend_failing_checks`), its response times
//! (`sticky_backend_response_seconds`, a histogram of the time from a
//! request handed over, body and all, to the backend's response head,
//! in buckets from 0.5 ms to 10 s; a request with no response head, a
//! 502 or 504, counts in `..._failures_total` instead, and a WebSocket
//! upgrade in neither), and `sticky_backend_info` with its URL and group.
//! Each is labelled `backend="NAME"`. A backend removed and added again
//! starts its counters from 0, which Prometheus's `rate` and `increase`
//! read as a reset. `sticky_gateway_error_answers_total`,
//! labelled `status="502"`, `"503"` or `"504"`, counts the answers the
//! gateway made itself because no backend did (a request no backend
//! could take counts here and nowhere else). `sticky_gateway_key_info`
//! has one series per cookie key, labelled with its `position` (0 signs)
//! and `fingerprint`; `sticky_gateway_keys_last_reload_successful` is 0
//! while the last reading of the key file has failed;
//! `sticky_gateway_older_key_cookies_total` counts requests whose cookie
//! was signed with a key listed after the signing one (once it has
//! stopped growing on every replica for as long as a session may last,
//! that key can be dropped); and
//! `sticky_gateway_access_lines_dropped_total` counts access log lines
//! lost because their writer fell behind or a write failed.
//!
//! Each change answers with the backend as it is after the change (removal
//! answers `{"removed": "b3"}`) and takes effect for the next request the
//! gateway proxies. Nothing here shows the token keys themselves, only
//! their fingerprints (see `KeyRing::fingerprints` for what one reveals:
//! nothing of a random secret).
//!
//! The admin API has no authentication of its own: bind it to a loopback
//! or otherwise private address.

use std::fmt::Write as _;

use axum::body::Bytes;
use axum::extract::{FromRequestParts, Path, State};
use axum::http::request::Parts;
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tower_sticky::sticky_core::{BackendSpec, BackendState, ConfigError, Counters, MAX_WEIGHT};
use tower_sticky::{BackendStatus, Backends};

use crate::keys::{Keys, ReloadError, Source};
use crate::latency::{self, Histogram};
use crate::proxy::{ProxyOptions, Upstream};

/// The admin API over `backends`; `options` configure the upstreams that
/// `POST /backends` adds. With `health_checks` (the gateway runs them), a
/// backend added through the API takes nothing until its first check
/// passes. `keys` are the cookie keys that `/keys` shows and reads again.
pub fn router(
    backends: Backends<Upstream>,
    options: ProxyOptions,
    health_checks: bool,
    keys: Keys,
) -> Router {
    Router::new()
        .route("/", get(status_page))
        .route("/metrics", get(metrics))
        .route("/backends", get(list).post(add))
        .route("/backends/{name}", axum::routing::delete(remove))
        .route("/backends/{name}/drain", post(drain))
        .route("/backends/{name}/undrain", post(undrain))
        .route("/backends/{name}/disable", post(disable))
        .route("/backends/{name}/enable", post(enable))
        .route("/backends/{name}/weight/{weight}", post(set_weight))
        .route("/groups/{group}/weight/{weight}", post(set_group_weight))
        .route("/keys", get(show_keys))
        .route("/keys/reload", post(reload_keys))
        .fallback(no_route)
        .method_not_allowed_fallback(wrong_method)
        .with_state(Admin {
            backends,
            options,
            health_checks,
            keys,
        })
}

#[derive(Clone)]
struct Admin {
    backends: Backends<Upstream>,
    options: ProxyOptions,
    /// Whether health checks run; a new backend then waits for its first.
    health_checks: bool,
    keys: Keys,
}

/// The cookie keys, as `/keys` shows them.
#[derive(Serialize)]
struct KeysJson {
    /// `--secret-file`, `STICKY_SECRET` or `random`.
    source: &'static str,
    /// The key file, for `--secret-file`.
    path: Option<String>,
    /// One per key in use, the signing key's first.
    fingerprints: Vec<String>,
    /// Why the last reading of the file failed, while it has not since
    /// succeeded.
    last_reload_error: Option<String>,
}

/// `POST /keys/reload`'s answer.
#[derive(Serialize)]
struct ReloadJson {
    /// Whether the file held a different ring, now in use.
    changed: bool,
    /// Whether the key that signed until then is gone from it.
    dropped_signing_key: bool,
    /// Whether the key that signs now was not listed before.
    signing_key_new: bool,
    source: &'static str,
    path: Option<String>,
    /// The ring this reading put in use (or found in use).
    fingerprints: Vec<String>,
}

/// One backend, as the API shows it.
#[derive(Serialize)]
struct BackendJson {
    name: String,
    url: String,
    weight: u32,
    state: &'static str,
    group: Option<String>,
    /// What the admin API set, whatever health says.
    admin_state: &'static str,
    /// Held out by failing health checks.
    failing_checks: bool,
    counters: CountersJson,
    /// For `/metrics` only.
    #[serde(skip)]
    response_times: Histogram,
}

#[derive(Serialize)]
struct CountersJson {
    requests: u64,
    new_sessions: u64,
    hits: u64,
    failovers: u64,
    failures: u64,
    in_flight: u64,
}

impl From<Counters> for CountersJson {
    fn from(c: Counters) -> Self {
        Self {
            requests: c.requests,
            new_sessions: c.new_sessions,
            hits: c.hits,
            failovers: c.failovers,
            failures: c.failures,
            in_flight: c.in_flight,
        }
    }
}

#[derive(Serialize)]
struct Removed {
    removed: String,
}

/// The body of `POST /backends`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewBackend {
    name: String,
    url: String,
    #[serde(default = "default_weight")]
    weight: u32,
    #[serde(default)]
    group: Option<String>,
}

fn default_weight() -> u32 {
    1
}

#[derive(Serialize)]
struct ErrorJson {
    error: String,
}

/// An error answer: a status and a message the user can act on.
struct ApiError {
    status: StatusCode,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
        }
    }

    fn unknown(name: &str) -> Self {
        Self::new(StatusCode::NOT_FOUND, format!("no backend named {name:?}"))
    }
}

impl From<ConfigError> for ApiError {
    fn from(error: ConfigError) -> Self {
        match error {
            ConfigError::Unknown(name) => Self::unknown(name.as_str()),
            ConfigError::Duplicate(name) => Self::new(
                StatusCode::CONFLICT,
                format!(
                    "a backend named {:?} already exists; remove it first or pick another name",
                    name.as_str()
                ),
            ),
            other => Self::new(StatusCode::BAD_REQUEST, other.to_string()),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (
            self.status,
            Json(ErrorJson {
                error: self.message,
            }),
        )
            .into_response()
    }
}

/// Path parameters whose rejection is a JSON error like every other.
struct PathParams<T>(T);

impl<T, S> FromRequestParts<S> for PathParams<T>
where
    T: DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        match Path::<T>::from_request_parts(parts, state).await {
            Ok(Path(params)) => Ok(Self(params)),
            Err(rejection) => Err(ApiError::new(rejection.status(), rejection.body_text())),
        }
    }
}

impl Admin {
    /// Every backend, sorted by name, with its URL. A backend removed
    /// between the two reads is left out.
    fn all(&self) -> Vec<BackendJson> {
        self.backends
            .status()
            .into_iter()
            .filter_map(|status| self.to_json(status))
            .collect()
    }

    fn to_json(&self, status: BackendStatus) -> Option<BackendJson> {
        let upstream = self.backends.service(status.name.as_str())?;
        let url = upstream.url().to_owned();
        Some(BackendJson {
            name: status.name.as_str().to_owned(),
            url,
            weight: status.weight,
            state: status.state.as_str(),
            group: status.group.map(|g| g.as_str().to_owned()),
            admin_state: status.admin_state.as_str(),
            failing_checks: status.failing_checks,
            counters: status.counters.into(),
            response_times: upstream.response_times(),
        })
    }

    /// One backend as it is now.
    fn backend(&self, name: &str) -> Result<Json<BackendJson>, ApiError> {
        self.backends
            .status()
            .into_iter()
            .find(|status| status.name.as_str() == name)
            .and_then(|status| self.to_json(status))
            .map(Json)
            .ok_or_else(|| ApiError::unknown(name))
    }

    /// Applies `change` to backend `name` and answers with the result.
    fn change(
        &self,
        name: &str,
        what: &str,
        change: fn(&Backends<Upstream>, &str) -> Result<(), ConfigError>,
    ) -> Result<Json<BackendJson>, ApiError> {
        change(&self.backends, name)?;
        tracing::info!(backend = name, "admin: {what}");
        self.backend(name)
    }
}

async fn list(State(admin): State<Admin>) -> Json<Vec<BackendJson>> {
    Json(admin.all())
}

fn key_path(keys: &Keys) -> Option<String> {
    match keys.source() {
        Source::File(path) => Some(path.display().to_string()),
        Source::Environment | Source::Random => None,
    }
}

/// `GET /keys`: where the cookie keys come from, and their fingerprints.
async fn show_keys(State(admin): State<Admin>) -> Json<KeysJson> {
    let keys = &admin.keys;
    Json(KeysJson {
        source: keys.source().as_str(),
        path: key_path(keys),
        last_reload_error: keys.last_error().await,
        fingerprints: keys.fingerprints(),
    })
}

/// `POST /keys/reload`: reads `--secret-file` again, as SIGHUP does.
async fn reload_keys(State(admin): State<Admin>) -> Result<Json<ReloadJson>, ApiError> {
    let keys = &admin.keys;
    match keys.reload().await {
        Ok(reloaded) => Ok(Json(ReloadJson {
            changed: reloaded.changed,
            dropped_signing_key: reloaded.dropped_signing_key,
            signing_key_new: reloaded.signing_key_new,
            source: keys.source().as_str(),
            path: key_path(keys),
            fingerprints: reloaded.fingerprints,
        })),
        Err(error @ ReloadError::NoFile(_)) => {
            Err(ApiError::new(StatusCode::CONFLICT, error.to_string()))
        }
        // The gateway's own file is at fault, not the request.
        Err(error @ ReloadError::BadFile(_)) => Err(ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("{error}; the keys in use are unchanged"),
        )),
    }
}

async fn drain(
    State(admin): State<Admin>,
    PathParams(name): PathParams<String>,
) -> Result<Json<BackendJson>, ApiError> {
    admin.change(&name, "drained", Backends::drain)
}

async fn disable(
    State(admin): State<Admin>,
    PathParams(name): PathParams<String>,
) -> Result<Json<BackendJson>, ApiError> {
    admin.change(&name, "disabled", Backends::disable)
}

/// A draining backend back to active. Only a draining one: undraining a
/// disabled or failing backend by mistake would send it traffic; `enable`
/// is the word for that.
async fn undrain(
    State(admin): State<Admin>,
    PathParams(name): PathParams<String>,
) -> Result<Json<BackendJson>, ApiError> {
    let set = admin
        .backends
        .snapshot()
        .member_by_name(&name)
        .map(|member| member.spec().state)
        .ok_or_else(|| ApiError::unknown(&name))?;
    if set != BackendState::Draining {
        // Named as the listing shows it (passive health included).
        let shown = admin.backend(&name)?.0;
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            format!(
                "{name:?} is not draining (state {}, admin state {}, weight {}); \
                 POST /backends/{name}/enable returns a disabled backend, or one \
                 passive health took out, to service (one failing its health checks \
                 returns when they pass), and POST /backends/{name}/weight/N sets a \
                 weight of 0 to more",
                shown.state, shown.admin_state, shown.weight
            ),
        ));
    }
    admin.change(&name, "undrained", |backends, name| {
        backends.set_state(name, BackendState::Active)
    })
}

/// Back to active from any state; this also ends a rest passive health
/// gave the backend. A backend failing its health checks stays out until
/// they pass.
async fn enable(
    State(admin): State<Admin>,
    PathParams(name): PathParams<String>,
) -> Result<Json<BackendJson>, ApiError> {
    admin.change(&name, "enabled", Backends::enable)
}

/// A group's weight and its backends, as `POST /groups/...` answers.
#[derive(Serialize)]
struct GroupJson {
    group: String,
    weight: u32,
    backends: Vec<BackendJson>,
}

/// Sets a group's weight (`--group-weight` at run time), also for a group
/// with no backend yet (or no more): the weight holds for those added to
/// it later.
async fn set_group_weight(
    State(admin): State<Admin>,
    PathParams((group, weight)): PathParams<(String, String)>,
) -> Result<Json<GroupJson>, ApiError> {
    let weight = parse_weight(&weight)?;
    if group.is_empty() {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "a group name cannot be empty",
        ));
    }
    admin.backends.set_group_weight(group.as_str(), weight)?;
    tracing::info!(%group, weight, "admin: group weight set");
    let backends = admin
        .all()
        .into_iter()
        .filter(|b| b.group.as_deref() == Some(group.as_str()))
        .collect();
    Ok(Json(GroupJson {
        group,
        weight,
        backends,
    }))
}

async fn set_weight(
    State(admin): State<Admin>,
    PathParams((name, weight)): PathParams<(String, String)>,
) -> Result<Json<BackendJson>, ApiError> {
    let weight = parse_weight(&weight)?;
    admin.backends.set_weight(&name, weight)?;
    tracing::info!(backend = %name, weight, "admin: weight set");
    admin.backend(&name)
}

fn parse_weight(text: &str) -> Result<u32, ApiError> {
    text.parse::<u32>()
        .ok()
        .filter(|&weight| weight <= MAX_WEIGHT)
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                format!("weight {text:?} is not a whole number from 0 to {MAX_WEIGHT} (0 drains)"),
            )
        })
}

/// The longest backend name `POST /backends` takes: a longer one could not
/// be named in the path of the calls that change or remove it.
const MAX_NAME_BYTES: usize = 255;

/// `POST /backends`. The body is read as JSON whatever its content type,
/// so a plain `curl -d` works too.
async fn add(
    State(admin): State<Admin>,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<(StatusCode, Json<BackendJson>), ApiError> {
    // A body over axum's limit (2 MB) is an error like every other.
    let body =
        body.map_err(|rejection| ApiError::new(rejection.status(), rejection.body_text()))?;
    let new: NewBackend = serde_json::from_slice(&body).map_err(|error| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            format!(
                "the body is not a backend ({error}); send \
                 {{\"name\": \"b3\", \"url\": \"http://host:port\", \"weight\": 1}}"
            ),
        )
    })?;
    if new.name.len() > MAX_NAME_BYTES {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("a backend name is at most {MAX_NAME_BYTES} bytes"),
        ));
    }
    if new.weight > MAX_WEIGHT {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            format!(
                "weight {} is too large; weights go from 0 to {MAX_WEIGHT}",
                new.weight
            ),
        ));
    }
    let upstream = Upstream::new(&new.url, &admin.options)
        .map_err(|message| ApiError::new(StatusCode::BAD_REQUEST, message))?;
    let url = upstream.url().to_owned();
    let mut spec = BackendSpec::new(new.name.as_str()).weight(new.weight);
    if let Some(group) = &new.group {
        if group.is_empty() {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "a group name cannot be empty; leave \"group\" out for none",
            ));
        }
        spec = spec.group(group.as_str());
    }
    if admin.health_checks {
        // Out of service (with nothing placed there meanwhile) until its
        // first check passes; its checker starts from that verdict.
        admin
            .backends
            .add(spec.state(BackendState::Disabled), upstream)?;
        admin.backends.set_checks_passing(&new.name, false)?;
        admin.backends.set_state(&new.name, BackendState::Active)?;
    } else {
        admin.backends.add(spec, upstream)?;
    }
    tracing::info!(backend = %new.name, %url, weight = new.weight, "admin: backend added");
    Ok((StatusCode::CREATED, admin.backend(&new.name)?))
}

async fn remove(
    State(admin): State<Admin>,
    PathParams(name): PathParams<String>,
) -> Result<Json<Removed>, ApiError> {
    admin.backends.remove(&name)?;
    tracing::info!(backend = %name, "admin: backend removed");
    Ok(Json(Removed { removed: name }))
}

async fn no_route() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "no such endpoint; see GET / (the status page), GET /backends, GET /metrics, \
         POST /backends, DELETE /backends/NAME, \
         POST /backends/NAME/{drain,undrain,disable,enable,weight/N}, POST /groups/GROUP/weight/N, \
         GET /keys and POST /keys/reload",
    )
}

async fn wrong_method() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "this endpoint does not take that method; changes are POST (DELETE to remove), reads are GET",
    )
}

/// `GET /metrics`: the backends' figures in Prometheus's text format.
async fn metrics(State(admin): State<Admin>) -> impl IntoResponse {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        render_metrics(
            &admin.all(),
            &KeysFigures {
                fingerprints: admin.keys.fingerprints(),
                last_read_succeeded: admin.keys.last_read_succeeded(),
                older_key_tokens: admin.backends.snapshot().older_key_tokens(),
            },
        ),
    )
}

/// The cookie keys' figures for `/metrics`.
struct KeysFigures {
    /// The keys in use, the signing key's first.
    fingerprints: Vec<String>,
    /// Whether the last reading of their file succeeded (or none was made).
    last_read_succeeded: bool,
    /// Requests whose token was signed with a key after the signing one.
    older_key_tokens: u64,
}

/// Every state a backend can be in, for `sticky_backend_state`.
const STATES: [BackendState; 4] = [
    BackendState::Active,
    BackendState::Draining,
    BackendState::Disabled,
    BackendState::Unhealthy,
];

/// The metrics of `backends`, and of the cookie `keys`.
fn render_metrics(backends: &[BackendJson], keys: &KeysFigures) -> String {
    type Figure = fn(&BackendJson) -> u64;
    let families: [(&str, &str, &str, Figure); 7] = [
        (
            "requests_total",
            "counter",
            "Requests dispatched to the backend.",
            |b| b.counters.requests,
        ),
        (
            "new_sessions_total",
            "counter",
            "Sessions started on the backend (new, expired, invalid or failed over).",
            |b| b.counters.new_sessions,
        ),
        (
            "hits_total",
            "counter",
            "Requests of bound sessions that reached their backend.",
            |b| b.counters.hits,
        ),
        (
            "failovers_total",
            "counter",
            "Requests moved to the backend because their own could not serve them.",
            |b| b.counters.failovers,
        ),
        (
            "failures_total",
            "counter",
            "Requests to the backend that failed (errors and 5xx answers that count as failures).",
            |b| b.counters.failures,
        ),
        (
            "in_flight",
            "gauge",
            "Requests to the backend under way now.",
            |b| b.counters.in_flight,
        ),
        ("weight", "gauge", "The backend's weight (0 drains).", |b| {
            u64::from(b.weight)
        }),
    ];
    let mut out = String::new();
    // Writing to a String cannot fail.
    for (name, kind, help, figure) in families {
        let _ = writeln!(out, "# HELP sticky_backend_{name} {help}");
        let _ = writeln!(out, "# TYPE sticky_backend_{name} {kind}");
        for b in backends {
            let label = label_value(&b.name);
            let _ = writeln!(
                out,
                "sticky_backend_{name}{{backend=\"{label}\"}} {}",
                figure(b)
            );
        }
    }
    out.push_str("# HELP sticky_backend_state 1 for the backend's state, 0 for the others.\n");
    out.push_str("# TYPE sticky_backend_state gauge\n");
    for b in backends {
        let label = label_value(&b.name);
        for state in STATES.map(BackendState::as_str) {
            let value = u8::from(state == b.state);
            let _ = writeln!(
                out,
                "sticky_backend_state{{backend=\"{label}\",state=\"{state}\"}} {value}"
            );
        }
    }
    out.push_str(
        "# HELP sticky_backend_failing_checks 1 while the backend fails its health checks \
         (--health-check), 0 otherwise.\n",
    );
    out.push_str("# TYPE sticky_backend_failing_checks gauge\n");
    for b in backends {
        let label = label_value(&b.name);
        let value = u8::from(b.failing_checks);
        let _ = writeln!(
            out,
            "sticky_backend_failing_checks{{backend=\"{label}\"}} {value}"
        );
    }
    out.push_str(
        "# HELP sticky_backend_response_seconds Time from the moment a request, its body \
         included, is handed to the backend to its response head; requests with no response \
         head (502, 504) and WebSocket upgrades are not counted.\n",
    );
    out.push_str("# TYPE sticky_backend_response_seconds histogram\n");
    for b in backends {
        let label = label_value(&b.name);
        let times = &b.response_times;
        let mut below = 0;
        let bounds = latency::BOUNDS.iter().map(f64::to_string);
        for (bound, count) in bounds.chain(["+Inf".to_owned()]).zip(times.buckets) {
            below += count;
            let _ = writeln!(
                out,
                "sticky_backend_response_seconds_bucket{{backend=\"{label}\",le=\"{bound}\"}} {below}"
            );
        }
        let _ = writeln!(
            out,
            "sticky_backend_response_seconds_sum{{backend=\"{label}\"}} {}",
            times.sum
        );
        let _ = writeln!(
            out,
            "sticky_backend_response_seconds_count{{backend=\"{label}\"}} {}",
            times.count()
        );
    }
    out.push_str("# HELP sticky_backend_info The backend's URL and group (empty for none).\n");
    out.push_str("# TYPE sticky_backend_info gauge\n");
    for b in backends {
        let _ = writeln!(
            out,
            "sticky_backend_info{{backend=\"{}\",url=\"{}\",group=\"{}\"}} 1",
            label_value(&b.name),
            label_value(&b.url),
            label_value(b.group.as_deref().unwrap_or("")),
        );
    }
    out.push_str(
        "# HELP sticky_gateway_error_answers_total Answers the gateway made itself because no \
         backend did: 502 a backend failed, 503 no backend could take the request, 504 a \
         backend did not answer in time.\n",
    );
    out.push_str("# TYPE sticky_gateway_error_answers_total counter\n");
    for (status, count) in crate::proxy::ERROR_ANSWERS.counts() {
        let status = status.as_u16();
        let _ = writeln!(
            out,
            "sticky_gateway_error_answers_total{{status=\"{status}\"}} {count}"
        );
    }
    out.push_str(
        "# HELP sticky_gateway_access_lines_dropped_total Access log lines (--access-log) \
         lost: dropped because the thread writing them fell 131,072 lines behind, or lost to \
         a failed write.\n",
    );
    out.push_str("# TYPE sticky_gateway_access_lines_dropped_total counter\n");
    let _ = writeln!(
        out,
        "sticky_gateway_access_lines_dropped_total {}",
        crate::access::dropped()
    );
    out.push_str(
        "# HELP sticky_gateway_key_info A cookie key in use, by fingerprint; position 0 signs, \
         all verify. Replicas that share sessions show the same.\n",
    );
    out.push_str("# TYPE sticky_gateway_key_info gauge\n");
    for (position, fingerprint) in keys.fingerprints.iter().enumerate() {
        let _ = writeln!(
            out,
            "sticky_gateway_key_info{{position=\"{position}\",fingerprint=\"{fingerprint}\"}} 1"
        );
    }
    out.push_str(
        "# HELP sticky_gateway_keys_last_reload_successful 1 if the last reading of \
         --secret-file (SIGHUP or POST /keys/reload) put its keys in use, or none was made; \
         0 if it failed and the keys before it stayed.\n",
    );
    out.push_str("# TYPE sticky_gateway_keys_last_reload_successful gauge\n");
    let _ = writeln!(
        out,
        "sticky_gateway_keys_last_reload_successful {}",
        u8::from(keys.last_read_succeeded)
    );
    out.push_str(
        "# HELP sticky_gateway_older_key_cookies_total Requests whose cookie (or token header) \
         was signed with a key listed after the signing one. Once it stops growing for as long as sessions last, the older keys can be dropped.\n",
    );
    out.push_str("# TYPE sticky_gateway_older_key_cookies_total counter\n");
    let _ = writeln!(
        out,
        "sticky_gateway_older_key_cookies_total {}",
        keys.older_key_tokens
    );
    out
}

/// Escapes text for a label value in Prometheus's text format.
fn label_value(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

/// What the status page adds to a backend's state: failing health checks,
/// and the state it returns to when that is neither active nor shown.
fn state_notes(b: &BackendJson) -> String {
    let mut notes = Vec::new();
    if b.failing_checks {
        notes.push("health checks failing");
    }
    if b.admin_state != "active" && b.admin_state != b.state {
        notes.push(b.admin_state);
    }
    if notes.is_empty() {
        String::new()
    } else {
        format!(" ({})", notes.join("; "))
    }
}

/// `GET /`: the status page.
async fn status_page(State(admin): State<Admin>) -> Html<String> {
    Html(render_page(&admin.all(), &admin.keys.fingerprints()))
}

/// The status page of `backends`, with the cookie keys' `fingerprints`
/// (the signing key's first).
fn render_page(backends: &[BackendJson], fingerprints: &[String]) -> String {
    let total: u64 = backends.iter().map(|b| b.counters.requests).sum();
    let mut rows = String::new();
    for b in backends {
        let share = if total == 0 {
            0.0
        } else {
            b.counters.requests as f64 * 100.0 / total as f64
        };
        let c = &b.counters;
        // Writing to a String cannot fail.
        let _ = writeln!(
            rows,
            "<tr><td>{name}</td><td>{url}</td><td class=\"{state}\">{state}{why}</td>\
             <td>{weight}</td><td>{new}</td><td>{requests}</td><td>{hits}</td>\
             <td>{failovers}</td><td>{failures}</td><td>{in_flight}</td>\
             <td class=\"share\"><div class=\"bar\"><div style=\"width:{share:.1}%\"></div></div>\
             {share:.1}%</td></tr>",
            name = escape(&b.name),
            url = escape(&b.url),
            state = b.state,
            why = state_notes(b),
            weight = b.weight,
            new = c.new_sessions,
            requests = c.requests,
            hits = c.hits,
            failovers = c.failovers,
            failures = c.failures,
            in_flight = c.in_flight,
        );
    }
    if backends.is_empty() {
        rows.push_str(
            "<tr><td colspan=\"11\">No backends. Add one with POST /backends.</td></tr>\n",
        );
    }
    format!(
        "<!doctype html>
<html lang=\"en\">
<head>
<meta charset=\"utf-8\">
<meta http-equiv=\"refresh\" content=\"2\">
<title>tower-sticky gateway</title>
<style>
body {{ font: 14px system-ui, sans-serif; margin: 2em; color: #222; }}
table {{ border-collapse: collapse; }}
th, td {{ padding: 4px 10px; border-bottom: 1px solid #ddd; text-align: right; }}
th:nth-child(-n+3), td:nth-child(-n+3) {{ text-align: left; }}
th {{ background: #f4f4f4; }}
.active {{ color: #1a7f37; }}
.draining {{ color: #9a6700; }}
.disabled {{ color: #666; }}
.unhealthy {{ color: #cf222e; font-weight: bold; }}
.share {{ white-space: nowrap; }}
.bar {{ display: inline-block; width: 160px; height: 10px; background: #eee; margin-right: 6px; }}
.bar div {{ height: 100%; background: #0969da; }}
footer {{ margin-top: 1em; color: #666; }}
</style>
</head>
<body>
<h1>tower-sticky gateway</h1>
<p>{count} backend(s), {total} request(s) in all. This page refreshes every 2 seconds.</p>
<table>
<thead><tr><th>Name</th><th>URL</th><th>State</th><th>Weight</th><th>New sessions</th>\
<th>Requests</th><th>Hits</th><th>Failovers</th><th>Failures</th><th>In flight</th>\
<th>Share of requests</th></tr></thead>
<tbody>
{rows}</tbody>
</table>
<footer>Cookies signed with key <code>{signing}</code>; {key_count} key(s) verify them \
(<a href=\"/keys\">/keys</a>).<br>
JSON: <a href=\"/backends\">/backends</a>; Prometheus: <a href=\"/metrics\">/metrics</a></footer>
</body>
</html>
",
        count = backends.len(),
        signing = fingerprints.first().map_or("", String::as_str),
        key_count = fingerprints.len(),
    )
}

/// Escapes text for HTML element content and quoted attribute values.
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::{to_bytes, Body};
    use axum::http::{header, Method, Request};
    use serde_json::{json, Value};
    use tower::ServiceExt;
    use tower_sticky::sticky_core::token::{KeyRing, TokenCodec, TokenConfig};
    use tower_sticky::sticky_core::PoolConfig;

    const SECRET: &str = "a test secret of 32 bytes..........";

    fn admin() -> Router {
        admin_with(Source::Random)
    }

    /// The admin API of two backends, its keys said to come from `source`
    /// (the ring in use is SECRET's).
    fn admin_with(source: Source) -> Router {
        let upstream = |url: &str| Upstream::new(url, &ProxyOptions::default()).unwrap();
        let config = PoolConfig::new(TokenCodec::new(
            KeyRing::new([SECRET]).unwrap(),
            TokenConfig::new("sticky"),
        ));
        let backends = Backends::new(
            config,
            [
                (BackendSpec::new("b1"), upstream("http://127.0.0.1:9")),
                (BackendSpec::new("b2"), upstream("http://127.0.0.1:10/")),
            ],
        )
        .unwrap();
        let keys = Keys::new(source, backends.clone());
        router(backends, ProxyOptions::default(), false, keys)
    }

    async fn call(
        router: &Router,
        method: Method,
        uri: &str,
        body: &str,
    ) -> (StatusCode, Option<String>, String) {
        let request = Request::builder()
            .method(method)
            .uri(uri)
            .body(Body::from(body.to_owned()))
            .unwrap();
        let response = router.clone().oneshot(request).await.unwrap();
        let status = response.status();
        let content_type = response
            .headers()
            .get(header::CONTENT_TYPE)
            .map(|v| v.to_str().unwrap().to_owned());
        let body = to_bytes(response.into_body(), usize::MAX).await.unwrap();
        (
            status,
            content_type,
            String::from_utf8(body.to_vec()).unwrap(),
        )
    }

    async fn json_call(
        router: &Router,
        method: Method,
        uri: &str,
        body: &str,
    ) -> (StatusCode, Value) {
        let (status, content_type, body) = call(router, method, uri, body).await;
        assert_eq!(
            content_type.as_deref(),
            Some("application/json"),
            "{uri}: {body}"
        );
        (status, serde_json::from_str(&body).unwrap())
    }

    fn names(list: &Value) -> Vec<&str> {
        list.as_array()
            .unwrap()
            .iter()
            .map(|b| b["name"].as_str().unwrap())
            .collect()
    }

    #[tokio::test]
    async fn lists_backends_sorted_with_urls_and_counters() {
        let admin = admin();
        let (status, list) = json_call(&admin, Method::GET, "/backends", "").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(names(&list), ["b1", "b2"]);
        assert_eq!(
            list[0],
            json!({
                "name": "b1", "url": "http://127.0.0.1:9", "weight": 1, "state": "active",
                "group": null, "admin_state": "active", "failing_checks": false,
                "counters": {"requests": 0, "new_sessions": 0, "hits": 0, "failovers": 0,
                             "failures": 0, "in_flight": 0}
            })
        );
        assert_eq!(list[1]["url"], "http://127.0.0.1:10");
        assert_eq!(list[1]["state"], "active");
    }

    #[tokio::test]
    async fn state_changes_answer_with_the_backend() {
        let admin = admin();
        let (status, b1) = json_call(&admin, Method::POST, "/backends/b1/drain", "").await;
        assert_eq!((status, &b1["state"]), (StatusCode::OK, &json!("draining")));
        let (_, list) = json_call(&admin, Method::GET, "/backends", "").await;
        assert_eq!(list[0]["state"], "draining");
        assert_eq!(list[1]["state"], "active");

        let (_, b1) = json_call(&admin, Method::POST, "/backends/b1/undrain", "").await;
        assert_eq!(b1["state"], "active");
        let (_, b2) = json_call(&admin, Method::POST, "/backends/b2/disable", "").await;
        assert_eq!(b2["state"], "disabled");
        // Undrain is for draining backends only: a disabled one stays out.
        for name in ["b1", "b2"] {
            let uri = format!("/backends/{name}/undrain");
            let (status, error) = json_call(&admin, Method::POST, &uri, "").await;
            assert_eq!(status, StatusCode::CONFLICT, "{name}");
            let message = error["error"].as_str().unwrap();
            assert!(message.contains("not draining"), "{error}");
            let shown = if name == "b1" {
                "state active"
            } else {
                "state disabled"
            };
            assert!(message.contains(shown), "{error}");
        }
        let (_, list) = json_call(&admin, Method::GET, "/backends", "").await;
        assert_eq!(list[1]["state"], "disabled");
        let (_, b2) = json_call(&admin, Method::POST, "/backends/b2/enable", "").await;
        assert_eq!(b2["state"], "active");
    }

    #[tokio::test]
    async fn groups_are_set_when_adding_and_weighed_at_run_time() {
        let admin = admin();
        let body = r#"{"name": "c1", "url": "http://127.0.0.1:12", "group": "canary"}"#;
        let (status, c1) = json_call(&admin, Method::POST, "/backends", body).await;
        assert_eq!(
            (status, &c1["group"]),
            (StatusCode::CREATED, &json!("canary"))
        );
        let (status, group) = json_call(&admin, Method::POST, "/groups/canary/weight/0", "").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(
            (&group["weight"], &group["backends"][0]["name"]),
            (&json!(0), &json!("c1"))
        );
        // A group with no backend (yet, or any more) keeps its weight.
        let (status, group) = json_call(&admin, Method::POST, "/groups/later/weight/2", "").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(
            (&group["weight"], &group["backends"]),
            (&json!(2), &json!([]))
        );
        let body = r#"{"name": "e1", "url": "http://127.0.0.1:13", "group": ""}"#;
        let (status, _) = json_call(&admin, Method::POST, "/backends", body).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "an empty group name");
        let (status, _) = json_call(&admin, Method::POST, "/groups/canary/weight/999", "").await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
    }

    #[tokio::test]
    async fn weights_are_checked() {
        let admin = admin();
        let (status, b2) = json_call(&admin, Method::POST, "/backends/b2/weight/256", "").await;
        assert_eq!((status, &b2["weight"]), (StatusCode::OK, &json!(256)));
        for bad in ["300", "-1", "abc", "1.5"] {
            let uri = format!("/backends/b2/weight/{bad}");
            let (status, error) = json_call(&admin, Method::POST, &uri, "").await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}");
            assert!(
                error["error"].as_str().unwrap().contains("0 to 256"),
                "{error}"
            );
        }
        let (_, list) = json_call(&admin, Method::GET, "/backends", "").await;
        assert_eq!(list[1]["weight"], 256);
    }

    #[tokio::test]
    async fn unknown_backends_are_404_everywhere() {
        let admin = admin();
        let expected = json!({"error": "no backend named \"nope\""});
        for (method, uri) in [
            (Method::POST, "/backends/nope/drain"),
            (Method::POST, "/backends/nope/undrain"),
            (Method::POST, "/backends/nope/disable"),
            (Method::POST, "/backends/nope/enable"),
            (Method::POST, "/backends/nope/weight/2"),
            (Method::DELETE, "/backends/nope"),
        ] {
            let (status, error) = json_call(&admin, method, uri, "").await;
            assert_eq!(
                (status, &error),
                (StatusCode::NOT_FOUND, &expected),
                "{uri}"
            );
        }
        let (status, error) = json_call(&admin, Method::GET, "/nowhere", "").await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        // The message lists every endpoint, the newest too.
        let listed = error["error"].as_str().unwrap();
        assert!(
            listed.contains("GET /backends") && listed.contains("POST /keys/reload"),
            "{listed}"
        );
        let (status, error) = json_call(&admin, Method::GET, "/backends/b1/drain", "").await;
        assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
        assert!(error["error"].is_string());
    }

    #[tokio::test]
    async fn add_and_remove() {
        let admin = admin();
        let body = r#"{"name": "b3", "url": "http://127.0.0.1:11", "weight": 2}"#;
        let (status, b3) = json_call(&admin, Method::POST, "/backends", body).await;
        assert_eq!(status, StatusCode::CREATED);
        assert_eq!(
            (&b3["name"], &b3["url"], &b3["weight"], &b3["state"]),
            (
                &json!("b3"),
                &json!("http://127.0.0.1:11"),
                &json!(2),
                &json!("active")
            )
        );
        let (_, list) = json_call(&admin, Method::GET, "/backends", "").await;
        assert_eq!(names(&list), ["b1", "b2", "b3"]);

        let (status, b4) = json_call(
            &admin,
            Method::POST,
            "/backends",
            r#"{"name": "b4", "url": "http://127.0.0.1:12"}"#,
        )
        .await;
        assert_eq!((status, &b4["weight"]), (StatusCode::CREATED, &json!(1)));

        let (status, error) = json_call(&admin, Method::POST, "/backends", body).await;
        assert_eq!(status, StatusCode::CONFLICT);
        assert!(
            error["error"].as_str().unwrap().contains("\"b3\""),
            "{error}"
        );

        let (status, removed) = json_call(&admin, Method::DELETE, "/backends/b3", "").await;
        assert_eq!(
            (status, removed),
            (StatusCode::OK, json!({"removed": "b3"}))
        );
        let (_, list) = json_call(&admin, Method::GET, "/backends", "").await;
        assert_eq!(names(&list), ["b1", "b2", "b4"]);
    }

    #[tokio::test]
    async fn bad_additions_are_400() {
        let admin = admin();
        for body in [
            "",
            "not json",
            r#"{"url": "http://127.0.0.1:11"}"#,
            r#"{"name": "b3", "url": "http://127.0.0.1:11", "wieght": 2}"#,
            r#"{"name": "b3", "url": "http://127.0.0.1:11", "weight": -1}"#,
            r#"{"name": "b3", "url": "http://127.0.0.1:11", "weight": 257}"#,
            r#"{"name": "b3", "url": "https://127.0.0.1:11"}"#,
            r#"{"name": "b3", "url": "127.0.0.1 11"}"#,
            r#"{"name": "", "url": "http://127.0.0.1:11"}"#,
            r#"{"name": "b3", "url": "http://user:pw@127.0.0.1:11"}"#,
            &format!(
                r#"{{"name": "{}", "url": "http://127.0.0.1:11"}}"#,
                "b".repeat(256)
            ),
        ] {
            let (status, error) = json_call(&admin, Method::POST, "/backends", body).await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{body}: {error}");
            assert!(error["error"].is_string());
        }
        // Too large to read: still an error in JSON.
        let huge = format!(r#"{{"name": "b3", "url": "{}"}}"#, "x".repeat(3 << 20));
        let (status, error) = json_call(&admin, Method::POST, "/backends", &huge).await;
        assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{error}");
        assert!(error["error"].is_string());
        let (_, list) = json_call(&admin, Method::GET, "/backends", "").await;
        assert_eq!(names(&list), ["b1", "b2"]);
    }

    #[tokio::test]
    async fn keys_show_by_fingerprint_and_are_read_again_from_their_file() {
        let fingerprint =
            |secrets: &[&str]| crate::keys::fingerprints(&KeyRing::new(secrets).unwrap());
        let ours = fingerprint(&[SECRET]);
        let next = "the next secret of the fleet, 32 bytes";

        // A random key (or STICKY_SECRET) is shown, and cannot be read again.
        let admin = admin();
        let (status, keys) = json_call(&admin, Method::GET, "/keys", "").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(
            keys,
            json!({"source": "random", "path": null, "fingerprints": ours,
                   "last_reload_error": null})
        );
        let (status, error) = json_call(&admin, Method::POST, "/keys/reload", "").await;
        assert_eq!(status, StatusCode::CONFLICT, "{error}");
        assert!(
            error["error"].as_str().unwrap().contains("--secret-file"),
            "{error}"
        );
        let (_, _, metrics) = call(&admin, Method::GET, "/metrics", "").await;
        let line = format!(
            "sticky_gateway_key_info{{position=\"0\",fingerprint=\"{}\"}} 1\n",
            ours[0]
        );
        assert!(metrics.contains(&line), "{metrics}");
        let (_, _, page) = call(&admin, Method::GET, "/", "").await;
        assert!(
            page.contains(&format!("<code>{}</code>; 1 key(s)", ours[0])),
            "{page}"
        );

        // From a file: read again on request, a bad file changing nothing.
        let path = std::env::temp_dir().join(format!("admin-keys-{}", std::process::id()));
        std::fs::write(&path, format!("{SECRET}\n{next}\n")).unwrap();
        let admin = admin_with(Source::File(path.clone()));
        let shown = path.display().to_string();
        let (status, keys) = json_call(&admin, Method::POST, "/keys/reload", "").await;
        assert_eq!(status, StatusCode::OK, "{keys}");
        let both = fingerprint(&[SECRET, next]);
        assert_eq!(
            keys,
            json!({"changed": true, "dropped_signing_key": false, "signing_key_new": false,
                   "source": "--secret-file", "path": shown, "fingerprints": both})
        );
        std::fs::write(&path, "too short\n").unwrap();
        let (status, error) = json_call(&admin, Method::POST, "/keys/reload", "").await;
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR, "{error}");
        let message = error["error"].as_str().unwrap();
        assert!(
            message.contains(&shown) && message.contains("shorter"),
            "{message}"
        );
        assert!(message.contains("unchanged"), "{message}");
        let (_, keys) = json_call(&admin, Method::GET, "/keys", "").await;
        assert_eq!(keys["fingerprints"], json!(both));
        let why = keys["last_reload_error"].as_str().unwrap();
        assert!(why.contains("shorter"), "{keys}");
        let gauge = "sticky_gateway_keys_last_reload_successful ";
        let (_, _, metrics) = call(&admin, Method::GET, "/metrics", "").await;
        assert!(metrics.contains(&format!("{gauge}0\n")), "{metrics}");
        std::fs::write(&path, format!("{next}\n")).unwrap();
        let (status, keys) = json_call(&admin, Method::POST, "/keys/reload", "").await;
        assert_eq!(status, StatusCode::OK, "{keys}");
        assert_eq!(keys["dropped_signing_key"], true);
        assert_eq!(keys["signing_key_new"], false, "it was listed second");
        assert_eq!(keys["fingerprints"], json!(fingerprint(&[next])));
        let (_, keys) = json_call(&admin, Method::GET, "/keys", "").await;
        assert_eq!(keys["last_reload_error"], Value::Null);
        let (_, _, metrics) = call(&admin, Method::GET, "/metrics", "").await;
        assert!(metrics.contains(&format!("{gauge}1\n")), "{metrics}");
        let _ = std::fs::remove_file(&path);
    }

    #[tokio::test]
    async fn metrics_escape_label_values() {
        let admin = admin();
        json_call(
            &admin,
            Method::POST,
            "/backends",
            r#"{"name": "b\\\"3", "url": "http://127.0.0.1:11"}"#,
        )
        .await;
        let (status, content_type, text) = call(&admin, Method::GET, "/metrics", "").await;
        assert_eq!(status, StatusCode::OK);
        assert!(content_type
            .unwrap()
            .starts_with("text/plain; version=0.0.4"));
        // The name is b\"3: a backslash and a quote, each escaped.
        assert!(
            text.contains("sticky_backend_requests_total{backend=\"b\\\\\\\"3\"} 0\n"),
            "{text}"
        );
        assert!(
            text.contains("sticky_backend_state{backend=\"b1\",state=\"active\"} 1\n"),
            "{text}"
        );
        assert_eq!(text.matches("sticky_backend_info{").count(), 3, "{text}");
    }

    #[tokio::test]
    async fn status_page_lists_backends_and_refreshes() {
        let admin = admin();
        json_call(
            &admin,
            Method::POST,
            "/backends",
            r#"{"name": "<b&\"3\">", "url": "http://127.0.0.1:11"}"#,
        )
        .await;
        let (status, content_type, page) = call(&admin, Method::GET, "/", "").await;
        assert_eq!(status, StatusCode::OK);
        assert!(content_type.unwrap().starts_with("text/html"));
        assert!(page.contains("<title>tower-sticky gateway</title>"));
        assert!(page.contains("<td>b1</td>") && page.contains("<td>b2</td>"));
        assert!(page.contains("http://127.0.0.1:9"));
        assert!(page.contains("<td>&lt;b&amp;&quot;3&quot;&gt;</td>"));
        assert!(!page.contains("<b&"));
        assert!(page.contains("content=\"2\""));
    }

    #[tokio::test]
    async fn the_secret_never_shows() {
        let admin = admin();
        for uri in ["/", "/backends", "/backends/b1/drain", "/nowhere"] {
            let (_, _, body) = call(&admin, Method::GET, uri, "").await;
            assert!(!body.contains(SECRET), "{uri}");
        }
    }

    /// An active backend of weight 1 as the API shows it, nothing counted.
    fn shown(name: &str) -> BackendJson {
        BackendJson {
            name: name.to_owned(),
            url: format!("http://{name}:80"),
            weight: 1,
            state: "active",
            group: None,
            admin_state: "active",
            failing_checks: false,
            counters: Counters::default().into(),
            response_times: Histogram::default(),
        }
    }

    #[test]
    fn status_page_shows_each_share_of_requests() {
        let backend = |name: &str, requests| {
            let mut b = shown(name);
            b.counters.requests = requests;
            b
        };
        let page = render_page(&[backend("a", 1), backend("b", 3)], &[]);
        assert!(page.contains("width:25.0%") && page.contains("width:75.0%"));
        let page = render_page(&[backend("a", 0)], &[]);
        assert!(page.contains("width:0.0%"));
        assert!(render_page(&[], &[]).contains("No backends"));
    }

    /// The status page says why a backend is out, and what it returns to.
    #[test]
    fn status_page_notes_failing_checks_and_the_state_returned_to() {
        let backend = |state, admin_state, failing_checks| BackendJson {
            state,
            admin_state,
            failing_checks,
            ..shown("b1")
        };
        let cell = |b| {
            let page = render_page(&[b], &[]);
            let start = page.find("<td class=").unwrap();
            let end = start + page[start..].find("</td>").unwrap();
            page[start..end].split('>').nth(1).unwrap().to_owned()
        };
        assert_eq!(cell(backend("active", "active", false)), "active");
        assert_eq!(
            cell(backend("unhealthy", "active", true)),
            "unhealthy (health checks failing)"
        );
        assert_eq!(
            cell(backend("unhealthy", "draining", true)),
            "unhealthy (health checks failing; draining)"
        );
        assert_eq!(
            cell(backend("disabled", "disabled", true)),
            "disabled (health checks failing)"
        );
        // Passive health resting a drained backend.
        assert_eq!(
            cell(backend("unhealthy", "draining", false)),
            "unhealthy (draining)"
        );
        assert_eq!(cell(backend("unhealthy", "active", false)), "unhealthy");
    }

    #[test]
    fn escapes_html() {
        assert_eq!(
            escape(r#"<a href="x">'&'</a>"#),
            "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;"
        );
    }
}
