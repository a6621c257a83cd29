//! The soak: thousands of sessions drive the gateway for a fixed time while
//! backends are stopped, restarted, drained, reweighted, disabled, added
//! and removed through the admin API. It counts
//!
//! - **misroutes**: a session answered by a backend other than its pinned
//!   one while the pinned one could serve it (running, and active or
//!   draining, for the whole request), or moved without a new cookie;
//! - **lost requests**: client-visible failures other than the documented
//!   502/503 for a session whose backend could not serve.
//!
//! A backend that comes back after a stop counts as able to serve from the
//! first answer it gives (the gateway's passive health lets it back in).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::*;

/// How hard and how long to soak.
#[derive(Clone, Debug)]
pub struct Options {
    /// Sessions (browsers with their own cookie jars).
    pub sessions: usize,
    /// Requests under way at once.
    pub concurrency: usize,
    /// How long to run, at most.
    pub duration: Duration,
    /// Stop after this many requests.
    pub max_requests: u64,
    /// Time between two changes to the backends.
    pub change_every: Duration,
}

/// What the soak saw.
#[derive(Debug, Default)]
pub struct Report {
    pub requests: u64,
    pub misroutes: u64,
    pub lost: u64,
    /// 502/503 answers for sessions whose backend could not serve.
    pub documented_errors: u64,
    /// Sessions that moved because their backend could not serve.
    pub moves: u64,
    pub changes: Vec<String>,
    pub elapsed: Duration,
    /// The first few misroutes and losses, to debug with, and the
    /// gateway's log when anything went wrong.
    pub examples: Vec<String>,
    /// Connections the gateway still held to the backends once every
    /// client was done and the backend idle timeout had passed.
    pub backend_connections_left: usize,
}

/// Whether a backend can serve its bound sessions, and a counter bumped at
/// every change of that, so a request can tell whether it overlapped one.
#[derive(Default)]
struct Serving {
    can: AtomicBool,
    epoch: AtomicU64,
    /// Restarted, waiting for its first answer.
    recovering: AtomicBool,
}

impl Serving {
    fn set(&self, can: bool) {
        self.epoch.fetch_add(1, SeqCst);
        self.can.store(can, SeqCst);
        self.epoch.fetch_add(1, SeqCst);
    }

    fn observe(&self) -> (bool, u64) {
        (self.can.load(SeqCst), self.epoch.load(SeqCst))
    }
}

struct Shared {
    serving: HashMap<String, Serving>,
    report: std::sync::Mutex<Report>,
    requests: AtomicU64,
}

impl Shared {
    fn note(&self, what: String) {
        let mut report = self.report.lock().unwrap();
        if report.examples.len() < 20 {
            report.examples.push(what);
        }
    }
}

const NAMES: [&str; 4] = ["b1", "b2", "b3", "b4"];

/// Runs a soak against a gateway spawned over fresh demo backends.
pub async fn run(options: Options) -> Report {
    let mut servers = backends(&NAMES).await;
    let gateway = Gateway::start(
        &servers[..3].iter().collect::<Vec<_>>(),
        &[
            "--backend-idle-timeout",
            &IDLE_TIMEOUT.as_secs().to_string(),
        ],
    )
    .await;
    let shared = Arc::new(Shared {
        serving: NAMES
            .iter()
            .map(|n| (n.to_string(), Serving::default()))
            .collect(),
        report: Default::default(),
        requests: AtomicU64::new(0),
    });
    for name in &NAMES[..3] {
        shared.serving[*name].set(true);
    }
    let started = Instant::now();
    let deadline = started + options.duration;

    let per_worker = options.sessions.div_ceil(options.concurrency);
    let mut workers = JoinSet::new();
    for w in 0..options.concurrency {
        let mut sessions: Vec<(Browser, Option<String>)> =
            (0..per_worker).map(|_| (gateway.browser(), None)).collect();
        let shared = Arc::clone(&shared);
        let max = options.max_requests;
        workers.spawn(async move {
            let mut i = w;
            while Instant::now() < deadline && shared.requests.fetch_add(1, SeqCst) < max {
                let (browser, pinned) = &mut sessions[i % per_worker];
                i += 1;
                request(&shared, browser, pinned).await;
            }
        });
    }

    let mut step = 0;
    while Instant::now() < deadline && shared.requests.load(SeqCst) < options.max_requests {
        tokio::time::sleep(options.change_every).await;
        let change = change(step, &mut servers, &gateway, &shared).await;
        shared.report.lock().unwrap().changes.push(change);
        step += 1;
    }
    while let Some(done) = workers.join_next().await {
        done.unwrap();
    }
    let elapsed = started.elapsed();
    let mut report = std::mem::take(&mut *shared.report.lock().unwrap());
    report.requests = shared.requests.load(SeqCst).min(options.max_requests);
    report.elapsed = elapsed;
    report.backend_connections_left = backend_connections_left(&gateway, &servers).await;
    if report.misroutes + report.lost > 0 || report.backend_connections_left > 0 {
        report
            .examples
            .push(format!("gateway log tail:\n{}", tail(&gateway.log(), 40)));
    }
    report
}

/// The gateway's idle connections to backends close after this long.
const IDLE_TIMEOUT: Duration = Duration::from_secs(1);

/// With every client done, the connections the gateway holds to the
/// backends (b4's too, added and removed over and over): waits until none
/// is left, or until well past the idle timeout, and counts what is left.
async fn backend_connections_left(gateway: &Gateway, servers: &[Backend]) -> usize {
    let peers: Vec<SocketAddr> = servers.iter().map(|server| server.addr).collect();
    let give_up = Instant::now() + IDLE_TIMEOUT + Duration::from_secs(10);
    loop {
        let left = gateway.connections_to(&peers);
        if left == 0 || Instant::now() > give_up {
            return left;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

async fn request(shared: &Shared, browser: &mut Browser, pinned: &mut Option<String>) {
    let before = pinned.as_ref().map(|p| shared.serving[p].observe());
    let reply = browser.try_get("/").await;
    let after = pinned.as_ref().map(|p| shared.serving[p].observe());
    // The pinned backend could serve for the whole request.
    let could_serve = match (before, after) {
        (Some((true, e1)), Some((true, e2))) => e1 == e2,
        _ => false,
    };
    let reply = match reply {
        Ok(reply) => reply,
        Err(error) => {
            shared.report.lock().unwrap().lost += 1;
            shared.note(format!("transport error: {error}"));
            return;
        }
    };
    match reply.status {
        StatusCode::OK => {
            let Some(backend) = reply.backend.clone() else {
                shared.report.lock().unwrap().lost += 1;
                shared.note(format!("answer without x-backend: {reply:?}"));
                return;
            };
            let serving = &shared.serving[&backend];
            if serving.recovering.swap(false, SeqCst) {
                serving.set(true);
            }
            match pinned.as_deref() {
                Some(home) if home != backend => {
                    let mut report = shared.report.lock().unwrap();
                    if could_serve {
                        report.misroutes += 1;
                        drop(report);
                        shared.note(format!("misroute: pinned {home}, answered by {backend}"));
                    } else if reply.sticky_cookie().is_none() {
                        report.misroutes += 1;
                        drop(report);
                        shared.note(format!("moved {home} -> {backend} without a new cookie"));
                    } else {
                        report.moves += 1;
                    }
                }
                _ => {}
            }
            *pinned = Some(backend);
        }
        StatusCode::BAD_GATEWAY | StatusCode::SERVICE_UNAVAILABLE if !could_serve => {
            shared.report.lock().unwrap().documented_errors += 1;
        }
        status => {
            shared.report.lock().unwrap().lost += 1;
            shared.note(format!(
                "{status} for a session pinned to {pinned:?}: {}",
                reply.body.trim()
            ));
        }
    }
}

/// The changes, in turn: every kind the admin API offers, and backends
/// stopping and coming back.
async fn change(
    step: usize,
    servers: &mut [Backend],
    gateway: &Gateway,
    shared: &Shared,
) -> String {
    let serving = |name: &str| &shared.serving[name];
    // b1..b3 take turns being the one that is stopped and disabled.
    let victim = ["b1", "b2", "b3"][(step / 10) % 3];
    let other = ["b2", "b3", "b1"][(step / 10) % 3];
    let index = |name: &str| NAMES.iter().position(|n| *n == name).unwrap();
    match step % 10 {
        0 => {
            serving(victim).set(false);
            servers[index(victim)].stop().await;
            format!("stop {victim}")
        }
        1 => {
            serving(victim).recovering.store(true, SeqCst);
            servers[index(victim)].restart().await;
            format!("restart {victim}")
        }
        2 => {
            gateway.post(&format!("/backends/{other}/drain")).await;
            format!("drain {other}")
        }
        3 => {
            gateway.post(&format!("/backends/{other}/weight/3")).await;
            format!("weight {other} 3")
        }
        4 => {
            let b4 = &mut servers[3];
            if !b4.is_running() {
                b4.restart().await;
            }
            let body = json!({"name": "b4", "url": b4.url(), "weight": 2}).to_string();
            let (status, value) = gateway.admin(Method::POST, "/backends", &body).await;
            assert_eq!(status, StatusCode::CREATED, "{value}");
            serving("b4").set(true);
            "add b4".into()
        }
        5 => {
            gateway.post(&format!("/backends/{other}/undrain")).await;
            format!("undrain {other}")
        }
        6 => {
            serving(victim).set(false);
            gateway.post(&format!("/backends/{victim}/disable")).await;
            format!("disable {victim}")
        }
        7 => {
            gateway.post(&format!("/backends/{victim}/enable")).await;
            // Enabled but maybe still resting after its stop: it can serve
            // again once it answers.
            serving(victim).recovering.store(true, SeqCst);
            format!("enable {victim}")
        }
        8 => {
            serving("b4").set(false);
            let (status, value) = gateway.admin(Method::DELETE, "/backends/b4", "").await;
            assert_eq!(status, StatusCode::OK, "{value}");
            servers[3].stop().await;
            "remove b4".into()
        }
        _ => {
            gateway.post(&format!("/backends/{other}/weight/1")).await;
            format!("weight {other} 1")
        }
    }
}
